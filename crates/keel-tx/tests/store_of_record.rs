//! A store of record outside the journal: `Transaction::commit_through`
//! (commit only if an external write succeeds) and `TxManager::sync`
//! (follow the store of record).

use std::sync::Arc;
use std::time::Duration;

use keel_tx::{
    BeginMode, ChangeOp, MemoryJournal, Record, RollbackCause, TxError, TxManager, TxStatus,
};
use parking_lot::Mutex;
use serde_json::{Value, json};

/// Stands in for S3: the last document written and its version.
#[derive(Clone, Default)]
struct Store {
    object: Arc<Mutex<Option<(Value, u64)>>>,
}

impl Store {
    fn get(&self) -> Option<(Value, u64)> {
        self.object.lock().clone()
    }
}

#[derive(Debug)]
struct PreconditionFailed;

impl std::fmt::Display for PreconditionFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("412 PreconditionFailed")
    }
}

impl std::error::Error for PreconditionFailed {}

async fn open(journal: Arc<MemoryJournal>) -> TxManager {
    TxManager::builder(journal)
        .open()
        .await
        .expect("manager opens")
}

fn last_status(m: &TxManager, resource: &str) -> TxStatus {
    m.audit(resource).pop().expect("an audit record").status
}

#[tokio::test]
async fn commit_through_writes_the_new_document_before_the_commit_marker() {
    let journal = Arc::new(MemoryJournal::recording());
    let m = open(journal.clone()).await;
    m.put("c", json!({"spec": {"masters": 1}}), 0)
        .await
        .unwrap();
    let mut tx = m
        .begin("c", "scaleUp", "me", "t", BeginMode::FailFast)
        .await
        .unwrap();
    tx.set("/spec/masters", 3).await.unwrap();
    let id = tx.id();

    let store = Store::default();
    let seen = store.clone();
    let journal_at_write = journal.clone();
    let committed = tx
        .commit_through(move |doc, version| {
            let doc = doc.clone();
            async move {
                // The change is journaled, the commit marker is not yet.
                let records = journal_at_write.records();
                assert!(matches!(records.last(), Some(Record::Change { tx, .. }) if *tx == id));
                assert!(
                    !records
                        .iter()
                        .any(|r| matches!(r, Record::Commit { tx, .. } if *tx == id))
                );
                *seen.object.lock() = Some((doc, version));
                Ok::<_, PreconditionFailed>(())
            }
        })
        .await
        .unwrap();

    assert_eq!(
        (committed.tx, committed.version, committed.changes),
        (id, 2, 1)
    );
    assert_eq!(store.get(), Some((json!({"spec": {"masters": 3}}), 2)));
    let doc = m.get("c").unwrap();
    assert_eq!(
        (doc.version, doc.value),
        (2, json!({"spec": {"masters": 3}}))
    );
    assert_eq!(last_status(&m, "c"), TxStatus::Committed { version: 2 });
    assert!(matches!(
        journal.records().last(),
        Some(Record::Commit { tx, version: 2, .. }) if *tx == id
    ));
}

