//! The world the outbound delivery machine's scenarios run in, without
//! sockets: it answers the machine's actions (DNS answers from a script, connects
//! per address: refused, black-holed, or a peer), the peer is the real
//! in-memory `smtp::server::ServerSession` or a scripted server, TLS is a
//! notional handshake that succeeds or fails on demand, and time is a
//! virtual clock.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::machine::{Action, Delivery, Hop, Lookup, Settings};
use super::Job;
use crate::config::{OutboundTls, SmarthostTls};
use crate::delivery::outcome::{Outcome, Reason};
use crate::delivery::Destination;
use crate::dns::{DnsError, MxHost};
use crate::smtp::address::Address;
use crate::smtp::reply::{self, Reply};
use crate::smtp::server::{
    AuthVerdict, Credentials, Event, ListenerKind, Policy, ServerSession, SessionConfig,
};
use crate::spool::QueueId;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(300);

/// The simulated connections' own end.
pub const SIM_LOCAL_ADDR: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 25)),
    40025,
);

pub fn settings() -> Settings {
    Settings {
        hostname: "tern.test".into(),
        helo_name: "tern.test".into(),
        mx_port: 25,
        outbound_tls: OutboundTls::Opportunistic,
        smarthost_tls: SmarthostTls::StartTls,
        credentials: None,
        connect_timeout: CONNECT_TIMEOUT,
        reply_timeout: REPLY_TIMEOUT,
        trust_anchors: true,
        connection_reuse: true,
    }
}

pub fn job(id: u64, domain: &str, rcpts: &[&str]) -> Job {
    Job {
        id: QueueId(id),
        domain: domain.into(),
        sender: "alice@tern.test".into(),
        // Envelope indexes 10, 11, ...: reports must use them, not 0, 1.
        recipients: rcpts
            .iter()
            .enumerate()
            .map(|(i, r)| (10 + i, r.to_string()))
            .collect(),
        size: 100,
        eight_bit: false,
        utf8_content: false,
        requiretls: false,
        arrival: 0,
        rewrite: None,
        dkim: None,
        relay: None,
        lmtp: None,
        dsn: Default::default(),
    }
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn sa(s: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip(s), port)
}

pub fn mx(name: &str, preference: u16, addrs: &[&str]) -> MxHost {
    MxHost {
        name: name.into(),
        preference,
        addrs: addrs.iter().map(|a| ip(a)).collect(),
    }
}

// ---- peers ------------------------------------------------------------------

/// The recipient policy of the in-memory server: `bad*` is unknown (550),
/// `later*` is refused for now (450), everyone else is accepted.
pub struct PeerPolicy;

impl Policy for PeerPolicy {
    fn check_recipient(
        &self,
        rcpt: &Address,
        _relay_allowed: bool,
    ) -> Result<Vec<Destination>, Reply> {
        if rcpt.local.starts_with("bad") {
            Err(reply::USER_UNKNOWN)
        } else if rcpt.local.starts_with("later") {
            Err(Reply::new(450, "4.2.0", "mailbox busy"))
        } else {
            Ok(vec![Destination::Remote(rcpt.clone())])
        }
    }
}

/// The peer's one account: joe / secret.
fn peer_verdict(c: &Credentials) -> AuthVerdict {
    if c.user == "joe" && c.password == "secret" {
        AuthVerdict::Ok
    } else {
        AuthVerdict::Bad
    }
}

#[derive(Clone, Copy)]
pub struct ServerOpts {
    pub tls: bool,
    pub auth: bool,
}

/// A scripted server: a greeting (none: silent), then for each command
/// line the reply of the first rule whose prefix it starts with (none:
/// silence). `354` starts the body, which ends at the dot (rule ".").
#[derive(Clone)]
pub struct Script {
    pub greeting: Option<&'static str>,
    pub rules: Vec<(&'static str, &'static str)>,
}

