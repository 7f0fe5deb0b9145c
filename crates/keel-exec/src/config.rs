//! Builders for the executors. `build()` validates and names the offending
//! field in a [`ConfigError`].

use std::time::Duration;

use keel_breaker::{AimdConfig, Bulkhead};
use keel_core::Priority;
use tokio_util::sync::CancellationToken;

use crate::batch::BatchExecutor;
use crate::error::ConfigError;
#[cfg(feature = "metrics")]
use crate::metrics::ExecMetrics;
use crate::parallel::ParallelExecutor;

/// The default fixed concurrency limit of a [`ParallelExecutor`].
pub const DEFAULT_CONCURRENCY: usize = 10;

/// How many items may run at once. Every run admits its items through a
/// [`Bulkhead`]: one of its own for `Fixed` and `Adaptive` (each run gets a
/// fresh one, so concurrent runs of one executor do not share slots), or
/// the caller's shared one.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Concurrency {
    /// At most this many items at once.
    Fixed(usize),
    /// A limit that adapts to errors and latency (AIMD) within bounds.
    Adaptive(AimdConfig),
    /// The slots of a bulkhead shared with other code (a registry preset's,
    /// say `BreakerRegistry::bulkhead("ssm")`): items of the run count
    /// against its limit together with every other user, and wait in its
    /// queue at the run's [priority](ParallelBuilder::priority).
    Shared(Bulkhead),
}

impl Concurrency {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        match self {
            Concurrency::Fixed(0) => Err(ConfigError::new("concurrency", "must be at least 1")),
            Concurrency::Fixed(_) | Concurrency::Shared(_) => Ok(()),
            Concurrency::Adaptive(cfg) => cfg.validate(),
        }
    }

    /// The bulkhead one run admits its items through: a fresh one (only
    /// the run's own items hold its slots, so the run never waits in its
    /// queue) or the shared one.
    pub(crate) fn bulkhead(&self) -> Bulkhead {
        let own = |b: keel_breaker::BulkheadBuilder| {
            b.build().expect("validated when the executor was built")
        };
        match self {
            Concurrency::Fixed(n) => own(Bulkhead::builder("exec").max_concurrent((*n).max(1))),
            Concurrency::Adaptive(cfg) => own(Bulkhead::builder("exec").adaptive(*cfg)),
            Concurrency::Shared(b) => b.clone(),
        }
    }
}

/// Settings shared by the parallel executor and the batch executor's
/// batch-level fan-out.
#[derive(Debug, Clone)]
pub(crate) struct ParallelSettings {
    pub(crate) concurrency: Concurrency,
    pub(crate) priority: Priority,
    pub(crate) item_timeout: Option<Duration>,
    pub(crate) overall_timeout: Option<Duration>,
    pub(crate) shutdown: Option<CancellationToken>,
    #[cfg(feature = "metrics")]
    pub(crate) metrics: Option<ExecMetrics>,
}

impl Default for ParallelSettings {
    fn default() -> Self {
        ParallelSettings {
            concurrency: Concurrency::Fixed(DEFAULT_CONCURRENCY),
            priority: Priority::Normal,
            item_timeout: None,
            overall_timeout: None,
            shutdown: None,
            #[cfg(feature = "metrics")]
            metrics: None,
        }
    }
}

impl ParallelSettings {
    pub(crate) fn validate(&self, item_timeout_field: &'static str) -> Result<(), ConfigError> {
        self.concurrency.validate()?;
        if self.item_timeout == Some(Duration::ZERO) {
            return Err(ConfigError::new(
                item_timeout_field,
                "must be greater than zero",
            ));
        }
        if self.overall_timeout == Some(Duration::ZERO) {
            return Err(ConfigError::new(
                "overall_timeout",
                "must be greater than zero",
            ));
        }
        Ok(())
    }
}

/// Builds a [`ParallelExecutor`]. Defaults: a fixed limit of
/// [`DEFAULT_CONCURRENCY`] items, [`Priority::Normal`], no per-item timeout,
/// no overall timeout, no shutdown token.
#[derive(Debug, Clone, Default)]
#[must_use = "call `build()` to get an executor"]
pub struct ParallelBuilder {
    pub(crate) settings: ParallelSettings,
}

impl ParallelBuilder {
    /// At most `limit` items run at once (must be at least 1).
    pub fn concurrency(mut self, limit: usize) -> Self {
        self.settings.concurrency = Concurrency::Fixed(limit);
        self
    }

