//! Prometheus metrics (feature `metrics`).
//!
//! One [`ExecMetrics`] can be shared by any number of executors (it is a set
//! of `Arc`s): clone it into each builder and register it once. Names are
//! short and unprefixed; the binary adds its prefix with
//! `Registry::sub_registry_with_prefix`.
//!
//! | name | type | labels |
//! |---|---|---|
//! | `items` (`items_total`) | counter | `status` = `succeeded`, `failed`, `timed_out`, `cancelled` |
//! | `item_duration_seconds` | histogram (1 ms .. 65 s) | none |
//! | `in_flight` | gauge | none |
//! | `concurrency_limit` | gauge | none |
//! | `batches` (`batches_total`) | counter | `status` = `succeeded`, `failed`, `timed_out`, `cancelled` |

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::report::Status;

/// Counter of finished items, by `status`.
pub const ITEMS: &str = "items";
/// Histogram of item durations, in seconds.
pub const ITEM_DURATION: &str = "item_duration";
/// Gauge of items running now.
pub const IN_FLIGHT: &str = "in_flight";
/// Gauge of the current concurrency limit (fixed, or the adaptive limit).
pub const CONCURRENCY_LIMIT: &str = "concurrency_limit";
/// Counter of finished batch operations, by `status`.
pub const BATCHES: &str = "batches";

type StatusLabel = [(&'static str, &'static str); 1];

/// The executors' Prometheus metrics. Cloning shares the same series.
///
/// Costs, per item, when set: two atomic adds (in-flight), one atomic add
/// (outcome), and one histogram observation (a short lock inside
/// prometheus-client). Nothing is recorded when no metrics are set.
#[derive(Debug, Clone)]
pub struct ExecMetrics {
    items: Family<StatusLabel, Counter>,
    batches: Family<StatusLabel, Counter>,
    item_duration: Histogram,
    in_flight: Gauge,
    concurrency_limit: Gauge,
    // Pre-resolved children, so recording never looks a label set up.
    items_by_status: [Counter; 4],
    batches_by_status: [Counter; 4],
}

impl Default for ExecMetrics {
    fn default() -> Self {
        Self::new()
    }
}

fn status_index(status: Status) -> usize {
    match status {
        Status::Succeeded => 0,
        Status::Failed => 1,
        Status::TimedOut => 2,
        Status::Cancelled => 3,
    }
}

fn resolve(family: &Family<StatusLabel, Counter>) -> [Counter; 4] {
    Status::ALL.map(|s| family.get_or_create(&[("status", s.as_str())]).clone())
}

impl ExecMetrics {
    /// Fresh, unregistered metrics.
    pub fn new() -> Self {
        let items = Family::default();
        let batches = Family::default();
        let items_by_status = resolve(&items);
        let batches_by_status = resolve(&batches);
        ExecMetrics {
            items,
            batches,
            // 1 ms, 2 ms, ... ~65 s.
            item_duration: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            in_flight: Gauge::default(),
            concurrency_limit: Gauge::default(),
            items_by_status,
            batches_by_status,
        }
    }

    /// Registers every series in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            ITEMS,
            "Items finished by the executor, by status",
            self.items.clone(),
        );
        registry.register_with_unit(
            ITEM_DURATION,
            "Duration of one item, retries included",
            Unit::Seconds,
            self.item_duration.clone(),
        );
        registry.register(IN_FLIGHT, "Items running now", self.in_flight.clone());
        registry.register(
            CONCURRENCY_LIMIT,
            "Current concurrency limit (fixed or adaptive)",
            self.concurrency_limit.clone(),
        );
        registry.register(
            BATCHES,
            "Batch operations finished, by status",
            self.batches.clone(),
        );
    }

    pub(crate) fn item_started(&self) {
        self.in_flight.inc();
    }

    pub(crate) fn items_started(&self, n: usize) {
        self.in_flight.inc_by(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub(crate) fn items_stopped(&self, n: usize) {
        self.in_flight.dec_by(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub(crate) fn item_finished(&self, status: Status, duration: Duration, was_running: bool) {
        if was_running {
            self.in_flight.dec();
            self.item_duration.observe(duration.as_secs_f64());
        }
        self.items_by_status[status_index(status)].inc();
    }

    pub(crate) fn batch_finished(&self, status: Status) {
        self.batches_by_status[status_index(status)].inc();
    }

    pub(crate) fn set_limit(&self, limit: usize) {
        self.concurrency_limit
            .set(i64::try_from(limit).unwrap_or(i64::MAX));
    }

    /// Items counted with `status` so far (for tests and status pages).
    pub fn items(&self, status: Status) -> u64 {
        self.items_by_status[status_index(status)].get()
    }

    /// Batches counted with `status` so far.
    pub fn batches(&self, status: Status) -> u64 {
        self.batches_by_status[status_index(status)].get()
    }

    /// Items running now.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.get()
    }

    /// The concurrency limit last set.
    pub fn concurrency_limit(&self) -> i64 {
        self.concurrency_limit.get()
    }
}
