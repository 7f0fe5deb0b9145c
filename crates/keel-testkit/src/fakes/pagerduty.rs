//! A fake of the PagerDuty Events API v2, speaking its wire format:
//!
//! * `POST /v2/enqueue` with JSON `routing_key` (32 characters),
//!   `event_action` (`trigger` | `acknowledge` | `resolve`), `dedup_key`
//!   (≤ 255 characters; required to acknowledge or resolve), and for a
//!   trigger `payload{summary (≤ 1,024), source, severity (critical |
//!   error | warning | info), ...}`.
//! * `202 {"status":"success","message":"Event processed","dedup_key":...}`;
//!   an invalid event is `400 {"status":"invalid event","message":"Event
//!   object is invalid","errors":[...]}`; over 120 events per minute per
//!   routing key, `429` (PagerDuty's throttle, with `Retry-After` here so
//!   clients can be tested against it).
//! * Incidents by dedup key: a trigger opens (or adds to) one, a resolve
//!   closes it ([`FakePagerDuty::open_incidents`]).
//! * The generic faults come from [`FakePagerDuty::server`], rendered as
//!   PagerDuty's JSON errors.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::limits::KeyedLimit;
use crate::{FakeServer, FaultRenderer, RecordedRequest, retry_after_secs};

/// A valid 32-character routing key.
pub const ROUTING_KEY: &str = "R0123456789abcdef0123456789abcde";

/// One event the fake accepted.
#[derive(Debug, Clone)]
pub struct PagerDutyEvent {
    /// `trigger`, `acknowledge` or `resolve`.
    pub action: String,
    /// The dedup key (generated for a trigger without one).
    pub dedup_key: String,
    /// The whole event.
    pub json: Value,
    /// When it arrived.
    pub received_at: Instant,
}

#[derive(Debug)]
struct Inner {
    limit: KeyedLimit,
    events: Vec<PagerDutyEvent>,
    /// Dedup key → acknowledged?
    open: BTreeMap<String, bool>,
    next_key: u64,
}

type Shared = Arc<Mutex<Inner>>;

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|e| e.into_inner())
}

/// Renders injected faults as PagerDuty's JSON errors.
#[derive(Debug, Clone, Copy, Default)]
pub struct PagerDutyRenderer;

impl FaultRenderer for PagerDutyRenderer {
    fn error(&self, status: StatusCode, _: &RecordedRequest) -> Response {
        (
            status,
            axum::Json(json!({"status": "error", "message": status.canonical_reason()})),
        )
            .into_response()
    }

    fn rate_limited(&self, retry_after: Duration, _: &RecordedRequest) -> Response {
        throttled(retry_after)
    }
}

fn throttled(wait: Duration) -> Response {
    let mut r = (
        StatusCode::TOO_MANY_REQUESTS,
        axum::Json(json!({"status": "throttle exceeded", "message": "Requests for this service are arriving too quickly. Please retry later."})),
    )
        .into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, retry_after_secs(wait).into());
    r
}

/// A running fake; dropping it stops the server.
#[derive(Debug)]
pub struct FakePagerDuty {
    server: FakeServer,
    inner: Shared,
}

impl FakePagerDuty {
    /// Starts the fake on a free loopback port with PagerDuty's 120 events
    /// per minute per routing key.
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            limit: KeyedLimit::new(120, Duration::from_secs(60)),
            events: Vec::new(),
            open: BTreeMap::new(),
            next_key: 1,
        }));
        let app = Router::new()
            .route("/v2/enqueue", post(enqueue))
            .with_state(inner.clone());
        let server = FakeServer::builder()
            .renderer(PagerDutyRenderer)
            .start(app)
            .await;
        FakePagerDuty { server, inner }
    }

    /// The base URL (`http://127.0.0.1:{port}`).
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// The underlying server: generic faults and recorded requests.
    pub fn server(&self) -> &FakeServer {
        &self.server
    }

    /// Replaces the per-routing-key limit.
    pub fn set_limit(&self, max: u32, per: Duration) {
        lock(&self.inner).limit = KeyedLimit::new(max, per);
    }

    /// Accepted events, in order.
    pub fn events(&self) -> Vec<PagerDutyEvent> {
        lock(&self.inner).events.clone()
    }

    /// Open incidents: dedup key → acknowledged.
    pub fn open_incidents(&self) -> BTreeMap<String, bool> {
        lock(&self.inner).open.clone()
    }
}

fn invalid(errors: &[&str]) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"status": "invalid event", "message": "Event object is invalid", "errors": errors})),
    )
        .into_response()
}

async fn enqueue(State(inner): State<Shared>, body: Bytes) -> Response {
    let Ok(event) = serde_json::from_slice::<Value>(&body) else {
        return invalid(&["Could not parse JSON"]);
    };
    let routing_key = event
        .get("routing_key")
        .and_then(Value::as_str)
        .unwrap_or("");
    let action = event
        .get("event_action")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let dedup = event.get("dedup_key").and_then(Value::as_str);
    let mut errors = Vec::new();
    if routing_key.len() != 32 {
        errors.push("'routing_key' must be 32 characters");
    }
    if !matches!(action.as_str(), "trigger" | "acknowledge" | "resolve") {
        errors.push("'event_action' is invalid");
    }
    if dedup.is_some_and(|d| d.len() > 255) {
        errors.push("'dedup_key' must be at most 255 characters");
    }
    if action != "trigger" && dedup.is_none_or(str::is_empty) {
        errors.push("'dedup_key' is required to acknowledge or resolve");
    }
    if action == "trigger" {
        let p = event.get("payload");
        let s = |k: &str| p.and_then(|p| p.get(k)).and_then(Value::as_str);
        if s("summary").is_none_or(|v| v.is_empty() || v.chars().count() > 1_024) {
            errors.push("'payload.summary' is missing or longer than 1024 characters");
        }
        if s("source").is_none_or(str::is_empty) {
            errors.push("'payload.source' is missing");
        }
        if !s("severity").is_some_and(|v| matches!(v, "critical" | "error" | "warning" | "info")) {
            errors.push("'payload.severity' must be critical, error, warning or info");
        }
    }
    if !errors.is_empty() {
        return invalid(&errors);
    }
    let now = Instant::now();
    let mut st = lock(&inner);
    if let Err(wait) = st.limit.check(routing_key, now) {
        return throttled(wait);
    }
    let dedup_key = match dedup {
        Some(d) => d.to_owned(),
        None => {
            let k = format!("generated-{}", st.next_key);
            st.next_key += 1;
            k
        }
    };
    match action.as_str() {
        "trigger" => {
            st.open.entry(dedup_key.clone()).or_insert(false);
        }
        "acknowledge" => {
            if let Some(acked) = st.open.get_mut(&dedup_key) {
                *acked = true;
            }
        }
        _ => {
            st.open.remove(&dedup_key);
        }
    }
    st.events.push(PagerDutyEvent {
        action,
        dedup_key: dedup_key.clone(),
        json: event,
        received_at: now,
    });
    (
        StatusCode::ACCEPTED,
        axum::Json(
            json!({"status": "success", "message": "Event processed", "dedup_key": dedup_key}),
        ),
    )
        .into_response()
}
