//! `mail` / `mailx`: mailx-style submission for scripts (smartd, mdadm,
//! apcupsd, cron jobs): `mail [-s SUBJECT] [-a FILE]... [-r FROM] [-c ADDR]
//! [-b ADDR] RCPT...` with the body on stdin.
//!
//! The message is composed here (From, To, Cc, Subject as RFC 2047
//! encoded-words when needed, Date, Message-ID, MIME; attachments as
//! multipart/mixed with base64 parts) and handed to the sendmail injection
//! path (`sendmail::inject`) as if it had come on sendmail's stdin with
//! `-i`: the same drop file, the same recipient checks, the same
//! `max_message_size`, and it works whether or not the daemon is running.
//! Bcc recipients are only in the envelope.
//!
//! Also accepted: `-n`, `-N`, `-i` (ignored: no start-up file, no
//! interactive mode), `-S VAR[=VALUE]` (ignored: s-nail settings such as
//! `sendwait` or `smtp=`; tern is the transport), `-v` (print the queue file name), `-E` (send nothing
//! when the body is empty), `--` (end of options). Options and recipients
//! may be mixed (GNU getopt order); values may be attached (`-sSubject`).
//! Reading mail is not supported. Under the `mail`/`mailx` names `-c` is
//! Cc, so the configuration comes from `TERN_CONFIG` (default
//! `/etc/tern.conf`); `tern -c FILE mail ...` names it explicitly.

use std::io::{self, Read};
use std::path::Path;

use super::sendmail::{self, Flags};
use super::{EX_DATAERR, EX_NOINPUT, EX_OK, EX_TEMPFAIL, EX_USAGE};
use crate::auth::base64_encode;
use crate::bounce::rfc5322_date;
use crate::config::Config;
use crate::daemon::unix_now;
use crate::smtp::address::Address;

const USAGE: &str =
    "usage: mail [-s SUBJECT] [-a FILE]... [-r FROM] [-c ADDR] [-b ADDR] [-E] [-v] RCPT...";

/// Header lines are folded to at most this many octets (RFC 5322 §2.1.1).
pub const MAX_HEADER_LINE: usize = 78;
/// UTF-8 octets per encoded-word: base64 of 42 octets is 56 characters, so
/// `=?UTF-8?B?...?=` is 68 (RFC 2047 §2 allows 75) and fits after
/// `Subject: ` within [`MAX_HEADER_LINE`].
pub const ENCODED_WORD_OCTETS: usize = 42;
/// Base64 line length in attachments (RFC 2045 §6.8).
pub const BASE64_LINE: usize = 76;
/// Encoded characters per quoted-printable line before the soft break `=`
/// (RFC 2045 §6.7 rule 5: at most 76 with the `=`).
pub const QP_LINE: usize = 75;
/// A body line longer than this (without its line end) cannot be sent as
/// 7bit/8bit (RFC 5322 §2.1.1): the body goes quoted-printable.
pub const MAX_BODY_LINE: usize = 998;
/// The longest filename (quoted) or percent-encoded RFC 2231 segment on
/// one header line: with `filename*NN*=utf-8''` and `;` it stays within
/// [`MAX_HEADER_LINE`].
pub const FILENAME_SEGMENT: usize = 50;

/// The parsed command line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MailArgs {
    pub subject: Option<String>,
    pub attachments: Vec<String>,
    /// `-r`: an address, or `Name <address>`.
    pub from: Option<String>,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    /// `-E`: an empty body sends nothing.
    pub skip_empty: bool,
    pub verbose: bool,
}

pub fn parse_args(args: &[String]) -> Result<MailArgs, String> {
    let mut m = MailArgs::default();
    let mut i = 0;
    while let Some(a) = args.get(i).map(String::as_str) {
        if a == "--" {
            m.to.extend(args.iter().skip(i + 1).cloned());
            break;
        }
        if !a.starts_with('-') || a == "-" {
            m.to.push(a.to_string());
            i += 1;
            continue;
        }
        // The flag is the first two octets; a value may follow attached.
        let (flag, attached) = a.split_at_checked(2).unwrap_or((a, ""));
        let takes_value = matches!(flag, "-s" | "-a" | "-r" | "-c" | "-b" | "-S");
        if takes_value {
            let value = if attached.is_empty() {
                i += 1;
                args.get(i)
                    .cloned()
                    .ok_or_else(|| format!("{flag} needs a value"))?
            } else {
                attached.to_string()
            };
            match flag {
                "-s" => m.subject = Some(value),
                "-a" => {
                    if value.is_empty() {
                        return Err("-a needs a file name".into());
                    }
                    m.attachments.push(value);
                }
                "-r" => m.from = Some(value),
                "-c" => m.cc.push(value),
                "-b" => m.bcc.push(value),
                _ => {} // -S VAR[=VALUE]: s-nail/mailx settings, none apply
            }
        } else {
            match a {
                "-n" | "-N" | "-i" => {}
                "-E" => m.skip_empty = true,
                "-v" => m.verbose = true,
                _ => return Err(format!("unknown option {a}")),
            }
        }
        i += 1;
    }
    if m.to.is_empty() && m.cc.is_empty() && m.bcc.is_empty() {
        return Err("no recipients given (reading mail is not supported)".into());
    }
    Ok(m)
}

