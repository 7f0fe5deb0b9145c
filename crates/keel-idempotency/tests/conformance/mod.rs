//! The conformance suite every `IdempotencyStore` must pass.
//!
//! Each case is a generic `async fn(&impl Harness)`; each backend's test
//! file instantiates all of them with `conformance_tests!`, so the memory,
//! Redis and PostgreSQL stores are held to exactly the same rules.
//!
//! Durations are small (leases of 300 ms) so that the Redis and PostgreSQL
//! runs, whose leases and TTLs follow the server's clock and therefore pass
//! in real time, stay well under 2 s per case. The memory store runs the
//! same cases under paused tokio time, where every sleep below is virtual.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use keel_core::{Outcome, classify};
use keel_idempotency::{
    Begin, BeginRequest, ExecutionKind, Fingerprint, Idempotency, IdempotencyKey, IdempotencyStore,
    InFlightPolicy, OwnerId, Previous, RecordState, Settle,
};
use serde_json::{Value, json};
use tokio::sync::{Notify, oneshot};
use tokio::time::sleep;

pub(crate) const LEASE: Duration = Duration::from_millis(300);
pub(crate) const HEARTBEAT: Duration = Duration::from_millis(100);
pub(crate) const SHORT_TTL: Duration = Duration::from_millis(400);

/// A backend under test.
pub(crate) trait Harness {
    type Store: IdempotencyStore + Clone;
    /// The store (all clones share the test's entries).
    fn store(&self) -> Self::Store;
    /// `true` when the backend drops expired entries itself, so
    /// `purge_expired` has nothing to count (Redis).
    fn expires_natively(&self) -> bool {
        false
    }
}

#[cfg(feature = "metrics")]
pub(crate) type Counters = keel_idempotency::Metrics;
#[cfg(not(feature = "metrics"))]
pub(crate) type Counters = ();

/// Checks counters when the `metrics` feature is on.
macro_rules! counts {
    ($m:expr, $($name:ident $(($arg:expr))? == $n:expr),+ $(,)?) => {{
        #[cfg(feature = "metrics")]
        {
            $(assert_eq!($m.$name($($arg)?), $n, concat!("counter ", stringify!($name)));)+
        }
        #[cfg(not(feature = "metrics"))]
        let _ = &$m;
    }};
}

pub(crate) fn idem<H: Harness>(h: &H) -> (Idempotency<H::Store>, Counters) {
    let builder = Idempotency::builder(h.store())
        .lease(LEASE)
        .heartbeat(HEARTBEAT)
        .in_flight(InFlightPolicy::Wait {
            timeout: Duration::from_secs(5),
        });
    #[cfg(feature = "metrics")]
    {
        let metrics = keel_idempotency::Metrics::new();
        (builder.metrics(metrics.clone()).build().unwrap(), metrics)
    }
    #[cfg(not(feature = "metrics"))]
    {
        (builder.build().unwrap(), ())
    }
}

pub(crate) fn key(name: &str) -> IdempotencyKey {
    IdempotencyKey::new("conformance", &json!({ "case": name })).unwrap()
}

pub(crate) fn fp(n: u32) -> Fingerprint {
    Fingerprint::of(&json!({ "payload": n })).unwrap()
}

fn begin_req<'a>(key: &'a IdempotencyKey, fp: &'a Fingerprint, owner: u128) -> BeginRequest<'a> {
    BeginRequest {
        key,
        fingerprint: fp,
        owner: OwnerId(owner),
        lease: LEASE,
        ttl: Duration::from_secs(60),
    }
}

/// A counter that operations bump, shared by reference.
fn counter() -> Arc<AtomicU32> {
    Arc::new(AtomicU32::new(0))
}

