//! The daemon: wires the reactor's events to the sans-IO machines.
//!
//! Ownership (see `lib.rs`): the reactor owns sockets and timers, the spool
//! owns files, the queue owns the schedule, each session owns its protocol
//! state. This module only moves bytes and events between them, in one
//! thread, and derives timers from the machines' deadlines after each step.
//!
//! [`Daemon`] is a switchboard over parts, each the only owner of its maps:
//!
//! | part | file | owns |
//! |------|------|------|
//! | `InboundSessions` | `inbound.rs` | listeners, SMTP sessions, per-address counts, server TLS, users file, AUTH limiter, the turn's commit batch |
//! | `DropImports` | `drop.rs` | sendmail drops being imported, their commit batch |
//! | `QueueRunner` | `runner/` (`local.rs`: local jobs, `requests.rs`: control requests) | the schedule, attempts in flight, fresh envelopes, hold and flush marks, local delivery jobs |
//! | `OutboundDriver` | `outbound.rs` | jobs waiting for a slot, delivery machines, their sockets and lookups, client TLS, OAuth2 token sources (token commands' pipes, refresh grants' HTTP exchanges) and jobs waiting for a token |
//! | `Webhooks` (inside `OutboundDriver`) | `webhook.rs`, `http.rs` | webhook jobs waiting and running, their HTTP exchanges, sockets and lookups |
//! | `DnsDriver` | `dns.rs` | the resolver, its sockets and timer entry, the hosts table |
//! | `ControlSocket` | `control.rs` | the control socket and its connections |
//!
//! The daemon itself keeps what they share: configuration, reactor, spool
//! and local tables, lent to a part for one call as an [`Io`]. A part that
//! needs another's work gets it as a parameter (the runner submits jobs to
//! the `OutboundDriver`, which asks the `DnsDriver`) and answers with
//! values (`JobReport`, DNS answers, `Ended` messages, `ControlReply`),
//! never with a pointer back. The group commit takes several parts and
//! lives here (`commit.rs`). `link.rs` is the byte path (plain or TLS) that
//! inbound sessions and deliveries share.
//!
//! One turn of the loop: wait; accept; drive every ready connection a
//! bounded amount; fire due timers; run the group commit of every message
//! that ended during the turn and answer those sessions; run the queue;
//! move local deliveries by at most `delivery::jobs::LOCAL_BYTES_PER_TURN`
//! octets (the poll does not sleep while some remain).

/// The shared resources of a `Daemon` as an [`Io`] (a macro, so that the
/// borrow is of these fields only, next to a part borrowed mutably).
macro_rules! io {
    ($d:expr) => {
        Io {
            reactor: &mut $d.reactor,
            spool: &mut $d.spool,
            cfg: &$d.cfg,
            tables: &$d.tables,
        }
    };
}

mod commit;
mod control;
pub(crate) mod dns;
mod drop;
pub(crate) mod http;
mod inbound;
mod link;
pub(crate) mod oauth;
pub(crate) mod outbound;
pub(crate) mod runner;
mod signing;
pub(crate) mod webhook;

use std::collections::HashSet;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::auth::Users;
use crate::config::Config;
use crate::delivery::aliases::Aliases;
use crate::delivery::RecipientPolicy;
use crate::reactor::{Reactor, Readiness, SockId};
use crate::smtp::server::SessionConfig;
use crate::spool::Spool;

use inbound::InboundSessions;
use outbound::{JobReport, OutboundDriver};

pub use dns::{load_hosts, resolver_config, HOSTS_FILE, MAX_HOSTS_ENTRIES};
pub use inbound::{
    AUTH_CHECKS_PER_TURN, AUTH_FAILURES_PER_IP, AUTH_FAILURE_WINDOW, AUTH_LIMITER_ENTRIES,
};
use runner::QueueRunner;

pub use runner::FRESH_CACHE;

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
    /// The `routes` file (see `routes`).
    pub routes: crate::routes::RouteMap,
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
        let routes = crate::routes::RouteTable::load_logged(cfg);
        LocalTables {
            users,
            aliases,
            rewrite,
            routes,
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

/// What a part of the daemon borrows of the shared resources for one
/// call (each part owns its own maps; see `lib.rs`).
pub struct Io<'a> {
    pub reactor: &'a mut Reactor<Timer>,
    pub spool: &'a mut Spool,
    pub cfg: &'a Config,
    pub tables: &'a LocalTables,
}

