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
pub const WRITEBACK_STEP: u64 = 256 * 1024;

/// Where writeback of one file stands.
pub struct Writeback {
    /// Writeback was started up to here...
    started: u64,
    /// ...and waited for up to here.
    waited: u64,
}

impl Writeback {
    /// For a file whose octets before `from` are not ours to flush.
    pub fn new(from: u64) -> Writeback {
        Writeback {
            started: from,
            waited: from,
        }
    }

    /// Octets up to `end` are written: wait for the range started last
    /// time, start the new one.
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
        range(
            self.waited,
            self.started,
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER,
        );
        range(self.started, end, libc::SYNC_FILE_RANGE_WRITE);
        self.waited = self.started;
        self.started = end.max(self.started);
    }

    /// Where the next range starts.
    pub fn started(&self) -> u64 {
        self.started
    }
}
