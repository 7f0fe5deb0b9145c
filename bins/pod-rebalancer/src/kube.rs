//! The Kubernetes API: the calls the rebalancer makes, with `kube`'s client
//! and `k8s-openapi`'s objects, each call through a `keel::Pipeline`
//! (attempt timeout, deadline, retries, circuit breaker).
//!
//! Connection details come from `KUBECONFIG` (every kubeconfig form `kube`
//! reads: token, token file, client certificate, CA, `exec` plugins), else
//! the in-cluster service account, else `~/.kube/config`. A plain `http://`
//! server is honoured (the tests' fake API server).
//!
//! Transport errors and 5xx answers are failures (retried, counted by the
//! breaker); any other answer is returned for the caller to read, so a 429
//! from a PodDisruptionBudget or a 409 conflict is never retried. Pacing
//! follows the pods with a watch (a list, then a watch from its
//! resourceVersion), not by polling.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod as PodObject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use keel::breaker::{BreakerConfig, CircuitBreaker};
use keel::retry::{Backoff, RetryPolicy};
use keel::{Pipeline, PipelineError};
use kube::api::{
    Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::Status;
use serde_json::json;
use tokio::time::Instant;

/// The annotation that keeps a pod out of the rebalancer's choice.
pub const OPT_OUT_ANNOTATION: &str = "pod-rebalancer.keel.dev/exclude";

/// The longest watch asked for: below `kube`'s 295 s read timeout, as
/// `kube`'s own default.
const WATCH_TIMEOUT_SECS: u64 = 290;
/// How long past its timeout a watch may stay open before the client ends
/// it.
const WATCH_GRACE: Duration = Duration::from_secs(5);

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
        /// The `Status` message.
        body: String,
    },
    /// The client could not be configured.
    #[error("Kubernetes client configuration: {0}")]
    Config(String),
}

fn config_error(e: impl std::error::Error) -> KubeError {
    KubeError::Config(chain(&e))
}

/// The error with its sources (several of `kube`'s errors keep the cause
/// out of their `Display`).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = s.source();
    }
    text
}

/// A client of the cluster: `kubeconfig` (KUBECONFIG) if given, else the
/// in-cluster service account when `KUBERNETES_SERVICE_HOST` is set, else
/// `~/.kube/config`.
///
/// # Errors
/// When none is usable, or its TLS material is invalid.
pub async fn connect(kubeconfig: Option<&Path>) -> Result<kube::Client, KubeError> {
    let mut config = if let Some(path) = kubeconfig {
        let file = Kubeconfig::read_from(path)
            .map_err(|e| KubeError::Config(format!("{}: {}", path.display(), chain(&e))))?;
        kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
            .await
            .map_err(config_error)?
    } else if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        kube::Config::incluster().map_err(config_error)?
    } else {
        kube::Config::from_kubeconfig(&KubeConfigOptions::default())
            .await
            .map_err(config_error)?
    };
    config.connect_timeout = Some(Duration::from_secs(5));
    // Retries are the pipeline's (with its breaker and deadline); kube's own
    // would also retry a PodDisruptionBudget's 429, which means "not now".
    config.default_retry = false;
    // rustls picks its process-wide crypto provider by itself only when one
    // provider is compiled in. A build that unifies features across a
    // workspace (ours: the AWS SDK brings aws-lc-rs, kube and reqwest use
    // ring) has both, and kube's TLS setup then panics. Choose ring, as the
    // rest of the program does; a provider installed already stays.
    let _ = rustls::crypto::ring::default_provider().install_default();
    kube::Client::try_from(config).map_err(config_error)
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

fn to_chrono(t: &Time) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(
        t.0.as_second(),
        u32::try_from(t.0.subsec_nanosecond()).ok()?,
    )
}

