//! Delivery status notification parameters (RFC 3461 §4): `RET` and
//! `ENVID` on MAIL, `NOTIFY` and `ORCPT` on RCPT.
//!
//! Values are decided here, once, into types: a `Notify` is three flags
//! (all clear is `NEVER`), `ENVID` and the `ORCPT` address are stored
//! decoded from xtext and encoded again only when relayed. A malformed
//! value, a repeated parameter or `NEVER` combined with another keyword
//! is `501 5.5.4`.

use std::fmt;

use super::reply::{self, Reply};

/// RFC 3461 §4.4: an ENVID is at most 100 characters (as sent).
pub const MAX_ENVID: usize = 100;
/// RFC 3461 §4.2: an ORCPT value is at most 500 characters (as sent).
pub const MAX_ORCPT: usize = 500;

/// `RET=FULL` or `RET=HDRS` (RFC 3461 §4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ret {
    Full,
    Hdrs,
}

impl Ret {
    pub fn keyword(self) -> &'static str {
        match self {
            Ret::Full => "FULL",
            Ret::Hdrs => "HDRS",
        }
    }
}

/// `NOTIFY=` (RFC 3461 §4.1): which reports the sender wants for this
/// recipient. All three clear is `NEVER`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Notify {
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

impl Notify {
    pub const NEVER: Notify = Notify {
        success: false,
        failure: false,
        delay: false,
    };

    /// Parses the (upper-cased) value: `NEVER` alone, or a comma list of
    /// `SUCCESS`, `FAILURE`, `DELAY`, each at most once.
    pub fn parse(value: &[u8]) -> Option<Notify> {
        if value == b"NEVER" {
            return Some(Notify::NEVER);
        }
        let mut n = Notify::NEVER;
        for word in value.split(|&b| b == b',') {
            let flag = match word {
                b"SUCCESS" => &mut n.success,
                b"FAILURE" => &mut n.failure,
                b"DELAY" => &mut n.delay,
                _ => return None,
            };
            if *flag {
                return None;
            }
            *flag = true;
        }
        Some(n)
    }
}

impl fmt::Display for Notify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Notify::NEVER {
            return f.write_str("NEVER");
        }
        let words = [
            (self.success, "SUCCESS"),
            (self.failure, "FAILURE"),
            (self.delay, "DELAY"),
        ];
        let mut first = true;
        for (_, w) in words.iter().filter(|(on, _)| *on) {
            if !first {
                f.write_str(",")?;
            }
            f.write_str(w)?;
            first = false;
        }
        Ok(())
    }
}

/// `ORCPT=addr-type;xtext` (RFC 3461 §4.2), the address decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Orcpt {
    /// `rfc822` in practice; an atom, kept as given (lower-cased).
    pub addr_type: String,
    pub addr: String,
}

impl Orcpt {
    /// `addr-type;xtext`, of any length (the SMTP parameter's bound is
    /// checked by [`DsnRcpt::param`]; a queue file is never refused for it).
    pub fn parse(raw: &[u8]) -> Option<Orcpt> {
        let semi = raw.iter().position(|&b| b == b';')?;
        let (kind, rest) = raw.split_at_checked(semi)?;
        let addr = rest.get(1..)?;
        if kind.is_empty() || !kind.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-') {
            return None;
        }
        let addr = xtext_decode(addr)?;
        if addr.is_empty() {
            return None;
        }
        Some(Orcpt {
            addr_type: String::from_utf8(kind.to_ascii_lowercase()).ok()?,
            addr,
        })
    }
}

impl fmt::Display for Orcpt {
    /// The parameter value as sent: `rfc822;a+2Bb@example`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{};{}", self.addr_type, Xtext(&self.addr))
    }
}

/// The MAIL-level DSN parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DsnMail {
    pub ret: Option<Ret>,
    pub envid: Option<String>,
}

impl DsnMail {
    /// One `RET=` or `ENVID=` parameter: `key` upper-cased, `raw` as sent.
    pub fn param(&mut self, key: &[u8], raw: &[u8]) -> Result<(), Reply> {
        match key {
            b"RET" if self.ret.is_none() => {
                self.ret = Some(match raw.to_ascii_uppercase().as_slice() {
                    b"FULL" => Ret::Full,
                    b"HDRS" => Ret::Hdrs,
                    _ => return Err(reply::SYNTAX_PARAMS),
                })
            }
            b"ENVID" if self.envid.is_none() && raw.len() <= MAX_ENVID => {
                self.envid = Some(xtext_decode(raw).ok_or(reply::SYNTAX_PARAMS)?)
            }
            _ => return Err(reply::SYNTAX_PARAMS),
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.ret.is_none() && self.envid.is_none()
    }
}

/// The RCPT-level DSN parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DsnRcpt {
    /// `None`: not given (RFC 3461 §4.1: failures and, at the MTA's
    /// discretion, delays are reported).
    pub notify: Option<Notify>,
    pub orcpt: Option<Orcpt>,
}

