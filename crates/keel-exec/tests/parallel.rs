//! Behaviour of the parallel executor under paused tokio time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use keel_exec::{
    AimdConfig, Cancelled, DeadlineExceeded, ExecError, ItemTimedOut, ParallelExecutor, Status,
    StopReason,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const SEC: Duration = Duration::from_secs(1);

/// Counts items in flight and remembers the maximum.
#[derive(Clone, Default)]
struct InFlight {
    now: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
}

impl InFlight {
    fn enter(&self) -> Guard {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
        Guard(self.now.clone())
    }
    fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
    fn now(&self) -> usize {
        self.now.load(Ordering::SeqCst)
    }
}

/// Leaves the in-flight count when the item ends, even when it is dropped.
struct Guard(Arc<AtomicUsize>);
impl Drop for Guard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn results_come_back_in_input_order_with_counts() {
    let exec = ParallelExecutor::with_concurrency(3).unwrap();
    let start = Instant::now();
    // Later items finish first.
    let report = exec
        .run(0..6u64, |i| async move {
            tokio::time::sleep(Duration::from_secs(10 - i)).await;
            if i == 4 {
                Err(format!("item {i} failed"))
            } else {
                Ok(i * 10)
            }
        })
        .await;
    assert_eq!(report.total(), 6);
    assert_eq!(report.succeeded(), 5);
    assert_eq!(report.failed(), 1);
    assert_eq!(report.timed_out() + report.cancelled(), 0);
    assert_eq!(report.stop_reason(), None);
    for (i, item) in report.items().iter().enumerate() {
        assert_eq!(item.index, i);
        assert_eq!(item.duration, Duration::from_secs(10 - i as u64));
    }
    assert_eq!(
        report
            .errors()
            .map(|(i, e)| (i, e.inner().cloned()))
            .collect::<Vec<_>>(),
        vec![(4, Some("item 4 failed".to_string()))]
    );
    // 3 slots: 0,1,2 start at 0 (end 10, 9, 8); 3 starts at 8 (ends 15),
    // 4 at 9 (ends 15), 5 at 10 (ends 15).
    assert_eq!(report.wall_time(), Duration::from_secs(15));
    assert_eq!(start.elapsed(), Duration::from_secs(15));
}

#[tokio::test(start_paused = true)]
async fn concurrency_limit_is_never_exceeded() {
    let in_flight = InFlight::default();
    let exec = ParallelExecutor::with_concurrency(4).unwrap();
    let report = exec
        .run(0..50u64, |i| {
            let guard = in_flight.enter();
            async move {
                tokio::time::sleep(Duration::from_millis(10 + (i * 37) % 90)).await;
                drop(guard);
                Ok::<_, ()>(i)
            }
        })
        .await;
    assert!(report.all_succeeded());
    assert_eq!(
        in_flight.max(),
        4,
        "the limit is reached and never exceeded"
    );
    assert_eq!(in_flight.now(), 0);
}

#[tokio::test(start_paused = true)]
async fn per_item_timeout_fails_only_the_slow_item() {
    let exec = ParallelExecutor::builder()
        .concurrency(10)
        .item_timeout(2 * SEC)
        .build()
        .unwrap();
    let report = exec
        .run([1u64, 5, 1], |secs| async move {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            Ok::<_, ()>(secs)
        })
        .await;
    assert_eq!(report.succeeded(), 2);
    assert_eq!(report.timed_out(), 1);
    let slow = report.get(1).unwrap();
    assert_eq!(slow.status(), Status::TimedOut);
    assert!(matches!(
        slow.result,
        Err(ExecError::TimedOut(ItemTimedOut { after, .. })) if after == 2 * SEC
    ));
    assert_eq!(slow.duration, 2 * SEC, "timed out exactly at the timeout");
    assert_eq!(
        report.wall_time(),
        2 * SEC,
        "the slow item did not hold the run"
    );
}