/// The `From:` mailbox: an optional display name and a qualified address.
#[derive(Debug, PartialEq, Eq)]
pub struct NamedAddress {
    pub name: Option<String>,
    pub addr: String,
}

/// `-r` as given: `addr`, `<addr>` or `Name <addr>` (the name may be quoted).
fn split_from(value: &str) -> (Option<String>, String) {
    let value = value.trim();
    match value
        .rsplit_once('<')
        .and_then(|(name, rest)| rest.strip_suffix('>').map(|addr| (name, addr)))
    {
        Some((name, addr)) => {
            let name = name.trim().trim_matches('"').trim();
            let name = (!name.is_empty()).then(|| name.to_string());
            (name, addr.trim().to_string())
        }
        None => (None, value.to_string()),
    }
}

/// What goes into the header besides the body and the attachments.
#[derive(Debug)]
pub struct Headers<'a> {
    pub from: &'a NamedAddress,
    pub to: &'a [String],
    pub cc: &'a [String],
    pub subject: Option<&'a str>,
    pub date: &'a str,
    pub message_id: &'a str,
    /// The multipart boundary (used only with attachments).
    pub boundary: &'a str,
}

/// One attached file.
#[derive(Debug)]
pub struct Attachment {
    pub filename: String,
    pub content_type: &'static str,
    pub data: Vec<u8>,
}

/// The content type guessed from a file name's extension.
pub fn content_type(filename: &str) -> &'static str {
    let ext = Path::new(filename)
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "txt" | "log" | "conf" => "text/plain",
        "csv" => "text/csv",
        "html" | "htm" => "text/html",
        "json" => "application/json",
        "xml" => "application/xml",
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "gz" | "tgz" => "application/gzip",
        "tar" => "application/x-tar",
        "zip" => "application/zip",
        _ => "application/octet-stream",
    }
}

/// How the text body is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyEncoding {
    SevenBit,
    EightBit,
    QuotedPrintable,
}

/// CRLF becomes LF, and a non-empty body ends with a line end.
pub fn normalise_body(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 1);
    let mut i = 0;
    while let Some(&b) = body.get(i) {
        if b == b'\r' && body.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(b);
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out
}

/// The encoding of a normalised body: quoted-printable when a line is too
/// long or holds NUL or a bare CR, else 8bit when it has 8-bit octets.
pub fn body_encoding(body: &[u8]) -> BodyEncoding {
    let unsafe_line = body
        .split(|&b| b == b'\n')
        .any(|l| l.len() > MAX_BODY_LINE || l.iter().any(|&b| b == 0 || b == b'\r'));
    if unsafe_line {
        BodyEncoding::QuotedPrintable
    } else if body.iter().any(|&b| b >= 0x80) {
        BodyEncoding::EightBit
    } else {
        BodyEncoding::SevenBit
    }
}

/// Quoted-printable (RFC 2045 §6.7) of LF-separated lines, LF line ends.
pub fn quoted_printable(body: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(body.len() + body.len() / 8);
    let mut lines = body.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let mut col = 0;
        for (i, &b) in line.iter().enumerate() {
            let trailing_ws = (b == b' ' || b == b'\t') && i + 1 == line.len();
            let literal = matches!(b, 0x21..=0x3C | 0x3E..=0x7E) || (b == b' ' || b == b'\t');
            let escaped: [u8; 3];
            let piece: &[u8] = if literal && !trailing_ws {
                std::slice::from_ref(&b)
            } else {
                let hi = HEX.get(usize::from(b >> 4)).copied().unwrap_or(b'0');
                let lo = HEX.get(usize::from(b & 0xF)).copied().unwrap_or(b'0');
                escaped = [b'=', hi, lo];
                &escaped
            };
            if col + piece.len() > QP_LINE {
                out.extend_from_slice(b"=\n");
                col = 0;
            }
            out.extend_from_slice(piece);
            col += piece.len();
        }
        if lines.peek().is_some() {
            out.push(b'\n');
        }
    }
    out
}

/// Base64 in lines of [`BASE64_LINE`] characters, each ended by LF.
pub fn base64_lines(data: &[u8]) -> Vec<u8> {
    let text = base64_encode(data);
    let mut out = Vec::with_capacity(text.len() + text.len() / BASE64_LINE + 1);
    for chunk in text.as_bytes().chunks(BASE64_LINE) {
        out.extend_from_slice(chunk);
        out.push(b'\n');
    }
    out
}

/// `text` as `=?UTF-8?B?...?=` words of at most [`ENCODED_WORD_OCTETS`]
/// octets each, never splitting a character (RFC 2047 §5 rule 3).
pub fn encoded_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in text.chars() {
        if chunk.len() + c.len_utf8() > ENCODED_WORD_OCTETS {
            words.push(format!("=?UTF-8?B?{}?=", base64_encode(chunk.as_bytes())));
            chunk.clear();
        }
        chunk.push(c);
    }
    if !chunk.is_empty() {
        words.push(format!("=?UTF-8?B?{}?=", base64_encode(chunk.as_bytes())));
    }
    words
}

