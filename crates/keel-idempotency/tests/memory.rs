//! The memory store: the shared conformance suite under paused tokio time,
//! the same suite through `Arc<dyn IdempotencyStore>`, exact expiry and
//! lease boundaries, and a model-based property test of every transition.

#[macro_use]
mod conformance;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use keel_idempotency::{
    Begin, BeginRequest, ExecutionKind, Fingerprint, Idempotency, IdempotencyKey, IdempotencyStore,
    MemoryStore, OwnerId, Previous, RecordState, Settle,
};
use proptest::prelude::*;
use tokio::time::{advance, sleep};

struct Memory(MemoryStore);

impl conformance::Harness for Memory {
    type Store = MemoryStore;
    fn store(&self) -> MemoryStore {
        self.0.clone()
    }
}

async fn no_teardown<H>(_: H) {}

conformance_tests! {
    #[tokio::test(start_paused = true)]
    setup = Memory(MemoryStore::new());
    teardown = no_teardown;
}

/// The same rules through a type-erased store.
mod dyn_store {
    use super::*;

    pub(crate) struct DynMemory(pub(crate) Arc<dyn IdempotencyStore>);

    impl crate::conformance::Harness for DynMemory {
        type Store = Arc<dyn IdempotencyStore>;
        fn store(&self) -> Self::Store {
            self.0.clone()
        }
    }

    conformance_tests! {
        #[tokio::test(start_paused = true)]
        setup = DynMemory(Arc::new(MemoryStore::with_shards(2)));
        teardown = no_teardown;
    }
}

fn key(n: u32) -> IdempotencyKey {
    IdempotencyKey::new("memory", &n).unwrap()
}

#[tokio::test(start_paused = true)]
async fn expiry_boundary_is_exact() {
    let idem = Idempotency::builder(MemoryStore::new())
        .ttl(Duration::from_secs(10))
        .lease(Duration::from_secs(5))
        .build()
        .unwrap();
    let (k, f) = (key(1), Fingerprint::empty());
    let run = |v: u32| {
        idem.call(&k, &f)
            .run_detailed(move || async move { Ok::<_, String>(v) })
    };
    assert_eq!(run(1).await.unwrap().kind, ExecutionKind::Ran);
    advance(Duration::from_secs(10) - Duration::from_millis(1)).await;
    let replay = run(2).await.unwrap();
    assert_eq!(
        (replay.kind, replay.result),
        (ExecutionKind::Replayed, Ok(1))
    );
    advance(Duration::from_millis(1)).await;
    let rerun = run(3).await.unwrap();
    assert_eq!((rerun.kind, rerun.result), (ExecutionKind::Ran, Ok(3)));
}

#[tokio::test(start_paused = true)]
async fn lease_boundary_is_exact() {
    let store = MemoryStore::new();
    let (k, f) = (key(2), Fingerprint::empty());
    let req = |owner| BeginRequest {
        key: &k,
        fingerprint: &f,
        owner: OwnerId(owner),
        lease: Duration::from_secs(30),
        ttl: Duration::from_secs(3600),
    };
    store.begin(req(1)).await.unwrap();
    advance(Duration::from_secs(30) - Duration::from_millis(1)).await;
    assert_eq!(
        store.begin(req(2)).await.unwrap(),
        Begin::InFlight {
            lease_remaining: Some(Duration::from_millis(1))
        }
    );
    advance(Duration::from_millis(1)).await;
    assert_eq!(
        store.begin(req(2)).await.unwrap(),
        Begin::Acquired {
            previous: Previous::TakenOver
        }
    );
}

#[tokio::test(start_paused = true)]
async fn default_configuration_keeps_a_five_minute_run() {
    // 30 s lease, 10 s heartbeat: a run ten times longer than the lease is
    // never taken over, and a concurrent caller waits (60 s) and then gives up.
    let idem = Idempotency::new();
    let (k, f) = (key(3), Fingerprint::empty());
    let owner = {
        let idem = idem.clone();
        tokio::spawn(async move {
            idem.execute(&k, &f, || async {
                sleep(Duration::from_secs(300)).await;
                Ok::<_, String>("done".to_string())
            })
            .await
        })
    };
    sleep(Duration::from_secs(1)).await;
    let err = idem
        .execute(&k, &f, || async { Ok::<_, String>("second".to_string()) })
        .await
        .unwrap_err();
    let busy = err.as_in_flight().expect("in flight");
    assert!(busy.waited);
    let got = idem
        .call(&k, &f)
        .wait_in_flight(Duration::from_secs(600))
        .run_detailed(|| async { Ok::<_, String>("third".to_string()) })
        .await
        .unwrap();
    assert_eq!(
        (got.kind, got.result),
        (ExecutionKind::Coalesced, Ok("done".to_string()))
    );
    assert_eq!(owner.await.unwrap().unwrap(), "done");
}

