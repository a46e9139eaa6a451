//! A blocking driver for one [`Delivery`]: the daemon's outbound machine
//! (route, TLS policy, AUTH, deadlines, outcomes) moved by std sockets
//! instead of the reactor. A command may block; the daemon never runs
//! this. DNS goes through the same sans-IO [`Resolver`] the daemon uses,
//! on plain UDP/TCP sockets, never through the system resolver.
//!
//! Everything the machine sends and receives passes the [`Transcript`],
//! which prints it (masked, escaped) and keeps the evidence for the
//! diagnosis.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::transcript::{Seen, Transcript};
use crate::delivery::outcome::{self, Outcome};
use crate::dns::{DnsError, MxHost, QueryHandle, Resolver, Transport};
use crate::outbound::machine::{Action, Delivery, Lookup};
use crate::smtp::client::SessionFacts;
use crate::tls::TlsStream;

/// Bytes read from the server per call.
const READ_CHUNK: usize = 16 * 1024;
/// Body bytes handed to the machine per step.
const BODY_STEP: usize = 16 * 1024;
/// How often the DNS sockets are looked at while waiting for answers.
const DNS_POLL: Duration = Duration::from_millis(5);
/// Largest DNS message over TCP (with its length prefix).
const MAX_DNS_TCP: usize = 65535 + 2;
/// A wait with no deadline from the machine (it always has one while a
/// connection is open; this only bounds a bug).
const FALLBACK_WAIT: Duration = Duration::from_secs(60);
/// Most passes through the loop (each moves something or waits).
const MAX_STEPS: usize = 100_000;

struct Conn {
    stream: TcpStream,
    tls: Option<TlsStream>,
    tls_reported: bool,
}

pub struct Driver<W: Write> {
    machine: Delivery,
    resolver: Resolver,
    tls_verify: Option<Arc<rustls::ClientConfig>>,
    tls_any: Arc<rustls::ClientConfig>,
    conn: Option<Conn>,
    body: Vec<u8>,
    body_pos: usize,
    body_open: bool,
    write_timeout: Duration,
    pub transcript: Transcript<W>,
    outcome: Option<(Outcome, Seen, SessionFacts)>,
}

impl<W: Write> Driver<W> {
    pub fn new(
        machine: Delivery,
        resolver: Resolver,
        tls_verify: Option<Arc<rustls::ClientConfig>>,
        body: Vec<u8>,
        write_timeout: Duration,
        transcript: Transcript<W>,
    ) -> Driver<W> {
        Driver {
            machine,
            resolver,
            tls_verify,
            tls_any: crate::tls::client_config_no_verify(),
            conn: None,
            body,
            body_pos: 0,
            body_open: false,
            write_timeout,
            transcript,
            outcome: None,
        }
    }

    /// Runs the delivery to its end: the recipient's outcome, what the
    /// connection that decided it showed, and what its SMTP session
    /// showed (the client machine's typed facts).
    pub fn run(mut self) -> (Outcome, Seen, SessionFacts, Transcript<W>) {
        for _ in 0..MAX_STEPS {
            if !self.step() {
                break;
            }
        }
        let (o, seen, facts) = self.outcome.take().unwrap_or_else(|| {
            (
                Outcome::Deferred(outcome::no_destination_reached()),
                self.transcript.seen.clone(),
                self.machine.session_facts(),
            )
        });
        (o, seen, facts, self.transcript)
    }

    /// One pass: actions, body, writes, then one read (or wait). False
    /// when the delivery is over.
    fn step(&mut self) -> bool {
        while let Some(action) = self.machine.poll_action() {
            self.apply(action);
        }
        if self.machine.is_done() {
            return false;
        }
        let now = Instant::now();
        if self.body_open && self.machine.wants_body() {
            let end = (self.body_pos + BODY_STEP).min(self.body.len());
            let chunk = self.body.get(self.body_pos..end).unwrap_or_default();
            let took = self.machine.send_body(chunk, now);
            self.body_pos += took;
            if self.body_pos >= self.body.len() {
                self.body_open = false;
                self.machine.finish_body(now);
            }
            if took > 0 || !self.body_open {
                return true;
            }
        }
        if self.write() {
            return true;
        }
        if self.machine.has_actions() {
            return true;
        }
        self.read_or_wait();
        true
    }

