//! The generic webhook sink (feature `webhook`).
//!
//! [`WebhookSink`] sends each message as a JSON object, and a digest as a
//! JSON array of those objects (most urgent first), to one URL:
//!
//! ```json
//! {"id": 7, "key": "vm-7:STOPPED", "subject": "vm-7", "priority": "critical",
//!  "title": "VM vm-7 is STOPPED", "text": "VM vm-7 is STOPPED (×2)", "body": "",
//!  "fields": [["vm", "vm-7"]], "count": 2}
//! ```
//!
//! The method (POST by default) and extra headers are configurable. With a
//! secret, every request is signed: `X-Keel-Timestamp: <unix seconds>` and
//! `X-Keel-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`,
//! so the receiver can check both origin and freshness (reject timestamps
//! more than a few minutes old). Answers map as every HTTP sender's (see
//! the `http` module): 2xx accepted, 429 with `Retry-After` an overload,
//! 408/5xx and transport failures retryable, other 4xx permanent.
//!
//! A webhook has no documented rate limit, so none is declared unless
//! given ([`WebhookSinkBuilder::rate_limits`]); a digest holds at most 100
//! messages and 256 KiB of JSON by default.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use reqwest::Method;
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::digest::Digest;
use crate::error::{ConfigError, SinkError};
use crate::http;
use crate::notification::Message;
use crate::sink::{Pacer, RateLimit, Sink};

/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-keel-signature";
/// The timestamp header (unix seconds) the signature covers.
pub const TIMESTAMP_HEADER: &str = "x-keel-timestamp";

/// A message as the webhook's JSON object.
pub fn message_json(message: &Message) -> Value {
    let n = message.notification();
    json!({
        "id": message.id(),
        "key": message.key(),
        "subject": n.subject_key(),
        "priority": message.priority(),
        "title": message.title(),
        "text": message.display_title(),
        "body": message.body(),
        "fields": message.fields(),
        "count": message.count(),
    })
}

/// `sha256=<hex>` of HMAC-SHA256(`secret`, `"{timestamp}.{body}"`): what
/// the receiver recomputes to check a request.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any size");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Posts messages as JSON to one URL; see the module documentation.
pub struct WebhookSink {
    name: String,
    client: reqwest::Client,
    url: String,
    method: Method,
    headers: Vec<(HeaderName, HeaderValue)>,
    secret: Option<Vec<u8>>,
    timeout: Duration,
    rate_limits: Vec<RateLimit>,
    max_batch: usize,
    max_body_bytes: usize,
}

impl fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may hold a token: only its fingerprint.
        f.debug_struct("WebhookSink")
            .field("name", &self.name)
            .field("url", &http::fingerprint(&self.url))
            .field("method", &self.method)
            .field("signed", &self.secret.is_some())
            .finish_non_exhaustive()
    }
}

/// Builds a [`WebhookSink`]; start from [`WebhookSink::builder`].
#[must_use]
pub struct WebhookSinkBuilder {
    name: String,
    url: String,
    method: Method,
    headers: Vec<(String, String)>,
    secret: Option<Vec<u8>>,
    client: Option<reqwest::Client>,
    timeout: Duration,
    rate_limits: Vec<RateLimit>,
    max_batch: usize,
    max_body_bytes: usize,
}

impl fmt::Debug for WebhookSinkBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSinkBuilder")
            .field("name", &self.name)
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

impl WebhookSinkBuilder {
    /// The sink's name (default `"webhook"`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The HTTP method (default POST; PUT and PATCH also make sense).
    pub fn method(mut self, method: Method) -> Self {
        self.method = method;
        self
    }

    /// Adds a header to every request (an API key, a tenant).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Signs every request with HMAC-SHA256 under `secret` (see the module
    /// documentation).
    pub fn secret(mut self, secret: impl Into<Vec<u8>>) -> Self {
        self.secret = Some(secret.into());
        self
    }

    /// Uses this client.
    pub fn client(mut self, client: reqwest::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// The timeout of one request (default 10 s); a timeout is retryable.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The receiver's rate limits (default none).
    pub fn rate_limits(mut self, limits: Vec<RateLimit>) -> Self {
        self.rate_limits = limits;
        self
    }

    /// The most messages in one digest (default 100; 1 sends every message
    /// alone).
    pub fn max_batch(mut self, max: usize) -> Self {
        self.max_batch = max;
        self
    }

    /// The most JSON bytes in one digest (default 256 KiB).
    pub fn max_body_bytes(mut self, max: usize) -> Self {
        self.max_body_bytes = max;
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    /// A [`ConfigError`] naming `url`, `name`, `header`, `secret`,
    /// `timeout` or `max_batch`.
    pub fn build(self) -> Result<WebhookSink, ConfigError> {
        let url = http::base_url("url", &self.url)?;
        if self.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::new("timeout", "must be above zero"));
        }
        if self.max_batch == 0 {
            return Err(ConfigError::new("max_batch", "must be at least 1"));
        }
        if self.secret.as_ref().is_some_and(Vec::is_empty) {
            return Err(ConfigError::new("secret", "must not be empty"));
        }
        let mut headers = Vec::with_capacity(self.headers.len());
        for (name, value) in self.headers {
            let n = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| ConfigError::new("header", format!("`{name}`: {e}")))?;
            let v = HeaderValue::from_str(&value)
                .map_err(|e| ConfigError::new("header", format!("value of `{name}`: {e}")))?;
            headers.push((n, v));
        }
        Ok(WebhookSink {
            name: self.name,
            client: http::client(self.client)?,
            url,
            method: self.method,
            headers,
            secret: self.secret,
            timeout: self.timeout,
            rate_limits: self.rate_limits,
            max_batch: self.max_batch,
            max_body_bytes: self.max_body_bytes,
        })
    }
}

