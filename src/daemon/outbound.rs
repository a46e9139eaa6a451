//! The outbound driver: running outbound jobs in the loop. Each job is an
//! [`outbound::machine::Delivery`](crate::outbound::machine::Delivery),
//! which decides everything (MX walk, address and TLS fallback, deadlines,
//! connection reuse, outcomes); [`OutboundDriver`] only maps its actions to
//! the world: DNS questions to the [`DnsDriver`], connects and bytes to
//! the reactor (through TLS when asked), the body from the spool file
//! (streamed with a high-water mark, never whole in memory), and its
//! reports, as [`JobReport`] values, to the queue runner.
//!
//! The driver owns the jobs waiting for a slot, the running deliveries,
//! the map from outbound sockets and lookups to deliveries, and the TLS
//! client configurations; what it borrows for a call comes in an [`Io`]
//! (reactor, spool, configuration) and the [`DnsDriver`]. Reports are
//! handed out when the call returns: the runner settles the message then,
//! after the session that reported has been offered its next job.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::io::Read as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use super::dns::{Answer, DnsDriver};
use super::link::{Link, Read};
use super::{Io, Timer};
use crate::config::{Config, HostPort};
use crate::delivery::outcome::{self, Outcome};
use crate::dns::LookupId;
use crate::idmap::IdMap;
use crate::outbound::machine::{Action, Delivery, Hop, Settings};
use crate::outbound::{Job, Outbound};
use crate::reactor::{Reactor, SockId, SockMap};
use crate::smtp::client::Credentials;
use crate::spool::QueueId;
use crate::tls::TlsStream;

/// Body bytes read from the spool per step.
pub const BODY_CHUNK: usize = 16 * 1024;
/// Bytes read from a peer per wakeup.
const READ_CHUNK: usize = 4096;
/// Rounds of actions, body, writes and reads per readiness event; a busy
/// connection comes back next turn (`mark_hot`).
const PUMP_ROUNDS: usize = 64;
/// Rounds of token requests and results per call (see `token_http`).
const TOKEN_HTTP_ROUNDS: usize = 4;

/// One delivery machine and what the driver holds for it.
struct Outgoing {
    machine: Delivery,
    /// The connection, when one is open.
    sock: Option<SockId>,
    link: Link,
    /// The TLS handshake of this connection was reported finished.
    tls_reported: bool,
    lookup: Option<LookupId>,
    body: Option<crate::spool::Content>,
    /// Body bytes read from the spool (`chunk[chunk_pos..chunk_end]` not
    /// yet taken by the machine); sized once, refilled in place.
    chunk: Vec<u8>,
    chunk_pos: usize,
    chunk_end: usize,
}

/// A finished job: its message and one outcome per recipient (by index
/// in the envelope), for the queue runner.
pub struct JobReport {
    pub id: QueueId,
    pub outcomes: Vec<(usize, Outcome)>,
    /// The hop that took the recipients offered DSN (RFC 3461): it
    /// reports success itself, tern does not.
    pub dsn_passed: bool,
}

pub struct OutboundDriver {
    /// Jobs waiting for a connection slot, and the slot counts.
    jobs: Outbound,
    /// The running deliveries, by key.
    deliveries: IdMap<u64, Outgoing>,
    delivery_seq: u64,
    /// Which delivery owns an outbound socket.
    socket_owner: SockMap<u64>,
    /// Which delivery waits for a lookup.
    lookups: IdMap<LookupId, u64>,
    /// Client configs for outbound TLS, built when first needed.
    tls: TlsClients,
    /// Reports of this call, handed out at its end.
    reports: Vec<JobReport>,
    /// OAuth2 access tokens (token commands, refresh grants, their cache).
    tokens: super::oauth::TokenSource,
    /// Jobs (holding their slots) waiting for their relay's token.
    token_waiting: Vec<Job>,
    /// The token endpoints' HTTP exchanges (refresh grants), and which
    /// token source request each one is.
    token_http: super::http::HttpDriver,
    token_requests: HashMap<super::http::HttpHandle, super::oauth::RequestId>,
    /// Webhook jobs (`routes` target `webhook:`) and their HTTP exchanges.
    webhooks: super::webhook::Webhooks,
    /// Jobs being DKIM-signed before they wait for a slot.
    signing: super::signing::Signing,
    /// Scratch for `poll`: the keys of idle deliveries.
    idle_keys: Vec<u64>,
    /// Scratch for `pump`: bytes read from a server.
    read_buf: Vec<u8>,
}

