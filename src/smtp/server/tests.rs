use super::*;

mod bdat;
mod dsn;
mod requiretls;

struct TestPolicy;
impl Policy for TestPolicy {
    fn check_recipient(
        &self,
        rcpt: &Address,
        relay_allowed: bool,
    ) -> Result<Vec<Destination>, Reply> {
        if rcpt.domain.ends_with("local.test") {
            if rcpt.local == "nobody" {
                Err(reply::USER_UNKNOWN)
            } else {
                Ok(vec![Destination::Remote(rcpt.clone())])
            }
        } else if relay_allowed {
            Ok(vec![Destination::Remote(rcpt.clone())])
        } else {
            Err(reply::RELAY_DENIED)
        }
    }
}

/// The test driver's password check.
fn test_verdict(c: &Credentials) -> AuthVerdict {
    if c.user == "joe" && c.password == "secret" {
        AuthVerdict::Ok
    } else {
        AuthVerdict::Bad
    }
}

fn cfg() -> SessionConfig {
    SessionConfig {
        hostname: "mx.local.test".into(),
        max_message_size: 2000,
        max_recipients: 3,
        max_errors: 6,
        hop_limit: 3,
        timeout: Duration::from_secs(300),
        tls_available: true,
        auth_available: true,
        allow_plaintext_auth: false,
    }
}

/// A test harness: the session plus a fake driver that "opens" a spool
/// file, stores the body and commits at once.
struct Harness {
    s: ServerSession,
    now: Instant,
    pending: Vec<u8>,
    stored: Vec<u8>,
    committed: Vec<Vec<u8>>,
    aborted: usize,
    fail_commit: bool,
}

