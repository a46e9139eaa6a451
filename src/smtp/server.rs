//! The SMTP server session, sans-IO (RFC 5321 §3, §4; RFC 1870 SIZE,
//! RFC 6152 8BITMIME, RFC 2920 PIPELINING, RFC 2034 ENHANCEDSTATUSCODES).
//!
//! Bytes and `now` go in through [`ServerSession::handle_input`]; reply bytes
//! ([`ServerSession::output`]), decoded message bytes ([`ServerSession::body`]),
//! events ([`ServerSession::poll_event`]) and the next deadline
//! ([`ServerSession::deadline`]) come out. The driver owns the socket and the
//! spool file; the session owns the protocol.
//!
//! The states are what the session waits for:
//!
//! | state        | waits for                                  | leaves on |
//! |--------------|--------------------------------------------|-----------|
//! | `Command`    | a command line                             | DATA, QUIT, too many errors, timeout |
//! | `SpoolOpen`  | the driver: `data_started` / `data_refused`| either call |
//! | `Data`       | message octets until `CRLF.CRLF`           | end of data (→ `Commit` or error reply) |
//! | `Discard`    | message octets, thrown away                | end of data (→ the stored error reply) |
//! | `Commit`     | the driver: `committed` after the group sync| that call |
//! | `TlsWait`    | the driver: `tls_started` after STARTTLS   | that call, timeout |
//! | `Auth`       | a SASL response line                       | credentials, cancel, a bad line |
//! | `AuthCheck`  | the driver: `auth_verdict` on the credentials | that call |
//! | `AuthDelay`  | time: a failed AUTH's reply is held back   | the deadline |
//! | `Closing`    | nothing: output is flushed, then closed    | [`CLOSE_LINGER`]: abandoned |
//!
//! Every state that waits on the peer has a deadline ([`ServerSession::deadline`]):
//! `server_timeout` from the last input, and for `TlsWait` from the STARTTLS
//! command, so the whole handshake must end within one `server_timeout` (a
//! client that says STARTTLS and then nothing held its slot forever).
//!
//! PIPELINING falls out of the design: commands are handled in order as
//! they arrive and replies are appended in order. Input stops being consumed
//! while the session waits for the driver or while unread replies exceed
//! [`OUTPUT_HIGH_WATER`], so a client that never reads cannot grow memory.
//!
//! STARTTLS (RFC 3207): after `220 Ready to start TLS` the session waits
//! (`TlsWait`) until the driver reports the handshake with `tls_started`;
//! bytes the client pipelined after the command are discarded by the driver
//! (the plaintext-injection attack) and the session is reset (EHLO again).
//! AUTH (RFC 4954, PLAIN and LOGIN) is offered only over TLS unless
//! `allow_plaintext_auth`; a failed attempt holds its 535 for a growing delay
//! (`AuthDelay`, a deadline, never a sleep) and too many close the session.
//! The password check (PBKDF2, milliseconds to tens of milliseconds on a
//! router) is not the session's: it emits [`Event::Authenticate`] and
//! waits (`AuthCheck`); the driver verifies between turns of its loop and
//! answers with [`ServerSession::auth_verdict`].
//!
//! Not supported: SMTPUTF8, DSN, CHUNKING.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::address::Address;
use super::command::{parse_command, Body, Command, MailParams};
use super::data::{DataDecoder, DataSummary, MAX_LINE};
use super::reply::{self, Reply};
use crate::delivery::{push_unique, Destination};

/// Unread replies beyond this stop the session from reading more commands.
pub const OUTPUT_HIGH_WATER: usize = 8 * 1024;

/// How long a closing session's last reply may take to drain before the
/// driver drops the connection anyway ([`ServerSession::is_abandoned`]): a
/// client that stops reading must not keep its slot.
pub const CLOSE_LINGER: Duration = Duration::from_secs(10);

/// What kind of listener accepted the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    /// Port 25 style: relay for trusted networks, local delivery for all.
    Relay,
    /// Port 587 style (RFC 6409): AUTH required before MAIL.
    Submission,
    /// Port 465 style (RFC 8314): submission inside implicit TLS.
    Smtps,
}

/// Per-process settings shared by all sessions.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub hostname: String,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_errors: usize,
    pub hop_limit: usize,
    pub timeout: Duration,
    /// STARTTLS can be offered (a certificate is loaded).
    pub tls_available: bool,
    /// AUTH can be offered (a users file is loaded).
    pub auth_available: bool,
    pub allow_plaintext_auth: bool,
}

/// Failed AUTH attempts before the session is closed.
pub const MAX_AUTH_FAILURES: u32 = 3;

#[derive(Debug, PartialEq, Eq)]
pub enum AuthVerdict {
    Ok,
    Bad,
    /// Too many recent failures from this client address.
    Blocked,
}

/// Credentials to verify ([`Event::Authenticate`]); the password is never
/// printed.
#[derive(PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Credentials {{ user: {:?}, password: <hidden> }}",
            self.user
        )
    }
}

