//! TLS for tern: rustls configurations and a sans-IO byte pump.
//!
//! Why: tern runs every connection on one thread, so TLS cannot own a socket.
//! [`TlsStream`] sits between the socket bytes the reactor reads/writes and the
//! plaintext the SMTP session speaks: ciphertext in ([`TlsStream::read_tls`]),
//! plaintext out ([`TlsStream::plaintext`]), plaintext in
//! ([`TlsStream::write_plaintext`]), ciphertext out ([`TlsStream::ciphertext`]).
//! The reactor derives its interest after every step from
//! [`TlsStream::wants_read`] and [`TlsStream::wants_write`].
//!
//! Rules: RFC 8446 (TLS 1.3) and RFC 5246 (TLS 1.2), nothing older; RFC 3207
//! (STARTTLS) and RFC 8314 (implicit TLS) use the same stream; RFC 7435
//! (opportunistic security) is why [`client_config_no_verify`] exists: MX
//! delivery encrypts even when the peer cannot be authenticated.
//!
//! Invariants:
//! - Every buffer this module owns is capped by a named constant
//!   ([`PLAINTEXT_IN_LIMIT`], [`PLAINTEXT_OUT_LIMIT`], [`CIPHERTEXT_OUT_LIMIT`]);
//!   when full, `wants_read` turns false or `write_plaintext` takes less.
//!   rustls' own buffers are capped by it (about one record each way) and by
//!   `set_buffer_limit(PLAINTEXT_OUT_LIMIT)`.
//! - After the first error the stream is dead: every later `read_tls` fails and
//!   no plaintext is ever released, but queued alerts can still be flushed.
//! - Only ring is used, chosen explicitly, so the binary links one crypto lib.
//!
//! STARTTLS caution (CVE-2011-0411 class): the session must discard any
//! plaintext it had buffered before the handshake; this module only sees bytes
//! fed after it was created.
//!
//! Not supported: client certificates, OCSP stapling, session resumption on
//! the server (see [`server_config`]), 0-RTT, TLS 1.0/1.1, DANE/MTA-STS.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::NoServerSessionStorage;
use rustls::{
    ClientConfig, ClientConnection, Connection, DigitallySignedStruct, ProtocolVersion,
    RootCertStore, ServerConfig, ServerConnection, SignatureScheme,
};

/// Most plaintext queued for encryption (and, after the handshake, most
/// ciphertext rustls holds before [`TlsStream::ciphertext`] takes it).
pub const PLAINTEXT_OUT_LIMIT: usize = 16 * 1024;
/// Most decrypted bytes held for the session (one full TLS record).
pub const PLAINTEXT_IN_LIMIT: usize = 16 * 1024;
/// Most ciphertext held for the socket: one full record plus framing.
pub const CIPHERTEXT_OUT_LIMIT: usize = 16 * 1024 + 2 * 1024;
/// Buffers above this capacity are released once drained, so an idle stream
/// holds none of its peak memory.
pub const IDLE_BUFFER_KEEP: usize = 4 * 1024;
/// Largest PEM file read (a full public CA bundle is about 220 KB).
pub const MAX_PEM_FILE_SIZE: u64 = 4 * 1024 * 1024;
/// Resumable sessions cached by the outbound client (a few smarthosts at most).
pub const CLIENT_SESSION_CACHE: usize = 16;

/// A configuration or connection error, with the file name where one applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsError(pub String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

/// The ring provider, TLS 1.2 and 1.3 suites only (rustls offers nothing older).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

static VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Server configuration from a PEM chain (leaf first) and a PEM private key.
///
/// No client authentication. No resumption: neither a session cache nor
/// tickets, because each cached session costs memory on a router for the
/// whole cache lifetime, ticket keys would need rotation, and SMTP clients
/// connect minutes apart so a full handshake (one ECDHE) is cheap enough.
pub fn server_config(cert_pem: &Path, key_pem: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_text = read_pem_file(cert_pem)?;
    let mut certs = Vec::new();
    for item in CertificateDer::pem_slice_iter(&cert_text) {
        let cert = item.map_err(|e| TlsError(format!("bad PEM in {}: {e}", cert_pem.display())))?;
        certs.push(cert);
    }
    if certs.is_empty() {
        return Err(TlsError(format!(
            "no certificate found in {}",
            cert_pem.display()
        )));
    }
    let key_text = read_pem_file(key_pem)?;
    let key = PrivateKeyDer::from_pem_slice(&key_text).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            TlsError(format!("no private key in {}", key_pem.display()))
        }
        e => TlsError(format!("bad PEM in {}: {e}", key_pem.display())),
    })?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError(format!("TLS setup: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            let why = match e {
                rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                    "the key does not belong to the certificate".to_string()
                }
                e => e.to_string(),
            };
            TlsError(format!(
                "certificate {} / key {} unusable: {why}",
                cert_pem.display(),
                key_pem.display()
            ))
        })?;
    cfg.session_storage = Arc::new(NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}

