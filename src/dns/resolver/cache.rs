//! The resolver's answer cache: positive and negative answers by (name,
//! type), bounded in entries and in lifetime.
//!
//! Why separate: it is a plain bounded map; the query machine in the parent
//! module decides what goes in and reads [`Outcome`]s back out.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{Outcome, CACHE_ENTRIES, MAX_CACHE_TTL};
use crate::dns::wire::RData;

#[derive(Clone, Debug)]
pub(super) enum Cached {
    Records(Vec<RData>),
    NoData,
    NxDomain,
}

pub(super) struct CacheEntry {
    expires: Instant,
    answer: Cached,
}

/// Answers keyed by (canonical name, type), at most [`CACHE_ENTRIES`]; when
/// full, expired entries go first, then the one closest to expiry.
#[derive(Default)]
pub(super) struct Cache {
    pub(super) entries: HashMap<(String, u16), CacheEntry>,
}

impl Cache {
    pub(super) fn lookup(&mut self, name: &str, qtype: u16, now: Instant) -> Option<Outcome> {
        let key = (name.to_string(), qtype);
        let entry = self.entries.get(&key)?;
        if entry.expires <= now {
            self.entries.remove(&key);
            return None;
        }
        Some(match &entry.answer {
            Cached::Records(records) => Outcome::Records {
                records: records.clone(),
                additional: Vec::new(),
            },
            Cached::NoData => Outcome::NoData,
            Cached::NxDomain => Outcome::NxDomain,
        })
    }

    pub(super) fn insert(
        &mut self,
        name: &str,
        qtype: u16,
        answer: Cached,
        ttl: u32,
        now: Instant,
    ) {
        if ttl == 0 {
            return;
        }
        let key = (name.to_string(), qtype);
        if self.entries.len() >= CACHE_ENTRIES && !self.entries.contains_key(&key) {
            self.entries.retain(|_, e| e.expires > now);
            if self.entries.len() >= CACHE_ENTRIES {
                let soonest = self
                    .entries
                    .iter()
                    .min_by_key(|(_, e)| e.expires)
                    .map(|(k, _)| k.clone());
                if let Some(soonest) = soonest {
                    self.entries.remove(&soonest);
                }
            }
        }
        let lifetime = Duration::from_secs(u64::from(ttl)).min(MAX_CACHE_TTL);
        let expires = now + lifetime;
        self.entries.insert(key, CacheEntry { expires, answer });
    }
}
