//! Outbound SMTP client session, sans-IO: one object per connection to a
//! smarthost or an MX, driven by the reactor with bytes, events and `now`.
//!
//! Why: delivery must speak SMTP to many hosts from one thread, so the
//! protocol lives here as a pure state machine and the reactor only moves
//! bytes (`handle_input` in, `poll_transmit`/`consume_transmit` out,
//! `poll_event` for what happened, `poll_timeout`/`handle_timeout` for time).
//!
//! Rules followed:
//! - RFC 5321 §3, §4.1 (commands, `<addr>` paths, `<>` null sender),
//!   §4.2 (replies, multi-line `250-`/`250 `), §4.5.3.1.5 (512-octet reply
//!   lines), §4.5.3.2 (client timeouts: `reply_timeout` for every reply but
//!   the one after the final dot, which gets `final_timeout`; also for the
//!   TLS handshake, for QUIT and between body writes), §4.5.2
//!   (dot-stuffing).
//! - RFC 2920 PIPELINING: with the extension MAIL, every RCPT and DATA go in
//!   one group; without it, lock-step. A pipelined DATA that the server
//!   refuses because no recipient was accepted is followed by RSET.
//! - RFC 1870 SIZE: `SIZE=n` is declared; a message over the advertised
//!   limit fails permanently (552 5.3.4) without a MAIL being sent.
//! - RFC 6152 8BITMIME: `BODY=8BITMIME` when the body is 8-bit and the
//!   server offers it. To a server that offers neither 8BITMIME nor
//!   SMTPUTF8 (§3: no 8-bit octets may be sent), an 8-bit body goes through
//!   the [`super::mime7bit`] downgrade (8-bit parts to quoted-printable)
//!   before dot-stuffing, as Postfix's client does; when the content cannot
//!   be converted (8-bit headers, `binary`...), the connection is dropped
//!   mid-DATA (the server discards an unterminated message) and every
//!   recipient the server accepted fails with 554 5.6.3.
//! - RFC 6531 SMTPUTF8: the parameter is sent when the transaction needs it;
//!   when needed but not offered the transaction fails permanently (5.6.7).
//! - RFC 3207 STARTTLS: after the 220 no further plaintext byte is read
//!   (bytes already received are discarded, against command injection), and
//!   EHLO is sent again with the pre-TLS extensions forgotten.
//! - RFC 4954 AUTH with PLAIN (RFC 4616, initial response) or LOGIN.
//!
//! Invariants:
//! - Every recipient of a transaction gets exactly one `RcptOutcome`, in the
//!   order of `Transaction::recipients`, through one `TransactionDone`.
//! - When the session dies during a transaction, a `TransactionDone` comes
//!   first (recipients the server already decided keep their outcome, the
//!   rest carry the failure as `Deferred`), then `SessionFailed`; so
//!   `SessionFailed` never leaves a recipient undecided. Every session-level
//!   failure defers: a wrong password, missing TLS, a 5xx greeting (like
//!   Postfix's `smtp_skip_5xx_greeting`) or a timeout never bounce mail.
//! - Buffers are bounded: input by `MAX_REPLY_LINE` × `MAX_REPLY_LINES`,
//!   output by `BODY_HIGH_WATER` plus one stuffed chunk while the body
//!   streams (a downgraded chunk is at most about 3.1 times its input, plus
//!   the converter's line buffer) (the command group of a transaction is bounded by the
//!   recipient limit of the caller).
//! - Credentials never reach the log.
//!
//! Not supported: CHUNKING/BDAT, DSN parameters, other SASL mechanisms
//! (CRAM-MD5, XOAUTH2…), SMTPUTF8 downgrade,
//! LMTP. The data-block timeout (socket write progress during the body) is
//! the driver's, because only it sees writes complete; likewise the wait
//! after QUIT.

use std::collections::VecDeque;

use super::mime7bit::{Downgrade, Unconvertible};

pub use crate::auth::base64_encode;
use std::fmt;
use std::time::{Duration, Instant};

/// Longest reply line accepted, CRLF included (RFC 5321 §4.5.3.1.5).
pub const MAX_REPLY_LINE: usize = 512;
/// Most lines in one (multi-line) reply; an EHLO reply has one per extension.
pub const MAX_REPLY_LINES: usize = 100;
/// `send_body` takes nothing while this many bytes wait to be written.
pub const BODY_HIGH_WATER: usize = 16 * 1024;

/// Synthesized replies: (code, enhanced status and text, why tern made it
/// up). They reach the daemon marked as the client's own ([`Reply::own`]),
/// never as something the server said.
type Synth = (u16, &'static str, Own);
const NOT_READY: Synth = (
    451,
    "4.3.0 client session not ready for a transaction",
    Own::Client,
);
const ABORTED: Synth = (451, "4.3.0 delivery aborted by the client", Own::Client);
const CONNECTION_LOST: Synth = (451, "4.4.2 connection lost", Own::ConnectionLost);
const PROTOCOL_ERROR: Synth = (
    451,
    "4.5.0 SMTP protocol error from the server",
    Own::Protocol,
);
const TLS_NOT_OFFERED: Synth = (454, "4.7.0 TLS required but STARTTLS not offered", Own::Tls);
const AUTH_NEEDS_TLS: Synth = (
    454,
    "4.7.0 refusing to send credentials without TLS",
    Own::Tls,
);
const NO_AUTH_MECHANISM: Synth = (
    454,
    "4.7.0 server offers no supported AUTH mechanism",
    Own::Protocol,
);
const BAD_SENDER: Synth = (553, "5.1.7 invalid sender address", Own::Client);
const BAD_RECIPIENT: Synth = (553, "5.1.3 invalid recipient address", Own::Client);
const SMTPUTF8_NOT_OFFERED: Synth = (
    553,
    "5.6.7 SMTPUTF8 required but not offered by the server",
    Own::Client,
);
/// No reply in time: 4.4.2, "timeout waiting for" what was awaited.
const TIMEOUT_CODE: u16 = 451;
const TIMEOUT_TEXT: &str = "4.4.2 timeout waiting for";
const TOO_BIG_CODE: u16 = 552;
/// A body that cannot go to a 7-bit server (RFC 3463 5.6.3); the reason follows.
const NOT_CONVERTIBLE_CODE: u16 = 554;
const NOT_CONVERTIBLE_TEXT: &str =
    "5.6.3 message content cannot be converted to 7bit for a server without 8BITMIME:";
const TOO_BIG_TEXT: &str = "5.3.4 message size exceeds the server's fixed maximum of";

fn synth((code, text, own): Synth) -> Reply {
    Reply {
        code,
        lines: vec![text.to_string()],
        own: Some(own),
    }
}

/// Why the client made a reply up itself instead of the server giving it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Own {
    /// No reply (or TLS handshake, or body progress) in time; names what
    /// was awaited ("the greeting").
    Timeout(&'static str),
    /// The socket closed or failed mid-dialog.
    ConnectionLost,
    /// The server broke the protocol (malformed reply, no usable AUTH).
    Protocol,
    /// The TLS policy: STARTTLS required but not offered, credentials
    /// that must not go out in plaintext.
    Tls,
    /// The client's own checks before sending (state, addresses, size,
    /// 8-bit content, SMTPUTF8).
    Client,
}

/// One SMTP reply: its code and the text of each line (without the code).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
    /// `None` for a reply the server sent; else why the client made it up.
    pub own: Option<Own>,
}

impl Reply {
    /// First digit of the code.
    pub fn class(&self) -> u16 {
        self.code / 100
    }

    /// 2yz or 3yz (RFC 5321 §4.2.1: positive completion or intermediate).
    pub fn is_positive(&self) -> bool {
        matches!(self.class(), 2 | 3)
    }

    /// 4yz.
    pub fn is_transient(&self) -> bool {
        self.class() == 4
    }

    /// 5yz.
    pub fn is_permanent(&self) -> bool {
        self.class() == 5
    }

    /// All lines joined with a space.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }

    /// The RFC 3463 enhanced status code at the start of the first line.
    pub fn enhanced(&self) -> Option<(u8, u16, u16)> {
        let token = self.lines.first()?.split_ascii_whitespace().next()?;
        let s = crate::delivery::outcome::Status::parse(token)?;
        Some((s.class, s.subject, s.detail))
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lines.is_empty() {
            write!(f, "{}", self.code)
        } else {
            write!(f, "{} {}", self.code, self.text())
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsPolicy {
    Never,
    IfOffered,
    Required,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Credentials {{ user: {:?}, password: <redacted> }}",
            self.user
        )
    }
}

#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub helo_name: String,
    pub tls: TlsPolicy,
    /// Implicit TLS is already on (port 465 style).
    pub tls_active: bool,
    pub credentials: Option<Credentials>,
    pub reply_timeout: Duration,
    /// Wait for the reply after the body's final dot.
    pub final_timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    /// Without brackets; "" is the null sender.
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// Greeting, EHLO (and STARTTLS, EHLO, AUTH) done: a transaction may start.
    Ready,
    /// 220 to STARTTLS: run the handshake, then call `tls_established`.
    StartTls,
    /// 354 to DATA: feed the body with `send_body` and `finish_body`.
    WantBody,
    /// One outcome per recipient, in order.
    TransactionDone(Vec<RcptOutcome>),
    /// The session is over; any transaction in flight got its
    /// `TransactionDone` just before this event.
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
    AuthLoginUser,
    AuthLoginPassword,
    AuthResult,
    Mail,
    Rcpt(usize),
    Data,
    DataEnd,
    /// Final reply to an empty body sent only to leave a bogus 354.
    DiscardedDataEnd,
    Rset,
    Quit,
}

