//! The spool: the only code that touches the spool directory.
//!
//! A message is one immutable file holding its envelope and its content, so
//! one sync makes both durable; per-recipient progress lives in a small
//! separate state file, so retries never rewrite the message (flash wear).
//!
//! ## Files and states
//!
//! | files present                  | state                                   | recovery at start-up |
//! |--------------------------------|-----------------------------------------|----------------------|
//! | `tmp/ID`                       | being received; **not** acknowledged    | deleted |
//! | `tmp/ID` + `msg/ID` (one file, two names) | commit by `link` + `unlink` interrupted (fallback, see below) | `tmp/ID` deleted, `msg/ID` queued |
//! | `msg/ID`                       | committed, no attempt recorded yet      | queued, all recipients pending |
//! | `msg/ID` + `state/ID`          | committed, some attempts recorded       | queued with its state |
//! | `state/ID` without `msg/ID`    | finished; removal interrupted           | `state/ID` deleted |
//! | `state/ID.new`                 | state update interrupted                | deleted (`state/ID` is still valid) |
//! | `msg/ID` that does not parse, or whose trailer is missing | not durable when the machine crashed (never acknowledged), or damaged | moved to `corrupt/ID` (`corrupt/ID.N` if that exists), logged |
//! | `drop/*`                       | sendmail drops (see `spool::drop`)      | imported by the daemon |
//! | `msg/ID` + `hold/ID`           | on hold (`tern queue hold`, see `spool::hold`): never attempted until released | kept, not scheduled |
//! | `hold/ID` without `msg/ID`, or `hold/` junk | removal interrupted      | deleted |
//! | `lock`                         | the spool lock: `flock`ed by the running daemon (or a `tern queue` command while none runs) | kept |
//! | `control`                      | the daemon's control socket (see `control`) | a stale one is replaced at start, removed at exit |
//! | `tmp`, `msg`, ... is a symlink or not a directory | tampered with                | refused: the spool is not opened, the daemon does not start |
//! | anything else in `msg/` (a name that is no queue ID, a directory, a FIFO) | not tern's | moved to `corrupt/` unopened, logged |
//! | `state/ID` that does not parse, `msg/ID` valid | damaged | moved to `corrupt/ID.state`, logged; the message starts over (all recipients pending: a duplicate is possible, a loss is not) |
//! | a spool directory missing | deleted by hand, or a fresh spool | created, logged (`msg/`: the queue it held is lost) |
//!
//! Before recovery the daemon checks that it can create and remove a file
//! in every directory ([`Spool::check_writable`]); a read-only or immutable
//! spool stops the start with exit 75 (see `daemon::SpoolUnusable`).
//!
//! Recovery walks `tmp/` through a descriptor opened `O_NOFOLLOW` and
//! removes with `unlinkat`, so it never acts outside the spool (see
//! `safe_fs`); [`Spool::open`] refuses a spool whose subdirectories are
//! symlinks, since every later path would lead elsewhere.
//!
//! ## Queue IDs
//!
//! 16 hex digits: the arrival second (high 40 bits) and 24 low bits. The
//! first ID of each second starts at a random offset below 2^23 (from
//! `ring`'s `SystemRandom`), later IDs count up from the last one handed
//! out, and the first `create` of a process starts above the highest ID
//! found in `tmp/`, `msg/`, `state/` and `corrupt/`. So IDs sort by
//! arrival while the clock moves forward, stay unique when it stands still
//! or steps back (a router without a battery-backed clock boots at the same
//! second every time; a crash-looping daemon restarts within the second),
//! and are hardly ever reused in the logs even with an empty spool.
//! Uniqueness does not depend on any of that: `tmp/ID` is created
//! `O_EXCL`, and the commit never replaces an existing `msg/ID` (below).
//!
//! ## The commit point
//!
//! `tmp/ID` is created `O_EXCL`, the envelope is written when DATA starts,
//! the content streams in as it arrives. At the end of the loop turn every
//! finished file gets a fixed-size trailer (`TRAILER_LEN` octets: a magic
//! and the content length) and is moved to `msg/ID` with
//! `renameat2(RENAME_NOREPLACE)` (or `link` + `unlink` where the flag is
//! unsupported): an existing `msg/ID` is never replaced; if one exists the
//! message takes the next free ID (the `Received:` header keeps the first
//! one; the log and the 250 reply give the final one). Then the batch is
//! made durable, data and directory entries together, and only then does
//! the server answer 250. How depends on the batch (group commit):
//!
//! | messages ending in the turn | sync                                   | why |
//! |---|---|---|
//! | one                         | `fdatasync(msg/ID)`, `fsync(msg/)`     | one journal commit; the directory sync finds nothing left to do on a journalling fs |
//! | several                     | one `syncfs(2)`                         | one journal commit for all of them |
//!
//! Measured on ext4 (`make bench`, flash figures): `syncfs` also writes the
//! journalled metadata back to its home blocks at once (it syncs the block
//! device too), so for a lone message it costs nearly twice the flash of
//! the file-level pair, at the same speed; from two messages on, one
//! `syncfs` is both faster and no worse per message than a sync per file.
//!
//! Why the trailer: the renames and the data reach the disk in one sync, so
//! a crash *before* the sync returns may leave a renamed file whose data is
//! incomplete. Such a message was never acknowledged; recovery recognises it
//! because its trailer is missing or does not match the file size, and moves
//! it to `corrupt/` instead of delivering a truncated message. With
//! `spool_sync = no` the sync is skipped: a crash or power loss may then
//! lose acknowledged mail.
//!
//! `state/ID` holds the attempt count, the queue age (monotonic seconds the
//! daemon has held the message, which decides expiry; a file without it,
//! from before, reads as age 0) and each recipient's status and last reply;
//! its format is `envelope::Progress`. It is written after each attempt and,
//! for held mail, at most every `daemon::runner::AGE_CHECKPOINT`.
//!
//! State updates are write-new + fsync + rename. Finished messages are
//! unlinked (`msg/` first, then `state/`, then `hold/`) without a sync: a crash can at
//! worst cause a duplicate delivery, never a loss.

pub mod drop;
pub mod envelope;
pub mod envelope_dsn;
pub mod hold;
pub mod space;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::safe_fs;

pub use envelope::{Progress, QueueId, RcptState, RcptStatus, StoredEnvelope};

