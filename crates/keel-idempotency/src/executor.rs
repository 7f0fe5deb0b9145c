//! [`Idempotency`]: execute-once over any [`IdempotencyStore`].

use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use keel_core::{Classify, Outcome, Rng, classify};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, warn};

use crate::cleanup::CleanupTask;
use crate::config::{Builder, InFlightPolicy};
use crate::error::{
    ConfigError, ExecuteError, FingerprintMismatch, IdempotencyError, RequestInFlight,
};
use crate::key::{Fingerprint, IdempotencyKey};
use crate::memory::MemoryStore;
use crate::metrics::Recorder;
use crate::store::{Begin, BeginRequest, IdempotencyStore, OwnerId, Previous, Settle};

/// Runs operations at most once per [`IdempotencyKey`] (within the entry's
/// TTL), across every caller sharing the store.
///
/// * The first caller of a key claims it (`Pending`, with a lease), runs the
///   operation, renews the lease while it runs (heartbeat) and stores the
///   result.
/// * A caller that finds the key completed gets the stored result without
///   running anything; a stored non-retryable failure is replayed as the
///   operation's error; a retryable failure is run again.
/// * A caller that finds the key in flight waits for that result
///   (coalescing) or fails with [`RequestInFlight`], as
///   [`InFlightPolicy`] says; if the owner crashed, its lease runs out and
///   the next caller takes the key over.
/// * The same key with a different [`Fingerprint`] fails with
///   [`FingerprintMismatch`].
///
/// Cloning is cheap (an `Arc`); clones share configuration and store.
pub struct Idempotency<S = MemoryStore> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for Idempotency<S> {
    fn clone(&self) -> Self {
        Idempotency {
            inner: self.inner.clone(),
        }
    }
}

pub(crate) struct Inner<S> {
    pub(crate) store: S,
    ttl: Duration,
    lease: Duration,
    heartbeat: Duration,
    in_flight: InFlightPolicy,
    instance: u64,
    pub(crate) recorder: Recorder,
}

impl<S: IdempotencyStore> std::fmt::Debug for Idempotency<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idempotency")
            .field("backend", &self.inner.store.backend())
            .field("ttl", &self.inner.ttl)
            .field("lease", &self.inner.lease)
            .field("heartbeat", &self.inner.heartbeat)
            .field("in_flight", &self.inner.in_flight)
            .finish()
    }
}

impl Idempotency<MemoryStore> {
    /// An in-memory instance with the default configuration (24 h TTL, 30 s
    /// lease, wait up to 60 s for in-flight runs, tokio's clock): the one
    /// line a single-process program needs.
    pub fn new() -> Self {
        Idempotency::from_builder(Builder::new(MemoryStore::new()), crate::DEFAULT_HEARTBEAT)
    }

    /// Starts configuring an in-memory instance, without naming the store:
    /// `Idempotency::in_memory().ttl(..).clock(..).build()?`
    /// ([`Builder::clock`] is offered for this store only).
    pub fn in_memory() -> Builder<MemoryStore> {
        Builder::new(MemoryStore::new())
    }
}

impl Default for Idempotency<MemoryStore> {
    fn default() -> Self {
        Self::new()
    }
}

/// How a call got its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExecutionKind {
    /// This call ran the operation.
    Ran,
    /// This call ran the operation after taking the key over from an owner
    /// whose lease ran out.
    TookOver,
    /// The result was stored by an earlier call and replayed.
    Replayed,
    /// This call waited for another owner's run and got its result.
    Coalesced,
}

impl ExecutionKind {
    /// `true` when the operation did not run in this call.
    pub const fn is_replay(self) -> bool {
        matches!(self, ExecutionKind::Replayed | ExecutionKind::Coalesced)
    }
}

/// The result of [`Call::run_detailed`]: the operation's result (run now or
/// replayed) and how it was obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executed<T, E> {
    /// The operation's result.
    pub result: Result<T, E>,
    /// Whether it ran in this call or was replayed.
    pub kind: ExecutionKind,
}

