use std::collections::HashMap;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use futures::FutureExt;
use keel_core::Rng;
use parking_lot::{Mutex, RwLock};
use tokio::runtime::Handle;
use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::CheckConfig;
use crate::error::{CheckerShutDown, ConfigError, HealthError, TargetExists, UnknownTarget};
use crate::event::{Callback, CallbackId, ChangeReason, HealthEvent};
#[cfg(feature = "metrics")]
use crate::metrics::HealthMetrics;
use crate::probe::{FailureKind, Probe, ProbeFailure, ProbeResult};
use crate::state::{HealthState, Streaks};
use crate::target::{TargetId, TargetStatus};

/// Checks many targets, each on its own schedule, and reports state changes.
///
/// Each target gets one tokio task that sleeps until its next check, runs
/// its [`Probe`] under the configured timeout, feeds the result to the
/// threshold state machine (see [`HealthState`]) and, when the state
/// changes, sends a [`HealthEvent`] to subscribers and callbacks. The first
/// check of a target is delayed by a random fraction of its interval (from
/// the checker's seedable [`Rng`], on a grid of
/// [`jitter_granularity`](HealthCheckerBuilder::jitter_granularity)) unless
/// [`CheckConfig::jitter_first_check`] is off; after that, checks are due
/// every `interval` after the first (a fixed rate that does not drift with
/// wake-up latency), so targets added together stay spread out. Checks of
/// one target never overlap: a check still running when the next is due
/// delays it, and the next one starts at once when it ends.
///
/// Targets can be added, removed and reconfigured while the checker runs.
/// Removing a target cancels its task at once, even in the middle of a
/// check; [`live_tasks`](Self::live_tasks) counts the tasks still alive.
///
/// Cloning is cheap and shares the checker. Dropping the last clone cancels
/// every task; [`shutdown`](Self::shutdown) also waits for them.
///
/// Cost: one task and one timer entry per target, about 1.5 KB of memory
/// each (10,000 targets: 18.4 MiB peak RSS, against 4.0 MiB for 100); per check,
/// the probe's own work plus a second timer entry for the timeout, one
/// uncontended mutex and, with the `metrics` feature, a few atomic adds.
/// With the default jitter grid, 1,000 no-op checks a second cost about
/// 0.5 % of a core and 1,000 TCP connect checks about 4 %, nearly all of it
/// the kernel's TCP work (see `docs/PERFORMANCE.md`).
#[derive(Clone)]
pub struct HealthChecker {
    inner: Arc<Inner>,
}

struct Inner {
    targets: Mutex<HashMap<TargetId, Entry>>,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    root: CancellationToken,
    runtime: Handle,
    rng: Rng,
    jitter_granularity: Duration,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.root.cancel();
    }
}

/// What every target task needs from the checker (never the checker itself,
/// so tasks do not keep it alive).
struct Shared {
    events: broadcast::Sender<HealthEvent>,
    callbacks: RwLock<Vec<(CallbackId, Callback)>>,
    next_callback: AtomicU64,
    #[cfg(feature = "metrics")]
    metrics: Option<HealthMetrics>,
}

struct Entry {
    cell: Arc<Cell>,
    token: CancellationToken,
}

/// One target's shared state: written by its task, read by snapshots,
/// updated by reconfigure / check_now / remove.
struct Cell {
    id: TargetId,
    probe: Arc<str>,
    wake: Notify,
    state: Mutex<CellState>,
}

struct CellState {
    streaks: Streaks,
    since: Instant,
    since_wall: SystemTime,
    checks: u64,
    failures: u64,
    last_check: Option<Instant>,
    last_check_wall: Option<SystemTime>,
    last_duration: Option<Duration>,
    last_error: Option<ProbeFailure>,
    last_error_wall: Option<SystemTime>,
    config: CheckConfig,
    config_version: u64,
    check_requested: bool,
    removed: bool,
}

/// Builder for [`HealthChecker`].
pub struct HealthCheckerBuilder {
    rng: Option<Rng>,
    jitter_granularity: Duration,
    event_capacity: usize,
    runtime: Option<Handle>,
    #[cfg(feature = "metrics")]
    metrics: Option<HealthMetrics>,
}

