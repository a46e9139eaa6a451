//! The queue runner: a timer of the loop that takes due messages, delivers
//! local recipients at once (with `local_delivery = lmtp`: one outbound
//! job per message to the LMTP server, never held by `hold_outbound`),
//! hands remote ones to the outbound machinery,
//! and settles each message when every part of its attempt is back:
//! remove it, bounce it (RFC 3464, once, listing every failed recipient),
//! or reschedule it on the pure retry schedule.
//!
//! [`QueueRunner`] owns the schedule ([`Queue`]), the attempts in flight,
//! the fresh-envelope cache, the hold and flush marks and the local
//! delivery jobs; it borrows the spool, configuration and tables through an
//! [`Io`] and hands remote jobs to the [`OutboundDriver`], whose
//! [`JobReport`](super::outbound::JobReport)s come back through
//! [`QueueRunner::job_done`].
//!
//! Expiry and retry run on the monotonic clock and the message's queue age,
//! never on the wall clock (`queue` module doc): the decision is
//! `queue::after_attempt`, a pure function of age, attempts and whether
//! this round really attempted anything.

mod local;
mod report;
mod requests;

use std::collections::{HashMap, HashSet};

use super::outbound::OutboundDriver;
use super::{mono_now, unix_now, Io};
use crate::bounce::{DsnAction, FailedRecipient};
use crate::delivery::outcome::{self, Origin, Outcome, Reason};
use crate::delivery::{Destination, Refusal};
use crate::idmap::IdMap;
use crate::outbound::{DestinationKey, Job};
use crate::queue::{after_attempt, held_wait, Disposition, Queue, Rules};
use crate::routes::{Relay, RouteChoice, Target};
use crate::smtp::address::Address;
use crate::spool::envelope::Recipient;
use crate::spool::{QueueId, RcptState, RcptStatus, StoredEnvelope};
use local::{LocalJobs, LocalTask};

/// Messages taken from the queue per loop turn (their local deliveries
/// are queued as jobs, see `daemon::runner::local`; this bounds the loading of
/// envelopes and states in one turn).
pub const MESSAGES_PER_TURN: usize = 16;
/// Outbound jobs waiting for a connection slot before the runner stops
/// taking due messages (each waiting job holds its envelope in memory).
pub const OUTBOUND_BACKLOG: usize = 64;

/// A message whose attempt is in progress (outbound or local jobs
/// outstanding).
pub struct InFlight {
    pub env: StoredEnvelope,
    pub states: Vec<RcptState>,
    pub attempts: u32,
    pub outstanding: usize,
    /// Whether anything was actually tried (held mail does not count).
    pub tried: bool,
    /// Recipients that had already failed (and were reported) before this
    /// attempt: each failure is bounced once.
    pub failed_before: Vec<bool>,
    /// The states as loaded: an unchanged state is not rewritten.
    pub loaded: Vec<RcptState>,
    /// Remote recipients were held back (`hold_outbound`).
    pub held: bool,
    /// The queue age in the state file as loaded (0 without one).
    pub stored_age: u64,
    /// Recipients delivered in this attempt to a hop that offered DSN
    /// (RFC 3461): it reports success itself.
    pub dsn_passed: Vec<usize>,
}

/// Held mail is not attempted, and its state file is rewritten only to
/// save its queue age, at most this often (flash wear), so a restart
/// forgets at most this much of the time it was held. It is looked at
/// again only when that save or its delay warning is due
/// ([`crate::queue::held_wait`]); a flush or a reload that turns
/// `hold_outbound` off releases it at once.
pub const AGE_CHECKPOINT: u64 = 3600;

impl InFlight {
    fn newly_failed(&self) -> impl Iterator<Item = (&Recipient, &RcptState)> {
        self.env
            .recipients
            .iter()
            .zip(&self.states)
            .zip(&self.failed_before)
            .filter(|((_, s), before)| s.status == RcptStatus::Failed && !**before)
            .map(|(pair, _)| pair)
    }
}

