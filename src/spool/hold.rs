//! Per-message hold markers, the spool lock and the control socket's path.
//!
//! A message is on hold while `hold/ID` exists (an empty file): the daemon
//! never attempts it until `tern queue release ID` removes the marker. A
//! marker is its own file, so holding and releasing never rewrite the
//! message or its state file. Time on hold does not count towards the
//! queue age (an administrator's hold must not make mail expire; the age
//! counts only while the queue runner has the message).
//!
//! The spool lock is an exclusive `flock(2)` on `SPOOL/lock`, held by the
//! daemon for its whole life and by a `tern queue` command that changes the
//! spool while no daemon runs: so exactly one process writes the queue.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use super::{QueueId, Spool};

/// The lock file's name in the spool directory.
pub const LOCK_NAME: &str = "lock";

/// The spool lock, released when dropped (the descriptor closes).
pub struct SpoolLock {
    _file: File,
}

impl Spool {
    /// Whether `msg/ID` exists (a committed message).
    pub fn exists(&self, id: QueueId) -> bool {
        fs::symlink_metadata(self.path("msg", id)).is_ok_and(|m| m.is_file())
    }

    /// Puts a committed message on hold (idempotent). `NotFound` if there
    /// is no such message.
    pub fn hold(&self, id: QueueId) -> io::Result<()> {
        if !self.exists(id) {
            return Err(io::ErrorKind::NotFound.into());
        }
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.path("hold", id))?;
        if self.sync {
            File::open(self.root.join("hold"))?.sync_all()?;
        }
        Ok(())
    }

    /// Takes a message off hold; returns whether it was held.
    pub fn release(&self, id: QueueId) -> io::Result<bool> {
        match self.with_path("hold", id, |p| fs::remove_file(p)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub fn is_held(&self, id: QueueId) -> bool {
        fs::symlink_metadata(self.path("hold", id)).is_ok()
    }

    /// The IDs with a hold marker.
    pub fn held(&self) -> io::Result<Vec<QueueId>> {
        let mut ids: Vec<QueueId> = fs::read_dir(self.root.join("hold"))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Recovery: a marker whose message is gone (a removal interrupted
    /// between `msg/ID` and `hold/ID`), or a name that is no queue ID, is
    /// deleted.
    pub(super) fn remove_orphan_holds(&self, committed: &[QueueId]) -> io::Result<()> {
        for entry in fs::read_dir(self.root.join("hold"))? {
            let entry = entry?;
            let orphan = match entry.file_name().to_str().map(str::parse::<QueueId>) {
                Some(Ok(id)) => committed.binary_search(&id).is_err(),
                _ => true,
            };
            if orphan {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// The control socket's path (see `control`).
    pub fn control_path(&self) -> PathBuf {
        self.root.join(crate::control::SOCKET_NAME)
    }

    /// Takes the spool lock without waiting: `Ok(None)` when another
    /// process holds it.
    pub fn try_lock(&self) -> io::Result<Option<SpoolLock>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(self.root.join(LOCK_NAME))?;
        // SAFETY: flock(2) on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Some(SpoolLock { _file: file }));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spool(name: &str) -> (PathBuf, Spool) {
        let dir = std::env::temp_dir().join(format!("tern-hold-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let s = Spool::open(&dir, false).unwrap();
        (dir, s)
    }

    fn commit_one(s: &mut Spool) -> QueueId {
        use crate::spool::StoredEnvelope;
        let env = StoredEnvelope {
            id: QueueId(0),
            arrival: 1_800_000_000,
            sender: "a@b.test".into(),
            recipients: vec![crate::spool::envelope::Recipient {
                dest: crate::delivery::Destination::Remote(
                    crate::smtp::address::Address::parse_mailbox("x@y.test").unwrap(),
                ),
                original: "x@y.test".into(),
                dsn: Default::default(),
            }],
            client: "test".into(),
            origin: crate::rewrite::SenderOrigin::Other,
            eight_bit: false,
            smtputf8: false,
            requiretls: false,
            dsn: Default::default(),
            body_offset: 0,
        };
        let mut inc = s.create(&env).unwrap();
        inc.write(b"Subject: x\r\n\r\nbody\r\n").unwrap();
        s.commit(vec![inc]).pop().unwrap().unwrap()
    }

    #[test]
    fn hold_release_and_removal_of_the_marker() {
        let (dir, mut s) = spool("marker");
        let id = commit_one(&mut s);
        assert!(!s.is_held(id));
        assert_eq!(
            s.hold(QueueId(id.0 + 1)).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        s.hold(id).unwrap();
        s.hold(id).unwrap(); // idempotent
        assert!(s.is_held(id));
        assert_eq!(s.held().unwrap(), vec![id]);
        assert!(s.release(id).unwrap());
        assert!(!s.release(id).unwrap());
        assert!(!s.is_held(id));
        // Removing a held message removes its marker.
        s.hold(id).unwrap();
        s.remove(id).unwrap();
        assert!(!s.exists(id) && !s.is_held(id));
        // An orphan marker (and junk) is removed by recovery.
        let id2 = commit_one(&mut s);
        s.hold(id2).unwrap();
        fs::write(dir.join("hold").join(id.text().as_str()), b"").unwrap();
        fs::write(dir.join("hold").join("junk"), b"").unwrap();
        assert_eq!(s.recover().unwrap(), vec![id2]);
        assert_eq!(s.held().unwrap(), vec![id2]);
        assert!(!dir.join("hold").join("junk").exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_spool_lock_is_exclusive() {
        let (dir, s) = spool("lock");
        let first = s.try_lock().unwrap().expect("free");
        assert!(s.try_lock().unwrap().is_none());
        drop(first);
        assert!(s.try_lock().unwrap().is_some());
        let _ = fs::remove_dir_all(&dir);
    }
}
