//! The LLM client: one OpenAI-compatible chat-completions call per
//! classification, through a `keel::Pipeline` (overall deadline, retry with
//! backoff honouring `Retry-After`, a breaker named `llm`, per-attempt
//! timeout), and the strict validation of its answer.

use std::sync::Arc;
use std::time::Duration;

use keel::breaker::{BreakerConfig, CircuitBreaker};
use keel::retry::{Backoff, RetryPolicy};
use keel::{CallOptions, ErrorOutcome, Outcome, Pipeline, PipelineError};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::routing::{AlertView, Classification, LlmSeverity};

/// The system prompt: what the alert is and the only answer accepted.
pub(crate) const SYSTEM_PROMPT: &str = "You classify Prometheus Alertmanager alerts for an \
on-call team. The user message is one alert as JSON (labels, annotations, status, times). \
Answer with exactly one JSON object and nothing else, of this shape: \
{\"severity\": \"critical\" | \"warning\" | \"info\" | \"noise\", \"confidence\": a number \
from 0 to 1, \"reasoning\": a short string, \"recommendations\": [strings, each one concrete \
action for the responder]}. critical: someone must act now; warning: look at it today; \
info: for the record; noise: not worth anyone's attention.";

/// Why a classification call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum LlmError {
    /// Connection refused, reset, timed out on the client.
    #[error("request failed: {0}")]
    Http(String),
    /// A non-2xx answer.
    #[error("HTTP {status}: {body}")]
    Status {
        /// The status code.
        status: u16,
        /// The start of the body.
        body: String,
        /// `Retry-After`, on a 429 or 503.
        retry_after: Option<Duration>,
    },
    /// A 2xx whose body or content is not the strict classification.
    #[error("invalid answer: {0}")]
    Invalid(String),
}

impl ErrorOutcome for LlmError {
    fn outcome(&self) -> Outcome {
        match self {
            LlmError::Http(_) => Outcome::Failure,
            LlmError::Status {
                status: 429 | 503,
                retry_after,
                ..
            } => Outcome::Overloaded {
                retry_after: *retry_after,
            },
            LlmError::Status { status, .. } if *status >= 500 || *status == 408 => Outcome::Failure,
            // A wrong key or a refused request says nothing about the
            // service's health and retrying will not change it; an invalid
            // answer at temperature 0 comes back the same.
            LlmError::Status { .. } | LlmError::Invalid(_) => Outcome::Neutral,
        }
    }
}

/// How a call ended, for the counters.
#[derive(Debug, Clone)]
pub(crate) enum CallFailure {
    /// The answer was not the strict JSON.
    Invalid(String),
    /// The attempt timeout or the deadline cut it.
    Timeout,
    /// The breaker refused it.
    BreakerOpen,
    /// Anything else (HTTP errors after the retries).
    Failed(String),
}

impl std::fmt::Display for CallFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallFailure::Invalid(e) => write!(f, "invalid answer: {e}"),
            CallFailure::Timeout => f.write_str("timed out"),
            CallFailure::BreakerOpen => f.write_str("circuit open"),
            CallFailure::Failed(e) => f.write_str(e),
        }
    }
}

/// The configured LLM endpoint.
#[derive(Debug, Clone)]
pub(crate) struct Llm {
    http: reqwest::Client,
    endpoint: String,
    api_key: Option<String>,
    model: String,
    pipeline: Arc<Pipeline>,
    breaker: CircuitBreaker,
}

impl Llm {
    /// A client of `{base}/chat/completions`.
    pub(crate) fn new(
        base: &str,
        api_key: Option<String>,
        model: String,
        timeout: Duration,
        max_retries: u32,
    ) -> Result<Llm, keel_core::ConfigError> {
        let bad = |e: &dyn std::fmt::Display| keel_core::ConfigError::new("LLM_URL", e.to_string());
        let breaker = CircuitBreaker::new("llm", BreakerConfig::default());
        let pipeline = Pipeline::builder()
            .retry(
                RetryPolicy::builder()
                    .max_retries(max_retries)
                    .backoff(Backoff::exponential(Duration::from_millis(250), 2.0))
                    .max_retry_after(Duration::from_secs(30))
                    .build()
                    .map_err(|e| bad(&e))?,
            )
            .breaker(breaker.clone())
            .attempt_timeout(timeout)
            .deadline(timeout * (max_retries + 2) + Duration::from_secs(30))
            .build()
            .map_err(|e| bad(&e))?;
        Ok(Llm {
            http: reqwest::Client::builder().build().map_err(|e| bad(&e))?,
            endpoint: format!("{}/chat/completions", base.trim_end_matches('/')),
            api_key,
            model,
            pipeline: Arc::new(pipeline),
            breaker,
        })
    }

    /// The model asked.
    pub(crate) fn model(&self) -> &str {
        &self.model
    }