/// Recovered messages checked (envelope, trailer, state file) and
/// scheduled per loop turn while the daemon serves (see
/// [`QueueRunner::recover_some`]): a few milliseconds of reads.
pub const RECOVER_PER_TURN: usize = 128;
/// ... and for at most about this long (the clock is read after each
/// message: with a cold page cache one check may take milliseconds).
pub const RECOVER_TURN_TIME: std::time::Duration = std::time::Duration::from_millis(5);

/// Envelopes kept for messages not yet attempted (beyond this, the first
/// attempt reads the file like any other).
pub const FRESH_CACHE: usize = 1024;

#[derive(Default)]
pub struct QueueRunner {
    /// The schedule: due times of queued messages.
    queue: Queue,
    /// Messages with jobs (outbound or local) outstanding.
    in_flight: IdMap<QueueId, InFlight>,
    /// Envelopes (and content sizes) of messages committed but not yet
    /// attempted: their first attempt needs no re-read of the file.
    fresh: IdMap<QueueId, (StoredEnvelope, u64)>,
    /// A `queue flush` is running: held mail is delivered too.
    flushing: bool,
    /// Messages a `queue flush ID` asked for: attempted even under
    /// `hold_outbound` (like a whole-queue flush).
    flush_one: HashSet<QueueId>,
    /// Messages on hold (`hold/ID`, `tern queue hold`): out of the
    /// schedule until released.
    held: HashSet<QueueId>,
    /// Sequence for unique local names (Maildir, bounce IDs).
    local_seq: u64,
    /// Local deliveries, moved a bounded amount per turn.
    local_jobs: LocalJobs,
    /// Start-up recovery still checking messages, and how many it has
    /// scheduled so far.
    recovery: Option<(crate::spool::Recovery, usize)>,
}

impl QueueRunner {
    /// At start, before the loop serves: the first part of recovery (no
    /// message file opened, see `Spool::recover_begin`). The listed
    /// messages are checked and scheduled [`RECOVER_PER_TURN`] per loop turn
    /// by [`QueueRunner::recover_some`], so the listeners answer from the
    /// first turn even with 100,000 messages queued (checking them all
    /// first kept the port silent for seconds).
    pub fn start(&mut self, io: &mut Io) -> std::io::Result<()> {
        let recovery = io.spool.recover_begin()?;
        self.held = io.spool.held()?.into_iter().collect();
        self.queue.reserve(recovery.listed());
        if recovery.listed() > RECOVER_PER_TURN {
            log::info!(
                "recovery: checking {} queued message(s) while serving",
                recovery.listed()
            );
        }
        self.recovery = Some((recovery, 0));
        if let Some(why) = crate::system::clock_before_build(super::unix_now()) {
            // A router before NTP: certificates look not yet valid, and the
            // dates in new mail are wrong. Retries and expiry do not depend
            // on it (monotonic clock), nothing bounces because of it.
            log::warn!("{why}; TLS deliveries defer until it is");
        }
        self.recover_some(io, RECOVER_PER_TURN);
        Ok(())
    }

    /// Whether start-up recovery is still checking messages.
    pub fn recovering(&self) -> bool {
        self.recovery.is_some()
    }

    /// Checks up to `max` more recovered messages and schedules each
    /// complete one due now, unless it is on hold or already scheduled (a
    /// control request may name a message recovery has not reached).
    /// Returns whether more remain: the loop comes back at once. Logs
    /// "started: ..." when recovery is complete.
    pub fn recover_some(&mut self, io: &mut Io, max: usize) -> bool {
        let Some((recovery, queued)) = self.recovery.as_mut() else {
            return false;
        };
        let now = mono_now();
        let started = std::time::Instant::now();
        let (queue, held) = (&mut self.queue, &self.held);
        let mut left = max;
        let mut more = true;
        // One message at a time, so that a cold page cache (each check
        // reads a file not touched since boot) cannot make one turn long.
        while more && left > 0 && started.elapsed() < RECOVER_TURN_TIME {
            left -= 1;
            more = recovery.step(io.spool, 1, |id, check| {
                if !queue.contains(id) && check() && !held.contains(&id) {
                    queue.schedule(id, now);
                    *queued += 1;
                }
            });
        }
        if more {
            return true;
        }
        let queued = *queued;
        self.recovery = None;
        self.queue.shrink();
        if self.held.is_empty() {
            log::info!("started: {queued} queued message(s)");
        } else {
            log::info!(
                "started: {queued} queued message(s), {} on hold",
                self.held.len()
            );
        }
        false
    }

