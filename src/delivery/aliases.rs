//! The aliases file: which local names forward to which mailboxes.
//!
//! Recipients in a local domain are looked up here before local delivery, so
//! that `root`, `postmaster` and friends reach a person (SPEC "Route").
//! The format is the classic sendmail `/etc/aliases` (aliases(5)):
//!
//! ```text
//! # comment
//! postmaster: root
//! root: admin@example.com,
//!     alice            # a line starting with whitespace continues the previous one
//! ```
//!
//! Rules: names are case-insensitive and may be `"quoted"`; targets are
//! separated by commas (commas inside quotes do not split); `<addr>` and
//! `"quoted"` targets are unwrapped; a line whose first non-blank character is
//! `#` is a comment, also between continuation lines. RFC 5321 §4.5.1:
//! `postmaster` always resolves; when the file has no entry for it, it goes
//! where `root` goes. A `*: address` entry is the catch-all: a local
//! recipient that is neither an alias nor a mailbox goes to its targets
//! (see `delivery::RecipientPolicy::resolve_local`).
//!
//! Expansion is recursive (at most [`MAX_ALIAS_DEPTH`] levels and
//! [`MAX_EXPANSION`] results). An alias that names itself delivers to the
//! local user of that name (sendmail semantics: `root: root, admin@x`); a
//! longer cycle (`a: b`, `b: a`) is an error. Duplicates are removed, first
//! occurrence kept. Each alias is expanded at most once per call, so work is
//! linear in the size of the file.
//!
//! Lookup: a name (lower-cased) is expanded when an alias has exactly that
//! name, else the name without its `+extension` is (`postmaster+x` reaches
//! `postmaster:`'s targets). Targets are parsed when the file is read: a
//! target with an `@` must be a valid address, a local name a mailbox name
//! or another alias. Expansion yields typed [`Target`]s: a valid
//! [`Mailbox`] or a remote [`Address`].
//!
//! Not supported, reported as errors and dropped at parse time (never
//! executed): `|command` pipes, `/file` deliveries, `:include:` lists. Also not
//! supported: `.forward` files.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::path::Path;

use super::{without_extension, Mailbox};
use crate::smtp::address::Address;

/// Deepest chain of aliases followed (`a` → `b` → `c` ... ).
pub const MAX_ALIAS_DEPTH: usize = 16;
/// Most targets one expansion may produce.
pub const MAX_EXPANSION: usize = 1000;
/// Largest aliases file read (protects a small router from a huge file).
pub const MAX_ALIASES_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// The one case folding of alias names, in the file and in lookups alike:
/// Unicode lower case, so a UTF-8 local part (SMTPUTF8) finds its alias in
/// any case (it was ASCII-only in lookups and Unicode in the file, so an
/// alias `Jöe` could never be reached).
fn alias_key(name: &str) -> String {
    name.to_lowercase()
}

/// The parsed aliases file: lower-cased name → its targets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Aliases {
    entries: HashMap<String, Vec<Written>>,
}

/// A line of the file that was skipped or partly dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasError {
    /// 1-based line number (the first line of a continued entry).
    pub line: usize,
    pub message: String,
}

impl fmt::Display for AliasError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Where an expanded recipient goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A local mailbox.
    Local(Mailbox),
    /// An address in a non-local domain.
    Remote(Address),
}

/// A target as written in the file, parsed once when the file is read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Written {
    /// `alice` or `alice+ext`: a local name, lower-cased (it may be another
    /// alias).
    Name(String),
    /// `user@domain`: remote, or local again when the domain is local.
    Address(Address),
}

/// Why an expansion failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpandError {
    /// The named alias is reached again through another alias.
    Loop(String),
    /// More than [`MAX_ALIAS_DEPTH`] levels.
    TooDeep,
    /// More than [`MAX_EXPANSION`] targets.
    TooMany,
    /// A local name that cannot be a mailbox (`"a b"@localhost`).
    BadMailbox(String),
}

impl fmt::Display for ExpandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpandError::Loop(name) => write!(f, "alias loop through {name:?}"),
            ExpandError::TooDeep => write!(f, "aliases nested deeper than {MAX_ALIAS_DEPTH}"),
            ExpandError::TooMany => {
                write!(f, "alias expands to more than {MAX_EXPANSION} recipients")
            }
            ExpandError::BadMailbox(name) => write!(f, "{name:?} is not a valid mailbox name"),
        }
    }
}

