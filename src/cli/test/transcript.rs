//! `tern test`'s dialogue: every line sent (`> `) and received (`< `), and
//! the connection events (`* `), printed as they happen, with secrets
//! masked and peer text escaped ([`crate::logsafe::LogSafe`]). It keeps
//! the facts of the connection itself ([`Seen`]: the port, whether the
//! server said anything, a TLS failure); what the replies meant (the
//! command the first refusal answered, STARTTLS offered) is the client
//! machine's, typed ([`crate::smtp::client::SessionFacts`]), not read back
//! from this text.
//!
//! To print, it follows the dialogue just enough to know which lines sent
//! are commands and which are the message: after a 354 to DATA up to the
//! dot, and the octets a `BDAT n` line announces. Replies come in order
//! (RFC 5321 §4.2, RFC 2920), so the reply that ends an AUTH exchange is
//! known. Masking: the argument of `AUTH` after the mechanism (an initial
//! response) and every line sent while the AUTH exchange runs (the 334
//! continuations: user, password, tokens) print as `<credentials hidden>`.

use std::collections::VecDeque;
use std::io::Write;

use crate::logsafe::LogSafe;
use crate::tls::TlsProblem;

/// Longest partial line kept before it is printed anyway.
const MAX_PARTIAL_LINE: usize = 4096;
pub const HIDDEN: &str = "<credentials hidden>";

/// What the connection itself showed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub port: Option<u16>,
    /// Any byte came from the server.
    pub heard: bool,
    pub tls: Option<TlsProblem>,
}

/// What a line sent asks the printer to remember until its reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sent {
    Auth,
    Data,
    Other,
}

/// The printer and its state.
pub struct Transcript<W: Write> {
    out: W,
    pub seen: Seen,
    /// Commands sent whose replies are due, oldest first.
    pending: VecDeque<Sent>,
    sent_partial: Vec<u8>,
    received_partial: Vec<u8>,
    /// Inside the AUTH exchange: lines sent are secrets.
    in_auth: bool,
    /// Between 354 and the final dot: lines sent are the message.
    in_body: bool,
    /// Octets of a BDAT chunk still to come (message, not commands).
    chunk_left: u64,
    /// The chunk's current partial line.
    chunk_partial: Vec<u8>,
}

impl<W: Write> Transcript<W> {
    pub fn new(out: W) -> Transcript<W> {
        Transcript {
            out,
            seen: Seen::default(),
            pending: VecDeque::new(),
            sent_partial: Vec::new(),
            received_partial: Vec::new(),
            in_auth: false,
            in_body: false,
            chunk_left: 0,
            chunk_partial: Vec::new(),
        }
    }

    /// An event line (`* ...`); `text` is tern's own words.
    pub fn event(&mut self, text: &str) {
        let _ = writeln!(self.out, "* {}", LogSafe(text));
        let _ = self.out.flush();
    }

    /// A new connection to `port`: the server's greeting is due.
    pub fn connected(&mut self, port: u16) {
        self.seen = Seen {
            port: Some(port),
            ..Seen::default()
        };
        self.pending = VecDeque::from([Sent::Other]);
        self.sent_partial.clear();
        self.received_partial.clear();
        self.chunk_partial.clear();
        self.chunk_left = 0;
        self.in_auth = false;
        self.in_body = false;
    }

    pub fn tls_failed(&mut self, problem: Option<TlsProblem>) {
        self.seen.tls = problem;
    }

