//! REQUIRETLS (RFC 8689) in the server session: offered and accepted only
//! under TLS, stored as a flag of the transaction.

use super::*;

#[test]
fn requiretls_is_offered_and_accepted_only_under_tls() {
    let mut h = Harness::new(false);
    h.send(b"EHLO c\r\nMAIL FROM:<a@b.test> REQUIRETLS\r\n");
    let out = h.take_output();
    assert!(
        !out.contains("REQUIRETLS\r\n"),
        "not offered in plaintext: {out}"
    );
    assert!(
        out.ends_with("530 5.7.10 REQUIRETLS needs a TLS session: STARTTLS first\r\n"),
        "{out}"
    );
    assert!(h.s.envelope().is_none(), "no transaction began");
    h.send(b"STARTTLS\r\n");
    h.take_output();
    h.s.tls_started("TLSv1.3 X".into(), h.now);
    h.send(b"EHLO c\r\n");
    let out = h.take_output();
    assert!(
        out.contains("250-REQUIRETLS\r\n") || out.ends_with("250 REQUIRETLS\r\n"),
        "{out}"
    );
    h.send(b"MAIL FROM:<a@b.test> requiretls\r\nRCPT TO:<j@local.test>\r\n");
    assert_eq!(h.codes(), vec![250, 250]);
    assert!(h.s.envelope().is_some_and(|e| e.requiretls));
    // A transaction without the parameter is not flagged.
    h.send(b"RSET\r\nMAIL FROM:<a@b.test>\r\n");
    assert_eq!(h.codes(), vec![250, 250]);
    assert!(h.s.envelope().is_some_and(|e| !e.requiretls));
}

#[test]
fn requiretls_takes_no_value() {
    let mut h = Harness::new(false);
    h.s.set_implicit_tls("TLSv1.3 X".into());
    h.send(b"EHLO c\r\nMAIL FROM:<a@b.test> REQUIRETLS=yes\r\n");
    assert!(h
        .take_output()
        .ends_with("555 5.5.4 Unsupported MAIL/RCPT parameter\r\n"));
}