/// Execution numbers are unique in the process; each thread takes them in
/// blocks so that concurrent calls do not contend on one counter.
fn next_execution() -> u64 {
    const BLOCK: u64 = 1024;
    static NEXT_BLOCK: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static RANGE: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
    }
    RANGE.with(|range| {
        let (mut next, mut end) = range.get();
        if next == end {
            next = NEXT_BLOCK.fetch_add(BLOCK, Ordering::Relaxed);
            end = next + BLOCK;
        }
        range.set((next + 1, end));
        next
    })
}

/// What the raw engine hands back.
pub(crate) enum RawOutcome<R> {
    Ran { value: R, previous: Previous },
    Stored { stored: Stored, coalesced: bool },
}

pub(crate) enum Stored {
    Completed(Bytes),
    Failed(Bytes),
}

/// How the raw engine settles a finished run: store it, or forget the key.
pub(crate) struct Decision {
    pub(crate) settle: Option<Settle>,
    pub(crate) outcome: Outcome,
}

impl<S: IdempotencyStore> Idempotency<S> {
    /// An instance over `store` with the default configuration (24 h TTL,
    /// 30 s lease renewed every 10 s, wait up to 60 s for in-flight runs).
    pub fn with_store(store: S) -> Self {
        Idempotency::from_builder(Builder::new(store), crate::DEFAULT_HEARTBEAT)
    }

    /// Starts configuring an instance over `store`.
    pub fn builder(store: S) -> Builder<S> {
        Builder::new(store)
    }

