//! Every timing rule, under paused tokio time: the virtual clock moves only
//! when every task is idle, so the gaps measured here are the exact sleeps.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use keel_core::{Outcome, Rng, classify};
use keel_retry::{Backoff, Jitter, RetryError, RetryPolicy};
use tokio::time::Instant;

const S: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

/// Runs an operation that always fails and returns the instants (relative
/// to the start) at which each attempt began.
async fn attempt_times(policy: &RetryPolicy) -> Vec<Duration> {
    let start = Instant::now();
    let mut times = Vec::new();
    let result: Result<(), _> = policy
        .retry(|_| {
            times.push(start.elapsed());
            async { Err("down") }
        })
        .await;
    assert!(result.is_err());
    times
}

fn gaps(times: &[Duration]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

fn ceil_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_nanos().div_ceil(1_000_000) as u64)
}

fn plain(backoff: Backoff, max_retries: u32) -> RetryPolicy {
    RetryPolicy::builder()
        .backoff(backoff)
        .jitter(Jitter::None)
        .max_delay(S * 60)
        .max_retries(max_retries)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn constant_backoff_sleeps_the_same_each_time() {
    let times = attempt_times(&plain(Backoff::constant(S * 3), 3)).await;
    assert_eq!(times.len(), 4);
    assert_eq!(gaps(&times), [S * 3, S * 3, S * 3]);
}

#[tokio::test(start_paused = true)]
async fn linear_backoff_adds_a_step_each_time() {
    let times = attempt_times(&plain(Backoff::linear(S, S * 2), 4)).await;
    assert_eq!(gaps(&times), [S, S * 3, S * 5, S * 7]);
}

#[tokio::test(start_paused = true)]
async fn exponential_backoff_multiplies_and_is_capped() {
    let policy = RetryPolicy::builder()
        .backoff(Backoff::exponential(MS * 500, 3.0))
        .jitter(Jitter::None)
        .max_delay(S * 10)
        .max_retries(5)
        .build()
        .unwrap();
    let times = attempt_times(&policy).await;
    assert_eq!(
        gaps(&times),
        [MS * 500, MS * 1500, MS * 4500, S * 10, S * 10]
    );
}

#[tokio::test(start_paused = true)]
async fn jittered_sleeps_replay_the_seeded_schedule_and_respect_the_cap() {
    for jitter in [
        Jitter::Full,
        Jitter::Equal,
        Jitter::Decorrelated,
        Jitter::Proportional(0.5),
    ] {
        let build = || {
            RetryPolicy::builder()
                .backoff(Backoff::exponential(S, 2.0))
                .max_delay(S * 5)
                .jitter(jitter)
                .max_retries(6)
                .rng(Rng::with_seed(99))
                .build()
                .unwrap()
        };
        let slept = gaps(&attempt_times(&build()).await);
        // tokio's timer rounds a sleep up to the next millisecond. A preview
        // drawn from the same seed predicts a fresh policy's sleeps.
        let planned: Vec<_> = build()
            .delays_with(&Rng::with_seed(99))
            .map(ceil_ms)
            .collect();
        assert_eq!(slept, planned, "{jitter:?}");
        assert!(slept.iter().all(|d| *d <= S * 5), "{jitter:?}: {slept:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn previewing_the_delays_does_not_change_the_sleeps() {
    let build = || {
        RetryPolicy::builder()
            .backoff(Backoff::exponential(S, 2.0))
            .jitter(Jitter::Full)
            .max_retries(4)
            .rng(Rng::with_seed(3))
            .build()
            .unwrap()
    };
    let untouched = gaps(&attempt_times(&build()).await);
    let previewed = build();
    let first: Vec<_> = previewed.delays().collect();
    let second: Vec<_> = previewed.delays().collect();
    assert_eq!(first, second, "the preview is pure");
    assert_eq!(first.len(), 4);
    assert_eq!(gaps(&attempt_times(&previewed).await), untouched);
}

#[tokio::test(start_paused = true)]
async fn proportional_jitter_sleeps_1_2_4_8_16_seconds_within_20_percent() {
    for seed in 0..20 {
        let p = RetryPolicy::builder()
            .max_retries(5)
            .backoff(Backoff::exponential(S, 2.0))
            .jitter(Jitter::Proportional(0.2))
            .max_delay(S * 20)
            .rng(Rng::with_seed(seed))
            .build()
            .unwrap();
        let slept = gaps(&attempt_times(&p).await);
        assert_eq!(slept.len(), 5);
        for (d, nominal) in slept.iter().zip([1u64, 2, 4, 8, 16]) {
            let nominal = S * nominal as u32;
            assert!(
                *d >= nominal.mul_f64(0.8) && *d <= ceil_ms(nominal.mul_f64(1.2)),
                "seed {seed}: {d:?} not within 20 % of {nominal:?}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn max_elapsed_counts_time_spent_in_the_operation() {
    // Each attempt takes 2 s, sleeps are 1 s, the limit is 10 s: attempts
    // start at 0, 3, 6 and 9; the fourth is cancelled at 10 s.
    let policy = RetryPolicy::builder()
        .backoff(Backoff::constant(S))
        .jitter(Jitter::None)
        .max_retries(100)
        .max_elapsed(S * 10)
        .build()
        .unwrap();
    let start = Instant::now();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let result: Result<(), _> = policy
        .retry(|attempt| {
            seen.lock().unwrap().push((start.elapsed(), attempt));
            async move {
                tokio::time::sleep(S * 2).await;
                Err(attempt.number)
            }
        })
        .await;
    assert_eq!(start.elapsed(), S * 10);
    match result {
        Err(RetryError::DeadlineExceeded {
            last,
            attempts,
            max_elapsed,
        }) => {
            assert_eq!(
                last,
                Some(3),
                "the cancelled fourth attempt returned nothing"
            );
            assert_eq!(attempts, 4);
            assert_eq!(max_elapsed, S * 10);
        }
        other => panic!("unexpected {other:?}"),
    }
    let seen = seen.lock().unwrap();
    let elapsed: Vec<_> = seen.iter().map(|(at, _)| *at).collect();
    assert_eq!(elapsed, [Duration::ZERO, S * 3, S * 6, S * 9]);
    let timeouts: Vec<_> = seen.iter().map(|(_, a)| a.timeout).collect();
    assert_eq!(
        timeouts,
        [Some(S * 10), Some(S * 7), Some(S * 4), Some(S)],
        "each attempt is told what is left"
    );
    assert_eq!(policy.stats().deadline_exceeded, 1);
}

#[tokio::test(start_paused = true)]
async fn a_sleep_that_would_overshoot_the_deadline_is_not_started() {
    let policy = RetryPolicy::builder()
        .backoff(Backoff::constant(S * 4))
        .jitter(Jitter::None)
        .max_retries(100)
        .max_elapsed(S * 10)
        .build()
        .unwrap();
    let start = Instant::now();
    let times = attempt_times(&policy).await;
    // Attempts at 0, 4, 8; a third sleep would end at 12 s > 10 s, so the
    // call gives up at 8 s instead of sleeping.
    assert_eq!(times, [Duration::ZERO, S * 4, S * 8]);
    assert_eq!(start.elapsed(), S * 8);
    let result: Result<(), _> = policy.retry(|_| async { Err("down") }).await;
    assert!(matches!(
        result,
        Err(RetryError::DeadlineExceeded {
            last: Some("down"),
            attempts: 3,
            ..
        })
    ));
}

#[tokio::test(start_paused = true)]
async fn critical_preset_stops_at_twenty_minutes_of_slow_attempts() {
    let policy = RetryPolicy::critical();
    let start = Instant::now();
    // Every attempt hangs for 5 minutes: the 20-minute limit, not the 7
    // retries, ends the call, and it ends exactly at 20 minutes.
    let result: Result<(), _> = policy
        .retry(|_| async {
            tokio::time::sleep(S * 300).await;
            Err("slow failure")
        })
        .await;
    assert!(matches!(result, Err(RetryError::DeadlineExceeded { .. })));
    assert_eq!(start.elapsed(), S * 1200);
    // 300 s attempts and sleeps of at most 2 + 4 + 8 s: the fourth attempt
    // is the one the limit cuts off.
    assert_eq!(result.unwrap_err().attempts(), 4);
}

#[tokio::test(start_paused = true)]
async fn per_attempt_timeout_cancels_and_retries() {
    let policy = RetryPolicy::builder()
        .backoff(Backoff::constant(S))
        .jitter(Jitter::None)
        .max_retries(3)
        .attempt_timeout(S)
        .build()
        .unwrap();
    let start = Instant::now();
    let finished = Arc::new(AtomicU32::new(0));
    let result = policy
        .retry(|attempt| {
            let finished = finished.clone();
            async move {
                if attempt.number < 3 {
                    tokio::time::sleep(S * 5).await;
                }
                finished.fetch_add(1, Ordering::SeqCst);
                Ok::<_, ()>(attempt.number)
            }
        })
        .await;
    assert_eq!(result.unwrap(), 3);
    // 1 s timeout, 1 s sleep, 1 s timeout, 1 s sleep, instant success.
    assert_eq!(start.elapsed(), S * 4);
    assert_eq!(
        finished.load(Ordering::SeqCst),
        1,
        "timed-out attempts were cancelled"
    );
    let stats = policy.stats();
    assert_eq!(
        (
            stats.attempt_timeouts,
            stats.retries,
            stats.successes_after_retry
        ),
        (2, 2, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn timing_out_on_the_last_attempt_reports_attempt_timeout() {
    let policy = RetryPolicy::builder()
        .backoff(Backoff::constant(S))
        .jitter(Jitter::None)
        .max_retries(2)
        .attempt_timeout(S * 2)
        .build()
        .unwrap();
    let result: Result<(), _> = policy
        .retry(|attempt| async move {
            if attempt.number == 1 {
                return Err("refused");
            }
            std::future::pending::<()>().await;
            Ok(())
        })
        .await;
    match result {
        Err(RetryError::AttemptTimeout {
            last,
            attempts,
            timeout,
        }) => assert_eq!((last, attempts, timeout), (Some("refused"), 3, S * 2)),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(policy.stats().exhausted, 1);
}

#[derive(Debug)]
enum ApiError {
    /// 429 with `Retry-After`, Telegram's `retry_after`, an open breaker.
    Busy(Option<Duration>),
    Down,
    NotFound,
}

fn by_error(e: &ApiError) -> Outcome {
    match e {
        ApiError::Busy(after) => Outcome::Overloaded {
            retry_after: *after,
        },
        ApiError::Down => Outcome::Failure,
        ApiError::NotFound => Outcome::Neutral,
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_replaces_the_delay_and_is_capped() {
    let policy = RetryPolicy::builder()
        .backoff(Backoff::constant(S))
        .jitter(Jitter::None)
        .max_retries(4)
        .max_retry_after(S * 30)
        .build()
        .unwrap();
    let start = Instant::now();
    let mut times = Vec::new();
    let errors = [
        ApiError::Busy(Some(S * 7)),   // honoured: 7 s instead of 1 s
        ApiError::Busy(Some(S * 600)), // capped at 30 s
        ApiError::Busy(None),          // no hint: the backoff's 1 s
        ApiError::Down,                // plain failure: 1 s
    ];
    let classifier = classify::error_fn(by_error);
    let result = policy
        .retry_classified(&classifier, |attempt| {
            times.push(start.elapsed());
            let outcome = errors.get(attempt.number as usize - 1).map(|e| match e {
                ApiError::Busy(d) => ApiError::Busy(*d),
                ApiError::Down => ApiError::Down,
                ApiError::NotFound => ApiError::NotFound,
            });
            async move {
                match outcome {
                    Some(e) => Err(e),
                    None => Ok("sent"),
                }
            }
        })
        .await;
    assert_eq!(result.unwrap(), "sent");
    assert_eq!(gaps(&times), [S * 7, S * 30, S, S]);
}

#[tokio::test(start_paused = true)]
async fn retry_after_counts_against_max_elapsed() {
    let policy = RetryPolicy::builder()
        .backoff(Backoff::constant(S))
        .max_retries(4)
        .max_elapsed(S * 20)
        .build()
        .unwrap();
    let start = Instant::now();
    let result: Result<(), _> = policy
        .retry_classified(&classify::error_fn(by_error), |_| async {
            Err(ApiError::Busy(Some(S * 45)))
        })
        .await;
    // A 45 s wait cannot fit in 20 s: give up at once rather than sleep.
    assert!(matches!(
        result,
        Err(RetryError::DeadlineExceeded { attempts: 1, .. })
    ));
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn neutral_and_success_outcomes_stop_at_once() {
    let policy = RetryPolicy::builder()
        .backoff(Backoff::constant(S))
        .build()
        .unwrap();
    let result: Result<(), _> = policy
        .retry_classified(&classify::error_fn(by_error), |_| async {
            Err(ApiError::NotFound)
        })
        .await;
    assert!(matches!(
        result,
        Err(RetryError::NotRetryable {
            error: ApiError::NotFound,
            attempts: 1
        })
    ));

    // An error the classifier calls a success is not retried either.
    let accept_gone = classify::error_fn(|_: &&str| Outcome::Success);
    let result: Result<(), _> = policy
        .retry_classified(&accept_gone, |_| async { Err("already deleted") })
        .await;
    assert!(matches!(
        result,
        Err(RetryError::NotRetryable { attempts: 1, .. })
    ));

    let stats = policy.stats();
    assert_eq!(
        (stats.calls, stats.attempts, stats.not_retryable),
        (2, 2, 2)
    );
}

#[tokio::test(start_paused = true)]
async fn an_ok_classified_as_overloaded_is_retried_and_returned_when_retries_run_out() {
    let policy = RetryPolicy::builder()
        .backoff(Backoff::constant(S))
        .jitter(Jitter::None)
        .max_retries(2)
        .build()
        .unwrap();
    let status_503 = classify::from_fn(|r: &Result<u16, ()>| match r {
        Ok(503) => Outcome::overloaded_for(S * 2),
        Ok(_) => Outcome::Success,
        Err(()) => Outcome::Failure,
    });
    let start = Instant::now();
    let result = policy
        .retry_classified(&status_503, |_| async { Ok(503) })
        .await;
    assert_eq!(result.unwrap(), 503);
    assert_eq!(start.elapsed(), S * 4, "two retry-after waits of 2 s");
    assert_eq!(policy.stats().exhausted, 1);
}

#[tokio::test(start_paused = true)]
async fn the_hook_sees_every_retry() {
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = events.clone();
    let policy = RetryPolicy::builder()
        .backoff(Backoff::linear(S, S))
        .jitter(Jitter::None)
        .max_retries(5)
        .on_retry(move |e| {
            sink.lock().unwrap().push((
                e.attempt,
                e.outcome,
                e.delay,
                format!("{:?}", e.error),
                e.timed_out,
                e.elapsed,
            ));
        })
        .build()
        .unwrap();
    let result = policy
        .retry(|attempt| async move {
            if attempt.number < 3 {
                Err(format!("fail {}", attempt.number))
            } else {
                Ok(())
            }
        })
        .await;
    assert!(result.is_ok());
    let events = events.lock().unwrap();
    assert_eq!(
        *events,
        [
            (
                1,
                Outcome::Failure,
                S,
                r#"Some("fail 1")"#.to_string(),
                false,
                Duration::ZERO,
            ),
            (
                2,
                Outcome::Failure,
                S * 2,
                r#"Some("fail 2")"#.to_string(),
                false,
                S,
            ),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn attempts_are_numbered_from_one_and_stats_add_up() {
    let policy = RetryPolicy::builder()
        .backoff(Backoff::constant(MS))
        .max_retries(3)
        .build()
        .unwrap();
    let mut numbers = Vec::new();
    let ok = policy
        .retry(|attempt| {
            numbers.push((attempt.number, attempt.is_retry()));
            async move { if attempt.number < 4 { Err(()) } else { Ok(()) } }
        })
        .await;
    assert!(ok.is_ok());
    assert_eq!(numbers, [(1, false), (2, true), (3, true), (4, true)]);

    let failed: Result<(), _> = policy.retry(|_| async { Err("no") }).await;
    assert!(matches!(
        failed,
        Err(RetryError::Exhausted {
            last: "no",
            attempts: 4
        })
    ));
    let first_time = policy.retry(|_| async { Ok::<_, ()>(()) }).await;
    assert!(first_time.is_ok());

    let clone = policy.clone();
    let s = clone.stats();
    assert_eq!(s.calls, 3);
    assert_eq!(s.attempts, 9);
    assert_eq!(s.retries, 6);
    assert_eq!(s.successes, 2);
    assert_eq!(s.successes_after_retry, 1);
    assert_eq!(s.exhausted, 1);
    assert_eq!(s.budget_refusals + s.deadline_exceeded + s.not_retryable, 0);
}

#[tokio::test(start_paused = true)]
async fn zero_retries_makes_exactly_one_attempt() {
    let policy = RetryPolicy::builder().max_retries(0).build().unwrap();
    let result: Result<(), _> = policy.retry(|_| async { Err("x") }).await;
    assert!(matches!(
        result,
        Err(RetryError::Exhausted { attempts: 1, .. })
    ));
}

/// An open circuit breaker's rejection says "overloaded, retry after the
/// remaining open time" through `ErrorOutcome`; `classify::ByError` reads it.
#[derive(Debug)]
enum CallError {
    CircuitOpen { remaining: Duration },
    Io,
}

impl keel_core::ErrorOutcome for CallError {
    fn outcome(&self) -> Outcome {
        match self {
            CallError::CircuitOpen { remaining } => Outcome::overloaded_for(*remaining),
            CallError::Io => Outcome::Failure,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_s_remaining_time_is_waited_out() {
    let policy = RetryPolicy::builder()
        .backoff(Backoff::constant(Duration::from_millis(100)))
        .jitter(Jitter::None)
        .max_retries(3)
        .build()
        .unwrap();
    let start = Instant::now();
    let mut times = Vec::new();
    let result = policy
        .retry_classified(&classify::ByError, |attempt| {
            times.push(start.elapsed());
            async move {
                match attempt.number {
                    1 => Err(CallError::Io),
                    2 => Err(CallError::CircuitOpen { remaining: S * 12 }),
                    _ => Ok("closed again"),
                }
            }
        })
        .await;
    assert_eq!(result.unwrap(), "closed again");
    assert_eq!(gaps(&times), [Duration::from_millis(100), S * 12]);
}

#[test]
fn policies_and_budgets_are_send_and_sync() {
    fn check<T: Send + Sync + Clone + std::fmt::Debug>() {}
    check::<RetryPolicy>();
    check::<keel_retry::RetryBudget>();
}

#[tokio::test(start_paused = true)]
async fn a_retry_is_counted_once_its_attempt_waits_and_a_call_once_it_ends() {
    let policy = RetryPolicy::builder()
        .backoff(Backoff::constant(Duration::ZERO))
        .max_delay(Duration::ZERO)
        .max_retries(3)
        .build()
        .unwrap();
    let p = policy.clone();
    let call = tokio::spawn(async move {
        p.retry(|attempt| async move {
            if attempt.number == 1 {
                return Err("reset");
            }
            tokio::time::sleep(S * 10).await;
            Ok(attempt.number)
        })
        .await
    });
    tokio::time::sleep(S).await;
    let running = policy.stats();
    assert_eq!(
        (running.calls, running.retries),
        (0, 1),
        "the retry waits, the call has not ended"
    );
    assert_eq!(call.await.unwrap().unwrap(), 2);
    let done = policy.stats();
    assert_eq!(
        (
            done.calls,
            done.attempts,
            done.retries,
            done.successes_after_retry
        ),
        (1, 2, 1, 1)
    );
}

/// Successes after retrying are counted with the retries they made, whether
/// those retries were published while the call waited (a non-zero delay)
/// or not (zero delays, up to and beyond the slots a success can carry).
#[tokio::test(start_paused = true)]
async fn retries_are_counted_once_with_and_without_waits() {
    for (delay, failures) in [
        (Duration::ZERO, 1u32),
        (Duration::ZERO, 3),
        (Duration::ZERO, 4),
        (Duration::ZERO, 7),
        (S, 2),
        (S, 5),
    ] {
        let policy = RetryPolicy::builder()
            .backoff(Backoff::constant(delay))
            .max_delay(delay)
            .jitter(Jitter::None)
            .max_retries(10)
            .build()
            .unwrap();
        for _ in 0..3 {
            let result = policy
                .retry(|attempt| async move {
                    if attempt.number <= failures {
                        Err("transient")
                    } else {
                        Ok(attempt.number)
                    }
                })
                .await;
            assert_eq!(result.unwrap(), failures + 1);
        }
        let first_try = policy.retry(|_| async { Ok::<_, &str>(0) }).await;
        assert_eq!(first_try.unwrap(), 0);
        let s = policy.stats();
        let retries = u64::from(3 * failures);
        assert_eq!(
            (
                s.calls,
                s.successes,
                s.successes_after_retry,
                s.retries,
                s.attempts
            ),
            (4, 4, 3, retries, 4 + retries),
            "delay {delay:?}, {failures} failures per call"
        );
    }
}
