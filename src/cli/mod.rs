//! Command-line entry points (SPEC "Command line"): argv[0] and subcommand
//! dispatch to the daemon, `check-config`, `sendmail`, `mail`, `mailq`,
//! `queue`, `newaliases` and `test` (a test message through the daemon's
//! route, with the dialogue and a diagnosis). Exit codes follow sysexits(3).

pub mod mail;
pub mod oauth;
pub mod queue;
pub mod sendmail;
pub mod test;

use std::path::{Path, PathBuf};

use crate::config::Config;

pub const EX_OK: i32 = 0;
pub const EX_USAGE: i32 = 64;
pub const EX_DATAERR: i32 = 65;
pub const EX_NOINPUT: i32 = 66;
pub const EX_SOFTWARE: i32 = 70;
pub const EX_OSERR: i32 = 71;
pub const EX_CANTCREAT: i32 = 73;
pub const EX_TEMPFAIL: i32 = 75;
pub const EX_UNAVAILABLE: i32 = 69;
pub const EX_CONFIG: i32 = 78;

pub const DEFAULT_CONFIG: &str = "/etc/tern.conf";

const HELP: &str = "\
usage: tern [-c FILE] [-d]                 run the daemon (foreground; -d detaches)
       tern [-c FILE] check-config         validate the configuration
       tern [-c FILE] sendmail [FLAGS] [RCPT...]   inject a message (also as `sendmail`)
       tern [-c FILE] mail [-s SUBJECT] [-a FILE]... [-r FROM] [-c ADDR] [-b ADDR] RCPT...
                                           send stdin as a message (also as `mail`, `mailx`)
       tern [-c FILE] mailq                list the queue (also as `mailq`)
       tern [-c FILE] queue flush | delete ID|all-deferred | show ID
       tern [-c FILE] newaliases           validate the aliases file
       tern [-c FILE] test [-f FROM] ADDRESS   send a test message, show the dialogue, diagnose
       tern [-c FILE] oauth login [--provider google|microsoft] [--client-id ID] [--tenant T] ...
                                           get an OAuth2 refresh token (device code flow)
       tern dkim keygen DOMAIN SELECTOR [--ed25519] [--dir DIR]
                                           write a DKIM key, print its DNS TXT record
       tern passwd USER                    read a password on stdin, print USER:HASH for users_file
       tern --version | --help
";

