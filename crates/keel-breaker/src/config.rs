use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use keel_core::Clock;

use crate::ConfigError;
use crate::event::BreakerListener;
use crate::window::TIME_BUCKET_MIN_CAPACITY;

/// The largest count-based window, in calls.
pub const MAX_COUNT_WINDOW: u32 = 1_000_000;
/// The most buckets a time-based window may have.
pub const MAX_TIME_BUCKETS: u32 = 1024;
/// The shortest bucket of a time-based window.
pub const MIN_TIME_BUCKET: Duration = Duration::from_millis(1);

/// The sliding window over which failure and slow-call rates are measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Window {
    /// The last `size` recorded calls (neutral outcomes are not recorded).
    Count {
        /// How many calls the window holds.
        size: u32,
    },
    /// The calls recorded in the last `duration`, kept in `buckets` equal
    /// buckets; the oldest bucket expires as a whole, so the window covers
    /// between `duration - duration / buckets` and `duration`.
    Time {
        /// The span of the window.
        duration: Duration,
        /// How many buckets the span is cut into.
        buckets: u32,
    },
}

/// The slow-call rule: calls that take at least `threshold` are slow, and
/// the breaker trips when the share of slow calls in the window reaches
/// `rate`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowCallRule {
    /// Calls taking at least this long count as slow.
    pub threshold: Duration,
    /// The slow-call share (0 < rate <= 1) that trips the breaker.
    pub rate: f64,
}

/// How the open duration grows when the breaker opens again without having
/// closed in between (a failed probe or a half-open timeout):
/// `open_duration * multiplier^(n-1)`, capped at `max`, where `n` counts the
/// opens since the breaker last closed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpenGrowth {
    /// The factor applied per repeated open (>= 1).
    pub multiplier: f64,
    /// The longest the breaker stays open.
    pub max: Duration,
}

/// A circuit breaker's configuration. Build one with
/// [`BreakerConfig::builder`]; [`BreakerConfig::default`] is
/// resilience4j-like:
///
/// | setting | default |
/// |---|---|
/// | window | count-based, last 100 calls |
/// | failure-rate threshold | 50 % |
/// | slow-call rule | off |
/// | consecutive-failures rule | off |
/// | minimum calls before a rate rule may trip | 10 |
/// | open duration | 30 s, not growing |
/// | half-open | 3 concurrent probes, 3 successes close it, 60 s maximum wait |
/// | clock | tokio's ([`Clock::tokio`]) |
///
/// Rules are explicit: on a builder from [`BreakerConfig::builder`], the
/// first rule you set (failure rate, slow calls, consecutive failures)
/// replaces the default failure-rate rule instead of adding to it, so
/// `builder().consecutive_failures(3)` trips after exactly three failures
/// in a row and on nothing else:
///
/// ```
/// use keel_breaker::{BreakerConfig, CircuitBreaker, State};
///
/// let config = BreakerConfig::builder().consecutive_failures(3).build()?;
/// assert_eq!(config.failure_rate_threshold(), None);
/// let breaker = CircuitBreaker::new("api", config);
/// for _ in 0..3 {
///     breaker.try_acquire()?.record_failure();
/// }
/// assert_eq!(breaker.state(), State::Open);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// Concurrency limits are not the breaker's job: use a
/// [`Bulkhead`](crate::Bulkhead) (the registry keeps one per preset).
///
/// Cloning is cheap (listeners are shared `Arc`s).
#[derive(Clone)]
pub struct BreakerConfig {
    pub(crate) window: Window,
    pub(crate) failure_rate: Option<f64>,
    pub(crate) slow_call: Option<SlowCallRule>,
    pub(crate) consecutive_failures: Option<u32>,
    pub(crate) minimum_calls: u32,
    pub(crate) open_duration: Duration,
    pub(crate) open_growth: Option<OpenGrowth>,
    pub(crate) half_open_max_probes: u32,
    pub(crate) half_open_successes: u32,
    pub(crate) half_open_max_wait: Duration,
    pub(crate) clock: Clock,
    pub(crate) listeners: Vec<Arc<dyn BreakerListener>>,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            window: Window::Count { size: 100 },
            failure_rate: Some(0.5),
            slow_call: None,
            consecutive_failures: None,
            minimum_calls: 10,
            open_duration: Duration::from_secs(30),
            open_growth: None,
            half_open_max_probes: 3,
            half_open_successes: 3,
            half_open_max_wait: Duration::from_secs(60),
            clock: Clock::tokio(),
            listeners: Vec::new(),
        }
    }
}

