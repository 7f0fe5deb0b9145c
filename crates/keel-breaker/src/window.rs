//! Lock-free sliding windows.
//!
//! Both windows answer one question after each recorded call: how many
//! calls, failures and slow calls does the window hold now?
//!
//! The count window is a ring of one-byte slots plus a summary word with
//! three biased 21-bit lanes (recorded, failed, slow). A slot changes by
//! `swap`, and the summary moves by exactly the difference between the old
//! and the new slot, so at quiescence the summary always equals a recount of
//! the slots, whatever the interleaving. The bias (2^20 per lane) absorbs
//! transient negative lanes when two racing writers of one slot apply their
//! deltas out of order, so a lane never borrows from its neighbour.
//!
//! The window also has a fast path: when it is full of plain successes, a
//! further success changes nothing the rules can see (the window is still
//! `size` successes), so it is not written at all. The steady state of a
//! healthy dependency therefore costs one shared load per call and no
//! shared write, which is what keeps the closed path flat under contention.
//!
//! The time window is a ring of buckets, each one atomic word packing a
//! 25-bit bucket tag and three 13-bit counters. A call updates its bucket
//! with one CAS; a bucket whose tag is stale is restarted by the same CAS,
//! so no update is ever lost to a bucket rollover. When a bucket's call
//! counter would overflow, all three of its counters are halved, which keeps
//! its rates within rounding.

use crate::sync::{AtomicU8, AtomicU64, Ordering};

/// What the window holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) calls: u32,
    pub(crate) failures: u32,
    pub(crate) slow: u32,
}

impl Counts {
    pub(crate) fn failure_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            f64::from(self.failures) / f64::from(self.calls)
        }
    }

    pub(crate) fn slow_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            f64::from(self.slow) / f64::from(self.calls)
        }
    }
}

/// Slot codes: a recorded call, possibly failed and/or slow.
pub(crate) const RECORDED: u8 = 1;
pub(crate) const FAILED: u8 = 2;
pub(crate) const SLOW: u8 = 4;

const LANE_BITS: u32 = 21;
const LANE_MASK: u64 = (1 << LANE_BITS) - 1;
const BIAS: u64 = 1 << 20;
const ZERO_SUMMARY: u64 = BIAS | (BIAS << LANE_BITS) | (BIAS << (2 * LANE_BITS));

/// The summary-word contribution of one slot code.
#[inline]
fn contribution(code: u8) -> u64 {
    let code = u64::from(code);
    (code & 1) | (((code >> 1) & 1) << LANE_BITS) | (((code >> 2) & 1) << (2 * LANE_BITS))
}

#[inline]
fn lane(summary: u64, index: u32) -> u32 {
    let raw = (summary >> (index * LANE_BITS)) & LANE_MASK;
    // Transiently below the bias while racing writers settle: clamp at 0.
    raw.saturating_sub(BIAS) as u32
}

fn decode(summary: u64) -> Counts {
    Counts {
        calls: lane(summary, 0),
        failures: lane(summary, 1),
        slow: lane(summary, 2),
    }
}

/// The last `size` recorded calls.
pub(crate) struct CountWindow {
    size: u32,
    /// The summary word of a window full of plain successes.
    full_clean: u64,
    head: AtomicU64,
    slots: Box<[AtomicU8]>,
    summary: AtomicU64,
}

impl CountWindow {
    pub(crate) fn new(size: u32) -> Self {
        debug_assert!(size > 0 && u64::from(size) < BIAS);
        CountWindow {
            size,
            full_clean: ZERO_SUMMARY + u64::from(size),
            head: AtomicU64::new(0),
            slots: (0..size).map(|_| AtomicU8::new(0)).collect(),
            summary: AtomicU64::new(ZERO_SUMMARY),
        }
    }

    /// Records one call (`code` is [`RECORDED`] plus [`FAILED`] / [`SLOW`])
    /// and returns what the window holds afterwards, or `None` when nothing
    /// a rule can see changed (a success into a window full of successes).
    #[inline]
    pub(crate) fn record(&self, code: u8) -> Option<Counts> {
        if code == RECORDED && self.summary.load(Ordering::Acquire) == self.full_clean {
            return None;
        }
        Some(self.record_slow(code))
    }

