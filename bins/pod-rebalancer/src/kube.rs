//! The Kubernetes API, the few calls the rebalancer makes, over reqwest
//! through a `keel::Pipeline`.
//!
//! Why not the `kube` crate: the program makes eight plain REST calls and
//! reads a handful of fields; `kube` + `k8s-openapi` would add minutes of
//! build time on CI for typed objects it does not need. Connection details
//! come from the usual places: `KUBECONFIG` (token, client certificate,
//! CA; `exec` plugins are not supported), else in-cluster (service account
//! token and CA), else `~/.kube/config`.
//!
//! Transport errors and 5xx answers are failures (retried, counted by the
//! breaker); any other answer is returned for the caller to read, so a 429
//! from a PodDisruptionBudget or a 409 conflict is never retried.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use keel::breaker::{BreakerConfig, CircuitBreaker};
use keel::retry::{Backoff, RetryPolicy};
use keel::{Pipeline, PipelineError};
use reqwest::Method;
use serde_json::{Value, json};

const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The annotation that keeps a pod out of the rebalancer's choice.
pub const OPT_OUT_ANNOTATION: &str = "pod-rebalancer.keel.dev/exclude";

/// The API server could not be reached or kept failing.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// Transport error or 5xx after retries, or the breaker is open.
    #[error("Kubernetes API unavailable: {0}")]
    Unavailable(String),
    /// An answer that is not what the API documents.
    #[error("unexpected Kubernetes API answer to {call}: HTTP {status}: {body}")]
    Unexpected {
        /// What was called.
        call: String,
        /// Status code.
        status: u16,
        /// Start of the body.
        body: String,
    },
    /// The client could not be configured.
    #[error("Kubernetes client configuration: {0}")]
    Config(String),
}

/// An answer that is not a transport error or a 5xx.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// JSON body (null when empty or not JSON).
    pub body: Value,
}

/// Where the API server is and who we are.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// `https://host:port` or, for tests, `http://127.0.0.1:port`.
    pub server: String,
    /// Bearer token.
    pub token: Option<String>,
    /// CA bundle, PEM.
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate and key, PEM, concatenated.
    pub identity_pem: Option<Vec<u8>>,
    /// `insecure-skip-tls-verify`.
    pub insecure: bool,
}

fn read(path: &Path) -> Result<Vec<u8>, KubeError> {
    std::fs::read(path).map_err(|e| KubeError::Config(format!("{}: {e}", path.display())))
}

