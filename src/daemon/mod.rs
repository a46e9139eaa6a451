//! The daemon: wires the reactor's events to the sans-IO machines.
//!
//! Ownership (see `lib.rs`): the reactor owns sockets and timers, the spool
//! owns files, the queue owns the schedule, each session owns its protocol
//! state. This module only moves bytes and events between them, in one
//! thread, and derives timers from the machines' deadlines after each step.
//!
//! One turn of the loop: wait; accept; drive every ready connection a
//! bounded amount; fire due timers; run the group commit of every message
//! that ended during the turn and answer those sessions; run the queue;
//! move local deliveries by at most `delivery::jobs::LOCAL_BYTES_PER_TURN`
//! octets (the poll does not sleep while some remain).

mod control;
mod drop;
mod inbound;
mod local;
mod remote;
mod runner;
mod transport;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::auth::{FailureLimiter, Users};
use crate::config::Config;
use crate::delivery::aliases::Aliases;
use crate::delivery::RecipientPolicy;
use crate::dns::{LookupId, QueryHandle, Resolver, ResolverConfig};
use crate::outbound::Outbound;
use crate::queue::Queue;
use crate::reactor::{Event, Reactor, SockId};
use crate::smtp::server::{ListenerKind, SessionConfig};
use crate::spool::{Incoming, Spool};

use crate::spool::QueueId;
use inbound::Inbound;
use remote::{DnsSock, Outgoing};
use runner::InFlight;

/// Envelopes kept for messages not yet attempted (beyond this, the first
/// attempt reads the file like any other).
pub const FRESH_CACHE: usize = 1024;

/// The longest the loop sleeps without a timer (a safety net only).
pub const MAX_SLEEP: Duration = Duration::from_secs(60);
/// A loop turn whose work (after the poll) takes this long is logged at
/// debug level with where the time went (`tests/bench/stall.py` reads it).
pub const SLOW_TURN: Duration = Duration::from_millis(10);
/// How long a graceful stop waits for commits and output before exiting.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// The housekeeping tick: sendmail drops are imported, session and
/// outbound deadlines checked, and the queue looked at this often.
///
/// Why a tick and not one heap timer per session: a session's deadline moves
/// on every read, and lazily cancelled heap entries would pile up with the
/// traffic rate. Checking every connection's *derived* deadline once a
/// second costs O(connections) and keeps the timer heap at a handful of
/// entries; RFC 5321 timeouts are minutes, so one second of slack is
/// harmless.
pub const TICK: Duration = Duration::from_secs(1);

/// Timer kinds; each fires into its owner, which checks it is still current.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    Tick,
    Dns,
    ShutdownDeadline,
}

/// Local tables that answer "does this user exist" and alias expansion;
/// reloaded on SIGHUP.
pub struct LocalTables {
    pub users: HashSet<String>,
    pub aliases: Aliases,
    /// `sender_rewrite` and `sender_address` (see `rewrite`).
    pub rewrite: crate::rewrite::SenderMap,
}

impl LocalTables {
    pub fn load(cfg: &Config) -> LocalTables {
        let users = match crate::system::passwd_entries() {
            Ok(entries) => entries
                .into_iter()
                .map(|e| e.name.to_ascii_lowercase())
                .collect(),
            Err(e) => {
                log::error!("{}: {e}; no local accounts", crate::system::PASSWD_FILE);
                HashSet::new()
            }
        };
        let aliases = match Aliases::load(&cfg.aliases) {
            Ok((a, errors)) => {
                for e in errors {
                    log::warn!("{}:{}: {}", cfg.aliases.display(), e.line, e.message);
                }
                a
            }
            Err(e) => {
                log::error!("{}: {e}", cfg.aliases.display());
                Aliases::parse("").0
            }
        };
        let rewrite = crate::rewrite::RewriteTable::load_logged(cfg);
        LocalTables {
            users,
            aliases,
            rewrite,
        }
    }

    /// The one recipient policy (SMTP, sendmail drops, bounces) over these
    /// tables.
    pub fn policy<'a>(
        &'a self,
        cfg: &Config,
        is_local_domain: &'a dyn Fn(&str) -> bool,
    ) -> RecipientPolicy<'a> {
        RecipientPolicy {
            is_local_domain,
            aliases: &self.aliases,
            users: &self.users,
            any_local: cfg.local_recipients == crate::config::LocalRecipients::Any,
        }
    }
}

