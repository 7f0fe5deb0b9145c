//! How the pipeline's policies interact, under paused tokio time.

use std::future::pending;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use keel::breaker::{BreakerConfig, CircuitBreaker, State};
use keel::retry::{Backoff, Jitter, RetryBudget, RetryPolicy};
use keel::{Outcome, Pipeline, PipelineError, RateLimit, classify};
use tokio::time::Instant;

fn quick_retry(max_retries: u32) -> RetryPolicy {
    RetryPolicy::builder()
        .max_retries(max_retries)
        .backoff(Backoff::constant(Duration::from_millis(10)))
        .jitter(Jitter::None)
        .max_retry_after(Duration::from_secs(60))
        .no_max_elapsed()
        .build()
        .unwrap()
}

fn breaker(failures: u32, open_for: Duration) -> CircuitBreaker {
    CircuitBreaker::new(
        "dep",
        BreakerConfig::builder()
            .no_failure_rate()
            .consecutive_failures(failures)
            .minimum_calls(failures)
            .open_duration(open_for)
            .half_open_max_probes(1)
            .half_open_successes(1)
            .no_bulkhead()
            .build()
            .unwrap(),
    )
}

#[tokio::test(start_paused = true)]
async fn happy_path_makes_one_attempt() {
    let pipeline = Pipeline::builder()
        .deadline(Duration::from_secs(5))
        .retry(quick_retry(3))
        .breaker(breaker(3, Duration::from_secs(5)))
        .rate_limit(RateLimit::per_second(100))
        .bulkhead(4)
        .attempt_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let value = pipeline.call(|_| async { Ok::<_, &str>(7) }).await.unwrap();
    assert_eq!(value, 7);
    let stats = pipeline.stats();
    assert_eq!((stats.calls, stats.attempts, stats.succeeded), (1, 1, 1));
    assert_eq!(pipeline.breaker().unwrap().stats().totals.successes, 1);
}

