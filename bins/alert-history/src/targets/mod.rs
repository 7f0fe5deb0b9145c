//! Publishing targets (issue 19): from a static file (`TARGETS_FILE`) and
//! from Kubernetes Secrets labelled `alert-history.io/target=true`
//! (`TARGETS_FROM_KUBERNETES=true`), watched so that a Secret added,
//! changed or removed takes effect without a restart.
//!
//! * [`Target`]: one destination (Slack, PagerDuty, Rootly or a webhook),
//!   its static filters ([`Target::wants`], [`Target::confident_enough`])
//!   and its keel-notify sink ([`Target::sink`]). Its secret never appears
//!   in `Debug`, logs or JSON, and its URL is shown redacted.
//! * [`Targets`]: the set in effect, an `Arc` snapshot behind a
//!   `parking_lot` read-write lock (a reader holds it only to clone the
//!   `Arc`; arc-swap is not a workspace dependency), read by every request
//!   and the publisher; [`Targets::subscribe`] says when it changes.
//! * A file entry that is invalid fails the start naming `TARGETS_FILE` and
//!   the entry; a Secret that is invalid is skipped with a warning, counted
//!   and listed under `invalid` by `GET /publishing/targets`, never fatal.
//!   Names are unique: a file target wins over a Secret of the same name,
//!   and of two Secrets the one whose Secret name sorts first wins (the
//!   other is reported).
//! * Discovery failing (the API server down at start, or later) never stops
//!   the service: the targets last seen stay in effect, discovery retries
//!   with backoff, and `GET /publishing/targets` says `discovery.status:
//!   "failing"` with the error. Readiness is not turned red for it: an
//!   unready replica would stop receiving Alertmanager's webhooks, and
//!   storing alerts does not depend on the Kubernetes API.

mod discovery;
mod file;
mod model;
mod routes;
mod sink;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keel_core::ConfigError;
use keel_telemetry::Shutdown;
use parking_lot::{Mutex, RwLock};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

pub use model::{KEYS, Target, TargetFormat, TargetSource, redact_url};
pub use routes::routes;
pub use sink::TargetSink;

/// The label selector of target Secrets unless `TARGETS_LABEL_SELECTOR`
/// says otherwise.
pub const DEFAULT_LABEL_SELECTOR: &str = "alert-history.io/target=true";
/// Where a pod finds its own namespace.
pub const SERVICE_ACCOUNT_NAMESPACE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// `TARGETS_FILE`, `TARGETS_FROM_KUBERNETES`, `TARGETS_NAMESPACE`,
/// `TARGETS_LABEL_SELECTOR`, `KUBECONFIG`.
#[derive(Debug, Clone, clap::Args)]
pub struct TargetArgs {
    /// A YAML list of publishing targets (`- {name: oncall, format:
    /// pagerduty, api-key: ...}`), read at start and at `POST
    /// /publishing/targets/refresh`. An invalid entry fails the start.
    #[arg(long, env = "TARGETS_FILE")]
    pub targets_file: Option<PathBuf>,

    /// Discover targets from Kubernetes Secrets (list and watch in
    /// `TARGETS_NAMESPACE`, selected by `TARGETS_LABEL_SELECTOR`).
    #[arg(long, env = "TARGETS_FROM_KUBERNETES")]
    pub targets_from_kubernetes: bool,

    /// The namespace of the target Secrets (default: the pod's own, read
    /// from the service account, else `default`).
    #[arg(long, env = "TARGETS_NAMESPACE")]
    pub targets_namespace: Option<String>,

    /// The label selector of the target Secrets.
    #[arg(long, env = "TARGETS_LABEL_SELECTOR", default_value = DEFAULT_LABEL_SELECTOR)]
    pub targets_label_selector: String,

    /// Kubeconfig for the discovery (unset: the in-cluster service account
    /// when `KUBERNETES_SERVICE_HOST` is set, else `~/.kube/config`).
    #[arg(long = "targets-kubeconfig", env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
}

impl Default for TargetArgs {
    fn default() -> Self {
        TargetArgs {
            targets_file: None,
            targets_from_kubernetes: false,
            targets_namespace: None,
            targets_label_selector: DEFAULT_LABEL_SELECTOR.to_owned(),
            kubeconfig: None,
        }
    }
}

