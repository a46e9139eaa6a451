//! Delivery status notifications (bounces and delay warnings).
//!
//! When a recipient fails permanently, or the queue gives up on it, the
//! envelope sender gets one report. The report is an ordinary message that the
//! caller submits through the spool like any other, with the null sender `<>`
//! so that a bounce can never bounce (SPEC "Retry and bounce").
//!
//! Rules followed:
//! - RFC 6522 (was RFC 3462): `multipart/report; report-type=delivery-status`
//!   with three parts: human-readable text, machine-readable status, and the
//!   original message's headers (`text/rfc822-headers`, §4).
//! - RFC 3464 §2.2 per-message fields (`Reporting-MTA`, `Arrival-Date`) and
//!   §2.3 per-recipient fields (`Final-Recipient`, `Action`, `Status`,
//!   `Remote-MTA`, `Diagnostic-Code`), each group separated by a blank line.
//! - RFC 3463 status codes `class.subject.detail`; an invalid code is replaced
//!   by `5.0.0` (failed) or `4.0.0` (delayed).
//! - RFC 3834 §5: `Auto-Submitted: auto-replied`.
//! - RFC 5322 §3.3 date format, produced by [`rfc5322_date`].
//!
//! Invariants:
//! - The output is pure bytes with CRLF line endings; no IO, no clock, no RNG:
//!   dates, message ID and MIME boundary come from the caller.
//! - Every interpolated value is stripped of CR, LF and other control
//!   characters and capped at [`MAX_FIELD_VALUE`] bytes, so no value can add a
//!   header line or a MIME boundary line.
//! - The returned original headers are capped at [`MAX_RETURNED_HEADERS`],
//!   cut at a line boundary; lines that would look like our boundary are
//!   dropped.
//!
//! - RFC 6533 §3: a UTF-8 recipient address is written `utf-8; ` with
//!   `\x{HEX}` escapes, so the `message/delivery-status` part stays ASCII.
//!
//! - RFC 3461 DSN parameters: `Original-Envelope-Id` (ENVID) per message,
//!   `Original-Recipient` (ORCPT) per recipient; `RET=FULL` returns the
//!   whole message as `message/rfc822` up to [`MAX_RETURNED_MESSAGE`]
//!   (beyond it, or when it holds our boundary, headers only, and the text
//!   says so); success reports (`Action: delivered`/`relayed`, 2.0.0).
//!
//! Not supported: RFC 6533 `message/global-delivery-status` and
//! `message/global-headers` (UTF-8 header fields of the original are
//! returned as 8-bit `text/rfc822-headers`).

/// Most bytes of the original header block copied into the report.
pub const MAX_RETURNED_HEADERS: usize = 64 * 1024;
/// Longest MIME boundary (RFC 2046 §5.1.1).
pub const MAX_BOUNDARY_LEN: usize = 70;
/// Most bytes of one interpolated value (keeps every line under the RFC 5322
/// limit of 998 octets).
pub const MAX_FIELD_VALUE: usize = 900;
/// Most bytes of the original message returned whole (`RET=FULL`).
pub const MAX_RETURNED_MESSAGE: usize = 1024 * 1024;

/// What of the original message a report carries (RFC 3461 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Returned<'a> {
    /// `RET=HDRS`, no `RET`, or a success report: the header section.
    Headers,
    /// `RET=FULL`: the whole message, at most [`MAX_RETURNED_MESSAGE`].
    Full(&'a [u8]),
    /// `RET=FULL`, but the message is larger: the header section, and
    /// the text says why.
    HeadersTooLarge,
}

/// What happened to a recipient (RFC 3464 §2.3.3 `Action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnAction {
    /// Given up: permanent failure or queue lifetime exceeded.
    Failed,
    /// Still being retried; this is a warning only.
    Delayed,
    /// Delivered to its mailbox (`NOTIFY=SUCCESS`).
    Delivered,
    /// Handed to a server that does not offer DSN (`NOTIFY=SUCCESS`).
    Relayed,
}

impl DsnAction {
    fn field_value(self) -> &'static str {
        match self {
            DsnAction::Failed => "failed",
            DsnAction::Delayed => "delayed",
            DsnAction::Delivered => "delivered",
            DsnAction::Relayed => "relayed",
        }
    }

    fn default_status(self) -> &'static str {
        match self {
            DsnAction::Failed => "5.0.0",
            DsnAction::Delayed => "4.0.0",
            DsnAction::Delivered | DsnAction::Relayed => "2.0.0",
        }
    }
}