impl Aliases {
    /// Parses the file text. Bad lines and unsupported targets are skipped and
    /// reported; everything else is kept. A later duplicate name is reported
    /// and ignored (the first definition wins).
    pub fn parse(text: &str) -> (Aliases, Vec<AliasError>) {
        let mut aliases = Aliases::default();
        let mut errors = Vec::new();
        for (line, entry) in logical_lines(text) {
            aliases.parse_entry(line, &entry, &mut errors);
        }
        (aliases, errors)
    }

    /// Reads and parses a file; a missing file means no aliases.
    pub fn load(path: &Path) -> Result<(Aliases, Vec<AliasError>), io::Error> {
        let file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok((Aliases::default(), Vec::new()))
            }
            Err(e) => return Err(e),
        };
        let bytes = crate::system::read_bounded(file, MAX_ALIASES_FILE_BYTES)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Ok(Aliases::parse(&String::from_utf8_lossy(&bytes)))
    }

    /// Number of alias names defined.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether `name` (any case) is defined in the file.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(&alias_key(name))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Expands a name (an alias name or a mailbox, any case) into final
    /// recipients. `is_local_domain` decides whether a `user@domain` target
    /// is looked up again as `user`.
    pub fn expand(
        &self,
        name: &str,
        is_local_domain: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<Target>, ExpandError> {
        let mut walk = Walk {
            aliases: self,
            is_local_domain,
            path: Vec::new(),
            done: HashSet::new(),
            seen: HashSet::new(),
            out: Vec::new(),
        };
        walk.visit(&alias_key(name))?;
        Ok(walk.out)
    }

    /// The name a local part is looked up under: itself when an alias has
    /// exactly that name, else without its `+extension` (lower-cased).
    pub fn lookup_name(&self, local: &str) -> String {
        let whole = alias_key(local);
        if self.entries.contains_key(&whole) {
            whole
        } else {
            without_extension(&whole).to_string()
        }
    }

    fn parse_entry(&mut self, line: usize, entry: &str, errors: &mut Vec<AliasError>) {
        let mut error = |message: String| errors.push(AliasError { line, message });
        let Some((raw_name, raw_targets)) = entry.split_once(':') else {
            return error(format!("missing ':' in {:?}", entry.trim()));
        };
        let name = alias_key(unquote(raw_name.trim()));
        if name.is_empty() {
            return error("empty alias name".to_string());
        }
        if name.contains('@') || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return error(format!("bad alias name {name:?}"));
        }
        let mut targets = Vec::new();
        for raw in split_targets(raw_targets) {
            let target = unwrap_target(raw.trim());
            if target.is_empty() {
                continue;
            }
            if let Some(kind) = unsupported_kind(raw.trim(), target) {
                error(format!(
                    "{kind} target {target:?} of {name:?} not supported: never executed"
                ));
                continue;
            }
            match parse_target(target) {
                Some(written) => targets.push(written),
                None => error(format!("bad target {target:?} of {name:?}")),
            }
        }
        if targets.is_empty() {
            return error(format!("alias {name:?} has no usable target; ignored"));
        }
        if self.entries.contains_key(&name) {
            return error(format!("duplicate alias {name:?}; first definition kept"));
        }
        self.entries.insert(name, targets);
    }
}

/// Depth-first expansion state for one call.
struct Walk<'a> {
    aliases: &'a Aliases,
    is_local_domain: &'a dyn Fn(&str) -> bool,
    /// Aliases being expanded, outermost first (cycle detection).
    path: Vec<String>,
    /// Aliases fully expanded already; their targets are in `out`.
    done: HashSet<String>,
    seen: HashSet<Target>,
    out: Vec<Target>,
}

