//! The retry and circuit-breaker adapters on the parallel executor.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_breaker::{BreakerConfig, CircuitBreaker, State};
use keel_core::Outcome;
use keel_exec::op::{with_breaker, with_retry};
use keel_exec::{ExecError, ParallelExecutor};
use keel_retry::{Backoff, Jitter, RetryError, RetryPolicy};

const SEC: Duration = Duration::from_secs(1);

fn policy(max_retries: u32) -> RetryPolicy {
    RetryPolicy::builder()
        .max_retries(max_retries)
        .backoff(Backoff::constant(SEC))
        .jitter(Jitter::None)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn items_are_retried_independently() {
    // Item i fails its first i attempts.
    let attempts = Arc::new(Mutex::new(vec![0u32; 4]));
    let exec = ParallelExecutor::with_concurrency(4).unwrap();
    let op = {
        let attempts = attempts.clone();
        with_retry(policy(2), move |i: usize| {
            let attempts = attempts.clone();
            async move {
                let n = {
                    let mut a = attempts.lock().unwrap();
                    a[i] += 1;
                    a[i]
                };
                if n <= i as u32 {
                    Err(format!("item {i} attempt {n}"))
                } else {
                    Ok(i)
                }
            }
        })
    };
    let report = exec.run_op(0..4usize, op).await;
    assert_eq!(report.succeeded(), 3);
    assert_eq!(*attempts.lock().unwrap(), vec![1, 2, 3, 3]);
    match &report.get(3).unwrap().result {
        Err(ExecError::Failed(RetryError::Exhausted { last, attempts })) => {
            assert_eq!((last.as_str(), *attempts), ("item 3 attempt 3", 3));
        }
        other => panic!("{other:?}"),
    }
    // Each item's duration includes its backoffs.
    assert_eq!(report.get(2).unwrap().duration, 2 * SEC);
    assert_eq!(report.wall_time(), 2 * SEC);
}

#[tokio::test(start_paused = true)]
async fn a_classifier_stops_retrying_final_errors() {
    let calls = Arc::new(AtomicUsize::new(0));
    let exec = ParallelExecutor::with_concurrency(2).unwrap();
    let op = {
        let calls = calls.clone();
        with_retry(policy(5), move |code: u16| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move { Err::<(), _>(code) }
        })
        .classify(|r: &Result<(), u16>| match r {
            Ok(()) => Outcome::Success,
            Err(404) => Outcome::Neutral,
            Err(_) => Outcome::Failure,
        })
    };
    let report = exec.run_op([404u16, 503], op).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1 + 6);
    assert!(matches!(
        report.get(0).unwrap().result,
        Err(ExecError::Failed(RetryError::NotRetryable {
            error: 404,
            attempts: 1
        }))
    ));
    assert!(matches!(
        report.get(1).unwrap().result,
        Err(ExecError::Failed(RetryError::Exhausted {
            last: 503,
            attempts: 6
        }))
    ));
}

#[tokio::test(start_paused = true)]
async fn retry_with_breaker_stops_calling_a_dead_dependency() {
    let calls = Arc::new(AtomicUsize::new(0));
    // Open for 10 minutes: longer than the policy's retry-after cap (1 min),
    // so a retry that waited out the cap is rejected again.
    let breaker = CircuitBreaker::new(
        "ssm",
        BreakerConfig::consecutive(3, 600 * SEC)
            .build()
            .unwrap(),
    );
    let exec = ParallelExecutor::with_concurrency(1).unwrap();
    let op = {
        let calls = calls.clone();
        with_retry(policy(1), move |_i: u32| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>("connection refused") }
        })
        .breaker(breaker.clone())
    };
    let report = exec.run_op(0..5u32, op).await;
    // Item 0: two failing calls; item 1: one failing call opens the breaker,
    // its retry is rejected; items 2..4: both attempts rejected, no call.
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(report.failed(), 5);
    assert!(matches!(
        report.get(0).unwrap().result,
        Err(ExecError::Failed(RetryError::Exhausted { attempts: 2, .. }))
    ));
    for i in 1..5 {
        assert!(
            matches!(report.get(i).unwrap().result, Err(ExecError::Rejected(_))),
            "item {i}: {:?}",
            report.get(i).unwrap().result
        );
    }
}

