//! The queue runner: a timer of the loop that takes due messages, delivers
//! local recipients at once, hands remote ones to the outbound machinery,
//! and settles each message when every part of its attempt is back:
//! remove it, bounce it (RFC 3464, once, listing every failed recipient),
//! or reschedule it on the pure retry schedule.

use std::collections::HashMap;

use super::{unix_now, Daemon};
use crate::bounce::{
    build_bounce, header_block, rfc5322_date, Action, BounceInput, FailedRecipient,
};
use crate::delivery::local::{Format, LocalDelivery, LocalError};
use crate::delivery::{route, Route};
use crate::outbound::{Job, Outcome};
use crate::queue::{is_expired, next_attempt};
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
}

/// How often held mail is looked at again (a flush or a reload that turns
/// `hold_outbound` off releases it at once).
pub const HELD_RECHECK: u64 = 300;

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
    pub(super) fn run_queue(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        let now = unix_now();
        for _ in 0..MESSAGES_PER_TURN {
            // Memory must not grow with the queue: while outbound jobs wait
            // for connection slots, due messages stay in the queue index.
            if self.outbound.backlog() >= OUTBOUND_BACKLOG {
                return;
            }
            match self.queue.pop_due(now) {
                Some(id) => self.attempt(id, now),
                None => {
                    self.flushing = false;
                    return;
                }
            }
        }
    }

    pub(super) fn remember_fresh(&mut self, id: QueueId, env: StoredEnvelope, size: u64) {
        if self.fresh.len() < super::FRESH_CACHE {
            self.fresh.insert(id, (env, size));
        }
    }

    fn attempt(&mut self, id: QueueId, now: u64) {
        let cached = self.fresh.remove(&id);
        let content_size = cached.as_ref().map(|(_, size)| *size);
        let loaded = match cached {
            Some((env, _)) => {
                let n = env.recipients.len();
                Ok((env, vec![RcptState::default(); n], 0))
            }
            None => self.spool.load(id),
        };
        let (env, mut states, attempts) = match loaded {
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
        let mut tried = false;
        let mut remote: HashMap<String, Vec<(usize, String)>> = HashMap::new();
        for (i, rcpt) in env.recipients.iter().enumerate() {
            if states[i].status.is_final() {
                continue;
            }
            let is_local = |d: &str| self.cfg.is_local_domain(d);
            match route(&rcpt.address, &is_local) {
                Route::Local(user) => {
                    tried = true;
                    states[i] = self.deliver_local(&local, id, &env, rcpt, &user, now);
                }
                Route::Remote(domain) => {
                    let key = if self.cfg.smarthost.is_empty() {
                        domain
                    } else {
                        String::new()
                    };
                    remote
                        .entry(key)
                        .or_default()
                        .push((i, rcpt.address.clone()));
                }
            }
        }
        let failed_before = states
            .iter()
            .map(|s| s.status == RcptStatus::Failed)
            .collect();
        let loaded = states.clone();
        let mut flight = InFlight {
            loaded,
            held: false,
            env,
            states,
            attempts,
            outstanding: 0,
            tried,
            failed_before,
        };
        if !remote.is_empty() {
            if self.cfg.hold_outbound && !self.flushing {
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
        user: &str,
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
                .map_or("", |r| r.address.as_str());
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
        let now = unix_now();
        let attempts = flight.attempts + u32::from(flight.tried);
        let open = flight.states.iter().any(|s| !s.status.is_final());
        if open && is_expired(flight.env.arrival, now, self.cfg.max_queue_time) {
            for st in flight.states.iter_mut().filter(|s| !s.status.is_final()) {
                let last = std::mem::take(&mut st.reply);
                st.status = RcptStatus::Failed;
                st.reply = format!(
                    "4.4.7 message expired after {}s in the queue; last error: {last}",
                    self.cfg.max_queue_time.as_secs()
                );
            }
            log::warn!("{id}: expired after {} attempt(s)", attempts);
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
            log::info!("{id}: removed");
            return;
        }
        if flight.states != flight.loaded || attempts != flight.attempts {
            if let Err(e) = self.spool.save_state(id, &flight.states, attempts) {
                log::error!("{id}: cannot save delivery state: {e}");
            }
        }
        let due = if flight.held && !flight.tried {
            now + HELD_RECHECK
        } else {
            next_attempt(flight.env.arrival, attempts, &self.cfg.retry_schedule).max(now + 1)
        };
        self.queue.schedule(id, due);
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
                address: r.address.clone(),
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
            recipients: vec![Recipient {
                address: flight.env.sender.clone(),
                original: flight.env.sender.clone(),
            }],
            client: format!("{} [local]", self.cfg.hostname),
            eight_bit: false,
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
                        self.queue.schedule(bid, now);
                    }
                    _ => log::error!("{id}: could not queue the bounce {bid}"),
                }
            }
            Err(e) => log::error!("{id}: could not create the bounce: {e}"),
        }
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
            && matches!(p[0], "2" | "4" | "5")
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
