//! Scenarios for CHUNKING (RFC 3030) between the delivery machine and
//! tern's own server session (which offers it) or a scripted server (which
//! does not): the message arrives byte for byte either way.

use super::sim::*;
use crate::delivery::outcome;
use crate::smtp::client::BDAT_CHUNK;

/// A message with lines that DATA would dot-stuff and one long enough to
/// need several chunks.
fn dotted_body() -> Vec<u8> {
    let mut body = b"Subject: chunks\r\n\r\n.one\r\n..two\r\n.\r\n".to_vec();
    for i in 0..4000 {
        body.extend_from_slice(format!(".line {i:05} of the body\r\n").as_bytes());
    }
    body
}

#[test]
fn scenario_bdat_to_a_chunking_server_stores_the_body_exactly() {
    let mut sim = single(Peer::Server(PLAIN));
    sim.body = dotted_body();
    sim.finish();
    assert_eq!(sim.outcomes(), vec![(10, delivered(MX1))]);
    assert_eq!(sim.server_messages.len(), 1);
    assert_eq!(sim.server_messages[0], sim.body);
    let wire = String::from_utf8_lossy(&sim.server_wire);
    assert!(
        wire.contains(&format!("\r\nBDAT {BDAT_CHUNK}\r\n")),
        "first chunk"
    );
    assert!(wire.contains(" LAST\r\n"));
    assert!(!wire.contains("\r\nDATA\r\n"));
    assert!(!wire.contains("\r\n...two"), "no dot-stuffing");
}

#[test]
fn scenario_data_to_a_server_without_chunking() {
    let mut sim = single(Peer::Script(Script::ok()));
    sim.body = dotted_body();
    sim.finish();
    assert_eq!(sim.outcomes(), vec![(10, delivered(MX1))]);
    assert!(sim.commands.iter().any(|c| c == "DATA"));
    assert!(!sim.commands.iter().any(|c| c.starts_with("BDAT")));
    assert_eq!(sim.messages, 1);
}

#[test]
fn scenario_connection_lost_between_chunks_defers() {
    let mut sim = single(Peer::Server(PLAIN));
    sim.body = dotted_body();
    // The envelope and about one chunk, then a full socket.
    sim.write_room = Some(BDAT_CHUNK + 2_000);
    sim.run();
    assert!(sim.m.wants_body(), "stalled in the body");
    sim.m.handle_closed(sim.now);
    sim.finish();
    assert_eq!(sim.deferred_reason(), outcome::connection_lost(MX1));
    assert!(sim.server_messages.is_empty());
}

#[test]
fn scenario_two_messages_in_chunks_on_one_connection() {
    let mut sim = single(Peer::Server(PLAIN));
    sim.body = dotted_body();
    sim.next_jobs
        .push_back(job(2, "dest.test", &["carol@dest.test"]));
    sim.finish();
    assert_eq!(sim.reports.len(), 2);
    assert_eq!(sim.connects.len(), 1);
    assert_eq!(sim.server_messages.len(), 2);
    assert!(sim.server_messages.iter().all(|m| *m == sim.body));
}
