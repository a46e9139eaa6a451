//! `dkim_canon`: DKIM relaxed canonicalization and signing.

use super::Input;
use crate::dkim::canon::{relaxed_body, relaxed_header, BodyHasher};
use crate::dkim::sign::{MessageSigner, Signed};
use crate::dkim::{DkimKeys, SigningKey};

fn pieces<'a>(data: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut from = 0;
    for &c in cuts {
        let c = c.clamp(from, data.len());
        out.push(&data[from..c]);
        from = c;
    }
    out.push(&data[from..]);
    out
}

fn sign(message: &[u8], cuts: &[usize], keys: &DkimKeys, eight_bit: bool) -> Signed {
    let mut s = MessageSigner::new(None, eight_bit);
    for p in pieces(message, cuts) {
        s.push(p);
    }
    s.finish(keys, Some(1_800_000_000))
}

fn check_field(field: &[u8]) {
    assert!(field.starts_with(b"DKIM-Signature: v=1; a=ed25519-sha256;"));
    assert!(field.ends_with(b"\r\n"));
    let lines: Vec<&[u8]> = field[..field.len() - 2].split(|&b| b == b'\n').collect();
    for (i, l) in lines.iter().enumerate() {
        let l = l.strip_suffix(b"\r").unwrap_or(l);
        assert!(
            !l.contains(&b'\r'),
            "bare CR in {:?}",
            String::from_utf8_lossy(field)
        );
        assert!(l.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)));
        assert!(i == 0 || l.starts_with(b"\t"), "continuation without WSP");
    }
}

/// Input: a mode byte, up to 7 cut points, then a message (mode bit 0:
/// behind a fixed `From:` of the signing domain; bit 1: treated as 8-bit).
pub fn dkim_canon(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.byte();
    let ncuts = usize::from(input.byte() % 8);
    let raw_cuts: Vec<u8> = input.bytes(ncuts).to_vec();
    let rest = input.rest();
    let mut cuts: Vec<usize> = raw_cuts
        .iter()
        .map(|&c| usize::from(c) * rest.len() / 255)
        .collect();
    cuts.sort_unstable();

    // Body: the streamed hash equals the one-shot model, for any cuts;
    // the canonical form is a fixed point.
    let canon = relaxed_body(rest);
    let want = ring::digest::digest(&ring::digest::SHA256, &canon);
    let mut h = BodyHasher::new();
    for p in pieces(rest, &cuts) {
        h.push(p);
    }
    assert_eq!(h.finish().as_slice(), want.as_ref(), "cuts {cuts:?}");
    let mut bytewise = BodyHasher::new();
    for b in rest.iter().take(600) {
        bytewise.push(std::slice::from_ref(b));
    }
    if rest.len() <= 600 {
        assert_eq!(bytewise.finish().as_slice(), want.as_ref(), "byte by byte");
    }
    assert_eq!(
        relaxed_body(&canon),
        canon,
        "canonical body not a fixed point"
    );
    assert!(canon.is_empty() || canon.ends_with(b"\r\n"));
    assert!(!canon.ends_with(b"\r\n\r\n"));

    // Header (a field name is printable ASCII without the colon, RFC 5322
    // §2.2; WSP may follow it): one CRLF at the end, no WSP runs or
    // trailing WSP, a lower-case name; canonical twice is canonical once.
    let colon = rest.iter().position(|&b| b == b':').unwrap_or(0);
    let mut name: Vec<u8> = rest[..colon]
        .iter()
        .copied()
        .filter(|&b| b != b'\r' && b != b'\n')
        .collect();
    while name.last().is_some_and(|&b| b == b' ' || b == b'\t') {
        name.pop();
    }
    let ftext = !name.is_empty() && name.iter().all(|&b| (33..=126).contains(&b));
    if let Some(h) = relaxed_header(rest).filter(|_| ftext) {
        let body = &h[..h.len() - 2];
        assert!(h.ends_with(b"\r\n") && !body.contains(&b'\r') && !body.contains(&b'\n'));
        assert!(!body.contains(&b'\t') && !body.windows(2).any(|w| w == b"  "));
        assert!(!body.ends_with(b" "));
        let colon = body.iter().position(|&b| b == b':').unwrap();
        assert!(!body[..colon].iter().any(u8::is_ascii_uppercase));
        assert!(!body[..colon].ends_with(b" ") && !body[colon + 1..].starts_with(b" "));
        assert_eq!(relaxed_header(&h).unwrap(), h);
    }

    // The whole signer: the field does not depend on the cuts.
    let key = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[7; 32]).unwrap();
    let keys = DkimKeys::single("example.com", "fz", SigningKey::Ed25519(key));
    let mut message = Vec::new();
    if mode & 1 == 1 {
        message.extend_from_slice(b"From: Fuzz <fuzz@example.com>\r\n");
    }
    message.extend_from_slice(rest);
    let eight_bit = mode & 2 == 2;
    let whole = sign(&message, &[], &keys, eight_bit);
    let mut mcuts: Vec<usize> = raw_cuts
        .iter()
        .map(|&c| usize::from(c) * message.len() / 255)
        .collect();
    mcuts.sort_unstable();
    assert_eq!(
        whole,
        sign(&message, &mcuts, &keys, eight_bit),
        "cuts {mcuts:?}"
    );
    if let Signed::Yes(s) = &whole {
        check_field(&s.plain);
        if let Some(f) = &s.seven_bit {
            check_field(f);
        }
    }
}
