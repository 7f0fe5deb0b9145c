//! One reconcile pass of one cluster: take the cluster's lock, read its
//! document, act on its phase, write the new status (a keel-tx transaction
//! committed through a fenced, conditional write to the state store) and
//! say when to come back.
//!
//! Provisioning (`Pending → Provisioning → Installing → Configuring →
//! Running`, and every repair, scale-up, upgrade and restart that goes
//! through it again) is a keel-tx saga of three steps, `instances`,
//! `install` and `ready`, each idempotent: the saga resumes after a crash,
//! and a controller that lost the journal runs it again without creating
//! anything twice (client tokens are in the state before any create). When
//! provisioning cannot complete, the `instances` step's compensation
//! terminates what was created if the spec says `onFailure: cleanup`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use chrono::Utc;
use keel::idempotency::{Fingerprint, Idempotency, IdempotencyKey, MemoryStore, StoredError};
use keel::retry::{Backoff, RetryPolicy};
use keel::tx::{BeginMode, Saga, SagaExecutor, SagaRegistry, SagaStatus, Step, TxError, TxManager};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::aws::AwsError;
use crate::cloud::{BatchOp, Cloud, CommandOutput, Launch, tags};
use crate::lock::{LockError, LockToken, Locks};
use crate::metrics::Metrics;
use crate::model::{ClusterResource, Condition, InstanceStatus, OnFailure, Phase};
use crate::store::{Expect, StateStore, StoreError, Stored};

/// What a pass failed with.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The lock was lost, or a write found newer state: this controller
    /// must not act further on the cluster now.
    #[error("fenced: {0}")]
    Fenced(String),
    /// An AWS call failed.
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// The state store failed.
    #[error(transparent)]
    Store(StoreError),
    /// The lock table failed.
    #[error(transparent)]
    Lock(LockError),
    /// The journal failed.
    #[error(transparent)]
    Tx(#[from] TxError),
    /// The pass ran past the reconcile timeout.
    #[error("reconcile pass exceeded {0:?}")]
    Timeout(Duration),
    /// Something the controller cannot continue with (a message for the
    /// status).
    #[error("{0}")]
    Other(String),
}

impl From<StoreError> for ReconcileError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict { name } => {
                ReconcileError::Fenced(format!("state of {name} changed under us"))
            }
            other => ReconcileError::Store(other),
        }
    }
}

impl From<LockError> for ReconcileError {
    fn from(e: LockError) -> Self {
        match e {
            LockError::Lost { resource } => ReconcileError::Fenced(format!("lock {resource} lost")),
            other => ReconcileError::Lock(other),
        }
    }
}

/// When to reconcile the cluster again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeue {
    /// After this long (a phase's steady-state requeue).
    After(Duration),
    /// Never: the cluster is gone.
    Done,
}

/// What a pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassOutcome {
    /// `ok`, `busy`.
    pub result: &'static str,
    /// When to come back.
    pub requeue: Requeue,
    /// The phase after the pass (`None`: deleted, absent or not known).
    pub phase: Option<Phase>,
    /// The document's version after the pass (what this controller read or
    /// wrote last), so the daemon does not take its own write for a change.
    pub etag: Option<String>,
}

/// goman's steady-state requeues per phase.
#[derive(Debug, Clone, Copy)]
pub struct Requeues {
    /// Pending (5 s).
    pub pending: Duration,
    /// Provisioning, Installing, Configuring, Updating, Stopping, Starting (10 s).
    pub provisioning: Duration,
    /// Running and Stopped (45 s).
    pub running: Duration,
    /// Deleting and Terminating (15 s).
    pub deleting: Duration,
    /// Failed (20 s).
    pub failed: Duration,
    /// Lock held elsewhere (5 s).
    pub busy: Duration,
}

impl Default for Requeues {
    fn default() -> Self {
        Requeues {
            pending: Duration::from_secs(5),
            provisioning: Duration::from_secs(10),
            running: Duration::from_secs(45),
            deleting: Duration::from_secs(15),
            failed: Duration::from_secs(20),
            busy: Duration::from_secs(5),
        }
    }
}

impl Requeues {
    /// The requeue after a successful pass that left the cluster in `phase`.
    pub fn for_phase(&self, phase: Phase) -> Duration {
        match phase {
            Phase::Pending => self.pending,
            Phase::Running | Phase::Stopped => self.running,
            Phase::Deleting | Phase::Terminating => self.deleting,
            Phase::Failed => self.failed,
            _ => self.provisioning,
        }
    }
}

/// Settings of the reconciler.
#[derive(Debug, Clone)]
pub struct ReconcileSettings {
    /// The profile (state prefix, lock resource, tags, parameter names).
    pub profile: String,
    /// This controller, in locks and audit records (host/pid).
    pub holder: String,
    /// The AMI of every node.
    pub image_id: String,
    /// The nodes' instance profile, if any.
    pub instance_profile: Option<String>,
    /// The nodes' subnet, if any.
    pub subnet_id: Option<String>,
    /// A node not Ready this long after launch is replaced (10 min).
    pub node_startup_timeout: Duration,
    /// How often the `ready` step checks the nodes (15 s).
    pub ready_poll: Duration,
    /// A pass's limit (10 min).
    pub reconcile_timeout: Duration,
    /// The per-phase requeues.
    pub requeues: Requeues,
    /// Replacement stops when more than this fraction of nodes is
    /// unhealthy at once (0.5).
    pub max_unhealthy_fraction: f64,
    /// Retries of a saga step (3, 2 s doubling).
    pub step_retry: RetryPolicy,
    /// How long the drain of a node may take (2 min).
    pub drain_timeout: Duration,
}

impl ReconcileSettings {
    /// Defaults for `profile` and `image_id`.
    pub fn new(profile: impl Into<String>, image_id: impl Into<String>) -> ReconcileSettings {
        ReconcileSettings {
            profile: profile.into(),
            holder: format!(
                "{}/{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into()),
                std::process::id()
            ),
            image_id: image_id.into(),
            instance_profile: None,
            subnet_id: None,
            node_startup_timeout: Duration::from_secs(600),
            ready_poll: Duration::from_secs(15),
            reconcile_timeout: Duration::from_secs(600),
            requeues: Requeues::default(),
            max_unhealthy_fraction: 0.5,
            step_retry: RetryPolicy::builder()
                .max_retries(3)
                .backoff(Backoff::exponential(Duration::from_secs(2), 2.0))
                .build()
                .expect("a valid step retry policy"),
            drain_timeout: Duration::from_secs(120),
        }
    }
}

/// The reconciler: shared by every pass. Cheap to clone.
#[derive(Clone)]
pub struct Reconciler {
    inner: Arc<Inner>,
}

