//! Reading a Bot API reply into `Ok` or a [`SinkError`] of the right kind.

use std::time::Duration;

use serde::Deserialize;

use crate::error::SinkError;

#[derive(Debug, Deserialize)]
struct Reply {
    ok: bool,
    #[serde(default)]
    error_code: Option<i64>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<Parameters>,
}

#[derive(Debug, Default, Deserialize)]
struct Parameters {
    #[serde(default)]
    retry_after: Option<u64>,
    #[serde(default)]
    migrate_to_chat_id: Option<i64>,
}

/// `"Too Many Requests: retry after 34"` → 34 s: the form older Bot API
/// replies (and some proxies) use, with no `parameters`.
pub(crate) fn retry_after_from_description(description: &str) -> Option<Duration> {
    let lower = description.to_ascii_lowercase();
    let at = lower.find("retry after")? + "retry after".len();
    let digits: String = lower[at..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok().map(Duration::from_secs)
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Classifies one `sendMessage` reply.
///
/// * `ok: true` → `Ok`.
/// * 429 → [`SinkError::Overloaded`] with `parameters.retry_after`, else the
///   delay in `description`, else the HTTP `Retry-After` header.
/// * 5xx, 408, or a reply that is not Bot API JSON with such a status (a
///   proxy's error page) → [`SinkError::Retryable`].
/// * Any other error (400 bad request, 401 bad token, 403 bot removed, 404,
///   a group migrated to a supergroup) → [`SinkError::Permanent`].
pub(crate) fn classify(
    status: u16,
    body: &[u8],
    header_retry_after: Option<Duration>,
) -> Result<(), SinkError> {
    let Ok(reply) = serde_json::from_slice::<Reply>(body) else {
        return match status {
            429 => Err(SinkError::overloaded(header_retry_after)),
            408 | 500..=599 => Err(SinkError::retryable(format!(
                "Telegram answered HTTP {status}: {}",
                snippet(body)
            ))),
            // A 2xx that is not the Bot API (a captive portal, a misrouted
            // proxy) is worth another try; a 4xx page is not.
            200..=299 => Err(SinkError::retryable(format!(
                "unexpected reply from Telegram (HTTP {status}): {}",
                snippet(body)
            ))),
            _ => Err(SinkError::permanent(Some(status), snippet(body))),
        };
    };
    if reply.ok {
        return Ok(());
    }
    let code = reply
        .error_code
        .and_then(|c| u16::try_from(c).ok())
        .unwrap_or(status);
    let description = reply.description.unwrap_or_default();
    let params = reply.parameters.unwrap_or_default();
    match code {
        429 => {
            let retry_after = params
                .retry_after
                .map(Duration::from_secs)
                .or_else(|| retry_after_from_description(&description))
                .or(header_retry_after);
            Err(SinkError::overloaded(retry_after))
        }
        408 | 500..=599 => Err(SinkError::retryable(format!(
            "Telegram error {code}: {description}"
        ))),
        _ => {
            let message = match params.migrate_to_chat_id {
                Some(to) => format!(
                    "{description} (the group became supergroup {to}: configure that chat id)"
                ),
                None => description,
            };
            Err(SinkError::permanent(Some(code), message))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::{ErrorOutcome, Outcome};

    fn outcome(status: u16, body: &str) -> Outcome {
        match classify(status, body.as_bytes(), None) {
            Ok(()) => Outcome::Success,
            Err(e) => e.outcome(),
        }
    }

    #[test]
    fn success() {
        assert_eq!(
            outcome(200, r#"{"ok":true,"result":{"message_id":7}}"#),
            Outcome::Success
        );
    }

    #[test]
    fn too_many_requests_both_forms() {
        let modern = r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 5","parameters":{"retry_after":5}}"#;
        assert_eq!(
            outcome(429, modern),
            Outcome::overloaded_for(Duration::from_secs(5))
        );
        let older =
            r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 34"}"#;
        assert_eq!(
            outcome(429, older),
            Outcome::overloaded_for(Duration::from_secs(34))
        );
        // The parameters win over the description.
        let both = r#"{"ok":false,"error_code":429,"description":"retry after 9","parameters":{"retry_after":3}}"#;
        assert_eq!(
            outcome(429, both),
            Outcome::overloaded_for(Duration::from_secs(3))
        );
        // Neither: the header, else no hint.
        let bare = r#"{"ok":false,"error_code":429,"description":"Too Many Requests"}"#;
        assert_eq!(
            classify(429, bare.as_bytes(), Some(Duration::from_secs(2)))
                .unwrap_err()
                .retry_after(),
            Some(Duration::from_secs(2))
        );
        assert_eq!(outcome(429, bare), Outcome::OVERLOADED);
        assert_eq!(outcome(429, "<html>slow down</html>"), Outcome::OVERLOADED);
    }

    #[test]
    fn errors_by_kind() {
        assert_eq!(
            outcome(
                401,
                r#"{"ok":false,"error_code":401,"description":"Unauthorized"}"#
            ),
            Outcome::Neutral
        );
        let e = classify(
            400,
            br#"{"ok":false,"error_code":400,"description":"Bad Request: chat not found"}"#,
            None,
        )
        .unwrap_err();
        assert!(e.is_permanent());
        assert_eq!(
            e.to_string(),
            "sink rejected the message (400): Bad Request: chat not found"
        );
        let migrated = classify(
            400,
            br#"{"ok":false,"error_code":400,"description":"Bad Request: group chat was upgraded to a supergroup chat","parameters":{"migrate_to_chat_id":-1001234}}"#,
            None,
        )
        .unwrap_err();
        assert!(migrated.to_string().contains("-1001234"));
        assert_eq!(
            outcome(
                502,
                r#"{"ok":false,"error_code":502,"description":"Bad Gateway"}"#
            ),
            Outcome::Failure
        );
        assert_eq!(outcome(503, "<html>503</html>"), Outcome::Failure);
        assert_eq!(outcome(200, "<html>portal</html>"), Outcome::Failure);
        assert_eq!(outcome(404, "not found"), Outcome::Neutral);
    }

    #[test]
    fn description_parsing() {
        assert_eq!(
            retry_after_from_description("Too Many Requests: retry after 7"),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_after_from_description("Flood control exceeded. Retry after 3600 seconds"),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(retry_after_from_description("Too Many Requests"), None);
        assert_eq!(retry_after_from_description("retry after soon"), None);
    }
}
