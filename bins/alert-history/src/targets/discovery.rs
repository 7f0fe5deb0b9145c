//! Kubernetes discovery: list the target Secrets, then watch from the
//! list's resourceVersion; re-list on 410 `Expired` and after any error,
//! with backoff (0.5 s doubling to 60 s, tokio time); a watch that ends at
//! its timeout is resumed from the last resourceVersion seen.
//! `POST /publishing/targets/refresh` asks this task for a re-list, so one
//! task alone writes the Secrets' state (a refresh's list cannot overwrite
//! a newer watch event).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use keel_core::ConfigError;
use keel_telemetry::CancellationToken;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::sync::{mpsc, oneshot};

use super::Targets;
use super::model::{Target, TargetSource};

/// The longest watch asked for: below `kube`'s 295 s read timeout.
const WATCH_TIMEOUT_SECS: u32 = 290;
/// First wait after a failure.
const BACKOFF_START: Duration = Duration::from_millis(500);
/// Longest wait after failures.
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// The longest a list, or the start of a watch, may take: an API server
/// that accepts the connection and never answers is a failure, not a hang.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

type RelistRequest = oneshot::Sender<Result<(), String>>;

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

/// A client of the cluster: `kubeconfig` if given, else the in-cluster
/// service account when `KUBERNETES_SERVICE_HOST` is set, else
/// `~/.kube/config`. Nothing is contacted yet.
///
/// # Errors
/// A [`ConfigError`] naming `KUBECONFIG` or `TARGETS_FROM_KUBERNETES` when
/// no usable configuration is found.
pub(super) async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, ConfigError> {
    let mut config = if let Some(path) = kubeconfig {
        let file = Kubeconfig::read_from(path).map_err(|e| {
            ConfigError::new("KUBECONFIG", format!("{}: {}", path.display(), chain(&e)))
        })?;
        kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
            .await
            .map_err(|e| ConfigError::new("KUBECONFIG", chain(&e)))?
    } else if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        kube::Config::incluster().map_err(|e| {
            ConfigError::new(
                "TARGETS_FROM_KUBERNETES",
                format!("in-cluster configuration: {}", chain(&e)),
            )
        })?
    } else {
        kube::Config::from_kubeconfig(&KubeConfigOptions::default())
            .await
            .map_err(|e| {
                ConfigError::new(
                    "TARGETS_FROM_KUBERNETES",
                    format!(
                        "is true but neither KUBECONFIG, the in-cluster service account nor ~/.kube/config is usable: {}",
                        chain(&e)
                    ),
                )
            })?
    };
    config.connect_timeout = Some(Duration::from_secs(5));
    // Backoff is ours (one loop, visible in the discovery status).
    config.default_retry = false;
    // rustls picks its process-wide crypto provider by itself only when one
    // provider is compiled in; a workspace build unifies ring and aws-lc-rs,
    // and kube's TLS setup would then panic. Choose ring, as pod-rebalancer
    // does; a provider installed already stays.
    let _ = rustls::crypto::ring::default_provider().install_default();
    kube::Client::try_from(config).map_err(|e| ConfigError::new("KUBECONFIG", chain(&e)))
}

/// Reads one Secret: its data keys (UTF-8), the target named by its `name`
/// key or else after the Secret.
pub(super) fn secret_target(namespace: &str, secret: &Secret) -> Result<Target, String> {
    let secret_name = secret.metadata.name.clone().unwrap_or_default();
    let mut keys = BTreeMap::new();
    for (key, value) in secret.data.iter().flatten() {
        let text = String::from_utf8(value.0.clone())
            .map_err(|_| format!("key `{key}` is not UTF-8 text"))?;
        keys.insert(key.clone(), text);
    }
    let name = keys
        .get("name")
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| secret_name.clone());
    Target::from_keys(
        &name,
        &keys,
        TargetSource::Kubernetes {
            namespace: namespace.to_owned(),
            secret: secret_name,
        },
    )
}

struct Discovery {
    targets: Targets,
    api: Api<Secret>,
    namespace: String,
    selector: String,
    cancel: CancellationToken,
    relist: mpsc::Receiver<RelistRequest>,
    /// Refresh requests waiting for the next list.
    waiting: Vec<RelistRequest>,
    backoff: Duration,
}

/// Why the watch loop returned.
enum Next {
    /// List again now.
    Relist,
    /// Wait out the backoff, then list again.
    Failed(String),
    /// Shutting down.
    Stop,
}

