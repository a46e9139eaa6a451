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
//! - RFC 8689 REQUIRETLS: a transaction that needs it is sent with the
//!   parameter, and only in a TLS session to a server that offers it;
//!   otherwise it fails permanently (5.7.30) before MAIL.
//! - RFC 3030 CHUNKING: to a server that offers it, the message goes as
//!   `BDAT n` chunks of about [`BDAT_CHUNK`] octets and a final
//!   `BDAT n LAST` instead of DATA: no dot-stuffing, no 354 round trip.
//!   The chunks are cut from the stream as it is sent (after the header
//!   rewriting and the 7-bit downgrade, which change the length), so each
//!   length is known when its command is written and memory stays bounded.
//!   Chunks are pipelined when PIPELINING is offered, else each waits for
//!   the reply to the one before. A chunk refused ends the transaction
//!   (the accepted recipients get that reply), RSET follows, and the
//!   replies to chunks already sent are read and ignored. See
//!   [`chunking`].
//! - RFC 3207 STARTTLS: after the 220 no further plaintext byte is read
//!   (bytes already received are discarded, against command injection), and
//!   EHLO is sent again with the pre-TLS extensions forgotten.
//! - RFC 4954 AUTH with PLAIN (RFC 4616, initial response) or LOGIN.
//! - RFC 2033 LMTP ([`ClientConfig::lmtp`]): the same dialogue with LHLO
//!   for EHLO (no HELO fallback) and, after the final dot, one reply per
//!   accepted recipient, in RCPT order, each that recipient's outcome. A
//!   session that dies between those replies defers the recipients still
//!   without one (the server may have delivered them: a duplicate beats a
//!   loss, as after a lost reply to the dot in SMTP).
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
//! Not supported: BINARYMIME (RFC 3030 §3), BDAT over LMTP, DSN
//! parameters, other SASL mechanisms (CRAM-MD5…), SMTPUTF8 downgrade.
//! The data-block timeout (socket write progress during the body) is
//! the driver's, because only it sees writes complete; likewise the wait
//! after QUIT.

use std::collections::VecDeque;

use super::mime7bit::{Downgrade, Unconvertible};
use crate::rewrite::header::HeaderRewriter;

pub use crate::auth::base64_encode;
use std::time::{Duration, Instant};

mod chunking;
pub use chunking::BDAT_CHUNK;
mod oauth;
#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod oauth_tests;
mod own_replies;
mod params;
mod reply;
mod setup;
use own_replies::*;
use reply::{parse_extensions, parse_reply_line, Extension};
pub use reply::{Own, ServerReply};

/// Longest reply line accepted, CRLF included (RFC 5321 §4.5.3.1.5).
pub const MAX_REPLY_LINE: usize = 512;
/// Most lines in one (multi-line) reply; an EHLO reply has one per extension.
pub const MAX_REPLY_LINES: usize = 100;
/// `send_body` takes nothing while this many bytes wait to be written.
pub const BODY_HIGH_WATER: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsPolicy {
    Never,
    IfOffered,
    Required,
}

pub use crate::auth::Credentials;
use crate::routes::AuthMechanism;

#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub helo_name: String,
    pub tls: TlsPolicy,
    /// Implicit TLS is already on (port 465 style).
    pub tls_active: bool,
    pub credentials: Option<Credentials>,
    pub reply_timeout: Duration,
    /// Wait for the reply after the body's final dot (in LMTP, for each
    /// recipient's reply).
    pub final_timeout: Duration,
    /// Speak LMTP (RFC 2033) instead of SMTP.
    pub lmtp: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    /// Without brackets; "" is the null sender.
    pub sender: String,
    pub recipients: Vec<String>,
    pub size: u64,
    pub eight_bit: bool,
    pub smtputf8: bool,
    /// RFC 8689: `MAIL ... REQUIRETLS`; only under TLS to a server that
    /// offers it, else every recipient fails with 5.7.30. (Whether the
    /// certificate was verified is the caller's to check: the session
    /// does not see the handshake.)
    pub requiretls: bool,
    /// Locally originated mail leaving the host: the `From:`/`Sender:`
    /// addresses of the body are rewritten with this table (`rewrite`).
    pub rewrite: Option<crate::rewrite::SenderMap>,
    /// DKIM signatures of the message as it will be sent; the one that
    /// matches (downgraded or not) goes in front of the message.
    pub dkim: Option<std::rc::Rc<crate::dkim::sign::Signatures>>,
    /// RFC 3461 parameters, sent only to a server that offers DSN;
    /// per recipient in the order of `recipients`.
    pub dsn: super::dsn::DsnParams,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RcptOutcome {
    Delivered(ServerReply),
    Deferred(ServerReply),
    Failed(ServerReply),
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

/// The command a server reply answered, as `tern test`'s diagnosis names
/// it. The machine decides it from what it sent ([`Expect`]), never from
/// the transcript's text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Greeting,
    /// EHLO or HELO.
    Ehlo,
    StartTls,
    /// AUTH and its continuation lines.
    Auth,
    Mail,
    Rcpt,
    /// DATA, or a BDAT chunk that is not the last.
    Data,
    /// The end of the message: the final dot, or `BDAT n LAST`.
    Dot,
    /// RSET, QUIT, a reply to a chunk sent after a refusal.
    Other,
}

