//! Reloading SUPERVISOR_CONFIG (SIGHUP, `POST /reload`): new VMs start,
//! removed ones are stopped and forgotten, changed ones get their spec at
//! their next recovery; an invalid file is refused and the old one runs.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::*;

fn environ(pid: u32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default())
        .replace('\0', " ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_removes_and_updates_vms() {
    let lab = Lab::new();
    let vms = lab.write_config(&[lab.vm_yaml("a", &[], ""), lab.vm_yaml("b", &[], "")]);
    let run = start(settings(&lab), vms).await;
    let s = &run.supervisor;
    let a = wait_healthy(s, "a", None).await;
    let b = wait_healthy(s, "b", None).await;

    lab.write_config(&[
        lab.vm_yaml("b", &[], "    env: {MARK: two}\n"),
        lab.vm_yaml("c", &[], ""),
    ]);
    let report = s.reload().await.unwrap();
    assert_eq!(report.added, ["c"]);
    assert_eq!(report.changed, ["b"]);
    assert_eq!(report.removed, ["a"]);
    assert!(s.get("a").is_none(), "deregistered");
    assert!(
        !lab.processes().contains(&a.pid.unwrap()),
        "a removed VM's process is stopped"
    );
    assert!(s.attempts("a").await.unwrap().is_empty(), "journal gone");
    wait_healthy(s, "c", None).await;
    // A changed VM runs on; its new spec is used at its next recovery.
    let still = s.get("b").unwrap();
    assert_eq!((still.pid, still.restarts), (b.pid, 0));
    assert!(!environ(b.pid.unwrap()).contains("MARK=two"));
    sigkill(b.pid.unwrap());
    let b2 = wait_healthy(s, "b", b.pid).await;
    assert!(environ(b2.pid.unwrap()).contains("MARK=two"));
    // The same file again changes nothing.
    assert_eq!(s.reload().await.unwrap(), Default::default());
    assert_eq!(run.metrics.reload_count("success"), 2);
    assert_eq!(lab.processes().len(), 2);

    // An invalid file is refused; the old configuration keeps running.
    std::fs::write(
        lab.config_path(),
        "vms:\n  - {id: b, command: /bin/x, socket: /tmp/s}\n  - {id: 'c c', command: /bin/x, socket: /tmp/t}\n",
    )
    .unwrap();
    let err = s.reload().await.unwrap_err().to_string();
    assert!(
        err.contains("SUPERVISOR_CONFIG") && err.contains("vms[1].id"),
        "{err}"
    );
    let status = s.status();
    assert!(!status.config_ok);
    assert!(status.config_error.unwrap().contains("vms[1].id"));
    assert_eq!(run.metrics.reload_count("failure"), 1);
    assert_eq!(s.list().len(), 2);
    assert_eq!(lab.processes().len(), 2);
    // Fixed: accepted again.
    lab.write_config(&[
        lab.vm_yaml("b", &[], "    env: {MARK: two}\n"),
        lab.vm_yaml("c", &[], ""),
    ]);
    s.reload().await.unwrap();
    assert!(s.status().config_ok);
    s.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_that_left_the_file_while_the_supervisor_was_down_is_removed_at_start() {
    let lab = Lab::new();
    let vms = lab.write_config(&[lab.vm_yaml("a", &[], ""), lab.vm_yaml("b", &[], "")]);
    let run = start(settings(&lab), vms).await;
    wait_healthy(&run.supervisor, "a", None).await;
    let b = wait_healthy(&run.supervisor, "b", None).await;
    assert!(run.supervisor.shutdown(Duration::from_secs(5)).await);

    let vms = lab.write_config(&[lab.vm_yaml("a", &[], "")]);
    let run = start(settings(&lab), vms).await;
    assert!(run.supervisor.get("b").is_none());
    assert!(!lab.processes().contains(&b.pid.unwrap()), "b stopped");
    wait_healthy(&run.supervisor, "a", None).await;
    assert_eq!(lab.processes().len(), 1);
    run.supervisor.shutdown(Duration::from_secs(5)).await;
}

async fn get(port: u16, path: &str) -> Option<serde_json::Value> {
    reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_binarys_file() {
    let lab = Lab::new();
    lab.write_config(&[lab.vm_yaml("a", &[], "")]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(SUPERVISOR)
        .env_clear()
        .env("SUPERVISOR_CONFIG", lab.config_path())
        .env("DATABASE_URL", lab.db_url())
        .env("ADMIN_ADDR", format!("127.0.0.1:{port}"))
        .env("HEALTH_INTERVAL", "100ms")
        .env("HEALTH_TIMEOUT", "100ms")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let healthy = |n: usize| {
        async move || {
            get(port, "/vms").await.is_some_and(|l| {
                l.as_array()
                    .is_some_and(|l| l.len() == n && l.iter().all(|v| v["healthy"] == true))
            })
        }
    };
    until("a healthy", healthy(1)).await;
    let hup = |child: &tokio::process::Child| {
        let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    };

    lab.write_config(&[lab.vm_yaml("a", &[], ""), lab.vm_yaml("b", &[], "")]);
    hup(&child);
    until("b added and healthy", healthy(2)).await;
    assert_eq!(lab.processes().len(), 2);

    std::fs::write(lab.config_path(), "vms: [oops\n").unwrap();
    hup(&child);
    until("reload refused", async || {
        get(port, "/status")
            .await
            .is_some_and(|s| s["config_ok"] == false)
    })
    .await;
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "vm_supervisor_config_reloads_total{outcome=\"failure\"} 1",
        "vm_supervisor_config_reloads_total{outcome=\"success\"} 1",
        "vm_supervisor_config_last_reload_success 0",
        "vm_supervisor_health_checks_enabled 1",
        "vm_supervisor_recovery_enabled 1",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    assert!(child.try_wait().unwrap().is_none(), "still running");
    assert_eq!(
        get(port, "/vms").await.unwrap().as_array().unwrap().len(),
        2
    );
    child.kill().await.unwrap();
}
