//! CHUNKING (RFC 3030): BDAT in the server session.

use super::*;

const ENVELOPE: &[u8] = b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<j@local.test>\r\n";

/// The stored message without the `Received:` header tern adds.
fn content(stored: &[u8]) -> &[u8] {
    let end = stored
        .windows(7)
        .position(|w| w == b"+0000\r\n")
        .expect("Received: header")
        + 7;
    &stored[end..]
}

fn bdat(size: usize, last: bool, data: &[u8]) -> Vec<u8> {
    let mut v = format!("BDAT {size}{}\r\n", if last { " LAST" } else { "" }).into_bytes();
    v.extend_from_slice(data);
    v
}

#[test]
fn pipelined_chunks_then_a_command_in_one_read() {
    let mut h = Harness::new(false);
    let mut input = ENVELOPE.to_vec();
    // Chunk content that DATA would treat specially is taken as is.
    let one = b"Subject: s\r\n\r\n.leading dot\r\n.\r\nQUIT\r\n";
    let two = b"..two\r\nend\r\n";
    input.extend(bdat(one.len(), false, one));
    input.extend(bdat(two.len(), true, two));
    input.extend_from_slice(b"NOOP\r\n");
    h.send(&input);
    let out = h.take_output();
    assert!(
        out.contains(&format!("250 2.0.0 Ok: {} octets received\r\n", one.len())),
        "{out}"
    );
    assert!(
        out.ends_with("250 2.0.0 Ok: queued as ABC123\r\n250 2.0.0 Ok\r\n"),
        "{out}"
    );
    assert!(!h.s.is_closing(), "QUIT inside the chunk is content");
    assert_eq!(h.committed.len(), 1);
    let mut want = one.to_vec();
    want.extend_from_slice(two);
    assert_eq!(content(&h.committed[0]), &want[..]);
    assert!(h.committed[0].starts_with(b"Received: from c ([192.0.2.1])"));
}

#[test]
fn chunk_split_across_many_reads() {
    let mut input = ENVELOPE.to_vec();
    let body = b"Subject: split\r\n\r\nline one\r\n.\r\nline two\r\n";
    input.extend(bdat(20, false, &body[..20]));
    input.extend(bdat(body.len() - 20, true, &body[20..]));
    input.extend_from_slice(b"RSET\r\n");
    for step in [1, 2, 3, 7, 64] {
        let mut h = Harness::new(false);
        for piece in input.chunks(step) {
            h.send(piece);
            // Bounded memory: nothing waits in the session between reads.
            assert!(h.s.body().is_empty());
        }
        assert_eq!(h.codes(), vec![220, 250, 250, 250, 250, 250, 250], "{step}");
        assert_eq!(content(&h.committed[0]), &body[..], "{step}");
    }
}

#[test]
fn bdat_zero_last() {
    let mut h = Harness::new(false);
    h.send(ENVELOPE);
    h.send(b"BDAT 0 LAST\r\n");
    assert_eq!(h.codes(), vec![220, 250, 250, 250, 250]);
    assert_eq!(content(&h.committed[0]), b"");
    // After chunks, BDAT 0 LAST ends the message.
    h.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<j@local.test>\r\n");
    h.send(&bdat(3, false, b"ab\n"));
    h.send(b"BDAT 0 LAST\r\n");
    assert_eq!(h.codes(), vec![250, 250, 250, 250]);
    assert_eq!(content(&h.committed[1]), b"ab\r\n");
}

#[test]
fn line_ends_are_stored_as_data_stores_them() {
    let mut h = Harness::new(false);
    h.send(ENVELOPE);
    // CR at the end of one chunk, LF at the start of the next: one CRLF.
    // Bare LF and bare CR become CRLF; the last line gets its CRLF.
    h.send(&bdat(6, false, b"a\nb\rc\r"));
    h.send(&bdat(6, true, b"\nd\r\nno"));
    assert_eq!(h.codes(), vec![220, 250, 250, 250, 250, 250]);
    assert_eq!(content(&h.committed[0]), b"a\r\nb\r\nc\r\nd\r\nno\r\n");
}

#[test]
fn oversize_chunk_is_refused_and_consumed() {
    let mut h = Harness::new(false);
    h.send(ENVELOPE);
    h.send(&bdat(1500, false, &[b'x'; 1500]));
    // 1500 + 600 > 2000: 552, and the 600 octets (with a QUIT in them) are
    // thrown away; the session stays in step.
    let mut big = b"QUIT\r\n".to_vec();
    big.resize(600, b'y');
    h.send(&bdat(600, false, &big));
    h.send(b"NOOP\r\n");
    h.send(&bdat(3, true, b"abc"));
    let out = h.take_output();
    assert!(
        out.contains("552 5.3.4 Error: message exceeds fixed maximum message size\r\n250 2.0.0 Ok\r\n503 5.5.1 Error: need MAIL command\r\n"),
        "{out}"
    );
    assert!(!h.s.is_closing());
    assert_eq!(h.aborted, 1);
    assert!(h.committed.is_empty());
}

