//! The supervisor's own restarts: the real binary killed with SIGKILL and
//! started again adopts every VM (none restarted or duplicated); a
//! recorded pid that now belongs to another process is neither adopted nor
//! signalled; the journal survives.

mod support;

use std::os::unix::process::CommandExt as _;
use std::process::Stdio;
use std::time::Duration;

use support::*;
use vm_supervisor::registry::Registry;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn_supervisor(lab: &Lab, port: u16) -> tokio::process::Child {
    tokio::process::Command::new(SUPERVISOR)
        .env_clear()
        .env("SUPERVISOR_CONFIG", lab.config_path())
        .env("DATABASE_URL", lab.db_url())
        .env("ADMIN_ADDR", format!("127.0.0.1:{port}"))
        .env("ADMIN_TOKEN", "sekret")
        .env("HEALTH_INTERVAL", "100ms")
        .env("HEALTH_TIMEOUT", "100ms")
        .env("RETRY_INTERVAL", "200ms")
        .env("MAX_RETRY_INTERVAL", "1s")
        .env("STOP_GRACE", "500ms")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("supervisor binary starts")
}

async fn vms(port: u16) -> Option<Vec<serde_json::Value>> {
    let r = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/vms"))
        .bearer_auth("sekret")
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    r.json().await.ok()
}

