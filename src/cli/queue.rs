//! `mailq` and `tern queue ...`: read-only listing (straight from the
//! spool), and queue changes, which go to the running daemon through its
//! control socket (see `control`: one writer per file). With no daemon
//! running (no socket, or nobody listening on it) a change is made here,
//! on the spool, under the spool lock.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::{EX_DATAERR, EX_NOINPUT, EX_OK, EX_SOFTWARE, EX_TEMPFAIL, EX_USAGE};
use crate::bounce::{header_block, rfc5322_date};
use crate::config::Config;
use crate::control::{parse_reply, ClientReply, ControlReply, ErrorKind, Request, MAX_REPLY};
use crate::delivery::Destination;
use crate::spool::{drop, QueueId, RcptStatus, Spool};

pub fn mailq(cfg: Config) -> i32 {
    let spool = match Spool::open(&cfg.spool_dir, cfg.spool_sync) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mailq: cannot open spool {}: {e}", cfg.spool_dir.display());
            return EX_TEMPFAIL;
        }
    };
    let ids = spool.list().unwrap_or_default();
    let drops = drop::list(&cfg.spool_dir).len();
    if ids.is_empty() {
        println!("Mail queue is empty");
    } else {
        println!(
            "-Queue ID-------- --Size-- ----Arrival Time------------- -Sender/Recipient-------"
        );
        let mut total = 0u64;
        for id in &ids {
            let Ok((env, states, attempts)) = spool.load(*id) else {
                continue;
            };
            let size = spool.content_size(*id).unwrap_or(0);
            total += size;
            let sender = if env.sender.is_empty() {
                "MAILER-DAEMON"
            } else {
                env.sender.as_str()
            };
            println!(
                "{id} {size:>8} {:<30} {sender}",
                rfc5322_date(env.arrival as i64, 0)
            );
            let on_hold = spool.is_held(*id);
            if on_hold {
                println!("{:45}(on hold: tern queue release {id})", "");
            }
            if attempts > 0 {
                println!("{:45}(attempts: {attempts})", "");
            }
            for (r, st) in env.recipients.iter().zip(&states) {
                let remote = matches!(r.dest, Destination::Remote(_));
                let address = r.final_address(&cfg.hostname);
                let state = match st.status {
                    RcptStatus::Pending | RcptStatus::Deferred if on_hold => "held",
                    RcptStatus::Pending if remote && cfg.hold_outbound => {
                        "held: hold_outbound = yes"
                    }
                    RcptStatus::Pending => "pending",
                    RcptStatus::Deferred => "deferred",
                    RcptStatus::Sent => "sent",
                    RcptStatus::Failed => "failed",
                };
                let why = st.describe();
                if why.is_empty() {
                    println!("{:45}{address} ({state})", "");
                } else {
                    println!(
                        "{:45}{address} ({state}: {})",
                        "",
                        crate::logsafe::LogSafe(&why)
                    );
                }
            }
            println!();
        }
        println!(
            "-- {} Kbytes in {} Request{}.",
            total.div_ceil(1024),
            ids.len(),
            if ids.len() == 1 { "" } else { "s" }
        );
    }
    if drops > 0 {
        println!("({drops} message(s) from sendmail waiting to be picked up by the daemon)");
    }
    EX_OK
}

pub fn main(cfg: Config, args: &[String]) -> i32 {
    let spool = match Spool::open(&cfg.spool_dir, cfg.spool_sync) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("queue: cannot open spool {}: {e}", cfg.spool_dir.display());
            return EX_TEMPFAIL;
        }
    };
    let id_arg = || args.get(1).and_then(|s| s.parse::<QueueId>().ok());
    let request = match (
        args.first().map(String::as_str),
        args.get(1).map(String::as_str),
    ) {
        (Some("flush"), None) => Request::Flush(None),
        (Some("delete"), Some("all-deferred")) => return delete_deferred(&spool),
        (Some("flush" | "delete" | "hold" | "release"), Some(arg)) => {
            let Some(id) = id_arg() else {
                eprintln!("queue: {arg} is not a queue ID (16 hex digits)");
                return EX_NOINPUT;
            };
            match args.first().map(String::as_str) {
                Some("flush") => Request::Flush(Some(id)),
                Some("delete") => Request::Delete(id),
                Some("hold") => Request::Hold(id),
                _ => Request::Release(id),
            }
        }
        (Some("show"), _) => return show(&cfg, &spool, args),
        _ => return usage(),
    };
    if args.len() > 2 {
        return usage();
    }
    let mut channel = Channel::Unknown;
    match channel.execute(&spool, request) {
        Ok(reply) => report(&reply),
        Err(e) => {
            eprintln!("queue: {e}");
            EX_TEMPFAIL
        }
    }
}

