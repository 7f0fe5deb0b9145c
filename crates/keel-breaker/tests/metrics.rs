//! Prometheus metrics (feature `metrics`).
#![cfg(feature = "metrics")]

use keel_breaker::{BreakerConfig, BreakerRegistry, CircuitBreaker, metrics};
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

fn scrape(registry: &Registry) -> String {
    let mut text = String::new();
    encode(&mut text, registry).unwrap();
    text
}

#[test]
fn the_registry_collector_reports_states_calls_rejections_and_transitions() {
    let breakers = BreakerRegistry::with_aws_presets();
    let mut registry = Registry::default();
    breakers.register_metrics(&mut registry);

    let ssm = breakers.get("ssm");
    ssm.try_acquire().unwrap().record_success();
    drop(ssm.try_acquire().unwrap());
    for _ in 0..3 {
        ssm.try_acquire().unwrap().record_failure();
    }
    assert!(ssm.try_acquire().is_err());
    let held: Vec<_> = {
        let s3 = breakers.bulkhead("s3").unwrap();
        (0..4).map(|_| s3.try_acquire().unwrap()).collect()
    };

    let text = scrape(&registry);
    for line in [
        "# TYPE breaker_state gauge",
        r#"breaker_state{breaker="ssm",state="open"} 1"#,
        r#"breaker_state{breaker="ssm",state="closed"} 0"#,
        "# TYPE breaker_calls counter",
        r#"breaker_calls_total{breaker="ssm",outcome="success"} 1"#,
        r#"breaker_calls_total{breaker="ssm",outcome="failure"} 3"#,
        r#"breaker_calls_total{breaker="ssm",outcome="neutral"} 1"#,
        r#"breaker_rejections_total{breaker="ssm",reason="open"} 1"#,
        r#"breaker_transitions_total{breaker="ssm",to="open"} 1"#,
        r#"breaker_slow_calls_total{breaker="ssm"} 0"#,
        r#"bulkhead_in_flight_calls{bulkhead="s3"} 4"#,
        r#"bulkhead_limit_calls{bulkhead="s3"} 10"#,
        r#"bulkhead_rejections_total{bulkhead="ec2",reason="full"} 0"#,
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
    drop(held);

    // Breakers created after registration are included.
    breakers.get("late").try_acquire().unwrap().record_success();
    assert!(
        scrape(&registry).contains(r#"breaker_calls_total{breaker="late",outcome="success"} 1"#)
    );
}

#[test]
fn a_fixed_set_of_breakers_with_a_program_prefix() {
    let b = CircuitBreaker::new("db", BreakerConfig::default());
    b.force_open();
    let _ = b.try_acquire();
    let mut registry = Registry::default();
    metrics::register(registry.sub_registry_with_prefix("watchdog"), [b]);
    let text = scrape(&registry);
    assert!(
        text.contains(r#"watchdog_breaker_state{breaker="db",state="forced_open"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"watchdog_breaker_rejections_total{breaker="db",reason="forced_open"} 1"#),
        "{text}"
    );
}