    /// The breaker's state (`closed`, `open`, ...).
    pub(crate) fn breaker_state(&self) -> &'static str {
        self.breaker.state().as_str()
    }

    /// Classifies `alert`; `now_ms` stamps the result.
    pub(crate) async fn classify(
        &self,
        alert: &AlertView,
        now_ms: i64,
    ) -> Result<Classification, CallFailure> {
        let body = request_body(&self.model, alert);
        let options = CallOptions::new().classify(&keel::classify::ByError);
        let result = self
            .pipeline
            .call_with(&options, |attempt| {
                let body = &body;
                async move { self.once(body, attempt.timeout).await }
            })
            .await;
        match result {
            Ok(content) => {
                parse_answer(&content, &self.model, now_ms).map_err(CallFailure::Invalid)
            }
            Err(PipelineError::Inner(LlmError::Invalid(e))) => Err(CallFailure::Invalid(e)),
            Err(PipelineError::AttemptTimeout { .. } | PipelineError::DeadlineExceeded { .. }) => {
                Err(CallFailure::Timeout)
            }
            Err(PipelineError::Rejected(_)) => Err(CallFailure::BreakerOpen),
            Err(e) => Err(CallFailure::Failed(e.to_string())),
        }
    }

    /// One attempt: the assistant's content, or why not.
    async fn once(&self, body: &Value, timeout: Option<Duration>) -> Result<String, LlmError> {
        let mut request = self.http.post(&self.endpoint).json(body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        if let Some(t) = timeout {
            request = request.timeout(t);
        }
        let response = request.send().await.map_err(http_error)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = response.text().await.map_err(http_error)?;
        if !status.is_success() {
            return Err(LlmError::Status {
                status: status.as_u16(),
                body: text.chars().take(300).collect(),
                retry_after,
            });
        }
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| LlmError::Invalid(format!("the response is not JSON: {e}")))?;
        value["choices"][0]["message"]["content"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| LlmError::Invalid("no choices[0].message.content".to_owned()))
    }
}

/// The error with its sources (reqwest's own Display omits the cause).
fn http_error(e: reqwest::Error) -> LlmError {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    LlmError::Http(text)
}

/// The chat-completions request for `alert`.
pub(crate) fn request_body(model: &str, alert: &AlertView) -> Value {
    let user = json!({
        "fingerprint": alert.fingerprint,
        "alertname": alert.alertname,
        "status": alert.status.as_str(),
        "labels": alert.labels,
        "annotations": alert.annotations,
        "starts_at": crate::model::format_time(alert.starts_at),
        "ends_at": (alert.ends_at > 0).then(|| crate::model::format_time(alert.ends_at)),
        "generator_url": alert.generator_url,
    });
    json!({
        "model": model,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": user.to_string()},
        ],
        "response_format": {"type": "json_object"},
        "temperature": 0,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer {
    severity: String,
    confidence: f64,
    reasoning: String,
    recommendations: Vec<String>,
}

/// Validates the assistant's content as the strict classification JSON:
/// one object, exactly the four fields, a known severity, a confidence in
/// 0..=1. Anything else is an error, never a guess.
pub(crate) fn parse_answer(
    content: &str,
    model: &str,
    now_ms: i64,
) -> Result<Classification, String> {
    let answer: Answer = serde_json::from_str(content.trim()).map_err(|e| e.to_string())?;
    let severity = match answer.severity.as_str() {
        "critical" => LlmSeverity::Critical,
        "warning" => LlmSeverity::Warning,
        "info" => LlmSeverity::Info,
        "noise" => LlmSeverity::Noise,
        other => return Err(format!("unknown severity {other:?}")),
    };
    if !(0.0..=1.0).contains(&answer.confidence) {
        return Err(format!("confidence {} is outside 0..1", answer.confidence));
    }
    Ok(Classification {
        severity,
        confidence: answer.confidence,
        reasoning: answer.reasoning,
        recommendations: answer.recommendations,
        model: model.to_owned(),
        classified_at_ms: now_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_strict_answer_is_accepted() {
        let ok =
            r#"{"severity":"warning","confidence":0.5,"reasoning":"r","recommendations":["a"]}"#;
        let c = parse_answer(ok, "m", 7).unwrap();
        assert_eq!(c.severity, LlmSeverity::Warning);
        assert_eq!(c.recommendations, vec!["a".to_owned()]);
        assert_eq!(c.classified_at_ms, 7);
        for bad in [
            "critical",
            r#"{"severity":"warning","reasoning":"r","recommendations":[]}"#,
            r#"{"severity":"urgent","confidence":0.5,"reasoning":"r","recommendations":[]}"#,
            r#"{"severity":"info","confidence":1.5,"reasoning":"r","recommendations":[]}"#,
            r#"{"severity":"info","confidence":-0.1,"reasoning":"r","recommendations":[]}"#,
            r#"Here: {"severity":"info","confidence":0.5,"reasoning":"r","recommendations":[]}"#,
            r#"{"severity":"info","confidence":0.5,"reasoning":"r","recommendations":[],"x":1}"#,
            r#"{"severity":"info","confidence":"high","reasoning":"r","recommendations":[]}"#,
            r#"[{"severity":"info","confidence":0.5,"reasoning":"r","recommendations":[]}]"#,
        ] {
            assert!(parse_answer(bad, "m", 0).is_err(), "{bad}");
        }
    }

    #[test]
    fn overloads_carry_retry_after_and_refusals_are_neutral() {
        let e = LlmError::Status {
            status: 429,
            body: String::new(),
            retry_after: Some(Duration::from_secs(2)),
        };
        assert_eq!(e.outcome().retry_after(), Some(Duration::from_secs(2)));
        let e = LlmError::Status {
            status: 401,
            body: String::new(),
            retry_after: None,
        };
        assert!(e.outcome().is_neutral());
        assert!(LlmError::Http("reset".into()).outcome().is_failure());
    }
}
