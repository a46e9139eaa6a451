//! Scenarios for REQUIRETLS (RFC 8689 §4.2.1): a job sent with it goes
//! only over verified TLS to a configured relay that offers REQUIRETLS;
//! anything less fails the recipients with 5.7.30, with nothing sent.

use super::machine::Hop;
use super::sim::*;
use crate::config::SmarthostTls;
use crate::delivery::outcome::{self, Origin, RequireTlsGap, Status};

const RELAY: &str = "relay.isp.test[192.0.2.50]:587";

fn relay_hop(name: &str, addr: &str) -> Hop {
    Hop {
        name: name.into(),
        port: 587,
        addrs: Some(vec![ip(addr)]),
    }
}

fn requiretls_job(domain: &str) -> super::Job {
    let mut j = job(1, domain, &["bob@far.test", "eve@far.test"]);
    j.requiretls = true;
    j
}

/// A REQUIRETLS job to the smarthost relay.isp.test:587 = `peer`.
fn via_relay(tls: SmarthostTls, peer: Peer) -> Sim {
    let mut s = settings();
    s.smarthost_tls = tls;
    Sim::new(
        requiretls_job(""),
        vec![relay_hop("relay.isp.test", "192.0.2.50")],
        s,
    )
    .peer(sa("192.0.2.50", 587), peer)
}

fn assert_5730(sim: &Sim, peer: &str, gap: RequireTlsGap) {
    let r = sim.failed_reason();
    assert_eq!(r, outcome::requiretls_unsatisfied(peer, &gap));
    assert_eq!((r.code, r.status), (550, Status::new(5, 7, 30)));
    assert_eq!(r.origin, Origin::Tls);
    assert!(r.text.starts_with("REQUIRETLS support required: "), "{r:?}");
    assert_eq!(sim.messages, 0, "nothing was sent");
}

#[test]
fn scenario_requiretls_relay_with_verified_starttls_and_the_extension_delivers() {
    let mut sim = via_relay(SmarthostTls::StartTls, Peer::Server(WITH_TLS));
    sim.finish();
    assert_eq!(sim.tls_starts, vec![("relay.isp.test".to_string(), true)]);
    assert_eq!(
        sim.outcomes(),
        vec![(10, delivered(RELAY)), (11, delivered(RELAY))]
    );
    let wire = String::from_utf8_lossy(&sim.server_wire);
    assert!(
        wire.contains("MAIL FROM:<alice@tern.test> SIZE=100 REQUIRETLS\r\n"),
        "{wire}"
    );
    assert_eq!(sim.server_messages.len(), 1);
}

#[test]
fn scenario_requiretls_to_mx_fails_at_once_unvalidated() {
    let mut sim = Sim::mx(requiretls_job("far.test"))
        .dns(one_mx("192.0.2.1"))
        .peer(sa("192.0.2.1", 25), Peer::Server(WITH_TLS));
    sim.finish();
    assert!(sim.lookups.is_empty(), "no MX lookup: {:?}", sim.lookups);
    assert!(sim.connects.is_empty());
    assert_5730(
        &sim,
        "",
        RequireTlsGap::UnvalidatedMx {
            domain: "far.test".into(),
        },
    );
}

#[test]
fn scenario_requiretls_to_plaintext_relay_fails_without_connecting() {
    let mut sim = via_relay(SmarthostTls::None, Peer::Server(WITH_TLS));
    sim.finish();
    assert!(sim.connects.is_empty());
    assert_5730(&sim, "relay.isp.test:587", RequireTlsGap::PlaintextRelay);
}

#[test]
fn scenario_requiretls_relay_without_the_extension_fails_before_mail() {
    // Implicit TLS (verified) to a server whose EHLO lacks REQUIRETLS.
    let mut sim = via_relay(SmarthostTls::Tls, Peer::Script(Script::ok()));
    sim.finish();
    assert_eq!(sim.tls_starts, vec![("relay.isp.test".to_string(), true)]);
    assert!(
        !sim.commands.iter().any(|c| c.starts_with("MAIL")),
        "{:?}",
        sim.commands
    );
    assert_5730(&sim, RELAY, RequireTlsGap::NotOffered);
}

#[test]
fn scenario_requiretls_relay_without_starttls_fails() {
    let mut sim = via_relay(SmarthostTls::StartTls, Peer::Server(PLAIN));
    sim.finish();
    assert!(sim.tls_starts.is_empty());
    assert_5730(&sim, RELAY, RequireTlsGap::NoStartTls);
}

