//! Drivers for the outbound SMTP client session: whole dialogs against a
//! scripted server (`smtp_client`) and the reply parser alone
//! (`smtp_client_reply`).
//!
//! Separate from the other groups of targets: see the parent module for what
//! the drivers share.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::smtp::client::{
    ClientConfig, ClientEvent, ClientSession, Credentials, RcptOutcome, TlsPolicy, Transaction,
};
use crate::smtp::data::DataDecoder;

use super::{assert_command_lines, text, Input};

const CLIENT_BODIES: [&[u8]; 5] = [
    b"Subject: t\r\n\r\n.\r\n..\r\n.x\r\nend\r\n",
    b"",
    b"no final line end.",
    b".\r\n",
    b"..\r\n.\r\n\r\n.",
];

struct ClientDriver {
    c: ClientSession,
    now: Instant,
    /// Every byte the client sent, and where bodies are in it.
    sent: Vec<u8>,
    body_ranges: Vec<(usize, usize)>,
    /// Started transactions not yet done: recipient count, and whether
    /// the session was already closed when it started.
    open: VecDeque<(usize, bool)>,
    started: usize,
    shape: u8,
    body_chunk: usize,
    quit: bool,
}

impl ClientDriver {
    fn transaction(&self) -> Transaction {
        let all = [
            "a@remote.test",
            "b@remote.test",
            "bad<rcpt>@x",
            "d@remote.test",
        ];
        let n = 1 + usize::from(self.shape & 3);
        Transaction {
            sender: match (self.shape >> 2) & 3 {
                0 | 1 => "s@local.test".into(),
                2 => String::new(),
                _ => "bad\r\nRSET".into(),
            },
            recipients: all[..n].iter().map(|s| s.to_string()).collect(),
            size: if self.shape & 16 != 0 { 1 << 30 } else { 100 },
            eight_bit: self.shape & 32 != 0,
            smtputf8: self.shape & 64 != 0,
            requiretls: false,
            rewrite: None,
            dkim: None,
            dsn: Default::default(),
        }
    }

    fn start(&mut self) {
        if self.started >= 3 || self.quit {
            return;
        }
        self.started += 1;
        let txn = self.transaction();
        self.open
            .push_back((txn.recipients.len(), self.c.is_closed()));
        self.c.start_transaction(txn, self.now);
    }

    fn drain_transmit(&mut self) {
        let out = self.c.poll_transmit();
        self.sent.extend_from_slice(out);
        let n = out.len();
        self.c.consume_transmit(n);
    }

    fn events(&mut self) {
        while let Some(event) = self.c.poll_event() {
            match event {
                ClientEvent::Ready => self.start(),
                ClientEvent::StartTls => self.c.tls_established(self.now),
                ClientEvent::WantBody => self.body(),
                ClientEvent::TransactionDone(outcomes) => {
                    let (n, _) = self
                        .open
                        .pop_front()
                        .expect("TransactionDone without a transaction");
                    assert_eq!(outcomes.len(), n, "one outcome per recipient");
                    for o in &outcomes {
                        match o {
                            RcptOutcome::Delivered(r) => assert_eq!(r.class(), 2, "{r}"),
                            RcptOutcome::Failed(r) => assert!(r.is_permanent(), "{r}"),
                            RcptOutcome::Deferred(_) => {}
                        }
                    }
                    self.start();
                }
                ClientEvent::SessionFailed(outcome) => {
                    // Only transactions started after the failure (their
                    // TransactionDone is queued behind this event) may
                    // still be open.
                    assert!(
                        self.open.iter().all(|&(_, after_close)| after_close),
                        "SessionFailed before TransactionDone"
                    );
                    assert!(matches!(outcome, RcptOutcome::Deferred(_)));
                    assert!(self.c.is_closed());
                }
            }
        }
    }

