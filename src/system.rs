//! Process set-up around the daemon: logging, detaching (`-d`), the pid
//! file, and dropping privileges. Start-up order (SPEC, issue 6): config is
//! parsed by the caller → listeners bound and spool opened (`Daemon::new`)
//! → privileges dropped → spool recovered and served (`Daemon::run`).

use std::ffi::CString;
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use crate::cli::{EX_CONFIG, EX_OK, EX_OSERR, EX_TEMPFAIL};
use crate::config::Config;
use crate::daemon::{Daemon, SpoolUnusable};

/// Where log lines go: stderr (foreground: procd and systemd collect it),
/// `log_file` when set, or syslog (`/dev/log`) for a detached daemon.
pub enum LogTarget {
    Stderr,
    File(PathBuf),
    Syslog,
}

/// Sets up the logger. Without `RUST_LOG`, the logger itself passes every
/// level and `log::set_max_level` is the gate, so a reload can move
/// `log_level` either way; with `RUST_LOG`, its filters rule and a reload
/// leaves them alone.
pub fn init_logging(level: log::LevelFilter, target: LogTarget) {
    let mut b = env_logger::Builder::new();
    let from_env = std::env::var("RUST_LOG").ok();
    match &from_env {
        Some(spec) => {
            b.filter_level(level);
            b.parse_filters(spec);
        }
        None => {
            b.filter_level(log::LevelFilter::Trace);
        }
    }
    let mut stamp = false;
    let mut syslog = false;
    match target {
        LogTarget::Stderr => stamp = io::stderr().is_terminal(),
        LogTarget::File(path) => match open_log_file(&path) {
            Ok(f) => {
                stamp = true;
                b.target(env_logger::Target::Pipe(Box::new(f)));
            }
            Err(e) => eprintln!(
                "tern: cannot open log_file {}: {e}; logging to stderr",
                path.display()
            ),
        },
        LogTarget::Syslog => {
            syslog = true;
            b.target(env_logger::Target::Pipe(Box::new(SyslogWriter::new())));
        }
    }
    b.format(move |buf, record| {
        if syslog {
            // <PRI>: facility mail (2), severity from the level.
            let sev = match record.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                _ => 7,
            };
            writeln!(
                buf,
                "<{}>tern[{}]: {}",
                2 * 8 + sev,
                std::process::id(),
                record.args()
            )
        } else if stamp {
            let now = crate::daemon::unix_now();
            writeln!(
                buf,
                "{} tern: {}: {}",
                crate::bounce::rfc5322_date(now as i64, 0),
                record.level(),
                record.args()
            )
        } else {
            // Init systems (procd, systemd, syslog) add their own timestamps.
            writeln!(buf, "tern: {}: {}", record.level(), record.args())
        }
    });
    let _ = b.try_init();
    if from_env.is_none() {
        log::set_max_level(level);
    }
}

/// Opens `log_file` for appending. Root opens it, and log lines carry text
/// from the network (HELO names, addresses): a symlink or a hard link
/// planted in a log directory the daemon's user owns (`tern.log ->
/// /etc/passwd`) is refused, not followed.
fn open_log_file(path: &Path) -> io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let st = crate::safe_fs::fstat(f.as_raw_fd())?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_nlink != 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file with one link",
        ));
    }
    Ok(f)
}

/// Sends each log line as one datagram to /dev/log, never blocking: a line
/// that cannot be sent at once is dropped.
struct SyslogWriter {
    sock: Option<std::os::unix::net::UnixDatagram>,
    line: Vec<u8>,
}

impl SyslogWriter {
    fn new() -> SyslogWriter {
        let sock = std::os::unix::net::UnixDatagram::unbound()
            .ok()
            .filter(|s| s.connect("/dev/log").is_ok() && s.set_nonblocking(true).is_ok());
        SyslogWriter {
            sock,
            line: Vec::new(),
        }
    }
}

