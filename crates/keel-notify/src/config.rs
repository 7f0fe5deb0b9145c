//! [`NotifierBuilder`]: every setting of a notifier, validated at `build`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keel_breaker::{BreakerConfig, BreakerRegistry};
use keel_retry::{Backoff, Jitter, RetryPolicy};

use crate::error::{ConfigError, NotifyError};
use crate::metrics::DropReason;
use crate::notification::Priority;
use crate::notifier::Notifier;
use crate::sink::{DynSink, Sink};
use crate::spool::SpoolSync;

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
/// Each sink's breaker is named this prefix followed by the sink's name.
pub const BREAKER_PREFIX: &str = "notify:";
/// The spool's file name inside the state directory.
pub const SPOOL_FILE: &str = "notify.spool";
/// The environment variable naming the default state directory (systemd
/// sets it from `StateDirectory=`).
pub const STATE_DIRECTORY_ENV: &str = "STATE_DIRECTORY";
/// A retry-after longer than this is treated as this (a day): it only guards
/// against nonsense values.
pub(crate) const MAX_PAUSE: Duration = Duration::from_secs(24 * 60 * 60);

/// The validated settings, shared by the workers.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) capacity: usize,
    pub(crate) workers: usize,
    pub(crate) dedup_window: Duration,
    pub(crate) debounce: [Duration; 3],
    pub(crate) max_pending: usize,
    pub(crate) max_retry_after: Duration,
    pub(crate) retry: RetryPolicy,
    pub(crate) sink_breaker: BreakerConfig,
    pub(crate) breakers: Option<BreakerRegistry>,
    pub(crate) spool: Option<PathBuf>,
    pub(crate) spool_sync: SpoolSync,
    pub(crate) spool_interval: Option<Duration>,
    pub(crate) on_accepted: Option<AcceptedHook>,
    pub(crate) on_dropped: Option<DroppedHook>,
}

/// Checks a sink's name and rate limits.
pub(crate) fn validate_sink(s: &dyn DynSink) -> Result<(), ConfigError> {
    let name = s.name();
    if name.is_empty() {
        return Err(ConfigError::new("sinks", "a sink name is empty"));
    }
    for l in s.rate_limits() {
        if l.max == 0 || l.per.is_zero() {
            return Err(ConfigError::new(
                "sinks",
                format!(
                    "sink `{name}` declares rate limit `{}` with a zero count or period",
                    l.key
                ),
            ));
        }
    }
    Ok(())
}

/// A callback told about every delivery dropped.
pub(crate) type DroppedHook = Arc<dyn Fn(&Dropped<'_>) + Send + Sync>;

/// One delivery (notification × sink) dropped, as told to the
/// [`NotifierBuilder::on_dropped`] callback: what a program with its own
/// durable record of each notification (an outbox) settles it by.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Dropped<'a> {
    /// The sink's name.
    pub sink: &'a str,
    /// The notification's dedup key.
    pub key: &'a str,
    /// Its priority.
    pub priority: Priority,
    /// Why it was dropped.
    pub reason: DropReason,
}

