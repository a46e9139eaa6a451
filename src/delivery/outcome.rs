//! What one delivery attempt did for one recipient, decided once into a
//! value and kept as that value: in the state file (field by field), the
//! queue runner, the log line, `mailq` and the bounce.
//!
//! Why: results used to be formatted as `"{relay} said: {reply}"` and parsed
//! back by the runner for the status code and the relay. A refused
//! connection was logged `dsn=5.0.0 status=deferred`, replies tern made up
//! itself were shown as "HOST said: …", and DNS errors carried Rust debug
//! text. Now a [`Reason`] says who decided ([`Origin`]: the remote server,
//! or tern itself and why), the reply code, the RFC 3463 status and a
//! sentence; every reason tern makes up comes from the table of
//! constructors at the end of this module, so codes and wording are
//! consistent.

use std::fmt;

use crate::smtp::client::{Own, ServerReply};

/// An RFC 3463 enhanced status code: class (2, 4, 5), subject, detail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Status {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl Status {
    pub const fn new(class: u8, subject: u16, detail: u16) -> Status {
        Status {
            class,
            subject,
            detail,
        }
    }

    /// Parses "C.SSS.DDD" (class 2, 4 or 5; at most three digits each).
    pub fn parse(s: &str) -> Option<Status> {
        let mut parts = s.split('.');
        let class = digits(parts.next()?, 1)?;
        let subject = digits(parts.next()?, 3)?;
        let detail = digits(parts.next()?, 3)?;
        if parts.next().is_some() || !matches!(class, 2 | 4 | 5) {
            return None;
        }
        Some(Status::new(class as u8, subject, detail))
    }

    /// The generic code of a basic reply code's class (X.0.0), for a reply
    /// without an enhanced code.
    pub fn generic(code: u16) -> Status {
        match code / 100 {
            2 => Status::new(2, 0, 0),
            4 => Status::new(4, 0, 0),
            _ => Status::new(5, 0, 0),
        }
    }

    pub fn is_permanent(self) -> bool {
        self.class == 5
    }
}

fn digits(s: &str, max: usize) -> Option<u16> {
    if s.is_empty() || s.len() > max || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// Who decided an outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The remote server replied so; `relay` names it as `host[ip]:port`.
    Remote { relay: String },
    /// tern: the DNS lookup of the destination.
    Dns,
    /// tern: the TCP connection (refused, unreachable, timed out).
    Connect,
    /// tern: the TLS handshake or certificate verification, or the TLS
    /// policy (required but not offered).
    Tls,
    /// tern: the server did not answer in time.
    Timeout,
    /// tern: the SMTP dialog itself (connection lost, malformed reply,
    /// content the server cannot take).
    Protocol,
    /// tern: local delivery (mailbox, alias, user).
    Local,
    /// tern: the queue (expiry, a recipient refused at import, a loop).
    Queue,
    /// A webhook (`routes` target `webhook:URL`) answered with an HTTP
    /// status; `url` names it. The status is in the reason's text; the
    /// decision (delivered, deferred, failed) is the outcome's variant.
    Webhook { url: String },
}

impl Origin {
    /// The word stored in the state file and shown in logs.
    pub fn name(&self) -> &'static str {
        match self {
            Origin::Remote { .. } => "remote",
            Origin::Dns => "dns",
            Origin::Connect => "connect",
            Origin::Tls => "tls",
            Origin::Timeout => "timeout",
            Origin::Protocol => "protocol",
            Origin::Local => "local",
            Origin::Queue => "queue",
            Origin::Webhook { .. } => "webhook",
        }
    }

    /// The inverse of [`Origin::name`] for the origins without a relay.
    pub fn from_name(name: &str) -> Option<Origin> {
        Some(match name {
            "dns" => Origin::Dns,
            "connect" => Origin::Connect,
            "tls" => Origin::Tls,
            "timeout" => Origin::Timeout,
            "protocol" => Origin::Protocol,
            "local" => Origin::Local,
            "queue" => Origin::Queue,
            _ => return None,
        })
    }

    pub fn relay(&self) -> Option<&str> {
        match self {
            Origin::Remote { relay } => Some(relay),
            Origin::Webhook { url } => Some(url),
            _ => None,
        }
    }
}