/// Lists and watches the Secrets until `cancel`.
pub(super) async fn run(
    targets: Targets,
    client: kube::Client,
    namespace: String,
    selector: String,
    relist: mpsc::Receiver<RelistRequest>,
    cancel: CancellationToken,
) {
    let api = Api::namespaced(client, &namespace);
    let mut d = Discovery {
        targets,
        api,
        namespace,
        selector,
        cancel,
        relist,
        waiting: Vec::new(),
        backoff: BACKOFF_START,
    };
    loop {
        let next = match d.list().await {
            Ok(version) => {
                d.backoff = BACKOFF_START;
                d.watch(version).await
            }
            Err(e) => Next::Failed(e),
        };
        match next {
            Next::Stop => return,
            Next::Relist => {}
            Next::Failed(error) => {
                tracing::warn!(
                    namespace = %d.namespace,
                    error = %error,
                    retry_in_ms = d.backoff.as_millis() as u64,
                    "target discovery failing"
                );
                d.targets.set_discovery(|s| {
                    s.status = "failing";
                    s.error = Some(error.clone());
                });
                for w in d.waiting.drain(..) {
                    let _ = w.send(Err(error.clone()));
                }
                if !d.pause().await {
                    return;
                }
                d.backoff = (d.backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

impl Discovery {
    /// Waits out the backoff; a refresh request cuts it short. `false`
    /// when shutting down.
    async fn pause(&mut self) -> bool {
        tokio::select! {
            () = self.cancel.cancelled() => false,
            () = tokio::time::sleep(self.backoff) => true,
            request = self.relist.recv() => {
                if let Some(r) = request {
                    self.waiting.push(r);
                }
                true
            }
        }
    }

    /// Lists the Secrets and replaces every entry; returns the list's
    /// resourceVersion.
    async fn list(&mut self) -> Result<String, String> {
        let params = ListParams::default().labels(&self.selector);
        let list = tokio::select! {
            () = self.cancel.cancelled() => return Err("shutting down".to_owned()),
            r = tokio::time::timeout(CALL_TIMEOUT, self.api.list(&params)) => match r {
                Err(_) => return Err(format!("listing Secrets: no answer within {} s", CALL_TIMEOUT.as_secs())),
                Ok(r) => r.map_err(|e| format!("listing Secrets: {}", chain(&e)))?,
            },
        };
        let mut secrets = BTreeMap::new();
        for secret in &list.items {
            let name = secret.metadata.name.clone().unwrap_or_default();
            let entry = secret_target(&self.namespace, secret);
            if entry.is_err() {
                self.targets.count_invalid();
            }
            secrets.insert(name, entry);
        }
        let count = secrets.len();
        self.targets.replace_secrets(secrets);
        self.targets.set_discovery(|s| {
            s.status = "ok";
            s.error = None;
            s.last_sync_ms = Some(chrono::Utc::now().timestamp_millis());
        });
        tracing::debug!(namespace = %self.namespace, secrets = count, "target Secrets listed");
        for w in self.waiting.drain(..) {
            let _ = w.send(Ok(()));
        }
        Ok(list.metadata.resource_version.unwrap_or_default())
    }

    /// Watches from `version` until an error, a 410, a refresh request or
    /// the shutdown; a watch that ends at its timeout is resumed.
    async fn watch(&mut self, mut version: String) -> Next {
        loop {
            let params = WatchParams::default()
                .labels(&self.selector)
                .timeout(WATCH_TIMEOUT_SECS);
            let started = tokio::time::Instant::now();
            let stream = tokio::select! {
                () = self.cancel.cancelled() => return Next::Stop,
                r = tokio::time::timeout(CALL_TIMEOUT, self.api.watch(&params, &version)) => match r {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return Next::Failed(format!("watching Secrets: {}", chain(&e))),
                    Err(_) => return Next::Failed(format!(
                        "watching Secrets: no answer within {} s",
                        CALL_TIMEOUT.as_secs()
                    )),
                },
            };
            let mut stream = std::pin::pin!(stream);
            loop {
                let event = tokio::select! {
                    () = self.cancel.cancelled() => return Next::Stop,
                    request = self.relist.recv() => {
                        if let Some(r) = request {
                            self.waiting.push(r);
                        }
                        return Next::Relist;
                    }
                    e = stream.next() => e,
                };
                match event {
                    None => break,
                    Some(Err(e)) => {
                        return Next::Failed(format!("watching Secrets: {}", chain(&e)));
                    }
                    Some(Ok(WatchEvent::Added(s) | WatchEvent::Modified(s))) => {
                        version = s.metadata.resource_version.clone().unwrap_or(version);
                        let name = s.metadata.name.clone().unwrap_or_default();
                        let entry = secret_target(&self.namespace, &s);
                        if entry.is_err() {
                            self.targets.count_invalid();
                        }
                        tracing::debug!(secret = %name, valid = entry.is_ok(), "target Secret changed");
                        self.targets.put_secret(name, entry);
                    }
                    Some(Ok(WatchEvent::Deleted(s))) => {
                        version = s.metadata.resource_version.clone().unwrap_or(version);
                        let name = s.metadata.name.clone().unwrap_or_default();
                        tracing::debug!(secret = %name, "target Secret removed");
                        self.targets.remove_secret(&name);
                    }
                    Some(Ok(WatchEvent::Bookmark(b))) => {
                        version = b.metadata.resource_version;
                    }
                    Some(Ok(WatchEvent::Error(status))) if status.code == 410 => {
                        tracing::debug!(message = %status.message, "target Secret watch expired: list again");
                        return Next::Relist;
                    }
                    Some(Ok(WatchEvent::Error(status))) => {
                        return Next::Failed(format!(
                            "watching Secrets: HTTP {}: {}",
                            status.code, status.message
                        ));
                    }
                }
            }
            // A watch that ends at once (a proxy closing it) must not turn
            // into a tight loop.
            let floor = started + Duration::from_secs(1);
            tokio::select! {
                () = self.cancel.cancelled() => return Next::Stop,
                () = tokio::time::sleep_until(floor) => {}
            }
        }
    }
}
