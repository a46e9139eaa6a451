//! The control socket in the loop: [`ControlSocket`] owns the listening
//! unix socket and the `tern queue` connections, feeds their bytes to
//! `control::Conn` machines and hands each request to the daemon, which
//! has the queue runner carry it out on the queue and the spool
//! (`runner::requests`; the daemon is the only writer of both while it
//! runs; see the `control` module for the protocol) and gives the answer
//! back.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::Instant;

use super::{Daemon, Io, Timer};
use crate::control::{Conn, ControlReply, Request, MAX_CONNECTIONS, READ_CHUNK, SOCKET_MODE};
use crate::reactor::{Reactor, SockId};
use crate::spool::Spool;

/// The control socket and its connections.
#[derive(Default)]
pub struct ControlSocket {
    /// `None` if it could not be created, and after shutdown began.
    listener: Option<SockId>,
    conns: HashMap<SockId, Conn>,
}

/// What one accept on the control socket came to.
pub enum Accepted {
    /// A new connection: drive it.
    New(SockId),
    /// Refused (too many open); try the next.
    Refused,
    /// Nothing more pending (or an error, logged).
    Drained,
}

impl ControlSocket {
    /// Creates the control socket (at start, with the listeners; see
    /// [`Daemon::give_control_socket`] for its owner). A stale socket from a daemon that crashed is
    /// replaced: the spool lock, taken at start, says no other daemon owns
    /// it. A failure is logged and the daemon runs without one (`tern
    /// queue` then says it cannot reach the daemon).
    pub fn open(reactor: &mut Reactor<Timer>, spool: &Spool) -> ControlSocket {
        let mut control = ControlSocket::default();
        let path = spool.control_path();
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_socket() => {
                log::info!("control: replacing the stale socket {}", path.display());
                if let Err(e) = std::fs::remove_file(&path) {
                    log::error!("control: cannot remove {}: {e}", path.display());
                    return control;
                }
            }
            Ok(_) => {
                log::error!(
                    "control: {} exists and is not a socket; queue commands cannot reach the daemon",
                    path.display()
                );
                return control;
            }
            Err(_) => {}
        }
        // The socket file gets its mode from the umask at bind: narrowed
        // for the bind, so it is never more open than SOCKET_MODE, even
        // for a moment (one thread: nothing else creates files meanwhile).
        // SAFETY: umask(2) only swaps the process's file creation mask.
        let old = unsafe { libc::umask(0o777 & !SOCKET_MODE) };
        let bound = reactor.listen_unix(&path);
        // SAFETY: as above, restoring the previous mask.
        unsafe { libc::umask(old) };
        match bound {
            Ok(id) => {
                let _ =
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(SOCKET_MODE));
                log::debug!("control socket {}", path.display());
                control.listener = Some(id);
            }
            Err(e) => log::error!(
                "control: cannot create {}: {e}; queue commands cannot reach the daemon",
                path.display()
            ),
        }
        control
    }

    /// Whether the control socket exists.
    pub fn is_open(&self) -> bool {
        self.listener.is_some()
    }

    /// Closes the control socket and removes its file (at shutdown).
    pub fn close(&mut self, reactor: &mut Reactor<Timer>, spool: &Spool) {
        if let Some(id) = self.listener.take() {
            reactor.close(id);
            let _ = std::fs::remove_file(spool.control_path());
        }
        for (id, _) in self.conns.drain() {
            reactor.close(id);
        }
    }

    pub fn is_listener(&self, id: SockId) -> bool {
        self.listener == Some(id)
    }

    pub fn owns(&self, id: SockId) -> bool {
        self.conns.contains_key(&id)
    }

    /// Accepts one connection (at most [`MAX_CONNECTIONS`] open).
    pub fn accept_one(&mut self, reactor: &mut Reactor<Timer>, listener: SockId) -> Accepted {
        let id = match reactor.accept_unix(listener) {
            Ok(Some(id)) => id,
            Ok(None) => return Accepted::Drained,
            Err(e) => {
                log::warn!("control: accept: {e}");
                return Accepted::Drained;
            }
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            log::info!("control: connection refused: {MAX_CONNECTIONS} already open");
            reactor.close(id);
            return Accepted::Refused;
        }
        self.conns.insert(id, Conn::new(Instant::now()));
        Accepted::New(id)
    }

    /// Reads what the client sent, at most a request line (the machine
    /// stops wanting input there).
    pub fn read(&mut self, reactor: &mut Reactor<Timer>, id: SockId) -> Option<Request> {
        let mut buf = [0u8; READ_CHUNK];
        let mut request = None;
        if let Some(conn) = self.conns.get_mut(&id) {
            while conn.wants_input() && request.is_none() {
                match reactor.read(id, &mut buf) {
                    Ok(0) => conn.handle_eof(),
                    Ok(n) => request = conn.handle_input(buf.get(..n).unwrap_or_default()),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => conn.fail(),
                }
            }
        }
        request
    }

    /// Queues the answer (if any), writes what is pending and closes a
    /// finished connection.
    pub fn answer(
        &mut self,
        reactor: &mut Reactor<Timer>,
        id: SockId,
        reply: Option<&ControlReply>,
    ) {
        if let Some(reply) = reply {
            if let Some(conn) = self.conns.get_mut(&id) {
                conn.answer(reply);
            }
        }
        while let Some(conn) = self.conns.get_mut(&id) {
            let Some(out) = conn.poll_transmit() else {
                break;
            };
            match reactor.write(id, out) {
                Ok(0) => conn.fail(),
                Ok(n) => conn.transmitted(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => conn.fail(),
            }
        }
        if self.conns.get(&id).is_some_and(Conn::is_closed) {
            self.conns.remove(&id);
            reactor.close(id);
        }
    }

    /// Times out connections whose deadline passed; returns them (to be
    /// driven: the timeout queues an answer).
    pub fn expire(&mut self, now: Instant) -> Vec<SockId> {
        let due: Vec<SockId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline() <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in &due {
            if let Some(c) = self.conns.get_mut(id) {
                c.handle_timeout(now);
            }
        }
        due
    }
}

