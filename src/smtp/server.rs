//! The SMTP server session, sans-IO (RFC 5321 §3, §4; RFC 1870 SIZE,
//! RFC 6152 8BITMIME, RFC 2920 PIPELINING, RFC 2034 ENHANCEDSTATUSCODES,
//! RFC 3030 CHUNKING).
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
//! | `Command`    | a command line                             | DATA, BDAT, QUIT, too many errors, timeout |
//! | `SpoolOpen`  | the driver: `data_started` / `data_refused`| either call |
//! | `Data`       | message octets until `CRLF.CRLF`           | end of data (→ `Commit` or error reply) |
//! | `Chunk`      | the rest of a BDAT chunk's octets          | its last octet (→ 250, or `Commit` after LAST) |
//! | `SkipChunk`  | the rest of a refused BDAT chunk, thrown away | its last octet |
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
//! CHUNKING (RFC 3030): `BDAT n [LAST]` is followed by exactly n octets,
//! which the session counts off the input (pipelined commands may follow in
//! the same read) and passes through the DATA decoder in chunked mode, so
//! the `Received:` header, the submission fix-ups, the limits and the spool
//! file are those of DATA. The first chunk opens the spool file
//! (`DataStart`); between chunks the decoder waits in `chunks`; after
//! `LAST` the message commits like DATA (250 only once durable). A chunk
//! that cannot be taken (no MAIL/RCPT: 503; past `max_message_size`: 552;
//! spool trouble) is still consumed to its last octet, so the session stays
//! in step, and the transaction is over. DATA after BDAT is 503; RSET,
//! HELO/EHLO and STARTTLS discard the chunks. BINARYMIME is not offered.
//!
//! SMTPUTF8 (RFC 6531): offered in EHLO; `MAIL ... SMTPUTF8` lets the
//! transaction use UTF-8 paths (a path with non-ASCII text in a
//! transaction without it gets 553 5.6.7) and is stored with the message
//! (see `Envelope::smtputf8`).
//!
//! REQUIRETLS (RFC 8689 §2): listed in EHLO only in a session under TLS
//! (STARTTLS or implicit); `MAIL ... REQUIRETLS` outside TLS gets
//! 530 5.7.10 (`reply::REQUIRETLS_NEEDS_TLS`), under TLS it is stored
//! with the message (`Envelope::requiretls`). The `TLS-Required: No`
//! header field (RFC 8689 §5) is not acted on.
//!
//! DSN (RFC 3461): offered in EHLO; `RET`/`ENVID` on MAIL and
//! `NOTIFY`/`ORCPT` on RCPT are parsed (`smtp::dsn`) into the envelope.
//!
//! Not supported: BINARYMIME.

use std::collections::VecDeque;
use std::io::Write as _;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::address::Address;
use super::command::{parse_command, Body, Command, MailParams, PathText, RcptParams};
use super::data::{DataDecoder, DataSummary, MAX_LINE};
use super::dsn::{DsnMail, DsnRcpt};
use super::reply::{self, Reply};
use crate::delivery::{push_unique_taking, Destination};

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

/// Credentials to verify ([`Event::Authenticate`]).
pub use crate::auth::Credentials;

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
    /// The same, knowing the envelope sender (`None`: `<>`), for policies
    /// that depend on it (a `from:` route to `local`); by default the
    /// sender does not matter.
    fn check_recipient_from(
        &self,
        sender: Option<&Address>,
        rcpt: &Address,
        relay_allowed: bool,
    ) -> Result<Vec<Destination>, Reply> {
        let _ = sender;
        self.check_recipient(rcpt, relay_allowed)
    }
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
    /// The client said `MAIL ... SMTPUTF8`: UTF-8 paths and header fields
    /// may be in the message, and it needs SMTPUTF8 on the way out when
    /// it has any (see `outbound::Job::needs_smtputf8`).
    pub smtputf8: bool,
    /// The client said `MAIL ... REQUIRETLS` (RFC 8689, accepted only
    /// under TLS): relay only over verified TLS to a hop offering it.
    pub requiretls: bool,
    /// `MAIL ... RET= ENVID=` (RFC 3461).
    pub dsn: DsnMail,
    /// `RCPT ... NOTIFY= ORCPT=` by the recipient as written in
    /// `destinations`; only recipients that gave any.
    pub rcpt_dsn: Vec<(String, DsnRcpt)>,
}

