//! The resolver state machine: MX policy, retransmission, CNAME chasing and a
//! small cache, with no sockets, clock or RNG of its own.
//!
//! Why: tern's single mio loop must never block on DNS. The driver feeds
//! responses, transport errors and `now` in, and takes datagrams, closed
//! exchanges, deadlines and results out:
//!
//! ```text
//! resolve_mx / resolve_host ─▶ Resolver ─▶ poll_transmit  (send; one socket per QueryHandle)
//! handle_response ──────────▶          ─▶ poll_closed    (close that socket)
//! handle_transport_error ───▶          ─▶ poll_timeout   (arm the timer)
//! handle_timeout ───────────▶          ─▶ poll_result    (LookupId, hosts or DnsError)
//! ```
//!
//! Rules: RFC 5321 §5.1 (MX, then the implicit MX; sort by preference,
//! randomise equal preferences), RFC 7505 (null MX), RFC 1035 §7 (matching a
//! response to its query, retransmission across servers), RFC 1035 §4.2.2
//! and RFC 7766 (TCP after truncation), RFC 1034 §3.6.2 (CNAME chains),
//! RFC 2308 (negative caching), RFC 6891 §7 (EDNS(0) and the fallback for
//! servers without it), RFC 5452 §9.2 (unpredictable query IDs).
//!
//! Invariants:
//! - Each [`Transmit`] has a fresh [`QueryHandle`] and a fresh 16-bit ID from
//!   the [`RandomSource`] the driver passes in (the kernel's CSPRNG in the
//!   daemon); if the source fails, the question fails temporarily and
//!   nothing is sent (fail closed, never a guessable ID). A response counts only if it arrives on that handle, from that
//!   server's address and port, with that ID, QR set, opcode QUERY and the
//!   same question; anything else is ignored and the exchange keeps waiting.
//! - Every handle handed out by `poll_transmit` is later handed out once by
//!   `poll_closed`.
//! - A question makes at most `attempts × servers` tries (servers in order,
//!   one per try, each waiting `timeout`), plus one TCP try per truncated
//!   UDP answer. SERVFAIL, REFUSED, other error codes, malformed answers and
//!   transport errors move on to the next try at once.
//! - Queries carry an EDNS(0) OPT record. A server that answers one with
//!   FORMERR, NOTIMP or BADVERS, or with a reply that does not decode (a
//!   middlebox that mangles EDNS answers, RFC 6891 §7), is asked again at
//!   once without it (not counted as a try) and remembered, so each
//!   configured server costs at most one such round trip per resolver
//!   lifetime (the memory holds configured servers only: bounded).
//! - DNS trouble is never permanent: only NXDOMAIN, NODATA, null MX and
//!   invalid names give a permanent [`DnsError`].
//! - Memory per lookup is bounded: at most [`MAX_MX_HOSTS`] hosts, at most
//!   [`MAX_PARALLEL_QUESTIONS`] questions in flight, at most
//!   [`MAX_CNAME_CHAIN`] aliases; the cache holds [`CACHE_ENTRIES`] entries.
//!
//! Not supported: EDNS options, DNSSEC validation, search domains and `ndots`
//! (names are always absolute), the `rotate` option, IDNA, cancelling a
//! lookup, removing our own host from the MX list (RFC 5321 §5.1 last
//! paragraphs: the delivery code knows our host name and does that).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::wire::{
    self, Header, Message, RData, Record, CLASS_IN, OPCODE_QUERY, RCODE_BADVERS, RCODE_FORMERR,
    RCODE_NOERROR, RCODE_NOTIMP, RCODE_NXDOMAIN, RCODE_REFUSED, RCODE_SERVFAIL, TYPE_A, TYPE_AAAA,
    TYPE_MX,
};

mod cache;
use cache::{Cache, Cached};

/// Most cached answers (positive and negative).
pub const CACHE_ENTRIES: usize = 256;
/// Longest time an answer stays cached, whatever its TTL.
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(3600);
/// Most CNAMEs followed for one question.
pub const MAX_CNAME_CHAIN: usize = 8;
/// Most MX hosts kept (lowest preferences first).
pub const MAX_MX_HOSTS: usize = 16;
/// Most A/AAAA questions in flight at once for one lookup.
pub const MAX_PARALLEL_QUESTIONS: usize = 8;
/// Per-try timeout ceiling, so `now + timeout` cannot overflow.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Rounds-over-the-server-list ceiling.
pub const MAX_ATTEMPTS: u32 = 10;
pub const DNS_PORT: u16 = 53;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_ATTEMPTS: u32 = 2;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolverConfig {
    pub servers: Vec<SocketAddr>,
    /// Wait for one try (one server).
    pub timeout: Duration,
    /// Rounds over `servers`.
    pub attempts: u32,
}