/// Runs the program for `args` (argv including argv[0]) and returns the exit code.
pub fn main(args: Vec<String>) -> i32 {
    let argv0 = args
        .first()
        .map(|a| {
            Path::new(a)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .unwrap_or_default();
    let mut rest: Vec<String> = args.into_iter().skip(1).collect();
    match argv0.as_str() {
        "sendmail" => return with_config(&mut rest, |cfg, _path, rest| sendmail::main(cfg, rest)),
        // `-c` is Cc here: the configuration comes from TERN_CONFIG.
        "mail" | "mailx" => {
            let cfg = match load(&env_config_path()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            return mail::main(cfg, rest);
        }
        "mailq" => {
            default_sigpipe();
            return with_config(&mut rest, |cfg, _, _| queue::mailq(cfg));
        }
        "newaliases" => {
            default_sigpipe();
            return with_config(&mut rest, |cfg, _, _| newaliases(cfg));
        }
        _ => {}
    }
    let mut config_path = PathBuf::from(DEFAULT_CONFIG);
    let mut detach = false;
    let mut i = 0;
    while let Some(arg) = rest.get(i) {
        match arg.as_str() {
            "-c" => {
                let Some(p) = rest.get(i + 1) else {
                    eprintln!("tern: -c needs a file name");
                    return EX_USAGE;
                };
                config_path = PathBuf::from(p);
                i += 2;
            }
            "-d" => {
                detach = true;
                i += 1;
            }
            "--version" | "-V" => {
                default_sigpipe();
                println!("tern {}", env!("CARGO_PKG_VERSION"));
                return EX_OK;
            }
            "--help" | "-h" => {
                default_sigpipe();
                print!("{HELP}");
                return EX_OK;
            }
            _ => break,
        }
    }
    let sub: Vec<String> = rest.split_off(i);
    let (cmd, args) = match sub.split_first() {
        Some((cmd, args)) => (cmd.as_str(), args),
        None => ("", &[][..]),
    };
    if matches!(
        cmd,
        "check-config" | "passwd" | "mailq" | "queue" | "newaliases" | "test" | "dkim"
    ) {
        default_sigpipe();
    }
    if cmd == "check-config" {
        return check_config(&config_path);
    }
    if cmd == "dkim" {
        return crate::dkim::keygen::main(args);
    }
    if cmd == "passwd" {
        return passwd(args.first().map(String::as_str));
    }
    let cfg = match load(&config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cmd {
        "" => crate::run_daemon(cfg, config_path, detach),
        "sendmail" => sendmail::main(cfg, args.to_vec()),
        "mail" | "mailx" => mail::main(cfg, args.to_vec()),
        "mailq" => queue::mailq(cfg),
        "queue" => queue::main(cfg, args),
        "newaliases" => newaliases(cfg),
        "test" => test::main(cfg, args),
        "oauth" => oauth::main(cfg, args),
        other => {
            eprintln!("tern: unknown command {other:?}\n{HELP}");
            EX_USAGE
        }
    }
}

/// For the tools that only report (`mailq`, `queue`, `check-config`, ...):
/// a reader that goes away (`mailq | head`) ends them by SIGPIPE, as it
/// ends a C tool. With Rust's default (SIGPIPE ignored) `println!` panics
/// on the broken pipe instead, which the release build turns into an
/// abort and a core dump. Not for the daemon (it ignores SIGPIPE, see
/// `reactor::signals`) nor `sendmail` (its `-bs` session handles its own
/// errors).
fn default_sigpipe() {
    // SAFETY: signal(2) setting the default disposition; no handler runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// For the sendmail/mailq personalities: an optional leading `-c FILE`
/// (tern's own), then the compatible flags.
fn with_config(rest: &mut Vec<String>, f: impl FnOnce(Config, PathBuf, Vec<String>) -> i32) -> i32 {
    let mut path = env_config_path();
    if let [flag, file, ..] = rest.as_slice() {
        if flag == "-c" {
            path = PathBuf::from(file);
            rest.drain(..2);
        }
    }
    match load(&path) {
        Ok(cfg) => f(cfg, path, std::mem::take(rest)),
        Err(code) => code,
    }
}

/// The configuration of the multi-call personalities: `TERN_CONFIG`, else
/// the default.
fn env_config_path() -> PathBuf {
    PathBuf::from(std::env::var("TERN_CONFIG").unwrap_or_else(|_| DEFAULT_CONFIG.into()))
}

pub fn load(path: &Path) -> Result<Config, i32> {
    Config::load(path).map_err(|errors| {
        for e in &errors {
            eprintln!("tern: {e}");
        }
        EX_CONFIG
    })
}

/// `check-config`'s exit code for any error (SPEC).
const CHECK_FAILED: i32 = 1;

fn check_config(path: &Path) -> i32 {
    match Config::load(path) {
        Ok(cfg) => {
            let mut code = EX_OK;
            if let Ok((_, errors)) = crate::delivery::aliases::Aliases::load(&cfg.aliases) {
                for e in errors {
                    eprintln!("tern: {}:{}: {}", cfg.aliases.display(), e.line, e.message);
                    code = CHECK_FAILED;
                }
            }
            // What the daemon needs at start-up, checked the same way.
            for problem in crate::daemon::startup_problems(&cfg) {
                eprintln!("tern: {problem}");
                code = CHECK_FAILED;
            }
            for warning in crate::daemon::startup_warnings(&cfg) {
                eprintln!("tern: warning: {warning}");
            }
            if code == EX_OK {
                println!("{}: ok", path.display());
            }
            code
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("tern: {e}");
            }
            CHECK_FAILED
        }
    }
}

fn newaliases(cfg: Config) -> i32 {
    match crate::delivery::aliases::Aliases::load(&cfg.aliases) {
        Ok((a, errors)) => {
            for e in &errors {
                eprintln!(
                    "newaliases: {}:{}: {}",
                    cfg.aliases.display(),
                    e.line,
                    e.message
                );
            }
            println!("{}: {} aliases", cfg.aliases.display(), a.len());
            if errors.is_empty() {
                EX_OK
            } else {
                EX_DATAERR
            }
        }
        Err(e) => {
            eprintln!("newaliases: {}: {e}", cfg.aliases.display());
            EX_NOINPUT
        }
    }
}

/// `tern passwd USER`: one `USER:HASH` line for `users_file`.
fn passwd(user: Option<&str>) -> i32 {
    let Some(user) = user.filter(|u| {
        !u.is_empty() && !u.contains([':', '\n', '\r']) && !u.contains(char::is_whitespace)
    }) else {
        eprintln!("usage: tern passwd USER   (the password is read from standard input; no ':' or spaces in USER)");
        return EX_USAGE;
    };
    let mut line = String::new();
    if std::io::stdin().read_line(&mut line).is_err() {
        eprintln!("tern: passwd: cannot read the password");
        return EX_DATAERR;
    }
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        eprintln!("tern: passwd: empty password");
        return EX_DATAERR;
    }
    match crate::auth::new_hash(password) {
        Ok(hash) => {
            println!("{user}:{hash}");
            EX_OK
        }
        Err(e) => {
            eprintln!("tern: passwd: {e}");
            EX_SOFTWARE
        }
    }
}
