//! Local delivery of one queued message to one mailbox, as a job the loop
//! moves a bounded number of octets per turn (see `delivery::jobs`).
//!
//! The content streams from the spool file, behind a `Return-Path:` and a
//! `Delivered-To:` header, into Maildir or mbox, with LF line endings
//! (both writers convert the spool's CRLF, see `delivery::lf`). A mailbox
//! that is a symlink, a FIFO or otherwise not what tern created is a
//! temporary failure, logged by the runner, never followed. Failures are classed the
//! way the queue needs them: a busy mbox lock or an I/O error is temporary
//! (retried later), nothing local is permanent except an unusable name.
//!
//! A job's steps: [`LocalDelivery::start`] (open and lock the mailbox,
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
use super::{maildir, Mailbox};
use crate::writeback::Writeback;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Maildir,
    Mbox,
}

pub struct LocalDelivery {
    pub mail_dir: PathBuf,
    pub format: Format,
    pub sync: bool,
    pub hostname: String,
}

#[derive(Debug)]
pub enum LocalError {
    Temporary(String),
    Permanent(String),
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

impl LocalDelivery {
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
    ) -> Result<LocalJob, LocalError> {
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
    pub fn pump(&mut self, budget: &mut usize) -> Result<bool, LocalError> {
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
    pub fn sync_data(&self) -> Result<(), LocalError> {
        match &self.writer {
            Writer::Maildir(w) => w.sync_data(),
            Writer::Mbox(w) => w.sync_data(),
        }
        .map_err(|e| self.error(e))
    }

    /// Maildir: `tmp/` → `new/`. Mbox: nothing (the entry is in place).
    pub fn publish(&mut self) -> Result<(), LocalError> {
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
    pub fn sync_entry(&self) -> Result<(), LocalError> {
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
    pub fn error(&self, e: io::Error) -> LocalError {
        match &self.writer {
            Writer::Maildir(_) => maildir_error(&self.path, e),
            Writer::Mbox(_) => mbox_error(&self.path, MboxError::Io(e)),
        }
    }
}

fn maildir_error(path: &std::path::Path, e: io::Error) -> LocalError {
    LocalError::Temporary(format!("451 4.3.0 maildir {}: {e}", path.display()))
}

fn mbox_error(path: &std::path::Path, e: MboxError) -> LocalError {
    match e {
        MboxError::Locked => {
            LocalError::Temporary(format!("451 4.2.0 mbox {} is locked", path.display()))
        }
        MboxError::Io(e) => {
            LocalError::Temporary(format!("451 4.3.0 mbox {}: {e}", path.display()))
        }
    }
}
