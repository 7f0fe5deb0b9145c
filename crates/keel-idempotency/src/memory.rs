//! The in-memory store: sharded maps in this process, tokio time.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use keel_core::Clock;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::StoreError;
use crate::key::{Fingerprint, IdempotencyKey};
use crate::store::{
    Begin, BeginRequest, IdempotencyStore, OwnerId, Previous, Record, RecordState, Settle,
    StoreFuture,
};

/// An [`IdempotencyStore`] in this process's memory: the default, for one
/// replica or for tests.
///
/// Keys are spread over a power-of-two number of shards, each a
/// `HashMap` behind its own mutex, so unrelated keys rarely contend. Leases
/// and TTLs follow the store's [`Clock`]: tokio's by default, so
/// `#[tokio::test(start_paused = true)]` and `tokio::time::advance` drive
/// them; [`with_clock`](Self::with_clock) hands it the program's clock (or a
/// [`keel_core::ManualClock`]'s). Callers waiting on a pending key are woken
/// as soon as it settles (no polling); how long they wait at most is timed
/// by tokio's timer.
///
/// Cloning is cheap and clones share the same entries. Memory grows with
/// the number of live keys (about 150 bytes plus the stored result each);
/// run [`Idempotency::spawn_cleanup`](crate::Idempotency::spawn_cleanup) (or
/// call [`purge_expired`](IdempotencyStore::purge_expired)) to drop expired
/// entries, which are otherwise only replaced when their key is used again.
#[derive(Clone)]
pub struct MemoryStore {
    shards: Arc<[Mutex<Shard>]>,
    mask: usize,
    clock: Clock,
}

type Shard = HashMap<IdempotencyKey, Entry, KeyHashBuilder>;

/// Hashes keys with a folded multiply keyed by per-store random seeds.
///
/// Keys are SHA-256 digests, so a few multiplies spread them as well as
/// SipHash does, at a fraction of its cost; the random seeds keep a client
/// who grinds digests from aiming many keys at one bucket.
#[derive(Clone)]
struct KeyHashBuilder {
    seed: u64,
    multiplier: u64,
}

struct KeyHasher {
    state: u64,
    multiplier: u64,
}

impl KeyHashBuilder {
    fn new() -> Self {
        let rng = keel_core::Rng::from_entropy();
        KeyHashBuilder {
            seed: rng.next_u64(),
            // Odd, with high bits set, so the multiply mixes well.
            multiplier: rng.next_u64() | 0x8000_0000_0000_0001,
        }
    }
}

impl BuildHasher for KeyHashBuilder {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher {
            state: self.seed,
            multiplier: self.multiplier,
        }
    }
}

impl KeyHasher {
    #[inline]
    fn mix(&mut self, word: u64) {
        let full = u128::from(self.state ^ word) * u128::from(self.multiplier);
        // Truncations intended: fold the 128-bit product into 64 bits.
        self.state = (full as u64) ^ ((full >> 64) as u64);
    }
}

impl Hasher for KeyHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.state
    }
}

struct Entry {
    fingerprint: Fingerprint,
    expires_at: Instant,
    state: State,
}

enum State {
    Pending {
        owner: OwnerId,
        lease_until: Instant,
        /// Created when the first waiter arrives, so an uncontended run does
        /// not allocate one.
        notify: Option<Arc<Notify>>,
    },
    Completed(Bytes),
    Failed {
        error: Bytes,
        retryable: bool,
    },
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A store with four shards per available CPU (rounded up to a power of
    /// two, between 4 and 256).
    pub fn new() -> Self {
        let cpus = std::thread::available_parallelism().map_or(4, |n| n.get());
        Self::with_shards((cpus * 4).clamp(4, 256))
    }

    /// A store with `shards` shards, rounded up to a power of two (at least 1).
    pub fn with_shards(shards: usize) -> Self {
        let n = shards.max(1).next_power_of_two();
        let hasher = KeyHashBuilder::new();
        MemoryStore {
            shards: (0..n)
                .map(|_| Mutex::new(HashMap::with_hasher(hasher.clone())))
                .collect(),
            mask: n - 1,
            clock: Clock::tokio(),
        }
    }

    /// This store reading leases and TTLs from `clock` (from now on, and
    /// only through this value and its later clones).
    ///
    /// ```
    /// use std::time::Duration;
    /// use keel_core::Clock;
    /// use keel_idempotency::{Fingerprint, Idempotency, IdempotencyKey, MemoryStore, StoredError};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let (clock, hand) = Clock::manual();
    /// let idem = Idempotency::in_memory()
    ///     .clock(clock)
    ///     .ttl(Duration::from_secs(60))
    ///     .build()
    ///     .unwrap();
    /// let key = IdempotencyKey::new("op", &1).unwrap();
    /// let run = || async { Ok::<_, StoredError>(1) };
    /// idem.execute(&key, &Fingerprint::empty(), run).await.unwrap();
    /// assert!(idem.store().get_record(&key).is_some());
    /// hand.advance(Duration::from_secs(61));
    /// assert!(idem.store().get_record(&key).is_none(), "expired on the manual clock");
    /// # }
    /// ```
    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The clock leases and TTLs are read from.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The current record of `key` (expired entries count as absent):
    /// [`IdempotencyStore::get`] without the future, since this store
    /// answers at once.
    pub fn get_record(&self, key: &IdempotencyKey) -> Option<Record> {
        self.get_now(key)
    }

    /// The number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The number of entries held, expired ones not yet purged included.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// `true` when no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, key: &IdempotencyKey) -> &Mutex<Shard> {
        // Keys are SHA-256 digests: their first bytes are uniformly spread.
        let d = key.digest();
        let h = u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
        // Masked to the shard count, so the truncation cannot lose anything.
        &self.shards[(h as usize) & self.mask]
    }

