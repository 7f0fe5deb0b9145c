//! Per-policy counters.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of one policy's counters since it was built (clones of a
/// policy share them). Read with [`RetryPolicy::stats`](crate::RetryPolicy::stats).
///
/// A call is counted when it **ends**, in exactly one of `successes`,
/// `not_retryable`, `exhausted`, `budget_refusals`, `deadline_exceeded` or
/// `cancelled` (dropped before it ended); `calls` is their sum, so a call
/// still running is not in it yet. Counting once, at the end, makes a call
/// that succeeds at once cost one atomic increment. Retries are counted as
/// they start, published at the latest when the call next waits (an attempt
/// that returns `Pending`, a sleep) or ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryStats {
    /// Calls that ended (one per `retry*` invocation that returned or was
    /// dropped): the sum of the six outcomes below.
    pub calls: u64,
    /// Attempts started, first attempts included.
    pub attempts: u64,
    /// Retries started (attempts after the first).
    pub retries: u64,
    /// Calls that ended with a result classified as success.
    pub successes: u64,
    /// Of `successes`, those that needed at least one retry.
    pub successes_after_retry: u64,
    /// Calls that ended with a result the classifier does not retry
    /// (neutral, or an error it calls a success).
    pub not_retryable: u64,
    /// Calls that used every allowed retry and still failed.
    pub exhausted: u64,
    /// Calls whose retry the shared budget refused.
    pub budget_refusals: u64,
    /// Calls stopped by the maximum elapsed time.
    pub deadline_exceeded: u64,
    /// Calls dropped (cancelled by their caller) before they ended.
    pub cancelled: u64,
    /// Attempts cut off by the per-attempt timeout (not a call count).
    pub attempt_timeouts: u64,
}

/// The live counters. Neither calls nor attempts are counted separately:
/// calls are the sum of the outcomes, and every call makes exactly one first
/// attempt, so attempts = calls + retries. A call that succeeds at once
/// costs one atomic increment.
/// See `Counters::successes_after_retry`.
pub(crate) const SUCCESS_RETRY_SLOTS: usize = 4;

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) retries: AtomicU64,
    /// Successes are split so each costs one increment; `successes` is the sum.
    pub(crate) successes_first_try: AtomicU64,
    /// Calls that succeeded after retrying, by how many of their retries
    /// were not yet added to `retries` when they ended (0 to 3): one atomic
    /// add then counts both the success and those retries, and a call that
    /// succeeds after retrying without waiting (zero delays) costs one
    /// atomic operation in all, as a first-try success does. A call with
    /// more unpublished retries publishes them to `retries` and counts
    /// under 0.
    pub(crate) successes_after_retry: [AtomicU64; SUCCESS_RETRY_SLOTS],
    pub(crate) not_retryable: AtomicU64,
    pub(crate) exhausted: AtomicU64,
    pub(crate) budget_refusals: AtomicU64,
    pub(crate) deadline_exceeded: AtomicU64,
    pub(crate) attempt_timeouts: AtomicU64,
    pub(crate) cancelled: AtomicU64,
}

#[inline]
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn snapshot(&self) -> RetryStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut retries = get(&self.retries);
        let mut successes_after_retry = 0;
        for (unpublished, calls) in (0u64..).zip(&self.successes_after_retry) {
            let calls = get(calls);
            successes_after_retry += calls;
            retries += unpublished * calls;
        }
        let successes = get(&self.successes_first_try) + successes_after_retry;
        let not_retryable = get(&self.not_retryable);
        let exhausted = get(&self.exhausted);
        let budget_refusals = get(&self.budget_refusals);
        let deadline_exceeded = get(&self.deadline_exceeded);
        let cancelled = get(&self.cancelled);
        let calls =
            successes + not_retryable + exhausted + budget_refusals + deadline_exceeded + cancelled;
        RetryStats {
            calls,
            attempts: calls + retries,
            retries,
            successes,
            successes_after_retry,
            not_retryable,
            exhausted,
            budget_refusals,
            deadline_exceeded,
            cancelled,
            attempt_timeouts: get(&self.attempt_timeouts),
        }
    }
}