pub struct Daemon {
    cfg: Config,
    config_path: PathBuf,
    reactor: Reactor<Timer>,
    spool: Spool,
    queue: Queue,
    tables: LocalTables,
    session_cfg: SessionConfig,
    listeners: HashMap<SockId, ListenerKind>,
    /// Loaded from tls_cert/tls_key; `None` without them (no STARTTLS).
    tls_server: Option<Arc<rustls::ServerConfig>>,
    /// Client configs for outbound TLS: verifying, and opportunistic.
    tls_client: Option<Arc<rustls::ClientConfig>>,
    tls_client_any: Arc<rustls::ClientConfig>,
    users: Users,
    /// /etc/hosts, consulted for smarthost names before DNS (as the
    /// system resolver would).
    hosts: HashMap<String, Vec<std::net::IpAddr>>,
    auth_limiter: RefCell<FailureLimiter>,
    /// `min_free_space`, checked at MAIL and DATA (cached).
    space: RefCell<crate::spool::space::SpaceGate>,
    inbound: HashMap<SockId, Inbound>,
    per_ip: HashMap<IpAddr, usize>,
    outbound: Outbound,
    /// Messages whose content ended this turn, committed together.
    /// (connection, file, the `from=<...> nrcpt=N client=...` log text)
    batch: Vec<(
        SockId,
        Incoming,
        String,
        Option<crate::spool::StoredEnvelope>,
    )>,
    /// Envelopes (and content sizes) of messages committed but not yet
    /// attempted: their first attempt needs no re-read of the file.
    fresh: HashMap<QueueId, (crate::spool::StoredEnvelope, u64)>,
    /// A `queue flush` is running: held mail is delivered too.
    flushing: bool,
    /// Messages a `queue flush ID` asked for: attempted even under
    /// `hold_outbound` (like a whole-queue flush).
    flush_one: HashSet<QueueId>,
    /// Messages on hold (`hold/ID`, `tern queue hold`): out of the
    /// schedule until released.
    held: HashSet<QueueId>,
    /// The control socket (see `control`); `None` if it could not be
    /// created, and after shutdown began.
    control_listener: Option<SockId>,
    controls: HashMap<SockId, crate::control::Conn>,
    /// The spool lock, held for the daemon's life: one writer.
    _spool_lock: crate::spool::hold::SpoolLock,
    stopping: Option<Instant>,
    /// Messages with outbound jobs outstanding.
    in_flight: HashMap<QueueId, InFlight>,
    /// Sequence for unique local names (Maildir, bounce IDs).
    local_seq: u64,
    /// Local deliveries, moved a bounded amount per turn.
    local_jobs: local::LocalJobs,
    /// Sendmail drops being imported, a bounded amount per turn.
    drops: drop::DropImports,
    /// Imported drops for this turn's group commit: (claimed path, file,
    /// log text).
    drop_commits: Vec<(PathBuf, Incoming, String)>,
    /// AUTH credentials waiting for their check (`inbound::answer_auth`).
    auth_pending: std::collections::VecDeque<(SockId, crate::smtp::server::Credentials)>,
    resolver: Resolver,
    dns_socks: HashMap<SockId, DnsSock>,
    dns_by_handle: HashMap<QueryHandle, SockId>,
    dns_timer: Option<Instant>,
    lookups: HashMap<LookupId, u64>,
    deliveries: HashMap<u64, Outgoing>,
    delivery_seq: u64,
    /// Which delivery owns an outbound socket.
    socket_owner: HashMap<SockId, u64>,
}

impl Drop for Daemon {
    /// The control socket goes with the daemon, however `run` ended.
    fn drop(&mut self) {
        self.close_control();
    }
}

/// The error `Daemon::new` returns when the spool cannot be opened or
/// written (a read-only mount, an immutable directory): the daemon refuses
/// to start, with exit code 75 (`EX_TEMPFAIL`), as Postfix refuses to start
/// on a queue it cannot write. Not 78 (`EX_CONFIG`): the configuration is
/// valid, the file system is not ready (remounted read-only after an error,
/// an overlay mounted late at boot), and a supervisor that retries later
/// is right to.
#[derive(Debug)]
pub struct SpoolUnusable(pub String);