/// What one session showed, beyond its outcomes: the diagnosis of
/// `tern test` reads it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionFacts {
    /// The command the session's first negative reply (4xx/5xx) answered.
    pub refused_at: Option<Stage>,
    /// The last successful EHLO reply listed STARTTLS.
    pub starttls_offered: Option<bool>,
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
    /// The reply to `AUTH XOAUTH2`/`AUTH OAUTHBEARER` with the initial
    /// response: 235, or a 334 error challenge (JSON) answered by
    /// `oauth::ERROR_ACK` before the final 5xx.
    AuthOAuth(AuthMechanism),
    AuthResult,
    Mail,
    Rcpt(usize),
    Data,
    /// The reply to a `BDAT n` chunk that is not the last one.
    Bdat,
    /// The reply to a chunk sent before an earlier one was refused.
    StaleChunk,
    /// The final reply: after the body's dot, or to `BDAT n LAST`.
    DataEnd,
    /// LMTP: the reply after the dot for the recipient at this index.
    LmtpDataEnd(usize),
    /// Final reply to an empty body sent only to leave a bogus 354.
    DiscardedDataEnd,
    Rset,
    Quit,
}

impl Expect {
    fn stage(self) -> Stage {
        match self {
            Expect::Greeting => Stage::Greeting,
            Expect::Ehlo | Expect::Helo => Stage::Ehlo,
            Expect::StartTls => Stage::StartTls,
            Expect::AuthPlain
            | Expect::AuthLoginUser
            | Expect::AuthLoginPassword
            | Expect::AuthOAuth(_)
            | Expect::AuthResult => Stage::Auth,
            Expect::Mail => Stage::Mail,
            Expect::Rcpt(_) => Stage::Rcpt,
            Expect::Data | Expect::Bdat => Stage::Data,
            Expect::DataEnd | Expect::LmtpDataEnd(_) => Stage::Dot,
            Expect::StaleChunk | Expect::DiscardedDataEnd | Expect::Rset | Expect::Quit => {
                Stage::Other
            }
        }
    }