impl Script {
    /// A plain server without PIPELINING (lock-step) that takes everything.
    pub fn ok() -> Script {
        Script {
            greeting: Some("220 mx.test ESMTP"),
            rules: vec![
                ("EHLO", "250 mx.test"),
                ("MAIL", "250 2.1.0 ok"),
                ("RCPT", "250 2.1.5 ok"),
                ("DATA", "354 go ahead"),
                (".", "250 2.0.0 queued"),
                ("RSET", "250 ok"),
                ("QUIT", "221 bye"),
            ],
        }
    }

    /// Replaces (or adds in front) the rule for `prefix`.
    pub fn with(mut self, prefix: &'static str, reply: &'static str) -> Script {
        self.rules.retain(|(p, _)| *p != prefix);
        self.rules.insert(0, (prefix, reply));
        self
    }

    /// Drops the rule for `prefix`: that command is never answered.
    pub fn without(mut self, prefix: &'static str) -> Script {
        self.rules.retain(|(p, _)| *p != prefix);
        self
    }
}

#[derive(Clone)]
pub enum Peer {
    Refuse,
    /// SYN into the void: the connect never completes.
    Blackhole,
    Script(Script),
    Server(ServerOpts),
}

pub enum Live {
    Script {
        script: Script,
        line: Vec<u8>,
        in_data: bool,
    },
    Server {
        s: Box<ServerSession>,
        pending: Vec<u8>,
    },
}

pub struct Conn {
    /// `None`: a unix socket.
    addr: Option<SocketAddr>,
    live: Live,
}

// ---- the world --------------------------------------------------------------

pub struct Sim {
    pub m: Delivery,
    pub t0: Instant,
    pub now: Instant,
    pub dns: VecDeque<Result<Vec<MxHost>, DnsError>>,
    /// Who answers at each address: one peer per connect, the last one
    /// for every later connect.
    pub peers: HashMap<SocketAddr, VecDeque<Peer>>,
    /// Who answers at a unix socket path.
    pub unix_peers: HashMap<std::path::PathBuf, Peer>,
    /// Addresses whose TLS handshakes fail, with the error.
    pub tls_fail: HashMap<SocketAddr, &'static str>,
    /// Handshakes never finish (the peer stalls mid-handshake).
    pub tls_hangs: bool,
    pub conn: Option<Conn>,
    pub body: Vec<u8>,
    pub body_pos: Option<usize>,
    pub body_unreadable: bool,
    /// Bytes the peer still takes (None: unlimited); a full socket after.
    pub write_room: Option<usize>,
    pub next_jobs: VecDeque<Job>,
    // What happened:
    pub lookups: Vec<Lookup>,
    pub connects: Vec<SocketAddr>,
    pub unix_connects: Vec<std::path::PathBuf>,
    pub tls_starts: Vec<(String, bool)>,
    pub closes: usize,
    pub reports: Vec<(QueueId, Vec<(usize, Outcome)>)>,
    /// Command lines the scripted peers got.
    pub commands: Vec<String>,
    /// Messages the peers took (scripted dots and server commits).
    pub messages: usize,
    /// What `Peer::Server`s got on the wire, and the messages they stored
    /// (without their `Received:` field).
    pub server_wire: Vec<u8>,
    pub server_messages: Vec<Vec<u8>>,
    server_stored: Vec<u8>,
}

impl Sim {
    pub fn new(job: Job, smarthosts: Vec<Hop>, settings: Settings) -> Sim {
        let t0 = Instant::now();
        Sim {
            m: Delivery::new(job, smarthosts, settings, t0),
            t0,
            now: t0,
            dns: VecDeque::new(),
            peers: HashMap::new(),
            unix_peers: HashMap::new(),
            tls_fail: HashMap::new(),
            tls_hangs: false,
            conn: None,
            body: b"Subject: hi\r\n\r\nhello\r\n".to_vec(),
            body_pos: None,
            body_unreadable: false,
            write_room: None,
            next_jobs: VecDeque::new(),
            lookups: Vec::new(),
            connects: Vec::new(),
            unix_connects: Vec::new(),
            tls_starts: Vec::new(),
            closes: 0,
            reports: Vec::new(),
            commands: Vec::new(),
            messages: 0,
            server_wire: Vec::new(),
            server_messages: Vec::new(),
            server_stored: Vec::new(),
        }
    }