#[tokio::test(start_paused = true)]
async fn attempt_timeouts_are_retried_and_reported_as_timeouts() {
    let exec = ParallelExecutor::with_concurrency(2).unwrap();
    let op = with_retry(policy(2), |secs: u64| async move {
        tokio::time::sleep(Duration::from_secs(secs)).await;
        Ok::<_, ()>(secs)
    })
    .attempt_timeout(5 * SEC);
    let report = exec.run_op([1u64, 60], op).await;
    assert_eq!(report.succeeded(), 1);
    let slow = report.get(1).unwrap();
    assert!(matches!(slow.result, Err(ExecError::TimedOut(t)) if t.after == 5 * SEC));
    assert_eq!(
        slow.duration,
        3 * 5 * SEC + 2 * SEC,
        "three attempts and two backoffs"
    );
}

#[tokio::test(start_paused = true)]
async fn breaker_adapter_rejects_without_calling() {
    let calls = AtomicUsize::new(0);
    let breaker = CircuitBreaker::new(
        "ec2",
        BreakerConfig::consecutive(2, 30 * SEC)
            .build()
            .unwrap(),
    );
    let exec = ParallelExecutor::with_concurrency(1).unwrap();
    let op = with_breaker(breaker.clone(), |i: u32| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move { if i < 2 { Err(i) } else { Ok(i) } }
    });
    let report = exec.run_op(0..6u32, op).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(report.failed(), 6);
    match &report.get(5).unwrap().result {
        Err(ExecError::Rejected(r)) => assert_eq!(r.retry_after(), Some(30 * SEC)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        report.get(0).unwrap().result,
        Err(ExecError::Failed(0))
    ));
}

#[tokio::test(start_paused = true)]
async fn breaker_adapter_counts_timeouts_and_panics_as_failures() {
    let breaker = CircuitBreaker::new(
        "api",
        BreakerConfig::consecutive(10, 30 * SEC)
            .build()
            .unwrap(),
    );
    let exec = ParallelExecutor::with_concurrency(4).unwrap();
    let op = with_breaker(breaker.clone(), |i: u32| {
        assert!(i != 3, "the call itself panicked");
        async move {
            match i {
                0 => {
                    tokio::time::sleep(60 * SEC).await;
                    Ok(i)
                }
                1 => panic!("the future panicked"),
                _ => Ok::<_, ()>(i),
            }
        }
    })
    .attempt_timeout(2 * SEC);
    let report = exec.run_op(0..4u32, op).await;
    let error = |i: usize| report.get(i).unwrap().result.as_ref().unwrap_err();
    assert!(error(0).is_timeout());
    assert!(error(1).is_panic());
    assert!(error(3).is_panic());
    assert_eq!(report.succeeded(), 1);
    let totals = breaker.stats().totals;
    assert_eq!(
        (totals.failures, totals.successes, totals.neutral),
        (3, 1, 0),
        "a timeout and two panics are failures"
    );
}

#[tokio::test(start_paused = true)]
async fn items_dropped_by_the_executor_are_neutral_for_the_breaker() {
    // The executor's own per-item timeout drops the call: a cancellation,
    // which must not count against the dependency.
    let breaker = CircuitBreaker::new(
        "api",
        BreakerConfig::consecutive(1, 30 * SEC)
            .build()
            .unwrap(),
    );
    let exec = ParallelExecutor::builder()
        .concurrency(2)
        .item_timeout(SEC)
        .build()
        .unwrap();
    let op = with_breaker(breaker.clone(), |_: u32| async {
        tokio::time::sleep(60 * SEC).await;
        Ok::<_, ()>(())
    });
    let report = exec.run_op(0..2u32, op).await;
    assert_eq!(report.timed_out(), 2);
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.stats().totals.neutral, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retrying_run_is_send() {
    let exec = ParallelExecutor::with_concurrency(8).unwrap();
    let breaker = CircuitBreaker::new(
        "api",
        BreakerConfig::consecutive(5, 30 * SEC)
            .build()
            .unwrap(),
    );
    let report = tokio::spawn(async move {
        let op = with_retry(policy(1), |i: u32| async move {
            tokio::task::yield_now().await;
            Ok::<_, String>(i * 2)
        })
        .breaker(breaker);
        exec.run_op(0..100u32, op).await
    })
    .await
    .unwrap();
    assert_eq!(report.succeeded(), 100);
    assert!(report.successes().all(|(i, v)| *v == 2 * i as u32));
}
