//! One outbound delivery as a sans-IO machine (in the style of
//! quinn-proto): one job (one message, one destination) from the DNS
//! lookup to the outcome of every recipient, fed results, bytes and time by
//! the daemon, which only moves them (`daemon::outbound`).
//!
//! In: [`Delivery::handle_lookup`], [`Delivery::handle_connected`],
//! [`Delivery::handle_input`], [`Delivery::handle_tls_established`] /
//! [`Delivery::handle_tls_error`], [`Delivery::handle_closed`],
//! [`Delivery::handle_timeout`], and the body through
//! [`Delivery::send_body`] / [`Delivery::finish_body`] /
//! [`Delivery::body_failed`].
//! Out: [`Delivery::poll_action`] (resolve, connect, start TLS, open the
//! body, close, report), [`Delivery::poll_transmit`] (bytes to write) and
//! [`Delivery::poll_timeout`] (the next deadline).
//!
//! What it decides (RFC 5321 §5.1 and §4.5.4.1):
//! - The MX walk: hosts in preference order (equal preferences keep the
//!   resolver's shuffle); when this host is one of them, only more
//!   preferred ones (else the mail loops back: failed). Smarthosts in the
//!   configured order, names resolved as they come.
//! - Every address of a host, IPv6 before IPv4.
//! - A connection failure, a timeout or a whole-session failure moves on to
//!   the next address, then the next host; when every one failed the job is
//!   deferred with the last error. Per-recipient 4xx/5xx replies from a
//!   server that took the transaction are final for this attempt, and so is
//!   a session that dies during the transaction.
//! - TLS policy: opportunistic STARTTLS for MX hosts (not verified, RFC
//!   7435) with one plaintext retry on the same address after a failed
//!   handshake; verified STARTTLS or implicit TLS for smarthosts and for
//!   `outbound_tls = required`, never falling back.
//! - Deadlines: connect ([`Settings::connect_timeout`]); greeting, replies,
//!   TLS handshake, body and the final dot through the SMTP client
//!   (`smtp::client`, `reply_timeout` and twice that after the dot); a
//!   server on port 465 that says nothing within
//!   [`IMPLICIT_TLS_GREETING_WAIT`] while tern speaks plaintext first is a
//!   TLS mode mismatch (it waits for a ClientHello), reported as such.
//! - Connection reuse: after a transaction the session stays open, idle,
//!   for [`OUTBOUND_IDLE_KEEP`]; [`Delivery::next_job`] runs another job to
//!   the same destination on it, else it says QUIT. With
//!   [`Settings::connection_reuse`] off it says QUIT at once.
//!
//! - LMTP (RFC 2033, a job with [`Job::lmtp`]: local mail for
//!   `local_delivery = lmtp`): the same walk and session with the client
//!   in its LMTP mode (LHLO, one reply per recipient after the dot), to
//!   the one `lmtp_target`: a `host:port` hop, or a unix socket
//!   ([`Action::ConnectUnix`]); never TLS or AUTH (a local server).
//!
//! - REQUIRETLS (RFC 8689 §4.2.1, a job with [`Job::requiretls`]): only to
//!   a configured relay (smarthost or route; a name the administrator
//!   wrote counts as authenticated), over verified TLS (STARTTLS or
//!   implicit, certificate and host name checked), and only when the EHLO
//!   reply under TLS lists REQUIRETLS; then `MAIL ... REQUIRETLS`. MX
//!   hosts fail at once: tern validates neither DNSSEC nor MTA-STS, so
//!   their names are not authenticated. A relay without TLS, STARTTLS not
//!   offered, a failed handshake or certificate, no CA certificates, or no
//!   REQUIRETLS: the next relay is tried, and recipients none of them
//!   takes fail with 5.7.30 ([`RequireTlsGap`]); never a plaintext retry.
//!   A cached session is reused for such a job only if it qualifies.
//!
//! Results are [`Outcome`]s; every reason tern makes up comes from the
//! table in `delivery::outcome`.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::Job;
use crate::config::{LmtpTarget, OutboundTls, SmarthostTls};
use crate::delivery::outcome::{self, Outcome, Reason, RequireTlsGap};
use crate::dns::{DnsError, MxHost};
use crate::smtp::client::{
    ClientConfig, ClientEvent, ClientSession, Credentials, Own, RcptOutcome, ServerReply,
    SessionFacts, TlsPolicy, Transaction,
};
use crate::spool::QueueId;

/// How long a finished session waits for another message to the same
/// destination before QUIT (Postfix's connection cache uses 2 s too).
pub const OUTBOUND_IDLE_KEEP: Duration = Duration::from_secs(2);
/// How long a port-465 server may stay silent before tern concludes it
/// waits for a TLS ClientHello (an SMTP server greets at once).
pub const IMPLICIT_TLS_GREETING_WAIT: Duration = Duration::from_secs(10);