/// Why a recipient was deferred or failed: a reply (basic code, enhanced
/// status, one line of text without the codes) and who gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reason {
    pub origin: Origin,
    pub code: u16,
    pub status: Status,
    pub text: String,
}

impl Reason {
    /// A reason tern decided. The status class must match the code's.
    pub fn new(origin: Origin, code: u16, status: Status, text: impl Into<String>) -> Reason {
        debug_assert_eq!(u16::from(status.class), code / 100, "{code} {status}");
        let mut text = text.into();
        if text.contains(['\r', '\n']) {
            text = one_line(&text);
        }
        Reason {
            origin,
            code,
            status,
            text,
        }
    }

    /// A server's reply: its code, its enhanced code when it gave one
    /// (else the class's X.0.0), and its text after the enhanced code.
    pub fn remote(relay: &str, code: u16, status: Option<Status>, text: &str) -> Reason {
        Reason {
            origin: Origin::Remote {
                relay: relay.to_string(),
            },
            code,
            status: status.unwrap_or_else(|| Status::generic(code)),
            text: one_line(text),
        }
    }

    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }
}

/// Line ends become spaces: a reason is one line in the state file, the
/// log and the bounce. Other control characters stay as the server sent
/// them; every display escapes them (`logsafe`, the bounce's `clean`).
pub fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    out.extend(
        s.chars()
            .map(|c| if matches!(c, '\r' | '\n') { ' ' } else { c }),
    );
    out
}

/// As shown in logs, `mailq` and bounces: `relay said: 550 5.1.1 text` for
/// a server's reply, `webhook URL answered HTTP status 404: …` for a
/// webhook's, `550 5.1.2 text` for tern's own decision.
impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::Remote { relay } => write!(f, "{relay} said: ")?,
            // No SMTP code: the HTTP status in the text is what it said.
            Origin::Webhook { url } => return write!(f, "webhook {url} answered {}", self.text),
            _ => {}
        }
        write!(f, "{} {} {}", self.code, self.status, self.text)
    }
}

/// One recipient's result of one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted by `relay` (`host[ip]:port`, or the mailbox for local
    /// delivery).
    Delivered { relay: String },
    /// Try again later.
    Deferred(Reason),
    /// Final: the sender gets a bounce.
    Failed(Reason),
}

impl Outcome {
    /// Deferred or failed according to the reason's code.
    pub fn from_reason(reason: Reason) -> Outcome {
        if reason.is_permanent() {
            Outcome::Failed(reason)
        } else {
            Outcome::Deferred(reason)
        }
    }

    pub fn reason(&self) -> Option<&Reason> {
        match self {
            Outcome::Delivered { .. } => None,
            Outcome::Deferred(r) | Outcome::Failed(r) => Some(r),
        }
    }
}

// ---------------------------------------------------------------------------
// The table of reasons tern makes up itself. Every synthesized reason is
// built here; callers never write a code.

/// DNS: the lookup failed for now (timeout, SERVFAIL, REFUSED, malformed
/// answer); `why` says which, in words.
pub fn dns_temporary(domain: &str, why: &str) -> Reason {
    Reason::new(
        Origin::Dns,
        451,
        Status::new(4, 4, 3),
        format!("DNS lookup for {domain} failed: {why}"),
    )
}

/// DNS: NXDOMAIN.
pub fn dns_no_such_domain(domain: &str) -> Reason {
    Reason::new(
        Origin::Dns,
        550,
        Status::new(5, 1, 2),
        format!("domain {domain} does not exist"),
    )
}

/// DNS: no MX and no address, or MX hosts without addresses.
pub fn dns_no_address(domain: &str) -> Reason {
    Reason::new(
        Origin::Dns,
        550,
        Status::new(5, 1, 2),
        format!("no mail host found for {domain}"),
    )
}

