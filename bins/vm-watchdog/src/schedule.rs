//! Adaptive check intervals: the status table's interval, stretched by a
//! stable streak, shrunk by failures, bounded, and jittered.

use std::time::Duration;

use keel_core::Rng;

use crate::status::VmStatus;

/// The default `MIN_CHECK_INTERVAL`.
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(5);
/// The default `MAX_CHECK_INTERVAL`.
pub const DEFAULT_MAX_INTERVAL: Duration = Duration::from_secs(60);
/// Jitter applied to every interval: ±10 %.
pub const JITTER: f64 = 0.1;

/// The bounds every interval stays within (before jitter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// `MIN_CHECK_INTERVAL`: the fastest polling, used after failures, in
    /// fast-poll mode and for the TCP probe of running VMs.
    pub min: Duration,
    /// `MAX_CHECK_INTERVAL`: no status is checked less often.
    pub max: Duration,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            min: DEFAULT_MIN_INTERVAL,
            max: DEFAULT_MAX_INTERVAL,
        }
    }
}

impl Bounds {
    /// The status table's interval clamped to `[min, max]`.
    pub fn target(&self, status: VmStatus) -> Duration {
        status
            .table_interval()
            .clamp(self.min, self.max.max(self.min))
    }
}

/// One VM's schedule.
///
/// * A new status starts at `min` and each further check that sees the same
///   status doubles the interval, up to the status's table value: a VM that
///   just changed is watched closely, a stable one cheaply.
/// * Each consecutive failed check (API error) halves the interval, down
///   to `min`.
/// * In fast-poll mode (from a critical status until the VM runs again) a
///   critical status is checked at its table value (`STOPPED` and `CRASHED`
///   5 s, `ERROR` 10 s) and every other status at `min`.
/// * The result is jittered by ±10 % with a seeded [`Rng`].
#[derive(Debug, Clone)]
pub struct Schedule {
    bounds: Bounds,
    status: Option<VmStatus>,
    streak: u32,
    failures: u32,
    fast: bool,
}

impl Schedule {
    /// A schedule that has seen nothing yet (first interval: `min`).
    pub fn new(bounds: Bounds) -> Self {
        Schedule {
            bounds,
            status: None,
            streak: 0,
            failures: 0,
            fast: false,
        }
    }

    /// Replaces the bounds (configuration reload).
    pub fn set_bounds(&mut self, bounds: Bounds) {
        self.bounds = bounds;
    }

    /// The bounds.
    pub fn bounds(&self) -> Bounds {
        self.bounds
    }

    /// Records a successful check that saw `status`.
    pub fn observed(&mut self, status: VmStatus) {
        if self.status == Some(status) {
            self.streak = self.streak.saturating_add(1);
        } else {
            self.status = Some(status);
            self.streak = 0;
        }
        self.failures = 0;
    }

    /// Records a failed check (the status could not be read).
    pub fn failed(&mut self) {
        self.failures = self.failures.saturating_add(1);
        self.streak = 0;
    }

    /// Enters or leaves fast-poll mode.
    pub fn set_fast(&mut self, fast: bool) {
        self.fast = fast;
    }

    /// Whether fast-poll mode is on.
    pub fn is_fast(&self) -> bool {
        self.fast
    }

    /// Consecutive checks that saw the same status (0 right after a change).
    pub fn streak(&self) -> u32 {
        self.streak
    }

    /// Consecutive failed checks.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The next interval before jitter.
    pub fn base_interval(&self) -> Duration {
        let min = self.bounds.min;
        let Some(status) = self.status else {
            return min;
        };
        let target = self.bounds.target(status);
        if self.fast {
            // Critical statuses keep their table value (STOPPED 5 s, ERROR
            // 10 s); the transitions of a start are polled at the minimum.
            return if status.is_critical() { target } else { min };
        }
        if self.failures > 0 {
            let shrunk = target
                .checked_div(1u32 << self.failures.min(16))
                .unwrap_or(min);
            return shrunk.max(min);
        }
        let stretched = min.saturating_mul(1u32 << self.streak.min(16));
        stretched.clamp(min, target)
    }

