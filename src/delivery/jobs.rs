//! The local delivery queue: bounded work per loop turn.
//!
//! Copying a 10 MB message into 50 mailboxes in one turn froze every
//! other session for 653 ms. Here local deliveries are jobs
//! ([`LocalJob`]) that wait in a FIFO; each turn moves at most
//! [`LOCAL_BYTES_PER_TURN`] octets (starting a job counts as
//! [`LOCAL_JOB_START_COST`]), keeping the open mailbox, the spool file and
//! their offsets in the job between turns, like the outbound body pump.
//!
//! Syncs are grouped (a group commit, as the spool's): every job that
//! finished writing in a turn (at most [`LOCAL_SYNC_GROUP`]) has its data
//! made durable in the next turn by one `fsync` (one job) or one
//! `syncfs(2)` per file system (several); in the turn after that each is
//! published (Maildir `tmp/` → `new/`), the new directory entries are made
//! durable the same way, and only then is each reported delivered. The
//! order of durability is the one a single delivery keeps (data, then
//! entry, then "delivered"); a turn that syncs moves no data, so it waits
//! for one sync at most. A job that fails at any step is dropped, which
//! undoes its write.
//!
//! The queue is generic over the caller's task (what to deliver, and to
//! whom the outcome goes); the caller opens the job when the task reaches
//! the front (`start`), so a waiting task holds no file.

use std::collections::VecDeque;
use std::fs::File;

use super::local::LocalJob;
use super::outcome::Reason;

/// Octets moved into mailboxes per loop turn, over all jobs (the outbound
/// body pump moves `BODY_CHUNK` per socket event in the same spirit).
/// With `spool_sync` a turn also waits for the writeback of an earlier
/// step (`writeback`), so this is what the disk must take per turn:
/// 128 KiB kept the worst NOOP round trip under 20 ms on a shared VM disk
/// (`tests/bench/stall.py`; 256 KiB gave up to 39 ms there).
pub const LOCAL_BYTES_PER_TURN: usize = 128 * 1024;
/// What starting a job (directory and file opens, a lock) counts against
/// the turn's budget: at most 64 jobs start in one turn.
pub const LOCAL_JOB_START_COST: usize = 4 * 1024;
/// Jobs whose writes may complete in one turn and share its syncs (each
/// holds its files open until the end of the turn).
pub const LOCAL_SYNC_GROUP: usize = 64;

/// A finished task: where its message went, or why not.
pub type Done<T> = (T, Result<String, Reason>);

/// The waiting tasks and the job in progress.
pub struct LocalQueue<T> {
    waiting: VecDeque<T>,
    current: Option<(T, LocalJob)>,
    /// Written whole, data not yet synced (with `sync`).
    written: Vec<(T, LocalJob)>,
    /// Data durable, to publish and sync the entries of.
    synced: Vec<(T, LocalJob)>,
}

impl<T> Default for LocalQueue<T> {
    fn default() -> Self {
        LocalQueue {
            waiting: VecDeque::new(),
            current: None,
            written: Vec::new(),
            synced: Vec::new(),
        }
    }
}

impl<T> LocalQueue<T> {
    pub fn push(&mut self, task: T) {
        self.waiting.push_back(task);
    }

