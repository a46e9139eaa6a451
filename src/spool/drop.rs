//! The drop directory: how local programs (`sendmail`) hand mail to the
//! daemon whether or not it is running.
//!
//! | file              | state                                   | who acts |
//! |-------------------|-----------------------------------------|----------|
//! | `drop/.NAME`      | being written by sendmail               | nobody (the daemon skips dot files; sendmail removes it on error) |
//! | `drop/NAME`       | complete and fsync'd: sendmail exited 0  | the daemon imports it into `tmp/`, renames it to `NAME+ID`, commits `msg/ID`, then unlinks it |
//! | `drop/NAME+ID`    | claimed for queue ID `ID` by an import    | at the next scan: unlinked if `msg/ID` exists (committed, the unlink was lost), else imported again |
//!
//! ## Who can read a drop
//!
//! The daemon may run as another user than the submitter: root's cron
//! mail goes to a daemon running as `user = tern`, and any local user's
//! mail to a daemon running as root or as `tern`. The daemon drops its
//! privileges at start, so it cannot read a 0600 file of another user. A
//! drop file is therefore made readable by everyone ([`DROP_FILE_MODE`],
//! 0644, set with `fchmod` so that the submitter's umask cannot narrow
//! it), and what keeps other local users out is that they cannot find it:
//! `drop/` is 1733 (no read permission for others: no `readdir`, no
//! inotify watch), its files carry 64 random bits from the system's random
//! source in their names (and the submitter's pid and time), the name is
//! printed only to the submitter (`-v`), and a drop lives until the daemon
//! imports it (within a second while it runs). Guessing a name is 2^64
//! tries of a `stat` each. `corrupt/` (where a bad drop is set aside) is
//! 0700. Rejected alternatives: chowning the file to the spool owner would
//! need root (only root's drops could be fixed) and would lose the
//! submitting uid the daemon reports; a setgid helper is more than a
//! router needs.
//!
//! The file is created through a descriptor of `drop/` opened `O_NOFOLLOW`
//! (root's sendmail never writes through a symlink the spool owner
//! planted), `O_EXCL`, and published with a rename that cannot replace
//! (`safe_fs`).
//!
//! A drop file is `tern-drop 1`, `sender ADDR` (empty: `<>`), one
//! `rcpt ADDR` per recipient, an empty line, then the message as the
//! program gave it (LF or CRLF). The daemon re-validates everything in it as
//! it would for a remote client: addresses, size, hop count. A kill or a
//! power loss between the commit and the unlink gives no duplicate: the
//! claim names the queue file, and `drop/` is synced after the claims and
//! before the commit (`Spool::sync_drop_claims`), so a committed message
//! never has its drop back under the old name.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::safe_fs::Dir;

const MAGIC: &str = "tern-drop 1";
/// Readable by the daemon whatever user it runs as; the directory is not
/// listable and the names are random, so other users cannot find it (see
/// "Who can read a drop").
pub const DROP_FILE_MODE: u32 = 0o644;
/// A drop header larger than this is refused.
pub const MAX_DROP_HEADER: usize = 64 * 1024;

pub struct DropWriter {
    file: File,
    dir: Dir,
    tmp: OsString,
    name: OsString,
    done: PathBuf,
    committed: bool,
}

impl DropWriter {
    pub fn create(spool_root: &Path, sender: &str, rcpts: &[String]) -> io::Result<DropWriter> {
        // Search access only: other users may not read the root or drop/.
        let dir = Dir::open_search(spool_root)?.sub_search(OsStr::new("drop"))?;
        let mut n = 0u32;
        loop {
            // 64 random bits, or no drop at all: the name's secrecy is
            // what protects a 0644 drop file from other local users.
            let name = format!(
                "{}.{}.{:016x}",
                crate::daemon::unix_now(),
                std::process::id(),
                crate::random::u64()?
            );
            let tmp = OsString::from(format!(".{name}"));
            match dir.create_file(&tmp, DROP_FILE_MODE) {
                Ok(mut file) => {
                    let mut head = format!("{MAGIC}\nsender {}\n", flat(sender));
                    for r in rcpts {
                        head.push_str(&format!("rcpt {}\n", flat(r)));
                    }
                    head.push('\n');
                    // Exactly DROP_FILE_MODE whatever the umask (see the module doc).
                    let written = file
                        .set_permissions(fs::Permissions::from_mode(DROP_FILE_MODE))
                        .and_then(|()| file.write_all(head.as_bytes()));
                    if let Err(e) = written {
                        let _ = dir.unlink(&tmp);
                        return Err(e);
                    }
                    return Ok(DropWriter {
                        file,
                        done: spool_root.join("drop").join(&name),
                        dir,
                        tmp,
                        name: OsString::from(name),
                        committed: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => return Err(e),
            }
        }
    }

    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data).inspect_err(|_| {
            let _ = self.dir.unlink(&self.tmp);
        })
    }

    /// Makes the drop durable and visible to the daemon.
    pub fn commit(mut self, sync: bool) -> io::Result<PathBuf> {
        let r = (|| {
            if sync {
                self.file.sync_all()?;
            }
            self.dir
                .rename_noreplace(&self.tmp, &self.dir, &self.name)?;
            if sync {
                // drop/ is not readable by most users, so it cannot be opened
                // to fsync it; syncfs through the file reaches the entry too.
                super::syncfs_fd(&self.file)?;
            }
            Ok(())
        })();
        match r {
            Ok(()) => {
                self.committed = true;
                Ok(self.done.clone())
            }
            Err(e) => Err(e),
        }
    }
}

impl Drop for DropWriter {
    fn drop(&mut self) {
        // Not committed (error path): remove the partial file.
        if !self.committed {
            let _ = self.dir.unlink(&self.tmp);
        }
    }
}

/// Separates a drop's name from the queue ID it is claimed for (drop names
/// never contain it).
pub const CLAIM_MARK: char = '+';

/// Renames `drop/NAME` (or `drop/NAME+OLD`) to `drop/NAME+ID` before its
/// commit as queue ID `id`; returns the new path.
pub fn claim(path: &Path, id: crate::spool::QueueId) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let base = name.split(CLAIM_MARK).next().unwrap_or_default();
    let to = path.with_file_name(format!("{base}{CLAIM_MARK}{id}"));
    crate::safe_fs::rename_noreplace(path, &to)?;
    Ok(to)
}

