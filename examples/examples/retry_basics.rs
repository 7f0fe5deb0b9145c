//! keel-retry from a first user's seat: a policy, a flaky call retried, a
//! classifier that honours a retry-after and gives up on what will not get
//! better, a shared retry budget, a pure preview of the delays, and the
//! statistics. Public API only; runs in well under a second.
//!
//! Run: `cargo run -p keel-examples --example retry_basics`.
#![allow(clippy::print_stdout)] // an example reports to its reader

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use keel_core::{Outcome, classify};
use keel_retry::{Backoff, Jitter, RetryBudget, RetryError, RetryPolicy};

/// What a small HTTP client might return.
#[derive(Debug)]
#[allow(dead_code)] // each variant is built below; not every one is read
enum ApiError {
    /// 503: try again.
    Unavailable,
    /// 429 with a `Retry-After`.
    TooManyRequests { retry_after: Duration },
    /// 404: asking again will not help.
    NotFound,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

impl std::error::Error for ApiError {}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let policy = RetryPolicy::builder()
        .max_retries(4)
        .backoff(Backoff::exponential(Duration::from_millis(10), 2.0))
        .max_delay(Duration::from_millis(50))
        .jitter(Jitter::default()) // equal jitter, the builder's default too
        .max_elapsed(Duration::from_secs(2))
        .build()?;

    // The preview is pure: it never draws from the policy's own randomness.
    let preview: Vec<Duration> = policy.delays().collect();
    println!("delays this policy sleeps (a sample): {preview:?}");

    // 1. A call that fails twice, then answers.
    let calls = AtomicU32::new(0);
    let value = policy
        .retry(|attempt| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if attempt.number < 3 {
                    Err(std::io::Error::other("connection reset"))
                } else {
                    Ok(42)
                }
            }
        })
        .await?;
    println!(
        "got {value} after {} attempts",
        calls.load(Ordering::SeqCst)
    );

    // 2. Decide what is retried: 503 yes, 429 after its Retry-After, 404 never.
    let by_status = classify::error_fn(|e: &ApiError| match e {
        ApiError::Unavailable => Outcome::Failure,
        ApiError::TooManyRequests { retry_after } => Outcome::overloaded_for(*retry_after),
        ApiError::NotFound => Outcome::Neutral,
    });
    let throttled_once = policy
        .retry_classified(&by_status, |attempt| async move {
            match attempt.number {
                1 => Err(ApiError::TooManyRequests {
                    retry_after: Duration::from_millis(20),
                }),
                2 => Err(ApiError::Unavailable),
                _ => Ok("created"),
            }
        })
        .await?;
    println!("throttled, then unavailable, then {throttled_once}");
    let missing: Result<(), _> = policy
        .retry_classified(&by_status, |_| async { Err(ApiError::NotFound) })
        .await;
    match missing {
        Err(RetryError::NotRetryable { error, attempts }) => {
            println!("{error:?} returned after {attempts} attempt, not retried");
        }
        other => anyhow::bail!("unexpected {other:?}"),
    }

    // 3. A budget shared by two policies: retries may add 10 % of the
    //    requests of the last 10 s, plus a reserve of 3 retries that can be
    //    spent at once.
    let budget = RetryBudget::new(0.1, 3, Duration::from_secs(10))?;
    let fast = |budget: &RetryBudget| {
        RetryPolicy::builder()
            .max_retries(5)
            .backoff(Backoff::constant(Duration::ZERO))
            .budget(budget.clone())
            .build()
    };
    let (reads, writes) = (fast(&budget)?, fast(&budget)?);
    let outage = reads.retry(|_| async { Err::<(), _>("down") }).await;
    println!("reads during an outage: {}", outage.unwrap_err());
    let refused = writes.retry(|_| async { Err::<(), _>("down") }).await;
    assert!(refused.as_ref().is_err_and(RetryError::is_budget_exhausted));
    println!("writes: refused at once, the shared reserve is spent");

    let stats = policy.stats();
    println!(
        "policy stats: {} calls, {} retries, {} successes ({} after a retry), {} not retryable",
        stats.calls,
        stats.retries,
        stats.successes,
        stats.successes_after_retry,
        stats.not_retryable
    );
    Ok(())
}