#[tokio::test(start_paused = true)]
async fn breaker_rejection_makes_retry_wait_its_retry_after() {
    let breaker = breaker(2, Duration::from_secs(5));
    let pipeline = Pipeline::builder()
        .retry(quick_retry(5))
        .breaker(breaker.clone())
        .build()
        .unwrap();
    let calls = AtomicU32::new(0);
    let started = Instant::now();
    let result = pipeline
        .call(|_| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move { if n <= 2 { Err("boom") } else { Ok(n) } }
        })
        .await;
    // Two failures open the breaker; the third attempt is rejected with the
    // remaining open time (5 s minus the 10 ms backoff already slept), and
    // the retry sleeps exactly that instead of its 10 ms backoff.
    assert_eq!(result.unwrap(), 3);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(5) && elapsed < Duration::from_millis(5_100),
        "waited {elapsed:?}"
    );
    let stats = pipeline.stats();
    assert_eq!(stats.breaker_rejections, 1);
    assert_eq!(stats.attempts, 3);
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn open_breaker_without_retry_returns_the_rejection() {
    let breaker = breaker(1, Duration::from_secs(30));
    let pipeline = Pipeline::builder().breaker(breaker).build().unwrap();
    let _ = pipeline.call(|_| async { Err::<(), _>("down") }).await;
    match pipeline.call(|_| async { Ok::<_, &str>(()) }).await {
        Err(PipelineError::Rejected(rejected)) => {
            assert_eq!(rejected.retry_after(), Some(Duration::from_secs(30)));
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn rate_limited_attempt_waits_when_the_deadline_allows() {
    let pipeline = Pipeline::builder()
        .deadline(Duration::from_secs(10))
        .rate_limit(RateLimit::per_second(1).burst(1))
        .build()
        .unwrap();
    let started = Instant::now();
    pipeline.call(|_| async { Ok::<_, ()>(()) }).await.unwrap();
    pipeline.call(|_| async { Ok::<_, ()>(()) }).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    let stats = pipeline.stats();
    assert_eq!(stats.rate_limit_waits, 1);
    assert_eq!(stats.rate_limit_wait_time, Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn rate_limited_attempt_fails_fast_when_the_deadline_is_nearer() {
    let pipeline = Pipeline::builder()
        .deadline(Duration::from_millis(500))
        .rate_limit(RateLimit::per_second(1).burst(1))
        .build()
        .unwrap();
    pipeline.call(|_| async { Ok::<_, ()>(()) }).await.unwrap();
    let started = Instant::now();
    let err = pipeline
        .call(|_| async { Ok::<_, ()>(()) })
        .await
        .unwrap_err();
    assert!(
        matches!(err, PipelineError::RateLimited { retry_after } if retry_after == Duration::from_secs(1)),
        "{err:?}"
    );
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "it must not wait in vain"
    );
    assert_eq!(pipeline.stats().rate_limit_rejections, 1);
}

#[tokio::test(start_paused = true)]
async fn keyed_rate_limits_are_independent_per_key() {
    let pipeline = Pipeline::builder()
        .keyed_rate_limit(RateLimit::per_second(10).burst(5))
        .build()
        .unwrap();
    let started = Instant::now();
    for _ in 0..5 {
        pipeline
            .call_keyed("vm-a", |_| async { Ok::<_, ()>(()) })
            .await
            .unwrap();
    }
    // vm-a spent its burst; vm-b still has its own.
    pipeline
        .call_keyed("vm-b", |_| async { Ok::<_, ()>(()) })
        .await
        .unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO);
    pipeline
        .call_keyed("vm-a", |_| async { Ok::<_, ()>(()) })
        .await
        .unwrap();
    assert_eq!(started.elapsed(), Duration::from_millis(100));
    assert_eq!(pipeline.rate_limited_keys(), 2);
}

#[tokio::test(start_paused = true)]
async fn cancellation_is_neutral_everywhere() {
    let breaker = breaker(1, Duration::from_secs(30));
    let budget = RetryBudget::new(0.2, 1, Duration::from_secs(10)).unwrap();
    let available = budget.available();
    let policy = RetryPolicy::builder()
        .max_retries(3)
        .backoff(Backoff::constant(Duration::from_millis(10)))
        .budget(budget.clone())
        .build()
        .unwrap();
    let pipeline = Arc::new(
        Pipeline::builder()
            .retry(policy)
            .breaker(breaker.clone())
            .bulkhead(1)
            .attempt_timeout(Duration::from_secs(60))
            .build()
            .unwrap(),
    );
    let task = {
        let pipeline = pipeline.clone();
        tokio::spawn(async move { pipeline.call(|_| pending::<Result<(), &str>>()).await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(pipeline.stats().attempts, 1);
    task.abort();
    let _ = task.await;
    // Nothing counted against the dependency, the slot is free, the budget
    // untouched.
    let stats = breaker.stats();
    assert_eq!(stats.state, State::Closed);
    assert_eq!(stats.totals.failures, 0);
    assert_eq!(stats.totals.neutral, 1);
    assert_eq!(budget.available(), available);
    pipeline
        .call(|_| async { Ok::<_, &str>(()) })
        .await
        .expect("the bulkhead slot was released");
}

#[tokio::test(start_paused = true)]
async fn attempt_timeout_is_a_breaker_failure_and_is_retried() {
    let breaker = breaker(5, Duration::from_secs(30));
    let pipeline = Pipeline::builder()
        .retry(quick_retry(2))
        .breaker(breaker.clone())
        .attempt_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let calls = AtomicU32::new(0);
    let value = pipeline
        .call(|_| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    pending::<()>().await;
                }
                Ok::<_, &str>(n)
            }
        })
        .await
        .unwrap();
    assert_eq!(value, 1);
    assert_eq!(breaker.stats().totals.failures, 1);
    assert_eq!(pipeline.stats().attempt_timeouts, 1);
}

#[tokio::test(start_paused = true)]
async fn deadline_covers_backoff_and_attempts() {
    let policy = RetryPolicy::builder()
        .max_retries(10)
        .backoff(Backoff::constant(Duration::from_secs(1)))
        .jitter(Jitter::None)
        .no_max_elapsed()
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .deadline(Duration::from_millis(2_500))
        .retry(policy)
        .build()
        .unwrap();
    let started = Instant::now();
    let err = pipeline
        .call(|_| async { Err::<(), _>("always") })
        .await
        .unwrap_err();
    assert!(
        matches!(err, PipelineError::DeadlineExceeded { deadline } if deadline == Duration::from_millis(2_500))
    );
    assert_eq!(started.elapsed(), Duration::from_millis(2_500));
    assert_eq!(pipeline.stats().attempts, 3);
    assert_eq!(pipeline.stats().deadline_exceeded, 1);
}

#[tokio::test(start_paused = true)]
async fn full_bulkhead_rejects_as_an_overload() {
    let pipeline = Arc::new(Pipeline::builder().bulkhead(1).build().unwrap());
    let holder = {
        let pipeline = pipeline.clone();
        tokio::spawn(async move {
            pipeline
                .call(|_| async {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Ok::<_, ()>(())
                })
                .await
        })
    };
    tokio::task::yield_now().await;
    let err = pipeline
        .call(|_| async { Ok::<_, ()>(()) })
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        PipelineError::BulkheadFull { max_concurrent: 1 }
    ));
    holder.await.unwrap().unwrap();
    assert_eq!(pipeline.stats().bulkhead_rejections, 1);
}

#[tokio::test(start_paused = true)]
async fn classifier_sees_ok_values_and_neutral_errors() {
    let breaker = breaker(1, Duration::from_secs(30));
    let pipeline = Pipeline::builder()
        .retry(quick_retry(2))
        .breaker(breaker.clone())
        .build()
        .unwrap();
    // A 404 is neutral: not retried, breaker untouched.
    let by_status = classify::from_fn(|r: &Result<u16, u16>| match r {
        Ok(503) => Outcome::OVERLOADED,
        Ok(_) => Outcome::Success,
        Err(404) => Outcome::Neutral,
        Err(_) => Outcome::Failure,
    });
    let calls = AtomicU32::new(0);
    let err = pipeline
        .call_classified(&by_status, |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err::<u16, u16>(404) }
        })
        .await
        .unwrap_err();
    assert!(matches!(err, PipelineError::Inner(404)));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(breaker.stats().totals.failures, 0);
    // A 503 answer is retried even though it is an `Ok`.
    let answers = AtomicU32::new(0);
    let value = pipeline
        .call_classified(&by_status, |_| {
            let n = answers.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<u16, u16>(if n == 0 { 503 } else { 200 }) }
        })
        .await
        .unwrap();
    assert_eq!(value, 200);
}

#[test]
fn invalid_settings_name_the_field() {
    let err = Pipeline::builder().bulkhead(0).build().unwrap_err();
    assert_eq!(err.field(), "bulkhead");
    let err = Pipeline::builder()
        .deadline(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "deadline");
    let err = Pipeline::builder()
        .rate_limit(RateLimit::per_second(5).burst(0))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "rate_limit.burst");
    assert!(err.to_string().contains("rate_limit.burst"));
}

#[tokio::test(start_paused = true)]
async fn pipeline_future_is_send() {
    let pipeline = Arc::new(
        Pipeline::builder()
            .retry(quick_retry(1))
            .breaker(breaker(3, Duration::from_secs(1)))
            .rate_limit(RateLimit::per_second(10))
            .build()
            .unwrap(),
    );
    let handle = tokio::spawn(async move { pipeline.call(|_| async { Ok::<_, ()>(1) }).await });
    assert_eq!(handle.await.unwrap().unwrap(), 1);
}
