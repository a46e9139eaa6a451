//! On-disk encodings of the envelope (at the head of `msg/ID`) and of the
//! per-recipient state (`state/ID`). Both are small line-oriented text so an
//! administrator can read them with `less`.
//!
//! Every value in the envelope is one space-free field in xtext (RFC 3461
//! §4: octets outside `!`..`~`, and `+` and `=`, are written `+HH`), so an
//! address with a space, a quote or an `@` in its local part reads back as
//! the same value. Recipients are stored as the decision made at receipt
//! ([`Destination`]), field by field, never as a string to be split again:
//!
//! ```text
//! tern-queue 2
//! arrival 1795000000
//! sender a@b.example                     (empty value: the null sender)
//! rcpt local joe ORIGINAL                 (a mailbox on this host)
//! rcpt remote LOCAL-PART DOMAIN ORIGINAL  (an address elsewhere)
//! rcpt refused unknown-user ORIGINAL      (sendmail only: bounced at once)
//! client helo.example+20[192.0.2.1]
//! origin local                            (optional: locally originated)
//! smtputf8                                (optional: the client said MAIL ... SMTPUTF8)
//! requiretls                              (optional: the client said MAIL ... REQUIRETLS)
//! body 7bit                               (patched in place to 8bit before the commit)
//! <empty line>
//! <content, CRLF lines>
//! ```
//!
//! ORIGINAL is the address the client gave (for DSNs and logs). Files of
//! format 1 (`tern-queue 1`, before 2026-12) are still read: their
//! `rcpt ADDRESS ORIGINAL` lines were split at spaces, so a quoted local
//! part with a space was already damaged in them; an address without `@`
//! is a mailbox, one with `@` a remote address.
//!
//! `origin local` (issue 14) marks a message whose sender is rewritten
//! when it leaves the host (see `rewrite::SenderOrigin`); it is written
//! only for such messages, so other files are byte-identical to before,
//! and a file without it (every file written earlier) loads as
//! `SenderOrigin::Other`: old queued mail is not rewritten.
//!
//! DSN parameters (`ret`, `envid`, and `notify=`/`orcpt=` fields at the
//! end of a `rcpt` line) are written only when given: see
//! `spool::envelope_dsn`.
//!
//! `smtputf8` (issue 15) is written only for messages sent with
//! `MAIL ... SMTPUTF8`, likewise; addresses with UTF-8 local parts are
//! xtext like any other octets (domains are A-labels, see
//! `smtp::address`), so the file stays ASCII. A daemon older than this
//! line refuses such a file as damaged (it keeps it in the spool).
//!
//! `requiretls` (RFC 8689) is written only for messages sent with
//! `MAIL ... REQUIRETLS`, likewise: other files are byte-identical, files
//! without it load as not requiring TLS.

use std::fmt;
use std::str::FromStr;

use crate::delivery::outcome::{one_line, Origin, Outcome, Reason, Status};
use crate::delivery::{Destination, Mailbox, Refusal};
use crate::rewrite::SenderOrigin;
use crate::smtp::address::Address;
use crate::smtp::dsn::{DsnMail, DsnRcpt, Xtext};

use super::envelope_dsn;

/// An envelope larger than this is refused as damaged.
pub const MAX_ENVELOPE: usize = 256 * 1024;
const MAGIC: &str = "tern-queue 2";
const MAGIC_V1: &str = "tern-queue 1";

/// A queue ID: 16 upper-case hex digits, the arrival second and a sequence
/// number, so IDs sort by arrival.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(pub u64);

impl QueueId {
    pub fn new(arrival_secs: u64, seq: u32) -> QueueId {
        QueueId((arrival_secs << 24) | (seq as u64 & 0xFF_FFFF))
    }

    /// The 16 hex digits, formatted on the stack (file names are built
    /// for every message; no heap allocation for them).
    pub fn text(self) -> IdText {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let mut out = [0u8; 16];
        for (i, b) in out.iter_mut().enumerate() {
            // In range: the index is masked to 0..=15.
            #[allow(clippy::indexing_slicing)]
            let digit = HEX[((self.0 >> (60 - 4 * i)) & 0xF) as usize];
            *b = digit;
        }
        IdText(out)
    }
}

/// A [`QueueId`] as text: 16 ASCII hex digits.
#[derive(Clone, Copy)]
pub struct IdText([u8; 16]);

impl IdText {
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("????????????????")
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text().as_str())
    }
}

