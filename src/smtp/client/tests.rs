use super::*;

const T0: Duration = Duration::from_secs(0);

fn cfg() -> ClientConfig {
    ClientConfig {
        helo_name: "client.example".into(),
        tls: TlsPolicy::Never,
        tls_active: false,
        credentials: None,
        reply_timeout: Duration::from_secs(300),
        final_timeout: Duration::from_secs(600),
        lmtp: false,
    }
}

fn creds() -> Option<Credentials> {
    Some(Credentials {
        user: "user".into(),
        password: "pass".into(),
    })
}

fn txn(rcpts: &[&str]) -> Transaction {
    Transaction {
        sender: "a@x.example".into(),
        recipients: rcpts.iter().map(|r| r.to_string()).collect(),
        size: 100,
        eight_bit: false,
        smtputf8: false,
        requiretls: false,
        rewrite: None,
        dkim: None,
        dsn: Default::default(),
    }
}

fn reply(code: u16, text: &str) -> ServerReply {
    ServerReply {
        code,
        raw: text.into(),
        own: None,
    }
}

struct Harness {
    s: ClientSession,
    t0: Instant,
}

impl Harness {
    fn new(cfg: ClientConfig) -> Harness {
        let t0 = Instant::now();
        Harness {
            s: ClientSession::new(cfg, t0),
            t0,
        }
    }
    fn feed(&mut self, bytes: &str) {
        self.s.handle_input(bytes.as_bytes(), self.t0 + T0);
    }
    fn sent(&mut self) -> String {
        let bytes = self.s.poll_transmit().to_vec();
        self.s.consume_transmit(bytes.len());
        String::from_utf8_lossy(&bytes).into_owned()
    }
    fn events(&mut self) -> Vec<ClientEvent> {
        std::iter::from_fn(|| self.s.poll_event()).collect()
    }
    fn start(&mut self, t: Transaction) {
        self.s.start_transaction(t, self.t0);
    }
    /// Greeting + EHLO with the given extensions; asserts Ready.
    fn ready(&mut self, exts: &[&str]) {
        self.feed("220 mx.example ESMTP\r\n");
        assert_eq!(self.sent(), "EHLO client.example\r\n");
        self.feed(&ehlo_reply(exts));
        assert_eq!(self.events(), vec![ClientEvent::Ready]);
    }
}

fn ehlo_reply(exts: &[&str]) -> String {
    let mut lines = vec!["mx.example hello".to_string()];
    lines.extend(exts.iter().map(|e| e.to_string()));
    let n = lines.len();
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| format!("250{}{l}\r\n", if i + 1 == n { ' ' } else { '-' }))
        .collect()
}

fn done(events: &[ClientEvent]) -> Vec<RcptOutcome> {
    events
        .iter()
        .find_map(|e| match e {
            ClientEvent::TransactionDone(o) => Some(o.clone()),
            _ => None,
        })
        .expect("no TransactionDone")
}

// ---- reply parser -----------------------------------------------------

#[test]
fn reply_accessors() {
    let r = ServerReply {
        code: 550,
        raw: "5.1.1 no such user\nbye".into(),
        own: None,
    };
    assert_eq!(r.to_string(), "550 5.1.1 no such user bye");
    assert_eq!(r.text(), "5.1.1 no such user bye");
    assert_eq!(r.enhanced(), Some((5, 1, 1)));
    assert!(r.is_permanent() && !r.is_transient() && !r.is_positive());
    assert!(reply(354, "go").is_positive());
    assert!(reply(451, "x").is_transient());
    assert_eq!(reply(250, "ok").enhanced(), None);
    assert_eq!(reply(250, "2.1.0.1 ok").enhanced(), None);
    assert_eq!(reply(250, "3.1.0 ok").enhanced(), None);
    assert_eq!(reply(250, "2.1234.0 ok").enhanced(), None);
    assert_eq!(
        ServerReply {
            code: 250,
            raw: String::new(),
            own: None,
        }
        .to_string(),
        "250"
    );
}

#[test]
fn parse_reply_lines() {
    assert_eq!(
        parse_reply_line(b"250-SIZE 10"),
        Some((250, false, "SIZE 10".into()))
    );
    assert_eq!(parse_reply_line(b"250 ok"), Some((250, true, "ok".into())));
    assert_eq!(parse_reply_line(b"250"), Some((250, true, "".into())));
    assert_eq!(parse_reply_line(b"25"), None);
    assert_eq!(parse_reply_line(b"2x0 ok"), None);
    assert_eq!(parse_reply_line(b"250xok"), None);
    assert_eq!(parse_reply_line(b"650 ok"), None);
    assert_eq!(parse_reply_line(b"099 ok"), None);
}

#[test]
fn overlong_reply_line_fails_session() {
    let mut h = Harness::new(cfg());
    let long = format!("220 {}", "x".repeat(MAX_REPLY_LINE));
    h.feed(&long);
    let ev = h.events();
    assert!(
        matches!(&ev[..], [ClientEvent::SessionFailed(RcptOutcome::Deferred(r))] if r.enhanced() == Some((4, 5, 0)) && r.own == Some(Own::Protocol))
    );
    assert!(h.s.is_closed());
    assert_eq!(h.sent(), "");
}

