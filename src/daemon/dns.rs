//! The DNS driver: the sans-IO [`Resolver`] in the loop. It owns the
//! resolver, the sockets of its exchanges (one UDP socket or TCP
//! connection per query, through the reactor), the resolver's one timer
//! entry, and the hosts table consulted for smarthost names before DNS.
//!
//! Callers submit lookups ([`DnsDriver::resolve`]) and get completed ones
//! back as values ([`Answer`]) from [`DnsDriver::flush`], which every
//! entry point ends with; the driver never reaches into its callers (the
//! outbound driver maps lookup IDs to its deliveries).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use super::Timer;
use crate::config::Config;
use crate::dns::{DnsError, LookupId, MxHost, QueryHandle, Resolver, ResolverConfig, Transport};
use crate::outbound::machine::Lookup;
use crate::reactor::{Reactor, SockId};

/// Largest DNS response accepted over TCP.
const MAX_DNS_TCP: usize = 65535;

pub const HOSTS_FILE: &str = "/etc/hosts";
/// Names read from the hosts file at most (it is a fallback table, not a zone).
pub const MAX_HOSTS_ENTRIES: usize = 1024;

/// A finished lookup: its ID (from [`DnsDriver::resolve`]) and result.
pub type Answer = (LookupId, Result<Vec<MxHost>, DnsError>);

/// A DNS exchange in progress on a socket of its own.
struct DnsSock {
    handle: QueryHandle,
    server: SocketAddr,
    transport: Transport,
    pending_write: Vec<u8>,
    read_buf: Vec<u8>,
}

pub struct DnsDriver {
    resolver: Resolver,
    socks: HashMap<SockId, DnsSock>,
    by_handle: HashMap<QueryHandle, SockId>,
    /// The deadline of the resolver's entry in the timer heap, if armed.
    timer: Option<Instant>,
    /// /etc/hosts, consulted for smarthost names before DNS (as the
    /// system resolver would).
    hosts: HashMap<String, Vec<IpAddr>>,
}

impl DnsDriver {
    pub fn new(cfg: &Config) -> DnsDriver {
        DnsDriver {
            resolver: Resolver::new(
                resolver_config(cfg),
                Box::new(|buf: &mut [u8]| crate::random::fill(buf).map_err(|_| ())),
            ),
            socks: HashMap::new(),
            by_handle: HashMap::new(),
            timer: None,
            hosts: load_hosts(std::path::Path::new(HOSTS_FILE)),
        }
    }

    /// On reload: new servers and timeout, and the hosts file read again.
    pub fn reconfigure(&mut self, cfg: &Config) {
        self.hosts = load_hosts(std::path::Path::new(HOSTS_FILE));
        self.resolver.reconfigure(resolver_config(cfg));
    }

    /// The hosts file's addresses for `name` (any case).
    pub fn hosts_entry(&self, name: &str) -> Option<Vec<IpAddr>> {
        self.hosts.get(&name.to_ascii_lowercase()).cloned()
    }

    /// Starts a lookup; its answer comes out of a later [`DnsDriver::flush`].
    pub fn resolve(&mut self, lookup: &Lookup, now: Instant) -> LookupId {
        match lookup {
            Lookup::Mx(domain) => self.resolver.resolve_mx(domain, now),
            Lookup::Host(name) => self.resolver.resolve_host(name, now),
        }
    }

    /// Whether `sock` is one of the driver's.
    pub fn owns(&self, sock: SockId) -> bool {
        self.socks.contains_key(&sock)
    }

    /// Sends what the resolver wants sent, closes what it is done with and
    /// returns the finished lookups. Arm the timer afterwards
    /// ([`DnsDriver::arm_timer`]): handling the answers may start lookups.
    pub fn flush(&mut self, reactor: &mut Reactor<Timer>, now: Instant) -> Vec<Answer> {
        while let Some(tx) = self.resolver.poll_transmit() {
            let local: SocketAddr = if tx.server.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let sock = match tx.transport {
                Transport::Udp => reactor.udp_bind(local).and_then(|s| {
                    reactor
                        .udp_send(s, tx.server, &tx.payload)
                        .map(|_| s)
                        .inspect_err(|_| reactor.close(s))
                }),
                Transport::Tcp => reactor.connect(tx.server),
            };
            match sock {
                Ok(s) => {
                    let pending_write = if matches!(tx.transport, Transport::Tcp) {
                        tx.payload
                    } else {
                        Vec::new()
                    };
                    self.socks.insert(
                        s,
                        DnsSock {
                            handle: tx.handle,
                            server: tx.server,
                            transport: tx.transport,
                            pending_write,
                            read_buf: Vec::new(),
                        },
                    );
                    self.by_handle.insert(tx.handle, s);
                }
                Err(e) => {
                    log::debug!("dns: cannot send to {}: {e}", tx.server);
                    self.resolver.handle_transport_error(tx.handle, now);
                }
            }
        }
        while let Some(handle) = self.resolver.poll_closed() {
            if let Some(s) = self.by_handle.remove(&handle) {
                self.socks.remove(&s);
                reactor.close(s);
            }
        }
        let mut answers = Vec::new();
        while let Some(r) = self.resolver.poll_result() {
            answers.push(r);
        }
        answers
    }