#[tokio::test(start_paused = true)]
async fn waiters_are_woken_at_once() {
    // A waiter returns as soon as the owner finishes, not at its poll or
    // lease boundary.
    let idem = Idempotency::new();
    let (k, f) = (key(4), Fingerprint::empty());
    let owner = {
        let idem = idem.clone();
        tokio::spawn(async move {
            idem.execute(&k, &f, || async {
                sleep(Duration::from_millis(1500)).await;
                Ok::<_, String>(1)
            })
            .await
        })
    };
    sleep(Duration::from_millis(10)).await;
    let start = tokio::time::Instant::now();
    let got = idem
        .execute(&k, &f, || async { Ok::<_, String>(2) })
        .await
        .unwrap();
    assert_eq!(got, 1);
    assert_eq!(start.elapsed(), Duration::from_millis(1490));
    owner.await.unwrap().unwrap();
}

#[test]
fn executes_without_paused_time_on_a_multi_thread_runtime() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let idem = Idempotency::new();
        let counter = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let mut tasks = Vec::new();
        for i in 0..64u32 {
            let idem = idem.clone();
            let counter = counter.clone();
            tasks.push(tokio::spawn(async move {
                let k = key(i % 8);
                idem.execute(&k, &Fingerprint::empty(), move || async move {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    Ok::<_, String>(i % 8)
                })
                .await
                .unwrap()
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap(), i as u32 % 8);
        }
        assert_eq!(counter.load(std::sync::atomic::Ordering::SeqCst), 8);
        assert_eq!(idem.store().len(), 8);
    });
}

// ---------------------------------------------------------------------------
// Model-based property test: random sequences of store operations and clock
// moves, checked against a plain reference model of the rules.

#[derive(Debug, Clone)]
enum Op {
    Begin {
        key: u8,
        fp: u8,
        owner: u8,
        lease: u16,
        ttl: u16,
    },
    Finish {
        key: u8,
        owner: u8,
        completed: bool,
        retryable: bool,
        ttl: u16,
    },
    Release {
        key: u8,
        owner: u8,
    },
    Renew {
        key: u8,
        owner: u8,
        lease: u16,
    },
    Remove {
        key: u8,
    },
    Advance(u16),
    Purge,
    Get {
        key: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0u8..3;
    let o = 0u8..3;
    let d = 1u16..200;
    prop_oneof![
        3 => (k.clone(), 0u8..2, o.clone(), d.clone(), d.clone())
            .prop_map(|(key, fp, owner, lease, ttl)| Op::Begin { key, fp, owner, lease, ttl }),
        2 => (k.clone(), o.clone(), any::<bool>(), any::<bool>(), d.clone())
            .prop_map(|(key, owner, completed, retryable, ttl)| Op::Finish { key, owner, completed, retryable, ttl }),
        1 => (k.clone(), o.clone()).prop_map(|(key, owner)| Op::Release { key, owner }),
        1 => (k.clone(), o.clone(), d.clone()).prop_map(|(key, owner, lease)| Op::Renew { key, owner, lease }),
        1 => k.clone().prop_map(|key| Op::Remove { key }),
        3 => (0u16..150).prop_map(Op::Advance),
        1 => Just(Op::Purge),
        2 => k.prop_map(|key| Op::Get { key }),
    ]
}

#[derive(Debug, Clone, PartialEq)]
enum MState {
    Pending { owner: u8, lease_until: u64 },
    Completed(Vec<u8>),
    Failed(Vec<u8>, bool),
}

#[derive(Debug, Clone)]
struct MEntry {
    fp: u8,
    expires_at: u64,
    state: MState,
}

#[derive(Default)]
struct Model {
    now: u64,
    entries: HashMap<u8, MEntry>,
}

impl Model {
    fn live(&self, key: u8) -> Option<&MEntry> {
        self.entries.get(&key).filter(|e| e.expires_at > self.now)
    }

