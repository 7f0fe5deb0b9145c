//! The engine under paused time: a scripted cloud API (no sockets), the
//! real notifier with an in-memory sink, scripted port probes. Every timing
//! here is virtual and exact.

mod support;

use std::time::Duration;

use keel::breaker::BreakerConfig;
use keel::retry::RetryPolicy;
use keel_notify::Priority;
use tokio::time::Instant;
use vm_watchdog::{ApiSettings, VmSource, VmSpec, VmStatus, VmsFile};

use support::{ScriptedApi, file, gaps, harness, harness_with, instance, run_for};

const S: fn(u64) -> Duration = Duration::from_secs;

fn within(d: Duration, expected: Duration, tolerance: f64) -> bool {
    let lo = expected.mul_f64(1.0 - tolerance);
    let hi = expected.mul_f64(1.0 + tolerance);
    d >= lo && d <= hi
}

#[tokio::test(start_paused = true)]
async fn a_running_vm_that_stops_is_alerted_started_and_reported_recovered() {
    let api = ScriptedApi::default();
    api.add("i-1", VmStatus::Running, Some("10.0.0.1"));
    let h = harness(api.clone());
    h.engine.apply(&file(vec![instance("web-1", "i-1")]));
    run_for(S(300)).await;
    assert!(h.inbox.all().is_empty(), "{:?}", h.inbox.all());
    assert_eq!(h.engine.status_of("web-1"), Some(VmStatus::Running));

    let stopped_at = Instant::now();
    api.set_status("i-1", VmStatus::Stopped);
    h.probes.set_down("10.0.0.1", true);
    run_for(S(8)).await;
    let critical = h.inbox.with_priority(Priority::Critical);
    assert_eq!(critical.len(), 1, "{critical:?}");
    assert_eq!(critical[0].title, "VM web-1 is STOPPED");
    // Noticed by the port probe (every 5 s ±10 %), not the 60 s API check.
    let reaction = critical[0].at - stopped_at;
    assert!(reaction <= Duration::from_millis(5_600), "{reaction:?}");
    assert_eq!(api.calls_to("start", "i-1").len(), 1);

    h.probes.set_down("10.0.0.1", false);
    // The start takes 10 s; the recovery is an info alert (10 s debounce).
    run_for(S(40)).await;
    let info = h.inbox.with_priority(Priority::Info);
    assert_eq!(info.len(), 1, "{info:?}");
    assert!(
        info[0].title.starts_with("VM web-1 recovered after "),
        "{}",
        info[0].title
    );
    assert_eq!(api.calls_to("start", "i-1").len(), 1, "started once");
    assert_eq!(h.engine.status_of("web-1"), Some(VmStatus::Running));
    assert_eq!(h.metrics.alerts_sent(Priority::Critical), 1);
    assert_eq!(h.metrics.alerts_sent(Priority::Info), 1);
    // Reaction time runs from the observed change to the alert's acceptance:
    // the critical one went at once, the recovery waited out its 10 s info
    // debounce.
    let reaction = |priority: &str| reaction_sum(&h.metrics, priority);
    assert!(reaction("critical") < 0.5, "{}", reaction("critical"));
    assert!(
        (10.0..10.5).contains(&reaction("info")),
        "{}",
        reaction("info")
    );
}