    /// Bytes the client sent (plaintext SMTP).
    pub fn sent(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.chunk_left > 0 {
                let n =
                    usize::try_from(self.chunk_left).map_or(bytes.len(), |n| n.min(bytes.len()));
                let Some((chunk, rest)) = bytes.split_at_checked(n) else {
                    return;
                };
                self.chunk_left -= n as u64;
                for line in split_lines(&mut self.chunk_partial, chunk) {
                    self.print_sent(&line);
                }
                if self.chunk_left == 0 && !self.chunk_partial.is_empty() {
                    let line = std::mem::take(&mut self.chunk_partial);
                    self.print_sent(&line);
                }
                bytes = rest;
                continue;
            }
            // Up to the end of one line: it may announce a chunk.
            let end = bytes
                .iter()
                .position(|b| *b == b'\n')
                .map_or(bytes.len(), |i| i + 1);
            let Some((head, rest)) = bytes.split_at_checked(end) else {
                return;
            };
            for line in split_lines(&mut self.sent_partial, head) {
                self.sent_line(&line);
            }
            bytes = rest;
        }
    }

    /// Bytes the server sent (after TLS).
    pub fn received(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.seen.heard = true;
        }
        for line in split_lines(&mut self.received_partial, bytes) {
            self.received_line(&line);
        }
    }

    fn sent_line(&mut self, line: &[u8]) {
        if self.in_body {
            if line == b"." {
                self.in_body = false;
                self.pending.push_back(Sent::Other);
            }
            self.print_sent(line);
            return;
        }
        if self.in_auth {
            self.pending.push_back(Sent::Auth);
            self.print_sent(HIDDEN.as_bytes());
            return;
        }
        let verb = verb_of(line);
        if verb.eq_ignore_ascii_case(b"AUTH") {
            self.pending.push_back(Sent::Auth);
            self.in_auth = true;
            self.print_sent(&mask_auth(line));
            return;
        }
        if verb.eq_ignore_ascii_case(b"DATA") {
            self.pending.push_back(Sent::Data);
        } else {
            self.pending.push_back(Sent::Other);
            if verb.eq_ignore_ascii_case(b"BDAT") {
                self.chunk_left = chunk_size(line);
            }
        }
        self.print_sent(line);
    }

    fn received_line(&mut self, line: &[u8]) {
        let _ = writeln!(self.out, "< {}", LogSafe(line));
        let _ = self.out.flush();
        if line.get(3) == Some(&b'-') {
            return;
        }
        let code = line.get(..3).and_then(|c| std::str::from_utf8(c).ok());
        let code: Option<u16> = code.and_then(|c| c.parse().ok());
        match (self.pending.pop_front(), code) {
            (Some(Sent::Auth), Some(c)) if c != 334 => self.in_auth = false,
            (Some(Sent::Data), Some(354)) => self.in_body = true,
            _ => {}
        }
    }

    fn print_sent(&mut self, line: &[u8]) {
        let _ = writeln!(self.out, "> {}", LogSafe(line));
        let _ = self.out.flush();
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// Complete lines (without CRLF) from `partial` + `bytes`; the rest stays
/// in `partial` (a line over [`MAX_PARTIAL_LINE`] is cut).
fn split_lines(partial: &mut Vec<u8>, bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    for &b in bytes {
        if b == b'\n' {
            let mut line = std::mem::take(partial);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            lines.push(line);
        } else {
            partial.push(b);
            if partial.len() >= MAX_PARTIAL_LINE {
                lines.push(std::mem::take(partial));
            }
        }
    }
    lines
}

/// A command line's first word.
fn verb_of(line: &[u8]) -> &[u8] {
    line.split(|b| *b == b' ').next().unwrap_or_default()
}

/// The octet count of tern's own `BDAT n [LAST]` line (0 if unreadable:
/// what follows is then printed as lines, as it is).
fn chunk_size(line: &[u8]) -> u64 {
    line.split(|b| *b == b' ')
        .nth(1)
        .and_then(|n| std::str::from_utf8(n).ok())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// `AUTH MECH [initial-response]` with the response hidden.
fn mask_auth(line: &[u8]) -> Vec<u8> {
    let mut words = line.splitn(3, |b| *b == b' ');
    let mut out = words.next().unwrap_or_default().to_vec();
    if let Some(mech) = words.next() {
        out.push(b' ');
        out.extend_from_slice(mech);
    }
    if words.next().is_some() {
        out.push(b' ');
        out.extend_from_slice(HIDDEN.as_bytes());
    }
    out
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)]
mod tests {
    use super::*;

    fn text(t: Transcript<Vec<u8>>) -> String {
        String::from_utf8(t.into_inner()).unwrap()
    }

    #[test]
    fn auth_plain_and_login_are_masked() {
        let mut t = Transcript::new(Vec::new());
        t.connected(587);
        t.received(b"220 hi\r\n");
        t.sent(b"EHLO router.example\r\n");
        t.received(b"250-hi\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n");
        t.sent(b"AUTH PLAIN AHVzZXIAczNjcmV0\r\n");
        t.received(b"535 5.7.8 no\r\n");
        t.sent(b"AUTH LOGIN\r\n");
        t.received(b"334 VXNlcm5hbWU6\r\n");
        t.sent(b"dXNlcg==\r\n");
        t.received(b"334 UGFzc3dvcmQ6\r\n");
        t.sent(b"czNjcmV0\r\n");
        t.received(b"235 2.7.0 ok\r\n");
        t.sent(b"AUTH XOAUTH2 dXNlcj11AWF1dGg9QmVhcmVyIHRvawEB\r\n");
        t.received(b"334 eyJzdGF0dXMiOiI0MDEifQ==\r\n");
        t.sent(b"\r\n");
        t.received(b"535 5.7.8 no\r\n");
        t.sent(b"MAIL FROM:<a@b>\r\n");
        let seen = t.seen.clone();
        let out = text(t);
        for secret in ["AHVzZXIAczNjcmV0", "dXNlcg==", "czNjcmV0", "dXNlcj11"] {
            assert!(!out.contains(secret), "{out}");
        }
        assert!(out.contains("> AUTH PLAIN <credentials hidden>\n"), "{out}");
        assert!(out.contains("> AUTH LOGIN\n"), "{out}");
        assert_eq!(out.matches("> <credentials hidden>\n").count(), 3, "{out}");
        assert!(
            out.contains("> AUTH XOAUTH2 <credentials hidden>\n"),
            "{out}"
        );
        assert!(out.contains("> MAIL FROM:<a@b>\n"), "{out}");
        assert!(seen.heard);
    }

    #[test]
    fn pipelined_replies_are_matched_in_order_and_the_body_is_not_commands() {
        let mut t = Transcript::new(Vec::new());
        t.connected(25);
        t.received(b"220 hi\r\n");
        t.sent(b"EHLO r\r\n");
        t.received(b"250 hi\r\n");
        t.sent(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n");
        t.received(b"250 ok\r\n550 5.1.1 no\r\n");
        t.received(b"354 go\r\n");
        t.sent(b"AUTH PLAIN in the body\r\nx\r\n.\r\n");
        t.received(b"250 queued\r\n");
        t.sent(b"AUTH LOGIN\r\n");
        let out = text(t);
        assert!(out.contains("> AUTH PLAIN in the body\n"), "{out}");
        // The body did not start an AUTH exchange: the next AUTH prints.
        assert!(out.contains("> AUTH LOGIN\n"), "{out}");
    }

    #[test]
    fn bdat_chunks_are_message_not_commands() {
        let mut t = Transcript::new(Vec::new());
        t.connected(25);
        t.received(b"220 hi\r\n");
        t.sent(b"EHLO r\r\n");
        t.received(b"250-hi\r\n250 CHUNKING\r\n");
        // A chunk whose lines look like commands, split across writes,
        // then a command after it in the same write.
        t.sent(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 35 LAST\r\nAUTH PLAIN x\r\n");
        t.sent(b"RCPT TO:<e@f>\r\nno end");
        t.sent(b"QUIT\r\n");
        t.received(b"250 ok\r\n250 ok\r\n554 5.7.1 spam\r\n221 bye\r\n");
        t.sent(b"AUTH PLAIN c2VjcmV0\r\n");
        let out = text(t);
        assert!(out.contains("> AUTH PLAIN x\n"), "{out}");
        assert!(out.contains("> RCPT TO:<e@f>\n"), "{out}");
        assert!(out.contains("> no end\n> QUIT\n"), "{out}");
        // Replies stayed in step: the real AUTH after them is masked.
        assert!(out.contains("> AUTH PLAIN <credentials hidden>\n"), "{out}");
        assert!(!out.contains("c2VjcmV0"), "{out}");
    }

    #[test]
    fn peer_text_is_escaped() {
        let mut t = Transcript::new(Vec::new());
        t.connected(25);
        t.received(b"220 \x1b[31mred\x07\r\n");
        let out = text(t);
        assert_eq!(out, "< 220 \\x1b[31mred\\x07\n");
    }

    #[test]
    fn silence_is_not_heard() {
        let mut t = Transcript::new(Vec::new());
        t.connected(465);
        assert!(!t.seen.heard);
    }
}
