//! Free space in the spool (SPEC `min_free_space`): below the limit new mail
//! is refused with `452 4.3.1` (at MAIL, and again when DATA starts) and
//! `sendmail` exits `EX_TEMPFAIL`, so that state updates and bounces of mail
//! already queued still fit.
//!
//! Free space is `statvfs(2)`'s `f_bavail * f_frsize` (what an unprivileged
//! writer may use). The daemon asks [`SpaceGate`], which calls `statvfs` at
//! most once per [`SPACE_RECHECK`] or per [`SPACE_RECHECK_EVERY`] questions,
//! whichever comes first, so the check costs nothing on the hot path and a
//! freed disk is noticed within a second. The limit is a margin, not the
//! guarantee: a message larger than the free space still fails while it is
//! written (ENOSPC), which gives the same `452 4.3.1` and discards the file.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// The longest a free-space verdict is reused.
pub const SPACE_RECHECK: Duration = Duration::from_secs(1);
/// Questions answered from one `statvfs` at most.
pub const SPACE_RECHECK_EVERY: u32 = 64;

/// Bytes an unprivileged writer may still use on the file system of `path`.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: statvfs(3) writes into a zeroed struct we own; `c` is a valid
    // NUL-terminated string for the duration of the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between libcs
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Whether the spool has at least `min` bytes free (`min == 0`: always).
/// An error of `statvfs` itself does not refuse mail: the writes would
/// report a real problem.
pub fn has_room(path: &Path, min: u64) -> bool {
    min == 0 || free_bytes(path).map_or(true, |free| free >= min)
}

/// A cached [`has_room`] (see the module doc).
#[derive(Debug, Default)]
pub struct SpaceGate {
    checked: Option<Instant>,
    questions: u32,
    room: bool,
}

impl SpaceGate {
    pub fn new() -> SpaceGate {
        SpaceGate::default()
    }

    /// True if new mail may come in; logs when the verdict changes.
    pub fn room(&mut self, spool: &Path, min: u64, now: Instant) -> bool {
        if min == 0 {
            return true;
        }
        self.questions += 1;
        let fresh = self
            .checked
            .is_some_and(|t| now.saturating_duration_since(t) < SPACE_RECHECK)
            && self.questions <= SPACE_RECHECK_EVERY;
        if !fresh {
            let room = has_room(spool, min);
            if room != self.room || self.checked.is_none() {
                if room {
                    if self.checked.is_some() {
                        log::info!("spool has room again (min_free_space {min} bytes)");
                    }
                } else {
                    log::warn!(
                        "spool {} below min_free_space ({min} bytes): new mail gets 452 4.3.1",
                        spool.display()
                    );
                }
            }
            self.room = room;
            self.checked = Some(now);
            self.questions = 0;
        }
        self.room
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_of_the_temp_dir() {
        let dir = std::env::temp_dir();
        assert!(free_bytes(&dir).unwrap() > 0);
        assert!(has_room(&dir, 0));
        assert!(has_room(&dir, 1));
        assert!(!has_room(&dir, u64::MAX));
        assert!(free_bytes(Path::new("/nonexistent/tern")).is_err());
        // A failing statvfs does not refuse mail.
        assert!(has_room(Path::new("/nonexistent/tern"), u64::MAX));
    }

    #[test]
    fn gate_caches_for_a_second_or_some_questions() {
        let dir = std::env::temp_dir();
        let mut g = SpaceGate::new();
        let t0 = Instant::now();
        assert!(!g.room(&dir, u64::MAX, t0));
        // Cached: a lower limit is not seen until the next check...
        assert!(!g.room(&dir, 1, t0));
        // ...which comes after SPACE_RECHECK...
        assert!(g.room(&dir, 1, t0 + SPACE_RECHECK));
        let t1 = t0 + SPACE_RECHECK;
        // ...or after SPACE_RECHECK_EVERY questions.
        for _ in 0..SPACE_RECHECK_EVERY {
            assert!(g.room(&dir, u64::MAX, t1));
        }
        assert!(!g.room(&dir, u64::MAX, t1));
        // Zero switches the check off.
        assert!(g.room(&dir, 0, t1));
    }
}