/// The outbound TLS client configurations, each built at its first use:
/// a daemon that never starts TLS never holds the parsed CA bundle (nor
/// touches the code that parses it after start-up's check).
struct TlsClients {
    /// `tls_ca_file`; `None`: the system bundle.
    ca_file: Option<std::path::PathBuf>,
    /// Verifying (`None`: no trust anchors).
    verifying: OnceCell<Option<Arc<rustls::ClientConfig>>>,
    /// Opportunistic (RFC 7435): any certificate.
    any: OnceCell<Arc<rustls::ClientConfig>>,
}

impl TlsClients {
    fn verifying(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.verifying
            .get_or_init(
                || match crate::tls::client_config(self.ca_file.as_deref()) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        log::error!("outbound TLS: {}", e.0);
                        None
                    }
                },
            )
            .clone()
    }

    /// Whether certificates can be verified: not known to fail (start-up
    /// checked that the configuration builds).
    fn has_anchors(&self) -> bool {
        self.verifying.get().is_none_or(Option::is_some)
    }

    fn any(&self) -> Arc<rustls::ClientConfig> {
        self.any
            .get_or_init(crate::tls::client_config_no_verify)
            .clone()
    }
}

impl OutboundDriver {
    /// The verifying client configuration is built from `tls_ca_file`
    /// (else the system bundle) at the first TLS connection that needs it;
    /// start-up has checked that it builds (`daemon::load_tls_client`).
    pub fn new(cfg: &Config) -> OutboundDriver {
        OutboundDriver {
            jobs: Outbound::new(cfg),
            deliveries: IdMap::default(),
            delivery_seq: 0,
            socket_owner: SockMap::default(),
            lookups: IdMap::default(),
            tls: TlsClients {
                ca_file: cfg.tls_ca_file.clone(),
                verifying: OnceCell::new(),
                any: OnceCell::new(),
            },
            reports: Vec::new(),
            tokens: super::oauth::TokenSource::default(),
            token_waiting: Vec::new(),
            token_http: super::http::HttpDriver::default(),
            token_requests: HashMap::new(),
            webhooks: super::webhook::Webhooks::default(),
            signing: super::signing::Signing::new(crate::dkim::DkimKeys::load_logged(
                cfg.dkim_keys.as_deref(),
            )),
            idle_keys: Vec::new(),
            read_buf: Vec::new(),
        }
    }

    /// On reload: slot limits, smarthosts.
    pub fn reconfigure(&mut self, cfg: &Config) {
        self.jobs.reconfigure(cfg);
        // A bad new key file keeps the old keys (like the certificate): a
        // daemon running as `user` may no longer read a root-only key.
        let (keys, problems) = crate::dkim::DkimKeys::load(cfg.dkim_keys.as_deref());
        if problems.is_empty() {
            self.signing.set_keys(std::rc::Rc::new(keys));
        } else {
            for p in problems {
                log::error!("reload: keeping the old DKIM keys: {p}");
            }
        }
    }

    /// On reload: the verifying client configuration (new CA file).
    pub fn set_tls_client(&mut self, tls_client: Option<Arc<rustls::ClientConfig>>) {
        self.tls.verifying = OnceCell::from(tls_client);
    }