impl DsnRcpt {
    /// One `NOTIFY=` or `ORCPT=` parameter: `key` upper-cased, `raw` as sent.
    pub fn param(&mut self, key: &[u8], raw: &[u8]) -> Result<(), Reply> {
        match key {
            b"NOTIFY" if self.notify.is_none() => {
                self.notify =
                    Some(Notify::parse(&raw.to_ascii_uppercase()).ok_or(reply::SYNTAX_PARAMS)?)
            }
            b"ORCPT" if self.orcpt.is_none() && raw.len() <= MAX_ORCPT => {
                self.orcpt = Some(Orcpt::parse(raw).ok_or(reply::SYNTAX_PARAMS)?)
            }
            _ => return Err(reply::SYNTAX_PARAMS),
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.notify.is_none() && self.orcpt.is_none()
    }

    /// A failure (bounce) is reported for this recipient.
    pub fn wants_failure(&self) -> bool {
        self.notify.is_none_or(|n| n.failure)
    }

    /// A delay warning may be sent for this recipient.
    pub fn wants_delay(&self) -> bool {
        self.notify.is_none_or(|n| n.delay)
    }

    /// A success report (`delivered`/`relayed`) was asked for.
    pub fn wants_success(&self) -> bool {
        self.notify.is_some_and(|n| n.success)
    }
}

/// The DSN parameters of one outbound transaction: MAIL's, and each
/// recipient's in the order of its recipients (a missing entry is none).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DsnParams {
    pub mail: DsnMail,
    pub rcpts: Vec<DsnRcpt>,
}

impl DsnParams {
    /// ` RET=... ENVID=...` for MAIL to a server that offers DSN.
    pub fn mail_suffix(&self) -> String {
        let mut s = String::new();
        if let Some(ret) = self.mail.ret {
            s.push_str(" RET=");
            s.push_str(ret.keyword());
        }
        if let Some(envid) = &self.mail.envid {
            s.push_str(&format!(" ENVID={}", Xtext(envid)));
        }
        s
    }

    /// ` NOTIFY=... ORCPT=...` for recipient `i` to a server that offers DSN.
    pub fn rcpt_suffix(&self, i: usize) -> String {
        let Some(r) = self.rcpts.get(i) else {
            return String::new();
        };
        let mut s = String::new();
        if let Some(n) = r.notify {
            s.push_str(&format!(" NOTIFY={n}"));
        }
        if let Some(o) = &r.orcpt {
            s.push_str(&format!(" ORCPT={o}"));
        }
        s
    }
}

/// Writes a value as xtext (RFC 3461 §4): octets outside `!`..`~`, and
/// `+` and `=`, become `+HH`.
pub struct Xtext<'a>(pub &'a str);

/// Whether xtext carries this octet as itself.
fn is_xchar(b: u8) -> bool {
    (b'!'..=b'~').contains(&b) && b != b'+' && b != b'='
}

impl fmt::Display for Xtext<'_> {
    /// Runs of plain octets go out in one `write_str` each (every queued
    /// message's envelope writes its addresses this way: char by char it
    /// was a tenth of the instructions of accepting a message).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut run_start = 0;
        for (i, b) in self.0.bytes().enumerate() {
            if is_xchar(b) {
                continue;
            }
            // Plain octets are ASCII, so a run ends on a char boundary.
            f.write_str(self.0.get(run_start..i).unwrap_or_default())?;
            write!(f, "+{b:02X}")?;
            run_start = i + 1;
        }
        f.write_str(self.0.get(run_start..).unwrap_or_default())
    }
}