/// Decisions the session cannot make alone (they depend on configuration
/// and local tables). Implemented by the daemon; tests use a small fake.
pub trait Policy {
    /// Decides where a recipient goes, or the reply refusing it.
    /// `relay_allowed`: the client may send to non-local domains. The
    /// session keeps the decision for the driver; it never looks inside.
    fn check_recipient(
        &self,
        rcpt: &Address,
        relay_allowed: bool,
    ) -> Result<Vec<Destination>, Reply>;
    /// Whether a new transaction may start (asked at MAIL), e.g. the
    /// spool's free space; `Err` is the reply refusing it.
    fn check_mail(&self) -> Result<(), Reply> {
        Ok(())
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// DATA was accepted: open a spool file, then call `data_started` or
    /// `data_refused`.
    DataStart,
    /// The message ended cleanly: make it durable, then call `committed`.
    Commit,
    /// The message in progress is refused or abandoned: discard its file.
    Abort,
    /// `220 Ready to start TLS` is in the output: write it, drop any input
    /// buffered after the command, run the handshake, call `tls_started`.
    StartTls,
    /// AUTH ended with these credentials: verify them (outside the
    /// session's input handling, it may be slow), then call `auth_verdict`.
    Authenticate(Credentials),
}

/// The transaction as it stands after RCPT, read by the driver at
/// `DataStart` to write the envelope.
#[derive(Clone, Debug, Default)]
pub struct Envelope {
    /// `None` is the null reverse-path `<>`.
    pub sender: Option<Address>,
    /// What the client gave, each once (counted against `max_recipients`).
    pub recipients: Vec<Address>,
    /// Where the message goes, as the policy decided at `RCPT`: each
    /// destination once, with the first recipient that led there.
    pub destinations: Vec<(Destination, String)>,
    pub eight_bit_declared: bool,
}

#[derive(Debug)]
enum State {
    Command,
    SpoolOpen,
    Data(DataDecoder),
    Discard(DataDecoder, Reply),
    Commit(DataSummary),
    TlsWait,
    Auth(Box<crate::auth::SaslServer>),
    /// Credentials are with the driver (`Event::Authenticate`).
    AuthCheck {
        user: String,
    },
    AuthDelay {
        until: Instant,
        reply: Reply,
        close: bool,
    },
    Closing,
}

pub struct ServerSession {
    cfg: SessionConfig,
    kind: ListenerKind,
    peer: IpAddr,
    relay_allowed: bool,
    state: State,
    helo: Option<String>,
    esmtp: bool,
    mail: Option<Envelope>,
    line: Vec<u8>,
    line_overflow: bool,
    out: Vec<u8>,
    body: Vec<u8>,
    events: VecDeque<Event>,
    errors: usize,
    deadline: Instant,
    /// "TLSv1.3 TLS13_AES_256_GCM_SHA384" once TLS is on.
    tls: Option<String>,
    auth_user: Option<String>,
    auth_failures: u32,
    /// Submission: the header section waits here until its end is seen.
    holding_headers: bool,
    held: Vec<u8>,
    /// (queue id, date) for the header fix-ups.
    fixup: Option<(String, String)>,
    /// Closing, and the output did not drain in time.
    abandoned: bool,
}

/// A submitted message's header section held for fix-ups at most; a longer
/// one is passed on unchanged.
pub const MAX_HELD_HEADER: usize = 64 * 1024;

impl ServerSession {
    /// A new session; the greeting is already in the output.
    pub fn new(
        cfg: SessionConfig,
        kind: ListenerKind,
        peer: IpAddr,
        relay_allowed: bool,
        now: Instant,
    ) -> ServerSession {
        let mut s = ServerSession {
            deadline: now + cfg.timeout,
            cfg,
            kind,
            peer,
            relay_allowed,
            state: State::Command,
            helo: None,
            esmtp: false,
            mail: None,
            line: Vec::with_capacity(128),
            line_overflow: false,
            out: Vec::new(),
            body: Vec::new(),
            events: VecDeque::new(),
            errors: 0,
            tls: None,
            auth_user: None,
            auth_failures: 0,
            holding_headers: false,
            held: Vec::new(),
            fixup: None,
            abandoned: false,
        };
        let greeting = reply::greeting(&s.cfg.hostname);
        s.reply(&greeting);
        s
    }

    /// A session refused at accept time (too many connections): it only
    /// says 421 and closes.
    pub fn refuse(cfg: SessionConfig, peer: IpAddr, why: Reply, now: Instant) -> ServerSession {
        let mut s = ServerSession::new(cfg, ListenerKind::Relay, peer, false, now);
        s.out.clear();
        // No EHLO yet, but SPEC (and Postfix) give the enhanced code here.
        why.write_to(&mut s.out, true);
        s.state = State::Closing;
        s.deadline = now + CLOSE_LINGER;
        s
    }

    // --- driver interface ---------------------------------------------------

    /// Consumes as much of `input` as the session can take now and returns
    /// the count; the driver keeps the rest for the next call.
    pub fn handle_input(&mut self, input: &[u8], now: Instant, policy: &dyn Policy) -> usize {
        let mut used = 0;
        while used < input.len() {
            match &mut self.state {
                State::Closing => return input.len(),
                State::SpoolOpen
                | State::Commit(_)
                | State::TlsWait
                | State::AuthCheck { .. }
                | State::AuthDelay { .. } => break,
                State::Auth(_) => {
                    if self.out.len() >= OUTPUT_HIGH_WATER {
                        break;
                    }
                    used += self.read_auth_line(input.get(used..).unwrap_or_default());
                }
                State::Data(dec) => {
                    let target = if self.holding_headers {
                        &mut self.held
                    } else {
                        &mut self.body
                    };
                    used += dec.decode(input.get(used..).unwrap_or_default(), target);
                    let done = dec.is_done();
                    let release = self.holding_headers
                        && (!dec.in_headers() || done || self.held.len() > MAX_HELD_HEADER);
                    let (date, mid) = (dec.summary().has_date, dec.summary().has_message_id);
                    if release {
                        self.release_headers(date, mid);
                    }
                    if done {
                        self.end_of_data();
                    }
                }
                State::Discard(dec, _) => {
                    used += dec.decode(input.get(used..).unwrap_or_default(), &mut self.body);
                    if dec.is_done() {
                        self.end_of_data();
                    }
                }
                State::Command => {
                    if self.out.len() >= OUTPUT_HIGH_WATER {
                        break;
                    }
                    used += self.read_line(input.get(used..).unwrap_or_default(), policy);
                }
            }
        }
        if used > 0 {
            self.deadline = now
                + if self.is_closing() {
                    CLOSE_LINGER
                } else {
                    self.cfg.timeout
                };
        }
        used
    }

    /// Reply bytes waiting to be written.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    pub fn consume_output(&mut self, n: usize) {
        self.out.drain(..n);
    }

    /// Decoded message bytes for the spool file (stored form, CRLF lines).
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    pub fn clear_body(&mut self) {
        self.body.clear();
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The transaction, valid between `DataStart` and `committed`.
    pub fn envelope(&self) -> Option<&Envelope> {
        self.mail.as_ref()
    }

    pub fn helo_name(&self) -> &str {
        self.helo.as_deref().unwrap_or("unknown")
    }

    pub fn peer(&self) -> IpAddr {
        self.peer
    }

    pub fn summary(&self) -> Option<&DataSummary> {
        match &self.state {
            State::Commit(s) => Some(s),
            _ => None,
        }
    }

    /// The spool file is open: send 354 and the `Received:` header first.
    pub fn data_started(&mut self, queue_id: &str, date: &str) {
        if !matches!(self.state, State::SpoolOpen) {
            return;
        }
        self.reply(&reply::START_DATA);
        let proto = match (self.esmtp, self.tls.is_some(), self.auth_user.is_some()) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        };
        let tls = match &self.tls {
            Some(t) => format!("\r\n\t(using {t})"),
            None => String::new(),
        };
        let for_clause = match self.mail.as_ref().map(|m| m.recipients.as_slice()) {
            Some([only]) => format!("\r\n\tfor <{only}>"),
            _ => String::new(),
        };
        let received = format!(
            "Received: from {} ([{}]){}\r\n\tby {} (tern) with {} id {}{}; {}\r\n",
            sanitize(self.helo_name()),
            self.peer,
            tls,
            self.cfg.hostname,
            proto,
            queue_id,
            for_clause,
            date
        );
        self.body.extend_from_slice(received.as_bytes());
        self.state = State::Data(DataDecoder::new(self.cfg.max_message_size));
        // Submission (RFC 6409 §8): add Date: and Message-ID: when missing,
        // so the header section is held (bounded) until its end is seen.
        self.holding_headers = self.kind != ListenerKind::Relay || self.auth_user.is_some();
        self.held.clear();
        self.fixup = Some((queue_id.to_string(), date.to_string()));
    }

