//! Drivers for DNS: the wire decoder (`dns_wire`) and the resolver's query
//! machine fed forged answers and timeouts (`dns_resolver`).
//!
//! Separate from the other groups of targets: see the parent module for what
//! the drivers share.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::dns::resolver::{
    DnsError, LookupId, MxHost, Resolver, ResolverConfig, Transmit, Transport, MAX_MX_HOSTS,
};
use crate::dns::wire::{self, Header, Message, RData, Record};

use super::{text, Input};

/// `dns::wire`: decoding never panics; a decoded message has canonical names,
/// encodes, and decodes back to itself; names in text form normalise
/// idempotently and survive a query round trip.
pub fn dns_wire(data: &[u8]) {
    let decoded = wire::decode(data);
    if let Ok(m) = &decoded {
        let (header, question) = wire::decode_head(data).expect("decode_head after decode");
        assert_eq!(header, m.header);
        assert_eq!(question, m.question);
        let names = m.question.iter().map(|q| &q.name).chain(
            [&m.answers, &m.authority, &m.additional]
                .into_iter()
                .flatten()
                .flat_map(|r| {
                    let inner = match &r.data {
                        RData::Mx { exchange, .. } => Some(exchange),
                        RData::Cname(target) => Some(target),
                        _ => None,
                    };
                    std::iter::once(&r.name).chain(inner)
                }),
        );
        for name in names {
            if !name.is_empty() {
                assert_eq!(
                    wire::normalize_name(name).as_ref(),
                    Ok(name),
                    "not canonical"
                );
            }
        }
        let encoded = m.encode().expect("a decoded message encodes");
        let again = wire::decode(&encoded).expect("an encoded message decodes");
        assert_eq!(&again, m, "decode → encode → decode");
    }
    let s = text(data);
    if let Ok(n) = wire::normalize_name(&s) {
        assert_eq!(wire::normalize_name(&n).as_ref(), Ok(&n), "normalize twice");
        let query = wire::encode_query(0x1234, &n, wire::TYPE_MX, true).expect("normalized name");
        let m = wire::decode(&query).expect("own query decodes");
        assert_eq!(m.header.id, 0x1234);
        assert_eq!(m.question.map(|q| q.name), Some(n));
    }
}

struct ResolverDriver {
    r: Resolver,
    now: Instant,
    outstanding: Vec<Transmit>,
    sent: HashSet<u64>,
    closed: HashSet<u64>,
    lookups: HashSet<LookupId>,
    results: HashMap<LookupId, Result<Vec<MxHost>, DnsError>>,
    transmits: usize,
}

const RESOLVER_NAMES: [&str; 8] = [
    "example.test",
    "mx1.example.test",
    "alias.example.test",
    "Example.TEST.",
    "[192.0.2.1]",
    "[IPv6:2001:db8::1]",
    "bad..name",
    "other.test",
];

impl ResolverDriver {
    fn collect(&mut self) {
        while let Some(t) = self.r.poll_transmit() {
            assert!(self.sent.insert(t.handle.0), "handle reused");
            self.transmits += 1;
            assert!(self.transmits < 5000, "transmits without bound");
            match t.transport {
                Transport::Udp => assert!(t.payload.len() <= wire::MAX_UDP_PAYLOAD),
                Transport::Tcp => {
                    let len = usize::from(u16::from_be_bytes([t.payload[0], t.payload[1]]));
                    assert_eq!(len + 2, t.payload.len());
                }
            }
            self.outstanding.push(t);
        }
        while let Some(h) = self.r.poll_closed() {
            assert!(self.sent.contains(&h.0), "closed a handle never sent");
            assert!(self.closed.insert(h.0), "handle closed twice");
            self.outstanding.retain(|t| t.handle != h);
        }
        while let Some((id, result)) = self.r.poll_result() {
            assert!(self.lookups.contains(&id), "result for an unknown lookup");
            if let Ok(hosts) = &result {
                assert!(!hosts.is_empty() && hosts.len() <= MAX_MX_HOSTS);
                for h in hosts {
                    assert!(!h.addrs.is_empty());
                    let first_v4 = h.addrs.iter().position(IpAddr::is_ipv4);
                    if let Some(i) = first_v4 {
                        assert!(h.addrs[i..].iter().all(IpAddr::is_ipv4), "IPv6 after IPv4");
                    }
                    let unique: HashSet<&IpAddr> = h.addrs.iter().collect();
                    assert_eq!(unique.len(), h.addrs.len(), "duplicate address");
                }
            }
            assert!(self.results.insert(id, result).is_none(), "two results");
        }
    }

