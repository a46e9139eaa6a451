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
//! listed twice across the three listener keys; with `smarthost_auth =
//! xoauth2|oauthbearer` exactly one token source is set (the token command,
//! or `smarthost_oauth_token_url` (https), `_client_id` and
//! `_refresh_token_file` together), and neither without it.
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

mod lmtp;
pub use lmtp::{LmtpTarget, LMTP_PORT};

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
    "helo_name",
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
    "lmtp_target",
    "aliases",
    "qualify_domain",
    "sender_address",
    "sender_rewrite",
    "relay_networks",
    "routes",
    "dkim_keys",
    "smarthost",
    "smarthost_tls",
    "smarthost_user",
    "smarthost_password_file",
    "smarthost_auth",
    "smarthost_oauth_token_command",
    "smarthost_oauth_token_url",
    "smarthost_oauth_client_id",
    "smarthost_oauth_client_secret_file",
    "smarthost_oauth_refresh_token_file",
    "hold_outbound",
    "outbound_connection_reuse",
    "outbound_tls",
    "mx_port",
    "dns_servers",
    "dns_timeout",
    "retry_schedule",
    "max_queue_time",
    "delay_warning_time",
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
    /// Handed to the LMTP server at `lmtp_target` (RFC 2033).
    Lmtp,
}

