//! Exact sliding-window rate limits, keyed and shared between sinks.
//!
//! Why not `governor`: its GCRA admits a burst *and then* the steady rate,
//! so "20 per minute" with a burst of 20 lets 40 through in some 60 s window,
//! while Telegram's group limit is about any minute. A sliding log of the
//! last `max` send times is exact, cheap at these sizes (at most `max`
//! instants per limit: 20 for Telegram), checks several limits at once
//! without consuming one when another refuses, and reads tokio's clock, so
//! paused-time tests drive it.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::sink::RateLimit;

/// The send times of one limit: at most `max` instants, oldest first.
#[derive(Debug)]
pub(crate) struct SlidingWindow {
    max: usize,
    per: Duration,
    sent: VecDeque<Instant>,
}

impl SlidingWindow {
    pub(crate) fn new(max: u32, per: Duration) -> Self {
        let max = max.max(1) as usize;
        SlidingWindow {
            max,
            per,
            sent: VecDeque::with_capacity(max),
        }
    }

    /// The earliest instant at or after `now` when one more send conforms.
    pub(crate) fn ready_at(&self, now: Instant) -> Instant {
        if self.sent.len() < self.max {
            return now;
        }
        // The window is full: the next send may go once the oldest of the
        // last `max` sends has left the window.
        let oldest = self.sent[0];
        (oldest + self.per).max(now)
    }

    /// Records a send at `at` (which must conform: `at >= ready_at(at)`).
    pub(crate) fn record(&mut self, at: Instant) {
        if self.sent.len() == self.max {
            self.sent.pop_front();
        }
        self.sent.push_back(at);
    }
}

type LimitId = (String, u32, Duration);

/// Every rate limit of one notifier, keyed so sinks declaring the same limit
/// share its window. Not synchronised: the notifier's state lock guards it.
#[derive(Debug, Default)]
pub(crate) struct RateLimits {
    windows: Vec<SlidingWindow>,
    ids: HashMap<LimitId, usize>,
}

impl RateLimits {
    /// Registers `limit` (or finds the window it shares) and returns its
    /// index.
    pub(crate) fn register(&mut self, limit: &RateLimit) -> usize {
        let id = (limit.key.clone(), limit.max, limit.per);
        if let Some(&i) = self.ids.get(&id) {
            return i;
        }
        self.windows.push(SlidingWindow::new(limit.max, limit.per));
        let i = self.windows.len() - 1;
        self.ids.insert(id, i);
        i
    }

    /// When all of `limits` admit one more send.
    pub(crate) fn ready_at(&self, limits: &[usize], now: Instant) -> Instant {
        limits
            .iter()
            .map(|&i| self.windows[i].ready_at(now))
            .max()
            .unwrap_or(now)
    }

    /// Takes one send from each of `limits` at `now` if all of them admit it
    /// (all or nothing); otherwise returns when they will.
    pub(crate) fn try_acquire(&mut self, limits: &[usize], now: Instant) -> Result<(), Instant> {
        let ready = self.ready_at(limits, now);
        if ready > now {
            return Err(ready);
        }
        for &i in limits {
            self.windows[i].record(now);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[tokio::test(start_paused = true)]
    async fn one_per_second_spaces_sends() {
        let mut limits = RateLimits::default();
        let a = limits.register(&RateLimit::per_second("chat", 1));
        let t0 = Instant::now();
        assert!(limits.try_acquire(&[a], t0).is_ok());
        assert_eq!(
            limits.try_acquire(&[a], t0),
            Err(t0 + Duration::from_secs(1))
        );
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(limits.try_acquire(&[a], Instant::now()).is_err());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(limits.try_acquire(&[a], Instant::now()).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn all_or_nothing_and_sharing() {
        let mut limits = RateLimits::default();
        let fast = limits.register(&RateLimit::per_second("chat", 1));
        let slow = limits.register(&RateLimit::per_minute("group", 2));
        assert_eq!(
            limits.register(&RateLimit::per_minute("group", 2)),
            slow,
            "same key and quota share a window"
        );
        assert_ne!(
            limits.register(&RateLimit::per_minute("other", 2)),
            slow,
            "another key has its own window"
        );
        let both = [fast, slow];
        let t0 = Instant::now();
        assert!(limits.try_acquire(&both, t0).is_ok());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(limits.try_acquire(&both, Instant::now()).is_ok());
        tokio::time::advance(Duration::from_secs(1)).await;
        // The per-second window admits, the per-minute one does not: nothing
        // is consumed from the per-second window.
        let now = Instant::now();
        assert_eq!(
            limits.try_acquire(&both, now),
            Err(t0 + Duration::from_secs(60))
        );
        assert_eq!(limits.ready_at(&[fast], now), now);
    }

    proptest! {
        /// Whatever the request times, a limiter that grants a send only when
        /// `try_acquire` says so never grants more than `max` in any window of
        /// `per`, and never refuses a send the window would admit.
        #[test]
        fn never_more_than_max_in_any_window(
            max in 1u32..6,
            per_ms in 1u64..5_000,
            gaps in proptest::collection::vec(0u64..3_000, 1..80),
        ) {
            let per = Duration::from_millis(per_ms);
            let origin = Instant::now();
            let mut limits = RateLimits::default();
            let id = limits.register(&RateLimit::new("k", max, per));
            let mut t = origin;
            let mut granted: Vec<Instant> = Vec::new();
            for gap in gaps {
                t += Duration::from_millis(gap);
                let in_window = granted.iter().filter(|&&g| g + per > t).count();
                match limits.try_acquire(&[id], t) {
                    Ok(()) => {
                        prop_assert!(in_window < max as usize, "granted beyond the limit");
                        granted.push(t);
                    }
                    Err(ready) => {
                        prop_assert!(in_window >= max as usize, "refused a conforming send");
                        prop_assert!(ready > t);
                        // At `ready`, the window really has room.
                        let at_ready = granted.iter().filter(|&&g| g + per > ready).count();
                        prop_assert!(at_ready < max as usize);
                    }
                }
            }
        }
    }
}
