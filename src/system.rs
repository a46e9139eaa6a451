//! Process set-up around the daemon: logging, detaching (`-d`), the pid
//! file, and dropping privileges. Start-up order (SPEC, issue 6): config is
//! parsed by the caller → listeners bound and spool opened (`Daemon::new`)
//! → privileges dropped → spool recovered and served (`Daemon::run`).

use std::ffi::CString;
use std::io::{self, IsTerminal, Write};
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

pub fn init_logging(level: log::LevelFilter, target: LogTarget) {
    let mut b = env_logger::Builder::new();
    b.filter_level(level);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        b.parse_filters(&spec);
    }
    let mut stamp = false;
    let mut syslog = false;
    match target {
        LogTarget::Stderr => stamp = io::stderr().is_terminal(),
        LogTarget::File(path) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
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
                let _ = s.send(&self.line[..p]);
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
    let cfg_dirs = vec![cfg.spool_dir.clone(), cfg.mail_dir.clone()];
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
        if let Err(e) = hand_over_dirs(&cfg_dirs, uid, gid) {
            log::error!("cannot give the spool and mail directories to {user}: {e}");
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
    pub fn lock(path: &Path) -> io::Result<Result<PidFile, Option<i32>>> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)?;
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

/// uid and gid of `user` from /etc/passwd.
pub fn lookup_user(user: &str) -> io::Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[0] == user)
        .and_then(|f| Some((f[2].parse::<u32>().ok()?, f[3].parse::<u32>().ok()?)))
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such user in /etc/passwd"))
}

/// Before dropping privileges: the spool tree (directories and the files in
/// them) and the mailbox root must belong to the unprivileged user.
fn hand_over_dirs(dirs: &[PathBuf], uid: u32, gid: u32) -> io::Result<()> {
    for dir in dirs {
        std::fs::create_dir_all(dir)?;
        chown_tree(dir, uid, gid, 2)?;
    }
    Ok(())
}

fn chown_tree(path: &Path, uid: u32, gid: u32, depth: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    if depth > 0 && path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid, depth - 1)?;
        }
    }
    Ok(())
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
    }
}