impl FromStr for QueueId {
    type Err = ();
    fn from_str(s: &str) -> Result<QueueId, ()> {
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(());
        }
        u64::from_str_radix(s, 16).map(QueueId).map_err(|_| ())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipient {
    /// Where to deliver (after alias expansion), decided at receipt.
    pub dest: Destination,
    /// What the client asked for (for DSNs and logs).
    pub original: String,
    /// `NOTIFY=` and `ORCPT=` as given at RCPT (RFC 3461).
    pub dsn: DsnRcpt,
}

impl Recipient {
    /// The address as logs, `mailq` and DSNs name it: the remote address,
    /// the mailbox with `@hostname`, or what the client asked for.
    pub fn final_address(&self, hostname: &str) -> String {
        match &self.dest {
            Destination::Local(m) => format!("{m}@{hostname}"),
            Destination::Remote(a) => a.to_text(),
            Destination::Refused(_) => self.original.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEnvelope {
    pub id: QueueId,
    pub arrival: u64,
    /// Empty: the null sender `<>`.
    pub sender: String,
    pub recipients: Vec<Recipient>,
    pub client: String,
    /// Decided at reception: whether the sender is rewritten outbound.
    pub origin: SenderOrigin,
    pub eight_bit: bool,
    /// The client said `MAIL ... SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
    /// The client said `MAIL ... REQUIRETLS` (RFC 8689).
    pub requiretls: bool,
    /// `RET=` and `ENVID=` as given at MAIL (RFC 3461).
    pub dsn: DsnMail,
    /// Where the content starts in the file (set by `decode`).
    pub body_offset: u64,
}

impl StoredEnvelope {
    pub fn encode(&self) -> Vec<u8> {
        // One buffer, sized for a typical envelope; writing to a String
        // cannot fail.
        let mut s = String::with_capacity(256);
        let _ = self.encode_to(&mut s);
        s.into_bytes()
    }

    /// Writes the encoded envelope straight into `out` (the spool file's
    /// buffer: no copy of it in memory); returns its length and where its
    /// `7bit` flag is (see [`body_flag_offset`]).
    pub fn write_to(&self, out: &mut impl std::io::Write) -> std::io::Result<(u64, u64)> {
        let mut w = IoText {
            out,
            len: 0,
            error: None,
        };
        if self.encode_to(&mut w).is_err() {
            return Err(w
                .error
                .unwrap_or_else(|| std::io::Error::other("envelope encoding failed")));
        }
        // The flag line is the last one, before the empty line.
        let flag = if self.eight_bit {
            0
        } else {
            w.len.saturating_sub(b"7bit\n\n".len() as u64)
        };
        Ok((w.len, flag))
    }

    fn encode_to(&self, s: &mut impl fmt::Write) -> fmt::Result {
        write!(
            s,
            "{MAGIC}\narrival {}\nsender {}\n",
            self.arrival,
            Xtext(&self.sender)
        )?;
        for r in &self.recipients {
            let original = Xtext(&r.original);
            match &r.dest {
                Destination::Local(m) => write!(s, "rcpt local {} {original}", Xtext(m.as_str()))?,
                Destination::Remote(a) => write!(
                    s,
                    "rcpt remote {} {} {original}",
                    Xtext(&a.local),
                    Xtext(&a.domain)
                )?,
                Destination::Refused(why) => write!(s, "rcpt refused {} {original}", why.name())?,
            };
            envelope_dsn::write_rcpt_suffix(s, &r.dsn)?;
            s.write_char('\n')?;
        }
        writeln!(s, "client {}", Xtext(&self.client))?;
        if self.origin == SenderOrigin::Local {
            s.write_str("origin local\n")?;
        }
        if self.smtputf8 {
            s.write_str("smtputf8\n")?;
        }
        if self.requiretls {
            s.write_str("requiretls\n")?;
        }
        envelope_dsn::write_mail_lines(s, &self.dsn)?;
        s.write_str(if self.eight_bit {
            "body 8bit\n"
        } else {
            "body 7bit\n"
        })?;
        s.write_char('\n')
    }

    /// `None`: need more bytes. `Some(Err)`: malformed.
    pub fn decode(buf: &[u8]) -> Option<Result<StoredEnvelope, String>> {
        let (head, body_offset) = split_head(buf)?;
        let text = match std::str::from_utf8(head) {
            Ok(t) => t,
            Err(_) => return Some(Err("envelope is not UTF-8".into())),
        };
        Some(parse(text, body_offset))
    }
}

/// The lines before the first empty line (`\n\n`), and the offset of what
/// follows it; `None` while there is no empty line yet.
pub(super) fn split_head(buf: &[u8]) -> Option<(&[u8], u64)> {
    let end = buf.windows(2).position(|w| w == b"\n\n")?;
    let (head, _) = buf.split_at_checked(end)?;
    Some((head, end as u64 + 2))
}

/// Whether an envelope head (from [`split_head`]) is UTF-8 and starts
/// with a format line this version reads.
pub(super) fn is_head(head: &[u8]) -> bool {
    std::str::from_utf8(head).is_ok_and(|t| matches!(t.split('\n').next(), Some(MAGIC | MAGIC_V1)))
}

fn parse(text: &str, body_offset: u64) -> Result<StoredEnvelope, String> {
    let mut lines = text.split('\n');
    let v1 = match lines.next() {
        Some(MAGIC) => false,
        Some(MAGIC_V1) => true,
        _ => return Err("not a tern queue file".into()),
    };
    let mut env = StoredEnvelope {
        id: QueueId(0),
        arrival: 0,
        sender: String::new(),
        recipients: Vec::new(),
        client: String::new(),
        origin: SenderOrigin::Other,
        eight_bit: false,
        smtputf8: false,
        requiretls: false,
        dsn: DsnMail::default(),
        body_offset,
    };
    let mut seen_body = false;
    for line in lines {
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        match key {
            "arrival" => env.arrival = value.parse().map_err(|_| "bad arrival")?,
            "sender" if v1 => env.sender = value.to_string(),
            "sender" => env.sender = xtext_decode(value).ok_or("bad sender")?,
            "rcpt" if v1 => env.recipients.push(parse_rcpt_v1(value)?),
            "rcpt" => env.recipients.push(parse_rcpt(value)?),
            "client" if v1 => env.client = value.to_string(),
            "client" => env.client = xtext_decode(value).ok_or("bad client")?,
            "origin" if !v1 && value == "local" => env.origin = SenderOrigin::Local,
            "smtputf8" if !v1 && value.is_empty() => env.smtputf8 = true,
            "requiretls" if !v1 && value.is_empty() => env.requiretls = true,
            "ret" | "envid" if !v1 => envelope_dsn::mail_line(&mut env.dsn, key, value)
                .ok_or_else(|| format!("bad {key} line"))?,
            "body" => {
                seen_body = true;
                env.eight_bit = value == "8bit";
            }
            _ => return Err(format!("unknown envelope line {key:?}")),
        }
    }
    if env.recipients.is_empty() || !seen_body {
        return Err("incomplete envelope".into());
    }
    Ok(env)
}

/// `local NAME ORIGINAL`, `remote LOCAL DOMAIN ORIGINAL`, `refused WHY ORIGINAL`.
fn parse_rcpt(value: &str) -> Result<Recipient, String> {
    let bad = || format!("bad recipient line {value:?}");
    // DSN fields are `key=value`; positional xtext never holds `=`.
    let mut dsn = DsnRcpt::default();
    for field in value.split(' ').filter(|f| f.contains('=')) {
        envelope_dsn::rcpt_field(&mut dsn, field).ok_or_else(bad)?;
    }
    let fields: Vec<String> = value
        .split(' ')
        .filter(|f| !f.contains('='))
        .map(xtext_decode)
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    let (dest, original) = match fields.as_slice() {
        [kind, name, original] if kind == "local" => (
            Destination::Local(Mailbox::new(name).ok_or_else(bad)?),
            original,
        ),
        [kind, local, domain, original] if kind == "remote" => (
            Destination::Remote(Address::from_parts(local, domain).map_err(|_| bad())?),
            original,
        ),
        [kind, why, original] if kind == "refused" => (
            Destination::Refused(Refusal::from_name(why).ok_or_else(bad)?),
            original,
        ),
        _ => return Err(bad()),
    };
    Ok(Recipient {
        dest,
        original: original.clone(),
        dsn,
    })
}

/// Format 1: `ADDRESS ORIGINAL`, split at the first space.
fn parse_rcpt_v1(value: &str) -> Result<Recipient, String> {
    let (a, o) = value.split_once(' ').unwrap_or((value, value));
    let bad = || format!("bad recipient line {value:?}");
    let dest = if a.contains('@') {
        Destination::Remote(Address::parse_mailbox(a).map_err(|_| bad())?)
    } else {
        Destination::Local(Mailbox::from_local_part(a).ok_or_else(bad)?)
    };
    Ok(Recipient {
        dest,
        original: o.to_string(),
        dsn: DsnRcpt::default(),
    })
}

/// `fmt::Write` into an `io::Write`, counting the octets and keeping the
/// first error.
struct IoText<'a, W: std::io::Write> {
    out: &'a mut W,
    len: u64,
    error: Option<std::io::Error>,
}

impl<W: std::io::Write> fmt::Write for IoText<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        match self.out.write_all(s.as_bytes()) {
            Ok(()) => {
                self.len += s.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.error = Some(e);
                Err(fmt::Error)
            }
        }
    }
}

/// Reads an xtext value; `None` when it is malformed or not UTF-8.
fn xtext_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => {
                let hi = (bytes.next()? as char).to_digit(16)?;
                let lo = (bytes.next()? as char).to_digit(16)?;
                out.push((hi * 16 + lo) as u8);
            }
            b'!'..=b'~' if b != b'=' => out.push(b),
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// Offset of the '7' in "body 7bit" inside an encoded envelope.
pub fn body_flag_offset(encoded: &[u8]) -> u64 {
    let needle = b"\nbody 7bit\n";
    encoded
        .windows(needle.len())
        .position(|w| w == needle)
        .map_or(0, |p| (p + 6) as u64)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RcptStatus {
    #[default]
    Pending,
    Deferred,
    Sent,
    Failed,
}

impl RcptStatus {
    pub fn is_final(self) -> bool {
        matches!(self, RcptStatus::Sent | RcptStatus::Failed)
    }
    pub fn name(self) -> &'static str {
        match self {
            RcptStatus::Pending => "pending",
            RcptStatus::Deferred => "deferred",
            RcptStatus::Sent => "sent",
            RcptStatus::Failed => "failed",
        }
    }
    fn from_name(name: &str) -> Option<RcptStatus> {
        Some(match name {
            "pending" => RcptStatus::Pending,
            "deferred" => RcptStatus::Deferred,
            "sent" => RcptStatus::Sent,
            "failed" => RcptStatus::Failed,
            _ => return None,
        })
    }
}

/// One recipient's progress: its status and, as decided by the last
/// attempt, why it is deferred or failed, or where it went.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RcptState {
    pub status: RcptStatus,
    /// Deferred or failed: why. `None` while pending and once sent.
    pub reason: Option<Reason>,
    /// Sent: where to (`host[ip]:port`, or the local mailbox file).
    pub relay: String,
}

