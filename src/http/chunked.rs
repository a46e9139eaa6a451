//! Chunked transfer coding decoder (RFC 9112 §7.1), sans-IO and bounded.
//!
//! Fed any split of the response body bytes; writes the decoded data to the
//! caller's buffer and refuses to grow it past `limit`. Chunk extensions are
//! skipped (bounded by [`MAX_CHUNK_LINE`]); trailer fields are read and
//! dropped (bounded by [`MAX_TRAILER`]). A bare LF is accepted where CRLF is
//! due (RFC 9112 §2.2 lets a recipient do so).

/// Longest chunk-size line (size, extensions), terminator excluded.
pub const MAX_CHUNK_LINE: usize = 256;
/// Most trailer bytes read after the last chunk.
pub const MAX_TRAILER: usize = 4 * 1024;
/// Most hex digits in a chunk size (no leading-zero games past this).
const MAX_SIZE_DIGITS: u8 = 15;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkedError {
    /// The decoded body would exceed the limit.
    TooLarge,
    /// Not chunked coding.
    Malformed(&'static str),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a chunk size.
    Size {
        value: u64,
        digits: u8,
    },
    /// After the size: extensions up to LF (`len` bytes so far).
    Extension {
        value: u64,
        len: usize,
    },
    /// CR seen after the size line; LF due.
    SizeLf {
        value: u64,
    },
    /// `remaining` bytes of chunk data due.
    Data {
        remaining: u64,
    },
    /// CRLF after chunk data due.
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines until an empty one.
    Trailer {
        line: usize,
        total: usize,
    },
    Done,
}

#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    state: State,
    limit: usize,
}

impl ChunkedDecoder {
    /// A decoder that refuses to let `out` grow past `limit` bytes.
    pub fn new(limit: usize) -> ChunkedDecoder {
        ChunkedDecoder {
            state: State::Size {
                value: 0,
                digits: 0,
            },
            limit,
        }
    }

