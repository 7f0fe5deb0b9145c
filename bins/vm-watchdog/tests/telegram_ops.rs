//! Self-checks, Telegram commands and per-VM topics against the Telegram
//! and Yandex fakes (real sockets and real time, short timeouts; no timing
//! is asserted beyond a 429's retry_after).

mod support;

use std::path::Path;
use std::time::Duration;

use keel_testkit::fakes::telegram::{FakeTelegram, TelegramFault};
use keel_testkit::fakes::yandex::{DEFAULT_OAUTH_TOKEN, FakeYandex, StepDelays};
use vm_watchdog::commands::CommandSettings;
use vm_watchdog::selfcheck::{self, Failure};
use vm_watchdog::{Config, Options, Settings, VmSource, VmSpec, VmsFile, Watchdog, vms_yaml};

use clap::Parser as _;
use support::eventually;

const CHAT: i64 = -100_777;
const ADMIN: i64 = 4_242;

fn config(tg: &FakeTelegram, yc: &FakeYandex, extra: &[&str]) -> Config {
    let tg_base = tg.base_url();
    let yc_base = yc.base_url();
    let token = tg.token();
    let mut args = vec!["vm-watchdog"];
    if !extra.contains(&"--bot-token") {
        args.extend(["--bot-token", token.as_str()]);
    }
    args.extend([
        "--group-chat-id=-100777",
        "--telegram-api-url",
        tg_base.as_str(),
        "--yc-compute-url",
        yc_base.as_str(),
        "--yc-operation-url",
        yc_base.as_str(),
        "--yc-iam-url",
        yc_base.as_str(),
        "--health-addr",
        "127.0.0.1:0",
        "--min-check-interval",
        "1",
        "--max-check-interval",
        "3",
    ]);
    let owned: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
    args.extend(owned.iter().map(String::as_str));
    if !extra.iter().any(|a| a.starts_with("--yc-")) {
        args.extend(["--yc-oauth-token", DEFAULT_OAUTH_TOKEN]);
    }
    Config::try_parse_from(args).unwrap()
}

fn settings(tg: &FakeTelegram, yc: &FakeYandex, extra: &[&str]) -> Settings {
    config(tg, yc, extra).validate().unwrap()
}

fn one_vm(id: &str) -> VmsFile {
    VmsFile {
        folder_id: None,
        vms: vec![VmSpec::new("web-1", VmSource::Instance { id: id.into() })],
    }
}

