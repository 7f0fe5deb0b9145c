//! The periodic-task loop programs and libraries would otherwise write by
//! hand: run something every interval until shutdown.

use std::future::Future;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// Runs `task` every `interval` until `shutdown` is cancelled, then returns.
///
/// * **First run**: one `interval` after the call, not at once (a program
///   that also wants a run at start awaits `task()` itself before calling
///   `every`).
/// * **Missed ticks** ([`MissedTickBehavior::Delay`]): runs never overlap. A
///   run that outlasts the interval is followed by the next one at once,
///   and the schedule restarts from there: at most one catch-up run, never a
///   burst of them, and never more than one run per interval on average.
/// * **Shutdown**: the token is watched while waiting. A run in progress is
///   not interrupted; hand the token (or a child) to the task when a run
///   must stop early. In a program, spawn the loop with keel-telemetry's
///   `Shutdown::spawn` so the drain waits for the last run.
///
/// ```
/// use std::time::Duration;
/// use keel_core::{CancellationToken, every};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let shutdown = CancellationToken::new();
/// let stop = shutdown.clone();
/// let mut runs = 0;
/// every(Duration::from_secs(60), shutdown, || {
///     runs += 1;
///     if runs == 3 {
///         stop.cancel();
///     }
///     async { /* refresh a gauge, delete old rows... */ }
/// })
/// .await;
/// assert_eq!(runs, 3);
/// # }
/// ```
///
/// # Panics
/// When `interval` is zero (as [`tokio::time::interval`]).
pub async fn every<F, Fut>(interval: Duration, shutdown: CancellationToken, mut task: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        task().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use std::sync::Mutex;

    use super::*;

    const TEN: Duration = Duration::from_secs(10);

    /// Runs `every` with a task that records when each run started (seconds
    /// since the start) and takes `durations[i]` (the last repeats).
    async fn runs(durations: &'static [u64], stop_after: Duration) -> Vec<u64> {
        let start = Instant::now();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let shutdown = CancellationToken::new();
        let stopper = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(stop_after).await;
            stopper.cancel();
        });
        let log = seen.clone();
        every(TEN, shutdown, move || {
            let log = log.clone();
            async move {
                let n = {
                    let mut log = log.lock().unwrap();
                    log.push(start.elapsed().as_secs());
                    log.len() - 1
                };
                let took = durations[n.min(durations.len() - 1)];
                tokio::time::sleep(Duration::from_secs(took)).await;
            }
        })
        .await;
        seen.lock().unwrap().clone()
    }

    #[tokio::test(start_paused = true)]
    async fn first_run_after_one_interval_then_every_interval() {
        assert_eq!(runs(&[1], Duration::from_secs(45)).await, [10, 20, 30, 40]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_run_is_followed_by_one_catch_up_run_not_a_burst() {
        // The run at 10 s takes 25 s: the ticks at 20 and 30 are missed.
        // One run follows at once (35 s), then the schedule restarts.
        assert_eq!(
            runs(&[25, 1], Duration::from_secs(66)).await,
            [10, 35, 45, 55, 65]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_while_waiting_returns_at_once_and_a_run_in_progress_finishes() {
        let started = Instant::now();
        // Cancelled at 5 s, before the first run.
        assert!(runs(&[1], Duration::from_secs(5)).await.is_empty());
        assert_eq!(started.elapsed(), Duration::from_secs(5));

        let started = Instant::now();
        // Cancelled at 12 s, during the run that started at 10 s and takes
        // 5 s: that run finishes, no other starts.
        assert_eq!(runs(&[5], Duration::from_secs(12)).await, [10]);
        assert_eq!(started.elapsed(), Duration::from_secs(15));
    }
}