#[tokio::test]
async fn a_failed_external_write_rolls_back_keeps_the_snapshot_and_frees_the_resource() {
    let journal = Arc::new(MemoryJournal::recording());
    let m = open(journal.clone()).await;
    m.put("c", json!({"spec": {"masters": 1}}), 0)
        .await
        .unwrap();
    let mut tx = m
        .begin("c", "scaleUp", "me", "t", BeginMode::FailFast)
        .await
        .unwrap();
    tx.set("/spec/masters", 3).await.unwrap();
    let id = tx.id();

    let err = tx
        .commit_through(|_, _| async { Err::<(), _>(PreconditionFailed) })
        .await
        .unwrap_err();
    let TxError::ExternalWrite(failed) = err else {
        panic!("expected an external write error, got {err:?}");
    };
    assert_eq!((failed.resource(), failed.tx()), ("c", id));
    assert!(
        failed
            .into_source()
            .downcast::<PreconditionFailed>()
            .is_ok()
    );

    let doc = m.get("c").unwrap();
    assert_eq!(
        (doc.version, doc.value),
        (1, json!({"spec": {"masters": 1}}))
    );
    let audit = m.audit("c").pop().unwrap();
    assert_eq!(audit.tx, id);
    assert_eq!(
        audit.status,
        TxStatus::RolledBack {
            cause: RollbackCause::ExternalWrite,
            reason: "412 PreconditionFailed".into()
        }
    );
    assert_eq!(audit.changes.len(), 1, "the change stays in the audit");
    assert!(
        !journal
            .records()
            .iter()
            .any(|r| matches!(r, Record::Commit { tx, .. } if *tx == id))
    );

    // The resource is free again.
    let mut tx = m
        .begin("c", "retry", "me", "t", BeginMode::FailFast)
        .await
        .unwrap();
    tx.set("/spec/masters", 3).await.unwrap();
    let committed = tx
        .commit_through(|_, _| async { Ok::<_, &str>(()) })
        .await
        .unwrap();
    assert_eq!(committed.version, 2);
}

#[tokio::test]
async fn a_journal_failure_after_the_write_rolls_back_and_sync_follows_the_store() {
    let journal = Arc::new(MemoryJournal::new());
    let m = open(journal.clone()).await;
    m.put("c", json!({"n": 1}), 0).await.unwrap();
    let mut tx = m
        .begin("c", "op", "me", "t", BeginMode::FailFast)
        .await
        .unwrap();
    tx.set("/n", 2).await.unwrap();

    let store = Store::default();
    let written = store.clone();
    let failing = journal.clone();
    let err = tx
        .commit_through(move |doc, version| {
            let doc = doc.clone();
            async move {
                *written.object.lock() = Some((doc, version));
                // The disk fills up between the write and the commit marker.
                failing.fail_appends(true);
                Ok::<_, &str>(())
            }
        })
        .await
        .unwrap_err();
    assert!(matches!(err, TxError::Journal(_)), "{err:?}");
    journal.fail_appends(false);
    assert!(matches!(
        last_status(&m, "c"),
        TxStatus::RolledBack {
            cause: RollbackCause::JournalFailure,
            ..
        }
    ));
    assert_eq!(m.get("c").unwrap().version, 1);

    // The store of record wins: re-read it and sync.
    let (object, version) = store.get().unwrap();
    assert_eq!((&object, version), (&json!({"n": 2}), 2));
    assert_eq!(m.sync("c", object).await.unwrap(), 2);
    assert_eq!(m.get("c").unwrap().value, json!({"n": 2}));
}

