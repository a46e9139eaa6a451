//! The DATA decoder: a byte state machine from the wire to the stored form.
//!
//! RFC 5321 §4.1.1.4 and §4.5.2 (transparency): the message ends at
//! `CRLF . CRLF`; a leading dot on any other line is removed. The stored form
//! has CRLF line endings everywhere.
//!
//! SMTP smuggling defence: only a *real* CRLF ends a line that may start the
//! end-of-data sequence, and only a real CRLF may end it. A bare LF or bare
//! CR is stored as a line break (CRLF) but is never part of an end-of-data
//! sequence, so `\n.\n`, `\r\n.\n`, `\n.\r\n` and `\r.\r` are ordinary
//! content. Because everything is stored as CRLF lines and the outbound client
//! dot-stuffs every line, such content cannot end a message downstream either.
//!
//! BDAT chunks (RFC 3030) go through the same decoder in *chunked* mode
//! ([`DataDecoder::chunked`]): the octet count delimits the message, so a
//! leading dot is content and nothing ends the data but [`DataDecoder::finish`]
//! after `BDAT n LAST`. Line ends are normalized exactly as for DATA (bare
//! LF or CR stored as CRLF) and an unterminated last line gets its CRLF, so a
//! spool file looks the same however the message came in.
//!
//! Limits are enforced while streaming, never by buffering: octets past
//! `max_size` are counted but not emitted, lines over [`MAX_LINE`] are noted;
//! either turns the final reply into an error once the end is seen. A small
//! header scanner counts `Received:` fields (hop limit) and notes 8-bit data.

/// RFC 5321 §4.5.3.1.6: 1000 octets including the CRLF.
pub const MAX_LINE: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At the start of a line; `real` says the previous line ended in CRLF.
    LineStart {
        real: bool,
    },
    /// A '.' at the start of a line.
    Dot {
        real: bool,
    },
    /// ".\r" at the start of a line.
    DotCr {
        real: bool,
    },
    /// Inside a line.
    Mid,
    /// A CR inside a line (or an empty line), waiting to see if LF follows.
    MidCr,
    Done,
}

/// What the decoder learned about the message, read at the end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataSummary {
    /// Octets of the stored form (after unstuffing, bare line ends as CRLF).
    pub size: u64,
    pub oversize: bool,
    pub line_too_long: bool,
    pub received_headers: usize,
    pub eight_bit: bool,
    /// Header names seen, for the fix-ups of submission (lower-case).
    pub has_date: bool,
    pub has_message_id: bool,
    pub has_from: bool,
}

#[derive(Debug)]
pub struct DataDecoder {
    state: State,
    max_size: u64,
    line_len: usize,
    in_headers: bool,
    /// The first octets of the current header line, to recognise names.
    head: [u8; 12],
    head_len: usize,
    summary: DataSummary,
    /// BDAT: no dot-unstuffing, no end-of-data sequence.
    chunked: bool,
}

impl DataDecoder {
    pub fn new(max_size: u64) -> DataDecoder {
        DataDecoder {
            state: State::LineStart { real: true },
            max_size,
            line_len: 0,
            in_headers: true,
            head: [0; 12],
            head_len: 0,
            summary: DataSummary::default(),
            chunked: false,
        }
    }

    /// A decoder for BDAT chunks: octets are taken as they are (line ends
    /// normalized), and only [`DataDecoder::finish`] ends the message.
    pub fn chunked(max_size: u64) -> DataDecoder {
        DataDecoder {
            chunked: true,
            ..DataDecoder::new(max_size)
        }
    }

