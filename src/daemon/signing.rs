//! DKIM signing of outbound jobs before they are given a connection slot
//! (see `dkim` for what is signed and why at delivery).
//!
//! A job submitted while `dkim_keys` has keys waits here; at most
//! [`MAX_SIGNING`] jobs have their spool file open at once, and each turn
//! of the loop moves at most [`SIGN_BYTES_PER_TURN`] octets in all through
//! their [`MessageSigner`]s, so a large message never holds the loop for a
//! whole file. A job whose `From:` domain has no key stops after its
//! header. A job that cannot be signed (unreadable file, oversized header)
//! goes out unsigned, logged: signing never keeps mail from leaving.

use std::collections::VecDeque;
use std::io::Read as _;

use crate::dkim::sign::{MessageSigner, Signed};
use crate::dkim::KeyMap;
use crate::outbound::Job;
use crate::spool::Spool;

/// Jobs whose spool file is open for signing at once.
pub const MAX_SIGNING: usize = 4;
/// Octets read for signing per loop turn, over all jobs.
pub const SIGN_BYTES_PER_TURN: usize = 128 * 1024;
/// Octets read per step.
const SIGN_CHUNK: usize = 16 * 1024;

struct Active {
    job: Job,
    file: crate::spool::Content,
    signer: MessageSigner,
}

#[derive(Default)]
pub struct Signing {
    keys: KeyMap,
    waiting: VecDeque<Job>,
    active: Vec<Active>,
    chunk: Vec<u8>,
}

impl Signing {
    pub fn new(keys: KeyMap) -> Signing {
        Signing {
            keys,
            ..Signing::default()
        }
    }

    /// On reload: the new keys (jobs in progress finish with the old).
    pub fn set_keys(&mut self, keys: KeyMap) {
        self.keys = keys;
    }

    /// Jobs are signed before they go.
    pub fn is_on(&self) -> bool {
        !self.keys.is_empty()
    }

    pub fn submit(&mut self, job: Job) {
        self.waiting.push_back(job);
    }

    /// Work is left for the next turn.
    pub fn is_busy(&self) -> bool {
        !self.waiting.is_empty() || !self.active.is_empty()
    }

    /// At shutdown: jobs not yet signed stay in the spool for the restart,
    /// like jobs waiting for a slot.
    pub fn clear(&mut self) {
        self.waiting.clear();
        self.active.clear();
    }

    /// One turn's work; returns the jobs ready to go (signed or not).
    /// `now`: Unix seconds for `t=` (`None`: the clock is not trusted).
    pub fn turn(&mut self, spool: &Spool, now: Option<u64>) -> Vec<Job> {
        let mut ready = Vec::new();
        while self.active.len() < MAX_SIGNING {
            let Some(job) = self.waiting.pop_front() else {
                break;
            };
            match spool.open_content(job.id) {
                Ok((file, _)) => {
                    let signer = MessageSigner::new(job.rewrite.clone(), job.eight_bit);
                    self.active.push(Active { job, file, signer });
                }
                Err(e) => {
                    log::warn!("{}: dkim: cannot read queue file: {e}; not signed", job.id);
                    ready.push(job);
                }
            }
        }
        if self.chunk.len() != SIGN_CHUNK {
            self.chunk.resize(SIGN_CHUNK, 0);
        }
        let mut budget = SIGN_BYTES_PER_TURN;
        let i = 0;
        while i < self.active.len() && budget > 0 {
            let Some(a) = self.active.get_mut(i) else {
                break;
            };
            let mut done = None;
            while budget > 0 {
                if let Some(early) = a.signer.early_result(&self.keys) {
                    done = Some(early);
                    break;
                }
                match a.file.read(&mut self.chunk) {
                    Ok(0) => break,
                    Ok(n) => {
                        a.signer.push(self.chunk.get(..n).unwrap_or_default());
                        budget = budget.saturating_sub(n);
                    }
                    Err(e) => {
                        done = Some(Signed::Failed(format!("reading queue file: {e}")));
                        break;
                    }
                }
            }
            if budget == 0 && done.is_none() {
                // Out of budget mid-file: this job goes on next turn.
                break;
            }
            let a = self.active.swap_remove(i);
            let signed = match done {
                Some(s) => s,
                None => a.signer.finish(&self.keys, now),
            };
            let mut job = a.job;
            match signed {
                Signed::Yes(sigs) => {
                    log::debug!("{}: dkim: signed", job.id);
                    job.dkim = Some(std::rc::Rc::new(sigs));
                }
                Signed::NoKey => {}
                Signed::Failed(why) => log::warn!("{}: dkim: not signed: {why}", job.id),
            }
            ready.push(job);
        }
        ready
    }
}