    /// The last chunk and the trailer were read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from `input` into `out`; returns how many input bytes were
    /// used (less than `input.len()` only once done: the rest is not body).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ChunkedError> {
        let mut used = 0;
        while let Some(rest) = input.get(used..) {
            if rest.is_empty() || self.state == State::Done {
                break;
            }
            if let State::Data { remaining } = self.state {
                let take = usize::try_from(remaining)
                    .unwrap_or(usize::MAX)
                    .min(rest.len());
                let chunk = rest.get(..take).unwrap_or_default();
                out.extend_from_slice(chunk);
                used += take;
                let left = remaining - take as u64;
                self.state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data { remaining: left }
                };
                continue;
            }
            let Some(&b) = rest.first() else { break };
            used += 1;
            self.step(b, out.len())?;
        }
        Ok(used)
    }

    fn step(&mut self, b: u8, have: usize) -> Result<(), ChunkedError> {
        self.state = match self.state {
            State::Size { value, digits } => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    if digits >= MAX_SIZE_DIGITS {
                        return Err(ChunkedError::Malformed("chunk size too long"));
                    }
                    let d = (b as char).to_digit(16).unwrap_or(0);
                    State::Size {
                        value: value * 16 + u64::from(d),
                        digits: digits + 1,
                    }
                }
                _ if digits == 0 => return Err(ChunkedError::Malformed("no chunk size")),
                b';' | b' ' | b'\t' => State::Extension { value, len: 1 },
                b'\r' => State::SizeLf { value },
                b'\n' => self.size_line_done(value, have)?,
                _ => return Err(ChunkedError::Malformed("bad chunk size")),
            },
            State::Extension { value, len } => match b {
                b'\n' => self.size_line_done(value, have)?,
                _ if len >= MAX_CHUNK_LINE => {
                    return Err(ChunkedError::Malformed("chunk extension too long"))
                }
                _ => State::Extension {
                    value,
                    len: len + 1,
                },
            },
            State::SizeLf { value } => match b {
                b'\n' => self.size_line_done(value, have)?,
                _ => return Err(ChunkedError::Malformed("CR without LF after chunk size")),
            },
            State::DataCr => match b {
                b'\r' => State::DataLf,
                b'\n' => State::Size {
                    value: 0,
                    digits: 0,
                },
                _ => return Err(ChunkedError::Malformed("chunk data longer than its size")),
            },
            State::DataLf => match b {
                b'\n' => State::Size {
                    value: 0,
                    digits: 0,
                },
                _ => return Err(ChunkedError::Malformed("CR without LF after chunk data")),
            },
            State::Trailer { line, total } => {
                if total >= MAX_TRAILER {
                    return Err(ChunkedError::TooLarge);
                }
                match b {
                    b'\n' if line == 0 => State::Done,
                    b'\n' => State::Trailer {
                        line: 0,
                        total: total + 1,
                    },
                    b'\r' => State::Trailer {
                        line,
                        total: total + 1,
                    },
                    _ => State::Trailer {
                        line: line + 1,
                        total: total + 1,
                    },
                }
            }
            // `feed` handles these two without calling `step`.
            State::Data { .. } | State::Done => self.state,
        };
        Ok(())
    }

    fn size_line_done(&self, value: u64, have: usize) -> Result<State, ChunkedError> {
        if value == 0 {
            return Ok(State::Trailer { line: 0, total: 0 });
        }
        let room = self.limit.saturating_sub(have) as u64;
        if value > room {
            return Err(ChunkedError::TooLarge);
        }
        Ok(State::Data { remaining: value })
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn decode_split(
        input: &[u8],
        split: usize,
        limit: usize,
    ) -> Result<(Vec<u8>, usize), ChunkedError> {
        let mut d = ChunkedDecoder::new(limit);
        let mut out = Vec::new();
        let mut used = 0;
        for piece in input.chunks(split.max(1)) {
            let n = d.feed(piece, &mut out)?;
            used += n;
            if d.is_done() {
                break;
            }
        }
        assert!(d.is_done(), "not done after {used} bytes");
        Ok((out, used))
    }

    #[test]
    fn decodes_every_split() {
        let body =
            b"4\r\nWiki\r\n5;ext=1\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\nEXTRA";
        let end = body.len() - 5;
        for split in 1..body.len() {
            let (out, used) = decode_split(body, split, 1000).unwrap();
            assert_eq!(out, b"Wikipedia in\r\n\r\nchunks.");
            assert!(used <= end);
        }
        let mut d = ChunkedDecoder::new(1000);
        let mut out = Vec::new();
        assert_eq!(d.feed(body, &mut out), Ok(end));
    }

    #[test]
    fn bare_lf_and_upper_hex() {
        let (out, _) = decode_split(b"A\nabcdefghij\n0\n\n", 3, 100).unwrap();
        assert_eq!(out, b"abcdefghij");
    }

    #[test]
    fn limit_is_exact() {
        assert!(decode_split(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", 1, 5).is_ok());
        assert_eq!(
            decode_split(b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n", 1, 5),
            Err(ChunkedError::TooLarge)
        );
        // A huge declared size fails before any data arrives.
        let mut d = ChunkedDecoder::new(10);
        assert_eq!(
            d.feed(b"fffffffffffffff\r\n", &mut Vec::new()),
            Err(ChunkedError::TooLarge)
        );
    }

    #[test]
    fn malformed() {
        for bad in [
            &b"\r\n"[..],
            b"x\r\n",
            b"1\r\nab\r\n",
            b"1\r\na\rX",
            b"1\rX",
            b"1234567890abcdef0\r\n",
        ] {
            let mut d = ChunkedDecoder::new(100);
            assert!(
                matches!(
                    d.feed(bad, &mut Vec::new()),
                    Err(ChunkedError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
        let mut long_ext = b"1;".to_vec();
        long_ext.extend(std::iter::repeat_n(b'x', MAX_CHUNK_LINE));
        let mut d = ChunkedDecoder::new(100);
        assert!(d.feed(&long_ext, &mut Vec::new()).is_err());
    }

    #[test]
    fn trailer_is_bounded() {
        let mut input = b"0\r\n".to_vec();
        for _ in 0..MAX_TRAILER / 10 + 1 {
            input.extend_from_slice(b"X-A: 1234\r\n");
        }
        let mut d = ChunkedDecoder::new(100);
        assert_eq!(d.feed(&input, &mut Vec::new()), Err(ChunkedError::TooLarge));
    }
}
