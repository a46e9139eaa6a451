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

pub fn init_logging(level: log::LevelFilter) {
    let mut b = env_logger::Builder::new();
    b.filter_level(level);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        b.parse_filters(&spec);
    }
    let stamp = io::stderr().is_terminal();
    b.format(move |buf, record| {
        if stamp {
            let now = crate::daemon::unix_now();
            writeln!(buf, "{} tern: {}: {}", now, record.level(), record.args())
        } else {
            // Init systems (procd, systemd, syslog) add their own timestamps.
            writeln!(buf, "tern: {}: {}", record.level(), record.args())
        }
    });
    let _ = b.try_init();
}

pub fn run_daemon(cfg: Config, config_path: PathBuf, detach: bool) -> i32 {
    init_logging(cfg.log_level);
    if let Some(pid) = live_pid(&cfg.pid_file) {
        eprintln!(
            "tern: already running (pid {pid} in {})",
            cfg.pid_file.display()
        );
        return EX_TEMPFAIL;
    }
    let user = cfg.user.clone();
    let pid_file = cfg.pid_file.clone();
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
    if let Some(user) = user {
        if let Err(e) = drop_privileges(&user) {
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
            // stderr stays open only if it is not a terminal (logs go there).
            if libc::isatty(2) == 1 {
                libc::dup2(fd, 2);
            }
            if fd > 2 {
                libc::close(fd);
            }
        }
        libc::chdir(c"/".as_ptr());
    }
    Ok(())
}

/// setgroups/setgid/setuid to `user` from /etc/passwd, verified afterwards.
pub fn drop_privileges(user: &str) -> io::Result<()> {
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    let (uid, gid) = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[0] == user)
        .and_then(|f| Some((f[2].parse::<u32>().ok()?, f[3].parse::<u32>().ok()?)))
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such user in /etc/passwd"))?;
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
