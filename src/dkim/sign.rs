//! Signing one message: [`MessageSigner`] is fed the stored message in
//! chunks split anywhere and gives the `DKIM-Signature` field(s) to put in
//! front of it.
//!
//! It computes what the SMTP client will send, not what is stored: the
//! chunks go through the same [`HeaderRewriter`] (sender rewriting) as the
//! client's, and for an 8-bit message also through a second pipeline with
//! the [`Downgrade`] (8-bit parts to quoted-printable), because whether the
//! next hop needs the downgrade is known only after its EHLO. Each
//! pipeline keeps the header block (at most [`MAX_SIGNED_HEADER`] octets)
//! and streams its body through a [`BodyHasher`]; the client picks the
//! field that matches what it sends (`Signatures`).

use super::canon::{relaxed_header, BodyHasher};
use super::{DkimKeys, SigningKey};
use crate::rewrite::header::HeaderRewriter;
use crate::smtp::mime7bit::Downgrade;

/// Longest header block a signed message may have; a longer one is sent
/// unsigned (logged).
pub const MAX_SIGNED_HEADER: usize = 64 * 1024;
/// Folded lines of the `DKIM-Signature` field stay within this.
const LINE_WIDTH: usize = 78;

/// The header fields signed when present (RFC 6376 §5.4.1), in `h=` order;
/// `From` is listed once more than it occurs (oversigned) so that no
/// `From:` can be added on the way.
pub const SIGNED_FIELDS: &[&str] = &[
    "from",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "in-reply-to",
    "references",
];

/// The `DKIM-Signature` fields (with their CRLF) for a message as sent
/// as-is and as sent through the 7-bit downgrade (an 8-bit message whose
/// downgrade succeeds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signatures {
    pub plain: Vec<u8>,
    pub seven_bit: Option<Vec<u8>>,
}

impl Signatures {
    /// The field for the bytes the client sends.
    pub fn field(&self, downgraded: bool) -> Option<&[u8]> {
        if downgraded {
            self.seven_bit.as_deref()
        } else {
            Some(&self.plain)
        }
    }
}

/// One pipeline's view of the message as sent: its header block and its
/// body hash.
struct Half {
    header: Vec<u8>,
    header_too_large: bool,
    in_body: bool,
    /// Octets on the current header line, and whether the first was CR.
    line_len: usize,
    line_starts_cr: bool,
    body: BodyHasher,
}

impl Half {
    fn new() -> Half {
        Half {
            header: Vec::new(),
            header_too_large: false,
            in_body: false,
            line_len: 0,
            line_starts_cr: false,
            body: BodyHasher::new(),
        }
    }

    fn push(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        while !self.in_body {
            let Some((&b, tail)) = rest.split_first() else {
                return;
            };
            rest = tail;
            if self.header.len() < MAX_SIGNED_HEADER {
                self.header.push(b);
            } else {
                self.header_too_large = true;
            }
            if b == b'\n' {
                // An empty line (CRLF, or a bare LF) ends the header.
                if self.line_len == 0 || (self.line_len == 1 && self.line_starts_cr) {
                    self.in_body = true;
                }
                self.line_len = 0;
            } else {
                if self.line_len == 0 {
                    self.line_starts_cr = b == b'\r';
                }
                self.line_len += 1;
            }
        }
        self.body.push(rest);
    }

    fn fields(&self) -> Vec<&[u8]> {
        header_fields(&self.header)
    }
}

/// A header block's fields, raw (folding and final CRLF included).
fn header_fields(header: &[u8]) -> Vec<&[u8]> {
    {
        let mut fields: Vec<&[u8]> = Vec::new();
        let mut start: Option<usize> = None;
        let mut pos = 0;
        for line in header.split_inclusive(|&b| b == b'\n') {
            let continuation = matches!(line.first(), Some(b' ' | b'\t'));
            let blank = line == b"\r\n" || line == b"\n";
            if !continuation {
                if let Some(s) = start.take() {
                    fields.extend(header.get(s..pos));
                }
                if !blank {
                    start = Some(pos);
                }
            }
            pos += line.len();
        }
        if let Some(s) = start {
            fields.extend(header.get(s..pos));
        }
        fields
    }
}

