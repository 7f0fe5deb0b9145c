//! The properties the fuzz targets `prom_response` and `k8s_objects` check
//! (`fuzz/`, docs/RELIABILITY.md); not a stable API.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Pod as PodObject;
use serde_json::Value;

use crate::kube::{OPT_OUT_ANNOTATION, Pod, parse_cpu};
use crate::prom::{PromError, parse_vector};
use crate::rebalance::{hpa_scaling, hpa_target, rolling_out};
use crate::record::{MAX_BACKOFF_DOUBLINGS, RECORD_ANNOTATION, Record};
use crate::stats::Stats;

/// A Prometheus `/api/v1/query` answer body, as `Prometheus::fetch` reads
/// it (reqwest decodes the text lossily, as here).
///
/// Properties: the parse is deterministic; an accepted body is a
/// successful instant vector; every pod in the result has a series
/// labelled with it, and no more pods come out than series went in; a pod
/// with one series has that series' value (NaN when unreadable); the
/// statistics of the values never panic and cover only the finite ones; a
/// refused body is a [`PromError::Body`] saying why.
pub fn prom_response(data: &[u8]) {
    let body = String::from_utf8_lossy(data);
    let parsed = parse_vector(&body);
    let sorted = |r: &Result<crate::prom::PerPod, PromError>| match r {
        Ok(map) => Ok(map
            .iter()
            .map(|(k, v)| (k.clone(), v.to_bits()))
            .collect::<std::collections::BTreeMap<_, _>>()),
        Err(e) => Err(e.to_string()),
    };
    assert_eq!(
        sorted(&parsed),
        sorted(&parse_vector(&body)),
        "deterministic"
    );
    let map = match parsed {
        Ok(map) => map,
        Err(PromError::Body(reason)) => {
            assert!(!reason.is_empty());
            return;
        }
        Err(other) => panic!("a body parse fails as {other:?}"),
    };
    let v: Value = serde_json::from_str(&body).expect("accepted, so JSON");
    assert_eq!(v["status"], "success");
    assert_eq!(v["data"]["resultType"], "vector");
    let series: Vec<&Value> = v["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let pod_of = |s: &Value| s["metric"]["pod"].as_str().map(str::to_owned);
    assert!(map.len() <= series.len());
    for (pod, value) in &map {
        let own: Vec<&&Value> = series
            .iter()
            .filter(|s| pod_of(s).as_deref() == Some(pod))
            .collect();
        assert!(!own.is_empty(), "pod {pod:?} has no series");
        if let [one] = own.as_slice() {
            let expected = one["value"][1]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or(f64::NAN);
            assert!(
                expected.to_bits() == value.to_bits() || (expected.is_nan() && value.is_nan()),
                "pod {pod:?}: {value} for {expected}"
            );
        }
    }
    for s in &series {
        if let Some(pod) = pod_of(s) {
            assert!(map.contains_key(&pod), "pod {pod:?} lost");
        }
    }
    let values: Vec<f64> = map.values().copied().collect();
    match Stats::of(&values) {
        Some(stats) => {
            assert_eq!(stats.count, values.iter().filter(|v| v.is_finite()).count());
            assert!(stats.min <= stats.p50 && stats.p50 <= stats.p90);
            assert!(stats.p90 <= stats.p99 && stats.p99 <= stats.max);
        }
        None => assert!(values.iter().all(|v| !v.is_finite())),
    }
}

/// A Kubernetes object as the API server's JSON, decoded by k8s-openapi
/// as the rebalancer does; each input is tried as a Pod, a Deployment, an
/// HPA and a bare last-run record (the Deployment annotation's JSON).
///
/// Properties: what the rebalancer derives agrees with the object (a pod's
/// name, readiness, termination, age, opt-out, CPU request; a
/// Deployment's roll-out state; an HPA's scaling and target), an object
/// survives a serde round trip with the same derived view, and a last-run
/// record reads back equal, with a bounded cooldown and a verification
/// that never panics.
pub fn k8s_objects(data: &[u8]) {
    if let Ok(pod) = serde_json::from_slice::<PodObject>(data) {
        pod_view(&pod);
    }
    if let Ok(deployment) = serde_json::from_slice::<Deployment>(data) {
        deployment_view(&deployment);
    }
    if let Ok(hpa) = serde_json::from_slice::<HorizontalPodAutoscaler>(data) {
        hpa_view(&hpa);
    }
    if let Ok(record) = serde_json::from_slice::<Record>(data) {
        record_view(record);
    }
}

fn pod_view(object: &PodObject) {
    let pod = Pod::from_object(object);
    let meta = &object.metadata;
    assert_eq!(pod.name, meta.name.clone().unwrap_or_default());
    let status = object.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    assert_eq!(pod.ready, ready);
    let phase = status.and_then(|s| s.phase.as_deref());
    assert_eq!(
        pod.terminating,
        meta.deletion_timestamp.is_some() || matches!(phase, Some("Succeeded" | "Failed"))
    );
    match (&meta.creation_timestamp, pod.created) {
        (None, None) => {}
        (Some(t), Some(created)) => {
            assert_eq!(created.timestamp(), t.0.as_second());
            assert_eq!(
                i64::from(created.timestamp_subsec_nanos()),
                i64::from(t.0.subsec_nanosecond())
            );
        }
        (t, created) => panic!("creationTimestamp {t:?} read as {created:?}"),
    }
    let opted_out = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(OPT_OUT_ANNOTATION))
        .is_some_and(|v| v == "true");
    assert_eq!(pod.opted_out, opted_out);
    // A request is read from every container that states one in a form
    // the API server writes (`250m`, `1`, `0.5`, `2000000n`).
    let mut stated = 0;
    for c in object.spec.iter().flat_map(|s| &s.containers) {
        let Some(q) = c
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("cpu"))
        else {
            continue;
        };
        let cores = parse_cpu(&q.0);
        stated += usize::from(cores.is_some());
        if canonical_quantity(&q.0) {
            let cores = cores.unwrap_or_else(|| panic!("CPU request {:?} unread", q.0));
            assert!(
                cores.is_finite() && cores >= 0.0,
                "{:?} is {cores} cores",
                q.0
            );
        }
    }
    assert_eq!(pod.cpu_request.is_some(), stated > 0);
    // The object serialized again (k8s-openapi writes times in whole
    // seconds, as the API server does) reads the same.
    let json = serde_json::to_value(object).expect("a pod serializes");
    let back: PodObject = serde_json::from_value(json).expect("a pod reads back");
    let again = Pod::from_object(&back);
    let seconds = |p: &Pod| p.created.map(|c| c.timestamp());
    assert_eq!(seconds(&again), seconds(&pod));
    assert_eq!(
        Pod {
            created: pod.created,
            ..again
        },
        pod
    );
}

