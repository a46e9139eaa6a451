//! Local delivery into a Maildir (the default `local_delivery`).
//!
//! Maildir needs no locks: a message is written whole under `tmp/` and then
//! appears in `new/` with one atomic directory operation, so a reader never
//! sees half a message and a crash leaves at most a stale file in `tmp/`.
//!
//! Rules: qmail's maildir(5) (`tmp/` → `new/`, unique names
//! `secs.M<usec>P<pid>Q<seq>.host` with `/` and `:` in the host escaped as
//! `\057` and `\072`, `:` being the info separator), and qmail-local's
//! ordering for durability: write, fsync the file, link into `new/`, fsync
//! `new/` (SPEC "Store": a delivery reported done survives a crash).
//!
//! Invariants:
//! - `new/<unique>` is never overwritten: the move is `link(2)`, which fails
//!   if the name exists (`renameat2(RENAME_NOREPLACE)` as a fallback on file
//!   systems without hard links).
//! - No symlink below `mail_dir` is followed: the mailbox, `tmp/`, `new/`
//!   and `cur/` are opened `O_NOFOLLOW` relative to their parent's
//!   descriptor (`safe_fs`), so `mail/user -> /etc` or `mail/user/new ->
//!   /root` is refused (a temporary failure the runner logs) instead of
//!   writing as tern's user, or root, wherever it points.
//! - Files hold LF line endings (the Unix convention mail readers expect;
//!   the spool holds CRLF), converted while streaming (`delivery::lf`).
//! - `Ok` means the message is in `new/` (and durable when `sync`); `Err`
//!   means it is not, and the `tmp/` file this call created is removed.
//!   A `tmp/<unique>` that existed before the call is never removed.
//!
//! Not supported: Maildir++ quotas and folders, the `cur/` info suffix
//! (readers set it), chown to the mailbox owner (tern writes as its own user).

use std::ffi::OsStr;
use std::fs::{DirBuilder, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::lf::CrlfToLf;
use crate::safe_fs::Dir;

/// Mode of created Maildir directories.
pub const MAILDIR_DIR_MODE: u32 = 0o700;
/// Mode of delivered message files.
pub const MAILDIR_FILE_MODE: u32 = 0o600;

/// Streams `content` (e.g. `Return-Path:` and `Delivered-To:` headers
/// chained before the stored message) into `mailbox_dir/new/<unique>` with
/// LF line endings (see `delivery::lf`) and returns that path, in one go
/// (the daemon uses [`MaildirWrite`] a bounded step at a time; this is the
/// same sequence driven to the end). Creates `tmp/`, `new/` and `cur/` if
/// missing. The parent of `mailbox_dir` (the configured `mail_dir`) is
/// trusted; the mailbox and its subdirectories are never followed if they
/// are symlinks: such a mailbox is an error (the caller defers and logs),
/// never a write elsewhere.
pub fn deliver_maildir(
    mailbox_dir: &Path,
    content: &mut dyn Read,
    unique: &str,
    sync: bool,
) -> io::Result<PathBuf> {
    let mut w = MaildirWrite::begin(mailbox_dir, Box::new(content), unique, sync)?;
    while !w.pump(&mut usize::MAX.clone())? {}
    if sync {
        w.sync_data()?;
    }
    w.publish()?;
    if sync {
        w.sync_entries()?;
    }
    Ok(w.finish())
}

/// Where a [`MaildirWrite`] is; what `Drop` must undo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// The message is (being) written under `tmp/`.
    Tmp,
    /// Linked into `new/`, the directory not yet synced.
    New,
    /// Reported delivered: nothing to undo.
    Done,
}

/// One Maildir delivery in steps, so a large message never holds the loop:
/// [`begin`](Self::begin) (directories, the `tmp/` file), then
/// [`pump`](Self::pump) with a byte budget until it returns true, then
/// [`sync_data`](Self::sync_data) (or a `syncfs` that covers it),
/// [`publish`](Self::publish) (`tmp/` → `new/`),
/// [`sync_entries`](Self::sync_entries) (or again a `syncfs`), and
/// [`finish`](Self::finish). Dropped before
/// `finish` (an error, a shutdown), it removes what it created: the
/// `tmp/` file, or the `new/` entry not yet durable.
pub struct MaildirWrite<'a> {
    mailbox_dir: PathBuf,
    tmp: Dir,
    new: Dir,
    /// The mailbox and `mail_dir`, when `begin` created directories: their
    /// new entries must be durable before the message is reported.
    created: Option<(Dir, Dir)>,
    unique: std::ffi::OsString,
    file: File,
    input: CrlfToLf<Box<dyn Read + 'a>>,
    buf: Box<[u8]>,
    written: u64,
    stage: Stage,
}

