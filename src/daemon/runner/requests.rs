//! Control requests on the queue (`tern queue delete|flush ID|hold|release`),
//! carried out by the runner on its own schedule and marks and on the
//! spool; the daemon's `control` module reads them from the control socket
//! and writes the answers (a whole-queue flush it does itself: it scans the
//! drops too).

use super::QueueRunner;
use crate::control::{ControlReply, ErrorKind, Request};
use crate::daemon::{mono_now, Io};
use crate::spool::QueueId;

impl QueueRunner {
    /// Carries out one request (not a whole-queue flush) on the queue and
    /// the spool.
    pub fn control_request(&mut self, io: &mut Io, req: Request) -> ControlReply {
        let id = match req {
            Request::Flush(None) => return ControlReply::Flushing(None),
            Request::Delete(id)
            | Request::Flush(Some(id))
            | Request::Hold(id)
            | Request::Release(id) => id,
        };
        if !io.spool.exists(id) {
            return ControlReply::error(
                ErrorKind::NoSuchMessage,
                id,
                "no such message in the queue",
            );
        }
        let busy = self.in_flight.contains_key(&id);
        match req {
            Request::Flush(None) => ControlReply::Flushing(None),
            Request::Delete(_) if busy => ControlReply::error(
                ErrorKind::Busy,
                id,
                "a delivery attempt is running; try again when it ends",
            ),
            Request::Delete(_) => match io.spool.remove(id) {
                Ok(()) => {
                    self.forget(id);
                    log::info!("{id}: deleted (tern queue delete)");
                    ControlReply::Deleted(id)
                }
                Err(e) => {
                    log::error!("{id}: cannot delete: {e}");
                    ControlReply::error(ErrorKind::Failed, id, e.to_string())
                }
            },
            Request::Flush(Some(_)) if self.held.contains(&id) => ControlReply::error(
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
                ControlReply::Flushing(Some(id))
            }
            Request::Hold(_) => match io.spool.hold(id) {
                Ok(()) => {
                    self.held.insert(id);
                    self.flush_one.remove(&id);
                    if !busy {
                        // A running attempt finishes; the runner then
                        // leaves the message out of the schedule.
                        self.queue.remove(id);
                    }
                    log::info!("{id}: on hold (tern queue hold)");
                    ControlReply::Held(id)
                }
                Err(e) => {
                    log::error!("{id}: cannot hold: {e}");
                    ControlReply::error(ErrorKind::Failed, id, e.to_string())
                }
            },
            Request::Release(_) => match io.spool.release(id) {
                Ok(true) => {
                    self.held.remove(&id);
                    if !busy {
                        self.queue.schedule(id, mono_now());
                    }
                    log::info!("{id}: released (tern queue release)");
                    ControlReply::Released(id)
                }
                Ok(false) => {
                    ControlReply::error(ErrorKind::NotHeld, id, "the message is not on hold")
                }
                Err(e) => {
                    log::error!("{id}: cannot release: {e}");
                    ControlReply::error(ErrorKind::Failed, id, e.to_string())
                }
            },
        }
    }

    /// Drops every trace of a message from the runner's memory.
    fn forget(&mut self, id: QueueId) {
        self.queue.remove(id);
        self.fresh.remove(&id);
        self.held.remove(&id);
        self.flush_one.remove(&id);
    }
}
