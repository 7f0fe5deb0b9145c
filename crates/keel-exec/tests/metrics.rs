//! Prometheus metrics (feature `metrics`).
#![cfg(feature = "metrics")]

use std::time::Duration;

use keel_exec::{
    AimdConfig, Batch, BatchExecutor, ExecMetrics, ParallelExecutor, PoolMetrics, Priority, Status,
    WorkerPool,
};
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

fn scrape(registry: &Registry) -> String {
    let mut out = String::new();
    encode(&mut out, registry).unwrap();
    out
}

#[tokio::test(start_paused = true)]
async fn parallel_runs_record_outcomes_durations_in_flight_and_limit() {
    let metrics = ExecMetrics::new();
    let mut registry = Registry::default();
    metrics.register(registry.sub_registry_with_prefix("goman"));
    let exec = ParallelExecutor::builder()
        .concurrency(3)
        .item_timeout(Duration::from_secs(5))
        .metrics(metrics.clone())
        .build()
        .unwrap();
    let report = exec
        .run(0..6u64, |i| async move {
            tokio::time::sleep(Duration::from_secs(if i == 5 { 10 } else { 1 })).await;
            if i == 4 { Err(()) } else { Ok(i) }
        })
        .await;
    assert_eq!(report.succeeded(), 4);
    assert_eq!(metrics.items(Status::Succeeded), 4);
    assert_eq!(metrics.items(Status::Failed), 1);
    assert_eq!(metrics.items(Status::TimedOut), 1);
    assert_eq!(metrics.in_flight(), 0);
    assert_eq!(metrics.concurrency_limit(), 3);
    let text = scrape(&registry);
    for line in [
        "goman_items_total{status=\"succeeded\"} 4",
        "goman_items_total{status=\"failed\"} 1",
        "goman_items_total{status=\"timed_out\"} 1",
        "goman_items_total{status=\"cancelled\"} 0",
        "goman_item_duration_seconds_count 6",
        "goman_item_duration_seconds_sum 10.0",
        "goman_in_flight 0",
        "goman_concurrency_limit 3",
        "# UNIT goman_item_duration_seconds seconds",
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
}

#[tokio::test(start_paused = true)]
async fn in_flight_and_adaptive_limit_are_live() {
    let metrics = ExecMetrics::new();
    let exec = ParallelExecutor::builder()
        .adaptive(AimdConfig::new(1, 4).initial(2))
        .metrics(metrics.clone())
        .build()
        .unwrap();
    let seen = std::cell::RefCell::new(Vec::new());
    let report = exec
        .run(0..20u32, |i| {
            seen.borrow_mut().push(metrics.in_flight());
            async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok::<_, ()>(i)
            }
        })
        .await;
    assert!(report.all_succeeded());
    assert_eq!(metrics.concurrency_limit(), 4, "grew to its maximum");
    let max_seen = seen.borrow().iter().copied().max().unwrap();
    assert_eq!(
        max_seen, 3,
        "three others in flight when the fourth started"
    );
    assert_eq!(metrics.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_stopped_run_leaves_nothing_in_flight() {
    let metrics = ExecMetrics::new();
    let exec = ParallelExecutor::builder()
        .concurrency(2)
        .overall_timeout(Duration::from_secs(1))
        .metrics(metrics.clone())
        .build()
        .unwrap();
    let report = exec
        .run(0..5u32, |_| async {
            std::future::pending::<()>().await;
            Ok::<(), ()>(())
        })
        .await;
    assert_eq!(report.timed_out(), 2);
    assert_eq!(report.cancelled(), 3);
    assert_eq!(metrics.in_flight(), 0);
    assert_eq!(metrics.items(Status::TimedOut), 2);
    assert_eq!(metrics.items(Status::Cancelled), 3);
}

#[tokio::test(start_paused = true)]
async fn batch_runs_record_items_and_batches() {
    let metrics = ExecMetrics::new();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let exec = BatchExecutor::builder()
        .batch_size(4)
        .concurrency(2)
        .metrics(metrics.clone())
        .build()
        .unwrap();
    let report = exec
        .run(
            0..10u32,
            |batch: Batch<u32>| async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                if batch.number() == 1 {
                    Err("outage")
                } else {
                    Ok(())
                }
            },
            |_, ()| Ok::<_, &str>(()),
        )
        .await;
    assert_eq!(report.succeeded(), 6);
    assert_eq!(metrics.items(Status::Succeeded), 6);
    assert_eq!(metrics.items(Status::Failed), 4);
    assert_eq!(metrics.batches(Status::Succeeded), 2);
    assert_eq!(metrics.batches(Status::Failed), 1);
    assert_eq!(metrics.in_flight(), 0);
    assert_eq!(metrics.concurrency_limit(), 2);
    let text = scrape(&registry);
    assert!(
        text.contains("batches_total{status=\"failed\"} 1"),
        "{text}"
    );
    assert!(text.contains("item_duration_seconds_count 10"), "{text}");
    assert!(text.contains("item_duration_seconds_sum 20.0"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn dropping_a_run_leaves_nothing_in_flight() {
    let metrics = ExecMetrics::new();
    let exec = ParallelExecutor::builder()
        .concurrency(3)
        .metrics(metrics.clone())
        .build()
        .unwrap();
    let run = exec.run(0..10u32, |_| async {
        std::future::pending::<()>().await;
        Ok::<(), ()>(())
    });
    assert!(
        tokio::time::timeout(Duration::from_secs(1), run)
            .await
            .is_err()
    );
    assert_eq!(metrics.in_flight(), 0);

    let batches = BatchExecutor::builder()
        .batch_size(4)
        .concurrency(2)
        .metrics(metrics.clone())
        .build()
        .unwrap();
    let run = batches.run(
        0..20u32,
        |_batch: Batch<u32>| async {
            std::future::pending::<()>().await;
            Ok::<(), ()>(())
        },
        |_, ()| Ok::<(), ()>(()),
    );
    let mut run = Box::pin(run);
    assert!(
        tokio::time::timeout(Duration::from_secs(1), &mut run)
            .await
            .is_err()
    );
    assert_eq!(metrics.in_flight(), 8, "two batches of four are running");
    drop(run);
    assert_eq!(metrics.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_worker_pool_records_jobs_by_outcome_queue_and_running() {
    let metrics = PoolMetrics::new();
    let mut registry = Registry::default();
    metrics.register(registry.sub_registry_with_prefix("watchdog"));
    let pool = WorkerPool::builder()
        .workers(1)
        .queue(2)
        .metrics(metrics.clone())
        .build()
        .unwrap();
    let long = pool
        .submit(Priority::Normal, async {
            tokio::time::sleep(Duration::from_secs(60)).await;
        })
        .unwrap();
    tokio::task::yield_now().await;
    assert_eq!((metrics.running(), metrics.queued()), (1, 0));
    let boom = pool
        .submit(Priority::Normal, async { panic!("boom") })
        .unwrap();
    let low = pool.submit(Priority::Low, async {}).unwrap();
    let _refused = pool.submit(Priority::Low, async {}).unwrap_err();
    let _high = pool.submit(Priority::High, async {}).unwrap();
    assert_eq!(metrics.queued(), 2);
    assert!(low.await.is_err(), "shed");
    long.await.unwrap();
    assert!(boom.await.is_err());
    let stuck = pool
        .submit(Priority::Normal, std::future::pending::<()>())
        .unwrap();
    let report = pool.shutdown(Duration::from_secs(1)).await;
    assert_eq!(report.abandoned, 1);
    assert!(stuck.await.is_err());
    assert_eq!((metrics.running(), metrics.queued()), (0, 0));
    let text = scrape(&registry);
    for line in [
        "watchdog_jobs_total{outcome=\"completed\"} 2",
        "watchdog_jobs_total{outcome=\"panicked\"} 1",
        "watchdog_jobs_total{outcome=\"shed\"} 1",
        "watchdog_jobs_total{outcome=\"rejected\"} 1",
        "watchdog_jobs_total{outcome=\"abandoned\"} 1",
        "watchdog_jobs_queued 0",
        "watchdog_jobs_running 0",
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
    assert_eq!(metrics.jobs("completed"), 2);
}