/// Control characters (a newline in `-s "$(cmd)"`) become spaces.
fn without_controls(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The tokens of an unstructured value (Subject): its words when it is
/// plain ASCII that folds back to exactly itself, else encoded-words.
pub fn unstructured_tokens(field: &str, text: &str) -> Vec<String> {
    let text = without_controls(text);
    let longest_word = MAX_HEADER_LINE.saturating_sub(field.len() + 2);
    let plain = text.bytes().all(|b| (0x20..0x7F).contains(&b))
        && !text.contains("=?")
        && !text.contains("  ")
        && text.trim() == text
        && text.split(' ').all(|w| w.len() <= longest_word);
    if plain {
        text.split(' ').map(str::to_string).collect()
    } else {
        encoded_words(&text)
    }
}

/// `Field: tok tok ...`, folded before a token that would pass
/// [`MAX_HEADER_LINE`]; ends with LF.
pub fn fold(field: &str, tokens: &[String]) -> String {
    let mut out = format!("{field}:");
    let mut line_len = out.len();
    for (i, tok) in tokens.iter().enumerate() {
        if i > 0 && line_len + 1 + tok.len() > MAX_HEADER_LINE {
            out.push('\n');
            line_len = 0;
        }
        out.push(' ');
        out.push_str(tok);
        line_len += 1 + tok.len();
    }
    out.push('\n');
    out
}

fn address_list(field: &str, addrs: &[String]) -> String {
    let tokens: Vec<String> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            if i + 1 < addrs.len() {
                format!("{a},")
            } else {
                a.clone()
            }
        })
        .collect();
    fold(field, &tokens)
}

/// The display name as words, quoted or plain, or as encoded-words when it
/// is not ASCII or a word would not fit on a folded line (a `-r` name of
/// 1,000 letters made a line longer than RFC 5322's 998 octets).
fn from_field(from: &NamedAddress) -> String {
    let longest_word = MAX_HEADER_LINE.saturating_sub("From".len() + 2);
    let mut tokens: Vec<String> = match from.name.as_deref().map(without_controls) {
        None => Vec::new(),
        Some(name) if name.is_ascii() => {
            let quoted = sendmail::quote_name(&name);
            let words: Vec<String> = if quoted.starts_with('"') {
                vec![quoted]
            } else {
                quoted.split_whitespace().map(str::to_string).collect()
            };
            if words.iter().all(|w| w.len() <= longest_word) {
                words
            } else {
                encoded_words(&name)
            }
        }
        Some(name) => encoded_words(&name),
    };
    if tokens.is_empty() {
        tokens.push(from.addr.clone());
    } else {
        tokens.push(format!("<{}>", from.addr));
    }
    fold("From", &tokens)
}

/// RFC 2231 attribute-chars: what a percent-encoded value keeps as is.
fn is_attribute_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b)
}

/// The `filename` parameter lines: `filename="x"` for a short plain ASCII
/// name, else RFC 2231 `filename*=utf-8''...` (with continuations when long).
fn filename_params(filename: &str) -> String {
    let plain = !filename.is_empty()
        && filename.len() <= FILENAME_SEGMENT
        && filename
            .bytes()
            .all(|b| (0x20..0x7F).contains(&b) && b != b'"' && b != b'\\');
    if plain {
        return format!(" filename=\"{filename}\"");
    }
    // Percent-encoded pieces (one per octet), grouped into segments.
    let mut segments: Vec<String> = vec![String::new()];
    for b in filename.bytes() {
        let piece = if is_attribute_char(b) {
            char::from(b).to_string()
        } else {
            format!("%{b:02X}")
        };
        if segments
            .last()
            .is_some_and(|s| s.len() + piece.len() > FILENAME_SEGMENT)
        {
            segments.push(String::new());
        }
        if let Some(s) = segments.last_mut() {
            s.push_str(&piece);
        }
    }
    if let [only] = segments.as_slice() {
        return format!(" filename*=utf-8''{only}");
    }
    segments
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let charset = if i == 0 { "utf-8''" } else { "" };
            format!(" filename*{i}*={charset}{s}")
        })
        .collect::<Vec<_>>()
        .join(";\n")
}

fn content_type_value(content_type: &str) -> String {
    if content_type.starts_with("text/") {
        format!("{content_type}; charset=utf-8")
    } else {
        content_type.to_string()
    }
}

/// The text part's (or the message's) Content-Type and
/// Content-Transfer-Encoding fields, a blank line, and the encoded body.
fn text_entity(body: &[u8], out: &mut Vec<u8>) {
    let body = normalise_body(body);
    let encoding = body_encoding(&body);
    // A body that is not UTF-8 is labelled as such (RFC 1428), not as utf-8.
    let charset = if std::str::from_utf8(&body).is_ok() {
        "utf-8"
    } else {
        "unknown-8bit"
    };
    let cte = match encoding {
        BodyEncoding::SevenBit => "7bit",
        BodyEncoding::EightBit => "8bit",
        BodyEncoding::QuotedPrintable => "quoted-printable",
    };
    out.extend_from_slice(
        format!(
            "Content-Type: text/plain; charset={charset}\nContent-Transfer-Encoding: {cte}\n\n"
        )
        .as_bytes(),
    );
    if encoding == BodyEncoding::QuotedPrintable {
        out.extend_from_slice(&quoted_printable(&body));
    } else {
        out.extend_from_slice(&body);
    }
}