/// `\n#tern-end ` + 16 hex digits of the content length + `\n`.
pub const TRAILER_LEN: u64 = 28;
const TRAILER_MAGIC: &[u8] = b"\n#tern-end ";

fn trailer(content_len: u64) -> [u8; TRAILER_LEN as usize] {
    let mut t = [b'\n'; TRAILER_LEN as usize];
    let mut cursor = io::Cursor::new(&mut t[..]);
    // 28 octets exactly: the write cannot come up short.
    let _ = write!(cursor, "\n#tern-end {content_len:016x}\n");
    t
}

/// The stored content of a message: the file limited to the content.
pub type Content = io::Take<File>;

use crate::smtp::reply::{self, Reply};

/// A file being received.
/// Writes to a file being received go through this much buffer, so a small
/// message (envelope, `Received:`, body, trailer) costs one `write`.
pub const INCOMING_BUFFER: usize = 4096;

pub struct Incoming {
    pub id: QueueId,
    file: io::BufWriter<File>,
    // Its file is `tmp/ID` (the path is built when needed, on the stack).
    flag_offset: u64,
    arrival: u64,
    pub size: u64,
    /// Early writeback of a large message (`spool_sync` only): the
    /// commit's sync finds little left to write (see `writeback`).
    writeback: Option<crate::writeback::Writeback>,
}

impl Incoming {
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)?;
        self.size += data.len() as u64;
        if let Some(wb) = &mut self.writeback {
            let end = self.size.saturating_add(self.flag_offset);
            if end
                >= wb
                    .started()
                    .saturating_add(crate::writeback::WRITEBACK_STEP)
            {
                self.file.flush()?;
                let pos = self.file.get_mut().stream_position()?;
                wb.advance(self.file.get_ref(), pos);
            }
        }
        Ok(())
    }

    /// Records that the content has 8-bit octets (the flag is a fixed-width
    /// field in the envelope, patched before the sync).
    pub fn mark_eight_bit(&mut self) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        // The envelope may still be in the buffer: write it out first.
        self.file.flush()?;
        self.file.get_ref().write_all_at(b"8", self.flag_offset)
    }
}

pub struct Spool {
    root: PathBuf,
    /// `msg/`, held open for the commit's `syncfs` (no open/close per batch).
    msg_dir: File,
    sync: bool,
    /// The last queue ID handed out (see "Queue IDs"); `None` until the
    /// first `create` looked at the spool.
    last_id: Option<u64>,
}

/// Tries at finding a free queue ID before giving up (each one is a new,
/// higher ID; more than one is needed only if another process writes the
/// same spool).
pub const ID_ATTEMPTS: u32 = 1000;
/// Random bits at the start of each second's IDs (below 2^24, so a second
/// has room for 2^23 more IDs before it reaches the next second's range).
pub const ID_RANDOM_BITS: u32 = 23;

impl From<&io::Error> for Reply {
    fn from(e: &io::Error) -> Reply {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => reply::NO_SPACE,
            _ => reply::LOCAL_ERROR,
        }
    }
}

const DIRS: [&str; 6] = ["tmp", "msg", "state", "corrupt", "drop", "hold"];

/// The spool root: others may pass through it (to reach `drop/`) but not
/// list it; every file in it is 0600 except sendmail drops (0644 in the
/// unlistable `drop/`, see `spool::drop`).
pub const ROOT_MODE: u32 = 0o711;
/// `drop/`: anyone may create a file, nobody may list it or remove another
/// user's file (sticky), like a classic maildrop. Drop file names carry 64
/// random bits, so another user cannot guess them either.
pub const DROP_MODE: u32 = 0o1733;

impl Spool {
    /// Opens (and creates) the spool directory tree. New directories are
    /// 0700, the root [`ROOT_MODE`] and `drop/` [`DROP_MODE`] so that
    /// `sendmail` works for every local user.
    pub fn open(root: &Path, sync: bool) -> io::Result<Spool> {
        use std::os::unix::fs::PermissionsExt;
        let fresh = !root.exists();
        let mut b = fs::DirBuilder::new();
        b.recursive(true).mode(0o700);
        if fresh {
            log::info!("spool: creating {}", root.display());
        }
        for d in DIRS {
            let dir = root.join(d);
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{} is a symlink or not a directory; refusing to use the spool",
                            dir.display()
                        ),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    b.create(&dir)?;
                    if fresh {
                        // nothing to report: a new spool
                    } else if d == "hold" {
                        // new in this version: an older spool has none
                        log::info!("spool: created {}", dir.display());
                    } else if d == "msg" {
                        log::warn!(
                            "spool: {} was missing (any queue it held is lost); created it",
                            dir.display()
                        );
                    } else {
                        log::warn!("spool: {} was missing; created it", dir.display());
                    }
                    if d == "drop" {
                        // set explicitly: the umask must not narrow it
                        let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(DROP_MODE));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        if fresh {
            let _ = fs::set_permissions(root, fs::Permissions::from_mode(ROOT_MODE));
        }
        Ok(Spool {
            root: root.to_path_buf(),
            msg_dir: File::open(root.join("msg"))?,
            sync,
            last_id: None,
        })
    }

