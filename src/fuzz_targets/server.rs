//! Driver for the SMTP server session (`smtp_server`): a whole dialog with
//! the daemon's recipient policy, AUTH and STARTTLS events, driven the way
//! the reactor drives it.
//!
//! Separate from the other groups of targets: see the parent module for what
//! the drivers share.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::delivery::aliases::Aliases;
use crate::delivery::{Destination, RecipientPolicy};
use crate::smtp::address::Address;
use crate::smtp::reply::{self, Reply};
use crate::smtp::server::{
    AuthVerdict, Event, ListenerKind, Policy, ServerSession, SessionConfig, OUTPUT_HIGH_WATER,
};

use super::{assert_crlf_only, assert_reply_lines, fuzz_users, is_fuzz_local, Input, FUZZ_ALIASES};

/// The daemon's recipient policy on fixed tables; `joe`/`secret` may log in.
struct FuzzPolicy {
    aliases: Aliases,
    users: HashSet<String>,
}

impl FuzzPolicy {
    fn new() -> FuzzPolicy {
        FuzzPolicy {
            aliases: Aliases::parse(FUZZ_ALIASES).0,
            users: fuzz_users(),
        }
    }
}

impl Policy for FuzzPolicy {
    fn check_recipient(
        &self,
        rcpt: &Address,
        relay_allowed: bool,
    ) -> Result<Vec<Destination>, Reply> {
        let policy = RecipientPolicy {
            is_local_domain: &is_fuzz_local,
            aliases: &self.aliases,
            users: &self.users,
            any_local: false,
        };
        policy.resolve(rcpt, relay_allowed)
    }
}

/// The fuzz driver's users: joe/secret, and a blocked client.
fn fuzz_verdict(user: &str, password: &str) -> AuthVerdict {
    match (user, password) {
        ("joe", "secret") => AuthVerdict::Ok,
        ("blocked", _) => AuthVerdict::Blocked,
        _ => AuthVerdict::Bad,
    }
}

struct ServerDriver {
    s: ServerSession,
    cfg: SessionConfig,
    kind: ListenerKind,
    relay_allowed: bool,
    policy: FuzzPolicy,
    now: Instant,
    pending: Vec<u8>,
    stored: Vec<u8>,
    written: Vec<u8>,
    refuse_data: bool,
    fail_commit: bool,
    data_starts: usize,
    commits: usize,
    /// Messages committed with success, without their `Received:` field.
    messages: Vec<Vec<u8>>,
}

impl ServerDriver {
    /// Feeds `chunk` and runs the session until it wants more input.
    fn feed(&mut self, chunk: &[u8], read_output: bool) {
        self.pending.extend_from_slice(chunk);
        loop {
            let closing = self.s.is_closing();
            let out_before = self.s.output().len();
            let n = self.s.handle_input(&self.pending, self.now, &self.policy);
            assert!(n <= self.pending.len());
            if closing {
                assert_eq!(n, self.pending.len(), "a closing session reads everything");
                assert_eq!(self.s.output().len(), out_before, "output after closing");
            }
            self.pending.drain(..n);
            self.stored.extend_from_slice(self.s.body());
            self.s.clear_body();
            let progressed = self.events();
            assert!(
                self.s.output().len() <= OUTPUT_HIGH_WATER + 4096,
                "unread replies grow without bound: {}",
                self.s.output().len()
            );
            if read_output {
                self.read_output();
            }
            if !progressed && (n == 0 || self.pending.is_empty()) {
                break;
            }
        }
    }

    fn read_output(&mut self) {
        let n = self.s.output().len();
        self.written.extend_from_slice(self.s.output());
        self.s.consume_output(n);
    }

    fn events(&mut self) -> bool {
        let mut any = false;
        while let Some(event) = self.s.poll_event() {
            any = true;
            match event {
                Event::DataStart => self.data_start(),
                Event::Commit => self.commit(),
                Event::Abort => self.stored.clear(),
                Event::StartTls => {
                    assert!(self.cfg.tls_available && self.s.tls().is_none());
                    // The driver drops what was pipelined after STARTTLS.
                    self.pending.clear();
                    self.read_output();
                    self.s
                        .tls_started("TLSv1.3 TLS13_AES_128_GCM_SHA256".into(), self.now);
                }
                Event::Authenticate(c) => self
                    .s
                    .auth_verdict(fuzz_verdict(&c.user, &c.password), self.now),
            }
        }
        any
    }