fn base64_decode(text: &str) -> Result<Vec<u8>, KubeError> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
    {
        let v = ALPHABET
            .iter()
            .position(|&a| a == c)
            .ok_or_else(|| KubeError::Config("invalid base64 in kubeconfig".into()))?;
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

impl Connection {
    /// `explicit` (KUBECONFIG), else in-cluster, else `~/.kube/config`.
    ///
    /// # Errors
    /// When none is usable.
    pub fn discover(explicit: Option<&Path>) -> Result<Connection, KubeError> {
        if let Some(path) = explicit {
            return Connection::from_kubeconfig(path);
        }
        if let (Ok(host), Ok(port)) = (
            std::env::var("KUBERNETES_SERVICE_HOST"),
            std::env::var("KUBERNETES_SERVICE_PORT"),
        ) {
            let dir = Path::new(SA_DIR);
            let token = String::from_utf8_lossy(&read(&dir.join("token"))?)
                .trim()
                .to_owned();
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host
            };
            return Ok(Connection {
                server: format!("https://{host}:{port}"),
                token: Some(token),
                ca_pem: Some(read(&dir.join("ca.crt"))?),
                ..Connection::default()
            });
        }
        let home = std::env::var_os("HOME")
            .ok_or_else(|| KubeError::Config("not in a cluster, no KUBECONFIG, no HOME".into()))?;
        Connection::from_kubeconfig(&PathBuf::from(home).join(".kube/config"))
    }

    /// The current context of a kubeconfig file.
    ///
    /// # Errors
    /// When the file cannot be read or lacks the current context.
    pub fn from_kubeconfig(path: &Path) -> Result<Connection, KubeError> {
        let text = read(path)?;
        let doc: Value = serde_yaml::from_slice(&text)
            .map_err(|e| KubeError::Config(format!("{}: {e}", path.display())))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let named = |list: &str, name: &str, field: &str| -> Option<Value> {
            doc[list]
                .as_array()?
                .iter()
                .find(|e| e["name"] == name)
                .map(|e| e[field].clone())
        };
        let current = doc["current-context"]
            .as_str()
            .ok_or_else(|| KubeError::Config("kubeconfig has no current-context".into()))?;
        let context = named("contexts", current, "context")
            .ok_or_else(|| KubeError::Config(format!("no context {current}")))?;
        let cluster_name = context["cluster"].as_str().unwrap_or_default();
        let cluster = named("clusters", cluster_name, "cluster")
            .ok_or_else(|| KubeError::Config(format!("no cluster {cluster_name}")))?;
        let user = context["user"]
            .as_str()
            .and_then(|u| named("users", u, "user"))
            .unwrap_or(Value::Null);
        let resolve = |p: &str| {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                dir.join(p)
            }
        };
        let data_or_file =
            |v: &Value, data: &str, file: &str| -> Result<Option<Vec<u8>>, KubeError> {
                if let Some(d) = v[data].as_str() {
                    return base64_decode(d).map(Some);
                }
                if let Some(f) = v[file].as_str() {
                    return read(&resolve(f)).map(Some);
                }
                Ok(None)
            };
        if user.get("exec").is_some() || user.get("auth-provider").is_some() {
            return Err(KubeError::Config(
                "kubeconfig user uses exec or auth-provider, which this client does not run; use a token".into(),
            ));
        }
        let token = match (user["token"].as_str(), user["tokenFile"].as_str()) {
            (Some(t), _) => Some(t.to_owned()),
            (None, Some(f)) => Some(
                String::from_utf8_lossy(&read(&resolve(f))?)
                    .trim()
                    .to_owned(),
            ),
            _ => None,
        };
        let cert = data_or_file(&user, "client-certificate-data", "client-certificate")?;
        let key = data_or_file(&user, "client-key-data", "client-key")?;
        let identity_pem = match (cert, key) {
            (Some(mut c), Some(k)) => {
                c.push(b'\n');
                c.extend(k);
                Some(c)
            }
            _ => None,
        };
        Ok(Connection {
            server: cluster["server"]
                .as_str()
                .ok_or_else(|| KubeError::Config("cluster has no server".into()))?
                .trim_end_matches('/')
                .to_owned(),
            token,
            ca_pem: data_or_file(
                &cluster,
                "certificate-authority-data",
                "certificate-authority",
            )?,
            identity_pem,
            insecure: cluster["insecure-skip-tls-verify"]
                .as_bool()
                .unwrap_or(false),
        })
    }
}

/// A pod, as far as the rebalancer reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Pod {
    /// Name.
    pub name: String,
    /// Ready condition is True.
    pub ready: bool,
    /// Has a deletionTimestamp, or its phase is Succeeded/Failed.
    pub terminating: bool,
    /// Created at.
    pub created: Option<DateTime<Utc>>,
    /// Annotated with [`OPT_OUT_ANNOTATION`]: `"true"`.
    pub opted_out: bool,
    /// Sum of CPU requests, cores.
    pub cpu_request: Option<f64>,
}

/// `500m`, `1`, `0.5`, `2000000n` in cores.
pub fn parse_cpu(q: &str) -> Option<f64> {
    let q = q.trim();
    let (num, scale) = if let Some(n) = q.strip_suffix('m') {
        (n, 1e-3)
    } else if let Some(n) = q.strip_suffix('u') {
        (n, 1e-6)
    } else if let Some(n) = q.strip_suffix('n') {
        (n, 1e-9)
    } else {
        (q, 1.0)
    };
    num.parse::<f64>().ok().map(|v| v * scale)
}