    fn apply(&mut self, action: Action) {
        let now = Instant::now();
        match action {
            Action::Resolve(lookup) => {
                let what = match &lookup {
                    Lookup::Mx(d) => format!("looking up the MX hosts of {d}"),
                    Lookup::Host(h) => format!("looking up {h}"),
                };
                self.transcript.event(&what);
                let result = resolve(&mut self.resolver, &lookup);
                match &result {
                    Ok(hosts) => {
                        for h in hosts {
                            let addrs: Vec<String> =
                                h.addrs.iter().map(IpAddr::to_string).collect();
                            self.transcript.event(&format!(
                                "  {} {} [{}]",
                                h.preference,
                                h.name,
                                addrs.join(", ")
                            ));
                        }
                    }
                    Err(e) => self.transcript.event(&format!("  DNS: {e}")),
                }
                self.machine.handle_lookup(result, Instant::now());
            }
            Action::Connect(addr) => {
                let relay = self.machine.relay().unwrap_or_else(|| addr.to_string());
                self.transcript.event(&format!("connecting to {relay}"));
                let deadline = self.machine.poll_timeout();
                let wait = deadline.map_or(FALLBACK_WAIT, |d| d.saturating_duration_since(now));
                match TcpStream::connect_timeout(&addr, wait.max(Duration::from_millis(1))) {
                    Ok(stream) => {
                        let local = stream.local_addr();
                        let _ = stream.set_nodelay(true);
                        let _ = stream.set_write_timeout(Some(self.write_timeout));
                        self.transcript.connected(addr.port());
                        self.transcript.event(&format!("connected to {relay}"));
                        self.conn = Some(Conn {
                            stream,
                            tls: None,
                            tls_reported: false,
                        });
                        let local = local.map_err(|e| outcome::io_words(&e));
                        self.machine.handle_connected(local, Instant::now());
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                        self.transcript
                            .event(&format!("cannot connect to {relay}: timed out"));
                        let at = deadline.unwrap_or_else(Instant::now).max(Instant::now());
                        self.machine.handle_timeout(at);
                    }
                    Err(e) => {
                        let why = outcome::io_words(&e);
                        self.transcript
                            .event(&format!("cannot connect to {relay}: {why}"));
                        self.machine.handle_connected(Err(why), Instant::now());
                    }
                }
            }
            // `tern test` tries remote routes only (no LMTP job).
            Action::ConnectUnix(path) => {
                let why = format!("{}: not tried by tern test", path.display());
                self.machine.handle_connected_unix(Err(why), now);
            }
            Action::StartTls {
                server_name,
                verify,
            } => {
                let cfg = if verify {
                    self.tls_verify.clone()
                } else {
                    Some(self.tls_any.clone())
                };
                let stream = match cfg {
                    Some(cfg) => TlsStream::client(cfg, &server_name).map_err(|e| e.0),
                    None => Err(outcome::tls_no_trust_anchors().text),
                };
                match (stream, self.conn.as_mut()) {
                    (Ok(t), Some(c)) => {
                        let how = if verify {
                            "verifying the certificate"
                        } else {
                            "not verifying the certificate (opportunistic)"
                        };
                        self.transcript
                            .event(&format!("TLS handshake with {server_name}, {how}"));
                        c.tls = Some(t);
                        c.tls_reported = false;
                    }
                    (Err(why), _) => {
                        self.transcript.event(&format!("TLS: {why}"));
                        self.machine.handle_tls_error(&why, false, now);
                    }
                    (Ok(_), None) => self.machine.handle_closed(now),
                }
            }
            Action::OpenBody(_) => {
                self.body_open = true;
                self.body_pos = 0;
            }
            Action::Close => {
                if let Some(mut c) = self.conn.take() {
                    if let Some(t) = c.tls.as_mut() {
                        t.send_close_notify();
                        let out = t.ciphertext().to_vec();
                        let _ = c.stream.write_all(&out);
                    }
                    let _ = c.stream.shutdown(std::net::Shutdown::Both);
                    self.transcript.event("connection closed");
                }
            }
            Action::Report { outcomes, .. } => {
                if let Some((_, o)) = outcomes.into_iter().next() {
                    let facts = self.machine.session_facts();
                    self.outcome = Some((o, self.transcript.seen.clone(), facts));
                }
                // No connection cache here: QUIT at once.
                self.machine.shutdown(now);
            }
        }
    }

