//! Early writeback for large files that will be synced.
//!
//! An `fsync` of a 10 MB file written in one go held tern's loop for up to
//! 145 ms on an ext4 VM (seconds on router flash). [`Writeback`] starts the
//! kernel's writeback of each step's octets as soon as they are written
//! and waits for the previous step's, so the final sync has about one
//! step's worth left to do: the cost is spread over the turns that wrote
//! the data. Durability still comes from the `fsync`/`syncfs` alone; this
//! only moves work earlier (`sync_file_range(2)`, Linux; a failure only
//! means no early writeback, and the sync reports real I/O errors).

use std::fs::File;
use std::os::fd::AsRawFd;

/// Octets between two writeback kicks for a file written in small pieces
/// (a message being received).
pub const WRITEBACK_STEP: u64 = 128 * 1024;

/// Steps whose writeback may still run before a step waits for the
/// oldest: slack for the disk's jitter (a wait for the step just before
/// took up to 27 ms on a VM whose disk other work shared; two steps back
/// it is usually done).
pub const WRITEBACK_LAG: usize = 2;

/// Where writeback of one file stands.
pub struct Writeback {
    /// Writeback was started up to here...
    started: u64,
    /// ...and waited for up to here.
    waited: u64,
    /// Ends of the steps started and not yet waited for, oldest first.
    in_flight: std::collections::VecDeque<u64>,
}

impl Writeback {
    /// For a file whose octets before `from` are not ours to flush.
    pub fn new(from: u64) -> Writeback {
        Writeback {
            started: from,
            waited: from,
            // Allocated at the first step: a small message never takes one.
            in_flight: std::collections::VecDeque::new(),
        }
    }

    /// Octets up to `end` are written: start their writeback, and wait
    /// for the oldest step's once more than [`WRITEBACK_LAG`] run.
    pub fn advance(&mut self, file: &File, end: u64) {
        let range = |from: u64, to: u64, flags| {
            let len = to.saturating_sub(from);
            if len == 0 {
                return;
            }
            // SAFETY: sync_file_range(2) on a descriptor `file` owns; the
            // result is ignored on purpose (see the module doc).
            unsafe {
                libc::sync_file_range(
                    file.as_raw_fd(),
                    from as libc::off64_t,
                    len as libc::off64_t,
                    flags,
                )
            };
        };
        if end > self.started {
            range(self.started, end, libc::SYNC_FILE_RANGE_WRITE);
            self.in_flight.push_back(end);
            self.started = end;
        }
        while self.in_flight.len() > WRITEBACK_LAG {
            let Some(upto) = self.in_flight.pop_front() else {
                break;
            };
            range(
                self.waited,
                upto,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            );
            self.waited = upto;
        }
    }

    /// Where the next range starts.
    pub fn started(&self) -> u64 {
        self.started
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn waits_lag_behind_what_was_started() {
        let path = std::env::temp_dir().join(format!("tern-writeback-{}", std::process::id()));
        let mut file = File::create(&path).expect("create");
        let mut wb = Writeback::new(0);
        let chunk = vec![b'x'; 4096];
        for step in 1..=10u64 {
            file.write_all(&chunk).expect("write");
            wb.advance(&file, step * 4096);
            assert_eq!(wb.started(), step * 4096);
            assert!(wb.in_flight.len() <= WRITEBACK_LAG);
            let lag = step.saturating_sub(WRITEBACK_LAG as u64) * 4096;
            assert_eq!(wb.waited, lag, "step {step}");
        }
        // Nothing written since: nothing new is started.
        wb.advance(&file, 10 * 4096);
        assert_eq!(wb.started(), 10 * 4096);
        file.sync_all().expect("sync");
        assert_eq!(std::fs::read(&path).expect("read").len(), 10 * 4096);
        let _ = std::fs::remove_file(&path);
    }
}
