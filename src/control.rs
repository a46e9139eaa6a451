//! The control channel: how `tern queue ...` changes the queue of a
//! running daemon without writing the spool behind its back (one writer per
//! file, as OpenSMTPD's `smtpctl` talks to `smtpd`).
//!
//! The daemon listens on a unix stream socket in the spool
//! (`SPOOL/control`, [`SOCKET_MODE`], owned by the daemon's user, created at
//! start, removed at exit; a stale one left by a crash is replaced at start,
//! which is safe because the daemon holds the spool lock first). A client
//! connects, writes one request line, reads one reply line, and the daemon
//! closes the connection.
//!
//! ## Protocol
//!
//! ```text
//! request  = command [" " queue-id] LF       ; at most MAX_REQUEST octets, CR before LF allowed
//! command  = "delete" | "flush" | "hold" | "release"
//! reply    = ("ok " what | "error " kind [" " queue-id] ": " text) LF
//! ```
//!
//! | request      | ok reply                  | errors |
//! |--------------|---------------------------|--------|
//! | `delete ID`  | `ok deleted ID`           | `no-such-message`, `busy` (an attempt is running: retry when it ends), `failed` |
//! | `flush`      | `ok flushing`             | |
//! | `flush ID`   | `ok flushing ID`          | `no-such-message`, `held` (on hold: release it first) |
//! | `hold ID`    | `ok held ID`              | `no-such-message`, `failed` |
//! | `release ID` | `ok released ID`          | `no-such-message`, `not-held`, `failed` |
//! | anything else, or a line over [`MAX_REQUEST`] | | `bad-request` |
//!
//! `delete` of a message whose delivery attempt is running is refused with
//! `busy` rather than cancelling the attempt: the attempt's outcome would
//! otherwise have to be thrown away halfway (a remote server may already
//! have accepted the message), and the attempt ends within the SMTP
//! timeouts. `tern queue delete` says so and exits 75 (try again).
//!
//! The connection is a sans-IO machine ([`Conn`]): bytes and time in,
//! one request out, one reply in, bytes out. Its buffer is bounded by
//! [`MAX_REQUEST`] and its life by [`CONTROL_TIMEOUT`]; the daemon serves
//! at most [`MAX_CONNECTIONS`] at once. Nothing in it blocks.

use std::fmt;
use std::time::{Duration, Instant};

use crate::spool::QueueId;

/// The socket's name in the spool directory.
pub const SOCKET_NAME: &str = "control";
/// Only the daemon's user (and root) may connect.
pub const SOCKET_MODE: u32 = 0o600;
/// The longest request line, LF included (the longest valid one is
/// `release` + space + 16 hex digits + CRLF = 26 octets).
pub const MAX_REQUEST: usize = 64;
/// The longest reply line a client reads.
pub const MAX_REPLY: usize = 512;
/// A control connection that has not sent its request (or not read its
/// reply) within this time is answered `error bad-request: timeout` and
/// closed.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// Control connections served at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 8;
/// Octets read from a control connection per read call.
pub const READ_CHUNK: usize = 128;

/// One request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Delete(QueueId),
    /// Every message due now (`None`), or one.
    Flush(Option<QueueId>),
    Hold(QueueId),
    Release(QueueId),
}

impl Request {
    /// The request line a client sends.
    pub fn line(&self) -> String {
        match self {
            Request::Delete(id) => format!("delete {id}\n"),
            Request::Flush(None) => "flush\n".to_string(),
            Request::Flush(Some(id)) => format!("flush {id}\n"),
            Request::Hold(id) => format!("hold {id}\n"),
            Request::Release(id) => format!("release {id}\n"),
        }
    }
}

/// Why a request was refused before it reached the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestError {
    TooLong,
    NotText,
    UnknownCommand,
    MissingId,
    BadId,
    ExtraArgument,
    /// The client closed its side before a whole line.
    Incomplete,
    Timeout,
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RequestError::TooLong => "request line too long",
            RequestError::NotText => "request is not printable ASCII",
            RequestError::UnknownCommand => {
                "unknown command (delete ID, flush [ID], hold ID, release ID)"
            }
            RequestError::MissingId => "a queue ID is required",
            RequestError::BadId => "not a queue ID (16 hex digits)",
            RequestError::ExtraArgument => "too many arguments",
            RequestError::Incomplete => "connection closed before a whole request line",
            RequestError::Timeout => "timeout waiting for the request",
        })
    }
}

