//! Fuzz drivers: one `pub fn NAME(data: &[u8])` per cargo-fuzz target in
//! `fuzz/`, also replayed over the checked-in corpora by
//! `tests/fuzz_regressions.rs`.
//!
//! Each driver feeds the bytes to tern's real parser or sans-IO machine, the
//! way the daemon does, and checks properties with `assert!`: a violation
//! panics, which libFuzzer reports as a crash. Input crosses a trust
//! boundary in every target: a network peer (SMTP commands, DATA, server
//! replies, DNS answers), a local user (sendmail drops, spool files) or the
//! administrator (config, aliases, users files).
//!
//! Drivers that need more than one input (chunk sizes, timer events, modes)
//! take them from the first bytes of the input and use the rest as the byte
//! stream, so a checked-in seed stays readable at its end.
//!
//! The binary never calls these functions, so they cost no flash.
//!
//! The drivers live in one submodule per group of targets (`syntax`,
//! `mail`, `mime`, `oauth`, `rewrite`, `routing`, `server`, `client`, `http`, `dns`, `spool`, `admin`) and are re-exported
//! here under their target names; this module keeps what several groups
//! share: the `Input` parameter reader, the checks on output bytes, and
//! the local domains, aliases and users the drivers agree on.

// Drivers, not daemon code: a panic (an assert or an index off the end) is
// how a property violation reaches libFuzzer, so the crate-wide slicing
// lints do not apply here.
#![allow(clippy::indexing_slicing, clippy::string_slice)]

use std::collections::HashSet;

use crate::smtp::address::{self, parse_path, Address, MAX_PATH};
use crate::smtp::command::{parse_command, Body, Command, MailParams, PathText};
use crate::smtp::reply::Reply;

// ---------------------------------------------------------------------------
// Input helpers

/// Reads driver parameters from the front of the input; past the end every
/// read gives zeros, so any input is a valid parameter set.
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn new(data: &'a [u8]) -> Input<'a> {
        Input { data }
    }

    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    /// A length byte, then that many bytes as (lossy) UTF-8.
    fn string(&mut self) -> String {
        let n = usize::from(self.byte());
        String::from_utf8_lossy(self.bytes(n)).into_owned()
    }

    fn pick<T: Copy>(&mut self, options: &[T]) -> T {
        options[usize::from(self.byte()) % options.len()]
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn rest(self) -> &'a [u8] {
        self.data
    }
}

fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// Every line break is CRLF: no bare CR, no bare LF.
fn assert_crlf_only(bytes: &[u8], what: &str) {
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\r' {
            assert_eq!(bytes.get(i + 1), Some(&b'\n'), "bare CR at {i} in {what}");
        }
        if b == b'\n' {
            assert!(i > 0 && bytes[i - 1] == b'\r', "bare LF at {i} in {what}");
        }
    }
}

/// Server replies: complete `DDD SP text CRLF` / `DDD-text CRLF` lines of
/// printable ASCII, so no client byte can inject a line.
fn assert_reply_lines(out: &[u8]) {
    assert!(out.is_empty() || out.ends_with(b"\r\n"), "reply not ended");
    for line in out.split(|&b| b == b'\n') {
        let Some(line) = line.strip_suffix(b"\r") else {
            assert!(line.is_empty(), "reply line without CRLF: {:?}", text(line));
            continue;
        };
        assert!(line.len() >= 3, "short reply line {:?}", text(line));
        assert!(
            line[..3].iter().all(u8::is_ascii_digit),
            "reply code {:?}",
            text(line)
        );
        assert!(
            matches!(line.get(3), None | Some(b' ' | b'-')),
            "reply separator {:?}",
            text(line)
        );
        assert!(
            line.iter().all(|&b| (0x20..0x7f).contains(&b)),
            "non-printable reply byte in {:?}",
            text(line)
        );
    }
}

/// Client commands: complete CRLF lines of printable ASCII.
fn assert_command_lines(out: &[u8]) {
    assert!(
        out.is_empty() || out.ends_with(b"\r\n"),
        "command not ended"
    );
    assert_crlf_only(out, "client commands");
    assert!(
        out.iter()
            .all(|&b| b == b'\r' || b == b'\n' || (0x20..0x7f).contains(&b)),
        "non-printable command byte: {:?}",
        text(out)
    );
}

fn assert_reply(r: &Reply) {
    for enhanced in [false, true] {
        let mut out = Vec::new();
        r.write_to(&mut out, enhanced);
        assert_reply_lines(&out);
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
    }
}

// ---------------------------------------------------------------------------
// Fixtures and checks shared by several groups

