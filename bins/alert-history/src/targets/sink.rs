//! The keel-notify sink of a target: one of the four senders, named after
//! the target, with the destination's own rate limits.

use keel_notify::{
    Digest, Message, Pacer, PagerDutySink, RateLimit, RootlySink, Sink, SinkError, SlackSink,
    WebhookSink,
};

use super::model::{Target, TargetFormat};

/// The sender of one target; implements [`Sink`] by delegating every
/// method (so a notifier sees the sender's digests and rate limits).
#[derive(Debug)]
pub enum TargetSink {
    /// Slack (1 message/s per channel, per webhook).
    Slack(SlackSink),
    /// PagerDuty Events v2 (120 events/min per routing key).
    PagerDuty(PagerDutySink),
    /// Rootly (60 alerts/min per token, keel-notify's default).
    Rootly(RootlySink),
    /// A generic webhook (no limit declared).
    Webhook(WebhookSink),
}

impl Target {
    /// The keel-notify sink for this target, named after it, with the
    /// sender's default rate limits, which are the destinations' own:
    /// Slack 1/s per channel (per incoming webhook), PagerDuty 120/min per
    /// routing key, Rootly 60/min per token, none for a webhook.
    ///
    /// # Errors
    /// A [`keel_core::ConfigError`] naming `url`, `api-key`/`token` or
    /// `channel` (of this target) when the sender refuses the settings.
    pub fn sink(&self) -> Result<TargetSink, keel_core::ConfigError> {
        self.build_sink().map_err(|why| {
            keel_core::ConfigError::new("target", format!("target `{}`: {why}", self.name))
        })
    }

    /// [`Target::sink`], the error saying which key is wrong and why.
    pub(crate) fn build_sink(&self) -> Result<TargetSink, String> {
        let err = |e: keel_core::ConfigError| match e.field() {
            // The sender's reason may quote the URL (a credential).
            "webhook_url" | "base_url" | "url" => "`url` must be an http or https URL".to_owned(),
            "token" | "routing_key" => format!("`api-key` {}", e.reason()),
            "channel" => format!("`channel` {}", e.reason()),
            other => format!("{other} {}", e.reason()),
        };
        let secret = self.secret.clone().unwrap_or_default();
        Ok(match self.format {
            TargetFormat::Slack => {
                let builder = match &self.channel {
                    Some(channel) => SlackSink::bot(secret, channel.clone()).base_url(&self.url),
                    None => SlackSink::webhook(&self.url),
                };
                TargetSink::Slack(builder.name(&self.name).build().map_err(err)?)
            }
            TargetFormat::PagerDuty => TargetSink::PagerDuty(
                PagerDutySink::builder(secret)
                    .base_url(&self.url)
                    .source("alert-history")
                    .name(&self.name)
                    // The publisher's subject is the alert's fingerprint:
                    // PagerDuty's dedup_key is the fingerprint itself.
                    .subject_as_dedup_key(true)
                    .build()
                    .map_err(err)?,
            ),
            TargetFormat::Rootly => TargetSink::Rootly(
                RootlySink::builder(secret)
                    .base_url(&self.url)
                    .source("alert-history")
                    .name(&self.name)
                    .build()
                    .map_err(err)?,
            ),
            TargetFormat::Webhook => {
                let mut builder = WebhookSink::builder(&self.url).name(&self.name);
                if let Some(token) = &self.secret {
                    builder = builder.header("authorization", format!("Bearer {token}"));
                }
                TargetSink::Webhook(builder.build().map_err(err)?)
            }
        })
    }
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            TargetSink::Slack($s) => $e,
            TargetSink::PagerDuty($s) => $e,
            TargetSink::Rootly($s) => $e,
            TargetSink::Webhook($s) => $e,
        }
    };
}

impl Sink for TargetSink {
    fn name(&self) -> &str {
        each!(self, s => s.name())
    }

    async fn send(&self, message: &Message) -> Result<(), SinkError> {
        each!(self, s => s.send(message).await)
    }

    async fn send_paced(&self, message: &Message, pacer: &Pacer<'_>) -> Result<(), SinkError> {
        each!(self, s => s.send_paced(message, pacer).await)
    }

    fn supports_digest(&self) -> bool {
        each!(self, s => s.supports_digest())
    }

    fn digest_fit(&self, entries: &[Message]) -> usize {
        each!(self, s => s.digest_fit(entries))
    }

    async fn send_digest(&self, digest: &Digest, pacer: &Pacer<'_>) -> Result<(), SinkError> {
        each!(self, s => s.send_digest(digest, pacer).await)
    }

    fn rate_limits(&self) -> Vec<RateLimit> {
        each!(self, s => s.rate_limits())
    }
}
