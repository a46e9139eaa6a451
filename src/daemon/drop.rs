//! Importing sendmail drops (see `spool::drop`): each complete drop file is
//! validated like remote input, copied into the spool with CRLF line ends
//! and a `Received:` header, committed, and only then unlinked.
//!
//! Exactly once across a kill: before the commit the drop is renamed to
//! `NAME+ID` (claimed for queue ID `ID`, [`drop::claim`]); a claimed drop
//! whose `msg/ID` exists was committed and only its unlink was lost, so it
//! is unlinked, not imported again (the crash-point torture found the
//! duplicate). A drop is set aside in `corrupt/` only when it is bad; when
//! the spool cannot take it (a full disk) it stays for the next scan.
//!
//! Long lines: tern's SMTP server refuses lines over 1000 octets (RFC 5321
//! §4.5.3.1.6), so the spool never holds one; a drop is local input that
//! cannot be refused line by line (cron has no one to tell), so a line
//! longer than [`MAX_STORED_LINE`] octets is broken as Postfix's
//! `smtp_line_length_limit` does (Postfix 3.7, `postconf(5)`): a
//! `CR LF SPACE` is inserted, which in a header is a fold and in MIME
//! bodies does the least damage. The break never splits a UTF-8 sequence
//! (it comes before the sequence's first octet); octets that are not UTF-8
//! are counted singly.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{unix_now, Daemon};
use crate::bounce::rfc5322_date;
use crate::delivery::{push_unique, Destination};
use crate::smtp::address::Address;
use crate::spool::drop;
use crate::spool::envelope::Recipient;
use crate::spool::{QueueId, StoredEnvelope};

/// Drops imported per scan; the rest wait for the next scan.
pub const DROPS_PER_SCAN: usize = 32;

impl Daemon {
    pub(super) fn import_drops(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        for path in drop::list(self.spool.root())
            .into_iter()
            .take(DROPS_PER_SCAN)
        {
            if let Some(id) = drop::claimed_id(&path) {
                let queued = self.spool.root().join("msg").join(id.text().as_str());
                if fs::symlink_metadata(&queued).is_ok() {
                    log::info!("drop {}: already queued as {id}; removed", path.display());
                    let _ = fs::remove_file(&path);
                    continue;
                }
            }
            match self.import_drop(&path) {
                Ok((id, claimed)) => {
                    let _ = fs::remove_file(&claimed);
                    self.queue.schedule(id, super::mono_now());
                }
                Err(ImportError::Later(why)) => {
                    // The rest would meet the same spool: next scan.
                    log::warn!("drop {}: {why}; kept for the next scan", path.display());
                    break;
                }
                Err(ImportError::Bad(why)) => {
                    log::error!("drop {}: {why}; moved to corrupt/", path.display());
                    let name = path
                        .file_name()
                        .map(|n| n.to_os_string())
                        .unwrap_or_default();
                    let name = name.to_string_lossy();
                    let _ =
                        crate::spool::set_aside(&path, &self.spool.root().join("corrupt"), &name);
                }
            }
        }
    }

