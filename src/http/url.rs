//! `https://host[:port][/path[?query]]`, parsed once into a [`Url`].
//!
//! Accepted hosts: DNS names (letters, digits, `-`, `.`, `_`), IPv4
//! literals and bracketed IPv6 literals. The path and query are kept as
//! written and must be visible ASCII (RFC 3986 §3.3/3.4 after
//! percent-encoding); a fragment is dropped, userinfo is refused.

use std::fmt;
use std::net::IpAddr;

/// Longest URL accepted.
pub const MAX_URL: usize = 2048;
const HTTPS_PORT: u16 = 443;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    /// Name or IP literal, without brackets; lowercased.
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UrlError {
    TooLong,
    NotHttps,
    BadHost,
    BadPort,
    UserInfo,
    BadPath,
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UrlError::TooLong => "URL too long",
            UrlError::NotHttps => "URL must start with https://",
            UrlError::BadHost => "bad host in URL",
            UrlError::BadPort => "bad port in URL",
            UrlError::UserInfo => "user:password@ in URL is not supported",
            UrlError::BadPath => "bad path in URL (visible ASCII only)",
        })
    }
}

impl Url {
    pub fn parse(s: &str) -> Result<Url, UrlError> {
        if s.len() > MAX_URL {
            return Err(UrlError::TooLong);
        }
        let rest = strip_prefix_ignore_case(s, "https://").ok_or(UrlError::NotHttps)?;
        let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => rest.split_at_checked(i).ok_or(UrlError::BadPath)?,
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(UrlError::UserInfo);
        }
        let (host, port) = split_host_port(authority)?;
        let path = if path.is_empty() {
            "/".to_string()
        } else if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        if !path.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(UrlError::BadPath);
        }
        Ok(Url { host, port, path })
    }

    /// The `Host` field value: the host, bracketed if IPv6, and the port
    /// unless it is 443.
    pub fn host_field(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == HTTPS_PORT {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// For logs, state files and bounces: the URL with its query (where
    /// tokens go, e.g. Gotify's `?token=`) shown as `?…`.
    pub fn redacted(&self) -> String {
        match self.path.split_once('?') {
            Some((path, _)) => format!("https://{}{path}?…", self.host_field()),
            None => self.to_string(),
        }
    }

    /// The host as an IP address, when it is a literal.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "https://{}{}", self.host_field(), self.path)
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let (head, tail) = s.split_at_checked(prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then_some(tail)
}

fn split_host_port(authority: &str) -> Result<(String, u16), UrlError> {
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (v6, after) = bracketed.split_once(']').ok_or(UrlError::BadHost)?;
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(UrlError::BadHost);
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(UrlError::BadPort)?),
        };
        (v6, port)
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => HTTPS_PORT,
        Some(p) => {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(UrlError::BadPort);
            }
            match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => return Err(UrlError::BadPort),
            }
        }
    };
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && (host.contains(':')
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')));
    if !name_ok {
        return Err(UrlError::BadHost);
    }
    Ok((host.to_ascii_lowercase(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let u = Url::parse("HTTPS://Ntfy.SH/alerts").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("ntfy.sh", 443, "/alerts")
        );
        assert_eq!(u.host_field(), "ntfy.sh");
        let u = Url::parse("https://127.0.0.1:8443").unwrap();
        assert_eq!((u.port, u.path.as_str()), (8443, "/"));
        assert_eq!(u.host_field(), "127.0.0.1:8443");
        assert_eq!(u.to_string(), "https://127.0.0.1:8443/");
        let u = Url::parse("https://[::1]:9/m?token=a%20b#frag").unwrap();
        assert_eq!(
            (u.host.as_str(), u.path.as_str()),
            ("::1", "/m?token=a%20b")
        );
        assert_eq!(u.host_field(), "[::1]:9");
        assert_eq!(u.redacted(), "https://[::1]:9/m?…");
        assert_eq!(Url::parse("https://h/t").unwrap().redacted(), "https://h/t");
        assert_eq!(Url::parse("https://h?x=1").unwrap().path, "/?x=1");
    }

    #[test]
    fn refuses() {
        assert_eq!(Url::parse("http://h/"), Err(UrlError::NotHttps));
        assert_eq!(Url::parse("https://u:p@h/"), Err(UrlError::UserInfo));
        assert_eq!(Url::parse("https:///x"), Err(UrlError::BadHost));
        assert_eq!(Url::parse("https://h:0/"), Err(UrlError::BadPort));
        assert_eq!(Url::parse("https://h:99999/"), Err(UrlError::BadPort));
        assert_eq!(Url::parse("https://h:/"), Err(UrlError::BadPort));
        assert_eq!(Url::parse("https://[zz]/"), Err(UrlError::BadHost));
        assert_eq!(Url::parse("https://h o/"), Err(UrlError::BadHost));
        assert_eq!(Url::parse("https://h/a b"), Err(UrlError::BadPath));
        assert_eq!(Url::parse("https://h/a\r\nX: y"), Err(UrlError::BadPath));
        assert_eq!(Url::parse("https://hé/"), Err(UrlError::BadHost));
        let long = format!("https://h/{}", "a".repeat(MAX_URL));
        assert_eq!(Url::parse(&long), Err(UrlError::TooLong));
    }
}
