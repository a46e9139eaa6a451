//! Local delivery by appending to an mbox file (`local_delivery = mbox`).
//!
//! Unlike Maildir, an mbox is one file shared with the mail reader, so the
//! append must be locked and must be undone if it fails half-way: a partial
//! message would corrupt every later one (dma `local.c` does the same).
//!
//! Format: mboxrd (see the "mbox" format notes by Hall, and RFC 4155 for
//! `application/mbox`): each message starts with
//! `From <sender> <asctime date>` (UTC), line endings are LF, a line matching
//! `>*From ` gets one more `>`, and each message ends with an empty line.
//!
//! Invariants:
//! - Locks are never waited for: both `flock(LOCK_EX|LOCK_NB)` and an
//!   `fcntl(F_SETLK)` write lock are taken; if either is busy the result is
//!   [`MboxError::Locked`] and the caller retries later without blocking its
//!   loop.
//! - On any write or sync error the file is truncated back to its length
//!   before the append; `Ok` means the whole entry is there (and durable when
//!   `sync`).
//! - The message is streamed through one buffer of [`MBOX_WRITE_BUFFER`]
//!   bytes; no second copy of it is built.
//! - The mailbox is opened with `O_NOFOLLOW | O_NONBLOCK` and checked with
//!   `fstat` before anything is written: it must be a regular file with one
//!   link, owned by the daemon's effective uid (tern writes mailboxes as its
//!   own user). A symlink, a FIFO (whose open would otherwise block the
//!   only thread until a reader appears), a device, a hard link to a file
//!   elsewhere or someone else's file is refused with an error: the caller
//!   defers and logs. `O_NONBLOCK` is cleared once the file is known to be
//!   regular.
//! - Line endings are LF: the spool's CRLF is converted while streaming by
//!   the same converter Maildir uses (`delivery::lf`).
//!
//! Not supported: dot-locking (`USER.lock`), `Content-Length:` (mboxcl2),
//! local time zones in the `From ` line.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::lf::CrlfToLf;

/// Size of the write buffer the message is streamed through.
pub const MBOX_WRITE_BUFFER: usize = 16 * 1024;
/// Mode of a newly created mbox file.
pub const MBOX_FILE_MODE: u32 = 0o600;

/// Why an append did not happen.
#[derive(Debug)]
pub enum MboxError {
    /// Another process holds the mailbox lock: try again later.
    Locked,
    /// Open, write or sync failed; nothing was appended.
    Io(io::Error),
}

impl From<io::Error> for MboxError {
    fn from(e: io::Error) -> MboxError {
        MboxError::Io(e)
    }
}

impl std::fmt::Display for MboxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MboxError::Locked => write!(f, "mailbox is locked"),
            MboxError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// Appends one message to the mbox at `path`, creating the file if needed,
/// in one go (the daemon uses [`MboxAppend`] a bounded step at a time;
/// this is the same sequence driven to the end). `envelope_sender` empty
/// (null sender) is written as `MAILER-DAEMON`.
pub fn deliver_mbox(
    path: &Path,
    envelope_sender: &str,
    date_unix: i64,
    message: &mut dyn Read,
    sync: bool,
) -> Result<(), MboxError> {
    let mut append = MboxAppend::begin(path, envelope_sender, date_unix, Box::new(message), sync)?;
    while !append.pump(&mut usize::MAX.clone())? {}
    if sync {
        append.sync_data()?;
        append.sync_dir()?;
    }
    append.finish();
    // Closing the file releases both locks.
    Ok(())
}

/// One mbox append in steps, so a large message never holds the loop:
/// [`begin`](Self::begin) (open, check, lock), [`pump`](Self::pump) with a
/// byte budget until it returns true, [`sync_data`](Self::sync_data) (or a
/// `syncfs` that covers it) and [`sync_dir`](Self::sync_dir) when the file
/// is new, then [`finish`](Self::finish). The locks are held from `begin`
/// to the end. Dropped before `finish` (an error, a shutdown), it
/// truncates the file back to its length before the append.
pub struct MboxAppend<'a> {
    file: File,
    original_len: u64,
    /// The directory whose new entry must be synced (the file was created).
    created_in: Option<std::path::PathBuf>,
    escaper: Escaper<'a>,
    /// Whether the roll-back is synced.
    sync: bool,
    done: bool,
}

