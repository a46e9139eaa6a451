//! CHUNKING (RFC 3030): the body as BDAT chunks (the parent module's helpers).

use super::*;

/// Splits what was sent after the envelope into BDAT chunks: each chunk's
/// (length, LAST) and the octets they carry, concatenated.
fn chunks(mut sent: &str) -> (Vec<(usize, bool)>, String) {
    let mut heads = Vec::new();
    let mut body = String::new();
    while let Some(rest) = sent.strip_prefix("BDAT ") {
        let (line, after) = rest.split_once("\r\n").expect("BDAT line");
        let (n, last) = match line.strip_suffix(" LAST") {
            Some(n) => (n.parse::<usize>().unwrap(), true),
            None => (line.parse::<usize>().unwrap(), false),
        };
        heads.push((n, last));
        body.push_str(&after[..n]);
        sent = &after[n..];
    }
    assert_eq!(sent, "", "trailing bytes after the chunks");
    (heads, body)
}

fn chunking_harness(exts: &[&str]) -> Harness {
    let mut h = Harness::new(cfg());
    h.ready(exts);
    h
}

#[test]
fn small_message_is_one_bdat_last_without_dot_stuffing() {
    let mut h = chunking_harness(&["PIPELINING", "CHUNKING"]);
    h.start(txn(&["b@y", "c@y"]));
    // No DATA in the pipelined group: the body waits for the RCPT replies.
    assert_eq!(
        h.sent(),
        "MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\n"
    );
    h.feed("250 ok\r\n250 ok\r\n");
    assert!(h.events().is_empty());
    h.feed("550 no\r\n");
    assert_eq!(h.events(), vec![ClientEvent::WantBody]);
    assert_eq!(h.s.send_body(b".dot\r\n.\r\nend"), 12);
    h.s.finish_body(h.t0);
    // The unterminated last line gets its CRLF, counted in the length.
    assert_eq!(h.sent(), "BDAT 14 LAST\r\n.dot\r\n.\r\nend\r\n");
    h.feed("250 2.0.0 queued\r\n");
    let outcomes = done(&h.events());
    assert!(matches!(&outcomes[0], RcptOutcome::Delivered(r) if r.code == 250));
    assert!(matches!(&outcomes[1], RcptOutcome::Failed(r) if r.code == 550));
}

#[test]
fn large_body_goes_in_pipelined_chunks_of_known_length() {
    let mut h = chunking_harness(&["PIPELINING", "CHUNKING"]);
    h.start(txn(&["b@y"]));
    h.sent();
    h.feed("250 ok\r\n250 ok\r\n");
    assert_eq!(h.events(), vec![ClientEvent::WantBody]);
    let body: String = (0..3000).map(|i| format!("line {i:05} .x\r\n")).collect();
    let mut sent = String::new();
    let mut rest = body.as_bytes();
    while !rest.is_empty() {
        let took = h.s.send_body(&rest[..rest.len().min(4096)]);
        assert!(took > 0);
        rest = &rest[took..];
        sent.push_str(&h.sent());
        // Memory: the chunk being filled never exceeds one chunk.
        assert!(h.s.chunk.len() < BDAT_CHUNK);
    }
    h.s.finish_body(h.t0);
    sent.push_str(&h.sent());
    let (heads, got) = chunks(&sent);
    assert_eq!(got, body);
    let n = heads.len();
    assert!(n >= 3, "{heads:?}");
    assert!(heads[..n - 1]
        .iter()
        .all(|&(len, last)| len >= BDAT_CHUNK && !last));
    assert!(heads[n - 1].1);
    // Replies to every chunk, the last one decides.
    h.feed(&"250 2.0.0 chunk ok\r\n".repeat(n - 1));
    assert!(h.events().is_empty());
    h.feed("250 2.0.0 queued as X\r\n");
    assert!(matches!(&done(&h.events())[0], RcptOutcome::Delivered(r) if r.raw.contains("queued")));
}

