//! Inbound connections: accept limits, the byte pump between socket and
//! [`ServerSession`], streaming the body into the spool, and the group
//! commit at the end of each loop turn.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::transport::{Read, Transport};
use super::{unix_now, Daemon};
use crate::bounce::rfc5322_date;
use crate::delivery::Destination;
use crate::logsafe::LogSafe;
use crate::reactor::SockId;
use crate::smtp::address::Address;
use crate::smtp::reply::{self, Reply};
use crate::smtp::server::{AuthVerdict, Event, ListenerKind, Policy, ServerSession};
use crate::spool::envelope::Recipient;
use crate::spool::{Incoming, StoredEnvelope};
use crate::tls::TlsStream;

/// Input buffer per connection: a read never takes more than this, and a
/// session that is not consuming stops the reads (backpressure). 16 KiB
/// reads halve the syscalls of a 100 KB message compared with 4 KiB.
pub const INPUT_BUFFER: usize = 16384;
/// What the input buffer keeps after a message (commands are short).
pub const INPUT_KEPT: usize = 1024;
/// Reads per connection per wakeup, so one fast client cannot starve others.
pub const READS_PER_WAKEUP: usize = 16;

pub struct Inbound {
    pub session: ServerSession,
    transport: Transport,
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

/// The daemon's answers to the session's policy questions.
struct LocalPolicy<'a> {
    daemon: &'a Daemon,
}

impl Policy for LocalPolicy<'_> {
    fn check_mail(&self) -> Result<(), Reply> {
        if self.daemon.spool_has_room() {
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
        let cfg = &self.daemon.cfg;
        let is_local = |d: &str| cfg.is_local_domain(d);
        self.daemon
            .tables
            .policy(cfg, &is_local)
            .resolve(rcpt, relay_allowed)
    }
}

impl Daemon {
    /// Answers at most [`super::AUTH_CHECKS_PER_TURN`] pending AUTH verifications
    /// (each a PBKDF2 of up to `MAX_PBKDF2_ITERATIONS` rounds: 7–80 ms on
    /// router CPUs); true while more wait (the loop must not sleep).
    pub(super) fn answer_auth(&mut self) -> bool {
        for _ in 0..super::AUTH_CHECKS_PER_TURN {
            let Some((id, creds)) = self.auth_pending.pop_front() else {
                return false;
            };
            // The client may have gone (or the session timed out).
            let Some(peer) = self.inbound.get(&id).map(|c| c.session.peer()) else {
                continue;
            };
            let now = Instant::now();
            let verdict = match self
                .auth_limiter
                .get_mut()
                .attempt(peer, now, || self.users.check(&creds.user, &creds.password))
            {
                None => AuthVerdict::Blocked,
                Some(true) => AuthVerdict::Ok,
                Some(false) => AuthVerdict::Bad,
            };
            if let Some(c) = self.inbound.get_mut(&id) {
                c.session.auth_verdict(verdict, Instant::now());
            }
            self.drive_inbound(id);
        }
        !self.auth_pending.is_empty()
    }

    /// `min_free_space` (cached by the gate: at most one statvfs a second).
    fn spool_has_room(&self) -> bool {
        self.space
            .borrow_mut()
            .room(&self.cfg.spool_dir, self.cfg.min_free_space, Instant::now())
    }

