//! One run: pods from the API server → metrics from Prometheus → score →
//! decide → safety → act (or explain) → record → report.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use serde::Serialize;
use tokio::time::Instant;

use crate::config::{DeleteMode, Settings};
use crate::decide::{self, Chosen, HpaTarget, PodInput, PodReport, Refused};
use crate::kube::{Kube, KubeError, Pod};
use crate::prom::Prometheus;
use crate::record::{RECORD_ANNOTATION, Record, State, Verification};
use crate::stats::Stats;

/// The documented exit codes.
pub mod exit {
    /// Acted, or nothing to do (balanced, cooldown, dry run).
    pub const OK: u8 = 0;
    /// Refused by a safety check or a PodDisruptionBudget.
    pub const REFUSED: u8 = 2;
    /// Prometheus unavailable.
    pub const PROMETHEUS: u8 = 3;
    /// Kubernetes API unavailable (or answering what it should not).
    pub const KUBERNETES: u8 = 4;
    /// Acted, but a replacement pod did not become Ready within `PACING`.
    pub const PACING: u8 = 5;
    /// Invalid configuration.
    pub const CONFIG: u8 = 64;
}

/// The JSON report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Strategy name.
    pub strategy: &'static str,
    /// Dry run.
    pub dry_run: bool,
    /// Whether a pod was evicted or deleted.
    pub acted: bool,
    /// The exit code.
    pub exit_code: u8,
    /// Every pod.
    pub pods: Vec<PodReport>,
    /// Pods chosen (and evicted or deleted unless dry run or refused).
    pub chosen: Vec<Chosen>,
    /// Pods skipped or refused, and run-wide refusals (`*`).
    pub refused: Vec<Refused>,
    /// Pods actually evicted or deleted.
    pub evicted: Vec<String>,
    /// Why.
    pub explanation: String,
    /// Statistics per metric.
    pub stats: BTreeMap<String, Stats>,
    /// The last action's outcome, when this run verified it.
    pub previous: Option<Verification>,
    /// Seconds the run took.
    pub duration_seconds: f64,
}

impl Report {
    fn new(settings: &Settings) -> Report {
        Report {
            strategy: settings.strategy.as_str(),
            dry_run: settings.dry_run,
            acted: false,
            exit_code: exit::OK,
            pods: Vec::new(),
            chosen: Vec::new(),
            refused: Vec::new(),
            evicted: Vec::new(),
            explanation: String::new(),
            stats: BTreeMap::new(),
            previous: None,
            duration_seconds: 0.0,
        }
    }

    fn refuse(&mut self, why: impl Into<String>) {
        let why = why.into();
        self.explanation.clone_from(&why);
        self.refused.push(Refused {
            name: "*".into(),
            why,
        });
        self.exit_code = exit::REFUSED;
    }
}

/// The clients a run uses.
#[derive(Debug, Clone)]
pub struct Clients {
    /// Prometheus.
    pub prometheus: Prometheus,
    /// Kubernetes.
    pub kube: Kube,
    /// This run's id (the lock holder).
    pub run_id: String,
}

/// Whether the Deployment is rolling out: a spec not yet observed, pods of
/// an old template, or more pods than wanted.
pub fn rolling_out(deployment: &Deployment) -> Option<String> {
    let spec = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let generation = deployment.metadata.generation.unwrap_or(0);
    let status = deployment.status.clone().unwrap_or_default();
    let observed = status.observed_generation.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let replicas = status.replicas.unwrap_or(0);
    if observed < generation {
        Some(format!(
            "deployment generation {generation} not yet observed ({observed})"
        ))
    } else if updated < spec {
        Some(format!(
            "deployment rolling out: {updated}/{spec} pods updated"
        ))
    } else if replicas > spec {
        Some(format!(
            "deployment rolling out: {replicas} pods for {spec} replicas"
        ))
    } else {
        None
    }
}

/// Whether the HPA is changing the replica count.
pub fn hpa_scaling(hpa: &HorizontalPodAutoscaler) -> Option<String> {
    let status = hpa.status.as_ref()?;
    let current = status.current_replicas?;
    let desired = status.desired_replicas;
    (current != desired).then(|| format!("HPA scaling: {current} -> {desired} replicas"))
}

