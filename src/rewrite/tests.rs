use super::header::{qualify_field, rewrite_addresses, HeaderRewriter, MAX_REWRITE_FIELD};
use super::*;

fn addr(s: &str) -> Address {
    Address::parse_mailbox(s).unwrap()
}

fn cfg(sender_address: Option<&str>) -> Config {
    Config {
        hostname: "router.lan".into(),
        local_domains: vec!["localhost".into(), "router.lan".into()],
        qualify_domain: "router.lan".into(),
        sender_address: sender_address.map(addr),
        ..Config::default()
    }
}

fn table(rules: &str, sender_address: Option<&str>) -> RewriteTable {
    let (rules, errors) = RewriteTable::parse_rules(rules);
    assert!(errors.is_empty(), "{errors:?}");
    RewriteTable::new(&cfg(sender_address), rules)
}

fn rewritten(t: &RewriteTable, sender: &str) -> Option<String> {
    t.rewrite_sender(sender).map(|a| a.to_string())
}

// --- the table ---------------------------------------------------------------

#[test]
fn rules_parse_with_comments_blank_lines_and_every_pattern_kind() {
    let text = "# senders\n\n  root   alerts@example.com  # cron\n\
                root@router.lan cron@example.com\n@router.lan me@example.com\n\
                \t* any@example.com\n";
    let (rules, errors) = RewriteTable::parse_rules(text);
    assert_eq!(errors, vec![]);
    let patterns: Vec<Pattern> = rules.iter().map(|r| r.pattern.clone()).collect();
    assert_eq!(
        patterns,
        vec![
            Pattern::User("root".into()),
            Pattern::Address(addr("root@router.lan")),
            Pattern::Domain("router.lan".into()),
            Pattern::Any,
        ]
    );
    assert_eq!(rules[0].address, addr("alerts@example.com"));
}

#[test]
fn bad_lines_are_reported_with_their_line_numbers_and_good_ones_kept() {
    let text = "root me@example.com\n\
                only-one-field\n\
                @bad..domain me@example.com\n\
                root nobody\n\
                a b c\n\
                root other@example.com\n\
                \"a b\"x me@example.com\n\
                www-data web@example.com\n";
    let (rules, errors) = RewriteTable::parse_rules(text);
    let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![2, 3, 4, 5, 6, 7], "{errors:?}");
    assert!(errors[3].message.contains("expected `PATTERN ADDRESS`"));
    assert!(errors[4]
        .message
        .contains("duplicate pattern (first on line 1)"));
    assert_eq!(
        errors[2].to_string(),
        "line 4: bad address \"nobody\" (user@domain)"
    );
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[1].pattern, Pattern::User("www-data".into()));
}

#[test]
fn first_match_wins_and_comes_before_sender_address() {
    let t = table(
        "root@router.lan exact@example.com\nroot user@example.com\n\
         @router.lan domain@example.com\n",
        Some("me@example.com"),
    );
    assert_eq!(
        rewritten(&t, "root@router.lan").as_deref(),
        Some("exact@example.com")
    );
    assert_eq!(
        rewritten(&t, "ROOT@Router.LAN").as_deref(),
        Some("exact@example.com")
    );
    // `root` is a local user: unqualified, or in a local domain.
    assert_eq!(rewritten(&t, "root").as_deref(), Some("exact@example.com"));
    assert_eq!(
        rewritten(&t, "root@localhost").as_deref(),
        Some("user@example.com")
    );
    assert_eq!(
        rewritten(&t, "cron@router.lan").as_deref(),
        Some("domain@example.com")
    );
    assert_eq!(
        rewritten(&t, "daemon").as_deref(),
        Some("domain@example.com")
    );
    // No rule: sender_address.
    assert_eq!(
        rewritten(&t, "root@elsewhere.test").as_deref(),
        Some("me@example.com")
    );
    assert_eq!(
        rewritten(&t, "joe@localhost").as_deref(),
        Some("me@example.com")
    );
    // The null sender and garbage are never rewritten.
    assert_eq!(rewritten(&t, ""), None);
    assert_eq!(rewritten(&t, "a b"), None);
    // Without sender_address, unmatched senders stay.
    let t = table("root alerts@example.com\n* any@example.com\n", None);
    assert_eq!(rewritten(&t, "root").as_deref(), Some("alerts@example.com"));
    assert_eq!(
        rewritten(&t, "root@gmail.test").as_deref(),
        Some("any@example.com")
    );
    let t = table("root alerts@example.com\n", None);
    assert_eq!(rewritten(&t, "root@gmail.test"), None);
    assert_eq!(rewritten(&t, "joe@router.lan"), None);
}

