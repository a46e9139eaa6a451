//! The in-memory queue index and the retry and expiry rules.
//!
//! Memory per queued message is about 30 bytes (a router may hold 100,000
//! messages while its uplink is down): a hash map from the ID to its due
//! time and age mark (two `u32` seconds on the monotonic clock; the due
//! time is [`BUSY`] while an attempt runs), 17 bytes a slot, plus a
//! min-heap of `(due, id)` packed in 12 bytes. Nothing else of a message
//! is kept: its envelope is read from the spool when it is due. The heap
//! is lazily cancelled: a popped entry whose due time no longer matches
//! the map is skipped (after a reschedule or removal); a flush rebuilds it
//! in place instead of adding a second entry per message.
//!
//! ## Clocks: why no wall-clock time here
//!
//! The wall clock lies on routers: a board without a battery-backed clock
//! boots at a stale time and NTP steps it months forward; a bad RTC steps it
//! back. Measuring the queue with it bounced held mail "expired after 0
//! attempts" the moment NTP set the clock, and parked mail that arrived "in
//! the future" for years. So:
//!
//! - **Due times** in this index are seconds on the daemon's monotonic
//!   clock (`daemon::mono_now`, which never steps). They do not survive a
//!   restart and need not: recovery makes every message due at once.
//! - **Queue age** is the monotonic time the daemon has held a message,
//!   accumulated across restarts in its state file (the `age` line of
//!   `state/ID`). The index keeps, per message, the monotonic time at which
//!   the stored age was exact (its *age mark*); [`Queue::age`] adds the time
//!   since. The age is saved with every attempt and, for held mail, at
//!   least every `daemon::runner::AGE_CHECKPOINT`. Time while the daemon is
//!   down is not counted (no clock we trust measures it), nor the time since
//!   the last save when it stops: the age undercounts, never overcounts, so
//!   mail may stay somewhat longer than `max_queue_time` but is never
//!   bounced early.
//! - **Held mail** (`hold_outbound = yes`) ages like any other (as in
//!   Postfix, time in the queue counts whatever the reason), but it is
//!   never expired while held: a message expires only when an attempt that
//!   really ran leaves it undelivered at an age of `max_queue_time` or more
//!   ([`after_attempt`]). So nothing is bounced without at least one try,
//!   and a message released after a long hold gets one attempt first.
//! - **Retry** is a pure function of the attempt count ([`retry_wait`]), as
//!   in qmail's `nextretry`: the wait after the n-th attempt is the n-th
//!   step of `retry_schedule` (the last repeats), counted on the monotonic
//!   clock from the end of that attempt, so no wait ever exceeds the
//!   schedule's longest step. (Anchoring the schedule to the arrival, as
//!   the first version did, made a message released after a long hold
//!   retry in a burst to catch up, and a wall-clock arrival in the future
//!   parked it.)

use crate::idmap::IdMap;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use crate::spool::QueueId;

/// A schedule step used when `retry_schedule` is empty (config validation
/// prevents that; this keeps the function total).
pub const DEFAULT_RETRY_WAIT: u64 = 300;

/// Seconds to wait after the `attempts`-th attempt (counting from 1) before
/// the next one: that step of the schedule, the last step repeating. Never
/// 0 and never more than the schedule's longest step.
pub fn retry_wait(attempts: u32, schedule: &[Duration]) -> u64 {
    let step = (attempts as usize).saturating_sub(1);
    schedule
        .get(step)
        .or(schedule.last())
        .map_or(DEFAULT_RETRY_WAIT, |d| d.as_secs().max(1))
}

/// The rules that decide what happens after an attempt.
#[derive(Clone, Copy, Debug)]
pub struct Rules<'a> {
    pub retry_schedule: &'a [Duration],
    pub max_queue_time: Duration,
}

/// What becomes of a message that still has undelivered recipients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Fail the open recipients with 5.4.7 (delivery time expired; a
    /// failed action carries a permanent status, RFC 3464 §2.3.4) and
    /// bounce them.
    Expire,
    /// Look at it again after this many seconds (monotonic).
    RetryIn(u64),
    /// Held (`hold_outbound`, nothing attempted): look at it again when
    /// something is due for it ([`held_wait`]).
    Held,
}

