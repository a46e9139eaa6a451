//! `tern [-c FILE] test [-f FROM] ADDRESS` (SPEC "Router mail"): sends a
//! test message through the route the daemon would use, prints the whole
//! SMTP dialogue (secrets masked, peer text escaped) and ends with a
//! diagnosis naming the setting to change.
//!
//! Same route and settings as the daemon: the smarthosts (hosts file
//! first, then DNS) or the MX hosts of ADDRESS's domain, through
//! `dns_servers`; `helo_name`, the TLS policy, the smarthost credentials
//! (`daemon::outbound::settings`), the CA certificates
//! (`daemon::load_tls_client`) and the sender rewriting of locally
//! originated mail (`RewriteTable::outbound`). The delivery itself is the
//! daemon's machine (`outbound::machine::Delivery`), moved by a blocking
//! driver ([`driver`]) since a command may block.
//!
//! An address whose route is a `webhook:` line gets one test notification
//! instead (`webhook`).
//!
//! Exit codes: 0 accepted by the next hop; 75 a temporary failure; 69 a
//! permanent refusal; 78 a configuration error; 64 a usage error.

pub mod diagnose;
pub mod driver;
pub mod transcript;
mod webhook;

use std::io::Write;
use std::rc::Rc;
use std::time::Instant;

use super::{EX_CONFIG, EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE, EX_USAGE};
use crate::config::{Config, SmarthostTls};
use crate::delivery::outcome::Outcome;
use crate::outbound::machine::Delivery;
use crate::outbound::Job;
use crate::rewrite::{RewriteTable, SenderOrigin};
use crate::smtp::address::Address;
use crate::spool::QueueId;
use diagnose::{Diagnosis, Evidence, RouteFacts};
use transcript::Transcript;

const USAGE: &str = "usage: tern [-c FILE] test [-f FROM] ADDRESS";

#[derive(Debug, PartialEq, Eq)]
pub struct Args {
    pub from: Option<String>,
    pub address: String,
}

pub fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut from = None;
    let mut address = None;
    let mut i = 0;
    while let Some(a) = args.get(i) {
        match a.as_str() {
            "-f" | "-r" => {
                let Some(f) = args.get(i + 1) else {
                    return Err("-f needs an address".into());
                };
                from = Some(f.clone());
                i += 2;
            }
            s if s.starts_with('-') && s.len() > 1 => return Err(format!("unknown flag {s}")),
            s => {
                if address.is_some() {
                    return Err("one ADDRESS only".into());
                }
                address = Some(s.to_string());
                i += 1;
            }
        }
    }
    let address = address.ok_or_else(|| "ADDRESS is missing".to_string())?;
    Ok(Args { from, address })
}

