//! The controller's Prometheus metrics (prometheus-client) and the JSON
//! snapshot goman's `ExportMetrics` gave (`GET /metrics.json`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Serialize;

/// `{result}` of a reconcile pass.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `ok`, `error`, `busy`, `fenced`.
    pub result: &'static str,
}

/// `{phase}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    /// The phase.
    pub phase: &'static str,
}

/// `{from, to}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    /// Phase left.
    pub from: &'static str,
    /// Phase entered.
    pub to: &'static str,
}

/// `{cluster, phase}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterPhaseLabels {
    /// The cluster's name (validated: `[a-z0-9-]`, so safe as a label).
    pub cluster: String,
    /// Its phase.
    pub phase: &'static str,
}

/// `{service, operation, outcome}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// `ec2`, `s3`, `ssm`, `dynamodb`.
    pub service: &'static str,
    /// The API operation.
    pub operation: &'static str,
    /// `ok`, `error`, `throttled`, `rejected`.
    pub outcome: &'static str,
}

/// `{service}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    /// The service.
    pub service: &'static str,
}

/// `{service, reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    /// The service.
    pub service: &'static str,
    /// `throttled` or `transient`.
    pub reason: &'static str,
}

/// `{operation, result}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpResultLabels {
    /// The operation.
    pub operation: &'static str,
    /// Its result.
    pub result: &'static str,
}

/// `{kind, status}` of an SSM command.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    /// `install`, `status`, `drain`.
    pub kind: &'static str,
    /// SSM's final status.
    pub status: String,
}

/// `{kind}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// The command kind.
    pub kind: &'static str,
}

/// `{operation}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabel {
    /// The batch operation.
    pub operation: &'static str,
}

/// `{reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why.
    pub reason: &'static str,
}

/// Every metric, cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    reconciles: Family<ResultLabel, Counter>,
    reconcile_duration: Family<PhaseLabel, Histogram>,
    transitions: Family<TransitionLabels, Counter>,
    clusters: Family<PhaseLabel, Gauge>,
    cluster_phase_seconds: Family<ClusterPhaseLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    aws_calls: Family<CallLabels, Counter>,
    aws_duration: Family<ServiceLabel, Histogram>,
    aws_retries: Family<RetryLabels, Counter>,
    lock_ops: Family<OpResultLabels, Counter>,
    state_writes: Family<ResultLabel, Counter>,
    ssm_commands: Family<CommandLabels, Counter>,
    ssm_fanout: Family<KindLabel, Histogram>,
    batch_calls: Family<OperationLabel, Counter>,
    instances_created: Counter,
    replacements: Family<ReasonLabel, Counter>,
    short_circuits: Counter,
    /// goman's per-operation stats for `/metrics.json`.
    ops: Mutex<BTreeMap<String, OpStats>>,
    reconcile_stats: Mutex<BTreeMap<String, ReconcileStats>>,
}

/// Per-operation statistics (goman's `RecordOperation`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct OpStats {
    /// Calls.
    pub count: u64,
    /// Successful calls.
    pub successes: u64,
    /// Total time, seconds.
    pub total_seconds: f64,
    /// Items (instances) handled.
    pub items: u64,
}

/// Per-cluster reconcile statistics (goman's reconcile tracker).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReconcileStats {
    /// Passes.
    pub passes: u64,
    /// Passes that ended without error.
    pub successes: u64,
    /// Mean pass duration, seconds.
    pub average_seconds: f64,
    /// The phase after the last pass.
    pub phase: String,
    /// Seconds spent per phase (summed over passes started in it).
    pub phase_seconds: BTreeMap<String, f64>,
}

fn seconds_buckets() -> Histogram {
    // 1 ms to ~9 min.
    Histogram::new(exponential_buckets(0.001, 3.0, 13))
}