/// DNS: a null MX (RFC 7505).
pub fn dns_null_mx(domain: &str) -> Reason {
    Reason::new(
        Origin::Dns,
        556,
        Status::new(5, 1, 10),
        format!("domain {domain} accepts no mail (null MX)"),
    )
}

/// The MX walk leads back to this host.
pub fn mail_loops_back(domain: &str) -> Reason {
    Reason::new(
        Origin::Queue,
        554,
        Status::new(5, 4, 6),
        format!("mail for {domain} loops back to myself"),
    )
}

/// The recipient's route cannot be used now: a target not supported yet,
/// a password file that cannot be read. Deferred: fixing the
/// configuration (and SIGHUP) lets the mail go.
pub fn route_unusable(why: &str) -> Reason {
    Reason::new(
        Origin::Queue,
        451,
        Status::new(4, 3, 5),
        format!("route not usable: {why}"),
    )
}

/// No OAuth2 access token for the relay: its token command failed (exit
/// status, bad output, the deadline). Deferred, never bounced: the
/// command may work at the next attempt.
pub fn oauth_token_unavailable(why: &str) -> Reason {
    Reason::new(
        Origin::Queue,
        451,
        Status::new(4, 7, 0),
        format!("no OAuth2 access token: {why}"),
    )
}

/// TCP connect failed; `why` is the system's words ("connection refused").
pub fn connect_failed(addr: &str, why: &str) -> Reason {
    Reason::new(
        Origin::Connect,
        451,
        Status::new(4, 4, 1),
        format!("cannot connect to {addr}: {why}"),
    )
}

/// TCP connect did not finish in time.
pub fn connect_timeout(addr: &str) -> Reason {
    Reason::new(
        Origin::Connect,
        451,
        Status::new(4, 4, 1),
        format!("cannot connect to {addr}: timed out"),
    )
}

/// Every host and address was tried and none gave a better reason.
pub fn no_destination_reached() -> Reason {
    Reason::new(
        Origin::Connect,
        451,
        Status::new(4, 4, 1),
        "no destination could be reached",
    )
}

/// The TLS handshake or the certificate check failed; `why` in words
/// ("certificate verify failed: unknown issuer").
pub fn tls_failed(peer: &str, why: &str) -> Reason {
    Reason::new(
        Origin::Tls,
        451,
        Status::new(4, 7, 5),
        format!("TLS with {peer} failed: {why}"),
    )
}

/// No CA certificates to verify a server with.
pub fn tls_no_trust_anchors() -> Reason {
    Reason::new(
        Origin::Tls,
        451,
        Status::new(4, 7, 5),
        "no trusted CA certificates to verify the server (set tls_ca_file)",
    )
}

/// The server answered in the other TLS mode; `hint` says what to set.
pub fn tls_mode_mismatch(peer: &str, hint: &str) -> Reason {
    Reason::new(
        Origin::Tls,
        451,
        Status::new(4, 7, 5),
        format!("TLS mode mismatch with {peer}: {hint}"),
    )
}

/// Why a hop cannot take a REQUIRETLS message (RFC 8689 §4.2.1): each
/// becomes the one permanent 5.7.30 reason [`requiretls_unsatisfied`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequireTlsGap {
    /// MX hosts of `domain`: tern validates neither DNSSEC nor MTA-STS,
    /// so the MX names are not authenticated (§4.2.1 item 1).
    UnvalidatedMx { domain: String },
    /// The relay is configured without TLS (`tls=none`).
    PlaintextRelay,
    /// The server did not offer STARTTLS.
    NoStartTls,
    /// No CA certificates: the certificate cannot be verified.
    NoTrustAnchors,
    /// The handshake or the certificate check failed (`why` in words).
    TlsFailed { why: String },
    /// Under verified TLS, the server's EHLO lacks REQUIRETLS.
    NotOffered,
    /// A `webhook:` route: HTTP cannot pass the requirement on.
    WebhookRoute,
}

