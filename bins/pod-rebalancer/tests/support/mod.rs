//! Shared test setup: a real Prometheus backfilled with known series and the
//! fake Kubernetes API server of keel-testkit.

#![allow(dead_code, unreachable_pub)]

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;
use keel_testkit::Prometheus;
use keel_testkit::fakes::kube::{FakeKube, pod_json};
use pod_rebalancer::kube::{Kube, connect};
use pod_rebalancer::prom::Prometheus as PromClient;
use pod_rebalancer::{Clients, Config, Settings};

pub const NAMESPACE: &str = "ingest";
pub const DEPLOYMENT: &str = "consumer";
pub const PODS: usize = 50;
/// The hot pod: 2.0 cores, lag 9000, 800 MB.
pub const HOT: &str = "consumer-07";
/// The idle pod: 0.05 cores, lag 100, 300 MB.
pub const IDLE: &str = "consumer-31";
/// No lag series at all.
pub const NO_LAG: &str = "consumer-44";
/// Memory is NaN.
pub const NAN_MEMORY: &str = "consumer-45";
/// No series at all.
pub const NO_SERIES: &str = "consumer-46";

/// No consumption-rate series (still scored: the rate is not in the score).
pub const NO_RATE: &str = "consumer-12";

pub fn pod_name(i: usize) -> String {
    format!("consumer-{i:02}")
}

/// (cpu cores, lag, memory bytes) planted for pod `i`; `None` = no series.
pub fn planted(i: usize) -> (Option<f64>, Option<f64>, Option<f64>) {
    let name = pod_name(i);
    match name.as_str() {
        HOT => (Some(2.0), Some(9000.0), Some(800e6)),
        IDLE => (Some(0.05), Some(100.0), Some(300e6)),
        NO_LAG => (Some(0.5), None, Some(500e6)),
        NAN_MEMORY => (Some(0.5), Some(1000.0), Some(f64::NAN)),
        NO_SERIES => (None, None, None),
        _ => (Some(0.5), Some(1000.0), Some(500e6)),
    }
}

/// Kafka records consumed per second planted for pod `i`: the hot pod is
/// behind (120/s), the idle one has little to do (20/s), the others 200/s.
pub fn planted_rate(i: usize) -> Option<f64> {
    match pod_name(i).as_str() {
        HOT => Some(120.0),
        IDLE => Some(20.0),
        NO_RATE | NO_SERIES => None,
        _ => Some(200.0),
    }
}

/// OpenMetrics text: every 15 s over the last 10 minutes, a CPU counter
/// growing at the planted rate, lag and memory gauges, and a consumed
/// records counter growing at [`planted_rate`].
pub fn openmetrics(planted: impl Fn(usize) -> (Option<f64>, Option<f64>, Option<f64>)) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let start = now - 600;
    let mut cpu = String::from("# TYPE container_cpu_usage_seconds counter\n");
    let mut lag = String::from("# TYPE kafka_consumer_lag_sum gauge\n");
    let mut memory = String::from("# TYPE container_memory_working_set_bytes gauge\n");
    let mut consumed = String::from("# TYPE kafka_consumer_messages_consumed counter\n");
    for i in 0..PODS {
        let pod = pod_name(i);
        let (c, l, m) = planted(i);
        let r = planted_rate(i);
        let labels = format!("namespace=\"{NAMESPACE}\",pod=\"{pod}\",container=\"app\"");
        for step in 0..=39u64 {
            let t = start + step * 15;
            if let Some(c) = c {
                let _ = writeln!(
                    cpu,
                    "container_cpu_usage_seconds_total{{{labels}}} {} {t}",
                    c * (step * 15) as f64
                );
            }
            if let Some(l) = l {
                let _ = writeln!(
                    lag,
                    "kafka_consumer_lag_sum{{namespace=\"{NAMESPACE}\",pod=\"{pod}\"}} {l} {t}"
                );
            }
            if let Some(r) = r {
                let _ = writeln!(
                    consumed,
                    "kafka_consumer_messages_consumed_total{{namespace=\"{NAMESPACE}\",pod=\"{pod}\"}} {} {t}",
                    r * (step * 15) as f64
                );
            }
            if let Some(m) = m {
                let v = if m.is_nan() {
                    "NaN".to_owned()
                } else {
                    m.to_string()
                };
                let _ = writeln!(
                    memory,
                    "container_memory_working_set_bytes{{{labels}}} {v} {t}"
                );
            }
        }
    }
    format!("{cpu}{lag}{memory}{consumed}# EOF\n")
}

pub async fn prometheus() -> Prometheus {
    Prometheus::builder()
        .openmetrics(openmetrics(planted))
        .start()
        .await
}

/// The fake API server with the 50 pods (Ready, a day old, 1 core
/// requested), the Deployment (settled) and an HPA at 60 % (settled).
pub async fn kube() -> FakeKube {
    let kube = FakeKube::start(NAMESPACE).await;
    for i in 0..PODS {
        kube.put_pod(pod_json(
            &pod_name(i),
            &[("app", "consumer")],
            true,
            &day_ago(),
            "1",
        ));
    }
    kube.set_deployment(DEPLOYMENT, PODS as u64, &[("app", "consumer")]);
    kube.set_hpa(DEPLOYMENT, 60, PODS as u64, PODS as u64);
    kube
}

fn day_ago() -> String {
    let t = chrono::Utc::now() - chrono::Duration::days(1);
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub struct Env {
    pub settings: Settings,
    pub clients: Clients,
    pub dir: tempfile::TempDir,
}

pub fn config_args(kubeconfig: &std::path::Path, prometheus: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "pod-rebalancer",
        "--prometheus-endpoint",
        prometheus,
        "--prometheus-timeout",
        "5s",
        "--kube-namespace",
        NAMESPACE,
        "--kube-label-selector",
        "app=consumer",
        "--deployment-name",
        DEPLOYMENT,
        "--pacing",
        "5s",
        "--max-pods-to-delete",
        "2",
        "--min-pods-required",
        "3",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.push("--kubeconfig".into());
    args.push(kubeconfig.display().to_string());
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

pub async fn env(kube: &FakeKube, prometheus: &str, extra: &[&str], run_id: &str) -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = kube.write_kubeconfig(dir.path());
    let config = Config::try_parse_from(config_args(&kubeconfig, prometheus, extra)).expect("args");
    let settings = config.settings().expect("valid settings");
    let client = connect(settings.kubeconfig.as_deref())
        .await
        .expect("kubeconfig");
    let clients = Clients {
        prometheus: PromClient::new(&settings.prometheus, settings.prometheus_timeout)
            .expect("client"),
        kube: Kube::new(client, &settings.namespace).expect("client"),
        run_id: run_id.to_owned(),
    };
    Env {
        settings,
        clients,
        dir,
    }
}

/// The record on the fake's Deployment.
pub fn record(kube: &FakeKube) -> Option<pod_rebalancer::record::Record> {
    let deployment =
        serde_json::from_value(kube.deployment().expect("deployment")).expect("a Deployment");
    pod_rebalancer::record::Record::from_deployment(&deployment)
}

pub fn names(list: &[pod_rebalancer::decide::Chosen]) -> Vec<&str> {
    list.iter().map(|c| c.name.as_str()).collect()
}

pub fn why<'a>(report: &'a pod_rebalancer::Report, name: &str) -> Option<&'a str> {
    report
        .refused
        .iter()
        .find(|r| r.name == name)
        .map(|r| r.why.as_str())
}