    /// A new message (committed, imported or a bounce): due now.
    pub fn schedule_new(&mut self, id: QueueId) {
        self.queue.schedule(id, mono_now());
    }

    /// A queue run (SIGUSR1, `tern queue flush`, a release by reload):
    /// everything is due now, held mail included, until the queue is empty.
    pub fn flush(&mut self) {
        self.flushing = true;
        self.queue.flush(mono_now());
    }

    /// No local delivery in progress.
    pub fn local_idle(&self) -> bool {
        self.local_jobs.is_empty()
    }

    /// Takes up to [`MESSAGES_PER_TURN`] due messages. Returns true when
    /// it stopped at that bound with more due: the loop must come back at
    /// once, not at the next tick (after a restart every recovered message
    /// is due, and 16 per second kept new mail waiting behind 100,000 held
    /// ones for hours).
    pub fn run_queue(
        &mut self,
        io: &mut Io,
        outbound: &mut OutboundDriver,
        stopping: bool,
    ) -> bool {
        if stopping {
            return false;
        }
        let now = unix_now();
        let mono = mono_now();
        for _ in 0..MESSAGES_PER_TURN {
            // Memory must not grow with the queue: while outbound jobs wait
            // for connection slots, due messages stay in the queue index
            // (an outbound event wakes the loop when a slot frees).
            if outbound.backlog() >= OUTBOUND_BACKLOG
                || self.local_jobs.len() >= local::LOCAL_BACKLOG
            {
                return false;
            }
            match self.queue.pop_due(mono) {
                Some(id) => self.attempt(io, outbound, id, now),
                None => {
                    // A flush during recovery covers the messages still
                    // to be recovered (they are made due as they are).
                    if self.recovery.is_none() {
                        self.flushing = false;
                    }
                    return false;
                }
            }
        }
        true
    }

    pub fn remember_fresh(&mut self, id: QueueId, env: StoredEnvelope, size: u64) {
        if self.fresh.len() < FRESH_CACHE {
            self.fresh.insert(id, (env, size));
        }
    }