impl HealthCheckerBuilder {
    /// The default capacity of the event stream.
    pub const DEFAULT_EVENT_CAPACITY: usize = 1024;
    /// The default grid of first-check jitter.
    pub const DEFAULT_JITTER_GRANULARITY: Duration = Duration::from_millis(50);

    /// Seeds the jitter of first checks, so a test replays the same
    /// schedule. Without a seed (or [`rng`](Self::rng)) the jitter is seeded
    /// from entropy.
    pub fn seed(mut self, seed: u64) -> Self {
        self.rng = Some(Rng::with_seed(seed));
        self
    }

    /// Uses this random source for the jitter of first checks.
    pub fn rng(mut self, rng: Rng) -> Self {
        self.rng = Some(rng);
        self
    }

    /// The grid on which first checks are jittered (default 50 ms).
    ///
    /// A target's first check is delayed by a random whole number of grid
    /// steps below its interval, and later checks keep that phase. Targets
    /// in the same step run in the same runtime wake-up, and that is what
    /// makes many targets cheap: 1,000 targets at 1 s make about 20 wake-ups
    /// a second with 50 ms steps (about 50 checks each), instead of about
    /// 1,000 wake-ups of one check at tokio's 1 ms timer resolution. In
    /// `docs/PERFORMANCE.md` this took 1,000 TCP checks a second from about
    /// 9 % of a core (1 ms) to about 4 % (50 ms). A coarser grid saves
    /// wake-ups but puts more checks in each step (`targets x granularity /
    /// interval` on average); a fleet checked every 30 s has 600 steps per
    /// interval. Intervals shorter than two steps are jittered continuously.
    pub fn jitter_granularity(mut self, granularity: Duration) -> Self {
        self.jitter_granularity = granularity;
        self
    }

    /// How many events the broadcast stream buffers for a slow subscriber
    /// before that subscriber misses the oldest ones (it then gets
    /// `RecvError::Lagged` and should re-read [`HealthChecker::snapshot`]).
    /// Default 1024; must be at least 1.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity;
        self
    }

    /// Spawns target tasks on this runtime. By default the runtime current
    /// at [`build`](Self::build) is used.
    pub fn runtime(mut self, runtime: Handle) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// Records checks, failures by reason, durations and state counts here.
    #[cfg(feature = "metrics")]
    pub fn metrics(mut self, metrics: HealthMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Builds the checker.
    ///
    /// # Errors
    /// [`HealthError::InvalidConfig`] naming `event_capacity` when it is 0 (or
    /// above the broadcast channel's maximum) or `jitter_granularity` when
    /// it is zero; [`HealthError::NoRuntime`] when
    /// called outside a tokio runtime without [`runtime`](Self::runtime).
    pub fn build(self) -> Result<HealthChecker, HealthError> {
        if self.event_capacity == 0 || self.event_capacity > usize::MAX / 2 {
            return Err(
                ConfigError::new("event_capacity", "must be between 1 and usize::MAX / 2").into(),
            );
        }
        if self.jitter_granularity.is_zero() {
            return Err(ConfigError::new("jitter_granularity", "must be above zero").into());
        }
        let runtime = match self.runtime {
            Some(handle) => handle,
            None => Handle::try_current().map_err(|_| HealthError::NoRuntime)?,
        };
        let (events, _) = broadcast::channel(self.event_capacity);
        Ok(HealthChecker {
            inner: Arc::new(Inner {
                targets: Mutex::new(HashMap::new()),
                shared: Arc::new(Shared {
                    events,
                    callbacks: RwLock::new(Vec::new()),
                    next_callback: AtomicU64::new(0),
                    #[cfg(feature = "metrics")]
                    metrics: self.metrics,
                }),
                tracker: TaskTracker::new(),
                root: CancellationToken::new(),
                runtime,
                rng: self.rng.unwrap_or_default(),
                jitter_granularity: self.jitter_granularity,
            }),
        })
    }
}

impl fmt::Debug for HealthCheckerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthCheckerBuilder")
            .field("event_capacity", &self.event_capacity)
            .finish_non_exhaustive()
    }
}