    /// Checks that the daemon can create and remove files in every spool
    /// directory (a read-only mount, an immutable directory or wrong
    /// ownership would otherwise surface only as 451 to every client).
    /// The error names the directory.
    pub fn check_writable(&self) -> io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        // access(2) with the effective IDs: EROFS on a read-only mount,
        // EPERM on an immutable directory, EACCES on wrong ownership. No
        // probe file: one left behind by a crash at the wrong moment would
        // be a stray in `drop/` (the torture found one).
        for d in DIRS {
            let dir = self.root.join(d);
            let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "NUL in the spool path")
            })?;
            // SAFETY: a valid NUL-terminated path; faccessat only reads it.
            let r = unsafe {
                libc::faccessat(
                    libc::AT_FDCWD,
                    path.as_ptr(),
                    libc::W_OK | libc::X_OK,
                    libc::AT_EACCESS,
                )
            };
            if r != 0 {
                let e = io::Error::last_os_error();
                return Err(io::Error::new(
                    e.kind(),
                    format!("spool directory {} is not writable: {e}", dir.display()),
                ));
            }
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Calls `f` with `ROOT/dir/ID` built on the stack (a root too long
    /// for the buffer gets [`Spool::path`]): the per-message opens,
    /// renames and removals allocate nothing for their paths.
    fn with_path<T>(&self, dir: &str, id: QueueId, f: impl FnOnce(&Path) -> T) -> T {
        use std::os::unix::ffi::OsStrExt;
        let mut buf = [0u8; 256];
        let mut cursor = io::Cursor::new(&mut buf[..]);
        let written = cursor
            .write_all(self.root.as_os_str().as_bytes())
            .and_then(|()| write!(cursor, "/{dir}/{}", id.text().as_str()));
        let n = usize::try_from(cursor.position()).unwrap_or(usize::MAX);
        match (written, buf.get(..n)) {
            (Ok(()), Some(path)) => f(Path::new(std::ffi::OsStr::from_bytes(path))),
            _ => f(&self.path(dir, id)),
        }
    }

    /// `ROOT/dir/ID`, built with one allocation.
    fn path(&self, dir: &str, id: QueueId) -> PathBuf {
        let mut p = PathBuf::with_capacity(self.root.as_os_str().len() + dir.len() + 18);
        p.push(&self.root);
        p.push(dir);
        p.push(id.text().as_str());
        p
    }

    /// Creates `tmp/ID` and writes the envelope; the caller streams the content.
    pub fn create(&mut self, env: &StoredEnvelope) -> io::Result<Incoming> {
        // The file does not record its ID (its name does): the envelope is
        // encoded as given, only the ID is new.
        for _ in 0..ID_ATTEMPTS {
            let id = self.next_id(env.arrival);
            let file = self.with_path("tmp", id, |path| {
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
            });
            match file {
                Ok(file) => {
                    // Encoded straight into the file's buffer.
                    let mut file = io::BufWriter::with_capacity(INCOMING_BUFFER, file);
                    let written = env.write_to(&mut file);
                    let flag_offset = written.as_ref().map_or(0, |&(_, flag)| flag);
                    if let Err(e) = written {
                        let _ = self.with_path("tmp", id, |p| fs::remove_file(p));
                        return Err(e);
                    }
                    return Ok(Incoming {
                        id,
                        file,
                        flag_offset,
                        arrival: env.arrival,
                        size: 0,
                        writeback: self.sync.then(|| crate::writeback::Writeback::new(0)),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other("could not find a free queue id"))
    }

    /// A new queue ID above every one handed out or found in the spool
    /// (see "Queue IDs" above).
    fn next_id(&mut self, arrival: u64) -> QueueId {
        let last = match self.last_id {
            Some(last) => last,
            None => self.highest_id_in_spool(),
        };
        let second = QueueId::new(arrival, 0).0;
        let id = if second > last {
            second | random_offset()
        } else {
            last.wrapping_add(1)
        };
        self.last_id = Some(id);
        QueueId(id)
    }

    /// The highest ID named in `tmp/`, `msg/`, `state/` (`ID` and `ID.new`)
    /// or `corrupt/` (`ID` and `ID.N`); 0 for an empty spool.
    fn highest_id_in_spool(&self) -> u64 {
        let mut highest = 0;
        for dir in ["tmp", "msg", "state", "corrupt"] {
            let Ok(entries) = fs::read_dir(self.root.join(dir)) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                let stem = name.split('.').next().unwrap_or(name);
                if let Ok(id) = stem.parse::<QueueId>() {
                    highest = highest.max(id.0);
                }
            }
        }
        highest
    }

    /// Moves a sealed file from `tmp/` to `msg/` without replacing anything;
    /// if its ID is taken there, under the next free one.
    fn publish(&mut self, inc: &Incoming) -> io::Result<QueueId> {
        let mut id = inc.id;
        for _ in 0..ID_ATTEMPTS {
            let moved = self.with_path("tmp", inc.id, |from| {
                self.with_path("msg", id, |to| safe_fs::rename_noreplace(from, to))
            });
            match moved {
                Ok(()) => return Ok(id),
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    let next = self.next_id(inc.arrival);
                    log::warn!("{id}: msg/{id} exists (another writer?); committing as {next}");
                    id = next;
                }
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other("could not find a free queue id"))
    }

    /// Drops a message that was not acknowledged.
    pub fn discard(&mut self, inc: Incoming) {
        let _ = self.with_path("tmp", inc.id, |p| fs::remove_file(p));
    }

    /// Group commit: seals every file with its trailer, moves it to `msg/`,
    /// and makes the batch durable (see the table above). One result per
    /// input, in order.
    pub fn commit(&mut self, mut batch: Vec<Incoming>) -> Vec<io::Result<QueueId>> {
        let mut results = Vec::with_capacity(batch.len());
        self.commit_into(&mut batch, &mut results);
        results
    }

    /// [`Spool::commit`] with the caller's buffers (kept from turn to turn
    /// by the daemon): `batch` is emptied, the results are appended to the
    /// emptied `results`.
    pub fn commit_into(
        &mut self,
        batch: &mut Vec<Incoming>,
        results: &mut Vec<io::Result<QueueId>>,
    ) {
        results.clear();
        let mut lone: Option<File> = None;
        for mut inc in batch.drain(..) {
            let r = (|| {
                inc.file.write_all(&trailer(inc.size))?;
                inc.file.flush()?;
                self.publish(&inc)
            })();
            match r {
                // Kept for the sync in case it is the only one.
                Ok(_) => lone = inc.file.into_inner().ok(),
                Err(_) => {
                    let _ = self.with_path("tmp", inc.id, |p| fs::remove_file(p));
                }
            }
            results.push(r);
        }
        let sealed = results.iter().filter(|r| r.is_ok()).count();
        if self.sync && sealed > 0 {
            let synced = match lone {
                Some(file) if sealed == 1 => {
                    file.sync_data().and_then(|()| self.msg_dir.sync_all())
                }
                _ => syncfs_fd(&self.msg_dir),
            };
            if let Err(e) = synced {
                // Without the sync nothing in this batch is durable.
                let kind = e.kind();
                for r in results.iter_mut() {
                    if let Ok(id) = r {
                        let _ = fs::remove_file(self.path("msg", *id));
                        *r = Err(io::Error::new(kind, e.to_string()));
                    }
                }
            }
        }
    }

    /// Reads a committed message's envelope and its recipients' state.
    pub fn load(&self, id: QueueId) -> io::Result<(StoredEnvelope, Vec<RcptState>, u32)> {
        self.load_progress(id)
            .map(|(env, p)| (env, p.states, p.attempts))
    }

    /// Reads a committed message's envelope and its progress (recipients'
    /// state, attempts, queue age).
    pub fn load_progress(&self, id: QueueId) -> io::Result<(StoredEnvelope, Progress)> {
        let mut f = open_queue_file(&self.path("msg", id))?;
        let env = read_envelope(&mut f)?;
        let state = open_queue_file(&self.path("state", id)).and_then(|mut f| {
            let mut bytes = Vec::new();
            f.read_to_end(&mut bytes).map(|_| bytes)
        });
        let progress = match state {
            Ok(bytes) => envelope::decode_state(&bytes, env.recipients.len())
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad state file"))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Progress {
                states: vec![RcptState::default(); env.recipients.len()],
                attempts: 0,
                age: 0,
            },
            Err(e) => return Err(e),
        };
        Ok((env, progress))
    }

    /// Complete sendmail drops in `drop/`, oldest first (`spool::drop`).
    pub fn drops(&self) -> Vec<PathBuf> {
        drop::list(&self.root)
    }

    /// Whether `msg/ID` exists (a claimed drop was committed).
    pub fn is_queued(&self, id: QueueId) -> bool {
        fs::symlink_metadata(self.path("msg", id)).is_ok()
    }

    /// Moves a bad drop (a path from [`Spool::drops`]) to `corrupt/`.
    pub fn set_aside_drop(&self, path: &Path) -> io::Result<PathBuf> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        set_aside(path, &self.root.join("corrupt"), &name)
    }

    /// Makes the claims of imported drops (their `drop/NAME+ID` renames)
    /// durable, before those drops are committed: after a power loss a
    /// committed message must never have its drop back under its old
    /// name (it would be imported again). Nothing to do without
    /// `spool_sync`.
    pub fn sync_drop_claims(&self) -> io::Result<()> {
        if !self.sync {
            return Ok(());
        }
        File::open(self.root.join("drop"))?.sync_all()
    }

    /// Unlinks an imported drop (a path from [`Spool::drops`] or its
    /// claimed name); a drop already gone is fine.
    pub fn remove_drop(&self, path: &Path) {
        if let Err(e) = fs::remove_file(path) {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!("drop {}: cannot remove: {e}", path.display());
            }
        }
    }

    /// Opens the content for reading (after the envelope, before the
    /// trailer) and checks the trailer.
    ///
    /// Most message files fit the first read ([`HEAD_READ`]): then the
    /// trailer is checked in that buffer, and a delivery costs `openat`,
    /// `statx`, one `read`, `lseek` and the content's `read` (it was ten
    /// calls when the trailer was read again at its offset).
    pub fn open_content(&self, id: QueueId) -> io::Result<(Content, u64)> {
        let (mut f, file_len) = self.with_path("msg", id, open_queue_file_len)?;
        let mut first = [0u8; HEAD_READ];
        let n = read_up_to(&mut f, &mut first, file_len)?;
        let head = first.get(..n).unwrap_or_default();
        let body_offset = body_offset_in(head, &mut f)?;
        let len = if u64::try_from(n).ok() == Some(file_len) {
            // The whole file is in `head`: so is its trailer.
            let tail = n
                .checked_sub(TRAILER_LEN as usize)
                .and_then(|at| head.get(at..))
                .and_then(|t| <&[u8; TRAILER_LEN as usize]>::try_from(t).ok())
                .ok_or_else(bad_trailer)?;
            parse_trailer(tail, body_offset, file_len)?
        } else {
            check_trailer_at(&mut f, body_offset, file_len)?
        };
        f.seek(SeekFrom::Start(body_offset))?;
        Ok((f.take(len), len))
    }

    /// Replaces the state file (write new, fsync, rename). `age`: the
    /// message's queue age in seconds (see `envelope::Progress`).
    pub fn save_state(
        &self,
        id: QueueId,
        states: &[RcptState],
        attempts: u32,
        age: u64,
    ) -> io::Result<()> {
        let tmp = self.root.join("state").join(format!("{id}.new"));
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(&envelope::encode_state(states, attempts, age))?;
        if self.sync {
            f.sync_data()?;
        }
        fs::rename(&tmp, self.path("state", id))?;
        Ok(())
    }

    /// Removes a finished message.
    pub fn remove(&self, id: QueueId) -> io::Result<()> {
        match self.with_path("msg", id, |p| fs::remove_file(p)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        match self.with_path("state", id, |p| fs::remove_file(p)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.release(id).map(|_| ())
    }

    /// Start-up recovery (idempotent) all at once: applies the state table
    /// above and returns every committed message. The daemon does the same
    /// in two parts so that it serves while a big queue is checked:
    /// [`Spool::recover_begin`], then [`Recovery::step`] a bounded number of
    /// messages per loop turn.
    pub fn recover(&self) -> io::Result<Vec<QueueId>> {
        let mut recovery = self.recover_begin()?;
        let mut ids = Vec::new();
        while recovery.step(self, usize::MAX, |id, check| {
            if check() {
                ids.push(id)
            }
        }) {}
        Ok(ids)
    }

    /// The first part of recovery, before the loop serves: every row of the
    /// state table that needs no file opened (`tmp/` emptied, strays in
    /// `msg/` set aside, orphan `state/` and `hold/` files removed), and the
    /// list of `msg/` (names only: a directory listing, not a read of
    /// 100,000 files). Each listed message is then checked by
    /// [`Recovery::step`] (envelope, trailer, state file).
    pub fn recover_begin(&self) -> io::Result<Recovery> {
        // Never through a symlink: the directory is opened O_NOFOLLOW.
        let tmp = safe_fs::Dir::open(&self.root)?.sub(std::ffi::OsStr::new("tmp"))?;
        for name in tmp.entries()? {
            log::info!(
                "recovery: removing unacknowledged {}",
                self.root.join("tmp").join(&name).display()
            );
            let _ = tmp.unlink(&name);
        }
        let mut ids = Vec::new();
        for entry in fs::read_dir(self.root.join("msg"))? {
            let entry = entry?;
            let name = entry.file_name();
            // Only regular files are opened (later): a FIFO would block the loop.
            let regular = entry.file_type().is_ok_and(|t| t.is_file());
            let problem = match name.to_str().and_then(|s| s.parse::<QueueId>().ok()) {
                Some(id) if regular => {
                    ids.push(id);
                    continue;
                }
                Some(_) => "not a regular file",
                None => "not a queue file name",
            };
            self.set_aside_logged(&entry.path(), &name.to_string_lossy(), problem);
        }
        ids.sort_unstable();
        ids.shrink_to_fit();
        for entry in fs::read_dir(self.root.join("state"))? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let orphan = match name.parse::<QueueId>() {
                Ok(id) => ids.binary_search(&id).is_err(),
                Err(_) => true, // ID.new or junk
            };
            if orphan {
                let _ = fs::remove_file(entry.path());
            }
        }
        self.remove_orphan_holds(&ids)?;
        Ok(Recovery { ids, next: 0 })
    }

    /// Recovery of one listed message: `Ok` if `msg/ID` is complete (its
    /// state file checked too), `Err` if it is gone (removed since the
    /// listing: a `tern queue delete`, or delivered) or was set aside as
    /// damaged, with its state and hold files.
    fn recover_message(&self, id: QueueId) -> Result<(), ()> {
        let path = self.path("msg", id);
        let checked = open_queue_file(&path).and_then(|mut f| {
            let env = read_envelope(&mut f)?;
            check_trailer(&mut f, env.body_offset)?;
            Ok(env.recipients.len())
        });
        match checked {
            Ok(recipients) => {
                self.check_state(id, recipients);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(()),
            Err(e) => {
                let why = format!("damaged queue file: {e}");
                self.set_aside_logged(&path, &id.to_string(), &why);
                // What recovery does with `state/ID` and `hold/ID` without
                // `msg/ID`.
                let _ = fs::remove_file(self.path("state", id));
                let _ = self.release(id);
                Err(())
            }
        }
    }

    /// Recovery of a valid message whose state file is unreadable: the
    /// state is set aside and the message starts over with every recipient
    /// pending (a possible duplicate delivery, never a loss).
    fn check_state(&self, id: QueueId, recipients: usize) {
        let state = self.path("state", id);
        let bytes = match open_queue_file(&state).and_then(|mut f| {
            let mut bytes = Vec::new();
            f.read_to_end(&mut bytes).map(|_| bytes)
        }) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) => {
                let why = format!("damaged state file ({e}); the message is kept");
                self.set_aside_logged(&state, &format!("{id}.state"), &why);
                return;
            }
        };
        if envelope::decode_state(&bytes, recipients).is_none() {
            let why = "damaged state file (bad state file); the message is kept";
            self.set_aside_logged(&state, &format!("{id}.state"), why);
        }
    }

    /// Moves `path` to `corrupt/NAME` (or `NAME.N` if that is taken:
    /// nothing there is replaced), with one log line naming both.
    fn set_aside_logged(&self, path: &Path, name: &str, why: &str) {
        match set_aside(path, &self.root.join("corrupt"), name) {
            Ok(to) => log::error!(
                "recovery: {} set aside as {} ({why})",
                path.display(),
                to.display()
            ),
            Err(e) => log::error!(
                "recovery: {} ({why}) could not be moved to corrupt/: {e}; left in place",
                path.display()
            ),
        }
    }

    /// Committed message IDs (for `mailq`), without touching anything.
    pub fn list(&self) -> io::Result<Vec<QueueId>> {
        let mut ids: Vec<QueueId> = fs::read_dir(self.root.join("msg"))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    pub fn content_size(&self, id: QueueId) -> io::Result<u64> {
        Ok(self.open_content(id)?.1)
    }
}

/// The messages listed by [`Spool::recover_begin`] that are still to be
/// checked, in ID order (arrival order).
#[derive(Debug, Default)]
pub struct Recovery {
    ids: Vec<QueueId>,
    next: usize,
}

impl Recovery {
    /// Messages listed at the start.
    pub fn listed(&self) -> usize {
        self.ids.len()
    }

    /// Messages not checked yet.
    pub fn remaining(&self) -> usize {
        self.ids.len().saturating_sub(self.next)
    }

    /// Looks at the next `max` listed messages, in ID order: `visit(id,
    /// check)` for each, where `check()` checks the message (envelope,
    /// trailer, state file; see the state table) and says whether it is
    /// complete and still there. The daemon does not check a message it
    /// already has (a `tern queue flush ID` or `release` during recovery
    /// scheduled it). Returns whether messages remain. Every listed message
    /// is visited exactly once.
    pub fn step(
        &mut self,
        spool: &Spool,
        max: usize,
        mut visit: impl FnMut(QueueId, &dyn Fn() -> bool),
    ) -> bool {
        let end = self.next.saturating_add(max).min(self.ids.len());
        for &id in self.ids.get(self.next..end).unwrap_or_default() {
            visit(id, &|| spool.recover_message(id).is_ok());
        }
        self.next = end;
        if self.next >= self.ids.len() {
            // Done: give the list's memory back.
            self.ids = Vec::new();
            self.next = 0;
            return false;
        }
        true
    }
}

/// Moves `from` into `dir` as `name`, or `name.1`, `name.2`, ... if taken:
/// never over an earlier file (set-aside files are kept for the admin).
pub fn set_aside(from: &Path, dir: &Path, name: &str) -> io::Result<PathBuf> {
    let mut to = dir.join(name);
    for n in 1..=ID_ATTEMPTS {
        match safe_fs::rename_noreplace(from, &to) {
            Ok(()) => return Ok(to),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                to = dir.join(format!("{name}.{n}"));
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(format!(
        "no free name for {name} in {}",
        dir.display()
    )))
}

/// 0..2^ID_RANDOM_BITS from the system's random source; 0 if it fails
/// (uniqueness never depends on it).
fn random_offset() -> u64 {
    crate::random::u32().map_or(0, |r| u64::from(r & ((1 << ID_RANDOM_BITS) - 1)))
}

/// Opens a spool file for reading: never through a symlink, never a FIFO
/// or device (whose open or read would block the loop), only a regular
/// file.
fn open_queue_file(path: &Path) -> io::Result<File> {
    open_queue_file_len(path).map(|(f, _)| f)
}

/// [`open_queue_file`], with the file's length from the same `statx`.
fn open_queue_file_len(path: &Path) -> io::Result<(File, u64)> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    Ok((f, meta.len()))
}

/// What [`Spool::open_content`] reads first: the envelope and, for most
/// messages, the whole file.
pub const HEAD_READ: usize = 4096;

/// Reads from the start of a file of `file_len` octets into `buf` until
/// `buf` is full, the file's length is reached or `read` says end of
/// file (no read that can only return 0).
fn read_up_to(f: &mut File, buf: &mut [u8], file_len: u64) -> io::Result<usize> {
    let want = usize::try_from(file_len).map_or(buf.len(), |l| l.min(buf.len()));
    let mut n = 0;
    while let Some(rest) = buf.get_mut(n..want).filter(|r| !r.is_empty()) {
        match f.read(rest)? {
            0 => break,
            got => n += got,
        }
    }
    Ok(n)
}

/// Where the content starts in a message file (after the envelope), from
/// the first octets of the file (`head`); leaves the file position
/// unspecified. The envelope was parsed when the message was queued (or
/// recovered); here its head is only checked to be one (UTF-8, the format
/// line), without building it again, and an envelope that fits the first
/// read needs no allocation at all.
fn body_offset_in(head: &[u8], f: &mut File) -> io::Result<u64> {
    match envelope::split_head(head) {
        Some((head, offset)) if envelope::is_head(head) => Ok(offset),
        Some(_) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a tern queue file",
        )),
        None => {
            f.seek(SeekFrom::Start(0))?;
            read_envelope(f).map(|env| env.body_offset)
        }
    }
}

