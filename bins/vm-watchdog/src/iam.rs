//! IAM tokens for the Compute API: a fixed token, an OAuth token exchanged
//! and refreshed hourly, or the VM metadata service.

use std::time::{Duration, SystemTime};

use keel_core::Clock;
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::config::Credentials;
use crate::error::TokenError;

/// How often a token is refreshed (IAM tokens live at most 12 h).
pub const REFRESH_EVERY: Duration = Duration::from_secs(3_600);
/// Lifetime assumed when the API does not say.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(12 * 3_600);

#[derive(Debug, Clone)]
enum Kind {
    Anonymous,
    Static(String),
    OAuth { url: String, oauth: String },
    Metadata { url: String },
}

#[derive(Debug, Clone)]
struct Cached {
    token: String,
    fetched_at: Instant,
    expires_at: Instant,
}

/// Hands out the current IAM token, fetching and refreshing it as needed.
///
/// Tokens from the OAuth exchange or the metadata service are cached and
/// refreshed once an hour (or at half their lifetime, if shorter). When a
/// refresh fails while the cached token is still valid, the cached token is
/// used and the failure logged, so a short IAM outage does not stop the
/// watchdog. Concurrent callers share one refresh.
#[derive(Debug)]
pub struct TokenSource {
    kind: Kind,
    client: reqwest::Client,
    clock: Clock,
    cache: Mutex<Option<Cached>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IamAnswer {
    iam_token: String,
    #[serde(default)]
    expires_at: Option<String>,
}

#[derive(Deserialize)]
struct MetadataAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl TokenSource {
    /// Tokens per `credentials`; `iam_url` and `metadata_url` are base URLs.
    pub fn new(
        credentials: &Credentials,
        iam_url: &str,
        metadata_url: &str,
        client: reqwest::Client,
    ) -> Self {
        let kind = match credentials {
            Credentials::Static(t) => Kind::Static(t.clone()),
            Credentials::OAuth(t) => Kind::OAuth {
                url: format!("{}/iam/v1/tokens", iam_url.trim_end_matches('/')),
                oauth: t.clone(),
            },
            Credentials::Metadata => Kind::Metadata {
                url: format!(
                    "{}/computeMetadata/v1/instance/service-accounts/default/token",
                    metadata_url.trim_end_matches('/')
                ),
            },
        };
        TokenSource {
            kind,
            client,
            clock: Clock::tokio(),
            cache: Mutex::new(None),
        }
    }

    /// No authentication (proxy-only setups and tests).
    pub fn anonymous() -> Self {
        TokenSource {
            kind: Kind::Anonymous,
            client: reqwest::Client::new(),
            clock: Clock::tokio(),
            cache: Mutex::new(None),
        }
    }

    /// Reads time from `clock` (tests drive refreshes with a manual clock).
    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The token to send, or `None` when anonymous.
    ///
    /// # Errors
    /// [`TokenError`] when no valid token can be had.
    pub async fn token(&self) -> Result<Option<String>, TokenError> {
        match &self.kind {
            Kind::Anonymous => return Ok(None),
            Kind::Static(t) => return Ok(Some(t.clone())),
            Kind::OAuth { .. } | Kind::Metadata { .. } => {}
        }
        let mut cache = self.cache.lock().await;
        let now = self.clock.now();
        if let Some(c) = cache.as_ref() {
            let lifetime = c.expires_at.saturating_duration_since(c.fetched_at);
            let refresh_after = REFRESH_EVERY.min(lifetime / 2);
            if now.saturating_duration_since(c.fetched_at) < refresh_after {
                return Ok(Some(c.token.clone()));
            }
        }
        match self.fetch().await {
            Ok((token, lifetime)) => {
                tracing::info!(
                    source = self.source_name(),
                    lifetime_s = lifetime.as_secs(),
                    "IAM token refreshed"
                );
                *cache = Some(Cached {
                    token: token.clone(),
                    fetched_at: now,
                    expires_at: now + lifetime,
                });
                Ok(Some(token))
            }
            Err(e) => match cache.as_ref() {
                Some(c) if now < c.expires_at => {
                    tracing::warn!(error = %e, "IAM token refresh failed; using the cached token");
                    Ok(Some(c.token.clone()))
                }
                _ => Err(e),
            },
        }
    }

    fn source_name(&self) -> &'static str {
        match self.kind {
            Kind::Metadata { .. } => "metadata",
            _ => "iam",
        }
    }

    async fn fetch(&self) -> Result<(String, Duration), TokenError> {
        let name = self.source_name();
        let fail = |message: String| TokenError {
            source_name: name,
            message,
            status: None,
        };
        let request = match &self.kind {
            Kind::OAuth { url, oauth } => self
                .client
                .post(url)
                .json(&serde_json::json!({ "yandexPassportOauthToken": oauth })),
            Kind::Metadata { url } => self.client.get(url).header("Metadata-Flavor", "Google"),
            Kind::Anonymous | Kind::Static(_) => {
                return Err(fail("nothing to fetch".into()));
            }
        };
        let response = request
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| fail(format!("request failed: {e}")))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| fail(format!("reading the answer failed: {e}")))?;
        if !status.is_success() {
            return Err(TokenError {
                status: Some(status.as_u16()),
                ..fail(format!("HTTP {}: {}", status.as_u16(), body.trim()))
            });
        }
        match &self.kind {
            Kind::OAuth { .. } => {
                let answer: IamAnswer = serde_json::from_str(&body)
                    .map_err(|e| fail(format!("unexpected answer: {e}")))?;
                let lifetime = answer
                    .expires_at
                    .as_deref()
                    .and_then(lifetime_until)
                    .unwrap_or(DEFAULT_LIFETIME);
                Ok((answer.iam_token, lifetime))
            }
            _ => {
                let answer: MetadataAnswer = serde_json::from_str(&body)
                    .map_err(|e| fail(format!("unexpected answer: {e}")))?;
                let lifetime = answer
                    .expires_in
                    .map_or(DEFAULT_LIFETIME, Duration::from_secs);
                Ok((answer.access_token, lifetime))
            }
        }
    }
}

/// Time from now until an RFC 3339 instant; `None` when unparsable or past.
fn lifetime_until(rfc3339: &str) -> Option<Duration> {
    let at = chrono::DateTime::parse_from_rfc3339(rfc3339).ok()?;
    let at = SystemTime::from(at.with_timezone(&chrono::Utc));
    at.duration_since(SystemTime::now()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_parsing() {
        assert!(lifetime_until("2000-01-01T00:00:00Z").is_none());
        assert!(lifetime_until("garbage").is_none());
        let later = (chrono::Utc::now() + chrono::Duration::hours(11)).to_rfc3339();
        let d = lifetime_until(&later).unwrap();
        assert!(d > Duration::from_secs(10 * 3_600) && d <= Duration::from_secs(11 * 3_600));
    }
}