impl Walk<'_> {
    fn visit(&mut self, name: &str) -> Result<(), ExpandError> {
        if self.done.contains(name) {
            return Ok(());
        }
        if self.path.len() >= MAX_ALIAS_DEPTH {
            return Err(ExpandError::TooDeep);
        }
        let Some(targets) = self.aliases.entries.get(name) else {
            if name == "postmaster" {
                // RFC 5321 §4.5.1: postmaster must work; route it like root.
                self.path.push(name.to_string());
                let result = self.visit_local("root");
                self.path.pop();
                return result;
            }
            return self.push_mailbox(name);
        };
        self.path.push(name.to_string());
        for target in targets {
            let result = match target {
                Written::Address(a) if !(self.is_local_domain)(&a.domain) => {
                    self.push(Target::Remote(a.clone()))
                }
                Written::Address(a) => self.visit_local(&self.aliases.lookup_name(&a.local)),
                Written::Name(n) => self.visit_local(&self.aliases.lookup_name(n)),
            };
            if let Err(e) = result {
                self.path.pop();
                return Err(e);
            }
        }
        self.path.pop();
        self.done.insert(name.to_string());
        Ok(())
    }

    /// A local name found as a target of the alias on top of `path`.
    fn visit_local(&mut self, user: &str) -> Result<(), ExpandError> {
        if self.path.last().is_some_and(|current| current == user) {
            // `root: root, ...`: deliver to the user, do not expand again.
            return self.push_mailbox(user);
        }
        if self.path.iter().any(|p| p == user) {
            return Err(ExpandError::Loop(user.to_string()));
        }
        self.visit(user)
    }

    fn push_mailbox(&mut self, name: &str) -> Result<(), ExpandError> {
        match Mailbox::new(name) {
            Some(m) => self.push(Target::Local(m)),
            None => Err(ExpandError::BadMailbox(name.to_string())),
        }
    }

    fn push(&mut self, target: Target) -> Result<(), ExpandError> {
        if self.seen.contains(&target) {
            return Ok(());
        }
        if self.out.len() >= MAX_EXPANSION {
            return Err(ExpandError::TooMany);
        }
        self.seen.insert(target.clone());
        self.out.push(target);
        Ok(())
    }
}

/// Joins continuation lines and drops comments and blank lines; yields the
/// 1-based number of each entry's first line with its text.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut entries: Vec<(usize, String)> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let continues = raw.starts_with([' ', '\t']);
        match entries.last_mut() {
            Some((_, entry)) if continues => {
                entry.push(' ');
                entry.push_str(trimmed);
            }
            _ => entries.push((index + 1, trimmed.to_string())),
        }
    }
    entries
}

/// Splits on commas outside double quotes.
fn split_targets(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut in_quotes = false;
    let mut escaped = false;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            ',' if !in_quotes => {
                parts.push(text.get(start..i).unwrap_or_default());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(text.get(start..).unwrap_or_default());
    parts
}

/// `"x"` → `x`; anything else unchanged.
fn unquote(text: &str) -> &str {
    text.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text)
}

/// Removes `<...>` and whole-target quotes.
fn unwrap_target(text: &str) -> &str {
    let text = text
        .strip_prefix('<')
        .and_then(|t| t.strip_suffix('>'))
        .unwrap_or(text)
        .trim();
    unquote(text).trim()
}

/// A target after unwrapping: an address when it has an `@`, else a local
/// name; `None` when it is neither.
fn parse_target(target: &str) -> Option<Written> {
    if target.contains('@') {
        return Address::parse_mailbox(target).ok().map(Written::Address);
    }
    let name = alias_key(target);
    let plain = !name.is_empty()
        && name.chars().all(|c| {
            c.is_ascii_graphic() || (!c.is_ascii() && !c.is_control() && !c.is_whitespace())
        });
    plain.then_some(Written::Name(name))
}

fn unsupported_kind(raw: &str, target: &str) -> Option<&'static str> {
    let starts = |t: &str, p: &str| t.get(..p.len()).is_some_and(|h| h.eq_ignore_ascii_case(p));
    if starts(target, ":include:") {
        Some(":include:")
    } else if target.starts_with('|') || raw.starts_with('|') {
        Some("pipe")
    } else if target.starts_with('/') || raw.starts_with('/') {
        Some("file")
    } else {
        None
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)]
mod tests {
    use super::*;

    fn local(name: &str) -> Target {
        Target::Local(Mailbox::new(name).unwrap())
    }

    fn remote(addr: &str) -> Target {
        Target::Remote(Address::parse_mailbox(addr).unwrap())
    }