    /// Puts the resolver's next deadline in the timer heap (one entry at a
    /// time: only an earlier deadline adds one).
    pub fn arm_timer(&mut self, reactor: &mut Reactor<Timer>) {
        if let Some(t) = self.resolver.poll_timeout() {
            if self.timer.is_none_or(|armed| t < armed) {
                self.timer = Some(t);
                reactor.add_timer(t, Timer::Dns);
            }
        }
    }

    /// `Timer::Dns` fired; flush afterwards.
    pub fn handle_timer(&mut self, now: Instant) {
        self.timer = None;
        self.resolver.handle_timeout(now);
    }

    /// Readiness on one of the driver's sockets; flush afterwards.
    pub fn handle_ready(&mut self, reactor: &mut Reactor<Timer>, sock: SockId, now: Instant) {
        let Some(ds) = self.socks.get_mut(&sock) else {
            return;
        };
        let handle = ds.handle;
        match ds.transport {
            Transport::Udp => {
                let mut buf = [0u8; 1500];
                loop {
                    match reactor.udp_recv(sock, &mut buf) {
                        Ok((n, from)) => {
                            let msg = buf.get(..n).unwrap_or_default();
                            self.resolver.handle_response(handle, from, msg, now)
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            self.resolver.handle_transport_error(handle, now);
                            break;
                        }
                    }
                }
            }
            Transport::Tcp => {
                let server = ds.server;
                let mut failed = false;
                if !ds.pending_write.is_empty() {
                    match reactor.connect_result(sock) {
                        Ok(true) => match reactor.write(sock, &ds.pending_write) {
                            Ok(n) => {
                                ds.pending_write.drain(..n.min(ds.pending_write.len()));
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(_) => failed = true,
                        },
                        Ok(false) => {}
                        Err(_) => failed = true,
                    }
                }
                let mut buf = [0u8; 4096];
                while !failed {
                    match reactor.read(sock, &mut buf) {
                        Ok(0) => {
                            failed = true;
                        }
                        Ok(n) => {
                            ds.read_buf
                                .extend_from_slice(buf.get(..n).unwrap_or_default());
                            if ds.read_buf.len() > MAX_DNS_TCP + 2 {
                                failed = true;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(_) => failed = true,
                    }
                    // A message is complete once its 2-octet length prefix
                    // and that many octets are in.
                    if let [hi, lo, rest @ ..] = ds.read_buf.as_slice() {
                        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
                        if let Some(msg) = rest.get(..len) {
                            let msg = msg.to_vec();
                            self.resolver.handle_response(handle, server, &msg, now);
                            break;
                        }
                    }
                }
                if failed {
                    self.resolver.handle_transport_error(handle, now);
                }
            }
        }
    }
}

/// The resolver's servers: `dns_servers`, else /etc/resolv.conf.
pub fn resolver_config(cfg: &Config) -> ResolverConfig {
    let mut rc = crate::dns::load_resolv_conf(std::path::Path::new("/etc/resolv.conf"));
    if !cfg.dns_servers.is_empty() {
        rc.servers = cfg.dns_servers.clone();
    }
    if let Some(t) = cfg.dns_timeout {
        rc.timeout = t;
    }
    rc
}

/// The longest hosts file read.
pub const MAX_HOSTS_FILE_BYTES: u64 = 1024 * 1024;

/// `addr name alias...` lines; names lower-cased.
pub fn load_hosts(path: &std::path::Path) -> HashMap<String, Vec<IpAddr>> {
    let mut map: HashMap<String, Vec<IpAddr>> = HashMap::new();
    let Ok(bytes) = std::fs::File::open(path)
        .and_then(|f| crate::system::read_bounded(f, MAX_HOSTS_FILE_BYTES))
    else {
        return map;
    };
    // Lossy: one odd byte in a comment must not hide the whole table.
    let text = String::from_utf8_lossy(&bytes);
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let Some(addr) = words.next().and_then(|a| a.parse().ok()) else {
            continue;
        };
        for name in words {
            if map.len() >= MAX_HOSTS_ENTRIES {
                return map;
            }
            let e = map.entry(name.to_ascii_lowercase()).or_default();
            if !e.contains(&addr) {
                e.push(addr);
            }
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_file_with_a_latin1_comment_still_loads() {
        let dir = crate::test_dir::TempDir::new("hosts");
        let path = dir.0.join("hosts");
        std::fs::write(
            &path,
            b"# Ren\xe9's router\n127.0.0.1 localhost\n192.0.2.7 Smtp.Example  relay # alias\n",
        )
        .expect("write");
        let map = load_hosts(&path);
        let addr: IpAddr = "192.0.2.7".parse().expect("ip");
        assert_eq!(map.get("smtp.example"), Some(&vec![addr]));
        assert_eq!(map.get("relay"), Some(&vec![addr]));
        assert!(map.contains_key("localhost"));
    }
}