    fn carries_credentials(self) -> bool {
        matches!(
            self,
            Expect::AuthPlain
                | Expect::AuthLoginPassword
                | Expect::AuthOAuth(_)
                | Expect::AuthResult
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
    /// RFC 3461 ` NOTIFY= ORCPT=` of each recipient (no list without DSN:
    /// a missing entry reads as none).
    rcpt_params: Vec<String>,
    states: Vec<RcptState>,
    pipelined: bool,
    mail_sent: bool,
    mail_accepted: bool,
    next_rcpt: usize,
    /// DATA was sent, or (`chunking`) the body was asked for.
    data_sent: bool,
    /// The body goes in BDAT chunks (the server offers CHUNKING).
    chunking: bool,
    /// 8-bit body to a 7-bit server: the MIME downgrade.
    downgrade: Option<Downgrade>,
    /// Sender rewriting of the header, before the downgrade.
    rewrite: Option<HeaderRewriter>,
    /// The `DKIM-Signature` field sent before the message (the one for
    /// the bytes this transaction sends: downgraded or not).
    dkim_field: Option<Vec<u8>>,
}

impl ActiveTransaction {
    fn any_accepted(&self) -> bool {
        self.states.iter().any(|s| matches!(s, RcptState::Accepted))
    }

    /// LMTP: the reply after the dot for one accepted recipient.
    fn decide_one(&mut self, index: usize, outcome: RcptOutcome) {
        if let Some(state @ RcptState::Accepted) = self.states.get_mut(index) {
            *state = RcptState::Decided(outcome);
        }
    }

    /// Decides every recipient that was (or was not) accepted; the last
    /// one gets `outcome` itself, the others copies.
    fn decide_where(&mut self, accepted: bool, outcome: RcptOutcome) {
        let hit = |state: &RcptState| match state {
            RcptState::Pending => !accepted,
            RcptState::Accepted => accepted,
            RcptState::Decided(_) => false,
        };
        let mut left = self.states.iter().filter(|s| hit(s)).count();
        let mut outcome = Some(outcome);
        for state in &mut self.states {
            if hit(state) {
                left -= 1;
                let o = if left == 0 {
                    outcome.take()
                } else {
                    outcome.clone()
                };
                if let Some(o) = o {
                    *state = RcptState::Decided(o);
                }
            }
        }
    }

    /// One outcome per recipient; `undecided` is called for each one
    /// without (only then).
    fn into_outcomes(self, undecided: impl Fn() -> RcptOutcome) -> Vec<RcptOutcome> {
        self.states
            .into_iter()
            .map(|s| match s {
                RcptState::Decided(o) => o,
                RcptState::Pending | RcptState::Accepted => undecided(),
            })
            .collect()
    }
}

/// Outcome of a negative reply: 5yz fails, anything else defers.
/// A command (never one with credentials) formatted straight into the
/// output, with its debug log line.
fn push_command(out: &mut Vec<u8>, line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    log::debug!("smtp-client: > {line}");
    // Writing into a Vec cannot fail.
    let _ = out.write_fmt(line);
    out.extend_from_slice(b"\r\n");
}

fn failure_outcome(reply: ServerReply) -> RcptOutcome {
    if reply.is_permanent() {
        RcptOutcome::Failed(reply)
    } else {
        RcptOutcome::Deferred(reply)
    }
}

/// Outcome of the reply after the final dot: 2yz delivered.
fn data_end_outcome(reply: ServerReply) -> RcptOutcome {
    if reply.class() == 2 {
        RcptOutcome::Delivered(reply)
    } else {
        failure_outcome(reply)
    }
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
    /// The lines of the reply being read, joined with `\n`, and their count.
    reply_raw: String,
    reply_count: usize,
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
    /// Header-rewritten body bytes on their way to the downgrade (reused).
    rewritten: Vec<u8>,
    /// BDAT: the chunk being filled, sent once its length is reached.
    chunk: Vec<u8>,
    /// The one SASL mechanism allowed (a route's `auth=`); `None`: PLAIN,
    /// else LOGIN, as offered.
    auth_only: Option<crate::routes::AuthMechanism>,
    /// The server's name and port, for OAUTHBEARER's `host=`/`port=`.
    server: Option<(String, u16)>,
    /// An XOAUTH2/OAUTHBEARER exchange was refused: the token is bad.
    oauth_rejected: bool,
    facts: SessionFacts,
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
            reply_raw: String::new(),
            reply_count: 0,
            events: VecDeque::new(),
            extensions: Vec::new(),
            tls_active,
            starttls_refused: false,
            plain_response_resent: false,
            greeted: false,
            txn: None,
            body_tail: *b"\r\n",
            converted: Vec::new(),
            rewritten: Vec::new(),
            chunk: Vec::new(),
            auth_only: None,
            server: None,
            oauth_rejected: false,
            facts: SessionFacts::default(),
        }
    }

    /// What the session showed so far (`tern test`'s evidence).
    pub fn facts(&self) -> SessionFacts {
        self.facts
    }

    /// The server's host name and port as configured (OAUTHBEARER sends
    /// them, RFC 7628 §3.1).
    pub fn set_server(&mut self, host: &str, port: u16) {
        self.server = Some((host.to_string(), port));
    }

    /// An XOAUTH2 or OAUTHBEARER authentication was refused: the access
    /// token should not be used again.
    pub fn oauth_rejected(&self) -> bool {
        self.oauth_rejected
    }

