//! The drop directory: how local programs (`sendmail`) hand mail to the
//! daemon whether or not it is running.
//!
//! | file              | state                                   | who acts |
//! |-------------------|-----------------------------------------|----------|
//! | `drop/.NAME`      | being written by sendmail               | nobody (the daemon skips dot files; sendmail removes it on error) |
//! | `drop/NAME`       | complete and fsync'd: sendmail exited 0  | the daemon imports it into `tmp/` → `msg/`, then unlinks it |
//!
//! A drop file is `tern-drop 1`, `sender ADDR` (empty: `<>`), one
//! `rcpt ADDR` per recipient, an empty line, then the message as the
//! program gave it (LF or CRLF). The daemon re-validates everything in it as
//! it would for a remote client: addresses, size, hop count. Import is
//! idempotent up to the unlink: a crash between commit and unlink can give a
//! duplicate, never a loss.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

const MAGIC: &str = "tern-drop 1";
/// Readable by the daemon whatever user it runs as; the directory is not
/// listable and the names are random, so other users cannot find it.
pub const DROP_FILE_MODE: u32 = 0o644;
/// A drop header larger than this is refused.
pub const MAX_DROP_HEADER: usize = 64 * 1024;

pub struct DropWriter {
    file: File,
    tmp: PathBuf,
    done: PathBuf,
}

impl DropWriter {
    pub fn create(spool_root: &Path, sender: &str, rcpts: &[String]) -> io::Result<DropWriter> {
        let dir = spool_root.join("drop");
        let mut n = 0u32;
        loop {
            let name = format!(
                "{}.{}.{:016x}",
                crate::daemon::unix_now(),
                std::process::id(),
                crate::random::u64()?
            );
            let tmp = dir.join(format!(".{name}"));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
            {
                Ok(mut file) => {
                    let mut head = format!("{MAGIC}\nsender {}\n", flat(sender));
                    for r in rcpts {
                        head.push_str(&format!("rcpt {}\n", flat(r)));
                    }
                    head.push('\n');
                    if let Err(e) = file.write_all(head.as_bytes()) {
                        let _ = fs::remove_file(&tmp);
                        return Err(e);
                    }
                    return Ok(DropWriter {
                        file,
                        tmp,
                        done: dir.join(name),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => return Err(e),
            }
        }
    }

    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data).inspect_err(|_| {
            let _ = fs::remove_file(&self.tmp);
        })
    }

    /// Makes the drop durable and visible to the daemon.
    pub fn commit(self, sync: bool) -> io::Result<PathBuf> {
        let r = (|| {
            if sync {
                self.file.sync_all()?;
            }
            fs::rename(&self.tmp, &self.done)?;
            if sync {
                // drop/ is not readable by most users, so it cannot be opened
                // to fsync it; syncfs through the file reaches the entry too.
                super::syncfs_fd(&self.file)?;
            }
            Ok(())
        })();
        if r.is_err() {
            let _ = fs::remove_file(&self.tmp);
        }
        r.map(|_| self.done.clone())
    }
}

impl Drop for DropWriter {
    fn drop(&mut self) {
        // Not committed (error path): remove the partial file.
        if self.tmp.exists() && !self.done.exists() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
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
    let end = loop {
        let n = file.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("truncated drop file".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(2).position(|w| w == b"\n\n") {
            break p;
        }
        if buf.len() > MAX_DROP_HEADER {
            return Err("drop header too large".into());
        }
    };
    file.seek(SeekFrom::Start((end + 2) as u64))
        .map_err(|e| e.to_string())?;
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| "drop header is not UTF-8")?;
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
mod tests {
    use super::*;

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
