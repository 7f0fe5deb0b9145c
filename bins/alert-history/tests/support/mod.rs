//! Shared helpers for alert-history's integration tests: databases on both
//! backends, an in-process router, payload builders.
#![allow(dead_code, unreachable_pub, missing_docs)]

use alert_history::{AppState, Config, Store, router};
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use keel_testkit::services::PgSchema;
use serde_json::{Value, json};
use tower::ServiceExt;

/// A database for one test: a temporary SQLite file or a fresh PostgreSQL
/// schema (dropped at the end).
pub struct TestDb {
    pub url: String,
    _sqlite: Option<tempfile::TempDir>,
    _pg: Option<PgSchema>,
}

impl TestDb {
    /// The PostgreSQL schema, when the test runs on PostgreSQL.
    pub fn pg_schema(&self) -> Option<&PgSchema> {
        self._pg.as_ref()
    }

    /// A SQLite database at `url`, kept alive with `dir`.
    pub fn sqlite_at(url: String, dir: tempfile::TempDir) -> TestDb {
        TestDb {
            url,
            _sqlite: Some(dir),
            _pg: None,
        }
    }
}

pub async fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("alert-history.db").display());
    TestDb {
        url,
        _sqlite: Some(dir),
        _pg: None,
    }
}

/// A fresh schema in the local PostgreSQL (fails naming how to start it).
pub async fn postgres() -> TestDb {
    let schema = PgSchema::new().await;
    TestDb {
        url: schema.url().to_owned(),
        _sqlite: None,
        _pg: Some(schema),
    }
}

/// Runs each named scenario `async fn name(db: TestDb)` on SQLite and on
/// PostgreSQL.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::postgres().await).await;
                }
            )*
        }
    };
}

/// The router over a store on `db`, with `configure` applied to the config.
pub struct TestApp {
    pub app: Router,
    pub state: AppState,
    pub db: TestDb,
}

impl TestApp {
    pub async fn new(db: TestDb) -> TestApp {
        TestApp::with_config(db, |_| {}).await
    }

    pub async fn with_config(db: TestDb, configure: impl FnOnce(&mut Config)) -> TestApp {
        let mut config = Config::for_database(&db.url);
        configure(&mut config);
        config.validate().unwrap();
        let store = Store::connect(&db.url, 4).await.unwrap();
        let state = AppState::new(store, &config, Default::default()).unwrap();
        TestApp {
            app: router(state.clone()),
            state,
            db,
        }
    }

    pub fn store(&self) -> &Store {
        self.state.store()
    }

    pub async fn request(&self, request: Request<Body>) -> (StatusCode, HeaderMap, Value) {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, headers, value)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let (status, _, body) = self
            .request(Request::get(path).body(Body::empty()).unwrap())
            .await;
        (status, body)
    }

    pub async fn post(&self, path: &str, body: impl Into<Body>) -> (StatusCode, Value) {
        let (status, _, body) = self
            .request(
                Request::post(path)
                    .header("content-type", "application/json")
                    .body(body.into())
                    .unwrap(),
            )
            .await;
        (status, body)
    }

    /// Posts a webhook payload and asserts 200; returns `saved`.
    pub async fn deliver(&self, payload: &Value) -> u64 {
        let (status, body) = self.post("/webhook", payload.to_string()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["result"], "ok");
        body["saved"].as_u64().unwrap()
    }
}

/// An RFC 3339 time `minutes` after 2026-01-01T00:00:00Z.
pub fn at(minutes: i64) -> String {
    let base = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap();
    (base + chrono::Duration::minutes(minutes))
        .with_timezone(&chrono::Utc)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A firing alert.
pub fn firing(name: &str, fp: &str, start: i64, labels: &[(&str, &str)]) -> Value {
    alert(name, fp, "firing", start, None, labels)
}

/// A resolved alert.
pub fn resolved(name: &str, fp: &str, start: i64, end: i64, labels: &[(&str, &str)]) -> Value {
    alert(name, fp, "resolved", start, Some(end), labels)
}

fn alert(
    name: &str,
    fp: &str,
    status: &str,
    start: i64,
    end: Option<i64>,
    labels: &[(&str, &str)],
) -> Value {
    let mut l = serde_json::Map::new();
    l.insert("alertname".into(), json!(name));
    for (k, v) in labels {
        l.insert((*k).into(), json!(v));
    }
    json!({
        "status": status,
        "labels": l,
        "annotations": { "summary": format!("{name} is {status}") },
        "startsAt": at(start),
        "endsAt": end.map_or_else(|| "0001-01-01T00:00:00Z".to_owned(), at),
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": fp,
    })
}

/// An Alertmanager v4 payload around `alerts`.
pub fn payload(alerts: Vec<Value>) -> Value {
    let status = if alerts.iter().any(|a| a["status"] == "firing") {
        "firing"
    } else {
        "resolved"
    };
    json!({
        "receiver": "alert-history",
        "status": status,
        "alerts": alerts,
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "version": "4",
        "groupKey": "{}:{}",
        "truncatedAlerts": 0,
    })
}
