//! One connection's byte path: straight to the socket, or through a
//! [`TlsStream`] (rustls as a byte pump). Inbound sessions and outbound
//! deliveries both use it, so the TLS pump exists once.
//!
//! Buffers are bounded: ciphertext read but not yet taken by rustls waits in
//! `cipher_in` (at most one socket read), decrypted bytes stay inside the
//! TlsStream (capped there) until the caller has room for them.

use std::io;

use crate::reactor::{Reactor, SockId};
use crate::tls::TlsStream;

use super::Timer;

/// Bytes read from the socket per call.
pub const SOCKET_READ: usize = 16384;
/// The least a read buffer grows to: room for any usual command or reply
/// line, still small for an idle session.
pub const MIN_BUFFER: usize = 128;

#[derive(Default)]
pub struct Link {
    pub tls: Option<TlsStream>,
    cipher_in: Vec<u8>,
}

/// Appends a read to the caller's buffer, which grows as a `Vec` does
/// (doubling) but never past the caller's bound (`max`: the room it
/// allows), so an input buffer ends at its limit
/// (`daemon::inbound::INPUT_BUFFER`), not up to twice that (a 10 KiB
/// buffer taking 6 KiB more would become 20 KiB). A buffer grows to at
/// least [`MIN_BUFFER`] at once, so a dialog's short lines of different
/// lengths do not regrow it line by line.
fn append(out: &mut Vec<u8>, data: &[u8], max: usize) {
    let need = out.len() + data.len();
    if out.capacity() < need {
        let bound = out.len() + max.max(data.len());
        let cap = (out.capacity() * 2).max(need).max(MIN_BUFFER).min(bound);
        out.reserve_exact(cap - out.len());
    }
    out.extend_from_slice(data);
}

/// What a read produced.
pub enum Read {
    /// Application bytes were appended.
    Data,
    /// Nothing now (socket drained, or only handshake traffic).
    Pending,
    /// The peer closed (or the TLS layer failed: see `tls_error`).
    Closed,
}

impl Link {
    pub fn plain() -> Link {
        Link::default()
    }

    pub fn with_tls(tls: TlsStream) -> Link {
        Link {
            tls: Some(tls),
            cipher_in: Vec::new(),
        }
    }

    pub fn tls_error(&self) -> Option<String> {
        self.tls
            .as_ref()
            .and_then(|t| t.error())
            .map(|e| e.0.clone())
    }

    /// The TLS handshake met plaintext (see `TlsStream::peer_spoke_plaintext`).
    pub fn tls_peer_spoke_plaintext(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.peer_spoke_plaintext())
    }

    pub fn is_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.is_handshaking())
    }

    /// Hands application bytes to the connection; returns how many were
    /// taken (all that fit in the socket or the TLS buffer).
    pub fn write(
        &mut self,
        reactor: &mut Reactor<Timer>,
        sock: SockId,
        data: &[u8],
    ) -> io::Result<usize> {
        match &mut self.tls {
            None => match reactor.write(sock, data) {
                Ok(n) => Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                Err(e) => Err(e),
            },
            Some(tls) => {
                let n = tls.write_plaintext(data);
                self.flush(reactor, sock)?;
                Ok(n)
            }
        }
    }

    /// Writes pending ciphertext; `Ok(true)` when nothing is left.
    pub fn flush(&mut self, reactor: &mut Reactor<Timer>, sock: SockId) -> io::Result<bool> {
        let Some(tls) = &mut self.tls else {
            return Ok(true);
        };
        loop {
            let out = tls.ciphertext();
            if out.is_empty() {
                return Ok(true);
            }
            match reactor.write(sock, out) {
                Ok(0) => return Ok(false),
                Ok(n) => tls.consume_ciphertext(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads application bytes into `out`, at most `max` of them.
    pub fn read(
        &mut self,
        reactor: &mut Reactor<Timer>,
        sock: SockId,
        out: &mut Vec<u8>,
        max: usize,
    ) -> Read {
        if self.tls.is_none() {
            // Drained at the last read, and no edge since: no syscall.
            if !reactor.is_readable(sock) {
                return Read::Pending;
            }
            return match reactor.read_stream(sock, max.min(SOCKET_READ)) {
                Ok([]) => Read::Closed,
                Ok(data) => {
                    append(out, data, max);
                    Read::Data
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Read::Pending,
                Err(_) => Read::Closed,
            };
        }
        loop {
            let Some(tls) = &mut self.tls else {
                return Read::Closed;
            };
            // Decrypted bytes first.
            let plain = tls.plaintext();
            if !plain.is_empty() {
                let n = plain.len().min(max);
                append(out, plain.get(..n).unwrap_or_default(), max);
                tls.consume_plaintext(n);
                return Read::Data;
            }
            if tls.error().is_some() || tls.peer_closed() {
                return Read::Closed;
            }
            // Ciphertext left from the last socket read, else a new read.
            if self.cipher_in.is_empty() {
                if !reactor.is_readable(sock) {
                    return Read::Pending;
                }
                match reactor.read_stream(sock, SOCKET_READ) {
                    Ok([]) => return Read::Closed,
                    Ok(data) => self.cipher_in.extend_from_slice(data),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Read::Pending,
                    Err(_) => return Read::Closed,
                }
            }
            match tls.read_tls(&self.cipher_in) {
                Ok(0) => {
                    // rustls takes nothing more now (full, or closed).
                    let closed = tls.peer_closed() && tls.plaintext().is_empty();
                    let _ = self.flush(reactor, sock);
                    if closed {
                        return Read::Closed;
                    }
                    if self.tls.as_ref().is_some_and(|t| t.plaintext().is_empty()) {
                        return Read::Pending;
                    }
                }
                Ok(n) => {
                    self.cipher_in.drain(..n.min(self.cipher_in.len()));
                }
                Err(_) => {
                    // Send the alert if we can, then report the close.
                    let _ = self.flush(reactor, sock);
                    return Read::Closed;
                }
            }
            // Handshake messages may need an answer.
            if self.flush(reactor, sock).is_err() {
                return Read::Closed;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_grows_to_its_bound_not_past_it() {
        let limit = 16384;
        let mut input = Vec::new();
        append(&mut input, &[b'a'; 10_000], limit);
        assert_eq!(input.capacity(), 10_000);
        // Doubling would make it 20,000.
        let room = limit - input.len();
        append(&mut input, &vec![b'b'; room], room);
        assert_eq!((input.len(), input.capacity()), (limit, limit));
        // A small read stays small (idle sessions cost little), and the
        // next short lines fit without regrowing.
        let mut input = Vec::new();
        append(&mut input, b"EHLO c\r\n", limit);
        assert_eq!(input.capacity(), MIN_BUFFER);
        input.clear();
        append(&mut input, &[b'm'; 100], limit);
        assert_eq!(input.capacity(), MIN_BUFFER);
    }
}
