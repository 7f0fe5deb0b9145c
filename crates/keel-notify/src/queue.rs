//! The bounded priority queue of deliveries, and the overflow rule.

use std::collections::BTreeMap;

use tokio::time::Instant;

use crate::notification::{Message, Priority};

/// One message on its way to one sink.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    /// The sink's index in the notifier.
    pub(crate) sink: usize,
    /// The message; `message.id` doubles as the queue sequence number, so a
    /// requeued delivery goes back to its original place.
    pub(crate) message: Message,
    /// When the delivery first entered the queue (for the latency metric).
    pub(crate) queued_at: Instant,
    /// Send attempts made so far, over every requeue.
    pub(crate) attempts: u32,
    /// Never put in a digest again: a digest holding it was rejected for
    /// good, so each of its messages goes alone and only a bad one is
    /// dropped.
    pub(crate) solo: bool,
}

impl Delivery {
    pub(crate) fn seq(&self) -> u64 {
        self.message.id
    }

    pub(crate) fn priority(&self) -> Priority {
        self.message.priority()
    }
}

/// What [`Queue::push`] did.
#[derive(Debug)]
pub(crate) enum Pushed {
    /// The delivery was queued and nothing was dropped.
    Queued,
    /// The delivery was queued; the queue was full, so this older,
    /// lower-or-equal-priority delivery was dropped to make room.
    Evicted(Delivery),
    /// The queue was full of deliveries that outrank this one, which was
    /// dropped instead.
    Rejected(Delivery),
}

/// A bounded queue served critical first, then warning, then info, in
/// sequence order within a priority. Full: the oldest delivery of the lowest
/// priority present (the new one included) is dropped.
#[derive(Debug)]
pub(crate) struct Queue {
    capacity: usize,
    /// Boxed: B-tree nodes shift their values on insert and remove, and a
    /// delivery is ~170 bytes.
    lanes: [BTreeMap<u64, Box<Delivery>>; 3],
    per_sink: Vec<usize>,
}