pub(crate) async fn first_call_runs_then_replays<H: Harness>(h: &H) {
    let (idem, m) = idem(h);
    let (k, f) = (key("replay"), fp(1));
    let runs = counter();
    let op = || {
        let runs = runs.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>(json!({"id": 7}))
        }
    };
    let first = idem.call(&k, &f).run_detailed(op).await.unwrap();
    assert_eq!(first.kind, ExecutionKind::Ran);
    assert_eq!(first.result, Ok(json!({"id": 7})));
    let second = idem.call(&k, &f).run_detailed(op).await.unwrap();
    assert_eq!(second.kind, ExecutionKind::Replayed);
    assert_eq!(second.result, Ok(json!({"id": 7})));
    assert_eq!(idem.execute(&k, &f, op).await.unwrap(), json!({"id": 7}));
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the operation ran once");

    let record = idem.store().get(&k).await.unwrap().expect("stored");
    assert_eq!(record.fingerprint, f);
    let RecordState::Completed(bytes) = record.state else {
        panic!("expected a completed record, got {:?}", record.state);
    };
    assert_eq!(
        serde_json::from_slice::<Value>(&bytes).unwrap(),
        json!({"id": 7})
    );
    let expires = record.expires_in.expect("a TTL");
    let day = Duration::from_secs(24 * 3600);
    assert!(
        expires <= day && expires > day - Duration::from_secs(60),
        "{expires:?}"
    );
    counts!(m, executions(Outcome::Success) == 1, replays == 2);
}

pub(crate) async fn fingerprint_mismatch_is_rejected<H: Harness>(h: &H) {
    let (idem, m) = idem(h);
    let k = key("mismatch");
    idem.execute(&k, &fp(1), || async { Ok::<_, String>(1) })
        .await
        .unwrap();
    let err = idem
        .execute(&k, &fp(2), || async { Ok::<_, String>(2) })
        .await
        .unwrap_err();
    let mismatch = err.as_fingerprint_mismatch().expect("a mismatch");
    assert_eq!(mismatch.key, k);

    // A pending key too: the mismatch wins over waiting.
    let k2 = key("mismatch-pending");
    let begin = idem.store().begin(begin_req(&k2, &fp(1), 1)).await.unwrap();
    assert!(matches!(begin, Begin::Acquired { .. }));
    let err = idem
        .execute(&k2, &fp(2), || async { Ok::<_, String>(2) })
        .await
        .unwrap_err();
    assert!(err.as_fingerprint_mismatch().is_some());
    counts!(m, fingerprint_mismatches == 2);
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) enum ApiError {
    Invalid(String),
    Unavailable,
}

fn api_outcome(e: &ApiError) -> Outcome {
    match e {
        ApiError::Invalid(_) => Outcome::Neutral,
        ApiError::Unavailable => Outcome::Failure,
    }
}

pub(crate) async fn non_retryable_failure_is_replayed<H: Harness>(h: &H) {
    let (idem, m) = idem(h);
    let (k, f) = (key("non-retryable"), fp(1));
    let runs = counter();
    let op = || {
        let runs = runs.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Err::<u32, _>(ApiError::Invalid("bad cidr".into()))
        }
    };
    let first = idem
        .call(&k, &f)
        .classify(classify::error_fn(api_outcome))
        .run_detailed(op)
        .await
        .unwrap();
    assert_eq!(first.kind, ExecutionKind::Ran);
    let second = idem
        .call(&k, &f)
        .classify(classify::error_fn(api_outcome))
        .run_detailed(op)
        .await
        .unwrap();
    assert_eq!(second.kind, ExecutionKind::Replayed);
    assert_eq!(second.result, Err(ApiError::Invalid("bad cidr".into())));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let err = idem.execute(&k, &f, op).await.unwrap_err();
    assert_eq!(
        err.into_operation(),
        Some(ApiError::Invalid("bad cidr".into()))
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let record = idem.store().get(&k).await.unwrap().unwrap();
    assert!(matches!(
        record.state,
        RecordState::Failed {
            retryable: false,
            ..
        }
    ));
    counts!(m, executions(Outcome::Neutral) == 1, replays == 2);
}

