//! The tower layer (feature `tower`).
#![cfg(feature = "tower")]

use std::time::Duration;

use keel_breaker::{BreakerConfig, BreakerError, BreakerLayer, CircuitBreaker, State};
use keel_core::{Outcome, classify};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_test::{assert_request_eq, mock};

fn breaker() -> CircuitBreaker {
    CircuitBreaker::new(
        "upstream",
        BreakerConfig::builder()
            .no_failure_rate()
            .consecutive_failures(2)
            .minimum_calls(1)
            .open_duration(Duration::from_secs(5))
            .half_open_successes(1)
            .build()
            .unwrap(),
    )
}

#[tokio::test(start_paused = true)]
async fn failures_open_the_breaker_and_rejections_skip_the_service() {
    let b = breaker();
    let (svc, mut handle) = mock::pair::<&'static str, &'static str>();
    let mut svc = BreakerLayer::new(b.clone()).layer(svc);

    for _ in 0..2 {
        let call = svc.ready().await.unwrap().call("ping");
        let (request, send) = handle.next_request().await.unwrap();
        assert_eq!(request, "ping");
        send.send_error(std::io::Error::other("503"));
        let err = call.await.unwrap_err();
        assert!(matches!(err, BreakerError::Inner(_)));
    }
    assert_eq!(b.state(), State::Open);

    handle.allow(1);
    let err = svc.ready().await.unwrap().call("ping").await.unwrap_err();
    match err {
        BreakerError::Rejected(rejected) => {
            assert_eq!(rejected.retry_after(), Some(Duration::from_secs(5)));
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    // The mock never saw the rejected request.
    assert!(
        tokio::time::timeout(Duration::from_millis(1), handle.next_request())
            .await
            .is_err()
    );

    tokio::time::advance(Duration::from_secs(5)).await;
    let call = svc.ready().await.unwrap().call("probe");
    assert_request_eq!(handle, "probe").send_response("pong");
    assert_eq!(call.await.unwrap(), "pong");
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test]
async fn the_classifier_decides_and_dropped_futures_are_neutral() {
    let b = breaker();
    // 404s say nothing about the upstream's health.
    let layer = BreakerLayer::new(b.clone()).with_classifier(classify::error_fn(|status: &u16| {
        if *status == 404 {
            Outcome::Neutral
        } else {
            Outcome::Failure
        }
    }));
    let mut svc = layer.layer(service_fn(|code: u16| async move {
        if code == 200 { Ok("ok") } else { Err(code) }
    }));
    for _ in 0..5 {
        let err = svc.ready().await.unwrap().call(404).await.unwrap_err();
        assert_eq!(err.into_inner(), Some(404));
    }
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.stats().totals.neutral, 5);

    // A response future dropped before completion: neutral too.
    let pending = svc.ready().await.unwrap().call(500);
    drop(pending);
    assert_eq!(b.stats().totals.neutral, 6);
    assert_eq!(b.stats().totals.failures, 0);

    svc.ready().await.unwrap().call(500).await.unwrap_err();
    svc.ready().await.unwrap().call(502).await.unwrap_err();
    assert_eq!(b.state(), State::Open);
}
