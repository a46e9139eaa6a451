//! Driver for the 8bit → 7bit MIME downgrade (`mime_downgrade`), with the
//! small MIME reader it checks the output against.
//!
//! Separate from the other groups of targets: see the parent module for what
//! the drivers share.

use crate::smtp::mime7bit::{Downgrade, Unconvertible};

use super::{assert_crlf_only, text, Input};

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
