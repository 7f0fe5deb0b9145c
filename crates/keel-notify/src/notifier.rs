//! [`Notifier`]: the queue, its workers, shutdown and the spool.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use keel_breaker::{CircuitBreaker, OwnedPermit, State as BreakerState};
use keel_core::{ErrorOutcome, Outcome};
use keel_retry::RetryError;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::admission::{Admission, Decision};
use crate::config::{Accepted, Dropped, MAX_PAUSE, NotifierBuilder, Settings};
use crate::digest::{self, Digest};
use crate::error::{ConfigError, NotifyError, QueueClosed, SinkError, UnknownSink};
use crate::metrics::{Counters, DropReason, Metrics, Stats};
use crate::notification::{Message, Notification, Priority};
use crate::queue::{Delivery, Pushed, Queue};
use crate::rate::RateLimits;
use crate::sink::{BoxFuture, DynSink, PaceSource, Pacer, Sink};
use crate::spool::{Spool, SpoolRecord};

/// What [`Notifier::notify`] did with a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Admitted {
    /// Queued for its sinks.
    Queued,
    /// The first of its key at a debounced priority: held until `until`,
    /// then queued carrying the count of the repeats that arrived meanwhile.
    Held {
        /// When it will be queued.
        until: Instant,
    },
    /// Collapsed into the held notification with the same key, which now
    /// stands for `count` notifications and carries this one's content.
    Debounced {
        /// Notifications collapsed so far, this one included.
        count: u32,
    },
    /// Suppressed: a notification with the same key was queued within the
    /// dedup window.
    Deduplicated,
    /// The queue was full of messages that outrank this one, so it was
    /// dropped (counted in `dropped{reason="overflow"}` and logged).
    Dropped,
}

/// What [`Notifier::shutdown`] achieved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Deliveries sent during the shutdown.
    pub sent: u64,
    /// Deliveries (and held notifications) written to the spool.
    pub spooled: usize,
    /// Deliveries lost: no spool configured, or the spool write failed
    /// (each counted in `dropped{reason="shutdown"}` and logged).
    pub dropped: usize,
    /// Whether the timeout cut the flush short (in-flight sends were
    /// cancelled and their messages spooled).
    pub timed_out: bool,
}

/// A bounded, prioritised alert queue with sender workers.
///
/// `notify` is synchronous and never blocks on a sink: it applies the dedup
/// window and the debounce, then queues one delivery per sink. Workers (3 by
/// default) take deliveries critical first, respect each sink's rate limits
/// and pauses, retry quick failures through `keel-retry`, put the message
/// back in the queue when a sink stays down (pausing that sink with backoff,
/// probing it with one message at a time), requeue instead of sleeping when
/// a sink asks for a retry-after above the cap, and drop only on overflow or
/// a permanent rejection, always counting and logging it.
///
/// Cloning is cheap (two `Arc`s); every clone feeds the same queue. When the
/// last clone is dropped without [`shutdown`](Self::shutdown), the workers
/// stop and what is still queued is lost (logged and counted as
/// `abandoned`).
///
/// Cost: `notify` takes one short lock and clones the notification once per
/// extra sink; each delivery costs one more clone (kept for the spool while
/// in flight).
#[derive(Clone)]
pub struct Notifier {
    shared: Arc<Shared>,
    _guard: Arc<DropGuard>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("sinks", &self.sink_names())
            .field("stats", &self.stats())
            .finish()
    }
}

struct SinkEntry {
    sink: Arc<dyn DynSink>,
    name: String,
    /// Removed at run time: takes no new notifications; its index is never
    /// reused.
    removed: std::sync::atomic::AtomicBool,
    limits: Vec<usize>,
    /// The sink's health: a failed round of attempts is a failure, an
    /// accepted (or permanently rejected) send a success.
    breaker: CircuitBreaker,
    /// Whether the sink combines waiting messages ([`DynSink::supports_digest`]).
    digests: bool,
}

/// How often workers look again at a sink whose breaker was forced open (an
/// admin may reset it at any time).
const FORCED_OPEN_POLL: Duration = Duration::from_secs(1);
/// The most deliveries one digest send considers at once.
const MAX_DIGEST_CANDIDATES: usize = 1_000;

#[derive(Debug, Default)]
struct SinkState {
    /// No send to this sink before this instant (a retry-after it asked
    /// for).
    paused_until: Option<Instant>,
    /// Sends in flight to this sink.
    in_flight: usize,
}

/// What one send carries.
enum Payload {
    /// One message (possibly several deliveries of one subject, merged).
    Single(Message),
    /// Several messages as one.
    Digest(Digest),
}

/// One send to one sink: the deliveries it settles, what it sends, and the
/// breaker permit it runs under.
struct Outgoing {
    sink: usize,
    deliveries: Vec<Delivery>,
    permit: OwnedPermit,
}

struct State {
    queue: Queue,
    admission: Admission,
    rate: RateLimits,
    health: Vec<SinkState>,
    in_flight: HashMap<u64, Delivery>,
    /// (sink, subject) of the deliveries in flight to sinks that do not
    /// digest: a later state of a subject waits until the earlier one was
    /// answered (a resolve never overtakes its trigger).
    subjects_in_flight: HashMap<(usize, String), usize>,
    next_id: u64,
    closed: bool,
}

struct Shared {
    settings: Settings,
    /// Every sink ever added, by index (removed ones stay, marked). Replaced
    /// whole (copy on write) under the state lock, so a worker holding the
    /// state lock sees one consistent list.
    sinks: parking_lot::RwLock<Arc<Vec<Arc<SinkEntry>>>>,
    state: Mutex<State>,
    /// Wakes idle workers: something was queued, requeued or closed.
    wake: Notify,
    /// Wakes `flush`: a delivery finished one way or another.
    idle: Notify,
    /// Cancelled when shutdown starts: background tasks stop.
    closing: CancellationToken,
    /// Cancelled when the shutdown timeout passes or the last handle is
    /// dropped: in-flight sends are abandoned (and requeued).
    abort: CancellationToken,
    counters: Counters,
    metrics: Metrics,
    tasks: tokio::sync::Mutex<Option<JoinSet<()>>>,
    /// The spool file, when there is one.
    spool: Option<Spool>,
}

