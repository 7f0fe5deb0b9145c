//! Prometheus metrics: checks, failures by bounded reason, durations and
//! targets per state, read back through the text encoder.
#![cfg(feature = "metrics")]

mod support;

use std::time::Duration;

use keel_health::{FailureKind, HealthChecker, HealthMetrics, ProbeFailure, probe_fn};
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use support::{Script, config};
use tokio::time::{Instant, sleep_until};

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
}

#[tokio::test(start_paused = true)]
async fn checks_failures_durations_and_state_gauges_are_exported() {
    let mut registry = Registry::default();
    let metrics = HealthMetrics::new();
    metrics.register(registry.sub_registry_with_prefix("vm_health"));
    let checker = HealthChecker::builder().metrics(metrics).build().unwrap();
    let render = |registry: &Registry| {
        let mut text = String::new();
        encode(&mut text, registry).unwrap();
        text
    };

    let ok = Script::new(true);
    let down = Script::new(false);
    let slow = probe_fn(|| async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok::<_, ProbeFailure>(())
    });
    let t0 = Instant::now();
    checker
        .add("ok", ok.probe(), config(1000, 250, 2, 1))
        .unwrap();
    checker
        .add("down", down.probe(), config(1000, 250, 2, 1))
        .unwrap();
    checker.add("slow", slow, config(1000, 250, 2, 1)).unwrap();
    let text = render(&registry);
    assert_eq!(value(&text, "vm_health_targets_unknown"), 3.0);
    assert_eq!(value(&text, "vm_health_targets_healthy"), 0.0);

    // Checks at 0 s and 1 s for each of the three targets.
    sleep_until(t0 + Duration::from_millis(1500)).await;
    let text = render(&registry);
    assert_eq!(value(&text, "vm_health_checks_total"), 6.0);
    assert_eq!(
        value(&text, "vm_health_check_failures_total{reason=\"refused\"}"),
        2.0
    );
    assert_eq!(
        value(&text, "vm_health_check_failures_total{reason=\"timeout\"}"),
        2.0
    );
    assert_eq!(
        value(
            &text,
            "vm_health_check_failures_total{reason=\"http_status\"}"
        ),
        0.0
    );
    assert_eq!(value(&text, "vm_health_check_duration_seconds_count"), 6.0);
    // Two timeouts at 0.25 s each; the scripted probes take no virtual time.
    assert_eq!(value(&text, "vm_health_check_duration_seconds_sum"), 0.5);
    assert_eq!(value(&text, "vm_health_targets_healthy"), 1.0);
    assert_eq!(value(&text, "vm_health_targets_unhealthy"), 2.0);
    assert_eq!(value(&text, "vm_health_targets_unknown"), 0.0);
    // Only bounded reasons appear as label values: never a message.
    for line in text.lines().filter(|l| l.contains("reason=")) {
        let reason = line.split('"').nth(1).unwrap();
        assert!(
            FailureKind::ALL.iter().any(|k| k.as_str() == reason),
            "unbounded label in {line}"
        );
    }

    down.set(true);
    sleep_until(t0 + Duration::from_millis(2500)).await;
    let text = render(&registry);
    assert_eq!(value(&text, "vm_health_targets_healthy"), 2.0);
    assert_eq!(value(&text, "vm_health_targets_unhealthy"), 1.0);

    // Removal takes a target off the gauges.
    checker.remove("slow").unwrap();
    checker.remove("ok").unwrap();
    let text = render(&registry);
    assert_eq!(value(&text, "vm_health_targets_healthy"), 1.0);
    assert_eq!(value(&text, "vm_health_targets_unhealthy"), 0.0);
    checker.shutdown().await;
    let text = render(&registry);
    assert_eq!(value(&text, "vm_health_targets_healthy"), 0.0);
}
