//! The configuration file: `key = value` lines into a typed, validated
//! [`Config`], with every default in one place ([`Config::default`]).
//!
//! Grammar (SPEC "Configuration file"): `#` starts a comment; blank lines are
//! ignored; whitespace around keys and values is trimmed; lists are
//! comma-separated; sizes take K/M/G (powers of 1024); durations take
//! s/m/h/d (a bare number is seconds); booleans are yes/no, true/false,
//! on/off, 1/0. An unknown key, a malformed value, a duplicate key or a line
//! without `=` is an error naming the file and the line; all errors are
//! collected, not just the first.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 0: not tied to a line.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}:{}: {}", self.file, self.line, self.message)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalDelivery {
    Maildir,
    Mbox,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmarthostTls {
    StartTls,
    Tls,
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutboundTls {
    Opportunistic,
    Required,
    None,
}

/// Which local parts exist in local domains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalRecipients {
    /// Accounts in /etc/passwd, aliases and postmaster.
    Passwd,
    /// Any well-formed local part (a catch-all, or a development checkout).
    Any,
}

/// A CIDR block; a bare address is a /32 or /128.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("bad address in CIDR {s:?}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| format!("bad prefix length in {s:?}"))?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.prefix)
                };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.prefix)
                };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    /// `host`, `host:port`, `1.2.3.4:25`, `[v6]:port` (port defaults to `default_port`).
    pub fn parse(s: &str, default_port: u16) -> Result<HostPort, String> {
        let s = s.trim();
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("missing ']' in {s:?}"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(format!("bad host:port {s:?}")),
            };
            (h, port)
        } else if s.matches(':').count() > 1 {
            (s, None) // a bare IPv6 address
        } else {
            match s.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            }
        };
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("bad port in {s:?}"))?,
            None => default_port,
        };
        let ok_host = host.parse::<IpAddr>().is_ok() || crate::smtp::address::is_valid_domain(host);
        if host.is_empty() || !ok_host {
            return Err(format!("bad host name in {s:?}"));
        }
        Ok(HostPort {
            host: host.to_string(),
            port,
        })
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub hostname: String,
    pub listen: Vec<SocketAddr>,
    pub submission_listen: Vec<SocketAddr>,
    pub smtps_listen: Vec<SocketAddr>,
    pub spool_dir: PathBuf,
    pub spool_sync: bool,
    pub local_domains: Vec<String>,
    pub local_recipients: LocalRecipients,
    pub relay_networks: Vec<Cidr>,
    pub mail_dir: PathBuf,
    pub local_delivery: LocalDelivery,
    pub aliases: PathBuf,
    pub smarthost: Vec<HostPort>,
    pub smarthost_tls: SmarthostTls,
    pub smarthost_user: Option<String>,
    pub smarthost_password_file: Option<PathBuf>,
    pub hold_outbound: bool,
    pub outbound_tls: OutboundTls,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_ca_file: Option<PathBuf>,
    pub users_file: Option<PathBuf>,
    pub dns_servers: Vec<SocketAddr>,
    pub dns_timeout: Option<Duration>,
    pub mx_port: u16,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_outbound: usize,
    pub max_outbound_per_host: usize,
    pub max_errors: usize,
    pub hop_limit: usize,
    pub retry_schedule: Vec<Duration>,
    pub max_queue_time: Duration,
    pub server_timeout: Duration,
    pub client_timeout: Duration,
    pub connect_timeout: Duration,
    pub allow_plaintext_auth: bool,
    pub user: Option<String>,
    pub pid_file: PathBuf,
    pub log_file: Option<PathBuf>,
    pub log_level: log::LevelFilter,
}

fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl Default for Config {
    fn default() -> Config {
        let hostname = system_hostname();
        Config {
            local_domains: default_local_domains(&hostname),
            hostname,
            listen: vec!["127.0.0.1:25".parse().expect("literal")],
            submission_listen: Vec::new(),
            smtps_listen: Vec::new(),
            spool_dir: "/var/spool/tern".into(),
            spool_sync: true,
            local_recipients: LocalRecipients::Passwd,
            relay_networks: vec![
                Cidr::parse("127.0.0.0/8").expect("literal"),
                Cidr::parse("::1/128").expect("literal"),
            ],
            mail_dir: "/var/mail".into(),
            local_delivery: LocalDelivery::Maildir,
            aliases: "/etc/aliases".into(),
            smarthost: Vec::new(),
            smarthost_tls: SmarthostTls::StartTls,
            smarthost_user: None,
            smarthost_password_file: None,
            hold_outbound: false,
            outbound_tls: OutboundTls::Opportunistic,
            tls_cert: None,
            tls_key: None,
            tls_ca_file: None,
            users_file: None,
            dns_servers: Vec::new(),
            dns_timeout: None,
            mx_port: 25,
            max_message_size: 10 * 1024 * 1024,
            max_recipients: 100,
            max_connections: 100,
            max_connections_per_ip: 20,
            max_outbound: 10,
            max_outbound_per_host: 4,
            max_errors: 10,
            hop_limit: 50,
            retry_schedule: [300, 600, 1800, 3600, 7200, 14400]
                .iter()
                .map(|&s| Duration::from_secs(s))
                .collect(),
            max_queue_time: Duration::from_secs(5 * 86400),
            server_timeout: Duration::from_secs(300),
            client_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(30),
            allow_plaintext_auth: false,
            user: None,
            pid_file: "/var/run/tern.pid".into(),
            log_file: None,
            log_level: log::LevelFilter::Info,
        }
    }
}

fn default_local_domains(hostname: &str) -> Vec<String> {
    let mut v = vec!["localhost".to_string()];
    let h = hostname.to_ascii_lowercase();
    if h != "localhost" {
        v.push(h);
    }
    v
}

// --- value parsers -----------------------------------------------------------

fn list(v: &str) -> Vec<&str> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

fn boolean(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "yes" | "true" | "on" | "1" => Ok(true),
        "no" | "false" | "off" | "0" => Ok(false),
        _ => Err(format!("expected yes or no, got {v:?}")),
    }
}

pub fn size(v: &str) -> Result<u64, String> {
    let (num, mult) = match v.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&v[..v.len() - 1], 1u64 << 10),
        Some('M') => (&v[..v.len() - 1], 1 << 20),
        Some('G') => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("bad size {v:?} (a number with optional K, M or G)"))
}

