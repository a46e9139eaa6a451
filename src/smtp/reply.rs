//! The one reply table of the SMTP server.
//!
//! Every reply tern's server sends is a constant here or is built by a
//! function here, so codes, enhanced status codes (RFC 3463, announced with
//! ENHANCEDSTATUSCODES, RFC 2034) and wording stay consistent. The enhanced
//! code is only written once the client used EHLO (RFC 2034 §3: the client
//! asked for extensions); HELO clients get the classic form.
//!
//! Internal errors become replies through `From` impls next to the error
//! types (e.g. the spool's error maps to 451/452 here, not at the call site).

use std::borrow::Cow;

/// One SMTP reply: basic code, enhanced status code ("" when none applies),
/// and text. Multi-line replies (EHLO) are written by [`write_multiline`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub status: &'static str,
    pub text: Cow<'static, str>,
}

impl Reply {
    pub const fn new(code: u16, status: &'static str, text: &'static str) -> Reply {
        Reply {
            code,
            status,
            text: Cow::Borrowed(text),
        }
    }

    pub fn with_text(code: u16, status: &'static str, text: String) -> Reply {
        Reply {
            code,
            status,
            text: Cow::Owned(text),
        }
    }

    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// Appends the reply in wire form. `enhanced` says whether the client
    /// used EHLO and so gets the RFC 3463 code.
    pub fn write_to(&self, out: &mut Vec<u8>, enhanced: bool) {
        push_code(out, self.code);
        out.push(b' ');
        if enhanced && !self.status.is_empty() {
            out.extend_from_slice(self.status.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(self.text.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.status.is_empty() {
            write!(f, "{} {}", self.code, self.text)
        } else {
            write!(f, "{} {} {}", self.code, self.status, self.text)
        }
    }
}

/// A reply whose text is formatted straight into `out`, as
/// [`Reply::write_to`] writes a `Reply`.
fn write_formatted(
    out: &mut Vec<u8>,
    enhanced: bool,
    code: u16,
    status: &str,
    text: std::fmt::Arguments<'_>,
) {
    use std::io::Write as _;
    push_code(out, code);
    out.push(b' ');
    if enhanced && !status.is_empty() {
        out.extend_from_slice(status.as_bytes());
        out.push(b' ');
    }
    // Writing into a Vec cannot fail.
    let _ = out.write_fmt(text);
    out.extend_from_slice(b"\r\n");
}

/// The three digits of a reply code (always 200..=599 here).
fn push_code(out: &mut Vec<u8>, code: u16) {
    let code = code.min(999);
    out.extend_from_slice(&[
        b'0' + (code / 100) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
    ]);
}

/// Writes a multi-line reply (`250-first`, ..., `250 last`).
pub fn write_multiline(out: &mut Vec<u8>, code: u16, lines: &[&str]) {
    for (i, line) in lines.iter().enumerate() {
        push_code(out, code);
        out.push(if i + 1 == lines.len() { b' ' } else { b'-' });
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

// --- greetings and session -------------------------------------------------

// The replies of every session are written straight into the output
// (no `Reply` with an owned text per session or per message).

pub fn write_greeting(out: &mut Vec<u8>, enhanced: bool, hostname: &str) {
    write_formatted(
        out,
        enhanced,
        220,
        "",
        format_args!("{hostname} ESMTP tern"),
    );
}
pub fn write_helo_ok(out: &mut Vec<u8>, enhanced: bool, hostname: &str) {
    write_formatted(out, enhanced, 250, "", format_args!("{hostname}"));
}
pub fn write_bye(out: &mut Vec<u8>, enhanced: bool, hostname: &str) {
    write_formatted(
        out,
        enhanced,
        221,
        "2.0.0",
        format_args!("{hostname} closing connection"),
    );
}
pub fn shutting_down(hostname: &str) -> Reply {
    Reply::with_text(
        421,
        "4.3.2",
        format!("{hostname} Service shutting down, try again later"),
    )
}
pub fn timeout(hostname: &str) -> Reply {
    Reply::with_text(
        421,
        "4.4.2",
        format!("{hostname} Timeout exceeded, closing connection"),
    )
}
pub fn too_many_connections(hostname: &str) -> Reply {
    Reply::with_text(
        421,
        "4.7.0",
        format!("{hostname} Too many connections, try again later"),
    )
}
pub fn too_many_errors(hostname: &str) -> Reply {
    Reply::with_text(
        421,
        "4.7.0",
        format!("{hostname} Too many errors, closing connection"),
    )
}

// --- positive ---------------------------------------------------------------

pub const OK: Reply = Reply::new(250, "2.0.0", "Ok");
pub const SENDER_OK: Reply = Reply::new(250, "2.1.0", "Sender ok");
pub const RECIPIENT_OK: Reply = Reply::new(250, "2.1.5", "Recipient ok");
pub const RESET_OK: Reply = Reply::new(250, "2.0.0", "Reset state");
pub const VRFY_CANNOT: Reply = Reply::new(
    252,
    "2.5.2",
    "Cannot VRFY user, but will accept message and attempt delivery",
);
pub const HELP: Reply = Reply::new(
    214,
    "2.0.0",
    "Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP",
);
pub const START_DATA: Reply = Reply::new(354, "", "End data with <CR><LF>.<CR><LF>");

/// A BDAT chunk that is not the last one is in the spool file.
pub fn chunk_received(size: u64) -> Reply {
    Reply::with_text(250, "2.0.0", format!("Ok: {size} octets received"))
}

pub fn write_queued(out: &mut Vec<u8>, enhanced: bool, id: &str) {
    write_formatted(
        out,
        enhanced,
        250,
        "2.0.0",
        format_args!("Ok: queued as {id}"),
    );
}

// --- syntax and sequence (5.5.x) --------------------------------------------

pub const UNKNOWN_COMMAND: Reply = Reply::new(500, "5.5.2", "Error: command not recognized");
pub const LINE_TOO_LONG: Reply = Reply::new(500, "5.5.2", "Error: line too long");
pub const SYNTAX_PARAMS: Reply =
    Reply::new(501, "5.5.4", "Syntax error in parameters or arguments");
pub const SYNTAX_HELO: Reply = Reply::new(501, "5.5.4", "Syntax: EHLO hostname");
pub const SYNTAX_MAIL: Reply = Reply::new(501, "5.5.4", "Syntax: MAIL FROM:<address>");
pub const SYNTAX_BDAT: Reply = Reply::new(501, "5.5.4", "Syntax: BDAT count [LAST]");
pub const DATA_AFTER_BDAT: Reply = Reply::new(503, "5.5.1", "Error: DATA not allowed after BDAT");
pub const SYNTAX_RCPT: Reply = Reply::new(501, "5.5.4", "Syntax: RCPT TO:<address>");
pub const BAD_SENDER: Reply = Reply::new(553, "5.1.7", "Bad sender address syntax");
pub const BAD_RECIPIENT: Reply = Reply::new(553, "5.1.3", "Bad recipient address syntax");
pub const NOT_IMPLEMENTED: Reply = Reply::new(502, "5.5.1", "Error: command not implemented");
pub const UNKNOWN_PARAMETER: Reply = Reply::new(555, "5.5.4", "Unsupported MAIL/RCPT parameter");
pub const NEED_HELO: Reply = Reply::new(503, "5.5.1", "Error: send HELO/EHLO first");
pub const NESTED_MAIL: Reply = Reply::new(503, "5.5.1", "Error: nested MAIL command");
pub const NEED_MAIL: Reply = Reply::new(503, "5.5.1", "Error: need MAIL command");
pub const NEED_RCPT: Reply = Reply::new(503, "5.5.1", "Error: need RCPT command");
pub const NON_ASCII: Reply = Reply::new(553, "5.6.7", "Non-ASCII address requires SMTPUTF8");

// --- policy and limits ------------------------------------------------------

pub const RELAY_DENIED: Reply = Reply::new(554, "5.7.1", "Relay access denied");
pub const USER_UNKNOWN: Reply =
    Reply::new(550, "5.1.1", "Recipient address rejected: user unknown");
pub const BAD_MAILBOX_NAME: Reply = Reply::new(
    550,
    "5.1.3",
    "Recipient address rejected: not a valid mailbox name",
);
pub const TOO_MANY_RECIPIENTS: Reply = Reply::new(452, "4.5.3", "Error: too many recipients");
pub const MESSAGE_TOO_BIG: Reply = Reply::new(
    552,
    "5.3.4",
    "Error: message exceeds fixed maximum message size",
);
pub const DATA_LINE_TOO_LONG: Reply =
    Reply::new(554, "5.6.0", "Error: message line longer than 1000 octets");
pub const TOO_MANY_HOPS: Reply = Reply::new(554, "5.4.6", "Error: too many hops (mail loop?)");
/// `MAIL ... REQUIRETLS` outside TLS (RFC 8689 §2: the option is only
/// valid in a session that uses TLS; REQUIRETLS is not even offered then).
/// 530 with X.7.10 "Encryption needed" (RFC 5248 registry) says why,
/// where 555 would only say "unknown parameter".
pub const REQUIRETLS_NEEDS_TLS: Reply = Reply::new(
    530,
    "5.7.10",
    "REQUIRETLS needs a TLS session: STARTTLS first",
);
pub const AUTH_REQUIRED: Reply = Reply::new(530, "5.7.0", "Authentication required");
pub const ENCRYPTION_REQUIRED: Reply = Reply::new(
    538,
    "5.7.11",
    "Encryption required for requested authentication mechanism",
);
pub const AUTH_OK: Reply = Reply::new(235, "2.7.0", "Authentication successful");
pub const AUTH_FAILED: Reply = Reply::new(535, "5.7.8", "Authentication credentials invalid");
pub const AUTH_BLOCKED: Reply = Reply::new(
    454,
    "4.7.0",
    "Too many failed authentications, try again later",
);
pub const AUTH_CANCELLED: Reply = Reply::new(501, "5.7.0", "Authentication cancelled");
pub const AUTH_SYNTAX: Reply = Reply::new(501, "5.5.2", "Malformed authentication data");
pub const AUTH_MECHANISM: Reply = Reply::new(504, "5.5.4", "Unrecognized authentication type");
pub const ALREADY_AUTHENTICATED: Reply = Reply::new(503, "5.5.1", "Error: already authenticated");
pub const AUTH_IN_TRANSACTION: Reply =
    Reply::new(503, "5.5.1", "Error: MAIL transaction in progress");
pub const READY_FOR_TLS: Reply = Reply::new(220, "2.0.0", "Ready to start TLS");
pub const TLS_ACTIVE: Reply = Reply::new(503, "5.5.1", "Error: TLS already active");

// --- local trouble -----------------------------------------------------------

pub const LOCAL_ERROR: Reply = Reply::new(451, "4.3.0", "Error: local error in processing");
pub const NO_SPACE: Reply = Reply::new(452, "4.3.1", "Error: insufficient system storage");

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)] // tests index fixed data
mod tests {
    use super::*;

    #[test]
    fn enhanced_codes_only_after_ehlo() {
        let mut out = Vec::new();
        RELAY_DENIED.write_to(&mut out, true);
        assert_eq!(out, b"554 5.7.1 Relay access denied\r\n");
        out.clear();
        RELAY_DENIED.write_to(&mut out, false);
        assert_eq!(out, b"554 Relay access denied\r\n");
    }

    #[test]
    fn multiline() {
        let mut out = Vec::new();
        write_multiline(&mut out, 250, &["host", "PIPELINING", "8BITMIME"]);
        assert_eq!(out, b"250-host\r\n250-PIPELINING\r\n250 8BITMIME\r\n");
    }
}
