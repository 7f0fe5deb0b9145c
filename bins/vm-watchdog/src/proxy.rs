//! The client of the original bot's proxy API: `GET {base}/info` and
//! `POST {base}/start` (409 `{"code": 9, "message": "RUNNING"}` when the VM
//! is already running).

use crate::error::ApiError;
use crate::yandex::{Observation, StartAck, endpoint, parse_observation, send};

/// A proxy API client (one attempt per call).
#[derive(Debug, Clone)]
pub struct ProxyClient {
    client: reqwest::Client,
}

impl ProxyClient {
    /// A client sharing `client`'s connection pool.
    pub fn new(client: reqwest::Client) -> Self {
        ProxyClient { client }
    }

    /// `GET {base}/info`.
    ///
    /// # Errors
    /// The API's error, a transport error, or an answer without `status`.
    pub async fn info(&self, base: &str) -> Result<Observation, ApiError> {
        let body = send(
            endpoint::PROXY_INFO,
            self.client.get(format!("{base}/info")),
        )
        .await?;
        parse_observation(endpoint::PROXY_INFO, &body)
    }

    /// `POST {base}/start`; 409 code 9 is [`StartAck::AlreadyRunning`].
    ///
    /// # Errors
    /// As [`info`](Self::info).
    pub async fn start(&self, base: &str) -> Result<StartAck, ApiError> {
        match send(
            endpoint::PROXY_START,
            self.client.post(format!("{base}/start")),
        )
        .await
        {
            Ok(_) => Ok(StartAck::Started { operation: None }),
            Err(e) if e.is_failed_precondition() => Ok(StartAck::AlreadyRunning),
            Err(e) => Err(e),
        }
    }
}
