//! The last stage of the client's body output: dot-stuffing for DATA, or
//! RFC 3030 CHUNKING, the body as `BDAT` chunks.
//!
//! Why cut the stream here: a chunk's length must be written before its
//! octets, and the stored file's size is not what goes out when the header
//! is rewritten or the body downgraded to 7 bits. So the octets that would
//! be dot-stuffed for DATA are collected instead, and each time
//! [`BDAT_CHUNK`] of them are in, `BDAT n` and the chunk go out; the end of
//! the body sends what is left as `BDAT n LAST` (possibly `BDAT 0 LAST`).
//! The message is sent as stored (CRLF lines, the last one terminated), so
//! the server's copy is byte for byte what DATA would have given it.
//!
//! Bounds: the chunk being filled holds at most [`BDAT_CHUNK`] plus one
//! converted `send_body` piece; the output as for DATA.

use std::time::Instant;

use super::{failure_outcome, ClientEvent, ClientSession, Expect, Phase};
use crate::smtp::client::reply::ServerReply;

/// Octets collected before a `BDAT n` chunk is sent.
pub const BDAT_CHUNK: usize = 16 * 1024;

impl ClientSession {
    /// After 354 (DATA) or once the recipients are answered (BDAT).
    pub(super) fn start_body(&mut self) {
        self.phase = Phase::Body;
        self.body_tail = *b"\r\n";
        self.chunk.clear();
        // The DKIM signature first (ASCII, ends in CRLF), in the same
        // stream as the body: dot-stuffed with DATA, counted in a chunk
        // with BDAT.
        if let Some(field) = self.txn.as_mut().and_then(|t| t.dkim_field.take()) {
            self.emit_body(&field);
        }
        self.events.push_back(ClientEvent::WantBody);
    }

    /// Body octets after every transformation: dot-stuffed into the output
    /// (DATA) or into the chunk being filled (BDAT).
    pub(super) fn emit_body(&mut self, bytes: &[u8]) {
        if !self.txn.as_ref().is_some_and(|t| t.chunking) {
            // Stuffing reads the tail of what came before.
            self.stuff(bytes);
            self.note_tail(bytes);
            return;
        }
        self.note_tail(bytes);
        self.chunk.extend_from_slice(bytes);
        if self.chunk.len() >= BDAT_CHUNK {
            self.send_chunk(false, self.wait_started);
        }
    }

    /// Dot-stuffs body bytes into the output.
    pub(super) fn stuff(&mut self, chunk: &[u8]) {
        // Copy runs; a dot that starts a line gets a second one in front.
        // A line starts after any LF, so a bare LF cannot smuggle a dot.
        let mut copied = 0;
        let mut from = 0;
        while let Some(off) = chunk
            .get(from..)
            .and_then(|rest| crate::smtp::scan::position(rest, b'.'))
        {
            let dot = from + off;
            let before = match dot.checked_sub(1) {
                None => Some(self.body_tail[1]),
                Some(prev) => chunk.get(prev).copied(),
            };
            if before == Some(b'\n') {
                self.out
                    .extend_from_slice(chunk.get(copied..dot).unwrap_or_default());
                self.out.push(b'.');
                copied = dot;
            }
            from = dot + 1;
        }
        self.out
            .extend_from_slice(chunk.get(copied..).unwrap_or_default());
    }

    /// Remembers the last two body octets sent.
    pub(super) fn note_tail(&mut self, chunk: &[u8]) {
        self.body_tail = match *chunk {
            [] => self.body_tail,
            [only] => [self.body_tail[1], only],
            [.., a, b] => [a, b],
        };
    }

    /// Without PIPELINING a chunk is not sent before the previous one is
    /// answered: the body waits meanwhile.
    pub(super) fn chunk_waits(&self) -> bool {
        self.txn
            .as_ref()
            .is_some_and(|t| t.chunking && !t.pipelined && !self.expected.is_empty())
    }

    /// Writes `BDAT n [LAST]` and the chunk.
    pub(super) fn send_chunk(&mut self, last: bool, now: Instant) {
        let n = self.chunk.len();
        if last {
            self.send_command(&format!("BDAT {n} LAST"), Expect::DataEnd, now);
        } else {
            self.send_command(&format!("BDAT {n}"), Expect::Bdat, now);
        }
        self.out.extend_from_slice(&self.chunk);
        self.chunk.clear();
    }

    /// A chunk that is not the last one was answered: a refusal ends the
    /// transaction (RFC 3030 §2: no further chunks may be sent) with that
    /// reply for the accepted recipients, then RSET.
    pub(super) fn handle_bdat_reply(&mut self, reply: &ServerReply, now: Instant) {
        if reply.class() == 2 {
            return;
        }
        let Some(active) = self.txn.as_mut() else {
            // Already ended by an earlier refused chunk.
            return;
        };
        active.decide_where(true, failure_outcome(reply.clone()));
        self.chunk.clear();
        // Chunks already sent (pipelined) are answered too: ignored, and
        // never taken for the next transaction's replies.
        for e in &mut self.expected {
            if matches!(e, Expect::Bdat | Expect::DataEnd) {
                *e = Expect::StaleChunk;
            }
        }
        self.finish_transaction(true, now);
    }
}
