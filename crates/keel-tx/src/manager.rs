//! The transaction manager and the transaction handle.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::Utc;
use futures::FutureExt as _;
use keel_core::{BoxError, CancellationToken, every};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;

use crate::config::{BeginMode, TxConfig, TxManagerBuilder};
use crate::error::{
    ExternalWriteFailed, JournalError, JournalErrorKind, ResourceBusy, TransactionClosed, TxError,
    VersionConflict,
};
use crate::journal::{Durability, Journal};
use crate::metrics::Hooks;
use crate::pointer::{self, Intent, Pointer};
use crate::record::{AuditRecord, Change, ChangeOp, Document, Record, RollbackCause, TxId};
use crate::state::JournalState;

/// Atomic transactions over one JSON document per resource (a cluster, a VM).
///
/// * [`begin`](TxManager::begin) takes the resource's lock (one open
///   transaction per resource; a second `begin` waits or fails, per
///   [`BeginMode`]) and a snapshot of its document.
/// * [`Transaction::set`], [`Transaction::delete`] and [`Transaction::merge`]
///   change a working copy at a JSON Pointer; each change is written to the
///   journal first, with its before and after values.
/// * [`Transaction::commit`] writes the commit marker durably and only then
///   makes the new document (and version) visible; [`Transaction::rollback`]
///   discards the working copy. Readers ([`get`](TxManager::get)) only ever
///   see committed documents.
/// * Writers outside transactions use [`put`](TxManager::put) with the
///   version they read (optimistic concurrency).
/// * A reaper rolls back transactions left open longer than the timeout
///   (default 30 minutes); dropping a [`Transaction`] without committing rolls
///   it back too.
/// * Every transaction leaves an [`AuditRecord`] ([`audit`](TxManager::audit)).
///
/// Cloning is cheap and shares the manager. Cost: `begin` clones the
/// document (the snapshot); each change clones the value it writes (and the
/// subtree, for a merge); `commit` moves the working copy into the journal
/// record. Begin, commit, commit-through, rollback, put and sync run to
/// completion on a spawned task even if the caller's future is dropped, so a
/// cancelled caller never leaves the journal and the in-memory state
/// disagreeing.
#[derive(Clone)]
pub struct TxManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TxManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxManager")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

struct Inner {
    journal: Arc<dyn Journal>,
    config: TxConfig,
    state: Mutex<State>,
    hooks: Hooks,
    recovered: Vec<AuditRecord>,
    /// Stops the reaper when the last handle to the manager goes.
    reaper: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.reaper.cancel();
    }
}

struct State {
    /// Documents, open audit records and history: the same fold the journal
    /// replays, applied after each successful append.
    journal: JournalState,
    locks: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
    open: HashMap<TxId, OpenTx>,
}

struct OpenTx {
    resource: String,
    working: Value,
    deadline: Instant,
    next_change: u32,
    _guard: OwnedMutexGuard<()>,
}

/// What a successful commit produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// The transaction.
    pub tx: TxId,
    /// The document's new version.
    pub version: u64,
    /// How many changes it applied.
    pub changes: u32,
}

impl TxManager {
    /// A builder over `journal` (share it with a
    /// [`SagaExecutor`](crate::SagaExecutor) if you like: they write
    /// different records).
    pub fn builder(journal: Arc<dyn Journal>) -> TxManagerBuilder {
        TxManagerBuilder::new(journal)
    }

