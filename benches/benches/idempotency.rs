//! What execute-once costs: keel-idempotency's `execute` on a completed key
//! (a replay) and on a new key, for the memory, Redis and PostgreSQL stores,
//! beside the plain round trips those stores wrap, measured in the same run.
//!
//! Run: `cargo bench -p keel-benches --bench idempotency`
//! (add `-- --warm-up-time 1 --measurement-time 3` for a shorter run; add a
//! filter such as `memory` to run one group).
//!
//! * `memory/*`: in-process; `1t` on a current-thread runtime, `2t` with two
//!   tasks on a two-worker runtime (time per operation = wall time / total
//!   operations, so a lower `2t` figure means the two threads scale).
//! * `redis/*`: Redis at `KEEL_TEST_REDIS_URL` (default
//!   `redis://127.0.0.1:6379`), one multiplexed `ConnectionManager`; the
//!   baselines are a plain `GET` and `SET` on the same connection. `c2` runs
//!   two concurrent callers.
//! * `postgres/*`: PostgreSQL at `KEEL_TEST_POSTGRES_URL` (default
//!   `postgres://postgres@127.0.0.1:5432/test`), a pool of 4; the baselines
//!   are a plain primary-key `SELECT` and a plain `INSERT` into a table of
//!   the same shape.
//!
//! A replay is one round trip (one `EVALSHA`, one `SELECT`-shaped statement);
//! a new key is two (claim, then store the result). Redis and PostgreSQL
//! groups are skipped, with a message, when the server is unreachable.
#![allow(missing_docs, clippy::disallowed_types)]

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use keel_idempotency::{
    Fingerprint, Idempotency, IdempotencyKey, IdempotencyStore, PostgresStore, RedisStore,
};
use redis::aio::ConnectionManager;
use serde_json::json;
use tokio::runtime::Runtime;

/// The stored result: a small JSON object, as a controller would keep.
type Created = (String, u32);

fn created(n: u32) -> Result<Created, String> {
    Ok(("i-0123456789abcdef0".to_string(), n))
}

