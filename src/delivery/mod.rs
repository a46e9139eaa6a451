//! Delivery: where each recipient goes, and local delivery itself.
//!
//! ## Recipients are decided once
//!
//! A recipient is decided when the message is received — at `RCPT` for SMTP,
//! at import for a sendmail drop, when a bounce is created — by one function,
//! [`RecipientPolicy::resolve`], into typed [`Destination`]s: a local
//! [`Mailbox`], a remote [`Address`], or (sendmail only, which cannot refuse
//! a recipient in-line) a [`Refusal`] that becomes a bounce. The spool
//! stores those values field by field and the queue runner routes them as
//! they are; nothing is re-parsed or re-split later. (The open relay of
//! 80f8c34 came from checking `postmaster` before the `+` and then routing
//! the whole stored local part, re-split at its last `@`.)
//!
//! Local recipients (SPEC "Route"): the local part is lower-cased; an alias
//! of that exact name is expanded, otherwise the `+extension` is removed and
//! the name without it is looked up as an alias, then as a mailbox
//! (`postmaster` always exists); a name that is none of these goes to the
//! catch-all alias `*` when the file has one. Aliases are expanded when the message is
//! received (as OpenSMTPD does), so a change to `/etc/aliases` applies to
//! new mail, and each message is delivered once per final mailbox or remote
//! address, however many of its recipients lead there.
//!
//! Local delivery writes to Maildir (`mail_dir/USER/{tmp,new,cur}`) or mbox
//! (`mail_dir/USER`), prefixed with `Return-Path:` and `Delivered-To:`. The
//! content is streamed from the spool file through a fixed buffer, never
//! read whole into memory. With `local_delivery = lmtp` the mailbox name
//! (the bare `USER`, after aliases) is the LMTP recipient instead, and the
//! LMTP server writes the mailbox (`outbound::machine`, client in LMTP
//! mode).

pub mod aliases;
pub mod jobs;
pub mod lf;
pub mod local;
pub mod maildir;
pub mod mbox;
pub mod outcome;
pub mod webhook;

use std::collections::HashSet;
use std::fmt;

use crate::smtp::address::Address;
use crate::smtp::reply::{self, Reply};
use aliases::{Aliases, Target};

/// The alias name that catches unknown local recipients (`*: owner`).
pub const CATCH_ALL: &str = "*";

/// Longest mailbox name (the longest local part, RFC 5321 §4.5.3.1.1).
pub const MAX_MAILBOX_NAME: usize = 64;

/// A local mailbox name that is safe as a file name: `[a-z0-9._-]`,
/// lower-case, not starting with `.` or `-`, at most [`MAX_MAILBOX_NAME`]
/// octets. It cannot hold `/`, `@`, `+`, a space or anything non-ASCII.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mailbox(String);

impl Mailbox {
    /// Validates a mailbox name (ASCII letters are lower-cased first).
    pub fn new(name: &str) -> Option<Mailbox> {
        let name = name.to_ascii_lowercase();
        let ok = !name.is_empty()
            && name.len() <= MAX_MAILBOX_NAME
            && !name.starts_with('.')
            && !name.starts_with('-')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        ok.then_some(Mailbox(name))
    }

    /// The mailbox a local part names: without its `+extension`.
    pub fn from_local_part(local: &str) -> Option<Mailbox> {
        Mailbox::new(without_extension(local))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `joe+lists` → `joe`; a leading `+` is part of the name.
pub fn without_extension(local: &str) -> &str {
    match local.split_once('+') {
        Some((user, _)) if !user.is_empty() => user,
        _ => local,
    }
}

/// Why a recipient that could not be refused in-line (a sendmail drop) is
/// undeliverable; it is reported in a bounce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// No alias and no mailbox of that name.
    UnknownUser,
    /// The local part cannot name a mailbox.
    BadMailboxName,
}

impl Refusal {
    pub fn reply(self) -> Reply {
        match self {
            Refusal::UnknownUser => reply::USER_UNKNOWN,
            Refusal::BadMailboxName => reply::BAD_MAILBOX_NAME,
        }
    }

    /// Name in the spool's envelope encoding.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::UnknownUser => "unknown-user",
            Refusal::BadMailboxName => "bad-mailbox-name",
        }
    }

    pub fn from_name(name: &str) -> Option<Refusal> {
        match name {
            "unknown-user" => Some(Refusal::UnknownUser),
            "bad-mailbox-name" => Some(Refusal::BadMailboxName),
            _ => None,
        }
    }
}

/// Where one recipient of a stored message goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Destination {
    /// A mailbox on this host.
    Local(Mailbox),
    /// An address in a domain that is not local: smarthost or MX.
    Remote(Address),
    /// Undeliverable, decided at receipt (sendmail drops only).
    Refused(Refusal),
}