/// One recipient to report on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRecipient {
    /// The envelope recipient, without angle brackets.
    pub address: String,
    /// RFC 3463 enhanced status code, e.g. `5.1.1`.
    pub status: String,
    pub action: DsnAction,
    /// Host name of the server that gave the answer, when there was one.
    pub remote_mta: Option<String>,
    /// `type; text`, e.g. `smtp; 550 5.1.1 no such user`. A value without a
    /// type gets `smtp; ` in front. Only for a reply a server gave.
    pub diagnostic: Option<String>,
    /// The sentence for the human-readable part ("cannot connect to ...:
    /// connection refused"); without one, the diagnostic or the status.
    pub explanation: Option<String>,
    /// `ORCPT` as given (RFC 3461 §4.2): (address type, address), for
    /// `Original-Recipient`.
    pub original_recipient: Option<(String, String)>,
}

/// Everything a report is built from; all strings are preformatted.
#[derive(Debug, Clone, Copy)]
pub struct BounceInput<'a> {
    /// Our host name.
    pub reporting_mta: &'a str,
    pub queue_id: &'a str,
    /// Envelope sender of the original message; the report goes there.
    pub original_sender: &'a str,
    /// RFC 5322 date the original message was received.
    pub arrival_date: &'a str,
    /// RFC 5322 date for the report's `Date:`.
    pub now_date: &'a str,
    /// `<...>` generated by the caller.
    pub message_id: &'a str,
    /// MIME boundary, must not occur in the original headers.
    pub boundary: &'a str,
    pub recipients: &'a [FailedRecipient],
    /// Header block of the original message, CRLF lines.
    pub original_headers: &'a [u8],
    /// `ENVID` of the original message (RFC 3461 §4.4), decoded.
    pub envid: Option<&'a str>,
    /// Whether the whole message goes back (`RET=FULL`).
    pub returned: Returned<'a>,
}

