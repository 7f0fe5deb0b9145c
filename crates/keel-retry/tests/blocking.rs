//! The blocking variant. It really sleeps (`std::thread::sleep`), so the
//! delays here are a millisecond and only counts are asserted, never
//! timings.

use std::time::Duration;

use keel_core::{Outcome, classify};
use keel_retry::{Backoff, Jitter, RetryBudget, RetryError, RetryPolicy};

fn tiny(max_retries: u32) -> keel_retry::RetryPolicyBuilder {
    RetryPolicy::builder()
        .backoff(Backoff::constant(Duration::from_millis(1)))
        .jitter(Jitter::None)
        .max_retries(max_retries)
}

#[test]
fn retries_until_success() {
    let policy = tiny(5).build().unwrap();
    let mut seen = Vec::new();
    let result = policy.retry_blocking(|attempt| {
        seen.push(attempt.number);
        assert_eq!(attempt.timeout, None, "the blocking variant cannot cancel");
        if attempt.number < 3 {
            Err("busy")
        } else {
            Ok("done")
        }
    });
    assert_eq!(result.unwrap(), "done");
    assert_eq!(seen, [1, 2, 3]);
    let s = policy.stats();
    assert_eq!(
        (s.calls, s.attempts, s.retries, s.successes_after_retry),
        (1, 3, 2, 1)
    );
}

#[test]
fn gives_up_after_max_retries() {
    let policy = tiny(2).build().unwrap();
    let mut calls = 0;
    let result: Result<(), _> = policy.retry_blocking(|_| {
        calls += 1;
        Err(calls)
    });
    assert!(matches!(
        result,
        Err(RetryError::Exhausted {
            last: 3,
            attempts: 3
        })
    ));
    assert_eq!(policy.stats().exhausted, 1);
}

#[test]
fn neutral_errors_are_not_retried() {
    let policy = tiny(5).build().unwrap();
    let mut calls = 0;
    let only_timeouts = classify::on_error(|e: &&str| *e == "timeout");
    let result: Result<(), _> = policy.retry_blocking_classified(&only_timeouts, |_| {
        calls += 1;
        Err("invalid argument")
    });
    assert!(matches!(
        result,
        Err(RetryError::NotRetryable { attempts: 1, .. })
    ));
    assert_eq!(calls, 1);
}

#[test]
fn retry_after_and_budget_apply_too() {
    let budget = RetryBudget::new(0.0, 1, Duration::from_secs(60)).unwrap();
    let policy = tiny(10)
        .budget(budget.clone())
        .max_retry_after(Duration::from_millis(2))
        .build()
        .unwrap();
    let busy = classify::error_fn(|_: &&str| Outcome::overloaded_for(Duration::from_secs(3600)));
    let mut calls = 0;
    // The hour-long retry-after is capped at 2 ms, and the budget (60
    // retries per minute) refuses the 61st retry.
    let result: Result<(), _> = policy.retry_blocking_classified(&busy, |_| {
        calls += 1;
        Err("slow down")
    });
    assert!(matches!(
        result,
        Err(RetryError::Exhausted { attempts: 11, .. })
    ));
    // Five more calls spend the other 50 retries; the seventh call is refused.
    for _ in 0..6 {
        let _ = policy.retry_blocking_classified(&busy, |_| Err::<(), _>("slow down"));
    }
    let s = policy.stats();
    assert_eq!(s.retries, 60);
    assert_eq!(s.budget_refusals, 1);
    assert_eq!(budget.available(), 0);
    assert_eq!(calls, 11);
}