/// `[0-9]+(\.[0-9]+)?(m|u|n)?`: how the API server writes a CPU quantity.
fn canonical_quantity(q: &str) -> bool {
    let digits = q.trim_end_matches(['m', 'u', 'n']);
    if q.len() - digits.len() > 1 {
        return false;
    }
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, "0"));
    !whole.is_empty()
        && whole.len() <= 18
        && !fraction.is_empty()
        && whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
}

fn deployment_view(deployment: &Deployment) {
    let wanted = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let status = deployment.status.clone().unwrap_or_default();
    let settled = status.observed_generation.unwrap_or(0)
        >= deployment.metadata.generation.unwrap_or(0)
        && status.updated_replicas.unwrap_or(0) >= wanted
        && status.replicas.unwrap_or(0) <= wanted;
    let why = rolling_out(deployment);
    assert_eq!(why.is_none(), settled, "{why:?}");
    let annotation = deployment
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(RECORD_ANNOTATION));
    match (annotation, Record::from_deployment(deployment)) {
        (None, Some(_)) => panic!("a record without the annotation"),
        (Some(text), record) => {
            assert_eq!(
                record.is_some(),
                serde_json::from_str::<Record>(text).is_ok()
            );
            if let Some(record) = record {
                record_view(record);
            }
        }
        (None, None) => {}
    }
}

fn hpa_view(hpa: &HorizontalPodAutoscaler) {
    let status = hpa.status.as_ref();
    let scaling =
        status.is_some_and(|s| s.current_replicas.is_some_and(|c| c != s.desired_replicas));
    assert_eq!(hpa_scaling(hpa).is_some(), scaling);
    if let Some(target) = hpa_target(hpa) {
        let percent = target.cpu_utilization_percent;
        assert!(percent.is_finite() && percent.fract() == 0.0, "{percent}");
    }
}

fn record_view(mut record: Record) {
    let text = record.to_text();
    let back: Record = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("the record written back is unreadable: {e}\n{text}"));
    assert_eq!(
        serde_json::to_value(&back).ok(),
        serde_json::to_value(&record).ok(),
        "{text}"
    );
    let base = Duration::from_secs(600);
    for strategy in ["hpa-cpu", "spread", record.strategy.clone().as_str()] {
        let cooldown = record.cooldown(strategy, base);
        assert!(cooldown >= base && cooldown <= base * 2u32.pow(MAX_BACKOFF_DOUBLINGS));
    }
    let now: DateTime<Utc> = record.at;
    let _ = record.locked_by_other("me", now);
    let _ = record.cooling_down(&record.strategy.clone(), base, now);
    let before = record.failures.get(&record.strategy).copied();
    for spread in [Some(0.0), Some(f64::MAX), Some(f64::NAN), None] {
        let mut r = record.clone();
        if let Some(v) = r.verify(spread) {
            let after = r.failures.get(&r.strategy).copied().unwrap_or(0);
            if v.improved {
                assert_eq!(after, 0);
            } else {
                assert!(
                    after >= before.unwrap_or(0),
                    "failures went down: {before:?} → {after}"
                );
            }
            assert!(r.verify(spread).is_none(), "verified twice");
        }
    }
    let _ = record.verify(Some(1.0));
}
