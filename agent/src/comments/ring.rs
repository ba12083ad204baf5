//! A room's recent buffer: the last comments in sequence order, bounded in
//! count and age, from which reconnecting clients and downstream links
//! resume ("everything after N").

use super::frame::Comment;
use std::collections::VecDeque;
use std::sync::Arc;

/// What a resume from a sequence number finds.
#[derive(Debug)]
pub struct Since {
    /// Comments that are no longer held (`from..=to`), if any.
    pub gap: Option<(u64, u64)>,
    pub comments: Vec<Arc<Comment>>,
}

#[derive(Debug)]
pub struct Ring {
    items: VecDeque<Arc<Comment>>,
    cap: usize,
    max_age_ms: i64,
    /// Sequence number of the last comment that left (0: none), so the
    /// head is known when the ring is empty.
    base: u64,
}

impl Ring {
    pub fn new(cap: usize, max_age_ms: i64) -> Ring {
        Ring {
            items: VecDeque::new(),
            cap: cap.max(1),
            max_age_ms,
            base: 0,
        }
    }

    /// Empties the ring; numbering continues after `head`.
    pub fn reset(&mut self, head: u64) {
        self.items.clear();
        self.items.shrink_to(64);
        self.base = head;
    }

    /// The last sequence number held or passed.
    pub fn head(&self) -> u64 {
        self.items.back().map_or(self.base, |c| c.seq)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Appends `c` (its number must be above the head; numbers skipped in
    /// between are a gap for whoever resumes across them).
    pub fn push(&mut self, c: Arc<Comment>) {
        debug_assert!(c.seq > self.head());
        self.items.push_back(c);
        while self.items.len() > self.cap {
            if let Some(old) = self.items.pop_front() {
                self.base = old.seq;
            }
        }
    }

    /// Drops comments older than the age bound (sequencer clock, ms).
    pub fn trim(&mut self, now_ms: i64) {
        while let Some(front) = self.items.front() {
            if now_ms - front.ts_ms <= self.max_age_ms {
                break;
            }
            self.base = front.seq;
            self.items.pop_front();
        }
    }

    /// Everything after `seq`, and the numbers after `seq` that are gone.
    pub fn since(&self, seq: u64) -> Since {
        let first_held = self.items.front().map_or(self.base + 1, |c| c.seq);
        let gap = (seq + 1 < first_held).then(|| (seq + 1, first_held - 1));
        let start = self.items.partition_point(|c| c.seq <= seq);
        Since {
            gap,
            comments: self.items.range(start..).cloned().collect(),
        }
    }

    /// The last `n` comments.
    pub fn last(&self, n: usize) -> Vec<Arc<Comment>> {
        let start = self.items.len().saturating_sub(n);
        self.items.range(start..).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(seq: u64, ts: i64) -> Arc<Comment> {
        Arc::new(Comment::new(seq, ts, Arc::from("u"), Arc::from("x")))
    }

    fn seqs(v: &[Arc<Comment>]) -> Vec<u64> {
        v.iter().map(|c| c.seq).collect()
    }

    #[test]
    fn resumes_after_a_number_and_reports_what_is_gone() {
        let mut r = Ring::new(3, 1000);
        assert_eq!(r.head(), 0);
        for s in 1..=5 {
            r.push(c(s, 0));
        }
        assert_eq!((r.head(), r.len()), (5, 3));
        let s = r.since(3);
        assert_eq!((s.gap, seqs(&s.comments)), (None, vec![4, 5]));
        let s = r.since(0);
        assert_eq!((s.gap, seqs(&s.comments)), (Some((1, 2)), vec![3, 4, 5]));
        let s = r.since(5);
        assert_eq!((s.gap, s.comments.len()), (None, 0));
        assert_eq!(seqs(&r.last(2)), vec![4, 5]);
        assert_eq!(seqs(&r.last(10)), vec![3, 4, 5]);
    }

    #[test]
    fn age_and_reset_keep_the_head() {
        let mut r = Ring::new(10, 1000);
        r.push(c(1, 0));
        r.push(c(2, 500));
        r.trim(1200);
        assert_eq!((r.len(), r.head()), (1, 2));
        r.trim(5000);
        assert!(r.is_empty());
        assert_eq!(r.head(), 2);
        assert_eq!(r.since(0).gap, Some((1, 2)));
        assert_eq!(r.since(2).gap, None);
        r.reset(40);
        assert_eq!(r.head(), 40);
        r.push(c(41, 6000));
        assert_eq!(r.since(40).comments.len(), 1);
    }
}
