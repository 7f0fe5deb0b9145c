//! The PostgreSQL journal against a real server (feature `postgres`).
//!
//! Needs PostgreSQL at `postgres://postgres@127.0.0.1:5432/test` (or
//! `KEEL_TEST_POSTGRES_URL`). Each test works in its own schema, dropped at
//! the end. Two journals over one schema stand for two replicas.

#![cfg(feature = "postgres")]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use keel_retry::RetryPolicy;
use keel_tx::{
    BeginMode, Journal, PostgresJournal, RollbackCause, Saga, SagaExecutor, SagaRegistry, Step,
    TxError, TxManager, TxStatus,
};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;

fn url() -> String {
    std::env::var("KEEL_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Runs `body` with a fresh schema name and drops the schema afterwards,
/// even if the body panics.
async fn with_schema<F, Fut>(body: F)
where
    F: FnOnce(String, String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let url = url();
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&url)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is not reachable at {url} ({e}). Start it with \
                 `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, \
                 or point KEEL_TEST_POSTGRES_URL at a server"
            )
        });
    let schema = format!("keel_tx_test_{}", uuid::Uuid::new_v4().simple());
    let result = tokio::spawn(body(url, schema.clone())).await;
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(&admin)
        .await
        .unwrap();
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn journal(url: &str, schema: &str) -> Arc<PostgresJournal> {
    Arc::new(
        PostgresJournal::builder(url)
            .schema(schema)
            .max_connections(4)
            .connect()
            .await
            .unwrap(),
    )
}

async fn manager(journal: Arc<PostgresJournal>) -> TxManager {
    TxManager::builder(journal).open().await.unwrap()
}

#[tokio::test]
async fn a_restarted_replica_keeps_commits_and_rolls_back_open_transactions() {
    with_schema(|url, schema| async move {
        let first = manager(journal(&url, &schema).await).await;
        first
            .put("cluster-a", json!({"spec": {"masters": 1}}), 0)
            .await
            .unwrap();
        let mut tx = first
            .begin(
                "cluster-a",
                "scaleUp",
                "replica-1",
                "t1",
                BeginMode::FailFast,
            )
            .await
            .unwrap();
        tx.set("/spec/masters", 3).await.unwrap();
        tx.commit().await.unwrap();
        let mut open = first
            .begin(
                "cluster-a",
                "scaleDown",
                "replica-1",
                "t2",
                BeginMode::FailFast,
            )
            .await
            .unwrap();
        open.set("/spec/masters", 0).await.unwrap();
        // Replica 1 dies with the transaction open.
        std::mem::forget(open);

        let second = manager(journal(&url, &schema).await).await;
        assert_eq!(second.recovered().len(), 1);
        assert_eq!(second.recovered()[0].changes.len(), 1);
        assert!(matches!(
            second.recovered()[0].status,
            TxStatus::RolledBack {
                cause: RollbackCause::Recovery,
                ..
            }
        ));
        let doc = second.get("cluster-a").unwrap();
        assert_eq!(
            (doc.version, doc.value),
            (2, json!({"spec": {"masters": 3}}))
        );
        let audit = second.audit("cluster-a");
        assert_eq!(audit.len(), 3);
        assert_eq!(audit[1].owner, "replica-1");
        // The resource lock in the database was released by the recovery.
        let mut tx = second
            .begin("cluster-a", "next", "replica-2", "t3", BeginMode::FailFast)
            .await
            .unwrap();
        tx.set("/spec/masters", 5).await.unwrap();
        assert_eq!(tx.commit().await.unwrap().version, 3);
    })
    .await;
}

#[tokio::test]
async fn replicas_exclude_each_other_and_stale_writes_conflict() {
    with_schema(|url, schema| async move {
        let a = manager(journal(&url, &schema).await).await;
        let b = manager(journal(&url, &schema).await).await;

        let mut held = a
            .begin("vm-1", "start", "a", "t", BeginMode::FailFast)
            .await
            .unwrap();
        let err = b
            .begin("vm-1", "start", "b", "t", BeginMode::FailFast)
            .await
            .unwrap_err();
        assert!(matches!(err, TxError::ResourceBusy(_)), "{err:?}");
        let err = b.put("vm-1", json!({}), 0).await.unwrap_err();
        assert!(matches!(err, TxError::ResourceBusy(_)), "{err:?}");
        held.set("", json!({"state": "running"})).await.unwrap();
        held.commit().await.unwrap();

        // B still believes vm-1 is at version 0: its commit is refused by the
        // database instead of overwriting A's write.
        let mut stale = b
            .begin("vm-1", "stop", "b", "t", BeginMode::FailFast)
            .await
            .unwrap();
        stale.set("", json!({"state": "stopped"})).await.unwrap();
        let Err(TxError::VersionConflict(conflict)) = stale.commit().await else {
            panic!("a stale commit must conflict");
        };
        assert_eq!((conflict.expected, conflict.actual), (0, 1));
        // B reloaded the document; a new transaction builds on A's write.
        assert_eq!(b.get("vm-1").unwrap().value, json!({"state": "running"}));
        let mut tx = b
            .begin("vm-1", "stop", "b", "t", BeginMode::FailFast)
            .await
            .unwrap();
        assert_eq!(tx.get("/state").unwrap(), Some(json!("running")));
        tx.set("/state", "stopped").await.unwrap();
        assert_eq!(tx.commit().await.unwrap().version, 2);

        // Puts are fenced by version the same way.
        let Err(TxError::VersionConflict(conflict)) = a.put("vm-1", json!({}), 1).await else {
            panic!("a stale put must conflict");
        };
        assert_eq!(conflict.actual, 2);
        assert_eq!(a.put("vm-1", json!({"state": "gone"}), 2).await.unwrap(), 3);
    })
    .await;
}

#[tokio::test]
async fn a_commit_after_another_replica_recovered_is_fenced() {
    with_schema(|url, schema| async move {
        let old_leader = manager(journal(&url, &schema).await).await;
        let mut tx = old_leader
            .begin("cluster-a", "slow", "old", "t", BeginMode::FailFast)
            .await
            .unwrap();
        tx.set("", json!({"from": "old leader"})).await.unwrap();
        // A new leader takes over and recovers while the old one still runs.
        let new_leader = manager(journal(&url, &schema).await).await;
        assert_eq!(new_leader.recovered().len(), 1);
        let err = tx.commit().await.unwrap_err();
        assert!(matches!(err, TxError::TransactionClosed(_)), "{err:?}");
        assert!(new_leader.get("cluster-a").is_none());
        let state = journal(&url, &schema).await.load().await.unwrap();
        assert!(
            state.documents.is_empty(),
            "the fenced commit left nothing behind"
        );
    })
    .await;
}

#[tokio::test]
async fn compaction_folds_the_log_into_a_checkpoint() {
    with_schema(|url, schema| async move {
        let journal = Arc::new(
            PostgresJournal::builder(&url)
                .schema(&schema)
                .compact_every(5)
                .connect()
                .await
                .unwrap(),
        );
        let m = manager(journal.clone()).await;
        for v in 0..23 {
            m.put("c", json!({"v": v + 1}), v).await.unwrap();
        }
        let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {schema}.log"))
            .fetch_one(journal.pool())
            .await
            .unwrap();
        assert!(rows < 5, "log trimmed to {rows} rows");
        let checkpoints: i64 =
            sqlx::query_scalar(&format!("SELECT count(*) FROM {schema}.checkpoint"))
                .fetch_one(journal.pool())
                .await
                .unwrap();
        assert_eq!(checkpoints, 1);
        let state = journal.load().await.unwrap();
        assert_eq!(state.version("c"), 23);
        assert_eq!(state.history["c"].len(), 23);
        journal.compact().await.unwrap();
        let reopened = manager(self::journal(&url, &schema).await).await;
        assert_eq!(reopened.get("c").unwrap().value, json!({"v": 23}));
    })
    .await;
}

#[tokio::test]
async fn a_saga_resumes_on_another_replica() {
    with_schema(|url, schema| async move {
        let launches = Arc::new(parking_lot::Mutex::new(0u32));
        let registry = |block: bool, launches: Arc<parking_lot::Mutex<u32>>| {
            let no_retry = RetryPolicy::builder().max_retries(0).build().unwrap();
            SagaRegistry::new()
                .register(
                    Step::new("reserve", |_| async { Ok::<_, &str>(1) }).retry(no_retry.clone()),
                )
                .register(
                    Step::new("launch", move |_| {
                        let launches = launches.clone();
                        async move {
                            *launches.lock() += 1;
                            if block {
                                std::future::pending::<()>().await;
                            }
                            Ok::<_, &str>(2)
                        }
                    })
                    .retry(no_retry),
                )
        };
        let first = SagaExecutor::builder(
            journal(&url, &schema).await,
            registry(true, launches.clone()),
        )
        .open()
        .await
        .unwrap();
        let run = first.run(Saga::new("s").step("reserve").step("launch"));
        assert!(
            tokio::time::timeout(Duration::from_millis(500), run)
                .await
                .is_err()
        );
        assert_eq!(*launches.lock(), 1);

        let second = SagaExecutor::builder(
            journal(&url, &schema).await,
            registry(false, launches.clone()),
        )
        .open()
        .await
        .unwrap();
        assert_eq!(second.unfinished(), ["s"]);
        let reports = second.recover().await.unwrap();
        assert!(reports[0].is_completed());
        assert_eq!(reports[0].output("reserve"), Some(&json!(1)));
        assert_eq!(*launches.lock(), 2);
    })
    .await;
}

#[tokio::test]
async fn an_invalid_schema_name_is_a_config_error() {
    let err = PostgresJournal::builder(url())
        .schema("drop table; --")
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, TxError::Config(c) if c.field() == "schema"),
        "{err:?}"
    );
}
