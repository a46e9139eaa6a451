//! What a webhook shows of a message: its Subject and its first text/plain
//! part, from the first [`WEBHOOK_READ`] bytes of the spool file.
//!
//! Rules: RFC 5322 §2.2.3 (unfolding), RFC 2047 (encoded words in the
//! Subject: B and Q, charsets UTF-8, US-ASCII and ISO-8859-1; any other
//! charset's word is shown as written), RFC 2045 §6 (Content-Transfer-Encoding
//! quoted-printable and base64; 7bit/8bit/binary as is), RFC 2046 §5.1
//! (multipart: the first text/plain part, depth-first, at most
//! [`MAX_DEPTH`] levels; parts marked `Content-Disposition: attachment`
//! are skipped). Text in a charset other than UTF-8/US-ASCII/ISO-8859-1
//! is read as UTF-8 with replacement characters.
//!
//! Everything is bounded: the input by the caller's read, the title by
//! [`MAX_TITLE`], the text by [`MAX_TEXT`] bytes (cut at a character
//! boundary). Line ends become `\n`; other control characters (but tab)
//! are dropped from the text and become spaces in the title.

/// Bytes of the message read from the spool for a webhook.
pub const WEBHOOK_READ: usize = 64 * 1024;
/// Most bytes of message text sent.
pub const MAX_TEXT: usize = 4 * 1024;
/// Most bytes of the title (the Subject) sent.
pub const MAX_TITLE: usize = 256;
/// Most multipart nesting levels searched for a text/plain part.
pub const MAX_DEPTH: usize = 4;

/// The Subject and the text of a message, as a notification shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub title: String,
    pub message: String,
}

/// The notice of a message (header and body, CRLF or LF line ends).
pub fn notice_of(message: &[u8]) -> Notice {
    let (header, body) = split_header(message);
    let fields = fields(header);
    let subject = field(&fields, "subject").map_or_else(String::new, |v| decode_words(&v));
    let title = bounded(&clean_title(&subject), MAX_TITLE);
    let text = first_text(&fields, body, 0).unwrap_or_default();
    Notice {
        title,
        message: bounded(clean_text(&text).trim_end(), MAX_TEXT),
    }
}

/// Header block and body; without an empty line, all header.
fn split_header(msg: &[u8]) -> (&[u8], &[u8]) {
    let mut i = 0;
    // Each line: stop at the first empty one.
    while i < msg.len() {
        let rest = msg.get(i..).unwrap_or_default();
        let line_end = rest.iter().position(|&b| b == b'\n').map(|p| i + p + 1);
        let line = msg
            .get(i..line_end.unwrap_or(msg.len()))
            .unwrap_or_default();
        if line == b"\r\n" || line == b"\n" {
            return (
                msg.get(..i).unwrap_or_default(),
                msg.get(i + line.len()..).unwrap_or_default(),
            );
        }
        match line_end {
            Some(e) => i = e,
            None => break,
        }
    }
    (msg, &[])
}

/// Header fields, unfolded: (lower-case name, value).
fn fields(header: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for raw in header.split(|&b| b == b'\n') {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            if let Some((_, v)) = out.last_mut() {
                v.extend_from_slice(line);
            }
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = line.split_at_checked(colon).unwrap_or((line, b""));
        let value = value.get(1..).unwrap_or_default();
        out.push((
            String::from_utf8_lossy(name).trim().to_ascii_lowercase(),
            value.trim_ascii().to_vec(),
        ));
    }
    out
}

fn field(fields: &[(String, Vec<u8>)], name: &str) -> Option<Vec<u8>> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}

/// `text/plain; charset="utf-8"` → ("text/plain", [("charset","utf-8")]).
fn content_type(value: &[u8]) -> (String, Vec<(String, String)>) {
    let text = String::from_utf8_lossy(value);
    let mut parts = text.split(';');
    let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let params = parts
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            Some((k.trim().to_ascii_lowercase(), v.to_string()))
        })
        .collect();
    (media, params)
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The first text/plain part of an entity (its fields and body), decoded.
fn first_text(fields: &[(String, Vec<u8>)], body: &[u8], depth: usize) -> Option<String> {
    let (media, params) = field(fields, "content-type").map_or_else(
        || ("text/plain".to_string(), Vec::new()),
        |v| content_type(&v),
    );
    let attachment = field(fields, "content-disposition").is_some_and(|v| {
        String::from_utf8_lossy(&v)
            .trim_start()
            .to_ascii_lowercase()
            .starts_with("attachment")
    });
    if media.starts_with("multipart/") {
        if depth >= MAX_DEPTH {
            return None;
        }
        let boundary = param(&params, "boundary")?;
        return parts(body, boundary.as_bytes())
            .into_iter()
            .find_map(|part| {
                let (h, b) = split_header(part);
                first_text(&self::fields(h), b, depth + 1)
            });
    }
    if media != "text/plain" || attachment {
        return None;
    }
    let cte = field(fields, "content-transfer-encoding")
        .map(|v| String::from_utf8_lossy(&v).trim().to_ascii_lowercase())
        .unwrap_or_default();
    let raw = match cte.as_str() {
        "quoted-printable" => decode_qp(body),
        "base64" => decode_base64(body),
        _ => body.to_vec(),
    };
    Some(to_text(
        &raw,
        param(&params, "charset").unwrap_or("us-ascii"),
    ))
}

