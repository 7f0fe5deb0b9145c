//! A fake Kubernetes API server (plain HTTP on loopback) for the few calls a
//! controller such as pod-rebalancer makes, answering with real object JSON
//! and `Status` objects:
//!
//! - `GET /api/v1/namespaces/{ns}/pods?labelSelector=k=v,...` (equality
//!   selectors) → `PodList` with `metadata.resourceVersion`; with
//!   `watch=true&resourceVersion=N` a watch: the pod changes after `N` and
//!   then each new one as a JSON line `{"type":"ADDED|MODIFIED|DELETED",
//!   "object":{...}}`, until `timeoutSeconds` (tokio time); a
//!   resourceVersion older than the kept history gets an `ERROR` event
//!   with a 410 `Expired` `Status`, as on a real API server;
//!   `GET .../pods/{name}`; `DELETE .../pods/{name}` (honours
//!   `gracePeriodSeconds` only by recording it);
//! - `POST .../pods/{name}/eviction` (a policy/v1 Eviction naming the pod;
//!   `kind` may be left out, as kube-rs does) → 201, or 429
//!   `TooManyRequests` when a PodDisruptionBudget allows no more
//!   disruptions (the API server's own message), 404 when the pod is gone;
//! - `GET/PATCH .../apis/apps/v1/namespaces/{ns}/deployments/{name}`: a
//!   JSON merge patch carrying `metadata.resourceVersion` is conditional
//!   (409 `Conflict` when stale), as on a real API server; every write bumps
//!   the resourceVersion;
//! - `GET /apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers/{name}`;
//! - `POST /api/v1/namespaces/{ns}/events` (recorded);
//! - `GET /api/v1/namespaces/{ns}/secrets?labelSelector=...` → `SecretList`
//!   (`data` base64, `metadata.resourceVersion`), in any namespace (Secrets
//!   are kept per namespace: [`FakeKube::put_secret`]); with `watch=true` a
//!   watch in the same JSON-lines format as the pods' (ADDED, MODIFIED,
//!   DELETED; 410 `Expired` for a resourceVersion older than the kept
//!   history, which [`FakeKube::put_secret_compacted`] forces).
//!
//! An evicted or deleted pod is replaced, as its ReplicaSet would, by a new
//! pod that is Ready at once, Ready after a delay (tokio time, so paused
//! tests jump it), or never ([`Replacement`]). Generic faults (500 storms, drops, latency)
//! come from [`FakeKube::server`].

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::FakeServer;

/// What replaces an evicted or deleted pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Replacement {
    /// Nothing (the pod count drops).
    None,
    /// A new pod, Ready at once.
    #[default]
    Ready,
    /// A new pod, not Ready, that becomes Ready after this long (tokio
    /// time).
    ReadyAfter(Duration),
    /// A new pod that never becomes Ready.
    NeverReady,
}

/// Pod changes kept for watches; an older resourceVersion gets 410.
const HISTORY: usize = 10_000;

#[derive(Debug)]
struct Inner {
    namespace: String,
    pods: BTreeMap<String, Value>,
    /// Pod changes, oldest first: (resourceVersion, type, object).
    changes: VecDeque<(u64, &'static str, Value)>,
    /// The newest change dropped from `changes` (0: none).
    expired: u64,
    /// The resourceVersion of the last pod or Secret change, for watchers
    /// to wait on.
    changed: tokio::sync::watch::Sender<u64>,
    /// Secrets by (namespace, name).
    secrets: BTreeMap<(String, String), Value>,
    /// Secret changes, oldest first: (resourceVersion, type, object).
    secret_changes: VecDeque<(u64, &'static str, Value)>,
    /// The newest Secret change dropped from `secret_changes` (0: none).
    secrets_expired: u64,
    deployment: Option<Value>,
    hpa: Option<Value>,
    version: u64,
    pdb_disruptions_allowed: Option<u32>,
    replacement: Replacement,
    replaced: u32,
    evictions: Vec<String>,
    refused_evictions: Vec<String>,
    deletions: Vec<(String, Option<u64>)>,
    events: Vec<Value>,
    conflicts: usize,
    before_next_patch: Option<Value>,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            namespace: String::new(),
            pods: BTreeMap::new(),
            changes: VecDeque::new(),
            expired: 0,
            changed: tokio::sync::watch::Sender::new(0),
            secrets: BTreeMap::new(),
            secret_changes: VecDeque::new(),
            secrets_expired: 0,
            deployment: None,
            hpa: None,
            version: 0,
            pdb_disruptions_allowed: None,
            replacement: Replacement::default(),
            replaced: 0,
            evictions: Vec::new(),
            refused_evictions: Vec::new(),
            deletions: Vec::new(),
            events: Vec::new(),
            conflicts: 0,
            before_next_patch: None,
        }
    }
}

