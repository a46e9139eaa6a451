//! Running outbound jobs in the loop: DNS through the sans-IO resolver,
//! non-blocking connects tried host by host and address by address, the
//! sans-IO SMTP client fed from the socket, and the body streamed from the
//! spool file with a high-water mark (never the whole body in memory).
//!
//! Failure policy (RFC 5321 §5.1 and §4.5.4.1): a connection failure, a
//! timeout or a whole-session failure moves on to the next address, then
//! the next MX host (or fallback smarthost); only when every one failed is
//! the job deferred with the last error. Per-recipient 4xx/5xx replies from
//! a server that took the transaction are final for this attempt.

use std::collections::HashMap;
use std::io::Read as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::transport::{Read, Transport};
use super::{Daemon, Timer};
use crate::config::{OutboundTls, SmarthostTls};
use crate::delivery::outcome::{self, Outcome, Reason};
use crate::dns::{DnsError, LookupId, MxHost, QueryHandle, Transport as DnsTransport};
use crate::outbound::Job;
use crate::reactor::SockId;
use crate::smtp::client::{
    ClientConfig, ClientEvent, ClientSession, Credentials, Own, RcptOutcome, TlsPolicy, Transaction,
};
use crate::tls::TlsStream;
use std::sync::Arc;

/// How long a finished outbound session waits for another message to the
/// same destination before QUIT (Postfix's connection cache uses 2 s too).
pub const OUTBOUND_IDLE_KEEP: Duration = Duration::from_secs(2);
/// Body bytes read from the spool per step.
pub const BODY_CHUNK: usize = 16 * 1024;
/// Bytes read from a peer per wakeup.
const READ_CHUNK: usize = 4096;
/// Largest DNS response accepted over TCP.
const MAX_DNS_TCP: usize = 65535;

/// One host to try: name, port and (once resolved) addresses.
struct Hop {
    name: String,
    port: u16,
    addrs: Option<Vec<IpAddr>>,
}

enum Phase {
    Resolving(LookupId),
    Connecting {
        sock: SockId,
        addr: SocketAddr,
        deadline: Instant,
    },
    Talking {
        sock: SockId,
        addr: SocketAddr,
        client: Box<ClientSession>,
        transport: Box<Transport>,
        /// A STARTTLS handshake is running; `tls_established` follows it.
        tls_pending: bool,
        /// The TLS policy this connection uses (for the plaintext fallback).
        policy: TlsPolicy,
    },
}

pub struct Delivery {
    job: Job,
    hops: Vec<Hop>,
    hop: usize,
    addr: usize,
    phase: Phase,
    body: Option<crate::spool::Content>,
    /// After opportunistic TLS failed with this address: plaintext once.
    plaintext_fallback: Option<SocketAddr>,
    /// The job's outcomes went to the runner already (the session may stay
    /// open, idle, for the next job to the same destination).
    job_reported: bool,
    /// Idle in the connection cache since then.
    idle_since: Option<Instant>,
    /// Body bytes read from the spool (`chunk[chunk_pos..chunk_end]` not
    /// yet taken by the client); sized once, refilled in place.
    chunk: Vec<u8>,
    chunk_pos: usize,
    chunk_end: usize,
    body_done: bool,
    /// Why the last address failed (the reason undecided recipients get).
    last_error: Option<Reason>,
    /// The TLS handshake of this connection failed so: it outranks the
    /// client's "connection lost" that follows.
    tls_failure: Option<Reason>,
    /// Outcomes decided so far (index in the job's recipient list).
    decided: HashMap<usize, Outcome>,
}

/// A DNS exchange in progress on a socket of its own.
pub struct DnsSock {
    handle: QueryHandle,
    server: SocketAddr,
    transport: DnsTransport,
    pending_write: Vec<u8>,
    read_buf: Vec<u8>,
}

