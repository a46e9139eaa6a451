//! Process set-up around the daemon: logging, detaching (`-d`), the pid
//! file, and dropping privileges. Start-up order (SPEC, issue 6): config is
//! parsed by the caller → listeners bound and spool opened (`Daemon::new`)
//! → privileges dropped → spool recovered and served (`Daemon::run`).

use std::ffi::CString;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};

use crate::cli::{EX_CONFIG, EX_OK, EX_OSERR, EX_TEMPFAIL};
use crate::config::Config;
use crate::daemon::Daemon;

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
    if let Some(pid) = live_pid(&cfg.pid_file) {
        eprintln!(
            "tern: already running (pid {pid} in {})",
            cfg.pid_file.display()
        );
        return EX_TEMPFAIL;
    }
    let user = cfg.user.clone();
    let pid_file = cfg.pid_file.clone();
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
            return EX_OSERR;
        }
    };
    if detach {
        if let Err(e) = detach_process() {
            eprintln!("tern: cannot detach: {e}");
            return EX_OSERR;
        }
    }
    let wrote_pid = match write_pid_file(&pid_file) {
        Ok(()) => true,
        Err(e) => {
            if detach {
                log::error!("cannot write pid file {}: {e}", pid_file.display());
                return EX_OSERR;
            }
            log::warn!(
                "cannot write pid file {}: {e} (queue flush will not find the daemon)",
                pid_file.display()
            );
            false
        }
    };
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
    if wrote_pid {
        let _ = std::fs::remove_file(&pid_file);
    }
    code
}

/// The pid in `path` if that process is alive and is a tern.
fn live_pid(path: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    if pid <= 1 || pid == std::process::id() as i32 {
        return None;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    String::from_utf8_lossy(&cmdline)
        .contains("tern")
        .then_some(pid)
}

/// Written atomically: a temp file renamed into place.
fn write_pid_file(path: &Path) -> io::Result<()> {
    let tmp = path.with_extension("pid.tmp");
    std::fs::write(&tmp, format!("{}\n", std::process::id()))?;
    std::fs::rename(&tmp, path)
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