/// The decision after an attempt of a message whose queue age is `age`
/// seconds and which has now been attempted `attempts` times; `tried`
/// says whether this round really attempted a delivery (held mail is not
/// attempted). Pure: no clock, so it is tested with any clock story.
pub fn after_attempt(age: u64, attempts: u32, tried: bool, rules: &Rules) -> Disposition {
    if !tried {
        // Held: never expired, whatever its age (see the module doc).
        return Disposition::Held;
    }
    if age >= rules.max_queue_time.as_secs() {
        return Disposition::Expire;
    }
    Disposition::RetryIn(retry_wait(attempts, rules.retry_schedule))
}

/// Seconds until held mail (not attempted: `hold_outbound`) needs looking
/// at again: only its queue age needs saving, `checkpoint` seconds of age
/// after the last save (`since_save` seconds ago), and its delay warning
/// sending when the age reaches `delay_warning`. Nothing else about it
/// changes while it is held (a flush, or a reload that turns
/// `hold_outbound` off, releases it at once), so looking earlier reads
/// every held envelope for nothing: with 100,000 held, seconds of CPU per
/// look. Never 0.
pub fn held_wait(
    age: u64,
    since_save: u64,
    checkpoint: u64,
    delay_warning: Option<Duration>,
) -> u64 {
    let to_checkpoint = checkpoint.saturating_sub(since_save);
    let to_warning = delay_warning
        .map(|d| d.as_secs())
        .filter(|&d| d > age)
        .map_or(u64::MAX, |d| d - age);
    to_checkpoint.min(to_warning).max(1)
}

/// The due time of a message whose attempt is running (never a real due
/// time: [`secs`] stops below it).
pub const BUSY: u32 = u32::MAX;

/// Monotonic seconds as stored in the index (136 years; a larger value,
/// which no monotonic clock reaches, is clamped).
fn secs(t: u64) -> u32 {
    u32::try_from(t).unwrap_or(BUSY - 1).min(BUSY - 1)
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    /// Due time, or [`BUSY`].
    due: u32,
    /// When (monotonic) the age stored in the state file was exact.
    age_mark: u32,
}

/// A heap key: `(due, high half of the ID, low half)`, 12 bytes (a
/// `(u32, u64)` tuple would be padded to 16), in the same order as
/// `(due, id)`.
type Key = (u32, u32, u32);

fn key(due: u32, id: QueueId) -> Key {
    (due, (id.0 >> 32) as u32, id.0 as u32)
}

fn key_id(k: &Key) -> QueueId {
    QueueId((u64::from(k.1) << 32) | u64::from(k.2))
}

#[derive(Default)]
pub struct Queue {
    entries: IdMap<QueueId, Entry>,
    heap: BinaryHeap<Reverse<Key>>,
}

impl Queue {
    pub fn new() -> Queue {
        Queue::default()
    }

    /// Room for `n` more messages (start-up recovery knows how many it
    /// will add: no doubling and copying of the map on the way there).
    pub fn reserve(&mut self, n: usize) {
        self.entries.reserve(n);
        self.heap.reserve(n);
    }

