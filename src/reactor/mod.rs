//! The reactor: the only code that imports mio.
//!
//! It owns every socket (listeners, TCP connections, UDP sockets for DNS,
//! the unix control socket and its connections),
//! one timer heap for the whole process and the signal self-pipe. Callers
//! hold [`SockId`] handles (slab index + generation, so a stale handle to a
//! reused slot is detected) and get [`Readiness`] reports back from [`Reactor::poll`].
//!
//! Rules that keep the single thread fair (mio's edge-triggered contract):
//! readiness is remembered per socket until the owner drains it to
//! `WouldBlock`; the owner bounds the work it does per wakeup and may leave
//! readiness set, in which case the next `poll` does not sleep and reports
//! the socket again. Timers are data: `(deadline, key)` pairs; cancellation is
//! lazy (the owner compares with its current deadline when one fires).

pub mod signals;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream, UdpSocket, UnixListener, UnixStream};
use mio::{Interest, Poll, Token};

/// Connections accepted per listener per wakeup, so one flood of connects
/// cannot starve established sessions.
pub const ACCEPT_BATCH: usize = 64;
/// Upper bound on events handled per `poll`.
pub const EVENT_CAPACITY: usize = 256;
const SIGNAL_TOKEN: Token = Token(usize::MAX - 1);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockId {
    index: u32,
    generation: u32,
}

/// A map keyed by [`SockId`]: the IDs are the reactor's own slot numbers,
/// not chosen by peers (see `idmap`).
pub type SockMap<V> = crate::idmap::IdMap<SockId, V>;

enum Socket {
    Listener(TcpListener),
    Stream(TcpStream),
    Udp(UdpSocket),
    /// The control socket (see `control`).
    UnixListener(UnixListener),
    Unix(UnixStream),
    /// The read end of a child's stdout (a token command, `daemon::oauth`).
    Pipe(mio::unix::pipe::Receiver),
}

struct Slot {
    generation: u32,
    socket: Option<Socket>,
    readable: bool,
    writable: bool,
    interest: Option<Interest>,
}

#[derive(Debug)]
pub enum Readiness {
    /// A listener has pending connections: call [`Reactor::accept`].
    Acceptable(SockId),
    /// A stream or UDP socket may be read or written (or has an error).
    Ready(SockId),
    Signal(i32),
}

pub struct Reactor<K> {
    poll: Poll,
    events: mio::Events,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Sockets with remembered readiness the owner has not drained yet.
    hot: Vec<SockId>,
    /// Scratch for `poll`: the sockets seen this wait (kept, so a wait
    /// allocates nothing).
    seen: Vec<SockId>,
    timers: BinaryHeap<Reverse<(Instant, u64, K)>>,
    timer_seq: u64,
    signals: signals::SignalPipe,
    /// The one buffer stream reads land in ([`Reactor::read_stream`]),
    /// zeroed once: a buffer on the stack per read was zeroed per read
    /// (16 KiB, 15 % of the instructions spent per accepted message).
    scratch: Box<[u8]>,
}

/// Most bytes one [`Reactor::read_stream`] takes.
pub const STREAM_READ: usize = 16 * 1024;

impl<K: Ord + Copy> Reactor<K> {
    pub fn new() -> io::Result<Reactor<K>> {
        let poll = Poll::new()?;
        let signals = signals::SignalPipe::install()?;
        poll.registry().register(
            &mut mio::unix::SourceFd(&signals.read_fd()),
            SIGNAL_TOKEN,
            Interest::READABLE,
        )?;
        Ok(Reactor {
            poll,
            events: mio::Events::with_capacity(EVENT_CAPACITY),
            slots: Vec::new(),
            free: Vec::new(),
            hot: Vec::new(),
            seen: Vec::new(),
            timers: BinaryHeap::new(),
            timer_seq: 0,
            signals,
            scratch: vec![0; STREAM_READ].into_boxed_slice(),
        })
    }

    // --- sockets --------------------------------------------------------------