    pub(crate) async fn open(builder: TxManagerBuilder) -> Result<TxManager, TxError> {
        let config = builder.validate()?;
        let journal = builder.journal;
        let hooks = builder.hooks;
        let mut state = journal.load().await?;
        // Sagas are the executor's business.
        state.sagas.clear();
        let mut retention = state.retention();
        retention.audit_per_resource = config.audit_retention;
        state.set_retention(retention);

        let now = Utc::now();
        let stale: Vec<Record> = state
            .open
            .values()
            .map(|audit| Record::Rollback {
                tx: audit.tx,
                resource: audit.resource.clone(),
                cause: RollbackCause::Recovery,
                reason: "the process stopped before the transaction committed".to_owned(),
                at: now,
            })
            .collect();
        let mut recovered = Vec::with_capacity(stale.len());
        if !stale.is_empty() {
            journal.append(&stale, Durability::Durable).await?;
            for record in stale {
                let Record::Rollback { tx, .. } = &record else {
                    continue;
                };
                let mut audit = state.open.get(tx).cloned();
                let tx = *tx;
                state.apply(record);
                if let Some(audit) = audit.as_mut() {
                    if let Some(done) = state
                        .history
                        .get(&audit.resource)
                        .and_then(|h| h.iter().rev().find(|a| a.tx == tx))
                    {
                        *audit = done.clone();
                    }
                    tracing::warn!(
                        tx = %audit.tx,
                        resource = %audit.resource,
                        operation = %audit.operation,
                        owner = %audit.owner,
                        changes = audit.changes.len(),
                        "rolled back a transaction left open by a previous process"
                    );
                }
                hooks.tx_rolled_back(RollbackCause::Recovery);
                recovered.extend(audit);
            }
        }

        let inner = Arc::new(Inner {
            journal,
            config,
            state: Mutex::new(State {
                journal: state,
                locks: HashMap::new(),
                open: HashMap::new(),
            }),
            hooks,
            recovered,
            reaper: CancellationToken::new(),
        });
        tokio::spawn(reaper(
            Arc::downgrade(&inner),
            inner.config.reap_interval,
            inner.reaper.clone(),
        ));
        Ok(TxManager { inner })
    }

    /// Transactions found open in the journal at start-up and rolled back
    /// (their audit records, with status rolled back and cause
    /// [`RollbackCause::Recovery`]).
    pub fn recovered(&self) -> &[AuditRecord] {
        &self.inner.recovered
    }

    /// Begins a transaction on `resource`, taking its lock and a snapshot of
    /// its committed document (`null` if it has none yet).
    ///
    /// `operation`, `owner` and `trace_id` go into the audit trail. If
    /// another transaction holds the resource, `mode` decides: wait up to a
    /// limit, or fail at once; either way the failure is
    /// [`TxError::ResourceBusy`].
    pub async fn begin(
        &self,
        resource: impl Into<String>,
        operation: impl Into<String>,
        owner: impl Into<String>,
        trace_id: impl Into<String>,
        mode: BeginMode,
    ) -> Result<Transaction, TxError> {
        let resource = resource.into();
        let guard = self.inner.lock_resource(&resource, mode).await?;
        let inner = self.inner.clone();
        let operation = operation.into();
        let owner = owner.into();
        let trace_id = trace_id.into();
        detached(async move {
            inner
                .begin_locked(guard, resource, operation, owner, trace_id)
                .await
        })
        .await
    }

    /// The committed document of `resource`, if it was ever written.
    pub fn get(&self, resource: &str) -> Option<Document> {
        self.inner.state.lock().journal.document(resource).cloned()
    }

    /// Replaces the document of `resource` outside any transaction, if its
    /// version is still `expected_version` (0: the resource must not exist
    /// yet). Returns the new version.
    ///
    /// Fails with [`TxError::VersionConflict`] if another writer got there
    /// first (read again and retry), and with [`TxError::ResourceBusy`] while
    /// a transaction holds the resource. Durable when it returns.
    pub async fn put(
        &self,
        resource: impl Into<String>,
        document: Value,
        expected_version: u64,
    ) -> Result<u64, TxError> {
        let resource = resource.into();
        let guard = self
            .inner
            .lock_resource(&resource, BeginMode::FailFast)
            .await?;
        let inner = self.inner.clone();
        detached(async move {
            inner
                .put_locked(guard, resource, document, expected_version)
                .await
        })
        .await
    }

    /// Makes `document`, read from a store of record outside the journal,
    /// the committed document of `resource`, whatever version the journal
    /// has. Returns the version it is at afterwards.
    ///
    /// When the committed document already equals `document` nothing is
    /// written and the current version is returned; otherwise (or when the
    /// resource has no document yet) `document` is written as the next
    /// version and audited like a [`put`](TxManager::put) (operation
    /// `"put"`, one change at `""` with before and after). Use it after
    /// [`Transaction::commit_through`] failed or the process restarted, so
    /// that the working copy follows the store of record, which wins.
    ///
    /// Fails with [`TxError::ResourceBusy`] while a transaction holds the
    /// resource. Durable when it returns. Cost: one comparison of the two
    /// documents; a write only when they differ.
    pub async fn sync(&self, resource: impl Into<String>, document: Value) -> Result<u64, TxError> {
        let resource = resource.into();
        let guard = self
            .inner
            .lock_resource(&resource, BeginMode::FailFast)
            .await?;
        let inner = self.inner.clone();
        detached(async move { inner.sync_locked(guard, resource, document).await }).await
    }

