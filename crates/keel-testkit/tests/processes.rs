//! Prometheus, Alertmanager and moto started as child processes. These need
//! the packages installed (see each helper's `*_INSTALL` constant); a missing
//! one fails with that command.
#![allow(clippy::disallowed_types)] // SystemTime for sample timestamps.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use http::Method;
use keel_testkit::FakeServer;
use keel_testkit::services::{Alertmanager, Moto, Prometheus};
use serde_json::{Value, json};

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn prometheus_starts_ready_and_is_cleaned_up() -> anyhow::Result<()> {
    let prometheus = Prometheus::start().await;
    let ready = reqwest::get(format!("{}/-/ready", prometheus.url())).await?;
    assert_eq!(ready.status(), 200);
    // Remote write and lifecycle endpoints are enabled.
    let write = reqwest::Client::new()
        .post(format!("{}/api/v1/write", prometheus.url()))
        .body("")
        .send()
        .await?;
    assert_ne!(write.status(), 404, "remote-write receiver enabled");
    prometheus.reload().await?;
    let data = prometheus.query("vector(42)", None).await?;
    assert_eq!(data["result"][0]["value"][1], "42");

    let (pid, dir) = (prometheus.pid(), prometheus.data_dir());
    assert!(pid_alive(pid) && dir.exists());
    drop(prometheus);
    assert!(!pid_alive(pid), "process killed and reaped");
    assert!(!dir.exists(), "temporary directory removed");
    Ok(())
}

#[tokio::test]
async fn prometheus_serves_backfilled_openmetrics_samples() -> anyhow::Result<()> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    // Three hours ago, aligned to a minute.
    let t = (now - 3 * 3600) / 60 * 60;
    let text = format!(
        "# TYPE keel_lag gauge\nkeel_lag{{pod=\"a\"}} 7 {t}\nkeel_lag{{pod=\"a\"}} 9 {}\n# EOF\n",
        t + 60
    );
    let prometheus = Prometheus::builder().openmetrics(text).start().await;
    let data = prometheus.query("keel_lag", Some((t + 60) as f64)).await?;
    assert_eq!(data["result"][0]["metric"]["pod"], "a");
    assert_eq!(data["result"][0]["value"][1], "9");
    Ok(())
}

#[tokio::test]
async fn alertmanager_starts_and_delivers_to_a_webhook() -> anyhow::Result<()> {
    let receiver = FakeServer::start(Router::new()).await;
    receiver.script().set_default(
        Method::POST,
        "/hook",
        keel_testkit::ScriptedResponse::status(http::StatusCode::OK),
    );
    let alertmanager = Alertmanager::builder()
        .webhook(&receiver.url("/hook"))
        .start()
        .await;
    let ready = reqwest::get(format!("{}/-/ready", alertmanager.url())).await?;
    assert_eq!(ready.status(), 200);

    alertmanager
        .post_alerts(&json!([{
            "labels": { "alertname": "KeelTest", "severity": "warning" },
            "annotations": { "summary": "from the testkit" }
        }]))
        .await?;
    let listed = alertmanager.alerts().await?;
    assert_eq!(listed[0]["labels"]["alertname"], "KeelTest");

    // group_wait is 1 s in the generated configuration.
    let delivered = receiver
        .wait_for_requests(1, Duration::from_secs(20))
        .await?;
    let body: Value = delivered[0].body_json()?;
    assert_eq!(body["status"], "firing");
    assert_eq!(body["alerts"][0]["labels"]["alertname"], "KeelTest");
    Ok(())
}

#[tokio::test]
async fn moto_starts_ready_and_resets() -> anyhow::Result<()> {
    let moto = Moto::start().await;
    let ready = reqwest::get(format!("{}/moto-api/", moto.url())).await?;
    assert_eq!(ready.status(), 200);
    // An S3 bucket made through the REST API disappears on reset.
    let client = reqwest::Client::new();
    let created = client
        .put(format!("{}/keel-test-bucket", moto.url()))
        .send()
        .await?;
    assert!(created.status().is_success(), "{}", created.status());
    let listing = client.get(moto.url()).send().await?.text().await?;
    assert!(listing.contains("keel-test-bucket"), "{listing}");
    moto.reset().await?;
    let listing = client.get(moto.url()).send().await?.text().await?;
    assert!(!listing.contains("keel-test-bucket"), "{listing}");

    let pid = moto.pid();
    drop(moto);
    assert!(!pid_alive(pid));
    Ok(())
}