#[tokio::test(start_paused = true)]
async fn overall_timeout_cancels_running_and_skips_the_rest() {
    let calls = AtomicUsize::new(0);
    let exec = ParallelExecutor::builder()
        .concurrency(2)
        .overall_timeout(Duration::from_millis(2500))
        .build()
        .unwrap();
    let report = exec
        .run(0..10u32, |i| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(SEC).await;
                Ok::<_, ()>(i)
            }
        })
        .await;
    // t=1s: 0,1 done; t=2s: 2,3 done; t=2.5s: 4,5 cut off; 6..9 never start.
    assert_eq!(
        calls.load(Ordering::SeqCst),
        6,
        "no item starts after the deadline"
    );
    assert_eq!(report.succeeded(), 4);
    assert_eq!(report.timed_out(), 2);
    assert_eq!(report.cancelled(), 4);
    assert_eq!(report.total(), 10);
    assert_eq!(report.stop_reason(), Some(StopReason::Deadline));
    assert_eq!(report.wall_time(), Duration::from_millis(2500));
    for i in [4, 5] {
        let item = report.get(i).unwrap();
        assert!(matches!(
            item.result,
            Err(ExecError::DeadlineExceeded(DeadlineExceeded { after, .. })) if after == Duration::from_millis(2500)
        ));
        assert_eq!(item.duration, Duration::from_millis(500));
    }
    for i in 6..10 {
        let item = report.get(i).unwrap();
        assert!(matches!(
            item.result,
            Err(ExecError::Cancelled(Cancelled {
                started: false,
                reason: StopReason::Deadline,
                ..
            }))
        ));
        assert_eq!(item.duration, Duration::ZERO);
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_token_cancels_running_items_and_starts_no_more() {
    let token = CancellationToken::new();
    let in_flight = InFlight::default();
    let calls = AtomicUsize::new(0);
    let exec = ParallelExecutor::builder()
        .concurrency(3)
        .shutdown(token.clone())
        .build()
        .unwrap();
    let canceller = {
        let token = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            token.cancel();
        })
    };
    let report = exec
        .run(0..9u32, |i| {
            calls.fetch_add(1, Ordering::SeqCst);
            let guard = in_flight.enter();
            async move {
                tokio::time::sleep(SEC).await;
                drop(guard);
                Ok::<_, ()>(i)
            }
        })
        .await;
    canceller.await.unwrap();
    // t=1s: 0,1,2 done; 3,4,5 running at 1.5s are dropped; 6,7,8 never start.
    assert_eq!(calls.load(Ordering::SeqCst), 6);
    assert_eq!(in_flight.now(), 0, "running items were dropped");
    assert_eq!(report.succeeded(), 3);
    assert_eq!(report.cancelled(), 6);
    assert_eq!(report.stop_reason(), Some(StopReason::Shutdown));
    assert_eq!(report.wall_time(), Duration::from_millis(1500));
    for i in 3..6 {
        let item = report.get(i).unwrap();
        assert!(matches!(
            item.result,
            Err(ExecError::Cancelled(Cancelled {
                started: true,
                reason: StopReason::Shutdown,
                ..
            }))
        ));
        assert_eq!(item.duration, Duration::from_millis(500));
    }
    for i in 6..9 {
        assert!(matches!(
            report.get(i).unwrap().result,
            Err(ExecError::Cancelled(Cancelled { started: false, .. }))
        ));
    }
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_token_starts_nothing() {
    let token = CancellationToken::new();
    token.cancel();
    let exec = ParallelExecutor::builder().shutdown(token).build().unwrap();
    let calls = AtomicUsize::new(0);
    let report = exec
        .run(0..5, |i| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, ()>(i) }
        })
        .await;
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(report.cancelled(), 5);
    assert_eq!(report.stop_reason(), Some(StopReason::Shutdown));
}

