//! Sender rewriting for mail that leaves the host (SPEC "Router mail":
//! `sender_address`, `sender_rewrite`, `qualify_domain`).
//!
//! Why: a provider's smarthost accepts only the senders the account owns
//! ("553 5.7.1 sender not owned by user"), so `root@router.lan` from cron
//! must leave as `me@example.com`; local delivery keeps the original.
//!
//! Decided once, into types:
//! - at reception, whether the message is locally originated
//!   ([`SenderOrigin`], stored in the spool envelope): a sendmail drop
//!   always is; an SMTP client is when it may relay (`relay_networks` or
//!   AUTH) and its `MAIL FROM` domain is a local domain. Nothing is
//!   re-derived from the client string later.
//! - when a remote job is built ([`RewriteTable::outbound`]): the envelope
//!   sender it uses and, for locally originated mail, the table the
//!   [`header::HeaderRewriter`] applies to the `From:`/`Sender:` addresses
//!   of the body stream. The null sender (bounces) is never rewritten.
//!
//! The `sender_rewrite` file: one `PATTERN ADDRESS` per line, `#` comment
//! lines and blank lines ignored, first match wins, before
//! `sender_address`:
//!
//! ```text
//! root            alerts@example.com   # local part, unqualified or in a local domain
//! root@router.lan cron@example.com     # exactly this address
//! @router.lan     me@example.com       # any address in this domain
//! *               me@example.com       # anything
//! ```
//!
//! Unqualified addresses are taken as `@qualify_domain`; local parts and
//! domains match ASCII case-insensitively. Not supported: regular
//! expressions, `+extension` matching, rewriting recipients (`To:`) or
//! `Return-Path`/`Reply-To`, SRS for forwarded foreign senders.

pub mod header;

use std::fmt;
use std::path::Path;
use std::rc::Rc;

use crate::config::Config;
use crate::smtp::address::Address;
use crate::spool::QueueId;

/// Largest `sender_rewrite` file read.
pub const MAX_REWRITE_FILE_BYTES: u64 = 1024 * 1024;

/// Who originated a stored message, decided at reception.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SenderOrigin {
    /// Submitted on this host (sendmail, `mail`) or by a trusted client
    /// with a sender in a local domain: its sender is rewritten when the
    /// mail leaves the host.
    Local,
    /// Anything else (and every spool file written before this existed).
    #[default]
    Other,
}

impl SenderOrigin {
    /// An SMTP client: local when it may relay and its sender's domain is
    /// local.
    pub fn of_smtp_client(
        sender: Option<&Address>,
        may_relay: bool,
        is_local_domain: &dyn Fn(&str) -> bool,
    ) -> SenderOrigin {
        match sender {
            Some(a) if may_relay && is_local_domain(&a.domain) => SenderOrigin::Local,
            _ => SenderOrigin::Other,
        }
    }
}

/// What a pattern matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// `root`: this local part, unqualified or in a local domain.
    User(String),
    /// `root@router.lan`: exactly this address.
    Address(Address),
    /// `@router.lan`: any address in this domain (lower-case).
    Domain(String),
    /// `*`: any address.
    Any,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub pattern: Pattern,
    pub address: Address,
}

/// A line of the `sender_rewrite` file that is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RewriteError {
    /// 1-based.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for RewriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// The rewrite table: the file's rules, then `sender_address`, with the
/// domains that make an address local.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RewriteTable {
    rules: Vec<Rule>,
    sender_address: Option<Address>,
    qualify_domain: String,
    /// Lower-case; includes `qualify_domain`.
    local_domains: Vec<String>,
}

/// The table as jobs share it (one load per start or SIGHUP).
pub type SenderMap = Rc<RewriteTable>;