impl HealthChecker {
    /// A builder with the defaults: entropy-seeded jitter, 1024 buffered
    /// events, the current runtime, no metrics.
    pub fn builder() -> HealthCheckerBuilder {
        HealthCheckerBuilder {
            rng: None,
            jitter_granularity: HealthCheckerBuilder::DEFAULT_JITTER_GRANULARITY,
            event_capacity: HealthCheckerBuilder::DEFAULT_EVENT_CAPACITY,
            runtime: None,
            #[cfg(feature = "metrics")]
            metrics: None,
        }
    }

    /// Starts checking a target. It begins [`HealthState::Unknown`]; its
    /// first check runs after the jitter delay (or at once, see
    /// [`CheckConfig::jitter_first_check`]).
    ///
    /// # Errors
    /// [`HealthError::TargetExists`] when the id is taken (use
    /// [`reconfigure`](Self::reconfigure), or [`remove`](Self::remove) then
    /// add to change the probe); [`HealthError::ShutDown`] after
    /// [`shutdown`](Self::shutdown).
    pub fn add<P: Probe>(
        &self,
        id: impl Into<TargetId>,
        probe: P,
        config: CheckConfig,
    ) -> Result<(), HealthError> {
        let id = id.into();
        let inner = &*self.inner;
        let mut targets = inner.targets.lock();
        if inner.root.is_cancelled() {
            return Err(CheckerShutDown.into());
        }
        if targets.contains_key(&id) {
            return Err(TargetExists { target: id }.into());
        }
        let now = Instant::now();
        let cell = Arc::new(Cell {
            id: id.clone(),
            probe: Arc::from(probe.name()),
            wake: Notify::new(),
            state: Mutex::new(CellState {
                streaks: Streaks::new(),
                since: now,
                since_wall: SystemTime::now(),
                checks: 0,
                failures: 0,
                last_check: None,
                last_check_wall: None,
                last_duration: None,
                last_error: None,
                last_error_wall: None,
                config,
                config_version: 0,
                check_requested: false,
                removed: false,
            }),
        });
        let first_delay = if config.jitter_first_check() {
            jitter(&inner.rng, config.interval(), inner.jitter_granularity)
        } else {
            Duration::ZERO
        };
        let token = inner.root.child_token();
        inner.shared.added();
        inner.tracker.spawn_on(
            run_target(
                probe,
                cell.clone(),
                inner.shared.clone(),
                token.clone(),
                now + first_delay,
            ),
            &inner.runtime,
        );
        debug!(target_id = %id, probe = %cell.probe, first_check_in = ?first_delay, "health target added");
        targets.insert(id, Entry { cell, token });
        Ok(())
    }

    /// Stops checking a target and returns its last status. Its task is
    /// cancelled at once (an in-flight check is dropped) and its state
    /// leaves the gauges. No event for it is sent after this returns;
    /// a callback for an event sent just before may still be running.
    ///
    /// # Errors
    /// [`HealthError::UnknownTarget`] when no such target is checked.
    pub fn remove(&self, id: &str) -> Result<TargetStatus, HealthError> {
        let entry = self
            .inner
            .targets
            .lock()
            .remove(id)
            .ok_or_else(|| UnknownTarget { target: id.into() })?;
        let status = self.inner.retire(&entry);
        debug!(target_id = %id, "health target removed");
        Ok(status)
    }

    /// Replaces a target's configuration while it runs.
    ///
    /// A new interval reschedules the next check to `last scheduled check +
    /// new interval` (at once if that is past; before the first check, at
    /// most one new interval from now); new thresholds apply from the
    /// next result on, against the current streak (a streak already past a
    /// lowered threshold changes the state at the next result); a new
    /// timeout applies from the next check. Counters and state are kept.
    ///
    /// # Errors
    /// [`HealthError::UnknownTarget`] when no such target is checked.
    pub fn reconfigure(&self, id: &str, config: CheckConfig) -> Result<(), HealthError> {
        let targets = self.inner.targets.lock();
        let entry = targets
            .get(id)
            .ok_or_else(|| UnknownTarget { target: id.into() })?;
        {
            let mut state = entry.cell.state.lock();
            state.config = config;
            state.config_version += 1;
        }
        entry.cell.wake.notify_one();
        Ok(())
    }