    fn is_local(domain: &str) -> bool {
        domain.eq_ignore_ascii_case("localhost") || domain.eq_ignore_ascii_case("router.lan")
    }

    fn parse_ok(text: &str) -> Aliases {
        let (aliases, errors) = Aliases::parse(text);
        assert_eq!(errors, []);
        aliases
    }

    fn expand(aliases: &Aliases, name: &str) -> Result<Vec<Target>, ExpandError> {
        aliases.expand(name, &is_local)
    }

    #[test]
    fn simple_entries_comments_and_blank_lines() {
        let a = parse_ok("# system aliases\n\nroot: alice\n   # indented comment\nwww: root\n");
        assert_eq!(a.len(), 2);
        assert_eq!(expand(&a, "root"), Ok(vec![local("alice")]));
        assert_eq!(expand(&a, "www"), Ok(vec![local("alice")]));
        assert_eq!(expand(&a, "bob"), Ok(vec![local("bob")]));
    }

    #[test]
    fn utf8_names_fold_alike_in_the_file_and_in_lookups() {
        let a = parse_ok("Jöe: alice\nÄrger: jöe, bob\n");
        assert!(a.contains("JÖE"));
        assert_eq!(expand(&a, "JÖE"), Ok(vec![local("alice")]));
        assert_eq!(expand(&a, "ärger"), Ok(vec![local("alice"), local("bob")]));
        assert_eq!(a.lookup_name("JÖE+list"), "jöe");
    }

    #[test]
    fn continuation_lines() {
        let a = parse_ok(
            "staff: alice,\n  bob,\n# comment between\n\tcarol@example.com\nother: dave\n",
        );
        assert_eq!(
            expand(&a, "staff"),
            Ok(vec![
                local("alice"),
                local("bob"),
                remote("carol@example.com")
            ])
        );
        assert_eq!(expand(&a, "other"), Ok(vec![local("dave")]));
    }

    #[test]
    fn continuation_without_trailing_comma_still_splits_on_commas() {
        let a = parse_ok("list: alice\n , bob\n");
        assert_eq!(expand(&a, "list"), Ok(vec![local("alice"), local("bob")]));
    }

    #[test]
    fn recursion_and_remote_targets() {
        let a = parse_ok("postmaster: root\nroot: admins\nadmins: alice, Ops@Example.COM\n");
        assert_eq!(
            expand(&a, "postmaster"),
            Ok(vec![local("alice"), remote("Ops@example.com")])
        );
    }

    #[test]
    fn local_domain_target_is_expanded_again() {
        let a = parse_ok("root: admin@localhost\nadmin: alice@Router.LAN, bob@elsewhere.net\n");
        assert_eq!(
            expand(&a, "root"),
            Ok(vec![local("alice"), remote("bob@elsewhere.net")])
        );
    }

    #[test]
    fn self_reference_delivers_locally() {
        let a = parse_ok("root: root, admin@example.com\n");
        assert_eq!(
            expand(&a, "root"),
            Ok(vec![local("root"), remote("admin@example.com")])
        );
        let a = parse_ok("Root: ROOT@localhost\n");
        assert_eq!(expand(&a, "root"), Ok(vec![local("root")]));
    }

    #[test]
    fn loops_are_errors() {
        let a = parse_ok("a: b\nb: a\n");
        assert_eq!(expand(&a, "a"), Err(ExpandError::Loop("a".to_string())));
        let a = parse_ok("a: x, b\nb: c\nc: b@localhost\n");
        assert_eq!(expand(&a, "a"), Err(ExpandError::Loop("b".to_string())));
    }

    #[test]
    fn too_deep() {
        let mut text = String::new();
        for i in 0..MAX_ALIAS_DEPTH + 1 {
            text.push_str(&format!("a{i}: a{}\n", i + 1));
        }
        let a = parse_ok(&text);
        assert_eq!(expand(&a, "a0"), Err(ExpandError::TooDeep));
        assert_eq!(
            expand(&a, "a2"),
            Ok(vec![local(&format!("a{}", MAX_ALIAS_DEPTH + 1))])
        );
    }

    #[test]
    fn too_many() {
        let users: Vec<String> = (0..=MAX_EXPANSION).map(|i| format!("u{i}")).collect();
        let a = parse_ok(&format!("all: {}\n", users.join(", ")));
        assert_eq!(expand(&a, "all"), Err(ExpandError::TooMany));
    }