pub(crate) async fn retryable_failure_is_run_again<H: Harness>(h: &H) {
    let (idem, m) = idem(h);
    let (k, f) = (key("retryable"), fp(1));
    let runs = counter();
    let op = || {
        let runs = runs.clone();
        async move {
            if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(ApiError::Unavailable)
            } else {
                Ok(42u32)
            }
        }
    };
    let c = || classify::error_fn(api_outcome);
    let first = idem.call(&k, &f).classify(c()).run(op).await;
    assert_eq!(
        first.unwrap_err().into_operation(),
        Some(ApiError::Unavailable)
    );
    let record = idem.store().get(&k).await.unwrap().unwrap();
    assert!(matches!(
        record.state,
        RecordState::Failed {
            retryable: true,
            ..
        }
    ));
    // A retryable failure keeps the key bound to its fingerprint.
    let err = idem
        .call(&k, &fp(9))
        .classify(c())
        .run(op)
        .await
        .unwrap_err();
    assert!(err.as_fingerprint_mismatch().is_some());

    let second = idem
        .call(&k, &f)
        .classify(c())
        .run_detailed(op)
        .await
        .unwrap();
    assert_eq!(second.kind, ExecutionKind::Ran);
    assert_eq!(second.result, Ok(42));
    let third = idem
        .call(&k, &f)
        .classify(c())
        .run_detailed(op)
        .await
        .unwrap();
    assert_eq!(third.kind, ExecutionKind::Replayed);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    counts!(
        m,
        executions(Outcome::Failure) == 1,
        executions(Outcome::Success) == 1
    );
}

pub(crate) async fn retryable_ok_is_not_stored<H: Harness>(h: &H) {
    let (idem, _m) = idem(h);
    let (k, f) = (key("retryable-ok"), fp(1));
    // An Ok that the classifier calls an overload (an HTTP 503 in Ok).
    let overloaded_503 = |r: &Result<u16, String>| match r {
        Ok(503) => Outcome::OVERLOADED,
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::Failure,
    };
    let got = idem
        .call(&k, &f)
        .classify(overloaded_503)
        .run(|| async { Ok::<_, String>(503) })
        .await
        .unwrap();
    assert_eq!(got, 503);
    assert!(idem.store().get(&k).await.unwrap().is_none(), "released");
    let again = idem
        .call(&k, &f)
        .classify(overloaded_503)
        .run_detailed(|| async { Ok::<_, String>(200) })
        .await
        .unwrap();
    assert_eq!((again.kind, again.result), (ExecutionKind::Ran, Ok(200)));
}

/// Starts a run of `k` that holds the key until `release` is notified;
/// returns once the run has started.
async fn hold<S: IdempotencyStore>(
    idem: &Idempotency<S>,
    k: IdempotencyKey,
    f: Fingerprint,
    release: Arc<Notify>,
    value: u32,
) -> tokio::task::JoinHandle<Result<u32, keel_idempotency::ExecuteError<String>>> {
    let (started_tx, started_rx) = oneshot::channel();
    let idem = idem.clone();
    let task = tokio::spawn(async move {
        idem.execute(&k, &f, move || async move {
            let _ = started_tx.send(());
            release.notified().await;
            Ok::<_, String>(value)
        })
        .await
    });
    started_rx.await.expect("the holder started");
    task
}

pub(crate) async fn in_flight_is_rejected_when_asked<H: Harness>(h: &H) {
    let (idem, m) = idem(h);
    let (k, f) = (key("reject"), fp(1));
    let release = Arc::new(Notify::new());
    let holder = hold(&idem, k, f, release.clone(), 5).await;

    let err = idem
        .call(&k, &f)
        .reject_in_flight()
        .run(|| async { Ok::<u32, String>(6) })
        .await
        .unwrap_err();
    let busy = err.as_in_flight().expect("in flight");
    assert_eq!(busy.key, k);
    assert!(!busy.waited);
    let retry_after = busy.retry_after.expect("the lease remaining");
    assert!(retry_after <= LEASE, "{retry_after:?}");

    release.notify_one();
    assert_eq!(holder.await.unwrap().unwrap(), 5);
    let replay = idem
        .call(&k, &f)
        .reject_in_flight()
        .run(|| async { Ok::<u32, String>(6) })
        .await
        .unwrap();
    assert_eq!(replay, 5);
    counts!(
        m,
        in_flight_rejections == 1,
        executions(Outcome::Success) == 1
    );
}

