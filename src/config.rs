//! The configuration file: `key = value` lines into a typed, validated
//! [`Config`], with every default in one place ([`Config::default`]).
//!
//! Why: every other module takes its limits, paths and addresses from a
//! `Config` that cannot hold a bad value, so none of them re-checks input.
//! The file is parsed once at start and on SIGHUP; a file with any error is
//! refused whole (the running daemon keeps its old `Config`).
//!
//! Grammar (SPEC "Configuration file"):
//! - one `key = value` per line, split at the first `=`; whitespace around
//!   keys and values is trimmed; a UTF-8 byte order mark is ignored;
//! - `#` starts a comment, on its own line or after a value (so no value
//!   can contain `#`); blank lines are ignored;
//! - lists are comma-separated, empty items are skipped, an empty value is
//!   an empty list;
//! - sizes: a number with an optional `K`, `M` or `G` (powers of 1024);
//! - durations: a number with an optional `s`, `m`, `h` or `d` (a bare
//!   number is seconds), at most [`MAX_DURATION`];
//! - booleans: `yes`/`no`, `true`/`false`, `on`/`off`, `1`/`0`;
//! - keyword values (booleans, `local_delivery`, `log_level`, ...) are
//!   ASCII case-insensitive; keys are not.
//!
//! Invariants of a `Config` returned by [`Config::parse`]: every port is
//! non-zero; every `max_*` count, `hop_limit`, timeout and retry wait is
//! positive; `retry_schedule` is non-empty; `hostname` and every
//! `local_domains` entry is a valid LDH domain (RFC 1035 §2.3.1, RFC 5321
//! §4.1.2), the latter lower-cased; `tls_cert` and `tls_key` are both set or
//! both unset, and so are `smarthost_user` and `smarthost_password_file`;
//! `smtps_listen` is empty unless a certificate is set; no socket address is
//! listed twice across the three listener keys.
//!
//! Errors: an unknown key, a malformed value, a duplicate key or a line
//! without `=` is a [`ConfigError`] naming the file and line; all errors are
//! collected and returned ordered by line, not just the first.
//!
//! Not supported: quoting or escaping (a value cannot contain `#` or start
//! or end with a space), line continuations, include files, environment
//! variable expansion, compound durations (`1h30m`), fractions, host names
//! in `listen` or `dns_servers` (addresses only: nothing is resolved here).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest configuration file read (a router's config is a few KiB).
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
/// Longest duration accepted (ten years): keeps `Instant + duration`
/// arithmetic elsewhere from overflowing.
pub const MAX_DURATION: Duration = Duration::from_secs(3650 * 86400);
/// Port of SMTP relay (RFC 5321 §4.5.4.2 / IANA); default for `smarthost` entries.
pub const SMTP_PORT: u16 = 25;
/// Port of DNS; default for `dns_servers` entries.
pub const DNS_PORT: u16 = 53;
/// Longest domain name (RFC 1035 §2.3.4 / RFC 5321 §4.5.3.1.2).
pub const MAX_DOMAIN_LEN: usize = 255;

/// Every key the file may set, in the order of `etc/tern.conf`.
pub const KEYS: &[&str] = &[
    "hostname",
    "listen",
    "submission_listen",
    "smtps_listen",
    "spool_dir",
    "spool_sync",
    "min_free_space",
    "local_domains",
    "local_recipients",
    "mail_dir",
    "local_delivery",
    "aliases",
    "relay_networks",
    "smarthost",
    "smarthost_tls",
    "smarthost_user",
    "smarthost_password_file",
    "hold_outbound",
    "outbound_tls",
    "mx_port",
    "dns_servers",
    "dns_timeout",
    "retry_schedule",
    "max_queue_time",
    "tls_cert",
    "tls_key",
    "tls_ca_file",
    "users_file",
    "allow_plaintext_auth",
    "max_message_size",
    "max_recipients",
    "max_connections",
    "max_connections_per_ip",
    "max_outbound",
    "max_outbound_per_host",
    "max_errors",
    "hop_limit",
    "server_timeout",
    "client_timeout",
    "connect_timeout",
    "user",
    "pid_file",
    "log_file",
    "log_level",
];

/// One problem in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based line; 0 when not tied to a line (unreadable file, a default).
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

impl std::error::Error for ConfigError {}

/// Mailbox format for local delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalDelivery {
    /// `mail_dir/USER/{tmp,new,cur}`.
    Maildir,
    /// `mail_dir/USER`, one file, `From ` separated.
    Mbox,
}

/// How the smarthost connection is secured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmarthostTls {
    /// STARTTLS (RFC 3207), required: no plaintext fallback.
    StartTls,
    /// Implicit TLS from the first byte (RFC 8314, port 465 style).
    Tls,
    /// Plaintext.
    None,
}

/// TLS policy for MX delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutboundTls {
    /// STARTTLS when offered; plaintext otherwise or when the handshake fails.
    Opportunistic,
    /// STARTTLS with a verified certificate, or defer.
    Required,
    /// Never STARTTLS.
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

/// A CIDR block (`10.0.0.0/8`, `::1/128`); a bare address is a /32 or /128.
///
/// The network is stored with its host bits cleared, and an IPv4-mapped
/// IPv6 block of prefix ≥ 96 is stored as the IPv4 block it maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("bad address in network {s:?}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => digits(p)
                .filter(|&p| p <= u64::from(max))
                .and_then(|p| u8::try_from(p).ok())
                .ok_or_else(|| format!("bad prefix length in {s:?} (0 to {max})"))?,
        };
        Ok(Cidr::new(addr, prefix))
    }

    /// `prefix` must not exceed the address length (32 or 128).
    fn new(addr: IpAddr, prefix: u8) -> Cidr {
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) if prefix >= 96 => (IpAddr::V4(v4), prefix - 96),
                _ => (addr, prefix),
            },
            v4 => (v4, prefix),
        };
        let network = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask_v4(prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask_v6(prefix))),
        };
        Cidr { network, prefix }
    }

    /// Whether `ip` is inside; an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`)
    /// is matched as the IPv4 address it maps.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask_v4(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask_v6(self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn mask_v4(prefix: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0)
}

fn mask_v6(prefix: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(prefix.min(128)))
        .unwrap_or(0)
}