#[test]
fn chunk_growing_past_the_limit_by_line_end_normalization() {
    let mut h = Harness::new(false);
    h.send(ENVELOPE);
    // 1900 bare LFs are 3800 octets stored.
    h.send(&bdat(1900, false, &[b'\n'; 1900]));
    h.send(b"NOOP\r\n");
    assert_eq!(h.codes(), vec![220, 250, 250, 250, 552, 250]);
    assert_eq!(h.aborted, 1);
}

#[test]
fn bdat_without_mail_or_rcpt_is_503_and_the_chunk_is_consumed() {
    let mut h = Harness::new(false);
    h.send(b"EHLO c\r\n");
    h.send(&bdat(6, true, b"QUIT\r\n"));
    h.send(b"MAIL FROM:<a@b.test>\r\n");
    h.send(&bdat(6, false, b"RSET\r\n"));
    h.send(b"NOOP\r\n");
    let out = h.take_output();
    assert!(
        out.ends_with("503 5.5.1 Error: need MAIL command\r\n250 2.1.0 Sender ok\r\n503 5.5.1 Error: need RCPT command\r\n250 2.0.0 Ok\r\n"),
        "{out}"
    );
    assert!(!h.s.is_closing());
    assert_eq!(h.aborted, 0);
    // The failed BDAT ended the transaction.
    h.send(b"RCPT TO:<j@local.test>\r\n");
    assert_eq!(h.codes(), vec![503]);
}

#[test]
fn data_after_bdat_is_503_and_the_chunks_go_on() {
    let mut h = Harness::new(false);
    h.send(ENVELOPE);
    h.send(&bdat(3, false, b"ab\n"));
    h.send(b"DATA\r\n");
    h.send(&bdat(3, true, b"cd\n"));
    let out = h.take_output();
    assert!(
        out.ends_with(
            "503 5.5.1 Error: DATA not allowed after BDAT\r\n250 2.0.0 Ok: queued as ABC123\r\n"
        ),
        "{out}"
    );
    assert_eq!(content(&h.committed[0]), b"ab\r\ncd\r\n");
}

#[test]
fn rset_between_chunks_discards_the_message() {
    let mut h = Harness::new(false);
    h.send(ENVELOPE);
    h.send(&bdat(3, false, b"ab\n"));
    h.send(b"RSET\r\n");
    assert_eq!(h.aborted, 1);
    h.send(&bdat(3, true, b"cd\n"));
    assert_eq!(h.codes(), vec![220, 250, 250, 250, 250, 250, 503]);
    assert!(h.committed.is_empty());
    // EHLO also ends a transaction in progress.
    h.send(ENVELOPE);
    h.send(&bdat(3, false, b"ab\n"));
    h.send(b"EHLO again\r\n");
    assert_eq!(h.aborted, 2);
    // A new transaction works after it.
    h.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<j@local.test>\r\n");
    h.send(&bdat(2, true, b"ok"));
    assert_eq!(content(&h.committed[0]), b"ok\r\n");
}

/// A session without the harness: the envelope, `chunk` and a NOOP are fed
/// once; returns the input and how much of it was taken (up to the chunk).
fn driven_by_hand(chunk: Vec<u8>) -> (ServerSession, Instant, Vec<u8>, usize) {
    let now = Instant::now();
    let peer = "192.0.2.1".parse().unwrap();
    let mut s = ServerSession::new(cfg(), ListenerKind::Relay, peer, false, now);
    let mut input = ENVELOPE.to_vec();
    input.extend(chunk);
    input.extend_from_slice(b"NOOP\r\n");
    let n = s.handle_input(&input, now, &TestPolicy);
    assert_eq!(s.poll_event(), Some(Event::DataStart));
    (s, now, input, n)
}

#[test]
fn last_chunk_is_acknowledged_only_when_durable() {
    let (mut s, now, input, n) = driven_by_hand(bdat(2, true, b"hi"));
    // Waiting for the spool: the chunk stays in the driver's buffer.
    assert!(s.is_waiting_for_driver());
    assert_eq!(&input[n..n + 4], b"hiNO");
    s.data_started("Q1", "Sun, 29 Nov 2026 00:00:00 +0000");
    let m = s.handle_input(&input[n..], now, &TestPolicy);
    assert_eq!(m, 2, "the NOOP waits until the commit");
    assert_eq!(s.poll_event(), Some(Event::Commit));
    assert!(s.summary().is_some());
    assert!(!String::from_utf8_lossy(s.output()).contains("queued"));
    assert!(s.body().ends_with(b"+0000\r\nhi\r\n"));
    s.committed(Ok("Q1"));
    assert!(String::from_utf8_lossy(s.output()).ends_with("250 2.0.0 Ok: queued as Q1\r\n"));
    assert_eq!(s.handle_input(&input[n + m..], now, &TestPolicy), 6);
}