impl Write for SyslogWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.line.extend_from_slice(data);
        while let Some(p) = self.line.iter().position(|&b| b == b'\n') {
            if let Some(s) = &self.sock {
                let _ = s.send(self.line.get(..p).unwrap_or_default());
            }
            self.line.drain(..=p);
        }
        if self.line.len() > 8192 {
            self.line.clear();
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub fn run_daemon(mut cfg: Config, config_path: PathBuf, detach: bool) -> i32 {
    let target = match (&cfg.log_file, detach) {
        (Some(f), _) => LogTarget::File(std::path::absolute(f).unwrap_or(f.clone())),
        (None, true) => LogTarget::Syslog,
        (None, false) => LogTarget::Stderr,
    };
    init_logging(cfg.log_level, target);
    // `-d` changes directory to /: relative paths must not change meaning.
    let config_path = std::path::absolute(&config_path).unwrap_or(config_path);
    cfg.make_paths_absolute();
    let pid_file = cfg.pid_file.clone();
    let mut pid_lock = match PidFile::lock(&pid_file) {
        Ok(Ok(lock)) => Some(lock),
        Ok(Err(pid)) => {
            let pid = pid.map_or_else(|| "?".to_string(), |p| p.to_string());
            eprintln!(
                "tern: already running (pid {pid} in {})",
                pid_file.display()
            );
            return EX_TEMPFAIL;
        }
        Err(e) if detach => {
            eprintln!("tern: cannot open pid file {}: {e}", pid_file.display());
            return EX_OSERR;
        }
        Err(e) => {
            log::warn!(
                "cannot open pid file {}: {e} (queue flush will not find the daemon)",
                pid_file.display()
            );
            None
        }
    };
    let user = cfg.user.clone();
    let account = match &user {
        Some(name) => match lookup_user(name) {
            Ok(ids) => Some(ids),
            Err(e) => {
                eprintln!("tern: user {name}: {e}");
                return EX_CONFIG;
            }
        },
        None => None,
    };
    let (spool_dir, mail_dir) = (cfg.spool_dir.clone(), cfg.mail_dir.clone());
    let mut daemon = match Daemon::new(cfg, config_path) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("tern: {e}");
            log::error!("{e}");
            let spool = e.get_ref().is_some_and(|e| e.is::<SpoolUnusable>());
            return if spool { EX_TEMPFAIL } else { EX_OSERR };
        }
    };
    if detach {
        if let Err(e) = detach_process() {
            eprintln!("tern: cannot detach: {e}");
            return EX_OSERR;
        }
    }
    if let Some(lock) = pid_lock.as_mut() {
        // After the fork: the pid is the daemon's, and the lock came along
        // (it belongs to the open file, which the child shares).
        if let Err(e) = lock.write_pid() {
            log::error!("cannot write pid file {}: {e}", pid_file.display());
            return EX_OSERR;
        }
    }
    if let (Some(user), Some((uid, gid))) = (user, account) {
        if let Err(e) = hand_over_dirs(&spool_dir, &mail_dir, uid, gid) {
            log::error!("cannot give the spool and mail directories to {user}: {e}");
            return EX_OSERR;
        }
        if let Err(e) = daemon.give_control_socket(uid, gid) {
            log::error!("cannot give the control socket to {user}: {e}");
            return EX_OSERR;
        }
        if let Err(e) = drop_privileges(uid, gid) {
            log::error!("cannot drop privileges to {user}: {e}");
            return EX_CONFIG;
        }
        log::info!("running as user {user}");
    }
    let code = match daemon.run() {
        Ok(()) => EX_OK,
        Err(e) => {
            log::error!("fatal: {e}");
            EX_OSERR
        }
    };
    if let Some(lock) = pid_lock {
        lock.remove();
    }
    code
}