/// Parses one request line (without its LF; a CR before it is allowed).
pub fn parse_request(line: &[u8]) -> Result<Request, RequestError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() >= MAX_REQUEST {
        return Err(RequestError::TooLong);
    }
    if !line.iter().all(|&b| (0x20..0x7f).contains(&b)) {
        return Err(RequestError::NotText);
    }
    let text = std::str::from_utf8(line).map_err(|_| RequestError::NotText)?;
    let mut words = text.split(' ');
    let command = words.next().unwrap_or("");
    let make: fn(Option<QueueId>) -> Result<Request, RequestError> = match command {
        "delete" => |id| id.map(Request::Delete).ok_or(RequestError::MissingId),
        "flush" => |id| Ok(Request::Flush(id)),
        "hold" => |id| id.map(Request::Hold).ok_or(RequestError::MissingId),
        "release" => |id| id.map(Request::Release).ok_or(RequestError::MissingId),
        _ => return Err(RequestError::UnknownCommand),
    };
    let id = match words.next() {
        None => None,
        Some(w) => Some(w.parse::<QueueId>().map_err(|_| RequestError::BadId)?),
    };
    if words.next().is_some() {
        return Err(RequestError::ExtraArgument);
    }
    make(id)
}

/// The kinds of error reply (the word after `error`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    NoSuchMessage,
    Busy,
    Held,
    NotHeld,
    Failed,
    BadRequest,
}

impl ErrorKind {
    pub fn word(self) -> &'static str {
        match self {
            ErrorKind::NoSuchMessage => "no-such-message",
            ErrorKind::Busy => "busy",
            ErrorKind::Held => "held",
            ErrorKind::NotHeld => "not-held",
            ErrorKind::Failed => "failed",
            ErrorKind::BadRequest => "bad-request",
        }
    }

    fn from_word(w: &str) -> Option<ErrorKind> {
        [
            ErrorKind::NoSuchMessage,
            ErrorKind::Busy,
            ErrorKind::Held,
            ErrorKind::NotHeld,
            ErrorKind::Failed,
            ErrorKind::BadRequest,
        ]
        .into_iter()
        .find(|k| k.word() == w)
    }
}

/// The daemon's answer to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlReply {
    Deleted(QueueId),
    Flushing(Option<QueueId>),
    Held(QueueId),
    Released(QueueId),
    Error(ErrorKind, Option<QueueId>, String),
}

impl ControlReply {
    pub fn error(kind: ErrorKind, id: QueueId, text: impl Into<String>) -> ControlReply {
        ControlReply::Error(kind, Some(id), text.into())
    }

    pub fn bad(e: RequestError) -> ControlReply {
        ControlReply::Error(ErrorKind::BadRequest, None, e.to_string())
    }

    /// The reply line, LF-terminated, printable ASCII only.
    pub fn line(&self) -> String {
        let status = match self {
            ControlReply::Error(..) => "error",
            _ => "ok",
        };
        format!("{status} {}\n", self.text())
    }

    /// What a client shows: the line without `ok `/`error ` and LF.
    pub fn text(&self) -> String {
        match self {
            ControlReply::Deleted(id) => format!("deleted {id}"),
            ControlReply::Flushing(None) => "flushing".to_string(),
            ControlReply::Flushing(Some(id)) => format!("flushing {id}"),
            ControlReply::Held(id) => format!("held {id}"),
            ControlReply::Released(id) => format!("released {id}"),
            ControlReply::Error(kind, id, text) => {
                let text: String = text
                    .chars()
                    .map(|c| {
                        if c == ' ' || c.is_ascii_graphic() {
                            c
                        } else {
                            '?'
                        }
                    })
                    .take(MAX_REPLY / 2)
                    .collect();
                match id {
                    Some(id) => format!("{} {id}: {text}", kind.word()),
                    None => format!("{}: {text}", kind.word()),
                }
            }
        }
    }

    /// The reply as a client would read it (for a command that did the
    /// work itself, with no daemon running).
    pub fn into_client(self) -> ClientReply {
        match &self {
            ControlReply::Error(kind, ..) => ClientReply::Error(Some(*kind), self.text()),
            _ => ClientReply::Ok(self.text()),
        }
    }
}