/// Waits until `/vms` lists `n` VMs, every one running and healthy;
/// returns their pids by id.
async fn all_healthy(port: u16, n: usize) -> Vec<(String, u64, u64)> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(list) = vms(port).await {
            let ok: Vec<_> = list
                .iter()
                .filter(|v| v["state"] == "running" && v["healthy"] == true)
                .map(|v| {
                    (
                        v["id"].as_str().unwrap().to_owned(),
                        v["pid"].as_u64().unwrap(),
                        v["restarts"].as_u64().unwrap(),
                    )
                })
                .collect();
            if ok.len() == n {
                return ok;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "VMs not all healthy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_supervisor_then_every_vm_is_adopted() {
    let lab = Lab::new();
    lab.write_config(&[
        lab.vm_yaml("a", &[], ""),
        lab.vm_yaml("b", &[], ""),
        lab.vm_yaml("c", &[], ""),
    ]);
    let port = free_port();
    let mut first = spawn_supervisor(&lab, port);
    let before = all_healthy(port, 3).await;
    let vm_pids = lab.processes();
    assert_eq!(vm_pids.len(), 3);

    first.start_kill().unwrap(); // SIGKILL
    first.wait().await.unwrap();
    // The VMs live on: their own process groups.
    assert_eq!(
        lab.processes(),
        vm_pids,
        "VMs survive the supervisor's SIGKILL"
    );

    let port = free_port();
    let mut second = spawn_supervisor(&lab, port);
    let after = all_healthy(port, 3).await;
    assert_eq!(after, before, "same pids, no restarts");
    // Some checks later: still nothing restarted or duplicated.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(all_healthy(port, 3).await, before);
    assert_eq!(lab.processes(), vm_pids, "no duplicate VM process");
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("vm_supervisor_vm_adopted_total 3"),
        "{metrics}"
    );
    // metald's names under the program prefix (the alert rules and the
    // dashboard in deploy/vm-supervisor read these).
    for name in [
        "vm_supervisor_vm_health_checks_total",
        "vm_supervisor_vm_health_check_failures_total",
        "vm_supervisor_vm_health_check_duration_seconds_bucket",
        "vm_supervisor_reliability_healthy_vms 3",
        "vm_supervisor_reliability_unhealthy_vms 0",
        "vm_supervisor_fleet_short_circuit 0",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }

    // An adopted VM's death is seen (no child exit: /proc) and recovered.
    sigkill(before[0].1 as u32);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = all_healthy(port, 3).await;
        if now
            .iter()
            .any(|v| v.0 == before[0].0 && v.1 != before[0].1 && v.2 == 1)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "adopted VM not recovered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "vm_supervisor_vm_orphaned_total{reason=\"process_dead\"} 1",
        "vm_supervisor_vm_recovery_attempts_total{outcome=\"success\"} 1",
        "vm_supervisor_vm_recovery_success_total 1",
        "vm_supervisor_vm_recovery_duration_seconds_count{outcome=\"success\"} 1",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }

    // SIGTERM: exit 0, VMs left running.
    let pid = nix::unistd::Pid::from_raw(second.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(12), second.wait())
        .await
        .expect("stops within the drain bound")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(lab.processes().len(), 3, "SIGTERM leaves the VMs running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recycled_pid_is_not_adopted_and_not_signalled() {
    let lab = Lab::new();
    let vms = lab.write_config(&[lab.vm_yaml("vm-1", &[], "")]);
    // An unrelated process holds the pid the registry recorded, with
    // another start time: as if the VM died and its pid was reused.
    let mut unrelated = tokio::process::Command::new("sleep")
        .arg("60")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = unrelated.id().unwrap();
    let (_, real_start) = vm_supervisor::process::stat(pid).unwrap();
    let registry = Registry::open(&lab.db_url(), 10).await.unwrap();
    registry.upsert(&vms[0], "file").await.unwrap();
    registry
        .set_process(
            "vm-1",
            Some((pid, real_start.saturating_sub(100), &vms[0].command_line())),
        )
        .await
        .unwrap();
    registry.close().await;

    let run = start(settings(&lab), vms).await;
    let s = &run.supervisor;
    let view = wait_healthy(s, "vm-1", Some(pid)).await;
    assert_ne!(view.pid, Some(pid));
    assert_eq!(view.last_reason.as_deref(), Some("process_mismatch"));
    assert_eq!(run.metrics.orphaned_count("process_mismatch"), 1);
    assert!(
        unrelated.try_wait().unwrap().is_none(),
        "the unrelated process was not signalled"
    );
    assert_eq!(vm_supervisor::process::stat(pid).unwrap().1, real_start);
    s.shutdown(Duration::from_secs(5)).await;
    unrelated.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_and_restarts_survive_a_supervisor_restart() {
    let lab = Lab::new();
    journal_and_restarts_survive_a_restart(&lab, settings(&lab)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_registry_survives_a_supervisor_restart_too() {
    let lab = Lab::new();
    let schema = keel_testkit::services::PgSchema::new().await;
    let mut settings = settings(&lab);
    settings.database_url = schema.url().to_owned();
    journal_and_restarts_survive_a_restart(&lab, settings).await;
    schema.cleanup().await.unwrap();
}

async fn journal_and_restarts_survive_a_restart(
    lab: &Lab,
    settings: vm_supervisor::config::Settings,
) {
    let vms = lab.write_config(&[lab.vm_yaml("vm-1", &[], "")]);
    let run = start(settings.clone(), vms.clone()).await;
    let first = wait_healthy(&run.supervisor, "vm-1", None).await;
    sigkill(first.pid.unwrap());
    let second = wait_healthy(&run.supervisor, "vm-1", first.pid).await;
    assert!(run.supervisor.shutdown(Duration::from_secs(5)).await);
    assert_eq!(lab.processes(), vec![second.pid.unwrap()], "left running");

    let run = start(settings, vms).await;
    let adopted = wait_healthy(&run.supervisor, "vm-1", None).await;
    assert_eq!(adopted.pid, second.pid, "adopted, not restarted");
    assert_eq!(adopted.restarts, 1);
    assert_eq!(adopted.last_reason.as_deref(), Some("process_dead"));
    let attempts = run.supervisor.attempts("vm-1").await.unwrap();
    let reasons: Vec<_> = attempts.iter().map(|a| a.reason.as_str()).collect();
    assert_eq!(reasons, ["process_dead", "initial_start"]);
    assert_eq!(attempts[0].exit_status.as_deref(), Some("signal 9"));
    run.supervisor.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_vms_exit_is_seen_at_once_not_at_the_next_check() {
    let lab = Lab::new();
    let vms = lab.write_config(&[lab.vm_yaml("vm-1", &[], "")]);
    let run = start(settings(&lab), vms.clone()).await;
    let first = wait_healthy(&run.supervisor, "vm-1", None).await;
    assert!(run.supervisor.shutdown(Duration::from_secs(5)).await);

    // Checks once a minute, and a /proc fallback as slow: only the pidfd
    // can tell of the exit within seconds.
    let mut slow = settings(&lab);
    slow.timings.health_interval = Duration::from_secs(60);
    slow.timings.health_timeout = Duration::from_secs(5);
    let metrics = vm_supervisor::metrics::Metrics::default();
    let supervisor = vm_supervisor::supervisor::Supervisor::start(
        slow,
        vms,
        metrics.clone(),
        keel_health::HealthMetrics::new(),
        vm_supervisor::alerts::Alerts::new(None),
        vm_supervisor::supervisor::Options {
            seed: Some(7),
            adopted_poll: Some(Duration::from_secs(60)),
        },
    )
    .await
    .unwrap();
    let adopted = wait_healthy(&supervisor, "vm-1", None).await;
    assert_eq!(adopted.pid, first.pid, "adopted");
    let killed = tokio::time::Instant::now();
    sigkill(first.pid.unwrap());
    let back = wait_healthy(&supervisor, "vm-1", first.pid).await;
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "exit seen and recovered in {took:?}, the next check was 60 s away"
    );
    assert_eq!(back.last_reason.as_deref(), Some("process_dead"));
    assert_eq!(metrics.orphaned_count("process_dead"), 1);
    let attempts = supervisor.attempts("vm-1").await.unwrap();
    assert_eq!(attempts[0].reason, "process_dead");
    assert_eq!(lab.processes(), vec![back.pid.unwrap()]);
    supervisor.shutdown(Duration::from_secs(5)).await;
}

/// Starts `spec`'s exact command line by hand, outside any supervisor (a
/// VM left by an earlier installation, or started by an operator).
fn start_by_hand(spec: &vm_supervisor::spec::VmSpec) -> u32 {
    let line = spec.command_line();
    let child = std::process::Command::new(&line[0])
        .args(&line[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("fake-vmm starts");
    reaped(child)
}

/// A thread reaps `child` when it exits (it is this test process's child,
/// not a supervisor's); returns its pid.
fn reaped(mut child: std::process::Child) -> u32 {
    let pid = child.id();
    std::thread::spawn(move || child.wait());
    pid
}

/// `UNKNOWN_PROCESSES=report` (the default): a VM-looking process the
/// registry does not know is listed and counted, and never signalled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_vm_process_is_reported_and_left_alone() {
    let lab = Lab::new();
    let vms = lab.write_config(&[lab.vm_yaml("vm-a", &[], ""), lab.vm_yaml("vm-b", &[], "")]);
    // Same program, another lab's socket: looks like a VM, matches none.
    let other = tempfile::tempdir().unwrap();
    let foreign = std::process::Command::new(FAKE_VMM)
        .args(["--api-sock"])
        .arg(other.path().join("x.sock"))
        .args(["--id", "stranger"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map(reaped)
        .unwrap();
    let twin = start_by_hand(&vms[0]);
    wait_for("the hand-started process's socket", || {
        lab.socket("vm-a").exists().then_some(())
    })
    .await;
    let r = start(settings(&lab), vms).await;
    let s = &r.supervisor;
    let unknown = s.status().unknown_processes;
    let find = |pid: u32| unknown.iter().find(|u| u.pid == pid).cloned();
    assert_eq!(
        find(twin).and_then(|u| u.matches_vm),
        Some("vm-a".to_owned()),
        "{unknown:?}"
    );
    assert_eq!(
        find(foreign).map(|u| u.matches_vm),
        Some(None),
        "{unknown:?}"
    );
    wait_healthy(s, "vm-b", None).await;
    // Left alone: both still run while the supervisor runs its own vm-a.
    let own = wait_healthy(s, "vm-a", Some(twin)).await;
    assert_ne!(own.pid, Some(twin));
    for pid in [twin, foreign] {
        let alive = vm_supervisor::process::stat(pid).is_some_and(|(st, _)| st != 'Z');
        assert!(alive, "{pid} was signalled");
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(foreign as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    s.shutdown(Duration::from_secs(5)).await;
}

/// `UNKNOWN_PROCESSES=adopt`: a process with a registered VM's whole
/// command line, that VM having no live process, becomes that VM's: no
/// second process, no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_adopt_a_process_with_a_vms_command_line_becomes_that_vm() {
    let lab = Lab::new();
    let vms = lab.write_config(&[lab.vm_yaml("vm-a", &[], "")]);
    let twin = start_by_hand(&vms[0]);
    wait_for("the hand-started process's socket", || {
        lab.socket("vm-a").exists().then_some(())
    })
    .await;
    let mut settings = settings(&lab);
    settings.unknown_processes = vm_supervisor::config::UnknownProcesses::Adopt;
    let r = start(settings, vms).await;
    let s = &r.supervisor;
    let view = wait_healthy(s, "vm-a", None).await;
    assert_eq!(view.pid, Some(twin), "the running process was adopted");
    assert_eq!(view.restarts, 0);
    // (Other tests' fake VMs run beside this one and are reported: only
    // this lab's count.)
    let lab_dir = lab.path().to_string_lossy().into_owned();
    let ours: Vec<_> = s
        .status()
        .unknown_processes
        .into_iter()
        .filter(|u| u.cmdline.iter().any(|a| a.contains(&lab_dir)))
        .collect();
    assert!(ours.is_empty(), "{ours:?}");
    assert_eq!(lab.processes(), vec![twin], "no second process");
    s.shutdown(Duration::from_secs(5)).await;
}

/// pid and start time match but the command line is not the one recorded
/// (the process exec'd another program): not adopted, not signalled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_with_another_command_line_is_not_adopted() {
    let lab = Lab::new();
    let vms = lab.write_config(&[lab.vm_yaml("vm-1", &[], "")]);
    let mut other = tokio::process::Command::new("sleep")
        .arg("60")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = other.id().unwrap();
    let (_, start_time) = vm_supervisor::process::stat(pid).unwrap();
    let registry = Registry::open(&lab.db_url(), 10).await.unwrap();
    registry.upsert(&vms[0], "file").await.unwrap();
    registry
        .set_process("vm-1", Some((pid, start_time, &vms[0].command_line())))
        .await
        .unwrap();
    registry.close().await;

    let run = start(settings(&lab), vms).await;
    let s = &run.supervisor;
    let view = wait_healthy(s, "vm-1", Some(pid)).await;
    assert_ne!(view.pid, Some(pid));
    assert_eq!(view.last_reason.as_deref(), Some("process_mismatch"));
    assert!(
        other.try_wait().unwrap().is_none(),
        "the other process was not signalled"
    );
    s.shutdown(Duration::from_secs(5)).await;
    other.kill().await.unwrap();
}