impl Default for ResolverConfig {
    /// resolv.conf(5) defaults: the local server, 5 s, 2 attempts.
    fn default() -> Self {
        ResolverConfig {
            servers: vec![SocketAddr::from((Ipv4Addr::LOCALHOST, DNS_PORT))],
            timeout: DEFAULT_TIMEOUT,
            attempts: DEFAULT_ATTEMPTS,
        }
    }
}

/// One `resolve_*` call.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct LookupId(pub u64);

/// One network exchange; the driver maps it to a socket.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct QueryHandle(pub u64);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Transport {
    Udp,
    Tcp,
}

/// A query to send. For TCP the payload already carries the 2-octet length.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Transmit {
    pub handle: QueryHandle,
    pub server: SocketAddr,
    pub transport: Transport,
    pub payload: Vec<u8>,
}

/// A destination host: IPv6 addresses first, then IPv4.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct MxHost {
    pub name: String,
    pub preference: u16,
    pub addrs: Vec<IpAddr>,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub enum DnsError {
    /// RFC 7505: the domain accepts no mail.
    NullMx,
    /// NXDOMAIN, or a name that cannot exist (too long, empty label...).
    NoSuchDomain,
    /// No MX and no A/AAAA, or MX hosts without any address.
    NoAddress,
    /// Timeouts, SERVFAIL, REFUSED, malformed answers: try again later.
    Temporary(String),
}

impl DnsError {
    pub fn is_permanent(&self) -> bool {
        !matches!(self, DnsError::Temporary(_))
    }
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsError::NullMx => f.write_str("domain does not accept mail (null MX)"),
            DnsError::NoSuchDomain => f.write_str("no such domain"),
            DnsError::NoAddress => f.write_str("no address for the domain's mail hosts"),
            DnsError::Temporary(why) => write!(f, "temporary DNS failure: {why}"),
        }
    }
}

impl std::error::Error for DnsError {}

/// Random octets for query IDs and MX shuffling, given by the driver (the
/// resolver is sans-IO): the daemon passes the kernel's CSPRNG
/// ([`crate::random::fill`]), tests a seeded generator. `Err` means no
/// randomness is available.
pub type RandomSource = Box<dyn FnMut(&mut [u8]) -> Result<(), ()>>;

pub struct Resolver {
    cfg: ResolverConfig,
    random: RandomSource,
    /// Servers that refused EDNS(0): they get plain queries (bounded by
    /// the configured server list).
    no_edns: HashSet<SocketAddr>,
    next_id: u64,
    lookups: HashMap<LookupId, Lookup>,
    questions: HashMap<QuestionId, Question>,
    exchanges: HashMap<QueryHandle, Exchange>,
    cache: Cache,
    /// Question outcomes not yet applied to their lookup.
    ready: VecDeque<(Owner, Outcome)>,
    transmits: VecDeque<Transmit>,
    closed: VecDeque<QueryHandle>,
    results: VecDeque<(LookupId, Result<Vec<MxHost>, DnsError>)>,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct QuestionId(u64);

/// Who waits for a question, and for what.
#[derive(Clone, Copy, Debug)]
struct Owner {
    lookup: LookupId,
    purpose: Purpose,
}

#[derive(Clone, Copy, Debug)]
enum Purpose {
    Mx,
    Address { host: usize, qtype: u16 },
}

/// The end of one question, CNAMEs already followed.
#[derive(Clone, Debug)]
enum Outcome {
    Records {
        records: Vec<RData>,
        additional: Vec<Record>,
    },
    NoData,
    NxDomain,
    Temporary(String),
}

/// One question (name, type) being asked of the servers.
struct Question {
    owner: Owner,
    /// The name first asked; the answer is cached under it too.
    origin: String,
    /// The name asked now (differs from `origin` after a CNAME).
    name: String,
    qtype: u16,
    cnames: usize,
    /// Smallest TTL of the CNAMEs followed.
    cname_ttl: u32,
    /// UDP tries used, which also picks the server.
    tries: u32,
}

struct Exchange {
    question: QuestionId,
    server: SocketAddr,
    transport: Transport,
    id: u16,
    /// The query carried an OPT record.
    edns: bool,
    deadline: Instant,
}

enum LookupKind {
    Mx,
    Host,
}

struct Lookup {
    kind: LookupKind,
    /// The queried domain (MX) or host.
    name: String,
    hosts: Vec<HostSlot>,
    /// Address questions not started yet: (index in `hosts`, type).
    pending: VecDeque<(usize, u16)>,
    running: usize,
}

struct HostSlot {
    name: String,
    preference: u16,
    v6: Addresses,
    v4: Addresses,
}

enum Addresses {
    Waiting,
    Found(Vec<IpAddr>),
    None { nxdomain: bool },
    Failed(String),
}

impl Resolver {
    /// `random` gives the query IDs and the shuffling of equal MX
    /// preferences (see [`RandomSource`]).
    pub fn new(mut cfg: ResolverConfig, random: RandomSource) -> Resolver {
        cfg.timeout = cfg.timeout.min(MAX_TIMEOUT);
        cfg.attempts = cfg.attempts.clamp(1, MAX_ATTEMPTS);
        Resolver {
            cfg,
            random,
            no_edns: HashSet::new(),
            next_id: 0,
            lookups: HashMap::new(),
            questions: HashMap::new(),
            exchanges: HashMap::new(),
            cache: Cache::default(),
            ready: VecDeque::new(),
            transmits: VecDeque::new(),
            closed: VecDeque::new(),
            results: VecDeque::new(),
        }
    }