impl RcptState {
    /// The state an attempt's outcome leaves.
    pub fn from_outcome(outcome: Outcome) -> RcptState {
        match outcome {
            Outcome::Delivered { relay } => RcptState {
                status: RcptStatus::Sent,
                reason: None,
                relay,
            },
            Outcome::Deferred(reason) => RcptState {
                status: RcptStatus::Deferred,
                reason: Some(reason),
                relay: String::new(),
            },
            Outcome::Failed(reason) => RcptState {
                status: RcptStatus::Failed,
                reason: Some(reason),
                relay: String::new(),
            },
        }
    }

    /// In words for `mailq`: the reason's sentence, where it went, or
    /// nothing (pending).
    pub fn describe(&self) -> String {
        match (&self.reason, self.status) {
            (Some(reason), _) => reason.to_string(),
            (None, RcptStatus::Sent) if !self.relay.is_empty() => {
                format!("delivered to {}", self.relay)
            }
            _ => String::new(),
        }
    }
}

/// First line of a state file in the current layout.
const STATE_MAGIC: &str = "tern-state 2";

/// A message's progress as stored in `state/ID`, one line per recipient
/// whose status is known, each reason field by field (never a reply string
/// to be parsed again):
///
/// ```text
/// tern-state 2
/// attempts 2
/// age 3600                      (queue age, s)
/// 0 sent mx.example[192.0.2.1]:25
/// 1 deferred remote mx.example[192.0.2.1]:25 451 4.3.0 try later
/// 2 failed dns - 550 5.1.2 domain x.test does not exist
/// ```
///
/// A reason is `origin relay code status text`: the origin's name
/// ([`Origin::name`]), the relay in xtext (`-` when there is none), the
/// reply code, the RFC 3463 status, then the text to the end of the line.
///
/// `age` is the monotonic time the daemon has held the message (see the
/// `queue` module doc: the wall clock is not trusted for it).
///
/// Migration: files written before this layout have no `tern-state` line
/// and one reply string per recipient (`1 deferred mx[ip]:25 said: 451
/// ...`). They load through [`legacy_reason`], a one-time parse of that
/// string (a relay before " said: " makes the origin Remote, anything else
/// is taken as tern's own: Queue); the next save writes the new layout.
/// Files without an `age` line (the first version) load with age 0.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub states: Vec<RcptState>,
    pub attempts: u32,
    pub age: u64,
}