impl Harness {
    fn new(relay: bool) -> Harness {
        let now = Instant::now();
        Harness {
            s: ServerSession::new(
                cfg(),
                ListenerKind::Relay,
                "192.0.2.1".parse().unwrap(),
                relay,
                now,
            ),
            now,
            pending: Vec::new(),
            stored: Vec::new(),
            committed: Vec::new(),
            aborted: 0,
            fail_commit: false,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        loop {
            let n = self.s.handle_input(&self.pending, self.now, &TestPolicy);
            self.pending.drain(..n);
            self.stored.extend_from_slice(self.s.body());
            self.s.clear_body();
            let mut progressed = false;
            while let Some(ev) = self.s.poll_event() {
                progressed = true;
                match ev {
                    Event::DataStart => self
                        .s
                        .data_started("ABC123", "Sun, 29 Nov 2026 00:00:00 +0000"),
                    Event::Commit => {
                        self.stored.extend_from_slice(self.s.body());
                        self.s.clear_body();
                        if self.fail_commit {
                            self.s.committed(Err(reply::NO_SPACE));
                        } else {
                            self.committed.push(std::mem::take(&mut self.stored));
                            self.s.committed(Ok("ABC123"));
                        }
                    }
                    Event::Abort => {
                        self.aborted += 1;
                        self.stored.clear();
                    }
                    Event::StartTls => {}
                    Event::Authenticate(c) => self.s.auth_verdict(test_verdict(&c), self.now),
                }
            }
            if !progressed && (n == 0 || self.pending.is_empty()) {
                break;
            }
        }
    }

    fn take_output(&mut self) -> String {
        let out = String::from_utf8(self.s.output().to_vec()).unwrap();
        let n = out.len();
        self.s.consume_output(n);
        out
    }

    fn codes(&mut self) -> Vec<u16> {
        self.take_output()
            .lines()
            .filter(|l| l.as_bytes().get(3) == Some(&b' '))
            .map(|l| l[..3].parse().unwrap())
            .collect()
    }
}

const TXN: &[u8] = b"EHLO client.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<joe@local.test>\r\nDATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n";

#[test]
fn greeting_then_full_pipelined_transaction() {
    let mut h = Harness::new(false);
    h.send(TXN);
    assert_eq!(h.codes(), vec![220, 250, 250, 250, 354, 250, 221]);
    assert!(h.s.is_closing());
    assert_eq!(h.committed.len(), 1);
    let msg = String::from_utf8(h.committed[0].clone()).unwrap();
    assert!(msg.starts_with("Received: from client.test ([192.0.2.1])\r\n\tby mx.local.test (tern) with ESMTP id ABC123\r\n\tfor <joe@local.test>; Sun, 29 Nov 2026"), "{msg}");
    assert!(msg.ends_with("Subject: hi\r\n\r\nbody\r\n"));
}

#[test]
fn mail_is_refused_when_the_policy_has_no_room() {
    struct Full;
    impl Policy for Full {
        fn check_recipient(
            &self,
            rcpt: &Address,
            relay_allowed: bool,
        ) -> Result<Vec<Destination>, Reply> {
            TestPolicy.check_recipient(rcpt, relay_allowed)
        }
        fn check_mail(&self) -> Result<(), Reply> {
            Err(reply::NO_SPACE)
        }
    }
    let now = Instant::now();
    let peer = "192.0.2.1".parse().unwrap();
    let mut s = ServerSession::new(cfg(), ListenerKind::Relay, peer, false, now);
    let input: &[u8] =
        b"EHLO c.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<joe@local.test>\r\nNOOP\r\n";
    let mut used = 0;
    while used < input.len() {
        let n = s.handle_input(&input[used..], now, &Full);
        if n == 0 {
            break;
        }
        used += n;
    }
    let out = String::from_utf8(s.output().to_vec()).unwrap();
    let finals: Vec<&str> = out
        .lines()
        .filter(|l| l.as_bytes().get(3) == Some(&b' '))
        .map(|l| &l[..9.min(l.len())])
        .collect();
    // MAIL refused, so RCPT has no transaction; the session goes on.
    assert_eq!(finals[2], "452 4.3.1", "{out}");
    assert!(finals[3].starts_with("503"), "{out}");
    assert!(finals[4].starts_with("250"), "{out}");
    assert!(s.poll_event().is_none());
}

#[test]
fn pipelined_input_split_at_every_byte() {
    let mut whole = Harness::new(false);
    whole.send(TXN);
    let expected_out = whole.take_output();
    let expected_msg = whole.committed.clone();
    for cut in 1..TXN.len() {
        let mut h = Harness::new(false);
        h.send(&TXN[..cut]);
        h.send(&TXN[cut..]);
        assert_eq!(h.take_output(), expected_out, "cut {cut}");
        assert_eq!(h.committed, expected_msg, "cut {cut}");
    }
    // And one byte at a time.
    let mut h = Harness::new(false);
    for b in TXN {
        h.send(std::slice::from_ref(b));
    }
    assert_eq!(h.take_output(), expected_out);
}

/// Issue 11 item 1 through the whole session: UTF-8-laden lines, cut at
/// every octet (inside characters too), before and after EHLO, in
/// AUTH: every line gets a reply and the session keeps serving.
#[test]
fn utf8_laden_lines_cut_anywhere_never_panic() {
    let lines: [&str; 7] = [
        "MAIL FROMé<a@b.test>",
        "RCPT TOˊ",
        "MAIL FROM:<\"é\"@b.test> SIZE=€",
        "RCPT TO:<a@b😀.test>",
        "EHLO é€😀",
        "AUTH PLAIN é",
        "HELO\u{a0}x",
    ];
    for line in lines {
        let b = line.as_bytes();
        for cut in 0..=b.len() {
            for ehlo in [false, true] {
                let mut h = Harness::new(false);
                if ehlo {
                    h.send(b"EHLO c\r\n");
                }
                h.take_output();
                h.send(&b[..cut]);
                h.send(&b[cut..]);
                h.send(b"\r\nNOOP\r\n");
                let out = h.take_output();
                assert!(
                    out.ends_with("250 2.0.0 Ok\r\n") || out.ends_with("250 Ok\r\n"),
                    "{line:?} cut {cut}: {out}"
                );
            }
        }
    }
}

#[test]
fn ehlo_advertises_extensions_and_helo_has_no_enhanced_codes() {
    let mut h = Harness::new(false);
    h.send(b"EHLO c\r\n");
    let out = h.take_output();
    assert!(
            out.contains(
                "250-PIPELINING\r\n250-SIZE 2000\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250-SMTPUTF8\r\n250-DSN\r\n250 STARTTLS\r\n"
            ),
            "{out}"
        );
    h.send(b"HELO c\r\nRCPT TO:<x@local.test>\r\n");
    let out = h.take_output();
    assert!(out.ends_with("503 Error: need MAIL command\r\n"), "{out}");
}

#[test]
fn sequence_errors() {
    let mut h = Harness::new(false);
    h.send(b"MAIL FROM:<a@b.test>\r\n");
    assert_eq!(h.codes(), vec![220, 503]);
    h.send(b"EHLO c\r\nDATA\r\nRCPT TO:<joe@local.test>\r\nMAIL FROM:<a@b.test>\r\nMAIL FROM:<a@b.test>\r\nDATA\r\n");
    assert_eq!(h.codes(), vec![250, 503, 503, 250, 503, 503]);
}

#[test]
fn every_simple_command() {
    let mut h = Harness::new(false);
    h.send(b"EHLO c\r\nNOOP\r\nVRFY joe\r\nHELP\r\nRSET\r\nAUTH PLAIN\r\nBOGUS\r\n");
    assert_eq!(h.codes(), vec![220, 250, 250, 252, 214, 250, 538, 500]);
}

#[test]
fn relay_policy() {
    let mut h = Harness::new(false);
    h.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@elsewhere.test>\r\nRCPT TO:<nobody@local.test>\r\nRCPT TO:<postmaster>\r\n");
    let out = h.take_output();
    assert!(out.contains("554 5.7.1 Relay access denied"), "{out}");
    assert!(out.contains("550 5.1.1"), "{out}");
    assert!(out.ends_with("250 2.1.5 Recipient ok\r\n"));
    let mut h = Harness::new(true);
    h.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@elsewhere.test>\r\n");
    assert_eq!(h.codes(), vec![220, 250, 250, 250]);
}

#[test]
fn too_many_recipients() {
    let mut h = Harness::new(false);
    h.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\n");
    for i in 0..4 {
        h.send(format!("RCPT TO:<u{i}@local.test>\r\n").as_bytes());
    }
    let out = h.take_output();
    assert!(
        out.ends_with("452 4.5.3 Error: too many recipients\r\n"),
        "{out}"
    );
}

#[test]
fn oversize_declared_and_streamed() {
    let mut h = Harness::new(false);
    h.send(b"EHLO c\r\nMAIL FROM:<a@b.test> SIZE=5000\r\n");
    assert!(h
        .take_output()
        .ends_with("552 5.3.4 Error: message exceeds fixed maximum message size\r\n"));
    h.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<j@local.test>\r\nDATA\r\n");
    let big = vec![b'x'; 900];
    for _ in 0..3 {
        h.send(&big);
        h.send(b"\r\n");
    }
    h.send(b".\r\nNOOP\r\n");
    let out = h.take_output();
    assert!(out.contains("552 5.3.4"), "{out}");
    assert!(out.ends_with("250 2.0.0 Ok\r\n"), "session survives: {out}");
    assert_eq!(h.aborted, 1);
    assert!(h.committed.is_empty());
}

#[test]
fn long_command_line_and_long_data_line() {
    let mut h = Harness::new(false);
    let mut long = b"NOOP ".to_vec();
    long.extend(std::iter::repeat_n(b'a', 1200));
    long.extend_from_slice(b"\r\nNOOP\r\n");
    h.send(&long);
    assert_eq!(h.codes(), vec![220, 500, 250]);
    h.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<j@local.test>\r\nDATA\r\n");
    let mut data = vec![b'y'; 1001];
    data.extend_from_slice(b"\r\n.\r\nNOOP\r\n");
    h.send(&data);
    let out = h.take_output();
    assert!(out.contains("554 5.6.0"), "{out}");
    assert!(out.ends_with("250 2.0.0 Ok\r\n"));
}

#[test]
fn hop_limit() {
    let mut h = Harness::new(false);
    h.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<j@local.test>\r\nDATA\r\n");
    h.send(b"Received: 1\r\nReceived: 2\r\nReceived: 3\r\nReceived: 4\r\n\r\nx\r\n.\r\n");
    assert!(h
        .take_output()
        .ends_with("554 5.4.6 Error: too many hops (mail loop?)\r\n"));
    assert!(h.committed.is_empty());
}

#[test]
fn commit_failure_is_reported_and_session_goes_on() {
    let mut h = Harness::new(false);
    h.fail_commit = true;
    h.send(TXN);
    assert_eq!(h.codes(), vec![220, 250, 250, 250, 354, 452, 221]);
}

#[test]
fn smuggled_end_is_content() {
    let mut h = Harness::new(false);
    h.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<j@local.test>\r\nDATA\r\nhi\n.\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<j@local.test>\r\nDATA\r\nevil\r\n.\r\n");
    assert_eq!(h.committed.len(), 1);
    let msg = String::from_utf8(h.committed[0].clone()).unwrap();
    assert!(
        msg.contains("hi\r\n\r\nMAIL FROM:<evil@x.test>\r\n"),
        "{msg}"
    );
    assert_eq!(h.codes(), vec![220, 250, 250, 250, 354, 250]);
}

#[test]
fn too_many_errors_closes() {
    let mut h = Harness::new(false);
    h.send(b"A\r\nB\r\nC\r\nD\r\nE\r\nF\r\nG\r\n");
    let out = h.take_output();
    assert!(
        out.ends_with("421 mx.local.test Too many errors, closing connection\r\n"),
        "{out}"
    );
    assert!(h.s.is_closing());
}

#[test]
fn timeout_in_command_and_data() {
    let mut h = Harness::new(false);
    let t0 = h.now;
    h.s.handle_timeout(t0 + Duration::from_secs(299));
    assert!(!h.s.is_closing());
    h.s.handle_timeout(t0 + Duration::from_secs(300));
    assert!(h.s.is_closing());
    assert!(h
        .take_output()
        .ends_with("421 mx.local.test Timeout exceeded, closing connection\r\n"));

    let mut h = Harness::new(false);
    h.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<j@local.test>\r\nDATA\r\npartial");
    let d = h.s.deadline().unwrap();
    h.s.handle_timeout(d);
    assert_eq!(h.s.poll_event(), Some(Event::Abort));
    assert!(h.s.is_closing());
}

// Issue 11 item 5: after 220 Ready to start TLS nothing timed out.
#[test]
fn starttls_without_handshake_times_out() {
    let mut h = Harness::new(false);
    h.send(b"EHLO c\r\nSTARTTLS\r\n");
    assert!(h
        .take_output()
        .ends_with("220 2.0.0 Ready to start TLS\r\n"));
    assert!(h.s.is_waiting_for_driver());
    let d = h.s.deadline().expect("TlsWait has a deadline");
    assert_eq!(d, h.now + Duration::from_secs(300));
    h.s.handle_timeout(d - Duration::from_secs(1));
    assert!(!h.s.is_closing());
    h.s.handle_timeout(d);
    assert!(h.s.is_closing() && h.s.is_abandoned());
    // Nothing in plaintext after the 220: the handshake had begun.
    assert!(h.s.output().is_empty());
    // A late handshake does not revive it.
    h.s.tls_started("TLSv1.3 X".into(), d);
    assert!(h.s.is_closing());
}

/// A client that never reads keeps its 421 unsent: the session is
/// abandoned after CLOSE_LINGER instead of holding the slot.
#[test]
fn closing_session_is_abandoned_after_linger() {
    let mut h = Harness::new(false);
    let t0 = h.now;
    h.s.handle_timeout(t0 + Duration::from_secs(300));
    assert!(h.s.is_closing() && !h.s.is_abandoned());
    let d = h.s.deadline().expect("Closing has a deadline");
    assert_eq!(d, t0 + Duration::from_secs(300) + CLOSE_LINGER);
    h.s.handle_timeout(d);
    assert!(h.s.is_abandoned());
    // QUIT: the 221 gets CLOSE_LINGER, not a whole server_timeout.
    let mut h = Harness::new(false);
    h.send(b"QUIT\r\n");
    assert_eq!(h.s.deadline(), Some(h.now + CLOSE_LINGER));
}

#[test]
fn backpressure_when_client_does_not_read() {
    let mut h = Harness::new(false);
    let noops: Vec<u8> = b"NOOP\r\n".repeat(5000);
    let n = h.s.handle_input(&noops, h.now, &TestPolicy);
    assert!(n < noops.len());
    assert!(h.s.output().len() < OUTPUT_HIGH_WATER + 64);
}

#[test]
fn submission_requires_auth() {
    let now = Instant::now();
    let mut s = ServerSession::new(
        cfg(),
        ListenerKind::Submission,
        "192.0.2.1".parse().unwrap(),
        false,
        now,
    );
    s.handle_input(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\n", now, &TestPolicy);
    assert!(String::from_utf8_lossy(s.output()).ends_with("530 5.7.0 Authentication required\r\n"));
}

#[test]
fn shutdown_says_421() {
    let mut h = Harness::new(false);
    h.s.shutdown();
    assert!(h
        .take_output()
        .ends_with("421 mx.local.test Service shutting down, try again later\r\n"));
    assert!(h.s.is_closing());
}

#[test]
fn starttls_waits_discards_nothing_itself_and_resets() {
    let mut h = Harness::new(false);
    h.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nSTARTTLS\r\nMAIL FROM:<injected@x.test>\r\n");
    let out = h.take_output();
    assert!(out.contains("250 STARTTLS\r\n"), "{out}");
    assert!(
        !out.contains("AUTH"),
        "AUTH is not offered in plaintext: {out}"
    );
    assert!(out.ends_with("220 2.0.0 Ready to start TLS\r\n"), "{out}");
    // The pipelined command was not consumed: the driver drops it.
    assert_eq!(h.pending, b"MAIL FROM:<injected@x.test>\r\n");
    assert!(h.s.is_waiting_for_driver());
    h.pending.clear();
    h.s.tls_started("TLSv1.3 X".into(), h.now);
    h.send(b"MAIL FROM:<a@b.test>\r\n");
    assert_eq!(h.codes(), vec![503], "EHLO is needed again after STARTTLS");
    h.send(b"EHLO c\r\nSTARTTLS\r\n");
    let out = h.take_output();
    assert!(
        out.contains("250 AUTH PLAIN LOGIN\r\n") && !out.contains("STARTTLS"),
        "{out}"
    );
    assert!(
        out.ends_with("503 5.5.1 Error: TLS already active\r\n"),
        "{out}"
    );
    h.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<j@local.test>\r\nDATA\r\nx\r\n.\r\n");
    let msg = String::from_utf8(h.committed[0].clone()).unwrap();
    assert!(
        msg.contains("(using TLSv1.3 X)") && msg.contains("with ESMTPS id"),
        "{msg}"
    );
}

#[test]
fn auth_requires_tls_unless_allowed() {
    let mut h = Harness::new(false);
    h.send(b"EHLO c\r\nAUTH PLAIN AGpvZQBzZWNyZXQ=\r\n");
    assert!(h
        .take_output()
        .ends_with("538 5.7.11 Encryption required for requested authentication mechanism\r\n"));
}

fn tls_session(kind: ListenerKind) -> Harness {
    let mut h = Harness::new(false);
    h.s = ServerSession::new(cfg(), kind, "192.0.2.1".parse().unwrap(), false, h.now);
    h.s.set_implicit_tls("TLSv1.3 X".into());
    h.take_output();
    h
}

#[test]
fn submission_auth_plain_then_relay() {
    let mut h = tls_session(ListenerKind::Submission);
    h.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\n");
    assert!(h
        .take_output()
        .ends_with("530 5.7.0 Authentication required\r\n"));
    // "\0joe\0secret"
    h.send(b"AUTH PLAIN AGpvZQBzZWNyZXQ=\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@far.test>\r\nDATA\r\nhi\r\n.\r\n");
    assert_eq!(h.codes(), vec![235, 250, 250, 354, 250]);
    let msg = String::from_utf8(h.committed[0].clone()).unwrap();
    assert!(msg.contains("with ESMTPSA id"), "{msg}");
    assert_eq!(h.s.auth_user(), Some("joe"));
}

/// The password check is the driver's, between turns: the session
/// emits the credentials, reads nothing more and says nothing until
/// the verdict, then goes on with what was pipelined.
#[test]
fn auth_waits_for_the_drivers_verdict() {
    let mut h = tls_session(ListenerKind::Submission);
    h.send(b"EHLO c\r\n");
    h.take_output();
    let input: &[u8] = b"AUTH PLAIN AGpvZQBzZWNyZXQ=\r\nMAIL FROM:<a@b.test>\r\n";
    let used = h.s.handle_input(input, h.now, &TestPolicy);
    assert_eq!(used, input.len() - b"MAIL FROM:<a@b.test>\r\n".len());
    let Some(Event::Authenticate(c)) = h.s.poll_event() else {
        panic!("no Authenticate event");
    };
    assert_eq!((c.user.as_str(), c.password.as_str()), ("joe", "secret"));
    assert!(!format!("{c:?}").contains("secret"), "password in Debug");
    assert!(h.s.output().is_empty());
    assert!(h.s.is_waiting_for_driver());
    assert_eq!(h.s.deadline(), None);
    // Still waiting: more input is not taken.
    assert_eq!(h.s.handle_input(&input[used..], h.now, &TestPolicy), 0);
    h.s.auth_verdict(AuthVerdict::Ok, h.now);
    assert_eq!(h.take_output(), "235 2.7.0 Authentication successful\r\n");
    assert_eq!(h.s.auth_user(), Some("joe"));
    h.send(&input[used..]);
    assert_eq!(h.codes(), vec![250]);
    // A verdict nobody asked for changes nothing.
    h.s.auth_verdict(AuthVerdict::Bad, h.now);
    assert!(h.s.output().is_empty());
    assert_eq!(h.s.auth_user(), Some("joe"));
}

#[test]
fn auth_login_dialog_and_cancel() {
    let mut h = tls_session(ListenerKind::Submission);
    h.send(b"EHLO c\r\nAUTH LOGIN\r\n");
    assert!(h.take_output().ends_with("334 VXNlcm5hbWU6\r\n"));
    h.send(b"am9l\r\n");
    assert_eq!(h.take_output(), "334 UGFzc3dvcmQ6\r\n");
    h.send(b"c2VjcmV0\r\n");
    assert_eq!(h.take_output(), "235 2.7.0 Authentication successful\r\n");
    let mut h = tls_session(ListenerKind::Submission);
    h.send(b"EHLO c\r\nAUTH LOGIN\r\n*\r\nNOOP\r\n");
    let out = h.take_output();
    assert!(
        out.ends_with("501 5.7.0 Authentication cancelled\r\n250 2.0.0 Ok\r\n"),
        "{out}"
    );
}

#[test]
fn failed_auth_is_delayed_then_closes() {
    let mut h = tls_session(ListenerKind::Submission);
    // "\0joe\0wrong"
    h.send(b"EHLO c\r\nAUTH PLAIN AGpvZQB3cm9uZw==\r\nNOOP\r\n");
    let out = h.take_output();
    assert!(!out.contains("535"), "the reply is held back: {out}");
    let until = h.s.deadline().unwrap();
    assert!(until >= h.now + Duration::from_secs(1));
    h.s.handle_timeout(until);
    h.send(b"");
    let out = h.take_output();
    assert!(
        out.starts_with("535 5.7.8 Authentication credentials invalid\r\n"),
        "{out}"
    );
    assert!(
        out.ends_with("250 2.0.0 Ok\r\n"),
        "pipelined NOOP answered after the delay: {out}"
    );
    for _ in 0..2 {
        h.send(b"AUTH PLAIN AGpvZQB3cm9uZw==\r\n");
        let d = h.s.deadline().unwrap();
        h.s.handle_timeout(d);
    }
    assert!(h.take_output().contains("421"));
    assert!(h.s.is_closing());
}

#[test]
fn submission_adds_date_and_message_id_when_missing() {
    let mut h = tls_session(ListenerKind::Submission);
    h.send(b"EHLO c\r\nAUTH PLAIN AGpvZQBzZWNyZXQ=\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@far.test>\r\nDATA\r\n");
    // Split inside the header section to exercise the holding.
    h.send(b"Subject: s\r\nFr");
    h.send(b"om: a@b.test\r\n\r\nbody\r\n.\r\n");
    let msg = String::from_utf8(h.committed[0].clone()).unwrap();
    let after_received = msg.split_once("+0000\r\n").unwrap().1;
    assert_eq!(
            after_received,
            "Subject: s\r\nFrom: a@b.test\r\nDate: Sun, 29 Nov 2026 00:00:00 +0000\r\nMessage-ID: <ABC123@mx.local.test>\r\n\r\nbody\r\n"
        );
    // Present fields are left alone; relay sessions never add any.
    let mut h = tls_session(ListenerKind::Submission);
    h.send(b"EHLO c\r\nAUTH PLAIN AGpvZQBzZWNyZXQ=\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@far.test>\r\nDATA\r\nDate: x\r\nMessage-ID: <m@x>\r\n\r\nb\r\n.\r\n");
    let msg = String::from_utf8(h.committed[0].clone()).unwrap();
    assert!(
        msg.ends_with("+0000\r\nDate: x\r\nMessage-ID: <m@x>\r\n\r\nb\r\n"),
        "{msg}"
    );
    let mut h = Harness::new(false);
    h.send(TXN);
    let msg = String::from_utf8(h.committed[0].clone()).unwrap();
    assert!(!msg.contains("Message-ID") && !msg.contains("Date: "));
}

#[test]
fn smtputf8_transaction_and_utf8_paths_without_it() {
    let mut h = Harness::new(true);
    h.send("EHLO c\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<jöe@remote.test>\r\nRCPT TO:<joe@bücher.test>\r\nRSET\r\n".as_bytes());
    let out = h.take_output();
    assert!(out.contains("250-SMTPUTF8\r\n"), "{out}");
    // Non-ASCII in a path of a transaction without SMTPUTF8: 553 5.6.7,
    // for a UTF-8 local part and for a U-label domain alike.
    assert_eq!(
        out.matches("553 5.6.7 Non-ASCII address requires SMTPUTF8\r\n")
            .count(),
        2,
        "{out}"
    );
    h.send("MAIL FROM:<ä@remote.test> SMTPUTF8\r\nRCPT TO:<jöe@remote.test>\r\nDATA\r\nSubject: ü\r\n\r\nbody\r\n.\r\n".as_bytes());
    let out = h.take_output();
    assert!(out.ends_with("250 2.0.0 Ok: queued as ABC123\r\n"), "{out}");
    assert!(!out.contains("553"), "{out}");
    let msg = String::from_utf8(h.committed[0].clone()).unwrap();
    assert!(
        msg.contains("with UTF8SMTP id ABC123\r\n\tfor <jöe@remote.test>;"),
        "{msg}"
    );
}