    /// New settings (a reload): new lookups and later tries use them;
    /// exchanges in flight finish with the server they went to. When the
    /// servers change, the cache and the EDNS memory go too: they were the
    /// old servers' answers.
    pub fn reconfigure(&mut self, mut cfg: ResolverConfig) {
        cfg.timeout = cfg.timeout.min(MAX_TIMEOUT);
        cfg.attempts = cfg.attempts.clamp(1, MAX_ATTEMPTS);
        if cfg.servers != self.cfg.servers {
            self.cache = Cache::default();
            self.no_edns.clear();
        }
        self.cfg = cfg;
    }

    /// Mail hosts for `domain` per RFC 5321 §5.1, in the order to try them.
    /// An address literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`) resolves at once.
    pub fn resolve_mx(&mut self, domain: &str, now: Instant) -> LookupId {
        let id = LookupId(self.fresh_id());
        if let Some(addr) = address_literal(domain) {
            self.results
                .push_back((id, Ok(vec![literal_host(domain, addr)])));
            return id;
        }
        let domain = match wire::normalize_name(domain) {
            Ok(name) => name,
            Err(e) => {
                log::debug!("dns: lookup={} domain={domain:?} invalid: {e}", id.0);
                self.results.push_back((id, Err(DnsError::NoSuchDomain)));
                return id;
            }
        };
        self.lookups
            .insert(id, Lookup::new(LookupKind::Mx, domain.clone()));
        let owner = Owner {
            lookup: id,
            purpose: Purpose::Mx,
        };
        self.ask(owner, domain, TYPE_MX, now);
        self.apply_ready(now);
        id
    }

