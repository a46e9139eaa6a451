//! Drivers for what an SMTP client sends a server, parsed without a session:
//! paths and addresses (`smtp_address`), command lines (`smtp_command`) and
//! the DATA decoder (`smtp_data`).
//!
//! Separate from the other groups of targets: see the parent module for what
//! the drivers share.

use crate::smtp::address::{self, parse_path, Address, MAX_PATH};
use crate::smtp::command::{parse_command, Body, Command};
use crate::smtp::data::{DataDecoder, DataSummary, MAX_LINE};

use super::{assert_crlf_only, assert_reply, check_address, text, Input};

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
            if params.smtputf8 {
                line.push_str(" SMTPUTF8");
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
        Ok(Command::Rcpt(Some(a), _, _)) => check_address(&a),
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