    /// Writes what the machine has for the server; true when anything
    /// moved.
    fn write(&mut self) -> bool {
        let Some(c) = self.conn.as_mut() else {
            return false;
        };
        if self.machine.is_connecting() {
            return false;
        }
        let data = self.machine.poll_transmit().to_vec();
        let mut moved = false;
        let mut failed = false;
        if !data.is_empty() {
            let taken = match c.tls.as_mut() {
                Some(t) => Ok(t.write_plaintext(&data)),
                None => c.stream.write_all(&data).map(|()| data.len()),
            };
            match taken {
                Ok(n) => {
                    self.transcript.sent(data.get(..n).unwrap_or_default());
                    self.machine.consume_transmit(n, Instant::now());
                    moved = n > 0;
                }
                Err(_) => failed = true,
            }
        }
        if let Some(c) = self.conn.as_mut() {
            if let Some(t) = c.tls.as_mut() {
                let out = t.ciphertext().to_vec();
                if !out.is_empty() {
                    match c.stream.write_all(&out) {
                        Ok(()) => {
                            t.consume_ciphertext(out.len());
                            moved = true;
                        }
                        Err(_) => failed = true,
                    }
                }
            }
        }
        if failed {
            self.transcript.event("the connection failed while writing");
            self.machine.handle_closed(Instant::now());
            return true;
        }
        moved
    }

    /// Reads once from the server (until the machine's next deadline), or
    /// waits for that deadline when there is no connection.
    fn read_or_wait(&mut self) {
        let now = Instant::now();
        let deadline = self.machine.poll_timeout();
        let Some(c) = self.conn.as_mut() else {
            match deadline {
                Some(d) => {
                    std::thread::sleep(d.saturating_duration_since(now));
                    self.machine.handle_timeout(Instant::now());
                }
                // Nothing to wait for and nothing to do: a stuck machine.
                None => self.machine.handle_closed(now),
            }
            return;
        };
        let wait = deadline.map_or(FALLBACK_WAIT, |d| d.saturating_duration_since(now));
        if wait.is_zero() {
            self.machine.handle_timeout(now);
            return;
        }
        let _ = c.stream.set_read_timeout(Some(wait));
        let mut buf = vec![0u8; READ_CHUNK];
        match c.stream.read(&mut buf) {
            Ok(0) => {
                self.transcript.event("the server closed the connection");
                self.machine.handle_closed(Instant::now());
            }
            Ok(n) => self.input(buf.get(..n).unwrap_or_default()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                let now = Instant::now();
                if !self.transcript.seen.heard {
                    self.transcript.event("no word from the server");
                }
                if deadline.is_some() {
                    self.machine.handle_timeout(now);
                } else {
                    // No deadline yet nothing to do: give up the session.
                    self.machine.handle_closed(now);
                }
            }
            Err(e) => {
                self.transcript
                    .event(&format!("connection failed: {}", outcome::io_words(&e)));
                self.machine.handle_closed(Instant::now());
            }
        }
    }

    /// Bytes from the socket: through TLS when it is on, to the machine.
    fn input(&mut self, bytes: &[u8]) {
        let mut off = 0;
        loop {
            let Some(c) = self.conn.as_mut() else {
                return;
            };
            let rest = bytes.get(off..).unwrap_or_default();
            let Some(t) = c.tls.as_mut() else {
                self.transcript.received(rest);
                self.machine.handle_input(rest, Instant::now());
                return;
            };
            let used = match t.read_tls(rest) {
                Ok(n) => n,
                Err(e) => {
                    let plaintext = t.peer_spoke_plaintext();
                    self.transcript.tls_failed(t.problem());
                    if plaintext {
                        self.transcript.event(&format!(
                            "the server answered in plaintext, not TLS: {}",
                            crate::logsafe::LogSafe(first_line(bytes))
                        ));
                    } else {
                        self.transcript.event(&format!("TLS failed: {e}"));
                    }
                    // Any alert rustls queued, best effort.
                    let alert = t.ciphertext().to_vec();
                    let _ = c.stream.write_all(&alert);
                    self.machine
                        .handle_tls_error(&e.0, plaintext, Instant::now());
                    return;
                }
            };
            off += used;
            let plain = t.plaintext().to_vec();
            t.consume_plaintext(plain.len());
            let closed = t.peer_closed();
            let established = !t.is_handshaking() && t.error().is_none() && !c.tls_reported;
            let desc = t.protocol_description();
            // Handshake records to send (the client's Finished).
            let out = t.ciphertext().to_vec();
            if !out.is_empty() && c.stream.write_all(&out).is_ok() {
                t.consume_ciphertext(out.len());
            }
            if established {
                c.tls_reported = true;
                self.transcript.event(&format!(
                    "TLS established: {}",
                    desc.unwrap_or_else(|| "TLS".into())
                ));
                self.machine.handle_tls_established(Instant::now());
            }
            if !plain.is_empty() {
                self.transcript.received(&plain);
                self.machine.handle_input(&plain, Instant::now());
            }
            if closed {
                self.machine.handle_closed(Instant::now());
                return;
            }
            if off >= bytes.len() || (used == 0 && plain.is_empty()) {
                return;
            }
        }
    }
}

