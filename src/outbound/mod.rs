//! Outbound delivery plans: jobs, destinations and limits.
//!
//! A job is one message's recipients for one destination: the recipients
//! whose route (`routes`, else the smarthost) is the same relay, or the
//! recipients of one domain that goes to its MX hosts (RFC 5321 §5.1: they
//! share the domain's MX hosts, so they share one transaction). The
//! destination ([`DestinationKey`]: the domain, or the relay with its TLS
//! mode and credential source) also keys the slot counts and connection
//! reuse, so two routes to one host with different credentials never share
//! a session. Jobs wait here until a connection slot is free
//! (`max_outbound` in all, `max_outbound_per_host` per destination); each
//! runs as a [`machine::Delivery`] (MX walk, TLS policy, deadlines,
//! connection reuse), which the daemon's outbound driver
//! (`daemon::outbound`) feeds with DNS answers, sockets and time.
//!
//! Results are three-valued per recipient, as everywhere in tern: a
//! [`crate::delivery::outcome::Outcome`] (delivered, deferred, failed).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)] // tests index fixed data
mod chunking_scenarios;
#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)] // tests index fixed data
mod lmtp_scenarios;
pub mod machine;
#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)] // tests index fixed data
mod requiretls_scenarios;
#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)] // tests index fixed data
mod route_scenarios;
#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)] // tests index fixed data
mod scenarios;
#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)] // tests index fixed data
mod sim;

use crate::config::{Config, HostPort};
use crate::spool::QueueId;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub id: QueueId,
    /// The destination domain; empty when going to a relay.
    pub domain: String,
    pub sender: String,
    /// (index in the envelope, address)
    pub recipients: Vec<(usize, String)>,
    pub size: u64,
    pub eight_bit: bool,
    /// The client said `MAIL ... SMTPUTF8` and the content has 8-bit
    /// octets: header fields may hold UTF-8 (see [`Job::needs_smtputf8`]).
    pub utf8_content: bool,
    /// Sent with `MAIL ... REQUIRETLS` (RFC 8689): relayed only over
    /// verified TLS to a hop that offers REQUIRETLS, else it fails with
    /// 5.7.30 (see `machine`).
    pub requiretls: bool,
    pub arrival: u64,
    /// Locally originated mail: the table for its `From:`/`Sender:`
    /// (`sender` is already rewritten); `None`: sent as stored.
    pub rewrite: Option<crate::rewrite::SenderMap>,
    /// With an empty `domain`: the relay this job goes to (a route or the
    /// `smarthost` keys); `None`: the smarthosts and settings the caller
    /// gives the machine. Always `None` with a domain (MX).
    pub relay: Option<std::rc::Rc<crate::routes::Relay>>,
    /// Local mail for `local_delivery = lmtp`: the LMTP server it goes
    /// to (with an empty `domain` and no `relay`); the recipients are
    /// mailbox names.
    pub lmtp: Option<std::rc::Rc<crate::config::LmtpTarget>>,
    /// The `DKIM-Signature` fields to put in front (`daemon::signing`);
    /// `None`: sent unsigned.
    pub dkim: Option<std::rc::Rc<crate::dkim::sign::Signatures>>,
    /// RFC 3461 parameters, relayed to a hop that offers DSN; per
    /// recipient in the order of `recipients`.
    pub dsn: crate::smtp::dsn::DsnParams,
}

impl Job {
    /// The transaction needs a hop that offers SMTPUTF8 (RFC 6531 §3.2):
    /// a UTF-8 local part in the envelope (domains are stored as A-labels,
    /// so only a local part can be non-ASCII), or content that may carry
    /// UTF-8 header fields. To a hop without it the recipients fail with
    /// 5.6.7; nothing is downgraded behind the sender's back. (Postfix
    /// looks into the header section; tern counts any 8-bit octet of a
    /// message sent with SMTPUTF8, which errs towards failing loudly.)
    pub fn needs_smtputf8(&self) -> bool {
        self.utf8_content
            || !self.sender.is_ascii()
            || self.recipients.iter().any(|(_, r)| !r.is_ascii())
    }

