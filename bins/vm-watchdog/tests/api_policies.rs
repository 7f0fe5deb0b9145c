//! The guarded API's policies under paused time, against the scripted API
//! (no sockets): the worker pool bounds the calls in flight, each VM is
//! rate limited at 10 requests/s with bursts of 5, the breaker opens after 5
//! consecutive failures, starts retry with the start policy, and the pool
//! admits starts before probe-triggered reads before routine reads.

mod support;

use std::sync::Arc;
use std::time::Duration;

use keel::breaker::BreakerConfig;
use keel::retry::RetryPolicy;
use tokio::time::Instant;
use vm_watchdog::{Api, ApiSettings, Metrics, ReadReason, VmSource, VmStatus};

use support::{ScriptedApi, gaps};

const MS: fn(u64) -> Duration = Duration::from_millis;

fn vm(id: &str) -> VmSource {
    VmSource::Instance { id: id.to_owned() }
}

fn no_read_retries(workers: usize) -> ApiSettings {
    ApiSettings {
        read_retry: RetryPolicy::builder().max_retries(0).build().unwrap(),
        ..ApiSettings::new(workers)
    }
}

#[tokio::test(start_paused = true)]
async fn the_worker_pool_bounds_the_calls_in_flight() {
    let script = ScriptedApi::default();
    for i in 0..20 {
        let id = format!("i-{i}");
        script.add(&id, VmStatus::Running, None);
        script
            .inner
            .lock()
            .delays
            .insert(id, Duration::from_secs(1));
    }
    let api = Arc::new(Api::new(script.clone(), no_read_retries(3), Metrics::new(), None).unwrap());
    let started = Instant::now();
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let api = api.clone();
            tokio::spawn(async move {
                let id = format!("i-{i}");
                api.status(&format!("vm-{i}"), &vm(&id), ReadReason::Routine)
                    .await
            })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap().status, VmStatus::Running);
    }
    assert_eq!(
        script.inner.lock().max_in_flight,
        3,
        "API_WORKER_POOL_SIZE=3"
    );
    // 20 one-second calls, three at a time: seven rounds.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(7) && took < MS(7_100),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn each_vm_is_rate_limited_at_ten_per_second_with_bursts_of_five() {
    let script = ScriptedApi::default();
    script.add("i-1", VmStatus::Running, None);
    script.add("i-2", VmStatus::Running, None);
    let api =
        Arc::new(Api::new(script.clone(), no_read_retries(100), Metrics::new(), None).unwrap());
    let started = Instant::now();
    let calls: Vec<_> = (0..15)
        .map(|_| {
            let api = api.clone();
            tokio::spawn(async move { api.status("web-1", &vm("i-1"), ReadReason::Routine).await })
        })
        .collect();
    // Another VM is not held back by web-1's limit.
    api.status("web-2", &vm("i-2"), ReadReason::Routine)
        .await
        .unwrap();
    assert_eq!(script.calls_to("get", "i-2"), [started]);
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let mut at: Vec<Duration> = script
        .calls_to("get", "i-1")
        .into_iter()
        .map(|t| t - started)
        .collect();
    at.sort();
    assert_eq!(at.len(), 15);
    assert!(at[..5].iter().all(|t| t.is_zero()), "a burst of 5: {at:?}");
    for (k, t) in at.iter().enumerate().skip(5) {
        let earliest = MS(100 * (k as u64 - 4));
        assert!(
            *t >= earliest - MS(1),
            "call {k} at {t:?}, before {earliest:?}: {at:?}"
        );
    }
    assert!(at[14] <= MS(1_050), "then 10/s: {at:?}");
}

#[tokio::test(start_paused = true)]
async fn the_breaker_opens_on_the_failure_rate_not_on_a_run_of_failures() {
    let script = ScriptedApi::default();
    script.add("i-1", VmStatus::Running, None);
    let api = Api::new(script.clone(), no_read_retries(10), Metrics::new(), None).unwrap();
    let source = vm("i-1");
    let read = || api.status("web-1", &source, ReadReason::Routine);
    // Half the calls failing, in runs of five: the old rule (5 in a row)
    // opened on the first run; 50 % is under the 75 % threshold.
    for round in 0..8 {
        script.set_fail(round % 2 == 0);
        for _ in 0..5 {
            let _ = read().await;
        }
    }
    assert!(!api.any_breaker_open(), "50 % failures keep it closed");
    // A fresh window: an outage. Fewer than 20 calls never open it...
    tokio::time::advance(Duration::from_secs(31)).await;
    script.set_fail(true);
    for _ in 0..19 {
        assert_eq!(read().await.unwrap_err().kind, "inner");
    }
    assert!(!api.any_breaker_open(), "19 calls are under minimum_calls");
    // ...the 20th failure (100 % of 20) does.
    assert_eq!(read().await.unwrap_err().kind, "inner");
    assert!(api.any_breaker_open(), "open at 75 %+ of 20 calls");
    let before = script.count("get");
    let err = read().await.unwrap_err();
    assert_eq!(err.kind, "circuit_rejected", "{err:?}");
    assert_eq!(
        script.count("get"),
        before,
        "the open breaker spares the API"
    );
}