    /// Runs an extra check of the target now (or right after the one in
    /// flight). The regular schedule is not moved: the next scheduled check
    /// still runs when it was due.
    ///
    /// # Errors
    /// [`HealthError::UnknownTarget`] when no such target is checked.
    pub fn check_now(&self, id: &str) -> Result<(), HealthError> {
        let targets = self.inner.targets.lock();
        let entry = targets
            .get(id)
            .ok_or_else(|| UnknownTarget { target: id.into() })?;
        entry.cell.state.lock().check_requested = true;
        entry.cell.wake.notify_one();
        Ok(())
    }

    /// The status of one target, or `None` when it is not checked.
    pub fn status(&self, id: &str) -> Option<TargetStatus> {
        self.inner
            .targets
            .lock()
            .get(id)
            .map(|entry| entry.cell.status())
    }

    /// The status of every target, sorted by id. Synchronous: it copies
    /// each target's state under that target's lock, so it is safe to call
    /// from a status endpoint at any rate (cost: one short lock and one copy
    /// per target).
    pub fn snapshot(&self) -> Vec<TargetStatus> {
        let mut all: Vec<TargetStatus> = self
            .inner
            .targets
            .lock()
            .values()
            .map(|entry| entry.cell.status())
            .collect();
        all.sort_unstable_by(|a, b| a.target.cmp(&b.target));
        all
    }

    /// Whether the target is checked.
    pub fn contains(&self, id: &str) -> bool {
        self.inner.targets.lock().contains_key(id)
    }

    /// How many targets are checked.
    pub fn len(&self) -> usize {
        self.inner.targets.lock().len()
    }

    /// Whether no target is checked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many target tasks are still alive. Right after a
    /// [`remove`](Self::remove) the removed task may still count until it
    /// next runs and sees its cancellation; once the runtime has run it,
    /// this equals [`len`](Self::len).
    pub fn live_tasks(&self) -> usize {
        self.inner.tracker.len()
    }

    /// A stream of every state change from now on. A subscriber that falls
    /// more than the event capacity behind gets `RecvError::Lagged` and
    /// should re-read [`snapshot`](Self::snapshot).
    pub fn subscribe(&self) -> broadcast::Receiver<HealthEvent> {
        self.inner.shared.events.subscribe()
    }

    /// Calls `f` for every state change, on the target's task right after
    /// the change (so keep it short and non-blocking; hand real work to a
    /// channel). A panicking callback is caught and logged; it stays
    /// registered.
    pub fn on_change<F>(&self, f: F) -> CallbackId
    where
        F: Fn(&HealthEvent) + Send + Sync + 'static,
    {
        let shared = &self.inner.shared;
        let id = CallbackId(shared.next_callback.fetch_add(1, Ordering::Relaxed));
        shared.callbacks.write().push((id, Arc::new(f)));
        id
    }

    /// Unregisters a callback; `false` when it was not registered.
    pub fn remove_callback(&self, id: CallbackId) -> bool {
        let mut callbacks = self.inner.shared.callbacks.write();
        let before = callbacks.len();
        callbacks.retain(|(cid, _)| *cid != id);
        callbacks.len() != before
    }

    /// Stops every target and waits until all their tasks have ended.
    /// Afterwards the checker is empty and [`add`](Self::add) fails with
    /// [`HealthError::ShutDown`]. Calling it again returns at once.
    pub async fn shutdown(&self) {
        let inner = &*self.inner;
        let entries: Vec<Entry> = {
            let mut targets = inner.targets.lock();
            inner.root.cancel();
            targets.drain().map(|(_, entry)| entry).collect()
        };
        for entry in &entries {
            inner.retire(entry);
        }
        inner.tracker.close();
        inner.tracker.wait().await;
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_shut_down(&self) -> bool {
        self.inner.root.is_cancelled()
    }
}

impl fmt::Debug for HealthChecker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthChecker")
            .field("targets", &self.len())
            .field("live_tasks", &self.live_tasks())
            .finish_non_exhaustive()
    }
}

impl Inner {
    /// Marks a target removed (so its task records and sends nothing more),
    /// takes it off the gauges and cancels its task.
    fn retire(&self, entry: &Entry) -> TargetStatus {
        let status = {
            let mut state = entry.cell.state.lock();
            state.removed = true;
            self.shared.removed(state.streaks.state);
            entry.cell.status_locked(&state)
        };
        entry.token.cancel();
        status
    }
}

