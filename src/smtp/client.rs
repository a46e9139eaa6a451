//! The SMTP client session for outbound delivery, sans-IO.
//!
//! Rules: RFC 5321 §3–4 (replies, multi-line `250-`/`250 `), §4.5.3.2
//! (timeouts: `reply_timeout` for every reply but the last, `final_timeout`
//! after the body's dot), RFC 2920 PIPELINING (MAIL, every RCPT and DATA go
//! in one group when offered, else lock-step), RFC 1870 SIZE, RFC 6152
//! 8BITMIME, RFC 3207 STARTTLS, RFC 4954 AUTH (PLAIN, LOGIN).
//!
//! Bytes and `now` go in ([`ClientSession::handle_input`]), bytes to send
//! ([`ClientSession::poll_transmit`]), events and a deadline come out. The
//! body is pushed in by the driver with [`ClientSession::send_body`], which
//! takes nothing while the transmit buffer is over [`BODY_HIGH_WATER`], so the
//! body is never held whole.
//!
//! Outcomes are per recipient and three-valued: delivered, deferred, failed.
//! Anything that kills the session (421, timeout, lost connection, TLS or
//! AUTH trouble) defers every recipient not yet decided; a wrong password
//! defers, never bounces.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

/// Longest reply line accepted (RFC 5321 §4.5.3.1.5 says 512 with CRLF).
pub const MAX_REPLY_LINE: usize = 1024;
/// Most lines in one multi-line reply.
pub const MAX_REPLY_LINES: usize = 64;
/// The driver stops feeding the body while this much is unsent.
pub const BODY_HIGH_WATER: usize = 16 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    fn synthetic(code: u16, text: &str) -> Reply {
        Reply {
            code,
            lines: vec![text.to_string()],
        }
    }
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsPolicy {
    Never,
    IfOffered,
    Required,
}

#[derive(Clone, Debug)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub helo_name: String,
    pub tls: TlsPolicy,
    /// Implicit TLS is already on (port 465 style).
    pub tls_active: bool,
    pub credentials: Option<Credentials>,
    pub reply_timeout: Duration,
    pub final_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct Transaction {
    /// Without brackets; empty is the null sender.
    pub sender: String,
    pub recipients: Vec<String>,
    pub size: u64,
    pub eight_bit: bool,
    pub smtputf8: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RcptOutcome {
    Delivered(Reply),
    Deferred(Reply),
    Failed(Reply),
}

#[derive(Debug, PartialEq, Eq)]
pub enum ClientEvent {
    Ready,
    StartTls,
    WantBody,
    TransactionDone(Vec<RcptOutcome>),
    SessionFailed(RcptOutcome),
}

/// What the next reply answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    AuthPlain,
    /// Reply to `AUTH LOGIN`: 334 asks for the user name.
    AuthLoginStart,
    /// Reply to the user name: 334 asks for the password.
    AuthLoginUser,
    AuthDone,
    Mail,
    Rcpt(usize),
    Data,
    Dot,
    Rset,
    Quit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for replies in `expect`.
    Talking,
    /// Idle between transactions.
    Ready,
    /// TLS handshake by the driver.
    TlsHandshake,
    /// The driver feeds the body.
    Body,
    Closed,
}

pub struct ClientSession {
    cfg: ClientConfig,
    state: State,
    expect: VecDeque<Expect>,
    out: Vec<u8>,
    input: Vec<u8>,
    reply_lines: Vec<String>,
    events: VecDeque<ClientEvent>,
    deadline: Option<Instant>,
    tls_on: bool,
    extensions: Vec<String>,
    authenticated: bool,
    txn: Option<Transaction>,
    outcomes: Vec<Option<RcptOutcome>>,
    accepted: usize,
    mail_failed: Option<Reply>,
    at_line_start: bool,
    /// STARTTLS was refused (IfOffered): go on in plaintext.
    tls_declined: bool,
    /// DATA was accepted though no recipient was: the dot ends nothing.
    dot_is_discard: bool,
}

