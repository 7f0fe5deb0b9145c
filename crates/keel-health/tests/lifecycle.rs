//! Adding, removing and reconfiguring targets at run time leaks no task and
//! no probe; shutdown and drop stop everything; misuse gets typed errors.

mod support;

use std::sync::Arc;
use std::time::Duration;

use keel_core::Rng;
use keel_health::{HealthChecker, HealthError, HealthState, ProbeFailure, probe_fn};
use support::{Script, config, settle};
use tokio::time::{Instant, sleep, sleep_until};

/// A probe that holds a clone of `marker` for as long as it exists, so the
/// marker's strong count tells how many probes are still alive.
fn counted_probe(marker: &Arc<()>, healthy: bool) -> impl keel_health::Probe + use<> {
    let marker = marker.clone();
    probe_fn(move || {
        let _alive = &marker;
        async move {
            if healthy {
                Ok(())
            } else {
                Err(ProbeFailure::custom("down"))
            }
        }
    })
}

#[tokio::test(start_paused = true)]
async fn many_add_remove_reconfigure_cycles_leak_no_tasks() {
    let checker = HealthChecker::builder().seed(11).build().unwrap();
    let marker = Arc::new(());
    let rng = Rng::with_seed(99);
    let mut live: Vec<String> = Vec::new();
    let mut next_id = 0u32;
    let mut removed = 0u32;
    for round in 0..3000 {
        match rng.u64_between(0, 9) {
            0..=3 => {
                let id = format!("t{next_id}");
                next_id += 1;
                let cfg = config(rng.u64_between(10, 500), 5, 2, 2);
                checker
                    .add(
                        id.as_str(),
                        counted_probe(&marker, rng.u64_between(0, 1) == 0),
                        cfg,
                    )
                    .unwrap();
                live.push(id);
            }
            4..=6 if !live.is_empty() => {
                let i = rng.u64_between(0, live.len() as u64 - 1) as usize;
                let id = live.swap_remove(i);
                let last = checker.remove(&id).unwrap();
                assert_eq!(last.target, id.as_str());
                removed += 1;
            }
            7 if !live.is_empty() => {
                let i = rng.u64_between(0, live.len() as u64 - 1) as usize;
                let cfg = config(rng.u64_between(10, 500), 5, 1, 3);
                checker.reconfigure(&live[i], cfg).unwrap();
            }
            8 if !live.is_empty() => {
                let i = rng.u64_between(0, live.len() as u64 - 1) as usize;
                checker.check_now(&live[i]).unwrap();
            }
            _ => {}
        }
        if round % 50 == 0 {
            // Let virtual time run: checks happen, removed tasks wind down.
            sleep(Duration::from_millis(rng.u64_between(1, 300))).await;
            assert_eq!(
                settle(&checker, live.len()).await,
                live.len(),
                "round {round}"
            );
            assert_eq!(Arc::strong_count(&marker), 1 + live.len(), "round {round}");
        }
    }
    assert!(removed > 500, "the cycle exercised removal ({removed})");
    assert_eq!(checker.len(), live.len());
    assert_eq!(settle(&checker, live.len()).await, live.len());
    assert_eq!(Arc::strong_count(&marker), 1 + live.len());

    for id in live.drain(..) {
        checker.remove(&id).unwrap();
    }
    assert!(checker.is_empty());
    assert_eq!(settle(&checker, 0).await, 0);
    assert_eq!(Arc::strong_count(&marker), 1, "every probe was dropped");
}

#[tokio::test(start_paused = true)]
async fn removing_a_target_cancels_a_check_in_flight() {
    let checker = HealthChecker::builder().build().unwrap();
    let marker = Arc::new(());
    let started = Arc::new(tokio::sync::Notify::new());
    let (m, s) = (marker.clone(), started.clone());
    let hanging = probe_fn(move || {
        let _alive = &m;
        let s = s.clone();
        async move {
            s.notify_one();
            std::future::pending::<Result<(), ProbeFailure>>().await
        }
    });
    checker
        .add("hang", hanging, config(3_600_000, 3_600_000, 1, 1))
        .unwrap();
    started.notified().await;
    assert_eq!(checker.live_tasks(), 1);
    assert_eq!(Arc::strong_count(&marker), 2);
    let last = checker.remove("hang").unwrap();
    assert_eq!(last.checks, 0);
    assert_eq!(last.state, HealthState::Unknown);
    assert_eq!(settle(&checker, 0).await, 0);
    assert_eq!(Arc::strong_count(&marker), 1);
}