impl Expect {
    fn carries_credentials(self) -> bool {
        matches!(
            self,
            Expect::AuthPlain | Expect::AuthLoginPassword | Expect::AuthResult
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Greeting, EHLO/HELO, STARTTLS, AUTH.
    Setup,
    /// The driver runs the TLS handshake.
    AwaitingTls,
    /// No transaction (an RSET may be in flight).
    Ready,
    /// MAIL/RCPT/DATA replies in flight.
    Transaction,
    /// After 354: the driver streams the body.
    Body,
    Quitting,
    Closed,
}

#[derive(Clone, Debug)]
enum RcptState {
    Pending,
    Accepted,
    Decided(RcptOutcome),
}

#[derive(Debug)]
struct ActiveTransaction {
    mail_command: String,
    recipients: Vec<String>,
    states: Vec<RcptState>,
    pipelined: bool,
    mail_sent: bool,
    mail_accepted: bool,
    next_rcpt: usize,
    data_sent: bool,
    /// 8-bit body to a 7-bit server: the MIME downgrade.
    downgrade: Option<Downgrade>,
}

impl ActiveTransaction {
    fn any_accepted(&self) -> bool {
        self.states.iter().any(|s| matches!(s, RcptState::Accepted))
    }

    fn decide_where(&mut self, accepted: bool, outcome: &RcptOutcome) {
        for state in &mut self.states {
            let hit = match state {
                RcptState::Pending => !accepted,
                RcptState::Accepted => accepted,
                RcptState::Decided(_) => false,
            };
            if hit {
                *state = RcptState::Decided(outcome.clone());
            }
        }
    }

    fn into_outcomes(self, undecided: &RcptOutcome) -> Vec<RcptOutcome> {
        self.states
            .into_iter()
            .map(|s| match s {
                RcptState::Decided(o) => o,
                RcptState::Pending | RcptState::Accepted => undecided.clone(),
            })
            .collect()
    }
}

/// Outcome of a negative reply: 5yz fails, anything else defers.
fn failure_outcome(reply: &Reply) -> RcptOutcome {
    if reply.is_permanent() {
        RcptOutcome::Failed(reply.clone())
    } else {
        RcptOutcome::Deferred(reply.clone())
    }
}

#[derive(Clone, Debug)]
struct Extension {
    keyword: String,
    params: String,
}

/// EHLO reply lines after the first: `KEYWORD [params]`; the old
/// `AUTH=LOGIN PLAIN` form counts as AUTH.
fn parse_extensions(lines: &[String]) -> Vec<Extension> {
    lines
        .iter()
        .skip(1)
        .filter_map(|line| {
            let line = line.trim();
            let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
            let (keyword, params) = match word.split_once('=') {
                Some((k, first)) => (k, format!("{first} {rest}")),
                None => (word, rest.to_string()),
            };
            if keyword.is_empty() {
                return None;
            }
            Some(Extension {
                keyword: keyword.to_ascii_uppercase(),
                params: params.trim().to_string(),
            })
        })
        .collect()
}

/// A path is sent between brackets on one line: no controls, no brackets.
fn is_sendable_address(addr: &str) -> bool {
    !addr
        .bytes()
        .any(|b| b < 0x20 || b == 0x7f || b == b'<' || b == b'>')
}

/// One outbound SMTP connection. See the module doc.
#[derive(Debug)]
pub struct ClientSession {
    cfg: ClientConfig,
    phase: Phase,
    expected: VecDeque<Expect>,
    /// Start of the wait for the reply at the front of `expected` (or for
    /// the TLS handshake).
    wait_started: Instant,
    out: Vec<u8>,
    line: Vec<u8>,
    reply_code: Option<u16>,
    reply_lines: Vec<String>,
    events: VecDeque<ClientEvent>,
    extensions: Vec<Extension>,
    tls_active: bool,
    starttls_refused: bool,
    /// The server's greeting arrived (whatever its code).
    greeted: bool,
    plain_response_resent: bool,
    txn: Option<ActiveTransaction>,
    /// Last two body bytes sent, as if the body followed a CRLF.
    body_tail: [u8; 2],
    /// Downgraded body bytes on their way to dot-stuffing (reused).
    converted: Vec<u8>,
}

impl ClientSession {
    /// A session that waits for the server's 220 greeting.
    pub fn new(cfg: ClientConfig, now: Instant) -> ClientSession {
        let tls_active = cfg.tls_active;
        ClientSession {
            cfg,
            phase: Phase::Setup,
            expected: VecDeque::from([Expect::Greeting]),
            wait_started: now,
            out: Vec::new(),
            line: Vec::new(),
            reply_code: None,
            reply_lines: Vec::new(),
            events: VecDeque::new(),
            extensions: Vec::new(),
            tls_active,
            starttls_refused: false,
            plain_response_resent: false,
            greeted: false,
            txn: None,
            body_tail: *b"\r\n",
            converted: Vec::new(),
        }
    }

    // ---- driver interface -------------------------------------------------

    /// Bytes read from the server, split anywhere.
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        for &b in bytes {
            if matches!(self.phase, Phase::AwaitingTls | Phase::Closed) {
                // After the 220 to STARTTLS nothing plaintext is trusted.
                return;
            }
            if b == b'\n' {
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.handle_line(&line, now);
            } else if self.line.len() + 1 >= MAX_REPLY_LINE {
                log::debug!("smtp-client: reply line over {MAX_REPLY_LINE} octets");
                self.fail_session(synth(PROTOCOL_ERROR), false);
            } else {
                self.line.push(b);
            }
        }
    }

    /// Bytes waiting to be written to the socket.
    pub fn poll_transmit(&self) -> &[u8] {
        &self.out
    }

    /// `n` bytes of `poll_transmit` were written.
    pub fn consume_transmit(&mut self, n: usize) {
        let n = n.min(self.out.len());
        self.out.drain(..n);
    }

    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Whether `poll_event` has something.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// Starts a transaction; only after `Ready` or a `TransactionDone`.
    /// Called at any other time, every recipient is deferred at once.
    pub fn start_transaction(&mut self, txn: Transaction, now: Instant) {
        let n = txn.recipients.len();
        let fail_all = |outcome: RcptOutcome| ClientEvent::TransactionDone(vec![outcome; n]);
        if self.phase != Phase::Ready || self.txn.is_some() {
            self.events
                .push_back(fail_all(RcptOutcome::Deferred(synth(NOT_READY))));
            return;
        }
        if !is_sendable_address(&txn.sender) {
            self.events
                .push_back(fail_all(RcptOutcome::Failed(synth(BAD_SENDER))));
            return;
        }
        if let Some(limit) = self.size_limit() {
            if txn.size > limit {
                let reply = Reply {
                    code: TOO_BIG_CODE,
                    lines: vec![format!("{TOO_BIG_TEXT} {limit} octets")],
                    own: Some(Own::Client),
                };
                self.events.push_back(fail_all(RcptOutcome::Failed(reply)));
                return;
            }
        }
        if txn.smtputf8 && !self.offers("SMTPUTF8") {
            self.events
                .push_back(fail_all(RcptOutcome::Failed(synth(SMTPUTF8_NOT_OFFERED))));
            return;
        }
        let states: Vec<RcptState> = txn
            .recipients
            .iter()
            .map(|r| {
                if is_sendable_address(r) {
                    RcptState::Pending
                } else {
                    RcptState::Decided(RcptOutcome::Failed(synth(BAD_RECIPIENT)))
                }
            })
            .collect();
        if !states.iter().any(|s| matches!(s, RcptState::Pending)) {
            let outcomes = states
                .into_iter()
                .filter_map(|s| match s {
                    RcptState::Decided(o) => Some(o),
                    _ => None,
                })
                .collect();
            self.events
                .push_back(ClientEvent::TransactionDone(outcomes));
            return;
        }

        let mut mail_command = format!("MAIL FROM:<{}>", txn.sender);
        if self.offers("SIZE") {
            mail_command.push_str(&format!(" SIZE={}", txn.size));
        }
        if txn.eight_bit && self.offers("8BITMIME") {
            mail_command.push_str(" BODY=8BITMIME");
        }
        if txn.smtputf8 {
            mail_command.push_str(" SMTPUTF8");
        }
        let downgrade = (txn.eight_bit && !self.offers("8BITMIME") && !self.offers("SMTPUTF8"))
            .then(Downgrade::new);
        let pipelined = self.offers("PIPELINING");
        self.phase = Phase::Transaction;
        self.txn = Some(ActiveTransaction {
            mail_command,
            recipients: txn.recipients,
            states,
            pipelined,
            mail_sent: false,
            mail_accepted: false,
            next_rcpt: 0,
            data_sent: false,
            downgrade,
        });
        if pipelined {
            self.send_pipelined_group(now);
        } else if self.expected.is_empty() {
            self.advance_lockstep(now);
        }
    }

    /// Takes a chunk of the stored message (CRLF lines, not dot-stuffed);
    /// returns how many bytes were taken (0 while over `BODY_HIGH_WATER`
    /// or when no body is wanted).
    pub fn send_body(&mut self, chunk: &[u8]) -> usize {
        if self.phase != Phase::Body || self.out.len() >= BODY_HIGH_WATER {
            return 0;
        }
        let take = chunk.len().min(BODY_HIGH_WATER - self.out.len());
        let chunk = chunk.get(..take).unwrap_or(chunk);
        match self.txn.as_mut().and_then(|t| t.downgrade.as_mut()) {
            Some(conv) => {
                let mut converted = std::mem::take(&mut self.converted);
                converted.clear();
                match conv.push(chunk, &mut converted) {
                    Ok(()) => self.stuff(&converted),
                    Err(why) => self.abort_unconvertible(why),
                }
                self.converted = converted;
            }
            None => self.stuff(chunk),
        }
        take
    }

    /// Dot-stuffs body bytes into the output.
    fn stuff(&mut self, chunk: &[u8]) {
        // Copy runs; a dot that starts a line gets a second one in front.
        // A line starts after any LF, so a bare LF cannot smuggle a dot.
        let mut copied = 0;
        let mut from = 0;
        while let Some(off) = chunk
            .get(from..)
            .and_then(|rest| super::scan::position(rest, b'.'))
        {
            let dot = from + off;
            let before = match dot.checked_sub(1) {
                None => Some(self.body_tail[1]),
                Some(prev) => chunk.get(prev).copied(),
            };
            if before == Some(b'\n') {
                self.out
                    .extend_from_slice(chunk.get(copied..dot).unwrap_or_default());
                self.out.push(b'.');
                copied = dot;
            }
            from = dot + 1;
        }
        self.out
            .extend_from_slice(chunk.get(copied..).unwrap_or_default());
        self.body_tail = match *chunk {
            [] => self.body_tail,
            [only] => [self.body_tail[1], only],
            [.., a, b] => [a, b],
        };
    }

    /// The body cannot be sent to this 7-bit server: the recipients it
    /// accepted fail with 5.6.3, and the connection is dropped without the
    /// final dot (nothing else can end DATA; the server must discard the
    /// unterminated message, RFC 5321 §4.1.1.4).
    fn abort_unconvertible(&mut self, why: Unconvertible) {
        log::debug!("smtp-client: body not sent: {why}");
        let reply = Reply {
            code: NOT_CONVERTIBLE_CODE,
            lines: vec![format!("{NOT_CONVERTIBLE_TEXT} {why}")],
            own: Some(Own::Client),
        };
        if let Some(active) = self.txn.take() {
            let outcomes = active.into_outcomes(&RcptOutcome::Failed(reply));
            self.events
                .push_back(ClientEvent::TransactionDone(outcomes));
        }
        self.out.clear();
        self.expected.clear();
        self.phase = Phase::Closed;
    }

    /// Ends the body: CRLF if it did not end with one, then `.` CRLF.
    pub fn finish_body(&mut self, now: Instant) {
        if self.phase != Phase::Body {
            return;
        }
        if let Some(conv) = self.txn.as_mut().and_then(|t| t.downgrade.as_mut()) {
            let mut converted = std::mem::take(&mut self.converted);
            converted.clear();
            let done = conv.finish(&mut converted);
            match done {
                Ok(()) => self.stuff(&converted),
                Err(why) => self.abort_unconvertible(why),
            }
            self.converted = converted;
            if self.phase != Phase::Body {
                return;
            }
        }
        if self.body_tail != *b"\r\n" {
            self.out.extend_from_slice(b"\r\n");
        }
        self.phase = Phase::Transaction;
        self.send_command(".", Expect::DataEnd, now);
    }

    /// The TLS handshake after STARTTLS succeeded.
    pub fn tls_established(&mut self, now: Instant) {
        if self.phase != Phase::AwaitingTls {
            return;
        }
        self.line.clear();
        self.reply_code = None;
        self.reply_lines.clear();
        self.extensions.clear();
        self.tls_active = true;
        self.phase = Phase::Setup;
        let ehlo = format!("EHLO {}", self.cfg.helo_name);
        self.send_command(&ehlo, Expect::Ehlo, now);
    }

    /// Sends QUIT (a transaction in flight is deferred). Mid-body or
    /// mid-handshake nothing can be sent: the session just closes.
    pub fn quit(&mut self) {
        if matches!(self.phase, Phase::Closed | Phase::Quitting) {
            return;
        }
        if let Some(active) = self.txn.take() {
            let outcomes = active.into_outcomes(&RcptOutcome::Deferred(synth(ABORTED)));
            self.events
                .push_back(ClientEvent::TransactionDone(outcomes));
        }
        if matches!(self.phase, Phase::Body | Phase::AwaitingTls) {
            self.phase = Phase::Closed;
            return;
        }
        self.phase = Phase::Quitting;
        self.write_line("QUIT", Expect::Quit);
        self.expected.push_back(Expect::Quit);
    }

    /// The socket closed or failed.
    pub fn connection_lost(&mut self, _now: Instant) {
        self.fail_session(synth(CONNECTION_LOST), false);
    }

    /// Bytes of the session went out. While the body streams, this restarts
    /// its deadline (RFC 5321 §4.5.3.2.5: the server must keep taking data
    /// blocks; one that stops reading must not hold the connection forever).
    pub fn note_progress(&mut self, now: Instant) {
        if self.phase == Phase::Body {
            self.wait_started = now;
        }
    }

    /// When `handle_timeout` must be called, if ever. Every phase that waits
    /// on the peer has one: for a reply, for the TLS handshake, for the
    /// peer to take more of the body ([`Self::note_progress`]), for QUIT.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let wait = match self.phase {
            Phase::Closed => return None,
            Phase::AwaitingTls | Phase::Body | Phase::Quitting => self.cfg.reply_timeout,
            _ => match self.expected.front()? {
                Expect::DataEnd | Expect::DiscardedDataEnd => self.cfg.final_timeout,
                _ => self.cfg.reply_timeout,
            },
        };
        self.wait_started.checked_add(wait)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(deadline) = self.poll_timeout() {
            if now >= deadline {
                let what = self.awaited();
                log::debug!("smtp-client: timeout waiting for {what}");
                let reply = Reply {
                    code: TIMEOUT_CODE,
                    lines: vec![format!("{TIMEOUT_TEXT} {what}")],
                    own: Some(Own::Timeout(what)),
                };
                self.fail_session(reply, false);
            }
        }
    }

    /// What the session waits for, in words (for a timeout).
    fn awaited(&self) -> &'static str {
        match self.phase {
            Phase::AwaitingTls => return "the TLS handshake",
            Phase::Body => return "the server to take the message",
            _ => {}
        }
        match self.expected.front() {
            Some(Expect::Greeting) => "the greeting",
            Some(Expect::Ehlo) => "the reply to EHLO",
            Some(Expect::Helo) => "the reply to HELO",
            Some(Expect::StartTls) => "the reply to STARTTLS",
            Some(
                Expect::AuthPlain
                | Expect::AuthLoginUser
                | Expect::AuthLoginPassword
                | Expect::AuthResult,
            ) => "the reply to AUTH",
            Some(Expect::Mail) => "the reply to MAIL",
            Some(Expect::Rcpt(_)) => "the reply to RCPT",
            Some(Expect::Data) => "the reply to DATA",
            Some(Expect::DataEnd | Expect::DiscardedDataEnd) => {
                "the reply to the end of the message"
            }
            Some(Expect::Rset) => "the reply to RSET",
            Some(Expect::Quit) | None => "the reply to QUIT",
        }
    }

    /// Nothing more will happen: write out `poll_transmit` (QUIT) and close.
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed | Phase::Quitting)
    }

    /// Whether the last EHLO reply listed `ext` (case-insensitive).
    pub fn offers(&self, ext: &str) -> bool {
        self.extension_params(ext).is_some()
    }

    /// Parameters of an offered extension (`SIZE 1000` → `"1000"`).
    pub fn extension_params(&self, ext: &str) -> Option<&str> {
        self.extensions
            .iter()
            .find(|e| e.keyword.eq_ignore_ascii_case(ext))
            .map(|e| e.params.as_str())
    }

    /// The server's SIZE limit; `None` if not offered or unlimited (0).
    pub fn size_limit(&self) -> Option<u64> {
        let limit: u64 = self.extension_params("SIZE")?.parse().ok()?;
        (limit > 0).then_some(limit)
    }

    pub fn offers_auth(&self, mechanism: &str) -> bool {
        self.extension_params("AUTH").is_some_and(|p| {
            p.split_ascii_whitespace()
                .any(|m| m.eq_ignore_ascii_case(mechanism))
        })
    }

    /// Whether the server ever greeted (a server that waits for a TLS
    /// ClientHello never does).
    pub fn greeted(&self) -> bool {
        self.greeted
    }

    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    // ---- replies ------------------------------------------------------------

    fn handle_line(&mut self, line: &[u8], now: Instant) {
        let Some((code, last, text)) = parse_reply_line(line) else {
            log::debug!("smtp-client: malformed reply line");
            self.fail_session(synth(PROTOCOL_ERROR), false);
            return;
        };
        if self.reply_code.is_some_and(|c| c != code) {
            log::debug!("smtp-client: reply code changed inside a multi-line reply");
            self.fail_session(synth(PROTOCOL_ERROR), false);
            return;
        }
        if self.reply_lines.len() >= MAX_REPLY_LINES {
            log::debug!("smtp-client: reply over {MAX_REPLY_LINES} lines");
            self.fail_session(synth(PROTOCOL_ERROR), false);
            return;
        }
        self.reply_code = Some(code);
        self.reply_lines.push(text);
        if last {
            self.reply_code = None;
            let reply = Reply {
                code,
                lines: std::mem::take(&mut self.reply_lines),
                own: None,
            };
            self.handle_reply(reply, now);
        }
    }

    fn handle_reply(&mut self, reply: Reply, now: Instant) {
        log::debug!("smtp-client: < {}", crate::logsafe::log_safe(&reply));
        let Some(expect) = self.expected.pop_front() else {
            // Unsolicited (e.g. an early 554 during the body, or a 421).
            self.fail_session(reply, false);
            return;
        };
        self.wait_started = now;
        if self.phase == Phase::Quitting {
            if expect == Expect::Quit {
                self.phase = Phase::Closed;
            }
            return;
        }
        if reply.code == 421 {
            self.fail_session(reply, false);
            return;
        }
        match expect {
            Expect::Greeting => {
                self.greeted = true;
                if reply.class() == 2 {
                    let ehlo = format!("EHLO {}", self.cfg.helo_name);
                    self.send_command(&ehlo, Expect::Ehlo, now);
                } else {
                    self.fail_session(reply, true);
                }
            }
            Expect::Ehlo => {
                if reply.class() == 2 {
                    self.extensions = parse_extensions(&reply.lines);
                    self.setup_tls(now);
                } else if reply.is_permanent() {
                    let helo = format!("HELO {}", self.cfg.helo_name);
                    self.send_command(&helo, Expect::Helo, now);
                } else {
                    self.fail_session(reply, true);
                }
            }
            Expect::Helo => {
                if reply.class() == 2 {
                    self.extensions.clear();
                    self.setup_tls(now);
                } else {
                    self.fail_session(reply, true);
                }
            }
            Expect::StartTls => {
                if reply.class() == 2 {
                    self.phase = Phase::AwaitingTls;
                    self.events.push_back(ClientEvent::StartTls);
                } else if self.cfg.tls == TlsPolicy::Required {
                    self.fail_session(reply, true);
                } else {
                    log::debug!("smtp-client: STARTTLS refused, continuing in plaintext");
                    self.starttls_refused = true;
                    self.setup_auth(now);
                }
            }
            Expect::AuthPlain if reply.class() == 3 && !self.plain_response_resent => {
                // Server ignored the initial response: send it again.
                let response = self.plain_response();
                self.plain_response_resent = true;
                self.send_command(&response, Expect::AuthResult, now);
            }
            Expect::AuthLoginUser | Expect::AuthLoginPassword if reply.class() == 3 => {
                let (field, next) = match (expect, &self.cfg.credentials) {
                    (Expect::AuthLoginUser, Some(c)) => {
                        (c.user.as_bytes(), Expect::AuthLoginPassword)
                    }
                    (_, Some(c)) => (c.password.as_bytes(), Expect::AuthResult),
                    (_, None) => (&[][..], Expect::AuthResult),
                };
                let line = base64_encode(field);
                self.send_command(&line, next, now);
            }
            Expect::AuthPlain
            | Expect::AuthLoginUser
            | Expect::AuthLoginPassword
            | Expect::AuthResult => {
                if reply.class() == 2 {
                    self.become_ready();
                } else {
                    // A wrong password defers: never bounce for our own config.
                    self.fail_session(reply, true);
                }
            }
            Expect::Mail => self.handle_mail_reply(&reply, now),
            Expect::Rcpt(i) => self.handle_rcpt_reply(i, &reply),
            Expect::Data => self.handle_data_reply(&reply, now),
            Expect::DataEnd => {
                if let Some(mut active) = self.txn.take() {
                    let outcome = if reply.class() == 2 {
                        RcptOutcome::Delivered(reply.clone())
                    } else {
                        failure_outcome(&reply)
                    };
                    active.decide_where(true, &outcome);
                    self.txn = Some(active);
                }
                self.finish_transaction(false, now);
            }
            Expect::DiscardedDataEnd => self.finish_transaction(true, now),
            Expect::Rset => {
                if reply.class() != 2 {
                    self.fail_session(reply, true);
                }
            }
            Expect::Quit => self.phase = Phase::Closed,
        }
        if self.phase == Phase::Transaction && self.expected.is_empty() {
            self.advance_lockstep(now);
        }
    }

    fn handle_mail_reply(&mut self, reply: &Reply, now: Instant) {
        let Some(active) = self.txn.as_mut() else {
            return;
        };
        if reply.class() == 2 {
            active.mail_accepted = true;
            return;
        }
        active.decide_where(false, &failure_outcome(reply));
        if !active.pipelined {
            self.finish_transaction(false, now);
        }
        // Pipelined: the RCPT and DATA replies still come and are ignored.
    }

    fn handle_rcpt_reply(&mut self, index: usize, reply: &Reply) {
        let Some(active) = self.txn.as_mut() else {
            return;
        };
        let Some(state) = active.states.get_mut(index) else {
            return;
        };
        if matches!(state, RcptState::Pending) {
            *state = if reply.class() == 2 {
                RcptState::Accepted
            } else {
                RcptState::Decided(failure_outcome(reply))
            };
        }
    }

    fn handle_data_reply(&mut self, reply: &Reply, now: Instant) {
        let Some(active) = self.txn.as_mut() else {
            return;
        };
        let any_accepted = active.any_accepted();
        if reply.class() == 3 {
            if any_accepted {
                self.phase = Phase::Body;
                self.body_tail = *b"\r\n";
                self.events.push_back(ClientEvent::WantBody);
            } else {
                // RFC 2920 §3.1 says the server must refuse this DATA; leave
                // with an empty body, then reset.
                self.send_command(".", Expect::DiscardedDataEnd, now);
            }
            return;
        }
        let rset = active.mail_accepted;
        if any_accepted {
            active.decide_where(true, &failure_outcome(reply));
        }
        self.finish_transaction(rset, now);
    }

    // ---- setup ----------------------------------------------------------------

    fn setup_tls(&mut self, now: Instant) {
        if !self.tls_active && !self.starttls_refused && self.cfg.tls != TlsPolicy::Never {
            if self.offers("STARTTLS") {
                self.send_command("STARTTLS", Expect::StartTls, now);
                return;
            }
            if self.cfg.tls == TlsPolicy::Required {
                self.fail_session(synth(TLS_NOT_OFFERED), true);
                return;
            }
        }
        self.setup_auth(now);
    }

    fn setup_auth(&mut self, now: Instant) {
        if self.cfg.credentials.is_none() {
            self.become_ready();
            return;
        }
        if !self.tls_active && self.cfg.tls != TlsPolicy::Never {
            self.fail_session(synth(AUTH_NEEDS_TLS), true);
        } else if self.offers_auth("PLAIN") {
            let command = format!("AUTH PLAIN {}", self.plain_response());
            self.send_command(&command, Expect::AuthPlain, now);
        } else if self.offers_auth("LOGIN") {
            self.send_command("AUTH LOGIN", Expect::AuthLoginUser, now);
        } else {
            self.fail_session(synth(NO_AUTH_MECHANISM), true);
        }
    }

    /// RFC 4616: empty authzid, NUL, user, NUL, password.
    fn plain_response(&self) -> String {
        let mut message = vec![0u8];
        if let Some(c) = &self.cfg.credentials {
            message.extend_from_slice(c.user.as_bytes());
            message.push(0);
            message.extend_from_slice(c.password.as_bytes());
        }
        base64_encode(&message)
    }

    fn become_ready(&mut self) {
        self.phase = Phase::Ready;
        self.events.push_back(ClientEvent::Ready);
    }

    // ---- transaction ------------------------------------------------------------

    /// RFC 2920: MAIL, every RCPT and DATA in one group.
    fn send_pipelined_group(&mut self, now: Instant) {
        let Some(active) = self.txn.as_mut() else {
            return;
        };
        let mut lines = vec![(active.mail_command.clone(), Expect::Mail)];
        for (i, (rcpt, state)) in active.recipients.iter().zip(&active.states).enumerate() {
            if matches!(state, RcptState::Pending) {
                lines.push((format!("RCPT TO:<{rcpt}>"), Expect::Rcpt(i)));
            }
        }
        lines.push(("DATA".to_string(), Expect::Data));
        active.mail_sent = true;
        active.next_rcpt = active.recipients.len();
        active.data_sent = true;
        for (line, expect) in lines {
            self.send_command(&line, expect, now);
        }
    }

    /// Without PIPELINING: the next command once every reply is in.
    fn advance_lockstep(&mut self, now: Instant) {
        let Some(active) = self.txn.as_mut() else {
            return;
        };
        if active.pipelined {
            return;
        }
        if !active.mail_sent {
            active.mail_sent = true;
            let line = active.mail_command.clone();
            self.send_command(&line, Expect::Mail, now);
            return;
        }
        while let Some(state) = active.states.get(active.next_rcpt) {
            let index = active.next_rcpt;
            active.next_rcpt += 1;
            if matches!(state, RcptState::Pending) {
                let line = format!(
                    "RCPT TO:<{}>",
                    active.recipients.get(index).map_or("", |r| r.as_str())
                );
                self.send_command(&line, Expect::Rcpt(index), now);
                return;
            }
        }
        if active.data_sent {
            return;
        }
        if active.any_accepted() {
            active.data_sent = true;
            self.send_command("DATA", Expect::Data, now);
        } else {
            self.finish_transaction(true, now);
        }
    }

    fn finish_transaction(&mut self, rset: bool, now: Instant) {
        if let Some(active) = self.txn.take() {
            let outcomes = active.into_outcomes(&RcptOutcome::Deferred(synth(PROTOCOL_ERROR)));
            self.events
                .push_back(ClientEvent::TransactionDone(outcomes));
        }
        self.phase = Phase::Ready;
        if rset {
            self.send_command("RSET", Expect::Rset, now);
        }
    }

    // ---- output and failure ----------------------------------------------------

    fn send_command(&mut self, line: &str, expect: Expect, now: Instant) {
        if self.expected.is_empty() {
            self.wait_started = now;
        }
        self.write_line(line, expect);
        self.expected.push_back(expect);
    }

    fn write_line(&mut self, line: &str, expect: Expect) {
        if expect.carries_credentials() || line.starts_with("AUTH PLAIN") {
            log::debug!("smtp-client: > <credentials redacted>");
        } else {
            log::debug!("smtp-client: > {line}");
        }
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// Ends the session: a transaction in flight is settled first, then
    /// `SessionFailed(Deferred(reply))`; QUIT is sent when the dialog is
    /// still in step (`send_quit`).
    fn fail_session(&mut self, reply: Reply, send_quit: bool) {
        match self.phase {
            Phase::Closed => return,
            Phase::Quitting => {
                // Nothing more is worth sending (QUIT may still be queued).
                self.phase = Phase::Closed;
                self.out.clear();
                return;
            }
            _ => {}
        }
        log::debug!(
            "smtp-client: session failed: {}",
            crate::logsafe::log_safe(&reply)
        );
        let outcome = RcptOutcome::Deferred(reply);
        if let Some(active) = self.txn.take() {
            let outcomes = active.into_outcomes(&outcome);
            self.events
                .push_back(ClientEvent::TransactionDone(outcomes));
        }
        self.events.push_back(ClientEvent::SessionFailed(outcome));
        if send_quit && matches!(self.phase, Phase::Setup | Phase::Ready | Phase::Transaction) {
            self.phase = Phase::Quitting;
            self.write_line("QUIT", Expect::Quit);
            self.expected.push_back(Expect::Quit);
        } else {
            // Unsent commands or body bytes are moot: the driver closes.
            self.phase = Phase::Closed;
            self.expected.clear();
            self.line.clear();
            self.out.clear();
        }
    }
}