/// The HPA's CPU utilisation target.
pub fn hpa_target(hpa: &HorizontalPodAutoscaler) -> Option<HpaTarget> {
    hpa.spec
        .as_ref()?
        .metrics
        .as_ref()?
        .iter()
        .filter(|m| m.type_ == "Resource")
        .filter_map(|m| m.resource.as_ref())
        .find(|r| r.name == "cpu")
        .and_then(|r| r.target.average_utilization)
        .map(|p| HpaTarget {
            cpu_utilization_percent: f64::from(p),
        })
}

fn inputs(
    pods: &[Pod],
    metrics: &crate::prom::Metrics,
    min_age: Duration,
    now: DateTime<Utc>,
) -> Vec<PodInput> {
    let min_age = chrono::Duration::from_std(min_age).unwrap_or(chrono::Duration::MAX);
    pods.iter()
        .map(|p| {
            let young = p
                .created
                .is_none_or(|c| now.signed_duration_since(c) < min_age);
            let (ineligible, unscored) = if p.terminating {
                (Some("terminating".to_owned()), true)
            } else if !p.ready {
                (Some("not Ready".to_owned()), true)
            } else if young {
                (Some("younger than MIN_POD_AGE".to_owned()), true)
            } else if p.opted_out {
                (
                    Some(format!("opted out ({})", crate::kube::OPT_OUT_ANNOTATION)),
                    false,
                )
            } else {
                (None, false)
            };
            PodInput {
                name: p.name.clone(),
                ready: p.ready && !p.terminating,
                ineligible,
                unscored,
                cpu: metrics.cpu.get(&p.name).copied(),
                lag: metrics.lag.get(&p.name).copied(),
                memory: metrics.memory.get(&p.name).copied(),
                consumption_rate: metrics.consumption_rate.get(&p.name).copied(),
                cpu_request: p.cpu_request,
            }
        })
        .collect()
}

/// One run. Never fails: every outcome is a report with its exit code.
pub async fn run_once(settings: &Settings, clients: &Clients) -> Report {
    let started = Instant::now();
    let mut report = Report::new(settings);
    // Boxed: the run's future holds every call's (kube's are large).
    if let Err(e) = Box::pin(run_inner(settings, clients, &mut report)).await {
        tracing::error!(error = %e, "Kubernetes API");
        report.explanation = e.to_string();
        report.exit_code = exit::KUBERNETES;
    }
    report.duration_seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        strategy = report.strategy,
        dry_run = report.dry_run,
        acted = report.acted,
        exit_code = report.exit_code,
        chosen = ?report.chosen.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        evicted = ?report.evicted,
        explanation = %report.explanation,
        "run finished"
    );
    report
}