impl Inner {
    /// Bumps the version, stamps `pod` with it and records the change.
    fn pod_changed(&mut self, kind: &'static str, pod: &mut Value) {
        self.version += 1;
        let version = self.version;
        pod["metadata"]["resourceVersion"] = json!(version.to_string());
        self.changes.push_back((version, kind, pod.clone()));
        if self.changes.len() > HISTORY
            && let Some((dropped, _, _)) = self.changes.pop_front()
        {
            self.expired = dropped;
        }
        self.changed.send_replace(version);
    }

    /// Bumps the version, stamps `secret` with it and records the change.
    fn secret_changed(&mut self, kind: &'static str, secret: &mut Value) {
        self.version += 1;
        let version = self.version;
        secret["metadata"]["resourceVersion"] = json!(version.to_string());
        self.secret_changes
            .push_back((version, kind, secret.clone()));
        if self.secret_changes.len() > HISTORY
            && let Some((dropped, _, _)) = self.secret_changes.pop_front()
        {
            self.secrets_expired = dropped;
        }
        self.changed.send_replace(version);
    }

    /// The kept changes of `resource` and the newest dropped one.
    fn history(&self, resource: Resource) -> (&VecDeque<(u64, &'static str, Value)>, u64) {
        match resource {
            Resource::Pods => (&self.changes, self.expired),
            Resource::Secrets => (&self.secret_changes, self.secrets_expired),
        }
    }
}

/// What a watch follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resource {
    Pods,
    Secrets,
}

type Shared = Arc<Mutex<Inner>>;

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|e| e.into_inner())
}

/// A pod object: labels, Ready condition, creation time (RFC 3339), CPU
/// request (`"500m"`) of its one container.
pub fn pod_json(
    name: &str,
    labels: &[(&str, &str)],
    ready: bool,
    created: &str,
    cpu_request: &str,
) -> Value {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels, "creationTimestamp": created, "annotations": {}},
        "spec": {"containers": [{"name": "app", "resources": {"requests": {"cpu": cpu_request}}}]},
        "status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": if ready { "True" } else { "False" }}
        ]},
    })
}

/// A Secret object (`Opaque`) with `labels` and `data` (base64-encoded
/// here, as the API server serves it).
pub fn secret_json(
    namespace: &str,
    name: &str,
    labels: &[(&str, &str)],
    data: &[(&str, &str)],
) -> Value {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(base64(v.as_bytes()))))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": labels,
                      "creationTimestamp": chrono_like_now()},
        "type": "Opaque",
        "data": data,
    })
}

/// Standard base64 with padding (RFC 4648 §4), as Secret data is served.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A `Status` object, as the API server sends with errors.
pub fn status_json(code: StatusCode, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    })
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    (code, axum::Json(status_json(code, reason, message))).into_response()
}

fn set_ready(pod: &mut Value, ready: bool) {
    pod["status"]["conditions"] =
        json!([{"type": "Ready", "status": if ready { "True" } else { "False" }}]);
}

/// A running fake API server; dropping it stops the server.
#[derive(Debug)]
pub struct FakeKube {
    server: FakeServer,
    inner: Shared,
}

