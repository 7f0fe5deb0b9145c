use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// A seedable, thread-safe, lock-free random source for jitter.
///
/// It is SplitMix64 over one atomic word: each draw is a `fetch_add` and a
/// few multiplications, so policies shared across threads never contend on a
/// lock. Clones share one stream (so a seeded policy cloned into two tasks
/// still replays deterministically when the draws happen in the same order);
/// [`Rng::fork`] starts an independent stream. It is for jitter, not for
/// anything that needs cryptographic strength.
#[derive(Clone)]
pub struct Rng {
    state: Arc<AtomicU64>,
}

impl Rng {
    /// A generator that yields the same sequence for the same seed.
    pub fn with_seed(seed: u64) -> Self {
        Rng {
            state: Arc::new(AtomicU64::new(seed)),
        }
    }

    /// A generator seeded from the process's hash randomness.
    pub fn from_entropy() -> Self {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(0x6b65_656c);
        Self::with_seed(hasher.finish())
    }

    /// An independent generator seeded from this one.
    pub fn fork(&self) -> Self {
        Self::with_seed(self.next_u64())
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&self) -> u64 {
        let mut z = self
            .state
            .fetch_add(GOLDEN_GAMMA, Ordering::Relaxed)
            .wrapping_add(GOLDEN_GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform float in `[0, 1)`.
    #[inline]
    pub fn next_f64(&self) -> f64 {
        // 53 random bits scaled into [0, 1).
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform integer in `[low, high]` (inclusive). Returns `low` when
    /// `high <= low`.
    pub fn u64_between(&self, low: u64, high: u64) -> u64 {
        if high <= low {
            return low;
        }
        let span = high - low;
        if span == u64::MAX {
            return self.next_u64();
        }
        // Lemire's multiply-shift; the bias for spans far below 2^64 is negligible
        // for jitter purposes.
        let r = ((u128::from(self.next_u64()) * u128::from(span + 1)) >> 64) as u64;
        low + r
    }

    /// A uniform duration in `[low, high]`, at nanosecond resolution. Returns
    /// `low` when `high <= low`.
    pub fn duration_between(&self, low: Duration, high: Duration) -> Duration {
        let lo = saturating_nanos(low);
        let hi = saturating_nanos(high);
        Duration::from_nanos(self.u64_between(lo, hi))
    }
}

fn saturating_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Default for Rng {
    fn default() -> Self {
        Self::from_entropy()
    }
}

impl fmt::Debug for Rng {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rng").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::{prop_assert, prop_assert_eq, proptest};

    #[test]
    fn same_seed_same_sequence() {
        let a = Rng::with_seed(42);
        let b = Rng::with_seed(42);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        assert_ne!(Rng::with_seed(1).next_u64(), Rng::with_seed(2).next_u64());
    }

    #[test]
    fn clones_share_a_stream_and_forks_do_not() {
        let a = Rng::with_seed(9);
        let b = a.clone();
        let reference = Rng::with_seed(9);
        // Draws through either clone advance the one shared sequence.
        assert_eq!(a.next_u64(), reference.next_u64());
        assert_eq!(b.next_u64(), reference.next_u64());
        // A fork is seeded from the next draw and then runs on its own.
        let fork = a.fork();
        let fork_reference = Rng::with_seed(reference.next_u64());
        assert_eq!(fork.next_u64(), fork_reference.next_u64());
        assert_eq!(a.next_u64(), reference.next_u64());
    }

    #[test]
    fn floats_cover_the_unit_interval_roughly_uniformly() {
        let rng = Rng::with_seed(3);
        let mut buckets = [0u32; 10];
        for _ in 0..100_000 {
            let x = rng.next_f64();
            assert!((0.0..1.0).contains(&x));
            buckets[(x * 10.0) as usize] += 1;
        }
        for count in buckets {
            assert!((9_000..11_000).contains(&count), "bucket count {count}");
        }
    }

    proptest! {
        #[test]
        fn between_stays_in_bounds(seed: u64, low in 0u64..1_000_000, span in 0u64..1_000_000) {
            let rng = Rng::with_seed(seed);
            let high = low + span;
            let x = rng.u64_between(low, high);
            prop_assert!(x >= low && x <= high);
            let d = rng.duration_between(Duration::from_nanos(low), Duration::from_nanos(high));
            prop_assert!(d >= Duration::from_nanos(low) && d <= Duration::from_nanos(high));
        }

        #[test]
        fn inverted_bounds_return_low(seed: u64, low in 1u64..u64::MAX) {
            let rng = Rng::with_seed(seed);
            prop_assert_eq!(rng.u64_between(low, low - 1), low);
        }
    }
}
