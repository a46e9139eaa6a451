//! Driver for the `mail` command's message builder (`mail_compose`):
//! `cli::mail::compose` with a subject, a `-r` display name, a body (stdin)
//! and attachments (file names and contents) from the input. A local user
//! or a script's data (a log line in a subject, a file to attach) crosses
//! into a message that leaves the router.
//!
//! Input: a flags byte (bits 0-1: attachments, bit 2: a display name,
//! bit 3: a subject, bit 4: a Cc), two length bytes (modulo 2048) and the
//! display name, two length bytes (modulo 2048) and the subject, per attachment a length byte
//! and the file name and two length bytes and the contents; the rest is the
//! body.
//!
//! Properties: the message has LF line ends only (as `compose` documents;
//! `sendmail::inject` makes them CRLF), no CR anywhere, every line at most
//! 998 octets; every header line (message and parts) is 7-bit printable
//! ASCII; the Subject field, unfolded, decodes (RFC 2047 B words, parsed
//! here) to the subject with control characters as spaces, every encoded
//! word at most 75 characters; the From field ends with the address; the
//! text body decodes (7bit/8bit/quoted-printable) to the body with CRLF
//! as LF; each attachment's filename parameter (quoted, or RFC 2231 with
//! continuations) decodes to its file name and its base64 lines (at most
//! 76 characters) to its contents exactly.

use crate::auth::base64_decode;
use crate::cli::mail::{compose, content_type, normalise_body, Attachment, Headers, NamedAddress};

use super::mime::qp_decode;
use super::Input;

/// RFC 5322 §2.1.1.
const MAX_LINE: usize = 998;

pub fn mail_compose(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.byte();
    let name_len = usize::from(input.u16()) % 2048;
    let name = String::from_utf8_lossy(input.bytes(name_len)).into_owned();
    let subject_len = usize::from(input.u16()) % 2048;
    let subject = String::from_utf8_lossy(input.bytes(subject_len)).into_owned();
    let mut attachments = Vec::new();
    for _ in 0..flags % 4 {
        let filename = input.string();
        let len = usize::from(input.u16());
        let data = input.bytes(len).to_vec();
        attachments.push(Attachment {
            content_type: content_type(&filename),
            filename,
            data,
        });
    }
    let body = input.rest();
    let from = NamedAddress {
        name: (flags & 4 != 0).then_some(name),
        addr: "root@router.lan".into(),
    };
    let to = ["admin@example.com".to_string(), "b@x.test".to_string()];
    let cc = if flags & 16 != 0 {
        vec!["\"C D\"@y.test".to_string()]
    } else {
        Vec::new()
    };
    // Like `submit`: a boundary that is not in the body.
    let mut boundary = "=_tern_fuzz".to_string();
    while body
        .windows(boundary.len())
        .any(|w| w == boundary.as_bytes())
    {
        boundary.push('x');
    }
    let subject = (flags & 8 != 0).then_some(subject.as_str());
    let headers = Headers {
        from: &from,
        to: &to,
        cc: &cc,
        subject,
        date: "Thu, 03 Dec 2026 02:00:00 +0000",
        message_id: "<fuzz@router.lan>",
        boundary: &boundary,
    };
    let msg = compose(&headers, body, &attachments);

    assert!(!msg.contains(&b'\r'), "CR in the composed message");
    assert!(msg.ends_with(b"\n"), "message does not end with a line end");
    let lines: Vec<&[u8]> = msg[..msg.len() - 1].split(|&b| b == b'\n').collect();
    for l in &lines {
        assert!(l.len() <= MAX_LINE, "line of {} octets", l.len());
    }
    let blank = lines
        .iter()
        .position(|l| l.is_empty())
        .expect("no end of header");
    let fields = unfold(&lines[..blank]);
    let field = |name: &str| -> Vec<&String> {
        fields
            .iter()
            .filter(|f| {
                f.split_once(':')
                    .is_some_and(|(n, _)| n.eq_ignore_ascii_case(name))
            })
            .collect()
    };

    // Subject.
    let subjects = field("Subject");
    match subject.filter(|s| !s.is_empty()) {
        None => assert!(subjects.is_empty(), "a Subject without a subject"),
        Some(s) => {
            assert_eq!(subjects.len(), 1, "one Subject field");
            let value = subjects[0]["Subject:".len()..]
                .strip_prefix(' ')
                .expect("space after Subject:");
            let expected: String = s
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            assert_eq!(decode_unstructured(value), expected, "Subject {value:?}");
        }
    }
    let from_field = field("From");
    assert_eq!(from_field.len(), 1, "one From field");
    assert!(
        from_field[0].ends_with(" <root@router.lan>") || from_field[0] == "From: root@router.lan",
        "From field {:?}",
        from_field[0]
    );

    let content = &lines[blank + 1..];
    if attachments.is_empty() {
        check_text(&fields, &join(content, true), body);
        return;
    }
    // multipart/mixed: parts between the delimiter lines.
    let delimiter = format!("--{boundary}");
    let close = format!("--{boundary}--");
    assert_eq!(
        content.last().copied(),
        Some(close.as_bytes()),
        "no close delimiter"
    );
    let mut parts: Vec<Vec<&[u8]>> = Vec::new();
    for l in &content[..content.len() - 1] {
        if *l == delimiter.as_bytes() {
            parts.push(Vec::new());
        } else if let Some(p) = parts.last_mut() {
            p.push(l);
        }
    }
    let text_parts = usize::from(!body.is_empty());
    assert_eq!(parts.len(), text_parts + attachments.len(), "parts");
    for (i, part) in parts.iter().enumerate() {
        let blank = part.iter().position(|l| l.is_empty());
        let (head, part_body) = match blank {
            Some(b) => (&part[..b], &part[b + 1..]),
            None => (&part[..], &part[part.len()..]),
        };
        let part_fields = unfold(head);
        if i < text_parts {
            // The line end before the delimiter belongs to it.
            check_text(&part_fields, &join(part_body, false), body);
            continue;
        }
        let a = &attachments[i - text_parts];
        assert!(
            part_fields
                .iter()
                .any(|f| f == "Content-Transfer-Encoding: base64"),
            "attachment without base64: {part_fields:?}"
        );
        let disposition = part_fields
            .iter()
            .find_map(|f| f.strip_prefix("Content-Disposition: attachment;"))
            .expect("Content-Disposition");
        assert_eq!(
            decode_filename(disposition),
            a.filename.as_bytes(),
            "filename in {disposition:?}"
        );
        let mut b64 = String::new();
        for l in part_body {
            assert!(l.len() <= 76, "base64 line of {} characters", l.len());
            b64.push_str(std::str::from_utf8(l).expect("ASCII base64"));
        }
        assert_eq!(
            base64_decode(&b64).expect("valid base64"),
            a.data,
            "attachment {i}"
        );
    }
}