    fn data_start(&mut self) {
        let env = self.s.envelope().expect("DataStart without an envelope");
        assert!(!env.recipients.is_empty() && env.recipients.len() <= self.cfg.max_recipients);
        assert!(!env.destinations.is_empty());
        if self.kind != ListenerKind::Relay {
            assert!(self.s.auth_user().is_some(), "submission without AUTH");
        }
        let may_relay = self.relay_allowed || self.s.auth_user().is_some();
        for (dest, original) in &env.destinations {
            if let Destination::Remote(a) = dest {
                // Remote only as the client asked when it may relay; an
                // alias in a local domain may forward anywhere.
                let asked = Address::parse_mailbox(original).expect("original is an address");
                assert!(
                    may_relay || is_fuzz_local(&asked.domain),
                    "open relay: {a} for {original}"
                );
            }
        }
        self.stored.clear();
        self.data_starts += 1;
        if self.refuse_data && self.data_starts.is_multiple_of(2) {
            self.s.data_refused(reply::NO_SPACE);
        } else {
            self.s
                .data_started("0123456789ABCDEF", "Wed, 02 Dec 2026 17:00:00 +0000");
        }
    }

    fn commit(&mut self) {
        assert!(self.s.envelope().is_some(), "Commit without an envelope");
        assert!(self.s.summary().is_some());
        self.stored.extend_from_slice(self.s.body());
        self.s.clear_body();
        assert!(self.stored.starts_with(b"Received: from "));
        assert_crlf_only(&self.stored, "stored message");
        assert!(
            self.stored.len() as u64 <= self.cfg.max_message_size + 1024,
            "stored {} octets over the limit",
            self.stored.len()
        );
        let stored = std::mem::take(&mut self.stored);
        self.commits += 1;
        if self.fail_commit && self.commits.is_multiple_of(2) {
            self.s.committed(Err(reply::NO_SPACE));
        } else {
            let fields = stored.windows(7).position(|w| w == b"+0000\r\n");
            let content = fields.and_then(|p| stored.get(p + 7..)).unwrap_or_default();
            self.messages.push(content.to_vec());
            self.s.committed(Ok("0123456789ABCDEF"));
        }
    }

    fn timeout(&mut self) {
        self.s.handle_timeout(self.now);
        // A session that timed out either waits for a later deadline or
        // is abandoned (the driver drops its connection).
        if let Some(deadline) = self.s.deadline() {
            assert!(
                deadline > self.now || self.s.is_abandoned(),
                "deadline not moved after its timeout"
            );
        }
    }
}

