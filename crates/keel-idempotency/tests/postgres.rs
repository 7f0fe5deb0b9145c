//! The PostgreSQL store against the real server at 127.0.0.1:5432 (or
//! `KEEL_TEST_POSTGRES_URL`): the shared conformance suite plus
//! PostgreSQL-specific checks.
//!
//! Leases and TTLs here follow the server's `now()`, which paused tokio time
//! cannot move, so these tests run in real time with the suite's short
//! durations (300 ms leases, 400 ms TTLs): each test stays under 2 s. Every
//! test creates its own schema (random name) and drops it at the end.
#![cfg(feature = "postgres")]

#[macro_use]
mod conformance;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use keel_core::Rng;
use keel_idempotency::{
    Fingerprint, Idempotency, IdempotencyError, IdempotencyKey, IdempotencyStore, PostgresStore,
};
use sqlx::postgres::{PgPool, PgPoolOptions};

fn url() -> String {
    std::env::var("KEEL_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

async fn pool() -> PgPool {
    let url = url();
    PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&url)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL unreachable at {url}: {e}; start it with \
                 `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` \
                 or set KEEL_TEST_POSTGRES_URL"
            )
        })
}

struct PgHarness {
    store: PostgresStore,
    pool: PgPool,
    schema: String,
}

impl conformance::Harness for PgHarness {
    type Store = PostgresStore;
    fn store(&self) -> PostgresStore {
        self.store.clone()
    }
}

fn unique_schema() -> String {
    format!("keel_idem_test_{:016x}", Rng::from_entropy().next_u64())
}

async fn setup() -> PgHarness {
    let pool = pool().await;
    let schema = unique_schema();
    let store = PostgresStore::builder(pool.clone())
        .schema(&schema)
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap();
    PgHarness {
        store,
        pool,
        schema,
    }
}

async fn teardown(h: PgHarness) {
    sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", h.schema))
        .execute(&h.pool)
        .await
        .expect("drop the test schema");
    h.pool.close().await;
}

conformance_tests! {
    #[tokio::test]
    setup = setup().await;
    teardown = teardown;
}

async fn count_rows(h: &PgHarness) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {}", h.store.table()))
        .fetch_one(&h.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn table_is_created_in_the_configured_schema() {
    let h = setup().await;
    assert_eq!(
        h.store.table(),
        format!("\"{}\".\"keel_idempotency\"", h.schema)
    );
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns \
         WHERE table_schema = $1 AND table_name = 'keel_idempotency' ORDER BY ordinal_position",
    )
    .bind(&h.schema)
    .fetch_all(&h.pool)
    .await
    .unwrap();
    assert_eq!(
        columns,
        [
            "key",
            "fingerprint",
            "state",
            "owner",
            "lease_until",
            "result",
            "retryable",
            "expires_at",
            "created_at",
            "updated_at"
        ]
    );
    let idem = Idempotency::with_store(h.store.clone());
    let key = IdempotencyKey::new("row", &1).unwrap();
    idem.execute(&key, &Fingerprint::empty(), || async { Ok::<_, String>(1) })
        .await
        .unwrap();
    let (state, stored_key): (String, String) =
        sqlx::query_as(&format!("SELECT state, key FROM {}", h.store.table()))
            .fetch_one(&h.pool)
            .await
            .unwrap();
    assert_eq!((state.as_str(), stored_key), ("completed", key.to_hex()));
    teardown(h).await;
}

#[tokio::test]
async fn replicas_starting_together_create_the_table_once() {
    let pool = pool().await;
    let schema = unique_schema();
    let mut builds = Vec::new();
    for _ in 0..4 {
        let pool = pool.clone();
        let schema = schema.clone();
        builds.push(tokio::spawn(async move {
            PostgresStore::builder(pool)
                .schema(schema)
                .table("shared")
                .build()
                .await
        }));
    }
    let mut stores = Vec::new();
    for b in builds {
        stores.push(b.await.unwrap().expect("concurrent creation succeeds"));
    }
    // And they share one table: a run on one replica is replayed on another.
    let key = IdempotencyKey::new("shared", &1).unwrap();
    let a = Idempotency::with_store(stores[0].clone());
    let b = Idempotency::with_store(stores[3].clone());
    a.execute(&key, &Fingerprint::empty(), || async { Ok::<_, String>(1) })
        .await
        .unwrap();
    let replay = b
        .call(&key, &Fingerprint::empty())
        .run_detailed(|| async { Ok::<_, String>(2) })
        .await
        .unwrap();
    assert_eq!(replay.result, Ok(1));
    let h = PgHarness {
        store: stores.remove(0),
        pool,
        schema,
    };
    teardown(h).await;
}