/// The pid file, held with an exclusive `flock(2)` for the daemon's life.
///
/// Whether a daemon runs is decided by the lock, never by the number in the
/// file: after a crash or a SIGKILL the file stays behind, and with
/// `pid_max` at 32768 (the default, routers included) its number soon names
/// another process, which may even be another program whose command line
/// contains "tern".
pub struct PidFile {
    file: std::fs::File,
    path: PathBuf,
}

impl PidFile {
    /// Opens (creates) and locks `path`. `Ok(Err(pid))`: a daemon holds it.
    /// Root opens it before dropping privileges and truncates it: a symlink
    /// or a hard link planted there (`tern.pid -> /etc/shadow` in a
    /// directory the daemon's user owns) is refused, not followed.
    pub fn lock(path: &Path) -> io::Result<Result<PidFile, Option<i32>>> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)?;
        let st = crate::safe_fs::fstat(file.as_raw_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_nlink != 1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a regular file with one link",
            ));
        }
        if flock(&file, libc::LOCK_EX)? {
            Ok(Ok(PidFile {
                file,
                path: path.to_path_buf(),
            }))
        } else {
            Ok(Err(read_pid(path)))
        }
    }

    /// Replaces the file's content with our pid.
    pub fn write_pid(&mut self) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let text = format!("{}\n", std::process::id());
        self.file.set_len(0)?;
        self.file.write_all_at(text.as_bytes(), 0)
    }

    /// Removes the file (still locked, so no second daemon can slip in
    /// between and lose its file).
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Non-blocking `flock`: `Ok(false)` when another open file holds it.
fn flock(file: &std::fs::File, how: i32) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock(2) on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), how | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

fn read_pid(path: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    (pid > 1).then_some(pid)
}

/// The pid of the daemon that holds `path` locked, if one does (for
/// signalling it: a stale file never gets a signal sent to its number).
pub fn running_daemon(path: &Path) -> Option<i32> {
    let file = std::fs::File::open(path).ok()?;
    match flock(&file, libc::LOCK_SH) {
        Ok(false) => read_pid(path),
        _ => None, // nobody holds it (our shared lock goes with the file)
    }
}

fn detach_process() -> io::Result<()> {
    // SAFETY: fork/setsid/dup2 before any thread exists (tern has one thread).
    unsafe {
        match libc::fork() {
            -1 => return Err(io::Error::last_os_error()),
            0 => {}
            _ => libc::_exit(0),
        }
        if libc::setsid() < 0 {
            return Err(io::Error::last_os_error());
        }
        let null = CString::new("/dev/null").unwrap_or_default();
        let fd = libc::open(null.as_ptr(), libc::O_RDWR);
        if fd >= 0 {
            libc::dup2(fd, 0);
            libc::dup2(fd, 1);
            // Logs go to log_file or syslog now; an init script must not
            // wait for our stdio to close.
            libc::dup2(fd, 2);
            if fd > 2 {
                libc::close(fd);
            }
        }
        libc::chdir(c"/".as_ptr());
    }
    Ok(())
}

/// Reads a whole file (or stream) of at most `limit` octets. A longer one
/// is an error that names the limit: never read whole into memory, never
/// truncated silently (a cut table would lose its last entries unseen).
pub fn read_bounded(source: impl io::Read, limit: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    source
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {limit} bytes"),
        ));
    }
    Ok(bytes)
}

/// When this tern was built (seconds since 1970, see `build.rs`); 0 if
/// unknown.
pub fn build_epoch() -> u64 {
    env!("TERN_BUILD_EPOCH").parse().unwrap_or(0)
}