/// A reply as a client reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientReply {
    /// `ok ...`: the text after `ok `.
    Ok(String),
    /// `error KIND ...`: the kind and the whole text after `error `.
    Error(Option<ErrorKind>, String),
}

/// Parses a reply line (without its LF); `None` for anything that is not
/// a reply.
pub fn parse_reply(line: &str) -> Option<ClientReply> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line == "ok" {
        return Some(ClientReply::Ok(String::new()));
    }
    if let Some(rest) = line.strip_prefix("ok ") {
        return Some(ClientReply::Ok(rest.to_string()));
    }
    let rest = line.strip_prefix("error ")?;
    let word = rest.split([' ', ':']).next().unwrap_or("");
    Some(ClientReply::Error(
        ErrorKind::from_word(word),
        rest.to_string(),
    ))
}

enum State {
    /// Reading the request line.
    Reading(Vec<u8>),
    /// The request was handed out; the daemon answers it.
    Waiting,
    /// Writing the reply.
    Writing {
        out: Vec<u8>,
        sent: usize,
    },
    Closed,
}

/// One control connection, sans-IO.
pub struct Conn {
    state: State,
    deadline: Instant,
}

impl Conn {
    pub fn new(now: Instant) -> Conn {
        Conn {
            state: State::Reading(Vec::with_capacity(MAX_REQUEST)),
            deadline: now + CONTROL_TIMEOUT,
        }
    }

    /// Whether the machine wants more input.
    pub fn wants_input(&self) -> bool {
        matches!(self.state, State::Reading(_))
    }

    /// Bytes from the client. Returns the request once its line is
    /// complete (the daemon must then [`Conn::answer`] it); a bad or
    /// oversized line is answered here. Input after the line is ignored.
    pub fn handle_input(&mut self, data: &[u8]) -> Option<Request> {
        let State::Reading(buf) = &mut self.state else {
            return None;
        };
        let (part, complete) = match data.iter().position(|&b| b == b'\n') {
            Some(n) => (data.get(..n).unwrap_or(data), true),
            None => (data, false),
        };
        if buf.len() + part.len() >= MAX_REQUEST {
            self.answer(&ControlReply::bad(RequestError::TooLong));
            return None;
        }
        buf.extend_from_slice(part);
        if !complete {
            return None;
        }
        match parse_request(buf) {
            Ok(req) => {
                self.state = State::Waiting;
                Some(req)
            }
            Err(e) => {
                self.answer(&ControlReply::bad(e));
                None
            }
        }
    }

    /// The client closed its side.
    pub fn handle_eof(&mut self) {
        if self.wants_input() {
            self.answer(&ControlReply::bad(RequestError::Incomplete));
        }
    }

    /// The daemon's answer to the request [`Conn::handle_input`] returned.
    pub fn answer(&mut self, reply: &ControlReply) {
        if matches!(self.state, State::Closed) {
            return;
        }
        self.state = State::Writing {
            out: reply.line().into_bytes(),
            sent: 0,
        };
    }

    /// Bytes to write now, if any.
    pub fn poll_transmit(&self) -> Option<&[u8]> {
        match &self.state {
            State::Writing { out, sent } => out.get(*sent..).filter(|r| !r.is_empty()),
            _ => None,
        }
    }

    /// `n` bytes of [`Conn::poll_transmit`] were written; the connection
    /// closes once the whole reply is out.
    pub fn transmitted(&mut self, n: usize) {
        if let State::Writing { out, sent } = &mut self.state {
            *sent = sent.saturating_add(n);
            if *sent >= out.len() {
                self.state = State::Closed;
            }
        }
    }

    /// A read or write failed: give up.
    pub fn fail(&mut self) {
        self.state = State::Closed;
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// At the deadline a client still sending is told so (one more period
    /// to read it); one that does not read its reply is dropped.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.deadline {
            return;
        }
        match self.state {
            State::Reading(_) => {
                self.answer(&ControlReply::bad(RequestError::Timeout));
                self.deadline = now + CONTROL_TIMEOUT;
            }
            _ => self.state = State::Closed,
        }
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    const ID: &str = "0123456789ABCDEF";

    fn id() -> QueueId {
        ID.parse().unwrap()
    }