/// What the daemon's configuration says about outbound connections.
#[derive(Clone, Debug)]
pub struct Settings {
    /// This host's name: how it recognizes itself in an MX list.
    pub hostname: String,
    /// The EHLO argument (`helo_name`, else `hostname`); `localhost` is
    /// replaced by the connection's own address literal (providers refuse
    /// `EHLO localhost`).
    pub helo_name: String,
    pub mx_port: u16,
    pub outbound_tls: OutboundTls,
    pub smarthost_tls: SmarthostTls,
    /// For the smarthost (read once, when the delivery starts).
    pub credentials: Option<Credentials>,
    pub connect_timeout: Duration,
    pub reply_timeout: Duration,
    /// CA certificates are loaded: a verified handshake is possible.
    pub trust_anchors: bool,
    /// A finished session stays open [`OUTBOUND_IDLE_KEEP`] for the next
    /// job to the same destination (`outbound_connection_reuse`); without,
    /// it says QUIT after its transaction.
    pub connection_reuse: bool,
}

/// One host to try: name, port and (once resolved) addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hop {
    pub name: String,
    pub port: u16,
    pub addrs: Option<Vec<IpAddr>>,
}

/// The far end of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Inet(SocketAddr),
    /// A unix stream socket (an LMTP server).
    Unix(PathBuf),
}

impl Endpoint {
    fn port(&self) -> Option<u16> {
        match self {
            Endpoint::Inet(a) => Some(a.port()),
            Endpoint::Unix(_) => None,
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Inet(a) => a.fmt(f),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A DNS question for the daemon's resolver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The MX hosts of a domain, with their addresses.
    Mx(String),
    /// The addresses of one host (a smarthost named by name).
    Host(String),
}

/// What the daemon must do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Resolve(Lookup),
    /// Open a TCP connection; answer with `handle_connected`.
    Connect(SocketAddr),
    /// Connect to a unix stream socket; answer with
    /// `handle_connected_unix`.
    ConnectUnix(PathBuf),
    /// Run a TLS handshake on the connection (now: before the greeting for
    /// implicit TLS, or after the 220 to STARTTLS); answer with
    /// `handle_tls_established` or `handle_tls_error`. `verify`: check the
    /// certificate against the CA certificates and `server_name`.
    StartTls {
        server_name: String,
        verify: bool,
    },
    /// Open the message body in the spool and stream it with `send_body`
    /// and `finish_body` (or `body_failed`).
    OpenBody(QueueId),
    /// Close the current connection (any bytes still to write are moot).
    Close,
    /// The job is over: one outcome per recipient (index in the envelope).
    /// (The job's ID and relay: the job itself stays with the machine.)
    Report {
        id: QueueId,
        relay: Option<std::rc::Rc<crate::routes::Relay>>,
        outcomes: Vec<(usize, Outcome)>,
    },
}

#[derive(Debug)]
enum State {
    Resolving,
    Connecting { addr: Endpoint, deadline: Instant },
    Session(Box<Session>),
    Done,
}

#[derive(Debug)]
struct Session {
    addr: Endpoint,
    client: ClientSession,
    policy: TlsPolicy,
    /// A STARTTLS handshake is running: nothing plaintext goes out.
    tls_pending: bool,
    /// The TLS handshake (implicit, or the one asked for after STARTTLS)
    /// checks the certificate and the host name: once the session is
    /// under TLS, it is verified TLS.
    tls_verified: bool,
    /// Port 465 spoken to in plaintext: the greeting must come by then.
    greeting_deadline: Option<Instant>,
    /// The body is being streamed (after `OpenBody`).
    body: bool,
    /// The job's transaction ended (its outcomes are reported).
    txn_done: bool,
    /// Idle in the connection cache since then.
    idle_since: Option<Instant>,
}

/// One job's delivery. See the module doc.
#[derive(Debug)]
pub struct Delivery {
    job: Job,
    settings: Settings,
    smarthost: bool,
    hops: Vec<Hop>,
    hop: usize,
    addr: usize,
    state: State,
    actions: VecDeque<Action>,
    /// After opportunistic TLS failed with this address: plaintext once.
    plaintext_fallback: Option<Endpoint>,
    /// The job's outcomes are reported (the session may stay, idle).
    job_reported: bool,
    last_error: Option<Reason>,
    /// Outcomes decided so far (index in the job's recipient list).
    decided: HashMap<usize, Outcome>,
    /// Why tern itself is failing the session (TLS, the port-465 silence,
    /// the spool file): the reason given to the recipients it leaves
    /// undecided, instead of the client's "connection lost".
    cause: Option<Reason>,
    /// A server refused the OAuth2 token (XOAUTH2/OAUTHBEARER).
    oauth_rejected: bool,
    /// A REQUIRETLS job met a hop that cannot take it (5.7.30): the
    /// recipients no hop decided fail with this instead of deferring.
    requiretls_refused: Option<Reason>,
    /// The server of the last transaction offered DSN (RFC 3461): it got
    /// the parameters and reports success itself.
    dsn_passed: bool,
    /// What the last session showed (kept after it ends).
    facts: SessionFacts,
    /// Scratch for `drive`: the client's events of one round (kept, so a
    /// round allocates nothing).
    events: Vec<ClientEvent>,
}

impl Delivery {
    /// A delivery for `job`: to the domain's MX hosts, or (an empty
    /// domain) to `smarthosts` in order.
    pub fn new(job: Job, smarthosts: Vec<Hop>, settings: Settings, now: Instant) -> Delivery {
        let smarthost = job.domain.is_empty();
        let mut d = Delivery {
            job,
            settings,
            smarthost,
            hops: Vec::new(),
            hop: 0,
            addr: 0,
            state: State::Resolving,
            actions: VecDeque::new(),
            plaintext_fallback: None,
            job_reported: false,
            last_error: None,
            decided: HashMap::new(),
            cause: None,
            oauth_rejected: false,
            requiretls_refused: None,
            dsn_passed: false,
            facts: SessionFacts::default(),
            events: Vec::new(),
        };
        if smarthost {
            d.hops = smarthosts
                .into_iter()
                .map(|mut h| {
                    if let Some(a) = h.addrs.as_mut() {
                        ipv6_first(a);
                    }
                    h
                })
                .collect();
        }
        if let Some(gap) = d.requiretls_gap_before_connecting() {
            let reason = outcome::requiretls_unsatisfied(&d.hop_list(), &gap);
            d.fail_undecided(reason);
            d.finish();
        } else if smarthost {
            d.advance(now);
        } else {
            d.actions
                .push_back(Action::Resolve(Lookup::Mx(d.job.domain.clone())));
        }
        d
    }

