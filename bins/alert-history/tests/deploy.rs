//! `deploy/alert-history` stays valid: the Prometheus rules pass
//! `promtool check rules` and their unit test, the Alertmanager example
//! passes `amtool check-config`, and every metric the rules and the Grafana
//! dashboard use is one the service exposes.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{TestApp, firing, payload};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/alert-history")
}

/// Runs `tool args` in `dir`; `None` when the tool is not installed.
fn run_tool(tool: &str, args: &[&str], dir: &Path) -> Option<(bool, String)> {
    let out = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    Some((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

#[test]
fn rules_and_alertmanager_config_are_valid() {
    let prometheus = deploy().join("prometheus");
    for args in [
        ["check", "rules", "rules.yml"],
        ["test", "rules", "alerts_test.yml"],
    ] {
        match run_tool("promtool", &args, &prometheus) {
            Some((ok, out)) => assert!(ok, "promtool {args:?}: {out}"),
            None => eprintln!("skipped: promtool is not installed"),
        }
    }
    match run_tool(
        "amtool",
        &["check-config", "alertmanager.yml"],
        &deploy().join("alertmanager"),
    ) {
        Some((ok, out)) => assert!(ok, "amtool: {out}"),
        None => eprintln!("skipped: amtool is not installed"),
    }
}

/// The `alert_history_*` names used in `text`.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("alert_history_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_and_dashboard_use_metrics_the_service_exposes() {
    let t = TestApp::new(support::sqlite().await).await;
    t.deliver(&payload(vec![firing("A", "d1", 0, &[])])).await;
    t.get("/history").await;
    let (_, exposed) = t.get("/metrics").await;
    let mut exposed = exposed.as_str().unwrap().to_owned();
    // Publishing's metrics exist where a targets source is configured.
    let hook = keel_testkit::fakes::webhook::FakeWebhook::start().await;
    let dir = tempfile::tempdir().unwrap();
    let targets = dir.path().join("targets.yaml");
    std::fs::write(
        &targets,
        format!(
            "- {{name: archive, format: webhook, url: '{}'}}\n",
            hook.url()
        ),
    )
    .unwrap();
    let db = support::sqlite().await;
    let mut config = alert_history::Config::for_database(&db.url);
    config.targets.targets_file = Some(targets);
    let service = alert_history::Service::start(&config).await.unwrap();
    let metrics = format!("http://{}/metrics", service.local_addr());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
        if text.contains("alert_history_outbox_oldest_age_seconds{") {
            exposed.push_str(&text);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no publishing metrics:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    service.stop(std::time::Duration::from_secs(2)).await;

    let dashboard = std::fs::read_to_string(deploy().join("grafana/alert-history.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    assert!(!parsed["panels"].as_array().unwrap().is_empty());
    let rules = std::fs::read_to_string(deploy().join("prometheus/rules.yml")).unwrap();
    let used: Vec<String> = metric_names(&dashboard)
        .into_iter()
        .chain(metric_names(&rules))
        .collect();
    assert!(used.len() > 5);
    for name in used {
        assert!(
            exposed
                .lines()
                .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))),
            "{name} is used in deploy/ but not exposed:\n{exposed}"
        );
    }

    let deployment = std::fs::read_to_string(deploy().join("kubernetes/deployment.yaml")).unwrap();
    for needle in [
        "path: /healthz",
        "path: /readyz",
        "runAsNonRoot: true",
        "prometheus.io/scrape",
    ] {
        assert!(
            deployment.contains(needle),
            "deployment.yaml lacks {needle}"
        );
    }
}