pub(crate) async fn in_flight_waiters_coalesce<H: Harness>(h: &H) {
    let (idem, m) = idem(h);
    let (k, f) = (key("coalesce"), fp(1));
    let release = Arc::new(Notify::new());
    let holder = hold(&idem, k, f, release.clone(), 11).await;

    let runs = counter();
    let mut waiters = Vec::new();
    for _ in 0..3 {
        let idem = idem.clone();
        let runs = runs.clone();
        waiters.push(tokio::spawn(async move {
            idem.call(&k, &f)
                .run_detailed(move || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Ok::<u32, String>(99)
                })
                .await
        }));
    }
    // Let every waiter find the key in flight before the holder finishes.
    sleep(Duration::from_millis(50)).await;
    release.notify_one();
    assert_eq!(holder.await.unwrap().unwrap(), 11);
    for w in waiters {
        let got = w.await.unwrap().unwrap();
        assert_eq!(got.kind, ExecutionKind::Coalesced);
        assert_eq!(got.result, Ok(11));
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "waiters never ran the operation"
    );
    counts!(m, coalesced_waits == 3, executions(Outcome::Success) == 1);
}

pub(crate) async fn waiting_gives_up_at_its_limit<H: Harness>(h: &H) {
    let (idem, m) = idem(h);
    let (k, f) = (key("wait-limit"), fp(1));
    let release = Arc::new(Notify::new());
    let holder = hold(&idem, k, f, release.clone(), 1).await;
    let err = idem
        .call(&k, &f)
        .wait_in_flight(Duration::from_millis(150))
        .run(|| async { Ok::<u32, String>(2) })
        .await
        .unwrap_err();
    let busy = err.as_in_flight().expect("in flight");
    assert!(busy.waited);
    release.notify_one();
    holder.await.unwrap().unwrap();
    counts!(m, coalesced_waits == 1, in_flight_rejections == 1);
}

