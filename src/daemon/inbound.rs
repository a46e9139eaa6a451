//! Inbound sessions: accept limits, the byte pump between socket and
//! [`ServerSession`], streaming the body into the spool, AUTH checks
//! between turns. [`InboundSessions`] owns the listeners, the connections
//! and their per-address counts, the server TLS configuration, the users
//! file and the AUTH failure limiter; what it borrows for a call (reactor,
//! spool, configuration, local tables) comes in an [`Io`].
//!
//! A message whose content ended waits in the commit batch
//! ([`InboundSessions::take_batch`]) for the group commit at the end of the
//! turn (`daemon::commit`), which answers it through
//! [`InboundSessions::committed`].

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use super::link::{Link, Read};
use super::{unix_now, Io, LocalTables, Timer};
use crate::auth::{FailureLimiter, Users};
use crate::bounce::write_rfc5322_date;
use crate::config::Config;
use crate::delivery::Destination;
use crate::logsafe::LogSafe;
use crate::reactor::{Reactor, SockId, SockMap};
use crate::smtp::address::Address;
use crate::smtp::reply::{self, Reply};
use crate::smtp::server::{
    AuthVerdict, Credentials, Event, ListenerKind, Policy, ServerSession, SessionConfig,
};
use crate::spool::envelope::Recipient;
use crate::spool::space::SpaceGate;
use crate::spool::{Incoming, QueueId, StoredEnvelope};
use crate::tls::TlsStream;

/// Input buffer per connection: a read never takes more than this, and a
/// session that is not consuming stops the reads (backpressure). 16 KiB
/// reads halve the syscalls of a 100 KB message compared with 4 KiB.
pub const INPUT_BUFFER: usize = 16384;
/// What the input buffer keeps after a message (commands are short).
pub const INPUT_KEPT: usize = 1024;
/// Reads per connection per wakeup, so one fast client cannot starve others.
pub const READS_PER_WAKEUP: usize = 16;

/// One SMTP connection: the session machine and its byte path.
struct Inbound {
    session: ServerSession,
    link: Link,
    /// The session asked for STARTTLS; the handshake starts once its 220 is out.
    starttls: bool,
    tls_announced: bool,
    input: Vec<u8>,
    incoming: Option<Incoming>,
    /// The envelope of the message being received (for the fresh cache).
    envelope: Option<StoredEnvelope>,
    peer: SocketAddr,
    counted: bool,
}

/// AUTH verifications (PBKDF2) answered per loop turn; the rest wait for
/// the next turn, which comes at once.
pub const AUTH_CHECKS_PER_TURN: usize = 1;
/// Brute-force limits for AUTH per client address.
pub const AUTH_FAILURES_PER_IP: u32 = 10;
pub const AUTH_FAILURE_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);
pub const AUTH_LIMITER_ENTRIES: usize = 1024;

/// A message whose content ended this turn, waiting for the group commit.
pub struct Ended {
    /// The session's connection.
    pub conn: SockId,
    pub file: Incoming,
    /// The `from=<...> nrcpt=N client=...` log text.
    pub what: String,
    /// The envelope, for the runner's fresh cache.
    pub envelope: Option<StoredEnvelope>,
}

pub struct InboundSessions {
    listeners: HashMap<SockId, ListenerKind>,
    /// Boxed: `drive` takes a session out of the map and puts it back on
    /// every call, which moved the whole 2.4 KB session twice.
    conns: SockMap<Box<Inbound>>,
    /// Counted connections per client address (`max_connections_per_ip`).
    per_ip: HashMap<IpAddr, usize>,
    session_cfg: std::rc::Rc<SessionConfig>,
    /// Loaded from tls_cert/tls_key; `None` without them (no STARTTLS).
    tls_server: Option<Arc<rustls::ServerConfig>>,
    users: Users,
    auth_limiter: FailureLimiter,
    /// AUTH credentials waiting for their check (`answer_auth`).
    auth_pending: VecDeque<(SockId, Credentials)>,
    /// `min_free_space`, checked at MAIL and DATA (cached).
    space: RefCell<SpaceGate>,
    /// Messages whose content ended this turn, committed together.
    batch: Vec<Ended>,
}

/// Binds every listener of the configuration.
pub fn bind_listeners(
    cfg: &Config,
    reactor: &mut Reactor<Timer>,
) -> io::Result<HashMap<SockId, ListenerKind>> {
    let mut listeners = HashMap::new();
    for (addrs, kind) in [
        (&cfg.listen, ListenerKind::Relay),
        (&cfg.submission_listen, ListenerKind::Submission),
        (&cfg.smtps_listen, ListenerKind::Smtps),
    ] {
        for addr in addrs {
            let id = reactor
                .listen(*addr)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            log::info!("listening on {addr} ({kind:?})");
            listeners.insert(id, kind);
        }
    }
    Ok(listeners)
}

