//! RFC 3461 parts of the reports: ENVID, ORCPT, RET=FULL, success.

#![allow(clippy::indexing_slicing, clippy::string_slice)]

use super::tests::{input, rcpt, HEADERS};
use super::*;

fn text(input: &BounceInput) -> String {
    String::from_utf8(build_bounce(input)).unwrap()
}

#[test]
fn envid_and_orcpt_are_reported() {
    let mut r = rcpt("bob@example.com", "5.1.1", DsnAction::Failed, None, None);
    r.original_recipient = Some(("rfc822".into(), "b\r\nob@orig.example".into()));
    let recipients = [r];
    let mut i = input(&recipients, HEADERS);
    i.envid = Some("QQ314159");
    let out = text(&i);
    assert!(
        out.contains(
            "\r\nOriginal-Envelope-Id: QQ314159\r\nReporting-MTA: dns; mx.example.net\r\n"
        ),
        "{out}"
    );
    // Control characters never make a new line.
    assert!(
        out.contains("\r\n\r\nOriginal-Recipient: rfc822;bob@orig.example\r\nFinal-Recipient: rfc822; bob@example.com\r\n"),
        "{out}"
    );
    let plain = text(&input(&recipients[..0], HEADERS));
    assert!(!plain.contains("Original-Envelope-Id"));
}

#[test]
fn ret_full_returns_the_message_up_to_the_bound() {
    let recipients = [rcpt("b@x.test", "5.1.1", DsnAction::Failed, None, None)];
    let message = b"Subject: hi\r\n\r\nthe body line\r\n";
    let mut i = input(&recipients, HEADERS);
    i.returned = Returned::Full(message);
    let out = text(&i);
    assert!(out.contains("Content-Type: message/rfc822\r\n"), "{out}");
    assert!(
        out.contains("\r\n\r\nSubject: hi\r\n\r\nthe body line\r\n\r\n--"),
        "{out}"
    );
    assert!(out.contains("Your message is attached."), "{out}");
    assert!(!out.contains("text/rfc822-headers"), "{out}");
    // Too large: headers only, and said so.
    let big = vec![b'a'; MAX_RETURNED_MESSAGE + 1];
    i.returned = Returned::Full(&big);
    let out = text(&i);
    assert!(out.contains("text/rfc822-headers"), "{out}");
    assert!(out.contains("only its headers are attached"), "{out}");
    assert!(!out.contains("aaaa"), "{out}");
    // A message holding our boundary line is not returned whole.
    let sneaky = format!("Subject: x\r\n\r\n--{}--\r\n", i.boundary);
    i.returned = Returned::Full(sneaky.as_bytes());
    let out = text(&i);
    assert!(!out.contains("message/rfc822"), "{out}");
    assert_eq!(out.matches(&format!("--{}--", i.boundary)).count(), 1);
}

#[test]
fn success_reports() {
    let recipients = [
        rcpt("a@x.test", "", DsnAction::Relayed, None, None),
        rcpt("b@here.test", "", DsnAction::Delivered, None, None),
    ];
    let out = text(&input(&recipients, HEADERS));
    assert!(
        out.contains("Subject: Successful Mail Delivery Report\r\n"),
        "{out}"
    );
    assert!(
        out.contains("Action: relayed\r\nStatus: 2.0.0\r\n"),
        "{out}"
    );
    assert!(
        out.contains("Action: delivered\r\nStatus: 2.0.0\r\n"),
        "{out}"
    );
    assert!(out.contains("<a@x.test>: status 2.0.0"), "{out}");
}
