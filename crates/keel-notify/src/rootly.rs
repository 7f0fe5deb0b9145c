//! The Rootly alerts API sink (feature `rootly`).
//!
//! [`RootlySink`] posts every message as one alert to `POST
//! {base}/v1/alerts` with `Authorization: Bearer <token>` and a JSON:API
//! body (`Content-Type: application/vnd.api+json`):
//!
//! ```json
//! {"data": {"type": "alerts", "attributes": {
//!   "summary": "VM vm-7 is STOPPED", "description": "...", "source": "api",
//!   "noise": "not_noise", "external_id": "vm-7:STOPPED",
//!   "deduplication_key": "keel-<fingerprint of the subject>",
//!   "labels": [{"key": "priority", "value": "critical"}, {"key": "vm", "value": "vm-7"}],
//!   "started_at": "2026-12-07T05:00:00Z"}}}
//! ```
//!
//! A [`crate::Phase::Resolve`] notification sends
//! `ended_at` instead of `started_at`, with the same deduplication key.
//! Answers map like every HTTP sender's: `201` accepted; 429 with
//! `Retry-After` an overload; 408, 5xx and transport failures retryable;
//! other 4xx (401 bad token, 422 invalid alert) permanent. Rootly publishes
//! no per-alert limit in our reference, so the default is a conservative 60
//! alerts per minute per token; set your plan's with
//! [`RootlySinkBuilder::rate_limits`].

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::error::{ConfigError, SinkError};
use crate::http;
use crate::notification::{Message, Phase};
use crate::sink::{RateLimit, Sink};

/// The real API base URL.
pub const DEFAULT_BASE_URL: &str = "https://api.rootly.com";

/// `2026-12-07T05:00:00Z` for a unix time in seconds (UTC, RFC 3339).
pub fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3_600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Creates Rootly alerts; see the module documentation.
pub struct RootlySink {
    name: String,
    client: reqwest::Client,
    url: String,
    token: String,
    source: String,
    timeout: Duration,
    rate_limits: Option<Vec<RateLimit>>,
}

impl fmt::Debug for RootlySink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootlySink")
            .field("name", &self.name)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Builds a [`RootlySink`]; start from [`RootlySink::builder`].
#[must_use]
pub struct RootlySinkBuilder {
    name: String,
    token: String,
    base_url: String,
    source: String,
    client: Option<reqwest::Client>,
    timeout: Duration,
    rate_limits: Option<Vec<RateLimit>>,
}

impl fmt::Debug for RootlySinkBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootlySinkBuilder")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl RootlySinkBuilder {
    /// The sink's name (default `"rootly"`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The API base URL (default [`DEFAULT_BASE_URL`]).
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = url.into();
        self
    }

    /// The alert `source` (default `api`).
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }

    /// Uses this client.
    pub fn client(mut self, client: reqwest::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// The timeout of one request (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Replaces the declared rate limits (default 60/min per token).
    pub fn rate_limits(mut self, limits: Vec<RateLimit>) -> Self {
        self.rate_limits = Some(limits);
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    /// A [`ConfigError`] naming `token`, `base_url`, `source`, `name` or
    /// `timeout`.
    pub fn build(self) -> Result<RootlySink, ConfigError> {
        let token = self.token.trim().to_owned();
        if token.is_empty() || token.contains(char::is_whitespace) {
            return Err(ConfigError::new("token", "must be an API token"));
        }
        if self.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        if self.source.trim().is_empty() {
            return Err(ConfigError::new("source", "must not be empty"));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::new("timeout", "must be above zero"));
        }
        let base = http::base_url("base_url", &self.base_url)?;
        Ok(RootlySink {
            name: self.name,
            client: http::client(self.client)?,
            url: format!("{base}/v1/alerts"),
            token,
            source: self.source,
            timeout: self.timeout,
            rate_limits: self.rate_limits,
        })
    }
}

impl RootlySink {
    /// A builder for a sink creating alerts with the API `token`.
    pub fn builder(token: impl Into<String>) -> RootlySinkBuilder {
        RootlySinkBuilder {
            name: "rootly".to_owned(),
            token: token.into(),
            base_url: DEFAULT_BASE_URL.to_owned(),
            source: "api".to_owned(),
            client: None,
            timeout: Duration::from_secs(10),
            rate_limits: None,
        }
    }

    /// The JSON:API document for `message`, stamped `now` (unix seconds).
    pub fn document(&self, message: &Message, now: u64) -> Value {
        let n = message.notification();
        let mut description = message.body().to_owned();
        for (k, v) in message.fields() {
            if !description.is_empty() {
                description.push('\n');
            }
            description.push_str(&format!("{k}: {v}"));
        }
        let mut labels = vec![json!({"key": "priority", "value": message.priority()})];
        labels.extend(
            message
                .fields()
                .iter()
                .map(|(k, v)| json!({"key": k, "value": v})),
        );
        let mut attributes = json!({
            "summary": message.display_title(),
            "description": description,
            "source": self.source,
            "noise": "not_noise",
            "external_id": message.key(),
            "deduplication_key": format!("keel-{}", http::fingerprint(n.subject_key())),
            "labels": labels,
        });
        let stamp = if n.phase() == Phase::Resolve {
            "ended_at"
        } else {
            "started_at"
        };
        attributes[stamp] = json!(rfc3339(now));
        json!({"data": {"type": "alerts", "attributes": attributes}})
    }
}

impl Sink for RootlySink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, message: &Message) -> Result<(), SinkError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let body = serde_json::to_vec(&self.document(message, now))
            .map_err(|e| SinkError::permanent(None, e.to_string()))?;
        let request = self
            .client
            .post(&self.url)
            .timeout(self.timeout)
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/vnd.api+json")
            .body(body);
        let answer = http::send(request, "Rootly").await?;
        http::classify("Rootly", &answer)
    }

    fn rate_limits(&self) -> Vec<RateLimit> {
        if let Some(limits) = &self.rate_limits {
            return limits.clone();
        }
        vec![RateLimit::per_minute(
            format!("rootly:{}", http::fingerprint(&self.token)),
            60,
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notification::Notification;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_619_661), "2026-12-07T05:01:01Z");
    }

    #[test]
    fn json_api_document() {
        let sink = RootlySink::builder("tok").build().unwrap();
        let m = Message::new(
            1,
            Notification::critical("vm-7:STOPPED", "VM vm-7 is STOPPED")
                .subject("vm-7")
                .body("Starting it.")
                .field("vm", "vm-7"),
            1,
        );
        let doc = sink.document(&m, 0);
        let a = &doc["data"]["attributes"];
        assert_eq!(doc["data"]["type"], "alerts");
        assert_eq!(a["summary"], "VM vm-7 is STOPPED");
        assert_eq!(a["description"], "Starting it.\nvm: vm-7");
        assert_eq!(a["labels"][1], json!({"key": "vm", "value": "vm-7"}));
        assert_eq!(a["started_at"], "1970-01-01T00:00:00Z");
        let up = Message::new(
            2,
            Notification::info("vm-7:up", "up")
                .subject("vm-7")
                .resolves(),
            1,
        );
        let r = sink.document(&up, 0);
        assert_eq!(r["data"]["attributes"]["ended_at"], "1970-01-01T00:00:00Z");
        assert_eq!(
            r["data"]["attributes"]["deduplication_key"],
            a["deduplication_key"]
        );
        let err = |b: RootlySinkBuilder| b.build().unwrap_err().field().to_owned();
        assert_eq!(err(RootlySink::builder(" ")), "token");
        assert_eq!(err(RootlySink::builder("t").base_url("x")), "base_url");
    }
}