    fn attempt(&mut self, io: &mut Io, outbound: &mut OutboundDriver, id: QueueId, now: u64) {
        if self.held.contains(&id) {
            // On hold (`tern queue hold`): out of the schedule until released.
            self.queue.remove(id);
            return;
        }
        let flush_one = self.flush_one.remove(&id);
        let cached = self.fresh.remove(&id);
        let content_size = cached.as_ref().map(|(_, size)| *size);
        let loaded = match cached {
            Some((env, _)) => {
                let n = env.recipients.len();
                Ok((env, vec![RcptState::default(); n], 0, 0))
            }
            None => io
                .spool
                .load_progress(id)
                .map(|(env, p)| (env, p.states, p.attempts, p.age)),
        };
        let (env, mut states, attempts, stored_age) = match loaded {
            Ok(x) => x,
            Err(e) => {
                log::error!("{id}: cannot read queue file: {e}");
                self.queue.remove(id);
                return;
            }
        };
        // As loaded: recipients that failed in an earlier attempt were
        // reported then; an unchanged state is not rewritten.
        let failed_before = states
            .iter()
            .map(|s| s.status == RcptStatus::Failed)
            .collect();
        let loaded = states.clone();
        let mut tried = false;
        let mut remote: HashMap<DestinationKey, Vec<(usize, String)>> = HashMap::new();
        // Recipients routed to a webhook, by route line (one POST each).
        let mut hooks: Vec<WebhookJob> = Vec::new();
        // No route: the smarthost keys, else MX.
        let smarthost = crate::routes::Relay::smarthost(io.cfg).map(std::rc::Rc::new);
        let mut local = Vec::new();
        // `local_delivery = lmtp`: the local recipients' mailbox names, for
        // one job to the LMTP server.
        let lmtp_target = io.cfg.lmtp();
        let mut lmtp = Vec::new();
        // One state per recipient (`decode_state` makes exactly as many).
        for (i, (rcpt, state)) in env.recipients.iter().zip(states.iter_mut()).enumerate() {
            if state.status.is_final() {
                continue;
            }
            match &rcpt.dest {
                Destination::Local(mailbox) if lmtp_target.is_some() => {
                    tried = true;
                    lmtp.push((i, mailbox.to_string()));
                }
                Destination::Local(mailbox) => {
                    tried = true;
                    self.local_seq += 1;
                    local.push(LocalTask {
                        id,
                        index: i,
                        mailbox: mailbox.clone(),
                        sender: env.sender.clone(),
                        original: rcpt.original.clone(),
                        arrival: env.arrival,
                        now,
                        seq: self.local_seq,
                    });
                }
                Destination::Remote(address) => {
                    if let Some((line, url, format)) =
                        webhook_route(&io.tables.routes, &env.sender, &address.domain)
                    {
                        if env.requiretls {
                            // RFC 8689: an HTTP endpoint cannot promise
                            // REQUIRETLS onwards.
                            tried = true;
                            let peer = format!("{}:{}", url.host, url.port);
                            let gap = outcome::RequireTlsGap::WebhookRoute;
                            let o = Outcome::Failed(outcome::requiretls_unsatisfied(&peer, &gap));
                            log_outcome(id, &rcpt.original, 0, &o);
                            *state = RcptState::from_outcome(o);
                            continue;
                        }
                        match hooks.iter_mut().find(|h| h.line == line) {
                            Some(h) => h.job.recipients.push(i),
                            None => hooks.push(WebhookJob {
                                line,
                                job: super::webhook::WebhookJob {
                                    id,
                                    url: url.clone(),
                                    format,
                                    recipients: vec![i],
                                },
                            }),
                        }
                        continue;
                    }
                    match remote_destination(
                        io.cfg,
                        &io.tables.routes,
                        &smarthost,
                        &env.sender,
                        &address.domain,
                    ) {
                        Ok(key) => remote.entry(key).or_default().push((i, address.to_text())),
                        Err(reason) => {
                            tried = true;
                            let o = Outcome::Deferred(reason);
                            log_outcome(id, &rcpt.original, 0, &o);
                            *state = RcptState::from_outcome(o);
                        }
                    }
                }
                Destination::Refused(why) => {
                    tried = true;
                    let reason = match why {
                        Refusal::UnknownUser => outcome::local_unknown_user(&rcpt.original),
                        Refusal::BadMailboxName => outcome::local_bad_mailbox_name(&rcpt.original),
                    };
                    let o = Outcome::Failed(reason);
                    log_outcome(id, &rcpt.original, 0, &o);
                    *state = RcptState::from_outcome(o);
                }
            }
        }
        let mut flight = InFlight {
            loaded,
            held: false,
            stored_age,
            env,
            states,
            attempts,
            outstanding: 0,
            tried,
            failed_before,
            dsn_passed: Vec::new(),
        };
        let size = || match content_size {
            Some(size) => size,
            None => io.spool.content_size(id).unwrap_or(0),
        };
        if let (Some(target), false) = (lmtp_target, lmtp.is_empty()) {
            // Local mail is never held: it does not leave the host.
            flight.outstanding += 1;
            outbound.submit(Job {
                id,
                domain: String::new(),
                relay: None,
                lmtp: Some(std::rc::Rc::new(target.clone())),
                sender: flight.env.sender.clone(),
                dsn: job_dsn(&flight.env, &lmtp),
                recipients: lmtp,
                size: size(),
                eight_bit: flight.env.eight_bit,
                // The mailbox store does not read header fields: only a
                // UTF-8 sender needs SMTPUTF8 of the LMTP server.
                utf8_content: false,
                // Final delivery to this host's store: not a relay hop (RFC 8689 §4.2).
                requiretls: false,
                arrival: flight.env.arrival,
                rewrite: None,
                dkim: None,
            });
        }
        if !remote.is_empty() || !hooks.is_empty() {
            if io.cfg.hold_outbound && !self.flushing && !flush_one {
                // Held mail is not attempted and its state is not touched
                // (no write per held message); `mailq` shows it as held.
                flight.held = true;
            } else {
                let size = size();
                let (sender, rewrite) = crate::rewrite::RewriteTable::outbound(
                    &io.tables.rewrite,
                    id,
                    &flight.env.sender,
                    flight.env.origin,
                );
                for hook in hooks {
                    flight.outstanding += 1;
                    flight.tried = true;
                    outbound.submit_webhook(hook.job);
                }
                for (key, rcpts) in remote {
                    flight.outstanding += 1;
                    flight.tried = true;
                    outbound.submit(Job {
                        id,
                        domain: key.domain,
                        relay: key.relay,
                        lmtp: key.lmtp,
                        sender: sender.clone(),
                        dsn: job_dsn(&flight.env, &rcpts),
                        recipients: rcpts,
                        size,
                        eight_bit: flight.env.eight_bit,
                        utf8_content: flight.env.smtputf8 && flight.env.eight_bit,
                        requiretls: flight.env.requiretls,
                        arrival: flight.env.arrival,
                        rewrite: rewrite.clone(),
                        dkim: None,
                    });
                }
            }
        }
        // Local deliveries are jobs the loop moves a bounded amount per
        // turn (`delivery::jobs`); each reports like an outbound job.
        flight.outstanding += local.len();
        for task in local {
            self.local_jobs.push(task);
        }
        if flight.outstanding == 0 {
            self.settle(io, id, flight);
        } else {
            self.in_flight.insert(id, flight);
        }
    }

