//! keel-exec's executors running each item through a `Pipeline`
//! (`keel::exec::through`), under paused tokio time.
#![cfg(feature = "exec")]

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel::breaker::{BreakerConfig, Bulkhead, CircuitBreaker, State};
use keel::exec::{
    Batch, BatchExecutor, ExecError, ParallelExecutor, SplitPolicy, through, through_with,
};
use keel::retry::{Backoff, Jitter, RetryPolicy};
use keel::{CallOptions, Outcome, Pipeline, PipelineError, Priority, RateLimit};
use tokio::time::Instant;

const SEC: Duration = Duration::from_secs(1);
const MIN: Duration = Duration::from_secs(60);

fn policy(max_retries: u32) -> RetryPolicy {
    RetryPolicy::builder()
        .max_retries(max_retries)
        .backoff(Backoff::constant(SEC))
        .jitter(Jitter::None)
        .max_retry_after(MIN)
        .no_max_elapsed()
        .build()
        .unwrap()
}

fn consecutive(name: &str, failures: u32, open_for: Duration) -> CircuitBreaker {
    CircuitBreaker::new(
        name,
        BreakerConfig::consecutive(failures, open_for)
            .build()
            .unwrap(),
    )
}

#[tokio::test(start_paused = true)]
async fn items_are_retried_independently() {
    // Item i fails its first i attempts.
    let attempts = Arc::new(Mutex::new(vec![0u32; 4]));
    let pipeline = Pipeline::builder().retry(policy(2)).build().unwrap();
    let exec = ParallelExecutor::with_concurrency(4).unwrap();
    let op = {
        let attempts = attempts.clone();
        through(&pipeline, move |i: usize, attempt| {
            let attempts = attempts.clone();
            async move {
                let n = {
                    let mut a = attempts.lock().unwrap();
                    a[i] += 1;
                    a[i]
                };
                assert_eq!(n, attempt.number);
                if n <= i as u32 {
                    Err(format!("item {i} attempt {n}"))
                } else {
                    Ok(i)
                }
            }
        })
    };
    let report = exec.run(0..4usize, op).await;
    assert_eq!(report.succeeded(), 3);
    assert_eq!(*attempts.lock().unwrap(), vec![1, 2, 3, 3]);
    match &report.get(3).unwrap().result {
        Err(ExecError::Failed(PipelineError::Inner(last))) => assert_eq!(last, "item 3 attempt 3"),
        other => panic!("{other:?}"),
    }
    // Each item's duration includes its backoffs.
    assert_eq!(report.get(2).unwrap().duration, 2 * SEC);
    assert_eq!(report.wall_time(), 2 * SEC);
    assert_eq!(pipeline.stats().calls, 4);
}

fn not_found_is_final(r: &Result<(), u16>) -> Outcome {
    match r {
        Ok(()) => Outcome::Success,
        Err(404) => Outcome::Neutral,
        Err(_) => Outcome::Failure,
    }
}