impl<'a> MboxAppend<'a> {
    /// Opens (creating if needed) and locks the mailbox; the `From ` line
    /// is the first thing [`pump`](Self::pump) writes.
    pub fn begin(
        path: &Path,
        envelope_sender: &str,
        date_unix: i64,
        message: Box<dyn Read + 'a>,
        sync: bool,
    ) -> Result<MboxAppend<'a>, MboxError> {
        let (file, created) = open_mailbox(path)?;
        lock(&file)?;
        let original_len = file.metadata()?.len();
        let created_in = path
            .parent()
            .filter(|dir| created && !dir.as_os_str().is_empty())
            .map(Path::to_path_buf);
        Ok(MboxAppend {
            file,
            original_len,
            created_in,
            escaper: Escaper::new(from_line(envelope_sender, date_unix), message),
            sync,
            done: false,
        })
    }

    /// Appends the entry while `budget` lasts (at most one line piece past
    /// it), taking what it moved off `budget`; true once the whole entry
    /// (with its closing empty line) is in the file.
    pub fn pump(&mut self, budget: &mut usize) -> io::Result<bool> {
        self.escaper.pump(&mut &self.file, budget)
    }

    /// The mailbox file (for a `syncfs` that covers it).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// `fdatasync` of the mailbox.
    pub fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// A new file's directory entry must be durable too.
    pub fn sync_dir(&self) -> io::Result<()> {
        match &self.created_in {
            Some(dir) => File::open(dir)?.sync_all(),
            None => Ok(()),
        }
    }

    /// The file's length as far as this append wrote it.
    pub fn end(&self) -> u64 {
        self.original_len.saturating_add(self.escaper.written)
    }

    /// Whether [`sync_dir`](Self::sync_dir) has anything to do.
    pub fn created(&self) -> bool {
        self.created_in.is_some()
    }

    /// Delivered: keeps the entry (closing the file releases the locks).
    pub fn finish(mut self) {
        self.done = true;
    }
}

impl Drop for MboxAppend<'_> {
    fn drop(&mut self) {
        if !self.done {
            roll_back(&self.file, self.original_len, self.sync);
        }
    }
}

/// The mboxrd writer's state between steps: the input (CRLF → LF), the
/// line being escaped, output not yet written.
struct Escaper<'a> {
    input: BufReader<CrlfToLf<Box<dyn Read + 'a>>>,
    line: Vec<u8>,
    out: Vec<u8>,
    /// Lines longer than the buffer come in pieces; only a piece that
    /// starts a line is checked for `From `.
    at_line_start: bool,
    /// Octets written through the sink so far.
    written: u64,
}

