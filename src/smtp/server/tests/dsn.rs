//! DSN parameters (RFC 3461) in the server session.

use super::*;
use crate::smtp::dsn::{Notify, Orcpt, Ret};

#[test]
fn dsn_parameters_reach_the_envelope() {
    let mut h = Harness::new(true);
    h.send(b"EHLO c\r\nMAIL FROM:<a@remote.test> RET=HDRS ENVID=ab+2Bc\r\nRCPT TO:<x@remote.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;y+2Bz@orig.test\r\nRCPT TO:<w@remote.test>\r\n");
    let out = h.take_output();
    assert!(out.contains("250-DSN\r\n"), "{out}");
    assert_eq!(out.matches("250 2.1.5").count(), 2, "{out}");
    let env = h.s.envelope().unwrap();
    assert_eq!(env.dsn.ret, Some(Ret::Hdrs));
    assert_eq!(env.dsn.envid.as_deref(), Some("ab+c"));
    let d = env.dsn_for("x@remote.test");
    assert_eq!(
        d.notify,
        Some(Notify {
            success: true,
            failure: true,
            delay: false
        })
    );
    assert_eq!(
        d.orcpt,
        Some(Orcpt {
            addr_type: "rfc822".into(),
            addr: "y+z@orig.test".into()
        })
    );
    assert_eq!(env.dsn_for("w@remote.test"), Default::default());
}

#[test]
fn malformed_dsn_parameters_are_501() {
    // A fresh session for each line (errors count towards a close).
    for bad in [
        "MAIL FROM:<a@remote.test> RET=BODY\r\n",
        "MAIL FROM:<a@remote.test> RET=FULL RET=HDRS\r\n",
        "MAIL FROM:<a@remote.test> ENVID=a=b\r\n",
    ] {
        let mut h = Harness::new(true);
        h.send(b"EHLO c\r\n");
        h.take_output();
        h.send(bad.as_bytes());
        let out = h.take_output();
        assert!(out.starts_with("501 5.5.4 "), "{bad}: {out}");
    }
    for bad in [
        "RCPT TO:<x@remote.test> NOTIFY=NEVER,FAILURE\r\n",
        "RCPT TO:<x@remote.test> NOTIFY=\r\n",
        "RCPT TO:<x@remote.test> ORCPT=x@y\r\n",
        "RCPT TO:<x@remote.test> ORCPT=rfc822;x+zz@y\r\n",
        "RCPT TO:<x@remote.test> NOTIFY=DELAY NOTIFY=DELAY\r\n",
    ] {
        let mut h = Harness::new(true);
        h.send(b"EHLO c\r\nMAIL FROM:<a@remote.test>\r\n");
        h.take_output();
        h.send(bad.as_bytes());
        let out = h.take_output();
        assert!(out.starts_with("501 5.5.4 "), "{bad}: {out}");
        assert!(h.s.envelope().unwrap().recipients.is_empty());
    }
    let mut h = Harness::new(true);
    h.send(b"EHLO c\r\nMAIL FROM:<a@remote.test>\r\n");
    h.take_output();
    h.send(b"RCPT TO:<x@remote.test> FOO=1\r\n");
    assert!(h.take_output().starts_with("555 5.5.4 "));
    assert!(h.s.envelope().unwrap().recipients.is_empty());
}