impl Pod {
    /// Reads a pod object.
    pub fn from_object(p: &PodObject) -> Pod {
        let meta = &p.metadata;
        let status = p.status.as_ref();
        let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or_default();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let requests: Vec<f64> = p
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .filter_map(|c| {
                c.resources
                    .as_ref()?
                    .requests
                    .as_ref()?
                    .get("cpu")
                    .and_then(|q| parse_cpu(&q.0))
            })
            .collect();
        Pod {
            name: meta.name.clone().unwrap_or_default(),
            ready,
            terminating: meta.deletion_timestamp.is_some()
                || phase == "Succeeded"
                || phase == "Failed",
            created: meta.creation_timestamp.as_ref().and_then(to_chrono),
            opted_out: meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(OPT_OUT_ANNOTATION))
                .is_some_and(|v| v == "true"),
            cpu_request: (!requests.is_empty()).then(|| requests.iter().sum()),
        }
    }

    /// Counts toward the Ready pods.
    fn counts(&self, gone: &[String]) -> bool {
        self.ready && !self.terminating && !gone.contains(&self.name)
    }
}

/// The Kubernetes API client of one namespace.
#[derive(Clone)]
pub struct Kube {
    client: kube::Client,
    pipeline: Arc<Pipeline>,
    namespace: String,
}

impl std::fmt::Debug for Kube {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kube")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

fn unexpected(call: &str, status: &Status) -> KubeError {
    KubeError::Unexpected {
        call: call.to_owned(),
        status: status.code,
        body: status.message.chars().take(300).collect(),
    }
}

impl Kube {
    /// A client for `namespace` over `client` ([`connect`], or a
    /// `tower_test` mock service in tests).
    ///
    /// # Errors
    /// When the pipeline cannot be built (not with these constants).
    pub fn new(client: kube::Client, namespace: &str) -> Result<Kube, KubeError> {
        let pipeline = Pipeline::builder()
            .retry(
                RetryPolicy::builder()
                    .max_retries(2)
                    .backoff(Backoff::exponential(Duration::from_millis(200), 2.0))
                    .build()
                    .map_err(config_error)?,
            )
            .breaker(CircuitBreaker::new("kubernetes", BreakerConfig::default()))
            .attempt_timeout(Duration::from_secs(10))
            .deadline(Duration::from_secs(30))
            .build()
            .map_err(config_error)?;
        Ok(Kube {
            client,
            pipeline: Arc::new(pipeline),
            namespace: namespace.to_owned(),
        })
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// One call through the pipeline. `Ok(Err(status))` is an answer of the
    /// API server that is not a failure (4xx); `Err` only when the API is
    /// unavailable.
    async fn call<T, F, Fut>(&self, what: &str, op: F) -> Result<Result<T, Box<Status>>, KubeError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let result = self
            .pipeline
            .call(|_attempt| {
                let call = op();
                async move {
                    match call.await {
                        Ok(v) => Ok(Ok(v)),
                        Err(kube::Error::Api(s)) if s.code >= 500 || s.code == 0 => {
                            Err(format!("HTTP {}: {}", s.code, s.message))
                        }
                        Err(kube::Error::Api(s)) => Ok(Err(s)),
                        Err(e) => Err(chain(&e)),
                    }
                }
            })
            .await;
        result.map_err(|e| match e {
            PipelineError::Inner(text) => KubeError::Unavailable(format!("{what}: {text}")),
            other => KubeError::Unavailable(format!("{what}: {other}")),
        })
    }

    /// Pods matching `selector` and the list's resourceVersion.
    async fn list(&self, selector: &str) -> Result<(Vec<Pod>, String), KubeError> {
        let api = self.api::<PodObject>();
        let params = ListParams::default().labels(selector);
        let list = self
            .call("list pods", || api.list(&params))
            .await?
            .map_err(|s| unexpected("list pods", &s))?;
        let version = list.metadata.resource_version.clone().unwrap_or_default();
        Ok((list.items.iter().map(Pod::from_object).collect(), version))
    }

    /// Pods matching `selector`.
    ///
    /// # Errors
    /// Unavailable, or an unexpected answer (403: RBAC).
    pub async fn list_pods(&self, selector: &str) -> Result<Vec<Pod>, KubeError> {
        Ok(self.list(selector).await?.0)
    }