impl WebhookSink {
    /// A builder for a sink sending to `url`.
    pub fn builder(url: impl Into<String>) -> WebhookSinkBuilder {
        WebhookSinkBuilder {
            name: "webhook".to_owned(),
            url: url.into(),
            method: Method::POST,
            headers: Vec::new(),
            secret: None,
            client: None,
            timeout: Duration::from_secs(10),
            rate_limits: Vec::new(),
            max_batch: 100,
            max_body_bytes: 256 * 1024,
        }
    }

    async fn post(&self, body: Vec<u8>) -> Result<(), SinkError> {
        let mut request = self
            .client
            .request(self.method.clone(), &self.url)
            .timeout(self.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        if let Some(secret) = &self.secret {
            let timestamp = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            request = request
                .header(TIMESTAMP_HEADER, timestamp.to_string())
                .header(SIGNATURE_HEADER, signature(secret, timestamp, &body));
        }
        let answer = http::send(request.body(body), "the webhook").await?;
        http::classify("the webhook", &answer)
    }
}

impl Sink for WebhookSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, message: &Message) -> Result<(), SinkError> {
        let body = serde_json::to_vec(&message_json(message))
            .map_err(|e| SinkError::permanent(None, e.to_string()))?;
        self.post(body).await
    }

    fn supports_digest(&self) -> bool {
        self.max_batch > 1
    }

    fn digest_fit(&self, entries: &[Message]) -> usize {
        let sizes = entries
            .iter()
            .take(self.max_batch)
            .map(|m| serde_json::to_vec(&message_json(m)).map_or(usize::MAX, |v| v.len()) + 1);
        crate::digest::fit_by_cost(self.max_body_bytes, 2, sizes)
    }

    async fn send_digest(&self, digest: &Digest, _pacer: &Pacer<'_>) -> Result<(), SinkError> {
        let array: Vec<Value> = digest.entries().iter().map(message_json).collect();
        let body =
            serde_json::to_vec(&array).map_err(|e| SinkError::permanent(None, e.to_string()))?;
        self.post(body).await
    }

    fn rate_limits(&self) -> Vec<RateLimit> {
        self.rate_limits.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notification::Notification;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // RFC 4231 style check against an independent computation.
        let sig = signature(b"key", 1_700_000_000, b"{}");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"key").unwrap();
        mac.update(b"1700000000.{}");
        assert_eq!(
            sig,
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
        );
        assert_ne!(sig, signature(b"key", 1_700_000_001, b"{}"));
    }

    #[test]
    fn builder_validates_and_digests_fit_by_count_and_size() {
        let err = |b: WebhookSinkBuilder| b.build().unwrap_err().field().to_owned();
        assert_eq!(err(WebhookSink::builder("nope")), "url");
        assert_eq!(
            err(WebhookSink::builder("http://x").max_batch(0)),
            "max_batch"
        );
        assert_eq!(
            err(WebhookSink::builder("http://x").header("bad name", "v")),
            "header"
        );
        assert_eq!(err(WebhookSink::builder("http://x").secret("")), "secret");
        let sink = WebhookSink::builder("http://x/hook?token=s3cret")
            .max_batch(5)
            .build()
            .unwrap();
        assert!(!format!("{sink:?}").contains("s3cret"));
        let m = |i| Message::new(i, Notification::critical(format!("k{i}"), "t"), 1);
        let many: Vec<Message> = (0..20).map(m).collect();
        assert_eq!(sink.digest_fit(&many), 5);
        let small = WebhookSink::builder("http://x")
            .max_body_bytes(300)
            .build()
            .unwrap();
        let fit = small.digest_fit(&many);
        assert!((1..5).contains(&fit), "{fit}");
        let json = message_json(&Message::new(
            3,
            Notification::warning("k", "t").field("a", "1").subject("s"),
            2,
        ));
        assert_eq!(json["fields"], json!([["a", "1"]]));
        assert_eq!(
            (json["subject"].as_str(), json["count"].as_u64()),
            (Some("s"), Some(2))
        );
        assert_eq!(json["text"], "t (×2)");
    }
}
