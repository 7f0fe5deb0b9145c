//! A retry budget shared by any number of policies.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keel_core::Clock;
use tokio::time::Instant;

use crate::error::{ConfigError, RetryBudgetExhausted};

/// Slots the window is divided into: the window slides in steps of
/// `window / SLOTS`.
const SLOTS: usize = 10;
/// Fixed-point unit: one retry costs `UNIT`, one request deposits
/// `ratio · UNIT` (so the ratio has a resolution of 0.1 %).
const UNIT: i64 = 1000;
/// Each slot is one `AtomicU64`: the slot's period number (mod 2^24) in the
/// high bits, a signed 40-bit balance in the low bits. Packing both in one
/// word lets a writer move a slot to a new period and add to it with one
/// compare-and-swap, without a lock.
const COUNT_BITS: u32 = 40;
const EPOCH_BITS: u32 = 64 - COUNT_BITS;
const EPOCH_MASK: u64 = (1 << EPOCH_BITS) - 1;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const COUNT_MAX: i64 = (1 << (COUNT_BITS - 1)) - 1;
const COUNT_MIN: i64 = -(1 << (COUNT_BITS - 1));

/// A retry budget: over any sliding `window`, retries may add at most
/// `retry_ratio` of the requests made in that window, plus a fixed
/// `reserve` of retries that needs no traffic at all (the model of tower's
/// `TpsBudget` and Finagle's `RetryBudget`). The default is 20 % plus a
/// reserve of 100 retries over 10 s.
///
/// Every call through a policy that holds the budget [deposits](Self::deposit)
/// once; every retry [withdraws](Self::try_withdraw) one. When the balance is
/// spent, the retry is refused with [`RetryBudgetExhausted`]
/// ([`RetryError::BudgetExhausted`](crate::RetryError::BudgetExhausted)
/// from a policy), so an outage does not multiply the load on a dependency
/// by the number of retries.
///
/// **The reserve is a burst, not a rate.** It lets a quiet client (one that
/// has made few requests lately) retry at all, and it is available in full
/// at any moment: `reserve = 10` grants ten retries at once, then nothing
/// more from the reserve until those ten leave the window. (tower and
/// Finagle spell it `min_per_sec` and multiply it by the window, which
/// reads like a rate and is not one; here it is the number you get.)
///
/// ```
/// use std::time::Duration;
/// use keel_retry::RetryBudget;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // No ratio: only the reserve, 10 retries per 10 s window.
/// let budget = RetryBudget::new(0.0, 10, Duration::from_secs(10)).unwrap();
/// assert_eq!(budget.available(), 10);
/// for _ in 0..10 {
///     budget.try_withdraw().unwrap(); // all ten at once
/// }
/// assert!(budget.try_withdraw().is_err());
///
/// // 50 % of requests on top: 4 requests fund 2 more retries.
/// let budget = RetryBudget::new(0.5, 0, Duration::from_secs(10)).unwrap();
/// for _ in 0..4 {
///     budget.deposit();
/// }
/// assert_eq!(budget.available(), 2);
/// # }
/// ```
///
/// Cloning shares one budget (an `Arc`), so several policies (say one per
/// endpoint of one service) can draw from it.
///
/// Cost: a deposit is one clock read and one compare-and-swap on one of ten
/// atomic slots; a withdrawal reads the clock and the ten slots and does
/// one compare-and-swap. No lock. The check and the withdrawal are not one
/// atomic step, so under contention concurrent withdrawers can overdraw by
/// at most one retry each. The window slides in steps of `window / 10`, so
/// a deposit counts for between 0.9 and 1 window.
#[derive(Clone)]
pub struct RetryBudget {
    inner: Arc<Inner>,
}

struct Inner {
    slots: [AtomicU64; SLOTS],
    clock: Clock,
    origin: Instant,
    slot_nanos: u64,
    deposit: i64,
    reserve: i64,
    retry_ratio: f64,
    reserve_retries: u32,
    window: Duration,
}

/// A token withdrawn for one retry, handed back if the retry never runs.
#[derive(Debug)]
pub(crate) struct Withdrawal<'a> {
    budget: &'a RetryBudget,
    period: u64,
    committed: bool,
}