impl FakeKube {
    /// Starts a fake API server whose objects live in `namespace`.
    pub async fn start(namespace: &str) -> Self {
        let inner: Shared = Arc::new(Mutex::new(Inner {
            namespace: namespace.to_owned(),
            version: 1,
            ..Inner::default()
        }));
        let app = Router::new()
            .route("/api/v1/namespaces/{ns}/pods", get(list_pods))
            .route(
                "/api/v1/namespaces/{ns}/pods/{name}",
                get(get_pod).delete(delete_pod),
            )
            .route(
                "/api/v1/namespaces/{ns}/pods/{name}/eviction",
                post(evict_pod),
            )
            .route(
                "/apis/apps/v1/namespaces/{ns}/deployments/{name}",
                get(get_deployment).patch(patch_deployment),
            )
            .route(
                "/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers/{name}",
                get(get_hpa),
            )
            .route("/api/v1/namespaces/{ns}/events", post(create_event))
            .route("/api/v1/namespaces/{ns}/secrets", get(list_secrets))
            .with_state(inner.clone());
        let server = FakeServer::start(app).await;
        FakeKube { server, inner }
    }

    /// `http://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        self.server.base_url()
    }

    /// The underlying server: generic faults and every recorded request.
    pub fn server(&self) -> &FakeServer {
        &self.server
    }

    /// Writes a kubeconfig whose current context points at this server
    /// (token `fake-token`) into `dir` and returns its path.
    ///
    /// # Panics
    /// When the file cannot be written.
    pub fn write_kubeconfig(&self, dir: &FsPath) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {}\nusers:\n- name: fake\n  user:\n    token: fake-token\n",
            self.url(),
            lock(&self.inner).namespace
        );
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("kubeconfig: {e}"));
        path
    }

    fn bump(inner: &mut Inner) -> String {
        inner.version += 1;
        inner.version.to_string()
    }

    /// Adds (or replaces) a pod object (a watch sees it ADDED or MODIFIED).
    pub fn put_pod(&self, mut pod: Value) {
        let mut inner = lock(&self.inner);
        pod["metadata"]["namespace"] = json!(inner.namespace);
        let name = pod["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let kind = if inner.pods.contains_key(&name) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        inner.pod_changed(kind, &mut pod);
        inner.pods.insert(name, pod);
    }

    /// Changes a pod in place (a watch sees it MODIFIED).
    pub fn update_pod(&self, name: &str, change: impl FnOnce(&mut Value)) {
        let mut inner = lock(&self.inner);
        if let Some(mut p) = inner.pods.remove(name) {
            change(&mut p);
            inner.pod_changed("MODIFIED", &mut p);
            inner.pods.insert(name.to_owned(), p);
        }
    }

    /// How many watches of pods were started.
    pub fn pod_watches(&self) -> usize {
        self.server
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/pods") && is_watch(r.query.as_deref()))
            .count()
    }

    /// How many pod lists (not watches) were served.
    pub fn pod_lists(&self) -> usize {
        self.server
            .requests()
            .iter()
            .filter(|r| {
                r.method == http::Method::GET
                    && r.path.ends_with("/pods")
                    && !is_watch(r.query.as_deref())
            })
            .count()
    }

    /// Adds (or replaces) the Secret `namespace/name` with `labels` and
    /// `data` (plain text here; served base64-encoded). A watch sees it
    /// ADDED or MODIFIED.
    pub fn put_secret(
        &self,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
        data: &[(&str, &str)],
    ) {
        let mut inner = lock(&self.inner);
        Self::put_secret_locked(&mut inner, secret_json(namespace, name, labels, data));
    }

    fn put_secret_locked(inner: &mut Inner, mut secret: Value) {
        let key = (
            secret["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            secret["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        let kind = if inner.secrets.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        inner.secret_changed(kind, &mut secret);
        inner.secrets.insert(key, secret);
    }

    /// [`FakeKube::put_secret`], and the change is dropped from the kept
    /// history at once, as if the API server had compacted it before any
    /// watcher read it: every Secret watch not past it gets a 410
    /// `Expired` error event and must list again to see it.
    pub fn put_secret_compacted(
        &self,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
        data: &[(&str, &str)],
    ) {
        let mut inner = lock(&self.inner);
        Self::put_secret_locked(&mut inner, secret_json(namespace, name, labels, data));
        inner.secrets_expired = inner.version;
        inner.secret_changes.clear();
        let version = inner.version;
        inner.changed.send_replace(version);
    }

    /// Deletes the Secret `namespace/name` (a watch sees it DELETED);
    /// `false` when there was none.
    pub fn delete_secret(&self, namespace: &str, name: &str) -> bool {
        let mut inner = lock(&self.inner);
        match inner
            .secrets
            .remove(&(namespace.to_owned(), name.to_owned()))
        {
            Some(mut secret) => {
                inner.secret_changed("DELETED", &mut secret);
                true
            }
            None => false,
        }
    }

    /// The Secrets now, as `(namespace, name)`.
    pub fn secret_names(&self) -> Vec<(String, String)> {
        lock(&self.inner).secrets.keys().cloned().collect()
    }

    /// How many watches of Secrets were started.
    pub fn secret_watches(&self) -> usize {
        self.server
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/secrets") && is_watch(r.query.as_deref()))
            .count()
    }

    /// How many Secret lists (not watches) were served.
    pub fn secret_lists(&self) -> usize {
        self.server
            .requests()
            .iter()
            .filter(|r| {
                r.method == http::Method::GET
                    && r.path.ends_with("/secrets")
                    && !is_watch(r.query.as_deref())
            })
            .count()
    }

    /// Sets the Deployment: `replicas`, settled (every pod updated and
    /// observed) unless changed later with [`FakeKube::update_deployment`].
    pub fn set_deployment(&self, name: &str, replicas: u64, labels: &[(&str, &str)]) {
        let labels: serde_json::Map<String, Value> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        let mut inner = lock(&self.inner);
        let rv = Self::bump(&mut inner);
        inner.deployment = Some(json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": inner.namespace, "generation": 1,
                          "resourceVersion": rv, "annotations": {}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels}},
            "status": {"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
                        "readyReplicas": replicas, "availableReplicas": replicas},
        }));
    }

    /// Changes the Deployment in place (bumps its resourceVersion).
    pub fn update_deployment(&self, change: impl FnOnce(&mut Value)) {
        let mut inner = lock(&self.inner);
        let rv = Self::bump(&mut inner);
        if let Some(d) = inner.deployment.as_mut() {
            change(d);
            d["metadata"]["resourceVersion"] = json!(rv);
        }
    }

    /// The Deployment object.
    pub fn deployment(&self) -> Option<Value> {
        lock(&self.inner).deployment.clone()
    }

    /// Sets an autoscaling/v2 HPA with a CPU utilisation target.
    pub fn set_hpa(&self, name: &str, cpu_percent: u32, current: u64, desired: u64) {
        let mut inner = lock(&self.inner);
        inner.hpa = Some(json!({
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": name, "namespace": inner.namespace},
            "spec": {"minReplicas": 1, "maxReplicas": 100, "metrics": [
                {"type": "Resource", "resource": {"name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": cpu_percent}}}
            ]},
            "status": {"currentReplicas": current, "desiredReplicas": desired},
        }));
    }

    /// A PodDisruptionBudget allowing `n` more evictions (`None`: no PDB).
    pub fn set_pdb_disruptions_allowed(&self, n: Option<u32>) {
        lock(&self.inner).pdb_disruptions_allowed = n;
    }

    /// What replaces evicted and deleted pods.
    pub fn set_replacement(&self, r: Replacement) {
        lock(&self.inner).replacement = r;
    }

    /// Names of the pods now.
    pub fn pod_names(&self) -> Vec<String> {
        lock(&self.inner).pods.keys().cloned().collect()
    }

    /// Pods evicted, in order.
    pub fn evictions(&self) -> Vec<String> {
        lock(&self.inner).evictions.clone()
    }

    /// Evictions refused with 429.
    pub fn refused_evictions(&self) -> Vec<String> {
        lock(&self.inner).refused_evictions.clone()
    }

    /// Pods deleted, with the grace period asked for.
    pub fn deletions(&self) -> Vec<(String, Option<u64>)> {
        lock(&self.inner).deletions.clone()
    }

    /// Events created.
    pub fn events(&self) -> Vec<Value> {
        lock(&self.inner).events.clone()
    }

    /// Another writer, deterministically between a client's read and its
    /// write: just before the next Deployment PATCH is evaluated, `patch`
    /// (a JSON merge patch) is applied and the resourceVersion bumped, so a
    /// conditional write based on the earlier read gets 409.
    pub fn write_before_next_patch(&self, patch: Value) {
        lock(&self.inner).before_next_patch = Some(patch);
    }

    /// How many conditional writes were refused with 409.
    pub fn conflicts(&self) -> usize {
        lock(&self.inner).conflicts
    }
}

