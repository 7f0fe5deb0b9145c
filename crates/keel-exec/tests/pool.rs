//! The worker pool under paused tokio time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_exec::{JobError, Priority, WorkerPool};
use tokio::sync::Notify;
use tokio::time::Instant;

const SEC: Duration = Duration::from_secs(1);

/// Occupies the pool's only worker until the returned gate is opened.
async fn block_the_worker(pool: &WorkerPool) -> (Arc<Notify>, keel_exec::JobHandle<()>) {
    let gate = Arc::new(Notify::new());
    let wait = gate.clone();
    let handle = pool
        .submit(Priority::Normal, async move { wait.notified().await })
        .unwrap();
    while pool.stats().running == 0 {
        tokio::task::yield_now().await;
    }
    (gate, handle)
}

#[tokio::test(start_paused = true)]
async fn a_critical_job_behind_a_thousand_low_ones_runs_next() {
    let pool = WorkerPool::builder()
        .workers(1)
        .queue(2_000)
        .build()
        .unwrap();
    let (gate, blocker) = block_the_worker(&pool).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut low = Vec::new();
    for i in 0..1_000 {
        let order = order.clone();
        low.push(
            pool.submit(Priority::Low, async move { order.lock().unwrap().push(i) })
                .unwrap(),
        );
    }
    let critical = {
        let order = order.clone();
        pool.submit(Priority::Critical, async move {
            order.lock().unwrap().push(usize::MAX);
        })
        .unwrap()
    };
    assert_eq!(pool.stats().queued, 1_001);
    gate.notify_one();
    blocker.await.unwrap();
    critical.await.unwrap();
    for h in low {
        h.await.unwrap();
    }
    let order = order.lock().unwrap();
    assert_eq!(order[0], usize::MAX, "the critical job ran first");
    assert!(
        order[1..].windows(2).all(|w| w[0] < w[1]),
        "FIFO within a priority"
    );
    assert_eq!(order.len(), 1_001);
    assert_eq!(pool.stats().completed, 1_002);
}