impl Withdrawal<'_> {
    /// The retry is starting: the token is spent for good.
    pub(crate) fn commit(mut self) {
        self.committed = true;
    }
}

impl Drop for Withdrawal<'_> {
    fn drop(&mut self) {
        if !self.committed {
            self.budget.refund(self.period);
        }
    }
}

impl RetryBudget {
    /// A budget allowing, over any sliding `window` (100 ms to 24 h),
    /// retries of `retry_ratio` of the window's requests (a fraction: `0.2`
    /// = 20 %, up to 1000) plus `reserve` retries that need no requests and
    /// may all be spent at once. Reads time from tokio's clock, so
    /// paused-time tests drive it.
    pub fn new(retry_ratio: f64, reserve: u32, window: Duration) -> Result<Self, ConfigError> {
        Self::with_clock(retry_ratio, reserve, window, Clock::tokio())
    }

    /// [`RetryBudget::new`] reading time from `clock` (the program's clock,
    /// or a [`keel_core::ManualClock`]'s in tests of synchronous code).
    pub fn with_clock(
        retry_ratio: f64,
        reserve: u32,
        window: Duration,
        clock: Clock,
    ) -> Result<Self, ConfigError> {
        if !(retry_ratio.is_finite() && (0.0..=1000.0).contains(&retry_ratio)) {
            return Err(ConfigError::new(
                "retry_ratio",
                "must be a fraction in [0, 1000] (0.2 = 20 %)",
            ));
        }
        if window < Duration::from_millis(100) || window > Duration::from_secs(86_400) {
            return Err(ConfigError::new(
                "window",
                "must be between 100 ms and 24 h",
            ));
        }
        let slot_nanos = u64::try_from(window.as_nanos() / SLOTS as u128).unwrap_or(u64::MAX);
        let reserve_retries = reserve;
        // At most 2^32 · 1000: fits in i64.
        let reserve = i64::from(reserve) * UNIT;
        let origin = clock.now();
        Ok(RetryBudget {
            inner: Arc::new(Inner {
                slots: Default::default(),
                clock,
                origin,
                slot_nanos,
                deposit: (retry_ratio * UNIT as f64).round() as i64,
                reserve,
                retry_ratio,
                reserve_retries,
                window,
            }),
        })
    }

    /// The configured ratio of retries to requests.
    pub fn retry_ratio(&self) -> f64 {
        self.inner.retry_ratio
    }

    /// The configured reserve: retries per window that need no requests.
    pub fn reserve(&self) -> u32 {
        self.inner.reserve_retries
    }

    /// The configured window.
    pub fn window(&self) -> Duration {
        self.inner.window
    }

    /// Records one request (policies call this once per call, not per
    /// attempt). Call it yourself for requests made outside a policy that
    /// should still fund retries.
    pub fn deposit(&self) {
        self.deposit_in(self.period());
    }

    /// [`deposit`](Self::deposit) into the slot of `period` (from
    /// [`period_at`](Self::period_at)).
    #[inline]
    pub(crate) fn deposit_in(&self, period: u64) {
        self.inner.add(period, self.inner.deposit);
    }

    /// Takes one retry from the budget, or refuses when it is spent.
    pub fn try_withdraw(&self) -> Result<(), RetryBudgetExhausted> {
        self.withdraw().map(Withdrawal::commit)
    }

    /// Whole retries available now.
    pub fn available(&self) -> u64 {
        u64::try_from(self.balance(self.period()) / UNIT).unwrap_or(0)
    }