    fn insert(&mut self, socket: Socket, interest: Interest) -> io::Result<SockId> {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    socket: None,
                    readable: false,
                    writable: false,
                    interest: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        // The index is a slot's: just pushed, or freed by `close`.
        let Some(slot) = self.slots.get_mut(index as usize) else {
            return Err(io::Error::other("reactor: socket slot out of range"));
        };
        slot.generation = slot.generation.wrapping_add(1);
        slot.readable = false;
        slot.writable = false;
        slot.socket = Some(socket);
        let id = SockId {
            index,
            generation: slot.generation,
        };
        let token = Token(index as usize);
        let registry = self.poll.registry();
        let res = match slot.socket.as_mut() {
            Some(Socket::Listener(l)) => registry.register(l, token, interest),
            Some(Socket::Stream(s)) => registry.register(s, token, interest),
            Some(Socket::Udp(u)) => registry.register(u, token, interest),
            Some(Socket::UnixListener(l)) => registry.register(l, token, interest),
            Some(Socket::Unix(s)) => registry.register(s, token, interest),
            Some(Socket::Pipe(p)) => registry.register(p, token, interest),
            None => Ok(()),
        };
        if let Err(e) = res {
            slot.socket = None;
            self.free.push(index);
            return Err(e);
        }
        slot.interest = Some(interest);
        Ok(id)
    }

    fn slot(&mut self, id: SockId) -> Option<&mut Slot> {
        self.slots
            .get_mut(id.index as usize)
            .filter(|s| s.generation == id.generation && s.socket.is_some())
    }

    pub fn listen(&mut self, addr: SocketAddr) -> io::Result<SockId> {
        let l = TcpListener::bind(addr)?;
        self.insert(Socket::Listener(l), Interest::READABLE)
    }

    /// Listens on a unix stream socket at `path` (which must not exist).
    pub fn listen_unix(&mut self, path: &std::path::Path) -> io::Result<SockId> {
        let l = UnixListener::bind(path)?;
        self.insert(Socket::UnixListener(l), Interest::READABLE)
    }