/// A REQUIRETLS message that cannot go to `peer` without lowering its
/// protection: 550 5.7.30 (RFC 8689 §6), bounced, never retried over a
/// lesser connection.
pub fn requiretls_unsatisfied(peer: &str, gap: &RequireTlsGap) -> Reason {
    let detail = match gap {
        RequireTlsGap::UnvalidatedMx { domain } => format!(
            "MX hosts of {domain} are not DNSSEC- or MTA-STS-validated (tern relays REQUIRETLS mail only through a configured smarthost or route)"
        ),
        RequireTlsGap::PlaintextRelay => format!("relay {peer} is configured without TLS"),
        RequireTlsGap::NoStartTls => format!("{peer} does not offer STARTTLS"),
        RequireTlsGap::NoTrustAnchors => {
            "no trusted CA certificates to verify the server (set tls_ca_file)".to_string()
        }
        RequireTlsGap::TlsFailed { why } => format!("TLS with {peer} failed: {why}"),
        RequireTlsGap::NotOffered => format!("{peer} does not offer REQUIRETLS"),
        RequireTlsGap::WebhookRoute => format!("webhook {peer} cannot relay with REQUIRETLS"),
    };
    Reason::new(
        Origin::Tls,
        550,
        Status::new(5, 7, 30),
        format!("REQUIRETLS support required: {detail}"),
    )
}

/// The server did not answer in time; `waiting_for` names the step.
pub fn timeout(peer: &str, waiting_for: &str) -> Reason {
    Reason::new(
        Origin::Timeout,
        451,
        Status::new(4, 4, 2),
        format!("timeout waiting for {waiting_for} from {peer}"),
    )
}

/// The connection closed in the middle of the dialog.
pub fn connection_lost(peer: &str) -> Reason {
    Reason::new(
        Origin::Protocol,
        451,
        Status::new(4, 4, 2),
        format!("connection to {peer} lost"),
    )
}

/// The queue gave up: the message was held longer than `max_queue_time`.
pub fn expired(held: &str, last: Option<&Reason>) -> Reason {
    let text = match last {
        Some(last) => format!("message expired after {held} in the queue; last error: {last}"),
        None => format!("message expired after {held} in the queue"),
    };
    Reason::new(Origin::Queue, 554, Status::new(5, 4, 7), text)
}

/// The spool file could not be read for this attempt.
pub fn queue_file_unreadable(why: &str) -> Reason {
    Reason::new(
        Origin::Queue,
        451,
        Status::new(4, 3, 0),
        format!("cannot read queue file: {why}"),
    )
}

/// Implicit TLS (`smarthost_tls = tls`) met a server that greets in
/// plaintext.
pub fn tls_plaintext_greeting(peer: &str) -> Reason {
    tls_mode_mismatch(
        peer,
        "the server speaks plain SMTP first; set smarthost_tls = starttls",
    )
}

/// Where implicit TLS is the rule (port 465, RFC 8314), the server sends
/// nothing until the client's TLS hello: a plaintext client waits for a
/// greeting that never comes.
pub const IMPLICIT_TLS_PORT: u16 = 465;

/// A plaintext session to port 465 timed out before any greeting.
pub fn tls_implicit_port(peer: &str) -> Reason {
    tls_mode_mismatch(
        peer,
        "port 465 speaks implicit TLS; set smarthost_tls = tls",
    )
}

/// What the SMTP client reports as a reason: the server's words when it
/// said them (`Remote`), else tern's own (timeout, lost connection, TLS
/// policy, protocol), never presented as something the server said.
pub fn from_client(r: &ServerReply, peer: &str) -> Reason {
    let status = r.enhanced().map(|(c, s, d)| Status::new(c, s, d));
    let all = r.text();
    let text = match status {
        Some(_) => all.split_once(' ').map_or("", |(_, rest)| rest),
        None => all.as_str(),
    };
    let status_or_generic = status.unwrap_or_else(|| Status::generic(r.code));
    match r.own {
        None => Reason::remote(peer, r.code, status, text),
        Some(Own::Timeout(what)) => timeout(peer, what),
        Some(Own::ConnectionLost) => connection_lost(peer),
        Some(Own::Tls) => smtp_client(Origin::Tls, peer, r.code, status_or_generic, text),
        Some(Own::Protocol | Own::Client) => {
            smtp_client(Origin::Protocol, peer, r.code, status_or_generic, text)
        }
    }
}

