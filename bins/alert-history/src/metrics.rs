//! The service's Prometheus metrics, with the predecessor's names once the
//! program prefix `alert_history_` is added.
//!
//! Label values stay bounded: `endpoint` is the matched route template
//! (`/alerts/{fingerprint}`, never a fingerprint), `status` is
//! `firing`/`resolved`, and the `(alertname, namespace)` pairs of
//! `webhook_events` are capped at [`LABEL_SET_CAP`] distinct pairs: a new
//! pair past the cap first frees the slots of pairs idle for
//! [`LABEL_SET_IDLE_MS`] (their series are dropped, as a Prometheus
//! exporter's TTL does; a pair seen again later restarts from zero, which
//! `rate()` reads as a counter reset), and is counted under
//! `alertname="other", namespace="other"` only while every slot is in
//! recent use.

use std::collections::HashMap;

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::model::{NewEvent, Status};

/// Most distinct `(alertname, namespace)` label pairs on
/// `webhook_events_total`; the rest fold into `other`.
pub const LABEL_SET_CAP: usize = 1000;
/// A pair not seen for this long (1 hour, by the deliveries' receive time)
/// gives its slot up when a new pair needs one.
pub const LABEL_SET_IDLE_MS: i64 = 3_600_000;
/// Idle pairs are looked for at most this often (1 minute), so a flood of
/// new pairs past the cap costs one scan a minute, not one per alert.
const LABEL_SET_SWEEP_MS: i64 = 60_000;
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
    seen: std::sync::Arc<Mutex<LabelSets>>,
    cap: usize,
}

/// The admitted `(alertname, namespace)` pairs and when each was last seen
/// (epoch ms). Nested maps, so a lookup by `&str` needs no allocation.
#[derive(Debug, Default)]
struct LabelSets {
    last_seen: HashMap<String, HashMap<String, i64>>,
    len: usize,
    last_sweep_ms: Option<i64>,
}

impl LabelSets {
    /// Whether the pair has (or now gets) its own series.
    fn admit(
        &mut self,
        alertname: &str,
        namespace: &str,
        now_ms: i64,
        cap: usize,
        family: &Family<EventLabels, Counter>,
    ) -> bool {
        if let Some(seen) = self
            .last_seen
            .get_mut(alertname)
            .and_then(|m| m.get_mut(namespace))
        {
            *seen = (*seen).max(now_ms);
            return true;
        }
        if self.len >= cap
            && self
                .last_sweep_ms
                .is_none_or(|at| now_ms - at >= LABEL_SET_SWEEP_MS)
        {
            self.sweep(now_ms, family);
        }
        if self.len >= cap {
            return false;
        }
        self.last_seen
            .entry(alertname.to_owned())
            .or_default()
            .insert(namespace.to_owned(), now_ms);
        self.len += 1;
        true
    }

    /// Drops the pairs idle for [`LABEL_SET_IDLE_MS`], and their series.
    fn sweep(&mut self, now_ms: i64, family: &Family<EventLabels, Counter>) {
        self.last_sweep_ms = Some(now_ms);
        let cutoff = now_ms.saturating_sub(LABEL_SET_IDLE_MS);
        let mut removed = 0;
        self.last_seen.retain(|alertname, namespaces| {
            namespaces.retain(|namespace, seen| {
                if *seen >= cutoff {
                    return true;
                }
                for status in [Status::Firing, Status::Resolved] {
                    family.remove(&EventLabels {
                        alertname: alertname.clone(),
                        namespace: namespace.clone(),
                        status: status.as_str().to_owned(),
                    });
                }
                removed += 1;
                false
            });
            !namespaces.is_empty()
        });
        self.len -= removed;
        if removed > 0 {
            tracing::debug!(removed, "idle webhook_events label pairs dropped");
        }
    }
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

