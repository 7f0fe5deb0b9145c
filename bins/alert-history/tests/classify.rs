//! Enrichment modes and LLM classification (issue 19): the mode's
//! resolution order and Redis sharing, strict answers, the cache (memory
//! and Redis), single flight, the publishing bound, 429s, the endpoints and
//! their auth, the dashboard's recommendations; against the fake LLM, real
//! Redis, and both databases where something is stored.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use alert_history::classify::{ClassifyArgs, Enrichment, EnrichmentMode, ModeSource};
use alert_history::routing::{AlertView, LlmSeverity};
use alert_history::{AppState, Config, Parts, Status, Store, router};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use keel_testkit::fakes::llm::{API_KEY, FakeLlm, LlmAnswer};
use keel_testkit::services::RedisPrefix;
use serde_json::{Value, json};
use support::{TestDb, firing, payload};
use tower::ServiceExt;

const ADMIN: &str = "admin-token";
const READ: &str = "read-token";

struct App {
    app: Router,
    state: AppState,
    enrichment: Enrichment,
    _db: TestDb,
}

fn llm_args(fake: &FakeLlm) -> ClassifyArgs {
    ClassifyArgs {
        llm_url: Some(fake.base_url()),
        llm_api_key: Some(API_KEY.to_owned()),
        llm_model: "fake-model".to_owned(),
        llm_timeout_seconds: 5,
        llm_max_retries: 2,
        ..ClassifyArgs::default()
    }
}

async fn app(db: TestDb, args: ClassifyArgs) -> App {
    let mut config = Config::for_database(&db.url);
    config.classify = args;
    config.api_token = Some(ADMIN.to_owned());
    config.read_token = Some(READ.to_owned());
    config.validate().unwrap();
    let store = Store::connect(&db.url, 4).await.unwrap();
    let enrichment = Enrichment::from_config(&config.classify, &store)
        .await
        .unwrap();
    let parts = Parts {
        enrichment: enrichment.clone(),
        ..Parts::default()
    };
    let state = AppState::with_parts(store, &config, Default::default(), parts).unwrap();
    App {
        app: router(state.clone()),
        state,
        enrichment,
        _db: db,
    }
}