fn is_watch(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "watch" && (v == "true" || v == "1"))
    })
}

fn wrong_namespace(inner: &Inner, ns: &str) -> Option<Response> {
    (inner.namespace != ns).then(|| {
        status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("namespaces \"{ns}\" not found"),
        )
    })
}

fn matches(pod: &Value, selector: &str) -> bool {
    selector
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .all(|term| match term.split_once('=') {
            Some((k, v)) => {
                pod["metadata"]["labels"][k.trim().trim_end_matches('=')]
                    == v.trim().trim_start_matches('=')
            }
            None => false,
        })
}

async fn list_pods(
    State(state): State<Shared>,
    Path(ns): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let inner = lock(&state);
    if let Some(r) = wrong_namespace(&inner, &ns) {
        return r;
    }
    let selector = query.get("labelSelector").cloned().unwrap_or_default();
    if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
        let from = query
            .get("resourceVersion")
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|v| *v > 0)
            .unwrap_or(inner.version);
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(1800);
        drop(inner);
        return watch(
            state,
            Resource::Pods,
            selector,
            from,
            Duration::from_secs(timeout),
        );
    }
    let items: Vec<Value> = inner
        .pods
        .values()
        .filter(|p| matches(p, &selector))
        .cloned()
        .collect();
    axum::Json(json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": inner.version.to_string()},
        "items": items,
    }))
    .into_response()
}