#[tokio::test(start_paused = true)]
async fn no_event_is_sent_for_a_removed_target() {
    let checker = HealthChecker::builder().build().unwrap();
    let mut rx = checker.subscribe();
    let script = Script::new(true);
    let t0 = Instant::now();
    checker
        .add("x", script.probe(), config(1000, 100, 1, 1))
        .unwrap();
    sleep_until(t0 + Duration::from_millis(500)).await;
    assert_eq!(rx.try_recv().unwrap().new, HealthState::Healthy);
    script.set(false);
    checker.remove("x").unwrap();
    sleep_until(t0 + Duration::from_secs(5)).await;
    assert!(rx.try_recv().is_err());
    assert_eq!(script.checks.lock().len(), 1);
    // The id can be reused and starts afresh.
    checker
        .add("x", script.probe(), config(1000, 100, 1, 1))
        .unwrap();
    sleep(Duration::from_millis(10)).await;
    let event = rx.try_recv().unwrap();
    assert_eq!(
        (event.old, event.new),
        (HealthState::Unknown, HealthState::Unhealthy)
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_every_task_and_refuses_new_targets() {
    let checker = HealthChecker::builder().build().unwrap();
    let marker = Arc::new(());
    for i in 0..50 {
        checker
            .add(
                format!("t{i}"),
                counted_probe(&marker, true),
                config(100, 10, 1, 1),
            )
            .unwrap();
    }
    sleep(Duration::from_millis(250)).await;
    assert_eq!(checker.live_tasks(), 50);
    checker.shutdown().await;
    assert_eq!(checker.live_tasks(), 0);
    assert!(checker.is_empty());
    assert!(checker.is_shut_down());
    assert_eq!(Arc::strong_count(&marker), 1);
    let err = checker
        .add("late", counted_probe(&marker, true), config(100, 10, 1, 1))
        .unwrap_err();
    assert!(matches!(err, HealthError::ShutDown(_)), "{err:?}");
    checker.shutdown().await; // idempotent
}

#[tokio::test(start_paused = true)]
async fn dropping_the_checker_stops_its_tasks() {
    let marker = Arc::new(());
    {
        let checker = HealthChecker::builder().build().unwrap();
        for i in 0..20 {
            checker
                .add(
                    format!("t{i}"),
                    counted_probe(&marker, true),
                    config(100, 10, 1, 1),
                )
                .unwrap();
        }
        sleep(Duration::from_millis(150)).await;
        assert_eq!(Arc::strong_count(&marker), 21);
        let clone = checker.clone();
        drop(checker);
        sleep(Duration::from_millis(150)).await;
        assert_eq!(Arc::strong_count(&marker), 21, "a clone keeps it running");
        drop(clone);
    }
    for _ in 0..100 {
        if Arc::strong_count(&marker) == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(Arc::strong_count(&marker), 1);
}

#[tokio::test]
async fn misuse_is_reported_with_typed_errors() {
    let checker = HealthChecker::builder().build().unwrap();
    let script = Script::new(true);
    checker
        .add("a", script.probe(), config(1000, 100, 1, 1))
        .unwrap();
    match checker.add("a", script.probe(), config(1000, 100, 1, 1)) {
        Err(HealthError::TargetExists(e)) => assert_eq!(e.target, "a"),
        other => panic!("{other:?}"),
    }
    for result in [
        checker.remove("b").map(|_| ()),
        checker.reconfigure("b", config(1000, 100, 1, 1)),
        checker.check_now("b"),
    ] {
        match result {
            Err(HealthError::UnknownTarget(e)) => {
                assert_eq!(e.target, "b");
                assert_eq!(e.to_string(), "no target `b` is checked");
            }
            other => panic!("{other:?}"),
        }
    }
    match HealthChecker::builder().event_capacity(0).build() {
        Err(HealthError::InvalidConfig(e)) => assert_eq!(e.field(), "event_capacity"),
        other => panic!("{other:?}"),
    }
    match HealthChecker::builder()
        .jitter_granularity(Duration::ZERO)
        .build()
    {
        Err(HealthError::InvalidConfig(e)) => assert_eq!(e.field(), "jitter_granularity"),
        other => panic!("{other:?}"),
    }
    checker.shutdown().await;
}

#[test]
fn building_outside_a_runtime_needs_a_handle() {
    assert!(matches!(
        HealthChecker::builder().build(),
        Err(HealthError::NoRuntime)
    ));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    // Built and fed from a plain thread, run by the runtime.
    let checker = HealthChecker::builder()
        .runtime(runtime.handle().clone())
        .build()
        .unwrap();
    let script = Script::new(true);
    checker
        .add("a", script.probe(), config(1000, 100, 1, 1))
        .unwrap();
    runtime.block_on(async {
        sleep(Duration::from_millis(10)).await;
    });
    assert_eq!(checker.status("a").unwrap().state, HealthState::Healthy);
}