    /// Queues a job; it starts at the next [`OutboundDriver::poll`] with a
    /// free slot.
    pub fn submit(&mut self, job: Job) {
        // Local mail (LMTP) does not leave the host: never signed.
        if self.signing.is_on() && job.lmtp.is_none() {
            self.signing.submit(job);
        } else {
            self.jobs.submit(job);
        }
    }

    /// A webhook job; it starts at the next [`OutboundDriver::poll`] with
    /// a free webhook slot.
    pub fn submit_webhook(&mut self, job: super::webhook::WebhookJob) {
        self.webhooks.submit(job);
    }

    /// Jobs are being signed: the loop must come back without sleeping.
    pub fn is_signing(&self) -> bool {
        self.signing.is_busy()
    }

    /// Jobs waiting for a connection slot or for their signature (webhook
    /// jobs included).
    pub fn backlog(&self) -> usize {
        self.jobs.backlog() + self.webhooks.backlog() + self.signing.len()
    }

    /// No job running.
    pub fn is_idle(&self) -> bool {
        self.jobs.is_idle() && self.webhooks.is_idle()
    }

    /// No new connections (waiting jobs stay in the spool for the restart).
    pub fn shutdown(&mut self) {
        self.jobs.shutdown();
        self.signing.clear();
        // Jobs waiting for a token stay in the spool, like waiting ones.
        for job in std::mem::take(&mut self.token_waiting) {
            self.jobs.finished(&job.destination_key());
        }
        self.tokens.shutdown();
        self.webhooks.shutdown();
    }

    /// Starts jobs while slots are free (idle kept sessions first). Flush
    /// the DNS driver afterwards: the jobs may have asked questions.
    pub fn poll(&mut self, io: &mut Io, dns: &mut DnsDriver) -> Vec<JobReport> {
        if self.signing.is_busy() {
            let now = super::unix_now();
            let trusted = crate::system::clock_before_build(now).is_none();
            for job in self.signing.turn(io.spool, trusted.then_some(now)) {
                self.jobs.submit(job);
            }
        }
        // Idle cached connections first: a waiting job for the same
        // destination reuses one without a new connect, greeting and EHLO.
        let now = Instant::now();
        // Collected into a kept buffer (taken for the loop, which needs
        // `self`): no allocation per turn.
        let mut idle = std::mem::take(&mut self.idle_keys);
        idle.extend(
            self.deliveries
                .iter()
                .filter(|(_, d)| d.machine.is_idle())
                .map(|(k, _)| *k),
        );
        for key in idle.drain(..) {
            self.offer_next_job(key, now);
            self.pump(io, dns, key, now);
        }
        self.idle_keys = idle;
        while let Some(job) = self.jobs.next_startable() {
            self.start_job(io, dns, job);
        }
        self.token_http(io, dns);
        // Built only when a webhook job is about to start.
        let tls = if self.webhooks.backlog() > 0 {
            self.tls.verifying()
        } else {
            None
        };
        let hooks = self.webhooks.poll(io, dns, tls);
        self.reports.extend(hooks);
        std::mem::take(&mut self.reports)
    }

    /// Gives an idle session the next job to its destination, if any.
    fn offer_next_job(&mut self, key: u64, now: Instant) {
        let Some(d) = self.deliveries.get_mut(&key) else {
            return;
        };
        // Most turns nothing waits: no key is built then.
        if !d.machine.is_idle() || self.jobs.backlog() == 0 {
            return;
        }
        if let Some(job) = self.jobs.take_for(&d.machine.destination_key()) {
            d.body = None;
            d.chunk_pos = 0;
            d.chunk_end = 0;
            if let Err(job) = d.machine.next_job(job, now) {
                self.jobs.submit(*job);
            }
        }
    }