/// Builds the complete report message, CRLF line endings, ready for the spool.
pub fn build_bounce(input: &BounceInput) -> Vec<u8> {
    let mta = clean(input.reporting_mta);
    let boundary = mime_boundary(input.boundary);
    let all_delayed = !input.recipients.is_empty()
        && input
            .recipients
            .iter()
            .all(|r| r.action == DsnAction::Delayed);
    let all_success = !input.recipients.is_empty()
        && input
            .recipients
            .iter()
            .all(|r| matches!(r.action, DsnAction::Delivered | DsnAction::Relayed));
    let subject = if all_delayed {
        "Delayed Mail (still being retried)"
    } else if all_success {
        "Successful Mail Delivery Report"
    } else {
        "Undelivered Mail Returned to Sender"
    };
    // The whole message goes back only when it cannot end our MIME part.
    let marker = format!("--{boundary}");
    let returned = match input.returned {
        Returned::Full(m) if m.len() > MAX_RETURNED_MESSAGE => Returned::HeadersTooLarge,
        Returned::Full(m) if m.windows(marker.len()).any(|w| w == marker.as_bytes()) => {
            Returned::Headers
        }
        r => r,
    };

    let mut out = Vec::with_capacity(4096 + input.original_headers.len().min(MAX_RETURNED_HEADERS));
    let line = |out: &mut Vec<u8>, text: &str| {
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"\r\n");
    };

    // Top-level header.
    line(
        &mut out,
        &format!("From: MAILER-DAEMON@{mta} (Mail Delivery System)"),
    );
    line(&mut out, &format!("To: <{}>", clean(input.original_sender)));
    line(&mut out, &format!("Subject: {subject}"));
    line(&mut out, &format!("Date: {}", clean(input.now_date)));
    line(
        &mut out,
        &format!("Message-ID: {}", clean(input.message_id)),
    );
    line(&mut out, "Auto-Submitted: auto-replied");
    line(&mut out, "MIME-Version: 1.0");
    line(
        &mut out,
        "Content-Type: multipart/report; report-type=delivery-status;",
    );
    line(&mut out, &format!("\tboundary=\"{boundary}\""));
    line(&mut out, "");
    line(&mut out, "This is a MIME-encapsulated message.");
    line(&mut out, "");

    // Part 1: text for people.
    line(&mut out, &format!("--{boundary}"));
    line(&mut out, "Content-Type: text/plain; charset=utf-8");
    line(&mut out, "Content-Description: Notification");
    line(&mut out, "");
    human_text(&mut out, input, &mta, returned);
    line(&mut out, "");

    // Part 2: RFC 3464 status.
    line(&mut out, &format!("--{boundary}"));
    line(&mut out, "Content-Type: message/delivery-status");
    line(&mut out, "Content-Description: Delivery report");
    line(&mut out, "");
    if let Some(envid) = input.envid.map(clean).filter(|e| !e.is_empty()) {
        line(&mut out, &format!("Original-Envelope-Id: {envid}"));
    }
    line(&mut out, &format!("Reporting-MTA: dns; {mta}"));
    line(
        &mut out,
        &format!("X-Tern-Queue-ID: {}", clean(input.queue_id)),
    );
    line(
        &mut out,
        &format!("Arrival-Date: {}", clean(input.arrival_date)),
    );
    for rcpt in input.recipients {
        line(&mut out, "");
        if let Some((kind, addr)) = &rcpt.original_recipient {
            line(
                &mut out,
                &format!("Original-Recipient: {};{}", clean(kind), clean(addr)),
            );
        }
        line(
            &mut out,
            &format!("Final-Recipient: {}", address_field(&clean(&rcpt.address))),
        );
        line(&mut out, &format!("Action: {}", rcpt.action.field_value()));
        line(&mut out, &format!("Status: {}", status_of(rcpt)));
        if let Some(host) = rcpt
            .remote_mta
            .as_deref()
            .map(clean)
            .filter(|h| !h.is_empty())
        {
            line(&mut out, &format!("Remote-MTA: dns; {host}"));
        }
        if let Some(diag) = diagnostic_of(rcpt) {
            line(&mut out, &format!("Diagnostic-Code: {diag}"));
        }
    }
    line(&mut out, "");

    // Part 3: the original message (RET=FULL) or its headers.
    if let Returned::Full(message) = returned {
        line(&mut out, &format!("--{boundary}"));
        line(&mut out, "Content-Type: message/rfc822");
        line(&mut out, "Content-Description: Undelivered Message");
        if !message.is_ascii() {
            line(&mut out, "Content-Transfer-Encoding: 8bit");
        }
        line(&mut out, "");
        out.extend_from_slice(message);
        if !message.ends_with(b"\n") {
            line(&mut out, "");
        }
        line(&mut out, "");
        line(&mut out, &format!("--{boundary}--"));
        return out;
    }
    let headers = returned_headers(input.original_headers, &boundary);
    line(&mut out, &format!("--{boundary}"));
    line(&mut out, "Content-Type: text/rfc822-headers");
    line(&mut out, "Content-Description: Undelivered Message Headers");
    if !headers.is_ascii() {
        line(&mut out, "Content-Transfer-Encoding: 8bit");
    }
    line(&mut out, "");
    out.extend_from_slice(&headers);
    line(&mut out, "");
    line(&mut out, &format!("--{boundary}--"));
    out
}

/// RFC 2046 §5.1.1: keeps only `bchars` other than space, at most
/// [`MAX_BOUNDARY_LEN`]; a fixed fallback if nothing is left.
fn mime_boundary(requested: &str) -> String {
    let boundary: String = requested
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "'()+_,-./:=?".contains(*c))
        .take(MAX_BOUNDARY_LEN)
        .collect();
    if boundary.is_empty() {
        "tern-report-boundary".to_string()
    } else {
        boundary
    }
}

/// The human-readable first part.
fn human_text(out: &mut Vec<u8>, input: &BounceInput, mta: &str, returned: Returned) {
    let mut text = format!("This is the mail system at host {mta}.\r\n");
    let sections = [
        (
            DsnAction::Failed,
            "Your message could not be delivered to the following recipients.\r\n\
             This is a permanent error; delivery will not be tried again.",
        ),
        (
            DsnAction::Delayed,
            "Your message has not been delivered yet to the following recipients.\r\n\
             Delivery is still being retried; there is no need to send it again.",
        ),
        (
            DsnAction::Delivered,
            "Your message was delivered to the following recipients.",
        ),
        (
            DsnAction::Relayed,
            "Your message was handed on to the following recipients' servers,\r\n\
             which do not send delivery notifications.",
        ),
    ];
    for (action, intro) in sections {
        let mut listed = input
            .recipients
            .iter()
            .filter(|r| r.action == action)
            .peekable();
        if listed.peek().is_none() {
            continue;
        }
        text.push_str("\r\n");
        text.push_str(intro);
        text.push_str("\r\n\r\n");
        for rcpt in listed {
            let reason = rcpt
                .explanation
                .as_deref()
                .map(clean)
                .filter(|e| !e.trim().is_empty())
                .or_else(|| diagnostic_of(rcpt))
                .unwrap_or_else(|| format!("status {}", status_of(rcpt)));
            text.push_str(&format!("<{}>: {reason}\r\n", clean(&rcpt.address)));
            if let Some(host) = rcpt
                .remote_mta
                .as_deref()
                .map(clean)
                .filter(|h| !h.is_empty())
            {
                text.push_str(&format!("    (reported by {host})\r\n"));
            }
        }
    }
    let attached = match returned {
        Returned::Full(_) => "Your message is attached.".to_string(),
        Returned::Headers => "The headers of your message are attached.".to_string(),
        Returned::HeadersTooLarge => format!(
            "Your message is larger than {} bytes; only its headers are attached.",
            MAX_RETURNED_MESSAGE
        ),
    };
    text.push_str(&format!(
        "\r\nQueue ID: {}\r\n{attached}\r\n",
        clean(input.queue_id)
    ));
    out.extend_from_slice(text.as_bytes());
}

