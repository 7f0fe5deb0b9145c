//! The Redis store against the real server at 127.0.0.1:6379 (or
//! `KEEL_TEST_REDIS_URL`): the shared conformance suite plus Redis-specific
//! checks.
//!
//! Leases and TTLs here follow the Redis server's clock (`TIME`, `PEXPIRE`),
//! which paused tokio time cannot move, so these tests run in real time with
//! the suite's short durations (300 ms leases, 400 ms TTLs): each test stays
//! under 2 s. Every test uses its own random key prefix and deletes its keys
//! at the end.
#![cfg(feature = "redis")]

#[macro_use]
mod conformance;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use keel_core::Rng;
use keel_idempotency::{Fingerprint, Idempotency, IdempotencyKey, IdempotencyStore, RedisStore};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;

fn url() -> String {
    std::env::var("KEEL_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn connect() -> ConnectionManager {
    let url = url();
    let hint = "start it with `redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\" --appendonly no` or set KEEL_TEST_REDIS_URL";
    let client = redis::Client::open(url.as_str())
        .unwrap_or_else(|e| panic!("invalid Redis URL {url}: {e}"));
    match tokio::time::timeout(Duration::from_secs(5), ConnectionManager::new(client)).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => panic!("Redis unreachable at {url}: {e}; {hint}"),
        Err(_) => panic!("Redis at {url} did not answer within 5 s; {hint}"),
    }
}

struct RedisHarness {
    store: RedisStore,
    prefix: String,
}

impl conformance::Harness for RedisHarness {
    type Store = RedisStore;
    fn store(&self) -> RedisStore {
        self.store.clone()
    }
    fn expires_natively(&self) -> bool {
        true
    }
}

fn unique_prefix() -> String {
    format!(
        "keel:test:idempotency:{:016x}:",
        Rng::from_entropy().next_u64()
    )
}

async fn setup() -> RedisHarness {
    let prefix = unique_prefix();
    let store = RedisStore::builder(connect().await)
        .prefix(&prefix)
        .poll_interval(Duration::from_millis(10))
        .build()
        .unwrap();
    RedisHarness { store, prefix }
}

async fn delete_prefix(conn: &ConnectionManager, prefix: &str) -> usize {
    let mut conn = conn.clone();
    let keys: Vec<String> = {
        let mut iter = conn
            .scan_match::<_, String>(format!("{prefix}*"))
            .await
            .expect("SCAN");
        let mut keys = Vec::new();
        while let Some(k) = futures::StreamExt::next(&mut iter).await {
            keys.push(k.expect("SCAN item"));
        }
        keys
    };
    if !keys.is_empty() {
        let _: () = conn.del(&keys).await.expect("DEL");
    }
    keys.len()
}

async fn teardown(h: RedisHarness) {
    delete_prefix(h.store.connection(), &h.prefix).await;
}

conformance_tests! {
    #[tokio::test]
    setup = setup().await;
    teardown = teardown;
}

#[tokio::test]
async fn entries_live_under_the_prefix_with_a_server_ttl() {
    let h = setup().await;
    let idem = Idempotency::with_store(h.store.clone());
    let key = IdempotencyKey::new("prefix", &1).unwrap();
    idem.execute(&key, &Fingerprint::empty(), || async { Ok::<_, String>(1) })
        .await
        .unwrap();
    let mut conn = h.store.connection().clone();
    let redis_key = h.store.entry_key(&key);
    assert_eq!(redis_key, format!("{}{{{}}}", h.prefix, key));
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&redis_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let day_ms = 24 * 3600 * 1000;
    assert!(pttl > day_ms - 60_000 && pttl <= day_ms, "{pttl}");
    let state: String = conn.hget(&redis_key, "s").await.unwrap();
    assert_eq!(state, "c");
    assert_eq!(
        delete_prefix(h.store.connection(), &h.prefix).await,
        1,
        "a finished entry keeps no lease key"
    );
}