    /// Ends header holding: adds the missing fields before the end of the
    /// header section and passes everything held on to the body.
    fn release_headers(&mut self, has_date: bool, has_message_id: bool) {
        self.holding_headers = false;
        let complete = self.held.len() <= MAX_HELD_HEADER;
        let mut add = String::new();
        if let (true, Some((id, date))) = (complete, &self.fixup) {
            if !has_date {
                add.push_str(&format!("Date: {date}\r\n"));
            }
            if !has_message_id {
                add.push_str(&format!("Message-ID: <{id}@{}>\r\n", self.cfg.hostname));
            }
        }
        let at = if self.held.starts_with(b"\r\n") {
            0
        } else {
            self.held
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(self.held.len(), |p| p + 2)
        };
        let (head, rest) = self.held.split_at_checked(at).unwrap_or((&self.held, &[]));
        self.body.extend_from_slice(head);
        self.body.extend_from_slice(add.as_bytes());
        self.body.extend_from_slice(rest);
        self.held.clear();
    }

    /// The spool could not take the message: refuse DATA.
    pub fn data_refused(&mut self, why: Reply) {
        if matches!(self.state, State::SpoolOpen) {
            self.reply(&why);
            self.mail = None;
            self.state = State::Command;
        }
    }

    /// Writing the body failed mid-stream (e.g. ENOSPC): swallow the rest of
    /// the message and answer `why` at its end.
    pub fn spool_failed(&mut self, why: Reply) {
        if let State::Data(_) = self.state {
            let State::Data(dec) = std::mem::replace(&mut self.state, State::Closing) else {
                return;
            };
            self.state = State::Discard(dec, why);
            self.body.clear();
            self.events.push_back(Event::Abort);
        }
    }

    /// The group commit finished: `Ok(id)` means durable.
    pub fn committed(&mut self, result: Result<&str, Reply>) {
        if let State::Commit(_) = self.state {
            match result {
                Ok(id) => self.reply(&reply::queued(id)),
                Err(why) => self.reply(&why),
            }
            self.mail = None;
            self.state = State::Command;
        }
    }

    /// The deadline for the client to say something, if one runs now.
    pub fn deadline(&self) -> Option<Instant> {
        match self.state {
            State::Command
            | State::Data(_)
            | State::Discard(..)
            | State::Auth(_)
            | State::TlsWait
            | State::Closing => Some(self.deadline),
            State::AuthDelay { until, .. } => Some(until),
            State::SpoolOpen | State::Commit(_) | State::AuthCheck { .. } => None,
        }
    }

    /// A closing session whose output could not drain within
    /// [`CLOSE_LINGER`]: the driver closes the connection without waiting.
    pub fn is_abandoned(&self) -> bool {
        self.abandoned
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let State::AuthDelay { until, .. } = self.state {
            if now >= until {
                if let State::AuthDelay { reply, close, .. } =
                    std::mem::replace(&mut self.state, State::Command)
                {
                    self.reply(&reply);
                    if close {
                        let r = reply::too_many_errors(&self.cfg.hostname);
                        self.close_with(&r);
                    }
                }
                self.deadline = now + self.cfg.timeout;
            }
            return;
        }
        if self.deadline().is_none_or(|d| now < d) {
            return;
        }
        match self.state {
            State::Closing => {
                self.out.clear();
                self.abandoned = true;
            }
            // Mid-handshake nothing can be said in plaintext any more.
            State::TlsWait => {
                self.out.clear();
                self.state = State::Closing;
                self.abandoned = true;
            }
            _ => {
                let r = reply::timeout(&self.cfg.hostname);
                self.close_with(&r);
                self.deadline = now + CLOSE_LINGER;
            }
        }
    }

    /// Graceful shutdown: 421 now unless a commit is in flight (that one
    /// completes first, and the session closes right after its reply).
    pub fn shutdown(&mut self) {
        match self.state {
            State::Commit(_) | State::Closing => {}
            _ => {
                let r = reply::shutting_down(&self.cfg.hostname);
                self.close_with(&r);
            }
        }
    }

    /// Nothing more will be read; close once the output is written.
    pub fn is_closing(&self) -> bool {
        matches!(self.state, State::Closing)
    }

    /// The peer went away: abandon any message in progress.
    pub fn connection_lost(&mut self) {
        if matches!(self.state, State::Data(_) | State::SpoolOpen) {
            self.events.push_back(Event::Abort);
        }
        self.state = State::Closing;
    }

    /// Waiting for the driver (spool open or commit), not for the client.
    pub fn is_waiting_for_driver(&self) -> bool {
        matches!(
            self.state,
            State::SpoolOpen | State::Commit(_) | State::TlsWait | State::AuthCheck { .. }
        )
    }

    /// Implicit TLS (smtps): the connection is encrypted from the start.
    pub fn set_implicit_tls(&mut self, description: String) {
        self.tls = Some(description);
    }

    /// The STARTTLS handshake finished: start over, as RFC 3207 §4.2 says.
    pub fn tls_started(&mut self, description: String, now: Instant) {
        if matches!(self.state, State::TlsWait) {
            self.tls = Some(description);
            self.helo = None;
            self.esmtp = false;
            self.mail = None;
            self.line.clear();
            self.state = State::Command;
            self.deadline = now + self.cfg.timeout;
        }
    }

    pub fn tls(&self) -> Option<&str> {
        self.tls.as_deref()
    }

    pub fn auth_user(&self) -> Option<&str> {
        self.auth_user.as_deref()
    }

    fn auth_offered(&self) -> bool {
        self.cfg.auth_available && (self.tls.is_some() || self.cfg.allow_plaintext_auth)
    }

    // --- command phase ------------------------------------------------------

    fn read_line(&mut self, input: &[u8], policy: &dyn Policy) -> usize {
        let (chunk, complete) = match input.iter().position(|&b| b == b'\n') {
            Some(i) => (input.get(..=i).unwrap_or(input), true),
            None => (input, false),
        };
        if !self.line_overflow {
            if self.line.len() + chunk.len() > MAX_LINE {
                self.line_overflow = true;
                self.line.clear();
            } else {
                self.line.extend_from_slice(chunk);
            }
        }
        if complete {
            if self.line_overflow {
                self.line_overflow = false;
                self.error(&reply::LINE_TOO_LONG);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.pop(); // LF
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.command(&line, policy);
                line.clear();
                self.line = line;
            }
        }
        chunk.len()
    }