impl TargetArgs {
    /// Checks the settings without side effects: the targets file is read
    /// and every entry parsed (nothing is contacted).
    ///
    /// # Errors
    /// The first invalid variable; for the file, the entry.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(path) = &self.targets_file {
            file::load(path)?;
        }
        if let Some(ns) = &self.targets_namespace
            && !is_dns_label(ns)
        {
            return Err(ConfigError::new(
                "TARGETS_NAMESPACE",
                "must be a namespace name (lowercase letters, digits and '-', at most 63)",
            ));
        }
        let selector = self.targets_label_selector.trim();
        if selector.is_empty() || selector.split(',').any(|t| t.trim().is_empty()) {
            return Err(ConfigError::new(
                "TARGETS_LABEL_SELECTOR",
                "must be a label selector such as alert-history.io/target=true",
            ));
        }
        if self.targets_from_kubernetes
            && let Some(path) = &self.kubeconfig
            && !path.is_file()
        {
            return Err(ConfigError::new(
                "KUBECONFIG",
                format!("{} is not a readable file", path.display()),
            ));
        }
        Ok(())
    }

    /// `TARGETS_NAMESPACE`, else the pod's own namespace, else `default`.
    pub fn namespace(&self) -> String {
        if let Some(ns) = &self.targets_namespace {
            return ns.clone();
        }
        std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE)
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| is_dns_label(s))
            .unwrap_or_else(|| "default".to_owned())
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A definition that is not in effect, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Invalid {
    /// `secret <namespace>/<name>` or `file`.
    pub source: String,
    /// Why (never the secret itself).
    pub reason: String,
}

/// The state of Kubernetes discovery.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiscoveryStatus {
    /// `off`, `starting`, `ok` or `failing`.
    pub status: &'static str,
    /// The namespace watched.
    pub namespace: Option<String>,
    /// The label selector.
    pub label_selector: Option<String>,
    /// The last error, while failing.
    pub error: Option<String>,
    /// Last successful list, epoch ms.
    pub last_sync_ms: Option<i64>,
    /// Secrets seen by the last list and the watch since.
    pub secrets: usize,
}

/// What [`Targets::refresh`] found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RefreshReport {
    /// Targets in effect after the refresh.
    pub targets: usize,
    /// From the file.
    pub from_file: usize,
    /// From Secrets.
    pub from_kubernetes: usize,
    /// Definitions not in effect.
    pub invalid: Vec<Invalid>,
    /// Whether the set in effect changed.
    pub changed: bool,
    /// The re-list of Secrets failed (the previous Secrets stay in effect).
    pub kubernetes_error: Option<String>,
}

/// The set of targets in effect; cloning shares it. `Default`: no targets.
#[derive(Clone)]
pub struct Targets {
    shared: Arc<Shared>,
}

struct Shared {
    view: RwLock<Arc<[Arc<Target>]>>,
    state: Mutex<State>,
    changes: watch::Sender<u64>,
    file: Option<PathBuf>,
    relist: Option<mpsc::Sender<oneshot::Sender<Result<(), String>>>>,
    metrics: TargetMetrics,
}

#[derive(Default)]
struct State {
    file: Vec<Target>,
    /// Secret name → its target, or why it is invalid.
    secrets: BTreeMap<String, Result<Target, String>>,
    namespace: Option<String>,
    invalid: Vec<Invalid>,
    discovery: Option<DiscoveryStatus>,
}

#[derive(Debug, Clone, Default)]
struct TargetMetrics {
    active: Gauge,
    invalid: Counter,
    discovery_failing: Gauge,
}

impl Default for Targets {
    fn default() -> Self {
        Targets::build(Vec::new(), None, None, None)
    }
}

impl std::fmt::Debug for Targets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Targets")
            .field("targets", &self.current())
            .finish_non_exhaustive()
    }
}

impl Targets {
    fn build(
        file_targets: Vec<Target>,
        file: Option<PathBuf>,
        relist: Option<mpsc::Sender<oneshot::Sender<Result<(), String>>>>,
        discovery: Option<DiscoveryStatus>,
    ) -> Targets {
        let namespace = discovery.as_ref().and_then(|d| d.namespace.clone());
        let targets = Targets {
            shared: Arc::new(Shared {
                view: RwLock::new(Arc::from(Vec::new())),
                state: Mutex::new(State {
                    file: file_targets,
                    namespace,
                    discovery,
                    ..State::default()
                }),
                changes: watch::Sender::new(0),
                file,
                relist,
                metrics: TargetMetrics::default(),
            }),
        };
        targets.publish();
        targets
    }