async fn run_inner(
    settings: &Settings,
    clients: &Clients,
    report: &mut Report,
) -> Result<(), KubeError> {
    let kube = &clients.kube;
    let now = Utc::now();
    let pods = kube.list_pods(&settings.selector).await?;
    let deployment = kube.deployment(&settings.deployment).await?;
    let hpa = kube.hpa(&settings.hpa).await?;
    if pods.is_empty() {
        report.explanation = format!("no pod matches {}", settings.selector);
        return Ok(());
    }
    let names: Vec<String> = pods.iter().map(|p| p.name.clone()).collect();
    let metrics = match clients
        .prometheus
        .fetch(&settings.queries, &settings.namespace, &names)
        .await
    {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "Prometheus");
            report.explanation = format!("Prometheus unavailable: {e}");
            report.exit_code = exit::PROMETHEUS;
            return Ok(());
        }
    };
    let inputs = inputs(&pods, &metrics, settings.min_pod_age, now);
    let target = hpa.as_ref().and_then(hpa_target);
    let decision = decide::decide(settings.strategy, &settings.decision, &inputs, target);
    report.pods.clone_from(&decision.pods);
    report.stats.clone_from(&decision.stats);
    report.refused.extend(decision.skipped.iter().cloned());
    report.explanation.clone_from(&decision.explanation);
    for s in &decision.skipped {
        tracing::info!(pod = %s.name, why = %s.why, "pod skipped");
    }
    for (metric, s) in &decision.stats {
        tracing::info!(metric = %metric, mean = s.mean, stddev = s.stddev, cv = s.cv, p50 = s.p50, p90 = s.p90, p99 = s.p99, "statistics");
    }

    // Outcome of the last action, once.
    let mut record = Record::from_deployment(&deployment);
    if let Some(r) = record.as_mut()
        && let Some(v) = r.verify(decision.spread)
    {
        {
            tracing::info!(improved = v.improved, before = v.spread_before, after = v.spread_after, pods = ?v.pods, "outcome of the last action");
            report.previous = Some(v);
            if !settings.dry_run {
                let rv = deployment.metadata.resource_version.as_deref();
                // Best effort: a conflict means another run wrote it.
                kube.annotate_deployment(&settings.deployment, RECORD_ANNOTATION, &r.to_text(), rv)
                    .await?;
            }
        }
    }

    // Run-wide gates.
    if let Some(why) = rolling_out(&deployment) {
        report.refuse(why);
        return Ok(());
    }
    if let Some(why) = hpa.as_ref().and_then(hpa_scaling) {
        report.refuse(why);
        return Ok(());
    }
    if let Some(r) = &record {
        if r.locked_by_other(&clients.run_id, now) {
            report.refuse(format!(
                "another run ({}) is acting since {}",
                r.holder, r.at
            ));
            return Ok(());
        }
        if r.cooling_down(settings.strategy.as_str(), settings.cooldown, now) {
            let cooldown = r.cooldown(settings.strategy.as_str(), settings.cooldown);
            report.explanation = format!(
                "cooldown: last action at {} ({:?}), cooldown {}s",
                r.at,
                r.pods,
                cooldown.as_secs()
            );
            return Ok(());
        }
    }
    if decision.chosen.is_empty() {
        return Ok(());
    }
    let (kept, refused) = decide::limit(
        &decision.chosen,
        &inputs,
        settings.max_pods_to_delete,
        settings.min_pods_required,
    );
    let safety_refused = refused.iter().any(|r| r.why.starts_with("would leave"));
    report.refused.extend(refused);
    report.chosen.clone_from(&kept);
    if kept.is_empty() {
        report.exit_code = exit::REFUSED;
        report.explanation = format!(
            "{}; every chosen pod refused by a safety check",
            decision.explanation
        );
        return Ok(());
    }
    if safety_refused {
        report.exit_code = exit::REFUSED;
    }
    if settings.dry_run {
        report.explanation = format!("{} (dry run: nothing changed)", decision.explanation);
        return Ok(());
    }

    // The lock: a conditional write of the record; one retry when the
    // conflict was someone else's unrelated change (a status update).
    let mut lock = Record {
        state: State::Acting,
        holder: clients.run_id.clone(),
        at: now,
        strategy: settings.strategy.as_str().to_owned(),
        pods: Vec::new(),
        spread_before: decision.spread,
        verified: false,
        failures: record.map(|r| r.failures).unwrap_or_default(),
    };
    let mut current = deployment;
    let mut locked = false;
    for _ in 0..2 {
        let rv = current.metadata.resource_version.clone();
        if kube
            .annotate_deployment(
                &settings.deployment,
                RECORD_ANNOTATION,
                &lock.to_text(),
                rv.as_deref(),
            )
            .await?
        {
            locked = true;
            break;
        }
        current = kube.deployment(&settings.deployment).await?;
        if let Some(r) = Record::from_deployment(&current) {
            let now = Utc::now();
            // Another run took the lock, or already acted meanwhile.
            if r.locked_by_other(&clients.run_id, now)
                || r.cooling_down(settings.strategy.as_str(), settings.cooldown, now)
            {
                break;
            }
            lock.failures = r.failures;
        }
    }
    if !locked {
        report
            .refuse("another run took the lock first (resourceVersion conflict) or has just acted");
        return Ok(());
    }

    let result = act(settings, kube, &kept, &inputs, report).await;
    lock.state = State::Done;
    lock.at = Utc::now();
    lock.pods.clone_from(&report.evicted);
    kube.annotate_deployment(
        &settings.deployment,
        RECORD_ANNOTATION,
        &lock.to_text(),
        None,
    )
    .await?;
    result
}