    fn record_slow(&self, code: u8) -> Counts {
        let position = self.head.fetch_add(1, Ordering::Relaxed);
        let index = (position % u64::from(self.size)) as usize;
        let old = self.slots[index].swap(code, Ordering::AcqRel);
        if old == code {
            return decode(self.summary.load(Ordering::Acquire));
        }
        let delta = contribution(code).wrapping_sub(contribution(old));
        let before = self.summary.fetch_add(delta, Ordering::AcqRel);
        decode(before.wrapping_add(delta))
    }

    pub(crate) fn counts(&self) -> Counts {
        decode(self.summary.load(Ordering::Acquire))
    }

    /// Empties the window. Safe against concurrent writers: each slot is
    /// emptied with the same swap-and-delta step a write uses.
    pub(crate) fn reset(&self) {
        for slot in self.slots.iter() {
            let old = slot.swap(0, Ordering::AcqRel);
            if old != 0 {
                let delta = 0u64.wrapping_sub(contribution(old));
                self.summary.fetch_add(delta, Ordering::AcqRel);
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn recount(&self) -> Counts {
        let mut counts = Counts::default();
        for slot in self.slots.iter() {
            let code = slot.load(Ordering::Acquire);
            counts.calls += u32::from(code & RECORDED);
            counts.failures += u32::from((code & FAILED) >> 1);
            counts.slow += u32::from((code & SLOW) >> 2);
        }
        counts
    }
}

// Time-window bucket layout: [tag: 25][calls: 13][failures: 13][slow: 13].
const COUNT_BITS: u32 = 13;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
const TAG_BITS: u32 = 25;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;
const TAG_SHIFT: u32 = 3 * COUNT_BITS;
const CALLS_SHIFT: u32 = 2 * COUNT_BITS;
const FAILURES_SHIFT: u32 = COUNT_BITS;

/// Every bucket that saw traffic holds at least this many calls once it
/// saturated (it halves at 8191), so a minimum-calls gate up to this many
/// per bucket stays reachable.
pub(crate) const TIME_BUCKET_MIN_CAPACITY: u32 = (COUNT_MAX / 2) as u32;

#[inline]
fn pack(tag: u64, calls: u64, failures: u64, slow: u64) -> u64 {
    ((tag & TAG_MASK) << TAG_SHIFT) | (calls << CALLS_SHIFT) | (failures << FAILURES_SHIFT) | slow
}

#[inline]
fn unpack(word: u64) -> (u64, u64, u64, u64) {
    (
        word >> TAG_SHIFT,
        (word >> CALLS_SHIFT) & COUNT_MAX,
        (word >> FAILURES_SHIFT) & COUNT_MAX,
        word & COUNT_MAX,
    )
}

/// Adds one call to a bucket word for bucket `id`, restarting a stale
/// bucket and halving a saturated one.
#[inline]
pub(crate) fn bucket_add(word: u64, id: u64, code: u8) -> u64 {
    let failed = u64::from((code & FAILED) >> 1);
    let slow = u64::from((code & SLOW) >> 2);
    let (tag, mut c, mut f, mut s) = unpack(word);
    if word == 0 {
        return pack(id, 1, failed, slow);
    }
    if tag != id & TAG_MASK {
        // A writer that read the clock just before a rollover may find its
        // slot already taken by a newer bucket: count the call there (a
        // bucket late) rather than wipe the newer bucket.
        let ahead = tag.wrapping_sub(id) & TAG_MASK;
        if ahead >= 1 << (TAG_BITS - 1) {
            return pack(id, 1, failed, slow);
        }
    }
    if c == COUNT_MAX {
        // Halve all three (rounding up, so a failure never vanishes) to keep
        // the rates while making room.
        c = c.div_ceil(2);
        f = f.div_ceil(2);
        s = s.div_ceil(2);
    }
    pack(tag, c + 1, f + failed, s + slow)
}

/// The calls of the last `buckets` bucket periods.
pub(crate) struct TimeWindow {
    bucket_nanos: u64,
    buckets: Box<[AtomicU64]>,
    /// The id of the latest bucket that recorded a failure or a slow call
    /// (0: none). While it is out of the window, a success cannot make any
    /// rate rule trip, so recording one skips summing the buckets.
    last_bad: AtomicU64,
}

impl TimeWindow {
    pub(crate) fn new(bucket_nanos: u64, buckets: u32) -> Self {
        debug_assert!(bucket_nanos > 0 && buckets > 0);
        TimeWindow {
            bucket_nanos,
            buckets: (0..buckets).map(|_| AtomicU64::new(0)).collect(),
            last_bad: AtomicU64::new(0),
        }
    }

    /// The bucket id of an instant (nanoseconds since the breaker's origin).
    /// Ids start at 1 so that an all-zero word is never a valid bucket.
    #[inline]
    fn id(&self, now_nanos: u64) -> u64 {
        now_nanos / self.bucket_nanos + 1
    }

    /// Records one call made at `now_nanos` and returns the window's
    /// content at that instant, or `None` when the call was a success and
    /// the window holds no failure or slow call (no rule can trip then).
    pub(crate) fn record(&self, now_nanos: u64, code: u8) -> Option<Counts> {
        let id = self.id(now_nanos);
        let len = self.buckets.len() as u64;
        let bucket = &self.buckets[(id % len) as usize];
        let mut current = bucket.load(Ordering::Acquire);
        loop {
            let next = bucket_add(current, id, code);
            match bucket.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        if code & (FAILED | SLOW) != 0 {
            self.last_bad.fetch_max(id, Ordering::AcqRel);
        } else if self.last_bad.load(Ordering::Acquire) + len <= id {
            return None;
        }
        Some(self.counts_at_id(id))
    }

    pub(crate) fn counts(&self, now_nanos: u64) -> Counts {
        self.counts_at_id(self.id(now_nanos))
    }

    fn counts_at_id(&self, id: u64) -> Counts {
        let len = self.buckets.len() as u64;
        let mut counts = Counts::default();
        for offset in 0..len.min(id) {
            let bucket_id = id - offset;
            let word = self.buckets[(bucket_id % len) as usize].load(Ordering::Acquire);
            let (tag, c, f, s) = unpack(word);
            if word != 0 && tag == bucket_id & TAG_MASK {
                counts.calls += c as u32;
                counts.failures += f as u32;
                counts.slow += s as u32;
            }
        }
        counts
    }

    pub(crate) fn reset(&self) {
        for bucket in self.buckets.iter() {
            bucket.store(0, Ordering::Release);
        }
        self.last_bad.store(0, Ordering::Release);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    fn code(failed: bool, slow: bool) -> u8 {
        RECORDED | if failed { FAILED } else { 0 } | if slow { SLOW } else { 0 }
    }

    fn model_counts(model: &VecDeque<u8>) -> Counts {
        let mut c = Counts::default();
        for &code in model {
            c.calls += 1;
            c.failures += u32::from(code & FAILED != 0);
            c.slow += u32::from(code & SLOW != 0);
        }
        c
    }

    #[test]
    fn full_window_of_successes_takes_the_fast_path() {
        let w = CountWindow::new(3);
        assert!(w.record(RECORDED).is_some());
        assert!(w.record(RECORDED).is_some());
        assert_eq!(w.record(RECORDED).unwrap().calls, 3);
        assert!(w.record(RECORDED).is_none(), "full and clean: no write");
        let c = w.record(code(true, false)).unwrap();
        assert_eq!((c.calls, c.failures), (3, 1));
        // The failure ages out after three more calls.
        assert_eq!(w.record(RECORDED).unwrap().failures, 1);
        assert_eq!(w.record(RECORDED).unwrap().failures, 1);
        assert_eq!(w.record(RECORDED).unwrap().failures, 0);
        assert!(w.record(RECORDED).is_none());
        w.reset();
        assert_eq!(w.counts(), Counts::default());
    }

    #[test]
    fn halving_keeps_rates_and_never_drops_a_failure() {
        let mut word = 0;
        for i in 0..20_000u64 {
            word = bucket_add(word, 7, code(i % 4 == 0, i % 10 == 0));
        }
        let (tag, c, f, s) = unpack(word);
        assert_eq!(tag, 7);
        assert!(c >= u64::from(TIME_BUCKET_MIN_CAPACITY) && c <= COUNT_MAX);
        let rate = f as f64 / c as f64;
        assert!((rate - 0.25).abs() < 0.01, "failure rate {rate}");
        let slow = s as f64 / c as f64;
        assert!((slow - 0.10).abs() < 0.01, "slow rate {slow}");
        // A lone failure survives any number of halvings.
        let mut word = bucket_add(0, 1, code(true, false));
        for _ in 0..50_000 {
            word = bucket_add(word, 1, RECORDED);
        }
        assert!(unpack(word).2 >= 1);
    }

    #[test]
    fn stale_time_buckets_expire_and_restart() {
        let w = TimeWindow::new(1_000, 4);
        w.record(0, code(true, false));
        w.record(1_500, RECORDED);
        assert_eq!(
            w.counts(3_999),
            Counts {
                calls: 2,
                failures: 1,
                slow: 0
            }
        );
        // At 4_000 the first bucket (0..1000) has left the window.
        assert_eq!(
            w.counts(4_000),
            Counts {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
        // Reusing the slot of bucket 0 restarts it.
        let c = w.record(4_100, code(false, true));
        assert_eq!(
            c,
            Some(Counts {
                calls: 2,
                failures: 0,
                slow: 1
            })
        );
        // A success with no failure or slow call left in the window skips
        // the summing.
        assert_eq!(w.record(9_000, RECORDED), None);
        assert_eq!(w.record(9_100, code(true, false)).unwrap().calls, 2);
        assert!(
            w.record(9_200, RECORDED).is_some(),
            "a failure is in the window"
        );
        assert_eq!(w.counts(100_000), Counts::default());
    }

    #[test]
    fn a_late_writer_never_wipes_a_newer_bucket() {
        let w = TimeWindow::new(1_000, 2);
        w.record(2_100, code(true, false)); // bucket id 3, slot 1
        // A writer that read the clock at 100 (bucket id 1, same slot)
        // records afterwards: the call lands in the newer bucket.
        w.record(100, RECORDED);
        assert_eq!(
            w.counts(2_200),
            Counts {
                calls: 2,
                failures: 1,
                slow: 0
            }
        );
    }

    proptest! {
        /// Any sequence of calls: the count window equals a model that
        /// keeps the last `size` calls.
        #[test]
        fn count_window_matches_model(
            size in 1u32..12,
            calls in proptest::collection::vec((any::<bool>(), any::<bool>(), 0u8..4), 0..200),
        ) {
            let w = CountWindow::new(size);
            let mut model = VecDeque::new();
            for (failed, slow, reset) in calls {
                if reset == 0 && failed && slow {
                    w.reset();
                    model.clear();
                    continue;
                }
                let c = code(failed, slow);
                let reported = w.record(c);
                model.push_back(c);
                if model.len() > size as usize {
                    model.pop_front();
                }
                let expected = model_counts(&model);
                prop_assert_eq!(w.counts(), expected);
                prop_assert_eq!(w.recount(), expected);
                if let Some(reported) = reported {
                    prop_assert_eq!(reported, expected);
                } else {
                    prop_assert_eq!(expected.calls, size);
                    prop_assert_eq!(expected.failures + expected.slow, 0);
                }
            }
        }

        /// Any sequence of timed calls: the time window equals a model that
        /// keeps the calls whose bucket is one of the last `buckets`.
        #[test]
        fn time_window_matches_model(
            bucket_nanos in 1u64..50,
            buckets in 1u32..8,
            calls in proptest::collection::vec((0u64..40, any::<bool>(), any::<bool>()), 0..150),
        ) {
            let w = TimeWindow::new(bucket_nanos, buckets);
            let mut now = 0u64;
            let mut model: Vec<(u64, u8)> = Vec::new();
            for (advance, failed, slow) in calls {
                now += advance;
                let c = code(failed, slow);
                let reported = w.record(now, c);
                model.push((now, c));
                let current = now / bucket_nanos;
                let expected = model_counts(
                    &model
                        .iter()
                        .filter(|(t, _)| current - t / bucket_nanos < u64::from(buckets))
                        .map(|&(_, c)| c)
                        .collect(),
                );
                match reported {
                    Some(reported) => prop_assert_eq!(reported, expected),
                    // Skipped only for a success into a window without
                    // failures or slow calls.
                    None => prop_assert!(!failed && !slow && expected.failures + expected.slow == 0),
                }
                prop_assert_eq!(w.counts(now), expected);
            }
        }

        /// Halving a bucket never changes its failure or slow rate by more
        /// than the rounding of one halving step.
        #[test]
        fn halving_preserves_rates(failures in 0u64..=COUNT_MAX, slow in 0u64..=COUNT_MAX) {
            let word = pack(3, COUNT_MAX, failures, slow);
            let (_, c, f, s) = unpack(bucket_add(word, 3, RECORDED));
            prop_assert!(c < COUNT_MAX);
            let before = failures as f64 / COUNT_MAX as f64;
            let after = f as f64 / c as f64;
            prop_assert!((before - after).abs() <= 2.0 / c as f64, "{} vs {}", before, after);
            let before = slow as f64 / COUNT_MAX as f64;
            let after = s as f64 / c as f64;
            prop_assert!((before - after).abs() <= 2.0 / c as f64);
            prop_assert!(f <= c && s <= c);
        }
    }
}