#[tokio::test(start_paused = true)]
async fn dropping_the_run_drops_running_items() {
    let in_flight = InFlight::default();
    let calls = AtomicUsize::new(0);
    let exec = ParallelExecutor::with_concurrency(2).unwrap();
    let run = exec.run(0..10u32, |i| {
        calls.fetch_add(1, Ordering::SeqCst);
        let guard = in_flight.enter();
        async move {
            tokio::time::sleep(SEC).await;
            drop(guard);
            Ok::<_, ()>(i)
        }
    });
    let cut = tokio::time::timeout(Duration::from_millis(1500), run).await;
    assert!(cut.is_err(), "the run was still going");
    assert_eq!(in_flight.now(), 0, "dropping the run dropped its items");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "items 0..4 started, no more"
    );
    tokio::time::sleep(10 * SEC).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "nothing starts after the drop"
    );
}

#[tokio::test(start_paused = true)]
async fn panics_stay_with_their_item() {
    let exec = ParallelExecutor::with_concurrency(4).unwrap();
    let report = exec
        .run(0..8u32, |i| {
            assert!(i != 5, "op panicked when called for item {i}");
            async move {
                tokio::time::sleep(Duration::from_millis(u64::from(i))).await;
                if i == 2 {
                    panic!("item {i} panicked while polled");
                }
                Ok::<_, ()>(i)
            }
        })
        .await;
    assert_eq!(report.succeeded(), 6);
    assert_eq!(report.failed(), 2);
    let message = |i: usize| match &report.get(i).unwrap().result {
        Err(ExecError::Panicked(p)) => p.message.clone(),
        other => panic!("item {i}: expected a panic, got {other:?}"),
    };
    assert_eq!(message(2), "item 2 panicked while polled");
    assert_eq!(message(5), "op panicked when called for item 5");
    assert!(
        report
            .get(2)
            .unwrap()
            .result
            .as_ref()
            .unwrap_err()
            .is_panic()
    );
}

#[tokio::test(start_paused = true)]
async fn stream_yields_in_completion_order() {
    let exec = ParallelExecutor::with_concurrency(3).unwrap();
    let durations = [3u64, 1, 2];
    let stream = exec.stream(durations, |secs| async move {
        tokio::time::sleep(Duration::from_secs(secs)).await;
        Ok::<_, ()>(secs)
    });
    let start = Instant::now();
    let seen: Vec<(usize, u64, Duration)> = stream
        .map(|r| (r.index, r.result.unwrap(), start.elapsed()))
        .collect()
        .await;
    assert_eq!(seen, vec![(1, 1, SEC), (2, 2, 2 * SEC), (0, 3, 3 * SEC)]);
}

#[tokio::test(start_paused = true)]
async fn stream_reports_stopped_items_last() {
    let exec = ParallelExecutor::builder()
        .concurrency(1)
        .overall_timeout(Duration::from_millis(1500))
        .build()
        .unwrap();
    let mut stream = exec.stream(0..4u32, |i| async move {
        tokio::time::sleep(SEC).await;
        Ok::<_, ()>(i)
    });
    let mut statuses = Vec::new();
    while let Some(r) = stream.next().await {
        statuses.push((r.index, r.status()));
    }
    assert_eq!(
        statuses,
        vec![
            (0, Status::Succeeded),
            (1, Status::TimedOut),
            (2, Status::Cancelled),
            (3, Status::Cancelled)
        ]
    );
    assert_eq!(stream.counts().total, 4);
    assert_eq!(stream.stop_reason(), Some(StopReason::Deadline));
}

