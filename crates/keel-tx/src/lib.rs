//! Atomic state transactions over JSON documents, and sagas with a durable
//! journal.
//!
//! Use `keel-tx` when a program keeps the state of what it manages (a
//! cluster, a VM) as a JSON document per resource and must never leave it
//! half-updated, and when a change involves calls outside the document
//! (create instances, register DNS) that must be undone if a later step
//! fails.
//!
//! * [`TxManager`]: [`begin`](TxManager::begin) a transaction on a resource
//!   (one at a time per resource; a second waits or fails per
//!   [`BeginMode`]), record [`set`](Transaction::set),
//!   [`delete`](Transaction::delete) and [`merge`](Transaction::merge)
//!   changes at JSON Pointers (RFC 6901; merge is an RFC 7396 merge patch),
//!   then [`commit`](Transaction::commit) atomically (or
//!   [`commit_through`](Transaction::commit_through) a conditional write to
//!   a store of record outside the journal) or
//!   [`rollback`](Transaction::rollback) to the snapshot. Writers outside
//!   transactions use [`put`](TxManager::put) with a version (optimistic
//!   concurrency), or [`sync`](TxManager::sync) to follow the store of
//!   record. A reaper rolls back transactions left open past their
//!   timeout (30 minutes by default). Every transaction leaves an
//!   [`AuditRecord`]: who, when, what, the trace id, each change with before
//!   and after values, and how it ended.
//! * [`SagaExecutor`]: runs a [`Saga`] of registered [`Step`]s, each an
//!   action and a compensation under its own [`keel_retry::RetryPolicy`],
//!   with an [`idempotency_key`] derived from the saga id and step name. On
//!   failure the completed steps are compensated in reverse order (or in
//!   parallel, optionally continuing past a failed compensation).
//! * [`Journal`]: both write ahead to it, so after a crash the manager rolls
//!   back what was not committed and keeps what was, and the executor
//!   resumes unfinished sagas. [`FileJournal`] (checksummed JSON lines,
//!   `fsync` at commit points, atomic checkpoints) for one process;
//!   [`MemoryJournal`] for tests; `PostgresJournal` (feature `postgres`) for
//!   replicas sharing state.
//!
//! # Durability of the file journal
//!
//! [`FileJournal`]'s [`SyncPolicy`] is a stated choice:
//! [`SyncPolicy::Full`] (the default) waits for `fdatasync` before a commit
//! is acknowledged, so acknowledged commits survive an OS crash or power
//! loss; [`SyncPolicy::Normal`] only writes, so they survive the process
//! being killed but an OS crash may lose the last few seconds of them.
//! Under both, a record is read back whole or not at all: each line carries
//! a CRC-32 chained from the line before, a torn tail is cut off at open and
//! never replayed, and damage before the end refuses the open
//! ([`JournalErrorKind::Corrupt`], naming the file and byte offset) rather
//! than skip a record that may have been committed.
//!
//! # A transaction
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use keel_tx::{BeginMode, FileJournal, TxError, TxManager, TxStatus};
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), TxError> {
//! let dir = tempfile::tempdir().unwrap();
//! let journal = Arc::new(FileJournal::open(dir.path())?);
//! let manager = TxManager::builder(journal).open().await?;
//! manager.put("cluster-a", json!({"spec": {"masters": 1}, "status": {}}), 0).await?;
//!
//! let mut tx = manager
//!     .begin("cluster-a", "scaleUp", "controller-1", "trace-42", BeginMode::Wait(Duration::from_secs(5)))
//!     .await?;
//! tx.set("/spec/masters", 3).await?;
//! tx.merge("/status", json!({"phase": "Scaling"})).await?;
//!
//! // One transaction per resource: a second one fails fast while this is open.
//! let busy = manager.begin("cluster-a", "other", "me", "t", BeginMode::FailFast).await;
//! assert!(matches!(busy, Err(TxError::ResourceBusy(_))));
//!
//! let committed = tx.commit().await?;
//! assert_eq!(committed.version, 2);
//! let doc = manager.get("cluster-a").unwrap();
//! assert_eq!(doc.value, json!({"spec": {"masters": 3}, "status": {"phase": "Scaling"}}));
//!
//! // A rollback restores the snapshot; the audit trail keeps both.
//! let mut tx = manager.begin("cluster-a", "scaleDown", "controller-1", "trace-43", BeginMode::FailFast).await?;
//! tx.delete("/status/phase").await?;
//! tx.rollback("health check failed").await?;
//! assert_eq!(manager.get("cluster-a").unwrap().version, 2);
//! let audit = manager.audit("cluster-a");
//! assert_eq!(audit[1].changes[0].after, Some(json!(3)));
//! assert!(matches!(audit[2].status, TxStatus::RolledBack { .. }));
//!
//! // Writers outside transactions name the version they read.
//! let stale = manager.put("cluster-a", json!({}), 1).await;
//! assert!(matches!(stale, Err(TxError::VersionConflict(_))));
//! # Ok(()) }
//! ```
//!
//! # A store of record outside the journal
//!
//! When the document's store of record is elsewhere (an S3 object written
//! with a conditional `PutObject` on its `ETag`, a database row),
//! [`commit_through`](Transaction::commit_through) makes the commit depend
//! on that write: it runs the write with the would-be document and version
//! after the changes are journaled and before the commit marker, commits if
//! it succeeds and rolls back ([`RollbackCause::ExternalWrite`],
//! [`TxError::ExternalWrite`]) if it fails. The store of record wins and the
//! journal is the write-ahead audit and working copy: if the commit marker
//! cannot be written after a successful write, or the process stops between
//! the two, the transaction is rolled back while the store holds the new
//! document, so re-read the store and hand its document to
//! [`sync`](TxManager::sync), which replaces the journal's copy whatever its
//! version (and writes nothing when they are equal).
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use keel_tx::{BeginMode, MemoryJournal, RollbackCause, TxError, TxManager, TxStatus};
//! use serde_json::{Value, json};
//!
//! /// Stands in for S3: one object and its ETag (here, the version), and a
//! /// number of requests to fail first.
//! #[derive(Default)]
//! struct Bucket { object: Mutex<Option<(Value, u64)>>, outages: AtomicU32 }
//!
//! impl Bucket {
//!     fn put_if_match(&self, etag: u64, value: Value, new_etag: u64) -> Result<(), String> {
//!         if self.outages.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
//!             return Err("503 SlowDown".into());
//!         }
//!         let mut object = self.object.lock().unwrap();
//!         if object.as_ref().map_or(0, |(_, e)| *e) != etag {
//!             return Err("412 PreconditionFailed".into());
//!         }
//!         *object = Some((value, new_etag));
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), TxError> {
//! let bucket = Arc::new(Bucket { outages: AtomicU32::new(1), ..Bucket::default() });
//! let manager = TxManager::builder(Arc::new(MemoryJournal::new())).open().await?;
//!
//! for attempt in 1.. {
//!     let mut tx = manager.begin("cluster-a", "create", "controller-1", "trace-7", BeginMode::FailFast).await?;
//!     tx.set("", json!({"spec": {"masters": 3}})).await?;
//!     let bucket = bucket.clone();
//!     // Called once with the document and version the commit would produce;
//!     // the commit marker is written only if its future returns `Ok`.
//!     let result = tx
//!         .commit_through(|doc, version| {
//!             let doc = doc.clone();
//!             async move { bucket.put_if_match(version - 1, doc, version) }
//!         })
//!         .await;
//!     match result {
//!         Ok(committed) => {
//!             assert_eq!((attempt, committed.version), (2, 1));
//!             break;
//!         }
//!         // Rolled back: nothing committed, and the resource is free again.
//!         Err(TxError::ExternalWrite(failed)) => {
//!             assert_eq!(failed.resource(), "cluster-a");
//!             assert!(manager.get("cluster-a").is_none());
//!         }
//!         Err(other) => return Err(other),
//!     }
//! }
//! let audit = manager.audit("cluster-a");
//! assert!(matches!(
//!     &audit[0].status,
//!     TxStatus::RolledBack { cause: RollbackCause::ExternalWrite, reason } if reason == "503 SlowDown"
//! ));
//! assert_eq!(audit[1].status, TxStatus::Committed { version: 1 });
//!
//! // At start-up (or after a failed commit), the store of record wins.
//! let (object, _etag) = bucket.object.lock().unwrap().clone().unwrap();
//! assert_eq!(manager.sync("cluster-a", object).await?, 1, "equal: nothing written");
//! # Ok(()) }
//! ```
//!
//! # A saga
//!
//! ```
//! use std::sync::Arc;
//! use keel_retry::RetryPolicy;
//! use keel_tx::{MemoryJournal, Saga, SagaExecutor, SagaRegistry, SagaStatus, Step, TxError};
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), TxError> {
//! let no_retry = RetryPolicy::builder().max_retries(0).build().unwrap();
//! let registry = SagaRegistry::new()
//!     .register(
//!         Step::new("create_vpc", |ctx| async move {
//!             // Pass ctx.idempotency_key() to the cloud call as its client token.
//!             Ok::<_, &str>(json!({"vpc": format!("vpc-{}", &ctx.idempotency_key()[..8])}))
//!         })
//!         .compensate(|ctx| async move {
//!             assert!(ctx.output().unwrap()["vpc"].as_str().unwrap().starts_with("vpc-"));
//!             Ok::<_, &str>(())
//!         })
//!         .retry(no_retry.clone()),
//!     )
//!     .register(
//!         Step::new("create_instances", |_ctx| async { Err::<(), _>("quota exceeded") })
//!             .retry(no_retry),
//!     );
//! let executor = SagaExecutor::builder(Arc::new(MemoryJournal::new()), registry).open().await?;
//!
//! let saga = Saga::new("cluster-a/create").step("create_vpc").step("create_instances");
//! let report = executor.run(saga).await?;
//! assert_eq!(report.status(), Some(SagaStatus::Compensated));
//! assert_eq!(report.compensated_steps(), ["create_vpc"]);
//! assert_eq!(report.steps[1].error.as_deref(), Some("quota exceeded"));
//! # Ok(()) }
//! ```
//!
//! # Features
//! * `postgres`: `PostgresJournal` (sqlx), for several replicas sharing one
//!   state; tables are created when it connects.
//! * `metrics`: `TxMetrics`, prometheus-client counters for transactions,
//!   saga steps and compensations.
//! * `fuzzing`: the properties the `journal` fuzz targets check (hidden;
//!   `fuzz/` and `tests/fuzz_replay.rs`).

mod config;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod journal;
mod manager;
mod metrics;
mod pointer;
mod record;
mod saga;
mod state;

pub use config::{BeginMode, TxManagerBuilder};
pub use error::{
    ConfigError, ExternalWriteFailed, InvalidChange, InvalidSaga, JournalError, JournalErrorKind,
    PathProblem, ResourceBusy, SagaInProgress, TransactionClosed, TxError, UnknownStep,
    VersionConflict,
};
pub use journal::{
    Durability, FileJournal, FileJournalBuilder, Journal, MemoryJournal, SyncPolicy,
};
#[cfg(feature = "postgres")]
pub use journal::{PostgresJournal, PostgresJournalBuilder};
pub use manager::{Committed, Transaction, TxManager};
#[cfg(feature = "metrics")]
pub use metrics::{
    SAGA_COMPENSATION_FAILURES, SAGA_COMPENSATIONS, SAGA_STEPS, TRANSACTIONS_BEGUN,
    TRANSACTIONS_COMMITTED, TRANSACTIONS_ROLLED_BACK, TRANSACTIONS_TIMED_OUT, TxMetrics,
};
pub use record::{AuditRecord, Change, ChangeOp, Document, Record, RollbackCause, TxId, TxStatus};
pub use saga::{
    CompensationContext, ResumeMode, Saga, SagaEvent, SagaExecutor, SagaExecutorBuilder,
    SagaOptions, SagaPhase, SagaRegistry, SagaReport, SagaStatus, Step, StepContext, StepProgress,
    StepState, idempotency_key,
};
pub use state::{JournalState, Retention};
