//! LMTP mode (RFC 2033): LHLO, and one reply per accepted recipient after
//! the final dot.

use super::*;

fn lmtp() -> Harness {
    Harness::new(ClientConfig {
        lmtp: true,
        ..cfg()
    })
}

/// Greeting and LHLO with PIPELINING; asserts Ready.
fn lmtp_ready() -> Harness {
    let mut h = lmtp();
    h.feed("220 lmtp.example LMTP ready\r\n");
    assert_eq!(h.sent(), "LHLO client.example\r\n");
    h.feed(&ehlo_reply(&["PIPELINING", "ENHANCEDSTATUSCODES"]));
    assert_eq!(h.events(), vec![ClientEvent::Ready]);
    h
}

/// Starts a transaction to `rcpts`; the server takes every RCPT but
/// those named in `refused`, then the body; returns after the dot.
fn through_the_dot(h: &mut Harness, rcpts: &[&str], refused: &[&str]) {
    h.start(txn(rcpts));
    let mut expected = "MAIL FROM:<a@x.example>\r\n".to_string();
    for r in rcpts {
        expected.push_str(&format!("RCPT TO:<{r}>\r\n"));
    }
    expected.push_str("DATA\r\n");
    assert_eq!(h.sent(), expected);
    h.feed("250 2.1.0 ok\r\n");
    for r in rcpts {
        if refused.contains(r) {
            h.feed("550 5.1.1 no such user\r\n");
        } else {
            h.feed("250 2.1.5 ok\r\n");
        }
    }
    h.feed("354 go\r\n");
    assert_eq!(h.events(), vec![ClientEvent::WantBody]);
    let body = b"Subject: x\r\n\r\nhi\r\n";
    assert_eq!(h.s.send_body(body), body.len());
    h.s.finish_body(h.t0);
    assert!(h.sent().ends_with("\r\nhi\r\n.\r\n"));
}

