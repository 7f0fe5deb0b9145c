//! Adaptive concurrency for the [`Bulkhead`](crate::Bulkhead): an additive-increase / multiplicative-decrease
//! limit, as Netflix's `concurrency-limits` `AIMDLimit`.
//!
//! After every finished item the limit moves:
//!
//! * a **drop** (an error or timeout, when [`AimdConfig::errors_are_drops`];
//!   or a latency above [`AimdConfig::latency_threshold`]) multiplies the
//!   limit by [`AimdConfig::backoff_ratio`] (rounded down, so it always
//!   shrinks by at least one until it reaches `min`);
//! * a **success** under the latency threshold adds
//!   [`AimdConfig::increase`], but only while the executor actually uses at
//!   least half of the limit (`2 · in_flight ≥ limit`), so an idle executor
//!   does not inflate its limit;
//! * the result is clamped to `[min, max]`.

use std::time::Duration;

use keel_core::ConfigError;

/// Settings of an adaptive (AIMD) concurrency limit. Validated when the
/// executor is built.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AimdConfig {
    pub(crate) min: usize,
    pub(crate) max: usize,
    pub(crate) initial: Option<usize>,
    pub(crate) increase: usize,
    pub(crate) backoff_ratio: f64,
    pub(crate) latency_threshold: Option<Duration>,
    pub(crate) errors_are_drops: bool,
}

impl AimdConfig {
    /// A limit that moves within `[min, max]`; it starts at `min`, grows by 1
    /// per fast success, shrinks by ×0.9 per drop, and counts every error and
    /// timeout as a drop (no latency threshold).
    pub const fn new(min: usize, max: usize) -> Self {
        AimdConfig {
            min,
            max,
            initial: None,
            increase: 1,
            backoff_ratio: 0.9,
            latency_threshold: None,
            errors_are_drops: true,
        }
    }

    /// The limit at the start of a run (default: `min`).
    pub const fn initial(mut self, initial: usize) -> Self {
        self.initial = Some(initial);
        self
    }

    /// How much one fast success adds (default 1).
    pub const fn increase(mut self, increase: usize) -> Self {
        self.increase = increase;
        self
    }

    /// The factor a drop multiplies the limit by, in `(0, 1)` (default 0.9).
    pub const fn backoff_ratio(mut self, ratio: f64) -> Self {
        self.backoff_ratio = ratio;
        self
    }

    /// Items slower than this count as drops even when they succeed
    /// (default: none, latency is ignored).
    pub const fn latency_threshold(mut self, threshold: Duration) -> Self {
        self.latency_threshold = Some(threshold);
        self
    }

    /// Whether errors and timeouts count as drops (default `true`). With
    /// `false`, only latency over the threshold shrinks the limit; errors
    /// leave it unchanged.
    pub const fn errors_are_drops(mut self, yes: bool) -> Self {
        self.errors_are_drops = yes;
        self
    }

    /// The lower bound.
    pub const fn min(&self) -> usize {
        self.min
    }

    /// The upper bound.
    pub const fn max(&self) -> usize {
        self.max
    }

    /// The starting limit.
    pub const fn initial_limit(&self) -> usize {
        match self.initial {
            Some(i) => i,
            None => self.min,
        }
    }

    /// Checks the settings (the bulkhead's builder calls it); the error names
    /// the `adaptive.*` field at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.min == 0 {
            return Err(ConfigError::new("adaptive.min", "must be at least 1"));
        }
        if self.max < self.min {
            return Err(ConfigError::new(
                "adaptive.max",
                "must be at least `adaptive.min`",
            ));
        }
        let initial = self.initial_limit();
        if initial < self.min || initial > self.max {
            return Err(ConfigError::new(
                "adaptive.initial",
                "must lie within [`adaptive.min`, `adaptive.max`]",
            ));
        }
        if self.increase == 0 {
            return Err(ConfigError::new("adaptive.increase", "must be at least 1"));
        }
        if !(self.backoff_ratio > 0.0 && self.backoff_ratio < 1.0) {
            return Err(ConfigError::new(
                "adaptive.backoff_ratio",
                "must lie strictly between 0 and 1",
            ));
        }
        if self.latency_threshold == Some(Duration::ZERO) {
            return Err(ConfigError::new(
                "adaptive.latency_threshold",
                "must be greater than zero",
            ));
        }
        Ok(())
    }
}

