//! The queue runner: a timer of the loop that takes due messages, delivers
//! local recipients at once, hands remote ones to the outbound machinery,
//! and settles each message when every part of its attempt is back:
//! remove it, bounce it (RFC 3464, once, listing every failed recipient),
//! or reschedule it on the pure retry schedule.
//!
//! Expiry and retry run on the monotonic clock and the message's queue age,
//! never on the wall clock (`queue` module doc): the decision is
//! `queue::after_attempt`, a pure function of age, attempts and whether
//! this round really attempted anything.

use std::collections::HashMap;

use super::{mono_now, unix_now, Daemon};
use crate::bounce::{
    build_bounce, header_block, rfc5322_date, Action, BounceInput, FailedRecipient,
};
use crate::delivery::local::{Format, LocalDelivery, LocalError};
use crate::delivery::{Destination, Mailbox, Refusal};
use crate::outbound::{Job, Outcome};
use crate::queue::{after_attempt, Disposition, Rules};
use crate::smtp::address::Address;
use crate::spool::envelope::Recipient;
use crate::spool::{QueueId, RcptState, RcptStatus, StoredEnvelope};

/// Messages taken from the queue per loop turn; local deliveries fsync, so
/// this bounds how long one turn can keep other sessions waiting.
pub const MESSAGES_PER_TURN: usize = 16;
/// Outbound jobs waiting for a connection slot before the runner stops
/// taking due messages (each waiting job holds its envelope in memory).
pub const OUTBOUND_BACKLOG: usize = 64;
/// Bytes of the original message's header returned in a bounce.
const BOUNCE_HEADER_READ: usize = 64 * 1024;

/// A message whose attempt is in progress (remote jobs outstanding).
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
}

/// How often held mail is looked at again (a flush or a reload that turns
/// `hold_outbound` off releases it at once).
pub const HELD_RECHECK: u64 = 300;
/// Held mail is not attempted and its state file not rewritten at each
/// recheck (flash wear); its queue age is saved at most this often, so a
/// restart forgets at most this much of the time it was held.
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

impl Daemon {
    /// Takes up to [`MESSAGES_PER_TURN`] due messages. Returns true when
    /// it stopped at that bound with more due: the loop must come back at
    /// once, not at the next tick (after a restart every recovered message
    /// is due, and 16 per second kept new mail waiting behind 100,000 held
    /// ones for hours).
    pub(super) fn run_queue(&mut self) -> bool {
        if self.stopping.is_some() {
            return false;
        }
        let now = unix_now();
        let mono = mono_now();
        for _ in 0..MESSAGES_PER_TURN {
            // Memory must not grow with the queue: while outbound jobs wait
            // for connection slots, due messages stay in the queue index
            // (an outbound event wakes the loop when a slot frees).
            if self.outbound.backlog() >= OUTBOUND_BACKLOG {
                return false;
            }
            match self.queue.pop_due(mono) {
                Some(id) => self.attempt(id, now),
                None => {
                    self.flushing = false;
                    return false;
                }
            }
        }
        true
    }

    pub(super) fn remember_fresh(&mut self, id: QueueId, env: StoredEnvelope, size: u64) {
        if self.fresh.len() < super::FRESH_CACHE {
            self.fresh.insert(id, (env, size));
        }
    }

