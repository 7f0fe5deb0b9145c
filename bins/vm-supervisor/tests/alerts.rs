//! Alerts leave through keel-notify: a webhook sink against keel-testkit's
//! fake receiver.

mod support;

use std::time::Duration;

use keel_health::HealthMetrics;
use keel_notify::{Notifier, WebhookSink};
use keel_testkit::fakes::webhook::FakeWebhook;
use support::*;
use vm_supervisor::alerts::Alerts;
use vm_supervisor::metrics::Metrics;
use vm_supervisor::supervisor::{Options, Supervisor};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_recovery_and_intervention_alerts_reach_the_webhook() {
    let hook = FakeWebhook::start().await;
    let lab = Lab::new();
    let mut vms = lab.write_config(&[lab.vm_yaml("vm-1", &[], "")]);
    let broken: vm_supervisor::spec::VmSpec = serde_json::from_value(serde_json::json!({
        "id": "broken",
        "command": lab.path().join("no-such-binary"),
        "socket": format!("{}/broken.sock", lab.path().display()),
    }))
    .unwrap();
    vms.push(broken);
    let notifier = Notifier::builder()
        .sink(WebhookSink::builder(hook.url()).build().unwrap())
        .build()
        .unwrap();
    let alerts = Alerts::new(Some(notifier.clone()));
    let mut settings = settings(&lab);
    settings.late_recovery_interval = None;
    // Two VMs, one broken: one crash would be "more than 30 % unhealthy".
    settings.max_unhealthy_percent = 100;
    let s = Supervisor::start(
        settings,
        vms,
        Metrics::default(),
        HealthMetrics::new(),
        alerts,
        Options::default(),
    )
    .await
    .unwrap();
    let first = wait_healthy(&s, "vm-1", None).await;
    sigkill(first.pid.unwrap());
    wait_healthy(&s, "vm-1", first.pid).await;

    let text = || serde_json::to_string(&hook.messages()).unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    // The orphan warning is held for keel-notify's 30 s warning debounce
    // (repeats collapse), longer than this test waits.
    while !(text().contains("VM vm-1 recovered")
        && text().contains("VM broken needs intervention after 3 recovery attempts"))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "alerts missing: {}",
            text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!text().contains("Host problem"), "{}", text());
    s.shutdown(Duration::from_secs(5)).await;
    notifier.shutdown(Duration::from_secs(2)).await;
}