/// A callback told about every event a sink accepted.
pub(crate) type AcceptedHook = Arc<dyn Fn(&Accepted<'_>) + Send + Sync>;

/// One event (one notification × sink) a sink accepted, as told to the
/// [`NotifierBuilder::on_accepted`] callback: a program feeds its own
/// metrics from it instead of wrapping the sink.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Accepted<'a> {
    /// The sink's name.
    pub sink: &'a str,
    /// The notification's dedup key.
    pub key: &'a str,
    /// Its priority.
    pub priority: Priority,
    /// How many notifications the debounce collapsed into it.
    pub count: u32,
    /// Observed (see [`Notification::observed_at`](crate::Notification::observed_at))
    /// → accepted by the sink.
    pub observed_to_accepted: Duration,
    /// Whether it went out inside a digest.
    pub in_digest: bool,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("capacity", &self.capacity)
            .field("workers", &self.workers)
            .field("spool", &self.spool)
            .finish_non_exhaustive()
    }
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
/// | [`sink_breaker`](Self::sink_breaker) | opens after 1 failed round, 1 s open ×2 up to 5 min, 1 probe |
/// | [`breakers`](Self::breakers) | none (each sink's breaker stands alone) |
/// | [`spool`](Self::spool) | `{state_dir}/notify.spool` |
/// | [`spool_sync`](Self::spool_sync) | [`SpoolSync::Full`]: `fsync` each snapshot and its directory |
/// | [`state_dir`](Self::state_dir) | `$STATE_DIRECTORY` (systemd's `StateDirectory=`); unset: no spool, and what is left at shutdown is lost (logged at `error`) |
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
    sink_breaker: Option<BreakerConfig>,
    breakers: Option<BreakerRegistry>,
    spool: Option<PathBuf>,
    spool_sync: SpoolSync,
    state_dir: Option<PathBuf>,
    spool_interval: Option<Duration>,
    on_accepted: Option<AcceptedHook>,
    on_dropped: Option<DroppedHook>,
    no_spool: bool,
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
            .field("spool_sync", &self.spool_sync)
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
            sink_breaker: None,
            breakers: None,
            spool: None,
            spool_sync: SpoolSync::Full,
            state_dir: None,
            on_accepted: None,
            on_dropped: None,
            no_spool: false,
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
    /// queue, and the round counts as one failure for the sink's
    /// [breaker](Self::sink_breaker).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// The configuration of each sink's circuit breaker (a
    /// [`keel_breaker::CircuitBreaker`] named `notify:{sink}`). Each round of
    /// attempts that ends in a retryable failure is one failure; an accepted
    /// send, or a permanent rejection (the sink answered), a success; an
    /// overload or a cancelled send counts for nothing. While the breaker is
    /// open the sink's messages wait in the queue; half-open, its probes go
    /// one at a time (as configured). Default: open after one failed round
    /// for 1 s, doubling on each failed probe up to 5 min, one probe.
    pub fn sink_breaker(mut self, config: BreakerConfig) -> Self {
        self.sink_breaker = Some(config);
        self
    }

    /// Creates the sinks' breakers in this registry (replacing any of the
    /// same name), so an admin route that lists the program's breakers
    /// shows, forces and resets them like every other.
    pub fn breakers(mut self, registry: BreakerRegistry) -> Self {
        self.breakers = Some(registry);
        self
    }

    /// Keeps queued messages across restarts in this file (JSON lines): it
    /// is loaded (then removed) by `build`, and written by
    /// [`Notifier::shutdown`] and [`Notifier::save_spool`]. Default:
    /// `notify.spool` in the [`state_dir`](Self::state_dir).
    pub fn spool(mut self, path: impl Into<PathBuf>) -> Self {
        self.spool = Some(path.into());
        self
    }

    /// When a spool snapshot waits for the disk: [`SpoolSync::Full`] (the
    /// default) `fsync`s it, so a written spool survives an OS crash or
    /// power loss; [`SpoolSync::Normal`] only writes and renames, so it
    /// survives the process being killed. See [`SpoolSync`].
    pub fn spool_sync(mut self, sync: SpoolSync) -> Self {
        self.spool_sync = sync;
        self
    }

    /// Calls `hook` for every event a sink accepts (one per notification
    /// and sink; a digest of twelve calls it twelve times), on the worker
    /// that sent it: keep it fast (count, observe a histogram). For a
    /// program's own metrics, such as a reaction-time histogram under its
    /// historical name.
    pub fn on_accepted(mut self, hook: impl Fn(&Accepted<'_>) + Send + Sync + 'static) -> Self {
        self.on_accepted = Some(Arc::new(hook));
        self
    }

    /// Calls `hook` for every delivery dropped (a permanent rejection by
    /// the sink, a queue overflow, a shutdown without spool, a removed
    /// sink), on the task that dropped it: keep it fast. With
    /// [`on_accepted`](Self::on_accepted), every delivery ends in exactly
    /// one of the two calls unless it is spooled at shutdown.
    pub fn on_dropped(mut self, hook: impl Fn(&Dropped<'_>) + Send + Sync + 'static) -> Self {
        self.on_dropped = Some(Arc::new(hook));
        self
    }

    /// No spool, even with a state directory or `$STATE_DIRECTORY`: for a
    /// program that keeps its own durable record of what is to be sent (an
    /// outbox in its database) and would otherwise send twice what both
    /// kept. What is queued at shutdown is dropped (and told to
    /// [`on_dropped`](Self::on_dropped)).
    pub fn no_spool(mut self) -> Self {
        self.no_spool = true;
        self
    }

    /// The program's state directory: without an explicit
    /// [`spool`](Self::spool), the spool is `{dir}/notify.spool`, so what
    /// the rate limits leave unsent at shutdown survives the restart.
    /// Default: the `STATE_DIRECTORY` environment variable (set by systemd's
    /// `StateDirectory=`); with neither, there is no spool and what is left
    /// at shutdown is lost, logged at `error` with the count.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
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

    fn default_sink_breaker() -> BreakerConfig {
        BreakerConfig::builder()
            .no_failure_rate()
            .consecutive_failures(1)
            .minimum_calls(1)
            .open_duration(Duration::from_secs(1))
            .open_duration_growth(2.0, Duration::from_secs(5 * 60))
            .half_open_max_probes(1)
            .half_open_successes(1)
            .half_open_max_wait(Duration::from_secs(10 * 60))
            .build()
            .expect("the default sink breaker is valid")
    }

    /// The spool path: explicit, else under the state directory (given,
    /// else `$STATE_DIRECTORY`).
    fn spool_path(&self) -> Option<PathBuf> {
        if self.no_spool {
            return None;
        }
        if let Some(p) = &self.spool {
            return Some(p.clone());
        }
        let dir = self.state_dir.clone().or_else(|| {
            std::env::var_os(STATE_DIRECTORY_ENV)
                .filter(|v| !v.is_empty())
                // systemd may list several directories, separated by ':'.
                .and_then(|v| v.to_string_lossy().split(':').next().map(PathBuf::from))
        })?;
        Some(dir.join(SPOOL_FILE))
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
            validate_sink(s.as_ref())?;
            let name = s.name();
            if self.sinks[..i].iter().any(|o| o.name() == name) {
                return Err(
                    ConfigError::new("sinks", format!("two sinks are named `{name}`")).into(),
                );
            }
        }
        if self.capacity == 0 {
            return Err(ConfigError::new("capacity", "must be at least 1").into());
        }
        if self.workers == 0 {
            return Err(ConfigError::new("workers", "must be at least 1").into());
        }
        let spool = self.spool_path();
        if self.spool_interval.is_some() && spool.is_none() {
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
            sink_breaker: self.sink_breaker.unwrap_or_else(Self::default_sink_breaker),
            breakers: self.breakers,
            spool,
            spool_sync: self.spool_sync,
            spool_interval: self.spool_interval,
            on_accepted: self.on_accepted,
            on_dropped: self.on_dropped,
        };
        Notifier::start(settings, self.sinks)
    }
}
