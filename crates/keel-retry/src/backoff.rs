//! Backoff schedules and jitter.
//!
//! The delay before retry `n` (1-based: the sleep after attempt `n` failed)
//! is computed in three steps:
//!
//! 1. the [`Backoff`] schedule gives a raw delay for `n`;
//! 2. it is capped at the policy's maximum delay;
//! 3. [`Jitter`] randomises it, and the result is clamped to the maximum
//!    delay again, so **a jittered delay never exceeds the configured
//!    maximum** (backon adds its jitter after the cap, so its sleeps reach
//!    twice the maximum).
//!
//! All arithmetic is on saturating `u64` nanoseconds: no schedule panics or
//! wraps, however many retries or however large the factor.

use std::time::Duration;

use keel_core::Rng;

use crate::error::ConfigError;

/// How the un-jittered delay grows from one retry to the next.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Backoff {
    /// The same delay before every retry.
    Constant {
        /// The delay.
        delay: Duration,
    },
    /// `base + step * (n - 1)` before retry `n`.
    Linear {
        /// The first delay.
        base: Duration,
        /// Added for each further retry.
        step: Duration,
    },
    /// `base * factor^(n - 1)` before retry `n`.
    Exponential {
        /// The first delay.
        base: Duration,
        /// The multiplier, at least 1.0.
        factor: f64,
    },
}

impl Backoff {
    /// The same `delay` before every retry.
    pub const fn constant(delay: Duration) -> Self {
        Backoff::Constant { delay }
    }

    /// `base`, then `base + step`, `base + 2·step`...
    pub const fn linear(base: Duration, step: Duration) -> Self {
        Backoff::Linear { base, step }
    }

    /// `base`, then `base·factor`, `base·factor²`... (`factor` must be finite
    /// and at least 1.0; the policy builder checks).
    pub const fn exponential(base: Duration, factor: f64) -> Self {
        Backoff::Exponential { base, factor }
    }

    /// The first delay of the schedule; decorrelated jitter's lower bound.
    pub const fn base(&self) -> Duration {
        match *self {
            Backoff::Constant { delay } => delay,
            Backoff::Linear { base, .. } | Backoff::Exponential { base, .. } => base,
        }
    }

    /// The raw delay before retry `retry` (1-based; 0 is read as 1), before
    /// the cap and jitter. Saturates at `Duration::MAX`. Costs a few
    /// arithmetic operations (one `powi` for the exponential schedule).
    pub fn delay(&self, retry: u32) -> Duration {
        Duration::from_nanos(self.delay_nanos(retry))
    }

    #[inline]
    pub(crate) fn delay_nanos(&self, retry: u32) -> u64 {
        let n = retry.saturating_sub(1);
        match *self {
            Backoff::Constant { delay } => nanos(delay),
            Backoff::Linear { base, step } => {
                nanos(base).saturating_add(nanos(step).saturating_mul(u64::from(n)))
            }
            Backoff::Exponential { base, factor } => {
                let base = nanos(base);
                if n == 0 || base == 0 {
                    return base;
                }
                let exp = i32::try_from(n).unwrap_or(i32::MAX);
                let raw = base as f64 * factor.powi(exp);
                // `as` saturates for floats above u64::MAX and maps NaN to 0;
                // factor >= 1 is validated, so NaN cannot come from here.
                if raw >= u64::MAX as f64 {
                    u64::MAX
                } else {
                    raw as u64
                }
            }
        }
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if let Backoff::Exponential { factor, .. } = *self
            && !(factor.is_finite() && factor >= 1.0)
        {
            return Err(ConfigError::new(
                "backoff.factor",
                "must be finite and at least 1.0",
            ));
        }
        Ok(())
    }
}

