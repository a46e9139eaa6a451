//! Strict parsing of SMTP paths (RFC 5321 §4.1.2, §4.5.3.1).
//!
//! A path is parsed once, at the edge, into an [`Address`] that cannot be
//! invalid: local part ≤ 64 octets, domain ≤ 255, whole path ≤ 256, atoms and
//! quoted strings per the RFC grammar, domains as dot-separated LDH labels or
//! an address literal. Source routes (`<@a,@b:user@c>`) are accepted and
//! stripped (RFC 5321 Appendix C). `%` and `!` are ordinary local-part
//! characters and are never used for routing.
//!
//! Internationalized addresses (RFC 6531 §3.3): a local part may hold
//! UTF-8 (`atext` and `qtextSMTP` extended with non-ASCII characters, C1
//! controls excluded) and a domain may be given in U-labels. The domain
//! is decided once, here: it is stored in its A-label form (UTS 46 through
//! the `idna` crate, feature `idn`), so `bücher.example` and
//! `xn--bcher-kva.example` are the same domain for `local_domains`,
//! routes, the queue and the MX lookup (RFC 6531 §3.2 allows the
//! conversion). Only a UTF-8 local part then needs SMTPUTF8 on the way out
//! ([`Address::needs_smtputf8`]). Whether a client may use non-ASCII at all
//! (it must have said `MAIL ... SMTPUTF8`) is the command parser's and the
//! session's decision, not this module's. Without the `idn` feature a
//! U-label domain is [`AddressError::NonAscii`] (553 5.6.7).

use std::fmt;

pub const MAX_LOCAL_PART: usize = 64;
pub const MAX_DOMAIN: usize = 255;
pub const MAX_PATH: usize = 256;

/// A validated mailbox. The domain is lower-cased; the local part keeps its
/// case (RFC 5321 §2.4) and is stored unquoted.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Address {
    pub local: String,
    pub domain: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressError {
    Syntax,
    TooLong,
    NonAscii,
}

impl Address {
    /// Parses `local@domain` without angle brackets. UTF-8 is accepted
    /// (see the module documentation); a U-label domain becomes its A-label.
    pub fn parse_mailbox(s: &str) -> Result<Address, AddressError> {
        let at = if s.starts_with('"') {
            // The quoted local part may contain '@'.
            let end = quoted_end(s).ok_or(AddressError::Syntax)?;
            if s.as_bytes().get(end) != Some(&b'@') {
                return Err(AddressError::Syntax);
            }
            end
        } else {
            s.rfind('@').ok_or(AddressError::Syntax)?
        };
        let (local_raw, domain) = s
            .split_at_checked(at)
            .and_then(|(l, d)| Some((l, d.strip_prefix('@')?)))
            .ok_or(AddressError::Syntax)?;
        let local = parse_local_part(local_raw)?;
        if local_raw.len() > MAX_LOCAL_PART {
            return Err(AddressError::TooLong);
        }
        if domain.len() > MAX_DOMAIN {
            return Err(AddressError::TooLong);
        }
        let domain = ascii_domain(domain)?;
        if !is_valid_domain(&domain) {
            return Err(AddressError::Syntax);
        }
        let address = Address { local, domain };
        // RFC 5321 §4.5.3.1.3: the path, brackets included, is at most 256
        // octets. Checked on the printed form, which is what goes into
        // `MAIL FROM:<...>` and `RCPT TO:<...>` (a 64-octet local part and
        // a 255-octet domain pass the checks above but not this one).
        if address.path_len() > MAX_PATH {
            return Err(AddressError::TooLong);
        }
        Ok(address)
    }

    /// The local part holds non-ASCII: the address can only travel with
    /// SMTPUTF8 (the domain is always stored as A-labels).
    pub fn needs_smtputf8(&self) -> bool {
        !self.local.is_ascii()
    }

    /// The address as printed (`Display`), in a string allocated once at
    /// its final size (`to_string` grows it piece by piece).
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::with_capacity(self.path_len() - 2);
        let _ = write!(s, "{self}");
        s
    }

    /// Length of `<address>` as printed.
    fn path_len(&self) -> usize {
        let local = if is_dot_string(&self.local) {
            self.local.len()
        } else {
            // Quoted: `"`, `\` before each `"` and `\`, `"`.
            2 + self.local.len()
                + self
                    .local
                    .chars()
                    .filter(|&c| c == '"' || c == '\\')
                    .count()
        };
        local + 1 + self.domain.len() + 2
    }

    /// Builds an address from a local part (unquoted form) and a domain
    /// read from storage, with the same checks as [`parse_mailbox`]: the
    /// result prints and parses back to itself.
    ///
    /// [`parse_mailbox`]: Address::parse_mailbox
    pub fn from_parts(local: &str, domain: &str) -> Result<Address, AddressError> {
        let candidate = Address {
            local: local.to_string(),
            domain: domain.to_string(),
        };
        let parsed = Address::parse_mailbox(&candidate.to_text())?;
        if parsed == candidate {
            Ok(parsed)
        } else {
            Err(AddressError::Syntax)
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if is_dot_string(&self.local) {
            f.write_str(&self.local)?;
            f.write_str("@")?;
            f.write_str(&self.domain)
        } else {
            f.write_str("\"")?;
            for c in self.local.chars() {
                if c == '"' || c == '\\' {
                    f.write_str("\\")?;
                }
                write!(f, "{c}")?;
            }
            write!(f, "\"@{}", self.domain)
        }
    }
}

