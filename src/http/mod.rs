//! A small HTTP/1.1 client for webhooks and OAuth2 token requests.
//!
//! Why: tern must POST to a notification service (ntfy, Gotify) and to an
//! OAuth2 token endpoint from its one thread, so the protocol is a sans-IO
//! machine ([`Exchange`]) like the SMTP client: bytes and `now` in, bytes,
//! a result and one deadline out. The drivers (the daemon's, and a blocking
//! one for commands) move bytes between it, a TLS stream and a socket.
//!
//! Rules: RFC 9112 (HTTP/1.1 message syntax: request line, `Host`,
//! `Content-Length`, chunked coding §7.1, message body length §6.3),
//! RFC 9110 (status codes; 1xx interim responses are skipped), RFC 3986
//! (the `https://host[:port]/path` subset). The status line and header
//! fields are parsed by `httparse`.
//!
//! Invariants:
//! - One request, one response per connection: the request says
//!   `Connection: close`, and bytes after the response are ignored.
//! - Every buffer is bounded: the response head by [`MAX_RESPONSE_HEAD`]
//!   and [`MAX_RESPONSE_HEADERS`], the body by [`MAX_RESPONSE_BODY`]; the
//!   request is built whole at the start (the caller bounds its body).
//! - One deadline covers the whole exchange (connect, TLS, request,
//!   response); when it passes, the result is [`HttpError::Timeout`].
//! - Exactly one result per exchange; after it the machine does nothing.
//! - A body delimited by the close (no `Content-Length`, not chunked) is
//!   taken as complete at the close, TLS `close_notify` or not (as most
//!   clients do); the webhook and token answers tern reads are small and
//!   usually carry a length.
//!
//! Not supported: `http://` (every URL is HTTPS), proxies, redirects (a 3xx
//! is returned as it is), keep-alive, compression, `Expect: 100-continue`,
//! userinfo in URLs, IPv6 zone identifiers, request bodies streamed.

pub mod blocking;
mod chunked;
mod exchange;
mod url;

pub use chunked::{ChunkedDecoder, ChunkedError, MAX_CHUNK_LINE, MAX_TRAILER};
pub use exchange::Exchange;
pub use url::{Url, UrlError, MAX_URL};

use std::fmt;

/// Most bytes of a response's status line and header fields.
pub const MAX_RESPONSE_HEAD: usize = 8 * 1024;
/// Most header fields in a response.
pub const MAX_RESPONSE_HEADERS: usize = 32;
/// Most bytes of a response body (after chunked decoding).
pub const MAX_RESPONSE_BODY: usize = 64 * 1024;
/// Most header fields the caller may add to a request.
pub const MAX_REQUEST_HEADERS: usize = 16;
/// Most bytes of one request header value.
pub const MAX_REQUEST_HEADER_VALUE: usize = 4 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: Method,
    pub url: Url,
    /// Extra header fields, in order (`Host`, `Connection`,
    /// `Content-Length` and `User-Agent` are the machine's own).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    /// Header fields as received (at most [`MAX_RESPONSE_HEADERS`]).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The decoded body (at most [`MAX_RESPONSE_BODY`] bytes).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first field named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

/// Why an exchange produced no response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpError {
    /// The request cannot be sent as given (a header with CR/LF, too many).
    InvalidRequest(&'static str),
    /// DNS or TCP connect failed (reported by the driver).
    Connect(String),
    /// TLS handshake failed, certificate verification included (driver).
    Tls(String),
    /// The deadline passed before the response was complete.
    Timeout,
    /// The response head or body exceeded its limit.
    TooLarge,
    /// The response is not HTTP/1.x as RFC 9112 writes it.
    Malformed(&'static str),
    /// The server closed the connection before the response was complete.
    Closed,
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::InvalidRequest(why) => write!(f, "invalid request: {why}"),
            HttpError::Connect(why) => write!(f, "connect failed: {why}"),
            HttpError::Tls(why) => write!(f, "TLS failed: {why}"),
            HttpError::Timeout => write!(f, "timed out"),
            HttpError::TooLarge => write!(f, "response too large"),
            HttpError::Malformed(why) => write!(f, "malformed response: {why}"),
            HttpError::Closed => write!(f, "connection closed before the response was complete"),
        }
    }
}
