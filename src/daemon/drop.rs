//! Importing sendmail drops (see `spool::drop`): each complete drop file is
//! validated like remote input, copied into the spool with CRLF line ends
//! and a `Received:` header, committed, and only then unlinked.

use std::fs;
use std::io::Read;
use std::path::Path;

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
            match self.import_drop(&path) {
                Ok(id) => {
                    let _ = fs::remove_file(&path);
                    self.queue.schedule(id, super::mono_now());
                }
                Err(why) => {
                    log::error!("drop {}: {why}; moved to corrupt/", path.display());
                    let name = path
                        .file_name()
                        .map(|n| n.to_os_string())
                        .unwrap_or_default();
                    let _ = fs::rename(&path, self.spool.root().join("corrupt").join(name));
                }
            }
        }
    }

    fn import_drop(&mut self, path: &Path) -> Result<QueueId, String> {
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
            return Err("no recipients".into());
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
        let mut inc = self.spool.create(&env).map_err(|e| format!("spool: {e}"))?;
        let received = format!(
            "Received: by {} (tern sendmail, uid {uid})\r\n\tid {}; {}\r\n",
            self.cfg.hostname,
            inc.id,
            rfc5322_date(now as i64, 0)
        );
        let mut conv = LineEnds::default();
        let mut out = Vec::with_capacity(8192);
        let mut buf = [0u8; 8192];
        let result: Result<(), String> = (|| {
            inc.write(received.as_bytes()).map_err(|e| e.to_string())?;
            loop {
                let n = file.read(&mut buf).map_err(|e| e.to_string())?;
                if n == 0 {
                    break;
                }
                out.clear();
                conv.convert(&buf[..n], &mut out);
                inc.write(&out).map_err(|e| e.to_string())?;
                if inc.size > self.cfg.max_message_size {
                    return Err(format!(
                        "message exceeds max_message_size ({})",
                        self.cfg.max_message_size
                    ));
                }
            }
            out.clear();
            conv.finish(&mut out);
            inc.write(&out).map_err(|e| e.to_string())?;
            if conv.eight_bit {
                inc.mark_eight_bit().map_err(|e| e.to_string())?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            self.spool.discard(inc);
            return Err(e);
        }
        let size = inc.size;
        let nrcpt = env.recipients.len();
        match self.spool.commit(vec![inc]).pop() {
            Some(Ok(id)) => {
                log::info!(
                    "{id}: from=<{sender}> size={size} nrcpt={nrcpt} client=local uid={uid}"
                );
                Ok(id)
            }
            Some(Err(e)) => Err(format!("commit: {e}")),
            None => Err("commit: no result".into()),
        }
    }
}

/// LF, CR LF and bare CR in, CRLF out; a final line end is added if missing.
#[derive(Default)]
struct LineEnds {
    after_cr: bool,
    at_line_start: bool,
    started: bool,
    eight_bit: bool,
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
                }
                _ if self.after_cr => {
                    // The previous CR was bare.
                    out.extend_from_slice(b"\r\n");
                    self.after_cr = b == b'\r';
                    if b != b'\r' {
                        out.push(b);
                    }
                    self.at_line_start = false;
                }
                b'\r' => self.after_cr = true,
                _ => {
                    out.push(b);
                    self.at_line_start = false;
                }
            }
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        if self.after_cr || (self.started && !self.at_line_start) {
            out.extend_from_slice(b"\r\n");
        }
    }
}

#[cfg(test)]
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
}