/// `250-text` / `250 text` / `250` → (code, is last line, text).
fn parse_reply_line(line: &[u8]) -> Option<(u16, bool, String)> {
    let digits = line.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let code = digits
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    if !(200..=599).contains(&code) {
        return None;
    }
    let last = match line.get(3) {
        None | Some(b' ') => true,
        Some(b'-') => false,
        Some(_) => return None,
    };
    let text = String::from_utf8_lossy(line.get(4..).unwrap_or(&[])).into_owned();
    Some((code, last, text))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)] // tests index fixed data
mod tests {
    use super::*;

    const T0: Duration = Duration::from_secs(0);

    fn cfg() -> ClientConfig {
        ClientConfig {
            helo_name: "client.example".into(),
            tls: TlsPolicy::Never,
            tls_active: false,
            credentials: None,
            reply_timeout: Duration::from_secs(300),
            final_timeout: Duration::from_secs(600),
        }
    }

    fn creds() -> Option<Credentials> {
        Some(Credentials {
            user: "user".into(),
            password: "pass".into(),
        })
    }

    fn txn(rcpts: &[&str]) -> Transaction {
        Transaction {
            sender: "a@x.example".into(),
            recipients: rcpts.iter().map(|r| r.to_string()).collect(),
            size: 100,
            eight_bit: false,
            smtputf8: false,
        }
    }

