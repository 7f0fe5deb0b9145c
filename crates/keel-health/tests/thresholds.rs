//! Timing rules under paused tokio time: thresholds, intervals, timeouts,
//! jitter, reconfiguration, events and snapshots. Probes here are closures,
//! so no real I/O races the virtual clock.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use keel_health::{
    ChangeReason, CheckConfig, FailureKind, HealthChecker, HealthEvent, HealthState, ProbeFailure,
    probe_fn,
};
use parking_lot::Mutex;
use support::{Script, config};
use tokio::time::{Instant, sleep_until};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn drain(rx: &mut tokio::sync::broadcast::Receiver<HealthEvent>) -> Vec<HealthEvent> {
    let mut out = Vec::new();
    while let Ok(event) = rx.try_recv() {
        out.push(event);
    }
    out
}

#[tokio::test(start_paused = true)]
async fn failure_and_recovery_thresholds_drive_state_at_exact_times() {
    let checker = HealthChecker::builder().seed(1).build().unwrap();
    let mut rx = checker.subscribe();
    let script = Script::new(true);
    let t0 = Instant::now();
    checker
        .add("vm-1", script.probe(), config(1000, 500, 3, 2))
        .unwrap();
    assert_eq!(checker.status("vm-1").unwrap().state, HealthState::Unknown);

    // First check at t0 (no jitter): Unknown -> Healthy at once.
    sleep_until(t0 + ms(500)).await;
    let events = drain(&mut rx);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].target, "vm-1");
    assert_eq!(
        (events[0].old, events[0].new),
        (HealthState::Unknown, HealthState::Healthy)
    );
    assert_eq!(events[0].reason, ChangeReason::FirstSuccess);
    assert_eq!(events[0].at, t0);

    // Fails from t0+1.5s: checks at 2, 3 and 4 s fail; the third one flips it.
    sleep_until(t0 + ms(1500)).await;
    script.set(false);
    sleep_until(t0 + ms(3500)).await;
    assert!(
        drain(&mut rx).is_empty(),
        "two failures are below the threshold"
    );
    let status = checker.status("vm-1").unwrap();
    assert_eq!(status.state, HealthState::Healthy);
    assert_eq!(status.consecutive_failures, 2);
    sleep_until(t0 + ms(4500)).await;
    let events = drain(&mut rx);
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(
        (e.old, e.new),
        (HealthState::Healthy, HealthState::Unhealthy)
    );
    assert_eq!(e.at, t0 + ms(4000));
    assert_eq!(e.old_since, t0);
    match &e.reason {
        ChangeReason::Failed {
            consecutive_failures,
            failure,
        } => {
            assert_eq!(*consecutive_failures, 3);
            assert_eq!(failure.kind(), FailureKind::Refused);
            assert_eq!(failure.message(), "scripted failure");
        }
        other => panic!("unexpected reason {other:?}"),
    }

    // Recovers from t0+4.5s: one success (5 s) is not enough, two (6 s) are.
    script.set(true);
    sleep_until(t0 + ms(5500)).await;
    assert!(drain(&mut rx).is_empty());
    assert_eq!(checker.status("vm-1").unwrap().consecutive_successes, 1);
    sleep_until(t0 + ms(6500)).await;
    let events = drain(&mut rx);
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].old, events[0].new),
        (HealthState::Unhealthy, HealthState::Healthy)
    );
    assert_eq!(
        events[0].reason,
        ChangeReason::Recovered {
            consecutive_successes: 2
        }
    );
    assert_eq!(events[0].at, t0 + ms(6000));
    assert_eq!(events[0].old_since, t0 + ms(4000));

    // One check per second, starting at t0.
    let expected: Vec<Duration> = (0..=6).map(|s| ms(s * 1000)).collect();
    assert_eq!(script.offsets(t0), expected);
}