    fn command(&mut self, line: &[u8], policy: &dyn Policy) {
        let cmd = match parse_command(line) {
            Ok(c) => c,
            Err(r) => return self.error(&r),
        };
        match cmd {
            Command::Helo(name) => {
                self.esmtp = false;
                self.greeted(name);
                let r = reply::helo_ok(&self.cfg.hostname);
                self.reply(&r);
            }
            Command::Ehlo(name) => {
                self.esmtp = true;
                self.greeted(name);
                let size = format!("SIZE {}", self.cfg.max_message_size);
                let mut lines = vec![
                    self.cfg.hostname.as_str(),
                    "PIPELINING",
                    size.as_str(),
                    "8BITMIME",
                    "ENHANCEDSTATUSCODES",
                ];
                if self.cfg.tls_available && self.tls.is_none() {
                    lines.push("STARTTLS");
                }
                if self.auth_offered() && self.auth_user.is_none() {
                    lines.push("AUTH PLAIN LOGIN");
                }
                reply::write_multiline(&mut self.out, 250, &lines);
            }
            Command::Mail(sender, params) => self.mail(sender, params, policy),
            Command::Rcpt(rcpt) => self.rcpt(rcpt, policy),
            Command::Data => self.data(),
            Command::Rset => {
                self.mail = None;
                self.reply(&reply::RESET_OK);
            }
            Command::Noop => self.reply(&reply::OK),
            Command::Vrfy => self.reply(&reply::VRFY_CANNOT),
            Command::Help => self.reply(&reply::HELP),
            Command::Quit => {
                let r = reply::bye(&self.cfg.hostname);
                self.reply(&r);
                self.state = State::Closing;
            }
            Command::StartTls => {
                if !self.cfg.tls_available {
                    self.error(&reply::NOT_IMPLEMENTED)
                } else if self.tls.is_some() {
                    self.error(&reply::TLS_ACTIVE)
                } else {
                    self.reply(&reply::READY_FOR_TLS);
                    self.state = State::TlsWait;
                    self.events.push_back(Event::StartTls);
                }
            }
            Command::Auth(args) => self.auth(&args),
        }
    }

    fn greeted(&mut self, name: String) {
        self.helo = Some(name);
        self.mail = None;
    }

    fn mail(&mut self, sender: Option<Address>, params: MailParams, policy: &dyn Policy) {
        if self.helo.is_none() {
            return self.error(&reply::NEED_HELO);
        }
        if self.mail.is_some() {
            return self.error(&reply::NESTED_MAIL);
        }
        if self.kind != ListenerKind::Relay && self.auth_user.is_none() {
            return self.error(&reply::AUTH_REQUIRED);
        }
        if params.size.is_some_and(|s| s > self.cfg.max_message_size) {
            return self.reply(&reply::MESSAGE_TOO_BIG);
        }
        if let Err(r) = policy.check_mail() {
            return self.reply(&r);
        }
        self.mail = Some(Envelope {
            sender,
            recipients: Vec::new(),
            destinations: Vec::new(),
            eight_bit_declared: params.body == Body::EightBitMime,
        });
        self.reply(&reply::SENDER_OK);
    }

    fn rcpt(&mut self, rcpt: Option<Address>, policy: &dyn Policy) {
        let Some(mail) = self.mail.as_ref() else {
            return self.error(&reply::NEED_MAIL);
        };
        if mail.recipients.len() >= self.cfg.max_recipients {
            return self.reply(&reply::TOO_MANY_RECIPIENTS);
        }
        let rcpt = rcpt.unwrap_or_else(|| Address {
            local: "postmaster".into(),
            domain: self.cfg.hostname.to_ascii_lowercase(),
        });
        match policy.check_recipient(&rcpt, self.relay_allowed || self.auth_user.is_some()) {
            Ok(destinations) => {
                if let Some(mail) = self.mail.as_mut() {
                    if !mail.recipients.contains(&rcpt) {
                        let original = rcpt.to_string();
                        for d in destinations {
                            push_unique(&mut mail.destinations, d, &original);
                        }
                        mail.recipients.push(rcpt);
                    }
                }
                self.reply(&reply::RECIPIENT_OK);
            }
            Err(r) => self.reply(&r),
        }
    }

    fn auth(&mut self, args: &str) {
        if !self.cfg.auth_available {
            return self.error(&reply::NOT_IMPLEMENTED);
        }
        if self.helo.is_none() {
            return self.error(&reply::NEED_HELO);
        }
        if self.auth_user.is_some() {
            return self.error(&reply::ALREADY_AUTHENTICATED);
        }
        if self.mail.is_some() {
            return self.error(&reply::AUTH_IN_TRANSACTION);
        }
        if !self.auth_offered() {
            return self.error(&reply::ENCRYPTION_REQUIRED);
        }
        match crate::auth::SaslServer::start(args) {
            Ok((sasl, step)) => {
                self.state = State::Auth(Box::new(sasl));
                self.auth_step(step);
            }
            Err(_) => self.error(&reply::AUTH_MECHANISM),
        }
    }

    fn read_auth_line(&mut self, input: &[u8]) -> usize {
        let (chunk, complete) = match input.iter().position(|&b| b == b'\n') {
            Some(i) => (input.get(..=i).unwrap_or(input), true),
            None => (input, false),
        };
        if self.line.len() + chunk.len() > crate::auth::MAX_SASL_LINE {
            self.line_overflow = true;
            self.line.clear();
        } else if !self.line_overflow {
            self.line.extend_from_slice(chunk);
        }
        if complete {
            let line = std::mem::take(&mut self.line);
            let overflow = std::mem::replace(&mut self.line_overflow, false);
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\r', '\n']);
            let step = match &mut self.state {
                State::Auth(_) if overflow => crate::auth::SaslStep::Failed("line too long"),
                State::Auth(sasl) => sasl.step(text),
                _ => return chunk.len(),
            };
            self.auth_step(step);
        }
        chunk.len()
    }

    fn auth_step(&mut self, step: crate::auth::SaslStep) {
        use crate::auth::SaslStep;
        match step {
            SaslStep::Challenge(c) => {
                self.out
                    .extend_from_slice(format!("334 {c}\r\n").as_bytes());
            }
            SaslStep::Done { user, password } => {
                self.state = State::AuthCheck { user: user.clone() };
                self.events
                    .push_back(Event::Authenticate(Credentials { user, password }));
            }
            SaslStep::Failed(why) => {
                log::debug!("auth: malformed exchange from {}: {why}", self.peer);
                self.state = State::Command;
                self.error(&reply::AUTH_SYNTAX);
            }
            SaslStep::Cancelled => {
                self.state = State::Command;
                self.reply(&reply::AUTH_CANCELLED);
            }
        }
    }

    /// The driver's answer to [`Event::Authenticate`].
    pub fn auth_verdict(&mut self, verdict: AuthVerdict, now: Instant) {
        let State::AuthCheck { user } = &mut self.state else {
            return;
        };
        let user = std::mem::take(user);
        self.deadline = now + self.cfg.timeout;
        match verdict {
            AuthVerdict::Ok => {
                log::info!("auth: {user} authenticated from {}", self.peer);
                self.state = State::Command;
                self.auth_user = Some(user);
                self.reply(&reply::AUTH_OK);
            }
            verdict => {
                self.auth_failures += 1;
                log::warn!(
                    "auth: failed for {user:?} from {} ({} on this connection)",
                    self.peer,
                    self.auth_failures
                );
                let reply = if verdict == AuthVerdict::Blocked {
                    reply::AUTH_BLOCKED
                } else {
                    reply::AUTH_FAILED
                };
                self.state = State::AuthDelay {
                    until: now + crate::auth::failure_delay(self.auth_failures),
                    reply,
                    close: self.auth_failures >= MAX_AUTH_FAILURES,
                };
            }
        }
    }