    fn begin_locked(&self, req: BeginRequest<'_>) -> Begin {
        let now = self.clock.now();
        let mut shard = self.shard(req.key).lock();
        let (previous, notify) = match shard.get_mut(req.key) {
            None => (Previous::Vacant, None),
            Some(entry) if entry.expires_at <= now => {
                let notify = match &mut entry.state {
                    State::Pending { notify, .. } => notify.take(),
                    _ => None,
                };
                (Previous::Expired, notify)
            }
            Some(entry) => {
                if entry.fingerprint != *req.fingerprint {
                    return Begin::Mismatch;
                }
                match &mut entry.state {
                    State::Completed(result) => return Begin::Completed(result.clone()),
                    State::Failed {
                        error,
                        retryable: false,
                    } => return Begin::Failed(error.clone()),
                    State::Failed {
                        retryable: true, ..
                    } => (Previous::RetryableFailure, None),
                    State::Pending {
                        lease_until,
                        notify,
                        ..
                    } => {
                        if *lease_until > now {
                            return Begin::InFlight {
                                lease_remaining: Some(*lease_until - now),
                            };
                        }
                        // Keep the waiters registered: they now wait for
                        // the new owner.
                        (Previous::TakenOver, notify.take())
                    }
                }
            }
        };
        shard.insert(
            *req.key,
            Entry {
                fingerprint: *req.fingerprint,
                expires_at: now + req.ttl.max(req.lease),
                state: State::Pending {
                    owner: req.owner,
                    lease_until: now + req.lease,
                    notify,
                },
            },
        );
        Begin::Acquired { previous }
    }

    /// Runs `f` on the entry of `key` if `owner` holds it pending; wakes its
    /// waiters when `f` says the entry settled.
    fn with_owned<R>(
        &self,
        key: &IdempotencyKey,
        owner: OwnerId,
        f: impl FnOnce(&mut Shard, Instant) -> R,
    ) -> Option<R> {
        let now = self.clock.now();
        let mut shard = self.shard(key).lock();
        match shard.get(key) {
            Some(Entry {
                state: State::Pending { owner: held, .. },
                ..
            }) if *held == owner => Some(f(&mut shard, now)),
            _ => None,
        }
    }

    fn finish_now(
        &self,
        key: &IdempotencyKey,
        owner: OwnerId,
        settle: Settle,
        ttl: Duration,
    ) -> bool {
        let notify = self.with_owned(key, owner, |shard, now| {
            let entry = shard.get_mut(key)?;
            entry.expires_at = now + ttl;
            let state = match settle {
                Settle::Completed(result) => State::Completed(result),
                Settle::Failed { error, retryable } => State::Failed { error, retryable },
            };
            match std::mem::replace(&mut entry.state, state) {
                State::Pending { notify, .. } => notify,
                _ => None,
            }
        });
        wake(notify)
    }

    fn release_now(&self, key: &IdempotencyKey, owner: OwnerId) -> bool {
        let notify = self.with_owned(key, owner, |shard, _| match shard.remove(key) {
            Some(Entry {
                state: State::Pending { notify, .. },
                ..
            }) => notify,
            _ => None,
        });
        wake(notify)
    }

    fn renew_now(&self, key: &IdempotencyKey, owner: OwnerId, lease: Duration) -> bool {
        self.with_owned(key, owner, |shard, now| {
            if let Some(entry) = shard.get_mut(key) {
                let until = now + lease;
                if let State::Pending { lease_until, .. } = &mut entry.state {
                    *lease_until = until;
                }
                // A live owner's entry never expires under it.
                entry.expires_at = entry.expires_at.max(until);
            }
        })
        .is_some()
    }

    fn get_now(&self, key: &IdempotencyKey) -> Option<Record> {
        let now = self.clock.now();
        let shard = self.shard(key).lock();
        let entry = shard.get(key).filter(|e| e.expires_at > now)?;
        let state = match &entry.state {
            State::Pending {
                owner, lease_until, ..
            } => RecordState::Pending {
                owner: *owner,
                lease_remaining: lease_until.saturating_duration_since(now),
            },
            State::Completed(result) => RecordState::Completed(result.clone()),
            State::Failed { error, retryable } => RecordState::Failed {
                error: error.clone(),
                retryable: *retryable,
            },
        };
        Some(Record {
            fingerprint: entry.fingerprint,
            state,
            expires_in: Some(entry.expires_at - now),
        })
    }

