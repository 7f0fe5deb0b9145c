use std::time::Duration;

use crate::error::ConfigError;

/// How one target is checked: how often, how long a check may take, and how
/// many consecutive results it takes to change the target's state.
///
/// Built with [`CheckConfig::builder`], which validates every field; a
/// `CheckConfig` that exists is therefore always valid. The defaults are
/// those of a VM supervisor: every 30 s, 5 s timeout, unhealthy after 3
/// consecutive failures, healthy again after 2 consecutive successes, and the
/// first check jittered.
///
/// ```
/// use std::time::Duration;
/// use keel_health::CheckConfig;
///
/// let config = CheckConfig::builder()
///     .interval(Duration::from_secs(1))
///     .timeout(Duration::from_millis(300))
///     .failure_threshold(3)
///     .recovery_threshold(2)
///     .build()?;
/// assert_eq!(config.interval(), Duration::from_secs(1));
///
/// // Invalid values are rejected, naming the field.
/// let err = CheckConfig::builder().failure_threshold(0).build().unwrap_err();
/// assert_eq!(err.field(), "failure_threshold");
/// # Ok::<(), keel_health::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckConfig {
    interval: Duration,
    timeout: Duration,
    failure_threshold: u32,
    recovery_threshold: u32,
    jitter_first_check: bool,
}

impl CheckConfig {
    /// The default interval between the starts of two checks.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
    /// The default time one check may take.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
    /// The default number of consecutive failures that make a target unhealthy.
    pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;
    /// The default number of consecutive successes that make an unhealthy
    /// target healthy again.
    pub const DEFAULT_RECOVERY_THRESHOLD: u32 = 2;

    /// A builder starting from the defaults.
    pub fn builder() -> CheckConfigBuilder {
        CheckConfigBuilder {
            config: CheckConfig::default(),
        }
    }

    /// Time between the starts of two consecutive checks. Checks of one
    /// target never overlap.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// How long one check may run before it counts as a `timeout` failure.
    /// Never longer than [`interval`](Self::interval).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Consecutive failures that make an unknown or healthy target unhealthy.
    pub fn failure_threshold(&self) -> u32 {
        self.failure_threshold
    }

    /// Consecutive successes that make an unhealthy target healthy again.
    pub fn recovery_threshold(&self) -> u32 {
        self.recovery_threshold
    }

    /// Whether the first check waits a random delay in `[0, interval)` so that
    /// many targets added together do not fire in lock-step.
    pub fn jitter_first_check(&self) -> bool {
        self.jitter_first_check
    }
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig {
            interval: Self::DEFAULT_INTERVAL,
            timeout: Self::DEFAULT_TIMEOUT,
            failure_threshold: Self::DEFAULT_FAILURE_THRESHOLD,
            recovery_threshold: Self::DEFAULT_RECOVERY_THRESHOLD,
            jitter_first_check: true,
        }
    }
}

/// Builder for [`CheckConfig`]; [`build`](Self::build) validates.
#[derive(Debug, Clone)]
pub struct CheckConfigBuilder {
    config: CheckConfig,
}

impl CheckConfigBuilder {
    /// Time between the starts of two checks. Must be above zero.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.config.interval = interval;
        self
    }

    /// How long a check may take. Must be above zero and at most the
    /// interval.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = timeout;
        self
    }

    /// Consecutive failures before unhealthy. At least 1.
    pub fn failure_threshold(mut self, failures: u32) -> Self {
        self.config.failure_threshold = failures;
        self
    }

    /// Consecutive successes before healthy again. At least 1.
    pub fn recovery_threshold(mut self, successes: u32) -> Self {
        self.config.recovery_threshold = successes;
        self
    }

    /// Whether to delay the first check by a random fraction of the interval
    /// (default `true`). Turn it off when a target must be checked at once.
    pub fn jitter_first_check(mut self, jitter: bool) -> Self {
        self.config.jitter_first_check = jitter;
        self
    }

    /// Validates and returns the configuration.
    ///
    /// # Errors
    /// A [`ConfigError`] naming `interval`, `timeout`, `failure_threshold` or
    /// `recovery_threshold` when that value is out of range.
    pub fn build(self) -> Result<CheckConfig, ConfigError> {
        let c = self.config;
        if c.interval.is_zero() {
            return Err(ConfigError::new("interval", "must be above zero"));
        }
        if c.timeout.is_zero() {
            return Err(ConfigError::new("timeout", "must be above zero"));
        }
        if c.timeout > c.interval {
            return Err(ConfigError::new(
                "timeout",
                format!(
                    "{:?} is longer than the interval {:?}; checks of one target never overlap",
                    c.timeout, c.interval
                ),
            ));
        }
        if c.failure_threshold == 0 {
            return Err(ConfigError::new("failure_threshold", "must be at least 1"));
        }
        if c.recovery_threshold == 0 {
            return Err(ConfigError::new("recovery_threshold", "must be at least 1"));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let built = CheckConfig::builder().build().unwrap();
        assert_eq!(built, CheckConfig::default());
        assert_eq!(built.interval(), Duration::from_secs(30));
        assert_eq!(built.timeout(), Duration::from_secs(5));
        assert_eq!(built.failure_threshold(), 3);
        assert_eq!(built.recovery_threshold(), 2);
        assert!(built.jitter_first_check());
    }

    #[test]
    fn each_invalid_field_is_named() {
        let cases = [
            (CheckConfig::builder().interval(Duration::ZERO), "interval"),
            (CheckConfig::builder().timeout(Duration::ZERO), "timeout"),
            (
                CheckConfig::builder()
                    .interval(Duration::from_secs(1))
                    .timeout(Duration::from_secs(2)),
                "timeout",
            ),
            (
                CheckConfig::builder().failure_threshold(0),
                "failure_threshold",
            ),
            (
                CheckConfig::builder().recovery_threshold(0),
                "recovery_threshold",
            ),
        ];
        for (builder, field) in cases {
            let err = builder.build().unwrap_err();
            assert_eq!(err.field(), field);
            assert!(err.to_string().contains(field), "{err}");
        }
    }

    #[test]
    fn timeout_equal_to_interval_is_allowed() {
        let c = CheckConfig::builder()
            .interval(Duration::from_secs(1))
            .timeout(Duration::from_secs(1))
            .jitter_first_check(false)
            .build()
            .unwrap();
        assert_eq!(c.timeout(), c.interval());
        assert!(!c.jitter_first_check());
    }
}
