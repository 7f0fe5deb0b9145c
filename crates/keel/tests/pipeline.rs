//! How the pipeline's policies interact, under paused tokio time.

use std::future::pending;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use keel::breaker::{BreakerConfig, Bulkhead, CircuitBreaker, State};
use keel::retry::{Backoff, Jitter, RetryBudget, RetryPolicy};
use keel::{
    CallOptions, Outcome, Pipeline, PipelineError, Priority, RateLimit, RateLimiter, classify,
};
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
        .bulkhead(Bulkhead::new(4))
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
            .call_with(&CallOptions::new().key("vm-a"), |_| async {
                Ok::<_, ()>(())
            })
            .await
            .unwrap();
    }
    // vm-a spent its burst; vm-b still has its own.
    pipeline
        .call_with(&CallOptions::new().key("vm-b"), |_| async {
            Ok::<_, ()>(())
        })
        .await
        .unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO);
    pipeline
        .call_with(&CallOptions::new().key("vm-a"), |_| async {
            Ok::<_, ()>(())
        })
        .await
        .unwrap();
    assert_eq!(started.elapsed(), Duration::from_millis(100));
    assert_eq!(pipeline.rate_limiter().unwrap().len(), 2);
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
            .bulkhead(Bulkhead::new(1))
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
    let pipeline = Arc::new(
        Pipeline::builder()
            .bulkhead(Bulkhead::new(1))
            .build()
            .unwrap(),
    );
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
    assert!(matches!(err, PipelineError::BulkheadFull(ref full) if full.max_concurrent == 1));
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
        .call_with(&CallOptions::new().classify(&by_status), |_| {
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
        .call_with(&CallOptions::new().classify(&by_status), |_| {
            let n = answers.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<u16, u16>(if n == 0 { 503 } else { 200 }) }
        })
        .await
        .unwrap();
    assert_eq!(value, 200);
}

#[test]
fn invalid_settings_name_the_field() {
    let err = Bulkhead::builder("api")
        .max_concurrent(0)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "max_concurrent");
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

#[tokio::test(start_paused = true)]
async fn pipelines_over_shared_handles_share_rate_slots_and_breaker() {
    // Reads and starts of one API: different retry policies, one per-VM
    // rate, one pool of slots, one breaker.
    let per_vm = RateLimiter::keyed(RateLimit::per_second(1).burst(1)).unwrap();
    let pool = Bulkhead::builder("api")
        .max_concurrent(1)
        .queue(10)
        .build()
        .unwrap();
    let api = breaker(2, Duration::from_secs(30));
    let reads = Pipeline::builder()
        .rate_limiter(per_vm.clone())
        .bulkhead(pool.clone())
        .breaker(api.clone())
        .build()
        .unwrap();
    let starts = Pipeline::builder()
        .retry(quick_retry(3))
        .rate_limiter(per_vm.clone())
        .bulkhead(pool.clone())
        .breaker(api.clone())
        .build()
        .unwrap();
    let started = Instant::now();
    let vm = CallOptions::new().key("vm-1");
    reads
        .call_with(&vm, |_| async { Ok::<_, ()>(()) })
        .await
        .unwrap();
    // The start waits for vm-1's next slot, taken by the read.
    starts
        .call_with(&vm, |_| async { Ok::<_, ()>(()) })
        .await
        .unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    // Failures through either pipeline trip the one breaker.
    let _ = reads.call(|_| async { Err::<(), _>("down") }).await;
    let _ = starts
        .call_with(&CallOptions::new().no_retry(), |_| async {
            Err::<(), _>("down")
        })
        .await;
    assert_eq!(api.state(), State::Open);
    assert!(reads.bulkhead().unwrap().same_as(&pool));
    assert_eq!(pool.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_call_can_carry_its_own_retry_policy_and_deadline() {
    let pipeline = Pipeline::builder()
        .retry(quick_retry(1))
        .deadline(Duration::from_secs(60))
        .build()
        .unwrap();
    let patient = quick_retry(5);
    let calls = AtomicU32::new(0);
    let result = pipeline
        .call_with(&CallOptions::new().retry(&patient), |attempt| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if attempt.number < 5 {
                    Err("flaky")
                } else {
                    Ok(attempt.number)
                }
            }
        })
        .await;
    assert_eq!(result.unwrap(), 5, "the call's policy allowed 5 retries");
    // The call's deadline replaces the pipeline's.
    let started = Instant::now();
    let err = pipeline
        .call_with(
            &CallOptions::new().deadline(Duration::from_millis(300)),
            |_| pending::<Result<(), ()>>(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, PipelineError::DeadlineExceeded { deadline } if deadline == Duration::from_millis(300))
    );
    assert_eq!(started.elapsed(), Duration::from_millis(300));
}