#[test]
fn spool_refusal_and_failure_consume_the_chunk() {
    let (mut s, now, input, n) = driven_by_hand(bdat(6, false, b"QUIT\r\n"));
    s.data_refused(reply::NO_SPACE);
    assert_eq!(
        s.handle_input(&input[n..], now, &TestPolicy),
        input.len() - n
    );
    let out = String::from_utf8_lossy(s.output()).into_owned();
    assert!(
        out.ends_with("452 4.3.1 Error: insufficient system storage\r\n250 2.0.0 Ok\r\n"),
        "{out}"
    );
    assert!(!s.is_closing());

    // A write failure mid-chunk: answered, the rest thrown away.
    let mut h = Harness::new(false);
    h.send(ENVELOPE);
    h.send(b"BDAT 10\r\nabc");
    h.s.spool_failed(reply::NO_SPACE);
    assert_eq!(h.s.poll_event(), Some(Event::Abort));
    h.send(b"defghijNOOP\r\n");
    assert_eq!(h.codes(), vec![220, 250, 250, 250, 452, 250]);
    // Between chunks: the next BDAT gets the failure.
    let mut h = Harness::new(false);
    h.send(ENVELOPE);
    h.send(&bdat(3, false, b"abc"));
    h.s.spool_failed(reply::NO_SPACE);
    h.send(&bdat(3, true, b"def"));
    h.send(b"NOOP\r\n");
    assert_eq!(h.codes(), vec![220, 250, 250, 250, 250, 452, 250]);
    assert!(h.committed.is_empty());
}

#[test]
fn bdat_syntax() {
    let mut h = Harness::new(false);
    h.send(b"EHLO c\r\nBDAT\r\nBDAT x\r\nBDAT -1\r\nBDAT 1 FIRST\r\nBDAT 1 LAST x\r\nBDAT 99999999999999999999999\r\n");
    let out = h.take_output();
    assert_eq!(
        out.matches("501 5.5.4 Syntax: BDAT count [LAST]").count(),
        6,
        "{out}"
    );
    assert_eq!(
        parse_command(b"bdat 12 last"),
        Ok(Command::Bdat {
            size: 12,
            last: true
        })
    );
}

#[test]
fn submission_fixups_and_hop_limit_apply_to_bdat() {
    let mut h = tls_session(ListenerKind::Submission);
    h.send(b"EHLO c\r\nAUTH PLAIN AGpvZQBzZWNyZXQ=\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@far.test>\r\n");
    h.send(&bdat(14, false, b"Subject: s\r\nFr"));
    h.send(&bdat(22, true, b"om: a@b.test\r\n\r\nbody\r\n"));
    let msg = String::from_utf8(h.committed[0].clone()).unwrap();
    let after_received = msg.split_once("+0000\r\n").unwrap().1;
    assert_eq!(
        after_received,
        "Subject: s\r\nFrom: a@b.test\r\nDate: Sun, 29 Nov 2026 00:00:00 +0000\r\nMessage-ID: <ABC123@mx.local.test>\r\n\r\nbody\r\n"
    );
    let mut h = Harness::new(false);
    h.send(ENVELOPE);
    let hops = b"Received: 1\r\nReceived: 2\r\nReceived: 3\r\nReceived: 4\r\n\r\nx\r\n";
    h.send(&bdat(hops.len(), true, hops));
    assert!(h
        .take_output()
        .ends_with("554 5.4.6 Error: too many hops (mail loop?)\r\n"));
    assert!(h.committed.is_empty());
}

#[test]
fn timeout_and_lost_connection_mid_chunk_abort() {
    let mut h = Harness::new(false);
    h.send(ENVELOPE);
    h.send(b"BDAT 10\r\nabc");
    let d = h.s.deadline().unwrap();
    h.s.handle_timeout(d);
    assert_eq!(h.s.poll_event(), Some(Event::Abort));
    assert!(h.s.is_closing());
    let mut h = Harness::new(false);
    h.send(ENVELOPE);
    h.send(&bdat(3, false, b"abc"));
    h.s.connection_lost();
    assert_eq!(h.s.poll_event(), Some(Event::Abort));
}