    /// A fixed set of targets (tests; the publisher's tests). Names are
    /// expected unique; a later duplicate is reported invalid.
    pub fn from_list(targets: Vec<Target>) -> Targets {
        let mut seen = HashSet::new();
        let (keep, dupes): (Vec<Target>, Vec<Target>) = targets
            .into_iter()
            .partition(|t| seen.insert(t.name.clone()));
        let built = Targets::build(keep, None, None, None);
        if !dupes.is_empty() {
            let mut state = built.shared.state.lock();
            state.invalid.extend(dupes.into_iter().map(|t| Invalid {
                source: t.source.describe(),
                reason: format!("name `{}` is used by another target", t.name),
            }));
        }
        built
    }

    /// The targets of `args`: the file (validated: an invalid entry is an
    /// error naming `TARGETS_FILE`) and, with `TARGETS_FROM_KUBERNETES`,
    /// Kubernetes discovery spawned under `shutdown` (it stops when the
    /// shutdown is triggered). An API server that cannot be reached is not
    /// an error: discovery keeps trying and reports itself failing.
    ///
    /// # Errors
    /// [`crate::Error::Config`] for an invalid file or a kubeconfig that
    /// cannot be read.
    pub async fn from_config(
        args: &TargetArgs,
        shutdown: &Shutdown,
    ) -> Result<Targets, crate::Error> {
        let file_targets = match &args.targets_file {
            Some(path) => file::load(path)?,
            None => Vec::new(),
        };
        if !args.targets_from_kubernetes {
            return Ok(Targets::build(
                file_targets,
                args.targets_file.clone(),
                None,
                None,
            ));
        }
        let namespace = args.namespace();
        let selector = args.targets_label_selector.trim().to_owned();
        let client = discovery::client(args.kubeconfig.as_deref()).await?;
        let (relist_tx, relist_rx) = mpsc::channel(8);
        let targets = Targets::build(
            file_targets,
            args.targets_file.clone(),
            Some(relist_tx),
            Some(DiscoveryStatus {
                status: "starting",
                namespace: Some(namespace.clone()),
                label_selector: Some(selector.clone()),
                error: None,
                last_sync_ms: None,
                secrets: 0,
            }),
        );
        targets.shared.metrics.discovery_failing.set(0);
        shutdown.spawn(discovery::run(
            targets.clone(),
            client,
            namespace,
            selector,
            relist_rx,
            shutdown.token(),
        ));
        Ok(targets)
    }

    /// The targets in effect (a snapshot; cheap to take).
    pub fn current(&self) -> Arc<[Arc<Target>]> {
        self.shared.view.read().clone()
    }

