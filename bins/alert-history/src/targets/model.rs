//! One publishing target: what it is, where it comes from, which alerts it
//! wants, and how it is read from a targets-file entry or a Secret's keys.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Value, json};

use crate::routing::{AlertView, Classification};

/// The keys a target is read from (a Secret's data keys, a file entry's
/// keys; the file adds `name`).
pub const KEYS: &[&str] = &[
    "name",
    "url",
    "format",
    "api-key",
    "token",
    "channel",
    "filter-severity",
    "filter-namespaces",
    "min-confidence",
    "alert-name-pattern",
];

/// Which sender a target uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TargetFormat {
    /// Slack: an incoming webhook, or `chat.postMessage` with a token and a
    /// channel.
    Slack,
    /// PagerDuty Events API v2 (the secret is the routing key).
    PagerDuty,
    /// Rootly alerts API (the secret is the API token).
    Rootly,
    /// A generic JSON webhook (the secret, if any, is sent as a bearer
    /// token).
    Webhook,
}

impl TargetFormat {
    /// `slack`, `pagerduty`, `rootly` or `webhook`.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetFormat::Slack => "slack",
            TargetFormat::PagerDuty => "pagerduty",
            TargetFormat::Rootly => "rootly",
            TargetFormat::Webhook => "webhook",
        }
    }

    /// Parses the `format` key (case-insensitive).
    pub fn parse(text: &str) -> Option<TargetFormat> {
        match text.trim().to_ascii_lowercase().as_str() {
            "slack" => Some(TargetFormat::Slack),
            "pagerduty" => Some(TargetFormat::PagerDuty),
            "rootly" => Some(TargetFormat::Rootly),
            "webhook" => Some(TargetFormat::Webhook),
            _ => None,
        }
    }
}

impl fmt::Display for TargetFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a target was defined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSource {
    /// `TARGETS_FILE`.
    File,
    /// A Secret labelled for discovery.
    Kubernetes {
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        secret: String,
    },
}

impl TargetSource {
    /// `file` or `secret <namespace>/<name>`, for reports.
    pub fn describe(&self) -> String {
        match self {
            TargetSource::File => "file".to_owned(),
            TargetSource::Kubernetes { namespace, secret } => {
                format!("secret {namespace}/{secret}")
            }
        }
    }

    /// The JSON shape served by `GET /publishing/targets`.
    pub fn to_json(&self) -> Value {
        match self {
            TargetSource::File => json!({"kind": "file"}),
            TargetSource::Kubernetes { namespace, secret } => {
                json!({"kind": "kubernetes", "namespace": namespace, "secret": secret})
            }
        }
    }
}

/// A publishing target. Its `secret` (API key, routing key or token) is
/// never shown: not by `Debug`, not in logs, not in JSON, and its `url` is
/// shown redacted ([`redact_url`]) since a webhook URL is itself a
/// credential.
#[derive(Clone)]
pub struct Target {
    /// Unique among the targets in effect; the sink is named after it.
    pub name: String,
    /// Which sender.
    pub format: TargetFormat,
    /// Used as given: the Slack webhook URL or Web API base, the PagerDuty
    /// Events API base, the Rootly API base, the webhook URL.
    pub url: String,
    /// `api-key` or `token`.
    pub secret: Option<String>,
    /// Slack channel (with a token: `chat.postMessage`).
    pub channel: Option<String>,
    /// Severity labels this target wants (empty: any).
    pub filter_severity: Vec<String>,
    /// Namespaces this target wants (empty: any).
    pub filter_namespaces: Vec<String>,
    /// Lowest classification confidence this target wants.
    pub min_confidence: Option<f64>,
    /// Alert names this target wants, matched against the whole name.
    pub alert_name_pattern: Option<regex::Regex>,
    /// Where it was defined.
    pub source: TargetSource,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("name", &self.name)
            .field("format", &self.format)
            .field("url", &redact_url(&self.url))
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("channel", &self.channel)
            .field("filter_severity", &self.filter_severity)
            .field("filter_namespaces", &self.filter_namespaces)
            .field("min_confidence", &self.min_confidence)
            .field(
                "alert_name_pattern",
                &self.alert_name_pattern.as_ref().map(pattern_text),
            )
            .field("source", &self.source)
            .finish()
    }
}

/// The pattern as written (without the anchoring added when compiled).
fn pattern_text(r: &regex::Regex) -> &str {
    r.as_str()
        .strip_prefix("^(?:")
        .and_then(|s| s.strip_suffix(")$"))
        .unwrap_or(r.as_str())
}

