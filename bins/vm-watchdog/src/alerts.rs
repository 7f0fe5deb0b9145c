//! The alerts the watchdog raises, on top of `keel-notify` (priorities,
//! dedup, debounce, rate limits, retries, spool), and the sink wrapper that
//! measures reaction time: status change observed → alert accepted.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use keel_notify::{Admitted, Message, Notification, Notifier, Pacer, RateLimit, Sink, SinkError};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::status::{VmStatus, human_duration};

/// Observation times of alerts not yet accepted, by dedup key.
type Pending = Arc<Mutex<HashMap<String, Instant>>>;

/// Entries older than this are forgotten (their alert was dropped).
const PENDING_TTL: Duration = Duration::from_secs(3_600);
/// Above this many pending entries, stale ones are swept.
const PENDING_SWEEP: usize = 10_000;

/// Wraps a sink: each accepted message counts in `alerts_sent_total` and,
/// when the status change it reports was registered by [`Alerts`], its
/// reaction time goes to `alert_reaction_seconds`.
#[derive(Debug)]
pub struct TimedSink<S> {
    inner: S,
    pending: Pending,
    metrics: Metrics,
}

impl<S: Sink> TimedSink<S> {
    fn accepted(&self, message: &Message) {
        let observed = self.pending.lock().remove(message.key());
        self.metrics
            .alert_sent(message.priority(), observed.map(|t| t.elapsed()));
    }
}

impl<S: Sink> Sink for TimedSink<S> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn send(&self, message: &Message) -> Result<(), SinkError> {
        let result = self.inner.send(message).await;
        if result.is_ok() {
            self.accepted(message);
        }
        result
    }

    /// Forwarded, so the parts of a split message keep taking the sink's
    /// rate-limit slots.
    async fn send_paced(&self, message: &Message, pacer: &Pacer<'_>) -> Result<(), SinkError> {
        let result = self.inner.send_paced(message, pacer).await;
        if result.is_ok() {
            self.accepted(message);
        }
        result
    }

    fn rate_limits(&self) -> Vec<RateLimit> {
        self.inner.rate_limits()
    }
}

/// Builds the watchdog's notifications and hands them to the notifier.
///
/// Keys (what dedup and debounce see): `{vm}:{STATUS}` for critical status
/// alerts (never suppressed), `{vm}:recovered:{n}` per incident,
/// `{vm}:stuck:{STATUS}`, `{vm}:missing`, `{vm}:start-failed`,
/// `api:{group}:down`/`up`, `config:invalid:{hash}`.
#[derive(Debug, Clone)]
pub struct Alerts {
    notifier: Notifier,
    pending: Pending,
}

impl Alerts {
    /// Wraps `sink` for timing; build the notifier with the returned sink,
    /// then call [`Alerts::new`] with it and the same `Alerts` timing state.
    pub fn timed<S: Sink>(sink: S, metrics: Metrics) -> (TimedSink<S>, AlertsTiming) {
        let pending = Pending::default();
        (
            TimedSink {
                inner: sink,
                pending: pending.clone(),
                metrics,
            },
            AlertsTiming(pending),
        )
    }

    /// Alerts through `notifier`, timed with `timing` (from
    /// [`Alerts::timed`]).
    pub fn new(notifier: Notifier, timing: AlertsTiming) -> Self {
        Alerts {
            notifier,
            pending: timing.0,
        }
    }

    /// The notifier (for shutdown and stats).
    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    fn send(&self, notification: Notification, observed_at: Option<Instant>) {
        let key = notification.key().to_owned();
        let mut inserted = false;
        if let Some(at) = observed_at {
            let mut pending = self.pending.lock();
            if pending.len() > PENDING_SWEEP {
                pending.retain(|_, t| t.elapsed() < PENDING_TTL);
            }
            if !pending.contains_key(&key) {
                pending.insert(key.clone(), at);
                inserted = true;
            }
        }
        match self.notifier.notify(notification) {
            Ok(Admitted::Deduplicated | Admitted::Dropped) | Err(_) if inserted => {
                self.pending.lock().remove(&key);
            }
            Ok(admitted) => tracing::debug!(key, ?admitted, "alert admitted"),
            Err(e) => tracing::debug!(key, error = %e, "alert not admitted"),
        }
    }