struct DropGuard {
    shared: Arc<Shared>,
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        let shared = &self.shared;
        let lost: Vec<Delivery> = {
            let mut st = shared.state.lock();
            st.closed = true;
            let mut lost = st.queue.drain();
            lost.extend(st.in_flight.drain().map(|(_, d)| d));
            lost
        };
        shared.abort.cancel();
        shared.closing.cancel();
        if !lost.is_empty() {
            warn!(
                lost = lost.len(),
                "notifier dropped without shutdown; queued messages are lost"
            );
            for d in &lost {
                shared.count_drop(d, DropReason::Abandoned);
            }
        }
    }
}

/// The pace of one sink's extra requests: its rate limits and pauses.
struct SinkPace<'a> {
    shared: &'a Shared,
    sink: usize,
}

impl PaceSource for SinkPace<'_> {
    fn next_request(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.shared.acquire(self.sink))
    }
}

enum Step {
    Deliver(Outgoing),
    Wait(Option<Instant>),
    Exit,
}

impl Notifier {
    /// A builder with the defaults (see [`NotifierBuilder`]).
    pub fn builder() -> NotifierBuilder {
        NotifierBuilder::new()
    }

    pub(crate) fn start(
        settings: Settings,
        sinks: Vec<Arc<dyn DynSink>>,
    ) -> Result<Notifier, NotifyError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| NotifyError::NoRuntime)?;
        let mut rate = RateLimits::default();
        let sinks: Vec<Arc<SinkEntry>> = sinks
            .into_iter()
            .map(|sink| Arc::new(SinkEntry::new(sink, &settings, &mut rate)))
            .collect();
        let state = State {
            queue: Queue::new(settings.capacity, sinks.len()),
            admission: Admission::new(
                settings.dedup_window,
                settings.debounce,
                settings.max_pending,
            ),
            rate,
            health: sinks.iter().map(|_| SinkState::default()).collect(),
            in_flight: HashMap::new(),
            subjects_in_flight: HashMap::new(),
            next_id: 0,
            closed: false,
        };
        let settings_spool = settings.spool.clone();
        let settings_sync = settings.spool_sync;
        let shared = Arc::new(Shared {
            settings,
            sinks: parking_lot::RwLock::new(Arc::new(sinks)),
            state: Mutex::new(state),
            wake: Notify::new(),
            idle: Notify::new(),
            closing: CancellationToken::new(),
            abort: CancellationToken::new(),
            counters: Counters::default(),
            metrics: Metrics::default(),
            tasks: tokio::sync::Mutex::new(None),
            spool: settings_spool.map(|path| Spool::new(path, settings_sync)),
        });
        if let Some(spool) = &shared.spool {
            shared.load_spool(spool)?;
        }
        let mut set = JoinSet::new();
        for _ in 0..shared.settings.workers {
            set.spawn_on(worker(shared.clone()), &handle);
        }
        if let Some(interval) = shared.settings.spool_interval {
            set.spawn_on(spool_loop(shared.clone(), interval), &handle);
        }
        *shared
            .tasks
            .try_lock()
            .expect("nobody else holds the new notifier") = Some(set);
        Ok(Notifier {
            _guard: Arc::new(DropGuard {
                shared: shared.clone(),
            }),
            shared,
        })
    }

    /// Admits one notification: suppressed by the dedup window, collapsed
    /// or held by the debounce, or queued for its sinks (see [`Admitted`]).
    /// Never waits for a sink.
    ///
    /// # Errors
    /// [`NotifyError::Closed`] once [`shutdown`](Self::shutdown) has begun;
    /// [`NotifyError::UnknownSink`] when the notification names a sink this
    /// notifier does not have.
    pub fn notify(&self, mut notification: Notification) -> Result<Admitted, NotifyError> {
        let shared = &self.shared;
        let targets = shared.targets(&notification)?;
        let priority = notification.priority();
        let now = Instant::now();
        notification.set_observed_if_unset(now);
        let admitted = {
            let mut st = shared.state.lock();
            if st.closed {
                return Err(QueueClosed.into());
            }
            let admitted = match st.admission.admit(notification, now) {
                Decision::Deduplicated => {
                    Counters::add(&shared.counters.deduplicated);
                    for &i in &targets {
                        shared.metrics.deduplicated(&shared.sink(i).name, priority);
                    }
                    Admitted::Deduplicated
                }
                Decision::Merged { count } => {
                    Counters::add(&shared.counters.debounced);
                    for &i in &targets {
                        shared.metrics.debounced(&shared.sink(i).name, priority);
                    }
                    Admitted::Debounced { count }
                }
                Decision::Held { until } => Admitted::Held { until },
                Decision::Release(n) => {
                    if shared.release(&mut st, n, 1, now) > 0 {
                        Admitted::Queued
                    } else {
                        Admitted::Dropped
                    }
                }
            };
            shared.update_gauges(&st);
            admitted
        };
        if !matches!(
            admitted,
            Admitted::Deduplicated | Admitted::Debounced { .. }
        ) {
            // One new delivery (or one earlier deadline) needs one worker;
            // waking them all costs a lock round per idle worker.
            shared.wake.notify_one();
        }
        Ok(admitted)
    }

    /// Drops the notification held in its debounce under `key`, if any,
    /// because what it reported is already over (a warning whose cause
    /// ended within the debounce need not reach anyone). Returns whether
    /// one was held; `false` means it was never admitted, or already went
    /// to the queue (then the caller sends its resolution instead).
    pub fn withdraw(&self, key: &str) -> bool {
        let shared = &self.shared;
        let mut st = shared.state.lock();
        let withdrawn = st.admission.withdraw(key);
        if withdrawn {
            shared.update_gauges(&st);
        }
        withdrawn
    }

    /// Cancels the notification `key` wherever it waits (held in its
    /// debounce, or queued for any sink) because it must not go out any
    /// more (an acknowledged alert); one already being sent is not
    /// stopped. Each queued delivery removed is dropped as
    /// [`DropReason::Cancelled`] (counted, and told to
    /// [`on_dropped`](crate::NotifierBuilder::on_dropped)). Returns how many
    /// deliveries were removed (a held notification counts one).
    pub fn cancel(&self, key: &str) -> usize {
        let shared = &self.shared;
        let (held, removed) = {
            let mut st = shared.state.lock();
            let held = st.admission.withdraw(key);
            let removed = st.queue.remove_key(key);
            shared.update_gauges(&st);
            (held, removed)
        };
        for d in &removed {
            shared.count_drop(d, DropReason::Cancelled);
        }
        usize::from(held) + removed.len()
    }

    /// Counters since the notifier was built, and the current depth.
    pub fn stats(&self) -> Stats {
        let mut stats = self.shared.counters.snapshot();
        let st = self.shared.state.lock();
        stats.depth = st.queue.len();
        stats.held = st.admission.pending_len();
        stats.in_flight = st.in_flight.len();
        stats
    }

    /// The names of the sinks (not removed), in the order they were added.
    pub fn sink_names(&self) -> Vec<String> {
        self.shared
            .sinks()
            .iter()
            .filter(|s| !s.is_removed())
            .map(|s| s.name.clone())
            .collect()
    }

    /// Adds a sink while running (a target discovered at run time): it
    /// takes notifications from now on; its rate limits join the ones it
    /// shares with other sinks; its breaker is created (in the registry, if
    /// one was given).
    ///
    /// # Errors
    /// [`NotifyError::Config`] when a sink of that name exists or its name
    /// or rate limits are invalid; [`NotifyError::Closed`] after shutdown.
    pub fn add_sink<S: Sink>(&self, sink: S) -> Result<(), NotifyError> {
        let sink: Arc<dyn DynSink> = Arc::new(sink);
        crate::config::validate_sink(sink.as_ref())?;
        let shared = &self.shared;
        let mut st = shared.state.lock();
        if st.closed {
            return Err(QueueClosed.into());
        }
        let current = shared.sinks();
        if current
            .iter()
            .any(|s| !s.is_removed() && s.name == sink.name())
        {
            return Err(ConfigError::new(
                "sinks",
                format!("two sinks are named `{}`", sink.name()),
            )
            .into());
        }
        let entry = Arc::new(SinkEntry::new(sink, &shared.settings, &mut st.rate));
        info!(sink = %entry.name, "sink added");
        st.queue.add_sink();
        st.health.push(SinkState::default());
        let mut next: Vec<Arc<SinkEntry>> = current.as_ref().clone();
        next.push(entry);
        *shared.sinks.write() = Arc::new(next);
        Ok(())
    }

    /// Removes the sink named `name` while running: it takes no new
    /// notifications, and what was queued for it is dropped (counted as
    /// `dropped{reason="removed"}` and logged); a send in flight finishes.
    /// Returns how many queued deliveries were dropped.
    ///
    /// # Errors
    /// [`UnknownSink`] when no sink has that name.
    pub fn remove_sink(&self, name: &str) -> Result<usize, UnknownSink> {
        let shared = &self.shared;
        let dropped = {
            let mut st = shared.state.lock();
            let sinks = shared.sinks();
            let Some(i) = sinks.iter().position(|s| !s.is_removed() && s.name == name) else {
                return Err(UnknownSink {
                    name: name.to_owned(),
                });
            };
            sinks[i].removed.store(true, Ordering::Release);
            let dropped = st.queue.take_for_any(i);
            shared.update_gauges(&st);
            dropped
        };
        for d in &dropped {
            shared.count_drop(d, DropReason::Removed);
        }
        if !dropped.is_empty() {
            warn!(
                sink = %name,
                dropped = dropped.len(),
                "sink removed with messages queued for it; they are dropped"
            );
        } else {
            info!(sink = %name, "sink removed");
        }
        shared.idle.notify_waiters();
        Ok(dropped.len())
    }

    /// Each sink's circuit breaker (named `notify:{sink}`), in the order
    /// the sinks were added: read its state and statistics, or force it
    /// open, disable or reset it from an admin route. The handles share
    /// state with the notifier's; the same breakers are in the
    /// [`BreakerRegistry`](keel_breaker::BreakerRegistry) given to
    /// [`NotifierBuilder::breakers`], if any.
    pub fn breakers(&self) -> Vec<CircuitBreaker> {
        self.shared
            .sinks()
            .iter()
            .filter(|s| !s.is_removed())
            .map(|s| s.breaker.clone())
            .collect()
    }

    /// The circuit breaker of the sink named `sink`.
    pub fn breaker(&self, sink: &str) -> Option<CircuitBreaker> {
        self.shared
            .sinks()
            .iter()
            .find(|s| !s.is_removed() && s.name == sink)
            .map(|s| s.breaker.clone())
    }

    /// Registers the notifier's metrics (see [`crate::metrics`]) in
    /// `registry`, unprefixed: give a sub-registry with your prefix.
    #[cfg(feature = "metrics")]
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.shared.metrics.register(registry);
    }

    /// Releases every held notification now and waits until nothing is
    /// queued or in flight, or until `timeout`. Returns whether everything
    /// went out. Keeps accepting notifications meanwhile; a sink that stays
    /// down keeps its messages queued, so this returns `false` then.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let shared = &self.shared;
        {
            let mut st = shared.state.lock();
            let now = Instant::now();
            for (n, count) in st.admission.release_all() {
                shared.release(&mut st, n, count, now);
            }
            shared.update_gauges(&st);
        }
        shared.wake.notify_waiters();
        loop {
            let idle = shared.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            {
                let st = shared.state.lock();
                if st.queue.is_empty() && st.in_flight.is_empty() && st.admission.pending_len() == 0
                {
                    return true;
                }
            }
            tokio::select! {
                () = &mut idle => {}
                () = tokio::time::sleep_until(deadline) => return false,
            }
        }
    }

    /// Writes what is queued, in flight and held to the spool now
    /// (atomically), and returns how many records it wrote.
    ///
    /// # Errors
    /// [`NotifyError::Config`] when no spool is configured;
    /// [`NotifyError::Spool`] when the write fails (the previous spool is
    /// left intact).
    pub async fn save_spool(&self) -> Result<usize, NotifyError> {
        if self.shared.spool.is_none() {
            return Err(ConfigError::new("spool", "no spool file is configured").into());
        }
        self.shared.save_spool().await
    }

    /// Stops taking notifications, releases the held ones, and lets the
    /// workers send what they can until the queue is empty or `timeout`
    /// passes; then cancels the sends still in flight, and writes what is
    /// left to the spool (or, without a spool, drops it with a warning and
    /// counts it). Later calls return at once with an empty report.
    pub async fn shutdown(&self, timeout: Duration) -> ShutdownReport {
        let shared = &self.shared;
        let deadline = Instant::now() + timeout;
        let mut tasks = shared.tasks.lock().await;
        let Some(mut set) = tasks.take() else {
            return ShutdownReport::default();
        };
        let sent_before = shared.counters.snapshot().sent;
        {
            let mut st = shared.state.lock();
            st.closed = true;
            let now = Instant::now();
            for (n, count) in st.admission.release_all() {
                shared.release(&mut st, n, count, now);
            }
            shared.update_gauges(&st);
            info!(
                queued = st.queue.len(),
                in_flight = st.in_flight.len(),
                timeout_ms = timeout.as_millis() as u64,
                "notifier shutting down"
            );
        }
        shared.closing.cancel();
        shared.wake.notify_waiters();
        let drained =
            tokio::time::timeout_at(deadline, async { while set.join_next().await.is_some() {} })
                .await;
        let timed_out = drained.is_err();
        if timed_out {
            shared.abort.cancel();
            while set.join_next().await.is_some() {}
        }
        let mut report = ShutdownReport {
            sent: shared.counters.snapshot().sent - sent_before,
            timed_out,
            ..ShutdownReport::default()
        };
        let (remaining, generation) = {
            let mut st = shared.state.lock();
            let mut rest: Vec<Delivery> = st.in_flight.drain().map(|(_, d)| d).collect();
            rest.extend(st.queue.drain());
            rest.sort_by_key(|d| (d.priority().lane(), d.seq()));
            shared.update_gauges(&st);
            let generation = shared.spool.as_ref().map(Spool::next_generation);
            (rest, generation)
        };
        match (&shared.spool, generation) {
            (Some(spool), Some(generation)) => {
                let now = Instant::now();
                let records: Vec<SpoolRecord> =
                    remaining.iter().map(|d| shared.record(d, now)).collect();
                match spool.write(records, generation).await {
                    Ok(n) => report.spooled = n,
                    Err(e) => {
                        error!(
                            error = %e,
                            lost = remaining.len(),
                            "could not write the spool; queued messages are lost"
                        );
                        for d in &remaining {
                            shared.count_drop(d, DropReason::Shutdown);
                        }
                        report.dropped = remaining.len();
                    }
                }
            }
            _ => {
                if !remaining.is_empty() {
                    error!(
                        lost = remaining.len(),
                        "notifier shut down with messages queued and no spool (set a spool or a state directory); they are lost"
                    );
                }
                for d in &remaining {
                    shared.count_drop(d, DropReason::Shutdown);
                }
                report.dropped = remaining.len();
            }
        }
        shared.idle.notify_waiters();
        info!(
            sent = report.sent,
            spooled = report.spooled,
            dropped = report.dropped,
            timed_out = report.timed_out,
            "notifier shut down"
        );
        report
    }
}