/// `alert_reaction_seconds_sum` of `priority`, from the encoded metrics.
fn reaction_sum(metrics: &vm_watchdog::Metrics, priority: &str) -> f64 {
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let prefix = format!("alert_reaction_seconds_sum{{priority=\"{priority}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn each_status_is_checked_at_its_table_interval() {
    let api = ScriptedApi::default();
    api.inner.lock().start_sticks = true;
    let table = [
        (VmStatus::Stopped, 5),
        (VmStatus::Crashed, 5),
        (VmStatus::Error, 10),
        (VmStatus::Starting, 10),
        (VmStatus::Provisioning, 15),
        (VmStatus::Restarting, 10),
        (VmStatus::Stopping, 15),
        (VmStatus::Running, 60),
        (VmStatus::Updating, 30),
        (VmStatus::Deleting, 60),
    ];
    let mut vms = Vec::new();
    for (status, _) in table {
        let id = format!("i-{status}");
        api.add(&id, status, None);
        vms.push(instance(&format!("vm-{status}"), &id));
    }
    let h = harness(api.clone());
    h.engine.apply(&file(vms));
    run_for(S(900)).await;
    for (status, secs) in table {
        let at = api.calls_to("get", &format!("i-{status}"));
        let g = gaps(&at);
        assert!(g.len() >= 4, "{status}: {g:?}");
        for gap in &g[g.len() - 3..] {
            assert!(
                within(*gap, S(secs), 0.1),
                "{status}: gap {gap:?} is not {secs} s ±10 %: {g:?}"
            );
        }
    }
    // Nothing but the critical statuses was ever started.
    for (status, _) in table {
        let starts = api.calls_to("start", &format!("i-{status}")).len();
        assert_eq!(
            starts > 0,
            status.is_critical(),
            "{status}: {starts} starts"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_stable_streak_stretches_the_interval_and_failures_shrink_it() {
    let api = ScriptedApi::default();
    api.add("i-1", VmStatus::Running, None);
    let settings = ApiSettings {
        read_retry: RetryPolicy::builder().max_retries(0).build().unwrap(),
        breaker: BreakerConfig::consecutive(1_000, S(30)).build().unwrap(),
        ..ApiSettings::new(10)
    };
    let h = harness_with(api.clone(), settings);
    h.engine.apply(&file(vec![instance("web-1", "i-1")]));
    run_for(S(200)).await;
    let g = gaps(&api.calls_to("get", "i-1"));
    let expected = [5, 10, 20, 40, 60];
    assert!(g.len() >= expected.len(), "{g:?}");
    for (gap, secs) in g.iter().zip(expected) {
        assert!(within(*gap, S(secs), 0.1), "{gap:?} vs {secs} s in {g:?}");
    }

    let before = api.calls_to("get", "i-1").len();
    api.set_fail(true);
    run_for(S(200)).await;
    let at = api.calls_to("get", "i-1");
    let g = gaps(&at[before - 1..]);
    // The interval in progress (60 s) ends, then 30, 15, 7.5 and the 5 s floor.
    let expected = [60.0, 30.0, 15.0, 7.5, 5.0, 5.0];
    for (gap, secs) in g.iter().zip(expected) {
        assert!(
            within(*gap, Duration::from_secs_f64(secs), 0.1),
            "{gap:?} vs {secs} s in {g:?}"
        );
    }
    assert_eq!(
        h.engine.status_of("web-1"),
        Some(VmStatus::Running),
        "the last known status stays"
    );
    assert!(h.metrics.checks("web-1", "FAILED") >= 5);
}

#[tokio::test(start_paused = true)]
async fn stuck_transitions_warn_once_after_their_timeout_and_are_never_started() {
    let api = ScriptedApi::default();
    api.add("i-s", VmStatus::Starting, None);
    api.add("i-u", VmStatus::Updating, None);
    api.add("i-p", VmStatus::Stopping, None);
    let h = harness(api.clone());
    h.engine.apply(&file(vec![
        instance("starting", "i-s"),
        instance("updating", "i-u"),
        instance("stopping", "i-p"),
    ]));
    run_for(S(290)).await;
    assert!(h.inbox.all().is_empty());
    // STARTING: stuck after 5 min, seen within one 10 s check, sent after
    // the 30 s warning debounce.
    run_for(S(60)).await;
    let stuck = h.inbox.titled("VM starting stuck in STARTING");
    assert_eq!(stuck.len(), 1, "{:?}", h.inbox.all());
    assert_eq!(stuck[0].priority, Priority::Warning);
    assert!(
        h.inbox.titled("updating").is_empty(),
        "UPDATING waits 10 min"
    );
    // UPDATING: stuck after 10 min, seen within one 30 s check, plus the
    // debounce.
    run_for(S(360)).await;
    assert_eq!(h.inbox.titled("VM updating stuck in UPDATING").len(), 1);
    assert_eq!(h.inbox.titled("VM stopping stuck in STOPPING").len(), 1);
    run_for(S(1_200)).await;
    assert_eq!(
        h.inbox.all().len(),
        3,
        "one warning each: {:?}",
        h.inbox.all()
    );
    assert_eq!(
        api.count("start"),
        0,
        "transitions are never interfered with"
    );
}

#[tokio::test(start_paused = true)]
async fn stopping_then_stopped_is_started_and_deleting_drops_the_task() {
    let api = ScriptedApi::default();
    api.add("i-1", VmStatus::Stopping, None);
    api.add("i-2", VmStatus::Deleting, None);
    let h = harness(api.clone());
    h.engine
        .apply(&file(vec![instance("a", "i-1"), instance("b", "i-2")]));
    run_for(S(60)).await;
    assert_eq!(api.count("start"), 0);
    api.set_status("i-1", VmStatus::Stopped);
    run_for(S(20)).await;
    assert_eq!(api.calls_to("start", "i-1").len(), 1);
    assert_eq!(h.inbox.titled("VM a is STOPPED").len(), 1);

    assert_eq!((h.engine.vms_monitored(), h.engine.live_tasks()), (2, 2));
    api.remove("i-2");
    run_for(S(70)).await;
    assert_eq!(h.engine.vm_names(), ["a"]);
    assert_eq!(h.engine.live_tasks(), 1, "the deleted VM's task ended");
    assert!(h.inbox.titled("VM b").is_empty(), "{:?}", h.inbox.all());
}

#[tokio::test(start_paused = true)]
async fn an_api_outage_keeps_statuses_raises_one_warning_and_does_not_storm() {
    let api = ScriptedApi::default();
    let mut vms = Vec::new();
    for i in 0..20 {
        let id = format!("i-{i}");
        api.add(&id, VmStatus::Running, Some(&format!("10.0.0.{i}")));
        vms.push(instance(&format!("vm-{i}"), &id));
    }
    let h = harness(api.clone());
    h.engine.apply(&file(vms));
    run_for(S(300)).await;
    let before = api.calls().len();
    api.set_fail(true);
    run_for(S(240)).await;
    let during = api.calls().len() - before;
    // 20 VMs checked every 60 s with up to 6 attempts each would be ~480
    // attempts; the breaker lets through the 5 that open it and one probe
    // per 30 s open period.
    assert!(during <= 30, "{during} attempts during the outage");
    assert_eq!(h.engine.health()["status"], "degraded");
    for i in 0..20 {
        assert_eq!(
            h.engine.status_of(&format!("vm-{i}")),
            Some(VmStatus::Running)
        );
    }
    let warnings = h.inbox.titled("Cloud API unavailable");
    assert_eq!(warnings.len(), 1, "{:?}", h.inbox.all());
    assert!(h.inbox.with_priority(Priority::Critical).is_empty());

    api.set_fail(false);
    run_for(S(180)).await;
    assert_eq!(h.engine.health()["status"], "healthy");
    assert_eq!(h.inbox.titled("Cloud API available again").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn critical_alerts_always_go_out_and_each_incident_gets_its_recovery() {
    let api = ScriptedApi::default();
    api.add("i-1", VmStatus::Running, Some("10.0.0.1"));
    let h = harness(api.clone());
    h.engine.apply(&file(vec![instance("web-1", "i-1")]));
    run_for(S(120)).await;
    for _ in 0..2 {
        api.set_status("i-1", VmStatus::Crashed);
        h.probes.set_down("10.0.0.1", true);
        run_for(S(8)).await;
        h.probes.set_down("10.0.0.1", false);
        run_for(S(40)).await;
    }
    // Within five minutes: two critical alerts (never deduplicated) and
    // two recoveries.
    assert_eq!(h.inbox.titled("VM web-1 is CRASHED").len(), 2);
    assert_eq!(h.inbox.titled("recovered after").len(), 2);
    assert_eq!(api.calls_to("start", "i-1").len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_start_interrupted_by_a_crash_is_issued_again() {
    let api = ScriptedApi::default();
    api.add("i-1", VmStatus::Stopped, None);
    let h = harness(api.clone());
    h.engine.apply(&file(vec![instance("web-1", "i-1")]));
    run_for(S(4)).await;
    assert_eq!(api.calls_to("start", "i-1").len(), 1);
    assert_eq!(api.status("i-1"), Some(VmStatus::Provisioning));
    // Seen PROVISIONING (polled fast), then it crashes: the scripted
    // operation never finishes, yet the watchdog starts it again.
    run_for(S(5)).await;
    let crashed_at = Instant::now();
    api.set_status("i-1", VmStatus::Crashed);
    run_for(S(8)).await;
    let crashed = h.inbox.titled("VM web-1 is CRASHED");
    assert_eq!(crashed.len(), 1);
    assert!(crashed[0].at - crashed_at <= Duration::from_millis(5_600));
    assert_eq!(api.calls_to("start", "i-1").len(), 2);
    run_for(S(40)).await;
    assert_eq!(api.status("i-1"), Some(VmStatus::Running));
    assert_eq!(h.inbox.titled("VM web-1 recovered after").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_closed_port_on_a_running_vm_backs_off_but_still_catches_a_stop() {
    let api = ScriptedApi::default();
    api.add("i-1", VmStatus::Running, Some("10.0.0.1"));
    let h = harness(api.clone());
    h.engine.apply(&file(vec![instance("web-1", "i-1")]));
    run_for(S(300)).await;
    // sshd dies; the VM keeps running.
    let before = api.calls_to("get", "i-1").len();
    h.probes.set_down("10.0.0.1", true);
    run_for(S(120)).await;
    let checks = api.calls_to("get", "i-1").len() - before;
    // Probe-triggered checks back off (10, 20, 40, 60 s) instead of one per
    // 5 s probe (24 in 120 s); two routine 60 s checks come on top.
    assert!((4..=8).contains(&checks), "{checks} checks in 120 s");
    assert!(h.inbox.all().is_empty());

    // Now it stops: seen at the next allowed check, not only at a routine one.
    h.probes.set_down("10.0.0.1", false);
    run_for(S(10)).await;
    h.probes.set_down("10.0.0.1", true);
    run_for(S(15)).await;
    let stopped_at = Instant::now();
    api.set_status("i-1", VmStatus::Stopped);
    run_for(S(30)).await;
    let critical = h.inbox.with_priority(Priority::Critical);
    assert_eq!(critical.len(), 1);
    // 15 s into the suspicion the backoff is at most 20 s: the stop is seen
    // within that plus one probe period, not at the routine 60 s check.
    let reaction = critical[0].at - stopped_at;
    assert!(reaction <= Duration::from_millis(26_500), "{reaction:?}");
}

#[tokio::test(start_paused = true)]
async fn a_failed_start_operation_warns_and_an_aborted_one_does_not() {
    for (code, warned) in [(8, true), (10, false)] {
        let api = ScriptedApi::default();
        api.add("i-1", VmStatus::Stopped, None);
        {
            let mut s = api.inner.lock();
            s.start_sticks = true;
            s.op_error = Some((code, "nope".into()));
        }
        let h = harness(api.clone());
        h.engine.apply(&file(vec![instance("web-1", "i-1")]));
        run_for(S(60)).await;
        let warnings = h.inbox.titled("Could not start VM web-1");
        assert_eq!(
            !warnings.is_empty(),
            warned,
            "code {code}: {:?}",
            h.inbox.all()
        );
        // Either way the start is issued again after the failed operation.
        assert!(api.calls_to("start", "i-1").len() >= 3, "code {code}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_vm_never_delays_another() {
    let api = ScriptedApi::default();
    api.add("i-slow", VmStatus::Running, None);
    api.add("i-1", VmStatus::Running, Some("10.0.0.1"));
    api.inner
        .lock()
        .delays
        .insert("i-slow".into(), Duration::from_secs(25));
    let h = harness(api.clone());
    h.engine.apply(&file(vec![
        instance("slow", "i-slow"),
        instance("web-1", "i-1"),
    ]));
    run_for(S(100)).await;
    let stopped_at = Instant::now();
    api.set_status("i-1", VmStatus::Stopped);
    h.probes.set_down("10.0.0.1", true);
    run_for(S(8)).await;
    let critical = h.inbox.with_priority(Priority::Critical);
    assert_eq!(critical.len(), 1);
    assert!(critical[0].at - stopped_at <= Duration::from_millis(5_600));
}

#[tokio::test(start_paused = true)]
async fn reloads_add_remove_and_reconfigure_without_leaking_tasks() {
    let api = ScriptedApi::default();
    for i in 0..4 {
        api.add(&format!("i-{i}"), VmStatus::Running, None);
    }
    let h = harness(api.clone());
    let first = file(vec![
        instance("a", "i-0"),
        instance("b", "i-1"),
        instance("c", "i-2"),
    ]);
    let report = h.engine.apply(&first);
    assert_eq!(report.added, ["a", "b", "c"]);
    run_for(S(10)).await;
    assert_eq!(h.engine.live_tasks(), 3);
    assert!(h.engine.apply(&first).is_empty(), "unchanged: untouched");

    let mut b = instance("b", "i-1");
    b.ssh_port = 2222;
    let second = file(vec![b, instance("c", "i-3"), instance("d", "i-0")]);
    let report = h.engine.apply(&second);
    assert_eq!(report.added, ["d"]);
    assert_eq!(report.removed, ["a"]);
    let mut reconfigured = report.reconfigured.clone();
    reconfigured.sort();
    assert_eq!(reconfigured, ["b", "c"]);
    run_for(S(10)).await;
    assert_eq!(h.engine.vm_names(), ["b", "c", "d"]);
    assert_eq!(h.engine.live_tasks(), 3, "no task leaked");

    // Many reloads in a row leave exactly one task per VM.
    for round in 0..50 {
        let n = 1 + round % 4;
        let vms: Vec<VmSpec> = (0..n)
            .map(|i| instance(&format!("vm-{i}"), &format!("i-{}", (i + round) % 4)))
            .collect();
        h.engine.apply(&file(vms));
        run_for(Duration::from_millis(300)).await;
        assert_eq!(
            h.engine.live_tasks(),
            h.engine.vms_monitored(),
            "round {round}"
        );
    }
    h.engine.apply(&VmsFile::default());
    run_for(S(1)).await;
    assert_eq!((h.engine.vms_monitored(), h.engine.live_tasks()), (0, 0));
    assert!(h.engine.shutdown(S(1)).await);
}

#[tokio::test(start_paused = true)]
async fn a_folder_is_refreshed_by_one_paginated_listing_per_poll() {
    let api = ScriptedApi::default();
    let mut vms = Vec::new();
    let mut ids = Vec::new();
    for i in 0..50 {
        let id = format!("i-{i:02}");
        api.add(&id, VmStatus::Running, Some(&format!("10.0.1.{i}")));
        vms.push(instance(&format!("vm-{i:02}"), &id));
        ids.push(id);
    }
    {
        let mut s = api.inner.lock();
        s.folders.insert("b1g-folder".into(), ids);
        s.page_size = 20;
    }
    // A VM outside the folder is read on its own.
    api.add("i-other", VmStatus::Running, None);
    vms.push(VmSpec::new(
        "other",
        VmSource::Instance {
            id: "i-other".into(),
        },
    ));
    let h = harness(api.clone());
    h.engine.apply(&VmsFile {
        folder_id: Some("b1g-folder".into()),
        vms,
    });
    run_for(S(600)).await;
    let lists = api.count("list");
    let gets = api.count("get");
    assert_eq!(lists % 3, 0, "every listing reads all three pages");
    let listings = lists / 3;
    let checks: u64 = (0..50)
        .map(|i| h.metrics.checks(&format!("vm-{i:02}"), "RUNNING"))
        .sum();
    assert!(checks >= 50 * 10, "{checks} checks");
    assert!(
        (listings as u64) * 5 < checks,
        "{listings} listings for {checks} checks"
    );
    assert_eq!(
        gets,
        api.calls_to("get", "i-other").len(),
        "only the VM outside the folder is read alone"
    );

    // A failed probe forces a fresh listing: the stop is seen at once.
    let stopped_at = Instant::now();
    api.set_status("i-07", VmStatus::Stopped);
    h.probes.set_down("10.0.1.7", true);
    run_for(S(8)).await;
    let critical = h.inbox.titled("VM vm-07 is STOPPED");
    assert_eq!(critical.len(), 1, "{:?}", h.inbox.all());
    assert!(critical[0].at - stopped_at <= Duration::from_millis(5_600));
}
