//! The daemon's HTTP driver: runs [`Exchange`]s in the loop without
//! blocking. Like the outbound driver it only maps the machine to the
//! world: the URL's host to addresses (an IP literal, `/etc/hosts`, else
//! the [`DnsDriver`]'s resolver), a non-blocking connect per address in
//! turn, TLS through a [`Link`] (verifying, with the daemon's trust
//! anchors), bytes in and out, and the exchange's one deadline checked at
//! every tick ([`HttpDriver::sweep`]).
//!
//! Owns its exchanges, their sockets and lookups; borrows the reactor and
//! the DNS driver per call. Finished exchanges are handed out by
//! [`HttpDriver::take_done`] as `(HttpHandle, result)`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::dns::DnsDriver;
use super::link::{Link, Read};
use super::Timer;
use crate::dns::{DnsError, LookupId, MxHost};
use crate::http::{Exchange, HttpError, HttpRequest, HttpResponse, Url};
use crate::outbound::machine::Lookup;
use crate::reactor::{Reactor, SockId};
use crate::tls::TlsStream;

/// Bytes read from a server per read call.
const READ_CHUNK: usize = 16 * 1024;
/// Read/write rounds per readiness event; a busy exchange comes back next
/// turn (`mark_hot`).
const PUMP_ROUNDS: usize = 16;

/// Names one exchange of the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HttpHandle(u64);

struct Running {
    exchange: Exchange,
    url: Url,
    tls: Arc<rustls::ClientConfig>,
    addrs: VecDeque<SocketAddr>,
    sock: Option<SockId>,
    connecting: bool,
    link: Link,
    lookup: Option<LookupId>,
    last_error: Option<String>,
}

#[derive(Default)]
pub struct HttpDriver {
    seq: u64,
    running: HashMap<u64, Running>,
    socket_owner: HashMap<SockId, u64>,
    lookups: HashMap<LookupId, u64>,
    done: Vec<(HttpHandle, Result<HttpResponse, HttpError>)>,
}