async fn act(
    settings: &Settings,
    kube: &Kube,
    chosen: &[Chosen],
    inputs: &[PodInput],
    report: &mut Report,
) -> Result<(), KubeError> {
    let ready_before = inputs.iter().filter(|p| p.ready).count();
    for c in chosen {
        let outcome = match settings.delete_mode {
            DeleteMode::Evict => kube.evict(&c.name).await?,
            DeleteMode::Delete => kube.delete(&c.name, settings.grace_period).await?,
        };
        if let Err(why) = outcome {
            tracing::warn!(pod = %c.name, why = %why, "not evicted");
            let pdb = why.contains("PodDisruptionBudget");
            report.refused.push(Refused {
                name: c.name.clone(),
                why,
            });
            if pdb {
                // "Not now": no retry in this run, no further eviction.
                report.exit_code = exit::REFUSED;
                break;
            }
            continue;
        }
        report.acted = true;
        report.evicted.push(c.name.clone());
        let verb = match settings.delete_mode {
            DeleteMode::Evict => "Evicted",
            DeleteMode::Delete => "Deleted",
        };
        tracing::info!(pod = %c.name, reason = %c.reason, "{verb}");
        kube.event(
            &c.name,
            "Rebalanced",
            &format!(
                "{verb} by pod-rebalancer ({}): {}",
                settings.strategy.as_str(),
                c.reason
            ),
            Utc::now(),
        )
        .await;
        if !settings.pacing.is_zero()
            && !kube
                .wait_ready(
                    &settings.selector,
                    &report.evicted,
                    ready_before,
                    settings.pacing,
                )
                .await?
        {
            report.exit_code = exit::PACING;
            report.explanation = format!(
                "{} evicted, but no replacement became Ready within PACING={}s: stopped",
                c.name,
                settings.pacing.as_secs()
            );
            return Ok(());
        }
    }
    Ok(())
}

/// The strategy names, for the metrics.
pub fn kind_of(reason: &str) -> &'static str {
    if reason.starts_with("most busy") || reason.starts_with("top") {
        "most_busy"
    } else {
        "least_busy"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(v: serde_json::Value) -> Deployment {
        serde_json::from_value(v).expect("a Deployment")
    }

    #[test]
    fn rollout_detection() {
        let settled = deployment(
            json!({"metadata": {"generation": 3}, "spec": {"replicas": 4, "selector": {}, "template": {}},
            "status": {"observedGeneration": 3, "updatedReplicas": 4, "replicas": 4}}),
        );
        assert_eq!(rolling_out(&settled), None);
        let surge = deployment(
            json!({"metadata": {"generation": 3}, "spec": {"replicas": 4, "selector": {}, "template": {}},
            "status": {"observedGeneration": 3, "updatedReplicas": 4, "replicas": 5}}),
        );
        assert!(rolling_out(&surge).is_some());
        let updating = deployment(
            json!({"metadata": {"generation": 3}, "spec": {"replicas": 4, "selector": {}, "template": {}},
            "status": {"observedGeneration": 3, "updatedReplicas": 2, "replicas": 4}}),
        );
        assert!(rolling_out(&updating).expect("rolling").contains("2/4"));
        let unobserved = deployment(
            json!({"metadata": {"generation": 4}, "spec": {"replicas": 4, "selector": {}, "template": {}},
            "status": {"observedGeneration": 3, "updatedReplicas": 4, "replicas": 4}}),
        );
        assert!(rolling_out(&unobserved).is_some());
    }

    #[test]
    fn hpa_fields() {
        let hpa: HorizontalPodAutoscaler = serde_json::from_value(json!({"spec": {"minReplicas": 1, "maxReplicas": 9,
            "scaleTargetRef": {"kind": "Deployment", "name": "consumer"},
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]},
            "status": {"currentReplicas": 4, "desiredReplicas": 6}}))
        .expect("an HPA");
        assert_eq!(
            hpa_target(&hpa),
            Some(HpaTarget {
                cpu_utilization_percent: 70.0
            })
        );
        assert_eq!(
            hpa_scaling(&hpa).as_deref(),
            Some("HPA scaling: 4 -> 6 replicas")
        );
    }

    #[test]
    fn kinds() {
        assert_eq!(kind_of("top CPU 1.2 > 0.9"), "most_busy");
        assert_eq!(kind_of("least busy: score 0"), "least_busy");
    }
}
