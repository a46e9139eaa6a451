//! The control socket in the loop: accepts `tern queue` connections, feeds
//! their bytes to `control::Conn` machines, and carries out each request on
//! the queue and the spool (the daemon is the only writer of both while it
//! runs; see the `control` module for the protocol).

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::Instant;

use super::{mono_now, Daemon};
use crate::control::{Conn, ErrorKind, Reply, Request, MAX_CONNECTIONS, READ_CHUNK, SOCKET_MODE};
use crate::reactor::SockId;
use crate::spool::QueueId;

impl Daemon {
    /// Creates the control socket (at start, with the listeners; see
    /// [`Daemon::give_control_socket`] for its owner). A stale socket from a daemon that crashed is
    /// replaced: the spool lock, taken at start, says no other daemon owns
    /// it. A failure is logged and the daemon runs without one (`tern
    /// queue` then says it cannot reach the daemon).
    pub(super) fn open_control(&mut self) {
        let path = self.spool.control_path();
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_socket() => {
                log::info!("control: replacing the stale socket {}", path.display());
                if let Err(e) = std::fs::remove_file(&path) {
                    log::error!("control: cannot remove {}: {e}", path.display());
                    return;
                }
            }
            Ok(_) => {
                log::error!(
                    "control: {} exists and is not a socket; queue commands cannot reach the daemon",
                    path.display()
                );
                return;
            }
            Err(_) => {}
        }
        // The socket file gets its mode from the umask at bind: narrowed
        // for the bind, so it is never more open than SOCKET_MODE, even
        // for a moment (one thread: nothing else creates files meanwhile).
        // SAFETY: umask(2) only swaps the process's file creation mask.
        let old = unsafe { libc::umask(0o777 & !SOCKET_MODE) };
        let bound = self.reactor.listen_unix(&path);
        // SAFETY: as above, restoring the previous mask.
        unsafe { libc::umask(old) };
        match bound {
            Ok(id) => {
                let _ =
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(SOCKET_MODE));
                log::debug!("control socket {}", path.display());
                self.control_listener = Some(id);
            }
            Err(e) => log::error!(
                "control: cannot create {}: {e}; queue commands cannot reach the daemon",
                path.display()
            ),
        }
    }

    /// Gives the control socket to the user the daemon runs as (it was
    /// created before privileges were dropped).
    pub fn give_control_socket(&self, uid: u32, gid: u32) -> io::Result<()> {
        if self.control_listener.is_none() {
            return Ok(());
        }
        std::os::unix::fs::lchown(self.spool.control_path(), Some(uid), Some(gid))
    }

    /// Closes the control socket and removes its file (at shutdown).
    pub(super) fn close_control(&mut self) {
        if let Some(id) = self.control_listener.take() {
            self.reactor.close(id);
            let _ = std::fs::remove_file(self.spool.control_path());
        }
        for (id, _) in self.controls.drain() {
            self.reactor.close(id);
        }
    }

    pub(super) fn is_control_listener(&self, id: SockId) -> bool {
        self.control_listener == Some(id)
    }

    pub(super) fn is_control(&self, id: SockId) -> bool {
        self.controls.contains_key(&id)
    }

    pub(super) fn accept_control(&mut self, listener: SockId) {
        for _ in 0..MAX_CONNECTIONS {
            let id = match self.reactor.accept_unix(listener) {
                Ok(Some(id)) => id,
                Ok(None) => return,
                Err(e) => {
                    log::warn!("control: accept: {e}");
                    return;
                }
            };
            if self.controls.len() >= MAX_CONNECTIONS {
                log::info!("control: connection refused: {MAX_CONNECTIONS} already open");
                self.reactor.close(id);
                continue;
            }
            self.controls.insert(id, Conn::new(Instant::now()));
            self.drive_control(id);
        }
        // More may be pending: come back on the next turn.
        self.reactor.mark_hot(listener);
    }

    /// Reads what the client sent (at most a request line: the machine
    /// stops wanting input there), answers it, writes the reply.
    pub(super) fn drive_control(&mut self, id: SockId) {
        let mut buf = [0u8; READ_CHUNK];
        let mut request = None;
        if let Some(conn) = self.controls.get_mut(&id) {
            while conn.wants_input() && request.is_none() {
                match self.reactor.read(id, &mut buf) {
                    Ok(0) => conn.handle_eof(),
                    Ok(n) => request = conn.handle_input(buf.get(..n).unwrap_or_default()),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => conn.fail(),
                }
            }
        }
        if let Some(req) = request {
            let reply = self.control_request(req);
            if let Some(conn) = self.controls.get_mut(&id) {
                conn.answer(&reply);
            }
        }
        while let Some(conn) = self.controls.get_mut(&id) {
            let Some(out) = conn.poll_transmit() else {
                break;
            };
            match self.reactor.write(id, out) {
                Ok(0) => conn.fail(),
                Ok(n) => conn.transmitted(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => conn.fail(),
            }
        }
        if self.controls.get(&id).is_some_and(Conn::is_closed) {
            self.controls.remove(&id);
            self.reactor.close(id);
        }
    }

    /// Times out control connections (from the tick).
    pub(super) fn sweep_control(&mut self, now: Instant) {
        let due: Vec<SockId> = self
            .controls
            .iter()
            .filter(|(_, c)| c.deadline() <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(c) = self.controls.get_mut(&id) {
                c.handle_timeout(now);
            }
            self.drive_control(id);
        }
    }

    /// Carries out one request on the queue and the spool.
    fn control_request(&mut self, req: Request) -> Reply {
        let id = match req {
            Request::Flush(None) => {
                log::info!("queue run requested (tern queue flush)");
                self.flush_queue();
                return Reply::Flushing(None);
            }
            Request::Delete(id)
            | Request::Flush(Some(id))
            | Request::Hold(id)
            | Request::Release(id) => id,
        };
        if !self.spool.exists(id) {
            return Reply::error(ErrorKind::NoSuchMessage, id, "no such message in the queue");
        }
        let busy = self.in_flight.contains_key(&id);
        match req {
            Request::Flush(None) => Reply::Flushing(None),
            Request::Delete(_) if busy => Reply::error(
                ErrorKind::Busy,
                id,
                "a delivery attempt is running; try again when it ends",
            ),
            Request::Delete(_) => match self.spool.remove(id) {
                Ok(()) => {
                    self.forget(id);
                    log::info!("{id}: deleted (tern queue delete)");
                    Reply::Deleted(id)
                }
                Err(e) => {
                    log::error!("{id}: cannot delete: {e}");
                    Reply::error(ErrorKind::Failed, id, e.to_string())
                }
            },
            Request::Flush(Some(_)) if self.held.contains(&id) => Reply::error(
                ErrorKind::Held,
                id,
                "the message is on hold; release it first",
            ),
            Request::Flush(Some(_)) => {
                if !busy {
                    log::info!("{id}: delivery requested (tern queue flush)");
                    self.flush_one.insert(id);
                    self.queue.schedule(id, mono_now());
                }
                Reply::Flushing(Some(id))
            }
            Request::Hold(_) => match self.spool.hold(id) {
                Ok(()) => {
                    self.held.insert(id);
                    self.flush_one.remove(&id);
                    if !busy {
                        // A running attempt finishes; the runner then
                        // leaves the message out of the schedule.
                        self.queue.remove(id);
                    }
                    log::info!("{id}: on hold (tern queue hold)");
                    Reply::Held(id)
                }
                Err(e) => {
                    log::error!("{id}: cannot hold: {e}");
                    Reply::error(ErrorKind::Failed, id, e.to_string())
                }
            },
            Request::Release(_) => match self.spool.release(id) {
                Ok(true) => {
                    self.held.remove(&id);
                    if !busy {
                        self.queue.schedule(id, mono_now());
                    }
                    log::info!("{id}: released (tern queue release)");
                    Reply::Released(id)
                }
                Ok(false) => Reply::error(ErrorKind::NotHeld, id, "the message is not on hold"),
                Err(e) => {
                    log::error!("{id}: cannot release: {e}");
                    Reply::error(ErrorKind::Failed, id, e.to_string())
                }
            },
        }
    }

    /// Drops every trace of a message from the daemon's memory.
    fn forget(&mut self, id: QueueId) {
        self.queue.remove(id);
        self.fresh.remove(&id);
        self.held.remove(&id);
        self.flush_one.remove(&id);
    }
}