/// A host (domain or IP address, IPv6 without brackets) and a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    /// `host`, `host:port`, `1.2.3.4:25`, `[v6]`, `[v6]:port` or a bare IPv6
    /// address; the port defaults to `default_port` and is never 0.
    pub fn parse(s: &str, default_port: u16) -> Result<HostPort, String> {
        let s = s.trim();
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("missing ']' in {s:?}"))?;
            if h.parse::<Ipv6Addr>().is_err() {
                return Err(format!("bad IPv6 address in {s:?}"));
            }
            match after.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None if after.is_empty() => (h, None),
                None => return Err(format!("bad host:port {s:?}")),
            }
        } else if s.parse::<Ipv6Addr>().is_ok() {
            (s, None)
        } else {
            match s.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            }
        };
        let port = match port {
            Some(p) => port_number(p).map_err(|e| format!("{e} in {s:?}"))?,
            None => default_port,
        };
        if host.parse::<IpAddr>().is_err() && !is_valid_domain(host) {
            return Err(format!("bad host name in {s:?}"));
        }
        Ok(HostPort {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The validated configuration: one field per key, named like the key.
/// See `etc/tern.conf` for what each key means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    // Identity and listeners.
    pub hostname: String,
    pub listen: Vec<SocketAddr>,
    pub submission_listen: Vec<SocketAddr>,
    pub smtps_listen: Vec<SocketAddr>,
    // Spool.
    pub spool_dir: PathBuf,
    pub spool_sync: bool,
    /// Bytes; 0: no check (see `spool::space`).
    pub min_free_space: u64,
    // Local delivery.
    /// Lower-cased, without a trailing dot.
    pub local_domains: Vec<String>,
    pub local_recipients: LocalRecipients,
    pub mail_dir: PathBuf,
    pub local_delivery: LocalDelivery,
    /// Empty or missing file: no aliases.
    pub aliases: PathBuf,
    // Relaying and outbound delivery.
    pub relay_networks: Vec<Cidr>,
    pub smarthost: Vec<HostPort>,
    pub smarthost_tls: SmarthostTls,
    pub smarthost_user: Option<String>,
    pub smarthost_password_file: Option<PathBuf>,
    pub hold_outbound: bool,
    pub outbound_tls: OutboundTls,
    pub mx_port: u16,
    /// Empty: use /etc/resolv.conf (decided by the DNS module).
    pub dns_servers: Vec<SocketAddr>,
    /// `None`: resolv.conf's `options timeout`.
    pub dns_timeout: Option<Duration>,
    pub retry_schedule: Vec<Duration>,
    pub max_queue_time: Duration,
    // TLS and authentication.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_ca_file: Option<PathBuf>,
    pub users_file: Option<PathBuf>,
    pub allow_plaintext_auth: bool,
    // Limits and timeouts.
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_outbound: usize,
    pub max_outbound_per_host: usize,
    /// Protocol errors before the server drops a client.
    pub max_errors: usize,
    /// `Received:` headers before a message is refused (554 5.4.6).
    pub hop_limit: usize,
    /// Inbound idle limit waiting for a command or DATA bytes (RFC 5321 §4.5.3.2.7).
    pub server_timeout: Duration,
    /// Outbound wait for each reply; twice this for the reply after the body.
    pub client_timeout: Duration,
    pub connect_timeout: Duration,
    // Daemon.
    pub user: Option<String>,
    pub pid_file: PathBuf,
    /// `None`: stderr.
    pub log_file: Option<PathBuf>,
    pub log_level: log::LevelFilter,
}

impl Default for Config {
    fn default() -> Config {
        let hostname = system_hostname();
        Config {
            local_domains: default_local_domains(&hostname),
            hostname,
            listen: vec![SocketAddr::from((Ipv4Addr::LOCALHOST, SMTP_PORT))],
            submission_listen: Vec::new(),
            smtps_listen: Vec::new(),
            spool_dir: PathBuf::from("/var/spool/tern"),
            spool_sync: true,
            min_free_space: 1024 * 1024,
            local_recipients: LocalRecipients::Passwd,
            mail_dir: PathBuf::from("/var/mail"),
            local_delivery: LocalDelivery::Maildir,
            aliases: PathBuf::from("/etc/aliases"),
            relay_networks: vec![
                Cidr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
                Cidr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
            ],
            smarthost: Vec::new(),
            smarthost_tls: SmarthostTls::StartTls,
            smarthost_user: None,
            smarthost_password_file: None,
            hold_outbound: false,
            outbound_tls: OutboundTls::Opportunistic,
            mx_port: SMTP_PORT,
            dns_servers: Vec::new(),
            dns_timeout: None,
            retry_schedule: [5 * 60, 10 * 60, 30 * 60, 3600, 2 * 3600, 4 * 3600]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            max_queue_time: Duration::from_secs(5 * 86400),
            tls_cert: None,
            tls_key: None,
            tls_ca_file: None,
            users_file: None,
            allow_plaintext_auth: false,
            max_message_size: 10 * 1024 * 1024,
            max_recipients: 100,
            max_connections: 100,
            max_connections_per_ip: 20,
            max_outbound: 10,
            max_outbound_per_host: 4,
            max_errors: 10,
            hop_limit: 50,
            server_timeout: Duration::from_secs(5 * 60),
            client_timeout: Duration::from_secs(5 * 60),
            connect_timeout: Duration::from_secs(30),
            user: None,
            pid_file: PathBuf::from("/var/run/tern.pid"),
            log_file: None,
            log_level: log::LevelFilter::Info,
        }
    }
}

/// `localhost` and the host name, lower-cased, without repeats.
fn default_local_domains(hostname: &str) -> Vec<String> {
    let mut domains = vec!["localhost".to_string()];
    let host = hostname.trim_end_matches('.').to_ascii_lowercase();
    if !host.is_empty() && host != "localhost" {
        domains.push(host);
    }
    domains
}

/// The system host name: gethostname(2), then /proc, then `localhost`.
fn system_hostname() -> String {
    let mut buf = [0u8; MAX_DOMAIN_LEN + 1];
    // SAFETY: `buf` is writable for `buf.len()` bytes; the result is only
    // read up to the first NUL inside `buf`.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let name = buf
            .iter()
            .position(|&b| b == 0)
            .and_then(|end| buf.get(..end));
        if let Some(name) = name {
            if let Ok(name) = std::str::from_utf8(name) {
                if !name.trim().is_empty() {
                    return name.trim().to_string();
                }
            }
        }
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

impl Config {
    /// Reads and parses `path`; an unreadable or oversized file is one error.
    pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
        use std::io::Read;
        let file = path.display().to_string();
        let one = |message: String| {
            vec![ConfigError {
                file: file.clone(),
                line: 0,
                message,
            }]
        };
        let mut bytes = Vec::new();
        let read = std::fs::File::open(path)
            .and_then(|f| f.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes));
        if let Err(e) = read {
            return Err(one(format!("cannot read: {e}")));
        }
        if bytes.len() as u64 > MAX_CONFIG_BYTES {
            return Err(one(format!("larger than {MAX_CONFIG_BYTES} bytes")));
        }
        match String::from_utf8(bytes) {
            Ok(text) => Config::parse(&text, &file),
            Err(e) => Err(one(format!(
                "not UTF-8 (byte {})",
                e.utf8_error().valid_up_to()
            ))),
        }
    }

    /// Parses the text of a configuration file; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, Vec<ConfigError>> {
        let mut cfg = Config::default();
        let mut errors = Vec::new();
        // Key → line where it was first set.
        let mut seen: Vec<(&str, usize)> = Vec::new();
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = raw.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let mut error = |message: String| {
                errors.push(ConfigError {
                    file: file.to_string(),
                    line: line_no,
                    message,
                })
            };
            let Some((key, value)) = line.split_once('=') else {
                error(format!("expected `key = value`, got {line:?}"));
                continue;
            };
            let (key, value) = (key.trim(), value.trim());
            if key.is_empty() {
                error("missing key before `=`".to_string());
                continue;
            }
            if let Some((_, first)) = seen.iter().find(|(k, _)| *k == key) {
                error(format!("duplicate key {key:?} (first set on line {first})"));
                continue;
            }
            seen.push((key, line_no));
            if !KEYS.contains(&key) {
                error(format!("unknown key {key:?}"));
                continue;
            }
            if let Err(message) = cfg.set(key, value) {
                error(format!("{key}: {message}"));
            }
        }
        if !seen.iter().any(|(k, _)| *k == "local_domains") {
            cfg.local_domains = default_local_domains(&cfg.hostname);
        }
        let line_of = |key: &str| seen.iter().find(|(k, _)| *k == key).map_or(0, |(_, l)| *l);
        for (key, message) in cfg.validate() {
            errors.push(ConfigError {
                file: file.to_string(),
                line: line_of(key),
                message,
            });
        }
        errors.sort_by_key(|e| e.line);
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(errors)
        }
    }

    /// Rules that tie keys together; each problem names the key whose line
    /// it is reported on.
    fn validate(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if !is_valid_domain(&self.hostname) {
            problems.push((
                "hostname",
                format!(
                    "hostname {:?} is not a valid domain name (letters, digits, '-' and '.')",
                    self.hostname
                ),
            ));
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => problems.push(("tls_cert", "tls_cert needs tls_key".into())),
            (None, Some(_)) => problems.push(("tls_key", "tls_key needs tls_cert".into())),
            _ => {}
        }
        if !self.smtps_listen.is_empty() && self.tls_cert.is_none() {
            problems.push((
                "smtps_listen",
                "smtps_listen needs tls_cert and tls_key".into(),
            ));
        }
        match (&self.smarthost_user, &self.smarthost_password_file) {
            (Some(_), None) => problems.push((
                "smarthost_user",
                "smarthost_user needs smarthost_password_file".into(),
            )),
            (None, Some(_)) => problems.push((
                "smarthost_password_file",
                "smarthost_password_file needs smarthost_user".into(),
            )),
            _ => {}
        }
        let listeners = [
            ("listen", &self.listen),
            ("submission_listen", &self.submission_listen),
            ("smtps_listen", &self.smtps_listen),
        ];
        let mut bound: Vec<(SocketAddr, &str)> = Vec::new();
        for (key, addrs) in listeners {
            for addr in addrs {
                match bound.iter().find(|(a, _)| a == addr) {
                    Some((_, first)) => {
                        problems.push((key, format!("{addr} is already listed in {first}")))
                    }
                    None => bound.push((*addr, key)),
                }
            }
        }
        problems
    }

    /// Sets one known key from its trimmed value.
    fn set(&mut self, key: &str, v: &str) -> Result<(), String> {
        match key {
            "hostname" => self.hostname = v.to_string(),
            "listen" => self.listen = listeners(v)?,
            "submission_listen" => self.submission_listen = listeners(v)?,
            "smtps_listen" => self.smtps_listen = listeners(v)?,
            "spool_dir" => self.spool_dir = required_path(v)?,
            "spool_sync" => self.spool_sync = boolean(v)?,
            "min_free_space" => self.min_free_space = parse_size(v)?,
            "local_domains" => {
                self.local_domains = list(v)
                    .map(|d| {
                        let d = d.strip_suffix('.').unwrap_or(d);
                        if is_valid_domain(d) {
                            Ok(d.to_ascii_lowercase())
                        } else {
                            Err(format!("bad domain {d:?}"))
                        }
                    })
                    .collect::<Result<_, _>>()?
            }
            "local_recipients" => {
                self.local_recipients = keyword(
                    v,
                    &[
                        ("passwd", LocalRecipients::Passwd),
                        ("any", LocalRecipients::Any),
                    ],
                )?
            }
            "mail_dir" => self.mail_dir = required_path(v)?,
            "local_delivery" => {
                self.local_delivery = keyword(
                    v,
                    &[
                        ("maildir", LocalDelivery::Maildir),
                        ("mbox", LocalDelivery::Mbox),
                    ],
                )?
            }
            "aliases" => self.aliases = PathBuf::from(v),
            "relay_networks" => {
                self.relay_networks = list(v).map(Cidr::parse).collect::<Result<_, _>>()?
            }
            "smarthost" => {
                self.smarthost = list(v)
                    .map(|s| HostPort::parse(s, SMTP_PORT))
                    .collect::<Result<_, _>>()?
            }
            "smarthost_tls" => {
                self.smarthost_tls = keyword(
                    v,
                    &[
                        ("starttls", SmarthostTls::StartTls),
                        ("tls", SmarthostTls::Tls),
                        ("none", SmarthostTls::None),
                    ],
                )?
            }
            "smarthost_user" => self.smarthost_user = optional_string(v),
            "smarthost_password_file" => self.smarthost_password_file = optional_path(v),
            "hold_outbound" => self.hold_outbound = boolean(v)?,
            "outbound_tls" => {
                self.outbound_tls = keyword(
                    v,
                    &[
                        ("opportunistic", OutboundTls::Opportunistic),
                        ("required", OutboundTls::Required),
                        ("none", OutboundTls::None),
                    ],
                )?
            }
            "mx_port" => self.mx_port = port_number(v)?,
            "dns_servers" => self.dns_servers = dns_servers(v)?,
            "dns_timeout" => {
                self.dns_timeout = match v {
                    "" => None,
                    v => Some(positive_duration(v)?),
                }
            }
            "retry_schedule" => {
                let waits = list(v)
                    .map(positive_duration)
                    .collect::<Result<Vec<_>, _>>()?;
                if waits.is_empty() {
                    return Err("needs at least one wait".into());
                }
                self.retry_schedule = waits;
            }
            "max_queue_time" => self.max_queue_time = positive_duration(v)?,
            "tls_cert" => self.tls_cert = optional_path(v),
            "tls_key" => self.tls_key = optional_path(v),
            "tls_ca_file" => self.tls_ca_file = optional_path(v),
            "users_file" => self.users_file = optional_path(v),
            "allow_plaintext_auth" => self.allow_plaintext_auth = boolean(v)?,
            "max_message_size" => {
                self.max_message_size = parse_size(v)?;
                if self.max_message_size == 0 {
                    return Err("must be > 0".into());
                }
            }
            "max_recipients" => self.max_recipients = count(v)?,
            "max_connections" => self.max_connections = count(v)?,
            "max_connections_per_ip" => self.max_connections_per_ip = count(v)?,
            "max_outbound" => self.max_outbound = count(v)?,
            "max_outbound_per_host" => self.max_outbound_per_host = count(v)?,
            "max_errors" => self.max_errors = count(v)?,
            "hop_limit" => self.hop_limit = count(v)?,
            "server_timeout" => self.server_timeout = positive_duration(v)?,
            "client_timeout" => self.client_timeout = positive_duration(v)?,
            "connect_timeout" => self.connect_timeout = positive_duration(v)?,
            "user" => self.user = optional_string(v),
            "pid_file" => self.pid_file = required_path(v)?,
            "log_file" => self.log_file = optional_path(v),
            "log_level" => {
                self.log_level = keyword(
                    v,
                    &[
                        ("off", log::LevelFilter::Off),
                        ("error", log::LevelFilter::Error),
                        ("warn", log::LevelFilter::Warn),
                        ("info", log::LevelFilter::Info),
                        ("debug", log::LevelFilter::Debug),
                        ("trace", log::LevelFilter::Trace),
                    ],
                )?
            }
            _ => return Err("unknown key".into()),
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
        let optional = [
            &mut self.log_file,
            &mut self.users_file,
            &mut self.tls_cert,
            &mut self.tls_key,
            &mut self.tls_ca_file,
            &mut self.smarthost_password_file,
        ];
        for path in paths
            .into_iter()
            .chain(optional.into_iter().filter_map(Option::as_mut))
        {
            if path.as_os_str().is_empty() {
                continue;
            }
            if let Ok(absolute) = std::path::absolute(&*path) {
                *path = absolute;
            }
        }
    }

    /// Whether mail for `domain` is delivered here (ASCII case-insensitive,
    /// a trailing dot ignored).
    pub fn is_local_domain(&self, domain: &str) -> bool {
        let domain = domain.strip_suffix('.').unwrap_or(domain);
        self.local_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
    }

    /// Whether a client at `ip` may relay without AUTH.
    pub fn may_relay(&self, ip: IpAddr) -> bool {
        self.relay_networks.iter().any(|c| c.contains(ip))
    }
}

