//! The cost of Keel's five-policy pipeline on the happy path, against the
//! bare call measured in the same run: with policies of its own, with
//! shared handles (breaker, rate limiter, bulkhead given to the pipeline),
//! and with per-call options (retry policy, deadline, priority, key).
//!
//! `cargo bench -p keel-benches --bench pipeline`
#![allow(missing_docs, clippy::disallowed_types)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use keel::breaker::{BreakerConfig, Bulkhead, CircuitBreaker};
use keel::retry::RetryPolicy;
use keel::{CallOptions, Pipeline, Priority, RateLimit, RateLimiter};

fn five_policies() -> Pipeline {
    Pipeline::builder()
        .retry(RetryPolicy::default())
        .breaker(CircuitBreaker::new("bench", BreakerConfig::default()))
        // A rate far above what the bench reaches, so no call waits: the
        // bench measures the limiter's check, not its throttling.
        .rate_limit(RateLimit::every(Duration::from_nanos(1)).burst(1_000_000))
        .bulkhead(Bulkhead::new(1_024))
        .attempt_timeout(Duration::from_secs(5))
        .build()
        .expect("valid pipeline")
}

fn six_policies() -> Pipeline {
    Pipeline::builder()
        .deadline(Duration::from_secs(30))
        .retry(RetryPolicy::default())
        .breaker(CircuitBreaker::new("bench", BreakerConfig::default()))
        .rate_limit(RateLimit::every(Duration::from_nanos(1)).burst(1_000_000))
        .bulkhead(Bulkhead::new(1_024))
        .attempt_timeout(Duration::from_secs(5))
        .build()
        .expect("valid pipeline")
}

/// The same five policies over handles shared with another pipeline.
fn shared_handles() -> (Pipeline, Pipeline) {
    let breaker = CircuitBreaker::new("bench", BreakerConfig::default());
    let limiter = RateLimiter::keyed(RateLimit::every(Duration::from_nanos(1)).burst(1_000_000))
        .expect("valid rate");
    let bulkhead = Bulkhead::builder("bench")
        .max_concurrent(1_024)
        .queue(1_024)
        .build()
        .expect("valid bulkhead");
    let build = || {
        Pipeline::builder()
            .retry(RetryPolicy::default())
            .breaker(breaker.clone())
            .rate_limiter(limiter.clone())
            .bulkhead(bulkhead.clone())
            .attempt_timeout(Duration::from_secs(5))
            .build()
            .expect("valid pipeline")
    };
    (build(), build())
}

async fn op(x: u64) -> Result<u64, std::io::Error> {
    Ok(black_box(x) + 1)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("pipeline_happy_path");
    group.bench_function("bare_call", |b| {
        b.to_async(&rt)
            .iter(|| async { op(black_box(1)).await.unwrap() });
    });
    let empty = Pipeline::builder().build().unwrap();
    group.bench_function("empty_pipeline", |b| {
        b.to_async(&rt)
            .iter(|| async { empty.call(|_| op(black_box(1))).await.unwrap() });
    });
    let five = five_policies();
    group.bench_function("five_policies", |b| {
        b.to_async(&rt)
            .iter(|| async { five.call(|_| op(black_box(1))).await.unwrap() });
    });
    let six = six_policies();
    group.bench_function("five_policies_plus_deadline", |b| {
        b.to_async(&rt)
            .iter(|| async { six.call(|_| op(black_box(1))).await.unwrap() });
    });
    let (shared, _other) = shared_handles();
    group.bench_function("five_policies_shared_handles", |b| {
        b.to_async(&rt)
            .iter(|| async { shared.call(|_| op(black_box(1))).await.unwrap() });
    });
    let own_retry = RetryPolicy::default();
    let options = CallOptions::new()
        .retry(&own_retry)
        .deadline(Duration::from_secs(30))
        .priority(Priority::Critical)
        .key("vm-1");
    group.bench_function("five_policies_shared_handles_call_options", |b| {
        b.to_async(&rt).iter(|| async {
            shared
                .call_with(&options, |_| op(black_box(1)))
                .await
                .unwrap()
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
