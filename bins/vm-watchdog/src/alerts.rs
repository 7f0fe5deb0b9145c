//! The alerts the watchdog raises, on top of `keel-notify` (priorities,
//! dedup, debounce, digests, rate limits, retries, spool). Each alert
//! carries when its status change was observed and the VM it is about (its
//! digest subject); the notifier measures "observed → accepted by Telegram"
//! and [`Alerts::configure`] feeds it to the watchdog's metrics.

use std::hash::{Hash, Hasher};
use std::time::Duration;

use keel_notify::{Admitted, Notification, Notifier, NotifierBuilder};
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::status::{VmStatus, human_duration};

/// Builds the watchdog's notifications and hands them to the notifier.
///
/// Keys (what dedup and debounce see): `{vm}:{STATUS}` for critical status
/// alerts (never suppressed), `{vm}:recovered:{n}` per incident,
/// `{vm}:stuck:{STATUS}`, `{vm}:missing`, `{vm}:start-failed`,
/// `api:{group}:down`/`up`, `config:invalid:{hash}`. VM alerts have the VM
/// as their subject, so a VM that stopped and recovered while the chat's
/// rate limit held both appears once in the digest, with its latest state.
#[derive(Debug, Clone)]
pub struct Alerts {
    notifier: Notifier,
}

impl Alerts {
    /// Adds the watchdog's accounting to a notifier builder: every alert
    /// Telegram accepts counts in `alerts_sent_total` and its observed →
    /// accepted time goes to `alert_reaction_seconds`.
    pub fn configure(builder: NotifierBuilder, metrics: Metrics) -> NotifierBuilder {
        builder.on_accepted(move |accepted| {
            metrics.alert_sent(accepted.priority, Some(accepted.observed_to_accepted));
        })
    }

    /// Alerts through `notifier` (built from [`Alerts::configure`]).
    pub fn new(notifier: Notifier) -> Self {
        Alerts { notifier }
    }

    /// The notifier (for shutdown and stats).
    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    fn send(&self, notification: Notification, observed_at: Option<Instant>) {
        let key = notification.key().to_owned();
        let notification = match observed_at {
            Some(at) => notification.observed_at(at),
            None => notification,
        };
        match self.notifier.notify(notification) {
            Ok(admitted @ (Admitted::Deduplicated | Admitted::Dropped)) => {
                tracing::debug!(key, ?admitted, "alert not queued");
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
            .field("status", status.as_str())
            .subject(vm);
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
        .field("downtime", human_duration(downtime))
        .subject(vm);
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
        .field("status", status.as_str())
        .subject(vm);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use keel_notify::{Message, Priority, Sink, SinkError};
    use parking_lot::Mutex;

    #[derive(Clone, Default)]
    struct Inbox(Arc<Mutex<Vec<String>>>);

    impl Sink for Inbox {
        fn name(&self) -> &str {
            "inbox"
        }

        async fn send(&self, message: &Message) -> Result<(), SinkError> {
            self.0.lock().push(message.display_title());
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn accepted_alerts_feed_the_reaction_metrics() {
        let metrics = Metrics::new();
        let inbox = Inbox::default();
        let notifier = Alerts::configure(Notifier::builder(), metrics.clone())
            .sink(inbox.clone())
            .build()
            .unwrap();
        let alerts = Alerts::new(notifier.clone());
        let observed = Instant::now();
        tokio::time::advance(Duration::from_secs(2)).await;
        alerts.critical_status("vm-1", VmStatus::Stopped, observed);
        assert!(notifier.flush(Duration::from_secs(1)).await);
        assert_eq!(*inbox.0.lock(), ["VM vm-1 is STOPPED"]);
        assert_eq!(metrics.alerts_sent(Priority::Critical), 1);
        let text = metrics_text(&metrics);
        assert!(
            text.contains(r#"alert_reaction_seconds_sum{priority="critical"} 2.0"#),
            "{text}"
        );
    }

    fn metrics_text(metrics: &Metrics) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }
}
