//! The run's metrics, pushed to a Pushgateway at the end of each run (a
//! CronJob lives too briefly to be scraped). Text exposition format 0.0.4,
//! written by hand: five fixed families with bounded labels.

use std::fmt::Write as _;
use std::time::Duration;

use crate::rebalance::{Report, exit, kind_of};

/// The `status` label of `rebalancer_executions_total`.
pub fn status(report: &Report) -> &'static str {
    match report.exit_code {
        exit::OK => "success",
        exit::REFUSED => "refused",
        exit::PROMETHEUS => "prometheus_error",
        exit::KUBERNETES => "kubernetes_error",
        exit::PACING => "pacing_timeout",
        _ => "error",
    }
}

/// The exposition text of one run.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let analyzed = report.pods.iter().filter(|p| p.score.is_some()).count();
    let count = |kind: &str| {
        report
            .chosen
            .iter()
            .filter(|c| report.evicted.contains(&c.name) && kind_of(&c.reason) == kind)
            .count()
    };
    let variance = report.stats.get("cpu").map_or(0.0, |s| s.variance);
    let _ = writeln!(out, "# HELP rebalancer_executions_total Runs, by outcome.");
    let _ = writeln!(out, "# TYPE rebalancer_executions_total counter");
    let _ = writeln!(
        out,
        "rebalancer_executions_total{{status=\"{}\"}} 1",
        status(report)
    );
    let _ = writeln!(
        out,
        "# HELP rebalancer_pods_analyzed_total Pods scored in the run."
    );
    let _ = writeln!(out, "# TYPE rebalancer_pods_analyzed_total counter");
    let _ = writeln!(out, "rebalancer_pods_analyzed_total {analyzed}");
    let _ = writeln!(
        out,
        "# HELP rebalancer_pods_deleted_total Pods evicted or deleted, by kind."
    );
    let _ = writeln!(out, "# TYPE rebalancer_pods_deleted_total counter");
    for kind in ["most_busy", "least_busy"] {
        let _ = writeln!(
            out,
            "rebalancer_pods_deleted_total{{type=\"{kind}\"}} {}",
            count(kind)
        );
    }
    let _ = writeln!(
        out,
        "# HELP rebalancer_execution_duration_seconds How long the run took."
    );
    let _ = writeln!(out, "# TYPE rebalancer_execution_duration_seconds gauge");
    let _ = writeln!(
        out,
        "rebalancer_execution_duration_seconds {}",
        report.duration_seconds
    );
    let _ = writeln!(
        out,
        "# HELP rebalancer_load_variance_current Variance of CPU across the scored pods."
    );
    let _ = writeln!(out, "# TYPE rebalancer_load_variance_current gauge");
    let _ = writeln!(out, "rebalancer_load_variance_current {variance}");
    out
}

/// PUTs the run's metrics under `job="pod-rebalancer"` and the namespace
/// and deployment as grouping labels (a PUT replaces the group, so each
/// push holds the last run). Failures are logged, never fatal.
pub async fn push(base: &str, namespace: &str, deployment: &str, report: &Report) {
    let url =
        format!("{base}/metrics/job/pod-rebalancer/namespace/{namespace}/deployment/{deployment}");
    let client = reqwest::Client::new();
    let result = client
        .put(&url)
        .timeout(Duration::from_secs(10))
        .header(reqwest::header::CONTENT_TYPE, "text/plain; version=0.0.4")
        .body(render(report))
        .send()
        .await;
    match result {
        Ok(r) if r.status().is_success() => tracing::debug!(url, "metrics pushed"),
        Ok(r) => tracing::warn!(
            url,
            status = r.status().as_u16(),
            "Pushgateway refused the metrics"
        ),
        Err(e) => tracing::warn!(url, error = %e, "Pushgateway unreachable"),
    }
}