    fn attempt(&mut self, id: QueueId, now: u64) {
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
            None => self
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
        let local = LocalDelivery {
            mail_dir: self.cfg.mail_dir.clone(),
            format: match self.cfg.local_delivery {
                crate::config::LocalDelivery::Maildir => Format::Maildir,
                crate::config::LocalDelivery::Mbox => Format::Mbox,
            },
            sync: self.cfg.spool_sync,
            hostname: self.cfg.hostname.clone(),
        };
        // As loaded: recipients that failed in an earlier attempt were
        // reported then; an unchanged state is not rewritten.
        let failed_before = states
            .iter()
            .map(|s| s.status == RcptStatus::Failed)
            .collect();
        let loaded = states.clone();
        let mut tried = false;
        let mut remote: HashMap<String, Vec<(usize, String)>> = HashMap::new();
        // One state per recipient (`decode_state` makes exactly as many).
        for (i, (rcpt, state)) in env.recipients.iter().zip(states.iter_mut()).enumerate() {
            if state.status.is_final() {
                continue;
            }
            match &rcpt.dest {
                Destination::Local(mailbox) => {
                    tried = true;
                    *state = self.deliver_local(&local, id, &env, rcpt, mailbox, now);
                }
                Destination::Remote(address) => {
                    let key = if self.cfg.smarthost.is_empty() {
                        address.domain.clone()
                    } else {
                        String::new()
                    };
                    remote
                        .entry(key)
                        .or_default()
                        .push((i, address.to_string()));
                }
                Destination::Refused(why) => {
                    tried = true;
                    let reply = why.reply().to_string();
                    log::info!(
                        "{id}: to=<{}> relay=none delay=0 dsn={} status=bounced ({reply})",
                        rcpt.original,
                        why.reply().status
                    );
                    *state = RcptState {
                        status: RcptStatus::Failed,
                        reply,
                    };
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
        };
        if !remote.is_empty() {
            if self.cfg.hold_outbound && !self.flushing && !flush_one {
                // Held mail is not attempted and its state is not touched
                // (no write per held message); `mailq` shows it as held.
                flight.held = true;
            } else {
                let size = match content_size {
                    Some(size) => size,
                    None => self.spool.content_size(id).unwrap_or(0),
                };
                for (domain, rcpts) in remote {
                    flight.outstanding += 1;
                    flight.tried = true;
                    self.outbound.submit(Job {
                        id,
                        domain,
                        sender: flight.env.sender.clone(),
                        recipients: rcpts,
                        size,
                        eight_bit: flight.env.eight_bit,
                        arrival: flight.env.arrival,
                    });
                }
            }
        }
        if flight.outstanding == 0 {
            self.settle(id, flight);
        } else {
            self.in_flight.insert(id, flight);
        }
    }

    fn deliver_local(
        &mut self,
        local: &LocalDelivery,
        id: QueueId,
        env: &StoredEnvelope,
        rcpt: &Recipient,
        user: &Mailbox,
        now: u64,
    ) -> RcptState {
        self.local_seq += 1;
        let result = self
            .spool
            .open_content(id)
            .map_err(|e| LocalError::Temporary(format!("451 4.3.0 cannot read queue file: {e}")))
            .and_then(|(file, _)| {
                local.deliver(user, &env.sender, &rcpt.original, file, now, self.local_seq)
            });
        let delay = now.saturating_sub(env.arrival);
        match result {
            Ok(place) => {
                log::info!(
                    "{id}: to=<{}> mailbox={user} relay=local delay={delay} dsn=2.0.0 status=sent ({place})",
                    rcpt.original
                );
                RcptState {
                    status: RcptStatus::Sent,
                    reply: place,
                }
            }
            Err(LocalError::Temporary(why)) => {
                log::warn!(
                    "{id}: to=<{}> mailbox={user} relay=local delay={delay} dsn={} status=deferred ({why})",
                    rcpt.original,
                    status_code(&why)
                );
                RcptState {
                    status: RcptStatus::Deferred,
                    reply: why,
                }
            }
            Err(LocalError::Permanent(why)) => {
                log::warn!(
                    "{id}: to=<{}> mailbox={user} relay=local delay={delay} dsn={} status=bounced ({why})",
                    rcpt.original,
                    status_code(&why)
                );
                RcptState {
                    status: RcptStatus::Failed,
                    reply: why,
                }
            }
        }
    }

    /// An outbound job finished: record its outcomes and settle the
    /// message when it was the last one.
    pub(super) fn job_done(&mut self, id: QueueId, outcomes: Vec<(usize, Outcome)>) {
        let Some(flight) = self.in_flight.get_mut(&id) else {
            return;
        };
        let now = unix_now();
        let delay = now.saturating_sub(flight.env.arrival);
        for (i, o) in outcomes {
            let Some(st) = flight.states.get_mut(i) else {
                continue;
            };
            let addr = flight
                .env
                .recipients
                .get(i)
                .map_or(String::new(), |r| r.final_address(&self.cfg.hostname));
            let status = match o.status {
                RcptStatus::Sent => "sent",
                RcptStatus::Failed => "bounced",
                _ => "deferred",
            };
            log::info!(
                "{id}: to=<{addr}> relay={} delay={delay} dsn={} status={status} ({})",
                o.relay,
                if o.status == RcptStatus::Sent {
                    "2.0.0".to_string()
                } else {
                    status_code(&o.reply)
                },
                crate::logsafe::LogSafe(&o.reply)
            );
            *st = RcptState {
                status: o.status,
                reply: o.reply,
            };
        }
        flight.outstanding = flight.outstanding.saturating_sub(1);
        if flight.outstanding == 0 {
            if let Some(flight) = self.in_flight.remove(&id) {
                self.settle(id, flight);
            }
        }
    }

    /// Everything of this attempt is back: finish, bounce or retry.
    fn settle(&mut self, id: QueueId, mut flight: InFlight) {
        let mono = mono_now();
        let age = self.queue.age(id, flight.stored_age, mono);
        let attempts = flight.attempts.saturating_add(u32::from(flight.tried));
        let open = flight.states.iter().any(|s| !s.status.is_final());
        let rules = Rules {
            retry_schedule: &self.cfg.retry_schedule,
            max_queue_time: self.cfg.max_queue_time,
            held_recheck: HELD_RECHECK,
        };
        let disposition = after_attempt(age, attempts, flight.tried, &rules);
        if open && disposition == Disposition::Expire {
            for st in flight.states.iter_mut().filter(|s| !s.status.is_final()) {
                let last = std::mem::take(&mut st.reply);
                st.status = RcptStatus::Failed;
                st.reply =
                    format!("5.4.7 message expired after {age}s in the queue; last error: {last}");
            }
            log::warn!("{id}: expired after {attempts} attempt(s), {age}s in the queue");
        }
        // One report per attempt for the recipients that failed in it
        // (usually the only one: most messages finish in one attempt).
        if flight.newly_failed().next().is_some() {
            self.bounce(id, &flight);
        }
        let open = flight.states.iter().any(|s| !s.status.is_final());
        if !open {
            if let Err(e) = self.spool.remove(id) {
                log::error!("{id}: cannot remove finished message: {e}");
            }
            self.queue.remove(id);
            self.held.remove(&id);
            log::info!("{id}: removed");
            return;
        }
        let checkpoint = age.saturating_sub(flight.stored_age) >= AGE_CHECKPOINT;
        let mut saved = false;
        if flight.states != flight.loaded || attempts != flight.attempts || checkpoint {
            match self.spool.save_state(id, &flight.states, attempts, age) {
                Ok(()) => saved = true,
                Err(e) => log::error!("{id}: cannot save delivery state: {e}"),
            }
        }
        let wait = match disposition {
            Disposition::RetryIn(wait) => wait,
            // Unreachable with open recipients; any wait is sane.
            Disposition::Expire => HELD_RECHECK,
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

    /// Sends one delivery status notification for the failed recipients,
    /// through the spool like any message. Never for the null sender.
    fn bounce(&mut self, id: QueueId, flight: &InFlight) {
        if flight.env.sender.is_empty() {
            log::warn!("{id}: undeliverable message from <>; discarded without a bounce");
            return;
        }
        let failed: Vec<FailedRecipient> = flight
            .newly_failed()
            .map(|(r, s)| FailedRecipient {
                address: r.final_address(&self.cfg.hostname),
                status: status_code(&s.reply),
                action: Action::Failed,
                remote_mta: relay_of(&s.reply),
                diagnostic: Some(format!("smtp; {}", s.reply)),
            })
            .collect();
        let headers = self.original_headers(id);
        let now = unix_now();
        self.local_seq += 1;
        let message_id = format!("<{}.{}.bounce@{}>", id, self.local_seq, self.cfg.hostname);
        let boundary = format!("{id}.{now}/{}", self.cfg.hostname);
        let text = build_bounce(&BounceInput {
            reporting_mta: &self.cfg.hostname,
            queue_id: id.text().as_str(),
            original_sender: &flight.env.sender,
            arrival_date: &rfc5322_date(flight.env.arrival as i64, 0),
            now_date: &rfc5322_date(now as i64, 0),
            message_id: &message_id,
            boundary: &boundary,
            recipients: &failed,
            original_headers: &headers,
        });
        let env = StoredEnvelope {
            id: QueueId(0),
            arrival: now,
            sender: String::new(),
            recipients: self.bounce_recipients(&flight.env.sender),
            client: format!("{} [local]", self.cfg.hostname),
            // The returned header section may carry 8-bit octets (labelled
            // 8bit by build_bounce): the relay must know (BODY=8BITMIME or
            // the 7-bit downgrade).
            eight_bit: !text.is_ascii(),
            body_offset: 0,
        };
        let received = format!(
            "Received: by {} (tern) id {id}; {}\r\n",
            self.cfg.hostname,
            rfc5322_date(now as i64, 0)
        );
        match self.spool.create(&env).and_then(|mut inc| {
            inc.write(received.as_bytes())?;
            inc.write(&text)?;
            Ok(inc)
        }) {
            Ok(inc) => {
                let bid = inc.id;
                match self.spool.commit(vec![inc]).pop() {
                    Some(Ok(bid)) => {
                        log::info!("{id}: sender non-delivery notification: {bid}");
                        self.queue.schedule(bid, mono_now());
                    }
                    _ => log::error!("{id}: could not queue the bounce {bid}"),
                }
            }
            Err(e) => log::error!("{id}: could not create the bounce: {e}"),
        }
    }

    /// Where a report to `sender` goes: through the same policy as any
    /// recipient (a local sender's aliases apply); a sender that is not a
    /// valid address or names no local user gets it as postmaster.
    fn bounce_recipients(&self, sender: &str) -> Vec<Recipient> {
        let is_local = |d: &str| self.cfg.is_local_domain(d);
        let policy = self.tables.policy(&self.cfg, &is_local);
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
            })
            .collect()
    }

    fn original_headers(&self, id: QueueId) -> Vec<u8> {
        use std::io::Read;
        let Ok((file, _)) = self.spool.open_content(id) else {
            return Vec::new();
        };
        let mut buf = Vec::new();
        let _ = file.take(BOUNCE_HEADER_READ as u64).read_to_end(&mut buf);
        header_block(&buf).to_vec()
    }
}

/// The enhanced status code in a reply text ("550 5.1.1 ..."), or a
/// generic one for its class.
fn status_code(reply: &str) -> String {
    let is_esc = |w: &str| {
        let p: Vec<&str> = w.split('.').collect();
        p.len() == 3
            && matches!(p.first(), Some(&("2" | "4" | "5")))
            && p.iter()
                .all(|x| !x.is_empty() && x.len() <= 3 && x.bytes().all(|b| b.is_ascii_digit()))
    };
    if let Some(w) = reply.split_whitespace().find(|w| is_esc(w)) {
        return w.to_string();
    }
    let class = reply
        .split_whitespace()
        .find(|w| w.len() == 3 && w.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|w| w.chars().next());
    match class {
        Some('4') => "4.0.0".into(),
        _ => "5.0.0".into(),
    }
}

/// Outbound replies are stored as "host[ip]:port said: 550 ..."; returns the host.
fn relay_of(reply: &str) -> Option<String> {
    let (head, _) = reply.split_once(" said: ")?;
    Some(head.split('[').next().unwrap_or(head).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_from_replies() {
        assert_eq!(status_code("550 5.1.1 no such user"), "5.1.1");
        assert_eq!(status_code("554 denied"), "5.0.0");
        assert_eq!(status_code("4.4.7 message expired"), "4.4.7");
        assert_eq!(
            status_code("mx.example[192.0.2.1]:25 said: 550 5.7.1 no"),
            "5.7.1"
        );
        assert_eq!(status_code("451 try later"), "4.0.0");
    }
}
