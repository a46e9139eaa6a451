//! Fuzz drivers: one `pub fn NAME(data: &[u8])` per cargo-fuzz target in
//! `fuzz/`, also replayed over the checked-in corpora by
//! `tests/fuzz_regressions.rs`.
//!
//! Each driver feeds the bytes to tern's real parser or sans-IO machine, the
//! way the daemon does, and checks properties with `assert!`: a violation
//! panics, which libFuzzer reports as a crash. Input crosses a trust
//! boundary in every target: a network peer (SMTP commands, DATA, server
//! replies, DNS answers), a local user (sendmail drops, spool files) or the
//! administrator (config, aliases, users files).
//!
//! Drivers that need more than one input (chunk sizes, timer events, modes)
//! take them from the first bytes of the input and use the rest as the byte
//! stream, so a checked-in seed stays readable at its end.
//!
//! The binary never calls these functions, so they cost no flash.

// Drivers, not daemon code: a panic (an assert or an index off the end) is
// how a property violation reaches libFuzzer, so the crate-wide slicing
// lints do not apply here.
#![allow(clippy::indexing_slicing, clippy::string_slice)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

use crate::auth::{self, SaslServer, SaslStep, Users};
use crate::config::{self, Cidr, Config, HostPort};
use crate::delivery::aliases::{Aliases, Target, MAX_EXPANSION};
use crate::delivery::{push_unique, Destination, Mailbox, RecipientPolicy, Refusal};
use crate::dns::resolver::{
    DnsError, LookupId, MxHost, Resolver, ResolverConfig, Transmit, Transport, MAX_MX_HOSTS,
};
use crate::dns::wire::{self, Header, Message, RData, Record};
use crate::smtp::address::{self, parse_path, Address, MAX_PATH};
use crate::smtp::client::{
    ClientConfig, ClientEvent, ClientSession, Credentials, RcptOutcome, TlsPolicy, Transaction,
};
use crate::smtp::command::{parse_command, Body, Command, MailParams};
use crate::smtp::data::{DataDecoder, DataSummary, MAX_LINE};
use crate::smtp::mime7bit::{Downgrade, Unconvertible};
use crate::smtp::reply::{self, Reply};
use crate::smtp::server::{
    AuthVerdict, Event, ListenerKind, Policy, ServerSession, SessionConfig, OUTPUT_HIGH_WATER,
};
use crate::spool::envelope::{body_flag_offset, decode_state, encode_state, Recipient};
use crate::spool::{Progress, QueueId, RcptState, RcptStatus, StoredEnvelope};

// ---------------------------------------------------------------------------
// Input helpers

/// Reads driver parameters from the front of the input; past the end every
/// read gives zeros, so any input is a valid parameter set.
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn new(data: &'a [u8]) -> Input<'a> {
        Input { data }
    }

    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    /// A length byte, then that many bytes as (lossy) UTF-8.
    fn string(&mut self) -> String {
        let n = usize::from(self.byte());
        String::from_utf8_lossy(self.bytes(n)).into_owned()
    }

    fn pick<T: Copy>(&mut self, options: &[T]) -> T {
        options[usize::from(self.byte()) % options.len()]
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn rest(self) -> &'a [u8] {
        self.data
    }
}

fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// Every line break is CRLF: no bare CR, no bare LF.
fn assert_crlf_only(bytes: &[u8], what: &str) {
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\r' {
            assert_eq!(bytes.get(i + 1), Some(&b'\n'), "bare CR at {i} in {what}");
        }
        if b == b'\n' {
            assert!(i > 0 && bytes[i - 1] == b'\r', "bare LF at {i} in {what}");
        }
    }
}

/// Server replies: complete `DDD SP text CRLF` / `DDD-text CRLF` lines of
/// printable ASCII, so no client byte can inject a line.
fn assert_reply_lines(out: &[u8]) {
    assert!(out.is_empty() || out.ends_with(b"\r\n"), "reply not ended");
    for line in out.split(|&b| b == b'\n') {
        let Some(line) = line.strip_suffix(b"\r") else {
            assert!(line.is_empty(), "reply line without CRLF: {:?}", text(line));
            continue;
        };
        assert!(line.len() >= 3, "short reply line {:?}", text(line));
        assert!(
            line[..3].iter().all(u8::is_ascii_digit),
            "reply code {:?}",
            text(line)
        );
        assert!(
            matches!(line.get(3), None | Some(b' ' | b'-')),
            "reply separator {:?}",
            text(line)
        );
        assert!(
            line.iter().all(|&b| (0x20..0x7f).contains(&b)),
            "non-printable reply byte in {:?}",
            text(line)
        );
    }
}

/// Client commands: complete CRLF lines of printable ASCII.
fn assert_command_lines(out: &[u8]) {
    assert!(
        out.is_empty() || out.ends_with(b"\r\n"),
        "command not ended"
    );
    assert_crlf_only(out, "client commands");
    assert!(
        out.iter()
            .all(|&b| b == b'\r' || b == b'\n' || (0x20..0x7f).contains(&b)),
        "non-printable command byte: {:?}",
        text(out)
    );
}

fn assert_reply(r: &Reply) {
    for enhanced in [false, true] {
        let mut out = Vec::new();
        r.write_to(&mut out, enhanced);
        assert_reply_lines(&out);
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
    }
}

// ---------------------------------------------------------------------------
// Addresses and commands

/// A parsed address prints as a path that parses back to the same value and
/// never holds CR, LF or NUL.
fn check_address(a: &Address) {
    let printed = a.to_string();
    assert!(
        !printed.contains(['\r', '\n', '\0']),
        "printed address {printed:?}"
    );
    assert!(a.domain.len() <= address::MAX_DOMAIN && !a.local.is_empty());
    assert_eq!(
        a.domain,
        a.domain.to_ascii_lowercase(),
        "domain not lower-cased"
    );
    assert_eq!(
        Address::parse_mailbox(&printed).as_ref(),
        Ok(a),
        "{printed}"
    );
    assert_eq!(Address::from_parts(&a.local, &a.domain).as_ref(), Ok(a));
    // Every address fits in a path of RFC 5321's 256 octets, and reads
    // back through the path parser and the commands that carry it.
    let path = format!("<{printed}>");
    assert!(path.len() <= MAX_PATH, "path of {} octets", path.len());
    {
        assert_eq!(parse_path(&path), Ok(Some(a.clone())), "{path}");
        let rcpt = format!("RCPT TO:{path}");
        assert_eq!(
            parse_command(rcpt.as_bytes()),
            Ok(Command::Rcpt(Some(a.clone()))),
            "{rcpt}"
        );
        let mail = format!("MAIL FROM:{path} SIZE=10");
        assert_eq!(
            parse_command(mail.as_bytes()),
            Ok(Command::Mail(
                Some(a.clone()),
                MailParams {
                    size: Some(10),
                    body: Body::SevenBit
                }
            )),
            "{mail}"
        );
    }
}

/// `smtp::address`: paths and mailboxes, round-trip parse → print → parse.
pub fn smtp_address(data: &[u8]) {
    let s = text(data);
    match parse_path(&s) {
        Ok(Some(a)) => check_address(&a),
        Ok(None) => assert_eq!(&*s, "<>"),
        Err(_) => {}
    }
    if let Ok(a) = Address::parse_mailbox(&s) {
        check_address(&a);
    }
    let _ = address::is_valid_domain(&s);
}

/// `smtp::command::parse_command`: one command line.
pub fn smtp_command(data: &[u8]) {
    match parse_command(data) {
        Ok(Command::Helo(name) | Command::Ehlo(name)) => {
            assert!(!name.is_empty() && name.len() <= 255);
            assert!(
                !name
                    .bytes()
                    .any(|b| b.is_ascii_whitespace() || b.is_ascii_control()),
                "{name:?}"
            );
        }
        Ok(Command::Mail(sender, params)) => {
            if let Some(a) = &sender {
                check_address(a);
            }
            // Print the command back and parse it again.
            let mut line = match &sender {
                Some(a) => format!("MAIL FROM:<{a}>"),
                None => "MAIL FROM:<>".to_string(),
            };
            if let Some(size) = params.size {
                line.push_str(&format!(" SIZE={size}"));
            }
            if params.body == Body::EightBitMime {
                line.push_str(" BODY=8BITMIME");
            }
            let path_len = sender.as_ref().map_or(2, |a| a.to_string().len() + 2);
            if path_len <= MAX_PATH {
                assert_eq!(
                    parse_command(line.as_bytes()),
                    Ok(Command::Mail(sender, params)),
                    "{line}"
                );
            }
        }
        Ok(Command::Rcpt(Some(a))) => check_address(&a),
        Ok(_) => {}
        Err(r) => assert_reply(&r),
    }
}

// ---------------------------------------------------------------------------
// DATA decoder

/// The decoder's results for one input, split into pieces at `cuts`.
fn decode_pieces(
    input: &[u8],
    max_size: u64,
    cuts: &[usize],
) -> (Vec<u8>, usize, bool, DataSummary, bool) {
    let mut d = DataDecoder::new(max_size);
    let mut out = Vec::new();
    let mut used = 0;
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        if d.is_done() || cut < start {
            continue;
        }
        let n = d.decode(&input[start..cut], &mut out);
        assert!(n <= cut - start);
        used += n;
        if n < cut - start {
            assert!(d.is_done(), "input left over but not done");
        }
        start = cut;
    }
    (out, used, d.is_done(), d.summary().clone(), d.in_headers())
}