pub fn main(cfg: Config, args: &[String]) -> i32 {
    let args = match parse_args(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tern test: {e}\n{USAGE}");
            return EX_USAGE;
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    run(&cfg, &args, &mut out)
}

/// The whole command, printing to `out`; returns the exit code.
pub fn run(cfg: &Config, args: &Args, out: &mut impl Write) -> i32 {
    let rcpt_text = super::sendmail::qualify(cfg, &args.address);
    let Ok(rcpt) = Address::parse_mailbox(&rcpt_text) else {
        eprintln!("tern test: bad address {:?}\n{USAGE}", args.address);
        return EX_USAGE;
    };
    if cfg.is_local_domain(&rcpt.domain) {
        eprintln!(
            "tern test: {rcpt} is in local_domains: tern delivers it to a local mailbox, \
             not through SMTP; give an address that leaves this host"
        );
        return EX_USAGE;
    }
    let given = args.from.as_deref().unwrap_or("root");
    let original_sender = super::sendmail::envelope_sender(cfg, Some(given));
    // The route as the queue runner decides it (routes, else the
    // smarthost keys, else MX), from the envelope sender as received.
    let (routes, route_problems) = crate::routes::RouteTable::load(cfg);
    for p in &route_problems {
        eprintln!("tern test: {p}");
    }
    if !route_problems.is_empty() {
        return EX_CONFIG;
    }
    if let crate::routes::RouteChoice::Route(crate::routes::Route {
        line,
        target: crate::routes::Target::Webhook { url, format },
        ..
    }) = routes.route_for(&original_sender, &rcpt.domain)
    {
        return webhook::run(cfg, *line, url, *format, &rcpt_text, out);
    }
    let smarthost_relay = crate::routes::Relay::smarthost(cfg).map(Rc::new);
    let key = match crate::daemon::runner::remote_destination(
        cfg,
        &routes,
        &smarthost_relay,
        &original_sender,
        &rcpt.domain,
    ) {
        Ok(key) => key,
        Err(reason) => {
            let _ = writeln!(out, "\nResult: not delivered: {reason}");
            let _ = writeln!(out, "Setting: the line of the routes file named above");
            return EX_TEMPFAIL;
        }
    };
    let route_line = match routes.route_for(&original_sender, &rcpt.domain) {
        crate::routes::RouteChoice::Route(r) => Some(r.line),
        crate::routes::RouteChoice::Default => None,
    };
    if !original_sender.is_empty() && Address::parse_mailbox(&original_sender).is_err() {
        eprintln!("tern test: bad sender {given:?}\n{USAGE}");
        return EX_USAGE;
    }
    let (table, problems) = RewriteTable::load(cfg);
    for p in &problems {
        eprintln!("tern test: {p}");
    }
    if !problems.is_empty() {
        return EX_CONFIG;
    }
    let table = Rc::new(table);
    let (sender, rewrite) =
        RewriteTable::outbound(&table, QueueId(0), &original_sender, SenderOrigin::Local);

    let smarthost = key.relay.is_some();
    let tls_verify = match crate::daemon::load_tls_client(cfg) {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(out, "* warning: no CA certificates: {e}");
            None
        }
    };
    let mut job = Job {
        id: QueueId(0),
        domain: key.domain.clone(),
        sender: sender.clone(),
        recipients: vec![(0, rcpt_text.clone())],
        size: 0,
        eight_bit: false,
        utf8_content: false,
        requiretls: false,
        arrival: crate::daemon::unix_now(),
        rewrite,
        dkim: None,
        relay: key.relay.clone(),
        lmtp: None,
        dsn: Default::default(),
    };
    let hosts =
        crate::daemon::dns::load_hosts(std::path::Path::new(crate::daemon::dns::HOSTS_FILE));
    // An OAuth relay: the token command or the refresh grant runs here
    // (a command may block).
    let source = job.relay.as_ref().and_then(|r| r.oauth_source());
    let refresh = matches!(source, Some(crate::oauth::TokenSpec::Refresh(_)));
    let oauth = source.map(|s| crate::daemon::oauth::fetch_blocking_spec(cfg, s));
    let token = oauth
        .as_ref()
        .and_then(|r| r.as_ref().ok())
        .map(String::as_str);
    let hops_settings = match &oauth {
        Some(Err(e)) => Err(format!("no OAuth2 access token: {e}")),
        _ => crate::daemon::outbound::job_hops_and_settings(
            cfg,
            tls_verify.is_some(),
            &job,
            &cfg.smarthost,
            |name| hosts.get(&name.to_ascii_lowercase()).cloned(),
            token,
        ),
    };
    let (hops, settings) = match hops_settings {
        Ok(hs) => hs,
        Err(e) => {
            // The daemon defers such a job without connecting.
            let _ = writeln!(out, "\nResult: not delivered: {e}");
            let _ = writeln!(
                out,
                "Setting: {}",
                match (route_line.is_some(), oauth.is_some(), refresh) {
                    (true, false, _) => "password_file= on the routes line",
                    (false, false, _) => "smarthost_password_file",
                    (true, true, false) => "oauth_token_command= on the routes line",
                    (false, true, false) => "smarthost_oauth_token_command",
                    (true, true, true) =>
                        "oauth_refresh_token_file= (tern oauth login) or oauth_token_url= on the routes line",
                    (false, true, true) =>
                        "smarthost_oauth_refresh_token_file (tern oauth login) or smarthost_oauth_token_url",
                }
            );
            return EX_TEMPFAIL;
        }
    };
    let facts = RouteFacts {
        smarthost,
        smarthost_tls: key.relay.as_ref().map_or(cfg.smarthost_tls, |r| r.tls),
        credentials: settings.credentials.is_some(),
        trust_anchors: tls_verify.is_some(),
    };
    let route = route_words(cfg, &rcpt.domain, key.relay.as_deref(), route_line);
    let _ = writeln!(out, "* route: {route}");
    if sender != original_sender {
        let _ = writeln!(
            out,
            "* sender: <{original_sender}> rewritten to <{sender}> (sender_address / sender_rewrite)"
        );
    } else {
        let _ = writeln!(out, "* sender: <{sender}>");
    }
    if let Some(c) = &settings.credentials {
        let _ = writeln!(out, "* AUTH as {}", crate::logsafe::LogSafe(&c.user));
    }

    let body = message(
        cfg,
        (&original_sender, &sender),
        &rcpt_text,
        &route,
        &settings.helo_name,
    );
    job.size = body.len() as u64;
    let write_timeout = settings.reply_timeout;
    let machine = Delivery::new(job, hops, settings, Instant::now());
    let resolver = crate::dns::Resolver::new(
        crate::daemon::dns::resolver_config(cfg),
        Box::new(|buf: &mut [u8]| crate::random::fill(buf).map_err(|_| ())),
    );
    let transcript = Transcript::new(&mut *out);
    let driver = driver::Driver::new(
        machine,
        resolver,
        tls_verify,
        body,
        write_timeout,
        transcript,
    );
    let (outcome, seen, session, _) = driver.run();
    let reason = match outcome {
        Outcome::Delivered { relay } => {
            let _ = writeln!(
                out,
                "\nResult: accepted by {}: the route works.",
                crate::logsafe::LogSafe(&relay)
            );
            return EX_OK;
        }
        Outcome::Deferred(r) | Outcome::Failed(r) => r,
    };
    let evidence = Evidence {
        stage: session.refused_at,
        tls: seen.tls,
        silent: seen.port.is_some() && !seen.heard,
        port: seen.port,
        starttls_offered: session.starttls_offered,
        reason,
    };
    let d = diagnose::diagnose(&evidence, &facts);
    print_diagnosis(out, &evidence, &d);
    if evidence.reason.is_permanent() {
        EX_UNAVAILABLE
    } else {
        EX_TEMPFAIL
    }
}