    fn start_job(&mut self, io: &mut Io, dns: &mut DnsDriver, job: Job) {
        let now = Instant::now();
        // An OAuth relay: the job waits (with its slot) for the token.
        let source = job.relay.as_ref().and_then(|r| r.oauth_source()).cloned();
        let token = match source {
            Some(source) => match self.tokens.get(&source, now) {
                Some(token) => Some(token),
                None => {
                    match self.tokens.start(io.reactor, &source, now) {
                        Ok(()) => self.token_waiting.push(job),
                        Err(e) => {
                            log::error!("{}: {e}", job.id);
                            self.defer_job(job, outcome::oauth_token_unavailable(&e));
                        }
                    }
                    return;
                }
            },
            None => None,
        };
        let key = self.next_delivery_key();
        let hops_settings = job_hops_and_settings(
            io.cfg,
            self.tls.has_anchors(),
            &job,
            &self.jobs.smarthosts,
            |name| dns.hosts_entry(name),
            token.as_deref(),
        );
        let (smarthosts, settings) = match hops_settings {
            Ok(hs) => hs,
            Err(e) => {
                // Without its password the relay would refuse the mail
                // (530): deferred, nothing sent.
                log::error!("{}: {e}", job.id);
                self.defer_job(job, outcome::route_unusable(&e));
                return;
            }
        };
        let machine = Delivery::new(job, smarthosts, settings, now);
        self.deliveries.insert(
            key,
            Outgoing {
                machine,
                sock: None,
                link: Link::plain(),
                tls_reported: false,
                lookup: None,
                body: None,
                chunk: Vec::new(),
                chunk_pos: 0,
                chunk_end: 0,
            },
        );
        self.pump(io, dns, key, now);
    }

    /// A job that cannot start: every recipient deferred, its slot freed.
    fn defer_job(&mut self, job: Job, reason: crate::delivery::outcome::Reason) {
        self.jobs.finished(&job.destination_key());
        self.reports.push(JobReport {
            id: job.id,
            outcomes: job
                .recipients
                .iter()
                .map(|(i, _)| (*i, Outcome::Deferred(reason.clone())))
                .collect(),
            dsn_passed: false,
        });
    }

    /// Token sources (commands, refresh grants) that finished: their
    /// waiting jobs start, or are deferred with the failure (4.7.0).
    fn token_results(&mut self, io: &mut Io, dns: &mut DnsDriver) {
        for (source, result) in self.tokens.take_done() {
            let (ready, waiting): (Vec<Job>, Vec<Job>) = std::mem::take(&mut self.token_waiting)
                .into_iter()
                .partition(|j| j.relay.as_ref().and_then(|r| r.oauth_source()) == Some(&source));
            self.token_waiting = waiting;
            for job in ready {
                match &result {
                    // Cached now: `start_job` takes it.
                    Ok(_) => self.start_job(io, dns, job),
                    Err(e) => self.defer_job(job, outcome::oauth_token_unavailable(e)),
                }
            }
        }
    }

    /// Refresh-grant requests of the token source to the HTTP driver,
    /// and its results back: the jobs waiting for those tokens start, or
    /// are deferred with the reason. Rounds are bounded: a result starts
    /// jobs, which find the token cached (or are deferred), so a second
    /// round only runs for exchanges that failed at once.
    fn token_http(&mut self, io: &mut Io, dns: &mut DnsDriver) {
        for _ in 0..TOKEN_HTTP_ROUNDS {
            let now = Instant::now();
            for (id, request) in self.tokens.take_requests() {
                let handle = self.token_http.start(
                    io.reactor,
                    dns,
                    self.tls.verifying(),
                    &request,
                    super::oauth::REFRESH_DEADLINE,
                    now,
                );
                self.token_requests.insert(handle, id);
            }
            let done = self.token_http.take_done();
            if done.is_empty() {
                return;
            }
            for (handle, result) in done {
                if let Some(id) = self.token_requests.remove(&handle) {
                    self.tokens.handle_http(id, result, now);
                }
            }
            self.token_results(io, dns);
        }
    }