    /// An outbound job finished: record its outcomes and settle the
    /// message when it was the last one.
    pub fn job_done(
        &mut self,
        io: &mut Io,
        id: QueueId,
        outcomes: Vec<(usize, Outcome)>,
        dsn_passed: bool,
    ) {
        let Some(flight) = self.in_flight.get_mut(&id) else {
            return;
        };
        let now = unix_now();
        let delay = now.saturating_sub(flight.env.arrival);
        for (i, o) in outcomes {
            let Some(st) = flight.states.get_mut(i) else {
                continue;
            };
            // The address is built only for a line that is logged.
            let level = match o {
                Outcome::Delivered { .. } => log::Level::Info,
                _ => log::Level::Warn,
            };
            if log::log_enabled!(level) {
                let addr = flight
                    .env
                    .recipients
                    .get(i)
                    .map_or(String::new(), |r| r.final_address(&io.cfg.hostname));
                log_outcome(id, &addr, delay, &o);
            }
            if dsn_passed && matches!(o, Outcome::Delivered { .. }) {
                flight.dsn_passed.push(i);
            }
            *st = RcptState::from_outcome(o);
        }
        flight.outstanding = flight.outstanding.saturating_sub(1);
        if flight.outstanding == 0 {
            if let Some(flight) = self.in_flight.remove(&id) {
                self.settle(io, id, flight);
            }
        }
    }