/// The daemon's answers to the session's policy questions.
struct LocalPolicy<'a> {
    cfg: &'a Config,
    tables: &'a LocalTables,
    space: &'a RefCell<SpaceGate>,
}

impl Policy for LocalPolicy<'_> {
    fn check_mail(&self) -> Result<(), Reply> {
        if spool_has_room(self.space, self.cfg) {
            Ok(())
        } else {
            Err(reply::NO_SPACE)
        }
    }

    fn check_recipient(
        &self,
        rcpt: &Address,
        relay_allowed: bool,
    ) -> Result<Vec<Destination>, Reply> {
        self.check_recipient_from(None, rcpt, relay_allowed)
    }

    /// A `local` route makes its recipients local (decided here, once).
    fn check_recipient_from(
        &self,
        sender: Option<&Address>,
        rcpt: &Address,
        relay_allowed: bool,
    ) -> Result<Vec<Destination>, Reply> {
        let cfg = self.cfg;
        let routes = &self.tables.routes;
        // Only routes match on the sender.
        let sender = match sender {
            Some(a) if !routes.is_empty() => a.to_text(),
            _ => String::new(),
        };
        let is_local = |d: &str| cfg.is_local_domain(d) || routes.is_local(&sender, d);
        self.tables
            .policy(cfg, &is_local)
            .resolve(rcpt, relay_allowed)
    }
}

/// `min_free_space` (cached by the gate: at most one statvfs a second).
fn spool_has_room(space: &RefCell<SpaceGate>, cfg: &Config) -> bool {
    space
        .borrow_mut()
        .room(&cfg.spool_dir, cfg.min_free_space, Instant::now())
}

impl InboundSessions {
    pub fn new(
        listeners: HashMap<SockId, ListenerKind>,
        cfg: &Config,
        tls_server: Option<Arc<rustls::ServerConfig>>,
        users: Users,
    ) -> InboundSessions {
        InboundSessions {
            listeners,
            conns: SockMap::default(),
            per_ip: HashMap::new(),
            session_cfg: super::session_config(cfg, tls_server.is_some(), !users.is_empty()).into(),
            tls_server,
            users,
            auth_limiter: FailureLimiter::new(
                AUTH_FAILURES_PER_IP,
                AUTH_FAILURE_WINDOW,
                AUTH_LIMITER_ENTRIES,
            ),
            auth_pending: VecDeque::new(),
            space: RefCell::new(SpaceGate::new()),
            batch: Vec::new(),
        }
    }

    /// On reload: the new configuration (already the daemon's), a new
    /// certificate (`None`: keep the old one) and the users file.
    pub fn reconfigure(
        &mut self,
        cfg: &Config,
        tls_server: Option<Option<Arc<rustls::ServerConfig>>>,
        users: Users,
    ) {
        if let Some(t) = tls_server {
            self.tls_server = t;
        }
        self.users = users;
        self.session_cfg =
            super::session_config(cfg, self.tls_server.is_some(), !self.users.is_empty()).into();
    }

    /// Whether `id` is a session's connection.
    pub fn owns(&self, id: SockId) -> bool {
        self.conns.contains_key(&id)
    }

    /// No session open.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Shutdown: the listeners close, every session says 421 (a session
    /// whose message is in this turn's commit batch is told after its
    /// answer, see [`InboundSessions::committed`]).
    pub fn shutdown(&mut self, io: &mut Io) {
        for (id, _) in self.listeners.drain() {
            io.reactor.close(id);
        }
        let ids: Vec<SockId> = self.conns.keys().copied().collect();
        for id in ids {
            if let Some(c) = self.conns.get_mut(&id) {
                c.session.shutdown();
            }
            self.drive(io, id);
        }
    }

