//! A blocking driver for one [`Exchange`], for commands (`tern oauth
//! login`, `tern test`); the daemon never runs it. DNS goes through the
//! daemon's sans-IO resolver (the configured `dns_servers`), TLS through
//! [`crate::tls::TlsStream`] with a verifying rustls config; the whole
//! exchange, connect included, ends by the one deadline.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Exchange, HttpError, HttpRequest, HttpResponse};
use crate::dns::Resolver;
use crate::outbound::machine::Lookup;
use crate::tls::TlsStream;

/// Bytes read from the socket per call.
const READ_CHUNK: usize = 16 * 1024;
/// Most passes through the loop (each moves bytes or waits); bounds a bug.
const MAX_STEPS: usize = 100_000;

/// Runs `req` to its response with `config`'s DNS servers and trust
/// anchors (`tls_ca_file`, else the system bundle).
pub fn fetch_with_config(
    config: &crate::config::Config,
    req: &HttpRequest,
    timeout: Duration,
) -> Result<HttpResponse, HttpError> {
    let tls = crate::tls::client_config(config.tls_ca_file.as_deref())
        .map_err(|e| HttpError::Tls(e.0))?;
    let mut resolver = Resolver::new(
        crate::daemon::dns::resolver_config(config),
        Box::new(|buf: &mut [u8]| crate::random::fill(buf).map_err(|_| ())),
    );
    fetch(req, &mut resolver, tls, timeout)
}

/// Runs `req` to its response, blocking; the certificate is verified
/// against `tls` for the URL's host.
pub fn fetch(
    req: &HttpRequest,
    resolver: &mut Resolver,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<HttpResponse, HttpError> {
    let start = Instant::now();
    let mut x = Exchange::new(req, start, timeout)?;
    let deadline = start + timeout;
    let addrs = addresses(req, resolver)?;
    let mut stream = connect(&addrs, deadline)?;
    let mut tls = TlsStream::client(tls, &req.url.host).map_err(|e| HttpError::Tls(e.0))?;
    let mut buf = vec![0u8; READ_CHUNK];
    for _ in 0..MAX_STEPS {
        if x.is_done() {
            break;
        }
        pump(&mut x, &mut tls, &mut stream);
        let now = Instant::now();
        let wait = deadline.saturating_duration_since(now);
        if wait.is_zero() {
            x.handle_timeout(now);
            break;
        }
        let _ = stream.set_read_timeout(Some(wait));
        match stream.read(&mut buf) {
            Ok(0) => {
                if tls.is_handshaking() {
                    x.fail(HttpError::Tls(
                        "connection closed during the handshake".into(),
                    ));
                } else {
                    x.handle_eof(Instant::now());
                }
            }
            Ok(n) => input(
                &mut x,
                &mut tls,
                &mut stream,
                buf.get(..n).unwrap_or_default(),
            ),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                x.handle_timeout(deadline.max(Instant::now()));
            }
            Err(e) => x.fail(HttpError::Connect(crate::delivery::outcome::io_words(&e))),
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    x.take_result().unwrap_or(Err(HttpError::Timeout))
}

fn addresses(req: &HttpRequest, resolver: &mut Resolver) -> Result<Vec<SocketAddr>, HttpError> {
    if let Some(ip) = req.url.ip() {
        return Ok(vec![SocketAddr::new(ip, req.url.port)]);
    }
    let hosts = crate::cli::test::driver::resolve(resolver, &Lookup::Host(req.url.host.clone()))
        .map_err(|e| HttpError::Connect(format!("DNS: {e}")))?;
    let addrs: Vec<SocketAddr> = hosts
        .iter()
        .flat_map(|h| h.addrs.iter().map(|ip| SocketAddr::new(*ip, req.url.port)))
        .collect();
    if addrs.is_empty() {
        return Err(HttpError::Connect(format!(
            "no address for {}",
            req.url.host
        )));
    }
    Ok(addrs)
}

fn connect(addrs: &[SocketAddr], deadline: Instant) -> Result<TcpStream, HttpError> {
    let mut last = HttpError::Timeout;
    for addr in addrs {
        let wait = deadline.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            return Err(HttpError::Timeout);
        }
        match TcpStream::connect_timeout(addr, wait) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                let _ = s.set_write_timeout(Some(wait));
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => last = HttpError::Timeout,
            Err(e) => {
                last = HttpError::Connect(format!(
                    "{addr}: {}",
                    crate::delivery::outcome::io_words(&e)
                ))
            }
        }
    }
    Err(last)
}

/// Request bytes into TLS, ciphertext to the socket.
fn pump(x: &mut Exchange, tls: &mut TlsStream, stream: &mut TcpStream) {
    let data = x.poll_transmit();
    if !data.is_empty() {
        let n = tls.write_plaintext(data);
        x.consume_transmit(n);
    }
    flush(x, tls, stream);
}

fn flush(x: &mut Exchange, tls: &mut TlsStream, stream: &mut TcpStream) {
    loop {
        let out = tls.ciphertext();
        if out.is_empty() {
            return;
        }
        let n = out.len();
        if let Err(e) = stream.write_all(out) {
            x.fail(HttpError::Connect(crate::delivery::outcome::io_words(&e)));
            return;
        }
        tls.consume_ciphertext(n);
    }
}

/// Socket bytes through TLS to the exchange.
fn input(x: &mut Exchange, tls: &mut TlsStream, stream: &mut TcpStream, bytes: &[u8]) {
    let mut off = 0;
    while !x.is_done() {
        let rest = bytes.get(off..).unwrap_or_default();
        let used = match tls.read_tls(rest) {
            Ok(n) => n,
            Err(e) => {
                flush(x, tls, stream);
                x.fail(HttpError::Tls(e.0));
                return;
            }
        };
        off += used;
        let plain = tls.plaintext().to_vec();
        tls.consume_plaintext(plain.len());
        if !plain.is_empty() {
            x.handle_input(&plain, Instant::now());
        }
        pump(x, tls, stream);
        if tls.peer_closed() && tls.plaintext().is_empty() {
            x.handle_eof(Instant::now());
            return;
        }
        if off >= bytes.len() || (used == 0 && plain.is_empty()) {
            return;
        }
    }
}