    /// Everything of this attempt is back: finish, bounce or retry.
    fn settle(&mut self, io: &mut Io, id: QueueId, mut flight: InFlight) {
        let mono = mono_now();
        let age = self.queue.age(id, flight.stored_age, mono);
        let attempts = flight.attempts.saturating_add(u32::from(flight.tried));
        let open = flight.states.iter().any(|s| !s.status.is_final());
        let rules = Rules {
            retry_schedule: &io.cfg.retry_schedule,
            max_queue_time: io.cfg.max_queue_time,
        };
        let disposition = after_attempt(age, attempts, flight.tried, &rules);
        if open && disposition == Disposition::Expire {
            let held = held_for(age);
            let now = unix_now();
            let delay = now.saturating_sub(flight.env.arrival);
            for (rcpt, st) in flight
                .env
                .recipients
                .iter()
                .zip(flight.states.iter_mut())
                .filter(|(_, s)| !s.status.is_final())
            {
                let o = Outcome::Failed(outcome::expired(&held, st.reason.as_ref()));
                log_outcome(id, &rcpt.final_address(&io.cfg.hostname), delay, &o);
                *st = RcptState::from_outcome(o);
            }
            log::warn!("{id}: expired after {attempts} attempt(s), {held} in the queue");
        }
        // One report per attempt for the recipients that failed in it
        // (usually the only one: most messages finish in one attempt).
        if flight.newly_failed().next().is_some() {
            self.bounce(io, id, &flight);
        }
        self.success_report(io, id, &flight);
        let open = flight.states.iter().any(|s| !s.status.is_final());
        // Once, when the queue age passes `delay_warning_time`; the state
        // is saved then, so the stored age is past it and no later attempt
        // (or restart) warns again.
        let warn =
            open && report::delay_warning_due(io.cfg.delay_warning_time, flight.stored_age, age);
        if warn {
            self.delay_warning(io, id, &flight);
        }
        if !open {
            if let Err(e) = io.spool.remove(id) {
                log::error!("{id}: cannot remove finished message: {e}");
            }
            self.queue.remove(id);
            self.held.remove(&id);
            log::info!("{id}: removed");
            return;
        }
        let checkpoint = age.saturating_sub(flight.stored_age) >= AGE_CHECKPOINT;
        let mut saved = false;
        if flight.states != flight.loaded || attempts != flight.attempts || checkpoint || warn {
            match io.spool.save_state(id, &flight.states, attempts, age) {
                Ok(()) => saved = true,
                Err(e) => log::error!("{id}: cannot save delivery state: {e}"),
            }
        }
        let wait = match disposition {
            Disposition::RetryIn(wait) => wait,
            Disposition::Held => {
                // A checkpoint that failed to save is not tried again
                // at once (a failing disk would be read in a loop).
                let since_save = if saved || checkpoint {
                    0
                } else {
                    age.saturating_sub(flight.stored_age)
                };
                held_wait(age, since_save, AGE_CHECKPOINT, io.cfg.delay_warning_time)
            }
            // Unreachable with open recipients; any wait is sane.
            Disposition::Expire => AGE_CHECKPOINT,
        };
        if self.held.contains(&id) {
            // Held while this attempt ran: out of the schedule until released.
            self.queue.remove(id);
            return;
        }
        self.queue.schedule(id, mono.saturating_add(wait));
        if saved {
            self.queue.age_saved(id, mono);
        }
    }
}

/// The RFC 3461 parameters of a job's recipients (relayed to a hop that
/// offers DSN). None given by any: no list (a missing entry reads as none,
/// see `DsnParams::rcpt_suffix`).
fn job_dsn(env: &StoredEnvelope, rcpts: &[(usize, String)]) -> crate::smtp::dsn::DsnParams {
    let dsn_of = |i: usize| {
        env.recipients
            .get(i)
            .map(|r| r.dsn.clone())
            .unwrap_or_default()
    };
    let none = crate::smtp::dsn::DsnRcpt::default();
    let any = rcpts
        .iter()
        .any(|(i, _)| env.recipients.get(*i).is_some_and(|r| r.dsn != none));
    crate::smtp::dsn::DsnParams {
        mail: env.dsn.clone(),
        rcpts: if any {
            rcpts.iter().map(|(i, _)| dsn_of(*i)).collect()
        } else {
            Vec::new()
        },
    }
}

/// A webhook job being gathered, with the route line that made it.
struct WebhookJob {
    line: usize,
    job: super::webhook::WebhookJob,
}

/// The webhook route of a remote recipient, if its route is one: the
/// line, the URL and the format.
fn webhook_route<'a>(
    routes: &'a crate::routes::RouteTable,
    sender: &str,
    domain: &str,
) -> Option<(usize, &'a crate::http::Url, crate::routes::WebhookFormat)> {
    match routes.route_for(sender, domain) {
        RouteChoice::Route(crate::routes::Route {
            line,
            target: Target::Webhook { url, format },
            ..
        }) => Some((*line, url, *format)),
        _ => None,
    }
}