/// Parses a reverse-path or forward-path with its angle brackets. `<>` gives
/// `None` (the null path; the caller decides where that is allowed).
pub fn parse_path(s: &str) -> Result<Option<Address>, AddressError> {
    if s.len() > MAX_PATH {
        return Err(AddressError::TooLong);
    }
    let inner = s
        .strip_prefix('<')
        .and_then(|r| r.strip_suffix('>'))
        .ok_or(AddressError::Syntax)?;
    if inner.is_empty() {
        return Ok(None);
    }
    let mailbox = if inner.starts_with('@') {
        // A-d-l ":" Mailbox — the source route is ignored (Appendix C).
        let (route, mailbox) = inner.split_once(':').ok_or(AddressError::Syntax)?;
        for hop in route.split(',') {
            let d = hop.strip_prefix('@').ok_or(AddressError::Syntax)?;
            if !is_valid_domain(d) {
                return Err(AddressError::Syntax);
            }
        }
        mailbox
    } else {
        inner
    };
    Address::parse_mailbox(mailbox).map(Some)
}

/// A domain name as written in configuration (`local_domains`, routes):
/// the same form addresses are stored in (lower-case, A-labels), so
/// `bücher.example` in a file matches mail for `xn--bcher-kva.example`.
/// No address literals; `None` when it is not a valid domain name.
pub fn domain_name(d: &str) -> Option<String> {
    let d = ascii_domain(d).ok()?;
    (!d.starts_with('[') && is_valid_domain(&d)).then_some(d)
}

/// The domain as stored: lower-case ASCII, U-labels converted to A-labels.
fn ascii_domain(domain: &str) -> Result<String, AddressError> {
    if domain.is_ascii() {
        return Ok(domain.to_ascii_lowercase());
    }
    to_a_labels(domain)
}

#[cfg(feature = "idn")]
fn to_a_labels(domain: &str) -> Result<String, AddressError> {
    // UTS 46 processing (nontransitional, as browsers and RFC 5891 want):
    // mapping, normalization, Bidi and hyphen rules; lower-case output.
    idna::domain_to_ascii(domain).map_err(|_| AddressError::Syntax)
}

#[cfg(not(feature = "idn"))]
fn to_a_labels(_domain: &str) -> Result<String, AddressError> {
    Err(AddressError::NonAscii)
}

/// RFC 6531 §3.3 `UTF8-non-ascii`, without the C1 controls (U+0080–U+009F),
/// which no address needs and which terminals interpret, and without
/// U+FFFD: it is what a lossy decoding leaves of a byte that was not UTF-8
/// (a Latin-1 `To:` header, an argument), so `j\u{fffd}rg` is a damaged
/// `jörg`, not an address to deliver to.
fn is_utf8_non_ascii(c: char) -> bool {
    c > '\u{9f}' && c != char::REPLACEMENT_CHARACTER
}

/// RFC 5322 atext, plus UTF-8 (RFC 6531). A `match`, not a search in a
/// string of specials: every address is checked several times per message.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            '!' | '#'
                | '$'
                | '%'
                | '&'
                | '\''
                | '*'
                | '+'
                | '-'
                | '/'
                | '='
                | '?'
                | '^'
                | '_'
                | '`'
                | '{'
                | '|'
                | '}'
                | '~'
        )
        || is_utf8_non_ascii(c)
}

/// Dot-string (RFC 5321): atoms of atext joined by single dots. One pass.
fn is_dot_string(s: &str) -> bool {
    // True at the start and after a dot: an atom must follow.
    let mut atom_due = true;
    for c in s.chars() {
        if c == '.' {
            if atom_due {
                return false;
            }
            atom_due = true;
        } else if is_atext(c) {
            atom_due = false;
        } else {
            return false;
        }
    }
    !atom_due
}