/// Header lines (7-bit printable, checked here) as unfolded fields.
fn unfold(lines: &[&[u8]]) -> Vec<String> {
    let mut fields: Vec<String> = Vec::new();
    for l in lines {
        assert!(
            l.iter().all(|&b| b == b'\t' || (0x20..0x7F).contains(&b)),
            "header line not printable ASCII: {:?}",
            String::from_utf8_lossy(l)
        );
        let l = std::str::from_utf8(l).expect("ASCII");
        if l.starts_with([' ', '\t']) {
            fields.last_mut().expect("continuation first").push_str(l);
        } else {
            assert!(l.contains(':'), "header line without a colon: {l:?}");
            fields.push(l.to_string());
        }
    }
    fields
}

fn join(lines: &[&[u8]], line_end_after_last: bool) -> Vec<u8> {
    let mut out = lines.join(&b'\n');
    if line_end_after_last && !lines.is_empty() {
        out.push(b'\n');
    }
    out
}

/// A folded Subject value: plain words, or only RFC 2047 B words (the
/// white space between two encoded words is not part of the text).
fn decode_unstructured(value: &str) -> String {
    if !value.contains("=?") {
        return value.to_string();
    }
    let mut octets = Vec::new();
    for word in value.split(' ') {
        assert!(
            word.len() <= 75,
            "encoded word of {} characters",
            word.len()
        );
        let b64 = word
            .strip_prefix("=?UTF-8?B?")
            .and_then(|w| w.strip_suffix("?="))
            .unwrap_or_else(|| panic!("not an encoded word: {word:?} in {value:?}"));
        let decoded = base64_decode(b64).expect("encoded word's base64");
        // RFC 2047 §5 rule 3: each word holds whole characters.
        assert!(
            std::str::from_utf8(&decoded).is_ok(),
            "encoded word splits a character"
        );
        octets.extend_from_slice(&decoded);
    }
    String::from_utf8(octets).expect("UTF-8")
}

/// The text entity: its fields say how `encoded` decodes to the body.
fn check_text(fields: &[String], encoded: &[u8], body: &[u8]) {
    let expected = normalise_body(body);
    let charset = if std::str::from_utf8(&expected).is_ok() {
        "utf-8"
    } else {
        "unknown-8bit"
    };
    assert!(
        fields
            .iter()
            .any(|f| *f == format!("Content-Type: text/plain; charset={charset}")),
        "text Content-Type in {fields:?}"
    );
    let cte = fields
        .iter()
        .find_map(|f| f.strip_prefix("Content-Transfer-Encoding: "))
        .expect("Content-Transfer-Encoding");
    match cte {
        "7bit" | "8bit" => {
            assert_eq!(encoded, expected, "{cte} body");
            assert!(
                cte == "8bit" || encoded.is_ascii(),
                "8-bit octets in a 7bit body"
            );
        }
        "quoted-printable" => {
            let mut crlf = Vec::with_capacity(expected.len());
            for &b in &expected {
                if b == b'\n' {
                    crlf.push(b'\r');
                }
                crlf.push(b);
            }
            assert_eq!(qp_decode(encoded), crlf, "quoted-printable body");
        }
        other => panic!("Content-Transfer-Encoding {other}"),
    }
}

/// The filename parameter after `attachment;`: `filename="x"`, or RFC 2231
/// `filename*=utf-8''%xx` or `filename*0*=utf-8''..; filename*1*=..`.
fn decode_filename(params: &str) -> Vec<u8> {
    let params = params.trim_start();
    if let Some(q) = params
        .strip_prefix("filename=\"")
        .and_then(|p| p.strip_suffix('"'))
    {
        assert!(!q.contains(['"', '\\']), "quote in a quoted filename");
        return q.as_bytes().to_vec();
    }
    let mut out = Vec::new();
    if let Some(v) = params.strip_prefix("filename*=utf-8''") {
        percent_decode(v, &mut out);
        return out;
    }
    for (i, p) in params.split(';').enumerate() {
        let p = p.trim_start();
        let prefix = if i == 0 {
            "filename*0*=utf-8''".to_string()
        } else {
            format!("filename*{i}*=")
        };
        let v = p
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("parameter {i}: {p:?} in {params:?}"));
        percent_decode(v, &mut out);
    }
    out
}

fn percent_decode(v: &str, out: &mut Vec<u8>) {
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).expect("hex");
            out.push(u8::from_str_radix(hex, 16).expect("percent escape"));
            i += 3;
        } else {
            assert!(
                b[i].is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b[i]),
                "{:?} not percent-encoded",
                char::from(b[i])
            );
            out.push(b[i]);
            i += 1;
        }
    }
}
