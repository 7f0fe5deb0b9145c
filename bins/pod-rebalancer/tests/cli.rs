//! The binary: configuration errors exit 64 naming the variable, the JSON
//! report on stdout with the run's exit code, and the metrics pushed to a
//! real Pushgateway (Debian's `prometheus-pushgateway`).

mod support;

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use support::*;
use tokio::process::Command;

fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pod-rebalancer"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

#[tokio::test]
async fn invalid_configuration_exits_64_naming_the_variable() {
    let output = binary()
        .env("KUBE_LABEL_SELECTOR", "app=consumer")
        .env("DEPLOYMENT_NAME", "consumer")
        .env("MAX_PODS_TO_DELETE", "0")
        .output()
        .await
        .expect("runs");
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("MAX_PODS_TO_DELETE"));

    let output = binary()
        .env("DEPLOYMENT_NAME", "consumer")
        .env("KUBE_LABEL_SELECTOR", "")
        .output()
        .await
        .expect("runs");
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("KUBE_LABEL_SELECTOR"));
}

/// The report is all of stdout: one JSON line (logs go to stderr).
fn report_line(stdout: &[u8]) -> Value {
    let text = String::from_utf8_lossy(stdout);
    let mut lines = text.lines();
    let line = lines.next().unwrap_or_default();
    assert_eq!(lines.next(), None, "stdout holds only the report: {text}");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Pushgateway {
    url: String,
    _child: tokio::process::Child,
}

async fn pushgateway() -> Pushgateway {
    let port = free_port();
    let child = Command::new("prometheus-pushgateway")
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus-pushgateway (apt-get install -y --no-install-recommends prometheus-pushgateway)");
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        if let Ok(r) = reqwest::get(format!("{url}/-/ready")).await
            && r.status().is_success()
        {
            return Pushgateway { url, _child: child };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("pushgateway not ready at {url}");
}

#[tokio::test]
async fn one_run_prints_the_json_report_and_pushes_its_metrics() {
    let prometheus = prometheus().await;
    let kube = kube().await;
    let gateway = pushgateway().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = kube.write_kubeconfig(dir.path());
    let args = config_args(&kubeconfig, prometheus.url(), &["--output", "json"]);
    let output = binary()
        .args(&args[1..])
        .env("PUSHGATEWAY_URL", &gateway.url)
        .env("REPORT_FILE", dir.path().join("report.json"))
        .output()
        .await
        .expect("runs");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = report_line(&output.stdout);
    assert_eq!(report["strategy"], "composite");
    assert_eq!(report["dry_run"], false);
    assert_eq!(report["acted"], true);
    assert_eq!(report["exit_code"], 0);
    assert_eq!(report["pods"].as_array().map(Vec::len), Some(PODS));
    let pod = &report["pods"][7];
    for field in [
        "name",
        "cpu",
        "lag",
        "memory",
        "consumption_rate",
        "score",
        "ready",
    ] {
        assert!(pod.get(field).is_some(), "pods[].{field}");
    }
    assert_eq!(report["chosen"][0]["name"], HOT);
    assert!(
        report["chosen"][0]["reason"]
            .as_str()
            .expect("reason")
            .starts_with("most busy")
    );
    assert!(
        report["refused"]
            .as_array()
            .expect("refused")
            .iter()
            .any(|r| r["name"] == NO_SERIES && r["why"].is_string())
    );
    let file: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("report.json")).expect("REPORT_FILE"),
    )
    .expect("JSON");
    assert_eq!(file, report);

    let metrics = reqwest::get(format!("{}/metrics", gateway.url))
        .await
        .expect("pushgateway")
        .text()
        .await
        .expect("text");
    let line = |prefix: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix) && l.contains("deployment=\"consumer\""))
            .unwrap_or_else(|| panic!("{prefix} missing in:\n{metrics}"))
            .to_owned()
    };
    assert!(line("rebalancer_executions_total{").contains("status=\"success\""));
    assert!(line("rebalancer_executions_total{").ends_with(" 1"));
    assert!(line("rebalancer_pods_analyzed_total{").ends_with(" 47"));
    let deleted: Vec<String> = metrics
        .lines()
        .filter(|l| l.starts_with("rebalancer_pods_deleted_total{"))
        .map(str::to_owned)
        .collect();
    assert!(
        deleted
            .iter()
            .any(|l| l.contains("type=\"most_busy\"") && l.ends_with(" 1")),
        "{deleted:?}"
    );
    assert!(
        deleted
            .iter()
            .any(|l| l.contains("type=\"least_busy\"") && l.ends_with(" 1")),
        "{deleted:?}"
    );
    line("rebalancer_execution_duration_seconds{");
    line("rebalancer_load_variance_current{");
}

