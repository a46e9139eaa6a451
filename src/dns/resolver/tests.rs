use super::*;
use crate::dns::wire::Question as WireQuestion;

const S1: &str = "192.0.2.53:53";
const S2: &str = "198.51.100.53:53";

fn config(servers: &[&str]) -> ResolverConfig {
    ResolverConfig {
        servers: servers.iter().map(|s| s.parse().unwrap()).collect(),
        timeout: Duration::from_secs(5),
        attempts: 2,
    }
}

/// A resolver, a virtual clock and helpers to answer its queries.
struct Net {
    resolver: Resolver,
    now: Instant,
}

/// A sent query, decoded.
struct Sent {
    transmit: Transmit,
    id: u16,
    /// The query carried an OPT record.
    edns: bool,
    name: String,
    qtype: u16,
}

fn rec(name: &str, ttl: u32, data: RData) -> Record {
    Record {
        name: name.into(),
        ttl,
        data,
    }
}

fn a(name: &str, ip: &str) -> Record {
    rec(name, 300, RData::A(ip.parse().unwrap()))
}

fn aaaa(name: &str, ip: &str) -> Record {
    rec(name, 300, RData::Aaaa(ip.parse().unwrap()))
}

fn mx(name: &str, preference: u16, exchange: &str) -> Record {
    let exchange = exchange.to_string();
    rec(
        name,
        300,
        RData::Mx {
            preference,
            exchange,
        },
    )
}

fn cname(name: &str, target: &str) -> Record {
    rec(name, 300, RData::Cname(target.into()))
}

fn soa(name: &str) -> Record {
    rec(name, 600, RData::Soa { minimum: 300 })
}

impl Net {
    fn new(servers: &[&str], seed: u64) -> Net {
        Net {
            resolver: Resolver::new(config(servers), seeded(seed)),
            now: Instant::now(),
        }
    }

    fn sent(&mut self) -> Option<Sent> {
        let transmit = self.resolver.poll_transmit()?;
        let query = match transmit.transport {
            Transport::Udp => transmit.payload.clone(),
            Transport::Tcp => {
                let len = u16::from_be_bytes([transmit.payload[0], transmit.payload[1]]);
                assert_eq!(usize::from(len), transmit.payload.len() - 2);
                transmit.payload[2..].to_vec()
            }
        };
        let message = wire::decode(&query).unwrap();
        assert!(message.header.recursion_desired && !message.header.is_response);
        let question = message.question.unwrap();
        Some(Sent {
            id: message.header.id,
            edns: message.edns.is_some(),
            name: question.name,
            qtype: question.qtype,
            transmit,
        })
    }

    fn expect_sent(&mut self, name: &str, qtype: u16) -> Sent {
        let sent = self.sent().expect("a query");
        assert_eq!((sent.name.as_str(), sent.qtype), (name, qtype));
        sent
    }

    fn all_sent(&mut self) -> Vec<Sent> {
        std::iter::from_fn(|| self.sent()).collect()
    }

    fn closed(&mut self) -> Vec<QueryHandle> {
        std::iter::from_fn(|| self.resolver.poll_closed()).collect()
    }

    fn deliver(&mut self, sent: &Sent, payload: &[u8]) {
        let (handle, from) = (sent.transmit.handle, sent.transmit.server);
        self.resolver
            .handle_response(handle, from, payload, self.now);
    }

    fn reply(&mut self, sent: &Sent, rcode: u8, answers: Vec<Record>, additional: Vec<Record>) {
        self.reply_with(sent, rcode, answers, vec![], additional);
    }

    fn reply_with(
        &mut self,
        sent: &Sent,
        rcode: u8,
        answers: Vec<Record>,
        authority: Vec<Record>,
        additional: Vec<Record>,
    ) {
        let payload = response(sent, rcode, answers, authority, additional);
        self.deliver(sent, &payload);
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.resolver.handle_timeout(self.now);
    }

    fn result(&mut self) -> Option<(LookupId, Result<Vec<MxHost>, DnsError>)> {
        self.resolver.poll_result()
    }
}