    fn reply(code: u16, text: &str) -> Reply {
        Reply {
            code,
            lines: vec![text.into()],
            own: None,
        }
    }

    struct Harness {
        s: ClientSession,
        t0: Instant,
    }

    impl Harness {
        fn new(cfg: ClientConfig) -> Harness {
            let t0 = Instant::now();
            Harness {
                s: ClientSession::new(cfg, t0),
                t0,
            }
        }
        fn feed(&mut self, bytes: &str) {
            self.s.handle_input(bytes.as_bytes(), self.t0 + T0);
        }
        fn sent(&mut self) -> String {
            let bytes = self.s.poll_transmit().to_vec();
            self.s.consume_transmit(bytes.len());
            String::from_utf8_lossy(&bytes).into_owned()
        }
        fn events(&mut self) -> Vec<ClientEvent> {
            std::iter::from_fn(|| self.s.poll_event()).collect()
        }
        fn start(&mut self, t: Transaction) {
            self.s.start_transaction(t, self.t0);
        }
        /// Greeting + EHLO with the given extensions; asserts Ready.
        fn ready(&mut self, exts: &[&str]) {
            self.feed("220 mx.example ESMTP\r\n");
            assert_eq!(self.sent(), "EHLO client.example\r\n");
            self.feed(&ehlo_reply(exts));
            assert_eq!(self.events(), vec![ClientEvent::Ready]);
        }
    }

    fn ehlo_reply(exts: &[&str]) -> String {
        let mut lines = vec!["mx.example hello".to_string()];
        lines.extend(exts.iter().map(|e| e.to_string()));
        let n = lines.len();
        lines
            .iter()
            .enumerate()
            .map(|(i, l)| format!("250{}{l}\r\n", if i + 1 == n { ' ' } else { '-' }))
            .collect()
    }