    /// Times out sessions whose deadline passed.
    pub fn sweep(&mut self, io: &mut Io, now: Instant) {
        let expired: Vec<SockId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.session.deadline().is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(c) = self.conns.get_mut(&id) {
                c.session.handle_timeout(now);
            }
            self.drive(io, id);
        }
    }

    /// The messages that ended this turn, for the group commit.
    pub fn take_batch(&mut self) -> Vec<Ended> {
        std::mem::take(&mut self.batch)
    }

    /// The emptied batch back, so its room serves the next turns.
    pub fn return_batch(&mut self, mut batch: Vec<Ended>) {
        batch.clear();
        if self.batch.is_empty() {
            self.batch = batch;
        }
    }

    /// The group commit's result for a session's message: the 250 (or the
    /// error), then at shutdown the 421.
    pub fn committed(
        &mut self,
        io: &mut Io,
        id: SockId,
        result: Result<QueueId, Reply>,
        stopping: bool,
    ) {
        if let Some(c) = self.conns.get_mut(&id) {
            match result {
                Ok(qid) => c.session.committed(Ok(qid.text().as_str())),
                Err(r) => c.session.committed(Err(r)),
            }
        }
        // A commit that was in flight at SIGTERM: answered, then 421.
        if stopping {
            if let Some(c) = self.conns.get_mut(&id) {
                c.session.shutdown();
            }
        }
        self.drive(io, id);
    }

    /// Answers at most [`AUTH_CHECKS_PER_TURN`] pending AUTH verifications
    /// (each a PBKDF2 of up to `MAX_PBKDF2_ITERATIONS` rounds: 7–80 ms on
    /// router CPUs); true while more wait (the loop must not sleep).
    pub fn answer_auth(&mut self, io: &mut Io) -> bool {
        for _ in 0..AUTH_CHECKS_PER_TURN {
            let Some((id, creds)) = self.auth_pending.pop_front() else {
                return false;
            };
            // The client may have gone (or the session timed out).
            let Some(peer) = self.conns.get(&id).map(|c| c.session.peer()) else {
                continue;
            };
            let now = Instant::now();
            let verdict = match self.auth_limiter.attempt(peer, now, || {
                self.users.check(&creds.user, &creds.password, now)
            }) {
                None => AuthVerdict::Blocked,
                Some(true) => AuthVerdict::Ok,
                Some(false) => AuthVerdict::Bad,
            };
            if let Some(c) = self.conns.get_mut(&id) {
                c.session.auth_verdict(verdict, Instant::now());
            }
            self.drive(io, id);
        }
        !self.auth_pending.is_empty()
    }

    /// Accepts a batch of connections on a listener (false if `listener`
    /// is not one of ours).
    pub fn accept(&mut self, io: &mut Io, listener: SockId) -> bool {
        let Some(&kind) = self.listeners.get(&listener) else {
            return false;
        };
        for _ in 0..crate::reactor::ACCEPT_BATCH {
            let (id, peer) = match io.reactor.accept(listener) {
                Ok(Some(x)) => x,
                Ok(None) => return true,
                Err(e) => {
                    log::warn!("accept: {e}");
                    return true;
                }
            };
            let now = Instant::now();
            let ip = canonical(peer.ip());
            let per_ip = self.per_ip.get(&ip).copied().unwrap_or(0);
            let (session, counted) = if self.conns.len() >= io.cfg.max_connections
                || per_ip >= io.cfg.max_connections_per_ip
            {
                log::warn!("connection from {peer} refused: too many connections");
                let r = reply::too_many_connections(&io.cfg.hostname);
                (
                    ServerSession::refuse(self.session_cfg.clone(), ip, r, now),
                    false,
                )
            } else {
                log::debug!("connect from {peer}");
                *self.per_ip.entry(ip).or_insert(0) += 1;
                let relay = io.cfg.may_relay(ip);
                (
                    ServerSession::new(self.session_cfg.clone(), kind, ip, relay, now),
                    true,
                )
            };
            let link = if kind == ListenerKind::Smtps {
                match self.tls_server.clone().map(TlsStream::server) {
                    Some(Ok(tls)) => Link::with_tls(tls),
                    _ => {
                        log::error!("{peer}: no TLS configuration for the smtps listener");
                        io.reactor.close(id);
                        continue;
                    }
                }
            } else {
                Link::plain()
            };
            self.conns.insert(
                id,
                Box::new(Inbound {
                    session,
                    link,
                    starttls: false,
                    tls_announced: false,
                    input: Vec::new(),
                    incoming: None,
                    envelope: None,
                    peer,
                    counted,
                }),
            );
            self.drive(io, id);
        }
        // More may be pending: come back next turn.
        io.reactor.mark_hot(listener);
        true
    }

    /// Moves bytes between the socket and the session until neither can make
    /// progress or the per-wakeup budget is spent.
    pub fn drive(&mut self, io: &mut Io, id: SockId) {
        let Some(mut conn) = self.conns.remove(&id) else {
            return;
        };
        let mut reads = 0;
        let mut closed = false;
        loop {
            // 1. Write what the session has to say (through TLS if on).
            while !conn.session.output().is_empty() {
                match conn.link.write(io.reactor, id, conn.session.output()) {
                    Ok(0) => break,
                    Ok(n) => conn.session.consume_output(n),
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            let flushed = match conn.link.flush(io.reactor, id) {
                Ok(f) => f,
                Err(_) => {
                    closed = true;
                    false
                }
            };
            if closed
                || conn.session.is_abandoned()
                || (conn.session.is_closing() && conn.session.output().is_empty() && flushed)
            {
                closed = true;
                break;
            }
            // 2. STARTTLS: once the 220 is out in plaintext, drop whatever the
            // client pipelined after the command and start the handshake.
            if conn.starttls && conn.session.output().is_empty() && flushed {
                conn.starttls = false;
                match self.tls_server.clone().map(TlsStream::server) {
                    Some(Ok(tls)) => {
                        if !conn.input.is_empty() {
                            log::warn!(
                                "{}: {} bytes pipelined after STARTTLS discarded",
                                conn.peer,
                                conn.input.len()
                            );
                        }
                        conn.input.clear();
                        conn.link.tls = Some(tls);
                    }
                    _ => {
                        log::error!("{}: cannot start TLS", conn.peer);
                        closed = true;
                        break;
                    }
                }
            }
            if !conn.tls_announced && conn.link.tls.is_some() && !conn.link.is_handshaking() {
                if let Some(desc) = conn
                    .link
                    .tls
                    .as_ref()
                    .and_then(|t| t.protocol_description())
                {
                    conn.tls_announced = true;
                    log::debug!("{}: TLS established ({desc})", conn.peer);
                    if conn.session.is_waiting_for_driver() {
                        conn.session.tls_started(desc, Instant::now());
                    } else {
                        conn.session.set_implicit_tls(desc);
                    }
                    continue;
                }
            }
            // 3. Feed buffered input.
            if !conn.input.is_empty() {
                let used = {
                    let policy = LocalPolicy {
                        cfg: io.cfg,
                        tables: io.tables,
                        space: &self.space,
                    };
                    conn.session
                        .handle_input(&conn.input, Instant::now(), &policy)
                };
                // `drain` panics past the end: never trust a count blindly.
                conn.input.drain(..used.min(conn.input.len()));
                self.session_events(io, id, &mut conn);
                if used > 0 {
                    continue;
                }
            }
            // 4. Read more, unless the session cannot take it now (a TLS
            // handshake always reads).
            let handshaking = conn.link.is_handshaking();
            if !handshaking
                && (conn.session.is_waiting_for_driver()
                    || conn.input.len() >= INPUT_BUFFER
                    || !conn.session.output().is_empty()
                    || conn.session.is_closing())
            {
                break;
            }
            if reads == READS_PER_WAKEUP {
                io.reactor.mark_hot(id);
                break;
            }
            reads += 1;
            let room = INPUT_BUFFER.saturating_sub(conn.input.len()).max(1);
            match conn.link.read(io.reactor, id, &mut conn.input, room) {
                Read::Data => {}
                Read::Pending => break,
                Read::Closed => {
                    if let Some(e) = conn.link.tls_error() {
                        log::info!("{}: TLS failed: {}", conn.peer, LogSafe(e));
                    }
                    conn.session.connection_lost();
                    self.session_events(io, id, &mut conn);
                    closed = true;
                    break;
                }
            }
        }
        if closed {
            self.close(io, id, conn);
            return;
        }
        self.conns.insert(id, conn);
    }

    fn close(&mut self, io: &mut Io, id: SockId, mut conn: Box<Inbound>) {
        if let Some(inc) = conn.incoming.take() {
            io.spool.discard(inc);
        }
        // A message in the commit batch stays there: its commit is harmless
        // even if the client is gone (it may have seen nothing; a duplicate
        // is possible, a loss is not).
        io.reactor.close(id);
        if conn.counted {
            let ip = canonical(conn.peer.ip());
            if let Some(n) = self.per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    self.per_ip.remove(&ip);
                }
            }
        }
        log::debug!("disconnect from {}", conn.peer);
    }

    /// Writes decoded body bytes to the spool file and acts on the session's events.
    fn session_events(&mut self, io: &mut Io, id: SockId, conn: &mut Inbound) {
        loop {
            if !conn.session.body().is_empty() {
                if let Some(inc) = conn.incoming.as_mut() {
                    if let Err(e) = inc.write(conn.session.body()) {
                        log::error!("{}: spool write failed: {e}", inc.id);
                        conn.session.spool_failed(Reply::from(&e));
                    }
                }
                conn.session.clear_body();
            }
            let Some(ev) = conn.session.poll_event() else {
                return;
            };
            match ev {
                Event::DataStart => self.open_incoming(io, conn),
                Event::Commit => {
                    if let Some(mut inc) = conn.incoming.take() {
                        let eight_bit = conn.session.summary().is_some_and(|s| s.eight_bit);
                        let r = if eight_bit {
                            inc.mark_eight_bit()
                        } else {
                            Ok(())
                        };
                        match r {
                            Ok(()) => {
                                // Built only for a log line that is written.
                                let what = match conn.session.envelope() {
                                    _ if !log::log_enabled!(log::Level::Info) => String::new(),
                                    Some(env) => format!(
                                        "from=<{}> size={} nrcpt={} client={} [{}]",
                                        LogSafe(
                                            env.sender
                                                .as_ref()
                                                .map(|a| a.to_string())
                                                .unwrap_or_default()
                                        ),
                                        inc.size,
                                        env.recipients.len(),
                                        LogSafe(conn.session.helo_name()),
                                        conn.peer.ip()
                                    ),
                                    None => format!("size={}", inc.size),
                                };
                                let mut env = conn.envelope.take();
                                // The cached envelope serves the first
                                // attempt: it must say 8-bit like the file.
                                if let Some(env) = env.as_mut() {
                                    env.eight_bit = eight_bit;
                                }
                                self.batch.push(Ended {
                                    conn: id,
                                    file: inc,
                                    what,
                                    envelope: env,
                                });
                                // A kept-open session does not hold on to
                                // the room a large message needed.
                                conn.input.shrink_to(INPUT_KEPT);
                            }
                            Err(e) => {
                                io.spool.discard(inc);
                                conn.session.committed(Err(Reply::from(&e)));
                            }
                        }
                    }
                }
                Event::StartTls => conn.starttls = true,
                // Verified between turns (`answer_auth`), not here.
                Event::Authenticate(creds) => self.auth_pending.push_back((id, creds)),
                Event::Abort => {
                    if let Some(inc) = conn.incoming.take() {
                        io.spool.discard(inc);
                    }
                }
            }
        }
    }

    fn open_incoming(&mut self, io: &mut Io, conn: &mut Inbound) {
        if !spool_has_room(&self.space, io.cfg) {
            conn.session.data_refused(reply::NO_SPACE);
            return;
        }
        // Moved out of the session, not copied: it needs them no more.
        let destinations = conn.session.take_destinations();
        let Some(env) = conn.session.envelope() else {
            return;
        };
        let now = unix_now();
        let recipients = destinations
            .into_iter()
            .map(|(dest, original)| Recipient {
                dsn: env.dsn_for(&original),
                dest,
                original,
            })
            .collect();
        let stored = StoredEnvelope {
            id: crate::spool::QueueId(0),
            arrival: now,
            sender: env
                .sender
                .as_ref()
                .map(Address::to_text)
                .unwrap_or_default(),
            recipients,
            client: {
                let helo = conn.session.helo_name();
                // `[` + an IPv6 address + `]` fit in 48.
                let mut client = String::with_capacity(helo.len() + 48);
                let _ = write!(client, "{helo} [{}]", conn.peer.ip());
                client
            },
            origin: crate::rewrite::SenderOrigin::of_smtp_client(
                env.sender.as_ref(),
                conn.session.may_relay(),
                &|d| io.cfg.is_local_domain(d),
            ),
            eight_bit: false,
            smtputf8: env.smtputf8,
            requiretls: env.requiretls,
            dsn: env.dsn.clone(),
            body_offset: 0,
        };
        match io.spool.create(&stored) {
            Ok(inc) => {
                // On the stack: 31 octets until the year 10000.
                let mut date = StackText::<48>::new();
                write_rfc5322_date(&mut date, now as i64, 0);
                conn.session
                    .data_started(inc.id.text().as_str(), date.as_str());
                conn.envelope = Some(StoredEnvelope {
                    id: inc.id,
                    ..stored
                });
                conn.incoming = Some(inc);
            }
            Err(e) => {
                log::error!("cannot create spool file: {e}");
                conn.session.data_refused(Reply::from(&e));
            }
        }
    }
}

/// A short text formatted on the stack (`fmt::Write`); what does not fit
/// is cut off at a character boundary.
struct StackText<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> StackText<N> {
    fn new() -> Self {
        StackText {
            buf: [0; N],
            len: 0,
        }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(self.buf.get(..self.len).unwrap_or_default()).unwrap_or_default()
    }
}

impl<const N: usize> std::fmt::Write for StackText<N> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// IPv4-mapped IPv6 addresses count as IPv4 for limits and relay checks.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}