    pub(crate) fn from_builder(b: Builder<S>, heartbeat: Duration) -> Self {
        let rng = b.seed.map_or_else(Rng::from_entropy, Rng::with_seed);
        Idempotency {
            inner: Arc::new(Inner {
                store: b.store,
                ttl: b.ttl,
                lease: b.lease,
                heartbeat,
                in_flight: b.in_flight,
                instance: rng.next_u64(),
                recorder: Recorder {
                    #[cfg(feature = "metrics")]
                    metrics: b.metrics,
                },
            }),
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// The default TTL of entries.
    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// The lease an owner takes on a key.
    pub fn lease(&self) -> Duration {
        self.inner.lease
    }

    /// How often a running owner renews its lease.
    pub fn heartbeat(&self) -> Duration {
        self.inner.heartbeat
    }

    /// Runs `op` at most once for `key`, with the default options: waits for
    /// an in-flight run as configured, keeps the result for the configured
    /// TTL, and treats every `Err` as a retryable failure
    /// ([`classify::Default`]; choose another classifier with
    /// [`Call::classify`]).
    ///
    /// Costs, with the memory store: a replay is one shard lookup plus
    /// deserializing the stored JSON; a first run adds serializing the
    /// result and, while the operation runs, one lease renewal per
    /// heartbeat. With Redis or PostgreSQL a replay is one round trip and a
    /// first run two (plus renewals).
    pub async fn execute<T, E, F, Fut>(
        &self,
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
        op: F,
    ) -> Result<T, ExecuteError<E>>
    where
        T: Serialize + DeserializeOwned,
        E: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call(key, fingerprint).run(op).await
    }

    /// A call to configure before running: TTL, in-flight policy and result
    /// classification.
    pub fn call<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        fingerprint: &'a Fingerprint,
    ) -> Call<'a, S, classify::Default> {
        Call {
            idem: self,
            key,
            fingerprint,
            ttl: None,
            in_flight: None,
            classifier: classify::Default,
        }
    }

    /// Spawns a task that purges expired entries every `interval` (and
    /// counts them as expirations). Stop it with [`CleanupTask::stop`];
    /// dropping the handle stops it too. Must be called inside a tokio
    /// runtime.
    pub fn spawn_cleanup(&self, interval: Duration) -> Result<CleanupTask, ConfigError> {
        if interval.is_zero() {
            return Err(ConfigError::new(
                "cleanup_interval",
                "must be greater than zero",
            ));
        }
        Ok(CleanupTask::spawn(self.inner.clone(), interval))
    }

    fn next_owner(&self) -> OwnerId {
        OwnerId((u128::from(self.inner.instance) << 64) | u128::from(next_execution()))
    }

    /// The engine under [`Call::run_detailed`] and the HTTP layer: claims the
    /// key, runs `op` under a heartbeat, and settles it as `decide` says.
    pub(crate) async fn run_raw<R, F, Fut>(
        &self,
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
        ttl: Option<Duration>,
        in_flight: Option<InFlightPolicy>,
        op: F,
        decide: impl FnOnce(&R) -> Result<Decision, serde_json::Error>,
    ) -> Result<RawOutcome<R>, IdempotencyError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = R>,
    {
        let inner = &*self.inner;
        let ttl = match ttl {
            Some(t) if t.is_zero() => {
                return Err(ConfigError::new("ttl", "must be greater than zero").into());
            }
            Some(t) => t,
            None => inner.ttl,
        };
        let policy = match in_flight {
            Some(p) => {
                p.validate("in_flight")?;
                p
            }
            None => inner.in_flight,
        };
        let owner = self.next_owner();
        let mut wait_deadline: Option<Instant> = None;
        loop {
            let req = BeginRequest {
                key,
                fingerprint,
                owner,
                lease: inner.lease,
                ttl,
            };
            // Stores that answer without I/O skip the boxed future.
            let begin = match inner.store.begin_now(req) {
                Some(done) => done?,
                None => inner.store.begin(req).await?,
            };
            let coalesced = wait_deadline.is_some();
            match begin {
                Begin::Completed(bytes) => {
                    inner.recorder.replays();
                    return Ok(RawOutcome::Stored {
                        stored: Stored::Completed(bytes),
                        coalesced,
                    });
                }
                Begin::Failed(bytes) => {
                    inner.recorder.replays();
                    return Ok(RawOutcome::Stored {
                        stored: Stored::Failed(bytes),
                        coalesced,
                    });
                }
                Begin::Mismatch => {
                    inner.recorder.fingerprint_mismatches();
                    debug!(key = %key, "idempotency key reused with a different fingerprint");
                    return Err(FingerprintMismatch { key: *key }.into());
                }
                Begin::InFlight { lease_remaining } => {
                    let timeout = match policy {
                        InFlightPolicy::Reject => {
                            inner.recorder.in_flight_rejections();
                            return Err(RequestInFlight {
                                key: *key,
                                retry_after: lease_remaining,
                                waited: false,
                            }
                            .into());
                        }
                        InFlightPolicy::Wait { timeout } => timeout,
                    };
                    let now = Instant::now();
                    let deadline = *wait_deadline.get_or_insert_with(|| {
                        inner.recorder.coalesced_waits();
                        debug!(key = %key, "waiting for the in-flight run of an idempotency key");
                        now + timeout
                    });
                    if now >= deadline {
                        inner.recorder.in_flight_rejections();
                        return Err(RequestInFlight {
                            key: *key,
                            retry_after: lease_remaining,
                            waited: true,
                        }
                        .into());
                    }
                    let mut max = deadline - now;
                    if let Some(lease) = lease_remaining {
                        // Look again just after the lease would run out, to
                        // take over from a crashed owner.
                        max = max.min(lease + Duration::from_millis(1));
                    }
                    inner.store.wait(key, max).await;
                }
                Begin::Acquired { previous } => {
                    match previous {
                        Previous::TakenOver => {
                            inner.recorder.takeovers();
                            warn!(key = %key, "took over an idempotency key whose owner's lease ran out");
                        }
                        Previous::Expired => inner.recorder.expirations(1),
                        Previous::Vacant | Previous::RetryableFailure => {}
                    }
                    return self.run_owned(key, owner, ttl, previous, op, decide).await;
                }
            }
        }
    }

    async fn run_owned<R, F, Fut>(
        &self,
        key: &IdempotencyKey,
        owner: OwnerId,
        ttl: Duration,
        previous: Previous,
        op: F,
        decide: impl FnOnce(&R) -> Result<Decision, serde_json::Error>,
    ) -> Result<RawOutcome<R>, IdempotencyError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = R>,
    {
        let inner = &*self.inner;
        // Releases the key if this future is dropped (cancelled) or the
        // operation panics before settling, so the next caller need not wait
        // for the lease to run out.
        let mut guard = ReleaseGuard {
            inner: Some(self.inner.clone()),
            key: *key,
            owner,
        };
        let value = self.with_heartbeat(key, owner, op()).await;
        let decision = match decide(&value) {
            Ok(d) => d,
            Err(e) => {
                guard.disarm();
                self.release_logged(key, owner).await;
                return Err(IdempotencyError::Codec(e));
            }
        };
        inner.recorder.executed(decision.outcome);
        guard.disarm();
        match decision.settle {
            Some(settle) => match inner.store.finish(key, owner, settle, ttl).await {
                Ok(true) => {}
                Ok(false) => {
                    inner.recorder.lost_leases();
                    warn!(key = %key, owner = %owner, "idempotency key was taken over while its operation ran; result not stored");
                }
                Err(e) => {
                    // The key stays pending under our lease: when the store
                    // recovers and the lease runs out, the next caller runs
                    // the operation again.
                    warn!(key = %key, error = %e, "could not store idempotent result");
                }
            },
            None => self.release_logged(key, owner).await,
        }
        Ok(RawOutcome::Ran { value, previous })
    }

    async fn release_logged(&self, key: &IdempotencyKey, owner: OwnerId) {
        if let Err(e) = self.inner.store.release(key, owner).await {
            warn!(key = %key, error = %e, "could not release idempotency key");
        }
    }

    /// Polls `fut` while renewing the lease every heartbeat.
    async fn with_heartbeat<Fut: Future>(
        &self,
        key: &IdempotencyKey,
        owner: OwnerId,
        fut: Fut,
    ) -> Fut::Output {
        let inner = &*self.inner;
        let heartbeat = async {
            let period = inner.heartbeat;
            let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                match inner.store.renew(key, owner, inner.lease).await {
                    Ok(true) => {}
                    Ok(false) => {
                        inner.recorder.lost_leases();
                        warn!(key = %key, owner = %owner, "lost the lease of an idempotency key while its operation runs");
                        break;
                    }
                    Err(e) => {
                        warn!(key = %key, error = %e, "could not renew idempotency lease");
                    }
                }
            }
            std::future::pending::<Infallible>().await
        };
        tokio::select! {
            biased;
            out = fut => out,
            never = heartbeat => match never {},
        }
    }
}