impl PartialEq for Target {
    fn eq(&self, other: &Target) -> bool {
        self.name == other.name
            && self.format == other.format
            && self.url == other.url
            && self.secret == other.secret
            && self.channel == other.channel
            && self.filter_severity == other.filter_severity
            && self.filter_namespaces == other.filter_namespaces
            && self.min_confidence == other.min_confidence
            && self.alert_name_pattern.as_ref().map(regex::Regex::as_str)
                == other.alert_name_pattern.as_ref().map(regex::Regex::as_str)
            && self.source == other.source
    }
}

impl Target {
    /// A target with no filters and no secret (tests build on it).
    pub fn new(name: impl Into<String>, format: TargetFormat, url: impl Into<String>) -> Target {
        Target {
            name: name.into(),
            format,
            url: url.into(),
            secret: None,
            channel: None,
            filter_severity: Vec::new(),
            filter_namespaces: Vec::new(),
            min_confidence: None,
            alert_name_pattern: None,
            source: TargetSource::File,
        }
    }

    /// The static filters: the alert's `severity` label is one of
    /// `filter_severity` (compared case-insensitively; empty: any, and an
    /// alert without the label is then wanted), its `namespace` label one
    /// of `filter_namespaces` (exactly; empty: any), and its `alertname`
    /// matches `alert_name_pattern` as a whole (the pattern is anchored at
    /// both ends: `Disk.*` matches `DiskFull`, not `NodeDiskFull`). An
    /// alert without the label a non-empty filter asks for is not wanted.
    pub fn wants(&self, alert: &AlertView) -> bool {
        let severity_ok = self.filter_severity.is_empty()
            || alert.severity.as_deref().is_some_and(|s| {
                self.filter_severity
                    .iter()
                    .any(|f| f.eq_ignore_ascii_case(s.trim()))
            });
        let namespace_ok = self.filter_namespaces.is_empty()
            || alert
                .namespace
                .as_deref()
                .is_some_and(|n| self.filter_namespaces.iter().any(|f| f == n));
        let name_ok = self
            .alert_name_pattern
            .as_ref()
            .is_none_or(|r| r.is_match(&alert.alertname));
        severity_ok && namespace_ok && name_ok
    }

    /// `min_confidence` against a classification: passes without a
    /// minimum, and passes without a classification (an alert the LLM did
    /// not classify, because the mode is `transparent` or the LLM was slow
    /// or down, still goes out, marked unclassified by the publisher).
    pub fn confident_enough(&self, classification: Option<&Classification>) -> bool {
        match (self.min_confidence, classification) {
            (Some(min), Some(c)) => c.confidence >= min,
            _ => true,
        }
    }