/// The answer to "may this message go to this address, and where?", shared
/// by the SMTP server, sendmail drop import and bounces.
pub struct RecipientPolicy<'a> {
    pub is_local_domain: &'a dyn Fn(&str) -> bool,
    pub aliases: &'a Aliases,
    /// System account names, lower-cased (`/etc/passwd`).
    pub users: &'a HashSet<String>,
    /// `local_recipients = any`: every valid mailbox name exists.
    pub any_local: bool,
}

impl RecipientPolicy<'_> {
    /// Decides a recipient. `relay_allowed`: the client may send to
    /// non-local domains. Errors are the SMTP reply for `RCPT`.
    pub fn resolve(&self, rcpt: &Address, relay_allowed: bool) -> Result<Vec<Destination>, Reply> {
        if !(self.is_local_domain)(&rcpt.domain) {
            return if relay_allowed {
                Ok(vec![Destination::Remote(rcpt.clone())])
            } else {
                Err(reply::RELAY_DENIED)
            };
        }
        self.resolve_local(&rcpt.local).map_err(Refusal::reply)
    }

    /// A local part of a local domain: alias targets or the mailbox
    /// itself; else the catch-all alias `*`, if any.
    pub fn resolve_local(&self, local: &str) -> Result<Vec<Destination>, Refusal> {
        let name = self.aliases.lookup_name(local);
        if self.aliases.contains(&name) || name == "postmaster" {
            return Ok(self.expand(&name));
        }
        let refusal = match Mailbox::new(&name) {
            None => Refusal::BadMailboxName,
            Some(mailbox) if self.any_local || self.users.contains(mailbox.as_str()) => {
                return Ok(vec![Destination::Local(mailbox)])
            }
            Some(_) => Refusal::UnknownUser,
        };
        // `*: owner` (SPEC "Router mail"): its targets are the file's, never
        // derived from the local part, so it opens no relay.
        if self.aliases.contains(CATCH_ALL) {
            return Ok(self.expand(CATCH_ALL));
        }
        Err(refusal)
    }

    fn expand(&self, name: &str) -> Vec<Destination> {
        match self.aliases.expand(name, self.is_local_domain) {
            Ok(targets) => targets.into_iter().map(Destination::from).collect(),
            Err(e) => {
                // A broken aliases file must not lose mail: the name's own
                // mailbox, else root's.
                let fallback = Mailbox::new(name).unwrap_or_else(|| Mailbox("root".to_string()));
                log::error!("alias expansion of {name} failed: {e}; delivering to {fallback}");
                vec![Destination::Local(fallback)]
            }
        }
    }
}

impl From<Target> for Destination {
    fn from(t: Target) -> Destination {
        match t {
            Target::Local(m) => Destination::Local(m),
            Target::Remote(a) => Destination::Remote(a),
        }
    }
}

/// Appends `dest` unless the message already goes there: one copy per final
/// mailbox or address per message.
pub fn push_unique(list: &mut Vec<(Destination, String)>, dest: Destination, original: &str) {
    if !list.iter().any(|(d, _)| *d == dest) {
        list.push((dest, original.to_string()));
    }
}

/// [`push_unique`] that moves `original` instead of copying it when
/// `last` (the caller needs it no more).
pub fn push_unique_taking(
    list: &mut Vec<(Destination, String)>,
    dest: Destination,
    original: &mut Option<String>,
    last: bool,
) {
    if !list.iter().any(|(d, _)| *d == dest) {
        let text = if last {
            original.take()
        } else {
            original.clone()
        };
        list.push((dest, text.unwrap_or_default()));
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)]
mod tests {
    use super::*;

    fn mailbox(s: &str) -> Mailbox {
        Mailbox::new(s).unwrap()
    }

    fn addr(s: &str) -> Address {
        Address::parse_mailbox(s).unwrap()
    }

    #[test]
    fn mailbox_names() {
        assert_eq!(
            Mailbox::from_local_part("Joe+lists")
                .map(|m| m.0)
                .as_deref(),
            Some("joe")
        );
        assert_eq!(mailbox("a.b_c-d").as_str(), "a.b_c-d");
        for bad in [
            "../etc", ".hidden", "a/b", "", "-rf", "sp ace", "x%y", "a@b", "a+b",
        ] {
            assert_eq!(Mailbox::new(bad), None, "{bad}");
        }
        assert_eq!(Mailbox::new(&"a".repeat(65)), None);
        assert_eq!(without_extension("+joe"), "+joe");
        assert_eq!(without_extension("joe+a+b"), "joe");
    }

    struct Fixture {
        aliases: Aliases,
        users: HashSet<String>,
    }

    impl Fixture {
        fn new(aliases: &str) -> Fixture {
            Fixture {
                aliases: Aliases::parse(aliases).0,
                users: ["root", "joe"].iter().map(|s| s.to_string()).collect(),
            }
        }
        fn resolve(&self, rcpt: &str, relay: bool, any: bool) -> Result<Vec<Destination>, Reply> {
            let is_local = |d: &str| d == "localhost" || d == "mx.test";
            RecipientPolicy {
                is_local_domain: &is_local,
                aliases: &self.aliases,
                users: &self.users,
                any_local: any,
            }
            .resolve(&addr(rcpt), relay)
        }
    }