    pub(crate) fn withdraw(&self) -> Result<Withdrawal<'_>, RetryBudgetExhausted> {
        self.withdraw_in(self.period(), 0)
    }

    /// What one request deposits, in fixed-point units.
    #[inline]
    pub(crate) fn deposit_units(&self) -> i64 {
        self.inner.deposit
    }

    /// [`withdraw`](Self::withdraw) in the slot of `period`.
    #[inline]
    ///
    /// `carried` is a deposit of the same call not made yet (see
    /// [`deposit_units`](Self::deposit_units)): it counts towards the
    /// balance and is booked in the same update as the withdrawal, so a
    /// policy's call that retries pays one compare-and-swap, not two.
    pub(crate) fn withdraw_in(
        &self,
        period: u64,
        carried: i64,
    ) -> Result<Withdrawal<'_>, RetryBudgetExhausted> {
        if self.balance(period).saturating_add(carried) < UNIT {
            return Err(RetryBudgetExhausted::new());
        }
        self.inner.add(period, carried - UNIT);
        Ok(Withdrawal {
            budget: self,
            period,
            committed: false,
        })
    }

    /// Hands back a withdrawal made in `period`, if it has not expired yet
    /// (an expired one no longer counts against the balance anyway).
    #[inline]
    fn refund(&self, period: u64) {
        let slot = &self.inner.slots[period as usize % SLOTS];
        let _ = slot.fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
            let (epoch, count) = unpack(word);
            (epoch == period & EPOCH_MASK).then(|| pack(period, count.saturating_add(UNIT)))
        });
    }

    fn period(&self) -> u64 {
        self.period_at(None)
    }

    /// `true` when the budget reads a manual clock (it then ignores the
    /// readings a policy offers it).
    #[inline]
    pub(crate) fn is_manual(&self) -> bool {
        self.inner.clock.is_manual()
    }

    /// The current slot period; `now` is a tokio clock reading to reuse when
    /// this budget follows tokio's clock.
    #[inline]
    pub(crate) fn period_at(&self, now: Option<Instant>) -> u64 {
        let now = match now {
            Some(now) if !self.inner.clock.is_manual() => now,
            _ => self.inner.clock.now(),
        };
        let since = now.saturating_duration_since(self.inner.origin);
        // u64 division: a u128 one is a library call costing more than the
        // rest of a deposit. 2^64 ns is 584 years.
        let since = u64::try_from(since.as_nanos()).unwrap_or(u64::MAX);
        since / self.inner.slot_nanos
    }

    /// Reserve plus every slot of the current window, in `UNIT`s.
    #[inline]
    fn balance(&self, period: u64) -> i64 {
        let mut sum = self.inner.reserve;
        for slot in &self.inner.slots {
            let (epoch, count) = unpack(slot.load(Ordering::Acquire));
            let age = (period & EPOCH_MASK).wrapping_sub(epoch) & EPOCH_MASK;
            // `age` near 2^24 means the slot is a period or two ahead: a
            // writer that read the clock just after us.
            if age < SLOTS as u64 || age > EPOCH_MASK - SLOTS as u64 {
                sum = sum.saturating_add(count);
            }
        }
        sum
    }
}

impl Inner {
    #[inline]
    fn add(&self, period: u64, delta: i64) {
        if delta == 0 {
            return;
        }
        let slot = &self.slots[period as usize % SLOTS];
        let mine = period & EPOCH_MASK;
        let _ = slot.fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
            let (epoch, count) = unpack(word);
            let age = mine.wrapping_sub(epoch) & EPOCH_MASK;
            if age == 0 {
                Some(pack(epoch, count.saturating_add(delta)))
            } else if age > EPOCH_MASK / 2 {
                // The slot is ahead of our period: a writer read the clock
                // just after us (add to what is there), or our period is a
                // whole window old (a deposit a policy made at the end of a
                // long call): it no longer counts, so it is dropped.
                let ahead = (EPOCH_MASK + 1) - age;
                (ahead < SLOTS as u64).then(|| pack(epoch, count.saturating_add(delta)))
            } else {
                // The slot holds an expired period: start it afresh.
                Some(pack(mine, delta))
            }
        });
    }
}

#[inline]
fn pack(epoch: u64, count: i64) -> u64 {
    let count = count.clamp(COUNT_MIN, COUNT_MAX);
    ((epoch & EPOCH_MASK) << COUNT_BITS) | (count as u64 & COUNT_MASK)
}

#[inline]
fn unpack(word: u64) -> (u64, i64) {
    let epoch = word >> COUNT_BITS;
    // Sign-extend the low 40 bits.
    let count = ((word << EPOCH_BITS) as i64) >> EPOCH_BITS;
    (epoch, count)
}

