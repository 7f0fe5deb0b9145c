//! The properties the fuzz targets of keel-notify check (`fuzz/`,
//! docs/RELIABILITY.md); not a stable API.
//!
//! * [`notify_responses`]: how each sink classifies an HTTP answer
//!   (status, `Retry-After`, body) into `Ok` or a [`SinkError`].

use std::time::Duration;

use keel_core::ErrorOutcome as _;
use serde_json::Value;

use crate::SinkError;
use crate::http::{self, Answer};
use crate::telegram::reply;

/// The sinks whose answers [`notify_responses`] classifies, chosen by the
/// input's first byte.
const SINKS: [&str; 5] = [
    "telegram",
    "slack-webhook",
    "slack-bot",
    "pagerduty",
    "rootly",
];

/// One answer built from fuzz bytes: `[sink][status: 2 bytes][Retry-After
/// value]\n[body]` (no `\n`: no header, the rest is the body). The status
/// is 100 to 599.
///
/// Properties: classification is total (never a panic) and deterministic;
/// `Ok` only for a 2xx (Telegram: only for a body with `"ok": true`); a
/// 429 is an overload carrying the delay the service asked for, exactly; a
/// 408 or 5xx is retryable; any other 4xx is permanent and never retried;
/// a message quoting a non-JSON body stays short.
pub fn notify_responses(data: &[u8]) {
    let [sink, hi, lo, rest @ ..] = data else {
        return;
    };
    let status = 100 + u16::from_be_bytes([*hi, *lo]) % 500;
    let (header, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
        None => (None, rest),
    };
    // What reqwest would hand over: a header value is any bytes but CR,
    // LF and NUL (`from_bytes` refuses those: they cannot arrive).
    let headers = header
        .and_then(|h| reqwest::header::HeaderValue::from_bytes(h).ok())
        .map(|v| {
            let mut map = reqwest::header::HeaderMap::new();
            map.insert(reqwest::header::RETRY_AFTER, v);
            map
        })
        .unwrap_or_default();
    match SINKS[usize::from(*sink) % SINKS.len()] {
        "telegram" => telegram(status, &headers, body),
        "slack-bot" => common(status, &headers, body, true),
        _ => common(status, &headers, body, false),
    }
}

/// The Bot API's answer, as `TelegramSink::post` reads it.
fn telegram(status: u16, headers: &reqwest::header::HeaderMap, body: &[u8]) {
    // The sink reads the header as whole seconds only (as here).
    let header_retry_after = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let result = reply::classify(status, body, header_retry_after);
    let again = reply::classify(status, body, header_retry_after);
    assert_eq!(format!("{result:?}"), format!("{again:?}"), "deterministic");
    check_outcome(&result);
    match serde_json::from_slice::<ReplyShape>(body) {
        // Not a Bot API reply (a proxy's page): the HTTP status decides.
        Err(_) => match (&result, status) {
            (Err(SinkError::Overloaded { retry_after }), 429) => {
                assert_eq!(*retry_after, header_retry_after, "the header's delay");
            }
            (Err(SinkError::Retryable { message, .. }), 408 | 500..=599 | 200..=299)
            | (Err(SinkError::Permanent { message, .. }), _) => short(message),
            (other, _) => panic!("HTTP {status}, not a Bot API reply: {other:?}"),
        },
        Ok(reply) if reply.ok => assert!(result.is_ok(), "\"ok\": true, yet {result:?}"),
        // An error reply: its code (else the HTTP status) decides.
        Ok(reply) => {
            let code = reply
                .error_code
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(status);
            let asked = reply
                .parameters
                .and_then(|p| p.retry_after)
                .map(Duration::from_secs);
            match (&result, code) {
                (Err(SinkError::Overloaded { retry_after }), 429) => {
                    if asked.is_some() {
                        assert_eq!(*retry_after, asked, "parameters.retry_after is honoured");
                    }
                }
                (Err(SinkError::Retryable { .. }), 408 | 500..=599) => {}
                (Err(SinkError::Permanent { status: s, .. }), c)
                    if !matches!(c, 408 | 429 | 500..=599) =>
                {
                    assert_eq!(*s, Some(c), "the permanent error carries the code");
                }
                (other, c) => panic!("error code {c}: {other:?}"),
            }
        }
    }
}

/// The shape of a Bot API reply (`reply::Reply`'s fields and types): a
/// body that decodes as this one is the Bot API's, and its fields decide.
#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct ReplyShape {
    ok: bool,
    #[serde(default)]
    error_code: Option<i64>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<ParametersShape>,
}