impl<'a> MaildirWrite<'a> {
    /// Makes the mailbox directories (synced when new and `sync`) and
    /// creates `tmp/<unique>`.
    pub fn begin(
        mailbox_dir: &Path,
        content: Box<dyn Read + 'a>,
        unique: &str,
        sync: bool,
    ) -> io::Result<MaildirWrite<'a>> {
        if unique.is_empty() || unique == "." || unique == ".." || unique.contains(['/', '\0']) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad maildir name {unique:?}"),
            ));
        }
        let (Some(name), Some(parent)) = (mailbox_dir.file_name(), mailbox_dir.parent()) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad mailbox path {}", mailbox_dir.display()),
            ));
        };
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        if !parent.is_dir() {
            // The configured mail_dir (trusted), made on first delivery.
            DirBuilder::new()
                .recursive(true)
                .mode(MAILDIR_DIR_MODE)
                .create(parent)?;
        }
        // Search permission is all a Maildir delivery needs in mail_dir (and
        // all the old path-based code needed); read it when allowed, for the
        // directory sync below.
        let root = match Dir::open(parent) {
            Err(e) if e.raw_os_error() == Some(libc::EACCES) => Dir::open_search(parent)?,
            r => r?,
        };
        let (mailbox, mut created) = root.sub_or_create(name, MAILDIR_DIR_MODE)?;
        let mut sub = |n: &str| -> io::Result<Dir> {
            let (d, new) = mailbox.sub_or_create(OsStr::new(n), MAILDIR_DIR_MODE)?;
            created |= new;
            Ok(d)
        };
        let (tmp, new, _cur) = (sub("tmp")?, sub("new")?, sub("cur")?);
        // New directory entries must be durable before the message is
        // reported delivered: synced with the `new/` entry (one journal
        // commit for all of them instead of one more per directory here).
        let created = (sync && created).then_some((mailbox, root));
        let unique = OsStr::new(unique).to_os_string();
        let file = tmp.create_file(&unique, MAILDIR_FILE_MODE)?;
        // From here on the tmp file is ours: `Drop` removes it on failure.
        Ok(MaildirWrite {
            mailbox_dir: mailbox_dir.to_path_buf(),
            tmp,
            new,
            created,
            unique,
            file,
            input: CrlfToLf::new(content),
            buf: vec![0; MAILDIR_COPY_BUFFER].into_boxed_slice(),
            written: 0,
            stage: Stage::Tmp,
        })
    }

    /// Copies content into the `tmp/` file while `budget` lasts (at most
    /// one buffer past it), taking what it moved off `budget`; true once
    /// the whole content is there.
    pub fn pump(&mut self, budget: &mut usize) -> io::Result<bool> {
        while *budget > 0 {
            let n = self.input.read(&mut self.buf)?;
            if n == 0 {
                return Ok(true);
            }
            (&self.file).write_all(self.buf.get(..n).unwrap_or_default())?;
            self.written += n as u64;
            *budget = budget.saturating_sub(n);
        }
        Ok(false)
    }

    /// Octets written to the file so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The message file (for a `syncfs` that covers it).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// `fsync` of the message file.
    pub fn sync_data(&self) -> io::Result<()> {
        self.file.sync_all()
    }

    /// Moves the written message from `tmp/` into `new/` (see
    /// `move_into_new`); durable once `new/` is synced.
    pub fn publish(&mut self) -> io::Result<()> {
        move_into_new(&self.tmp, &self.new, &self.unique, &self.mailbox_dir)?;
        self.stage = Stage::New;
        Ok(())
    }

    /// Makes the `new/` entry durable (after [`publish`](Self::publish)),
    /// and the directories `begin` created.
    pub fn sync_entries(&self) -> io::Result<()> {
        self.new.sync()?;
        if let Some((mailbox, root)) = &self.created {
            mailbox.sync()?;
            root.sync()?;
        }
        Ok(())
    }

    /// Delivered: keeps the message and says where it is.
    pub fn finish(mut self) -> PathBuf {
        self.stage = Stage::Done;
        self.mailbox_dir.join("new").join(&self.unique)
    }
}