#[test]
fn only_locally_originated_mail_with_a_sender_is_rewritten_outbound() {
    let t: SenderMap = Rc::new(table("", Some("me@example.com")));
    let (s, rw) = RewriteTable::outbound(&t, QueueId(1), "root@router.lan", SenderOrigin::Local);
    assert_eq!(s, "me@example.com");
    assert!(rw.is_some());
    let (s, rw) = RewriteTable::outbound(&t, QueueId(1), "root@router.lan", SenderOrigin::Other);
    assert_eq!((s.as_str(), rw.is_none()), ("root@router.lan", true));
    let (s, rw) = RewriteTable::outbound(&t, QueueId(1), "", SenderOrigin::Local);
    assert_eq!((s.as_str(), rw.is_none()), ("", true));
    let empty: SenderMap = Rc::new(table("", None));
    let (s, rw) =
        RewriteTable::outbound(&empty, QueueId(1), "root@router.lan", SenderOrigin::Local);
    assert_eq!((s.as_str(), rw.is_none()), ("root@router.lan", true));
}

#[test]
fn smtp_clients_are_local_only_when_trusted_with_a_local_sender() {
    let local = |d: &str| d == "router.lan";
    let a = addr("nas@router.lan");
    let f = addr("nas@gmail.test");
    assert_eq!(
        SenderOrigin::of_smtp_client(Some(&a), true, &local),
        SenderOrigin::Local
    );
    assert_eq!(
        SenderOrigin::of_smtp_client(Some(&a), false, &local),
        SenderOrigin::Other
    );
    assert_eq!(
        SenderOrigin::of_smtp_client(Some(&f), true, &local),
        SenderOrigin::Other
    );
    assert_eq!(
        SenderOrigin::of_smtp_client(None, true, &local),
        SenderOrigin::Other
    );
}

#[test]
fn load_reads_the_file_and_names_file_and_line_in_problems() {
    let dir = crate::test_dir::TempDir::new("rewrite-load");
    let path = dir.0.join("sender_rewrite");
    std::fs::write(&path, "root alerts@example.com\nbad\n").unwrap();
    let mut c = cfg(None);
    c.sender_rewrite = Some(path.clone());
    let (t, problems) = RewriteTable::load(&c);
    assert_eq!(
        problems,
        vec![format!(
            "{}:2: expected `PATTERN ADDRESS`, got \"bad\"",
            path.display()
        )]
    );
    assert_eq!(rewritten(&t, "root").as_deref(), Some("alerts@example.com"));
    c.sender_rewrite = Some(dir.0.join("missing"));
    let problems = startup_problems(&c);
    assert_eq!(problems.len(), 1);
    assert!(problems[0].starts_with("sender_rewrite "), "{problems:?}");
    // Bounded read.
    std::fs::write(&path, vec![b'#'; MAX_REWRITE_FILE_BYTES as usize + 1]).unwrap();
    c.sender_rewrite = Some(path);
    assert!(startup_problems(&c)[0].contains("larger than"));
}

// --- header fields -------------------------------------------------------------

fn to_me(t: &str) -> Option<String> {
    (t.starts_with("root") || t == "cron@router.lan").then(|| "me@example.com".to_string())
}

fn value(v: &str) -> String {
    match rewrite_addresses(v.as_bytes(), &mut to_me) {
        Some(out) => String::from_utf8(out).unwrap(),
        None => v.to_string(),
    }
}

