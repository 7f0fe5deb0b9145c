//! The PagerDuty Events API v2 sink (feature `pagerduty`).
//!
//! [`PagerDutySink`] posts every message as one event to `POST
//! {base}/v2/enqueue`:
//!
//! * `event_action` from the notification's [`Phase`]: `trigger`,
//!   `acknowledge` or `resolve`;
//! * `dedup_key` = `keel-` + a fingerprint (hex SHA-256, 32 digits) of the
//!   notification's subject ([`Notification::subject_key`]), so the resolve
//!   of a VM closes the incident its trigger opened;
//! * `payload`: `summary` (the title with its count, at most 1,024
//!   characters), `source` (configurable, default `keel`), `severity`
//!   (critical → `critical`, warning → `warning`, info → `info`),
//!   `custom_details` (body, fields, count).
//!
//! Answers: `202` accepted; `400` (an invalid event) permanent; `429` an
//! overload (PagerDuty sends no `Retry-After`, so the notifier backs off by
//! its own policy unless one is present); 5xx and transport failures
//! retryable. The default rate limit is PagerDuty's 120 events per minute
//! per routing key. Events are never combined: each carries its own
//! incident key.
//!
//! [`Phase`]: crate::Phase
//! [`Notification::subject_key`]: crate::Notification::subject_key

use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::error::{ConfigError, SinkError};
use crate::http;
use crate::notification::{Message, Priority};
use crate::sink::{RateLimit, Sink};

/// The real Events API base URL.
pub const DEFAULT_BASE_URL: &str = "https://events.pagerduty.com";

/// The dedup key of a subject: what resolve uses to close a trigger.
pub fn dedup_key(subject: &str) -> String {
    format!("keel-{}", http::fingerprint(subject))
}

/// PagerDuty's severity for a priority.
pub fn severity(priority: Priority) -> &'static str {
    match priority {
        Priority::Critical => "critical",
        Priority::Warning => "warning",
        Priority::Info => "info",
    }
}

/// Sends events to one PagerDuty service (routing key).
pub struct PagerDutySink {
    name: String,
    client: reqwest::Client,
    url: String,
    routing_key: String,
    source: String,
    timeout: Duration,
    rate_limits: Option<Vec<RateLimit>>,
    subject_as_dedup_key: bool,
}

impl fmt::Debug for PagerDutySink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PagerDutySink")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("routing_key", &http::fingerprint(&self.routing_key))
            .finish_non_exhaustive()
    }
}

/// Builds a [`PagerDutySink`]; start from [`PagerDutySink::builder`].
#[must_use]
pub struct PagerDutySinkBuilder {
    name: String,
    routing_key: String,
    base_url: String,
    source: String,
    client: Option<reqwest::Client>,
    timeout: Duration,
    rate_limits: Option<Vec<RateLimit>>,
    subject_as_dedup_key: bool,
}

impl fmt::Debug for PagerDutySinkBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PagerDutySinkBuilder")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl PagerDutySinkBuilder {
    /// The sink's name (default `"pagerduty"`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The Events API base URL (default [`DEFAULT_BASE_URL`]).
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = url.into();
        self
    }

    /// `payload.source` (default `keel`): the program or host raising it.
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

    /// Replaces the declared rate limits (default 120/min per routing key).
    pub fn rate_limits(mut self, limits: Vec<RateLimit>) -> Self {
        self.rate_limits = Some(limits);
        self
    }

    /// Uses the notification's subject itself as the `dedup_key` (when it
    /// is 1 to 255 printable ASCII characters, else the default hashed
    /// key): for a program whose subjects are already stable identifiers
    /// that people look up in PagerDuty, such as an Alertmanager
    /// fingerprint. Default off (`keel-` + a hash of the subject).
    pub fn subject_as_dedup_key(mut self, on: bool) -> Self {
        self.subject_as_dedup_key = on;
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    /// A [`ConfigError`] naming `routing_key` (not 32 characters),
    /// `base_url`, `source`, `name` or `timeout`.
    pub fn build(self) -> Result<PagerDutySink, ConfigError> {
        let key = self.routing_key.trim().to_owned();
        if key.len() != 32 || !key.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(ConfigError::new(
                "routing_key",
                "must be the 32-character integration key",
            ));
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
        Ok(PagerDutySink {
            name: self.name,
            client: http::client(self.client)?,
            url: format!("{base}/v2/enqueue"),
            routing_key: key,
            source: self.source,
            timeout: self.timeout,
            rate_limits: self.rate_limits,
            subject_as_dedup_key: self.subject_as_dedup_key,
        })
    }
}

impl PagerDutySink {
    /// A builder for a sink sending to the service of `routing_key`.
    pub fn builder(routing_key: impl Into<String>) -> PagerDutySinkBuilder {
        PagerDutySinkBuilder {
            name: "pagerduty".to_owned(),
            routing_key: routing_key.into(),
            base_url: DEFAULT_BASE_URL.to_owned(),
            source: "keel".to_owned(),
            client: None,
            timeout: Duration::from_secs(10),
            rate_limits: None,
            subject_as_dedup_key: false,
        }
    }