/// The outcomes of the one `TransactionDone` among the events.
fn done(h: &mut Harness) -> Vec<RcptOutcome> {
    let ev = h.events();
    match &ev[..] {
        [ClientEvent::TransactionDone(outcomes)] => outcomes.clone(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn lmtp_greets_with_lhlo_and_never_falls_back_to_helo() {
    let mut h = lmtp();
    h.feed("220 lmtp.example\r\n");
    assert_eq!(h.sent(), "LHLO client.example\r\n");
    h.feed("500 5.5.1 unknown command\r\n");
    let ev = h.events();
    assert!(
        matches!(&ev[..], [ClientEvent::SessionFailed(RcptOutcome::Deferred(r))] if r.code == 500),
        "{ev:?}"
    );
    assert_eq!(h.sent(), "QUIT\r\n");
}

#[test]
fn lmtp_replies_after_the_dot_decide_each_recipient_in_order() {
    let mut h = lmtp_ready();
    through_the_dot(&mut h, &["ann", "bob", "cid"], &[]);
    // One reply per recipient: the transaction is not done after the first.
    h.feed("250 2.0.0 <ann> saved\r\n");
    assert_eq!(h.events(), vec![]);
    h.feed("452 4.2.2 <bob> mailbox full\r\n");
    assert_eq!(h.events(), vec![]);
    h.feed("550 5.2.1 <cid> mailbox disabled\r\n");
    let want = [
        RcptOutcome::Delivered(reply(250, "2.0.0 <ann> saved")),
        RcptOutcome::Deferred(reply(452, "4.2.2 <bob> mailbox full")),
        RcptOutcome::Failed(reply(550, "5.2.1 <cid> mailbox disabled")),
    ];
    assert_eq!(done(&mut h), want);
    // The session stays usable for the next message.
    h.start(txn(&["dan"]));
    assert!(h.sent().starts_with("MAIL FROM:"));
}

#[test]
fn lmtp_expects_replies_only_for_accepted_recipients() {
    let mut h = lmtp_ready();
    through_the_dot(&mut h, &["ann", "ghost", "cid"], &["ghost"]);
    h.feed("250 2.0.0 ann ok\r\n");
    assert_eq!(h.events(), vec![]);
    h.feed("250 2.0.0 cid ok\r\n");
    let outcomes = done(&mut h);
    assert_eq!(outcomes.len(), 3);
    assert_eq!(
        outcomes[0],
        RcptOutcome::Delivered(reply(250, "2.0.0 ann ok"))
    );
    assert_eq!(
        outcomes[1],
        RcptOutcome::Failed(reply(550, "5.1.1 no such user"))
    );
    assert_eq!(
        outcomes[2],
        RcptOutcome::Delivered(reply(250, "2.0.0 cid ok"))
    );
}

#[test]
fn lmtp_connection_lost_mid_replies_defers_only_the_unanswered() {
    let mut h = lmtp_ready();
    through_the_dot(&mut h, &["ann", "bob", "cid"], &[]);
    h.feed("250 2.0.0 ann ok\r\n");
    h.s.connection_lost(h.t0);
    let ev = h.events();
    let [ClientEvent::TransactionDone(outcomes), ClientEvent::SessionFailed(_)] = &ev[..] else {
        panic!("{ev:?}");
    };
    assert_eq!(
        outcomes[0],
        RcptOutcome::Delivered(reply(250, "2.0.0 ann ok"))
    );
    assert!(matches!(&outcomes[1], RcptOutcome::Deferred(r) if r.own.is_some()));
    assert!(matches!(&outcomes[2], RcptOutcome::Deferred(r) if r.own.is_some()));
}

#[test]
fn lmtp_each_reply_after_the_dot_has_the_final_timeout() {
    let mut h = lmtp_ready();
    through_the_dot(&mut h, &["ann", "bob"], &[]);
    let later = h.t0 + Duration::from_secs(500);
    h.s.handle_input(b"250 2.0.0 ann ok\r\n", later);
    // The wait for bob's reply starts at ann's: final_timeout (600 s).
    assert_eq!(h.s.poll_timeout(), Some(later + Duration::from_secs(600)));
}

#[test]
fn smtp_still_takes_one_reply_after_the_dot() {
    let mut h = Harness::new(cfg());
    h.ready(&["PIPELINING"]);
    through_the_dot(&mut h, &["ann", "bob"], &[]);
    h.feed("250 2.0.0 queued\r\n");
    let delivered = RcptOutcome::Delivered(reply(250, "2.0.0 queued"));
    assert_eq!(done(&mut h), [delivered.clone(), delivered]);
}

#[test]
fn lmtp_without_pipelining_goes_lock_step_then_takes_one_reply_each() {
    let mut h = lmtp();
    h.feed("220 lmtp.example\r\n");
    h.sent();
    h.feed("250 lmtp.example\r\n");
    assert_eq!(h.events(), vec![ClientEvent::Ready]);
    h.start(txn(&["ann", "bob"]));
    for (command, answer) in [
        ("MAIL FROM:<a@x.example>", "250 ok"),
        ("RCPT TO:<ann>", "250 ok"),
        ("RCPT TO:<bob>", "250 ok"),
        ("DATA", "354 go"),
    ] {
        assert_eq!(h.sent(), format!("{command}\r\n"));
        h.feed(&format!("{answer}\r\n"));
    }
    assert_eq!(h.events(), vec![ClientEvent::WantBody]);
    h.s.finish_body(h.t0);
    assert_eq!(h.sent(), ".\r\n");
    h.feed("250 2.0.0 ann ok\r\n");
    assert!(!h.s.has_events());
    h.feed("451 4.3.0 bob later\r\n");
    assert_eq!(
        done(&mut h),
        [
            RcptOutcome::Delivered(reply(250, "2.0.0 ann ok")),
            RcptOutcome::Deferred(reply(451, "4.3.0 bob later")),
        ]
    );
}