fn rejected(result: Result<impl std::fmt::Debug, Failure>) -> (String, String) {
    match result {
        Err(Failure::Rejected(e)) => (e.field().to_owned(), e.to_string()),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn telegram_self_checks_name_the_variable_at_fault() {
    let tg = FakeTelegram::start().await;
    tg.set_bot_api(true);
    let yc = FakeYandex::start().await;
    let client = selfcheck::client();
    let bot = selfcheck::telegram(&client, &settings(&tg, &yc, &[]))
        .await
        .unwrap();
    assert_eq!(bot.username.as_deref(), Some("fake_bot"));
    assert_eq!(bot.id, 123_456);

    let (field, message) = rejected(
        selfcheck::telegram(&client, &settings(&tg, &yc, &["--bot-token", "999:wrong"])).await,
    );
    assert_eq!(field, "BOT_TOKEN");
    assert!(message.contains("Unauthorized"), "{message}");

    // Telegram down for getMe: not a rejection, the start goes on.
    tg.inject_method("getMe", TelegramFault::Status(502));
    match selfcheck::telegram(&client, &settings(&tg, &yc, &[])).await {
        Err(f @ Failure::Unreachable { .. }) => {
            assert!(!f.is_rejected());
            assert_eq!(f.into_config_error().field(), "TELEGRAM_API_URL");
        }
        other => panic!("{other:?}"),
    }

    tg.set_bot_status("kicked");
    let (field, message) = rejected(selfcheck::telegram(&client, &settings(&tg, &yc, &[])).await);
    assert_eq!(field, "GROUP_CHAT_ID");
    assert!(message.contains("kicked"), "{message}");

    tg.restrict_chats(["-100123"]);
    let (field, message) = rejected(selfcheck::telegram(&client, &settings(&tg, &yc, &[])).await);
    assert_eq!(field, "GROUP_CHAT_ID");
    assert!(message.contains("chat not found"), "{message}");
}

#[tokio::test]
async fn cloud_self_checks_name_the_credential_at_fault() {
    let tg = FakeTelegram::start().await;
    tg.set_bot_api(true);
    let yc = FakeYandex::builder().require_iam(true).start().await;
    yc.add_instance("fhm1", "web-1", "b1g", "RUNNING");
    let client = selfcheck::client();
    selfcheck::cloud(&client, &settings(&tg, &yc, &[]), &one_vm("fhm1"))
        .await
        .unwrap();
    // A VM the API does not know is no credential problem.
    selfcheck::cloud(&client, &settings(&tg, &yc, &[]), &one_vm("fhm-missing"))
        .await
        .unwrap();

    let s = settings(&tg, &yc, &["--yc-oauth-token", "y0_revoked"]);
    let (field, message) = rejected(selfcheck::cloud(&client, &s, &one_vm("fhm1")).await);
    assert_eq!(field, "YC_OAUTH_TOKEN");
    assert!(message.contains("401"), "{message}");

    let s = settings(&tg, &yc, &["--yc-iam-token", "t1.forged"]);
    let (field, message) = rejected(selfcheck::cloud(&client, &s, &one_vm("fhm1")).await);
    assert_eq!(field, "YC_IAM_TOKEN");
    assert!(message.contains("401"), "{message}");

    // A proxy-only configuration makes no cloud call.
    let proxy_only = VmsFile {
        folder_id: None,
        vms: vec![VmSpec::new(
            "legacy",
            VmSource::Proxy {
                url: "http://127.0.0.1:9/legacy".into(),
            },
        )],
    };
    selfcheck::cloud(&client, &s, &proxy_only).await.unwrap();

    // Watchdog::start refuses rejected credentials: exit 64 naming them.
    let s = settings(&tg, &yc, &["--yc-oauth-token", "y0_revoked"]);
    let err = Watchdog::start(&s, one_vm("fhm1"), Options::default())
        .await
        .unwrap_err();
    let vm_watchdog::Error::Config(e) = err else {
        panic!("{err:?}");
    };
    assert_eq!(e.field(), "YC_OAUTH_TOKEN");
}

#[tokio::test]
async fn an_unreachable_telegram_does_not_stop_the_start_and_health_says_so() {
    // The Bot API's getMe is off: 404, as when TELEGRAM_API_URL is not the
    // Bot API (and like a network error, not fatal).
    let tg = FakeTelegram::start().await;
    let yc = FakeYandex::builder()
        .steps(StepDelays::uniform(Duration::from_millis(200)))
        .start()
        .await;
    yc.add_instance("fhm1", "web-1", "b1g", "RUNNING");
    let s = settings(&tg, &yc, &[]);
    match selfcheck::telegram(&selfcheck::client(), &s).await {
        Err(f @ Failure::Unreachable { .. }) => {
            assert_eq!(f.into_config_error().field(), "TELEGRAM_API_URL");
        }
        other => panic!("{other:?}"),
    }
    let watchdog = Watchdog::start(&s, one_vm("fhm1"), Options::default())
        .await
        .unwrap();
    let engine = watchdog.engine().clone();
    let health = engine.health();
    assert_eq!(health["status"], "degraded");
    assert_eq!(
        health["degraded_reasons"],
        serde_json::json!(["alerts_undeliverable"])
    );
    // The first alert Telegram accepts proves it reachable.
    eventually(Duration::from_secs(20), "web-1 seen", || {
        engine.status_of("web-1").map(drop)
    })
    .await;
    yc.stop_vm("fhm1");
    eventually(
        Duration::from_secs(30),
        "the alert and a healthy /health",
        || (!tg.messages().is_empty() && engine.health()["status"] == "healthy").then_some(()),
    )
    .await;
    assert!(
        tg.messages()
            .iter()
            .all(|m| !m.plain_text.contains("Telegram was failing")),
        "no failing episode for a start that had not delivered yet"
    );
    watchdog.stop(Duration::from_secs(5)).await;
}

fn write_vms(path: &Path) {
    std::fs::write(
        path,
        "vms:\n  - name: web-1\n    instance_id: fhm1\n  - name: api-2\n    instance_id: fhm2\n    topic_id: 77\n",
    )
    .unwrap();
}

#[tokio::test]
async fn check_config_online_asks_telegram_and_the_cloud() {
    let tg = FakeTelegram::start().await;
    tg.set_bot_api(true);
    let yc = FakeYandex::start().await;
    let dir = tempfile::tempdir().unwrap();
    let vms = dir.path().join("vms.yaml");
    write_vms(&vms);
    let run = |token: &str, online: bool| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_vm-watchdog"));
        cmd.env_clear()
            .env("BOT_TOKEN", token)
            .env("GROUP_CHAT_ID", CHAT.to_string())
            .env("VMS_CONFIG", &vms)
            .env("TELEGRAM_API_URL", tg.base_url())
            .env("YC_COMPUTE_URL", yc.base_url())
            .env("YC_OPERATION_URL", yc.base_url())
            .env("YC_IAM_URL", yc.base_url())
            .env("YC_OAUTH_TOKEN", DEFAULT_OAUTH_TOKEN)
            .arg("--check-config");
        if online {
            cmd.arg("--online");
        }
        cmd.output()
    };
    let output = run(&tg.token(), true).await.unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    // Offline, a wrong token is not noticed...
    let output = run("999:wrong", false).await.unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let requests = tg.requests();
    // ...and nothing is asked.
    assert_eq!(tg.requests(), requests);
    let output = run("999:wrong", true).await.unwrap();
    assert_eq!(output.status.code(), Some(64), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("BOT_TOKEN") && stderr.contains("Unauthorized"),
        "{stderr}"
    );
    // Bad overrides fail offline too, naming the VM and the field.
    std::fs::write(
        &vms,
        "vms:\n  - name: web-1\n    instance_id: fhm1\n    stuck_after: soon\n",
    )
    .unwrap();
    let output = run(&tg.token(), false).await.unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("VMS_CONFIG") && stderr.contains("vms[0] (web-1): stuck_after"),
        "{stderr}"
    );
}