/// What one finished item tells the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// How long the item took.
    pub latency: Duration,
    /// Items in flight when it finished (including itself).
    pub in_flight: usize,
    /// Whether it ended in an error or a timeout.
    pub errored: bool,
}

/// The AIMD limit itself: pure arithmetic, no clock, no locking. The parallel
/// executor owns one per run; it is public so the math can be inspected and
/// reused.
#[derive(Debug, Clone, PartialEq)]
pub struct AimdLimit {
    config: AimdConfig,
    limit: usize,
}

impl AimdLimit {
    /// A limit at `config`'s initial value. `config` must be valid (the
    /// executor's builder validates it); out-of-range values are clamped.
    pub fn new(config: AimdConfig) -> Self {
        let min = config.min.max(1);
        let max = config.max.max(min);
        let limit = config.initial_limit().clamp(min, max);
        AimdLimit {
            config: AimdConfig { min, max, ..config },
            limit,
        }
    }

    /// The current limit.
    pub const fn limit(&self) -> usize {
        self.limit
    }

    /// Whether `sample` counts as a drop.
    pub fn is_drop(&self, sample: &Sample) -> bool {
        (sample.errored && self.config.errors_are_drops)
            || self
                .config
                .latency_threshold
                .is_some_and(|t| sample.latency > t)
    }

    /// Updates the limit with one finished item and returns the new limit.
    pub fn on_sample(&mut self, sample: Sample) -> usize {
        let limit = if self.is_drop(&sample) {
            self.decreased()
        } else if sample.errored {
            // Errors that are not drops leave the limit alone: they say
            // nothing about capacity.
            self.limit
        } else if sample.in_flight.saturating_mul(2) >= self.limit {
            self.limit.saturating_add(self.config.increase)
        } else {
            self.limit
        };
        self.limit = limit.clamp(self.config.min, self.config.max);
        self.limit
    }