    /// The JSON served by `GET /publishing/targets`: never the secret, the
    /// URL redacted.
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "format": self.format.as_str(),
            "url": redact_url(&self.url),
            "has_secret": self.secret.is_some(),
            "channel": self.channel,
            "filters": {
                "severity": self.filter_severity,
                "namespaces": self.filter_namespaces,
                "min_confidence": self.min_confidence,
                "alert_name_pattern": self.alert_name_pattern.as_ref().map(pattern_text),
            },
            "source": self.source.to_json(),
        })
    }

    /// Reads a target from its keys (a Secret's data or a file entry, list
    /// values already joined with commas). Unknown keys are refused, so a
    /// misspelt filter (`filter_severity`) cannot silently widen a target.
    ///
    /// # Errors
    /// Why the entry is invalid, naming the key.
    pub fn from_keys(
        name: &str,
        keys: &BTreeMap<String, String>,
        source: TargetSource,
    ) -> Result<Target, String> {
        if let Some(unknown) = keys.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(format!(
                "unknown key `{unknown}` (known: {})",
                KEYS.join(", ")
            ));
        }
        let get = |k: &str| {
            keys.get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let name = name.trim();
        if name.is_empty() {
            return Err("`name` must not be empty".to_owned());
        }
        if name.len() > 253 || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(format!(
                "`name` {name:?} must be at most 253 characters without spaces"
            ));
        }
        let format_text =
            get("format").ok_or("`format` is missing (slack, pagerduty, rootly or webhook)")?;
        let format = TargetFormat::parse(&format_text).ok_or_else(|| {
            format!("`format` {format_text:?} is not slack, pagerduty, rootly or webhook")
        })?;
        let secret = match (get("api-key"), get("token")) {
            (Some(a), Some(t)) if a != t => {
                return Err("`api-key` and `token` are both set and differ: set one".to_owned());
            }
            (a, t) => a.or(t),
        };
        let default_url = match format {
            TargetFormat::PagerDuty => Some(keel_notify::pagerduty::DEFAULT_BASE_URL),
            TargetFormat::Rootly => Some(keel_notify::rootly::DEFAULT_BASE_URL),
            TargetFormat::Slack | TargetFormat::Webhook => None,
        };
        let url = match get("url") {
            Some(u) => u,
            None => default_url.map(str::to_owned).ok_or("`url` is missing")?,
        };
        match url::Url::parse(&url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {}
            Ok(_) => return Err("`url` must be an http or https URL".to_owned()),
            // The parser's message never repeats the URL (it may hold a key).
            Err(e) => return Err(format!("`url` is not a URL: {e}")),
        }
        let channel = get("channel");
        match format {
            TargetFormat::PagerDuty | TargetFormat::Rootly if secret.is_none() => {
                return Err(format!("`api-key` (or `token`) is required for {format}"));
            }
            TargetFormat::Slack if channel.is_some() && secret.is_none() => {
                return Err(
                    "`channel` needs a `token` (chat.postMessage); an incoming webhook posts to its own channel"
                        .to_owned(),
                );
            }
            TargetFormat::Slack if secret.is_some() && channel.is_none() => {
                return Err("`channel` is required with a Slack `token`".to_owned());
            }
            _ => {}
        }
        if channel.is_some() && format != TargetFormat::Slack {
            return Err(format!("`channel` is for slack targets, not {format}"));
        }
        let list = |k: &str| -> Vec<String> {
            get(k)
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let min_confidence = match get("min-confidence") {
            None => None,
            Some(v) => match v.parse::<f64>() {
                Ok(c) if (0.0..=1.0).contains(&c) => Some(c),
                _ => {
                    return Err(format!(
                        "`min-confidence` {v:?} must be a number from 0 to 1"
                    ));
                }
            },
        };
        let alert_name_pattern = match get("alert-name-pattern") {
            None => None,
            Some(p) => Some(
                regex::RegexBuilder::new(&format!("^(?:{p})$"))
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| format!("`alert-name-pattern` {p:?} is not a valid regex: {e}"))?,
            ),
        };
        let target = Target {
            name: name.to_owned(),
            format,
            url,
            secret,
            channel,
            filter_severity: list("filter-severity"),
            filter_namespaces: list("filter-namespaces"),
            min_confidence,
            alert_name_pattern,
            source,
        };
        // What the sender itself refuses (a PagerDuty routing key that is
        // not 32 characters) is refused here, not at the first alert.
        target.build_sink()?;
        Ok(target)
    }
}

/// A URL with its credentials replaced by `***`: a user name and password,
/// every query value, and each path segment that looks like a key (Slack's
/// `/services/T…/B…/<secret>`: everything after `services/` but the
/// workspace and bot ids; elsewhere a segment of 16 or more letters, digits,
/// `-` or `_` with at least one letter and one digit). Something that is not
/// a URL is shown as `***`.
pub fn redact_url(text: &str) -> String {
    let Ok(mut url) = url::Url::parse(text) else {
        return "***".to_owned();
    };
    if !url.username().is_empty() {
        let _ = url.set_username("***");
    }
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, _)| (k.into_owned(), "***".to_owned()))
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    let segments: Vec<String> = url
        .path_segments()
        .map(|s| s.map(str::to_owned).collect())
        .unwrap_or_default();
    let slack_hook = segments.first().is_some_and(|s| s == "services");
    let redacted: Vec<String> = segments
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let slack_secret = slack_hook && i >= 3;
            if slack_secret || looks_like_key(s) {
                "***".to_owned()
            } else {
                s.clone()
            }
        })
        .collect();
    if redacted != segments {
        url.set_path(&redacted.join("/"));
    }
    // `set_path` percent-encodes `*`; show it plainly.
    url.to_string().replace("%2A", "*")
}

fn looks_like_key(segment: &str) -> bool {
    segment.len() >= 16
        && segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && segment.chars().any(|c| c.is_ascii_digit())
        && segment.chars().any(|c| c.is_ascii_alphabetic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("https://hooks.slack.com/services/T0001/B0001/abcdefghijklmnopqrstuvwx"),
            "https://hooks.slack.com/services/T0001/B0001/***"
        );
        assert_eq!(
            redact_url("https://u:p@example.com/hook?key=s3cret&x=1"),
            "https://***:***@example.com/hook?key=***&x=***"
        );
        assert_eq!(
            redact_url("https://events.pagerduty.com"),
            "https://events.pagerduty.com/"
        );
        assert_eq!(
            redact_url("https://example.com/hooks/a1b2c3d4e5f6a7b8c9d0"),
            "https://example.com/hooks/***"
        );
        assert_eq!(redact_url("not a url"), "***");
    }
}
