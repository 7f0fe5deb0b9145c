//! A fake of Slack's incoming webhooks and `chat.postMessage`, speaking
//! their wire formats:
//!
//! * `POST /services/{T}/{B}/{secret}` (incoming webhook, registered with
//!   [`FakeSlack::webhook_url`]): JSON with `text` and/or `blocks`. `200 ok`
//!   in plain text; errors in plain text as Slack sends them: 400
//!   `invalid_payload` (not JSON), 400 `no_text` (neither text nor blocks),
//!   400 `invalid_blocks` (more than 50 blocks, or a section text over
//!   3,000 characters), 404 `no_service` (unknown hook).
//! * `POST /api/chat.postMessage` with `Authorization: Bearer <token>`:
//!   JSON `channel`, `text`, `blocks`. Slack answers HTTP 200 with `{"ok":
//!   false, "error": "invalid_auth" | "channel_not_found" | "no_text" |
//!   "invalid_blocks"}` for errors, `{"ok": true, "channel", "ts"}` on
//!   success.
//! * Rate limit: 1 message per second per channel (per hook for webhooks),
//!   then HTTP 429 with `Retry-After` (and `{"ok":false,"error":"ratelimited"}`
//!   for the Web API). On by default; [`FakeSlack::set_limits`] switches it.
//! * The generic faults come from [`FakeSlack::server`] (plain-text 5xx and
//!   429 with `Retry-After`, as Slack's edge answers).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::limits::KeyedLimit;
use crate::{FakeServer, retry_after_secs};

/// The bot token the fake accepts.
pub const DEFAULT_TOKEN: &str = "xoxb-fake-token";

/// One message the fake accepted.
#[derive(Debug, Clone)]
pub struct SlackMessage {
    /// The channel (Web API) or the hook path (webhook).
    pub channel: String,
    /// The fallback text, if any.
    pub text: Option<String>,
    /// The blocks, if any.
    pub blocks: Vec<Value>,
    /// When it arrived.
    pub received_at: Instant,
}

#[derive(Debug)]
struct Inner {
    token: String,
    hooks: HashSet<String>,
    limit: Option<KeyedLimit>,
    messages: Vec<SlackMessage>,
    rate_limited: usize,
    next_ts: u64,
}

type Shared = Arc<Mutex<Inner>>;

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running fake; dropping it stops the server.
#[derive(Debug)]
pub struct FakeSlack {
    server: FakeServer,
    inner: Shared,
}

impl FakeSlack {
    /// Starts the fake on a free loopback port, with the 1/s per channel
    /// limit on.
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            token: DEFAULT_TOKEN.to_owned(),
            hooks: HashSet::new(),
            limit: Some(KeyedLimit::new(1, Duration::from_secs(1))),
            messages: Vec::new(),
            rate_limited: 0,
            next_ts: 1,
        }));
        let app = Router::new()
            .route("/services/{t}/{b}/{s}", post(webhook))
            .route("/api/chat.postMessage", post(post_message))
            .with_state(inner.clone());
        let server = FakeServer::start(app).await;
        FakeSlack { server, inner }
    }

    /// The base URL (`http://127.0.0.1:{port}`), for the Web API.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// Registers an incoming webhook and returns its URL.
    pub fn webhook_url(&self, name: &str) -> String {
        let path = format!("/services/T000/B{name}/secret{name}");
        lock(&self.inner).hooks.insert(path.clone());
        self.server.url(&path)
    }

    /// The underlying server: generic faults and recorded requests.
    pub fn server(&self) -> &FakeServer {
        &self.server
    }

    /// Enforces `max` messages per `per` per channel, or nothing.
    pub fn set_limits(&self, limit: Option<(u32, Duration)>) {
        lock(&self.inner).limit = limit.map(|(max, per)| KeyedLimit::new(max, per));
    }

    /// What the fake accepted, in order.
    pub fn messages(&self) -> Vec<SlackMessage> {
        lock(&self.inner).messages.clone()
    }

    /// Requests refused by the rate limit.
    pub fn rate_limited(&self) -> usize {
        lock(&self.inner).rate_limited
    }
}

/// Checks `text`/`blocks`: `Err(slack error code)`.
fn validate(body: &Value) -> Result<(Option<String>, Vec<Value>), &'static str> {
    let text = body.get("text").and_then(Value::as_str).map(str::to_owned);
    let blocks = match body.get("blocks") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(b)) => b.clone(),
        Some(_) => return Err("invalid_blocks"),
    };
    if text.as_deref().is_none_or(str::is_empty) && blocks.is_empty() {
        return Err("no_text");
    }
    if blocks.len() > 50 {
        return Err("invalid_blocks");
    }
    for b in &blocks {
        let section_text = b
            .get("text")
            .and_then(|t| t.get("text"))
            .and_then(Value::as_str);
        if b.get("type").and_then(Value::as_str).is_none()
            || section_text.is_some_and(|t| t.chars().count() > 3_000)
        {
            return Err("invalid_blocks");
        }
    }
    Ok((text, blocks))
}

fn limited(st: &mut Inner, key: &str, now: Instant) -> Option<Duration> {
    let wait = st.limit.as_mut()?.check(key, now).err()?;
    st.rate_limited += 1;
    Some(wait)
}

fn too_many(wait: Duration, json_body: bool) -> Response {
    let mut r = if json_body {
        (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(json!({"ok": false, "error": "ratelimited"})),
        )
            .into_response()
    } else {
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited").into_response()
    };
    r.headers_mut()
        .insert(header::RETRY_AFTER, retry_after_secs(wait).into());
    r
}

async fn webhook(
    State(inner): State<Shared>,
    Path((t, b, s)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    let path = format!("/services/{t}/{b}/{s}");
    let mut st = lock(&inner);
    if !st.hooks.contains(&path) {
        return (StatusCode::NOT_FOUND, "no_service").into_response();
    }
    let Ok(json) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "invalid_payload").into_response();
    };
    let (text, blocks) = match validate(&json) {
        Ok(v) => v,
        Err(code) => return (StatusCode::BAD_REQUEST, code).into_response(),
    };
    let now = Instant::now();
    if let Some(wait) = limited(&mut st, &path, now) {
        return too_many(wait, false);
    }
    st.messages.push(SlackMessage {
        channel: path,
        text,
        blocks,
        received_at: now,
    });
    (StatusCode::OK, "ok").into_response()
}

async fn post_message(State(inner): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let fail = |error: &str| axum::Json(json!({"ok": false, "error": error})).into_response();
    let mut st = lock(&inner);
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if auth != Some(st.token.as_str()) {
        return fail(if auth.is_none() {
            "not_authed"
        } else {
            "invalid_auth"
        });
    }
    let Ok(json) = serde_json::from_slice::<Value>(&body) else {
        return fail("invalid_json");
    };
    let channel = json
        .get("channel")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if channel.is_empty() || !(channel.starts_with('C') || channel.starts_with('#')) {
        return fail("channel_not_found");
    }
    let (text, blocks) = match validate(&json) {
        Ok(v) => v,
        Err(code) => return fail(code),
    };
    let now = Instant::now();
    if let Some(wait) = limited(&mut st, &channel, now) {
        return too_many(wait, true);
    }
    let ts = st.next_ts;
    st.next_ts += 1;
    st.messages.push(SlackMessage {
        channel: channel.clone(),
        text,
        blocks,
        received_at: now,
    });
    axum::Json(json!({"ok": true, "channel": channel, "ts": format!("{ts}.000100")}))
        .into_response()
}