    /// The audit trail of `resource`: finished transactions (and puts),
    /// oldest first, then any open one.
    pub fn audit(&self, resource: &str) -> Vec<AuditRecord> {
        let state = self.inner.state.lock();
        let mut records: Vec<AuditRecord> = state
            .journal
            .history
            .get(resource)
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default();
        records.extend(state.journal.open_on(resource).cloned());
        records
    }

    /// Audit records of every open transaction.
    pub fn open_transactions(&self) -> Vec<AuditRecord> {
        self.inner
            .state
            .lock()
            .journal
            .open
            .values()
            .cloned()
            .collect()
    }

    /// Resources that have a committed document.
    pub fn resources(&self) -> Vec<String> {
        self.inner
            .state
            .lock()
            .journal
            .documents
            .keys()
            .cloned()
            .collect()
    }
}

/// Runs `fut` on its own task so it finishes even if the caller's future is
/// dropped; a panic inside is resumed in the caller.
async fn detached<T, F>(fut: F) -> Result<T, TxError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, TxError>> + Send + 'static,
{
    match tokio::spawn(fut).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(JournalError::with_source(
            JournalErrorKind::Interrupted,
            "transaction task cancelled",
            e,
        )
        .into()),
    }
}

impl Inner {
    async fn lock_resource(
        &self,
        resource: &str,
        mode: BeginMode,
    ) -> Result<OwnedMutexGuard<()>, TxError> {
        let lock = {
            let mut state = self.state.lock();
            match state.locks.get(resource) {
                Some(lock) => lock.clone(),
                None => state.locks.entry(resource.to_owned()).or_default().clone(),
            }
        };
        let (acquired, waited) = match mode {
            BeginMode::FailFast => (lock.try_lock_owned().ok(), Duration::ZERO),
            BeginMode::Wait(limit) => (
                tokio::time::timeout(limit, lock.lock_owned()).await.ok(),
                limit,
            ),
        };
        acquired.ok_or_else(|| {
            let holder = self
                .state
                .lock()
                .open
                .iter()
                .find(|(_, open)| open.resource == resource)
                .map(|(tx, _)| *tx);
            ResourceBusy {
                resource: resource.to_owned(),
                holder,
                waited,
            }
            .into()
        })
    }

    async fn begin_locked(
        self: Arc<Self>,
        guard: OwnedMutexGuard<()>,
        resource: String,
        operation: String,
        owner: String,
        trace_id: String,
    ) -> Result<Transaction, TxError> {
        let tx = TxId::new();
        let base_version = self.state.lock().journal.version(&resource);
        let records = [Record::Begin {
            tx,
            resource: resource.clone(),
            operation,
            owner,
            trace_id,
            base_version,
            at: Utc::now(),
        }];
        self.journal
            .append(&records, Durability::Buffered)
            .await
            .map_err(|e| self.map_journal_error(e, &resource, tx))?;
        let [record] = records;
        {
            let mut state = self.state.lock();
            // The lock is held, so the document is still the one at base_version.
            let working = state.journal.document_value(&resource);
            state.journal.apply(record);
            state.open.insert(
                tx,
                OpenTx {
                    resource: resource.clone(),
                    working,
                    deadline: self.config.clock.now() + self.config.transaction_timeout,
                    next_change: 0,
                    _guard: guard,
                },
            );
        }
        self.hooks.tx_begun();
        tracing::debug!(tx = %tx, resource = %resource, "transaction begun");
        Ok(Transaction {
            inner: self,
            tx,
            resource,
            finished: false,
        })
    }