#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct ParametersShape {
    #[serde(default)]
    retry_after: Option<u64>,
    #[serde(default)]
    migrate_to_chat_id: Option<i64>,
}

/// The answer of Slack (a webhook, or the Web API with its JSON body),
/// PagerDuty or Rootly: keel-notify's common mapping.
fn common(status: u16, headers: &reqwest::header::HeaderMap, body: &[u8], web_api: bool) {
    let retry_after = http::retry_after(headers);
    let raw = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    match raw.map(|r| (r, r.parse::<u64>())) {
        Some((_, Ok(secs))) => assert_eq!(retry_after, Some(Duration::from_secs(secs))),
        Some((r, Err(_))) => {
            // An HTTP date counts from now: never a delay past it.
            if let Ok(at) = httpdate::parse_http_date(r) {
                let most = at
                    .duration_since(std::time::SystemTime::now())
                    .unwrap_or_default();
                assert!(retry_after.is_some_and(|d| d <= most + Duration::from_secs(1)));
            } else {
                assert_eq!(retry_after, None, "{r:?} is neither seconds nor a date");
            }
        }
        None => assert_eq!(retry_after, None),
    }
    let answer = Answer {
        status,
        retry_after,
        body: body.to_vec(),
    };
    let mut result = http::classify("Service", &answer);
    assert_eq!(
        kind(&result),
        kind(&http::classify("Service", &answer)),
        "deterministic"
    );
    match (&result, status) {
        (Ok(()), 200..=299) => {}
        (Err(SinkError::Overloaded { retry_after: r }), 429) => {
            assert_eq!(*r, retry_after, "Retry-After is honoured");
        }
        (Err(SinkError::Retryable { message, .. }), 408 | 500..=599) => {
            assert!(message.chars().count() <= 240, "{message}");
        }
        (Err(SinkError::Permanent { status: s, message }), _) => {
            assert_eq!(*s, Some(status));
            short(message);
        }
        (other, _) => panic!("HTTP {status}: {other:?}"),
    }
    if web_api && result.is_ok() {
        result = crate::slack::web_api_reply(body);
        let v: Option<Value> = serde_json::from_slice(body).ok();
        let ok = v
            .as_ref()
            .and_then(|v| v.get("ok"))
            .and_then(Value::as_bool);
        let error = v
            .as_ref()
            .and_then(|v| v.get("error"))
            .and_then(Value::as_str);
        match &result {
            Ok(()) => assert_eq!(ok, Some(true)),
            Err(SinkError::Overloaded { retry_after: None }) => {
                assert_eq!(error, Some("ratelimited"));
            }
            Err(SinkError::Retryable { .. }) => assert!(
                v.is_none()
                    || matches!(
                        error,
                        Some(
                            "internal_error"
                                | "fatal_error"
                                | "service_unavailable"
                                | "request_timeout"
                        )
                    )
            ),
            Err(SinkError::Permanent { .. }) => assert!(v.is_some() && ok != Some(true)),
            Err(other) => panic!("Slack Web API: {other:?}"),
        }
    }
    check_outcome(&result);
}

/// A permanent rejection is never retried; an overload or a retryable
/// failure is.
fn check_outcome(result: &Result<(), SinkError>) {
    if let Err(e) = result {
        let outcome = e.outcome();
        match e {
            SinkError::Permanent { status, .. } => {
                assert!(!outcome.is_retryable(), "{e:?} would be retried");
                assert!(
                    !status.is_some_and(|s| matches!(s, 408 | 429 | 500..=599)),
                    "{e:?}: a retryable status classified as permanent"
                );
            }
            SinkError::Overloaded { retry_after } => {
                assert!(outcome.is_overloaded());
                assert_eq!(outcome.retry_after(), *retry_after);
            }
            SinkError::Retryable { .. } => assert!(outcome.is_retryable()),
        }
        // Displays without panicking (logs and alerts quote it).
        let _ = e.to_string();
    }
}

/// A quoted body is cut at 200 characters (plus the ellipsis).
fn short(message: &str) {
    assert!(
        message.chars().count() <= 270,
        "{} characters quoted",
        message.chars().count()
    );
}

fn kind(result: &Result<(), SinkError>) -> (u8, Option<u16>) {
    match result {
        Ok(()) => (0, None),
        Err(SinkError::Retryable { .. }) => (1, None),
        Err(SinkError::Overloaded { .. }) => (2, None),
        Err(SinkError::Permanent { status, .. }) => (3, *status),
    }
}

/// keel-notify's spool reader (the `spool` target): see the function.
pub use crate::spool::fuzz::spool;
