//! RFC 3461 parameters on the way out.

use super::*;
use crate::smtp::dsn::{DsnMail, DsnParams, DsnRcpt, Notify, Orcpt, Ret};

fn dsn_txn() -> Transaction {
    let mut t = txn(&["b@y", "c@y"]);
    t.dsn = DsnParams {
        mail: DsnMail {
            ret: Some(Ret::Hdrs),
            envid: Some("id 1+x".into()),
        },
        rcpts: vec![
            DsnRcpt {
                notify: Some(Notify {
                    success: true,
                    failure: true,
                    delay: false,
                }),
                orcpt: Some(Orcpt {
                    addr_type: "rfc822".into(),
                    addr: "o+b@z".into(),
                }),
            },
            DsnRcpt::default(),
        ],
    };
    t
}

#[test]
fn dsn_parameters_go_to_a_server_that_offers_dsn() {
    // Pipelined.
    let mut h = Harness::new(cfg());
    h.ready(&["PIPELINING", "DSN"]);
    h.start(dsn_txn());
    assert_eq!(
        h.sent(),
        "MAIL FROM:<a@x.example> RET=HDRS ENVID=id+201+2Bx\r\n\
         RCPT TO:<b@y> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;o+2Bb@z\r\n\
         RCPT TO:<c@y>\r\nDATA\r\n"
    );
    // Lock-step.
    let mut h = Harness::new(cfg());
    h.ready(&["DSN"]);
    h.start(dsn_txn());
    assert_eq!(
        h.sent(),
        "MAIL FROM:<a@x.example> RET=HDRS ENVID=id+201+2Bx\r\n"
    );
    h.feed("250 ok\r\n");
    assert_eq!(
        h.sent(),
        "RCPT TO:<b@y> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;o+2Bb@z\r\n"
    );
    h.feed("250 ok\r\n");
    assert_eq!(h.sent(), "RCPT TO:<c@y>\r\n");
}

#[test]
fn no_dsn_parameters_to_a_server_without_dsn() {
    let mut h = Harness::new(cfg());
    h.ready(&["PIPELINING"]);
    h.start(dsn_txn());
    assert_eq!(
        h.sent(),
        "MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nDATA\r\n"
    );
}