#[tokio::test(start_paused = true)]
async fn starts_retry_with_the_watchdog_preset() {
    let script = ScriptedApi::default();
    script.add("i-1", VmStatus::Stopped, None);
    script.set_fail(true);
    let settings = ApiSettings {
        // Keep the breaker out of it: this is about the retry schedule.
        breaker: BreakerConfig::consecutive(1_000, Duration::from_secs(30))
            .build()
            .unwrap(),
        ..ApiSettings::new(10)
    };
    let api = Api::new(script.clone(), settings, Metrics::new(), None).unwrap();
    api.start("web-1", &vm("i-1")).await.unwrap_err();
    let g = gaps(&script.calls_to("start", "i-1"));
    assert_eq!(g.len(), 5, "{g:?}");
    // 1, 2, 4, 8, 16 s, ±20 %.
    for (gap, secs) in g.iter().zip([1.0, 2.0, 4.0, 8.0, 16.0]) {
        let expected = Duration::from_secs_f64(secs);
        assert!(
            *gap >= expected.mul_f64(0.8) && *gap <= expected.mul_f64(1.2),
            "{gap:?} vs {secs} s in {g:?}"
        );
    }
    // Reads do not use it: three quick retries (0.2, 0.4, 0.8 s ±20 %).
    script.inner.lock().calls.clear();
    let settings = ApiSettings {
        breaker: BreakerConfig::consecutive(1_000, Duration::from_secs(30))
            .build()
            .unwrap(),
        ..ApiSettings::new(10)
    };
    let api = Api::new(script.clone(), settings, Metrics::new(), None).unwrap();
    api.status("web-1", &vm("i-1"), ReadReason::Routine)
        .await
        .unwrap_err();
    let g = gaps(&script.calls_to("get", "i-1"));
    assert_eq!(g.len(), 3, "{g:?}");
    assert!(g.iter().sum::<Duration>() <= MS(1_700), "{g:?}");
}

#[tokio::test(start_paused = true)]
async fn a_start_overtakes_routine_reads_waiting_for_the_pool() {
    // Warm-up of a large fleet: 50 routine reads of one second each wait
    // for a pool of 2 (25 s in all, within the 30 s read deadline). A start (and a probe-triggered read) arriving later
    // is admitted by the next free slot, not after the reads.
    let script = ScriptedApi::default();
    for i in 0..100 {
        let id = format!("i-{i}");
        script.add(&id, VmStatus::Running, None);
        script
            .inner
            .lock()
            .delays
            .insert(id, Duration::from_secs(1));
    }
    script.add("i-stopped", VmStatus::Stopped, None);
    script.add("i-suspect", VmStatus::Running, None);
    let api = Arc::new(Api::new(script.clone(), no_read_retries(2), Metrics::new(), None).unwrap());
    let started = Instant::now();
    let reads: Vec<_> = (0..50)
        .map(|i| {
            let api = api.clone();
            tokio::spawn(async move {
                api.status(
                    &format!("vm-{i}"),
                    &vm(&format!("i-{i}")),
                    ReadReason::Routine,
                )
                .await
            })
        })
        .collect();
    while api.pool().queued() < 48 {
        tokio::task::yield_now().await;
    }
    let probe = {
        let api = api.clone();
        tokio::spawn(async move {
            api.status("suspect", &vm("i-suspect"), ReadReason::ProbeFailed)
                .await
        })
    };
    api.start("stopped", &vm("i-stopped")).await.unwrap();
    probe.await.unwrap().unwrap();
    let start_at = script.calls_to("start", "i-stopped")[0] - started;
    let probe_at = script.calls_to("get", "i-suspect")[0] - started;
    assert_eq!(start_at, Duration::from_secs(1), "the first free slot");
    assert_eq!(probe_at, Duration::from_secs(1), "the second free slot");
    for r in reads {
        r.await.unwrap().unwrap();
    }
}