async fn list_secrets(
    State(state): State<Shared>,
    Path(ns): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let inner = lock(&state);
    let selector = query.get("labelSelector").cloned().unwrap_or_default();
    if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
        let from = query
            .get("resourceVersion")
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|v| *v > 0)
            .unwrap_or(inner.version);
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(1800);
        drop(inner);
        let selector = SecretSelector {
            namespace: ns,
            labels: selector,
        };
        return watch(
            state,
            Resource::Secrets,
            selector.encode(),
            from,
            Duration::from_secs(timeout),
        );
    }
    let items: Vec<Value> = inner
        .secrets
        .iter()
        .filter(|((n, _), s)| *n == ns && matches(s, &selector))
        .map(|(_, s)| s.clone())
        .collect();
    axum::Json(json!({
        "kind": "SecretList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": inner.version.to_string()},
        "items": items,
    }))
    .into_response()
}

/// A Secret watch's namespace and label selector, carried through the
/// watch as one string (`namespace\0selector`).
struct SecretSelector {
    namespace: String,
    labels: String,
}

impl SecretSelector {
    fn encode(&self) -> String {
        format!("{}\0{}", self.namespace, self.labels)
    }
}

/// Whether a changed object passes a watch's selector: a pod's labels, or
/// a Secret's namespace and labels.
fn watch_matches(resource: Resource, object: &Value, selector: &str) -> bool {
    match resource {
        Resource::Pods => matches(object, selector),
        Resource::Secrets => {
            let (namespace, labels) = selector.split_once('\0').unwrap_or(("", selector));
            object["metadata"]["namespace"] == namespace && matches(object, labels)
        }
    }
}

async fn get_pod(
    State(state): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    let inner = lock(&state);
    if let Some(r) = wrong_namespace(&inner, &ns) {
        return r;
    }
    match inner.pods.get(&name) {
        Some(p) => axum::Json(p.clone()).into_response(),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("pods \"{name}\" not found"),
        ),
    }
}

