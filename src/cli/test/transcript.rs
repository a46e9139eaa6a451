//! `tern test`'s dialogue: every line sent (`> `) and received (`< `), and
//! the connection events (`* `), printed as they happen, with secrets
//! masked and peer text escaped ([`crate::logsafe::LogSafe`]). While
//! printing it keeps what the diagnosis needs ([`Seen`]): which command
//! each reply answered (replies come in order, RFC 5321 §4.2 and RFC 2920),
//! the first refusal, whether the server said anything, STARTTLS in EHLO.
//!
//! Masking: the argument of `AUTH` after the mechanism (an initial
//! response) and every line sent while the AUTH exchange runs (the 334
//! continuations: user, password, tokens) print as `<credentials hidden>`.

use std::collections::VecDeque;
use std::io::Write;

use super::diagnose::Stage;
use crate::logsafe::LogSafe;
use crate::tls::TlsProblem;

/// Longest partial line kept before it is printed anyway.
const MAX_PARTIAL_LINE: usize = 4096;
pub const HIDDEN: &str = "<credentials hidden>";

/// What the dialogue showed on the current connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub port: Option<u16>,
    /// Any byte came from the server.
    pub heard: bool,
    /// The command the first negative reply answered.
    pub refused_at: Option<Stage>,
    pub starttls_offered: Option<bool>,
    pub tls: Option<TlsProblem>,
}

/// The printer and its state.
pub struct Transcript<W: Write> {
    out: W,
    pub seen: Seen,
    /// Commands sent whose replies are due, oldest first.
    pending: VecDeque<Stage>,
    sent_partial: Vec<u8>,
    received_partial: Vec<u8>,
    /// Inside the AUTH exchange: lines sent are secrets.
    in_auth: bool,
    /// Between 354 and the final dot: lines sent are the message.
    in_body: bool,
    /// The EHLO reply being read lists STARTTLS.
    ehlo_starttls: bool,
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
            ehlo_starttls: false,
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
        self.pending = VecDeque::from([Stage::Greeting]);
        self.sent_partial.clear();
        self.received_partial.clear();
        self.in_auth = false;
        self.in_body = false;
    }

    pub fn tls_failed(&mut self, problem: Option<TlsProblem>) {
        self.seen.tls = problem;
    }

    /// Bytes the client sent (plaintext SMTP).
    pub fn sent(&mut self, bytes: &[u8]) {
        for line in split_lines(&mut self.sent_partial, bytes) {
            self.sent_line(&line);
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
                self.pending.push_back(Stage::Dot);
            }
            self.print_sent(line);
            return;
        }
        if self.in_auth {
            self.pending.push_back(Stage::Auth);
            self.print_sent(HIDDEN.as_bytes());
            return;
        }
        let stage = stage_of(line);
        self.pending.push_back(stage);
        if stage == Stage::Auth {
            self.in_auth = true;
            self.print_sent(&mask_auth(line));
        } else {
            self.print_sent(line);
        }
    }

    fn received_line(&mut self, line: &[u8]) {
        let _ = writeln!(self.out, "< {}", LogSafe(line));
        let _ = self.out.flush();
        let code = line.get(..3).and_then(|c| std::str::from_utf8(c).ok());
        let code: Option<u16> = code.and_then(|c| c.parse().ok());
        let last = line.get(3) != Some(&b'-');
        let stage = self.pending.front().copied();
        if stage == Some(Stage::Ehlo) {
            let keyword = line.get(4..).unwrap_or_default();
            if keyword.eq_ignore_ascii_case(b"STARTTLS") {
                self.ehlo_starttls = true;
            }
        }
        if !last {
            return;
        }
        self.pending.pop_front();
        let Some(code) = code else {
            return;
        };
        match stage {
            Some(Stage::Ehlo) if code / 100 == 2 => {
                self.seen.starttls_offered = Some(self.ehlo_starttls);
                self.ehlo_starttls = false;
            }
            Some(Stage::Ehlo) => self.ehlo_starttls = false,
            Some(Stage::Auth) if code != 334 => self.in_auth = false,
            Some(Stage::Data) if code == 354 => self.in_body = true,
            _ => {}
        }
        if code >= 400 && self.seen.refused_at.is_none() && stage != Some(Stage::Other) {
            self.seen.refused_at = stage;
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

/// The stage a command line starts.
fn stage_of(line: &[u8]) -> Stage {
    let verb: Vec<u8> = line
        .iter()
        .take_while(|b| **b != b' ')
        .map(u8::to_ascii_uppercase)
        .collect();
    match verb.as_slice() {
        b"EHLO" | b"HELO" => Stage::Ehlo,
        b"STARTTLS" => Stage::StartTls,
        b"AUTH" => Stage::Auth,
        b"MAIL" => Stage::Mail,
        b"RCPT" => Stage::Rcpt,
        b"DATA" => Stage::Data,
        _ => Stage::Other,
    }
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
        assert_eq!(seen.refused_at, Some(Stage::Auth));
        assert_eq!(seen.starttls_offered, Some(true));
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
        let seen = t.seen.clone();
        let out = text(t);
        assert_eq!(seen.refused_at, Some(Stage::Rcpt));
        assert_eq!(seen.starttls_offered, Some(false));
        assert!(out.contains("> AUTH PLAIN in the body\n"), "{out}");
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
        assert_eq!(t.seen.refused_at, None);
    }
}