pub fn encode_state(states: &[RcptState], attempts: u32, age: u64) -> Vec<u8> {
    let mut s = format!("{STATE_MAGIC}\nattempts {attempts}\nage {age}\n");
    for (i, st) in states.iter().enumerate() {
        s.push_str(&format!("{i} {}", st.status.name()));
        match (st.status, &st.reason) {
            (RcptStatus::Sent, _) => s.push_str(&format!(" {}", RelayField(&st.relay))),
            (_, Some(r)) => s.push_str(&format!(
                " {} {} {} {} {}",
                r.origin.name(),
                RelayField(r.origin.relay().unwrap_or("")),
                r.code,
                r.status,
                one_line(&r.text)
            )),
            (_, None) => {}
        }
        s.push('\n');
    }
    s.into_bytes()
}

/// A relay as one space-free field: xtext, `-` for none.
struct RelayField<'a>(&'a str);

impl fmt::Display for RelayField<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            "" => f.write_str("-"),
            "-" => f.write_str("+2D"),
            relay => write!(f, "{}", Xtext(relay)),
        }
    }
}

fn relay_field(s: &str) -> Option<String> {
    match s {
        "-" => Some(String::new()),
        _ => xtext_decode(s),
    }
}

pub fn decode_state(bytes: &[u8], n: usize) -> Option<Progress> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut lines = text.lines().peekable();
    let current = match lines.peek() {
        Some(&STATE_MAGIC) => {
            lines.next();
            true
        }
        Some(first) if first.starts_with("tern-state ") => return None,
        _ => false,
    };
    let attempts = lines.next()?.strip_prefix("attempts ")?.parse().ok()?;
    let mut progress = Progress {
        states: vec![RcptState::default(); n],
        attempts,
        age: 0,
    };
    for line in lines {
        if let Some(age) = line.strip_prefix("age ") {
            progress.age = age.parse().ok()?;
            continue;
        }
        let mut parts = line.splitn(3, ' ');
        let i: usize = parts.next()?.parse().ok()?;
        let status = RcptStatus::from_name(parts.next()?)?;
        let rest = parts.next().unwrap_or("");
        let state = if current {
            decode_rcpt(status, rest)?
        } else {
            legacy_state(status, rest)
        };
        *progress.states.get_mut(i)? = state;
    }
    Some(progress)
}