    async fn change(
        &self,
        tx: TxId,
        resource: &str,
        op: ChangeOp,
        path: &str,
        arg: Option<Value>,
    ) -> Result<(), TxError> {
        let pointer = Pointer::parse(path)?;
        let (records, location) = {
            let state = self.state.lock();
            let open = state
                .open
                .get(&tx)
                .ok_or_else(|| closed(&state, tx, resource))?;
            let intent = if op == ChangeOp::Delete {
                Intent::Remove
            } else {
                Intent::Write
            };
            let plan = pointer::plan(&open.working, &pointer, intent)?;
            let (patch, after) = match op {
                ChangeOp::Set => (None, arg),
                ChangeOp::Delete => (None, None),
                ChangeOp::Merge => {
                    let patch = arg.unwrap_or(Value::Null);
                    let mut merged = plan.before.clone().unwrap_or(Value::Null);
                    pointer::merge_patch(&mut merged, &patch);
                    (Some(patch), Some(merged))
                }
            };
            let change = Change {
                op,
                path: plan.pointer.to_string(),
                patch,
                before: plan.before,
                after,
            };
            (
                [Record::Change {
                    tx,
                    index: open.next_change,
                    change,
                }],
                plan.pointer,
            )
        };
        // Write ahead: the change is in the journal before the working copy
        // has it. If this future is dropped here, the next change reuses the
        // index and replaces the journaled one.
        self.journal
            .append(&records, Durability::Buffered)
            .await
            .map_err(|e| self.map_journal_error(e, resource, tx))?;
        let [record] = records;
        let mut state = self.state.lock();
        let State { journal, open, .. } = &mut *state;
        let Some(open) = open.get_mut(&tx) else {
            // Rolled back (by the reaper) while the change was being written.
            return Err(closed(&state, tx, resource));
        };
        let Record::Change { change, .. } = &record else {
            unreachable!("built as a change record above");
        };
        let written = pointer::write(&mut open.working, &location, change.after.clone());
        debug_assert!(
            written,
            "a planned write applies to the unchanged working copy"
        );
        open.next_change += 1;
        journal.apply(record);
        Ok(())
    }

    async fn commit(self: Arc<Self>, tx: TxId, resource: String) -> Result<Committed, TxError> {
        let (open, version) = self.take_open(tx, &resource)?;
        self.write_commit(tx, resource, open, version).await
    }

    /// Takes `tx` out of the open set (so neither the reaper nor a drop rolls
    /// it back) and returns it with the version its commit will produce.
    fn take_open(&self, tx: TxId, resource: &str) -> Result<(OpenTx, u64), TxError> {
        let mut state = self.state.lock();
        let Some(open) = state.open.remove(&tx) else {
            return Err(closed(&state, tx, resource));
        };
        // The resource lock (in `open`) is held, so the version cannot move.
        let version = state.journal.version(resource) + 1;
        Ok((open, version))
    }

