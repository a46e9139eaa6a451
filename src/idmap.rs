//! Hash maps keyed by IDs that tern hands out itself: reactor slots
//! ([`crate::reactor::SockId`]), queue IDs, delivery and lookup numbers.
//!
//! std's default hasher (SipHash with random keys) protects a map whose
//! keys an attacker chooses. None of these keys comes from a peer: they
//! are counters, slot numbers and queue IDs (arrival second and a
//! sequence number), so that protection buys nothing, and it cost about a
//! tenth of the instructions spent per relayed message (the maps are
//! looked up several times per loop turn). Maps keyed by anything a peer
//! sends (addresses, IPs, host names) keep the default hasher.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A map keyed by one of tern's own IDs (see the module docs).
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// Multiply-rotate mixing of whole words (as FxHash does): the low bits
/// that pick a bucket depend on the low bits of the ID, which are the
/// ones that change from one ID to the next.
#[derive(Default)]
pub struct IdHasher(u64);

const MIX: u64 = 0x517c_c1b7_2722_0a95;

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(MIX);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::QueueId;

    #[test]
    fn consecutive_ids_spread_over_the_buckets() {
        // hashbrown picks the bucket from the low bits and a tag from the
        // top 7: consecutive queue IDs (one arrival second) must differ in
        // both, or a big queue would pile up in a few buckets.
        let second = QueueId::new(1_796_303_092, 0).0;
        let hash = |id: u64| {
            let mut h = IdHasher::default();
            std::hash::Hash::hash(&QueueId(id), &mut h);
            h.finish()
        };
        let ids = (0..4096u64).map(|i| second | (0x12_3456 + i));
        let low: std::collections::HashSet<u64> = ids.clone().map(|id| hash(id) & 4095).collect();
        let tags: std::collections::HashSet<u64> = ids.map(|id| hash(id) >> 57).collect();
        assert!(
            low.len() > 4096 / 2,
            "{} distinct buckets of 4096",
            low.len()
        );
        assert_eq!(tags.len(), 128, "every 7-bit tag is used");
    }

    #[test]
    fn a_map_behaves_as_a_map() {
        let mut m: IdMap<QueueId, u32> = IdMap::default();
        for i in 0..10_000u32 {
            m.insert(QueueId(u64::from(i) << 3), i);
        }
        assert_eq!(m.len(), 10_000);
        assert!((0..10_000u32).all(|i| m.get(&QueueId(u64::from(i) << 3)) == Some(&i)));
        assert_eq!(m.get(&QueueId(1)), None);
    }
}