impl Default for RetryBudget {
    /// 20 % of requests plus a reserve of 100 retries over 10 s (Finagle's
    /// and tower's defaults: their "10 per second" over 10 s).
    fn default() -> Self {
        RetryBudget::new(0.2, 100, Duration::from_secs(10))
            .unwrap_or_else(|_| unreachable!("the default budget is valid"))
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("retry_ratio", &self.inner.retry_ratio)
            .field("reserve", &self.inner.reserve_retries)
            .field("window", &self.inner.window)
            .field("available", &self.available())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::ManualClock;
    use proptest::prelude::*;

    fn manual(ratio: f64, reserve: u32, window: Duration) -> (RetryBudget, ManualClock) {
        let (clock, handle) = Clock::manual();
        (
            RetryBudget::with_clock(ratio, reserve, window, clock).unwrap(),
            handle,
        )
    }

    fn drain(b: &RetryBudget) -> u64 {
        let mut n = 0;
        while b.try_withdraw().is_ok() {
            n += 1;
            assert!(n < 10_000_000, "budget never ran out");
        }
        n
    }

    #[test]
    fn pack_round_trips_signed_counts() {
        for (e, c) in [
            (0, 0),
            (5, -1),
            (EPOCH_MASK, COUNT_MAX),
            (7, COUNT_MIN),
            (1, 200),
        ] {
            assert_eq!(unpack(pack(e, c)), (e, c));
        }
        // Clamped, not wrapped.
        assert_eq!(unpack(pack(0, i64::MAX)).1, COUNT_MAX);
    }

    #[test]
    fn validation_names_the_argument() {
        let s = Duration::from_secs(1);
        assert_eq!(
            RetryBudget::new(-0.1, 1, s).unwrap_err().field(),
            "retry_ratio"
        );
        assert_eq!(
            RetryBudget::new(f64::NAN, 1, s).unwrap_err().field(),
            "retry_ratio"
        );
        assert_eq!(
            RetryBudget::new(0.2, 1, Duration::from_millis(10))
                .unwrap_err()
                .field(),
            "window"
        );
    }

    #[test]
    fn default_is_twenty_percent_plus_a_reserve_of_100_over_ten_seconds() {
        let b = RetryBudget::default();
        assert_eq!(b.retry_ratio(), 0.2);
        assert_eq!(b.reserve(), 100);
        assert_eq!(b.window(), Duration::from_secs(10));
    }

    #[test]
    fn reserve_only_budget_allows_the_reserve_in_one_burst() {
        let (b, _clock) = manual(0.0, 100, Duration::from_secs(10));
        for _ in 0..1000 {
            b.deposit();
        }
        assert_eq!(drain(&b), 100);
    }

    #[test]
    fn deposits_fund_a_ratio_of_retries() {
        let (b, _clock) = manual(0.2, 0, Duration::from_secs(10));
        assert_eq!(drain(&b), 0);
        for _ in 0..100 {
            b.deposit();
        }
        assert_eq!(b.available(), 20);
        assert_eq!(drain(&b), 20);
    }

    #[test]
    fn withdrawals_and_deposits_expire_after_the_window() {
        let (b, clock) = manual(0.5, 10, Duration::from_secs(10));
        for _ in 0..10 {
            b.deposit();
        }
        // 10 (the reserve) + 5 (50 % of 10 requests).
        assert_eq!(drain(&b), 15);
        clock.advance(Duration::from_secs(5));
        assert_eq!(drain(&b), 0, "spent retries still count within the window");
        clock.advance(Duration::from_secs(5));
        // Everything from the first slot expired: the reserve is back, the
        // deposits are gone.
        assert_eq!(drain(&b), 10);
    }

    #[test]
    fn refund_returns_a_token_only_while_it_counts() {
        let (b, clock) = manual(0.0, 1, Duration::from_secs(1));
        assert_eq!(b.available(), 1);
        let w = b.withdraw().unwrap();
        assert_eq!(b.available(), 0);
        drop(w);
        assert_eq!(b.available(), 1);

        let w = b.withdraw().unwrap();
        clock.advance(Duration::from_secs(1));
        // The withdrawal expired with its slot; refunding it must not mint
        // a second token.
        drop(w);
        assert_eq!(b.available(), 1);

        let w = b.withdraw().unwrap();
        w.commit();
        assert_eq!(b.available(), 0);
    }

    #[test]
    fn a_deposit_booked_a_window_late_is_dropped() {
        let (b, clock) = manual(1.0, 0, Duration::from_secs(1));
        let start = b.period();
        // The slot of `start` now holds the period a window later.
        clock.advance(Duration::from_secs(1));
        b.deposit();
        assert_eq!(b.available(), 1);
        b.deposit_in(start);
        assert_eq!(b.available(), 1, "a window-old deposit no longer counts");
        // A withdrawal carrying its call's deposit books both at once.
        let w = b.withdraw_in(b.period(), b.deposit_units()).unwrap();
        w.commit();
        assert_eq!(b.available(), 1);
    }

    #[test]
    fn clones_share_one_balance() {
        let (a, _clock) = manual(0.0, 2, Duration::from_secs(1));
        let b = a.clone();
        assert!(a.try_withdraw().is_ok());
        assert!(b.try_withdraw().is_ok());
        assert!(a.try_withdraw().is_err());
        assert!(b.try_withdraw().is_err());
    }

    #[test]
    fn concurrent_withdrawals_overdraw_by_at_most_one_each() {
        let (b, _clock) = manual(0.0, 1000, Duration::from_secs(10));
        let threads = 8;
        let taken: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|_| s.spawn(|| drain(&b.clone())))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert!((1000..=1000 + threads).contains(&taken), "took {taken}");
    }