    /// Streams a body in chunks; the stuffed body must decode back to it.
    fn body(&mut self) {
        self.drain_transmit();
        let body = CLIENT_BODIES[usize::from(self.shape >> 4) % CLIENT_BODIES.len()];
        let start = self.sent.len();
        let mut pos = 0;
        while pos < body.len() {
            let end = (pos + self.body_chunk).min(body.len());
            let n = self.c.send_body(&body[pos..end]);
            assert!(n <= end - pos);
            if n == 0 {
                // Only when the session left the body phase (a reply came
                // in before the body): the buffer is always drained here.
                assert_eq!(self.sent.len(), start, "send_body stalled mid-body");
                return;
            }
            pos += n;
            self.drain_transmit();
        }
        self.c.finish_body(self.now);
        self.drain_transmit();
        let wire = &self.sent[start..];
        if wire.is_empty() {
            return;
        }
        let out = if wire.starts_with(b"BDAT ") {
            unchunk(wire)
        } else {
            let mut d = DataDecoder::new(1 << 20);
            let mut out = Vec::new();
            let used = d.decode(wire, &mut out);
            assert!(d.is_done(), "body not terminated: {:?}", text(wire));
            assert_eq!(used, wire.len(), "body terminated early: {:?}", text(wire));
            out
        };
        let mut expected = body.to_vec();
        if !expected.is_empty() && !expected.ends_with(b"\r\n") {
            expected.extend_from_slice(b"\r\n");
        }
        if out != expected {
            // An 8-bit transaction to a server without 8BITMIME and
            // SMTPUTF8 carries the body's 7-bit downgrade instead.
            assert!(self.shape & 32 != 0, "dot-stuffing changed the body");
            let mut conv = crate::smtp::mime7bit::Downgrade::new();
            let mut downgraded = Vec::new();
            let converted = conv
                .push(body, &mut downgraded)
                .and_then(|()| conv.finish(&mut downgraded));
            assert!(converted.is_ok(), "an unconvertible body was finished");
            if !downgraded.is_empty() && !downgraded.ends_with(b"\r\n") {
                downgraded.extend_from_slice(b"\r\n");
            }
            assert_eq!(out, downgraded, "dot-stuffing changed the downgraded body");
        }
        self.body_ranges.push((start, self.sent.len()));
    }

    fn check_commands(&self) {
        let mut from = 0;
        for &(start, end) in &self.body_ranges {
            assert_command_lines(&self.sent[from..start]);
            from = end;
        }
        assert_command_lines(&self.sent[from..]);
    }
}

/// A body sent as BDAT chunks (CHUNKING offered): `BDAT n` CRLF and n
/// octets, again and again, the last with `LAST`, nothing after it.
fn unchunk(mut wire: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = wire.iter().position(|&b| b == b'\n').expect("BDAT line");
        let line = std::str::from_utf8(&wire[..eol]).expect("BDAT line is text");
        let line = line.strip_suffix('\r').expect("BDAT line ends in CRLF");
        let args = line.strip_prefix("BDAT ").expect("a BDAT command");
        let (n, last) = match args.strip_suffix(" LAST") {
            Some(n) => (n, true),
            None => (args, false),
        };
        let n: usize = n.parse().expect("BDAT size");
        let chunk = wire
            .get(eol + 1..eol + 1 + n)
            .expect("chunk as long as said");
        out.extend_from_slice(chunk);
        wire = &wire[eol + 1 + n..];
        if last {
            assert!(wire.is_empty(), "bytes after BDAT LAST: {:?}", text(wire));
            return out;
        }
    }
}

