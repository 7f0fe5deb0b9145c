//! [`NotifierBuilder`]: every setting of a notifier, validated at `build`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keel_retry::{Backoff, Jitter, RetryPolicy};

use crate::error::{ConfigError, NotifyError};
use crate::notification::Priority;
use crate::notifier::Notifier;
use crate::sink::{DynSink, Sink};

/// Default queue capacity (deliveries).
pub const DEFAULT_CAPACITY: usize = 1_000;
/// Default number of sender workers.
pub const DEFAULT_WORKERS: usize = 3;
/// Default dedup window.
pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(5 * 60);
/// Default debounce of warnings.
pub const DEFAULT_WARNING_DEBOUNCE: Duration = Duration::from_secs(30);
/// Default debounce of infos.
pub const DEFAULT_INFO_DEBOUNCE: Duration = Duration::from_secs(10);
/// Default cap on a retry-after a worker waits out in place; longer ones
/// requeue the message and pause the sink.
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// A retry-after longer than this is treated as this (a day): it only guards
/// against nonsense values.
pub(crate) const MAX_PAUSE: Duration = Duration::from_secs(24 * 60 * 60);

/// The validated settings, shared by the workers.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) capacity: usize,
    pub(crate) workers: usize,
    pub(crate) dedup_window: Duration,
    pub(crate) debounce: [Duration; 3],
    pub(crate) max_pending: usize,
    pub(crate) max_retry_after: Duration,
    pub(crate) retry: RetryPolicy,
    pub(crate) sink_backoff: RetryPolicy,
    pub(crate) spool: Option<PathBuf>,
    pub(crate) spool_interval: Option<Duration>,
}

/// Builds a [`Notifier`]. Start from [`Notifier::builder`].
///
/// | setting | default |
/// |---|---|
/// | [`capacity`](Self::capacity) | 1,000 deliveries |
/// | [`workers`](Self::workers) | 3 |
/// | [`dedup_window`](Self::dedup_window) | 5 min (never for critical) |
/// | [`debounce`](Self::debounce) | critical 0, warning 30 s, info 10 s |
/// | [`max_retry_after`](Self::max_retry_after) | 60 s |
/// | [`retry`](Self::retry) | 2 retries, 500 ms ×2 up to 5 s, equal jitter, 30 s per attempt |
/// | [`sink_backoff`](Self::sink_backoff) | 1 s ×2 up to 5 min, ±20 % |
/// | [`spool`](Self::spool) | none |
#[must_use]
pub struct NotifierBuilder {
    sinks: Vec<Arc<dyn DynSink>>,
    capacity: usize,
    workers: usize,
    dedup_window: Duration,
    debounce: [Duration; 3],
    max_pending: Option<usize>,
    max_retry_after: Duration,
    retry: Option<RetryPolicy>,
    sink_backoff: Option<RetryPolicy>,
    spool: Option<PathBuf>,
    spool_interval: Option<Duration>,
}

impl std::fmt::Debug for NotifierBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifierBuilder")
            .field(
                "sinks",
                &self.sinks.iter().map(|s| s.name()).collect::<Vec<_>>(),
            )
            .field("capacity", &self.capacity)
            .field("workers", &self.workers)
            .field("dedup_window", &self.dedup_window)
            .field("debounce", &self.debounce)
            .field("max_retry_after", &self.max_retry_after)
            .field("spool", &self.spool)
            .finish_non_exhaustive()
    }
}

impl Default for NotifierBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl NotifierBuilder {
    /// The defaults, with no sink yet.
    pub fn new() -> Self {
        NotifierBuilder {
            sinks: Vec::new(),
            capacity: DEFAULT_CAPACITY,
            workers: DEFAULT_WORKERS,
            dedup_window: DEFAULT_DEDUP_WINDOW,
            debounce: [
                Duration::ZERO,
                DEFAULT_WARNING_DEBOUNCE,
                DEFAULT_INFO_DEBOUNCE,
            ],
            max_pending: None,
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
            retry: None,
            sink_backoff: None,
            spool: None,
            spool_interval: None,
        }
    }

    /// Adds a sink. Every notification goes to every sink unless it names
    /// some with [`Notification::to`](crate::Notification::to). Sink names
    /// must be unique.
    pub fn sink<S: Sink>(mut self, sink: S) -> Self {
        self.sinks.push(Arc::new(sink));
        self
    }

    /// The most deliveries (notification × sink) the queue holds; beyond it
    /// the oldest of the lowest priority is dropped (counted and logged).
    /// At least 1.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// Sender workers: how many deliveries may be in flight at once (across
    /// sinks; rate limits still apply per sink). At least 1.
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// How long after a non-critical notification with a key was queued
    /// further ones with that key are suppressed. Zero disables the dedup.
    pub fn dedup_window(mut self, window: Duration) -> Self {
        self.dedup_window = window;
        self
    }

    /// How long the first notification of a key is held at `priority` so
    /// repeats collapse into it. Zero sends at once (the default for
    /// critical).
    pub fn debounce(mut self, priority: Priority, window: Duration) -> Self {
        self.debounce[priority.lane()] = window;
        self
    }

