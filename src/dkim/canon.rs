//! DKIM "relaxed" canonicalization (RFC 6376 §3.4.2 header, §3.4.4 body)
//! and the streamed body hash.
//!
//! [`BodyHasher`] is sans-IO: fed the body in chunks split anywhere, it
//! canonicalizes on the fly into a small output buffer that is hashed when
//! full, so memory stays fixed whatever the body's size. Only CRLF ends a
//! line (as on the wire); a bare CR or LF is an ordinary octet.

use ring::digest;

/// Canonical octets gathered before they are handed to SHA-256.
const HASH_BUFFER: usize = 4096;

fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Relaxed canonical form of one raw header field (`Name: value`, folding
/// included, with or without its final CRLF): the name lower-cased, the
/// value unfolded, WSP runs made one SP, WSP around the colon and at the
/// end removed; ends with CRLF. `None`: no colon.
pub fn relaxed_header(raw: &[u8]) -> Option<Vec<u8>> {
    let colon = raw.iter().position(|&b| b == b':')?;
    let (name, value) = raw.split_at_checked(colon)?;
    let value = value.get(1..).unwrap_or_default();
    let mut out = Vec::with_capacity(raw.len() + 2);
    // Unfolded first (a fold before the colon goes too), then the WSP
    // before the colon.
    out.extend(
        name.iter()
            .filter(|&&b| b != b'\r' && b != b'\n')
            .map(u8::to_ascii_lowercase),
    );
    while out.last().is_some_and(|&b| is_wsp(b)) {
        out.pop();
    }
    out.push(b':');
    let mut wsp = false;
    let mut started = false;
    for &b in value {
        match b {
            // Unfolding: the line breaks go, the WSP after them stays.
            b'\r' | b'\n' => {}
            b' ' | b'\t' => wsp = true,
            _ => {
                if wsp && started {
                    out.push(b' ');
                }
                wsp = false;
                started = true;
                out.push(b);
            }
        }
    }
    out.extend_from_slice(b"\r\n");
    Some(out)
}

/// The relaxed body canonicalization streamed into SHA-256: WSP runs
/// become one SP, WSP at line ends goes, empty lines at the end go, and a
/// non-empty body ends with CRLF.
pub struct BodyHasher {
    ctx: digest::Context,
    buf: Vec<u8>,
    /// A CR was seen; it ends a line if an LF follows.
    cr: bool,
    /// WSP seen on this line since its last other octet.
    wsp: bool,
    /// The current line has an octet other than WSP.
    content: bool,
    /// Empty lines held back: emitted only if content follows.
    empty_lines: u64,
}

impl Default for BodyHasher {
    fn default() -> Self {
        BodyHasher::new()
    }
}

impl BodyHasher {
    pub fn new() -> BodyHasher {
        BodyHasher {
            ctx: digest::Context::new(&digest::SHA256),
            buf: Vec::with_capacity(HASH_BUFFER),
            cr: false,
            wsp: false,
            content: false,
            empty_lines: 0,
        }
    }

    /// Takes the next octets of the body.
    pub fn push(&mut self, chunk: &[u8]) {
        for &b in chunk {
            if self.cr {
                self.cr = false;
                if b == b'\n' {
                    self.end_line();
                    continue;
                }
                self.octet(b'\r');
            }
            match b {
                b'\r' => self.cr = true,
                b' ' | b'\t' => self.wsp = true,
                _ => self.octet(b),
            }
        }
    }

    /// The SHA-256 of the canonical body.
    pub fn finish(mut self) -> [u8; 32] {
        if self.cr {
            self.cr = false;
            self.octet(b'\r');
        }
        if self.content {
            self.emit(b"\r\n");
        }
        self.ctx.update(&self.buf);
        let mut out = [0u8; 32];
        out.copy_from_slice(self.ctx.finish().as_ref());
        out
    }

    fn octet(&mut self, b: u8) {
        while self.empty_lines > 0 {
            self.empty_lines -= 1;
            self.emit(b"\r\n");
        }
        // Leading WSP is kept too, as one SP.
        if self.wsp {
            self.emit(b" ");
        }
        self.wsp = false;
        self.content = true;
        self.emit(&[b]);
    }

    fn end_line(&mut self) {
        self.wsp = false;
        if self.content {
            self.emit(b"\r\n");
            self.content = false;
        } else {
            self.empty_lines += 1;
        }
    }

    fn emit(&mut self, bytes: &[u8]) {
        if self.buf.len() + bytes.len() > HASH_BUFFER {
            self.ctx.update(&self.buf);
            self.buf.clear();
        }
        self.buf.extend_from_slice(bytes);
    }
}

/// The canonical body as octets (tests and the fuzz target compare the
/// streamed hash against this one-shot form).
pub fn relaxed_body(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut rest = body;
    loop {
        match rest.windows(2).position(|w| w == b"\r\n") {
            Some(i) => {
                lines.push(rest.get(..i).unwrap_or_default().to_vec());
                rest = rest.get(i + 2..).unwrap_or_default();
            }
            None => {
                if !rest.is_empty() {
                    lines.push(rest.to_vec());
                }
                break;
            }
        }
    }
    let canon: Vec<Vec<u8>> = lines
        .iter()
        .map(|l| {
            let mut c = Vec::new();
            let mut wsp = false;
            for &b in l {
                if is_wsp(b) {
                    wsp = true;
                } else {
                    if wsp {
                        c.push(b' ');
                    }
                    wsp = false;
                    c.push(b);
                }
            }
            c
        })
        .collect();
    let keep = canon
        .iter()
        .rposition(|l| !l.is_empty())
        .map_or(0, |i| i + 1);
    for l in canon.iter().take(keep) {
        out.extend_from_slice(l);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn sha(data: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
        out
    }

    fn hash_in_chunks(body: &[u8], sizes: &[usize]) -> [u8; 32] {
        let mut h = BodyHasher::new();
        let mut rest = body;
        let mut i = 0;
        while !rest.is_empty() {
            let n = sizes[i % sizes.len()].max(1).min(rest.len());
            h.push(&rest[..n]);
            rest = &rest[n..];
            i += 1;
        }
        h.finish()
    }

    // RFC 6376 §3.4.5, relaxed header canonicalization.
    #[test]
    fn rfc6376_example_headers() {
        assert_eq!(relaxed_header(b"A: X\r\n").unwrap(), b"a:X\r\n");
        assert_eq!(
            relaxed_header(b"B : Y\t\r\n\tZ  \r\n").unwrap(),
            b"b:Y Z\r\n"
        );
    }

    // RFC 6376 §3.4.5, relaxed body canonicalization.
    #[test]
    fn rfc6376_example_body() {
        let body = b" C \r\nD \t E\r\n\r\n\r\n";
        assert_eq!(relaxed_body(body), b" C\r\nD E\r\n");
        assert_eq!(hash_in_chunks(body, &[1]), sha(b" C\r\nD E\r\n"));
        assert_eq!(hash_in_chunks(body, &[100]), sha(b" C\r\nD E\r\n"));
    }

    #[test]
    fn header_name_case_colon_spaces_and_no_colon() {
        assert_eq!(
            relaxed_header(b"SUBJect  :   Hello   World \r\n").unwrap(),
            b"subject:Hello World\r\n"
        );
        assert_eq!(relaxed_header(b"To:\r\n").unwrap(), b"to:\r\n");
        assert_eq!(relaxed_header(b"no colon\r\n"), None);
        // A fold before the colon (obsolete syntax) is unfolded too.
        assert_eq!(
            relaxed_header(b"X-Old\r\n : v\r\n").unwrap(),
            b"x-old:v\r\n"
        );
    }

    #[test]
    fn empty_and_blank_bodies_hash_as_empty() {
        let empty = sha(b"");
        assert_eq!(hash_in_chunks(b"", &[1]), empty);
        assert_eq!(hash_in_chunks(b"\r\n\r\n", &[1]), empty);
        assert_eq!(hash_in_chunks(b"  \t\r\n \r\n", &[3]), empty);
    }

    #[test]
    fn missing_final_crlf_is_added_and_bare_cr_lf_are_octets() {
        assert_eq!(hash_in_chunks(b"abc", &[1]), sha(b"abc\r\n"));
        assert_eq!(hash_in_chunks(b"abc  ", &[2]), sha(b"abc\r\n"));
        assert_eq!(hash_in_chunks(b"a\nb \rc\r\n", &[1]), sha(b"a\nb \rc\r\n"));
        assert_eq!(relaxed_body(b"a\nb \rc\r\n"), b"a\nb \rc\r\n");
        assert_eq!(hash_in_chunks(b"x\r", &[1]), sha(b"x\r\r\n"));
    }

    #[test]
    fn inner_empty_lines_kept_trailing_dropped() {
        let body = b"a\r\n\r\n \r\nb\t \r\n\r\n \t\r\n";
        let want = b"a\r\n\r\n\r\nb\r\n";
        assert_eq!(relaxed_body(body), want);
        assert_eq!(hash_in_chunks(body, &[1]), sha(want));
    }

    #[test]
    fn every_chunk_split_gives_the_same_hash() {
        let body: &[u8] =
            b"  lead\r\nx \t y\t\r\n\r\n.dot\r\n\xc3\xa9t\xc3\xa9 \r\n\r\n  \r\nlast \t";
        let want = sha(&relaxed_body(body));
        for a in 0..=body.len() {
            for b in a..=body.len() {
                let mut h = BodyHasher::new();
                h.push(&body[..a]);
                h.push(&body[a..b]);
                h.push(&body[b..]);
                assert_eq!(h.finish(), want, "split at {a}, {b}");
            }
        }
    }

    #[test]
    fn long_body_crosses_the_hash_buffer() {
        let mut body = Vec::new();
        for i in 0..2000 {
            body.extend_from_slice(format!("line {i}   with  spaces \r\n").as_bytes());
        }
        body.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            hash_in_chunks(&body, &[7, 4096, 1, 333]),
            sha(&relaxed_body(&body))
        );
    }
}