fn first_line(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .position(|b| *b == b'\r' || *b == b'\n')
        .unwrap_or(bytes.len());
    bytes.get(..end).unwrap_or(bytes)
}

/// One DNS exchange on its own socket.
enum DnsSock {
    Udp(UdpSocket),
    Tcp {
        stream: TcpStream,
        server: SocketAddr,
        buf: Vec<u8>,
    },
}

/// Runs one lookup of the machine to its answer with the sans-IO resolver
/// (the daemon's), blocking.
pub fn resolve(resolver: &mut Resolver, lookup: &Lookup) -> Result<Vec<MxHost>, DnsError> {
    let id = match lookup {
        Lookup::Mx(domain) => resolver.resolve_mx(domain, Instant::now()),
        Lookup::Host(name) => resolver.resolve_host(name, Instant::now()),
    };
    let mut socks: HashMap<QueryHandle, DnsSock> = HashMap::new();
    loop {
        let now = Instant::now();
        while let Some(tx) = resolver.poll_transmit() {
            match open_dns(&tx.transport, tx.server, &tx.payload) {
                Ok(s) => {
                    socks.insert(tx.handle, s);
                }
                Err(_) => resolver.handle_transport_error(tx.handle, now),
            }
        }
        while let Some(h) = resolver.poll_closed() {
            socks.remove(&h);
        }
        while let Some((rid, result)) = resolver.poll_result() {
            if rid == id {
                return result;
            }
        }
        let mut answers = Vec::new();
        let mut failed = Vec::new();
        for (handle, sock) in socks.iter_mut() {
            match sock {
                DnsSock::Udp(s) => {
                    let mut buf = [0u8; 1500];
                    match s.recv_from(&mut buf) {
                        Ok((n, from)) => {
                            answers.push((*handle, from, buf.get(..n).unwrap_or_default().to_vec()))
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => failed.push(*handle),
                    }
                }
                DnsSock::Tcp {
                    stream,
                    server,
                    buf,
                } => {
                    let mut chunk = [0u8; 4096];
                    match stream.read(&mut chunk) {
                        Ok(0) => failed.push(*handle),
                        Ok(n) => {
                            buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
                            if let [hi, lo, rest @ ..] = buf.as_slice() {
                                let len = usize::from(u16::from_be_bytes([*hi, *lo]));
                                if let Some(msg) = rest.get(..len) {
                                    answers.push((*handle, *server, msg.to_vec()));
                                } else if buf.len() > MAX_DNS_TCP {
                                    failed.push(*handle);
                                }
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => failed.push(*handle),
                    }
                }
            }
        }
        let moved = !answers.is_empty() || !failed.is_empty();
        let now = Instant::now();
        for (handle, from, msg) in answers {
            resolver.handle_response(handle, from, &msg, now);
        }
        for handle in failed {
            resolver.handle_transport_error(handle, now);
        }
        if moved {
            continue;
        }
        match resolver.poll_timeout() {
            Some(t) if t <= now => resolver.handle_timeout(now),
            Some(t) => std::thread::sleep(DNS_POLL.min(t - now)),
            None if socks.is_empty() => {
                return Err(DnsError::Temporary("no DNS server answered".into()))
            }
            None => std::thread::sleep(DNS_POLL),
        }
    }
}

fn open_dns(transport: &Transport, server: SocketAddr, payload: &[u8]) -> std::io::Result<DnsSock> {
    match transport {
        Transport::Udp => {
            let local: SocketAddr = if server.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let s = UdpSocket::bind(local)?;
            s.send_to(payload, server)?;
            s.set_nonblocking(true)?;
            Ok(DnsSock::Udp(s))
        }
        Transport::Tcp => {
            let mut stream = TcpStream::connect_timeout(&server, Duration::from_secs(5))?;
            stream.set_write_timeout(Some(Duration::from_secs(5)))?;
            stream.write_all(payload)?;
            stream.set_nonblocking(true)?;
            Ok(DnsSock::Tcp {
                stream,
                server,
                buf: Vec::new(),
            })
        }
    }
}