impl<'a> Escaper<'a> {
    fn new(from_line: String, message: Box<dyn Read + 'a>) -> Escaper<'a> {
        let mut out = Vec::with_capacity(2 * MBOX_WRITE_BUFFER);
        out.extend_from_slice(from_line.as_bytes());
        Escaper {
            input: BufReader::with_capacity(MBOX_WRITE_BUFFER, CrlfToLf::new(message)),
            line: Vec::with_capacity(1024),
            out,
            at_line_start: true,
            written: 0,
        }
    }

    /// Escapes and writes about `budget` octets of input through `sink`;
    /// true once the input ended and the closing empty line is written.
    /// Nothing is left buffered when it returns `Ok`.
    fn pump(&mut self, sink: &mut dyn Write, budget: &mut usize) -> io::Result<bool> {
        let mut ended = false;
        while *budget > 0 {
            self.line.clear();
            let n = (&mut self.input)
                .take(MBOX_WRITE_BUFFER as u64)
                .read_until(b'\n', &mut self.line)?;
            if n == 0 {
                ended = true;
                break;
            }
            *budget = budget.saturating_sub(n);
            let (body, complete) = match self.line.strip_suffix(b"\n") {
                Some(body) => (body, true),
                None => (self.line.as_slice(), false),
            };
            if self.at_line_start && needs_escape(body) {
                self.out.push(b'>');
            }
            self.out.extend_from_slice(body);
            if complete {
                self.out.push(b'\n');
            }
            self.at_line_start = complete;
            if self.out.len() >= MBOX_WRITE_BUFFER {
                self.flush(sink)?;
            }
        }
        if ended {
            if !self.at_line_start {
                self.out.push(b'\n');
                self.at_line_start = true;
            }
            self.out.push(b'\n');
        }
        self.flush(sink)?;
        Ok(ended)
    }

    fn flush(&mut self, sink: &mut dyn Write) -> io::Result<()> {
        sink.write_all(&self.out)?;
        self.written = self.written.saturating_add(self.out.len() as u64);
        self.out.clear();
        Ok(())
    }
}

/// Opens for append without following symlinks or blocking, and checks
/// what was opened (see the module doc); true if the file was created.
fn open_mailbox(path: &Path) -> io::Result<(File, bool)> {
    let mut options = OpenOptions::new();
    options
        .append(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .mode(MBOX_FILE_MODE);
    let (file, created) = match options.open(path) {
        Ok(file) => (file, false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            match options.clone().create_new(true).open(path) {
                Ok(file) => (file, true),
                // Someone created it in between: use theirs.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    (options.open(path).map_err(refused)?, false)
                }
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(refused(e)),
    };
    check_mailbox(&file)?;
    // SAFETY: fcntl(2) on the descriptor `file` owns.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0
        || unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok((file, created))
}

/// A regular file with one link, owned by us.
fn check_mailbox(file: &File) -> io::Result<()> {
    let st = crate::safe_fs::fstat(file.as_raw_fd())?;
    let why = if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        "not a regular file".to_string()
    } else if st.st_nlink != 1 {
        format!("has {} links", st.st_nlink)
    } else if st.st_uid != crate::safe_fs::euid() {
        format!(
            "owned by uid {}, not by tern's uid {}",
            st.st_uid,
            crate::safe_fs::euid()
        )
    } else {
        return Ok(());
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        format!("refusing the mailbox: {why}"),
    ))
}

/// What an `O_NOFOLLOW | O_NONBLOCK` open's errors mean here.
fn refused(e: io::Error) -> io::Error {
    let why = match e.raw_os_error() {
        Some(libc::ELOOP) => "refusing the mailbox: a symlink",
        Some(libc::ENXIO) => "refusing the mailbox: a FIFO or device without a reader",
        _ => return e,
    };
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// Takes both the BSD and the POSIX lock without waiting.
fn lock(file: &File) -> Result<(), MboxError> {
    let fd = file.as_raw_fd();
    // SAFETY: fd is an open descriptor owned by `file` for this whole call.
    if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(lock_error(io::Error::last_os_error()));
    }
    // SAFETY: an all-zero flock struct is valid; the fields are set below.
    let mut region: libc::flock = unsafe { std::mem::zeroed() };
    region.l_type = libc::F_WRLCK as _;
    region.l_whence = libc::SEEK_SET as _;
    region.l_start = 0;
    region.l_len = 0; // whole file, including what we append
                      // SAFETY: fd is open and `region` is a valid flock struct.
    if unsafe { libc::fcntl(fd, libc::F_SETLK, &region) } != 0 {
        return Err(lock_error(io::Error::last_os_error()));
    }
    Ok(())
}

fn lock_error(e: io::Error) -> MboxError {
    match e.raw_os_error() {
        Some(code) if code == libc::EWOULDBLOCK || code == libc::EAGAIN || code == libc::EACCES => {
            MboxError::Locked
        }
        _ => MboxError::Io(e),
    }
}

fn roll_back(file: &File, original_len: u64, sync: bool) {
    let result = file
        .set_len(original_len)
        .and_then(|()| if sync { file.sync_data() } else { Ok(()) });
    if let Err(e) = result {
        log::error!(
            "mbox: cannot truncate back to {original_len} bytes after a failed append: {e}"
        );
    }
}

/// mboxrd: `From ` after any number of `>`.
fn needs_escape(line: &[u8]) -> bool {
    let quotes = line.iter().take_while(|&&b| b == b'>').count();
    line.get(quotes..)
        .is_some_and(|rest| rest.starts_with(b"From "))
}

/// `From sender Thu Jan  1 00:00:00 1970\n` (asctime layout, UTC).
fn from_line(envelope_sender: &str, date_unix: i64) -> String {
    let sender: String = if envelope_sender.is_empty() {
        "MAILER-DAEMON".to_string()
    } else {
        envelope_sender
            .chars()
            .map(|c| {
                if c.is_whitespace() || c.is_control() {
                    '_'
                } else {
                    c
                }
            })
            .collect()
    };
    format!("From {sender} {}\n", asctime(date_unix))
}

fn asctime(unix_secs: i64) -> String {
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (year, month, day) = crate::bounce::civil_from_days(days);
    // In range: both indexes are reduced modulo the array's length.
    #[allow(clippy::indexing_slicing)]
    let (weekday, month_name) = (
        WEEKDAYS[days.rem_euclid(7) as usize % 7],
        MONTHS[(month as usize).saturating_sub(1) % 12],
    );
    format!(
        "{weekday} {month_name} {day:>2} {:02}:{:02}:{:02} {year}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    use crate::test_dir::TempDir;

    /// Passes `budget` bytes to the file, then fails every write.
    struct FailAfter<'a> {
        file: &'a File,
        budget: usize,
        written: usize,
    }

    impl Write for FailAfter<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.budget == 0 {
                return Err(io::Error::new(io::ErrorKind::StorageFull, "injected"));
            }
            let n = buf.len().min(self.budget);
            let n = (&mut &*self.file).write(buf.get(..n).unwrap_or_default())?;
            self.budget -= n;
            self.written += n;
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn two_messages_exact_bytes() {
        let tmp = TempDir::new("exact");
        let path = tmp.0.join("alice");
        let first = b"Subject: one\r\n\r\nFrom the start\r\n>From quoted\r\n>>From deeper\r\nFromage\r\n From indented\r\nlast line";
        let second = b"Subject: two\n\nbare CR\rstays\nFrom x\n";
        deliver_mbox(&path, "bob@example.com", 0, &mut &first[..], true).expect("first");
        deliver_mbox(&path, "", 1_795_830_910, &mut &second[..], false).expect("second");
        let expected = "From bob@example.com Thu Jan  1 00:00:00 1970\n\
                        Subject: one\n\
                        \n\
                        >From the start\n\
                        >>From quoted\n\
                        >>>From deeper\n\
                        Fromage\n \
                        From indented\n\
                        last line\n\
                        \n\
                        From MAILER-DAEMON Sat Nov 28 01:55:10 2026\n\
                        Subject: two\n\
                        \n\
                        bare CR\rstays\n\
                        >From x\n\
                        \n";
        assert_eq!(
            String::from_utf8(std::fs::read(&path).expect("read")).expect("utf-8"),
            expected
        );
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, MBOX_FILE_MODE);
    }