    /// Runs the external write of `commit_through`, then writes the commit
    /// marker if it succeeded or rolls back if it failed.
    async fn commit_through<Fut, E>(
        self: Arc<Self>,
        tx: TxId,
        resource: String,
        open: OpenTx,
        version: u64,
        write: Fut,
    ) -> Result<Committed, TxError>
    where
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        // Convert at once, so that `E` need not be `Send`.
        let write = write.map(|result| result.map_err(Into::<BoxError>::into));
        let (error, panic) = match AssertUnwindSafe(write).catch_unwind().await {
            Ok(Ok(())) => {
                let result = self.write_commit(tx, resource.clone(), open, version).await;
                if let Err(error) = &result {
                    tracing::warn!(
                        tx = %tx,
                        resource = %resource,
                        version,
                        error = %error,
                        "the store of record took a document the journal did not commit; re-read it and sync"
                    );
                }
                return result;
            }
            Ok(Err(error)) => (error, None),
            Err(panic) => (BoxError::from("the external write panicked"), Some(panic)),
        };
        tracing::debug!(tx = %tx, resource = %resource, error = %error, "external write failed; rolling back");
        // A journal error here was logged; the rollback holds in memory, and
        // without a commit marker recovery rolls back as well.
        self.finish_rollback(
            tx,
            &resource,
            RollbackCause::ExternalWrite,
            error.to_string(),
            Durability::Durable,
        )
        .await
        .ok();
        drop(open);
        if let Some(panic) = panic {
            std::panic::resume_unwind(panic);
        }
        Err(ExternalWriteFailed::new(resource, tx, error).into())
    }

    /// Writes the commit marker of `tx` (taken out of the open set) and
    /// publishes the new document, or rolls back if the journal fails.
    async fn write_commit(
        &self,
        tx: TxId,
        resource: String,
        open: OpenTx,
        version: u64,
    ) -> Result<Committed, TxError> {
        let OpenTx {
            working,
            next_change,
            _guard: guard,
            ..
        } = open;
        let records = [Record::Commit {
            tx,
            resource: resource.clone(),
            version,
            document: working,
            changes: next_change,
            at: Utc::now(),
        }];
        match self.journal.append(&records, Durability::Durable).await {
            Ok(()) => {
                let [record] = records;
                self.state.lock().journal.apply(record);
                drop(guard);
                self.hooks.tx_committed();
                tracing::debug!(tx = %tx, resource = %resource, version, "transaction committed");
                Ok(Committed {
                    tx,
                    version,
                    changes: next_change,
                })
            }
            Err(error) => {
                tracing::error!(tx = %tx, resource = %resource, error = %error, "commit failed; rolling back");
                let reason = format!("commit failed: {error}");
                self.finish_rollback(
                    tx,
                    &resource,
                    RollbackCause::JournalFailure,
                    reason,
                    Durability::Buffered,
                )
                .await
                .ok();
                drop(guard);
                if error.kind() == JournalErrorKind::VersionMismatch {
                    return Err(self.refresh_conflict(&resource, version - 1, error).await);
                }
                Err(self.map_journal_error(error, &resource, tx))
            }
        }
    }

    /// Removes `tx` from the open set (if still there) and rolls it back.
    async fn rollback(
        self: Arc<Self>,
        tx: TxId,
        resource: String,
        cause: RollbackCause,
        reason: String,
    ) -> Result<(), TxError> {
        let removed = self.state.lock().open.remove(&tx);
        let Some(open) = removed else {
            let state = self.state.lock();
            return Err(closed(&state, tx, &resource));
        };
        let result = self
            .finish_rollback(tx, &resource, cause, reason, Durability::Durable)
            .await;
        // The snapshot was never touched: the resource is free again.
        drop(open);
        result
    }

    async fn finish_rollback(
        &self,
        tx: TxId,
        resource: &str,
        cause: RollbackCause,
        reason: String,
        durability: Durability,
    ) -> Result<(), TxError> {
        let records = [Record::Rollback {
            tx,
            resource: resource.to_owned(),
            cause,
            reason,
            at: Utc::now(),
        }];
        let result = self.journal.append(&records, durability).await;
        // In memory the rollback holds even if the journal failed: without a
        // commit marker, recovery rolls the transaction back as well.
        let [record] = records;
        self.state.lock().journal.apply(record);
        self.hooks.tx_rolled_back(cause);
        tracing::debug!(tx = %tx, resource = %resource, cause = %cause, "transaction rolled back");
        result.map_err(|e| {
            tracing::warn!(tx = %tx, resource = %resource, error = %e, "could not journal a rollback");
            e.into()
        })
    }

    /// Rolls back in memory only (no runtime to write the journal with);
    /// recovery rolls it back in the journal.
    fn rollback_in_memory(&self, tx: TxId, resource: &str, reason: String) {
        let mut state = self.state.lock();
        if state.open.remove(&tx).is_some() {
            state.journal.apply(Record::Rollback {
                tx,
                resource: resource.to_owned(),
                cause: RollbackCause::Dropped,
                reason,
                at: Utc::now(),
            });
            self.hooks.tx_rolled_back(RollbackCause::Dropped);
        }
    }

    async fn put_locked(
        self: Arc<Self>,
        guard: OwnedMutexGuard<()>,
        resource: String,
        document: Value,
        expected_version: u64,
    ) -> Result<u64, TxError> {
        let actual = self.state.lock().journal.version(&resource);
        if actual != expected_version {
            return Err(VersionConflict {
                resource,
                expected: expected_version,
                actual,
            }
            .into());
        }
        let version = actual + 1;
        let tx = TxId::new();
        let records = [Record::Put {
            tx,
            resource: resource.clone(),
            version,
            document,
            at: Utc::now(),
        }];
        match self.journal.append(&records, Durability::Durable).await {
            Ok(()) => {
                let [record] = records;
                self.state.lock().journal.apply(record);
                drop(guard);
                Ok(version)
            }
            Err(error) if error.kind() == JournalErrorKind::VersionMismatch => Err(self
                .refresh_conflict(&resource, expected_version, error)
                .await),
            Err(error) => Err(self.map_journal_error(error, &resource, tx)),
        }
    }

    async fn sync_locked(
        self: Arc<Self>,
        guard: OwnedMutexGuard<()>,
        resource: String,
        mut document: Value,
    ) -> Result<u64, TxError> {
        // Only a shared journal refuses a put because another process moved
        // the version; catch up and try again a few times.
        const ATTEMPTS: u32 = 3;
        let mut attempt = 1;
        loop {
            let actual = {
                let state = self.state.lock();
                match state.journal.document(&resource) {
                    Some(current) if current.value == document => return Ok(current.version),
                    Some(current) => current.version,
                    None => 0,
                }
            };
            let version = actual + 1;
            let tx = TxId::new();
            let records = [Record::Put {
                tx,
                resource: resource.clone(),
                version,
                document,
                at: Utc::now(),
            }];
            match self.journal.append(&records, Durability::Durable).await {
                Ok(()) => {
                    let [record] = records;
                    self.state.lock().journal.apply(record);
                    drop(guard);
                    tracing::debug!(tx = %tx, resource = %resource, version, "document synced from the store of record");
                    return Ok(version);
                }
                Err(error) if error.kind() == JournalErrorKind::VersionMismatch => {
                    let conflict = self.refresh_conflict(&resource, actual, error).await;
                    if attempt == ATTEMPTS || !matches!(conflict, TxError::VersionConflict(_)) {
                        return Err(conflict);
                    }
                    attempt += 1;
                    let [Record::Put { document: back, .. }] = records else {
                        unreachable!("built as a put record above");
                    };
                    document = back;
                }
                Err(error) => return Err(self.map_journal_error(error, &resource, tx)),
            }
        }
    }

    /// Another process wrote `resource`: reload its document and report the
    /// conflict.
    async fn refresh_conflict(
        &self,
        resource: &str,
        expected: u64,
        error: JournalError,
    ) -> TxError {
        match self.journal.load_document(resource).await {
            Ok(Some(document)) => {
                let actual = document.version;
                self.state
                    .lock()
                    .journal
                    .documents
                    .insert(resource.to_owned(), document);
                VersionConflict {
                    resource: resource.to_owned(),
                    expected,
                    actual,
                }
                .into()
            }
            Ok(None) => error.into(),
            Err(reload) => {
                tracing::warn!(resource = %resource, error = %reload, "could not reload a document after a conflict");
                error.into()
            }
        }
    }

    fn map_journal_error(&self, error: JournalError, resource: &str, tx: TxId) -> TxError {
        match error.kind() {
            JournalErrorKind::ResourceLocked => ResourceBusy {
                resource: resource.to_owned(),
                holder: None,
                waited: Duration::ZERO,
            }
            .into(),
            JournalErrorKind::Fenced => TransactionClosed { tx, status: None }.into(),
            _ => error.into(),
        }
    }

    async fn reap(self: &Arc<Self>) {
        let now = self.config.clock.now();
        let expired: Vec<(TxId, String)> = self
            .state
            .lock()
            .open
            .iter()
            .filter(|(_, open)| open.deadline <= now)
            .map(|(tx, open)| (*tx, open.resource.clone()))
            .collect();
        for (tx, resource) in expired {
            let timeout = self.config.transaction_timeout;
            tracing::warn!(tx = %tx, resource = %resource, timeout = ?timeout, "transaction timed out; rolling back");
            let reason = format!("transaction timed out after {timeout:?}");
            // An error here was already logged; the rollback holds in memory.
            self.clone()
                .rollback(tx, resource, RollbackCause::TimedOut, reason)
                .await
                .ok();
        }
    }
}