#[test]
fn scenario_requiretls_certificate_failure_fails_and_never_falls_back() {
    let mut sim = via_relay(SmarthostTls::StartTls, Peer::Server(WITH_TLS));
    sim.tls_fail.insert(
        sa("192.0.2.50", 587),
        "certificate verify failed: unknown issuer",
    );
    sim.finish();
    assert_eq!(sim.connects.len(), 1, "no plaintext retry");
    assert_5730(
        &sim,
        RELAY,
        RequireTlsGap::TlsFailed {
            why: "certificate verify failed: unknown issuer".into(),
        },
    );
}

#[test]
fn scenario_requiretls_without_trust_anchors_fails() {
    let mut s = settings();
    s.trust_anchors = false;
    let mut sim = Sim::new(
        requiretls_job(""),
        vec![relay_hop("relay.isp.test", "192.0.2.50")],
        s,
    )
    .peer(sa("192.0.2.50", 587), Peer::Server(WITH_TLS));
    sim.finish();
    assert_5730(&sim, RELAY, RequireTlsGap::NoTrustAnchors);
}

#[test]
fn scenario_requiretls_moves_on_to_a_relay_that_offers_it() {
    let hops = vec![
        relay_hop("relay1.isp.test", "192.0.2.50"),
        relay_hop("relay2.isp.test", "192.0.2.51"),
    ];
    // relay1: STARTTLS, but no REQUIRETLS after it.
    let starttls_only = Script::ok()
        .with("EHLO", "250-mx.test\r\n250 STARTTLS")
        .with("STARTTLS", "220 go ahead");
    let mut sim = Sim::new(requiretls_job(""), hops, settings())
        .peer(sa("192.0.2.50", 587), Peer::Script(starttls_only))
        .peer(sa("192.0.2.51", 587), Peer::Server(WITH_TLS));
    sim.finish();
    assert_eq!(sim.connects.len(), 2);
    assert_eq!(sim.tls_starts.len(), 2);
    assert!(!sim.commands.iter().any(|c| c.starts_with("MAIL")));
    let relay2 = "relay2.isp.test[192.0.2.51]:587";
    assert_eq!(
        sim.outcomes(),
        vec![(10, delivered(relay2)), (11, delivered(relay2))]
    );
}

#[test]
fn scenario_ordinary_job_on_the_same_relay_is_unaffected() {
    let mut s = settings();
    s.smarthost_tls = SmarthostTls::Tls;
    let mut sim = Sim::new(
        job(1, "", &["bob@far.test"]),
        vec![relay_hop("relay.isp.test", "192.0.2.50")],
        s,
    )
    .peer(sa("192.0.2.50", 587), Peer::Script(Script::ok()));
    sim.finish();
    assert_eq!(sim.outcomes(), vec![(10, delivered(RELAY))]);
    assert!(sim
        .commands
        .iter()
        .any(|c| c == "MAIL FROM:<alice@tern.test>"));
}

#[test]
fn scenario_idle_session_takes_a_requiretls_job_only_if_it_qualifies() {
    // A plaintext relay session, idle after an ordinary job: a REQUIRETLS
    // job is given back (its own delivery then fails it with 5.7.30).
    let mut s = settings();
    s.smarthost_tls = SmarthostTls::None;
    let hops = vec![relay_hop("relay.isp.test", "192.0.2.50")];
    let mut sim = Sim::new(job(1, "", &["bob@far.test"]), hops.clone(), s)
        .peer(sa("192.0.2.50", 587), Peer::Script(Script::ok()));
    sim.run();
    assert!(sim.m.is_idle());
    let back = sim.m.next_job(requiretls_job(""), sim.now);
    assert!(matches!(back, Err(j) if j.requiretls));
    // A verified TLS session offering REQUIRETLS takes it.
    let mut sim = Sim::new(job(1, "", &["bob@far.test"]), hops, settings())
        .peer(sa("192.0.2.50", 587), Peer::Server(WITH_TLS));
    sim.run();
    assert!(sim.m.is_idle());
    assert!(sim.m.next_job(requiretls_job(""), sim.now).is_ok());
    sim.finish();
    assert_eq!(sim.reports.len(), 2);
    assert!(sim.reports[1].1.iter().all(|(_, o)| o == &delivered(RELAY)));
    let wire = String::from_utf8_lossy(&sim.server_wire);
    assert_eq!(wire.matches(" REQUIRETLS\r\n").count(), 1, "{wire}");
}
