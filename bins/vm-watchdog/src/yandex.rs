//! The Yandex Compute API client (one attempt per call; policies live in
//! [`crate::api::Api`]) and the parsing shared with the proxy API.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Response, header};
use serde_json::Value;

use crate::error::ApiError;
use crate::iam::TokenSource;
use crate::status::VmStatus;

/// What one status read says about a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// The status.
    pub status: VmStatus,
    /// The one-to-one NAT (public) address of the first interface, if any.
    pub nat_ip: Option<String>,
}

impl Observation {
    /// Reads `status` and `networkInterfaces[0].primaryV4Address.
    /// oneToOneNat.address` from an instance (or proxy `/info`) JSON.
    pub fn from_json(value: &Value) -> Option<Observation> {
        let status = VmStatus::parse(value.get("status")?.as_str()?);
        let nat_ip = value
            .get("networkInterfaces")
            .and_then(Value::as_array)
            .and_then(|nics| {
                nics.iter().find_map(|nic| {
                    nic.pointer("/primaryV4Address/oneToOneNat/address")
                        .and_then(Value::as_str)
                        .filter(|a| !a.is_empty())
                        .map(str::to_owned)
                })
            });
        Some(Observation { status, nat_ip })
    }
}

/// One page of `instances.list`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Page {
    /// `(instance id, observation)` for each instance on the page.
    pub instances: Vec<(String, Observation)>,
    /// The token of the next page, if any.
    pub next_page_token: Option<String>,
}

/// What a start request achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAck {
    /// Accepted; the Compute API returns the id of the operation to poll.
    Started {
        /// The operation id (none for the proxy API).
        operation: Option<String>,
    },
    /// The API says the VM is already running or starting (HTTP 409 / gRPC
    /// code 9, FAILED_PRECONDITION): nothing to do, counted as success.
    AlreadyRunning,
}

/// The state of a start operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationState {
    /// Whether it finished.
    pub done: bool,
    /// Its error message, when it finished with one.
    pub error: Option<String>,
}

/// Endpoint labels (bounded metric label values).
pub mod endpoint {
    /// `GET /compute/v1/instances/{id}`.
    pub const GET: &str = "instances.get";
    /// `GET /compute/v1/instances?folderId=`.
    pub const LIST: &str = "instances.list";
    /// `POST /compute/v1/instances/{id}:start`.
    pub const START: &str = "instances.start";
    /// `GET /operations/{id}`.
    pub const OPERATION: &str = "operations.get";
    /// Proxy `GET /info`.
    pub const PROXY_INFO: &str = "proxy.info";
    /// Proxy `POST /start`.
    pub const PROXY_START: &str = "proxy.start";
}

/// The page size of `instances.list` (the API's maximum).
pub const PAGE_SIZE: usize = 1_000;

/// A Compute and Operation API client.
#[derive(Debug, Clone)]
pub struct YandexClient {
    client: reqwest::Client,
    compute_url: String,
    operation_url: String,
    tokens: Arc<TokenSource>,
}

/// Sends `request` and returns the body as JSON for a 2xx, or the API's
/// error (with the gRPC code and `Retry-After`) otherwise.
pub(crate) async fn send_json(
    endpoint: &'static str,
    request: reqwest::RequestBuilder,
) -> Result<Value, ApiError> {
    let response = request
        .send()
        .await
        .map_err(|source| ApiError::Transport { endpoint, source })?;
    read_json(endpoint, response).await
}

async fn read_json(endpoint: &'static str, response: Response) -> Result<Value, ApiError> {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = response
        .bytes()
        .await
        .map_err(|source| ApiError::Transport { endpoint, source })?;
    let json: Option<Value> = serde_json::from_slice(&body).ok();
    if status.is_success() {
        // A 2xx without JSON (the proxy's `/start` may answer plain text) is
        // `null`; callers that need fields report the missing ones.
        return Ok(json.unwrap_or(Value::Null));
    }
    let code = json
        .as_ref()
        .and_then(|j| j.get("code"))
        .and_then(Value::as_i64);
    let message = json
        .as_ref()
        .and_then(|j| j.get("message"))
        .and_then(Value::as_str)
        .map_or_else(
            || {
                String::from_utf8_lossy(&body)
                    .trim()
                    .chars()
                    .take(200)
                    .collect()
            },
            str::to_owned,
        );
    Err(ApiError::Status {
        endpoint,
        status: status.as_u16(),
        code,
        message,
        retry_after,
    })
}

