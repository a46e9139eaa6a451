//! Scenarios for the outbound delivery machine, without sockets, run in
//! the simulated world of [`super::sim`]: DNS answers from a script,
//! connects refused, black-holed or answered by the in-memory
//! `ServerSession` or a scripted server, notional TLS, a virtual clock.

use std::time::Duration;

use super::machine::{Hop, Lookup, IMPLICIT_TLS_GREETING_WAIT, OUTBOUND_IDLE_KEEP};
use super::sim::*;
use crate::config::{OutboundTls, SmarthostTls};
use crate::delivery::outcome::{self, Origin, Outcome, Status};
use crate::dns::DnsError;
use crate::smtp::client::Credentials;
use crate::spool::QueueId;

// ---- MX walk ------------------------------------------------------------------

#[test]
fn scenario_mx_hosts_are_tried_in_preference_order() {
    let mut sim = Sim::mx(job(1, "dest.test", &["bob@dest.test", "carol@dest.test"]))
        .dns(Ok(vec![
            mx("mx2.dest.test", 20, &["192.0.2.2"]),
            mx("mx1.dest.test", 10, &["192.0.2.1"]),
        ]))
        .peer(sa("192.0.2.1", 25), Peer::Server(PLAIN))
        .peer(sa("192.0.2.2", 25), Peer::Server(PLAIN));
    sim.finish();
    assert_eq!(sim.lookups, vec![Lookup::Mx("dest.test".into())]);
    assert_eq!(sim.connects, vec![sa("192.0.2.1", 25)]);
    assert_eq!(
        sim.outcomes(),
        vec![(10, delivered(MX1)), (11, delivered(MX1))]
    );
    assert_eq!(sim.messages, 1);
    assert_eq!(sim.reports[0].0, QueueId(1));
}

#[test]
fn scenario_connect_refused_moves_to_the_next_mx() {
    let mut sim = Sim::mx(job(1, "dest.test", &["bob@dest.test"]))
        .dns(Ok(vec![
            mx("mx1.dest.test", 10, &["192.0.2.1"]),
            mx("mx2.dest.test", 20, &["192.0.2.2"]),
        ]))
        .peer(sa("192.0.2.1", 25), Peer::Refuse)
        .peer(sa("192.0.2.2", 25), Peer::Server(PLAIN));
    sim.finish();
    assert_eq!(sim.connects, vec![sa("192.0.2.1", 25), sa("192.0.2.2", 25)]);
    assert_eq!(
        sim.outcomes(),
        vec![(10, delivered("mx2.dest.test[192.0.2.2]:25"))]
    );
}

#[test]
fn scenario_4xx_greeting_moves_to_the_next_mx() {
    let busy = Script {
        greeting: Some("421 4.3.2 too busy"),
        ..Script::ok()
    };
    let mut sim = Sim::mx(job(1, "dest.test", &["bob@dest.test"]))
        .dns(Ok(vec![
            mx("mx1.dest.test", 10, &["192.0.2.1"]),
            mx("mx2.dest.test", 20, &["192.0.2.2"]),
        ]))
        .peer(sa("192.0.2.1", 25), Peer::Script(busy))
        .peer(sa("192.0.2.2", 25), Peer::Server(PLAIN));
    sim.finish();
    assert_eq!(sim.connects.len(), 2);
    assert_eq!(
        sim.outcomes(),
        vec![(10, delivered("mx2.dest.test[192.0.2.2]:25"))]
    );
    assert_eq!(sim.closes, 2, "the busy connection and the finished one");
}

#[test]
fn scenario_5xx_greeting_defers_and_moves_on() {
    let refusing = Script {
        greeting: Some("554 5.7.1 go away"),
        ..Script::ok()
    };
    let mut sim = single(Peer::Script(refusing));
    sim.finish();
    // A 5xx greeting never bounces mail (our own reputation problem).
    let r = sim.deferred_reason();
    assert_eq!(r.origin, Origin::Remote { relay: MX1.into() });
    assert_eq!((r.code, r.status), (554, Status::new(5, 7, 1)));
    assert_eq!(r.text, "go away");
}

#[test]
fn scenario_greeting_timeout_moves_to_the_next_mx() {
    let silent = Script {
        greeting: None,
        ..Script::ok()
    };
    let mut sim = Sim::mx(job(1, "dest.test", &["bob@dest.test"]))
        .dns(Ok(vec![
            mx("mx1.dest.test", 10, &["192.0.2.1"]),
            mx("mx2.dest.test", 20, &["192.0.2.2"]),
        ]))
        .peer(sa("192.0.2.1", 25), Peer::Script(silent))
        .peer(sa("192.0.2.2", 25), Peer::Server(PLAIN));
    sim.finish();
    assert_eq!(sim.connects.len(), 2);
    // The wait for the greeting, then mx2's session idles before QUIT.
    assert_eq!(sim.elapsed(), REPLY_TIMEOUT + OUTBOUND_IDLE_KEEP);
    assert_eq!(
        sim.outcomes(),
        vec![(10, delivered("mx2.dest.test[192.0.2.2]:25"))]
    );
}

#[test]
fn scenario_connect_timeout_moves_to_the_next_mx() {
    let mut sim = Sim::mx(job(1, "dest.test", &["bob@dest.test"]))
        .dns(Ok(vec![
            mx("mx1.dest.test", 10, &["192.0.2.1"]),
            mx("mx2.dest.test", 20, &["192.0.2.2"]),
        ]))
        .peer(sa("192.0.2.1", 25), Peer::Blackhole)
        .peer(sa("192.0.2.2", 25), Peer::Server(PLAIN));
    sim.run();
    assert_eq!(sim.m.poll_timeout(), Some(sim.t0 + CONNECT_TIMEOUT));
    sim.finish();
    assert_eq!(sim.elapsed(), CONNECT_TIMEOUT + OUTBOUND_IDLE_KEEP);
    assert_eq!(sim.closes, 2);
    assert_eq!(
        sim.outcomes(),
        vec![(10, delivered("mx2.dest.test[192.0.2.2]:25"))]
    );
}