// --- value parsers -----------------------------------------------------------

/// Comma-separated items, trimmed; empty items skipped.
fn list(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// One of `options`, ASCII case-insensitive.
fn keyword<T: Copy>(v: &str, options: &[(&str, T)]) -> Result<T, String> {
    options
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(v))
        .map(|(_, value)| *value)
        .ok_or_else(|| {
            let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
            format!("expected {}, got {v:?}", names.join(", "))
        })
}

fn boolean(v: &str) -> Result<bool, String> {
    keyword(
        v,
        &[
            ("yes", true),
            ("no", false),
            ("true", true),
            ("false", false),
            ("on", true),
            ("off", false),
            ("1", true),
            ("0", false),
        ],
    )
}

/// A non-empty run of ASCII digits (no sign, no spaces).
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Splits a number from a one-letter ASCII suffix and scales it.
fn scaled(v: &str, units: &[(char, u64)]) -> Option<u64> {
    let mut chars = v.chars();
    let (number, factor) = match chars.next_back() {
        Some(c) if c.is_ascii_alphabetic() => {
            let (_, factor) = units
                .iter()
                .find(|(unit, _)| unit.eq_ignore_ascii_case(&c))?;
            // `chars` now holds `v` without its last character.
            (chars.as_str().trim_end(), *factor)
        }
        _ => (v, 1),
    };
    digits(number)?.checked_mul(factor)
}

