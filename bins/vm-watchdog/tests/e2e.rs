//! The real binary against the fakes: Yandex Compute + IAM and Telegram on
//! loopback, a `vms.yaml` in a temporary directory, a TCP listener as the
//! VM's SSH port. Real time throughout (sockets and a child process).
//!
//! No port is chosen by the test and handed over: the binary binds
//! `HEALTH_ADDR=127.0.0.1:0` itself and the test reads the bound address
//! from its JSON startup log line; the SSH stand-in closes and reopens
//! without ever releasing its port ([`SshPort`]).

#![allow(clippy::disallowed_types)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use keel_testkit::fakes::telegram::{FakeTelegram, TelegramFault};
use keel_testkit::fakes::yandex::{DEFAULT_OAUTH_TOKEN, FakeYandex, SshPort, StepDelays};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::process::{Child, Command};

use support::eventually;

const BIN: &str = env!("CARGO_BIN_EXE_vm-watchdog");

/// Let the binary pick its admin port.
const ANY_PORT: &str = "127.0.0.1:0";

fn base_command(tg: &FakeTelegram, yc: &FakeYandex, vms: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("BOT_TOKEN", tg.token())
        .env("GROUP_CHAT_ID", "-1001234567890")
        .env("TOPIC_ID", "42")
        .env("MIN_CHECK_INTERVAL", "1")
        .env("MAX_CHECK_INTERVAL", "5")
        .env("VMS_CONFIG", vms)
        .env("HEALTH_ADDR", ANY_PORT)
        .env("YC_COMPUTE_URL", yc.base_url())
        .env("YC_OPERATION_URL", yc.base_url())
        .env("YC_IAM_URL", yc.base_url())
        .env("YC_OAUTH_TOKEN", DEFAULT_OAUTH_TOKEN)
        .env("TELEGRAM_API_URL", tg.base_url())
        .env("RUST_LOG", "info")
        .env("LOG_FORMAT", "json")
        .kill_on_drop(true);
    cmd
}

/// Starts `cmd` with stdout and stderr going to `log` (a pipe nobody reads
/// would fill up and block the child).
fn spawn_logged(mut cmd: Command, log: &Path) -> Child {
    let file = std::fs::File::create(log).unwrap();
    cmd.stdout(Stdio::from(file.try_clone().unwrap()))
        .stderr(Stdio::from(file))
        .spawn()
        .unwrap()
}

/// The admin address the binary bound, from its `vm-watchdog started` log
/// line.
async fn bound_addr(log: &Path) -> SocketAddr {
    eventually(Duration::from_secs(30), "the startup log line", || {
        let text = std::fs::read_to_string(log).ok()?;
        text.lines().find_map(|line| {
            let event: Value = serde_json::from_str(line).ok()?;
            if event["message"] != "vm-watchdog started" {
                return None;
            }
            event["health_addr"].as_str()?.parse().ok()
        })
    })
    .await
}