/// A reply the SMTP client made up itself about a session with `peer`
/// (STARTTLS not offered, a malformed reply, a message over the server's
/// SIZE...): the client's code and text, marked as tern's and naming the
/// server. Timeouts and lost connections go through [`timeout`] and
/// [`connection_lost`].
pub fn smtp_client(origin: Origin, peer: &str, code: u16, status: Status, text: &str) -> Reason {
    Reason::new(origin, code, status, format!("{text} (server {peer})"))
}

/// A webhook refused the message for good: an HTTP 4xx other than 408
/// and 429 (the request is wrong for it: bad topic, bad token, too large).
/// `http` is the status, `detail` a short excerpt of its answer.
pub fn webhook_refused(url: &str, http: u16, detail: &str) -> Reason {
    Reason::new(
        Origin::Webhook {
            url: url.to_string(),
        },
        550,
        Status::new(5, 0, 0),
        http_words(http, detail),
    )
}

/// A webhook answered a status worth retrying: 5xx, 408, 429, or a
/// redirect (not followed: the URL in `routes` should be fixed).
pub fn webhook_unavailable(url: &str, http: u16, detail: &str) -> Reason {
    Reason::new(
        Origin::Webhook {
            url: url.to_string(),
        },
        451,
        Status::new(4, 0, 0),
        http_words(http, detail),
    )
}

/// A webhook's answer that is not HTTP as tern reads it (malformed, over
/// the size limit, cut short); `why` in words.
pub fn webhook_bad_response(peer: &str, why: &str) -> Reason {
    Reason::new(
        Origin::Protocol,
        451,
        Status::new(4, 5, 0),
        format!("bad HTTP response from {peer}: {why}"),
    )
}

fn http_words(http: u16, detail: &str) -> String {
    if detail.is_empty() {
        format!("HTTP status {http}")
    } else {
        format!("HTTP status {http}: {detail}")
    }
}

/// Local delivery: no such user or mailbox (a sendmail drop to an unknown
/// local address).
pub fn local_unknown_user(address: &str) -> Reason {
    Reason::new(
        Origin::Local,
        550,
        Status::new(5, 1, 1),
        format!("no such user here: {address}"),
    )
}

/// Local delivery: the local part cannot name a mailbox.
pub fn local_bad_mailbox_name(address: &str) -> Reason {
    Reason::new(
        Origin::Local,
        550,
        Status::new(5, 1, 3),
        format!("{address} cannot name a local mailbox"),
    )
}

/// Local delivery: the mailbox file is locked by another program.
pub fn local_mailbox_locked(mailbox: &str) -> Reason {
    Reason::new(
        Origin::Local,
        451,
        Status::new(4, 2, 0),
        format!("mailbox {mailbox} is locked"),
    )
}

/// Local delivery: the file system or the user's quota is full.
pub fn local_mailbox_full(mailbox: &str) -> Reason {
    Reason::new(
        Origin::Local,
        452,
        Status::new(4, 2, 2),
        format!("mailbox {mailbox} is full (no space left)"),
    )
}

/// Local delivery: writing the mailbox failed; `why` is the system's words.
pub fn local_write_failed(mailbox: &str, why: &str) -> Reason {
    Reason::new(
        Origin::Local,
        451,
        Status::new(4, 3, 0),
        format!("cannot write to mailbox {mailbox}: {why}"),
    )
}