#[test]
fn addresses_are_replaced_and_everything_else_kept() {
    for (from, want) in [
        (" root", " me@example.com"),
        (
            " Cron Daemon <root@router.lan>",
            " Cron Daemon <me@example.com>",
        ),
        (
            " \"Cron, Daemon\" < root >",
            " \"Cron, Daemon\" < me@example.com >",
        ),
        (" root (Cron Daemon)", " me@example.com (Cron Daemon)"),
        (
            " (c) root@router.lan (x (nested) y)",
            " (c) me@example.com (x (nested) y)",
        ),
        (
            " a@x.test, Cron <cron@router.lan>, root",
            " a@x.test, Cron <me@example.com>, me@example.com",
        ),
        (
            " Admins: root, \"b\" <b@x.test>; , other@x.test",
            " Admins: me@example.com, \"b\" <b@x.test>; , other@x.test",
        ),
        (" undisclosed-recipients:;", " undisclosed-recipients:;"),
        (" \"root <root>\" <a@x.test>", " \"root <root>\" <a@x.test>"),
        (
            " Cron Daemon\r\n <root@router.lan>\r\n",
            " Cron Daemon\r\n <me@example.com>\r\n",
        ),
        (
            " a@x.test,\r\n\troot\r\n",
            " a@x.test,\r\n\tme@example.com\r\n",
        ),
        // Unterminated or odd forms are left whole.
        (" \"root <root>", " \"root <root>"),
        (" (root", " (root"),
        (" <root", " <root"),
        (
            " <@relay.test:root@router.lan>",
            " <@relay.test:root@router.lan>",
        ),
        (" Cron Daemon", " Cron Daemon"),
        (" root root", " root root"),
    ] {
        assert_eq!(value(from), want, "{from:?}");
    }
}

#[test]
fn bare_names_in_address_fields_are_qualified() {
    let q = |raw: &str| {
        qualify_field(raw.as_bytes(), "router.lan").map(|v| String::from_utf8(v).unwrap())
    };
    assert_eq!(q("To: root\n").as_deref(), Some("To: root@router.lan\n"));
    assert_eq!(
        q("cc: Joe <joe>, x@y.test,\n  \"Ann\" <ann>\n").as_deref(),
        Some("cc: Joe <joe@router.lan>, x@y.test,\n  \"Ann\" <ann@router.lan>\n")
    );
    assert_eq!(
        q("From: Cron Daemon <root>\r\n").as_deref(),
        Some("From: Cron Daemon <root@router.lan>\r\n")
    );
    for name in ["Bcc", "Sender", "Reply-To"] {
        assert!(q(&format!("{name}: root\n")).is_some(), "{name}");
    }
    assert_eq!(q("To: a@b.test\n"), None);
    assert_eq!(q("Subject: root\n"), None);
    assert_eq!(q("X-To: root\n"), None);
    assert_eq!(q("To: Cron Daemon\n"), None);
}

// --- the streaming rewriter ------------------------------------------------------

fn map() -> SenderMap {
    Rc::new(table("@router.lan me@example.com\n", None))
}

fn stream(chunks: &[&[u8]]) -> Vec<u8> {
    let mut rw = HeaderRewriter::new(map());
    let mut out = Vec::new();
    for c in chunks {
        rw.push(c, &mut out);
    }
    rw.finish(&mut out);
    out
}

const MESSAGE: &[u8] = b"Received: by router.lan\r\n\tid 1; x\r\n\
From: Cron Daemon <root@router.lan>\r\n\
To: far@remote.test\r\n\
Sender: (daemon)\r\n root (Cron)\r\n\
FROM:cron@router.lan,\r\n\tjoe@x.test\r\n\
Subject: root@router.lan\r\n\
\r\n\
From: root@router.lan\r\n\
Sender: root@router.lan\r\n\
body line\r\n";

const EXPECTED: &[u8] = b"Received: by router.lan\r\n\tid 1; x\r\n\
From: Cron Daemon <me@example.com>\r\n\
To: far@remote.test\r\n\
Sender: (daemon)\r\n me@example.com (Cron)\r\n\
FROM:me@example.com,\r\n\tjoe@x.test\r\n\
Subject: root@router.lan\r\n\
\r\n\
From: root@router.lan\r\n\
Sender: root@router.lan\r\n\
body line\r\n";

