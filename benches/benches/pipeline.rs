//! The cost of Keel's five-policy pipeline on the happy path, against the
//! bare call measured in the same run.
//!
//! `cargo bench -p keel-benches --bench pipeline`
#![allow(missing_docs, clippy::disallowed_types)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use keel::breaker::{BreakerConfig, CircuitBreaker};
use keel::retry::RetryPolicy;
use keel::{Pipeline, RateLimit};

fn five_policies() -> Pipeline {
    Pipeline::builder()
        .retry(RetryPolicy::default())
        .breaker(CircuitBreaker::new("bench", BreakerConfig::default()))
        // A rate far above what the bench reaches, so no call waits: the
        // bench measures the limiter's check, not its throttling.
        .rate_limit(RateLimit::every(Duration::from_nanos(1)).burst(1_000_000))
        .bulkhead(1_024)
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
        .bulkhead(1_024)
        .attempt_timeout(Duration::from_secs(5))
        .build()
        .expect("valid pipeline")
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
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
