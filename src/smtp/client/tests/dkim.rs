//! The DKIM-Signature field goes in front of the message, the variant
//! that matches the bytes sent (downgraded or not), counted in SIZE.

use super::*;
use crate::dkim::sign::Signatures;

fn signed_txn() -> Transaction {
    let mut t = txn(&["b@y"]);
    t.eight_bit = true;
    t.dkim = Some(std::rc::Rc::new(Signatures {
        plain: b"DKIM-Signature: plain\r\n".to_vec(),
        seven_bit: Some(b"DKIM-Signature: seven\r\n".to_vec()),
    }));
    t
}

fn body_after_354(exts: &[&str]) -> (String, String) {
    let mut h = Harness::new(cfg());
    h.ready(exts);
    h.start(signed_txn());
    let mail = h.sent();
    h.feed("250 ok\r\n250 ok\r\n354 go\r\n");
    let mut body = h.sent();
    h.s.send_body(b"Content-Transfer-Encoding: 8bit\r\n\r\n\xc3\xa9\r\n");
    h.s.finish_body(h.t0);
    body.push_str(&h.sent());
    (mail, body)
}

#[test]
fn plain_signature_before_an_8bitmime_body() {
    let (mail, body) = body_after_354(&["PIPELINING", "SIZE 1000", "8BITMIME"]);
    assert!(
        mail.starts_with("MAIL FROM:<a@x.example> SIZE=123 BODY=8BITMIME\r\n"),
        "{mail}"
    );
    assert!(
        body.starts_with("DKIM-Signature: plain\r\nContent-Transfer-Encoding: 8bit\r\n"),
        "{body}"
    );
}

#[test]
fn seven_bit_signature_before_a_downgraded_body() {
    let (mail, body) = body_after_354(&["PIPELINING", "SIZE 1000"]);
    assert!(
        mail.starts_with("MAIL FROM:<a@x.example> SIZE=123\r\n"),
        "{mail}"
    );
    assert!(body.starts_with("DKIM-Signature: seven\r\n"), "{body}");
    assert!(
        body.contains("quoted-printable") && body.contains("=C3=A9"),
        "{body}"
    );
}

#[test]
fn unsigned_transaction_sends_no_field() {
    let mut h = Harness::new(cfg());
    h.ready(&["PIPELINING"]);
    h.start(txn(&["b@y"]));
    let _ = h.sent();
    h.feed("250 ok\r\n250 ok\r\n354 go\r\n");
    let mut body = h.sent();
    h.s.send_body(b"Subject: x\r\n\r\nx\r\n");
    body.push_str(&h.sent());
    assert_eq!(body, "Subject: x\r\n\r\nx\r\n");
}