impl SinkEntry {
    fn new(sink: Arc<dyn DynSink>, settings: &Settings, rate: &mut RateLimits) -> Self {
        let digests = sink.supports_digest();
        let limits = sink
            .rate_limits()
            .iter()
            .map(|l| rate.register(l, digests))
            .collect();
        let name = sink.name().to_owned();
        let breaker_name = format!("{}{name}", crate::config::BREAKER_PREFIX);
        let breaker = match &settings.breakers {
            Some(registry) => registry.configure(breaker_name, settings.sink_breaker.clone()),
            None => CircuitBreaker::new(breaker_name, settings.sink_breaker.clone()),
        };
        SinkEntry {
            name,
            removed: std::sync::atomic::AtomicBool::new(false),
            digests,
            sink,
            limits,
            breaker,
        }
    }

    fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }
}

impl Shared {
    /// The current list of sinks (cheap: one reference count).
    fn sinks(&self) -> Arc<Vec<Arc<SinkEntry>>> {
        self.sinks.read().clone()
    }

    /// Sink `i` (indices are never reused).
    fn sink(&self, i: usize) -> Arc<SinkEntry> {
        self.sinks.read()[i].clone()
    }

    fn sink_count(&self) -> usize {
        self.sinks.read().len()
    }

    /// The sink indices a notification goes to.
    fn targets(&self, n: &Notification) -> Result<Vec<usize>, UnknownSink> {
        let sinks = self.sinks();
        if n.sinks().is_empty() {
            return Ok((0..sinks.len())
                .filter(|&i| !sinks[i].is_removed())
                .collect());
        }
        let mut out = Vec::with_capacity(n.sinks().len());
        for name in n.sinks() {
            let i = sinks
                .iter()
                .position(|s| !s.is_removed() && &s.name == name)
                .ok_or_else(|| UnknownSink { name: name.clone() })?;
            if !out.contains(&i) {
                out.push(i);
            }
        }
        Ok(out)
    }

