//! Publishing targets (issue 19): the targets file, Kubernetes Secrets
//! discovered and watched through a fake API server, the static filters,
//! the sinks, and the `/publishing/targets` and `/publishing/test` routes.
//!
//! The routes read no database, so one backend (SQLite) serves them.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use alert_history::routing::{AlertView, Classification, LlmSeverity};
use alert_history::targets::{
    Target, TargetArgs, TargetFormat, TargetSink, TargetSource, Targets, redact_url,
};
use alert_history::{AppState, Config, Parts, Status, Store, router};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use keel_notify::Sink;
use keel_telemetry::Shutdown;
use keel_testkit::FaultConfig;
use keel_testkit::fakes::kube::FakeKube;
use keel_testkit::fakes::pagerduty::{FakePagerDuty, ROUTING_KEY};
use keel_testkit::fakes::slack::FakeSlack;
use serde_json::Value;
use tower::ServiceExt;

const ADMIN: &str = "admin-token";
const READER: &str = "read-token";
const LABEL: (&str, &str) = ("alert-history.io/target", "true");
/// The longest any test waits for a change it caused.
const WAIT: Duration = Duration::from_secs(20);

fn write(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("targets.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn file_args(path: &Path) -> TargetArgs {
    TargetArgs {
        targets_file: Some(path.to_owned()),
        ..TargetArgs::default()
    }
}

fn kube_args(kube: &FakeKube, dir: &Path) -> TargetArgs {
    TargetArgs {
        targets_from_kubernetes: true,
        targets_namespace: Some("alerts".to_owned()),
        kubeconfig: Some(kube.write_kubeconfig(dir)),
        ..TargetArgs::default()
    }
}

/// Waits (bounded) until `done` holds, woken by each change of the set.
async fn until(targets: &Targets, what: &str, done: impl Fn(&Targets) -> bool) {
    let mut changes = targets.subscribe();
    let waited = tokio::time::timeout(WAIT, async {
        loop {
            changes.borrow_and_update();
            if done(targets) {
                return;
            }
            changes.changed().await.expect("targets dropped");
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "{what} within {WAIT:?}: now {:?}, invalid {:?}, discovery {:?}",
        targets.current(),
        targets.invalid(),
        targets.discovery()
    );
}

fn names(targets: &Targets) -> Vec<String> {
    targets.current().iter().map(|t| t.name.clone()).collect()
}

fn alert(name: &str, severity: Option<&str>, namespace: Option<&str>) -> AlertView {
    AlertView {
        event_id: 1,
        fingerprint: "fp".into(),
        alertname: name.into(),
        namespace: namespace.map(str::to_owned),
        severity: severity.map(str::to_owned),
        status: Status::Firing,
        starts_at: 0,
        ends_at: 0,
        labels: BTreeMap::new(),
        annotations: serde_json::Map::new(),
        generator_url: None,
    }
}

fn classification(confidence: f64) -> Classification {
    Classification {
        severity: LlmSeverity::Warning,
        confidence,
        reasoning: String::new(),
        recommendations: Vec::new(),
        model: "m".into(),
        classified_at_ms: 0,
    }
}

// ---------------------------------------------------------------- the file

#[tokio::test]
async fn the_file_parses_and_secrets_never_show() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        &format!(
            r#"
- {{name: oncall, format: pagerduty, api-key: {ROUTING_KEY}, filter-severity: "critical, warning"}}
- name: team-chat
  format: slack
  url: https://hooks.slack.com/services/T000/B000/verysecretwebhookpart1
  filter-namespaces: [prod, staging]
  min-confidence: 0.7
  alert-name-pattern: "Disk.*|Node.*"
- name: incidents
  format: rootly
  token: rootly-s3cret-token
- name: bot
  format: slack
  url: https://slack.example
  token: xoxb-s3cret
  channel: C0123
- name: audit
  format: webhook
  url: https://audit.example/hook?key=querys3cret
"#
        ),
    );
    let args = file_args(&path);
    args.validate().unwrap();
    let targets = Targets::from_config(&args, &Shutdown::new()).await.unwrap();
    assert_eq!(
        names(&targets),
        ["oncall", "team-chat", "incidents", "bot", "audit"]
    );
    let oncall = targets.get("oncall").unwrap();
    assert_eq!(oncall.format, TargetFormat::PagerDuty);
    assert_eq!(oncall.url, "https://events.pagerduty.com");
    assert_eq!(oncall.filter_severity, ["critical", "warning"]);
    assert_eq!(oncall.source, TargetSource::File);
    let chat = targets.get("team-chat").unwrap();
    assert_eq!(chat.filter_namespaces, ["prod", "staging"]);
    assert_eq!(chat.min_confidence, Some(0.7));
    assert_eq!(
        targets.get("incidents").unwrap().url,
        "https://api.rootly.com"
    );
    assert!(targets.get("nope").is_none());

    let secrets = [
        ROUTING_KEY,
        "verysecretwebhookpart1",
        "rootly-s3cret-token",
        "xoxb-s3cret",
        "querys3cret",
    ];
    let debug = format!("{targets:?} {:?}", targets.current());
    let json: Vec<String> = targets
        .current()
        .iter()
        .map(|t| t.to_json().to_string())
        .collect();
    let json = json.join("\n");
    for secret in secrets {
        assert!(!debug.contains(secret), "{secret} in {debug}");
        assert!(!json.contains(secret), "{secret} in {json}");
    }
    assert!(
        json.contains("https://hooks.slack.com/services/T000/B000/***"),
        "{json}"
    );
    assert!(
        json.contains(r#""alert_name_pattern":"Disk.*|Node.*""#),
        "{json}"
    );
    // Every sink is named after its target and keeps the destination's
    // rate limits.
    for t in targets.current().iter() {
        let sink = t.sink().unwrap();
        assert_eq!(sink.name(), t.name);
        assert!(!format!("{sink:?}").contains("s3cret"));
        let limits = sink.rate_limits();
        match &sink {
            TargetSink::Slack(_) => {
                assert_eq!(
                    (limits[0].max(), limits[0].per()),
                    (1, Duration::from_secs(1))
                );
            }
            TargetSink::PagerDuty(_) => {
                assert_eq!(
                    (limits[0].max(), limits[0].per()),
                    (120, Duration::from_secs(60))
                );
            }
            TargetSink::Rootly(_) => assert_eq!(limits[0].max(), 60),
            TargetSink::Webhook(_) => assert!(limits.is_empty()),
        }
    }
}

#[tokio::test]
async fn an_invalid_entry_fails_the_start_naming_the_variable_and_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "- {name: ok, format: webhook, url: https://x.example}\n- {name: bad, format: teams, url: https://x}",
            "entry 2 (bad)",
            "format",
        ),
        (
            "- {name: pd, format: pagerduty, api-key: short}",
            "entry 1 (pd)",
            "api-key",
        ),
        ("- {name: pd, format: pagerduty}", "entry 1 (pd)", "api-key"),
        (
            "- {format: slack, url: https://x.example}",
            "entry 1",
            "`name` is missing",
        ),
        (
            "- {name: s, format: slack, url: https://x.example, filter_severity: critical}",
            "entry 1 (s)",
            "filter_severity",
        ),
        (
            "- {name: s, format: webhook, url: https://x.example, min-confidence: 2}",
            "entry 1 (s)",
            "min-confidence",
        ),
        (
            "- {name: s, format: webhook, url: https://x.example, alert-name-pattern: '('}",
            "entry 1 (s)",
            "alert-name-pattern",
        ),
        (
            "- {name: s, format: slack, url: https://x.example, channel: C1}",
            "entry 1 (s)",
            "channel",
        ),
        (
            "- {name: s, format: webhook, url: 'ftp://x'}",
            "entry 1 (s)",
            "url",
        ),
        (
            "- {name: a, format: webhook, url: https://x.example}\n- {name: a, format: webhook, url: https://y.example}",
            "entry 2 (a)",
            "earlier entry",
        ),
        ("name: not-a-list", "", "YAML list"),
        ("- [", "", "not YAML"),
    ];
    for (text, entry, reason) in cases {
        let path = write(dir.path(), text);
        let err = file_args(&path).validate().unwrap_err();
        assert_eq!(err.field(), "TARGETS_FILE", "{text}");
        assert!(
            err.reason().contains(entry) && err.reason().contains(reason),
            "{text}: {err}"
        );
    }

    // The whole service refuses to start on it, naming the variable.
    let db = support::sqlite().await;
    let mut config = Config::for_database(&db.url);
    config.targets.targets_file = Some(write(
        dir.path(),
        "- {name: bad, format: pagerduty, api-key: s3cret-but-short}",
    ));
    match alert_history::Service::start(&config).await {
        Err(alert_history::Error::Config(e)) => {
            assert_eq!(e.field(), "TARGETS_FILE");
            assert!(e.reason().contains("entry 1 (bad)"), "{e}");
            assert!(!e.reason().contains("s3cret"), "{e}");
        }
        other => panic!("started: {:?}", other.map(|s| s.local_addr())),
    }
    // `--check-config` parses it too.
    let err = config.check().unwrap_err();
    assert_eq!(err.field(), "TARGETS_FILE");
    // A missing file too.
    config.targets.targets_file = Some(dir.path().join("missing.yaml"));
    assert!(
        config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("TARGETS_FILE")
    );
}