    fn data(&mut self) {
        match &self.mail {
            None => self.error(&reply::NEED_MAIL),
            Some(m) if m.recipients.is_empty() => self.error(&reply::NEED_RCPT),
            Some(_) => {
                self.state = State::SpoolOpen;
                self.events.push_back(Event::DataStart);
            }
        }
    }

    fn end_of_data(&mut self) {
        let state = std::mem::replace(&mut self.state, State::Command);
        match state {
            State::Data(dec) => {
                let s = dec.summary().clone();
                let refusal = if s.oversize {
                    Some(reply::MESSAGE_TOO_BIG)
                } else if s.line_too_long {
                    Some(reply::DATA_LINE_TOO_LONG)
                } else if s.received_headers > self.cfg.hop_limit {
                    Some(reply::TOO_MANY_HOPS)
                } else {
                    None
                };
                match refusal {
                    Some(r) => {
                        self.events.push_back(Event::Abort);
                        self.body.clear();
                        self.mail = None;
                        self.reply(&r);
                    }
                    None => {
                        self.state = State::Commit(s);
                        self.events.push_back(Event::Commit);
                    }
                }
            }
            State::Discard(_, why) => {
                self.mail = None;
                self.reply(&why);
            }
            other => self.state = other,
        }
    }

    // --- replies ------------------------------------------------------------

    fn reply(&mut self, r: &Reply) {
        r.write_to(&mut self.out, self.esmtp);
    }

    fn error(&mut self, r: &Reply) {
        self.reply(r);
        self.errors += 1;
        if self.errors >= self.cfg.max_errors {
            let r = reply::too_many_errors(&self.cfg.hostname);
            self.close_with(&r);
        }
    }

    fn close_with(&mut self, r: &Reply) {
        if matches!(
            self.state,
            State::Data(_) | State::Discard(..) | State::SpoolOpen
        ) {
            self.events.push_back(Event::Abort);
        }
        self.reply(r);
        self.state = State::Closing;
    }
}

/// HELO names go into a header: keep them to safe printable characters.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .take(255)
        .collect()
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)] // tests index fixed data
mod tests {
    use super::*;

    struct TestPolicy;
    impl Policy for TestPolicy {
        fn check_recipient(
            &self,
            rcpt: &Address,
            relay_allowed: bool,
        ) -> Result<Vec<Destination>, Reply> {
            if rcpt.domain.ends_with("local.test") {
                if rcpt.local == "nobody" {
                    Err(reply::USER_UNKNOWN)
                } else {
                    Ok(vec![Destination::Remote(rcpt.clone())])
                }
            } else if relay_allowed {
                Ok(vec![Destination::Remote(rcpt.clone())])
            } else {
                Err(reply::RELAY_DENIED)
            }
        }
    }

    /// The test driver's password check.
    fn test_verdict(c: &Credentials) -> AuthVerdict {
        if c.user == "joe" && c.password == "secret" {
            AuthVerdict::Ok
        } else {
            AuthVerdict::Bad
        }
    }

    fn cfg() -> SessionConfig {
        SessionConfig {
            hostname: "mx.local.test".into(),
            max_message_size: 2000,
            max_recipients: 3,
            max_errors: 6,
            hop_limit: 3,
            timeout: Duration::from_secs(300),
            tls_available: true,
            auth_available: true,
            allow_plaintext_auth: false,
        }
    }

    /// A test harness: the session plus a fake driver that "opens" a spool
    /// file, stores the body and commits at once.
    struct Harness {
        s: ServerSession,
        now: Instant,
        pending: Vec<u8>,
        stored: Vec<u8>,
        committed: Vec<Vec<u8>>,
        aborted: usize,
        fail_commit: bool,
    }

    impl Harness {
        fn new(relay: bool) -> Harness {
            let now = Instant::now();
            Harness {
                s: ServerSession::new(
                    cfg(),
                    ListenerKind::Relay,
                    "192.0.2.1".parse().unwrap(),
                    relay,
                    now,
                ),
                now,
                pending: Vec::new(),
                stored: Vec::new(),
                committed: Vec::new(),
                aborted: 0,
                fail_commit: false,
            }
        }

        fn send(&mut self, bytes: &[u8]) {
            self.pending.extend_from_slice(bytes);
            loop {
                let n = self.s.handle_input(&self.pending, self.now, &TestPolicy);
                self.pending.drain(..n);
                self.stored.extend_from_slice(self.s.body());
                self.s.clear_body();
                let mut progressed = false;
                while let Some(ev) = self.s.poll_event() {
                    progressed = true;
                    match ev {
                        Event::DataStart => self
                            .s
                            .data_started("ABC123", "Sun, 29 Nov 2026 00:00:00 +0000"),
                        Event::Commit => {
                            self.stored.extend_from_slice(self.s.body());
                            self.s.clear_body();
                            if self.fail_commit {
                                self.s.committed(Err(reply::NO_SPACE));
                            } else {
                                self.committed.push(std::mem::take(&mut self.stored));
                                self.s.committed(Ok("ABC123"));
                            }
                        }
                        Event::Abort => {
                            self.aborted += 1;
                            self.stored.clear();
                        }
                        Event::StartTls => {}
                        Event::Authenticate(c) => self.s.auth_verdict(test_verdict(&c), self.now),
                    }
                }
                if !progressed && (n == 0 || self.pending.is_empty()) {
                    break;
                }
            }
        }

        fn take_output(&mut self) -> String {
            let out = String::from_utf8(self.s.output().to_vec()).unwrap();
            let n = out.len();
            self.s.consume_output(n);
            out
        }

        fn codes(&mut self) -> Vec<u16> {
            self.take_output()
                .lines()
                .filter(|l| l.as_bytes().get(3) == Some(&b' '))
                .map(|l| l[..3].parse().unwrap())
                .collect()
        }
    }

    const TXN: &[u8] = b"EHLO client.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<joe@local.test>\r\nDATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n";

    #[test]
    fn greeting_then_full_pipelined_transaction() {
        let mut h = Harness::new(false);
        h.send(TXN);
        assert_eq!(h.codes(), vec![220, 250, 250, 250, 354, 250, 221]);
        assert!(h.s.is_closing());
        assert_eq!(h.committed.len(), 1);
        let msg = String::from_utf8(h.committed[0].clone()).unwrap();
        assert!(msg.starts_with("Received: from client.test ([192.0.2.1])\r\n\tby mx.local.test (tern) with ESMTP id ABC123\r\n\tfor <joe@local.test>; Sun, 29 Nov 2026"), "{msg}");
        assert!(msg.ends_with("Subject: hi\r\n\r\nbody\r\n"));
    }

