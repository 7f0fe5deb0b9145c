//! Transaction manager behaviour: isolation, locking, timeouts, audit,
//! optimistic puts and recovery.

use std::sync::Arc;
use std::time::Duration;

use keel_tx::{
    BeginMode, ChangeOp, Journal, MemoryJournal, PathProblem, RollbackCause, TxError, TxManager,
    TxStatus,
};
use serde_json::{Value, json};

async fn open(journal: Arc<MemoryJournal>) -> TxManager {
    TxManager::builder(journal)
        .open()
        .await
        .expect("manager opens")
}

#[tokio::test]
async fn set_delete_merge_commit_atomically_with_before_and_after() {
    let m = open(Arc::new(MemoryJournal::new())).await;
    m.put(
        "vm-1",
        json!({"spec": {"cpus": 2, "tags": ["a", "b"]}, "status": {"phase": "Running", "ip": "10.0.0.1"}}),
        0,
    )
    .await
    .unwrap();

    let mut tx = m
        .begin(
            "vm-1",
            "resize",
            "operator@example",
            "trace-1",
            BeginMode::FailFast,
        )
        .await
        .unwrap();
    tx.set("/spec/cpus", 4).await.unwrap();
    tx.set("/spec/tags/-", "c").await.unwrap();
    tx.delete("/spec/tags/0").await.unwrap();
    tx.merge(
        "/status",
        json!({"phase": "Resizing", "ip": null, "since": 5}),
    )
    .await
    .unwrap();
    let committed = tx.commit().await.unwrap();
    assert_eq!((committed.version, committed.changes), (2, 4));

    let doc = m.get("vm-1").unwrap();
    assert_eq!(doc.version, 2);
    assert_eq!(
        doc.value,
        json!({"spec": {"cpus": 4, "tags": ["b", "c"]}, "status": {"phase": "Resizing", "since": 5}})
    );

    let audit = m.audit("vm-1");
    assert_eq!(audit.len(), 2, "the put and the transaction");
    let record = &audit[1];
    assert_eq!(record.operation, "resize");
    assert_eq!(record.owner, "operator@example");
    assert_eq!(record.trace_id, "trace-1");
    assert_eq!(record.base_version, 1);
    assert_eq!(record.status, TxStatus::Committed { version: 2 });
    assert!(record.finished_at.unwrap() >= record.started_at);
    let c = &record.changes;
    assert_eq!((c[0].op, c[0].path.as_str()), (ChangeOp::Set, "/spec/cpus"));
    assert_eq!(
        (c[0].before.clone(), c[0].after.clone()),
        (Some(json!(2)), Some(json!(4)))
    );
    assert_eq!(
        c[1].path, "/spec/tags/2",
        "`-` is recorded as the index it appended at"
    );
    assert_eq!(
        (c[1].before.clone(), c[1].after.clone()),
        (None, Some(json!("c")))
    );
    assert_eq!(
        (c[2].op, c[2].before.clone(), c[2].after.clone()),
        (ChangeOp::Delete, Some(json!("a")), None)
    );
    assert_eq!(c[3].op, ChangeOp::Merge);
    assert_eq!(
        c[3].patch,
        Some(json!({"phase": "Resizing", "ip": null, "since": 5}))
    );
    assert_eq!(
        c[3].before,
        Some(json!({"phase": "Running", "ip": "10.0.0.1"}))
    );
    assert_eq!(c[3].after, Some(json!({"phase": "Resizing", "since": 5})));
}

#[tokio::test]
async fn rollback_restores_the_snapshot_and_records_the_reason() {
    let m = open(Arc::new(MemoryJournal::new())).await;
    m.put("c", json!({"n": 1}), 0).await.unwrap();
    let mut tx = m
        .begin("c", "op", "me", "t", BeginMode::FailFast)
        .await
        .unwrap();
    tx.set("/n", 2).await.unwrap();
    tx.set("/extra", true).await.unwrap();
    tx.rollback("ec2 said no").await.unwrap();
    assert_eq!(m.get("c").unwrap().value, json!({"n": 1}));
    assert_eq!(m.get("c").unwrap().version, 1);
    let last = m.audit("c").pop().unwrap();
    assert_eq!(
        last.status,
        TxStatus::RolledBack {
            cause: RollbackCause::Requested,
            reason: "ec2 said no".into()
        }
    );
    assert_eq!(last.changes.len(), 2);
}

