//! Prometheus metrics for the health checker (feature `metrics`).
//!
//! Names are short and unprefixed; the program adds its prefix with
//! `Registry::sub_registry_with_prefix`. Label values are bounded: the only
//! label is `reason`, one of [`FailureKind::as_str`]. Target ids are never
//! labels (a fleet of VMs would make the series count unbounded); per-target
//! detail belongs in [`HealthChecker::snapshot`](crate::HealthChecker::snapshot).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::probe::FailureKind;
use crate::state::HealthState;

/// Counter: checks completed (exported as `checks_total`).
pub const CHECKS: &str = "checks";
/// Counter family: failed checks by `reason` (exported as
/// `check_failures_total{reason="timeout"}` ...).
pub const CHECK_FAILURES: &str = "check_failures";
/// Histogram: how long checks took, in seconds (timeouts included, at the
/// timeout).
pub const CHECK_DURATION_SECONDS: &str = "check_duration_seconds";
/// Gauge: targets currently healthy.
pub const TARGETS_HEALTHY: &str = "targets_healthy";
/// Gauge: targets currently unhealthy.
pub const TARGETS_UNHEALTHY: &str = "targets_unhealthy";
/// Gauge: targets not yet judged.
pub const TARGETS_UNKNOWN: &str = "targets_unknown";

/// The `reason` label of [`CHECK_FAILURES`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// The checker's metrics. Create one, [`register`](Self::register) it, and
/// pass it to
/// [`HealthCheckerBuilder::metrics`](crate::HealthCheckerBuilder::metrics).
///
/// Cloning shares the same series. Recording a check costs a few relaxed
/// atomic adds and one histogram observation (a short lock inside
/// `prometheus-client`); failure counters are resolved once at creation, so
/// no label lookup happens per check.
///
/// ```
/// use keel_health::{HealthChecker, HealthMetrics};
/// use prometheus_client::registry::Registry;
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let mut registry = Registry::default();
/// let metrics = HealthMetrics::new();
/// metrics.register(registry.sub_registry_with_prefix("supervisor_health"));
/// let checker = HealthChecker::builder().metrics(metrics).build().unwrap();
/// # drop(checker);
/// let mut text = String::new();
/// prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
/// assert!(text.contains("supervisor_health_checks_total 0"));
/// assert!(text.contains("supervisor_health_check_failures_total{reason=\"timeout\"} 0"));
/// # });
/// ```
#[derive(Clone, Debug)]
pub struct HealthMetrics {
    checks: Counter,
    failures: Family<ReasonLabel, Counter>,
    failures_by_kind: Arc<[Counter; FailureKind::ALL.len()]>,
    duration: Histogram,
    healthy: Gauge,
    unhealthy: Gauge,
    unknown: Gauge,
}

impl HealthMetrics {
    /// Fresh metrics, all zero. Every `reason` series exists from the start
    /// (at zero), so `rate()` over it works before the first failure.
    pub fn new() -> Self {
        let failures = Family::<ReasonLabel, Counter>::default();
        let failures_by_kind = Arc::new(FailureKind::ALL.map(|kind| {
            failures.get_or_create_owned(&ReasonLabel {
                reason: kind.as_str(),
            })
        }));
        HealthMetrics {
            checks: Counter::default(),
            failures,
            failures_by_kind,
            // 0.5 ms .. ~16 s: loopback connects up to slow HTTP endpoints.
            duration: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.0005, 2.0, 16,
            )),
            healthy: Gauge::default(),
            unhealthy: Gauge::default(),
            unknown: Gauge::default(),
        }
    }

    /// Registers every series under `registry` (which may be a prefixed
    /// sub-registry).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(CHECKS, "Health checks completed", self.checks.clone());
        registry.register(
            CHECK_FAILURES,
            "Failed health checks by reason",
            self.failures.clone(),
        );
        registry.register(
            CHECK_DURATION_SECONDS,
            "Duration of health checks in seconds",
            self.duration.clone(),
        );
        registry.register(
            TARGETS_HEALTHY,
            "Targets currently healthy",
            self.healthy.clone(),
        );
        registry.register(
            TARGETS_UNHEALTHY,
            "Targets currently unhealthy",
            self.unhealthy.clone(),
        );
        registry.register(
            TARGETS_UNKNOWN,
            "Targets not yet judged healthy or unhealthy",
            self.unknown.clone(),
        );
    }

    pub(crate) fn on_check(&self, duration: Duration, failure: Option<FailureKind>) {
        self.checks.inc();
        self.duration.observe(duration.as_secs_f64());
        if let Some(kind) = failure {
            self.failures_by_kind[kind as usize].inc();
        }
    }

    fn gauge(&self, state: HealthState) -> &Gauge {
        match state {
            HealthState::Unknown => &self.unknown,
            HealthState::Healthy => &self.healthy,
            HealthState::Unhealthy => &self.unhealthy,
        }
    }

    pub(crate) fn on_added(&self) {
        self.unknown.inc();
    }

    pub(crate) fn on_transition(&self, old: HealthState, new: HealthState) {
        self.gauge(old).dec();
        self.gauge(new).inc();
    }

    pub(crate) fn on_removed(&self, state: HealthState) {
        self.gauge(state).dec();
    }
}

impl Default for HealthMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_counters_are_indexed_by_kind() {
        for (i, kind) in FailureKind::ALL.iter().enumerate() {
            assert_eq!(*kind as usize, i, "ALL must follow declaration order");
        }
        let m = HealthMetrics::new();
        m.on_check(Duration::from_millis(3), Some(FailureKind::HttpStatus));
        m.on_check(Duration::from_millis(1), None);
        let label = ReasonLabel {
            reason: "http_status",
        };
        assert_eq!(m.failures.get_or_create(&label).get(), 1);
        assert_eq!(m.checks.get(), 2);
    }
}
