//! [`Exchange`]: one HTTP/1.1 request and its response, sans-IO.
//!
//! The driver writes [`Exchange::poll_transmit`] to the (TLS) connection,
//! feeds what it reads to [`Exchange::handle_input`], reports the peer's
//! close with [`Exchange::handle_eof`] and its own failures (connect, TLS)
//! with [`Exchange::fail`], and calls [`Exchange::handle_timeout`] at
//! [`Exchange::poll_timeout`]. [`Exchange::take_result`] gives the one
//! result. Response body length follows RFC 9112 §6.3: no body for 1xx,
//! 204 and 304; chunked when `Transfer-Encoding` ends in `chunked`; else
//! `Content-Length`; else up to the close.

use std::time::{Duration, Instant};

use super::chunked::{ChunkedDecoder, ChunkedError};
use super::{
    HttpError, HttpRequest, HttpResponse, Method, MAX_REQUEST_HEADERS, MAX_REQUEST_HEADER_VALUE,
    MAX_RESPONSE_BODY, MAX_RESPONSE_HEAD, MAX_RESPONSE_HEADERS,
};

/// Header fields the machine writes itself; the caller may not repeat them.
const OWN_FIELDS: [&str; 5] = [
    "host",
    "connection",
    "content-length",
    "transfer-encoding",
    "user-agent",
];

#[derive(Debug)]
enum Body {
    Length(usize),
    Chunked(ChunkedDecoder),
    UntilClose,
}

#[derive(Debug)]
enum State {
    /// Waiting for (the rest of) the status line and header fields.
    Head,
    Body {
        status: u16,
        headers: Vec<(String, Vec<u8>)>,
        body: Body,
    },
    Done,
}

#[derive(Debug)]
pub struct Exchange {
    out: Vec<u8>,
    sent: usize,
    head: Vec<u8>,
    body: Vec<u8>,
    state: State,
    deadline: Instant,
    result: Option<Result<HttpResponse, HttpError>>,
}

impl Exchange {
    /// Serializes `req`; the whole exchange must end within `timeout`.
    pub fn new(req: &HttpRequest, now: Instant, timeout: Duration) -> Result<Exchange, HttpError> {
        Ok(Exchange {
            out: encode_request(req)?,
            sent: 0,
            head: Vec::new(),
            body: Vec::new(),
            state: State::Head,
            deadline: now + timeout,
            result: None,
        })
    }

    /// Request bytes still to be written.
    pub fn poll_transmit(&self) -> &[u8] {
        if self.is_done() {
            return &[];
        }
        self.out.get(self.sent..).unwrap_or_default()
    }

    pub fn consume_transmit(&mut self, n: usize) {
        self.sent = (self.sent + n).min(self.out.len());
    }

