//! What the HTTP senders share: building the client, checking a base URL,
//! sending one request and mapping the answer to `Ok` or a [`SinkError`]
//! of the right kind.
//!
//! The mapping (every sender documents its service's variations):
//!
//! * 2xx → `Ok`;
//! * 429 → [`SinkError::Overloaded`] with the `Retry-After` header (whole
//!   seconds; an HTTP date counts from now); the notifier waits it out up
//!   to its cap and escalates above it instead of blocking;
//! * 408 and 5xx, a timeout, a refused or dropped connection →
//!   [`SinkError::Retryable`];
//! * any other 4xx → [`SinkError::Permanent`] with the status and the start
//!   of the body.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};

use crate::error::{ConfigError, SinkError};

/// One answer, read whole.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) body: Vec<u8>,
}

/// `Retry-After` as seconds or an HTTP date (counted from now).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

/// The start of a body, for a log line or an error.
pub(crate) fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Sends `request` and reads the whole answer; a transport failure
/// (refused, reset, dropped, timed out) is retryable. `service` names the
/// service in errors; URLs are left out (they may hold a secret).
pub(crate) async fn send(
    request: reqwest::RequestBuilder,
    service: &str,
) -> Result<Answer, SinkError> {
    let response = request.send().await.map_err(|e| {
        SinkError::retryable_from(format!("request to {service} failed"), e.without_url())
    })?;
    let status = response.status().as_u16();
    let retry_after = retry_after(response.headers());
    let body = response.bytes().await.map_err(|e| {
        SinkError::retryable_from(
            format!("reading the {service} reply failed"),
            e.without_url(),
        )
    })?;
    Ok(Answer {
        status,
        retry_after,
        body: body.to_vec(),
    })
}

/// The common mapping of an answer (see the module documentation).
pub(crate) fn classify(service: &str, answer: &Answer) -> Result<(), SinkError> {
    match answer.status {
        200..=299 => Ok(()),
        429 => Err(SinkError::overloaded(answer.retry_after)),
        408 | 500..=599 => Err(SinkError::retryable(format!(
            "{service} answered HTTP {}: {}",
            answer.status,
            snippet(&answer.body)
        ))),
        status => Err(SinkError::permanent(Some(status), snippet(&answer.body))),
    }
}

/// Checks an http(s) base URL and returns it without a trailing slash.
pub(crate) fn base_url(field: &'static str, url: &str) -> Result<String, ConfigError> {
    let base = url.trim().trim_end_matches('/');
    let parsed =
        reqwest::Url::parse(base).map_err(|e| ConfigError::new(field, format!("`{base}`: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ConfigError::new(field, "must be an http or https URL"));
    }
    Ok(base.to_owned())
}

/// The given client, or a new one.
pub(crate) fn client(client: Option<reqwest::Client>) -> Result<reqwest::Client, ConfigError> {
    match client {
        Some(c) => Ok(c),
        None => reqwest::Client::builder()
            .build()
            .map_err(|e| ConfigError::new("client", e.to_string())),
    }
}

/// A short, stable fingerprint of `text` (hex SHA-256, first 32 digits):
/// a rate-limit key or a dedup key that does not reveal a secret URL.
pub(crate) fn fingerprint(text: &str) -> String {
    use sha2::{Digest as _, Sha256};
    let digest = Sha256::digest(text.as_bytes());
    hex::encode(&digest[..16])
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::{ErrorOutcome, Outcome};

    fn answer(status: u16, retry_after: Option<u64>) -> Answer {
        Answer {
            status,
            retry_after: retry_after.map(Duration::from_secs),
            body: b"boom".to_vec(),
        }
    }

    #[test]
    fn statuses_map_to_outcomes() {
        let o = |a: Answer| match classify("svc", &a) {
            Ok(()) => Outcome::Success,
            Err(e) => e.outcome(),
        };
        assert_eq!(o(answer(202, None)), Outcome::Success);
        assert_eq!(
            o(answer(429, Some(7))),
            Outcome::overloaded_for(Duration::from_secs(7))
        );
        assert_eq!(o(answer(503, None)), Outcome::Failure);
        assert_eq!(o(answer(408, None)), Outcome::Failure);
        assert_eq!(o(answer(400, None)), Outcome::Neutral);
        assert_eq!(o(answer(404, None)), Outcome::Neutral);
    }

    #[test]
    fn retry_after_in_seconds_or_a_date() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "30".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(30)));
        let later = SystemTime::now() + Duration::from_secs(120);
        h.insert(RETRY_AFTER, httpdate::fmt_http_date(later).parse().unwrap());
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(110) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        h.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn base_urls_and_fingerprints() {
        assert_eq!(base_url("u", "https://x.test/").unwrap(), "https://x.test");
        assert_eq!(base_url("u", "ftp://x").unwrap_err().field(), "u");
        assert_eq!(fingerprint("vm-7").len(), 32);
        assert_eq!(fingerprint("vm-7"), fingerprint("vm-7"));
        assert_ne!(fingerprint("vm-7"), fingerprint("vm-8"));
    }
}