    #[test]
    fn large_message_streams_through_the_buffer() {
        let tmp = TempDir::new("large");
        let path = tmp.0.join("big");
        let line = "From x".to_string() + &"y".repeat(100) + "\r\n";
        let message = line.repeat(MBOX_WRITE_BUFFER / 50);
        deliver_mbox(&path, "s@x", 0, &mut &message.as_bytes()[..], false).expect("deliver");
        let written = std::fs::read(&path).expect("read");
        let body = written.splitn(2, |&b| b == b'\n').nth(1).expect("body");
        let expected =
            format!(">From x{}\n", "y".repeat(100)).repeat(MBOX_WRITE_BUFFER / 50) + "\n";
        assert_eq!(body, expected.as_bytes());
    }

    #[test]
    fn crlf_split_at_the_buffer_boundary_is_one_line_end() {
        let tmp = TempDir::new("split");
        let path = tmp.0.join("long");
        // A line whose CR is the last octet of one buffer-sized piece.
        let mut message = vec![b'a'; MBOX_WRITE_BUFFER - 1];
        message.extend_from_slice(b"\r\nnext\r\n");
        deliver_mbox(&path, "s@x", 0, &mut &message[..], false).expect("deliver");
        let written = std::fs::read(&path).expect("read");
        assert!(!written.contains(&b'\r'));
        assert!(written.ends_with(b"a\nnext\n\n"));
    }

    #[test]
    fn empty_message_and_sender_with_spaces() {
        let tmp = TempDir::new("empty");
        let path = tmp.0.join("e");
        deliver_mbox(&path, "\"a b\"@x", 0, &mut &b""[..], false).expect("deliver");
        assert_eq!(
            std::fs::read(&path).expect("read"),
            b"From \"a_b\"@x Thu Jan  1 00:00:00 1970\n\n"
        );
    }

    #[test]
    fn busy_lock_gives_locked() {
        let tmp = TempDir::new("locked");
        let path = tmp.0.join("carol");
        std::fs::write(&path, b"existing\n").expect("write");
        let holder = File::open(&path).expect("open");
        // SAFETY: holder's fd is open for the duration of the call.
        assert_eq!(
            unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
            0
        );
        assert!(matches!(
            deliver_mbox(&path, "s@x", 0, &mut &b"m\n"[..], false),
            Err(MboxError::Locked)
        ));
        assert_eq!(std::fs::read(&path).expect("read"), b"existing\n");
        drop(holder);
        deliver_mbox(&path, "s@x", 0, &mut &b"m\n"[..], false).expect("after unlock");
        assert!(std::fs::read(&path)
            .expect("read")
            .starts_with(b"existing\nFrom s@x "));
    }