fn current_thread() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn two_workers() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A fresh key per call without paying for SHA-256 in the measurement.
fn counter_key(base: u64, n: u64) -> IdempotencyKey {
    let mut d = [0u8; 32];
    d[..8].copy_from_slice(&n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    d[8..16].copy_from_slice(&base.to_le_bytes());
    IdempotencyKey::from_digest(d)
}

/// Completed keys to replay from (several, so two threads do not all hit
/// one shard).
async fn completed_keys<S: IdempotencyStore>(idem: &Idempotency<S>, n: u64) -> Vec<IdempotencyKey> {
    let mut keys = Vec::new();
    for i in 0..n {
        let key = counter_key(u64::MAX, i);
        idem.execute(&key, &Fingerprint::empty(), || async { created(1) })
            .await
            .unwrap();
        keys.push(key);
    }
    keys
}

/// Runs `op(i)` for `iters` iterations split over `tasks` concurrent tasks
/// and returns the wall time.
fn concurrent<F, Fut>(rt: &Runtime, tasks: u64, iters: u64, op: F) -> Duration
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    rt.block_on(async {
        let start = Instant::now();
        let mut handles = Vec::new();
        for t in 0..tasks {
            let op = op.clone();
            let share = iters / tasks + u64::from(t < iters % tasks);
            handles.push(tokio::spawn(async move {
                for i in 0..share {
                    op(t << 48 | i).await;
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
        start.elapsed()
    })
}

fn keys(c: &mut Criterion) {
    let mut g = c.benchmark_group("keys");
    let params =
        json!({"cluster": "prod", "instance_type": "t3.small", "count": 2, "zone": "eu-west-1a"});
    g.bench_function("derive_key", |b| {
        b.iter(|| IdempotencyKey::from_value(black_box("create-instances"), black_box(&params)));
    });
    g.bench_function("fingerprint_fields", |b| {
        b.iter(|| Fingerprint::of_fields(black_box(&params), &["/count", "/instance_type"]));
    });
    g.finish();
}

/// On-CPU time of the calling thread (`/proc/thread-self/schedstat`): what
/// a single-threaded measurement costs whatever else the machine runs. The
/// yield makes the kernel account the running slice first, so the figure is
/// exact to the nanosecond rather than to the scheduler tick.
fn thread_cpu() -> Duration {
    std::thread::yield_now();
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let ns = stat
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

/// `true` when per-thread CPU time can be read (Linux).
fn has_thread_cpu() -> bool {
    std::fs::metadata("/proc/thread-self/schedstat").is_ok()
}

/// Times `iters` sequential runs of `op` on a current-thread runtime, by
/// wall clock or by this thread's CPU time.
fn sequential<F, Fut>(rt: &Runtime, iters: u64, cpu: bool, mut op: F) -> Duration
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    rt.block_on(async {
        let (wall, on_cpu) = (Instant::now(), thread_cpu());
        for i in 0..iters {
            op(i).await;
        }
        if cpu {
            thread_cpu() - on_cpu
        } else {
            wall.elapsed()
        }
    })
}

fn memory(c: &mut Criterion) {
    let mut g = c.benchmark_group("memory");
    let fp = Fingerprint::empty();
    let modes: &[(&str, bool)] = if has_thread_cpu() {
        &[("1t", false), ("1t_cpu", true)]
    } else {
        &[("1t", false)]
    };

    // The hand-written minimum of an in-memory replay: a mutex-guarded map
    // lookup, a clone of the stored bytes, and decoding them.
    {
        let rt = current_thread();
        let map: std::sync::Mutex<std::collections::HashMap<[u8; 32], bytes_like::Stored>> =
            std::sync::Mutex::new(
                (0..64u64)
                    .map(|i| {
                        let bytes = serde_json::to_vec(&created(1).unwrap()).unwrap();
                        (
                            *counter_key(u64::MAX, i).digest(),
                            bytes_like::Stored::from(bytes),
                        )
                    })
                    .collect(),
            );
        for (mode, cpu) in modes {
            g.bench_function(format!("baseline_map_decode/{mode}"), |b| {
                b.iter_custom(|iters| {
                    sequential(&rt, iters, *cpu, |i| {
                        let key = counter_key(u64::MAX, i & 63);
                        let bytes = map.lock().unwrap().get(key.digest()).cloned().unwrap();
                        let value: Created = serde_json::from_slice(&bytes).unwrap();
                        black_box(value);
                        std::future::ready(())
                    })
                });
            });
        }
    }

    // Replay, one thread.
    {
        let rt = current_thread();
        let idem = Idempotency::new();
        let keys = rt.block_on(completed_keys(&idem, 64));
        for (mode, cpu) in modes {
            g.bench_function(format!("replay/{mode}"), |b| {
                b.iter_custom(|iters| {
                    sequential(&rt, iters, *cpu, |i| {
                        let (idem, key) = (&idem, keys[(i as usize) & 63]);
                        async move {
                            black_box(
                                idem.execute(&key, &fp, || async { created(2) })
                                    .await
                                    .unwrap(),
                            );
                        }
                    })
                });
            });
        }
    }

    // Replay, two threads.
    {
        let rt = two_workers();
        let idem = Idempotency::new();
        let keys = Arc::new(rt.block_on(completed_keys(&idem, 64)));
        g.bench_function("replay/2t", |b| {
            b.iter_custom(|iters| {
                let (idem, keys) = (idem.clone(), keys.clone());
                concurrent(&rt, 2, iters, move |i| {
                    let (idem, key) = (idem.clone(), keys[(i as usize) & 63]);
                    async move {
                        black_box(
                            idem.execute(&key, &fp, || async { created(2) })
                                .await
                                .unwrap(),
                        );
                    }
                })
            });
        });
    }

    // New key, one thread: a fresh store per sample keeps memory bounded.
    {
        let rt = current_thread();
        let base = AtomicU64::new(0);
        for (mode, cpu) in modes {
            g.bench_function(format!("new_key/{mode}"), |b| {
                b.iter_custom(|iters| {
                    let idem = Idempotency::new();
                    let base = base.fetch_add(1, Ordering::Relaxed);
                    sequential(&rt, iters, *cpu, |n| {
                        let (idem, key) = (&idem, counter_key(base, n));
                        async move {
                            black_box(
                                idem.execute(&key, &fp, || async { created(3) })
                                    .await
                                    .unwrap(),
                            );
                        }
                    })
                });
            });
        }
    }

    // New key, two threads.
    {
        let rt = two_workers();
        let base = AtomicU64::new(1 << 32);
        g.bench_function("new_key/2t", |b| {
            b.iter_custom(|iters| {
                let idem = Idempotency::new();
                let base = base.fetch_add(1, Ordering::Relaxed);
                concurrent(&rt, 2, iters, move |n| {
                    let idem = idem.clone();
                    async move {
                        let key = counter_key(base, n);
                        black_box(
                            idem.execute(&key, &fp, || async { created(3) })
                                .await
                                .unwrap(),
                        );
                    }
                })
            });
        });
    }
    g.finish();
}

/// Stored bytes with a cheap clone, as the memory store keeps them.
mod bytes_like {
    pub(crate) type Stored = std::sync::Arc<[u8]>;
}

fn redis_url() -> String {
    std::env::var("KEEL_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn redis(c: &mut Criterion) {
    let rt = two_workers();
    let url = redis_url();
    let conn = rt.block_on(async {
        let client = redis::Client::open(url.as_str()).ok()?;
        tokio::time::timeout(Duration::from_secs(5), ConnectionManager::new(client))
            .await
            .ok()?
            .ok()
    });
    let Some(conn) = conn else {
        eprintln!("SKIPPED redis benches: Redis unreachable at {url} (set KEEL_TEST_REDIS_URL)");
        return;
    };
    let prefix = format!("keel:bench:idempotency:{}:", std::process::id());
    let store = RedisStore::builder(conn.clone())
        .prefix(&prefix)
        .build()
        .unwrap();
    let idem = Idempotency::with_store(store);
    let fp = Fingerprint::empty();
    let keys = Arc::new(rt.block_on(completed_keys(&idem, 64)));
    let value = serde_json::to_vec(&created(1).unwrap()).unwrap();
    let plain_key = format!("{prefix}plain");
    rt.block_on(async {
        let mut c = conn.clone();
        let _: () = redis::cmd("SET")
            .arg(&plain_key)
            .arg(&value)
            .query_async(&mut c)
            .await
            .unwrap();
    });
    let base = Arc::new(AtomicU64::new(0));

    let mut g = c.benchmark_group("redis");
    for tasks in [1u64, 2] {
        let suffix = format!("c{tasks}");
        {
            let (conn, plain_key) = (conn.clone(), plain_key.clone());
            g.bench_function(format!("plain_get/{suffix}"), |b| {
                b.iter_custom(|iters| {
                    let (conn, plain_key) = (conn.clone(), plain_key.clone());
                    concurrent(&rt, tasks, iters, move |_| {
                        let (mut conn, plain_key) = (conn.clone(), plain_key.clone());
                        async move {
                            let v: Vec<u8> = redis::cmd("GET")
                                .arg(&plain_key)
                                .query_async(&mut conn)
                                .await
                                .unwrap();
                            black_box(v);
                        }
                    })
                });
            });
        }
        {
            let (conn, prefix, value, base) =
                (conn.clone(), prefix.clone(), value.clone(), base.clone());
            g.bench_function(format!("plain_set/{suffix}"), |b| {
                b.iter_custom(|iters| {
                    let (conn, prefix, value) = (conn.clone(), prefix.clone(), value.clone());
                    let run = base.fetch_add(1, Ordering::Relaxed);
                    concurrent(&rt, tasks, iters, move |n| {
                        let mut conn = conn.clone();
                        let key = format!("{prefix}set:{}", counter_key(run, n));
                        let value = value.clone();
                        async move {
                            let _: () = redis::cmd("SET")
                                .arg(&key)
                                .arg(&value)
                                .arg("PX")
                                .arg(60_000)
                                .query_async(&mut conn)
                                .await
                                .unwrap();
                        }
                    })
                });
            });
        }
        {
            let (idem, keys) = (idem.clone(), keys.clone());
            g.bench_function(format!("replay/{suffix}"), |b| {
                b.iter_custom(|iters| {
                    let (idem, keys) = (idem.clone(), keys.clone());
                    concurrent(&rt, tasks, iters, move |i| {
                        let (idem, key) = (idem.clone(), keys[(i as usize) & 63]);
                        async move {
                            black_box(
                                idem.execute(&key, &fp, || async { created(2) })
                                    .await
                                    .unwrap(),
                            );
                        }
                    })
                });
            });
        }
        {
            let (idem, base) = (idem.clone(), base.clone());
            g.bench_function(format!("new_key/{suffix}"), |b| {
                b.iter_custom(|iters| {
                    let idem = idem.clone();
                    let run = base.fetch_add(1, Ordering::Relaxed);
                    concurrent(&rt, tasks, iters, move |n| {
                        let idem = idem.clone();
                        async move {
                            let key = counter_key(run, n);
                            black_box(
                                idem.call(&key, &fp)
                                    .ttl(Duration::from_secs(60))
                                    .run(|| async { created(3) })
                                    .await
                                    .unwrap(),
                            );
                        }
                    })
                });
            });
        }
    }
    g.finish();

    // Clean up: every bench key lives under the prefix.
    rt.block_on(async {
        let mut c = conn.clone();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut c)
            .await
            .expect("list the bench's keys");
        for chunk in keys.chunks(1000) {
            let _: () = redis::cmd("DEL")
                .arg(chunk)
                .query_async(&mut c)
                .await
                .expect("delete the bench's keys");
        }
    });
}

fn postgres_url() -> String {
    std::env::var("KEEL_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn postgres(c: &mut Criterion) {
    let rt = two_workers();
    let url = postgres_url();
    let pool = rt.block_on(async {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&url)
            .await
            .ok()
    });
    let Some(pool) = pool else {
        eprintln!(
            "SKIPPED postgres benches: PostgreSQL unreachable at {url} (set KEEL_TEST_POSTGRES_URL)"
        );
        return;
    };
    let schema = format!("keel_bench_idem_{}", std::process::id());
    let store = rt.block_on(PostgresStore::builder(pool.clone()).schema(&schema).build());
    let store = store.unwrap();
    let plain = format!("\"{schema}\".plain");
    rt.block_on(async {
        sqlx::query(&format!(
            "CREATE TABLE {plain} (key TEXT PRIMARY KEY, result BYTEA, expires_at TIMESTAMPTZ NOT NULL)"
        ))
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(&format!(
            "INSERT INTO {plain} VALUES ('read', '\\x00', now() + interval '1 hour')"
        ))
        .execute(&pool)
        .await
        .unwrap();
    });
    let idem = Idempotency::with_store(store);
    let fp = Fingerprint::empty();
    let keys = Arc::new(rt.block_on(completed_keys(&idem, 64)));
    let value = serde_json::to_vec(&created(1).unwrap()).unwrap();
    let select_sql: Arc<str> = format!("SELECT result FROM {plain} WHERE key = $1").into();
    let insert_sql: Arc<str> = format!(
        "INSERT INTO {plain} (key, result, expires_at) VALUES ($1, $2, now() + interval '1 hour')"
    )
    .into();
    let base = Arc::new(AtomicU64::new(0));

    let mut g = c.benchmark_group("postgres");
    for tasks in [1u64, 2] {
        let suffix = format!("c{tasks}");
        {
            let (pool, sql) = (pool.clone(), select_sql.clone());
            g.bench_function(format!("plain_select/{suffix}"), |b| {
                b.iter_custom(|iters| {
                    let (pool, sql) = (pool.clone(), sql.clone());
                    concurrent(&rt, tasks, iters, move |_| {
                        let (pool, sql) = (pool.clone(), sql.clone());
                        async move {
                            let row: (Vec<u8>,) = sqlx::query_as(&sql)
                                .bind("read")
                                .fetch_one(&pool)
                                .await
                                .unwrap();
                            black_box(row);
                        }
                    })
                });
            });
        }
        {
            let (pool, sql, value, base) = (
                pool.clone(),
                insert_sql.clone(),
                value.clone(),
                base.clone(),
            );
            g.bench_function(format!("plain_insert/{suffix}"), |b| {
                b.iter_custom(|iters| {
                    let (pool, sql, value) = (pool.clone(), sql.clone(), value.clone());
                    let run = base.fetch_add(1, Ordering::Relaxed);
                    concurrent(&rt, tasks, iters, move |n| {
                        let (pool, sql, value) = (pool.clone(), sql.clone(), value.clone());
                        async move {
                            sqlx::query(&sql)
                                .bind(counter_key(run, n).to_hex())
                                .bind(value)
                                .execute(&pool)
                                .await
                                .unwrap();
                        }
                    })
                });
            });
        }
        {
            let (idem, keys) = (idem.clone(), keys.clone());
            g.bench_function(format!("replay/{suffix}"), |b| {
                b.iter_custom(|iters| {
                    let (idem, keys) = (idem.clone(), keys.clone());
                    concurrent(&rt, tasks, iters, move |i| {
                        let (idem, key) = (idem.clone(), keys[(i as usize) & 63]);
                        async move {
                            black_box(
                                idem.execute(&key, &fp, || async { created(2) })
                                    .await
                                    .unwrap(),
                            );
                        }
                    })
                });
            });
        }
        {
            let (idem, base) = (idem.clone(), base.clone());
            g.bench_function(format!("new_key/{suffix}"), |b| {
                b.iter_custom(|iters| {
                    let idem = idem.clone();
                    let run = base.fetch_add(1, Ordering::Relaxed);
                    concurrent(&rt, tasks, iters, move |n| {
                        let idem = idem.clone();
                        async move {
                            let key = counter_key(run, n);
                            black_box(
                                idem.execute(&key, &fp, || async { created(3) })
                                    .await
                                    .unwrap(),
                            );
                        }
                    })
                });
            });
        }
    }
    g.finish();

    rt.block_on(async {
        let _ = sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .execute(&pool)
            .await;
        pool.close().await;
    });
}

criterion_group!(benches, keys, memory, redis, postgres);
criterion_main!(benches);