    /// The most distinct keys held by the debounce at once (default: the
    /// capacity); past it, new keys skip the debounce.
    pub fn max_held(mut self, max: usize) -> Self {
        self.max_pending = Some(max);
        self
    }

    /// The longest retry-after a worker waits out before retrying in place.
    /// A sink asking for more is paused for what it asked (at most a day),
    /// its message goes back to the queue, and the event is logged at
    /// `error` and counted (`retry_after_escalations`).
    pub fn max_retry_after(mut self, cap: Duration) -> Self {
        self.max_retry_after = cap;
        self
    }

    /// The policy for the quick retries of one delivery (its attempts,
    /// backoff, per-attempt timeout, budget). When it gives up on a
    /// retryable failure, the message is not dropped: it goes back to the
    /// queue and the sink is paused per [`sink_backoff`](Self::sink_backoff).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// How long a sink stays paused after the `n`th consecutive round of
    /// failed attempts: `policy.delay_for(n)` (only its backoff, maximum
    /// delay and jitter are used).
    pub fn sink_backoff(mut self, policy: RetryPolicy) -> Self {
        self.sink_backoff = Some(policy);
        self
    }

    /// Keeps queued messages across restarts in this file (JSON lines): it
    /// is loaded (then removed) by `build`, and written by
    /// [`Notifier::shutdown`] and [`Notifier::save_spool`].
    pub fn spool(mut self, path: impl Into<PathBuf>) -> Self {
        self.spool = Some(path.into());
        self
    }

    /// Also writes the spool every `interval` while running, so a crash
    /// loses at most that much (and may resend what was sent since the last
    /// write). Needs [`spool`](Self::spool).
    pub fn spool_interval(mut self, interval: Duration) -> Self {
        self.spool_interval = Some(interval);
        self
    }

    fn default_retry(cap: Duration) -> RetryPolicy {
        RetryPolicy::builder()
            .max_retries(2)
            .backoff(Backoff::exponential(Duration::from_millis(500), 2.0))
            .max_delay(Duration::from_secs(5))
            .jitter(Jitter::Equal)
            .attempt_timeout(Duration::from_secs(30))
            .max_retry_after(cap)
            .build()
            .expect("the default notifier retry policy is valid")
    }

    fn default_sink_backoff() -> RetryPolicy {
        RetryPolicy::builder()
            .backoff(Backoff::exponential(Duration::from_secs(1), 2.0))
            .max_delay(Duration::from_secs(5 * 60))
            .jitter(Jitter::Proportional(0.2))
            .build()
            .expect("the default sink backoff is valid")
    }

    /// Validates the settings, loads the spool (if any) and starts the
    /// workers. Must run inside a tokio runtime.
    ///
    /// # Errors
    /// [`NotifyError::Config`] naming the field at fault; [`NotifyError::Spool`]
    /// when the spool exists but cannot be read; [`NotifyError::NoRuntime`].
    pub fn build(self) -> Result<Notifier, NotifyError> {
        if self.sinks.is_empty() {
            return Err(ConfigError::new("sinks", "at least one sink is required").into());
        }
        for (i, s) in self.sinks.iter().enumerate() {
            let name = s.name();
            if name.is_empty() {
                return Err(ConfigError::new("sinks", "a sink name is empty").into());
            }
            if self.sinks[..i].iter().any(|o| o.name() == name) {
                return Err(
                    ConfigError::new("sinks", format!("two sinks are named `{name}`")).into(),
                );
            }
            for l in s.rate_limits() {
                if l.max == 0 || l.per.is_zero() {
                    return Err(ConfigError::new(
                        "sinks",
                        format!(
                            "sink `{name}` declares rate limit `{}` with a zero count or period",
                            l.key
                        ),
                    )
                    .into());
                }
            }
        }
        if self.capacity == 0 {
            return Err(ConfigError::new("capacity", "must be at least 1").into());
        }
        if self.workers == 0 {
            return Err(ConfigError::new("workers", "must be at least 1").into());
        }
        if self.spool_interval.is_some() && self.spool.is_none() {
            return Err(ConfigError::new("spool_interval", "needs a spool file").into());
        }
        if self.spool_interval == Some(Duration::ZERO) {
            return Err(ConfigError::new("spool_interval", "must be above zero").into());
        }
        let settings = Settings {
            capacity: self.capacity,
            workers: self.workers,
            dedup_window: self.dedup_window,
            debounce: self.debounce,
            max_pending: self.max_pending.unwrap_or(self.capacity),
            max_retry_after: self.max_retry_after,
            retry: self
                .retry
                .unwrap_or_else(|| Self::default_retry(self.max_retry_after)),
            sink_backoff: self.sink_backoff.unwrap_or_else(Self::default_sink_backoff),
            spool: self.spool,
            spool_interval: self.spool_interval,
        };
        Notifier::start(settings, self.sinks)
    }
}