    /// Accepts one pending connection on a unix listener; `Ok(None)` when
    /// drained.
    pub fn accept_unix(&mut self, listener: SockId) -> io::Result<Option<SockId>> {
        let Some(slot) = self.slot(listener) else {
            return Ok(None);
        };
        let Some(Socket::UnixListener(l)) = slot.socket.as_ref() else {
            return Ok(None);
        };
        match l.accept() {
            Ok((stream, _)) => self.adopt(Socket::Unix(stream)).map(Some),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Registers an accepted connection, assumed ready: its owner tries
    /// reading at once (the edge that woke the listener is not the
    /// connection's).
    fn adopt(&mut self, socket: Socket) -> io::Result<SockId> {
        let id = self.insert(socket, Interest::READABLE | Interest::WRITABLE)?;
        if let Some(s) = self.slot(id) {
            s.readable = true;
            s.writable = true;
        }
        self.hot.push(id);
        Ok(id)
    }

    /// Accepts one pending connection; `Ok(None)` when drained.
    pub fn accept(&mut self, listener: SockId) -> io::Result<Option<(SockId, SocketAddr)>> {
        let Some(slot) = self.slot(listener) else {
            return Ok(None);
        };
        let Some(Socket::Listener(l)) = slot.socket.as_ref() else {
            return Ok(None);
        };
        match l.accept() {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                self.adopt(Socket::Stream(stream))
                    .map(|id| Some((id, peer)))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Starts a non-blocking connect; completion shows as writability.
    /// Registers the read end of a pipe (non-blocking); read it with
    /// [`Reactor::read`], readiness comes as [`Readiness::Ready`].
    pub fn register_pipe(&mut self, pipe: mio::unix::pipe::Receiver) -> io::Result<SockId> {
        self.insert(Socket::Pipe(pipe), Interest::READABLE)
    }

    pub fn connect(&mut self, addr: SocketAddr) -> io::Result<SockId> {
        let s = TcpStream::connect(addr)?;
        let _ = s.set_nodelay(true);
        self.insert(Socket::Stream(s), Interest::READABLE | Interest::WRITABLE)
    }

    /// Connects to a unix stream socket (non-blocking; such a connect
    /// completes or fails at once).
    pub fn connect_unix(&mut self, path: &std::path::Path) -> io::Result<SockId> {
        let s = UnixStream::connect(path)?;
        self.insert(Socket::Unix(s), Interest::READABLE | Interest::WRITABLE)
    }

    /// After writability on a connecting stream: `Ok(Some(local address))`
    /// connected, `Ok(None)` still in progress, `Err` failed.
    pub fn connect_result(&mut self, id: SockId) -> io::Result<Option<SocketAddr>> {
        let Some(slot) = self.slot(id) else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let Some(Socket::Stream(s)) = slot.socket.as_ref() else {
            return Err(io::ErrorKind::InvalidInput.into());
        };
        if let Ok(Some(e)) | Err(e) = s.take_error() {
            return Err(e);
        }
        match s.peer_addr() {
            Ok(_) => s.local_addr().map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn udp_bind(&mut self, local: SocketAddr) -> io::Result<SockId> {
        let u = UdpSocket::bind(local)?;
        self.insert(Socket::Udp(u), Interest::READABLE)
    }

    pub fn udp_send(&mut self, id: SockId, to: SocketAddr, data: &[u8]) -> io::Result<usize> {
        match self.slot(id).and_then(|s| s.socket.as_ref()) {
            Some(Socket::Udp(u)) => u.send_to(data, to),
            _ => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    pub fn udp_recv(&mut self, id: SockId, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let slot = self.slot(id).ok_or(io::ErrorKind::NotConnected)?;
        let r = match slot.socket.as_ref() {
            Some(Socket::Udp(u)) => u.recv_from(buf),
            _ => Err(io::ErrorKind::NotConnected.into()),
        };
        if matches!(&r, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            slot.readable = false;
        }
        r
    }

    /// Reads from a stream; `WouldBlock` clears the remembered readiness.
    pub fn read(&mut self, id: SockId, buf: &mut [u8]) -> io::Result<usize> {
        let slot = self.slot(id).ok_or(io::ErrorKind::NotConnected)?;
        let r = match slot.socket.as_mut() {
            Some(Socket::Stream(s)) => s.read(buf),
            Some(Socket::Unix(s)) => s.read(buf),
            Some(Socket::Pipe(p)) => p.read(buf),
            _ => Err(io::ErrorKind::NotConnected.into()),
        };
        if matches!(&r, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            slot.readable = false;
        }
        r
    }

    /// Reads up to `want` bytes (at most [`STREAM_READ`]) from a TCP or
    /// unix stream into the reactor's buffer; the bytes are valid until
    /// the next call. `Ok(&[])` is the end of the stream.
    ///
    /// A short read does not mark the socket drained, although it was at
    /// that moment: tried, it saved the EAGAIN read after each reply but
    /// cost more (at c=1 that read usually finds the client's next
    /// command; skipping it meant another loop turn: +15 % instructions
    /// per message under callgrind).
    pub fn read_stream(&mut self, id: SockId, want: usize) -> io::Result<&[u8]> {
        let Some(slot) = self
            .slots
            .get_mut(id.index as usize)
            .filter(|s| s.generation == id.generation)
        else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let want = want.min(self.scratch.len());
        let buf = self.scratch.get_mut(..want).unwrap_or_default();
        let r = match slot.socket.as_mut() {
            Some(Socket::Stream(s)) => s.read(buf),
            Some(Socket::Unix(s)) => s.read(buf),
            _ => Err(io::ErrorKind::NotConnected.into()),
        };
        match r {
            Ok(n) => Ok(self.scratch.get(..n).unwrap_or_default()),
            Err(e) => {
                if e.kind() == io::ErrorKind::WouldBlock {
                    slot.readable = false;
                }
                Err(e)
            }
        }
    }

    pub fn write(&mut self, id: SockId, data: &[u8]) -> io::Result<usize> {
        let slot = self.slot(id).ok_or(io::ErrorKind::NotConnected)?;
        let r = match slot.socket.as_mut() {
            Some(Socket::Stream(s)) => s.write(data),
            Some(Socket::Unix(s)) => s.write(data),
            _ => Err(io::ErrorKind::NotConnected.into()),
        };
        if matches!(&r, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            slot.writable = false;
        }
        r
    }

    pub fn is_readable(&mut self, id: SockId) -> bool {
        self.slot(id).is_some_and(|s| s.readable)
    }

    pub fn is_writable(&mut self, id: SockId) -> bool {
        self.slot(id).is_some_and(|s| s.writable)
    }

    /// The owner stopped before draining (bounded work per wakeup): report
    /// the socket again on the next poll without sleeping.
    pub fn mark_hot(&mut self, id: SockId) {
        if self.slot(id).is_some() {
            self.hot.push(id);
        }
    }

    pub fn close(&mut self, id: SockId) {
        let Some(slot) = self.slot(id) else { return };
        let socket = slot.socket.take();
        slot.interest = None;
        let registry = self.poll.registry();
        match socket {
            Some(Socket::Listener(mut l)) => {
                let _ = registry.deregister(&mut l);
            }
            Some(Socket::Stream(mut s)) => {
                // Closing the descriptor sends the FIN; no shutdown(2) needed.
                // mio's contract is deregister-before-drop (it would save
                // one epoll_ctl per connection on Linux, unmeasurably).
                let _ = registry.deregister(&mut s);
            }
            Some(Socket::Udp(mut u)) => {
                let _ = registry.deregister(&mut u);
            }
            Some(Socket::UnixListener(mut l)) => {
                let _ = registry.deregister(&mut l);
            }
            Some(Socket::Unix(mut s)) => {
                let _ = registry.deregister(&mut s);
            }
            Some(Socket::Pipe(mut p)) => {
                let _ = registry.deregister(&mut p);
            }
            None => {}
        }
        self.free.push(id.index);
    }

    // --- timers -----------------------------------------------------------------

    pub fn add_timer(&mut self, deadline: Instant, key: K) {
        self.timer_seq += 1;
        self.timers.push(Reverse((deadline, self.timer_seq, key)));
    }

    /// Pops one timer that is due at `now`.
    pub fn pop_timer(&mut self, now: Instant) -> Option<K> {
        match self.timers.peek() {
            Some(Reverse((t, _, _))) if *t <= now => self.timers.pop().map(|Reverse((_, _, k))| k),
            _ => None,
        }
    }

    // --- the wait -----------------------------------------------------------------

    /// Waits for readiness, a signal, or the next timer (capped by
    /// `max_wait`), and appends what happened to `out`.
    pub fn poll(&mut self, max_wait: Option<Duration>, out: &mut Vec<Readiness>) -> io::Result<()> {
        let now = Instant::now();
        let mut wait = self
            .timers
            .peek()
            .map(|Reverse((t, _, _))| t.saturating_duration_since(now));
        if let Some(m) = max_wait {
            wait = Some(wait.map_or(m, |w| w.min(m)));
        }
        if !self.hot.is_empty() {
            wait = Some(Duration::ZERO);
        }
        if let Err(e) = self.poll.poll(&mut self.events, wait) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        let mut seen = std::mem::take(&mut self.seen);
        seen.clear();
        seen.append(&mut self.hot);
        let mut signalled = false;
        for ev in self.events.iter() {
            if ev.token() == SIGNAL_TOKEN {
                signalled = true;
                continue;
            }
            let index = ev.token().0;
            let Some(slot) = self.slots.get_mut(index) else {
                continue;
            };
            if slot.socket.is_none() {
                continue;
            }
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                slot.readable = true;
            }
            if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
                slot.writable = true;
            }
            seen.push(SockId {
                index: index as u32,
                generation: slot.generation,
            });
        }
        // Edge-triggered: the pipe is drained whole, and only when it became
        // readable (not one wasted read(2) per wakeup).
        if signalled {
            for sig in self.signals.drain() {
                out.push(Readiness::Signal(sig));
            }
        }
        seen.sort();
        seen.dedup();
        for id in seen.drain(..) {
            match self.slot(id).and_then(|s| s.socket.as_ref()) {
                Some(Socket::Listener(_) | Socket::UnixListener(_)) => {
                    out.push(Readiness::Acceptable(id))
                }
                Some(_) => out.push(Readiness::Ready(id)),
                None => {}
            }
        }
        self.seen = seen;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Polls until `id` is readable (or a second passes).
    fn wait_readable(r: &mut Reactor<u8>, id: SockId) -> bool {
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut ready = Vec::new();
        while Instant::now() < deadline {
            if r.is_readable(id) {
                return true;
            }
            ready.clear();
            r.poll(Some(Duration::from_millis(50)), &mut ready).unwrap();
        }
        r.is_readable(id)
    }

    /// Reads land in the reactor's buffer, whole and in order; only
    /// EAGAIN marks the socket not readable, until the next edge (new
    /// data, the end of the stream).
    #[test]
    fn stream_reads_and_readiness() {
        let mut r: Reactor<u8> = Reactor::new().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let id = r.connect(listener.local_addr().unwrap()).unwrap();
        let (mut peer, _) = listener.accept().unwrap();

        peer.write_all(b"0123456789").unwrap();
        assert!(wait_readable(&mut r, id));
        assert_eq!(r.read_stream(id, 100).unwrap(), b"0123456789");
        assert!(r.is_readable(id));
        let e = r.read_stream(id, 100).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(!r.is_readable(id));

        peer.write_all(&[b'x'; 150]).unwrap();
        assert!(wait_readable(&mut r, id));
        assert_eq!(r.read_stream(id, 100).unwrap(), &[b'x'; 100][..]);
        assert_eq!(r.read_stream(id, 100).unwrap(), &[b'x'; 50][..]);
        assert!(r.read_stream(id, 100).is_err());
        assert!(!r.is_readable(id));

        // The end of the stream is an edge too, and reads as empty.
        drop(peer);
        assert!(wait_readable(&mut r, id));
        assert_eq!(r.read_stream(id, 100).unwrap(), b"");
    }

    /// A socket closed with its end of stream unread, remembered as hot
    /// and reported in the same wait, then its slot reused by a new
    /// connection: nothing of the old one reaches the new one (no
    /// readiness, no end of stream), and the old handle reads nothing.
    #[test]
    fn a_reused_slot_inherits_nothing_from_its_last_socket() {
        let mut r: Reactor<u8> = Reactor::new().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let old = r.connect(addr).unwrap();
        let (peer, _) = listener.accept().unwrap();
        drop(peer);
        assert!(wait_readable(&mut r, old));
        r.mark_hot(old);
        let mut ready = Vec::new();
        r.poll(Some(Duration::ZERO), &mut ready).unwrap();
        r.close(old);

        let new = r.connect(addr).unwrap();
        assert_eq!(new.index, old.index, "the slot is reused");
        assert_ne!(new, old);
        let (mut peer, _) = listener.accept().unwrap();
        for _ in 0..3 {
            ready.clear();
            r.poll(Some(Duration::from_millis(20)), &mut ready).unwrap();
            assert!(
                !ready
                    .iter()
                    .any(|e| matches!(e, Readiness::Ready(id) if *id == old)),
                "{ready:?}"
            );
        }
        assert!(!r.is_readable(old));
        assert_eq!(
            r.read_stream(old, 100).unwrap_err().kind(),
            io::ErrorKind::NotConnected
        );
        // The new connection: no data yet is "would block", not the end.
        if r.is_readable(new) {
            let e = r.read_stream(new, 100).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        }
        peer.write_all(b"220 hi\r\n").unwrap();
        assert!(wait_readable(&mut r, new));
        assert_eq!(r.read_stream(new, 100).unwrap(), b"220 hi\r\n");
    }
}