/// Reads the envelope at the start of a message file, leaving the file
/// position unspecified.
fn read_envelope(f: &mut File) -> io::Result<StoredEnvelope> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = f.read(&mut chunk)?;
        let Some(got) = chunk.get(..n).filter(|got| !got.is_empty()) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "truncated envelope",
            ));
        };
        buf.extend_from_slice(got);
        if let Some(env) = StoredEnvelope::decode(&buf) {
            return env.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
        }
        if buf.len() > envelope::MAX_ENVELOPE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "envelope too large",
            ));
        }
    }
}

fn bad_trailer() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "incomplete queue file (no valid trailer)",
    )
}

/// The content length from a valid trailer, or an error if the file is
/// incomplete (see the module doc).
fn check_trailer(f: &mut File, body_offset: u64) -> io::Result<u64> {
    let file_len = f.metadata()?.len();
    check_trailer_at(f, body_offset, file_len)
}

/// [`check_trailer`] for a file whose length is known.
fn check_trailer_at(f: &mut File, body_offset: u64, file_len: u64) -> io::Result<u64> {
    let Some(at) = file_len
        .checked_sub(TRAILER_LEN)
        .filter(|&at| at >= body_offset)
    else {
        return Err(bad_trailer());
    };
    let mut t = [0u8; TRAILER_LEN as usize];
    f.seek(SeekFrom::Start(at))?;
    f.read_exact(&mut t)?;
    parse_trailer(&t, body_offset, file_len)
}