fn field_is(raw: &[u8], name: &str) -> bool {
    let Some(colon) = raw.iter().position(|&b| b == b':') else {
        return false;
    };
    raw.get(..colon)
        .is_some_and(|n| n.trim_ascii_end().eq_ignore_ascii_case(name.as_bytes()))
}

/// The domain of the first address in the last `From:` field.
pub fn from_domain(fields: &[&[u8]]) -> Option<String> {
    let from = fields.iter().rev().find(|f| field_is(f, "from"))?;
    let colon = from.iter().position(|&b| b == b':')?;
    let value = from.get(colon + 1..)?;
    let mut first: Option<String> = None;
    crate::rewrite::header::rewrite_addresses(value, &mut |addr| {
        if first.is_none() {
            first = Some(addr.to_string());
        }
        None
    });
    let addr = first?;
    let (_, domain) = addr.rsplit_once('@')?;
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    (!domain.is_empty()).then_some(domain)
}

/// What signing a message came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Signed {
    /// The fields to prepend.
    Yes(Signatures),
    /// No key for its `From:` domain (or no `From:`): sent unsigned.
    NoKey,
    /// Could not be signed (why); sent unsigned.
    Failed(String),
}

/// The sans-IO signer of one message; see the module doc.
pub struct MessageSigner {
    rewrite: Option<HeaderRewriter>,
    plain: Half,
    /// The downgrade pipeline (8-bit messages); `None` after it fails.
    seven: Option<(Downgrade, Half)>,
    scratch: Vec<u8>,
    converted: Vec<u8>,
    /// The `From:` domain, once the header is complete.
    domain: Option<Option<String>>,
}

impl MessageSigner {
    /// `rewrite`: the job's sender rewriting; `eight_bit`: the message may
    /// be downgraded on its way.
    pub fn new(rewrite: Option<crate::rewrite::SenderMap>, eight_bit: bool) -> MessageSigner {
        MessageSigner {
            rewrite: rewrite.map(HeaderRewriter::new),
            plain: Half::new(),
            seven: eight_bit.then(|| (Downgrade::new(), Half::new())),
            scratch: Vec::new(),
            converted: Vec::new(),
            domain: None,
        }
    }

