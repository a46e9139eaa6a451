//! Local delivery of one queued message to one mailbox, as a job the loop
//! moves a bounded number of octets per turn (see `delivery::jobs`).
//!
//! The content streams from the spool file, behind a `Return-Path:` and a
//! `Delivered-To:` header, into Maildir or mbox, with LF line endings
//! (both writers convert the spool's CRLF, see `delivery::lf`). A mailbox
//! that is a symlink, a FIFO or otherwise not what tern created is a
//! temporary failure, logged by the runner, never followed. Failures are
//! [`Reason`]s with origin Local from the outcome table: a busy mbox lock
//! (4.2.0), a full disk or quota (4.2.2) or another I/O error (4.3.0) are
//! temporary (retried later); nothing local is permanent except an unusable
//! name, which is refused before delivery.
//!
//! A job's steps: [`MailboxWriter::start`] (open and lock the mailbox,
//! create the `tmp/` file), [`LocalJob::pump`] until the whole message is
//! written, a sync of the data ([`LocalJob::sync_data`], or one `syncfs`
//! for every job that finished writing in the same turn),
//! [`LocalJob::publish`] (Maildir `tmp/` → `new/`), a sync of the new
//! directory entry ([`LocalJob::sync_entry`], or again one `syncfs`), and
//! [`LocalJob::finish`]. A job dropped before `finish` undoes its write
//! (Maildir: the `tmp/` or not yet durable `new/` file is removed; mbox:
//! the file is truncated back to its old length).

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;

use super::maildir::MaildirWrite;
use super::mbox::{MboxAppend, MboxError};
use super::outcome::{self, Reason};
use super::{maildir, Mailbox};
use crate::writeback::Writeback;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Maildir,
    Mbox,
}

/// Where and how local mail is written: the mailbox root, the format, and
/// whether writes are synced; starts one [`LocalJob`] per mailbox.
pub struct MailboxWriter {
    pub mail_dir: PathBuf,
    pub format: Format,
    pub sync: bool,
    pub hostname: String,
}

