//! XOAUTH2 and OAUTHBEARER dialogues, the client fed replies.

use super::*;

fn session(mechanism: AuthMechanism) -> ClientSession {
    let cfg = ClientConfig {
        helo_name: "client.example".into(),
        tls: TlsPolicy::Required,
        tls_active: true,
        credentials: Some(Credentials {
            user: "me@gmail.com".into(),
            password: "ya29.tok".into(),
        }),
        reply_timeout: Duration::from_secs(300),
        final_timeout: Duration::from_secs(600),
        lmtp: false,
    };
    let mut s = ClientSession::new(cfg, Instant::now());
    s.restrict_auth(mechanism);
    s.set_server("smtp.gmail.com", 587);
    s
}

fn feed(s: &mut ClientSession, text: &str) {
    s.handle_input(text.as_bytes(), Instant::now());
}

fn sent(s: &mut ClientSession) -> String {
    let bytes = s.poll_transmit().to_vec();
    s.consume_transmit(bytes.len());
    String::from_utf8(bytes).unwrap()
}

fn events(s: &mut ClientSession) -> Vec<ClientEvent> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn decode(line: &str) -> Vec<u8> {
    crate::auth::base64_decode(line.trim_end()).expect("base64")
}

/// Greeting and EHLO offering `auth`; returns the AUTH command sent.
fn to_auth(s: &mut ClientSession, auth: &str) -> String {
    feed(s, "220 smtp.gmail.com ESMTP\r\n");
    assert_eq!(sent(s), "EHLO client.example\r\n");
    feed(s, &format!("250-smtp.gmail.com\r\n250 AUTH {auth}\r\n"));
    sent(s)
}

#[test]
fn xoauth2_initial_response_exact_bytes() {
    let mut s = session(AuthMechanism::XOAuth2);
    let line = to_auth(&mut s, "LOGIN PLAIN XOAUTH2 OAUTHBEARER");
    let b64 = line
        .strip_prefix("AUTH XOAUTH2 ")
        .expect("AUTH XOAUTH2 with an initial response");
    assert_eq!(
        decode(b64),
        b"user=me@gmail.com\x01auth=Bearer ya29.tok\x01\x01".to_vec()
    );
    feed(&mut s, "235 2.7.0 Accepted\r\n");
    assert_eq!(events(&mut s), vec![ClientEvent::Ready]);
    assert!(!s.oauth_rejected());
}

#[test]
fn oauthbearer_initial_response_exact_bytes() {
    let mut s = session(AuthMechanism::OAuthBearer);
    let line = to_auth(&mut s, "OAUTHBEARER");
    let b64 = line.strip_prefix("AUTH OAUTHBEARER ").unwrap();
    assert_eq!(
        decode(b64),
        b"n,a=me@gmail.com,\x01host=smtp.gmail.com\x01port=587\x01auth=Bearer ya29.tok\x01\x01"
            .to_vec()
    );
    feed(&mut s, "235 ok\r\n");
    assert_eq!(events(&mut s), vec![ClientEvent::Ready]);
}

#[test]
fn xoauth2_error_challenge_is_acknowledged_then_535_defers() {
    let mut s = session(AuthMechanism::XOAuth2);
    to_auth(&mut s, "XOAUTH2");
    // base64 of Google's JSON error.
    feed(
        &mut s,
        "334 eyJzdGF0dXMiOiI0MDAiLCJzY2hlbWVzIjoiQmVhcmVyIiwic2NvcGUiOiJodHRwczovL21haWwuZ29vZ2xlLmNvbS8ifQ==\r\n",
    );
    assert_eq!(sent(&mut s), "\r\n");
    assert!(events(&mut s).is_empty());
    feed(&mut s, "535 5.7.8 Username and Password not accepted\r\n");
    let ev = events(&mut s);
    assert!(
        matches!(&ev[..], [ClientEvent::SessionFailed(RcptOutcome::Deferred(r))] if r.code == 535),
        "{ev:?}"
    );
    assert_eq!(sent(&mut s), "QUIT\r\n");
    assert!(s.oauth_rejected());
}

#[test]
fn oauthbearer_error_challenge_is_answered_with_kvsep() {
    let mut s = session(AuthMechanism::OAuthBearer);
    to_auth(&mut s, "OAUTHBEARER");
    feed(&mut s, "334 eyJzdGF0dXMiOiJpbnZhbGlkX3Rva2VuIn0=\r\n");
    assert_eq!(decode(&sent(&mut s)), b"\x01".to_vec());
    feed(&mut s, "535 5.7.8 invalid token\r\n");
    assert!(matches!(
        &events(&mut s)[..],
        [ClientEvent::SessionFailed(RcptOutcome::Deferred(_))]
    ));
    assert!(s.oauth_rejected());
}

#[test]
fn direct_5xx_to_oauth_marks_the_token_rejected() {
    let mut s = session(AuthMechanism::XOAuth2);
    to_auth(&mut s, "XOAUTH2");
    feed(&mut s, "535 5.7.3 Authentication unsuccessful\r\n");
    assert!(matches!(
        &events(&mut s)[..],
        [ClientEvent::SessionFailed(RcptOutcome::Deferred(_))]
    ));
    assert!(s.oauth_rejected());
}

#[test]
fn server_without_the_mechanism_fails_without_sending_the_token() {
    let mut s = session(AuthMechanism::XOAuth2);
    let line = to_auth(&mut s, "PLAIN LOGIN");
    assert_eq!(line, "QUIT\r\n");
    let ev = events(&mut s);
    assert!(
        matches!(&ev[..], [ClientEvent::SessionFailed(RcptOutcome::Deferred(r))]
            if r.to_string().contains("no supported AUTH mechanism")),
        "{ev:?}"
    );
    assert!(!s.oauth_rejected());
}

#[test]
fn the_token_is_not_in_debug_output() {
    let mut s = session(AuthMechanism::XOAuth2);
    to_auth(&mut s, "XOAUTH2");
    let debug = format!("{s:?}");
    assert!(!debug.contains("ya29.tok"), "{debug}");
}
