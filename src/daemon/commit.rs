//! The group commit at the end of each loop turn: every message whose
//! content ended this turn (SMTP sessions of [`InboundSessions`], imported
//! sendmail drops) is committed with one sync of `msg/`; then each is
//! scheduled in the queue and its session gets its 250 (or the error).
//!
//! [`InboundSessions`]: super::inbound::InboundSessions

use std::io;

use super::{Daemon, Io};
use crate::reactor::SockId;
use crate::smtp::reply::Reply;
use crate::spool::{Incoming, QueueId, StoredEnvelope};

impl Daemon {
    /// The group commit: one sync of `msg/` for every message that ended
    /// this turn, then the 250s.
    pub(super) fn commit_batch(&mut self) {
        let mut batch = self.inbound.take_batch();
        let mut drops = self.drops.take_commits();
        if !drops.is_empty() {
            if let Err(e) = self.spool.sync_drop_claims() {
                // Committed with a claim that may not survive a power loss,
                // a drop could be imported twice: left claimed instead, the
                // next scan imports it again (nothing was acknowledged).
                log::warn!(
                    "cannot sync drop/ ({e}); {} drop(s) kept for the next scan",
                    drops.len()
                );
                for d in drops.drain(..) {
                    self.spool.discard(d.file);
                }
            }
        }
        if batch.is_empty() && drops.is_empty() {
            self.inbound.return_batch(batch);
            return;
        }
        let Buffers {
            mut conns,
            mut files,
            mut results,
        } = std::mem::take(&mut self.commit_bufs);
        for ended in batch.drain(..) {
            conns.push((
                ended.conn,
                ended.what,
                ended.envelope.map(|e| (e, ended.file.size)),
            ));
            files.push(ended.file);
        }
        self.inbound.return_batch(batch);
        // Imported sendmail drops share the sync.
        let mut imported = Vec::with_capacity(drops.len());
        for d in drops {
            imported.push((d.claimed, d.what));
            files.push(d.file);
        }
        self.spool.commit_into(&mut files, &mut results);
        let drop_results = results.split_off(conns.len().min(results.len()));
        for ((claimed, what), result) in imported.into_iter().zip(drop_results) {
            if let Some(id) = super::drop::committed(&mut io!(self), &claimed, &what, result) {
                self.runner.schedule_new(id);
            }
        }
        let stopping = self.stopping.is_some();
        for ((id, what, env), result) in conns.drain(..).zip(results.drain(..)) {
            let answer = match result {
                Ok(qid) => {
                    log::info!("{qid}: {what}");
                    if let Some(env) = env {
                        self.runner.remember_fresh(qid, env.0, env.1);
                    }
                    self.runner.schedule_new(qid);
                    Ok(qid)
                }
                Err(e) => {
                    log::error!("commit failed: {e}");
                    Err(Reply::from(&e))
                }
            };
            self.inbound.committed(&mut io!(self), id, answer, stopping);
        }
        self.commit_bufs = Buffers {
            conns,
            files,
            results,
        };
    }
}

/// A connection's message in the commit: its session, log text, and the
/// envelope (with the content size) for the runner's fresh cache.
type Waiting = (SockId, String, Option<(StoredEnvelope, u64)>);

/// The group commit's buffers, kept by the daemon so a turn's commit
/// allocates none.
#[derive(Default)]
pub(super) struct Buffers {
    conns: Vec<Waiting>,
    files: Vec<Incoming>,
    results: Vec<io::Result<QueueId>>,
}