/// A byte count: `512`, `64K`, `10M`, `1G` (binary multiples).
pub fn parse_size(v: &str) -> Result<u64, String> {
    scaled(v, &[('k', 1 << 10), ('m', 1 << 20), ('g', 1 << 30)])
        .ok_or_else(|| format!("bad size {v:?} (a number with optional K, M or G)"))
}

/// A duration: `30` or `30s`, `5m`, `2h`, `5d`; at most [`MAX_DURATION`].
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let secs = scaled(v, &[('s', 1), ('m', 60), ('h', 3600), ('d', 86400)])
        .ok_or_else(|| format!("bad duration {v:?} (a number with optional s, m, h or d)"))?;
    let duration = Duration::from_secs(secs);
    if duration > MAX_DURATION {
        return Err(format!(
            "duration {v:?} is longer than {} days",
            MAX_DURATION.as_secs() / 86400
        ));
    }
    Ok(duration)
}

fn positive_duration(v: &str) -> Result<Duration, String> {
    let d = parse_duration(v)?;
    if d.is_zero() {
        return Err(format!("duration {v:?} must be > 0"));
    }
    Ok(d)
}

/// A count that must be positive (every `max_*` and `hop_limit`).
fn count(v: &str) -> Result<usize, String> {
    digits(v)
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("expected a number > 0, got {v:?}"))
}

fn port_number(v: &str) -> Result<u16, String> {
    digits(v)
        .and_then(|n| u16::try_from(n).ok())
        .filter(|&p| p != 0)
        .ok_or_else(|| format!("bad port {v:?} (1 to 65535)"))
}

/// Listener addresses: `addr:port` or `[v6]:port`, port not 0.
fn listeners(v: &str) -> Result<Vec<SocketAddr>, String> {
    list(v)
        .map(|s| {
            let addr: SocketAddr = s.parse().map_err(|_| {
                if s.parse::<IpAddr>().is_ok() {
                    format!("missing port in {s:?} (addr:port or [v6]:port)")
                } else {
                    format!("bad address {s:?} (addr:port or [v6]:port; no host names)")
                }
            })?;
            if addr.port() == 0 {
                return Err(format!("port 0 in {s:?}"));
            }
            Ok(addr)
        })
        .collect()
}

