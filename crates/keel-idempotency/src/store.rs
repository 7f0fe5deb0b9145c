//! The storage contract every backend implements, and its vocabulary.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::error::StoreError;
use crate::key::{Fingerprint, IdempotencyKey};

/// Who holds a pending key: one value per execution, so a finished or
/// renewed lease is fenced to the execution that took it.
///
/// The high 64 bits identify the [`Idempotency`](crate::Idempotency)
/// instance (random at construction), the low 64 bits count its executions.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct OwnerId(pub u128);

impl OwnerId {
    /// The 32-character lowercase hex form, as Redis and PostgreSQL keep it.
    pub fn to_hex(self) -> String {
        format!("{:032x}", self.0)
    }

    /// Parses the form written by [`OwnerId::to_hex`].
    pub fn from_hex(s: &str) -> Option<Self> {
        u128::from_str_radix(s, 16).ok().map(OwnerId)
    }
}

impl fmt::Debug for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OwnerId({:032x})", self.0)
    }
}

impl fmt::Display for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// The arguments of [`IdempotencyStore::begin`].
#[derive(Debug, Clone, Copy)]
pub struct BeginRequest<'a> {
    /// The key to claim.
    pub key: &'a IdempotencyKey,
    /// The request's fingerprint.
    pub fingerprint: &'a Fingerprint,
    /// The would-be owner.
    pub owner: OwnerId,
    /// How long the claim holds before another caller may take it over.
    pub lease: Duration,
    /// How long the entry lives (from now while pending; restarted when it
    /// finishes).
    pub ttl: Duration,
}

/// What the store had for a key when a caller asked to begin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// The caller now owns the key (as `Pending`) and must run the operation
    /// and then [`finish`](IdempotencyStore::finish) or
    /// [`release`](IdempotencyStore::release) it.
    Acquired {
        /// What the key held before.
        previous: Previous,
    },
    /// The operation completed earlier: here is its stored result.
    Completed(Bytes),
    /// The operation failed earlier in a way that is not retryable: here is
    /// its stored error.
    Failed(Bytes),
    /// Another owner holds a live lease.
    InFlight {
        /// The time left on that lease, when the store knows it.
        lease_remaining: Option<Duration>,
    },
    /// The key exists with another fingerprint.
    Mismatch,
}

/// What a key held before a caller acquired it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Previous {
    /// Nothing (or nothing the store can still see; Redis drops expired
    /// entries itself).
    Vacant,
    /// An entry whose TTL had run out but was not purged yet.
    Expired,
    /// A pending entry whose owner's lease had run out: the owner crashed or
    /// stalled, and the caller took over.
    TakenOver,
    /// A retryable failure: the caller runs the operation again.
    RetryableFailure,
}

/// How an owner settles a key after running its operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Store a result to replay to every later caller.
    Completed(Bytes),
    /// Store a failure: replayed when `retryable` is false, run again by the
    /// next caller when it is true.
    Failed {
        /// The serialized error.
        error: Bytes,
        /// Whether the next caller runs the operation again.
        retryable: bool,
    },
}

/// The stored state of one key, as [`IdempotencyStore::get`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The fingerprint stored with the key.
    pub fingerprint: Fingerprint,
    /// Pending, completed or failed.
    pub state: RecordState,
    /// The time left before the entry expires, when the store knows it.
    pub expires_in: Option<Duration>,
}

/// The state part of a [`Record`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordState {
    /// An owner is running the operation.
    Pending {
        /// The owner.
        owner: OwnerId,
        /// The time left on its lease (zero once it ran out).
        lease_remaining: Duration,
    },
    /// Completed with a stored result.
    Completed(Bytes),
    /// Failed with a stored error.
    Failed {
        /// The stored error.
        error: Bytes,
        /// Whether the next caller runs the operation again.
        retryable: bool,
    },
}