    /// Whether this job goes to `key` (`destination_key() == *key`,
    /// without building the key).
    pub fn has_destination(&self, key: &DestinationKey) -> bool {
        // Destructured: a field added to the key must be compared here.
        let DestinationKey {
            domain,
            relay,
            lmtp,
        } = key;
        self.goes_to(domain, relay.as_ref(), lmtp.as_ref())
    }

    /// Whether both jobs go to the same destination (equal keys).
    pub fn same_destination(&self, other: &Job) -> bool {
        self.goes_to(&other.domain, other.relay.as_ref(), other.lmtp.as_ref())
    }

    /// The one comparison behind [`Job::has_destination`] and
    /// [`Job::same_destination`]: the fields [`Job::destination_key`] takes.
    fn goes_to(
        &self,
        domain: &str,
        relay: Option<&std::rc::Rc<crate::routes::Relay>>,
        lmtp: Option<&std::rc::Rc<crate::config::LmtpTarget>>,
    ) -> bool {
        self.domain == domain && self.relay.as_ref() == relay && self.lmtp.as_ref() == lmtp
    }

    /// Where this job goes, as the connection cache and slot counts see it.
    pub fn destination_key(&self) -> DestinationKey {
        DestinationKey {
            domain: self.domain.clone(),
            relay: self.relay.clone(),
            lmtp: self.lmtp.clone(),
        }
    }
}

/// A list of `host:port` as the machine's hops, in order; an IP address,
/// or a name `hosts_entry` knows (`/etc/hosts`), comes resolved, other
/// names are resolved by the machine's lookups. For a route's relay and the
/// smarthost keys alike.
pub fn hops_of(
    hosts: &[crate::config::HostPort],
    hosts_entry: impl Fn(&str) -> Option<Vec<IpAddr>>,
) -> Vec<machine::Hop> {
    hosts
        .iter()
        .map(|hp| machine::Hop {
            name: hp.host.clone(),
            port: hp.port,
            addrs: hp
                .host
                .parse::<IpAddr>()
                .ok()
                .map(|ip| vec![ip])
                .or_else(|| hosts_entry(&hp.host)),
        })
        .collect()
}

impl crate::routes::Relay {
    /// The hosts to try, in order; an IP address, or a name `hosts_entry`
    /// knows (`/etc/hosts`), comes resolved.
    pub fn hops(&self, hosts_entry: impl Fn(&str) -> Option<Vec<IpAddr>>) -> Vec<machine::Hop> {
        hops_of(&self.hosts, hosts_entry)
    }

    /// The machine's settings for this relay: its TLS mode and the
    /// credentials read for this attempt (see [`Relay::credentials`]).
    ///
    /// [`Relay::credentials`]: crate::routes::Relay::credentials
    pub fn settings(
        &self,
        base: machine::Settings,
        credentials: Option<crate::smtp::client::Credentials>,
    ) -> machine::Settings {
        machine::Settings {
            smarthost_tls: self.tls,
            credentials,
            ..base
        }
    }
}

/// A destination: a domain's MX hosts, or a relay (hosts, TLS mode and
/// credential source). Jobs with equal keys may share a connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DestinationKey {
    pub domain: String,
    pub relay: Option<std::rc::Rc<crate::routes::Relay>>,
    pub lmtp: Option<std::rc::Rc<crate::config::LmtpTarget>>,
}

pub struct Outbound {
    pending: VecDeque<Job>,
    active: usize,
    per_destination: HashMap<DestinationKey, usize>,
    max_outbound: usize,
    max_per_host: usize,
    pub smarthosts: Vec<HostPort>,
    stopping: bool,
}

impl Outbound {
    pub fn new(cfg: &Config) -> Outbound {
        let mut o = Outbound {
            pending: VecDeque::new(),
            active: 0,
            per_destination: HashMap::new(),
            max_outbound: 0,
            max_per_host: 0,
            smarthosts: Vec::new(),
            stopping: false,
        };
        o.reconfigure(cfg);
        o
    }