pub fn duration(v: &str) -> Result<Duration, String> {
    let (num, mult) = match v.chars().last().map(|c| c.to_ascii_lowercase()) {
        Some('s') => (&v[..v.len() - 1], 1u64),
        Some('m') => (&v[..v.len() - 1], 60),
        Some('h') => (&v[..v.len() - 1], 3600),
        Some('d') => (&v[..v.len() - 1], 86400),
        _ => (v, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .map(Duration::from_secs)
        .ok_or_else(|| format!("bad duration {v:?} (a number with optional s, m, h or d)"))
}

fn socket_addrs(v: &str) -> Result<Vec<SocketAddr>, String> {
    list(v)
        .into_iter()
        .map(|s| {
            let a: SocketAddr = s
                .parse()
                .map_err(|_| format!("bad address {s:?} (addr:port or [v6]:port)"))?;
            if a.port() == 0 {
                return Err(format!("port 0 in {s:?}"));
            }
            Ok(a)
        })
        .collect()
}

fn dns_servers(v: &str) -> Result<Vec<SocketAddr>, String> {
    list(v)
        .into_iter()
        .map(|s| {
            if let Ok(ip) = s.parse::<IpAddr>() {
                return Ok(SocketAddr::new(ip, 53));
            }
            let hp = HostPort::parse(s, 53)?;
            let ip: IpAddr = hp
                .host
                .parse()
                .map_err(|_| format!("dns_servers takes addresses, not names: {s:?}"))?;
            Ok(SocketAddr::new(ip, hp.port))
        })
        .collect()
}

fn positive(v: &str) -> Result<usize, String> {
    v.parse::<usize>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("expected a number > 0, got {v:?}"))
}

fn opt_string(v: &str) -> Option<String> {
    (!v.is_empty()).then(|| v.to_string())
}

fn opt_path(v: &str) -> Option<PathBuf> {
    (!v.is_empty()).then(|| PathBuf::from(v))
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
        let file = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, &file),
            Err(e) => Err(vec![ConfigError {
                file,
                line: 0,
                message: format!("cannot read: {e}"),
            }]),
        }
    }

    pub fn parse(text: &str, file: &str) -> Result<Config, Vec<ConfigError>> {
        let mut cfg = Config::default();
        let mut errors = Vec::new();
        let mut seen: Vec<(String, usize)> = Vec::new();
        let mut explicit_domains = false;
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let err = |message: String| ConfigError {
                file: file.to_string(),
                line: line_no,
                message,
            };
            let Some((key, value)) = line.split_once('=') else {
                errors.push(err(format!("expected `key = value`, got {line:?}")));
                continue;
            };
            let (key, value) = (key.trim(), value.trim());
            if let Some((_, first)) = seen.iter().find(|(k, _)| k == key) {
                errors.push(err(format!(
                    "duplicate key {key:?} (first set on line {first})"
                )));
                continue;
            }
            seen.push((key.to_string(), line_no));
            if key == "local_domains" {
                explicit_domains = true;
            }
            if let Err(message) = cfg.set(key, value) {
                errors.push(err(
                    if message.starts_with("unknown key") || message.starts_with(key) {
                        message
                    } else {
                        format!("{key}: {message}")
                    },
                ));
            }
        }
        if !explicit_domains {
            cfg.local_domains = default_local_domains(&cfg.hostname);
        }
        let line_of = |key: &str| seen.iter().find(|(k, _)| k == key).map_or(0, |(_, l)| *l);
        let mut check = |cond: bool, key: &str, message: &str| {
            if cond {
                errors.push(ConfigError {
                    file: file.to_string(),
                    line: line_of(key),
                    message: message.to_string(),
                });
            }
        };
        check(
            cfg.tls_cert.is_some() != cfg.tls_key.is_some(),
            if cfg.tls_cert.is_some() {
                "tls_cert"
            } else {
                "tls_key"
            },
            "tls_cert and tls_key must be set together",
        );
        check(
            !cfg.smtps_listen.is_empty() && cfg.tls_cert.is_none(),
            "smtps_listen",
            "smtps_listen needs tls_cert and tls_key",
        );
        check(
            cfg.hostname.is_empty() || cfg.hostname.contains(char::is_whitespace),
            "hostname",
            "hostname must be a non-empty name without spaces",
        );
        errors.sort_by_key(|e| e.line);
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(errors)
        }
    }

    fn set(&mut self, key: &str, v: &str) -> Result<(), String> {
        match key {
            "hostname" => self.hostname = v.to_string(),
            "listen" => self.listen = socket_addrs(v)?,
            "submission_listen" => self.submission_listen = socket_addrs(v)?,
            "smtps_listen" => self.smtps_listen = socket_addrs(v)?,
            "spool_dir" => self.spool_dir = opt_path(v).ok_or("spool_dir must not be empty")?,
            "spool_sync" => self.spool_sync = boolean(v)?,
            "local_domains" => {
                self.local_domains = list(v)
                    .into_iter()
                    .map(|d| d.to_ascii_lowercase())
                    .collect()
            }
            "local_recipients" => {
                self.local_recipients = match v {
                    "passwd" => LocalRecipients::Passwd,
                    "any" => LocalRecipients::Any,
                    _ => return Err(format!("local_recipients is passwd or any, got {v:?}")),
                }
            }
            "relay_networks" => {
                self.relay_networks = list(v)
                    .into_iter()
                    .map(Cidr::parse)
                    .collect::<Result<_, _>>()?
            }
            "mail_dir" => self.mail_dir = opt_path(v).ok_or("mail_dir must not be empty")?,
            "local_delivery" => {
                self.local_delivery = match v {
                    "maildir" => LocalDelivery::Maildir,
                    "mbox" => LocalDelivery::Mbox,
                    _ => return Err(format!("local_delivery is maildir or mbox, got {v:?}")),
                }
            }
            "aliases" => self.aliases = PathBuf::from(v),
            "smarthost" => {
                self.smarthost = list(v)
                    .into_iter()
                    .map(|s| HostPort::parse(s, 25))
                    .collect::<Result<_, _>>()?
            }
            "smarthost_tls" => {
                self.smarthost_tls = match v {
                    "starttls" => SmarthostTls::StartTls,
                    "tls" => SmarthostTls::Tls,
                    "none" => SmarthostTls::None,
                    _ => return Err(format!("smarthost_tls is starttls, tls or none, got {v:?}")),
                }
            }
            "smarthost_user" => self.smarthost_user = opt_string(v),
            "smarthost_password_file" => self.smarthost_password_file = opt_path(v),
            "hold_outbound" => self.hold_outbound = boolean(v)?,
            "outbound_tls" => {
                self.outbound_tls = match v {
                    "opportunistic" => OutboundTls::Opportunistic,
                    "required" => OutboundTls::Required,
                    "none" => OutboundTls::None,
                    _ => {
                        return Err(format!(
                            "outbound_tls is opportunistic, required or none, got {v:?}"
                        ))
                    }
                }
            }
            "tls_cert" => self.tls_cert = opt_path(v),
            "tls_key" => self.tls_key = opt_path(v),
            "tls_ca_file" => self.tls_ca_file = opt_path(v),
            "users_file" => self.users_file = opt_path(v),
            "dns_servers" => self.dns_servers = dns_servers(v)?,
            "dns_timeout" => {
                self.dns_timeout = if v.is_empty() {
                    None
                } else {
                    Some(nonzero(duration(v)?)?)
                }
            }
            "mx_port" => {
                self.mx_port = v
                    .parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| format!("bad port {v:?}"))?
            }
            "max_message_size" => {
                self.max_message_size = size(v).and_then(|s| {
                    if s == 0 {
                        Err("max_message_size must be > 0".into())
                    } else {
                        Ok(s)
                    }
                })?
            }
            "max_recipients" => self.max_recipients = positive(v)?,
            "max_connections" => self.max_connections = positive(v)?,
            "max_connections_per_ip" => self.max_connections_per_ip = positive(v)?,
            "max_outbound" => self.max_outbound = positive(v)?,
            "max_outbound_per_host" => self.max_outbound_per_host = positive(v)?,
            "max_errors" => self.max_errors = positive(v)?,
            "hop_limit" => self.hop_limit = positive(v)?,
            "retry_schedule" => {
                let s: Vec<Duration> = list(v)
                    .into_iter()
                    .map(duration)
                    .collect::<Result<_, _>>()?;
                if s.is_empty() || s.iter().any(|d| d.is_zero()) {
                    return Err("retry_schedule needs at least one wait, each > 0".into());
                }
                self.retry_schedule = s;
            }
            "max_queue_time" => self.max_queue_time = duration(v)?,
            "server_timeout" => self.server_timeout = nonzero(duration(v)?)?,
            "client_timeout" => self.client_timeout = nonzero(duration(v)?)?,
            "connect_timeout" => self.connect_timeout = nonzero(duration(v)?)?,
            "allow_plaintext_auth" => self.allow_plaintext_auth = boolean(v)?,
            "user" => self.user = opt_string(v),
            "pid_file" => self.pid_file = opt_path(v).ok_or("pid_file must not be empty")?,
            "log_file" => self.log_file = opt_path(v),
            "log_level" => {
                self.log_level = match v.to_ascii_lowercase().as_str() {
                    "off" => log::LevelFilter::Off,
                    "error" => log::LevelFilter::Error,
                    "warn" => log::LevelFilter::Warn,
                    "info" => log::LevelFilter::Info,
                    "debug" => log::LevelFilter::Debug,
                    "trace" => log::LevelFilter::Trace,
                    _ => {
                        return Err(format!(
                            "log_level is error, warn, info, debug or trace, got {v:?}"
                        ))
                    }
                }
            }
            _ => return Err(format!("unknown key {key:?}")),
        }
        Ok(())
    }

    /// Resolves relative paths against the current directory (the daemon
    /// changes to `/` when it detaches).
    pub fn make_paths_absolute(&mut self) {
        let paths = [
            &mut self.spool_dir,
            &mut self.mail_dir,
            &mut self.aliases,
            &mut self.pid_file,
        ];
        for p in paths
            .into_iter()
            .chain(self.log_file.as_mut())
            .chain(self.users_file.as_mut())
            .chain(self.tls_cert.as_mut())
            .chain(self.tls_key.as_mut())
        {
            if let Ok(abs) = std::path::absolute(&*p) {
                *p = abs;
            }
        }
    }

    pub fn is_local_domain(&self, domain: &str) -> bool {
        let d = domain.trim_end_matches('.');
        self.local_domains.iter().any(|l| l.eq_ignore_ascii_case(d))
    }

    pub fn may_relay(&self, ip: IpAddr) -> bool {
        self.relay_networks.iter().any(|c| c.contains(ip))
    }
}