    /// Critical: `vm` is `status` (STOPPED, CRASHED, ERROR); starting it.
    pub fn critical_status(&self, vm: &str, status: VmStatus, observed_at: Instant) {
        let n = Notification::critical(format!("{vm}:{status}"), format!("VM {vm} is {status}"))
            .body("Starting it now; polling every few seconds until it is RUNNING.")
            .field("vm", vm)
            .field("status", status.as_str());
        self.send(n, Some(observed_at));
    }

    /// Info: `vm` is running again after `downtime` (incident number `n`).
    pub fn recovered(&self, vm: &str, downtime: Duration, n: u64, observed_at: Instant) {
        let n = Notification::info(
            format!("{vm}:recovered:{n}"),
            format!("VM {vm} recovered after {}", human_duration(downtime)),
        )
        .field("vm", vm)
        .field("status", VmStatus::Running.as_str())
        .field("downtime", human_duration(downtime));
        self.send(n, Some(observed_at));
    }

    /// Warning: `vm` has been `status` for `stuck_for`.
    pub fn stuck(&self, vm: &str, status: VmStatus, stuck_for: Duration, observed_at: Instant) {
        let n = Notification::warning(
            format!("{vm}:stuck:{status}"),
            format!(
                "VM {vm} stuck in {status} for {}",
                human_duration(stuck_for)
            ),
        )
        .field("vm", vm)
        .field("status", status.as_str());
        self.send(n, Some(observed_at));
    }

    /// Warning: the API does not know `vm` (404) although it is configured.
    pub fn missing(&self, vm: &str) {
        let n = Notification::warning(format!("{vm}:missing"), format!("VM {vm} not found"))
            .body("The cloud API answers 404 for this VM; check vms.yaml.")
            .field("vm", vm);
        self.send(n, None);
    }

    /// Warning: starting `vm` failed for good (after retries).
    pub fn start_failed(&self, vm: &str, error: &str) {
        let n = Notification::warning(
            format!("{vm}:start-failed"),
            format!("Could not start VM {vm}"),
        )
        .body(error)
        .field("vm", vm);
        self.send(n, None);
    }

    /// Warning: the circuit breaker of API `group` opened: statuses are kept
    /// as last seen and checks back off.
    pub fn api_down(&self, group: &str) {
        let n = Notification::warning(
            format!("api:{group}:down"),
            format!("Cloud API unavailable ({group})"),
        )
        .body("Repeated failures opened the circuit breaker; keeping the last known statuses and backing off.");
        self.send(n, None);
    }

    /// Info: the breaker of `group` closed again.
    pub fn api_up(&self, group: &str) {
        let n = Notification::info(
            format!("api:{group}:up"),
            format!("Cloud API available again ({group})"),
        );
        self.send(n, None);
    }

    /// Warning: `vms.yaml` changed into something invalid; the running
    /// configuration stays.
    pub fn config_invalid(&self, error: &str) {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        error.hash(&mut hasher);
        let n = Notification::warning(
            format!("config:invalid:{:016x}", hasher.finish()),
            "vms.yaml is invalid; keeping the running configuration",
        )
        .body(error);
        self.send(n, None);
    }
}

/// The timing state shared by [`TimedSink`] and [`Alerts`].
#[derive(Debug, Clone)]
pub struct AlertsTiming(Pending);

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// Records whether it was sent to with a pacer.
    struct Recorder(Arc<AtomicBool>);

    impl Sink for Recorder {
        fn name(&self) -> &str {
            "recorder"
        }

        async fn send(&self, _: &Message) -> Result<(), SinkError> {
            Ok(())
        }

        async fn send_paced(&self, _: &Message, _: &Pacer<'_>) -> Result<(), SinkError> {
            self.0.store(true, Ordering::SeqCst);
            Ok(())
        }
    }

    #[tokio::test]
    async fn the_timed_sink_forwards_paced_sends_and_counts_them() {
        let paced = Arc::new(AtomicBool::new(false));
        let metrics = Metrics::new();
        let (sink, _timing) = Alerts::timed(Recorder(paced.clone()), metrics.clone());
        let message = Message::new(1, Notification::critical("vm:STOPPED", "stopped"), 1);
        sink.send_paced(&message, &Pacer::none()).await.unwrap();
        assert!(
            paced.load(Ordering::SeqCst),
            "split parts keep their pacing"
        );
        assert_eq!(metrics.alerts_sent(keel_notify::Priority::Critical), 1);
    }
}
