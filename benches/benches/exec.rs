//! keel-exec's parallel executor against the hand-written baseline people
//! write today: a tokio `JoinSet` with a `Semaphore`, one spawned task per
//! item, results put back in input order.
//!
//! Both run N no-op items under the same concurrency limit on a
//! multi-thread runtime with 2 workers, and both produce every item's result
//! in input order. The executor also measures each item's duration, counts
//! outcomes and isolates panics; the baseline isolates panics too (a
//! panicking task is a `JoinError`) but measures nothing. Also measured:
//! the run admitted through a shared `Bulkhead` (with a queue) instead of
//! its own, and each item run through an empty `keel::Pipeline` with
//! `keel::exec::through` (the adapter's own cost: one boxed future per
//! item and the pipeline's bookkeeping).
//!
//! `exec/pool`: keel-exec's `WorkerPool` (submit N jobs at one priority,
//! await every handle) against the hand-written baseline: W worker tasks
//! sharing a bounded tokio `mpsc` receiver, a `oneshot` per job for its
//! result. Both isolate nothing else; the pool also catches panics, orders
//! by priority and counts.
//!
//! Run: `cargo bench -p keel-benches --bench exec`
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt;
use keel::Pipeline;
use keel::exec::through;
use keel_breaker::Bulkhead;
use keel_core::Priority;
use keel_exec::{BatchExecutor, ParallelExecutor, WorkerPool};
use tokio::sync::{Mutex, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;

const LIMIT: usize = 256;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The hand-written baseline: spawn each item under a semaphore permit.
async fn join_set_semaphore(n: u64) -> Vec<Result<u64, ()>> {
    let semaphore = Arc::new(Semaphore::new(LIMIT));
    let mut set = JoinSet::new();
    let mut results: Vec<Option<Result<u64, ()>>> = Vec::with_capacity(n as usize);
    results.resize_with(n as usize, || None);
    for i in 0..n {
        let permit = semaphore
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore open");
        set.spawn(async move {
            let _permit = permit;
            (i, Ok::<u64, ()>(black_box(i)))
        });
        // Reap finished tasks as we go so the set does not grow to N.
        while let Some(done) = set.try_join_next() {
            let (i, r) = done.expect("no panics here");
            results[i as usize] = Some(r);
        }
    }
    while let Some(done) = set.join_next().await {
        let (i, r) = done.expect("no panics here");
        results[i as usize] = Some(r);
    }
    results
        .into_iter()
        .map(|r| r.expect("every item"))
        .collect()
}

/// The same baseline without reaping while spawning: every finished task
/// stays in the set until the end (what a quick first version looks like).
async fn join_set_semaphore_join_at_end(n: u64) -> Vec<Result<u64, ()>> {
    let semaphore = Arc::new(Semaphore::new(LIMIT));
    let mut set = JoinSet::new();
    for i in 0..n {
        let permit = semaphore
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore open");
        set.spawn(async move {
            let _permit = permit;
            (i, Ok::<u64, ()>(black_box(i)))
        });
    }
    let mut results: Vec<Option<Result<u64, ()>>> = Vec::with_capacity(n as usize);
    results.resize_with(n as usize, || None);
    while let Some(done) = set.join_next().await {
        let (i, r) = done.expect("no panics here");
        results[i as usize] = Some(r);
    }
    results
        .into_iter()
        .map(|r| r.expect("every item"))
        .collect()
}

async fn keel_run(exec: &ParallelExecutor, n: u64) -> usize {
    let report = exec
        .run(0..n, |i| async move { Ok::<u64, ()>(black_box(i)) })
        .await;
    assert_eq!(report.succeeded(), n as usize);
    report.total()
}

fn parallel(c: &mut Criterion) {
    let rt = runtime();
    let plain = ParallelExecutor::with_concurrency(LIMIT).expect("valid");
    let timed = ParallelExecutor::builder()
        .concurrency(LIMIT)
        .item_timeout(Duration::from_secs(60))
        .overall_timeout(Duration::from_secs(600))
        .build()
        .expect("valid");

    let shared = ParallelExecutor::builder()
        .bulkhead(
            Bulkhead::builder("bench")
                .max_concurrent(LIMIT)
                .queue(1)
                .build()
                .expect("valid"),
        )
        .build()
        .expect("valid");
    let pipeline = Arc::new(Pipeline::builder().build().expect("valid"));

    let mut group = c.benchmark_group("exec/parallel");
    group.sample_size(20);
    for n in [10_000u64, 100_000] {
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::new("joinset_semaphore", n), &n, |b, &n| {
            b.to_async(&rt).iter(|| async move {
                // Run the baseline inside a spawned task, as the executor's
                // run is: the spawning loop then lives on a worker thread.
                tokio::spawn(join_set_semaphore(n))
                    .await
                    .expect("baseline task")
                    .len()
            });
        });
        group.bench_with_input(
            BenchmarkId::new("joinset_semaphore_join_at_end", n),
            &n,
            |b, &n| {
                b.to_async(&rt).iter(|| async move {
                    tokio::spawn(join_set_semaphore_join_at_end(n))
                        .await
                        .expect("baseline task")
                        .len()
                });
            },
        );
        group.bench_with_input(BenchmarkId::new("keel_run", n), &n, |b, &n| {
            b.to_async(&rt).iter(|| {
                let exec = plain.clone();
                async move {
                    tokio::spawn(async move { keel_run(&exec, n).await })
                        .await
                        .expect("keel task")
                }
            });
        });
        group.bench_with_input(BenchmarkId::new("keel_run_timeouts", n), &n, |b, &n| {
            b.to_async(&rt).iter(|| {
                let exec = timed.clone();
                async move {
                    tokio::spawn(async move { keel_run(&exec, n).await })
                        .await
                        .expect("keel task")
                }
            });
        });
        group.bench_with_input(
            BenchmarkId::new("keel_run_shared_bulkhead", n),
            &n,
            |b, &n| {
                b.to_async(&rt).iter(|| {
                    let exec = shared.clone();
                    async move {
                        tokio::spawn(async move { keel_run(&exec, n).await })
                            .await
                            .expect("keel task")
                    }
                });
            },
        );
        group.bench_with_input(
            BenchmarkId::new("keel_run_through_pipeline", n),
            &n,
            |b, &n| {
                b.to_async(&rt).iter(|| {
                    let (exec, pipeline) = (plain.clone(), Arc::clone(&pipeline));
                    async move {
                        tokio::spawn(async move {
                            let report = exec
                                .run(
                                    0..n,
                                    through(&pipeline, |i: u64, _| async move {
                                        Ok::<u64, ()>(black_box(i))
                                    }),
                                )
                                .await;
                            assert_eq!(report.succeeded(), n as usize);
                            report.total()
                        })
                        .await
                        .expect("keel task")
                    }
                });
            },
        );
        group.bench_with_input(BenchmarkId::new("keel_stream", n), &n, |b, &n| {
            b.to_async(&rt).iter(|| {
                let exec = plain.clone();
                async move {
                    tokio::spawn(async move {
                        exec.stream(0..n, |i| async move { Ok::<u64, ()>(black_box(i)) })
                            .count()
                            .await
                    })
                    .await
                    .expect("keel task")
                }
            });
        });
    }
    group.finish();
}