#[tokio::test(start_paused = true)]
async fn a_per_item_classifier_stops_retrying_final_errors() {
    let calls = AtomicUsize::new(0);
    let pipeline = Pipeline::builder().retry(policy(5)).build().unwrap();
    let exec = ParallelExecutor::with_concurrency(2).unwrap();
    let report = exec
        .run(
            [404u16, 503],
            through_with(
                &pipeline,
                |_: &u16| CallOptions::new().classify(&not_found_is_final),
                |code: u16, _| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async move { Err::<(), _>(code) }
                },
            ),
        )
        .await;
    assert_eq!(calls.load(Ordering::SeqCst), 1 + 6);
    assert!(matches!(
        report.get(0).unwrap().result,
        Err(ExecError::Failed(PipelineError::Inner(404)))
    ));
    assert!(matches!(
        report.get(1).unwrap().result,
        Err(ExecError::Failed(PipelineError::Inner(503)))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_breaker_stops_calling_a_dead_dependency() {
    let calls = AtomicUsize::new(0);
    // Open for 10 minutes: longer than the policy's retry-after cap (1 min),
    // so a retry that waited out the cap is rejected again.
    let breaker = consecutive("ssm", 3, 10 * MIN);
    let pipeline = Pipeline::builder()
        .retry(policy(1))
        .breaker(breaker.clone())
        .build()
        .unwrap();
    let exec = ParallelExecutor::with_concurrency(1).unwrap();
    let report = exec
        .run(
            0..5u32,
            through(&pipeline, |_i: u32, _| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>("connection refused") }
            }),
        )
        .await;
    // Item 0: two failing calls; item 1: one failing call opens the breaker,
    // its retry is rejected; items 2..4: both attempts rejected, no call.
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(report.failed(), 5);
    assert!(matches!(
        report.get(0).unwrap().result,
        Err(ExecError::Failed(PipelineError::Inner(_)))
    ));
    for i in 1..5 {
        assert!(
            matches!(
                report.get(i).unwrap().result,
                Err(ExecError::Failed(PipelineError::Rejected(_)))
            ),
            "item {i}: {:?}",
            report.get(i).unwrap().result
        );
    }
}

#[tokio::test(start_paused = true)]
async fn attempt_timeouts_are_retried_and_counted_by_the_breaker() {
    let breaker = consecutive("api", 10, MIN);
    let pipeline = Pipeline::builder()
        .retry(policy(2))
        .breaker(breaker.clone())
        .attempt_timeout(5 * SEC)
        .build()
        .unwrap();
    let exec = ParallelExecutor::with_concurrency(2).unwrap();
    let report = exec
        .run(
            [1u64, 60],
            through(&pipeline, |secs: u64, attempt| async move {
                assert!(attempt.timeout <= Some(5 * SEC), "told its time left");
                tokio::time::sleep(Duration::from_secs(secs)).await;
                Ok::<_, ()>(secs)
            }),
        )
        .await;
    assert_eq!(report.succeeded(), 1);
    let slow = report.get(1).unwrap();
    assert!(matches!(
        slow.result,
        Err(ExecError::Failed(PipelineError::AttemptTimeout { timeout })) if timeout == 5 * SEC
    ));
    assert_eq!(
        slow.duration,
        3 * 5 * SEC + 2 * SEC,
        "three attempts, two backoffs"
    );
    assert_eq!(breaker.stats().totals.failures, 3);
}

#[tokio::test(start_paused = true)]
async fn items_cut_by_the_executor_are_neutral_for_the_breaker() {
    // The executor's own per-item timeout drops the call: a cancellation,
    // which must not count against the dependency.
    let breaker = consecutive("api", 1, 30 * SEC);
    let pipeline = Pipeline::builder()
        .breaker(breaker.clone())
        .build()
        .unwrap();
    let exec = ParallelExecutor::builder()
        .concurrency(2)
        .item_timeout(SEC)
        .build()
        .unwrap();
    let report = exec
        .run(
            0..2u32,
            through(&pipeline, |_: u32, _| async {
                tokio::time::sleep(MIN).await;
                Ok::<_, ()>(())
            }),
        )
        .await;
    assert_eq!(report.timed_out(), 2);
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.stats().totals.neutral, 2);
}

#[tokio::test(start_paused = true)]
async fn per_item_priority_orders_the_pipelines_bulkhead_queue() {
    let api = Bulkhead::builder("api")
        .max_concurrent(1)
        .queue(10)
        .build()
        .unwrap();
    let pipeline = Pipeline::builder().bulkhead(api.clone()).build().unwrap();
    let order = Mutex::new(Vec::new());
    let exec = ParallelExecutor::with_concurrency(10).unwrap();
    let items = [
        (0, Priority::Low),
        (1, Priority::Low),
        (2, Priority::Normal),
        (3, Priority::Critical),
        (4, Priority::Low),
    ];
    let report = exec
        .run(
            items,
            through_with(
                &pipeline,
                |(_, priority): &(u32, Priority)| CallOptions::new().priority(*priority),
                |(i, _), _| {
                    let order = &order;
                    async move {
                        order.lock().unwrap().push(i);
                        tokio::time::sleep(SEC).await;
                        Ok::<_, ()>(i)
                    }
                },
            ),
        )
        .await;
    assert!(report.all_succeeded());
    // Item 0 took the one slot; the others queued, critical first.
    assert_eq!(*order.lock().unwrap(), [0, 3, 2, 1, 4]);
    assert_eq!(report.wall_time(), 5 * SEC);
}