/// The content length a trailer states, if it is a valid trailer for a
/// file of `file_len` octets whose content starts at `body_offset`.
fn parse_trailer(
    t: &[u8; TRAILER_LEN as usize],
    body_offset: u64,
    file_len: u64,
) -> io::Result<u64> {
    let (magic, rest) = t.split_at(TRAILER_MAGIC.len());
    let hex = rest
        .get(..16)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(bad_trailer)?;
    let len = u64::from_str_radix(hex, 16).map_err(|_| bad_trailer())?;
    if magic != TRAILER_MAGIC
        || t.last() != Some(&b'\n')
        // Checked: a damaged trailer may claim any length up to 2^64 - 1.
        || body_offset.checked_add(len).and_then(|n| n.checked_add(TRAILER_LEN)) != Some(file_len)
    {
        return Err(bad_trailer());
    }
    Ok(len)
}

/// One sync for everything on the spool's file system (data and directory
/// entries of the whole batch).
/// `syncfs(2)` for the file system `file` is on.
pub fn syncfs_fd(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: syncfs(2) on a descriptor we own.
    if unsafe { libc::syncfs(file.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tern-spool-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn env() -> StoredEnvelope {
        StoredEnvelope {
            id: QueueId(0),
            arrival: 1_795_000_000,
            sender: "a@b.test".into(),
            recipients: vec![
                envelope::Recipient {
                    dest: crate::delivery::Destination::Remote(
                        crate::smtp::address::Address::parse_mailbox("x@y.test").unwrap(),
                    ),
                    original: "x@y.test".into(),
                    dsn: Default::default(),
                },
                envelope::Recipient {
                    dest: crate::delivery::Destination::Local(
                        crate::delivery::Mailbox::new("root").unwrap(),
                    ),
                    original: "postmaster@localhost".into(),
                    dsn: Default::default(),
                },
            ],
            client: "helo [127.0.0.1]".into(),
            origin: crate::rewrite::SenderOrigin::Other,
            eight_bit: false,
            smtputf8: false,
            requiretls: false,
            dsn: Default::default(),
            body_offset: 0,
        }
    }

    #[test]
    fn commit_load_state_remove() {
        let dir = tempdir("commit");
        let mut spool = Spool::open(&dir, true).unwrap();
        let mut a = spool.create(&env()).unwrap();
        a.write(b"Subject: x\r\n\r\n\xe9t\xe9\r\n").unwrap();
        a.mark_eight_bit().unwrap();
        let b = spool.create(&env()).unwrap();
        assert_ne!(a.id, b.id);
        let (ida, idb) = (a.id, b.id);
        let res = spool.commit(vec![a, b]);
        assert!(res.iter().all(|r| r.is_ok()));
        let (e, states, attempts) = spool.load(ida).unwrap();
        assert_eq!(e.recipients.len(), 2);
        assert!(e.eight_bit);
        assert_eq!(attempts, 0);
        assert!(states.iter().all(|s| s.status == RcptStatus::Pending));
        let (mut f, len) = spool.open_content(ida).unwrap();
        // The trailer is not content.
        let mut content = Vec::new();
        f.read_to_end(&mut content).unwrap();
        assert_eq!(content, b"Subject: x\r\n\r\n\xe9t\xe9\r\n");
        assert_eq!(len, content.len() as u64);

        let mut states = states;
        use crate::delivery::outcome::{Outcome, Reason, Status};
        states[0] = RcptState::from_outcome(Outcome::Delivered {
            relay: "mx[192.0.2.1]:25".into(),
        });
        let later = Reason::remote(
            "mx[192.0.2.1]:25",
            451,
            Status::parse("4.3.0"),
            "try\nlater",
        );
        states[1] = RcptState::from_outcome(Outcome::Deferred(later));
        spool.save_state(ida, &states, 3, 7200).unwrap();
        let (_, s2, attempts) = spool.load(ida).unwrap();
        assert_eq!(attempts, 3);
        assert_eq!(spool.load_progress(ida).unwrap().1.age, 7200);
        assert_eq!(s2[0].status, RcptStatus::Sent);
        assert_eq!(
            s2[1].reason.as_ref().map(|r| r.to_string()).as_deref(),
            Some("mx[192.0.2.1]:25 said: 451 4.3.0 try later")
        );
        assert_eq!(spool.recover().unwrap(), {
            let mut v = vec![ida, idb];
            v.sort();
            v
        });
        spool.remove(ida).unwrap();
        assert_eq!(spool.list().unwrap(), vec![idb]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn commit_never_replaces_an_existing_message() {
        let dir = tempdir("noreplace");
        let mut spool = Spool::open(&dir, false).unwrap();
        let mut inc = spool.create(&env()).unwrap();
        inc.write(b"new message\r\n").unwrap();
        // Another writer (or an earlier boot) already holds this ID.
        let taken = dir.join("msg").join(inc.id.to_string());
        fs::write(&taken, b"acknowledged earlier").unwrap();
        let first = inc.id;
        let id = spool.commit(vec![inc]).pop().unwrap().unwrap();
        assert_ne!(id, first);
        assert_eq!(fs::read(&taken).unwrap(), b"acknowledged earlier");
        let (mut f, _) = spool.open_content(id).unwrap();
        let mut content = Vec::new();
        f.read_to_end(&mut content).unwrap();
        assert_eq!(content, b"new message\r\n");
        assert!(fs::read_dir(dir.join("tmp")).unwrap().next().is_none());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn ids_stay_unique_across_restarts_whatever_the_clock() {
        let dir = tempdir("ids");
        let mut all = Vec::new();
        // Three "boots" at the same second, then one with the clock behind.
        for arrival in [1_795_000_000, 1_795_000_000, 1_795_000_000, 1_000] {
            let mut spool = Spool::open(&dir, false).unwrap();
            spool.recover().unwrap();
            let mut e = env();
            e.arrival = arrival;
            for _ in 0..5 {
                let mut inc = spool.create(&e).unwrap();
                inc.write(b"x\r\n").unwrap();
                all.push(spool.commit(vec![inc]).pop().unwrap().unwrap());
            }
        }
        let mut listed = Spool::open(&dir, false).unwrap().list().unwrap();
        listed.sort();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 20);
        assert_eq!(listed, all, "every committed message is still there");
        // IDs follow arrival while the clock moves forward.
        let mut spool = Spool::open(&dir, false).unwrap();
        let mut e = env();
        e.arrival = 1_795_000_100;
        let a = spool.create(&e).unwrap().id;
        e.arrival = 1_795_000_101;
        let b = spool.create(&e).unwrap().id;
        assert!(a < b && a.0 >> 24 == 1_795_000_100, "{a} {b}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn symlinked_spool_directories_are_refused() {
        let dir = tempdir("symlinked");
        let outside = tempdir("symlinked-outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("precious"), b"x").unwrap();
        Spool::open(&dir, false).unwrap();
        fs::remove_dir(dir.join("tmp")).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("tmp")).unwrap();
        assert!(Spool::open(&dir, false).is_err());
        assert!(outside.join("precious").exists());
        let _ = fs::remove_dir_all(&dir);
        let _ = fs::remove_dir_all(&outside);
    }

    #[test]
    fn recovery_follows_the_state_table() {
        let dir = tempdir("recover");
        let mut spool = Spool::open(&dir, false).unwrap();
        let mut inc = spool.create(&env()).unwrap();
        inc.write(b"half a message").unwrap();
        // tmp/ID: not acknowledged -> deleted.
        fs::write(dir.join("state").join("0000000000000001"), b"attempts 1\n").unwrap();
        fs::write(dir.join("state").join("0000000000000002.new"), b"x").unwrap();
        fs::write(dir.join("msg").join("00000000000000FF"), b"garbage").unwrap();
        let ids = spool.recover().unwrap();
        assert!(ids.is_empty());
        assert_eq!(fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(dir.join("state")).unwrap().count(), 0);
        assert!(dir.join("corrupt").join("00000000000000FF").exists());
        // A committed-looking file whose data did not make it (crash before
        // the sync): no valid trailer, so it is set aside, not delivered.
        let mut inc = spool.create(&env()).unwrap();
        inc.write(b"complete content\r\n").unwrap();
        let id = inc.id;
        spool.commit(vec![inc]).pop().unwrap().unwrap();
        let path = dir.join("msg").join(id.to_string());
        let full = fs::read(&path).unwrap();
        fs::write(&path, &full[..full.len() - 10]).unwrap();
        assert!(spool.recover().unwrap().is_empty());
        assert!(dir.join("corrupt").join(id.to_string()).exists());
        // Idempotent.
        assert!(spool.recover().unwrap().is_empty());
        let _ = fs::remove_dir_all(&dir);
    }

    /// Recovery in bounded chunks (the daemon serves between them): every
    /// complete message is reported exactly once, in ID order, no chunk
    /// checks more than asked, a damaged one is set aside with its state
    /// and hold files, and one removed meanwhile (delivered or deleted
    /// after a control request) is skipped without a complaint.
    #[test]
    fn recovery_in_chunks_reports_everything_exactly_once() {
        let dir = tempdir("chunks");
        let mut spool = Spool::open(&dir, false).unwrap();
        let mut ids = Vec::new();
        for i in 0..10 {
            let mut inc = spool.create(&env()).unwrap();
            inc.write(format!("message {i}\r\n").as_bytes()).unwrap();
            ids.push(spool.commit(vec![inc]).pop().unwrap().unwrap());
        }
        ids.sort();
        let (damaged, deleted) = (ids[3], ids[7]);
        let path = dir.join("msg").join(damaged.to_string());
        let full = fs::read(&path).unwrap();
        fs::write(&path, &full[..full.len() - 5]).unwrap();
        spool
            .save_state(damaged, &[RcptState::default()], 1, 0)
            .unwrap();
        spool.hold(damaged).unwrap();
        let mut recovery = spool.recover_begin().unwrap();
        assert_eq!((recovery.listed(), recovery.remaining()), (10, 10));
        spool.remove(deleted).unwrap();
        let mut got = Vec::new();
        let mut steps = 0;
        loop {
            let mut visited = 0;
            let more = recovery.step(&spool, 3, |id, check| {
                visited += 1;
                if check() {
                    got.push(id);
                }
            });
            steps += 1;
            assert!(visited <= 3);
            if !more {
                break;
            }
        }
        assert_eq!(steps, 4);
        assert_eq!(recovery.remaining(), 0);
        let want: Vec<QueueId> = ids
            .iter()
            .copied()
            .filter(|id| *id != damaged && *id != deleted)
            .collect();
        assert_eq!(got, want);
        assert!(dir.join("corrupt").join(damaged.to_string()).exists());
        assert!(!dir.join("state").join(damaged.to_string()).exists());
        assert!(!spool.is_held(damaged));
        // The whole-at-once form agrees.
        assert_eq!(spool.recover().unwrap(), want);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn recovery_sets_aside_strays_without_replacing_and_keeps_mail_with_a_bad_state() {
        let dir = tempdir("strays");
        let mut spool = Spool::open(&dir, false).unwrap();
        let mut inc = spool.create(&env()).unwrap();
        inc.write(b"Subject: kept\r\n\r\nbody\r\n").unwrap();
        let id = inc.id;
        spool.commit(vec![inc]).pop().unwrap().unwrap();
        let msg = dir.join("msg");
        let corrupt = dir.join("corrupt");
        fs::write(msg.join("not-an-id"), b"x").unwrap();
        fs::write(corrupt.join("not-an-id"), b"set aside before").unwrap();
        fs::create_dir(msg.join("00000000000000AA")).unwrap();
        let fifo = std::ffi::CString::new(
            msg.join("00000000000000BB")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .unwrap();
        // SAFETY: mkfifo(3) with a valid C string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        fs::write(dir.join("state").join(id.to_string()), b"\xffgarbage").unwrap();

        // The FIFO is not opened (that would block), the message is kept.
        assert_eq!(spool.recover().unwrap(), vec![id]);
        assert_eq!(fs::read_dir(&msg).unwrap().count(), 1);
        assert_eq!(
            fs::read(corrupt.join("not-an-id")).unwrap(),
            b"set aside before"
        );
        assert_eq!(fs::read(corrupt.join("not-an-id.1")).unwrap(), b"x");
        assert!(corrupt.join("00000000000000AA").is_dir());
        assert!(corrupt.join("00000000000000BB").exists());
        assert!(corrupt.join(format!("{id}.state")).exists());
        let (_, progress) = spool.load_progress(id).unwrap();
        assert_eq!(progress.attempts, 0);
        assert!(progress
            .states
            .iter()
            .all(|s| s.status == RcptStatus::Pending));
        // The writability check leaves nothing behind in any directory.
        spool.check_writable().unwrap();
        assert_eq!(fs::read_dir(dir.join("drop")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(&msg).unwrap().count(), 1);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn content_reads_back_whole_or_not_at_all_on_either_side_of_the_first_read() {
        // Files that fit the first read (trailer checked in its buffer),
        // files that end just past it, a large one, and an envelope longer
        // than the first read (many recipients).
        let dir = tempdir("headread");
        let mut spool = Spool::open(&dir, false).unwrap();
        let mut long_env = env();
        for i in 0..200 {
            let mut r = long_env.recipients[0].clone();
            r.original = format!("recipient-number-{i}@y.test");
            long_env.recipients.push(r);
        }
        let cases: Vec<(StoredEnvelope, usize)> = vec![
            (env(), 0),
            (env(), 9),
            (env(), HEAD_READ - 400),
            (env(), HEAD_READ),
            (env(), HEAD_READ + 1),
            (env(), 100_000),
            (long_env, 50),
        ];
        for (e, size) in cases {
            let body: Vec<u8> = (0..size).map(|i| b"abcdefgh\r\n"[i % 10]).collect();
            let mut inc = spool.create(&e).unwrap();
            inc.write(&body).unwrap();
            let id = spool.commit(vec![inc]).pop().unwrap().unwrap();
            let (mut f, len) = spool.open_content(id).unwrap();
            let mut got = Vec::new();
            f.read_to_end(&mut got).unwrap();
            assert_eq!(len, size as u64);
            assert_eq!(got, body, "size {size}");
            // Cut anywhere in the trailer, or one octet more or less of
            // content: damage, never content.
            let path = dir.join("msg").join(id.to_string());
            let whole = fs::read(&path).unwrap();
            for cut in [1, TRAILER_LEN as usize - 1, TRAILER_LEN as usize] {
                fs::write(&path, &whole[..whole.len() - cut]).unwrap();
                assert!(spool.open_content(id).is_err(), "size {size}, cut {cut}");
            }
            let mut longer = whole.clone();
            longer.insert(whole.len() - TRAILER_LEN as usize, b'x');
            fs::write(&path, &longer).unwrap();
            let e = spool.open_content(id).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "size {size}");
            fs::write(&path, &whole).unwrap();
            assert_eq!(spool.open_content(id).unwrap().1, size as u64);
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_trailer_claiming_a_huge_length_is_damage_not_a_panic() {
        let dir = tempdir("hugetrailer");
        let mut spool = Spool::open(&dir, false).unwrap();
        let mut inc = spool.create(&env()).unwrap();
        inc.write(b"content\r\n").unwrap();
        let id = inc.id;
        spool.commit(vec![inc]).pop().unwrap().unwrap();
        let path = dir.join("msg").join(id.to_string());
        let mut bytes = fs::read(&path).unwrap();
        let at = bytes.len() - 17;
        bytes[at..at + 16].copy_from_slice(b"ffffffffffffffff");
        fs::write(&path, &bytes).unwrap();
        let e = spool.open_content(id).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(spool.recover().unwrap().is_empty());
        assert!(dir.join("corrupt").join(id.to_string()).exists());
        let _ = fs::remove_dir_all(&dir);
    }
}
