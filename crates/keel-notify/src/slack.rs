//! The Slack sink (feature `slack`): incoming webhooks and `chat.postMessage`.
//!
//! [`SlackSink::webhook`] posts to an incoming webhook URL;
//! [`SlackSink::bot`] posts `POST {base}/api/chat.postMessage` with a bot
//! token and a channel. Both send Block Kit `blocks` with a plain-text
//! `text` fallback (what notifications and screen readers show):
//!
//! * a message: a section with the icon and the title (with its count) in
//!   bold and the body, then a section with up to ten fields;
//! * a digest: a header section (`*12 alerts: 3 critical, 9 info*`), then
//!   sections of one line per alert, each section within Slack's 3,000
//!   characters and the whole within 50 blocks (and 40,000 characters of
//!   fallback text); what does not fit waits for the next message.
//!
//! Caller text is escaped for `mrkdwn` (`&`, `<`, `>`). Answers: a webhook
//! answers `200 ok` or a plain-text error (`invalid_payload`, `no_text`,
//! ... → permanent); the Web API answers HTTP 200 with `{"ok": false,
//! "error": ...}`: `ratelimited` is an overload, `internal_error`,
//! `fatal_error`, `service_unavailable` and `request_timeout` are
//! retryable, every other error (a bad token, an unknown channel, bad
//! blocks) is permanent. HTTP 429 with `Retry-After` is an overload, 5xx
//! retryable. The default rate limit is Slack's 1 message per second per
//! channel (per webhook).

use std::fmt;
use std::time::Duration;

use serde_json::{Value, json};

use crate::digest::{Digest, plain_line};
use crate::error::{ConfigError, SinkError};
use crate::http;
use crate::notification::{Message, Priority};
use crate::sink::{Pacer, RateLimit, Sink};

/// The real Web API base URL.
pub const DEFAULT_BASE_URL: &str = "https://slack.com";
/// Slack's limit on one section's text.
pub const SECTION_LIMIT: usize = 3_000;
/// Slack's limit on blocks per message.
pub const MAX_BLOCKS: usize = 50;
/// Slack truncates `text` beyond this.
pub const TEXT_LIMIT: usize = 40_000;

enum Target {
    Webhook {
        url: String,
    },
    Bot {
        url: String,
        token: String,
        channel: String,
    },
}

/// Posts to one Slack channel; see the module documentation.
pub struct SlackSink {
    name: String,
    client: reqwest::Client,
    target: Target,
    timeout: Duration,
    rate_limits: Option<Vec<RateLimit>>,
    digests: bool,
}

impl fmt::Debug for SlackSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the webhook URL or the token: both are secrets.
        let target = match &self.target {
            Target::Webhook { url } => format!("webhook {}", http::fingerprint(url)),
            Target::Bot { channel, .. } => format!("channel {channel}"),
        };
        f.debug_struct("SlackSink")
            .field("name", &self.name)
            .field("target", &target)
            .finish_non_exhaustive()
    }
}

/// Builds a [`SlackSink`]; start from [`SlackSink::webhook`] or
/// [`SlackSink::bot`].
#[must_use]
pub struct SlackSinkBuilder {
    name: String,
    webhook: Option<String>,
    bot: Option<(String, String)>,
    base_url: String,
    client: Option<reqwest::Client>,
    timeout: Duration,
    rate_limits: Option<Vec<RateLimit>>,
    digests: bool,
}