/// `smtp::client::ClientSession`: arbitrary server replies, with timer
/// events, transactions, STARTTLS, AUTH and bodies driven as the daemon
/// does. Every transaction gets exactly one outcome per recipient, and
/// every body is dot-stuffed so that tern's own DATA decoder reads it back
/// (or, to a server offering CHUNKING, sent as BDAT chunks that add up to it).
///
/// Input: a mode byte (TLS policy, implicit TLS, credentials, body chunk
/// size), a transaction shape byte, a count byte and up to 15 control bytes
/// (reply lines per chunk in the low 4 bits, a cut in bit 4, an action in
/// the high 3), then the server's replies.
pub fn smtp_client(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.byte();
    let shape = input.byte();
    let ncontrols = usize::from(input.byte() % 16);
    let controls = input.bytes(ncontrols).to_vec();
    let stream = input.rest();
    let cfg = ClientConfig {
        helo_name: "client.test".into(),
        tls: [
            TlsPolicy::Never,
            TlsPolicy::IfOffered,
            TlsPolicy::Required,
            TlsPolicy::Never,
        ][usize::from(mode & 3)],
        tls_active: mode & 4 != 0,
        credentials: (mode & 8 != 0).then(|| Credentials {
            user: "user".into(),
            password: "pass".into(),
        }),
        reply_timeout: Duration::from_secs(300),
        final_timeout: Duration::from_secs(600),
        lmtp: false,
    };
    let now = Instant::now();
    let mut d = ClientDriver {
        c: ClientSession::new(cfg, now),
        now,
        sent: Vec::new(),
        body_ranges: Vec::new(),
        open: VecDeque::new(),
        started: 0,
        shape,
        body_chunk: 1 + usize::from(mode >> 4) * 5,
        quit: false,
    };
    let mut pos = 0;
    let mut step = 0;
    while pos < stream.len() {
        let control = if controls.is_empty() {
            0
        } else {
            controls[step % controls.len()]
        };
        step += 1;
        // A server answers what it was asked: feed whole reply lines (1 to
        // 16), the last one cut in half when bit 4 is set.
        let lines = usize::from(control & 0x0f) + 1;
        let mut end = pos;
        for _ in 0..lines {
            end = stream[end..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(stream.len(), |p| end + p + 1);
        }
        if control & 0x10 != 0 && end - pos > 1 {
            end -= (end - pos) / 2;
        }
        let chunk = &stream[pos..end];
        pos = end;
        d.c.handle_input(chunk, d.now);
        d.events();
        d.drain_transmit();
        match control >> 5 {
            4 => {
                if let Some(deadline) = d.c.poll_timeout() {
                    d.now = d.now.max(deadline);
                }
                d.c.handle_timeout(d.now);
            }
            5 => {
                d.quit = true;
                d.c.quit();
            }
            // A transaction started at the wrong time is deferred at once.
            6 => d.start(),
            _ => d.now += Duration::from_secs(1),
        }
        d.events();
        d.drain_transmit();
    }
    d.c.connection_lost(d.now);
    d.events();
    d.drain_transmit();
    assert!(d.c.is_closed());
    assert!(d.open.is_empty(), "a transaction never finished");
    d.check_commands();
}

/// The client's reply parser alone: the same replies in one piece and split
/// at a point give the same events and commands; enhanced codes parse into
/// their ranges.
pub fn smtp_client_reply(data: &[u8]) {
    let mut input = Input::new(data);
    let cut = input.byte();
    let replies = input.rest();
    let mut stream = b"220 mx.remote.test ESMTP\r\n".to_vec();
    stream.extend_from_slice(replies);
    let cut = usize::from(cut) * stream.len() / 255;
    let run = |pieces: &[&[u8]]| {
        let cfg = ClientConfig {
            helo_name: "client.test".into(),
            tls: TlsPolicy::Never,
            tls_active: false,
            credentials: None,
            reply_timeout: Duration::from_secs(300),
            final_timeout: Duration::from_secs(600),
            lmtp: false,
        };
        let now = Instant::now();
        let mut c = ClientSession::new(cfg, now);
        for piece in pieces {
            c.handle_input(piece, now);
        }
        let events: Vec<ClientEvent> = std::iter::from_fn(|| c.poll_event()).collect();
        let ext = (
            c.offers("PIPELINING"),
            c.size_limit(),
            c.offers_auth("PLAIN"),
            c.extension_params("AUTH").map(str::to_string),
        );
        (events, c.poll_transmit().to_vec(), c.is_closed(), ext)
    };
    let whole = run(&[&stream]);
    let split = run(&[&stream[..cut], &stream[cut..]]);
    assert_eq!(whole, split, "split at {cut}");
    assert_command_lines(&whole.1);
    for line in replies.split(|&b| b == b'\n').take(20) {
        let r = crate::smtp::client::ServerReply {
            code: 250,
            raw: text(line).into_owned(),
            own: None,
        };
        if let Some((class, subject, detail)) = r.enhanced() {
            assert!(matches!(class, 2 | 4 | 5) && subject <= 999 && detail <= 999);
        }
    }
}
