//! Replacing the refresh token file atomically, when the provider rotates
//! the refresh token or `tern oauth login` gets a new one.
//!
//! Why atomic: a rotated refresh token may be the only one that still
//! works; a crash or a full disk mid-write must leave the old file or the
//! new one, never half of either. So: a temporary file in the same
//! directory (`.NAME.tern-tmp`, created `O_EXCL | O_NOFOLLOW`, mode 0600),
//! the token and a newline written and `fsync`ed, the old file's owner and
//! group given to it, `rename(2)` over the old name, and the directory
//! `fsync`ed so the rename survives a power cut.
//!
//! The owner is kept when the writer may (root, or the owner itself);
//! otherwise the new file belongs to the writer (the token matters more
//! than its owner). The mode is always 0600. A symbolic link at the name
//! is replaced by a file, not followed. A stale temporary file (a crash
//! between create and rename) is removed and created again.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

/// Mode of a written secret file.
pub const SECRET_MODE: u32 = 0o600;

/// Writes `line` and a newline to `path`, replacing the file atomically.
pub fn replace_secret_line(path: &Path, line: &str) -> io::Result<()> {
    if line.contains(['\n', '\r']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a secret line holds no line end",
        ));
    }
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let dir: PathBuf = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tern-tmp");
    let tmp = dir.join(&tmp_name);
    let owner = std::fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| (m.uid(), m.gid()));
    let mut file = match create(&tmp) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(&tmp)?;
            create(&tmp)?
        }
        other => other?,
    };
    let written = (|| {
        file.write_all(line.as_bytes())?;
        file.write_all(b"\n")?;
        std::os::unix::fs::fchown(&file, owner.map(|o| o.0), owner.map(|o| o.1)).or_else(|e| {
            match e.raw_os_error() {
                Some(libc::EPERM) => Ok(()),
                _ => Err(e),
            }
        })?;
        // After fchown (which may clear set-id bits; none here) and
        // whatever the umask did at create.
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(SECRET_MODE))?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(&dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

fn create(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(SECRET_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn replaces_the_file_with_mode_0600() {
        let dir = crate::test_dir::TempDir::new("secret-file");
        let path = dir.0.join("refresh");
        std::fs::write(&path, "old\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        replace_secret_line(&path, "1//new-token").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1//new-token\n");
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("refresh")]);
        // A new file, and a stale temporary file from a crash.
        let fresh = dir.0.join("fresh");
        std::fs::write(dir.0.join(".fresh.tern-tmp"), "half").unwrap();
        replace_secret_line(&fresh, "t").unwrap();
        assert_eq!(std::fs::read_to_string(&fresh).unwrap(), "t\n");
        assert!(!dir.0.join(".fresh.tern-tmp").exists());
    }

    #[test]
    fn a_symlink_is_replaced_not_followed() {
        let dir = crate::test_dir::TempDir::new("secret-link");
        let target = dir.0.join("target");
        std::fs::write(&target, "keep\n").unwrap();
        let link = dir.0.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        replace_secret_line(&link, "new").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep\n");
        assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
    }

    #[test]
    fn refuses_line_ends_and_reports_a_missing_directory() {
        let dir = crate::test_dir::TempDir::new("secret-bad");
        let path = dir.0.join("f");
        assert!(replace_secret_line(&path, "a\nb").is_err());
        assert!(!path.exists());
        assert!(replace_secret_line(&dir.0.join("no/such/f"), "a").is_err());
    }
}