impl Shared {
    #[inline]
    fn added(&self) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.on_added();
        }
    }

    #[inline]
    fn removed(&self, state: HealthState) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.on_removed(state);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = state;
    }

    #[inline]
    fn checked(&self, duration: Duration, failure: Option<FailureKind>) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.on_check(duration, failure);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (duration, failure);
    }

    #[inline]
    fn transitioned(&self, old: HealthState, new: HealthState) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.on_transition(old, new);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (old, new);
    }
}

impl Cell {
    fn status(&self) -> TargetStatus {
        self.status_locked(&self.state.lock())
    }

    fn status_locked(&self, s: &CellState) -> TargetStatus {
        TargetStatus {
            target: self.id.clone(),
            probe: self.probe.clone(),
            state: s.streaks.state,
            since: s.since,
            since_wall: s.since_wall,
            consecutive_successes: s.streaks.successes,
            consecutive_failures: s.streaks.failures,
            checks: s.checks,
            failures: s.failures,
            last_check: s.last_check,
            last_check_wall: s.last_check_wall,
            last_duration: s.last_duration,
            last_error: s.last_error.clone(),
            last_error_wall: s.last_error_wall,
            config: s.config,
        }
    }
}

/// A random first-check delay in `[0, interval)`, on a grid of
/// `granularity` (when the interval holds at least two grid steps).
fn jitter(rng: &Rng, interval: Duration, granularity: Duration) -> Duration {
    let slots = interval.as_nanos() / granularity.as_nanos().max(1);
    if slots >= 2 {
        let slot = rng.u64_between(0, u64::try_from(slots - 1).unwrap_or(u64::MAX));
        granularity.saturating_mul(u32::try_from(slot).unwrap_or(u32::MAX))
    } else {
        rng.duration_between(
            Duration::ZERO,
            interval.saturating_sub(Duration::from_nanos(1)),
        )
    }
}

/// The life of one target: wait for the next check (or a wake-up), check,
/// record, repeat until cancelled.
async fn run_target<P: Probe>(
    probe: P,
    cell: Arc<Cell>,
    shared: Arc<Shared>,
    token: CancellationToken,
    first_check: Instant,
) {
    let (mut config, mut version) = {
        let s = cell.state.lock();
        (s.config, s.config_version)
    };
    // `due` is when the next scheduled check is due. Scheduled checks run
    // at `first_check + k * interval`: computed from the schedule, not from
    // when a check actually started, so targets sharing a grid slot stay
    // together instead of drifting apart by their wake-up latencies.
    let mut due = first_check;
    let mut checked = false;
    loop {
        let scheduled = tokio::select! {
            biased;
            () = token.cancelled() => return,
            () = cell.wake.notified() => {
                let mut s = cell.state.lock();
                if s.config_version != version {
                    version = s.config_version;
                    let old_interval = config.interval();
                    config = s.config;
                    if config.interval() != old_interval {
                        let now = Instant::now();
                        due = if checked {
                            // `due - old_interval` was the last scheduled
                            // check; if the new due time is past, check now.
                            due.checked_sub(old_interval)
                                .map_or(now, |last| last + config.interval())
                                .max(now)
                        } else {
                            // Not checked yet: never wait longer than one
                            // new interval.
                            due.min(now + config.interval())
                        };
                    }
                }
                if !std::mem::take(&mut s.check_requested) {
                    continue;
                }
                false
            }
            () = tokio::time::sleep_until(due) => true,
        };
        let started = Instant::now();
        let started_wall = SystemTime::now();
        let result = tokio::select! {
            biased;
            () = token.cancelled() => return,
            result = run_probe(&probe, config.timeout()) => result,
        };
        let elapsed = started.elapsed();
        if !record(&cell, &shared, result, started, started_wall, elapsed) {
            return;
        }
        if scheduled {
            checked = true;
            // If the runtime fell behind (or the check ran to a timeout as
            // long as the interval), check at once rather than skip.
            due = (due + config.interval()).max(Instant::now());
        }
    }
}

async fn run_probe<P: Probe>(probe: &P, timeout: Duration) -> ProbeResult {
    match tokio::time::timeout(timeout, AssertUnwindSafe(probe.check()).catch_unwind()).await {
        Ok(Ok(result)) => result,
        Ok(Err(panic)) => Err(ProbeFailure::new(
            FailureKind::Panic,
            format!("probe panicked: {}", panic_message(&*panic)),
        )),
        Err(_) => Err(ProbeFailure::new(
            FailureKind::Timeout,
            format!("no answer within {timeout:?}"),
        )),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "non-string panic payload"
    }
}