fn response(
    sent: &Sent,
    rcode: u8,
    answers: Vec<Record>,
    authority: Vec<Record>,
    additional: Vec<Record>,
) -> Vec<u8> {
    Message {
        header: Header {
            id: sent.id,
            is_response: true,
            recursion_desired: true,
            recursion_available: true,
            rcode,
            ..Header::default()
        },
        question: Some(WireQuestion {
            name: sent.name.clone(),
            qtype: sent.qtype,
            qclass: CLASS_IN,
        }),
        answers,
        authority,
        additional,
        edns: None,
    }
    .encode()
    .unwrap()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn host(name: &str, preference: u16, addrs: &[&str]) -> MxHost {
    MxHost {
        name: name.into(),
        preference,
        addrs: addrs.iter().map(|a| ip(a)).collect(),
    }
}

// -- EDNS(0) and query IDs (issue 11 item 15) ------------------------------

fn glued_mx_answer(net: &mut Net, q: &Sent, edns: Option<wire::Edns>) {
    let mut m = wire::decode(&response(
        q,
        RCODE_NOERROR,
        vec![mx("example.com", 10, "mx.example.com")],
        vec![],
        vec![
            a("mx.example.com", "192.0.2.1"),
            aaaa("mx.example.com", "2001:db8::1"),
        ],
    ))
    .unwrap();
    m.edns = edns;
    net.deliver(q, &m.encode().unwrap());
}

#[test]
fn queries_carry_edns0_and_answers_with_opt_are_accepted() {
    let mut net = Net::new(&[S1], 1);
    let id = net.resolver.resolve_mx("example.com", net.now);
    let q = net.expect_sent("example.com", TYPE_MX);
    assert!(q.edns, "every query carries an OPT record");
    let opt = wire::decode(&q.transmit.payload).unwrap().edns.unwrap();
    assert_eq!(opt.udp_payload, 1232);
    glued_mx_answer(&mut net, &q, Some(wire::Edns::ours()));
    assert_eq!(
        net.result(),
        Some((
            id,
            Ok(vec![host(
                "mx.example.com",
                10,
                &["2001:db8::1", "192.0.2.1"]
            )])
        ))
    );
}

/// Answers an MX query for example.com with one host, its A query with
/// 192.0.2.1 and its AAAA query with NODATA and an SOA (cached
/// negatively), so the whole answer is cacheable.
fn answer_mx_with_one_a(net: &mut Net, q: &Sent) {
    net.reply(
        q,
        RCODE_NOERROR,
        vec![mx("example.com", 10, "mx.example.com")],
        vec![],
    );
    for sent in net.all_sent() {
        let answer = match sent.qtype {
            TYPE_A => vec![a("mx.example.com", "192.0.2.1")],
            _ => vec![],
        };
        net.reply_with(
            &sent,
            RCODE_NOERROR,
            answer,
            vec![soa("example.com")],
            vec![],
        );
    }
}

#[test]
fn reconfigure_moves_new_lookups_to_the_new_servers_and_drops_their_cache() {
    let mut net = Net::new(&[S1], 3);
    net.resolver.resolve_mx("example.com", net.now);
    let q = net.expect_sent("example.com", TYPE_MX);
    answer_mx_with_one_a(&mut net, &q);
    assert!(net.result().is_some());
    net.closed();
    // The same servers: the cached answer stays, nothing is sent.
    net.resolver.reconfigure(config(&[S1]));
    net.resolver.resolve_mx("example.com", net.now);
    assert!(net.sent().is_none(), "answered from the cache");
    assert!(net.result().is_some());
    // New servers (SIGHUP with a new dns_servers): asked, not the cache.
    net.resolver.reconfigure(config(&[S2]));
    net.resolver.resolve_mx("example.com", net.now);
    let again = net.expect_sent("example.com", TYPE_MX);
    assert_eq!(again.transmit.server, S2.parse().unwrap());
}

#[test]
fn server_refusing_edns_is_asked_again_plainly_and_remembered() {
    let badvers = wire::Edns {
        extended_rcode: 1,
        ..wire::Edns::ours()
    };
    for (rcode, opt, echo_question) in [
        (RCODE_FORMERR, None, true),
        (RCODE_FORMERR, None, false),
        (RCODE_NOTIMP, None, true),
        (RCODE_NOERROR, Some(badvers), true),
    ] {
        let mut net = Net::new(&[S1, S2], 7);
        let id = net.resolver.resolve_mx("example.com", net.now);
        let q = net.expect_sent("example.com", TYPE_MX);
        assert!(q.edns);
        let mut refusal = wire::decode(&response(&q, rcode, vec![], vec![], vec![])).unwrap();
        refusal.edns = opt;
        if !echo_question {
            refusal.question = None;
        }
        net.deliver(&q, &refusal.encode().unwrap());
        // The same server again, at once, without OPT; not a new try.
        let plain = net.expect_sent("example.com", TYPE_MX);
        assert!(!plain.edns, "rcode {rcode} opt {opt:?}");
        assert_eq!(plain.transmit.server, q.transmit.server);
        glued_mx_answer(&mut net, &plain, None);
        assert_eq!(
            net.result(),
            Some((
                id,
                Ok(vec![host(
                    "mx.example.com",
                    10,
                    &["2001:db8::1", "192.0.2.1"]
                )])
            ))
        );
        // Remembered for S1 (first try of the next lookups goes there).
        net.resolver.resolve_mx("example.org", net.now);
        let next = net.expect_sent("example.org", TYPE_MX);
        assert_eq!(next.transmit.server, S1.parse().unwrap());
        assert!(!next.edns, "S1 is remembered as plain");
        // ... and a plain query's FORMERR is an ordinary failure: next server.
        net.reply(&next, RCODE_FORMERR, vec![], vec![]);
        let other = net.expect_sent("example.org", TYPE_MX);
        assert_eq!(other.transmit.server, S2.parse().unwrap());
        assert!(other.edns, "S2 never refused EDNS");
    }
}

#[test]
fn malformed_answer_to_an_edns_query_is_asked_again_plainly() {
    let mut net = Net::new(&[S1, S2], 9);
    let id = net.resolver.resolve_mx("example.com", net.now);
    let q = net.expect_sent("example.com", TYPE_MX);
    assert!(q.edns);
    // The header and question decode, the answer it announces is cut off.
    let mut mangled = response(
        &q,
        RCODE_NOERROR,
        vec![mx("example.com", 10, "mx.example.com")],
        vec![],
        vec![],
    );
    mangled.truncate(mangled.len() - 3);
    assert!(wire::decode(&mangled).is_err());
    net.deliver(&q, &mangled);
    let plain = net.expect_sent("example.com", TYPE_MX);
    assert!(!plain.edns);
    assert_eq!(plain.transmit.server, q.transmit.server);
    // Malformed again without OPT: an ordinary failure, the next server.
    net.deliver(&plain, &mangled_for(&plain));
    let other = net.expect_sent("example.com", TYPE_MX);
    assert_eq!(other.transmit.server, S2.parse().unwrap());
    assert!(other.edns);
    glued_mx_answer(&mut net, &other, Some(wire::Edns::ours()));
    assert!(matches!(net.result(), Some((got, Ok(_))) if got == id));
    // S1 stays plain for later lookups.
    net.resolver.resolve_mx("example.org", net.now);
    let next = net.expect_sent("example.org", TYPE_MX);
    assert_eq!(next.transmit.server, S1.parse().unwrap());
    assert!(!next.edns);
}

fn mangled_for(q: &Sent) -> Vec<u8> {
    let mut p = response(
        q,
        RCODE_NOERROR,
        vec![mx(&q.name, 10, "mx.example.com")],
        vec![],
        vec![],
    );
    p.truncate(p.len() - 3);
    p
}

#[test]
fn no_random_source_fails_closed() {
    let failing: RandomSource = Box::new(|_: &mut [u8]| Err(()));
    let mut resolver = Resolver::new(config(&[S1]), failing);
    let now = Instant::now();
    let id = resolver.resolve_mx("example.com", now);
    assert!(
        resolver.poll_transmit().is_none(),
        "no query with a guessable ID"
    );
    match resolver.poll_result() {
        Some((got, Err(DnsError::Temporary(why)))) => {
            assert_eq!(got, id);
            assert!(why.contains("random"), "{why}");
        }
        other => panic!("{other:?}"),
    }
}

// -- MX policy -----------------------------------------------------------

#[test]
fn mx_answer_with_compression_uses_additional_addresses() {
    let mut net = Net::new(&[S1], 1);
    let id = net.resolver.resolve_mx("Example.COM.", net.now);
    let q = net.expect_sent("example.com", TYPE_MX);
    assert_eq!(q.transmit.transport, Transport::Udp);
    assert_eq!(q.transmit.server, S1.parse().unwrap());
    // Hand-compressed: owner -> question name, exchange "mx1" -> it too,
    // additional A and AAAA owners -> the exchange.
    let mut p = q.id.to_be_bytes().to_vec();
    p.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 2]);
    p.extend_from_slice(b"\x07example\x03com\x00\x00\x0f\x00\x01");
    p.extend_from_slice(&[0xc0, 12, 0, 15, 0, 1, 0, 0, 1, 44, 0, 8, 0, 10]);
    p.extend_from_slice(b"\x03MX1\xc0\x0c"); // exchange at offset 43
    p.extend_from_slice(&[0xc0, 43, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
    p.extend_from_slice(&[0xc0, 43, 0, 28, 0, 1, 0, 0, 0, 60, 0, 16]);
    p.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
    net.deliver(&q, &p);
    assert!(net.sent().is_none(), "glue made the A/AAAA queries useless");
    assert_eq!(net.closed(), vec![q.transmit.handle]);
    assert_eq!(
        net.result(),
        Some((
            id,
            Ok(vec![host(
                "mx1.example.com",
                10,
                &["2001:db8::1", "192.0.2.1"]
            )])
        ))
    );
    assert!(net.resolver.poll_timeout().is_none());
}

#[test]
fn mx_hosts_sorted_and_resolved_ipv6_first() {
    let mut net = Net::new(&[S1], 1);
    let id = net.resolver.resolve_mx("example.com", net.now);
    let q = net.expect_sent("example.com", TYPE_MX);
    let answers = vec![
        mx("example.com", 20, "b.example.com"),
        mx("example.com", 10, "a.example.com"),
    ];
    net.reply(&q, RCODE_NOERROR, answers, vec![]);
    let queries = net.all_sent();
    let asked: Vec<(&str, u16)> = queries.iter().map(|s| (s.name.as_str(), s.qtype)).collect();
    assert_eq!(
        asked,
        vec![
            ("a.example.com", TYPE_AAAA),
            ("a.example.com", TYPE_A),
            ("b.example.com", TYPE_AAAA),
            ("b.example.com", TYPE_A),
        ]
    );
    // Answer out of order; the result keeps MX order.
    net.reply(
        &queries[3],
        RCODE_NOERROR,
        vec![a("b.example.com", "192.0.2.2")],
        vec![],
    );
    net.reply(&queries[2], RCODE_NOERROR, vec![], vec![]);
    net.reply(
        &queries[1],
        RCODE_NOERROR,
        vec![a("a.example.com", "192.0.2.1")],
        vec![],
    );
    assert!(net.result().is_none());
    net.reply(
        &queries[0],
        RCODE_NOERROR,
        vec![aaaa("a.example.com", "2001:db8::a")],
        vec![],
    );
    assert_eq!(
        net.result(),
        Some((
            id,
            Ok(vec![
                host("a.example.com", 10, &["2001:db8::a", "192.0.2.1"]),
                host("b.example.com", 20, &["192.0.2.2"]),
            ])
        ))
    );
    assert_eq!(net.closed().len(), 5);
}

#[test]
fn null_mx_is_permanent() {
    let mut net = Net::new(&[S1], 1);
    let id = net.resolver.resolve_mx("example.com", net.now);
    let q = net.expect_sent("example.com", TYPE_MX);
    net.reply(&q, RCODE_NOERROR, vec![mx("example.com", 0, "")], vec![]);
    assert!(net.sent().is_none());
    let (got, result) = net.result().unwrap();
    assert_eq!(got, id);
    let err = result.unwrap_err();
    assert_eq!(err, DnsError::NullMx);
    assert!(err.is_permanent());
}

#[test]
fn nodata_mx_falls_back_to_implicit_mx() {
    let mut net = Net::new(&[S1], 1);
    let id = net.resolver.resolve_mx("example.com", net.now);
    let q = net.expect_sent("example.com", TYPE_MX);
    net.reply_with(&q, RCODE_NOERROR, vec![], vec![soa("example.com")], vec![]);
    let v6 = net.expect_sent("example.com", TYPE_AAAA);
    let v4 = net.expect_sent("example.com", TYPE_A);
    net.reply(&v6, RCODE_NOERROR, vec![], vec![]);
    net.reply(
        &v4,
        RCODE_NOERROR,
        vec![a("example.com", "192.0.2.7")],
        vec![],
    );
    assert_eq!(
        net.result(),
        Some((id, Ok(vec![host("example.com", 0, &["192.0.2.7"])])))
    );
}

#[test]
fn no_mx_and_no_address_is_no_address() {
    let mut net = Net::new(&[S1], 1);
    let id = net.resolver.resolve_mx("example.com", net.now);
    let q = net.expect_sent("example.com", TYPE_MX);
    net.reply(&q, RCODE_NOERROR, vec![], vec![]);
    for sent in net.all_sent() {
        net.reply(&sent, RCODE_NOERROR, vec![], vec![]);
    }
    assert_eq!(net.result(), Some((id, Err(DnsError::NoAddress))));
}

#[test]
fn nxdomain_is_permanent() {
    let mut net = Net::new(&[S1], 1);
    let id = net.resolver.resolve_mx("nowhere.example", net.now);
    let q = net.expect_sent("nowhere.example", TYPE_MX);
    net.reply(&q, RCODE_NXDOMAIN, vec![], vec![]);
    assert_eq!(net.result(), Some((id, Err(DnsError::NoSuchDomain))));
    assert!(net.sent().is_none());
}

#[test]
fn mx_host_without_address_is_dropped() {
    let mut net = Net::new(&[S1], 1);
    let id = net.resolver.resolve_mx("example.com", net.now);
    let q = net.expect_sent("example.com", TYPE_MX);
    let answers = vec![
        mx("example.com", 10, "gone.example.com"),
        mx("example.com", 20, "ok.example.com"),
    ];
    net.reply(
        &q,
        RCODE_NOERROR,
        answers,
        vec![a("ok.example.com", "192.0.2.9")],
    );
    // ok.example.com has A glue, so only its AAAA is asked.
    let queries = net.all_sent();
    assert_eq!(queries.len(), 3);
    for sent in &queries {
        net.reply(sent, RCODE_NXDOMAIN, vec![], vec![]);
    }
    assert_eq!(
        net.result(),
        Some((id, Ok(vec![host("ok.example.com", 20, &["192.0.2.9"])])))
    );
}

#[test]
fn mx_hosts_all_failing_temporarily_is_temporary() {
    let mut net = Net::new(&[S1], 1);
    net.resolver.cfg.attempts = 1;
    let id = net.resolver.resolve_mx("example.com", net.now);
    let q = net.expect_sent("example.com", TYPE_MX);
    net.reply(
        &q,
        RCODE_NOERROR,
        vec![mx("example.com", 10, "mx.example.com")],
        vec![],
    );
    let queries = net.all_sent();
    net.reply(&queries[0], RCODE_NOERROR, vec![], vec![]);
    net.reply(&queries[1], RCODE_SERVFAIL, vec![], vec![]);
    let (got, result) = net.result().unwrap();
    assert_eq!(got, id);
    assert!(matches!(result, Err(DnsError::Temporary(ref why)) if why.contains("SERVFAIL")));
}

#[test]
fn equal_preferences_are_shuffled_across_seeds() {
    let mut orders = std::collections::HashSet::new();
    for seed in 0..32 {
        let mut net = Net::new(&[S1], seed);
        let id = net.resolver.resolve_mx("example.com", net.now);
        let q = net.expect_sent("example.com", TYPE_MX);
        let answers = vec![
            mx("example.com", 5, "first.example.com"),
            mx("example.com", 10, "x.example.com"),
            mx("example.com", 10, "y.example.com"),
        ];
        let glue = vec![
            a("first.example.com", "192.0.2.1"),
            aaaa("first.example.com", "2001:db8::1"),
            a("x.example.com", "192.0.2.2"),
            aaaa("x.example.com", "2001:db8::2"),
            a("y.example.com", "192.0.2.3"),
            aaaa("y.example.com", "2001:db8::3"),
        ];
        net.reply(&q, RCODE_NOERROR, answers, glue);
        let (got, result) = net.result().unwrap();
        assert_eq!(got, id);
        let names: Vec<String> = result.unwrap().into_iter().map(|h| h.name).collect();
        assert_eq!(names[0], "first.example.com");
        orders.insert(names);
    }
    assert_eq!(
        orders.len(),
        2,
        "both orders of the preference-10 pair: {orders:?}"
    );
}

#[test]
fn duplicate_mx_hosts_and_root_exchanges_are_dropped() {
    let mut net = Net::new(&[S1], 1);
    let id = net.resolver.resolve_mx("example.com", net.now);
    let q = net.expect_sent("example.com", TYPE_MX);
    let answers = vec![
        mx("example.com", 10, "mx.example.com"),
        mx("example.com", 20, "mx.example.com"),
        mx("example.com", 30, ""),
    ];
    net.reply(
        &q,
        RCODE_NOERROR,
        answers,
        vec![a("mx.example.com", "192.0.2.1")],
    );
    assert_eq!(net.all_sent().len(), 1, "only mx.example.com AAAA");
    let _ = id;
}

#[test]
fn many_mx_hosts_are_resolved_with_bounded_parallelism() {
    let mut net = Net::new(&[S1], 1);
    let id = net.resolver.resolve_mx("example.com", net.now);
    let q = net.expect_sent("example.com", TYPE_MX);
    let answers = (0..20u16)
        .map(|i| mx("example.com", i, &format!("mx{i}.example.com")))
        .collect();
    net.reply(&q, RCODE_NOERROR, answers, vec![]);
    let mut answered = 0;
    loop {
        let batch = net.all_sent();
        if batch.is_empty() {
            break;
        }
        assert!(batch.len() <= MAX_PARALLEL_QUESTIONS);
        assert!(net.resolver.exchanges.len() <= MAX_PARALLEL_QUESTIONS);
        for sent in batch {
            let answer = match sent.qtype {
                TYPE_A => vec![a(&sent.name, "192.0.2.1")],
                _ => vec![],
            };
            net.reply(&sent, RCODE_NOERROR, answer, vec![]);
            answered += 1;
        }
    }
    assert_eq!(answered, 2 * MAX_MX_HOSTS);
    let (got, result) = net.result().unwrap();
    assert_eq!(got, id);
    let hosts = result.unwrap();
    assert_eq!(hosts.len(), MAX_MX_HOSTS);
    assert_eq!(hosts[15].name, "mx15.example.com");
}

#[test]
fn invalid_names_fail_at_once_and_permanently() {
    let mut net = Net::new(&[S1], 1);
    let long = format!("{}.com", "x".repeat(64));
    let too_long = vec!["a".repeat(50); 5].join(".");
    assert_eq!(too_long.len(), 254);
    for name in [long.as_str(), too_long.as_str(), "a..b", "", "."] {
        let id = net.resolver.resolve_mx(name, net.now);
        assert_eq!(
            net.result(),
            Some((id, Err(DnsError::NoSuchDomain))),
            "{name:?}"
        );
        let id = net.resolver.resolve_host(name, net.now);
        assert_eq!(
            net.result(),
            Some((id, Err(DnsError::NoSuchDomain))),
            "{name:?}"
        );
    }
    assert!(net.sent().is_none());
}

#[test]
fn address_literals_resolve_at_once() {
    let mut net = Net::new(&[S1], 1);
    let id = net.resolver.resolve_mx("[192.0.2.1]", net.now);
    assert_eq!(
        net.result(),
        Some((id, Ok(vec![host("[192.0.2.1]", 0, &["192.0.2.1"])])))
    );
    let id = net.resolver.resolve_mx("[IPv6:2001:db8::1]", net.now);
    let (got, result) = net.result().unwrap();
    assert_eq!(
        (got, result.unwrap()[0].addrs.clone()),
        (id, vec![ip("2001:db8::1")])
    );
    let id = net.resolver.resolve_host("2001:db8::2", net.now);
    let (got, result) = net.result().unwrap();
    assert_eq!(
        (got, result.unwrap()[0].addrs.clone()),
        (id, vec![ip("2001:db8::2")])
    );
    assert!(net.sent().is_none());
}

// -- resolve_host ------------------------------------------------------

#[test]
fn resolve_host_asks_aaaa_and_a() {
    let mut net = Net::new(&[S1], 1);
    let id = net.resolver.resolve_host("smtp.example.net", net.now);
    let v6 = net.expect_sent("smtp.example.net", TYPE_AAAA);
    let v4 = net.expect_sent("smtp.example.net", TYPE_A);
    net.reply(
        &v4,
        RCODE_NOERROR,
        vec![a("smtp.example.net", "192.0.2.5")],
        vec![],
    );
    net.reply(
        &v6,
        RCODE_NOERROR,
        vec![aaaa("smtp.example.net", "2001:db8::5")],
        vec![],
    );
    assert_eq!(
        net.result(),
        Some((
            id,
            Ok(vec![host(
                "smtp.example.net",
                0,
                &["2001:db8::5", "192.0.2.5"]
            )])
        ))
    );
}

#[test]
fn resolve_host_nxdomain_is_no_such_domain() {
    let mut net = Net::new(&[S1], 1);
    let id = net.resolver.resolve_host("nope.example", net.now);
    for sent in net.all_sent() {
        net.reply(&sent, RCODE_NXDOMAIN, vec![], vec![]);
    }
    assert_eq!(net.result(), Some((id, Err(DnsError::NoSuchDomain))));
}

// -- CNAME ---------------------------------------------------------------

#[test]
fn cname_chain_in_one_answer_is_followed() {
    let mut net = Net::new(&[S1], 1);
    let id = net.resolver.resolve_host("www.example.com", net.now);
    let v6 = net.expect_sent("www.example.com", TYPE_AAAA);
    let v4 = net.expect_sent("www.example.com", TYPE_A);
    let chain = vec![
        cname("www.example.com", "b.example.net"),
        cname("b.example.net", "c.example.org"),
        a("c.example.org", "192.0.2.3"),
        a("unrelated.example", "192.0.2.99"),
    ];
    net.reply(&v4, RCODE_NOERROR, chain, vec![]);
    let v6_chain = vec![
        cname("www.example.com", "b.example.net"),
        cname("b.example.net", "c.example.org"),
    ];
    net.reply_with(
        &v6,
        RCODE_NOERROR,
        v6_chain,
        vec![soa("example.org")],
        vec![],
    );
    // AAAA: only CNAMEs came back, so the target is asked again.
    let again = net.expect_sent("c.example.org", TYPE_AAAA);
    net.reply_with(
        &again,
        RCODE_NOERROR,
        vec![],
        vec![soa("example.org")],
        vec![],
    );
    assert_eq!(
        net.result(),
        Some((id, Ok(vec![host("www.example.com", 0, &["192.0.2.3"])])))
    );
}

#[test]
fn cname_only_answer_requeries_target() {
    let mut net = Net::new(&[S1], 1);
    let id = net.resolver.resolve_mx("example.com", net.now);
    let q = net.expect_sent("example.com", TYPE_MX);
    net.reply(
        &q,
        RCODE_NOERROR,
        vec![cname("example.com", "mail.example.net")],
        vec![],
    );
    let q2 = net.expect_sent("mail.example.net", TYPE_MX);
    net.reply(
        &q2,
        RCODE_NOERROR,
        vec![mx("mail.example.net", 1, "in.example.net")],
        vec![
            a("in.example.net", "192.0.2.4"),
            aaaa("in.example.net", "2001:db8::4"),
        ],
    );
    assert_eq!(
        net.result(),
        Some((
            id,
            Ok(vec![host(
                "in.example.net",
                1,
                &["2001:db8::4", "192.0.2.4"]
            )])
        ))
    );
}

#[test]
fn cname_loop_is_temporary() {
    let mut net = Net::new(&[S1], 1);
    let id = net.resolver.resolve_mx("loop.example", net.now);
    let mut sent = net.expect_sent("loop.example", TYPE_MX);
    for _ in 0..=MAX_CNAME_CHAIN {
        let target = format!("x{}", sent.name);
        let name = sent.name.clone();
        net.reply(&sent, RCODE_NOERROR, vec![cname(&name, &target)], vec![]);
        match net.sent() {
            Some(next) => sent = next,
            None => break,
        }
    }
    let (got, result) = net.result().unwrap();
    assert_eq!(got, id);
    assert!(matches!(result, Err(DnsError::Temporary(ref why)) if why.contains("CNAME")));
}

// -- matching responses ------------------------------------------------

#[test]
fn wrong_id_is_ignored() {
    let mut net = Net::new(&[S1], 1);
    let id = net.resolver.resolve_mx("example.com", net.now);
    let q = net.expect_sent("example.com", TYPE_MX);
    let mut forged = response(&q, RCODE_NXDOMAIN, vec![], vec![], vec![]);
    forged[0] ^= 0x5a;
    net.deliver(&q, &forged);
    assert!(net.result().is_none());
    assert!(net.closed().is_empty(), "still waiting on the exchange");
    net.reply(&q, RCODE_NOERROR, vec![mx("example.com", 0, "")], vec![]);
    assert_eq!(net.result(), Some((id, Err(DnsError::NullMx))));
}

#[test]
fn answer_for_another_question_is_ignored() {
    let mut net = Net::new(&[S1], 1);
    let id = net.resolver.resolve_mx("example.com", net.now);
    let q = net.expect_sent("example.com", TYPE_MX);
    for (name, qtype) in [("example.org", TYPE_MX), ("example.com", TYPE_A)] {
        let other = Sent {
            transmit: q.transmit.clone(),
            id: q.id,
            edns: q.edns,
            name: name.into(),
            qtype,
        };
        net.reply(&other, RCODE_NXDOMAIN, vec![], vec![]);
    }
    // A query echoed back (QR clear) is not an answer either.
    net.deliver(&q, &q.transmit.payload.clone());
    assert!(net.result().is_none() && net.closed().is_empty());
    // Case does not matter when matching the question.
    let upper = Sent {
        transmit: q.transmit.clone(),
        id: q.id,
        edns: q.edns,
        name: "EXAMPLE.com".into(),
        qtype: TYPE_MX,
    };
    net.reply(&upper, RCODE_NXDOMAIN, vec![], vec![]);
    assert_eq!(net.result(), Some((id, Err(DnsError::NoSuchDomain))));
}

#[test]
fn response_from_wrong_server_is_ignored() {
    let mut net = Net::new(&[S1], 1);
    let id = net.resolver.resolve_mx("example.com", net.now);
    let q = net.expect_sent("example.com", TYPE_MX);
    let payload = response(&q, RCODE_NXDOMAIN, vec![], vec![], vec![]);
    for from in ["203.0.113.1:53", "192.0.2.53:5353"] {
        let from = from.parse().unwrap();
        net.resolver
            .handle_response(q.transmit.handle, from, &payload, net.now);
    }
    // And a stale handle.
    net.resolver
        .handle_response(QueryHandle(999), S1.parse().unwrap(), &payload, net.now);
    assert!(net.result().is_none() && net.closed().is_empty());
    net.deliver(&q, &payload);
    assert_eq!(net.result(), Some((id, Err(DnsError::NoSuchDomain))));
}

#[test]
fn garbage_is_ignored_but_malformed_answer_moves_on() {
    let mut net = Net::new(&[S1, S2], 1);
    let id = net.resolver.resolve_mx("example.com", net.now);
    let q = net.expect_sent("example.com", TYPE_MX);
    net.deliver(&q, &[0xff; 5]);
    assert!(net.closed().is_empty());
    // Matching head, broken record: this server is no good, try the next.
    let mut broken = response(
        &q,
        RCODE_NOERROR,
        vec![a("example.com", "192.0.2.1")],
        vec![],
        vec![],
    );
    broken.truncate(broken.len() - 2);
    net.deliver(&q, &broken);
    assert_eq!(net.closed(), vec![q.transmit.handle]);
    // Broken in answer to an EDNS query: the same server once more, plain.
    let plain = net.expect_sent("example.com", TYPE_MX);
    assert_eq!(plain.transmit.server, S1.parse().unwrap());
    assert!(!plain.edns);
    net.deliver(&plain, &mangled_for(&plain));
    assert_eq!(net.closed(), vec![plain.transmit.handle]);
    let q2 = net.expect_sent("example.com", TYPE_MX);
    assert_eq!(q2.transmit.server, S2.parse().unwrap());
    assert_ne!(q2.transmit.handle, q.transmit.handle);
    net.reply(&q2, RCODE_NXDOMAIN, vec![], vec![]);
    assert_eq!(net.result(), Some((id, Err(DnsError::NoSuchDomain))));
}

// -- retransmission ----------------------------------------------------

#[test]
fn truncated_answer_is_retried_over_tcp() {
    let mut net = Net::new(&[S1, S2], 1);
    let id = net.resolver.resolve_mx("example.com", net.now);
    let q = net.expect_sent("example.com", TYPE_MX);
    let mut truncated = response(&q, RCODE_NOERROR, vec![], vec![], vec![]);
    truncated[2] |= 0x02;
    net.deliver(&q, &truncated);
    assert!(net.result().is_none());
    assert_eq!(net.closed(), vec![q.transmit.handle]);
    let tcp = net.expect_sent("example.com", TYPE_MX);
    assert_eq!(tcp.transmit.transport, Transport::Tcp);
    assert_eq!(tcp.transmit.server, S1.parse().unwrap());
    net.reply(&tcp, RCODE_NOERROR, vec![mx("example.com", 0, "")], vec![]);
    assert_eq!(net.result(), Some((id, Err(DnsError::NullMx))));
    assert_eq!(net.closed(), vec![tcp.transmit.handle]);
}

#[test]
fn tcp_failure_moves_to_next_server_over_udp() {
    let mut net = Net::new(&[S1, S2], 1);
    net.resolver.resolve_mx("example.com", net.now);
    let q = net.expect_sent("example.com", TYPE_MX);
    let mut truncated = response(&q, RCODE_NOERROR, vec![], vec![], vec![]);
    truncated[2] |= 0x02;
    net.deliver(&q, &truncated);
    let tcp = net.expect_sent("example.com", TYPE_MX);
    net.resolver
        .handle_transport_error(tcp.transmit.handle, net.now);
    let next = net.expect_sent("example.com", TYPE_MX);
    assert_eq!(next.transmit.transport, Transport::Udp);
    assert_eq!(next.transmit.server, S2.parse().unwrap());
}

#[test]
fn timeout_rotates_to_second_server() {
    let mut net = Net::new(&[S1, S2], 1);
    let id = net.resolver.resolve_mx("example.com", net.now);
    let q = net.expect_sent("example.com", TYPE_MX);
    assert_eq!(
        net.resolver.poll_timeout(),
        Some(net.now + Duration::from_secs(5))
    );
    net.advance(Duration::from_millis(4999));
    assert!(net.sent().is_none());
    net.advance(Duration::from_millis(1));
    assert_eq!(net.closed(), vec![q.transmit.handle]);
    let q2 = net.expect_sent("example.com", TYPE_MX);
    assert_eq!(q2.transmit.server, S2.parse().unwrap());
    assert_eq!(
        net.resolver.poll_timeout(),
        Some(net.now + Duration::from_secs(5))
    );
    // A late answer on the closed first exchange is ignored.
    let late = response(
        &q,
        RCODE_NOERROR,
        vec![mx("example.com", 0, "")],
        vec![],
        vec![],
    );
    net.deliver(&q, &late);
    assert!(net.result().is_none());
    net.reply(&q2, RCODE_NXDOMAIN, vec![], vec![]);
    assert_eq!(net.result(), Some((id, Err(DnsError::NoSuchDomain))));
}

#[test]
fn all_servers_timing_out_is_temporary() {
    let mut net = Net::new(&[S1, S2], 1);
    let id = net.resolver.resolve_mx("example.com", net.now);
    let mut servers = Vec::new();
    let mut handles = Vec::new();
    while let Some(sent) = net.sent() {
        servers.push(sent.transmit.server);
        handles.push(sent.transmit.handle);
        assert!(net.result().is_none());
        net.advance(Duration::from_secs(5));
    }
    let (s1, s2) = (S1.parse().unwrap(), S2.parse().unwrap());
    assert_eq!(servers, vec![s1, s2, s1, s2], "2 attempts over 2 servers");
    assert_eq!(net.closed(), handles);
    let (got, result) = net.result().unwrap();
    assert_eq!(got, id);
    let err = result.unwrap_err();
    assert!(!err.is_permanent());
    assert!(matches!(err, DnsError::Temporary(ref why) if why.contains("timeout")));
    assert!(net.resolver.poll_timeout().is_none());
}

#[test]
fn servfail_and_refused_are_temporary() {
    let mut net = Net::new(&[S1, S2], 1);
    let id = net.resolver.resolve_mx("example.com", net.now);
    for rcode in [
        RCODE_SERVFAIL,
        RCODE_REFUSED,
        RCODE_SERVFAIL,
        RCODE_SERVFAIL,
    ] {
        let q = net.expect_sent("example.com", TYPE_MX);
        net.reply(&q, rcode, vec![], vec![]);
    }
    assert!(net.sent().is_none());
    let (got, result) = net.result().unwrap();
    assert_eq!(got, id);
    assert!(matches!(result, Err(DnsError::Temporary(ref why)) if why.contains("SERVFAIL")));
}

#[test]
fn transport_error_moves_on_at_once() {
    let mut net = Net::new(&[S1], 1);
    net.resolver.cfg.attempts = 1;
    let id = net.resolver.resolve_host("mx.example", net.now);
    for sent in net.all_sent() {
        net.resolver
            .handle_transport_error(sent.transmit.handle, net.now);
    }
    let (got, result) = net.result().unwrap();
    assert_eq!(got, id);
    assert!(matches!(result, Err(DnsError::Temporary(_))));
    assert_eq!(net.closed().len(), 2);
}

#[test]
fn no_servers_is_temporary() {
    let mut net = Net::new(&[], 1);
    let id = net.resolver.resolve_mx("example.com", net.now);
    assert!(net.sent().is_none());
    assert!(matches!(net.result(), Some((got, Err(DnsError::Temporary(_)))) if got == id));
}

#[test]
fn query_ids_vary() {
    let mut net = Net::new(&[S1], 7);
    let ids: std::collections::HashSet<u16> = (0..20)
        .map(|_| {
            net.resolver.resolve_host("h.example", net.now);
            net.all_sent().iter().map(|s| s.id).next().unwrap()
        })
        .collect();
    assert!(ids.len() > 15);
}

// -- cache -------------------------------------------------------------

#[test]
fn cache_hit_sends_nothing() {
    let mut net = Net::new(&[S1], 1);
    net.resolver.resolve_mx("example.com", net.now);
    let q = net.expect_sent("example.com", TYPE_MX);
    answer_mx_with_one_a(&mut net, &q);
    let first = net.result().unwrap().1;
    net.closed();
    net.now += Duration::from_secs(60);
    let id = net.resolver.resolve_mx("EXAMPLE.com", net.now);
    assert!(net.sent().is_none(), "answered from the cache");
    assert_eq!(net.result(), Some((id, first)));
    // After the TTL (300 s) the cache is stale.
    net.now += Duration::from_secs(300);
    net.resolver.resolve_mx("example.com", net.now);
    net.expect_sent("example.com", TYPE_MX);
}

#[test]
fn negative_answers_without_soa_are_not_cached() {
    let mut net = Net::new(&[S1], 1);
    net.resolver.resolve_mx("example.com", net.now);
    let q = net.expect_sent("example.com", TYPE_MX);
    net.reply(&q, RCODE_NXDOMAIN, vec![], vec![]);
    net.resolver.resolve_mx("example.com", net.now);
    net.expect_sent("example.com", TYPE_MX);
}

#[test]
fn cached_nxdomain_is_answered_at_once() {
    let mut net = Net::new(&[S1], 1);
    net.resolver.resolve_mx("example.com", net.now);
    let q = net.expect_sent("example.com", TYPE_MX);
    net.reply_with(&q, RCODE_NXDOMAIN, vec![], vec![soa("com")], vec![]);
    net.result();
    let id = net.resolver.resolve_mx("example.com", net.now);
    assert!(net.sent().is_none());
    assert_eq!(net.result(), Some((id, Err(DnsError::NoSuchDomain))));
}

#[test]
fn cache_is_bounded_and_ttl_capped() {
    let now = Instant::now();
    let mut cache = Cache::default();
    for i in 0..CACHE_ENTRIES + 10 {
        let ttl = 1000 + i as u32;
        cache.insert(&format!("h{i}.example"), TYPE_A, Cached::NoData, ttl, now);
        assert!(cache.entries.len() <= CACHE_ENTRIES);
    }
    // The soonest to expire went first.
    assert!(cache.lookup("h0.example", TYPE_A, now).is_none());
    assert!(cache.lookup("h265.example", TYPE_A, now).is_some());
    cache.insert("long.example", TYPE_A, Cached::NxDomain, u32::MAX >> 1, now);
    assert!(cache
        .lookup("long.example", TYPE_A, now + MAX_CACHE_TTL)
        .is_none());
}

// -- robustness --------------------------------------------------------

#[test]
fn mutated_responses_never_panic_the_resolver() {
    let mut gen = crate::test_rng::TestRng::new(2);
    let mut rng = move || gen.next_u64();
    for round in 0..2_000u64 {
        let mut net = Net::new(&[S1], round);
        net.resolver.resolve_mx("example.com", net.now);
        let q = net.expect_sent("example.com", TYPE_MX);
        let answers = vec![
            mx("example.com", 10, "mx.example.com"),
            cname("example.com", "x.example"),
        ];
        let mut p = response(
            &q,
            RCODE_NOERROR,
            answers,
            vec![soa("example")],
            vec![a("mx.example.com", "192.0.2.1")],
        );
        for _ in 0..1 + rng() % 3 {
            let r = rng();
            // Keep the ID intact most of the time so the body gets parsed.
            let at = 2 + (r >> 8) as usize % (p.len() - 1);
            match r % 3 {
                0 => p.truncate(at),
                1 if at < p.len() => p[at] = (r >> 32) as u8,
                _ if at < p.len() => p[at] ^= 1 << ((r >> 32) % 8),
                _ => {}
            }
        }
        net.deliver(&q, &p);
        // Drain whatever follows; answer everything with the same junk.
        for sent in net.all_sent() {
            net.deliver(&sent, &p);
        }
        net.advance(Duration::from_secs(60));
        net.advance(Duration::from_secs(60));
        net.advance(Duration::from_secs(60));
        net.advance(Duration::from_secs(60));
    }
}