impl std::fmt::Display for SpoolUnusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SpoolUnusable {}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Seconds on the daemon's monotonic clock (from its first use in this
/// process). The queue runs on it: due times and queue age must not move
/// when the wall clock steps (see the `queue` module doc).
pub fn mono_now() -> u64 {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_secs()
}

impl Daemon {
    /// Binds the listeners and opens the spool (start-up order of SPEC:
    /// config, listeners, spool, recovery, serve).
    pub fn new(cfg: Config, config_path: PathBuf) -> io::Result<Daemon> {
        let mut reactor = Reactor::new()?;
        let mut listeners = HashMap::new();
        for (addrs, kind) in [
            (&cfg.listen, ListenerKind::Relay),
            (&cfg.submission_listen, ListenerKind::Submission),
            (&cfg.smtps_listen, ListenerKind::Smtps),
        ] {
            for addr in addrs {
                let id = reactor.listen(*addr).map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
                })?;
                log::info!("listening on {addr} ({kind:?})");
                listeners.insert(id, kind);
            }
        }
        let tls_server =
            load_tls_server(&cfg).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let tls_client =
            load_tls_client(&cfg).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let users = load_users(&cfg);
        for warning in startup_warnings(&cfg) {
            log::warn!("{warning}");
        }
        let spool = Spool::open(&cfg.spool_dir, cfg.spool_sync)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot open spool {}: {e}", cfg.spool_dir.display()),
                )
            })
            .and_then(|spool| spool.check_writable().map(|()| spool))
            .map_err(|e| io::Error::new(e.kind(), SpoolUnusable(e.to_string())))?;
        let spool_lock = lock_spool(&spool)?;
        let tables = LocalTables::load(&cfg);
        let outbound = Outbound::new(&cfg);
        let cfg_dns = cfg.clone();
        let mut daemon = Daemon {
            session_cfg: session_config(&cfg, tls_server.is_some(), !users.is_empty()),
            tls_server,
            tls_client,
            tls_client_any: crate::tls::client_config_no_verify(),
            users,
            hosts: load_hosts(std::path::Path::new(HOSTS_FILE)),
            auth_limiter: RefCell::new(FailureLimiter::new(
                AUTH_FAILURES_PER_IP,
                AUTH_FAILURE_WINDOW,
                AUTH_LIMITER_ENTRIES,
            )),
            space: RefCell::new(crate::spool::space::SpaceGate::new()),
            cfg,
            config_path,
            reactor,
            spool,
            queue: Queue::new(),
            tables,
            listeners,
            inbound: HashMap::new(),
            per_ip: HashMap::new(),
            outbound,
            batch: Vec::new(),
            fresh: HashMap::new(),
            flushing: false,
            flush_one: HashSet::new(),
            held: HashSet::new(),
            control_listener: None,
            controls: HashMap::new(),
            _spool_lock: spool_lock,
            stopping: None,
            in_flight: HashMap::new(),
            local_seq: 0,
            local_jobs: local::LocalJobs::default(),
            auth_pending: std::collections::VecDeque::new(),
            drops: drop::DropImports::default(),
            drop_commits: Vec::new(),
            resolver: Resolver::new(
                resolver_config(&cfg_dns),
                Box::new(|buf: &mut [u8]| crate::random::fill(buf).map_err(|_| ())),
            ),
            dns_socks: HashMap::new(),
            dns_by_handle: HashMap::new(),
            dns_timer: None,
            lookups: HashMap::new(),
            deliveries: HashMap::new(),
            delivery_seq: 0,
            socket_owner: HashMap::new(),
        };
        // Bound with the listeners, before the loop runs: a `tern queue`
        // right after start-up waits in the backlog, it never finds no
        // socket while the daemon holds the spool lock.
        daemon.open_control();
        Ok(daemon)
    }

    /// Addresses actually bound (tests use port 0).
    pub fn local_addrs(&mut self) -> Vec<std::net::SocketAddr> {
        let ids: Vec<SockId> = self.listeners.keys().copied().collect();
        ids.into_iter()
            .filter_map(|id| self.reactor.local_addr(id))
            .collect()
    }

    pub fn run(&mut self) -> io::Result<()> {
        let now = mono_now();
        let recovered = self.spool.recover()?;
        self.held = self.spool.held()?.into_iter().collect();
        for &id in &recovered {
            if !self.held.contains(&id) {
                self.queue.schedule(id, now);
            }
        }
        if self.held.is_empty() {
            log::info!("started: {} queued message(s)", self.queue.len());
        } else {
            log::info!(
                "started: {} queued message(s), {} on hold",
                self.queue.len(),
                self.held.len()
            );
        }
        self.import_drops();
        self.reactor.add_timer(Instant::now() + TICK, Timer::Tick);
        let mut events = Vec::new();
        let mut queue_backlog = false;
        let mut local_busy = false;
        let mut auth_busy = false;
        let mut drops_busy = false;
        loop {
            events.clear();
            // Due messages left over from the last turn: look at events
            // without sleeping, then take the next batch.
            // Local deliveries in progress likewise.
            let wait = if queue_backlog || local_busy || auth_busy || drops_busy {
                Duration::ZERO
            } else {
                MAX_SLEEP
            };
            self.reactor.poll(Some(wait), &mut events)?;
            let turn = Instant::now();
            for ev in events.drain(..) {
                match ev {
                    Event::Acceptable(l) if self.is_control_listener(l) => self.accept_control(l),
                    Event::Acceptable(l) => self.accept(l),
                    Event::Ready(id) => {
                        if self.inbound.contains_key(&id) {
                            self.drive_inbound(id);
                        } else if self.is_control(id) {
                            self.drive_control(id);
                        } else {
                            self.outbound_ready(id);
                        }
                    }
                    Event::Signal(sig) => self.signal(sig),
                }
            }
            let now = Instant::now();
            while let Some(t) = self.reactor.pop_timer(now) {
                self.timer(t, now);
            }
            drops_busy = self.import_turn();
            let t_drops = Instant::now();
            self.commit_batch();
            let t_commit = Instant::now();
            queue_backlog = self.run_queue();
            let t_queue = Instant::now();
            local_busy = self.run_local_jobs();
            let t_local = Instant::now();
            auth_busy = self.answer_auth();
            let t_auth = Instant::now();
            if t_auth - turn >= SLOW_TURN {
                log::debug!(
                    "slow turn: {} ms (events and timers {}, drops {}, commit {}, queue {}, local {}, auth {})",
                    (t_auth - turn).as_millis(),
                    (now - turn).as_millis(),
                    (t_drops - now).as_millis(),
                    (t_commit - t_drops).as_millis(),
                    (t_queue - t_commit).as_millis(),
                    (t_local - t_queue).as_millis(),
                    (t_auth - t_local).as_millis(),
                );
            }
            self.outbound_poll();
            if let Some(deadline) = self.stopping {
                if (self.inbound.is_empty()
                    && self.outbound.is_idle()
                    && self.local_jobs.is_empty())
                    || Instant::now() >= deadline
                {
                    self.save_unsettled();
                    self.close_control();
                    log::info!("stopped");
                    return Ok(());
                }
            }
        }
    }

    fn signal(&mut self, sig: i32) {
        match sig {
            libc::SIGTERM | libc::SIGINT => self.begin_shutdown(),
            libc::SIGHUP => self.reload(),
            libc::SIGUSR1 => {
                log::info!("queue run requested");
                self.flush_queue();
            }
            // sendmail's nudge: import the drop now (held mail stays held).
            libc::SIGUSR2 => self.import_drops(),
            _ => {}
        }
    }

    fn begin_shutdown(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        log::info!("shutting down");
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        self.stopping = Some(deadline);
        self.reactor.add_timer(deadline, Timer::ShutdownDeadline);
        let ids: Vec<SockId> = self.listeners.keys().copied().collect();
        for id in ids {
            self.reactor.close(id);
        }
        self.listeners.clear();
        self.close_control();
        let ids: Vec<SockId> = self.inbound.keys().copied().collect();
        for id in ids {
            if let Some(c) = self.inbound.get_mut(&id) {
                c.session.shutdown();
            }
            self.drive_inbound(id);
        }
        self.outbound.shutdown();
        // Cached idle outbound sessions say QUIT now.
        self.sweep_outbound(Instant::now());
    }

    fn reload(&mut self) {
        match Config::load(&self.config_path) {
            Ok(mut new) => {
                new.make_paths_absolute();
                for (key, changed) in [
                    ("listen", new.listen != self.cfg.listen),
                    (
                        "submission_listen",
                        new.submission_listen != self.cfg.submission_listen,
                    ),
                    ("smtps_listen", new.smtps_listen != self.cfg.smtps_listen),
                    ("spool_dir", new.spool_dir != self.cfg.spool_dir),
                    ("user", new.user != self.cfg.user),
                ] {
                    if changed {
                        log::warn!(
                            "reload: {key} changes only at restart; keeping the running value"
                        );
                    }
                }
                new.listen = self.cfg.listen.clone();
                new.submission_listen = self.cfg.submission_listen.clone();
                new.smtps_listen = self.cfg.smtps_listen.clone();
                new.spool_dir = self.cfg.spool_dir.clone();
                new.user = self.cfg.user.clone();
                let released = self.cfg.hold_outbound && !new.hold_outbound;
                // Certificates and users: a bad new one keeps the old one.
                match load_tls_server(&new) {
                    Ok(t) => self.tls_server = t,
                    Err(e) => log::error!("reload: keeping the old certificate: {e}"),
                }
                match load_tls_client(&new) {
                    Ok(t) => self.tls_client = t,
                    Err(e) => log::error!("reload: keeping the old CA file: {e}"),
                }
                self.users = load_users(&new);
                self.hosts = load_hosts(std::path::Path::new(HOSTS_FILE));
                self.cfg = new;
                self.session_cfg =
                    session_config(&self.cfg, self.tls_server.is_some(), !self.users.is_empty());
                self.tables = LocalTables::load(&self.cfg);
                self.outbound.reconfigure(&self.cfg);
                self.resolver.reconfigure(resolver_config(&self.cfg));
                if std::env::var_os("RUST_LOG").is_none() {
                    log::set_max_level(self.cfg.log_level);
                }
                log::info!("configuration reloaded from {}", self.config_path.display());
                if released {
                    self.flush_queue();
                }
            }
            Err(errors) => {
                for e in errors {
                    log::error!("reload refused: {e}");
                }
            }
        }
    }

    fn flush_queue(&mut self) {
        self.flushing = true;
        self.queue.flush(mono_now());
        self.import_drops();
    }

    fn timer(&mut self, t: Timer, now: Instant) {
        match t {
            Timer::Tick => {
                self.import_drops();
                self.sweep_inbound(now);
                self.sweep_outbound(now);
                self.sweep_control(now);
                self.reactor.add_timer(now + TICK, Timer::Tick);
            }
            Timer::Dns => self.dns_timer(now),
            Timer::ShutdownDeadline => {}
        }
    }

    /// Times out inbound sessions whose deadline passed.
    fn sweep_inbound(&mut self, now: Instant) {
        let expired: Vec<SockId> = self
            .inbound
            .iter()
            .filter(|(_, c)| c.session.deadline().is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(c) = self.inbound.get_mut(&id) {
                c.session.handle_timeout(now);
            }
            self.drive_inbound(id);
        }
    }
}