/// Where the system CA bundle lives on Debian/OpenWrt (ca-certificates,
/// ca-bundle), Fedora and Alpine/BSD-style systems, in that order.
pub const SYSTEM_CA_BUNDLES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// Verifying client configuration: trust anchors from `ca_file` (PEM) if
/// given, else the system bundle (SPEC: `tls_ca_file` defaults to it), else
/// — only when built with the `bundled-roots` feature — the compiled-in
/// Mozilla roots (webpki-roots; ~200 KB of flash, so off by default).
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    let system = SYSTEM_CA_BUNDLES.iter().map(Path::new).find(|p| p.exists());
    match ca_file.or(system) {
        Some(path) => {
            let text = read_pem_file(path)?;
            let mut certs = Vec::new();
            for item in CertificateDer::pem_slice_iter(&text) {
                certs.push(
                    item.map_err(|e| TlsError(format!("bad PEM in {}: {e}", path.display())))?,
                );
            }
            let (added, _ignored) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(TlsError(format!(
                    "no usable CA certificate found in {}",
                    path.display()
                )));
            }
        }
        #[cfg(feature = "bundled-roots")]
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        #[cfg(not(feature = "bundled-roots"))]
        None => {
            return Err(TlsError(format!(
                "no CA bundle found ({}): set tls_ca_file, or build with --features bundled-roots",
                SYSTEM_CA_BUNDLES.join(", ")
            )))
        }
    }
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.resumption = Resumption::in_memory_sessions(CLIENT_SESSION_CACHE);
    Ok(Arc::new(cfg))
}

/// Client configuration that encrypts without authenticating (RFC 7435).
/// Any certificate is accepted, but handshake signatures are still checked,
/// so the peer must hold the key of the certificate it sent.
pub fn client_config_no_verify() -> Arc<ClientConfig> {
    let provider = provider();
    let verifier = Arc::new(AnyCertVerifier {
        provider: provider.clone(),
    });
    let builder =
        match ClientConfig::builder_with_provider(provider).with_protocol_versions(VERSIONS) {
            Ok(b) => b,
            // Unreachable: ring's provider has suites and groups for both
            // versions. rustls' own default (also ring here) is the fallback.
            Err(_) => ClientConfig::builder_with_protocol_versions(VERSIONS),
        };
    let mut cfg = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.resumption = Resumption::disabled();
    Arc::new(cfg)
}

fn read_pem_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    let file =
        std::fs::File::open(path).map_err(|e| TlsError(format!("{}: {e}", path.display())))?;
    let mut data = Vec::new();
    file.take(MAX_PEM_FILE_SIZE + 1)
        .read_to_end(&mut data)
        .map_err(|e| TlsError(format!("{}: {e}", path.display())))?;
    if data.len() as u64 > MAX_PEM_FILE_SIZE {
        return Err(TlsError(format!(
            "{} is larger than {MAX_PEM_FILE_SIZE} bytes",
            path.display()
        )));
    }
    Ok(data)
}

/// Accepts every certificate; checks handshake signatures with the provider.
#[derive(Debug)]
struct AnyCertVerifier {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyCertVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A FIFO of bytes with a read offset, so consuming is O(1).
#[derive(Default)]
struct ByteQueue {
    buf: Vec<u8>,
    start: usize,
}

impl ByteQueue {
    fn as_slice(&self) -> &[u8] {
        self.buf.get(self.start..).unwrap_or(&[])
    }

    fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.buf.len());
        if self.start == self.buf.len() {
            if self.buf.capacity() > IDLE_BUFFER_KEEP {
                self.buf = Vec::new();
            } else {
                self.buf.clear();
            }
            self.start = 0;
        }
    }

    /// Moves unread bytes to the front so appends reuse the space.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

/// An `io::Write` that accepts at most `room` bytes into a Vec.
struct BoundedWriter<'a> {
    buf: &'a mut Vec<u8>,
    room: usize,
}

impl Write for BoundedWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(self.room);
        self.buf.extend_from_slice(data.get(..n).unwrap_or(&[]));
        self.room -= n;
        Ok(n)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let mut total = 0;
        for b in bufs {
            let n = self.write(b)?;
            total += n;
            if n < b.len() {
                break;
            }
        }
        Ok(total)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The byte pump: plaintext app bytes <-> TLS records, with bounded buffers.
