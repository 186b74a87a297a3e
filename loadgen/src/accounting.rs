//! Delivery accounting: duplicate / re-order detection per (subscriber, publisher) and the
//! expected-versus-delivered arithmetic.
//!
//! Sequence numbers are per publisher and a subscriber only sees the messages of its own
//! channel(s), so gaps between the sequence numbers one subscriber receives are normal; loss
//! is computed globally from the expected delivery count, not from gaps.

use std::collections::VecDeque;

/// How many sequence numbers below the highest one seen are remembered exactly.
pub const SEQ_WINDOW: u64 = 1 << 16;

const WORD: u64 = 64;

/// What one arrival was, relative to what the subscriber saw earlier from the same publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// First time seen, and no higher sequence number seen before (in order, gaps allowed).
    InOrder,
    /// First time seen, but a higher sequence number arrived earlier.
    Reordered,
    /// Seen before.
    Duplicate,
    /// Older than the remembered window: counted as re-ordered, cannot be told from a duplicate.
    Stale,
}

impl Arrival {
    /// Whether this arrival is a first delivery (counts towards `delivered`).
    pub fn is_first(self) -> bool {
        !matches!(self, Arrival::Duplicate)
    }
}

/// Sequence numbers seen from one publisher by one subscriber: a sliding bitmap over the last
/// [`SEQ_WINDOW`] sequence numbers below the highest seen.
#[derive(Debug, Default, Clone)]
pub struct SeqTracker {
    /// Sequence number of bit 0 of `words[0]`.
    base: u64,
    /// One past the highest sequence number seen (0: nothing seen yet).
    high: u64,
    words: VecDeque<u64>,
}

impl SeqTracker {
    /// Records `seq` and classifies it.
    pub fn observe(&mut self, seq: u64) -> Arrival {
        if self.high == 0 && self.words.is_empty() {
            // First arrival: start the bitmap at the word containing `seq`.
            self.base = seq - seq % WORD;
        }
        if seq < self.base {
            if self.high - seq > SEQ_WINDOW {
                return Arrival::Stale;
            }
            // Late but within the window: extend the bitmap downwards.
            while self.base > seq {
                self.words.push_front(0);
                self.base -= WORD;
            }
        }
        let in_order = seq >= self.high;
        let idx = seq - self.base;
        let word = (idx / WORD) as usize;
        let bit = 1u64 << (idx % WORD);
        while self.words.len() <= word {
            self.words.push_back(0);
        }
        let seen = self.words[word] & bit != 0;
        self.words[word] |= bit;
        if in_order {
            self.high = seq + 1;
            self.slide();
            Arrival::InOrder
        } else if seen {
            Arrival::Duplicate
        } else {
            Arrival::Reordered
        }
    }

    /// Drops whole words that fell more than [`SEQ_WINDOW`] below the highest sequence number.
    fn slide(&mut self) {
        while self.high - self.base > SEQ_WINDOW + WORD && !self.words.is_empty() {
            self.words.pop_front();
            self.base += WORD;
        }
    }
}

/// Integrity counters of one subscriber (or a sum of them).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Integrity {
    /// Deliveries seen before by the same subscriber from the same publisher.
    pub duplicates: u64,
    /// First deliveries that arrived after a higher sequence number of the same publisher.
    pub reordered: u64,
    /// Deliveries too old to classify exactly (also counted in `reordered`).
    pub stale: u64,
}

impl Integrity {
    /// Counts one arrival.
    pub fn count(&mut self, arrival: Arrival) {
        match arrival {
            Arrival::InOrder => {}
            Arrival::Reordered => self.reordered += 1,
            Arrival::Duplicate => self.duplicates += 1,
            Arrival::Stale => {
                self.reordered += 1;
                self.stale += 1;
            }
        }
    }

    /// Adds another subscriber's counters.
    pub fn add(&mut self, other: &Integrity) {
        self.duplicates += other.duplicates;
        self.reordered += other.reordered;
        self.stale += other.stale;
    }
}

/// Per-publisher trackers of one subscriber.
#[derive(Debug, Default)]
pub struct SubscriberLedger {
    trackers: Vec<SeqTracker>,
    /// Integrity counters so far.
    pub integrity: Integrity,
}

/// Publisher ids above this are not ours (a foreign or corrupt payload).
pub const MAX_PUBLISHERS: u64 = 1 << 20;

impl SubscriberLedger {
    /// Records a delivery of `(publisher, seq)`; `None` when the publisher id is implausible.
    pub fn observe(&mut self, publisher: u64, seq: u64) -> Option<Arrival> {
        if publisher >= MAX_PUBLISHERS {
            return None;
        }
        let p = publisher as usize;
        if self.trackers.len() <= p {
            self.trackers.resize_with(p + 1, SeqTracker::default);
        }
        let arrival = self.trackers[p].observe(seq);
        self.integrity.count(arrival);
        Some(arrival)
    }
}

/// Expected deliveries: for every channel, messages published to it in the measured window
/// times the subscribers of that channel.
pub fn expected_deliveries(published_per_channel: &[u64], subscribers_per_channel: &[u64]) -> u64 {
    published_per_channel
        .iter()
        .zip(subscribers_per_channel)
        .map(|(p, s)| p * s)
        .sum()
}

