//! The service's Prometheus metrics, with the predecessor's names once the
//! program prefix `alert_history_` is added.
//!
//! Label values stay bounded: `endpoint` is the matched route template
//! (`/alerts/{fingerprint}`, never a fingerprint), `status` is
//! `firing`/`resolved`, and the `(alertname, namespace)` pairs of
//! `webhook_events` are capped at [`LABEL_SET_CAP`] distinct pairs per
//! process: later pairs are counted under `alertname="other",
//! namespace="other"`.

use std::collections::HashSet;

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::model::NewEvent;

/// Most distinct `(alertname, namespace)` label pairs on
/// `webhook_events_total`; the rest fold into `other`.
pub const LABEL_SET_CAP: usize = 1000;
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
/// Request latency by route template.
pub const REQUEST_LATENCY: &str = "request_latency_seconds";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    alertname: String,
    namespace: String,
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

type LatencyFamily = Family<EndpointLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~8 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

/// The metrics; cloning shares them.
#[derive(Debug, Clone)]
pub struct Metrics {
    webhook_events: Family<EventLabels, Counter>,
    webhook_errors: Counter,
    history_queries: Counter,
    report_queries: Counter,
    db_alerts: Gauge,
    latency: LatencyFamily,
    seen: std::sync::Arc<Mutex<HashSet<(String, String)>>>,
    cap: usize,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::with_cap(LABEL_SET_CAP)
    }
}

impl Metrics {
    /// Metrics whose `(alertname, namespace)` pairs are capped at `cap`.
    pub fn with_cap(cap: usize) -> Self {
        Metrics {
            webhook_events: Family::default(),
            webhook_errors: Counter::default(),
            history_queries: Counter::default(),
            report_queries: Counter::default(),
            db_alerts: Gauge::default(),
            latency: Family::new_with_constructor(latency_histogram),
            seen: Default::default(),
            cap,
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
        registry.register(
            REQUEST_LATENCY,
            "HTTP request latency by route",
            self.latency.clone(),
        );
    }

    /// Counts the alerts of a stored delivery.
    pub fn record_events(&self, events: &[NewEvent]) {
        for e in events {
            let (alertname, namespace) =
                self.bounded(&e.alertname, e.namespace.as_deref().unwrap_or("none"));
            self.webhook_events
                .get_or_create(&EventLabels {
                    alertname,
                    namespace,
                    status: e.status.as_str().to_owned(),
                })
                .inc();
        }
    }

    fn bounded(&self, alertname: &str, namespace: &str) -> (String, String) {
        let key = (alertname.to_owned(), namespace.to_owned());
        let mut seen = self.seen.lock();
        if seen.contains(&key) {
            return key;
        }
        if seen.len() < self.cap {
            seen.insert(key.clone());
            return key;
        }
        ("other".to_owned(), "other".to_owned())
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

    /// Observes one request's latency under its route template.
    pub fn observe_latency(&self, endpoint: &str, seconds: f64) {
        self.latency
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.to_owned(),
            })
            .observe(seconds);
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
        m.observe_latency("/webhook", 0.01);
        let text = encode(&m);
        for name in [
            "alert_history_webhook_events_total{alertname=\"DiskFull\",namespace=\"none\",status=\"firing\"} 1",
            "alert_history_webhook_errors_total",
            "alert_history_history_queries_total",
            "alert_history_report_queries_total",
            "alert_history_db_alerts",
            "alert_history_request_latency_seconds_bucket{le=",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
    }

    #[test]
    fn label_sets_are_capped() {
        let m = Metrics::with_cap(3);
        for i in 0..10 {
            let body = format!(
                r#"{{"alerts":[{{"status":"firing","labels":{{"alertname":"A{i}"}},"startsAt":"2026-01-01T00:00:00Z"}}]}}"#
            );
            m.record_events(&parse_webhook(body.as_bytes()).unwrap());
        }
        let text = encode(&m);
        let series = text
            .lines()
            .filter(|l| l.starts_with("alert_history_webhook_events_total{"))
            .count();
        assert_eq!(series, 4, "{text}");
        assert!(text.contains("alertname=\"other\",namespace=\"other\",status=\"firing\"} 7"));
    }
}