#[test]
fn scenario_ipv6_addresses_are_tried_before_ipv4() {
    let mut sim = Sim::mx(job(1, "dest.test", &["bob@dest.test"]))
        .dns(Ok(vec![mx(
            "mx1.dest.test",
            10,
            &["192.0.2.1", "2001:db8::1", "192.0.2.5"],
        )]))
        .peer(sa("2001:db8::1", 25), Peer::Refuse)
        .peer(sa("192.0.2.1", 25), Peer::Server(PLAIN));
    sim.finish();
    assert_eq!(
        sim.connects,
        vec![sa("2001:db8::1", 25), sa("192.0.2.1", 25)]
    );
    assert_eq!(
        sim.outcomes(),
        vec![(10, delivered("mx1.dest.test[192.0.2.1]:25"))]
    );
}

#[test]
fn scenario_every_address_of_a_host_before_the_next_host() {
    let mut sim = Sim::mx(job(1, "dest.test", &["bob@dest.test"]))
        .dns(Ok(vec![
            mx("mx1.dest.test", 10, &["192.0.2.1", "192.0.2.3"]),
            mx("mx2.dest.test", 20, &["192.0.2.2"]),
        ]))
        .peer(sa("192.0.2.2", 25), Peer::Server(PLAIN));
    sim.finish();
    assert_eq!(
        sim.connects,
        vec![
            sa("192.0.2.1", 25),
            sa("192.0.2.3", 25),
            sa("192.0.2.2", 25)
        ]
    );
    assert!(matches!(sim.outcomes()[0].1, Outcome::Delivered { .. }));
}

#[test]
fn scenario_all_hosts_failing_defers_with_the_last_error() {
    let busy = Script {
        greeting: Some("421 4.3.2 try later"),
        ..Script::ok()
    };
    let mut sim = Sim::mx(job(1, "dest.test", &["bob@dest.test", "carol@dest.test"]))
        .dns(Ok(vec![
            mx("mx1.dest.test", 10, &["192.0.2.1"]),
            mx("mx2.dest.test", 20, &["192.0.2.2"]),
        ]))
        .peer(sa("192.0.2.1", 25), Peer::Script(busy))
        .peer(sa("192.0.2.2", 25), Peer::Refuse);
    sim.finish();
    let r = sim.deferred_reason();
    assert_eq!(
        r,
        outcome::connect_failed("192.0.2.2:25", "connection refused")
    );
    assert_eq!(sim.outcomes().len(), 2);
    assert_eq!(sim.outcomes()[1].0, 11);
    assert!(sim.m.is_done());
}

#[test]
fn scenario_mx_list_naming_this_host_only_tries_more_preferred_hosts() {
    let mut sim = Sim::mx(job(1, "dest.test", &["bob@dest.test"]))
        .dns(Ok(vec![
            mx("backup.dest.test", 30, &["192.0.2.3"]),
            mx("TERN.test", 20, &["192.0.2.9"]),
            mx("mx1.dest.test", 10, &["192.0.2.1"]),
        ]))
        .peer(sa("192.0.2.3", 25), Peer::Server(PLAIN));
    sim.finish();
    // Only mx1 is more preferred than us; it refuses; no backup, no self.
    assert_eq!(sim.connects, vec![sa("192.0.2.1", 25)]);
    assert_eq!(
        sim.deferred_reason(),
        outcome::connect_failed("192.0.2.1:25", "connection refused")
    );
}

#[test]
fn scenario_mail_that_loops_back_to_myself_fails() {
    let mut sim = Sim::mx(job(1, "dest.test", &["bob@dest.test"])).dns(Ok(vec![
        mx("tern.test", 10, &["192.0.2.9"]),
        mx("backup.dest.test", 20, &["192.0.2.3"]),
    ]));
    sim.finish();
    assert!(sim.connects.is_empty());
    assert_eq!(sim.failed_reason(), outcome::mail_loops_back("dest.test"));
}

// ---- DNS ----------------------------------------------------------------------

#[test]
fn scenario_dns_temporary_failure_defers_with_a_dns_reason() {
    let mut sim = Sim::mx(job(1, "dest.test", &["bob@dest.test", "carol@dest.test"])).dns(Err(
        DnsError::Temporary("SERVFAIL from 127.0.0.1:53".into()),
    ));
    sim.finish();
    let r = sim.deferred_reason();
    assert_eq!(r.origin, Origin::Dns);
    assert_eq!((r.code, r.status), (451, Status::new(4, 4, 3)));
    assert_eq!(
        r.text,
        "DNS lookup for dest.test failed: SERVFAIL from 127.0.0.1:53"
    );
    assert!(sim.connects.is_empty());
}

#[test]
fn scenario_nxdomain_fails_every_recipient() {
    let mut sim = Sim::mx(job(
        1,
        "nowhere.test",
        &["bob@nowhere.test", "x@nowhere.test"],
    ))
    .dns(Err(DnsError::NoSuchDomain));
    sim.finish();
    assert_eq!(
        sim.failed_reason(),
        outcome::dns_no_such_domain("nowhere.test")
    );
    assert_eq!(sim.outcomes().len(), 2);
}