    /// Takes the next chunk of the stored message.
    pub fn push(&mut self, chunk: &[u8]) {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let bytes: &[u8] = match self.rewrite.as_mut() {
            Some(rw) => {
                rw.push(chunk, &mut scratch);
                &scratch
            }
            None => chunk,
        };
        self.feed(bytes);
        self.scratch = scratch;
        if self.plain.in_body && self.domain.is_none() {
            self.domain = Some(from_domain(&self.plain.fields()));
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        self.plain.push(bytes);
        if let Some((conv, half)) = self.seven.as_mut() {
            self.converted.clear();
            match conv.push(bytes, &mut self.converted) {
                Ok(()) => half.push(&self.converted),
                Err(_) => self.seven = None,
            }
        }
    }

    /// The outcome when it is known before the end of the message (the
    /// header is complete: no key for its domain, or too large to sign):
    /// the rest need not be read.
    pub fn early_result(&self, keys: &DkimKeys) -> Option<Signed> {
        let domain = self.domain.as_ref()?;
        if domain.as_deref().and_then(|d| keys.key_for(d)).is_none() {
            return Some(Signed::NoKey);
        }
        self.plain
            .header_too_large
            .then(|| Signed::Failed(format!("header larger than {MAX_SIGNED_HEADER} octets")))
    }

    /// The end of the message: the fields, signed with the key of the
    /// `From:` domain at `now` (Unix seconds; `None`: no `t=`).
    pub fn finish(mut self, keys: &DkimKeys, now: Option<u64>) -> Signed {
        if let Some(rw) = self.rewrite.as_mut() {
            let mut out = Vec::new();
            rw.finish(&mut out);
            self.feed(&out);
        }
        if let Some((conv, half)) = self.seven.as_mut() {
            let mut out = Vec::new();
            match conv.finish(&mut out) {
                Ok(()) => half.push(&out),
                Err(_) => self.seven = None,
            }
        }
        let Some(domain) = from_domain(&self.plain.fields()) else {
            return Signed::NoKey;
        };
        let Some((selector, key)) = keys.key_for(&domain) else {
            return Signed::NoKey;
        };
        if self.plain.header_too_large {
            return Signed::Failed(format!("header larger than {MAX_SIGNED_HEADER} octets"));
        }
        let sign = |half: Half| {
            let Half { header, body, .. } = half;
            let body_hash = body.finish();
            let fields = header_fields(&header);
            signature_field(&fields, &domain, selector, key, &body_hash, now)
        };
        let seven_bit = match self.seven {
            Some((_, half)) if !half.header_too_large => match sign(half) {
                Ok(f) => Some(f),
                Err(e) => return Signed::Failed(e),
            },
            _ => None,
        };
        match sign(self.plain) {
            Ok(plain) => Signed::Yes(Signatures { plain, seven_bit }),
            Err(e) => Signed::Failed(e),
        }
    }
}

/// Appends `token` to the folded field, on a new line when the current
/// one would pass [`LINE_WIDTH`].
fn fold_push(out: &mut Vec<u8>, line_len: &mut usize, token: &str, space: bool) {
    let sep = usize::from(space);
    if *line_len + sep + token.len() > LINE_WIDTH && *line_len > 1 {
        out.extend_from_slice(b"\r\n\t");
        *line_len = 1;
    } else if space {
        out.push(b' ');
        *line_len += 1;
    }
    out.extend_from_slice(token.as_bytes());
    *line_len += token.len();
}

/// The complete `DKIM-Signature` field (folded, ending in CRLF) over the
/// raw `fields` of the header as sent and the body hash.
pub fn signature_field(
    fields: &[&[u8]],
    domain: &str,
    selector: &str,
    key: &SigningKey,
    body_hash: &[u8; 32],
    now: Option<u64>,
) -> Result<Vec<u8>, String> {
    // h=: every instance of each signed name present, From once more.
    let mut names: Vec<&str> = Vec::new();
    for &name in SIGNED_FIELDS {
        let count = fields.iter().filter(|f| field_is(f, name)).count();
        let count = if name == "from" { count + 1 } else { count };
        names.extend(std::iter::repeat_n(name, count));
    }
    // The hashed header: for each name in h=, the next instance from the
    // bottom (RFC 6376 §5.4.2); none left contributes nothing.
    let mut used = vec![false; fields.len()];
    let mut hashed = Vec::new();
    for name in &names {
        let next = fields
            .iter()
            .enumerate()
            .rev()
            .find(|(i, f)| !used.get(*i).copied().unwrap_or(true) && field_is(f, name));
        if let Some((i, f)) = next {
            if let Some(u) = used.get_mut(i) {
                *u = true;
            }
            hashed.extend(relaxed_header(f).unwrap_or_default());
        }
    }

    let mut out = b"DKIM-Signature:".to_vec();
    let mut line_len = out.len();
    let mut tags = vec![
        "v=1;".to_string(),
        format!("a={};", key.algorithm()),
        "c=relaxed/relaxed;".to_string(),
        format!("d={domain};"),
        format!("s={selector};"),
    ];
    if let Some(t) = now {
        tags.push(format!("t={t};"));
    }
    for tag in &tags {
        fold_push(&mut out, &mut line_len, tag, true);
    }
    // h= may break after any colon.
    let mut first = true;
    let last = names.len().saturating_sub(1);
    for (i, name) in names.iter().enumerate() {
        let piece = match (first, i == last) {
            (true, true) => format!("h={name};"),
            (true, false) => format!("h={name}:"),
            (false, true) => format!("{name};"),
            (false, false) => format!("{name}:"),
        };
        fold_push(&mut out, &mut line_len, &piece, first);
        first = false;
    }
    let bh = crate::auth::base64_encode(body_hash);
    fold_push(&mut out, &mut line_len, &format!("bh={bh};"), true);
    fold_push(&mut out, &mut line_len, "b=", true);

    // The signature covers this field with an empty b= (no final CRLF).
    let mut own = relaxed_header(&out).ok_or("no colon")?;
    own.truncate(own.len().saturating_sub(2));
    hashed.extend_from_slice(&own);
    let sig = crate::auth::base64_encode(&key.sign(&hashed)?);

    // b= folded anywhere (FWS is allowed inside base64 values).
    let mut rest = sig.as_str();
    while !rest.is_empty() {
        let room = LINE_WIDTH.saturating_sub(line_len).max(1);
        if room < 8 && line_len > 1 {
            out.extend_from_slice(b"\r\n\t");
            line_len = 1;
            continue;
        }
        let Some((piece, tail)) = rest.split_at_checked(room.min(rest.len())) else {
            break;
        };
        out.extend_from_slice(piece.as_bytes());
        line_len += piece.len();
        rest = tail;
    }
    out.extend_from_slice(b"\r\n");
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn fields_split_and_from_domain() {
        let mut h = Half::new();
        h.push(b"From: \"A, B\" <a@Example.COM>\r\nSubject: x\r\n  y\r\n\r\nbody\r\n");
        assert!(h.in_body);
        let f = h.fields();
        assert_eq!(f.len(), 2);
        assert_eq!(f[1], b"Subject: x\r\n  y\r\n");
        assert_eq!(from_domain(&f).as_deref(), Some("example.com"));
    }

    fn keys() -> DkimKeys {
        let key = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[1; 32]).unwrap();
        DkimKeys::single("example.com", "s1", SigningKey::Ed25519(key))
    }

