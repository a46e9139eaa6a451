//! The replies the client makes up itself (no reply in time, a lost
//! connection, its own checks before sending): one table, each marked with
//! why ([`Own`]) so the daemon never reports them as the server's words.
//!
//! Why separate: a table of constants, read by the session in the parent
//! module and by the outcome table (`delivery::outcome`) through `Own`.

use super::reply::{Own, ServerReply};

/// Synthesized replies: (code, enhanced status and text, why tern made it
/// up). They reach the daemon marked as the client's own ([`ServerReply::own`]),
/// never as something the server said.
pub(super) type Synth = (u16, &'static str, Own);
pub(super) const NOT_READY: Synth = (
    451,
    "4.3.0 client session not ready for a transaction",
    Own::Client,
);
pub(super) const ABORTED: Synth = (451, "4.3.0 delivery aborted by the client", Own::Client);
pub(super) const CONNECTION_LOST: Synth = (451, "4.4.2 connection lost", Own::ConnectionLost);
pub(super) const PROTOCOL_ERROR: Synth = (
    451,
    "4.5.0 SMTP protocol error from the server",
    Own::Protocol,
);
pub(super) const TLS_NOT_OFFERED: Synth =
    (454, "4.7.0 TLS required but STARTTLS not offered", Own::Tls);
pub(super) const AUTH_NEEDS_TLS: Synth = (
    454,
    "4.7.0 refusing to send credentials without TLS",
    Own::Tls,
);
pub(super) const NO_AUTH_MECHANISM: Synth = (
    454,
    "4.7.0 server offers no supported AUTH mechanism",
    Own::Protocol,
);
pub(super) const BAD_SENDER: Synth = (553, "5.1.7 invalid sender address", Own::Client);
pub(super) const BAD_RECIPIENT: Synth = (553, "5.1.3 invalid recipient address", Own::Client);
pub(super) const SMTPUTF8_NOT_OFFERED: Synth = (
    553,
    "5.6.7 SMTPUTF8 required but not offered by the server",
    Own::Client,
);
pub(super) const REQUIRETLS_NOT_OFFERED: Synth = (
    550,
    "5.7.30 REQUIRETLS support required: not offered by the server under TLS",
    Own::Tls,
);
/// No reply in time: 4.4.2, "timeout waiting for" what was awaited.
pub(super) const TIMEOUT_CODE: u16 = 451;
pub(super) const TIMEOUT_TEXT: &str = "4.4.2 timeout waiting for";
pub(super) const TOO_BIG_CODE: u16 = 552;
/// A body that cannot go to a 7-bit server (RFC 3463 5.6.3); the reason follows.
pub(super) const NOT_CONVERTIBLE_CODE: u16 = 554;
pub(super) const NOT_CONVERTIBLE_TEXT: &str =
    "5.6.3 message content cannot be converted to 7bit for a server without 8BITMIME:";
pub(super) const TOO_BIG_TEXT: &str = "5.3.4 message size exceeds the server's fixed maximum of";

pub(super) fn synth((code, text, own): Synth) -> ServerReply {
    ServerReply {
        code,
        raw: text.to_string(),
        own: Some(own),
    }
}