/// One recipient's fields after its status (current layout).
fn decode_rcpt(status: RcptStatus, rest: &str) -> Option<RcptState> {
    let mut state = RcptState {
        status,
        ..RcptState::default()
    };
    match status {
        _ if rest.is_empty() => {}
        RcptStatus::Sent => state.relay = relay_field(rest)?,
        RcptStatus::Pending | RcptStatus::Deferred | RcptStatus::Failed => {
            let mut f = rest.splitn(5, ' ');
            let origin = f.next()?;
            let relay = relay_field(f.next()?)?;
            let code = f.next()?;
            if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let code: u16 = code.parse().ok().filter(|c| (100..600).contains(c))?;
            let reply_status = Status::parse(f.next()?)?;
            let text = one_line(f.next().unwrap_or(""));
            let origin = match origin {
                "remote" => Origin::Remote { relay },
                "webhook" => Origin::Webhook { url: relay },
                other if relay.is_empty() => Origin::from_name(other)?,
                _ => return None,
            };
            state.reason = Some(Reason {
                origin,
                code,
                status: reply_status,
                text,
            });
        }
    }
    Some(state)
}

/// A recipient line of the old layout: the reply string, parsed once.
fn legacy_state(status: RcptStatus, reply: &str) -> RcptState {
    let mut state = RcptState {
        status,
        ..RcptState::default()
    };
    match status {
        RcptStatus::Sent => {
            state.relay = match reply.split_once(" said: ") {
                Some((relay, _)) => relay.to_string(),
                None => reply.to_string(),
            }
        }
        // The old writer kept no reply for pending recipients.
        RcptStatus::Pending => {}
        RcptStatus::Deferred | RcptStatus::Failed => {
            state.reason = legacy_reason(reply, status == RcptStatus::Failed);
        }
    }
    state
}

/// The one-time migration parse of an old state file's reply string
/// (`relay said: 550 5.1.1 text`, `451 4.4.1 text`, `5.4.7 text`): code and
/// status where present, else the generic ones for a deferral or a
/// failure; the origin is Remote when a relay said it, else Queue.
pub fn legacy_reason(reply: &str, failed: bool) -> Option<Reason> {
    let reply = reply.trim();
    if reply.is_empty() {
        return None;
    }
    let (origin, rest) = match reply.split_once(" said: ") {
        Some((relay, rest)) => (
            Origin::Remote {
                relay: relay.to_string(),
            },
            rest,
        ),
        None => (Origin::Queue, reply),
    };
    let mut words = rest.splitn(2, ' ');
    let first = words.next().unwrap_or("");
    let (code, rest) = match first.parse::<u16>() {
        Ok(c) if first.len() == 3 && (200..600).contains(&c) => (Some(c), words.next()),
        _ => (None, Some(rest)),
    };
    let rest = rest.unwrap_or("");
    let mut words = rest.splitn(2, ' ');
    let (status, text) = match Status::parse(words.next().unwrap_or("")) {
        Some(st) => (Some(st), words.next().unwrap_or("")),
        None => (None, rest),
    };
    let code = code.unwrap_or(match status {
        Some(st) if st.class == 4 => 451,
        Some(_) => 554,
        None if failed => 554,
        None => 451,
    });
    Some(Reason {
        origin,
        code,
        status: status.unwrap_or_else(|| Status::generic(code)),
        text: one_line(text),
    })
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)]
mod tests {
    use super::*;

    #[test]
    fn id_text_is_sixteen_upper_hex_digits_and_parses_back() {
        for raw in [0, 1, 0xABCDEF, u64::MAX, QueueId::new(1_795_000_000, 42).0] {
            let id = QueueId(raw);
            assert_eq!(id.text().as_str(), format!("{raw:016X}"));
            assert_eq!(id.to_string().parse::<QueueId>(), Ok(id));
        }
    }

    #[test]
    fn queue_id_roundtrip() {
        let id = QueueId::new(1_795_000_000, 7);
        let s = id.to_string();
        assert_eq!(s.len(), 16);
        assert_eq!(s.parse::<QueueId>(), Ok(id));
        assert!("xyz".parse::<QueueId>().is_err());
        assert!(QueueId::new(10, 1) < QueueId::new(11, 0));
    }

    #[test]
    fn envelope_roundtrip_and_flag_offset() {
        let env = StoredEnvelope {
            id: QueueId(1),
            arrival: 5,
            sender: String::new(),
            recipients: vec![Recipient {
                dest: Destination::Local(Mailbox::new("a").unwrap()),
                original: "c@d".into(),
                dsn: Default::default(),
            }],
            client: "x [1.2.3.4]".into(),
            origin: crate::rewrite::SenderOrigin::Other,
            eight_bit: false,
            smtputf8: false,
            requiretls: false,
            dsn: Default::default(),
            body_offset: 0,
        };
        let mut bytes = env.encode();
        let off = body_flag_offset(&bytes) as usize;
        assert_eq!(bytes[off], b'7');
        // Written straight into a file's buffer: the same bytes and flag.
        let mut direct = Vec::new();
        assert_eq!(
            env.write_to(&mut direct).unwrap(),
            (bytes.len() as u64, off as u64)
        );
        assert_eq!(direct, bytes);
        let eight = StoredEnvelope {
            eight_bit: true,
            ..env.clone()
        };
        let mut direct = Vec::new();
        assert_eq!(eight.write_to(&mut direct).unwrap().1, 0);
        assert_eq!(direct, eight.encode());
        bytes[off] = b'8';
        bytes.extend_from_slice(b"content");
        let d = StoredEnvelope::decode(&bytes).unwrap().unwrap();
        assert!(d.eight_bit);
        assert_eq!(d.sender, "");
        assert_eq!(d.recipients[0].original, "c@d");
        assert_eq!(&bytes[d.body_offset as usize..], b"content");
        assert!(StoredEnvelope::decode(b"tern-queue 1\narrival 5").is_none());
        assert!(StoredEnvelope::decode(b"junk\n\n").unwrap().is_err());
    }