    #[test]
    fn requests_parse_and_round_trip() {
        for req in [
            Request::Delete(id()),
            Request::Flush(None),
            Request::Flush(Some(id())),
            Request::Hold(id()),
            Request::Release(id()),
        ] {
            let line = req.line();
            assert!(line.len() < MAX_REQUEST);
            let body = line.strip_suffix('\n').unwrap();
            assert_eq!(parse_request(body.as_bytes()), Ok(req));
            assert_eq!(parse_request(format!("{body}\r").as_bytes()), Ok(req));
        }
        assert_eq!(
            parse_request(format!("delete {ID}").as_bytes()),
            Ok(Request::Delete(id()))
        );
    }

    #[test]
    fn bad_requests_are_typed() {
        use RequestError::*;
        for (line, e) in [
            (&b"delete"[..], MissingId),
            (b"hold", MissingId),
            (b"release", MissingId),
            (b"delete xyz", BadId),
            (b"delete 0123", BadId),
            (b"frobnicate", UnknownCommand),
            (b"", UnknownCommand),
            (b"DELETE 0123456789ABCDEF", UnknownCommand),
            (b"delete  0123456789ABCDEF", BadId),
            (b"flush 0123456789ABCDEF x", ExtraArgument),
            (b"delete \x000123456789ABCDEF", NotText),
            (b"hold \xff", NotText),
            (b"\x1b[31mflush", NotText),
        ] {
            assert_eq!(parse_request(line), Err(e), "{line:?}");
        }
        assert_eq!(parse_request(&[b'a'; MAX_REQUEST]), Err(TooLong));
    }

    #[test]
    fn replies_are_one_line_and_parse_back() {
        let cases = [
            (
                ControlReply::Deleted(id()),
                ClientReply::Ok(format!("deleted {ID}")),
            ),
            (
                ControlReply::Flushing(None),
                ClientReply::Ok("flushing".into()),
            ),
            (
                ControlReply::Held(id()),
                ClientReply::Ok(format!("held {ID}")),
            ),
            (
                ControlReply::error(ErrorKind::Busy, id(), "being delivered"),
                ClientReply::Error(Some(ErrorKind::Busy), format!("busy {ID}: being delivered")),
            ),
            (
                ControlReply::bad(RequestError::TooLong),
                ClientReply::Error(
                    Some(ErrorKind::BadRequest),
                    "bad-request: request line too long".into(),
                ),
            ),
        ];
        for (reply, parsed) in cases {
            let line = reply.line();
            assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
            assert_eq!(parse_reply(line.trim_end_matches('\n')), Some(parsed));
        }
        // A newline or control octet in error text cannot split the reply.
        let r = ControlReply::error(ErrorKind::Failed, id(), "a\nb\x1b c");
        assert_eq!(r.line(), format!("error failed {ID}: a?b? c\n"));
        assert_eq!(parse_reply("hello"), None);
        assert_eq!(
            parse_reply("error strange: x"),
            Some(ClientReply::Error(None, "strange: x".into()))
        );
    }

