//! Sans-IO DNS stub resolver: finds where to deliver mail for a domain
//! (MX, then implicit A/AAAA) and the addresses of smarthosts.
//!
//! Why sans-IO: tern runs one mio loop on one thread and must never block on
//! a lookup, so the resolver is a pure state machine. The reactor owns the
//! sockets: one fresh UDP socket per [`Transmit`] (the kernel then picks a
//! random source port, RFC 5452 §4), or a TCP connection when the resolver
//! asks for [`Transport::Tcp`]; it feeds replies, socket errors and `now`
//! back in, closes the sockets [`Resolver::poll_closed`] names and arms a
//! timer at [`Resolver::poll_timeout`].
//!
//! Files:
//! - `wire.rs`: message codec (RFC 1035 §4, RFC 3596), hardened parser.
//! - `resolver.rs`: query state machine, retries, RFC 5321 §5.1 / RFC 7505
//!   MX policy, CNAME chasing, TTL-bounded cache.
//! - `resolv_conf.rs`: `/etc/resolv.conf` (resolv.conf(5)).
//!
//! Invariants shared by all three: no panics on any input, every limit is a
//! `pub const`, and a DNS outage is always a temporary error (mail is
//! deferred, never bounced, because a server did not answer).
//!
//! Not supported: EDNS options (EDNS(0) itself is used, see `wire.rs`),
//! DNSSEC, DANE/TLSA, MTA-STS, search domains, IDNA (callers pass A-labels),
//! lookup cancellation.

// No input may panic the daemon (a release build aborts on panic: issue 11
// found one command line that stopped all mail). Byte offsets never slice a
// `str`, and every index is checked (`get`, `split_at_checked`, iterators);
// test modules opt out.
#![deny(clippy::string_slice, clippy::indexing_slicing)]

pub mod resolv_conf;
pub mod resolver;
pub mod wire;

pub use resolv_conf::{load_resolv_conf, parse_resolv_conf};
pub use resolver::{
    DnsError, LookupId, MxHost, QueryHandle, Resolver, ResolverConfig, Transmit, Transport,
};
