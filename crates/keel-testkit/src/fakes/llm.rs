//! A fake of an OpenAI-compatible chat-completions API (the LLM proxy
//! alert-history classifies through), speaking its wire format:
//!
//! * `POST /v1/chat/completions` with `Authorization: Bearer <key>` and JSON
//!   `model`, `messages[{role, content}]` (optionally `response_format`,
//!   `temperature`). The answer is `200 {id, object: "chat.completion",
//!   created, model, choices: [{index: 0, message: {role: "assistant",
//!   content}, finish_reason: "stop"}], usage: {prompt_tokens,
//!   completion_tokens, total_tokens}}`.
//! * Errors in OpenAI's shape `{"error": {"message", "type", "code"}}`: 401
//!   `invalid_api_key` for a missing or wrong key (when the fake has one),
//!   400 `invalid_request_error` for a body that is not a chat request,
//!   429 `rate_limit_exceeded` with `Retry-After`, 5xx `server_error`.
//! * What the assistant says is scripted per request ([`LlmAnswer`], queued
//!   with [`FakeLlm::push`]), falling back to a default: by default a rule
//!   ([`LlmAnswer::FromSeverityLabel`]) that reads the alert's `severity`
//!   label from the last user message and answers the strict
//!   classification JSON. Malformed answers (not JSON, JSON missing a field,
//!   prose around JSON, an unknown severity) test that clients refuse them.
//! * A latency ([`FakeLlm::set_latency`], `tokio::time`, so paused-time
//!   tests control it) before every answer; the generic faults come from
//!   [`FakeLlm::server`], rendered as OpenAI's errors.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use crate::{FakeServer, FaultRenderer, RecordedRequest, retry_after_secs};

/// The API key [`FakeLlm::start`] accepts.
pub const API_KEY: &str = "sk-fake-llm-key";

/// What the fake answers to one chat-completions request.
#[derive(Debug, Clone, PartialEq)]
pub enum LlmAnswer {
    /// The strict classification JSON, its severity from the alert's
    /// `severity` label (`critical`, `warning`, `info`; anything else or
    /// none: `noise`), confidence 0.9, one recommendation naming the alert.
    FromSeverityLabel,
    /// This exact assistant content.
    Content(String),
    /// Content that is not JSON at all.
    NotJson,
    /// JSON without `confidence`.
    MissingField,
    /// Valid classification JSON with prose before and after it.
    ProseAroundJson,
    /// A 429 with `Retry-After` (whole seconds, rounded up) and OpenAI's
    /// `rate_limit_exceeded` error.
    RateLimited(Duration),
    /// This status with OpenAI's `server_error` error.
    Error(StatusCode),
}

#[derive(Debug)]
struct Inner {
    api_key: Option<String>,
    latency: Duration,
    queue: VecDeque<LlmAnswer>,
    default: LlmAnswer,
    /// Every well-formed chat request's body, in order.
    completions: Vec<Value>,
}

type Shared = Arc<(Mutex<Inner>, AtomicU64)>;

fn lock(inner: &Shared) -> MutexGuard<'_, Inner> {
    inner.0.lock().unwrap_or_else(|e| e.into_inner())
}

/// Renders injected faults as OpenAI's JSON errors.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenAiRenderer;

impl FaultRenderer for OpenAiRenderer {
    fn error(&self, status: StatusCode, _: &RecordedRequest) -> Response {
        openai_error(
            status,
            status.canonical_reason().unwrap_or("error"),
            "server_error",
            None,
        )
    }

    fn rate_limited(&self, retry_after: Duration, _: &RecordedRequest) -> Response {
        rate_limited(retry_after)
    }
}

fn openai_error(status: StatusCode, message: &str, kind: &str, code: Option<&str>) -> Response {
    (
        status,
        axum::Json(
            json!({"error": {"message": message, "type": kind, "param": null, "code": code}}),
        ),
    )
        .into_response()
}

fn rate_limited(wait: Duration) -> Response {
    let mut r = openai_error(
        StatusCode::TOO_MANY_REQUESTS,
        "Rate limit reached for requests. Please try again later.",
        "requests",
        Some("rate_limit_exceeded"),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, retry_after_secs(wait).into());
    r
}

/// A running fake; dropping it stops the server.
#[derive(Debug)]
pub struct FakeLlm {
    server: FakeServer,
    inner: Shared,
}

impl FakeLlm {
    /// Starts the fake on a free loopback port, accepting [`API_KEY`] and
    /// answering [`LlmAnswer::FromSeverityLabel`] without latency.
    pub async fn start() -> Self {
        Self::start_with_key(Some(API_KEY)).await
    }

    /// As [`FakeLlm::start`] with another key (`None`: no key checked).
    pub async fn start_with_key(api_key: Option<&str>) -> Self {
        let inner: Shared = Arc::new((
            Mutex::new(Inner {
                api_key: api_key.map(str::to_owned),
                latency: Duration::ZERO,
                queue: VecDeque::new(),
                default: LlmAnswer::FromSeverityLabel,
                completions: Vec::new(),
            }),
            AtomicU64::new(0),
        ));
        let app = Router::new()
            .route("/v1/chat/completions", post(completions))
            .with_state(inner.clone());
        let server = FakeServer::builder()
            .renderer(OpenAiRenderer)
            .start(app)
            .await;
        FakeLlm { server, inner }
    }

    /// The API base clients are configured with: `http://127.0.0.1:{port}/v1`.
    pub fn base_url(&self) -> String {
        format!("{}/v1", self.server.base_url())
    }

