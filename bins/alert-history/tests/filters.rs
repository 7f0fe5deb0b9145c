//! Filter rules and acknowledgements (issue 19): the routes, the decision
//! the publisher asks for, a second replica on the same database, and
//! acknowledgements through a firing episode's life; each scenario on
//! SQLite and on PostgreSQL.

mod support;

use std::time::Duration;

use alert_history::filters::{Ack, Filters};
use alert_history::routing::{AlertView, Classification, Decision, LlmSeverity};
use alert_history::{AppState, Config, Parts, Store, parse_webhook, router};
use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use support::{TestDb, at, firing, payload, resolved};
use tower::ServiceExt;

on_both_backends!(
    rules_crud_and_auth,
    invalid_rules_are_422_naming_the_field,
    rules_decide_in_priority_order,
    each_condition_kind,
    the_test_route_evaluates_an_alert,
    a_second_replica_sees_changes_within_the_poll,
    acks_cover_one_firing_episode,
    ack_routes_validate_and_authorise,
    notification_reason_is_stored_with_each_new_event,
);

const ADMIN: &str = "admin-token";
const READER: &str = "reader-token";

/// One replica: a router over its own store and its own [`Filters`].
struct Replica {
    app: Router,
    filters: Filters,
    store: Store,
}

impl Replica {
    async fn start(url: &str) -> Replica {
        let mut config = Config::for_database(url);
        config.api_token = Some(ADMIN.into());
        config.read_token = Some(READER.into());
        config.validate().unwrap();
        let store = Store::connect(url, 4).await.unwrap();
        let filters = Filters::load(&store).await.unwrap();
        let parts = Parts {
            filters: filters.clone(),
            ..Parts::default()
        };
        let state =
            AppState::with_parts(store.clone(), &config, Default::default(), parts).unwrap();
        Replica {
            app: router(state),
            filters,
            store,
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => request
                .header("content-type", "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        }
        .unwrap();
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, value)
    }

    async fn put_rule(&self, rule: Value) -> Value {
        let (status, body) = self
            .call(
                Method::POST,
                "/proxy/filters/rules",
                Some(ADMIN),
                Some(rule),
            )
            .await;
        assert!(status.is_success(), "{status} {body}");
        body
    }

    async fn deliver(&self, alerts: Vec<Value>) {
        let request = Request::post("/webhook")
            .header("content-type", "application/json")
            .body(Body::from(payload(alerts).to_string()))
            .unwrap();
        let response = self.app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
}

/// The view the publisher would get of one alert object.
fn view(alert: Value) -> AlertView {
    let events = parse_webhook(payload(vec![alert]).to_string().as_bytes()).unwrap();
    AlertView::of_new(&events[0])
}

fn classified(severity: LlmSeverity, confidence: f64) -> Classification {
    Classification {
        severity,
        confidence,
        reasoning: "because".into(),
        recommendations: vec![],
        model: "test".into(),
        classified_at_ms: 0,
    }
}

fn deny(rule: &str) -> Decision {
    Decision::Deny { rule: rule.into() }
}

fn ms(minutes: i64) -> i64 {
    chrono::DateTime::parse_from_rfc3339(&at(minutes))
        .unwrap()
        .timestamp_millis()
}

async fn rules_crud_and_auth(db: TestDb) {
    let r = Replica::start(&db.url).await;
    let rule = json!({
        "name": "quiet-staging", "target": "*", "action": "deny", "priority": 10,
        "conditions": {"namespace": ["staging"]}
    });
    for token in [None, Some(READER), Some("wrong")] {
        let (status, body) = r
            .call(
                Method::POST,
                "/proxy/filters/rules",
                token,
                Some(rule.clone()),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert!(body["detail"].is_string() && body["error"].is_string());
    }
    let (status, created) = r
        .call(
            Method::POST,
            "/proxy/filters/rules",
            Some(ADMIN),
            Some(rule.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["name"], "quiet-staging");
    assert_eq!(created["enabled"], true);
    assert_eq!(created["conditions"]["namespace"], json!(["staging"]));

    // Replacing keeps created_at and answers 200.
    let mut replaced = rule.clone();
    replaced["priority"] = json!(5);
    let (status, body) = r
        .call(
            Method::POST,
            "/proxy/filters/rules",
            Some(ADMIN),
            Some(replaced),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["priority"], 5);
    assert_eq!(body["created_at"], created["created_at"]);

    r.put_rule(json!({"name": "a-first", "action": "allow", "priority": -1}))
        .await;
    for token in [None, Some("wrong")] {
        let (status, _) = r
            .call(Method::GET, "/proxy/filters/rules", token, None)
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    for token in [READER, ADMIN] {
        let (status, list) = r
            .call(Method::GET, "/proxy/filters/rules", Some(token), None)
            .await;
        assert_eq!(status, StatusCode::OK);
        let names: Vec<&str> = list["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["a-first", "quiet-staging"]);
        assert_eq!(list["count"], 2);
    }
    let (status, one) = r
        .call(
            Method::GET,
            "/proxy/filters/rules/quiet-staging",
            Some(READER),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["priority"], 5);
    let (status, body) = r
        .call(Method::GET, "/proxy/filters/rules/nope", Some(READER), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["detail"].as_str().unwrap().contains("nope"));

    let (status, _) = r
        .call(
            Method::DELETE,
            "/proxy/filters/rules/quiet-staging",
            Some(READER),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = r
        .call(
            Method::DELETE,
            "/proxy/filters/rules/unknown",
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].is_string());
    let (status, _) = r
        .call(
            Method::DELETE,
            "/proxy/filters/rules/quiet-staging",
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<String> = r
        .filters
        .rules()
        .rules()
        .iter()
        .map(|r| r.name().to_owned())
        .collect();
    assert_eq!(names, ["a-first"]);

    // Stored: a restart (a fresh load) has the same rules.
    let again = Filters::load(&r.store).await.unwrap();
    assert_eq!(again.rules().rules().len(), 1);
}

async fn invalid_rules_are_422_naming_the_field(db: TestDb) {
    let r = Replica::start(&db.url).await;
    for (rule, field) in [
        (json!({"action": "deny"}), "name"),
        (
            json!({"name": "x", "action": "deny", "colour": "red"}),
            "colour",
        ),
        (json!({"name": "x", "action": "maybe"}), "action"),
        (
            json!({"name": "x", "action": "deny", "conditions": {"labelz": {}}}),
            "conditions.labelz",
        ),
        (
            json!({"name": "x", "action": "deny", "conditions": {"alertname_pattern": "Disk(("}}),
            "conditions.alertname_pattern",
        ),
        (json!({"name": "x", "action": "delay"}), "delay_seconds"),
        (
            json!({"name": "x", "action": "delay", "delay_seconds": 0}),
            "delay_seconds",
        ),
        (
            json!({"name": "x", "action": "delay", "delay_seconds": -5}),
            "delay_seconds",
        ),
        (
            json!({"name": "x", "action": "delay", "delay_seconds": 86_401}),
            "delay_seconds",
        ),
        (json!({"name": "x y", "action": "deny"}), "name"),
        (json!({"name": "x".repeat(129), "action": "deny"}), "name"),
        (
            json!({"name": "x", "action": "deny", "target": ""}),
            "target",
        ),
        (
            json!({"name": "x", "action": "deny", "priority": 1_000_001}),
            "priority",
        ),
        (
            json!({"name": "x", "action": "deny", "conditions": {"min_confidence": 1.2}}),
            "conditions.min_confidence",
        ),
        (
            json!({"name": "x", "action": "deny", "conditions": {"status": "pending"}}),
            "conditions.status",
        ),
        (
            json!({"name": "x", "action": "deny", "conditions": {"severity": vec!["a"; 65]}}),
            "conditions.severity",
        ),
    ] {
        let (status, body) = r
            .call(
                Method::POST,
                "/proxy/filters/rules",
                Some(ADMIN),
                Some(rule.clone()),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{rule}: {body}");
        assert_eq!(body["field"], field, "{rule}: {body}");
        assert!(
            body["error"].is_string() && body["detail"].is_array(),
            "{body}"
        );
    }
    let request = Request::post("/proxy/filters/rules")
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(Body::from("{not json"))
        .unwrap();
    let response = r.app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(r.filters.rules().rules().is_empty());
}

async fn rules_decide_in_priority_order(db: TestDb) {
    let r = Replica::start(&db.url).await;
    let disk = view(firing("DiskFull", "f1", 0, &[("severity", "critical")]));
    assert_eq!(r.filters.decide(&disk, None, "oncall"), Decision::Allow);

    r.put_rule(json!({"name": "deny-all", "action": "deny", "priority": 100}))
        .await;
    assert_eq!(r.filters.decide(&disk, None, "oncall"), deny("deny-all"));
    // A lower priority is evaluated first; an allow ends the evaluation.
    r.put_rule(
        json!({"name": "allow-critical", "action": "allow", "priority": 50,
        "conditions": {"severity": ["critical"]}}),
    )
    .await;
    assert_eq!(r.filters.decide(&disk, None, "oncall"), Decision::Allow);
    // Ties go by name.
    r.put_rule(
        json!({"name": "a-delay", "action": "delay", "delay_seconds": 300,
        "priority": 50}),
    )
    .await;
    assert_eq!(
        r.filters.decide(&disk, None, "oncall"),
        Decision::Delay {
            rule: "a-delay".into(),
            delay: Duration::from_secs(300)
        }
    );
    // A disabled rule is skipped.
    r.put_rule(
        json!({"name": "a-delay", "action": "delay", "delay_seconds": 300,
        "priority": 50, "enabled": false}),
    )
    .await;
    assert_eq!(r.filters.decide(&disk, None, "oncall"), Decision::Allow);
    // A target-specific rule applies to its target only; "*" to all.
    r.put_rule(
        json!({"name": "slack-only", "target": "slack", "action": "deny",
        "priority": 0}),
    )
    .await;
    assert_eq!(r.filters.decide(&disk, None, "slack"), deny("slack-only"));
    assert_eq!(r.filters.decide(&disk, None, "oncall"), Decision::Allow);
    let warning = view(firing("DiskFull", "f2", 0, &[("severity", "warning")]));
    assert_eq!(r.filters.decide(&warning, None, "oncall"), deny("deny-all"));
    assert_eq!(
        r.filters.decide(&warning, None, "slack"),
        deny("slack-only")
    );

    let order: Vec<String> = r
        .filters
        .rules()
        .rules()
        .iter()
        .map(|r| r.name().to_owned())
        .collect();
    assert_eq!(
        order,
        ["slack-only", "a-delay", "allow-critical", "deny-all"]
    );
}

/// An alert, its classification, and whether the rule matches it.
type Case = (Value, Option<Classification>, bool);

async fn each_condition_kind(db: TestDb) {
    let r = Replica::start(&db.url).await;
    let cases: Vec<(Value, Vec<Case>)> = vec![
        (
            json!({"labels": {"team": "db", "env": "prod"}}),
            vec![
                (
                    firing("A", "f", 0, &[("team", "db"), ("env", "prod")]),
                    None,
                    true,
                ),
                (firing("A", "f", 0, &[("team", "db")]), None, false),
                (
                    firing("A", "f", 0, &[("team", "db"), ("env", "dev")]),
                    None,
                    false,
                ),
            ],
        ),
        (
            json!({"severity": ["critical", "Noise"]}),
            vec![
                (firing("A", "f", 0, &[("severity", "critical")]), None, true),
                (firing("A", "f", 0, &[("severity", "Critical")]), None, true),
                (firing("A", "f", 0, &[("severity", "info")]), None, false),
                (firing("A", "f", 0, &[]), None, false),
                // The classification's severity wins over the label.
                (
                    firing("A", "f", 0, &[("severity", "critical")]),
                    Some(classified(LlmSeverity::Info, 0.9)),
                    false,
                ),
                (
                    firing("A", "f", 0, &[("severity", "info")]),
                    Some(classified(LlmSeverity::Noise, 0.9)),
                    true,
                ),
            ],
        ),
        (
            json!({"namespace": ["staging", "dev"]}),
            vec![
                (firing("A", "f", 0, &[("namespace", "dev")]), None, true),
                (firing("A", "f", 0, &[("namespace", "prod")]), None, false),
                (firing("A", "f", 0, &[]), None, false),
            ],
        ),
        (
            json!({"min_confidence": 0.5, "max_confidence": 0.8}),
            vec![
                (firing("A", "f", 0, &[]), None, false),
                (
                    firing("A", "f", 0, &[]),
                    Some(classified(LlmSeverity::Info, 0.5)),
                    true,
                ),
                (
                    firing("A", "f", 0, &[]),
                    Some(classified(LlmSeverity::Info, 0.8)),
                    true,
                ),
                (
                    firing("A", "f", 0, &[]),
                    Some(classified(LlmSeverity::Info, 0.49)),
                    false,
                ),
                (
                    firing("A", "f", 0, &[]),
                    Some(classified(LlmSeverity::Info, 0.81)),
                    false,
                ),
            ],
        ),
        (
            json!({"min_confidence": 0.9}),
            vec![
                (firing("A", "f", 0, &[]), None, false),
                (
                    firing("A", "f", 0, &[]),
                    Some(classified(LlmSeverity::Noise, 0.95)),
                    true,
                ),
            ],
        ),
        (
            json!({"alertname_pattern": "Kube(Pod|Node).*"}),
            vec![
                (firing("KubePodCrashLooping", "f", 0, &[]), None, true),
                (firing("KubeNodeNotReady", "f", 0, &[]), None, true),
                (firing("XKubePodCrashLooping", "f", 0, &[]), None, false),
                (firing("KubeJobFailed", "f", 0, &[]), None, false),
            ],
        ),
        (
            json!({"status": "resolved"}),
            vec![
                (firing("A", "f", 0, &[]), None, false),
                (resolved("A", "f", 0, 5, &[]), None, true),
            ],
        ),
        (json!({}), vec![(firing("A", "f", 0, &[]), None, true)]),
    ];
    for (conditions, alerts) in cases {
        r.put_rule(json!({"name": "only", "action": "deny", "conditions": conditions}))
            .await;
        for (alert, classification, matches) in alerts {
            let expected = if matches {
                deny("only")
            } else {
                Decision::Allow
            };
            assert_eq!(
                r.filters
                    .decide(&view(alert.clone()), classification.as_ref(), "t"),
                expected,
                "{conditions} on {alert} with {classification:?}"
            );
        }
    }
}

async fn the_test_route_evaluates_an_alert(db: TestDb) {
    let r = Replica::start(&db.url).await;
    r.put_rule(
        json!({"name": "hold-noise", "action": "delay", "delay_seconds": 120,
        "conditions": {"severity": ["noise"], "min_confidence": 0.7}}),
    )
    .await;
    let request = json!({
        "alert": {"labels": {"alertname": "A", "severity": "warning"}},
        "classification": {"severity": "noise", "confidence": 0.9},
        "target": "slack",
    });
    let (status, body) = r
        .call(
            Method::POST,
            "/proxy/filters/test",
            Some(READER),
            Some(request.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"decision": "delay", "rule": "hold-noise", "delay_seconds": 120})
    );
    let unclassified = json!({"alert": {"labels": {"alertname": "A"}}, "target": "slack"});
    let (_, body) = r
        .call(
            Method::POST,
            "/proxy/filters/test",
            Some(READER),
            Some(unclassified),
        )
        .await;
    assert_eq!(body["decision"], "allow");
    let (status, _) = r
        .call(Method::POST, "/proxy/filters/test", None, Some(request))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = r
        .call(
            Method::POST,
            "/proxy/filters/test",
            Some(READER),
            Some(json!({"alert": {}, "target": "t", "extra": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["field"], "extra");
}

async fn a_second_replica_sees_changes_within_the_poll(db: TestDb) {
    let a = Replica::start(&db.url).await;
    let b = Replica::start(&db.url).await;
    let alert = view(firing("A", "f", 0, &[("namespace", "batch")]));

    // reload_now: B keeps its cache until it asks.
    a.put_rule(json!({"name": "no-batch", "action": "deny",
        "conditions": {"namespace": ["batch"]}}))
        .await;
    assert_eq!(a.filters.decide(&alert, None, "t"), deny("no-batch"));
    assert_eq!(b.filters.decide(&alert, None, "t"), Decision::Allow);
    assert!(b.filters.reload_now().await.unwrap());
    assert_eq!(b.filters.decide(&alert, None, "t"), deny("no-batch"));
    assert!(!b.filters.reload_now().await.unwrap());

    // The poller: B applies A's change by itself, within its interval.
    let stop = keel_telemetry::CancellationToken::new();
    let poll = tokio::spawn(
        b.filters
            .clone()
            .watch(Duration::from_millis(50), stop.clone()),
    );
    let mut version = b.filters.rules_version();
    let before = *version.borrow_and_update();
    let (status, _) = a
        .call(
            Method::DELETE,
            "/proxy/filters/rules/no-batch",
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::timeout(Duration::from_secs(10), version.wait_for(|v| *v > before))
        .await
        .expect("B reloads within a few poll intervals")
        .unwrap();
    assert_eq!(b.filters.decide(&alert, None, "t"), Decision::Allow);
    stop.cancel();
    poll.await.unwrap();

    // Acknowledgements too: B's cached "not acked" goes once A acks.
    a.deliver(vec![firing("A", "fp-shared", 0, &[])]).await;
    let shared = view(firing("A", "fp-shared", 0, &[]));
    assert_eq!(b.filters.acked(&shared).await.unwrap(), None);
    let (status, _) = a
        .call(
            Method::POST,
            "/alerts/fp-shared/ack",
            Some(ADMIN),
            Some(json!({"by": "ann", "reason": "known"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(a.filters.acked(&shared).await.unwrap().is_some());
    assert!(b.filters.reload_now().await.unwrap());
    assert_eq!(b.filters.acked(&shared).await.unwrap().unwrap().by, "ann");
}

async fn acks_cover_one_firing_episode(db: TestDb) {
    let r = Replica::start(&db.url).await;
    let fp = "ack0000000000001";
    r.deliver(vec![firing("DiskFull", fp, 0, &[])]).await;
    let episode = view(firing("DiskFull", fp, 0, &[]));
    assert_eq!(r.filters.acked(&episode).await.unwrap(), None);

    let (status, ack) = r
        .call(
            Method::POST,
            &format!("/alerts/{fp}/ack"),
            Some(ADMIN),
            Some(json!({"by": "ann", "reason": "disk being replaced"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{ack}");
    assert_eq!(ack["by"], "ann");
    assert_eq!(ack["starts_at"], at(0));
    assert_eq!(ack["active"], true);

    // Covered: firing events of this episode (a redelivery too).
    let covered: Ack = r.filters.acked(&episode).await.unwrap().unwrap();
    assert_eq!(
        (
            covered.by.as_str(),
            covered.reason.as_str(),
            covered.starts_at
        ),
        ("ann", "disk being replaced", ms(0))
    );
    // Not covered: the resolve (it must go out), another alert, a later
    // episode.
    let resolve = view(resolved("DiskFull", fp, 0, 10, &[]));
    assert_eq!(r.filters.acked(&resolve).await.unwrap(), None);
    assert_eq!(
        r.filters
            .acked(&view(firing("DiskFull", "other", 0, &[])))
            .await
            .unwrap(),
        None
    );
    let later = view(firing("DiskFull", fp, 20, &[]));
    assert_eq!(r.filters.acked(&later).await.unwrap(), None);

    // Shown with the alert and on its own route.
    let (status, alert) = r
        .call(Method::GET, &format!("/alerts/{fp}"), Some(READER), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(alert["ack"]["by"], "ann");
    assert_eq!(alert["ack"]["reason"], "disk being replaced");
    assert_eq!(alert["ack"]["active"], true);
    let (status, got) = r
        .call(
            Method::GET,
            &format!("/alerts/{fp}/ack"),
            Some(READER),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["by"], "ann");

    // A firing event clears nothing; the episode's resolve ends the ack.
    assert!(!r.filters.resolve_clears_ack(&episode).await.unwrap());
    r.deliver(vec![resolved("DiskFull", fp, 0, 10, &[])]).await;
    assert!(r.filters.resolve_clears_ack(&resolve).await.unwrap());
    assert!(!r.filters.resolve_clears_ack(&resolve).await.unwrap());
    assert_eq!(r.filters.acked(&episode).await.unwrap(), None);
    let (status, _) = r
        .call(
            Method::GET,
            &format!("/alerts/{fp}/ack"),
            Some(READER),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, alert) = r
        .call(Method::GET, &format!("/alerts/{fp}"), Some(READER), None)
        .await;
    assert_eq!(alert["ack"], Value::Null);

    // A resolved alert has nothing to acknowledge.
    let (status, body) = r
        .call(
            Method::POST,
            &format!("/alerts/{fp}/ack"),
            Some(ADMIN),
            Some(json!({"by": "ann", "reason": "late"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // A new episode: acknowledged afresh; the old episode's resolve (a
    // late redelivery) does not end it; DELETE does.
    r.deliver(vec![firing("DiskFull", fp, 20, &[])]).await;
    let (status, _) = r
        .call(
            Method::POST,
            &format!("/alerts/{fp}/ack"),
            Some(ADMIN),
            Some(json!({"by": "bob", "reason": "again"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(r.filters.acked(&later).await.unwrap().unwrap().by, "bob");
    assert_eq!(r.filters.acked(&episode).await.unwrap(), None);
    assert!(!r.filters.resolve_clears_ack(&resolve).await.unwrap());
    assert!(r.filters.acked(&later).await.unwrap().is_some());
    let (status, _) = r
        .call(
            Method::DELETE,
            &format!("/alerts/{fp}/ack"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(r.filters.acked(&later).await.unwrap(), None);
    let (status, body) = r
        .call(
            Method::DELETE,
            &format!("/alerts/{fp}/ack"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["detail"].is_string());
}

async fn ack_routes_validate_and_authorise(db: TestDb) {
    let r = Replica::start(&db.url).await;
    let fp = "ack0000000000002";
    r.deliver(vec![firing("A", fp, 0, &[])]).await;
    let path = format!("/alerts/{fp}/ack");
    let good = json!({"by": "ann", "reason": "known"});
    for token in [None, Some(READER)] {
        let (status, _) = r.call(Method::POST, &path, token, Some(good.clone())).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = r.call(Method::DELETE, &path, token, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, _) = r.call(Method::GET, &path, None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, body) = r
        .call(
            Method::POST,
            "/alerts/unknown-fp/ack",
            Some(ADMIN),
            Some(good.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["detail"].as_str().unwrap().contains("unknown-fp"));
    for (body, field) in [
        (json!({"reason": "x"}), "by"),
        (json!({"by": "ann"}), "reason"),
        (json!({"by": "  ", "reason": "x"}), "by"),
        (json!({"by": "a".repeat(129), "reason": "x"}), "by"),
        (json!({"by": "ann", "reason": "x".repeat(1025)}), "reason"),
        (
            json!({"by": "ann", "reason": "x", "until": "never"}),
            "until",
        ),
    ] {
        let (status, answer) = r
            .call(Method::POST, &path, Some(ADMIN), Some(body.clone()))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
        assert_eq!(answer["field"], field, "{body}: {answer}");
    }
    assert_eq!(
        r.filters
            .acked(&view(firing("A", fp, 0, &[])))
            .await
            .unwrap(),
        None
    );
}

/// Alertmanager 0.33+'s top-level `notification_reason` is stored with each
/// event the delivery first stores; a redelivery does not change it; a
/// delivery without it (older Alertmanager) or with a non-string stores
/// none and is accepted all the same.
async fn notification_reason_is_stored_with_each_new_event(db: TestDb) {
    let r = Replica::start(&db.url).await;
    let send = |alerts: Vec<Value>, reason: Value| {
        let mut body = payload(alerts);
        if !reason.is_null() {
            body["notification_reason"] = reason;
        }
        body
    };
    let post = |body: Value| {
        let app = r.app.clone();
        async move {
            let request = Request::post("/webhook")
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap();
            let response = app.oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
        }
    };
    post(send(
        vec![firing("A", "nr1", 0, &[]), firing("A", "nr2", 0, &[])],
        json!("first notification"),
    ))
    .await;
    post(send(
        vec![firing("A", "nr1", 0, &[]), firing("A", "nr3", 1, &[])],
        json!("repeat interval elapsed"),
    ))
    .await;
    post(send(vec![resolved("A", "nr1", 0, 5, &[])], Value::Null)).await;
    post(send(vec![resolved("A", "nr2", 0, 5, &[])], json!(42))).await;
    let expected = [
        ("nr1", "firing", Some("first notification")),
        ("nr1", "resolved", None),
        ("nr2", "firing", Some("first notification")),
        ("nr2", "resolved", None),
        ("nr3", "firing", Some("repeat interval elapsed")),
    ];
    let sql = "SELECT fingerprint, status, notification_reason FROM alert_events \
               ORDER BY fingerprint, status";
    let rows: Vec<(String, String, Option<String>)> = if db.url.starts_with("sqlite") {
        let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
        sqlx::query_as(sql).fetch_all(&pool).await.unwrap()
    } else {
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        sqlx::query_as(sql).fetch_all(&pool).await.unwrap()
    };
    let rows: Vec<(&str, &str, Option<&str>)> = rows
        .iter()
        .map(|(f, s, r)| (f.as_str(), s.as_str(), r.as_deref()))
        .collect();
    assert_eq!(rows, expected);
}