    /// The Deployment object.
    ///
    /// # Errors
    /// Unavailable, or not 200.
    pub async fn deployment(&self, name: &str) -> Result<Deployment, KubeError> {
        let api = self.api::<Deployment>();
        self.call("get deployment", || api.get(name))
            .await?
            .map_err(|s| unexpected("get deployment", &s))
    }

    /// The autoscaling/v2 HPA, `None` when it does not exist.
    ///
    /// # Errors
    /// Unavailable, or neither 200 nor 404.
    pub async fn hpa(&self, name: &str) -> Result<Option<HorizontalPodAutoscaler>, KubeError> {
        let api = self.api::<HorizontalPodAutoscaler>();
        match self.call("get hpa", || api.get(name)).await? {
            Ok(hpa) => Ok(Some(hpa)),
            Err(s) if s.code == 404 => Ok(None),
            Err(s) => Err(unexpected("get hpa", &s)),
        }
    }

    /// Evicts a pod (policy/v1). `Ok(Err(reason))` when the API server says
    /// "not now" (429 from a PodDisruptionBudget) or the pod is gone.
    ///
    /// # Errors
    /// Unavailable, or an unexpected answer.
    pub async fn evict(&self, pod: &str) -> Result<Result<(), String>, KubeError> {
        let api = self.api::<PodObject>();
        let params = EvictParams::default();
        match self.call("evict pod", || api.evict(pod, &params)).await? {
            Ok(_) => Ok(Ok(())),
            Err(s) if s.code == 429 => Ok(Err(format!(
                "eviction refused (PodDisruptionBudget): {}",
                if s.message.is_empty() {
                    "429 Too Many Requests"
                } else {
                    &s.message
                }
            ))),
            Err(s) if s.code == 404 => Ok(Err("pod no longer exists".into())),
            Err(s) => Err(unexpected("evict pod", &s)),
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
        let api = self.api::<PodObject>();
        let params = DeleteParams {
            grace_period_seconds: Some(u32::try_from(grace.as_secs()).unwrap_or(u32::MAX)),
            ..DeleteParams::default()
        };
        match self.call("delete pod", || api.delete(pod, &params)).await? {
            Ok(_) => Ok(Ok(())),
            Err(s) if s.code == 404 => Ok(Err("pod no longer exists".into())),
            Err(s) => Err(unexpected("delete pod", &s)),
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
        let mut body = json!({"metadata": {"annotations": {key: value}}});
        if let Some(rv) = resource_version {
            body["metadata"]["resourceVersion"] = json!(rv);
        }
        let api = self.api::<Deployment>();
        let patch = Patch::Merge(body);
        let params = PatchParams::default();
        match self
            .call("annotate deployment", || api.patch(name, &params, &patch))
            .await?
        {
            Ok(_) => Ok(true),
            Err(s) if s.code == 409 => Ok(false),
            Err(s) => Err(unexpected("annotate deployment", &s)),
        }
    }

    /// Records a core/v1 Event on a pod. Best effort: failures are logged.
    pub async fn event(&self, pod: &str, reason: &str, message: &str, now: DateTime<Utc>) {
        let stamp = Timestamp::from_second(now.timestamp()).ok().map(Time);
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{pod}.")),
                namespace: Some(self.namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.into()),
                namespace: Some(self.namespace.clone()),
                ..ObjectReference::default()
            },
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some("Normal".into()),
            source: Some(EventSource {
                component: Some("pod-rebalancer".into()),
                ..EventSource::default()
            }),
            first_timestamp: stamp.clone(),
            last_timestamp: stamp,
            count: Some(1),
            ..Event::default()
        };
        let api = self.api::<Event>();
        let params = PostParams::default();
        match self
            .call("create event", || api.create(&params, &event))
            .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(s)) => {
                tracing::warn!(pod, status = s.code, message = %s.message, "event not recorded");
            }
            Err(e) => tracing::warn!(pod, error = %e, "event not recorded"),
        }
    }

    /// Waits until at least `want` pods matching `selector` are Ready and
    /// not terminating, not counting `gone`; `false` when `bound` passes
    /// first. A list gives the state and its resourceVersion, a watch from
    /// there follows each change; when the watch ends (its timeout, a 410
    /// `Expired`, a broken stream) the list and the watch start again.
    ///
    /// # Errors
    /// The list or the watch's start failed (unavailable or unexpected).
    pub async fn wait_ready(
        &self,
        selector: &str,
        gone: &[String],
        want: usize,
        bound: Duration,
    ) -> Result<bool, KubeError> {
        let deadline = Instant::now() + bound;
        let api = self.api::<PodObject>();
        loop {
            let (pods, version) = self.list(selector).await?;
            let mut ready: HashMap<String, bool> = pods
                .iter()
                .map(|p| (p.name.clone(), p.counts(gone)))
                .collect();
            let enough =
                |ready: &HashMap<String, bool>| ready.values().filter(|r| **r).count() >= want;
            if enough(&ready) {
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            let secs = (left.as_secs_f64().ceil() as u64).clamp(1, WATCH_TIMEOUT_SECS);
            let params = WatchParams::default()
                .labels(selector)
                .timeout(u32::try_from(secs).unwrap_or(1));
            let started = Instant::now();
            // The server ends the watch after `secs`; if nothing says so
            // (a proxy keeping the stream open), the client ends it too.
            let watch_end = deadline.min(started + Duration::from_secs(secs) + WATCH_GRACE);
            let stream = self
                .call("watch pods", || api.watch(&params, &version))
                .await?
                .map_err(|s| unexpected("watch pods", &s))?;
            let mut stream = std::pin::pin!(stream);
            loop {
                let event = match tokio::time::timeout_at(watch_end, stream.next()).await {
                    Err(_) if watch_end >= deadline => return Ok(false),
                    Err(_) => break,
                    Ok(None) => break,
                    Ok(Some(Err(e))) => {
                        tracing::debug!(error = %chain(&e), "pod watch broken: list again");
                        break;
                    }
                    Ok(Some(Ok(event))) => event,
                };
                match event {
                    WatchEvent::Added(p) | WatchEvent::Modified(p) => {
                        let p = Pod::from_object(&p);
                        ready.insert(p.name.clone(), p.counts(gone));
                    }
                    WatchEvent::Deleted(p) => {
                        ready.remove(p.metadata.name.as_deref().unwrap_or_default());
                    }
                    WatchEvent::Bookmark(_) => {}
                    WatchEvent::Error(s) => {
                        tracing::debug!(code = s.code, message = %s.message, "pod watch ended: list again");
                        break;
                    }
                }
                if enough(&ready) {
                    return Ok(true);
                }
            }
            // A watch that ends at once (a proxy closing it) must not turn
            // into a tight loop of lists.
            let floor = started + Duration::from_secs(1);
            if Instant::now() < floor {
                tokio::time::sleep_until(floor.min(deadline)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use serde_json::Value;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    /// A client whose API server is the test: each request is checked and
    /// answered by hand.
    fn mock() -> (Kube, Handle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let kube = Kube::new(kube::Client::new(service, "ns"), "ns").expect("client");
        (kube, handle)
    }

    /// The next request: method, path and query, content type, JSON body.
    async fn next(
        handle: &mut Handle,
    ) -> (
        Method,
        String,
        String,
        Value,
        tower_test::mock::SendResponse<Response<Body>>,
    ) {
        let (request, send) = handle.next_request().await.expect("a request");
        let method = request.method().clone();
        let uri = request.uri().to_string();
        let content_type = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = request.into_body().collect_bytes().await.expect("body");
        let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
        (method, uri, content_type, json, send)
    }

    fn answer(
        send: tower_test::mock::SendResponse<Response<Body>>,
        code: StatusCode,
        body: &Value,
    ) {
        send.send_response(
            Response::builder()
                .status(code)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Body::from(serde_json::to_vec(body).expect("JSON")))
                .expect("response"),
        );
    }

    fn status(code: StatusCode, reason: &str, message: &str) -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "reason": reason, "message": message, "code": code.as_u16()})
    }

    #[tokio::test]
    async fn eviction_posts_a_policy_v1_eviction_and_a_429_is_not_now() {
        let (kube, mut handle) = mock();
        let server = tokio::spawn(async move {
            let (method, uri, content_type, body, send) = next(&mut handle).await;
            assert_eq!(method, Method::POST);
            assert_eq!(uri, "/api/v1/namespaces/ns/pods/consumer-07/eviction?");
            assert_eq!(content_type, "application/json");
            assert_eq!(body["metadata"]["name"], "consumer-07");
            answer(
                send,
                StatusCode::CREATED,
                &json!({"kind": "Status", "apiVersion": "v1",
                "metadata": {}, "status": "Success", "code": 201}),
            );
            let (_, uri, _, _, send) = next(&mut handle).await;
            assert_eq!(uri, "/api/v1/namespaces/ns/pods/consumer-08/eviction?");
            answer(
                send,
                StatusCode::TOO_MANY_REQUESTS,
                &status(
                    StatusCode::TOO_MANY_REQUESTS,
                    "TooManyRequests",
                    "Cannot evict pod as it would violate the pod's disruption budget.",
                ),
            );
            let (_, _, _, _, send) = next(&mut handle).await;
            answer(
                send,
                StatusCode::NOT_FOUND,
                &status(StatusCode::NOT_FOUND, "NotFound", "gone"),
            );
            // Exactly three requests: the 429 was not retried.
            assert!(handle.next_request().await.is_none());
        });
        assert_eq!(kube.evict("consumer-07").await.expect("answered"), Ok(()));
        let refused = kube.evict("consumer-08").await.expect("answered");
        assert_eq!(
            refused,
            Err("eviction refused (PodDisruptionBudget): Cannot evict pod as it would violate the pod's disruption budget.".into())
        );
        assert_eq!(
            kube.evict("consumer-09").await.expect("answered"),
            Err("pod no longer exists".into())
        );
        drop(kube);
        server.await.expect("server checks");
    }

    #[tokio::test]
    async fn delete_carries_the_grace_period() {
        let (kube, mut handle) = mock();
        let server = tokio::spawn(async move {
            let (method, uri, content_type, body, send) = next(&mut handle).await;
            assert_eq!(method, Method::DELETE);
            assert_eq!(uri, "/api/v1/namespaces/ns/pods/consumer-07?");
            assert_eq!(content_type, "application/json");
            assert_eq!(body["gracePeriodSeconds"], 45);
            answer(
                send,
                StatusCode::OK,
                &json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "consumer-07", "namespace": "ns"}}),
            );
        });
        assert_eq!(
            kube.delete("consumer-07", Duration::from_secs(45))
                .await
                .expect("answered"),
            Ok(())
        );
        server.await.expect("server checks");
    }

    #[tokio::test]
    async fn the_lock_is_a_conditional_merge_patch_and_409_is_a_lost_race() {
        let (kube, mut handle) = mock();
        let server = tokio::spawn(async move {
            let (method, uri, content_type, body, send) = next(&mut handle).await;
            assert_eq!(method, Method::PATCH);
            assert_eq!(uri, "/apis/apps/v1/namespaces/ns/deployments/consumer?");
            assert_eq!(content_type, "application/merge-patch+json");
            assert_eq!(
                body,
                json!({"metadata": {"annotations": {"k": "v"}, "resourceVersion": "41"}})
            );
            answer(
                send,
                StatusCode::CONFLICT,
                &status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    "the object has been modified",
                ),
            );
            let (_, _, _, body, send) = next(&mut handle).await;
            assert_eq!(body, json!({"metadata": {"annotations": {"k": "w"}}}));
            answer(
                send,
                StatusCode::OK,
                &json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "consumer", "namespace": "ns", "resourceVersion": "43"}}),
            );
        });
        assert!(
            !kube
                .annotate_deployment("consumer", "k", "v", Some("41"))
                .await
                .expect("answered")
        );
        assert!(
            kube.annotate_deployment("consumer", "k", "w", None)
                .await
                .expect("answered")
        );
        server.await.expect("server checks");
    }

    #[tokio::test]
    async fn a_rebalanced_event_names_the_pod() {
        let (kube, mut handle) = mock();
        let server = tokio::spawn(async move {
            let (method, uri, content_type, body, send) = next(&mut handle).await;
            assert_eq!(method, Method::POST);
            assert_eq!(uri, "/api/v1/namespaces/ns/events?");
            assert_eq!(content_type, "application/json");
            assert_eq!(body["apiVersion"], "v1");
            assert_eq!(body["kind"], "Event");
            assert_eq!(body["metadata"]["generateName"], "consumer-07.");
            assert_eq!(
                body["involvedObject"],
                json!({"apiVersion": "v1", "kind": "Pod", "name": "consumer-07", "namespace": "ns"})
            );
            assert_eq!(body["reason"], "Rebalanced");
            assert_eq!(body["message"], "Evicted by pod-rebalancer");
            assert_eq!(body["type"], "Normal");
            assert_eq!(body["source"]["component"], "pod-rebalancer");
            assert_eq!(body["firstTimestamp"], "2026-01-01T00:00:00Z");
            assert_eq!(body["count"], 1);
            answer(send, StatusCode::CREATED, &body);
        });
        let now = DateTime::from_timestamp(1_767_225_600, 0).expect("time");
        kube.event(
            "consumer-07",
            "Rebalanced",
            "Evicted by pod-rebalancer",
            now,
        )
        .await;
        server.await.expect("server checks");
    }

    #[tokio::test(start_paused = true)]
    async fn a_5xx_is_retried_then_unavailable() {
        let (kube, mut handle) = mock();
        let server = tokio::spawn(async move {
            for _ in 0..3 {
                let (method, uri, _, _, send) = next(&mut handle).await;
                assert_eq!(method, Method::GET);
                assert_eq!(
                    uri,
                    "/apis/autoscaling/v2/namespaces/ns/horizontalpodautoscalers/consumer"
                );
                answer(
                    send,
                    StatusCode::SERVICE_UNAVAILABLE,
                    &status(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "ServiceUnavailable",
                        "etcd",
                    ),
                );
            }
        });
        let err = kube.hpa("consumer").await.expect_err("unavailable");
        assert!(matches!(err, KubeError::Unavailable(_)), "{err}");
        assert!(err.to_string().contains("HTTP 503"), "{err}");
        server.await.expect("three attempts");
    }

    #[test]
    fn cpu_quantities() {
        assert_eq!(parse_cpu("500m"), Some(0.5));
        assert_eq!(parse_cpu("2"), Some(2.0));
        assert_eq!(parse_cpu("0.25"), Some(0.25));
        assert_eq!(parse_cpu("x"), None);
    }

    #[test]
    fn pod_fields() {
        let v = json!({
            "metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z",
                          "annotations": {OPT_OUT_ANNOTATION: "true"}},
            "spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": "250m"}}},
                                    {"name": "b", "resources": {"requests": {"cpu": "1"}}}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
        });
        let p = Pod::from_object(&serde_json::from_value(v).expect("a pod"));
        assert!(p.ready && p.opted_out && !p.terminating);
        assert_eq!(p.cpu_request, Some(1.25));
        assert_eq!(
            p.created,
            DateTime::from_timestamp(1_767_225_600, 0),
            "2026-01-01T00:00:00Z"
        );
        assert!(p.counts(&[]));
        assert!(!p.counts(&["p".to_owned()]));
    }
}
