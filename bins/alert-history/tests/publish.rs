//! Publishing from the outbox (issue 19) against keel-testkit's PagerDuty
//! and Slack fakes: end to end on both databases, a target that is down
//! and comes back, the synchronous proxy, and (with the binary) SIGKILL
//! between the commit and the publish, and two replicas on one PostgreSQL
//! with one killed mid-run.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use alert_history::{Config, Service};
use keel_testkit::FaultConfig;
use keel_testkit::fakes::pagerduty::{FakePagerDuty, ROUTING_KEY};
use keel_testkit::fakes::slack::FakeSlack;
use serde_json::{Value, json};
use support::{TestDb, firing, payload, resolved};

/// Waits (bounded) until `check` holds; panics naming `what`.
async fn eventually(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn write_targets(dir: &Path, yaml: &str) -> std::path::PathBuf {
    let path = dir.join("targets.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

struct Env {
    service: Service,
    base: String,
    client: reqwest::Client,
    pd: FakePagerDuty,
    slack: FakeSlack,
    _dir: tempfile::TempDir,
}

impl Env {
    async fn start(db: &TestDb) -> Env {
        let pd = FakePagerDuty::start().await;
        let slack = FakeSlack::start().await;
        let dir = tempfile::tempdir().unwrap();
        let file = write_targets(
            dir.path(),
            &format!(
                "- {{name: oncall, format: pagerduty, url: '{}', api-key: {ROUTING_KEY}, \
                 filter-severity: critical}}\n\
                 - {{name: chat, format: slack, url: '{}'}}\n",
                pd.base_url(),
                slack.webhook_url("chat"),
            ),
        );
        let mut config = Config::for_database(&db.url);
        config.targets.targets_file = Some(file);
        config.publish.publish_poll_ms = 100;
        let service = Service::start(&config).await.unwrap();
        let base = format!("http://{}", service.local_addr());
        Env {
            service,
            base,
            client: reqwest::Client::new(),
            pd,
            slack,
            _dir: dir,
        }
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> Value {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Outcomes recorded per (target, status).
    async fn outcomes(&self) -> BTreeMap<(String, String), i64> {
        let stats = self.get("/publishing/stats").await;
        let mut out = BTreeMap::new();
        for (target, t) in stats["targets"].as_object().unwrap() {
            if let Some(last) = t["last_24h"].as_object() {
                for (status, v) in last {
                    out.insert(
                        (target.clone(), status.clone()),
                        v["count"].as_i64().unwrap(),
                    );
                }
            }
        }
        out
    }

    async fn count(&self, target: &str, status: &str) -> i64 {
        self.outcomes()
            .await
            .get(&(target.to_owned(), status.to_owned()))
            .copied()
            .unwrap_or(0)
    }
}

fn crit(name: &str, fp: &str, start: i64) -> Value {
    firing(name, fp, start, &[("severity", "critical")])
}

async fn publishes_each_new_event_once_per_target(db: TestDb) {
    let env = Env::start(&db).await;
    let first = payload(vec![
        crit("DiskFull", "aa00000000000001", 1),
        firing("Slow", "aa00000000000002", 1, &[("severity", "warning")]),
    ]);
    let (status, body) = env.post("/webhook", &first).await;
    assert_eq!(status, 200, "{body}");
    // PagerDuty wants critical only; Slack wants both.
    eventually(
        "both targets to settle",
        Duration::from_secs(20),
        async || {
            env.count("oncall", "success").await == 1 && env.count("chat", "success").await == 2
        },
    )
    .await;
    // Alertmanager redelivers: nothing new is published.
    let (status, _) = env.post("/webhook", &first).await;
    assert_eq!(status, 200);
    let resolve = payload(vec![resolved(
        "DiskFull",
        "aa00000000000001",
        1,
        5,
        &[("severity", "critical")],
    )]);
    env.post("/webhook", &resolve).await;
    eventually("the resolve", Duration::from_secs(20), async || {
        env.count("oncall", "success").await == 2 && env.count("chat", "success").await == 3
    })
    .await;
    let events = env.pd.events();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].action, "trigger");
    assert_eq!(events[1].action, "resolve");
    assert_eq!(
        events[0].dedup_key, "aa00000000000001",
        "the dedup key is the fingerprint"
    );
    assert_eq!(
        events[0].dedup_key, events[1].dedup_key,
        "the resolve closes what the trigger opened"
    );
    assert_eq!(env.pd.open_incidents().len(), 0);
    let slack_text: String = env
        .slack
        .messages()
        .iter()
        .map(|m| format!("{:?} {:?}", m.text, m.blocks))
        .collect();
    assert!(slack_text.contains("DiskFull") && slack_text.contains("Slow"));
    // The alert's publishing history.
    let h = env.get("/alerts/aa00000000000001/publishing").await;
    let rows = h["publishing"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "{h}");
    assert!(rows.iter().all(|r| r["status"] == "success"));
    // Nothing waits in the outbox.
    let stats = env.get("/publishing/stats").await;
    assert_eq!(stats["targets"]["oncall"]["backlog"], 0, "{stats}");
    assert_eq!(stats["targets"]["chat"]["backlog"], 0, "{stats}");
    env.service.stop(Duration::from_secs(2)).await;
}

async fn a_target_down_keeps_its_rows_until_it_is_back(db: TestDb) {
    let env = Env::start(&db).await;
    env.pd
        .server()
        .faults()
        .set(FaultConfig::none().with_errors(1.0, http::StatusCode::SERVICE_UNAVAILABLE))
        .unwrap();
    let alerts: Vec<Value> = (0..6)
        .map(|i| crit(&format!("Down{i}"), &format!("bb{i:014}"), 10 + i))
        .collect();
    for a in &alerts {
        let (status, _) = env.post("/webhook", &payload(vec![a.clone()])).await;
        assert_eq!(status, 200);
    }
    // Slack is up: its rows go; PagerDuty's wait.
    eventually("slack", Duration::from_secs(20), async || {
        env.count("chat", "success").await == 6
    })
    .await;
    let stats = env.get("/publishing/stats").await;
    assert_eq!(stats["targets"]["oncall"]["backlog"], 6, "{stats}");
    assert!(env.pd.events().is_empty());
    // Back up: everything arrives, once each, in the order committed.
    env.pd.server().faults().clear();
    eventually("pagerduty", Duration::from_secs(60), async || {
        env.count("oncall", "success").await == 6
    })
    .await;
    let events = env.pd.events();
    assert_eq!(events.len(), 6, "once each");
    let names: Vec<String> = events
        .iter()
        .map(|e| {
            e.json["payload"]["summary"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    for (i, name) in names.iter().enumerate() {
        assert!(name.contains(&format!("Down{i}")), "in order: {names:?}");
    }
    env.service.stop(Duration::from_secs(2)).await;
}

async fn the_proxy_answers_with_this_deliverys_publishing(db: TestDb) {
    let env = Env::start(&db).await;
    let (status, body) = env
        .post(
            "/webhook/proxy",
            &payload(vec![
                crit("ProxyCrit", "cc00000000000001", 20),
                firing("ProxyInfo", "cc00000000000002", 20, &[("severity", "info")]),
            ]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message"], "processed", "{body}");
    assert_eq!(body["processed_alerts"], 2);
    assert_eq!(body["published_alerts"], 2);
    let results = body["publishing_results"].as_array().unwrap();
    // Critical: PagerDuty and Slack; info: Slack only.
    assert_eq!(results.len(), 3, "{body}");
    assert!(body["processing_time_ms"].as_u64().is_some());
    for key in ["filtered_alerts", "classification_results"] {
        assert!(body.get(key).is_some(), "{key} missing: {body}");
    }
    env.service.stop(Duration::from_secs(2)).await;
}

on_both_backends!(
    publishes_each_new_event_once_per_target,
    a_target_down_keeps_its_rows_until_it_is_back,
    the_proxy_answers_with_this_deliverys_publishing,
    each_mode_classifies_filters_and_publishes_as_documented,
    an_llm_that_is_down_or_slow_does_not_hold_publishing,
    a_delay_rule_holds_and_drops_what_resolved_meanwhile,
    an_acknowledged_alert_is_not_published_until_it_resolves,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_targets_nothing_is_written_to_the_outbox() {
    let db = support::sqlite().await;
    let service = Service::start(&Config::for_database(&db.url))
        .await
        .unwrap();
    let base = format!("http://{}", service.local_addr());
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{base}/webhook"))
        .json(&payload(vec![crit("Quiet", "dd00000000000001", 1)]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let stats: Value = client
        .get(format!("{base}/publishing/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["publishing"], false);
    assert_eq!(stats["targets"], json!({}));
    let backlog = service.state().store().outbox_backlog().await.unwrap();
    assert!(backlog.is_empty());
    service.stop(Duration::from_secs(2)).await;
}

// ---------------------------------------------------------------- the binary

const BIN: &str = env!("CARGO_BIN_EXE_alert-history");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn spawn_bin(url: &str, targets: &Path, id: &str) -> (tokio::process::Child, String) {
    let port = free_port();
    let child = tokio::process::Command::new(BIN)
        .env("DATABASE_URL", url)
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("TARGETS_FILE", targets)
        .env("PUBLISH_LEASE_SECONDS", "5")
        .env("PUBLISH_POLL_MS", "100")
        .env("PUBLISHER_ID", id)
        .env("RUST_LOG", "error")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    eventually(
        "the binary to listen",
        Duration::from_secs(30),
        async || {
            client
                .get(format!("{base}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        },
    )
    .await;
    (child, base)
}

fn pd_targets(dir: &Path, pd: &FakePagerDuty) -> std::path::PathBuf {
    write_targets(
        dir,
        &format!(
            "- {{name: oncall, format: pagerduty, url: '{}', api-key: {ROUTING_KEY}}}\n",
            pd.base_url()
        ),
    )
}

/// Triggers per dedup key.
fn triggers(pd: &FakePagerDuty) -> HashMap<String, usize> {
    let mut n = HashMap::new();
    for e in pd.events() {
        if e.action == "trigger" {
            *n.entry(e.dedup_key).or_default() += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_commit_and_publish_publishes_after_restart_once() {
    for db in [support::sqlite().await, support::postgres().await] {
        let pd = FakePagerDuty::start().await;
        let dir = tempfile::tempdir().unwrap();
        let targets = pd_targets(dir.path(), &pd);
        // PagerDuty refuses everything: the rows are committed, not published.
        pd.server()
            .faults()
            .set(FaultConfig::none().with_errors(1.0, http::StatusCode::INTERNAL_SERVER_ERROR))
            .unwrap();
        let (mut child, base) = spawn_bin(&db.url, &targets, "first").await;
        let client = reqwest::Client::new();
        for i in 0..5 {
            let r = client
                .post(format!("{base}/webhook"))
                .json(&payload(vec![crit(
                    &format!("Killed{i}"),
                    &format!("ee{i:014}"),
                    30 + i,
                )]))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
        child.kill().await.unwrap(); // SIGKILL
        assert!(pd.events().is_empty());
        pd.server().faults().clear();
        let (mut child, _) = spawn_bin(&db.url, &targets, "second").await;
        eventually(
            "the restart to publish",
            Duration::from_secs(60),
            async || triggers(&pd).len() == 5,
        )
        .await;
        // Settled: no more sends come.
        let before = pd.events().len();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(pd.events().len(), before);
        assert!(
            triggers(&pd).values().all(|&n| n == 1),
            "once per target: {:?}",
            triggers(&pd)
        );
        child.kill().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_the_outbox_and_survive_one_killed() {
    let db = support::postgres().await;
    let pd = FakePagerDuty::start().await;
    // Slow answers, so the kill lands mid-publish.
    pd.server()
        .faults()
        .set(FaultConfig::none().with_latency(Duration::from_millis(20), Duration::from_millis(60)))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let targets = pd_targets(dir.path(), &pd);
    let (mut a, base_a) = spawn_bin(&db.url, &targets, "replica-a").await;
    let (mut b, base_b) = spawn_bin(&db.url, &targets, "replica-b").await;
    let client = reqwest::Client::new();
    let n = 60;
    for i in 0..n {
        // Alternating until a is killed mid-run; b takes the rest.
        let base = if i % 2 == 0 && i <= n / 2 {
            &base_a
        } else {
            &base_b
        };
        let r = client
            .post(format!("{base}/webhook"))
            .json(&payload(vec![crit(
                &format!("Shared{i}"),
                &format!("ff{i:014}"),
                40 + i,
            )]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        if i == n / 2 {
            a.kill().await.unwrap(); // SIGKILL mid-run
        }
    }
    // Every alert is published: a's leased rows are taken over when its
    // leases expire. A send the killed replica made but had not settled
    // may repeat (at least once), never more than once more.
    eventually(
        "every alert published",
        Duration::from_secs(90),
        async || triggers(&pd).len() == n as usize,
    )
    .await;
    let counts = triggers(&pd);
    let repeats: usize = counts.values().map(|&c| c - 1).sum();
    assert!(counts.values().all(|&c| c <= 2), "{counts:?}");
    assert!(
        repeats <= 50,
        "repeats only for rows in flight at the kill: {repeats}"
    );
    b.kill().await.unwrap();
}

// ---------------------------------------------------------------- modes, rules, acks

/// A service with one webhook target (every alert) and an LLM fake.
struct Enriched {
    service: Service,
    base: String,
    client: reqwest::Client,
    hook: keel_testkit::fakes::webhook::FakeWebhook,
    llm: keel_testkit::fakes::llm::FakeLlm,
    _dir: tempfile::TempDir,
}

impl Enriched {
    async fn start(db: &TestDb, bound_ms: u64) -> Enriched {
        use keel_testkit::fakes::{llm, webhook};
        let hook = webhook::FakeWebhook::start().await;
        let llm = llm::FakeLlm::start().await;
        let dir = tempfile::tempdir().unwrap();
        let file = write_targets(
            dir.path(),
            &format!(
                "- {{name: archive, format: webhook, url: '{}'}}\n",
                hook.url()
            ),
        );
        let mut config = Config::for_database(&db.url);
        config.targets.targets_file = Some(file);
        config.publish.publish_poll_ms = 50;
        config.classify.llm_url = Some(llm.base_url());
        config.classify.llm_api_key = Some(llm::API_KEY.to_owned());
        config.classify.llm_max_retries = 0;
        config.classify.classify_bound_ms = bound_ms;
        let service = Service::start(&config).await.unwrap();
        let base = format!("http://{}", service.local_addr());
        Enriched {
            service,
            base,
            client: reqwest::Client::new(),
            hook,
            llm,
            _dir: dir,
        }
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// The outcome rows of one alert.
    async fn outcomes(&self, fp: &str) -> Vec<Value> {
        let (_, h) = self.get(&format!("/alerts/{fp}/publishing")).await;
        h["publishing"].as_array().cloned().unwrap_or_default()
    }

    async fn settled(&self, fp: &str) -> Value {
        let mut last = Vec::new();
        eventually(
            &format!("{fp} to settle"),
            Duration::from_secs(20),
            async || {
                last = self.outcomes(fp).await;
                !last.is_empty()
            },
        )
        .await;
        last[0].clone()
    }

    /// The webhook message of one alert, if it was published.
    fn message(&self, fp: &str) -> Option<Value> {
        self.hook.messages().into_iter().find(|m| {
            m["fields"]
                .as_array()
                .is_some_and(|f| f.iter().any(|kv| kv[1] == fp))
        })
    }

    fn field(message: &Value, key: &str) -> Option<String> {
        message["fields"]
            .as_array()?
            .iter()
            .find(|kv| kv[0] == key)
            .and_then(|kv| kv[1].as_str().map(str::to_owned))
    }
}

fn sev(name: &str, fp: &str, start: i64, severity: &str) -> Value {
    firing(name, fp, start, &[("severity", severity)])
}

async fn each_mode_classifies_filters_and_publishes_as_documented(db: TestDb) {
    let env = Enriched::start(&db, 5_000).await;
    // The LLM fake classifies by the severity label; anything else is noise.
    let (status, body) = env
        .post(
            "/proxy/filters/rules",
            &json!({"name": "drop-noise", "target": "*", "action": "deny", "priority": 1,
                    "conditions": {"severity": ["noise"]}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    // enriched (the default): classified, then filtered.
    env.post(
        "/webhook",
        &payload(vec![
            sev("Real", "a100000000000001", 1, "critical"),
            sev("Chatter", "a100000000000002", 1, "whatever"),
        ]),
    )
    .await;
    let real = env.settled("a100000000000001").await;
    assert_eq!(real["status"], "success", "{real}");
    let message = env.message("a100000000000001").unwrap();
    assert_eq!(
        Enriched::field(&message, "classification").as_deref(),
        Some("critical (0.90)"),
        "{message}"
    );
    let noise = env.settled("a100000000000002").await;
    assert_eq!(noise["status"], "filtered", "{noise}");
    assert!(
        noise["detail"].as_str().unwrap().contains("drop-noise"),
        "{noise}"
    );
    assert!(env.message("a100000000000002").is_none());

    // transparent: no LLM, the rule's severity is the label's.
    let calls = env.llm.request_count();
    let (status, _) = env
        .post("/enrichment/mode", &json!({"mode": "transparent"}))
        .await;
    assert_eq!(status, 200);
    env.post(
        "/webhook",
        &payload(vec![sev("Chatter", "a100000000000003", 2, "whatever")]),
    )
    .await;
    assert_eq!(env.settled("a100000000000003").await["status"], "success");
    assert_eq!(env.llm.request_count(), calls, "transparent calls no LLM");
    let message = env.message("a100000000000003").unwrap();
    assert_eq!(Enriched::field(&message, "classification"), None);

    // transparent_with_recommendations: published unfiltered, classified
    // beside (stored for the dashboard).
    env.post(
        "/enrichment/mode",
        &json!({"mode": "transparent_with_recommendations"}),
    )
    .await;
    env.post(
        "/webhook",
        &payload(vec![sev("Chatter", "a100000000000004", 3, "whatever")]),
    )
    .await;
    assert_eq!(env.settled("a100000000000004").await["status"], "success");
    eventually("the recommendation", Duration::from_secs(20), async || {
        let (status, c) = env.get("/classification/a100000000000004").await;
        status == 200 && c.to_string().contains("noise")
    })
    .await;
    env.service.stop(Duration::from_secs(2)).await;
}

async fn an_llm_that_is_down_or_slow_does_not_hold_publishing(db: TestDb) {
    let env = Enriched::start(&db, 300).await;
    // Slower than the bound: the alert goes out unclassified, saying so.
    env.llm.set_latency(Duration::from_secs(3));
    let t0 = tokio::time::Instant::now();
    env.post(
        "/webhook",
        &payload(vec![sev("Slow", "a200000000000001", 1, "critical")]),
    )
    .await;
    assert_eq!(env.settled("a200000000000001").await["status"], "success");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    let message = env.message("a200000000000001").unwrap();
    assert!(
        Enriched::field(&message, "classification")
            .unwrap()
            .starts_with("unclassified"),
        "{message}"
    );
    // Down: the same.
    env.llm.set_latency(Duration::ZERO);
    env.llm
        .server()
        .faults()
        .set(FaultConfig::none().with_errors(1.0, http::StatusCode::BAD_GATEWAY))
        .unwrap();
    env.post(
        "/webhook",
        &payload(vec![sev("Down", "a200000000000002", 1, "critical")]),
    )
    .await;
    assert_eq!(env.settled("a200000000000002").await["status"], "success");
    let message = env.message("a200000000000002").unwrap();
    assert!(
        Enriched::field(&message, "classification")
            .unwrap()
            .starts_with("unclassified")
    );
    env.service.stop(Duration::from_secs(2)).await;
}

async fn a_delay_rule_holds_and_drops_what_resolved_meanwhile(db: TestDb) {
    let env = Enriched::start(&db, 2_000).await;
    env.post("/enrichment/mode", &json!({"mode": "transparent"}))
        .await;
    let (status, body) = env
        .post(
            "/proxy/filters/rules",
            &json!({"name": "hold-flappy", "target": "archive", "action": "delay",
                    "delay_seconds": 2, "priority": 1,
                    "conditions": {"alertname_pattern": "Flappy.*", "status": "firing"}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let t0 = tokio::time::Instant::now();
    env.post(
        "/webhook",
        &payload(vec![
            sev("FlappyA", "a300000000000001", 1, "warning"),
            sev("FlappyB", "a300000000000002", 1, "warning"),
        ]),
    )
    .await;
    // A resolves within the hold; B does not.
    env.post(
        "/webhook",
        &payload(vec![resolved(
            "FlappyA",
            "a300000000000001",
            1,
            2,
            &[("severity", "warning")],
        )]),
    )
    .await;
    eventually("B after its hold", Duration::from_secs(20), async || {
        env.message("a300000000000002").is_some()
    })
    .await;
    assert!(t0.elapsed() >= Duration::from_secs(2), "held for the delay");
    eventually("A's firing dropped", Duration::from_secs(20), async || {
        env.outcomes("a300000000000001")
            .await
            .iter()
            .any(|o| o["status"] == "filtered")
    })
    .await;
    let a = env.outcomes("a300000000000001").await;
    assert!(
        a.iter().any(|o| o["status"] == "filtered"
            && o["detail"]
                .as_str()
                .unwrap()
                .contains("resolved while held")),
        "{a:?}"
    );
    // Only A's resolve went out for A.
    let titles: Vec<String> = env
        .hook
        .messages()
        .iter()
        .map(|m| m["title"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(
        !titles.contains(&"[FIRING] FlappyA".to_owned()),
        "{titles:?}"
    );
    env.service.stop(Duration::from_secs(2)).await;
}

async fn an_acknowledged_alert_is_not_published_until_it_resolves(db: TestDb) {
    let env = Enriched::start(&db, 2_000).await;
    env.post("/enrichment/mode", &json!({"mode": "transparent"}))
        .await;
    // The target is down: the alert waits in its sender, behind the breaker.
    env.hook
        .server()
        .faults()
        .set(FaultConfig::none().with_errors(1.0, http::StatusCode::SERVICE_UNAVAILABLE))
        .unwrap();
    env.post(
        "/webhook",
        &payload(vec![sev("Known", "a400000000000001", 1, "critical")]),
    )
    .await;
    eventually("the breaker to open", Duration::from_secs(20), async || {
        let (_, stats) = env.get("/publishing/stats").await;
        stats["targets"]["archive"]["breaker"] == "open"
    })
    .await;
    let (status, body) = env
        .post(
            "/alerts/a400000000000001/ack",
            &json!({"by": "alice", "reason": "known, fix deploying"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // The dashboard shows it.
    let (_, overview) = env.get("/api/dashboard/overview").await;
    let row = overview["firing"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["fingerprint"] == "a400000000000001")
        .cloned()
        .unwrap();
    assert_eq!(row["ack"]["by"], "alice", "{row}");
    assert_eq!(row["ack"]["active"], true, "{row}");
    eventually(
        "the waiting alert to be dropped",
        Duration::from_secs(20),
        async || {
            env.outcomes("a400000000000001").await.iter().any(|o| {
                o["status"] == "filtered"
                    && o["detail"]
                        .as_str()
                        .unwrap_or("")
                        .contains("acknowledged by alice")
            })
        },
    )
    .await;
    // Back up: the resolve goes out (never suppressed) and ends the ack.
    env.hook.server().faults().clear();
    env.post(
        "/webhook",
        &payload(vec![resolved(
            "Known",
            "a400000000000001",
            1,
            5,
            &[("severity", "critical")],
        )]),
    )
    .await;
    let titles = || -> Vec<String> {
        env.hook
            .messages()
            .iter()
            .map(|m| m["title"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    eventually("the resolve", Duration::from_secs(60), async || {
        titles().contains(&"[RESOLVED] Known".to_owned())
    })
    .await;
    assert!(
        !titles().contains(&"[FIRING] Known".to_owned()),
        "{:?}",
        titles()
    );
    // A new firing episode is published.
    env.post(
        "/webhook",
        &payload(vec![sev("Known", "a400000000000001", 10, "critical")]),
    )
    .await;
    eventually("the new episode", Duration::from_secs(20), async || {
        titles().contains(&"[FIRING] Known".to_owned())
    })
    .await;
    env.service.stop(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_added_changed_and_removed_while_running_steers_publishing() {
    use keel_testkit::fakes::kube::FakeKube;
    use keel_testkit::fakes::webhook::FakeWebhook;
    let db = support::sqlite().await;
    let kube = FakeKube::start("alerts").await;
    let first = FakeWebhook::start().await;
    let second = FakeWebhook::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_database(&db.url);
    config.targets.targets_from_kubernetes = true;
    config.targets.targets_namespace = Some("alerts".to_owned());
    config.targets.kubeconfig = Some(kube.write_kubeconfig(dir.path()));
    config.publish.publish_poll_ms = 50;
    let service = Service::start(&config).await.unwrap();
    let base = format!("http://{}", service.local_addr());
    let client = reqwest::Client::new();
    let post = async |alert: Value| {
        let r = client
            .post(format!("{base}/webhook"))
            .json(&payload(vec![alert]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    };
    let targets = async || -> Value {
        client
            .get(format!("{base}/publishing/targets"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    };
    let label = [("alert-history.io/target", "true")];
    // Added: alerts go to it.
    kube.put_secret(
        "alerts",
        "archive",
        &label,
        &[("format", "webhook"), ("url", &first.url())],
    );
    eventually("the Secret's target", Duration::from_secs(20), async || {
        targets().await["count"] == 1
    })
    .await;
    post(crit("Added", "a500000000000001", 1)).await;
    eventually(
        "published to the first URL",
        Duration::from_secs(20),
        async || first.messages().len() == 1,
    )
    .await;
    // Changed (another URL, warnings only): the new settings apply.
    kube.put_secret(
        "alerts",
        "archive",
        &label,
        &[
            ("format", "webhook"),
            ("url", &second.url()),
            ("filter-severity", "warning"),
        ],
    );
    eventually("the changed target", Duration::from_secs(20), async || {
        targets().await.to_string().contains(&second.url())
    })
    .await;
    post(crit("Critical", "a500000000000002", 2)).await;
    post(sev("Warned", "a500000000000003", 2, "warning")).await;
    eventually(
        "published to the second URL",
        Duration::from_secs(20),
        async || second.messages().len() == 1,
    )
    .await;
    assert_eq!(first.messages().len(), 1, "nothing more to the old URL");
    assert!(second.messages()[0].to_string().contains("Warned"));
    // Removed: new alerts get no rows.
    assert!(kube.delete_secret("alerts", "archive"));
    eventually("no targets", Duration::from_secs(20), async || {
        targets().await["count"] == 0
    })
    .await;
    post(sev("Gone", "a500000000000004", 3, "warning")).await;
    let backlog = service.state().store().outbox_backlog().await.unwrap();
    assert!(backlog.is_empty(), "{backlog:?}");
    assert_eq!(second.messages().len(), 1);
    service.stop(Duration::from_secs(2)).await;
}

/// Decisions that wait for the database must not hold connections the
/// publisher's own loop needs: with two connections and a batch of 50, a
/// decision parked with its connection checked out used to deadlock the
/// pool until its 10 s acquire timeout, and ingest with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_pool_never_deadlocks_publishing_or_ingest() {
    let db = support::postgres().await;
    let hook = keel_testkit::fakes::webhook::FakeWebhook::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_targets(
        dir.path(),
        &format!(
            "- {{name: a, format: webhook, url: '{0}'}}\n- {{name: b, format: webhook, url: '{0}'}}\n",
            hook.url()
        ),
    );
    let mut config = Config::for_database(&db.url);
    config.db_max_connections = 2;
    config.targets.targets_file = Some(file);
    config.publish.publish_poll_ms = 20;
    let service = Service::start(&config).await.unwrap();
    let base = format!("http://{}", service.local_addr());
    let client = reqwest::Client::new();
    let t0 = tokio::time::Instant::now();
    for i in 0..30 {
        let alerts: Vec<Value> = (0..5)
            .map(|k| crit(&format!("Pool{i}_{k}"), &format!("b6{i:07}{k:07}"), i))
            .collect();
        let r = client
            .post(format!("{base}/webhook"))
            .json(&payload(alerts))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    eventually(
        "every alert to both targets",
        Duration::from_secs(30),
        async || hook.messages().len() >= 300,
    )
    .await;
    assert!(
        t0.elapsed() < Duration::from_secs(9),
        "no pool acquire timed out: {:?}",
        t0.elapsed()
    );
    service.stop(Duration::from_secs(2)).await;
}