    /// A and AAAA for one host (a smarthost); the result is one [`MxHost`]
    /// with preference 0. An IP literal, bare or in brackets, resolves at once.
    pub fn resolve_host(&mut self, host: &str, now: Instant) -> LookupId {
        let id = LookupId(self.fresh_id());
        if let Some(addr) = host.parse().ok().or_else(|| address_literal(host)) {
            self.results
                .push_back((id, Ok(vec![literal_host(host, addr)])));
            return id;
        }
        let host = match wire::normalize_name(host) {
            Ok(name) => name,
            Err(e) => {
                log::debug!("dns: lookup={} host={host:?} invalid: {e}", id.0);
                self.results.push_back((id, Err(DnsError::NoSuchDomain)));
                return id;
            }
        };
        self.lookups
            .insert(id, Lookup::new(LookupKind::Host, host.clone()));
        self.start_addresses(id, vec![(0, host)], &[], now);
        self.apply_ready(now);
        id
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// A datagram (or a TCP message without its length prefix) that arrived
    /// on `handle`'s socket.
    pub fn handle_response(
        &mut self,
        handle: QueryHandle,
        from: SocketAddr,
        payload: &[u8],
        now: Instant,
    ) {
        let Some(header) = self.accepts(handle, from, payload) else {
            return;
        };
        let Some(exchange) = self.close_exchange(handle) else {
            return;
        };
        let (qid, server) = (exchange.question, exchange.server);
        if header.truncated {
            if exchange.transport == Transport::Udp {
                log::debug!("dns: truncated answer from {server}, retrying over TCP");
                self.send(qid, server, Transport::Tcp, now);
            } else {
                self.next_try(qid, format!("truncated TCP answer from {server}"), now);
            }
            self.apply_ready(now);
            return;
        }
        let message = wire::decode(payload);
        // BADVERS lives in the OPT record; without one, the header says it all.
        let rcode = message
            .as_ref()
            .map_or(u16::from(header.rcode), Message::rcode);
        let refuses_edns = rcode == u16::from(RCODE_FORMERR)
            || rcode == u16::from(RCODE_NOTIMP)
            || rcode == RCODE_BADVERS;
        if exchange.edns && (refuses_edns || message.is_err()) {
            // RFC 6891 §7: ask the same server again without the OPT record.
            match &message {
                Err(e) => log::debug!(
                    "dns: malformed answer from {server} to an EDNS(0) query ({e}), retrying without it"
                ),
                Ok(_) => log::debug!("dns: {server} refused EDNS(0), retrying without it"),
            }
            if self.cfg.servers.contains(&server) {
                self.no_edns.insert(server);
            }
            self.send(qid, server, exchange.transport, now);
        } else if rcode == u16::from(RCODE_NOERROR) || rcode == u16::from(RCODE_NXDOMAIN) {
            match message {
                Ok(message) => self.handle_answer(qid, &message, now),
                Err(e) => self.next_try(qid, format!("malformed answer from {server}: {e}"), now),
            }
        } else {
            let why = format!("{} from {server}", rcode_name(rcode));
            self.next_try(qid, why, now);
        }
        self.apply_ready(now);
    }

    /// The exchange's socket failed (ICMP unreachable, TCP refused or reset).
    pub fn handle_transport_error(&mut self, handle: QueryHandle, now: Instant) {
        if let Some(exchange) = self.close_exchange(handle) {
            let why = format!("transport error talking to {}", exchange.server);
            self.next_try(exchange.question, why, now);
            self.apply_ready(now);
        }
    }

    /// Exchanges that are over; the driver closes their sockets.
    pub fn poll_closed(&mut self) -> Option<QueryHandle> {
        self.closed.pop_front()
    }

    /// The earliest exchange deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.exchanges.values().map(|e| e.deadline).min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let mut expired: Vec<QueryHandle> = self
            .exchanges
            .iter()
            .filter(|(_, e)| e.deadline <= now)
            .map(|(h, _)| *h)
            .collect();
        expired.sort_by_key(|h| h.0);
        for handle in expired {
            if let Some(exchange) = self.close_exchange(handle) {
                let why = format!("timeout waiting for {}", exchange.server);
                self.next_try(exchange.question, why, now);
            }
        }
        self.apply_ready(now);
    }

    pub fn poll_result(&mut self) -> Option<(LookupId, Result<Vec<MxHost>, DnsError>)> {
        self.results.pop_front()
    }

    // -- exchanges -----------------------------------------------------------

    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// The header of `payload` if it answers the exchange on `handle`
    /// (RFC 1035 §7.3); otherwise `None` and the exchange keeps waiting.
    fn accepts(&self, handle: QueryHandle, from: SocketAddr, payload: &[u8]) -> Option<Header> {
        let Some(exchange) = self.exchanges.get(&handle) else {
            log::debug!("dns: response on closed handle {}", handle.0);
            return None;
        };
        if from.ip() != exchange.server.ip() || from.port() != exchange.server.port() {
            log::debug!(
                "dns: ignoring response from {from}, asked {}",
                exchange.server
            );
            return None;
        }
        let question = self.questions.get(&exchange.question)?;
        let (header, asked) = match wire::decode_head(payload) {
            Ok(head) => head,
            Err(e) => {
                log::debug!("dns: ignoring undecodable response from {from}: {e}");
                return None;
            }
        };
        let same_question = match asked {
            Some(q) => q.name == question.name && q.qtype == question.qtype && q.qclass == CLASS_IN,
            // A server that could not parse the query (an OPT record it
            // does not know) may answer FORMERR/NOTIMP without the question
            // (RFC 1035 §4.1.1); a forged one can only cost the OPT record.
            None => matches!(header.rcode, RCODE_FORMERR | RCODE_NOTIMP),
        };
        let matches = header.id == exchange.id
            && header.is_response
            && header.opcode == OPCODE_QUERY
            && same_question;
        if !matches {
            log::debug!("dns: ignoring response from {from}: id or question mismatch");
            return None;
        }
        Some(header)
    }

    fn close_exchange(&mut self, handle: QueryHandle) -> Option<Exchange> {
        let exchange = self.exchanges.remove(&handle)?;
        self.closed.push_back(handle);
        Some(exchange)
    }