    pub(super) fn accept(&mut self, listener: SockId) {
        let Some(&kind) = self.listeners.get(&listener) else {
            return;
        };
        for _ in 0..crate::reactor::ACCEPT_BATCH {
            let (id, peer) = match self.reactor.accept(listener) {
                Ok(Some(x)) => x,
                Ok(None) => return,
                Err(e) => {
                    log::warn!("accept: {e}");
                    return;
                }
            };
            let now = Instant::now();
            let ip = canonical(peer.ip());
            let per_ip = self.per_ip.get(&ip).copied().unwrap_or(0);
            let (session, counted) = if self.inbound.len() >= self.cfg.max_connections
                || per_ip >= self.cfg.max_connections_per_ip
            {
                log::warn!("connection from {peer} refused: too many connections");
                let r = reply::too_many_connections(&self.cfg.hostname);
                (
                    ServerSession::refuse(self.session_cfg.clone(), ip, r, now),
                    false,
                )
            } else {
                log::debug!("connect from {peer}");
                *self.per_ip.entry(ip).or_insert(0) += 1;
                let relay = self.cfg.may_relay(ip);
                (
                    ServerSession::new(self.session_cfg.clone(), kind, ip, relay, now),
                    true,
                )
            };
            let transport = if kind == ListenerKind::Smtps {
                match self.tls_server.clone().map(TlsStream::server) {
                    Some(Ok(tls)) => Transport::with_tls(tls),
                    _ => {
                        log::error!("{peer}: no TLS configuration for the smtps listener");
                        self.reactor.close(id);
                        continue;
                    }
                }
            } else {
                Transport::plain()
            };
            self.inbound.insert(
                id,
                Inbound {
                    session,
                    transport,
                    starttls: false,
                    tls_announced: false,
                    input: Vec::new(),
                    incoming: None,
                    envelope: None,
                    peer,
                    counted,
                },
            );
            self.drive_inbound(id);
        }
        // More may be pending: come back next turn.
        self.reactor.mark_hot(listener);
    }