impl fmt::Debug for SlackSinkBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlackSinkBuilder")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl SlackSinkBuilder {
    /// The sink's name (default `"slack"`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The Web API base URL for [`SlackSink::bot`] (default
    /// [`DEFAULT_BASE_URL`]).
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = url.into();
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

    /// Replaces the declared rate limits (default 1/s per channel).
    pub fn rate_limits(mut self, limits: Vec<RateLimit>) -> Self {
        self.rate_limits = Some(limits);
        self
    }

    /// Whether waiting messages go out as one digest (on by default).
    pub fn digests(mut self, on: bool) -> Self {
        self.digests = on;
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    /// A [`ConfigError`] naming `webhook_url`, `base_url`, `token`,
    /// `channel`, `name` or `timeout`.
    pub fn build(self) -> Result<SlackSink, ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::new("timeout", "must be above zero"));
        }
        let target = match (self.webhook, self.bot) {
            (Some(url), _) => Target::Webhook {
                url: http::base_url("webhook_url", &url)?,
            },
            (None, Some((token, channel))) => {
                let token = token.trim().to_owned();
                if token.is_empty() || token.contains(char::is_whitespace) {
                    return Err(ConfigError::new("token", "must be a bot token (xoxb-...)"));
                }
                if channel.trim().is_empty() {
                    return Err(ConfigError::new("channel", "must not be empty"));
                }
                let base = http::base_url("base_url", &self.base_url)?;
                Target::Bot {
                    url: format!("{base}/api/chat.postMessage"),
                    token,
                    channel: channel.trim().to_owned(),
                }
            }
            (None, None) => unreachable!("every constructor sets a target"),
        };
        Ok(SlackSink {
            name: self.name,
            client: http::client(self.client)?,
            target,
            timeout: self.timeout,
            rate_limits: self.rate_limits,
            digests: self.digests,
        })
    }
}

/// Escapes `&`, `<` and `>` for Slack's `mrkdwn`.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

fn icon(priority: Priority) -> &'static str {
    match priority {
        Priority::Critical => ":red_circle:",
        Priority::Warning => ":large_yellow_circle:",
        Priority::Info => ":large_blue_circle:",
    }
}

fn section(text: String) -> Value {
    json!({"type": "section", "text": {"type": "mrkdwn", "text": text}})
}

fn line(message: &Message) -> String {
    let title = message.display_title();
    let full = message.to_line();
    let detail = full.strip_prefix(title.as_str()).unwrap_or("");
    format!(
        "{} *{}*{}",
        icon(message.priority()),
        escape(&title),
        escape(detail)
    )
}

/// Packs lines into sections within [`SECTION_LIMIT`]; returns the
/// sections and how many lines they hold, stopping before `max_sections`
/// would be exceeded.
fn pack(lines: &[String], max_sections: usize) -> (Vec<String>, usize) {
    let mut sections: Vec<String> = Vec::new();
    let mut used = 0;
    for l in lines {
        let len = l.chars().count();
        if len > SECTION_LIMIT {
            break;
        }
        match sections.last_mut() {
            Some(s) if s.chars().count() + 1 + len <= SECTION_LIMIT => {
                s.push('\n');
                s.push_str(l);
            }
            _ => {
                if sections.len() == max_sections {
                    break;
                }
                sections.push(l.clone());
            }
        }
        used += 1;
    }
    (sections, used)
}

impl SlackSink {
    /// A builder for a sink posting to the incoming webhook `url`.
    pub fn webhook(url: impl Into<String>) -> SlackSinkBuilder {
        Self::builder(Some(url.into()), None)
    }

    /// A builder for a sink posting with `chat.postMessage` as the bot
    /// `token` into `channel` (an id such as `C0123456789`).
    pub fn bot(token: impl Into<String>, channel: impl Into<String>) -> SlackSinkBuilder {
        Self::builder(None, Some((token.into(), channel.into())))
    }

    fn builder(webhook: Option<String>, bot: Option<(String, String)>) -> SlackSinkBuilder {
        SlackSinkBuilder {
            name: "slack".to_owned(),
            webhook,
            bot,
            base_url: DEFAULT_BASE_URL.to_owned(),
            client: None,
            timeout: Duration::from_secs(10),
            rate_limits: None,
            digests: true,
        }
    }