fn closed(state: &State, tx: TxId, resource: &str) -> TxError {
    let status = state
        .journal
        .history
        .get(resource)
        .and_then(|h| h.iter().rev().find(|a| a.tx == tx))
        .map(|a| a.status.clone());
    TransactionClosed { tx, status }.into()
}

/// Rolls back transactions left open too long, every `interval`, until the
/// manager is dropped (its `Inner` cancels `stop`).
async fn reaper(inner: Weak<Inner>, interval: Duration, stop: CancellationToken) {
    every(interval, stop, || {
        let inner = inner.upgrade();
        async move {
            if let Some(inner) = inner {
                inner.reap().await;
            }
        }
    })
    .await;
}

/// An open transaction on one resource.
///
/// Changes go to a working copy and to the journal; nothing is visible to
/// readers until [`commit`](Transaction::commit). Dropping the handle
/// without committing or rolling back rolls the transaction back (cause
/// [`RollbackCause::Dropped`]). If the reaper rolled it back after the
/// timeout, every method fails with [`TxError::TransactionClosed`].
pub struct Transaction {
    inner: Arc<Inner>,
    tx: TxId,
    resource: String,
    finished: bool,
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("tx", &self.tx)
            .field("resource", &self.resource)
            .finish_non_exhaustive()
    }
}

impl Transaction {
    /// The transaction's id.
    pub fn id(&self) -> TxId {
        self.tx
    }

