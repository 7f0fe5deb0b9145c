//! The watchdog's Prometheus metrics, named as the issue names them (no
//! program prefix; see the README):
//!
//! | name | type | labels |
//! |---|---|---|
//! | `vm_checks_total` | counter | `vm`, `status` (the status seen, or `FAILED`) |
//! | `vm_check_duration_seconds` | histogram | none: one histogram for every VM |
//! | `api_errors_total` | counter | `endpoint` (`instances.get`, `instances.list`, `instances.start`, `operations.get`, `proxy.info`, `proxy.start`, `iam`) |
//! | `alerts_sent_total` | counter | `priority` (accepted by Telegram) |
//! | `alert_reaction_seconds` | histogram | `priority`: status change observed → alert accepted by Telegram |
//! | `api_breaker_open` | gauge | `group` (`compute`, `proxy:{host}:{port}`): 1 while the group's circuit breaker is open |
//! | `config_valid` | gauge | none: 0 while `vms.yaml` on disk is invalid (the running configuration is the last valid one) |
//! | `config_last_reload_timestamp_seconds` | gauge | none: when a valid `vms.yaml` was last applied (Unix time) |
//! | `telegram_up` | gauge | none: 0 while Telegram's circuit breaker is not closed (alerts cannot be delivered) |
//!
//! Per VM there is only the check counter: a histogram per VM would be
//! 15 series per VM (14,000 more at 1,000 VMs) for a latency that is the
//! API's, not the VM's.
//!
//! `vm` values are the names in `vms.yaml`: bounded by the configuration,
//! and written through keel-telemetry's [`LabelValue`] (escaped, capped at
//! 256 bytes), so a name with a quote or a newline cannot break `/metrics`;
//! a VM's series are removed when it leaves the file.

use std::sync::Arc;
use std::time::Duration;

use keel_notify::Priority;
use keel_telemetry::LabelValue;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::status::VmStatus;

/// The `status` label of a check that could not read the status.
pub const FAILED: &str = "FAILED";

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CheckLabels {
    vm: LabelValue,
    status: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct GroupLabel {
    group: LabelValue,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ActionLabel {
    action: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PriorityLabel {
    priority: &'static str,
}

fn gauge(value: i64) -> Gauge {
    let g = Gauge::default();
    g.set(value);
    g
}

fn check_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 12))
}

fn reaction_buckets() -> Histogram {
    Histogram::new([
        0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0,
    ])
}

#[derive(Debug)]
struct Inner {
    checks: Family<CheckLabels, Counter>,
    check_duration: Histogram,
    api_errors: Family<EndpointLabel, Counter>,
    alerts_sent: Family<PriorityLabel, Counter>,
    reaction: Family<PriorityLabel, Histogram, fn() -> Histogram>,
    breaker_open: Family<GroupLabel, Gauge>,
    config_valid: Gauge,
    last_reload: Gauge,
    telegram_up: Gauge,
    operator_actions: Family<ActionLabel, Counter>,
    telegram_commands: Family<ResultLabel, Counter>,
}