/// The queue ID a drop was claimed for, if any.
pub fn claimed_id(path: &Path) -> Option<crate::spool::QueueId> {
    let name = path.file_name()?.to_str()?;
    let (_, id) = name.rsplit_once(CLAIM_MARK)?;
    id.parse().ok()
}

/// Complete drops, oldest first.
pub fn list(spool_root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(spool_root.join("drop"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub struct DropHeader {
    pub sender: String,
    pub recipients: Vec<String>,
}

/// Reads the header and leaves `file` positioned at the message.
pub fn read_header(file: &mut File) -> Result<DropHeader, String> {
    use std::io::{Seek, SeekFrom};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head, body_offset) = loop {
        let n = file.read(&mut chunk).map_err(|e| e.to_string())?;
        let Some(got) = chunk.get(..n).filter(|got| !got.is_empty()) else {
            return Err("truncated drop file".into());
        };
        buf.extend_from_slice(got);
        if let Some(split) = super::envelope::split_head(&buf) {
            break split;
        }
        if buf.len() > MAX_DROP_HEADER {
            return Err("drop header too large".into());
        }
    };
    file.seek(SeekFrom::Start(body_offset))
        .map_err(|e| e.to_string())?;
    let text = std::str::from_utf8(head).map_err(|_| "drop header is not UTF-8")?;
    let mut lines = text.split('\n');
    if lines.next() != Some(MAGIC) {
        return Err("not a tern drop file".into());
    }
    let mut h = DropHeader {
        sender: String::new(),
        recipients: Vec::new(),
    };
    for line in lines {
        match line.split_once(' ').unwrap_or((line, "")) {
            ("sender", v) => h.sender = v.to_string(),
            ("rcpt", v) => h.recipients.push(v.to_string()),
            (k, _) => return Err(format!("unknown drop line {k:?}")),
        }
    }
    if h.recipients.is_empty() {
        return Err("drop file without recipients".into());
    }
    Ok(h)
}

/// Opens a drop file for import without trusting it: no symlinks, a
/// regular file with a single link (not someone's hard link to a file they
/// could not read), at most `max_len` bytes.
pub fn open_for_import(path: &Path, max_len: u64) -> io::Result<(File, u32)> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt as _};
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.nlink() != 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a plain drop file",
        ));
    }
    if meta.len() > max_len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "drop file too large",
        ));
    }
    Ok((file, meta.uid()))
}

fn flat(s: &str) -> String {
    s.chars().filter(|c| *c != '\n' && *c != '\r').collect()
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)]
mod tests {
    use super::*;

    #[test]
    fn claims_name_the_queue_id() {
        let root = std::env::temp_dir().join(format!("tern-claim-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("drop")).unwrap();
        let path = root.join("drop").join("1796000000.42.00112233aabbccdd");
        fs::write(&path, b"x").unwrap();
        assert_eq!(claimed_id(&path), None);
        let id = crate::spool::QueueId(0x006B_1056_C175_3750);
        let claimed = claim(&path, id).unwrap();
        assert!(!path.exists());
        assert_eq!(
            claimed.file_name().unwrap().to_str().unwrap(),
            "1796000000.42.00112233aabbccdd+006B1056C1753750"
        );
        assert_eq!(claimed_id(&claimed), Some(id));
        assert_eq!(list(&root), vec![claimed.clone()]);
        // A re-claim keeps the drop's own name.
        let id2 = crate::spool::QueueId(0x006B_1056_C175_3751);
        let again = claim(&claimed, id2).unwrap();
        assert_eq!(claimed_id(&again), Some(id2));
        assert!(again
            .to_str()
            .unwrap()
            .ends_with("00112233aabbccdd+006B1056C1753751"));
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn write_list_read() {
        let root = std::env::temp_dir().join(format!("tern-drop-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("drop")).unwrap();
        let mut w =
            DropWriter::create(&root, "root@host", &["a@b.test".into(), "c\n@d".into()]).unwrap();
        assert!(list(&root).is_empty(), "in-progress drops are invisible");
        w.write(b"Subject: x\n\nbody\n").unwrap();
        let path = w.commit(false).unwrap();
        assert_eq!(list(&root), vec![path.clone()]);
        let mut f = File::open(&path).unwrap();
        let h = read_header(&mut f).unwrap();
        assert_eq!(h.sender, "root@host");
        assert_eq!(h.recipients, vec!["a@b.test", "c@d"]);
        let mut rest = Vec::new();
        f.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"Subject: x\n\nbody\n");
        let _ = fs::remove_dir_all(&root);
    }
}