    fn remote(s: &str) -> Recipient {
        let a = Address::parse_mailbox(s).unwrap();
        Recipient {
            original: a.to_string(),
            dest: Destination::Remote(a),
            dsn: Default::default(),
        }
    }

    fn roundtrip(env: &StoredEnvelope) -> StoredEnvelope {
        let mut bytes = env.encode();
        bytes.extend_from_slice(b"content");
        let mut back = StoredEnvelope::decode(&bytes).unwrap().unwrap();
        assert_eq!(&bytes[back.body_offset as usize..], b"content");
        back.body_offset = env.body_offset;
        back
    }

    #[cfg(feature = "idn")]
    #[test]
    fn smtputf8_flag_and_utf8_addresses_roundtrip() {
        let mut env = envelope_with(
            vec![remote("jöe@bücher.example"), remote("用户@x.example")],
            "ä@b.example",
        );
        env.smtputf8 = true;
        let text = String::from_utf8(env.encode()).unwrap();
        // The file stays ASCII: UTF-8 octets are xtext, the domain an A-label.
        assert!(text.is_ascii(), "{text}");
        assert!(text.contains("\nsmtputf8\nbody "), "{text}");
        assert!(
            text.contains("rcpt remote j+C3+B6e xn--bcher-kva.example "),
            "{text}"
        );
        assert_eq!(roundtrip(&env), env);
        env.smtputf8 = false;
        assert!(!String::from_utf8(env.encode())
            .unwrap()
            .contains("smtputf8"));
        assert_eq!(roundtrip(&env), env);
    }

    #[test]
    fn requiretls_flag_roundtrips_and_is_absent_otherwise() {
        let mut env = envelope_with(vec![remote("j@x.example")], "a@b.example");
        let plain = env.encode();
        assert!(!String::from_utf8(plain.clone())
            .unwrap()
            .contains("requiretls"));
        env.requiretls = true;
        let text = String::from_utf8(env.encode()).unwrap();
        assert!(text.contains("\nrequiretls\nbody 8bit\n\n"), "{text}");
        assert_eq!(roundtrip(&env), env);
        // A file written before the line existed loads without the flag.
        env.requiretls = false;
        assert_eq!(env.encode(), plain);
        assert_eq!(roundtrip(&env), env);
        // The line takes no value.
        let bad = text.replace("\nrequiretls\n", "\nrequiretls yes\n");
        assert!(StoredEnvelope::decode(format!("{bad}x").as_bytes())
            .unwrap()
            .is_err());
    }

    #[test]
    fn requiretls_failure_reason_survives_the_state_file() {
        use crate::delivery::outcome::{requiretls_unsatisfied, RequireTlsGap};
        let r = requiretls_unsatisfied("relay.test[192.0.2.5]:587", &RequireTlsGap::NotOffered);
        let states = vec![RcptState::from_outcome(Outcome::Failed(r.clone()))];
        let p = decode_state(&encode_state(&states, 1, 0), 1).unwrap();
        assert_eq!(p.states[0].reason.as_ref(), Some(&r));
        assert_eq!(
            r.to_string(),
            "550 5.7.30 REQUIRETLS support required: relay.test[192.0.2.5]:587 does not offer REQUIRETLS"
        );
    }

    fn envelope_with(recipients: Vec<Recipient>, sender: &str) -> StoredEnvelope {
        StoredEnvelope {
            id: QueueId(0),
            arrival: 1_795_000_000,
            sender: sender.into(),
            recipients,
            client: "helo name [192.0.2.1]".into(),
            origin: crate::rewrite::SenderOrigin::Other,
            eight_bit: true,
            smtputf8: false,
            requiretls: false,
            dsn: Default::default(),
            body_offset: 0,
        }
    }

    /// Issue 11 item 7: the space in a quoted local part split the line.
    #[test]
    fn quoted_local_part_with_space_survives_the_spool() {
        let env = envelope_with(
            vec![
                remote("\"john doe\"@example.com"),
                remote("\"a@b c\\\"d\"@[192.0.2.7]"),
                Recipient {
                    dest: Destination::Refused(Refusal::UnknownUser),
                    original: "nosuch@mx.test".into(),
                    dsn: Default::default(),
                },
            ],
            "\"x y\"@example.org",
        );
        let back = roundtrip(&env);
        assert_eq!(back, env);
        match &back.recipients[0].dest {
            Destination::Remote(a) => {
                assert_eq!(a.local, "john doe");
                assert_eq!(a.domain, "example.com");
            }
            other => panic!("{other:?}"),
        }
    }

    /// Generates address parts.
    struct Gen(crate::test_rng::TestRng);