    proptest! {
        /// Within one window: retries granted = reserve + ratio · requests
        /// (to the fixed-point resolution), whatever the interleaving.
        #[test]
        fn grants_match_the_formula(
            ratio_permille in 0u32..=3000,
            reserve in 0u32..3000,
            window_secs in 1u64..60,
            requests in 0u32..2000,
        ) {
            let ratio = f64::from(ratio_permille) / 1000.0;
            let window = Duration::from_secs(window_secs);
            let (b, _clock) = manual(ratio, reserve, window);
            for _ in 0..requests {
                b.deposit();
            }
            let expected = (u64::from(reserve) * 1000
                + u64::from(ratio_permille) * u64::from(requests)) / 1000;
            prop_assert_eq!(b.available(), expected);
            prop_assert_eq!(drain(&b), expected);
        }

        /// After any sequence of deposits, withdrawals and clock moves, the
        /// balance is exactly reserve + ratio · (deposits still in the
        /// window) − (grants still in the window), and a retry is granted
        /// exactly when that balance covers one.
        #[test]
        fn balance_follows_the_sliding_window(
            steps in proptest::collection::vec((0u8..3, 0u64..4000), 1..200),
        ) {
            let window = Duration::from_secs(10);
            let slot = window / SLOTS as u32;
            let (b, clock) = manual(0.2, 10, window);
            // (time, is_deposit) of every deposit and granted withdrawal.
            let mut log: Vec<(Duration, bool)> = Vec::new();
            let expected = |log: &[(Duration, bool)], now: Duration| {
                // The budget counts the current slot and the nine before it.
                let current = now.as_nanos() / slot.as_nanos();
                let counted = |t: &Duration| t.as_nanos() / slot.as_nanos() + SLOTS as u128 > current;
                let deposits = log.iter().filter(|(t, d)| *d && counted(t)).count() as i64;
                let grants = log.iter().filter(|(t, d)| !*d && counted(t)).count() as i64;
                10 * UNIT + deposits * 200 - grants * UNIT
            };
            for (kind, millis) in steps {
                let now = clock.elapsed();
                match kind {
                    0 => { b.deposit(); log.push((now, true)); }
                    1 => {
                        let covered = expected(&log, now) >= UNIT;
                        let granted = b.try_withdraw().is_ok();
                        prop_assert_eq!(granted, covered);
                        if granted { log.push((now, false)); }
                    }
                    _ => clock.advance(Duration::from_millis(millis)),
                }
                prop_assert_eq!(b.balance(b.period()), expected(&log, clock.elapsed()));
            }
        }
    }
}