/// How a delay is randomised, so that clients that failed together do not
/// retry together. Every variant keeps the result within the policy's
/// maximum delay.
///
/// With `c = min(max_delay, backoff(n))`:
///
/// | jitter | delay | note |
/// |---|---|---|
/// | `None` | `c` | deterministic |
/// | `Full` | uniform in `[0, c]` | AWS "full jitter": least total work, but a retry may come almost at once |
/// | `Equal` | uniform in `[c/2, c]` | keeps at least half the backoff |
/// | `Decorrelated` | `min(max_delay, uniform in [base, 3·prev])` | AWS "decorrelated jitter"; `prev` is the previous backoff delay (`base` at first); only the schedule's base is used, growth comes from `3·prev` |
/// | `Proportional(p)` | uniform in `[c·(1−p), min(max_delay, c·(1+p))]` | "±p": `0.2` is ±20 %; `p` in `[0, 1]` |
///
/// The default is [`Jitter::Equal`], here and in
/// [`RetryPolicy::builder`](crate::RetryPolicy::builder) (which starts from
/// `Jitter::default()`): each sleep keeps at least half its backoff, so a
/// retry is never almost immediate, yet clients that failed together
/// spread out.
///
/// ```
/// use keel_retry::{Jitter, RetryPolicy};
///
/// assert_eq!(Jitter::default(), Jitter::Equal);
/// assert_eq!(RetryPolicy::builder().build().unwrap().jitter(), Jitter::default());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub enum Jitter {
    /// No randomness.
    None,
    /// Uniform in `[0, c]`.
    Full,
    /// Uniform in `[c/2, c]`: the default.
    #[default]
    Equal,
    /// `min(max_delay, uniform in [base, 3·prev])`.
    Decorrelated,
    /// Uniform within ±`p` of `c` (a fraction: `0.2` is ±20 %), clamped to
    /// the maximum delay.
    Proportional(f64),
}

impl Jitter {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if let Jitter::Proportional(p) = *self
            && !(p.is_finite() && (0.0..=1.0).contains(&p))
        {
            return Err(ConfigError::new(
                "jitter",
                "proportional jitter must be a fraction in [0, 1] (0.2 = ±20 %)",
            ));
        }
        Ok(())
    }
}

/// The schedule a policy draws its delays from: backoff, cap and jitter.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    pub(crate) backoff: Backoff,
    pub(crate) jitter: Jitter,
    pub(crate) max_delay: Duration,
    /// The delay of a fixed schedule (constant backoff, no jitter) in
    /// nanoseconds, worked out once; `NO_PREVIOUS` when delays vary.
    fixed: u64,
}

impl Schedule {
    pub(crate) fn new(backoff: Backoff, jitter: Jitter, max_delay: Duration) -> Self {
        let fixed = match (backoff, jitter) {
            (Backoff::Constant { delay }, Jitter::None) => nanos(delay.min(max_delay)),
            _ => NO_PREVIOUS,
        };
        Schedule {
            backoff,
            jitter,
            max_delay,
            fixed,
        }
    }

    /// The delay before retry `retry` (1-based). `prev` is the previous
    /// backoff delay, used by decorrelated jitter only.
    #[inline]
    pub(crate) fn delay(&self, retry: u32, prev: Option<Duration>, rng: &Rng) -> Duration {
        Duration::from_nanos(self.delay_nanos(retry, prev.map_or(NO_PREVIOUS, nanos), rng))
    }

    /// [`delay`](Self::delay) in nanoseconds; `prev` is [`NO_PREVIOUS`]
    /// before the first retry. The retry loop keeps delays as `u64` so its
    /// state stays plain words.
    #[inline]
    pub(crate) fn delay_nanos(&self, retry: u32, prev: u64, rng: &Rng) -> u64 {
        // The common fixed schedule (zero delays in tests and benches, a
        // constant pause) skips the general computation below, which does
        // not inline.
        if self.fixed != NO_PREVIOUS {
            return self.fixed;
        }
        self.varying_nanos(retry, prev, rng)
    }

    fn varying_nanos(&self, retry: u32, prev: u64, rng: &Rng) -> u64 {
        let cap = nanos(self.max_delay);
        match self.jitter {
            Jitter::Decorrelated => {
                let base = nanos(self.backoff.base());
                let prev = if prev == NO_PREVIOUS { base } else { prev };
                let upper = base.max(prev.saturating_mul(3));
                rng.u64_between(base, upper).min(cap)
            }
            jitter => {
                let c = self.backoff.delay_nanos(retry).min(cap);
                match jitter {
                    Jitter::Full => rng.u64_between(0, c),
                    Jitter::Equal => {
                        let half = c / 2;
                        (c - half) + rng.u64_between(0, half)
                    }
                    Jitter::Proportional(p) => {
                        // Floor of c·p: the spread never exceeds ±p.
                        let spread = (c as f64 * p) as u64;
                        rng.u64_between(c - spread.min(c), c.saturating_add(spread).min(cap))
                    }
                    Jitter::None | Jitter::Decorrelated => c,
                }
            }
        }
    }
}