#[tokio::test(start_paused = true)]
async fn priorities_are_served_highest_first_and_fifo_within() {
    let pool = WorkerPool::builder().workers(1).queue(10).build().unwrap();
    let (gate, _blocker) = block_the_worker(&pool).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for (i, p) in [
        (0, Priority::Low),
        (1, Priority::Normal),
        (2, Priority::Low),
        (3, Priority::High),
        (4, Priority::Normal),
        (5, Priority::Critical),
    ] {
        let order = order.clone();
        let h = pool
            .submit(p, async move { order.lock().unwrap().push(i) })
            .unwrap();
        assert_eq!(h.priority(), p);
        handles.push(h);
    }
    gate.notify_one();
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), [5, 3, 1, 4, 0, 2]);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_sheds_the_lowest_priority_or_refuses() {
    let pool = WorkerPool::builder().workers(1).queue(2).build().unwrap();
    let (gate, _blocker) = block_the_worker(&pool).await;
    let low_old = pool.submit(Priority::Low, async { "old" }).unwrap();
    let low_new = pool.submit(Priority::Low, async { "new" }).unwrap();
    // Full of low jobs: another low one is refused...
    let refused = pool.submit(Priority::Low, async { "refused" }).unwrap_err();
    assert_eq!((refused.priority, refused.closed), (Priority::Low, false));
    assert_eq!(refused.to_string(), "worker pool queue is full");
    // ...a high one sheds the newest low one.
    let high = pool.submit(Priority::High, async { "high" }).unwrap();
    assert_eq!(low_new.await, Err(JobError::Shed));
    gate.notify_one();
    assert_eq!(high.await, Ok("high"));
    assert_eq!(low_old.await, Ok("old"));
    let stats = pool.stats();
    assert_eq!((stats.shed, stats.rejected, stats.submitted), (1, 1, 4));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_job_does_not_kill_its_worker() {
    let pool = WorkerPool::builder().workers(1).build().unwrap();
    let boom = pool
        .submit(Priority::Normal, async {
            tokio::time::sleep(SEC).await;
            panic!("job blew up");
        })
        .unwrap();
    let next = pool.submit(Priority::Normal, async { 7 }).unwrap();
    match boom.await {
        Err(JobError::Panicked(p)) => assert_eq!(p.message, "job blew up"),
        other => panic!("{other:?}"),
    }
    assert_eq!(next.await, Ok(7), "the same worker ran the next job");
    let stats = pool.stats();
    assert_eq!((stats.panicked, stats.completed, stats.running), (1, 1, 0));
}

#[tokio::test(start_paused = true)]
async fn workers_bound_the_jobs_running_at_once() {
    let pool = WorkerPool::builder().workers(3).build().unwrap();
    let start = Instant::now();
    let handles: Vec<_> = (0..9)
        .map(|_| {
            pool.submit(Priority::Normal, async {
                tokio::time::sleep(SEC).await;
            })
            .unwrap()
        })
        .collect();
    tokio::task::yield_now().await;
    assert_eq!(pool.stats().running, 3);
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(start.elapsed(), 3 * SEC, "nine 1 s jobs on three workers");
    assert_eq!(pool.workers(), 3);
}

#[tokio::test(start_paused = true)]
async fn shutdown_drains_within_the_bound_and_abandons_the_rest() {
    let pool = WorkerPool::builder().workers(2).build().unwrap();
    let sleep = |secs: u64| async move {
        tokio::time::sleep(Duration::from_secs(secs)).await;
        secs
    };
    // Two run at once; the 3 s one waits and runs after the 1 s one.
    let quick = pool.submit(Priority::Normal, sleep(1)).unwrap();
    let hung = pool.submit(Priority::Normal, sleep(3_600)).unwrap();
    let queued = pool.submit(Priority::Normal, sleep(3)).unwrap();
    let never = pool.submit(Priority::Low, sleep(60)).unwrap();
    tokio::task::yield_now().await;
    let start = Instant::now();
    let report = pool.shutdown(10 * SEC).await;
    assert_eq!(
        start.elapsed(),
        10 * SEC,
        "the drain bound, not the hung job"
    );
    assert_eq!(report.elapsed, 10 * SEC);
    // The quick job, then the queued one (1 s + 3 s), then the low one
    // (4 s + 60 s) does not fit: cut at 10 s, like the hung one.
    assert_eq!((report.completed, report.abandoned), (2, 2));
    assert_eq!(quick.await, Ok(1));
    assert_eq!(queued.await, Ok(3));
    assert_eq!(hung.await, Err(JobError::Abandoned));
    assert_eq!(never.await, Err(JobError::Abandoned));
}

#[tokio::test(start_paused = true)]
async fn workers_that_exit_early_are_not_waited_for_again_at_the_bound() {
    let pool = WorkerPool::builder().workers(3).build().unwrap();
    let quick = pool.submit(Priority::Normal, async { 1 }).unwrap();
    let hung = pool
        .submit(Priority::Normal, std::future::pending::<u32>())
        .unwrap();
    tokio::task::yield_now().await;
    let report = pool.shutdown(2 * SEC).await;
    assert_eq!((report.completed, report.abandoned), (0, 1));
    assert_eq!(report.elapsed, 2 * SEC);
    assert_eq!(quick.await, Ok(1));
    assert_eq!(hung.await, Err(JobError::Abandoned));
}

#[tokio::test(start_paused = true)]
async fn shutdown_returns_as_soon_as_the_work_is_done() {
    let pool = WorkerPool::builder().workers(2).build().unwrap();
    let jobs: Vec<_> = (1..=4u64)
        .map(|s| {
            pool.submit(Priority::Normal, async move {
                tokio::time::sleep(Duration::from_secs(s)).await;
            })
            .unwrap()
        })
        .collect();
    let start = Instant::now();
    let report = pool.shutdown(60 * SEC).await;
    // Worker A: 1 s then 3 s; worker B: 2 s then 4 s.
    assert_eq!(start.elapsed(), 6 * SEC);
    assert_eq!((report.completed, report.abandoned), (4, 0));
    for j in jobs {
        j.await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn submissions_during_and_after_shutdown_are_refused() {
    // A pool shared with the program's tasks, shut down by its signal
    // handler while they still submit.
    let pool = Arc::new(WorkerPool::builder().workers(1).build().unwrap());
    let running = pool
        .submit(Priority::Normal, async { tokio::time::sleep(SEC).await })
        .unwrap();
    let (report, refused) = tokio::join!(pool.shutdown(5 * SEC), async {
        pool.submit(Priority::Critical, async {}).map(drop)
    });
    let refused = refused.unwrap_err();
    assert!(refused.closed);
    assert_eq!(refused.to_string(), "worker pool is shutting down");
    assert_eq!((report.completed, report.abandoned), (1, 0));
    assert_eq!(report.elapsed, SEC);
    running.await.unwrap();
    assert!(pool.submit(Priority::Low, async {}).is_err());
    // A second shutdown has nothing left to do.
    let again = pool.shutdown(5 * SEC).await;
    assert_eq!(
        (again.completed, again.abandoned, again.elapsed),
        (0, 0, Duration::ZERO)
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_the_pool_abandons_its_jobs() {
    let pool = WorkerPool::builder().workers(1).build().unwrap();
    let running = pool
        .submit(Priority::Normal, async {
            tokio::time::sleep(60 * SEC).await;
        })
        .unwrap();
    let waiting = pool.submit(Priority::Normal, async {}).unwrap();
    tokio::task::yield_now().await;
    drop(pool);
    assert_eq!(running.await, Err(JobError::Abandoned));
    assert_eq!(waiting.await, Err(JobError::Abandoned));
}

#[tokio::test]
async fn build_names_the_invalid_field() {
    let err = WorkerPool::builder().workers(0).build().unwrap_err();
    assert_eq!(err.field(), "workers");
    let err = WorkerPool::builder().queue(0).build().unwrap_err();
    assert_eq!(err.field(), "queue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_is_counted_before_its_handle_resolves() {
    let pool = WorkerPool::builder().workers(4).build().unwrap();
    let handles: Vec<_> = (0..200u32)
        .map(|i| {
            pool.submit(Priority::ALL[i as usize % 4], async move {
                tokio::task::yield_now().await;
                i
            })
            .unwrap()
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.await, Ok(i as u32));
    }
    let stats = pool.stats();
    assert_eq!((stats.completed, stats.running, stats.queued), (200, 0, 0));
    let report = pool.shutdown(SEC).await;
    assert_eq!((report.completed, report.abandoned), (0, 0));
}