impl YandexClient {
    /// A client for these base URLs (no trailing slash).
    pub fn new(
        client: reqwest::Client,
        compute_url: &str,
        operation_url: &str,
        tokens: Arc<TokenSource>,
    ) -> Self {
        YandexClient {
            client,
            compute_url: compute_url.trim_end_matches('/').to_owned(),
            operation_url: operation_url.trim_end_matches('/').to_owned(),
            tokens,
        }
    }

    async fn authorized(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, ApiError> {
        match self.tokens.token().await.map_err(ApiError::Token)? {
            Some(token) => Ok(request.bearer_auth(token)),
            None => Ok(request),
        }
    }

    /// `GET /compute/v1/instances/{id}`.
    ///
    /// # Errors
    /// The API's error (404 for an unknown instance), a transport error, or
    /// an answer without a status.
    pub async fn get(&self, id: &str) -> Result<Observation, ApiError> {
        let url = format!("{}/compute/v1/instances/{id}", self.compute_url);
        let request = self.authorized(self.client.get(url)).await?;
        let json = send_json(endpoint::GET, request).await?;
        Observation::from_json(&json).ok_or_else(|| ApiError::Decode {
            endpoint: endpoint::GET,
            message: "no `status` in the instance".into(),
        })
    }

    /// One page of `GET /compute/v1/instances?folderId=..&pageSize=1000`.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub async fn list(&self, folder_id: &str, page_token: Option<&str>) -> Result<Page, ApiError> {
        let url = format!("{}/compute/v1/instances", self.compute_url);
        let page_size = PAGE_SIZE.to_string();
        let mut query = vec![("folderId", folder_id), ("pageSize", page_size.as_str())];
        if let Some(t) = page_token {
            query.push(("pageToken", t));
        }
        let request = self.authorized(self.client.get(url).query(&query)).await?;
        let json = send_json(endpoint::LIST, request).await?;
        let mut page = Page::default();
        if let Some(items) = json.get("instances").and_then(Value::as_array) {
            for item in items {
                let (Some(id), Some(obs)) = (
                    item.get("id").and_then(Value::as_str),
                    Observation::from_json(item),
                ) else {
                    return Err(ApiError::Decode {
                        endpoint: endpoint::LIST,
                        message: "an instance without `id` or `status`".into(),
                    });
                };
                page.instances.push((id.to_owned(), obs));
            }
        }
        page.next_page_token = json
            .get("nextPageToken")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
        Ok(page)
    }

    /// `POST /compute/v1/instances/{id}:start`; FAILED_PRECONDITION (code
    /// 9) is [`StartAck::AlreadyRunning`].
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub async fn start(&self, id: &str) -> Result<StartAck, ApiError> {
        let url = format!("{}/compute/v1/instances/{id}:start", self.compute_url);
        let request = self
            .authorized(self.client.post(url).json(&serde_json::json!({})))
            .await?;
        match send_json(endpoint::START, request).await {
            Ok(op) => Ok(StartAck::Started {
                operation: op.get("id").and_then(Value::as_str).map(str::to_owned),
            }),
            Err(e) if e.is_failed_precondition() => Ok(StartAck::AlreadyRunning),
            Err(e) => Err(e),
        }
    }

    /// `GET /operations/{id}`.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub async fn operation(&self, id: &str) -> Result<OperationState, ApiError> {
        let url = format!("{}/operations/{id}", self.operation_url);
        let request = self.authorized(self.client.get(url)).await?;
        let json = send_json(endpoint::OPERATION, request).await?;
        let error = json.get("error").map(|e| {
            let code = e.get("code").and_then(Value::as_i64).unwrap_or(0);
            let message = e.get("message").and_then(Value::as_str).unwrap_or("");
            format!("code {code}: {message}")
        });
        Ok(OperationState {
            done: json.get("done").and_then(Value::as_bool).unwrap_or(false),
            error,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn observations_read_status_and_nat_address() {
        let instance = json!({
            "id": "i-1",
            "status": "RUNNING",
            "networkInterfaces": [{
                "primaryV4Address": { "address": "10.0.0.5", "oneToOneNat": { "address": "51.250.1.2" } }
            }]
        });
        assert_eq!(
            Observation::from_json(&instance),
            Some(Observation {
                status: VmStatus::Running,
                nat_ip: Some("51.250.1.2".into())
            })
        );
        let proxy = json!({ "status": "Stopped", "networkInterfaces": [] });
        assert_eq!(
            Observation::from_json(&proxy).unwrap(),
            Observation {
                status: VmStatus::Stopped,
                nat_ip: None
            }
        );
        assert_eq!(Observation::from_json(&json!({ "id": "x" })), None);
    }
}