    fn lookup(&mut self, input: &mut Input) {
        let choice = input.byte();
        let name = if choice & 0x80 != 0 {
            input.string()
        } else {
            RESOLVER_NAMES[usize::from(choice) % RESOLVER_NAMES.len()].to_string()
        };
        let id = if choice & 0x40 != 0 {
            self.r.resolve_host(&name, self.now)
        } else {
            self.r.resolve_mx(&name, self.now)
        };
        assert!(self.lookups.insert(id), "lookup id reused");
    }

    /// A response to `query`: its ID and question, then header flags,
    /// counts and records from the input.
    fn spliced(query: &[u8], input: &mut Input) -> Vec<u8> {
        let mut p = query[..2].to_vec();
        let flags = (input.u16() | 0x8000) & !0x7800;
        p.extend_from_slice(&flags.to_be_bytes());
        p.extend_from_slice(&[0, 1]);
        for _ in 0..3 {
            p.extend_from_slice(&[0, input.byte() % 8]);
        }
        p.extend_from_slice(&query[wire::HEADER_LEN..]);
        let n = usize::from(input.byte());
        p.extend_from_slice(input.bytes(n));
        p
    }

    /// A well-formed answer built from the input: records about the asked
    /// name and a few others, so CNAME chains, glue and MX lists come up.
    fn structured(query: &[u8], input: &mut Input) -> Vec<u8> {
        let Ok(q) = wire::decode(query) else {
            return Vec::new();
        };
        let Some(question) = q.question else {
            return Vec::new();
        };
        let names = [
            question.name.clone(),
            "mx1.example.test".to_string(),
            "mx2.example.test".to_string(),
            "alias.example.test".to_string(),
            "example.test".to_string(),
            String::new(),
        ];
        let record = |input: &mut Input| {
            let name = input.pick(&[0usize, 0, 1, 2, 3, 4]);
            let kind = input.byte();
            let ttl = u32::from(input.byte()) * 60;
            let target = names[usize::from(kind >> 3) % names.len()].clone();
            let data = match (kind & 7) % 6 {
                0 => RData::A([192, 0, 2, input.byte()].into()),
                1 => RData::Aaaa(std::net::Ipv6Addr::new(
                    0x2001,
                    0xdb8,
                    0,
                    0,
                    0,
                    0,
                    0,
                    input.u16(),
                )),
                2 => RData::Mx {
                    preference: u16::from(input.byte() % 4),
                    exchange: target,
                },
                3 => RData::Cname(target),
                4 => RData::Soa {
                    minimum: input.u32(),
                },
                _ => RData::Mx {
                    preference: 0,
                    exchange: String::new(),
                },
            };
            Record {
                name: names[name].clone(),
                ttl,
                data,
            }
        };
        let counts = [input.byte() % 6, input.byte() % 3, input.byte() % 4];
        let answers = (0..counts[0]).map(|_| record(input)).collect();
        let authority = (0..counts[1]).map(|_| record(input)).collect();
        let additional = (0..counts[2]).map(|_| record(input)).collect();
        let rcode = input.pick(&[0u8, 0, 0, 3, 2, 5]);
        Message {
            header: Header {
                id: q.header.id,
                is_response: true,
                recursion_available: true,
                truncated: input.byte().is_multiple_of(8),
                rcode,
                ..Header::default()
            },
            question: Some(question),
            answers,
            authority,
            additional,
            edns: input.byte().is_multiple_of(2).then(wire::Edns::ours),
        }
        .encode()
        .unwrap_or_default()
    }