    /// Imports one drop; returns the queue ID and the drop's path as
    /// claimed (what to unlink).
    fn import_drop(&mut self, path: &Path) -> Result<(QueueId, PathBuf), ImportError> {
        // Header, message and conversion slack: a bound, not a policy.
        let max = self
            .cfg
            .max_message_size
            .saturating_mul(2)
            .saturating_add(drop::MAX_DROP_HEADER as u64);
        let (mut file, uid) = drop::open_for_import(path, max).map_err(|e| e.to_string())?;
        let head = drop::read_header(&mut file)?;
        let sender = if head.sender.is_empty() {
            String::new()
        } else {
            Address::parse_mailbox(&head.sender)
                .map_err(|e| format!("bad sender {:?}: {e:?}", head.sender))?
                .to_string()
        };
        // The same policy as SMTP, with relaying allowed (local injection);
        // a local recipient that does not exist cannot be refused in-line,
        // so it is stored as refused and bounced by the first attempt.
        let is_local = |d: &str| self.cfg.is_local_domain(d);
        let policy = self.tables.policy(&self.cfg, &is_local);
        let mut decided = Vec::new();
        for r in &head.recipients {
            let a = if r.contains('@') {
                Address::parse_mailbox(r)
            } else {
                Address::parse_mailbox(&format!("{r}@{}", self.cfg.hostname))
            }
            .map_err(|e| format!("bad recipient {r:?}: {e:?}"))?;
            let original = a.to_string();
            let destinations = if is_local(&a.domain) {
                policy
                    .resolve_local(&a.local)
                    .unwrap_or_else(|why| vec![Destination::Refused(why)])
            } else {
                vec![Destination::Remote(a)]
            };
            for d in destinations {
                push_unique(&mut decided, d, &original);
            }
        }
        let recipients: Vec<Recipient> = decided
            .into_iter()
            .map(|(dest, original)| Recipient { dest, original })
            .collect();
        if recipients.is_empty() {
            return Err("no recipients".to_string().into());
        }
        let now = unix_now();
        let env = StoredEnvelope {
            id: QueueId(0),
            arrival: now,
            sender: sender.clone(),
            recipients,
            client: format!("local uid {uid}"),
            eight_bit: false,
            body_offset: 0,
        };
        let mut inc = self
            .spool
            .create(&env)
            .map_err(|e| ImportError::Later(format!("spool: {e}")))?;
        let received = format!(
            "Received: by {} (tern sendmail, uid {uid})\r\n\tid {}; {}\r\n",
            self.cfg.hostname,
            inc.id,
            rfc5322_date(now as i64, 0)
        );
        // The limit applies to the drop's message as sendmail wrote it
        // (sendmail counts the same octets), not to the copy with CRLF
        // line ends and a Received: field.
        let limit = self.cfg.max_message_size.saturating_add(DROP_HEADROOM);
        let mut read: u64 = 0;
        let mut conv = LineEnds::default();
        let mut out = Vec::with_capacity(8192);
        let mut buf = [0u8; 8192];
        let later = |e: std::io::Error| ImportError::Later(e.to_string());
        let result: Result<(), ImportError> = (|| {
            inc.write(received.as_bytes()).map_err(later)?;
            loop {
                let n = file.read(&mut buf).map_err(later)?;
                if n == 0 {
                    break;
                }
                read = read.saturating_add(n as u64);
                if read > limit {
                    return Err(ImportError::Bad(format!(
                        "message exceeds max_message_size ({})",
                        self.cfg.max_message_size
                    )));
                }
                out.clear();
                conv.convert(buf.get(..n).unwrap_or_default(), &mut out);
                inc.write(&out).map_err(later)?;
            }
            out.clear();
            conv.finish(&mut out);
            inc.write(&out).map_err(later)?;
            if conv.eight_bit {
                inc.mark_eight_bit().map_err(later)?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            self.spool.discard(inc);
            return Err(e);
        }
        let size = inc.size;
        let nrcpt = env.recipients.len();
        // Claimed for this ID just before the commit (see the module doc);
        // a drop that is not committed stays claimed and is imported again.
        let claimed = match drop::claim(path, inc.id) {
            Ok(p) => p,
            Err(e) => {
                self.spool.discard(inc);
                return Err(ImportError::Later(format!("cannot claim the drop: {e}")));
            }
        };
        match self.spool.commit(vec![inc]).pop() {
            Some(Ok(id)) => {
                log::info!(
                    "{id}: from=<{sender}> size={size} nrcpt={nrcpt} client=local uid={uid}"
                );
                Ok((id, claimed))
            }
            Some(Err(e)) => Err(ImportError::Later(format!("commit: {e}"))),
            None => Err(ImportError::Later("commit: no result".into())),
        }
    }
}

/// Octets a drop's message may have beyond `max_message_size`: the
/// `Received:` field a `sendmail -bs` session writes before the data it
/// counted (the client's HELO name and recipient are each a line at most).
pub const DROP_HEADROOM: u64 = 4096;

/// Why a drop was not imported.
enum ImportError {
    /// The drop itself is bad: it is set aside in `corrupt/`.
    Bad(String),
    /// The spool cannot take it now (full disk, I/O error): it stays.
    Later(String),
}

impl From<String> for ImportError {
    fn from(why: String) -> ImportError {
        ImportError::Bad(why)
    }
}

/// The longest line stored from a drop, CRLF not counted: RFC 5321's
/// 1000 octets with the CRLF, the limit tern's SMTP server enforces.
pub const MAX_STORED_LINE: usize = crate::smtp::data::MAX_LINE - 2;

/// LF, CR LF and bare CR in, CRLF out; a final line end is added if
/// missing; lines over [`MAX_STORED_LINE`] octets are broken with
/// `CR LF SPACE` (see the module doc).
#[derive(Default)]
struct LineEnds {
    after_cr: bool,
    at_line_start: bool,
    started: bool,
    eight_bit: bool,
    /// Octets in the current output line.
    column: usize,
}

impl LineEnds {
    fn convert(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            self.started = true;
            if b >= 0x80 {
                self.eight_bit = true;
            }
            match b {
                b'\n' => {
                    out.extend_from_slice(b"\r\n");
                    self.after_cr = false;
                    self.at_line_start = true;
                    self.column = 0;
                }
                _ if self.after_cr => {
                    // The previous CR was bare.
                    out.extend_from_slice(b"\r\n");
                    self.column = 0;
                    self.after_cr = b == b'\r';
                    if b != b'\r' {
                        self.push(b, out);
                    }
                    self.at_line_start = false;
                }
                b'\r' => self.after_cr = true,
                _ => {
                    self.push(b, out);
                    self.at_line_start = false;
                }
            }
        }
    }

    /// One octet of line content, after a break if the line is full.
    fn push(&mut self, b: u8, out: &mut Vec<u8>) {
        // A UTF-8 lead octet reserves room for its whole sequence.
        let needed = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        };
        if self.column > 1 && self.column + needed > MAX_STORED_LINE {
            out.extend_from_slice(b"\r\n ");
            self.column = 1;
        }
        out.push(b);
        self.column += 1;
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        if self.after_cr || (self.started && !self.at_line_start) {
            out.extend_from_slice(b"\r\n");
        }
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)] // tests index fixed data
mod tests {
    use super::*;

