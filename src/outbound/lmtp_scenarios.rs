//! LMTP scenarios (RFC 2033, `local_delivery = lmtp`): the outbound
//! machine with the client in its LMTP mode, to a unix socket or a
//! `host:port`, in the simulated world of [`super::sim`].

use std::path::PathBuf;

use super::machine::{Hop, Lookup, Settings};
use super::sim::*;
use super::Job;
use crate::config::{HostPort, LmtpTarget};
use crate::delivery::outcome::{Origin, Outcome, Status};
use crate::spool::QueueId;

const SOCKET: &str = "/run/dovecot/lmtp";
const RELAY: &str = "unix:/run/dovecot/lmtp";

fn lmtp_job(id: u64, target: &LmtpTarget, rcpts: &[&str]) -> Job {
    Job {
        lmtp: Some(std::rc::Rc::new(target.clone())),
        ..job(id, "", rcpts)
    }
}

fn unix_target() -> LmtpTarget {
    LmtpTarget::Unix(PathBuf::from(SOCKET))
}

/// An LMTP server with PIPELINING (and STARTTLS, never used) whose replies
/// after the dot are `after_dot` (CRLF-separated, one per recipient).
fn lmtp_server(after_dot: &'static str) -> Script {
    Script::ok()
        .with(
            "LHLO",
            "250-lmtp.test\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 ENHANCEDSTATUSCODES",
        )
        .with(".", after_dot)
}

/// A machine for an LMTP job to the unix socket, answered by `peer`.
fn unix_sim(job: Job, peer: Peer) -> Sim {
    let mut sim = Sim::new(job, Vec::new(), settings());
    sim.unix_peers.insert(PathBuf::from(SOCKET), peer);
    sim
}

fn remote(code: u16, status: Status, text: &str) -> crate::delivery::outcome::Reason {
    crate::delivery::outcome::Reason {
        origin: Origin::Remote {
            relay: RELAY.into(),
        },
        code,
        status,
        text: text.into(),
    }
}

#[test]
fn scenario_lmtp_mixed_replies_after_data_decide_each_recipient() {
    let server =
        lmtp_server("250 2.0.0 <ann> saved\r\n452 4.2.2 <bob> quota\r\n550 5.1.1 <cid> unknown");
    let job = lmtp_job(1, &unix_target(), &["ann", "bob", "cid"]);
    let mut sim = unix_sim(job, Peer::Script(server));
    sim.finish();
    assert_eq!(sim.unix_connects, vec![PathBuf::from(SOCKET)]);
    assert!(sim.connects.is_empty() && sim.lookups.is_empty());
    assert_eq!(sim.commands[0], "LHLO tern.test");
    assert!(
        !sim.commands
            .iter()
            .any(|c| c == "STARTTLS" || c.starts_with("EHLO")),
        "{:?}",
        sim.commands
    );
    assert!(sim.commands.iter().any(|c| c == "RCPT TO:<bob>"));
    assert_eq!(sim.messages, 1, "one DATA for the three recipients");
    assert_eq!(
        sim.outcomes(),
        vec![
            (10, delivered(RELAY)),
            (
                11,
                Outcome::Deferred(remote(452, Status::new(4, 2, 2), "<bob> quota"))
            ),
            (
                12,
                Outcome::Failed(remote(550, Status::new(5, 1, 1), "<cid> unknown"))
            ),
        ]
    );
}

#[test]
fn scenario_lmtp_connection_lost_mid_replies_defers_the_unanswered_once() {
    // The server answers for ann only, then the connection drops.
    let server = lmtp_server("250 2.0.0 <ann> saved");
    let job = lmtp_job(1, &unix_target(), &["ann", "bob", "cid"]);
    let mut sim = unix_sim(job, Peer::Script(server));
    sim.run();
    assert!(sim.reports.is_empty(), "bob's and cid's replies are owed");
    sim.m.handle_closed(sim.now);
    sim.finish();
    let outcomes = sim.outcomes();
    assert_eq!(outcomes[0], (10, delivered(RELAY)));
    for (_, o) in &outcomes[1..] {
        let Outcome::Deferred(r) = o else {
            panic!("not deferred: {o:?}");
        };
        assert_eq!((r.code, r.status), (451, Status::new(4, 4, 2)));
        assert_eq!(r.text, format!("connection to {RELAY} lost"));
    }
    // Nothing is sent again in this attempt: ann is not delivered twice.
    assert_eq!(sim.unix_connects.len(), 1);
    assert_eq!(sim.messages, 1);
}