#[test]
fn longest_legal_reply_line_is_accepted() {
    let mut h = Harness::new(cfg());
    let line = format!("220 {}\r\n", "x".repeat(MAX_REPLY_LINE - 6));
    assert_eq!(line.len(), MAX_REPLY_LINE);
    h.feed(&line);
    assert_eq!(h.sent(), "EHLO client.example\r\n");
}

#[test]
fn too_many_reply_lines_fails_session() {
    let mut h = Harness::new(cfg());
    h.feed("220 hi\r\n");
    h.sent();
    h.feed(&"250-X\r\n".repeat(MAX_REPLY_LINES + 1));
    assert!(matches!(
        h.events()[..],
        [ClientEvent::SessionFailed(RcptOutcome::Deferred(_))]
    ));
    assert!(h.s.is_closed());
}

#[test]
fn mixed_codes_in_multiline_reply_fail_session() {
    let mut h = Harness::new(cfg());
    h.feed("220 hi\r\n");
    h.feed("250-a\r\n251 b\r\n");
    assert!(matches!(h.events()[..], [ClientEvent::SessionFailed(_)]));
}

#[test]
fn extensions_parsed_case_insensitively() {
    let mut h = Harness::new(cfg());
    h.ready(&["size 2000", "AUTH=LOGIN PLAIN", "8bitmime"]);
    assert!(h.s.offers("SIZE") && h.s.offers("8BITMIME"));
    assert_eq!(h.s.size_limit(), Some(2000));
    assert!(h.s.offers_auth("plain") && h.s.offers_auth("LOGIN"));
    assert!(!h.s.offers("PIPELINING") && !h.s.offers("mx.example"));
}

// ---- happy paths ------------------------------------------------------------

const HAPPY_SETUP: &str =
        "220 mx.example ESMTP\r\n250-mx.example\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n250 8BITMIME\r\n";
const HAPPY_TXN: &str =
    "250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 unknown\r\n450 4.2.1 busy\r\n354 go\r\n";
const HAPPY_FINAL: &str = "250 2.0.0 queued as X\r\n";
const HAPPY_QUIT: &str = "221 2.0.0 bye\r\n";
const HAPPY_SENT: &str = "EHLO client.example\r\n\
        MAIL FROM:<a@x.example> SIZE=100 BODY=8BITMIME\r\n\
        RCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nRCPT TO:<d@y>\r\nDATA\r\n\
        Subject: hi\r\n\r\n..dot\r\n.\r\nQUIT\r\n";