/// Releases a claimed key when dropped armed.
struct ReleaseGuard<S: IdempotencyStore> {
    inner: Option<Arc<Inner<S>>>,
    key: IdempotencyKey,
    owner: OwnerId,
}

impl<S: IdempotencyStore> ReleaseGuard<S> {
    fn disarm(&mut self) {
        self.inner = None;
    }
}

impl<S: IdempotencyStore> Drop for ReleaseGuard<S> {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        let (key, owner) = (self.key, self.owner);
        debug!(key = %key, "idempotent operation cancelled; releasing its key");
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    if let Err(e) = inner.store.release(&key, owner).await {
                        warn!(key = %key, error = %e, "could not release cancelled idempotency key");
                    }
                });
            }
            Err(_) => {
                warn!(key = %key, "no runtime to release a cancelled idempotency key; it frees when its lease runs out");
            }
        }
    }
}

/// One configured call: see [`Idempotency::call`].
#[must_use = "a call does nothing until `run` is awaited"]
pub struct Call<'a, S, C> {
    idem: &'a Idempotency<S>,
    key: &'a IdempotencyKey,
    fingerprint: &'a Fingerprint,
    ttl: Option<Duration>,
    in_flight: Option<InFlightPolicy>,
    classifier: C,
}

impl<'a, S: IdempotencyStore, C> Call<'a, S, C> {
    /// Keeps this call's result for `ttl` instead of the configured TTL.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// What to do if the key is in flight elsewhere.
    pub fn in_flight(mut self, policy: InFlightPolicy) -> Self {
        self.in_flight = Some(policy);
        self
    }