#[test]
fn without_pipelining_each_chunk_waits_for_its_reply() {
    let mut h = chunking_harness(&["CHUNKING"]);
    h.start(txn(&["b@y"]));
    assert_eq!(h.sent(), "MAIL FROM:<a@x.example>\r\n");
    h.feed("250 ok\r\n");
    assert_eq!(h.sent(), "RCPT TO:<b@y>\r\n");
    h.feed("250 ok\r\n");
    assert_eq!(h.events(), vec![ClientEvent::WantBody]);
    assert_eq!(h.sent(), "", "no DATA");
    let body = vec![b'a'; BDAT_CHUNK + 10];
    let took = h.s.send_body(&body);
    assert_eq!(took, BDAT_CHUNK);
    let first = h.sent();
    assert!(first.starts_with(&format!("BDAT {BDAT_CHUNK}\r\naaa")));
    // The reply is outstanding: nothing more is taken.
    assert_eq!(h.s.send_body(&body[took..]), 0);
    h.feed("250 ok\r\n");
    assert_eq!(h.s.send_body(&body[took..]), 10);
    h.s.finish_body(h.t0);
    assert_eq!(h.sent(), "BDAT 12 LAST\r\naaaaaaaaaa\r\n");
    h.feed("250 queued\r\n");
    assert!(matches!(&done(&h.events())[0], RcptOutcome::Delivered(_)));
}

#[test]
fn refused_chunk_ends_the_transaction_and_later_replies_are_ignored() {
    let mut h = chunking_harness(&["PIPELINING", "CHUNKING"]);
    h.start(txn(&["b@y"]));
    h.sent();
    h.feed("250 ok\r\n250 ok\r\n");
    h.events();
    let body = vec![b'z'; BDAT_CHUNK * 2 + 5];
    let mut rest = &body[..];
    while !rest.is_empty() {
        let took = h.s.send_body(rest);
        rest = &rest[took..];
        h.sent();
    }
    h.s.finish_body(h.t0);
    h.sent();
    // Two chunks and the LAST were sent; the first is refused.
    h.feed("552 5.3.4 too big\r\n");
    let outcomes = done(&h.events());
    assert!(matches!(&outcomes[0], RcptOutcome::Failed(r) if r.code == 552));
    assert_eq!(h.sent(), "RSET\r\n");
    // A new transaction starts at once; the stale replies come first.
    h.start(txn(&["c@y"]));
    assert_eq!(h.sent(), "MAIL FROM:<a@x.example>\r\nRCPT TO:<c@y>\r\n");
    h.feed("503 5.5.1 no transaction\r\n503 5.5.1 no transaction\r\n250 reset\r\n");
    assert!(h.events().is_empty());
    assert!(!h.s.is_closed());
    h.feed("250 ok\r\n250 ok\r\n");
    assert_eq!(h.events(), vec![ClientEvent::WantBody]);
    h.s.send_body(b"two\r\n");
    h.s.finish_body(h.t0);
    assert_eq!(h.sent(), "BDAT 5 LAST\r\ntwo\r\n");
    h.feed("250 queued\r\n");
    assert!(matches!(&done(&h.events())[0], RcptOutcome::Delivered(_)));
}

#[test]
fn no_recipient_accepted_sends_no_chunk() {
    let mut h = chunking_harness(&["PIPELINING", "CHUNKING"]);
    h.start(txn(&["b@y"]));
    h.sent();
    h.feed("250 ok\r\n550 no\r\n");
    assert!(matches!(&done(&h.events())[0], RcptOutcome::Failed(r) if r.code == 550));
    assert_eq!(h.sent(), "RSET\r\n");
    // MAIL refused too: nothing to reset.
    h.feed("250 ok\r\n");
    h.start(txn(&["b@y"]));
    h.sent();
    h.feed("451 later\r\n503 need mail\r\n");
    assert!(matches!(&done(&h.events())[0], RcptOutcome::Deferred(r) if r.code == 451));
    assert_eq!(h.sent(), "");
}