    // ---- outputs ------------------------------------------------------------

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// `poll_action` has something.
    pub fn has_actions(&self) -> bool {
        !self.actions.is_empty()
    }

    /// SMTP bytes to write to the connection.
    pub fn poll_transmit(&self) -> &[u8] {
        match &self.state {
            State::Session(s) if !s.tls_pending => s.client.poll_transmit(),
            _ => &[],
        }
    }

    /// `n` bytes of `poll_transmit` were written.
    pub fn consume_transmit(&mut self, n: usize, now: Instant) {
        if let State::Session(s) = &mut self.state {
            s.client.consume_transmit(n);
            if n > 0 {
                s.client.note_progress(now);
            }
        }
        self.check_closed();
    }

    /// When `handle_timeout` must be called next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Connecting { deadline, .. } => Some(*deadline),
            State::Session(s) => {
                let idle = s.idle_since.map(|t| t + OUTBOUND_IDLE_KEEP);
                [s.client.poll_timeout(), s.greeting_deadline, idle]
                    .into_iter()
                    .flatten()
                    .min()
            }
            State::Resolving | State::Done => None,
        }
    }

    /// The body is wanted (after `OpenBody`, until `finish_body`).
    pub fn wants_body(&self) -> bool {
        matches!(&self.state, State::Session(s) if s.body)
    }

    /// A connect is in progress (readiness means its result is known).
    pub fn is_connecting(&self) -> bool {
        matches!(self.state, State::Connecting { .. })
    }

    /// The job is reported and the session waits for another one.
    pub fn is_idle(&self) -> bool {
        matches!(&self.state, State::Session(s) if s.idle_since.is_some())
    }

    /// Nothing more will happen: the slot is free.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done) && self.actions.is_empty()
    }

    /// The destination domain ("" for the smarthost).
    pub fn destination(&self) -> &str {
        &self.job.domain
    }

    /// The destination with its relay: what the connection cache is
    /// keyed by.
    pub fn destination_key(&self) -> super::DestinationKey {
        self.job.destination_key()
    }

    /// A server refused this job's OAuth2 access token: drop it from the
    /// cache.
    pub fn oauth_rejected(&self) -> bool {
        self.oauth_rejected
    }

    /// The server that took the job's recipients offered DSN.
    pub fn dsn_passed(&self) -> bool {
        self.dsn_passed
    }

    /// What the last session showed (`tern test`'s evidence): the command
    /// its first refusal answered, STARTTLS in its EHLO reply.
    pub fn session_facts(&self) -> SessionFacts {
        self.facts
    }

    pub fn job_id(&self) -> QueueId {
        self.job.id
    }

    /// The peer as named in logs: `host[ip]:port`.
    pub fn relay(&self) -> Option<String> {
        match &self.state {
            State::Session(s) => Some(self.relay_name(&s.addr)),
            State::Connecting { addr, .. } => Some(self.relay_name(addr)),
            _ => None,
        }
    }

    // ---- inputs -------------------------------------------------------------

    /// The resolver's answer to the last `Resolve`.
    pub fn handle_lookup(&mut self, result: Result<Vec<MxHost>, DnsError>, now: Instant) {
        if !matches!(self.state, State::Resolving) {
            return;
        }
        let is_mx = !self.smarthost;
        match result {
            Ok(mut hosts) if is_mx => {
                // RFC 5321 §5.1: when we are one of the MX hosts, only more
                // preferred hosts are candidates (else: a loop).
                hosts.sort_by_key(|h| h.preference);
                let own = hosts
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(&self.settings.hostname))
                    .map(|h| h.preference);
                if let Some(p) = own {
                    hosts.retain(|h| h.preference < p);
                    if hosts.is_empty() {
                        self.fail_undecided(outcome::mail_loops_back(&self.job.domain));
                        self.finish();
                        return;
                    }
                }
                let port = self.settings.mx_port;
                self.hops = hosts
                    .into_iter()
                    .map(|h| {
                        let mut addrs = h.addrs;
                        ipv6_first(&mut addrs);
                        Hop {
                            name: h.name,
                            port,
                            addrs: Some(addrs),
                        }
                    })
                    .collect();
                self.hop = 0;
                self.addr = 0;
                self.advance(now);
            }
            Ok(hosts) => {
                if let Some(hop) = self.hops.get_mut(self.hop) {
                    let mut addrs: Vec<IpAddr> = hosts.into_iter().flat_map(|h| h.addrs).collect();
                    ipv6_first(&mut addrs);
                    hop.addrs = Some(addrs);
                }
                self.addr = 0;
                self.advance(now);
            }
            Err(e) if is_mx => {
                let domain = self.job.domain.clone();
                match e {
                    DnsError::NullMx => self.fail_undecided(outcome::dns_null_mx(&domain)),
                    DnsError::NoSuchDomain => {
                        self.fail_undecided(outcome::dns_no_such_domain(&domain))
                    }
                    DnsError::NoAddress => self.fail_undecided(outcome::dns_no_address(&domain)),
                    DnsError::Temporary(why) => {
                        self.last_error = Some(outcome::dns_temporary(&domain, &why));
                    }
                }
                self.finish();
            }
            Err(e) => {
                // A smarthost name that does not resolve, or a DNS outage:
                // the next smarthost; deferred when none is left.
                let name = self
                    .hops
                    .get(self.hop)
                    .map_or(String::new(), |h| h.name.clone());
                let why = match e {
                    DnsError::Temporary(why) => why,
                    other => other.to_string(),
                };
                self.last_error = Some(outcome::dns_temporary(&name, &why));
                self.hop += 1;
                self.addr = 0;
                self.advance(now);
            }
        }
    }

    /// The result of the last `Connect`: `Err` holds the system's words
    /// ("connection refused").
    pub fn handle_connected(&mut self, result: Result<SocketAddr, String>, now: Instant) {
        self.connected(result.map(Some), now);
    }

    /// The result of the last `ConnectUnix`.
    pub fn handle_connected_unix(&mut self, result: Result<(), String>, now: Instant) {
        self.connected(result.map(|()| None), now);
    }

    /// A connect's result: the local address of a TCP connection.
    fn connected(&mut self, result: Result<Option<SocketAddr>, String>, now: Instant) {
        let State::Connecting { addr, .. } = &self.state else {
            return;
        };
        let addr = addr.clone();
        let local = match result {
            Ok(local) => local,
            Err(why) => {
                self.last_error = Some(outcome::connect_failed(&addr.to_string(), &why));
                self.close();
                self.advance(now);
                return;
            }
        };
        let (policy, implicit) = self.tls_mode(&addr);
        if implicit && !self.settings.trust_anchors {
            self.last_error = Some(outcome::tls_no_trust_anchors());
            self.close();
            self.advance(now);
            return;
        }
        let cfg = ClientConfig {
            helo_name: match local {
                Some(local) => ehlo_name(&self.settings.helo_name, local),
                None => self.settings.helo_name.clone(),
            },
            tls: policy,
            tls_active: implicit,
            credentials: if self.smarthost {
                self.settings.credentials.clone()
            } else {
                None
            },
            reply_timeout: self.settings.reply_timeout,
            final_timeout: self.settings.reply_timeout * 2,
            lmtp: self.job.lmtp.is_some(),
        };
        let greeting_deadline =
            (self.smarthost && !implicit && addr.port() == Some(outcome::IMPLICIT_TLS_PORT))
                .then(|| now + IMPLICIT_TLS_GREETING_WAIT);
        if implicit {
            self.actions.push_back(Action::StartTls {
                server_name: self.hop_name(),
                verify: true,
            });
        }
        let mut client = ClientSession::new(cfg, now);
        self.facts = SessionFacts::default();
        // A route's `auth=`: that mechanism only.
        if let Some(m) = self.job.relay.as_ref().and_then(|r| r.auth) {
            client.restrict_auth(m);
        }
        if let Some(port) = addr.port() {
            client.set_server(&self.hop_name(), port);
        }
        self.state = State::Session(Box::new(Session {
            addr,
            client,
            policy,
            tls_pending: false,
            tls_verified: implicit,
            greeting_deadline,
            body: false,
            txn_done: false,
            idle_since: None,
        }));
    }

    /// Bytes read from the connection (plaintext, after any TLS).
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        let State::Session(s) = &mut self.state else {
            return;
        };
        if !bytes.is_empty() {
            s.greeting_deadline = None;
        }
        s.client.handle_input(bytes, now);
        self.facts = s.client.facts();
        self.drive(now);
    }

    /// The handshake asked for by `StartTls` finished.
    pub fn handle_tls_established(&mut self, now: Instant) {
        let State::Session(s) = &mut self.state else {
            return;
        };
        if s.tls_pending {
            s.tls_pending = false;
            s.client.tls_established(now);
            self.drive(now);
        }
    }

    /// The TLS layer failed (handshake, certificate, or later); `why` in
    /// words ("certificate verify failed: unknown issuer");
    /// `peer_spoke_plaintext`: what came was plain SMTP, not TLS.
    pub fn handle_tls_error(&mut self, why: &str, peer_spoke_plaintext: bool, now: Instant) {
        let State::Session(s) = &mut self.state else {
            return;
        };
        let peer = relay_name(&self.hops, self.hop, &s.addr);
        // Implicit TLS (no STARTTLS in progress) answered by a greeting.
        let reason = if peer_spoke_plaintext && !s.tls_pending {
            outcome::tls_plaintext_greeting(&peer)
        } else {
            outcome::tls_failed(&peer, why)
        };
        if self.job.requiretls && s.policy != TlsPolicy::IfOffered {
            let gap = RequireTlsGap::TlsFailed {
                why: why.to_string(),
            };
            self.requiretls_refused = Some(outcome::requiretls_unsatisfied(&peer, &gap));
        }
        // Opportunistic TLS that fails: this address once more in plaintext.
        if s.policy == TlsPolicy::IfOffered && self.plaintext_fallback.is_none() {
            log::warn!(
                "{}: TLS with {peer} failed ({}); retrying in plaintext",
                self.job.id,
                crate::logsafe::LogSafe(why)
            );
            self.plaintext_fallback = Some(s.addr.clone());
            self.addr = self.addr.saturating_sub(1);
        }
        self.last_error = Some(reason.clone());
        self.cause = Some(reason);
        s.client.connection_lost(now);
        self.drive(now);
    }

    /// The connection closed or failed (read or write).
    pub fn handle_closed(&mut self, now: Instant) {
        let State::Session(s) = &mut self.state else {
            return;
        };
        s.client.connection_lost(now);
        self.drive(now);
    }

    /// Deadlines that passed by `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        match &mut self.state {
            State::Connecting { addr, deadline } if *deadline <= now => {
                self.last_error = Some(outcome::connect_timeout(&addr.to_string()));
                self.close();
                self.advance(now);
            }
            State::Session(s) => {
                let client_due = s.client.poll_timeout().is_some_and(|t| t <= now);
                if let Some(deadline) = s.greeting_deadline {
                    // Silence on the implicit-TLS port: the server waits
                    // for our TLS hello (whichever deadline comes first).
                    if deadline <= now || client_due {
                        s.greeting_deadline = None;
                        let peer = relay_name(&self.hops, self.hop, &s.addr);
                        self.cause = Some(outcome::tls_implicit_port(&peer));
                        s.client.connection_lost(now);
                    }
                } else if s.idle_since.is_some_and(|t| t + OUTBOUND_IDLE_KEEP <= now) {
                    s.idle_since = None;
                    s.client.quit();
                } else if client_due {
                    s.client.handle_timeout(now);
                }
                self.drive(now);
            }
            _ => {}
        }
    }

    /// Takes a chunk of the stored message; returns how many bytes were
    /// taken (0: come back after the next write).
    pub fn send_body(&mut self, chunk: &[u8], now: Instant) -> usize {
        let State::Session(s) = &mut self.state else {
            return 0;
        };
        if !s.body {
            return 0;
        }
        let took = s.client.send_body(chunk);
        // Feeding the body can settle the transaction (content that
        // cannot be downgraded to 7 bits).
        self.drive(now);
        took
    }

    /// The whole body was given.
    pub fn finish_body(&mut self, now: Instant) {
        if let State::Session(s) = &mut self.state {
            if s.body {
                s.body = false;
                s.client.finish_body(now);
            }
        }
        self.drive(now);
    }

    /// The spool file could not be opened or read.
    pub fn body_failed(&mut self, why: &str, now: Instant) {
        let State::Session(s) = &mut self.state else {
            return;
        };
        s.body = false;
        self.cause = Some(outcome::queue_file_unreadable(why));
        s.client.connection_lost(now);
        self.drive(now);
    }

    /// Another job to the same destination, for an idle session; given
    /// back when the session cannot take it.
    pub fn next_job(&mut self, job: Job, now: Instant) -> Result<(), Box<Job>> {
        let State::Session(s) = &mut self.state else {
            return Err(Box::new(job));
        };
        let same = job.same_destination(&self.job);
        if s.idle_since.is_none() || !same || s.client.is_closed() {
            return Err(Box::new(job));
        }
        if job.requiretls && !requiretls_satisfied(s) {
            // A delivery of its own finds out (and says) why.
            return Err(Box::new(job));
        }
        s.idle_since = None;
        s.txn_done = false;
        s.client.start_transaction(transaction(&job), now);
        self.job = job;
        self.decided.clear();
        self.job_reported = false;
        self.last_error = None;
        self.requiretls_refused = None;
        self.drive(now);
        Ok(())
    }

    /// The daemon stops: an idle session says QUIT now.
    pub fn shutdown(&mut self, now: Instant) {
        if let State::Session(s) = &mut self.state {
            if s.idle_since.take().is_some() {
                s.client.quit();
                self.drive(now);
            }
        }
    }

    // ---- internals ----------------------------------------------------------

    /// RFC 8689 §4.2.1 decided from the configuration alone: MX hosts
    /// are not validated by tern (no DNSSEC, no MTA-STS), and a relay
    /// without TLS can never do. LMTP is final delivery on this host.
    fn requiretls_gap_before_connecting(&self) -> Option<RequireTlsGap> {
        if !self.job.requiretls || self.job.lmtp.is_some() {
            return None;
        }
        if !self.smarthost {
            return Some(RequireTlsGap::UnvalidatedMx {
                domain: self.job.domain.clone(),
            });
        }
        (self.settings.smarthost_tls == SmarthostTls::None).then_some(RequireTlsGap::PlaintextRelay)
    }

    /// The configured relays, for a reason given before any connection.
    fn hop_list(&self) -> String {
        let names: Vec<String> = self
            .hops
            .iter()
            .map(|h| format!("{}:{}", h.name, h.port))
            .collect();
        names.join(", ")
    }

    /// A hop cannot take this REQUIRETLS job: remembered as the reason
    /// for the recipients no other hop decides.
    fn requiretls_failure(&mut self, reason: Reason) {
        self.last_error = Some(reason.clone());
        self.requiretls_refused = Some(reason);
    }

    /// The TLS policy for a connection to `addr`, and whether TLS is
    /// implicit.
    fn tls_mode(&self, addr: &Endpoint) -> (TlsPolicy, bool) {
        if self.job.lmtp.is_some() {
            return (TlsPolicy::Never, false);
        }
        if self.smarthost {
            return match self.settings.smarthost_tls {
                SmarthostTls::StartTls => (TlsPolicy::Required, false),
                SmarthostTls::Tls => (TlsPolicy::Never, true),
                SmarthostTls::None => (TlsPolicy::Never, false),
            };
        }
        if self.plaintext_fallback.as_ref() == Some(addr) {
            return (TlsPolicy::Never, false);
        }
        match self.settings.outbound_tls {
            OutboundTls::Opportunistic => (TlsPolicy::IfOffered, false),
            OutboundTls::Required => (TlsPolicy::Required, false),
            OutboundTls::None => (TlsPolicy::Never, false),
        }
    }

    fn hop_name(&self) -> String {
        self.hops
            .get(self.hop)
            .map_or(String::new(), |h| h.name.clone())
    }

    fn relay_name(&self, addr: &Endpoint) -> String {
        relay_name(&self.hops, self.hop, addr)
    }

    /// Moves to the next address (resolving names as needed) or finishes
    /// when nothing is left to try.
    fn advance(&mut self, now: Instant) {
        if let Some(LmtpTarget::Unix(path)) = self.job.lmtp.as_deref() {
            // The one hop is the socket: once, then done.
            if self.hop > 0 {
                self.finish();
                return;
            }
            self.hop = 1;
            self.actions.push_back(Action::ConnectUnix(path.clone()));
            self.state = State::Connecting {
                addr: Endpoint::Unix(path.clone()),
                deadline: now + self.settings.connect_timeout,
            };
            return;
        }
        loop {
            let Some(hop) = self.hops.get(self.hop) else {
                self.finish();
                return;
            };
            let Some(addrs) = &hop.addrs else {
                self.actions
                    .push_back(Action::Resolve(Lookup::Host(hop.name.clone())));
                self.state = State::Resolving;
                return;
            };
            let Some(ip) = addrs.get(self.addr).copied() else {
                self.hop += 1;
                self.addr = 0;
                continue;
            };
            self.addr += 1;
            let addr = SocketAddr::new(ip, hop.port);
            self.actions.push_back(Action::Connect(addr));
            self.state = State::Connecting {
                addr: Endpoint::Inet(addr),
                deadline: now + self.settings.connect_timeout,
            };
            return;
        }
    }

    /// Drops the current connection, if any.
    fn close(&mut self) {
        if matches!(self.state, State::Connecting { .. } | State::Session(_)) {
            self.actions.push_back(Action::Close);
            self.state = State::Resolving;
        }
    }

    /// Reports what is owed and ends.
    fn finish(&mut self) {
        self.close();
        if !self.job_reported {
            self.report();
        }
        self.state = State::Done;
    }

    /// The job's outcomes: recipients without one are deferred with the
    /// last error seen.
    fn report(&mut self) {
        // Built only for a recipient that has no outcome.
        let last = || {
            self.last_error
                .clone()
                .unwrap_or_else(outcome::no_destination_reached)
        };
        let mut decided = std::mem::take(&mut self.decided);
        let outcomes = self
            .job
            .recipients
            .iter()
            .enumerate()
            .map(|(j, (index, _))| {
                let o = decided
                    .remove(&j)
                    .unwrap_or_else(|| match &self.requiretls_refused {
                        Some(r) => Outcome::Failed(r.clone()),
                        None => Outcome::Deferred(last()),
                    });
                (*index, o)
            })
            .collect();
        // Emptied, its room kept for the session's next job.
        decided.clear();
        self.decided = decided;
        self.job_reported = true;
        self.actions.push_back(Action::Report {
            id: self.job.id,
            relay: self.job.relay.clone(),
            outcomes,
        });
    }

    /// Fails every recipient without an outcome yet (a permanent answer
    /// about the destination itself, before any SMTP).
    fn fail_undecided(&mut self, reason: Reason) {
        for i in 0..self.job.recipients.len() {
            self.decided
                .entry(i)
                .or_insert_with(|| Outcome::Failed(reason.clone()));
        }
    }

    /// Handles the client's events until it has none.
    fn drive(&mut self, now: Instant) {
        while let State::Session(s) = &mut self.state {
            let mut events = std::mem::take(&mut self.events);
            events.extend(std::iter::from_fn(|| s.client.poll_event()));
            if events.is_empty() {
                self.events = events;
                break;
            }
            // The reply the session failed with: recipients left undecided
            // by the failure carry it (and, when tern caused the failure,
            // tern's reason instead).
            let failure = events.iter().find_map(|e| match e {
                ClientEvent::SessionFailed(o) => Some(rcpt_reply(o).clone()),
                _ => None,
            });
            for ev in events.drain(..) {
                if !matches!(self.state, State::Session(_)) {
                    break;
                }
                self.on_event(ev, failure.as_ref(), now);
            }
            // Events left by a break are dropped, as before.
            events.clear();
            self.events = events;
        }
        self.cause = None;
        self.check_closed();
    }

    fn on_event(&mut self, ev: ClientEvent, failure: Option<&ServerReply>, now: Instant) {
        let State::Session(s) = &mut self.state else {
            return;
        };
        let addr = s.addr.clone();
        match ev {
            ClientEvent::Ready => {
                if self.job_reported || s.txn_done {
                    s.client.quit();
                } else if self.job.requiretls && !requiretls_satisfied(s) {
                    // RFC 8689 §4.2.1: not this hop; the next one may do.
                    let gap = if s.client.tls_active() {
                        RequireTlsGap::NotOffered
                    } else {
                        RequireTlsGap::NoStartTls
                    };
                    let peer = relay_name(&self.hops, self.hop, &addr);
                    self.requiretls_failure(outcome::requiretls_unsatisfied(&peer, &gap));
                    self.close();
                    self.advance(now);
                } else {
                    s.client.start_transaction(transaction(&self.job), now);
                }
            }
            ClientEvent::StartTls => {
                let verify = s.policy != TlsPolicy::IfOffered;
                if verify && !self.settings.trust_anchors {
                    let reason = if self.job.requiretls {
                        let peer = relay_name(&self.hops, self.hop, &addr);
                        let r =
                            outcome::requiretls_unsatisfied(&peer, &RequireTlsGap::NoTrustAnchors);
                        self.requiretls_refused = Some(r.clone());
                        r
                    } else {
                        outcome::tls_no_trust_anchors()
                    };
                    self.last_error = Some(reason.clone());
                    self.cause = Some(reason);
                    s.client.connection_lost(now);
                } else {
                    s.tls_pending = true;
                    s.tls_verified = verify;
                    let server_name = relay_host(&self.hops, self.hop);
                    self.actions.push_back(Action::StartTls {
                        server_name,
                        verify,
                    });
                }
            }
            ClientEvent::WantBody => {
                s.body = true;
                self.actions.push_back(Action::OpenBody(self.job.id));
            }
            ClientEvent::TransactionDone(outcomes) => {
                s.body = false;
                s.txn_done = true;
                self.dsn_passed = s.client.offers("DSN");
                let relay = relay_name(&self.hops, self.hop, &addr);
                for (i, o) in outcomes.into_iter().enumerate() {
                    let o = self.outcome_of(o, failure, &relay);
                    self.decided.insert(i, o);
                }
                // Report now; keep the session open a moment for the
                // next message to the same place (or end it).
                self.report();
                let reuse = self.settings.connection_reuse;
                if let State::Session(s) = &mut self.state {
                    if !s.client.is_closed() {
                        if reuse {
                            s.idle_since = Some(now);
                        } else {
                            s.client.quit();
                        }
                    }
                }
            }
            ClientEvent::SessionFailed(o) => {
                if let State::Session(s) = &self.state {
                    self.oauth_rejected |= s.client.oauth_rejected();
                }
                if self.job_reported {
                    // After the transaction (QUIT trouble), or an idle
                    // cached connection went away: nothing is owed.
                    self.finish();
                    return;
                }
                let relay = relay_name(&self.hops, self.hop, &addr);
                if self.job.requiretls && self.requiretls_refused.is_none() {
                    let no_tls = matches!(&self.state, State::Session(s) if !s.client.tls_active());
                    if no_tls && rcpt_reply(&o).own == Some(Own::Tls) {
                        let r = outcome::requiretls_unsatisfied(&relay, &RequireTlsGap::NoStartTls);
                        self.requiretls_refused = Some(r);
                    }
                }
                let reason = match self.outcome_of(o, failure, &relay) {
                    Outcome::Deferred(r) | Outcome::Failed(r) => r,
                    Outcome::Delivered { .. } => return,
                };
                self.last_error = Some(reason);
                self.close();
                if self.decided.len() == self.job.recipients.len() {
                    self.finish();
                } else {
                    self.advance(now);
                }
            }
        }
    }

    /// A client outcome as an [`Outcome`]: the server's reply or the
    /// client's own (`outcome::from_client`), or tern's reason when the
    /// reply is the session failure tern caused.
    fn outcome_of(&self, o: RcptOutcome, failure: Option<&ServerReply>, relay: &str) -> Outcome {
        let reason = |reply: &ServerReply| match &self.cause {
            Some(cause) if failure == Some(reply) => cause.clone(),
            _ => outcome::from_client(reply, relay),
        };
        match o {
            RcptOutcome::Delivered(_) => Outcome::Delivered {
                relay: relay.to_string(),
            },
            RcptOutcome::Deferred(r) => Outcome::Deferred(reason(&r)),
            RcptOutcome::Failed(r) => Outcome::Failed(reason(&r)),
        }
    }

    /// The client has nothing more to say: the connection closes, and the
    /// delivery ends (reporting what is owed).
    fn check_closed(&mut self) {
        if let State::Session(s) = &self.state {
            if s.client.is_closed() && s.client.poll_transmit().is_empty() && !s.client.has_events()
            {
                self.finish();
            }
        }
    }
}

