//! Drivers for the administrator's files: the config (`config`), aliases
//! (`aliases`) and users (`users`) files, and the SASL exchanges that check
//! users' passwords (`sasl`).
//!
//! Separate from the other groups of targets: see the parent module for what
//! the drivers share.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::time::Instant;

use crate::auth::{self, SaslServer, SaslStep, Users};
use crate::config::{self, Cidr, Config, HostPort};
use crate::delivery::aliases::{Aliases, Target, MAX_EXPANSION};
use crate::delivery::RecipientPolicy;
use crate::smtp::address;

use super::{fuzz_users, is_fuzz_local, text, Input};

/// `config::Config::parse` (and resolv.conf, read the same way): a config
/// that parses is valid, and its typed values print and parse back.
pub fn config(data: &[u8]) {
    let s = text(data);
    let lines = s.lines().count();
    match Config::parse(&s, "fuzz.conf") {
        Ok(cfg) => {
            assert!(address::is_valid_domain(&cfg.hostname));
            assert!(cfg.max_message_size > 0 && !cfg.retry_schedule.is_empty());
            assert!(cfg.max_recipients > 0 && cfg.max_errors > 0 && cfg.hop_limit > 0);
            assert!(cfg.mx_port != 0);
            assert!(cfg.retry_schedule.iter().all(|d| !d.is_zero()));
            for listener in cfg
                .listen
                .iter()
                .chain(&cfg.submission_listen)
                .chain(&cfg.smtps_listen)
            {
                assert!(listener.port() != 0);
            }
            for c in &cfg.relay_networks {
                assert_eq!(Cidr::parse(&c.to_string()).as_ref(), Ok(c));
            }
            for h in &cfg.smarthost {
                assert_eq!(HostPort::parse(&h.to_string(), 25).as_ref(), Ok(h));
            }
            for d in &cfg.local_domains {
                assert!(cfg.is_local_domain(d) && cfg.is_local_domain(&d.to_ascii_uppercase()));
            }
        }
        Err(errors) => {
            assert!(!errors.is_empty());
            assert!(errors.windows(2).all(|w| w[0].line <= w[1].line));
            assert!(errors.iter().all(|e| e.line <= lines));
        }
    }
    let resolv = crate::dns::parse_resolv_conf(&s);
    assert!(!resolv.servers.is_empty() && resolv.servers.len() <= 3);
    assert!(resolv.attempts >= 1 && !resolv.timeout.is_zero());
    for line in s.lines().take(50) {
        let value = line.split_once('=').map_or(line, |(_, v)| v).trim();
        if let Ok(c) = Cidr::parse(value) {
            assert_eq!(Cidr::parse(&c.to_string()), Ok(c), "{value:?}");
            let _ = c.contains([127, 0, 0, 1].into());
        }
        if let Ok(h) = HostPort::parse(value, 25) {
            assert!(h.port != 0);
            assert_eq!(HostPort::parse(&h.to_string(), 25).as_ref(), Ok(&h));
        }
        if let Ok(d) = config::parse_duration(value) {
            assert!(d <= config::MAX_DURATION);
        }
        let _ = config::parse_size(value);
    }
}

/// `delivery::aliases`: parse arbitrary files and expand every name they
/// define: a successful expansion is never empty, bounded, duplicate-free
/// and never names a local domain as remote.
pub fn aliases(data: &[u8]) {
    let s = text(data);
    let (aliases, errors) = Aliases::parse(&s);
    let lines = s.lines().count();
    assert!(errors.iter().all(|e| e.line >= 1 && e.line <= lines));
    assert!(aliases.len() <= lines);
    let mut names: Vec<String> = s
        .lines()
        .filter_map(|l| {
            l.split_once(':')
                .map(|(n, _)| n.trim().trim_matches('"').to_string())
        })
        .take(32)
        .collect();
    names.extend(["postmaster", "root", "nobody", "Joe+ext"].map(String::from));
    let users = fuzz_users();
    for name in &names {
        if let Ok(targets) = aliases.expand(name, &is_fuzz_local) {
            assert!(!targets.is_empty(), "{name:?} expands to nothing");
            assert!(targets.len() <= MAX_EXPANSION);
            let unique: HashSet<&Target> = targets.iter().collect();
            assert_eq!(unique.len(), targets.len(), "duplicate targets");
            for t in &targets {
                if let Target::Remote(a) = t {
                    assert!(!is_fuzz_local(&a.domain), "local domain as remote: {a}");
                }
            }
        }
        for any_local in [false, true] {
            let policy = RecipientPolicy {
                is_local_domain: &is_fuzz_local,
                aliases: &aliases,
                users: &users,
                any_local,
            };
            if let Ok(destinations) = policy.resolve_local(name) {
                assert!(!destinations.is_empty(), "{name:?} goes nowhere");
            }
        }
    }
}