/// What the decoder must produce: the message ends at the first
/// `CRLF . CRLF` (the start counts as after a CRLF); lines end at CRLF, bare
/// CR or bare LF and are stored with CRLF; one leading dot is removed. A
/// trailing CR (maybe the start of a CRLF) and a line that is only a dot so
/// far are held back until more input comes.
struct Reference {
    out: Vec<u8>,
    consumed: usize,
    done: bool,
    eight_bit: bool,
    line_too_long: bool,
    received: usize,
    has_date: bool,
    has_message_id: bool,
    has_from: bool,
}

fn reference_decode(input: &[u8]) -> Reference {
    let end = if input.starts_with(b".\r\n") {
        Some(3)
    } else {
        input
            .windows(5)
            .position(|w| w == b"\r\n.\r\n")
            .map(|p| p + 5)
    };
    let (body, consumed, done) = match end {
        Some(e) => (&input[..e - 3], e, true),
        None => (input, input.len(), false),
    };
    let mut r = Reference {
        out: Vec::new(),
        consumed,
        done,
        eight_bit: false,
        line_too_long: false,
        received: 0,
        has_date: false,
        has_message_id: false,
        has_from: false,
    };
    let mut in_headers = true;
    let mut i = 0;
    while i < body.len() {
        let j = body[i..]
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .map_or(body.len(), |p| i + p);
        let raw = &body[i..j];
        let content = raw.strip_prefix(b".").unwrap_or(raw);
        if raw.len() > MAX_LINE - 2 {
            r.line_too_long = true;
        }
        if content.iter().any(|&b| b >= 0x80) {
            r.eight_bit = true;
        }
        r.out.extend_from_slice(content);
        let complete = j < body.len() && !(body[j] == b'\r' && j + 1 == body.len() && !done);
        if !complete {
            break;
        }
        r.out.extend_from_slice(b"\r\n");
        if in_headers {
            let head = &content[..content.len().min(12)];
            let starts = |name: &[u8]| {
                head.len() >= name.len() && head[..name.len()].eq_ignore_ascii_case(name)
            };
            if head.is_empty() {
                in_headers = false;
            } else if starts(b"received:") {
                r.received += 1;
            } else if starts(b"date:") {
                r.has_date = true;
            } else if starts(b"message-id:") {
                r.has_message_id = true;
            } else if starts(b"from:") {
                r.has_from = true;
            } else if head[0] != b' '
                && head[0] != b'\t'
                && !head.contains(&b':')
                && content.len() < 12
            {
                in_headers = false;
            }
        }
        i = if body[j..].starts_with(b"\r\n") {
            j + 2
        } else {
            j + 1
        };
    }
    r
}

/// `smtp::data::DataDecoder`: any split of the input gives the same result,
/// and the result is the one of a plain line-by-line model (only a real
/// `CRLF.CRLF` ends the message: the smuggling defence).
pub fn smtp_data(data: &[u8]) {
    let mut input = Input::new(data);
    let max_size = input.pick(&[1u64 << 20, 0, 1, 7, 100, 1000]);
    let ncuts = usize::from(input.byte() % 8);
    let raw_cuts: Vec<u8> = input.bytes(ncuts).to_vec();
    let stream = input.rest();
    let mut cuts: Vec<usize> = raw_cuts
        .iter()
        .map(|&c| usize::from(c) * stream.len() / 255)
        .collect();
    cuts.sort_unstable();

    let whole = decode_pieces(stream, max_size, &[]);
    let split = decode_pieces(stream, max_size, &cuts);
    assert_eq!(whole, split, "the split {cuts:?} changed the result");
    let bytewise: Vec<usize> = (1..stream.len().min(300)).collect();
    let by_byte = decode_pieces(stream, max_size, &bytewise);
    assert_eq!(whole, by_byte, "byte-by-byte decoding changed the result");

    let (out, used, done, summary, _) = whole;
    let r = reference_decode(stream);
    assert_eq!(done, r.done, "end of data detection");
    assert_eq!(used, r.consumed, "consumed");
    let keep = r.out.len().min(max_size as usize);
    assert_eq!(out, r.out[..keep], "decoded content");
    assert_eq!(summary.size, r.out.len() as u64, "size");
    assert_eq!(summary.oversize, r.out.len() as u64 > max_size, "oversize");
    assert_eq!(summary.eight_bit, r.eight_bit, "eight_bit");
    assert_eq!(summary.line_too_long, r.line_too_long, "line_too_long");
    if done {
        // (An oversize message is cut anywhere, and refused.)
        assert_crlf_only(&r.out, "decoded message");
        assert_eq!(summary.received_headers, r.received, "Received: count");
        assert_eq!(
            (summary.has_date, summary.has_message_id, summary.has_from),
            (r.has_date, r.has_message_id, r.has_from),
            "header names"
        );
    }
}

// ---------------------------------------------------------------------------
// 8bit → 7bit MIME downgrade

/// The downgrade of a whole message, fed in pieces cut at `cuts`.
fn downgrade_pieces(message: &[u8], cuts: &[usize]) -> Result<Vec<u8>, Unconvertible> {
    let mut d = Downgrade::new();
    let mut out = Vec::new();
    let mut from = 0;
    for &cut in cuts.iter().chain(std::iter::once(&message.len())) {
        let cut = cut.clamp(from, message.len());
        d.push(&message[from..cut], &mut out)?;
        from = cut;
    }
    d.finish(&mut out)?;
    Ok(out)
}