impl Queue {
    pub(crate) fn new(capacity: usize, sinks: usize) -> Self {
        Queue {
            capacity,
            lanes: Default::default(),
            per_sink: vec![0; sinks],
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.lanes.iter().map(BTreeMap::len).sum()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.lanes.iter().all(BTreeMap::is_empty)
    }

    pub(crate) fn len_of(&self, priority: Priority) -> usize {
        self.lanes[priority.lane()].len()
    }

    /// How many deliveries wait for `sink`.
    pub(crate) fn waiting_for(&self, sink: usize) -> usize {
        self.per_sink[sink]
    }

    pub(crate) fn push(&mut self, delivery: Delivery) -> Pushed {
        if self.len() < self.capacity {
            self.insert(delivery);
            return Pushed::Queued;
        }
        // Full. The victim is the oldest delivery of the lowest priority,
        // among those queued and the new one.
        let lowest = self
            .lanes
            .iter()
            .rposition(|lane| !lane.is_empty())
            .expect("a full queue with capacity >= 1 has a non-empty lane");
        let new_lane = delivery.priority().lane();
        let oldest_seq = *self.lanes[lowest].keys().next().expect("lane is non-empty");
        if new_lane > lowest || (new_lane == lowest && delivery.seq() < oldest_seq) {
            return Pushed::Rejected(delivery);
        }
        let victim = self.lanes[lowest]
            .remove(&oldest_seq)
            .expect("key just read");
        self.per_sink[victim.sink] -= 1;
        self.insert(delivery);
        Pushed::Evicted(*victim)
    }

    fn insert(&mut self, delivery: Delivery) {
        self.per_sink[delivery.sink] += 1;
        let lane = delivery.priority().lane();
        self.lanes[lane].insert(delivery.seq(), Box::new(delivery));
    }

    /// Removes and returns the first delivery in serving order that may go
    /// (`may_go(delivery)`).
    pub(crate) fn take_first(&mut self, may_go: impl Fn(&Delivery) -> bool) -> Option<Delivery> {
        for lane in &mut self.lanes {
            let found = lane.iter().find(|(_, d)| may_go(d)).map(|(&seq, _)| seq);
            if let Some(seq) = found {
                let d = lane.remove(&seq).expect("key just found");
                self.per_sink[d.sink] -= 1;
                return Some(*d);
            }
        }
        None
    }

    /// Removes and returns up to `max` deliveries for `sink` that may join
    /// a digest (not `solo`), in serving order.
    pub(crate) fn take_for(&mut self, sink: usize, max: usize) -> Vec<Delivery> {
        let mut out = Vec::new();
        for lane in &mut self.lanes {
            if out.len() >= max {
                break;
            }
            let seqs: Vec<u64> = lane
                .iter()
                .filter(|(_, d)| d.sink == sink && !d.solo)
                .map(|(&seq, _)| seq)
                .take(max - out.len())
                .collect();
            for seq in seqs {
                let d = lane.remove(&seq).expect("key just found");
                out.push(*d);
            }
        }
        self.per_sink[sink] -= out.len();
        out
    }

    /// Makes room for one more sink (its index is the next one).
    pub(crate) fn add_sink(&mut self) {
        self.per_sink.push(0);
    }

    /// Removes and returns every delivery for `sink`, solo or not, in
    /// serving order.
    pub(crate) fn take_for_any(&mut self, sink: usize) -> Vec<Delivery> {
        let mut out = Vec::new();
        for lane in &mut self.lanes {
            let seqs: Vec<u64> = lane
                .iter()
                .filter(|(_, d)| d.sink == sink)
                .map(|(&seq, _)| seq)
                .collect();
            for seq in seqs {
                out.push(*lane.remove(&seq).expect("key just found"));
            }
        }
        self.per_sink[sink] -= out.len();
        out
    }

    /// Removes and returns every queued delivery of the notification
    /// `key` (any sink), in serving order.
    pub(crate) fn remove_key(&mut self, key: &str) -> Vec<Delivery> {
        let mut out = Vec::new();
        for lane in &mut self.lanes {
            let seqs: Vec<u64> = lane
                .iter()
                .filter(|(_, d)| d.message.key() == key)
                .map(|(&seq, _)| seq)
                .collect();
            for seq in seqs {
                let d = *lane.remove(&seq).expect("key just found");
                self.per_sink[d.sink] -= 1;
                out.push(d);
            }
        }
        out
    }

    /// Removes everything, in serving order.
    pub(crate) fn drain(&mut self) -> Vec<Delivery> {
        self.per_sink.iter_mut().for_each(|n| *n = 0);
        self.lanes
            .iter_mut()
            .flat_map(|lane| std::mem::take(lane).into_values())
            .map(|d| *d)
            .collect()
    }

    /// Every queued delivery, in serving order, without removing them.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Delivery> {
        self.lanes.iter().flat_map(BTreeMap::values).map(|d| &**d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notification::Notification;
    use proptest::prelude::*;

    fn delivery(seq: u64, priority: Priority, sink: usize) -> Delivery {
        Delivery {
            sink,
            message: Message::new(seq, Notification::new(format!("k{seq}"), priority, "t"), 1),
            queued_at: Instant::now(),
            attempts: 0,
            solo: false,
        }
    }

    fn drain_seqs(q: &mut Queue) -> Vec<u64> {
        q.drain().iter().map(Delivery::seq).collect()
    }

    #[test]
    fn serves_by_priority_then_fifo() {
        let mut q = Queue::new(10, 1);
        for (seq, p) in [
            (1, Priority::Info),
            (2, Priority::Warning),
            (3, Priority::Critical),
            (4, Priority::Info),
            (5, Priority::Critical),
        ] {
            assert!(matches!(q.push(delivery(seq, p, 0)), Pushed::Queued));
        }
        let order: Vec<u64> = std::iter::from_fn(|| q.take_first(|_| true))
            .map(|d| d.seq())
            .collect();
        assert_eq!(order, [3, 5, 2, 1, 4]);
    }

    #[test]
    fn skips_sinks_that_are_not_ready() {
        let mut q = Queue::new(10, 2);
        q.push(delivery(1, Priority::Critical, 0));
        q.push(delivery(2, Priority::Info, 1));
        assert_eq!(q.take_first(|d| d.sink == 1).map(|d| d.seq()), Some(2));
        assert_eq!(q.waiting_for(0), 1);
        assert_eq!(q.waiting_for(1), 0);
        assert!(q.take_first(|d| d.sink == 1).is_none());
    }

    #[test]
    fn take_for_one_sink_in_serving_order_skipping_solo() {
        let mut q = Queue::new(10, 2);
        q.push(delivery(1, Priority::Info, 0));
        q.push(delivery(2, Priority::Critical, 1));
        q.push(delivery(3, Priority::Critical, 0));
        let mut solo = delivery(4, Priority::Warning, 0);
        solo.solo = true;
        q.push(solo);
        q.push(delivery(5, Priority::Warning, 0));
        let got: Vec<u64> = q.take_for(0, 10).iter().map(Delivery::seq).collect();
        assert_eq!(got, [3, 5, 1]);
        assert_eq!((q.waiting_for(0), q.waiting_for(1)), (1, 1));
        q.push(delivery(6, Priority::Info, 0));
        q.push(delivery(7, Priority::Info, 0));
        assert_eq!(q.take_for(0, 1).len(), 1, "bounded by max");
    }

    #[test]
    fn overflow_drops_oldest_lowest_priority() {
        let mut q = Queue::new(3, 1);
        q.push(delivery(1, Priority::Warning, 0));
        q.push(delivery(2, Priority::Info, 0));
        q.push(delivery(3, Priority::Info, 0));
        match q.push(delivery(4, Priority::Critical, 0)) {
            Pushed::Evicted(v) => assert_eq!(v.seq(), 2, "oldest info goes first"),
            other => panic!("{other:?}"),
        }
        match q.push(delivery(5, Priority::Info, 0)) {
            Pushed::Evicted(v) => assert_eq!(v.seq(), 3),
            other => panic!("{other:?}"),
        }
        assert_eq!(q.len(), 3);
        assert_eq!(drain_seqs(&mut q), [4, 1, 5]);
    }

    #[test]
    fn overflow_rejects_a_newcomer_outranked_by_everything() {
        let mut q = Queue::new(2, 1);
        q.push(delivery(1, Priority::Critical, 0));
        q.push(delivery(2, Priority::Warning, 0));
        match q.push(delivery(3, Priority::Info, 0)) {
            Pushed::Rejected(d) => assert_eq!(d.seq(), 3),
            other => panic!("{other:?}"),
        }
        // A requeued delivery older than everything in its lane is the
        // oldest: it is the one dropped.
        let mut q = Queue::new(1, 1);
        q.push(delivery(7, Priority::Info, 0));
        assert!(matches!(
            q.push(delivery(3, Priority::Info, 0)),
            Pushed::Rejected(_)
        ));
    }

    proptest! {
        /// Whatever arrives, the queue never exceeds its capacity, everything
        /// pushed is either queued or reported dropped (nothing vanishes), and
        /// a dropped delivery never outranks one that stayed.
        #[test]
        fn bounded_and_accounted(
            capacity in 1usize..8,
            prios in proptest::collection::vec(0u8..3, 0..60),
        ) {
            let mut q = Queue::new(capacity, 1);
            let mut dropped = Vec::new();
            for (seq, p) in prios.iter().enumerate() {
                let p = [Priority::Critical, Priority::Warning, Priority::Info][*p as usize];
                match q.push(delivery(seq as u64, p, 0)) {
                    Pushed::Queued => {}
                    Pushed::Evicted(d) | Pushed::Rejected(d) => dropped.push(d),
                }
                prop_assert!(q.len() <= capacity);
            }
            prop_assert_eq!(q.len() + dropped.len(), prios.len());
            let best_dropped = dropped.iter().map(Delivery::priority).max();
            let worst_kept = q.iter().map(Delivery::priority).min();
            if let (Some(d), Some(k)) = (best_dropped, worst_kept) {
                prop_assert!(d <= k, "dropped {d} while keeping {k}");
            }
        }
    }
}