    fn local(s: &str) -> Destination {
        Destination::Local(mailbox(s))
    }

    #[test]
    fn remote_needs_relay() {
        let f = Fixture::new("");
        assert_eq!(
            f.resolve("x@remote.example", false, false),
            Err(reply::RELAY_DENIED)
        );
        assert_eq!(
            f.resolve("x@remote.example", true, false),
            Ok(vec![Destination::Remote(addr("x@remote.example"))])
        );
    }

    /// The open relay of 80f8c34: a quoted local part with `+` and `@`.
    #[test]
    fn quoted_local_part_with_at_never_becomes_remote() {
        let f = Fixture::new("root: joe\n");
        for any in [false, true] {
            for rcpt in [
                "\"postmaster+victim@remote.example\"@localhost",
                "\"root+x@remote.example\"@localhost",
                "\"joe+y@remote.example\"@mx.test",
            ] {
                let got = f.resolve(rcpt, false, any).unwrap();
                assert!(
                    got.iter().all(|d| matches!(d, Destination::Local(_))),
                    "{rcpt}: {got:?}"
                );
            }
            // Without a `+`, the local part is no mailbox name at all.
            assert_eq!(
                f.resolve("\"victim@remote.example\"@localhost", false, any),
                Err(reply::BAD_MAILBOX_NAME)
            );
        }
    }

    #[test]
    fn extension_and_case_reach_the_alias() {
        let f = Fixture::new("root: admin@example.com\n");
        let want = Ok(vec![Destination::Remote(addr("admin@example.com"))]);
        assert_eq!(f.resolve("postmaster+x@localhost", false, false), want);
        assert_eq!(f.resolve("PostMaster@localhost", false, false), want);
        assert_eq!(f.resolve("ROOT+cron@mx.test", false, false), want);
        // An alias with a `+` in its own name matches first.
        let f = Fixture::new("joe+list: root\nroot: admin@example.com\n");
        assert_eq!(f.resolve("joe+list@localhost", false, false), want);
        assert_eq!(
            f.resolve("joe+other@localhost", false, false),
            Ok(vec![local("joe")])
        );
    }

    #[test]
    fn unknown_users_and_any() {
        let f = Fixture::new("");
        assert_eq!(
            f.resolve("nosuch@localhost", false, false),
            Err(reply::USER_UNKNOWN)
        );
        assert_eq!(
            f.resolve("nosuch+x@localhost", false, true),
            Ok(vec![local("nosuch")])
        );
        assert_eq!(
            f.resolve("Joe+x@localhost", false, false),
            Ok(vec![local("joe")])
        );
        assert_eq!(
            f.resolve("x%y@localhost", false, true),
            Err(reply::BAD_MAILBOX_NAME)
        );
    }

    /// Issue 14: `*: owner` catches unknown local names; aliases,
    /// postmaster and real mailboxes still win; other domains still need
    /// relay permission.
    #[test]
    fn catch_all_alias_takes_unknown_local_names_only() {
        let f = Fixture::new("*: owner\nsales: far@remote.example\n");
        for rcpt in ["nosuch@localhost", "NoSuch+x@mx.test", "x%y@localhost"] {
            assert_eq!(
                f.resolve(rcpt, false, false),
                Ok(vec![local("owner")]),
                "{rcpt}"
            );
        }
        assert_eq!(
            f.resolve("joe@localhost", false, false),
            Ok(vec![local("joe")])
        );
        assert_eq!(
            f.resolve("sales@localhost", false, false),
            Ok(vec![Destination::Remote(addr("far@remote.example"))])
        );
        assert_eq!(
            f.resolve("postmaster@localhost", false, false),
            Ok(vec![local("root")])
        );
        assert_eq!(
            f.resolve("nosuch@remote.example", false, false),
            Err(reply::RELAY_DENIED)
        );
        // A quoted local part with `@` still reaches only the catch-all.
        assert_eq!(
            f.resolve("\"victim@remote.example\"@localhost", false, false),
            Ok(vec![local("owner")])
        );
        // A catch-all to a remote address.
        let f = Fixture::new("*: far@remote.example\n");
        assert_eq!(
            f.resolve("nosuch@localhost", false, false),
            Ok(vec![Destination::Remote(addr("far@remote.example"))])
        );
    }

    #[test]
    fn push_unique_keeps_one_copy_per_destination() {
        let mut list = Vec::new();
        push_unique(&mut list, local("root"), "postmaster+1@localhost");
        push_unique(&mut list, local("root"), "postmaster+2@localhost");
        push_unique(&mut list, local("joe"), "joe@localhost");
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].1, "postmaster+1@localhost");
    }
}