/// Where a remote recipient goes now (`routes`, else the smarthost, else
/// MX): its job's destination, or why its route cannot be used (it is
/// deferred, never sent another way). The routes file may change with
/// SIGHUP, so this is decided at each attempt, like Postfix's transport
/// maps. A `local` route applies when a message is received (the
/// recipient is stored as local then); a recipient received as remote
/// before such a route was added goes out the default way.
pub fn remote_destination(
    cfg: &crate::config::Config,
    routes: &crate::routes::RouteTable,
    smarthost: &Option<std::rc::Rc<Relay>>,
    sender: &str,
    domain: &str,
) -> Result<DestinationKey, Reason> {
    let default = || DestinationKey {
        domain: if smarthost.is_some() {
            String::new()
        } else {
            domain.to_string()
        },
        relay: smarthost.clone(),
        lmtp: None,
    };
    let route = match routes.route_for(sender, domain) {
        RouteChoice::Default => return Ok(default()),
        RouteChoice::Route(r) => r,
    };
    if let Some(why) = route.target.unsupported() {
        let file = cfg.routes.as_deref().unwrap_or(std::path::Path::new(""));
        return Err(outcome::route_unusable(&format!(
            "{}:{}: {why}",
            file.display(),
            route.line
        )));
    }
    Ok(match &route.target {
        Target::Smtp(relay) => DestinationKey {
            domain: String::new(),
            relay: Some(std::rc::Rc::new(relay.clone())),
            lmtp: None,
        },
        Target::Mx => DestinationKey {
            domain: domain.to_string(),
            relay: None,
            lmtp: None,
        },
        Target::Local => default(),
        // The runner sends these before asking (`webhook_route`); any other
        // caller (`tern test`) must not send them another way.
        Target::Webhook { url, .. } => {
            return Err(outcome::route_unusable(&format!(
                "line {}: a webhook route ({}), not SMTP",
                route.line,
                url.redacted()
            )))
        }
    })
}

/// Where a report to `sender` goes: through the same policy as any
/// recipient (a local sender's aliases apply); a sender that is not a
/// valid address or names no local user gets it as postmaster.
pub(super) fn bounce_recipients(io: &Io, sender: &str) -> Vec<Recipient> {
    // A report has the null sender: only recipient `local` routes apply.
    let is_local = |d: &str| io.cfg.is_local_domain(d) || io.tables.routes.is_local("", d);
    let policy = io.tables.policy(io.cfg, &is_local);
    let decided = Address::parse_mailbox(sender)
        .map_err(|_| Refusal::BadMailboxName)
        .and_then(|a| {
            if is_local(&a.domain) {
                policy.resolve_local(&a.local)
            } else {
                Ok(vec![Destination::Remote(a)])
            }
        })
        .or_else(|why| {
            log::warn!("bounce to <{sender}>: {}; sent to postmaster", why.reply());
            policy.resolve_local("postmaster")
        })
        .unwrap_or_default();
    decided
        .into_iter()
        .map(|dest| Recipient {
            dest,
            original: sender.to_string(),
            dsn: Default::default(),
        })
        .collect()
}

/// A failed recipient in the report: the reason's status; the server's
/// name and its reply as `Diagnostic-Code` only when a server said it;
/// the sentence for the human part.
fn failed_recipient(address: String, state: &RcptState) -> FailedRecipient {
    let reason = state.reason.as_ref();
    let remote = reason.and_then(|r| match &r.origin {
        Origin::Remote { relay } => Some(relay.as_str()),
        _ => None,
    });
    FailedRecipient {
        address,
        status: reason.map_or("5.0.0".into(), |r| r.status.to_string()),
        action: DsnAction::Failed,
        // `host[ip]:port` → host.
        remote_mta: remote.map(|relay| relay.split('[').next().unwrap_or(relay).to_string()),
        diagnostic: reason
            .filter(|r| matches!(r.origin, Origin::Remote { .. }))
            .map(|r| format!("smtp; {} {} {}", r.code, r.status, r.text)),
        explanation: reason.map(Reason::to_string),
        original_recipient: None,
    }
}

