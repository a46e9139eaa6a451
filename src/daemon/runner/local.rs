//! Driving local deliveries: the runner queues one [`LocalTask`] per local
//! recipient of an attempt; each loop turn moves a bounded amount of them
//! (`delivery::jobs`) and records the outcomes in the message's attempt,
//! settling it when the last part is back. The loop comes back at once
//! (zero poll timeout) while tasks remain, and sleeps as before when none
//! do.

use super::QueueRunner;
use crate::daemon::Io;
use crate::delivery::jobs::LocalQueue;
use crate::delivery::local::{Format, MailboxWriter};
use crate::delivery::outcome::{self, Outcome, Reason};
use crate::delivery::Mailbox;
use crate::spool::{QueueId, RcptState};

/// Local tasks queued before the runner stops taking due messages (each
/// holds a few short strings; the attempt holds its envelope).
pub const LOCAL_BACKLOG: usize = 1024;

/// One local recipient of one attempt.
pub struct LocalTask {
    pub id: QueueId,
    /// The recipient's index in the envelope.
    pub index: usize,
    pub mailbox: Mailbox,
    pub sender: String,
    pub original: String,
    pub arrival: u64,
    /// Wall clock at the attempt (Maildir name, mbox `From ` line).
    pub now: u64,
    /// Sequence for the Maildir unique name.
    pub seq: u64,
}

pub type LocalJobs = LocalQueue<LocalTask>;

impl QueueRunner {
    /// One turn of local delivery; true while tasks remain (the loop must
    /// not sleep).
    pub fn run_local_jobs(&mut self, io: &mut Io) -> bool {
        if self.local_jobs.is_empty() {
            return false;
        }
        let local = MailboxWriter {
            mail_dir: io.cfg.mail_dir.clone(),
            format: match io.cfg.local_delivery {
                crate::config::LocalDelivery::Mbox => Format::Mbox,
                // Lmtp: only tasks queued before a reload switched to it.
                crate::config::LocalDelivery::Maildir | crate::config::LocalDelivery::Lmtp => {
                    Format::Maildir
                }
            },
            sync: io.cfg.spool_sync,
            hostname: io.cfg.hostname.clone(),
        };
        let spool = &io.spool;
        let done = self.local_jobs.turn(io.cfg.spool_sync, &mut |t| {
            let (content, _) = spool
                .open_content(t.id)
                .map_err(|e| outcome::queue_file_unreadable(&outcome::io_words(&e)))?;
            local.start(
                &t.mailbox,
                &t.sender,
                &t.original,
                Box::new(content),
                t.now,
                t.seq,
            )
        });
        for (task, result) in done {
            let state = local_state(&task, result);
            self.local_done(io, task.id, task.index, state);
        }
        !self.local_jobs.is_empty()
    }

    /// At exit with attempts still in flight (the shutdown grace ran out):
    /// records what finished, so a recipient whose copy is already in its
    /// mailbox is not delivered again after the restart. Unfinished local
    /// jobs were undone; their recipients keep their old state.
    pub fn save_unsettled(&mut self, io: &mut Io) {
        let mono = crate::daemon::mono_now();
        for (id, flight) in &self.in_flight {
            if flight.states == flight.loaded {
                continue;
            }
            let age = self.queue.age(*id, flight.stored_age, mono);
            if let Err(e) = io
                .spool
                .save_state(*id, &flight.states, flight.attempts, age)
            {
                log::error!("{id}: cannot save delivery state: {e}");
            }
        }
    }

    fn local_done(&mut self, io: &mut Io, id: QueueId, index: usize, state: RcptState) {
        let Some(flight) = self.in_flight.get_mut(&id) else {
            return;
        };
        if let Some(st) = flight.states.get_mut(index) {
            *st = state;
        }
        flight.outstanding = flight.outstanding.saturating_sub(1);
        if flight.outstanding == 0 {
            if let Some(flight) = self.in_flight.remove(&id) {
                self.settle(io, id, flight);
            }
        }
    }
}

/// Logs a local outcome and makes it the recipient's state.
fn local_state(t: &LocalTask, result: Result<String, Reason>) -> RcptState {
    let (id, user) = (t.id, &t.mailbox);
    let delay = t.now.saturating_sub(t.arrival);
    match result {
        Ok(place) => {
            log::info!(
                "{id}: to=<{}> mailbox={user} relay=local delay={delay} dsn=2.0.0 status=sent ({place})",
                t.original
            );
            RcptState::from_outcome(Outcome::Delivered { relay: place })
        }
        Err(reason) => {
            let o = Outcome::from_reason(reason);
            log::warn!(
                "{id}: to=<{}> mailbox={user} relay=local delay={delay} {}",
                t.original,
                super::Fields(&o)
            );
            RcptState::from_outcome(o)
        }
    }
}