    pub fn reconfigure(&mut self, cfg: &Config) {
        self.max_outbound = cfg.max_outbound;
        self.max_per_host = cfg.max_outbound_per_host;
        self.smarthosts = cfg.smarthost.clone();
    }

    pub fn submit(&mut self, job: Job) {
        self.pending.push_back(job);
    }

    /// No more new connections. Jobs still waiting are simply dropped: their
    /// messages stay in the spool and are retried after the restart.
    pub fn shutdown(&mut self) {
        self.stopping = true;
    }

    pub fn is_idle(&self) -> bool {
        self.active == 0
    }

    /// The next job that may start now, counted as active until `finished`.
    pub fn next_startable(&mut self) -> Option<Job> {
        if self.stopping || self.active >= self.max_outbound {
            return None;
        }
        // Waiting jobs mostly share a few destinations (often one
        // smarthost): a run of jobs to the one just looked up reuses its
        // answer instead of building and hashing its key again.
        let mut last: Option<(&Job, bool)> = None;
        let pos = self.pending.iter().position(|j| {
            if let Some((_, free)) = last.filter(|(prev, _)| j.same_destination(prev)) {
                return free;
            }
            let free = self
                .per_destination
                .get(&j.destination_key())
                .copied()
                .unwrap_or(0)
                < self.max_per_host;
            last = Some((j, free));
            free
        })?;
        let job = self.pending.remove(pos)?;
        self.active += 1;
        *self
            .per_destination
            .entry(job.destination_key())
            .or_insert(0) += 1;
        Some(job)
    }

    /// A job for the same destination, for a connection that just finished
    /// one (it keeps its slot: nothing is counted).
    pub fn take_for(&mut self, destination: &DestinationKey) -> Option<Job> {
        if self.stopping {
            return None;
        }
        let pos = self
            .pending
            .iter()
            .position(|j| j.has_destination(destination))?;
        self.pending.remove(pos)
    }

    pub fn finished(&mut self, destination: &DestinationKey) {
        self.active = self.active.saturating_sub(1);
        if let Some(n) = self.per_destination.get_mut(destination) {
            *n -= 1;
            if *n == 0 {
                self.per_destination.remove(destination);
            }
        }
    }

    /// Jobs waiting for a connection slot.
    pub fn backlog(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(domain: &str) -> Job {
        Job {
            id: QueueId(1),
            domain: domain.into(),
            sender: String::new(),
            recipients: vec![(0, "a@b".into())],
            size: 1,
            eight_bit: false,
            utf8_content: false,
            requiretls: false,
            arrival: 0,
            rewrite: None,
            dkim: None,
            relay: None,
            lmtp: None,
            dsn: Default::default(),
        }
    }

    fn key(domain: &str) -> DestinationKey {
        DestinationKey {
            domain: domain.into(),
            relay: None,
            lmtp: None,
        }
    }

    #[test]
    fn smtputf8_is_needed_for_utf8_local_parts_and_declared_8bit_content() {
        let mut j = job("a");
        assert!(!j.needs_smtputf8());
        j.recipients.push((1, "jöe@xn--bcher-kva.example".into()));
        assert!(j.needs_smtputf8());
        let mut j = job("a");
        j.sender = "ä@b.example".into();
        assert!(j.needs_smtputf8());
        let mut j = job("a");
        j.utf8_content = true;
        assert!(j.needs_smtputf8());
    }

    #[test]
    fn limits_total_and_per_destination() {
        let cfg = Config {
            max_outbound: 3,
            max_outbound_per_host: 2,
            ..Default::default()
        };
        let mut o = Outbound::new(&cfg);
        for d in ["a", "a", "a", "b", "c"] {
            o.submit(job(d));
        }
        let started: Vec<String> = std::iter::from_fn(|| o.next_startable())
            .map(|j| j.domain)
            .collect();
        assert_eq!(started, vec!["a", "a", "b"]);
        o.finished(&key("a"));
        assert_eq!(o.next_startable().map(|j| j.domain), Some("a".into()));
        assert!(o.next_startable().is_none());
        o.finished(&key("b"));
        assert_eq!(o.next_startable().map(|j| j.domain), Some("c".into()));
    }
}
