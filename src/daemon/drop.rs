//! Importing sendmail drops (see `spool::drop`): each complete drop file is
//! validated like remote input, copied into the spool with CRLF line ends
//! and a `Received:` header, committed, and only then unlinked.
//!
//! Bounded work per turn: a scan (the tick, SIGUSR2, a flush) lists at
//! most [`DROPS_PER_SCAN`] drops; each loop turn copies at most
//! [`DROP_BYTES_PER_TURN`] octets of them, keeping the open drop, its
//! spool file and the converter's state between turns; a drop copied
//! whole joins the turn's group commit with the messages received over
//! SMTP (one sync for all). Files are reached through the `Spool` API
//! (`drops`, `is_queued`, `set_aside_drop`, `remove_drop`).
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

use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{unix_now, Io};
use crate::bounce::rfc5322_date;
use crate::delivery::{push_unique, Destination};
use crate::smtp::address::Address;
use crate::spool::drop;
use crate::spool::envelope::Recipient;
use crate::spool::{Incoming, QueueId, StoredEnvelope};

/// Drops taken per scan; the rest wait for the next scan.
pub const DROPS_PER_SCAN: usize = 32;
/// Octets of drop content copied into the spool per loop turn, over all
/// drops (a drop of 2 × `max_message_size` held the loop for its whole
/// copy and sync before).
pub const DROP_BYTES_PER_TURN: usize = crate::delivery::jobs::LOCAL_BYTES_PER_TURN;
/// What starting a drop (open, header, recipient policy, spool file)
/// counts against the turn's budget.
pub const DROP_START_COST: usize = 4 * 1024;
/// Octets read from a drop at a time.
const DROP_READ_BUFFER: usize = 8 * 1024;

/// The drops found by the last scan, the one being copied, and those
/// copied whole this turn (for the group commit).
#[derive(Default)]
pub struct DropImports {
    waiting: VecDeque<PathBuf>,
    current: Option<Importing>,
    /// Imported drops for this turn's group commit.
    commits: Vec<DropCommit>,
}

/// A drop copied whole, waiting for the group commit.
pub struct DropCommit {
    /// The drop's claimed path (`NAME+ID`), unlinked after the commit.
    pub claimed: PathBuf,
    pub file: Incoming,
    /// The `from=<...> size=... nrcpt=N client=local uid=...` log text.
    pub what: String,
}

/// One drop on its way into the spool: both files open, the offsets in
/// them, the line-end converter's state.
struct Importing {
    path: PathBuf,
    file: File,
    inc: Incoming,
    uid: u32,
    sender: String,
    nrcpt: usize,
    /// Octets of the drop's message read so far, and the most allowed.
    read: u64,
    limit: u64,
    conv: LineEnds,
}

/// What one step of an import came to.
enum Step {
    /// The budget ran out first.
    More(Box<Importing>),
    /// All copied: claimed and handed to the group commit.
    Handed,
}