    pub fn mx(job: Job) -> Sim {
        Sim::new(job, Vec::new(), settings())
    }

    pub fn dns(mut self, answer: Result<Vec<MxHost>, DnsError>) -> Sim {
        self.dns.push_back(answer);
        self
    }

    pub fn peer(mut self, addr: SocketAddr, peer: Peer) -> Sim {
        self.peers.insert(addr, VecDeque::from([peer]));
        self
    }

    pub fn peers(mut self, addr: SocketAddr, peers: Vec<Peer>) -> Sim {
        self.peers.insert(addr, peers.into());
        self
    }

    pub fn next_peer(&mut self, addr: SocketAddr) -> Option<Peer> {
        let seq = self.peers.get_mut(&addr)?;
        if seq.len() > 1 {
            seq.pop_front()
        } else {
            seq.front().cloned()
        }
    }

    /// The in-memory server's own deadline (a held AUTH failure).
    pub fn server_deadline(&self) -> Option<Instant> {
        match &self.conn.as_ref()?.live {
            Live::Server { s, .. } => s.deadline(),
            Live::Script { .. } => None,
        }
    }

    pub fn server_timeout(&mut self) {
        let now = self.now;
        let Some(Conn {
            live: Live::Server { s, .. },
            ..
        }) = self.conn.as_mut()
        else {
            return;
        };
        s.handle_timeout(now);
        let out = s.output().to_vec();
        s.consume_output(out.len());
        if !out.is_empty() {
            self.m.handle_input(&out, now);
        }
    }