    #[test]
    fn mail_is_refused_when_the_policy_has_no_room() {
        struct Full;
        impl Policy for Full {
            fn check_recipient(
                &self,
                rcpt: &Address,
                relay_allowed: bool,
            ) -> Result<Vec<Destination>, Reply> {
                TestPolicy.check_recipient(rcpt, relay_allowed)
            }
            fn check_mail(&self) -> Result<(), Reply> {
                Err(reply::NO_SPACE)
            }
        }
        let now = Instant::now();
        let peer = "192.0.2.1".parse().unwrap();
        let mut s = ServerSession::new(cfg(), ListenerKind::Relay, peer, false, now);
        let input: &[u8] =
            b"EHLO c.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<joe@local.test>\r\nNOOP\r\n";
        let mut used = 0;
        while used < input.len() {
            let n = s.handle_input(&input[used..], now, &Full);
            if n == 0 {
                break;
            }
            used += n;
        }
        let out = String::from_utf8(s.output().to_vec()).unwrap();
        let finals: Vec<&str> = out
            .lines()
            .filter(|l| l.as_bytes().get(3) == Some(&b' '))
            .map(|l| &l[..9.min(l.len())])
            .collect();
        // MAIL refused, so RCPT has no transaction; the session goes on.
        assert_eq!(finals[2], "452 4.3.1", "{out}");
        assert!(finals[3].starts_with("503"), "{out}");
        assert!(finals[4].starts_with("250"), "{out}");
        assert!(s.poll_event().is_none());
    }

    #[test]
    fn pipelined_input_split_at_every_byte() {
        let mut whole = Harness::new(false);
        whole.send(TXN);
        let expected_out = whole.take_output();
        let expected_msg = whole.committed.clone();
        for cut in 1..TXN.len() {
            let mut h = Harness::new(false);
            h.send(&TXN[..cut]);
            h.send(&TXN[cut..]);
            assert_eq!(h.take_output(), expected_out, "cut {cut}");
            assert_eq!(h.committed, expected_msg, "cut {cut}");
        }
        // And one byte at a time.
        let mut h = Harness::new(false);
        for b in TXN {
            h.send(std::slice::from_ref(b));
        }
        assert_eq!(h.take_output(), expected_out);
    }

    /// Issue 11 item 1 through the whole session: UTF-8-laden lines, cut at
    /// every octet (inside characters too), before and after EHLO, in
    /// AUTH: every line gets a reply and the session keeps serving.
    #[test]
    fn utf8_laden_lines_cut_anywhere_never_panic() {
        let lines: [&str; 7] = [
            "MAIL FROMé<a@b.test>",
            "RCPT TOˊ",
            "MAIL FROM:<\"é\"@b.test> SIZE=€",
            "RCPT TO:<a@b😀.test>",
            "EHLO é€😀",
            "AUTH PLAIN é",
            "HELO\u{a0}x",
        ];
        for line in lines {
            let b = line.as_bytes();
            for cut in 0..=b.len() {
                for ehlo in [false, true] {
                    let mut h = Harness::new(false);
                    if ehlo {
                        h.send(b"EHLO c\r\n");
                    }
                    h.take_output();
                    h.send(&b[..cut]);
                    h.send(&b[cut..]);
                    h.send(b"\r\nNOOP\r\n");
                    let out = h.take_output();
                    assert!(
                        out.ends_with("250 2.0.0 Ok\r\n") || out.ends_with("250 Ok\r\n"),
                        "{line:?} cut {cut}: {out}"
                    );
                }
            }
        }
    }

    #[test]
    fn ehlo_advertises_extensions_and_helo_has_no_enhanced_codes() {
        let mut h = Harness::new(false);
        h.send(b"EHLO c\r\n");
        let out = h.take_output();
        assert!(
            out.contains(
                "250-PIPELINING\r\n250-SIZE 2000\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 STARTTLS\r\n"
            ),
            "{out}"
        );
        h.send(b"HELO c\r\nRCPT TO:<x@local.test>\r\n");
        let out = h.take_output();
        assert!(out.ends_with("503 Error: need MAIL command\r\n"), "{out}");
    }

    #[test]
    fn sequence_errors() {
        let mut h = Harness::new(false);
        h.send(b"MAIL FROM:<a@b.test>\r\n");
        assert_eq!(h.codes(), vec![220, 503]);
        h.send(b"EHLO c\r\nDATA\r\nRCPT TO:<joe@local.test>\r\nMAIL FROM:<a@b.test>\r\nMAIL FROM:<a@b.test>\r\nDATA\r\n");
        assert_eq!(h.codes(), vec![250, 503, 503, 250, 503, 503]);
    }

    #[test]
    fn every_simple_command() {
        let mut h = Harness::new(false);
        h.send(b"EHLO c\r\nNOOP\r\nVRFY joe\r\nHELP\r\nRSET\r\nAUTH PLAIN\r\nBOGUS\r\n");
        assert_eq!(h.codes(), vec![220, 250, 250, 252, 214, 250, 538, 500]);
    }

    #[test]
    fn relay_policy() {
        let mut h = Harness::new(false);
        h.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@elsewhere.test>\r\nRCPT TO:<nobody@local.test>\r\nRCPT TO:<postmaster>\r\n");
        let out = h.take_output();
        assert!(out.contains("554 5.7.1 Relay access denied"), "{out}");
        assert!(out.contains("550 5.1.1"), "{out}");
        assert!(out.ends_with("250 2.1.5 Recipient ok\r\n"));
        let mut h = Harness::new(true);
        h.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@elsewhere.test>\r\n");
        assert_eq!(h.codes(), vec![220, 250, 250, 250]);
    }

    #[test]
    fn too_many_recipients() {
        let mut h = Harness::new(false);
        h.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\n");
        for i in 0..4 {
            h.send(format!("RCPT TO:<u{i}@local.test>\r\n").as_bytes());
        }
        let out = h.take_output();
        assert!(
            out.ends_with("452 4.5.3 Error: too many recipients\r\n"),
            "{out}"
        );
    }

    #[test]
    fn oversize_declared_and_streamed() {
        let mut h = Harness::new(false);
        h.send(b"EHLO c\r\nMAIL FROM:<a@b.test> SIZE=5000\r\n");
        assert!(h
            .take_output()
            .ends_with("552 5.3.4 Error: message exceeds fixed maximum message size\r\n"));
        h.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<j@local.test>\r\nDATA\r\n");
        let big = vec![b'x'; 900];
        for _ in 0..3 {
            h.send(&big);
            h.send(b"\r\n");
        }
        h.send(b".\r\nNOOP\r\n");
        let out = h.take_output();
        assert!(out.contains("552 5.3.4"), "{out}");
        assert!(out.ends_with("250 2.0.0 Ok\r\n"), "session survives: {out}");
        assert_eq!(h.aborted, 1);
        assert!(h.committed.is_empty());
    }

    #[test]
    fn long_command_line_and_long_data_line() {
        let mut h = Harness::new(false);
        let mut long = b"NOOP ".to_vec();
        long.extend(std::iter::repeat_n(b'a', 1200));
        long.extend_from_slice(b"\r\nNOOP\r\n");
        h.send(&long);
        assert_eq!(h.codes(), vec![220, 500, 250]);
        h.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<j@local.test>\r\nDATA\r\n");
        let mut data = vec![b'y'; 1001];
        data.extend_from_slice(b"\r\n.\r\nNOOP\r\n");
        h.send(&data);
        let out = h.take_output();
        assert!(out.contains("554 5.6.0"), "{out}");
        assert!(out.ends_with("250 2.0.0 Ok\r\n"));
    }