    #[test]
    fn duplicates_removed_first_order_kept() {
        let a = parse_ok("team: bob, alice, ops, bob\nops: alice, carol, BOB@localhost\n");
        assert_eq!(
            expand(&a, "team"),
            Ok(vec![local("bob"), local("alice"), local("carol")])
        );
    }

    #[test]
    fn shared_sub_alias_is_not_a_loop() {
        let a = parse_ok("all: x, y\nx: common\ny: common\ncommon: alice\n");
        assert_eq!(expand(&a, "all"), Ok(vec![local("alice")]));
    }

    #[test]
    fn postmaster_always_resolves() {
        let empty = Aliases::default();
        assert_eq!(expand(&empty, "postmaster"), Ok(vec![local("root")]));
        assert_eq!(expand(&empty, "PostMaster"), Ok(vec![local("root")]));
        let a = parse_ok("root: alice\n");
        assert_eq!(expand(&a, "postmaster"), Ok(vec![local("alice")]));
        let a = parse_ok("postmaster: bob\n");
        assert_eq!(expand(&a, "postmaster"), Ok(vec![local("bob")]));
    }

    #[test]
    fn pipe_file_and_include_are_refused() {
        let (a, errors) = Aliases::parse(
            "prog: |/usr/bin/evil\nlog: /var/log/mail, alice\nlist: :include:/etc/list\nq: \"|cmd arg\", bob\n",
        );
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [1, 1, 2, 3, 3, 4]);
        assert!(errors[0].message.contains("not supported: never executed"));
        assert!(errors[0].message.contains("pipe"));
        assert!(errors[2].message.contains("file"));
        assert!(errors[3].message.contains(":include:"));
        assert!(errors[5].message.contains("pipe"));
        // Aliases with nothing usable are not defined: the name is a plain user.
        assert_eq!(expand(&a, "prog"), Ok(vec![local("prog")]));
        assert_eq!(expand(&a, "log"), Ok(vec![local("alice")]));
        assert_eq!(expand(&a, "list"), Ok(vec![local("list")]));
        assert_eq!(expand(&a, "q"), Ok(vec![local("bob")]));
    }

    #[test]
    fn names_are_case_insensitive() {
        let a = parse_ok("Webmaster: Alice\n");
        assert_eq!(expand(&a, "WEBMASTER"), Ok(vec![local("alice")]));
        assert_eq!(expand(&a, "Nobody"), Ok(vec![local("nobody")]));
    }

    #[test]
    fn quoted_names_and_targets() {
        let a = parse_ok("\"sales\": \"alice\", <bob@example.com>, \"x,y\"@example.com\n");
        assert_eq!(
            expand(&a, "sales"),
            Ok(vec![
                local("alice"),
                remote("bob@example.com"),
                remote("\"x,y\"@example.com")
            ])
        );
    }

    #[test]
    fn bad_lines_are_reported_and_skipped() {
        let (a, errors) =
            Aliases::parse("no colon here\n: alice\nfoo@bar: x\nok: bob\nok: carol\nempty:\n");
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [1, 2, 3, 5, 6]);
        assert!(errors[3].message.contains("duplicate"));
        assert_eq!(a.len(), 1);
        assert_eq!(expand(&a, "ok"), Ok(vec![local("bob")]));
    }

    #[test]
    fn continuation_of_bad_line_reports_first_line() {
        let (_, errors) = Aliases::parse("good: a\nbad\n  more\n");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 2);
    }

    #[test]
    fn load_missing_file_is_empty() {
        let (a, errors) =
            Aliases::load(Path::new("/nonexistent/tern/aliases")).expect("missing is ok");
        assert!(a.is_empty());
        assert!(errors.is_empty());
    }

    #[test]
    fn load_reads_file() {
        let dir = std::env::temp_dir().join(format!("tern-aliases-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("aliases");
        std::fs::write(&path, b"root: alice\r\nbad\r\n").expect("write");
        let (a, errors) = Aliases::load(&path).expect("load");
        assert_eq!(expand(&a, "root"), Ok(vec![local("alice")]));
        assert_eq!(errors.len(), 1);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