    /// The JSON body for one message (`text` and `blocks`; the channel is
    /// added for the Web API).
    pub fn message_body(&self, message: &Message) -> Value {
        let mut head = format!(
            "{} *{}*",
            icon(message.priority()),
            escape(&message.display_title())
        );
        if !message.body().is_empty() {
            head.push('\n');
            head.push_str(&escape(message.body()));
        }
        let head: String = head.chars().take(SECTION_LIMIT).collect();
        let mut blocks = vec![section(head)];
        if !message.fields().is_empty() {
            let fields: Vec<Value> = message
                .fields()
                .iter()
                .take(10)
                .map(|(k, v)| {
                    let text: String = format!("*{}*\n{}", escape(k), escape(v))
                        .chars()
                        .take(2_000)
                        .collect();
                    json!({"type": "mrkdwn", "text": text})
                })
                .collect();
            blocks.push(json!({"type": "section", "fields": fields}));
        }
        let text: String = message.to_plain_text().chars().take(TEXT_LIMIT).collect();
        self.with_channel(json!({"text": text, "blocks": blocks}))
    }

    /// The JSON body for a digest.
    pub fn digest_body(&self, digest: &Digest) -> Value {
        let lines: Vec<String> = digest.entries().iter().map(line).collect();
        let (sections, _) = pack(&lines, MAX_BLOCKS - 1);
        let mut blocks = vec![section(format!("*{}*", escape(&digest.header())))];
        blocks.extend(sections.into_iter().map(section));
        self.with_channel(json!({"text": digest.to_plain_text(), "blocks": blocks}))
    }

    fn with_channel(&self, mut body: Value) -> Value {
        if let Target::Bot { channel, .. } = &self.target {
            body["channel"] = json!(channel);
        }
        body
    }

    async fn post(&self, body: &Value) -> Result<(), SinkError> {
        match &self.target {
            Target::Webhook { url } => {
                let request = self.client.post(url).timeout(self.timeout).json(body);
                let answer = http::send(request, "Slack").await?;
                http::classify("Slack", &answer)
            }
            Target::Bot { url, token, .. } => {
                let request = self
                    .client
                    .post(url)
                    .timeout(self.timeout)
                    .bearer_auth(token)
                    .json(body);
                let answer = http::send(request, "Slack").await?;
                http::classify("Slack", &answer)?;
                web_api_reply(&answer.body)
            }
        }
    }
}

/// Reads a Web API reply: `{"ok": true}` or an error code.
pub(crate) fn web_api_reply(body: &[u8]) -> Result<(), SinkError> {
    let reply: Value = serde_json::from_slice(body).map_err(|_| {
        SinkError::retryable(format!(
            "unexpected reply from Slack: {}",
            http::snippet(body)
        ))
    })?;
    if reply.get("ok").and_then(Value::as_bool) == Some(true) {
        return Ok(());
    }
    let error = reply
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("unknown_error");
    match error {
        "ratelimited" => Err(SinkError::overloaded(None)),
        "internal_error" | "fatal_error" | "service_unavailable" | "request_timeout" => {
            Err(SinkError::retryable(format!("Slack error: {error}")))
        }
        _ => Err(SinkError::permanent(
            Some(200),
            format!("Slack error: {error}"),
        )),
    }
}