impl Drop for MaildirWrite<'_> {
    fn drop(&mut self) {
        match self.stage {
            Stage::Tmp => remove_quietly(&self.tmp, &self.unique, &self.mailbox_dir, "tmp"),
            // Not durable: take the message back so a retry does not
            // deliver it twice.
            Stage::New => remove_quietly(&self.new, &self.unique, &self.mailbox_dir, "new"),
            Stage::Done => {}
        }
    }
}

/// Octets copied per read/write while streaming into a Maildir file.
pub const MAILDIR_COPY_BUFFER: usize = 64 * 1024;

/// The maildir(5) unique name `secs.M<micros>P<pid>Q<seq>.<host>`. The host
/// has `/` replaced by `\057` and `:` by `\072`; an empty host becomes
/// `localhost`.
pub fn unique_name(now_secs: u64, now_micros: u32, pid: u32, seq: u64, hostname: &str) -> String {
    let mut host = String::with_capacity(hostname.len());
    for c in hostname.chars() {
        match c {
            '/' => host.push_str("\\057"),
            ':' => host.push_str("\\072"),
            c if c.is_control() => {}
            c => host.push(c),
        }
    }
    if host.is_empty() {
        host.push_str("localhost");
    }
    format!("{now_secs}.M{now_micros}P{pid}Q{seq}.{host}")
}

/// `link` then `unlink` (qmail); where hard links are unsupported, a
/// rename that cannot replace (`renameat2(RENAME_NOREPLACE)`).
fn move_into_new(tmp: &Dir, new: &Dir, unique: &OsStr, mailbox_dir: &Path) -> io::Result<()> {
    match tmp.link(unique, new, unique) {
        Ok(()) => {
            if let Err(e) = tmp.unlink(unique) {
                // Delivered; a stale tmp file is harmless.
                log::warn!(
                    "maildir: cannot remove {}: {e}",
                    mailbox_dir.join("tmp").join(unique).display()
                );
            }
            Ok(())
        }
        Err(e) if link_unsupported(&e) => tmp.rename_noreplace(unique, new, unique),
        Err(e) => Err(e),
    }
}

fn link_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPERM | libc::EOPNOTSUPP | libc::EXDEV | libc::EMLINK)
    )
}