pub(crate) async fn concurrent_first_callers_run_once<H: Harness>(h: &H) {
    let (idem, _m) = idem(h);
    let (k, f) = (key("stampede"), fp(1));
    let runs = counter();
    let mut tasks = Vec::new();
    for i in 0..8u32 {
        let idem = idem.clone();
        let runs = runs.clone();
        tasks.push(tokio::spawn(async move {
            idem.execute(&k, &f, move || async move {
                runs.fetch_add(1, Ordering::SeqCst);
                sleep(Duration::from_millis(30)).await;
                Ok::<u32, String>(i)
            })
            .await
            .unwrap()
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(results.iter().all(|r| *r == results[0]), "{results:?}");
}

pub(crate) async fn crashed_owner_is_taken_over<H: Harness>(h: &H) {
    let (idem, m) = idem(h);
    let (k, f) = (key("takeover"), fp(1));
    // An owner that claimed the key and then died: it never renews.
    let crashed = idem.store().begin(begin_req(&k, &f, 7)).await.unwrap();
    assert_eq!(
        crashed,
        Begin::Acquired {
            previous: Previous::Vacant
        }
    );
    let err = idem
        .call(&k, &f)
        .reject_in_flight()
        .run(|| async { Ok::<u32, String>(1) })
        .await
        .unwrap_err();
    assert!(err.as_in_flight().is_some(), "its lease still holds");

    sleep(LEASE + Duration::from_millis(50)).await;
    let got = idem
        .call(&k, &f)
        .reject_in_flight()
        .run_detailed(|| async { Ok::<u32, String>(3) })
        .await
        .unwrap();
    assert_eq!((got.kind, got.result), (ExecutionKind::TookOver, Ok(3)));
    // The dead owner can no longer settle the key.
    let late = idem
        .store()
        .finish(
            &k,
            OwnerId(7),
            Settle::Completed(Bytes::from_static(b"9")),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert!(!late);
    assert_eq!(
        idem.execute(&k, &f, || async { Ok::<u32, String>(4) })
            .await
            .unwrap(),
        3
    );
    counts!(m, takeovers == 1);
}

pub(crate) async fn waiter_takes_over_when_owner_dies<H: Harness>(h: &H) {
    let (idem, m) = idem(h);
    let (k, f) = (key("waiter-takeover"), fp(1));
    idem.store().begin(begin_req(&k, &f, 7)).await.unwrap();
    // Waits (default policy) and takes over once the dead owner's lease runs out.
    let got = idem
        .call(&k, &f)
        .run_detailed(|| async { Ok::<u32, String>(8) })
        .await
        .unwrap();
    assert_eq!((got.kind, got.result), (ExecutionKind::TookOver, Ok(8)));
    counts!(m, takeovers == 1, coalesced_waits == 1);
}

pub(crate) async fn heartbeat_keeps_a_slow_owner<H: Harness>(h: &H) {
    let (idem, m) = idem(h);
    let (k, f) = (key("heartbeat"), fp(1));
    let owner = {
        let idem = idem.clone();
        tokio::spawn(async move {
            idem.execute(&k, &f, || async {
                // Runs for more than twice its lease.
                sleep(LEASE * 2 + LEASE / 2).await;
                Ok::<u32, String>(1)
            })
            .await
        })
    };
    for _ in 0..3 {
        sleep(LEASE * 2 / 3).await;
        let err = idem
            .call(&k, &f)
            .reject_in_flight()
            .run(|| async { Ok::<u32, String>(2) })
            .await
            .unwrap_err();
        assert!(
            err.as_in_flight().is_some(),
            "a live owner is not taken over"
        );
    }
    assert_eq!(owner.await.unwrap().unwrap(), 1);
    assert_eq!(
        idem.execute(&k, &f, || async { Ok::<u32, String>(2) })
            .await
            .unwrap(),
        1
    );
    counts!(m, takeovers == 0, lost_leases == 0);
}

pub(crate) async fn lost_lease_is_not_overwritten<H: Harness>(h: &H) {
    let (idem, m) = idem(h);
    let (k, f) = (key("lost-lease"), fp(1));
    let store = idem.store().clone();
    let got = idem
        .execute(&k, &f, || async move {
            // While this run is in progress, an operator forgets the key and
            // another owner claims it.
            assert!(store.remove(&k).await.unwrap());
            let other = store.begin(begin_req(&k, &f, 77)).await.unwrap();
            assert!(matches!(other, Begin::Acquired { .. }));
            Ok::<u32, String>(5)
        })
        .await
        .unwrap();
    assert_eq!(got, 5, "the caller still gets its value");
    let record = idem.store().get(&k).await.unwrap().unwrap();
    assert_eq!(
        match record.state {
            RecordState::Pending { owner, .. } => owner,
            other => panic!("expected the new owner's pending entry, got {other:?}"),
        },
        OwnerId(77)
    );
    counts!(m, lost_leases == 1);
}

pub(crate) async fn cancelled_run_releases_key<H: Harness>(h: &H) {
    let (idem, _m) = idem(h);
    let (k, f) = (key("cancelled"), fp(1));
    let (started_tx, started_rx) = oneshot::channel();
    let task = {
        let idem = idem.clone();
        tokio::spawn(async move {
            idem.execute(&k, &f, move || async move {
                let _ = started_tx.send(());
                std::future::pending::<Result<u32, String>>().await
            })
            .await
        })
    };
    started_rx.await.unwrap();
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    // The release runs on a spawned task; give it a moment.
    let mut released = false;
    for _ in 0..50 {
        if idem.store().get(&k).await.unwrap().is_none() {
            released = true;
            break;
        }
        sleep(Duration::from_millis(10)).await;
    }
    assert!(released, "a cancelled run releases its key");
    let got = idem
        .call(&k, &f)
        .reject_in_flight()
        .run_detailed(|| async { Ok::<u32, String>(2) })
        .await
        .unwrap();
    assert_eq!(got.kind, ExecutionKind::Ran);
}

pub(crate) async fn entries_expire_after_their_ttl<H: Harness>(h: &H) {
    let (idem, _m) = idem(h);
    let (k, f) = (key("ttl"), fp(1));
    let runs = counter();
    let op = || {
        let runs = runs.clone();
        async move { Ok::<u32, String>(runs.fetch_add(1, Ordering::SeqCst)) }
    };
    assert_eq!(idem.call(&k, &f).ttl(SHORT_TTL).run(op).await.unwrap(), 0);
    let expires = idem
        .store()
        .get(&k)
        .await
        .unwrap()
        .unwrap()
        .expires_in
        .unwrap();
    assert!(
        expires <= SHORT_TTL && expires > SHORT_TTL / 2,
        "{expires:?}"
    );
    assert_eq!(idem.call(&k, &f).ttl(SHORT_TTL).run(op).await.unwrap(), 0);
    sleep(SHORT_TTL + Duration::from_millis(50)).await;
    assert!(idem.store().get(&k).await.unwrap().is_none(), "expired");
    // Once expired, the key is free, even for another payload.
    let got = idem.call(&k, &fp(2)).run_detailed(op).await.unwrap();
    assert_eq!((got.kind, got.result), (ExecutionKind::Ran, Ok(1)));
}

pub(crate) async fn store_default_ttl_applies<H: Harness>(h: &H) {
    let idem = Idempotency::builder(h.store())
        .ttl(SHORT_TTL)
        .lease(LEASE)
        .build()
        .unwrap();
    let (k, f) = (key("store-ttl"), fp(1));
    idem.execute(&k, &f, || async { Ok::<u32, String>(1) })
        .await
        .unwrap();
    let expires = idem
        .store()
        .get(&k)
        .await
        .unwrap()
        .unwrap()
        .expires_in
        .unwrap();
    assert!(expires <= SHORT_TTL, "{expires:?}");
    sleep(SHORT_TTL + Duration::from_millis(50)).await;
    assert!(idem.store().get(&k).await.unwrap().is_none());
}

pub(crate) async fn purge_removes_expired_entries<H: Harness>(h: &H) {
    let (idem, _m) = idem(h);
    for i in 0..3 {
        let k = key(&format!("purge-{i}"));
        idem.call(&k, &fp(1))
            .ttl(SHORT_TTL)
            .run(|| async { Ok::<u32, String>(1) })
            .await
            .unwrap();
    }
    let keep = key("purge-keep");
    idem.execute(&keep, &fp(1), || async { Ok::<u32, String>(1) })
        .await
        .unwrap();
    assert_eq!(
        idem.store().purge_expired().await.unwrap(),
        0,
        "nothing expired yet"
    );
    sleep(SHORT_TTL + Duration::from_millis(50)).await;
    let purged = idem.store().purge_expired().await.unwrap();
    if h.expires_natively() {
        assert_eq!(purged, 0);
    } else {
        assert_eq!(purged, 3);
    }
    for i in 0..3 {
        assert!(
            idem.store()
                .get(&key(&format!("purge-{i}")))
                .await
                .unwrap()
                .is_none()
        );
    }
    assert!(
        idem.store().get(&keep).await.unwrap().is_some(),
        "live entries stay"
    );
}

pub(crate) async fn cleanup_task_purges_until_stopped<H: Harness>(h: &H) {
    let (idem, m) = idem(h);
    let k = key("cleanup");
    idem.call(&k, &fp(1))
        .ttl(SHORT_TTL)
        .run(|| async { Ok::<u32, String>(1) })
        .await
        .unwrap();
    assert!(idem.spawn_cleanup(Duration::ZERO).is_err());
    let task = idem.spawn_cleanup(Duration::from_millis(100)).unwrap();
    sleep(SHORT_TTL + Duration::from_millis(250)).await;
    assert!(idem.store().get(&k).await.unwrap().is_none());
    if !h.expires_natively() {
        // `get` hides an expired entry before any purge runs, so the purge
        // itself is seen in the counter. On a loaded machine the task's
        // tick can land later than the fixed sleep above: wait for it, up
        // to 5 s, instead of racing it.
        #[cfg(feature = "metrics")]
        for _ in 0..50 {
            if m.expirations() >= 1 {
                break;
            }
            sleep(Duration::from_millis(100)).await;
        }
        counts!(m, expirations == 1);
    }
    assert!(!task.is_finished());
    task.stop().await;
}

pub(crate) async fn settling_is_fenced_by_owner<H: Harness>(h: &H) {
    let store = h.store();
    let (k, f) = (key("fenced"), fp(1));
    let ttl = Duration::from_secs(60);
    assert!(matches!(
        store.begin(begin_req(&k, &f, 1)).await.unwrap(),
        Begin::Acquired {
            previous: Previous::Vacant
        }
    ));
    let stranger = OwnerId(2);
    assert!(!store.renew(&k, stranger, LEASE).await.unwrap());
    assert!(
        !store
            .finish(
                &k,
                stranger,
                Settle::Completed(Bytes::from_static(b"1")),
                ttl
            )
            .await
            .unwrap()
    );
    assert!(!store.release(&k, stranger).await.unwrap());
    assert!(store.renew(&k, OwnerId(1), LEASE).await.unwrap());
    let body = Bytes::from_static(b"\x00\xff binary \xc3");
    assert!(
        store
            .finish(&k, OwnerId(1), Settle::Completed(body.clone()), ttl)
            .await
            .unwrap()
    );
    // Settled: no owner holds it any more.
    assert!(
        !store
            .finish(&k, OwnerId(1), Settle::Completed(Bytes::new()), ttl)
            .await
            .unwrap()
    );
    assert!(!store.release(&k, OwnerId(1)).await.unwrap());
    assert!(!store.renew(&k, OwnerId(1), LEASE).await.unwrap());
    // Bytes come back exactly, binary included.
    assert_eq!(
        store.begin(begin_req(&k, &f, 3)).await.unwrap(),
        Begin::Completed(body.clone())
    );
    let record = store.get(&k).await.unwrap().unwrap();
    assert_eq!(record.state, RecordState::Completed(body));
    assert!(record.expires_in.unwrap() <= ttl);
}

pub(crate) async fn records_report_state<H: Harness>(h: &H) {
    let store = h.store();
    let (k, f) = (key("record"), fp(1));
    assert!(store.get(&k).await.unwrap().is_none());
    store.begin(begin_req(&k, &f, 0xabc)).await.unwrap();
    let record = store.get(&k).await.unwrap().unwrap();
    assert_eq!(record.fingerprint, f);
    match record.state {
        RecordState::Pending {
            owner,
            lease_remaining,
        } => {
            assert_eq!(owner, OwnerId(0xabc));
            assert!(lease_remaining <= LEASE && lease_remaining > LEASE / 2);
        }
        other => panic!("expected pending, got {other:?}"),
    }
    // In flight for anyone else, with the lease remaining.
    match store.begin(begin_req(&k, &f, 5)).await.unwrap() {
        Begin::InFlight {
            lease_remaining: Some(left),
        } => assert!(left <= LEASE),
        other => panic!("expected in flight, got {other:?}"),
    }
    assert!(
        store
            .finish(
                &k,
                OwnerId(0xabc),
                Settle::Failed {
                    error: Bytes::from_static(b"\"nope\""),
                    retryable: false
                },
                Duration::from_secs(60)
            )
            .await
            .unwrap()
    );
    assert_eq!(
        store.get(&k).await.unwrap().unwrap().state,
        RecordState::Failed {
            error: Bytes::from_static(b"\"nope\""),
            retryable: false
        }
    );
    assert_eq!(
        store.begin(begin_req(&k, &f, 5)).await.unwrap(),
        Begin::Failed(Bytes::from_static(b"\"nope\""))
    );
    assert!(store.remove(&k).await.unwrap());
    assert!(!store.remove(&k).await.unwrap());
    assert!(store.get(&k).await.unwrap().is_none());
}

pub(crate) async fn release_frees_the_key<H: Harness>(h: &H) {
    let store = h.store();
    let (k, f) = (key("release"), fp(1));
    store.begin(begin_req(&k, &f, 1)).await.unwrap();
    assert!(store.release(&k, OwnerId(1)).await.unwrap());
    assert!(store.get(&k).await.unwrap().is_none());
    // Free for anyone, with any fingerprint.
    assert_eq!(
        store.begin(begin_req(&k, &fp(2), 2)).await.unwrap(),
        Begin::Acquired {
            previous: Previous::Vacant
        }
    );
}

pub(crate) async fn retryable_failure_is_reacquired<H: Harness>(h: &H) {
    let store = h.store();
    let (k, f) = (key("reacquire"), fp(1));
    store.begin(begin_req(&k, &f, 1)).await.unwrap();
    store
        .finish(
            &k,
            OwnerId(1),
            Settle::Failed {
                error: Bytes::from_static(b"\"timeout\""),
                retryable: true,
            },
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(
        store.begin(begin_req(&k, &fp(2), 2)).await.unwrap(),
        Begin::Mismatch
    );
    assert_eq!(
        store.begin(begin_req(&k, &f, 2)).await.unwrap(),
        Begin::Acquired {
            previous: Previous::RetryableFailure
        }
    );
    assert!(matches!(
        store.begin(begin_req(&k, &f, 3)).await.unwrap(),
        Begin::InFlight { .. }
    ));
}

pub(crate) async fn per_call_ttl_is_validated<H: Harness>(h: &H) {
    let (idem, _m) = idem(h);
    let err = idem
        .call(&key("zero-ttl"), &fp(1))
        .ttl(Duration::ZERO)
        .run(|| async { Ok::<u32, String>(1) })
        .await
        .unwrap_err();
    match err.as_idempotency() {
        Some(keel_idempotency::IdempotencyError::Config(c)) => assert_eq!(c.field(), "ttl"),
        other => panic!("expected a config error, got {other:?}"),
    }
}

/// Instantiates every conformance case as a test.
///
/// `$attr` is the test attribute (paused or real time), `$setup` an async
/// expression giving the harness, `$teardown` a function consuming it.
macro_rules! conformance_tests {
    (#[$attr:meta] setup = $setup:expr; teardown = $teardown:path;) => {
        conformance_tests!(@cases #[$attr] $setup, $teardown;
            first_call_runs_then_replays
            fingerprint_mismatch_is_rejected
            non_retryable_failure_is_replayed
            retryable_failure_is_run_again
            retryable_ok_is_not_stored
            in_flight_is_rejected_when_asked
            in_flight_waiters_coalesce
            waiting_gives_up_at_its_limit
            concurrent_first_callers_run_once
            crashed_owner_is_taken_over
            waiter_takes_over_when_owner_dies
            heartbeat_keeps_a_slow_owner
            lost_lease_is_not_overwritten
            cancelled_run_releases_key
            entries_expire_after_their_ttl
            store_default_ttl_applies
            purge_removes_expired_entries
            cleanup_task_purges_until_stopped
            settling_is_fenced_by_owner
            records_report_state
            release_frees_the_key
            retryable_failure_is_reacquired
            per_call_ttl_is_validated
        );
    };
    (@cases #[$attr:meta] $setup:expr, $teardown:path; $($case:ident)*) => {$(
        #[$attr]
        async fn $case() {
            use futures::FutureExt as _;
            let harness = $setup;
            let result = std::panic::AssertUnwindSafe(crate::conformance::$case(&harness))
                .catch_unwind()
                .await;
            $teardown(harness).await;
            if let Err(panic) = result {
                std::panic::resume_unwind(panic);
            }
        }
    )*};
}