async fn health(client: &reqwest::Client, addr: SocketAddr) -> Option<Value> {
    let response = client
        .get(format!("http://{addr}/health"))
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
    tg.set_bot_api(true);
    let yc = FakeYandex::builder()
        .require_iam(true)
        .steps(StepDelays::uniform(Duration::from_millis(500)))
        .start()
        .await;
    yc.add_instance("fhm-e2e-1", "web-1", "b1g-e2e", "RUNNING");
    yc.set_nat_ip("fhm-e2e-1", Some("127.0.0.1"));
    let mut ssh = SshPort::open_new().unwrap();
    let ssh_port = ssh.port();
    let dir = tempfile::tempdir().unwrap();
    let vms = dir.path().join("vms.yaml");
    std::fs::write(
        &vms,
        format!("vms:\n  - name: web-1\n    instance_id: fhm-e2e-1\n    ssh_port: {ssh_port}\n"),
    )
    .unwrap();
    let log = dir.path().join("vm-watchdog.log");
    let mut child = spawn_logged(base_command(&tg, &yc, &vms), &log);
    let show_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let client = reqwest::Client::new();
    let addr = bound_addr(&log).await;
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");

    // Up, authenticated with an exchanged IAM token, VM seen RUNNING.
    let mut seen = None;
    for _ in 0..200 {
        if let Some(h) = health(&client, addr).await
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
    assert!(h["vms"][0]["next_check_in_s"].is_number());
    assert!(h["uptime_seconds"].is_u64());
    assert!(yc.iam_requests() >= 1, "the OAuth token was exchanged");

    // The VM stops: its SSH port closes and the API says STOPPED.
    ssh.close().unwrap();
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
    ssh.open().unwrap();
    let recovered = eventually(Duration::from_secs(30), "the recovery alert", || {
        tg.messages()
            .into_iter()
            .find(|m| m.plain_text.contains("VM web-1 recovered after"))
    })
    .await;
    assert!(recovered.received_at > critical.received_at);
    assert_eq!(yc.status("fhm-e2e-1").as_deref(), Some("RUNNING"));
    let h = health(&client, addr).await.unwrap();
    assert_eq!(h["vms"][0]["status"], "RUNNING");

    let metrics = client
        .get(format!("http://{addr}/metrics"))
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
        // keel-notify's metrics, under the program's sub-prefix.
        r#"vm_watchdog_notify_sent_total{sink="telegram",priority="critical"} 1"#,
        "vm_watchdog_notify_queue_depth",
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_telegram_refuses_are_spooled_at_sigterm_and_sent_by_the_next_run() {
    let tg = FakeTelegram::start().await;
    tg.set_bot_api(true);
    tg.set_down(Some(TelegramFault::Status(503)));
    let yc = FakeYandex::builder()
        .require_iam(true)
        .steps(StepDelays::uniform(Duration::from_millis(200)))
        .start()
        .await;
    yc.add_instance("fhm-e2e-2", "web-2", "b1g-e2e", "STOPPED");
    let dir = tempfile::tempdir().unwrap();
    let vms = dir.path().join("vms.yaml");
    std::fs::write(&vms, "vms:\n  - name: web-2\n    instance_id: fhm-e2e-2\n").unwrap();
    let spool = dir.path().join("alerts.spool");
    let log = dir.path().join("first.log");
    let mut first = spawn_logged(
        {
            let mut cmd = base_command(&tg, &yc, &vms);
            cmd.env("ALERT_SPOOL", &spool);
            cmd
        },
        &log,
    );
    let show_log = || std::fs::read_to_string(&log).unwrap_or_default();
    bound_addr(&log).await;
    // The VM is started, and Telegram refused the critical alert.
    eventually(
        Duration::from_secs(20),
        "the start and a refused alert",
        || (yc.start_requests("fhm-e2e-2") >= 1 && tg.requests() >= 1).then_some(()),
    )
    .await;
    assert!(tg.messages().is_empty());

    // SIGTERM while Telegram is still down: exit 0 within 10 s, the alert
    // written to the spool.
    let started = tokio::time::Instant::now();
    kill(Pid::from_raw(first.id().unwrap() as i32), Signal::SIGTERM).unwrap();
    let status = wait_exit(&mut first, Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}\n{}", show_log());
    assert!(started.elapsed() < Duration::from_secs(10));
    let spooled = std::fs::read_to_string(&spool)
        .unwrap_or_else(|e| panic!("no spool ({e})\n{}", show_log()));
    assert!(spooled.contains("VM web-2 is STOPPED"), "{spooled}");

    // The next run, with Telegram back, sends what was spooled.
    tg.set_down(None);
    let log = dir.path().join("second.log");
    let mut second = spawn_logged(
        {
            let mut cmd = base_command(&tg, &yc, &vms);
            cmd.env("ALERT_SPOOL", &spool);
            cmd
        },
        &log,
    );
    eventually(Duration::from_secs(20), "the spooled alert", || {
        tg.messages()
            .into_iter()
            .find(|m| m.plain_text.contains("VM web-2 is STOPPED"))
    })
    .await;
    assert!(!spool.exists(), "the spool is consumed at start");
    kill(Pid::from_raw(second.id().unwrap() as i32), Signal::SIGTERM).unwrap();
    assert!(
        wait_exit(&mut second, Duration::from_secs(10))
            .await
            .success()
    );
}

#[tokio::test]
async fn invalid_configuration_exits_64_naming_the_variable() {
    let tg = FakeTelegram::start().await;
    tg.set_bot_api(true);
    let yc = FakeYandex::start().await;
    let dir = tempfile::tempdir().unwrap();
    let vms = dir.path().join("vms.yaml");
    std::fs::write(&vms, "vms:\n  - name: a\n    instance_id: fhm1\n").unwrap();

    let output = base_command(&tg, &yc, &vms)
        .env("MIN_CHECK_INTERVAL", "0")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("MIN_CHECK_INTERVAL"));

    let output = base_command(&tg, &yc, &vms)
        .env("API_WORKER_POOL_SIZE", "many")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("API_WORKER_POOL_SIZE"));

    let output = base_command(&tg, &yc, &vms)
        .env_remove("BOT_TOKEN")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("BOT_TOKEN"));

    let output = base_command(&tg, &yc, &vms)
        .env("LOG_FORMAT", "xml")
        .arg("--check-config")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("LOG_FORMAT"));

    let output = base_command(&tg, &yc, &vms)
        .arg("--check-config")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");

    std::fs::write(&vms, "vms:\n  - name: a\n").unwrap();
    let output = base_command(&tg, &yc, &vms)
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

#[tokio::test]
async fn blank_variables_are_unset_and_help_lists_the_log_variables() {
    let tg = FakeTelegram::start().await;
    tg.set_bot_api(true);
    let yc = FakeYandex::start().await;
    let dir = tempfile::tempdir().unwrap();
    let vms = dir.path().join("vms.yaml");
    std::fs::write(&vms, "vms:\n  - name: a\n    instance_id: fhm1\n").unwrap();

    // A blank optional variable is unset (not "set but empty"), a blank
    // variable with a default takes the default.
    let output = base_command(&tg, &yc, &vms)
        .env("YC_IAM_TOKEN", "")
        .env("TOPIC_ID", "")
        .env("MAX_CHECK_INTERVAL", " ")
        .env("ALERT_SPOOL", "")
        .arg("--check-config")
        .output()
        .await
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // --check-config checks the spool's directory without creating it.
    let spool = dir.path().join("missing").join("spool.json");
    let output = base_command(&tg, &yc, &vms)
        .env("ALERT_SPOOL", &spool)
        .arg("--check-config")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("ALERT_SPOOL"));
    assert!(!spool.parent().unwrap().exists());

    let output = Command::new(BIN).arg("--help").output().await.unwrap();
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    for var in ["RUST_LOG", "LOG_FORMAT", "HEALTH_ADDR", "--check-config"] {
        assert!(help.contains(var), "{var} missing from\n{help}");
    }
    // The about is the program's own (its crate description), not the kit's.
    assert!(
        help.starts_with("Keel program: watches Yandex Cloud VMs"),
        "{help}"
    );
}