/// Index just past the closing quote of a quoted string starting at 0.
fn quoted_end(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, b) in s.bytes().enumerate().skip(1) {
        match b {
            _ if escaped => escaped = false,
            b'\\' => escaped = true,
            b'"' => return Some(i + 1),
            _ => {}
        }
    }
    None
}

fn parse_local_part(s: &str) -> Result<String, AddressError> {
    if is_dot_string(s) {
        return Ok(s.to_string());
    }
    let inner = s.strip_prefix('"').and_then(|r| r.strip_suffix('"'));
    if let (Some(inner), Some(true)) = (inner, quoted_end(s).map(|e| e == s.len())) {
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            let c = if c == '\\' {
                chars.next().ok_or(AddressError::Syntax)?
            } else {
                c
            };
            // qtextSMTP / quoted-pairSMTP: printable ASCII, space and
            // (RFC 6531) non-ASCII characters.
            if !(' '..='~').contains(&c) && !is_utf8_non_ascii(c) {
                return Err(AddressError::Syntax);
            }
            out.push(c);
        }
        if out.is_empty() {
            return Err(AddressError::Syntax);
        }
        return Ok(out);
    }
    Err(AddressError::Syntax)
}

/// Domain (LDH labels) or address literal (`[1.2.3.4]`, `[IPv6:...]`).
pub fn is_valid_domain(d: &str) -> bool {
    if d.is_empty() || d.len() > MAX_DOMAIN {
        return false;
    }
    if let Some(lit) = d.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        if let Some(v6) = lit
            .strip_prefix("IPv6:")
            .or_else(|| lit.strip_prefix("ipv6:"))
        {
            return v6.parse::<std::net::Ipv6Addr>().is_ok();
        }
        return lit.parse::<std::net::Ipv4Addr>().is_ok();
    }
    d.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    })
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)] // tests index fixed data
mod tests {
    use super::*;

    fn addr(s: &str) -> Address {
        parse_path(s).unwrap().unwrap()
    }

    #[test]
    fn dot_string_and_atext_agree_with_their_definitions() {
        // The definitions as first written: split on dots, search the
        // specials.
        fn atext_by_definition(c: char) -> bool {
            c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || is_utf8_non_ascii(c)
        }
        fn dot_string_by_definition(s: &str) -> bool {
            !s.is_empty()
                && s.split('.')
                    .all(|atom| !atom.is_empty() && atom.chars().all(atext_by_definition))
        }
        for c in (0..0x250)
            .filter_map(char::from_u32)
            .chain(['\u{fffd}', '\u{1f600}'])
        {
            assert_eq!(is_atext(c), atext_by_definition(c), "{c:?}");
        }
        // Every string of up to 4 characters over an alphabet with dots,
        // atext, non-atext and UTF-8.
        let alphabet = ['.', 'a', '+', ' ', '"', '\u{e9}', '\u{fffd}'];
        let mut strings = vec![String::new()];
        let mut layer = strings.clone();
        for _ in 0..4 {
            layer = layer
                .iter()
                .flat_map(|s| alphabet.iter().map(move |&c| format!("{s}{c}")))
                .collect();
            strings.extend(layer.iter().cloned());
        }
        assert_eq!(strings.len(), 1 + 7 + 49 + 343 + 2401);
        for s in &strings {
            assert_eq!(is_dot_string(s), dot_string_by_definition(s), "{s:?}");
        }
    }

    #[test]
    fn to_text_and_path_len_match_display() {
        for a in [
            Address {
                local: "joe".into(),
                domain: "example.com".into(),
            },
            Address {
                local: "a b".into(),
                domain: "x.test".into(),
            },
            Address {
                local: "q\"u\\o".into(),
                domain: "x.test".into(),
            },
            Address {
                local: "jö".into(),
                domain: "bü.test".into(),
            },
        ] {
            assert_eq!(a.to_text(), a.to_string());
            assert_eq!(a.path_len(), a.to_string().len() + 2, "{a}");
        }
    }

    #[test]
    fn plain_and_null() {
        assert_eq!(
            addr("<User@Example.COM>"),
            Address {
                local: "User".into(),
                domain: "example.com".into()
            }
        );
        assert_eq!(parse_path("<>"), Ok(None));
    }

    #[test]
    fn source_route_is_stripped() {
        assert_eq!(
            addr("<@a.example,@b.example:joe@c.example>").to_string(),
            "joe@c.example"
        );
        assert_eq!(parse_path("<@a.example joe@c>"), Err(AddressError::Syntax));
    }

    #[test]
    fn percent_and_bang_are_just_characters() {
        let a = addr("<user%other.example@local.example>");
        assert_eq!(a.local, "user%other.example");
        assert_eq!(a.domain, "local.example");
        assert_eq!(addr("<a!b@x.example>").local, "a!b");
    }