    fn next_delivery_key(&mut self) -> u64 {
        self.delivery_seq += 1;
        self.delivery_seq
    }

    /// The DNS driver's answers; those for our deliveries move them.
    /// Arm the DNS driver's timer afterwards (they may ask again).
    pub fn handle_answers(
        &mut self,
        io: &mut Io,
        dns: &mut DnsDriver,
        answers: Vec<Answer>,
        now: Instant,
    ) -> Vec<JobReport> {
        for (lookup, result) in answers {
            if self.token_http.owns_lookup(lookup) {
                self.token_http.handle_answer(io.reactor, lookup, result);
                self.token_http(io, dns);
                continue;
            }
            if self.webhooks.owns_lookup(lookup) {
                let hooks = self.webhooks.handle_answer(io.reactor, lookup, result);
                self.reports.extend(hooks);
                continue;
            }
            let Some(key) = self.lookups.remove(&lookup) else {
                continue;
            };
            let Some(d) = self.deliveries.get_mut(&key) else {
                continue;
            };
            d.lookup = None;
            d.machine.handle_lookup(result, now);
            self.pump(io, dns, key, now);
        }
        std::mem::take(&mut self.reports)
    }

    /// Readiness on a delivery's socket (any other is closed).
    pub fn handle_ready(
        &mut self,
        io: &mut Io,
        dns: &mut DnsDriver,
        sock: SockId,
    ) -> Vec<JobReport> {
        if self.tokens.owns(sock) {
            self.tokens.handle_ready(io.reactor, sock);
            self.token_results(io, dns);
            return std::mem::take(&mut self.reports);
        }
        if self.webhooks.owns(sock) {
            return self.webhooks.handle_ready(io.reactor, sock);
        }
        if self.token_http.owns(sock) {
            self.token_http
                .handle_ready(io.reactor, sock, Instant::now());
            self.token_http(io, dns);
            return std::mem::take(&mut self.reports);
        }
        let Some(&key) = self.socket_owner.get(&sock) else {
            io.reactor.close(sock);
            return Vec::new();
        };
        let now = Instant::now();
        let Some(d) = self.deliveries.get_mut(&key) else {
            return Vec::new();
        };
        if d.machine.is_connecting() {
            match io.reactor.connect_result(sock) {
                Ok(None) => return Vec::new(),
                Ok(Some(local)) => {
                    if let Some(relay) = d.machine.relay() {
                        log::debug!("{}: connected to {relay}", d.machine.job_id());
                    }
                    d.machine.handle_connected(Ok(local), now);
                }
                Err(e) => d.machine.handle_connected(Err(outcome::io_words(&e)), now),
            }
        }
        self.pump(io, dns, key, now);
        std::mem::take(&mut self.reports)
    }

