//! A fake of Rootly's alerts API, speaking its wire format:
//!
//! * `POST /v1/alerts` with `Authorization: Bearer <token>` and a JSON:API
//!   body `{"data": {"type": "alerts", "attributes": {"summary", "source",
//!   ...}}}` (content type `application/vnd.api+json`; plain JSON is
//!   accepted too, as Rootly does).
//! * `201` with the created alert as a JSON:API document; errors as JSON:API
//!   `{"errors": [{"status", "title", "detail"}]}`: 401 without a valid
//!   token, 422 for a missing `summary` or `source` or a wrong type; over
//!   the rate limit ([`FakeRootly::set_limit`], default 60 per minute per
//!   token), 429 with `Retry-After`.
//! * The generic faults come from [`FakeRootly::server`], rendered as
//!   JSON:API errors.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::limits::KeyedLimit;
use crate::{FakeServer, FaultRenderer, RecordedRequest, retry_after_secs};

/// The API token the fake accepts.
pub const DEFAULT_TOKEN: &str = "rootly-fake-token";

/// One alert the fake created.
#[derive(Debug, Clone)]
pub struct RootlyAlert {
    /// The id it answered.
    pub id: String,
    /// `data.attributes` as sent.
    pub attributes: Value,
    /// When it arrived.
    pub received_at: Instant,
}

#[derive(Debug)]
struct Inner {
    token: String,
    limit: KeyedLimit,
    alerts: Vec<RootlyAlert>,
}

type Shared = Arc<Mutex<Inner>>;

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|e| e.into_inner())
}

fn errors(status: StatusCode, title: &str, detail: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/vnd.api+json")],
        json!({"errors": [{"status": status.as_u16().to_string(), "title": title, "detail": detail}]})
            .to_string(),
    )
        .into_response()
}

fn too_many(wait: Duration) -> Response {
    let mut r = errors(
        StatusCode::TOO_MANY_REQUESTS,
        "Too Many Requests",
        "Rate limit exceeded",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, retry_after_secs(wait).into());
    r
}

/// Renders injected faults as JSON:API errors.
#[derive(Debug, Clone, Copy, Default)]
pub struct RootlyRenderer;

impl FaultRenderer for RootlyRenderer {
    fn error(&self, status: StatusCode, _: &RecordedRequest) -> Response {
        errors(
            status,
            status.canonical_reason().unwrap_or("Server Error"),
            "injected",
        )
    }

    fn rate_limited(&self, retry_after: Duration, _: &RecordedRequest) -> Response {
        too_many(retry_after)
    }
}

/// A running fake; dropping it stops the server.
#[derive(Debug)]
pub struct FakeRootly {
    server: FakeServer,
    inner: Shared,
}

impl FakeRootly {
    /// Starts the fake on a free loopback port.
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            token: DEFAULT_TOKEN.to_owned(),
            limit: KeyedLimit::new(60, Duration::from_secs(60)),
            alerts: Vec::new(),
        }));
        let app = Router::new()
            .route("/v1/alerts", post(create))
            .with_state(inner.clone());
        let server = FakeServer::builder()
            .renderer(RootlyRenderer)
            .start(app)
            .await;
        FakeRootly { server, inner }
    }

    /// The base URL (`http://127.0.0.1:{port}`).
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// The underlying server: generic faults and recorded requests.
    pub fn server(&self) -> &FakeServer {
        &self.server
    }

    /// Replaces the per-token limit.
    pub fn set_limit(&self, max: u32, per: Duration) {
        lock(&self.inner).limit = KeyedLimit::new(max, per);
    }

    /// Created alerts, in order.
    pub fn alerts(&self) -> Vec<RootlyAlert> {
        lock(&self.inner).alerts.clone()
    }
}

async fn create(State(inner): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let mut st = lock(&inner);
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if token != Some(st.token.as_str()) {
        return errors(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "invalid API token",
        );
    }
    let Ok(doc) = serde_json::from_slice::<Value>(&body) else {
        return errors(StatusCode::BAD_REQUEST, "Bad Request", "body is not JSON");
    };
    let data = doc.get("data");
    if data.and_then(|d| d.get("type")).and_then(Value::as_str) != Some("alerts") {
        return errors(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Unprocessable Entity",
            "data.type must be alerts",
        );
    }
    let attributes = data
        .and_then(|d| d.get("attributes"))
        .cloned()
        .unwrap_or(Value::Null);
    for required in ["summary", "source"] {
        if attributes
            .get(required)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return errors(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Unprocessable Entity",
                &format!("{required} can't be blank"),
            );
        }
    }
    let now = Instant::now();
    let key = st.token.clone();
    if let Err(wait) = st.limit.check(&key, now) {
        return too_many(wait);
    }
    let id = format!("alert-{}", st.alerts.len() + 1);
    st.alerts.push(RootlyAlert {
        id: id.clone(),
        attributes: attributes.clone(),
        received_at: now,
    });
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/vnd.api+json")],
        json!({"data": {"id": id, "type": "alerts", "attributes": attributes}}).to_string(),
    )
        .into_response()
}
