//! smtp_load: a small SMTP load generator for tests/bench/tls_bench.py
//! (issue 16). Postfix's smtp-source speaks neither STARTTLS nor AUTH; this
//! does, with blocking sockets and one std thread per concurrent session
//! (threads are fine here: the no-threads rule is for src/ only).
//!
//! Per session: connect, read the 220 greeting, EHLO, [STARTTLS, EHLO again
//! over TLS], [AUTH PLAIN], then `--per-session` transactions of
//! MAIL/RCPT/DATA with a message of `--size` octets (RSET before every
//! transaction but the first), QUIT. No pipelining. Every reply code is
//! checked; a message counts as sent only when its DATA got a 2xx.
//!
//! BENCHMARK ONLY: the server certificate is NOT verified (any certificate
//! is accepted). Never use this against a server you do not control.
//! TLS session resumption is off: every session is a full handshake.
//!
//! Output (stdout, one line, key=value): ok, fail, sessions,
//! session_errors, elapsed (s, until every thread finished),
//! last_ok (s, until the last 250 after DATA), cpu (s of CPU this process
//! used, user + system), first_error.
//!
//! Build: `cargo build --release --example smtp_load`.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

const USAGE: &str = "usage: smtp_load [options] HOST:PORT
  -c N            concurrent sessions (threads), default 1
  -n N            messages in total, default 100
  -k N            messages per session (1 = a new session per message), default 1
  -s N            message size in octets (headers + body), default 2048
  --starttls      STARTTLS after the first EHLO (certificate NOT verified)
  --user U --pass P   AUTH PLAIN with these credentials
  -f ADDR         MAIL FROM, default bench@client.test
  -t ADDR         RCPT TO, default rcpt@remote.test
  --helo NAME     EHLO name, default client.test
  --timeout S     per-reply timeout in seconds, default 30";

#[derive(Clone)]
struct Opts {
    addr: String,
    conc: usize,
    total: usize,
    per_session: usize,
    size: usize,
    starttls: bool,
    auth: Option<(String, String)>,
    from: String,
    to: String,
    helo: String,
    timeout: Duration,
}

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        addr: String::new(),
        conc: 1,
        total: 100,
        per_session: 1,
        size: 2048,
        starttls: false,
        auth: None,
        from: "bench@client.test".into(),
        to: "rcpt@remote.test".into(),
        helo: "client.test".into(),
        timeout: Duration::from_secs(30),
    };
    let (mut user, mut pass) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| format!("{a} needs a value"));
        let num = |v: String| v.parse::<usize>().map_err(|_| format!("bad number {v:?}"));
        match a.as_str() {
            "-c" => o.conc = num(val()?)?,
            "-n" => o.total = num(val()?)?,
            "-k" => o.per_session = num(val()?)?,
            "-s" => o.size = num(val()?)?,
            "--starttls" => o.starttls = true,
            "--user" => user = Some(val()?),
            "--pass" => pass = Some(val()?),
            "-f" => o.from = val()?,
            "-t" => o.to = val()?,
            "--helo" => o.helo = val()?,
            "--timeout" => o.timeout = Duration::from_secs(num(val()?)? as u64),
            "-h" | "--help" => return Err(String::new()),
            _ if a.starts_with('-') => return Err(format!("unknown option {a}")),
            _ => o.addr = a,
        }
    }
    match (user, pass) {
        (Some(u), Some(p)) => o.auth = Some((u, p)),
        (None, None) => {}
        _ => return Err("--user and --pass go together".into()),
    }
    if o.addr.is_empty() || o.conc == 0 || o.per_session == 0 {
        return Err("HOST:PORT missing, or -c/-k is 0".into());
    }
    Ok(o)
}

