//! The tower layer.
#![cfg(feature = "tower")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use keel_core::{BoxError, Outcome, classify};
use keel_retry::{Backoff, RetryBudget, RetryBudgetExhausted, RetryLayer, RetryPolicy};
use tower::{Layer, ServiceBuilder, ServiceExt, service_fn};

fn fast_policy() -> keel_retry::RetryPolicyBuilder {
    RetryPolicy::builder()
        .backoff(Backoff::constant(Duration::from_millis(10)))
        .max_retries(3)
}

#[derive(Debug, thiserror::Error)]
#[error("upstream failed")]
struct Upstream;

#[tokio::test(start_paused = true)]
async fn retries_failed_requests_with_a_clone_of_the_request() {
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let inner = service_fn(move |req: String| {
        let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if n < 3 {
                Err::<String, BoxError>(Box::new(Upstream))
            } else {
                Ok(format!("{req} on attempt {n}"))
            }
        }
    });
    let policy = fast_policy().build().unwrap();
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy.clone()))
        .service(inner);
    let response = svc.oneshot("hello".to_string()).await.unwrap();
    assert_eq!(response, "hello on attempt 3");
    let s = policy.stats();
    assert_eq!((s.calls, s.attempts, s.successes_after_retry), (1, 3, 1));
}

#[tokio::test(start_paused = true)]
async fn exhausted_retries_return_the_inner_error_unchanged() {
    let inner = service_fn(|_: ()| async { Err::<(), _>(Upstream) });
    let svc = RetryLayer::new(fast_policy().build().unwrap()).layer(inner);
    let err = svc.oneshot(()).await.unwrap_err();
    assert!(err.is::<Upstream>(), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn a_spent_budget_is_a_downcastable_rejection() {
    let policy = fast_policy()
        .budget(RetryBudget::new(0.0, 1, Duration::from_secs(1)).unwrap())
        .build()
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let inner = service_fn(move |_: ()| {
        counted.fetch_add(1, Ordering::SeqCst);
        async { Err::<(), _>(Upstream) }
    });
    let svc = RetryLayer::new(policy).layer(inner);
    let err = svc.oneshot(()).await.unwrap_err();
    let rejection = err
        .downcast_ref::<RetryBudgetExhausted>()
        .unwrap_or_else(|| panic!("not a budget rejection: {err:?}"));
    assert_eq!(rejection.attempts(), Some(2));
    assert!(std::error::Error::source(rejection).is_some_and(|s| s.is::<Upstream>()));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn responses_can_be_classified_as_overloads() {
    // A 503 response is an overload asking for 2 s; the layer waits that
    // long, retries, and hands back the eventual 200.
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let inner = service_fn(move |_: ()| {
        let n = counted.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<u16, Upstream>(if n == 0 { 503 } else { 200 }) }
    });
    let classifier = classify::from_fn(|r: &Result<u16, Upstream>| match r {
        Ok(503) => Outcome::overloaded_for(Duration::from_secs(2)),
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::Failure,
    });
    let layer = RetryLayer::new(fast_policy().build().unwrap()).with_classifier(classifier);
    let start = tokio::time::Instant::now();
    let status = layer.layer(inner).oneshot(()).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}

#[tokio::test]
async fn the_response_future_is_send() {
    let inner = service_fn(|n: u32| async move { Ok::<_, BoxError>(n * 2) });
    let svc = RetryLayer::new(fast_policy().build().unwrap()).layer(inner);
    let handle = tokio::spawn(svc.oneshot(21));
    assert_eq!(handle.await.unwrap().unwrap(), 42);
}
