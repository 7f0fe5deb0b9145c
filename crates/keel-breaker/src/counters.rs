//! Cumulative call counters that cost no atomic read-modify-write on the
//! call path.
//!
//! Each breaker keeps [`STRIPES`] stripes of counters (one cache line
//! each, two lines apart so the adjacent-line prefetcher does not couple
//! them) plus one shared stripe. The first `STRIPES` threads that count
//! anything claim a stripe index for their lifetime (process-wide, released
//! when the thread exits); a thread with a claimed index is the only writer
//! of that stripe in every breaker, so it bumps its counters with a plain
//! load and store instead of a locked instruction. Later threads, while all
//! indexes are taken, use `fetch_add` on the shared stripe. Readers sum the
//! stripes.
//!
//! A claimed index changes hands only through the `Release` of the exiting
//! thread and the `Acquire` of the claiming one, so the new owner continues
//! from the previous owner's last value and no increment is lost.
//!
//! These are plain statistics, not part of the state machine, so they use
//! `std` atomics even under loom (keeping the model small).

use std::sync::atomic::{AtomicU64, Ordering};

pub(crate) const SUCCESS: usize = 0;
pub(crate) const FAILURE: usize = 1;
pub(crate) const NEUTRAL: usize = 2;
pub(crate) const SLOW: usize = 3;
pub(crate) const REJECTED_OPEN: usize = 4;
pub(crate) const REJECTED_HALF_OPEN: usize = 5;
pub(crate) const REJECTED_FORCED_OPEN: usize = 6;
const KINDS: usize = 7;

/// Stripes that a thread can own.
const STRIPES: usize = 8;
/// Marks a thread without an owned stripe.
const SHARED: usize = usize::MAX;

#[repr(align(128))]
#[derive(Default)]
struct Stripe([AtomicU64; KINDS]);

#[derive(Default)]
pub(crate) struct Counters {
    owned: [Stripe; STRIPES],
    shared: Stripe,
}

/// Which stripe indexes are owned by a live thread (one bit each).
static CLAIMED: AtomicU64 = AtomicU64::new(0);

struct Claim(usize);

impl Claim {
    fn new() -> Claim {
        let mut claimed = CLAIMED.load(Ordering::Relaxed);
        loop {
            let free = (!claimed).trailing_zeros() as usize;
            if free >= STRIPES {
                return Claim(SHARED);
            }
            match CLAIMED.compare_exchange_weak(
                claimed,
                claimed | (1 << free),
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Claim(free),
                Err(actual) => claimed = actual,
            }
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.0 != SHARED {
            CLAIMED.fetch_and(!(1 << self.0), Ordering::Release);
        }
    }
}

thread_local! {
    static CLAIM: Claim = Claim::new();
}

impl Counters {
    #[inline]
    pub(crate) fn add(&self, kind: usize) {
        let index = CLAIM.try_with(|c| c.0).unwrap_or(SHARED);
        match self.owned.get(index) {
            Some(stripe) => {
                // This thread is the stripe's only writer (see the module
                // docs): no read-modify-write needed.
                let counter = &stripe.0[kind];
                counter.store(
                    counter.load(Ordering::Relaxed).wrapping_add(1),
                    Ordering::Relaxed,
                );
            }
            None => {
                self.shared.0[kind].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn get(&self, kind: usize) -> u64 {
        self.owned
            .iter()
            .chain(std::iter::once(&self.shared))
            .map(|s| s.0[kind].load(Ordering::Relaxed))
            .fold(0u64, u64::wrapping_add)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn no_increment_is_lost_across_many_short_lived_threads() {
        let counters = Arc::new(Counters::default());
        // More threads than stripes, alive at once and one after another,
        // so indexes are shared, claimed, released and claimed again.
        for _round in 0..4 {
            let threads: Vec<_> = (0..12)
                .map(|_| {
                    let counters = counters.clone();
                    std::thread::spawn(move || {
                        for _ in 0..10_000 {
                            counters.add(SUCCESS);
                        }
                        counters.add(SLOW);
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
        }
        assert_eq!(counters.get(SUCCESS), 4 * 12 * 10_000);
        assert_eq!(counters.get(SLOW), 4 * 12);
        assert_eq!(counters.get(FAILURE), 0);
    }
}