/// An I/O error in the system's words ("connection refused"), without the
/// "(os error 111)" Rust appends.
pub fn io_words(e: &std::io::Error) -> String {
    let text = e.to_string();
    let words = match text.rsplit_once(" (os error ") {
        Some((words, _)) => words,
        None => text.as_str(),
    };
    let mut chars = words.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_parse_and_print() {
        assert_eq!(Status::parse("5.1.10"), Some(Status::new(5, 1, 10)));
        assert_eq!(Status::new(4, 4, 7).to_string(), "4.4.7");
        for bad in ["", "5.1", "3.1.1", "5.1.1.1", "5.1000.1", "5.x.1", "+5.1.1"] {
            assert_eq!(Status::parse(bad), None, "{bad}");
        }
        assert_eq!(Status::generic(554), Status::new(5, 0, 0));
        assert_eq!(Status::generic(421), Status::new(4, 0, 0));
    }

    #[test]
    fn remote_and_own_reasons_print_differently() {
        let r = Reason::remote(
            "mx.example[192.0.2.1]:25",
            550,
            Status::parse("5.1.1"),
            "no such\r\nuser",
        );
        assert_eq!(
            r.to_string(),
            "mx.example[192.0.2.1]:25 said: 550 5.1.1 no such  user"
        );
        assert_eq!(r.origin.relay(), Some("mx.example[192.0.2.1]:25"));
        let own = connect_failed("192.0.2.1:25", "connection refused");
        assert_eq!(
            own.to_string(),
            "451 4.4.1 cannot connect to 192.0.2.1:25: connection refused"
        );
        assert!(matches!(
            Outcome::from_reason(own),
            Outcome::Deferred(Reason {
                origin: Origin::Connect,
                ..
            })
        ));
        assert!(matches!(
            Outcome::from_reason(dns_null_mx("x.test")),
            Outcome::Failed(_)
        ));
    }

    #[test]
    fn origin_names_round_trip() {
        for o in [
            Origin::Dns,
            Origin::Connect,
            Origin::Tls,
            Origin::Timeout,
            Origin::Protocol,
            Origin::Local,
            Origin::Queue,
        ] {
            assert_eq!(Origin::from_name(o.name()), Some(o));
        }
        assert_eq!(Origin::from_name("remote"), None);
    }

    #[test]
    fn expiry_is_permanent_and_names_the_last_error() {
        let last = dns_temporary("x.test", "SERVFAIL from 127.0.0.1:53");
        let r = expired("5d", Some(&last));
        assert!(r.is_permanent());
        assert_eq!(r.status, Status::new(5, 4, 7));
        assert!(r.text.contains("SERVFAIL"), "{r}");
    }

    fn client_reply(code: u16, text: &str, own: Option<Own>) -> ServerReply {
        ServerReply {
            code,
            raw: text.to_string(),
            own,
        }
    }

    #[test]
    fn client_replies_keep_who_said_them() {
        let peer = "mx.example[192.0.2.1]:25";
        let said = from_client(&client_reply(535, "5.7.8 bad credentials", None), peer);
        assert_eq!(
            said.to_string(),
            "mx.example[192.0.2.1]:25 said: 535 5.7.8 bad credentials"
        );
        let plain = from_client(&client_reply(554, "go away", None), peer);
        assert_eq!(
            (plain.status, plain.text.as_str()),
            (Status::new(5, 0, 0), "go away")
        );
        let own = |code, text, own| from_client(&client_reply(code, text, Some(own)), peer);
        let t = own(
            451,
            "4.4.2 timeout waiting for the greeting",
            Own::Timeout("the greeting"),
        );
        assert_eq!(t.origin, Origin::Timeout);
        assert_eq!(
            t.to_string(),
            "451 4.4.2 timeout waiting for the greeting from mx.example[192.0.2.1]:25"
        );
        let lost = own(451, "4.4.2 connection lost", Own::ConnectionLost);
        assert_eq!(
            lost.to_string(),
            "451 4.4.2 connection to mx.example[192.0.2.1]:25 lost"
        );
        let tls = own(454, "4.7.0 TLS required but STARTTLS not offered", Own::Tls);
        assert_eq!(tls.origin, Origin::Tls);
        assert_eq!(
            tls.to_string(),
            "454 4.7.0 TLS required but STARTTLS not offered (server mx.example[192.0.2.1]:25)"
        );
        let big = own(552, "5.3.4 message size exceeds", Own::Client);
        assert_eq!((&big.origin, big.code), (&Origin::Protocol, 552));
        for r in [t, lost, tls, big] {
            assert!(!r.to_string().contains("said:"), "{r}");
        }
    }

    #[test]
    fn io_errors_in_words() {
        let e = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(io_words(&e), "connection refused");
    }
}
