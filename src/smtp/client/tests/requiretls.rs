//! REQUIRETLS (RFC 8689) in the client session.

use super::*;

fn requiretls_txn() -> Transaction {
    Transaction {
        requiretls: true,
        ..txn(&["b@y.example"])
    }
}

fn tls_session() -> Harness {
    Harness::new(ClientConfig {
        tls: TlsPolicy::Required,
        tls_active: true,
        ..cfg()
    })
}

#[test]
fn requiretls_parameter_is_sent_under_tls_to_a_server_offering_it() {
    let mut h = tls_session();
    h.ready(&["REQUIRETLS", "SIZE 1000"]);
    h.start(requiretls_txn());
    assert_eq!(h.sent(), "MAIL FROM:<a@x.example> SIZE=100 REQUIRETLS\r\n");
}

#[test]
fn requiretls_fails_without_the_extension_and_sends_no_mail() {
    let mut h = tls_session();
    h.ready(&["PIPELINING"]);
    h.start(requiretls_txn());
    assert_eq!(h.sent(), "");
    let outcomes = done(&h.events());
    assert!(
        matches!(&outcomes[..], [RcptOutcome::Failed(r)] if r.code == 550 && r.enhanced() == Some((5, 7, 30)) && r.own == Some(Own::Tls)),
        "{outcomes:?}"
    );
}

#[test]
fn requiretls_fails_in_plaintext_even_when_offered() {
    // A server offering REQUIRETLS before TLS is wrong; tern does not
    // send the parameter (or the message) in plaintext.
    let mut h = Harness::new(cfg());
    h.ready(&["REQUIRETLS"]);
    h.start(requiretls_txn());
    assert_eq!(h.sent(), "");
    assert!(
        matches!(&done(&h.events())[..], [RcptOutcome::Failed(r)] if r.enhanced() == Some((5, 7, 30)))
    );
    // The same session still takes an ordinary transaction.
    h.start(txn(&["b@y.example"]));
    assert_eq!(h.sent(), "MAIL FROM:<a@x.example>\r\n");
}
