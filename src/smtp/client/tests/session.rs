//! AUTH, deadlines and the end of a session (the parent module's helpers).

use super::*;

// ---- AUTH ----------------------------------------------------------------------

fn tls_auth_harness() -> Harness {
    Harness::new(ClientConfig {
        tls: TlsPolicy::Required,
        tls_active: true,
        credentials: creds(),
        ..cfg()
    })
}

#[test]
fn auth_plain_exact_bytes() {
    let mut h = tls_auth_harness();
    h.feed("220 hi\r\n");
    h.sent();
    h.feed(&ehlo_reply(&["AUTH LOGIN PLAIN"]));
    // base64("\0user\0pass")
    assert_eq!(h.sent(), "AUTH PLAIN AHVzZXIAcGFzcw==\r\n");
    h.feed("235 2.7.0 ok\r\n");
    assert_eq!(h.events(), vec![ClientEvent::Ready]);
}

#[test]
fn auth_plain_after_empty_challenge() {
    let mut h = tls_auth_harness();
    h.feed("220 hi\r\n");
    h.feed(&ehlo_reply(&["AUTH PLAIN"]));
    h.sent();
    h.feed("334 \r\n");
    assert_eq!(h.sent(), "AHVzZXIAcGFzcw==\r\n");
    h.feed("235 ok\r\n");
    assert_eq!(h.events(), vec![ClientEvent::Ready]);
}

#[test]
fn auth_login_dialog() {
    let mut h = tls_auth_harness();
    h.feed("220 hi\r\n");
    h.sent();
    h.feed(&ehlo_reply(&["AUTH=LOGIN"]));
    assert_eq!(h.sent(), "AUTH LOGIN\r\n");
    h.feed("334 VXNlcm5hbWU6\r\n");
    assert_eq!(h.sent(), "dXNlcg==\r\n");
    h.feed("334 UGFzc3dvcmQ6\r\n");
    assert_eq!(h.sent(), "cGFzcw==\r\n");
    h.feed("235 2.7.0 ok\r\n");
    assert_eq!(h.events(), vec![ClientEvent::Ready]);
}

#[test]
fn auth_535_defers() {
    let mut h = tls_auth_harness();
    h.feed("220 hi\r\n");
    h.feed(&ehlo_reply(&["AUTH PLAIN"]));
    h.sent();
    h.feed("535 5.7.8 bad credentials\r\n");
    assert_eq!(
        h.events(),
        vec![ClientEvent::SessionFailed(RcptOutcome::Deferred(reply(
            535,
            "5.7.8 bad credentials"
        )))]
    );
    assert_eq!(h.sent(), "QUIT\r\n");
}

#[test]
fn auth_without_usable_mechanism_defers() {
    let mut h = tls_auth_harness();
    h.feed("220 hi\r\n");
    h.feed(&ehlo_reply(&["AUTH CRAM-MD5"]));
    assert!(matches!(
        h.events()[..],
        [ClientEvent::SessionFailed(RcptOutcome::Deferred(_))]
    ));
}

#[test]
fn auth_refused_over_plaintext_but_allowed_with_policy_never() {
    let mut h = Harness::new(ClientConfig {
        tls: TlsPolicy::IfOffered,
        credentials: creds(),
        ..cfg()
    });
    h.feed("220 hi\r\n");
    h.sent();
    h.feed(&ehlo_reply(&["AUTH PLAIN"]));
    assert!(
        matches!(&h.events()[..], [ClientEvent::SessionFailed(RcptOutcome::Deferred(r))] if r.code == 454)
    );
    assert_eq!(h.sent(), "QUIT\r\n", "no credentials in plaintext");

    let mut h = Harness::new(ClientConfig {
        credentials: creds(),
        ..cfg()
    });
    h.feed("220 hi\r\n");
    h.sent();
    h.feed(&ehlo_reply(&["AUTH PLAIN"]));
    assert_eq!(h.sent(), "AUTH PLAIN AHVzZXIAcGFzcw==\r\n");
}

#[test]
fn debug_output_hides_password() {
    let h = tls_auth_harness();
    assert!(!format!("{:?}", h.s).contains("pass\""));
}

// ---- time, loss, quit -------------------------------------------------------