    /// Fail at once with [`RequestInFlight`] if the key is in flight.
    pub fn reject_in_flight(self) -> Self {
        self.in_flight(InFlightPolicy::Reject)
    }

    /// Wait up to `timeout` for an in-flight run's result.
    pub fn wait_in_flight(self, timeout: Duration) -> Self {
        self.in_flight(InFlightPolicy::Wait { timeout })
    }

    /// Classifies results with `classifier` (a keel-core [`Classify`]):
    /// * an `Err` whose outcome [`is_retryable`](Outcome::is_retryable) is
    ///   stored as a retryable failure (the next call runs again); any other
    ///   `Err` is stored and replayed;
    /// * an `Ok` whose outcome is retryable is not stored at all (the key is
    ///   released); any other `Ok` is stored and replayed.
    pub fn classify<C2>(self, classifier: C2) -> Call<'a, S, C2> {
        Call {
            idem: self.idem,
            key: self.key,
            fingerprint: self.fingerprint,
            ttl: self.ttl,
            in_flight: self.in_flight,
            classifier,
        }
    }

    /// Runs `op` at most once for the key and returns its result, run now or
    /// replayed. A replayed stored failure comes back as
    /// [`ExecuteError::Operation`].
    pub async fn run<T, E, F, Fut>(self, op: F) -> Result<T, ExecuteError<E>>
    where
        C: Classify<T, E>,
        T: Serialize + DeserializeOwned,
        E: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let executed = self.run_detailed(op).await?;
        executed.result.map_err(ExecuteError::Operation)
    }

    /// Like [`Call::run`], and says whether the operation ran in this call.
    pub async fn run_detailed<T, E, F, Fut>(self, op: F) -> Result<Executed<T, E>, IdempotencyError>
    where
        C: Classify<T, E>,
        T: Serialize + DeserializeOwned,
        E: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let classifier = self.classifier;
        let raw = self
            .idem
            .run_raw(
                self.key,
                self.fingerprint,
                self.ttl,
                self.in_flight,
                op,
                |result: &Result<T, E>| {
                    let outcome = classifier.classify(result);
                    let settle = match result {
                        Ok(_) if outcome.is_retryable() => None,
                        Ok(value) => Some(Settle::Completed(serde_json::to_vec(value)?.into())),
                        Err(error) => Some(Settle::Failed {
                            error: serde_json::to_vec(error)?.into(),
                            retryable: outcome.is_retryable(),
                        }),
                    };
                    Ok(Decision { settle, outcome })
                },
            )
            .await?;
        Ok(match raw {
            RawOutcome::Ran { value, previous } => Executed {
                result: value,
                kind: if previous == Previous::TakenOver {
                    ExecutionKind::TookOver
                } else {
                    ExecutionKind::Ran
                },
            },
            RawOutcome::Stored { stored, coalesced } => {
                let kind = if coalesced {
                    ExecutionKind::Coalesced
                } else {
                    ExecutionKind::Replayed
                };
                let result = match stored {
                    Stored::Completed(bytes) => {
                        Ok(serde_json::from_slice(&bytes).map_err(IdempotencyError::Codec)?)
                    }
                    Stored::Failed(bytes) => {
                        Err(serde_json::from_slice(&bytes).map_err(IdempotencyError::Codec)?)
                    }
                };
                Executed { result, kind }
            }
        })
    }
}