impl Daemon {
    /// Starts jobs while slots are free and flushes resolver transmissions.
    pub(super) fn outbound_poll(&mut self) {
        // Idle cached connections first: a waiting job for the same
        // destination reuses one without a new connect, greeting and EHLO.
        let now = Instant::now();
        let idle: Vec<(u64, String)> = self
            .deliveries
            .iter()
            .filter(|(_, d)| d.idle_since.is_some())
            .map(|(k, d)| (*k, d.job.domain.clone()))
            .collect();
        for (key, domain) in idle {
            let Some(job) = self.outbound.take_for(&domain) else {
                continue;
            };
            if let Some(d) = self.deliveries.get_mut(&key) {
                if let Phase::Talking { client, .. } = &mut d.phase {
                    d.job = job;
                    d.decided.clear();
                    d.job_reported = false;
                    d.idle_since = None;
                    d.body_done = false;
                    d.chunk_pos = 0;
                    d.chunk_end = 0;
                    client.start_transaction(transaction(&d.job), now);
                }
            }
            self.pump(key, now);
        }
        while let Some(job) = self.outbound.next_startable() {
            self.start_job(job);
        }
        self.dns_flush(Instant::now());
    }

    fn start_job(&mut self, job: Job) {
        let now = Instant::now();
        let key = self.next_delivery_key();
        if job.domain.is_empty() {
            let hops = self
                .outbound
                .smarthosts
                .iter()
                .map(|hp| Hop {
                    name: hp.host.clone(),
                    port: hp.port,
                    addrs: hp
                        .host
                        .parse::<IpAddr>()
                        .ok()
                        .map(|ip| vec![ip])
                        .or_else(|| self.hosts.get(&hp.host.to_ascii_lowercase()).cloned()),
                })
                .collect();
            let d = Delivery::new(job, hops);
            self.deliveries.insert(key, d);
            self.advance(key, now);
        } else {
            let lookup = self.resolver.resolve_mx(&job.domain, now);
            self.lookups.insert(lookup, key);
            let mut d = Delivery::new(job, Vec::new());
            d.phase = Phase::Resolving(lookup);
            self.deliveries.insert(key, d);
        }
    }

    fn next_delivery_key(&mut self) -> u64 {
        self.delivery_seq += 1;
        self.delivery_seq
    }

    /// Moves a delivery to its next address (resolving names as needed) or
    /// finishes it when nothing is left to try.
    fn advance(&mut self, key: u64, now: Instant) {
        loop {
            let Some(d) = self.deliveries.get_mut(&key) else {
                return;
            };
            let Some(hop) = d.hops.get(d.hop) else {
                self.finish_delivery(key);
                return;
            };
            let Some(addrs) = &hop.addrs else {
                let lookup = self.resolver.resolve_host(&hop.name.clone(), now);
                self.lookups.insert(lookup, key);
                d.phase = Phase::Resolving(lookup);
                return;
            };
            let Some(ip) = addrs.get(d.addr).copied() else {
                d.hop += 1;
                d.addr = 0;
                continue;
            };
            d.addr += 1;
            let addr = SocketAddr::new(ip, hop.port);
            match self.reactor.connect(addr) {
                Ok(sock) => {
                    let deadline = now + self.cfg.connect_timeout;
                    d.phase = Phase::Connecting {
                        sock,
                        addr,
                        deadline,
                    };
                    self.socket_owner.insert(sock, key);
                    return;
                }
                Err(e) => {
                    let reason = outcome::connect_failed(&addr.to_string(), &outcome::io_words(&e));
                    log::debug!("{}: {reason}", d.job.id);
                    d.last_error = Some(reason);
                }
            }
        }
    }

