use std::cell::Cell;
use std::hash::BuildHasher;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::Quota;
use governor::clock::Clock as GovernorClock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed, keyed::DashMapStateStore};
use keel_core::Clock;
use tokio::time::Instant;

use crate::ConfigError;

/// A rate: `per_second(10).burst(5)` admits 10 calls per second on average
/// with bursts of at most 5 (GCRA, as governor implements it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    period: Duration,
    burst: u32,
}

impl RateLimit {
    /// `n` calls per second; the burst defaults to `n`.
    pub const fn per_second(n: u32) -> Self {
        RateLimit {
            period: if n == 0 {
                Duration::ZERO
            } else {
                Duration::from_nanos(1_000_000_000 / n as u64)
            },
            burst: n,
        }
    }

    /// One call every `period`; the burst defaults to 1.
    pub const fn every(period: Duration) -> Self {
        RateLimit { period, burst: 1 }
    }

    /// Allows bursts of up to `burst` calls.
    pub const fn burst(mut self, burst: u32) -> Self {
        self.burst = burst;
        self
    }

    /// The interval at which one call's worth of capacity comes back.
    pub const fn period(&self) -> Duration {
        self.period
    }

    /// The largest burst admitted at once.
    pub const fn max_burst(&self) -> u32 {
        self.burst
    }

    fn quota(&self) -> Result<Quota, ConfigError> {
        let quota = Quota::with_period(self.period)
            .ok_or(ConfigError::new("rate_limit.rate", "must be above zero"))?;
        let burst = NonZeroU32::new(self.burst)
            .ok_or(ConfigError::new("rate_limit.burst", "must be at least 1"))?;
        Ok(quota.allow_burst(burst))
    }
}

/// governor's clock over keel-core's, so paused tokio time (or a manual
/// clock) drives the limiter in tests.
#[derive(Debug, Clone)]
pub(crate) struct KeelGovernorClock {
    clock: Clock,
    origin: Instant,
}

thread_local! {
    /// A reading of the limiter's clock that the caller already holds, for
    /// the one governor check running on this thread (see
    /// [`RateLimiter::check_at`]). governor reads its clock itself and takes
    /// no instant from the caller; a clock read costs 15–20 ns on a VM,
    /// about a tenth of a whole pipeline call, and the pipeline has read the
    /// clock already. Set and cleared around one synchronous check, so it
    /// never outlives it.
    static READING: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Clears [`READING`] when the check ends, also if it panics.
struct Pinned;

impl Pinned {
    fn new(now: Instant) -> Self {
        READING.set(Some(now));
        Pinned
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        READING.set(None);
    }
}

impl GovernorClock for KeelGovernorClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        READING
            .get()
            .unwrap_or_else(|| self.clock.now())
            .saturating_duration_since(self.origin)
    }
}

/// The keyed map's hasher. Its keys are already seeded 64-bit hashes of
/// the caller's keys (see [`RateLimiter::check`]), so hashing them again
/// (governor's default is SipHash, a seventh of a keyed call) adds nothing.
#[derive(Debug, Clone, Copy, Default)]
struct AlreadyHashed;

impl BuildHasher for AlreadyHashed {
    type Hasher = AlreadyHashedHasher;

    fn build_hasher(&self) -> AlreadyHashedHasher {
        AlreadyHashedHasher(0)
    }
}

/// Passes a `u64` key through unchanged.
#[derive(Debug, Default)]
struct AlreadyHashedHasher(u64);

impl std::hash::Hasher for AlreadyHashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys reach this map; anything else is still hashed,
        // not silently collapsed.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, key: u64) {
        self.0 = key;
    }
}

type Direct =
    governor::RateLimiter<NotKeyed, InMemoryState, KeelGovernorClock, NoOpMiddleware<Duration>>;
type Keyed = governor::RateLimiter<
    u64,
    DashMapStateStore<u64, AlreadyHashed>,
    KeelGovernorClock,
    NoOpMiddleware<Duration>,
>;

/// A rate limiter: one rate for every call, or one rate per key (per VM,
/// per tenant); governor's GCRA underneath.
///
/// A shared handle: clones limit against the same state, so one limiter can
/// serve several [`Pipeline`](crate::Pipeline)s (reads and starts of one
/// API sharing its per-VM rate) or be checked by hand.
///
/// ```
/// use std::time::Duration;
/// use keel::{Clock, RateLimit, RateLimiter};
///
/// let (clock, _hand) = Clock::manual();
/// let per_vm = RateLimiter::keyed_with_clock(RateLimit::per_second(10).burst(2), clock)?;
/// assert!(per_vm.check(Some("vm-a")).is_ok());
/// assert!(per_vm.check(Some("vm-a")).is_ok());
/// assert_eq!(per_vm.check(Some("vm-a")), Err(Duration::from_millis(100)));
/// assert!(per_vm.clone().check(Some("vm-b")).is_ok()); // another key, its own rate
/// # Ok::<(), keel::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct RateLimiter {
    inner: std::sync::Arc<Limiter>,
}

#[derive(Debug)]
enum Limiter {
    Direct(Direct, KeelGovernorClock),
    /// The map, its clock, and the seeded hasher of the caller's keys.
    Keyed(Keyed, KeelGovernorClock, foldhash::fast::RandomState),
}

impl RateLimiter {
    /// One rate shared by every call, on tokio's clock.
    pub fn direct(limit: RateLimit) -> Result<Self, ConfigError> {
        Self::direct_with_clock(limit, Clock::tokio())
    }

    /// One rate per key, on tokio's clock. Call
    /// [`retain_recent`](Self::retain_recent) now and then when keys come
    /// and go.
    pub fn keyed(limit: RateLimit) -> Result<Self, ConfigError> {
        Self::keyed_with_clock(limit, Clock::tokio())
    }