/// A parsed address prints as a path that parses back to the same value and
/// never holds CR, LF or NUL.
fn check_address(a: &Address) {
    let printed = a.to_string();
    assert!(
        !printed.contains(['\r', '\n', '\0']),
        "printed address {printed:?}"
    );
    assert!(a.domain.len() <= address::MAX_DOMAIN && !a.local.is_empty());
    assert_eq!(
        a.domain,
        a.domain.to_ascii_lowercase(),
        "domain not lower-cased"
    );
    assert_eq!(
        Address::parse_mailbox(&printed).as_ref(),
        Ok(a),
        "{printed}"
    );
    assert_eq!(Address::from_parts(&a.local, &a.domain).as_ref(), Ok(a));
    // Every address fits in a path of RFC 5321's 256 octets, and reads
    // back through the path parser and the commands that carry it.
    let path = format!("<{printed}>");
    assert!(path.len() <= MAX_PATH, "path of {} octets", path.len());
    {
        assert_eq!(parse_path(&path), Ok(Some(a.clone())), "{path}");
        let rcpt = format!("RCPT TO:{path}");
        let text = if path.is_ascii() {
            PathText::Ascii
        } else {
            PathText::Utf8
        };
        assert_eq!(
            parse_command(rcpt.as_bytes()),
            Ok(Command::Rcpt(Some(a.clone()), text, Default::default())),
            "{rcpt}"
        );
        // The printed form needs SMTPUTF8 exactly when the address does.
        assert_eq!(text == PathText::Utf8, a.needs_smtputf8(), "{path}");
        let mail = format!("MAIL FROM:{path} SIZE=10 SMTPUTF8");
        assert_eq!(
            parse_command(mail.as_bytes()),
            Ok(Command::Mail(
                Some(a.clone()),
                MailParams {
                    size: Some(10),
                    body: Body::SevenBit,
                    smtputf8: true,
                    requiretls: false,
                    dsn: Default::default(),
                }
            )),
            "{mail}"
        );
    }
}

const LOCAL_DOMAINS: [&str; 2] = ["local.test", "mx.local.test"];

const FUZZ_ALIASES: &str = "postmaster: root\nroot: joe\nlist: joe, ann, bob@remote.test\n\
                            loop1: loop2\nloop2: loop1\nbad: \"a b\"@local.test\n";

fn is_fuzz_local(domain: &str) -> bool {
    LOCAL_DOMAINS.iter().any(|d| d.eq_ignore_ascii_case(domain))
}

fn fuzz_users() -> HashSet<String> {
    ["joe", "ann", "root"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

// ---------------------------------------------------------------------------
// The drivers, one module per group of targets

mod admin;
mod client;
mod dkim;
mod dns;
mod http;
mod mail;
mod mime;
mod oauth;
mod rewrite;
mod routing;
mod server;
mod spool;
mod syntax;

pub use admin::{aliases, config, sasl, users};
pub use client::{smtp_client, smtp_client_reply};
pub use dkim::dkim_canon;
pub use dns::{dns_resolver, dns_wire};
pub use http::http_response;
pub use mail::mail_compose;
pub use mime::mime_downgrade;
#[cfg(test)] // for the quoted-printable checks in smtp::mime7bit's tests
pub(crate) use mime::qp_decode;
pub use oauth::oauth_json;
pub use rewrite::sender_rewrite;
pub use routing::routes;
pub use server::smtp_server;
pub use spool::{spool_drop, spool_envelope, spool_state};
pub use syntax::{smtp_address, smtp_command, smtp_data};

/// A fuzz driver.
pub type Driver = fn(&[u8]);

/// Every target, by name (the regression test replays corpora through it).
pub const TARGETS: &[(&str, Driver)] = &[
    ("smtp_command", smtp_command),
    ("smtp_address", smtp_address),
    ("smtp_server", smtp_server),
    ("smtp_data", smtp_data),
    ("smtp_client", smtp_client),
    ("smtp_client_reply", smtp_client_reply),
    ("dns_wire", dns_wire),
    ("dns_resolver", dns_resolver),
    ("spool_envelope", spool_envelope),
    ("spool_state", spool_state),
    ("spool_drop", spool_drop),
    ("config", config),
    ("aliases", aliases),
    ("users", users),
    ("sasl", sasl),
    ("mime_downgrade", mime_downgrade),
    ("sender_rewrite", sender_rewrite),
    ("routes", routes),
    ("mail_compose", mail_compose),
    ("oauth_json", oauth_json),
    ("http_response", http_response),
    ("dkim_canon", dkim_canon),
];