    /// An adaptive (AIMD) limit instead of a fixed one; see [`AimdConfig`].
    /// A finished item teaches the limit: a success with its latency, an
    /// error, timeout or panic as a drop.
    pub fn adaptive(mut self, config: AimdConfig) -> Self {
        self.settings.concurrency = Concurrency::Adaptive(config);
        self
    }

    /// Admits items through `bulkhead`, shared with other code, instead of
    /// a limit of the run's own (see [`Concurrency::Shared`]).
    ///
    /// Give it a queue (`Bulkhead::builder(..).queue(n)`): the run then
    /// waits for slots in it, at its [priority](Self::priority). A bulkhead
    /// without a queue refuses at once when full: the run then starts the
    /// next item when one of its own finishes, and when none of its items
    /// runs, the next item fails with
    /// [`ExecError::Rejected`](crate::ExecError::Rejected) without running
    /// (so does an item whose wait the bulkhead shed for a higher priority).
    pub fn bulkhead(mut self, bulkhead: Bulkhead) -> Self {
        self.settings.concurrency = Concurrency::Shared(bulkhead);
        self
    }

    /// The priority at which the run waits for bulkhead slots (default
    /// [`Priority::Normal`]); it only matters for a shared bulkhead with a
    /// queue.
    pub fn priority(mut self, priority: Priority) -> Self {
        self.settings.priority = priority;
        self
    }

    /// Each item gets at most `timeout` (retries included, when the item's
    /// operation retries); past it the item is dropped and reported
    /// [`ExecError::TimedOut`](crate::ExecError::TimedOut).
    pub fn item_timeout(mut self, timeout: Duration) -> Self {
        self.settings.item_timeout = Some(timeout);
        self
    }

    /// The whole run gets at most `timeout`, from the call to `run`/`stream`.
    /// When it elapses, no new item starts; running items are dropped and
    /// reported [`ExecError::DeadlineExceeded`](crate::ExecError::DeadlineExceeded);
    /// items never started are reported
    /// [`ExecError::Cancelled`](crate::ExecError::Cancelled).
    pub fn overall_timeout(mut self, timeout: Duration) -> Self {
        self.settings.overall_timeout = Some(timeout);
        self
    }

    /// Cancelling `token` stops every run of this executor: no new item
    /// starts, running items are dropped; both are reported
    /// [`ExecError::Cancelled`](crate::ExecError::Cancelled). A run that
    /// starts after the token is cancelled starts nothing.
    pub fn shutdown(mut self, token: CancellationToken) -> Self {
        self.settings.shutdown = Some(token);
        self
    }

    /// Records every run in `metrics`.
    #[cfg(feature = "metrics")]
    pub fn metrics(mut self, metrics: ExecMetrics) -> Self {
        self.settings.metrics = Some(metrics);
        self
    }

    /// Validates the settings.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the field: `concurrency` of 0, a zero
    /// `item_timeout` or `overall_timeout`, or an invalid `adaptive.*` bound.
    pub fn build(self) -> Result<ParallelExecutor, ConfigError> {
        self.settings.validate("item_timeout")?;
        Ok(ParallelExecutor::from_settings(self.settings))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_names_the_invalid_field() {
        let field = |b: ParallelBuilder| b.build().unwrap_err().field().to_owned();
        assert_eq!(
            field(ParallelExecutor::builder().concurrency(0)),
            "concurrency"
        );
        assert_eq!(
            field(ParallelExecutor::builder().item_timeout(Duration::ZERO)),
            "item_timeout"
        );
        assert_eq!(
            field(ParallelExecutor::builder().overall_timeout(Duration::ZERO)),
            "overall_timeout"
        );
        assert_eq!(
            field(ParallelExecutor::builder().adaptive(AimdConfig::new(4, 2))),
            "adaptive.max"
        );
        let err = ParallelExecutor::builder()
            .concurrency(0)
            .build()
            .unwrap_err();
        assert_eq!(err.to_string(), "invalid `concurrency`: must be at least 1");
        assert!(ParallelExecutor::builder().concurrency(1).build().is_ok());
    }

    #[test]
    fn batch_build_names_the_invalid_field() {
        let field = |b: BatchBuilder| b.build().unwrap_err().field().to_owned();
        assert_eq!(field(BatchExecutor::builder().batch_size(0)), "batch_size");
        assert_eq!(
            field(BatchExecutor::builder().concurrency(0)),
            "concurrency"
        );
        assert_eq!(
            field(BatchExecutor::builder().batch_timeout(Duration::ZERO)),
            "batch_timeout"
        );
        assert_eq!(
            field(BatchExecutor::builder().overall_timeout(Duration::ZERO)),
            "overall_timeout"
        );
        let exec = BatchExecutor::builder().build().unwrap();
        assert_eq!(exec.batch_size(), DEFAULT_BATCH_SIZE);
        assert_eq!(exec.batch_timeout(), Some(DEFAULT_BATCH_TIMEOUT));
    }
}

/// The default number of items per batch (what EC2's instance state calls
/// accept comfortably).
pub const DEFAULT_BATCH_SIZE: usize = 10;
/// The default time limit of one batch, retries included.
pub const DEFAULT_BATCH_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// The default number of batches run at once.
pub const DEFAULT_BATCH_CONCURRENCY: usize = 1;

/// When a failed batch is split to find the items at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SplitPolicy {
    /// Never: every item of a failed batch gets
    /// [`ExecError::BatchFailed`](crate::ExecError::BatchFailed).
    #[default]
    Never,
    /// When the batch failed with an error the classifier says is not
    /// worth retrying (neutral: a validation error such as EC2's
    /// `InvalidInstanceID`; see
    /// [`BatchExecutor::run_classified`](crate::BatchExecutor::run_classified)):
    /// the batch is split in halves, each half is run on its own,
    /// recursively, so only the bad items fail. A batch that failed with a
    /// retryable error (a transient outage) is not split.
    NonRetryable,
    /// After any failure, retryable or not. Costs up to `2n - 1` calls for a
    /// batch of `n` items when every call fails.
    Always,
}

