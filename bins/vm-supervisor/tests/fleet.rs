//! The fleet short-circuit: when more than MAX_UNHEALTHY_PERCENT of the
//! VMs are unhealthy, recovery stops (a host problem, not four VM
//! problems) and resumes once the share falls.

mod support;

use std::time::Duration;

use keel_health::HealthMetrics;
use keel_notify::{Notifier, WebhookSink};
use keel_testkit::fakes::webhook::FakeWebhook;
use support::*;
use vm_supervisor::alerts::Alerts;
use vm_supervisor::metrics::Metrics;
use vm_supervisor::supervisor::{Options, Supervisor, VmState};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_unhealthy_vms_stop_recovery_until_the_share_falls() {
    let lab = Lab::new();
    // A 1 s boot makes each recovery last long enough for the others'
    // failures to arrive while it runs.
    let ids = ["a", "b", "c", "d"];
    let vms = lab.write_config(
        &ids.iter()
            .map(|id| lab.vm_yaml(id, &["--start-delay", "1s"], ""))
            .collect::<Vec<_>>(),
    );
    let hook = FakeWebhook::start().await;
    let notifier = Notifier::builder()
        .sink(WebhookSink::builder(hook.url()).build().unwrap())
        .build()
        .unwrap();
    let supervisor = Supervisor::start(
        settings(&lab),
        vms,
        Metrics::default(),
        HealthMetrics::new(),
        Alerts::new(Some(notifier.clone())),
        Options::default(),
    )
    .await
    .unwrap();
    let s = &supervisor;
    let mut before = Vec::new();
    for id in ids {
        before.push(wait_healthy(s, id, None).await);
    }
    assert!(!s.short_circuited());

    // Three of four die at once: 75 % > 30 %.
    for v in &before[..3] {
        sigkill(v.pid.unwrap());
    }
    wait_for("short-circuit", || s.short_circuited().then_some(())).await;
    // Well past the time three recoveries take (1 s boot each, 4 at once
    // allowed): at most the one that started before the gate closed ran.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(s.short_circuited());
    let waiting: Vec<_> = ids[..3]
        .iter()
        .filter(|id| {
            let v = s.get(id).unwrap();
            v.state == VmState::Unhealthy && v.pid.is_none()
        })
        .map(|id| (*id).to_owned())
        .collect();
    assert!(waiting.len() >= 2, "recovery held back: {:?}", s.list());
    assert_eq!(
        s.get("d").unwrap().pid,
        before[3].pid,
        "the healthy VM is untouched"
    );

    // An operator recovers all but one (a manual recovery ignores the
    // gate): 1 of 4 left is under the threshold, and the last one recovers
    // by itself.
    let (last, by_hand) = waiting.split_last().unwrap();
    for id in by_hand {
        s.recover(id).unwrap();
    }
    for id in by_hand {
        wait_healthy(s, id, None).await;
    }
    let last = wait_healthy(s, last, None).await;
    assert_eq!(
        last.restarts, 1,
        "recovered automatically once the share fell"
    );
    for id in ids {
        wait_healthy(s, id, None).await;
    }
    assert!(!s.short_circuited());
    // One "host problem" page for the episode: VMs between two attempts
    // still count as unhealthy, so the gate does not flap.
    let problems = hook
        .messages()
        .iter()
        .filter(|m| m["key"] == "host:problem")
        .count();
    assert_eq!(problems, 1, "{:?}", hook.messages());
    s.shutdown(Duration::from_secs(5)).await;
    notifier.shutdown(Duration::from_secs(2)).await;
}