    /// [`direct`](Self::direct) on `clock` (a manual clock in tests).
    pub fn direct_with_clock(limit: RateLimit, clock: Clock) -> Result<Self, ConfigError> {
        let clock = KeelGovernorClock {
            origin: clock.now(),
            clock,
        };
        Ok(RateLimiter {
            inner: std::sync::Arc::new(Limiter::Direct(
                governor::RateLimiter::direct_with_clock(limit.quota()?, clock.clone()),
                clock,
            )),
        })
    }

    /// [`keyed`](Self::keyed) on `clock`.
    pub fn keyed_with_clock(limit: RateLimit, clock: Clock) -> Result<Self, ConfigError> {
        let clock = KeelGovernorClock {
            origin: clock.now(),
            clock,
        };
        Ok(RateLimiter {
            inner: std::sync::Arc::new(Limiter::Keyed(
                governor::RateLimiter::dashmap_with_clock_and_hasher(
                    limit.quota()?,
                    clock.clone(),
                    AlreadyHashed,
                ),
                clock,
                foldhash::fast::RandomState::default(),
            )),
        })
    }

    /// Takes a slot now, or says how long until one frees up. A direct
    /// limiter ignores the key; a keyed one limits `None` as one more key.
    ///
    /// Keys are hashed to 64 bits (foldhash, seeded per limiter) so a check
    /// never allocates; two keys whose hashes collide would share a rate,
    /// with odds of about one in 2^64 per pair, and a caller who does not
    /// know the seed cannot choose keys that collide.
    pub fn check(&self, key: Option<&str>) -> Result<(), Duration> {
        self.check_at(key, self.clock().now())
    }

    /// [`check`](Self::check) with a reading of the limiter's clock the
    /// caller already holds (a [`Pipeline`](crate::Pipeline) reads the
    /// clock once per attempt and shares the reading). On a manual clock
    /// the limiter reads its own, as a test may move it at any time.
    pub(crate) fn check_at(&self, key: Option<&str>, now: Instant) -> Result<(), Duration> {
        let (limiter, clock) = match &*self.inner {
            Limiter::Direct(limiter, clock) => (Either::Direct(limiter), clock),
            Limiter::Keyed(limiter, clock, keys) => (
                Either::Keyed(limiter, keys.hash_one(key.unwrap_or_default())),
                clock,
            ),
        };
        let now = if clock.clock.is_manual() {
            clock.clock.now()
        } else {
            now
        };
        let _pinned = Pinned::new(now);
        let checked = match limiter {
            Either::Direct(limiter) => limiter.check(),
            Either::Keyed(limiter, key) => limiter.check_key(&key),
        };
        checked.map_err(|not_until| {
            not_until.wait_time_from(now.saturating_duration_since(clock.origin))
        })
    }

    /// The clock the limiter reads.
    pub fn clock(&self) -> &Clock {
        match &*self.inner {
            Limiter::Direct(_, clock) | Limiter::Keyed(_, clock, _) => &clock.clock,
        }
    }

    /// Whether this limiter keeps one rate per key.
    pub fn is_keyed(&self) -> bool {
        matches!(&*self.inner, Limiter::Keyed(..))
    }

    /// Forgets keys whose rate state has fully recovered (keyed limiters
    /// only), so a limiter keyed by short-lived ids does not grow forever.
    pub fn retain_recent(&self) {
        if let Limiter::Keyed(limiter, ..) = &*self.inner {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Keys the limiter tracks (1 for a direct limiter).
    pub fn len(&self) -> usize {
        match &*self.inner {
            Limiter::Direct(..) => 1,
            Limiter::Keyed(limiter, ..) => limiter.len(),
        }
    }

    /// `true` for a keyed limiter that tracks no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `other` is a handle to the same limiter.
    pub fn same_as(&self, other: &RateLimiter) -> bool {
        std::sync::Arc::ptr_eq(&self.inner, &other.inner)
    }
}

/// The limiter a check goes to, with its key's hash.
enum Either<'a> {
    Direct(&'a Direct),
    Keyed(&'a Keyed, u64),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_validate() {
        assert!(RateLimit::per_second(10).burst(5).quota().is_ok());
        assert_eq!(
            RateLimit::per_second(10)
                .burst(0)
                .quota()
                .unwrap_err()
                .field(),
            "rate_limit.burst"
        );
        assert_eq!(
            RateLimit::per_second(0).quota().unwrap_err().field(),
            "rate_limit.rate"
        );
        assert_eq!(
            RateLimit::per_second(10).period(),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn burst_then_one_per_period_on_a_manual_clock() {
        let (clock, hand) = Clock::manual();
        let limiter =
            RateLimiter::direct_with_clock(RateLimit::per_second(10).burst(5), clock).unwrap();
        for _ in 0..5 {
            assert!(limiter.check(None).is_ok());
        }
        let wait = limiter.check(None).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        hand.advance(Duration::from_millis(100));
        assert!(limiter.check(None).is_ok());
        assert!(limiter.check(None).is_err());
    }

    #[test]
    fn keyed_limits_are_per_key_and_retain_recent_forgets() {
        let (clock, hand) = Clock::manual();
        let limiter =
            RateLimiter::keyed_with_clock(RateLimit::per_second(1).burst(1), clock).unwrap();
        assert!(limiter.check(Some("vm-a")).is_ok());
        assert!(limiter.check(Some("vm-a")).is_err());
        assert!(limiter.check(Some("vm-b")).is_ok());
        assert_eq!(limiter.len(), 2);
        hand.advance(Duration::from_secs(5));
        limiter.retain_recent();
        assert_eq!(limiter.len(), 0);
    }
}