/// Name servers: `addr`, `addr:port` or `[v6]:port` (port 53 by default).
fn dns_servers(v: &str) -> Result<Vec<SocketAddr>, String> {
    list(v)
        .map(|s| {
            let hp = HostPort::parse(s, DNS_PORT)?;
            let ip: IpAddr = hp
                .host
                .parse()
                .map_err(|_| format!("takes addresses, not names: {s:?}"))?;
            Ok(SocketAddr::new(ip, hp.port))
        })
        .collect()
}

fn optional_string(v: &str) -> Option<String> {
    (!v.is_empty()).then(|| v.to_string())
}

fn optional_path(v: &str) -> Option<PathBuf> {
    (!v.is_empty()).then(|| PathBuf::from(v))
}

fn required_path(v: &str) -> Result<PathBuf, String> {
    optional_path(v).ok_or_else(|| "must not be empty".to_string())
}

/// LDH domain name (RFC 1035 §2.3.1) without a trailing dot; address
/// literals are not host names.
fn is_valid_domain(d: &str) -> bool {
    !d.starts_with('[') && crate::smtp::address::is_valid_domain(d)
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        match Config::parse(text, "t.conf") {
            Ok(c) => c,
            Err(errors) => panic!("unexpected errors: {errors:?}"),
        }
    }

    fn errors(text: &str) -> Vec<ConfigError> {
        match Config::parse(text, "t.conf") {
            Ok(_) => panic!("expected errors for {text:?}"),
            Err(errors) => errors,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    // --- defaults --------------------------------------------------------------

    #[test]
    fn empty_text_is_the_default() {
        let c = parse("");
        assert_eq!(c, Config::default());
        assert_eq!(parse("# only a comment\n\n   \n\t# another\n"), c);
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = Config::default();
        assert!(!c.hostname.is_empty());
        assert_eq!(c.listen, vec!["127.0.0.1:25".parse().unwrap()]);
        assert!(c.submission_listen.is_empty() && c.smtps_listen.is_empty());
        assert_eq!(c.spool_dir, Path::new("/var/spool/tern"));
        assert!(c.spool_sync);
        assert_eq!(c.min_free_space, 1 << 20);
        assert_eq!(c.local_domains[0], "localhost");
        assert!(c.is_local_domain(&c.hostname.to_ascii_uppercase()));
        assert_eq!(c.mail_dir, Path::new("/var/mail"));
        assert_eq!(c.local_delivery, LocalDelivery::Maildir);
        assert_eq!(c.aliases, Path::new("/etc/aliases"));
        assert!(c.smarthost.is_empty());
        assert_eq!(c.smarthost_tls, SmarthostTls::StartTls);
        assert_eq!(c.outbound_tls, OutboundTls::Opportunistic);
        assert!(!c.hold_outbound);
        assert_eq!(c.mx_port, 25);
        assert!(c.dns_servers.is_empty() && c.dns_timeout.is_none());
        assert_eq!(c.max_message_size, 10 << 20);
        assert_eq!((c.max_recipients, c.max_connections), (100, 100));
        assert_eq!((c.max_connections_per_ip, c.max_outbound), (20, 10));
        assert_eq!(
            (c.max_outbound_per_host, c.max_errors, c.hop_limit),
            (4, 10, 50)
        );
        assert_eq!(
            c.retry_schedule,
            [300, 600, 1800, 3600, 7200, 14400].map(secs).to_vec()
        );
        assert_eq!(c.max_queue_time, secs(5 * 86400));
        assert_eq!((c.server_timeout, c.client_timeout), (secs(300), secs(300)));
        assert_eq!(c.connect_timeout, secs(30));
        assert!(!c.allow_plaintext_auth);
        assert_eq!(c.pid_file, Path::new("/var/run/tern.pid"));
        assert_eq!(c.log_level, log::LevelFilter::Info);
        assert!(c.may_relay(ip("127.0.0.5")));
        assert!(c.may_relay(ip("::1")));
        assert!(c.may_relay(ip("::ffff:127.0.0.1")));
        assert!(!c.may_relay(ip("192.0.2.1")));
        assert!(!c.may_relay(ip("::2")));
    }

    // --- every key ---------------------------------------------------------------

    #[test]
    fn every_key_parses() {
        let c = parse(
            "hostname = mx1.Example.NET
listen = 0.0.0.0:25, [::]:25
submission_listen = [::1]:587
smtps_listen = 192.0.2.1:465
spool_dir = /tmp/spool
spool_sync = off
min_free_space = 0
local_domains = Example.net., mail.example.net
local_recipients = ANY
mail_dir = /home/mail
local_delivery = mbox
aliases =
relay_networks = 10.0.0.0/8, 192.168.1.0/24, fd00::/8, 203.0.113.7
smarthost = smtp.example.net:587, [2001:db8::1]:2525, 192.0.2.9, 2001:db8::2
smarthost_tls = TLS
smarthost_user = router@example.net
smarthost_password_file = /etc/tern/smarthost.pw
hold_outbound = true
outbound_tls = required
mx_port = 2525
dns_servers = 192.0.2.53, 127.0.0.1:5353, [::1]:53, 2001:db8::53
dns_timeout = 3s
retry_schedule = 1m, 90, 2h, 1d
max_queue_time = 2d
tls_cert = /etc/tern/cert.pem
tls_key = /etc/tern/key.pem
tls_ca_file = /etc/ssl/ca.pem
users_file = /etc/tern/users
allow_plaintext_auth = 1
max_message_size = 25M
max_recipients = 50
max_connections = 30
max_connections_per_ip = 5
max_outbound = 3
max_outbound_per_host = 2
max_errors = 7
hop_limit = 30
server_timeout = 10m
client_timeout = 2m
connect_timeout = 15
user = nobody
pid_file = /run/tern.pid
log_file = /var/log/tern.log
log_level = Debug
",
        );
        assert_eq!(c.hostname, "mx1.Example.NET");
        assert_eq!(
            c.listen,
            vec!["0.0.0.0:25".parse().unwrap(), "[::]:25".parse().unwrap()]
        );
        assert_eq!(c.submission_listen, vec!["[::1]:587".parse().unwrap()]);
        assert_eq!(c.smtps_listen, vec!["192.0.2.1:465".parse().unwrap()]);
        assert_eq!(c.spool_dir, Path::new("/tmp/spool"));
        assert!(!c.spool_sync);
        assert_eq!(c.min_free_space, 0);
        assert_eq!(c.local_domains, vec!["example.net", "mail.example.net"]);
        assert!(c.is_local_domain("EXAMPLE.net."));
        assert!(!c.is_local_domain("localhost"));
        assert!(!c.is_local_domain("mx1.example.net"));
        assert_eq!(c.local_recipients, LocalRecipients::Any);
        assert_eq!(c.mail_dir, Path::new("/home/mail"));
        assert_eq!(c.local_delivery, LocalDelivery::Mbox);
        assert_eq!(c.aliases, PathBuf::new());
        assert_eq!(c.relay_networks.len(), 4);
        assert!(c.may_relay(ip("10.200.1.1")));
        assert!(c.may_relay(ip("192.168.1.254")));
        assert!(!c.may_relay(ip("192.168.2.1")));
        assert!(c.may_relay(ip("fd12::1")));
        assert!(c.may_relay(ip("203.0.113.7")));
        assert!(!c.may_relay(ip("203.0.113.8")));
        assert!(!c.may_relay(ip("127.0.0.1")));
        let hp = |host: &str, port| HostPort {
            host: host.into(),
            port,
        };
        assert_eq!(
            c.smarthost,
            vec![
                hp("smtp.example.net", 587),
                hp("2001:db8::1", 2525),
                hp("192.0.2.9", 25),
                hp("2001:db8::2", 25),
            ]
        );
        assert_eq!(c.smarthost[1].to_string(), "[2001:db8::1]:2525");
        assert_eq!(c.smarthost_tls, SmarthostTls::Tls);
        assert_eq!(c.smarthost_user.as_deref(), Some("router@example.net"));
        assert_eq!(
            c.smarthost_password_file.as_deref(),
            Some(Path::new("/etc/tern/smarthost.pw"))
        );
        assert!(c.hold_outbound);
        assert_eq!(c.outbound_tls, OutboundTls::Required);
        assert_eq!(c.mx_port, 2525);
        assert_eq!(
            c.dns_servers,
            [
                "192.0.2.53:53",
                "127.0.0.1:5353",
                "[::1]:53",
                "[2001:db8::53]:53"
            ]
            .map(|s| s.parse::<SocketAddr>().unwrap())
            .to_vec()
        );
        assert_eq!(c.dns_timeout, Some(secs(3)));
        assert_eq!(c.retry_schedule, [60, 90, 7200, 86400].map(secs).to_vec());
        assert_eq!(c.max_queue_time, secs(2 * 86400));
        assert_eq!(c.tls_cert.as_deref(), Some(Path::new("/etc/tern/cert.pem")));
        assert_eq!(c.tls_key.as_deref(), Some(Path::new("/etc/tern/key.pem")));
        assert_eq!(c.tls_ca_file.as_deref(), Some(Path::new("/etc/ssl/ca.pem")));
        assert_eq!(c.users_file.as_deref(), Some(Path::new("/etc/tern/users")));
        assert!(c.allow_plaintext_auth);
        assert_eq!(c.max_message_size, 25 << 20);
        assert_eq!((c.max_recipients, c.max_connections), (50, 30));
        assert_eq!((c.max_connections_per_ip, c.max_outbound), (5, 3));
        assert_eq!(
            (c.max_outbound_per_host, c.max_errors, c.hop_limit),
            (2, 7, 30)
        );
        assert_eq!(c.server_timeout, secs(600));
        assert_eq!(c.client_timeout, secs(120));
        assert_eq!(c.connect_timeout, secs(15));
        assert_eq!(c.user.as_deref(), Some("nobody"));
        assert_eq!(c.pid_file, Path::new("/run/tern.pid"));
        assert_eq!(c.log_file.as_deref(), Some(Path::new("/var/log/tern.log")));
        assert_eq!(c.log_level, log::LevelFilter::Debug);
    }

    #[test]
    fn hostname_sets_default_local_domains_unless_listed() {
        let c = parse("hostname = Router.Lan\n");
        assert_eq!(c.local_domains, vec!["localhost", "router.lan"]);
        let c = parse("local_domains = a.example\nhostname = router.lan\n");
        assert_eq!(c.local_domains, vec!["a.example"]);
        let c = parse("local_domains =\n");
        assert!(c.local_domains.is_empty());
        assert!(!c.is_local_domain("localhost"));
    }

    #[test]
    fn empty_values_mean_empty_lists_and_unset_options() {
        let c = parse(
            "listen =\nrelay_networks = ,\nsmarthost =\ndns_servers =\n\
             smarthost_user =\nsmarthost_password_file =\ntls_cert =\ntls_key =\nuser =\nlog_file =\ndns_timeout =\n",
        );
        assert!(c.listen.is_empty() && c.relay_networks.is_empty());
        assert!(c.smarthost.is_empty() && c.dns_servers.is_empty());
        assert!(c.smarthost_user.is_none() && c.tls_cert.is_none() && c.user.is_none());
        assert!(c.log_file.is_none() && c.dns_timeout.is_none());
        assert!(!c.may_relay(ip("127.0.0.1")));
    }

    // --- syntax ------------------------------------------------------------------

    #[test]
    fn comments_whitespace_bom_and_crlf() {
        let c = parse(
            "\u{feff}  hostname\t=  a.example   # the name\r\n#listen = 1.2.3.4:25\r\n\
             max_recipients=7#no space\r\nuser = a=b\n",
        );
        assert_eq!(c.hostname, "a.example");
        assert_eq!(c.max_recipients, 7);
        assert_eq!(c.listen, Config::default().listen);
        assert_eq!(c.user.as_deref(), Some("a=b"));
    }

    #[test]
    fn booleans_and_keywords_ignore_case() {
        for (v, want) in [
            ("yes", true),
            ("No", false),
            ("TRUE", true),
            ("false", false),
            ("on", true),
            ("Off", false),
            ("1", true),
            ("0", false),
        ] {
            assert_eq!(boolean(v), Ok(want), "{v}");
        }
        assert!(boolean("maybe").is_err());
        assert!(boolean("").is_err());
        assert_eq!(
            parse("log_level = WARN\n").log_level,
            log::LevelFilter::Warn
        );
        assert_eq!(parse("log_level = off\n").log_level, log::LevelFilter::Off);
        let e = errors("local_delivery = maildirs\n");
        assert_eq!(
            e[0].to_string(),
            "t.conf:1: local_delivery: expected maildir, mbox, got \"maildirs\""
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("2K"), Ok(2048));
        assert_eq!(parse_size("2k"), Ok(2048));
        assert_eq!(parse_size("10M"), Ok(10 << 20));
        assert_eq!(parse_size("3 G"), Ok(3 << 30));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        for bad in [
            "",
            "K",
            "1T",
            "1KB",
            "-1",
            "+1",
            "1.5M",
            " 1",
            "1e3",
            "99999999999999999999",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        // Overflow of the multiplication is an error, not a wrap.
        assert!(parse_size("18014398509481984K").is_err());
        assert!(errors("max_message_size = 0\n")[0]
            .message
            .contains("max_message_size"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30"), Ok(secs(30)));
        assert_eq!(parse_duration("30s"), Ok(secs(30)));
        assert_eq!(parse_duration("5m"), Ok(secs(300)));
        assert_eq!(parse_duration("5M"), Ok(secs(300)));
        assert_eq!(parse_duration("2h"), Ok(secs(7200)));
        assert_eq!(parse_duration("5d"), Ok(secs(432_000)));
        assert_eq!(parse_duration("3650d"), Ok(MAX_DURATION));
        for bad in [
            "",
            "s",
            "1w",
            "1h30m",
            "1.5h",
            "-5s",
            "3651d",
            "99999999999999999999",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        for key in [
            "server_timeout",
            "client_timeout",
            "connect_timeout",
            "max_queue_time",
            "dns_timeout",
        ] {
            let e = errors(&format!("{key} = 0s\n"));
            assert_eq!(e.len(), 1, "{key}");
            assert!(e[0].message.starts_with(key), "{:?}", e[0]);
        }
    }

    #[test]
    fn retry_schedule_must_be_non_empty_and_positive() {
        assert_eq!(parse("retry_schedule = 1s").retry_schedule, vec![secs(1)]);
        assert_eq!(
            parse("retry_schedule = 1s, 2s,").retry_schedule,
            vec![secs(1), secs(2)]
        );
        for bad in [
            "retry_schedule =",
            "retry_schedule = ,",
            "retry_schedule = 5m, 0, 1h",
            "retry_schedule = 5m 10m",
        ] {
            let e = errors(bad);
            assert_eq!((e.len(), e[0].line), (1, 1), "{bad}");
        }
    }

    #[test]
    fn counts_and_ports() {
        for key in [
            "max_recipients",
            "max_connections",
            "max_connections_per_ip",
            "max_outbound",
            "max_outbound_per_host",
            "max_errors",
            "hop_limit",
        ] {
            assert_eq!(errors(&format!("{key} = 0")).len(), 1, "{key}");
            assert_eq!(errors(&format!("{key} = -1")).len(), 1, "{key}");
            assert_eq!(errors(&format!("{key} = ten")).len(), 1, "{key}");
        }
        assert_eq!(parse("mx_port = 65535").mx_port, 65535);
        for bad in [
            "mx_port = 0",
            "mx_port = 65536",
            "mx_port =",
            "listen = 127.0.0.1:0",
            "smarthost = a.example:0",
            "dns_servers = 127.0.0.1:0",
        ] {
            assert_eq!(errors(bad).len(), 1, "{bad}");
        }
    }

    // --- addresses -----------------------------------------------------------------

    #[test]
    fn listen_addresses() {
        let c = parse("listen = [::1]:25, [2001:db8::5]:2525, 127.0.0.1:2525\n");
        assert_eq!(c.listen.len(), 3);
        assert!(c.listen[0].is_ipv6() && c.listen[0].port() == 25);
        assert_eq!(c.listen[1], "[2001:db8::5]:2525".parse().unwrap());
        for bad in [
            "listen = ::1:25",
            "listen = localhost:25",
            "listen = 127.0.0.1",
            "listen = [::1]",
            "listen = 127.0.0.1:25x",
        ] {
            assert_eq!(errors(bad).len(), 1, "{bad}");
        }
        assert!(errors("listen = 127.0.0.1")[0]
            .message
            .contains("missing port"));
    }

    #[test]
    fn listener_addresses_must_be_distinct() {
        let e = errors("listen = 127.0.0.1:25\nsubmission_listen = 127.0.0.1:587, 127.0.0.1:25\n");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].line, 2);
        assert!(
            e[0].message.contains("already listed in listen"),
            "{}",
            e[0]
        );
    }

    #[test]
    fn cidrs() {
        let c = |s: &str| Cidr::parse(s).unwrap();
        assert!(c("10.0.0.0/8").contains(ip("10.255.255.255")));
        assert!(!c("10.0.0.0/8").contains(ip("11.0.0.0")));
        assert!(c("0.0.0.0/0").contains(ip("8.8.8.8")));
        assert!(!c("0.0.0.0/0").contains(ip("2001:db8::1")));
        assert!(c("::/0").contains(ip("2001:db8::1")));
        assert!(c("192.0.2.7").contains(ip("192.0.2.7")));
        assert!(!c("192.0.2.7").contains(ip("192.0.2.8")));
        assert!(c("::1").contains(ip("::1")));
        assert!(!c("::1").contains(ip("127.0.0.1")));
        assert!(c("2001:db8::/32").contains(ip("2001:db8:1::5")));
        assert!(!c("2001:db8::/32").contains(ip("2001:db9::")));
        // IPv4-mapped IPv6 clients match IPv4 networks ...
        assert!(c("127.0.0.0/8").contains(ip("::ffff:127.0.0.1")));
        assert!(!c("127.0.0.0/8").contains(ip("::ffff:128.0.0.1")));
        // ... and IPv4-mapped networks match IPv4 clients.
        assert!(c("::ffff:10.0.0.0/104").contains(ip("10.1.2.3")));
        assert_eq!(c("::ffff:10.0.0.0/104"), c("10.0.0.0/8"));
        // Host bits are cleared.
        assert_eq!(c("10.1.2.3/8"), c("10.0.0.0/8"));
        assert_eq!(c("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert_eq!(c("fd00::1/8").to_string(), "fd00::/8");
        for bad in [
            "10.0.0.0/33",
            "::1/129",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "10.0.0/8",
            "example.net/8",
            "",
            "/8",
            "10.0.0.0/8/8",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?}");
        }
        let e = errors("relay_networks = 10.0.0.0/33\n");
        assert!(e[0].message.contains("10.0.0.0/33"), "{}", e[0]);
    }

    #[test]
    fn host_ports() {
        let hp = |s: &str| HostPort::parse(s, 25);
        assert_eq!(hp("mail.example.net").unwrap().port, 25);
        assert_eq!(hp("mail.example.net:465").unwrap().port, 465);
        assert_eq!(hp("[::1]").unwrap().host, "::1");
        assert_eq!(hp("1.2.3.4:26").unwrap().to_string(), "1.2.3.4:26");
        for bad in [
            "",
            ":25",
            "a.example:",
            "a.example:x",
            "[::1",
            "[::1]x",
            "[a.example]:25",
            "bad host:25",
            "-a.example",
            "a..example",
            "a.example:25:25",
        ] {
            assert!(hp(bad).is_err(), "{bad:?}");
        }
        assert!(errors("dns_servers = ns.example.net")[0]
            .message
            .contains("not names"));
    }

    // --- errors ------------------------------------------------------------------

    #[test]
    fn unknown_key() {
        let e = errors("hostname = a.example\nlisten_x = 1\n");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].to_string(), "t.conf:2: unknown key \"listen_x\"");
        // Keys are case-sensitive.
        assert_eq!(errors("Hostname = a.example")[0].line, 1);
    }

    #[test]
    fn duplicate_key() {
        let e = errors("max_recipients = 5\n\nmax_recipients = 6\n");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].line, 3);
        assert!(e[0].message.contains("first set on line 1"), "{}", e[0]);
    }

    #[test]
    fn missing_equals_and_missing_key() {
        let e = errors("no equals sign here\n= 5\n");
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].line, 1);
        assert!(e[0].message.contains("key = value"));
        assert_eq!(e[1].line, 2);
    }

    #[test]
    fn all_errors_reported_in_line_order() {
        let e = errors(
            "max_recipients = lots\nno equals sign\nspool_sync = maybe\nmax_recipients = 5\n\
             relay_networks = 10.0.0.0/33\nmax_outbound = 0\nretry_schedule =\nhostname = ok.example\n\
             tls_cert = /c.pem\nbogus = 1\n",
        );
        let lines: Vec<usize> = e.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![1, 2, 3, 4, 5, 6, 7, 9, 10]);
        assert!(e[0].message.starts_with("max_recipients: "));
        assert!(e[3].message.contains("duplicate"));
        assert!(e[7].message.contains("tls_key"));
        assert_eq!(e[8].to_string(), "t.conf:10: unknown key \"bogus\"");
    }

    #[test]
    fn cross_key_validation() {
        let e = errors("tls_cert = /x.pem\n");
        assert_eq!((e.len(), e[0].line), (1, 1));
        let e = errors("hostname = a.example\ntls_key = /k.pem\n");
        assert_eq!((e.len(), e[0].line), (1, 2));
        let e = errors("smtps_listen = 127.0.0.1:465\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].message.contains("smtps_listen"));
        parse("smtps_listen = 127.0.0.1:465\ntls_cert = /c\ntls_key = /k\n");
        let e = errors("smarthost_user = me\n");
        assert_eq!((e.len(), e[0].line), (1, 1));
        let e = errors("\nsmarthost_password_file = /pw\n");
        assert_eq!((e.len(), e[0].line), (1, 2));
    }

    #[test]
    fn hostname_validation() {
        for bad in [
            "hostname =",
            "hostname = my host",
            "hostname = a..b",
            "hostname = -a.example",
            "hostname = host_name",
            "hostname = a.example.",
        ] {
            let e = errors(bad);
            assert_eq!((e.len(), e[0].line), (1, 1), "{bad}");
        }
        assert_eq!(parse("hostname = router").hostname, "router");
    }

    #[test]
    fn local_domains_validation() {
        let e = errors("local_domains = ok.example, bad domain\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].message.contains("bad domain"));
    }

    #[test]
    fn load_reports_unreadable_files_and_errors_with_the_path() {
        let e = Config::load(Path::new("/nonexistent/tern.conf")).unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].line, 0);
        assert!(e[0]
            .to_string()
            .starts_with("/nonexistent/tern.conf: cannot read"));
        let dir = std::env::temp_dir().join(format!("tern-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.conf");
        std::fs::write(
            &path,
            "hostname = ok.test\nbogus_key = 1\nmax_recipients = lots\n",
        )
        .unwrap();
        let e = Config::load(&path).unwrap_err();
        let shown: Vec<String> = e.iter().map(|e| e.to_string()).collect();
        assert_eq!(shown.len(), 2);
        assert!(shown[0].starts_with(&format!("{}:2: ", path.display())));
        assert!(shown[1].starts_with(&format!("{}:3: ", path.display())));
        std::fs::write(&path, b"hostname = \xff\n").unwrap();
        assert!(Config::load(&path).unwrap_err()[0]
            .message
            .contains("UTF-8"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn make_paths_absolute_resolves_relative_paths() {
        let mut c =
            parse("spool_dir = run/spool\nlog_file = run/log\ntls_ca_file = ca.pem\naliases =\n");
        c.make_paths_absolute();
        assert!(c.spool_dir.is_absolute() && c.spool_dir.ends_with("run/spool"));
        assert!(c.log_file.as_deref().is_some_and(Path::is_absolute));
        assert!(c.tls_ca_file.as_deref().is_some_and(Path::is_absolute));
        assert_eq!(c.aliases, PathBuf::new());
        assert_eq!(c.pid_file, Path::new("/var/run/tern.pid"));
    }

    // --- the shipped example -----------------------------------------------------

    /// Checks a documented example: it parses as is, every key is shown as
    /// a commented-out `# key = value` line, and uncommenting every such line
    /// gives the defaults (apart from the example host name).
    pub(crate) fn check_example(text: &str) {
        let as_is = Config::parse(text, "tern.conf");
        assert!(as_is.is_ok(), "{as_is:?}");
        let mut shown = Vec::new();
        let mut uncommented = String::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("# ") else {
                continue;
            };
            let Some((key, _)) = rest.split_once('=') else {
                continue;
            };
            let key = key.trim();
            if KEYS.contains(&key) {
                shown.push(key);
                uncommented.push_str(rest);
                uncommented.push('\n');
            }
        }
        for key in KEYS {
            assert!(shown.contains(key), "{key} is not documented");
        }
        assert_eq!(shown.len(), KEYS.len(), "a key is shown twice");
        let all = match Config::parse(&uncommented, "uncommented") {
            Ok(c) => c,
            Err(e) => panic!("{e:?}"),
        };
        let want = Config {
            hostname: all.hostname.clone(),
            local_domains: default_local_domains(&all.hostname),
            ..Config::default()
        };
        assert_eq!(all, want);
    }

    #[test]
    fn shipped_example_config() {
        // Only inside the tern crate, where etc/ sits next to Cargo.toml.
        if env!("CARGO_PKG_NAME") != "tern" {
            return;
        }
        let dir = env!("CARGO_MANIFEST_DIR");
        let text = std::fs::read_to_string(format!("{dir}/etc/tern.conf")).unwrap();
        check_example(&text);
        let dev = std::fs::read_to_string(format!("{dir}/etc/tern.dev.conf")).unwrap();
        assert!(Config::parse(&dev, "tern.dev.conf").is_ok());
    }
}