/// Applies one result. Returns `false` when the target was removed (the
/// task must end).
fn record(
    cell: &Cell,
    shared: &Shared,
    result: ProbeResult,
    started: Instant,
    started_wall: SystemTime,
    elapsed: Duration,
) -> bool {
    let event = {
        let mut s = cell.state.lock();
        if s.removed {
            return false;
        }
        s.checks += 1;
        s.last_check = Some(started);
        s.last_check_wall = Some(started_wall);
        s.last_duration = Some(elapsed);
        let (failure_threshold, recovery_threshold) =
            (s.config.failure_threshold(), s.config.recovery_threshold());
        let changed = s
            .streaks
            .record(result.is_ok(), failure_threshold, recovery_threshold);
        let failure = match result {
            Ok(()) => {
                shared.checked(elapsed, None);
                None
            }
            Err(failure) => {
                shared.checked(elapsed, Some(failure.kind()));
                debug!(
                    target_id = %cell.id,
                    reason = failure.kind().as_str(),
                    error = %failure,
                    consecutive_failures = s.streaks.failures,
                    "health check failed"
                );
                s.failures += 1;
                s.last_error_wall = Some(started_wall);
                s.last_error = Some(failure.clone());
                Some(failure)
            }
        };
        changed.map(|old| {
            let new = s.streaks.state;
            let reason = match (old, failure) {
                (_, Some(failure)) => ChangeReason::Failed {
                    consecutive_failures: s.streaks.failures,
                    failure,
                },
                (HealthState::Unknown, None) => ChangeReason::FirstSuccess,
                (_, None) => ChangeReason::Recovered {
                    consecutive_successes: s.streaks.successes,
                },
            };
            let event = HealthEvent {
                target: cell.id.clone(),
                old,
                new,
                reason,
                at: started,
                at_wall: started_wall,
                old_since: s.since,
            };
            s.since = started;
            s.since_wall = started_wall;
            shared.transitioned(old, new);
            // Sent under the lock so that `remove` (which takes it) is
            // ordered against it: nothing is sent for a removed target.
            let _ = shared.events.send(event.clone());
            event
        })
    };
    if let Some(event) = event {
        announce(shared, &event);
    }
    true
}

fn announce(shared: &Shared, event: &HealthEvent) {
    match event.new {
        HealthState::Unhealthy => warn!(
            target_id = %event.target,
            old = event.old.as_str(),
            reason = %event.reason,
            "health target unhealthy"
        ),
        _ => info!(
            target_id = %event.target,
            old = event.old.as_str(),
            new = event.new.as_str(),
            reason = %event.reason,
            "health target state changed"
        ),
    }
    let callbacks: Vec<Callback> = shared
        .callbacks
        .read()
        .iter()
        .map(|(_, cb)| cb.clone())
        .collect();
    for callback in callbacks {
        if std::panic::catch_unwind(AssertUnwindSafe(|| callback(event))).is_err() {
            warn!(target_id = %event.target, "health event callback panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::{prop_assert, prop_assert_eq, proptest};

    proptest! {
        #[test]
        fn jitter_stays_below_the_interval_on_the_grid(
            seed: u64,
            interval_ms in 1u64..100_000,
            grid_ms in 1u64..1_000,
        ) {
            let rng = Rng::with_seed(seed);
            let interval = Duration::from_millis(interval_ms);
            let grid = Duration::from_millis(grid_ms);
            for _ in 0..20 {
                let d = jitter(&rng, interval, grid);
                prop_assert!(d < interval);
                if interval_ms / grid_ms >= 2 {
                    prop_assert_eq!(d.as_nanos() % grid.as_nanos(), 0);
                }
            }
        }
    }

    #[test]
    fn jitter_covers_every_grid_step() {
        let rng = Rng::with_seed(1);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2_000 {
            seen.insert(jitter(
                &rng,
                Duration::from_secs(1),
                Duration::from_millis(50),
            ));
        }
        assert_eq!(seen.len(), 20);
        assert!(seen.contains(&Duration::ZERO));
        assert!(seen.contains(&Duration::from_millis(950)));
    }
}