    /// The resource it holds.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// A copy of the working document (the snapshot plus this transaction's
    /// changes so far).
    pub fn document(&self) -> Result<Value, TxError> {
        let state = self.inner.state.lock();
        match state.open.get(&self.tx) {
            Some(open) => Ok(open.working.clone()),
            None => Err(closed(&state, self.tx, &self.resource)),
        }
    }

    /// The working document's value at `path` (a JSON Pointer), if any.
    pub fn get(&self, path: &str) -> Result<Option<Value>, TxError> {
        let pointer = Pointer::parse(path)?;
        let state = self.inner.state.lock();
        match state.open.get(&self.tx) {
            Some(open) => Ok(pointer::get(&open.working, &pointer).cloned()),
            None => Err(closed(&state, self.tx, &self.resource)),
        }
    }

    /// Sets `value` at `path` (JSON Pointer, RFC 6901): an object member is
    /// added or replaced, an array element replaced, and the array's length
    /// (or `-`) appends. The parent must exist; `""` replaces the whole
    /// document.
    pub async fn set(&mut self, path: &str, value: impl Into<Value>) -> Result<(), TxError> {
        self.inner
            .change(
                self.tx,
                &self.resource,
                ChangeOp::Set,
                path,
                Some(value.into()),
            )
            .await
    }

    /// Removes the value at `path`; it must exist (array elements after it
    /// shift down).
    pub async fn delete(&mut self, path: &str) -> Result<(), TxError> {
        self.inner
            .change(self.tx, &self.resource, ChangeOp::Delete, path, None)
            .await
    }

    /// Applies an RFC 7396 merge patch to the value at `path` (absent counts
    /// as `null`; the parent must exist): object members merge recursively,
    /// `null` members are removed, anything else replaces.
    pub async fn merge(&mut self, path: &str, patch: Value) -> Result<(), TxError> {
        self.inner
            .change(self.tx, &self.resource, ChangeOp::Merge, path, Some(patch))
            .await
    }

    /// Commits: writes the commit marker durably, then publishes the new
    /// document with the next version and releases the resource.
    ///
    /// If the journal fails, the transaction is rolled back (cause
    /// [`RollbackCause::JournalFailure`]) and the error returned; a file
    /// journal then refuses writes until reopened, and recovery decides from
    /// what reached the disk.
    pub async fn commit(mut self) -> Result<Committed, TxError> {
        self.finished = true;
        let inner = self.inner.clone();
        let (tx, resource) = (self.tx, std::mem::take(&mut self.resource));
        detached(inner.commit(tx, resource)).await
    }

