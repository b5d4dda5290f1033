//! A target worker's view of its outbox: which deliveries are loaded, which one of each
//! item may go next, and when each is due. Pure bookkeeping, no I/O.
//!
//! Per-item order (invariant 4) lives here: only the head of an item's line is ever
//! ready, so a retrying delivery holds back later deliveries of the same item and
//! nothing else.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::Arc;

use bytes::Bytes;

use super::Decision;
use crate::store::Delivery;

/// "The same item" (source name and item id), as a 64-bit digest of both. Two items
/// whose digests collide share one line: each waits for the other's deliveries, which
/// delays them but never reorders either. The digest is computed once per loaded
/// delivery; hashing the two strings at every step was a tenth of a worker's CPU.
type ItemKey = u64;

fn item_key(source: &str, item_id: &str) -> ItemKey {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (source, item_id).hash(&mut h);
    h.finish()
}

/// A hasher for keys that are already well spread (sequence numbers, item digests):
/// one multiplication instead of SipHash.
#[derive(Default)]
struct Spread(u64);

impl Hasher for Spread {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type Fast<K, V> = HashMap<K, V, BuildHasherDefault<Spread>>;

struct Entry {
    item: ItemKey,
    event_id: Arc<str>,
    attempts: u32,
    next_at_ms: i64,
    /// Kept from the load until the first attempt; read again for retries.
    body: Option<Bytes>,
}

/// A delivery whose turn has come, handed to an attempt.
#[derive(Debug)]
pub struct Ready {
    pub seq: u64,
    pub event_id: Arc<str>,
    pub attempts: u32,
    pub body: Option<Bytes>,
}

#[derive(Default)]
pub struct Queue {
    entries: Fast<u64, Entry>,
    /// Each item's loaded deliveries in detection order; the front is the head.
    lines: Fast<ItemKey, VecDeque<u64>>,
    /// Heads waiting for their time, by due time then sequence.
    waiting: BTreeSet<(i64, u64)>,
    loaded_upto: Option<u64>,
}

impl Queue {
    /// Loaded and unfinished deliveries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The highest sequence loaded so far; the next load starts after it.
    pub fn loaded_upto(&self) -> Option<u64> {
        self.loaded_upto
    }

    /// Adds a delivery read from the outbox. Loads come in sequence order.
    pub fn push(&mut self, d: Delivery) {
        if self.loaded_upto.is_some_and(|s| d.seq <= s) {
            return;
        }
        self.loaded_upto = Some(d.seq);
        let item = item_key(&d.source, &d.item_id);
        let line = self.lines.entry(item).or_default();
        line.push_back(d.seq);
        if line.len() == 1 {
            self.waiting.insert((d.next_at_ms, d.seq));
        }
        self.entries.insert(
            d.seq,
            Entry {
                item,
                event_id: d.event_id.into(),
                attempts: d.attempts,
                next_at_ms: d.next_at_ms,
                body: Some(Bytes::from(d.body)),
            },
        );
    }

    /// The earliest head due at `now_ms`, taken out of the waiting set (it is in flight
    /// until [`Queue::finish`]).
    pub fn take_due(&mut self, now_ms: i64) -> Option<Ready> {
        let &(at, seq) = self.waiting.first()?;
        if at > now_ms {
            return None;
        }
        self.waiting.remove(&(at, seq));
        let e = self.entries.get_mut(&seq)?;
        Some(Ready {
            seq,
            event_id: e.event_id.clone(),
            attempts: e.attempts,
            body: e.body.take(),
        })
    }

    /// When the earliest waiting head is due.
    pub fn next_due_ms(&self) -> Option<i64> {
        self.waiting.first().map(|(at, _)| *at)
    }

    /// Records how an attempt ended: done (acked or buried) frees the item's next
    /// delivery; a retry waits again as the head.
    pub fn finish(&mut self, seq: u64, decision: Decision, attempts: u32, next_at_ms: i64) {
        match decision {
            Decision::RetryIn(_) => {
                if let Some(e) = self.entries.get_mut(&seq) {
                    e.attempts = attempts;
                    e.next_at_ms = next_at_ms;
                    self.waiting.insert((e.next_at_ms, seq));
                }
            }
            Decision::Ack | Decision::Bury => {
                let Some(e) = self.entries.remove(&seq) else {
                    return;
                };
                if let Some(line) = self.lines.get_mut(&e.item) {
                    line.retain(|s| *s != seq);
                    match line.front() {
                        Some(next) => {
                            if let Some(n) = self.entries.get(next) {
                                self.waiting.insert((n.next_at_ms, *next));
                            }
                        }
                        None => {
                            self.lines.remove(&e.item);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::time::Duration;

    /// A delivery of `item` due at `next_at_ms`.
    pub(in crate::deliver) fn d(seq: u64, item: &str, next_at_ms: i64) -> Delivery {
        Delivery {
            target: "t".into(),
            seq,
            event_id: format!("evt_{seq}"),
            event_type: "s.updated".into(),
            source: "s".into(),
            item_id: item.into(),
            attempts: 0,
            next_at_ms,
            created_ms: 0,
            last_error: None,
            body: b"{}".to_vec(),
        }
    }

    #[test]
    fn only_the_head_of_an_item_is_ready() {
        let mut q = Queue::default();
        q.push(d(1, "a", 0));
        q.push(d(2, "a", 0));
        q.push(d(3, "b", 0));
        let first = q.take_due(0).unwrap();
        assert_eq!(first.seq, 1);
        // Item a's second delivery waits for the first; item b goes on.
        assert_eq!(q.take_due(0).unwrap().seq, 3);
        assert!(q.take_due(0).is_none());
        q.finish(
            1,
            Decision::RetryIn(Duration::from_secs(3600)),
            1,
            3_600_000,
        );
        assert!(q.take_due(3_599_999).is_none());
        assert!(q
            .take_due(3_600_000)
            .is_some_and(|r| r.seq == 1 && r.body.is_none()));
        q.finish(1, Decision::Ack, 2, 0);
        assert_eq!(q.take_due(0).unwrap().seq, 2);
    }

    #[test]
    fn a_buried_head_frees_the_next() {
        let mut q = Queue::default();
        q.push(d(1, "a", 0));
        q.push(d(2, "a", 0));
        let r = q.take_due(0).unwrap();
        q.finish(r.seq, Decision::Bury, 8, 0);
        assert_eq!(q.take_due(0).unwrap().seq, 2);
        q.finish(2, Decision::Ack, 1, 0);
        assert_eq!(q.len(), 0);
        assert!(q.lines.is_empty());
    }

    #[test]
    fn not_due_yet_and_reloads_are_ignored() {
        let mut q = Queue::default();
        q.push(d(5, "a", 100));
        q.push(d(5, "a", 100));
        q.push(d(4, "b", 0));
        assert_eq!(q.len(), 1);
        assert!(q.take_due(99).is_none());
        assert_eq!(q.next_due_ms(), Some(100));
        assert_eq!(q.take_due(100).unwrap().seq, 5);
    }
}