/// `smtp::server::ServerSession`: a whole session over an arbitrary byte
/// stream split into chunks, with timer events, in every listener mode.
///
/// Input: a mode byte, a limits byte, a count byte and up to 15 control
/// bytes (chunk length in the low 5 bits, action in the high 3), then the
/// client's byte stream.
///
/// Limits bit 6 (BDAT framing): the stream is the content of one message
/// sent as BDAT chunks (lengths from the control bytes, 1 to 96 octets,
/// the last with LAST) after a fixed relay envelope; a message that commits
/// must then equal the content with its line ends made CRLF, and one that
/// does not was refused with a reply, while the session stays in step (the
/// NOOP after the chunks is answered).
pub fn smtp_server(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.byte();
    let limits = input.byte();
    let ncontrols = usize::from(input.byte() % 16);
    let controls = input.bytes(ncontrols).to_vec();
    let content = input.rest();
    let bdat = limits & 0x40 != 0;
    let framed = if bdat {
        bdat_frame(&controls, content)
    } else {
        Vec::new()
    };
    let stream = if bdat { &framed[..] } else { content };

    let kind = match mode & 3 {
        _ if bdat => ListenerKind::Relay,
        1 => ListenerKind::Submission,
        2 => ListenerKind::Smtps,
        _ => ListenerKind::Relay,
    };
    let cfg = SessionConfig {
        hostname: "mx.local.test".into(),
        max_message_size: if limits & 1 != 0 { 64 } else { 4096 },
        max_recipients: 1 + usize::from((limits >> 1) & 3),
        max_errors: 3 + usize::from((limits >> 3) & 7),
        hop_limit: 2,
        timeout: Duration::from_secs(300),
        tls_available: mode & 8 != 0,
        auth_available: mode & 16 != 0,
        allow_plaintext_auth: mode & 32 != 0,
    };
    let now = Instant::now();
    let relay_allowed = mode & 4 != 0;
    let peer: IpAddr = [192, 0, 2, 1].into();
    let mut s = ServerSession::new(cfg.clone(), kind, peer, relay_allowed, now);
    if kind == ListenerKind::Smtps {
        s.set_implicit_tls("TLSv1.3 TLS13_AES_128_GCM_SHA256".into());
    }
    let mut d = ServerDriver {
        s,
        cfg,
        kind,
        relay_allowed,
        policy: FuzzPolicy::new(),
        now,
        pending: Vec::new(),
        stored: Vec::new(),
        written: Vec::new(),
        refuse_data: mode & 64 != 0,
        fail_commit: mode & 128 != 0,
        data_starts: 0,
        commits: 0,
        messages: Vec::new(),
    };
    d.read_output();

    let mut pos = 0;
    let mut step = 0;
    while pos < stream.len() {
        let control = if controls.is_empty() {
            0x1f
        } else {
            controls[step % controls.len()]
        };
        step += 1;
        let len = match control & 0x1f {
            0x1f => stream.len() - pos,
            n => usize::from(n) + 1,
        };
        let chunk = &stream[pos..(pos + len).min(stream.len())];
        pos += chunk.len();
        let action = control >> 5;
        d.feed(chunk, action != 3);
        match action {
            4 => {
                // A little later: a held AUTH failure is answered.
                d.now += Duration::from_secs(9);
                d.timeout();
            }
            5 => {
                // The client's idle deadline passes.
                if let Some(deadline) = d.s.deadline() {
                    d.now = d.now.max(deadline);
                }
                d.timeout();
            }
            6 => d.s.spool_failed(reply::NO_SPACE),
            7 if step % 4 == 0 => d.s.shutdown(),
            _ => {}
        }
        d.feed(&[], true);
    }
    let closed_early = d.s.is_closing();
    d.s.connection_lost();
    assert!(d.s.is_closing());
    d.events();
    d.read_output();
    assert_reply_lines(&d.written);
    if bdat {
        let want = crlf_model(content);
        for m in &d.messages {
            assert_eq!(m, &want, "BDAT message stored differently");
        }
        if !closed_early {
            assert!(
                d.written.ends_with(b"250 2.0.0 Ok\r\n"),
                "out of step after BDAT: {:?}",
                String::from_utf8_lossy(&d.written)
            );
        }
    }
}

/// BDAT framing: a relay envelope, `content` in chunks, then NOOP.
fn bdat_frame(controls: &[u8], content: &[u8]) -> Vec<u8> {
    let mut out = b"EHLO c\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<joe@local.test>\r\n".to_vec();
    let mut rest = content;
    let mut step = 0;
    loop {
        let len = controls
            .get(step % controls.len().max(1))
            .map_or(rest.len(), |c| usize::from(c & 0x1f) * 3 + 1);
        step += 1;
        let (chunk, after) = rest.split_at(len.min(rest.len()));
        let last = after.is_empty();
        let verb = if last { " LAST" } else { "" };
        out.extend_from_slice(format!("BDAT {}{verb}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        rest = after;
        if last {
            break;
        }
    }
    out.extend_from_slice(b"NOOP\r\n");
    out
}

/// How the spool stores a chunked message: every line end (CRLF, bare LF,
/// bare CR) as CRLF, and the last line terminated.
fn crlf_model(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 2);
    let mut i = 0;
    while let Some(&b) = content.get(i) {
        match b {
            b'\r' if content.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            _ => out.push(b),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}