/// The bodies of a multipart's parts (RFC 2046 §5.1.1: delimiter lines
/// `--boundary`, the close `--boundary--`; preamble and epilogue dropped).
/// A part cut off by the read limit is kept as far as it goes.
fn parts<'a>(body: &'a [u8], boundary: &[u8]) -> Vec<&'a [u8]> {
    let mut delim = b"--".to_vec();
    delim.extend_from_slice(boundary);
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    let mut i = 0;
    while i < body.len() {
        let rest = body.get(i..).unwrap_or_default();
        let len = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |p| p + 1);
        let line = rest.get(..len).unwrap_or_default();
        let bare = line.trim_ascii_end();
        if let Some(after) = bare.strip_prefix(delim.as_slice()) {
            if after.is_empty() || after == b"--" {
                if let Some(s) = start {
                    // The line break before the delimiter belongs to it.
                    let part = body.get(s..i).unwrap_or_default();
                    let part = part.strip_suffix(b"\n").unwrap_or(part);
                    out.push(part.strip_suffix(b"\r").unwrap_or(part));
                }
                if after == b"--" {
                    return out;
                }
                start = Some(i + len);
            }
        }
        i += len;
    }
    if let Some(s) = start {
        out.push(body.get(s..).unwrap_or_default());
    }
    out
}

