//! The parallel executor over a bulkhead shared with other code.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_breaker::{BreakerRegistry, Bulkhead};
use keel_exec::{Concurrency, ExecError, ParallelExecutor, Priority};
use tokio::time::Instant;

const SEC: Duration = Duration::from_secs(1);

fn queued(slots: usize, queue: usize) -> Bulkhead {
    Bulkhead::builder("api")
        .max_concurrent(slots)
        .queue(queue)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_run_shares_the_slots_with_the_bulkheads_other_users() {
    let api = queued(3, 10);
    let other = api.try_acquire().unwrap();
    let exec = ParallelExecutor::builder()
        .bulkhead(api.clone())
        .build()
        .unwrap();
    assert!(matches!(exec.concurrency(), Concurrency::Shared(b) if b.same_as(&api)));
    let now = AtomicUsize::new(0);
    let max = AtomicUsize::new(0);
    let report = exec
        .run(0..6u32, |i| {
            let (now, max) = (&now, &max);
            async move {
                max.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                tokio::time::sleep(SEC).await;
                now.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, ()>(i)
            }
        })
        .await;
    assert!(report.all_succeeded());
    assert_eq!(
        max.load(Ordering::SeqCst),
        2,
        "one of three slots was taken"
    );
    assert_eq!(report.wall_time(), 3 * SEC);
    assert_eq!(api.in_flight(), 1, "the run gave every slot back");
    drop(other);
    assert_eq!(api.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_run_waits_in_the_queue_at_its_priority() {
    let api = queued(1, 10);
    let held = api.try_acquire().unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    // A low-priority caller queues first...
    let low = {
        let (api, order) = (api.clone(), order.clone());
        tokio::spawn(async move {
            let _slot = api.acquire(Priority::Low).await.unwrap();
            order.lock().unwrap().push("low");
        })
    };
    while api.queued() < 1 {
        tokio::task::yield_now().await;
    }
    // ...then a critical run.
    let exec = ParallelExecutor::builder()
        .bulkhead(api.clone())
        .priority(Priority::Critical)
        .build()
        .unwrap();
    let run = {
        let order = order.clone();
        tokio::spawn(async move {
            exec.run(0..2u32, |_| {
                let order = order.clone();
                async move {
                    order.lock().unwrap().push("run");
                    Ok::<_, ()>(())
                }
            })
            .await
        })
    };
    while api.queued() < 2 {
        tokio::task::yield_now().await;
    }
    drop(held);
    assert!(run.await.unwrap().all_succeeded());
    low.await.unwrap();
    assert_eq!(*order.lock().unwrap(), ["run", "run", "low"]);
}

#[tokio::test(start_paused = true)]
async fn a_full_bulkhead_without_a_queue_refuses_items_when_none_of_the_run_holds_a_slot() {
    let ssm = Bulkhead::new(1);
    let _busy = ssm.try_acquire().unwrap();
    let exec = ParallelExecutor::builder().bulkhead(ssm).build().unwrap();
    let calls = AtomicUsize::new(0);
    let report = exec
        .run(0..3u32, |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, ()>(()) }
        })
        .await;
    assert_eq!(calls.load(Ordering::SeqCst), 0, "nothing ran");
    assert_eq!(report.failed(), 3);
    for (_, error) in report.errors() {
        match error {
            ExecError::Rejected(full) => assert!(!full.shed),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(report.wall_time(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn without_a_queue_the_run_reuses_the_slots_its_items_free() {
    // The SSM preset's bulkhead: three calls at once, no queue.
    let registry = BreakerRegistry::with_aws_presets();
    let ssm = registry.bulkhead("ssm").unwrap();
    let exec = ParallelExecutor::builder()
        .bulkhead(ssm.clone())
        .build()
        .unwrap();
    let start = Instant::now();
    let report = exec
        .run(0..7u32, |i| async move {
            tokio::time::sleep(SEC).await;
            Ok::<_, ()>(i)
        })
        .await;
    assert!(report.all_succeeded(), "{:?}", report.items());
    assert_eq!(start.elapsed(), 3 * SEC, "seven 1 s items, three at a time");
    assert_eq!(ssm.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn each_run_of_an_executor_gets_its_own_slots() {
    let exec = ParallelExecutor::with_concurrency(2).unwrap();
    let item = |_| async {
        tokio::time::sleep(SEC).await;
        Ok::<_, ()>(())
    };
    let start = Instant::now();
    let (a, b) = tokio::join!(exec.run(0..4u32, item), exec.run(0..4u32, item));
    assert!(a.all_succeeded() && b.all_succeeded());
    assert_eq!(
        start.elapsed(),
        2 * SEC,
        "two runs of two at a time, side by side"
    );
}

#[tokio::test(start_paused = true)]
async fn a_run_waiting_for_a_busy_bulkhead_stops_at_its_deadline() {
    let api = queued(1, 10);
    let _held = api.try_acquire().unwrap();
    let exec = ParallelExecutor::builder()
        .bulkhead(api.clone())
        .overall_timeout(5 * SEC)
        .build()
        .unwrap();
    let calls = AtomicUsize::new(0);
    let report = exec
        .run(0..3u32, |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, ()>(()) }
        })
        .await;
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(report.cancelled(), 3);
    assert!(
        report
            .errors()
            .all(|(_, e)| matches!(e, ExecError::Cancelled(c) if !c.started))
    );
    assert_eq!(report.wall_time(), 5 * SEC);
    assert_eq!(api.queued(), 0, "the run's wait left the queue");
}