enum Writer {
    Maildir(MaildirWrite<'static>),
    Mbox(MboxAppend<'static>),
}

/// One message on its way into one mailbox.
pub struct LocalJob {
    writer: Writer,
    /// The mailbox (directory or file), for messages.
    path: PathBuf,
    /// Early writeback, when the data will be synced.
    writeback: Option<Writeback>,
}

impl MailboxWriter {
    /// Opens the mailbox for `content` (the stored message); the job then
    /// moves it in steps.
    pub fn start(
        &self,
        user: &Mailbox,
        sender: &str,
        original_rcpt: &str,
        content: Box<dyn Read>,
        now_unix: u64,
        seq: u64,
    ) -> Result<LocalJob, Reason> {
        // LF like the rest of the mailbox file (see `delivery::lf`).
        let header = format!("Return-Path: <{sender}>\nDelivered-To: {original_rcpt}\n");
        let stream: Box<dyn Read> = Box::new(io::Cursor::new(header.into_bytes()).chain(content));
        let path = self.mail_dir.join(user.as_str());
        let writer = match self.format {
            Format::Maildir => {
                let unique = maildir::unique_name(
                    now_unix,
                    (seq % 1_000_000) as u32,
                    std::process::id(),
                    seq,
                    &self.hostname,
                );
                MaildirWrite::begin(&path, stream, &unique, self.sync)
                    .map(Writer::Maildir)
                    .map_err(|e| maildir_error(&path, e))?
            }
            Format::Mbox => std::fs::create_dir_all(&self.mail_dir)
                .map_err(MboxError::Io)
                .and_then(|()| MboxAppend::begin(&path, sender, now_unix as i64, stream, self.sync))
                .map(Writer::Mbox)
                .map_err(|e| mbox_error(&path, e))?,
        };
        let writeback = self.sync.then(|| {
            Writeback::new(match &writer {
                Writer::Maildir(_) => 0,
                Writer::Mbox(w) => w.end(),
            })
        });
        Ok(LocalJob {
            writer,
            path,
            writeback,
        })
    }
}

impl LocalJob {
    /// Writes while `budget` lasts, taking what it moved off `budget`;
    /// true once the whole message is in the file.
    pub fn pump(&mut self, budget: &mut usize) -> Result<bool, Reason> {
        let (complete, end) = match &mut self.writer {
            Writer::Maildir(w) => (w.pump(budget), w.written()),
            Writer::Mbox(w) => (w.pump(budget), w.end()),
        };
        let complete = complete.map_err(|e| self.error(e))?;
        if let Some(wb) = &mut self.writeback {
            let file = match &self.writer {
                Writer::Maildir(w) => w.file(),
                Writer::Mbox(w) => w.file(),
            };
            wb.advance(file, end);
        }
        Ok(complete)
    }

    /// The file written (a `syncfs` on it covers this job).
    pub fn file(&self) -> &File {
        match &self.writer {
            Writer::Maildir(w) => w.file(),
            Writer::Mbox(w) => w.file(),
        }
    }

    /// Makes the written data durable.
    pub fn sync_data(&self) -> Result<(), Reason> {
        match &self.writer {
            Writer::Maildir(w) => w.sync_data(),
            Writer::Mbox(w) => w.sync_data(),
        }
        .map_err(|e| self.error(e))
    }

    /// Maildir: `tmp/` → `new/`. Mbox: nothing (the entry is in place).
    pub fn publish(&mut self) -> Result<(), Reason> {
        match &mut self.writer {
            Writer::Maildir(w) => w.publish(),
            Writer::Mbox(_) => Ok(()),
        }
        .map_err(|e| self.error(e))
    }

    /// Whether a directory entry must still be made durable (Maildir's
    /// `new/` entry, a newly created mbox file).
    pub fn entry_needs_sync(&self) -> bool {
        match &self.writer {
            Writer::Maildir(_) => true,
            Writer::Mbox(w) => w.created(),
        }
    }

    /// Makes the directory entry durable (after `publish`).
    pub fn sync_entry(&self) -> Result<(), Reason> {
        match &self.writer {
            Writer::Maildir(w) => w.sync_entries(),
            Writer::Mbox(w) => w.sync_dir(),
        }
        .map_err(|e| self.error(e))
    }

    /// Delivered: keeps the message and says where it went.
    pub fn finish(self) -> String {
        match self.writer {
            Writer::Maildir(w) => format!("maildir {}", w.finish().display()),
            Writer::Mbox(w) => {
                w.finish();
                format!("mbox {}", self.path.display())
            }
        }
    }

    /// The temporary failure for an I/O error of this job.
    pub fn error(&self, e: io::Error) -> Reason {
        match &self.writer {
            Writer::Maildir(_) => maildir_error(&self.path, e),
            Writer::Mbox(_) => mbox_error(&self.path, MboxError::Io(e)),
        }
    }
}

fn maildir_error(path: &std::path::Path, e: io::Error) -> Reason {
    io_reason(&format!("maildir {}", path.display()), &e)
}

fn mbox_error(path: &std::path::Path, e: MboxError) -> Reason {
    let mailbox = format!("mbox {}", path.display());
    match e {
        MboxError::Locked => outcome::local_mailbox_locked(&mailbox),
        MboxError::Io(e) => io_reason(&mailbox, &e),
    }
}

/// An I/O error writing a mailbox: full (disk or quota) or another failure.
fn io_reason(mailbox: &str, e: &io::Error) -> Reason {
    match e.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            outcome::local_mailbox_full(mailbox)
        }
        _ => outcome::local_write_failed(mailbox, &outcome::io_words(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::outcome::{Origin, Status};

    #[test]
    fn io_errors_become_local_reasons() {
        let full = io_reason("mbox /m/joe", &io::Error::from(io::ErrorKind::StorageFull));
        assert_eq!((full.origin, full.code), (Origin::Local, 452));
        assert_eq!(full.status, Status::new(4, 2, 2));
        let denied = io_reason(
            "maildir /m/joe",
            &io::Error::from_raw_os_error(libc::EACCES),
        );
        assert_eq!(denied.status, Status::new(4, 3, 0));
        assert_eq!(
            denied.to_string(),
            "451 4.3.0 cannot write to mailbox maildir /m/joe: permission denied"
        );
    }
}