impl fmt::Debug for BreakerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerConfig")
            .field("window", &self.window)
            .field("failure_rate", &self.failure_rate)
            .field("slow_call", &self.slow_call)
            .field("consecutive_failures", &self.consecutive_failures)
            .field("minimum_calls", &self.minimum_calls)
            .field("open_duration", &self.open_duration)
            .field("open_growth", &self.open_growth)
            .field("half_open_max_probes", &self.half_open_max_probes)
            .field("half_open_successes", &self.half_open_successes)
            .field("half_open_max_wait", &self.half_open_max_wait)
            .field("clock", &self.clock)
            .field("listeners", &self.listeners.len())
            .finish()
    }
}

impl BreakerConfig {
    /// A builder starting from [`BreakerConfig::default`].
    pub fn builder() -> BreakerConfigBuilder {
        BreakerConfigBuilder {
            config: BreakerConfig::default(),
            default_rules: true,
        }
    }

    /// A builder starting from this configuration, to adjust a preset.
    pub fn to_builder(&self) -> BreakerConfigBuilder {
        BreakerConfigBuilder {
            config: self.clone(),
            default_rules: false,
        }
    }

    /// A builder for the consecutive-failures style: trip after `failures`
    /// failures in a row (no rate rule), stay open `open_for`, and probe
    /// with one call in half-open (one success closes). The AWS presets
    /// below are built this way; `build()` validates the numbers.
    pub fn consecutive(failures: u32, open_for: Duration) -> BreakerConfigBuilder {
        BreakerConfigBuilder {
            config: Self::consecutive_preset(failures, open_for),
            default_rules: false,
        }
    }

    /// The presets below pass known-valid numbers (checked by a test).
    fn consecutive_preset(failures: u32, open_for: Duration) -> BreakerConfig {
        BreakerConfig {
            window: Window::Count { size: 100 },
            failure_rate: None,
            slow_call: None,
            consecutive_failures: Some(failures),
            minimum_calls: failures.max(1),
            open_duration: open_for,
            open_growth: None,
            half_open_max_probes: 1,
            half_open_successes: 1,
            half_open_max_wait: Duration::from_secs(60),
            clock: Clock::tokio(),
            listeners: Vec::new(),
        }
    }

    /// Amazon EC2: 3 consecutive failures, 30 s open (with a 5-call
    /// bulkhead in [`BreakerRegistry::with_aws_presets`](crate::BreakerRegistry::with_aws_presets)).
    pub fn aws_ec2() -> BreakerConfig {
        Self::consecutive_preset(3, Duration::from_secs(30))
    }

    /// Amazon S3: 5 consecutive failures, 10 s open (10-call bulkhead).
    pub fn aws_s3() -> BreakerConfig {
        Self::consecutive_preset(5, Duration::from_secs(10))
    }

    /// AWS SSM: 3 consecutive failures, 45 s open (3-call bulkhead).
    pub fn aws_ssm() -> BreakerConfig {
        Self::consecutive_preset(3, Duration::from_secs(45))
    }

    /// Amazon DynamoDB: 5 consecutive failures, 20 s open (8-call bulkhead).
    pub fn aws_dynamodb() -> BreakerConfig {
        Self::consecutive_preset(5, Duration::from_secs(20))
    }

    /// The sliding window.
    pub fn window(&self) -> Window {
        self.window
    }

    /// The failure rate (0..=1) that trips the breaker, if that rule is on.
    pub fn failure_rate_threshold(&self) -> Option<f64> {
        self.failure_rate
    }

    /// The slow-call rule, if on.
    pub fn slow_call(&self) -> Option<SlowCallRule> {
        self.slow_call
    }

    /// The consecutive-failures threshold, if that rule is on.
    pub fn consecutive_failures(&self) -> Option<u32> {
        self.consecutive_failures
    }

    /// How many calls the window must hold before a rate rule (failure or
    /// slow-call rate) may trip. The consecutive-failures rule is not gated:
    /// N failures in a row trip it.
    pub fn minimum_calls(&self) -> u32 {
        self.minimum_calls
    }

    /// The (first) open duration.
    pub fn open_duration(&self) -> Duration {
        self.open_duration
    }

    /// How the open duration grows on repeated opens, if it does.
    pub fn open_growth(&self) -> Option<OpenGrowth> {
        self.open_growth
    }

    /// How many probe calls half-open admits at once.
    pub fn half_open_max_probes(&self) -> u32 {
        self.half_open_max_probes
    }

    /// How many probe successes close the breaker.
    pub fn half_open_successes(&self) -> u32 {
        self.half_open_successes
    }

    /// How long half-open waits for its probes before opening again.
    pub fn half_open_max_wait(&self) -> Duration {
        self.half_open_max_wait
    }

    /// The clock the breaker reads.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// `true` when a rule needs the sliding window.
    pub(crate) fn uses_window(&self) -> bool {
        self.failure_rate.is_some() || self.slow_call.is_some()
    }

