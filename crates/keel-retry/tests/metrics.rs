//! The prometheus-client collector.
#![cfg(feature = "metrics")]

use std::time::Duration;

use keel_retry::{Backoff, RetryBudget, RetryMetrics, RetryPolicy};
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

#[tokio::test]
async fn every_statistic_is_exported_per_policy() {
    let fast = |b: keel_retry::RetryPolicyBuilder| {
        b.backoff(Backoff::constant(Duration::ZERO))
            .max_delay(Duration::ZERO)
    };
    let ec2 = fast(RetryPolicy::builder().max_retries(2)).build().unwrap();
    let s3 = fast(RetryPolicy::builder().max_retries(1))
        .budget(RetryBudget::new(0.0, 5, Duration::from_secs(5)).unwrap())
        .build()
        .unwrap();

    let metrics = RetryMetrics::new();
    metrics.add("ec2", &ec2);
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    // Added after registration: still collected.
    metrics.add("s3", &s3);

    ec2.retry(|attempt| async move { if attempt.number < 2 { Err("x") } else { Ok(()) } })
        .await
        .unwrap();
    let _ = ec2.retry(|_| async { Err::<(), _>("x") }).await;
    let _ = s3.retry(|_| async { Err::<(), _>("y") }).await;

    let mut text = String::new();
    encode(&mut text, &registry).unwrap();
    for line in [
        r#"retry_calls_total{policy="ec2"} 2"#,
        r#"retry_attempts_total{policy="ec2"} 5"#,
        r#"retry_retries_total{policy="ec2"} 3"#,
        r#"retry_successes_total{policy="ec2"} 1"#,
        r#"retry_successes_after_retry_total{policy="ec2"} 1"#,
        r#"retry_exhausted_total{policy="ec2"} 1"#,
        r#"retry_not_retryable_total{policy="ec2"} 0"#,
        r#"retry_budget_refusals_total{policy="ec2"} 0"#,
        r#"retry_deadline_exceeded_total{policy="ec2"} 0"#,
        r#"retry_attempt_timeouts_total{policy="ec2"} 0"#,
        r#"retry_calls_total{policy="s3"} 1"#,
        r#"retry_exhausted_total{policy="s3"} 1"#,
        r#"retry_budget_available_retries{policy="s3"} 4"#,
        "# TYPE retry_calls counter",
        "# TYPE retry_budget_available_retries gauge",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(
        !text.contains(r#"retry_budget_available_retries{policy="ec2"}"#),
        "no budget, no gauge"
    );
}