/// One watch of `resource`: the changes after `from` that match
/// `selector`, then each new one, as JSON lines, until `timeout`.
fn watch(
    state: Shared,
    resource: Resource,
    selector: String,
    from: u64,
    timeout: Duration,
) -> Response {
    let changed = lock(&state).changed.subscribe();
    let deadline = tokio::time::Instant::now() + timeout;
    let stream = futures::stream::unfold((Some(from), changed), move |(last, mut changed)| {
        let state = state.clone();
        let selector = selector.clone();
        async move {
            let mut last = last?;
            loop {
                changed.borrow_and_update();
                let lines = {
                    let inner = lock(&state);
                    let (changes, expired) = inner.history(resource);
                    if last < expired {
                        let oldest = expired + 1;
                        let gone = json!({"type": "ERROR", "object": status_json(
                                StatusCode::GONE, "Expired",
                                &format!("too old resource version: {last} ({oldest})"))});
                        // The watch ends after the error, as the API server's.
                        let line = Bytes::from(format!("{gone}\n"));
                        return Some((Ok::<_, Infallible>(line), (None, changed)));
                    }
                    let mut lines = String::new();
                    let from = last;
                    for (version, kind, object) in changes.iter().filter(|c| c.0 > from) {
                        last = *version;
                        if watch_matches(resource, object, &selector) {
                            lines.push_str(&json!({"type": kind, "object": object}).to_string());
                            lines.push('\n');
                        }
                    }
                    lines
                };
                if !lines.is_empty() {
                    return Some((Ok(Bytes::from(lines)), (Some(last), changed)));
                }
                tokio::select! {
                    r = changed.changed() => if r.is_err() { return None },
                    () = tokio::time::sleep_until(deadline) => return None,
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(axum::http::header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|e| {
            status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                &e.to_string(),
            )
        })
}

/// Removes `name` and adds its replacement; a replacement Ready after a
/// delay is made Ready by a task on `state`.
fn remove_and_replace(state: &Shared, inner: &mut Inner, name: &str) -> Option<Value> {
    let mut removed = inner.pods.remove(name)?;
    inner.pod_changed("DELETED", &mut removed);
    let replacement = inner.replacement;
    if replacement == Replacement::None {
        return Some(removed);
    }
    inner.replaced += 1;
    let mut pod = removed.clone();
    let new_name = format!("{name}-r{}", inner.replaced);
    pod["metadata"]["name"] = json!(new_name);
    pod["metadata"]["creationTimestamp"] = json!(chrono_like_now());
    match replacement {
        Replacement::Ready => set_ready(&mut pod, true),
        Replacement::ReadyAfter(delay) => {
            set_ready(&mut pod, false);
            let state = state.clone();
            let new_name = new_name.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let mut inner = lock(&state);
                if let Some(mut p) = inner.pods.remove(&new_name) {
                    set_ready(&mut p, true);
                    inner.pod_changed("MODIFIED", &mut p);
                    inner.pods.insert(new_name, p);
                }
            });
        }
        Replacement::NeverReady | Replacement::None => set_ready(&mut pod, false),
    }
    inner.pod_changed("ADDED", &mut pod);
    inner.pods.insert(new_name, pod);
    Some(removed)
}

/// Now in RFC 3339 from the system clock (object timestamps are wall time).
fn chrono_like_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = secs / 86400;
    let rem = secs % 86400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-from-civil inverse.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

async fn evict_pod(
    State(state): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let mut inner = lock(&state);
    if let Some(r) = wrong_namespace(&inner, &ns) {
        return r;
    }
    let eviction: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let kind_ok = eviction["kind"].is_null() || eviction["kind"] == "Eviction";
    if !kind_ok || eviction["metadata"]["name"] != name.as_str() {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "body must be a policy/v1 Eviction naming the pod",
        );
    }
    if !inner.pods.contains_key(&name) {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("pods \"{name}\" not found"),
        );
    }
    if let Some(allowed) = inner.pdb_disruptions_allowed.as_mut() {
        if *allowed == 0 {
            inner.refused_evictions.push(name);
            return status(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "Cannot evict pod as it would violate the pod's disruption budget.",
            );
        }
        *allowed -= 1;
    }
    remove_and_replace(&state, &mut inner, &name);
    inner.evictions.push(name);
    (
        StatusCode::CREATED,
        axum::Json(json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})),
    )
        .into_response()
}

async fn delete_pod(
    State(state): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let mut inner = lock(&state);
    if let Some(r) = wrong_namespace(&inner, &ns) {
        return r;
    }
    let options: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match remove_and_replace(&state, &mut inner, &name) {
        Some(pod) => {
            inner
                .deletions
                .push((name, options["gracePeriodSeconds"].as_u64()));
            axum::Json(pod).into_response()
        }
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("pods \"{name}\" not found"),
        ),
    }
}

async fn get_deployment(
    State(state): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    let inner = lock(&state);
    if let Some(r) = wrong_namespace(&inner, &ns) {
        return r;
    }
    match &inner.deployment {
        Some(d) if d["metadata"]["name"] == name.as_str() => axum::Json(d.clone()).into_response(),
        _ => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("deployments.apps \"{name}\" not found"),
        ),
    }
}

fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

async fn patch_deployment(
    State(state): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let mut inner = lock(&state);
    if let Some(r) = wrong_namespace(&inner, &ns) {
        return r;
    }
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type != "application/merge-patch+json" {
        return status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            &format!("the body of the request was in an unknown format: {content_type}"),
        );
    }
    let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "invalid JSON");
    };
    if let Some(other) = inner.before_next_patch.take() {
        inner.version += 1;
        let rv = inner.version.to_string();
        if let Some(d) = inner.deployment.as_mut() {
            merge(d, &other);
            d["metadata"]["resourceVersion"] = json!(rv);
        }
    }
    let current_rv = match &inner.deployment {
        Some(d) if d["metadata"]["name"] == name.as_str() => d["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        _ => {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("deployments.apps \"{name}\" not found"),
            );
        }
    };
    if let Some(rv) = patch["metadata"]["resourceVersion"].as_str()
        && rv != current_rv
    {
        inner.conflicts += 1;
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on deployments.apps \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        );
    }
    inner.version += 1;
    let rv = inner.version.to_string();
    let Some(d) = inner.deployment.as_mut() else {
        return status(StatusCode::NOT_FOUND, "NotFound", "gone");
    };
    merge(d, &patch);
    d["metadata"]["resourceVersion"] = json!(rv);
    axum::Json(d.clone()).into_response()
}

async fn get_hpa(
    State(state): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    let inner = lock(&state);
    if let Some(r) = wrong_namespace(&inner, &ns) {
        return r;
    }
    match &inner.hpa {
        Some(h) if h["metadata"]["name"] == name.as_str() => axum::Json(h.clone()).into_response(),
        _ => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("horizontalpodautoscalers.autoscaling \"{name}\" not found"),
        ),
    }
}