    /// The open duration after the `opens`-th consecutive open (1-based).
    pub fn open_duration_for(&self, opens: u32) -> Duration {
        open_duration_for(self.open_duration, self.open_growth, opens)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        fn rate(field: &'static str, value: f64) -> Result<(), ConfigError> {
            if value.is_finite() && value > 0.0 && value <= 1.0 {
                Ok(())
            } else {
                Err(ConfigError::new(
                    field,
                    format!("must be a rate in (0, 1], got {value}"),
                ))
            }
        }
        match self.window {
            Window::Count { size } => {
                if size == 0 || size > MAX_COUNT_WINDOW {
                    return Err(ConfigError::new(
                        "count_window",
                        format!("size must be in 1..={MAX_COUNT_WINDOW}, got {size}"),
                    ));
                }
                if self.uses_window() && self.minimum_calls > size {
                    return Err(ConfigError::new(
                        "minimum_calls",
                        format!(
                            "{} exceeds the count window of {size} calls, so no rate rule could ever trip",
                            self.minimum_calls
                        ),
                    ));
                }
            }
            Window::Time { duration, buckets } => {
                if buckets == 0 || buckets > MAX_TIME_BUCKETS {
                    return Err(ConfigError::new(
                        "time_window",
                        format!("buckets must be in 1..={MAX_TIME_BUCKETS}, got {buckets}"),
                    ));
                }
                if duration.is_zero() || duration / buckets < MIN_TIME_BUCKET {
                    return Err(ConfigError::new(
                        "time_window",
                        format!(
                            "each bucket must span at least {MIN_TIME_BUCKET:?}, got {duration:?} / {buckets}"
                        ),
                    ));
                }
                let reachable = u64::from(buckets) * u64::from(TIME_BUCKET_MIN_CAPACITY);
                if self.uses_window() && u64::from(self.minimum_calls) > reachable {
                    return Err(ConfigError::new(
                        "minimum_calls",
                        format!(
                            "must be at most {reachable} for a time window of {buckets} buckets"
                        ),
                    ));
                }
            }
        }
        if let Some(r) = self.failure_rate {
            rate("failure_rate_threshold", r)?;
        }
        if let Some(rule) = self.slow_call {
            if rule.threshold.is_zero() {
                return Err(ConfigError::new(
                    "slow_call",
                    "threshold must be above zero",
                ));
            }
            rate("slow_call", rule.rate)?;
        }
        if self.consecutive_failures == Some(0) {
            return Err(ConfigError::new(
                "consecutive_failures",
                "must be at least 1",
            ));
        }
        if self.minimum_calls == 0 {
            return Err(ConfigError::new("minimum_calls", "must be at least 1"));
        }
        if self.open_duration.is_zero() {
            return Err(ConfigError::new("open_duration", "must be above zero"));
        }
        if let Some(growth) = self.open_growth {
            if !growth.multiplier.is_finite() || growth.multiplier < 1.0 {
                return Err(ConfigError::new(
                    "open_duration_growth",
                    format!(
                        "multiplier must be finite and >= 1, got {}",
                        growth.multiplier
                    ),
                ));
            }
            if growth.max < self.open_duration {
                return Err(ConfigError::new(
                    "open_duration_growth",
                    format!(
                        "max {:?} is below the open duration {:?}",
                        growth.max, self.open_duration
                    ),
                ));
            }
        }
        if self.half_open_max_probes == 0 || self.half_open_max_probes > u32::from(u16::MAX) {
            return Err(ConfigError::new(
                "half_open_max_probes",
                format!("must be in 1..={}", u16::MAX),
            ));
        }
        if self.half_open_successes == 0 || self.half_open_successes > u32::from(u16::MAX) {
            return Err(ConfigError::new(
                "half_open_successes",
                format!("must be in 1..={}", u16::MAX),
            ));
        }
        if self.half_open_max_wait.is_zero() {
            return Err(ConfigError::new("half_open_max_wait", "must be above zero"));
        }
        Ok(())
    }
}

/// `base * multiplier^(opens-1)`, capped at `growth.max`; `base` without
/// growth. `opens` is 1 for the first open since the breaker last closed.
pub(crate) fn open_duration_for(
    base: Duration,
    growth: Option<OpenGrowth>,
    opens: u32,
) -> Duration {
    let Some(growth) = growth else {
        return base;
    };
    let exponent = opens.saturating_sub(1).min(4096) as i32;
    let secs = base.as_secs_f64() * growth.multiplier.powi(exponent);
    if !secs.is_finite() || secs >= growth.max.as_secs_f64() {
        return growth.max;
    }
    Duration::from_secs_f64(secs).clamp(base, growth.max)
}