fn to_text(bytes: &[u8], charset: &str) -> String {
    if charset.eq_ignore_ascii_case("iso-8859-1") || charset.eq_ignore_ascii_case("latin1") {
        bytes.iter().map(|&b| char::from(b)).collect()
    } else {
        String::from_utf8_lossy(bytes).into_owned()
    }
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// Quoted-printable (RFC 2045 §6.7), lenient: a bad escape stays as is.
fn decode_qp(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while let Some(&b) = body.get(i) {
        if b != b'=' {
            out.push(b);
            i += 1;
            continue;
        }
        match (body.get(i + 1), body.get(i + 2)) {
            (Some(b'\r'), Some(b'\n')) => i += 3,
            (Some(b'\n'), _) => i += 2,
            (Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push(hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0));
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// Base64 (RFC 2045 §6.8), lenient: characters outside the alphabet are
/// skipped, decoding stops at `=`.
fn decode_base64(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() / 4 * 3);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &c in body {
        if c == b'=' {
            break;
        }
        // MIME (RFC 2045 §6.8): characters outside the alphabet are skipped.
        let Some(v) = crate::auth::b64_value(c) else {
            continue;
        };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    out
}

/// RFC 2047 encoded words in a header value; whitespace between two
/// adjacent encoded words is dropped (§6.2).
pub fn decode_words(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    let mut out = String::new();
    let mut pending_space = String::new();
    let mut last_was_word = false;
    for token in split_keep_space(&text) {
        if token.chars().all(char::is_whitespace) {
            pending_space.push_str(token);
            continue;
        }
        match decode_word(token) {
            Some(decoded) => {
                if !last_was_word {
                    out.push_str(&pending_space);
                }
                out.push_str(&decoded);
                last_was_word = true;
            }
            None => {
                out.push_str(&pending_space);
                out.push_str(token);
                last_was_word = false;
            }
        }
        pending_space.clear();
    }
    out
}

/// Runs of whitespace and runs of the rest, in order.
fn split_keep_space(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(first) = rest.chars().next() {
        let space = first.is_whitespace();
        let end = rest
            .char_indices()
            .find(|(_, c)| c.is_whitespace() != space)
            .map_or(rest.len(), |(i, _)| i);
        let (token, tail) = rest.split_at_checked(end).unwrap_or((rest, ""));
        out.push(token);
        rest = tail;
    }
    out
}

/// `=?charset?B|Q?text?=`, or `None` when not one (or not decodable).
fn decode_word(token: &str) -> Option<String> {
    let inner = token.strip_prefix("=?")?.strip_suffix("?=")?;
    let mut f = inner.splitn(3, '?');
    let charset = f.next()?;
    let charset = charset.split_once('*').map_or(charset, |(c, _)| c);
    let encoding = f.next()?;
    let data = f.next()?;
    let bytes = if encoding.eq_ignore_ascii_case("b") {
        let clean: Vec<u8> = data.bytes().collect();
        decode_base64(&clean)
    } else if encoding.eq_ignore_ascii_case("q") {
        let underscores: Vec<u8> = data
            .bytes()
            .map(|b| if b == b'_' { b' ' } else { b })
            .collect();
        decode_qp(&underscores)
    } else {
        return None;
    };
    let known = ["utf-8", "us-ascii", "iso-8859-1", "latin1"];
    if !known.iter().any(|k| charset.eq_ignore_ascii_case(k)) {
        return None;
    }
    Some(to_text(&bytes, charset))
}

fn clean_title(s: &str) -> String {
    let spaced: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    spaced.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn clean_text(s: &str) -> String {
    s.replace("\r\n", "\n")
        .chars()
        .filter(|&c| c == '\n' || c == '\t' || !c.is_control())
        .collect()
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn bounded(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default().to_string()
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn plain_message() {
        let n = notice_of(
            b"Received: by x\r\nSubject: Disk\r\n  almost full\r\nFrom: a@b\r\n\r\nsda1 at 97%\r\nline 2\r\n\r\n",
        );
        assert_eq!(n.title, "Disk almost full");
        assert_eq!(n.message, "sda1 at 97%\nline 2");
    }

    #[test]
    fn encoded_subject() {
        assert_eq!(
            decode_words(b"=?UTF-8?B?w6ljaGVj?= =?utf-8?Q?_de_sauvegarde?= [cron]"),
            "échec de sauvegarde [cron]"
        );
        assert_eq!(decode_words(b"=?ISO-8859-1?Q?caf=E9?="), "café");
        assert_eq!(
            decode_words(b"a =?koi8-r?B?w6k=?= b"),
            "a =?koi8-r?B?w6k=?= b"
        );
        assert_eq!(decode_words(b"=?utf-8?X?abc?="), "=?utf-8?X?abc?=");
        assert_eq!(decode_words(b"no words"), "no words");
    }

    #[test]
    fn multipart_picks_first_text_plain() {
        let msg = b"Subject: s\nContent-Type: multipart/mixed; boundary=\"outer\"\n\n\
preamble\n--outer\nContent-Type: multipart/alternative; boundary=in\n\n\
--in\nContent-Type: text/html\n\n<p>html</p>\n--in\nContent-Type: text/plain; charset=utf-8\n\
Content-Transfer-Encoding: quoted-printable\n\nr=C3=A9sum=C3=A9 soft=\nbreak\n--in--\n\
--outer\nContent-Type: text/plain\nContent-Disposition: attachment\n\nattached\n--outer--\n";
        let n = notice_of(msg);
        assert_eq!(n.message, "résumé softbreak");
    }

    #[test]
    fn attachment_first_and_base64() {
        let msg = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n\
--b\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=x\r\n\r\nnope\r\n\
--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n\
aGVsbG8g\r\nd29ybGQ=\r\n--b--\r\n";
        assert_eq!(notice_of(msg).message, "hello world");
        // No text part at all.
        let html = b"Subject: x\nContent-Type: text/html\n\n<b>x</b>\n";
        assert_eq!(
            notice_of(html),
            Notice {
                title: "x".into(),
                message: String::new()
            }
        );
    }

    #[test]
    fn bounded_and_cleaned() {
        let mut msg = format!("Subject: {}\n\n", "é".repeat(300)).into_bytes();
        msg.extend_from_slice("ü".repeat(3000).as_bytes());
        let n = notice_of(&msg);
        assert!(n.title.len() <= MAX_TITLE && n.title.len() >= MAX_TITLE - 1);
        assert!(n.message.len() <= MAX_TEXT && n.message.len() >= MAX_TEXT - 1);
        let n = notice_of(b"Subject: a\x07b\tc\n\nx\x1b[31my\tz\n");
        assert_eq!(n.title, "a b c");
        assert_eq!(n.message, "x[31my\tz");
        // A cut-off multipart (the read limit) keeps what it has.
        let n = notice_of(b"Content-Type: multipart/mixed; boundary=q\n\n--q\n\npartial text");
        assert_eq!(n.message, "partial text");
        // No header/body separator: no text.
        assert_eq!(notice_of(b"Subject: only").title, "only");
    }
}