pub struct Daemon {
    // Shared, lent to the parts as an `Io`.
    cfg: Config,
    reactor: Reactor<Timer>,
    spool: Spool,
    tables: LocalTables,
    // The parts, in the order a message meets them.
    /// Listeners and SMTP sessions (`inbound`).
    inbound: InboundSessions,
    /// Sendmail drops being imported, a bounded amount per turn (`drop`).
    drops: drop::DropImports,
    /// The schedule, attempts and local deliveries (`runner`).
    runner: QueueRunner,
    /// Outbound jobs, deliveries and their sockets (`outbound`).
    outbound: OutboundDriver,
    /// The resolver and its sockets (`dns`).
    dns: dns::DnsDriver,
    /// The control socket and its connections (`control`).
    control: control::ControlSocket,
    // The daemon's own.
    config_path: PathBuf,
    /// The spool lock, held for the daemon's life: one writer.
    _spool_lock: crate::spool::hold::SpoolLock,
    /// When the shutdown grace ends, once a shutdown began.
    stopping: Option<Instant>,
    /// The group commit's buffers, kept from turn to turn (`commit`).
    commit_bufs: commit::Buffers,
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
        let listeners = inbound::bind_listeners(&cfg, &mut reactor)?;
        let tls_server =
            load_tls_server(&cfg).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // Checked now (a bad CA file stops the start, as `check-config`
        // says), built again where first needed (`OutboundDriver`): a relay
        // that never starts outbound TLS does not keep it.
        drop(load_tls_client(&cfg).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?);
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
        // Bound with the listeners, before the loop runs: a `tern queue`
        // right after start-up waits in the backlog, it never finds no
        // socket while the daemon holds the spool lock.
        let control = control::ControlSocket::open(&mut reactor, &spool);
        let tables = LocalTables::load(&cfg);
        let outbound = OutboundDriver::new(&cfg);
        let dns = dns::DnsDriver::new(&cfg);
        let inbound = InboundSessions::new(listeners, &cfg, tls_server, users);
        Ok(Daemon {
            cfg,
            reactor,
            spool,
            tables,
            inbound,
            drops: drop::DropImports::default(),
            runner: QueueRunner::default(),
            outbound,
            dns,
            control,
            config_path,
            _spool_lock: spool_lock,
            stopping: None,
            commit_bufs: commit::Buffers::default(),
        })
    }

    pub fn run(&mut self) -> io::Result<()> {
        self.runner.start(&mut io!(self))?;
        self.import_drops();
        self.reactor.add_timer(Instant::now() + TICK, Timer::Tick);
        let mut events = Vec::new();
        let mut queue_backlog = false;
        let mut local_busy = false;
        let mut auth_busy = false;
        let mut drops_busy = false;
        let mut recovering = self.runner.recovering();
        loop {
            events.clear();
            // Due messages left over from the last turn: look at events
            // without sleeping, then take the next batch.
            // Local deliveries in progress likewise.
            let signing = self.outbound.is_signing();
            let wait = if queue_backlog
                || local_busy
                || auth_busy
                || drops_busy
                || signing
                || recovering
            {
                Duration::ZERO
            } else {
                MAX_SLEEP
            };
            self.reactor.poll(Some(wait), &mut events)?;
            let turn = Instant::now();
            for ev in events.drain(..) {
                match ev {
                    Readiness::Acceptable(l) if self.control.is_listener(l) => {
                        self.accept_control(l)
                    }
                    Readiness::Acceptable(l) => {
                        self.inbound.accept(&mut io!(self), l);
                    }
                    Readiness::Ready(id) => {
                        if self.inbound.owns(id) {
                            self.inbound.drive(&mut io!(self), id);
                        } else if self.control.owns(id) {
                            self.drive_control(id);
                        } else {
                            self.outbound_ready(id);
                        }
                    }
                    Readiness::Signal(sig) => self.signal(sig),
                }
            }
            let now = Instant::now();
            while let Some(t) = self.reactor.pop_timer(now) {
                self.timer(t, now);
            }
            drops_busy = self.drops.turn(&mut io!(self), self.stopping.is_some());
            let t_drops = Instant::now();
            self.commit_batch();
            // Start-up recovery, a bounded chunk per turn (not when stopping:
            // what is not recovered stays in the spool for the next start).
            recovering = self.stopping.is_none()
                && self
                    .runner
                    .recover_some(&mut io!(self), runner::RECOVER_PER_TURN);
            let t_commit = Instant::now();
            queue_backlog =
                self.runner
                    .run_queue(&mut io!(self), &mut self.outbound, self.stopping.is_some());
            let t_queue = Instant::now();
            local_busy = self.runner.run_local_jobs(&mut io!(self));
            let t_local = Instant::now();
            auth_busy = self.inbound.answer_auth(&mut io!(self));
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
                if (self.inbound.is_empty() && self.outbound.is_idle() && self.runner.local_idle())
                    || Instant::now() >= deadline
                {
                    self.runner.save_unsettled(&mut io!(self));
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
        self.inbound.shutdown(&mut io!(self));
        self.close_control();
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
                let tls_server = match load_tls_server(&new) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        log::error!("reload: keeping the old certificate: {e}");
                        None
                    }
                };
                match load_tls_client(&new) {
                    Ok(t) => self.outbound.set_tls_client(t),
                    Err(e) => log::error!("reload: keeping the old CA file: {e}"),
                }
                let users = load_users(&new);
                self.cfg = new;
                self.inbound.reconfigure(&self.cfg, tls_server, users);
                self.tables = LocalTables::load(&self.cfg);
                self.outbound.reconfigure(&self.cfg);
                self.dns.reconfigure(&self.cfg);
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
        self.runner.flush();
        self.import_drops();
    }

    /// Looks at `drop/` (the copying is bounded per turn, `drop`).
    fn import_drops(&mut self) {
        let stopping = self.stopping.is_some();
        self.drops.scan(&mut io!(self), stopping);
    }

    fn timer(&mut self, t: Timer, now: Instant) {
        match t {
            Timer::Tick => {
                self.import_drops();
                self.inbound.sweep(&mut io!(self), now);
                self.sweep_outbound(now);
                self.sweep_control(now);
                self.reactor.add_timer(now + TICK, Timer::Tick);
            }
            Timer::Dns => {
                self.dns.handle_timer(now);
                self.dns_flush(now);
            }
            Timer::ShutdownDeadline => {}
        }
    }

    // --- the outbound driver and the DNS driver -----------------------------

    /// Starts outbound jobs while slots are free, then lets the DNS driver
    /// send what they asked.
    fn outbound_poll(&mut self) {
        let reports = self.outbound.poll(&mut io!(self), &mut self.dns);
        self.job_reports(reports);
        self.dns_flush(Instant::now());
    }

    /// Readiness on a socket that is neither inbound nor control: a DNS
    /// exchange or a delivery (else a leftover, closed).
    fn outbound_ready(&mut self, sock: SockId) {
        if self.dns.owns(sock) {
            let now = Instant::now();
            self.dns.handle_ready(&mut self.reactor, sock, now);
            self.dns_flush(now);
            return;
        }
        let reports = self
            .outbound
            .handle_ready(&mut io!(self), &mut self.dns, sock);
        self.job_reports(reports);
    }

    /// The outbound machines' deadlines (and at shutdown the idle
    /// sessions' QUIT).
    fn sweep_outbound(&mut self, now: Instant) {
        let stopping = self.stopping.is_some();
        let reports = self
            .outbound
            .sweep(&mut io!(self), &mut self.dns, now, stopping);
        self.job_reports(reports);
    }

    /// Lets the DNS driver send and hands its answers to the deliveries.
    fn dns_flush(&mut self, now: Instant) {
        let answers = self.dns.flush(&mut self.reactor, now);
        if !answers.is_empty() {
            let reports = self
                .outbound
                .handle_answers(&mut io!(self), &mut self.dns, answers, now);
            self.job_reports(reports);
        }
        self.dns.arm_timer(&mut self.reactor);
    }

    /// Finished outbound jobs to the queue runner.
    fn job_reports(&mut self, reports: Vec<JobReport>) {
        for r in reports {
            self.runner
                .job_done(&mut io!(self), r.id, r.outcomes, r.dsn_passed);
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
    problems.extend(crate::routes::startup_problems(cfg));
    problems.extend(crate::dkim::startup_problems(cfg));
    if let Some(path) = &cfg.smarthost_password_file {
        if let Err(e) = crate::system::read_secret_line(path) {
            problems.push(format!("smarthost_password_file {}: {e}", path.display()));
        }
    }
    if let Some(crate::oauth::TokenSpec::Refresh(grant)) = crate::routes::Relay::smarthost(cfg)
        .as_ref()
        .and_then(|r| r.oauth_source())
    {
        problems.extend(grant.problems("smarthost_oauth_"));
    }
    problems
}

/// Settings that are valid but almost certainly not what was meant.
pub fn startup_warnings(cfg: &Config) -> Vec<String> {
    let routes = crate::routes::startup_warnings(cfg);
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
        .chain(routes)
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

pub fn load_tls_client(cfg: &Config) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
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