/// The metrics, shared by clones. Updates are atomic; nothing locks except
/// the first use of a label set.
#[derive(Debug, Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh metrics, not registered anywhere yet.
    pub fn new() -> Self {
        Metrics {
            inner: Arc::new(Inner {
                checks: Family::default(),
                check_duration: check_buckets(),
                api_errors: Family::default(),
                alerts_sent: Family::default(),
                reaction: Family::new_with_constructor(reaction_buckets),
                breaker_open: Family::default(),
                config_valid: gauge(1),
                last_reload: gauge(0),
                telegram_up: gauge(1),
                operator_actions: Family::default(),
                telegram_commands: Family::default(),
            }),
        }
    }

    /// Registers every metric in `registry` under the names above.
    pub fn register(&self, registry: &mut Registry) {
        let i = &self.inner;
        registry.register("vm_checks", "VM status checks by result", i.checks.clone());
        registry.register_with_unit(
            "vm_check_duration",
            "Duration of one VM status check, retries included (all VMs)",
            Unit::Seconds,
            i.check_duration.clone(),
        );
        registry.register(
            "api_errors",
            "Failed cloud API attempts by endpoint",
            i.api_errors.clone(),
        );
        registry.register(
            "alerts_sent",
            "Alerts accepted by Telegram by priority",
            i.alerts_sent.clone(),
        );
        registry.register_with_unit(
            "alert_reaction",
            "Status change observed to alert accepted by Telegram",
            Unit::Seconds,
            i.reaction.clone(),
        );
        registry.register(
            "api_breaker_open",
            "1 while the cloud API group's circuit breaker is open",
            i.breaker_open.clone(),
        );
        registry.register(
            "config_valid",
            "0 while vms.yaml on disk is invalid (the last valid one runs)",
            i.config_valid.clone(),
        );
        registry.register(
            "config_last_reload_timestamp_seconds",
            "When a valid vms.yaml was last applied (Unix time)",
            i.last_reload.clone(),
        );
        registry.register(
            "telegram_up",
            "0 while Telegram's circuit breaker is not closed",
            i.telegram_up.clone(),
        );
        registry.register(
            "operator_actions",
            "Operator actions done (admin API or Telegram command) by action",
            i.operator_actions.clone(),
        );
        registry.register(
            "telegram_commands",
            "Telegram commands by result: handled, or ignored (another chat or user)",
            i.telegram_commands.clone(),
        );
    }

    /// An operator action was done: `pause`, `resume`, `maintenance`,
    /// `maintenance_end`, `mute`, `unmute`, `ack`.
    pub fn operator_action(&self, action: &'static str) {
        self.inner
            .operator_actions
            .get_or_create(&ActionLabel { action })
            .inc();
    }

    /// Operator actions of `action` done so far.
    pub fn operator_actions(&self, action: &'static str) -> u64 {
        self.inner
            .operator_actions
            .get_or_create(&ActionLabel { action })
            .get()
    }

    /// A Telegram command was `handled` or `ignored`.
    pub fn telegram_command(&self, result: &'static str) {
        self.inner
            .telegram_commands
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Telegram commands with `result` so far.
    pub fn telegram_commands(&self, result: &'static str) -> u64 {
        self.inner
            .telegram_commands
            .get_or_create(&ResultLabel { result })
            .get()
    }

    /// The breaker of API `group` opened (`true`) or closed.
    pub fn breaker_open(&self, group: &str, open: bool) {
        self.inner
            .breaker_open
            .get_or_create(&GroupLabel {
                group: group.into(),
            })
            .set(i64::from(open));
    }

    /// `vms.yaml` was found valid (and applied, at `applied_at` Unix
    /// seconds, when it changed) or invalid.
    pub fn config(&self, valid: bool, applied_at: Option<i64>) {
        self.inner.config_valid.set(i64::from(valid));
        if let Some(at) = applied_at {
            self.inner.last_reload.set(at);
        }
    }

    /// Whether alerts can be delivered to Telegram now.
    pub fn telegram(&self, up: bool) {
        self.inner.telegram_up.set(i64::from(up));
    }

    /// One check of `vm` that saw `status` (`None`: it failed) in `took`.
    pub fn check(&self, vm: &str, status: Option<VmStatus>, took: Duration) {
        let status = status.map_or(FAILED, VmStatus::as_str);
        let vm = LabelValue::from(vm);
        self.inner.check_duration.observe(took.as_secs_f64());
        self.inner
            .checks
            .get_or_create(&CheckLabels { vm, status })
            .inc();
    }

    /// Checks of `vm` that saw `status` (or [`FAILED`]) so far.
    pub fn checks(&self, vm: &str, status: &'static str) -> u64 {
        self.inner
            .checks
            .get_or_create(&CheckLabels {
                vm: vm.into(),
                status,
            })
            .get()
    }

    /// One failed API attempt at `endpoint`.
    pub fn api_error(&self, endpoint: &'static str) {
        self.inner
            .api_errors
            .get_or_create(&EndpointLabel { endpoint })
            .inc();
    }

    /// Failed API attempts at `endpoint` so far.
    pub fn api_errors(&self, endpoint: &'static str) -> u64 {
        self.inner
            .api_errors
            .get_or_create(&EndpointLabel { endpoint })
            .get()
    }

    /// One alert of `priority` accepted by the chat; `reaction` is the time
    /// since the status change it reports was observed, when known.
    pub fn alert_sent(&self, priority: Priority, reaction: Option<Duration>) {
        let label = PriorityLabel {
            priority: priority.as_str(),
        };
        self.inner.alerts_sent.get_or_create(&label).inc();
        if let Some(r) = reaction {
            self.inner
                .reaction
                .get_or_create(&label)
                .observe(r.as_secs_f64());
        }
    }

    /// Alerts of `priority` accepted so far.
    pub fn alerts_sent(&self, priority: Priority) -> u64 {
        self.inner
            .alerts_sent
            .get_or_create(&PriorityLabel {
                priority: priority.as_str(),
            })
            .get()
    }

    /// Drops the series of a VM that left the configuration.
    pub fn remove_vm(&self, vm: &str) {
        let vm = LabelValue::from(vm);
        for status in VmStatus::ALL
            .iter()
            .map(|s| s.as_str())
            .chain(std::iter::once(FAILED))
        {
            self.inner.checks.remove(&CheckLabels {
                vm: vm.clone(),
                status,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;

    #[test]
    fn names_match_the_issue() {
        let metrics = Metrics::new();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.check("web-1", Some(VmStatus::Running), Duration::from_millis(20));
        metrics.check("web-1", None, Duration::from_millis(20));
        metrics.api_error("instances.get");
        metrics.alert_sent(Priority::Critical, Some(Duration::from_secs(3)));
        metrics.breaker_open("compute", true);
        metrics.config(false, None);
        metrics.config(false, Some(1_700_000_000));
        metrics.telegram(false);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for needle in [
            r#"vm_checks_total{vm="web-1",status="RUNNING"} 1"#,
            r#"vm_checks_total{vm="web-1",status="FAILED"} 1"#,
            "vm_check_duration_seconds_count 2\n",
            r#"api_errors_total{endpoint="instances.get"} 1"#,
            r#"alerts_sent_total{priority="critical"} 1"#,
            r#"alert_reaction_seconds_bucket{le="4.0",priority="critical"} 1"#,
            r#"api_breaker_open{group="compute"} 1"#,
            "config_valid 0\n",
            "config_last_reload_timestamp_seconds 1700000000\n",
            "telegram_up 0\n",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        metrics.remove_vm("web-1");
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(!text.contains("web-1"), "{text}");
    }

    #[test]
    fn series_stay_bounded_at_a_thousand_vms() {
        let metrics = Metrics::new();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        for i in 0..1_000 {
            metrics.check(
                &format!("vm-{i}"),
                Some(VmStatus::Running),
                Duration::from_millis(50),
            );
        }
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        let histogram_lines = text
            .lines()
            .filter(|l| l.starts_with("vm_check_duration_seconds"))
            .count();
        // 12 buckets + the +Inf one, the sum and the count: one histogram.
        assert_eq!(histogram_lines, 15, "{text}");
        assert!(text.contains("vm_check_duration_seconds_count 1000\n"));
        let counters = text
            .lines()
            .filter(|l| l.starts_with("vm_checks_total{"))
            .count();
        assert_eq!(counters, 1_000, "one counter per VM and status seen");
    }

    #[test]
    fn vm_names_are_escaped() {
        let metrics = Metrics::new();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.check(
            "db \"main\"\nx",
            Some(VmStatus::Running),
            Duration::from_millis(5),
        );
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"vm_checks_total{vm="db \"main\"\nx",status="RUNNING"} 1"#),
            "{text}"
        );
        assert_eq!(metrics.checks("db \"main\"\nx", "RUNNING"), 1);
    }
}