fn status_of(rcpt: &FailedRecipient) -> String {
    let status = clean(&rcpt.status);
    if is_valid_status(&status) {
        status
    } else {
        rcpt.action.default_status().to_string()
    }
}

/// RFC 3463 §2: class (2, 4 or 5) "." subject (1-3 digits) "." detail (1-3 digits).
fn is_valid_status(status: &str) -> bool {
    let mut fields = status.split('.');
    let digits = |s: Option<&str>| {
        s.is_some_and(|s| (1..=3).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()))
    };
    matches!(fields.next(), Some("2" | "4" | "5"))
        && digits(fields.next())
        && digits(fields.next())
        && fields.next().is_none()
}

/// `Diagnostic-Code` value with its type (RFC 3464 §2.3.6).
fn diagnostic_of(rcpt: &FailedRecipient) -> Option<String> {
    let diag = clean(rcpt.diagnostic.as_deref()?);
    let diag = diag.trim();
    if diag.is_empty() {
        return None;
    }
    let has_type = diag.split_once(';').is_some_and(|(kind, _)| {
        !kind.is_empty() && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    Some(if has_type {
        diag.to_string()
    } else {
        format!("smtp; {diag}")
    })
}

/// An address-type and address (RFC 3464 §2.3.2): `rfc822; ADDRESS`, or
/// for a UTF-8 address (SMTPUTF8) RFC 6533 §3's `utf-8; ` with its
/// `utf-8-addr-xtext`, so the report itself stays ASCII.
fn address_field(address: &str) -> String {
    if address.is_ascii() {
        return format!("rfc822; {address}");
    }
    let mut out = String::from("utf-8; ");
    for c in address.chars() {
        // QCHAR: printable ASCII but `+`, `=` and `\`.
        if c.is_ascii_graphic() && !matches!(c, '+' | '=' | '\\') {
            out.push(c);
        } else {
            out.push_str(&format!("\\x{{{:X}}}", c as u32));
        }
    }
    out
}

/// Removes CR, LF and other control characters (tab becomes a space) and caps
/// the length at a character boundary.
fn clean(value: &str) -> String {
    let mut out = String::with_capacity(value.len().min(MAX_FIELD_VALUE));
    for c in value.chars() {
        let c = if c == '\t' { ' ' } else { c };
        if c.is_control() {
            continue;
        }
        if out.len() + c.len_utf8() > MAX_FIELD_VALUE {
            break;
        }
        out.push(c);
    }
    out
}

/// The original header lines with CRLF endings, without the terminating
/// empty line, capped at [`MAX_RETURNED_HEADERS`] on a line boundary.
fn returned_headers(original: &[u8], boundary: &str) -> Vec<u8> {
    let marker = format!("--{boundary}");
    let mut out = Vec::with_capacity(original.len().min(MAX_RETURNED_HEADERS));
    for raw in original.split(|&b| b == b'\n') {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.is_empty() {
            // End of the header block (or the trailing piece after the last LF).
            break;
        }
        if line.starts_with(marker.as_bytes()) {
            continue;
        }
        if out.len() + line.len() + 2 > MAX_RETURNED_HEADERS {
            break;
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Formats a time as an RFC 5322 §3.3 date, e.g.
/// `Sat, 28 Nov 2026 01:55:10 +0000`. `utc_offset_secs` is the local
/// offset east of UTC; it is clamped to ±99:59.
pub fn rfc5322_date(unix_secs: i64, utc_offset_secs: i32) -> String {
    let mut s = String::with_capacity(32);
    write_rfc5322_date(&mut s, unix_secs, utc_offset_secs);
    s
}

/// [`rfc5322_date`] into a caller's buffer (`Thu, 01 Jan 1970 00:00:00
/// +0000` is 31 octets; a year past 9999 only makes it longer).
pub fn write_rfc5322_date(out: &mut impl std::fmt::Write, unix_secs: i64, utc_offset_secs: i32) {
    const MAX_OFFSET: i32 = 99 * 3600 + 59 * 60;
    let offset = utc_offset_secs.clamp(-MAX_OFFSET, MAX_OFFSET);
    let local = unix_secs.saturating_add(i64::from(offset));
    let days = local.div_euclid(86_400);
    let secs = local.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday.
    // In range: both indexes are reduced modulo the array's length.
    #[allow(clippy::indexing_slicing)]
    let (weekday, month_name) = (
        WEEKDAYS[days.rem_euclid(7) as usize % 7],
        MONTHS[(month as usize).saturating_sub(1) % 12],
    );
    let sign = if offset < 0 { '-' } else { '+' };
    let abs = offset.unsigned_abs();
    let _ = write!(
        out,
        "{weekday}, {day:02} {month_name} {year:04} {:02}:{:02}:{:02} {sign}{:02}{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        abs / 3600,
        abs / 60 % 60,
    );
}

const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Proleptic Gregorian (year, month 1-12, day 1-31) for days since 1970-01-01.
/// Counts in 400-year eras starting on March 1st, so the leap day is the last
/// day of the shifted year.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097); // 0..=146096
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153; // 0 = March
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The header block of a message: bytes up to and including the first empty
/// line (CRLF CRLF or LF LF); the whole message if there is none.
pub fn header_block(message: &[u8]) -> &[u8] {
    let mut start = 0;
    while let Some(len) = message
        .get(start..)
        .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
    {
        let end = start + len + 1;
        let line = message.get(start..end).unwrap_or_default();
        if line == b"\n" || line == b"\r\n" {
            return message.get(..end).unwrap_or(message);
        }
        start = end;
    }
    message
}

#[cfg(test)]
#[path = "bounce_dsn_tests.rs"]
mod dsn_tests;

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)]
mod tests {
    use super::*;

    pub(super) fn rcpt(
        address: &str,
        status: &str,
        action: DsnAction,
        remote: Option<&str>,
        diag: Option<&str>,
    ) -> FailedRecipient {
        FailedRecipient {
            address: address.to_string(),
            status: status.to_string(),
            action,
            remote_mta: remote.map(str::to_string),
            diagnostic: diag.map(str::to_string),
            explanation: None,
            original_recipient: None,
        }
    }

    #[test]
    fn utf8_recipient_is_an_rfc6533_xtext() {
        assert_eq!(address_field("a@b.example"), "rfc822; a@b.example");
        assert_eq!(
            address_field("jöe+x=y@b.example"),
            "utf-8; j\\x{F6}e\\x{2B}x\\x{3D}y@b.example"
        );
        assert_eq!(
            address_field("用户@x.example"),
            "utf-8; \\x{7528}\\x{6237}@x.example"
        );
    }

    #[test]
    fn own_decisions_explained_without_a_diagnostic_code() {
        let mut r = rcpt("a@x.test", "5.4.7", DsnAction::Failed, None, None);
        r.explanation = Some("554 5.4.7 message expired after 2d in the queue".into());
        let recipients = [r];
        let out = String::from_utf8(build_bounce(&input(&recipients, b""))).unwrap();
        assert!(
            out.contains("<a@x.test>: 554 5.4.7 message expired after 2d in the queue\r\n"),
            "{out}"
        );
        assert!(out.contains("Status: 5.4.7\r\n"), "{out}");
        assert!(!out.contains("Diagnostic-Code"), "{out}");
        assert!(!out.contains("Remote-MTA"), "{out}");
    }

    pub(super) fn input<'a>(
        recipients: &'a [FailedRecipient],
        headers: &'a [u8],
    ) -> BounceInput<'a> {
        BounceInput {
            reporting_mta: "mx.example.net",
            queue_id: "Q1234",
            original_sender: "alice@example.org",
            arrival_date: "Fri, 27 Nov 2026 10:00:00 +0000",
            now_date: "Sat, 28 Nov 2026 01:55:10 +0000",
            message_id: "<bounce.Q1234@mx.example.net>",
            boundary: "Q1234.1795830910/mx.example.net",
            recipients,
            original_headers: headers,
            envid: None,
            returned: Returned::Headers,
        }
    }

    pub(super) const HEADERS: &[u8] =
        b"From: alice@example.org\r\nTo: bob@example.com\r\nSubject: hello\r\nMessage-ID: <m1@example.org>\r\n\r\n";

    /// Splits a message at its first empty line into (header lines, body).
    fn split_message(msg: &str) -> (Vec<&str>, &str) {
        let (head, body) = msg.split_once("\r\n\r\n").expect("header/body separator");
        (head.split("\r\n").collect(), body)
    }

    /// Returns the body parts of a multipart body (RFC 2046 §5.1.1): the
    /// text between delimiter lines, checking the close delimiter.
    fn mime_parts(body: &str, boundary: &str) -> Vec<String> {
        let body = format!("\r\n{body}");
        let pieces: Vec<&str> = body.split(&format!("\r\n--{boundary}")).collect();
        // First piece is the preamble, last is the close delimiter's "--".
        assert_eq!(pieces.last().copied(), Some("--\r\n"), "close delimiter");
        pieces[1..pieces.len() - 1]
            .iter()
            .map(|p| {
                p.strip_prefix("\r\n")
                    .expect("CRLF after delimiter")
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn bounce_is_well_formed_multipart_report() {
        let recipients = [
            rcpt(
                "bob@example.com",
                "5.1.1",
                DsnAction::Failed,
                Some("mx1.example.com"),
                Some("smtp; 550 5.1.1 no such user"),
            ),
            rcpt("carol@example.com", "4.4.1", DsnAction::Delayed, None, None),
        ];
        let msg = build_bounce(&input(&recipients, HEADERS));
        let text = String::from_utf8(msg.clone()).expect("utf-8");
        // Every line ends in CRLF, no bare LF or CR.
        assert!(text.ends_with("\r\n"));
        assert_eq!(text.matches('\n').count(), text.matches("\r\n").count());
        assert_eq!(text.matches('\r').count(), text.matches("\r\n").count());

        let (head, body) = split_message(&text);
        assert_eq!(
            head[0],
            "From: MAILER-DAEMON@mx.example.net (Mail Delivery System)"
        );
        assert!(head.contains(&"To: <alice@example.org>"));
        assert!(head.contains(&"Subject: Undelivered Mail Returned to Sender"));
        assert!(head.contains(&"Date: Sat, 28 Nov 2026 01:55:10 +0000"));
        assert!(head.contains(&"Message-ID: <bounce.Q1234@mx.example.net>"));
        assert!(head.contains(&"Auto-Submitted: auto-replied"));
        assert!(head.contains(&"MIME-Version: 1.0"));
        assert!(head.contains(&"Content-Type: multipart/report; report-type=delivery-status;"));
        assert!(head.contains(&"\tboundary=\"Q1234.1795830910/mx.example.net\""));

        let parts = mime_parts(body, "Q1234.1795830910/mx.example.net");
        assert_eq!(parts.len(), 3);

        let (h1, b1) = split_message(&parts[0]);
        assert_eq!(
            h1,
            [
                "Content-Type: text/plain; charset=utf-8",
                "Content-Description: Notification"
            ]
        );
        assert!(b1.contains("mx.example.net"));
        assert!(b1.contains(
            "<bob@example.com>: smtp; 550 5.1.1 no such user\r\n    (reported by mx1.example.com)"
        ));
        assert!(b1.contains("<carol@example.com>: status 4.4.1"));
        assert!(b1.contains("Queue ID: Q1234"));

        let (h2, b2) = split_message(&parts[1]);
        assert_eq!(h2[0], "Content-Type: message/delivery-status");
        let groups: Vec<&str> = b2.trim_end().split("\r\n\r\n").collect();
        assert_eq!(
            groups,
            [
                "Reporting-MTA: dns; mx.example.net\r\nX-Tern-Queue-ID: Q1234\r\nArrival-Date: Fri, 27 Nov 2026 10:00:00 +0000",
                "Final-Recipient: rfc822; bob@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx1.example.com\r\nDiagnostic-Code: smtp; 550 5.1.1 no such user",
                "Final-Recipient: rfc822; carol@example.com\r\nAction: delayed\r\nStatus: 4.4.1",
            ]
        );

        let (h3, b3) = split_message(&parts[2]);
        assert_eq!(
            h3,
            [
                "Content-Type: text/rfc822-headers",
                "Content-Description: Undelivered Message Headers"
            ]
        );
        assert_eq!(
            b3,
            "From: alice@example.org\r\nTo: bob@example.com\r\nSubject: hello\r\nMessage-ID: <m1@example.org>\r\n"
        );
    }

    #[test]
    fn all_delayed_changes_subject() {
        let recipients = [rcpt(
            "bob@example.com",
            "4.4.7",
            DsnAction::Delayed,
            None,
            None,
        )];
        let text = String::from_utf8(build_bounce(&input(&recipients, HEADERS))).expect("utf-8");
        assert!(text.contains("\r\nSubject: Delayed Mail (still being retried)\r\n"));
        assert!(text.contains("still being retried"));
        assert!(!text.contains("permanent error"));
    }

    #[test]
    fn crlf_injection_is_stripped() {
        let recipients = [rcpt(
            "bob@example.com\r\nBcc: victim@example.com",
            "5.1.1\r\nX-Evil: 1",
            DsnAction::Failed,
            Some("mx\r\nX-Evil: 2"),
            Some("550 no\r\n--Q1234.1795830910/mx.example.net\r\nContent-Type: text/html"),
        )];
        let mut inp = input(&recipients, HEADERS);
        inp.original_sender = "alice@example.org\r\nBcc: everyone@example.com";
        inp.message_id = "<x@y>\nX-Evil: 3";
        let text = String::from_utf8(build_bounce(&inp)).expect("utf-8");
        for line in text.split("\r\n") {
            assert!(!line.starts_with("Bcc:"), "{line}");
            assert!(!line.starts_with("X-Evil:"), "{line}");
            assert!(!line.starts_with("Content-Type: text/html"), "{line}");
        }
        assert!(text.contains("To: <alice@example.orgBcc: everyone@example.com>\r\n"));
        // Invalid status replaced by the default for the action.
        assert!(text.contains("\r\nStatus: 5.0.0\r\n"));
        // Untyped diagnostic gets the smtp type.
        assert!(text.contains("\r\nDiagnostic-Code: smtp; 550 no--Q1234"));
        // Exactly the three parts plus close delimiter.
        assert_eq!(
            text.matches("\r\n--Q1234.1795830910/mx.example.net\r\n")
                .count(),
            3
        );
    }

    #[test]
    fn original_headers_are_capped_at_a_line_boundary() {
        let mut headers = Vec::new();
        let line = format!("X-Filler: {}\r\n", "a".repeat(88)); // 100 bytes
        while headers.len() < MAX_RETURNED_HEADERS * 2 {
            headers.extend_from_slice(line.as_bytes());
        }
        headers.extend_from_slice(b"\r\nbody\r\n");
        let recipients = [rcpt(
            "bob@example.com",
            "5.1.1",
            DsnAction::Failed,
            None,
            None,
        )];
        let text = String::from_utf8(build_bounce(&input(&recipients, &headers))).expect("utf-8");
        let start = text
            .find("Undelivered Message Headers\r\n\r\n")
            .expect("part 3")
            + 31;
        let end = text.rfind("\r\n--Q1234").expect("close");
        let returned = &text[start..end];
        assert!(returned.len() <= MAX_RETURNED_HEADERS);
        assert!(returned.len() > MAX_RETURNED_HEADERS - 100);
        assert!(returned
            .split_terminator("\r\n")
            .all(|l| l == line.trim_end()));
    }

    #[test]
    fn lf_headers_are_normalized_and_boundary_lookalikes_dropped() {
        let headers = b"Subject: x\n--B\nTo: y\n\nbody";
        let recipients = [rcpt(
            "bob@example.com",
            "5.1.1",
            DsnAction::Failed,
            None,
            None,
        )];
        let mut inp = input(&recipients, headers);
        inp.boundary = "B";
        let text = String::from_utf8(build_bounce(&inp)).expect("utf-8");
        assert!(text
            .ends_with("Undelivered Message Headers\r\n\r\nSubject: x\r\nTo: y\r\n\r\n--B--\r\n"));
    }

    #[test]
    fn eight_bit_headers_are_labelled() {
        let headers = "Subject: caf\u{e9}\r\n\r\n".as_bytes();
        let recipients = [rcpt(
            "bob@example.com",
            "5.1.1",
            DsnAction::Failed,
            None,
            None,
        )];
        let text = String::from_utf8(build_bounce(&input(&recipients, headers))).expect("utf-8");
        assert!(text.contains("Content-Transfer-Encoding: 8bit\r\n\r\nSubject: caf\u{e9}\r\n"));
    }

    #[test]
    fn boundary_is_sanitized() {
        assert_eq!(mime_boundary("a\"b c\r\nd"), "abcd");
        assert_eq!(mime_boundary("\"\""), "tern-report-boundary");
        assert_eq!(mime_boundary(&"x".repeat(100)).len(), MAX_BOUNDARY_LEN);
        let recipients = [rcpt(
            "bob@example.com",
            "5.1.1",
            DsnAction::Failed,
            None,
            None,
        )];
        let mut inp = input(&recipients, HEADERS);
        inp.boundary = "\"";
        let text = String::from_utf8(build_bounce(&inp)).expect("utf-8");
        assert!(text.contains("\tboundary=\"tern-report-boundary\"\r\n"));
        assert!(text.ends_with("\r\n--tern-report-boundary--\r\n"));
    }

    #[test]
    fn status_validation() {
        assert!(is_valid_status("5.1.1"));
        assert!(is_valid_status("4.7.123"));
        assert!(is_valid_status("2.0.0"));
        assert!(!is_valid_status("3.1.1"));
        assert!(!is_valid_status("5.1"));
        assert!(!is_valid_status("5.1.1.1"));
        assert!(!is_valid_status("5.1234.1"));
        assert!(!is_valid_status("5.a.1"));
        assert!(!is_valid_status(""));
    }

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(0, 0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_795_830_910, 0),
            "Sat, 28 Nov 2026 01:55:10 +0000"
        );
        assert_eq!(
            rfc5322_date(1_795_830_910, 3600),
            "Sat, 28 Nov 2026 02:55:10 +0100"
        );
        assert_eq!(
            rfc5322_date(1_795_830_910, -(2 * 3600)),
            "Fri, 27 Nov 2026 23:55:10 -0200"
        );
        assert_eq!(
            rfc5322_date(1_795_830_910, 5 * 3600 + 1800),
            "Sat, 28 Nov 2026 07:25:10 +0530"
        );
        assert_eq!(rfc5322_date(-1, 0), "Wed, 31 Dec 1969 23:59:59 +0000");
        assert_eq!(
            rfc5322_date(1_000_000_000, 0),
            "Sun, 09 Sep 2001 01:46:40 +0000"
        );
        assert_eq!(
            rfc5322_date(2_147_483_647, 0),
            "Tue, 19 Jan 2038 03:14:07 +0000"
        );
    }

    #[test]
    fn leap_years() {
        // 2000 is a leap year (divisible by 400).
        assert_eq!(
            rfc5322_date(951_782_400, 0),
            "Tue, 29 Feb 2000 00:00:00 +0000"
        );
        assert_eq!(
            rfc5322_date(951_868_800, 0),
            "Wed, 01 Mar 2000 00:00:00 +0000"
        );
        // 2024 is a leap year.
        assert_eq!(
            rfc5322_date(1_709_164_800, 0),
            "Thu, 29 Feb 2024 00:00:00 +0000"
        );
        assert_eq!(
            rfc5322_date(1_735_603_200, 0),
            "Tue, 31 Dec 2024 00:00:00 +0000"
        );
        // 2100 is not (divisible by 100): Feb 28 is followed by Mar 1.
        assert_eq!(
            rfc5322_date(4_107_456_000, 0),
            "Sun, 28 Feb 2100 00:00:00 +0000"
        );
        assert_eq!(
            rfc5322_date(4_107_542_400, 0),
            "Mon, 01 Mar 2100 00:00:00 +0000"
        );
    }

    #[test]
    fn extreme_inputs_do_not_panic() {
        let _ = rfc5322_date(i64::MAX, i32::MAX);
        let _ = rfc5322_date(i64::MIN, i32::MIN);
        assert!(rfc5322_date(0, 200 * 3600).ends_with("+9959"));
    }

    #[test]
    fn header_block_finds_first_empty_line() {
        assert_eq!(
            header_block(b"A: 1\r\nB: 2\r\n\r\nbody\r\n\r\nmore"),
            b"A: 1\r\nB: 2\r\n\r\n"
        );
        assert_eq!(header_block(b"A: 1\nB: 2\n\nbody\n"), b"A: 1\nB: 2\n\n");
        assert_eq!(header_block(b"A: 1\r\nB: 2\r\n"), b"A: 1\r\nB: 2\r\n");
        assert_eq!(header_block(b"A: 1"), b"A: 1");
        assert_eq!(header_block(b"\r\nbody"), b"\r\n");
        assert_eq!(header_block(b""), b"");
        // A CR in the middle of a line is not an empty line.
        assert_eq!(header_block(b"A: 1\r\r\nB\r\n\r\n"), b"A: 1\r\r\nB\r\n\r\n");
    }
}