    /// Queues `n` (collapsed from `count` notifications) for each of its
    /// sinks; starts its dedup window. Returns how many deliveries stayed
    /// queued.
    fn release(&self, st: &mut State, n: Notification, count: u32, now: Instant) -> usize {
        st.admission.released(&n, now);
        let targets = match self.targets(&n) {
            Ok(t) => t,
            Err(e) => {
                // Only reachable for spooled notifications whose sink is gone.
                error!(key = n.key(), error = %e, "notification dropped");
                Counters::add(&self.counters.dropped);
                self.metrics
                    .dropped(&e.name, n.priority(), DropReason::UnknownSink);
                return 0;
            }
        };
        let mut queued = 0;
        let last = targets.len().saturating_sub(1);
        let mut n = Some(n);
        for (i, &sink) in targets.iter().enumerate() {
            let notification = if i == last {
                n.take().expect("moved only at the last target")
            } else {
                n.clone().expect("present until the last target")
            };
            let id = st.next_id;
            st.next_id += 1;
            let d = Delivery {
                sink,
                message: Message {
                    id,
                    notification,
                    count,
                },
                queued_at: now,
                attempts: 0,
                solo: false,
            };
            Counters::add(&self.counters.queued);
            self.metrics.queued(&self.sink(sink).name, d.priority());
            if self.push(st, d) {
                queued += 1;
            }
        }
        queued
    }

