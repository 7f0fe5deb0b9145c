//! Retry budgets through policies, cancellation and `Send` futures.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use keel_retry::{Backoff, RetryBudget, RetryError, RetryPolicy};

const S: Duration = Duration::from_secs(1);

fn policy_with(budget: &RetryBudget, max_retries: u32) -> RetryPolicy {
    RetryPolicy::builder()
        .backoff(Backoff::constant(Duration::ZERO))
        .max_delay(Duration::ZERO)
        .max_retries(max_retries)
        .budget(budget.clone())
        .build()
        .unwrap()
}

async fn always_fails(policy: &RetryPolicy) -> RetryError<&'static str> {
    policy
        .retry(|_| async { Err::<(), _>("down") })
        .await
        .unwrap_err()
}

#[tokio::test(start_paused = true)]
async fn a_spent_budget_refuses_retries_until_the_window_slides() {
    // No ratio, a reserve of 2 retries per 2 s window.
    let budget = RetryBudget::new(0.0, 2, S * 2).unwrap();
    let policy = policy_with(&budget, 5);

    let first = always_fails(&policy).await;
    assert!(
        matches!(
            first,
            RetryError::BudgetExhausted {
                last: Some("down"),
                attempts: 3
            }
        ),
        "{first:?}"
    );
    let second = always_fails(&policy).await;
    assert!(matches!(
        second,
        RetryError::BudgetExhausted { attempts: 1, .. }
    ));
    assert!(second.is_budget_exhausted());

    // Still spent just before the window ends...
    tokio::time::advance(S * 2 - Duration::from_millis(201)).await;
    assert_eq!(budget.available(), 0);
    // ...and refilled once the slot holding the withdrawals has expired.
    tokio::time::advance(Duration::from_millis(201)).await;
    assert_eq!(budget.available(), 2);
    let third = always_fails(&policy).await;
    assert!(matches!(
        third,
        RetryError::BudgetExhausted { attempts: 3, .. }
    ));

    let stats = policy.stats();
    assert_eq!(
        (stats.calls, stats.retries, stats.budget_refusals),
        (3, 4, 3)
    );
}

#[tokio::test(start_paused = true)]
async fn requests_fund_a_percentage_of_retries() {
    // 50 %, no reserve: 4 successful calls and the failing call itself
    // deposit 2.5 retries.
    let budget = RetryBudget::new(0.5, 0, S * 10).unwrap();
    let policy = policy_with(&budget, 10);
    for _ in 0..4 {
        policy.retry(|_| async { Ok::<_, ()>(()) }).await.unwrap();
    }
    let refused = always_fails(&policy).await;
    assert_eq!(
        refused.attempts(),
        3,
        "two retries granted, the third refused"
    );
}

#[tokio::test(start_paused = true)]
async fn one_budget_is_shared_by_several_policies() {
    let budget = RetryBudget::new(0.0, 1, S).unwrap();
    let ec2 = policy_with(&budget, 3);
    let s3 = policy_with(&budget, 3);
    assert_eq!(always_fails(&ec2).await.attempts(), 2);
    let s3_error = always_fails(&s3).await;
    assert!(matches!(
        s3_error,
        RetryError::BudgetExhausted { attempts: 1, .. }
    ));
    assert_eq!(ec2.stats().budget_refusals, 1);
    assert_eq!(s3.stats().budget_refusals, 1);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_retry_future_stops_it_and_returns_the_budget_token() {
    let budget = RetryBudget::new(0.0, 10, S * 10).unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let policy = RetryPolicy::builder()
        .backoff(Backoff::constant(S * 5))
        .max_delay(S * 5)
        .jitter(keel_retry::Jitter::None)
        .max_retries(3)
        .budget(budget.clone())
        .build()
        .unwrap();

    let counted = calls.clone();
    let call = policy.retry(move |_| {
        counted.fetch_add(1, Ordering::SeqCst);
        async { Err::<(), _>("down") }
    });
    // The caller gives up after 1 s: the first attempt failed and the
    // policy is sleeping before its retry, holding the only token.
    let outcome = tokio::time::timeout(S, call).await;
    assert!(outcome.is_err(), "the caller's timeout fired");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // The reserve is 10 retries; the one taken for the retry that never
    // started is back.
    assert_eq!(budget.available(), 10, "the unused token was handed back");

    tokio::time::sleep(S * 60).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "nothing runs after the drop"
    );
    let stats = policy.stats();
    assert_eq!((stats.calls, stats.attempts, stats.retries), (1, 1, 0));
    assert_eq!(
        stats.successes + stats.exhausted + stats.budget_refusals + stats.deadline_exceeded,
        0,
        "a cancelled call ends in no other outcome"
    );
    assert_eq!(stats.cancelled, 1);

    // Cancelling during an attempt is just as clean.
    let hung = policy.retry(|_| async {
        std::future::pending::<()>().await;
        Ok::<_, ()>(())
    });
    assert!(tokio::time::timeout(S, hung).await.is_err());
    assert_eq!(budget.available(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_futures_can_be_spawned() {
    let policy = RetryPolicy::builder()
        .backoff(Backoff::constant(Duration::from_millis(1)))
        .budget(RetryBudget::default())
        .build()
        .unwrap();

    let p = policy.clone();
    let plain = tokio::spawn(async move {
        p.retry(|attempt| async move {
            tokio::task::yield_now().await;
            if attempt.number < 2 {
                Err("once")
            } else {
                Ok(attempt.number)
            }
        })
        .await
    });
    assert_eq!(plain.await.unwrap().unwrap(), 2);

    assert_eq!(policy.stats().successes_after_retry, 1);
}