#[test]
fn greeting_timeout() {
    let mut h = Harness::new(cfg());
    let deadline = h.s.poll_timeout().expect("deadline");
    assert_eq!(deadline, h.t0 + Duration::from_secs(300));
    h.s.handle_timeout(deadline - Duration::from_secs(1));
    assert!(h.events().is_empty());
    h.s.handle_timeout(deadline);
    assert!(!h.s.greeted());
    let ev = h.events();
    assert!(
        matches!(&ev[..], [ClientEvent::SessionFailed(RcptOutcome::Deferred(r))] if r.enhanced() == Some((4, 4, 2)) && r.own == Some(Own::Timeout("the greeting")) && r.text() == "4.4.2 timeout waiting for the greeting")
    );
    assert!(h.s.is_closed());
}

#[test]
fn final_dot_uses_final_timeout() {
    let mut h = in_body();
    let later = h.t0 + Duration::from_secs(50);
    h.s.finish_body(later);
    assert_eq!(h.s.poll_timeout(), Some(later + Duration::from_secs(600)));
    h.s.handle_timeout(later + Duration::from_secs(600));
    let ev = h.events();
    assert!(
        matches!(&done(&ev)[..], [RcptOutcome::Deferred(r)] if r.enhanced() == Some((4, 4, 2)) && r.own == Some(Own::Timeout("the reply to the end of the message")))
    );
    assert!(matches!(ev.last(), Some(ClientEvent::SessionFailed(_))));
}

#[test]
fn reply_resets_deadline() {
    let mut h = Harness::new(cfg());
    let later = h.t0 + Duration::from_secs(100);
    assert!(!h.s.greeted());
    h.s.handle_input(b"220 hi\r\n", later);
    assert!(h.s.greeted());
    assert_eq!(h.s.poll_timeout(), Some(later + Duration::from_secs(300)));
    h.s.handle_input(&ehlo_reply(&[]).into_bytes(), later);
    assert_eq!(h.s.poll_timeout(), None, "idle between transactions");
}

#[test]
fn connection_lost_mid_transaction() {
    let mut h = Harness::new(cfg());
    h.ready(&[]);
    h.start(txn(&["b@y"]));
    h.s.connection_lost(h.t0);
    let ev = h.events();
    assert!(
        matches!(&done(&ev)[..], [RcptOutcome::Deferred(r)] if r.text().contains("connection lost") && r.own == Some(Own::ConnectionLost))
    );
    assert!(matches!(ev.last(), Some(ClientEvent::SessionFailed(_))));
    assert!(h.s.is_closed());
    h.s.connection_lost(h.t0);
    assert!(h.events().is_empty());
}

#[test]
fn quit_after_ready_and_loss_after_quit_is_quiet() {
    let mut h = Harness::new(cfg());
    h.ready(&[]);
    h.s.quit();
    assert_eq!(h.sent(), "QUIT\r\n");
    assert!(h.s.is_closed());
    h.s.connection_lost(h.t0);
    assert!(h.events().is_empty());
}

/// A server that stops reading mid-body: the body has a deadline that
/// moves while bytes go out (it had none).
#[test]
fn stalled_body_times_out() {
    let mut h = in_body();
    let t1 = h.t0 + Duration::from_secs(10);
    assert_eq!(h.s.send_body(b"some of the body\r\n"), 18);
    h.s.note_progress(t1);
    assert_eq!(h.s.poll_timeout(), Some(t1 + Duration::from_secs(300)));
    h.s.handle_timeout(t1 + Duration::from_secs(299));
    assert!(!h.s.is_closed());
    h.s.handle_timeout(t1 + Duration::from_secs(300));
    assert!(h.s.is_closed());
    assert!(h.s.poll_transmit().is_empty(), "nothing left to flush");
    let ev = h.events();
    assert!(matches!(&done(&ev)[..], [RcptOutcome::Deferred(_)]));
}

/// QUIT that the server never takes: the session closes anyway.
#[test]
fn unflushed_quit_times_out() {
    let mut h = Harness::new(cfg());
    h.ready(&[]);
    h.s.quit();
    assert!(h.s.is_closed() && !h.s.poll_transmit().is_empty());
    let d = h.s.poll_timeout().expect("Quitting has a deadline");
    h.s.handle_timeout(d);
    assert!(h.s.poll_transmit().is_empty());
    assert_eq!(h.s.poll_timeout(), None);
}

#[test]
fn quit_mid_body_sends_nothing_and_defers() {
    let mut h = in_body();
    h.s.send_body(b"partial");
    h.sent();
    h.s.quit();
    assert_eq!(h.sent(), "", "a QUIT now would be body text");
    assert!(matches!(&done(&h.events())[..], [RcptOutcome::Deferred(_)]));
    assert!(h.s.is_closed());
}