/// How long start-up waits for the spool lock (a `tern queue` command
/// working on the spool while no daemon ran holds it for a moment).
pub const SPOOL_LOCK_WAIT: Duration = Duration::from_secs(5);

/// Takes the spool lock for the daemon's life (before the loop runs, so
/// the short wait blocks nobody).
fn lock_spool(spool: &Spool) -> io::Result<crate::spool::hold::SpoolLock> {
    let unusable = |e: String| io::Error::other(SpoolUnusable(e));
    let deadline = Instant::now() + SPOOL_LOCK_WAIT;
    loop {
        match spool.try_lock() {
            Ok(Some(lock)) => return Ok(lock),
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(None) => {
                return Err(unusable(format!(
                    "spool {} is locked by another process (another tern daemon on this spool?)",
                    spool.root().display()
                )))
            }
            Err(e) => {
                return Err(unusable(format!(
                    "cannot lock the spool {}: {e}",
                    spool.root().display()
                )))
            }
        }
    }
}

pub const HOSTS_FILE: &str = "/etc/hosts";
/// Names read from the hosts file at most (it is a fallback table, not a zone).
pub const MAX_HOSTS_ENTRIES: usize = 1024;

/// `addr name alias...` lines; names lower-cased.
pub fn load_hosts(path: &std::path::Path) -> HashMap<String, Vec<std::net::IpAddr>> {
    let mut map: HashMap<String, Vec<std::net::IpAddr>> = HashMap::new();
    let Ok(text) = std::fs::read_to_string(path) else {
        return map;
    };
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let Some(addr) = words.next().and_then(|a| a.parse().ok()) else {
            continue;
        };
        for name in words {
            if map.len() >= MAX_HOSTS_ENTRIES {
                return map;
            }
            let e = map.entry(name.to_ascii_lowercase()).or_default();
            if !e.contains(&addr) {
                e.push(addr);
            }
        }
    }
    map
}