fn print_diagnosis(out: &mut impl Write, e: &Evidence, d: &Diagnosis) {
    let _ = writeln!(
        out,
        "\nResult: not delivered: {}",
        crate::logsafe::log_safe(&e.reason)
    );
    let _ = writeln!(out, "Diagnosis: {}", d.summary);
    match d.setting {
        Some(s) => {
            let _ = writeln!(out, "Setting: {s}");
        }
        None => {
            let _ = writeln!(out, "Setting: none in tern.conf");
        }
    }
    let _ = writeln!(out, "Advice: {}", d.advice);
}

/// The route in words, for the dialogue and the message.
fn route_words(
    cfg: &Config,
    domain: &str,
    relay: Option<&crate::routes::Relay>,
    route_line: Option<usize>,
) -> String {
    let from = match (route_line, cfg.routes.as_deref()) {
        (Some(line), Some(file)) => format!("routes {}:{line}: ", file.display()),
        _ => String::new(),
    };
    let Some(relay) = relay else {
        let tls = match cfg.outbound_tls {
            crate::config::OutboundTls::Opportunistic => "opportunistic",
            crate::config::OutboundTls::Required => "required",
            crate::config::OutboundTls::None => "none",
        };
        return format!(
            "{from}the MX hosts of {domain}, port {} (outbound_tls = {tls})",
            cfg.mx_port
        );
    };
    let hosts: Vec<String> = relay.hosts.iter().map(|h| h.to_string()).collect();
    let tls = match relay.tls {
        SmarthostTls::StartTls => "starttls",
        SmarthostTls::Tls => "tls",
        SmarthostTls::None => "none",
    };
    if route_line.is_some() {
        format!("{from}smtp:{} (tls={tls})", hosts.join(", "))
    } else {
        format!("smarthost {} (smarthost_tls = {tls})", hosts.join(", "))
    }
}