    /// Authenticates only with `mechanism` (a route's `auth=`); a server
    /// that does not offer it fails the session as for no mechanism.
    pub fn restrict_auth(&mut self, mechanism: crate::routes::AuthMechanism) {
        self.auth_only = Some(mechanism);
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
                // Taken for the call and put back, so its capacity serves
                // every line of the session.
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.handle_line(&line, now);
                line.clear();
                self.line = line;
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
        if let Some(refusal) = self.refusal_before_mail(&txn) {
            self.events.push_back(fail_all(refusal));
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

        let downgrading = txn.eight_bit && !self.offers("8BITMIME") && !self.offers("SMTPUTF8");
        let dkim_field = txn
            .dkim
            .as_ref()
            .and_then(|s| s.field(downgrading))
            .map(<[u8]>::to_vec);
        let dkim_len = dkim_field.as_ref().map_or(0, |f| f.len() as u64);
        let (mail_command, rcpt_params) = self.mail_and_rcpt_params(&txn, dkim_len);
        let downgrade = downgrading.then(Downgrade::new);
        let pipelined = self.offers("PIPELINING");
        // LMTP's BDAT (RFC 2033 §4.3 with RFC 3030) is not spoken: DATA.
        let chunking = self.offers("CHUNKING") && !self.cfg.lmtp;
        self.phase = Phase::Transaction;
        self.txn = Some(ActiveTransaction {
            mail_command,
            recipients: txn.recipients,
            rcpt_params,
            states,
            pipelined,
            mail_sent: false,
            mail_accepted: false,
            next_rcpt: 0,
            data_sent: false,
            chunking,
            downgrade,
            rewrite: txn.rewrite.map(HeaderRewriter::new),
            dkim_field,
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
        if self.phase != Phase::Body || self.out.len() >= BODY_HIGH_WATER || self.chunk_waits() {
            return 0;
        }
        let take = chunk.len().min(BODY_HIGH_WATER - self.out.len());
        let chunk = chunk.get(..take).unwrap_or(chunk);
        let mut rewritten = std::mem::take(&mut self.rewritten);
        rewritten.clear();
        match self.txn.as_mut().and_then(|t| t.rewrite.as_mut()) {
            Some(rw) => {
                rw.push(chunk, &mut rewritten);
                self.convert_and_stuff(&rewritten);
            }
            None => self.convert_and_stuff(chunk),
        }
        self.rewritten = rewritten;
        take
    }

    /// Body bytes through the 7-bit downgrade (when on) into the output.
    fn convert_and_stuff(&mut self, chunk: &[u8]) {
        if self.phase != Phase::Body {
            return;
        }
        match self.txn.as_mut().and_then(|t| t.downgrade.as_mut()) {
            Some(conv) => {
                let mut converted = std::mem::take(&mut self.converted);
                converted.clear();
                match conv.push(chunk, &mut converted) {
                    Ok(()) => self.emit_body(&converted),
                    Err(why) => self.abort_unconvertible(why),
                }
                self.converted = converted;
            }
            None => self.emit_body(chunk),
        }
    }

    /// The body cannot be sent to this 7-bit server: the recipients it
    /// accepted fail with 5.6.3, and the connection is dropped without the
    /// final dot (nothing else can end DATA; the server must discard the
    /// unterminated message, RFC 5321 §4.1.1.4).
    fn abort_unconvertible(&mut self, why: Unconvertible) {
        log::debug!("smtp-client: body not sent: {why}");
        let reply = ServerReply {
            code: NOT_CONVERTIBLE_CODE,
            raw: format!("{NOT_CONVERTIBLE_TEXT} {why}"),
            own: Some(Own::Client),
        };
        if let Some(active) = self.txn.take() {
            let outcomes = active.into_outcomes(|| RcptOutcome::Failed(reply.clone()));
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
        if let Some(rw) = self.txn.as_mut().and_then(|t| t.rewrite.as_mut()) {
            let mut rewritten = std::mem::take(&mut self.rewritten);
            rewritten.clear();
            rw.finish(&mut rewritten);
            self.convert_and_stuff(&rewritten);
            self.rewritten = rewritten;
            if self.phase != Phase::Body {
                return;
            }
        }
        if let Some(conv) = self.txn.as_mut().and_then(|t| t.downgrade.as_mut()) {
            let mut converted = std::mem::take(&mut self.converted);
            converted.clear();
            let done = conv.finish(&mut converted);
            match done {
                Ok(()) => self.emit_body(&converted),
                Err(why) => self.abort_unconvertible(why),
            }
            self.converted = converted;
            if self.phase != Phase::Body {
                return;
            }
        }
        if self.body_tail != *b"\r\n" {
            self.emit_body(b"\r\n");
        }
        self.phase = Phase::Transaction;
        if self.txn.as_ref().is_some_and(|t| t.chunking) {
            self.send_chunk(true, now);
            return;
        }
        let accepted: Vec<usize> = match self.txn.as_ref() {
            Some(active) if self.cfg.lmtp => active
                .states
                .iter()
                .enumerate()
                .filter(|(_, s)| matches!(s, RcptState::Accepted))
                .map(|(i, _)| i)
                .collect(),
            _ => Vec::new(),
        };
        match accepted.split_first() {
            Some((first, rest)) => {
                self.send_command(".", Expect::LmtpDataEnd(*first), now);
                self.expected
                    .extend(rest.iter().map(|&i| Expect::LmtpDataEnd(i)));
            }
            None => self.send_command(".", Expect::DataEnd, now),
        }
    }

    /// The TLS handshake after STARTTLS succeeded.
    pub fn tls_established(&mut self, now: Instant) {
        if self.phase != Phase::AwaitingTls {
            return;
        }
        self.line.clear();
        self.reply_code = None;
        self.reply_raw.clear();
        self.reply_count = 0;
        self.extensions.clear();
        self.tls_active = true;
        self.phase = Phase::Setup;
        self.send_hello(now);
    }

    /// EHLO, or LHLO in LMTP (RFC 2033 §4.1).
    fn send_hello(&mut self, now: Instant) {
        let verb = if self.cfg.lmtp { "LHLO" } else { "EHLO" };
        let line = format!("{verb} {}", self.cfg.helo_name);
        self.send_command(&line, Expect::Ehlo, now);
    }

    /// Sends QUIT (a transaction in flight is deferred). Mid-body or
    /// mid-handshake nothing can be sent: the session just closes.
    pub fn quit(&mut self) {
        if matches!(self.phase, Phase::Closed | Phase::Quitting) {
            return;
        }
        if let Some(active) = self.txn.take() {
            let outcomes = active.into_outcomes(|| RcptOutcome::Deferred(synth(ABORTED)));
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
                Expect::DataEnd | Expect::LmtpDataEnd(_) | Expect::DiscardedDataEnd => {
                    self.cfg.final_timeout
                }
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
                let reply = ServerReply {
                    code: TIMEOUT_CODE,
                    raw: format!("{TIMEOUT_TEXT} {what}"),
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
                | Expect::AuthOAuth(_)
                | Expect::AuthResult,
            ) => "the reply to AUTH",
            Some(Expect::Mail) => "the reply to MAIL",
            Some(Expect::Rcpt(_)) => "the reply to RCPT",
            Some(Expect::Data) => "the reply to DATA",
            Some(Expect::Bdat | Expect::StaleChunk) => "the reply to BDAT",
            Some(Expect::DataEnd | Expect::LmtpDataEnd(_) | Expect::DiscardedDataEnd) => {
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
        if self.reply_count >= MAX_REPLY_LINES {
            log::debug!("smtp-client: reply over {MAX_REPLY_LINES} lines");
            self.fail_session(synth(PROTOCOL_ERROR), false);
            return;
        }
        self.reply_code = Some(code);
        if self.reply_count > 0 {
            self.reply_raw.push('\n');
        }
        self.reply_raw.push_str(&text);
        self.reply_count += 1;
        if last {
            self.reply_code = None;
            self.reply_count = 0;
            let reply = ServerReply {
                code,
                raw: std::mem::take(&mut self.reply_raw),
                own: None,
            };
            self.handle_reply(reply, now);
        }
    }

    fn handle_reply(&mut self, reply: ServerReply, now: Instant) {
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
        if reply.code >= 400 && self.facts.refused_at.is_none() && expect.stage() != Stage::Other {
            self.facts.refused_at = Some(expect.stage());
        }
        if reply.code == 421 {
            self.fail_session(reply, false);
            return;
        }
        match expect {
            Expect::Greeting => {
                self.greeted = true;
                if reply.class() == 2 {
                    self.send_hello(now);
                } else {
                    self.fail_session(reply, true);
                }
            }
            Expect::Ehlo => {
                if reply.class() == 2 {
                    self.extensions = parse_extensions(reply.lines());
                    self.facts.starttls_offered = Some(self.offers("STARTTLS"));
                    self.setup_tls(now);
                } else if reply.is_permanent() && !self.cfg.lmtp {
                    let helo = format!("HELO {}", self.cfg.helo_name);
                    self.send_command(&helo, Expect::Helo, now);
                } else {
                    self.fail_session(reply, true);
                }
            }
            Expect::Helo => {
                if reply.class() == 2 {
                    self.extensions.clear();
                    self.facts.starttls_offered = Some(false);
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
            Expect::AuthOAuth(m) if reply.class() == 3 => {
                // The error challenge (base64 JSON); acknowledging it
                // brings the final 5xx.
                self.oauth_rejected = true;
                let ack = oauth::error_ack(m);
                self.send_command(ack, Expect::AuthResult, now);
            }
            Expect::AuthOAuth(_) if reply.class() != 2 => {
                self.oauth_rejected = true;
                self.fail_session(reply, true);
            }
            Expect::AuthPlain
            | Expect::AuthLoginUser
            | Expect::AuthLoginPassword
            | Expect::AuthOAuth(_)
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
            Expect::Bdat => self.handle_bdat_reply(&reply, now),
            Expect::StaleChunk => {}
            Expect::DataEnd => {
                if let Some(mut active) = self.txn.take() {
                    active.decide_where(true, data_end_outcome(reply));
                    self.txn = Some(active);
                }
                self.finish_transaction(false, now);
            }
            Expect::LmtpDataEnd(i) => {
                if let Some(active) = self.txn.as_mut() {
                    active.decide_one(i, data_end_outcome(reply.clone()));
                }
                if !matches!(self.expected.front(), Some(Expect::LmtpDataEnd(_))) {
                    self.finish_transaction(false, now);
                }
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

    fn handle_mail_reply(&mut self, reply: &ServerReply, now: Instant) {
        let Some(active) = self.txn.as_mut() else {
            return;
        };
        if reply.class() == 2 {
            active.mail_accepted = true;
            return;
        }
        active.decide_where(false, failure_outcome(reply.clone()));
        if !active.pipelined {
            self.finish_transaction(false, now);
        }
        // Pipelined: the RCPT and DATA replies still come and are ignored.
    }

    fn handle_rcpt_reply(&mut self, index: usize, reply: &ServerReply) {
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
                RcptState::Decided(failure_outcome(reply.clone()))
            };
        }
    }

    fn handle_data_reply(&mut self, reply: &ServerReply, now: Instant) {
        let Some(active) = self.txn.as_mut() else {
            return;
        };
        let any_accepted = active.any_accepted();
        if reply.class() == 3 {
            if any_accepted {
                self.start_body();
            } else {
                // RFC 2920 §3.1 says the server must refuse this DATA; leave
                // with an empty body, then reset.
                self.send_command(".", Expect::DiscardedDataEnd, now);
            }
            return;
        }
        let rset = active.mail_accepted;
        if any_accepted {
            active.decide_where(true, failure_outcome(reply.clone()));
        }
        self.finish_transaction(rset, now);
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
        // Written straight into the output (as `send_command` would, one
        // by one): no string per command.
        if self.expected.is_empty() {
            self.wait_started = now;
        }
        push_command(&mut self.out, format_args!("{}", active.mail_command));
        self.expected.push_back(Expect::Mail);
        for (i, (rcpt, state)) in active.recipients.iter().zip(&active.states).enumerate() {
            if matches!(state, RcptState::Pending) {
                let params = active.rcpt_params.get(i).map_or("", |p| p.as_str());
                push_command(&mut self.out, format_args!("RCPT TO:<{rcpt}>{params}"));
                self.expected.push_back(Expect::Rcpt(i));
            }
        }
        // BDAT waits for the RCPT replies (the body is asked for then).
        if !active.chunking {
            push_command(&mut self.out, format_args!("DATA"));
            self.expected.push_back(Expect::Data);
            active.data_sent = true;
        }
        active.mail_sent = true;
        active.next_rcpt = active.recipients.len();
    }

    /// Without PIPELINING: the next command once every reply is in. With
    /// it and CHUNKING: the body once the pipelined group is answered.
    fn advance_lockstep(&mut self, now: Instant) {
        let Some(active) = self.txn.as_mut() else {
            return;
        };
        if active.pipelined && !active.chunking {
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
                    "RCPT TO:<{}>{}",
                    active.recipients.get(index).map_or("", |r| r.as_str()),
                    active.rcpt_params.get(index).map_or("", |p| p.as_str())
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
            if active.chunking {
                self.start_body();
            } else {
                self.send_command("DATA", Expect::Data, now);
            }
        } else {
            // Pipelined, MAIL may have been refused too: nothing to reset.
            let rset = active.mail_accepted;
            self.finish_transaction(rset, now);
        }
    }

    fn finish_transaction(&mut self, rset: bool, now: Instant) {
        if let Some(active) = self.txn.take() {
            let outcomes = active.into_outcomes(|| RcptOutcome::Deferred(synth(PROTOCOL_ERROR)));
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
    fn fail_session(&mut self, reply: ServerReply, send_quit: bool) {
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
            let outcomes = active.into_outcomes(|| outcome.clone());
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

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)] // tests index fixed data
mod tests;