    /// The next deadline of the machine or the peer; handles it.
    pub fn tick(&mut self, limit: Option<Instant>) -> bool {
        let machine = self.m.poll_timeout();
        let server = self.server_deadline();
        let next = match (machine, server) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => match a.or(b) {
                Some(t) => t,
                None => return false,
            },
        };
        if limit.is_some_and(|l| next > l) {
            return false;
        }
        self.now = self.now.max(next);
        if server == Some(next) {
            self.server_timeout();
        } else {
            self.m.handle_timeout(self.now);
        }
        true
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.t0
    }

    /// Moves everything that can move now.
    pub fn run(&mut self) {
        for _ in 0..10_000 {
            let mut progressed = false;
            while let Some(a) = self.m.poll_action() {
                progressed = true;
                self.act(a);
            }
            // The body.
            while let (Some(pos), true) = (self.body_pos, self.m.wants_body()) {
                let rest = self.body[pos..].to_vec();
                if rest.is_empty() {
                    self.body_pos = None;
                    self.m.finish_body(self.now);
                    progressed = true;
                    break;
                }
                let took = self.m.send_body(&rest, self.now);
                if took == 0 {
                    break;
                }
                self.body_pos = Some(pos + took);
                progressed = true;
            }
            // Bytes to the peer, and its answer.
            let out = self.m.poll_transmit().to_vec();
            if !out.is_empty() && self.conn.is_some() {
                let n = self.write_room.map_or(out.len(), |r| r.min(out.len()));
                if n > 0 {
                    if let Some(r) = self.write_room.as_mut() {
                        *r -= n;
                    }
                    self.m.consume_transmit(n, self.now);
                    let answer = self.peer_input(&out[..n]);
                    if !answer.is_empty() {
                        self.m.handle_input(&answer, self.now);
                    }
                    progressed = true;
                }
            }
            if !progressed {
                return;
            }
        }
        panic!("the machine never settles");
    }

    /// Runs to the end, jumping the clock to each deadline.
    pub fn finish(&mut self) {
        for _ in 0..1000 {
            self.run();
            if self.m.is_done() {
                return;
            }
            assert!(self.tick(None), "stuck without a deadline: {:?}", self.m);
        }
        panic!("no end");
    }

    /// Lets `d` pass (deadlines on the way are handled).
    pub fn wait(&mut self, d: Duration) {
        let until = self.now + d;
        loop {
            self.run();
            if !self.tick(Some(until)) {
                break;
            }
        }
        self.now = until;
        self.run();
    }

    pub fn act(&mut self, a: Action) {
        let now = self.now;
        match a {
            Action::Resolve(l) => {
                self.lookups.push(l);
                if let Some(answer) = self.dns.pop_front() {
                    self.m.handle_lookup(answer, now);
                }
            }
            Action::Connect(addr) => {
                assert!(self.conn.is_none(), "connect with a connection open");
                self.connects.push(addr);
                let peer = self.next_peer(addr);
                self.open(peer, Some(addr));
            }
            Action::ConnectUnix(path) => {
                assert!(self.conn.is_none(), "connect with a connection open");
                self.unix_connects.push(path.clone());
                let peer = self.unix_peers.get(&path).cloned();
                self.open(peer, None);
            }
            Action::StartTls {
                server_name,
                verify,
            } => {
                self.tls_starts.push((server_name, verify));
                let addr = self.conn.as_ref().and_then(|c| c.addr);
                match addr.and_then(|a| self.tls_fail.get(&a)) {
                    Some(why) => self.m.handle_tls_error(why, false, now),
                    None if self.tls_hangs => {}
                    None => self.m.handle_tls_established(now),
                }
            }
            Action::OpenBody(_) => {
                if self.body_unreadable {
                    self.m.body_failed("No such file or directory", now);
                } else {
                    self.body_pos = Some(0);
                }
            }
            Action::Close => {
                self.closes += 1;
                self.conn = None;
                self.body_pos = None;
            }
            Action::Report { id, outcomes, .. } => {
                self.reports.push((id, outcomes));
                if self.m.is_idle() {
                    if let Some(next) = self.next_jobs.pop_front() {
                        self.m
                            .next_job(next, now)
                            .expect("idle session takes a job");
                    }
                }
            }
        }
    }

    /// A connect to `peer` (at `addr`; `None`: a unix socket).
    fn open(&mut self, peer: Option<Peer>, addr: Option<SocketAddr>) {
        let now = self.now;
        let connected = |m: &mut Delivery| match addr {
            Some(_) => m.handle_connected(Ok(SIM_LOCAL_ADDR), now),
            None => m.handle_connected_unix(Ok(()), now),
        };
        match peer {
            None | Some(Peer::Refuse) => match addr {
                Some(_) => self
                    .m
                    .handle_connected(Err("connection refused".into()), now),
                None => self
                    .m
                    .handle_connected_unix(Err("No such file or directory".into()), now),
            },
            Some(Peer::Blackhole) => {}
            Some(Peer::Script(script)) => {
                self.conn = Some(Conn {
                    addr,
                    live: Live::Script {
                        script: script.clone(),
                        line: Vec::new(),
                        in_data: false,
                    },
                });
                connected(&mut self.m);
                if let Some(g) = script.greeting {
                    self.m.handle_input(format!("{g}\r\n").as_bytes(), now);
                }
            }
            Some(Peer::Server(opts)) => {
                let cfg = SessionConfig {
                    hostname: "mx.peer.test".into(),
                    max_message_size: 1 << 20,
                    max_recipients: 10,
                    max_errors: 10,
                    hop_limit: 30,
                    timeout: REPLY_TIMEOUT,
                    tls_available: opts.tls,
                    auth_available: opts.auth,
                    allow_plaintext_auth: true,
                };
                let mut s =
                    ServerSession::new(cfg, ListenerKind::Relay, ip("192.0.2.99"), true, now);
                let greeting = s.output().to_vec();
                s.consume_output(greeting.len());
                self.conn = Some(Conn {
                    addr,
                    live: Live::Server {
                        s: Box::new(s),
                        pending: Vec::new(),
                    },
                });
                connected(&mut self.m);
                self.m.handle_input(&greeting, now);
            }
        }
    }

    /// The peer reads `bytes`; returns what it answers.
    pub fn peer_input(&mut self, bytes: &[u8]) -> Vec<u8> {
        let now = self.now;
        let Some(conn) = self.conn.as_mut() else {
            return Vec::new();
        };
        let mut answer = Vec::new();
        match &mut conn.live {
            Live::Script {
                script,
                line,
                in_data,
            } => {
                for &b in bytes {
                    line.push(b);
                    if b != b'\n' {
                        continue;
                    }
                    let text = String::from_utf8_lossy(line).trim_end().to_string();
                    line.clear();
                    if *in_data {
                        if text == "." {
                            *in_data = false;
                            self.messages += 1;
                        } else {
                            continue;
                        }
                    }
                    self.commands.push(text.clone());
                    let upper = text.to_ascii_uppercase();
                    if let Some((_, r)) = script.rules.iter().find(|(p, _)| upper.starts_with(p)) {
                        if r.starts_with("354") {
                            *in_data = true;
                        }
                        answer.extend_from_slice(r.as_bytes());
                        answer.extend_from_slice(b"\r\n");
                    }
                }
            }
            Live::Server { s, pending } => {
                pending.extend_from_slice(bytes);
                self.server_wire.extend_from_slice(bytes);
                loop {
                    let n = s.handle_input(pending, now, &PeerPolicy);
                    pending.drain(..n);
                    self.server_stored.extend_from_slice(s.body());
                    s.clear_body();
                    let mut progressed = false;
                    while let Some(ev) = s.poll_event() {
                        progressed = true;
                        match ev {
                            Event::DataStart => {
                                self.server_stored.clear();
                                s.data_started("PEER1", "Wed, 02 Dec 2026 17:00:00 +0000")
                            }
                            Event::Commit => {
                                self.server_stored.extend_from_slice(s.body());
                                s.clear_body();
                                let stored = std::mem::take(&mut self.server_stored);
                                let at = stored.windows(7).position(|w| w == b"+0000\r\n");
                                let content = at.map_or(&stored[..], |p| &stored[p + 7..]);
                                self.server_messages.push(content.to_vec());
                                self.messages += 1;
                                s.committed(Ok("PEER1"));
                            }
                            Event::Abort => {}
                            Event::StartTls => {
                                pending.clear();
                                s.tls_started("TLSv1.3 notional".into(), now);
                            }
                            Event::Authenticate(c) => s.auth_verdict(peer_verdict(&c), now),
                        }
                    }
                    if !progressed && (n == 0 || pending.is_empty()) {
                        break;
                    }
                }
                answer.extend_from_slice(s.output());
                let n = s.output().len();
                s.consume_output(n);
            }
        }
        answer
    }

    /// The single report's outcomes.
    pub fn outcomes(&self) -> Vec<(usize, Outcome)> {
        assert_eq!(self.reports.len(), 1, "{:?}", self.reports);
        self.reports[0].1.clone()
    }

    /// The reason every recipient of the single report was deferred with.
    pub fn deferred_reason(&self) -> Reason {
        let outcomes = self.outcomes();
        let first = match &outcomes[0].1 {
            Outcome::Deferred(r) => r.clone(),
            other => panic!("not deferred: {other:?}"),
        };
        for (_, o) in &outcomes {
            assert_eq!(o, &Outcome::Deferred(first.clone()));
        }
        first
    }

    pub fn failed_reason(&self) -> Reason {
        let outcomes = self.outcomes();
        match &outcomes[0].1 {
            Outcome::Failed(r) => {
                assert!(outcomes
                    .iter()
                    .all(|(_, o)| o == &Outcome::Failed(r.clone())));
                r.clone()
            }
            other => panic!("not failed: {other:?}"),
        }
    }
}

pub fn delivered(relay: &str) -> Outcome {
    Outcome::Delivered {
        relay: relay.into(),
    }
}

pub const PLAIN: ServerOpts = ServerOpts {
    tls: false,
    auth: false,
};
pub const WITH_TLS: ServerOpts = ServerOpts {
    tls: true,
    auth: false,
};

pub fn one_mx(addr: &str) -> Result<Vec<MxHost>, DnsError> {
    Ok(vec![mx("mx1.dest.test", 10, &[addr])])
}

/// A delivery to dest.test whose single MX at 192.0.2.1 is `peer`.
pub fn single(peer: Peer) -> Sim {
    Sim::mx(job(1, "dest.test", &["bob@dest.test"]))
        .dns(one_mx("192.0.2.1"))
        .peer(sa("192.0.2.1", 25), peer)
}

pub const MX1: &str = "mx1.dest.test[192.0.2.1]:25";