    /// Does what a machine asks, one action at a time.
    fn apply(&mut self, io: &mut Io, dns: &mut DnsDriver, key: u64, action: Action, now: Instant) {
        let Some(d) = self.deliveries.get_mut(&key) else {
            return;
        };
        match action {
            Action::Resolve(lookup) => {
                let id = dns.resolve(&lookup, now);
                d.lookup = Some(id);
                self.lookups.insert(id, key);
            }
            Action::Connect(addr) => match io.reactor.connect(addr) {
                Ok(sock) => {
                    d.sock = Some(sock);
                    d.link = Link::plain();
                    d.tls_reported = false;
                    self.socket_owner.insert(sock, key);
                }
                Err(e) => {
                    log::debug!("{}: connect to {addr}: {e}", d.machine.job_id());
                    d.machine.handle_connected(Err(outcome::io_words(&e)), now);
                }
            },
            // A unix stream connect completes or fails at once (Linux
            // never answers EINPROGRESS for it; a full backlog is EAGAIN,
            // a failure like any other): the loop does not wait.
            Action::ConnectUnix(path) => match io.reactor.connect_unix(&path) {
                Ok(sock) => {
                    d.sock = Some(sock);
                    d.link = Link::plain();
                    d.tls_reported = false;
                    self.socket_owner.insert(sock, key);
                    d.machine.handle_connected_unix(Ok(()), now);
                }
                Err(e) => {
                    log::debug!("{}: connect to {}: {e}", d.machine.job_id(), path.display());
                    d.machine
                        .handle_connected_unix(Err(outcome::io_words(&e)), now);
                }
            },
            Action::StartTls {
                server_name,
                verify,
            } => {
                let cfg = if verify {
                    self.tls.verifying()
                } else {
                    Some(self.tls.any())
                };
                let stream = match cfg {
                    Some(cfg) => TlsStream::client(cfg, &server_name).map_err(|e| e.0),
                    None => Err(outcome::tls_no_trust_anchors().text),
                };
                match stream {
                    Ok(t) => {
                        d.link.tls = Some(t);
                        d.tls_reported = false;
                    }
                    Err(why) => d.machine.handle_tls_error(&why, false, now),
                }
            }
            Action::OpenBody(id) => match io.spool.open_content(id) {
                Ok((f, _)) => {
                    d.body = Some(f);
                    d.chunk_pos = 0;
                    d.chunk_end = 0;
                }
                Err(e) => {
                    log::error!("{id}: cannot read queue file: {e}");
                    d.machine.body_failed(&e.to_string(), now);
                }
            },
            Action::Close => {
                d.body = None;
                if let Some(sock) = d.sock.take() {
                    // The last bytes (a QUIT, a TLS alert) if they fit.
                    let _ = d.link.flush(io.reactor, sock);
                    self.drop_socket(io.reactor, sock);
                }
                if let Some(d) = self.deliveries.get_mut(&key) {
                    d.link = Link::plain();
                }
            }
            Action::Report {
                id,
                relay,
                outcomes,
            } => {
                if d.machine.oauth_rejected() {
                    if let Some(source) = relay.as_ref().and_then(|r| r.oauth_source()) {
                        self.tokens.forget(source);
                    }
                }
                self.reports.push(JobReport {
                    id,
                    outcomes,
                    dsn_passed: d.machine.dsn_passed(),
                });
                // Connection reuse: the next job for the same destination
                // goes over this session (it inherits the slot).
                self.offer_next_job(key, now);
            }
        }
    }

