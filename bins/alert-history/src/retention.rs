//! Retention: a background task deletes events older than `RETENTION_DAYS`
//! in small batches.

use std::future::Future;
use std::time::Duration;

use chrono::Utc;
use keel_telemetry::{CancellationToken, every};

use crate::metrics::Metrics;
use crate::store::Store;

/// Events deleted per statement: small enough that a purge never blocks
/// ingest for long (SQLite has one writer).
pub const BATCH: u32 = 1000;
/// How often the retention task runs by default
/// (`RETENTION_INTERVAL_SECONDS`).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(3600);

/// The cutoff for `retention` at `now_ms`: events last delivered before it
/// go.
pub fn cutoff_ms(now_ms: i64, retention: Duration) -> i64 {
    now_ms.saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX))
}

/// Deletes every event last delivered before `cutoff` in batches of
/// [`BATCH`], yielding between batches, then refreshes the stored-events
/// gauge. Returns how many events went.
///
/// # Errors
/// The database error (batches already deleted stay deleted).
pub async fn purge(store: &Store, metrics: &Metrics, cutoff: i64) -> Result<u64, sqlx::Error> {
    let mut total = 0u64;
    loop {
        let deleted = store.delete_batch(cutoff, BATCH).await?;
        total += deleted;
        if deleted < u64::from(BATCH) {
            break;
        }
        tokio::task::yield_now().await;
    }
    metrics.set_db_alerts(store.count_events().await?);
    if total > 0 {
        tracing::info!(deleted = total, "retention purge");
    }
    Ok(total)
}

/// Runs `round` now and then every `interval` (the kit's [`every`]) until
/// `token` is cancelled. A round in progress is finished before returning.
pub async fn run_every<F, Fut>(interval: Duration, token: CancellationToken, mut round: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    if token.is_cancelled() {
        return;
    }
    round().await;
    every(interval, token, round).await;
}

/// The retention task: [`purge`] now and every `interval` with the cutoff
/// `now - retention`, until `token` is cancelled. Failures are logged and
/// retried next round.
pub async fn task(
    store: Store,
    metrics: Metrics,
    retention: Duration,
    interval: Duration,
    token: CancellationToken,
) {
    run_every(interval, token, || {
        let store = store.clone();
        let metrics = metrics.clone();
        async move {
            let cutoff = cutoff_ms(Utc::now().timestamp_millis(), retention);
            if let Err(e) = purge(&store, &metrics, cutoff).await {
                tracing::warn!(error = %e, "retention purge failed");
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn cutoff_subtracts_the_period() {
        assert_eq!(
            cutoff_ms(100 * 86_400_000, Duration::from_secs(90 * 86_400)),
            10 * 86_400_000
        );
        assert_eq!(cutoff_ms(i64::MIN + 5, Duration::from_secs(10)), i64::MIN);
    }

    #[tokio::test(start_paused = true)]
    async fn runs_now_and_every_interval_until_cancelled() {
        let rounds = Arc::new(AtomicU32::new(0));
        let token = CancellationToken::new();
        let task = tokio::spawn(run_every(Duration::from_secs(3600), token.clone(), {
            let rounds = rounds.clone();
            move || {
                rounds.fetch_add(1, Ordering::SeqCst);
                async {}
            }
        }));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(rounds.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(rounds.load(Ordering::SeqCst), 2);
        tokio::time::sleep(Duration::from_secs(2 * 3600)).await;
        assert_eq!(rounds.load(Ordering::SeqCst), 4);
        token.cancel();
        task.await.unwrap();
        tokio::time::sleep(Duration::from_secs(10 * 3600)).await;
        assert_eq!(rounds.load(Ordering::SeqCst), 4);
    }
}