impl Pod {
    /// Reads a pod object.
    pub fn from_json(v: &Value) -> Pod {
        let meta = &v["metadata"];
        let phase = v["status"]["phase"].as_str().unwrap_or_default();
        let ready = v["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        let requests: Vec<f64> = v["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| {
                c["resources"]["requests"]["cpu"]
                    .as_str()
                    .and_then(parse_cpu)
            })
            .collect();
        Pod {
            name: meta["name"].as_str().unwrap_or_default().to_owned(),
            ready,
            terminating: !meta["deletionTimestamp"].is_null()
                || phase == "Succeeded"
                || phase == "Failed",
            created: meta["creationTimestamp"]
                .as_str()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc)),
            opted_out: meta["annotations"][OPT_OUT_ANNOTATION] == "true",
            cpu_request: (!requests.is_empty()).then(|| requests.iter().sum()),
        }
    }
}

/// The Kubernetes API client.
#[derive(Debug, Clone)]
pub struct Kube {
    http: reqwest::Client,
    connection: Arc<Connection>,
    pipeline: Arc<Pipeline>,
    namespace: String,
}

fn short(body: &str) -> String {
    body.chars().take(300).collect()
}

impl Kube {
    /// A client for `namespace`.
    ///
    /// # Errors
    /// When TLS material is invalid.
    pub fn new(connection: Connection, namespace: &str) -> Result<Kube, KubeError> {
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(5));
        if let Some(ca) = &connection.ca_pem {
            for cert in reqwest::Certificate::from_pem_bundle(ca)
                .map_err(|e| KubeError::Config(format!("CA: {e}")))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some(pem) = &connection.identity_pem {
            builder = builder.identity(
                reqwest::Identity::from_pem(pem)
                    .map_err(|e| KubeError::Config(format!("client certificate: {e}")))?,
            );
        }
        if connection.insecure {
            builder = builder.danger_accept_invalid_certs(true);
        }
        let pipeline = Pipeline::builder()
            .retry(
                RetryPolicy::builder()
                    .max_retries(2)
                    .backoff(Backoff::exponential(Duration::from_millis(200), 2.0))
                    .build()
                    .map_err(|e| KubeError::Config(e.to_string()))?,
            )
            .breaker(CircuitBreaker::new("kubernetes", BreakerConfig::default()))
            .attempt_timeout(Duration::from_secs(10))
            .deadline(Duration::from_secs(30))
            .build()
            .map_err(|e| KubeError::Config(e.to_string()))?;
        Ok(Kube {
            http: builder
                .build()
                .map_err(|e| KubeError::Config(e.to_string()))?,
            connection: Arc::new(connection),
            pipeline: Arc::new(pipeline),
            namespace: namespace.to_owned(),
        })
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// One call; `Err` only when the API is unavailable.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Value)>,
    ) -> Result<Answer, KubeError> {
        let url = format!("{}{path}", self.connection.server);
        let result = self
            .pipeline
            .call(|attempt| {
                let mut request = self.http.request(method.clone(), &url);
                if let Some(token) = &self.connection.token {
                    request = request.bearer_auth(token);
                }
                if let Some((content_type, b)) = &body {
                    request = request
                        .header(reqwest::header::CONTENT_TYPE, *content_type)
                        .body(b.to_string());
                }
                if let Some(t) = attempt.timeout {
                    request = request.timeout(t);
                }
                async move {
                    let response = request.send().await.map_err(|e| {
                        let mut text = e.to_string();
                        let mut source = std::error::Error::source(&e);
                        while let Some(s) = source {
                            text = format!("{text}: {s}");
                            source = s.source();
                        }
                        text
                    })?;
                    let status = response.status().as_u16();
                    let text = response.text().await.map_err(|e| e.to_string())?;
                    if status >= 500 {
                        return Err(format!("HTTP {status}: {}", short(&text)));
                    }
                    Ok(Answer {
                        status,
                        body: serde_json::from_str(&text).unwrap_or(Value::Null),
                    })
                }
            })
            .await;
        result.map_err(|e| match e {
            PipelineError::Inner(text) => {
                KubeError::Unavailable(format!("{method} {path}: {text}"))
            }
            other => KubeError::Unavailable(format!("{method} {path}: {other}")),
        })
    }

