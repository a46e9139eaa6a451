//! The in-memory queue index and the retry schedule.
//!
//! Memory per queued message is a few words: the ID, its due time and its
//! attempt count, in a hash map plus a min-heap of `(due, id)`. The heap is
//! lazily cancelled: a popped entry whose due time no longer matches the map
//! is skipped (after a reschedule or removal). Times are wall-clock UNIX
//! seconds because they must survive restarts.
//!
//! Retry is a pure function ([`next_attempt`]) of the arrival time and the
//! attempt count, as in qmail's `nextretry`: nothing about a message's
//! schedule needs to be stored beyond the attempt count.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use crate::spool::QueueId;

/// When the `attempts`-th retry is due: arrival plus the sum of the first
/// `attempts` waits of the schedule (the last wait repeats).
pub fn next_attempt(arrival: u64, attempts: u32, schedule: &[Duration]) -> u64 {
    let mut t = arrival;
    for i in 0..attempts as usize {
        let wait = schedule
            .get(i)
            .or(schedule.last())
            .map_or(300, |d| d.as_secs().max(1));
        t = t.saturating_add(wait);
    }
    t
}

/// A message past `max_queue_time` is bounced instead of retried.
pub fn is_expired(arrival: u64, now: u64, max_queue_time: Duration) -> bool {
    now >= arrival.saturating_add(max_queue_time.as_secs())
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    due: u64,
    busy: bool,
}

#[derive(Default)]
pub struct Queue {
    entries: HashMap<QueueId, Entry>,
    heap: BinaryHeap<Reverse<(u64, QueueId)>>,
}

impl Queue {
    pub fn new() -> Queue {
        Queue::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, id: QueueId) -> bool {
        self.entries.contains_key(&id)
    }

    /// Adds or reschedules a message (and marks it idle).
    pub fn schedule(&mut self, id: QueueId, due: u64) {
        self.entries.insert(id, Entry { due, busy: false });
        self.heap.push(Reverse((due, id)));
    }

    pub fn remove(&mut self, id: QueueId) {
        self.entries.remove(&id);
    }

    /// Takes the next message due at `now`, marking it busy (a delivery
    /// attempt is running) until it is rescheduled or removed.
    pub fn pop_due(&mut self, now: u64) -> Option<QueueId> {
        while let Some(Reverse((due, id))) = self.heap.peek().copied() {
            if due > now {
                return None;
            }
            self.heap.pop();
            if let Some(e) = self.entries.get_mut(&id) {
                if e.due == due && !e.busy {
                    e.busy = true;
                    return Some(id);
                }
            }
        }
        None
    }

    /// The earliest due time of an idle message.
    pub fn next_due(&mut self) -> Option<u64> {
        while let Some(Reverse((due, id))) = self.heap.peek().copied() {
            match self.entries.get(&id) {
                Some(e) if e.due == due && !e.busy => return Some(due),
                _ => {
                    self.heap.pop();
                }
            }
        }
        None
    }

    /// Makes every idle message due now (SIGUSR1, `queue flush`).
    pub fn flush(&mut self, now: u64) {
        let ids: Vec<QueueId> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.busy && e.due > now)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.schedule(id, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&s| Duration::from_secs(s)).collect()
    }

    #[test]
    fn schedule_is_pure_and_last_wait_repeats() {
        let s = secs(&[300, 600, 1800]);
        assert_eq!(next_attempt(1000, 0, &s), 1000);
        assert_eq!(next_attempt(1000, 1, &s), 1300);
        assert_eq!(next_attempt(1000, 2, &s), 1900);
        assert_eq!(next_attempt(1000, 3, &s), 3700);
        assert_eq!(next_attempt(1000, 5, &s), 7300);
    }

    #[test]
    fn expiry() {
        let five_days = Duration::from_secs(5 * 86400);
        assert!(!is_expired(0, 5 * 86400 - 1, five_days));
        assert!(is_expired(0, 5 * 86400, five_days));
    }

    #[test]
    fn due_order_busy_and_lazy_cancel() {
        let mut q = Queue::new();
        q.schedule(QueueId(1), 50);
        q.schedule(QueueId(2), 10);
        q.schedule(QueueId(3), 100);
        assert_eq!(q.next_due(), Some(10));
        assert_eq!(q.pop_due(60), Some(QueueId(2)));
        assert_eq!(q.pop_due(60), Some(QueueId(1)));
        assert_eq!(q.pop_due(60), None);
        // Busy messages are not handed out twice, and a reschedule replaces the old slot.
        q.schedule(QueueId(1), 200);
        q.remove(QueueId(2));
        assert_eq!(q.next_due(), Some(100));
        q.flush(70);
        let mut got = vec![q.pop_due(70).unwrap(), q.pop_due(70).unwrap()];
        got.sort();
        assert_eq!(got, vec![QueueId(1), QueueId(3)]);
        assert_eq!(q.pop_due(70), None);
        assert_eq!(q.len(), 2);
    }
}