/// "No previous delay" for [`Schedule::delay_nanos`]. A real delay of
/// `u64::MAX` ns (584 years, only with an unbounded maximum delay) reads as
/// none, which only restarts decorrelated jitter from its base.
pub(crate) const NO_PREVIOUS: u64 = u64::MAX;

/// A preview of the delays a policy sleeps before each of its retries, in
/// order (from [`RetryPolicy::delays`](crate::RetryPolicy::delays) or
/// [`RetryPolicy::delays_with`](crate::RetryPolicy::delays_with)). Yields one
/// delay per allowed retry; jitter draws from the [`Rng`] the preview was
/// given (never from the policy's own), and decorrelated jitter carries the
/// previous delay as a real retry loop does. Retry-after hints are not part
/// of it: they come from responses.
#[derive(Debug, Clone)]
pub struct Delays {
    schedule: Schedule,
    rng: Rng,
    next_retry: u32,
    max_retries: u32,
    prev: Option<Duration>,
}

impl Delays {
    pub(crate) fn new(schedule: Schedule, rng: Rng, max_retries: u32) -> Self {
        Delays {
            schedule,
            rng,
            next_retry: 1,
            max_retries,
            prev: None,
        }
    }
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.next_retry > self.max_retries {
            return None;
        }
        let d = self.schedule.delay(self.next_retry, self.prev, &self.rng);
        self.prev = Some(d);
        self.next_retry += 1;
        Some(d)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.max_retries + 1).saturating_sub(self.next_retry) as usize;
        (left, Some(left))
    }
}

