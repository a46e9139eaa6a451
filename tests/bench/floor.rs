//! The floor: the least work a durable MTA can do per message (issue 16,
//! workload 6). Not part of tern; built as a cargo example
//! (`cargo build --release --example floor`) and driven by
//! `tests/bench/floor.py`.
//!
//! One thread, one mio event loop. It accepts SMTP sessions, sends a 220
//! banner, answers EHLO/HELO/MAIL/RCPT/RSET/NOOP/QUIT with fixed replies
//! (it looks at the command verb only), reads DATA until `\r\n.\r\n` and
//! writes each message to a file of its own in the spool, made durable the
//! way tern makes its spool files durable (see `src/spool/mod.rs`, "The
//! commit point"):
//!
//! - at DATA: `openat(tmp/ID, O_CREAT|O_EXCL)`; the envelope (the raw MAIL
//!   and RCPT lines) and the content go through a 4 KiB buffer, so a small
//!   message costs one `write`;
//! - at the end of the loop turn, for every message that ended in it: the
//!   last `write`, `renameat2(tmp/ID, msg/ID, RENAME_NOREPLACE)`; then one
//!   `fdatasync(file)` + `fsync(msg/)` if the turn ended one message, one
//!   `syncfs(msg/)` if it ended several; `close(file)`; then the 250s.
//!
//! Nothing else: no queue, no delivery, no logging, no limits, no dot
//! unstuffing, no parsing of addresses. The file is not tern's format.
//!
//! Usage: `floor --listen 127.0.0.1:PORT --spool DIR [--no-sync]`

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(usize::MAX);
/// Like tern's `INCOMING_BUFFER`: a small message costs one `write`.
const FILE_BUFFER: usize = 4096;
/// A command line longer than this ends the session.
const MAX_LINE: usize = 4096;
const END_OF_DATA: &[u8; 5] = b"\r\n.\r\n";

const BANNER: &[u8] = b"220 floor.test ESMTP\r\n";
const EHLO: &[u8] = b"250-floor.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 10240000\r\n";
const HELO: &[u8] = b"250 floor.test\r\n";
const OK: &[u8] = b"250 2.0.0 OK\r\n";
const GO_AHEAD: &[u8] = b"354 End data with <CR><LF>.<CR><LF>\r\n";
const QUEUED: &[u8] = b"250 2.0.0 queued\r\n";
const NOT_QUEUED: &[u8] = b"451 4.3.0 cannot store the message\r\n";
const BYE: &[u8] = b"221 2.0.0 bye\r\n";
const UNKNOWN: &[u8] = b"500 5.5.1 unknown command\r\n";

