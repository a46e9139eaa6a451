//! File operations that never replace an existing file and never follow a
//! symbolic link below a trusted directory.
//!
//! Why: tern runs as root at start (it chowns the spool and mail
//! directories before dropping privileges) and, without `user =`, all the
//! time. Whoever can write `spool_dir` or `mail_dir` (the tern account
//! itself, or a local user on a shared `/var/mail`) could plant
//! `mail/x -> /etc` and have root chown, write or remove files there. So
//! below a directory the administrator configured (which is trusted and
//! may itself be a symlink), every component is opened relative to its
//! parent's descriptor with `O_NOFOLLOW` (`openat(2)`), and files are
//! created `O_EXCL`, linked with `linkat(2)` and renamed with
//! `renameat2(RENAME_NOREPLACE)`. A path is never re-resolved between a
//! check and the operation (no `lstat`-then-`open` races).
//!
//! A commit never replaces an existing file: [`rename_noreplace`] is
//! `renameat2(RENAME_NOREPLACE)`, or `link(2)` + `unlink(2)` where the
//! kernel or the file system does not support the flag (`EINVAL`,
//! `ENOSYS`: Linux before 3.15, some FUSE file systems). Both fail with
//! `EEXIST` instead of replacing. A file system with neither (vfat) is
//! refused: the spool and Maildirs need Unix semantics anyway.
//!
//! Linux only (`renameat2`, `O_PATH`, `AT_EMPTY_PATH`), like the rest of
//! tern.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

fn cstr(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file name contains a NUL byte"))
}

/// Paths up to this many octets become C strings on the stack.
const STACK_PATH: usize = 384;

/// Calls `f` with `s` as a C string: on the stack when it is short (as std
/// does for its own calls), else allocated.
fn with_cstr<T>(s: &OsStr, f: impl FnOnce(&CStr) -> io::Result<T>) -> io::Result<T> {
    let bytes = s.as_bytes();
    let mut buf = [0u8; STACK_PATH];
    match buf.get_mut(..=bytes.len()) {
        Some(dst) => {
            let (text, nul) = dst.split_at_mut(bytes.len());
            text.copy_from_slice(bytes);
            nul.fill(0);
            let c = CStr::from_bytes_with_nul(dst).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "file name contains a NUL byte")
            })?;
            f(c)
        }
        None => f(&cstr(s)?),
    }
}

/// A single path component: no `/`, not empty, not `.` or `..`.
fn component(name: &OsStr) -> io::Result<CString> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad file name {:?}", name),
        ));
    }
    cstr(name)
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `ELOOP` / `ENOTDIR` from an `O_NOFOLLOW` open, said plainly.
fn refused_link(e: io::Error, name: &OsStr) -> io::Error {
    match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::ENOTDIR) => io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{}: not a directory or a symlink (symlinks are not followed)",
                name.to_string_lossy()
            ),
        ),
        _ => e,
    }
}

/// An open directory; operations on names inside it never follow symlinks.
pub struct Dir {
    fd: OwnedFd,
}

impl Dir {
    /// Opens a trusted directory (from the configuration); a symlink as the
    /// path itself is followed.
    pub fn open(path: &Path) -> io::Result<Dir> {
        Dir::open_with(path, libc::O_RDONLY)
    }

    /// Like [`Dir::open`] for a directory we may only search, not read
    /// (`O_PATH`: the spool root is 0711 and `drop/` 1733 for other users).
    /// Such a `Dir` serves the `*at` operations on names in it; `entries`,
    /// `sync` and `chown` fail on it.
    pub fn open_search(path: &Path) -> io::Result<Dir> {
        Dir::open_with(path, libc::O_PATH)
    }

