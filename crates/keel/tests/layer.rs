//! The pipeline as a tower layer.
#![cfg(feature = "tower")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use keel::retry::{Backoff, Jitter, RetryPolicy};
use keel::{Pipeline, PipelineError, PipelineLayer};
use tower::{Layer, ServiceExt, service_fn};

#[tokio::test(start_paused = true)]
async fn layer_retries_cloned_requests() {
    let calls = Arc::new(AtomicU32::new(0));
    let pipeline = Pipeline::builder()
        .retry(
            RetryPolicy::builder()
                .max_retries(2)
                .backoff(Backoff::constant(Duration::from_millis(5)))
                .jitter(Jitter::None)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let layer = PipelineLayer::new(pipeline);
    let service = layer.layer(service_fn({
        let calls = calls.clone();
        move |req: String| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    Err("flaky")
                } else {
                    Ok(format!("{req}:{n}"))
                }
            }
        }
    }));
    assert_eq!(
        service.clone().oneshot("a".to_string()).await.unwrap(),
        "a:1"
    );
    assert_eq!(layer.pipeline().stats().attempts, 2);

    let always_down = PipelineLayer::new(
        Pipeline::builder()
            .attempt_timeout(Duration::from_millis(10))
            .build()
            .unwrap(),
    )
    .layer(service_fn(|_: ()| async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok::<(), &str>(())
    }));
    let err = always_down.oneshot(()).await.unwrap_err();
    assert!(matches!(err, PipelineError::AttemptTimeout { .. }));
}
