//! Strict parsing of SMTP paths (RFC 5321 §4.1.2, §4.5.3.1).
//!
//! A path is parsed once, at the edge, into an [`Address`] that cannot be
//! invalid: local part ≤ 64 octets, domain ≤ 255, whole path ≤ 256, atoms and
//! quoted strings per the RFC grammar, domains as dot-separated LDH labels or
//! an address literal. Source routes (`<@a,@b:user@c>`) are accepted and
//! stripped (RFC 5321 Appendix C). `%` and `!` are ordinary local-part
//! characters and are never used for routing.
//!
//! Not supported: non-ASCII addresses (SMTPUTF8, RFC 6531); they get 553 5.6.7.

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
    /// Parses `local@domain` without angle brackets.
    pub fn parse_mailbox(s: &str) -> Result<Address, AddressError> {
        if !s.is_ascii() {
            return Err(AddressError::NonAscii);
        }
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
        if !is_valid_domain(domain) {
            return Err(AddressError::Syntax);
        }
        let address = Address {
            local,
            domain: domain.to_ascii_lowercase(),
        };
        // RFC 5321 §4.5.3.1.3: the path, brackets included, is at most 256
        // octets. Checked on the printed form, which is what goes into
        // `MAIL FROM:<...>` and `RCPT TO:<...>` (a 64-octet local part and
        // a 255-octet domain pass the checks above but not this one).
        if address.path_len() > MAX_PATH {
            return Err(AddressError::TooLong);
        }
        Ok(address)
    }

    /// Length of `<address>` as printed.
    fn path_len(&self) -> usize {
        use fmt::Write;
        struct Count(usize);
        impl Write for Count {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                self.0 += s.len();
                Ok(())
            }
        }
        let mut n = Count(2);
        let _ = write!(n, "{self}");
        n.0
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
        let parsed = Address::parse_mailbox(&candidate.to_string())?;
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
            write!(f, "{}@{}", self.local, self.domain)
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

fn is_atext(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&c)
}

fn is_dot_string(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|atom| !atom.is_empty() && atom.bytes().all(is_atext))
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
            // qtextSMTP / quoted-pairSMTP: printable ASCII and space only.
            if !(' '..='~').contains(&c) {
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
        assert_eq!(parse_path("<usér@x.example>"), Err(AddressError::NonAscii));
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
