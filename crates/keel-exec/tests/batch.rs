//! Behaviour of the batch executor under paused tokio time.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use keel_core::{Outcome, classify};
use keel_exec::{Batch, BatchExecutor, ExecError, SplitPolicy, Status, StopReason};
use tokio_util::sync::CancellationToken;

const MIN: Duration = Duration::from_secs(60);

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("i-{i:02}")).collect()
}

/// An EC2-like `StartInstances` answer: the instances it started.
#[derive(Debug)]
struct Started(HashSet<String>);

#[derive(Debug, PartialEq, Eq, Clone)]
enum ApiError {
    /// The whole call was refused because of one id (EC2's
    /// `InvalidInstanceID.NotFound`): a permanent, item-caused error.
    InvalidId(String),
    /// A transient outage.
    Unavailable,
    /// The instance is not in the answer.
    NotStarted(String),
}

/// Item errors are neutral (not retried), outages are failures.
fn by_kind(r: &Result<Started, ApiError>) -> Outcome {
    match r {
        Ok(_) => Outcome::Success,
        Err(ApiError::InvalidId(_)) => Outcome::Neutral,
        Err(_) => Outcome::Failure,
    }
}

#[tokio::test(start_paused = true)]
async fn splits_into_batches_of_ten_and_maps_each_item() {
    let sizes = Mutex::new(Vec::new());
    let exec = BatchExecutor::builder().build().unwrap();
    let report = exec
        .run(
            ids(25),
            |batch: Batch<String>| {
                sizes
                    .lock()
                    .unwrap()
                    .push((batch.number(), batch.indices()));
                async move {
                    // The API starts every instance but i-13.
                    let started = batch.iter().filter(|id| *id != "i-13").cloned().collect();
                    Ok::<_, ApiError>(Started(started))
                }
            },
            |id, started: &Started| {
                if started.0.contains(id) {
                    Ok(format!("{id}: pending"))
                } else {
                    Err(ApiError::NotStarted(id.clone()))
                }
            },
        )
        .await;
    assert_eq!(
        *sizes.lock().unwrap(),
        vec![(0, 0..10), (1, 10..20), (2, 20..25)],
        "three calls, in order, one batch at a time by default"
    );
    assert_eq!(report.total(), 25);
    assert_eq!(report.succeeded(), 24);
    assert_eq!(report.failed(), 1);
    let bad = report.get(13).unwrap();
    assert!(matches!(
        &bad.result,
        Err(ExecError::Failed(ApiError::NotStarted(id))) if id == "i-13"
    ));
    assert_eq!(
        report.get(12).unwrap().result.as_ref().unwrap(),
        "i-12: pending"
    );
    assert_eq!(
        report.get(14).unwrap().result.as_ref().unwrap(),
        "i-14: pending"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_batch_fails_its_items_with_one_shared_error() {
    let exec = BatchExecutor::builder().batch_size(4).build().unwrap();
    let report = exec
        .run(
            ids(10),
            |batch: Batch<String>| async move {
                if batch.number() == 1 {
                    Err(ApiError::Unavailable)
                } else {
                    Ok(Started(batch.to_vec().into_iter().collect()))
                }
            },
            |id, s: &Started| Ok::<_, ApiError>(s.0.contains(id)),
        )
        .await;
    assert_eq!(report.succeeded(), 6);
    assert_eq!(report.failed(), 4);
    let errors: Vec<_> = report
        .errors()
        .map(|(i, e)| match e {
            ExecError::BatchFailed(b) => (i, b.batch, b.size, b.shared_error()),
            other => panic!("expected a batch failure, got {other:?}"),
        })
        .collect();
    assert_eq!(
        errors.iter().map(|e| e.0).collect::<Vec<_>>(),
        vec![4, 5, 6, 7]
    );
    assert!(errors.iter().all(|e| (e.1, e.2) == (1, 4)));
    assert!(
        errors.windows(2).all(|w| Arc::ptr_eq(&w[0].3, &w[1].3)),
        "one error, shared by the batch's items"
    );
    assert_eq!(*errors[0].3, ApiError::Unavailable);
}

#[tokio::test(start_paused = true)]
async fn splitting_a_batch_isolates_the_bad_item() {
    let calls = Mutex::new(Vec::new());
    let exec = BatchExecutor::builder()
        .split(SplitPolicy::NonRetryable)
        .build()
        .unwrap();
    let report = exec
        .run_classified(
            ids(10),
            by_kind,
            |batch: Batch<String>| {
                calls.lock().unwrap().push(batch.indices());
                async move {
                    // Like EC2: one unknown id fails the whole call.
                    match batch.iter().find(|id| *id == "i-03") {
                        Some(bad) => Err(ApiError::InvalidId(bad.clone())),
                        None => Ok(Started(batch.to_vec().into_iter().collect())),
                    }
                }
            },
            |id, s: &Started| Ok::<_, ApiError>(s.0.contains(id)),
        )
        .await;
    assert_eq!(report.succeeded(), 9);
    assert_eq!(report.failed(), 1);
    assert!(matches!(
        &report.get(3).unwrap().result,
        Err(ExecError::Failed(ApiError::InvalidId(id))) if id == "i-03"
    ));
    assert!(report.successes().all(|(_, started)| *started));
    // Each part is called once, halves left first.
    assert_eq!(
        *calls.lock().unwrap(),
        vec![0..10, 0..5, 0..2, 2..5, 2..3, 3..5, 3..4, 4..5, 5..10]
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_batch_times_out_and_the_others_go_on() {
    let exec = BatchExecutor::builder().batch_size(2).build().unwrap();
    let report = exec
        .run(
            ids(6),
            |batch: Batch<String>| async move {
                if batch.number() == 1 {
                    tokio::time::sleep(10 * MIN).await;
                }
                Ok::<_, ApiError>(())
            },
            |_, ()| Ok::<_, ApiError>(()),
        )
        .await;
    assert_eq!(report.succeeded(), 4);
    assert_eq!(report.timed_out(), 2);
    for i in [2, 3] {
        let item = report.get(i).unwrap();
        assert_eq!(item.status(), Status::TimedOut);
        assert_eq!(item.duration, 5 * MIN, "the default batch timeout");
    }
    assert_eq!(report.wall_time(), 5 * MIN);
}

#[tokio::test(start_paused = true)]
async fn batches_run_under_their_concurrency_limit() {
    let now = AtomicUsize::new(0);
    let max = AtomicUsize::new(0);
    let exec = BatchExecutor::builder()
        .batch_size(3)
        .concurrency(2)
        .build()
        .unwrap();
    let report = exec
        .run(
            0..30u32,
            |batch: Batch<u32>| {
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                max.fetch_max(n, Ordering::SeqCst);
                let now = &now;
                async move {
                    tokio::time::sleep(Duration::from_secs(u64::from(batch[0] % 7) + 1)).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, ()>(batch.iter().sum::<u32>())
                }
            },
            |item, sum| Ok::<_, ()>((*item, *sum)),
        )
        .await;
    assert!(report.all_succeeded());
    assert_eq!(max.load(Ordering::SeqCst), 2);
    assert_eq!(
        report.get(4).unwrap().result.as_ref().unwrap(),
        &(4, 3 + 4 + 5)
    );
}

#[tokio::test(start_paused = true)]
async fn panics_in_map_fail_one_item_and_in_op_one_batch() {
    let exec = BatchExecutor::builder().batch_size(3).build().unwrap();
    let report = exec
        .run(
            0..9u32,
            |batch: Batch<u32>| async move {
                assert!(batch.number() != 2, "batch 2 blew up");
                Ok::<_, ()>(())
            },
            |item, ()| {
                assert!(*item != 1, "mapping item 1 blew up");
                Ok::<_, ()>(*item)
            },
        )
        .await;
    assert_eq!(report.succeeded(), 5);
    assert_eq!(report.failed(), 4);
    let panicked: Vec<(usize, String)> = report
        .errors()
        .map(|(i, e)| match e {
            ExecError::Panicked(p) => (i, p.message.clone()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        panicked,
        vec![
            (1, "mapping item 1 blew up".to_string()),
            (6, "batch 2 blew up".to_string()),
            (7, "batch 2 blew up".to_string()),
            (8, "batch 2 blew up".to_string()),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_cancels_the_remaining_batches() {
    let token = CancellationToken::new();
    let exec = BatchExecutor::builder()
        .batch_size(2)
        .shutdown(token.clone())
        .build()
        .unwrap();
    let report = exec
        .run(
            ids(6),
            |batch: Batch<String>| {
                let token = token.clone();
                async move {
                    if batch.number() == 1 {
                        token.cancel();
                        std::future::pending::<()>().await;
                    }
                    Ok::<_, ApiError>(())
                }
            },
            |_, ()| Ok::<_, ApiError>(()),
        )
        .await;
    assert_eq!(report.succeeded(), 2);
    assert_eq!(report.cancelled(), 4);
    assert_eq!(report.stop_reason(), Some(StopReason::Shutdown));
    assert!(matches!(
        &report.get(2).unwrap().result,
        Err(ExecError::Cancelled(c)) if c.started
    ));
    assert!(matches!(
        &report.get(4).unwrap().result,
        Err(ExecError::Cancelled(c)) if !c.started
    ));
}

#[tokio::test(start_paused = true)]
async fn no_items_no_calls() {
    let exec = BatchExecutor::default();
    let report = exec
        .run(
            Vec::<String>::new(),
            |_batch: Batch<String>| async { Ok::<(), ()>(()) },
            |_, ()| Ok::<(), ()>(()),
        )
        .await;
    assert_eq!(report.total(), 0);
    assert!(report.all_succeeded());
    // classify is only needed for the explicit variant.
    let _ = classify::Default;
}

#[tokio::test(start_paused = true)]
async fn retryable_failures_are_not_split() {
    let calls = AtomicUsize::new(0);
    let exec = BatchExecutor::builder()
        .batch_size(5)
        .split(SplitPolicy::NonRetryable)
        .build()
        .unwrap();
    let report = exec
        .run_classified(
            ids(5),
            by_kind,
            |_batch: Batch<String>| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err::<Started, _>(ApiError::Unavailable) }
            },
            |_, _| Ok::<(), ApiError>(()),
        )
        .await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "an outage is not split");
    assert_eq!(report.failed(), 5);
    assert!(report.errors().all(|(_, e)| matches!(
        e,
        ExecError::BatchFailed(b) if *b.error() == ApiError::Unavailable
    )));

    // `Always` splits it down to single items: 2n - 1 calls.
    let calls = AtomicUsize::new(0);
    let exec = BatchExecutor::builder()
        .batch_size(5)
        .split(SplitPolicy::Always)
        .build()
        .unwrap();
    let report = exec
        .run(
            ids(5),
            |_batch: Batch<String>| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err::<Started, _>(ApiError::Unavailable) }
            },
            |_, _| Ok::<(), ApiError>(()),
        )
        .await;
    assert_eq!(calls.load(Ordering::SeqCst), 9);
    assert!(
        report
            .errors()
            .all(|(_, e)| matches!(e, ExecError::Failed(ApiError::Unavailable)))
    );
}

#[tokio::test(start_paused = true)]
async fn op_and_map_may_be_fn_mut() {
    // Issue 22: the batch executor takes the same `FnMut` bound as the
    // parallel executor; plain mutable state needs no atomics.
    let mut calls = Vec::new();
    let mut mapped = 0;
    let exec = BatchExecutor::builder()
        .batch_size(4)
        .concurrency(3)
        .build()
        .unwrap();
    let report = exec
        .run(
            0..10u32,
            |batch: Batch<u32>| {
                calls.push(batch.number());
                async move {
                    tokio::time::sleep(Duration::from_secs(u64::from(3 - batch.number() as u32)))
                        .await;
                    Ok::<_, ()>(batch.len())
                }
            },
            |item, len| {
                mapped += 1;
                Ok::<_, ()>((*item, *len))
            },
        )
        .await;
    assert!(report.all_succeeded());
    assert_eq!(calls, [0, 1, 2]);
    assert_eq!(mapped, 10);
    assert_eq!(report.get(9).unwrap().result.as_ref().unwrap(), &(9, 2));
    assert_eq!(
        report.wall_time(),
        Duration::from_secs(3),
        "batches ran at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_run_is_send() {
    let exec = BatchExecutor::builder().concurrency(4).build().unwrap();
    let report = tokio::spawn(async move {
        exec.run(
            ids(95),
            |batch: Batch<String>| async move {
                tokio::task::yield_now().await;
                Ok::<_, ApiError>(batch.len())
            },
            |_, len| Ok::<_, ApiError>(*len),
        )
        .await
    })
    .await
    .unwrap();
    assert_eq!(report.succeeded(), 95);
    assert_eq!(report.get(94).unwrap().result.as_ref().unwrap(), &5);
}