/// `queue delete all-deferred`: every message with an attempt behind it
/// and a deferred recipient, one `delete` each (a message whose attempt is
/// running is left alone).
fn delete_deferred(spool: &Spool) -> i32 {
    let mut channel = Channel::Unknown;
    let mut n = 0;
    for id in spool.list().unwrap_or_default() {
        let Ok((_, states, attempts)) = spool.load(id) else {
            continue;
        };
        if attempts == 0 || !states.iter().any(|s| s.status == RcptStatus::Deferred) {
            continue;
        }
        match channel.execute(spool, Request::Delete(id)) {
            Ok(ClientReply::Ok(_)) => n += 1,
            Ok(ClientReply::Error(_, text)) => eprintln!("queue: {text}"),
            Err(e) => {
                eprintln!("queue: {e}");
                println!("deleted {n} message(s)");
                return EX_TEMPFAIL;
            }
        }
    }
    println!("deleted {n} message(s)");
    EX_OK
}

/// Prints a reply; the exit code follows its kind.
fn report(reply: &ClientReply) -> i32 {
    match reply {
        ClientReply::Ok(text) => {
            println!("{text}");
            EX_OK
        }
        ClientReply::Error(kind, text) => {
            eprintln!("queue: {text}");
            match kind {
                Some(ErrorKind::NoSuchMessage) => EX_NOINPUT,
                Some(ErrorKind::Held | ErrorKind::NotHeld) => EX_DATAERR,
                Some(ErrorKind::BadRequest) => EX_SOFTWARE,
                Some(ErrorKind::Busy | ErrorKind::Failed) | None => EX_TEMPFAIL,
            }
        }
    }
}

/// How long a queue command waits for the daemon's reply.
pub const CONTROL_CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a queue command waits for a spool that is locked while no
/// daemon answers on the socket (a daemon stopping, another command).
pub const LOCKED_WAIT: Duration = Duration::from_secs(3);

/// Where queue changes go: decided by the first request.
enum Channel {
    Unknown,
    Daemon,
    /// No daemon runs: the spool lock is ours until the command exits.
    Offline {
        _lock: crate::spool::hold::SpoolLock,
    },
}

/// Why a request did not reach the daemon.
enum SendError {
    /// Nothing listens on the socket (no daemon runs).
    NoDaemon,
    Other(String),
}

impl Channel {
    fn execute(&mut self, spool: &Spool, req: Request) -> Result<ClientReply, String> {
        let path = spool.control_path();
        let give_up = std::time::Instant::now() + LOCKED_WAIT;
        while !matches!(self, Channel::Offline { .. }) {
            match send(&path, req) {
                Ok(reply) => {
                    *self = Channel::Daemon;
                    return Ok(reply);
                }
                Err(SendError::NoDaemon) if matches!(self, Channel::Unknown) => {}
                Err(SendError::NoDaemon) => return Err("the daemon stopped".to_string()),
                Err(SendError::Other(e)) => return Err(format!("{}: {e}", path.display())),
            }
            match spool.try_lock() {
                Ok(Some(lock)) => *self = Channel::Offline { _lock: lock },
                // Locked, but no socket: a daemon stopping (or another
                // queue command at work). Wait a little, then say so.
                Ok(None) if std::time::Instant::now() < give_up => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Ok(None) => {
                    return Err(format!(
                        "the spool is locked (a daemon is stopping, or another queue command \
                         runs) but {} does not answer; try again",
                        path.display()
                    ))
                }
                Err(e) => {
                    return Err(format!(
                        "cannot lock the spool {}: {e}",
                        spool.root().display()
                    ))
                }
            }
        }
        Ok(offline(spool, req).into_client())
    }
}

/// One request through the control socket (blocking: this is the command
/// line tool, not the daemon's loop).
fn send(path: &Path, req: Request) -> Result<ClientReply, SendError> {
    let other = |e: std::io::Error| SendError::Other(e.to_string());
    let mut s = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT) | Some(libc::ECONNREFUSED)
            ) =>
        {
            return Err(SendError::NoDaemon)
        }
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
            return Err(SendError::Other(format!(
                "{e} (queue changes need root or the daemon's user)"
            )))
        }
        Err(e) => return Err(other(e)),
    };
    s.set_read_timeout(Some(CONTROL_CLIENT_TIMEOUT))
        .map_err(other)?;
    s.set_write_timeout(Some(CONTROL_CLIENT_TIMEOUT))
        .map_err(other)?;
    send_no_signal(&s, req.line().as_bytes()).map_err(other)?;
    let mut line = Vec::new();
    (&mut s)
        .take(MAX_REPLY as u64)
        .read_to_end(&mut line)
        .map_err(other)?;
    if line.is_empty() {
        return Err(SendError::Other(
            "the daemon closed the connection without a reply (too many queue commands at once?); \
             try again"
                .to_string(),
        ));
    }
    let text = String::from_utf8_lossy(&line);
    let text = text.split('\n').next().unwrap_or("");
    parse_reply(text)
        .ok_or_else(|| SendError::Other(format!("unexpected reply from the daemon: {text:?}")))
}