#[tokio::test(start_paused = true)]
async fn borrowed_state_and_non_send_futures_work() {
    // Items run in the caller's task: the operation may borrow locals and
    // its futures need not be Send.
    let seen = std::cell::RefCell::new(Vec::new());
    let exec = ParallelExecutor::with_concurrency(2).unwrap();
    let report = exec
        .run(["a", "b", "c"], |s| {
            let seen = &seen;
            let rc = std::rc::Rc::new(s);
            async move {
                tokio::task::yield_now().await;
                seen.borrow_mut().push(*rc);
                Ok::<_, ()>(rc.len())
            }
        })
        .await;
    assert!(report.all_succeeded());
    assert_eq!(seen.borrow().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_future_is_send_and_can_be_spawned() {
    let exec = ParallelExecutor::with_concurrency(8).unwrap();
    let handle = tokio::spawn(async move {
        exec.run(0..1000u32, |i| async move {
            tokio::task::yield_now().await;
            Ok::<_, ()>(i)
        })
        .await
    });
    let report = handle.await.unwrap();
    assert_eq!(report.succeeded(), 1000);
    assert!(report.successes().all(|(i, v)| i == *v as usize));
}

#[tokio::test(start_paused = true)]
async fn instant_items_yield_to_other_tasks() {
    // 10 000 items that never wait: the run must still let another task on
    // the same (current-thread) runtime make progress.
    let ticks = Arc::new(AtomicUsize::new(0));
    let ticker = {
        let ticks = ticks.clone();
        tokio::spawn(async move {
            loop {
                ticks.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
        })
    };
    tokio::task::yield_now().await;
    let before = ticks.load(Ordering::SeqCst);
    let exec = ParallelExecutor::with_concurrency(64).unwrap();
    let report = exec
        .run(0..10_000u32, |i| async move { Ok::<_, ()>(i) })
        .await;
    assert_eq!(report.succeeded(), 10_000);
    let during = ticks.load(Ordering::SeqCst) - before;
    assert!(during >= 10, "the other task ran only {during} times");
    ticker.abort();
}

#[tokio::test(start_paused = true)]
async fn adaptive_limit_grows_on_fast_successes_and_shrinks_on_errors() {
    let in_flight = InFlight::default();
    let exec = ParallelExecutor::builder()
        .adaptive(AimdConfig::new(1, 16).initial(2).backoff_ratio(0.5))
        .build()
        .unwrap();
    // The limit the executor will use for its next starts, as the stream
    // last reported it; every start must fit under it.
    let limit_now = std::cell::Cell::new(2usize);
    let violations = AtomicUsize::new(0);
    // 200 fast successes, then 20 failures, then 5 successes.
    let mut stream = exec.stream(0..225u32, |i| {
        let guard = in_flight.enter();
        if in_flight.now() > limit_now.get() {
            violations.fetch_add(1, Ordering::SeqCst);
        }
        async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(guard);
            if (200..220).contains(&i) {
                Err(i)
            } else {
                Ok(i)
            }
        }
    });
    let mut limits = Vec::new();
    while let Some(r) = stream.next().await {
        limits.push((r.index, stream.concurrency_limit()));
        limit_now.set(stream.concurrency_limit());
    }
    assert_eq!(
        violations.load(Ordering::SeqCst),
        0,
        "an item started over the limit"
    );
    let peak = limits.iter().map(|(_, l)| *l).max().unwrap();
    assert_eq!(peak, 16, "fast successes grow the limit to its maximum");
    assert_eq!(in_flight.max(), 16, "and the executor uses it");
    let after_errors = limits
        .iter()
        .find(|(i, _)| *i == 219)
        .map(|(_, l)| *l)
        .unwrap();
    assert!(
        after_errors < 4,
        "twenty errors halve the limit down: {after_errors}"
    );
    assert_eq!(stream.counts().failed, 20);
}

#[tokio::test(start_paused = true)]
async fn adaptive_limit_shrinks_on_slow_items() {
    let exec = ParallelExecutor::builder()
        .adaptive(
            AimdConfig::new(2, 20)
                .initial(20)
                .latency_threshold(Duration::from_millis(100)),
        )
        .build()
        .unwrap();
    let mut stream = exec.stream(0..20u32, |i| async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok::<_, ()>(i)
    });
    while stream.next().await.is_some() {}
    assert_eq!(
        stream.concurrency_limit(),
        2,
        "every slow success is a drop"
    );
    assert_eq!(stream.counts().succeeded, 20, "slow items still succeed");
}