impl DropImports {
    /// Nothing waiting, nothing being copied.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.current.is_none()
    }

    /// The drops copied whole this turn, for the group commit.
    pub fn take_commits(&mut self) -> Vec<DropCommit> {
        std::mem::take(&mut self.commits)
    }

    /// Looks at `drop/` (at the tick, on SIGUSR2, on a flush) unless the
    /// last scan's drops are still being imported; the copying is done a
    /// bounded amount per turn by [`DropImports::turn`].
    pub fn scan(&mut self, io: &mut Io, stopping: bool) {
        if stopping || !self.is_idle() {
            return;
        }
        self.waiting = io.spool.drops().into_iter().take(DROPS_PER_SCAN).collect();
    }

    /// Copies at most [`DROP_BYTES_PER_TURN`] octets of drops into the
    /// spool; a drop copied whole is claimed and joins this turn's group
    /// commit. True while drops remain (the loop must not sleep).
    pub fn turn(&mut self, io: &mut Io, stopping: bool) -> bool {
        if stopping {
            // A drop not committed stays in drop/ and is imported after
            // the restart.
            self.waiting.clear();
            if let Some(imp) = self.current.take() {
                io.spool.discard(imp.inc);
            }
            return false;
        }
        let mut budget = DROP_BYTES_PER_TURN;
        while budget > 0 {
            let imp = match self.current.take() {
                Some(imp) => imp,
                None => {
                    let Some(path) = self.waiting.pop_front() else {
                        break;
                    };
                    budget = budget.saturating_sub(DROP_START_COST).max(1);
                    match self.start_drop(io, path) {
                        Some(imp) => imp,
                        None => continue,
                    }
                }
            };
            let path = imp.path.clone();
            match self.copy_drop(io, imp, &mut budget) {
                Ok(Step::More(imp)) => self.current = Some(*imp),
                Ok(Step::Handed) => {}
                Err(e) => {
                    if self.import_failed(io, &path, e) {
                        // The rest would meet the same spool: next scan.
                        self.waiting.clear();
                    }
                }
            }
        }
        !self.is_idle()
    }

    /// Opens a drop and its spool file; `None` when it needs no import or
    /// failed (handled and logged).
    fn start_drop(&mut self, io: &mut Io, path: PathBuf) -> Option<Importing> {
        if let Some(id) = drop::claimed_id(&path) {
            if io.spool.is_queued(id) {
                log::info!("drop {}: already queued as {id}; removed", path.display());
                io.spool.remove_drop(&path);
                return None;
            }
        }
        match open_drop(io, &path) {
            Ok(imp) => Some(imp),
            Err(e) => {
                if self.import_failed(io, &path, e) {
                    self.waiting.clear();
                }
                None
            }
        }
    }

    /// Logs a failed import and sets a bad drop aside; true when the
    /// spool could not take it (the scan stops).
    fn import_failed(&mut self, io: &mut Io, path: &std::path::Path, e: ImportError) -> bool {
        match e {
            ImportError::Later(why) => {
                log::warn!("drop {}: {why}; kept for the next scan", path.display());
                true
            }
            ImportError::Bad(why) => {
                log::error!("drop {}: {why}; moved to corrupt/", path.display());
                let _ = io.spool.set_aside_drop(path);
                false
            }
        }
    }

    /// Copies while `budget` lasts; at the end of the drop, claims it and
    /// hands its file to the group commit. On error the spool file is
    /// discarded.
    fn copy_drop(
        &mut self,
        io: &mut Io,
        mut imp: Importing,
        budget: &mut usize,
    ) -> Result<Step, ImportError> {
        let mut buf = [0u8; DROP_READ_BUFFER];
        let mut out = Vec::with_capacity(2 * DROP_READ_BUFFER);
        let result: Result<bool, ImportError> = (|| {
            let later = |e: std::io::Error| ImportError::Later(e.to_string());
            while *budget > 0 {
                let n = imp.file.read(&mut buf).map_err(later)?;
                if n == 0 {
                    out.clear();
                    imp.conv.finish(&mut out);
                    imp.inc.write(&out).map_err(later)?;
                    if imp.conv.eight_bit {
                        imp.inc.mark_eight_bit().map_err(later)?;
                    }
                    return Ok(true);
                }
                *budget = budget.saturating_sub(n);
                imp.read = imp.read.saturating_add(n as u64);
                if imp.read > imp.limit {
                    return Err(ImportError::Bad(format!(
                        "message exceeds max_message_size ({})",
                        io.cfg.max_message_size
                    )));
                }
                out.clear();
                imp.conv.convert(buf.get(..n).unwrap_or_default(), &mut out);
                imp.inc.write(&out).map_err(later)?;
            }
            Ok(false)
        })();
        match result {
            Ok(false) => Ok(Step::More(Box::new(imp))),
            Ok(true) => {
                // Claimed for this ID just before the commit (see the
                // module doc); a drop that is not committed stays claimed
                // and is imported again.
                let claimed = match drop::claim(&imp.path, imp.inc.id) {
                    Ok(p) => p,
                    Err(e) => {
                        io.spool.discard(imp.inc);
                        return Err(ImportError::Later(format!("cannot claim the drop: {e}")));
                    }
                };
                let what = format!(
                    "from=<{}> size={} nrcpt={} client=local uid={}",
                    imp.sender, imp.inc.size, imp.nrcpt, imp.uid
                );
                self.commits.push(DropCommit {
                    claimed,
                    file: imp.inc,
                    what,
                });
                Ok(Step::Handed)
            }
            Err(e) => {
                io.spool.discard(imp.inc);
                Err(e)
            }
        }
    }
}

/// The group commit's result for an imported drop: the drop is unlinked
/// and the queue ID returned (for the schedule), or it stays.
pub fn committed(
    io: &mut Io,
    claimed: &Path,
    what: &str,
    result: std::io::Result<QueueId>,
) -> Option<QueueId> {
    match result {
        Ok(id) => {
            log::info!("{id}: {what}");
            io.spool.remove_drop(claimed);
            Some(id)
        }
        Err(e) => {
            log::warn!(
                "drop {}: commit: {e}; kept for the next scan",
                claimed.display()
            );
            None
        }
    }
}

/// Validates the drop's header like remote input and creates its
/// spool file with the `Received:` field.
fn open_drop(io: &mut Io, path: &std::path::Path) -> Result<Importing, ImportError> {
    // Header, message and conversion slack: a bound, not a policy.
    let max = io
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
    let is_local = |d: &str| io.cfg.is_local_domain(d) || io.tables.routes.is_local(&sender, d);
    let policy = io.tables.policy(io.cfg, &is_local);
    let mut decided = Vec::new();
    for r in &head.recipients {
        let a = if r.contains('@') {
            Address::parse_mailbox(r)
        } else {
            Address::parse_mailbox(&format!("{r}@{}", io.cfg.qualify_domain))
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
        .map(|(dest, original)| Recipient {
            dest,
            original,
            dsn: Default::default(),
        })
        .collect();
    if recipients.is_empty() {
        return Err("no recipients".to_string().into());
    }
    let now = unix_now();
    let nrcpt = recipients.len();
    let env = StoredEnvelope {
        id: QueueId(0),
        arrival: now,
        sender: sender.clone(),
        recipients,
        client: format!("local uid {uid}"),
        origin: crate::rewrite::SenderOrigin::Local,
        eight_bit: false,
        smtputf8: false,
        requiretls: false,
        dsn: Default::default(),
        body_offset: 0,
    };
    let mut inc = io
        .spool
        .create(&env)
        .map_err(|e| ImportError::Later(format!("spool: {e}")))?;
    let received = format!(
        "Received: by {} (tern sendmail, uid {uid})\r\n\tid {}; {}\r\n",
        io.cfg.hostname,
        inc.id,
        rfc5322_date(now as i64, 0)
    );
    if let Err(e) = inc.write(received.as_bytes()) {
        io.spool.discard(inc);
        return Err(ImportError::Later(e.to_string()));
    }
    Ok(Importing {
        path: path.to_path_buf(),
        file,
        inc,
        uid,
        sender,
        nrcpt,
        read: 0,
        // The limit applies to the drop's message as sendmail wrote
        // it (sendmail counts the same octets), not to the copy with
        // CRLF line ends and a Received: field.
        limit: io.cfg.max_message_size.saturating_add(DROP_HEADROOM),
        conv: LineEnds::default(),
    })
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
