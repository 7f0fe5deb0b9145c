//! The Yandex Compute API client (one attempt per call; policies live in
//! [`crate::api::Api`]) and the parsing shared with the proxy API.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::{Response, header};
use serde::Deserialize;
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

/// The fields of an instance (or proxy `/info`) the watchdog reads; the
/// rest of the document is skipped while parsing, so a 1,000-instance page
/// never becomes a JSON tree in memory.
#[derive(Debug, Deserialize)]
struct InstanceDoc {
    #[serde(default)]
    id: Option<String>,
    status: String,
    #[serde(default, rename = "networkInterfaces")]
    network_interfaces: Vec<NicDoc>,
}

#[derive(Debug, Deserialize)]
struct NicDoc {
    #[serde(default, rename = "primaryV4Address")]
    primary_v4_address: Option<AddrDoc>,
}

#[derive(Debug, Deserialize)]
struct AddrDoc {
    #[serde(default, rename = "oneToOneNat")]
    one_to_one_nat: Option<NatDoc>,
}

#[derive(Debug, Deserialize)]
struct NatDoc {
    #[serde(default)]
    address: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ListDoc {
    #[serde(default)]
    instances: Vec<InstanceDoc>,
    #[serde(default, rename = "nextPageToken")]
    next_page_token: Option<String>,
}

impl InstanceDoc {
    fn observation(&self) -> Observation {
        let nat_ip = self.network_interfaces.iter().find_map(|nic| {
            nic.primary_v4_address
                .as_ref()?
                .one_to_one_nat
                .as_ref()?
                .address
                .clone()
                .filter(|a| !a.is_empty())
        });
        Observation {
            status: VmStatus::parse(&self.status),
            nat_ip,
        }
    }
}

/// Parses an instance (or proxy `/info`) document.
pub(crate) fn parse_observation(
    endpoint: &'static str,
    body: &[u8],
) -> Result<Observation, ApiError> {
    serde_json::from_slice::<InstanceDoc>(body)
        .map(|doc| doc.observation())
        .map_err(|e| ApiError::Decode {
            endpoint,
            message: format!("not an instance: {e}"),
        })
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
    /// The error's gRPC code (10, ABORTED: the VM changed state meanwhile).
    pub error_code: Option<i64>,
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

/// Sends `request` and returns the body of a 2xx answer, or the API's
/// error (with the gRPC code and `Retry-After`) otherwise.
pub(crate) async fn send(
    endpoint: &'static str,
    request: reqwest::RequestBuilder,
) -> Result<Bytes, ApiError> {
    let response = request
        .send()
        .await
        .map_err(|source| ApiError::Transport { endpoint, source })?;
    read_body(endpoint, response).await
}

/// [`send`], with the body parsed as JSON (`null` when a 2xx body is not
/// JSON: the proxy's `/start` may answer plain text).
pub(crate) async fn send_json(
    endpoint: &'static str,
    request: reqwest::RequestBuilder,
) -> Result<Value, ApiError> {
    let body = send(endpoint, request).await?;
    Ok(serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn read_body(endpoint: &'static str, response: Response) -> Result<Bytes, ApiError> {
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
    if status.is_success() {
        return Ok(body);
    }
    let json: Option<Value> = serde_json::from_slice(&body).ok();
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
        let body = send(endpoint::GET, request).await?;
        parse_observation(endpoint::GET, &body)
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
        let body = send(endpoint::LIST, request).await?;
        let doc: ListDoc = serde_json::from_slice(&body).map_err(|e| ApiError::Decode {
            endpoint: endpoint::LIST,
            message: format!("not an instance list: {e}"),
        })?;
        let mut page = Page {
            instances: Vec::with_capacity(doc.instances.len()),
            next_page_token: doc.next_page_token.filter(|t| !t.is_empty()),
        };
        for item in &doc.instances {
            let Some(id) = &item.id else {
                return Err(ApiError::Decode {
                    endpoint: endpoint::LIST,
                    message: "an instance without `id`".into(),
                });
            };
            page.instances.push((id.clone(), item.observation()));
        }
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
        let error_code = json
            .get("error")
            .map(|e| e.get("code").and_then(Value::as_i64).unwrap_or(0));
        let error = json.get("error").map(|e| {
            let message = e.get("message").and_then(Value::as_str).unwrap_or("");
            format!("code {}: {message}", error_code.unwrap_or(0))
        });
        Ok(OperationState {
            done: json.get("done").and_then(Value::as_bool).unwrap_or(false),
            error,
            error_code,
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
        let typed = parse_observation("instances.get", instance.to_string().as_bytes()).unwrap();
        assert_eq!(Some(typed), Observation::from_json(&instance));
        assert!(parse_observation("instances.get", b"{}").is_err());
    }
}