    #[test]
    fn symlink_is_refused() {
        let tmp = TempDir::new("symlink");
        let target = tmp.0.join("target");
        std::fs::write(&target, b"").expect("write");
        let link = tmp.0.join("link");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        assert!(matches!(
            deliver_mbox(&link, "s@x", 0, &mut &b"m\n"[..], false),
            Err(MboxError::Io(_))
        ));
        assert_eq!(std::fs::read(&target).expect("read"), b"");
    }

    #[test]
    fn fifo_and_hard_link_are_refused_without_blocking() {
        let tmp = TempDir::new("fifo");
        let fifo = tmp.0.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: mkfifo(3) with a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // No reader: the open itself must not block (the test would hang).
        assert!(matches!(
            deliver_mbox(&fifo, "s@x", 0, &mut &b"m\n"[..], false),
            Err(MboxError::Io(_))
        ));
        // With a reader, the FIFO opens but is refused after fstat.
        let _reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .expect("reader");
        let err = deliver_mbox(&fifo, "s@x", 0, &mut &b"m\n"[..], false).expect_err("fifo");
        assert!(err.to_string().contains("not a regular file"), "{err}");
        // A second link to a file is refused too.
        let target = tmp.0.join("target");
        std::fs::write(&target, b"").expect("write");
        std::fs::hard_link(&target, tmp.0.join("hard")).expect("link");
        let err = deliver_mbox(&tmp.0.join("hard"), "s@x", 0, &mut &b"m\n"[..], false)
            .expect_err("hard link");
        assert!(err.to_string().contains("links"), "{err}");
        assert_eq!(std::fs::read(&target).expect("read"), b"");
    }

    #[test]
    fn failed_write_is_truncated_back() {
        let tmp = TempDir::new("truncate");
        let path = tmp.0.join("dave");
        deliver_mbox(&path, "s@x", 0, &mut &b"Subject: kept\n"[..], false).expect("first");
        let before = std::fs::read(&path).expect("read");
        let message = "line\r\n".repeat(MBOX_WRITE_BUFFER);
        let mut append =
            MboxAppend::begin(&path, "s@x", 0, Box::new(message.as_bytes()), true).expect("begin");
        // A first step reaches the file, the second fails half-way.
        assert!(!append
            .pump(&mut MBOX_WRITE_BUFFER.clone())
            .expect("first step"));
        let file = append.file().try_clone().expect("dup");
        assert!(file.metadata().expect("stat").len() > before.len() as u64);
        let mut failing = FailAfter {
            file: &file,
            budget: MBOX_WRITE_BUFFER + 10,
            written: 0,
        };
        let err = append
            .escaper
            .pump(&mut failing, &mut usize::MAX.clone())
            .expect_err("injected");
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert!(
            failing.written > 0,
            "partial data was written before the error"
        );
        drop(append);
        drop(file);
        assert_eq!(std::fs::read(&path).expect("read"), before);
        // The mailbox still works afterwards.
        deliver_mbox(&path, "s@x", 0, &mut &b"Subject: next\n"[..], false).expect("next");
        assert_eq!(
            std::fs::read(&path).expect("read").len(),
            2 * before.len() - "kept".len() + "next".len()
        );
    }

    #[test]
    fn write_to_unwritable_path_is_io_error() {
        let tmp = TempDir::new("nodir");
        let path = tmp.0.join("missing-dir").join("mbox");
        assert!(matches!(
            deliver_mbox(&path, "s@x", 0, &mut &b"m\n"[..], false),
            Err(MboxError::Io(_))
        ));
    }

    #[test]
    fn escape_rule() {
        assert!(needs_escape(b"From "));
        assert!(needs_escape(b">>From x"));
        assert!(!needs_escape(b"From"));
        assert!(!needs_escape(b"from x"));
        assert!(!needs_escape(b"> From x"));
        assert!(!needs_escape(b""));
    }

    #[test]
    fn asctime_layout() {
        assert_eq!(asctime(0), "Thu Jan  1 00:00:00 1970");
        assert_eq!(asctime(951_782_400), "Tue Feb 29 00:00:00 2000");
        assert_eq!(asctime(1_795_830_910), "Sat Nov 28 01:55:10 2026");
    }
}