    /// The `dedup_key` of a subject under this sink's settings.
    pub fn dedup_key_of(&self, subject: &str) -> String {
        let verbatim = self.subject_as_dedup_key
            && (1..=255).contains(&subject.len())
            && subject.bytes().all(|b| b.is_ascii_graphic());
        if verbatim {
            subject.to_owned()
        } else {
            dedup_key(subject)
        }
    }

    /// The event for `message`.
    pub fn event(&self, message: &Message) -> Value {
        let n = message.notification();
        let action = n.phase().as_str();
        let mut event = json!({
            "routing_key": self.routing_key,
            "event_action": action,
            "dedup_key": self.dedup_key_of(n.subject_key()),
            "client": "keel-notify",
        });
        if action == "trigger" {
            let fields: Map<String, Value> = message
                .fields()
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            event["payload"] = json!({
                "summary": message.display_title().chars().take(1_024).collect::<String>(),
                "source": self.source,
                "severity": severity(message.priority()),
                "custom_details": {
                    "body": message.body(),
                    "fields": fields,
                    "count": message.count(),
                    "key": message.key(),
                },
            });
        }
        event
    }
}

impl Sink for PagerDutySink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, message: &Message) -> Result<(), SinkError> {
        let request = self
            .client
            .post(&self.url)
            .timeout(self.timeout)
            .json(&self.event(message));
        let answer = http::send(request, "PagerDuty").await?;
        http::classify("PagerDuty", &answer)
    }

    fn rate_limits(&self) -> Vec<RateLimit> {
        if let Some(limits) = &self.rate_limits {
            return limits.clone();
        }
        vec![RateLimit::per_minute(
            format!("pagerduty:{}", http::fingerprint(&self.routing_key)),
            120,
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notification::Notification;

    const KEY: &str = "R0123456789abcdef0123456789abcde";

    #[test]
    fn trigger_and_resolve_share_the_subject_dedup_key() {
        let sink = PagerDutySink::builder(KEY)
            .source("vm-watchdog")
            .build()
            .unwrap();
        let down = Message::new(
            1,
            Notification::critical("vm-7:STOPPED", "VM vm-7 is STOPPED")
                .subject("vm-7")
                .field("zone", "a"),
            2,
        );
        let up = Message::new(
            2,
            Notification::info("vm-7:recovered", "VM vm-7 recovered")
                .subject("vm-7")
                .resolves(),
            1,
        );
        let t = sink.event(&down);
        let r = sink.event(&up);
        assert_eq!(t["event_action"], "trigger");
        assert_eq!(r["event_action"], "resolve");
        assert_eq!(t["dedup_key"], r["dedup_key"]);
        assert_eq!(t["payload"]["summary"], "VM vm-7 is STOPPED (×2)");
        assert_eq!(t["payload"]["severity"], "critical");
        assert_eq!(t["payload"]["source"], "vm-watchdog");
        assert_eq!(t["payload"]["custom_details"]["fields"]["zone"], "a");
        assert!(r.get("payload").is_none());
        assert_eq!(severity(Priority::Warning), "warning");
    }

    #[test]
    fn the_subject_can_be_the_dedup_key() {
        let sink = PagerDutySink::builder(KEY)
            .subject_as_dedup_key(true)
            .build()
            .unwrap();
        let m =
            |subject: &str| Message::new(1, Notification::critical("k", "t").subject(subject), 1);
        assert_eq!(
            sink.event(&m("12a9e0cfd9b7b39d"))["dedup_key"],
            "12a9e0cfd9b7b39d"
        );
        // Not a usable key as it is: hashed as by default.
        for bad in ["with space", &"x".repeat(256)] {
            assert_eq!(sink.event(&m(bad))["dedup_key"], json!(dedup_key(bad)));
        }
        let default = PagerDutySink::builder(KEY).build().unwrap();
        assert_eq!(
            default.event(&m("12a9e0cfd9b7b39d"))["dedup_key"],
            json!(dedup_key("12a9e0cfd9b7b39d"))
        );
    }

    #[test]
    fn builder_validates() {
        let err = |b: PagerDutySinkBuilder| b.build().unwrap_err().field().to_owned();
        assert_eq!(err(PagerDutySink::builder("short")), "routing_key");
        assert_eq!(err(PagerDutySink::builder(KEY).base_url("x")), "base_url");
        assert_eq!(err(PagerDutySink::builder(KEY).source(" ")), "source");
        let sink = PagerDutySink::builder(KEY).build().unwrap();
        assert!(!format!("{sink:?}").contains(KEY));
        assert_eq!(sink.rate_limits()[0].max(), 120);
    }
}