/// Sorts addresses IPv6 first, keeping the order within each family.
fn ipv6_first(addrs: &mut [IpAddr]) {
    addrs.sort_by_key(|a| a.is_ipv4());
}

/// RFC 8689 §4.2.1 for an established session: verified TLS, and
/// REQUIRETLS in the EHLO reply after it.
fn requiretls_satisfied(s: &Session) -> bool {
    s.client.tls_active() && s.tls_verified && s.client.offers("REQUIRETLS")
}

fn rcpt_reply(o: &RcptOutcome) -> &ServerReply {
    match o {
        RcptOutcome::Delivered(r) | RcptOutcome::Deferred(r) | RcptOutcome::Failed(r) => r,
    }
}

fn transaction(job: &Job) -> Transaction {
    Transaction {
        sender: job.sender.clone(),
        recipients: job.recipients.iter().map(|(_, a)| a.clone()).collect(),
        size: job.size,
        eight_bit: job.eight_bit,
        smtputf8: job.needs_smtputf8(),
        requiretls: job.requiretls,
        rewrite: job.rewrite.clone(),
        dkim: job.dkim.clone(),
        dsn: job.dsn.clone(),
    }
}

fn relay_host(hops: &[Hop], hop: usize) -> String {
    hops.get(hop).map_or(String::new(), |h| h.name.clone())
}

/// `host[ip]:port`, as relays are named in logs and reasons.
/// A unix socket is named as `unix:/path`.
fn relay_name(hops: &[Hop], hop: usize, addr: &Endpoint) -> String {
    let Endpoint::Inet(addr) = addr else {
        return addr.to_string();
    };
    let name = hops.get(hop).map_or("unknown", |h| h.name.as_str());
    // Sized once: `[` + an IPv6 address + `]:` + a port fit in 50.
    let mut s = String::with_capacity(name.len() + 50);
    let _ = write!(s, "{name}[{}]:{}", addr.ip(), addr.port());
    s
}

/// The EHLO argument for a connection from `local`: the configured name,
/// or the address literal (RFC 5321 §4.1.3) when that name is `localhost`
/// (a host whose name was never set), which providers refuse.
pub fn ehlo_name(configured: &str, local: SocketAddr) -> String {
    if !crate::config::is_localhost(configured) {
        return configured.to_string();
    }
    match local.ip() {
        IpAddr::V4(ip) => format!("[{ip}]"),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => format!("[{v4}]"),
            None => format!("[IPv6:{ip}]"),
        },
    }
}
