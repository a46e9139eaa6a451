//! Local delivery of one queued message to one mailbox.
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

use std::io::{self, Read};
use std::path::PathBuf;

use super::outcome::{self, Reason};
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
    ) -> Result<String, Reason> {
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
                    .map_err(|e| io_reason(&format!("maildir {}", path.display()), &e))
            }
            Format::Mbox => {
                let result = std::fs::create_dir_all(&self.mail_dir)
                    .map_err(mbox::MboxError::Io)
                    .and_then(|()| {
                        mbox::deliver_mbox(&path, sender, now_unix as i64, &mut stream, self.sync)
                    });
                match result {
                    Ok(()) => Ok(format!("mbox {}", path.display())),
                    Err(mbox::MboxError::Locked) => Err(outcome::local_mailbox_locked(&format!(
                        "mbox {}",
                        path.display()
                    ))),
                    Err(mbox::MboxError::Io(e)) => {
                        Err(io_reason(&format!("mbox {}", path.display()), &e))
                    }
                }
            }
        }
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