/// How the smarthost connection is secured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
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
    /// Name sent in outbound EHLO/HELO; `None`: `hostname` (see
    /// [`Config::helo_name`]).
    pub helo_name: Option<String>,
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
    /// Where `local_delivery = lmtp` hands local mail.
    pub lmtp_target: Option<LmtpTarget>,
    /// Empty or missing file: no aliases.
    pub aliases: PathBuf,
    /// Domain for unqualified addresses of locally submitted mail
    /// (lower-cased; default: `hostname`).
    pub qualify_domain: String,
    /// Locally originated senders leave the host as this address.
    pub sender_address: Option<crate::smtp::address::Address>,
    /// `PATTERN ADDRESS` file, before `sender_address` (see `rewrite`).
    pub sender_rewrite: Option<PathBuf>,
    // Relaying and outbound delivery.
    pub relay_networks: Vec<Cidr>,
    /// `MATCH TARGET` file: next hop per domain and sender (see `routes`).
    pub routes: Option<PathBuf>,
    /// `DOMAIN SELECTOR KEYFILE` file: DKIM keys (see `dkim`).
    pub dkim_keys: Option<PathBuf>,
    pub smarthost: Vec<HostPort>,
    pub smarthost_tls: SmarthostTls,
    pub smarthost_user: Option<String>,
    pub smarthost_password_file: Option<PathBuf>,
    /// `None`: PLAIN, else LOGIN, as offered.
    pub smarthost_auth: Option<crate::routes::AuthMechanism>,
    /// XOAUTH2/OAUTHBEARER: argv (split on spaces, no shell) of the
    /// command whose first output line is the access token.
    pub smarthost_oauth_token_command: Option<String>,
    /// XOAUTH2/OAUTHBEARER: the built-in refresh-token grant (all three
    /// set, or none; `Relay::smarthost` turns them into a `TokenSpec`).
    pub smarthost_oauth_token_url: Option<crate::http::Url>,
    pub smarthost_oauth_client_id: Option<String>,
    /// Optional: public clients have no secret.
    pub smarthost_oauth_client_secret_file: Option<PathBuf>,
    pub smarthost_oauth_refresh_token_file: Option<PathBuf>,
    pub hold_outbound: bool,
    /// A finished outbound session waits a moment for the next message to
    /// the same destination (`outbound::machine::OUTBOUND_IDLE_KEEP`).
    pub outbound_connection_reuse: bool,
    pub outbound_tls: OutboundTls,
    pub mx_port: u16,
    /// Empty: use /etc/resolv.conf (decided by the DNS module).
    pub dns_servers: Vec<SocketAddr>,
    /// `None`: resolv.conf's `options timeout`.
    pub dns_timeout: Option<Duration>,
    pub retry_schedule: Vec<Duration>,
    pub max_queue_time: Duration,
    /// Send one DSN delay warning (RFC 3464 `Action: delayed`) once a
    /// message has been queued this long; `None` (`0`): never.
    pub delay_warning_time: Option<Duration>,
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
        let qualify_domain = hostname.to_ascii_lowercase();
        Config {
            local_domains: default_local_domains(&hostname),
            hostname,
            helo_name: None,
            listen: vec![SocketAddr::from((Ipv4Addr::LOCALHOST, SMTP_PORT))],
            submission_listen: Vec::new(),
            smtps_listen: Vec::new(),
            spool_dir: PathBuf::from("/var/spool/tern"),
            spool_sync: true,
            min_free_space: 1024 * 1024,
            local_recipients: LocalRecipients::Passwd,
            mail_dir: PathBuf::from("/var/mail"),
            local_delivery: LocalDelivery::Maildir,
            lmtp_target: None,
            aliases: PathBuf::from("/etc/aliases"),
            qualify_domain,
            sender_address: None,
            sender_rewrite: None,
            relay_networks: vec![
                Cidr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
                Cidr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
            ],
            routes: None,
            dkim_keys: None,
            smarthost: Vec::new(),
            smarthost_tls: SmarthostTls::StartTls,
            smarthost_user: None,
            smarthost_password_file: None,
            smarthost_auth: None,
            smarthost_oauth_token_command: None,
            smarthost_oauth_token_url: None,
            smarthost_oauth_client_id: None,
            smarthost_oauth_client_secret_file: None,
            smarthost_oauth_refresh_token_file: None,
            hold_outbound: false,
            outbound_connection_reuse: true,
            outbound_tls: OutboundTls::Opportunistic,
            mx_port: SMTP_PORT,
            dns_servers: Vec::new(),
            dns_timeout: None,
            retry_schedule: [5 * 60, 10 * 60, 30 * 60, 3600, 2 * 3600, 4 * 3600]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            max_queue_time: Duration::from_secs(5 * 86400),
            delay_warning_time: None,
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

/// `localhost` or `localhost.localdomain`, any case, with or without the
/// final dot: a name no other host can use to reach this one.
pub fn is_localhost(name: &str) -> bool {
    let name = name.trim_end_matches('.');
    name.eq_ignore_ascii_case("localhost") || name.eq_ignore_ascii_case("localhost.localdomain")
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
    /// The outbound EHLO name: `helo_name`, else `hostname`.
    pub fn helo_name(&self) -> &str {
        self.helo_name.as_deref().unwrap_or(&self.hostname)
    }

    /// Reads and parses `path`; an unreadable or oversized file is one error.
    pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
        let file = path.display().to_string();
        let one = |message: String| {
            vec![ConfigError {
                file: file.clone(),
                line: 0,
                message,
            }]
        };
        let bytes = match std::fs::File::open(path)
            .and_then(|f| crate::system::read_bounded(f, MAX_CONFIG_BYTES))
        {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(one(e.to_string()))
            }
            Err(e) => return Err(one(format!("cannot read: {e}"))),
        };
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
        if !seen.iter().any(|(k, _)| *k == "qualify_domain") {
            cfg.qualify_domain = cfg.hostname.to_ascii_lowercase();
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
        let oauth = self.smarthost_auth.is_some_and(|m| m.is_oauth());
        problems.extend(crate::oauth::smarthost_source_problems(self, oauth));
        if oauth && self.smarthost_user.is_none() {
            problems.push((
                "smarthost_auth",
                "smarthost_auth = xoauth2|oauthbearer needs smarthost_user".into(),
            ));
        }
        match (&self.smarthost_user, &self.smarthost_password_file) {
            (Some(_), None) if oauth => {}
            (Some(_), Some(_)) if oauth => problems.push((
                "smarthost_password_file",
                "smarthost_password_file is not used with smarthost_auth = xoauth2|oauthbearer"
                    .into(),
            )),
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
        match (self.local_delivery, &self.lmtp_target) {
            (LocalDelivery::Lmtp, None) => problems.push((
                "local_delivery",
                "local_delivery = lmtp needs lmtp_target (unix:/path or host:port)".into(),
            )),
            (LocalDelivery::Maildir | LocalDelivery::Mbox, Some(_)) => problems.push((
                "lmtp_target",
                "lmtp_target is only used with local_delivery = lmtp".into(),
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
            "helo_name" => {
                self.helo_name = match v {
                    "" => None,
                    v if is_localhost(v) => {
                        return Err(format!(
                            "helo_name {v:?}: providers refuse EHLO localhost; set a name \
                             the world can resolve, or leave helo_name unset"
                        ))
                    }
                    v if is_valid_domain(v) => Some(v.to_string()),
                    v => {
                        return Err(format!(
                        "helo_name {v:?} is not a valid domain name (letters, digits, '-' and '.')"
                    ))
                    }
                }
            }
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
                        // U-labels as A-labels, like addresses.
                        crate::smtp::address::domain_name(d)
                            .ok_or_else(|| format!("bad domain {d:?}"))
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
                        ("lmtp", LocalDelivery::Lmtp),
                    ],
                )?
            }
            "lmtp_target" => self.lmtp_target = LmtpTarget::parse(v)?,
            "aliases" => self.aliases = PathBuf::from(v),
            "qualify_domain" => {
                let d = v.strip_suffix('.').unwrap_or(v);
                if !is_valid_domain(d) {
                    return Err(format!("bad domain {d:?}"));
                }
                self.qualify_domain = d.to_ascii_lowercase();
            }
            "sender_address" => {
                self.sender_address = match v {
                    "" => None,
                    v => Some(
                        crate::smtp::address::Address::parse_mailbox(v)
                            .map_err(|_| format!("bad address {v:?} (user@domain)"))?,
                    ),
                }
            }
            "sender_rewrite" => self.sender_rewrite = optional_path(v),
            "relay_networks" => {
                self.relay_networks = list(v).map(Cidr::parse).collect::<Result<_, _>>()?
            }
            "routes" => self.routes = optional_path(v),
            "dkim_keys" => self.dkim_keys = optional_path(v),
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
            "smarthost_auth" => {
                use crate::routes::AuthMechanism as M;
                self.smarthost_auth = if v.is_empty() {
                    None
                } else {
                    Some(keyword(
                        v,
                        &[
                            ("plain", M::Plain),
                            ("login", M::Login),
                            ("xoauth2", M::XOAuth2),
                            ("oauthbearer", M::OAuthBearer),
                        ],
                    )?)
                }
            }
            "smarthost_oauth_token_command" => {
                self.smarthost_oauth_token_command = optional_string(v)
            }
            "smarthost_oauth_token_url" => {
                self.smarthost_oauth_token_url = if v.is_empty() {
                    None
                } else {
                    Some(crate::oauth::parse_token_url(v)?)
                }
            }
            "smarthost_oauth_client_id" => self.smarthost_oauth_client_id = optional_string(v),
            "smarthost_oauth_client_secret_file" => {
                self.smarthost_oauth_client_secret_file = optional_path(v)
            }
            "smarthost_oauth_refresh_token_file" => {
                self.smarthost_oauth_refresh_token_file = optional_path(v)
            }
            "hold_outbound" => self.hold_outbound = boolean(v)?,
            "outbound_connection_reuse" => self.outbound_connection_reuse = boolean(v)?,
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
            "delay_warning_time" => {
                self.delay_warning_time = Some(parse_duration(v)?).filter(|d| !d.is_zero())
            }
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
            &mut self.sender_rewrite,
            &mut self.routes,
            &mut self.dkim_keys,
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
mod tests;