    fn open_with(path: &Path, access: libc::c_int) -> io::Result<Dir> {
        let p = cstr(path.as_os_str())?;
        // SAFETY: open(2) with a valid C string; the fd is owned below.
        let fd =
            check(unsafe { libc::open(p.as_ptr(), access | libc::O_DIRECTORY | libc::O_CLOEXEC) })?;
        // SAFETY: fd was just opened and is owned by nobody else.
        Ok(Dir {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The subdirectory `name`; a symlink (or anything not a directory) is
    /// an error.
    pub fn sub(&self, name: &OsStr) -> io::Result<Dir> {
        self.sub_with(name, libc::O_RDONLY)
    }

    /// [`Dir::sub`] for a directory we may only search (see
    /// [`Dir::open_search`]).
    pub fn sub_search(&self, name: &OsStr) -> io::Result<Dir> {
        self.sub_with(name, libc::O_PATH)
    }

    fn sub_with(&self, name: &OsStr, access: libc::c_int) -> io::Result<Dir> {
        let c = component(name)?;
        // SAFETY: openat(2) relative to our open directory; fd owned below.
        let fd = unsafe {
            libc::openat(
                self.raw(),
                c.as_ptr(),
                access | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        let fd = check(fd).map_err(|e| refused_link(e, name))?;
        // SAFETY: fd was just opened and is owned by nobody else.
        Ok(Dir {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The subdirectory `name`, created with `mode` if missing; true if it
    /// was created.
    pub fn sub_or_create(&self, name: &OsStr, mode: u32) -> io::Result<(Dir, bool)> {
        match self.sub(name) {
            Ok(dir) => return Ok((dir, false)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let c = component(name)?;
        // SAFETY: mkdirat(2) relative to our open directory.
        let created = match check(unsafe { libc::mkdirat(self.raw(), c.as_ptr(), mode) }) {
            Ok(_) => true,
            // Made meanwhile by someone else: open theirs (checked below).
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => false,
            Err(e) => return Err(e),
        };
        Ok((self.sub(name)?, created))
    }

    /// Creates `name` exclusively (`O_EXCL`: an existing file or symlink of
    /// that name is an error), for writing.
    pub fn create_file(&self, name: &OsStr, mode: u32) -> io::Result<File> {
        self.open_file(name, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, mode)
    }

    /// `openat(name, flags | O_NOFOLLOW | O_CLOEXEC)`.
    pub fn open_file(&self, name: &OsStr, flags: libc::c_int, mode: u32) -> io::Result<File> {
        let c = component(name)?;
        // SAFETY: openat(2) relative to our open directory; fd owned below.
        let fd = check(unsafe {
            libc::openat(
                self.raw(),
                c.as_ptr(),
                flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        })?;
        // SAFETY: fd was just opened and is owned by nobody else.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    /// Hard-links `name` as `to/to_name` (fails if that exists; a symlink
    /// `name` is linked as the symlink, not its target).
    pub fn link(&self, name: &OsStr, to: &Dir, to_name: &OsStr) -> io::Result<()> {
        let (a, b) = (component(name)?, component(to_name)?);
        // SAFETY: linkat(2) with two open directories and C strings; flags
        // 0: symlinks are not dereferenced.
        check(unsafe { libc::linkat(self.raw(), a.as_ptr(), to.raw(), b.as_ptr(), 0) })?;
        Ok(())
    }

    /// Moves `name` to `to/to_name` unless that exists (see the module doc).
    pub fn rename_noreplace(&self, name: &OsStr, to: &Dir, to_name: &OsStr) -> io::Result<()> {
        let (a, b) = (component(name)?, component(to_name)?);
        renameat_noreplace(self.raw(), &a, to.raw(), &b)
    }

    /// Removes the file `name` (not a directory; a symlink itself).
    pub fn unlink(&self, name: &OsStr) -> io::Result<()> {
        let c = component(name)?;
        // SAFETY: unlinkat(2) relative to our open directory.
        check(unsafe { libc::unlinkat(self.raw(), c.as_ptr(), 0) })?;
        Ok(())
    }

    /// Whether `name` exists (as anything, a dangling symlink included).
    pub fn exists(&self, name: &OsStr) -> io::Result<bool> {
        let c = component(name)?;
        // SAFETY: an all-zero stat is a valid out-buffer for fstatat(2).
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstatat(2) relative to our directory, not following.
        let r =
            unsafe { libc::fstatat(self.raw(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
        match check(r) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The names in the directory (without `.` and `..`).
    pub fn entries(&self) -> io::Result<Vec<OsString>> {
        // fdopendir takes ownership of the descriptor it is given.
        // SAFETY: dup(2) of our open descriptor.
        let dup = check(unsafe { libc::fcntl(self.raw(), libc::F_DUPFD_CLOEXEC, 0) })?;
        // SAFETY: dup is a fresh descriptor of a directory.
        let dirp = unsafe { libc::fdopendir(dup) };
        if dirp.is_null() {
            let e = io::Error::last_os_error();
            // SAFETY: fdopendir failed, so dup is still ours to close.
            unsafe { libc::close(dup) };
            return Err(e);
        }
        // The dup shares the file offset: start from the beginning.
        // SAFETY: dirp is a valid DIR*.
        unsafe { libc::rewinddir(dirp) };
        let mut names = Vec::new();
        let result = loop {
            // readdir signals errors only through errno.
            // SAFETY: __errno_location is always valid for this thread.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: dirp is a valid DIR* until closedir below.
            let ent = unsafe { libc::readdir(dirp) };
            if ent.is_null() {
                let e = io::Error::last_os_error();
                break match e.raw_os_error() {
                    Some(0) | None => Ok(()),
                    Some(_) => Err(e),
                };
            }
            // SAFETY: d_name of a dirent returned by readdir is a
            // NUL-terminated string valid until the next readdir call.
            let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
            let bytes = name.to_bytes();
            if bytes != b"." && bytes != b".." {
                names.push(OsString::from_vec(bytes.to_vec()));
            }
        };
        // SAFETY: dirp is valid and closed exactly once (closing dup too).
        unsafe { libc::closedir(dirp) };
        result.map(|()| names)
    }

    /// `fsync(2)` of the directory (makes its entries durable).
    pub fn sync(&self) -> io::Result<()> {
        // SAFETY: fsync(2) on our open descriptor.
        check(unsafe { libc::fsync(self.raw()) })?;
        Ok(())
    }

    /// `fchown(2)` of the directory itself.
    pub fn chown(&self, uid: u32, gid: u32) -> io::Result<()> {
        // SAFETY: fchown(2) on our open descriptor.
        check(unsafe { libc::fchown(self.raw(), uid, gid) })?;
        Ok(())
    }

    /// Gives the file `name` to `uid:gid` if it is a regular file with a
    /// single link; anything else (a symlink, a FIFO, a device, a hard link
    /// to a file elsewhere) is left alone and `Ok(false)` returned. Race
    /// free: the checks and the chown act on one `O_PATH` descriptor.
    pub fn chown_file(&self, name: &OsStr, uid: u32, gid: u32) -> io::Result<bool> {
        let c = component(name)?;
        // SAFETY: openat(2) with O_PATH: nothing is read, no device is
        // opened, a symlink yields a descriptor of the link itself.
        let fd = check(unsafe {
            libc::openat(
                self.raw(),
                c.as_ptr(),
                libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: fd was just opened and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let st = fstat(fd.as_raw_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_nlink != 1 {
            return Ok(false);
        }
        // SAFETY: fchownat(2) on the O_PATH descriptor itself.
        check(unsafe {
            libc::fchownat(fd.as_raw_fd(), c"".as_ptr(), uid, gid, libc::AT_EMPTY_PATH)
        })?;
        Ok(true)
    }
}

impl Dir {
    /// Sets the mode of the file `name` if it is a regular file with a
    /// single link (`Ok(false)` and nothing done otherwise); the check and
    /// the `fchmod` act on one descriptor, opened without following.
    pub fn chmod_file(&self, name: &OsStr, mode: u32) -> io::Result<bool> {
        let file = self.open_file(name, libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY, 0)?;
        let st = fstat(file.as_raw_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_nlink != 1 {
            return Ok(false);
        }
        // SAFETY: fchmod(2) on the descriptor `file` owns.
        check(unsafe { libc::fchmod(file.as_raw_fd(), mode) })?;
        Ok(true)
    }
}

/// `fstat(2)`.
pub fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: an all-zero stat is a valid out-buffer for fstat(2).
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat(2) on a descriptor the caller holds open.
    check(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

/// The effective uid of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// Moves `from` to `to` unless `to` exists (`EEXIST`); never replaces.
/// Both paths are resolved as given (the caller trusts their directories).
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    with_cstr(from.as_os_str(), |a| {
        with_cstr(to.as_os_str(), |b| {
            renameat_noreplace(libc::AT_FDCWD, a, libc::AT_FDCWD, b)
        })
    })
}

fn renameat_noreplace(dfrom: RawFd, from: &CStr, dto: RawFd, to: &CStr) -> io::Result<()> {
    // The raw syscall: the libc wrapper is missing from older C libraries
    // (glibc before 2.28, uClibc), the system call is in Linux since 3.15.
    // SAFETY: renameat2(2) with valid descriptors and C strings.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            dfrom,
            from.as_ptr(),
            dto,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOSYS) => link_then_unlink(dfrom, from, dto, to),
        _ => Err(e),
    }
}

/// The fallback of [`rename_noreplace`]: `link` fails with `EEXIST`
/// rather than replace; a crash between the two calls leaves both names,
/// which the spool's recovery handles (the `tmp/` name is removed).
fn link_then_unlink(dfrom: RawFd, from: &CStr, dto: RawFd, to: &CStr) -> io::Result<()> {
    // SAFETY: linkat(2) with valid descriptors and C strings, no follow.
    check(unsafe { libc::linkat(dfrom, from.as_ptr(), dto, to.as_ptr(), 0) })?;
    // SAFETY: unlinkat(2) with a valid descriptor and C string.
    if let Err(e) = check(unsafe { libc::unlinkat(dfrom, from.as_ptr(), 0) }) {
        log::warn!(
            "cannot remove {} after linking it: {e}",
            from.to_string_lossy()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    use crate::test_dir::TempDir;

    #[test]
    fn rename_never_replaces() {
        let t = TempDir::new("rename");
        let (a, b) = (t.0.join("a"), t.0.join("b"));
        std::fs::write(&a, b"new").unwrap();
        std::fs::write(&b, b"acknowledged").unwrap();
        let e = rename_noreplace(&a, &b).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
        assert_eq!(std::fs::read(&b).unwrap(), b"acknowledged");
        assert_eq!(std::fs::read(&a).unwrap(), b"new");
        // The fallback behaves the same.
        let (ca, cb) = (cstr(a.as_os_str()).unwrap(), cstr(b.as_os_str()).unwrap());
        let e = link_then_unlink(libc::AT_FDCWD, &ca, libc::AT_FDCWD, &cb).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
        assert_eq!(std::fs::read(&b).unwrap(), b"acknowledged");
        let c = t.0.join("c");
        let cc = cstr(c.as_os_str()).unwrap();
        link_then_unlink(libc::AT_FDCWD, &ca, libc::AT_FDCWD, &cc).unwrap();
        assert!(!a.exists());
        assert_eq!(std::fs::read(&c).unwrap(), b"new");
        rename_noreplace(&c, &a).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"new");
    }

    #[test]
    fn symlinks_are_not_followed() {
        let t = TempDir::new("nofollow");
        let target = t.0.join("target");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("f"), b"x").unwrap();
        std::os::unix::fs::symlink(&target, t.0.join("link")).unwrap();
        std::os::unix::fs::symlink(target.join("f"), t.0.join("flink")).unwrap();
        let dir = Dir::open(&t.0).unwrap();
        assert!(dir.sub(OsStr::new("link")).is_err());
        assert!(dir.sub_or_create(OsStr::new("link"), 0o700).is_err());
        assert!(dir.create_file(OsStr::new("flink"), 0o600).is_err());
        assert!(dir
            .open_file(OsStr::new("flink"), libc::O_RDONLY, 0)
            .is_err());
        assert!(dir.exists(OsStr::new("flink")).unwrap());
        assert!(!dir.exists(OsStr::new("nothing")).unwrap());
        for bad in ["", ".", "..", "a/b"] {
            assert!(dir.sub(OsStr::new(bad)).is_err(), "{bad:?}");
        }
        let mut names = dir.entries().unwrap();
        names.sort();
        assert_eq!(names, ["flink", "link", "target"]);
        // Twice: the directory offset is rewound.
        assert_eq!(dir.entries().unwrap().len(), 3);
        // chown_file skips links of both kinds and hard-linked files.
        let me = euid();
        assert!(!dir.chown_file(OsStr::new("flink"), me, me).unwrap());
        std::fs::hard_link(target.join("f"), t.0.join("hard")).unwrap();
        assert!(!dir.chown_file(OsStr::new("hard"), me, me).unwrap());
        std::fs::write(t.0.join("plain"), b"y").unwrap();
        assert!(dir.chown_file(OsStr::new("plain"), me, me).unwrap());
        assert_eq!(std::fs::metadata(t.0.join("plain")).unwrap().uid(), me);
        // The symlinked directory's content was never touched.
        dir.unlink(OsStr::new("link")).unwrap();
        assert!(target.join("f").exists());
    }
}