    fn done(events: &[ClientEvent]) -> Vec<RcptOutcome> {
        events
            .iter()
            .find_map(|e| match e {
                ClientEvent::TransactionDone(o) => Some(o.clone()),
                _ => None,
            })
            .expect("no TransactionDone")
    }

    // ---- reply parser -----------------------------------------------------

    #[test]
    fn reply_accessors() {
        let r = Reply {
            code: 550,
            lines: vec!["5.1.1 no such user".into(), "bye".into()],
            own: None,
        };
        assert_eq!(r.to_string(), "550 5.1.1 no such user bye");
        assert_eq!(r.text(), "5.1.1 no such user bye");
        assert_eq!(r.enhanced(), Some((5, 1, 1)));
        assert!(r.is_permanent() && !r.is_transient() && !r.is_positive());
        assert!(reply(354, "go").is_positive());
        assert!(reply(451, "x").is_transient());
        assert_eq!(reply(250, "ok").enhanced(), None);
        assert_eq!(reply(250, "2.1.0.1 ok").enhanced(), None);
        assert_eq!(reply(250, "3.1.0 ok").enhanced(), None);
        assert_eq!(reply(250, "2.1234.0 ok").enhanced(), None);
        assert_eq!(
            Reply {
                code: 250,
                lines: vec![],
                own: None,
            }
            .to_string(),
            "250"
        );
    }

    #[test]
    fn parse_reply_lines() {
        assert_eq!(
            parse_reply_line(b"250-SIZE 10"),
            Some((250, false, "SIZE 10".into()))
        );
        assert_eq!(parse_reply_line(b"250 ok"), Some((250, true, "ok".into())));
        assert_eq!(parse_reply_line(b"250"), Some((250, true, String::new())));
        assert_eq!(parse_reply_line(b"25"), None);
        assert_eq!(parse_reply_line(b"2x0 ok"), None);
        assert_eq!(parse_reply_line(b"250xok"), None);
        assert_eq!(parse_reply_line(b"650 ok"), None);
        assert_eq!(parse_reply_line(b"099 ok"), None);
    }

    #[test]
    fn overlong_reply_line_fails_session() {
        let mut h = Harness::new(cfg());
        let long = format!("220 {}", "x".repeat(MAX_REPLY_LINE));
        h.feed(&long);
        let ev = h.events();
        assert!(
            matches!(&ev[..], [ClientEvent::SessionFailed(RcptOutcome::Deferred(r))] if r.enhanced() == Some((4, 5, 0)) && r.own == Some(Own::Protocol))
        );
        assert!(h.s.is_closed());
        assert_eq!(h.sent(), "");
    }

    #[test]
    fn longest_legal_reply_line_is_accepted() {
        let mut h = Harness::new(cfg());
        let line = format!("220 {}\r\n", "x".repeat(MAX_REPLY_LINE - 6));
        assert_eq!(line.len(), MAX_REPLY_LINE);
        h.feed(&line);
        assert_eq!(h.sent(), "EHLO client.example\r\n");
    }

    #[test]
    fn too_many_reply_lines_fails_session() {
        let mut h = Harness::new(cfg());
        h.feed("220 hi\r\n");
        h.sent();
        h.feed(&"250-X\r\n".repeat(MAX_REPLY_LINES + 1));
        assert!(matches!(
            h.events()[..],
            [ClientEvent::SessionFailed(RcptOutcome::Deferred(_))]
        ));
        assert!(h.s.is_closed());
    }

    #[test]
    fn mixed_codes_in_multiline_reply_fail_session() {
        let mut h = Harness::new(cfg());
        h.feed("220 hi\r\n");
        h.feed("250-a\r\n251 b\r\n");
        assert!(matches!(h.events()[..], [ClientEvent::SessionFailed(_)]));
    }

    #[test]
    fn extensions_parsed_case_insensitively() {
        let mut h = Harness::new(cfg());
        h.ready(&["size 2000", "AUTH=LOGIN PLAIN", "8bitmime"]);
        assert!(h.s.offers("SIZE") && h.s.offers("8BITMIME"));
        assert_eq!(h.s.size_limit(), Some(2000));
        assert!(h.s.offers_auth("plain") && h.s.offers_auth("LOGIN"));
        assert!(!h.s.offers("PIPELINING") && !h.s.offers("mx.example"));
    }

    // ---- happy paths ------------------------------------------------------------

    const HAPPY_SETUP: &str =
        "220 mx.example ESMTP\r\n250-mx.example\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n250 8BITMIME\r\n";
    const HAPPY_TXN: &str =
        "250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 unknown\r\n450 4.2.1 busy\r\n354 go\r\n";
    const HAPPY_FINAL: &str = "250 2.0.0 queued as X\r\n";
    const HAPPY_QUIT: &str = "221 2.0.0 bye\r\n";
    const HAPPY_SENT: &str = "EHLO client.example\r\n\
        MAIL FROM:<a@x.example> SIZE=100 BODY=8BITMIME\r\n\
        RCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nRCPT TO:<d@y>\r\nDATA\r\n\
        Subject: hi\r\n\r\n..dot\r\n.\r\nQUIT\r\n";