    /// Moves bytes between the socket and the session until neither can make
    /// progress or the per-wakeup budget is spent.
    pub(super) fn drive_inbound(&mut self, id: SockId) {
        let Some(mut conn) = self.inbound.remove(&id) else {
            return;
        };
        let mut reads = 0;
        let mut closed = false;
        loop {
            // 1. Write what the session has to say (through TLS if on).
            while !conn.session.output().is_empty() {
                match conn
                    .transport
                    .write(&mut self.reactor, id, conn.session.output())
                {
                    Ok(0) => break,
                    Ok(n) => conn.session.consume_output(n),
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            let flushed = match conn.transport.flush(&mut self.reactor, id) {
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
                        conn.transport.tls = Some(tls);
                    }
                    _ => {
                        log::error!("{}: cannot start TLS", conn.peer);
                        closed = true;
                        break;
                    }
                }
            }
            if !conn.tls_announced
                && conn.transport.tls.is_some()
                && !conn.transport.is_handshaking()
            {
                if let Some(desc) = conn
                    .transport
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
                    let policy = LocalPolicy { daemon: self };
                    conn.session
                        .handle_input(&conn.input, Instant::now(), &policy)
                };
                // `drain` panics past the end: never trust a count blindly.
                conn.input.drain(..used.min(conn.input.len()));
                self.session_events(id, &mut conn);
                if used > 0 {
                    continue;
                }
            }
            // 4. Read more, unless the session cannot take it now (a TLS
            // handshake always reads).
            let handshaking = conn.transport.is_handshaking();
            if !handshaking
                && (conn.session.is_waiting_for_driver()
                    || conn.input.len() >= INPUT_BUFFER
                    || !conn.session.output().is_empty()
                    || conn.session.is_closing())
            {
                break;
            }
            if reads == READS_PER_WAKEUP {
                self.reactor.mark_hot(id);
                break;
            }
            reads += 1;
            let room = INPUT_BUFFER.saturating_sub(conn.input.len()).max(1);
            match conn
                .transport
                .read(&mut self.reactor, id, &mut conn.input, room)
            {
                Read::Data => {}
                Read::Pending => break,
                Read::Closed => {
                    if let Some(e) = conn.transport.tls_error() {
                        log::info!("{}: TLS failed: {}", conn.peer, LogSafe(e));
                    }
                    conn.session.connection_lost();
                    self.session_events(id, &mut conn);
                    closed = true;
                    break;
                }
            }
        }
        if closed {
            self.close_inbound(id, conn);
            return;
        }
        self.inbound.insert(id, conn);
    }

    fn close_inbound(&mut self, id: SockId, mut conn: Inbound) {
        if let Some(inc) = conn.incoming.take() {
            self.spool.discard(inc);
        }
        // A message in the commit batch stays there: its commit is harmless
        // even if the client is gone (it may have seen nothing; a duplicate
        // is possible, a loss is not).
        self.reactor.close(id);
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
    fn session_events(&mut self, id: SockId, conn: &mut Inbound) {
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
                Event::DataStart => self.open_incoming(conn),
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
                                self.batch.push((id, inc, what, env));
                                // A kept-open session does not hold on to
                                // the room a large message needed.
                                conn.input.shrink_to(INPUT_KEPT);
                            }
                            Err(e) => {
                                self.spool.discard(inc);
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
                        self.spool.discard(inc);
                    }
                }
            }
        }
    }

    fn open_incoming(&mut self, conn: &mut Inbound) {
        if !self.spool_has_room() {
            conn.session.data_refused(reply::NO_SPACE);
            return;
        }
        let Some(env) = conn.session.envelope() else {
            return;
        };
        let now = unix_now();
        let recipients = env
            .destinations
            .iter()
            .map(|(dest, original)| Recipient {
                dest: dest.clone(),
                original: original.clone(),
            })
            .collect();
        let stored = StoredEnvelope {
            id: crate::spool::QueueId(0),
            arrival: now,
            sender: env
                .sender
                .as_ref()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            recipients,
            client: format!("{} [{}]", conn.session.helo_name(), conn.peer.ip()),
            origin: crate::rewrite::SenderOrigin::of_smtp_client(
                env.sender.as_ref(),
                conn.session.may_relay(),
                &|d| self.cfg.is_local_domain(d),
            ),
            eight_bit: false,
            body_offset: 0,
        };
        match self.spool.create(&stored) {
            Ok(inc) => {
                let date = rfc5322_date(now as i64, 0);
                conn.session.data_started(inc.id.text().as_str(), &date);
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

    /// The group commit: one sync of `msg/` for every message that ended
    /// this turn, then the 250s.
    pub(super) fn commit_batch(&mut self) {
        if self.batch.is_empty() && self.drop_commits.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        let drops = std::mem::take(&mut self.drop_commits);
        let mut conns = Vec::with_capacity(batch.len());
        let mut files = Vec::with_capacity(batch.len() + drops.len());
        for (conn, file, what, env) in batch {
            conns.push((conn, what, env.map(|e| (e, file.size))));
            files.push(file);
        }
        // Imported sendmail drops share the sync.
        let mut imported = Vec::with_capacity(drops.len());
        for (claimed, file, what) in drops {
            imported.push((claimed, what));
            files.push(file);
        }
        let mut results = self.spool.commit(files);
        let drop_results = results.split_off(conns.len().min(results.len()));
        for ((claimed, what), result) in imported.into_iter().zip(drop_results) {
            self.drop_committed(claimed, what, result);
        }
        let now = super::mono_now();
        for ((id, what, env), result) in conns.into_iter().zip(results) {
            match result {
                Ok(qid) => {
                    log::info!("{qid}: {what}");
                    if let Some(env) = env {
                        self.remember_fresh(qid, env.0, env.1);
                    }
                    self.queue.schedule(qid, now);
                    if let Some(c) = self.inbound.get_mut(&id) {
                        c.session.committed(Ok(qid.text().as_str()));
                    }
                }
                Err(e) => {
                    log::error!("commit failed: {e}");
                    if let Some(c) = self.inbound.get_mut(&id) {
                        c.session.committed(Err(Reply::from(&e)));
                    }
                }
            }
            // A commit that was in flight at SIGTERM: answered, then 421.
            if self.stopping.is_some() {
                if let Some(c) = self.inbound.get_mut(&id) {
                    c.session.shutdown();
                }
            }
            self.drive_inbound(id);
        }
    }
}

/// IPv4-mapped IPv6 addresses count as IPv4 for limits and relay checks.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}