impl RewriteTable {
    /// Parses the file's text: the good rules, and every bad line.
    pub fn parse_rules(text: &str) -> (Vec<Rule>, Vec<RewriteError>) {
        let mut rules: Vec<(usize, Rule)> = Vec::new();
        let mut errors = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let mut error = |message: String| errors.push(RewriteError { line, message });
            let fields: Vec<&str> = trimmed.split_whitespace().collect();
            let (pattern, address) = match fields.as_slice() {
                [p, a] => (*p, *a),
                [p, a, c, ..] if c.starts_with('#') => (*p, *a),
                _ => {
                    error(format!("expected `PATTERN ADDRESS`, got {trimmed:?}"));
                    continue;
                }
            };
            let pattern = match parse_pattern(pattern) {
                Ok(p) => p,
                Err(e) => {
                    error(e);
                    continue;
                }
            };
            let address = match Address::parse_mailbox(address) {
                Ok(a) => a,
                Err(_) => {
                    error(format!("bad address {address:?} (user@domain)"));
                    continue;
                }
            };
            if let Some((first, _)) = rules.iter().find(|(_, r)| r.pattern == pattern) {
                error(format!("duplicate pattern (first on line {first})"));
                continue;
            }
            rules.push((line, Rule { pattern, address }));
        }
        (rules.into_iter().map(|(_, r)| r).collect(), errors)
    }

    /// The table for `cfg`: the `sender_rewrite` file (read bounded) and
    /// `sender_address`. Problems are lines `FILE:LINE: message`; the good
    /// rules are kept.
    pub fn load(cfg: &Config) -> (RewriteTable, Vec<String>) {
        let mut problems = Vec::new();
        let rules = match &cfg.sender_rewrite {
            None => Vec::new(),
            Some(path) => match read_file(path) {
                Ok(text) => {
                    let (rules, errors) = RewriteTable::parse_rules(&text);
                    problems.extend(
                        errors
                            .into_iter()
                            .map(|e| format!("{}:{}: {}", path.display(), e.line, e.message)),
                    );
                    rules
                }
                Err(e) => {
                    problems.push(format!("sender_rewrite {}: {e}", path.display()));
                    Vec::new()
                }
            },
        };
        (RewriteTable::new(cfg, rules), problems)
    }

    /// Loads and logs each problem (the daemon at start and on SIGHUP).
    pub fn load_logged(cfg: &Config) -> SenderMap {
        let (table, problems) = RewriteTable::load(cfg);
        for p in problems {
            log::error!("{p}");
        }
        Rc::new(table)
    }

    pub fn new(cfg: &Config, rules: Vec<Rule>) -> RewriteTable {
        let mut local_domains = cfg.local_domains.clone();
        let qualify = cfg.qualify_domain.to_ascii_lowercase();
        if !local_domains.contains(&qualify) {
            local_domains.push(qualify.clone());
        }
        RewriteTable {
            rules,
            sender_address: cfg.sender_address.clone(),
            qualify_domain: qualify,
            local_domains,
        }
    }

    /// Nothing to rewrite: no rules and no `sender_address`.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.sender_address.is_none()
    }

    /// The address a locally originated sender leaves the host as, or
    /// `None` to keep it. `sender` is `user@domain` or an unqualified
    /// `user`; the null sender (empty) is never rewritten.
    pub fn rewrite_sender(&self, sender: &str) -> Option<Address> {
        let (local, domain) = split_address(sender, &self.qualify_domain)?;
        self.lookup(&local, &domain).cloned()
    }

    fn lookup(&self, local: &str, domain: &str) -> Option<&Address> {
        let is_local = self.local_domains.iter().any(|d| d == domain);
        self.rules
            .iter()
            .find(|r| match &r.pattern {
                Pattern::User(u) => is_local && u.eq_ignore_ascii_case(local),
                Pattern::Address(a) => a.domain == domain && a.local.eq_ignore_ascii_case(local),
                Pattern::Domain(d) => d == domain,
                Pattern::Any => true,
            })
            .map(|r| &r.address)
            .or(self.sender_address.as_ref())
    }

    /// For a remote job of a stored message: the envelope sender to use,
    /// and the table for its header rewriter (`None`: the body goes out as
    /// stored). Only locally originated mail with a sender is touched; a
    /// rewritten envelope sender is logged with the queue ID.
    pub fn outbound(
        table: &SenderMap,
        id: QueueId,
        sender: &str,
        origin: SenderOrigin,
    ) -> (String, Option<SenderMap>) {
        if origin != SenderOrigin::Local || sender.is_empty() || table.is_empty() {
            return (sender.to_string(), None);
        }
        let envelope = match table.rewrite_sender(sender) {
            Some(a) => {
                let a = a.to_string();
                log::info!("{id}: sender_rewrite from=<{sender}> to=<{a}>");
                a
            }
            None => sender.to_string(),
        };
        (envelope, Some(Rc::clone(table)))
    }
}

/// Splits `user@domain` (validated; the domain lower-cased) or a bare
/// `user` (then in `qualify`); `None` for the null sender or garbage.
fn split_address(text: &str, qualify: &str) -> Option<(String, String)> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if text.contains('@') {
        let a = Address::parse_mailbox(text).ok()?;
        return Some((a.local, a.domain));
    }
    is_unqualified_name(text).then(|| (text.to_string(), qualify.to_string()))
}

/// A bare local part as cron and scripts write it (`root`, `www-data`):
/// a dot-atom without `@`.
pub fn is_unqualified_name(text: &str) -> bool {
    !text.is_empty()
        && !text.starts_with('.')
        && !text.ends_with('.')
        && !text.contains("..")
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.".contains(&b))
}

fn parse_pattern(p: &str) -> Result<Pattern, String> {
    if p == "*" {
        return Ok(Pattern::Any);
    }
    if let Some(domain) = p.strip_prefix('@') {
        let d = domain.strip_suffix('.').unwrap_or(domain);
        return if crate::smtp::address::is_valid_domain(d) {
            Ok(Pattern::Domain(d.to_ascii_lowercase()))
        } else {
            Err(format!("bad domain in pattern {p:?}"))
        };
    }
    if p.contains('@') {
        return Address::parse_mailbox(p)
            .map(Pattern::Address)
            .map_err(|_| format!("bad address pattern {p:?}"));
    }
    if is_unqualified_name(p) {
        Ok(Pattern::User(p.to_string()))
    } else {
        Err(format!(
            "bad pattern {p:?} (user, user@domain, @domain or *)"
        ))
    }
}

fn read_file(path: &Path) -> std::io::Result<String> {
    let file = std::fs::File::open(path)?;
    let bytes = crate::system::read_bounded(file, MAX_REWRITE_FILE_BYTES)?;
    String::from_utf8(bytes)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"))
}

/// `check-config` and start-up: the `sender_rewrite` file's problems.
pub fn startup_problems(cfg: &Config) -> Vec<String> {
    RewriteTable::load(cfg).1
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)]
mod tests;