fn nonzero(d: Duration) -> Result<Duration, String> {
    if d.is_zero() {
        Err("must be > 0".into())
    } else {
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::parse("# nothing\n\n", "t").unwrap();
        assert_eq!(c.listen, vec!["127.0.0.1:25".parse().unwrap()]);
        assert_eq!(c.max_message_size, 10 << 20);
        assert_eq!(c.retry_schedule.len(), 6);
        assert!(c.is_local_domain("LOCALHOST"));
        assert!(c.is_local_domain(&c.hostname.clone()));
        assert!(c.may_relay("127.0.0.5".parse().unwrap()));
        assert!(c.may_relay("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!c.may_relay("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn values() {
        let c = Config::parse(
            "hostname = r1.example  # trailing comment\nlisten = 127.0.0.1:2525, [::1]:2526\nlisten_x = 1\n",
            "t",
        );
        let errs = c.unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].to_string(), "t:3: unknown key \"listen_x\"");
        let c = Config::parse(
            "hostname = r1.example\nlisten = 127.0.0.1:2525, [::1]:2526\nmax_message_size = 25M\nretry_schedule = 1m, 90s, 2h, 1d\nsmarthost = smtp.example.net:587, [2001:db8::1]:25, 192.0.2.9\ndns_servers = 127.0.0.1:5353, ::1\nrelay_networks = 10.0.0.0/8, 192.168.1.0/24\nhold_outbound = yes\nlocal_delivery = mbox\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.hostname, "r1.example");
        assert_eq!(c.local_domains, vec!["localhost", "r1.example"]);
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.max_message_size, 25 << 20);
        assert_eq!(
            c.retry_schedule,
            vec![
                Duration::from_secs(60),
                Duration::from_secs(90),
                Duration::from_secs(7200),
                Duration::from_secs(86400)
            ]
        );
        assert_eq!(
            c.smarthost[0],
            HostPort {
                host: "smtp.example.net".into(),
                port: 587
            }
        );
        assert_eq!(
            c.smarthost[1],
            HostPort {
                host: "2001:db8::1".into(),
                port: 25
            }
        );
        assert_eq!(c.smarthost[2].port, 25);
        assert_eq!(c.dns_servers[1], "[::1]:53".parse().unwrap());
        assert!(c.may_relay("192.168.1.77".parse().unwrap()));
        assert!(!c.may_relay("192.168.2.1".parse().unwrap()));
        assert!(c.hold_outbound);
        assert_eq!(c.local_delivery, LocalDelivery::Mbox);
    }

    #[test]
    fn errors_with_lines_all_collected() {
        let errs = Config::parse(
            "max_recipients = lots\nno equals sign\nspool_sync = maybe\nmax_recipients = 5\nrelay_networks = 10.0.0.0/33\nmax_outbound = 0\nretry_schedule =\n",
            "f.conf",
        )
        .unwrap_err();
        let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![1, 2, 3, 4, 5, 6, 7]);
        assert!(errs[3].message.contains("duplicate"));
    }

    #[test]
    fn cross_key_validation() {
        let errs = Config::parse("tls_cert = /x.pem\n", "t").unwrap_err();
        assert_eq!(errs[0].line, 1);
        let errs = Config::parse("smtps_listen = 127.0.0.1:465\n", "t").unwrap_err();
        assert!(errs[0].message.contains("smtps_listen"));
    }

    #[test]
    fn cidr_edges() {
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(!Cidr::parse("::1")
            .unwrap()
            .contains("127.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("2001:db8::/32")
            .unwrap()
            .contains("2001:db8:1::5".parse().unwrap()));
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(size("512"), Ok(512));
        assert_eq!(size("2K"), Ok(2048));
        assert_eq!(size("1g"), Ok(1 << 30));
        assert!(size("1T").is_err());
        assert_eq!(duration("5d"), Ok(Duration::from_secs(432000)));
        assert_eq!(duration("30"), Ok(Duration::from_secs(30)));
        assert!(duration("1w").is_err());
    }

    #[test]
    fn example_config_parses() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/etc/tern.conf")).unwrap();
        Config::parse(&text, "etc/tern.conf").unwrap();
        let dev =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/etc/tern.dev.conf"))
                .unwrap();
        Config::parse(&dev, "etc/tern.dev.conf").unwrap();
    }
}