#[tokio::test(start_paused = true)]
async fn the_operation_is_told_the_time_it_has_left() {
    let pipeline = Pipeline::builder()
        .retry(quick_retry(3))
        .deadline(Duration::from_secs(2))
        .attempt_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let seen = std::sync::Mutex::new(Vec::new());
    let _ = pipeline
        .call(|attempt| {
            seen.lock().unwrap().push(attempt.timeout);
            async move {
                // Each attempt uses 700 ms of its time, then fails.
                tokio::time::sleep(Duration::from_millis(700)).await;
                Err::<(), _>("slow and failing")
            }
        })
        .await;
    let seen = seen.into_inner().unwrap();
    // 1 s (attempt timeout), 1 s, then what the 2 s deadline leaves after
    // two attempts of 700 ms and two 10 ms backoffs: 580 ms.
    assert_eq!(seen[0], Some(Duration::from_secs(1)));
    assert_eq!(seen[1], Some(Duration::from_secs(1)));
    assert_eq!(seen[2], Some(Duration::from_millis(580)));
}

#[tokio::test(start_paused = true)]
async fn a_hung_attempt_cut_by_the_deadline_is_neutral_unless_asked_otherwise() {
    for (count_it, failures) in [(false, 0), (true, 1)] {
        let api = breaker(1, Duration::from_secs(30));
        let pipeline = Pipeline::builder()
            .breaker(api.clone())
            .deadline(Duration::from_secs(1))
            .deadline_cut_is_failure(count_it)
            .build()
            .unwrap();
        let err = pipeline
            .call(|_| pending::<Result<(), ()>>())
            .await
            .unwrap_err();
        assert!(
            matches!(err, PipelineError::DeadlineExceeded { .. }),
            "{err:?}"
        );
        assert_eq!(
            api.stats().totals.failures,
            failures,
            "count_it = {count_it}"
        );
        assert_eq!(pipeline.stats().deadline_exceeded, 1);
    }
}

#[tokio::test(start_paused = true)]
async fn critical_calls_overtake_queued_low_ones_in_a_shared_bulkhead() {
    let pool = Bulkhead::builder("api")
        .max_concurrent(1)
        .queue(100)
        .build()
        .unwrap();
    let pipeline = Arc::new(Pipeline::builder().bulkhead(pool.clone()).build().unwrap());
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (name, priority) in [
        ("hold", Priority::Low),
        ("low-1", Priority::Low),
        ("low-2", Priority::Low),
        ("start", Priority::Critical),
    ] {
        let (pipeline, order) = (pipeline.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            pipeline
                .call_with(&CallOptions::new().priority(priority), |_| {
                    order.lock().unwrap().push(name);
                    async {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        Ok::<_, ()>(())
                    }
                })
                .await
                .map_err(|e| e.kind())
        }));
        tokio::task::yield_now().await;
    }
    for t in tasks {
        t.await.unwrap().unwrap_or_else(|k| panic!("{k}"));
    }
    assert_eq!(*order.lock().unwrap(), ["hold", "start", "low-1", "low-2"]);
}

#[test]
fn every_policy_of_a_pipeline_reads_the_pipelines_clock() {
    let (manual, _hand) = keel::Clock::manual();
    let on_manual = CircuitBreaker::new(
        "api",
        BreakerConfig::builder()
            .clock(manual.clone())
            .build()
            .unwrap(),
    );
    // A breaker on a manual clock in a pipeline on tokio's: refused.
    let err = Pipeline::builder()
        .breaker(on_manual.clone())
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "clock");
    assert!(err.reason().contains("circuit breaker"), "{err}");
    // The same clock everywhere: accepted, and the pipeline's own limiter
    // reads it too.
    let retry = RetryPolicy::builder()
        .clock(manual.clone())
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .clock(manual.clone())
        .breaker(on_manual)
        .retry(retry)
        .rate_limit(RateLimit::per_second(1))
        .build()
        .unwrap();
    assert!(pipeline.rate_limiter().unwrap().clock().same_as(&manual));
    let shared = RateLimiter::direct(RateLimit::per_second(1)).unwrap();
    let err = Pipeline::builder()
        .clock(manual)
        .rate_limiter(shared)
        .build()
        .unwrap_err();
    assert!(err.reason().contains("rate limiter"), "{err}");
}

/// An attempt that does not finish at once is cut exactly when its time is
/// up, whether the pipeline held a clock reading (a rate limiter, a
/// deadline) or read the clock only once the operation was pending.
#[tokio::test(start_paused = true)]
async fn attempt_timeouts_are_measured_from_the_attempts_start() {
    let plain = Pipeline::builder()
        .attempt_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let limited = Pipeline::builder()
        .rate_limit(RateLimit::per_second(1000))
        .attempt_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let with_deadline = Pipeline::builder()
        .deadline(Duration::from_secs(3))
        .attempt_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    for pipeline in [&plain, &limited, &with_deadline] {
        let start = Instant::now();
        let fast = pipeline
            .call(|_| async {
                tokio::time::sleep(Duration::from_millis(1_999)).await;
                Ok::<_, &str>(1)
            })
            .await;
        assert_eq!(fast.unwrap(), 1);
        assert_eq!(start.elapsed(), Duration::from_millis(1_999));
        let start = Instant::now();
        let slow = pipeline
            .call(|_| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok::<_, &str>(1)
            })
            .await;
        assert!(
            matches!(slow, Err(PipelineError::AttemptTimeout { .. })),
            "{slow:?}"
        );
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert_eq!(pipeline.stats().attempt_timeouts, 1);
    }
}