impl Sink for SlackSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, message: &Message) -> Result<(), SinkError> {
        self.post(&self.message_body(message)).await
    }

    fn supports_digest(&self) -> bool {
        self.digests
    }

    /// Lines fit while they pack into at most 49 sections of 3,000
    /// characters (after the header block) and the fallback text stays
    /// within 40,000 characters.
    fn digest_fit(&self, entries: &[Message]) -> usize {
        if !self.digests {
            return 1;
        }
        let lines: Vec<String> = entries.iter().map(line).collect();
        let (_, by_blocks) = pack(&lines, MAX_BLOCKS - 1);
        let header = Digest::new(0, entries.to_vec()).header().chars().count();
        let by_text = crate::digest::fit_by_cost(
            TEXT_LIMIT,
            header,
            entries.iter().map(|m| plain_line(m).chars().count() + 1),
        );
        by_blocks.min(by_text)
    }

    async fn send_digest(&self, digest: &Digest, _pacer: &Pacer<'_>) -> Result<(), SinkError> {
        self.post(&self.digest_body(digest)).await
    }

    fn rate_limits(&self) -> Vec<RateLimit> {
        if let Some(limits) = &self.rate_limits {
            return limits.clone();
        }
        let key = match &self.target {
            Target::Webhook { url } => format!("slack-hook:{}", http::fingerprint(url)),
            Target::Bot { channel, .. } => format!("slack-channel:{channel}"),
        };
        vec![RateLimit::per_second(key, 1)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notification::Notification;
    use keel_core::{ErrorOutcome, Outcome};

    #[test]
    fn renders_escaped_blocks_with_a_fallback() {
        let sink = SlackSink::bot("xoxb-1", "C1").build().unwrap();
        let m = Message::new(
            1,
            Notification::critical("k", "VM <db> & co").field("vm", "a>b"),
            2,
        );
        let body = sink.message_body(&m);
        assert_eq!(body["channel"], "C1");
        assert_eq!(
            body["blocks"][0]["text"]["text"],
            ":red_circle: *VM &lt;db&gt; &amp; co (×2)*"
        );
        assert_eq!(body["blocks"][1]["fields"][0]["text"], "*vm*\na&gt;b");
        assert_eq!(body["text"], "VM <db> & co (×2)\n\nvm: a>b");
    }

    #[test]
    fn digests_stay_within_blocks_and_sections() {
        let sink = SlackSink::webhook("https://hooks.example/services/T/B/x")
            .build()
            .unwrap();
        let m = |i: u64| {
            Message::new(
                i,
                Notification::critical(format!("k{i}"), format!("VM vm-{i} stopped"))
                    .body("x".repeat(400)),
                1,
            )
        };
        let many: Vec<Message> = (0..2_000).map(m).collect();
        let fit = sink.digest_fit(&many);
        assert!(fit > 50 && fit < 2_000, "{fit}");
        let body = sink.digest_body(&Digest::new(0, many[..fit].to_vec()));
        let blocks = body["blocks"].as_array().unwrap();
        assert!(blocks.len() <= MAX_BLOCKS);
        assert!(blocks.iter().all(|b| {
            b["text"]["text"]
                .as_str()
                .is_some_and(|t| t.chars().count() <= SECTION_LIMIT)
        }));
        assert!(body["text"].as_str().unwrap().chars().count() <= TEXT_LIMIT);
        assert!(
            body.get("channel").is_none(),
            "webhooks post to their own channel"
        );
    }

    #[test]
    fn web_api_errors_by_kind() {
        let o = |b: &str| match web_api_reply(b.as_bytes()) {
            Ok(()) => Outcome::Success,
            Err(e) => e.outcome(),
        };
        assert_eq!(o(r#"{"ok":true}"#), Outcome::Success);
        assert!(o(r#"{"ok":false,"error":"ratelimited"}"#).is_overloaded());
        assert_eq!(
            o(r#"{"ok":false,"error":"internal_error"}"#),
            Outcome::Failure
        );
        assert_eq!(
            o(r#"{"ok":false,"error":"channel_not_found"}"#),
            Outcome::Neutral
        );
        assert_eq!(o("<html>"), Outcome::Failure);
    }

    #[test]
    fn builder_validates_and_hides_secrets() {
        let err = |b: SlackSinkBuilder| b.build().unwrap_err().field().to_owned();
        assert_eq!(err(SlackSink::webhook("nope")), "webhook_url");
        assert_eq!(err(SlackSink::bot("", "C1")), "token");
        assert_eq!(err(SlackSink::bot("xoxb-1", " ")), "channel");
        assert_eq!(
            err(SlackSink::bot("xoxb-1", "C1").base_url("ftp://x")),
            "base_url"
        );
        let s = SlackSink::webhook("https://hooks.example/services/T/B/s3cret")
            .build()
            .unwrap();
        assert!(!format!("{s:?}").contains("s3cret"));
        assert_eq!(s.rate_limits().len(), 1);
    }
}