/// The whole message, LF line ends. With attachments: multipart/mixed,
/// the text part first (left out when the body is empty), then each file
/// as base64.
pub fn compose(h: &Headers<'_>, body: &[u8], attachments: &[Attachment]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(from_field(h.from).as_bytes());
    if !h.to.is_empty() {
        out.extend_from_slice(address_list("To", h.to).as_bytes());
    }
    if !h.cc.is_empty() {
        out.extend_from_slice(address_list("Cc", h.cc).as_bytes());
    }
    if let Some(subject) = h.subject.filter(|s| !s.is_empty()) {
        out.extend_from_slice(fold("Subject", &unstructured_tokens("Subject", subject)).as_bytes());
    }
    out.extend_from_slice(format!("Date: {}\n", h.date).as_bytes());
    out.extend_from_slice(format!("Message-ID: {}\n", h.message_id).as_bytes());
    out.extend_from_slice(b"MIME-Version: 1.0\n");
    if attachments.is_empty() {
        text_entity(body, &mut out);
        return out;
    }
    let b = h.boundary;
    out.extend_from_slice(
        format!(
            "Content-Type: multipart/mixed;\n boundary=\"{b}\"\n\n\
             This is a multi-part message in MIME format.\n"
        )
        .as_bytes(),
    );
    if !body.is_empty() {
        out.extend_from_slice(format!("--{b}\n").as_bytes());
        text_entity(body, &mut out);
        // The line end before a delimiter belongs to it (RFC 2046 §5.1.1).
        out.push(b'\n');
    }
    for a in attachments {
        out.extend_from_slice(
            format!(
                "--{b}\nContent-Type: {}\nContent-Transfer-Encoding: base64\n\
                 Content-Disposition: attachment;\n{}\n\n",
                content_type_value(a.content_type),
                filename_params(&a.filename)
            )
            .as_bytes(),
        );
        out.extend_from_slice(&base64_lines(&a.data));
    }
    out.extend_from_slice(format!("--{b}--\n").as_bytes());
    out
}