/// AUTH verifications (PBKDF2) answered per loop turn; the rest wait for
/// the next turn, which comes at once.
pub const AUTH_CHECKS_PER_TURN: usize = 1;
/// Brute-force limits for AUTH per client address.
pub const AUTH_FAILURES_PER_IP: u32 = 10;
pub const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(600);
pub const AUTH_LIMITER_ENTRIES: usize = 1024;

/// What start-up needs beyond a valid configuration file: the account to
/// run as, the TLS certificate and key (which must match), the CA bundle,
/// the users file and the smarthost password file. `check-config` runs
/// these same checks, so an init script that passes it can start the
/// daemon. Each problem is one line naming the file or setting.
pub fn startup_problems(cfg: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(name) = &cfg.user {
        if let Err(e) = crate::system::lookup_user(name) {
            problems.push(format!("user = {name}: {e}"));
        }
    }
    if let Err(e) = load_tls_server(cfg) {
        problems.push(e);
    }
    if let Err(e) = load_tls_client(cfg) {
        problems.push(e);
    }
    if let Some(path) = &cfg.users_file {
        match Users::load(path) {
            Ok((_, errors)) => problems.extend(
                errors
                    .into_iter()
                    .map(|(line, e)| format!("{}:{line}: {e}", path.display())),
            ),
            Err(e) => problems.push(format!("users_file {}: {e}", path.display())),
        }
    }
    problems.extend(crate::rewrite::startup_problems(cfg));
    if let Some(path) = &cfg.smarthost_password_file {
        if let Err(e) = std::fs::File::open(path) {
            problems.push(format!("smarthost_password_file {}: {e}", path.display()));
        }
    }
    problems
}