/// A future returned by the store trait.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where keys, fingerprints, leases and results live.
///
/// Every transition is atomic in the backend (a mutex for memory, one Lua
/// script for Redis, one SQL statement for PostgreSQL), so several processes
/// sharing a Redis or PostgreSQL store agree on who runs an operation. Time
/// (leases, TTLs) is measured by the backend: tokio's clock for memory, the
/// server's clock for Redis and PostgreSQL.
///
/// The rules every implementation follows (checked by the shared conformance
/// suite in `tests/conformance`):
/// * `begin` on a vacant or expired key stores `Pending` and acquires it; on
///   a key with another fingerprint answers `Mismatch`; on a `Completed` key
///   or a non-retryable `Failed` key answers the stored bytes; on a retryable
///   `Failed` key acquires it again; on a `Pending` key with a live lease
///   answers `InFlight`, with a lapsed lease acquires it (`TakenOver`).
/// * `renew`, `finish` and `release` succeed only for the current owner of a
///   `Pending` key, and answer `false` otherwise (the owner lost its lease).
/// * `finish` restarts the entry's TTL.
///
/// The trait uses boxed futures so that it is object safe: `Arc<dyn
/// IdempotencyStore>` is a store too. A box per call costs a few tens of
/// nanoseconds, far below any store's own work.
pub trait IdempotencyStore: Send + Sync + 'static {
    /// A short, stable backend name for logs and errors.
    fn backend(&self) -> &'static str;

    /// Claims `req.key` for `req.owner`, or reports what holds it.
    fn begin<'a>(&'a self, req: BeginRequest<'a>) -> StoreFuture<'a, Result<Begin, StoreError>>;

    /// [`begin`](Self::begin) for stores that can answer at once, without
    /// I/O: `Some(answer)` saves the boxed future on the hot path (a
    /// replay). The default, `None`, means "call `begin`". When it answers,
    /// it must answer exactly what `begin` would.
    fn begin_now(&self, req: BeginRequest<'_>) -> Option<Result<Begin, StoreError>> {
        let _ = req;
        None
    }

    /// Extends the lease of `owner` on `key` to `lease` from now. `false`
    /// when `owner` no longer holds the key.
    fn renew<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        owner: OwnerId,
        lease: Duration,
    ) -> StoreFuture<'a, Result<bool, StoreError>>;

    /// Stores the outcome of `owner`'s run and restarts the TTL. `false`
    /// when `owner` no longer holds the key (nothing is stored then).
    fn finish<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        owner: OwnerId,
        settle: Settle,
        ttl: Duration,
    ) -> StoreFuture<'a, Result<bool, StoreError>>;

    /// Forgets a pending key held by `owner`, so the next caller runs the
    /// operation at once (the run was cancelled, or its result is not to be
    /// kept). `false` when `owner` no longer holds the key.
    fn release<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        owner: OwnerId,
    ) -> StoreFuture<'a, Result<bool, StoreError>>;

    /// Returns when the entry for `key` may have changed, or after `max` at
    /// most. Stores that cannot be notified poll (sleep a poll interval);
    /// the caller checks the state again either way.
    fn wait<'a>(&'a self, key: &'a IdempotencyKey, max: Duration) -> StoreFuture<'a, ()>;

    /// The current record of `key` (expired entries count as absent).
    fn get<'a>(
        &'a self,
        key: &'a IdempotencyKey,
    ) -> StoreFuture<'a, Result<Option<Record>, StoreError>>;

    /// Removes `key` whatever its state (an operator's "forget this").
    /// `true` when something was removed.
    fn remove<'a>(&'a self, key: &'a IdempotencyKey) -> StoreFuture<'a, Result<bool, StoreError>>;

    /// Deletes entries whose TTL ran out and returns how many. Stores that
    /// expire entries themselves (Redis) return 0.
    fn purge_expired(&self) -> StoreFuture<'_, Result<u64, StoreError>>;
}

macro_rules! forward_store {
    ($($ty:ty),*) => {$(
        impl<S: IdempotencyStore + ?Sized> IdempotencyStore for $ty {
            fn backend(&self) -> &'static str {
                (**self).backend()
            }
            fn begin<'a>(&'a self, req: BeginRequest<'a>) -> StoreFuture<'a, Result<Begin, StoreError>> {
                (**self).begin(req)
            }
            fn begin_now(&self, req: BeginRequest<'_>) -> Option<Result<Begin, StoreError>> {
                (**self).begin_now(req)
            }
            fn renew<'a>(&'a self, key: &'a IdempotencyKey, owner: OwnerId, lease: Duration) -> StoreFuture<'a, Result<bool, StoreError>> {
                (**self).renew(key, owner, lease)
            }
            fn finish<'a>(&'a self, key: &'a IdempotencyKey, owner: OwnerId, settle: Settle, ttl: Duration) -> StoreFuture<'a, Result<bool, StoreError>> {
                (**self).finish(key, owner, settle, ttl)
            }
            fn release<'a>(&'a self, key: &'a IdempotencyKey, owner: OwnerId) -> StoreFuture<'a, Result<bool, StoreError>> {
                (**self).release(key, owner)
            }
            fn wait<'a>(&'a self, key: &'a IdempotencyKey, max: Duration) -> StoreFuture<'a, ()> {
                (**self).wait(key, max)
            }
            fn get<'a>(&'a self, key: &'a IdempotencyKey) -> StoreFuture<'a, Result<Option<Record>, StoreError>> {
                (**self).get(key)
            }
            fn remove<'a>(&'a self, key: &'a IdempotencyKey) -> StoreFuture<'a, Result<bool, StoreError>> {
                (**self).remove(key)
            }
            fn purge_expired(&self) -> StoreFuture<'_, Result<u64, StoreError>> {
                (**self).purge_expired()
            }
        }
    )*};
}

forward_store!(Arc<S>, Box<S>);

#[allow(dead_code)]
fn _object_safe(_: Arc<dyn IdempotencyStore>) {}

/// Rounds a duration up to whole milliseconds (at least 1), the unit Redis
/// and PostgreSQL leases use: a lease is never shorter than asked.
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) fn millis_ceil(d: Duration) -> i64 {
    let ms = d.as_nanos().div_ceil(1_000_000).max(1);
    i64::try_from(ms).unwrap_or(i64::MAX)
}