/// A date as `YYYY-MM-DD` (UTC), for messages about the clock.
pub fn ymd(unix_secs: i64) -> String {
    let (y, m, d) = crate::bounce::civil_from_days(unix_secs.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
}

/// The sentence for a clock that cannot be right: before this build of
/// tern. `None` when `now` is plausible.
pub fn clock_before_build(now_unix: u64) -> Option<String> {
    let built = build_epoch();
    (now_unix < built).then(|| {
        format!(
            "the system clock ({}) is before this tern was built ({}): it is wrong; set it (NTP)",
            ymd(now_unix as i64),
            ymd(built as i64)
        )
    })
}

/// The longest secret file read (a password or token file; a token is a
/// few KiB at most).
pub const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// The first line of a secret file (`smarthost_password_file`), without
/// its line end; bounded by [`MAX_SECRET_FILE_BYTES`].
pub fn read_secret_line(path: &Path) -> io::Result<String> {
    let bytes = read_bounded(std::fs::File::open(path)?, MAX_SECRET_FILE_BYTES)?;
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    String::from_utf8(line.to_vec())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "the first line is not UTF-8"))
}

/// The account database read by [`passwd_entries`].
pub const PASSWD_FILE: &str = "/etc/passwd";
/// The longest account file read (a router's has a dozen lines).
pub const MAX_PASSWD_BYTES: u64 = 4 * 1024 * 1024;

/// One account: name, uid, gid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// The accounts of [`PASSWD_FILE`]. Read as bytes: a GECOS field in
/// Latin-1 on one line must not hide every account (read as UTF-8, one
/// such byte made the whole file unreadable: no local users, no `user =`
/// account, sendmail submitting as `uidN`). Lines whose name is not UTF-8,
/// or whose uid/gid are not numbers, are skipped.
pub fn passwd_entries() -> io::Result<Vec<PasswdEntry>> {
    let bytes = read_bounded(std::fs::File::open(PASSWD_FILE)?, MAX_PASSWD_BYTES)
        .map_err(|e| io::Error::new(e.kind(), format!("{PASSWD_FILE}: {e}")))?;
    Ok(parse_passwd(&bytes))
}

fn parse_passwd(bytes: &[u8]) -> Vec<PasswdEntry> {
    let number = |f: Option<&[u8]>| std::str::from_utf8(f?).ok()?.parse::<u32>().ok();
    bytes
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let mut f = line.split(|&b| b == b':');
            let name = std::str::from_utf8(f.next()?).ok()?;
            let _password = f.next()?;
            let (uid, gid) = (number(f.next())?, number(f.next())?);
            (!name.is_empty()).then(|| PasswdEntry {
                name: name.to_string(),
                uid,
                gid,
            })
        })
        .collect()
}

/// uid and gid of `user` from /etc/passwd.
pub fn lookup_user(user: &str) -> io::Result<(u32, u32)> {
    passwd_entries()?
        .into_iter()
        .find(|e| e.name == user)
        .map(|e| (e.uid, e.gid))
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such user in /etc/passwd"))
}

/// Before dropping privileges: the spool tree (directories and the files in
/// them) and the mailbox root must belong to the unprivileged user.
///
/// This runs as root in directories the unprivileged user can write, so
/// the walk never crosses a symlink (each directory is opened `O_NOFOLLOW`
/// relative to its parent) and only gives away directories and regular
/// files with one link: a planted `mail/x -> /etc`, a FIFO or a hard link
/// to `/etc/shadow` is logged and left alone (see `safe_fs`). The
/// configured directories themselves are trusted. Files in the spool's
/// `drop/` keep their owner, the submitting user the daemon reports; they
/// are made readable instead (`spool::drop::DROP_FILE_MODE`: drops written
/// 0600 by an older tern would otherwise be set aside unread).
fn hand_over_dirs(spool: &Path, mail: &Path, uid: u32, gid: u32) -> io::Result<()> {
    for (dir, keep_files_of) in [(spool, Some("drop")), (mail, None)] {
        std::fs::create_dir_all(dir)?;
        let top = crate::safe_fs::Dir::open(dir)?;
        top.chown(uid, gid)?;
        for name in top.entries()? {
            let keep_files = keep_files_of.is_some_and(|k| name == k);
            chown_entry(&top, dir, &name, uid, gid, CHOWN_DEPTH - 1, keep_files)?;
        }
    }
    Ok(())
}