///
/// Driving it from the reactor, after every event:
/// - socket readable: read into the connection's read buffer, `read_tls(buf)`,
///   drop the consumed prefix; give [`plaintext`](Self::plaintext) to the
///   session and [`consume_plaintext`](Self::consume_plaintext) what it took.
/// - session output: [`write_plaintext`](Self::write_plaintext); keep what was
///   not taken and retry after the socket drained.
/// - socket writable: write [`ciphertext`](Self::ciphertext), then
///   [`consume_ciphertext`](Self::consume_ciphertext) what the socket took.
/// - interest: readable iff [`wants_read`](Self::wants_read), writable iff
///   [`wants_write`](Self::wants_write).
/// - closing: [`send_close_notify`](Self::send_close_notify), flush, shut down.
///
/// Measured footprint (counting allocator, release build): about 7 KB of heap
/// per idle stream after a TLS 1.3 handshake, about 10 KB after bulk traffic;
/// the worst case while streaming is the caps above plus rustls' own record
/// buffers, under 100 KB.
pub struct TlsStream {
    conn: Connection,
    plain_in: ByteQueue,
    cipher_out: ByteQueue,
    /// rustls may hold decrypted bytes that did not fit in `plain_in`.
    plaintext_backlog: bool,
    /// The peer's close_notify was read and all its data drained.
    peer_closed: bool,
    close_sent: bool,
    error: Option<TlsError>,
    /// The handshake failed on bytes that were no TLS record.
    plaintext_peer: bool,
    /// What the fatal error was, as a type (for `tern test`'s diagnosis).
    problem: Option<TlsProblem>,
}

impl fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsStream")
            .field("handshaking", &self.conn.is_handshaking())
            .field("plain_in", &self.plain_in.len())
            .field("cipher_out", &self.cipher_out.len())
            .field("peer_closed", &self.peer_closed)
            .field("error", &self.error)
            .finish()
    }
}

impl TlsStream {
    pub fn server(cfg: Arc<ServerConfig>) -> Result<TlsStream, TlsError> {
        let conn =
            ServerConnection::new(cfg).map_err(|e| TlsError(format!("TLS server setup: {e}")))?;
        Ok(Self::wrap(Connection::Server(conn)))
    }

    /// `server_name` is a DNS name or an IP literal (brackets allowed); SNI is
    /// sent for DNS names only (RFC 6066 §3), and the certificate is checked
    /// against it unless the config does not verify.
    pub fn client(cfg: Arc<ClientConfig>, server_name: &str) -> Result<TlsStream, TlsError> {
        let name = parse_server_name(server_name)?;
        let conn = ClientConnection::new(cfg, name)
            .map_err(|e| TlsError(format!("TLS client setup for {server_name}: {e}")))?;
        Ok(Self::wrap(Connection::Client(conn)))
    }

    fn wrap(mut conn: Connection) -> TlsStream {
        conn.set_buffer_limit(Some(PLAINTEXT_OUT_LIMIT));
        TlsStream {
            conn,
            plain_in: ByteQueue::default(),
            cipher_out: ByteQueue::default(),
            plaintext_backlog: false,
            peer_closed: false,
            close_sent: false,
            error: None,
            plaintext_peer: false,
            problem: None,
        }
    }