#[test]
fn from_and_sender_are_rewritten_and_the_body_is_not() {
    assert_eq!(
        String::from_utf8(stream(&[MESSAGE])).unwrap(),
        String::from_utf8(EXPECTED.to_vec()).unwrap()
    );
    // Bare LF lines, and a message without a body.
    assert_eq!(
        stream(&[b"From: root\nTo: x@y.test\n\nFrom: root\n"]),
        b"From: me@example.com\nTo: x@y.test\n\nFrom: root\n"
    );
    assert_eq!(stream(&[b"From: root"]), b"From: me@example.com");
    assert_eq!(stream(&[b""]), b"");
}

#[test]
fn every_split_position_gives_the_same_output() {
    for split in 0..=MESSAGE.len() {
        let (a, b) = MESSAGE.split_at(split);
        assert_eq!(stream(&[a, b]), EXPECTED, "split at {split}");
    }
    let bytes: Vec<&[u8]> = MESSAGE.chunks(1).collect();
    assert_eq!(stream(&bytes), EXPECTED, "byte by byte");
    let mut rng = crate::test_rng::TestRng::new(14);
    for _ in 0..300 {
        let mut chunks = Vec::new();
        let mut rest = MESSAGE;
        while !rest.is_empty() {
            let n = 1 + rng.below(rest.len().min(40));
            let (c, r) = rest.split_at(n);
            chunks.push(c);
            rest = r;
        }
        assert_eq!(stream(&chunks), EXPECTED);
    }
}

#[test]
fn a_field_too_long_to_hold_passes_unchanged() {
    let mut long = b"From: root@router.lan,\r\n".to_vec();
    while long.len() <= MAX_REWRITE_FIELD + 100 {
        long.extend_from_slice(b" x@y.test,\r\n");
    }
    long.extend_from_slice(b" root\r\n");
    let mut msg = long.clone();
    msg.extend_from_slice(b"Sender: root\r\n\r\nbody\r\n");
    let mut want = long;
    want.extend_from_slice(b"Sender: me@example.com\r\n\r\nbody\r\n");
    assert_eq!(stream(&[&msg]), want);
    let bytes: Vec<&[u8]> = msg.chunks(7).collect();
    assert_eq!(stream(&bytes), want);
}

/// The fuzz driver's properties over messages built from the pieces that
/// matter (quotes, comments, angles, folds, groups, empty lines).
#[test]
fn random_messages_keep_the_fuzz_properties() {
    let pieces: &[&[u8]] = &[
        b"From:",
        b"Sender:",
        b"To:",
        b"from :",
        b" ",
        b"\t",
        b"\r\n",
        b"\n",
        b"\r",
        b"root",
        b"root@router.lan",
        b"a@x.test",
        b"\"",
        b"\\",
        b"(",
        b")",
        b"<",
        b">",
        b",",
        b";",
        b":",
        b"@",
        b"Cron Daemon",
        b"\xc3\xa9",
        b"\r\n\r\n",
        b"body",
    ];
    let mut rng = crate::test_rng::TestRng::new(1414);
    for _ in 0..4000 {
        let mut data = vec![rng.below(256) as u8];
        for _ in 0..rng.below(40) {
            data.extend_from_slice(rng.pick(pieces));
        }
        crate::fuzz_targets::sender_rewrite(&data);
    }
}

#[test]
fn the_streaming_qualifier_matches_qualify_field_in_any_pieces() {
    let msg: &[u8] = b"From: root\r\nTo: root, \"A B\" <ab>,\r\n  joe@x.test\r\nSubject: root\r\n\r\nTo: root\r\n";
    let want: &[u8] = b"From: root@h.test\r\nTo: root@h.test, \"A B\" <ab@h.test>,\r\n  joe@x.test\r\nSubject: root\r\n\r\nTo: root\r\n";
    for split in 0..=msg.len() {
        let (a, b) = msg.split_at(split);
        let mut q = HeaderRewriter::qualifier("h.test");
        let mut out = Vec::new();
        q.push(a, &mut out);
        q.push(b, &mut out);
        q.finish(&mut out);
        assert_eq!(
            out,
            want,
            "split at {split}: {}",
            String::from_utf8_lossy(&out)
        );
    }
}