/// Writes all of `data` with `MSG_NOSIGNAL`: the command line tools take
/// SIGPIPE's default action (see `cli`), and a daemon that closed the
/// connection must give an error message, not a silent death.
fn send_no_signal(s: &UnixStream, mut data: &[u8]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    while !data.is_empty() {
        // SAFETY: send(2) reads `data.len()` bytes from a live slice.
        let n = unsafe {
            libc::send(
                s.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        data = data.get(n as usize..).unwrap_or_default();
    }
    Ok(())
}

/// A request carried out on the spool itself (no daemon runs; the caller
/// holds the spool lock).
fn offline(spool: &Spool, req: Request) -> ControlReply {
    let missing =
        |id| ControlReply::error(ErrorKind::NoSuchMessage, id, "no such message in the queue");
    let failed = |id, e: std::io::Error| ControlReply::error(ErrorKind::Failed, id, e.to_string());
    match req {
        Request::Flush(_) => ControlReply::Error(
            ErrorKind::Failed,
            None,
            "the daemon is not running; mail is delivered when it starts".to_string(),
        ),
        Request::Delete(id) if !spool.exists(id) => missing(id),
        Request::Delete(id) => spool
            .remove(id)
            .map_or_else(|e| failed(id, e), |()| ControlReply::Deleted(id)),
        Request::Hold(id) if !spool.exists(id) => missing(id),
        Request::Hold(id) => spool
            .hold(id)
            .map_or_else(|e| failed(id, e), |()| ControlReply::Held(id)),
        Request::Release(id) if !spool.exists(id) => missing(id),
        Request::Release(id) => match spool.release(id) {
            Ok(true) => ControlReply::Released(id),
            Ok(false) => ControlReply::error(ErrorKind::NotHeld, id, "the message is not on hold"),
            Err(e) => failed(id, e),
        },
    }
}

/// `queue show ID`: the envelope, each recipient's state and the header.
fn show(cfg: &Config, spool: &Spool, args: &[String]) -> i32 {
    let Some(qid) = args.get(1).and_then(|s| s.parse::<QueueId>().ok()) else {
        return usage();
    };
    match spool.load(qid) {
        Ok((env, states, attempts)) => {
            println!("id: {qid}");
            println!("arrival: {}", rfc5322_date(env.arrival as i64, 0));
            println!("sender: <{}>", env.sender);
            println!("client: {}", crate::logsafe::LogSafe(&env.client));
            println!("attempts: {attempts}");
            if spool.is_held(qid) {
                println!("on hold: tern queue release {qid}");
            }
            for (r, st) in env.recipients.iter().zip(&states) {
                println!(
                    "recipient: {} (for {}) {} {}",
                    r.final_address(&cfg.hostname),
                    r.original,
                    st.status.name(),
                    crate::logsafe::LogSafe(&st.describe())
                );
            }
            println!();
            if let Ok((f, _)) = spool.open_content(qid) {
                let mut buf = Vec::new();
                let _ = f.take(64 * 1024).read_to_end(&mut buf);
                // Header lines as text, control octets escaped
                // (a terminal must not run what a sender wrote).
                for line in header_block(&buf).split_inclusive(|&b| b == b'\n') {
                    let line = line.strip_suffix(b"\n").unwrap_or(line);
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    println!("{}", crate::logsafe::LogSafe(line));
                }
            }
            EX_OK
        }
        Err(e) => {
            eprintln!("queue: {qid}: {e}");
            EX_DATAERR
        }
    }
}

fn usage() -> i32 {
    eprintln!(
        "usage: tern queue flush [ID] | delete ID|all-deferred | hold ID | release ID | show ID"
    );
    EX_USAGE
}

/// Sends `sig` to a running daemon (from `pid_file`): SIGUSR2 imports
/// sendmail drops (SIGUSR1, a queue run, is still understood). Returns whether a
/// daemon was signalled.
pub fn signal_daemon(cfg: &Config, sig: i32) -> bool {
    // Only a daemon holding the pid file's lock is signalled: a stale file
    // may name an unrelated process, which SIGUSR1 would kill.
    let Some(pid) = crate::system::running_daemon(&cfg.pid_file) else {
        return false;
    };
    // SAFETY: kill(2) with the pid of the daemon holding the pid file.
    unsafe { libc::kill(pid, sig) == 0 }
}