    /// Pushes onto the queue, accounting for an overflow. Returns whether
    /// `d` itself stayed queued.
    fn push(&self, st: &mut State, d: Delivery) -> bool {
        match st.queue.push(d) {
            Pushed::Queued => true,
            Pushed::Evicted(victim) => {
                self.overflowed(&victim);
                true
            }
            Pushed::Rejected(d) => {
                self.overflowed(&d);
                false
            }
        }
    }

    fn overflowed(&self, d: &Delivery) {
        warn!(
            sink = %self.sink(d.sink).name,
            priority = %d.priority(),
            key = d.message.key(),
            capacity = self.settings.capacity,
            "notification queue full; dropped the oldest lowest-priority message"
        );
        self.count_drop(d, DropReason::Overflow);
    }

    fn count_drop(&self, d: &Delivery, reason: DropReason) {
        Counters::add(&self.counters.dropped);
        let sink = self.sink(d.sink);
        self.metrics.dropped(&sink.name, d.priority(), reason);
        if let Some(hook) = &self.settings.on_dropped {
            hook(&Dropped {
                sink: &sink.name,
                key: d.message.key(),
                priority: d.priority(),
                reason,
            });
        }
    }

    fn update_gauges(&self, st: &State) {
        self.metrics.gauges(
            Priority::ALL.map(|p| st.queue.len_of(p)),
            st.admission.pending_len(),
        );
    }

    /// When sink `i` may next be sent to as far as its rate limits and
    /// retry-after pause go.
    fn ready_at(&self, st: &State, i: usize, now: Instant) -> Instant {
        self.ready_at_parts(&st.health, &st.rate, i, now)
    }

    fn ready_at_parts(
        &self,
        health: &[SinkState],
        rate: &RateLimits,
        i: usize,
        now: Instant,
    ) -> Instant {
        let paused = health[i].paused_until.unwrap_or(now).max(now);
        rate.ready_at(&self.sink(i).limits, now).max(paused)
    }

    /// Whether sink `i` may take a send now apart from its rate limits:
    /// `Ok` when its breaker admits a call and (for a digesting sink) no
    /// send is in flight; otherwise when to look again (`None`: a send's
    /// completion will wake the workers).
    fn admits(&self, health: &[SinkState], i: usize, now: Instant) -> Result<(), Option<Instant>> {
        let entry = &self.sink(i);
        if entry.digests && health[i].in_flight > 0 {
            return Err(None);
        }
        match entry.breaker.state() {
            BreakerState::Closed | BreakerState::Disabled => Ok(()),
            BreakerState::HalfOpen => {
                let stats = entry.breaker.stats();
                if stats.half_open_probes_in_flight < entry.breaker.config().half_open_max_probes()
                {
                    Ok(())
                } else {
                    Err(None)
                }
            }
            BreakerState::Open => Err(Some(
                now + entry
                    .breaker
                    .stats()
                    .retry_after
                    .unwrap_or(FORCED_OPEN_POLL),
            )),
            BreakerState::ForcedOpen => Err(Some(now + FORCED_OPEN_POLL)),
        }
    }