#[tokio::test(start_paused = true)]
async fn unknown_becomes_unhealthy_only_after_the_failure_threshold() {
    let checker = HealthChecker::builder().build().unwrap();
    let mut rx = checker.subscribe();
    let script = Script::new(false);
    let t0 = Instant::now();
    checker
        .add("db", script.probe(), config(1000, 100, 3, 1))
        .unwrap();
    sleep_until(t0 + ms(1500)).await;
    assert_eq!(checker.status("db").unwrap().state, HealthState::Unknown);
    assert_eq!(checker.status("db").unwrap().consecutive_failures, 2);
    sleep_until(t0 + ms(2500)).await;
    let events = drain(&mut rx);
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].old, events[0].new),
        (HealthState::Unknown, HealthState::Unhealthy)
    );
    assert_eq!(events[0].at, t0 + ms(2000));
}

#[tokio::test(start_paused = true)]
async fn a_slow_probe_times_out_at_exactly_the_timeout() {
    let checker = HealthChecker::builder().build().unwrap();
    let mut rx = checker.subscribe();
    let t0 = Instant::now();
    let probe = probe_fn(|| async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok::<_, ProbeFailure>(())
    });
    checker.add("slow", probe, config(2000, 750, 1, 1)).unwrap();
    sleep_until(t0 + ms(749)).await;
    assert_eq!(checker.status("slow").unwrap().checks, 0, "still in flight");
    sleep_until(t0 + ms(760)).await;
    let status = checker.status("slow").unwrap();
    assert_eq!(status.checks, 1);
    assert_eq!(status.last_duration, Some(ms(750)));
    assert_eq!(status.last_check, Some(t0));
    let error = status.last_error.unwrap();
    assert_eq!(error.kind(), FailureKind::Timeout);
    assert_eq!(error.message(), "no answer within 750ms");
    let events = drain(&mut rx);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].new, HealthState::Unhealthy);
    // The next check starts one interval after the previous start, not
    // after its end.
    sleep_until(t0 + ms(2000) + ms(760)).await;
    assert_eq!(checker.status("slow").unwrap().checks, 2);
}

/// First-check offsets of 1,000 targets (interval 1 s), by target.
async fn first_checks(seed: u64, jitter: bool, granularity: Duration) -> Vec<Duration> {
    let checker = HealthChecker::builder()
        .seed(seed)
        .jitter_granularity(granularity)
        .build()
        .unwrap();
    let config = CheckConfig::builder()
        .interval(Duration::from_secs(1))
        .timeout(ms(100))
        .jitter_first_check(jitter)
        .build()
        .unwrap();
    let t0 = Instant::now();
    let firsts: Arc<Mutex<Vec<(usize, Duration)>>> = Arc::default();
    for i in 0..1000 {
        let firsts = firsts.clone();
        let probe = probe_fn(move || {
            let firsts = firsts.clone();
            async move {
                firsts.lock().push((i, Instant::now() - t0));
                Ok::<_, ProbeFailure>(())
            }
        });
        checker.add(format!("t{i}"), probe, config).unwrap();
    }
    sleep_until(t0 + ms(1500)).await;
    checker.shutdown().await;
    // Each target's first check, by target.
    let mut first = vec![None::<Duration>; 1000];
    let mut per_target = vec![0u32; 1000];
    for &(i, d) in firsts.lock().iter() {
        per_target[i] += 1;
        first[i] = Some(first[i].map_or(d, |f: Duration| f.min(d)));
    }
    // Every target was checked once or twice in 1.5 intervals.
    assert!(
        per_target.iter().all(|n| (1..=2).contains(n)),
        "{per_target:?}"
    );
    first.into_iter().map(Option::unwrap).collect()
}

fn per_instant(offsets: &[Duration]) -> std::collections::HashMap<Duration, u32> {
    let mut counts = std::collections::HashMap::new();
    for d in offsets {
        *counts.entry(*d).or_insert(0u32) += 1;
    }
    counts
}