#[tokio::test]
async fn a_lease_is_a_server_expiring_key() {
    let h = setup().await;
    let key = IdempotencyKey::new("lease-key", &1).unwrap();
    let fp = Fingerprint::empty();
    let req = |owner| keel_idempotency::BeginRequest {
        key: &key,
        fingerprint: &fp,
        owner: keel_idempotency::OwnerId(owner),
        lease: Duration::from_millis(200),
        ttl: Duration::from_secs(60),
    };
    h.store.begin(req(0xab)).await.unwrap();
    let mut conn = h.store.connection().clone();
    let lease_key = format!("{}:lease", h.store.entry_key(&key));
    let holder: String = conn.get(&lease_key).await.unwrap();
    assert_eq!(holder, keel_idempotency::OwnerId(0xab).to_hex());
    let pttl: i64 = conn.pttl(&lease_key).await.unwrap();
    assert!(pttl > 0 && pttl <= 200, "{pttl}");
    // The server expires it; then the entry is free to take over.
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(!conn.exists::<_, bool>(&lease_key).await.unwrap());
    assert_eq!(
        h.store.begin(req(0xcd)).await.unwrap(),
        keel_idempotency::Begin::Acquired {
            previous: keel_idempotency::Previous::TakenOver
        }
    );
    teardown(h).await;
}

#[tokio::test]
async fn a_replay_is_one_round_trip() {
    // Counted by the server: a replay sends exactly one command (EVALSHA of
    // the begin script; the HMGET it runs is counted too).
    let h = setup().await;
    let idem = Idempotency::with_store(h.store.clone());
    let key = IdempotencyKey::new("round-trips", &1).unwrap();
    let fp = Fingerprint::empty();
    idem.execute(&key, &fp, || async { Ok::<_, String>(1) })
        .await
        .unwrap();
    // Statistics are server-wide and other tests may run meanwhile: keep the
    // quietest of a few tries.
    let mut stats = connect().await;
    let mut best: Option<HashMap<String, u64>> = None;
    for _ in 0..10 {
        let before = command_calls(&mut stats).await;
        idem.execute(&key, &fp, || async { Ok::<_, String>(2) })
            .await
            .unwrap();
        let after = command_calls(&mut stats).await;
        let delta: HashMap<String, u64> = after
            .iter()
            .map(|(cmd, n)| (cmd.clone(), n - before.get(cmd).copied().unwrap_or(0)))
            .filter(|(cmd, n)| *n > 0 && cmd != "info")
            .collect();
        let total = |d: &HashMap<String, u64>| d.values().sum::<u64>();
        if best.as_ref().is_none_or(|b| total(&delta) < total(b)) {
            best = Some(delta);
        }
    }
    let best = best.unwrap();
    assert_eq!(best.get("evalsha"), Some(&1), "{best:?}");
    let outside_script: u64 = best
        .iter()
        .filter(|(cmd, _)| cmd.as_str() != "hmget")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(outside_script, 1, "one command per replay: {best:?}");
    teardown(h).await;
}

async fn command_calls(conn: &mut ConnectionManager) -> HashMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_string(), calls))
        })
        .collect()
}

#[tokio::test]
async fn replicas_on_separate_connections_run_once() {
    let h = setup().await;
    let other = RedisStore::builder(connect().await)
        .prefix(&h.prefix)
        .build()
        .unwrap();
    let replicas = [
        Idempotency::with_store(h.store.clone()),
        Idempotency::with_store(other),
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
    teardown(h).await;
}

#[tokio::test]
async fn invalid_configuration_names_the_field() {
    let conn = connect().await;
    let err = RedisStore::builder(conn.clone())
        .prefix("")
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "prefix");
    let err = RedisStore::builder(conn)
        .poll_interval(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "poll_interval");
}

#[tokio::test]
async fn connect_reports_an_unreachable_server() {
    // Port 1 on loopback refuses connections.
    let config = redis::aio::ConnectionManagerConfig::new().set_number_of_retries(0);
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        RedisStore::connect_with_config("redis://127.0.0.1:1", config),
    )
    .await
    .expect("connect gives up")
    .unwrap_err();
    assert!(
        matches!(err, keel_idempotency::IdempotencyError::Store(_)),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "idempotency store (redis) failed during connect"
    );
    let purged = setup().await.store.purge_expired().await.unwrap();
    assert_eq!(purged, 0, "Redis expires entries itself");
}