/// `auth::Users`: arbitrary users files (never echoing a hash in an error),
/// and a constructed entry that verifies exactly its own password.
pub fn users(data: &[u8]) {
    let s = text(data);
    let (users, errors) = Users::parse(&s);
    let all: Vec<&str> = s.lines().collect();
    assert!(users.len() <= all.len());
    for (line, message) in &errors {
        assert!(*line >= 1 && *line <= all.len());
        let (user, hash) = all[*line - 1].split_once(':').unwrap_or(("", ""));
        let hash = hash.trim();
        // Messages hold no '$' but in this example, so a hash-like text
        // found in one was copied from the line.
        if hash.starts_with('$') && hash.len() >= 12 && message.contains(hash) {
            assert!(
                user.contains(hash) || "$pbkdf2-sha256$ITER$SALT$HASH".contains(hash),
                "error echoes the hash: {message}"
            );
        }
    }

    // A users file with one entry of 1 to 4 rounds (cheap to verify).
    let mut input = Input::new(data);
    let rounds = 1 + u32::from(input.byte() % 4);
    let password = input.string();
    let salt = input.bytes(16).to_vec();
    if password.is_empty() || salt.is_empty() {
        return;
    }
    let mut hash = [0u8; 32];
    let iterations = NonZeroU32::new(rounds).expect("non-zero");
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        &salt,
        password.as_bytes(),
        &mut hash,
    );
    let line = format!(
        "$pbkdf2-sha256${rounds}${}${}",
        auth::base64_encode(&salt),
        auth::base64_encode(&hash)
    );
    let (mut users, errors) = Users::parse(&format!("# fuzz\njoe:{line}\n"));
    assert!(errors.is_empty(), "{errors:?}");
    assert!(users.check("joe", &password, Instant::now()));
    assert!(!users.check("joe", &format!("{password}x"), Instant::now()));
    assert!(!users.check("nobody", &password, Instant::now()));
    assert!(auth::verify_password(&line, &password));
}

fn check_sasl_step(step: &SaslStep) {
    match step {
        SaslStep::Done { user, password } => {
            for c in [user, password] {
                assert!(!c.is_empty() && c.len() <= auth::MAX_CREDENTIAL_LEN);
                assert!(!c.contains('\0'));
            }
        }
        SaslStep::Challenge(c) => assert!(auth::base64_decode(c).is_some()),
        SaslStep::Failed(_) | SaslStep::Cancelled => {}
    }
}

/// `auth`: base64 (strict and canonical) and SASL PLAIN/LOGIN exchanges,
/// both arbitrary and built from credentials taken from the input.
pub fn sasl(data: &[u8]) {
    let encoded = auth::base64_encode(data);
    assert_eq!(auth::base64_decode(&encoded).as_deref(), Some(data));
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some(decoded) = auth::base64_decode(s) {
            assert_eq!(
                auth::base64_encode(&decoded),
                s,
                "non-canonical base64 accepted"
            );
        }
    }

    // An arbitrary exchange: the first line is the AUTH argument.
    let s = text(data);
    let mut lines = s.split('\n');
    if let Ok((mut server, step)) = SaslServer::start(lines.next().unwrap_or("")) {
        check_sasl_step(&step);
        let mut finished = !matches!(step, SaslStep::Challenge(_));
        for line in lines.take(8) {
            let step = server.step(line);
            check_sasl_step(&step);
            if finished {
                assert!(matches!(step, SaslStep::Failed(_)), "step after the end");
            }
            finished |= !matches!(step, SaslStep::Challenge(_));
        }
    }

    // Credentials from the input must come through PLAIN and LOGIN intact.
    let (user, password) = s.split_once('\0').unwrap_or((&s, "pw"));
    let valid = |c: &str| !c.is_empty() && c.len() <= auth::MAX_CREDENTIAL_LEN && !c.contains('\0');
    if !valid(user) || !valid(password) {
        return;
    }
    let done = SaslStep::Done {
        user: user.to_string(),
        password: password.to_string(),
    };
    for authzid in ["", user] {
        let message = auth::base64_encode(format!("{authzid}\0{user}\0{password}").as_bytes());
        let (_, step) = SaslServer::start(&format!("PLAIN {message}")).expect("PLAIN");
        assert_eq!(step, done, "PLAIN initial response");
        let (mut server, step) = SaslServer::start("plain").expect("PLAIN");
        assert_eq!(step, SaslStep::Challenge(String::new()));
        assert_eq!(server.step(&message), done, "PLAIN response");
    }
    let (mut server, step) = SaslServer::start("LOGIN").expect("LOGIN");
    assert_eq!(step, SaslStep::Challenge(auth::LOGIN_USER_PROMPT.into()));
    let step = server.step(&auth::base64_encode(user.as_bytes()));
    assert_eq!(
        step,
        SaslStep::Challenge(auth::LOGIN_PASSWORD_PROMPT.into())
    );
    assert_eq!(server.step(&auth::base64_encode(password.as_bytes())), done);
}
