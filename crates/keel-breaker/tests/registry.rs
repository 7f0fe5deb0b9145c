//! The named-breaker registry and its AWS presets.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_breaker::{BreakerConfig, BreakerEvent, BreakerRegistry, State, presets};

#[test]
fn aws_presets_have_the_documented_limits() {
    let registry = BreakerRegistry::with_aws_presets();
    let expected = [
        (presets::EC2, 3, 30, 5),
        (presets::S3, 5, 10, 10),
        (presets::SSM, 3, 45, 3),
        (presets::DYNAMODB, 5, 20, 8),
    ];
    for (name, failures, open_secs, concurrent) in expected {
        let breaker = registry.get(name);
        let config = breaker.config();
        assert_eq!(config.consecutive_failures(), Some(failures), "{name}");
        assert_eq!(
            config.open_duration(),
            Duration::from_secs(open_secs),
            "{name}"
        );
        assert_eq!(
            config.failure_rate_threshold(),
            None,
            "{name}: consecutive rule only"
        );
        // The preset validates like any built configuration.
        config.to_builder().build().expect("presets are valid");

        // It trips after exactly `failures` consecutive failures...
        for _ in 0..failures - 1 {
            breaker.try_acquire().unwrap().record_failure();
        }
        assert_eq!(breaker.state(), State::Closed, "{name}");
        breaker.try_acquire().unwrap().record_failure();
        assert_eq!(breaker.state(), State::Open, "{name}");
        breaker.reset();
        // ...and its bulkhead admits exactly `concurrent` calls at once.
        let bulkhead = registry.bulkhead(name).expect("presets share a bulkhead");
        let permits: Vec<_> = (0..concurrent)
            .map(|_| bulkhead.try_acquire().unwrap())
            .collect();
        assert!(bulkhead.try_acquire().is_err(), "{name}");
        drop(permits);
        assert_eq!(bulkhead.in_flight(), 0);
    }
}

#[test]
fn get_creates_on_first_use_and_shares_afterwards() {
    let registry = BreakerRegistry::new(
        BreakerConfig::builder()
            .no_failure_rate()
            .consecutive_failures(2)
            .minimum_calls(1)
            .build()
            .unwrap(),
    );
    assert!(registry.existing("payments").is_none());
    let a = registry.get("payments");
    let b = registry.get("payments");
    a.try_acquire().unwrap().record_failure();
    b.try_acquire().unwrap().record_failure();
    assert_eq!(
        registry.get("payments").state(),
        State::Open,
        "one shared state machine"
    );
    assert_eq!(registry.get("other").state(), State::Closed);
    assert_eq!(registry.names(), ["other", "payments"]);

    let snapshot = registry.snapshot();
    assert_eq!(snapshot["payments"].state, State::Open);
    assert_eq!(snapshot["payments"].totals.failures, 2);
    assert_eq!(snapshot["other"].state, State::Closed);
}

#[test]
fn configure_sets_a_per_name_configuration() {
    let registry = BreakerRegistry::with_aws_presets();
    let custom = BreakerConfig::aws_ec2()
        .to_builder()
        .open_duration(Duration::from_secs(5))
        .build()
        .unwrap();
    let configured = registry.configure("ec2", custom);
    assert_eq!(configured.config().open_duration(), Duration::from_secs(5));
    assert_eq!(
        registry.get("ec2").config().open_duration(),
        Duration::from_secs(5)
    );
    assert_eq!(
        registry.config_for("unknown").window(),
        BreakerConfig::default().window()
    );
    assert_eq!(registry.get("unknown").config().minimum_calls(), 10);
}

#[test]
fn registry_listeners_hear_every_breaker() {
    let registry = BreakerRegistry::with_aws_presets();
    let heard = Arc::new(Mutex::new(Vec::new()));
    let sink = heard.clone();
    registry.add_listener(move |e: &BreakerEvent<'_>| {
        if let BreakerEvent::StateTransition { breaker, to, .. } = e {
            sink.lock().unwrap().push(format!("{breaker}:{to}"));
        }
    });
    for name in [presets::SSM, presets::EC2] {
        let b = registry.get(name);
        for _ in 0..3 {
            b.try_acquire().unwrap().record_failure();
        }
    }
    assert_eq!(*heard.lock().unwrap(), ["ssm:open", "ec2:open"]);
}