#[tokio::test(start_paused = true)]
async fn per_item_keys_rate_limit_each_vm_on_its_own() {
    let pipeline = Pipeline::builder()
        .keyed_rate_limit(RateLimit::per_second(1).burst(1))
        .build()
        .unwrap();
    let exec = ParallelExecutor::with_concurrency(10).unwrap();
    let report = exec
        .run(
            ["vm-1", "vm-1", "vm-2"],
            through_with(
                &pipeline,
                |vm: &&str| CallOptions::new().key(vm),
                |vm: &str, _| async move { Ok::<_, ()>(vm) },
            ),
        )
        .await;
    assert!(report.all_succeeded());
    let durations: Vec<Duration> = report.items().iter().map(|r| r.duration).collect();
    assert_eq!(durations, [Duration::ZERO, SEC, Duration::ZERO]);
}

#[derive(Debug, PartialEq, Eq, Clone)]
enum ApiError {
    InvalidId(String),
    Unavailable,
}

#[tokio::test(start_paused = true)]
async fn batches_are_retried_through_the_pipeline() {
    let calls = AtomicUsize::new(0);
    let pipeline = Pipeline::builder().retry(policy(3)).build().unwrap();
    let exec = BatchExecutor::builder().build().unwrap();
    let report = exec
        .run(
            (0..10).map(|i| format!("i-{i}")),
            through(&pipeline, |batch: Batch<String>, _| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 2 {
                        Err(ApiError::Unavailable)
                    } else {
                        Ok(batch.to_vec().into_iter().collect::<HashSet<_>>())
                    }
                }
            }),
            |id, started| Ok(started.contains(id)),
        )
        .await;
    assert!(report.all_succeeded());
    assert!(report.successes().all(|(_, started)| *started));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(report.wall_time(), 2 * SEC, "two 1 s backoffs");
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_rejects_the_remaining_batches_without_calling() {
    let calls = AtomicUsize::new(0);
    let breaker = consecutive("ec2", 2, MIN);
    let pipeline = Pipeline::builder()
        .breaker(breaker.clone())
        .build()
        .unwrap();
    let exec = BatchExecutor::builder().batch_size(2).build().unwrap();
    let report = exec
        .run(
            (0..8).map(|i| format!("i-{i}")),
            through(&pipeline, |_batch: Batch<String>, _| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>(ApiError::Unavailable) }
            }),
            |_, ()| Ok(()),
        )
        .await;
    assert_eq!(calls.load(Ordering::SeqCst), 2, "opened after two failures");
    assert_eq!(report.failed(), 8);
    for i in 4..8 {
        match report.get(i).unwrap().result.as_ref().unwrap_err().inner() {
            Some(PipelineError::Rejected(r)) => assert_eq!(r.retry_after(), Some(MIN)),
            other => panic!("item {i}: {other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn batch_retries_wait_out_an_open_breaker() {
    // The breaker opens for 30 s after one failure; the retry policy honours
    // its retry-after, so the next attempt is the half-open probe at 30 s.
    let calls = AtomicUsize::new(0);
    let pipeline = Pipeline::builder()
        .breaker(consecutive("ec2", 1, 30 * SEC))
        .retry(policy(3))
        .build()
        .unwrap();
    let exec = BatchExecutor::builder().build().unwrap();
    let report = exec
        .run(
            0..3u32,
            through(&pipeline, |_batch: Batch<u32>, _| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        Err(ApiError::Unavailable)
                    } else {
                        Ok(())
                    }
                }
            }),
            |_, ()| Ok(()),
        )
        .await;
    assert!(report.all_succeeded(), "{:?}", report.items());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "rejected attempts never call"
    );
    assert_eq!(report.wall_time(), 30 * SEC);
}

