//! The cost of keel-breaker's priority bulkhead: an uncontended acquire and
//! release, against tokio's `Semaphore` (FIFO, no priorities) measured in
//! the same run.
//!
//! `cargo bench -p keel-benches --bench bulkhead`
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use keel::Priority;
use keel::breaker::Bulkhead;
use tokio::sync::Semaphore;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("bulkhead_uncontended");
    let semaphore = Semaphore::new(64);
    group.bench_function("tokio_semaphore/try_acquire_release", |b| {
        b.iter(|| drop(black_box(semaphore.try_acquire().unwrap())));
    });
    let bulkhead = Bulkhead::builder("bench")
        .max_concurrent(64)
        .queue(1_000)
        .build()
        .unwrap();
    group.bench_function("keel/try_acquire_release", |b| {
        b.iter(|| drop(black_box(bulkhead.try_acquire().unwrap())));
    });
    group.bench_function("tokio_semaphore/acquire_release", |b| {
        b.to_async(&rt)
            .iter(|| async { drop(black_box(semaphore.acquire().await.unwrap())) });
    });
    group.bench_function("keel/acquire_release", |b| {
        b.to_async(&rt).iter(|| async {
            drop(black_box(bulkhead.acquire(Priority::Normal).await.unwrap()));
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