    /// Ends a chunked message (`BDAT n LAST`): a pending CR or an
    /// unterminated last line is closed with CRLF, as DATA would store it.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        match self.state {
            State::Mid | State::MidCr | State::Dot { .. } | State::DotCr { .. } => {
                self.line_end(true, out);
            }
            State::LineStart { .. } | State::Done => {}
        }
        self.state = State::Done;
    }

    /// Still inside the header section (no empty line seen yet).
    pub fn in_headers(&self) -> bool {
        self.in_headers
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    pub fn summary(&self) -> &DataSummary {
        &self.summary
    }

    /// Decodes `input` into `out` and returns how many input octets were
    /// consumed: all of them, or up to and including the end-of-data
    /// sequence (the rest belongs to the next command).
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> usize {
        let mut rest = input;
        while let Some((&b, after)) = rest.split_first() {
            if self.state == State::Done {
                break;
            }
            // An ordinary octet starting a line starts its run (below).
            if matches!(self.state, State::LineStart { .. }) && !matches!(b, b'.' | b'\r' | b'\n') {
                self.state = State::Mid;
            }
            // Fast path: copy the run of ordinary octets inside a line.
            if self.state == State::Mid {
                let run = super::scan::position2(rest, b'\r', b'\n').unwrap_or(rest.len());
                if let Some((line, after)) = rest.split_at_checked(run).filter(|_| run > 0) {
                    self.content(line, out);
                    rest = after;
                    continue;
                }
            }
            self.step(b, out);
            rest = after;
        }
        input.len() - rest.len()
    }

    fn step(&mut self, b: u8, out: &mut Vec<u8>) {
        self.state = match (self.state, b) {
            (State::LineStart { real }, b'.') if !self.chunked => {
                self.line_len += 1;
                State::Dot { real }
            }
            (State::LineStart { .. }, b'\r') => State::MidCr,
            (State::LineStart { .. }, b'\n') => self.line_end(false, out),
            (State::LineStart { .. }, _) => {
                self.content(&[b], out);
                State::Mid
            }
            (State::Dot { real }, b'\r') => State::DotCr { real },
            (State::Dot { .. }, b'\n') => self.line_end(false, out),
            (State::Dot { .. }, _) => {
                self.content(&[b], out);
                State::Mid
            }
            (State::DotCr { real: true }, b'\n') => {
                self.line_len = 0;
                State::Done
            }
            (State::DotCr { real: false }, b'\n') => self.line_end(true, out),
            (State::DotCr { .. }, _) => {
                // ".\r" then something else: the CR is bare.
                let next = self.line_end(false, out);
                self.state = next;
                self.step(b, out);
                return;
            }
            (State::Mid, b'\r') => State::MidCr,
            (State::Mid, b'\n') => self.line_end(false, out),
            (State::Mid, _) => {
                self.content(&[b], out);
                State::Mid
            }
            (State::MidCr, b'\n') => self.line_end(true, out),
            (State::MidCr, _) => {
                let next = self.line_end(false, out);
                self.state = next;
                self.step(b, out);
                return;
            }
            (State::Done, _) => State::Done,
        };
    }

    fn content(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        self.line_len += bytes.len();
        if self.line_len + 2 > MAX_LINE {
            self.summary.line_too_long = true;
        }
        if !self.summary.eight_bit && super::scan::has_high_bit(bytes) {
            self.summary.eight_bit = true;
        }
        if self.in_headers {
            let free = self.head.get_mut(self.head_len..).unwrap_or_default();
            let n = bytes.len().min(free.len());
            if let (Some(to), Some(from)) = (free.get_mut(..n), bytes.get(..n)) {
                to.copy_from_slice(from);
                self.head_len += n;
            }
        }
        self.emit(bytes, out);
    }

    fn line_end(&mut self, real: bool, out: &mut Vec<u8>) -> State {
        if self.in_headers {
            if self.head_len == 0 {
                self.in_headers = false;
            } else {
                self.scan_header();
            }
        }
        self.head_len = 0;
        self.line_len = 0;
        self.emit(b"\r\n", out);
        State::LineStart { real }
    }

    fn scan_header(&mut self) {
        let head = self.head.get(..self.head_len).unwrap_or_default();
        let starts = |name: &[u8]| {
            head.get(..name.len())
                .is_some_and(|h| h.eq_ignore_ascii_case(name))
        };
        if starts(b"received:") {
            self.summary.received_headers += 1;
        } else if starts(b"date:") {
            self.summary.has_date = true;
        } else if starts(b"message-id:") {
            self.summary.has_message_id = true;
        } else if starts(b"from:") {
            self.summary.has_from = true;
        } else if !matches!(head.first(), None | Some(b' ' | b'\t'))
            && !head.contains(&b':')
            && self.head_len < self.head.len()
        {
            // Not a header field: the body started without an empty line.
            self.in_headers = false;
        }
    }

    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        let room = self.max_size.saturating_sub(self.summary.size);
        let take = (bytes.len() as u64).min(room) as usize;
        out.extend_from_slice(bytes.get(..take).unwrap_or(bytes));
        if take < bytes.len() {
            self.summary.oversize = true;
        }
        self.summary.size += bytes.len() as u64;
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)] // tests index fixed data
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> (Vec<u8>, usize, bool) {
        let mut d = DataDecoder::new(1 << 20);
        let mut out = Vec::new();
        let n = d.decode(input, &mut out);
        (out, n, d.is_done())
    }

    /// Feeds the input split at every byte boundary and checks the result
    /// does not depend on the split.
    fn decode_split(input: &[u8]) -> (Vec<u8>, usize, bool) {
        let whole = decode_all(input);
        for cut in 0..=input.len() {
            let mut d = DataDecoder::new(1 << 20);
            let mut out = Vec::new();
            let mut n = d.decode(&input[..cut], &mut out);
            if !d.is_done() {
                n += d.decode(&input[cut..], &mut out);
            }
            assert_eq!((out, n, d.is_done()), whole, "cut at {cut}");
        }
        whole
    }

    #[test]
    fn simple_message_and_rest() {
        let (out, n, done) = decode_split(b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n");
        assert!(done);
        assert_eq!(out, b"Subject: x\r\n\r\nhello\r\n");
        assert_eq!(n, 24);
    }

    #[test]
    fn empty_message() {
        let (out, n, done) = decode_split(b".\r\n");
        assert!(done);
        assert_eq!(out, b"");
        assert_eq!(n, 3);
    }

    #[test]
    fn dot_unstuffing() {
        let (out, _, done) = decode_split(b"..leading\r\n...\r\n.x\r\n.\r\n");
        assert!(done);
        assert_eq!(out, b".leading\r\n..\r\nx\r\n");
    }

    #[test]
    fn smuggling_sequences_do_not_end_data() {
        for seq in [
            &b"\n.\n"[..],
            b"\r\n.\n",
            b"\n.\r\n",
            b"\r.\r",
            b"\r.\r\n",
            b"\r\n.\r",
        ] {
            let mut input = b"a".to_vec();
            input.extend_from_slice(seq);
            input.extend_from_slice(b"MAIL FROM:<evil@x>\r\n");
            let (out, n, done) = decode_split(&input);
            assert!(!done, "{seq:?} ended data");
            assert_eq!(n, input.len());
            assert!(out.ends_with(b"MAIL FROM:<evil@x>\r\n"));
            // Every line break is stored as CRLF.
            assert!(
                !out.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'),
                "{out:?}"
            );
            assert!(
                !out.windows(2).any(|w| w[0] == b'\r' && w[1] != b'\n'),
                "{out:?}"
            );
        }
    }

    #[test]
    fn bare_line_ends_become_crlf() {
        let (out, _, done) = decode_split(b"a\nb\rc\r\n.\r\n");
        assert!(done);
        assert_eq!(out, b"a\r\nb\r\nc\r\n");
    }

    #[test]
    fn real_end_after_bare_lf_line() {
        // A bare LF line, then a proper CRLF line, then the real end.
        let (out, _, done) = decode_split(b"a\nb\r\n.\r\n");
        assert!(done);
        assert_eq!(out, b"a\r\nb\r\n");
    }

    #[test]
    fn size_limit_streams_and_flags() {
        let mut d = DataDecoder::new(10);
        let mut out = Vec::new();
        d.decode(b"0123456789abcdef\r\n.\r\n", &mut out);
        assert!(d.is_done());
        assert_eq!(out, b"0123456789");
        assert!(d.summary().oversize);
        assert_eq!(d.summary().size, 18);
    }

    #[test]
    fn line_length_limit() {
        let mut ok = vec![b'a'; 998];
        ok.extend_from_slice(b"\r\n.\r\n");
        let mut d = DataDecoder::new(1 << 20);
        d.decode(&ok, &mut Vec::new());
        assert!(!d.summary().line_too_long);
        let mut long = vec![b'a'; 999];
        long.extend_from_slice(b"\r\n.\r\n");
        let mut d = DataDecoder::new(1 << 20);
        d.decode(&long, &mut Vec::new());
        assert!(d.summary().line_too_long);
        assert!(d.is_done());
    }

    #[test]
    fn chunked_mode_takes_dots_as_content_and_ends_only_at_finish() {
        let mut d = DataDecoder::chunked(1 << 20);
        let mut out = Vec::new();
        let input = b"..a\r\n.\r\nb\nc";
        assert_eq!(d.decode(input, &mut out), input.len());
        assert!(!d.is_done());
        d.finish(&mut out);
        assert!(d.is_done());
        assert_eq!(out, b"..a\r\n.\r\nb\r\nc\r\n");
        let mut d = DataDecoder::chunked(1 << 20);
        let mut out = Vec::new();
        d.decode(b"x\r", &mut out);
        d.finish(&mut out);
        assert_eq!(out, b"x\r\n");
    }

    #[test]
    fn header_scanner() {
        let msg = b"Received: a\r\nreceived: b\r\n c\r\nDate: x\r\nMessage-ID: <1@x>\r\n\r\nReceived: body\r\n\xe9\r\n.\r\n";
        let mut d = DataDecoder::new(1 << 20);
        d.decode(msg, &mut Vec::new());
        let s = d.summary();
        assert_eq!(s.received_headers, 2);
        assert!(s.has_date && s.has_message_id && !s.has_from);
        assert!(s.eight_bit);
    }
}