/// Runs the pipelined dialog, each server segment cut by `split`.
fn run_happy(split: &dyn Fn(&[u8]) -> Vec<Vec<u8>>) {
    let t0 = Instant::now();
    let mut s = ClientSession::new(cfg(), t0);
    let mut out = Vec::new();
    let mut events = Vec::new();
    let pump =
        |s: &mut ClientSession, input: &str, out: &mut Vec<u8>, events: &mut Vec<ClientEvent>| {
            for piece in split(input.as_bytes()) {
                s.handle_input(&piece, t0);
                out.extend_from_slice(s.poll_transmit());
                let n = s.poll_transmit().len();
                s.consume_transmit(n);
                events.extend(std::iter::from_fn(|| s.poll_event()));
            }
        };
    pump(&mut s, HAPPY_SETUP, &mut out, &mut events);
    assert_eq!(events, vec![ClientEvent::Ready]);
    let mut t = txn(&["b@y", "c@y", "d@y"]);
    t.eight_bit = true;
    s.start_transaction(t, t0);
    pump(&mut s, HAPPY_TXN, &mut out, &mut events);
    assert_eq!(events.last(), Some(&ClientEvent::WantBody));
    assert_eq!(s.send_body(b"Subject: hi\r\n\r\n.dot"), 19);
    s.finish_body(t0);
    out.extend_from_slice(s.poll_transmit());
    let n = s.poll_transmit().len();
    s.consume_transmit(n);
    events.clear();
    pump(&mut s, HAPPY_FINAL, &mut out, &mut events);
    s.quit();
    pump(&mut s, HAPPY_QUIT, &mut out, &mut events);
    assert_eq!(String::from_utf8_lossy(&out), HAPPY_SENT);
    assert_eq!(
        events,
        vec![ClientEvent::TransactionDone(vec![
            RcptOutcome::Delivered(reply(250, "2.0.0 queued as X")),
            RcptOutcome::Failed(reply(550, "5.1.1 unknown")),
            RcptOutcome::Deferred(reply(450, "4.2.1 busy")),
        ])]
    );
    assert!(s.is_closed());
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn pipelined_happy_path_split_at_every_byte_boundary() {
    let longest = HAPPY_SETUP.len().max(HAPPY_TXN.len());
    for k in 0..=longest {
        run_happy(&|b: &[u8]| {
            let (x, y) = b.split_at(k.min(b.len()));
            vec![x.to_vec(), y.to_vec()]
        });
    }
    run_happy(&|b: &[u8]| b.iter().map(|&c| vec![c]).collect());
}

#[test]
fn lockstep_without_pipelining() {
    let mut h = Harness::new(cfg());
    h.ready(&["SIZE"]);
    h.start(txn(&["b@y", "c@y"]));
    assert_eq!(h.sent(), "MAIL FROM:<a@x.example> SIZE=100\r\n");
    h.feed("250 ok\r\n");
    assert_eq!(h.sent(), "RCPT TO:<b@y>\r\n");
    h.feed("550 no\r\n");
    assert_eq!(h.sent(), "RCPT TO:<c@y>\r\n");
    h.feed("250 ok\r\n");
    assert_eq!(h.sent(), "DATA\r\n");
    h.feed("354 go\r\n");
    assert_eq!(h.events(), vec![ClientEvent::WantBody]);
    h.s.send_body(b"x\r\n");
    h.s.finish_body(h.t0);
    assert_eq!(h.sent(), "x\r\n.\r\n");
    h.feed("250 ok\r\n");
    assert_eq!(
        done(&h.events()),
        vec![
            RcptOutcome::Failed(reply(550, "no")),
            RcptOutcome::Delivered(reply(250, "ok"))
        ]
    );
}

#[test]
fn helo_fallback_when_ehlo_refused() {
    let mut h = Harness::new(cfg());
    h.feed("220 old.example\r\n");
    assert_eq!(h.sent(), "EHLO client.example\r\n");
    h.feed("502 5.5.1 what\r\n");
    assert_eq!(h.sent(), "HELO client.example\r\n");
    h.feed("250 old.example\r\n");
    assert_eq!(h.events(), vec![ClientEvent::Ready]);
    let mut t = txn(&["b@y"]);
    t.eight_bit = true;
    h.start(t);
    assert_eq!(h.sent(), "MAIL FROM:<a@x.example>\r\n");
    // The first refusal answered EHLO; HELO's reply lists no STARTTLS.
    assert_eq!(
        h.s.facts(),
        SessionFacts {
            refused_at: Some(Stage::Ehlo),
            starttls_offered: Some(false),
        }
    );
}

#[test]
fn a_refused_recipient_is_recorded_as_rcpt_not_as_the_data_after_it() {
    let mut h = Harness::new(cfg());
    h.ready(&["PIPELINING"]);
    h.start(txn(&["b@y", "c@y"]));
    h.sent();
    h.feed("250 ok\r\n550 5.1.1 no\r\n250 ok\r\n354 go\r\n");
    assert_eq!(h.s.facts().refused_at, Some(Stage::Rcpt));
}

#[test]
fn null_sender_and_eight_bit_without_8bitmime() {
    let mut h = Harness::new(cfg());
    h.ready(&["PIPELINING"]);
    let mut t = txn(&["b@y"]);
    t.sender = String::new();
    t.eight_bit = true;
    h.start(t);
    assert_eq!(h.sent(), "MAIL FROM:<>\r\nRCPT TO:<b@y>\r\nDATA\r\n");
}

/// Runs an 8-bit transaction with one recipient to a server offering
/// `exts`, streams `body` in 7-octet chunks; returns what was sent after
/// DATA and the events.
fn eight_bit_body(exts: &[&str], body: &[u8]) -> (String, Vec<ClientEvent>, bool) {
    let mut h = Harness::new(cfg());
    h.ready(exts);
    let mut t = txn(&["b@y"]);
    t.eight_bit = true;
    h.start(t);
    let mail = h.sent();
    assert!(mail.starts_with("MAIL FROM:<a@x.example>"), "{mail}");
    if !exts.contains(&"PIPELINING") {
        h.feed("250 ok\r\n");
        h.sent();
        h.feed("250 ok\r\n");
        h.sent();
    } else {
        h.feed("250 ok\r\n250 ok\r\n");
    }
    h.feed("354 go\r\n");
    assert_eq!(h.events(), vec![ClientEvent::WantBody]);
    for piece in body.chunks(7) {
        assert_eq!(h.s.send_body(piece), piece.len());
    }
    h.s.finish_body(h.t0);
    let sent = h.sent();
    let events = h.events();
    (format!("{mail}{sent}"), events, h.s.is_closed())
}

#[test]
fn eight_bit_body_declared_to_an_8bitmime_server_and_sent_as_is() {
    let body = "Subject: x\r\n\r\ncaf\u{e9}\r\n".as_bytes();
    let (sent, _, _) = eight_bit_body(&["PIPELINING", "8BITMIME"], body);
    assert!(
        sent.starts_with("MAIL FROM:<a@x.example> BODY=8BITMIME\r\n"),
        "{sent}"
    );
    assert!(
        sent.ends_with("Subject: x\r\n\r\ncaf\u{e9}\r\n.\r\n"),
        "{sent}"
    );
    // SMTPUTF8 implies 8-bit transport (RFC 6531 §3.1): no downgrade.
    let (sent, _, _) = eight_bit_body(&["PIPELINING", "SMTPUTF8"], body);
    assert!(sent.ends_with("caf\u{e9}\r\n.\r\n"), "{sent}");
}

/// Issue 14: the `From:` rewrite runs on the stored body before the 7-bit
/// downgrade and dot-stuffing, in any chunking, including the held last
/// field at `finish_body`.
#[test]
fn header_rewrite_runs_before_the_downgrade_and_dot_stuffing() {
    let conf = crate::config::Config {
        local_domains: vec!["router.lan".into()],
        qualify_domain: "router.lan".into(),
        sender_address: crate::smtp::address::Address::parse_mailbox("me@example.com").ok(),
        ..crate::config::Config::default()
    };
    let table = std::rc::Rc::new(crate::rewrite::RewriteTable::new(&conf, Vec::new()));
    let body = "From: Cron Daemon <root@router.lan>\r\nContent-Type: text/plain; charset=utf-8\r\n\
                Content-Transfer-Encoding: 8bit\r\n\r\n.caf\u{e9}\r\nFrom: root\r\n"
        .as_bytes();
    for chunk in [1, 7, 64, body.len()] {
        let mut h = Harness::new(cfg());
        h.ready(&["PIPELINING"]);
        let mut t = txn(&["b@y"]);
        t.eight_bit = true;
        t.rewrite = Some(table.clone());
        h.start(t);
        h.sent();
        h.feed("250 ok\r\n250 ok\r\n354 go\r\n");
        h.events();
        for piece in body.chunks(chunk) {
            assert_eq!(h.s.send_body(piece), piece.len());
        }
        h.s.finish_body(h.t0);
        let sent = h.sent();
        assert!(
            sent.starts_with("From: Cron Daemon <me@example.com>\r\n"),
            "{chunk}: {sent}"
        );
        assert!(
            sent.ends_with("\r\n\r\n..caf=C3=A9\r\nFrom: root\r\n.\r\n"),
            "{chunk}: {sent}"
        );
    }
    // A header-only message: the held field comes out at the end.
    let mut h = Harness::new(cfg());
    h.ready(&["PIPELINING", "8BITMIME"]);
    let mut t = txn(&["b@y"]);
    t.rewrite = Some(table);
    h.start(t);
    h.sent();
    h.feed("250 ok\r\n250 ok\r\n354 go\r\n");
    h.s.send_body(b"From: root");
    h.s.finish_body(h.t0);
    assert_eq!(h.sent(), "From: me@example.com\r\n.\r\n");
}

#[test]
fn eight_bit_body_is_downgraded_for_a_7bit_server() {
    let body = "Subject: x\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n.caf\u{e9}\r\n".as_bytes();
    let (sent, events, closed) = eight_bit_body(&["PIPELINING"], body);
    assert!(!sent.contains("BODY="), "{sent}");
    assert!(sent.is_ascii(), "{sent}");
    assert!(
        sent.ends_with("Content-Transfer-Encoding: quoted-printable\r\n\r\n..caf=C3=A9\r\n.\r\n"),
        "{sent}"
    );
    assert!(events.is_empty() && !closed);
}

#[test]
fn unconvertible_body_fails_with_5_6_3_and_drops_the_connection() {
    let body = "Subject: caf\u{e9}\r\n\r\nx\r\n".as_bytes();
    let (sent, events, closed) = eight_bit_body(&[], body);
    assert!(
        !sent.contains(".\r\n") && !sent.contains('\u{e9}'),
        "{sent:?}"
    );
    assert!(closed);
    let [ClientEvent::TransactionDone(outcomes)] = events.as_slice() else {
        panic!("{events:?}");
    };
    let [RcptOutcome::Failed(r)] = outcomes.as_slice() else {
        panic!("{outcomes:?}");
    };
    assert_eq!(r.code, 554);
    assert_eq!(r.enhanced(), Some((5, 6, 3)));
    assert!(r.text().contains("8-bit octets in a header"), "{r}");
}

#[test]
fn two_transactions_on_one_connection() {
    let mut h = Harness::new(cfg());
    h.ready(&["PIPELINING"]);
    for round in 0..2 {
        h.start(txn(&["b@y"]));
        assert_eq!(
            h.sent(),
            "MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y>\r\nDATA\r\n"
        );
        h.feed("250 ok\r\n250 ok\r\n354 go\r\n");
        assert_eq!(h.events(), vec![ClientEvent::WantBody]);
        // The second body starts with a dot: stuffing state was reset.
        h.s.send_body(if round == 0 { b"one\r\n" } else { b".two\r\n" });
        h.s.finish_body(h.t0);
        assert_eq!(
            h.sent(),
            if round == 0 {
                "one\r\n.\r\n"
            } else {
                "..two\r\n.\r\n"
            }
        );
        h.feed("250 queued\r\n");
        assert_eq!(
            done(&h.events()),
            vec![RcptOutcome::Delivered(reply(250, "queued"))]
        );
    }
}

#[test]
fn start_transaction_before_ready_defers() {
    let mut h = Harness::new(cfg());
    h.start(txn(&["b@y", "c@y"]));
    let outcomes = done(&h.events());
    assert_eq!(outcomes.len(), 2);
    assert!(outcomes
        .iter()
        .all(|o| matches!(o, RcptOutcome::Deferred(_))));
    assert_eq!(h.sent(), "");
}

#[test]
fn bad_addresses_never_reach_the_wire() {
    let mut h = Harness::new(cfg());
    h.ready(&["PIPELINING"]);
    h.start(txn(&["evil@y>\r\nRSET", "b@y"]));
    assert_eq!(
        h.sent(),
        "MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y>\r\nDATA\r\n"
    );
    h.feed("250 ok\r\n250 ok\r\n354 go\r\n");
    h.s.finish_body(h.t0);
    h.feed("250 ok\r\n");
    h.sent();
    let outcomes = done(&h.events());
    assert!(matches!(&outcomes[0], RcptOutcome::Failed(r) if r.enhanced() == Some((5, 1, 3))));
    assert_eq!(outcomes[1], RcptOutcome::Delivered(reply(250, "ok")));

    let mut t = txn(&["b@y"]);
    t.sender = "a@x\r\nQUIT".into();
    h.start(t);
    assert!(
        matches!(&done(&h.events())[..], [RcptOutcome::Failed(r)] if r.enhanced() == Some((5, 1, 7)))
    );
    assert_eq!(h.sent(), "");
}

// ---- failures by stage ------------------------------------------------

#[test]
fn greeting_5xx_and_4xx_defer_and_quit() {
    for code in ["554", "450"] {
        let mut h = Harness::new(cfg());
        h.feed(&format!("{code} go away\r\n"));
        let ev = h.events();
        assert!(
            matches!(&ev[..], [ClientEvent::SessionFailed(RcptOutcome::Deferred(r))] if r.code.to_string() == code && r.own.is_none())
        );
        assert_eq!(h.sent(), "QUIT\r\n");
        assert!(h.s.is_closed());
        h.feed("221 bye\r\n");
        assert!(h.events().is_empty());
    }
}

#[test]
fn greeting_421_closes_without_quit() {
    let mut h = Harness::new(cfg());
    h.feed("421 4.3.2 busy\r\n");
    assert_eq!(
        h.events(),
        vec![ClientEvent::SessionFailed(RcptOutcome::Deferred(reply(
            421,
            "4.3.2 busy"
        )))]
    );
    assert_eq!(h.sent(), "");
    assert!(h.s.is_closed());
}

#[test]
fn ehlo_4xx_defers() {
    let mut h = Harness::new(cfg());
    h.feed("220 hi\r\n");
    h.sent();
    h.feed("451 later\r\n");
    assert!(matches!(
        h.events()[..],
        [ClientEvent::SessionFailed(RcptOutcome::Deferred(_))]
    ));
    assert_eq!(h.sent(), "QUIT\r\n");
}

#[test]
fn helo_failure_defers() {
    let mut h = Harness::new(cfg());
    h.feed("220 hi\r\n500 no\r\n");
    h.sent();
    h.feed("501 no\r\n");
    assert!(matches!(
        h.events()[..],
        [ClientEvent::SessionFailed(RcptOutcome::Deferred(_))]
    ));
}

#[test]
fn mail_rejected_lockstep() {
    for (code, permanent) in [(451, false), (550, true)] {
        let mut h = Harness::new(cfg());
        h.ready(&[]);
        h.start(txn(&["b@y", "c@y"]));
        h.sent();
        h.feed(&format!("{code} sender refused\r\n"));
        let r = reply(code, "sender refused");
        let expected = if permanent {
            RcptOutcome::Failed(r)
        } else {
            RcptOutcome::Deferred(r)
        };
        assert_eq!(done(&h.events()), vec![expected.clone(), expected]);
        assert_eq!(h.sent(), "", "no RCPT and no RSET after a refused MAIL");
    }
}

#[test]
fn mail_rejected_pipelined_consumes_all_replies() {
    let mut h = Harness::new(cfg());
    h.ready(&["PIPELINING"]);
    h.start(txn(&["b@y", "c@y"]));
    h.sent();
    h.feed("550 5.7.1 no\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n");
    assert!(h.events().is_empty());
    h.feed("503 5.5.1 no valid recipients\r\n");
    let r = reply(550, "5.7.1 no");
    assert_eq!(
        done(&h.events()),
        vec![RcptOutcome::Failed(r.clone()), RcptOutcome::Failed(r)]
    );
    assert_eq!(h.sent(), "");
    // The connection is reusable.
    h.start(txn(&["b@y"]));
    assert!(h.sent().starts_with("MAIL FROM"));
}

#[test]
fn data_refused_resets_and_settles_accepted() {
    for (code, permanent) in [(451, false), (554, true)] {
        let mut h = Harness::new(cfg());
        h.ready(&[]);
        h.start(txn(&["b@y"]));
        h.feed("250 ok\r\n250 ok\r\n");
        h.sent();
        h.feed(&format!("{code} data refused\r\n"));
        let r = reply(code, "data refused");
        let expected = if permanent {
            RcptOutcome::Failed(r)
        } else {
            RcptOutcome::Deferred(r)
        };
        assert_eq!(done(&h.events()), vec![expected]);
        assert_eq!(h.sent(), "RSET\r\n");
    }
}

#[test]
fn final_reply_4xx_and_5xx() {
    for (code, permanent) in [(452, false), (552, true)] {
        let mut h = Harness::new(cfg());
        h.ready(&["PIPELINING"]);
        h.start(txn(&["b@y", "c@y"]));
        h.feed("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n");
        h.s.finish_body(h.t0);
        h.sent();
        h.feed(&format!("{code} not stored\r\n"));
        let r = reply(code, "not stored");
        let expected = if permanent {
            RcptOutcome::Failed(r)
        } else {
            RcptOutcome::Deferred(r)
        };
        assert_eq!(done(&h.events()), vec![expected.clone(), expected]);
        assert_eq!(h.sent(), "", "no RSET needed after the final reply");
    }
}

#[test]
fn server_421_mid_transaction() {
    let mut h = Harness::new(cfg());
    h.ready(&["PIPELINING"]);
    h.start(txn(&["b@y", "c@y", "d@y"]));
    h.sent();
    h.feed("250 ok\r\n250 ok\r\n550 5.1.1 unknown\r\n421 4.3.0 shutting down\r\n");
    let r421 = reply(421, "4.3.0 shutting down");
    assert_eq!(
        h.events(),
        vec![
            ClientEvent::TransactionDone(vec![
                RcptOutcome::Deferred(r421.clone()),
                RcptOutcome::Failed(reply(550, "5.1.1 unknown")),
                RcptOutcome::Deferred(r421.clone()),
            ]),
            ClientEvent::SessionFailed(RcptOutcome::Deferred(r421)),
        ]
    );
    assert_eq!(h.sent(), "");
    assert!(h.s.is_closed());
    assert_eq!(h.s.poll_timeout(), None);
    h.feed("250 late\r\n");
    assert!(h.events().is_empty());
}

#[test]
fn unsolicited_reply_during_body_fails_session() {
    let mut h = Harness::new(cfg());
    h.ready(&["PIPELINING"]);
    h.start(txn(&["b@y"]));
    h.feed("250 ok\r\n250 ok\r\n354 go\r\n");
    h.events();
    h.feed("554 go away\r\n");
    let ev = h.events();
    assert_eq!(
        done(&ev),
        vec![RcptOutcome::Deferred(reply(554, "go away"))]
    );
    assert!(matches!(ev.last(), Some(ClientEvent::SessionFailed(_))));
    assert_eq!(h.s.send_body(b"x"), 0);
}

#[test]
fn size_over_server_limit_fails_without_sending() {
    let mut h = Harness::new(cfg());
    h.ready(&["PIPELINING", "SIZE 1000"]);
    let mut t = txn(&["b@y", "c@y"]);
    t.size = 1001;
    h.start(t);
    let outcomes = done(&h.events());
    assert_eq!(outcomes.len(), 2);
    for o in outcomes {
        assert!(
            matches!(&o, RcptOutcome::Failed(r) if r.code == 552 && r.enhanced() == Some((5, 3, 4)))
        );
    }
    assert_eq!(h.sent(), "");
    // SIZE 0 means no limit.
    let mut h = Harness::new(cfg());
    h.ready(&["SIZE 0"]);
    let mut t = txn(&["b@y"]);
    t.size = 1 << 40;
    h.start(t);
    assert_eq!(
        h.sent(),
        format!("MAIL FROM:<a@x.example> SIZE={}\r\n", 1u64 << 40)
    );
}

#[test]
fn smtputf8_needed() {
    let mut h = Harness::new(cfg());
    h.ready(&["8BITMIME"]);
    let mut t = txn(&["ü@y"]);
    t.smtputf8 = true;
    h.start(t.clone());
    assert!(
        matches!(&done(&h.events())[..], [RcptOutcome::Failed(r)] if r.enhanced() == Some((5, 6, 7)))
    );
    assert_eq!(h.sent(), "");

    let mut h = Harness::new(cfg());
    h.ready(&["8BITMIME", "SMTPUTF8"]);
    t.eight_bit = true;
    h.start(t);
    assert_eq!(
        h.sent(),
        "MAIL FROM:<a@x.example> BODY=8BITMIME SMTPUTF8\r\n"
    );
}

// ---- all recipients rejected -----------------------------------------------

#[test]
fn all_recipients_rejected_lockstep_sends_no_data() {
    let mut h = Harness::new(cfg());
    h.ready(&[]);
    h.start(txn(&["b@y", "c@y"]));
    h.feed("250 ok\r\n550 no\r\n450 later\r\n");
    assert_eq!(
        h.sent(),
        "MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nRSET\r\n"
    );
    assert_eq!(
        done(&h.events()),
        vec![
            RcptOutcome::Failed(reply(550, "no")),
            RcptOutcome::Deferred(reply(450, "later"))
        ]
    );
    // Next MAIL waits for the RSET reply in lock-step.
    h.start(txn(&["d@y"]));
    assert_eq!(h.sent(), "");
    h.feed("250 reset\r\n");
    assert_eq!(h.sent(), "MAIL FROM:<a@x.example>\r\n");
}

#[test]
fn all_recipients_rejected_pipelined_resets_after_data_refusal() {
    let mut h = Harness::new(cfg());
    h.ready(&["PIPELINING"]);
    h.start(txn(&["b@y"]));
    h.sent();
    h.feed("250 ok\r\n550 no\r\n554 5.5.1 no valid recipients\r\n");
    assert_eq!(
        done(&h.events()),
        vec![RcptOutcome::Failed(reply(550, "no"))]
    );
    assert_eq!(h.sent(), "RSET\r\n");
    // Pipelined: the next group may follow the RSET at once.
    h.start(txn(&["c@y"]));
    assert_eq!(
        h.sent(),
        "MAIL FROM:<a@x.example>\r\nRCPT TO:<c@y>\r\nDATA\r\n"
    );
    h.feed("250 reset\r\n250 ok\r\n250 ok\r\n354 go\r\n");
    assert_eq!(h.events(), vec![ClientEvent::WantBody]);
}

#[test]
fn all_recipients_rejected_pipelined_bogus_354() {
    let mut h = Harness::new(cfg());
    h.ready(&["PIPELINING"]);
    h.start(txn(&["b@y"]));
    h.sent();
    h.feed("250 ok\r\n550 no\r\n354 go\r\n");
    assert_eq!(h.sent(), ".\r\n");
    assert!(h.events().is_empty());
    h.feed("554 no recipients\r\n");
    assert_eq!(
        done(&h.events()),
        vec![RcptOutcome::Failed(reply(550, "no"))]
    );
    assert_eq!(h.sent(), "RSET\r\n");
}

#[test]
fn rset_refused_ends_session() {
    let mut h = Harness::new(cfg());
    h.ready(&[]);
    h.start(txn(&["b@y"]));
    h.feed("250 ok\r\n550 no\r\n");
    h.events();
    h.sent();
    h.feed("500 what\r\n");
    assert!(matches!(h.events()[..], [ClientEvent::SessionFailed(_)]));
    assert_eq!(h.sent(), "QUIT\r\n");
}

// ---- body -----------------------------------------------------------------

fn in_body() -> Harness {
    let mut h = Harness::new(cfg());
    h.ready(&["PIPELINING"]);
    h.start(txn(&["b@y"]));
    h.feed("250 ok\r\n250 ok\r\n354 go\r\n");
    h.sent();
    assert_eq!(h.events(), vec![ClientEvent::WantBody]);
    h
}

#[test]
fn dot_stuffing_across_chunks_and_final_crlf() {
    let mut h = in_body();
    for chunk in [
        &b".first\r"[..],
        b"\n.",
        b"dot\r\n",
        b"",
        b"..two\r\nno.stuff\r\n",
        b"end",
    ] {
        assert_eq!(h.s.send_body(chunk), chunk.len());
    }
    h.s.finish_body(h.t0);
    assert_eq!(
        h.sent(),
        "..first\r\n..dot\r\n...two\r\nno.stuff\r\nend\r\n.\r\n"
    );
}

/// The run-copying stuffer agrees with the rule applied octet by octet,
/// however the body is cut into chunks.
#[test]
fn dot_stuffing_matches_per_octet_rule_at_every_split() {
    let body: &[u8] = b".a\r\n..b\n.\r\nx.y\r\n.\n\n.z.\r\n.";
    let mut want = Vec::new();
    let mut prev = b'\n';
    for &b in body {
        if b == b'.' && prev == b'\n' {
            want.push(b'.');
        }
        want.push(b);
        prev = b;
    }
    want.extend_from_slice(b"\r\n.\r\n");
    let want = String::from_utf8(want).unwrap();
    for cut1 in 0..=body.len() {
        for cut2 in cut1..=body.len() {
            let mut h = in_body();
            for part in [&body[..cut1], &body[cut1..cut2], &body[cut2..]] {
                assert_eq!(h.s.send_body(part), part.len());
            }
            h.s.finish_body(h.t0);
            assert_eq!(h.sent(), want, "cuts at {cut1}, {cut2}");
        }
    }
}

#[test]
fn body_ending_in_crlf_gets_no_extra_line() {
    let mut h = in_body();
    h.s.send_body(b"a\r\n");
    h.s.finish_body(h.t0);
    assert_eq!(h.sent(), "a\r\n.\r\n");
}

#[test]
fn empty_body_and_bare_lf_ending() {
    let mut h = in_body();
    h.s.finish_body(h.t0);
    assert_eq!(h.sent(), ".\r\n");
    let mut h = in_body();
    h.s.send_body(b"a\n.b\n");
    h.s.finish_body(h.t0);
    assert_eq!(h.sent(), "a\n..b\n\r\n.\r\n");
}

#[test]
fn body_backpressure_at_high_water() {
    let mut h = in_body();
    let body = vec![b'x'; BODY_HIGH_WATER + 4000];
    let taken = h.s.send_body(&body);
    assert_eq!(taken, BODY_HIGH_WATER);
    assert_eq!(h.s.send_body(&body[taken..]), 0);
    assert_eq!(h.s.poll_transmit().len(), BODY_HIGH_WATER);
    h.s.consume_transmit(1000);
    assert_eq!(h.s.send_body(&body[taken..]), 1000);
    assert!(h.s.poll_transmit().len() <= BODY_HIGH_WATER);
    // Stuffing may go past the mark by at most one chunk's dots.
    h.s.consume_transmit(usize::MAX);
    let dots = vec![b'\n'; BODY_HIGH_WATER * 2];
    h.s.send_body(&dots);
    assert!(h.s.poll_transmit().len() <= 2 * BODY_HIGH_WATER);
}

#[test]
fn send_body_outside_body_phase_takes_nothing() {
    let mut h = Harness::new(cfg());
    h.ready(&[]);
    assert_eq!(h.s.send_body(b"x"), 0);
    h.s.finish_body(h.t0);
    assert_eq!(h.sent(), "");
}

// ---- STARTTLS ----------------------------------------------------------

#[test]
fn starttls_required_but_not_offered() {
    let mut h = Harness::new(ClientConfig {
        tls: TlsPolicy::Required,
        ..cfg()
    });
    h.feed("220 hi\r\n");
    h.sent();
    h.feed(&ehlo_reply(&["PIPELINING"]));
    let ev = h.events();
    assert!(
        matches!(&ev[..], [ClientEvent::SessionFailed(RcptOutcome::Deferred(r))] if r.enhanced() == Some((4, 7, 0)) && r.own == Some(Own::Tls))
    );
    assert_eq!(h.sent(), "QUIT\r\n");
}

#[test]
fn starttls_then_ehlo_again_and_injected_bytes_discarded() {
    let mut h = Harness::new(ClientConfig {
        tls: TlsPolicy::Required,
        ..cfg()
    });
    h.feed("220 hi\r\n");
    h.sent();
    h.feed(&ehlo_reply(&["STARTTLS", "X-PRE-TLS"]));
    assert_eq!(h.sent(), "STARTTLS\r\n");
    h.feed("220 go ahead\r\n250 injected\r\n250-inj");
    assert_eq!(h.events(), vec![ClientEvent::StartTls]);
    assert!(h.s.poll_timeout().is_some(), "handshake has a deadline");
    h.feed("more plaintext\r\n");
    assert_eq!(h.sent(), "");
    h.s.tls_established(h.t0);
    assert!(h.s.tls_active());
    assert!(!h.s.offers("X-PRE-TLS"), "pre-TLS extensions forgotten");
    assert_eq!(h.sent(), "EHLO client.example\r\n");
    h.feed(&ehlo_reply(&["PIPELINING"]));
    assert_eq!(h.events(), vec![ClientEvent::Ready]);
    assert!(h.s.offers("PIPELINING") && !h.s.offers("STARTTLS"));
}

#[test]
fn starttls_refused_if_offered_continues_plaintext() {
    let mut h = Harness::new(ClientConfig {
        tls: TlsPolicy::IfOffered,
        ..cfg()
    });
    h.feed("220 hi\r\n");
    h.feed(&ehlo_reply(&["STARTTLS"]));
    h.sent();
    h.feed("454 4.7.0 TLS not available\r\n");
    assert_eq!(h.events(), vec![ClientEvent::Ready]);
    assert!(!h.s.tls_active());
}

#[test]
fn starttls_refused_when_required_defers() {
    let mut h = Harness::new(ClientConfig {
        tls: TlsPolicy::Required,
        ..cfg()
    });
    h.feed("220 hi\r\n");
    h.feed(&ehlo_reply(&["STARTTLS"]));
    h.sent();
    h.feed("554 5.7.0 no TLS for you\r\n");
    assert_eq!(
        h.events(),
        vec![ClientEvent::SessionFailed(RcptOutcome::Deferred(reply(
            554,
            "5.7.0 no TLS for you"
        )))]
    );
    assert_eq!(h.sent(), "QUIT\r\n");
}

#[test]
fn implicit_tls_skips_starttls() {
    let mut h = Harness::new(ClientConfig {
        tls: TlsPolicy::Required,
        tls_active: true,
        ..cfg()
    });
    h.ready(&["STARTTLS"]);
    assert_eq!(h.sent(), "");
}

// AUTH, deadlines and the end of a session: in `tests/session.rs`.
mod chunking;
mod dsn;
mod lmtp;
mod requiretls;
mod session;
// The DKIM-Signature field in front of the message: in `tests/dkim.rs`.
mod dkim;