    /// Sends the question's current name to `server` on a new exchange.
    fn send(&mut self, qid: QuestionId, server: SocketAddr, transport: Transport, now: Instant) {
        let Some(question) = self.questions.get(&qid) else {
            return;
        };
        let mut id = [0u8; 2];
        if (self.random)(&mut id).is_err() {
            let why = "no random source for a query ID".to_string();
            self.finish_question(qid, Outcome::Temporary(why));
            return;
        }
        let id = u16::from_be_bytes(id);
        // Once refused on UDP, the server gets no OPT record over TCP either.
        let edns = !self.no_edns.contains(&server);
        let query = match wire::encode_query(id, &question.name, question.qtype, edns) {
            Ok(query) => query,
            Err(e) => {
                let why = format!("cannot encode {}: {e}", question.name);
                self.finish_question(qid, Outcome::Temporary(why));
                return;
            }
        };
        let payload = match transport {
            Transport::Udp => query,
            Transport::Tcp => {
                // A query is at most 12 + 255 + 4 octets.
                let mut framed = (query.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&query);
                framed
            }
        };
        let handle = QueryHandle(self.fresh_id());
        let deadline = now + self.cfg.timeout;
        self.exchanges.insert(
            handle,
            Exchange {
                question: qid,
                server,
                transport,
                id,
                edns,
                deadline,
            },
        );
        self.transmits.push_back(Transmit {
            handle,
            server,
            transport,
            payload,
        });
    }

    /// The server for try number `tries`, rotating through the list.
    fn server_for(&self, tries: u32) -> Option<SocketAddr> {
        let count = self.cfg.servers.len();
        if count == 0 {
            return None;
        }
        self.cfg.servers.get(tries as usize % count).copied()
    }

    /// The current try failed: move to the next server, or give up.
    fn next_try(&mut self, qid: QuestionId, why: String, now: Instant) {
        let limit = self
            .cfg
            .attempts
            .saturating_mul(self.cfg.servers.len() as u32);
        let Some(question) = self.questions.get_mut(&qid) else {
            return;
        };
        question.tries += 1;
        let tries = question.tries;
        log::debug!("dns: {} type {}: {why}", question.name, question.qtype);
        match self.server_for(tries) {
            Some(server) if tries < limit => self.send(qid, server, Transport::Udp, now),
            _ => self.finish_question(qid, Outcome::Temporary(why)),
        }
    }

    // -- questions -----------------------------------------------------------

    /// Starts a question for `owner`, from the cache when possible.
    fn ask(&mut self, owner: Owner, name: String, qtype: u16, now: Instant) {
        if let Some(outcome) = self.cache.lookup(&name, qtype, now) {
            log::trace!("dns: cache hit {name} type {qtype}");
            self.ready.push_back((owner, outcome));
            return;
        }
        let Some(server) = self.server_for(0) else {
            let why = "no DNS servers configured".to_string();
            self.ready.push_back((owner, Outcome::Temporary(why)));
            return;
        };
        let qid = QuestionId(self.fresh_id());
        self.questions.insert(
            qid,
            Question {
                owner,
                origin: name.clone(),
                name,
                qtype,
                cnames: 0,
                cname_ttl: u32::MAX,
                tries: 0,
            },
        );
        self.send(qid, server, Transport::Udp, now);
    }

    fn finish_question(&mut self, qid: QuestionId, outcome: Outcome) {
        if let Some(question) = self.questions.remove(&qid) {
            self.ready.push_back((question.owner, outcome));
        }
    }

    /// A matching NOERROR/NXDOMAIN answer for question `qid`.
    fn handle_answer(&mut self, qid: QuestionId, message: &Message, now: Instant) {
        let Some(question) = self.questions.get_mut(&qid) else {
            return;
        };
        let reading = read_answer(message, &question.name, question.qtype);
        let (cached, ttl) = match reading {
            Reading::Alias { target, ttl, hops } => {
                question.cnames += hops;
                question.cname_ttl = question.cname_ttl.min(ttl);
                if question.cnames > MAX_CNAME_CHAIN {
                    let why = format!("CNAME chain too long at {}", question.origin);
                    self.finish_question(qid, Outcome::Temporary(why));
                    return;
                }
                let qtype = question.qtype;
                if let Some(outcome) = self.cache.lookup(&target, qtype, now) {
                    self.finish_question(qid, outcome);
                    return;
                }
                log::trace!("dns: {} is an alias for {target}", question.name);
                question.name = target;
                question.tries = 0;
                if let Some(server) = self.server_for(0) {
                    self.send(qid, server, Transport::Udp, now);
                }
                return;
            }
            Reading::ChainTooLong => {
                let why = format!("CNAME chain too long at {}", question.origin);
                self.finish_question(qid, Outcome::Temporary(why));
                return;
            }
            Reading::Records { records, ttl } => (Cached::Records(records), ttl),
            Reading::NoData { ttl } => (Cached::NoData, ttl),
            Reading::NxDomain { ttl } => (Cached::NxDomain, ttl),
        };
        self.cache
            .insert(&question.name, question.qtype, cached.clone(), ttl, now);
        if question.origin != question.name {
            let ttl = ttl.min(question.cname_ttl);
            self.cache
                .insert(&question.origin, question.qtype, cached.clone(), ttl, now);
        }
        let outcome = match cached {
            Cached::Records(records) => Outcome::Records {
                records,
                additional: message.additional.clone(),
            },
            Cached::NoData => Outcome::NoData,
            Cached::NxDomain => Outcome::NxDomain,
        };
        self.finish_question(qid, outcome);
    }