fn remove_quietly(dir: &Dir, name: &OsStr, mailbox_dir: &Path, sub: &str) {
    if let Err(e) = dir.unlink(name) {
        if e.kind() != io::ErrorKind::NotFound {
            log::warn!(
                "maildir: cannot remove {}: {e}",
                mailbox_dir.join(sub).join(name).display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    /// A fresh directory under the system temp dir, removed on drop.
    use crate::test_dir::TempDir;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn delivers_exact_bytes_into_new() {
        let tmp = TempDir::new("exact");
        let mailbox = tmp.0.join("alice");
        let parts: [&[u8]; 3] = [
            b"Return-Path: <bob@example.com>\n",
            b"Delivered-To: alice@router.lan\n",
            b"Subject: hi\r\n\r\nbody\r\n",
        ];
        for sync in [true, false] {
            let unique = format!("1795830910.M1P42Q{}.router", u8::from(sync));
            let path = deliver_maildir(&mailbox, &mut &parts.concat()[..], &unique, sync)
                .expect("deliver");
            assert_eq!(path, mailbox.join("new").join(&unique));
            // Line endings are LF in the mailbox.
            assert_eq!(
                fs::read(&path).expect("read"),
                b"Return-Path: <bob@example.com>\nDelivered-To: alice@router.lan\nSubject: hi\n\nbody\n"
            );
            let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
            assert_eq!(mode, MAILDIR_FILE_MODE);
        }
        assert_eq!(names(&mailbox), ["cur", "new", "tmp"]);
        assert!(names(&mailbox.join("tmp")).is_empty());
        assert!(names(&mailbox.join("cur")).is_empty());
        assert_eq!(names(&mailbox.join("new")).len(), 2);
        let mode = fs::metadata(mailbox.join("new"))
            .expect("stat")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, MAILDIR_DIR_MODE);
    }

    #[test]
    fn existing_name_in_new_is_not_clobbered() {
        let tmp = TempDir::new("clobber");
        let mailbox = tmp.0.join("bob");
        deliver_maildir(&mailbox, &mut &b"first"[..], "same", true).expect("first");
        let err =
            deliver_maildir(&mailbox, &mut &b"second"[..], "same", true).expect_err("must fail");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(mailbox.join("new/same")).expect("read"), b"first");
        assert!(names(&mailbox.join("tmp")).is_empty(), "tmp file removed");
    }

    #[test]
    fn existing_name_in_tmp_is_left_alone() {
        let tmp = TempDir::new("tmpbusy");
        let mailbox = tmp.0.join("carol");
        fs::create_dir_all(mailbox.join("tmp")).expect("mkdir");
        fs::write(mailbox.join("tmp/busy"), b"other writer").expect("write");
        let err =
            deliver_maildir(&mailbox, &mut &b"mine"[..], "busy", false).expect_err("must fail");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(
            fs::read(mailbox.join("tmp/busy")).expect("read"),
            b"other writer"
        );
        assert!(names(&mailbox.join("new")).is_empty());
    }

    #[test]
    fn failed_move_removes_tmp_file() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            return; // root ignores directory permissions
        }
        let tmp = TempDir::new("readonly");
        let mailbox = tmp.0.join("dave");
        deliver_maildir(&mailbox, &mut &b"ok"[..], "one", false).expect("first");
        fs::set_permissions(mailbox.join("new"), fs::Permissions::from_mode(0o500)).expect("chmod");
        let result = deliver_maildir(&mailbox, &mut &b"x"[..], "two", true);
        fs::set_permissions(mailbox.join("new"), fs::Permissions::from_mode(0o700)).expect("chmod");
        assert_eq!(
            result.expect_err("must fail").kind(),
            io::ErrorKind::PermissionDenied
        );
        assert!(names(&mailbox.join("tmp")).is_empty(), "tmp file removed");
        assert_eq!(names(&mailbox.join("new")), ["one"]);
    }

    #[test]
    fn symlinked_mailbox_or_subdirectory_is_refused() {
        let tmp = TempDir::new("symlink");
        let elsewhere = tmp.0.join("elsewhere");
        fs::create_dir_all(elsewhere.join("new")).expect("mkdir");
        // mail/eve -> elsewhere
        std::os::unix::fs::symlink(&elsewhere, tmp.0.join("eve")).expect("symlink");
        let err = deliver_maildir(&tmp.0.join("eve"), &mut &b"m"[..], "u1", false)
            .expect_err("must refuse");
        assert!(err.to_string().contains("symlink"), "{err}");
        // mail/mallory/new -> elsewhere/new
        let mailbox = tmp.0.join("mallory");
        fs::create_dir_all(mailbox.join("tmp")).expect("mkdir");
        std::os::unix::fs::symlink(elsewhere.join("new"), mailbox.join("new")).expect("symlink");
        deliver_maildir(&mailbox, &mut &b"m"[..], "u2", false).expect_err("must refuse");
        assert!(
            names(&elsewhere).iter().all(|n| n == "new"),
            "{:?}",
            names(&elsewhere)
        );
        assert!(names(&elsewhere.join("new")).is_empty());
        assert!(names(&mailbox.join("tmp")).is_empty());
    }

    #[test]
    fn bad_unique_names_are_refused() {
        let tmp = TempDir::new("badname");
        for bad in ["", ".", "..", "a/b", "../x", "a\0b"] {
            let err = deliver_maildir(&tmp.0, &mut &b"x"[..], bad, false).expect_err(bad);
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn unique_name_format() {
        assert_eq!(
            unique_name(1_795_830_910, 123_456, 4242, 7, "router.lan"),
            "1795830910.M123456P4242Q7.router.lan"
        );
        assert_eq!(unique_name(1, 0, 1, 0, "a/b:c"), "1.M0P1Q0.a\\057b\\072c");
        assert_eq!(unique_name(1, 0, 1, 0, ""), "1.M0P1Q0.localhost");
        assert!(!unique_name(1, 0, 1, 0, "x\ny").contains('\n'));
    }
}