/// Builds a [`BatchExecutor`](crate::BatchExecutor). Defaults: batches of
/// [`DEFAULT_BATCH_SIZE`], a [`DEFAULT_BATCH_TIMEOUT`] per batch, one batch at
/// a time, no splitting, no overall timeout.
#[derive(Debug, Clone)]
#[must_use = "call `build()` to get an executor"]
pub struct BatchBuilder {
    pub(crate) batch_size: usize,
    pub(crate) settings: ParallelSettings,
    pub(crate) split: SplitPolicy,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        BatchBuilder {
            batch_size: DEFAULT_BATCH_SIZE,
            settings: ParallelSettings {
                concurrency: Concurrency::Fixed(DEFAULT_BATCH_CONCURRENCY),
                item_timeout: Some(DEFAULT_BATCH_TIMEOUT),
                ..ParallelSettings::default()
            },
            split: SplitPolicy::Never,
        }
    }
}

impl BatchBuilder {
    /// At most `size` items per batch (must be at least 1).
    pub fn batch_size(mut self, size: usize) -> Self {
        self.batch_size = size;
        self
    }

    /// Each batch gets at most `timeout`, retries and splits included; past
    /// it every unsettled item of the batch is
    /// [`ExecError::TimedOut`](crate::ExecError::TimedOut).
    pub fn batch_timeout(mut self, timeout: Duration) -> Self {
        self.settings.item_timeout = Some(timeout);
        self
    }

    /// Removes the batch timeout.
    pub fn no_batch_timeout(mut self) -> Self {
        self.settings.item_timeout = None;
        self
    }

    /// At most `limit` batches run at once (must be at least 1).
    pub fn concurrency(mut self, limit: usize) -> Self {
        self.settings.concurrency = Concurrency::Fixed(limit);
        self
    }

    /// The whole run gets at most `timeout` (see
    /// [`ParallelBuilder::overall_timeout`]).
    pub fn overall_timeout(mut self, timeout: Duration) -> Self {
        self.settings.overall_timeout = Some(timeout);
        self
    }

    /// Cancelling `token` stops the run (see [`ParallelBuilder::shutdown`]).
    pub fn shutdown(mut self, token: CancellationToken) -> Self {
        self.settings.shutdown = Some(token);
        self
    }

    /// When a failed batch is split to isolate the items at fault (default
    /// [`SplitPolicy::Never`]).
    pub fn split(mut self, policy: SplitPolicy) -> Self {
        self.split = policy;
        self
    }

    /// Records every run in `metrics`: per-item outcomes and durations (an
    /// item's duration is its batch's), items in flight, the batch
    /// concurrency limit, and batches by outcome.
    #[cfg(feature = "metrics")]
    pub fn metrics(mut self, metrics: ExecMetrics) -> Self {
        self.settings.metrics = Some(metrics);
        self
    }

    /// Validates the settings.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the field: `batch_size` or `concurrency` of
    /// 0, or a zero `batch_timeout` or `overall_timeout`.
    pub fn build(self) -> Result<BatchExecutor, ConfigError> {
        if self.batch_size == 0 {
            return Err(ConfigError::new("batch_size", "must be at least 1"));
        }
        self.settings.validate("batch_timeout")?;
        Ok(BatchExecutor::from_builder(self))
    }
}