    fn remove_now(&self, key: &IdempotencyKey) -> bool {
        let removed = self.shard(key).lock().remove(key);
        match removed {
            Some(Entry {
                state: State::Pending { notify, .. },
                ..
            }) => wake(Some(notify)),
            Some(_) => true,
            None => false,
        }
    }

    fn purge_now(&self) -> u64 {
        let now = self.clock.now();
        let mut purged = 0u64;
        let mut to_wake = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            shard.retain(|_, entry| {
                if entry.expires_at > now {
                    return true;
                }
                purged += 1;
                if let State::Pending {
                    notify: Some(n), ..
                } = &entry.state
                {
                    to_wake.push(n.clone());
                }
                false
            });
        }
        for n in to_wake {
            n.notify_waiters();
        }
        purged
    }

    /// Registers for a wake-up while holding the shard lock, so a settle
    /// that happens right after cannot be missed.
    fn register_waiter(
        &self,
        key: &IdempotencyKey,
    ) -> Option<std::pin::Pin<Box<tokio::sync::futures::OwnedNotified>>> {
        let mut shard = self.shard(key).lock();
        match shard.get_mut(key) {
            Some(Entry {
                state: State::Pending { notify, .. },
                ..
            }) => {
                let notify = notify
                    .get_or_insert_with(|| Arc::new(Notify::new()))
                    .clone();
                let mut notified = Box::pin(notify.notified_owned());
                notified.as_mut().enable();
                Some(notified)
            }
            _ => None,
        }
    }
}

/// Wakes the waiters of a settled entry; `true` because the caller owned it.
fn wake(notify: Option<Option<Arc<Notify>>>) -> bool {
    match notify {
        Some(Some(n)) => {
            n.notify_waiters();
            true
        }
        Some(None) => true,
        None => false,
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("shards", &self.shards.len())
            .field("clock", &self.clock)
            .field("entries", &self.len())
            .finish()
    }
}

impl IdempotencyStore for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn begin<'a>(&'a self, req: BeginRequest<'a>) -> StoreFuture<'a, Result<Begin, StoreError>> {
        let result = self.begin_locked(req);
        Box::pin(std::future::ready(Ok(result)))
    }

    fn begin_now(&self, req: BeginRequest<'_>) -> Option<Result<Begin, StoreError>> {
        Some(Ok(self.begin_locked(req)))
    }

    fn renew<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        owner: OwnerId,
        lease: Duration,
    ) -> StoreFuture<'a, Result<bool, StoreError>> {
        Box::pin(std::future::ready(Ok(self.renew_now(key, owner, lease))))
    }

    fn finish<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        owner: OwnerId,
        settle: Settle,
        ttl: Duration,
    ) -> StoreFuture<'a, Result<bool, StoreError>> {
        Box::pin(std::future::ready(Ok(
            self.finish_now(key, owner, settle, ttl)
        )))
    }

    fn release<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        owner: OwnerId,
    ) -> StoreFuture<'a, Result<bool, StoreError>> {
        Box::pin(std::future::ready(Ok(self.release_now(key, owner))))
    }

    fn wait<'a>(&'a self, key: &'a IdempotencyKey, max: Duration) -> StoreFuture<'a, ()> {
        let notified = self.register_waiter(key);
        Box::pin(async move {
            if let Some(notified) = notified {
                let _ = tokio::time::timeout(max, notified).await;
            }
        })
    }

    fn get<'a>(
        &'a self,
        key: &'a IdempotencyKey,
    ) -> StoreFuture<'a, Result<Option<Record>, StoreError>> {
        Box::pin(std::future::ready(Ok(self.get_now(key))))
    }

    fn remove<'a>(&'a self, key: &'a IdempotencyKey) -> StoreFuture<'a, Result<bool, StoreError>> {
        Box::pin(std::future::ready(Ok(self.remove_now(key))))
    }

    fn purge_expired(&self) -> StoreFuture<'_, Result<u64, StoreError>> {
        Box::pin(std::future::ready(Ok(self.purge_now())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_count_is_a_power_of_two() {
        assert_eq!(MemoryStore::with_shards(0).shard_count(), 1);
        assert_eq!(MemoryStore::with_shards(5).shard_count(), 8);
        let n = MemoryStore::new().shard_count();
        assert!(n.is_power_of_two() && (4..=256).contains(&n));
    }

    #[tokio::test(start_paused = true)]
    async fn keys_spread_over_shards() {
        let store = MemoryStore::with_shards(8);
        for i in 0..256u32 {
            let key = IdempotencyKey::new("op", &i).unwrap();
            let fp = Fingerprint::empty();
            store.begin_locked(BeginRequest {
                key: &key,
                fingerprint: &fp,
                owner: OwnerId(1),
                lease: Duration::from_secs(1),
                ttl: Duration::from_secs(1),
            });
        }
        assert_eq!(store.len(), 256);
        for shard in store.shards.iter() {
            assert!(shard.lock().len() > 10, "a shard got too few keys");
        }
    }
}
