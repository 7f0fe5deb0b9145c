//! End-to-end time of one run against a real Prometheus (backfilled with
//! N pods' CPU, lag, memory and consumed-records series) and the fake
//! Kubernetes API server: list pods, Deployment, HPA, four parallel PromQL
//! queries over N pod names, decide, report (dry run, so every run does the
//! same work).
//!
//! `cargo run --release -p pod-rebalancer --example e2e_load -- 1000 20`
//!
//! With a third argument, the path of the `pod-rebalancer` binary, it also
//! runs the binary once against the same servers under `/usr/bin/time` and
//! prints its peak RSS.

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
    let (mut cpu, mut lag, mut mem, mut consumed) = (
        String::from("# TYPE container_cpu_usage_seconds counter\n"),
        String::from("# TYPE kafka_consumer_lag_sum gauge\n"),
        String::from("# TYPE container_memory_working_set_bytes gauge\n"),
        String::from("# TYPE kafka_consumer_messages_consumed counter\n"),
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
            let _ = writeln!(
                consumed,
                "kafka_consumer_messages_consumed_total{{namespace=\"load\",pod=\"consumer-{i:05}\"}} {} {t}",
                200.0 / rate * (step * 15) as f64
            );
        }
    }
    format!("{cpu}{lag}{mem}{consumed}# EOF\n")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(Ok(1000), |a| a.parse())?;
    let runs: usize = args.next().map_or(Ok(20), |a| a.parse())?;
    let binary = args.next();
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
    // The parts, one at a time: the pod list (kube, typed objects) and the
    // four queries in parallel.
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (mut list, mut queries) = (Vec::new(), Vec::new());
    for _ in 0..runs.max(3) {
        let started = tokio::time::Instant::now();
        let pods = clients.kube.list_pods(&settings.selector).await?;
        list.push(started.elapsed().as_secs_f64() * 1000.0);
        let names: Vec<String> = pods.into_iter().map(|p| p.name).collect();
        let started = tokio::time::Instant::now();
        clients
            .prometheus
            .fetch(&settings.queries, &settings.namespace, &names)
            .await?;
        queries.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    println!(
        "of which (p50): list pods {:.1} ms, four queries {:.1} ms",
        median(list),
        median(queries)
    );
    if let Some(binary) = binary {
        let output = tokio::process::Command::new("/usr/bin/time")
            .args(["-f", "maxrss_kib=%M", &binary])
            .env_clear()
            .env("PROMETHEUS_ENDPOINT", prometheus.url())
            .env("KUBE_NAMESPACE", "load")
            .env("KUBE_LABEL_SELECTOR", "app=consumer")
            .env("DEPLOYMENT_NAME", "consumer")
            .env("DRY_RUN", "true")
            .env("OUTPUT", "json")
            .env("LOG_LEVEL", "warn")
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .await?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        let rss = stderr
            .lines()
            .find_map(|l| l.strip_prefix("maxrss_kib="))
            .ok_or_else(|| anyhow::anyhow!("no maxrss from /usr/bin/time: {stderr}"))?;
        anyhow::ensure!(output.status.success(), "{stderr}");
        println!("binary peak RSS: {rss} KiB ({n} pods, one dry run)");
    }
    Ok(())
}