    /// Feed ciphertext read from the socket; returns bytes consumed (fewer
    /// than given when the plaintext buffer is full: keep the rest and feed it
    /// after [`consume_plaintext`](Self::consume_plaintext)). Errors are fatal;
    /// the alert rustls queued is in [`ciphertext`](Self::ciphertext).
    pub fn read_tls(&mut self, ciphertext: &[u8]) -> Result<usize, TlsError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let mut used = 0;
        while used < ciphertext.len() && self.wants_read() {
            // Never hand rustls an empty reader: it would take that as EOF.
            let mut rest = ciphertext.get(used..).unwrap_or(&[]);
            let n = match self.conn.read_tls(&mut rest) {
                Ok(0) => break, // close_notify already received
                Ok(n) => n,
                Err(e) => return Err(self.fail(format!("TLS read: {e}"))),
            };
            used += n;
            if let Err(e) = self.conn.process_new_packets() {
                // Not a TLS record at all before the handshake finished:
                // the peer speaks plaintext (SMTP's greeting) on this port.
                self.plaintext_peer = self.conn.is_handshaking()
                    && matches!(
                        e,
                        rustls::Error::InvalidMessage(_) | rustls::Error::PeerSentOversizedRecord
                    );
                self.problem = Some(TlsProblem::of(&e));
                return Err(self.fail(describe(&e)));
            }
            self.drain_plaintext();
        }
        Ok(used)
    }

    fn fail(&mut self, msg: String) -> TlsError {
        let e = TlsError(msg);
        self.error = Some(e.clone());
        self.plain_in = ByteQueue::default();
        e
    }

    /// Moves decrypted bytes from rustls into `plain_in`, up to its limit.
    /// Goes through a small stack buffer so `plain_in` grows only by what
    /// actually arrived.
    fn drain_plaintext(&mut self) {
        self.plaintext_backlog = false;
        let mut chunk = [0u8; 4096];
        loop {
            let room = PLAINTEXT_IN_LIMIT.saturating_sub(self.plain_in.len());
            if room == 0 {
                self.plaintext_backlog = true;
                return;
            }
            let want = room.min(chunk.len());
            let res = match chunk.get_mut(..want) {
                Some(buf) => self.conn.reader().read(buf),
                None => Ok(0),
            };
            match res {
                Ok(0) => {
                    self.peer_closed = true;
                    return;
                }
                Ok(n) => {
                    self.plain_in.compact();
                    self.plain_in
                        .buf
                        .extend_from_slice(chunk.get(..n).unwrap_or(&[]));
                }
                Err(e) => {
                    // WouldBlock: nothing more decrypted yet. Anything else
                    // is an EOF without close_notify.
                    if e.kind() != io::ErrorKind::WouldBlock {
                        self.peer_closed = true;
                    }
                    return;
                }
            }
        }
    }

    /// Decrypted application data available so far.
    pub fn plaintext(&self) -> &[u8] {
        self.plain_in.as_slice()
    }

    pub fn consume_plaintext(&mut self, n: usize) {
        self.plain_in.consume(n);
        if self.plaintext_backlog && self.error.is_none() {
            self.drain_plaintext();
        }
    }

    /// Queue application data for encryption; returns how much was taken
    /// (0 when [`PLAINTEXT_OUT_LIMIT`] is reached, after an error, or after
    /// close_notify was sent). Data written during the handshake is sent
    /// when it completes.
    pub fn write_plaintext(&mut self, data: &[u8]) -> usize {
        if self.error.is_some() || self.close_sent || data.is_empty() {
            return 0;
        }
        self.conn.writer().write(data).unwrap_or(0)
    }

    /// Ciphertext waiting to go to the socket (pulls more from rustls, up to
    /// [`CIPHERTEXT_OUT_LIMIT`]).
    pub fn ciphertext(&mut self) -> &[u8] {
        self.pull_ciphertext();
        self.cipher_out.as_slice()
    }

    pub fn consume_ciphertext(&mut self, n: usize) {
        self.cipher_out.consume(n);
    }

    fn pull_ciphertext(&mut self) {
        self.cipher_out.compact();
        while self.conn.wants_write() {
            let room = CIPHERTEXT_OUT_LIMIT.saturating_sub(self.cipher_out.len());
            if room == 0 {
                return;
            }
            let mut w = BoundedWriter {
                buf: &mut self.cipher_out.buf,
                room,
            };
            match self.conn.write_tls(&mut w) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// True while more ciphertext can be fed: no error, peer not closed, and
    /// room for the plaintext it would yield.
    pub fn wants_read(&self) -> bool {
        self.error.is_none()
            && !self.peer_closed
            && !self.plaintext_backlog
            && self.plain_in.len() < PLAINTEXT_IN_LIMIT
    }

    /// True while ciphertext is waiting (in this stream or in rustls).
    pub fn wants_write(&self) -> bool {
        self.cipher_out.len() > 0 || self.conn.wants_write()
    }

    /// The peer sent close_notify and every byte before it was drained into
    /// [`plaintext`](Self::plaintext).
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// The fatal error, if one happened.
    pub fn error(&self) -> Option<&TlsError> {
        self.error.as_ref()
    }

    /// The handshake failed because the peer sent something that is not
    /// TLS (a plaintext SMTP greeting where implicit TLS was expected).
    pub fn peer_spoke_plaintext(&self) -> bool {
        self.plaintext_peer
    }

    /// The kind of the fatal error, when it came from the TLS exchange.
    pub fn problem(&self) -> Option<TlsProblem> {
        self.problem
    }

    /// E.g. "TLSv1.3 TLS13_AES_256_GCM_SHA384", once the handshake is done.
    pub fn protocol_description(&self) -> Option<String> {
        if self.conn.is_handshaking() || self.error.is_some() {
            return None;
        }
        let version = match self.conn.protocol_version()? {
            ProtocolVersion::TLSv1_3 => "TLSv1.3".to_string(),
            ProtocolVersion::TLSv1_2 => "TLSv1.2".to_string(),
            other => format!("{other:?}"),
        };
        let suite = self.conn.negotiated_cipher_suite()?.suite();
        let suite = suite
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("{suite:?}"));
        Some(format!("{version} {suite}"))
    }

    /// Queue a close_notify alert; later writes are refused.
    pub fn send_close_notify(&mut self) {
        if !self.close_sent {
            self.close_sent = true;
            self.conn.send_close_notify();
        }
    }
}

/// A TLS failure as a type: what an administrator must change differs
/// (the CA file, the clock, the host name, the TLS mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsProblem {
    /// The certificate chains to no trusted CA.
    UnknownIssuer,
    /// The certificate's validity starts after our clock's now.
    NotYetValid,
    Expired,
    /// The certificate does not name the server we asked for.
    NameMismatch,
    /// What came was no TLS (a plaintext greeting).
    NotTls,
    Other,
}