    fn owned(&mut self, key: u8, owner: u8) -> Option<&mut MEntry> {
        self.entries
            .get_mut(&key)
            .filter(|e| matches!(e.state, MState::Pending { owner: o, .. } if o == owner))
    }

    fn begin(&mut self, key: u8, fp: u8, owner: u8, lease: u64, ttl: u64) -> Begin {
        let previous = match self.entries.get(&key) {
            None => Previous::Vacant,
            Some(e) if e.expires_at <= self.now => Previous::Expired,
            Some(e) if e.fp != fp => return Begin::Mismatch,
            Some(e) => match &e.state {
                MState::Completed(b) => return Begin::Completed(Bytes::from(b.clone())),
                MState::Failed(b, false) => return Begin::Failed(Bytes::from(b.clone())),
                MState::Failed(_, true) => Previous::RetryableFailure,
                MState::Pending { lease_until, .. } if *lease_until > self.now => {
                    return Begin::InFlight {
                        lease_remaining: Some(Duration::from_millis(lease_until - self.now)),
                    };
                }
                MState::Pending { .. } => Previous::TakenOver,
            },
        };
        self.entries.insert(
            key,
            MEntry {
                fp,
                expires_at: self.now + ttl.max(lease),
                state: MState::Pending {
                    owner,
                    lease_until: self.now + lease,
                },
            },
        );
        Begin::Acquired { previous }
    }
}

fn payload(key: u8, owner: u8) -> Vec<u8> {
    vec![key, owner, 0xff]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn memory_store_follows_the_model(ops in prop::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let store = MemoryStore::with_shards(2);
            let mut model = Model::default();
            let keys: Vec<IdempotencyKey> = (0..3u32).map(key).collect();
            let fps: Vec<Fingerprint> = (0..2u8).map(|i| Fingerprint::of_bytes(&[i])).collect();
            for op in ops {
                match op {
                    Op::Begin { key, fp, owner, lease, ttl } => {
                        let got = store.begin(BeginRequest {
                            key: &keys[key as usize],
                            fingerprint: &fps[fp as usize],
                            owner: OwnerId(owner.into()),
                            lease: Duration::from_millis(lease.into()),
                            ttl: Duration::from_millis(ttl.into()),
                        }).await.unwrap();
                        let want = model.begin(key, fp, owner, lease.into(), ttl.into());
                        prop_assert_eq!(got, want, "begin");
                    }
                    Op::Finish { key, owner, completed, retryable, ttl } => {
                        let bytes = payload(key, owner);
                        let settle = if completed {
                            Settle::Completed(Bytes::from(bytes.clone()))
                        } else {
                            Settle::Failed { error: Bytes::from(bytes.clone()), retryable }
                        };
                        let got = store.finish(&keys[key as usize], OwnerId(owner.into()), settle, Duration::from_millis(ttl.into())).await.unwrap();
                        let now = model.now;
                        let want = match model.owned(key, owner) {
                            Some(e) => {
                                e.expires_at = now + u64::from(ttl);
                                e.state = if completed { MState::Completed(bytes) } else { MState::Failed(bytes, retryable) };
                                true
                            }
                            None => false,
                        };
                        prop_assert_eq!(got, want, "finish");
                    }
                    Op::Release { key, owner } => {
                        let got = store.release(&keys[key as usize], OwnerId(owner.into())).await.unwrap();
                        let want = model.owned(key, owner).is_some();
                        if want {
                            model.entries.remove(&key);
                        }
                        prop_assert_eq!(got, want, "release");
                    }
                    Op::Renew { key, owner, lease } => {
                        let got = store.renew(&keys[key as usize], OwnerId(owner.into()), Duration::from_millis(lease.into())).await.unwrap();
                        let now = model.now;
                        let want = match model.owned(key, owner) {
                            Some(e) => {
                                let until = now + u64::from(lease);
                                if let MState::Pending { lease_until, .. } = &mut e.state {
                                    *lease_until = until;
                                }
                                e.expires_at = e.expires_at.max(until);
                                true
                            }
                            None => false,
                        };
                        prop_assert_eq!(got, want, "renew");
                    }
                    Op::Remove { key } => {
                        let got = store.remove(&keys[key as usize]).await.unwrap();
                        prop_assert_eq!(got, model.entries.remove(&key).is_some(), "remove");
                    }
                    Op::Advance(ms) => {
                        advance(Duration::from_millis(ms.into())).await;
                        model.now += u64::from(ms);
                    }
                    Op::Purge => {
                        let got = store.purge_expired().await.unwrap();
                        let now = model.now;
                        let before = model.entries.len();
                        model.entries.retain(|_, e| e.expires_at > now);
                        prop_assert_eq!(got, (before - model.entries.len()) as u64, "purge");
                    }
                    Op::Get { key } => {
                        let got = store.get(&keys[key as usize]).await.unwrap();
                        let want = model.live(key).cloned();
                        match (got, want) {
                            (None, None) => {}
                            (Some(r), Some(e)) => {
                                prop_assert_eq!(r.fingerprint, fps[e.fp as usize]);
                                prop_assert_eq!(r.expires_in, Some(Duration::from_millis(e.expires_at - model.now)));
                                let want_state = match e.state {
                                    MState::Pending { owner, lease_until } => RecordState::Pending {
                                        owner: OwnerId(owner.into()),
                                        lease_remaining: Duration::from_millis(lease_until.saturating_sub(model.now)),
                                    },
                                    MState::Completed(b) => RecordState::Completed(Bytes::from(b)),
                                    MState::Failed(b, retryable) => RecordState::Failed { error: Bytes::from(b), retryable },
                                };
                                prop_assert_eq!(r.state, want_state);
                            }
                            (got, want) => prop_assert!(false, "get: store {:?}, model {:?}", got, want),
                        }
                    }
                }
            }
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn stored_error_replays_an_io_error_without_a_wrapper_of_ones_own() {
    use keel_core::classify;
    use keel_idempotency::StoredError;

    let idem = Idempotency::new();
    let key = IdempotencyKey::new("read", &"missing").unwrap();
    let runs = std::sync::atomic::AtomicU32::new(0);
    let read = || async {
        runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let file = tokio::fs::read("/definitely/not/here").await?;
        Ok::<_, StoredError>(file.len())
    };
    // Stored as a non-retryable failure, so the second call replays it.
    let never = classify::on_error(|_: &StoredError| false);
    for _ in 0..2 {
        let err = idem
            .call(&key, &Fingerprint::empty())
            .classify(never)
            .run(read)
            .await
            .unwrap_err()
            .into_operation()
            .unwrap();
        assert!(err.message().contains("No such file"), "{err}");
    }
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);
    let chained = StoredError::from_error(&Outer(std::io::Error::other("inner")));
    assert_eq!(chained.message(), "outer: inner");
}

#[tokio::test]
async fn the_in_memory_builder_takes_a_manual_clock_for_leases() {
    use keel_core::Clock;
    use keel_idempotency::{IdempotencyStore, RecordState, StoredError};

    let (clock, hand) = Clock::manual();
    let idem = Idempotency::in_memory()
        .clock(clock)
        .lease(Duration::from_secs(30))
        .build()
        .unwrap();
    let key = IdempotencyKey::new("slow", &1).unwrap();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let owner = {
        let idem = idem.clone();
        tokio::spawn(async move {
            idem.execute(&key, &Fingerprint::empty(), || async move {
                started_tx.send(()).unwrap();
                release_rx.await.unwrap();
                Ok::<_, StoredError>(1)
            })
            .await
        })
    };
    started_rx.await.unwrap();
    let lease = |idem: &Idempotency| match idem.store().get_record(&key).map(|r| r.state) {
        Some(RecordState::Pending {
            lease_remaining, ..
        }) => lease_remaining,
        other => panic!("expected pending, got {other:?}"),
    };
    assert_eq!(lease(&idem), Duration::from_secs(30));
    // The lease runs on the manual clock, not on tokio's.
    hand.advance(Duration::from_secs(20));
    assert_eq!(lease(&idem), Duration::from_secs(10));
    release_tx.send(()).unwrap();
    assert_eq!(owner.await.unwrap().unwrap(), 1);
    assert!(idem.store().get(&key).await.unwrap().is_some());
}