    /// Tasks not finished (waiting or in progress).
    pub fn len(&self) -> usize {
        self.waiting.len()
            + usize::from(self.current.is_some())
            + self.written.len()
            + self.synced.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One turn with the standard budget; see [`turn_with`](Self::turn_with).
    pub fn turn(
        &mut self,
        sync: bool,
        start: &mut dyn FnMut(&T) -> Result<LocalJob, Reason>,
    ) -> Vec<Done<T>> {
        self.turn_with(LOCAL_BYTES_PER_TURN, sync, start)
    }

    /// One turn's work, and one kind of it: with `sync`, a group whose
    /// data is durable is published and its entries synced; else a group
    /// written whole has its data synced; else up to `budget` octets are
    /// moved (about: a step may end one buffer past it), and without
    /// `sync` what was written whole is published at once. So a turn
    /// waits for at most one sync (a data `fsync` alone took up to 39 ms
    /// on a busy VM disk; with the entry sync in the same turn, 49 ms).
    /// Returns the tasks that are done, with where the message went or
    /// why not.
    pub fn turn_with(
        &mut self,
        mut budget: usize,
        sync: bool,
        start: &mut dyn FnMut(&T) -> Result<LocalJob, Reason>,
    ) -> Vec<Done<T>> {
        let mut done = Vec::new();
        if sync && !self.synced.is_empty() {
            let synced = std::mem::take(&mut self.synced);
            let published = publish(synced, &mut done);
            let (entries, mut rest): (Vec<_>, Vec<_>) = published
                .into_iter()
                .partition(|(_, job)| job.entry_needs_sync());
            rest.extend(sync_group(entries, &mut done, LocalJob::sync_entry));
            done.extend(rest.into_iter().map(|(task, job)| (task, Ok(job.finish()))));
            return done;
        }
        if sync && !self.written.is_empty() {
            let written = std::mem::take(&mut self.written);
            self.synced = sync_group(written, &mut done, LocalJob::sync_data);
            return done;
        }
        while budget > 0 && self.written.len() < LOCAL_SYNC_GROUP {
            let (task, mut job) = match self.current.take() {
                Some(running) => running,
                None => {
                    let Some(task) = self.waiting.pop_front() else {
                        break;
                    };
                    budget = budget.saturating_sub(LOCAL_JOB_START_COST).max(1);
                    match start(&task) {
                        Ok(job) => (task, job),
                        Err(e) => {
                            done.push((task, Err(e)));
                            continue;
                        }
                    }
                }
            };
            match job.pump(&mut budget) {
                Ok(true) => self.written.push((task, job)),
                Ok(false) => self.current = Some((task, job)),
                // Dropping the job undoes its write.
                Err(e) => done.push((task, Err(e))),
            }
        }
        if !sync {
            let written = std::mem::take(&mut self.written);
            let published = publish(written, &mut done);
            done.extend(
                published
                    .into_iter()
                    .map(|(task, job)| (task, Ok(job.finish()))),
            );
        }
        done
    }
}

/// Maildir `tmp/` → `new/` for each job; the failed ones go to `done`.
fn publish<T>(jobs: Vec<(T, LocalJob)>, done: &mut Vec<Done<T>>) -> Vec<(T, LocalJob)> {
    let mut published = Vec::with_capacity(jobs.len());
    for (task, mut job) in jobs {
        match job.publish() {
            Ok(()) => published.push((task, job)),
            Err(e) => done.push((task, Err(e))),
        }
    }
    published
}

/// Runs `one` for a single job, else one `syncfs` per file system of the
/// jobs' files (which covers every file and directory entry on it).
/// Returns the jobs that are now durable; the others go to `done` failed
/// (and are dropped, which undoes them).
fn sync_group<T>(
    jobs: Vec<(T, LocalJob)>,
    done: &mut Vec<Done<T>>,
    one: fn(&LocalJob) -> Result<(), Reason>,
) -> Vec<(T, LocalJob)> {
    let result = match jobs.as_slice() {
        [] => return jobs,
        [(_, job)] => one(job),
        several @ [(_, first), ..] => {
            sync_filesystems(several.iter().map(|(_, j)| j.file())).map_err(|e| first.error(e))
        }
    };
    match result {
        Ok(()) => jobs,
        Err(reason) => {
            for (task, _) in jobs {
                done.push((task, Err(reason.clone())));
            }
            Vec::new()
        }
    }
}

/// One `syncfs(2)` for each distinct file system among `files`.
fn sync_filesystems<'a>(files: impl Iterator<Item = &'a File>) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut seen: Vec<u64> = Vec::new();
    for file in files {
        let dev = crate::safe_fs::fstat(file.as_raw_fd())?.st_dev as u64;
        if !seen.contains(&dev) {
            seen.push(dev);
            crate::spool::syncfs_fd(file)?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::delivery::local::{Format, MailboxWriter};
    use crate::delivery::{maildir, mbox, Mailbox};
    use std::io::{self, Read};
    use std::path::{Path, PathBuf};

    use crate::test_dir::TempDir;

    /// Gives `data`, then fails once `fail_at` octets were read (if set).
    struct Source {
        data: Vec<u8>,
        pos: usize,
        fail_at: Option<usize>,
    }

    impl Read for Source {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.fail_at.is_some_and(|at| self.pos >= at) {
                return Err(io::Error::other("injected read error"));
            }
            let end = self.data.len().min(self.pos + out.len());
            let end = self.fail_at.map_or(end, |at| end.min(at.max(self.pos + 1)));
            let n = end - self.pos;
            out[..n].copy_from_slice(&self.data[self.pos..end]);
            self.pos = end;
            Ok(n)
        }
    }

    /// A message with CRLF, `From ` lines, a long line and no final CRLF.
    fn message(size: usize) -> Vec<u8> {
        let mut m = b"Subject: big\r\n\r\n".to_vec();
        let mut i = 0;
        while m.len() < size {
            match i % 5 {
                0 => m.extend_from_slice(b"From the start of a line\r\n"),
                1 => m.extend_from_slice(b">From quoted\r\n"),
                2 => m.extend_from_slice(&[b'y'; 20_000]),
                3 => m.extend_from_slice(b"\r\nbare\rCR\r\n"),
                _ => m.extend_from_slice(format!("line {i}\r\n").as_bytes()),
            }
            i += 1;
        }
        m.extend_from_slice(b"no final line end");
        m
    }

    fn local(dir: &Path, format: Format, sync: bool) -> MailboxWriter {
        MailboxWriter {
            mail_dir: dir.to_path_buf(),
            format,
            sync,
            hostname: "mx.test".to_string(),
        }
    }

    struct Task {
        user: &'static str,
        seq: u64,
        fail_at: Option<usize>,
    }

    /// Runs turns of `budget` until the queue is empty; the results and
    /// the number of turns.
    fn run(
        queue: &mut LocalQueue<Task>,
        ld: &MailboxWriter,
        data: &[u8],
        budget: usize,
        sync: bool,
    ) -> (Vec<Done<Task>>, usize) {
        let mut results = Vec::new();
        let mut turns = 0;
        while !queue.is_empty() {
            turns += 1;
            assert!(turns < 100_000, "no progress");
            results.extend(queue.turn_with(budget, sync, &mut |t: &Task| {
                let source = Source {
                    data: data.to_vec(),
                    pos: 0,
                    fail_at: t.fail_at,
                };
                ld.start(
                    &Mailbox::new(t.user).expect("name"),
                    "s@x.test",
                    "u@mx.test",
                    Box::new(source),
                    1_795_830_910,
                    t.seq,
                )
            }));
        }
        (results, turns)
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|d| d.map(|e| e.expect("entry").path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// What one uninterrupted delivery writes: the reference.
    fn one_shot(dir: &Path, format: Format, data: &[u8]) -> Vec<u8> {
        let header = b"Return-Path: <s@x.test>\nDelivered-To: u@mx.test\n".to_vec();
        let mut stream = io::Cursor::new(header).chain(data);
        match format {
            Format::Maildir => {
                let p = maildir::deliver_maildir(&dir.join("ref"), &mut stream, "ref", true)
                    .expect("reference");
                std::fs::read(p).expect("read")
            }
            Format::Mbox => {
                let p = dir.join("ref");
                mbox::deliver_mbox(&p, "s@x.test", 1_795_830_910, &mut stream, true)
                    .expect("reference");
                std::fs::read(p).expect("read")
            }
        }
    }

    #[test]
    fn resumed_jobs_write_byte_identical_mail() {
        let data = message(300_000);
        for format in [Format::Maildir, Format::Mbox] {
            let tmp = TempDir::new(&format!("resume-{format:?}"));
            let want = one_shot(&tmp.0, format, &data);
            let ld = local(&tmp.0, format, true);
            for budget in [1, 4097, 65_536, LOCAL_BYTES_PER_TURN] {
                let user = "alice";
                let _ = std::fs::remove_dir_all(tmp.0.join(user));
                let _ = std::fs::remove_file(tmp.0.join(user));
                let mut queue = LocalQueue::default();
                queue.push(Task {
                    user,
                    seq: 1,
                    fail_at: None,
                });
                let (results, turns) = run(&mut queue, &ld, &data, budget, true);
                assert_eq!(results.len(), 1);
                let place = results[0].1.as_ref().expect("delivered");
                assert!(turns > 1, "{format:?} budget {budget}: one turn");
                let got = match format {
                    Format::Maildir => {
                        let new = files(&tmp.0.join(user).join("new"));
                        assert_eq!(new.len(), 1);
                        assert_eq!(*place, format!("maildir {}", new[0].display()));
                        assert!(files(&tmp.0.join(user).join("tmp")).is_empty());
                        std::fs::read(&new[0]).expect("read")
                    }
                    Format::Mbox => std::fs::read(tmp.0.join(user)).expect("read"),
                };
                assert!(got == want, "{format:?} budget {budget}: content differs");
            }
        }
    }

    #[test]
    fn a_turn_moves_about_its_budget_and_nothing_shows_before_the_end() {
        let tmp = TempDir::new("bound");
        let data = message(3 * LOCAL_BYTES_PER_TURN);
        let ld = local(&tmp.0, Format::Maildir, false);
        let mut queue = LocalQueue::default();
        queue.push(Task {
            user: "bob",
            seq: 1,
            fail_at: None,
        });
        let start = &mut |t: &Task| {
            ld.start(
                &Mailbox::new(t.user).expect("name"),
                "s@x.test",
                "u@mx.test",
                Box::new(Source {
                    data: data.clone(),
                    pos: 0,
                    fail_at: None,
                }),
                1,
                t.seq,
            )
        };
        let mut sizes = Vec::new();
        while !queue.is_empty() {
            let done = queue.turn(false, start);
            let tmp_files = files(&tmp.0.join("bob").join("tmp"));
            if done.is_empty() {
                assert!(files(&tmp.0.join("bob").join("new")).is_empty());
                sizes.push(std::fs::metadata(&tmp_files[0]).expect("stat").len());
            } else {
                assert!(tmp_files.is_empty());
                assert_eq!(files(&tmp.0.join("bob").join("new")).len(), 1);
            }
        }
        assert!(sizes.len() >= 2, "{sizes:?}");
        let mut last = 0;
        for size in sizes {
            let step = (size - last) as usize;
            assert!(
                step <= LOCAL_BYTES_PER_TURN + maildir::MAILDIR_COPY_BUFFER,
                "{step}"
            );
            last = size;
        }
    }

    #[test]
    fn an_error_mid_way_leaves_no_partial_mail() {
        let data = message(200_000);
        // Maildir: nothing in new/, the tmp/ file removed.
        let tmp = TempDir::new("fail-maildir");
        let ld = local(&tmp.0, Format::Maildir, true);
        let mut queue = LocalQueue::default();
        queue.push(Task {
            user: "carol",
            seq: 1,
            fail_at: Some(150_000),
        });
        queue.push(Task {
            user: "dave",
            seq: 2,
            fail_at: None,
        });
        let (results, turns) = run(&mut queue, &ld, &data, 10_000, true);
        assert!(turns > 10);
        let carol = results
            .iter()
            .find(|(t, _)| t.user == "carol")
            .expect("carol");
        match &carol.1 {
            Err(reason) => assert!(reason.text.contains("injected"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert!(files(&tmp.0.join("carol").join("new")).is_empty());
        assert!(files(&tmp.0.join("carol").join("tmp")).is_empty());
        // The next job is not affected.
        assert_eq!(files(&tmp.0.join("dave").join("new")).len(), 1);

        // mbox: truncated back to the old length.
        let tmp = TempDir::new("fail-mbox");
        let ld = local(&tmp.0, Format::Mbox, true);
        std::fs::write(
            tmp.0.join("erin"),
            b"From old Thu Jan  1 00:00:00 1970\nold\n\n",
        )
        .expect("write");
        let before = std::fs::read(tmp.0.join("erin")).expect("read");
        let mut queue = LocalQueue::default();
        queue.push(Task {
            user: "erin",
            seq: 1,
            fail_at: Some(150_000),
        });
        let (results, _) = run(&mut queue, &ld, &data, 10_000, true);
        assert!(results[0].1.is_err());
        assert_eq!(std::fs::read(tmp.0.join("erin")).expect("read"), before);
    }

    #[test]
    fn a_job_dropped_mid_way_undoes_its_write() {
        let data = message(200_000);
        for format in [Format::Maildir, Format::Mbox] {
            let tmp = TempDir::new(&format!("drop-{format:?}"));
            let ld = local(&tmp.0, format, false);
            let mut queue = LocalQueue::default();
            queue.push(Task {
                user: "frank",
                seq: 1,
                fail_at: None,
            });
            let done = queue.turn_with(10_000, false, &mut |t: &Task| {
                ld.start(
                    &Mailbox::new(t.user).expect("name"),
                    "s@x.test",
                    "u@mx.test",
                    Box::new(Source {
                        data: data.clone(),
                        pos: 0,
                        fail_at: None,
                    }),
                    1,
                    t.seq,
                )
            });
            assert!(done.is_empty() && queue.len() == 1);
            drop(queue); // a shutdown past its grace period
            match format {
                Format::Maildir => {
                    assert!(files(&tmp.0.join("frank").join("tmp")).is_empty());
                    assert!(files(&tmp.0.join("frank").join("new")).is_empty());
                }
                Format::Mbox => {
                    assert_eq!(
                        std::fs::metadata(tmp.0.join("frank")).expect("stat").len(),
                        0
                    )
                }
            }
        }
    }

    #[test]
    fn small_jobs_finish_together_with_one_group_sync() {
        let data = b"Subject: small\r\n\r\nhello\r\n".to_vec();
        for format in [Format::Maildir, Format::Mbox] {
            let tmp = TempDir::new(&format!("group-{format:?}"));
            let want = one_shot(&tmp.0, format, &data);
            let ld = local(&tmp.0, format, true);
            let users = ["u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8"];
            let mut queue = LocalQueue::default();
            for (i, user) in users.iter().enumerate() {
                queue.push(Task {
                    user,
                    seq: i as u64,
                    fail_at: None,
                });
            }
            let start = &mut |t: &Task| {
                ld.start(
                    &Mailbox::new(t.user).expect("name"),
                    "s@x.test",
                    "u@mx.test",
                    Box::new(Source {
                        data: data.clone(),
                        pos: 0,
                        fail_at: None,
                    }),
                    1_795_830_910,
                    t.seq,
                )
            };
            // Turn 1 writes all of them, turn 2 syncs their data (one
            // syncfs), turn 3 publishes them and syncs the entries.
            for turn in 1..=2 {
                assert!(queue.turn(true, start).is_empty(), "turn {turn}");
                assert_eq!(queue.len(), users.len());
                if format == Format::Maildir {
                    for user in users {
                        assert!(files(&tmp.0.join(user).join("new")).is_empty());
                        assert_eq!(files(&tmp.0.join(user).join("tmp")).len(), 1);
                    }
                }
            }
            let results = queue.turn(true, start);
            assert!(queue.is_empty());
            assert_eq!(results.len(), users.len());
            for (task, result) in &results {
                assert!(result.is_ok(), "{result:?}");
                let got = match format {
                    Format::Maildir => {
                        assert!(files(&tmp.0.join(task.user).join("tmp")).is_empty());
                        let new = files(&tmp.0.join(task.user).join("new"));
                        std::fs::read(&new[0]).expect("read")
                    }
                    Format::Mbox => std::fs::read(tmp.0.join(task.user)).expect("read"),
                };
                assert_eq!(got, want);
            }
        }
    }
}