impl HttpDriver {
    /// Starts `req`; its result comes from [`HttpDriver::take_done`].
    /// `tls`: the verifying client configuration (`None`: no trust
    /// anchors, the exchange fails at once).
    pub fn start(
        &mut self,
        reactor: &mut Reactor<Timer>,
        dns: &mut DnsDriver,
        tls: Option<Arc<rustls::ClientConfig>>,
        req: &HttpRequest,
        timeout: Duration,
        now: Instant,
    ) -> HttpHandle {
        self.seq += 1;
        let handle = HttpHandle(self.seq);
        let mut exchange = match Exchange::new(req, now, timeout) {
            Ok(x) => x,
            Err(e) => {
                self.done.push((handle, Err(e)));
                return handle;
            }
        };
        let Some(tls) = tls else {
            exchange.fail(HttpError::Tls(
                "no trusted CA certificates to verify the server (set tls_ca_file)".into(),
            ));
            self.done.push((
                handle,
                exchange.take_result().unwrap_or(Err(HttpError::Timeout)),
            ));
            return handle;
        };
        let url = req.url.clone();
        let port = url.port;
        let known = url
            .ip()
            .map(|ip| vec![ip])
            .or_else(|| dns.hosts_entry(&url.host));
        let mut r = Running {
            exchange,
            url,
            tls,
            addrs: VecDeque::new(),
            sock: None,
            connecting: false,
            link: Link::plain(),
            lookup: None,
            last_error: None,
        };
        match known {
            Some(ips) => {
                r.addrs = ips
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, port))
                    .collect()
            }
            None => {
                let id = dns.resolve(&Lookup::Host(r.url.host.clone()), now);
                r.lookup = Some(id);
                self.lookups.insert(id, handle.0);
            }
        }
        let waiting = r.lookup.is_some();
        self.running.insert(handle.0, r);
        if !waiting {
            self.connect_next(reactor, handle.0);
        }
        handle
    }

    pub fn owns(&self, sock: SockId) -> bool {
        self.socket_owner.contains_key(&sock)
    }

    pub fn owns_lookup(&self, id: LookupId) -> bool {
        self.lookups.contains_key(&id)
    }

    /// The answer to a host lookup of ours.
    pub fn handle_answer(
        &mut self,
        reactor: &mut Reactor<Timer>,
        id: LookupId,
        result: Result<Vec<MxHost>, DnsError>,
    ) {
        let Some(key) = self.lookups.remove(&id) else {
            return;
        };
        let Some(r) = self.running.get_mut(&key) else {
            return;
        };
        r.lookup = None;
        match result {
            Ok(hosts) => {
                let port = r.url.port;
                r.addrs = hosts
                    .iter()
                    .flat_map(|h| h.addrs.iter().map(move |ip| SocketAddr::new(*ip, port)))
                    .collect();
                if r.addrs.is_empty() {
                    r.last_error = Some(format!("no address for {}", r.url.host));
                }
            }
            Err(e) => r.last_error = Some(format!("DNS lookup for {} failed: {e}", r.url.host)),
        }
        self.connect_next(reactor, key);
    }

    /// Readiness on one of our sockets.
    pub fn handle_ready(&mut self, reactor: &mut Reactor<Timer>, sock: SockId, now: Instant) {
        let Some(&key) = self.socket_owner.get(&sock) else {
            return;
        };
        let Some(r) = self.running.get_mut(&key) else {
            return;
        };
        if r.connecting {
            match reactor.connect_result(sock) {
                Ok(None) => return,
                Ok(Some(_)) => {
                    r.connecting = false;
                    match TlsStream::client(r.tls.clone(), &r.url.host) {
                        Ok(t) => r.link = Link::with_tls(t),
                        Err(e) => {
                            r.exchange.fail(HttpError::Tls(e.0));
                            self.finish(reactor, key);
                            return;
                        }
                    }
                }
                Err(e) => {
                    r.last_error = Some(crate::delivery::outcome::io_words(&e));
                    self.drop_socket(reactor, key);
                    self.connect_next(reactor, key);
                    return;
                }
            }
        }
        self.pump(reactor, key, now);
    }

    /// Deadlines (called at every tick, and at shutdown with a far `now`
    /// to end everything).
    pub fn sweep(&mut self, reactor: &mut Reactor<Timer>, now: Instant) {
        let due: Vec<u64> = self
            .running
            .iter()
            .filter(|(_, r)| r.exchange.poll_timeout().is_some_and(|t| t <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            if let Some(r) = self.running.get_mut(&key) {
                r.exchange.handle_timeout(now);
            }
            self.finish(reactor, key);
        }
    }

    /// Finished exchanges since the last call.
    pub fn take_done(&mut self) -> Vec<(HttpHandle, Result<HttpResponse, HttpError>)> {
        std::mem::take(&mut self.done)
    }

    /// Connects to the next address, or fails with the last error.
    fn connect_next(&mut self, reactor: &mut Reactor<Timer>, key: u64) {
        loop {
            let Some(r) = self.running.get_mut(&key) else {
                return;
            };
            let Some(addr) = r.addrs.pop_front() else {
                let why = r
                    .last_error
                    .take()
                    .unwrap_or_else(|| format!("no address for {}", r.url.host));
                r.exchange.fail(HttpError::Connect(why));
                self.finish(reactor, key);
                return;
            };
            match reactor.connect(addr) {
                Ok(sock) => {
                    r.sock = Some(sock);
                    r.connecting = true;
                    r.link = Link::plain();
                    self.socket_owner.insert(sock, key);
                    return;
                }
                Err(e) => {
                    r.last_error = Some(format!(
                        "{addr}: {}",
                        crate::delivery::outcome::io_words(&e)
                    ));
                }
            }
        }
    }

    /// Moves request bytes out and response bytes in until nothing moves.
    fn pump(&mut self, reactor: &mut Reactor<Timer>, key: u64, now: Instant) {
        for _ in 0..PUMP_ROUNDS {
            let Some(r) = self.running.get_mut(&key) else {
                return;
            };
            let Some(sock) = r.sock else {
                return;
            };
            let mut progressed = false;
            while !r.exchange.poll_transmit().is_empty() {
                match r.link.write(reactor, sock, r.exchange.poll_transmit()) {
                    Ok(0) => break,
                    Ok(n) => {
                        r.exchange.consume_transmit(n);
                        progressed = true;
                    }
                    Err(e) => {
                        r.exchange
                            .fail(HttpError::Connect(crate::delivery::outcome::io_words(&e)));
                        break;
                    }
                }
            }
            let _ = r.link.flush(reactor, sock);
            if !r.exchange.is_done() {
                let mut input = Vec::new();
                match r.link.read(reactor, sock, &mut input, READ_CHUNK) {
                    Read::Data => {
                        r.exchange.handle_input(&input, now);
                        progressed = true;
                    }
                    Read::Pending => {}
                    Read::Closed => {
                        match r.link.tls_error() {
                            Some(e) => r.exchange.fail(HttpError::Tls(e)),
                            None if r.link.is_handshaking() => r.exchange.fail(HttpError::Tls(
                                "connection closed during the TLS handshake".into(),
                            )),
                            None => r.exchange.handle_eof(now),
                        }
                        progressed = true;
                    }
                }
            }
            if r.exchange.is_done() {
                self.finish(reactor, key);
                return;
            }
            if !progressed {
                return;
            }
        }
        if let Some(s) = self.running.get(&key).and_then(|r| r.sock) {
            reactor.mark_hot(s);
        }
    }

    fn drop_socket(&mut self, reactor: &mut Reactor<Timer>, key: u64) {
        if let Some(r) = self.running.get_mut(&key) {
            if let Some(s) = r.sock.take() {
                reactor.close(s);
                self.socket_owner.remove(&s);
            }
            r.connecting = false;
        }
    }

    /// The exchange is over (or must end): socket closed, result out.
    fn finish(&mut self, reactor: &mut Reactor<Timer>, key: u64) {
        self.drop_socket(reactor, key);
        let Some(mut r) = self.running.remove(&key) else {
            return;
        };
        if let Some(l) = r.lookup {
            self.lookups.remove(&l);
        }
        if !r.exchange.is_done() {
            r.exchange.fail(HttpError::Closed);
        }
        let result = r.exchange.take_result().unwrap_or(Err(HttpError::Closed));
        self.done.push((HttpHandle(key), result));
    }
}