    /// The next interval, jittered by ±10 % with `rng`.
    pub fn next_interval(&self, rng: &Rng) -> Duration {
        jitter(self.base_interval(), rng)
    }
}

/// `d` scaled by a uniform factor in `[0.9, 1.1]`.
pub fn jitter(d: Duration, rng: &Rng) -> Duration {
    let factor = 1.0 - JITTER + 2.0 * JITTER * rng.next_f64();
    d.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn a_stable_streak_reaches_the_table_value() {
        let mut s = Schedule::new(Bounds::default());
        assert_eq!(s.base_interval(), S(5));
        let mut seen = Vec::new();
        for _ in 0..7 {
            s.observed(VmStatus::Running);
            seen.push(s.base_interval().as_secs());
        }
        assert_eq!(seen, [5, 10, 20, 40, 60, 60, 60]);
        // Every status ends at its table value.
        for status in VmStatus::ALL {
            let mut s = Schedule::new(Bounds::default());
            for _ in 0..10 {
                s.observed(status);
            }
            assert_eq!(s.base_interval(), status.table_interval(), "{status}");
        }
    }

    #[test]
    fn failures_shrink_to_the_minimum_and_a_change_restarts_the_streak() {
        let mut s = Schedule::new(Bounds::default());
        for _ in 0..8 {
            s.observed(VmStatus::Running);
        }
        s.failed();
        assert_eq!(s.base_interval(), S(30));
        s.failed();
        assert_eq!(s.base_interval(), S(15));
        s.failed();
        s.failed();
        s.failed();
        assert_eq!(s.base_interval(), S(5));
        // The first success after failures: one check into the streak.
        s.observed(VmStatus::Running);
        assert_eq!((s.failures(), s.base_interval()), (0, S(10)));
        s.observed(VmStatus::Stopping);
        assert_eq!((s.streak(), s.base_interval()), (0, S(5)));
        s.observed(VmStatus::Stopping);
        assert_eq!(s.base_interval(), S(10));
        s.observed(VmStatus::Stopping);
        assert_eq!(s.base_interval(), S(15));
    }

    #[test]
    fn fast_mode_and_bounds() {
        let mut s = Schedule::new(Bounds {
            min: S(2),
            max: S(20),
        });
        for _ in 0..10 {
            s.observed(VmStatus::Running);
        }
        assert_eq!(s.base_interval(), S(20), "capped by MAX_CHECK_INTERVAL");
        s.set_fast(true);
        assert_eq!(s.base_interval(), S(2));
        s.observed(VmStatus::Error);
        assert_eq!(s.base_interval(), S(10), "critical: the table value");
        s.set_fast(false);
        s.observed(VmStatus::Stopped);
        assert_eq!(s.base_interval(), S(2));
        s.observed(VmStatus::Stopped);
        assert_eq!(s.base_interval(), S(4));
        s.observed(VmStatus::Stopped);
        assert_eq!(s.base_interval(), S(5), "the table value caps the streak");
    }

    proptest! {
        #[test]
        fn intervals_stay_within_bounds_and_jitter_within_ten_percent(
            min_s in 1u64..30,
            extra in 0u64..120,
            events in proptest::collection::vec((0usize..12, any::<bool>()), 0..40),
            seed: u64,
        ) {
            let bounds = Bounds { min: S(min_s), max: S(min_s + extra) };
            let mut s = Schedule::new(bounds);
            let rng = keel_core::Rng::with_seed(seed);
            for (i, fail) in events {
                if fail || i == 11 {
                    s.failed();
                } else {
                    s.observed(VmStatus::ALL[i]);
                }
                let base = s.base_interval();
                prop_assert!(base >= bounds.min && base <= bounds.max);
                let j = s.next_interval(&rng);
                prop_assert!(j >= base.mul_f64(0.9) && j <= base.mul_f64(1.1));
            }
        }

        #[test]
        fn the_interval_never_shrinks_along_a_stable_streak(
            status in 0usize..11, n in 1usize..20,
        ) {
            let mut s = Schedule::new(Bounds::default());
            let mut last = Duration::ZERO;
            for _ in 0..n {
                s.observed(VmStatus::ALL[status]);
                let base = s.base_interval();
                prop_assert!(base >= last);
                last = base;
            }
        }
    }
}