/// Builds a [`BreakerConfig`]; [`build`](Self::build) validates every
/// field.
#[derive(Debug, Clone)]
#[must_use = "call .build() to get the configuration"]
pub struct BreakerConfigBuilder {
    config: BreakerConfig,
    /// Still holding [`BreakerConfig::default`]'s rules: the first rule set
    /// replaces them.
    default_rules: bool,
}

impl BreakerConfigBuilder {
    /// Measure rates over the last `size` recorded calls (1..=1,000,000).
    pub fn count_window(mut self, size: u32) -> Self {
        self.config.window = Window::Count { size };
        self
    }

    /// Measure rates over the last `duration`, cut into `buckets` buckets
    /// (1..=1024, each at least 1 ms). Every call then reads the clock.
    pub fn time_window(mut self, duration: Duration, buckets: u32) -> Self {
        self.config.window = Window::Time { duration, buckets };
        self
    }

    /// The first rule set on a builder from [`BreakerConfig::builder`]
    /// replaces the default rules; later ones add to it.
    fn explicit_rules(&mut self) {
        if std::mem::take(&mut self.default_rules) {
            self.config.failure_rate = None;
            self.config.slow_call = None;
            self.config.consecutive_failures = None;
        }
    }

    /// Trip when the failure rate in the window reaches `rate` (0 < rate <= 1).
    /// On a fresh builder this replaces the default rules (see
    /// [`BreakerConfig`]).
    pub fn failure_rate_threshold(mut self, rate: f64) -> Self {
        self.explicit_rules();
        self.config.failure_rate = Some(rate);
        self
    }

    /// Turn the failure-rate rule off.
    pub fn no_failure_rate(mut self) -> Self {
        self.default_rules = false;
        self.config.failure_rate = None;
        self
    }

    /// Count calls taking at least `threshold` as slow and trip when their
    /// share of the window reaches `rate`. Every call then reads the clock
    /// twice. In half-open, a slow probe counts as a failed probe.
    pub fn slow_call(mut self, threshold: Duration, rate: f64) -> Self {
        self.explicit_rules();
        self.config.slow_call = Some(SlowCallRule { threshold, rate });
        self
    }

    /// Trip after `failures` failures in a row (a success resets the run).
    ///
    /// On a fresh builder this is the only rule (the default failure-rate
    /// rule is dropped); add [`failure_rate_threshold`](Self::failure_rate_threshold)
    /// to have both. It is not gated by [`minimum_calls`](Self::minimum_calls):
    /// three failures in a row trip `consecutive_failures(3)`.
    pub fn consecutive_failures(mut self, failures: u32) -> Self {
        self.explicit_rules();
        self.config.consecutive_failures = Some(failures);
        self
    }

    /// The rate rules may not trip before the window holds this many calls
    /// (default 10). The consecutive-failures rule is not gated.
    pub fn minimum_calls(mut self, calls: u32) -> Self {
        self.config.minimum_calls = calls;
        self
    }

    /// How long the breaker stays open before letting probes through.
    pub fn open_duration(mut self, duration: Duration) -> Self {
        self.config.open_duration = duration;
        self
    }

    /// Grow the open duration by `multiplier` on each repeated open (a
    /// failed probe, a half-open timeout), up to `max`; it goes back to the
    /// base duration once the breaker closes.
    pub fn open_duration_growth(mut self, multiplier: f64, max: Duration) -> Self {
        self.config.open_growth = Some(OpenGrowth { multiplier, max });
        self
    }

    /// How many probe calls half-open admits at once (1..=65535).
    pub fn half_open_max_probes(mut self, probes: u32) -> Self {
        self.config.half_open_max_probes = probes;
        self
    }

    /// How many successful probes close the breaker (1..=65535); one failed
    /// probe opens it again.
    pub fn half_open_successes(mut self, successes: u32) -> Self {
        self.config.half_open_successes = successes;
        self
    }

    /// How long half-open waits for enough probes to finish before it opens
    /// again, so a probe that hangs forever cannot wedge the breaker.
    pub fn half_open_max_wait(mut self, wait: Duration) -> Self {
        self.config.half_open_max_wait = wait;
        self
    }

    /// The clock to read (tests pass [`Clock::manual`]).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.config.clock = clock;
        self
    }

    /// Add a listener for state transitions, rejections and slow calls.
    pub fn listener(mut self, listener: impl BreakerListener) -> Self {
        self.config.listeners.push(Arc::new(listener));
        self
    }

    /// Add an already shared listener.
    pub fn shared_listener(mut self, listener: Arc<dyn BreakerListener>) -> Self {
        self.config.listeners.push(listener);
        self
    }

    /// Validates and returns the configuration; the error names the field.
    pub fn build(self) -> Result<BreakerConfig, ConfigError> {
        self.config.validate()?;
        Ok(self.config)
    }
}