#[test]
fn clap_defaults_equal_the_manual_default() {
    use clap::Parser;
    let config = Config::try_parse_from(["alert-history"]).unwrap();
    let defaults = TargetArgs::default();
    assert_eq!(
        config.targets.targets_label_selector,
        defaults.targets_label_selector
    );
    assert_eq!(
        config.targets.targets_from_kubernetes,
        defaults.targets_from_kubernetes
    );
    assert_eq!(config.targets.targets_file, defaults.targets_file);
    assert_eq!(config.targets.targets_namespace, defaults.targets_namespace);
    let config = Config::try_parse_from([
        "alert-history",
        "--targets-from-kubernetes",
        "--targets-namespace",
        "Not_A_Namespace",
    ])
    .unwrap();
    assert!(config.targets.targets_from_kubernetes);
    assert!(
        config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("TARGETS_NAMESPACE")
    );
}

// ---------------------------------------------------------------- filters

#[test]
fn static_filters_and_confidence() {
    let mut t = Target::new("t", TargetFormat::Webhook, "https://x.example");
    assert!(t.wants(&alert("Anything", None, None)));
    t.filter_severity = vec!["critical".into(), "warning".into()];
    assert!(t.wants(&alert("A", Some("Critical"), None)));
    assert!(!t.wants(&alert("A", Some("info"), None)));
    assert!(
        !t.wants(&alert("A", None, None)),
        "no severity label: not wanted"
    );
    t.filter_namespaces = vec!["prod".into()];
    assert!(t.wants(&alert("A", Some("critical"), Some("prod"))));
    assert!(!t.wants(&alert("A", Some("critical"), Some("dev"))));
    assert!(!t.wants(&alert("A", Some("critical"), None)));
    t.alert_name_pattern = Some(regex::Regex::new("^(?:Disk.*)$").unwrap());
    assert!(t.wants(&alert("DiskFull", Some("critical"), Some("prod"))));
    assert!(
        !t.wants(&alert("NodeDiskFull", Some("critical"), Some("prod"))),
        "the pattern matches the whole name"
    );

    // Parsed patterns are anchored the same way.
    let keys: BTreeMap<String, String> = [
        ("format", "webhook"),
        ("url", "https://x.example"),
        ("alert-name-pattern", "Disk.*"),
        ("min-confidence", "0.8"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let parsed = Target::from_keys("p", &keys, TargetSource::File).unwrap();
    assert!(parsed.wants(&alert("DiskFull", None, None)));
    assert!(!parsed.wants(&alert("NodeDiskFull", None, None)));
    assert!(parsed.confident_enough(Some(&classification(0.8))));
    assert!(!parsed.confident_enough(Some(&classification(0.79))));
    assert!(
        parsed.confident_enough(None),
        "an unclassified alert still goes out"
    );
    assert!(t.confident_enough(Some(&classification(0.0))), "no minimum");
}

#[test]
fn credentials_in_urls_are_redacted() {
    assert_eq!(
        redact_url("https://hooks.slack.com/services/T0/B0/abcdefghijklmnopqrstuvwx"),
        "https://hooks.slack.com/services/T0/B0/***"
    );
    assert_eq!(
        redact_url("https://user:pw@h.example/x?token=abc"),
        "https://***:***@h.example/x?token=***"
    );
}

// ---------------------------------------------------------------- Kubernetes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_added_changed_and_removed_take_effect_while_running() {
    let kube = FakeKube::start("alerts").await;
    let dir = tempfile::tempdir().unwrap();
    kube.put_secret(
        "alerts",
        "oncall",
        &[LABEL],
        &[
            ("format", "pagerduty"),
            ("api-key", ROUTING_KEY),
            ("filter-severity", "critical"),
        ],
    );
    // Not selected: no label, or another namespace.
    kube.put_secret("alerts", "unrelated", &[], &[("format", "slack")]);
    kube.put_secret(
        "elsewhere",
        "other",
        &[LABEL],
        &[("format", "webhook"), ("url", "https://x.example")],
    );
    // A file target that a Secret will try to shadow.
    let path = write(
        dir.path(),
        "- {name: audit, format: webhook, url: https://audit.example}",
    );
    let args = TargetArgs {
        targets_file: Some(path),
        ..kube_args(&kube, dir.path())
    };
    let shutdown = Shutdown::new();
    let targets = Targets::from_config(&args, &shutdown).await.unwrap();
    until(&targets, "the listed Secret", |t| t.get("oncall").is_some()).await;
    assert_eq!(names(&targets), ["audit", "oncall"]);
    let oncall = targets.get("oncall").unwrap();
    assert_eq!(
        oncall.source,
        TargetSource::Kubernetes {
            namespace: "alerts".into(),
            secret: "oncall".into()
        }
    );
    assert_eq!(oncall.filter_severity, ["critical"]);
    assert_eq!(targets.discovery().unwrap().status, "ok");

    // Added.
    kube.put_secret(
        "alerts",
        "chat",
        &[LABEL],
        &[
            ("name", "team-chat"),
            ("format", "slack"),
            ("url", "https://hooks.example/services/T/B/s3cret"),
        ],
    );
    until(&targets, "the added Secret", |t| {
        t.get("team-chat").is_some()
    })
    .await;
    // Changed.
    kube.put_secret(
        "alerts",
        "oncall",
        &[LABEL],
        &[
            ("format", "pagerduty"),
            ("api-key", ROUTING_KEY),
            ("filter-severity", "critical,warning"),
        ],
    );
    until(&targets, "the changed Secret", |t| {
        t.get("oncall")
            .is_some_and(|o| o.filter_severity.len() == 2)
    })
    .await;
    // Invalid: skipped, reported, the rest untouched.
    let before = targets.subscribe().borrow().to_owned();
    kube.put_secret(
        "alerts",
        "broken",
        &[LABEL],
        &[("format", "teams"), ("url", "https://x.example")],
    );
    kube.put_secret(
        "alerts",
        "shadow",
        &[LABEL],
        &[
            ("name", "audit"),
            ("format", "webhook"),
            ("url", "https://evil.example"),
        ],
    );
    // Two Secrets naming one target: the Secret name sorting first wins.
    kube.put_secret(
        "alerts",
        "zz-dupe",
        &[LABEL],
        &[
            ("name", "team-chat"),
            ("format", "webhook"),
            ("url", "https://dupe.example"),
        ],
    );
    kube.put_secret(
        "alerts",
        "marker",
        &[LABEL],
        &[("format", "webhook"), ("url", "https://marker.example")],
    );
    until(&targets, "the marker Secret", |t| t.get("marker").is_some()).await;
    assert!(*targets.subscribe().borrow() > before);
    let invalid = targets.invalid();
    assert_eq!(invalid.len(), 3, "{invalid:?}");
    assert!(invalid.iter().any(|i| i.source == "secret alerts/zz-dupe"
        && i.reason.contains("secret alerts/chat")));
    assert_eq!(
        targets.get("team-chat").unwrap().format,
        TargetFormat::Slack
    );
    let mut registry = prometheus_client::registry::Registry::default();
    targets.register_metrics(&mut registry);
    let mut exposed = String::new();
    prometheus_client::encoding::text::encode(&mut exposed, &registry).unwrap();
    assert!(
        exposed.contains("publishing_targets_invalid_total 1"),
        "the broken Secret is counted once: {exposed}"
    );
    assert!(exposed.contains("publishing_targets_discovery_failing 0"));
    assert!(
        invalid
            .iter()
            .any(|i| i.source == "secret alerts/broken" && i.reason.contains("format"))
    );
    assert!(
        invalid
            .iter()
            .any(|i| i.source == "secret alerts/shadow" && i.reason.contains("file"))
    );
    assert_eq!(
        targets.get("audit").unwrap().url,
        "https://audit.example",
        "the file wins"
    );
    // Removed.
    assert!(kube.delete_secret("alerts", "oncall"));
    until(&targets, "the removed Secret", |t| {
        t.get("oncall").is_none()
    })
    .await;
    assert_eq!(names(&targets), ["audit", "team-chat", "marker"]);

    // History compacted under the watch: 410, a new list, nothing missed.
    let lists = kube.secret_lists();
    kube.put_secret_compacted(
        "alerts",
        "late",
        &[LABEL],
        &[("format", "webhook"), ("url", "https://late.example")],
    );
    until(&targets, "the compacted Secret", |t| {
        t.get("late").is_some()
    })
    .await;
    assert!(kube.secret_lists() > lists, "listed again after 410");
    // ... and watches again from the new list.
    kube.server()
        .wait_until(WAIT, |r| {
            r.iter()
                .filter(|r| {
                    r.path.ends_with("/secrets")
                        && r.query.as_deref().is_some_and(|q| q.contains("watch=true"))
                })
                .count()
                >= 2
        })
        .await
        .unwrap();
    assert!(kube.secret_watches() >= 2);

    shutdown.trigger();
    let report = shutdown.drain(Duration::from_secs(5)).await;
    assert!(report.is_clean(), "discovery stops at shutdown: {report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_down_at_start_does_not_stop_the_service() {
    let kube = FakeKube::start("alerts").await;
    kube.server()
        .faults()
        .set(FaultConfig::none().with_errors(1.0, StatusCode::SERVICE_UNAVAILABLE))
        .unwrap();
    kube.put_secret(
        "alerts",
        "oncall",
        &[LABEL],
        &[("format", "pagerduty"), ("api-key", ROUTING_KEY)],
    );
    let dir = tempfile::tempdir().unwrap();
    let args = kube_args(&kube, dir.path());
    let shutdown = Shutdown::new();
    let targets = Targets::from_config(&args, &shutdown).await.unwrap();
    // The second list attempt comes after the first failure was recorded.
    kube.server()
        .wait_until(WAIT, |r| {
            r.iter().filter(|r| r.path.ends_with("/secrets")).count() >= 2
        })
        .await
        .unwrap();
    let discovery = targets.discovery().unwrap();
    assert_eq!(discovery.status, "failing", "{discovery:?}");
    assert!(discovery.error.is_some());
    assert!(targets.current().is_empty());

    // The routes say so too.
    let app = app(Targets::clone(&targets)).await;
    let (status, body) = call(&app, "GET", "/publishing/targets", Some(READER)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["discovery"]["status"], "failing", "{body}");
    assert_eq!(body["discovery"]["namespace"], "alerts");

    // The API server comes back: the Secret takes effect without a restart.
    kube.server().faults().clear();
    until(&targets, "the Secret once the API server is back", |t| {
        t.get("oncall").is_some()
    })
    .await;
    assert_eq!(targets.discovery().unwrap().status, "ok");
    shutdown.trigger();
    shutdown.drain(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn kubernetes_on_without_any_configuration_fails_naming_the_variable() {
    let args = TargetArgs {
        targets_from_kubernetes: true,
        kubeconfig: Some("/nonexistent/kubeconfig".into()),
        ..TargetArgs::default()
    };
    assert_eq!(args.validate().unwrap_err().field(), "KUBECONFIG");
    match Targets::from_config(&args, &Shutdown::new()).await {
        Err(alert_history::Error::Config(e)) => assert_eq!(e.field(), "KUBECONFIG"),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------- routes

async fn app(targets: Targets) -> Router {
    let db = support::sqlite().await;
    let mut config = Config::for_database(&db.url);
    config.api_token = Some(ADMIN.into());
    config.read_token = Some(READER.into());
    let store = Store::connect(&db.url, 2).await.unwrap();
    // The database lives as long as the process (a leaked temp dir).
    std::mem::forget(db);
    let parts = Parts {
        targets,
        ..Parts::default()
    };
    router(AppState::with_parts(store, &config, Default::default(), parts).unwrap())
}

async fn call(app: &Router, method: &str, path: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_notifications_go_through_each_targets_sink() {
    let slack = FakeSlack::start().await;
    let pagerduty = FakePagerDuty::start().await;
    let mut chat = Target::new("chat", TargetFormat::Slack, slack.webhook_url("chat"));
    chat.secret = None;
    let mut oncall = Target::new("oncall", TargetFormat::PagerDuty, pagerduty.base_url());
    oncall.secret = Some(ROUTING_KEY.into());
    // A hook Slack does not know: it refuses with 404 no_service.
    let gone = Target::new(
        "gone",
        TargetFormat::Slack,
        format!("{}/services/T000/BX/unknownhooksecret1", slack.base_url()),
    );
    let app = app(Targets::from_list(vec![chat, oncall, gone])).await;

    let (status, body) = call(&app, "POST", "/publishing/test/chat", Some(ADMIN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["result"], "success");
    assert_eq!(body["format"], "slack");
    let messages = slack.messages();
    assert_eq!(messages.len(), 1);
    assert!(
        messages[0]
            .text
            .as_deref()
            .unwrap_or("")
            .contains("test notification for target chat")
    );

    let (status, body) = call(&app, "POST", "/publishing/test/oncall", Some(ADMIN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let events = pagerduty.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].action, "trigger");
    assert_eq!(events[0].json["routing_key"], ROUTING_KEY);

    let (status, body) = call(&app, "POST", "/publishing/test/gone", Some(ADMIN)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["result"], "failure");
    assert_eq!(body["kind"], "permanent");
    assert_eq!(body["status"], 404);
    assert!(
        body["detail"].as_str().unwrap().contains("no_service"),
        "{body}"
    );
    assert!(!body.to_string().contains("unknownhooksecret1"), "{body}");

    // The destination down: 502 with a retryable reason.
    pagerduty
        .server()
        .faults()
        .set(FaultConfig::none().with_errors(1.0, StatusCode::SERVICE_UNAVAILABLE))
        .unwrap();
    let (status, body) = call(&app, "POST", "/publishing/test/oncall", Some(ADMIN)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["kind"], "retryable");

    let (status, body) = call(&app, "POST", "/publishing/test/nobody", Some(ADMIN)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["detail"].as_str().unwrap().contains("nobody"));
    assert_eq!(slack.messages().len(), 1, "nothing else reached Slack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_check_their_tokens_and_never_show_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        &format!("- {{name: oncall, format: pagerduty, api-key: {ROUTING_KEY}}}"),
    );
    let targets = Targets::from_config(&file_args(&path), &Shutdown::new())
        .await
        .unwrap();
    let app = app(targets.clone()).await;

    for (method, path, reader_ok) in [
        ("GET", "/publishing/targets", true),
        ("POST", "/publishing/targets/refresh", false),
        ("POST", "/publishing/test/oncall", false),
    ] {
        let (status, body) = call(&app, method, path, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
        assert!(
            body["detail"].is_string() && body["error"].is_string(),
            "{body}"
        );
        let (status, _) = call(&app, method, path, Some(READER)).await;
        let expected = if reader_ok {
            StatusCode::OK
        } else {
            StatusCode::UNAUTHORIZED
        };
        assert_eq!(status, expected, "{method} {path} with the read token");
    }

    let (status, body) = call(&app, "GET", "/publishing/targets", Some(ADMIN)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["count"], 1);
    assert_eq!(body["targets"][0]["name"], "oncall");
    assert_eq!(body["targets"][0]["format"], "pagerduty");
    assert_eq!(body["targets"][0]["source"]["kind"], "file");
    assert_eq!(body["targets"][0]["has_secret"], true);
    assert_eq!(body["invalid"], serde_json::json!([]));
    assert!(body["discovery"].is_null());
    assert!(!body.to_string().contains(ROUTING_KEY), "{body}");
    let (_, metrics) = call(&app, "GET", "/metrics", Some(READER)).await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    assert!(
        metrics.contains("alert_history_publishing_targets 1"),
        "{metrics}"
    );
    assert!(metrics.contains("alert_history_publishing_targets_invalid_total 0"));

    // Refresh: the file changed.
    std::fs::write(
        &path,
        format!(
            "- {{name: oncall, format: pagerduty, api-key: {ROUTING_KEY}}}\n- {{name: audit, format: webhook, url: https://audit.example}}"
        ),
    )
    .unwrap();
    let version = *targets.subscribe().borrow();
    let (status, body) = call(&app, "POST", "/publishing/targets/refresh", Some(ADMIN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["targets"], 2);
    assert_eq!(body["changed"], true);
    assert!(*targets.subscribe().borrow() > version);
    assert!(targets.get("audit").is_some());

    // A broken file: refused naming it, the targets in effect kept.
    std::fs::write(&path, "- {name: audit, format: nope}").unwrap();
    let (status, body) = call(&app, "POST", "/publishing/targets/refresh", Some(ADMIN)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("TARGETS_FILE"),
        "{body}"
    );
    assert_eq!(names(&targets), ["oncall", "audit"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_relists_the_secrets() {
    let kube = FakeKube::start("alerts").await;
    let dir = tempfile::tempdir().unwrap();
    let shutdown = Shutdown::new();
    let targets = Targets::from_config(&kube_args(&kube, dir.path()), &shutdown)
        .await
        .unwrap();
    kube.server()
        .wait_until(WAIT, |r| r.iter().any(|r| r.path.ends_with("/secrets")))
        .await
        .unwrap();
    let report = targets.refresh().await.unwrap();
    assert_eq!(report.kubernetes_error, None);
    assert!(kube.secret_lists() >= 2, "refresh lists again");
    // With the API server failing, the refresh says so (502 on the route).
    kube.server()
        .faults()
        .set(FaultConfig::none().with_errors(1.0, StatusCode::INTERNAL_SERVER_ERROR))
        .unwrap();
    let app = app(targets.clone()).await;
    let (status, body) = call(&app, "POST", "/publishing/targets/refresh", Some(ADMIN)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("Secrets"),
        "{body}"
    );
    shutdown.trigger();
    shutdown.drain(Duration::from_secs(5)).await;
}

// ---------------------------------------------------------------- examples

#[tokio::test]
async fn the_deploy_examples_parse() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/alert-history");
    let targets = Targets::from_config(
        &file_args(&deploy.join("targets.example.yaml")),
        &Shutdown::new(),
    )
    .await
    .unwrap();
    assert_eq!(
        names(&targets),
        ["oncall", "team-chat", "incidents", "audit"]
    );

    let text =
        std::fs::read_to_string(deploy.join("kubernetes/target-secret.example.yaml")).unwrap();
    let mut secrets = 0;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let secret: serde_yaml::Value = serde::Deserialize::deserialize(doc).unwrap();
        assert_eq!(
            secret["metadata"]["labels"]["alert-history.io/target"],
            "true"
        );
        let keys: BTreeMap<String, String> =
            serde_yaml::from_value(secret["stringData"].clone()).unwrap();
        let name = secret["metadata"]["name"].as_str().unwrap();
        let source = TargetSource::Kubernetes {
            namespace: "alert-history".into(),
            secret: name.into(),
        };
        Target::from_keys(name, &keys, source).unwrap_or_else(|e| panic!("{name}: {e}"));
        secrets += 1;
    }
    assert_eq!(secrets, 2);

    let rbac = std::fs::read_to_string(deploy.join("kubernetes/rbac.yaml")).unwrap();
    for needle in ["kind: Role", "kind: RoleBinding", "secrets", "\"watch\""] {
        assert!(rbac.contains(needle), "rbac.yaml lacks {needle}");
    }
    let kustomization =
        std::fs::read_to_string(deploy.join("kubernetes/kustomization.yaml")).unwrap();
    assert!(kustomization.contains("rbac.yaml"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_serves_its_file_targets() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "- {name: audit, format: webhook, url: https://audit.example/hook, token: s3cret-token}",
    );
    let db = support::sqlite().await;
    let mut config = Config::for_database(&db.url);
    config.targets.targets_file = Some(path);
    let service = alert_history::Service::start(&config).await.unwrap();
    let body: Value = reqwest::get(format!(
        "http://{}/publishing/targets",
        service.local_addr()
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(body["count"], 1, "{body}");
    assert_eq!(body["targets"][0]["url"], "https://audit.example/hook");
    assert!(!body.to_string().contains("s3cret-token"));
    service.stop(Duration::from_secs(5)).await;
}

#[test]
fn check_config_parses_the_targets_file_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("h.db").display());
    let run = |file: &Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_alert-history"))
            .arg("--check-config")
            .env_clear()
            .env("DATABASE_URL", &db)
            .env("TARGETS_FILE", file)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ),
        )
    };
    let good = write(
        dir.path(),
        "- {name: a, format: webhook, url: https://a.example}",
    );
    let (code, output) = run(&good);
    assert_eq!(code, 0, "{output}");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "- {name: a, format: webhook}").unwrap();
    let (code, output) = run(&bad);
    assert_eq!(code, 64, "{output}");
    assert!(
        output.contains("TARGETS_FILE") && output.contains("entry 1 (a)") && output.contains("url"),
        "{output}"
    );
    assert!(
        !dir.path().join("h.db").exists(),
        "--check-config creates nothing"
    );
}