#[tokio::test]
async fn a_new_resource_starts_as_null() {
    let m = open(Arc::new(MemoryJournal::new())).await;
    let mut tx = m
        .begin("fresh", "create", "me", "t", BeginMode::FailFast)
        .await
        .unwrap();
    assert_eq!(tx.document().unwrap(), Value::Null);
    let err = tx.set("/a", 1).await.unwrap_err();
    assert!(
        matches!(&err, TxError::InvalidChange(e) if e.problem == PathProblem::ParentNotContainer),
        "{err:?}"
    );
    tx.merge("", json!({"spec": {"size": 3}})).await.unwrap();
    assert_eq!(tx.commit().await.unwrap().version, 1);
    assert_eq!(m.get("fresh").unwrap().value, json!({"spec": {"size": 3}}));
}

#[tokio::test]
async fn fail_fast_begin_reports_the_holder() {
    let m = open(Arc::new(MemoryJournal::new())).await;
    let tx = m
        .begin("c", "op", "a", "t", BeginMode::FailFast)
        .await
        .unwrap();
    let Err(TxError::ResourceBusy(busy)) = m.begin("c", "op", "b", "t", BeginMode::FailFast).await
    else {
        panic!("second begin must fail");
    };
    assert_eq!(busy.resource, "c");
    assert_eq!(busy.holder, Some(tx.id()));
    assert_eq!(busy.waited, Duration::ZERO);
    // Other resources are independent.
    m.begin("d", "op", "b", "t", BeginMode::FailFast)
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn wait_begin_gets_the_resource_when_the_holder_commits() {
    let m = open(Arc::new(MemoryJournal::new())).await;
    let mut first = m
        .begin("c", "op", "a", "t", BeginMode::FailFast)
        .await
        .unwrap();
    let m2 = m.clone();
    let waiter = tokio::spawn(async move {
        let mut tx = m2
            .begin(
                "c",
                "op",
                "b",
                "t",
                BeginMode::Wait(Duration::from_secs(10)),
            )
            .await
            .unwrap();
        // It sees the first transaction's commit.
        let n = tx.get("/n").unwrap();
        tx.set("/n", 2).await.unwrap();
        tx.commit().await.unwrap();
        n
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!waiter.is_finished());
    first.set("", json!({"n": 1})).await.unwrap();
    first.commit().await.unwrap();
    assert_eq!(waiter.await.unwrap(), Some(json!(1)));
    assert_eq!(m.get("c").unwrap().version, 2);
}

#[tokio::test(start_paused = true)]
async fn wait_begin_times_out_with_resource_busy() {
    let m = open(Arc::new(MemoryJournal::new())).await;
    let _held = m
        .begin("c", "op", "a", "t", BeginMode::FailFast)
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let Err(TxError::ResourceBusy(busy)) = m
        .begin("c", "op", "b", "t", BeginMode::Wait(Duration::from_secs(7)))
        .await
    else {
        panic!("must time out");
    };
    assert_eq!(started.elapsed(), Duration::from_secs(7));
    assert_eq!(busy.waited, Duration::from_secs(7));
}

#[tokio::test(start_paused = true)]
async fn the_reaper_rolls_back_abandoned_transactions_after_the_timeout() {
    let m = TxManager::builder(Arc::new(MemoryJournal::new()))
        .reap_interval(Duration::from_secs(1))
        .open()
        .await
        .unwrap();
    m.put("c", json!({"n": 0}), 0).await.unwrap();
    let mut tx = m
        .begin("c", "stuck", "me", "t", BeginMode::FailFast)
        .await
        .unwrap();
    tx.set("/n", 99).await.unwrap();

    // Just before the default 30 minutes it is still open.
    tokio::time::sleep(Duration::from_secs(30 * 60 - 2)).await;
    assert_eq!(m.open_transactions().len(), 1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(m.open_transactions().is_empty(), "reaped");

    let last = m.audit("c").pop().unwrap();
    assert!(
        matches!(&last.status, TxStatus::RolledBack { cause: RollbackCause::TimedOut, reason } if reason.contains("1800s")),
        "{last:?}"
    );
    assert_eq!(m.get("c").unwrap().value, json!({"n": 0}));
    // The resource is free, and the stale handle can no longer commit.
    let err = tx.set("/n", 100).await.unwrap_err();
    assert!(matches!(err, TxError::TransactionClosed(_)), "{err:?}");
    let Err(TxError::TransactionClosed(closed)) = tx.commit().await else {
        panic!("commit after timeout must fail");
    };
    assert!(matches!(
        closed.status,
        Some(TxStatus::RolledBack {
            cause: RollbackCause::TimedOut,
            ..
        })
    ));
    m.begin("c", "next", "me", "t", BeginMode::FailFast)
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_custom_timeout_is_honoured() {
    let m = TxManager::builder(Arc::new(MemoryJournal::new()))
        .transaction_timeout(Duration::from_secs(60))
        .reap_interval(Duration::from_secs(1))
        .open()
        .await
        .unwrap();
    let _tx = m
        .begin("c", "op", "me", "t", BeginMode::FailFast)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(59)).await;
    assert_eq!(m.open_transactions().len(), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(m.open_transactions().is_empty());
}

#[tokio::test]
async fn dropping_a_transaction_rolls_it_back() {
    let m = open(Arc::new(MemoryJournal::new())).await;
    {
        let mut tx = m
            .begin("c", "op", "me", "t", BeginMode::FailFast)
            .await
            .unwrap();
        tx.set("", json!({"half": "done"})).await.unwrap();
    }
    // The rollback runs on a spawned task; waiting for the lock proves it ran.
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
    assert_eq!(tx.document().unwrap(), Value::Null);
    let first = &m.audit("c")[0];
    assert!(matches!(
        first.status,
        TxStatus::RolledBack {
            cause: RollbackCause::Dropped,
            ..
        }
    ));
}

#[tokio::test]
async fn put_is_optimistic_and_respects_open_transactions() {
    let m = open(Arc::new(MemoryJournal::new())).await;
    assert_eq!(m.put("c", json!({"v": 1}), 0).await.unwrap(), 1);
    assert_eq!(m.put("c", json!({"v": 2}), 1).await.unwrap(), 2);
    let Err(TxError::VersionConflict(conflict)) = m.put("c", json!({"v": 3}), 1).await else {
        panic!("stale version must conflict");
    };
    assert_eq!((conflict.expected, conflict.actual), (1, 2));
    let Err(TxError::VersionConflict(conflict)) = m.put("new", json!({}), 5).await else {
        panic!("a missing resource is version 0");
    };
    assert_eq!(conflict.actual, 0);

    let tx = m
        .begin("c", "op", "me", "t", BeginMode::FailFast)
        .await
        .unwrap();
    let err = m.put("c", json!({"v": 3}), 2).await.unwrap_err();
    assert!(matches!(err, TxError::ResourceBusy(_)), "{err:?}");
    tx.rollback("done").await.unwrap();
    assert_eq!(m.put("c", json!({"v": 3}), 2).await.unwrap(), 3);

    let audit = m.audit("c");
    assert_eq!(audit.len(), 4);
    assert_eq!(audit[0].operation, "put");
    assert_eq!(audit[1].changes[0].before, Some(json!({"v": 1})));
    assert_eq!(audit[1].changes[0].after, Some(json!({"v": 2})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_transactions_on_one_resource_serialize() {
    let m = open(Arc::new(MemoryJournal::new())).await;
    m.put("counter", json!({"n": 0}), 0).await.unwrap();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let m = m.clone();
            tokio::spawn(async move {
                let mut tx = m
                    .begin(
                        "counter",
                        "increment",
                        format!("worker-{i}"),
                        "t",
                        BeginMode::Wait(Duration::from_secs(30)),
                    )
                    .await
                    .unwrap();
                let n = tx.get("/n").unwrap().unwrap().as_u64().unwrap();
                tokio::task::yield_now().await;
                tx.set("/n", n + 1).await.unwrap();
                tx.commit().await.unwrap();
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let doc = m.get("counter").unwrap();
    assert_eq!(doc.value, json!({"n": 50}), "no lost update");
    assert_eq!(doc.version, 51);
}

#[tokio::test]
async fn cancelling_a_commit_still_commits_atomically() {
    let m = open(Arc::new(MemoryJournal::new())).await;
    let mut tx = m
        .begin("c", "op", "me", "t", BeginMode::FailFast)
        .await
        .unwrap();
    tx.set("", json!({"done": true})).await.unwrap();
    // Poll the commit once, then drop it: the detached task finishes it.
    let commit = tx.commit();
    let _ = tokio::time::timeout(Duration::ZERO, commit).await;
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
}

#[tokio::test]
async fn recovery_rolls_back_what_was_open_and_keeps_what_was_committed() {
    let journal = Arc::new(MemoryJournal::new());
    {
        let m = open(journal.clone()).await;
        let mut tx = m
            .begin("a", "create", "me", "t1", BeginMode::FailFast)
            .await
            .unwrap();
        tx.set("", json!({"ready": true})).await.unwrap();
        tx.commit().await.unwrap();
        let mut open_tx = m
            .begin("a", "update", "me", "t2", BeginMode::FailFast)
            .await
            .unwrap();
        open_tx.set("/ready", false).await.unwrap();
        let mut other = m
            .begin("b", "create", "me", "t3", BeginMode::FailFast)
            .await
            .unwrap();
        other.set("", json!(1)).await.unwrap();
        // A crash: the handles vanish without rollback, the journal keeps
        // the begin and change records.
        std::mem::forget(open_tx);
        std::mem::forget(other);
    }
    assert_eq!(journal.load().await.unwrap().open.len(), 2);

    let m = open(journal.clone()).await;
    assert_eq!(m.recovered().len(), 2);
    for audit in m.recovered() {
        assert!(matches!(
            audit.status,
            TxStatus::RolledBack {
                cause: RollbackCause::Recovery,
                ..
            }
        ));
        assert_eq!(
            audit.changes.len(),
            1,
            "the changes it had made are in the audit"
        );
    }
    assert_eq!(m.get("a").unwrap().value, json!({"ready": true}));
    assert_eq!(m.get("a").unwrap().version, 1);
    assert!(m.get("b").is_none());
    assert!(m.open_transactions().is_empty());
    assert!(
        journal.load().await.unwrap().open.is_empty(),
        "the rollbacks are journaled"
    );
    m.begin("a", "op", "me", "t", BeginMode::FailFast)
        .await
        .unwrap();
}

#[tokio::test]
async fn invalid_configuration_names_the_field() {
    let err = TxManager::builder(Arc::new(MemoryJournal::new()))
        .transaction_timeout(Duration::ZERO)
        .open()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, TxError::Config(c) if c.field() == "transaction_timeout"),
        "{err:?}"
    );
    let err = TxManager::builder(Arc::new(MemoryJournal::new()))
        .reap_interval(Duration::ZERO)
        .open()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, TxError::Config(c) if c.field() == "reap_interval"),
        "{err:?}"
    );
    let err = TxManager::builder(Arc::new(MemoryJournal::new()))
        .audit_retention(0)
        .open()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, TxError::Config(c) if c.field() == "audit_retention"),
        "{err:?}"
    );
}

#[tokio::test]
async fn audit_retention_bounds_memory() {
    let m = TxManager::builder(Arc::new(MemoryJournal::new()))
        .audit_retention(3)
        .open()
        .await
        .unwrap();
    for v in 0..10 {
        m.put("c", json!(v), v).await.unwrap();
    }
    let audit = m.audit("c");
    assert_eq!(audit.len(), 3);
    assert_eq!(audit[2].status, TxStatus::Committed { version: 10 });
}

#[cfg(feature = "metrics")]
#[tokio::test(start_paused = true)]
async fn metrics_count_transactions() {
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    let metrics = keel_tx::TxMetrics::new();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let m = TxManager::builder(Arc::new(MemoryJournal::new()))
        .transaction_timeout(Duration::from_secs(10))
        .reap_interval(Duration::from_secs(1))
        .metrics(metrics.clone())
        .open()
        .await
        .unwrap();
    m.begin("a", "op", "me", "t", BeginMode::FailFast)
        .await
        .unwrap()
        .commit()
        .await
        .unwrap();
    m.begin("a", "op", "me", "t", BeginMode::FailFast)
        .await
        .unwrap()
        .rollback("no")
        .await
        .unwrap();
    let _abandoned = m
        .begin("b", "op", "me", "t", BeginMode::FailFast)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(12)).await;

    assert_eq!(metrics.begun(), 3);
    assert_eq!(metrics.committed(), 1);
    assert_eq!(metrics.rolled_back(RollbackCause::Requested), 1);
    assert_eq!(metrics.rolled_back(RollbackCause::TimedOut), 1);
    assert_eq!(metrics.timed_out(), 1);
    let mut text = String::new();
    encode(&mut text, &registry).unwrap();
    assert!(text.contains("transactions_begun_total 3"), "{text}");
    assert!(
        text.contains("transactions_rolled_back_total{cause=\"timed_out\"} 1"),
        "{text}"
    );
    assert!(text.contains("transactions_timed_out_total 1"), "{text}");
}