enum Stream {
    /// only between taking the TCP stream out and wrapping it in TLS
    Gone,
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Gone => Err(io::ErrorKind::NotConnected.into()),
            Stream::Plain(s) => s.read(b),
            Stream::Tls(s) => s.read(b),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Gone => Err(io::ErrorKind::NotConnected.into()),
            Stream::Plain(s) => s.write(b),
            Stream::Tls(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Gone => Err(io::ErrorKind::NotConnected.into()),
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

struct Session {
    stream: Stream,
    buf: Vec<u8>,
}

impl Session {
    /// Reads one (possibly multi-line) reply; returns its code and text.
    fn reply(&mut self) -> Result<(u16, String), String> {
        let mut text = String::new();
        loop {
            let line = self.line()?;
            let l = line.as_bytes();
            if l.len() < 3 || !l[..3].iter().all(u8::is_ascii_digit) {
                return Err(format!("malformed reply line {line:?}"));
            }
            text.push_str(&line);
            text.push('\n');
            if l.get(3) != Some(&b'-') {
                let code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
                return Ok((code, text));
            }
        }
    }

    fn line(&mut self) -> Result<String, String> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let raw: Vec<u8> = self.buf.drain(..=i).collect();
                let s = String::from_utf8_lossy(&raw);
                return Ok(s.trim_end_matches(['\r', '\n']).to_string());
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err("connection closed by server".into()),
                Ok(n) => self
                    .buf
                    .extend_from_slice(chunk.get(..n).unwrap_or_default()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }

    fn send(&mut self, data: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(data)
            .and_then(|_| self.stream.flush())
            .map_err(|e| format!("write: {e}"))
    }

    /// Sends a command and expects a reply in the `want` class (2 or 3).
    fn cmd(&mut self, line: &str, want: u16) -> Result<String, String> {
        self.send(format!("{line}\r\n").as_bytes())?;
        self.expect(line, want)
    }

    fn expect(&mut self, what: &str, want: u16) -> Result<String, String> {
        let (code, text) = self.reply()?;
        if code / 100 != want {
            let what = if what.starts_with("AUTH") {
                "AUTH PLAIN ..."
            } else {
                what
            };
            return Err(format!("{what} -> {}", text.trim_end()));
        }
        Ok(text)
    }
}

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A message of exactly `size` octets (when size allows) ending in CRLF,
/// followed by the end-of-data dot. No line starts with '.'.
fn message(o: &Opts, seq: usize) -> Vec<u8> {
    let mut m = format!(
        "From: <{}>\r\nTo: <{}>\r\nSubject: bench {seq}\r\nDate: Thu, 03 Dec 2026 08:00:00 +0000\r\n\
         Message-ID: <bench.{seq}.{}@client.test>\r\n\r\n",
        o.from,
        o.to,
        std::process::id()
    )
    .into_bytes();
    let line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcd\r\n";
    while m.len() + line.len() <= o.size {
        m.extend_from_slice(line);
    }
    let rest = o.size.saturating_sub(m.len());
    if rest >= 3 {
        m.extend(std::iter::repeat_n(b'x', rest - 2));
        m.extend_from_slice(b"\r\n");
    }
    m.extend_from_slice(b".\r\n");
    m
}

struct Shared {
    opts: Opts,
    tls: Option<Arc<ClientConfig>>,
    /// messages not yet claimed by a session
    left: AtomicUsize,
    ok: AtomicUsize,
    fail: AtomicUsize,
    sessions: AtomicUsize,
    session_errors: AtomicUsize,
    /// microseconds since start of the last DATA 2xx
    last_ok_us: AtomicU64,
    first_error: Mutex<Option<String>>,
    start: Instant,
}

impl Shared {
    fn claim(&self) -> usize {
        let k = self.opts.per_session;
        let mut cur = self.left.load(Ordering::Relaxed);
        loop {
            let take = cur.min(k);
            if take == 0 {
                return 0;
            }
            match self
                .left
                .compare_exchange(cur, cur - take, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return take,
                Err(now) => cur = now,
            }
        }
    }

    fn error(&self, e: String) {
        let mut f = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some(e);
        }
    }
}

/// One session carrying `count` messages; returns how many got a 2xx.
fn session(sh: &Shared, count: usize, seq0: usize) -> Result<usize, (usize, String)> {
    let o = &sh.opts;
    let mut done = 0;
    let fail = |done, e| Err((done, e));
    let addr = match o.addr.to_socket_addrs().ok().and_then(|mut a| a.next()) {
        Some(a) => a,
        None => return fail(0, format!("cannot resolve {}", o.addr)),
    };
    let tcp = match TcpStream::connect_timeout(&addr, o.timeout) {
        Ok(t) => t,
        Err(e) => return fail(0, format!("connect: {e}")),
    };
    let _ = tcp.set_nodelay(true);
    let _ = tcp.set_read_timeout(Some(o.timeout));
    let _ = tcp.set_write_timeout(Some(o.timeout));
    let mut s = Session {
        stream: Stream::Plain(tcp),
        buf: Vec::new(),
    };
    let r = (|| -> Result<(), String> {
        s.expect("greeting", 2)?;
        let ehlo = format!("EHLO {}", o.helo);
        s.cmd(&ehlo, 2)?;
        if let Some(cfg) = &sh.tls {
            s.cmd("STARTTLS", 2)?;
            if !s.buf.is_empty() {
                return Err("data after the STARTTLS reply".into());
            }
            let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
            let conn = ClientConnection::new(cfg.clone(), name).map_err(|e| e.to_string())?;
            let tcp = match std::mem::replace(&mut s.stream, Stream::Gone) {
                Stream::Plain(t) => t,
                _ => return Err("STARTTLS on a TLS session".into()),
            };
            s.stream = Stream::Tls(Box::new(StreamOwned::new(conn, tcp)));
            s.cmd(&ehlo, 2)?;
        }
        if let Some((u, p)) = &o.auth {
            let token = base64(format!("\0{u}\0{p}").as_bytes());
            s.cmd(&format!("AUTH PLAIN {token}"), 2)?;
        }
        for i in 0..count {
            if i > 0 {
                s.cmd("RSET", 2)?;
            }
            s.cmd(&format!("MAIL FROM:<{}>", o.from), 2)?;
            s.cmd(&format!("RCPT TO:<{}>", o.to), 2)?;
            s.cmd("DATA", 3)?;
            s.send(&message(o, seq0 + i))?;
            s.expect("end of DATA", 2)?;
            done += 1;
            sh.ok.fetch_add(1, Ordering::Relaxed);
            let us = sh.start.elapsed().as_micros() as u64;
            sh.last_ok_us.fetch_max(us, Ordering::Relaxed);
        }
        s.cmd("QUIT", 2)?;
        Ok(())
    })();
    match r {
        Ok(()) => Ok(done),
        Err(e) => fail(done, e),
    }
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("smtp_load: {e}");
            }
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    let tls = if o.starttls {
        // tern's own "accept any certificate" client (bench only), with
        // every session a full handshake, as for a new client: tern has no
        // resumption, a Postfix with tickets would gain.
        let mut c = (*tern::tls::client_config_no_verify()).clone();
        c.resumption = rustls::client::Resumption::disabled();
        Some(Arc::new(c))
    } else {
        None
    };
    let sh = Shared {
        left: AtomicUsize::new(o.total),
        opts: o,
        tls,
        ok: AtomicUsize::new(0),
        fail: AtomicUsize::new(0),
        sessions: AtomicUsize::new(0),
        session_errors: AtomicUsize::new(0),
        last_ok_us: AtomicU64::new(0),
        first_error: Mutex::new(None),
        start: Instant::now(),
    };
    let seq = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..sh.opts.conc {
            scope.spawn(|| loop {
                let count = sh.claim();
                if count == 0 {
                    break;
                }
                let seq0 = seq.fetch_add(count, Ordering::Relaxed);
                sh.sessions.fetch_add(1, Ordering::Relaxed);
                if let Err((done, e)) = session(&sh, count, seq0) {
                    sh.session_errors.fetch_add(1, Ordering::Relaxed);
                    sh.fail.fetch_add(count - done, Ordering::Relaxed);
                    sh.error(e);
                }
            });
        }
    });
    let elapsed = sh.start.elapsed().as_secs_f64();
    let first = sh
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    // this process's own CPU time (user + system, all threads)
    let cpu = {
        // SAFETY: getrusage only writes the struct we pass.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } == 0 {
            let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            tv(ru.ru_utime) + tv(ru.ru_stime)
        } else {
            f64::NAN
        }
    };
    println!(
        "ok={} fail={} sessions={} session_errors={} elapsed={:.4} last_ok={:.4} cpu={:.3} first_error={:?}",
        sh.ok.load(Ordering::Relaxed),
        sh.fail.load(Ordering::Relaxed),
        sh.sessions.load(Ordering::Relaxed),
        sh.session_errors.load(Ordering::Relaxed),
        elapsed,
        sh.last_ok_us.load(Ordering::Relaxed) as f64 / 1e6,
        cpu,
        first.unwrap_or_default()
    );
    if sh.fail.load(Ordering::Relaxed) > 0 {
        std::process::exit(1);
    }
}