    fn unexpected(call: &str, answer: &Answer) -> KubeError {
        KubeError::Unexpected {
            call: call.to_owned(),
            status: answer.status,
            body: short(&answer.body.to_string()),
        }
    }

    /// Pods matching `selector`.
    ///
    /// # Errors
    /// Unavailable, or an unexpected answer (403: RBAC).
    pub async fn list_pods(&self, selector: &str) -> Result<Vec<Pod>, KubeError> {
        let query: String = url_encode(selector);
        let path = format!(
            "/api/v1/namespaces/{}/pods?labelSelector={query}",
            self.namespace
        );
        let answer = self.call(Method::GET, &path, None).await?;
        if answer.status != 200 {
            return Err(Self::unexpected("list pods", &answer));
        }
        Ok(answer.body["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(Pod::from_json)
            .collect())
    }

    /// The Deployment object.
    ///
    /// # Errors
    /// Unavailable, or not 200.
    pub async fn deployment(&self, name: &str) -> Result<Value, KubeError> {
        let path = format!(
            "/apis/apps/v1/namespaces/{}/deployments/{name}",
            self.namespace
        );
        let answer = self.call(Method::GET, &path, None).await?;
        if answer.status != 200 {
            return Err(Self::unexpected("get deployment", &answer));
        }
        Ok(answer.body)
    }

    /// The autoscaling/v2 HPA, `None` when it does not exist.
    ///
    /// # Errors
    /// Unavailable, or neither 200 nor 404.
    pub async fn hpa(&self, name: &str) -> Result<Option<Value>, KubeError> {
        let path = format!(
            "/apis/autoscaling/v2/namespaces/{}/horizontalpodautoscalers/{name}",
            self.namespace
        );
        let answer = self.call(Method::GET, &path, None).await?;
        match answer.status {
            200 => Ok(Some(answer.body)),
            404 => Ok(None),
            _ => Err(Self::unexpected("get hpa", &answer)),
        }
    }

    /// Evicts a pod (policy/v1). `Ok(Err(reason))` when the API server says
    /// "not now" (429 from a PodDisruptionBudget) or the pod is gone.
    ///
    /// # Errors
    /// Unavailable, or an unexpected answer.
    pub async fn evict(&self, pod: &str) -> Result<Result<(), String>, KubeError> {
        let path = format!("/api/v1/namespaces/{}/pods/{pod}/eviction", self.namespace);
        let body = json!({
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": pod, "namespace": self.namespace},
        });
        let answer = self
            .call(Method::POST, &path, Some(("application/json", body)))
            .await?;
        match answer.status {
            200 | 201 => Ok(Ok(())),
            429 => Ok(Err(format!(
                "eviction refused (PodDisruptionBudget): {}",
                answer.body["message"]
                    .as_str()
                    .unwrap_or("429 Too Many Requests")
            ))),
            404 => Ok(Err("pod no longer exists".into())),
            _ => Err(Self::unexpected("evict pod", &answer)),
        }
    }

    /// Deletes a pod with a grace period.
    ///
    /// # Errors
    /// Unavailable, or an unexpected answer.
    pub async fn delete(
        &self,
        pod: &str,
        grace: Duration,
    ) -> Result<Result<(), String>, KubeError> {
        let path = format!("/api/v1/namespaces/{}/pods/{pod}", self.namespace);
        let body = json!({
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": grace.as_secs(),
        });
        let answer = self
            .call(Method::DELETE, &path, Some(("application/json", body)))
            .await?;
        match answer.status {
            200 | 202 => Ok(Ok(())),
            404 => Ok(Err("pod no longer exists".into())),
            _ => Err(Self::unexpected("delete pod", &answer)),
        }
    }

    /// Sets one annotation on the Deployment; with `resource_version`, only
    /// if the object's is still that (a JSON merge patch carrying
    /// `metadata.resourceVersion` is conditional). `Ok(false)` on 409.
    ///
    /// # Errors
    /// Unavailable, or an unexpected answer.
    pub async fn annotate_deployment(
        &self,
        name: &str,
        key: &str,
        value: &str,
        resource_version: Option<&str>,
    ) -> Result<bool, KubeError> {
        let path = format!(
            "/apis/apps/v1/namespaces/{}/deployments/{name}",
            self.namespace
        );
        let mut body = json!({"metadata": {"annotations": {key: value}}});
        if let Some(rv) = resource_version {
            body["metadata"]["resourceVersion"] = json!(rv);
        }
        let answer = self
            .call(
                Method::PATCH,
                &path,
                Some(("application/merge-patch+json", body)),
            )
            .await?;
        match answer.status {
            200 => Ok(true),
            409 => Ok(false),
            _ => Err(Self::unexpected("annotate deployment", &answer)),
        }
    }

    /// Records a core/v1 Event on a pod. Best effort: failures are logged.
    pub async fn event(&self, pod: &str, reason: &str, message: &str, now: DateTime<Utc>) {
        let path = format!("/api/v1/namespaces/{}/events", self.namespace);
        let stamp = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let body = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": format!("{pod}."), "namespace": self.namespace},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": pod, "namespace": self.namespace},
            "reason": reason,
            "message": message,
            "type": "Normal",
            "source": {"component": "pod-rebalancer"},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        });
        match self
            .call(Method::POST, &path, Some(("application/json", body)))
            .await
        {
            Ok(a) if a.status == 201 || a.status == 200 => {}
            Ok(a) => tracing::warn!(pod, status = a.status, "event not recorded"),
            Err(e) => tracing::warn!(pod, error = %e, "event not recorded"),
        }
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities() {
        assert_eq!(parse_cpu("500m"), Some(0.5));
        assert_eq!(parse_cpu("2"), Some(2.0));
        assert_eq!(parse_cpu("0.25"), Some(0.25));
        assert_eq!(parse_cpu("x"), None);
    }

    #[test]
    fn base64() {
        assert_eq!(base64_decode("aGVsbG8=").expect("valid"), b"hello");
        assert_eq!(base64_decode("aGk=").expect("valid"), b"hi");
        assert!(base64_decode("!!").is_err());
    }

    #[test]
    fn kubeconfig_current_context_with_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\ncurrent-context: test\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:1234/\ncontexts:\n- name: test\n  context: {cluster: c, user: u}\nusers:\n- name: u\n  user: {token: abc}\n",
        )
        .expect("write");
        let c = Connection::from_kubeconfig(&path).expect("parses");
        assert_eq!(c.server, "http://127.0.0.1:1234");
        assert_eq!(c.token.as_deref(), Some("abc"));
        assert!(c.ca_pem.is_none());
    }

    #[test]
    fn pod_fields() {
        let v = json!({
            "metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z",
                          "annotations": {OPT_OUT_ANNOTATION: "true"}},
            "spec": {"containers": [{"resources": {"requests": {"cpu": "250m"}}},
                                    {"resources": {"requests": {"cpu": "1"}}}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
        });
        let p = Pod::from_json(&v);
        assert!(p.ready && p.opted_out && !p.terminating);
        assert_eq!(p.cpu_request, Some(1.25));
        assert_eq!(
            url_encode("app=consumer,tier in (a)"),
            "app%3Dconsumer%2Ctier%20in%20%28a%29"
        );
    }
}