/// Invalid ids are the caller's fault (neutral: not retried, split on);
/// everything else is a failure.
fn by_kind<R>(r: &Result<R, PipelineError<ApiError>>) -> Outcome {
    match r {
        Ok(_) => Outcome::Success,
        Err(PipelineError::Inner(ApiError::InvalidId(_))) => Outcome::Neutral,
        Err(_) => Outcome::Failure,
    }
}

fn invalid_id_is_final(r: &Result<(), ApiError>) -> Outcome {
    match r {
        Err(ApiError::InvalidId(_)) => Outcome::Neutral,
        Err(ApiError::Unavailable) => Outcome::Failure,
        Ok(()) => Outcome::Success,
    }
}

#[tokio::test(start_paused = true)]
async fn a_final_batch_error_is_split_and_an_outage_is_retried_not_split() {
    let calls = Mutex::new(Vec::new());
    let pipeline = Pipeline::builder().retry(policy(2)).build().unwrap();
    let exec = BatchExecutor::builder()
        .batch_size(4)
        .split(SplitPolicy::NonRetryable)
        .build()
        .unwrap();
    let ids = ["i-0", "i-bad", "i-2", "i-3", "i-4", "i-5", "i-6", "i-7"];
    let report = exec
        .run_classified(
            ids,
            by_kind,
            through_with(
                &pipeline,
                |_: &Batch<&str>| CallOptions::new().classify(&invalid_id_is_final),
                |batch: Batch<&str>, _| {
                    calls.lock().unwrap().push(batch.indices());
                    async move {
                        if batch.number() == 1 {
                            Err(ApiError::Unavailable)
                        } else if let Some(bad) = batch.iter().find(|id| **id == "i-bad") {
                            Err(ApiError::InvalidId((*bad).to_owned()))
                        } else {
                            Ok(())
                        }
                    }
                },
            ),
            |_, ()| Ok(()),
        )
        .await;
    assert!(matches!(
        &report.get(1).unwrap().result,
        Err(ExecError::Failed(PipelineError::Inner(ApiError::InvalidId(id)))) if id == "i-bad"
    ));
    for i in [0, 2, 3] {
        assert!(report.get(i).unwrap().result.is_ok(), "item {i}");
    }
    for i in 4..8 {
        assert!(matches!(
            report.get(i).unwrap().result.as_ref().unwrap_err(),
            ExecError::BatchFailed(b) if matches!(b.error(), PipelineError::Inner(ApiError::Unavailable))
        ));
    }
    assert_eq!(
        *calls.lock().unwrap(),
        [0..4, 0..2, 0..1, 1..2, 2..4, 4..8, 4..8, 4..8],
        "the bad batch is split (no retries), the outage retried (not split)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_through_a_pipeline_is_send() {
    let pipeline = Arc::new(
        Pipeline::builder()
            .retry(policy(1))
            .breaker(consecutive("api", 5, 30 * SEC))
            .build()
            .unwrap(),
    );
    let exec = ParallelExecutor::with_concurrency(8).unwrap();
    let start = Instant::now();
    let report = tokio::spawn(async move {
        exec.run(
            0..100u32,
            through(&pipeline, |i: u32, _| async move {
                tokio::task::yield_now().await;
                Ok::<_, String>(i * 2)
            }),
        )
        .await
    })
    .await
    .unwrap();
    assert_eq!(report.succeeded(), 100);
    assert!(report.successes().all(|(i, v)| *v == 2 * i as u32));
    assert!(start.elapsed() < MIN);
}