#[tokio::test]
async fn cancelling_commit_through_still_finishes_it() {
    let m = open(Arc::new(MemoryJournal::new())).await;
    let mut tx = m
        .begin("c", "op", "me", "t", BeginMode::FailFast)
        .await
        .unwrap();
    tx.set("", json!({"done": true})).await.unwrap();
    let release = Arc::new(tokio::sync::Notify::new());
    let wait = release.clone();
    // Poll once (the write starts and waits), then drop the caller's future.
    let commit = tx.commit_through(move |_, _| async move {
        wait.notified().await;
        Ok::<_, &str>(())
    });
    let _ = tokio::time::timeout(Duration::ZERO, commit).await;
    release.notify_one();
    let tx = m
        .begin(
            "c",
            "op",
            "me",
            "t",
            BeginMode::Wait(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    assert_eq!(tx.document().unwrap(), json!({"done": true}));
    assert_eq!(m.get("c").unwrap().version, 1);
}

#[tokio::test]
async fn a_panicking_write_rolls_back_and_panics_in_the_caller() {
    let m = open(Arc::new(MemoryJournal::new())).await;
    let tx = m
        .begin("c", "op", "me", "t", BeginMode::FailFast)
        .await
        .unwrap();
    let caller = tokio::spawn(tx.commit_through(|_, _| async {
        if true {
            panic!("store client bug");
        }
        Ok::<_, &str>(())
    }));
    assert!(caller.await.unwrap_err().is_panic());
    assert!(matches!(
        last_status(&m, "c"),
        TxStatus::RolledBack {
            cause: RollbackCause::ExternalWrite,
            ..
        }
    ));
    m.begin("c", "op", "me", "t", BeginMode::FailFast)
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn commit_through_on_a_reaped_transaction_never_writes() {
    let m = TxManager::builder(Arc::new(MemoryJournal::new()))
        .transaction_timeout(Duration::from_secs(10))
        .reap_interval(Duration::from_secs(1))
        .open()
        .await
        .unwrap();
    let tx = m
        .begin("c", "op", "me", "t", BeginMode::FailFast)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(12)).await;
    let called = Arc::new(Mutex::new(false));
    let flag = called.clone();
    let err = tx
        .commit_through(move |_, _| {
            *flag.lock() = true;
            async { Ok::<_, &str>(()) }
        })
        .await
        .unwrap_err();
    assert!(matches!(err, TxError::TransactionClosed(_)), "{err:?}");
    assert!(!*called.lock());
}

#[tokio::test]
async fn sync_writes_only_a_different_document_whatever_the_version() {
    let m = open(Arc::new(MemoryJournal::new())).await;

    // Absent: created as version 1.
    assert_eq!(m.sync("c", json!({"n": 1})).await.unwrap(), 1);
    assert_eq!(m.audit("c").len(), 1);

    // Equal: nothing written.
    assert_eq!(m.sync("c", json!({"n": 1})).await.unwrap(), 1);
    assert_eq!(m.audit("c").len(), 1);

    // Different: the next version, audited like a put.
    m.put("c", json!({"n": 5}), 1).await.unwrap();
    assert_eq!(m.sync("c", json!({"n": 2})).await.unwrap(), 3);
    let doc = m.get("c").unwrap();
    assert_eq!((doc.version, doc.value), (3, json!({"n": 2})));
    let audit = m.audit("c").pop().unwrap();
    assert_eq!(audit.operation, "put");
    assert_eq!(audit.base_version, 2);
    assert_eq!(audit.status, TxStatus::Committed { version: 3 });
    assert_eq!(audit.changes.len(), 1);
    assert_eq!(audit.changes[0].op, ChangeOp::Set);
    assert_eq!(audit.changes[0].before, Some(json!({"n": 5})));
    assert_eq!(audit.changes[0].after, Some(json!({"n": 2})));
}

#[tokio::test]
async fn sync_is_refused_while_a_transaction_holds_the_resource() {
    let m = open(Arc::new(MemoryJournal::new())).await;
    m.put("c", json!({"n": 1}), 0).await.unwrap();
    let tx = m
        .begin("c", "op", "me", "t", BeginMode::FailFast)
        .await
        .unwrap();
    let err = m.sync("c", json!({"n": 2})).await.unwrap_err();
    let TxError::ResourceBusy(busy) = err else {
        panic!("expected ResourceBusy, got {err:?}");
    };
    assert_eq!(busy.holder, Some(tx.id()));
    tx.rollback("done").await.unwrap();
    assert_eq!(m.sync("c", json!({"n": 2})).await.unwrap(), 2);
}

#[cfg(feature = "metrics")]
#[tokio::test]
async fn metrics_count_external_write_rollbacks() {
    let metrics = keel_tx::TxMetrics::new();
    let m = TxManager::builder(Arc::new(MemoryJournal::new()))
        .metrics(metrics.clone())
        .open()
        .await
        .unwrap();
    let tx = m
        .begin("c", "op", "me", "t", BeginMode::FailFast)
        .await
        .unwrap();
    tx.commit_through(|_, _| async { Err::<(), _>("503 SlowDown") })
        .await
        .unwrap_err();
    let tx = m
        .begin("c", "op", "me", "t", BeginMode::FailFast)
        .await
        .unwrap();
    tx.commit_through(|_, _| async { Ok::<_, &str>(()) })
        .await
        .unwrap();
    assert_eq!(metrics.rolled_back(RollbackCause::ExternalWrite), 1);
    assert_eq!(metrics.committed(), 1);
}