    // -- lookups -------------------------------------------------------------

    /// Applies finished questions to their lookups until none is left
    /// (applying one may start questions that the cache answers at once).
    fn apply_ready(&mut self, now: Instant) {
        while let Some((owner, outcome)) = self.ready.pop_front() {
            match owner.purpose {
                Purpose::Mx => self.handle_mx(owner.lookup, outcome, now),
                Purpose::Address { host, qtype } => {
                    self.handle_addresses(owner.lookup, host, qtype, outcome, now)
                }
            }
        }
    }

    fn handle_mx(&mut self, id: LookupId, outcome: Outcome, now: Instant) {
        let Some(lookup) = self.lookups.get(&id) else {
            return;
        };
        let domain = lookup.name.clone();
        match outcome {
            Outcome::Records {
                records,
                additional,
            } => {
                let mut mx: Vec<(u16, String)> = records
                    .into_iter()
                    .filter_map(|r| match r {
                        RData::Mx {
                            preference,
                            exchange,
                        } => Some((preference, exchange)),
                        _ => None,
                    })
                    .collect();
                // RFC 7505 §3: one MX, preference 0, exchange ".".
                if let [(0, exchange)] = mx.as_slice() {
                    if exchange.is_empty() {
                        self.finish_lookup(id, Err(DnsError::NullMx));
                        return;
                    }
                }
                mx.retain(|(_, exchange)| !exchange.is_empty());
                self.order_mx(&mut mx);
                if mx.is_empty() {
                    self.finish_lookup(id, Err(DnsError::NoAddress));
                    return;
                }
                self.start_addresses(id, mx, &additional, now);
            }
            // RFC 5321 §5.1: no MX, so the domain itself is the implicit MX.
            Outcome::NoData => self.start_addresses(id, vec![(0, domain)], &[], now),
            Outcome::NxDomain => self.finish_lookup(id, Err(DnsError::NoSuchDomain)),
            Outcome::Temporary(why) => self.finish_lookup(id, Err(DnsError::Temporary(why))),
        }
    }

    /// Uniform enough in `0..n` for n > 0; 0 without a random source (the
    /// shuffle is load spreading, not security).
    fn below(&mut self, n: usize) -> usize {
        let mut b = [0u8; 8];
        if (self.random)(&mut b).is_err() {
            return 0;
        }
        (u64::from_ne_bytes(b) % n.max(1) as u64) as usize
    }

    /// Sorts by preference, shuffles equal preferences, drops duplicate
    /// hosts and keeps at most [`MAX_MX_HOSTS`].
    fn order_mx(&mut self, mx: &mut Vec<(u16, String)>) {
        mx.sort_by_key(|(preference, _)| *preference);
        let mut start = 0;
        while start < mx.len() {
            let preference = mx.get(start).map(|m| m.0);
            let end = mx
                .iter()
                .skip(start)
                .position(|m| Some(m.0) != preference)
                .map_or(mx.len(), |n| start + n);
            // Fisher-Yates over mx[start..end].
            for i in (start + 1..end).rev() {
                let j = start + self.below(i - start + 1);
                mx.swap(i, j);
            }
            start = end;
        }
        let mut seen: Vec<String> = Vec::new();
        mx.retain(|(_, name)| {
            let fresh = !seen.contains(name);
            seen.push(name.clone());
            fresh
        });
        mx.truncate(MAX_MX_HOSTS);
    }