#[inline]
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::Rng;
    use proptest::prelude::*;

    const S: Duration = Duration::from_secs(1);

    fn schedule(backoff: Backoff, jitter: Jitter, max_delay: Duration) -> Schedule {
        Schedule::new(backoff, jitter, max_delay)
    }

    #[test]
    fn raw_schedules() {
        let c = Backoff::constant(S * 3);
        assert_eq!((1..=4).map(|n| c.delay(n)).collect::<Vec<_>>(), [S * 3; 4]);
        let l = Backoff::linear(S, S * 2);
        assert_eq!(
            (1..=4).map(|n| l.delay(n)).collect::<Vec<_>>(),
            [S, S * 3, S * 5, S * 7]
        );
        let e = Backoff::exponential(Duration::from_millis(500), 2.0);
        assert_eq!(
            (1..=5).map(|n| e.delay(n)).collect::<Vec<_>>(),
            [Duration::from_millis(500), S, S * 2, S * 4, S * 8]
        );
        assert_eq!(e.delay(0), e.delay(1));
        let x3 = Backoff::exponential(S, 3.0);
        assert_eq!(x3.delay(3), S * 9);
        // Saturates instead of overflowing.
        assert_eq!(e.delay(u32::MAX), Duration::from_nanos(u64::MAX));
        assert_eq!(
            Backoff::linear(S, Duration::MAX).delay(3),
            Duration::from_nanos(u64::MAX)
        );
    }

    #[test]
    fn cap_applies_before_and_after_jitter() {
        let rng = Rng::with_seed(1);
        let s = schedule(Backoff::exponential(S, 2.0), Jitter::None, S * 5);
        let delays: Vec<_> = (1..=5).map(|n| s.delay(n, None, &rng)).collect();
        assert_eq!(delays, [S, S * 2, S * 4, S * 5, S * 5]);
    }

    #[test]
    fn validation_names_the_field() {
        assert_eq!(
            Backoff::exponential(S, 0.5).validate().unwrap_err().field(),
            "backoff.factor"
        );
        assert!(Backoff::exponential(S, f64::NAN).validate().is_err());
        assert!(Backoff::exponential(S, 1.0).validate().is_ok());
        assert_eq!(
            Jitter::Proportional(1.5).validate().unwrap_err().field(),
            "jitter"
        );
        assert!(Jitter::Proportional(-0.1).validate().is_err());
        assert!(Jitter::Proportional(0.2).validate().is_ok());
    }

    #[test]
    fn delays_iterator_yields_one_per_retry() {
        let d = Delays::new(
            schedule(Backoff::exponential(S, 2.0), Jitter::None, S * 30),
            Rng::with_seed(0),
            4,
        );
        assert_eq!(d.len_hint(), 4);
        assert_eq!(d.collect::<Vec<_>>(), [S, S * 2, S * 4, S * 8]);
    }

    impl Delays {
        fn len_hint(&self) -> usize {
            self.size_hint().0
        }
    }

    fn any_backoff() -> impl Strategy<Value = Backoff> {
        let d = (0u64..10_000_000_000).prop_map(Duration::from_nanos);
        prop_oneof![
            d.clone().prop_map(Backoff::constant),
            (d.clone(), d.clone()).prop_map(|(b, s)| Backoff::linear(b, s)),
            (d, 1.0f64..10.0).prop_map(|(b, f)| Backoff::exponential(b, f)),
        ]
    }

    fn any_jitter() -> impl Strategy<Value = Jitter> {
        prop_oneof![
            Just(Jitter::None),
            Just(Jitter::Full),
            Just(Jitter::Equal),
            Just(Jitter::Decorrelated),
            (0.0f64..=1.0).prop_map(Jitter::Proportional),
        ]
    }

    proptest! {
        #[test]
        fn jittered_delay_never_exceeds_max_delay(
            seed: u64,
            backoff in any_backoff(),
            jitter in any_jitter(),
            max_delay in (0u64..100_000_000_000).prop_map(Duration::from_nanos),
            retries in 1u32..80,
        ) {
            let s = schedule(backoff, jitter, max_delay);
            let rng = Rng::with_seed(seed);
            let mut prev = None;
            for n in 1..=retries {
                let d = s.delay(n, prev, &rng);
                prop_assert!(d <= max_delay, "retry {n}: {d:?} > {max_delay:?}");
                prev = Some(d);
            }
        }

        #[test]
        fn proportional_stays_within_p_of_the_capped_delay(
            seed: u64,
            backoff in any_backoff(),
            p in 0.0f64..=1.0,
            max_delay in (0u64..100_000_000_000).prop_map(Duration::from_nanos),
            n in 1u32..40,
        ) {
            let s = schedule(backoff, Jitter::Proportional(p), max_delay);
            let c = backoff.delay(n).min(max_delay).as_nanos() as f64;
            let d = s.delay(n, None, &Rng::with_seed(seed)).as_nanos() as f64;
            prop_assert!(d >= c * (1.0 - p) - 1.0 && d <= c * (1.0 + p) + 1.0,
                "{d} not within ±{p} of {c}");
        }

        #[test]
        fn full_and_equal_stay_in_their_ranges(
            seed: u64,
            backoff in any_backoff(),
            max_delay in (0u64..100_000_000_000).prop_map(Duration::from_nanos),
            n in 1u32..40,
        ) {
            let c = backoff.delay(n).min(max_delay);
            let rng = Rng::with_seed(seed);
            let full = schedule(backoff, Jitter::Full, max_delay).delay(n, None, &rng);
            prop_assert!(full <= c);
            let equal = schedule(backoff, Jitter::Equal, max_delay).delay(n, None, &rng);
            prop_assert!(equal <= c && equal.as_nanos() * 2 >= c.as_nanos());
        }

        #[test]
        fn decorrelated_stays_between_base_and_three_times_prev(
            seed: u64,
            base in (0u64..10_000_000_000).prop_map(Duration::from_nanos),
            prev in proptest::option::of((0u64..100_000_000_000).prop_map(Duration::from_nanos)),
            max_delay in (0u64..100_000_000_000).prop_map(Duration::from_nanos),
        ) {
            let s = schedule(Backoff::exponential(base, 2.0), Jitter::Decorrelated, max_delay);
            let d = s.delay(7, prev, &Rng::with_seed(seed));
            let p = prev.unwrap_or(base);
            let upper = max_delay.min(base.max(p * 3));
            prop_assert!(d <= upper, "{d:?} > {upper:?}");
            prop_assert!(d >= base.min(max_delay), "{d:?} < base {base:?}");
        }

        #[test]
        fn same_seed_same_delays(seed: u64, jitter in any_jitter()) {
            let s = schedule(Backoff::exponential(S, 2.0), jitter, S * 30);
            let a: Vec<_> = Delays::new(s.clone(), Rng::with_seed(seed), 6).collect();
            let b: Vec<_> = Delays::new(s, Rng::with_seed(seed), 6).collect();
            prop_assert_eq!(a, b);
        }
    }
}