/// A boundary that cannot occur in base64 or quoted-printable (`=_`).
fn new_boundary() -> io::Result<String> {
    let mut r = [0u8; 16];
    crate::random::fill(&mut r)?;
    Ok(format!(
        "=_tern_{}",
        r.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

/// Recipients of one option or argument (`a@b, "Name" <c@d>`), qualified
/// like sendmail's and checked.
fn recipients(cfg: &Config, given: &[String]) -> Result<Vec<String>, (i32, String)> {
    let mut out = Vec::new();
    for arg in given {
        for r in sendmail::header_addresses(arg) {
            let full = sendmail::qualify(cfg, r.trim());
            if Address::parse_mailbox(&full).is_err() {
                return Err((EX_DATAERR, format!("bad recipient address {r:?}")));
            }
            if !out.contains(&full) {
                out.push(full);
            }
        }
    }
    Ok(out)
}

/// Reads the attachments, all of them together no larger than
/// `max_message_size` (their encoding is larger still).
fn read_attachments(cfg: &Config, files: &[String]) -> Result<Vec<Attachment>, (i32, String)> {
    let mut out = Vec::new();
    let mut total: u64 = 0;
    for file in files {
        let f = std::fs::File::open(file)
            .map_err(|e| (EX_NOINPUT, format!("cannot read attachment {file}: {e}")))?;
        let limit = cfg.max_message_size.saturating_sub(total);
        let data = crate::system::read_bounded(f, limit).map_err(|e| {
            if e.kind() == io::ErrorKind::InvalidData {
                (
                    EX_DATAERR,
                    format!(
                        "attachment {file}: the message would exceed max_message_size ({} bytes)",
                        cfg.max_message_size
                    ),
                )
            } else {
                (EX_NOINPUT, format!("cannot read attachment {file}: {e}"))
            }
        })?;
        total = total.saturating_add(data.len() as u64);
        let filename = Path::new(file)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| file.clone());
        out.push(Attachment {
            content_type: content_type(&filename),
            filename,
            data,
        });
    }
    Ok(out)
}

/// Composes the message from `args` and `stdin` and writes the drop file.
/// Returns its name, or None when `-E` and the body is empty.
pub fn submit(
    cfg: &Config,
    args: &MailArgs,
    stdin: &mut dyn Read,
) -> Result<Option<String>, (i32, String)> {
    let to = recipients(cfg, &args.to)?;
    let cc = recipients(cfg, &args.cc)?;
    let bcc = recipients(cfg, &args.bcc)?;
    let (name, given_addr) = match args.from.as_deref() {
        Some(v) => {
            let (name, addr) = split_from(v);
            if addr.is_empty() {
                return Err((EX_USAGE, "-r needs an address".into()));
            }
            (name, Some(addr))
        }
        None => (None, None),
    };
    let sender = sendmail::envelope_sender(cfg, given_addr.as_deref());
    if Address::parse_mailbox(&sender).is_err() {
        return Err((EX_DATAERR, format!("bad sender address {sender:?}")));
    }
    let attachments = read_attachments(cfg, &args.attachments)?;
    let body = crate::system::read_bounded(stdin, cfg.max_message_size).map_err(|e| {
        if e.kind() == io::ErrorKind::InvalidData {
            (
                EX_DATAERR,
                format!(
                    "message exceeds max_message_size ({} bytes)",
                    cfg.max_message_size
                ),
            )
        } else {
            (EX_TEMPFAIL, format!("reading input: {e}"))
        }
    })?;
    if args.skip_empty && body.is_empty() {
        return Ok(None);
    }
    let now = unix_now();
    let message_id = sendmail::new_message_id(cfg, now)
        .map_err(|e| (EX_TEMPFAIL, format!("Message-ID: {e}")))?;
    let mut boundary = new_boundary().map_err(|e| (EX_TEMPFAIL, format!("boundary: {e}")))?;
    while body
        .windows(boundary.len())
        .any(|w| w == boundary.as_bytes())
    {
        boundary = new_boundary().map_err(|e| (EX_TEMPFAIL, format!("boundary: {e}")))?;
    }
    let from = NamedAddress {
        name,
        addr: sender.clone(),
    };
    let headers = Headers {
        from: &from,
        to: &to,
        cc: &cc,
        subject: args.subject.as_deref(),
        date: &rfc5322_date(now as i64, 0),
        message_id: &message_id,
        boundary: &boundary,
    };
    let message = compose(&headers, &body, &attachments);
    drop(body);
    drop(attachments);
    let flags = Flags {
        ignore_dots: true,
        sender: given_addr,
        recipients: to.into_iter().chain(cc).chain(bcc).collect(),
        ..Flags::default()
    };
    sendmail::inject(cfg, &flags, &mut io::Cursor::new(message)).map(Some)
}

pub fn main(cfg: Config, args: Vec<String>) -> i32 {
    let args = match parse_args(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("mail: {e}\n{USAGE}");
            return EX_USAGE;
        }
    };
    match submit(&cfg, &args, &mut io::stdin().lock()) {
        Ok(Some(name)) => {
            if args.verbose {
                eprintln!("mail: queued as {name}");
            }
            super::queue::signal_daemon(&cfg, libc::SIGUSR2);
            EX_OK
        }
        Ok(None) => EX_OK,
        Err((code, msg)) => {
            eprintln!("mail: {msg}");
            code
        }
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)] // tests index fixed data
mod tests {
    use super::*;
    use crate::auth::base64_decode;
    use crate::test_dir::TempDir;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Decodes one `=?UTF-8?B?...?=` word.
    fn decode_word(w: &str) -> Vec<u8> {
        let inner = w
            .strip_prefix("=?UTF-8?B?")
            .and_then(|w| w.strip_suffix("?="))
            .expect("encoded-word");
        base64_decode(inner).expect("base64")
    }

    /// Quoted-printable decoding (LF line ends), for round trips.
    fn qp_decode(text: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < text.len() {
            match text[i] {
                b'=' if text.get(i + 1) == Some(&b'\n') => i += 2,
                b'=' => {
                    let hex = std::str::from_utf8(&text[i + 1..i + 3]).unwrap();
                    out.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 3;
                }
                b => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        out
    }

    fn header_lines(msg: &[u8]) -> Vec<String> {
        let text = String::from_utf8_lossy(msg);
        let head = text.split("\n\n").next().unwrap().to_string();
        head.lines().map(str::to_string).collect()
    }

    const FROM: NamedAddress = NamedAddress {
        name: None,
        addr: String::new(),
    };

    fn compose_simple(subject: Option<&str>, body: &[u8], atts: &[Attachment]) -> Vec<u8> {
        let from = NamedAddress {
            addr: "root@host.test".into(),
            ..FROM
        };
        compose(
            &Headers {
                from: &from,
                to: &["a@x.test".to_string(), "b@x.test".to_string()],
                cc: &["c@x.test".to_string()],
                subject,
                date: "Thu, 01 Jan 2026 00:00:00 +0000",
                message_id: "<1.2.3@host.test>",
                boundary: "=_tern_B",
            },
            body,
            atts,
        )
    }

    #[test]
    fn command_line() {
        let a = parse_args(&args(&[
            "-s", "disk", "-S", "sendwait", "-a", "r.pdf", "-ax.log", "-r", "me@x", "-c", "c@x",
            "-b", "b@x", "-n", "root", "-E", "u@y", "--", "-odd",
        ]))
        .unwrap();
        assert_eq!(a.subject.as_deref(), Some("disk"));
        assert_eq!(a.attachments, vec!["r.pdf", "x.log"]);
        assert_eq!(a.from.as_deref(), Some("me@x"));
        assert_eq!((a.cc, a.bcc), (vec!["c@x".into()], vec!["b@x".into()]));
        assert_eq!(a.to, vec!["root", "u@y", "-odd"]);
        assert!(a.skip_empty && !a.verbose);
        for bad in [
            &["-x", "root"][..],
            &["-s"],
            &["-a", "", "root"],
            &["-s", "x"],
            &[],
        ] {
            assert!(parse_args(&args(bad)).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_args(&args(&["-b", "only@x"])).unwrap().bcc,
            vec!["only@x"]
        );
    }

    #[test]
    fn from_option_forms() {
        assert_eq!(split_from("me@x"), (None, "me@x".into()));
        assert_eq!(split_from(" <me@x> "), (None, "me@x".into()));
        assert_eq!(
            split_from("\"UPS Daemon\" <ups@x>"),
            (Some("UPS Daemon".into()), "ups@x".into())
        );
        let f = from_field(&NamedAddress {
            name: Some("Zoë Admin".into()),
            addr: "z@x.test".into(),
        });
        let words: Vec<&str> = f.trim_start_matches("From: ").split_whitespace().collect();
        assert_eq!(decode_word(words[0]), "Zoë Admin".as_bytes());
        assert_eq!(words[1], "<z@x.test>");
        let f = from_field(&NamedAddress {
            name: Some("Backup, nightly".into()),
            addr: "b@x.test".into(),
        });
        assert_eq!(f, "From: \"Backup, nightly\" <b@x.test>\n");
    }

    #[test]
    fn long_display_name_is_encoded_and_folded() {
        for name in ["a".repeat(1000), format!("\"{}\" x", "b,".repeat(40))] {
            let f = from_field(&NamedAddress {
                name: Some(name.clone()),
                addr: "r@x.test".into(),
            });
            assert!(f.ends_with(" <r@x.test>\n"), "{f}");
            let mut decoded = Vec::new();
            for line in f.lines() {
                assert!(line.len() <= MAX_HEADER_LINE, "line of {}", line.len());
                for w in line.trim_start_matches("From:").split_whitespace() {
                    if w != "<r@x.test>" {
                        decoded.extend(decode_word(w));
                    }
                }
            }
            assert_eq!(decoded, name.as_bytes());
        }
    }

    #[test]
    fn ascii_subject_passes_through_and_folds_at_spaces() {
        assert_eq!(
            fold(
                "Subject",
                &unstructured_tokens("Subject", "SMART error on /dev/sda")
            ),
            "Subject: SMART error on /dev/sda\n"
        );
        let long = "word ".repeat(40).trim_end().to_string();
        let folded = fold("Subject", &unstructured_tokens("Subject", &long));
        assert!(folded.lines().count() > 2);
        assert!(
            folded.lines().all(|l| l.len() <= MAX_HEADER_LINE),
            "{folded}"
        );
        // Unfolding (removing the line ends) gives the subject back.
        assert_eq!(
            folded.replace('\n', "").trim_start_matches("Subject: "),
            long
        );
        // What would not survive folding or could be read as an
        // encoded-word is encoded.
        for s in ["a  b", " lead", "x =?UTF-8?B?QQ==?=", &"y".repeat(80)] {
            let t = unstructured_tokens("Subject", s);
            let decoded: Vec<u8> = t.iter().flat_map(|w| decode_word(w)).collect();
            assert_eq!(decoded, s.as_bytes());
        }
        // Control characters do not reach the header.
        let t = unstructured_tokens("Subject", "two\nlines");
        assert_eq!(t.concat().len(), t.concat().trim().len());
        assert!(!fold("Subject", &t).trim_end().contains('\n'));
    }

    #[test]
    fn utf8_subject_is_split_between_characters() {
        // Multi-octet characters at every offset against the word limit.
        for prefix in 0..4 {
            let s = format!(
                "{}Ünïcödé 日本語のテキスト 🎉🎉🎉 résumé {}",
                "x".repeat(prefix),
                "ü".repeat(30)
            );
            let words = unstructured_tokens("Subject", &s);
            assert!(words.len() > 2);
            let mut all = Vec::new();
            for w in &words {
                assert!(w.len() <= 75, "{w}");
                let bytes = decode_word(w);
                assert!(bytes.len() <= ENCODED_WORD_OCTETS);
                assert!(
                    std::str::from_utf8(&bytes).is_ok(),
                    "a character split in {w}"
                );
                all.extend(bytes);
            }
            assert_eq!(all, s.as_bytes());
            let folded = fold("Subject", &words);
            assert!(
                folded.lines().all(|l| l.len() <= MAX_HEADER_LINE),
                "{folded}"
            );
            assert!(folded.lines().skip(1).all(|l| l.starts_with(' ')));
        }
    }

    #[test]
    fn plain_message_headers_and_encodings() {
        let m = compose_simple(Some("hi"), b"line 1\r\nline 2", &[]);
        assert_eq!(
            String::from_utf8(m).unwrap(),
            "From: root@host.test\nTo: a@x.test, b@x.test\nCc: c@x.test\nSubject: hi\n\
             Date: Thu, 01 Jan 2026 00:00:00 +0000\nMessage-ID: <1.2.3@host.test>\n\
             MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\
             Content-Transfer-Encoding: 7bit\n\nline 1\nline 2\n"
        );
        let m = String::from_utf8(compose_simple(None, "grüße\n".as_bytes(), &[])).unwrap();
        assert!(!m.contains("Subject"));
        assert!(
            m.ends_with("Content-Transfer-Encoding: 8bit\n\ngrüße\n"),
            "{m}"
        );
        // Not UTF-8: labelled so.
        let m = compose_simple(None, b"caf\xe9\n", &[]);
        assert!(header_lines(&m).contains(&"Content-Type: text/plain; charset=unknown-8bit".into()));
        // An empty body stays empty.
        assert!(compose_simple(None, b"", &[]).ends_with(b"7bit\n\n"));
    }

    #[test]
    fn long_lines_nul_and_bare_cr_go_quoted_printable() {
        let mut long = vec![b'a'; MAX_BODY_LINE + 1];
        long.extend_from_slice(" tail \nnext=line\n".as_bytes());
        for body in [
            long,
            b"nul\0here\n".to_vec(),
            b"bare\rcr\n".to_vec(),
            "ü\0\n".as_bytes().to_vec(),
        ] {
            let m = compose_simple(None, &body, &[]);
            assert!(
                header_lines(&m).contains(&"Content-Transfer-Encoding: quoted-printable".into())
            );
            let encoded = &m[m.windows(2).position(|w| w == b"\n\n").unwrap() + 2..];
            assert!(encoded
                .split(|&b| b == b'\n')
                .all(|l| l.len() <= QP_LINE + 1));
            assert!(encoded
                .iter()
                .all(|&b| b == b'\n' || (0x20..0x7F).contains(&b)));
            assert_eq!(qp_decode(encoded), body);
        }
        // Exactly at the limit is still 7bit.
        let mut ok = vec![b'a'; MAX_BODY_LINE];
        ok.push(b'\n');
        assert_eq!(body_encoding(&ok), BodyEncoding::SevenBit);
        // Trailing white space is encoded (it would be stripped in transit).
        assert_eq!(quoted_printable(b"a \nb\t\n"), b"a=20\nb=09\n");
    }

    #[test]
    fn attachments_make_multipart_mixed() {
        let pdf: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let atts = [
            Attachment {
                filename: "report.pdf".into(),
                content_type: content_type("report.pdf"),
                data: pdf.clone(),
            },
            Attachment {
                filename: "notes.txt".into(),
                content_type: content_type("notes.txt"),
                data: b"n\n".to_vec(),
            },
        ];
        let m = String::from_utf8(compose_simple(Some("s"), b"body\n", &atts)).unwrap();
        assert!(m.contains(
            "MIME-Version: 1.0\nContent-Type: multipart/mixed;\n boundary=\"=_tern_B\"\n\n"
        ));
        let parts: Vec<&str> = m.split("--=_tern_B").collect();
        // Preamble, text, pdf, txt, and the closing "--".
        assert_eq!(parts.len(), 5, "{m}");
        assert_eq!(parts[4], "--\n");
        assert_eq!(
            parts[1],
            "\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 7bit\n\nbody\n\n"
        );
        let (head, b64) = parts[2].split_once("\n\n").unwrap();
        assert_eq!(
            head,
            "\nContent-Type: application/pdf\nContent-Transfer-Encoding: base64\n\
             Content-Disposition: attachment;\n filename=\"report.pdf\""
        );
        let lines: Vec<&str> = b64.lines().collect();
        assert!(lines.iter().all(|l| l.len() <= BASE64_LINE));
        assert!(lines[..lines.len() - 1]
            .iter()
            .all(|l| l.len() == BASE64_LINE));
        assert_eq!(base64_decode(&lines.concat()).unwrap(), pdf);
        assert!(parts[3].starts_with("\nContent-Type: text/plain; charset=utf-8\n"));
        // No text part for an empty body.
        let m = String::from_utf8(compose_simple(None, b"", &atts)).unwrap();
        assert_eq!(m.matches("--=_tern_B\n").count(), 2);
        assert!(!m.contains("Content-Transfer-Encoding: 7bit"));
    }

    #[test]
    fn content_types_by_extension() {
        for (name, ty) in [
            ("a.txt", "text/plain"),
            ("syslog.LOG", "text/plain"),
            ("x.csv", "text/csv"),
            ("i.html", "text/html"),
            ("i.htm", "text/html"),
            ("d.json", "application/json"),
            ("d.xml", "application/xml"),
            ("r.pdf", "application/pdf"),
            ("p.png", "image/png"),
            ("p.JPG", "image/jpeg"),
            ("p.jpeg", "image/jpeg"),
            ("g.gif", "image/gif"),
            ("b.tar.gz", "application/gzip"),
            ("b.tgz", "application/gzip"),
            ("b.tar", "application/x-tar"),
            ("b.zip", "application/zip"),
            ("tern.conf", "text/plain"),
            ("core", "application/octet-stream"),
            ("x.bin", "application/octet-stream"),
        ] {
            assert_eq!(content_type(name), ty, "{name}");
        }
        assert_eq!(content_type_value("text/csv"), "text/csv; charset=utf-8");
        assert_eq!(content_type_value("image/png"), "image/png");
    }

    #[test]
    fn filenames_plain_and_rfc2231() {
        assert_eq!(filename_params("smart.log"), " filename=\"smart.log\"");
        assert_eq!(
            filename_params("Überblick \"Q1\".pdf"),
            " filename*=utf-8''%C3%9Cberblick%20%22Q1%22.pdf"
        );
        let long = format!("{}ü.txt", "日本".repeat(20));
        let p = filename_params(&long);
        let lines: Vec<&str> = p.split(";\n").collect();
        assert!(lines.len() > 1);
        let mut joined = String::new();
        for (i, l) in lines.iter().enumerate() {
            assert!(l.len() <= MAX_HEADER_LINE, "{l}");
            let (name, value) = l.split_once('=').unwrap();
            assert_eq!(name, format!(" filename*{i}*"));
            joined.push_str(value.trim_start_matches("utf-8''"));
        }
        // Percent-decoding the segments gives the name back.
        let mut bytes = Vec::new();
        let mut it = joined.bytes();
        while let Some(b) = it.next() {
            if b == b'%' {
                let hex = [it.next().unwrap(), it.next().unwrap()];
                bytes.push(u8::from_str_radix(std::str::from_utf8(&hex).unwrap(), 16).unwrap());
            } else {
                bytes.push(b);
            }
        }
        assert_eq!(bytes, long.as_bytes());
    }

    fn spool_cfg(dir: &TempDir) -> Config {
        Config {
            spool_dir: dir.0.join("spool"),
            spool_sync: false,
            hostname: "host.test".into(),
            qualify_domain: "host.test".into(),
            ..Config::default()
        }
    }

    fn drop_files(cfg: &Config) -> Vec<Vec<u8>> {
        std::fs::read_dir(cfg.spool_dir.join("drop"))
            .map(|d| {
                d.map(|e| std::fs::read(e.unwrap().path()).unwrap())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn bcc_only_in_the_envelope() {
        let dir = TempDir::new("mail-bcc");
        let cfg = spool_cfg(&dir);
        let a = parse_args(&args(&[
            "-s",
            "t",
            "-b",
            "hidden@x.test",
            "-c",
            "seen",
            "root",
        ]))
        .unwrap();
        let name = submit(&cfg, &a, &mut &b"hello\n"[..]).unwrap().unwrap();
        let drop = std::fs::read(cfg.spool_dir.join("drop").join(name)).unwrap();
        let text = String::from_utf8(drop).unwrap();
        let (envelope, message) = text.split_once("\n\n").unwrap();
        assert!(envelope.contains("rcpt root@host.test\nrcpt seen@host.test\nrcpt hidden@x.test"));
        assert!(!message.to_ascii_lowercase().contains("bcc") && !message.contains("hidden"));
        assert!(message.contains("To: root@host.test\nCc: seen@host.test\nSubject: t\n"));
        assert!(message.ends_with("\n\nhello\n"));
    }

    #[test]
    fn refusals_queue_nothing() {
        let dir = TempDir::new("mail-refuse");
        let cfg = spool_cfg(&dir);
        let missing = dir.0.join("missing.pdf").to_string_lossy().into_owned();
        let a = parse_args(&args(&["-a", &missing, "root"])).unwrap();
        let (code, msg) = submit(&cfg, &a, &mut &b"x\n"[..]).unwrap_err();
        assert_eq!(code, EX_NOINPUT);
        assert!(msg.contains("missing.pdf"), "{msg}");
        // Too large together: max_message_size bounds the reads.
        let big = dir.0.join("big.bin");
        std::fs::write(&big, vec![0u8; 600]).unwrap();
        let small = Config {
            max_message_size: 1000,
            ..spool_cfg(&dir)
        };
        let big = big.to_string_lossy().into_owned();
        let a = parse_args(&args(&["-a", &big, "-a", &big, "root"])).unwrap();
        let (code, msg) = submit(&small, &a, &mut &b""[..]).unwrap_err();
        assert_eq!(code, EX_DATAERR);
        assert!(
            msg.contains("big.bin") && msg.contains("max_message_size"),
            "{msg}"
        );
        // -E: an empty body sends nothing.
        let a = parse_args(&args(&["-E", "root"])).unwrap();
        assert_eq!(submit(&cfg, &a, &mut &b""[..]), Ok(None));
        let a = parse_args(&args(&["bad address@@"])).unwrap();
        assert_eq!(submit(&cfg, &a, &mut &b"x"[..]).unwrap_err().0, EX_DATAERR);
        assert!(drop_files(&cfg).is_empty());
        // Without -E an empty body is sent.
        let a = parse_args(&args(&["root"])).unwrap();
        assert!(submit(&cfg, &a, &mut &b""[..]).unwrap().is_some());
        assert_eq!(drop_files(&cfg).len(), 1);
    }
}