struct Inner {
    store: StateStore,
    locks: Locks,
    cloud: Cloud,
    tx: TxManager,
    sagas: SagaExecutor,
    idem: Idempotency<MemoryStore>,
    settings: ReconcileSettings,
    metrics: Metrics,
    /// The sessions of passes in progress, by cluster name (saga steps find
    /// theirs here).
    sessions: Mutex<HashMap<String, Arc<Session>>>,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("store", &self.inner.store.describe())
            .finish_non_exhaustive()
    }
}

/// One pass's hold on one cluster: the lock and the version last read.
struct Session {
    name: String,
    lock: Mutex<LockToken>,
    etag: Mutex<String>,
    /// Cancelled when the lock is lost.
    lost: CancellationToken,
    /// The phase the pass found.
    first_phase: Mutex<Option<Phase>>,
    /// The journal's view (metadata and status) of the document last read
    /// or written.
    read: Mutex<Value>,
}

const SAGA_STEPS: [&str; 3] = ["instances", "install", "ready"];

type Slot = Arc<std::sync::OnceLock<std::sync::Weak<Inner>>>;

/// A saga step's error: permanent ones fail the step at once (and the saga
/// compensates); the rest are retried by the step's policy.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct StepError {
    message: String,
    permanent: bool,
}

impl From<ReconcileError> for StepError {
    fn from(e: ReconcileError) -> Self {
        let permanent =
            matches!(&e, ReconcileError::Aws(a) if a.kind == crate::aws::ErrorKind::Permanent);
        StepError {
            message: e.to_string(),
            permanent,
        }
    }
}