impl TlsProblem {
    pub fn of(e: &rustls::Error) -> TlsProblem {
        use rustls::{CertificateError as C, Error as E};
        match e {
            E::InvalidCertificate(C::UnknownIssuer) => TlsProblem::UnknownIssuer,
            E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
                TlsProblem::NotYetValid
            }
            E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => TlsProblem::Expired,
            E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
                TlsProblem::NameMismatch
            }
            E::InvalidMessage(_) | E::PeerSentOversizedRecord => TlsProblem::NotTls,
            _ => TlsProblem::Other,
        }
    }
}

/// A rustls error in words an administrator understands (never Rust debug
/// text): "certificate verify failed: unknown issuer", ...
/// What the clock said when a certificate's dates did not fit: a clock
/// before this build is named as wrong, any other as what it says.
fn clock_words(now_unix: u64) -> String {
    crate::system::clock_before_build(now_unix).unwrap_or_else(|| {
        format!(
            "this host's clock says {}",
            crate::system::ymd(now_unix as i64)
        )
    })
}

pub fn describe(e: &rustls::Error) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    match e {
        E::InvalidCertificate(c) => {
            let why = match c {
                C::UnknownIssuer => "unknown issuer",
                C::NotValidForName | C::NotValidForNameContext { .. } => "name mismatch",
                C::ExpiredContext { time, not_after } => {
                    return format!(
                        "certificate verify failed: certificate expired on {} ({})",
                        crate::system::ymd(not_after.as_secs() as i64),
                        clock_words(time.as_secs())
                    )
                }
                C::NotValidYetContext { time, not_before } => {
                    return format!(
                        "certificate verify failed: certificate not valid before {} ({})",
                        crate::system::ymd(not_before.as_secs() as i64),
                        clock_words(time.as_secs())
                    )
                }
                C::Expired => "certificate expired",
                C::NotValidYet => "certificate not yet valid (check the system clock)",
                C::Revoked => "certificate revoked",
                C::BadSignature => "bad signature",
                C::BadEncoding => "malformed certificate",
                C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
                    "certificate not valid for a server"
                }
                C::UnsupportedSignatureAlgorithmContext { .. }
                | C::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
                    "unsupported signature algorithm"
                }
                _ => "invalid certificate",
            };
            format!("certificate verify failed: {why}")
        }
        E::InvalidMessage(_) | E::PeerSentOversizedRecord => {
            "the peer did not answer in TLS".into()
        }
        E::NoCertificatesPresented => "the server presented no certificate".into(),
        E::PeerIncompatible(_) => "no TLS version or cipher suite in common".into(),
        E::PeerMisbehaved(_) | E::InappropriateMessage { .. } => {
            "the peer broke the TLS protocol".into()
        }
        E::DecryptError => "cannot decrypt the peer's data".into(),
        E::AlertReceived(a) => {
            let what = match a {
                A::HandshakeFailure => "handshake failure",
                A::ProtocolVersion => "unsupported protocol version",
                A::BadCertificate | A::UnsupportedCertificate | A::CertificateUnknown => {
                    "certificate rejected"
                }
                A::UnknownCA => "unknown CA",
                A::AccessDenied => "access denied",
                A::InternalError => "internal error",
                A::InsufficientSecurity => "insufficient security",
                A::DecodeError | A::DecryptError | A::IllegalParameter => "protocol error",
                _ => "fatal alert",
            };
            format!("the peer sent a TLS alert: {what}")
        }
        other => format!("TLS error: {other}"),
    }
}