impl Envelope {
    /// The DSN parameters given with this recipient (as in `destinations`).
    pub fn dsn_for(&self, original: &str) -> DsnRcpt {
        self.rcpt_dsn
            .iter()
            .find(|(o, _)| o == original)
            .map(|(_, d)| d.clone())
            .unwrap_or_default()
    }
}

/// A BDAT command's chunk, waiting for the spool file to open.
#[derive(Clone, Copy, Debug)]
struct ChunkStart {
    size: u64,
    last: bool,
}

#[derive(Debug)]
enum State {
    Command,
    /// `chunk`: the spool file is for BDAT, whose octets wait in the input.
    SpoolOpen {
        chunk: Option<ChunkStart>,
    },
    Data(DataDecoder),
    /// `left` octets of a BDAT chunk of `size` remain; they go through
    /// `ServerSession::chunks`.
    Chunk {
        left: u64,
        size: u64,
        last: bool,
    },
    /// `left` octets of a refused chunk remain to be thrown away.
    SkipChunk {
        left: u64,
    },
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
    /// Shared by every session of the daemon (no copy per connection).
    cfg: std::rc::Rc<SessionConfig>,
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
    /// BDAT: the message in progress (its spool file is open) between and
    /// during chunks.
    chunks: Option<DataDecoder>,
    /// BDAT: the spool failed after a chunk was answered; the next BDAT of
    /// the transaction gets this reply.
    chunk_failure: Option<Reply>,
}

/// Room the body buffer gets when a message starts: the `Received:` field
/// and the first decoded reads go in without regrowing it.
const BODY_RESERVE: usize = 4096;

/// A submitted message's header section held for fix-ups at most; a longer
/// one is passed on unchanged.
pub const MAX_HELD_HEADER: usize = 64 * 1024;