impl App {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            request = request.header("authorization", format!("Bearer {t}"));
        }
        let request = request
            .header("content-type", "application/json")
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .unwrap();
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, value)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call("GET", path, Some(READ), None).await
    }

    async fn admin(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call("POST", path, Some(ADMIN), Some(body)).await
    }

    /// Stores a firing alert `fp` with a severity label.
    async fn deliver(&self, name: &str, fp: &str, severity: &str) {
        let (status, body) = self
            .call(
                "POST",
                "/webhook",
                None,
                Some(payload(vec![firing(
                    name,
                    fp,
                    0,
                    &[("severity", severity), ("namespace", "prod")],
                )])),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    async fn stats(&self) -> Value {
        let (status, body) = self.get("/classification/stats").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }
}

fn view(fp: &str, severity: &str) -> AlertView {
    let labels: BTreeMap<String, String> = [("alertname", "DiskFull"), ("severity", severity)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    AlertView {
        event_id: 0,
        fingerprint: fp.to_owned(),
        alertname: "DiskFull".to_owned(),
        namespace: Some("prod".to_owned()),
        severity: Some(severity.to_owned()),
        status: Status::Firing,
        starts_at: 1_767_225_600_000,
        ends_at: 0,
        labels,
        annotations: serde_json::Map::new(),
        generator_url: None,
    }
}

const LONG: Duration = Duration::from_secs(10);

// ------------------------------------------------------------ modes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode_resolution_without_redis_is_memory_then_env_then_default() {
    let a = app(support::sqlite().await, ClassifyArgs::default()).await;
    let (status, body) = a.get("/enrichment/mode").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["mode"], "enriched");
    assert_eq!(body["source"], "default");
    // No LLM: enriched behaves as transparent, and says so.
    assert_eq!(body["effective_mode"], "transparent");
    assert!(body["classification"].as_str().unwrap().starts_with("off"));
    assert_eq!(a.enrichment.mode().await, EnrichmentMode::Transparent);

    let env = app(
        support::sqlite().await,
        ClassifyArgs {
            enrichment_mode: Some(EnrichmentMode::TransparentWithRecommendations),
            ..ClassifyArgs::default()
        },
    )
    .await;
    let (_, body) = env.get("/enrichment/mode").await;
    assert_eq!(body["mode"], "transparent_with_recommendations");
    assert_eq!(body["source"], "env");

    // POST needs the admin token and a known mode.
    let set = json!({"mode": "transparent"});
    let (status, _) = env
        .call("POST", "/enrichment/mode", Some(READ), Some(set.clone()))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = env.admin("/enrichment/mode", json!({"mode": "loud"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["detail"].is_string() && body["error"].is_string());
    let (status, body) = env.admin("/enrichment/mode", set).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["written_to"], "memory");
    let (_, body) = env.get("/enrichment/mode").await;
    assert_eq!(
        (&body["mode"], &body["source"]),
        (&json!("transparent"), &json!("memory"))
    );
    // Reads need the read token.
    let (status, _) = env.call("GET", "/enrichment/mode", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mode_set_through_redis_is_seen_by_every_replica_at_once() {
    let redis = RedisPrefix::new().await;
    let args = ClassifyArgs {
        redis_url: Some(redis.url().to_owned()),
        redis_key_prefix: redis.prefix().to_owned(),
        enrichment_mode: Some(EnrichmentMode::Transparent),
        ..ClassifyArgs::default()
    };
    let a = app(support::sqlite().await, args.clone()).await;
    let b = app(support::sqlite().await, args).await;
    let (_, body) = b.get("/enrichment/mode").await;
    assert_eq!(
        (&body["mode"], &body["source"]),
        (&json!("transparent"), &json!("env"))
    );
    assert_eq!(body["redis"], "ok");

    let (status, body) = a
        .admin(
            "/enrichment/mode",
            json!({"mode": "transparent_with_recommendations"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["written_to"], "redis");
    let (_, body) = b.get("/enrichment/mode").await;
    assert_eq!(body["mode"], "transparent_with_recommendations");
    assert_eq!(body["source"], "redis");
    assert_eq!(
        b.enrichment.mode().await,
        EnrichmentMode::TransparentWithRecommendations
    );
    // The key is the shared truth: a change made in Redis directly wins
    // over this replica's memory.
    let mut conn = redis.connection().await.unwrap();
    let key = redis.key("enrichment:mode");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("enriched")
        .query_async(&mut conn)
        .await
        .unwrap();
    let reading = a.enrichment.mode_reading().await;
    assert_eq!(
        (reading.mode, reading.source),
        (EnrichmentMode::Enriched, ModeSource::Redis)
    );
    redis.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_falls_back_says_so_and_never_fails_a_webhook() {
    // Nothing listens on port 1.
    let a = app(
        support::sqlite().await,
        ClassifyArgs {
            redis_url: Some("redis://127.0.0.1:1/0".to_owned()),
            enrichment_mode: Some(EnrichmentMode::Transparent),
            ..ClassifyArgs::default()
        },
    )
    .await;
    let (status, body) = a.get("/enrichment/mode").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (&body["mode"], &body["source"]),
        (&json!("transparent"), &json!("env"))
    );
    assert_eq!(body["redis"], "unavailable");
    assert!(body["redis_error"].is_string());
    // A change only this replica would see is refused, not half-made.
    let (status, body) = a
        .admin("/enrichment/mode", json!({"mode": "enriched"}))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(a.enrichment.mode().await, EnrichmentMode::Transparent);
    // After an error Redis is left alone for a few seconds: reads answer
    // at once from memory/env.
    let started = tokio::time::Instant::now();
    for _ in 0..20 {
        assert_eq!(a.enrichment.mode().await, EnrichmentMode::Transparent);
    }
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    a.deliver("DiskFull", "fp-redis-down", "critical").await;
}

// ------------------------------------------------------------ classification

async fn classification_is_validated_stored_and_cached(db: TestDb) {
    let fake = FakeLlm::start().await;
    let a = app(db, llm_args(&fake)).await;
    let e = &a.enrichment;
    assert_eq!(e.mode().await, EnrichmentMode::Enriched);

    let c = e
        .classify_bounded(&view("fp-1", "critical"), LONG)
        .await
        .unwrap();
    assert_eq!(c.severity, LlmSeverity::Critical);
    assert_eq!(c.confidence, 0.9);
    assert_eq!(c.model, "fake-model");
    assert_eq!(c.recommendations, vec!["Investigate DiskFull".to_owned()]);
    assert_eq!(e.stored("fp-1").await, Some(c.clone()));
    // The request: the model, a system prompt, the alert as JSON, JSON mode,
    // temperature 0, the key.
    let sent = &fake.completions()[0];
    assert_eq!(sent["model"], "fake-model");
    assert_eq!(sent["response_format"]["type"], "json_object");
    assert_eq!(sent["temperature"], 0);
    assert_eq!(sent["messages"][0]["role"], "system");
    let user: Value =
        serde_json::from_str(sent["messages"][1]["content"].as_str().unwrap()).unwrap();
    assert_eq!(user["labels"]["severity"], "critical");

    // A cache hit does not ask the LLM again.
    let again = e
        .classify_bounded(&view("fp-1", "critical"), LONG)
        .await
        .unwrap();
    assert_eq!(again, c);
    assert_eq!(fake.request_count(), 1);

    let (status, body) = a.get("/classification/fp-1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["fingerprint"], "fp-1");
    assert_eq!(body["severity"], "critical");
    assert_eq!(body["confidence"], 0.9);
    assert_eq!(body["recommendations"], json!(["Investigate DiskFull"]));
    assert!(body["classified_at"].as_str().unwrap().ends_with('Z'));

    // Invalid answers are failures: counted, nothing stored, no guess.
    for (fp, answer) in [
        ("fp-bad-1", LlmAnswer::NotJson),
        ("fp-bad-2", LlmAnswer::MissingField),
        ("fp-bad-3", LlmAnswer::ProseAroundJson),
        (
            "fp-bad-4",
            LlmAnswer::Content(
                r#"{"severity":"urgent","confidence":0.5,"reasoning":"r","recommendations":[]}"#
                    .into(),
            ),
        ),
        (
            "fp-bad-5",
            LlmAnswer::Content(
                r#"{"severity":"info","confidence":2,"reasoning":"r","recommendations":[]}"#.into(),
            ),
        ),
    ] {
        fake.push(answer);
        assert_eq!(
            e.classify_bounded(&view(fp, "warning"), LONG).await,
            None,
            "{fp}"
        );
        assert_eq!(e.stored(fp).await, None);
        let (status, body) = a.get(&format!("/classification/{fp}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert!(body["detail"].is_string());
    }
    // An invalid answer is not retried (it would come back the same).
    assert_eq!(fake.request_count(), 6);
    let stats = a.stats().await;
    assert_eq!(stats["enabled"], true);
    assert_eq!(stats["llm"]["calls"], 6);
    assert_eq!(stats["llm"]["invalid_answers"], 5);
    assert_eq!(stats["llm"]["failures"], 5);
    assert_eq!(stats["llm"]["breaker"], "closed");
    assert_eq!(stats["total_classified"], 1);
    assert_eq!(stats["by_severity"]["critical"], 1);
    assert_eq!(stats["by_severity"]["noise"], 0);
    assert_eq!(stats["cache"]["backend"], "memory");
    assert_eq!(stats["cache"]["hits"], 1);
    // The same counters on /metrics.
    let (status, metrics) = a.get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains("alert_history_classification_llm_calls_total 6"),
        "{metrics}"
    );
    assert!(metrics.contains("alert_history_classification_llm_invalid_answers_total 5"));
}

async fn a_stored_classification_is_reused_after_a_restart(db: TestDb) {
    let fake = FakeLlm::start().await;
    let url = db.url.clone();
    let first = app(db, llm_args(&fake)).await;
    first
        .enrichment
        .classify_bounded(&view("fp-r", "warning"), LONG)
        .await
        .unwrap();
    assert_eq!(fake.request_count(), 1);
    // A new process (empty memory cache) over the same database.
    let store = Store::connect(&url, 2).await.unwrap();
    let second = Enrichment::from_config(&llm_args(&fake), &store)
        .await
        .unwrap();
    let c = second
        .classify_bounded(&view("fp-r", "warning"), LONG)
        .await
        .unwrap();
    assert_eq!(c.severity, LlmSeverity::Warning);
    assert_eq!(fake.request_count(), 1);
    // An expired one is asked again.
    let short = ClassifyArgs {
        classification_cache_ttl_seconds: 1,
        ..llm_args(&fake)
    };
    let third = Enrichment::from_config(&short, &store).await.unwrap();
    let old = chrono::Utc::now().timestamp_millis() - c.classified_at_ms;
    if old < 1000 {
        // The stored row is younger than a second: make it older by
        // rewriting its time rather than sleeping.
        let sql = "UPDATE alert_classifications SET classified_at = classified_at - 5000";
        match first.state.store().backend() {
            alert_history::Backend::Sqlite => {
                let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
                sqlx::query(sql).execute(&pool).await.unwrap();
            }
            alert_history::Backend::Postgres => {
                let pool = sqlx::PgPool::connect(&url).await.unwrap();
                sqlx::query(sql).execute(&pool).await.unwrap();
            }
        }
    }
    third
        .classify_bounded(&view("fp-r", "warning"), LONG)
        .await
        .unwrap();
    assert_eq!(fake.request_count(), 2);
}

async fn endpoints_refresh_bulk_and_auth(db: TestDb) {
    let fake = FakeLlm::start().await;
    let a = app(db, llm_args(&fake)).await;
    a.deliver("DiskFull", "fp-a", "critical").await;
    a.deliver("CpuHigh", "fp-b", "info").await;

    // Auth: reads need the read token, refresh and bulk the admin token.
    for (method, path) in [
        ("GET", "/classification/fp-a"),
        ("GET", "/classification/stats"),
    ] {
        let (status, _) = a.call(method, path, None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
    for path in ["/classification/refresh/fp-a", "/classification/bulk"] {
        let (status, body) = a
            .call(
                "POST",
                path,
                Some(READ),
                Some(json!({"fingerprints": ["fp-a"]})),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(body["detail"].is_string(), "{body}");
    }
    assert_eq!(fake.request_count(), 0);

    // Bulk: the known alerts classified, the unknown one named.
    let (status, body) = a
        .admin(
            "/classification/bulk",
            json!({"fingerprints": ["fp-a", "fp-b", "fp-none"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["classified"], 2);
    assert_eq!(body["failed"], 1);
    assert_eq!(body["results"]["fp-a"]["severity"], "critical");
    assert_eq!(body["results"]["fp-b"]["severity"], "info");
    assert!(body["errors"]["fp-none"].is_string());
    assert_eq!(fake.request_count(), 2);
    let many: Vec<String> = (0..101).map(|i| format!("fp-{i}")).collect();
    let (status, _) = a
        .admin("/classification/bulk", json!({"fingerprints": many}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = a.admin("/classification/bulk", json!({"x": 1})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // Refresh asks the LLM again, bypassing the cache, and stores the answer.
    fake.push(LlmAnswer::Content(
        r#"{"severity":"noise","confidence":0.3,"reasoning":"flaps","recommendations":["Raise the threshold"]}"#
            .into(),
    ));
    let (status, body) = a.admin("/classification/refresh/fp-a", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["severity"], "noise");
    assert_eq!(body["refreshed"], true);
    assert_eq!(fake.request_count(), 3);
    let (_, body) = a.get("/classification/fp-a").await;
    assert_eq!(body["severity"], "noise");
    let c = a
        .enrichment
        .classify_bounded(&view("fp-a", "critical"), LONG)
        .await
        .unwrap();
    assert_eq!(c.severity, LlmSeverity::Noise);
    assert_eq!(fake.request_count(), 3);
    let (status, _) = a.admin("/classification/refresh/fp-none", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    fake.push(LlmAnswer::NotJson);
    let (status, body) = a.admin("/classification/refresh/fp-b", json!({})).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    let (_, body) = a.get("/classification/fp-b").await;
    assert_eq!(
        body["severity"], "info",
        "a failed refresh keeps the old one"
    );

    let stats = a.stats().await;
    assert_eq!(stats["total_classified"], 2);
    assert_eq!(stats["by_severity"]["noise"], 1);
    assert_eq!(stats["by_severity"]["info"], 1);
    assert_eq!(stats["mode"], "enriched");
    assert_eq!(stats["effective_mode"], "enriched");
    assert_eq!(stats["bound_ms"], 2000);
}

async fn the_dashboard_shows_classifications_and_recommendations(db: TestDb) {
    let fake = FakeLlm::start().await;
    let a = app(db, llm_args(&fake)).await;
    a.deliver("DiskFull", "fp-d", "critical").await;
    a.deliver("Unclassified", "fp-u", "info").await;
    let (status, _) = a
        .admin("/classification/bulk", json!({"fingerprints": ["fp-d"]}))
        .await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = a.get("/api/dashboard/recommendations").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["count"], 1);
    let r = &body["recommendations"][0];
    assert_eq!(r["fingerprint"], "fp-d");
    assert_eq!(r["alertname"], "DiskFull");
    assert_eq!(r["namespace"], "prod");
    assert_eq!(r["status"], "firing");
    assert_eq!(r["severity"], "critical");
    assert_eq!(r["recommendations"], json!(["Investigate DiskFull"]));
    let (status, _) = a
        .call("GET", "/api/dashboard/recommendations", None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (_, overview) = a.get("/api/dashboard/overview").await;
    let firing = overview["firing"].as_array().unwrap();
    let d = firing.iter().find(|f| f["fingerprint"] == "fp-d").unwrap();
    assert_eq!(d["classification"]["severity"], "critical");
    assert_eq!(d["classification"]["confidence"], 0.9);
    let u = firing.iter().find(|f| f["fingerprint"] == "fp-u").unwrap();
    assert!(u["classification"].is_null());
    let (_, recent) = a.get("/api/dashboard/alerts/recent").await;
    let d = recent
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["fingerprint"] == "fp-d")
        .unwrap();
    assert_eq!(
        d["classification"]["recommendations"],
        json!(["Investigate DiskFull"])
    );
    // The alert's timeline carries it too.
    let (_, timeline) = a.get("/alerts/fp-d").await;
    assert_eq!(timeline["classification"]["severity"], "critical");
    let (_, timeline) = a.get("/alerts/fp-u").await;
    assert!(timeline["classification"].is_null());
    // The page shows them.
    let (_, script) = a.get("/dashboard/app.js").await;
    assert!(
        script
            .as_str()
            .unwrap()
            .contains("/api/dashboard/recommendations")
    );
}

on_both_backends!(
    classification_is_validated_stored_and_cached,
    a_stored_classification_is_reused_after_a_restart,
    endpoints_refresh_bulk_and_auth,
    the_dashboard_shows_classifications_and_recommendations,
);

// ------------------------------------------------------------ calls

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_for_one_fingerprint_make_one_llm_call() {
    let fake = FakeLlm::start().await;
    fake.set_latency(Duration::from_millis(300));
    let a = app(support::sqlite().await, llm_args(&fake)).await;
    let calls = (0..10).map(|_| {
        let e = a.enrichment.clone();
        async move { e.classify_bounded(&view("fp-sf", "warning"), LONG).await }
    });
    let results = futures::future::join_all(calls).await;
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().unwrap().severity == LlmSeverity::Warning)
    );
    assert_eq!(fake.request_count(), 1);
    assert_eq!(a.stats().await["llm"]["calls"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_llm_does_not_hold_publishing_past_the_bound_and_its_answer_is_stored() {
    let fake = FakeLlm::start().await;
    fake.set_latency(Duration::from_millis(1500));
    let a = app(
        support::sqlite().await,
        ClassifyArgs {
            classify_bound_ms: 100,
            ..llm_args(&fake)
        },
    )
    .await;
    let e = &a.enrichment;
    assert_eq!(e.bound(), Duration::from_millis(100));
    let started = tokio::time::Instant::now();
    assert_eq!(
        e.classify_bounded(&view("fp-slow", "critical"), e.bound())
            .await,
        None
    );
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(e.stored("fp-slow").await, None);
    // The call goes on and stores the late answer.
    e.settle().await;
    let c = e.stored("fp-slow").await.unwrap();
    assert_eq!(c.severity, LlmSeverity::Critical);
    assert_eq!(fake.request_count(), 1);
    let stats = a.stats().await;
    assert_eq!(stats["bound_exceeded"], 1);
    assert_eq!(stats["llm"]["successes"], 1);
    // ... and the next publish finds it at once.
    let again = e
        .classify_bounded(&view("fp-slow", "critical"), e.bound())
        .await;
    assert_eq!(again, Some(c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_bound_starts_the_classification_in_the_background() {
    // transparent_with_recommendations publishes at once and classifies
    // for the record: a zero bound must still start (and finish) the call.
    let fake = FakeLlm::start().await;
    fake.set_latency(Duration::from_millis(200));
    let a = app(support::sqlite().await, llm_args(&fake)).await;
    let e = &a.enrichment;
    for _ in 0..3 {
        assert_eq!(
            e.classify_bounded(&view("fp-zero", "warning"), Duration::ZERO)
                .await,
            None
        );
    }
    e.settle().await;
    assert_eq!(
        e.stored("fp-zero").await.unwrap().severity,
        LlmSeverity::Warning
    );
    assert_eq!(fake.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_is_retried_after_its_retry_after() {
    let fake = FakeLlm::start().await;
    fake.push(LlmAnswer::RateLimited(Duration::from_secs(1)));
    let a = app(support::sqlite().await, llm_args(&fake)).await;
    let started = tokio::time::Instant::now();
    let c = a
        .enrichment
        .classify_bounded(&view("fp-429", "info"), LONG)
        .await
        .unwrap();
    assert_eq!(c.severity, LlmSeverity::Info);
    assert_eq!(fake.request_count(), 2);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_and_a_down_llm_fail_without_a_guess() {
    let fake = FakeLlm::start().await;
    let a = app(
        support::sqlite().await,
        ClassifyArgs {
            llm_api_key: Some("sk-wrong".to_owned()),
            ..llm_args(&fake)
        },
    )
    .await;
    assert_eq!(
        a.enrichment
            .classify_bounded(&view("fp-k", "info"), LONG)
            .await,
        None
    );
    // A 401 is not retried.
    assert_eq!(fake.request_count(), 1);
    assert_eq!(a.stats().await["llm"]["failures"], 1);

    fake.set_default(LlmAnswer::Error(StatusCode::INTERNAL_SERVER_ERROR));
    let b = app(support::sqlite().await, llm_args(&fake)).await;
    assert_eq!(
        b.enrichment
            .classify_bounded(&view("fp-5", "info"), LONG)
            .await,
        None
    );
    // 5xx: the first attempt and two retries.
    assert_eq!(fake.request_count(), 4);
    assert_eq!(b.enrichment.stored("fp-5").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_llm_classification_is_off_and_says_so() {
    let a = app(support::sqlite().await, ClassifyArgs::default()).await;
    a.deliver("DiskFull", "fp-off", "critical").await;
    assert_eq!(
        a.enrichment
            .classify_bounded(&view("fp-off", "critical"), LONG)
            .await,
        None
    );
    let stats = a.stats().await;
    assert_eq!(stats["enabled"], false);
    assert_eq!(stats["effective_mode"], "transparent");
    assert!(stats["llm"]["model"].is_null());
    let (status, body) = a.admin("/classification/refresh/fp-off", json!({})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body["detail"].as_str().unwrap().contains("LLM_URL"));
    let (status, _) = a
        .admin("/classification/bulk", json!({"fingerprints": ["fp-off"]}))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_cache_is_shared_by_replicas_with_its_ttl() {
    let fake = FakeLlm::start().await;
    let redis = RedisPrefix::new().await;
    let args = ClassifyArgs {
        redis_url: Some(redis.url().to_owned()),
        redis_key_prefix: redis.prefix().to_owned(),
        classification_cache_ttl_seconds: 600,
        ..llm_args(&fake)
    };
    // Two replicas with their own databases: only Redis is shared.
    let a = app(support::sqlite().await, args.clone()).await;
    let b = app(support::sqlite().await, args).await;
    let c = a
        .enrichment
        .classify_bounded(&view("fp-rc", "warning"), LONG)
        .await
        .unwrap();
    let mut conn = redis.connection().await.unwrap();
    let key = redis.key("classification:fp-rc");
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((590..=600).contains(&ttl), "{ttl}");
    let from_b = b
        .enrichment
        .classify_bounded(&view("fp-rc", "warning"), LONG)
        .await
        .unwrap();
    assert_eq!(from_b, c);
    assert_eq!(fake.request_count(), 1);
    let stats = b.stats().await;
    assert_eq!(stats["cache"]["backend"], "redis");
    assert_eq!(stats["cache"]["hits"], 1);
    // Once the entry is gone (TTL), the LLM is asked again.
    let _: i64 = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    b.enrichment
        .classify_bounded(&view("fp-rc", "warning"), LONG)
        .await
        .unwrap();
    assert_eq!(fake.request_count(), 2);
    redis.cleanup().await.unwrap();
}
