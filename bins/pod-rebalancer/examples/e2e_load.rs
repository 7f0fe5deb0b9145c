//! End-to-end time of one run against a real Prometheus (backfilled with
//! N pods' CPU, lag and memory series) and the fake Kubernetes API server:
//! list pods, Deployment, HPA, three parallel PromQL queries over N pod
//! names, decide, report (dry run, so every run does the same work).
//!
//! `cargo run --release -p pod-rebalancer --example e2e_load -- 1000 20`

#![allow(clippy::print_stdout, missing_docs)]

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;
use keel_testkit::Prometheus;
use keel_testkit::fakes::kube::{FakeKube, pod_json};
use pod_rebalancer::kube::{Kube, connect};
use pod_rebalancer::prom::Prometheus as PromClient;
use pod_rebalancer::{Clients, Config, run_once};

fn openmetrics(n: usize) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let start = now - 600;
    let (mut cpu, mut lag, mut mem) = (
        String::from("# TYPE container_cpu_usage_seconds counter\n"),
        String::from("# TYPE kafka_consumer_lag_sum gauge\n"),
        String::from("# TYPE container_memory_working_set_bytes gauge\n"),
    );
    for i in 0..n {
        let rate = if i % 10 == 7 {
            2.0
        } else {
            0.45 + ((i * 7919) % 100) as f64 / 1000.0
        };
        let labels = format!("namespace=\"load\",pod=\"consumer-{i:05}\",container=\"app\"");
        for step in 0..=39u64 {
            let t = start + step * 15;
            let _ = writeln!(
                cpu,
                "container_cpu_usage_seconds_total{{{labels}}} {} {t}",
                rate * (step * 15) as f64
            );
            let _ = writeln!(
                lag,
                "kafka_consumer_lag_sum{{namespace=\"load\",pod=\"consumer-{i:05}\"}} {} {t}",
                rate * 2000.0
            );
            let _ = writeln!(
                mem,
                "container_memory_working_set_bytes{{{labels}}} 5e8 {t}"
            );
        }
    }
    format!("{cpu}{lag}{mem}# EOF\n")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(Ok(1000), |a| a.parse())?;
    let runs: usize = args.next().map_or(Ok(20), |a| a.parse())?;
    let prometheus = Prometheus::builder()
        .openmetrics(openmetrics(n))
        .start()
        .await;
    let kube = FakeKube::start("load").await;
    let day_ago = (chrono::Utc::now() - chrono::Duration::days(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for i in 0..n {
        kube.put_pod(pod_json(
            &format!("consumer-{i:05}"),
            &[("app", "consumer")],
            true,
            &day_ago,
            "1",
        ));
    }
    kube.set_deployment("consumer", n as u64, &[("app", "consumer")]);
    kube.set_hpa("consumer", 60, n as u64, n as u64);
    let dir = tempfile::tempdir()?;
    let kubeconfig = kube.write_kubeconfig(dir.path());
    let config = Config::try_parse_from([
        "pod-rebalancer",
        "--prometheus-endpoint",
        prometheus.url(),
        "--kube-namespace",
        "load",
        "--kube-label-selector",
        "app=consumer",
        "--deployment-name",
        "consumer",
        "--dry-run",
        "--kubeconfig",
        &kubeconfig.display().to_string(),
    ])?;
    let settings = config.settings()?;
    let clients = Clients {
        prometheus: PromClient::new(&settings.prometheus, settings.prometheus_timeout)?,
        kube: Kube::new(connect(settings.kubeconfig.as_deref()).await?, "load")?,
        run_id: "load".into(),
    };
    // One warm-up run (connections, Prometheus caches).
    let first = run_once(&settings, &clients).await;
    anyhow::ensure!(first.exit_code == 0, "{}", first.explanation);
    anyhow::ensure!(!first.chosen.is_empty(), "{}", first.explanation);
    let mut times: Vec<f64> = Vec::with_capacity(runs);
    for _ in 0..runs {
        let report = run_once(&settings, &clients).await;
        anyhow::ensure!(report.pods.len() == n && report.stats["cpu"].count == n);
        times.push(report.duration_seconds * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    let p = |q: f64| times[((q * times.len() as f64).ceil() as usize).clamp(1, times.len()) - 1];
    println!(
        "pods={n} runs={runs} run_ms: min={:.1} p50={:.1} p90={:.1} max={:.1}",
        times[0],
        p(0.5),
        p(0.9),
        times[times.len() - 1]
    );
    Ok(())
}