impl Metrics {
    /// Creates the metrics and registers them in `registry` (the kit's,
    /// prefixed `goman_`).
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics::unregistered();
        let i = &m.inner;
        registry.register(
            "reconcile",
            "Reconcile passes by result",
            i.reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile pass duration by the phase it started in",
            i.reconcile_duration.clone(),
        );
        registry.register(
            "phase_transitions",
            "Phase transitions",
            i.transitions.clone(),
        );
        registry.register("clusters", "Clusters by phase", i.clusters.clone());
        registry.register(
            "cluster_phase_seconds",
            "Seconds each cluster has been in its current phase",
            i.cluster_phase_seconds.clone(),
        );
        registry.register(
            "aws_calls",
            "AWS API calls (attempts) by outcome",
            i.aws_calls.clone(),
        );
        registry.register(
            "aws_call_duration_seconds",
            "AWS API attempt duration",
            i.aws_duration.clone(),
        );
        registry.register(
            "aws_retries",
            "AWS API retries by reason",
            i.aws_retries.clone(),
        );
        registry.register(
            "lock_operations",
            "DynamoDB lock operations",
            i.lock_ops.clone(),
        );
        registry.register(
            "state_writes",
            "Fenced state writes by result",
            i.state_writes.clone(),
        );
        registry.register(
            "ssm_commands",
            "SSM command invocations by kind and final status",
            i.ssm_commands.clone(),
        );
        registry.register(
            "ssm_fanout_seconds",
            "Wall time of an SSM fan-out",
            i.ssm_fanout.clone(),
        );
        registry.register(
            "batch_calls",
            "EC2 batch calls (10 instances per call at most)",
            i.batch_calls.clone(),
        );
        registry.register(
            "instances_created",
            "EC2 instances created",
            i.instances_created.clone(),
        );
        registry.register(
            "node_replacements",
            "Nodes replaced by reason",
            i.replacements.clone(),
        );
        registry.register(
            "fleet_short_circuit",
            "Times node replacement was held back because too many nodes were unhealthy",
            i.short_circuits.clone(),
        );
        m
    }

    /// Metrics registered nowhere (tests, the CLI).
    pub fn unregistered() -> Metrics {
        Metrics {
            inner: Arc::new(Inner {
                reconciles: Family::default(),
                reconcile_duration: Family::new_with_constructor(seconds_buckets),
                transitions: Family::default(),
                clusters: Family::default(),
                cluster_phase_seconds: Family::default(),
                aws_calls: Family::default(),
                aws_duration: Family::new_with_constructor(seconds_buckets),
                aws_retries: Family::default(),
                lock_ops: Family::default(),
                state_writes: Family::default(),
                ssm_commands: Family::default(),
                ssm_fanout: Family::new_with_constructor(seconds_buckets),
                batch_calls: Family::default(),
                instances_created: Counter::default(),
                replacements: Family::default(),
                short_circuits: Counter::default(),
                ops: Mutex::new(BTreeMap::new()),
                reconcile_stats: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// One AWS attempt.
    pub fn aws_call(
        &self,
        service: &'static str,
        operation: &'static str,
        outcome: &'static str,
        took: Duration,
    ) {
        self.inner
            .aws_calls
            .get_or_create(&CallLabels {
                service,
                operation,
                outcome,
            })
            .inc();
        if outcome != "rejected" {
            self.inner
                .aws_duration
                .get_or_create(&ServiceLabel { service })
                .observe(took.as_secs_f64());
        }
    }

    /// AWS calls counted so far for `service` and `operation` (every outcome).
    pub fn aws_calls(&self, service: &'static str, operation: &'static str) -> u64 {
        ["ok", "error", "throttled", "rejected"]
            .iter()
            .map(|outcome| {
                self.inner
                    .aws_calls
                    .get_or_create(&CallLabels {
                        service,
                        operation,
                        outcome,
                    })
                    .get()
            })
            .sum()
    }

    /// A retry of an AWS call.
    pub fn aws_retry(&self, service: &'static str, reason: &'static str) {
        self.inner
            .aws_retries
            .get_or_create(&RetryLabels { service, reason })
            .inc();
    }

    /// A lock operation.
    pub fn lock_op(&self, operation: &'static str, result: &'static str) {
        self.inner
            .lock_ops
            .get_or_create(&OpResultLabels { operation, result })
            .inc();
    }

    /// A state write.
    pub fn state_write(&self, result: &'static str) {
        self.inner
            .state_writes
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// State writes counted with `result`.
    pub fn state_writes(&self, result: &'static str) -> u64 {
        self.inner
            .state_writes
            .get_or_create(&ResultLabel { result })
            .get()
    }

    /// One SSM invocation finished.
    pub fn ssm_command(&self, kind: &'static str, status: &str) {
        self.inner
            .ssm_commands
            .get_or_create(&CommandLabels {
                kind,
                status: status.to_owned(),
            })
            .inc();
    }

    /// One SSM fan-out finished.
    pub fn ssm_fanout(&self, kind: &'static str, took: Duration, nodes: usize, ok: bool) {
        self.inner
            .ssm_fanout
            .get_or_create(&KindLabel { kind })
            .observe(took.as_secs_f64());
        self.operation(&format!("ParallelSSM.{kind}"), took, ok, nodes as u64);
    }

    /// One EC2 batch call.
    pub fn batch_call(&self, operation: &'static str) {
        self.inner
            .batch_calls
            .get_or_create(&OperationLabel { operation })
            .inc();
    }

    /// Batch calls counted for `operation`.
    pub fn batch_calls(&self, operation: &'static str) -> u64 {
        self.inner
            .batch_calls
            .get_or_create(&OperationLabel { operation })
            .get()
    }

    /// An instance created.
    pub fn instance_created(&self) {
        self.inner.instances_created.inc();
    }

    /// A node replaced.
    pub fn replacement(&self, reason: &'static str) {
        self.inner
            .replacements
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// The fleet short-circuit held replacements back.
    pub fn short_circuit(&self) {
        self.inner.short_circuits.inc();
    }

    /// A phase transition.
    pub fn transition(&self, from: &'static str, to: &'static str) {
        self.inner
            .transitions
            .get_or_create(&TransitionLabels { from, to })
            .inc();
    }

    /// goman's `RecordOperation`.
    pub fn operation(&self, name: &str, took: Duration, ok: bool, items: u64) {
        let mut ops = self.inner.ops.lock();
        let s = ops.entry(name.to_owned()).or_default();
        s.count += 1;
        s.successes += u64::from(ok);
        s.total_seconds += took.as_secs_f64();
        s.items += items;
    }

    /// A reconcile pass of `cluster` that started in `phase` and ended in
    /// `after`.
    pub fn reconcile(
        &self,
        cluster: &str,
        phase: &'static str,
        after: &str,
        result: &'static str,
        took: Duration,
    ) {
        self.inner
            .reconciles
            .get_or_create(&ResultLabel { result })
            .inc();
        self.inner
            .reconcile_duration
            .get_or_create(&PhaseLabel { phase })
            .observe(took.as_secs_f64());
        let mut stats = self.inner.reconcile_stats.lock();
        let s = stats.entry(cluster.to_owned()).or_default();
        s.passes += 1;
        s.successes += u64::from(result == "ok");
        s.average_seconds += (took.as_secs_f64() - s.average_seconds) / s.passes as f64;
        s.phase = after.to_owned();
        *s.phase_seconds.entry(phase.to_owned()).or_default() += took.as_secs_f64();
    }

    /// Passes counted with `result`.
    pub fn reconciles(&self, result: &'static str) -> u64 {
        self.inner
            .reconciles
            .get_or_create(&ResultLabel { result })
            .get()
    }

    /// Replaces the per-phase cluster gauges with `clusters` (name, phase,
    /// seconds in it).
    pub fn set_clusters(&self, clusters: &[(String, &'static str, f64)]) {
        self.inner.clusters.clear();
        self.inner.cluster_phase_seconds.clear();
        for phase in crate::model::Phase::ALL {
            self.inner
                .clusters
                .get_or_create(&PhaseLabel {
                    phase: phase.as_str(),
                })
                .set(0);
        }
        for (cluster, phase, seconds) in clusters {
            self.inner
                .clusters
                .get_or_create(&PhaseLabel { phase })
                .inc();
            self.inner
                .cluster_phase_seconds
                .get_or_create(&ClusterPhaseLabels {
                    cluster: cluster.clone(),
                    phase,
                })
                .set(*seconds);
        }
        self.inner
            .reconcile_stats
            .lock()
            .retain(|name, _| clusters.iter().any(|(c, _, _)| c == name));
    }

    /// The JSON snapshot (goman's `GetSnapshot`): per-cluster reconcile
    /// stats and per-operation stats.
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "reconciliation": *self.inner.reconcile_stats.lock(),
            "operations": *self.inner.ops.lock(),
            "instancesCreated": self.inner.instances_created.get(),
            "fleetShortCircuits": self.inner.short_circuits.get(),
        })
    }
}
