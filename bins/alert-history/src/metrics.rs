//! The service's Prometheus metrics, with the predecessor's names once the
//! program prefix `alert_history_` is added.
//!
//! Label values come from alerts, so they go through the kit's
//! [`LabelFamily`]: each value is capped at
//! [`keel_telemetry::MAX_LABEL_VALUE_LEN`] bytes and escaped (a quote, a
//! backslash or a newline in an alert name cannot break the scrape or
//! inject a sample), and the `(alertname, namespace, status)` sets of
//! `webhook_events` are capped at [`LABEL_SET_CAP`] pairs (two statuses
//! each): a new pair past the cap takes the slot of a set idle for
//! [`LABEL_SET_IDLE`] (its series is dropped, as a Prometheus exporter's
//! TTL does; it restarts from zero if it comes back, which `rate()` reads
//! as a counter reset), and is counted under `alertname="other",
//! namespace="other"` (its status kept) only while every slot is in recent
//! use. Request latency is the kit's [`HttpMetrics`] (by route template,
//! method and status class).

use std::time::Duration;

use keel_telemetry::{HttpMetrics, LabelFamily};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::model::NewEvent;

/// Most distinct `(alertname, namespace)` label pairs on
/// `webhook_events_total`; the rest fold into `other`.
pub const LABEL_SET_CAP: usize = 1000;
/// A label set not seen for this long gives its slot up when a new pair
/// needs one.
pub const LABEL_SET_IDLE: Duration = Duration::from_secs(3600);
/// Alerts received, by alertname, namespace and status.
pub const WEBHOOK_EVENTS: &str = "webhook_events";
/// Webhook deliveries rejected or failed.
pub const WEBHOOK_ERRORS: &str = "webhook_errors";
/// `GET /history` queries served.
pub const HISTORY_QUERIES: &str = "history_queries";
/// `GET /report` queries served.
pub const REPORT_QUERIES: &str = "report_queries";
/// Events stored in the database.
pub const DB_ALERTS: &str = "db_alerts";

/// The metrics; cloning shares them.
#[derive(Debug, Clone)]
pub struct Metrics {
    webhook_events: LabelFamily<Counter, 3>,
    webhook_errors: Counter,
    history_queries: Counter,
    report_queries: Counter,
    db_alerts: Gauge,
    http: HttpMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::with_cap(LABEL_SET_CAP)
    }
}

impl Metrics {
    /// Metrics whose `(alertname, namespace)` pairs are capped at `cap`
    /// (at least 1).
    pub fn with_cap(cap: usize) -> Self {
        let webhook_events = LabelFamily::builder(["alertname", "namespace", "status"])
            .max_sets(2 * cap.max(1))
            .idle_after(LABEL_SET_IDLE)
            .keep(["status"])
            .build()
            // Fixed names, a cap of at least 2 and a non-zero idle time.
            .unwrap_or_else(|e| unreachable!("{e}"));
        Metrics {
            webhook_events,
            webhook_errors: Counter::default(),
            history_queries: Counter::default(),
            report_queries: Counter::default(),
            db_alerts: Gauge::default(),
            http: HttpMetrics::new(),
        }
    }