    /// Starts the address phase for `hosts`, taking A/AAAA records from the
    /// MX answer's additional section when it has them.
    fn start_addresses(
        &mut self,
        id: LookupId,
        hosts: Vec<(u16, String)>,
        additional: &[Record],
        now: Instant,
    ) {
        let Some(lookup) = self.lookups.get_mut(&id) else {
            return;
        };
        for (index, (preference, name)) in hosts.into_iter().enumerate() {
            let glue = |qtype: u16| -> Addresses {
                let addrs: Vec<IpAddr> = additional
                    .iter()
                    .filter(|r| r.name == name && r.data.rtype() == qtype)
                    .filter_map(|r| address_of(&r.data))
                    .collect();
                if addrs.is_empty() {
                    Addresses::Waiting
                } else {
                    Addresses::Found(addrs)
                }
            };
            let (v6, v4) = (glue(TYPE_AAAA), glue(TYPE_A));
            for (qtype, answer) in [(TYPE_AAAA, &v6), (TYPE_A, &v4)] {
                if matches!(answer, Addresses::Waiting) {
                    lookup.pending.push_back((index, qtype));
                }
            }
            lookup.hosts.push(HostSlot {
                name,
                preference,
                v6,
                v4,
            });
        }
        self.start_pending(id, now);
    }

    /// Starts pending address questions up to the parallel limit; finishes
    /// the lookup when nothing is pending or running.
    fn start_pending(&mut self, id: LookupId, now: Instant) {
        loop {
            let Some(lookup) = self.lookups.get_mut(&id) else {
                return;
            };
            if lookup.running >= MAX_PARALLEL_QUESTIONS {
                return;
            }
            let Some((host, qtype)) = lookup.pending.pop_front() else {
                if lookup.running == 0 {
                    let result = lookup.result();
                    self.finish_lookup(id, result);
                }
                return;
            };
            let Some(name) = lookup.hosts.get(host).map(|h| h.name.clone()) else {
                continue;
            };
            lookup.running += 1;
            let purpose = Purpose::Address { host, qtype };
            self.ask(
                Owner {
                    lookup: id,
                    purpose,
                },
                name,
                qtype,
                now,
            );
        }
    }

    fn handle_addresses(
        &mut self,
        id: LookupId,
        host: usize,
        qtype: u16,
        outcome: Outcome,
        now: Instant,
    ) {
        let Some(lookup) = self.lookups.get_mut(&id) else {
            return;
        };
        lookup.running = lookup.running.saturating_sub(1);
        let answer = match outcome {
            Outcome::Records { records, .. } => {
                Addresses::Found(records.iter().filter_map(address_of).collect())
            }
            Outcome::NoData => Addresses::None { nxdomain: false },
            Outcome::NxDomain => Addresses::None { nxdomain: true },
            Outcome::Temporary(why) => Addresses::Failed(why),
        };
        if let Some(slot) = lookup.hosts.get_mut(host) {
            if qtype == TYPE_AAAA {
                slot.v6 = answer;
            } else {
                slot.v4 = answer;
            }
        }
        self.start_pending(id, now);
    }

    fn finish_lookup(&mut self, id: LookupId, result: Result<Vec<MxHost>, DnsError>) {
        if let Some(lookup) = self.lookups.remove(&id) {
            match &result {
                Ok(hosts) => log::debug!(
                    "dns: lookup={} name={} hosts={}",
                    id.0,
                    lookup.name,
                    hosts.len()
                ),
                Err(e) => log::debug!("dns: lookup={} name={} error={e}", id.0, lookup.name),
            }
            self.results.push_back((id, result));
        }
    }
}

impl Lookup {
    fn new(kind: LookupKind, name: String) -> Lookup {
        Lookup {
            kind,
            name,
            hosts: Vec::new(),
            pending: VecDeque::new(),
            running: 0,
        }
    }

