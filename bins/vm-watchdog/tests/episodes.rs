//! Episodes, not windows, and the degraded-cloud mode, under paused time:
//! each warning cause opens an episode, its end sends a resolved notice (or
//! withdraws the warning still held in the debounce), a second episode is
//! never taken for a repeat of the first, and a VM whose port is down while
//! the API cannot confirm its status is alerted as unreachable within
//! seconds and started as soon as the API answers.

mod support;

use std::time::Duration;

use keel::breaker::State;
use keel_notify::Priority;
use tokio::time::Instant;
use vm_watchdog::VmStatus;

use support::{ScriptedApi, file, harness, instance, run_for};

const S: fn(u64) -> Duration = Duration::from_secs;

fn running_fleet(api: &ScriptedApi, n: usize) -> Vec<vm_watchdog::VmSpec> {
    (0..n)
        .map(|i| {
            let id = format!("i-{i}");
            api.add(&id, VmStatus::Running, Some(&format!("10.0.0.{i}")));
            instance(&format!("vm-{i}"), &id)
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_second_api_outage_is_a_new_episode_with_its_own_warning_and_resolution() {
    let api = ScriptedApi::default();
    let vms = running_fleet(&api, 20);
    let h = harness(api.clone());
    h.engine.apply(&file(vms));
    run_for(S(300)).await;
    for round in 1..=2 {
        api.set_fail(true);
        run_for(S(240)).await;
        assert_eq!(
            h.inbox.titled("Cloud API unavailable").len(),
            round,
            "{:?}",
            h.inbox.all()
        );
        api.set_fail(false);
        run_for(S(180)).await;
        assert_eq!(h.inbox.titled("Cloud API available again").len(), round);
        // The next outage starts 20 s after this one was reported over.
    }
    // "down" precedes "available again", each time (a breaker that
    // reopened after a failed half-open probe shows as "(×2)").
    let titles: Vec<String> = h
        .inbox
        .all()
        .into_iter()
        .map(|g| g.title)
        .filter(|t| t.contains("Cloud API"))
        .collect();
    assert_eq!(titles.len(), 4, "{titles:?}");
    for pair in titles.chunks(2) {
        assert!(
            pair[0].starts_with("Cloud API unavailable (compute)"),
            "{titles:?}"
        );
        assert_eq!(pair[1], "Cloud API available again (compute)", "{titles:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn an_outage_shorter_than_the_warning_debounce_is_withdrawn_not_resolved() {
    let api = ScriptedApi::default();
    let vms = running_fleet(&api, 20);
    let h = harness(api.clone());
    h.engine.apply(&file(vms));
    run_for(S(300)).await;
    // Every VM's port fails too, so checks come every few seconds and the
    // breaker opens quickly.
    for i in 0..20 {
        h.probes.set_down(&format!("10.0.0.{i}"), true);
    }
    api.set_fail(true);
    let opened = Instant::now();
    while !h.engine.api().any_breaker_open() {
        run_for(Duration::from_millis(100)).await;
        assert!(opened.elapsed() < S(20), "the breaker never opened");
    }
    for i in 0..20 {
        h.probes.set_down(&format!("10.0.0.{i}"), false);
    }
    api.set_fail(false);
    // The breaker closes after its 10 s open time and a good probe, before
    // the 30 s warning debounce ends: the held warning is withdrawn.
    run_for(S(120)).await;
    assert!(!h.engine.api().any_breaker_open());
    assert!(
        h.inbox.titled("Cloud API").is_empty(),
        "{:?}",
        h.inbox.all()
    );
}

#[tokio::test(start_paused = true)]
async fn a_stopped_vm_is_alerted_unreachable_while_the_api_is_down_and_started_when_it_answers() {
    let api = ScriptedApi::default();
    let vms = running_fleet(&api, 5);
    let h = harness(api.clone());
    h.engine.apply(&file(vms));
    run_for(S(300)).await;
    api.set_fail(true);
    run_for(S(60)).await;
    // Open, or half-open between two open periods.
    assert!(
        h.engine
            .api()
            .breakers()
            .breakers()
            .iter()
            .any(|b| b.state() != State::Closed)
    );
    let down_at = Instant::now();
    api.set_status("i-3", VmStatus::Stopped);
    h.probes.set_down("10.0.0.3", true);
    run_for(S(20)).await;
    let unreachable = h.inbox.titled("VM vm-3 unreachable");
    assert_eq!(unreachable.len(), 1, "{:?}", h.inbox.all());
    assert_eq!(
        unreachable[0].title,
        "VM vm-3 unreachable (API unavailable, cannot confirm status)"
    );
    assert_eq!(unreachable[0].priority, Priority::Critical);
    // Three failed probes: the first within 5 s ±10 %, then every 2.5 s
    // ±10 % while the API cannot confirm.
    let reaction = unreachable[0].at - down_at;
    assert!(reaction <= S(15), "{reaction:?}");
    assert_eq!(api.count("start"), 0, "nothing confirmed it is stopped");
    // The cached status is not presented as fresh.
    let health = h.engine.health();
    let vm3 = health["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "vm-3")
        .unwrap()
        .clone();
    assert_eq!(vm3["status_confirmed"], false, "{vm3}");

    let back = Instant::now();
    api.set_fail(false);
    run_for(S(60)).await;
    let starts = api.calls_to("start", "i-3");
    assert_eq!(starts.len(), 1);
    // Started once the breaker lets a read through: its open time (at most
    // 30 s after repeated openings), then the next fast poll.
    assert!(starts[0] - back <= S(36), "{:?}", starts[0] - back);
    assert_eq!(h.inbox.titled("VM vm-3 is STOPPED").len(), 1);
    assert_eq!(
        h.inbox
            .titled("VM vm-3: status confirmed by the API (STOPPED)")
            .len(),
        1,
        "{:?}",
        h.inbox.all()
    );
    assert_eq!(h.inbox.titled("unreachable").len(), 1, "alerted once");
}

#[tokio::test(start_paused = true)]
async fn a_stuck_transition_gets_a_resolved_notice_when_it_ends() {
    let api = ScriptedApi::default();
    api.add("i-s", VmStatus::Starting, None);
    let h = harness(api.clone());
    h.engine.apply(&file(vec![instance("slow", "i-s")]));
    run_for(S(350)).await;
    assert_eq!(h.inbox.titled("VM slow stuck in STARTING").len(), 1);
    api.set_status("i-s", VmStatus::Running);
    run_for(S(60)).await;
    let titles: Vec<String> = h.inbox.all().into_iter().map(|g| g.title).collect();
    assert_eq!(titles.len(), 2, "{titles:?}");
    assert!(titles[0].starts_with("VM slow stuck in STARTING for 5m"));
    assert_eq!(titles[1], "VM slow no longer stuck: now RUNNING");
}

#[tokio::test(start_paused = true)]
async fn health_is_degraded_while_alerts_cannot_be_delivered() {
    let api = ScriptedApi::default();
    let vms = running_fleet(&api, 1);
    let h = harness(api.clone());
    h.engine.apply(&file(vms));
    run_for(S(10)).await;
    assert_eq!(h.engine.health()["status"], "healthy");
    // A rejected token or chat, or Telegram down: its breaker opens.
    let breaker = h.notifier.breaker("inbox").unwrap();
    breaker.force_open();
    let health = h.engine.health();
    assert_eq!(health["status"], "degraded");
    assert_eq!(
        health["degraded_reasons"],
        serde_json::json!(["alerts_undeliverable"])
    );
    assert_eq!(metric(&h.metrics, "telegram_up"), "0");
    breaker.reset();
    assert_eq!(h.engine.health()["status"], "healthy");
    assert_eq!(metric(&h.metrics, "telegram_up"), "1");
}

#[tokio::test(start_paused = true)]
async fn health_is_degraded_while_vms_yaml_is_invalid() {
    let api = ScriptedApi::default();
    let vms = running_fleet(&api, 1);
    let h = harness(api.clone());
    h.engine.apply(&file(vms));
    h.engine.set_config_valid(false, None);
    let health = h.engine.health();
    assert_eq!(health["status"], "degraded");
    assert_eq!(
        health["degraded_reasons"],
        serde_json::json!(["config_invalid"])
    );
    assert_eq!(metric(&h.metrics, "config_valid"), "0");
    h.engine.set_config_valid(true, Some(1_700_000_000));
    assert_eq!(h.engine.health()["status"], "healthy");
    assert_eq!(
        metric(&h.metrics, "config_last_reload_timestamp_seconds"),
        "1700000000"
    );
}

fn metric(metrics: &vm_watchdog::Metrics, name: &str) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .to_owned()
}

#[tokio::test(start_paused = true)]
async fn a_vm_still_down_after_15_minutes_gets_a_reminder_with_the_attempts() {
    let api = ScriptedApi::default();
    api.add("i-1", VmStatus::Running, Some("10.0.0.1"));
    api.inner.lock().start_sticks = true;
    let h = harness(api.clone());
    h.engine.apply(&file(vec![instance("web-1", "i-1")]));
    run_for(S(120)).await;
    api.set_status("i-1", VmStatus::Stopped);
    h.probes.set_down("10.0.0.1", true);
    run_for(S(10)).await;
    assert_eq!(h.inbox.titled("VM web-1 is STOPPED").len(), 1);
    run_for(S(14 * 60)).await;
    assert!(
        h.inbox.titled("still STOPPED").is_empty(),
        "not before 15 min"
    );
    run_for(S(90)).await;
    let reminders = h.inbox.titled("VM web-1 still STOPPED after 15m");
    assert_eq!(reminders.len(), 1, "{:?}", h.inbox.all());
    assert_eq!(reminders[0].priority, Priority::Critical);
    let attempts = api.calls_to("start", "i-1").len();
    assert!(attempts >= 2, "{attempts}");
    assert!(
        reminders[0].title.ends_with("start attempts)"),
        "{}",
        reminders[0].title
    );
    // The next one a period later, not at every check.
    run_for(S(14 * 60)).await;
    assert_eq!(h.inbox.titled("still STOPPED").len(), 1);
    run_for(S(90)).await;
    assert_eq!(h.inbox.titled("still STOPPED").len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_flapping_vm_is_left_alone_for_the_cool_off_then_restarted() {
    let api = ScriptedApi::default();
    api.add("i-1", VmStatus::Running, Some("10.0.0.1"));
    let h = harness(api.clone());
    h.engine.apply(&file(vec![instance("web-1", "i-1")]));
    run_for(S(120)).await;
    // Six crashes two minutes apart: the sixth within 30 min is one over
    // the limit of 5 restarts.
    for _ in 0..6 {
        api.set_status("i-1", VmStatus::Crashed);
        h.probes.set_down("10.0.0.1", true);
        run_for(S(10)).await;
        h.probes.set_down("10.0.0.1", false);
        run_for(S(110)).await;
    }
    assert_eq!(api.calls_to("start", "i-1").len(), 5, "{:?}", h.inbox.all());
    let held = h
        .inbox
        .titled("VM web-1 needs intervention: down 6 times in 30m");
    assert_eq!(held.len(), 1, "{:?}", h.inbox.all());
    assert_eq!(held[0].priority, Priority::Critical);
    assert_eq!(h.engine.status_of("web-1"), Some(VmStatus::Crashed));
    // Left alone for the hour's cool-off, then started again.
    run_for(S(50 * 60)).await;
    assert_eq!(api.calls_to("start", "i-1").len(), 5);
    run_for(S(11 * 60)).await;
    assert_eq!(api.calls_to("start", "i-1").len(), 6);
    assert_eq!(
        h.inbox
            .titled("VM web-1: cool-off over, restarting it again")
            .len(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn telegram_failing_is_an_episode_reported_once_it_delivers_again() {
    let api = ScriptedApi::default();
    let vms = running_fleet(&api, 1);
    let h = harness(api.clone());
    h.engine.apply(&file(vms));
    let breaker = h.notifier.breaker("inbox").unwrap();
    breaker.force_open();
    assert!(!h.engine.watch_delivery());
    assert!(
        !h.engine.watch_delivery(),
        "one episode, however often checked"
    );
    run_for(S(60)).await;
    assert!(h.inbox.all().is_empty(), "nothing gets through meanwhile");
    breaker.reset();
    assert!(h.engine.watch_delivery());
    run_for(S(60)).await;
    let titles: Vec<String> = h.inbox.all().into_iter().map(|g| g.title).collect();
    assert_eq!(
        titles,
        [
            "Telegram was failing; alerts were delayed",
            "Telegram delivers again"
        ]
    );
}