    impl Gen {
        fn below(&mut self, n: usize) -> usize {
            self.0.below(n)
        }
        fn pick(&mut self, set: &[u8]) -> char {
            self.0.pick(set) as char
        }
        fn local_part(&mut self) -> String {
            let atext = b"abcXYZ019!#$%&'*+-/=?^_`{|}~";
            let qtext: Vec<u8> = (b' '..=b'~').collect();
            let len = 1 + self.below(20);
            if self.below(2) == 0 {
                let mut s = String::new();
                for i in 0..len {
                    if i > 0 && i + 1 < len && self.below(5) == 0 && !s.ends_with('.') {
                        s.push('.');
                    } else {
                        s.push(self.pick(atext));
                    }
                }
                s
            } else {
                (0..len).map(|_| self.pick(&qtext)).collect()
            }
        }
        fn domain(&mut self) -> String {
            match self.below(4) {
                0 => format!("[192.0.2.{}]", self.below(256)),
                1 => format!("[IPv6:2001:db8::{:x}]", self.below(65536)),
                _ => {
                    let labels = 1 + self.below(3);
                    let ldh = b"abcxyz0189-";
                    (0..labels)
                        .map(|_| {
                            let n = 1 + self.below(10);
                            let mut l: String = (0..n).map(|_| self.pick(ldh)).collect();
                            l = l.trim_matches('-').to_string();
                            if l.is_empty() {
                                "a".to_string()
                            } else {
                                l
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(".")
                }
            }
        }
    }

    /// Every valid address (dot-atoms, quoted strings with any printable
    /// character and space, address literals) reads back from the spool as
    /// the same value, and prints and parses back to itself.
    #[test]
    fn every_valid_address_roundtrips_through_the_spool() {
        let mut g = Gen(crate::test_rng::TestRng::new(7));
        let mut tried = 0;
        for _ in 0..5000 {
            let local = g.local_part();
            let domain = g.domain();
            let Ok(a) = Address::from_parts(&local, &domain) else {
                continue;
            };
            tried += 1;
            assert_eq!(Address::parse_mailbox(&a.to_string()), Ok(a.clone()));
            let text = a.to_string();
            assert!(!text.contains(['\r', '\n', '\0']), "{text:?}");
            let env = envelope_with(
                vec![Recipient {
                    dest: Destination::Remote(a.clone()),
                    original: text.clone(),
                    dsn: Default::default(),
                }],
                &text,
            );
            assert_eq!(roundtrip(&env), env, "{text}");
        }
        assert!(tried > 2500, "only {tried} valid addresses generated");
    }

    #[test]
    fn format_1_files_still_load() {
        let v1 = b"tern-queue 1\narrival 5\nsender a@b.example\nrcpt root postmaster@localhost\nrcpt x@y.example x@y.example\nclient h [127.0.0.1]\nbody 7bit\n\nbody";
        let env = StoredEnvelope::decode(v1).unwrap().unwrap();
        assert_eq!(env.sender, "a@b.example");
        assert_eq!(
            env.recipients[0].dest,
            Destination::Local(Mailbox::new("root").unwrap())
        );
        assert_eq!(env.recipients[1], remote("x@y.example"));
        assert_eq!(env.client, "h [127.0.0.1]");
    }

    /// Issue 14: the origin decided at reception survives the spool; files
    /// without the line (all older ones) load as `Other`, and only local
    /// messages carry it.
    #[test]
    fn origin_roundtrips_and_old_files_load_as_other() {
        let mut env = envelope_with(vec![remote("far@remote.test")], "root@router.lan");
        assert!(!String::from_utf8(env.encode()).unwrap().contains("origin"));
        assert_eq!(roundtrip(&env).origin, SenderOrigin::Other);
        env.origin = SenderOrigin::Local;
        let text = String::from_utf8(env.encode()).unwrap();
        assert!(text.contains("\norigin local\nbody 8bit\n"), "{text}");
        assert_eq!(roundtrip(&env), env);
        // The 7bit flag is still found (patched in place at commit).
        env.eight_bit = false;
        let bytes = env.encode();
        assert_eq!(bytes[body_flag_offset(&bytes) as usize], b'7');
        let old = b"tern-queue 2\narrival 5\nsender root@router.lan\nrcpt remote far remote.test far@remote.test\nclient local+20uid+200\nbody 7bit\n\nx";
        let back = StoredEnvelope::decode(old).unwrap().unwrap();
        assert_eq!(back.origin, SenderOrigin::Other);
        assert_eq!(back.client, "local uid 0");
        for bad in ["origin", "origin remote", "origin local x"] {
            let text =
                format!("tern-queue 2\narrival 5\nsender \nrcpt local joe x\n{bad}\nbody 7bit\n\n");
            assert!(
                StoredEnvelope::decode(text.as_bytes()).unwrap().is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn malformed_recipient_lines_are_errors_not_panics() {
        for line in [
            "rcpt",
            "rcpt local",
            "rcpt local ../etc x",
            "rcpt remote a b",
            "rcpt remote a bad..domain x",
            "rcpt refused nonsense x",
            "rcpt local joe x+4",
            "rcpt local joe x+ZZ",
            "rcpt local joe +C3+28",
            "rcpt other joe x",
        ] {
            let text = format!("tern-queue 2\narrival 5\nsender \n{line}\nclient c\nbody 7bit\n\n");
            assert!(
                StoredEnvelope::decode(text.as_bytes()).unwrap().is_err(),
                "{line}"
            );
        }
    }

    #[test]
    fn state_roundtrip_keeps_every_reason_field() {
        use crate::delivery::outcome;
        let states = vec![
            RcptState::from_outcome(Outcome::Delivered {
                relay: "mx.example[192.0.2.1]:25".into(),
            }),
            RcptState::from_outcome(Outcome::Deferred(Reason::remote(
                "mx.example[192.0.2.1]:25",
                451,
                Status::parse("4.3.0"),
                "try  later ",
            ))),
            RcptState::from_outcome(Outcome::Failed(outcome::dns_no_such_domain("x.test"))),
            RcptState::default(),
            RcptState::from_outcome(Outcome::Deferred(outcome::connect_failed(
                "192.0.2.1:25",
                "connection refused",
            ))),
            RcptState::from_outcome(Outcome::Delivered { relay: "-".into() }),
            RcptState::from_outcome(Outcome::Delivered {
                relay: "maildir /var/mail/joe x".into(),
            }),
            RcptState::from_outcome(Outcome::Failed(outcome::webhook_refused(
                "https://ntfy.example/a?t=1",
                404,
                "not found",
            ))),
        ];
        let encoded = encode_state(&states, 3, 86_400);
        let text = String::from_utf8(encoded.clone()).unwrap();
        assert!(
            text.starts_with("tern-state 2\nattempts 3\nage 86400\n"),
            "{text}"
        );
        assert!(
            text.contains("\n1 deferred remote mx.example[192.0.2.1]:25 451 4.3.0 try  later \n"),
            "{text}"
        );
        assert!(
            text.contains("\n2 failed dns - 550 5.1.2 domain x.test does not exist\n"),
            "{text}"
        );
        assert!(text.contains("\n3 pending\n"), "{text}");
        assert!(
            text.contains(
                "\n7 failed webhook https://ntfy.example/a?t+3D1 550 5.0.0 HTTP status 404: not found\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("\n6 sent maildir+20/var/mail/joe+20x\n"),
            "{text}"
        );
        let p = decode_state(&encoded, states.len()).unwrap();
        assert_eq!((p.states, p.attempts, p.age), (states, 3, 86_400));
        // A later layout, or broken fields, are not guessed at.
        assert!(decode_state(b"tern-state 3\nattempts 1\n", 1).is_none());
        for bad in [
            "0 failed dns mx 550 5.1.1 x",
            "0 failed nosuch - 550 5.1.1 x",
            "0 failed dns - 55 5.1.1 x",
            "0 failed dns - 550 5.1 x",
            "0 failed dns -",
            "0 sent a+zz",
        ] {
            let file = format!("tern-state 2\nattempts 1\n{bad}\n");
            assert!(decode_state(file.as_bytes(), 1).is_none(), "{bad}");
        }
        assert!(decode_state(b"attempts 1\nage x\n", 1).is_none());
    }

    #[test]
    fn old_state_files_migrate_to_reasons() {
        // Written before reasons were typed: one reply string each, and (the
        // first version) no age line.
        let old = "attempts 2\n\
                   0 sent mx.example[192.0.2.1]:25 said: 250 2.0.0 ok\n\
                   1 deferred mx.example[192.0.2.1]:25 said: 451 4.3.0 try later\n\
                   2 deferred 451 4.4.1 connect to 192.0.2.1:25: Connection refused (os error 111)\n\
                   3 failed 5.4.7 message expired after 9s in the queue; last error: x\n\
                   4 sent maildir /var/mail/joe/new/1.x\n\
                   5 pending \n";
        let p = decode_state(old.as_bytes(), 6).unwrap();
        assert_eq!((p.attempts, p.age), (2, 0));
        let s = &p.states;
        assert_eq!(s[0].status, RcptStatus::Sent);
        assert_eq!(s[0].relay, "mx.example[192.0.2.1]:25");
        assert_eq!(
            s[1].reason,
            Some(Reason::remote(
                "mx.example[192.0.2.1]:25",
                451,
                Status::parse("4.3.0"),
                "try later"
            ))
        );
        let r2 = s[2].reason.as_ref().unwrap();
        assert_eq!((r2.origin.clone(), r2.code), (Origin::Queue, 451));
        assert_eq!(r2.status, Status::new(4, 4, 1));
        assert!(r2.text.starts_with("connect to 192.0.2.1:25"), "{r2}");
        let r3 = s[3].reason.as_ref().unwrap();
        assert_eq!((r3.code, r3.status), (554, Status::new(5, 4, 7)));
        assert_eq!(s[4].relay, "maildir /var/mail/joe/new/1.x");
        assert_eq!(s[5], RcptState::default());
        // Saved again, it is in the new layout and loads the same.
        let again = encode_state(&p.states, p.attempts, p.age);
        assert!(again.starts_with(b"tern-state 2\n"));
        assert_eq!(decode_state(&again, 6).unwrap().states, p.states);
        // A bare code without an enhanced one gets the class's generic one.
        let r = legacy_reason("554 denied", true).unwrap();
        assert_eq!(
            (r.code, r.status, r.text.as_str()),
            (554, Status::new(5, 0, 0), "denied")
        );
        assert_eq!(legacy_reason("odd words", false).unwrap().code, 451);
        assert_eq!(legacy_reason("  ", false), None);
    }
}