fn batch(c: &mut Criterion) {
    let rt = runtime();
    let exec = BatchExecutor::builder()
        .batch_size(10)
        .concurrency(LIMIT)
        .build()
        .expect("valid");
    let n = 100_000u64;
    let mut group = c.benchmark_group("exec/batch");
    group.sample_size(20);
    group.throughput(Throughput::Elements(n));
    group.bench_function(BenchmarkId::new("keel_batch_of_10", n), |b| {
        b.to_async(&rt).iter(|| {
            let exec = exec.clone();
            async move {
                tokio::spawn(async move {
                    exec.run(
                        0..n,
                        |batch: keel_exec::Batch<u64>| async move {
                            Ok::<u64, ()>(batch.iter().sum())
                        },
                        |item, sum| Ok::<_, ()>(black_box(*item + *sum)),
                    )
                    .await
                    .total()
                })
                .await
                .expect("keel task")
            }
        });
    });
    group.finish();
}

const WORKERS: usize = 8;
const JOBS: u64 = 10_000;

/// The hand-written baseline: workers sharing one bounded channel.
async fn mpsc_workers(n: u64) -> u64 {
    type Job = (u64, oneshot::Sender<u64>);
    let (tx, rx) = mpsc::channel::<Job>(n as usize);
    let rx = Arc::new(Mutex::new(rx));
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let rx = Arc::clone(&rx);
            tokio::spawn(async move {
                loop {
                    let job = rx.lock().await.recv().await;
                    let Some((i, done)) = job else { break };
                    let _ = done.send(black_box(i));
                }
            })
        })
        .collect();
    let mut handles = Vec::with_capacity(n as usize);
    for i in 0..n {
        let (done, result) = oneshot::channel();
        tx.send((i, done)).await.expect("workers alive");
        handles.push(result);
    }
    drop(tx);
    let mut sum = 0;
    for h in handles {
        sum += h.await.expect("job ran");
    }
    for w in workers {
        w.await.expect("worker");
    }
    sum
}

async fn keel_pool(n: u64) -> u64 {
    let pool = WorkerPool::builder()
        .workers(WORKERS)
        .queue(n as usize)
        .build()
        .expect("valid");
    let handles: Vec<_> = (0..n)
        .map(|i| {
            pool.submit(Priority::Normal, async move { black_box(i) })
                .expect("room in the queue")
        })
        .collect();
    let mut sum = 0;
    for h in handles {
        sum += h.await.expect("job ran");
    }
    pool.shutdown(Duration::from_secs(1)).await;
    sum
}

fn pool(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("exec/pool");
    group.sample_size(20);
    group.throughput(Throughput::Elements(JOBS));
    group.bench_function(BenchmarkId::new("mpsc_workers", JOBS), |b| {
        b.to_async(&rt).iter(|| async {
            tokio::spawn(mpsc_workers(JOBS))
                .await
                .expect("baseline task")
        });
    });
    group.bench_function(BenchmarkId::new("keel_worker_pool", JOBS), |b| {
        b.to_async(&rt)
            .iter(|| async { tokio::spawn(keel_pool(JOBS)).await.expect("keel task") });
    });
    group.finish();
}

criterion_group!(benches, parallel, batch, pool);
criterion_main!(benches);