    #[test]
    fn quoted_local_part() {
        let a = addr("<\"john doe\"@x.example>");
        assert_eq!(a.local, "john doe");
        assert_eq!(a.to_string(), "\"john doe\"@x.example");
        assert_eq!(addr("<\"a@b\"@x.example>").local, "a@b");
    }

    #[test]
    fn rejects() {
        for bad in [
            "user@x.example",
            "<user>",
            "<user@>",
            "<@x.example>",
            "<.user@x.example>",
            "<us..er@x.example>",
            "<user@-x.example>",
            "<user@x..example>",
            "<us er@x.example>",
            "<user@x_y.example>",
        ] {
            assert!(parse_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn utf8_local_parts() {
        let a = addr("<用户@xn--fsqu00a.xn--fiqs8s>");
        assert_eq!(a.local, "用户");
        assert!(a.needs_smtputf8());
        let a = addr("<\"jöhn döe\"@x.example>");
        assert_eq!(a.local, "jöhn döe");
        assert_eq!(a.to_string(), "\"jöhn döe\"@x.example");
        assert!(!addr("<joe@x.example>").needs_smtputf8());
        // Nor is what is left of a byte that was not UTF-8.
        assert_eq!(
            parse_path("<j\u{fffd}rg@x.example>"),
            Err(AddressError::Syntax)
        );
        assert_eq!(
            parse_path("<\"j\u{fffd}rg\"@x.example>"),
            Err(AddressError::Syntax)
        );
        // C1 controls are not characters of an address.
        assert_eq!(
            parse_path("<a\u{85}b@x.example>"),
            Err(AddressError::Syntax)
        );
        assert_eq!(
            parse_path("<\"a\u{9b}b\"@x.example>"),
            Err(AddressError::Syntax)
        );
        // 64 octets, not characters: 22 three-octet characters are 66.
        let long = "語".repeat(22);
        assert_eq!(
            parse_path(&format!("<{long}@x.example>")),
            Err(AddressError::TooLong)
        );
        let fits = "語".repeat(21);
        assert!(parse_path(&format!("<{fits}@x.example>")).is_ok());
    }

    #[cfg(feature = "idn")]
    #[test]
    fn u_label_and_a_label_domains_are_one_domain() {
        let u = addr("<Joe@Bücher.Example>");
        let a = addr("<Joe@xn--bcher-kva.example>");
        assert_eq!(u, a);
        assert_eq!(u.domain, "xn--bcher-kva.example");
        assert!(!u.needs_smtputf8());
        assert_eq!(
            addr("<x@пример.испытание>").domain,
            "xn--e1afmkfd.xn--80akhbyknj4f"
        );
        // Not a valid IDN (a label that is only a combining mark).
        assert_eq!(parse_path("<x@\u{301}.example>"), Err(AddressError::Syntax));
        // Non-ASCII in an address literal is no literal.
        assert!(parse_path("<x@[1.2.3.é]>").is_err());
        // The stored form reads back as itself.
        assert_eq!(Address::from_parts(&u.local, &u.domain), Ok(u));
    }

    #[cfg(not(feature = "idn"))]
    #[test]
    fn u_labels_need_the_idn_build() {
        assert_eq!(
            parse_path("<x@bücher.example>"),
            Err(AddressError::NonAscii)
        );
    }

    #[test]
    fn length_limits() {
        let local = "a".repeat(65);
        assert_eq!(
            parse_path(&format!("<{local}@x.example>")),
            Err(AddressError::TooLong)
        );
        let ok = "a".repeat(64);
        assert!(parse_path(&format!("<{ok}@x.example>")).is_ok());
        let long = format!("<a@{}.example>", "b".repeat(260));
        assert_eq!(parse_path(&long), Err(AddressError::TooLong));
        // Each part within its own limit, the path over 256 octets.
        let local = "l".repeat(64);
        let label = "d".repeat(60);
        let domain = format!("{label}.{label}.{label}.{label}.test");
        assert!(domain.len() <= MAX_DOMAIN);
        let mailbox = format!("{local}@{domain}");
        assert!(mailbox.len() + 2 > MAX_PATH);
        assert_eq!(Address::parse_mailbox(&mailbox), Err(AddressError::TooLong));
        assert_eq!(
            Address::from_parts(&local, &domain),
            Err(AddressError::TooLong)
        );
    }

    #[test]
    fn address_literals() {
        assert!(parse_path("<a@[127.0.0.1]>").is_ok());
        assert!(parse_path("<a@[IPv6:::1]>").is_ok());
        assert!(parse_path("<a@[300.0.0.1]>").is_err());
    }
}
