//! `mailq` and `tern queue ...`: read-only listing, and operations that are
//! safe while the daemon runs (it re-reads a message before each attempt
//! and forgets one whose file is gone; a flush is a SIGUSR1).

use std::io::Read;

use super::{EX_DATAERR, EX_NOINPUT, EX_OK, EX_TEMPFAIL, EX_USAGE};
use crate::bounce::{header_block, rfc5322_date};
use crate::config::Config;
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
            if attempts > 0 {
                println!("{:45}(attempts: {attempts})", "");
            }
            for (r, st) in env.recipients.iter().zip(&states) {
                let remote = matches!(r.dest, Destination::Remote(_));
                let address = r.final_address(&cfg.hostname);
                let state = match st.status {
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
    match args.first().map(String::as_str) {
        Some("flush") => {
            if signal_daemon(&cfg, libc::SIGUSR1) {
                println!("queue run requested");
                EX_OK
            } else {
                eprintln!("queue: the daemon is not running (no live pid in {}); mail is delivered when it starts", cfg.pid_file.display());
                EX_TEMPFAIL
            }
        }
        Some("delete") => match args.get(1).map(String::as_str) {
            Some("all-deferred") => {
                let mut n = 0;
                for id in spool.list().unwrap_or_default() {
                    if let Ok((_, states, attempts)) = spool.load(id) {
                        if attempts > 0
                            && states.iter().any(|s| s.status == RcptStatus::Deferred)
                            && spool.remove(id).is_ok()
                        {
                            n += 1;
                        }
                    }
                }
                println!("deleted {n} message(s)");
                EX_OK
            }
            Some(id) => match id.parse::<QueueId>() {
                Ok(qid) if spool.load(qid).is_ok() => match spool.remove(qid) {
                    Ok(()) => {
                        println!("{qid}: deleted");
                        EX_OK
                    }
                    Err(e) => {
                        eprintln!("queue: {qid}: {e}");
                        EX_TEMPFAIL
                    }
                },
                _ => {
                    eprintln!("queue: no message {id}");
                    EX_NOINPUT
                }
            },
            None => usage(),
        },
        Some("show") => {
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
        _ => usage(),
    }
}

fn usage() -> i32 {
    eprintln!("usage: tern queue flush | delete ID|all-deferred | show ID");
    EX_USAGE
}

/// Sends `sig` to a running daemon (from `pid_file`): SIGUSR1 runs the
/// queue now (a flush), SIGUSR2 imports sendmail drops. Returns whether a
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