impl Daemon {
    /// Gives the control socket to the user the daemon runs as (it was
    /// created before privileges were dropped).
    pub fn give_control_socket(&self, uid: u32, gid: u32) -> io::Result<()> {
        if !self.control.is_open() {
            return Ok(());
        }
        std::os::unix::fs::lchown(self.spool.control_path(), Some(uid), Some(gid))
    }

    /// Closes the control socket and its connections.
    pub(super) fn close_control(&mut self) {
        self.control.close(&mut self.reactor, &self.spool);
    }

    pub(super) fn accept_control(&mut self, listener: SockId) {
        for _ in 0..MAX_CONNECTIONS {
            match self.control.accept_one(&mut self.reactor, listener) {
                Accepted::New(id) => self.drive_control(id),
                Accepted::Refused => {}
                Accepted::Drained => return,
            }
        }
        // More may be pending: come back on the next turn.
        self.reactor.mark_hot(listener);
    }

    /// Reads what the client sent, answers it, writes the reply.
    pub(super) fn drive_control(&mut self, id: SockId) {
        let request = self.control.read(&mut self.reactor, id);
        let reply = request.map(|req| self.control_request(req));
        self.control.answer(&mut self.reactor, id, reply.as_ref());
    }

    /// Times out control connections (from the tick).
    pub(super) fn sweep_control(&mut self, now: Instant) {
        for id in self.control.expire(now) {
            self.drive_control(id);
        }
    }

    /// Carries out one request: a queue run here (it scans the drops
    /// too), the rest by the queue runner.
    fn control_request(&mut self, req: Request) -> ControlReply {
        if let Request::Flush(None) = req {
            log::info!("queue run requested (tern queue flush)");
            self.flush_queue();
            return ControlReply::Flushing(None);
        }
        self.runner.control_request(&mut io!(self), req)
    }
}