    fn next_step(&self, now: Instant) -> Step {
        let mut st = self.state.lock();
        let st = &mut *st;
        for (n, count) in st.admission.due(now) {
            self.release(st, n, count, now);
        }
        let mut wake = st.admission.next_deadline();
        let mut earlier = |at: Instant| wake = Some(wake.map_or(at, |w: Instant| w.min(at)));
        let mut ready = vec![false; self.sink_count()];
        for (i, r) in ready.iter_mut().enumerate() {
            if st.queue.waiting_for(i) == 0 {
                continue;
            }
            // (A removed sink has nothing queued: its deliveries were
            // dropped, and a failed send's are dropped in `requeue`.)
            match self.admits(&st.health, i, now) {
                Err(Some(at)) => earlier(at),
                Err(None) => {}
                Ok(()) => {
                    let at = self.ready_at(st, i, now);
                    if at <= now {
                        *r = true;
                    } else {
                        earlier(at);
                    }
                }
            }
        }
        loop {
            let State {
                queue,
                subjects_in_flight,
                ..
            } = &mut *st;
            let Some(first) = queue.take_first(|d| {
                ready[d.sink]
                    && (self.sink(d.sink).digests
                        || subjects_in_flight.is_empty()
                        || !subjects_in_flight.contains_key(&(
                            d.sink,
                            d.message.notification().subject_key().to_owned(),
                        )))
            }) else {
                break;
            };
            let i = first.sink;
            let entry = &self.sink(i);
            let permit = match entry.breaker.try_acquire_owned() {
                Ok(p) => p,
                Err(rejected) => {
                    // Lost a race for the last probe slot (or the breaker
                    // moved): leave the sink for now.
                    ready[i] = false;
                    if let Some(ra) = rejected.retry_after() {
                        earlier(now + ra);
                    }
                    self.push(st, first);
                    continue;
                }
            };
            let acquired = st.rate.try_acquire(&entry.limits, now);
            debug_assert!(acquired.is_ok(), "the sink was ready");
            let mut deliveries = vec![first];
            if entry.digests && !deliveries[0].solo {
                deliveries.extend(st.queue.take_for(i, MAX_DIGEST_CANDIDATES - 1));
            }
            st.health[i].in_flight += 1;
            for d in &deliveries {
                st.in_flight.insert(d.seq(), d.clone());
                if !entry.digests {
                    *st.subjects_in_flight
                        .entry((i, d.message.notification().subject_key().to_owned()))
                        .or_default() += 1;
                }
            }
            self.update_gauges(st);
            return Step::Deliver(Outgoing {
                sink: i,
                deliveries,
                permit,
            });
        }
        self.update_gauges(st);
        if st.closed && st.queue.is_empty() && st.admission.pending_len() == 0 {
            return Step::Exit;
        }
        Step::Wait(wake)
    }

    /// Waits until sink `i` is neither paused nor rate limited, and takes a
    /// rate-limit slot.
    async fn acquire(&self, i: usize) {
        loop {
            let wait = {
                let mut st = self.state.lock();
                let now = Instant::now();
                let at = self.ready_at(&st, i, now);
                if at <= now && st.rate.try_acquire(&self.sink(i).limits, now).is_ok() {
                    return;
                }
                at.max(now)
            };
            tokio::time::sleep_until(wait).await;
        }
    }

    fn pause(&self, i: usize, for_: Duration) {
        let until = Instant::now() + for_.min(MAX_PAUSE);
        let mut st = self.state.lock();
        let h = &mut st.health[i];
        h.paused_until = Some(h.paused_until.map_or(until, |p| p.max(until)));
    }

    /// Merges a send's deliveries by subject and keeps what fits in one
    /// message; the rest goes back to the queue (not counted as requeued:
    /// it was never attempted). Runs outside the state lock: asking the
    /// sink what fits renders text.
    fn shape(&self, send: &mut Outgoing) -> Payload {
        let entry = &self.sink(send.sink);
        let deliveries = std::mem::take(&mut send.deliveries);
        if deliveries.len() == 1 {
            let d = deliveries.into_iter().next().expect("one delivery");
            let message = d.message.clone();
            send.deliveries.push(d);
            return Payload::Single(message);
        }
        let mut entries = digest::merge(deliveries);
        let fit = if entries.len() >= 2 {
            let messages: Vec<Message> = entries.iter().map(|e| e.message.clone()).collect();
            entry.sink.digest_fit(&messages).min(entries.len())
        } else {
            1
        };
        let keep = if fit >= 2 { fit } else { 1 };
        let rest = entries.split_off(keep);
        if !rest.is_empty() {
            let mut st = self.state.lock();
            for e in rest {
                for d in e.deliveries {
                    st.in_flight.remove(&d.seq());
                    self.push(&mut st, d);
                }
            }
            self.update_gauges(&st);
        }
        if keep == 1 {
            let e = entries.pop().expect("one entry kept");
            send.deliveries = e.deliveries;
            return Payload::Single(e.message);
        }
        let id = entries[0].message.id;
        let mut messages = Vec::with_capacity(entries.len());
        for e in entries {
            messages.push(e.message);
            send.deliveries.extend(e.deliveries);
        }
        Payload::Digest(Digest::new(id, messages))
    }

    async fn deliver(&self, mut send: Outgoing) {
        let payload = self.shape(&mut send);
        let cap = self.settings.max_retry_after;
        // A retry-after above the cap is not waited out here: it ends the
        // round at once (neutral = not retried) and is handled below.
        let classifier = |r: &Result<(), SinkError>| match r {
            Ok(()) => Outcome::Success,
            Err(e) => match e.outcome() {
                Outcome::Overloaded {
                    retry_after: Some(ra),
                } if ra > cap => Outcome::Neutral,
                o => o,
            },
        };
        let attempts_before = send
            .deliveries
            .iter()
            .map(|d| d.attempts)
            .max()
            .unwrap_or(0);
        let key = match &payload {
            Payload::Single(m) => m.key().to_owned(),
            Payload::Digest(d) => format!("digest of {}", d.entries().len()),
        };
        let made = AtomicU32::new(0);
        let result = {
            let payload = &payload;
            let made = &made;
            let key = key.as_str();
            let sink = send.sink;
            let run = self
                .settings
                .retry
                .retry_classified(&classifier, move |attempt| {
                    let retried = attempts_before + made.fetch_add(1, Ordering::Relaxed) > 0;
                    self.attempt(
                        sink,
                        payload,
                        key,
                        attempt.number,
                        attempt.is_retry(),
                        retried,
                    )
                });
            tokio::select! {
                r = run => Some(r),
                () = self.abort.cancelled() => None,
            }
        };
        let made = made.load(Ordering::Relaxed);
        for d in &mut send.deliveries {
            d.attempts += made;
        }
        let Outgoing {
            sink,
            deliveries,
            permit,
        } = send;
        match result {
            None => {
                // Cancelled by the shutdown timeout: says nothing about the
                // sink (the permit is dropped, which is neutral).
                drop(permit);
                self.requeue(sink, deliveries, false);
            }
            Some(Ok(())) => {
                permit.record(Outcome::Success);
                self.delivered(sink, deliveries, &payload);
            }
            Some(Err(e)) => self.failed(sink, deliveries, &payload, permit, e),
        }
    }