    /// Gives back heap capacity the queue no longer needs (after start-up
    /// recovery, or once a large queue has drained).
    pub fn shrink(&mut self) {
        if self.heap.capacity() > 2 * self.heap.len().max(64) {
            self.heap.shrink_to_fit();
        }
        if self.entries.capacity() > 4 * self.entries.len().max(64) {
            self.entries.shrink_to_fit();
        }
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

    /// Adds or reschedules a message (and marks it idle). Times are on the
    /// monotonic clock. A message is added when it becomes due (committed,
    /// imported or recovered: `due` is now), so its age mark starts there;
    /// a reschedule keeps the mark.
    pub fn schedule(&mut self, id: QueueId, due: u64) {
        let due = secs(due);
        self.entries
            .entry(id)
            .and_modify(|e| e.due = due)
            .or_insert(Entry { due, age_mark: due });
        self.heap.push(Reverse(key(due, id)));
    }

    /// A message's queue age at `now` (monotonic): the age stored in its
    /// state file plus the time since that was exact.
    pub fn age(&self, id: QueueId, stored_age: u64, now: u64) -> u64 {
        let since = self
            .entries
            .get(&id)
            .map_or(0, |e| now.saturating_sub(u64::from(e.age_mark)));
        stored_age.saturating_add(since)
    }

    /// The age was just saved (exact as of `now`).
    pub fn age_saved(&mut self, id: QueueId, now: u64) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.age_mark = secs(now);
        }
    }

    pub fn remove(&mut self, id: QueueId) {
        self.entries.remove(&id);
    }

    /// Takes the next message due at `now`, marking it busy (a delivery
    /// attempt is running) until it is rescheduled or removed.
    pub fn pop_due(&mut self, now: u64) -> Option<QueueId> {
        let now = secs(now);
        while let Some(Reverse(k)) = self.heap.peek().copied() {
            if k.0 > now {
                return None;
            }
            self.heap.pop();
            let id = key_id(&k);
            if let Some(e) = self.entries.get_mut(&id) {
                if e.due == k.0 {
                    e.due = BUSY;
                    return Some(id);
                }
            }
        }
        None
    }

    /// The earliest due time of an idle message.
    pub fn next_due(&mut self) -> Option<u64> {
        while let Some(Reverse(k)) = self.heap.peek().copied() {
            match self.entries.get(&key_id(&k)) {
                Some(e) if e.due == k.0 => return Some(u64::from(k.0)),
                _ => {
                    self.heap.pop();
                }
            }
        }
        None
    }

    /// Makes every idle message due now (SIGUSR1, `queue flush`). The heap
    /// is rebuilt in place with one entry per idle message (pushing one
    /// more per message doubled it, and a queue of 100,000 held messages
    /// grew by megabytes at each flush).
    pub fn flush(&mut self, now: u64) {
        let now = secs(now);
        let mut keys = std::mem::take(&mut self.heap).into_vec();
        keys.clear();
        for (id, e) in self.entries.iter_mut() {
            if e.due == BUSY {
                continue;
            }
            e.due = e.due.min(now);
            keys.push(Reverse(key(e.due, *id)));
        }
        self.heap = BinaryHeap::from(keys);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&s| Duration::from_secs(s)).collect()
    }

    const DAY: u64 = 86400;

    fn rules(schedule: &[Duration]) -> Rules<'_> {
        Rules {
            retry_schedule: schedule,
            max_queue_time: Duration::from_secs(5 * DAY),
        }
    }

    #[test]
    fn retry_wait_is_the_nth_step_and_the_last_repeats() {
        let s = secs(&[300, 600, 1800]);
        assert_eq!(retry_wait(1, &s), 300);
        assert_eq!(retry_wait(2, &s), 600);
        assert_eq!(retry_wait(3, &s), 1800);
        assert_eq!(retry_wait(4, &s), 1800);
        assert_eq!(retry_wait(u32::MAX, &s), 1800);
        // Total for odd inputs: never 0.
        assert_eq!(retry_wait(0, &s), 300);
        assert_eq!(retry_wait(1, &secs(&[0])), 1);
        assert_eq!(retry_wait(3, &[]), DEFAULT_RETRY_WAIT);
    }

    #[test]
    fn expiry_needs_an_attempt_and_the_age() {
        let s = secs(&[300]);
        let r = rules(&s);
        assert_eq!(
            after_attempt(5 * DAY - 1, 1, true, &r),
            Disposition::RetryIn(300)
        );
        assert_eq!(after_attempt(5 * DAY, 1, true, &r), Disposition::Expire);
        // Held (not attempted in this round): never expired, however old.
        assert_eq!(after_attempt(50 * DAY, 0, false, &r), Disposition::Held);
        assert_eq!(after_attempt(50 * DAY, 3, false, &r), Disposition::Held);
    }

    #[test]
    fn held_mail_is_looked_at_only_when_its_age_or_warning_is_due() {
        const HOUR: u64 = 3600;
        // Nothing but the age checkpoint: an hour after the last save.
        assert_eq!(held_wait(10, 0, HOUR, None), HOUR);
        assert_eq!(held_wait(5 * DAY, 600, HOUR, None), HOUR - 600);
        // A checkpoint overdue (its save failed): soon, never 0.
        assert_eq!(held_wait(5 * DAY, 2 * HOUR, HOUR, None), 1);
        // The delay warning comes first when it is due sooner ...
        let warn = Some(Duration::from_secs(4 * HOUR));
        assert_eq!(held_wait(4 * HOUR - 100, 0, HOUR, warn), 100);
        assert_eq!(held_wait(2, 0, HOUR, Some(Duration::from_secs(5))), 3);
        // ... and no longer matters once the age has passed it.
        assert_eq!(held_wait(4 * HOUR, 0, HOUR, warn), HOUR);
        assert_eq!(held_wait(5 * HOUR, 1200, HOUR, warn), HOUR - 1200);
    }

    /// The reported case: mail accepted and held while the wall clock was
    /// months behind, NTP steps it forward, the hold is lifted and the first
    /// attempt defers. The wall clock appears nowhere in the decision, and
    /// the monotonic age is what the queue really waited.
    #[test]
    fn forward_clock_step_with_held_mail_is_no_bounce_before_an_attempt() {
        let s = secs(&[300, 600, 1800, 3600, 7200, 14400]);
        let r = rules(&s);
        let mut q = Queue::new();
        let id = QueueId(1);
        let mut mono = 1_000; // the daemon's monotonic clock
        let mut wall = 1_577_836_800u64; // 2020-01-01, the router's idea
        q.schedule(id, mono);
        let arrival_wall = wall;
        // Held for an hour, looked at every 300 s; NTP then steps the wall
        // clock six years forward.
        for _ in 0..12 {
            assert_eq!(q.pop_due(mono), Some(id));
            let age = q.age(id, 0, mono);
            match after_attempt(age, 0, false, &r) {
                Disposition::Held => q.schedule(id, mono + 300),
                d => panic!("held mail: {d:?}"),
            }
            mono += 300;
            wall += 300;
        }
        wall += 6 * 365 * DAY;
        assert!(wall - arrival_wall > r.max_queue_time.as_secs());
        // Released: the first attempt defers; the age is an hour, not years.
        assert_eq!(q.pop_due(mono), Some(id));
        let age = q.age(id, 0, mono);
        assert_eq!(age, 3600);
        assert_eq!(after_attempt(age, 1, true, &r), Disposition::RetryIn(300));
        // Held far longer than max_queue_time: still one real attempt first.
        assert_eq!(
            after_attempt(q.age(id, 0, mono + 10 * DAY), 0, false, &r),
            Disposition::Held
        );
        assert_eq!(
            after_attempt(q.age(id, 0, mono + 10 * DAY), 1, true, &r),
            Disposition::Expire
        );
    }

    /// A message that "arrived" years in the future (clock stepped back
    /// since) is retried within the schedule's longest step, every time.
    #[test]
    fn backward_clock_step_retries_within_the_longest_step() {
        let s = secs(&[300, 600, 1800, 3600, 7200, 14400]);
        let r = rules(&s);
        let mut q = Queue::new();
        let id = QueueId(2);
        let mut mono = 0;
        q.schedule(id, mono);
        let mut attempts = 0u32;
        loop {
            assert_eq!(q.pop_due(mono), Some(id), "attempt {attempts}");
            attempts += 1;
            let age = q.age(id, 0, mono);
            match after_attempt(age, attempts, true, &r) {
                Disposition::RetryIn(w) => {
                    assert!(age < 5 * DAY);
                    assert!((1..=14400).contains(&w), "wait {w}");
                    q.schedule(id, mono + w);
                    assert_eq!(q.next_due(), Some(mono + w));
                    mono += w;
                }
                Disposition::Held => panic!("attempted mail is not held"),
                Disposition::Expire => {
                    // Only once the monotonic age reached max_queue_time.
                    assert!(age >= 5 * DAY);
                    break;
                }
            }
        }
        // 6 steps (27,900 s), then 4 h until 5 days: attempt 36.
        assert_eq!(attempts, 36);
    }

    /// Age survives restarts through the state file; each process's
    /// monotonic clock starts anew.
    #[test]
    fn age_accumulates_across_restarts_through_the_state_file() {
        use crate::spool::envelope::{decode_state, encode_state, RcptState};
        let id = QueueId(3);
        let states = vec![RcptState::default()];
        // First daemon: queued at mono 100, attempted at mono 400.
        let mut q = Queue::new();
        q.schedule(id, 100);
        assert_eq!(q.pop_due(400), Some(id));
        let age = q.age(id, 0, 400);
        assert_eq!(age, 300);
        let file = encode_state(&states, 1, age);
        q.age_saved(id, 400);
        q.schedule(id, 700);
        assert_eq!(q.age(id, age, 1000), 900);
        // Second daemon (after a reboot: mono starts at 0 again).
        let p = decode_state(&file, 1).unwrap();
        assert_eq!((p.attempts, p.age), (1, 300));
        let mut q = Queue::new();
        q.schedule(id, 0);
        assert_eq!(q.pop_due(0), Some(id));
        assert_eq!(q.age(id, p.age, 50), 350);
        let file = encode_state(&p.states, 2, q.age(id, p.age, 50));
        q.age_saved(id, 50);
        // Third daemon.
        let p = decode_state(&file, 1).unwrap();
        let mut q = Queue::new();
        q.schedule(id, 7);
        assert_eq!(q.age(id, p.age, 7 + 5 * DAY), 350 + 5 * DAY);
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

    /// The index stays small per message: 100,000 held messages (a router
    /// whose uplink is down) must fit in a few megabytes.
    #[test]
    fn per_message_memory_is_compact() {
        assert_eq!(std::mem::size_of::<(QueueId, Entry)>(), 16);
        assert_eq!(std::mem::size_of::<Reverse<Key>>(), 12);
        let mut q = Queue::new();
        let n = 100_000u64;
        q.reserve(n as usize);
        for i in 0..n {
            q.schedule(QueueId((1_700_000_000 << 24) + i), 0);
        }
        // Every message is popped and rescheduled once (the first look at
        // recovered held mail): one heap entry each, not two.
        while let Some(id) = q.pop_due(0) {
            q.schedule(id, 300);
        }
        assert_eq!(q.heap.len(), n as usize);
        // A hash map slot is 16 bytes plus a control byte; the heap 12.
        let bytes = q.entries.capacity() * 17 + q.heap.capacity() * 12;
        assert!(bytes < 4_000_000, "{bytes} bytes for {n} messages");
    }

    /// A flush makes everything due without a second heap entry per
    /// message (it doubled the heap of a big queue at every flush), keeps
    /// the order by due time and leaves busy messages alone.
    #[test]
    fn flush_rebuilds_the_heap_in_place() {
        let mut q = Queue::new();
        for i in 0..1000 {
            q.schedule(QueueId(i), 500 + i);
        }
        q.schedule(QueueId(5000), 10);
        assert_eq!(q.pop_due(10), Some(QueueId(5000))); // busy
        q.flush(20);
        assert_eq!(q.heap.len(), 1000);
        q.flush(20);
        assert_eq!(q.heap.len(), 1000);
        let mut got = Vec::new();
        while let Some(id) = q.pop_due(20) {
            got.push(id.0);
        }
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
        // The busy one was not made due twice; it comes back when rescheduled.
        assert_eq!(q.next_due(), None);
        q.schedule(QueueId(5000), 30);
        assert_eq!(q.next_due(), Some(30));
        assert_eq!(q.pop_due(30), Some(QueueId(5000)));
        // Due times and age marks far beyond u32 seconds are clamped, not wrapped.
        q.schedule(QueueId(7), u64::MAX);
        assert_eq!(q.pop_due(u64::MAX), Some(QueueId(7)));
        assert_eq!(q.age(QueueId(7), 5, 100), 5);
    }
}