    fn respond(&mut self, input: &mut Input, how: u8) {
        if self.outstanding.is_empty() {
            return;
        }
        let i = usize::from(input.byte()) % self.outstanding.len();
        let t = self.outstanding[i].clone();
        let query = match t.transport {
            Transport::Udp => &t.payload[..],
            Transport::Tcp => &t.payload[2..],
        };
        let payload = match how {
            0 => Self::spliced(query, input),
            1 => Self::structured(query, input),
            _ => {
                let n = usize::from(input.byte());
                let mut p = input.bytes(n).to_vec();
                if p.len() >= 2 {
                    p[..2].copy_from_slice(&query[..2]);
                }
                p
            }
        };
        let from = if input.byte() == 0xff {
            SocketAddr::from(([192, 0, 2, 99], 53))
        } else {
            t.server
        };
        self.r.handle_response(t.handle, from, &payload, self.now);
    }
}

/// `dns::resolver::Resolver`, sans-IO: lookups answered with arbitrary and
/// with well-formed-but-hostile replies (truncation, CNAME chains and loops,
/// null MX, glue), transport errors and timeouts. Every lookup ends with
/// exactly one result, every exchange handed out is closed exactly once.
pub fn dns_resolver(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.byte();
    let servers: Vec<SocketAddr> = [
        SocketAddr::from(([127, 0, 0, 1], 53)),
        SocketAddr::from(([127, 0, 0, 2], 53)),
        "[::1]:53".parse().expect("literal"),
    ][..1 + usize::from(mode % 3)]
        .to_vec();
    let cfg = ResolverConfig {
        servers,
        timeout: Duration::from_secs(1 + u64::from((mode >> 2) & 3)),
        attempts: 1 + u32::from((mode >> 4) & 3),
    };
    let seed = u64::from(input.u32());
    let mut d = ResolverDriver {
        r: Resolver::new(cfg, seeded_random(seed)),
        now: Instant::now(),
        outstanding: Vec::new(),
        sent: HashSet::new(),
        closed: HashSet::new(),
        lookups: HashSet::new(),
        results: HashMap::new(),
        transmits: 0,
    };
    d.lookup(&mut input);
    d.collect();
    let mut ops = 0;
    while !input.is_empty() && ops < 200 {
        ops += 1;
        match input.byte() % 8 {
            0 | 1 => d.respond(&mut input, 0),
            2 | 3 => d.respond(&mut input, 1),
            4 => d.respond(&mut input, 2),
            5 => {
                if !d.outstanding.is_empty() {
                    let i = usize::from(input.byte()) % d.outstanding.len();
                    let h = d.outstanding[i].handle;
                    d.r.handle_transport_error(h, d.now);
                }
            }
            6 => {
                if let Some(t) = d.r.poll_timeout() {
                    d.now = d.now.max(t);
                }
                d.r.handle_timeout(d.now);
            }
            _ => d.lookup(&mut input),
        }
        d.collect();
    }
    // Let every remaining exchange time out: each lookup must finish.
    for _ in 0..2000 {
        let Some(t) = d.r.poll_timeout() else {
            break;
        };
        d.now = d.now.max(t);
        d.r.handle_timeout(d.now);
        d.collect();
    }
    assert!(d.r.poll_timeout().is_none(), "exchanges never time out");
    assert!(d.outstanding.is_empty(), "exchanges never closed");
    assert_eq!(d.sent, d.closed, "every handle is closed once");
    for id in &d.lookups {
        assert!(d.results.contains_key(id), "lookup {id:?} never finished");
    }
}

/// A deterministic random source for the resolver (xorshift64 from the
/// input's seed): fuzzing needs repeatable query IDs, not secret ones.
fn seeded_random(seed: u64) -> crate::dns::resolver::RandomSource {
    let mut state = seed | 1;
    Box::new(move |buf: &mut [u8]| {
        for b in buf.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = state.to_le_bytes().first().copied().unwrap_or(0);
        }
        Ok(())
    })
}