#[tokio::test]
async fn commands_from_the_chat_are_answered_once_and_others_ignored() {
    let tg = FakeTelegram::start().await;
    tg.set_bot_api(true);
    let yc = FakeYandex::builder()
        .steps(StepDelays::uniform(Duration::from_millis(200)))
        .start()
        .await;
    yc.add_instance("fhm1", "web-1", "b1g", "RUNNING");
    yc.add_instance("fhm2", "api-2", "b1g", "RUNNING");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vms.yaml");
    write_vms(&path);
    let admin = ADMIN.to_string();
    let s = settings(
        &tg,
        &yc,
        &[
            "--topic-id",
            "42",
            "--telegram-commands",
            "true",
            "--telegram-admin-user-ids",
            admin.as_str(),
            "--vms-config",
            path.to_str().unwrap(),
        ],
    );
    let options = Options {
        telegram_rate_limits: Some(Vec::new()),
        commands: Some(CommandSettings {
            poll_timeout: Duration::from_secs(1),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_millis(200),
            ..CommandSettings::new(&s, Some("fake_bot".into()))
        }),
        ..Options::default()
    };
    let vms = vms_yaml::load(&path).await.unwrap();
    let watchdog = Watchdog::start(&s, vms, options).await.unwrap();
    let engine = watchdog.engine().clone();
    eventually(Duration::from_secs(20), "both VMs seen", || {
        (engine.status_of("web-1").is_some() && engine.status_of("api-2").is_some()).then_some(())
    })
    .await;
    let replies = |needle: &str| {
        tg.messages()
            .into_iter()
            .filter(|m| m.plain_text.contains(needle))
            .collect::<Vec<_>>()
    };

    // Ignored: another chat, a user not in TELEGRAM_ADMIN_USER_IDS, a
    // command for another bot.
    tg.push_message(-5, ADMIN, None, "/status");
    tg.push_message(CHAT, 7, None, "/mute web-1 2h");
    tg.push_message(CHAT, ADMIN, None, "/status@other_bot");
    // Sent an hour ago (while the watchdog was down): stale.
    tg.push_update(serde_json::json!({ "message": {
        "message_id": 1, "from": { "id": ADMIN }, "chat": { "id": CHAT, "type": "supergroup" },
        "date": chrono::Utc::now().timestamp() - 3_600, "text": "/resume web-1",
    }}));
    // Answered, in the topic it came from.
    tg.push_message(CHAT, ADMIN, Some(9), "/status");
    let status = eventually(Duration::from_secs(20), "the /status reply", || {
        replies("VMs watched").into_iter().next()
    })
    .await;
    assert_eq!(status.message_thread_id, Some(9));
    assert!(
        status.plain_text.contains("2 VMs watched, 0 down."),
        "{}",
        status.plain_text
    );
    assert!(status.disable_notification, "replies are silent");
    let last = tg.push_message(CHAT, ADMIN, None, "/mute@fake_bot web-1 2h");
    eventually(Duration::from_secs(20), "the /mute reply", || {
        replies("VM web-1 muted until").into_iter().next()
    })
    .await;
    assert!(engine.vm_view("web-1").unwrap()["muted_until"].is_string());
    eventually(Duration::from_secs(10), "the offset confirmed", || {
        tg.update_polls()
            .last()
            .is_some_and(|p| p.offset == last + 1)
            .then_some(())
    })
    .await;
    assert_eq!(tg.pending_updates(), 0);
    assert_eq!(engine.metrics().telegram_commands("ignored"), 3);
    assert_eq!(engine.metrics().telegram_commands("handled"), 2);
    assert_eq!(engine.metrics().operator_actions("mute"), 1);
    assert_eq!(replies("VMs watched").len(), 1, "each update handled once");
    let polls = tg.update_polls();
    assert!(
        polls
            .iter()
            .all(|p| p.allowed_updates == Some(serde_json::json!(["message"])))
    );
    assert!(polls.windows(2).all(|w| w[0].offset <= w[1].offset));

    // A webhook (another consumer) is a 409: retried until it is gone.
    tg.set_webhook(Some("https://example.com/hook".into()));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    tg.push_message(CHAT, ADMIN, None, "/resume web-1");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(replies("supervision resumed").is_empty());
    tg.set_webhook(None);
    eventually(
        Duration::from_secs(20),
        "the /resume reply after the conflict",
        || replies("VM web-1: supervision resumed").into_iter().next(),
    )
    .await;
    assert_eq!(
        engine.vm_view("web-1").unwrap()["muted_until"],
        serde_json::Value::Null
    );

    // A 429 waits its retry_after.
    tg.inject_method(
        "getUpdates",
        TelegramFault::TooManyRequests { retry_after: 1 },
    );
    let faulted = eventually(Duration::from_secs(20), "a poll answered 429", || {
        tg.update_polls().iter().position(|p| p.faulted)
    })
    .await;
    tg.push_message(CHAT, ADMIN, None, "/ack api-2");
    eventually(Duration::from_secs(20), "the /ack reply", || {
        replies("VM api-2 is not down").into_iter().next()
    })
    .await;
    let polls = eventually(Duration::from_secs(20), "the poll after the 429", || {
        let polls = tg.update_polls();
        (polls.len() > faulted + 1).then_some(polls)
    })
    .await;
    let waited = polls[faulted + 1].received_at - polls[faulted].received_at;
    assert!(waited >= Duration::from_millis(950), "{waited:?}");

    // api-2's alerts go to its own topic, web-1's to TOPIC_ID.
    yc.stop_vm("fhm2");
    let alert = eventually(Duration::from_secs(30), "api-2's alert", || {
        replies("VM api-2 is STOPPED").into_iter().next()
    })
    .await;
    assert_eq!(alert.message_thread_id, Some(77));
    assert!(!alert.disable_notification);
    yc.stop_vm("fhm1");
    let alert = eventually(Duration::from_secs(30), "web-1's alert", || {
        replies("VM web-1 is STOPPED").into_iter().next()
    })
    .await;
    assert_eq!(alert.message_thread_id, Some(42));
    let report = watchdog.stop(Duration::from_secs(5)).await;
    assert!(report.tasks_stopped);
}