#[test]
fn downgraded_body_is_chunked_at_its_converted_length() {
    let mut h = chunking_harness(&["PIPELINING", "CHUNKING"]);
    let mut t = txn(&["b@y"]);
    t.eight_bit = true;
    h.start(t);
    assert!(!h.sent().contains("BODY="));
    h.feed("250 ok\r\n250 ok\r\n");
    h.events();
    let body = "Subject: x\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n.caf\u{e9}\r\n";
    for piece in body.as_bytes().chunks(5) {
        assert_eq!(h.s.send_body(piece), piece.len());
    }
    h.s.finish_body(h.t0);
    let (heads, got) = chunks(&h.sent());
    assert_eq!(heads.len(), 1);
    assert!(got.is_ascii());
    assert!(
        got.ends_with("Content-Transfer-Encoding: quoted-printable\r\n\r\n.caf=C3=A9\r\n"),
        "{got}"
    );
}

#[test]
fn data_is_used_when_chunking_is_not_offered() {
    let mut h = chunking_harness(&["PIPELINING"]);
    h.start(txn(&["b@y"]));
    assert!(h.sent().ends_with("DATA\r\n"));
    h.feed("250 ok\r\n250 ok\r\n354 go\r\n");
    h.s.send_body(b".x\r\n");
    h.s.finish_body(h.t0);
    assert_eq!(h.sent(), "..x\r\n.\r\n");
}

#[test]
fn bdat_reply_timeout_names_bdat() {
    let mut h = chunking_harness(&["CHUNKING"]);
    h.start(txn(&["b@y"]));
    h.feed("250 ok\r\n");
    h.feed("250 ok\r\n");
    h.events();
    h.s.send_body(&vec![b'q'; BDAT_CHUNK]);
    h.sent();
    let deadline = h.s.poll_timeout().unwrap();
    h.s.handle_timeout(deadline);
    let ev = h.events();
    let outcomes = done(&ev);
    assert!(
        matches!(&outcomes[0], RcptOutcome::Deferred(r) if r.text().contains("BDAT") || r.text().contains("take the message")),
        "{outcomes:?}"
    );
}

/// `tern test` names the command a refusal answered from the machine's own
/// record: the last chunk is the end of the message, an earlier one DATA.
#[test]
fn refused_chunks_are_recorded_as_the_message_end_or_data() {
    let mut h = chunking_harness(&["PIPELINING", "CHUNKING", "STARTTLS"]);
    assert_eq!(h.s.facts().starttls_offered, Some(true));
    h.start(txn(&["b@y"]));
    h.sent();
    h.feed("250 ok\r\n250 ok\r\n");
    h.events();
    h.s.send_body(b"RCPT TO:<in@the.body>\r\n");
    h.s.finish_body(h.t0);
    h.sent();
    assert_eq!(h.s.facts().refused_at, None);
    h.feed("554 5.7.1 spam\r\n");
    assert_eq!(h.s.facts().refused_at, Some(Stage::Dot));

    let mut h = chunking_harness(&["PIPELINING", "CHUNKING"]);
    assert_eq!(h.s.facts().starttls_offered, Some(false));
    h.start(txn(&["b@y"]));
    h.sent();
    h.feed("250 ok\r\n250 ok\r\n");
    h.events();
    let body = vec![b'z'; BDAT_CHUNK + 5];
    h.s.send_body(&body);
    h.sent();
    h.feed("552 5.3.4 too big\r\n");
    assert_eq!(h.s.facts().refused_at, Some(Stage::Data));
    // Later refusals (the stale chunks, RSET) do not replace the first.
    h.feed("503 5.5.1 no\r\n");
    assert_eq!(h.s.facts().refused_at, Some(Stage::Data));
}