    fn conv(input: &[u8]) -> Vec<u8> {
        let mut c = LineEnds::default();
        let mut out = Vec::new();
        for b in input {
            c.convert(std::slice::from_ref(b), &mut out);
        }
        c.finish(&mut out);
        out
    }

    #[test]
    fn line_ends() {
        assert_eq!(conv(b"a\nb\r\nc\rd"), b"a\r\nb\r\nc\r\nd\r\n");
        assert_eq!(conv(b"a\n"), b"a\r\n");
        assert_eq!(conv(b""), b"");
        assert_eq!(conv(b"x\r"), b"x\r\n");
        assert_eq!(conv(b"x\r\r\n"), b"x\r\n\r\n");
    }

    fn lines(out: &[u8]) -> Vec<&[u8]> {
        let mut v: Vec<&[u8]> = out.split(|&b| b == b'\n').collect();
        assert_eq!(v.pop(), Some(&b""[..]));
        v.iter()
            .map(|l| l.strip_suffix(b"\r").expect("CRLF"))
            .collect()
    }

    #[test]
    fn long_lines_are_broken_like_postfix() {
        let out = conv(
            &[
                b"Subject: ".as_slice(),
                &[b'x'; 2000],
                b"\n\n",
                &[b'y'; 2500],
                b"\n",
            ]
            .concat(),
        );
        let ls = lines(&out);
        assert!(
            ls.iter().all(|l| l.len() <= MAX_STORED_LINE),
            "{:?}",
            ls.iter().map(|l| l.len()).collect::<Vec<_>>()
        );
        assert_eq!(ls[0].len(), MAX_STORED_LINE);
        assert!(ls[1].starts_with(b" x") && ls[2].starts_with(b" x"));
        assert_eq!(ls[3], b"");
        // Nothing lost: removing the inserted breaks gives the input back.
        let joined = out.windows(3).filter(|w| w == b"\r\n ").count();
        assert_eq!(joined, 2 + 2);
        let restored = String::from_utf8(out.clone()).unwrap().replace("\r\n ", "");
        assert_eq!(restored.len(), 9 + 2000 + 4 + 2500 + 2);
        // A line of exactly the limit is left alone.
        let exact = conv(&[b'z'; MAX_STORED_LINE]);
        assert_eq!(lines(&exact).len(), 1);
        // UTF-8 sequences are never split.
        let text = "é".repeat(1500);
        let out = conv(text.as_bytes());
        for l in lines(&out) {
            assert!(l.len() <= MAX_STORED_LINE);
            let l = l.strip_prefix(b" ").unwrap_or(l);
            assert!(std::str::from_utf8(l).is_ok());
        }
    }
}
