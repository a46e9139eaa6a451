//! The group commit at the end of each loop turn: every message whose
//! content ended this turn (SMTP sessions of [`InboundSessions`], imported
//! sendmail drops) is committed with one sync of `msg/`; then each is
//! scheduled in the queue and its session gets its 250 (or the error).
//!
//! [`InboundSessions`]: super::inbound::InboundSessions

use super::{mono_now, Daemon, Io};
use crate::smtp::reply::Reply;

impl Daemon {
    /// The group commit: one sync of `msg/` for every message that ended
    /// this turn, then the 250s.
    pub(super) fn commit_batch(&mut self) {
        let batch = self.inbound.take_batch();
        if batch.is_empty() && self.drop_commits.is_empty() {
            return;
        }
        let drops = std::mem::take(&mut self.drop_commits);
        let mut conns = Vec::with_capacity(batch.len());
        let mut files = Vec::with_capacity(batch.len() + drops.len());
        for ended in batch {
            conns.push((
                ended.conn,
                ended.what,
                ended.envelope.map(|e| (e, ended.file.size)),
            ));
            files.push(ended.file);
        }
        // Imported sendmail drops share the sync.
        let mut imported = Vec::with_capacity(drops.len());
        for (claimed, file, what) in drops {
            imported.push((claimed, what));
            files.push(file);
        }
        let mut results = self.spool.commit(files);
        let drop_results = results.split_off(conns.len().min(results.len()));
        for ((claimed, what), result) in imported.into_iter().zip(drop_results) {
            self.drop_committed(claimed, what, result);
        }
        let now = mono_now();
        let stopping = self.stopping.is_some();
        for ((id, what, env), result) in conns.into_iter().zip(results) {
            let answer = match result {
                Ok(qid) => {
                    log::info!("{qid}: {what}");
                    if let Some(env) = env {
                        self.remember_fresh(qid, env.0, env.1);
                    }
                    self.queue.schedule(qid, now);
                    Ok(qid)
                }
                Err(e) => {
                    log::error!("commit failed: {e}");
                    Err(Reply::from(&e))
                }
            };
            self.inbound.committed(&mut io!(self), id, answer, stopping);
        }
    }
}