async fn create_event(
    State(state): State<Shared>,
    Path(ns): Path<String>,
    body: Bytes,
) -> Response {
    let mut inner = lock(&state);
    if let Some(r) = wrong_namespace(&inner, &ns) {
        return r;
    }
    let Ok(event) = serde_json::from_slice::<Value>(&body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "invalid JSON");
    };
    if event["kind"] != "Event" || event["involvedObject"]["name"].as_str().is_none() {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "not an Event with an involvedObject",
        );
    }
    inner.events.push(event.clone());
    (StatusCode::CREATED, axum::Json(event)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_watch_streams_changes_then_ends_at_its_timeout() {
        let kube = FakeKube::start("ns").await;
        kube.put_pod(pod_json(
            "a",
            &[("app", "c")],
            true,
            "2026-01-01T00:00:00Z",
            "1",
        ));
        let list: Value = reqwest::get(format!(
            "{}/api/v1/namespaces/ns/pods?labelSelector=app%3Dc",
            kube.url()
        ))
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
        let rv = list["metadata"]["resourceVersion"]
            .as_str()
            .expect("rv")
            .to_owned();
        let url = format!(
            "{}/api/v1/namespaces/ns/pods?watch=true&timeoutSeconds=1&labelSelector=app%3Dc&resourceVersion={rv}",
            kube.url()
        );
        let watch = tokio::spawn(async move {
            reqwest::get(url)
                .await
                .expect("watch")
                .text()
                .await
                .expect("body")
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        kube.update_pod("a", |p| set_ready(p, false));
        kube.put_pod(pod_json(
            "other",
            &[("app", "x")],
            true,
            "2026-01-01T00:00:00Z",
            "1",
        ));
        let body = tokio::time::timeout(Duration::from_secs(5), watch)
            .await
            .expect("ends at its timeout")
            .expect("joins");
        let events: Vec<Value> = body
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        assert_eq!(events.len(), 1, "{body}");
        assert_eq!(events[0]["type"], "MODIFIED");
        assert_eq!(events[0]["object"]["metadata"]["name"], "a");
        assert_eq!(kube.pod_watches(), 1);
        assert_eq!(kube.pod_lists(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_ends_at_its_timeout_in_paused_time() {
        let kube = FakeKube::start("ns").await;
        let url = format!(
            "{}/api/v1/namespaces/ns/pods?watch=true&timeoutSeconds=290&resourceVersion=1",
            kube.url()
        );
        let started = tokio::time::Instant::now();
        let body = tokio::time::timeout(Duration::from_secs(600), async {
            reqwest::get(url)
                .await
                .expect("watch")
                .text()
                .await
                .expect("body")
        })
        .await
        .expect("ends at its timeout");
        assert_eq!(body, "");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(290) && waited < Duration::from_secs(291),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn secrets_are_listed_and_watched_per_namespace() {
        let kube = FakeKube::start("ns").await;
        let sel = [("alert-history.io/target", "true")];
        kube.put_secret(
            "ns",
            "a",
            &sel,
            &[("format", "slack"), ("url", "https://x")],
        );
        kube.put_secret("other", "b", &sel, &[("format", "slack")]);
        kube.put_secret("ns", "unlabelled", &[], &[("format", "slack")]);
        let list: Value = reqwest::get(format!(
            "{}/api/v1/namespaces/ns/secrets?labelSelector=alert-history.io%2Ftarget%3Dtrue",
            kube.url()
        ))
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
        assert_eq!(list["kind"], "SecretList");
        let items = list["items"].as_array().expect("items");
        assert_eq!(items.len(), 1, "{list}");
        assert_eq!(items[0]["data"]["format"], "c2xhY2s=");
        let rv = list["metadata"]["resourceVersion"]
            .as_str()
            .expect("rv")
            .to_owned();
        let url = format!(
            "{}/api/v1/namespaces/ns/secrets?watch=true&timeoutSeconds=1&labelSelector=alert-history.io%2Ftarget%3Dtrue&resourceVersion={rv}",
            kube.url()
        );
        let watch = tokio::spawn(async move {
            reqwest::get(url)
                .await
                .expect("watch")
                .text()
                .await
                .expect("body")
        });
        kube.put_secret("ns", "a", &sel, &[("format", "pagerduty")]);
        kube.put_secret("other", "b", &sel, &[("format", "rootly")]);
        assert!(kube.delete_secret("ns", "a"));
        assert!(!kube.delete_secret("ns", "a"));
        let body = tokio::time::timeout(Duration::from_secs(5), watch)
            .await
            .expect("ends at its timeout")
            .expect("joins");
        let events: Vec<Value> = body
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        let kinds: Vec<&str> = events
            .iter()
            .map(|e| e["type"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(kinds, ["MODIFIED", "DELETED"], "{body}");
        assert_eq!(events[0]["object"]["data"]["format"], base64(b"pagerduty"));
        assert_eq!((kube.secret_lists(), kube.secret_watches()), (1, 1));
        assert_eq!(kube.pod_watches(), 0);

        // A compacted change: a watch from before it gets 410 Expired.
        kube.put_secret_compacted("ns", "c", &sel, &[("format", "slack")]);
        let body = reqwest::get(format!(
            "{}/api/v1/namespaces/ns/secrets?watch=true&timeoutSeconds=1&resourceVersion={rv}",
            kube.url()
        ))
        .await
        .expect("watch")
        .text()
        .await
        .expect("body");
        let event: Value = serde_json::from_str(body.trim()).expect("one line");
        assert_eq!(event["type"], "ERROR");
        assert_eq!(event["object"]["code"], 410);
    }

    #[test]
    fn base64_as_kubernetes_serves_it() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"https://x/y?z"), "aHR0cHM6Ly94L3k/eg==");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        assert!(chrono_like_now().ends_with('Z'));
    }

    #[test]
    fn selectors_and_merge() {
        let p = pod_json(
            "a",
            &[("app", "c"), ("tier", "x")],
            true,
            "2026-01-01T00:00:00Z",
            "1",
        );
        assert!(matches(&p, "app=c"));
        assert!(matches(&p, "app=c,tier=x"));
        assert!(matches(&p, "app==c"));
        assert!(!matches(&p, "app=d"));
        let mut d = json!({"metadata": {"annotations": {"a": "1", "b": "2"}}});
        merge(
            &mut d,
            &json!({"metadata": {"annotations": {"a": null, "c": "3"}}}),
        );
        assert_eq!(
            d,
            json!({"metadata": {"annotations": {"b": "2", "c": "3"}}})
        );
    }
}