    /// Runs the pipelined dialog, each server segment cut by `split`.
    fn run_happy(split: &dyn Fn(&[u8]) -> Vec<Vec<u8>>) {
        let t0 = Instant::now();
        let mut s = ClientSession::new(cfg(), t0);
        let mut out = Vec::new();
        let mut events = Vec::new();
        let pump = |s: &mut ClientSession,
                    input: &str,
                    out: &mut Vec<u8>,
                    events: &mut Vec<ClientEvent>| {
            for piece in split(input.as_bytes()) {
                s.handle_input(&piece, t0);
                out.extend_from_slice(s.poll_transmit());
                let n = s.poll_transmit().len();
                s.consume_transmit(n);
                events.extend(std::iter::from_fn(|| s.poll_event()));
            }
        };
        pump(&mut s, HAPPY_SETUP, &mut out, &mut events);
        assert_eq!(events, vec![ClientEvent::Ready]);
        let mut t = txn(&["b@y", "c@y", "d@y"]);
        t.eight_bit = true;
        s.start_transaction(t, t0);
        pump(&mut s, HAPPY_TXN, &mut out, &mut events);
        assert_eq!(events.last(), Some(&ClientEvent::WantBody));
        assert_eq!(s.send_body(b"Subject: hi\r\n\r\n.dot"), 19);
        s.finish_body(t0);
        out.extend_from_slice(s.poll_transmit());
        let n = s.poll_transmit().len();
        s.consume_transmit(n);
        events.clear();
        pump(&mut s, HAPPY_FINAL, &mut out, &mut events);
        s.quit();
        pump(&mut s, HAPPY_QUIT, &mut out, &mut events);
        assert_eq!(String::from_utf8_lossy(&out), HAPPY_SENT);
        assert_eq!(
            events,
            vec![ClientEvent::TransactionDone(vec![
                RcptOutcome::Delivered(reply(250, "2.0.0 queued as X")),
                RcptOutcome::Failed(reply(550, "5.1.1 unknown")),
                RcptOutcome::Deferred(reply(450, "4.2.1 busy")),
            ])]
        );
        assert!(s.is_closed());
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn pipelined_happy_path_split_at_every_byte_boundary() {
        let longest = HAPPY_SETUP.len().max(HAPPY_TXN.len());
        for k in 0..=longest {
            run_happy(&|b: &[u8]| {
                let (x, y) = b.split_at(k.min(b.len()));
                vec![x.to_vec(), y.to_vec()]
            });
        }
        run_happy(&|b: &[u8]| b.iter().map(|&c| vec![c]).collect());
    }

    #[test]
    fn lockstep_without_pipelining() {
        let mut h = Harness::new(cfg());
        h.ready(&["SIZE"]);
        h.start(txn(&["b@y", "c@y"]));
        assert_eq!(h.sent(), "MAIL FROM:<a@x.example> SIZE=100\r\n");
        h.feed("250 ok\r\n");
        assert_eq!(h.sent(), "RCPT TO:<b@y>\r\n");
        h.feed("550 no\r\n");
        assert_eq!(h.sent(), "RCPT TO:<c@y>\r\n");
        h.feed("250 ok\r\n");
        assert_eq!(h.sent(), "DATA\r\n");
        h.feed("354 go\r\n");
        assert_eq!(h.events(), vec![ClientEvent::WantBody]);
        h.s.send_body(b"x\r\n");
        h.s.finish_body(h.t0);
        assert_eq!(h.sent(), "x\r\n.\r\n");
        h.feed("250 ok\r\n");
        assert_eq!(
            done(&h.events()),
            vec![
                RcptOutcome::Failed(reply(550, "no")),
                RcptOutcome::Delivered(reply(250, "ok"))
            ]
        );
    }

    #[test]
    fn helo_fallback_when_ehlo_refused() {
        let mut h = Harness::new(cfg());
        h.feed("220 old.example\r\n");
        assert_eq!(h.sent(), "EHLO client.example\r\n");
        h.feed("502 5.5.1 what\r\n");
        assert_eq!(h.sent(), "HELO client.example\r\n");
        h.feed("250 old.example\r\n");
        assert_eq!(h.events(), vec![ClientEvent::Ready]);
        let mut t = txn(&["b@y"]);
        t.eight_bit = true;
        h.start(t);
        assert_eq!(h.sent(), "MAIL FROM:<a@x.example>\r\n");
    }

    #[test]
    fn null_sender_and_eight_bit_without_8bitmime() {
        let mut h = Harness::new(cfg());
        h.ready(&["PIPELINING"]);
        let mut t = txn(&["b@y"]);
        t.sender = String::new();
        t.eight_bit = true;
        h.start(t);
        assert_eq!(h.sent(), "MAIL FROM:<>\r\nRCPT TO:<b@y>\r\nDATA\r\n");
    }

    /// Runs an 8-bit transaction with one recipient to a server offering
    /// `exts`, streams `body` in 7-octet chunks; returns what was sent after
    /// DATA and the events.
    fn eight_bit_body(exts: &[&str], body: &[u8]) -> (String, Vec<ClientEvent>, bool) {
        let mut h = Harness::new(cfg());
        h.ready(exts);
        let mut t = txn(&["b@y"]);
        t.eight_bit = true;
        h.start(t);
        let mail = h.sent();
        assert!(mail.starts_with("MAIL FROM:<a@x.example>"), "{mail}");
        if !exts.contains(&"PIPELINING") {
            h.feed("250 ok\r\n");
            h.sent();
            h.feed("250 ok\r\n");
            h.sent();
        } else {
            h.feed("250 ok\r\n250 ok\r\n");
        }
        h.feed("354 go\r\n");
        assert_eq!(h.events(), vec![ClientEvent::WantBody]);
        for piece in body.chunks(7) {
            assert_eq!(h.s.send_body(piece), piece.len());
        }
        h.s.finish_body(h.t0);
        let sent = h.sent();
        let events = h.events();
        (format!("{mail}{sent}"), events, h.s.is_closed())
    }

    #[test]
    fn eight_bit_body_declared_to_an_8bitmime_server_and_sent_as_is() {
        let body = "Subject: x\r\n\r\ncaf\u{e9}\r\n".as_bytes();
        let (sent, _, _) = eight_bit_body(&["PIPELINING", "8BITMIME"], body);
        assert!(
            sent.starts_with("MAIL FROM:<a@x.example> BODY=8BITMIME\r\n"),
            "{sent}"
        );
        assert!(
            sent.ends_with("Subject: x\r\n\r\ncaf\u{e9}\r\n.\r\n"),
            "{sent}"
        );
        // SMTPUTF8 implies 8-bit transport (RFC 6531 §3.1): no downgrade.
        let (sent, _, _) = eight_bit_body(&["PIPELINING", "SMTPUTF8"], body);
        assert!(sent.ends_with("caf\u{e9}\r\n.\r\n"), "{sent}");
    }

    #[test]
    fn eight_bit_body_is_downgraded_for_a_7bit_server() {
        let body = "Subject: x\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n.caf\u{e9}\r\n".as_bytes();
        let (sent, events, closed) = eight_bit_body(&["PIPELINING"], body);
        assert!(!sent.contains("BODY="), "{sent}");
        assert!(sent.is_ascii(), "{sent}");
        assert!(
            sent.ends_with(
                "Content-Transfer-Encoding: quoted-printable\r\n\r\n..caf=C3=A9\r\n.\r\n"
            ),
            "{sent}"
        );
        assert!(events.is_empty() && !closed);
    }

    #[test]
    fn unconvertible_body_fails_with_5_6_3_and_drops_the_connection() {
        let body = "Subject: caf\u{e9}\r\n\r\nx\r\n".as_bytes();
        let (sent, events, closed) = eight_bit_body(&[], body);
        assert!(
            !sent.contains(".\r\n") && !sent.contains('\u{e9}'),
            "{sent:?}"
        );
        assert!(closed);
        let [ClientEvent::TransactionDone(outcomes)] = events.as_slice() else {
            panic!("{events:?}");
        };
        let [RcptOutcome::Failed(r)] = outcomes.as_slice() else {
            panic!("{outcomes:?}");
        };
        assert_eq!(r.code, 554);
        assert_eq!(r.enhanced(), Some((5, 6, 3)));
        assert!(r.text().contains("8-bit octets in a header"), "{r}");
    }

    #[test]
    fn two_transactions_on_one_connection() {
        let mut h = Harness::new(cfg());
        h.ready(&["PIPELINING"]);
        for round in 0..2 {
            h.start(txn(&["b@y"]));
            assert_eq!(
                h.sent(),
                "MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y>\r\nDATA\r\n"
            );
            h.feed("250 ok\r\n250 ok\r\n354 go\r\n");
            assert_eq!(h.events(), vec![ClientEvent::WantBody]);
            // The second body starts with a dot: stuffing state was reset.
            h.s.send_body(if round == 0 { b"one\r\n" } else { b".two\r\n" });
            h.s.finish_body(h.t0);
            assert_eq!(
                h.sent(),
                if round == 0 {
                    "one\r\n.\r\n"
                } else {
                    "..two\r\n.\r\n"
                }
            );
            h.feed("250 queued\r\n");
            assert_eq!(
                done(&h.events()),
                vec![RcptOutcome::Delivered(reply(250, "queued"))]
            );
        }
    }

    #[test]
    fn start_transaction_before_ready_defers() {
        let mut h = Harness::new(cfg());
        h.start(txn(&["b@y", "c@y"]));
        let outcomes = done(&h.events());
        assert_eq!(outcomes.len(), 2);
        assert!(outcomes
            .iter()
            .all(|o| matches!(o, RcptOutcome::Deferred(_))));
        assert_eq!(h.sent(), "");
    }

    #[test]
    fn bad_addresses_never_reach_the_wire() {
        let mut h = Harness::new(cfg());
        h.ready(&["PIPELINING"]);
        h.start(txn(&["evil@y>\r\nRSET", "b@y"]));
        assert_eq!(
            h.sent(),
            "MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y>\r\nDATA\r\n"
        );
        h.feed("250 ok\r\n250 ok\r\n354 go\r\n");
        h.s.finish_body(h.t0);
        h.feed("250 ok\r\n");
        h.sent();
        let outcomes = done(&h.events());
        assert!(matches!(&outcomes[0], RcptOutcome::Failed(r) if r.enhanced() == Some((5, 1, 3))));
        assert_eq!(outcomes[1], RcptOutcome::Delivered(reply(250, "ok")));

        let mut t = txn(&["b@y"]);
        t.sender = "a@x\r\nQUIT".into();
        h.start(t);
        assert!(
            matches!(&done(&h.events())[..], [RcptOutcome::Failed(r)] if r.enhanced() == Some((5, 1, 7)))
        );
        assert_eq!(h.sent(), "");
    }

    // ---- failures by stage ------------------------------------------------

    #[test]
    fn greeting_5xx_and_4xx_defer_and_quit() {
        for code in ["554", "450"] {
            let mut h = Harness::new(cfg());
            h.feed(&format!("{code} go away\r\n"));
            let ev = h.events();
            assert!(
                matches!(&ev[..], [ClientEvent::SessionFailed(RcptOutcome::Deferred(r))] if r.code.to_string() == code && r.own.is_none())
            );
            assert_eq!(h.sent(), "QUIT\r\n");
            assert!(h.s.is_closed());
            h.feed("221 bye\r\n");
            assert!(h.events().is_empty());
        }
    }

    #[test]
    fn greeting_421_closes_without_quit() {
        let mut h = Harness::new(cfg());
        h.feed("421 4.3.2 busy\r\n");
        assert_eq!(
            h.events(),
            vec![ClientEvent::SessionFailed(RcptOutcome::Deferred(reply(
                421,
                "4.3.2 busy"
            )))]
        );
        assert_eq!(h.sent(), "");
        assert!(h.s.is_closed());
    }

    #[test]
    fn ehlo_4xx_defers() {
        let mut h = Harness::new(cfg());
        h.feed("220 hi\r\n");
        h.sent();
        h.feed("451 later\r\n");
        assert!(matches!(
            h.events()[..],
            [ClientEvent::SessionFailed(RcptOutcome::Deferred(_))]
        ));
        assert_eq!(h.sent(), "QUIT\r\n");
    }

    #[test]
    fn helo_failure_defers() {
        let mut h = Harness::new(cfg());
        h.feed("220 hi\r\n500 no\r\n");
        h.sent();
        h.feed("501 no\r\n");
        assert!(matches!(
            h.events()[..],
            [ClientEvent::SessionFailed(RcptOutcome::Deferred(_))]
        ));
    }

    #[test]
    fn mail_rejected_lockstep() {
        for (code, permanent) in [(451, false), (550, true)] {
            let mut h = Harness::new(cfg());
            h.ready(&[]);
            h.start(txn(&["b@y", "c@y"]));
            h.sent();
            h.feed(&format!("{code} sender refused\r\n"));
            let r = reply(code, "sender refused");
            let expected = if permanent {
                RcptOutcome::Failed(r)
            } else {
                RcptOutcome::Deferred(r)
            };
            assert_eq!(done(&h.events()), vec![expected.clone(), expected]);
            assert_eq!(h.sent(), "", "no RCPT and no RSET after a refused MAIL");
        }
    }

    #[test]
    fn mail_rejected_pipelined_consumes_all_replies() {
        let mut h = Harness::new(cfg());
        h.ready(&["PIPELINING"]);
        h.start(txn(&["b@y", "c@y"]));
        h.sent();
        h.feed("550 5.7.1 no\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n");
        assert!(h.events().is_empty());
        h.feed("503 5.5.1 no valid recipients\r\n");
        let r = reply(550, "5.7.1 no");
        assert_eq!(
            done(&h.events()),
            vec![RcptOutcome::Failed(r.clone()), RcptOutcome::Failed(r)]
        );
        assert_eq!(h.sent(), "");
        // The connection is reusable.
        h.start(txn(&["b@y"]));
        assert!(h.sent().starts_with("MAIL FROM"));
    }

    #[test]
    fn data_refused_resets_and_settles_accepted() {
        for (code, permanent) in [(451, false), (554, true)] {
            let mut h = Harness::new(cfg());
            h.ready(&[]);
            h.start(txn(&["b@y"]));
            h.feed("250 ok\r\n250 ok\r\n");
            h.sent();
            h.feed(&format!("{code} data refused\r\n"));
            let r = reply(code, "data refused");
            let expected = if permanent {
                RcptOutcome::Failed(r)
            } else {
                RcptOutcome::Deferred(r)
            };
            assert_eq!(done(&h.events()), vec![expected]);
            assert_eq!(h.sent(), "RSET\r\n");
        }
    }

    #[test]
    fn final_reply_4xx_and_5xx() {
        for (code, permanent) in [(452, false), (552, true)] {
            let mut h = Harness::new(cfg());
            h.ready(&["PIPELINING"]);
            h.start(txn(&["b@y", "c@y"]));
            h.feed("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n");
            h.s.finish_body(h.t0);
            h.sent();
            h.feed(&format!("{code} not stored\r\n"));
            let r = reply(code, "not stored");
            let expected = if permanent {
                RcptOutcome::Failed(r)
            } else {
                RcptOutcome::Deferred(r)
            };
            assert_eq!(done(&h.events()), vec![expected.clone(), expected]);
            assert_eq!(h.sent(), "", "no RSET needed after the final reply");
        }
    }

    #[test]
    fn server_421_mid_transaction() {
        let mut h = Harness::new(cfg());
        h.ready(&["PIPELINING"]);
        h.start(txn(&["b@y", "c@y", "d@y"]));
        h.sent();
        h.feed("250 ok\r\n250 ok\r\n550 5.1.1 unknown\r\n421 4.3.0 shutting down\r\n");
        let r421 = reply(421, "4.3.0 shutting down");
        assert_eq!(
            h.events(),
            vec![
                ClientEvent::TransactionDone(vec![
                    RcptOutcome::Deferred(r421.clone()),
                    RcptOutcome::Failed(reply(550, "5.1.1 unknown")),
                    RcptOutcome::Deferred(r421.clone()),
                ]),
                ClientEvent::SessionFailed(RcptOutcome::Deferred(r421)),
            ]
        );
        assert_eq!(h.sent(), "");
        assert!(h.s.is_closed());
        assert_eq!(h.s.poll_timeout(), None);
        h.feed("250 late\r\n");
        assert!(h.events().is_empty());
    }

    #[test]
    fn unsolicited_reply_during_body_fails_session() {
        let mut h = Harness::new(cfg());
        h.ready(&["PIPELINING"]);
        h.start(txn(&["b@y"]));
        h.feed("250 ok\r\n250 ok\r\n354 go\r\n");
        h.events();
        h.feed("554 go away\r\n");
        let ev = h.events();
        assert_eq!(
            done(&ev),
            vec![RcptOutcome::Deferred(reply(554, "go away"))]
        );
        assert!(matches!(ev.last(), Some(ClientEvent::SessionFailed(_))));
        assert_eq!(h.s.send_body(b"x"), 0);
    }

    #[test]
    fn size_over_server_limit_fails_without_sending() {
        let mut h = Harness::new(cfg());
        h.ready(&["PIPELINING", "SIZE 1000"]);
        let mut t = txn(&["b@y", "c@y"]);
        t.size = 1001;
        h.start(t);
        let outcomes = done(&h.events());
        assert_eq!(outcomes.len(), 2);
        for o in outcomes {
            assert!(
                matches!(&o, RcptOutcome::Failed(r) if r.code == 552 && r.enhanced() == Some((5, 3, 4)))
            );
        }
        assert_eq!(h.sent(), "");
        // SIZE 0 means no limit.
        let mut h = Harness::new(cfg());
        h.ready(&["SIZE 0"]);
        let mut t = txn(&["b@y"]);
        t.size = 1 << 40;
        h.start(t);
        assert_eq!(
            h.sent(),
            format!("MAIL FROM:<a@x.example> SIZE={}\r\n", 1u64 << 40)
        );
    }

    #[test]
    fn smtputf8_needed() {
        let mut h = Harness::new(cfg());
        h.ready(&["8BITMIME"]);
        let mut t = txn(&["ü@y"]);
        t.smtputf8 = true;
        h.start(t.clone());
        assert!(
            matches!(&done(&h.events())[..], [RcptOutcome::Failed(r)] if r.enhanced() == Some((5, 6, 7)))
        );
        assert_eq!(h.sent(), "");

        let mut h = Harness::new(cfg());
        h.ready(&["8BITMIME", "SMTPUTF8"]);
        t.eight_bit = true;
        h.start(t);
        assert_eq!(
            h.sent(),
            "MAIL FROM:<a@x.example> BODY=8BITMIME SMTPUTF8\r\n"
        );
    }

    // ---- all recipients rejected -----------------------------------------------

    #[test]
    fn all_recipients_rejected_lockstep_sends_no_data() {
        let mut h = Harness::new(cfg());
        h.ready(&[]);
        h.start(txn(&["b@y", "c@y"]));
        h.feed("250 ok\r\n550 no\r\n450 later\r\n");
        assert_eq!(
            h.sent(),
            "MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nRSET\r\n"
        );
        assert_eq!(
            done(&h.events()),
            vec![
                RcptOutcome::Failed(reply(550, "no")),
                RcptOutcome::Deferred(reply(450, "later"))
            ]
        );
        // Next MAIL waits for the RSET reply in lock-step.
        h.start(txn(&["d@y"]));
        assert_eq!(h.sent(), "");
        h.feed("250 reset\r\n");
        assert_eq!(h.sent(), "MAIL FROM:<a@x.example>\r\n");
    }

    #[test]
    fn all_recipients_rejected_pipelined_resets_after_data_refusal() {
        let mut h = Harness::new(cfg());
        h.ready(&["PIPELINING"]);
        h.start(txn(&["b@y"]));
        h.sent();
        h.feed("250 ok\r\n550 no\r\n554 5.5.1 no valid recipients\r\n");
        assert_eq!(
            done(&h.events()),
            vec![RcptOutcome::Failed(reply(550, "no"))]
        );
        assert_eq!(h.sent(), "RSET\r\n");
        // Pipelined: the next group may follow the RSET at once.
        h.start(txn(&["c@y"]));
        assert_eq!(
            h.sent(),
            "MAIL FROM:<a@x.example>\r\nRCPT TO:<c@y>\r\nDATA\r\n"
        );
        h.feed("250 reset\r\n250 ok\r\n250 ok\r\n354 go\r\n");
        assert_eq!(h.events(), vec![ClientEvent::WantBody]);
    }

    #[test]
    fn all_recipients_rejected_pipelined_bogus_354() {
        let mut h = Harness::new(cfg());
        h.ready(&["PIPELINING"]);
        h.start(txn(&["b@y"]));
        h.sent();
        h.feed("250 ok\r\n550 no\r\n354 go\r\n");
        assert_eq!(h.sent(), ".\r\n");
        assert!(h.events().is_empty());
        h.feed("554 no recipients\r\n");
        assert_eq!(
            done(&h.events()),
            vec![RcptOutcome::Failed(reply(550, "no"))]
        );
        assert_eq!(h.sent(), "RSET\r\n");
    }

    #[test]
    fn rset_refused_ends_session() {
        let mut h = Harness::new(cfg());
        h.ready(&[]);
        h.start(txn(&["b@y"]));
        h.feed("250 ok\r\n550 no\r\n");
        h.events();
        h.sent();
        h.feed("500 what\r\n");
        assert!(matches!(h.events()[..], [ClientEvent::SessionFailed(_)]));
        assert_eq!(h.sent(), "QUIT\r\n");
    }

    // ---- body -----------------------------------------------------------------

    fn in_body() -> Harness {
        let mut h = Harness::new(cfg());
        h.ready(&["PIPELINING"]);
        h.start(txn(&["b@y"]));
        h.feed("250 ok\r\n250 ok\r\n354 go\r\n");
        h.sent();
        assert_eq!(h.events(), vec![ClientEvent::WantBody]);
        h
    }

    #[test]
    fn dot_stuffing_across_chunks_and_final_crlf() {
        let mut h = in_body();
        for chunk in [
            &b".first\r"[..],
            b"\n.",
            b"dot\r\n",
            b"",
            b"..two\r\nno.stuff\r\n",
            b"end",
        ] {
            assert_eq!(h.s.send_body(chunk), chunk.len());
        }
        h.s.finish_body(h.t0);
        assert_eq!(
            h.sent(),
            "..first\r\n..dot\r\n...two\r\nno.stuff\r\nend\r\n.\r\n"
        );
    }

    /// The run-copying stuffer agrees with the rule applied octet by octet,
    /// however the body is cut into chunks.
    #[test]
    fn dot_stuffing_matches_per_octet_rule_at_every_split() {
        let body: &[u8] = b".a\r\n..b\n.\r\nx.y\r\n.\n\n.z.\r\n.";
        let mut want = Vec::new();
        let mut prev = b'\n';
        for &b in body {
            if b == b'.' && prev == b'\n' {
                want.push(b'.');
            }
            want.push(b);
            prev = b;
        }
        want.extend_from_slice(b"\r\n.\r\n");
        let want = String::from_utf8(want).unwrap();
        for cut1 in 0..=body.len() {
            for cut2 in cut1..=body.len() {
                let mut h = in_body();
                for part in [&body[..cut1], &body[cut1..cut2], &body[cut2..]] {
                    assert_eq!(h.s.send_body(part), part.len());
                }
                h.s.finish_body(h.t0);
                assert_eq!(h.sent(), want, "cuts at {cut1}, {cut2}");
            }
        }
    }

    #[test]
    fn body_ending_in_crlf_gets_no_extra_line() {
        let mut h = in_body();
        h.s.send_body(b"a\r\n");
        h.s.finish_body(h.t0);
        assert_eq!(h.sent(), "a\r\n.\r\n");
    }

    #[test]
    fn empty_body_and_bare_lf_ending() {
        let mut h = in_body();
        h.s.finish_body(h.t0);
        assert_eq!(h.sent(), ".\r\n");
        let mut h = in_body();
        h.s.send_body(b"a\n.b\n");
        h.s.finish_body(h.t0);
        assert_eq!(h.sent(), "a\n..b\n\r\n.\r\n");
    }

    #[test]
    fn body_backpressure_at_high_water() {
        let mut h = in_body();
        let body = vec![b'x'; BODY_HIGH_WATER + 4000];
        let taken = h.s.send_body(&body);
        assert_eq!(taken, BODY_HIGH_WATER);
        assert_eq!(h.s.send_body(&body[taken..]), 0);
        assert_eq!(h.s.poll_transmit().len(), BODY_HIGH_WATER);
        h.s.consume_transmit(1000);
        assert_eq!(h.s.send_body(&body[taken..]), 1000);
        assert!(h.s.poll_transmit().len() <= BODY_HIGH_WATER);
        // Stuffing may go past the mark by at most one chunk's dots.
        h.s.consume_transmit(usize::MAX);
        let dots = vec![b'\n'; BODY_HIGH_WATER * 2];
        h.s.send_body(&dots);
        assert!(h.s.poll_transmit().len() <= 2 * BODY_HIGH_WATER);
    }

    #[test]
    fn send_body_outside_body_phase_takes_nothing() {
        let mut h = Harness::new(cfg());
        h.ready(&[]);
        assert_eq!(h.s.send_body(b"x"), 0);
        h.s.finish_body(h.t0);
        assert_eq!(h.sent(), "");
    }

    // ---- STARTTLS ----------------------------------------------------------

    #[test]
    fn starttls_required_but_not_offered() {
        let mut h = Harness::new(ClientConfig {
            tls: TlsPolicy::Required,
            ..cfg()
        });
        h.feed("220 hi\r\n");
        h.sent();
        h.feed(&ehlo_reply(&["PIPELINING"]));
        let ev = h.events();
        assert!(
            matches!(&ev[..], [ClientEvent::SessionFailed(RcptOutcome::Deferred(r))] if r.enhanced() == Some((4, 7, 0)) && r.own == Some(Own::Tls))
        );
        assert_eq!(h.sent(), "QUIT\r\n");
    }

    #[test]
    fn starttls_then_ehlo_again_and_injected_bytes_discarded() {
        let mut h = Harness::new(ClientConfig {
            tls: TlsPolicy::Required,
            ..cfg()
        });
        h.feed("220 hi\r\n");
        h.sent();
        h.feed(&ehlo_reply(&["STARTTLS", "X-PRE-TLS"]));
        assert_eq!(h.sent(), "STARTTLS\r\n");
        h.feed("220 go ahead\r\n250 injected\r\n250-inj");
        assert_eq!(h.events(), vec![ClientEvent::StartTls]);
        assert!(h.s.poll_timeout().is_some(), "handshake has a deadline");
        h.feed("more plaintext\r\n");
        assert_eq!(h.sent(), "");
        h.s.tls_established(h.t0);
        assert!(h.s.tls_active());
        assert!(!h.s.offers("X-PRE-TLS"), "pre-TLS extensions forgotten");
        assert_eq!(h.sent(), "EHLO client.example\r\n");
        h.feed(&ehlo_reply(&["PIPELINING"]));
        assert_eq!(h.events(), vec![ClientEvent::Ready]);
        assert!(h.s.offers("PIPELINING") && !h.s.offers("STARTTLS"));
    }

    #[test]
    fn starttls_refused_if_offered_continues_plaintext() {
        let mut h = Harness::new(ClientConfig {
            tls: TlsPolicy::IfOffered,
            ..cfg()
        });
        h.feed("220 hi\r\n");
        h.feed(&ehlo_reply(&["STARTTLS"]));
        h.sent();
        h.feed("454 4.7.0 TLS not available\r\n");
        assert_eq!(h.events(), vec![ClientEvent::Ready]);
        assert!(!h.s.tls_active());
    }

    #[test]
    fn starttls_refused_when_required_defers() {
        let mut h = Harness::new(ClientConfig {
            tls: TlsPolicy::Required,
            ..cfg()
        });
        h.feed("220 hi\r\n");
        h.feed(&ehlo_reply(&["STARTTLS"]));
        h.sent();
        h.feed("554 5.7.0 no TLS for you\r\n");
        assert_eq!(
            h.events(),
            vec![ClientEvent::SessionFailed(RcptOutcome::Deferred(reply(
                554,
                "5.7.0 no TLS for you"
            )))]
        );
        assert_eq!(h.sent(), "QUIT\r\n");
    }

    #[test]
    fn implicit_tls_skips_starttls() {
        let mut h = Harness::new(ClientConfig {
            tls: TlsPolicy::Required,
            tls_active: true,
            ..cfg()
        });
        h.ready(&["STARTTLS"]);
        assert_eq!(h.sent(), "");
    }

    // ---- AUTH ----------------------------------------------------------------------

    fn tls_auth_harness() -> Harness {
        Harness::new(ClientConfig {
            tls: TlsPolicy::Required,
            tls_active: true,
            credentials: creds(),
            ..cfg()
        })
    }

    #[test]
    fn auth_plain_exact_bytes() {
        let mut h = tls_auth_harness();
        h.feed("220 hi\r\n");
        h.sent();
        h.feed(&ehlo_reply(&["AUTH LOGIN PLAIN"]));
        // base64("\0user\0pass")
        assert_eq!(h.sent(), "AUTH PLAIN AHVzZXIAcGFzcw==\r\n");
        h.feed("235 2.7.0 ok\r\n");
        assert_eq!(h.events(), vec![ClientEvent::Ready]);
    }

    #[test]
    fn auth_plain_after_empty_challenge() {
        let mut h = tls_auth_harness();
        h.feed("220 hi\r\n");
        h.feed(&ehlo_reply(&["AUTH PLAIN"]));
        h.sent();
        h.feed("334 \r\n");
        assert_eq!(h.sent(), "AHVzZXIAcGFzcw==\r\n");
        h.feed("235 ok\r\n");
        assert_eq!(h.events(), vec![ClientEvent::Ready]);
    }

    #[test]
    fn auth_login_dialog() {
        let mut h = tls_auth_harness();
        h.feed("220 hi\r\n");
        h.sent();
        h.feed(&ehlo_reply(&["AUTH=LOGIN"]));
        assert_eq!(h.sent(), "AUTH LOGIN\r\n");
        h.feed("334 VXNlcm5hbWU6\r\n");
        assert_eq!(h.sent(), "dXNlcg==\r\n");
        h.feed("334 UGFzc3dvcmQ6\r\n");
        assert_eq!(h.sent(), "cGFzcw==\r\n");
        h.feed("235 2.7.0 ok\r\n");
        assert_eq!(h.events(), vec![ClientEvent::Ready]);
    }

    #[test]
    fn auth_535_defers() {
        let mut h = tls_auth_harness();
        h.feed("220 hi\r\n");
        h.feed(&ehlo_reply(&["AUTH PLAIN"]));
        h.sent();
        h.feed("535 5.7.8 bad credentials\r\n");
        assert_eq!(
            h.events(),
            vec![ClientEvent::SessionFailed(RcptOutcome::Deferred(reply(
                535,
                "5.7.8 bad credentials"
            )))]
        );
        assert_eq!(h.sent(), "QUIT\r\n");
    }

    #[test]
    fn auth_without_usable_mechanism_defers() {
        let mut h = tls_auth_harness();
        h.feed("220 hi\r\n");
        h.feed(&ehlo_reply(&["AUTH CRAM-MD5"]));
        assert!(matches!(
            h.events()[..],
            [ClientEvent::SessionFailed(RcptOutcome::Deferred(_))]
        ));
    }

    #[test]
    fn auth_refused_over_plaintext_but_allowed_with_policy_never() {
        let mut h = Harness::new(ClientConfig {
            tls: TlsPolicy::IfOffered,
            credentials: creds(),
            ..cfg()
        });
        h.feed("220 hi\r\n");
        h.sent();
        h.feed(&ehlo_reply(&["AUTH PLAIN"]));
        assert!(
            matches!(&h.events()[..], [ClientEvent::SessionFailed(RcptOutcome::Deferred(r))] if r.code == 454)
        );
        assert_eq!(h.sent(), "QUIT\r\n", "no credentials in plaintext");

        let mut h = Harness::new(ClientConfig {
            credentials: creds(),
            ..cfg()
        });
        h.feed("220 hi\r\n");
        h.sent();
        h.feed(&ehlo_reply(&["AUTH PLAIN"]));
        assert_eq!(h.sent(), "AUTH PLAIN AHVzZXIAcGFzcw==\r\n");
    }

    #[test]
    fn debug_output_hides_password() {
        let h = tls_auth_harness();
        assert!(!format!("{:?}", h.s).contains("pass\""));
    }

    // ---- time, loss, quit -------------------------------------------------------

    #[test]
    fn greeting_timeout() {
        let mut h = Harness::new(cfg());
        let deadline = h.s.poll_timeout().expect("deadline");
        assert_eq!(deadline, h.t0 + Duration::from_secs(300));
        h.s.handle_timeout(deadline - Duration::from_secs(1));
        assert!(h.events().is_empty());
        h.s.handle_timeout(deadline);
        assert!(!h.s.greeted());
        let ev = h.events();
        assert!(
            matches!(&ev[..], [ClientEvent::SessionFailed(RcptOutcome::Deferred(r))] if r.enhanced() == Some((4, 4, 2)) && r.own == Some(Own::Timeout("the greeting")) && r.text() == "4.4.2 timeout waiting for the greeting")
        );
        assert!(h.s.is_closed());
    }

    #[test]
    fn final_dot_uses_final_timeout() {
        let mut h = in_body();
        let later = h.t0 + Duration::from_secs(50);
        h.s.finish_body(later);
        assert_eq!(h.s.poll_timeout(), Some(later + Duration::from_secs(600)));
        h.s.handle_timeout(later + Duration::from_secs(600));
        let ev = h.events();
        assert!(
            matches!(&done(&ev)[..], [RcptOutcome::Deferred(r)] if r.enhanced() == Some((4, 4, 2)) && r.own == Some(Own::Timeout("the reply to the end of the message")))
        );
        assert!(matches!(ev.last(), Some(ClientEvent::SessionFailed(_))));
    }

    #[test]
    fn reply_resets_deadline() {
        let mut h = Harness::new(cfg());
        let later = h.t0 + Duration::from_secs(100);
        assert!(!h.s.greeted());
        h.s.handle_input(b"220 hi\r\n", later);
        assert!(h.s.greeted());
        assert_eq!(h.s.poll_timeout(), Some(later + Duration::from_secs(300)));
        h.s.handle_input(&ehlo_reply(&[]).into_bytes(), later);
        assert_eq!(h.s.poll_timeout(), None, "idle between transactions");
    }

    #[test]
    fn connection_lost_mid_transaction() {
        let mut h = Harness::new(cfg());
        h.ready(&[]);
        h.start(txn(&["b@y"]));
        h.s.connection_lost(h.t0);
        let ev = h.events();
        assert!(
            matches!(&done(&ev)[..], [RcptOutcome::Deferred(r)] if r.text().contains("connection lost") && r.own == Some(Own::ConnectionLost))
        );
        assert!(matches!(ev.last(), Some(ClientEvent::SessionFailed(_))));
        assert!(h.s.is_closed());
        h.s.connection_lost(h.t0);
        assert!(h.events().is_empty());
    }

    #[test]
    fn quit_after_ready_and_loss_after_quit_is_quiet() {
        let mut h = Harness::new(cfg());
        h.ready(&[]);
        h.s.quit();
        assert_eq!(h.sent(), "QUIT\r\n");
        assert!(h.s.is_closed());
        h.s.connection_lost(h.t0);
        assert!(h.events().is_empty());
    }

    /// A server that stops reading mid-body: the body has a deadline that
    /// moves while bytes go out (it had none).
    #[test]
    fn stalled_body_times_out() {
        let mut h = in_body();
        let t1 = h.t0 + Duration::from_secs(10);
        assert_eq!(h.s.send_body(b"some of the body\r\n"), 18);
        h.s.note_progress(t1);
        assert_eq!(h.s.poll_timeout(), Some(t1 + Duration::from_secs(300)));
        h.s.handle_timeout(t1 + Duration::from_secs(299));
        assert!(!h.s.is_closed());
        h.s.handle_timeout(t1 + Duration::from_secs(300));
        assert!(h.s.is_closed());
        assert!(h.s.poll_transmit().is_empty(), "nothing left to flush");
        let ev = h.events();
        assert!(matches!(&done(&ev)[..], [RcptOutcome::Deferred(_)]));
    }

    /// QUIT that the server never takes: the session closes anyway.
    #[test]
    fn unflushed_quit_times_out() {
        let mut h = Harness::new(cfg());
        h.ready(&[]);
        h.s.quit();
        assert!(h.s.is_closed() && !h.s.poll_transmit().is_empty());
        let d = h.s.poll_timeout().expect("Quitting has a deadline");
        h.s.handle_timeout(d);
        assert!(h.s.poll_transmit().is_empty());
        assert_eq!(h.s.poll_timeout(), None);
    }

    #[test]
    fn quit_mid_body_sends_nothing_and_defers() {
        let mut h = in_body();
        h.s.send_body(b"partial");
        h.sent();
        h.s.quit();
        assert_eq!(h.sent(), "", "a QUIT now would be body text");
        assert!(matches!(&done(&h.events())[..], [RcptOutcome::Deferred(_)]));
        assert!(h.s.is_closed());
    }
}