    /// One attempt of a send (boxed: the retry loop's closure borrows, and
    /// naming the lifetimes here lets the compiler prove the future `Send`).
    fn attempt<'a>(
        &'a self,
        sink: usize,
        payload: &'a Payload,
        key: &'a str,
        number: u32,
        is_retry: bool,
        retried: bool,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let entry = &self.sink(sink);
            let priority = match payload {
                Payload::Single(m) => m.priority(),
                Payload::Digest(d) => d.priority(),
            };
            if is_retry {
                self.acquire(sink).await;
            }
            if retried {
                Counters::add(&self.counters.retried);
                self.metrics.retried(&entry.name, priority);
            }
            // Clock reads only when someone reads the histogram.
            let started = Metrics::ENABLED.then(Instant::now);
            // Requests after a message's first (split parts) take rate-limit
            // slots of their own.
            let pace = SinkPace { shared: self, sink };
            let pacer = Pacer::new(&pace);
            let r = match payload {
                Payload::Single(m) => entry.sink.send_paced(m, &pacer).await,
                Payload::Digest(d) => entry.sink.send_digest(d, &pacer).await,
            };
            if let Some(started) = started {
                self.metrics.send_duration(&entry.name, started.elapsed());
            }
            if let Err(e) = &r {
                debug!(
                    sink = %entry.name,
                    key,
                    attempt = number,
                    error = %e,
                    "send attempt failed"
                );
                if let Some(ra) = e.retry_after() {
                    // Every worker honours the sink's request, not only this
                    // one.
                    self.pause(sink, ra);
                }
            }
            r
        })
    }

    fn finish(&self, st: &mut State, sink: usize, deliveries: &[Delivery]) {
        for d in deliveries {
            st.in_flight.remove(&d.seq());
            if !self.sink(sink).digests {
                let key = (sink, d.message.notification().subject_key().to_owned());
                if let Some(n) = st.subjects_in_flight.get_mut(&key) {
                    *n -= 1;
                    if *n == 0 {
                        st.subjects_in_flight.remove(&key);
                    }
                }
            }
        }
        let h = &mut st.health[sink];
        h.in_flight = h.in_flight.saturating_sub(1);
    }

    fn delivered(&self, sink: usize, deliveries: Vec<Delivery>, payload: &Payload) {
        let entry = &self.sink(sink);
        {
            let mut st = self.state.lock();
            self.finish(&mut st, sink, &deliveries);
            self.update_gauges(&st);
        }
        let now = Instant::now();
        let digest = matches!(payload, Payload::Digest(_));
        Counters::add(&self.counters.messages);
        if digest {
            Counters::add(&self.counters.digests);
        }
        self.metrics.message(&entry.name, digest);
        for d in &deliveries {
            Counters::add(&self.counters.sent);
            let observed = d.message.observed_at().unwrap_or(d.queued_at);
            let observed_to_accepted = now.saturating_duration_since(observed);
            self.metrics.sent(
                &entry.name,
                d.priority(),
                now.saturating_duration_since(d.queued_at),
                observed_to_accepted,
            );
            if let Some(hook) = &self.settings.on_accepted {
                hook(&Accepted {
                    sink: &entry.name,
                    key: d.message.key(),
                    priority: d.priority(),
                    count: d.message.count,
                    observed_to_accepted,
                    in_digest: digest,
                });
            }
        }
        match payload {
            Payload::Single(m) => debug!(
                sink = %entry.name,
                priority = %m.priority(),
                key = m.key(),
                deliveries = deliveries.len(),
                "notification sent"
            ),
            Payload::Digest(d) => debug!(
                sink = %entry.name,
                entries = d.entries().len(),
                events = d.events(),
                deliveries = deliveries.len(),
                "digest sent"
            ),
        }
        // A digesting sink is free again, a half-open breaker may close:
        // let every idle worker look.
        self.wake.notify_waiters();
        self.idle.notify_waiters();
    }

    fn failed(
        &self,
        sink: usize,
        mut deliveries: Vec<Delivery>,
        payload: &Payload,
        permit: OwnedPermit,
        err: RetryError<SinkError>,
    ) {
        let entry = &self.sink(sink);
        let cap = self.settings.max_retry_after;
        let priority = deliveries
            .iter()
            .map(Delivery::priority)
            .max()
            .unwrap_or(Priority::Info);
        match err.last_error() {
            Some(e @ SinkError::Permanent { .. }) => {
                // A rejection is an answer: the sink is up.
                permit.record(Outcome::Success);
                if let Payload::Digest(d) = payload {
                    // One bad entry must not take the others down: each goes
                    // alone from now on, and only a bad one is dropped.
                    warn!(
                        sink = %entry.name,
                        entries = d.entries().len(),
                        error = %e,
                        "sink rejected a digest; its messages will go one by one"
                    );
                    for d in &mut deliveries {
                        d.solo = true;
                    }
                    self.requeue(sink, deliveries, false);
                    return;
                }
                error!(
                    sink = %entry.name,
                    priority = %priority,
                    key = deliveries.first().map_or("", |d| d.message.key()),
                    error = %e,
                    "sink rejected the notification; dropped"
                );
                {
                    let mut st = self.state.lock();
                    self.finish(&mut st, sink, &deliveries);
                    self.update_gauges(&st);
                }
                for d in &deliveries {
                    Counters::add(&self.counters.rejected);
                    self.count_drop(d, DropReason::Permanent);
                }
                self.wake.notify_waiters();
                self.idle.notify_waiters();
            }
            Some(e) if e.retry_after().is_some_and(|ra| ra > cap) => {
                // The sink answered (it is up, just busy): neutral for the
                // breaker.
                permit.record(Outcome::Neutral);
                let ra = e.retry_after().unwrap_or_default();
                error!(
                    sink = %entry.name,
                    priority = %priority,
                    deliveries = deliveries.len(),
                    retry_after_s = ra.as_secs(),
                    max_retry_after_s = cap.as_secs(),
                    "sink asked to wait longer than the cap; sink paused, messages requeued"
                );
                Counters::add(&self.counters.escalations);
                self.metrics.escalation(&entry.name);
                // `pause` already ran in the attempt.
                self.requeue(sink, deliveries, true);
            }
            _ => {
                permit.record(Outcome::Failure);
                warn!(
                    sink = %entry.name,
                    priority = %priority,
                    deliveries = deliveries.len(),
                    error = %err,
                    breaker = ?entry.breaker.state(),
                    "sink failing; messages requeued"
                );
                self.requeue(sink, deliveries, true);
            }
        }
    }

    fn requeue(&self, sink: usize, deliveries: Vec<Delivery>, count: bool) {
        {
            let mut st = self.state.lock();
            self.finish(&mut st, sink, &deliveries);
            if self.sink(sink).is_removed() {
                drop(st);
                for d in &deliveries {
                    self.count_drop(d, DropReason::Removed);
                }
                warn!(
                    sink = %self.sink(sink).name,
                    dropped = deliveries.len(),
                    "send to a removed sink failed; messages dropped"
                );
                self.wake.notify_waiters();
                self.idle.notify_waiters();
                return;
            }
            for d in deliveries {
                if count {
                    Counters::add(&self.counters.requeued);
                }
                self.push(&mut st, d);
            }
            self.update_gauges(&st);
        }
        self.wake.notify_waiters();
        self.idle.notify_waiters();
    }

    fn record(&self, d: &Delivery, now: Instant) -> SpoolRecord {
        SpoolRecord::new(
            Some(self.sink(d.sink).name.clone()),
            d.message.notification.clone(),
            d.message.count,
            d.attempts,
            now,
        )
    }

    async fn save_spool(&self) -> Result<usize, NotifyError> {
        let Some(spool) = &self.spool else {
            return Ok(0);
        };
        let (records, generation) = {
            let st = self.state.lock();
            let now = Instant::now();
            let mut all: Vec<&Delivery> = st.queue.iter().chain(st.in_flight.values()).collect();
            all.sort_by_key(|d| (d.priority().lane(), d.seq()));
            let mut records: Vec<SpoolRecord> =
                all.into_iter().map(|d| self.record(d, now)).collect();
            records.extend(
                st.admission
                    .held()
                    .into_iter()
                    .map(|(notification, count)| {
                        SpoolRecord::new(None, notification, count, 0, now)
                    }),
            );
            (records, spool.next_generation())
        };
        spool.write(records, generation).await
    }

    fn load_spool(&self, spool: &Spool) -> Result<(), NotifyError> {
        let path = spool.path();
        let (records, bad) = spool.read()?;
        for b in &bad {
            error!(
                path = %path.display(),
                line = b.line,
                error = %b.error,
                "unreadable spool line skipped"
            );
            Counters::add(&self.counters.dropped);
        }
        if records.is_empty() && bad.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let mut restored = 0usize;
        {
            let mut st = self.state.lock();
            let st = &mut *st;
            for r in records {
                let count = r.count.max(1);
                let attempts = r.attempts;
                let sink_name = r.sink.clone();
                let notification = r.into_notification(now);
                match sink_name {
                    None => restored += self.release(st, notification, count, now),
                    Some(name) => {
                        let Some(sink) = self
                            .sinks()
                            .iter()
                            .position(|s| !s.is_removed() && s.name == name)
                        else {
                            error!(
                                sink = %name,
                                key = notification.key(),
                                "spooled message for a sink that no longer exists; dropped"
                            );
                            Counters::add(&self.counters.dropped);
                            self.metrics.dropped(
                                &name,
                                notification.priority(),
                                DropReason::UnknownSink,
                            );
                            continue;
                        };
                        let id = st.next_id;
                        st.next_id += 1;
                        let d = Delivery {
                            sink,
                            message: Message {
                                id,
                                notification,
                                count,
                            },
                            queued_at: now,
                            attempts,
                            solo: false,
                        };
                        if self.push(st, d) {
                            restored += 1;
                        }
                    }
                }
            }
            self.update_gauges(st);
        }
        for _ in 0..restored {
            Counters::add(&self.counters.restored);
        }
        info!(
            path = %path.display(),
            restored,
            skipped = bad.len(),
            "notification spool loaded"
        );
        spool.remove()
    }
}

async fn worker(shared: Arc<Shared>) {
    loop {
        let notified = shared.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if shared.abort.is_cancelled() {
            return;
        }
        match shared.next_step(Instant::now()) {
            Step::Exit => return,
            Step::Deliver(send) => shared.deliver(send).await,
            Step::Wait(at) => {
                let sleep = async {
                    match at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = &mut notified => {}
                    () = sleep => {}
                    () = shared.abort.cancelled() => return,
                }
            }
        }
    }
}

async fn spool_loop(shared: Arc<Shared>, every: Duration) {
    let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shared.closing.cancelled() => return,
        }
        // Not raced against `closing`: shutdown waits for this write, then
        // writes its own, newer snapshot.
        if let Err(e) = shared.save_spool().await {
            error!(error = %e, "periodic spool write failed");
        }
    }
}
