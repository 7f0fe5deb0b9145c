//! A fake webhook receiver for keel-notify's `WebhookSink`: accepts JSON
//! (an object, or an array of objects for a digest) on any path, checks the
//! optional HMAC-SHA256 signature (`X-Keel-Timestamp`, `X-Keel-Signature:
//! sha256=<hex of HMAC(secret, "<timestamp>.<body>")>`; a missing or wrong
//! one is 401), refuses what is not JSON (400), optionally enforces a rate
//! limit (429 with `Retry-After`), and records what it accepted. The
//! generic faults (5xx storms, latency, drops, 429s) come from
//! [`FakeWebhook::server`].

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde_json::Value;
use tokio::time::Instant;

use super::limits::KeyedLimit;
use crate::{FakeServer, retry_after_secs};

/// One request the fake accepted.
#[derive(Debug, Clone)]
pub struct WebhookDelivery {
    /// The method used.
    pub method: Method,
    /// The path.
    pub path: String,
    /// The headers.
    pub headers: HeaderMap,
    /// The JSON body.
    pub json: Value,
    /// When it arrived (tokio's clock).
    pub received_at: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    secret: Option<Vec<u8>>,
    limit: Option<KeyedLimit>,
    deliveries: Vec<WebhookDelivery>,
    refused: usize,
}

/// A running fake webhook receiver; dropping it stops the server.
#[derive(Debug)]
pub struct FakeWebhook {
    server: FakeServer,
    inner: Arc<Mutex<Inner>>,
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeWebhook {
    /// Starts a receiver on a free loopback port.
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .fallback(any(handle))
            .with_state(inner.clone());
        let server = FakeServer::start(app).await;
        FakeWebhook { server, inner }
    }

    /// `http://127.0.0.1:{port}/hook`: the URL to configure.
    pub fn url(&self) -> String {
        self.server.url("/hook")
    }

    /// The underlying server: generic faults and every recorded request.
    pub fn server(&self) -> &FakeServer {
        &self.server
    }

    /// Requires every request to be signed with `secret`.
    pub fn require_signature(&self, secret: impl Into<Vec<u8>>) {
        lock(&self.inner).secret = Some(secret.into());
    }

    /// Accepts at most `max` requests per `per` (429 with `Retry-After`
    /// beyond).
    pub fn set_limit(&self, max: u32, per: Duration) {
        lock(&self.inner).limit = Some(KeyedLimit::new(max, per));
    }

    /// What the fake accepted, in order.
    pub fn deliveries(&self) -> Vec<WebhookDelivery> {
        lock(&self.inner).deliveries.clone()
    }

    /// Every accepted message: the objects of each delivery, arrays
    /// flattened.
    pub fn messages(&self) -> Vec<Value> {
        self.deliveries()
            .into_iter()
            .flat_map(|d| match d.json {
                Value::Array(items) => items,
                other => vec![other],
            })
            .collect()
    }

    /// Requests refused for a bad signature, a bad body or the rate limit.
    pub fn refused(&self) -> usize {
        lock(&self.inner).refused
    }
}

/// The signature keel-notify's `WebhookSink` sends, recomputed.
pub fn expected_signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes a key of any size");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut st = lock(&inner);
    if let Some(secret) = st.secret.clone() {
        let ts = headers
            .get("x-keel-timestamp")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let sig = headers
            .get("x-keel-signature")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if ts.is_empty() || sig != expected_signature(&secret, ts, &body) {
            st.refused += 1;
            return (StatusCode::UNAUTHORIZED, "bad signature").into_response();
        }
    }
    let Ok(json @ (Value::Object(_) | Value::Array(_))) = serde_json::from_slice::<Value>(&body)
    else {
        st.refused += 1;
        return (
            StatusCode::BAD_REQUEST,
            "body must be a JSON object or array",
        )
            .into_response();
    };
    let now = Instant::now();
    if let Some(limit) = &mut st.limit
        && let Err(wait) = limit.check("all", now)
    {
        st.refused += 1;
        let mut r = (StatusCode::TOO_MANY_REQUESTS, "rate limited").into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, retry_after_secs(wait).into());
        return r;
    }
    st.deliveries.push(WebhookDelivery {
        method,
        path: uri.path().to_owned(),
        headers,
        json,
        received_at: now,
    });
    (StatusCode::OK, "ok").into_response()
}
