//! The real binary against the fakes: Yandex Compute + IAM and Telegram on
//! loopback, a `vms.yaml` in a temporary directory, a TCP listener as the
//! VM's SSH port. Real time throughout (sockets and a child process).

#![allow(clippy::disallowed_types)]

mod support;

use std::process::Stdio;
use std::time::Duration;

use keel_testkit::fakes::telegram::FakeTelegram;
use keel_testkit::fakes::yandex::{DEFAULT_OAUTH_TOKEN, FakeYandex, StepDelays};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

use support::{eventually, free_port};

const BIN: &str = env!("CARGO_BIN_EXE_vm-watchdog");

fn base_command(tg: &FakeTelegram, yc: &FakeYandex, vms: &std::path::Path, health: u16) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("BOT_TOKEN", tg.token())
        .env("GROUP_CHAT_ID", "-1001234567890")
        .env("TOPIC_ID", "42")
        .env("MIN_CHECK_INTERVAL", "1")
        .env("MAX_CHECK_INTERVAL", "5")
        .env("VMS_CONFIG", vms)
        .env("HEALTH_ADDR", format!("127.0.0.1:{health}"))
        .env("YC_COMPUTE_URL", yc.base_url())
        .env("YC_OPERATION_URL", yc.base_url())
        .env("YC_IAM_URL", yc.base_url())
        .env("YC_OAUTH_TOKEN", DEFAULT_OAUTH_TOKEN)
        .env("TELEGRAM_API_URL", tg.base_url())
        .env("RUST_LOG", "info")
        .kill_on_drop(true);
    cmd
}

async fn health(client: &reqwest::Client, port: u16) -> Option<Value> {
    let response = client
        .get(format!("http://127.0.0.1:{port}/health"))
        .send()
        .await
        .ok()?;
    response.json().await.ok()
}

async fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    match tokio::time::timeout(within, child.wait()).await {
        Ok(status) => status.unwrap(),
        Err(_) => panic!("vm-watchdog did not exit within {within:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stops_are_alerted_started_recovered_and_sigterm_exits_cleanly() {
    let tg = FakeTelegram::start().await;
    let yc = FakeYandex::builder()
        .require_iam(true)
        .steps(StepDelays::uniform(Duration::from_millis(500)))
        .start()
        .await;
    yc.add_instance("fhm-e2e-1", "web-1", "b1g-e2e", "RUNNING");
    yc.set_nat_ip("fhm-e2e-1", Some("127.0.0.1"));
    let ssh = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ssh_port = ssh.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let vms = dir.path().join("vms.yaml");
    std::fs::write(
        &vms,
        format!("vms:\n  - name: web-1\n    instance_id: fhm-e2e-1\n    ssh_port: {ssh_port}\n"),
    )
    .unwrap();
    let port = free_port();
    // Logs go to a file (a pipe nobody reads would fill up and block it).
    let log = dir.path().join("vm-watchdog.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let mut child = base_command(&tg, &yc, &vms, port)
        .stdout(Stdio::from(log_file.try_clone().unwrap()))
        .stderr(Stdio::from(log_file))
        .spawn()
        .unwrap();
    let show_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let client = reqwest::Client::new();

    // Up, authenticated with an exchanged IAM token, VM seen RUNNING.
    let mut seen = None;
    for _ in 0..200 {
        if let Some(h) = health(&client, port).await
            && h["vms"][0]["status"] == "RUNNING"
        {
            seen = Some(h);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let h = seen.unwrap_or_else(|| panic!("/health never reported the VM RUNNING\n{}", show_log()));
    assert_eq!(h["status"], "healthy");
    assert_eq!(h["vms_monitored"], 1);
    assert_eq!(h["tasks"], 1);
    assert_eq!(h["vms"][0]["name"], "web-1");
    assert!(h["vms"][0]["last_check"].is_string());
    assert!(h["uptime_seconds"].is_u64());
    assert!(yc.iam_requests() >= 1, "the OAuth token was exchanged");

    // The VM stops: its SSH port closes and the API says STOPPED.
    drop(ssh);
    yc.stop_vm("fhm-e2e-1");
    let critical = eventually(Duration::from_secs(10), "the critical alert", || {
        tg.messages()
            .into_iter()
            .find(|m| m.plain_text.contains("VM web-1 is STOPPED"))
    })
    .await;
    assert_eq!(critical.chat_id, "-1001234567890");
    assert_eq!(critical.message_thread_id, Some(42));
    eventually(Duration::from_secs(10), "the :start request", || {
        (yc.start_requests("fhm-e2e-1") >= 1).then_some(())
    })
    .await;
    // The SSH port comes back with the VM.
    let _ssh = TcpListener::bind(("127.0.0.1", ssh_port)).await.unwrap();
    let recovered = eventually(Duration::from_secs(30), "the recovery alert", || {
        tg.messages()
            .into_iter()
            .find(|m| m.plain_text.contains("VM web-1 recovered after"))
    })
    .await;
    assert!(recovered.received_at > critical.received_at);
    assert_eq!(yc.status("fhm-e2e-1").as_deref(), Some("RUNNING"));
    let h = health(&client, port).await.unwrap();
    assert_eq!(h["vms"][0]["status"], "RUNNING");

    let metrics = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        r#"vm_checks_total{vm="web-1",status="STOPPED"}"#,
        r#"alerts_sent_total{priority="critical"} 1"#,
        "alert_reaction_seconds_count",
        "vm_check_duration_seconds_bucket",
    ] {
        assert!(metrics.contains(needle), "no {needle} in\n{metrics}");
    }

    // SIGTERM: exit 0 within 10 s.
    let started = tokio::time::Instant::now();
    kill(Pid::from_raw(child.id().unwrap() as i32), Signal::SIGTERM).unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}\n{}", show_log());
    assert!(show_log().contains("vm-watchdog stopped"), "{}", show_log());
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn invalid_configuration_exits_64_naming_the_variable() {
    let tg = FakeTelegram::start().await;
    let yc = FakeYandex::start().await;
    let dir = tempfile::tempdir().unwrap();
    let vms = dir.path().join("vms.yaml");
    std::fs::write(&vms, "vms:\n  - name: a\n    instance_id: fhm1\n").unwrap();

    let output = base_command(&tg, &yc, &vms, free_port())
        .env("MIN_CHECK_INTERVAL", "0")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("MIN_CHECK_INTERVAL"));

    let output = base_command(&tg, &yc, &vms, free_port())
        .env("API_WORKER_POOL_SIZE", "many")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("API_WORKER_POOL_SIZE"));

    let output = base_command(&tg, &yc, &vms, free_port())
        .env_remove("BOT_TOKEN")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("BOT_TOKEN"));

    let output = base_command(&tg, &yc, &vms, free_port())
        .env("LOG_FORMAT", "xml")
        .arg("--check-config")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("LOG_FORMAT"));

    let output = base_command(&tg, &yc, &vms, free_port())
        .arg("--check-config")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");

    std::fs::write(&vms, "vms:\n  - name: a\n").unwrap();
    let output = base_command(&tg, &yc, &vms, free_port())
        .arg("--check-config")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("VMS_CONFIG") && stderr.contains("needs instance_id or proxy_url"),
        "{stderr}"
    );
}