#[test]
fn scenario_lmtp_retry_sends_only_the_deferred_recipient() {
    // The runner's next attempt carries only the recipients still open.
    let server = lmtp_server("250 2.0.0 <bob> saved");
    let mut retry = lmtp_job(1, &unix_target(), &["bob"]);
    retry.recipients = vec![(11, "bob".into())];
    let mut sim = unix_sim(retry, Peer::Script(server));
    sim.finish();
    let rcpts: Vec<&String> = sim
        .commands
        .iter()
        .filter(|c| c.starts_with("RCPT"))
        .collect();
    assert_eq!(rcpts, vec!["RCPT TO:<bob>"]);
    assert_eq!(sim.outcomes(), vec![(11, delivered(RELAY))]);
}

#[test]
fn scenario_lmtp_missing_socket_defers_everyone() {
    let job = lmtp_job(1, &unix_target(), &["ann", "bob"]);
    let mut sim = Sim::new(job, Vec::new(), settings());
    sim.finish();
    let r = sim.deferred_reason();
    assert_eq!((r.code, r.status), (451, Status::new(4, 4, 1)));
    assert!(r.text.contains(RELAY), "{}", r.text);
    assert_eq!(sim.unix_connects.len(), 1, "one socket, tried once");
}

#[test]
fn scenario_lmtp_over_tcp_to_host_port_without_tls() {
    let target = LmtpTarget::Inet(HostPort {
        host: "127.0.0.1".into(),
        port: 24,
    });
    let hops = vec![Hop {
        name: "127.0.0.1".into(),
        port: 24,
        addrs: Some(vec![ip("127.0.0.1")]),
    }];
    let settings = Settings {
        trust_anchors: false,
        ..settings()
    };
    let job = lmtp_job(1, &target, &["ann", "bob"]);
    let mut sim = Sim::new(job, hops, settings).peer(
        sa("127.0.0.1", 24),
        Peer::Script(lmtp_server("250 2.0.0 a\r\n250 2.0.0 b")),
    );
    sim.finish();
    assert_eq!(sim.connects, vec![sa("127.0.0.1", 24)]);
    assert!(sim.tls_starts.is_empty());
    assert_eq!(sim.lookups, Vec::<Lookup>::new());
    let outcomes = sim.outcomes();
    assert_eq!(outcomes.len(), 2);
    for (_, o) in outcomes {
        assert_eq!(o, delivered("127.0.0.1[127.0.0.1]:24"));
    }
}

#[test]
fn scenario_lmtp_session_is_reused_for_the_next_message() {
    let server = lmtp_server("250 2.0.0 saved");
    let mut sim = unix_sim(lmtp_job(1, &unix_target(), &["ann"]), Peer::Script(server));
    sim.next_jobs
        .push_back(lmtp_job(2, &unix_target(), &["bob"]));
    // A relay job with the same empty domain is another destination.
    assert!(sim.m.destination_key() != job(3, "", &["x@y.test"]).destination_key());
    sim.finish();
    assert_eq!(sim.unix_connects.len(), 1, "one connection for both");
    assert_eq!(sim.reports.len(), 2);
    assert_eq!(sim.reports[1].0, QueueId(2));
    assert_eq!(sim.reports[1].1, vec![(10, delivered(RELAY))]);
    assert_eq!(
        sim.commands
            .iter()
            .filter(|c| c.starts_with("LHLO"))
            .count(),
        1
    );
}
