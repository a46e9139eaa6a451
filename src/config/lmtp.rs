//! `lmtp_target`: where `local_delivery = lmtp` hands local mail (RFC
//! 2033): a unix stream socket (`unix:/run/dovecot/lmtp`) or `host:port`.

use std::fmt;
use std::path::PathBuf;

use super::HostPort;

/// Default port of an `lmtp_target` given without one (the port Dovecot
/// and Cyrus use; RFC 2033 §5 forbids port 25).
pub const LMTP_PORT: u16 = 24;

/// An LMTP server: a unix socket or a host and port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LmtpTarget {
    /// An absolute path.
    Unix(PathBuf),
    Inet(HostPort),
}

impl LmtpTarget {
    /// `unix:/absolute/path`, `host`, `host:port`, `[v6]:port`; empty: none.
    pub fn parse(v: &str) -> Result<Option<LmtpTarget>, String> {
        if v.is_empty() {
            return Ok(None);
        }
        if let Some(path) = v.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(format!(
                    "unix socket path {path:?} must be absolute (unix:/run/dovecot/lmtp)"
                ));
            }
            return Ok(Some(LmtpTarget::Unix(PathBuf::from(path))));
        }
        HostPort::parse(v, LMTP_PORT)
            .map(|hp| Some(LmtpTarget::Inet(hp)))
            .map_err(|e| format!("{e} (expected unix:/path or host:port)"))
    }
}

impl fmt::Display for LmtpTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LmtpTarget::Unix(path) => write!(f, "unix:{}", path.display()),
            LmtpTarget::Inet(hp) => hp.fmt(f),
        }
    }
}

impl super::Config {
    /// The LMTP server local mail goes to (`local_delivery = lmtp`).
    pub fn lmtp(&self) -> Option<&LmtpTarget> {
        match self.local_delivery {
            super::LocalDelivery::Lmtp => self.lmtp_target.as_ref(),
            super::LocalDelivery::Maildir | super::LocalDelivery::Mbox => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_unix_and_inet_targets() {
        assert_eq!(
            LmtpTarget::parse("unix:/run/dovecot/lmtp"),
            Ok(Some(LmtpTarget::Unix("/run/dovecot/lmtp".into())))
        );
        let inet = |host: &str, port| {
            Ok(Some(LmtpTarget::Inet(HostPort {
                host: host.into(),
                port,
            })))
        };
        assert_eq!(LmtpTarget::parse("127.0.0.1:2424"), inet("127.0.0.1", 2424));
        assert_eq!(LmtpTarget::parse("mail.lan"), inet("mail.lan", LMTP_PORT));
        assert_eq!(LmtpTarget::parse(""), Ok(None));
        assert!(LmtpTarget::parse("unix:run/lmtp")
            .unwrap_err()
            .contains("absolute"));
        assert!(LmtpTarget::parse("bad host:24")
            .unwrap_err()
            .contains("unix:/path or host:port"));
        assert_eq!(LmtpTarget::Unix("/run/x".into()).to_string(), "unix:/run/x");
    }
}