/// How deep [`hand_over_dirs`] walks: `spool/msg/ID`, `mail/user/new`.
const CHOWN_DEPTH: u32 = 2;

/// Gives `parent/name` away: a directory (opened without following) with
/// its entries down to `depth` more levels, or a plain file.
fn chown_entry(
    parent: &crate::safe_fs::Dir,
    parent_path: &Path,
    name: &std::ffi::OsStr,
    uid: u32,
    gid: u32,
    depth: u32,
    keep_files: bool,
) -> io::Result<()> {
    let path = parent_path.join(name);
    match parent.sub(name) {
        Ok(dir) => {
            dir.chown(uid, gid)?;
            if depth == 0 {
                return Ok(());
            }
            for child in dir.entries()? {
                if keep_files && dir.sub(&child).is_err() {
                    let mode = crate::spool::drop::DROP_FILE_MODE;
                    if let Err(e) = dir.chmod_file(&child, mode) {
                        log::warn!("cannot make {} readable: {e}", path.join(&child).display());
                    }
                    continue;
                }
                chown_entry(&dir, &path, &child, uid, gid, depth - 1, false)?;
            }
            Ok(())
        }
        // Gone meanwhile (a sendmail finishing its drop): nothing to do.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => match parent.chown_file(name, uid, gid) {
            Ok(true) => Ok(()),
            Ok(false) => {
                log::warn!(
                    "not handing {} to the daemon's user: a symlink, a special file or a file with several links",
                    path.display()
                );
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        },
    }
}

