//! What the sequencer of a room (the agent the stream is published on)
//! decides for each post: its number, or a refusal. Posts carry a globally
//! unique id, so a post that reaches the sequencer twice (an edge resending
//! after failover, a client resending after a reconnect) keeps its first
//! number and is not stored again. Pure: time is passed in.

use super::limits::{Bucket, Rate};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Ids remembered for dedupe, and for how long.
pub const DEDUPE_IDS: usize = 65_536;
pub const DEDUPE_MS: u64 = 10 * 60 * 1000;

/// The decision on one post.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A new comment with this number.
    New(u64),
    /// Seen before: the number it got then.
    Duplicate(u64),
    /// The room's rate is exceeded; retry in this many ms.
    RoomRate(u32),
}

#[derive(Debug)]
pub struct Sequencer {
    next: u64,
    bucket: Bucket,
    seen: HashMap<Arc<str>, u64>,
    order: VecDeque<(Arc<str>, u64)>,
}

impl Sequencer {
    /// Numbers continue after `head`.
    pub fn new(head: u64, rate: Rate, now_ms: u64) -> Sequencer {
        Sequencer {
            next: head + 1,
            bucket: Bucket::new(rate, now_ms),
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Numbers `id` (clock `now_ms`).
    pub fn decide(&mut self, id: &str, now_ms: u64) -> Decision {
        self.expire(now_ms);
        if let Some(&seq) = self.seen.get(id) {
            return Decision::Duplicate(seq);
        }
        if let Err(wait) = self.bucket.take(now_ms) {
            return Decision::RoomRate(wait);
        }
        let seq = self.next;
        self.next += 1;
        let id: Arc<str> = Arc::from(id);
        self.seen.insert(id.clone(), seq);
        self.order.push_back((id, now_ms));
        while self.order.len() > DEDUPE_IDS {
            if let Some((old, _)) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        Decision::New(seq)
    }

    fn expire(&mut self, now_ms: u64) {
        while let Some((id, at)) = self.order.front() {
            if now_ms.saturating_sub(*at) <= DEDUPE_MS {
                break;
            }
            self.seen.remove(id);
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_in_order_drops_duplicates_and_limits_the_room() {
        let mut s = Sequencer::new(
            10,
            Rate {
                per_s: 1.0,
                burst: 2.0,
            },
            0,
        );
        assert_eq!(s.decide("a", 0), Decision::New(11));
        assert_eq!(s.decide("a", 0), Decision::Duplicate(11));
        assert_eq!(s.decide("b", 0), Decision::New(12));
        assert_eq!(s.decide("c", 0), Decision::RoomRate(1000));
        // A duplicate is answered even when the room is full.
        assert_eq!(s.decide("b", 10), Decision::Duplicate(12));
        assert_eq!(s.decide("c", 1000), Decision::New(13));
        // Forgotten after the dedupe window.
        assert_eq!(s.decide("a", DEDUPE_MS + 5000), Decision::New(14));
    }
}