impl ServerSession {
    /// A new session; the greeting is already in the output.
    pub fn new(
        cfg: impl Into<std::rc::Rc<SessionConfig>>,
        kind: ListenerKind,
        peer: IpAddr,
        relay_allowed: bool,
        now: Instant,
    ) -> ServerSession {
        let cfg = cfg.into();
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
            // Room for the greeting and the EHLO reply at once.
            out: Vec::with_capacity(256),
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
            chunks: None,
            chunk_failure: None,
        };
        reply::write_greeting(&mut s.out, s.esmtp, &s.cfg.hostname);
        s
    }

    /// A session refused at accept time (too many connections): it only
    /// says 421 and closes.
    pub fn refuse(
        cfg: impl Into<std::rc::Rc<SessionConfig>>,
        peer: IpAddr,
        why: Reply,
        now: Instant,
    ) -> ServerSession {
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
                State::SpoolOpen { .. }
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
                State::Data(_) => {
                    let State::Data(mut dec) = std::mem::replace(&mut self.state, State::Command)
                    else {
                        break;
                    };
                    used += self.feed(&mut dec, input.get(used..).unwrap_or_default());
                    let done = dec.is_done();
                    self.state = State::Data(dec);
                    if done {
                        self.end_of_data();
                    }
                }
                State::Chunk { left, .. } => {
                    let rest = input.get(used..).unwrap_or_default();
                    let take = usize::try_from(*left).map_or(rest.len(), |l| l.min(rest.len()));
                    *left -= take as u64;
                    let done = *left == 0;
                    if let Some(mut dec) = self.chunks.take() {
                        self.feed(&mut dec, rest.get(..take).unwrap_or_default());
                        self.chunks = Some(dec);
                    }
                    used += take;
                    if done {
                        self.chunk_end();
                    }
                }
                State::SkipChunk { left } => {
                    let rest = input.len() - used;
                    let take = usize::try_from(*left).map_or(rest, |l| l.min(rest));
                    *left -= take as u64;
                    if *left == 0 {
                        self.state = State::Command;
                    }
                    used += take;
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

    /// At `DataStart`: the destinations, moved out for the spool's
    /// envelope (the transaction's recipients stay; nothing after
    /// `DataStart` reads the destinations).
    pub fn take_destinations(&mut self) -> Vec<(Destination, String)> {
        match (&self.state, self.mail.as_mut()) {
            (State::SpoolOpen { .. }, Some(m)) => std::mem::take(&mut m.destinations),
            _ => Vec::new(),
        }
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

    /// The spool file is open: send 354 (DATA; BDAT reads on) and the
    /// `Received:` header first.
    pub fn data_started(&mut self, queue_id: &str, date: &str) {
        let State::SpoolOpen { chunk } = self.state else {
            return;
        };
        if chunk.is_none() {
            self.reply(&reply::START_DATA);
        }
        // RFC 3848 protocol types; RFC 6531 §3.7.3 for SMTPUTF8.
        let utf8 = self.mail.as_ref().is_some_and(|m| m.smtputf8);
        let proto = match (
            self.esmtp,
            utf8,
            self.tls.is_some(),
            self.auth_user.is_some(),
        ) {
            (false, _, _, _) => "SMTP",
            (true, false, false, false) => "ESMTP",
            (true, false, true, false) => "ESMTPS",
            (true, false, false, true) => "ESMTPA",
            (true, false, true, true) => "ESMTPSA",
            (true, true, false, false) => "UTF8SMTP",
            (true, true, true, false) => "UTF8SMTPS",
            (true, true, false, true) => "UTF8SMTPA",
            (true, true, true, true) => "UTF8SMTPSA",
        };
        // Written straight into the body (writing to a Vec cannot fail),
        // which gets room for the first reads of the message at once.
        let body = &mut self.body;
        body.reserve(BODY_RESERVE);
        body.extend_from_slice(b"Received: from ");
        push_sanitized(body, self.helo.as_deref().unwrap_or("unknown"));
        let _ = write!(body, " ([{}])", self.peer);
        if let Some(t) = &self.tls {
            let _ = write!(body, "\r\n\t(using {t})");
        }
        let _ = write!(
            body,
            "\r\n\tby {} (tern) with {proto} id {queue_id}",
            self.cfg.hostname
        );
        if let Some([only]) = self.mail.as_ref().map(|m| m.recipients.as_slice()) {
            let _ = write!(body, "\r\n\tfor <{only}>");
        }
        let _ = write!(body, "; {date}\r\n");
        // Submission (RFC 6409 §8): add Date: and Message-ID: when missing,
        // so the header section is held (bounded) until its end is seen.
        self.holding_headers = self.kind != ListenerKind::Relay || self.auth_user.is_some();
        self.held.clear();
        self.fixup = self
            .holding_headers
            .then(|| (queue_id.to_string(), date.to_string()));
        let max = self.cfg.max_message_size;
        match chunk {
            None => self.state = State::Data(DataDecoder::new(max)),
            Some(ChunkStart { size, last }) => {
                self.chunks = Some(DataDecoder::chunked(max));
                self.start_chunk(size, last);
            }
        }
    }

    /// Decodes message octets (DATA or a chunk) into the body, holding the
    /// header section back while submission fix-ups may be needed.
    fn feed(&mut self, dec: &mut DataDecoder, input: &[u8]) -> usize {
        let target = if self.holding_headers {
            &mut self.held
        } else {
            &mut self.body
        };
        let used = dec.decode(input, target);
        self.maybe_release(dec);
        used
    }

    fn maybe_release(&mut self, dec: &DataDecoder) {
        let release = self.holding_headers
            && (!dec.in_headers() || dec.is_done() || self.held.len() > MAX_HELD_HEADER);
        if release {
            self.release_headers(dec.summary().has_date, dec.summary().has_message_id);
        }
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

    /// The spool could not take the message: refuse DATA (or the first
    /// BDAT, whose chunk is then thrown away).
    pub fn data_refused(&mut self, why: Reply) {
        if let State::SpoolOpen { chunk } = self.state {
            self.reply(&why);
            self.mail = None;
            self.state = State::Command;
            if let Some(c) = chunk {
                self.skip_chunk(c.size);
            }
        }
    }

    /// Writing the body failed mid-stream (e.g. ENOSPC): swallow the rest of
    /// the message and answer `why` at its end.
    pub fn spool_failed(&mut self, why: Reply) {
        if self.chunks.is_some() {
            // BDAT: the chunk being read is answered now and thrown away;
            // between chunks, the next BDAT gets the reply.
            self.abort_chunks();
            self.mail = None;
            match self.state {
                State::Chunk { left, .. } => {
                    self.reply(&why);
                    self.state = State::Command;
                    self.skip_chunk(left);
                }
                _ => self.chunk_failure = Some(why),
            }
            return;
        }
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
                Ok(id) => reply::write_queued(&mut self.out, self.esmtp, id),
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
            | State::Chunk { .. }
            | State::SkipChunk { .. }
            | State::Discard(..)
            | State::Auth(_)
            | State::TlsWait
            | State::Closing => Some(self.deadline),
            State::AuthDelay { until, .. } => Some(until),
            State::SpoolOpen { .. } | State::Commit(_) | State::AuthCheck { .. } => None,
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
        if matches!(self.state, State::Data(_) | State::SpoolOpen { .. }) || self.chunks.is_some() {
            self.events.push_back(Event::Abort);
        }
        self.chunks = None;
        self.state = State::Closing;
    }

    /// Waiting for the driver (spool open or commit), not for the client.
    pub fn is_waiting_for_driver(&self) -> bool {
        matches!(
            self.state,
            State::SpoolOpen { .. } | State::Commit(_) | State::TlsWait | State::AuthCheck { .. }
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
            self.abort_chunks();
            self.mail = None;
            self.line.clear();
            self.state = State::Command;
            self.deadline = now + self.cfg.timeout;
        }
    }

    pub fn tls(&self) -> Option<&str> {
        self.tls.as_deref()
    }

    /// The client may send to other domains (`relay_networks` or AUTH).
    pub fn may_relay(&self) -> bool {
        self.relay_allowed || self.auth_user.is_some()
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
                reply::write_helo_ok(&mut self.out, self.esmtp, &self.cfg.hostname);
            }
            Command::Ehlo(name) => {
                self.esmtp = true;
                self.greeted(name);
                // The lines in a fixed array, SIZE formatted on the stack:
                // no allocation per EHLO.
                let mut size_buf = [0u8; 32];
                let size = format_into(
                    &mut size_buf,
                    format_args!("SIZE {}", self.cfg.max_message_size),
                );
                let always = [
                    self.cfg.hostname.as_str(),
                    "PIPELINING",
                    size,
                    "8BITMIME",
                    "ENHANCEDSTATUSCODES",
                    "CHUNKING",
                    "SMTPUTF8",
                    "DSN",
                ];
                let optional = [
                    (self.cfg.tls_available && self.tls.is_none(), "STARTTLS"),
                    // RFC 8689 §2: offered only in a session under TLS.
                    (self.tls.is_some(), "REQUIRETLS"),
                    (
                        self.auth_offered() && self.auth_user.is_none(),
                        "AUTH PLAIN LOGIN",
                    ),
                ];
                let mut lines = [""; 11];
                let mut n = 0;
                let offered = optional.iter().filter(|(on, _)| *on).map(|(_, l)| *l);
                for line in always.into_iter().chain(offered) {
                    if let Some(slot) = lines.get_mut(n) {
                        *slot = line;
                        n += 1;
                    }
                }
                reply::write_multiline(&mut self.out, 250, lines.get(..n).unwrap_or_default());
            }
            Command::Mail(sender, params) => self.mail(sender, params, policy),
            Command::Rcpt(rcpt, text, params) => self.rcpt(rcpt, text, params, policy),
            Command::Data => self.data(),
            Command::Bdat { size, last } => self.bdat(size, last),
            Command::Rset => {
                self.abort_chunks();
                self.chunk_failure = None;
                self.mail = None;
                self.reply(&reply::RESET_OK);
            }
            Command::Noop => self.reply(&reply::OK),
            Command::Vrfy => self.reply(&reply::VRFY_CANNOT),
            Command::Help => self.reply(&reply::HELP),
            Command::Quit => {
                reply::write_bye(&mut self.out, self.esmtp, &self.cfg.hostname);
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
        self.abort_chunks();
        self.chunk_failure = None;
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
        if params.requiretls && self.tls.is_none() {
            return self.reply(&reply::REQUIRETLS_NEEDS_TLS);
        }
        if params.size.is_some_and(|s| s > self.cfg.max_message_size) {
            return self.reply(&reply::MESSAGE_TOO_BIG);
        }
        if let Err(r) = policy.check_mail() {
            return self.reply(&r);
        }
        self.chunk_failure = None;
        self.mail = Some(Envelope {
            sender,
            recipients: Vec::new(),
            destinations: Vec::new(),
            eight_bit_declared: params.body == Body::EightBitMime,
            smtputf8: params.smtputf8,
            requiretls: params.requiretls,
            dsn: params.dsn,
            rcpt_dsn: Vec::new(),
        });
        self.reply(&reply::SENDER_OK);
    }

    fn rcpt(
        &mut self,
        rcpt: Option<Address>,
        text: PathText,
        params: RcptParams,
        policy: &dyn Policy,
    ) {
        let Some(mail) = self.mail.as_ref() else {
            return self.error(&reply::NEED_MAIL);
        };
        if text == PathText::Utf8 && !mail.smtputf8 {
            return self.reply(&reply::NON_ASCII);
        }
        if mail.recipients.len() >= self.cfg.max_recipients {
            return self.reply(&reply::TOO_MANY_RECIPIENTS);
        }
        let rcpt = rcpt.unwrap_or_else(|| Address {
            local: "postmaster".into(),
            domain: self.cfg.hostname.to_ascii_lowercase(),
        });
        let relay_allowed = self.relay_allowed || self.auth_user.is_some();
        match policy.check_recipient_from(mail.sender.as_ref(), &rcpt, relay_allowed) {
            Ok(destinations) => {
                if let Some(mail) = self.mail.as_mut() {
                    if !mail.recipients.contains(&rcpt) {
                        let mut original = Some(rcpt.to_text());
                        let keep = !params.dsn.is_empty();
                        let mut dests = destinations.into_iter().peekable();
                        while let Some(d) = dests.next() {
                            // The last destination takes the text itself
                            // unless the DSN list needs it too.
                            let last = dests.peek().is_none() && !keep;
                            push_unique_taking(&mut mail.destinations, d, &mut original, last);
                        }
                        if let (true, Some(original)) = (keep, original) {
                            mail.rcpt_dsn.push((original, params.dsn));
                        }
                        mail.recipients.push(rcpt);
                    }
                }
                self.reply(&reply::RECIPIENT_OK);
            }
            Err(r) => self.reply(&r),
        }
    }

    fn data(&mut self) {
        if self.chunks.is_some() {
            return self.error(&reply::DATA_AFTER_BDAT);
        }
        match &self.mail {
            None => self.error(&reply::NEED_MAIL),
            Some(m) if m.recipients.is_empty() => self.error(&reply::NEED_RCPT),
            Some(_) => {
                self.state = State::SpoolOpen { chunk: None };
                self.events.push_back(Event::DataStart);
            }
        }
    }

    /// `BDAT size [LAST]`: the chunk's octets follow at once, whatever the
    /// reply, so every path below consumes them.
    fn bdat(&mut self, size: u64, last: bool) {
        let refusal = match &self.mail {
            _ if self.chunk_failure.is_some() => self.chunk_failure.take(),
            None => Some(reply::NEED_MAIL),
            Some(m) if m.recipients.is_empty() => Some(reply::NEED_RCPT),
            Some(_) => None,
        };
        if let Some(r) = refusal {
            self.mail = None;
            self.skip_chunk(size);
            return self.error(&r);
        }
        let so_far = self.chunks.as_ref().map_or(0, |d| d.summary().size);
        if so_far.saturating_add(size) > self.cfg.max_message_size {
            self.abort_chunks();
            self.mail = None;
            self.skip_chunk(size);
            return self.reply(&reply::MESSAGE_TOO_BIG);
        }
        if self.chunks.is_some() {
            self.start_chunk(size, last);
        } else {
            self.state = State::SpoolOpen {
                chunk: Some(ChunkStart { size, last }),
            };
            self.events.push_back(Event::DataStart);
        }
    }

    fn start_chunk(&mut self, size: u64, last: bool) {
        self.state = State::Chunk {
            left: size,
            size,
            last,
        };
        if size == 0 {
            self.chunk_end();
        }
    }

    fn skip_chunk(&mut self, size: u64) {
        if size > 0 {
            self.state = State::SkipChunk { left: size };
        }
    }

    /// A chunk's last octet was read: answer it, or end the message.
    fn chunk_end(&mut self) {
        let State::Chunk { size, last, .. } = self.state else {
            return;
        };
        self.state = State::Command;
        let Some(mut dec) = self.chunks.take() else {
            return;
        };
        if last {
            let target = if self.holding_headers {
                &mut self.held
            } else {
                &mut self.body
            };
            dec.finish(target);
            self.maybe_release(&dec);
            self.message_end(dec.summary().clone());
        } else if dec.summary().oversize {
            // Line ends normalized to CRLF may grow past the limit.
            self.message_end(dec.summary().clone());
        } else {
            self.chunks = Some(dec);
            self.reply(&reply::chunk_received(size));
        }
    }

    /// BDAT: the message in progress is discarded (its file too).
    fn abort_chunks(&mut self) {
        if self.chunks.take().is_some() {
            self.events.push_back(Event::Abort);
            self.body.clear();
            self.held.clear();
            self.holding_headers = false;
        }
    }

    fn end_of_data(&mut self) {
        let state = std::mem::replace(&mut self.state, State::Command);
        match state {
            State::Data(dec) => self.message_end(dec.summary().clone()),
            State::Discard(_, why) => {
                self.mail = None;
                self.reply(&why);
            }
            other => self.state = other,
        }
    }

    /// The whole message is in (DATA's end or BDAT LAST): commit it, or
    /// refuse it for a limit that streaming could only note.
    fn message_end(&mut self, s: DataSummary) {
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
                self.held.clear();
                self.holding_headers = false;
                self.mail = None;
                self.reply(&r);
            }
            None => {
                self.state = State::Commit(s);
                self.events.push_back(Event::Commit);
            }
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
            State::Data(_) | State::Discard(..) | State::SpoolOpen { .. }
        ) {
            self.events.push_back(Event::Abort);
        }
        self.abort_chunks();
        self.reply(r);
        self.state = State::Closing;
    }
}

/// `args` formatted into `buf` (cut short if it does not fit).
fn format_into<'a>(buf: &'a mut [u8], args: std::fmt::Arguments<'_>) -> &'a str {
    let mut cursor = std::io::Cursor::new(buf);
    let _ = cursor.write_fmt(args);
    let n = usize::try_from(cursor.position()).unwrap_or(0);
    let buf = cursor.into_inner();
    std::str::from_utf8(buf.get(..n).unwrap_or_default()).unwrap_or_default()
}

/// HELO names go into a header: keep them to safe printable characters
/// (at most 255, anything else becomes `?`).
fn push_sanitized(out: &mut Vec<u8>, s: &str) {
    out.extend(
        s.chars()
            .take(255)
            .map(|c| if c.is_ascii_graphic() { c as u8 } else { b'?' }),
    );
}

mod auth;

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)] // tests index fixed data
mod tests;
