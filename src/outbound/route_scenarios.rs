//! Scenarios for jobs that go to a route's relay (`routes`): the relay's
//! hosts, TLS mode and credentials reach the machine through
//! [`Relay::hops`] and [`Relay::settings`], and an idle session is only
//! reused by a job to the same relay with the same credentials.

use std::rc::Rc;

use super::machine::{Hop, Lookup};
use super::sim::*;
use super::Job;
use crate::config::{HostPort, SmarthostTls};
use crate::routes::{AuthMechanism, Relay};
use crate::smtp::client::Credentials;

fn relay(host: &str, port: u16, tls: SmarthostTls, user: Option<&str>) -> Relay {
    Relay {
        hosts: vec![HostPort {
            host: host.into(),
            port,
        }],
        tls,
        user: user.map(str::to_string),
        password_file: user.map(|u| format!("/etc/tern/{u}").into()),
        auth: None,
        oauth: None,
    }
}

fn relay_job(id: u64, relay: &Relay, rcpts: &[&str]) -> Job {
    Job {
        relay: Some(Rc::new(relay.clone())),
        ..job(id, "", rcpts)
    }
}

fn joe() -> Option<Credentials> {
    Some(Credentials {
        user: "joe".into(),
        password: "secret".into(),
    })
}

/// The machine for a relay job, as the daemon builds it (credentials as
/// read from the password file).
fn relay_sim(r: &Relay, job: Job, credentials: Option<Credentials>) -> Sim {
    let mut base = settings();
    // The top-level smarthost mode must not leak into the route.
    base.smarthost_tls = SmarthostTls::None;
    Sim::new(job, r.hops(|_| None), r.settings(base, credentials))
}

#[test]
fn scenario_route_with_implicit_tls_and_its_own_credentials() {
    let r = relay("192.0.2.70", 465, SmarthostTls::Tls, Some("joe"));
    let mut sim = relay_sim(&r, relay_job(1, &r, &["bob@far.test"]), joe()).peer(
        sa("192.0.2.70", 465),
        Peer::Server(ServerOpts {
            tls: false,
            auth: true,
        }),
    );
    sim.finish();
    assert_eq!(sim.tls_starts, vec![("192.0.2.70".to_string(), true)]);
    assert_eq!(
        sim.outcomes(),
        vec![(10, delivered("192.0.2.70[192.0.2.70]:465"))]
    );
    assert_eq!(sim.messages, 1);
}

#[test]
fn scenario_route_with_wrong_credentials_defers() {
    let r = relay("192.0.2.70", 587, SmarthostTls::None, Some("joe"));
    let wrong = Some(Credentials {
        user: "joe".into(),
        password: "other".into(),
    });
    let mut sim = relay_sim(&r, relay_job(1, &r, &["bob@far.test"]), wrong).peer(
        sa("192.0.2.70", 587),
        Peer::Server(ServerOpts {
            tls: false,
            auth: true,
        }),
    );
    sim.finish();
    assert_eq!(sim.deferred_reason().code, 535);
    assert_eq!(sim.messages, 0);
}

#[test]
fn scenario_route_starttls_mode_comes_from_the_route() {
    let r = relay("relay.work.test", 587, SmarthostTls::StartTls, None);
    let mut sim = relay_sim(&r, relay_job(1, &r, &["bob@far.test"]), None)
        .dns(Ok(vec![mx("relay.work.test", 0, &["192.0.2.71"])]))
        .peer(sa("192.0.2.71", 587), Peer::Server(WITH_TLS));
    sim.finish();
    assert_eq!(sim.lookups, vec![Lookup::Host("relay.work.test".into())]);
    // Verified STARTTLS, as for a smarthost in starttls mode.
    assert_eq!(sim.tls_starts, vec![("relay.work.test".to_string(), true)]);
    assert_eq!(
        sim.outcomes(),
        vec![(10, delivered("relay.work.test[192.0.2.71]:587"))]
    );
}

#[test]
fn scenario_idle_session_takes_no_job_for_a_relay_with_other_credentials() {
    let alice = relay("192.0.2.70", 587, SmarthostTls::None, Some("alice"));
    let bob = relay("192.0.2.70", 587, SmarthostTls::None, Some("bob"));
    let mut sim = relay_sim(&alice, relay_job(1, &alice, &["x@a.test"]), None)
        .peer(sa("192.0.2.70", 587), Peer::Server(PLAIN));
    sim.run();
    assert!(sim.m.is_idle());
    // Same host and port, other user: a session of its own.
    let other = relay_job(2, &bob, &["y@b.test"]);
    assert_eq!(sim.m.next_job(other.clone(), sim.now), Err(Box::new(other)));
    // The default smarthost (no relay) is another destination too.
    let plain = job(3, "", &["z@c.test"]);
    assert_eq!(sim.m.next_job(plain.clone(), sim.now), Err(Box::new(plain)));
    assert_ne!(
        relay_job(2, &bob, &[]).destination_key(),
        relay_job(1, &alice, &[]).destination_key()
    );
    // The same relay: reused.
    assert!(sim
        .m
        .next_job(relay_job(4, &alice, &["w@a.test"]), sim.now)
        .is_ok());
    sim.finish();
    assert_eq!(sim.connects.len(), 1);
    assert_eq!(sim.messages, 2);
}