    /// A resolver answer for one of our deliveries.
    fn lookup_done(
        &mut self,
        lookup: LookupId,
        result: Result<Vec<MxHost>, DnsError>,
        now: Instant,
    ) {
        let Some(key) = self.lookups.remove(&lookup) else {
            return;
        };
        let port = self.cfg.mx_port;
        let hostname = self.cfg.hostname.clone();
        let Some(d) = self.deliveries.get_mut(&key) else {
            return;
        };
        let is_mx = !d.job.domain.is_empty();
        match result {
            Ok(hosts) => {
                if is_mx {
                    // RFC 5321 §5.1: when we are one of the MX hosts, only
                    // more preferred hosts are candidates (else: a loop).
                    let own = hosts
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(&hostname))
                        .map(|h| h.preference);
                    let hosts: Vec<MxHost> = match own {
                        Some(p) => hosts.into_iter().filter(|h| h.preference < p).collect(),
                        None => hosts,
                    };
                    if own.is_some() && hosts.is_empty() {
                        let reason = outcome::mail_loops_back(&d.job.domain);
                        d.fail_undecided(&reason);
                        self.finish_delivery(key);
                        return;
                    }
                    d.hops = hosts
                        .into_iter()
                        .map(|h| Hop {
                            name: h.name,
                            port,
                            addrs: Some(h.addrs),
                        })
                        .collect();
                    d.hop = 0;
                } else if let Some(hop) = d.hops.get_mut(d.hop) {
                    hop.addrs = Some(hosts.into_iter().flat_map(|h| h.addrs).collect());
                }
                d.addr = 0;
                self.advance(key, now);
            }
            Err(e) => {
                let permanent = e.is_permanent();
                let name = if is_mx {
                    d.job.domain.clone()
                } else {
                    d.hops
                        .get(d.hop)
                        .map(|h| h.name.clone())
                        .unwrap_or_default()
                };
                let text = match (&e, is_mx) {
                    (DnsError::NullMx, _) => outcome::dns_null_mx(&name),
                    (DnsError::NoSuchDomain, true) => outcome::dns_no_such_domain(&name),
                    (DnsError::NoAddress, true) => outcome::dns_no_address(&name),
                    (DnsError::Temporary(why), _) => outcome::dns_temporary(&name, why),
                    (e, _) => outcome::dns_temporary(&name, &e.to_string()),
                };
                if is_mx && permanent {
                    d.fail_undecided(&text);
                    self.finish_delivery(key);
                } else {
                    // A smarthost name that does not resolve, or a DNS outage:
                    // move on to the next host; defer if none is left.
                    d.last_error = Some(text);
                    if is_mx {
                        self.finish_delivery(key);
                    } else {
                        d.hop += 1;
                        d.addr = 0;
                        self.advance(key, now);
                    }
                }
            }
        }
    }

    /// Readiness on an outbound socket (delivery or DNS).
    pub(super) fn outbound_ready(&mut self, sock: SockId) {
        if self.dns_socks.contains_key(&sock) {
            self.dns_ready(sock);
            return;
        }
        let Some(&key) = self.socket_owner.get(&sock) else {
            self.reactor.close(sock);
            return;
        };
        let now = Instant::now();
        let Some(d) = self.deliveries.get(&key) else {
            return;
        };
        let smarthost = d.job.domain.is_empty();
        let name = d
            .hops
            .get(d.hop)
            .map(|h| h.name.clone())
            .unwrap_or_default();
        let fallback = d.plaintext_fallback;
        // The session settings (and the smarthost password file) are read
        // once, when the connection is made, not at every readiness event.
        let connecting = matches!(d.phase, Phase::Connecting { .. });
        let setup = connecting.then(|| {
            let (client_cfg, implicit) = self.client_config(
                smarthost,
                fallback.is_some_and(|a| Some(a) == d.connecting_addr()),
            );
            (client_cfg, implicit, self.tls_config_for(smarthost))
        });
        let Some(d) = self.deliveries.get_mut(&key) else {
            return;
        };
        if let (Phase::Connecting { sock, addr, .. }, Some((client_cfg, implicit, tls_cfg))) =
            (&d.phase, setup)
        {
            let (sock, addr) = (*sock, *addr);
            match self.reactor.connect_result(sock) {
                Ok(false) => return,
                Ok(true) => {
                    log::debug!("{}: connected to {addr}", d.job.id);
                    let policy = client_cfg.tls;
                    let transport = if implicit {
                        let Some(tls_cfg) = tls_cfg else {
                            d.last_error = Some(outcome::tls_no_trust_anchors());
                            self.drop_socket(sock);
                            self.advance(key, now);
                            return;
                        };
                        match TlsStream::client(tls_cfg, &name) {
                            Ok(t) => Transport::with_tls(t),
                            Err(e) => {
                                d.last_error = Some(outcome::tls_failed(&name, &e.0));
                                self.drop_socket(sock);
                                self.advance(key, now);
                                return;
                            }
                        }
                    } else {
                        Transport::plain()
                    };
                    let client = ClientSession::new(client_cfg, now);
                    d.phase = Phase::Talking {
                        sock,
                        addr,
                        client: Box::new(client),
                        transport: Box::new(transport),
                        tls_pending: false,
                        policy,
                    };
                }
                Err(e) => {
                    let why = outcome::io_words(&e);
                    d.last_error = Some(outcome::connect_failed(&addr.to_string(), &why));
                    self.drop_socket(sock);
                    self.advance(key, now);
                    return;
                }
            }
        }
        self.pump(key, now);
    }

    /// The SMTP client settings for one connection, and whether TLS is
    /// implicit (port 465 style). `no_tls`: the opportunistic plaintext retry.
    fn client_config(&self, smarthost: bool, no_tls: bool) -> (ClientConfig, bool) {
        let (tls, implicit) = if smarthost {
            match self.cfg.smarthost_tls {
                SmarthostTls::StartTls => (TlsPolicy::Required, false),
                SmarthostTls::Tls => (TlsPolicy::Never, true),
                SmarthostTls::None => (TlsPolicy::Never, false),
            }
        } else {
            match self.cfg.outbound_tls {
                _ if no_tls => (TlsPolicy::Never, false),
                OutboundTls::Opportunistic => (TlsPolicy::IfOffered, false),
                OutboundTls::Required => (TlsPolicy::Required, false),
                OutboundTls::None => (TlsPolicy::Never, false),
            }
        };
        let credentials = if smarthost {
            self.smarthost_credentials()
        } else {
            None
        };
        let cfg = ClientConfig {
            helo_name: self.cfg.hostname.clone(),
            tls,
            tls_active: implicit,
            credentials,
            reply_timeout: self.cfg.client_timeout,
            final_timeout: self.cfg.client_timeout * 2,
        };
        (cfg, implicit)
    }

    /// Smarthost and `outbound_tls = required` verify the certificate;
    /// opportunistic MX TLS encrypts without authenticating (RFC 7435).
    /// `None`: verification is needed but no trust anchors are loaded (the
    /// delivery defers; it never falls back to an unverified handshake).
    fn tls_config_for(&self, smarthost: bool) -> Option<Arc<rustls::ClientConfig>> {
        let verify = smarthost || self.cfg.outbound_tls == OutboundTls::Required;
        if verify {
            self.tls_client.clone()
        } else {
            Some(self.tls_client_any.clone())
        }
    }

    /// `smarthost_user` and the first line of `smarthost_password_file`
    /// (read at each connection, so a changed password needs no reload).
    fn smarthost_credentials(&self) -> Option<Credentials> {
        let user = self.cfg.smarthost_user.clone()?;
        let path = self.cfg.smarthost_password_file.as_ref()?;
        match std::fs::read_to_string(path) {
            Ok(text) => Some(Credentials {
                user,
                password: text.lines().next().unwrap_or("").to_string(),
            }),
            Err(e) => {
                log::error!("smarthost_password_file {}: {e}", path.display());
                None
            }
        }
    }

    /// Moves bytes between socket, client session and spool file.
    fn pump(&mut self, key: u64, now: Instant) {
        let mut reports = Vec::new();
        self.pump_connection(key, now, &mut reports);
        for (job, decided) in reports {
            self.report(job, decided, None);
        }
    }

    fn pump_connection(
        &mut self,
        key: u64,
        now: Instant,
        reports: &mut Vec<(Job, HashMap<usize, Outcome>)>,
    ) {
        for _ in 0..64 {
            let Some(d) = self.deliveries.get_mut(&key) else {
                return;
            };
            let Phase::Talking {
                sock,
                addr,
                client,
                transport,
                tls_pending,
                policy,
            } = &mut d.phase
            else {
                return;
            };
            let (sock, addr) = (*sock, *addr);
            let mut progressed = false;
            // Events first: they may produce output.
            while let Some(ev) = client.poll_event() {
                progressed = true;
                match ev {
                    ClientEvent::Ready => {
                        if d.body.is_none() && !d.body_done {
                            client.start_transaction(transaction(&d.job), now);
                        } else {
                            client.quit();
                        }
                    }
                    ClientEvent::WantBody => match self.spool.open_content(d.job.id) {
                        Ok((f, _)) => d.body = Some(f),
                        Err(e) => {
                            log::error!("{}: cannot read queue file: {e}", d.job.id);
                            client.connection_lost(now);
                        }
                    },
                    ClientEvent::TransactionDone(outcomes) => {
                        let relay = relay_name(&d.hops, d.hop, addr);
                        for (i, o) in outcomes.into_iter().enumerate() {
                            d.decided.insert(i, outcome(o, &relay));
                        }
                        d.body = None;
                        d.body_done = true;
                        // Connection reuse: the next job for the same
                        // destination goes over this session (it inherits the slot).
                        let next = if client.is_closed() {
                            None
                        } else {
                            self.outbound.take_for(&d.job.domain)
                        };
                        match next {
                            Some(next) => {
                                let done = std::mem::replace(&mut d.job, next);
                                let decided = std::mem::take(&mut d.decided);
                                reports.push((done, decided));
                                d.body_done = false;
                                d.chunk_pos = 0;
                                d.chunk_end = 0;
                                client.start_transaction(transaction(&d.job), now);
                            }
                            None => {
                                // Report now; keep the session open a moment
                                // for the next message to the same place.
                                let done = d.job.clone();
                                let decided = std::mem::take(&mut d.decided);
                                reports.push((done, decided));
                                d.job_reported = true;
                                if !client.is_closed() {
                                    d.idle_since = Some(now);
                                }
                            }
                        }
                    }
                    ClientEvent::SessionFailed(_) if d.job_reported => {
                        // An idle cached connection went away: nothing is owed.
                        self.drop_socket(sock);
                        self.finish_delivery(key);
                        return;
                    }
                    ClientEvent::SessionFailed(o) => {
                        let relay = relay_name(&d.hops, d.hop, addr);
                        // Silence in plaintext on the implicit-TLS port: the
                        // server waits for our TLS hello (a mode mismatch).
                        let silent_465 = addr.port() == outcome::IMPLICIT_TLS_PORT
                            && transport.tls.is_none()
                            && !client.greeted()
                            && matches!(&o, RcptOutcome::Deferred(r)
                                if matches!(r.own, Some(Own::Timeout(_))));
                        let o = match d.tls_failure.take() {
                            Some(tls) => Outcome::Deferred(tls),
                            None if silent_465 => {
                                Outcome::Deferred(outcome::tls_implicit_port(&relay))
                            }
                            None => outcome(o, &relay),
                        };
                        if d.body_done {
                            // After the transaction (QUIT trouble): nothing to do.
                        } else if matches!(o, Outcome::Failed(_))
                            && d.hop + 1 >= d.hops.len()
                            && d.addrs_left() == 0
                        {
                            for i in 0..d.job.recipients.len() {
                                d.decided.entry(i).or_insert_with(|| o.clone());
                            }
                        } else {
                            d.last_error = o.reason().cloned();
                        }
                        d.body = None;
                        self.drop_socket(sock);
                        if d_finished(self.deliveries.get(&key)) {
                            self.finish_delivery(key);
                        } else {
                            self.advance(key, now);
                        }
                        return;
                    }
                    ClientEvent::StartTls => {
                        let name = d
                            .hops
                            .get(d.hop)
                            .map(|h| h.name.clone())
                            .unwrap_or_default();
                        let cfg = if *policy == TlsPolicy::IfOffered {
                            Some(self.tls_client_any.clone())
                        } else {
                            self.tls_client.clone()
                        };
                        let stream = match cfg {
                            Some(cfg) => TlsStream::client(cfg, &name),
                            None => Err(crate::tls::TlsError(
                                "no trusted CA certificates to verify it (set tls_ca_file)".into(),
                            )),
                        };
                        match stream {
                            Ok(t) => {
                                transport.tls = Some(t);
                                *tls_pending = true;
                            }
                            Err(e) => {
                                let relay = relay_name(&d.hops, d.hop, addr);
                                d.tls_failure = Some(outcome::tls_failed(&relay, &e.0));
                                client.connection_lost(now);
                            }
                        }
                    }
                }
            }
            // Body: feed the client until it stops taking (high-water mark).
            if let Some(file) = d.body.as_mut() {
                loop {
                    if d.chunk_pos == d.chunk_end {
                        if d.chunk.len() != BODY_CHUNK {
                            d.chunk.resize(BODY_CHUNK, 0);
                        }
                        match file.read(&mut d.chunk) {
                            Ok(0) => {
                                d.chunk_pos = 0;
                                d.chunk_end = 0;
                                client.finish_body(now);
                                d.body = None;
                                progressed = true;
                                break;
                            }
                            Ok(n) => {
                                d.chunk_pos = 0;
                                d.chunk_end = n;
                            }
                            Err(e) => {
                                log::error!("{}: reading queue file: {e}", d.job.id);
                                d.chunk_pos = 0;
                                d.chunk_end = 0;
                                d.body = None;
                                client.connection_lost(now);
                                break;
                            }
                        }
                    }
                    let unsent = d.chunk.get(d.chunk_pos..d.chunk_end).unwrap_or_default();
                    let took = client.send_body(unsent);
                    if took == 0 {
                        break;
                    }
                    d.chunk_pos += took;
                    progressed = true;
                }
            }
            // Feeding the body can settle the transaction (a body that
            // cannot be downgraded to 7 bits): its events come first.
            if client.has_events() {
                continue;
            }
            // Write (through TLS when on; nothing goes out mid-handshake but
            // the handshake itself).
            while !*tls_pending && !client.poll_transmit().is_empty() {
                match transport.write(&mut self.reactor, sock, client.poll_transmit()) {
                    Ok(0) => break,
                    Ok(n) => {
                        client.consume_transmit(n);
                        client.note_progress(now);
                        progressed = true;
                    }
                    Err(_) => {
                        client.connection_lost(now);
                        progressed = true;
                        break;
                    }
                }
            }
            let flushed = transport.flush(&mut self.reactor, sock).unwrap_or(true);
            if client.is_closed() && client.poll_transmit().is_empty() && flushed {
                self.drop_socket(sock);
                self.finish_delivery(key);
                return;
            }
            // Read.
            let mut input = Vec::new();
            match transport.read(&mut self.reactor, sock, &mut input, READ_CHUNK) {
                Read::Data => {
                    client.handle_input(&input, now);
                    progressed = true;
                }
                Read::Pending => {}
                Read::Closed => {
                    if let Some(e) = transport.tls_error() {
                        let relay = relay_name(&d.hops, d.hop, addr);
                        let reason = match (transport.tls_peer_spoke_plaintext(), *tls_pending) {
                            (true, false) => outcome::tls_plaintext_greeting(&relay),
                            _ => outcome::tls_failed(&relay, &e),
                        };
                        log::debug!("{}: {reason}", d.job.id);
                        d.tls_failure = Some(reason);
                        // Opportunistic TLS that fails: this address once more in plaintext.
                        if *policy == TlsPolicy::IfOffered && d.plaintext_fallback.is_none() {
                            log::warn!(
                                "{}: TLS with {addr} failed ({}); retrying in plaintext",
                                d.job.id,
                                crate::logsafe::LogSafe(&e)
                            );
                            d.plaintext_fallback = Some(addr);
                            d.addr = d.addr.saturating_sub(1);
                        }
                    }
                    client.connection_lost(now);
                    progressed = true;
                }
            }
            if *tls_pending
                && !transport.is_handshaking()
                && transport.tls.as_ref().is_some_and(|t| t.error().is_none())
            {
                *tls_pending = false;
                if let Some(desc) = transport
                    .tls
                    .as_ref()
                    .and_then(|t| t.protocol_description())
                {
                    log::debug!("{}: TLS with {addr}: {desc}", d.job.id);
                }
                client.tls_established(now);
                progressed = true;
            }
            if !progressed {
                return;
            }
        }
        // Budget spent: come back next turn.
        if let Some(Delivery {
            phase: Phase::Talking { sock, .. },
            ..
        }) = self.deliveries.get(&key)
        {
            let s = *sock;
            self.reactor.mark_hot(s);
        }
    }

    /// The tick: connects and client sessions whose deadline passed.
    pub(super) fn sweep_outbound(&mut self, now: Instant) {
        // Cached connections idle for too long (or all of them at shutdown).
        let stale: Vec<u64> = self
            .deliveries
            .iter()
            .filter(|(_, d)| {
                d.idle_since
                    .is_some_and(|t| self.stopping.is_some() || t + OUTBOUND_IDLE_KEEP <= now)
            })
            .map(|(k, _)| *k)
            .collect();
        for key in stale {
            if let Some(d) = self.deliveries.get_mut(&key) {
                d.idle_since = None;
                if let Phase::Talking { client, .. } = &mut d.phase {
                    client.quit();
                }
            }
            self.pump(key, now);
        }
        let due: Vec<u64> = self
            .deliveries
            .iter()
            .filter(|(_, d)| match &d.phase {
                Phase::Connecting { deadline, .. } => *deadline <= now,
                Phase::Talking { client, .. } => client.poll_timeout().is_some_and(|t| t <= now),
                Phase::Resolving(_) => false,
            })
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            let Some(d) = self.deliveries.get_mut(&key) else {
                continue;
            };
            match &mut d.phase {
                Phase::Connecting { addr, sock, .. } => {
                    d.last_error = Some(outcome::connect_timeout(&addr.to_string()));
                    let s = *sock;
                    self.drop_socket(s);
                    self.advance(key, now);
                }
                Phase::Talking { client, .. } => {
                    client.handle_timeout(now);
                    self.pump(key, now);
                    // A peer that stopped reading cannot take the last
                    // (TLS) bytes either: a timed-out session is dropped.
                    if let Some(Delivery {
                        phase: Phase::Talking { client, sock, .. },
                        ..
                    }) = self.deliveries.get(&key)
                    {
                        if client.is_closed() && client.poll_timeout().is_none() {
                            let s = *sock;
                            self.drop_socket(s);
                            self.finish_delivery(key);
                        }
                    }
                }
                Phase::Resolving(_) => {}
            }
        }
    }

    fn drop_socket(&mut self, sock: SockId) {
        self.reactor.close(sock);
        self.socket_owner.remove(&sock);
    }

    /// Reports a delivery's outcomes to the runner and frees its slot.
    fn finish_delivery(&mut self, key: u64) {
        let Some(mut d) = self.deliveries.remove(&key) else {
            return;
        };
        match &d.phase {
            Phase::Connecting { sock, .. } | Phase::Talking { sock, .. } => {
                let s = *sock;
                self.drop_socket(s);
            }
            Phase::Resolving(l) => {
                self.lookups.remove(l);
            }
        }
        self.outbound.finished(&d.job.domain);
        if !d.job_reported {
            let decided = std::mem::take(&mut d.decided);
            self.report(d.job, decided, d.last_error.take());
        }
    }

    /// Hands a job's outcomes to the runner; recipients without one are
    /// deferred with the last error seen.
    fn report(
        &mut self,
        job: Job,
        mut decided: HashMap<usize, Outcome>,
        last_error: Option<Reason>,
    ) {
        let last = last_error.unwrap_or_else(outcome::no_destination_reached);
        let mut outcomes = Vec::with_capacity(job.recipients.len());
        for (j, (index, _)) in job.recipients.iter().enumerate() {
            let o = decided
                .remove(&j)
                .unwrap_or_else(|| Outcome::Deferred(last.clone()));
            outcomes.push((*index, o));
        }
        self.job_done(job.id, outcomes);
    }

    // --- DNS ---------------------------------------------------------------------

    /// Sends what the resolver wants sent and collects its answers.
    pub(super) fn dns_flush(&mut self, now: Instant) {
        while let Some(tx) = self.resolver.poll_transmit() {
            let local: SocketAddr = if tx.server.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let sock = match tx.transport {
                DnsTransport::Udp => self.reactor.udp_bind(local).and_then(|s| {
                    self.reactor
                        .udp_send(s, tx.server, &tx.payload)
                        .map(|_| s)
                        .inspect_err(|_| self.reactor.close(s))
                }),
                DnsTransport::Tcp => self.reactor.connect(tx.server),
            };
            match sock {
                Ok(s) => {
                    let pending_write = if matches!(tx.transport, DnsTransport::Tcp) {
                        tx.payload
                    } else {
                        Vec::new()
                    };
                    self.dns_socks.insert(
                        s,
                        DnsSock {
                            handle: tx.handle,
                            server: tx.server,
                            transport: tx.transport,
                            pending_write,
                            read_buf: Vec::new(),
                        },
                    );
                    self.dns_by_handle.insert(tx.handle, s);
                }
                Err(e) => {
                    log::debug!("dns: cannot send to {}: {e}", tx.server);
                    self.resolver.handle_transport_error(tx.handle, now);
                }
            }
        }
        while let Some(handle) = self.resolver.poll_closed() {
            if let Some(s) = self.dns_by_handle.remove(&handle) {
                self.dns_socks.remove(&s);
                self.reactor.close(s);
            }
        }
        let mut results = Vec::new();
        while let Some(r) = self.resolver.poll_result() {
            results.push(r);
        }
        for (lookup, result) in results {
            self.lookup_done(lookup, result, now);
        }
        if let Some(t) = self.resolver.poll_timeout() {
            // One heap entry at a time: only an earlier deadline adds one.
            if self.dns_timer.is_none_or(|armed| t < armed) {
                self.dns_timer = Some(t);
                self.reactor.add_timer(t, Timer::Dns);
            }
        }
    }

    pub(super) fn dns_timer(&mut self, now: Instant) {
        self.dns_timer = None;
        self.resolver.handle_timeout(now);
        self.dns_flush(now);
    }

    fn dns_ready(&mut self, sock: SockId) {
        let now = Instant::now();
        let Some(ds) = self.dns_socks.get_mut(&sock) else {
            return;
        };
        let handle = ds.handle;
        match ds.transport {
            DnsTransport::Udp => {
                let mut buf = [0u8; 1500];
                loop {
                    match self.reactor.udp_recv(sock, &mut buf) {
                        Ok((n, from)) => {
                            let msg = buf.get(..n).unwrap_or_default();
                            self.resolver.handle_response(handle, from, msg, now)
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            self.resolver.handle_transport_error(handle, now);
                            break;
                        }
                    }
                }
            }
            DnsTransport::Tcp => {
                let server = ds.server;
                let mut failed = false;
                if !ds.pending_write.is_empty() {
                    match self.reactor.connect_result(sock) {
                        Ok(true) => match self.reactor.write(sock, &ds.pending_write) {
                            Ok(n) => {
                                ds.pending_write.drain(..n.min(ds.pending_write.len()));
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(_) => failed = true,
                        },
                        Ok(false) => {}
                        Err(_) => failed = true,
                    }
                }
                let mut buf = [0u8; 4096];
                while !failed {
                    match self.reactor.read(sock, &mut buf) {
                        Ok(0) => {
                            failed = true;
                        }
                        Ok(n) => {
                            ds.read_buf
                                .extend_from_slice(buf.get(..n).unwrap_or_default());
                            if ds.read_buf.len() > MAX_DNS_TCP + 2 {
                                failed = true;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(_) => failed = true,
                    }
                    // A message is complete once its 2-octet length prefix
                    // and that many octets are in.
                    if let [hi, lo, rest @ ..] = ds.read_buf.as_slice() {
                        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
                        if let Some(msg) = rest.get(..len) {
                            let msg = msg.to_vec();
                            self.resolver.handle_response(handle, server, &msg, now);
                            break;
                        }
                    }
                }
                if failed {
                    self.resolver.handle_transport_error(handle, now);
                }
            }
        }
        self.dns_flush(now);
    }
}

impl Delivery {
    fn new(job: Job, hops: Vec<Hop>) -> Delivery {
        Delivery {
            job,
            hops,
            hop: 0,
            addr: 0,
            phase: Phase::Resolving(LookupId(0)),
            body: None,
            plaintext_fallback: None,
            job_reported: false,
            idle_since: None,
            chunk: Vec::new(),
            chunk_pos: 0,
            chunk_end: 0,
            body_done: false,
            last_error: None,
            tls_failure: None,
            decided: HashMap::new(),
        }
    }

    /// Fails every recipient without an outcome yet (a permanent answer
    /// about the destination itself, before any SMTP).
    fn fail_undecided(&mut self, reason: &Reason) {
        for i in 0..self.job.recipients.len() {
            self.decided
                .entry(i)
                .or_insert_with(|| Outcome::Failed(reason.clone()));
        }
    }

    /// The address of the connection being set up.
    fn connecting_addr(&self) -> Option<SocketAddr> {
        match self.phase {
            Phase::Connecting { addr, .. } => Some(addr),
            _ => None,
        }
    }

    fn addrs_left(&self) -> usize {
        self.hops
            .get(self.hop)
            .and_then(|h| h.addrs.as_ref())
            .map_or(0, |a| a.len().saturating_sub(self.addr))
    }
}

/// Every recipient has an outcome already.
fn d_finished(d: Option<&Delivery>) -> bool {
    d.is_some_and(|d| d.decided.len() == d.job.recipients.len())
}

fn transaction(job: &Job) -> Transaction {
    Transaction {
        sender: job.sender.clone(),
        recipients: job.recipients.iter().map(|(_, a)| a.clone()).collect(),
        size: job.size,
        eight_bit: job.eight_bit,
        smtputf8: false,
    }
}

fn relay_name(hops: &[Hop], hop: usize, addr: SocketAddr) -> String {
    let name = hops.get(hop).map_or("unknown", |h| h.name.as_str());
    format!("{name}[{}]:{}", addr.ip(), addr.port())
}

fn outcome(o: RcptOutcome, relay: &str) -> Outcome {
    match o {
        RcptOutcome::Delivered(_) => Outcome::Delivered {
            relay: relay.to_string(),
        },
        RcptOutcome::Deferred(r) => Outcome::Deferred(outcome::from_client(&r, relay)),
        RcptOutcome::Failed(r) => Outcome::Failed(outcome::from_client(&r, relay)),
    }
}
