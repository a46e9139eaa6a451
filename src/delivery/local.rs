//! Local delivery of one queued message to one mailbox.
//!
//! The content streams from the spool file, behind a `Return-Path:` and a
//! `Delivered-To:` header, into Maildir or mbox, with LF line endings
//! (both writers convert the spool's CRLF, see `delivery::lf`). A mailbox
//! that is a symlink, a FIFO or otherwise not what tern created is a
//! temporary failure, logged by the runner, never followed. Failures are classed the
//! way the queue needs them: a busy mbox lock or an I/O error is temporary
//! (retried later), nothing local is permanent except an unusable name.

use std::io::{self, Read};
use std::path::PathBuf;

use super::{maildir, mbox, Mailbox};

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

impl LocalDelivery {
    /// Delivers `content` (the stored message) to a mailbox and says where
    /// it went.
    pub fn deliver(
        &self,
        user: &Mailbox,
        sender: &str,
        original_rcpt: &str,
        content: crate::spool::Content,
        now_unix: u64,
        seq: u64,
    ) -> Result<String, LocalError> {
        // LF like the rest of the mailbox file (see `delivery::lf`).
        let header = format!("Return-Path: <{sender}>\nDelivered-To: {original_rcpt}\n");
        let mut stream = io::Cursor::new(header.into_bytes()).chain(content);
        let path = self.mail_dir.join(user.as_str());
        match self.format {
            Format::Maildir => {
                let unique = maildir::unique_name(
                    now_unix,
                    (seq % 1_000_000) as u32,
                    std::process::id(),
                    seq,
                    &self.hostname,
                );
                maildir::deliver_maildir(&path, &mut stream, &unique, self.sync)
                    .map(|p| format!("maildir {}", p.display()))
                    .map_err(|e| {
                        LocalError::Temporary(format!("451 4.3.0 maildir {}: {e}", path.display()))
                    })
            }
            Format::Mbox => {
                let result = std::fs::create_dir_all(&self.mail_dir)
                    .map_err(mbox::MboxError::Io)
                    .and_then(|()| {
                        mbox::deliver_mbox(&path, sender, now_unix as i64, &mut stream, self.sync)
                    });
                match result {
                    Ok(()) => Ok(format!("mbox {}", path.display())),
                    Err(mbox::MboxError::Locked) => Err(LocalError::Temporary(format!(
                        "451 4.2.0 mbox {} is locked",
                        path.display()
                    ))),
                    Err(mbox::MboxError::Io(e)) => Err(LocalError::Temporary(format!(
                        "451 4.3.0 mbox {}: {e}",
                        path.display()
                    ))),
                }
            }
        }
    }
}