    fn decreased(&self) -> usize {
        // floor(limit · ratio) < limit for every limit ≥ 1 and ratio < 1, so
        // a drop always shrinks the limit until the clamp holds it at `min`.
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let scaled = (self.limit as f64 * self.config.backoff_ratio).floor() as usize;
        scaled.min(self.limit.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(latency_ms: u64, in_flight: usize) -> Sample {
        Sample {
            latency: Duration::from_millis(latency_ms),
            in_flight,
            errored: false,
        }
    }

    fn err(in_flight: usize) -> Sample {
        Sample {
            latency: Duration::from_millis(1),
            in_flight,
            errored: true,
        }
    }

    #[test]
    fn increases_additively_and_decreases_multiplicatively() {
        let mut l = AimdLimit::new(AimdConfig::new(1, 100).initial(10).backoff_ratio(0.5));
        assert_eq!(l.on_sample(ok(1, 10)), 11);
        assert_eq!(l.on_sample(ok(1, 11)), 12);
        assert_eq!(l.on_sample(err(12)), 6);
        assert_eq!(l.on_sample(err(6)), 3);
        assert_eq!(l.on_sample(err(3)), 1);
        assert_eq!(l.on_sample(err(1)), 1, "held at min");
    }

    #[test]
    fn does_not_grow_while_underused() {
        let mut l = AimdLimit::new(AimdConfig::new(1, 100).initial(10));
        assert_eq!(l.on_sample(ok(1, 4)), 10, "4 of 10 in use");
        assert_eq!(l.on_sample(ok(1, 5)), 11, "5 of 10 in use");
    }

    #[test]
    fn latency_over_threshold_is_a_drop() {
        let cfg = AimdConfig::new(2, 50)
            .initial(20)
            .latency_threshold(Duration::from_millis(100));
        let mut l = AimdLimit::new(cfg);
        assert_eq!(l.on_sample(ok(100, 20)), 21, "at the threshold is fine");
        assert_eq!(l.on_sample(ok(101, 21)), 18);
    }

    #[test]
    fn errors_can_be_ignored() {
        let mut l = AimdLimit::new(AimdConfig::new(1, 10).initial(5).errors_are_drops(false));
        assert_eq!(l.on_sample(err(5)), 5);
        assert_eq!(l.on_sample(ok(1, 5)), 6);
    }

    #[test]
    fn validation_names_the_field() {
        let field = |c: AimdConfig| c.validate().unwrap_err().field().to_owned();
        assert_eq!(field(AimdConfig::new(0, 4)), "adaptive.min");
        assert_eq!(field(AimdConfig::new(5, 4)), "adaptive.max");
        assert_eq!(field(AimdConfig::new(1, 4).initial(5)), "adaptive.initial");
        assert_eq!(
            field(AimdConfig::new(1, 4).increase(0)),
            "adaptive.increase"
        );
        assert_eq!(
            field(AimdConfig::new(1, 4).backoff_ratio(1.0)),
            "adaptive.backoff_ratio"
        );
        assert_eq!(
            field(AimdConfig::new(1, 4).backoff_ratio(0.0)),
            "adaptive.backoff_ratio"
        );
        assert_eq!(
            field(AimdConfig::new(1, 4).backoff_ratio(f64::NAN)),
            "adaptive.backoff_ratio"
        );
        assert_eq!(
            field(AimdConfig::new(1, 4).latency_threshold(Duration::ZERO)),
            "adaptive.latency_threshold"
        );
        assert!(AimdConfig::new(1, 1).validate().is_ok());
    }

    fn arb_config() -> impl Strategy<Value = AimdConfig> {
        (
            1usize..50,
            0usize..200,
            0usize..250,
            1usize..5,
            0.05f64..0.95,
        )
            .prop_map(|(min, span, initial, increase, ratio)| {
                let max = min + span;
                AimdConfig::new(min, max)
                    .initial(initial.clamp(min, max))
                    .increase(increase)
                    .backoff_ratio(ratio)
                    .latency_threshold(Duration::from_millis(50))
            })
    }

    fn arb_sample() -> impl Strategy<Value = Sample> {
        (0u64..100, 0usize..300, any::<bool>()).prop_map(|(ms, in_flight, errored)| Sample {
            latency: Duration::from_millis(ms),
            in_flight,
            errored,
        })
    }

    proptest! {
        #[test]
        fn limit_stays_within_bounds(cfg in arb_config(), samples in proptest::collection::vec(arb_sample(), 0..200)) {
            prop_assert!(cfg.validate().is_ok());
            let mut l = AimdLimit::new(cfg);
            for s in samples {
                let v = l.on_sample(s);
                prop_assert!(v >= cfg.min && v <= cfg.max, "{v} outside [{}, {}]", cfg.min, cfg.max);
            }
        }

        #[test]
        fn a_drop_shrinks_by_the_ratio_or_to_min(cfg in arb_config(), s in arb_sample()) {
            let mut l = AimdLimit::new(cfg);
            let before = l.limit();
            let dropped = l.is_drop(&s);
            let after = l.on_sample(s);
            if dropped {
                #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let expected = ((before as f64 * cfg.backoff_ratio).floor() as usize).min(before - 1).max(cfg.min);
                prop_assert_eq!(after, expected);
                prop_assert!(after < before || before == cfg.min);
            } else {
                prop_assert!(after >= before);
                prop_assert!(after - before <= cfg.increase);
            }
        }

        #[test]
        fn fast_successes_at_full_use_reach_max(cfg in arb_config()) {
            let mut l = AimdLimit::new(cfg);
            // Each success grows by at least 1 until max: (max - min) steps suffice.
            for _ in 0..=(cfg.max - cfg.min) {
                let in_flight = l.limit();
                l.on_sample(ok(1, in_flight));
            }
            prop_assert_eq!(l.limit(), cfg.max);
        }

        #[test]
        fn consecutive_drops_reach_min(cfg in arb_config()) {
            let mut l = AimdLimit::new(cfg);
            for _ in 0..=(cfg.max - cfg.min) {
                l.on_sample(err(1));
            }
            prop_assert_eq!(l.limit(), cfg.min);
        }
    }
}