/// Bytes as the spool stores a body: bare CR and bare LF become CRLF, and
/// the last line ends with CRLF.
fn crlf_normalized(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 2);
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1)) {
            (b'\r', Some(b'\n')) => {
                out.extend_from_slice(b"\r\n");
                i += 2;
                continue;
            }
            (b'\r' | b'\n', _) => out.extend_from_slice(b"\r\n"),
            (b, _) => out.push(b),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// RFC 2045 §6.7 decoding of a quoted-printable body; every encoded line
/// is at most 76 octets.
pub(crate) fn qp_decode(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let lines: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
    let last = lines.len() - 1;
    for (i, line) in lines.into_iter().enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(line.len() <= 76, "QP line of {} octets", line.len());
        let (line, soft) = match line.strip_suffix(b"=") {
            Some(l) => (l, true),
            None => (line, false),
        };
        let mut j = 0;
        while j < line.len() {
            if line[j] == b'=' {
                let hex = std::str::from_utf8(&line[j + 1..j + 3]).expect("hex digits");
                out.push(u8::from_str_radix(hex, 16).expect("QP escape"));
                j += 3;
            } else {
                assert!(
                    line[j] == b'\t' || (b' '..=b'~').contains(&line[j]),
                    "octet {:#x} not encoded",
                    line[j]
                );
                out.push(line[j]);
                j += 1;
            }
        }
        if !soft && i < last {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

/// A header section built from the input: printable 7-bit fields that are
/// not MIME fields.
fn plain_header_fields(input: &mut Input) -> Vec<u8> {
    let mut head = Vec::new();
    for _ in 0..input.byte() % 4 {
        let value: Vec<u8> = input
            .string()
            .bytes()
            .filter(|b| (b' '..=b'~').contains(b))
            .collect();
        head.extend_from_slice(b"X-Fuzz: ");
        head.extend_from_slice(&value);
        head.extend_from_slice(b"\r\n");
    }
    head
}

/// A leaf body from the input, as the spool stores it, with no line that
/// could be a multipart delimiter.
fn leaf_body(bytes: &[u8]) -> Vec<u8> {
    let body = crlf_normalized(bytes);
    let mut out = Vec::with_capacity(body.len());
    for line in body.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b"--") {
            out.push(b'x');
            out.extend_from_slice(&line[1..]);
        } else {
            out.extend_from_slice(line);
        }
    }
    out
}

/// Splits an entity at its blank line: (header section, body).
fn split_entity(entity: &[u8]) -> (&[u8], &[u8]) {
    let p = entity
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header section ends with a blank line");
    (&entity[..p + 2], &entity[p + 4..])
}

/// The parts of the downgraded form of the multipart the driver built
/// (boundary `fz`), each split into header section and body. The CRLF
/// before a delimiter line belongs to the delimiter (RFC 2046 §5.1.1).
fn fz_parts(body: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut rest = body.strip_prefix(b"--fz\r\n").expect("first delimiter");
    let mut parts = Vec::new();
    loop {
        let p = rest
            .windows(6)
            .position(|w| w == b"\r\n--fz")
            .expect("a delimiter after every part");
        // The part's own text ends where the delimiter's CRLF begins; give
        // the header section its blank line back when the body is empty.
        let part = &rest[..p + 2];
        let (head, body) = split_entity(part);
        parts.push((head, body.strip_suffix(b"\r\n").unwrap_or(body)));
        let after = &rest[p + 6..];
        match after.strip_prefix(b"\r\n") {
            Some(next) => rest = next,
            None => {
                assert_eq!(after, b"--\r\n", "close delimiter ends the message");
                return parts;
            }
        }
    }
}

/// A downgraded leaf: quoted-printable that decodes to the original, or,
/// for a leaf that was ASCII already, the original itself.
fn check_leaf(head: &[u8], body: &[u8], leaf: &[u8]) {
    let head = text(head);
    if head.contains("Content-Transfer-Encoding: quoted-printable\r\n") {
        assert_eq!(
            qp_decode(body),
            leaf,
            "a leaf did not decode back; encoded: {:?}",
            text(body)
        );
    } else {
        assert!(leaf.is_ascii(), "8-bit leaf not re-encoded: {head:?}");
        assert_eq!(body, leaf, "an ASCII leaf changed");
    }
}

/// `smtp::mime7bit::Downgrade`: the output is 7-bit for any input; any
/// split of the input gives the same result; a CRLF message stays CRLF;
/// and for messages built from the input (a non-MIME message, an 8bit
/// text part, a multipart of 8bit text parts) the conversion succeeds and
/// every quoted-printable body decodes back to the original.
pub fn mime_downgrade(data: &[u8]) {
    let mut input = Input::new(data);
    let shape = input.byte() % 4;
    let ncuts = usize::from(input.byte() % 8);
    let raw_cuts: Vec<u8> = input.bytes(ncuts).to_vec();
    let (message, leaves) = match shape {
        // The input as it is: any bytes, any line ends.
        0 => (input.rest().to_vec(), None),
        // A message without MIME-Version: its body is 8-bit text.
        1 => {
            let mut m = plain_header_fields(&mut input);
            m.extend_from_slice(b"Subject: fuzz\r\n\r\n");
            let body = crlf_normalized(input.rest());
            m.extend_from_slice(&body);
            (m, Some(vec![body]))
        }
        // One 8bit text part.
        2 => {
            let mut m = plain_header_fields(&mut input);
            m.extend_from_slice(
                b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
                  Content-Transfer-Encoding: 8bit\r\n\r\n",
            );
            let body = crlf_normalized(input.rest());
            m.extend_from_slice(&body);
            (m, Some(vec![body]))
        }
        // A multipart of 8bit text parts, cut where the input says.
        _ => {
            let mut m = plain_header_fields(&mut input);
            m.extend_from_slice(
                b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"fz\"\r\n\r\n",
            );
            let nparts = 1 + usize::from(input.byte() % 3);
            let rest = input.rest();
            let mut leaves = Vec::new();
            let mut pieces: Vec<&[u8]> = rest.chunks(rest.len() / nparts + 1).collect();
            if pieces.is_empty() {
                pieces.push(rest);
            }
            for (i, piece) in pieces.into_iter().enumerate() {
                let body = leaf_body(piece);
                m.extend_from_slice(b"--fz\r\n");
                if i % 2 == 1 {
                    // The default type of a part is text/plain.
                    m.extend_from_slice(b"Content-Transfer-Encoding: 8bit\r\n\r\n");
                } else {
                    m.extend_from_slice(
                        b"Content-Type: text/plain\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
                    );
                }
                m.extend_from_slice(&body);
                // The CRLF before a delimiter belongs to the delimiter.
                m.extend_from_slice(b"\r\n");
                leaves.push(body);
            }
            m.extend_from_slice(b"--fz--\r\n");
            (m, Some(leaves))
        }
    };
    let mut cuts: Vec<usize> = raw_cuts
        .iter()
        .map(|&c| usize::from(c) * message.len() / 255)
        .collect();
    cuts.sort_unstable();

    let whole = downgrade_pieces(&message, &[]);
    let split = downgrade_pieces(&message, &cuts);
    assert_eq!(whole, split, "the split {cuts:?} changed the result");
    let bytewise: Vec<usize> = (1..message.len().min(400)).collect();
    assert_eq!(
        whole,
        downgrade_pieces(&message, &bytewise),
        "byte-by-byte conversion changed the result"
    );

    let out = match (whole, &leaves) {
        (Ok(out), _) => out,
        (Err(_), None) => return,
        (Err(e), Some(_)) => panic!("a convertible message was refused: {e}"),
    };
    assert!(
        out.iter().all(|&b| b < 0x80),
        "8-bit octet in the output: {:?}",
        text(&out)
    );
    if crlf_normalized(&message) == message {
        assert_crlf_only(&out, "downgraded message");
    }
    let Some(leaves) = leaves else { return };
    let (head, body) = split_entity(&out);
    if shape == 3 {
        let parts = fz_parts(body);
        assert_eq!(parts.len(), leaves.len(), "parts in the output");
        for ((head, body), leaf) in parts.into_iter().zip(&leaves) {
            check_leaf(head, body, leaf);
        }
    } else {
        check_leaf(head, body, &leaves[0]);
        if !leaves[0].is_ascii() {
            assert!(
                text(head).contains("MIME-Version: 1.0\r\n"),
                "{:?}",
                text(head)
            );
        }
    }
}

// ---------------------------------------------------------------------------
// SMTP server session

const LOCAL_DOMAINS: [&str; 2] = ["local.test", "mx.local.test"];
const FUZZ_ALIASES: &str = "postmaster: root\nroot: joe\nlist: joe, ann, bob@remote.test\n\
                            loop1: loop2\nloop2: loop1\nbad: \"a b\"@local.test\n";

fn is_fuzz_local(domain: &str) -> bool {
    LOCAL_DOMAINS.iter().any(|d| d.eq_ignore_ascii_case(domain))
}

fn fuzz_users() -> HashSet<String> {
    ["joe", "ann", "root"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// The daemon's recipient policy on fixed tables; `joe`/`secret` may log in.
struct FuzzPolicy {
    aliases: Aliases,
    users: HashSet<String>,
}

impl FuzzPolicy {
    fn new() -> FuzzPolicy {
        FuzzPolicy {
            aliases: Aliases::parse(FUZZ_ALIASES).0,
            users: fuzz_users(),
        }
    }
}

impl Policy for FuzzPolicy {
    fn check_recipient(
        &self,
        rcpt: &Address,
        relay_allowed: bool,
    ) -> Result<Vec<Destination>, Reply> {
        let policy = RecipientPolicy {
            is_local_domain: &is_fuzz_local,
            aliases: &self.aliases,
            users: &self.users,
            any_local: false,
        };
        policy.resolve(rcpt, relay_allowed)
    }
}

/// The fuzz driver's users: joe/secret, and a blocked client.
fn fuzz_verdict(user: &str, password: &str) -> AuthVerdict {
    match (user, password) {
        ("joe", "secret") => AuthVerdict::Ok,
        ("blocked", _) => AuthVerdict::Blocked,
        _ => AuthVerdict::Bad,
    }
}

struct ServerDriver {
    s: ServerSession,
    cfg: SessionConfig,
    kind: ListenerKind,
    relay_allowed: bool,
    policy: FuzzPolicy,
    now: Instant,
    pending: Vec<u8>,
    stored: Vec<u8>,
    written: Vec<u8>,
    refuse_data: bool,
    fail_commit: bool,
    data_starts: usize,
    commits: usize,
}

impl ServerDriver {
    /// Feeds `chunk` and runs the session until it wants more input.
    fn feed(&mut self, chunk: &[u8], read_output: bool) {
        self.pending.extend_from_slice(chunk);
        loop {
            let closing = self.s.is_closing();
            let out_before = self.s.output().len();
            let n = self.s.handle_input(&self.pending, self.now, &self.policy);
            assert!(n <= self.pending.len());
            if closing {
                assert_eq!(n, self.pending.len(), "a closing session reads everything");
                assert_eq!(self.s.output().len(), out_before, "output after closing");
            }
            self.pending.drain(..n);
            self.stored.extend_from_slice(self.s.body());
            self.s.clear_body();
            let progressed = self.events();
            assert!(
                self.s.output().len() <= OUTPUT_HIGH_WATER + 4096,
                "unread replies grow without bound: {}",
                self.s.output().len()
            );
            if read_output {
                self.read_output();
            }
            if !progressed && (n == 0 || self.pending.is_empty()) {
                break;
            }
        }
    }

    fn read_output(&mut self) {
        let n = self.s.output().len();
        self.written.extend_from_slice(self.s.output());
        self.s.consume_output(n);
    }

    fn events(&mut self) -> bool {
        let mut any = false;
        while let Some(event) = self.s.poll_event() {
            any = true;
            match event {
                Event::DataStart => self.data_start(),
                Event::Commit => self.commit(),
                Event::Abort => self.stored.clear(),
                Event::StartTls => {
                    assert!(self.cfg.tls_available && self.s.tls().is_none());
                    // The driver drops what was pipelined after STARTTLS.
                    self.pending.clear();
                    self.read_output();
                    self.s
                        .tls_started("TLSv1.3 TLS13_AES_128_GCM_SHA256".into(), self.now);
                }
                Event::Authenticate(c) => self
                    .s
                    .auth_verdict(fuzz_verdict(&c.user, &c.password), self.now),
            }
        }
        any
    }

    fn data_start(&mut self) {
        let env = self.s.envelope().expect("DataStart without an envelope");
        assert!(!env.recipients.is_empty() && env.recipients.len() <= self.cfg.max_recipients);
        assert!(!env.destinations.is_empty());
        if self.kind != ListenerKind::Relay {
            assert!(self.s.auth_user().is_some(), "submission without AUTH");
        }
        let may_relay = self.relay_allowed || self.s.auth_user().is_some();
        for (dest, original) in &env.destinations {
            if let Destination::Remote(a) = dest {
                // Remote only as the client asked when it may relay; an
                // alias in a local domain may forward anywhere.
                let asked = Address::parse_mailbox(original).expect("original is an address");
                assert!(
                    may_relay || is_fuzz_local(&asked.domain),
                    "open relay: {a} for {original}"
                );
            }
        }
        self.stored.clear();
        self.data_starts += 1;
        if self.refuse_data && self.data_starts.is_multiple_of(2) {
            self.s.data_refused(reply::NO_SPACE);
        } else {
            self.s
                .data_started("0123456789ABCDEF", "Wed, 02 Dec 2026 17:00:00 +0000");
        }
    }

    fn commit(&mut self) {
        assert!(self.s.envelope().is_some(), "Commit without an envelope");
        assert!(self.s.summary().is_some());
        self.stored.extend_from_slice(self.s.body());
        self.s.clear_body();
        assert!(self.stored.starts_with(b"Received: from "));
        assert_crlf_only(&self.stored, "stored message");
        assert!(
            self.stored.len() as u64 <= self.cfg.max_message_size + 1024,
            "stored {} octets over the limit",
            self.stored.len()
        );
        self.stored.clear();
        self.commits += 1;
        if self.fail_commit && self.commits.is_multiple_of(2) {
            self.s.committed(Err(reply::NO_SPACE));
        } else {
            self.s.committed(Ok("0123456789ABCDEF"));
        }
    }

    fn timeout(&mut self) {
        self.s.handle_timeout(self.now);
        // A session that timed out either waits for a later deadline or
        // is abandoned (the driver drops its connection).
        if let Some(deadline) = self.s.deadline() {
            assert!(
                deadline > self.now || self.s.is_abandoned(),
                "deadline not moved after its timeout"
            );
        }
    }
}

/// `smtp::server::ServerSession`: a whole session over an arbitrary byte
/// stream split into chunks, with timer events, in every listener mode.
///
/// Input: a mode byte, a limits byte, a count byte and up to 15 control
/// bytes (chunk length in the low 5 bits, action in the high 3), then the
/// client's byte stream.
pub fn smtp_server(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.byte();
    let limits = input.byte();
    let ncontrols = usize::from(input.byte() % 16);
    let controls = input.bytes(ncontrols).to_vec();
    let stream = input.rest();

    let kind = match mode & 3 {
        1 => ListenerKind::Submission,
        2 => ListenerKind::Smtps,
        _ => ListenerKind::Relay,
    };
    let cfg = SessionConfig {
        hostname: "mx.local.test".into(),
        max_message_size: if limits & 1 != 0 { 64 } else { 4096 },
        max_recipients: 1 + usize::from((limits >> 1) & 3),
        max_errors: 3 + usize::from((limits >> 3) & 7),
        hop_limit: 2,
        timeout: Duration::from_secs(300),
        tls_available: mode & 8 != 0,
        auth_available: mode & 16 != 0,
        allow_plaintext_auth: mode & 32 != 0,
    };
    let now = Instant::now();
    let relay_allowed = mode & 4 != 0;
    let peer: IpAddr = [192, 0, 2, 1].into();
    let mut s = ServerSession::new(cfg.clone(), kind, peer, relay_allowed, now);
    if kind == ListenerKind::Smtps {
        s.set_implicit_tls("TLSv1.3 TLS13_AES_128_GCM_SHA256".into());
    }
    let mut d = ServerDriver {
        s,
        cfg,
        kind,
        relay_allowed,
        policy: FuzzPolicy::new(),
        now,
        pending: Vec::new(),
        stored: Vec::new(),
        written: Vec::new(),
        refuse_data: mode & 64 != 0,
        fail_commit: mode & 128 != 0,
        data_starts: 0,
        commits: 0,
    };
    d.read_output();

    let mut pos = 0;
    let mut step = 0;
    while pos < stream.len() {
        let control = if controls.is_empty() {
            0x1f
        } else {
            controls[step % controls.len()]
        };
        step += 1;
        let len = match control & 0x1f {
            0x1f => stream.len() - pos,
            n => usize::from(n) + 1,
        };
        let chunk = &stream[pos..(pos + len).min(stream.len())];
        pos += chunk.len();
        let action = control >> 5;
        d.feed(chunk, action != 3);
        match action {
            4 => {
                // A little later: a held AUTH failure is answered.
                d.now += Duration::from_secs(9);
                d.timeout();
            }
            5 => {
                // The client's idle deadline passes.
                if let Some(deadline) = d.s.deadline() {
                    d.now = d.now.max(deadline);
                }
                d.timeout();
            }
            6 => d.s.spool_failed(reply::NO_SPACE),
            7 if step % 4 == 0 => d.s.shutdown(),
            _ => {}
        }
        d.feed(&[], true);
    }
    d.s.connection_lost();
    assert!(d.s.is_closing());
    d.events();
    d.read_output();
    assert_reply_lines(&d.written);
}

// ---------------------------------------------------------------------------
// SMTP client session

const CLIENT_BODIES: [&[u8]; 5] = [
    b"Subject: t\r\n\r\n.\r\n..\r\n.x\r\nend\r\n",
    b"",
    b"no final line end.",
    b".\r\n",
    b"..\r\n.\r\n\r\n.",
];

struct ClientDriver {
    c: ClientSession,
    now: Instant,
    /// Every byte the client sent, and where bodies are in it.
    sent: Vec<u8>,
    body_ranges: Vec<(usize, usize)>,
    /// Started transactions not yet done: recipient count, and whether
    /// the session was already closed when it started.
    open: VecDeque<(usize, bool)>,
    started: usize,
    shape: u8,
    body_chunk: usize,
    quit: bool,
}

impl ClientDriver {
    fn transaction(&self) -> Transaction {
        let all = [
            "a@remote.test",
            "b@remote.test",
            "bad<rcpt>@x",
            "d@remote.test",
        ];
        let n = 1 + usize::from(self.shape & 3);
        Transaction {
            sender: match (self.shape >> 2) & 3 {
                0 | 1 => "s@local.test".into(),
                2 => String::new(),
                _ => "bad\r\nRSET".into(),
            },
            recipients: all[..n].iter().map(|s| s.to_string()).collect(),
            size: if self.shape & 16 != 0 { 1 << 30 } else { 100 },
            eight_bit: self.shape & 32 != 0,
            smtputf8: self.shape & 64 != 0,
        }
    }

    fn start(&mut self) {
        if self.started >= 3 || self.quit {
            return;
        }
        self.started += 1;
        let txn = self.transaction();
        self.open
            .push_back((txn.recipients.len(), self.c.is_closed()));
        self.c.start_transaction(txn, self.now);
    }

    fn drain_transmit(&mut self) {
        let out = self.c.poll_transmit();
        self.sent.extend_from_slice(out);
        let n = out.len();
        self.c.consume_transmit(n);
    }

    fn events(&mut self) {
        while let Some(event) = self.c.poll_event() {
            match event {
                ClientEvent::Ready => self.start(),
                ClientEvent::StartTls => self.c.tls_established(self.now),
                ClientEvent::WantBody => self.body(),
                ClientEvent::TransactionDone(outcomes) => {
                    let (n, _) = self
                        .open
                        .pop_front()
                        .expect("TransactionDone without a transaction");
                    assert_eq!(outcomes.len(), n, "one outcome per recipient");
                    for o in &outcomes {
                        match o {
                            RcptOutcome::Delivered(r) => assert_eq!(r.class(), 2, "{r}"),
                            RcptOutcome::Failed(r) => assert!(r.is_permanent(), "{r}"),
                            RcptOutcome::Deferred(_) => {}
                        }
                    }
                    self.start();
                }
                ClientEvent::SessionFailed(outcome) => {
                    // Only transactions started after the failure (their
                    // TransactionDone is queued behind this event) may
                    // still be open.
                    assert!(
                        self.open.iter().all(|&(_, after_close)| after_close),
                        "SessionFailed before TransactionDone"
                    );
                    assert!(matches!(outcome, RcptOutcome::Deferred(_)));
                    assert!(self.c.is_closed());
                }
            }
        }
    }

    /// Streams a body in chunks; the stuffed body must decode back to it.
    fn body(&mut self) {
        self.drain_transmit();
        let body = CLIENT_BODIES[usize::from(self.shape >> 4) % CLIENT_BODIES.len()];
        let start = self.sent.len();
        let mut pos = 0;
        while pos < body.len() {
            let end = (pos + self.body_chunk).min(body.len());
            let n = self.c.send_body(&body[pos..end]);
            assert!(n <= end - pos);
            if n == 0 {
                // Only when the session left the body phase (a reply came
                // in before the body): the buffer is always drained here.
                assert_eq!(self.sent.len(), start, "send_body stalled mid-body");
                return;
            }
            pos += n;
            self.drain_transmit();
        }
        self.c.finish_body(self.now);
        self.drain_transmit();
        let wire = &self.sent[start..];
        if wire.is_empty() {
            return;
        }
        let mut d = DataDecoder::new(1 << 20);
        let mut out = Vec::new();
        let used = d.decode(wire, &mut out);
        assert!(d.is_done(), "body not terminated: {:?}", text(wire));
        assert_eq!(used, wire.len(), "body terminated early: {:?}", text(wire));
        let mut expected = body.to_vec();
        if !expected.is_empty() && !expected.ends_with(b"\r\n") {
            expected.extend_from_slice(b"\r\n");
        }
        if out != expected {
            // An 8-bit transaction to a server without 8BITMIME and
            // SMTPUTF8 carries the body's 7-bit downgrade instead.
            assert!(self.shape & 32 != 0, "dot-stuffing changed the body");
            let mut conv = crate::smtp::mime7bit::Downgrade::new();
            let mut downgraded = Vec::new();
            let converted = conv
                .push(body, &mut downgraded)
                .and_then(|()| conv.finish(&mut downgraded));
            assert!(converted.is_ok(), "an unconvertible body was finished");
            if !downgraded.is_empty() && !downgraded.ends_with(b"\r\n") {
                downgraded.extend_from_slice(b"\r\n");
            }
            assert_eq!(out, downgraded, "dot-stuffing changed the downgraded body");
        }
        self.body_ranges.push((start, self.sent.len()));
    }

    fn check_commands(&self) {
        let mut from = 0;
        for &(start, end) in &self.body_ranges {
            assert_command_lines(&self.sent[from..start]);
            from = end;
        }
        assert_command_lines(&self.sent[from..]);
    }
}

/// `smtp::client::ClientSession`: arbitrary server replies, with timer
/// events, transactions, STARTTLS, AUTH and bodies driven as the daemon
/// does. Every transaction gets exactly one outcome per recipient, and
/// every body is dot-stuffed so that tern's own DATA decoder reads it back.
///
/// Input: a mode byte (TLS policy, implicit TLS, credentials, body chunk
/// size), a transaction shape byte, a count byte and up to 15 control bytes
/// (reply lines per chunk in the low 4 bits, a cut in bit 4, an action in
/// the high 3), then the server's replies.
pub fn smtp_client(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.byte();
    let shape = input.byte();
    let ncontrols = usize::from(input.byte() % 16);
    let controls = input.bytes(ncontrols).to_vec();
    let stream = input.rest();
    let cfg = ClientConfig {
        helo_name: "client.test".into(),
        tls: [
            TlsPolicy::Never,
            TlsPolicy::IfOffered,
            TlsPolicy::Required,
            TlsPolicy::Never,
        ][usize::from(mode & 3)],
        tls_active: mode & 4 != 0,
        credentials: (mode & 8 != 0).then(|| Credentials {
            user: "user".into(),
            password: "pass".into(),
        }),
        reply_timeout: Duration::from_secs(300),
        final_timeout: Duration::from_secs(600),
    };
    let now = Instant::now();
    let mut d = ClientDriver {
        c: ClientSession::new(cfg, now),
        now,
        sent: Vec::new(),
        body_ranges: Vec::new(),
        open: VecDeque::new(),
        started: 0,
        shape,
        body_chunk: 1 + usize::from(mode >> 4) * 5,
        quit: false,
    };
    let mut pos = 0;
    let mut step = 0;
    while pos < stream.len() {
        let control = if controls.is_empty() {
            0
        } else {
            controls[step % controls.len()]
        };
        step += 1;
        // A server answers what it was asked: feed whole reply lines (1 to
        // 16), the last one cut in half when bit 4 is set.
        let lines = usize::from(control & 0x0f) + 1;
        let mut end = pos;
        for _ in 0..lines {
            end = stream[end..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(stream.len(), |p| end + p + 1);
        }
        if control & 0x10 != 0 && end - pos > 1 {
            end -= (end - pos) / 2;
        }
        let chunk = &stream[pos..end];
        pos = end;
        d.c.handle_input(chunk, d.now);
        d.events();
        d.drain_transmit();
        match control >> 5 {
            4 => {
                if let Some(deadline) = d.c.poll_timeout() {
                    d.now = d.now.max(deadline);
                }
                d.c.handle_timeout(d.now);
            }
            5 => {
                d.quit = true;
                d.c.quit();
            }
            // A transaction started at the wrong time is deferred at once.
            6 => d.start(),
            _ => d.now += Duration::from_secs(1),
        }
        d.events();
        d.drain_transmit();
    }
    d.c.connection_lost(d.now);
    d.events();
    d.drain_transmit();
    assert!(d.c.is_closed());
    assert!(d.open.is_empty(), "a transaction never finished");
    d.check_commands();
}

/// The client's reply parser alone: the same replies in one piece and split
/// at a point give the same events and commands; enhanced codes parse into
/// their ranges.
pub fn smtp_client_reply(data: &[u8]) {
    let mut input = Input::new(data);
    let cut = input.byte();
    let replies = input.rest();
    let mut stream = b"220 mx.remote.test ESMTP\r\n".to_vec();
    stream.extend_from_slice(replies);
    let cut = usize::from(cut) * stream.len() / 255;
    let run = |pieces: &[&[u8]]| {
        let cfg = ClientConfig {
            helo_name: "client.test".into(),
            tls: TlsPolicy::Never,
            tls_active: false,
            credentials: None,
            reply_timeout: Duration::from_secs(300),
            final_timeout: Duration::from_secs(600),
        };
        let now = Instant::now();
        let mut c = ClientSession::new(cfg, now);
        for piece in pieces {
            c.handle_input(piece, now);
        }
        let events: Vec<ClientEvent> = std::iter::from_fn(|| c.poll_event()).collect();
        let ext = (
            c.offers("PIPELINING"),
            c.size_limit(),
            c.offers_auth("PLAIN"),
            c.extension_params("AUTH").map(str::to_string),
        );
        (events, c.poll_transmit().to_vec(), c.is_closed(), ext)
    };
    let whole = run(&[&stream]);
    let split = run(&[&stream[..cut], &stream[cut..]]);
    assert_eq!(whole, split, "split at {cut}");
    assert_command_lines(&whole.1);
    for line in replies.split(|&b| b == b'\n').take(20) {
        let r = crate::smtp::client::Reply {
            code: 250,
            lines: vec![text(line).into_owned()],
            own: None,
        };
        if let Some((class, subject, detail)) = r.enhanced() {
            assert!(matches!(class, 2 | 4 | 5) && subject <= 999 && detail <= 999);
        }
    }
}

// ---------------------------------------------------------------------------
// DNS

/// `dns::wire`: decoding never panics; a decoded message has canonical names,
/// encodes, and decodes back to itself; names in text form normalise
/// idempotently and survive a query round trip.
pub fn dns_wire(data: &[u8]) {
    let decoded = wire::decode(data);
    if let Ok(m) = &decoded {
        let (header, question) = wire::decode_head(data).expect("decode_head after decode");
        assert_eq!(header, m.header);
        assert_eq!(question, m.question);
        let names = m.question.iter().map(|q| &q.name).chain(
            [&m.answers, &m.authority, &m.additional]
                .into_iter()
                .flatten()
                .flat_map(|r| {
                    let inner = match &r.data {
                        RData::Mx { exchange, .. } => Some(exchange),
                        RData::Cname(target) => Some(target),
                        _ => None,
                    };
                    std::iter::once(&r.name).chain(inner)
                }),
        );
        for name in names {
            if !name.is_empty() {
                assert_eq!(
                    wire::normalize_name(name).as_ref(),
                    Ok(name),
                    "not canonical"
                );
            }
        }
        let encoded = m.encode().expect("a decoded message encodes");
        let again = wire::decode(&encoded).expect("an encoded message decodes");
        assert_eq!(&again, m, "decode → encode → decode");
    }
    let s = text(data);
    if let Ok(n) = wire::normalize_name(&s) {
        assert_eq!(wire::normalize_name(&n).as_ref(), Ok(&n), "normalize twice");
        let query = wire::encode_query(0x1234, &n, wire::TYPE_MX, true).expect("normalized name");
        let m = wire::decode(&query).expect("own query decodes");
        assert_eq!(m.header.id, 0x1234);
        assert_eq!(m.question.map(|q| q.name), Some(n));
    }
}

struct ResolverDriver {
    r: Resolver,
    now: Instant,
    outstanding: Vec<Transmit>,
    sent: HashSet<u64>,
    closed: HashSet<u64>,
    lookups: HashSet<LookupId>,
    results: HashMap<LookupId, Result<Vec<MxHost>, DnsError>>,
    transmits: usize,
}

const RESOLVER_NAMES: [&str; 8] = [
    "example.test",
    "mx1.example.test",
    "alias.example.test",
    "Example.TEST.",
    "[192.0.2.1]",
    "[IPv6:2001:db8::1]",
    "bad..name",
    "other.test",
];

impl ResolverDriver {
    fn collect(&mut self) {
        while let Some(t) = self.r.poll_transmit() {
            assert!(self.sent.insert(t.handle.0), "handle reused");
            self.transmits += 1;
            assert!(self.transmits < 5000, "transmits without bound");
            match t.transport {
                Transport::Udp => assert!(t.payload.len() <= wire::MAX_UDP_PAYLOAD),
                Transport::Tcp => {
                    let len = usize::from(u16::from_be_bytes([t.payload[0], t.payload[1]]));
                    assert_eq!(len + 2, t.payload.len());
                }
            }
            self.outstanding.push(t);
        }
        while let Some(h) = self.r.poll_closed() {
            assert!(self.sent.contains(&h.0), "closed a handle never sent");
            assert!(self.closed.insert(h.0), "handle closed twice");
            self.outstanding.retain(|t| t.handle != h);
        }
        while let Some((id, result)) = self.r.poll_result() {
            assert!(self.lookups.contains(&id), "result for an unknown lookup");
            if let Ok(hosts) = &result {
                assert!(!hosts.is_empty() && hosts.len() <= MAX_MX_HOSTS);
                for h in hosts {
                    assert!(!h.addrs.is_empty());
                    let first_v4 = h.addrs.iter().position(IpAddr::is_ipv4);
                    if let Some(i) = first_v4 {
                        assert!(h.addrs[i..].iter().all(IpAddr::is_ipv4), "IPv6 after IPv4");
                    }
                    let unique: HashSet<&IpAddr> = h.addrs.iter().collect();
                    assert_eq!(unique.len(), h.addrs.len(), "duplicate address");
                }
            }
            assert!(self.results.insert(id, result).is_none(), "two results");
        }
    }

    fn lookup(&mut self, input: &mut Input) {
        let choice = input.byte();
        let name = if choice & 0x80 != 0 {
            input.string()
        } else {
            RESOLVER_NAMES[usize::from(choice) % RESOLVER_NAMES.len()].to_string()
        };
        let id = if choice & 0x40 != 0 {
            self.r.resolve_host(&name, self.now)
        } else {
            self.r.resolve_mx(&name, self.now)
        };
        assert!(self.lookups.insert(id), "lookup id reused");
    }

    /// A response to `query`: its ID and question, then header flags,
    /// counts and records from the input.
    fn spliced(query: &[u8], input: &mut Input) -> Vec<u8> {
        let mut p = query[..2].to_vec();
        let flags = (input.u16() | 0x8000) & !0x7800;
        p.extend_from_slice(&flags.to_be_bytes());
        p.extend_from_slice(&[0, 1]);
        for _ in 0..3 {
            p.extend_from_slice(&[0, input.byte() % 8]);
        }
        p.extend_from_slice(&query[wire::HEADER_LEN..]);
        let n = usize::from(input.byte());
        p.extend_from_slice(input.bytes(n));
        p
    }

    /// A well-formed answer built from the input: records about the asked
    /// name and a few others, so CNAME chains, glue and MX lists come up.
    fn structured(query: &[u8], input: &mut Input) -> Vec<u8> {
        let Ok(q) = wire::decode(query) else {
            return Vec::new();
        };
        let Some(question) = q.question else {
            return Vec::new();
        };
        let names = [
            question.name.clone(),
            "mx1.example.test".to_string(),
            "mx2.example.test".to_string(),
            "alias.example.test".to_string(),
            "example.test".to_string(),
            String::new(),
        ];
        let record = |input: &mut Input| {
            let name = input.pick(&[0usize, 0, 1, 2, 3, 4]);
            let kind = input.byte();
            let ttl = u32::from(input.byte()) * 60;
            let target = names[usize::from(kind >> 3) % names.len()].clone();
            let data = match (kind & 7) % 6 {
                0 => RData::A([192, 0, 2, input.byte()].into()),
                1 => RData::Aaaa(std::net::Ipv6Addr::new(
                    0x2001,
                    0xdb8,
                    0,
                    0,
                    0,
                    0,
                    0,
                    input.u16(),
                )),
                2 => RData::Mx {
                    preference: u16::from(input.byte() % 4),
                    exchange: target,
                },
                3 => RData::Cname(target),
                4 => RData::Soa {
                    minimum: input.u32(),
                },
                _ => RData::Mx {
                    preference: 0,
                    exchange: String::new(),
                },
            };
            Record {
                name: names[name].clone(),
                ttl,
                data,
            }
        };
        let counts = [input.byte() % 6, input.byte() % 3, input.byte() % 4];
        let answers = (0..counts[0]).map(|_| record(input)).collect();
        let authority = (0..counts[1]).map(|_| record(input)).collect();
        let additional = (0..counts[2]).map(|_| record(input)).collect();
        let rcode = input.pick(&[0u8, 0, 0, 3, 2, 5]);
        Message {
            header: Header {
                id: q.header.id,
                is_response: true,
                recursion_available: true,
                truncated: input.byte().is_multiple_of(8),
                rcode,
                ..Header::default()
            },
            question: Some(question),
            answers,
            authority,
            additional,
            edns: input.byte().is_multiple_of(2).then(wire::Edns::ours),
        }
        .encode()
        .unwrap_or_default()
    }

    fn respond(&mut self, input: &mut Input, how: u8) {
        if self.outstanding.is_empty() {
            return;
        }
        let i = usize::from(input.byte()) % self.outstanding.len();
        let t = self.outstanding[i].clone();
        let query = match t.transport {
            Transport::Udp => &t.payload[..],
            Transport::Tcp => &t.payload[2..],
        };
        let payload = match how {
            0 => Self::spliced(query, input),
            1 => Self::structured(query, input),
            _ => {
                let n = usize::from(input.byte());
                let mut p = input.bytes(n).to_vec();
                if p.len() >= 2 {
                    p[..2].copy_from_slice(&query[..2]);
                }
                p
            }
        };
        let from = if input.byte() == 0xff {
            SocketAddr::from(([192, 0, 2, 99], 53))
        } else {
            t.server
        };
        self.r.handle_response(t.handle, from, &payload, self.now);
    }
}

/// `dns::resolver::Resolver`, sans-IO: lookups answered with arbitrary and
/// with well-formed-but-hostile replies (truncation, CNAME chains and loops,
/// null MX, glue), transport errors and timeouts. Every lookup ends with
/// exactly one result, every exchange handed out is closed exactly once.
pub fn dns_resolver(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.byte();
    let servers: Vec<SocketAddr> = [
        SocketAddr::from(([127, 0, 0, 1], 53)),
        SocketAddr::from(([127, 0, 0, 2], 53)),
        "[::1]:53".parse().expect("literal"),
    ][..1 + usize::from(mode % 3)]
        .to_vec();
    let cfg = ResolverConfig {
        servers,
        timeout: Duration::from_secs(1 + u64::from((mode >> 2) & 3)),
        attempts: 1 + u32::from((mode >> 4) & 3),
    };
    let seed = u64::from(input.u32());
    let mut d = ResolverDriver {
        r: Resolver::new(cfg, seeded_random(seed)),
        now: Instant::now(),
        outstanding: Vec::new(),
        sent: HashSet::new(),
        closed: HashSet::new(),
        lookups: HashSet::new(),
        results: HashMap::new(),
        transmits: 0,
    };
    d.lookup(&mut input);
    d.collect();
    let mut ops = 0;
    while !input.is_empty() && ops < 200 {
        ops += 1;
        match input.byte() % 8 {
            0 | 1 => d.respond(&mut input, 0),
            2 | 3 => d.respond(&mut input, 1),
            4 => d.respond(&mut input, 2),
            5 => {
                if !d.outstanding.is_empty() {
                    let i = usize::from(input.byte()) % d.outstanding.len();
                    let h = d.outstanding[i].handle;
                    d.r.handle_transport_error(h, d.now);
                }
            }
            6 => {
                if let Some(t) = d.r.poll_timeout() {
                    d.now = d.now.max(t);
                }
                d.r.handle_timeout(d.now);
            }
            _ => d.lookup(&mut input),
        }
        d.collect();
    }
    // Let every remaining exchange time out: each lookup must finish.
    for _ in 0..2000 {
        let Some(t) = d.r.poll_timeout() else {
            break;
        };
        d.now = d.now.max(t);
        d.r.handle_timeout(d.now);
        d.collect();
    }
    assert!(d.r.poll_timeout().is_none(), "exchanges never time out");
    assert!(d.outstanding.is_empty(), "exchanges never closed");
    assert_eq!(d.sent, d.closed, "every handle is closed once");
    for id in &d.lookups {
        assert!(d.results.contains_key(id), "lookup {id:?} never finished");
    }
}

// ---------------------------------------------------------------------------
// Spool files

fn fuzz_mailbox(input: &mut Input) -> Mailbox {
    Mailbox::new(&input.string()).unwrap_or_else(|| Mailbox::new("joe").expect("valid"))
}

fn fuzz_address(input: &mut Input) -> Address {
    let local = input.string();
    let domain = input.pick(&["remote.test", "[192.0.2.7]", "[ipv6:2001:db8::1]", "x.y.z"]);
    Address::from_parts(&local, domain)
        .unwrap_or_else(|_| Address::parse_mailbox("bob@remote.test").expect("valid"))
}

/// `spool::envelope::StoredEnvelope`: decoding arbitrary files, and
/// encode → decode of envelopes built from the input.
pub fn spool_envelope(data: &[u8]) {
    if let Some(Ok(env)) = StoredEnvelope::decode(data) {
        let offset = env.body_offset as usize;
        assert!(offset <= data.len() && data[..offset].ends_with(b"\n\n"));
        assert!(!env.recipients.is_empty());
        let mut encoded = env.encode();
        encoded.extend_from_slice(b"body");
        let mut back = StoredEnvelope::decode(&encoded)
            .expect("complete")
            .expect("re-encoded envelope decodes");
        assert_eq!(&encoded[back.body_offset as usize..], b"body");
        back.body_offset = env.body_offset;
        assert_eq!(back, env, "decode → encode → decode");
    }

    let mut input = Input::new(data);
    let flags = input.byte();
    let mut recipients = Vec::new();
    for _ in 0..1 + flags % 4 {
        let dest = match input.byte() % 4 {
            0 => Destination::Local(fuzz_mailbox(&mut input)),
            1 => Destination::Refused(if input.byte() & 1 == 0 {
                Refusal::UnknownUser
            } else {
                Refusal::BadMailboxName
            }),
            _ => Destination::Remote(fuzz_address(&mut input)),
        };
        recipients.push(Recipient {
            dest,
            original: input.string(),
        });
    }
    let env = StoredEnvelope {
        id: QueueId(0),
        arrival: u64::from(input.u32()) << 8,
        sender: input.string(),
        recipients,
        client: input.string(),
        eight_bit: flags & 0x80 != 0,
        body_offset: 0,
    };
    let mut encoded = env.encode();
    if !env.eight_bit {
        let at = body_flag_offset(&encoded) as usize;
        assert_eq!(encoded[at], b'7', "body flag offset");
    }
    let body_at = encoded.len() as u64;
    encoded.extend_from_slice(input.rest());
    let back = StoredEnvelope::decode(&encoded)
        .expect("complete")
        .expect("encoded envelope decodes");
    assert_eq!(back.body_offset, body_at);
    assert_eq!(
        StoredEnvelope {
            body_offset: 0,
            ..back
        },
        env,
        "encode → decode"
    );
}

/// `spool::envelope::decode_state`: arbitrary state files, and
/// encode → decode of states built from the input.
pub fn spool_state(data: &[u8]) {
    let mut input = Input::new(data);
    let n = usize::from(input.byte() % 8);
    let file = input.rest();
    if let Some(Progress {
        states,
        attempts,
        age,
    }) = decode_state(file, n)
    {
        assert_eq!(states.len(), n);
        assert_state_roundtrip(&states, attempts, age);
    }

    let mut input = Input::new(data);
    let n = usize::from(input.byte() % 8);
    let attempts = input.u32();
    let age = u64::from(input.u32());
    let states: Vec<RcptState> = (0..n).map(|_| state_from(&mut input)).collect();
    assert_state_roundtrip(&states, attempts, age);
}

/// A recipient state as the daemon makes them: a relay once sent, a
/// reason (every origin, a code and a status of the same class, any text)
/// when deferred or failed.
fn state_from(input: &mut Input) -> RcptState {
    use crate::delivery::outcome::{Origin, Reason, Status};
    let status = input.pick(&[
        RcptStatus::Pending,
        RcptStatus::Deferred,
        RcptStatus::Sent,
        RcptStatus::Failed,
    ]);
    let mut state = RcptState {
        status,
        ..RcptState::default()
    };
    match status {
        RcptStatus::Pending => {}
        RcptStatus::Sent => state.relay = input.string(),
        RcptStatus::Deferred | RcptStatus::Failed => {
            if input.byte().is_multiple_of(4) {
                return state;
            }
            let code = input.pick(&[421u16, 450, 451, 452, 454, 550, 553, 554, 556]);
            let reply_status = Status::new(
                (code / 100) as u8,
                (input.u32() % 1000) as u16,
                (input.u32() % 1000) as u16,
            );
            let origin = match input.byte() % 8 {
                0 => Origin::Remote {
                    relay: input.string(),
                },
                k => [
                    Origin::Dns,
                    Origin::Connect,
                    Origin::Tls,
                    Origin::Timeout,
                    Origin::Protocol,
                    Origin::Local,
                    Origin::Queue,
                ]
                .into_iter()
                .nth(usize::from(k - 1))
                .unwrap_or(Origin::Queue),
            };
            state.reason = Some(Reason::new(origin, code, reply_status, input.string()));
        }
    }
    state
}

/// encode → decode gives the states back (reason texts are one line by
/// construction; relays are stored in xtext, so any relay comes back).
fn assert_state_roundtrip(states: &[RcptState], attempts: u32, age: u64) {
    let encoded = encode_state(states, attempts, age);
    assert_eq!(
        decode_state(&encoded, states.len()),
        Some(Progress {
            states: states.to_vec(),
            attempts,
            age
        }),
        "encode → decode"
    );
}

/// A deterministic random source for the resolver (xorshift64 from the
/// input's seed): fuzzing needs repeatable query IDs, not secret ones.
fn seeded_random(seed: u64) -> crate::dns::resolver::RandomSource {
    let mut state = seed | 1;
    Box::new(move |buf: &mut [u8]| {
        for b in buf.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = state.to_le_bytes().first().copied().unwrap_or(0);
        }
        Ok(())
    })
}

/// A file in memory (no file system): the drop reader needs a `File`.
fn memory_file(data: &[u8]) -> File {
    // SAFETY: memfd_create with a valid C string; the descriptor is owned by
    // the File from here on.
    let fd = unsafe { libc::memfd_create(c"tern-fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(data).expect("write memfd");
    file.seek(SeekFrom::Start(0)).expect("seek memfd");
    file
}

/// `spool::drop::read_header` and the checks the daemon's import applies
/// (addresses parsed as from a remote client, recipients decided by the
/// recipient policy), then the spool envelope it would write.
pub fn spool_drop(data: &[u8]) {
    let mut file = memory_file(data);
    let Ok(head) = crate::spool::drop::read_header(&mut file) else {
        return;
    };
    let end = data
        .windows(2)
        .position(|w| w == b"\n\n")
        .expect("a header ends at an empty line");
    let mut rest = Vec::new();
    file.read_to_end(&mut rest).expect("read memfd");
    assert_eq!(rest, &data[end + 2..], "the file is left at the message");
    assert!(!head.recipients.is_empty());
    assert!(!head.sender.contains('\n'));
    assert!(head.recipients.iter().all(|r| !r.contains('\n')));

    // As daemon::drop::import_drop does.
    let sender = if head.sender.is_empty() {
        String::new()
    } else {
        match Address::parse_mailbox(&head.sender) {
            Ok(a) => {
                check_address(&a);
                a.to_string()
            }
            Err(_) => return,
        }
    };
    let aliases = Aliases::parse(FUZZ_ALIASES).0;
    let users = fuzz_users();
    let policy = RecipientPolicy {
        is_local_domain: &is_fuzz_local,
        aliases: &aliases,
        users: &users,
        any_local: false,
    };
    let mut decided = Vec::new();
    for r in &head.recipients {
        let parsed = if r.contains('@') {
            Address::parse_mailbox(r)
        } else {
            Address::parse_mailbox(&format!("{r}@mx.local.test"))
        };
        let Ok(a) = parsed else {
            return;
        };
        check_address(&a);
        let original = a.to_string();
        let destinations = if is_fuzz_local(&a.domain) {
            policy
                .resolve_local(&a.local)
                .unwrap_or_else(|why| vec![Destination::Refused(why)])
        } else {
            vec![Destination::Remote(a)]
        };
        assert!(!destinations.is_empty(), "{r:?} decided to go nowhere");
        for dest in destinations {
            push_unique(&mut decided, dest, &original);
        }
    }
    let env = StoredEnvelope {
        id: QueueId(0),
        arrival: 1_795_000_000,
        sender,
        recipients: decided
            .into_iter()
            .map(|(dest, original)| Recipient { dest, original })
            .collect(),
        client: "local uid 1000".into(),
        eight_bit: false,
        body_offset: 0,
    };
    let encoded = env.encode();
    let back = StoredEnvelope::decode(&encoded)
        .expect("complete")
        .expect("decodes");
    assert_eq!(
        StoredEnvelope {
            body_offset: 0,
            ..back
        },
        env
    );
}

// ---------------------------------------------------------------------------
// Administrator's files

/// `config::Config::parse` (and resolv.conf, read the same way): a config
/// that parses is valid, and its typed values print and parse back.
pub fn config(data: &[u8]) {
    let s = text(data);
    let lines = s.lines().count();
    match Config::parse(&s, "fuzz.conf") {
        Ok(cfg) => {
            assert!(address::is_valid_domain(&cfg.hostname));
            assert!(cfg.max_message_size > 0 && !cfg.retry_schedule.is_empty());
            assert!(cfg.max_recipients > 0 && cfg.max_errors > 0 && cfg.hop_limit > 0);
            assert!(cfg.mx_port != 0);
            assert!(cfg.retry_schedule.iter().all(|d| !d.is_zero()));
            for listener in cfg
                .listen
                .iter()
                .chain(&cfg.submission_listen)
                .chain(&cfg.smtps_listen)
            {
                assert!(listener.port() != 0);
            }
            for c in &cfg.relay_networks {
                assert_eq!(Cidr::parse(&c.to_string()).as_ref(), Ok(c));
            }
            for h in &cfg.smarthost {
                assert_eq!(HostPort::parse(&h.to_string(), 25).as_ref(), Ok(h));
            }
            for d in &cfg.local_domains {
                assert!(cfg.is_local_domain(d) && cfg.is_local_domain(&d.to_ascii_uppercase()));
            }
        }
        Err(errors) => {
            assert!(!errors.is_empty());
            assert!(errors.windows(2).all(|w| w[0].line <= w[1].line));
            assert!(errors.iter().all(|e| e.line <= lines));
        }
    }
    let resolv = crate::dns::parse_resolv_conf(&s);
    assert!(!resolv.servers.is_empty() && resolv.servers.len() <= 3);
    assert!(resolv.attempts >= 1 && !resolv.timeout.is_zero());
    for line in s.lines().take(50) {
        let value = line.split_once('=').map_or(line, |(_, v)| v).trim();
        if let Ok(c) = Cidr::parse(value) {
            assert_eq!(Cidr::parse(&c.to_string()), Ok(c), "{value:?}");
            let _ = c.contains([127, 0, 0, 1].into());
        }
        if let Ok(h) = HostPort::parse(value, 25) {
            assert!(h.port != 0);
            assert_eq!(HostPort::parse(&h.to_string(), 25).as_ref(), Ok(&h));
        }
        if let Ok(d) = config::parse_duration(value) {
            assert!(d <= config::MAX_DURATION);
        }
        let _ = config::parse_size(value);
    }
}

/// `delivery::aliases`: parse arbitrary files and expand every name they
/// define: a successful expansion is never empty, bounded, duplicate-free
/// and never names a local domain as remote.
pub fn aliases(data: &[u8]) {
    let s = text(data);
    let (aliases, errors) = Aliases::parse(&s);
    let lines = s.lines().count();
    assert!(errors.iter().all(|e| e.line >= 1 && e.line <= lines));
    assert!(aliases.len() <= lines);
    let mut names: Vec<String> = s
        .lines()
        .filter_map(|l| {
            l.split_once(':')
                .map(|(n, _)| n.trim().trim_matches('"').to_string())
        })
        .take(32)
        .collect();
    names.extend(["postmaster", "root", "nobody", "Joe+ext"].map(String::from));
    let users = fuzz_users();
    for name in &names {
        if let Ok(targets) = aliases.expand(name, &is_fuzz_local) {
            assert!(!targets.is_empty(), "{name:?} expands to nothing");
            assert!(targets.len() <= MAX_EXPANSION);
            let unique: HashSet<&Target> = targets.iter().collect();
            assert_eq!(unique.len(), targets.len(), "duplicate targets");
            for t in &targets {
                if let Target::Remote(a) = t {
                    assert!(!is_fuzz_local(&a.domain), "local domain as remote: {a}");
                }
            }
        }
        for any_local in [false, true] {
            let policy = RecipientPolicy {
                is_local_domain: &is_fuzz_local,
                aliases: &aliases,
                users: &users,
                any_local,
            };
            if let Ok(destinations) = policy.resolve_local(name) {
                assert!(!destinations.is_empty(), "{name:?} goes nowhere");
            }
        }
    }
}

/// `auth::Users`: arbitrary users files (never echoing a hash in an error),
/// and a constructed entry that verifies exactly its own password.
pub fn users(data: &[u8]) {
    let s = text(data);
    let (users, errors) = Users::parse(&s);
    let all: Vec<&str> = s.lines().collect();
    assert!(users.len() <= all.len());
    for (line, message) in &errors {
        assert!(*line >= 1 && *line <= all.len());
        let (user, hash) = all[*line - 1].split_once(':').unwrap_or(("", ""));
        let hash = hash.trim();
        // Messages hold no '$' but in this example, so a hash-like text
        // found in one was copied from the line.
        if hash.starts_with('$') && hash.len() >= 12 && message.contains(hash) {
            assert!(
                user.contains(hash) || "$pbkdf2-sha256$ITER$SALT$HASH".contains(hash),
                "error echoes the hash: {message}"
            );
        }
    }

    // A users file with one entry of 1 to 4 rounds (cheap to verify).
    let mut input = Input::new(data);
    let rounds = 1 + u32::from(input.byte() % 4);
    let password = input.string();
    let salt = input.bytes(16).to_vec();
    if password.is_empty() || salt.is_empty() {
        return;
    }
    let mut hash = [0u8; 32];
    let iterations = NonZeroU32::new(rounds).expect("non-zero");
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        &salt,
        password.as_bytes(),
        &mut hash,
    );
    let line = format!(
        "$pbkdf2-sha256${rounds}${}${}",
        auth::base64_encode(&salt),
        auth::base64_encode(&hash)
    );
    let (users, errors) = Users::parse(&format!("# fuzz\njoe:{line}\n"));
    assert!(errors.is_empty(), "{errors:?}");
    assert!(users.check("joe", &password));
    assert!(!users.check("joe", &format!("{password}x")));
    assert!(!users.check("nobody", &password));
    assert!(auth::verify_password(&line, &password));
}

fn check_sasl_step(step: &SaslStep) {
    match step {
        SaslStep::Done { user, password } => {
            for c in [user, password] {
                assert!(!c.is_empty() && c.len() <= auth::MAX_CREDENTIAL_LEN);
                assert!(!c.contains('\0'));
            }
        }
        SaslStep::Challenge(c) => assert!(auth::base64_decode(c).is_some()),
        SaslStep::Failed(_) | SaslStep::Cancelled => {}
    }
}

/// `auth`: base64 (strict and canonical) and SASL PLAIN/LOGIN exchanges,
/// both arbitrary and built from credentials taken from the input.
pub fn sasl(data: &[u8]) {
    let encoded = auth::base64_encode(data);
    assert_eq!(auth::base64_decode(&encoded).as_deref(), Some(data));
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some(decoded) = auth::base64_decode(s) {
            assert_eq!(
                auth::base64_encode(&decoded),
                s,
                "non-canonical base64 accepted"
            );
        }
    }

    // An arbitrary exchange: the first line is the AUTH argument.
    let s = text(data);
    let mut lines = s.split('\n');
    if let Ok((mut server, step)) = SaslServer::start(lines.next().unwrap_or("")) {
        check_sasl_step(&step);
        let mut finished = !matches!(step, SaslStep::Challenge(_));
        for line in lines.take(8) {
            let step = server.step(line);
            check_sasl_step(&step);
            if finished {
                assert!(matches!(step, SaslStep::Failed(_)), "step after the end");
            }
            finished |= !matches!(step, SaslStep::Challenge(_));
        }
    }

    // Credentials from the input must come through PLAIN and LOGIN intact.
    let (user, password) = s.split_once('\0').unwrap_or((&s, "pw"));
    let valid = |c: &str| !c.is_empty() && c.len() <= auth::MAX_CREDENTIAL_LEN && !c.contains('\0');
    if !valid(user) || !valid(password) {
        return;
    }
    let done = SaslStep::Done {
        user: user.to_string(),
        password: password.to_string(),
    };
    for authzid in ["", user] {
        let message = auth::base64_encode(format!("{authzid}\0{user}\0{password}").as_bytes());
        let (_, step) = SaslServer::start(&format!("PLAIN {message}")).expect("PLAIN");
        assert_eq!(step, done, "PLAIN initial response");
        let (mut server, step) = SaslServer::start("plain").expect("PLAIN");
        assert_eq!(step, SaslStep::Challenge(String::new()));
        assert_eq!(server.step(&message), done, "PLAIN response");
    }
    let (mut server, step) = SaslServer::start("LOGIN").expect("LOGIN");
    assert_eq!(step, SaslStep::Challenge(auth::LOGIN_USER_PROMPT.into()));
    let step = server.step(&auth::base64_encode(user.as_bytes()));
    assert_eq!(
        step,
        SaslStep::Challenge(auth::LOGIN_PASSWORD_PROMPT.into())
    );
    assert_eq!(server.step(&auth::base64_encode(password.as_bytes())), done);
}

/// A fuzz driver.
pub type Driver = fn(&[u8]);

/// Every target, by name (the regression test replays corpora through it).
pub const TARGETS: &[(&str, Driver)] = &[
    ("smtp_command", smtp_command),
    ("smtp_address", smtp_address),
    ("smtp_server", smtp_server),
    ("smtp_data", smtp_data),
    ("smtp_client", smtp_client),
    ("smtp_client_reply", smtp_client_reply),
    ("dns_wire", dns_wire),
    ("dns_resolver", dns_resolver),
    ("spool_envelope", spool_envelope),
    ("spool_state", spool_state),
    ("spool_drop", spool_drop),
    ("config", config),
    ("aliases", aliases),
    ("users", users),
    ("sasl", sasl),
    ("mime_downgrade", mime_downgrade),
];