    fn sign_in(message: &[u8], chunk: usize, eight_bit: bool) -> Signed {
        let mut s = MessageSigner::new(None, eight_bit);
        for c in message.chunks(chunk) {
            s.push(c);
        }
        s.finish(&keys(), Some(1_800_000_000))
    }

    const EIGHT_BIT: &[u8] = b"From: A <a@example.com>\r\nTo: b@far.test\r\nSubject: s\r\n\
        MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
        Content-Transfer-Encoding: 8bit\r\n\r\nGr\xc3\xbc\xc3\x9fe  \r\n\r\n";

    #[test]
    fn signature_does_not_depend_on_chunks_and_has_both_variants() {
        let whole = sign_in(EIGHT_BIT, usize::MAX, true);
        for chunk in [1, 2, 7, 64] {
            assert_eq!(sign_in(EIGHT_BIT, chunk, true), whole, "chunk {chunk}");
        }
        let Signed::Yes(s) = whole else {
            panic!("not signed: {whole:?}")
        };
        let plain = String::from_utf8(s.plain.clone()).unwrap();
        assert!(plain.starts_with("DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;"));
        assert!(plain.contains("d=example.com;") && plain.contains("t=1800000000;"));
        let unfolded = plain.replace("\r\n\t", " ");
        assert!(unfolded.contains(
            "h=from:from:to:subject:mime-version:content-type: content-transfer-encoding;"
        ));
        assert!(plain.lines().all(|l| l.len() <= 78), "{plain}");
        // The downgraded message has another body hash and CTE field.
        let seven = String::from_utf8(s.seven_bit.unwrap()).unwrap();
        let bh = |f: &str| {
            f.split("bh=")
                .nth(1)
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .to_string()
        };
        assert_ne!(bh(&plain), bh(&seven));
        // A 7-bit message has no second variant.
        let Signed::Yes(s) = sign_in(EIGHT_BIT, 5, false) else {
            panic!()
        };
        assert_eq!(s.seven_bit, None);
    }

    #[test]
    fn other_domain_stops_after_the_header_and_big_header_fails() {
        let mut s = MessageSigner::new(None, false);
        s.push(b"From: c@other.test\r\nSubject: x\r\n");
        assert_eq!(s.early_result(&keys()), None);
        s.push(b"\r\nbody");
        assert_eq!(s.early_result(&keys()), Some(Signed::NoKey));
        assert_eq!(s.finish(&keys(), None), Signed::NoKey);

        let mut big = b"From: a@example.com\r\n".to_vec();
        for _ in 0..(MAX_SIGNED_HEADER / 20) {
            big.extend_from_slice(b"X-Filler: 123456789\r\n");
        }
        big.extend_from_slice(b"\r\nbody\r\n");
        assert!(matches!(sign_in(&big, 4096, false), Signed::Failed(_)));
        let mut s = MessageSigner::new(None, false);
        s.push(&big);
        assert!(matches!(s.early_result(&keys()), Some(Signed::Failed(_))));
    }

    #[test]
    fn header_without_body_and_no_from() {
        let mut h = Half::new();
        h.push(b"To: b@c\r\n");
        assert!(!h.in_body);
        assert_eq!(from_domain(&h.fields()), None);
    }
}