/// Settings that are valid but almost certainly not what was meant.
pub fn startup_warnings(cfg: &Config) -> Vec<String> {
    cfg.smarthost
        .iter()
        .filter(|h| h.port == 465 && cfg.smarthost_tls == crate::config::SmarthostTls::StartTls)
        .map(|h| {
            format!(
                "smarthost {}:465 with smarthost_tls = starttls: port 465 speaks implicit TLS, \
                 set smarthost_tls = tls (else every delivery waits for a greeting that never comes)",
                h.host
            )
        })
        .collect()
}

fn load_tls_server(cfg: &Config) -> Result<Option<Arc<rustls::ServerConfig>>, String> {
    match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => crate::tls::server_config(cert, key)
            .map(Some)
            .map_err(|e| e.0),
        _ => Ok(None),
    }
}

fn load_tls_client(cfg: &Config) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
    crate::tls::client_config(cfg.tls_ca_file.as_deref())
        .map(Some)
        .map_err(|e| e.0)
}

fn load_users(cfg: &Config) -> Users {
    let Some(path) = &cfg.users_file else {
        return Users::parse("").0;
    };
    match Users::load(path) {
        Ok((users, errors)) => {
            for (line, e) in errors {
                log::warn!("{}:{line}: {e}", path.display());
            }
            users
        }
        Err(e) => {
            log::error!("{}: {e}; AUTH is off", path.display());
            Users::parse("").0
        }
    }
}

pub fn session_config(cfg: &Config, tls_available: bool, auth_available: bool) -> SessionConfig {
    SessionConfig {
        tls_available,
        auth_available,
        allow_plaintext_auth: cfg.allow_plaintext_auth,
        hostname: cfg.hostname.clone(),
        max_message_size: cfg.max_message_size,
        max_recipients: cfg.max_recipients,
        max_errors: cfg.max_errors,
        hop_limit: cfg.hop_limit,
        timeout: cfg.server_timeout,
    }
}

/// The resolver's servers: `dns_servers`, else /etc/resolv.conf.
pub fn resolver_config(cfg: &Config) -> ResolverConfig {
    let mut rc = crate::dns::load_resolv_conf(std::path::Path::new("/etc/resolv.conf"));
    if !cfg.dns_servers.is_empty() {
        rc.servers = cfg.dns_servers.clone();
    }
    if let Some(t) = cfg.dns_timeout {
        rc.timeout = t;
    }
    rc
}