    /// The underlying server: generic faults and recorded requests.
    pub fn server(&self) -> &FakeServer {
        &self.server
    }

    /// Waits this long before every answer (`tokio::time::sleep`).
    pub fn set_latency(&self, latency: Duration) {
        lock(&self.inner).latency = latency;
    }

    /// Queues the answer to the next request not yet answered by the queue.
    pub fn push(&self, answer: LlmAnswer) {
        lock(&self.inner).queue.push_back(answer);
    }

    /// The answer once the queue is empty.
    pub fn set_default(&self, answer: LlmAnswer) {
        lock(&self.inner).default = answer;
    }

    /// Requests that reached `POST /v1/chat/completions` (every answer,
    /// errors and 429s included).
    pub fn request_count(&self) -> u64 {
        self.inner.1.load(Ordering::SeqCst)
    }

    /// The bodies of the chat requests the fake answered (after the key
    /// check), in order.
    pub fn completions(&self) -> Vec<Value> {
        lock(&self.inner).completions.clone()
    }
}

/// The strict classification JSON for the alert described in `request`.
fn by_rule(request: &Value) -> Value {
    let user = request["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or("");
    let alert: Value = serde_json::from_str(user).unwrap_or(Value::Null);
    let label = alert["labels"]["severity"]
        .as_str()
        .or_else(|| alert["severity"].as_str())
        .unwrap_or("");
    let severity = match label {
        "critical" | "warning" | "info" => label,
        _ => "noise",
    };
    let name = alert["labels"]["alertname"]
        .as_str()
        .or_else(|| alert["alertname"].as_str())
        .unwrap_or("the alert");
    json!({
        "severity": severity,
        "confidence": 0.9,
        "reasoning": format!("the alert's severity label is {label:?}"),
        "recommendations": [format!("Investigate {name}")],
    })
}

async fn completions(State(inner): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    inner.1.fetch_add(1, Ordering::SeqCst);
    let (latency, key) = {
        let st = lock(&inner);
        (st.latency, st.api_key.clone())
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(key) = key {
        let sent = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if sent != Some(key.as_str()) {
            return openai_error(
                StatusCode::UNAUTHORIZED,
                "Incorrect API key provided.",
                "invalid_request_error",
                Some("invalid_api_key"),
            );
        }
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return openai_error(
                StatusCode::BAD_REQUEST,
                &format!("We could not parse the JSON body of your request: {e}"),
                "invalid_request_error",
                None,
            );
        }
    };
    let model = request["model"].as_str().unwrap_or("").to_owned();
    if model.is_empty() || request["messages"].as_array().is_none_or(|m| m.is_empty()) {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "'model' and a non-empty 'messages' are required",
            "invalid_request_error",
            None,
        );
    }
    let answer = {
        let mut st = lock(&inner);
        st.completions.push(request.clone());
        st.queue.pop_front().unwrap_or_else(|| st.default.clone())
    };
    let content = match answer {
        LlmAnswer::FromSeverityLabel => by_rule(&request).to_string(),
        LlmAnswer::Content(c) => c,
        LlmAnswer::NotJson => "This alert looks critical to me.".to_owned(),
        LlmAnswer::MissingField => {
            let mut v = by_rule(&request);
            if let Some(o) = v.as_object_mut() {
                o.remove("confidence");
            }
            v.to_string()
        }
        LlmAnswer::ProseAroundJson => format!(
            "Sure! Here is the classification:\n{}\nLet me know if you need more.",
            by_rule(&request)
        ),
        LlmAnswer::RateLimited(wait) => return rate_limited(wait),
        LlmAnswer::Error(status) => {
            return openai_error(
                status,
                "The server had an error while processing your request.",
                "server_error",
                None,
            );
        }
    };
    let n = inner.1.load(Ordering::SeqCst);
    let completion_tokens = content.len() / 4 + 1;
    axum::Json(json!({
        "id": format!("chatcmpl-fake{n}"),
        "object": "chat.completion",
        "created": 1_767_225_600 + n,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": "stop",
        }],
        "usage": {
            "prompt_tokens": body.len() / 4 + 1,
            "completion_tokens": completion_tokens,
            "total_tokens": body.len() / 4 + 1 + completion_tokens,
        },
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ask(fake: &FakeLlm, key: &str, severity: &str) -> reqwest::Response {
        let user = json!({"labels": {"alertname": "DiskFull", "severity": severity}}).to_string();
        reqwest::Client::new()
            .post(format!("{}/chat/completions", fake.base_url()))
            .bearer_auth(key)
            .json(&json!({"model": "m", "messages": [{"role": "user", "content": user}]}))
            .send()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn answers_by_rule_and_refuses_a_wrong_key() {
        let fake = FakeLlm::start().await;
        let r = ask(&fake, API_KEY, "warning").await;
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["object"], "chat.completion");
        let content: Value =
            serde_json::from_str(body["choices"][0]["message"]["content"].as_str().unwrap())
                .unwrap();
        assert_eq!(content["severity"], "warning");
        let r = ask(&fake, "wrong", "warning").await;
        assert_eq!(r.status(), 401);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_api_key");
        fake.push(LlmAnswer::RateLimited(Duration::from_millis(1500)));
        let r = ask(&fake, API_KEY, "info").await;
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "2");
        assert_eq!(fake.request_count(), 3);
        assert_eq!(fake.completions().len(), 2);
    }
}