    /// Registers every metric under its short name.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            WEBHOOK_EVENTS,
            "Alerts received on the webhook",
            self.webhook_events.clone(),
        );
        registry.register(
            WEBHOOK_ERRORS,
            "Webhook deliveries rejected or failed",
            self.webhook_errors.clone(),
        );
        registry.register(
            HISTORY_QUERIES,
            "History queries served",
            self.history_queries.clone(),
        );
        registry.register(
            REPORT_QUERIES,
            "Report queries served",
            self.report_queries.clone(),
        );
        registry.register(
            DB_ALERTS,
            "Alert events stored in the database",
            self.db_alerts.clone(),
        );
        self.http.register(registry);
    }

    /// The request-latency middleware's metrics.
    pub fn http(&self) -> &HttpMetrics {
        &self.http
    }

    /// Counts the alerts of a delivery (an unlabelled namespace is `none`).
    pub fn record_events(&self, events: &[NewEvent]) {
        for e in events {
            let namespace = e.namespace.as_deref().unwrap_or("none");
            self.webhook_events
                .get_or_create([&e.alertname, namespace, e.status.as_str()])
                .inc();
        }
    }

    /// Counts a rejected or failed delivery.
    pub fn webhook_error(&self) {
        self.webhook_errors.inc();
    }

    /// Counts a history query.
    pub fn history_query(&self) {
        self.history_queries.inc();
    }

    /// Counts a report query.
    pub fn report_query(&self) {
        self.report_queries.inc();
    }

    /// Sets the stored-events gauge.
    pub fn set_db_alerts(&self, n: i64) {
        self.db_alerts.set(n);
    }

    /// Adds to the stored-events gauge.
    pub fn add_db_alerts(&self, n: i64) {
        self.db_alerts.inc_by(n);
    }

    /// The stored-events gauge.
    pub fn db_alerts(&self) -> i64 {
        self.db_alerts.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_webhook;

    fn encode(m: &Metrics) -> String {
        let mut registry = Registry::with_prefix("alert_history");
        m.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn names_match_the_predecessor() {
        let m = Metrics::default();
        let events = parse_webhook(include_bytes!("../tests/data/webhook-firing.json")).unwrap();
        m.record_events(&events);
        let text = encode(&m);
        for name in [
            "alert_history_webhook_events_total{alertname=\"DiskFull\",namespace=\"none\",status=\"firing\"} 1",
            "alert_history_webhook_errors_total",
            "alert_history_history_queries_total",
            "alert_history_report_queries_total",
            "alert_history_db_alerts",
            "alert_history_http_request_duration_seconds",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
    }

    fn firing(alertname: &str) -> Vec<NewEvent> {
        let body = serde_json::json!({"alerts":[{"status":"firing","labels":{"alertname":alertname},
            "startsAt":"2026-01-01T00:00:00Z"}]});
        parse_webhook(body.to_string().as_bytes()).unwrap()
    }

    fn series(m: &Metrics) -> Vec<String> {
        encode(m)
            .lines()
            .filter(|l| l.starts_with("alert_history_webhook_events_total{"))
            .map(|l| l.to_owned())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn label_sets_are_capped() {
        let m = Metrics::with_cap(3);
        for i in 0..10 {
            m.record_events(&firing(&format!("A{i}")));
        }
        let text = series(&m).join("\n");
        // Three statuses' worth of slots (2 per pair): six pairs fit.
        assert_eq!(series(&m).len(), 7, "{text}");
        assert!(text.contains("alertname=\"other\",namespace=\"other\",status=\"firing\"} 4"));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_label_sets_give_their_slots_to_new_ones() {
        let m = Metrics::with_cap(1);
        m.record_events(&firing("A0"));
        m.record_events(&firing("A1"));
        tokio::time::advance(Duration::from_secs(50 * 60)).await;
        m.record_events(&firing("A1"));
        m.record_events(&firing("A2"));
        let text = series(&m).join("\n");
        assert!(text.contains("alertname=\"other\""), "{text}");
        assert!(!text.contains("A2"), "{text}");
        // Eleven minutes later A0 has been idle for an hour: its series goes
        // and A3 takes the slot; A1, seen at 50 min, stays.
        tokio::time::advance(Duration::from_secs(11 * 60)).await;
        m.record_events(&firing("A3"));
        let text = series(&m).join("\n");
        assert!(!text.contains("\"A0\""), "{text}");
        assert!(text.contains("alertname=\"A1\""), "{text}");
        assert!(
            text.contains("alertname=\"A3\",namespace=\"none\",status=\"firing\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn hostile_alert_names_are_escaped_and_capped() {
        let m = Metrics::default();
        let long = "x".repeat(1 << 20);
        for name in [
            "Disk \"root\" full",
            "back\\slash",
            "new\nline 1\n# x",
            long.as_str(),
        ] {
            m.record_events(&firing(name));
        }
        let text = encode(&m);
        assert!(text.contains(r#"alertname="Disk \"root\" full""#), "{text}");
        assert!(text.contains(r#"alertname="back\\slash""#), "{text}");
        assert!(text.contains(r#"alertname="new\nline 1\n# x""#), "{text}");
        assert!(text.len() < 10_000, "{} bytes", text.len());
        assert!(
            text.lines()
                .all(|l| !l.starts_with("line") && !l.starts_with("# x"))
        );
    }
}