#[tokio::test]
async fn prometheus_down_exits_3_from_the_binary() {
    let kube = kube().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = kube.write_kubeconfig(dir.path());
    let args = config_args(&kubeconfig, "http://127.0.0.1:9", &["--output", "json"]);
    let output = binary().args(&args[1..]).output().await.expect("runs");
    assert_eq!(output.status.code(), Some(3));
    let report: Value = report_line(&output.stdout);
    assert_eq!(report["exit_code"], 3);
}

#[tokio::test]
async fn with_an_interval_it_runs_again_until_sigterm() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let prometheus = prometheus().await;
    let kube = kube().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = kube.write_kubeconfig(dir.path());
    let args = config_args(
        &kubeconfig,
        prometheus.url(),
        &["--output", "json", "--dry-run", "--interval", "1s"],
    );
    let mut child = binary().args(&args[1..]).spawn().expect("spawns");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut reports = 0;
    while reports < 2 {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("a line in time")
            .expect("stdout readable")
            .expect("still running");
        if line.starts_with("{\"strategy\"") {
            let report: Value = serde_json::from_str(&line).expect("JSON");
            assert_eq!(report["chosen"][0]["name"], HOT);
            reports += 1;
        }
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().expect("pid")).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("stops within the drain bound")
        .expect("exit status");
    assert_eq!(status.code(), Some(0));
    // Dry runs: two decisions, no eviction.
    assert!(kube.evictions().is_empty());
}

#[tokio::test]
async fn check_config_validates_without_running() {
    let base = |c: &mut Command| {
        c.env("KUBE_LABEL_SELECTOR", "app=consumer")
            .env("DEPLOYMENT_NAME", "consumer")
            .arg("--check-config");
    };
    let mut missing = binary();
    base(&mut missing);
    let output = missing
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .output()
        .await
        .expect("runs");
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("KUBECONFIG"));

    let kube = kube().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut valid = binary();
    base(&mut valid);
    let output = valid
        .env("KUBECONFIG", kube.write_kubeconfig(dir.path()))
        .output()
        .await
        .expect("runs");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Nothing was called.
    assert_eq!(kube.server().request_count(), 0);
}

/// The levels of the JSON log lines on stderr.
fn log_levels(stderr: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["level"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn log_level_sets_the_filter_unless_rust_log_is_set() {
    let kube = kube().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = kube.write_kubeconfig(dir.path());
    // Prometheus down: a short run that logs at ERROR (Prometheus), INFO
    // (run finished) and, from the program and its HTTP clients, DEBUG.
    let args = config_args(&kubeconfig, "http://127.0.0.1:9", &["--output", "json"]);
    let run = |vars: &[(&str, &str)]| {
        let mut command = binary();
        command.args(&args[1..]).env("LOG_FORMAT", "json");
        for (k, v) in vars {
            command.env(k, v);
        }
        command.output()
    };

    let levels = log_levels(&run(&[]).await.expect("runs").stderr);
    assert!(levels.iter().any(|l| l == "INFO"), "{levels:?}");
    assert!(!levels.iter().any(|l| l == "DEBUG"), "{levels:?}");

    let output = run(&[("LOG_LEVEL", "debug")]).await.expect("runs");
    assert_eq!(output.status.code(), Some(3));
    let levels = log_levels(&output.stderr);
    assert!(levels.iter().any(|l| l == "DEBUG"), "{levels:?}");

    let levels = log_levels(&run(&[("LOG_LEVEL", "ERROR")]).await.expect("runs").stderr);
    assert!(levels.iter().any(|l| l == "ERROR"), "{levels:?}");
    assert!(levels.iter().all(|l| l == "ERROR"), "{levels:?}");

    // RUST_LOG is the more precise one and wins.
    let levels = log_levels(
        &run(&[("LOG_LEVEL", "error"), ("RUST_LOG", "info")])
            .await
            .expect("runs")
            .stderr,
    );
    assert!(levels.iter().any(|l| l == "INFO"), "{levels:?}");

    // A blank LOG_LEVEL is unset; a wrong one exits 64 naming it.
    let levels = log_levels(&run(&[("LOG_LEVEL", " ")]).await.expect("runs").stderr);
    assert!(levels.iter().any(|l| l == "INFO"), "{levels:?}");
    let output = run(&[("LOG_LEVEL", "loud")]).await.expect("runs");
    assert_eq!(output.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("LOG_LEVEL"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(kube.server().request_count() > 0);
}
