//! Failures of real (fake-vmm) processes and what the supervisor does.

mod support;

use std::time::Duration;

use support::*;
use vm_supervisor::supervisor::VmState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_is_seen_at_once_and_recovered() {
    let lab = Lab::new();
    let vms = lab.write_config(&[lab.vm_yaml("vm-1", &[], "")]);
    let run = start(settings(&lab), vms).await;
    let s = &run.supervisor;
    let first = wait_healthy(s, "vm-1", None).await;
    // The start calls ran: the fake reports InstanceStart's state.
    let (status, body) = vm_call(&lab.socket("vm-1"), "GET", "/", "").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"state\":\"Running\""), "{body}");

    sigkill(first.pid.unwrap());
    let second = wait_healthy(s, "vm-1", first.pid).await;
    assert_eq!(second.restarts, 1);
    assert_eq!(second.last_reason.as_deref(), Some("process_dead"));
    assert_eq!(run.metrics.orphaned_count("process_dead"), 1);
    assert_eq!(run.metrics.success_count(), 1);
    let attempts = s.attempts("vm-1").await.unwrap();
    assert_eq!(attempts[0].reason, "process_dead");
    assert_eq!(attempts[0].outcome.as_deref(), Some("success"));
    assert_eq!(attempts[0].exit_status.as_deref(), Some("signal 9"));
    assert_eq!(attempts[1].reason, "initial_start");
    assert_eq!(
        lab.processes(),
        vec![second.pid.unwrap()],
        "exactly one VM process"
    );
    s.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_socket_is_socket_unreachable_and_recovered() {
    let lab = Lab::new();
    let vms = lab.write_config(&[lab.vm_yaml("vm-1", &[], "")]);
    let run = start(settings(&lab), vms).await;
    let s = &run.supervisor;
    let first = wait_healthy(s, "vm-1", None).await;
    fault(&lab.socket("vm-1"), r#"{"fault":"delete_socket"}"#).await;
    let second = wait_healthy(s, "vm-1", first.pid).await;
    assert_eq!(second.last_reason.as_deref(), Some("socket_unreachable"));
    assert_eq!(run.metrics.orphaned_count("socket_unreachable"), 1);
    // The old process (alive, hung on nothing) was stopped, not left over.
    assert_eq!(lab.processes(), vec![second.pid.unwrap()]);
    s.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_api_is_health_check_failed_and_recovered() {
    let lab = Lab::new();
    let vms = lab.write_config(&[lab.vm_yaml("vm-1", &[], "")]);
    let run = start(settings(&lab), vms).await;
    let s = &run.supervisor;
    let first = wait_healthy(s, "vm-1", None).await;
    fault(&lab.socket("vm-1"), r#"{"fault":"hang"}"#).await;
    let second = wait_healthy(s, "vm-1", first.pid).await;
    assert_eq!(second.last_reason.as_deref(), Some("health_check_failed"));
    assert_eq!(
        lab.processes(),
        vec![second.pid.unwrap()],
        "the hung process was stopped"
    );
    s.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_is_health_check_failed() {
    let lab = Lab::new();
    let vms = lab.write_config(&[lab.vm_yaml("vm-1", &[], "")]);
    let run = start(settings(&lab), vms).await;
    let s = &run.supervisor;
    let first = wait_healthy(s, "vm-1", None).await;
    fault(&lab.socket("vm-1"), r#"{"fault":"error"}"#).await;
    let second = wait_healthy(s, "vm-1", first.pid).await;
    assert_eq!(second.last_reason.as_deref(), Some("health_check_failed"));
    assert_eq!(run.metrics.orphaned_count("health_check_failed"), 1);
    s.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_healthy_vm_is_never_restarted() {
    let lab = Lab::new();
    // Boots in 1 s (within the 5 s start grace), then answers in 250 ms
    // (within its 600 ms check timeout).
    let vms = lab.write_config(&[lab.vm_yaml(
        "vm-1",
        &["--start-delay", "1s"],
        "    health_interval: 600ms\n    health_timeout: 600ms\n",
    )]);
    let run = start(settings(&lab), vms).await;
    let s = &run.supervisor;
    let first = wait_healthy(s, "vm-1", None).await;
    fault(&lab.socket("vm-1"), r#"{"fault":"slow","ms":250}"#).await;
    // About 5 checks, each slow.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let now = s.get("vm-1").unwrap();
    assert_eq!(
        (now.pid, now.restarts, now.state),
        (first.pid, 0, VmState::Running)
    );
    assert!(now.healthy);
    assert_eq!(
        s.attempts("vm-1").await.unwrap().len(),
        1,
        "only the initial start"
    );
    s.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_that_mean_stop_are_not_restarted() {
    let lab = Lab::new();
    let vms = lab.write_config(&[
        lab.vm_yaml("quits", &[], "    no_restart_exit_codes: [0, 7]\n"),
        lab.vm_yaml("fails", &[], "    no_restart_exit_codes: [0, 7]\n"),
    ]);
    let run = start(settings(&lab), vms).await;
    let s = &run.supervisor;
    wait_healthy(s, "quits", None).await;
    let fails = wait_healthy(s, "fails", None).await;
    fault(&lab.socket("quits"), r#"{"fault":"exit","code":7}"#).await;
    fault(&lab.socket("fails"), r#"{"fault":"exit","code":3}"#).await;
    wait_healthy(s, "fails", fails.pid).await;
    let quits = wait_for("quits stopped", || {
        s.get("quits").filter(|v| v.state == VmState::Stopped)
    })
    .await;
    assert_eq!(quits.pid, None);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let quits = s.get("quits").unwrap();
    assert_eq!(
        (quits.state, quits.pid, quits.restarts),
        (VmState::Stopped, None, 0)
    );
    // An operator can still recover it.
    s.recover("quits").unwrap();
    wait_healthy(s, "quits", None).await;
    s.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_attempts_needs_intervention_then_manual_recovery_acts() {
    let lab = Lab::new();
    // Exits 1 s after every start: each recovery "succeeds", the VM dies
    // again within the stable period.
    let vms =
        lab.write_config(&[lab.vm_yaml("vm-1", &["--exit-after", "1s", "--exit-code", "5"], "")]);
    let mut settings = settings(&lab);
    settings.late_recovery_interval = None;
    let run = start(settings, vms).await;
    let s = &run.supervisor;
    let stuck = wait_for("needs_intervention", || {
        s.get("vm-1")
            .filter(|v| v.state == VmState::NeedsIntervention)
    })
    .await;
    assert_eq!(
        stuck.restarts, 3,
        "MAX_RETRIES = 3 recoveries, then stop acting"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(s.get("vm-1").unwrap().state, VmState::NeedsIntervention);
    assert!(lab.processes().is_empty());
    s.recover("vm-1").unwrap();
    wait_for("manual recovery", || {
        s.get("vm-1").filter(|v| v.restarts == 4)
    })
    .await;
    s.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_failing_to_start_needs_intervention_and_late_recovery_brings_it_back() {
    let lab = Lab::new();
    let marker = lab.path().join("marker");
    // Exits 1 at once until the marker exists, then is a normal fake VM.
    let script = format!(
        "test -f {} && exec {FAKE_VMM} --api-sock {{socket}} --id {{id}}; exit 1",
        marker.display()
    );
    let text = format!(
        "vms:\n  - id: vm-1\n    command: /bin/sh\n    args: ['-c', {script:?}]\n    socket: '{}/{{id}}.sock'\n",
        lab.path().display()
    );
    std::fs::write(lab.config_path(), &text).unwrap();
    let vms = vm_supervisor::spec::parse(&text, &lab.config_path())
        .unwrap()
        .vms;
    let mut settings = settings(&lab);
    settings.late_recovery_interval = Some(Duration::from_secs(1));
    let run = start(settings, vms).await;
    let s = &run.supervisor;
    wait_for("needs_intervention", || {
        s.get("vm-1")
            .filter(|v| v.state == VmState::NeedsIntervention)
    })
    .await;
    // The first late recovery is due 1 s later and may have begun on a
    // loaded machine: only the automatic attempts count here.
    let attempts: Vec<_> = s
        .attempts("vm-1")
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.reason != "late_recovery")
        .collect();
    assert_eq!(
        attempts.len(),
        3,
        "MAX_RETRIES starts, then it stops acting"
    );
    assert!(
        attempts
            .iter()
            .all(|a| a.outcome.as_deref() == Some("failure")
                && a.error.as_deref().unwrap_or("").contains("exit code 1")),
        "{attempts:?}"
    );
    // A late recovery fails too while the cause remains...
    let deadline = tokio::time::Instant::now() + WAIT;
    while !s
        .attempts("vm-1")
        .await
        .unwrap()
        .iter()
        .any(|a| a.reason == "late_recovery" && a.outcome.as_deref() == Some("failure"))
    {
        assert!(tokio::time::Instant::now() < deadline, "no late recovery");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The journal row is closed first, the state follows (a flake came from
    // asserting the state at once, in the moment between the two).
    wait_for("needs_intervention again", || {
        s.get("vm-1")
            .filter(|v| v.state == VmState::NeedsIntervention)
    })
    .await;
    // ...and succeeds once it is gone.
    std::fs::write(&marker, "").unwrap();
    let v = wait_healthy(s, "vm-1", None).await;
    assert_eq!(v.last_reason.as_deref(), Some("late_recovery"));
    s.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_healthy_again_before_its_backoff_ends_is_not_restarted() {
    let lab = Lab::new();
    // A long backoff before a second attempt leaves time to recover.
    let vms = lab.write_config(&[lab.vm_yaml(
        "vm-1",
        &[],
        "    retry_interval: 10s\n    max_retry_interval: 10s\n",
    )]);
    let run = start(settings(&lab), vms).await;
    let s = &run.supervisor;
    let first = wait_healthy(s, "vm-1", None).await;
    // A first recovery (immediate) puts it within a run of failures...
    sigkill(first.pid.unwrap());
    let second = wait_healthy(s, "vm-1", first.pid).await;
    // ...so the next failure waits 10 s before recovering.
    fault(&lab.socket("vm-1"), r#"{"fault":"error"}"#).await;
    wait_for("unhealthy", || {
        s.get("vm-1").filter(|v| v.state == VmState::Unhealthy)
    })
    .await;
    fault(&lab.socket("vm-1"), r#"{"fault":"none"}"#).await;
    // RECOVERY_THRESHOLD (2) good checks make it healthy: no restart.
    let back = wait_healthy(s, "vm-1", None).await;
    assert_eq!((back.pid, back.restarts), (second.pid, 1));
    assert!(s.health("vm-1").unwrap().consecutive_successes >= 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let still = s.get("vm-1").unwrap();
    assert_eq!(
        (still.pid, still.restarts, still.state),
        (second.pid, 1, VmState::Running)
    );
    s.shutdown(Duration::from_secs(5)).await;
}