/// Expected deliveries that never arrived (first deliveries only; never negative).
pub fn lost(expected: u64, delivered_first: u64) -> u64 {
    expected.saturating_sub(delivered_first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_with_gaps_is_clean() {
        let mut t = SeqTracker::default();
        for s in [3, 13, 23, 33, 1000, 1001] {
            assert_eq!(t.observe(s), Arrival::InOrder, "seq {s}");
        }
    }

    #[test]
    fn first_arrival_may_be_anywhere() {
        let mut t = SeqTracker::default();
        assert_eq!(t.observe(1_000_000_007), Arrival::InOrder);
        assert_eq!(t.observe(1_000_000_008), Arrival::InOrder);
        assert_eq!(t.observe(1_000_000_008), Arrival::Duplicate);
        // Earlier sequence numbers that arrive late are re-ordered, exactly.
        assert_eq!(t.observe(1_000_000_007 - 500), Arrival::Reordered);
        assert_eq!(t.observe(1_000_000_007 - 500), Arrival::Duplicate);
        assert_eq!(t.observe(1_000_000_007), Arrival::Duplicate);
    }

    #[test]
    fn duplicates_are_detected_in_and_out_of_order() {
        let mut t = SeqTracker::default();
        assert_eq!(t.observe(0), Arrival::InOrder);
        assert_eq!(t.observe(0), Arrival::Duplicate);
        assert_eq!(t.observe(5), Arrival::InOrder);
        assert_eq!(t.observe(5), Arrival::Duplicate);
        assert_eq!(t.observe(3), Arrival::Reordered);
        assert_eq!(t.observe(3), Arrival::Duplicate);
        assert_eq!(t.observe(4), Arrival::Reordered);
        assert_eq!(t.observe(6), Arrival::InOrder);
    }

    #[test]
    fn reorder_across_word_boundaries() {
        let mut t = SeqTracker::default();
        assert_eq!(t.observe(10), Arrival::InOrder);
        assert_eq!(t.observe(200), Arrival::InOrder);
        assert_eq!(t.observe(63), Arrival::Reordered);
        assert_eq!(t.observe(64), Arrival::Reordered);
        assert_eq!(t.observe(127), Arrival::Reordered);
        assert_eq!(t.observe(64), Arrival::Duplicate);
    }

    #[test]
    fn window_slides_and_old_arrivals_are_stale() {
        let mut t = SeqTracker::default();
        assert_eq!(t.observe(0), Arrival::InOrder);
        let far = SEQ_WINDOW * 3;
        assert_eq!(t.observe(far), Arrival::InOrder);
        assert!(
            t.words.len() as u64 <= SEQ_WINDOW / WORD + 2,
            "bitmap stays bounded"
        );
        assert_eq!(t.observe(1), Arrival::Stale);
        // Still exact within the window below the highest sequence number.
        assert_eq!(t.observe(far - 10), Arrival::Reordered);
        assert_eq!(t.observe(far - 10), Arrival::Duplicate);
        assert_eq!(t.observe(far - SEQ_WINDOW + 1), Arrival::Reordered);
    }

    #[test]
    fn long_in_order_stream_keeps_memory_bounded() {
        let mut t = SeqTracker::default();
        for s in 0..(SEQ_WINDOW * 4) {
            assert_eq!(t.observe(s), Arrival::InOrder);
        }
        assert!(t.words.len() as u64 <= SEQ_WINDOW / WORD + 2);
        assert_eq!(t.observe(SEQ_WINDOW * 4 - 1), Arrival::Duplicate);
    }

    #[test]
    fn ledger_separates_publishers() {
        let mut l = SubscriberLedger::default();
        assert_eq!(l.observe(0, 7), Some(Arrival::InOrder));
        assert_eq!(
            l.observe(1, 7),
            Some(Arrival::InOrder),
            "same seq, other publisher"
        );
        assert_eq!(l.observe(1, 3), Some(Arrival::Reordered));
        assert_eq!(l.observe(0, 7), Some(Arrival::Duplicate));
        assert_eq!(l.observe(MAX_PUBLISHERS, 1), None);
        assert_eq!(
            l.integrity,
            Integrity {
                duplicates: 1,
                reordered: 1,
                stale: 0
            }
        );
    }

    #[test]
    fn integrity_counts_and_sums() {
        let mut a = Integrity::default();
        for x in [
            Arrival::InOrder,
            Arrival::Duplicate,
            Arrival::Reordered,
            Arrival::Stale,
        ] {
            a.count(x);
        }
        assert_eq!(
            a,
            Integrity {
                duplicates: 1,
                reordered: 2,
                stale: 1
            }
        );
        let mut b = a;
        b.add(&a);
        assert_eq!(b.duplicates, 2);
        assert_eq!(b.reordered, 4);
        assert!(Arrival::Reordered.is_first() && !Arrival::Duplicate.is_first());
    }

    #[test]
    fn expected_and_lost() {
        // 3 channels: 10, 0 and 5 messages; 100, 7 and 0 subscribers.
        assert_eq!(expected_deliveries(&[10, 0, 5], &[100, 7, 0]), 1000);
        assert_eq!(lost(1000, 990), 10);
        assert_eq!(lost(1000, 1000), 0);
        assert_eq!(lost(1000, 1001), 0, "never negative");
    }
}