#[test]
fn relay_hops_resolve_addresses_and_hosts_entries() {
    let r = Relay {
        hosts: vec![
            HostPort {
                host: "192.0.2.9".into(),
                port: 25,
            },
            HostPort {
                host: "router-relay".into(),
                port: 2525,
            },
            HostPort {
                host: "smtp.example.com".into(),
                port: 587,
            },
        ],
        ..relay("x", 1, SmarthostTls::None, None)
    };
    let hops = r.hops(|name| (name == "router-relay").then(|| vec![ip("10.0.0.1")]));
    assert_eq!(
        hops,
        vec![
            Hop {
                name: "192.0.2.9".into(),
                port: 25,
                addrs: Some(vec![ip("192.0.2.9")])
            },
            Hop {
                name: "router-relay".into(),
                port: 2525,
                addrs: Some(vec![ip("10.0.0.1")])
            },
            Hop {
                name: "smtp.example.com".into(),
                port: 587,
                addrs: None
            },
        ]
    );
}

/// A server offering both mechanisms, answering a LOGIN dialog for joe.
fn plain_and_login() -> Script {
    Script::ok()
        .with("EHLO", "250-mx.test\r\n250 AUTH PLAIN LOGIN")
        .with("AUTH PLAIN", "235 2.7.0 ok")
        .with("AUTH LOGIN", "334 VXNlcm5hbWU6")
        .with("AM9L", "334 UGFzc3dvcmQ6") // base64("joe")
        .with("C2VJCMV0", "235 2.7.0 ok") // base64("secret")
}

fn auth_commands(sim: &Sim) -> Vec<String> {
    sim.commands
        .iter()
        .filter(|c| c.starts_with("AUTH"))
        .cloned()
        .collect()
}

#[test]
fn scenario_route_auth_login_is_used_even_when_plain_is_offered() {
    let mut r = relay("192.0.2.70", 587, SmarthostTls::None, Some("joe"));
    r.auth = Some(AuthMechanism::Login);
    let mut sim = relay_sim(&r, relay_job(1, &r, &["bob@far.test"]), joe())
        .peer(sa("192.0.2.70", 587), Peer::Script(plain_and_login()));
    sim.finish();
    assert_eq!(auth_commands(&sim), vec!["AUTH LOGIN"]);
    assert_eq!(sim.messages, 1);
    // Without `auth=`: PLAIN, as offered first.
    r.auth = None;
    let mut sim = relay_sim(&r, relay_job(1, &r, &["bob@far.test"]), joe())
        .peer(sa("192.0.2.70", 587), Peer::Script(plain_and_login()));
    sim.finish();
    assert_eq!(auth_commands(&sim).len(), 1);
    assert!(auth_commands(&sim)[0].starts_with("AUTH PLAIN"));
}

#[test]
fn scenario_route_auth_plain_not_offered_defers() {
    let mut r = relay("192.0.2.70", 587, SmarthostTls::None, Some("joe"));
    r.auth = Some(AuthMechanism::Plain);
    let login_only = plain_and_login().with("EHLO", "250-mx.test\r\n250 AUTH LOGIN");
    let mut sim = relay_sim(&r, relay_job(1, &r, &["bob@far.test"]), joe())
        .peer(sa("192.0.2.70", 587), Peer::Script(login_only));
    sim.finish();
    assert!(auth_commands(&sim).is_empty());
    let reason = sim.deferred_reason();
    assert!(reason.text.contains("AUTH mechanism"), "{reason}");
    assert_eq!(sim.messages, 0);
}

#[test]
fn same_destination_and_has_destination_agree_with_key_equality() {
    let alice = relay("192.0.2.70", 587, SmarthostTls::None, Some("alice"));
    let bob = relay("192.0.2.70", 587, SmarthostTls::None, Some("bob"));
    let other_port = relay("192.0.2.70", 465, SmarthostTls::Tls, Some("alice"));
    let jobs = [
        relay_job(1, &alice, &["x@a.test"]),
        relay_job(2, &alice, &["y@b.test"]),
        relay_job(3, &bob, &["x@a.test"]),
        relay_job(4, &other_port, &["x@a.test"]),
        job(5, "", &["x@a.test"]),
        job(6, "a.test", &["x@a.test"]),
        job(7, "b.test", &["x@b.test"]),
        job(8, "a.test", &["z@a.test"]),
    ];
    let mut equal_pairs = 0;
    for a in &jobs {
        for b in &jobs {
            let equal = a.destination_key() == b.destination_key();
            assert_eq!(a.same_destination(b), equal, "{} / {}", a.id, b.id);
            assert_eq!(
                a.has_destination(&b.destination_key()),
                equal,
                "{} / {}",
                a.id,
                b.id
            );
            equal_pairs += usize::from(equal);
        }
    }
    // Each job with itself, and the pairs 1/2 and 6/8 both ways.
    assert_eq!(equal_pairs, jobs.len() + 4);
}