    /// Response bytes read from the connection (plaintext).
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        if self.is_done() {
            return;
        }
        if now >= self.deadline {
            self.finish(Err(HttpError::Timeout));
            return;
        }
        if !matches!(self.state, State::Head) {
            self.body_input(bytes);
            return;
        }
        let room = MAX_RESPONSE_HEAD.saturating_sub(self.head.len());
        let (head_part, later) = bytes
            .split_at_checked(bytes.len().min(room))
            .unwrap_or((bytes, &[]));
        self.head.extend_from_slice(head_part);
        match self.parse_head() {
            Ok(Some(head_len)) => {
                let head = std::mem::take(&mut self.head);
                // Always called once: completes a bodiless response.
                self.body_input(head.get(head_len..).unwrap_or_default());
                if !self.is_done() {
                    self.body_input(later);
                }
            }
            Ok(None) => {
                if self.head.len() >= MAX_RESPONSE_HEAD {
                    self.finish(Err(HttpError::TooLarge));
                }
            }
            Err(e) => self.finish(Err(e)),
        }
    }

    /// The peer closed the connection (TLS close_notify or TCP FIN).
    pub fn handle_eof(&mut self, _now: Instant) {
        if self.is_done() {
            return;
        }
        let result = match &mut self.state {
            State::Body {
                status,
                headers,
                body: Body::UntilClose,
            } => Ok(HttpResponse {
                status: *status,
                headers: std::mem::take(headers),
                body: std::mem::take(&mut self.body),
            }),
            _ => Err(HttpError::Closed),
        };
        self.finish(result);
    }

    /// The driver failed (DNS, connect, TLS); the exchange ends with `err`.
    pub fn fail(&mut self, err: HttpError) {
        if !self.is_done() {
            self.finish(Err(err));
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.is_done()).then_some(self.deadline)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.is_done() && now >= self.deadline {
            self.finish(Err(HttpError::Timeout));
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// The result, once (then `None`).
    pub fn take_result(&mut self) -> Option<Result<HttpResponse, HttpError>> {
        self.result.take()
    }

    fn finish(&mut self, result: Result<HttpResponse, HttpError>) {
        self.state = State::Done;
        self.head = Vec::new();
        self.body = Vec::new();
        self.result = Some(result);
    }

    /// Parses the head; on success enters `State::Body` and returns the
    /// head's length. 1xx interim responses are dropped and parsing goes on.
    fn parse_head(&mut self) -> Result<Option<usize>, HttpError> {
        let mut skipped = 0;
        loop {
            let buf = self.head.get(skipped..).unwrap_or_default();
            let mut fields = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
            let mut resp = httparse::Response::new(&mut fields);
            let len = match resp.parse(buf) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooLarge),
                Err(httparse::Error::Status) => {
                    return Err(HttpError::Malformed("bad status line"))
                }
                Err(httparse::Error::Version) => return Err(HttpError::Malformed("not HTTP/1.x")),
                Err(_) => return Err(HttpError::Malformed("bad header field")),
            };
            let status = resp.code.ok_or(HttpError::Malformed("bad status line"))?;
            if !(100..=999).contains(&status) {
                return Err(HttpError::Malformed("bad status code"));
            }
            if (100..200).contains(&status) && status != 101 {
                skipped += len;
                continue;
            }
            if status == 101 {
                return Err(HttpError::Malformed("unexpected 101 Switching Protocols"));
            }
            let headers: Vec<(String, Vec<u8>)> = resp
                .headers
                .iter()
                .map(|h| (h.name.to_string(), h.value.to_vec()))
                .collect();
            let body = body_kind(status, &headers)?;
            self.state = State::Body {
                status,
                headers,
                body,
            };
            return Ok(Some(skipped + len));
        }
    }

    fn body_input(&mut self, bytes: &[u8]) {
        let State::Body { body, .. } = &mut self.state else {
            return;
        };
        let complete = match body {
            Body::Length(remaining) => {
                let take = (*remaining).min(bytes.len());
                self.body
                    .extend_from_slice(bytes.get(..take).unwrap_or_default());
                *remaining -= take;
                *remaining == 0
            }
            Body::Chunked(dec) => match dec.feed(bytes, &mut self.body) {
                Ok(_) => dec.is_done(),
                Err(ChunkedError::TooLarge) => {
                    self.finish(Err(HttpError::TooLarge));
                    return;
                }
                Err(ChunkedError::Malformed(why)) => {
                    self.finish(Err(HttpError::Malformed(why)));
                    return;
                }
            },
            Body::UntilClose => {
                if self.body.len() + bytes.len() > MAX_RESPONSE_BODY {
                    self.finish(Err(HttpError::TooLarge));
                    return;
                }
                self.body.extend_from_slice(bytes);
                false
            }
        };
        if complete {
            self.complete();
        }
    }

    fn complete(&mut self) {
        let State::Body {
            status, headers, ..
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return;
        };
        let body = std::mem::take(&mut self.body);
        self.finish(Ok(HttpResponse {
            status,
            headers,
            body,
        }));
    }
}

/// RFC 9112 §6.3, for a response to GET or POST.
fn body_kind(status: u16, headers: &[(String, Vec<u8>)]) -> Result<Body, HttpError> {
    if status == 204 || status == 304 {
        return Ok(Body::Length(0));
    }
    fn field<'a>(
        headers: &'a [(String, Vec<u8>)],
        name: &'static str,
    ) -> impl Iterator<Item = &'a [u8]> {
        headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
    if let Some(te) = field(headers, "transfer-encoding").last() {
        let last = te.rsplit(|&b| b == b',').next().unwrap_or_default();
        if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            return Ok(Body::Chunked(ChunkedDecoder::new(MAX_RESPONSE_BODY)));
        }
        return Err(HttpError::Malformed("unsupported Transfer-Encoding"));
    }
    let mut length: Option<usize> = None;
    for value in field(headers, "content-length") {
        for part in value.split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                return Err(HttpError::Malformed("bad Content-Length"));
            }
            // More digits than a limit can have: too large, not malformed.
            let n = std::str::from_utf8(part)
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
                .unwrap_or(usize::MAX);
            if length.is_some_and(|l| l != n) {
                return Err(HttpError::Malformed("conflicting Content-Length"));
            }
            length = Some(n);
        }
    }
    match length {
        Some(n) if n > MAX_RESPONSE_BODY => Err(HttpError::TooLarge),
        Some(n) => Ok(Body::Length(n)),
        None => Ok(Body::UntilClose),
    }
}

fn encode_request(req: &HttpRequest) -> Result<Vec<u8>, HttpError> {
    if req.headers.len() > MAX_REQUEST_HEADERS {
        return Err(HttpError::InvalidRequest("too many header fields"));
    }
    let mut out = Vec::with_capacity(256 + req.body.len());
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.url.path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(req.url.host_field().as_bytes());
    out.extend_from_slice(b"\r\nUser-Agent: tern\r\nConnection: close\r\n");
    if req.method == Method::Post || !req.body.is_empty() {
        out.extend_from_slice(format!("Content-Length: {}\r\n", req.body.len()).as_bytes());
    }
    for (name, value) in &req.headers {
        let token = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            return Err(HttpError::InvalidRequest("bad header field name"));
        }
        if OWN_FIELDS.iter().any(|f| name.eq_ignore_ascii_case(f)) {
            return Err(HttpError::InvalidRequest("header field set by the client"));
        }
        if value.len() > MAX_REQUEST_HEADER_VALUE
            || value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
        {
            return Err(HttpError::InvalidRequest("bad header field value"));
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.trim().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&req.body);
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
#[path = "exchange_tests.rs"]
mod tests;
