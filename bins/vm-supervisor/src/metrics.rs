//! The supervisor's metrics, metald's names under the program prefix
//! (`vm_supervisor_`): orphans by reason, recovery attempts by outcome,
//! successes, recovery duration by outcome, healthy and unhealthy VMs.
//! The health checks themselves (`vm_health_checks_total`,
//! `vm_health_check_failures_total`, `vm_health_check_duration_seconds`)
//! are keel-health's metrics registered under `vm_health`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

fn duration_histogram() -> Histogram {
    // 50 ms to about 14 min.
    Histogram::new(exponential_buckets(0.05, 2.0, 15))
}

/// The metrics (cheap to clone; clones share).
#[derive(Clone, Debug)]
pub struct Metrics {
    orphaned: Family<Reason, Counter>,
    attempts: Family<OutcomeLabel, Counter>,
    successes: Counter,
    duration: Family<OutcomeLabel, Histogram, fn() -> Histogram>,
    healthy: Gauge,
    unhealthy: Gauge,
    short_circuit: Gauge,
    adopted: Counter,
    unknown_processes: Gauge,
    health_checks_enabled: Gauge,
    recovery_enabled: Gauge,
    reloads: Family<OutcomeLabel, Counter>,
    reload_ok: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            orphaned: Family::default(),
            attempts: Family::default(),
            successes: Counter::default(),
            duration: Family::new_with_constructor(duration_histogram),
            healthy: Gauge::default(),
            unhealthy: Gauge::default(),
            short_circuit: Gauge::default(),
            adopted: Counter::default(),
            unknown_processes: Gauge::default(),
            health_checks_enabled: Gauge::default(),
            recovery_enabled: Gauge::default(),
            reloads: Family::default(),
            reload_ok: Gauge::default(),
        }
    }
}

impl Metrics {
    /// Registers the metrics (short names; the program adds its prefix).
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "vm_orphaned",
            "Orphaned VMs detected, by reason",
            self.orphaned.clone(),
        );
        r.register(
            "vm_recovery_attempts",
            "Recovery attempts, by outcome",
            self.attempts.clone(),
        );
        r.register(
            "vm_recovery_success",
            "Successful recoveries",
            self.successes.clone(),
        );
        r.register(
            "vm_recovery_duration_seconds",
            "Recovery duration, by outcome",
            self.duration.clone(),
        );
        r.register(
            "reliability_healthy_vms",
            "VMs healthy now",
            self.healthy.clone(),
        );
        r.register(
            "reliability_unhealthy_vms",
            "VMs unhealthy now",
            self.unhealthy.clone(),
        );
        r.register(
            "fleet_short_circuit",
            "1 while recovery is suspended because too many VMs are unhealthy",
            self.short_circuit.clone(),
        );
        r.register(
            "vm_adopted",
            "Running VMs adopted after a supervisor restart",
            self.adopted.clone(),
        );
        r.register(
            "unknown_processes",
            "VM-looking processes the registry did not know at start, left alone (UNKNOWN_PROCESSES)",
            self.unknown_processes.clone(),
        );
        r.register(
            "health_checks_enabled",
            "1 while health checks are switched on (POST /health-checks/enable|disable)",
            self.health_checks_enabled.clone(),
        );
        r.register(
            "recovery_enabled",
            "1 while automatic recovery is switched on (POST /recovery/enable|disable)",
            self.recovery_enabled.clone(),
        );
        r.register(
            "config_reloads",
            "Reloads of SUPERVISOR_CONFIG, by outcome (success|failure)",
            self.reloads.clone(),
        );
        r.register(
            "config_last_reload_success",
            "0 after a refused reload of SUPERVISOR_CONFIG (the old one runs), 1 otherwise",
            self.reload_ok.clone(),
        );
    }

    /// At start: everything switched on, the file good, both reload
    /// outcomes shown at 0.
    pub fn started(&self) {
        self.switches(true, true);
        self.reload_ok.set(1);
        for outcome in ["success", "failure"] {
            let _ = self.reloads.get_or_create(&OutcomeLabel { outcome });
        }
    }

    /// The operator's switches.
    pub fn switches(&self, health_checks: bool, recovery: bool) {
        self.health_checks_enabled.set(i64::from(health_checks));
        self.recovery_enabled.set(i64::from(recovery));
    }

    /// A reload of `SUPERVISOR_CONFIG` ended.
    pub fn reload(&self, ok: bool) {
        let outcome = if ok { "success" } else { "failure" };
        self.reloads.get_or_create(&OutcomeLabel { outcome }).inc();
        self.reload_ok.set(i64::from(ok));
    }

    /// Reloads counted for `outcome` (tests).
    pub fn reload_count(&self, outcome: &'static str) -> u64 {
        self.reloads.get_or_create(&OutcomeLabel { outcome }).get()
    }

    /// An orphan was detected.
    pub fn orphaned(&self, reason: &'static str) {
        self.orphaned.get_or_create(&Reason { reason }).inc();
    }

    /// A recovery attempt ended.
    pub fn attempt(&self, outcome: &'static str, took: Duration) {
        self.attempts.get_or_create(&OutcomeLabel { outcome }).inc();
        self.duration
            .get_or_create(&OutcomeLabel { outcome })
            .observe(took.as_secs_f64());
        if outcome == "success" {
            self.successes.inc();
        }
    }

    /// Fleet gauges.
    pub fn fleet(&self, healthy: usize, unhealthy: usize, short_circuit: bool) {
        self.healthy.set(healthy as i64);
        self.unhealthy.set(unhealthy as i64);
        self.short_circuit.set(i64::from(short_circuit));
    }

    /// A VM was adopted.
    pub fn adopted(&self) {
        self.adopted.inc();
    }

    /// VM-looking processes the registry did not know at start.
    pub fn set_unknown_processes(&self, n: usize) {
        self.unknown_processes
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Orphans counted for `reason` (tests).
    pub fn orphaned_count(&self, reason: &'static str) -> u64 {
        self.orphaned.get_or_create(&Reason { reason }).get()
    }

    /// Successful recoveries (tests).
    pub fn success_count(&self) -> u64 {
        self.successes.get()
    }
}