    #[test]
    fn hop_limit() {
        let mut h = Harness::new(false);
        h.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<j@local.test>\r\nDATA\r\n");
        h.send(b"Received: 1\r\nReceived: 2\r\nReceived: 3\r\nReceived: 4\r\n\r\nx\r\n.\r\n");
        assert!(h
            .take_output()
            .ends_with("554 5.4.6 Error: too many hops (mail loop?)\r\n"));
        assert!(h.committed.is_empty());
    }

    #[test]
    fn commit_failure_is_reported_and_session_goes_on() {
        let mut h = Harness::new(false);
        h.fail_commit = true;
        h.send(TXN);
        assert_eq!(h.codes(), vec![220, 250, 250, 250, 354, 452, 221]);
    }

    #[test]
    fn smuggled_end_is_content() {
        let mut h = Harness::new(false);
        h.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<j@local.test>\r\nDATA\r\nhi\n.\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<j@local.test>\r\nDATA\r\nevil\r\n.\r\n");
        assert_eq!(h.committed.len(), 1);
        let msg = String::from_utf8(h.committed[0].clone()).unwrap();
        assert!(
            msg.contains("hi\r\n\r\nMAIL FROM:<evil@x.test>\r\n"),
            "{msg}"
        );
        assert_eq!(h.codes(), vec![220, 250, 250, 250, 354, 250]);
    }

    #[test]
    fn too_many_errors_closes() {
        let mut h = Harness::new(false);
        h.send(b"A\r\nB\r\nC\r\nD\r\nE\r\nF\r\nG\r\n");
        let out = h.take_output();
        assert!(
            out.ends_with("421 mx.local.test Too many errors, closing connection\r\n"),
            "{out}"
        );
        assert!(h.s.is_closing());
    }

    #[test]
    fn timeout_in_command_and_data() {
        let mut h = Harness::new(false);
        let t0 = h.now;
        h.s.handle_timeout(t0 + Duration::from_secs(299));
        assert!(!h.s.is_closing());
        h.s.handle_timeout(t0 + Duration::from_secs(300));
        assert!(h.s.is_closing());
        assert!(h
            .take_output()
            .ends_with("421 mx.local.test Timeout exceeded, closing connection\r\n"));

        let mut h = Harness::new(false);
        h.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<j@local.test>\r\nDATA\r\npartial");
        let d = h.s.deadline().unwrap();
        h.s.handle_timeout(d);
        assert_eq!(h.s.poll_event(), Some(Event::Abort));
        assert!(h.s.is_closing());
    }

    // Issue 11 item 5: after 220 Ready to start TLS nothing timed out.
    #[test]
    fn starttls_without_handshake_times_out() {
        let mut h = Harness::new(false);
        h.send(b"EHLO c\r\nSTARTTLS\r\n");
        assert!(h
            .take_output()
            .ends_with("220 2.0.0 Ready to start TLS\r\n"));
        assert!(h.s.is_waiting_for_driver());
        let d = h.s.deadline().expect("TlsWait has a deadline");
        assert_eq!(d, h.now + Duration::from_secs(300));
        h.s.handle_timeout(d - Duration::from_secs(1));
        assert!(!h.s.is_closing());
        h.s.handle_timeout(d);
        assert!(h.s.is_closing() && h.s.is_abandoned());
        // Nothing in plaintext after the 220: the handshake had begun.
        assert!(h.s.output().is_empty());
        // A late handshake does not revive it.
        h.s.tls_started("TLSv1.3 X".into(), d);
        assert!(h.s.is_closing());
    }

    /// A client that never reads keeps its 421 unsent: the session is
    /// abandoned after CLOSE_LINGER instead of holding the slot.
    #[test]
    fn closing_session_is_abandoned_after_linger() {
        let mut h = Harness::new(false);
        let t0 = h.now;
        h.s.handle_timeout(t0 + Duration::from_secs(300));
        assert!(h.s.is_closing() && !h.s.is_abandoned());
        let d = h.s.deadline().expect("Closing has a deadline");
        assert_eq!(d, t0 + Duration::from_secs(300) + CLOSE_LINGER);
        h.s.handle_timeout(d);
        assert!(h.s.is_abandoned());
        // QUIT: the 221 gets CLOSE_LINGER, not a whole server_timeout.
        let mut h = Harness::new(false);
        h.send(b"QUIT\r\n");
        assert_eq!(h.s.deadline(), Some(h.now + CLOSE_LINGER));
    }

    #[test]
    fn backpressure_when_client_does_not_read() {
        let mut h = Harness::new(false);
        let noops: Vec<u8> = b"NOOP\r\n".repeat(5000);
        let n = h.s.handle_input(&noops, h.now, &TestPolicy);
        assert!(n < noops.len());
        assert!(h.s.output().len() < OUTPUT_HIGH_WATER + 64);
    }