/// setgroups/setgid/setuid, verified afterwards (including that root cannot
/// be regained).
pub fn drop_privileges(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: plain credential syscalls.
    unsafe {
        let groups = [gid];
        if libc::setgroups(1, groups.as_ptr()) != 0
            || libc::setgid(gid) != 0
            || libc::setuid(uid) != 0
        {
            return Err(io::Error::last_os_error());
        }
        if libc::getuid() != uid
            || libc::geteuid() != uid
            || libc::getgid() != gid
            || (uid != 0 && libc::setuid(0) == 0)
        {
            return Err(io::Error::other("privileges were not dropped"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_line_is_the_first_line_without_its_end() {
        let dir = crate::test_dir::TempDir::new("secret");
        let path = dir.0.join("pw");
        std::fs::write(&path, b"p@ss w0rd\r\nsecond line\n").expect("write");
        assert_eq!(read_secret_line(&path).expect("read"), "p@ss w0rd");
        std::fs::write(&path, b"no newline").expect("write");
        assert_eq!(read_secret_line(&path).expect("read"), "no newline");
        std::fs::write(&path, vec![b'x'; MAX_SECRET_FILE_BYTES as usize + 1]).expect("write");
        assert!(read_secret_line(&path).is_err());
    }

    #[test]
    fn read_bounded_takes_the_limit_and_refuses_one_octet_more() {
        let data = vec![b'x'; 100];
        assert_eq!(read_bounded(&data[..], 100).expect("at the limit"), data);
        let e = read_bounded(&data[..], 99).expect_err("over the limit");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(e.to_string(), "larger than 99 bytes");
        assert_eq!(read_bounded(&b""[..], 0).expect("empty"), b"");
    }

    #[test]
    fn passwd_with_latin1_gecos_still_lists_every_account() {
        let file = b"root:x:0:0:root:/root:/bin/sh\n\
            ren\xe9:x:1001:100:Ren\xe9 Dupont:/home/rene:/bin/sh\n\
            joe:x:1000:100:Jo\xeb:/home/joe:/bin/sh\n\
            broken line\n:x:5:5::/:\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false";
        let entries = parse_passwd(file);
        let names: Vec<(&str, u32, u32)> = entries
            .iter()
            .map(|e| (e.name.as_str(), e.uid, e.gid))
            .collect();
        assert_eq!(
            names,
            [("root", 0, 0), ("joe", 1000, 100), ("nobody", 65534, 65534)]
        );
    }

    #[test]
    fn hand_over_never_crosses_a_symlink() {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return; // chown to another user needs root (the e2e suite runs as root)
        }
        let base = std::env::temp_dir().join(format!("tern-chown-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (spool, mail, outside) = (base.join("spool"), base.join("mail"), base.join("etc"));
        for d in [
            &spool.join("msg"),
            &spool.join("drop"),
            &mail.join("u/new"),
            &outside,
        ] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(outside.join("shadow"), b"secret").unwrap();
        std::fs::write(spool.join("msg/0000000000000001"), b"m").unwrap();
        std::fs::write(spool.join("drop/123.1.abc"), b"d").unwrap();
        std::fs::set_permissions(
            spool.join("drop/123.1.abc"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        std::os::unix::fs::symlink(&outside, mail.join("x")).unwrap();
        std::os::unix::fs::symlink(&outside, mail.join("u/cur")).unwrap();
        std::os::unix::fs::symlink(&outside, spool.join("state")).unwrap();
        std::fs::hard_link(outside.join("shadow"), mail.join("hard")).unwrap();
        let nobody = 65534;
        hand_over_dirs(&spool, &mail, nobody, nobody).unwrap();
        let uid = |p: &Path| std::fs::symlink_metadata(p).unwrap().uid();
        assert_eq!(uid(&outside), 0);
        assert_eq!(uid(&outside.join("shadow")), 0);
        assert_eq!(uid(&spool.join("msg/0000000000000001")), nobody);
        assert_eq!(uid(&mail.join("u/new")), nobody);
        assert_eq!(uid(&spool.join("drop")), nobody);
        assert_eq!(
            uid(&spool.join("drop/123.1.abc")),
            0,
            "drops keep their submitter"
        );
        let mode = std::fs::metadata(spool.join("drop/123.1.abc"))
            .unwrap()
            .mode()
            & 0o7777;
        assert_eq!(mode, crate::spool::drop::DROP_FILE_MODE);
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn log_file_through_a_link_is_refused() {
        let dir = std::env::temp_dir().join(format!("tern-logfile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("passwd");
        std::fs::write(&target, b"root:x:0:0\n").unwrap();
        std::os::unix::fs::symlink(&target, dir.join("sym.log")).unwrap();
        std::fs::hard_link(&target, dir.join("hard.log")).unwrap();
        assert!(open_log_file(&dir.join("sym.log")).is_err());
        assert!(open_log_file(&dir.join("hard.log")).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"root:x:0:0\n");
        open_log_file(&dir.join("tern.log")).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn pid_file_lock_decides_not_the_number_in_it() {
        let path = std::env::temp_dir().join(format!("tern-pidfile-{}.pid", std::process::id()));
        // A stale file naming a live process (ours) does not block a start.
        std::fs::write(&path, format!("{}\n", std::process::id())).unwrap();
        assert_eq!(running_daemon(&path), None);
        let mut first = PidFile::lock(&path)
            .unwrap()
            .expect("stale file taken over");
        first.write_pid().unwrap();
        let mine = std::process::id() as i32;
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{mine}\n"));
        // While it is held, a second daemon is refused and told who runs.
        assert_eq!(PidFile::lock(&path).unwrap().err(), Some(Some(mine)));
        assert_eq!(running_daemon(&path), Some(mine));
        first.remove();
        assert!(!path.exists());
        assert_eq!(running_daemon(&path), None);
        let again = PidFile::lock(&path).unwrap().expect("free after removal");
        again.remove();
        // A planted link is refused, and its target left alone.
        let target = path.with_extension("target");
        std::fs::write(&target, b"precious").unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(PidFile::lock(&path).is_err());
        std::fs::remove_file(&path).unwrap();
        std::fs::hard_link(&target, &path).unwrap();
        assert!(PidFile::lock(&path).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_file(&target).unwrap();
    }
}