fn die(msg: &str) -> ! {
    eprintln!("floor: {msg}");
    std::process::exit(2)
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// An open directory of the spool.
fn open_dir(path: &Path) -> io::Result<File> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: open(2) of a NUL-terminated path; the descriptor is owned by the File.
    let fd = cvt(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: fd was just opened and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Spool names: 16 hex digits, NUL-terminated, for the *at(2) calls.
fn name(id: u64) -> [u8; 17] {
    let mut b = [0u8; 17];
    for (i, slot) in b.iter_mut().take(16).enumerate() {
        let nibble = (id >> (60 - 4 * i)) & 0xf;
        *slot = b"0123456789abcdef"[nibble as usize];
    }
    b
}

struct Spool {
    tmp: File,
    msg: File,
    next_id: u64,
    sync: bool,
}

impl Spool {
    fn open(root: &Path, sync: bool) -> io::Result<Spool> {
        for d in ["", "tmp", "msg"] {
            match std::fs::create_dir(root.join(d)) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Ok(Spool {
            tmp: open_dir(&root.join("tmp"))?,
            msg: open_dir(&root.join("msg"))?,
            next_id: now << 24,
            sync,
        })
    }

    /// `openat(tmp/ID, O_CREAT|O_EXCL)`.
    fn create(&mut self) -> io::Result<(u64, File)> {
        loop {
            let id = self.next_id;
            self.next_id += 1;
            let n = name(id);
            // SAFETY: openat(2) relative to a directory we own, NUL-terminated name.
            let fd = unsafe {
                libc::openat(
                    self.tmp.as_raw_fd(),
                    n.as_ptr().cast(),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
                    0o600 as libc::c_uint,
                )
            };
            if fd >= 0 {
                // SAFETY: fd was just opened and is owned by nobody else.
                return Ok((id, unsafe { File::from_raw_fd(fd) }));
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(e);
            }
        }
    }

    /// `renameat2(tmp/ID, msg/ID, RENAME_NOREPLACE)` (through syscall(2):
    /// musl has no wrapper).
    fn publish(&self, id: u64) -> io::Result<()> {
        let n = name(id);
        // SAFETY: renameat2(2) between two directories we own, NUL-terminated names.
        let r = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                self.tmp.as_raw_fd() as libc::c_long,
                n.as_ptr(),
                self.msg.as_raw_fd() as libc::c_long,
                n.as_ptr(),
                libc::RENAME_NOREPLACE as libc::c_long,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn unlink(dir: &File, id: u64) {
        let n = name(id);
        // SAFETY: unlinkat(2) relative to a directory we own.
        unsafe { libc::unlinkat(dir.as_raw_fd(), n.as_ptr().cast(), 0) };
    }

    /// tern's group commit: seal and rename each file, then one
    /// `fdatasync` + directory `fsync` for a lone message, one `syncfs` for
    /// several. One result per message.
    fn commit(&mut self, batch: &mut [(usize, Incoming)]) -> Vec<bool> {
        let mut ok: Vec<bool> = Vec::with_capacity(batch.len());
        for (_, inc) in batch.iter_mut() {
            let r = inc.flush().and_then(|()| self.publish(inc.id));
            if r.is_err() {
                Spool::unlink(&self.tmp, inc.id);
            }
            ok.push(r.is_ok());
        }
        let sealed = ok.iter().filter(|o| **o).count();
        if self.sync && sealed > 0 {
            let synced = if sealed == 1 {
                let lone = batch
                    .iter()
                    .zip(&ok)
                    .find(|(_, o)| **o)
                    .map(|((_, inc), _)| inc);
                match lone {
                    Some(inc) => cvt(unsafe { libc::fdatasync(inc.file.as_raw_fd()) })
                        .and_then(|_| cvt(unsafe { libc::fsync(self.msg.as_raw_fd()) })),
                    None => Ok(0),
                }
            } else {
                // SAFETY: syncfs(2) on a descriptor we own.
                cvt(unsafe { libc::syncfs(self.msg.as_raw_fd()) })
            };
            if synced.is_err() {
                for ((_, inc), o) in batch.iter().zip(ok.iter_mut()) {
                    if *o {
                        Spool::unlink(&self.msg, inc.id);
                        *o = false;
                    }
                }
            }
        }
        ok
    }
}

/// A message being received: its file and a 4 KiB write buffer.
struct Incoming {
    id: u64,
    file: File,
    buf: Vec<u8>,
}

impl Incoming {
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        if self.buf.len() + data.len() > FILE_BUFFER {
            self.flush()?;
            if data.len() >= FILE_BUFFER {
                return self.file.write_all(data);
            }
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.file.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }
}

#[derive(PartialEq)]
enum State {
    Command,
    /// In DATA; the value is how much of `\r\n.\r\n` was just seen.
    Data(usize),
    /// The message ended; waiting for the end of the loop turn's commit.
    Committing,
    /// QUIT answered: close once the output is written.
    Closing,
}

struct Conn {
    stream: TcpStream,
    state: State,
    input: Vec<u8>,
    output: Vec<u8>,
    /// The raw MAIL and RCPT lines: the envelope written at DATA.
    envelope: Vec<u8>,
    incoming: Option<Incoming>,
}

enum Step {
    Continue,
    Close,
}

impl Conn {
    /// Handles what is in `input`; stops at the end of a message (the reply
    /// waits for the commit) and at QUIT.
    fn process(&mut self, spool: &mut Spool, ended: &mut Vec<usize>, idx: usize) -> Step {
        let mut pos = 0;
        let step = loop {
            match self.state {
                State::Committing | State::Closing => break Step::Continue,
                State::Data(seen) => {
                    let rest = self.input.get(pos..).unwrap_or_default();
                    let mut s = seen;
                    let mut end = None;
                    for (i, &b) in rest.iter().enumerate() {
                        s = if END_OF_DATA.get(s) == Some(&b) {
                            s + 1
                        } else if b == b'\r' {
                            1
                        } else {
                            0
                        };
                        if s == END_OF_DATA.len() {
                            end = Some(i + 1);
                            break;
                        }
                    }
                    let take = end.unwrap_or(rest.len());
                    let Some(inc) = self.incoming.as_mut() else {
                        break Step::Close;
                    };
                    // The content without the final ".\r\n".
                    let content = if end.is_some() {
                        take.saturating_sub(3)
                    } else {
                        take
                    };
                    // (When the ".\r\n" straddles two reads, a few octets of
                    // it were written already: the floor does not care.)
                    if inc.write(rest.get(..content).unwrap_or_default()).is_err() {
                        self.incoming = None;
                        break Step::Close;
                    }
                    pos += take;
                    if end.is_some() {
                        self.state = State::Committing;
                        ended.push(idx);
                    } else {
                        self.state = State::Data(s);
                        break Step::Continue;
                    }
                }
                State::Command => {
                    let rest = self.input.get(pos..).unwrap_or_default();
                    let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                        if rest.len() > MAX_LINE {
                            break Step::Close;
                        }
                        break Step::Continue;
                    };
                    let line = &rest[..=nl];
                    let verb = line.get(..4).map(|v| {
                        let mut u = [0u8; 4];
                        for (d, s) in u.iter_mut().zip(v) {
                            *d = s.to_ascii_uppercase();
                        }
                        u
                    });
                    match verb.as_ref().map(|v| &v[..]) {
                        Some(b"EHLO") => self.output.extend_from_slice(EHLO),
                        Some(b"HELO") => self.output.extend_from_slice(HELO),
                        Some(b"MAIL") => {
                            self.envelope.clear();
                            self.envelope.extend_from_slice(line);
                            self.output.extend_from_slice(OK);
                        }
                        Some(b"RCPT") => {
                            self.envelope.extend_from_slice(line);
                            self.output.extend_from_slice(OK);
                        }
                        Some(b"RSET") => {
                            self.envelope.clear();
                            self.output.extend_from_slice(OK);
                        }
                        Some(b"NOOP") => self.output.extend_from_slice(OK),
                        Some(b"QUIT") => {
                            self.output.extend_from_slice(BYE);
                            self.state = State::Closing;
                        }
                        Some(b"DATA") => match spool.create() {
                            Ok((id, file)) => {
                                let mut inc = Incoming {
                                    id,
                                    file,
                                    buf: Vec::with_capacity(FILE_BUFFER),
                                };
                                let _ = inc.write(&self.envelope);
                                let _ = inc.write(b"\r\n");
                                self.incoming = Some(inc);
                                self.output.extend_from_slice(GO_AHEAD);
                                self.state = State::Data(2);
                            }
                            Err(_) => self.output.extend_from_slice(NOT_QUEUED),
                        },
                        _ => self.output.extend_from_slice(UNKNOWN),
                    }
                    pos += nl + 1;
                }
            }
        };
        self.input.drain(..pos);
        step
    }

    /// Writes what it can of `output`; `Close` on error or once a closing
    /// session has said goodbye.
    fn flush(&mut self) -> Step {
        while !self.output.is_empty() {
            match self.stream.write(&self.output) {
                Ok(0) => return Step::Close,
                Ok(n) => {
                    self.output.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Step::Close,
            }
        }
        if self.state == State::Closing {
            Step::Close
        } else {
            Step::Continue
        }
    }

    /// Reads until the socket is drained (a short read means it is: the
    /// next arrival raises a new edge, so no read ends in `EAGAIN` just to
    /// find out, as in tern); `Close` at end of stream or error.
    /// With `to_eof` (the peer closed its side) it reads on to the end.
    fn fill(&mut self, buf: &mut [u8], to_eof: bool) -> Step {
        loop {
            match self.stream.read(buf) {
                Ok(0) => return Step::Close,
                Ok(n) if n < buf.len() && !to_eof => {
                    self.input.extend_from_slice(&buf[..n]);
                    return Step::Continue;
                }
                Ok(n) => self.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Step::Close,
            }
        }
    }
}

struct Server {
    poll: Poll,
    listener: TcpListener,
    spool: Spool,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
}

impl Server {
    fn close(&mut self, idx: usize) {
        if let Some(c) = self.conns.get_mut(idx).and_then(Option::take) {
            if let Some(inc) = c.incoming {
                Spool::unlink(&self.spool.tmp, inc.id);
            }
            // Dropping the stream closes it, which also takes it out of the
            // epoll set (the floor saves the deregister call).
            self.free.push(idx);
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let idx = self.free.pop().unwrap_or_else(|| {
                        self.conns.push(None);
                        self.conns.len() - 1
                    });
                    if self
                        .poll
                        .registry()
                        .register(
                            &mut stream,
                            Token(idx),
                            Interest::READABLE | Interest::WRITABLE,
                        )
                        .is_err()
                    {
                        self.free.push(idx);
                        continue;
                    }
                    let mut c = Conn {
                        stream,
                        state: State::Command,
                        input: Vec::new(),
                        output: Vec::new(),
                        envelope: Vec::new(),
                        incoming: None,
                    };
                    c.output.extend_from_slice(BANNER);
                    let step = c.flush();
                    self.conns[idx] = Some(c);
                    if let Step::Close = step {
                        self.close(idx);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // EMFILE and the like: try again on the next readiness event.
                Err(_) => return,
            }
        }
    }

    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        let mut buf = vec![0u8; 16 * 1024];
        let mut ended: Vec<usize> = Vec::new();
        loop {
            if let Err(e) = self.poll.poll(&mut events, None) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for ev in events.iter() {
                if ev.token() == LISTENER {
                    self.accept();
                    continue;
                }
                let idx = ev.token().0;
                let Some(c) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
                    continue;
                };
                let mut close = false;
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    let eof = matches!(c.fill(&mut buf, ev.is_read_closed()), Step::Close);
                    close = matches!(c.process(&mut self.spool, &mut ended, idx), Step::Close);
                    // At end of stream, what arrived before it was handled.
                    close |= eof;
                }
                if !close {
                    close = matches!(c.flush(), Step::Close);
                }
                if close {
                    self.close(idx);
                    ended.retain(|&i| i != idx);
                }
            }
            // A commit may let a session go on to a message its client
            // pipelined behind the last one: commit that too before waiting.
            while !ended.is_empty() {
                self.commit_turn(&mut ended);
            }
        }
    }

    /// The end of the loop turn: commit every message that ended in it,
    /// answer each, and go on with what its client sent after it.
    fn commit_turn(&mut self, ended: &mut Vec<usize>) {
        let mut batch: Vec<(usize, Incoming)> = Vec::with_capacity(ended.len());
        for idx in ended.drain(..) {
            if let Some(inc) = self.conns[idx].as_mut().and_then(|c| c.incoming.take()) {
                batch.push((idx, inc));
            }
        }
        let ok = self.spool.commit(&mut batch);
        // The files close here, after the sync (as tern's do).
        let answered: Vec<(usize, bool)> = batch.into_iter().map(|(i, _)| i).zip(ok).collect();
        for (idx, stored) in answered {
            let Some(c) = self.conns[idx].as_mut() else {
                continue;
            };
            c.output
                .extend_from_slice(if stored { QUEUED } else { NOT_QUEUED });
            c.state = State::Command;
            let mut close = matches!(c.process(&mut self.spool, ended, idx), Step::Close);
            if !close {
                close = matches!(c.flush(), Step::Close);
            }
            if close {
                self.close(idx);
            }
        }
        // Messages pipelined right behind the one just committed wait for
        // the next turn (`ended` keeps them).
    }
}

fn main() {
    let mut listen: Option<SocketAddr> = None;
    let mut spool_dir: Option<String> = None;
    let mut sync = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => {
                let v = args
                    .next()
                    .unwrap_or_else(|| die("--listen needs ADDR:PORT"));
                listen = Some(v.parse().unwrap_or_else(|_| die("bad --listen address")));
            }
            "--spool" => spool_dir = Some(args.next().unwrap_or_else(|| die("--spool needs DIR"))),
            "--no-sync" => sync = false,
            "-h" | "--help" => {
                println!("usage: floor --listen 127.0.0.1:PORT --spool DIR [--no-sync]");
                return;
            }
            _ => die(&format!("unknown argument {a:?} (see --help)")),
        }
    }
    let (Some(addr), Some(dir)) = (listen, spool_dir) else {
        die("usage: floor --listen 127.0.0.1:PORT --spool DIR [--no-sync]")
    };
    let spool =
        Spool::open(Path::new(&dir), sync).unwrap_or_else(|e| die(&format!("spool {dir}: {e}")));
    let poll = Poll::new().unwrap_or_else(|e| die(&format!("epoll: {e}")));
    let mut listener =
        TcpListener::bind(addr).unwrap_or_else(|e| die(&format!("listen {addr}: {e}")));
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .unwrap_or_else(|e| die(&format!("register: {e}")));
    let mut server = Server {
        poll,
        listener,
        spool,
        conns: Vec::new(),
        free: Vec::new(),
    };
    if let Err(e) = server.run() {
        die(&format!("event loop: {e}"));
    }
}