    #[test]
    fn submission_requires_auth() {
        let now = Instant::now();
        let mut s = ServerSession::new(
            cfg(),
            ListenerKind::Submission,
            "192.0.2.1".parse().unwrap(),
            false,
            now,
        );
        s.handle_input(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\n", now, &TestPolicy);
        assert!(
            String::from_utf8_lossy(s.output()).ends_with("530 5.7.0 Authentication required\r\n")
        );
    }

    #[test]
    fn shutdown_says_421() {
        let mut h = Harness::new(false);
        h.s.shutdown();
        assert!(h
            .take_output()
            .ends_with("421 mx.local.test Service shutting down, try again later\r\n"));
        assert!(h.s.is_closing());
    }

    #[test]
    fn starttls_waits_discards_nothing_itself_and_resets() {
        let mut h = Harness::new(false);
        h.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nSTARTTLS\r\nMAIL FROM:<injected@x.test>\r\n");
        let out = h.take_output();
        assert!(out.contains("250 STARTTLS\r\n"), "{out}");
        assert!(
            !out.contains("AUTH"),
            "AUTH is not offered in plaintext: {out}"
        );
        assert!(out.ends_with("220 2.0.0 Ready to start TLS\r\n"), "{out}");
        // The pipelined command was not consumed: the driver drops it.
        assert_eq!(h.pending, b"MAIL FROM:<injected@x.test>\r\n");
        assert!(h.s.is_waiting_for_driver());
        h.pending.clear();
        h.s.tls_started("TLSv1.3 X".into(), h.now);
        h.send(b"MAIL FROM:<a@b.test>\r\n");
        assert_eq!(h.codes(), vec![503], "EHLO is needed again after STARTTLS");
        h.send(b"EHLO c\r\nSTARTTLS\r\n");
        let out = h.take_output();
        assert!(
            out.contains("250 AUTH PLAIN LOGIN\r\n") && !out.contains("STARTTLS"),
            "{out}"
        );
        assert!(
            out.ends_with("503 5.5.1 Error: TLS already active\r\n"),
            "{out}"
        );
        h.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<j@local.test>\r\nDATA\r\nx\r\n.\r\n");
        let msg = String::from_utf8(h.committed[0].clone()).unwrap();
        assert!(
            msg.contains("(using TLSv1.3 X)") && msg.contains("with ESMTPS id"),
            "{msg}"
        );
    }

    #[test]
    fn auth_requires_tls_unless_allowed() {
        let mut h = Harness::new(false);
        h.send(b"EHLO c\r\nAUTH PLAIN AGpvZQBzZWNyZXQ=\r\n");
        assert!(h.take_output().ends_with(
            "538 5.7.11 Encryption required for requested authentication mechanism\r\n"
        ));
    }

    fn tls_session(kind: ListenerKind) -> Harness {
        let mut h = Harness::new(false);
        h.s = ServerSession::new(cfg(), kind, "192.0.2.1".parse().unwrap(), false, h.now);
        h.s.set_implicit_tls("TLSv1.3 X".into());
        h.take_output();
        h
    }

    #[test]
    fn submission_auth_plain_then_relay() {
        let mut h = tls_session(ListenerKind::Submission);
        h.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\n");
        assert!(h
            .take_output()
            .ends_with("530 5.7.0 Authentication required\r\n"));
        // "\0joe\0secret"
        h.send(b"AUTH PLAIN AGpvZQBzZWNyZXQ=\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@far.test>\r\nDATA\r\nhi\r\n.\r\n");
        assert_eq!(h.codes(), vec![235, 250, 250, 354, 250]);
        let msg = String::from_utf8(h.committed[0].clone()).unwrap();
        assert!(msg.contains("with ESMTPSA id"), "{msg}");
        assert_eq!(h.s.auth_user(), Some("joe"));
    }

    /// The password check is the driver's, between turns: the session
    /// emits the credentials, reads nothing more and says nothing until
    /// the verdict, then goes on with what was pipelined.
    #[test]
    fn auth_waits_for_the_drivers_verdict() {
        let mut h = tls_session(ListenerKind::Submission);
        h.send(b"EHLO c\r\n");
        h.take_output();
        let input: &[u8] = b"AUTH PLAIN AGpvZQBzZWNyZXQ=\r\nMAIL FROM:<a@b.test>\r\n";
        let used = h.s.handle_input(input, h.now, &TestPolicy);
        assert_eq!(used, input.len() - b"MAIL FROM:<a@b.test>\r\n".len());
        let Some(Event::Authenticate(c)) = h.s.poll_event() else {
            panic!("no Authenticate event");
        };
        assert_eq!((c.user.as_str(), c.password.as_str()), ("joe", "secret"));
        assert!(!format!("{c:?}").contains("secret"), "password in Debug");
        assert!(h.s.output().is_empty());
        assert!(h.s.is_waiting_for_driver());
        assert_eq!(h.s.deadline(), None);
        // Still waiting: more input is not taken.
        assert_eq!(h.s.handle_input(&input[used..], h.now, &TestPolicy), 0);
        h.s.auth_verdict(AuthVerdict::Ok, h.now);
        assert_eq!(h.take_output(), "235 2.7.0 Authentication successful\r\n");
        assert_eq!(h.s.auth_user(), Some("joe"));
        h.send(&input[used..]);
        assert_eq!(h.codes(), vec![250]);
        // A verdict nobody asked for changes nothing.
        h.s.auth_verdict(AuthVerdict::Bad, h.now);
        assert!(h.s.output().is_empty());
        assert_eq!(h.s.auth_user(), Some("joe"));
    }

    #[test]
    fn auth_login_dialog_and_cancel() {
        let mut h = tls_session(ListenerKind::Submission);
        h.send(b"EHLO c\r\nAUTH LOGIN\r\n");
        assert!(h.take_output().ends_with("334 VXNlcm5hbWU6\r\n"));
        h.send(b"am9l\r\n");
        assert_eq!(h.take_output(), "334 UGFzc3dvcmQ6\r\n");
        h.send(b"c2VjcmV0\r\n");
        assert_eq!(h.take_output(), "235 2.7.0 Authentication successful\r\n");
        let mut h = tls_session(ListenerKind::Submission);
        h.send(b"EHLO c\r\nAUTH LOGIN\r\n*\r\nNOOP\r\n");
        let out = h.take_output();
        assert!(
            out.ends_with("501 5.7.0 Authentication cancelled\r\n250 2.0.0 Ok\r\n"),
            "{out}"
        );
    }

    #[test]
    fn failed_auth_is_delayed_then_closes() {
        let mut h = tls_session(ListenerKind::Submission);
        // "\0joe\0wrong"
        h.send(b"EHLO c\r\nAUTH PLAIN AGpvZQB3cm9uZw==\r\nNOOP\r\n");
        let out = h.take_output();
        assert!(!out.contains("535"), "the reply is held back: {out}");
        let until = h.s.deadline().unwrap();
        assert!(until >= h.now + Duration::from_secs(1));
        h.s.handle_timeout(until);
        h.send(b"");
        let out = h.take_output();
        assert!(
            out.starts_with("535 5.7.8 Authentication credentials invalid\r\n"),
            "{out}"
        );
        assert!(
            out.ends_with("250 2.0.0 Ok\r\n"),
            "pipelined NOOP answered after the delay: {out}"
        );
        for _ in 0..2 {
            h.send(b"AUTH PLAIN AGpvZQB3cm9uZw==\r\n");
            let d = h.s.deadline().unwrap();
            h.s.handle_timeout(d);
        }
        assert!(h.take_output().contains("421"));
        assert!(h.s.is_closing());
    }

    #[test]
    fn submission_adds_date_and_message_id_when_missing() {
        let mut h = tls_session(ListenerKind::Submission);
        h.send(b"EHLO c\r\nAUTH PLAIN AGpvZQBzZWNyZXQ=\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@far.test>\r\nDATA\r\n");
        // Split inside the header section to exercise the holding.
        h.send(b"Subject: s\r\nFr");
        h.send(b"om: a@b.test\r\n\r\nbody\r\n.\r\n");
        let msg = String::from_utf8(h.committed[0].clone()).unwrap();
        let after_received = msg.split_once("+0000\r\n").unwrap().1;
        assert_eq!(
            after_received,
            "Subject: s\r\nFrom: a@b.test\r\nDate: Sun, 29 Nov 2026 00:00:00 +0000\r\nMessage-ID: <ABC123@mx.local.test>\r\n\r\nbody\r\n"
        );
        // Present fields are left alone; relay sessions never add any.
        let mut h = tls_session(ListenerKind::Submission);
        h.send(b"EHLO c\r\nAUTH PLAIN AGpvZQBzZWNyZXQ=\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@far.test>\r\nDATA\r\nDate: x\r\nMessage-ID: <m@x>\r\n\r\nb\r\n.\r\n");
        let msg = String::from_utf8(h.committed[0].clone()).unwrap();
        assert!(
            msg.ends_with("+0000\r\nDate: x\r\nMessage-ID: <m@x>\r\n\r\nb\r\n"),
            "{msg}"
        );
        let mut h = Harness::new(false);
        h.send(TXN);
        let msg = String::from_utf8(h.committed[0].clone()).unwrap();
        assert!(!msg.contains("Message-ID") && !msg.contains("Date: "));
    }
}
