//! CRLF → LF while streaming a message out of the spool into a local
//! mailbox.
//!
//! The spool holds messages as they travel on the wire (CRLF line ends);
//! Maildir and mbox files hold Unix line ends (LF), as Postfix's local(8)
//! and every mail reader expect: with CRLF, s-nail reads the charset
//! `utf-8\r` and shows no body, mutt shows `^M` on every header line.
//!
//! Rules: `CR LF` becomes `LF`; a `CR` not followed by `LF` is kept as a
//! data octet (the SMTP server and the sendmail import already store bare
//! CRs as line breaks, so one can only come from a damaged or hand-made
//! file, and dropping data would be worse); a lone `LF` stays. A `CR LF`
//! split across two reads is still one line end: the `CR` is held back
//! until the next octet is known. Memory: one buffer of [`LF_BUFFER`]
//! octets, whatever the message size.

use std::io::{self, Read};

/// Octets read from the spool at a time.
pub const LF_BUFFER: usize = 8 * 1024;

/// A reader that gives `inner`'s bytes with every CRLF turned into LF.
pub struct CrlfToLf<R> {
    inner: R,
    buf: Box<[u8]>,
    /// `buf[pos..len]` is read but not yet given out.
    pos: usize,
    len: usize,
    /// A CR was read last; whether it ends a line depends on the next octet.
    held_cr: bool,
    eof: bool,
}

impl<R: Read> CrlfToLf<R> {
    pub fn new(inner: R) -> CrlfToLf<R> {
        CrlfToLf {
            inner,
            buf: vec![0; LF_BUFFER].into_boxed_slice(),
            pos: 0,
            len: 0,
            held_cr: false,
            eof: false,
        }
    }
}

impl<R: Read> Read for CrlfToLf<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        while n < out.len() {
            if self.pos == self.len {
                // Give out what we have before reading (and maybe blocking) again.
                if self.eof || n > 0 {
                    break;
                }
                self.len = self.inner.read(&mut self.buf)?;
                self.pos = 0;
                if self.len == 0 {
                    self.eof = true;
                    if self.held_cr {
                        // A CR at the very end: data.
                        self.held_cr = false;
                        if let Some(o) = out.get_mut(n) {
                            *o = b'\r';
                            n += 1;
                        }
                    }
                    break;
                }
                continue;
            }
            let pending = self.buf.get(self.pos..self.len).unwrap_or_default();
            let room = out.len() - n;
            if self.held_cr {
                self.held_cr = false;
                if pending.first() == Some(&b'\n') {
                    // CRLF: the LF is given out below as a plain octet.
                } else if let Some(o) = out.get_mut(n) {
                    *o = b'\r';
                    n += 1;
                    continue;
                }
            }
            let pending = self.buf.get(self.pos..self.len).unwrap_or_default();
            let run = pending
                .iter()
                .take(room)
                .position(|&b| b == b'\r')
                .unwrap_or(pending.len().min(room));
            if let (Some(dst), Some(src)) = (out.get_mut(n..n + run), pending.get(..run)) {
                dst.copy_from_slice(src);
            }
            n += run;
            self.pos += run;
            if run < room && self.pos < self.len {
                // Stopped at a CR: hold it back.
                self.pos += 1;
                self.held_cr = true;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)]
mod tests {
    use super::*;

    /// Gives its data `step` octets per read.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(out.len()).min(self.data.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn convert(data: &[u8], step: usize, out_chunk: usize) -> Vec<u8> {
        let mut r = CrlfToLf::new(Trickle { data, step });
        let mut got = Vec::new();
        let mut chunk = vec![0u8; out_chunk];
        loop {
            let n = r.read(&mut chunk).unwrap();
            if n == 0 {
                return got;
            }
            got.extend_from_slice(&chunk[..n]);
        }
    }

    #[test]
    fn crlf_becomes_lf_whatever_the_chunking() {
        let cases: [(&[u8], &[u8]); 8] = [
            (b"a\r\nb\r\n", b"a\nb\n"),
            (b"a\nb\n", b"a\nb\n"),
            (b"bare\rcr\r\n", b"bare\rcr\n"),
            (b"x\r", b"x\r"),
            (b"\r\r\n\r\n", b"\r\n\n"),
            (b"\r\n", b"\n"),
            (b"", b""),
            (b"no line end", b"no line end"),
        ];
        for (input, want) in cases {
            for step in [1, 2, 3, 7, LF_BUFFER, LF_BUFFER + 1] {
                for out_chunk in [1, 2, 5, 64 * 1024] {
                    assert_eq!(
                        convert(input, step, out_chunk),
                        want,
                        "{input:?} step {step} out {out_chunk}"
                    );
                }
            }
        }
    }

    #[test]
    fn crlf_split_across_the_buffer_boundary() {
        // The CR is the last octet of one buffer fill, the LF the first of
        // the next.
        let mut input = vec![b'a'; LF_BUFFER - 1];
        input.extend_from_slice(b"\r\nb\r\n");
        let mut want = vec![b'a'; LF_BUFFER - 1];
        want.extend_from_slice(b"\nb\n");
        assert_eq!(convert(&input, LF_BUFFER, 64 * 1024), want);
        assert_eq!(convert(&input, LF_BUFFER, 3), want);
        let big = b"line of text\r\n".repeat(10_000);
        let out = convert(&big, 5000, 4096);
        assert_eq!(out, b"line of text\n".repeat(10_000));
    }
}