    /// The target in effect named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Target>> {
        self.current().iter().find(|t| t.name == name).cloned()
    }

    /// A receiver whose value is bumped on every change of the set in
    /// effect.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    /// Definitions not in effect (invalid Secrets, name clashes).
    pub fn invalid(&self) -> Vec<Invalid> {
        self.shared.state.lock().invalid.clone()
    }

    /// Kubernetes discovery's state (`None`: discovery is off).
    pub fn discovery(&self) -> Option<DiscoveryStatus> {
        self.shared.state.lock().discovery.clone()
    }

    /// Registers `publishing_targets` (gauge), `publishing_targets_invalid`
    /// (counter of invalid Secrets seen) and
    /// `publishing_targets_discovery_failing` (gauge, 0 or 1).
    pub fn register_metrics(&self, registry: &mut Registry) {
        let m = &self.shared.metrics;
        registry.register(
            "publishing_targets",
            "Publishing targets in effect",
            m.active.clone(),
        );
        registry.register(
            "publishing_targets_invalid",
            "Target Secrets skipped as invalid (each version seen)",
            m.invalid.clone(),
        );
        registry.register(
            "publishing_targets_discovery_failing",
            "1 while Kubernetes target discovery is failing",
            m.discovery_failing.clone(),
        );
    }

    /// Re-reads the file and re-lists the Secrets (waiting up to 30 s for
    /// the list). An invalid file is an error and leaves the file's
    /// previous targets in effect; a failed list is reported in
    /// [`RefreshReport::kubernetes_error`] and leaves the Secrets last seen
    /// in effect.
    ///
    /// # Errors
    /// [`crate::Error::Config`] naming `TARGETS_FILE` for an invalid file.
    pub async fn refresh(&self) -> Result<RefreshReport, crate::Error> {
        let before = self.current();
        if let Some(path) = &self.shared.file {
            let targets = file::load(path)?;
            self.shared.state.lock().file = targets;
            self.publish();
        }
        let mut kubernetes_error = None;
        if let Some(relist) = &self.shared.relist {
            let (tx, rx) = oneshot::channel();
            let answer = match relist.send(tx).await {
                Err(_) => Err("discovery has stopped".to_owned()),
                Ok(()) => match tokio::time::timeout(Duration::from_secs(30), rx).await {
                    Err(_) => Err("no answer from the API server within 30 s".to_owned()),
                    Ok(Err(_)) => Err("discovery has stopped".to_owned()),
                    Ok(Ok(r)) => r,
                },
            };
            kubernetes_error = answer.err();
        }
        let after = self.current();
        let state = self.shared.state.lock();
        let from_file = after
            .iter()
            .filter(|t| t.source == TargetSource::File)
            .count();
        Ok(RefreshReport {
            targets: after.len(),
            from_file,
            from_kubernetes: after.len() - from_file,
            invalid: state.invalid.clone(),
            changed: !same(&before, &after),
            kubernetes_error,
        })
    }

    // ------------------------------------------------------------ updates

    /// Replaces every Secret's entry (after a list).
    fn replace_secrets(&self, secrets: BTreeMap<String, Result<Target, String>>) {
        self.shared.state.lock().secrets = secrets;
        self.publish();
    }

    /// Adds or replaces one Secret's entry.
    fn put_secret(&self, name: String, entry: Result<Target, String>) {
        self.shared.state.lock().secrets.insert(name, entry);
        self.publish();
    }

    /// Removes one Secret's entry.
    fn remove_secret(&self, name: &str) {
        let removed = self.shared.state.lock().secrets.remove(name).is_some();
        if removed {
            self.publish();
        }
    }

    fn set_discovery(&self, change: impl FnOnce(&mut DiscoveryStatus)) {
        let mut state = self.shared.state.lock();
        let secrets = state.secrets.len();
        if let Some(d) = state.discovery.as_mut() {
            change(d);
            d.secrets = secrets;
            self.shared
                .metrics
                .discovery_failing
                .set(i64::from(d.status == "failing"));
        }
    }

    fn count_invalid(&self) {
        self.shared.metrics.invalid.inc();
    }

    /// Recomputes the set in effect from the file and the Secrets; bumps
    /// the change counter when it differs.
    fn publish(&self) {
        let mut state = self.shared.state.lock();
        let mut targets: Vec<Arc<Target>> = Vec::new();
        let mut names = HashSet::new();
        let mut invalid = Vec::new();
        for t in &state.file {
            names.insert(t.name.clone());
            targets.push(Arc::new(t.clone()));
        }
        let namespace = state.namespace.clone().unwrap_or_default();
        for (secret, entry) in &state.secrets {
            let source = format!("secret {namespace}/{secret}");
            match entry {
                Err(reason) => invalid.push(Invalid {
                    source,
                    reason: reason.clone(),
                }),
                Ok(t) if names.contains(&t.name) => invalid.push(Invalid {
                    source,
                    reason: format!(
                        "name `{}` is already used by {}; that one is in effect",
                        t.name,
                        targets
                            .iter()
                            .find(|o| o.name == t.name)
                            .map_or_else(|| "another target".to_owned(), |o| o.source.describe())
                    ),
                }),
                Ok(t) => {
                    names.insert(t.name.clone());
                    targets.push(Arc::new(t.clone()));
                }
            }
        }
        for i in invalid.iter().filter(|i| !state.invalid.contains(i)) {
            tracing::warn!(source = %i.source, reason = %i.reason, "publishing target not in effect");
        }
        state.invalid = invalid;
        let next: Arc<[Arc<Target>]> = Arc::from(targets);
        let mut view = self.shared.view.write();
        if !same(&view, &next) {
            tracing::info!(
                targets = next.len(),
                names = ?next.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
                "publishing targets changed"
            );
            self.shared.metrics.active.set(next.len() as i64);
            *view = next;
            self.shared.changes.send_modify(|v| *v += 1);
        }
    }
}

fn same(a: &[Arc<Target>], b: &[Arc<Target>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}