    /// Moves actions, body bytes and socket bytes until nothing moves (or
    /// the round budget is spent).
    fn pump(&mut self, io: &mut Io, dns: &mut DnsDriver, key: u64, now: Instant) {
        for _ in 0..PUMP_ROUNDS {
            let mut progressed = false;
            loop {
                let Some(d) = self.deliveries.get_mut(&key) else {
                    return;
                };
                let Some(action) = d.machine.poll_action() else {
                    break;
                };
                progressed = true;
                self.apply(io, dns, key, action, now);
            }
            let Some(d) = self.deliveries.get_mut(&key) else {
                return;
            };
            if d.machine.is_done() {
                self.finish_delivery(io.reactor, key);
                return;
            }
            // Body: feed the machine until it stops taking (high-water mark).
            if d.body.is_some() && d.machine.wants_body() {
                progressed |= feed_body(d, now);
            }
            // Nothing is read or written before the connect completes (a
            // read would take the socket's error from `connect_result`).
            let sock = d.sock.filter(|_| !d.machine.is_connecting());
            if let Some(sock) = sock {
                // Write (through TLS when on).
                while !d.machine.poll_transmit().is_empty() {
                    match d.link.write(io.reactor, sock, d.machine.poll_transmit()) {
                        Ok(0) => break,
                        Ok(n) => {
                            d.machine.consume_transmit(n, now);
                            progressed = true;
                        }
                        Err(_) => {
                            d.machine.handle_closed(now);
                            progressed = true;
                            break;
                        }
                    }
                }
                let _ = d.link.flush(io.reactor, sock);
            }
            // Read, unless the machine has actions first (a Close).
            let sock = d.sock.filter(|_| !d.machine.is_connecting());
            if let (Some(sock), false) = (sock, d.machine.has_actions()) {
                // A kept buffer: the machine takes every byte at once.
                let mut input = std::mem::take(&mut self.read_buf);
                input.clear();
                let read = d.link.read(io.reactor, sock, &mut input, READ_CHUNK);
                if let Read::Data = read {
                    d.machine.handle_input(&input, now);
                }
                input.clear();
                self.read_buf = input;
                match read {
                    Read::Data => progressed = true,
                    Read::Pending => {}
                    Read::Closed => {
                        match d.link.tls_error() {
                            Some(e) => {
                                let plaintext = d.link.tls_peer_spoke_plaintext();
                                d.machine.handle_tls_error(&e, plaintext, now)
                            }
                            None => d.machine.handle_closed(now),
                        }
                        progressed = true;
                    }
                }
                let handshake_done = d
                    .link
                    .tls
                    .as_ref()
                    .is_some_and(|t| !t.is_handshaking() && t.error().is_none());
                if handshake_done && !d.tls_reported && d.sock.is_some() {
                    d.tls_reported = true;
                    if let Some(desc) = d.link.tls.as_ref().and_then(|t| t.protocol_description()) {
                        log::debug!("{}: TLS: {desc}", d.machine.job_id());
                    }
                    d.machine.handle_tls_established(now);
                    progressed = true;
                }
            }
            if !progressed {
                return;
            }
        }
        // Budget spent: come back next turn.
        if let Some(s) = self.deliveries.get(&key).and_then(|d| d.sock) {
            io.reactor.mark_hot(s);
        }
    }

    /// The tick: deadlines of the machines (connects, replies, idle
    /// sessions), and at shutdown the idle sessions' QUIT.
    pub fn sweep(
        &mut self,
        io: &mut Io,
        dns: &mut DnsDriver,
        now: Instant,
        stopping: bool,
    ) -> Vec<JobReport> {
        self.tokens.sweep(io.reactor, now);
        self.token_results(io, dns);
        self.token_http.sweep(io.reactor, now);
        self.token_http(io, dns);
        let hooks = self.webhooks.sweep(io.reactor, now);
        self.reports.extend(hooks);
        let due: Vec<u64> = self
            .deliveries
            .iter()
            .filter(|(_, d)| {
                (stopping && d.machine.is_idle())
                    || d.machine.poll_timeout().is_some_and(|t| t <= now)
            })
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            let Some(d) = self.deliveries.get_mut(&key) else {
                continue;
            };
            if stopping {
                d.machine.shutdown(now);
            }
            d.machine.handle_timeout(now);
            self.pump(io, dns, key, now);
        }
        std::mem::take(&mut self.reports)
    }

    fn drop_socket(&mut self, reactor: &mut Reactor<Timer>, sock: SockId) {
        reactor.close(sock);
        self.socket_owner.remove(&sock);
    }

    /// A machine is done: its slot is free.
    fn finish_delivery(&mut self, reactor: &mut Reactor<Timer>, key: u64) {
        let Some(d) = self.deliveries.remove(&key) else {
            return;
        };
        if let Some(s) = d.sock {
            self.drop_socket(reactor, s);
        }
        if let Some(l) = d.lookup {
            self.lookups.remove(&l);
        }
        self.jobs.finished(&d.machine.destination_key());
    }
}