/// The test message (CRLF lines). `From:` carries the original sender:
/// the client rewrites it as the daemon's delivery would. `senders`: the
/// original and the envelope sender after rewriting.
fn message(cfg: &Config, senders: (&str, &str), rcpt: &str, route: &str, helo: &str) -> Vec<u8> {
    let (sender, envelope) = senders;
    let now = crate::daemon::unix_now();
    let id = super::sendmail::new_message_id(cfg, now)
        .unwrap_or_else(|_| format!("<{now}.{}@{}>", std::process::id(), cfg.hostname));
    let from = if sender.is_empty() {
        format!("MAILER-DAEMON@{}", cfg.hostname)
    } else {
        sender.to_string()
    };
    let lines = [
        format!("From: {from}"),
        format!("To: {rcpt}"),
        format!("Subject: tern test from {}", cfg.hostname),
        format!(
            "Date: {}",
            crate::bounce::rfc5322_date(i64::try_from(now).unwrap_or(0), 0)
        ),
        format!("Message-ID: {id}"),
        String::new(),
        format!(
            "This is a test message sent by `tern test` on {}.",
            cfg.hostname
        ),
        String::new(),
        format!("Route: {route}"),
        format!("EHLO name: {helo}"),
        if envelope == sender {
            format!("Envelope sender: <{envelope}>")
        } else {
            format!("Envelope sender: <{envelope}> (rewritten from <{sender}>)")
        },
        String::new(),
        "If you read this, mail from this host reaches you.".to_string(),
    ];
    let mut body = Vec::new();
    for l in lines {
        body.extend_from_slice(l.as_bytes());
        body.extend_from_slice(b"\r\n");
    }
    body
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn arguments() {
        assert_eq!(
            parse_args(&s(&["-f", "me@x.example", "you@y.example"])),
            Ok(Args {
                from: Some("me@x.example".into()),
                address: "you@y.example".into()
            })
        );
        assert!(parse_args(&s(&[])).is_err());
        assert!(parse_args(&s(&["a@b", "c@d"])).is_err());
        assert!(parse_args(&s(&["-x", "a@b"])).is_err());
        assert!(parse_args(&s(&["a@b", "-f"])).is_err());
    }

    #[test]
    fn the_message_names_the_route() {
        let cfg = Config {
            hostname: "router.example".into(),
            ..Default::default()
        };
        let m = String::from_utf8(message(
            &cfg,
            ("root@router.example", "me@x.example"),
            "me@x.example",
            "smarthost smtp.x.example:587 (smarthost_tls = starttls)",
            "router.example",
        ))
        .unwrap();
        assert!(m.starts_with("From: root@router.example\r\nTo: me@x.example\r\n"));
        assert!(m.contains("Subject: tern test from router.example\r\n"));
        assert!(m.contains("\r\nDate: ") && m.contains("\r\nMessage-ID: <"));
        assert!(m.contains("Route: smarthost smtp.x.example:587"));
        assert!(
            m.contains("Envelope sender: <me@x.example> (rewritten from <root@router.example>)")
        );
        assert!(m.ends_with("\r\n"));
    }
}
