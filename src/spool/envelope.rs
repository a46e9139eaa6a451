//! On-disk encodings of the envelope (at the head of `msg/ID`) and of the
//! per-recipient state (`state/ID`). Both are small line-oriented text so an
//! administrator can read them with `less`; values never contain a newline
//! (addresses are validated at the edge, replies are flattened here).
//!
//! ```text
//! tern-queue 1
//! arrival 1795000000
//! sender a@b.example          (empty value: the null sender)
//! rcpt x@y.example x@y.example   (final address, then the one the client gave)
//! client helo.example [192.0.2.1]
//! body 7bit                   (patched in place to 8bit before the commit)
//! <empty line>
//! <content, CRLF lines>
//! ```

use std::fmt;
use std::str::FromStr;

/// An envelope larger than this is refused as damaged.
pub const MAX_ENVELOPE: usize = 256 * 1024;
const MAGIC: &str = "tern-queue 1";

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
            *b = HEX[((self.0 >> (60 - 4 * i)) & 0xF) as usize];
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
    /// Where to deliver (after alias expansion).
    pub address: String,
    /// What the client asked for (for DSNs and logs).
    pub original: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEnvelope {
    pub id: QueueId,
    pub arrival: u64,
    /// Empty: the null sender `<>`.
    pub sender: String,
    pub recipients: Vec<Recipient>,
    pub client: String,
    pub eight_bit: bool,
    /// Where the content starts in the file (set by `decode`).
    pub body_offset: u64,
}

impl StoredEnvelope {
    pub fn encode(&self) -> Vec<u8> {
        let mut s = format!(
            "{MAGIC}\narrival {}\nsender {}\n",
            self.arrival,
            flat(&self.sender)
        );
        for r in &self.recipients {
            s.push_str(&format!(
                "rcpt {} {}\n",
                flat(&r.address),
                flat(&r.original)
            ));
        }
        s.push_str(&format!("client {}\n", flat(&self.client)));
        s.push_str(if self.eight_bit {
            "body 8bit\n"
        } else {
            "body 7bit\n"
        });
        s.push('\n');
        s.into_bytes()
    }

    /// `None`: need more bytes. `Some(Err)`: malformed.
    pub fn decode(buf: &[u8]) -> Option<Result<StoredEnvelope, String>> {
        let end = buf.windows(2).position(|w| w == b"\n\n")?;
        let text = match std::str::from_utf8(&buf[..end]) {
            Ok(t) => t,
            Err(_) => return Some(Err("envelope is not UTF-8".into())),
        };
        Some(parse(text, (end + 2) as u64))
    }
}

fn parse(text: &str, body_offset: u64) -> Result<StoredEnvelope, String> {
    let mut lines = text.split('\n');
    if lines.next() != Some(MAGIC) {
        return Err("not a tern queue file".into());
    }
    let mut env = StoredEnvelope {
        id: QueueId(0),
        arrival: 0,
        sender: String::new(),
        recipients: Vec::new(),
        client: String::new(),
        eight_bit: false,
        body_offset,
    };
    let mut seen_body = false;
    for line in lines {
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        match key {
            "arrival" => env.arrival = value.parse().map_err(|_| "bad arrival")?,
            "sender" => env.sender = value.to_string(),
            "rcpt" => {
                let (a, o) = value.split_once(' ').unwrap_or((value, value));
                env.recipients.push(Recipient {
                    address: a.to_string(),
                    original: o.to_string(),
                });
            }
            "client" => env.client = value.to_string(),
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

/// Offset of the '7' in "body 7bit" inside an encoded envelope.
pub fn body_flag_offset(encoded: &[u8]) -> u64 {
    let needle = b"\nbody 7bit\n";
    encoded
        .windows(needle.len())
        .position(|w| w == needle)
        .map_or(0, |p| (p + 6) as u64)
}

fn flat(s: &str) -> String {
    s.chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect()
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
    fn name(self) -> &'static str {
        match self {
            RcptStatus::Pending => "pending",
            RcptStatus::Deferred => "deferred",
            RcptStatus::Sent => "sent",
            RcptStatus::Failed => "failed",
        }
    }
}

/// One recipient's progress: status and the last reply or error seen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RcptState {
    pub status: RcptStatus,
    pub reply: String,
}

/// A message's progress as stored in `state/ID`:
///
/// ```text
/// attempts 2
/// age 3600                      (queue age, s; absent before: read as 0)
/// 0 sent 250 2.0.0 ok           (recipient index, status, last reply)
/// 1 deferred 451 4.3.0 later
/// ```
///
/// `age` is the monotonic time the daemon has held the message (see the
/// `queue` module doc: the wall clock is not trusted for it). A file
/// written before the field existed loads with age 0.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub states: Vec<RcptState>,
    pub attempts: u32,
    pub age: u64,
}

pub fn encode_state(states: &[RcptState], attempts: u32, age: u64) -> Vec<u8> {
    let mut s = format!("attempts {attempts}\nage {age}\n");
    for (i, st) in states.iter().enumerate() {
        s.push_str(&format!("{i} {} {}\n", st.status.name(), flat(&st.reply)));
    }
    s.into_bytes()
}

pub fn decode_state(bytes: &[u8], n: usize) -> Option<Progress> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut lines = text.lines();
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
        let status = match parts.next()? {
            "pending" => RcptStatus::Pending,
            "deferred" => RcptStatus::Deferred,
            "sent" => RcptStatus::Sent,
            "failed" => RcptStatus::Failed,
            _ => return None,
        };
        let reply = parts.next().unwrap_or("").to_string();
        *progress.states.get_mut(i)? = RcptState { status, reply };
    }
    Some(progress)
}

#[cfg(test)]
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
                address: "a@b".into(),
                original: "c@d".into(),
            }],
            client: "x [1.2.3.4]".into(),
            eight_bit: false,
            body_offset: 0,
        };
        let mut bytes = env.encode();
        let off = body_flag_offset(&bytes) as usize;
        assert_eq!(bytes[off], b'7');
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

    #[test]
    fn state_roundtrip_with_age_and_old_files_without_it() {
        let states = vec![
            RcptState {
                status: RcptStatus::Sent,
                reply: "250 ok".into(),
            },
            RcptState {
                status: RcptStatus::Deferred,
                reply: "451 4.3.0 later".into(),
            },
        ];
        let p = decode_state(&encode_state(&states, 3, 86_400), 2).unwrap();
        assert_eq!((p.states, p.attempts, p.age), (states.clone(), 3, 86_400));
        // Written by the first version: no age line.
        let old = b"attempts 2\n0 sent 250 ok\n1 deferred 451 4.3.0 later\n";
        let p = decode_state(old, 2).unwrap();
        assert_eq!((p.states, p.attempts, p.age), (states, 2, 0));
        assert!(decode_state(b"attempts 1\nage x\n", 1).is_none());
    }
}