#[tokio::test(start_paused = true)]
async fn first_checks_are_jittered_across_the_interval_and_replayable() {
    let grid = keel_health::HealthCheckerBuilder::DEFAULT_JITTER_GRANULARITY;
    assert_eq!(grid, ms(50));
    let a = first_checks(42, true, grid).await;
    assert!(a.iter().all(|d| *d < Duration::from_secs(1)));
    // On the default 50 ms grid: 20 instants, each with roughly a
    // twentieth of the targets (binomial: 50 expected, sd about 7).
    assert!(a.iter().all(|d| d.as_nanos() % grid.as_nanos() == 0));
    let counts = per_instant(&a);
    assert_eq!(counts.len(), 20, "{counts:?}");
    assert!(counts.values().all(|n| (20..=80).contains(n)), "{counts:?}");

    // The same seed replays the same schedule; another seed does not.
    assert_eq!(first_checks(42, true, grid).await, a);
    assert_ne!(first_checks(43, true, grid).await, a);
    // Without jitter every first check is immediate: lock-step.
    assert!(
        first_checks(42, false, grid)
            .await
            .iter()
            .all(|d| d.is_zero())
    );
}

#[tokio::test(start_paused = true)]
async fn a_fine_jitter_grid_spreads_targets_over_every_millisecond() {
    let a = first_checks(7, true, ms(1)).await;
    // Every tenth of the interval gets roughly a tenth of the targets
    // (100 expected, sd about 9.5), and no millisecond gets a burst.
    let mut buckets = [0u32; 10];
    for d in &a {
        buckets[(d.as_millis() / 100) as usize] += 1;
    }
    assert!(
        buckets.iter().all(|n| (60..=140).contains(n)),
        "{buckets:?}"
    );
    let counts = per_instant(&a);
    assert!(counts.len() > 550, "{} distinct instants", counts.len());
    assert!(
        counts.values().all(|&n| n <= 8),
        "{:?}",
        counts.values().max()
    );
}

#[tokio::test(start_paused = true)]
async fn a_check_that_times_out_at_the_interval_is_followed_at_once() {
    let checker = HealthChecker::builder().build().unwrap();
    let starts: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let log = starts.clone();
    let probe = probe_fn(move || {
        log.lock().push(Instant::now());
        std::future::pending::<Result<(), ProbeFailure>>()
    });
    let t0 = Instant::now();
    checker
        .add("hung", probe, config(1000, 1000, 3, 1))
        .unwrap();
    sleep_until(t0 + ms(3500)).await;
    let offsets: Vec<Duration> = starts.lock().iter().map(|t| *t - t0).collect();
    assert_eq!(offsets, vec![ms(0), ms(1000), ms(2000), ms(3000)]);
    let status = checker.status("hung").unwrap();
    assert_eq!(status.state, HealthState::Unhealthy);
    assert_eq!(status.consecutive_failures, 3);
}