fn parse_server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    let invalid = || TlsError(format!("invalid TLS server name {name:?}"));
    if let Some(inner) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        let ip = inner.parse::<IpAddr>().map_err(|_| invalid())?;
        return Ok(ServerName::IpAddress(ip.into()));
    }
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    let dns = name.strip_suffix('.').unwrap_or(name);
    ServerName::try_from(dns.to_string()).map_err(|_| invalid())
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)] // tests index fixed data
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn certificate_dates_name_the_clock() {
        use rustls::pki_types::UnixTime;
        use rustls::CertificateError as C;
        let day = |d: u64| UnixTime::since_unix_epoch(std::time::Duration::from_secs(d * 86_400));
        // A router at 1970 + 10 days (before this build): the clock is wrong.
        let early = describe(&rustls::Error::InvalidCertificate(C::NotValidYetContext {
            time: day(10),
            not_before: day(20_000),
        }));
        assert!(early.starts_with("certificate verify failed: certificate not valid before 2024-10-04 (the system clock (1970-01-11) is before this tern was built"), "{early}");
        assert!(early.ends_with("it is wrong; set it (NTP))"), "{early}");
        // A plausible clock and a really expired certificate.
        let far = crate::system::build_epoch() / 86_400 + 400;
        let expired = describe(&rustls::Error::InvalidCertificate(C::ExpiredContext {
            time: day(far),
            not_after: day(far - 3),
        }));
        assert!(
            expired.contains("certificate expired on ")
                && expired.contains("(this host's clock says "),
            "{expired}"
        );
        assert!(!expired.contains("wrong"), "{expired}");
    }

    fn cert_path(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/certs")
            .join(name)
    }

    fn test_server_config() -> Arc<ServerConfig> {
        match server_config(&cert_path("server.pem"), &cert_path("server.key")) {
            Ok(c) => c,
            Err(e) => panic!("server config: {e}"),
        }
    }

    fn test_client_config(ca: &str) -> Arc<ClientConfig> {
        match client_config(Some(&cert_path(ca))) {
            Ok(c) => c,
            Err(e) => panic!("client config: {e}"),
        }
    }

    fn tls12_only_client(ca: &str) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        let text = std::fs::read(cert_path(ca)).unwrap();
        for c in CertificateDer::pem_slice_iter(&text) {
            roots.add(c.unwrap()).unwrap();
        }
        let cfg = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(cfg)
    }

    /// Moves up to `chunk` ciphertext bytes from `from` to `to`; a read error
    /// lands in `err`. Returns bytes moved.
    fn pump(
        from: &mut TlsStream,
        to: &mut TlsStream,
        chunk: usize,
        err: &mut Option<TlsError>,
    ) -> usize {
        let out = from.ciphertext();
        let n = out.len().min(chunk);
        if n == 0 || !to.wants_read() || err.is_some() {
            return 0;
        }
        let data = out[..n].to_vec();
        match to.read_tls(&data) {
            Ok(used) => {
                from.consume_ciphertext(used);
                used
            }
            Err(e) => {
                *err = Some(e);
                0
            }
        }
    }

    /// Moves ciphertext both ways, at most `chunk` bytes at a time, until
    /// nothing moves. Returns the first error seen by (client, server).
    fn shuttle(
        client: &mut TlsStream,
        server: &mut TlsStream,
        chunk: usize,
    ) -> (Option<TlsError>, Option<TlsError>) {
        let (mut ce, mut se) = (None, None);
        for _ in 0..100_000 {
            let moved = pump(client, server, chunk, &mut se) + pump(server, client, chunk, &mut ce);
            if moved == 0 {
                return (ce, se);
            }
        }
        panic!("shuttle did not settle");
    }

    fn handshake(client_cfg: Arc<ClientConfig>, name: &str) -> (TlsStream, TlsStream) {
        let mut server = TlsStream::server(test_server_config()).unwrap();
        let mut client = TlsStream::client(client_cfg, name).unwrap();
        assert!(client.is_handshaking() && server.is_handshaking());
        assert!(client.wants_write(), "client must send ClientHello first");
        let (ce, se) = shuttle(&mut client, &mut server, usize::MAX);
        assert_eq!((ce, se), (None, None));
        assert!(!client.is_handshaking() && !server.is_handshaking());
        (client, server)
    }

    #[test]
    fn tls13_handshake_and_data_both_ways() {
        let (mut client, mut server) = handshake(test_client_config("ca.pem"), "localhost");
        let desc = client.protocol_description().unwrap();
        assert!(desc.starts_with("TLSv1.3 TLS13_"), "{desc}");
        assert_eq!(server.protocol_description(), Some(desc));

        assert_eq!(client.write_plaintext(b"EHLO client.test\r\n"), 18);
        shuttle(&mut client, &mut server, usize::MAX);
        assert_eq!(server.plaintext(), b"EHLO client.test\r\n");
        server.consume_plaintext(5);
        assert_eq!(server.plaintext(), b"client.test\r\n");
        server.consume_plaintext(13);
        assert!(server.plaintext().is_empty());

        assert_eq!(server.write_plaintext(b"250 mx.test\r\n"), 13);
        shuttle(&mut client, &mut server, 7); // tiny socket writes
        assert_eq!(client.plaintext(), b"250 mx.test\r\n");
    }

    #[test]
    fn tls12_handshake() {
        let (mut client, mut server) = handshake(tls12_only_client("ca.pem"), "mx.test");
        let desc = server.protocol_description().unwrap();
        assert!(desc.starts_with("TLSv1.2 TLS_ECDHE_ECDSA_WITH_"), "{desc}");
        server.write_plaintext(b"220 ready\r\n");
        shuttle(&mut client, &mut server, usize::MAX);
        assert_eq!(client.plaintext(), b"220 ready\r\n");
    }

    /// Pushes `payload` from `tx` to `rx` through bounded buffers, checking the
    /// caps hold at every step. Returns what arrived and whether some write
    /// was cut short by [`PLAINTEXT_OUT_LIMIT`].
    fn transfer(tx: &mut TlsStream, rx: &mut TlsStream, payload: &[u8]) -> (Vec<u8>, bool) {
        let mut sent = 0;
        let mut throttled = false;
        let mut received = Vec::new();
        for _ in 0..10_000 {
            let taken = tx.write_plaintext(&payload[sent..]);
            assert!(taken <= PLAINTEXT_OUT_LIMIT);
            throttled |= taken < payload.len() - sent;
            sent += taken;
            let out = tx.ciphertext().to_vec();
            assert!(out.len() <= CIPHERTEXT_OUT_LIMIT);
            let used = rx.read_tls(&out).unwrap();
            tx.consume_ciphertext(used);
            assert!(rx.plaintext().len() <= PLAINTEXT_IN_LIMIT);
            // A slow reader: take at most 5000 bytes per turn.
            let n = rx.plaintext().len().min(5000);
            received.extend_from_slice(&rx.plaintext()[..n]);
            rx.consume_plaintext(n);
            if received.len() == payload.len() {
                return (received, throttled);
            }
        }
        panic!(
            "transfer stalled at {} of {}",
            received.len(),
            payload.len()
        );
    }

    #[test]
    fn large_payload_through_bounded_buffers() {
        let (mut client, mut server) = handshake(test_client_config("ca.pem"), "127.0.0.1");
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (got, throttled) = transfer(&mut client, &mut server, &payload);
        assert!(got == payload, "client to server payload differs");
        assert!(throttled, "a 100 KB write must be taken in parts");
        let (back, _) = transfer(&mut server, &mut client, &payload);
        assert!(back == payload, "server to client payload differs");
    }

    #[test]
    fn reader_backpressure_stops_reading() {
        let (mut client, mut server) = handshake(test_client_config("ca.pem"), "localhost");
        let payload = vec![b'x'; 10 * PLAINTEXT_IN_LIMIT];
        let mut sent = 0;
        // Nobody consumes on the server: it must stop wanting to read.
        for _ in 0..100 {
            sent += client.write_plaintext(&payload[sent..]);
            shuttle(&mut client, &mut server, usize::MAX);
        }
        assert_eq!(server.plaintext().len(), PLAINTEXT_IN_LIMIT);
        assert!(!server.wants_read());
        assert!(client.ciphertext().len() <= CIPHERTEXT_OUT_LIMIT);
        assert!(sent < payload.len(), "writer must be throttled too");
        server.consume_plaintext(PLAINTEXT_IN_LIMIT);
        assert!(server.plaintext().len() <= PLAINTEXT_IN_LIMIT);
    }

    #[test]
    fn wrong_ca_fails_handshake_without_plaintext() {
        let mut server = TlsStream::server(test_server_config()).unwrap();
        let mut client =
            TlsStream::client(test_client_config("other-ca.pem"), "localhost").unwrap();
        // Data queued early must never be released.
        server.write_plaintext(b"secret");
        let (ce, _se) = shuttle(&mut client, &mut server, usize::MAX);
        let err = ce.expect("client must reject the certificate");
        assert_eq!(err.0, "certificate verify failed: unknown issuer");
        assert!(!client.peer_spoke_plaintext());
        assert!(client.plaintext().is_empty());
        assert!(!client.wants_read());
        assert_eq!(client.protocol_description(), None);
        assert_eq!(client.read_tls(b"\x17\x03\x03"), Err(err));
        // The alert reaches the server, which fails too.
        let alert = client.ciphertext().to_vec();
        assert!(!alert.is_empty(), "an alert is queued");
        assert!(server.read_tls(&alert).is_err());
        assert!(server.plaintext().is_empty());
    }

    #[test]
    fn name_mismatch_is_rejected() {
        let mut server = TlsStream::server(test_server_config()).unwrap();
        let mut client = TlsStream::client(test_client_config("ca.pem"), "other.test").unwrap();
        let (ce, _) = shuttle(&mut client, &mut server, usize::MAX);
        let e = ce.unwrap().0;
        assert_eq!(e, "certificate verify failed: name mismatch");
    }

    #[test]
    fn no_verify_accepts_unknown_issuer() {
        let (mut client, mut server) = handshake(client_config_no_verify(), "not-in-cert.test");
        server.write_plaintext(b"220 hi\r\n");
        shuttle(&mut client, &mut server, usize::MAX);
        assert_eq!(client.plaintext(), b"220 hi\r\n");
    }

    #[test]
    fn no_verify_still_checks_handshake_signatures() {
        // The server presents server.pem but signs with an unrelated key.
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&std::fs::read(cert_path("server.pem")).unwrap())
                .map(|c| c.unwrap())
                .collect();
        let wrong_key =
            PrivateKeyDer::from_pem_slice(&std::fs::read(cert_path("other-ca.key")).unwrap())
                .unwrap();
        let signer = provider().key_provider.load_private_key(wrong_key).unwrap();
        let resolver = Arc::new(rustls::sign::SingleCertAndKey::from(
            rustls::sign::CertifiedKey::new(certs, signer),
        ));
        for versions in [
            &[&rustls::version::TLS13][..],
            &[&rustls::version::TLS12][..],
        ] {
            let cfg = ServerConfig::builder_with_provider(provider())
                .with_protocol_versions(versions)
                .unwrap()
                .with_no_client_auth()
                .with_cert_resolver(resolver.clone());
            let mut server = TlsStream::server(Arc::new(cfg)).unwrap();
            let mut client = TlsStream::client(client_config_no_verify(), "localhost").unwrap();
            let (ce, _) = shuttle(&mut client, &mut server, usize::MAX);
            let e = ce.expect("forged signature must fail").0;
            assert_eq!(e, "certificate verify failed: bad signature");
            assert!(client.plaintext().is_empty());
        }
    }

    #[test]
    fn server_names() {
        let cfg = test_client_config("ca.pem");
        for ok in [
            "localhost",
            "mx.test",
            "mx.test.",
            "127.0.0.1",
            "[127.0.0.1]",
        ] {
            let (client, _) = handshake(cfg.clone(), ok);
            assert!(client.protocol_description().is_some(), "{ok}");
        }
        for ip in ["::1", "[::1]"] {
            assert!(TlsStream::client(cfg.clone(), ip).is_ok(), "{ip}");
        }
        for bad in ["", "bad name", "a..b", "[x]"] {
            let e = TlsStream::client(cfg.clone(), bad).expect_err(bad);
            assert!(e.0.contains("invalid TLS server name"), "{bad}: {e}");
        }
    }

    #[test]
    fn close_notify_is_seen() {
        let (mut client, mut server) = handshake(test_client_config("ca.pem"), "localhost");
        client.write_plaintext(b"QUIT\r\n");
        client.send_close_notify();
        assert_eq!(client.write_plaintext(b"more"), 0);
        shuttle(&mut client, &mut server, usize::MAX);
        assert_eq!(server.plaintext(), b"QUIT\r\n");
        assert!(server.peer_closed());
        assert!(!server.wants_read());
    }

    #[test]
    fn plaintext_greeting_where_tls_was_expected_is_recognized() {
        let mut client = TlsStream::client(client_config_no_verify(), "mx.test").unwrap();
        let e = client.read_tls(b"220 mx.test ESMTP\r\n").unwrap_err();
        assert_eq!(e.0, "the peer did not answer in TLS");
        assert!(client.peer_spoke_plaintext());
    }

    #[test]
    fn garbage_is_a_fatal_error() {
        let mut server = TlsStream::server(test_server_config()).unwrap();
        let e = server.read_tls(b"EHLO x\r\n").unwrap_err();
        assert_eq!(e.0, "the peer did not answer in TLS");
        assert!(server.peer_spoke_plaintext());
        assert!(server.read_tls(b"\x16\x03\x01").is_err());
        assert!(!server.wants_read());
    }

    fn temp_file(name: &str, content: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tern-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        p
    }

    #[test]
    fn bad_pem_files_name_the_file() {
        let cert = cert_path("server.pem");
        let key = cert_path("server.key");
        let empty = temp_file("empty.pem", b"");
        let junk = temp_file(
            "junk.pem",
            b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        );
        let missing = Path::new("/nonexistent/tern/cert.pem");

        let e = server_config(&empty, &key).unwrap_err().0;
        assert_eq!(e, format!("no certificate found in {}", empty.display()));
        let e = server_config(&cert, &empty).unwrap_err().0;
        assert_eq!(e, format!("no private key in {}", empty.display()));
        // A certificate file holds no key.
        let e = server_config(&cert, &cert).unwrap_err().0;
        assert_eq!(e, format!("no private key in {}", cert.display()));
        let e = server_config(&junk, &key).unwrap_err().0;
        assert!(
            e.starts_with(&format!("bad PEM in {}", junk.display())),
            "{e}"
        );
        let e = server_config(missing, &key).unwrap_err().0;
        assert!(e.starts_with("/nonexistent/tern/cert.pem: "), "{e}");
        // Key of another certificate.
        let e = server_config(&cert, &cert_path("ca.key")).unwrap_err().0;
        assert!(e.contains("unusable") && e.contains("ca.key"), "{e}");

        let e = client_config(Some(&empty)).unwrap_err().0;
        assert_eq!(
            e,
            format!("no usable CA certificate found in {}", empty.display())
        );
        let e = client_config(Some(missing)).unwrap_err().0;
        assert!(e.contains("/nonexistent/tern/cert.pem"), "{e}");
        assert!(client_config(None).is_ok());
    }

    #[test]
    fn byte_queue_releases_memory_when_drained() {
        let mut q = ByteQueue::default();
        q.buf.extend_from_slice(&[1u8; 10_000]);
        q.consume(9_999);
        assert_eq!(q.as_slice(), &[1]);
        q.consume(100); // over-consume is clamped
        assert_eq!(q.len(), 0);
        assert_eq!(q.buf.capacity(), 0);
    }
}
