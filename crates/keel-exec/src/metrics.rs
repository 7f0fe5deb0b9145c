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
//!
//! [`PoolMetrics`], for a [`WorkerPool`](crate::WorkerPool):
//!
//! | name | type | labels |
//! |---|---|---|
//! | `jobs` (`jobs_total`) | counter | `outcome` = `completed`, `panicked`, `shed`, `rejected`, `abandoned` |
//! | `jobs_queued` | gauge | none |
//! | `jobs_running` | gauge | none |

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

/// Counter of worker-pool jobs, by `outcome`.
pub const JOBS: &str = "jobs";
/// Gauge of worker-pool jobs waiting for a worker.
pub const JOBS_QUEUED: &str = "jobs_queued";
/// Gauge of worker-pool jobs running.
pub const JOBS_RUNNING: &str = "jobs_running";

type OutcomeLabel = [(&'static str, &'static str); 1];

const JOB_OUTCOMES: [&str; 5] = ["completed", "panicked", "shed", "rejected", "abandoned"];

/// A [`WorkerPool`](crate::WorkerPool)'s Prometheus metrics. Cloning shares
/// the same series; register once, on the registry the binary prefixes.
///
/// Costs per job: a few atomic adds on pre-resolved series.
#[derive(Debug, Clone)]
pub struct PoolMetrics {
    jobs: Family<OutcomeLabel, Counter>,
    queued: Gauge,
    running: Gauge,
    // completed, panicked, shed, rejected, abandoned
    by_outcome: [Counter; 5],
}

impl Default for PoolMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl PoolMetrics {
    /// Fresh, unregistered metrics.
    pub fn new() -> Self {
        let jobs: Family<OutcomeLabel, Counter> = Family::default();
        let by_outcome = JOB_OUTCOMES.map(|o| jobs.get_or_create(&[("outcome", o)]).clone());
        PoolMetrics {
            jobs,
            queued: Gauge::default(),
            running: Gauge::default(),
            by_outcome,
        }
    }

    /// Registers every series in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(JOBS, "Worker-pool jobs by outcome", self.jobs.clone());
        registry.register(
            JOBS_QUEUED,
            "Worker-pool jobs waiting for a worker",
            self.queued.clone(),
        );
        registry.register(
            JOBS_RUNNING,
            "Worker-pool jobs running",
            self.running.clone(),
        );
    }

    pub(crate) fn job_queued(&self) {
        self.queued.inc();
    }

    /// A waiting job was shed for a new one: the queue length is unchanged.
    pub(crate) fn job_shed(&self) {
        self.by_outcome[2].inc();
    }

    pub(crate) fn job_rejected(&self) {
        self.by_outcome[3].inc();
    }

    pub(crate) fn job_started(&self) {
        self.queued.dec();
        self.running.inc();
    }

    pub(crate) fn job_finished(&self, panicked: bool) {
        self.running.dec();
        self.by_outcome[usize::from(panicked)].inc();
    }

    pub(crate) fn jobs_abandoned(&self, running: usize, waiting: usize) {
        self.running
            .dec_by(i64::try_from(running).unwrap_or(i64::MAX));
        self.queued
            .dec_by(i64::try_from(waiting).unwrap_or(i64::MAX));
        self.by_outcome[4].inc_by((running + waiting) as u64);
    }

    /// Jobs counted with `outcome` (`completed`, `panicked`, `shed`,
    /// `rejected` or `abandoned`) so far; 0 for any other name.
    pub fn jobs(&self, outcome: &str) -> u64 {
        JOB_OUTCOMES
            .iter()
            .position(|o| *o == outcome)
            .map_or(0, |i| self.by_outcome[i].get())
    }

    /// Jobs waiting now.
    pub fn queued(&self) -> i64 {
        self.queued.get()
    }

    /// Jobs running now.
    pub fn running(&self) -> i64 {
        self.running.get()
    }
}