#[test]
fn scenario_null_mx_fails_every_recipient() {
    let mut sim = Sim::mx(job(1, "nomail.test", &["bob@nomail.test"])).dns(Err(DnsError::NullMx));
    sim.finish();
    let r = sim.failed_reason();
    assert_eq!(r, outcome::dns_null_mx("nomail.test"));
    assert_eq!((r.code, r.status), (556, Status::new(5, 1, 10)));
}

#[test]
fn scenario_no_mail_host_address_fails() {
    let mut sim = Sim::mx(job(1, "dest.test", &["bob@dest.test"])).dns(Err(DnsError::NoAddress));
    sim.finish();
    assert_eq!(sim.failed_reason(), outcome::dns_no_address("dest.test"));
}

// ---- transactions -----------------------------------------------------------------

#[test]
fn scenario_partial_recipient_failures_250_550_450() {
    let mut sim = Sim::mx(job(
        1,
        "dest.test",
        &["bob@dest.test", "bad@dest.test", "later@dest.test"],
    ))
    .dns(one_mx("192.0.2.1"))
    .peer(sa("192.0.2.1", 25), Peer::Server(PLAIN));
    sim.finish();
    let o = sim.outcomes();
    assert_eq!(o[0], (10, delivered(MX1)));
    match &o[1] {
        (11, Outcome::Failed(r)) => {
            assert_eq!(r.origin.relay(), Some(MX1));
            assert_eq!((r.code, r.status), (550, Status::new(5, 1, 1)));
        }
        other => panic!("{other:?}"),
    }
    match &o[2] {
        (12, Outcome::Deferred(r)) => {
            assert_eq!((r.code, r.status), (450, Status::new(4, 2, 0)));
            assert_eq!(r.text, "mailbox busy");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.messages, 1);
    assert_eq!(sim.connects.len(), 1, "recipient replies are final");
}

#[test]
fn scenario_5xx_to_mail_fails_every_recipient() {
    let script = Script::ok().with("MAIL", "550 5.7.1 sender rejected");
    let mut sim = Sim::mx(job(1, "dest.test", &["bob@dest.test", "carol@dest.test"]))
        .dns(one_mx("192.0.2.1"))
        .peer(sa("192.0.2.1", 25), Peer::Script(script));
    sim.finish();
    let r = sim.failed_reason();
    assert_eq!(
        r.to_string(),
        format!("{MX1} said: 550 5.7.1 sender rejected")
    );
    assert!(!sim.commands.iter().any(|c| c.starts_with("RCPT")));
    assert_eq!(sim.connects.len(), 1);
}

#[test]
fn scenario_reply_without_enhanced_code_gets_the_generic_one() {
    let script = Script::ok().with("RCPT", "550 no");
    let mut sim = single(Peer::Script(script));
    sim.finish();
    let r = sim.failed_reason();
    assert_eq!(
        (r.code, r.status, r.text.as_str()),
        (550, Status::new(5, 0, 0), "no")
    );
}

// ---- timeouts at every phase ------------------------------------------------------

/// A peer that never answers `command`: the delivery defers with a
/// timeout naming it, after `wait`.
fn timeout_at(command: &'static str, waiting_for: &str, wait: Duration) {
    let mut sim = single(Peer::Script(Script::ok().without(command)));
    sim.finish();
    assert_eq!(sim.elapsed(), wait, "{command}");
    let r = sim.deferred_reason();
    assert_eq!(r, outcome::timeout(MX1, waiting_for), "{command}");
    assert_eq!(r.origin, Origin::Timeout);
    assert_eq!(sim.messages, 0);
}

#[test]
fn scenario_timeout_waiting_for_the_greeting() {
    let silent = Script {
        greeting: None,
        ..Script::ok()
    };
    let mut sim = single(Peer::Script(silent));
    sim.finish();
    assert_eq!(sim.elapsed(), REPLY_TIMEOUT);
    assert_eq!(sim.deferred_reason(), outcome::timeout(MX1, "the greeting"));
    assert!(sim.commands.is_empty());
}

#[test]
fn scenario_timeout_during_the_starttls_handshake() {
    let mut s = settings();
    s.outbound_tls = OutboundTls::Required;
    let mut sim = Sim::new(job(1, "dest.test", &["bob@dest.test"]), Vec::new(), s)
        .dns(one_mx("192.0.2.1"))
        .peer(sa("192.0.2.1", 25), Peer::Server(WITH_TLS));
    sim.tls_hangs = true;
    sim.finish();
    assert_eq!(sim.tls_starts.len(), 1);
    assert_eq!(sim.elapsed(), REPLY_TIMEOUT);
    assert_eq!(
        sim.deferred_reason(),
        outcome::timeout(MX1, "the TLS handshake")
    );
}

#[test]
fn scenario_timeout_waiting_for_ehlo_reply() {
    timeout_at("EHLO", "the reply to EHLO", REPLY_TIMEOUT);
}

#[test]
fn scenario_timeout_waiting_for_mail_reply() {
    timeout_at("MAIL", "the reply to MAIL", REPLY_TIMEOUT);
}

#[test]
fn scenario_timeout_waiting_for_rcpt_reply() {
    timeout_at("RCPT", "the reply to RCPT", REPLY_TIMEOUT);
}

#[test]
fn scenario_timeout_waiting_for_data_reply() {
    timeout_at("DATA", "the reply to DATA", REPLY_TIMEOUT);
}

#[test]
fn scenario_timeout_after_the_final_dot_waits_twice_as_long() {
    let mut sim = single(Peer::Script(Script::ok().without(".")));
    sim.finish();
    assert_eq!(sim.elapsed(), REPLY_TIMEOUT * 2);
    assert_eq!(
        sim.deferred_reason(),
        outcome::timeout(MX1, "the reply to the end of the message")
    );
    // The dot went out: the peer may have the message (a duplicate risk
    // RFC 1047 accepts); no other host is tried in this attempt.
    assert_eq!(sim.connects.len(), 1);
}

#[test]
fn scenario_timeout_while_the_server_takes_no_more_body() {
    let mut sim = single(Peer::Script(Script::ok()));
    sim.body = b"x\r\n".repeat(40_000);
    // Room for the commands and a little body, then a full socket.
    sim.write_room = Some(20_000);
    sim.finish();
    assert_eq!(
        sim.deferred_reason(),
        outcome::timeout(MX1, "the server to take the message")
    );
    assert_eq!(sim.messages, 0);
}

#[test]
fn scenario_timeout_during_a_mid_transaction_failure_tries_no_other_host() {
    let mut sim = Sim::mx(job(1, "dest.test", &["bob@dest.test"]))
        .dns(Ok(vec![
            mx("mx1.dest.test", 10, &["192.0.2.1"]),
            mx("mx2.dest.test", 20, &["192.0.2.2"]),
        ]))
        .peer(
            sa("192.0.2.1", 25),
            Peer::Script(Script::ok().without("RCPT")),
        )
        .peer(sa("192.0.2.2", 25), Peer::Server(PLAIN));
    sim.finish();
    assert_eq!(sim.connects.len(), 1);
    assert_eq!(
        sim.deferred_reason(),
        outcome::timeout(MX1, "the reply to RCPT")
    );
}

// ---- connection trouble -----------------------------------------------------------

#[test]
fn scenario_connection_lost_mid_body_defers_with_connection_lost() {
    let mut sim = single(Peer::Script(Script::ok()));
    sim.body = b"y\r\n".repeat(40_000);
    sim.write_room = Some(30_000);
    sim.run();
    assert!(sim.m.wants_body(), "stalled in the body");
    sim.m.handle_closed(sim.now);
    sim.finish();
    assert_eq!(sim.deferred_reason(), outcome::connection_lost(MX1));
    assert_eq!(sim.messages, 0);
    assert_eq!(sim.connects.len(), 1);
}

#[test]
fn scenario_connection_lost_before_the_transaction_tries_the_next_host() {
    let mut sim = Sim::mx(job(1, "dest.test", &["bob@dest.test"]))
        .dns(Ok(vec![
            mx("mx1.dest.test", 10, &["192.0.2.1"]),
            mx("mx2.dest.test", 20, &["192.0.2.2"]),
        ]))
        .peer(
            sa("192.0.2.1", 25),
            Peer::Script(Script::ok().without("EHLO")),
        )
        .peer(sa("192.0.2.2", 25), Peer::Refuse);
    sim.run();
    sim.m.handle_closed(sim.now);
    sim.finish();
    assert_eq!(sim.connects.len(), 2);
    assert_eq!(
        sim.deferred_reason(),
        outcome::connect_failed("192.0.2.2:25", "connection refused")
    );
}

#[test]
fn scenario_unreadable_queue_file_defers_with_a_queue_reason() {
    let mut sim = single(Peer::Server(PLAIN));
    sim.body_unreadable = true;
    sim.finish();
    let r = sim.deferred_reason();
    assert_eq!(
        r,
        outcome::queue_file_unreadable("No such file or directory")
    );
    assert_eq!(sim.messages, 0);
}

// ---- TLS ------------------------------------------------------------------------

#[test]
fn scenario_opportunistic_starttls_without_verification() {
    let mut sim = single(Peer::Server(WITH_TLS));
    sim.finish();
    assert_eq!(sim.tls_starts, vec![("mx1.dest.test".to_string(), false)]);
    assert_eq!(sim.outcomes(), vec![(10, delivered(MX1))]);
}

#[test]
fn scenario_required_tls_verifies_the_certificate() {
    let mut s = settings();
    s.outbound_tls = OutboundTls::Required;
    let mut sim = Sim::new(job(1, "dest.test", &["bob@dest.test"]), Vec::new(), s)
        .dns(one_mx("192.0.2.1"))
        .peer(sa("192.0.2.1", 25), Peer::Server(WITH_TLS));
    sim.finish();
    assert_eq!(sim.tls_starts, vec![("mx1.dest.test".to_string(), true)]);
    assert_eq!(sim.outcomes(), vec![(10, delivered(MX1))]);
}

#[test]
fn scenario_tls_required_but_not_offered_defers() {
    let mut s = settings();
    s.outbound_tls = OutboundTls::Required;
    let mut sim = Sim::new(job(1, "dest.test", &["bob@dest.test"]), Vec::new(), s)
        .dns(one_mx("192.0.2.1"))
        .peer(sa("192.0.2.1", 25), Peer::Server(PLAIN));
    sim.finish();
    let r = sim.deferred_reason();
    assert_eq!((r.origin.clone(), r.code), (Origin::Tls, 454));
    assert_eq!(
        r.text,
        format!("TLS required but STARTTLS not offered (server {MX1})")
    );
    assert!(sim.tls_starts.is_empty());
    assert_eq!(sim.messages, 0);
}

#[test]
fn scenario_required_tls_without_ca_certificates_defers() {
    let mut s = settings();
    s.outbound_tls = OutboundTls::Required;
    s.trust_anchors = false;
    let mut sim = Sim::new(job(1, "dest.test", &["bob@dest.test"]), Vec::new(), s)
        .dns(one_mx("192.0.2.1"))
        .peer(sa("192.0.2.1", 25), Peer::Server(WITH_TLS));
    sim.finish();
    assert_eq!(sim.deferred_reason(), outcome::tls_no_trust_anchors());
    assert!(sim.tls_starts.is_empty(), "never an unverified handshake");
}

#[test]
fn scenario_opportunistic_tls_failure_retries_the_same_address_in_plaintext_once() {
    let mut sim = single(Peer::Server(WITH_TLS));
    sim.tls_fail.insert(
        sa("192.0.2.1", 25),
        "certificate verify failed: unknown issuer",
    );
    sim.finish();
    assert_eq!(sim.connects, vec![sa("192.0.2.1", 25), sa("192.0.2.1", 25)]);
    assert_eq!(sim.tls_starts.len(), 1, "the retry does not STARTTLS");
    assert_eq!(sim.outcomes(), vec![(10, delivered(MX1))]);
    assert_eq!(sim.messages, 1);
}

#[test]
fn scenario_opportunistic_tls_fallback_happens_once_per_delivery() {
    // Both hosts fail TLS; only the first gets the plaintext retry, which
    // is refused: the second host's TLS failure is the last error.
    let mut sim = Sim::mx(job(1, "dest.test", &["bob@dest.test"]))
        .dns(Ok(vec![
            mx("mx1.dest.test", 10, &["192.0.2.1"]),
            mx("mx2.dest.test", 20, &["192.0.2.2"]),
        ]))
        .peers(
            sa("192.0.2.1", 25),
            vec![Peer::Server(WITH_TLS), Peer::Refuse],
        )
        .peer(sa("192.0.2.2", 25), Peer::Server(WITH_TLS));
    sim.tls_fail
        .insert(sa("192.0.2.1", 25), "handshake failure");
    sim.tls_fail.insert(sa("192.0.2.2", 25), "bad certificate");
    sim.finish();
    assert_eq!(
        sim.connects,
        vec![
            sa("192.0.2.1", 25),
            sa("192.0.2.1", 25),
            sa("192.0.2.2", 25)
        ]
    );
    assert_eq!(sim.tls_starts.len(), 2);
    assert_eq!(
        sim.deferred_reason(),
        outcome::tls_failed("mx2.dest.test[192.0.2.2]:25", "bad certificate")
    );
}

#[test]
fn scenario_smarthost_tls_failure_never_falls_back() {
    let hops = vec![Hop {
        name: "relay.isp.test".into(),
        port: 587,
        addrs: Some(vec![ip("192.0.2.50")]),
    }];
    let mut sim = Sim::new(job(1, "", &["bob@far.test"]), hops, settings())
        .peer(sa("192.0.2.50", 587), Peer::Server(WITH_TLS));
    sim.tls_fail.insert(
        sa("192.0.2.50", 587),
        "certificate verify failed: unknown issuer",
    );
    sim.finish();
    assert_eq!(sim.connects.len(), 1);
    let r = sim.deferred_reason();
    assert_eq!(
        r,
        outcome::tls_failed(
            "relay.isp.test[192.0.2.50]:587",
            "certificate verify failed: unknown issuer"
        )
    );
    assert_eq!(r.origin, Origin::Tls);
}

// ---- smarthosts -----------------------------------------------------------------

fn smarthost(name: &str, port: u16, addr: Option<&str>) -> Hop {
    Hop {
        name: name.into(),
        port,
        addrs: addr.map(|a| vec![ip(a)]),
    }
}

#[test]
fn scenario_smarthost_list_falls_back_to_the_next_smarthost() {
    let hops = vec![
        smarthost("relay1.isp.test", 587, Some("192.0.2.50")),
        smarthost("relay2.isp.test", 587, None),
    ];
    let mut s = settings();
    s.smarthost_tls = SmarthostTls::None;
    let mut sim = Sim::new(job(1, "", &["bob@far.test", "eve@other.test"]), hops, s)
        .dns(Ok(vec![mx("relay2.isp.test", 0, &["192.0.2.51"])]))
        .peer(sa("192.0.2.50", 587), Peer::Refuse)
        .peer(sa("192.0.2.51", 587), Peer::Server(PLAIN));
    sim.finish();
    assert_eq!(sim.lookups, vec![Lookup::Host("relay2.isp.test".into())]);
    assert_eq!(
        sim.connects,
        vec![sa("192.0.2.50", 587), sa("192.0.2.51", 587)]
    );
    let relay = "relay2.isp.test[192.0.2.51]:587";
    assert_eq!(
        sim.outcomes(),
        vec![(10, delivered(relay)), (11, delivered(relay))]
    );
}

#[test]
fn scenario_smarthost_name_that_does_not_resolve_moves_on() {
    let hops = vec![
        smarthost("gone.isp.test", 25, None),
        smarthost("relay2.isp.test", 25, Some("192.0.2.51")),
    ];
    let mut s = settings();
    s.smarthost_tls = SmarthostTls::None;
    let mut sim = Sim::new(job(1, "", &["bob@far.test"]), hops, s)
        .dns(Err(DnsError::NoSuchDomain))
        .peer(sa("192.0.2.51", 25), Peer::Refuse);
    sim.finish();
    assert_eq!(sim.connects, vec![sa("192.0.2.51", 25)]);
    // Deferred, never failed: the smarthost is our configuration.
    assert_eq!(
        sim.deferred_reason(),
        outcome::connect_failed("192.0.2.51:25", "connection refused")
    );
}

#[test]
fn scenario_smarthost_auth_succeeds_and_delivers() {
    let mut s = settings();
    s.smarthost_tls = SmarthostTls::None;
    s.credentials = Some(Credentials {
        user: "joe".into(),
        password: "secret".into(),
    });
    let hops = vec![smarthost("relay.isp.test", 587, Some("192.0.2.50"))];
    let mut sim = Sim::new(job(1, "", &["bob@far.test"]), hops, s).peer(
        sa("192.0.2.50", 587),
        Peer::Server(ServerOpts {
            tls: false,
            auth: true,
        }),
    );
    sim.finish();
    assert_eq!(
        sim.outcomes(),
        vec![(10, delivered("relay.isp.test[192.0.2.50]:587"))]
    );
}

#[test]
fn scenario_auth_rejected_defers() {
    let mut s = settings();
    s.smarthost_tls = SmarthostTls::None;
    s.credentials = Some(Credentials {
        user: "joe".into(),
        password: "wrong".into(),
    });
    let hops = vec![smarthost("relay.isp.test", 587, Some("192.0.2.50"))];
    let mut sim = Sim::new(job(1, "", &["bob@far.test"]), hops, s).peer(
        sa("192.0.2.50", 587),
        Peer::Server(ServerOpts {
            tls: false,
            auth: true,
        }),
    );
    sim.finish();
    let r = sim.deferred_reason();
    assert_eq!(r.code, 535, "{r}");
    assert_eq!(
        r.origin.relay(),
        Some("relay.isp.test[192.0.2.50]:587"),
        "{r}"
    );
    assert_eq!(sim.messages, 0);
}

#[test]
fn scenario_port_465_in_starttls_mode_is_a_tls_mode_mismatch() {
    // An implicit-TLS server waits for a ClientHello and says nothing.
    let silent = Script {
        greeting: None,
        ..Script::ok()
    };
    let hops = vec![smarthost("smtp.isp.test", 465, Some("192.0.2.60"))];
    let mut sim = Sim::new(job(1, "", &["bob@far.test"]), hops, settings())
        .peer(sa("192.0.2.60", 465), Peer::Script(silent));
    sim.finish();
    assert_eq!(sim.elapsed(), IMPLICIT_TLS_GREETING_WAIT);
    assert!(IMPLICIT_TLS_GREETING_WAIT < REPLY_TIMEOUT);
    let r = sim.deferred_reason();
    assert_eq!(
        r,
        outcome::tls_mode_mismatch(
            "smtp.isp.test[192.0.2.60]:465",
            "port 465 speaks implicit TLS; set smarthost_tls = tls"
        )
    );
    assert_eq!((r.origin, r.code), (Origin::Tls, 451));
}

#[test]
fn scenario_port_465_silence_with_a_short_client_timeout_is_still_a_mismatch() {
    let silent = Script {
        greeting: None,
        ..Script::ok()
    };
    let hops = vec![smarthost("smtp.isp.test", 465, Some("192.0.2.60"))];
    let mut s = settings();
    s.reply_timeout = Duration::from_secs(2);
    let mut sim = Sim::new(job(1, "", &["bob@far.test"]), hops, s)
        .peer(sa("192.0.2.60", 465), Peer::Script(silent));
    sim.finish();
    assert_eq!(sim.elapsed(), Duration::from_secs(2));
    assert_eq!(
        sim.deferred_reason(),
        outcome::tls_implicit_port("smtp.isp.test[192.0.2.60]:465")
    );
}

#[test]
fn scenario_implicit_tls_answered_by_a_plaintext_greeting_is_a_mismatch() {
    let hops = vec![smarthost("smtp.isp.test", 587, Some("192.0.2.60"))];
    let mut s = settings();
    s.smarthost_tls = SmarthostTls::Tls;
    // What the plaintext server says never reaches the session: the TLS
    // layer takes it for a broken handshake.
    let plaintext = Script {
        greeting: None,
        ..Script::ok()
    };
    let mut sim = Sim::new(job(1, "", &["bob@far.test"]), hops, s)
        .peer(sa("192.0.2.60", 587), Peer::Script(plaintext));
    sim.tls_hangs = true;
    sim.run();
    // The TLS layer saw "220 ..." where a ServerHello belongs.
    sim.m
        .handle_tls_error("received corrupt message", true, sim.now);
    sim.finish();
    assert_eq!(
        sim.deferred_reason(),
        outcome::tls_plaintext_greeting("smtp.isp.test[192.0.2.60]:587")
    );
}

#[test]
fn scenario_port_465_server_that_greets_in_plaintext_is_fine() {
    let hops = vec![smarthost("smtp.isp.test", 465, Some("192.0.2.60"))];
    let mut s = settings();
    s.smarthost_tls = SmarthostTls::StartTls;
    let mut sim = Sim::new(job(1, "", &["bob@far.test"]), hops, s)
        .peer(sa("192.0.2.60", 465), Peer::Server(WITH_TLS));
    sim.finish();
    assert_eq!(
        sim.outcomes(),
        vec![(10, delivered("smtp.isp.test[192.0.2.60]:465"))]
    );
    assert_eq!(sim.tls_starts, vec![("smtp.isp.test".to_string(), true)]);
}

#[test]
fn scenario_implicit_tls_smarthost_starts_tls_before_the_greeting() {
    let hops = vec![smarthost("smtp.isp.test", 465, Some("192.0.2.60"))];
    let mut s = settings();
    s.smarthost_tls = SmarthostTls::Tls;
    let mut sim = Sim::new(job(1, "", &["bob@far.test"]), hops, s)
        .peer(sa("192.0.2.60", 465), Peer::Script(Script::ok()));
    sim.finish();
    assert_eq!(sim.tls_starts, vec![("smtp.isp.test".to_string(), true)]);
    assert!(!sim.commands.iter().any(|c| c == "STARTTLS"));
    assert_eq!(
        sim.outcomes(),
        vec![(10, delivered("smtp.isp.test[192.0.2.60]:465"))]
    );
}

// ---- connection reuse -------------------------------------------------------------

#[test]
fn scenario_second_job_reuses_the_idle_session() {
    let mut sim = single(Peer::Server(PLAIN));
    sim.next_jobs
        .push_back(job(2, "dest.test", &["carol@dest.test", "bad@dest.test"]));
    sim.finish();
    assert_eq!(sim.connects.len(), 1, "one connection for both jobs");
    assert_eq!(sim.reports.len(), 2);
    assert_eq!(sim.reports[0].0, QueueId(1));
    assert_eq!(sim.reports[0].1, vec![(10, delivered(MX1))]);
    assert_eq!(sim.reports[1].0, QueueId(2));
    assert_eq!(sim.reports[1].1[0], (10, delivered(MX1)));
    assert!(matches!(sim.reports[1].1[1], (11, Outcome::Failed(_))));
    assert_eq!(sim.messages, 2);
}

#[test]
fn scenario_idle_session_says_quit_after_the_idle_keep() {
    let mut sim = single(Peer::Script(Script::ok()));
    sim.run();
    assert_eq!(sim.reports.len(), 1);
    assert!(sim.m.is_idle());
    assert!(!sim.m.is_done(), "the slot is held while idle");
    assert_eq!(sim.m.poll_timeout(), Some(sim.now + OUTBOUND_IDLE_KEEP));
    sim.wait(OUTBOUND_IDLE_KEEP);
    assert!(sim.m.is_done());
    assert_eq!(sim.commands.last().map(String::as_str), Some("QUIT"));
    assert_eq!(sim.closes, 1);
    assert_eq!(sim.reports.len(), 1, "nothing more is reported");
    // A job offered too late is given back.
    assert!(sim
        .m
        .next_job(job(2, "dest.test", &["x@dest.test"]), sim.now)
        .is_err());
}

#[test]
fn scenario_without_reuse_the_session_quits_after_its_transaction() {
    let mut s = settings();
    s.connection_reuse = false;
    let mut sim = Sim::new(job(1, "dest.test", &["bob@dest.test"]), Vec::new(), s)
        .dns(one_mx("192.0.2.1"))
        .peer(sa("192.0.2.1", 25), Peer::Script(Script::ok()));
    sim.next_jobs
        .push_back(job(2, "dest.test", &["carol@dest.test"]));
    sim.run();
    assert_eq!(sim.reports.len(), 1);
    assert_eq!(sim.outcomes(), vec![(10, delivered(MX1))]);
    assert!(sim.m.is_done(), "no idle wait for a next job");
    assert_eq!(sim.elapsed(), Duration::ZERO);
    assert_eq!(sim.commands.last().map(String::as_str), Some("QUIT"));
    assert_eq!(sim.closes, 1);
    assert_eq!(sim.connects.len(), 1);
}

#[test]
fn scenario_idle_session_closed_by_the_server_ends_quietly() {
    let mut sim = single(Peer::Server(PLAIN));
    sim.run();
    assert!(sim.m.is_idle());
    sim.m.handle_closed(sim.now);
    sim.run();
    assert!(sim.m.is_done());
    assert_eq!(sim.reports.len(), 1);
    assert_eq!(sim.outcomes(), vec![(10, delivered(MX1))]);
}

#[test]
fn scenario_idle_session_takes_no_job_for_another_destination() {
    let mut sim = single(Peer::Server(PLAIN));
    sim.run();
    let other = job(2, "elsewhere.test", &["x@elsewhere.test"]);
    assert_eq!(sim.m.next_job(other.clone(), sim.now), Err(Box::new(other)));
    assert!(sim.m.is_idle());
}

#[test]
fn scenario_shutdown_quits_an_idle_session_at_once() {
    let mut sim = single(Peer::Script(Script::ok()));
    sim.run();
    assert!(sim.m.is_idle());
    sim.m.shutdown(sim.now);
    sim.run();
    assert!(sim.m.is_done());
    assert_eq!(sim.elapsed(), Duration::ZERO);
    assert_eq!(sim.commands.last().map(String::as_str), Some("QUIT"));
}

// ---- what the client decides before or instead of sending -------------------------

#[test]
fn scenario_message_over_the_servers_size_limit_fails_without_mail() {
    let script = Script::ok().with("EHLO", "250-mx.test\r\n250 SIZE 50");
    let mut sim = single(Peer::Script(script));
    sim.finish();
    let r = sim.failed_reason();
    assert_eq!((r.code, r.status), (552, Status::new(5, 3, 4)));
    assert!(!sim.commands.iter().any(|c| c.starts_with("MAIL")));
    // The session itself was fine: it idled, then said QUIT.
    assert_eq!(sim.commands.last().map(String::as_str), Some("QUIT"));
}

#[test]
fn scenario_every_recipient_refused_sends_no_data() {
    let script = Script::ok().with("RCPT", "550 5.1.1 unknown");
    let mut sim = Sim::mx(job(1, "dest.test", &["a@dest.test", "b@dest.test"]))
        .dns(one_mx("192.0.2.1"))
        .peer(sa("192.0.2.1", 25), Peer::Script(script));
    sim.finish();
    assert_eq!(sim.failed_reason().status, Status::new(5, 1, 1));
    assert!(!sim.commands.iter().any(|c| c == "DATA"));
    assert!(sim.commands.iter().any(|c| c == "RSET"));
}

#[test]
fn scenario_421_in_the_middle_of_the_transaction_defers_and_tries_no_other_host() {
    let script = Script::ok().with("RCPT", "421 4.3.2 shutting down");
    let mut sim = Sim::mx(job(1, "dest.test", &["bob@dest.test"]))
        .dns(Ok(vec![
            mx("mx1.dest.test", 10, &["192.0.2.1"]),
            mx("mx2.dest.test", 20, &["192.0.2.2"]),
        ]))
        .peer(sa("192.0.2.1", 25), Peer::Script(script))
        .peer(sa("192.0.2.2", 25), Peer::Server(PLAIN));
    sim.finish();
    let r = sim.deferred_reason();
    assert_eq!(
        r.to_string(),
        format!("{MX1} said: 421 4.3.2 shutting down")
    );
    assert_eq!(sim.connects.len(), 1);
}

#[test]
fn scenario_unconvertible_8bit_body_to_a_7bit_server_fails_and_closes() {
    let mut j = job(1, "dest.test", &["bob@dest.test"]);
    j.eight_bit = true;
    let mut sim = Sim::mx(j)
        .dns(one_mx("192.0.2.1"))
        .peer(sa("192.0.2.1", 25), Peer::Script(Script::ok()));
    // An 8-bit header cannot be made 7-bit.
    sim.body = "Subject: caf\u{e9}\r\n\r\nbody\r\n".as_bytes().to_vec();
    sim.finish();
    let r = sim.failed_reason();
    assert_eq!((r.code, r.status), (554, Status::new(5, 6, 3)));
    assert_eq!(sim.messages, 0, "no final dot was sent");
    assert!(sim.m.is_done());
    assert_eq!(sim.closes, 1);
}

#[test]
fn scenario_ehlo_name_localhost_becomes_the_address_literal() {
    // The script answers only the literal: `EHLO localhost` would wait.
    let script = Script::ok()
        .without("EHLO")
        .with("EHLO [192.0.2.25]", "250 mx.test");
    for name in ["localhost", "LocalHost.localdomain."] {
        let mut s = settings();
        s.helo_name = name.into();
        let mut sim = Sim::new(job(1, "dest.test", &["bob@dest.test"]), Vec::new(), s)
            .dns(one_mx("192.0.2.1"))
            .peer(sa("192.0.2.1", 25), Peer::Script(script.clone()));
        sim.finish();
        assert_eq!(sim.outcomes(), vec![(10, delivered(MX1))], "{name}");
    }
    // A configured name is sent as it is (the script sees lines upper-cased).
    let mut sim = Sim::new(
        job(1, "dest.test", &["bob@dest.test"]),
        Vec::new(),
        settings(),
    )
    .dns(one_mx("192.0.2.1"))
    .peer(
        sa("192.0.2.1", 25),
        Peer::Script(
            Script::ok()
                .without("EHLO")
                .with("EHLO TERN.TEST", "250 mx.test"),
        ),
    );
    sim.finish();
    assert_eq!(sim.outcomes(), vec![(10, delivered(MX1))]);
}

#[test]
fn ehlo_address_literals() {
    use super::machine::ehlo_name;
    let v6: std::net::SocketAddr = "[2001:db8::1]:40000".parse().unwrap();
    let mapped: std::net::SocketAddr = "[::ffff:192.0.2.9]:40000".parse().unwrap();
    assert_eq!(ehlo_name("localhost", v6), "[IPv6:2001:db8::1]");
    assert_eq!(ehlo_name("localhost", mapped), "[192.0.2.9]");
    assert_eq!(ehlo_name("router.example", v6), "router.example");
}

#[test]
fn scenario_reuse_after_a_transaction_refused_at_data() {
    // Job 1: every recipient refused (450), DATA refused, RSET; job 2 goes
    // over the same session, offered before the RSET reply is read.
    let mut sim = single(Peer::Server(PLAIN));
    sim.m = super::machine::Delivery::new(
        job(1, "dest.test", &["later@dest.test"]),
        Vec::new(),
        settings(),
        sim.now,
    );
    sim.next_jobs
        .push_back(job(2, "dest.test", &["carol@dest.test"]));
    sim.finish();
    assert_eq!(sim.connects.len(), 1);
    assert_eq!(sim.reports.len(), 2, "{:?}", sim.commands);
    assert!(matches!(sim.reports[0].1[0], (10, Outcome::Deferred(_))));
    assert_eq!(sim.reports[1].1, vec![(10, delivered(MX1))]);
    assert_eq!(sim.messages, 1);
}

#[test]
fn scenario_reuse_a_second_after_a_transaction_refused_at_data() {
    // The same, with the retry offered a second later (after the RSET
    // reply), as the queue runner's 1 s retry does.
    let mut sim = single(Peer::Server(PLAIN));
    sim.m = super::machine::Delivery::new(
        job(1, "dest.test", &["later@dest.test"]),
        Vec::new(),
        settings(),
        sim.now,
    );
    sim.run();
    assert_eq!(sim.reports.len(), 1);
    assert!(sim.m.is_idle());
    sim.wait(Duration::from_secs(1));
    sim.m
        .next_job(job(1, "dest.test", &["carol@dest.test"]), sim.now)
        .expect("the idle session takes the retry");
    sim.finish();
    assert_eq!(sim.reports.len(), 2, "{:?}", sim.commands);
    assert_eq!(sim.reports[1].1, vec![(10, delivered(MX1))]);
    assert_eq!(sim.messages, 1);
}