/// Reads xtext as RFC 3461 §4 writes it (`+` and two upper-case hex
/// digits); `None` when malformed, not UTF-8, or when it decodes to a
/// control character (the value goes into report header fields).
pub fn xtext_decode(raw: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter().copied();
    let hex = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    };
    while let Some(b) = bytes.next() {
        match b {
            b'+' => {
                let hi = hex(bytes.next()?)?;
                let lo = hex(bytes.next()?)?;
                out.push(hi * 16 + lo);
            }
            b'!'..=b'~' if b != b'=' => out.push(b),
            _ => return None,
        }
    }
    let s = String::from_utf8(out).ok()?;
    if s.chars().any(char::is_control) {
        return None;
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_lists() {
        assert_eq!(Notify::parse(b"NEVER"), Some(Notify::NEVER));
        let n = Notify::parse(b"SUCCESS,DELAY").unwrap();
        assert!(n.success && n.delay && !n.failure);
        assert_eq!(n.to_string(), "SUCCESS,DELAY");
        assert_eq!(Notify::NEVER.to_string(), "NEVER");
        for bad in [
            &b"NEVER,FAILURE"[..],
            b"FAILURE,NEVER",
            b"",
            b"FAILURE,",
            b"FAILURE,FAILURE",
            b"SOMETIMES",
        ] {
            assert_eq!(Notify::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn xtext_writes_what_encoding_octet_by_octet_writes() {
        fn octet_by_octet(s: &str) -> String {
            s.bytes()
                .map(|b| {
                    if is_xchar(b) {
                        char::from(b).to_string()
                    } else {
                        format!("+{b:02X}")
                    }
                })
                .collect()
        }
        for s in [
            "",
            "plain@example.org",
            "+",
            "=",
            "a+b=c d",
            "+lead and trail=",
            "ü@bücher.example",
            "tab\there\r\n~!",
            "x\u{7f}y\u{0}",
        ] {
            assert_eq!(Xtext(s).to_string(), octet_by_octet(s), "{s:?}");
            let decoded = xtext_decode(Xtext(s).to_string().as_bytes());
            let expected = (!s.chars().any(char::is_control)).then(|| s.to_string());
            assert_eq!(decoded, expected, "{s:?}");
        }
        assert_eq!(Xtext("ü+").to_string(), "+C3+BC+2B");
    }

    #[test]
    fn xtext_roundtrip_and_strictness() {
        assert_eq!(xtext_decode(b"a+2Bb+3Dc").as_deref(), Some("a+b=c"));
        assert_eq!(Xtext("a+b=c d").to_string(), "a+2Bb+3Dc+20d");
        assert_eq!(xtext_decode(b"a+2b"), None); // lower-case hex
        assert_eq!(xtext_decode(b"a+2"), None);
        assert_eq!(xtext_decode(b"a=b"), None);
        assert_eq!(xtext_decode(b"a+0Db"), None); // CR in a header field
    }

    #[test]
    fn orcpt_values() {
        let o = Orcpt::parse(b"RFC822;x+2By@y.example").unwrap();
        assert_eq!(o.addr_type, "rfc822");
        assert_eq!(o.addr, "x+y@y.example");
        assert_eq!(o.to_string(), "rfc822;x+2By@y.example");
        assert_eq!(Orcpt::parse(b"rfc822"), None);
        assert_eq!(Orcpt::parse(b";x@y"), None);
        assert_eq!(Orcpt::parse(b"rfc822;"), None);
        assert_eq!(Orcpt::parse(b"rfc 822;x@y"), None);
        let long = format!("rfc822;{}@y", "a".repeat(MAX_ORCPT));
        assert_eq!(
            DsnRcpt::default().param(b"ORCPT", long.as_bytes()),
            Err(reply::SYNTAX_PARAMS)
        );
    }

    #[test]
    fn repeated_parameters_are_refused() {
        let mut m = DsnMail::default();
        m.param(b"RET", b"hdrs").unwrap();
        assert_eq!(m.param(b"RET", b"FULL"), Err(reply::SYNTAX_PARAMS));
        m.param(b"ENVID", b"abc").unwrap();
        assert_eq!(m.param(b"ENVID", b"abc"), Err(reply::SYNTAX_PARAMS));
        assert_eq!(m.ret, Some(Ret::Hdrs));
        let mut r = DsnRcpt::default();
        assert!(r.wants_failure() && r.wants_delay() && !r.wants_success());
        r.param(b"NOTIFY", b"never").unwrap();
        assert!(!r.wants_failure() && !r.wants_delay());
        assert_eq!(r.param(b"NOTIFY", b"SUCCESS"), Err(reply::SYNTAX_PARAMS));
        let long = "a".repeat(MAX_ENVID + 1);
        assert_eq!(
            DsnMail::default().param(b"ENVID", long.as_bytes()),
            Err(reply::SYNTAX_PARAMS)
        );
    }
}
