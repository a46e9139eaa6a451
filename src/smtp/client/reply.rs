//! What the server says, parsed: reply lines into [`ServerReply`] (with [`Own`]
//! marking the replies the client makes up itself), and the lines of an
//! EHLO reply into extensions.
//!
//! Why separate: these are pure functions of the received text, with no
//! session state; the session in the parent module decides what a reply
//! means in its phase.

use std::fmt;

/// Why the client made a reply up itself instead of the server giving it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Own {
    /// No reply (or TLS handshake, or body progress) in time; names what
    /// was awaited ("the greeting").
    Timeout(&'static str),
    /// The socket closed or failed mid-dialog.
    ConnectionLost,
    /// The server broke the protocol (malformed reply, no usable AUTH).
    Protocol,
    /// The TLS policy: STARTTLS required but not offered, credentials
    /// that must not go out in plaintext.
    Tls,
    /// The client's own checks before sending (state, addresses, size,
    /// 8-bit content, SMTPUTF8).
    Client,
}

/// One SMTP reply as the client sees it: its code and the text of each
/// line (without the code); from the server, or made up by the client
/// (`own`). What tern's own server sends is `smtp::reply::Reply`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerReply {
    pub code: u16,
    /// The text of each line (without the code), joined with `\n`: one
    /// string per reply, not one per line ([`ServerReply::lines`]). A
    /// reply without text (a bare `250`) has none.
    pub raw: String,
    /// `None` for a reply the server sent; else why the client made it up.
    pub own: Option<Own>,
}

impl ServerReply {
    /// First digit of the code.
    pub fn class(&self) -> u16 {
        self.code / 100
    }

    /// 2yz or 3yz (RFC 5321 §4.2.1: positive completion or intermediate).
    pub fn is_positive(&self) -> bool {
        matches!(self.class(), 2 | 3)
    }

    /// 4yz.
    pub fn is_transient(&self) -> bool {
        self.class() == 4
    }

    /// 5yz.
    pub fn is_permanent(&self) -> bool {
        self.class() == 5
    }

    /// The text of each line.
    pub fn lines(&self) -> std::str::Split<'_, char> {
        self.raw.split('\n')
    }

    /// All lines joined with a space.
    pub fn text(&self) -> String {
        self.raw.replace('\n', " ")
    }

    /// The RFC 3463 enhanced status code at the start of the first line.
    pub fn enhanced(&self) -> Option<(u8, u16, u16)> {
        let token = self.lines().next()?.split_ascii_whitespace().next()?;
        let s = crate::delivery::outcome::Status::parse(token)?;
        Some((s.class, s.subject, s.detail))
    }
}

impl fmt::Display for ServerReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.raw.is_empty() {
            write!(f, "{}", self.code)
        } else {
            write!(f, "{} ", self.code)?;
            for (i, line) in self.lines().enumerate() {
                if i > 0 {
                    f.write_str(" ")?;
                }
                f.write_str(line)?;
            }
            Ok(())
        }
    }
}

#[derive(Clone, Debug)]
pub(super) struct Extension {
    pub(super) keyword: String,
    pub(super) params: String,
}

/// EHLO reply lines after the first: `KEYWORD [params]`; the old
/// `AUTH=LOGIN PLAIN` form counts as AUTH.
pub(super) fn parse_extensions<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<Extension> {
    lines
        .skip(1)
        .filter_map(|line| {
            let line = line.trim();
            let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
            let (keyword, params) = match word.split_once('=') {
                Some((k, first)) => (k, format!("{first} {rest}")),
                None => (word, rest.to_string()),
            };
            if keyword.is_empty() {
                return None;
            }
            Some(Extension {
                keyword: keyword.to_ascii_uppercase(),
                params: params.trim().to_string(),
            })
        })
        .collect()
}

/// `250-text` / `250 text` / `250` → (code, is last line, text).
pub(super) fn parse_reply_line(line: &[u8]) -> Option<(u16, bool, std::borrow::Cow<'_, str>)> {
    let digits = line.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let code = digits
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    if !(200..=599).contains(&code) {
        return None;
    }
    let last = match line.get(3) {
        None | Some(b' ') => true,
        Some(b'-') => false,
        Some(_) => return None,
    };
    let text = String::from_utf8_lossy(line.get(4..).unwrap_or(&[]));
    Some((code, last, text))
}