    /// Commits only if `write` stores the new document in a store of record
    /// outside the journal (an S3 object written with a conditional
    /// `PutObject`, a database row): `write` gets the document and version
    /// the commit would produce, and the commit marker is written only after
    /// its future returns `Ok`.
    ///
    /// * `Ok`: as [`commit`](Transaction::commit) (the same [`Committed`],
    ///   the same handling of a journal failure).
    /// * `Err`: the transaction is rolled back (cause
    ///   [`RollbackCause::ExternalWrite`], the error's message as the
    ///   reason), the document keeps its snapshot, the resource is released,
    ///   and [`TxError::ExternalWrite`] carries the error as its source.
    ///
    /// `write` is called once, before this method first awaits, so it may
    /// borrow from the caller; its future must own what it uses. The future
    /// runs on a spawned task like `commit`, so dropping this method's future
    /// does not stop it half way. The transaction timeout does not apply
    /// while it runs: bound it inside `write`. A panic in `write` or its
    /// future rolls the transaction back and is resumed in the caller.
    ///
    /// The store of record wins; the journal is the write-ahead audit and
    /// the working copy. If the journal fails to write the commit marker
    /// after `write` succeeded, or the process stops between the two, the
    /// transaction is rolled back (at once, or by recovery with
    /// [`RollbackCause::Recovery`]) while the store of record holds the new
    /// document: re-read the store of record and pass what it holds to
    /// [`TxManager::sync`]. Use a conditional write (on an `ETag` or a
    /// version) so that a write whose outcome is unknown can be detected.
    pub async fn commit_through<W, Fut, E>(mut self, write: W) -> Result<Committed, TxError>
    where
        W: FnOnce(&Value, u64) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let (open, version) = self.inner.take_open(self.tx, &self.resource)?;
        let written = std::panic::catch_unwind(AssertUnwindSafe(|| write(&open.working, version)));
        let write = match written {
            Ok(write) => write,
            Err(panic) => {
                // Back in the open set, so dropping `self` rolls it back.
                self.inner.state.lock().open.insert(self.tx, open);
                std::panic::resume_unwind(panic);
            }
        };
        self.finished = true;
        let inner = self.inner.clone();
        let (tx, resource) = (self.tx, std::mem::take(&mut self.resource));
        detached(inner.commit_through(tx, resource, open, version, write)).await
    }

    /// Rolls back with `reason`: the document keeps its snapshot and the
    /// resource is released. The rollback holds in memory even if the
    /// journal fails to record it (the error is still returned).
    pub async fn rollback(mut self, reason: impl Into<String>) -> Result<(), TxError> {
        self.finished = true;
        let inner = self.inner.clone();
        let (tx, resource) = (self.tx, std::mem::take(&mut self.resource));
        let reason = reason.into();
        detached(inner.rollback(tx, resource, RollbackCause::Requested, reason)).await
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let inner = self.inner.clone();
        let tx = self.tx;
        let resource = std::mem::take(&mut self.resource);
        let reason = "transaction dropped without commit or rollback".to_owned();
        tracing::debug!(tx = %tx, resource = %resource, "transaction dropped; rolling back");
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    inner
                        .rollback(tx, resource, RollbackCause::Dropped, reason)
                        .await
                        .ok();
                });
            }
            Err(_) => inner.rollback_in_memory(tx, &resource, reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::MemoryJournal;
    use crate::record::TxStatus;
    use serde_json::json;

    async fn manager() -> TxManager {
        TxManager::builder(Arc::new(MemoryJournal::new()))
            .open()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_working_copy_is_private_until_commit() {
        let m = manager().await;
        m.put("c", json!({"spec": {"masters": 1}}), 0)
            .await
            .unwrap();
        let mut tx = m
            .begin("c", "scale", "me", "t1", BeginMode::FailFast)
            .await
            .unwrap();
        tx.set("/spec/masters", 3).await.unwrap();
        assert_eq!(tx.get("/spec/masters").unwrap(), Some(json!(3)));
        assert_eq!(m.get("c").unwrap().value, json!({"spec": {"masters": 1}}));
        let done = tx.commit().await.unwrap();
        assert_eq!(done.version, 2);
        assert_eq!(m.get("c").unwrap().value, json!({"spec": {"masters": 3}}));
    }

    #[tokio::test]
    async fn an_invalid_change_leaves_the_transaction_usable() {
        let m = manager().await;
        let mut tx = m
            .begin("c", "op", "me", "t", BeginMode::FailFast)
            .await
            .unwrap();
        tx.set("", json!({"a": 1})).await.unwrap();
        let err = tx.set("/missing/child", 1).await.unwrap_err();
        assert!(matches!(err, TxError::InvalidChange(_)), "{err:?}");
        tx.set("/b", 2).await.unwrap();
        tx.commit().await.unwrap();
        let audit = m.audit("c");
        assert_eq!(
            audit[0].changes.len(),
            2,
            "the refused change is not recorded"
        );
        assert_eq!(m.get("c").unwrap().value, json!({"a": 1, "b": 2}));
    }

    #[tokio::test]
    async fn a_failing_journal_fails_the_commit_and_keeps_the_snapshot() {
        let journal = Arc::new(MemoryJournal::new());
        let m = TxManager::builder(journal.clone()).open().await.unwrap();
        m.put("c", json!({"n": 1}), 0).await.unwrap();
        let mut tx = m
            .begin("c", "op", "me", "t", BeginMode::FailFast)
            .await
            .unwrap();
        tx.set("/n", 2).await.unwrap();
        journal.fail_appends(true);
        let err = tx.commit().await.unwrap_err();
        assert!(matches!(err, TxError::Journal(_)), "{err:?}");
        journal.fail_appends(false);
        assert_eq!(
            m.get("c").unwrap(),
            Document {
                version: 1,
                value: json!({"n": 1})
            }
        );
        let last = m.audit("c").pop().unwrap();
        assert!(matches!(
            last.status,
            TxStatus::RolledBack {
                cause: RollbackCause::JournalFailure,
                ..
            }
        ));
        // The resource is free again.
        m.begin("c", "op", "me", "t", BeginMode::FailFast)
            .await
            .unwrap();
    }
}