/// Streams body bytes from the spool file into the machine until it takes
/// no more; returns whether anything moved.
fn feed_body(d: &mut Outgoing, now: Instant) -> bool {
    let mut progressed = false;
    while let Some(file) = d.body.as_mut() {
        if d.chunk_pos == d.chunk_end {
            if d.chunk.len() != BODY_CHUNK {
                d.chunk.resize(BODY_CHUNK, 0);
            }
            d.chunk_pos = 0;
            d.chunk_end = 0;
            match file.read(&mut d.chunk) {
                Ok(0) => {
                    d.body = None;
                    d.machine.finish_body(now);
                    return true;
                }
                Ok(n) => d.chunk_end = n,
                Err(e) => {
                    log::error!("{}: reading queue file: {e}", d.machine.job_id());
                    d.body = None;
                    d.machine.body_failed(&e.to_string(), now);
                    return true;
                }
            }
        }
        let unsent = d.chunk.get(d.chunk_pos..d.chunk_end).unwrap_or_default();
        let took = d.machine.send_body(unsent, now);
        if took == 0 {
            break;
        }
        d.chunk_pos += took;
        progressed = true;
    }
    progressed
}

/// A job's hops and settings: its relay's (a route, or the smarthost keys
/// as one: hosts, TLS mode, credentials read now for this attempt), or the
/// smarthost list for a job without one, or none for MX. `Err`: the
/// relay's password file cannot be read (the job must not go without it).
/// Shared by the daemon and `tern test`, so both go the same way.
pub fn job_hops_and_settings(
    cfg: &Config,
    trust_anchors: bool,
    job: &Job,
    smarthosts: &[HostPort],
    hosts: impl Fn(&str) -> Option<Vec<IpAddr>>,
    oauth_token: Option<&str>,
) -> Result<(Vec<Hop>, Settings), String> {
    if let Some(target) = job.lmtp.as_deref() {
        let hops = match target {
            crate::config::LmtpTarget::Inet(hp) => {
                crate::outbound::hops_of(std::slice::from_ref(hp), hosts)
            }
            // The machine connects to the socket itself.
            crate::config::LmtpTarget::Unix(_) => Vec::new(),
        };
        return Ok((hops, settings(cfg, false, trust_anchors)));
    }
    Ok(match (&job.relay, job.domain.is_empty()) {
        (Some(relay), true) => {
            let credentials = match (relay.oauth_source(), oauth_token) {
                (Some(_), Some(token)) => relay.oauth_credentials(token),
                (Some(_), None) => return Err("no OAuth2 access token".into()),
                (None, _) => relay.credentials()?,
            };
            let base = settings(cfg, false, trust_anchors);
            (relay.hops(hosts), relay.settings(base, credentials))
        }
        (None, true) => (
            crate::outbound::hops_of(smarthosts, hosts),
            settings(cfg, true, trust_anchors),
        ),
        (_, false) => (Vec::new(), settings(cfg, false, trust_anchors)),
    })
}

/// The machine's view of the configuration; the smarthost password file
/// is read here, once per delivery. `trust_anchors`: a verifying TLS
/// client configuration could be built.
pub fn settings(cfg: &Config, smarthost: bool, trust_anchors: bool) -> Settings {
    Settings {
        hostname: cfg.hostname.clone(),
        helo_name: cfg.helo_name().to_string(),
        mx_port: cfg.mx_port,
        outbound_tls: cfg.outbound_tls,
        smarthost_tls: cfg.smarthost_tls,
        credentials: if smarthost {
            smarthost_credentials(cfg)
        } else {
            None
        },
        connect_timeout: cfg.connect_timeout,
        reply_timeout: cfg.client_timeout,
        trust_anchors,
        connection_reuse: cfg.outbound_connection_reuse,
    }
}

/// `smarthost_user` and the first line of `smarthost_password_file`
/// (read for each delivery, so a changed password needs no reload).
pub fn smarthost_credentials(cfg: &Config) -> Option<Credentials> {
    let user = cfg.smarthost_user.clone()?;
    let path = cfg.smarthost_password_file.as_ref()?;
    match crate::system::read_secret_line(path) {
        Ok(password) => Some(Credentials { user, password }),
        Err(e) => {
            log::error!("smarthost_password_file {}: {e}", path.display());
            None
        }
    }
}