    /// Hosts with at least one address, in order; else why there are none.
    fn result(&self) -> Result<Vec<MxHost>, DnsError> {
        let mut hosts = Vec::new();
        let mut failure = None;
        let mut all_nxdomain = true;
        for slot in &self.hosts {
            let mut addrs: Vec<IpAddr> = Vec::new();
            for answer in [&slot.v6, &slot.v4] {
                match answer {
                    Addresses::Found(found) => {
                        all_nxdomain = false;
                        for addr in found {
                            if !addrs.contains(addr) {
                                addrs.push(*addr);
                            }
                        }
                    }
                    Addresses::None { nxdomain } => all_nxdomain &= *nxdomain,
                    Addresses::Failed(why) => {
                        all_nxdomain = false;
                        failure.get_or_insert_with(|| why.clone());
                    }
                    Addresses::Waiting => {
                        all_nxdomain = false;
                        failure.get_or_insert_with(|| "lookup unfinished".to_string());
                    }
                }
            }
            if !addrs.is_empty() {
                hosts.push(MxHost {
                    name: slot.name.clone(),
                    preference: slot.preference,
                    addrs,
                });
            }
        }
        if !hosts.is_empty() {
            Ok(hosts)
        } else if let Some(why) = failure {
            Err(DnsError::Temporary(why))
        } else if matches!(self.kind, LookupKind::Host) && all_nxdomain {
            Err(DnsError::NoSuchDomain)
        } else {
            Err(DnsError::NoAddress)
        }
    }
}

/// What one answer says about (name, type).
enum Reading {
    Records {
        records: Vec<RData>,
        ttl: u32,
    },
    /// Only CNAMEs: ask again for `target`.
    Alias {
        target: String,
        ttl: u32,
        hops: usize,
    },
    NoData {
        ttl: u32,
    },
    NxDomain {
        ttl: u32,
    },
    ChainTooLong,
}

/// Follows the CNAME chain in the answer section from `name` and collects
/// the records of `qtype` at its end. TTLs are the smallest along the chain;
/// negative TTLs come from the SOA in the authority section (RFC 2308 §5),
/// and without one the answer is not cached.
fn read_answer(message: &Message, name: &str, qtype: u16) -> Reading {
    let mut current = name;
    let mut ttl = u32::MAX;
    let mut hops = 0;
    loop {
        let found: Vec<&Record> = message
            .answers
            .iter()
            .filter(|r| r.name == current && r.data.rtype() == qtype)
            .collect();
        if !found.is_empty() {
            let ttl = found.iter().map(|r| r.ttl).fold(ttl, u32::min);
            let records = found.into_iter().map(|r| r.data.clone()).collect();
            return Reading::Records { records, ttl };
        }
        let alias = message.answers.iter().find_map(|r| match &r.data {
            RData::Cname(target) if r.name == current => Some((target, r.ttl)),
            _ => None,
        });
        let Some((target, alias_ttl)) = alias else {
            break;
        };
        hops += 1;
        if hops > MAX_CNAME_CHAIN {
            return Reading::ChainTooLong;
        }
        ttl = ttl.min(alias_ttl);
        current = target;
    }
    let negative_ttl = message
        .authority
        .iter()
        .find_map(|r| match r.data {
            RData::Soa { minimum } => Some(minimum.min(r.ttl)),
            _ => None,
        })
        .unwrap_or(0);
    if message.header.rcode == RCODE_NXDOMAIN {
        Reading::NxDomain {
            ttl: negative_ttl.min(ttl),
        }
    } else if hops > 0 {
        Reading::Alias {
            target: current.to_string(),
            ttl,
            hops,
        }
    } else {
        Reading::NoData { ttl: negative_ttl }
    }
}

fn address_of(data: &RData) -> Option<IpAddr> {
    match data {
        RData::A(addr) => Some(IpAddr::V4(*addr)),
        RData::Aaaa(addr) => Some(IpAddr::V6(*addr)),
        _ => None,
    }
}

/// RFC 5321 §4.1.3 address literal: `[192.0.2.1]`, `[IPv6:2001:db8::1]`
/// (the bare `[2001:db8::1]` is accepted too).
fn address_literal(text: &str) -> Option<IpAddr> {
    let inner = text.strip_prefix('[')?.strip_suffix(']')?;
    let tagged = inner
        .get(..5)
        .filter(|tag| tag.eq_ignore_ascii_case("IPv6:"));
    match tagged {
        Some(_) => inner.get(5..)?.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        None => inner.parse().ok(),
    }
}

fn literal_host(text: &str, addr: IpAddr) -> MxHost {
    MxHost {
        name: text.to_string(),
        preference: 0,
        addrs: vec![addr],
    }
}

fn rcode_name(rcode: u16) -> String {
    match u8::try_from(rcode) {
        Ok(RCODE_FORMERR) => "FORMERR".to_string(),
        Ok(RCODE_SERVFAIL) => "SERVFAIL".to_string(),
        Ok(RCODE_NOTIMP) => "NOTIMP".to_string(),
        Ok(RCODE_REFUSED) => "REFUSED".to_string(),
        _ if rcode == RCODE_BADVERS => "BADVERS".to_string(),
        _ => format!("RCODE {rcode}"),
    }
}

// ---------------------------------------------------------------------------
// Test randomness

/// A deterministic random source for tests.
#[cfg(test)]
fn seeded(seed: u64) -> RandomSource {
    let mut rng = crate::test_rng::TestRng::new(seed);
    Box::new(move |buf: &mut [u8]| {
        for chunk in buf.chunks_mut(8) {
            let word = rng.next_u64().to_ne_bytes();
            for (b, w) in chunk.iter_mut().zip(word) {
                *b = w;
            }
        }
        Ok(())
    })
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)] // tests index fixed data
mod tests;