    fn drain(c: &mut Conn) -> String {
        let mut out = Vec::new();
        while let Some(b) = c.poll_transmit() {
            // Written one octet at a time: partial writes resume.
            out.push(b[0]);
            c.transmitted(1);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_request_split_anywhere_is_one_request() {
        let line = format!("release {ID}\r\nignored trailing input");
        for split in 0..line.len() {
            let now = Instant::now();
            let mut c = Conn::new(now);
            let (a, b) = line.as_bytes().split_at(split);
            let first = c.handle_input(a);
            let req = first.or_else(|| c.handle_input(b));
            assert_eq!(req, Some(Request::Release(id())), "split at {split}");
            assert!(!c.wants_input());
            assert_eq!(c.poll_transmit(), None, "nothing before the answer");
            c.answer(&ControlReply::Released(id()));
            assert_eq!(drain(&mut c), format!("ok released {ID}\n"));
            assert!(c.is_closed());
        }
    }

    #[test]
    fn garbage_gets_an_error_line_and_the_connection_closes() {
        let mut c = Conn::new(Instant::now());
        assert_eq!(c.handle_input(b"rm -rf /\n"), None);
        assert_eq!(
            drain(&mut c),
            "error bad-request: unknown command (delete ID, flush [ID], hold ID, release ID)\n"
        );
        assert!(c.is_closed());
        // Input after the answer is ignored.
        assert_eq!(c.handle_input(b"flush\n"), None);
        assert_eq!(c.poll_transmit(), None);
    }

    #[test]
    fn an_oversized_request_is_refused_without_buffering_it() {
        let mut c = Conn::new(Instant::now());
        let chunk = [b'x'; READ_CHUNK];
        // Fed until the machine stops wanting input: it must stop at the bound.
        let mut fed = 0;
        while c.wants_input() {
            assert_eq!(c.handle_input(&chunk), None);
            fed += chunk.len();
            assert!(fed <= MAX_REQUEST + READ_CHUNK);
        }
        assert_eq!(drain(&mut c), "error bad-request: request line too long\n");
        // The bound counts the LF: one octet over is too long, at the bound
        // the line is parsed (and here refused for its argument).
        let mut c = Conn::new(Instant::now());
        let long = format!("flush {}\n", "0".repeat(MAX_REQUEST - 6));
        assert_eq!(long.len(), MAX_REQUEST + 1);
        assert_eq!(c.handle_input(long.as_bytes()), None);
        assert_eq!(drain(&mut c), "error bad-request: request line too long\n");
        let mut c = Conn::new(Instant::now());
        let at_bound = format!("flush {}\n", "0".repeat(MAX_REQUEST - 7));
        assert_eq!(at_bound.len(), MAX_REQUEST);
        assert_eq!(c.handle_input(at_bound.as_bytes()), None);
        assert_eq!(
            drain(&mut c),
            "error bad-request: not a queue ID (16 hex digits)\n"
        );
    }

    #[test]
    fn random_input_in_random_pieces_gives_one_answer_and_stays_bounded() {
        let mut rng = crate::test_rng::TestRng::new(13);
        let alphabet = b"deletflushorasy 0123456789ABCDEFabcdef\r\n\x00\xff";
        for _ in 0..5000 {
            let len = rng.below(3 * MAX_REQUEST);
            let input: Vec<u8> = (0..len).map(|_| rng.pick(alphabet)).collect();
            let mut c = Conn::new(Instant::now());
            let mut rest = &input[..];
            let mut requests = 0;
            while !rest.is_empty() && c.wants_input() {
                let n = 1 + rng.below(rest.len());
                let (piece, tail) = rest.split_at(n);
                rest = tail;
                if let Some(req) = c.handle_input(piece) {
                    requests += 1;
                    // Whatever was parsed is a valid request line again.
                    let line = req.line();
                    assert_eq!(parse_request(line.trim_end().as_bytes()), Ok(req));
                    c.answer(&ControlReply::Flushing(None));
                }
            }
            c.handle_eof();
            assert!(requests <= 1);
            let out = drain(&mut c);
            assert!(
                out.starts_with("ok ") || out.starts_with("error "),
                "{out:?}"
            );
            assert!(out.len() <= MAX_REPLY && out.ends_with('\n'));
            assert!(c.is_closed());
        }
    }

    #[test]
    fn eof_before_the_line_and_timeouts() {
        let now = Instant::now();
        let mut c = Conn::new(now);
        assert_eq!(c.handle_input(b"flu"), None);
        c.handle_eof();
        assert!(drain(&mut c).starts_with("error bad-request: connection closed"));

        // A silent client is told at the deadline, then dropped if it does
        // not read the answer either.
        let mut c = Conn::new(now);
        assert_eq!(c.deadline(), now + CONTROL_TIMEOUT);
        c.handle_timeout(now + CONTROL_TIMEOUT - Duration::from_millis(1));
        assert!(c.wants_input());
        c.handle_timeout(now + CONTROL_TIMEOUT);
        assert_eq!(
            c.poll_transmit(),
            Some(&b"error bad-request: timeout waiting for the request\n"[..])
        );
        c.handle_timeout(now + CONTROL_TIMEOUT * 2);
        assert!(c.is_closed());

        // A failed write closes it.
        let mut c = Conn::new(now);
        c.handle_input(b"flush\n");
        c.answer(&ControlReply::Flushing(None));
        c.fail();
        assert!(c.is_closed() && c.poll_transmit().is_none());
    }
}