impl ClientSession {
    pub fn new(cfg: ClientConfig, now: Instant) -> ClientSession {
        ClientSession {
            tls_on: cfg.tls_active,
            deadline: Some(now + cfg.reply_timeout),
            cfg,
            state: State::Talking,
            expect: VecDeque::from([Expect::Greeting]),
            out: Vec::new(),
            input: Vec::new(),
            reply_lines: Vec::new(),
            events: VecDeque::new(),
            extensions: Vec::new(),
            authenticated: false,
            txn: None,
            outcomes: Vec::new(),
            accepted: 0,
            mail_failed: None,
            at_line_start: true,
            tls_declined: false,
            dot_is_discard: false,
        }
    }

    /// Whether the server announced `ext` (case-insensitive keyword).
    pub fn offers(&self, ext: &str) -> bool {
        self.extension(ext).is_some()
    }

    fn extension(&self, ext: &str) -> Option<&str> {
        self.extensions.iter().find_map(|l| {
            let mut it = l.splitn(2, ' ');
            let kw = it.next()?;
            kw.eq_ignore_ascii_case(ext)
                .then(|| it.next().unwrap_or(""))
        })
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    pub fn poll_transmit(&self) -> &[u8] {
        &self.out
    }

    pub fn consume_transmit(&mut self, n: usize) {
        self.out.drain(..n.min(self.out.len()));
    }

    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| now >= d) {
            self.fail_session(Reply::synthetic(
                451,
                "4.4.2 timeout waiting for the server",
            ));
        }
    }

    pub fn connection_lost(&mut self, _now: Instant) {
        if self.state != State::Closed {
            if self.expect.front() == Some(&Expect::Quit)
                || (self.state == State::Ready && self.txn.is_none())
            {
                self.close();
            } else {
                self.fail_session(Reply::synthetic(451, "4.4.2 connection lost"));
            }
        }
    }

    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        if self.state == State::Closed || self.state == State::TlsHandshake {
            return;
        }
        self.input.extend_from_slice(bytes);
        while let Some(pos) = self.input.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.input.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.reply_line(&line, now);
            if self.state == State::Closed || self.state == State::TlsHandshake {
                self.input.clear();
                return;
            }
        }
        if self.input.len() > MAX_REPLY_LINE {
            self.fail_session(Reply::synthetic(451, "4.5.0 reply line too long"));
        }
    }

    fn reply_line(&mut self, line: &[u8], now: Instant) {
        let text = String::from_utf8_lossy(line);
        let code = text
            .get(..3)
            .and_then(|c| c.parse::<u16>().ok())
            .filter(|c| (200..600).contains(c));
        let sep = line.get(3).copied();
        let (Some(code), true) = (code, matches!(sep, None | Some(b' ') | Some(b'-'))) else {
            return self.fail_session(Reply::synthetic(451, "4.5.0 malformed reply from server"));
        };
        if line.len() > MAX_REPLY_LINE || self.reply_lines.len() >= MAX_REPLY_LINES {
            return self.fail_session(Reply::synthetic(451, "4.5.0 reply too long"));
        }
        self.reply_lines
            .push(text.get(4..).unwrap_or("").to_string());
        if sep == Some(b'-') {
            return;
        }
        let reply = Reply {
            code,
            lines: std::mem::take(&mut self.reply_lines),
        };
        self.handle_reply(reply, now);
    }

    fn handle_reply(&mut self, reply: Reply, now: Instant) {
        let Some(expect) = self.expect.pop_front() else {
            return self.fail_session(Reply::synthetic(451, "4.5.0 unexpected reply from server"));
        };
        self.deadline = match self.expect.front() {
            Some(Expect::Dot) => Some(now + self.cfg.final_timeout),
            Some(_) => Some(now + self.cfg.reply_timeout),
            None => None,
        };
        if reply.code == 421 && expect != Expect::Quit {
            return self.fail_session(reply);
        }
        match expect {
            Expect::Greeting => {
                if reply.code == 220 {
                    self.send_ehlo(now);
                } else {
                    self.fail_session(reply);
                }
            }
            Expect::Ehlo => {
                if reply.is_positive() {
                    self.extensions = reply.lines.iter().skip(1).cloned().collect();
                    self.after_ehlo(now);
                } else {
                    self.command(format!("HELO {}", self.cfg.helo_name), Expect::Helo, now);
                }
            }
            Expect::Helo => {
                if reply.is_positive() {
                    self.extensions.clear();
                    self.after_ehlo(now);
                } else {
                    self.fail_session(reply);
                }
            }
            Expect::StartTls => {
                if reply.code == 220 {
                    self.state = State::TlsHandshake;
                    self.deadline = Some(now + self.cfg.reply_timeout);
                    self.input.clear();
                    self.events.push_back(ClientEvent::StartTls);
                } else if self.cfg.tls == TlsPolicy::Required {
                    self.fail_session(reply);
                } else {
                    self.tls_declined = true;
                    self.after_ehlo(now);
                }
            }
            Expect::AuthPlain | Expect::AuthDone => self.auth_result(reply, now),
            Expect::AuthLoginStart | Expect::AuthLoginUser if reply.code == 334 => {
                let c = self.cfg.credentials.clone().unwrap_or(Credentials {
                    user: String::new(),
                    password: String::new(),
                });
                if expect == Expect::AuthLoginStart {
                    self.command(b64(c.user.as_bytes()), Expect::AuthLoginUser, now);
                } else {
                    self.command(b64(c.password.as_bytes()), Expect::AuthDone, now);
                }
            }
            Expect::AuthLoginStart | Expect::AuthLoginUser => self.auth_result(reply, now),
            Expect::Mail => {
                if !reply.is_positive() {
                    self.mail_failed = Some(reply);
                }
                if !self.pipelining() {
                    if let Some(m) = self.mail_failed.clone() {
                        for slot in self.outcomes.iter_mut() {
                            *slot = Some(decide(m.clone()));
                        }
                        self.finish_transaction(None, now);
                    } else {
                        let r = self
                            .txn
                            .as_ref()
                            .and_then(|t| t.recipients.first().cloned())
                            .unwrap_or_default();
                        self.command(format!("RCPT TO:<{r}>"), Expect::Rcpt(0), now);
                    }
                }
            }
            Expect::Rcpt(i) => {
                let outcome = if let Some(m) = &self.mail_failed {
                    Some(decide(m.clone()))
                } else if reply.is_positive() {
                    self.accepted += 1;
                    None
                } else {
                    Some(decide(reply))
                };
                if let Some(slot) = self.outcomes.get_mut(i) {
                    *slot = outcome;
                }
                if !self.pipelining() {
                    self.next_lockstep(i, now);
                }
            }
            Expect::Data => {
                if reply.code == 354 && self.accepted > 0 && self.mail_failed.is_none() {
                    self.state = State::Body;
                    self.deadline = Some(now + self.cfg.reply_timeout);
                    self.at_line_start = true;
                    self.events.push_back(ClientEvent::WantBody);
                } else if reply.code == 354 {
                    // Pipelined DATA accepted although no recipient was:
                    // end the empty message at once (RFC 2920 §3.1).
                    self.command(".".into(), Expect::Dot, now);
                    self.dot_is_discard = true;
                } else {
                    self.finish_transaction(Some(reply), now);
                }
            }
            Expect::Dot => {
                if self.dot_is_discard {
                    self.dot_is_discard = false;
                    self.finish_transaction(None, now);
                } else {
                    self.finish_transaction(Some(reply), now);
                }
            }
            Expect::Rset => {}
            Expect::Quit => self.close(),
        }
    }

    fn pipelining(&self) -> bool {
        self.offers("PIPELINING")
    }

    fn send_ehlo(&mut self, now: Instant) {
        self.command(format!("EHLO {}", self.cfg.helo_name), Expect::Ehlo, now);
    }

    /// After EHLO/HELO: STARTTLS, then AUTH, then Ready.
    fn after_ehlo(&mut self, now: Instant) {
        if !self.tls_on && !self.tls_declined {
            match (self.cfg.tls, self.offers("STARTTLS")) {
                (TlsPolicy::Never, _) => {}
                (TlsPolicy::Required, false) => {
                    return self.fail_session(Reply::synthetic(
                        451,
                        "4.7.4 server does not offer STARTTLS, and TLS is required",
                    ));
                }
                (_, true) => return self.command("STARTTLS".into(), Expect::StartTls, now),
                (TlsPolicy::IfOffered, false) => {}
            }
        }
        if let (Some(c), false) = (self.cfg.credentials.clone(), self.authenticated) {
            if !self.tls_on && self.cfg.tls != TlsPolicy::Never {
                return self.fail_session(Reply::synthetic(
                    451,
                    "4.7.0 refusing to send credentials without TLS",
                ));
            }
            let mechs = self.extension("AUTH").unwrap_or("").to_ascii_uppercase();
            let mechs: Vec<&str> = mechs.split_whitespace().collect();
            if mechs.contains(&"PLAIN") {
                let token = b64(format!("\0{}\0{}", c.user, c.password).as_bytes());
                return self.command(format!("AUTH PLAIN {token}"), Expect::AuthPlain, now);
            }
            if mechs.contains(&"LOGIN") {
                return self.command("AUTH LOGIN".into(), Expect::AuthLoginStart, now);
            }
            return self.fail_session(Reply::synthetic(
                451,
                "4.7.0 server offers no AUTH mechanism we support (PLAIN, LOGIN)",
            ));
        }
        self.become_ready();
    }

    fn auth_result(&mut self, reply: Reply, now: Instant) {
        if reply.code == 235 {
            self.authenticated = true;
            self.after_ehlo(now);
        } else {
            // A wrong password defers: the administrator fixes it, mail waits.
            self.fail_session(Reply {
                code: if reply.code >= 500 { 451 } else { reply.code },
                lines: vec![format!("authentication failed: {reply}")],
            });
        }
    }

    fn become_ready(&mut self) {
        self.state = State::Ready;
        self.deadline = None;
        self.events.push_back(ClientEvent::Ready);
    }

    /// After the driver's TLS handshake: forget what was said in plaintext.
    pub fn tls_established(&mut self, now: Instant) {
        if self.state == State::TlsHandshake {
            self.tls_on = true;
            self.extensions.clear();
            self.input.clear();
            self.state = State::Talking;
            self.send_ehlo(now);
        }
    }

    pub fn start_transaction(&mut self, txn: Transaction, now: Instant) {
        if self.state != State::Ready {
            return;
        }
        let n = txn.recipients.len();
        if let Some(max) = self
            .extension("SIZE")
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            if max > 0 && txn.size > max {
                let r = Reply::synthetic(
                    552,
                    &format!(
                        "5.3.4 message size {} exceeds the server's limit {max}",
                        txn.size
                    ),
                );
                self.events.push_back(ClientEvent::TransactionDone(vec![
                    RcptOutcome::Failed(r);
                    n
                ]));
                return;
            }
        }
        if txn.smtputf8 && !self.offers("SMTPUTF8") {
            let r = Reply::synthetic(553, "5.6.7 the server does not support SMTPUTF8");
            self.events.push_back(ClientEvent::TransactionDone(vec![
                RcptOutcome::Failed(r);
                n
            ]));
            return;
        }
        let mut mail = format!("MAIL FROM:<{}>", txn.sender);
        if self.offers("SIZE") {
            mail.push_str(&format!(" SIZE={}", txn.size));
        }
        if txn.eight_bit && self.offers("8BITMIME") {
            mail.push_str(" BODY=8BITMIME");
        }
        if txn.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        self.outcomes = vec![None; n];
        self.accepted = 0;
        self.mail_failed = None;
        self.state = State::Talking;
        self.command(mail, Expect::Mail, now);
        if self.pipelining() {
            for (i, r) in txn.recipients.iter().enumerate() {
                self.command(format!("RCPT TO:<{r}>"), Expect::Rcpt(i), now);
            }
            self.command("DATA".into(), Expect::Data, now);
        }
        self.txn = Some(txn);
    }

    /// Lock-step: after RCPT `i`'s reply, the next RCPT or DATA (or RSET
    /// when nothing was accepted).
    fn next_lockstep(&mut self, i: usize, now: Instant) {
        let n = self.txn.as_ref().map_or(0, |t| t.recipients.len());
        if i + 1 < n {
            let r = self
                .txn
                .as_ref()
                .map(|t| t.recipients[i + 1].clone())
                .unwrap_or_default();
            self.command(format!("RCPT TO:<{r}>"), Expect::Rcpt(i + 1), now);
        } else if self.accepted > 0 {
            self.command("DATA".into(), Expect::Data, now);
        } else {
            self.finish_transaction(None, now);
        }
    }

    /// Feeds the stored message (CRLF lines, not dot-stuffed); returns how
    /// much was taken. Dot-stuffing happens here, across chunk boundaries.
    pub fn send_body(&mut self, chunk: &[u8]) -> usize {
        if self.state != State::Body || self.out.len() >= BODY_HIGH_WATER {
            return 0;
        }
        let room = BODY_HIGH_WATER - self.out.len();
        let take = chunk.len().min(room);
        for &b in &chunk[..take] {
            if self.at_line_start && b == b'.' {
                self.out.push(b'.');
            }
            self.out.push(b);
            self.at_line_start = b == b'\n';
        }
        take
    }

    pub fn finish_body(&mut self, now: Instant) {
        if self.state != State::Body {
            return;
        }
        if !self.at_line_start {
            self.out.extend_from_slice(b"\r\n");
        }
        self.state = State::Talking;
        self.command(".".into(), Expect::Dot, now);
    }

    fn finish_transaction(&mut self, final_reply: Option<Reply>, now: Instant) {
        let n = self.outcomes.len();
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let o = match (self.outcomes[i].take(), &final_reply) {
                (Some(o), _) => o,
                (None, Some(r)) if r.is_positive() => RcptOutcome::Delivered(r.clone()),
                (None, Some(r)) => decide(r.clone()),
                (None, None) => {
                    RcptOutcome::Deferred(Reply::synthetic(451, "4.5.0 transaction aborted"))
                }
            };
            out.push(o);
        }
        let pipelined_leftover = self
            .expect
            .iter()
            .any(|e| matches!(e, Expect::Rcpt(_) | Expect::Data));
        self.txn = None;
        self.events.push_back(ClientEvent::TransactionDone(out));
        if pipelined_leftover {
            // Replies still due for this transaction (e.g. DATA after a
            // failed MAIL): wait for them; they are ignored.
            return;
        }
        if final_reply.as_ref().is_some_and(|r| !r.is_positive()) || self.accepted == 0 {
            self.command("RSET".into(), Expect::Rset, now);
        }
        self.state = State::Ready;
        if self.expect.is_empty() {
            self.deadline = None;
        }
    }

    pub fn quit(&mut self) {
        if self.state == State::Closed || self.expect.contains(&Expect::Quit) {
            return;
        }
        self.state = State::Talking;
        self.out.extend_from_slice(b"QUIT\r\n");
        self.expect.push_back(Expect::Quit);
    }

    fn command(&mut self, line: String, expect: Expect, now: Instant) {
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
        self.expect.push_back(expect);
        if self.deadline.is_none() || self.expect.len() == 1 {
            let wait = if expect == Expect::Dot {
                self.cfg.final_timeout
            } else {
                self.cfg.reply_timeout
            };
            self.deadline = Some(now + wait);
        }
    }

    fn fail_session(&mut self, reply: Reply) {
        if self.state == State::Closed {
            return;
        }
        let outcome = if reply.is_permanent() && reply.code != 421 {
            RcptOutcome::Failed(reply)
        } else {
            RcptOutcome::Deferred(reply)
        };
        self.events.push_back(ClientEvent::SessionFailed(outcome));
        self.close();
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.expect.clear();
        self.deadline = None;
    }
}

fn decide(r: Reply) -> RcptOutcome {
    if r.is_permanent() {
        RcptOutcome::Failed(r)
    } else {
        RcptOutcome::Deferred(r)
    }
}

/// RFC 4648 base64 (AUTH needs only the encoder).
pub fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        s.push(T[(n >> 18) as usize & 63] as char);
        s.push(T[(n >> 12) as usize & 63] as char);
        s.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        s.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    s
}