#[tokio::test]
async fn replicas_on_separate_pools_run_once() {
    let h = setup().await;
    let other = PostgresStore::builder(pool().await)
        .schema(&h.schema)
        .build()
        .await
        .unwrap();
    let replicas = [
        Idempotency::with_store(h.store.clone()),
        Idempotency::with_store(other.clone()),
    ];
    let key = IdempotencyKey::new("replicas", &1).unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for i in 0..10usize {
        let idem = replicas[i % 2].clone();
        let runs = runs.clone();
        tasks.push(tokio::spawn(async move {
            idem.execute(&key, &Fingerprint::empty(), move || async move {
                runs.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok::<_, String>(i)
            })
            .await
            .unwrap()
        }));
    }
    let mut values = Vec::new();
    for t in tasks {
        values.push(t.await.unwrap());
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(values.iter().all(|v| *v == values[0]));
    assert_eq!(count_rows(&h).await, 1);
    other.pool().close().await;
    teardown(h).await;
}

#[tokio::test]
async fn simultaneous_takeovers_have_one_winner() {
    // Many callers find the same lapsed lease at once: exactly one takes the
    // key over, the others see it in flight (the row-level conflict path).
    let h = setup().await;
    let key = IdempotencyKey::new("contended-takeover", &1).unwrap();
    let fp = Fingerprint::empty();
    let store = h.store.clone();
    store
        .begin(keel_idempotency::BeginRequest {
            key: &key,
            fingerprint: &fp,
            owner: keel_idempotency::OwnerId(1),
            lease: Duration::from_millis(100),
            ttl: Duration::from_secs(60),
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut tasks = Vec::new();
    for owner in 2..12u128 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .begin(keel_idempotency::BeginRequest {
                    key: &key,
                    fingerprint: &fp,
                    owner: keel_idempotency::OwnerId(owner),
                    lease: Duration::from_secs(10),
                    ttl: Duration::from_secs(60),
                })
                .await
                .unwrap()
        }));
    }
    let mut acquired = 0;
    for t in tasks {
        match t.await.unwrap() {
            keel_idempotency::Begin::Acquired { previous } => {
                assert_eq!(previous, keel_idempotency::Previous::TakenOver);
                acquired += 1;
            }
            keel_idempotency::Begin::InFlight { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(acquired, 1);
    teardown(h).await;
}

#[tokio::test]
async fn invalid_configuration_names_the_field() {
    let pool = pool().await;
    for (schema, table, field) in [
        ("bad-schema", "t", "schema"),
        ("ok", "x\"; DROP TABLE y; --", "table"),
        ("ok", "", "table"),
    ] {
        let err = PostgresStore::builder(pool.clone())
            .schema(schema)
            .table(table)
            .build()
            .await
            .unwrap_err();
        match err {
            IdempotencyError::Config(c) => assert_eq!(c.field(), field),
            other => panic!("expected a config error, got {other:?}"),
        }
    }
    let err = PostgresStore::builder(pool)
        .poll_interval(Duration::ZERO)
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, IdempotencyError::Config(ref c) if c.field() == "poll_interval"));
}

#[tokio::test]
async fn without_creation_a_missing_table_is_a_store_error() {
    let pool = pool().await;
    let store = PostgresStore::builder(pool)
        .schema(unique_schema())
        .create_table(false)
        .build()
        .await
        .unwrap();
    let idem = Idempotency::with_store(store);
    let err = idem
        .execute(
            &IdempotencyKey::new("x", &1).unwrap(),
            &Fingerprint::empty(),
            || async { Ok::<_, String>(1) },
        )
        .await
        .unwrap_err();
    match err.as_idempotency() {
        Some(IdempotencyError::Store(e)) => {
            assert_eq!(
                e.to_string(),
                "idempotency store (postgres) failed during begin"
            );
        }
        other => panic!("expected a store error, got {other:?}"),
    }
}

#[tokio::test]
async fn connect_uses_the_default_table() {
    let existed: bool =
        sqlx::query_scalar("SELECT to_regclass('public.keel_idempotency') IS NOT NULL")
            .fetch_one(&pool().await)
            .await
            .unwrap();
    let store = PostgresStore::connect(&url()).await.unwrap();
    assert_eq!(store.table(), "\"public\".\"keel_idempotency\"");
    // The default table in `public` cannot live in a per-test schema: drop it
    // unless someone else made it.
    if !existed {
        sqlx::query("DROP TABLE IF EXISTS public.keel_idempotency")
            .execute(store.pool())
            .await
            .unwrap();
    }
    store.pool().close().await;
    assert!(
        PostgresStore::create_table_sql("s", "t")
            .contains("CREATE TABLE IF NOT EXISTS \"s\".\"t\"")
    );
    let options = PgPoolOptions::new().acquire_timeout(Duration::from_millis(500));
    let err = PostgresStore::connect_with("postgres://postgres@127.0.0.1:1/test", options)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "idempotency store (postgres) failed during connect"
    );
}