/// The outcome part of a log line: `relay=... dsn=... status=... (sentence)`.
struct Fields<'a>(&'a Outcome);

impl std::fmt::Display for Fields<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Outcome::Delivered { relay } => {
                write!(f, "relay={relay} dsn=2.0.0 status=sent")
            }
            Outcome::Deferred(r) | Outcome::Failed(r) => {
                let status = match self.0 {
                    Outcome::Failed(_) => "bounced",
                    _ => "deferred",
                };
                write!(
                    f,
                    "relay={} dsn={} status={status} ({})",
                    r.origin.relay().unwrap_or("none"),
                    r.status,
                    crate::logsafe::LogSafe(&r.to_string())
                )
            }
        }
    }
}

fn log_outcome(id: QueueId, addr: &str, delay: u64, o: &Outcome) {
    let fields = Fields(o);
    match o {
        Outcome::Delivered { .. } => log::info!("{id}: to=<{addr}> delay={delay} {fields}"),
        _ => log::warn!("{id}: to=<{addr}> delay={delay} {fields}"),
    }
}

/// A queue age in words: "5d", "3h", "12m", "40s" (whole units, largest).
fn held_for(age: u64) -> String {
    match age {
        a if a >= 86_400 && a.is_multiple_of(86_400) => format!("{}d", a / 86_400),
        a if a >= 3600 && a.is_multiple_of(3600) => format!("{}h", a / 3600),
        a if a >= 60 && a.is_multiple_of(60) => format!("{}m", a / 60),
        a => format!("{a}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::outcome::Status;

    #[test]
    fn log_fields_come_from_the_outcome() {
        let refused = Outcome::Deferred(outcome::connect_failed(
            "127.0.0.1:25",
            "connection refused",
        ));
        assert_eq!(
            Fields(&refused).to_string(),
            "relay=none dsn=4.4.1 status=deferred (451 4.4.1 cannot connect to 127.0.0.1:25: connection refused)"
        );
        let said = Outcome::Failed(Reason::remote(
            "mx.example[192.0.2.1]:25",
            550,
            Status::parse("5.1.1"),
            "no such user",
        ));
        assert_eq!(
            Fields(&said).to_string(),
            "relay=mx.example[192.0.2.1]:25 dsn=5.1.1 status=bounced (mx.example[192.0.2.1]:25 said: 550 5.1.1 no such user)"
        );
        let sent = Outcome::Delivered {
            relay: "mx[192.0.2.1]:25".into(),
        };
        assert_eq!(
            Fields(&sent).to_string(),
            "relay=mx[192.0.2.1]:25 dsn=2.0.0 status=sent"
        );
    }

    #[test]
    fn bounce_fields_only_name_a_server_that_said_something() {
        let said = RcptState::from_outcome(Outcome::Failed(Reason::remote(
            "mx.example[192.0.2.1]:25",
            550,
            Status::parse("5.1.1"),
            "no such user",
        )));
        let r = failed_recipient("a@x".into(), &said);
        assert_eq!(r.status, "5.1.1");
        assert_eq!(r.remote_mta.as_deref(), Some("mx.example"));
        assert_eq!(
            r.diagnostic.as_deref(),
            Some("smtp; 550 5.1.1 no such user")
        );
        let expired = RcptState::from_outcome(Outcome::Failed(outcome::expired(
            &held_for(5 * 86_400),
            said.reason.as_ref(),
        )));
        let r = failed_recipient("a@x".into(), &expired);
        assert_eq!(r.status, "5.4.7");
        assert_eq!((r.remote_mta, r.diagnostic), (None, None));
        assert!(r
            .explanation
            .unwrap()
            .starts_with("554 5.4.7 message expired after 5d"));
        assert_eq!(held_for(90), "90s");
        assert_eq!(held_for(7200), "2h");
    }
}