    /// Counts the alerts of a delivery received at `now_ms` (epoch ms).
    pub fn record_events(&self, events: &[NewEvent], now_ms: i64) {
        let mut seen = self.seen.lock();
        for e in events {
            let namespace = e.namespace.as_deref().unwrap_or("none");
            let (alertname, namespace) = if seen.admit(
                &e.alertname,
                namespace,
                now_ms,
                self.cap,
                &self.webhook_events,
            ) {
                (e.alertname.as_str(), namespace)
            } else {
                ("other", "other")
            };
            self.webhook_events
                .get_or_create(&EventLabels {
                    alertname: alertname.to_owned(),
                    namespace: namespace.to_owned(),
                    status: e.status.as_str().to_owned(),
                })
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
        m.record_events(&events, 0);
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
            m.record_events(&parse_webhook(body.as_bytes()).unwrap(), 0);
        }
        let text = encode(&m);
        let series = text
            .lines()
            .filter(|l| l.starts_with("alert_history_webhook_events_total{"))
            .count();
        assert_eq!(series, 4, "{text}");
        assert!(text.contains("alertname=\"other\",namespace=\"other\",status=\"firing\"} 7"));
    }

    fn firing(alertname: &str) -> Vec<NewEvent> {
        let body = format!(
            r#"{{"alerts":[{{"status":"firing","labels":{{"alertname":"{alertname}"}},"startsAt":"2026-01-01T00:00:00Z"}}]}}"#
        );
        parse_webhook(body.as_bytes()).unwrap()
    }

    fn series(m: &Metrics) -> Vec<String> {
        encode(m)
            .lines()
            .filter(|l| l.starts_with("alert_history_webhook_events_total{"))
            .map(|l| l.to_owned())
            .collect()
    }

    #[test]
    fn idle_label_sets_give_their_slots_to_new_ones() {
        const MIN: i64 = 60_000;
        let m = Metrics::with_cap(3);
        for name in ["A0", "A1", "A2"] {
            m.record_events(&firing(name), 0);
        }
        m.record_events(&firing("A1"), 50 * MIN);
        // Full, and nothing idle for an hour yet: the new pair is "other".
        m.record_events(&firing("A3"), 59 * MIN);
        let text = series(&m).join("\n");
        assert!(text.contains("alertname=\"other\""), "{text}");
        assert!(!text.contains("A3"), "{text}");
        // A minute later A0 and A2 have been idle for an hour: their series
        // go and A3 (and one more) get slots; A1, seen at 50 min, stays.
        m.record_events(&firing("A3"), 61 * MIN);
        m.record_events(&firing("A4"), 61 * MIN);
        let text = series(&m).join("\n");
        assert!(!text.contains("\"A0\""), "{text}");
        assert!(!text.contains("\"A2\""), "{text}");
        assert!(text.contains("alertname=\"A1\""), "{text}");
        assert!(
            text.contains("alertname=\"A3\",namespace=\"none\",status=\"firing\"} 1"),
            "{text}"
        );
        assert!(text.contains("alertname=\"A4\""), "{text}");
        // Full again (A1, A3, A4): a fifth pair waits for the next sweep.
        m.record_events(&firing("A5"), 61 * MIN);
        assert!(!series(&m).join("\n").contains("A5"));
        assert_eq!(series(&m).len(), 4);
    }

    #[test]
    fn sweeps_are_rate_limited() {
        const MIN: i64 = 60_000;
        let m = Metrics::with_cap(1);
        m.record_events(&firing("A0"), 0);
        // The sweep at 60 min finds A0 not yet idle for an hour: B is other.
        m.record_events(&firing("B"), 60 * MIN);
        assert!(series(&m).join("\n").contains("\"other\""));
        // At 60.5 min A0 is idle, but the last sweep was half a minute ago.
        m.record_events(&firing("B"), 60 * MIN + 30_000);
        assert!(!series(&m).join("\n").contains("\"B\""));
        // At 61 min the next sweep frees A0's slot for B.
        m.record_events(&firing("B"), 61 * MIN);
        let text = series(&m).join("\n");
        assert!(
            text.contains("alertname=\"B\",namespace=\"none\",status=\"firing\"} 1"),
            "{text}"
        );
        assert!(!text.contains("\"A0\""), "{text}");
    }
}