#[tokio::test(start_paused = true)]
async fn scheduled_checks_keep_a_fixed_rate_whatever_the_check_takes() {
    let checker = HealthChecker::builder().build().unwrap();
    let starts: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let log = starts.clone();
    let calls = Arc::new(AtomicUsize::new(0));
    let probe = probe_fn(move || {
        log.lock().push(Instant::now());
        // Checks take 100, 400, 700, 100, ... ms.
        let took = ms(100 + 300 * (calls.fetch_add(1, Ordering::SeqCst) as u64 % 3));
        async move {
            tokio::time::sleep(took).await;
            Ok::<_, ProbeFailure>(())
        }
    });
    let t0 = Instant::now();
    checker.add("x", probe, config(1000, 900, 1, 1)).unwrap();
    sleep_until(t0 + ms(5500)).await;
    let offsets: Vec<Duration> = starts.lock().iter().map(|t| *t - t0).collect();
    assert_eq!(offsets, (0..=5).map(|s| ms(s * 1000)).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn reconfiguring_the_interval_reschedules_from_the_last_start() {
    let checker = HealthChecker::builder().build().unwrap();
    let script = Script::new(true);
    let t0 = Instant::now();
    checker
        .add("x", script.probe(), config(10_000, 100, 1, 1))
        .unwrap();
    sleep_until(t0 + ms(500)).await;
    checker.reconfigure("x", config(1000, 100, 1, 1)).unwrap();
    sleep_until(t0 + ms(2500)).await;
    checker.reconfigure("x", config(5000, 100, 1, 1)).unwrap();
    sleep_until(t0 + ms(12_500)).await;
    assert_eq!(
        script.offsets(t0),
        vec![ms(0), ms(1000), ms(2000), ms(7000), ms(12_000)]
    );
    assert_eq!(checker.status("x").unwrap().config.interval(), ms(5000));
}

#[tokio::test(start_paused = true)]
async fn reconfiguring_before_the_first_check_caps_the_wait() {
    let checker = HealthChecker::builder().seed(5).build().unwrap();
    let script = Script::new(true);
    let t0 = Instant::now();
    let slow = CheckConfig::builder()
        .interval(Duration::from_secs(3600))
        .timeout(ms(100))
        .build()
        .unwrap();
    checker.add("x", script.probe(), slow).unwrap();
    sleep_until(t0 + ms(10)).await;
    // Seed 5 puts the first check far into the hour.
    assert!(script.checks.lock().is_empty());
    checker.reconfigure("x", config(1000, 100, 1, 1)).unwrap();
    sleep_until(t0 + ms(1500)).await;
    // At most one new interval after the reconfiguration.
    assert_eq!(script.offsets(t0), vec![ms(1010)]);
}

#[tokio::test(start_paused = true)]
async fn lowering_a_threshold_applies_at_the_next_result() {
    let checker = HealthChecker::builder().build().unwrap();
    let mut rx = checker.subscribe();
    let script = Script::new(true);
    let t0 = Instant::now();
    checker
        .add("x", script.probe(), config(1000, 100, 10, 1))
        .unwrap();
    sleep_until(t0 + ms(500)).await;
    script.set(false);
    sleep_until(t0 + ms(3500)).await; // failures at 1, 2, 3 s
    assert_eq!(drain(&mut rx).len(), 1); // only FirstSuccess
    checker.reconfigure("x", config(1000, 100, 2, 1)).unwrap();
    sleep_until(t0 + ms(4500)).await;
    let events = drain(&mut rx);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].new, HealthState::Unhealthy);
    assert_eq!(events[0].at, t0 + ms(4000));
    assert!(matches!(
        events[0].reason,
        ChangeReason::Failed {
            consecutive_failures: 4,
            ..
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn check_now_runs_an_extra_check_at_once() {
    let checker = HealthChecker::builder().build().unwrap();
    let script = Script::new(true);
    let t0 = Instant::now();
    checker
        .add("x", script.probe(), config(10_000, 100, 1, 1))
        .unwrap();
    sleep_until(t0 + ms(3000)).await;
    checker.check_now("x").unwrap();
    sleep_until(t0 + ms(20_500)).await;
    // The extra check does not move the regular schedule.
    assert_eq!(
        script.offsets(t0),
        vec![ms(0), ms(3000), ms(10_000), ms(20_000)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_panicking_probe_is_a_failure_and_the_target_keeps_being_checked() {
    let checker = HealthChecker::builder().build().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let probe = probe_fn(move || {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                panic!("probe bug");
            }
            Ok::<_, ProbeFailure>(())
        }
    });
    let t0 = Instant::now();
    checker.add("p", probe, config(1000, 100, 1, 1)).unwrap();
    sleep_until(t0 + ms(500)).await;
    let status = checker.status("p").unwrap();
    assert_eq!(status.state, HealthState::Unhealthy);
    let error = status.last_error.unwrap();
    assert_eq!(error.kind(), FailureKind::Panic);
    assert!(error.message().contains("probe bug"), "{error}");
    sleep_until(t0 + ms(1500)).await;
    let status = checker.status("p").unwrap();
    assert_eq!(status.checks, 2);
    assert_eq!(status.state, HealthState::Healthy);
    assert_eq!(checker.live_tasks(), 1);
}

#[tokio::test(start_paused = true)]
async fn callbacks_see_every_change_survive_panics_and_can_be_removed() {
    let checker = HealthChecker::builder().build().unwrap();
    let seen: Arc<Mutex<Vec<(String, HealthState, HealthState)>>> = Arc::default();
    let log = seen.clone();
    let id = checker.on_change(move |e| {
        log.lock().push((e.target.to_string(), e.old, e.new));
    });
    let panicky = checker.on_change(|_| panic!("callback bug"));
    let script = Script::new(true);
    let t0 = Instant::now();
    checker
        .add("a", script.probe(), config(1000, 100, 1, 1))
        .unwrap();
    sleep_until(t0 + ms(500)).await;
    script.set(false);
    sleep_until(t0 + ms(1500)).await;
    assert_eq!(
        *seen.lock(),
        vec![
            ("a".to_owned(), HealthState::Unknown, HealthState::Healthy),
            ("a".to_owned(), HealthState::Healthy, HealthState::Unhealthy),
        ]
    );
    assert_eq!(
        checker.live_tasks(),
        1,
        "a panicking callback does not kill the task"
    );
    assert!(checker.remove_callback(id));
    assert!(!checker.remove_callback(id));
    assert!(checker.remove_callback(panicky));
    script.set(true);
    sleep_until(t0 + ms(2500)).await;
    assert_eq!(checker.status("a").unwrap().state, HealthState::Healthy);
    assert_eq!(seen.lock().len(), 2, "removed callbacks are not called");
}

#[tokio::test(start_paused = true)]
async fn snapshot_reports_every_field_and_keeps_the_last_error() {
    let checker = HealthChecker::builder().build().unwrap();
    let ok = Script::new(true);
    let bad = Script::new(false);
    let t0 = Instant::now();
    checker
        .add("b-bad", bad.probe(), config(1000, 100, 2, 1))
        .unwrap();
    checker
        .add("a-ok", ok.probe(), config(1000, 100, 2, 1))
        .unwrap();
    sleep_until(t0 + ms(1500)).await;
    let snap = checker.snapshot();
    assert_eq!(snap.len(), 2);
    assert_eq!(snap[0].target, "a-ok");
    assert_eq!(snap[1].target, "b-bad");
    let (a, b) = (&snap[0], &snap[1]);
    assert_eq!(a.state, HealthState::Healthy);
    assert_eq!(a.probe.as_ref(), "script");
    assert_eq!((a.consecutive_successes, a.consecutive_failures), (2, 0));
    assert_eq!((a.checks, a.failures), (2, 0));
    assert_eq!(a.last_check, Some(t0 + ms(1000)));
    assert!(a.last_check_wall.is_some());
    assert_eq!(a.last_duration, Some(Duration::ZERO));
    assert!(a.last_error.is_none());
    assert_eq!(a.since, t0);
    assert_eq!(b.state, HealthState::Unhealthy);
    assert_eq!((b.consecutive_successes, b.consecutive_failures), (0, 2));
    assert_eq!(b.failures, 2);
    assert_eq!(b.since, t0 + ms(1000));
    assert_eq!(b.last_error.as_ref().unwrap().kind(), FailureKind::Refused);

    // After recovery the last error is still shown, with its time.
    bad.set(true);
    sleep_until(t0 + ms(2500)).await;
    let b = checker.status("b-bad").unwrap();
    assert_eq!(b.state, HealthState::Healthy);
    assert!(b.last_error.is_some());
    assert!(b.last_error_wall.unwrap() <= b.last_check_wall.unwrap());
    assert_eq!(b.consecutive_successes, 1);
    assert!(checker.status("nope").is_none());
}

#[cfg(feature = "serde")]
#[tokio::test(start_paused = true)]
async fn snapshots_and_events_serialize() {
    let checker = HealthChecker::builder().build().unwrap();
    let mut rx = checker.subscribe();
    let script = Script::new(false);
    checker
        .add("vm", script.probe(), config(1000, 100, 1, 1))
        .unwrap();
    let event = rx.recv().await.unwrap();
    let json = serde_json::to_value(&event).unwrap();
    assert_eq!(json["target"], "vm");
    assert_eq!(json["old"], "unknown");
    assert_eq!(json["new"], "unhealthy");
    assert_eq!(json["reason"]["kind"], "failed");
    assert_eq!(json["reason"]["failure"]["kind"], "refused");
    let status = serde_json::to_value(checker.snapshot()).unwrap();
    assert_eq!(status[0]["state"], "unhealthy");
    assert_eq!(status[0]["consecutive_failures"], 1);
    assert_eq!(status[0]["last_error"]["message"], "scripted failure");
    assert_eq!(status[0]["interval_ms"], 1000.0);
}
