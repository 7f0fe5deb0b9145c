//! Chaos: the whole watchdog in-process against the Yandex fake failing
//! half its requests with 100–2,000 ms of latency, and a flaky Telegram.
//! Alerts still arrive, every stopped VM is started, no task leaks. Real
//! time (sockets); assertions are about outcomes, not timings.

mod support;

use std::time::Duration;

use clap::Parser;
use http::StatusCode;
use keel::breaker::BreakerConfig;
use keel_testkit::fakes::telegram::FakeTelegram;
use keel_testkit::fakes::yandex::{FakeYandex, SshPort, StepDelays};
use keel_testkit::{Fault, FaultConfig, Latency};
use vm_watchdog::{ApiSettings, Config, Options, Watchdog, vms_yaml};

use support::eventually;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_the_api_failing_still_alerts_and_starts_every_stopped_vm() {
    let yc = FakeYandex::builder()
        .seed(42)
        .steps(StepDelays::uniform(Duration::from_millis(300)))
        .faults(
            FaultConfig::none()
                .with_errors(0.5, StatusCode::SERVICE_UNAVAILABLE)
                .with_latency(Duration::from_millis(100), Duration::from_millis(2_000)),
        )
        .start()
        .await;
    let tg = FakeTelegram::start().await;
    tg.set_bot_api(true);
    tg.server()
        .faults()
        .set(FaultConfig::none().with_errors(0.3, StatusCode::BAD_GATEWAY))
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vms.yaml");
    // SSH stand-ins: a stopped VM's port refuses connects but is never
    // released, so no other socket can answer on it.
    let mut ports = Vec::new();
    let mut text = String::from("vms:\n");
    for i in 0..10 {
        let id = format!("fhm-chaos-{i}");
        yc.add_instance(&id, &format!("vm-{i}"), "b1g", "RUNNING");
        let port = SshPort::open_new().unwrap();
        text.push_str(&format!(
            "  - name: vm-{i}\n    instance_id: {id}\n    ssh_host: 127.0.0.1\n    ssh_port: {}\n",
            port.port()
        ));
        ports.push(port);
    }
    std::fs::write(&path, &text).unwrap();

    let token = tg.token();
    let base = yc.base_url();
    let tg_base = tg.base_url();
    let config = Config::try_parse_from([
        "vm-watchdog",
        "--bot-token",
        token.as_str(),
        "--group-chat-id=-100777",
        "--min-check-interval",
        "1",
        "--max-check-interval",
        "5",
        "--vms-config",
        path.to_str().unwrap(),
        // Bound by the watchdog itself: no port is picked here and handed over.
        "--health-addr",
        "127.0.0.1:0",
        "--yc-compute-url",
        base.as_str(),
        "--yc-operation-url",
        base.as_str(),
        "--yc-iam-token",
        "t1.static",
        "--telegram-api-url",
        tg_base.as_str(),
    ])
    .unwrap();
    let settings = config.validate().unwrap();
    let vms = vms_yaml::load(&path).await.unwrap();
    let options = Options {
        api: Some(ApiSettings {
            breaker: BreakerConfig::consecutive(5, Duration::from_secs(2))
                .build()
                .unwrap(),
            read_deadline: Duration::from_secs(20),
            ..ApiSettings::new(10)
        }),
        ..Options::default()
    };
    let watchdog = Watchdog::start(&settings, vms, options).await.unwrap();
    let admin = watchdog.local_addr().expect("serving the admin routes");
    assert!(admin.port() != 0);
    let engine = watchdog.engine().clone();
    eventually(Duration::from_secs(60), "every VM seen RUNNING", || {
        (0..10)
            .all(|i| engine.status_of(&format!("vm-{i}")) == Some(vm_watchdog::VmStatus::Running))
            .then_some(())
    })
    .await;

    // Five VMs stop.
    for i in [0, 2, 4, 6, 8] {
        ports[i].close().unwrap();
        yc.stop_vm(&format!("fhm-chaos-{i}"));
    }
    // A reload in the middle of it: vm-9 leaves, vm-10 arrives.
    yc.add_instance("fhm-chaos-10", "vm-10", "b1g", "RUNNING");
    let text = text.replace(
        "vm-9\n    instance_id: fhm-chaos-9",
        "vm-10\n    instance_id: fhm-chaos-10",
    );
    std::fs::write(&path, text).unwrap();

    for i in [0, 2, 4, 6, 8] {
        let needle = format!("VM vm-{i} is STOPPED");
        eventually(Duration::from_secs(90), &needle, || {
            tg.messages()
                .iter()
                .any(|m| m.plain_text.contains(&needle))
                .then_some(())
        })
        .await;
    }
    for i in [0, 2, 4, 6, 8] {
        let id = format!("fhm-chaos-{i}");
        eventually(Duration::from_secs(90), "the VM started", || {
            (yc.status(&id).as_deref() == Some("RUNNING")).then_some(())
        })
        .await;
        assert!(yc.start_requests(&id) >= 1);
    }
    eventually(Duration::from_secs(30), "the reload", || {
        let names = engine.vm_names();
        (names.contains(&"vm-10".to_owned()) && !names.contains(&"vm-9".to_owned())).then_some(())
    })
    .await;
    assert_eq!(engine.vms_monitored(), 10);
    eventually(Duration::from_secs(10), "no leaked task", || {
        (engine.live_tasks() == 10).then_some(())
    })
    .await;
    let health: serde_json::Value = reqwest::get(format!("http://{admin}/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (health["vms_monitored"].as_u64(), health["tasks"].as_u64()),
        (Some(10), Some(10))
    );
    // The breakers behind the chaos are visible: the Compute API's and the
    // notifier's Telegram sink, read-only.
    let breakers: serde_json::Value = reqwest::get(format!("http://{admin}/breakers"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = breakers
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["name"].as_str())
        .collect();
    assert!(names.contains(&"compute"), "{breakers}");
    assert!(names.iter().any(|n| n.starts_with("notify:")), "{breakers}");
    let forced = reqwest::Client::new()
        .post(format!("http://{admin}/breakers/compute/open"))
        .send()
        .await
        .unwrap();
    assert!(
        forced.status().is_client_error(),
        "no unauthenticated forcing"
    );
    // Chaos really happened.
    assert!(
        watchdog.metrics().api_errors("instances.get")
            + watchdog.metrics().api_errors("instances.start")
            > 5
    );
    // Never started a VM that did not stop.
    for i in [1, 3, 5, 7] {
        assert_eq!(yc.start_requests(&format!("fhm-chaos-{i}")), 0);
    }

    let report = watchdog.stop(Duration::from_secs(10)).await;
    assert!(report.tasks_stopped);
    assert!(report.elapsed < Duration::from_secs(10));
    assert_eq!(engine.live_tasks(), 0);
}

/// The Compute API flaps (down 3 s with connection resets, up 2 s, again
/// and again) and Telegram answers with a long tail (2 % of calls take
/// 1.5–2.5 s): every stopped VM is still alerted and started, and a VM that
/// did not stop is never started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_api_with_resets_still_alerts_and_starts_every_stopped_vm() {
    let yc = FakeYandex::builder()
        .seed(7)
        .steps(StepDelays::uniform(Duration::from_millis(300)))
        .start()
        .await;
    let tg = FakeTelegram::start().await;
    tg.set_bot_api(true);
    tg.server()
        .faults()
        .set(
            FaultConfig::none().with_latency_distribution(Latency::LongTail {
                fast: (Duration::from_millis(1), Duration::from_millis(20)),
                slow_rate: 0.02,
                slow: (Duration::from_millis(1_500), Duration::from_millis(2_500)),
            }),
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vms.yaml");
    let mut ports = Vec::new();
    let mut text = String::from("vms:\n");
    for i in 0..4 {
        let id = format!("fhm-flap-{i}");
        yc.add_instance(&id, &format!("vm-{i}"), "b1g", "RUNNING");
        let port = SshPort::open_new().unwrap();
        text.push_str(&format!(
            "  - name: vm-{i}\n    instance_id: {id}\n    ssh_host: 127.0.0.1\n    ssh_port: {}\n",
            port.port()
        ));
        ports.push(port);
    }
    std::fs::write(&path, &text).unwrap();
    let token = tg.token();
    let base = yc.base_url();
    let tg_base = tg.base_url();
    let config = Config::try_parse_from([
        "vm-watchdog",
        "--bot-token",
        token.as_str(),
        "--group-chat-id=-100777",
        "--min-check-interval",
        "1",
        "--max-check-interval",
        "3",
        "--vms-config",
        path.to_str().unwrap(),
        "--health-addr",
        "127.0.0.1:0",
        "--yc-compute-url",
        base.as_str(),
        "--yc-operation-url",
        base.as_str(),
        "--yc-iam-token",
        "t1.static",
        "--telegram-api-url",
        tg_base.as_str(),
    ])
    .unwrap();
    let settings = config.validate().unwrap();
    let vms = vms_yaml::load(&path).await.unwrap();
    let options = Options {
        api: Some(ApiSettings {
            breaker: BreakerConfig::consecutive(5, Duration::from_secs(1))
                .build()
                .unwrap(),
            read_deadline: Duration::from_secs(20),
            ..ApiSettings::new(10)
        }),
        ..Options::default()
    };
    let watchdog = Watchdog::start(&settings, vms, options).await.unwrap();
    let engine = watchdog.engine().clone();
    eventually(Duration::from_secs(30), "every VM seen RUNNING", || {
        (0..4)
            .all(|i| engine.status_of(&format!("vm-{i}")) == Some(vm_watchdog::VmStatus::Running))
            .then_some(())
    })
    .await;

    // From now on the API flaps, and two VMs stop.
    yc.server()
        .faults()
        .set(FaultConfig::none().with_flap(
            Duration::from_secs(3),
            Duration::from_secs(2),
            Fault::Reset,
        ))
        .unwrap();
    for i in [0, 2] {
        ports[i].close().unwrap();
        yc.stop_vm(&format!("fhm-flap-{i}"));
    }
    for i in [0, 2] {
        let needle = format!("VM vm-{i} is STOPPED");
        eventually(Duration::from_secs(90), &needle, || {
            tg.messages()
                .iter()
                .any(|m| m.plain_text.contains(&needle))
                .then_some(())
        })
        .await;
        let id = format!("fhm-flap-{i}");
        eventually(Duration::from_secs(90), "the VM started", || {
            (yc.status(&id).as_deref() == Some("RUNNING")).then_some(())
        })
        .await;
    }
    let resets = yc
        .server()
        .requests()
        .iter()
        .filter(|r| r.fault == Some(Fault::Reset))
        .count();
    assert!(resets > 0, "the API never reset a connection");
    for i in [1, 3] {
        assert_eq!(yc.start_requests(&format!("fhm-flap-{i}")), 0);
    }
    let report = watchdog.stop(Duration::from_secs(10)).await;
    assert!(report.tasks_stopped);
    assert_eq!(engine.live_tasks(), 0);
}