fn step<F, Fut>(slot: &Slot, name: &'static str, retry: &RetryPolicy, action: F) -> Step
where
    F: Fn(Reconciler, String) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), ReconcileError>> + Send + 'static,
{
    let slot = slot.clone();
    let action = Arc::new(action);
    Step::new(name, move |ctx| {
        let slot = slot.clone();
        let action = action.clone();
        let cluster = ctx.input()["cluster"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        async move {
            let reconciler = upgrade(&slot)?;
            action(reconciler, cluster).await.map_err(StepError::from)
        }
    })
    .retry(retry.clone())
    .classify(|e| {
        if e.downcast_ref::<StepError>().is_some_and(|s| s.permanent) {
            keel::Outcome::Neutral
        } else {
            keel::Outcome::Failure
        }
    })
}

fn upgrade(slot: &Slot) -> Result<Reconciler, StepError> {
    slot.get()
        .and_then(std::sync::Weak::upgrade)
        .map(|inner| Reconciler { inner })
        .ok_or_else(|| StepError {
            message: "the controller is shutting down".into(),
            permanent: false,
        })
}

fn registry(slot: &Slot, retry: &RetryPolicy) -> SagaRegistry {
    let cleanup_slot = slot.clone();
    SagaRegistry::new()
        .register(
            step(slot, "instances", retry, |r, name| async move {
                r.ensure_instances(&name, true).await
            })
            // Undo: terminate what was created, when the spec says so.
            .compensate(move |ctx| {
                let slot = cleanup_slot.clone();
                let cluster = ctx.input()["cluster"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                async move {
                    let r = upgrade(&slot)?;
                    r.cleanup_if_asked(&cluster).await.map_err(StepError::from)
                }
            }),
        )
        .register(step(slot, "install", retry, |r, name| async move {
            r.ensure_installed(&name, true).await
        }))
        .register(step(slot, "ready", retry, |r, name| async move {
            r.ensure_ready(&name).await
        }))
}

impl Reconciler {
    /// Builds the reconciler, its transaction manager and saga executor over
    /// `journal`.
    ///
    /// # Errors
    /// Journal failures while opening.
    pub async fn new(
        store: StateStore,
        locks: Locks,
        cloud: Cloud,
        journal: Arc<dyn keel::tx::Journal>,
        settings: ReconcileSettings,
        metrics: Metrics,
    ) -> Result<Reconciler, TxError> {
        let slot: Slot = Arc::default();
        let sagas = SagaExecutor::builder(journal.clone(), registry(&slot, &settings.step_retry))
            .open()
            .await?;
        let tx = TxManager::builder(journal).open().await?;
        let inner = Arc::new(Inner {
            store,
            locks,
            cloud,
            tx,
            sagas,
            idem: Idempotency::new(),
            settings,
            metrics,
            sessions: Mutex::new(HashMap::new()),
        });
        let _ = slot.set(Arc::downgrade(&inner));
        Ok(Reconciler { inner })
    }

    /// The state store.
    pub fn store(&self) -> &StateStore {
        &self.inner.store
    }

    /// EC2 and SSM.
    pub fn cloud(&self) -> &Cloud {
        &self.inner.cloud
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The settings.
    pub fn settings(&self) -> &ReconcileSettings {
        &self.inner.settings
    }

    /// The audit trail of a cluster's document (keel-tx), oldest first.
    pub fn audit(&self, name: &str) -> Vec<keel::tx::AuditRecord> {
        self.inner.tx.audit(&self.resource(name))
    }

    fn resource(&self, name: &str) -> String {
        format!("cluster/{}/{name}", self.inner.settings.profile)
    }

    /// The SSM parameter holding a cluster's K3s join token.
    pub fn token_parameter(&self, name: &str) -> String {
        format!("/goman/{}/{name}/k3s-token", self.inner.settings.profile)
    }

    /// One pass over cluster `name`: lock, read, act, write, unlock.
    ///
    /// # Errors
    /// [`ReconcileError`]; `Fenced` when the lock was lost or the state
    /// changed under the pass.
    pub async fn reconcile(&self, name: &str) -> Result<PassOutcome, ReconcileError> {
        let started = Instant::now();
        let resource = self.resource(name);
        let Some(token) = self
            .inner
            .locks
            .acquire(&resource, &self.inner.settings.holder)
            .await?
        else {
            self.inner
                .metrics
                .reconcile(name, "Unknown", "Unknown", "busy", started.elapsed());
            return Ok(PassOutcome {
                result: "busy",
                requeue: Requeue::After(self.inner.settings.requeues.busy),
                phase: None,
                etag: None,
            });
        };
        let session = Arc::new(Session {
            name: name.to_owned(),
            lock: Mutex::new(token),
            etag: Mutex::new(String::new()),
            lost: CancellationToken::new(),
            first_phase: Mutex::new(None),
            read: Mutex::new(Value::Null),
        });
        self.inner
            .sessions
            .lock()
            .insert(name.to_owned(), session.clone());
        // Aborted when the pass ends or is dropped (a cancelled pass leaves
        // its lock to expire).
        let renewer = AbortOnDrop(tokio::spawn(renew_loop(
            self.inner.locks.clone(),
            session.clone(),
        )));
        let timeout = self.inner.settings.reconcile_timeout;
        let result = tokio::select! {
            r = tokio::time::timeout(timeout, Box::pin(self.pass(&session))) => r.unwrap_or(Err(ReconcileError::Timeout(timeout))),
            () = session.lost.cancelled() => Err(ReconcileError::Fenced(format!("lock {resource} lost during the pass"))),
        };
        drop(renewer);
        self.inner.sessions.lock().remove(name);
        let token = session.lock.lock().clone();
        if !session.lost.is_cancelled()
            && let Err(e) = self.inner.locks.release(&token).await
        {
            tracing::warn!(cluster = name, error = %e, "cannot release the lock; it expires by itself");
        }
        let result = result.map(|mut o| {
            if o.phase.is_some() {
                o.etag = Some(session.etag.lock().clone());
            }
            o
        });
        let first = session.first_phase.lock().map_or("Unknown", Phase::as_str);
        let (label, after) = match &result {
            Ok(o) => ("ok", o.phase.map_or("Deleted", Phase::as_str)),
            Err(ReconcileError::Fenced(_)) => ("fenced", first),
            Err(_) => ("error", first),
        };
        self.inner
            .metrics
            .reconcile(name, first, after, label, started.elapsed());
        if let Err(e) = &result {
            tracing::warn!(cluster = name, error = %e, "reconcile pass failed");
        }
        result
    }

    async fn load(&self, s: &Session) -> Result<Option<ClusterResource>, ReconcileError> {
        let Some(Stored { doc, etag }) = self.inner.store.get(&s.name).await? else {
            return Ok(None);
        };
        *s.etag.lock() = etag;
        *s.read.lock() = journal_view(&doc);
        s.first_phase.lock().get_or_insert(doc.status.phase);
        Ok(Some(doc))
    }

    async fn load_required(
        &self,
        name: &str,
    ) -> Result<(Arc<Session>, ClusterResource), ReconcileError> {
        let session = self
            .inner
            .sessions
            .lock()
            .get(name)
            .cloned()
            .ok_or_else(|| ReconcileError::Fenced(format!("no pass holds the lock of {name}")))?;
        let doc = self
            .load(&session)
            .await?
            .ok_or_else(|| ReconcileError::Other(format!("cluster {name} no longer exists")))?;
        Ok((session, doc))
    }

    /// Writes `doc` (status and metadata): renews the lock first (the fence
    /// check), then commits a keel-tx transaction through the conditional
    /// write of the state store.
    async fn save(
        &self,
        s: &Session,
        doc: &mut ClusterResource,
        operation: &str,
    ) -> Result<(), ReconcileError> {
        let token = s.lock.lock().clone();
        let renewed = self.inner.locks.renew(&token).await?;
        *s.lock.lock() = renewed;
        let resource = self.resource(&s.name);
        let expect = Expect::Etag(s.etag.lock().clone());
        // The journal's copy follows the store of record (what this pass
        // read or last wrote); the transaction then records the changes.
        let read = s.read.lock().clone();
        self.inner.tx.sync(&resource, read).await?;
        doc.metadata.resource_version += 1;
        let mut tx = self
            .inner
            .tx
            .begin(
                &resource,
                operation,
                &self.inner.settings.holder,
                expect_trace(&expect),
                BeginMode::Wait(Duration::from_secs(30)),
            )
            .await?;
        tx.set(
            "/metadata",
            serde_json::to_value(&doc.metadata)
                .map_err(|e| ReconcileError::Other(e.to_string()))?,
        )
        .await?;
        tx.set(
            "/status",
            serde_json::to_value(&doc.status).map_err(|e| ReconcileError::Other(e.to_string()))?,
        )
        .await?;
        let store = self.inner.store.clone();
        let full = doc.clone();
        let written: Arc<Mutex<Option<String>>> = Arc::default();
        let out = written.clone();
        let result = tx
            .commit_through(move |_doc: &Value, _version: u64| {
                let store = store.clone();
                let full = full.clone();
                let expect = expect.clone();
                let out = out.clone();
                async move {
                    let etag = store.put(&full, &expect).await?;
                    *out.lock() = Some(etag);
                    Ok::<(), StoreError>(())
                }
            })
            .await;
        match result {
            Ok(_) => {
                let etag = written.lock().take().unwrap_or_default();
                *s.etag.lock() = etag;
                *s.read.lock() = journal_view(doc);
                self.inner.metrics.state_write("ok");
                Ok(())
            }
            Err(TxError::ExternalWrite(e)) => {
                doc.metadata.resource_version -= 1;
                let source = e.into_source();
                let conflict = source
                    .downcast_ref::<StoreError>()
                    .is_some_and(|e| matches!(e, StoreError::Conflict { .. }));
                self.inner
                    .metrics
                    .state_write(if conflict { "conflict" } else { "error" });
                if conflict {
                    Err(ReconcileError::Fenced(format!(
                        "state of {} changed under us",
                        s.name
                    )))
                } else {
                    Err(ReconcileError::Other(format!(
                        "state write failed: {source}"
                    )))
                }
            }
            Err(e) => {
                doc.metadata.resource_version -= 1;
                self.inner.metrics.state_write("error");
                Err(e.into())
            }
        }
    }

    fn set_phase(&self, name: &str, doc: &mut ClusterResource, phase: Phase) {
        let from = doc.status.phase;
        if from == phase {
            return;
        }
        self.inner.metrics.transition(from.as_str(), phase.as_str());
        tracing::info!(
            cluster = name,
            from = from.as_str(),
            to = phase.as_str(),
            "phase transition"
        );
        doc.status.phase = phase;
        doc.status.phase_since = Some(Utc::now());
    }

    async fn pass(&self, s: &Arc<Session>) -> Result<PassOutcome, ReconcileError> {
        let Some(mut doc) = self.load(s).await? else {
            return Ok(PassOutcome {
                result: "ok",
                requeue: Requeue::Done,
                phase: None,
                etag: None,
            });
        };
        if doc.metadata.deletion_timestamp.is_some() {
            return Box::pin(self.delete(s, doc)).await;
        }
        if let Err(invalid) = doc.spec.validate() {
            if doc.status.phase != Phase::Failed
                || doc.status.observed_generation != doc.metadata.generation
            {
                self.set_phase(&s.name, &mut doc, Phase::Failed);
                doc.status.message = Some(invalid.to_string());
                doc.status.observed_generation = doc.metadata.generation;
                Box::pin(self.save(s, &mut doc, "invalidSpec")).await?;
            }
            return Ok(self.outcome(&doc));
        }
        match doc.status.phase {
            Phase::Pending | Phase::Provisioning | Phase::Installing | Phase::Configuring => {
                if doc.spec.stopped && doc.status.phase != Phase::Pending {
                    return Box::pin(self.stop_start(s, doc)).await;
                }
                Box::pin(self.provision(s, doc)).await
            }
            Phase::Running => Box::pin(self.maintain(s, doc)).await,
            Phase::Updating => Box::pin(self.update(s, doc)).await,
            Phase::Stopping | Phase::Stopped | Phase::Starting => {
                Box::pin(self.stop_start(s, doc)).await
            }
            Phase::Failed => {
                if doc.metadata.generation != doc.status.observed_generation {
                    // The user changed the spec: try again from the start.
                    self.set_phase(&s.name, &mut doc, Phase::Pending);
                    doc.status.message = None;
                    Box::pin(self.save(s, &mut doc, "retryAfterSpecChange")).await?;
                    return Box::pin(self.provision(s, doc)).await;
                }
                Ok(self.outcome(&doc))
            }
            Phase::Deleting | Phase::Terminating => Box::pin(self.delete(s, doc)).await,
        }
    }

    fn outcome(&self, doc: &ClusterResource) -> PassOutcome {
        PassOutcome {
            result: "ok",
            requeue: Requeue::After(self.inner.settings.requeues.for_phase(doc.status.phase)),
            phase: Some(doc.status.phase),
            etag: None,
        }
    }

    fn client_token(
        doc: &ClusterResource,
        role: &str,
        index: u32,
        incarnation: u32,
    ) -> (IdempotencyKey, Fingerprint) {
        let params = json!({
            "cluster_uid": doc.metadata.uid,
            "role": role,
            "index": index,
            "generation": doc.metadata.generation,
            "incarnation": incarnation,
        });
        let key = IdempotencyKey::from_value("ec2:RunInstances", &params);
        (key, Fingerprint::of_value(&params))
    }

    /// Adds a planned entry (with its client token) for every master index
    /// the spec wants and the status lacks. Returns whether it added any.
    fn plan(&self, doc: &mut ClusterResource) -> bool {
        let mut added = false;
        for index in 0..doc.spec.master_count {
            if doc
                .status
                .instances
                .iter()
                .any(|i| i.role == "master" && i.index == index)
            {
                continue;
            }
            let (key, _) = Self::client_token(doc, "master", index, 0);
            doc.status.instances.push(InstanceStatus {
                role: "master".into(),
                index,
                incarnation: 0,
                generation: doc.metadata.generation,
                client_token: key.to_hex(),
                instance_id: None,
                state: "planned".into(),
                private_ip: None,
                public_ip: None,
                k3s_installed: false,
                k3s_version: None,
                ready: false,
                launched_at: None,
            });
            added = true;
        }
        doc.status
            .instances
            .sort_by_key(|i| (i.role.clone(), i.index));
        added
    }

    fn replan(doc: &mut ClusterResource, index: usize) {
        let generation = doc.metadata.generation;
        let (role, idx, incarnation) = {
            let e = &doc.status.instances[index];
            (e.role.clone(), e.index, e.incarnation + 1)
        };
        let (key, _) = Self::client_token(doc, &role, idx, incarnation);
        let e = &mut doc.status.instances[index];
        e.incarnation = incarnation;
        e.generation = generation;
        e.client_token = key.to_hex();
        e.instance_id = None;
        e.state = "planned".into();
        e.private_ip = None;
        e.public_ip = None;
        e.k3s_installed = false;
        e.k3s_version = None;
        e.ready = false;
        e.launched_at = None;
    }

    async fn provision(
        &self,
        s: &Arc<Session>,
        mut doc: ClusterResource,
    ) -> Result<PassOutcome, ReconcileError> {
        if doc.status.phase == Phase::Pending {
            let parameter = self.token_parameter(&s.name);
            // A fresh random token; kept if one exists (PutParameter with
            // Overwrite=false).
            let secret = format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            );
            self.inner.cloud.put_secret(&parameter, &secret).await?;
            self.plan(&mut doc);
            self.set_phase(&s.name, &mut doc, Phase::Provisioning);
            doc.status.message = None;
            Box::pin(self.save(s, &mut doc, "plan")).await?;
        }
        let saga_id = format!(
            "{}/provision/g{}/r{}",
            doc.metadata.uid, doc.metadata.generation, doc.status.provisioning_round
        );
        let saga = SAGA_STEPS
            .iter()
            .fold(Saga::new(saga_id.clone()), |saga, step| saga.step(*step))
            .input(json!({"cluster": s.name}));
        let report = Box::pin(self.inner.sagas.run(saga)).await?;
        let Some(mut doc) = self.load(s).await? else {
            return Ok(PassOutcome {
                result: "ok",
                requeue: Requeue::Done,
                phase: None,
                etag: None,
            });
        };
        match report.status() {
            Some(SagaStatus::Completed) => {
                self.set_phase(&s.name, &mut doc, Phase::Running);
                doc.status.observed_generation = doc.metadata.generation;
                doc.status.message = None;
                set_condition(
                    &mut doc,
                    "Ready",
                    "True",
                    "AllNodesReady",
                    "every node reported Ready",
                );
                Box::pin(self.save(s, &mut doc, "provisioned")).await?;
            }
            Some(_) => {
                let error = report
                    .steps
                    .iter()
                    .find_map(|step| step.error.clone())
                    .unwrap_or_else(|| "provisioning failed".into());
                tracing::error!(cluster = %s.name, saga = %saga_id, error = %error, "provisioning failed");
                // Covers a failure inside the `instances` step too, which
                // the saga does not compensate (it never completed).
                self.cleanup_if_asked(&s.name).await?;
                let Some(mut fresh) = self.load(s).await? else {
                    return Ok(PassOutcome {
                        result: "ok",
                        requeue: Requeue::Done,
                        phase: None,
                        etag: None,
                    });
                };
                self.set_phase(&s.name, &mut fresh, Phase::Failed);
                fresh.status.message = Some(error);
                fresh.status.observed_generation = fresh.metadata.generation;
                Box::pin(self.save(s, &mut fresh, "provisioningFailed")).await?;
                return Ok(self.outcome(&fresh));
            }
            None => {}
        }
        Ok(self.outcome(&doc))
    }

    fn launch(&self, doc: &ClusterResource, entry: &InstanceStatus) -> Launch {
        let mut tags = doc.spec.tags.clone();
        let node = entry.node_name(&doc.metadata.name);
        tags.insert("Name".into(), node.clone());
        tags.insert(tags::CLUSTER.into(), doc.metadata.name.clone());
        tags.insert(tags::CLUSTER_UID.into(), doc.metadata.uid.clone());
        tags.insert(tags::ROLE.into(), entry.role.clone());
        tags.insert(tags::INDEX.into(), entry.index.to_string());
        tags.insert(tags::CLIENT_TOKEN.into(), entry.client_token.clone());
        tags.insert(tags::PROFILE.into(), self.inner.settings.profile.clone());
        Launch {
            image_id: self.inner.settings.image_id.clone(),
            instance_type: doc.spec.instance_type.clone(),
            instance_profile: self.inner.settings.instance_profile.clone(),
            subnet_id: self.inner.settings.subnet_id.clone(),
            tags,
            // No secret here: the node's install command reads the join
            // token from Parameter Store.
            user_data: format!("#!/bin/sh\nhostnamectl set-hostname {node}\n"),
        }
    }

    /// Saga step `instances` (`enter`: move the phase to Provisioning; the
    /// later steps call it again without moving the phase back): every
    /// planned entry gets its instance
    /// (created with its recorded client token, or found by it), instances
    /// of no entry are terminated, and the step waits until every one runs.
    async fn ensure_instances(&self, name: &str, enter: bool) -> Result<(), ReconcileError> {
        let (s, mut doc) = self.load_required(name).await?;
        if enter && doc.status.phase != Phase::Provisioning {
            self.set_phase(name, &mut doc, Phase::Provisioning);
            Box::pin(self.save(&s, &mut doc, "provisioning")).await?;
        }
        for i in 0..doc.status.instances.len() {
            if doc.status.instances[i].instance_id.is_some() {
                continue;
            }
            let entry = doc.status.instances[i].clone();
            let (key, fingerprint) =
                Self::client_token(&doc, &entry.role, entry.index, entry.incarnation);
            let launch = self.launch(&doc, &entry);
            let cloud = &self.inner.cloud;
            let created = self
                .inner
                .idem
                .execute(&key, &fingerprint, || async {
                    cloud
                        .create_instance(&entry.client_token, &launch)
                        .await
                        .map_err(|e| StoredError::new(e.to_string()))
                })
                .await;
            let instance = match created {
                Ok(instance) => instance,
                Err(keel::idempotency::ExecuteError::Operation(e)) => {
                    return Err(ReconcileError::Other(e.to_string()));
                }
                Err(e) => return Err(ReconcileError::Other(format!("idempotency: {e:?}"))),
            };
            // RunInstances asked for termination protection already; the
            // explicit, idempotent call also covers an instance adopted by
            // its token and emulators that ignore the launch parameter
            // (moto does).
            self.inner
                .cloud
                .set_termination_protection(&instance.id, true)
                .await?;
            tracing::info!(cluster = name, node = %entry.node_name(name), instance = %instance.id, "instance created");
            let e = &mut doc.status.instances[i];
            e.instance_id = Some(instance.id.clone());
            e.state = instance.state.clone();
            e.private_ip = instance.private_ip.clone();
            e.public_ip = instance.public_ip.clone();
            e.launched_at = instance.launched_at.or_else(|| Some(Utc::now()));
            Box::pin(self.save(&s, &mut doc, "instanceCreated")).await?;
        }
        self.terminate_orphans(&doc).await?;
        // Wait until every instance runs (EC2 takes seconds to minutes).
        loop {
            let live = self
                .inner
                .cloud
                .find_tagged(tags::CLUSTER_UID, &doc.metadata.uid)
                .await?;
            let mut changed = false;
            let mut all_running = true;
            for e in &mut doc.status.instances {
                let found = live.iter().find(|l| Some(&l.id) == e.instance_id.as_ref());
                let (state, private_ip, public_ip) = match found {
                    Some(l) => (l.state.clone(), l.private_ip.clone(), l.public_ip.clone()),
                    None => ("terminated".to_owned(), None, None),
                };
                all_running &= state == "running";
                if e.state != state || e.private_ip != private_ip || e.public_ip != public_ip {
                    e.state = state;
                    e.private_ip = private_ip;
                    e.public_ip = public_ip;
                    changed = true;
                }
            }
            if changed {
                Box::pin(self.save(&s, &mut doc, "instanceStates")).await?;
            }
            if all_running {
                return Ok(());
            }
            if doc
                .status
                .instances
                .iter()
                .any(|e| e.state == "terminated" || e.state == "stopped")
            {
                return Err(ReconcileError::Other(
                    "an instance stopped or vanished while provisioning".into(),
                ));
            }
            tokio::time::sleep(self.inner.cloud.settings().poll_interval).await;
        }
    }

    /// Terminates live instances of the cluster that no entry claims (an
    /// older incarnation of a replaced node, say).
    async fn terminate_orphans(&self, doc: &ClusterResource) -> Result<(), ReconcileError> {
        let live = self
            .inner
            .cloud
            .find_tagged(tags::CLUSTER_UID, &doc.metadata.uid)
            .await?;
        let orphans: Vec<String> = live
            .into_iter()
            .filter(|l| l.is_live())
            .filter(|l| {
                !doc.status.instances.iter().any(|e| {
                    e.instance_id.as_deref() == Some(l.id.as_str())
                        || l.client_token.as_deref() == Some(e.client_token.as_str())
                })
            })
            .map(|l| l.id)
            .collect();
        if !orphans.is_empty() {
            tracing::warn!(cluster = %doc.metadata.name, ?orphans, "terminating instances no entry claims");
            self.terminate(&orphans).await?;
        }
        Ok(())
    }

    /// Clears termination protection, then terminates in batches.
    async fn terminate(&self, ids: &[String]) -> Result<(), ReconcileError> {
        for id in ids {
            self.inner
                .cloud
                .set_termination_protection(id, false)
                .await?;
        }
        let results = self.inner.cloud.batch(BatchOp::Terminate, ids).await;
        if let Some(e) = results.into_iter().find_map(Result::err) {
            return Err(ReconcileError::Other(format!("terminate: {e}")));
        }
        Ok(())
    }

    fn install_script(
        &self,
        doc: &ClusterResource,
        entry: &InstanceStatus,
        server: Option<&str>,
    ) -> Vec<String> {
        let node = entry.node_name(&doc.metadata.name);
        let parameter = self.token_parameter(&doc.metadata.name);
        let role = match server {
            None => "server --cluster-init".to_owned(),
            Some(ip) => format!("server --server https://{ip}:6443"),
        };
        let tls_san = entry
            .public_ip
            .as_deref()
            .map(|ip| format!(" --tls-san {ip}"))
            .unwrap_or_default();
        // Every interpolated value is validated ([a-z0-9.+-] and IPs), so
        // nothing here needs shell quoting; the join token never appears in
        // the command (SSM keeps command text in its history).
        vec![
            "set -eu".to_owned(),
            format!(
                "TOKEN=$(aws ssm get-parameter --region {} --name {parameter} --with-decryption --query Parameter.Value --output text)",
                doc.spec.region
            ),
            format!(
                "curl -sfL https://get.k3s.io | INSTALL_K3S_VERSION={} K3S_TOKEN=\"$TOKEN\" sh -s - {role} --node-name {node}{tls_san}",
                doc.spec.k3s_version
            ),
        ]
    }

    /// Saga step `install`: K3s on the first master (`--cluster-init`),
    /// then on the others in parallel (joining the first).
    async fn ensure_installed(&self, name: &str, enter: bool) -> Result<(), ReconcileError> {
        Box::pin(self.ensure_instances(name, false)).await?;
        let (s, mut doc) = self.load_required(name).await?;
        if enter && doc.status.phase != Phase::Installing {
            self.set_phase(name, &mut doc, Phase::Installing);
            Box::pin(self.save(&s, &mut doc, "installing")).await?;
        }
        let version = doc.spec.k3s_version.clone();
        let needs = |e: &InstanceStatus| {
            !e.k3s_installed || e.k3s_version.as_deref() != Some(version.as_str())
        };
        let first = doc
            .status
            .instances
            .iter()
            .position(|e| e.index == 0)
            .ok_or_else(|| ReconcileError::Other("no first master planned".into()))?;
        if needs(&doc.status.instances[first]) {
            let entry = doc.status.instances[first].clone();
            let id = entry.instance_id.clone().unwrap_or_default();
            let script = self.install_script(&doc, &entry, None);
            let results = self
                .inner
                .cloud
                .fan_out("install", vec![(id, script)])
                .await;
            self.record_install(&s, &mut doc, &results, &version)
                .await?;
        }
        let server = doc.status.instances[first]
            .private_ip
            .clone()
            .ok_or_else(|| ReconcileError::Other("the first master has no private IP".into()))?;
        let scripts: Vec<(String, Vec<String>)> = doc
            .status
            .instances
            .iter()
            .filter(|e| e.index != 0 && needs(e))
            .map(|e| {
                (
                    e.instance_id.clone().unwrap_or_default(),
                    self.install_script(&doc, e, Some(&server)),
                )
            })
            .collect();
        if !scripts.is_empty() {
            let results = self.inner.cloud.fan_out("install", scripts).await;
            self.record_install(&s, &mut doc, &results, &version)
                .await?;
        }
        match doc.status.instances.iter().find(|e| needs(e)) {
            Some(e) => Err(ReconcileError::Other(format!(
                "K3s install on {} did not succeed",
                e.node_name(name)
            ))),
            None => Ok(()),
        }
    }

    async fn record_install(
        &self,
        s: &Session,
        doc: &mut ClusterResource,
        results: &[(String, Result<CommandOutput, String>)],
        version: &str,
    ) -> Result<(), ReconcileError> {
        let mut changed = false;
        for (id, result) in results {
            let Some(e) = doc
                .status
                .instances
                .iter_mut()
                .find(|e| e.instance_id.as_deref() == Some(id.as_str()))
            else {
                continue;
            };
            match result {
                Ok(out) if out.status == "Success" => {
                    e.k3s_installed = true;
                    e.k3s_version = Some(version.to_owned());
                    changed = true;
                }
                Ok(out) => {
                    doc.status.message = Some(format!(
                        "install on {id}: {} (exit {}): {}",
                        out.status,
                        out.exit_code,
                        tail(&out.stderr)
                    ));
                    changed = true;
                }
                Err(err) => {
                    doc.status.message = Some(format!("install on {id}: {err}"));
                    changed = true;
                }
            }
        }
        if changed {
            Box::pin(self.save(s, doc, "k3sInstalled")).await?;
        }
        Ok(())
    }

    /// Saga step `ready`: waits for every node to report Ready; a node not
    /// Ready within the startup timeout is replaced, unless too many are
    /// unhealthy at once (the fleet short-circuit holds replacements back).
    async fn ensure_ready(&self, name: &str) -> Result<(), ReconcileError> {
        loop {
            Box::pin(self.ensure_installed(name, false)).await?;
            let (s, mut doc) = self.load_required(name).await?;
            if doc.status.phase != Phase::Configuring {
                self.set_phase(name, &mut doc, Phase::Configuring);
                Box::pin(self.save(&s, &mut doc, "configuring")).await?;
            }
            let scripts: Vec<(String, Vec<String>)> = doc
                .status
                .instances
                .iter()
                .map(|e| {
                    (
                        e.instance_id.clone().unwrap_or_default(),
                        vec![format!(
                            "k3s kubectl get node {} -o jsonpath='{{.status.conditions[?(@.type==\"Ready\")].status}}'",
                            e.node_name(name)
                        )],
                    )
                })
                .collect();
            let results = self.inner.cloud.fan_out("status", scripts).await;
            let mut changed = false;
            for (id, result) in &results {
                let ready = matches!(result, Ok(out) if out.status == "Success" && out.stdout.trim() == "True");
                if let Some(e) = doc
                    .status
                    .instances
                    .iter_mut()
                    .find(|e| e.instance_id.as_deref() == Some(id.as_str()))
                    && e.ready != ready
                {
                    e.ready = ready;
                    changed = true;
                }
            }
            if doc.status.instances.iter().all(|e| e.ready) {
                let first = doc.status.instances.iter().find(|e| e.index == 0);
                doc.status.api_endpoint = first
                    .and_then(|e| e.public_ip.clone().or_else(|| e.private_ip.clone()))
                    .map(|ip| format!("https://{ip}:6443"));
                set_condition(&mut doc, "FleetHealthy", "True", "AllNodesReady", "");
                Box::pin(self.save(&s, &mut doc, "ready")).await?;
                return Ok(());
            }
            let now = Utc::now();
            let timeout = chrono::Duration::from_std(self.inner.settings.node_startup_timeout)
                .unwrap_or(chrono::Duration::MAX);
            let overdue: Vec<usize> = doc
                .status
                .instances
                .iter()
                .enumerate()
                .filter(|(_, e)| !e.ready && e.launched_at.is_some_and(|t| now - t > timeout))
                .map(|(i, _)| i)
                .collect();
            let unhealthy = doc.status.instances.iter().filter(|e| !e.ready).count();
            let total = doc.status.instances.len();
            if !overdue.is_empty() {
                if total > 1
                    && unhealthy as f64 > self.inner.settings.max_unhealthy_fraction * total as f64
                {
                    self.inner.metrics.short_circuit();
                    let message = format!(
                        "{unhealthy} of {total} nodes not Ready: replacement held back (fleet short-circuit)"
                    );
                    tracing::warn!(cluster = name, "{message}");
                    if set_condition(
                        &mut doc,
                        "FleetHealthy",
                        "False",
                        "TooManyUnhealthy",
                        &message,
                    ) {
                        changed = true;
                    }
                } else {
                    let mut old = Vec::new();
                    for i in overdue {
                        old.extend(doc.status.instances[i].instance_id.clone());
                        tracing::warn!(cluster = name, node = %doc.status.instances[i].node_name(name), "node not Ready within the startup timeout: replacing it");
                        Self::replan(&mut doc, i);
                        self.inner.metrics.replacement("startup_timeout");
                    }
                    // The new tokens are in the state before the old
                    // instances go, so a crash here leaves orphans that the
                    // next `instances` step terminates.
                    Box::pin(self.save(&s, &mut doc, "replaceNodes")).await?;
                    self.terminate(&old).await?;
                    continue;
                }
            }
            if changed {
                Box::pin(self.save(&s, &mut doc, "nodeStatus")).await?;
            }
            tokio::time::sleep(self.inner.settings.ready_poll).await;
        }
    }

    /// The compensation of `instances` (and what a failed provisioning
    /// does): with `onFailure: cleanup`, terminate every instance of the
    /// cluster and forget the entries.
    async fn cleanup_if_asked(&self, name: &str) -> Result<(), ReconcileError> {
        let (s, mut doc) = self.load_required(name).await?;
        if doc.spec.on_failure != OnFailure::Cleanup {
            return Ok(());
        }
        let live: Vec<String> = self
            .inner
            .cloud
            .find_tagged(tags::CLUSTER_UID, &doc.metadata.uid)
            .await?
            .into_iter()
            .filter(|l| l.is_live())
            .map(|l| l.id)
            .collect();
        tracing::warn!(cluster = name, instances = ?live, "provisioning failed with onFailure: cleanup: terminating what was created");
        self.terminate(&live).await?;
        doc.status.instances.clear();
        doc.status.api_endpoint = None;
        Box::pin(self.save(&s, &mut doc, "cleanupAfterFailure")).await
    }

    /// Running: spec changes go to Updating, a stop request to Stopping; a
    /// node that vanished is replaced (through provisioning again), one
    /// stopped behind our back is started.
    async fn maintain(
        &self,
        s: &Arc<Session>,
        mut doc: ClusterResource,
    ) -> Result<PassOutcome, ReconcileError> {
        if doc.spec.stopped {
            return Box::pin(self.stop_start(s, doc)).await;
        }
        if doc.metadata.generation != doc.status.observed_generation {
            self.set_phase(&s.name, &mut doc, Phase::Updating);
            Box::pin(self.save(s, &mut doc, "specChanged")).await?;
            return Box::pin(self.update(s, doc)).await;
        }
        let live = self
            .inner
            .cloud
            .find_tagged(tags::CLUSTER_UID, &doc.metadata.uid)
            .await?;
        let mut gone = Vec::new();
        let mut stopped = Vec::new();
        let mut changed = false;
        for (i, e) in doc.status.instances.iter_mut().enumerate() {
            match live.iter().find(|l| Some(&l.id) == e.instance_id.as_ref()) {
                Some(l) if l.is_live() => {
                    if l.state == "stopped" {
                        stopped.push(l.id.clone());
                    }
                    if e.state != l.state || e.public_ip != l.public_ip {
                        e.state = l.state.clone();
                        e.public_ip = l.public_ip.clone();
                        changed = true;
                    }
                }
                _ => gone.push(i),
            }
        }
        let total = doc.status.instances.len();
        if !gone.is_empty() {
            if total > 1
                && gone.len() as f64 > self.inner.settings.max_unhealthy_fraction * total as f64
            {
                self.inner.metrics.short_circuit();
                let message = format!(
                    "{} of {total} instances gone: replacement held back (fleet short-circuit)",
                    gone.len()
                );
                tracing::warn!(cluster = %s.name, "{message}");
                set_condition(
                    &mut doc,
                    "FleetHealthy",
                    "False",
                    "TooManyUnhealthy",
                    &message,
                );
                doc.status.message = Some(message);
                Box::pin(self.save(s, &mut doc, "fleetShortCircuit")).await?;
                return Ok(self.outcome(&doc));
            }
            for i in gone {
                tracing::warn!(cluster = %s.name, node = %doc.status.instances[i].node_name(&s.name), "instance gone: replacing it");
                Self::replan(&mut doc, i);
                self.inner.metrics.replacement("instance_gone");
            }
            doc.status.provisioning_round += 1;
            self.set_phase(&s.name, &mut doc, Phase::Provisioning);
            Box::pin(self.save(s, &mut doc, "replaceNodes")).await?;
            return Ok(PassOutcome {
                result: "ok",
                requeue: Requeue::After(Duration::ZERO),
                phase: Some(Phase::Provisioning),
                etag: None,
            });
        }
        if !stopped.is_empty() {
            tracing::warn!(cluster = %s.name, ?stopped, "instances stopped outside the controller: starting them");
            self.inner.cloud.batch(BatchOp::Start, &stopped).await;
        }
        if changed {
            Box::pin(self.save(s, &mut doc, "instanceStates")).await?;
        }
        Ok(self.outcome(&doc))
    }

    /// Updating: scale down (drain, then terminate), scale up and upgrade
    /// (through provisioning again).
    async fn update(
        &self,
        s: &Arc<Session>,
        mut doc: ClusterResource,
    ) -> Result<PassOutcome, ReconcileError> {
        let desired = doc.spec.master_count;
        let extra: Vec<InstanceStatus> = doc
            .status
            .instances
            .iter()
            .filter(|e| e.index >= desired)
            .cloned()
            .collect();
        if !extra.is_empty() {
            self.drain(&doc, &extra).await;
            let ids: Vec<String> = extra.iter().filter_map(|e| e.instance_id.clone()).collect();
            self.terminate(&ids).await?;
            doc.status.instances.retain(|e| e.index < desired);
        }
        self.plan(&mut doc);
        doc.status.provisioning_round += 1;
        self.set_phase(&s.name, &mut doc, Phase::Provisioning);
        Box::pin(self.save(s, &mut doc, "update")).await?;
        Ok(PassOutcome {
            result: "ok",
            requeue: Requeue::After(Duration::ZERO),
            phase: Some(Phase::Provisioning),
            etag: None,
        })
    }

    /// Drains `nodes` from the cluster (`kubectl drain`, then `kubectl
    /// delete node`) through SSM on the first master, bounded by the drain
    /// timeout. A failed drain is logged, not fatal: the node goes anyway.
    async fn drain(&self, doc: &ClusterResource, nodes: &[InstanceStatus]) {
        let Some(first) = doc
            .status
            .instances
            .iter()
            .find(|e| e.index == 0 && e.k3s_installed && !nodes.iter().any(|n| n.index == 0))
            .and_then(|e| e.instance_id.clone())
        else {
            return;
        };
        let secs = self.inner.settings.drain_timeout.as_secs().max(1);
        let mut script = vec!["set -u".to_owned()];
        for n in nodes.iter().filter(|n| n.k3s_installed) {
            let node = n.node_name(&doc.metadata.name);
            script.push(format!(
                "k3s kubectl drain {node} --ignore-daemonsets --delete-emptydir-data --force --timeout={secs}s && k3s kubectl delete node {node}"
            ));
        }
        if script.len() == 1 {
            return;
        }
        let results = self
            .inner
            .cloud
            .fan_out("drain", vec![(first, script)])
            .await;
        for (_, r) in results {
            match r {
                Ok(out) if out.status == "Success" => {}
                other => {
                    tracing::warn!(cluster = %doc.metadata.name, result = ?other, "drain did not succeed; removing the nodes anyway");
                }
            }
        }
    }

    async fn stop_start(
        &self,
        s: &Arc<Session>,
        mut doc: ClusterResource,
    ) -> Result<PassOutcome, ReconcileError> {
        let live = self
            .inner
            .cloud
            .find_tagged(tags::CLUSTER_UID, &doc.metadata.uid)
            .await?;
        let ours: Vec<_> = live
            .iter()
            .filter(|l| {
                doc.status
                    .instances
                    .iter()
                    .any(|e| e.instance_id.as_deref() == Some(l.id.as_str()))
            })
            .collect();
        if doc.spec.stopped {
            self.set_phase(&s.name, &mut doc, Phase::Stopping);
            let to_stop: Vec<String> = ours
                .iter()
                .filter(|l| l.state != "stopped" && l.state != "stopping")
                .map(|l| l.id.clone())
                .collect();
            if !to_stop.is_empty() {
                self.inner.cloud.batch(BatchOp::Stop, &to_stop).await;
            }
            let after = self
                .inner
                .cloud
                .find_tagged(tags::CLUSTER_UID, &doc.metadata.uid)
                .await?;
            let all_stopped = doc.status.instances.iter().all(|e| {
                after
                    .iter()
                    .find(|l| Some(&l.id) == e.instance_id.as_ref())
                    .is_none_or(|l| l.state == "stopped")
            });
            for e in &mut doc.status.instances {
                if let Some(l) = after.iter().find(|l| Some(&l.id) == e.instance_id.as_ref()) {
                    e.state = l.state.clone();
                    e.ready = false;
                }
            }
            if all_stopped {
                self.set_phase(&s.name, &mut doc, Phase::Stopped);
                doc.status.observed_generation = doc.metadata.generation;
            }
            Box::pin(self.save(s, &mut doc, "stop")).await?;
            return Ok(self.outcome(&doc));
        }
        self.set_phase(&s.name, &mut doc, Phase::Starting);
        let to_start: Vec<String> = ours
            .iter()
            .filter(|l| l.state == "stopped")
            .map(|l| l.id.clone())
            .collect();
        if !to_start.is_empty() {
            self.inner.cloud.batch(BatchOp::Start, &to_start).await;
        }
        // Provisioning again checks every node (and replaces what is gone).
        doc.status.provisioning_round += 1;
        self.set_phase(&s.name, &mut doc, Phase::Provisioning);
        Box::pin(self.save(s, &mut doc, "start")).await?;
        Ok(PassOutcome {
            result: "ok",
            requeue: Requeue::After(Duration::ZERO),
            phase: Some(Phase::Provisioning),
            etag: None,
        })
    }

    async fn delete(
        &self,
        s: &Arc<Session>,
        mut doc: ClusterResource,
    ) -> Result<PassOutcome, ReconcileError> {
        if !matches!(doc.status.phase, Phase::Deleting | Phase::Terminating) {
            self.set_phase(&s.name, &mut doc, Phase::Deleting);
            Box::pin(self.save(s, &mut doc, "delete")).await?;
        }
        if doc.status.phase == Phase::Deleting {
            let others: Vec<InstanceStatus> = doc
                .status
                .instances
                .iter()
                .filter(|e| e.index != 0)
                .cloned()
                .collect();
            self.drain(&doc, &others).await;
            self.set_phase(&s.name, &mut doc, Phase::Terminating);
            Box::pin(self.save(s, &mut doc, "drained")).await?;
        }
        let live: Vec<String> = self
            .inner
            .cloud
            .find_tagged(tags::CLUSTER_UID, &doc.metadata.uid)
            .await?
            .into_iter()
            .filter(|l| l.state != "shutting-down")
            .map(|l| l.id)
            .collect();
        if !live.is_empty() {
            self.terminate(&live).await?;
        }
        let remaining = self
            .inner
            .cloud
            .find_tagged(tags::CLUSTER_UID, &doc.metadata.uid)
            .await?;
        if remaining.iter().any(|l| l.state != "shutting-down") {
            return Ok(self.outcome(&doc));
        }
        self.inner
            .cloud
            .delete_parameter(&self.token_parameter(&s.name))
            .await?;
        let token = s.lock.lock().clone();
        self.inner.locks.renew(&token).await?;
        let etag = s.etag.lock().clone();
        self.inner.store.delete(&s.name, &etag).await?;
        tracing::info!(cluster = %s.name, "cluster deleted");
        Ok(PassOutcome {
            result: "ok",
            requeue: Requeue::Done,
            phase: None,
            etag: None,
        })
    }
}

/// What the journal keeps of a document: metadata and status (the spec is
/// the user's, never changed by a transaction).
fn journal_view(doc: &ClusterResource) -> Value {
    json!({"metadata": doc.metadata, "status": doc.status})
}

fn expect_trace(expect: &Expect) -> String {
    match expect {
        Expect::Absent => "create".to_owned(),
        Expect::Etag(e) => format!("etag:{}", e.trim_matches('"')),
    }
}

/// Sets a condition; returns whether it changed.
fn set_condition(
    doc: &mut ClusterResource,
    kind: &str,
    status: &str,
    reason: &str,
    message: &str,
) -> bool {
    let now = Utc::now();
    match doc.status.conditions.iter_mut().find(|c| c.kind == kind) {
        Some(c) if c.status == status && c.reason == reason => false,
        Some(c) => {
            c.status = status.to_owned();
            c.reason = reason.to_owned();
            c.message = message.to_owned();
            c.last_transition_time = now;
            true
        }
        None => {
            doc.status.conditions.push(Condition {
                kind: kind.to_owned(),
                status: status.to_owned(),
                reason: reason.to_owned(),
                message: message.to_owned(),
                last_transition_time: now,
            });
            true
        }
    }
}

fn tail(s: &str) -> &str {
    let start = s.len().saturating_sub(500);
    let mut i = start;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Renews the session's lock every 2/5 of its TTL (2 min of 5); cancels the
/// session when it is lost.
async fn renew_loop(locks: Locks, session: Arc<Session>) {
    let every = locks.ttl().mul_f64(0.4).max(Duration::from_millis(200));
    loop {
        tokio::time::sleep(every).await;
        let token = session.lock.lock().clone();
        match locks.renew(&token).await {
            Ok(renewed) => *session.lock.lock() = renewed,
            Err(LockError::Lost { .. }) => {
                tracing::warn!(cluster = %session.name, "lock lost: stopping the pass");
                session.lost.cancel();
                return;
            }
            Err(e) => {
                tracing::warn!(cluster = %session.name, error = %e, "lock renewal failed; retrying");
            }
        }
    }
}
