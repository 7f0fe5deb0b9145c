//! The decisions of one retried call. It is synchronous: the retry loop
//! (`RetryPolicy::drive`) only runs attempts and sleeps.

use std::fmt;
use std::time::Duration;

use keel_core::{Classify, Outcome};
use tokio::time::Instant;

use crate::attempt::{Attempt, RetryEvent};
use crate::backoff::{NO_PREVIOUS, nanos};
use crate::budget::{RetryBudget, Withdrawal};
use crate::error::RetryError;
use crate::policy::Inner;
use crate::stats::{SUCCESS_RETRY_SLOTS, bump};
use std::sync::atomic::Ordering;

/// Which limit cut an attempt off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// The per-attempt timeout.
    Attempt,
    /// The policy's maximum elapsed time.
    Deadline,
}

/// What one attempt produced.
pub(crate) enum AttemptResult<T, E> {
    Done(Result<T, E>),
    TimedOut(Limit),
}

/// What the retry loop does next.
pub(crate) enum Step<T, E> {
    Return(Result<T, RetryError<E>>),
    /// Sleep this many nanoseconds, then call [`Run::slept`] and start the
    /// next attempt. Plain words: this crosses the loop once per retry.
    Sleep(u64),
}

/// A clock read costs tens of nanoseconds (more than the rest of a retry
/// decision), so `Run` reads the policy's clock only when a rule needs it: a
/// maximum elapsed time, a budget, or a hook (which is told the elapsed
/// time). A policy with none of them never reads the clock.
///
/// A reading is also reused until the call next waits (an attempt that
/// returns `Pending`, a non-zero sleep, a timed attempt): between two
/// waits only this task's synchronous code runs, so time has moved by its
/// CPU time at most, and under tokio's paused clock not at all. A call whose
/// attempts fail at once and retry without delay therefore reads the clock
/// once. A manual clock is read every time (a test may advance it from
/// inside an attempt).
pub(crate) struct Run<'p, E> {
    policy: &'p Inner,
    /// When the call started; `None` when nothing needs the clock.
    started: Option<Instant>,
    deadline: Option<Instant>,
    /// The last reading, reusable while `fresh`.
    now: Option<Instant>,
    /// The budget's slot period for `now`, once computed.
    period: Option<u64>,
    /// No wait since `now` was read (always false for a manual clock).
    fresh: bool,
    attempts: u32,
    /// Retries started but not yet added to the shared counter: published
    /// when the call next waits or ends, so back-to-back retries cost one
    /// atomic add between them.
    uncounted_retries: u32,
    /// The previous backoff delay in nanoseconds (`NO_PREVIOUS` at first).
    prev_delay: u64,
    /// The budget token taken for the retry being slept towards: spent by
    /// [`slept`](Run::slept), handed back if the call is dropped first.
    pending: Option<Withdrawal<'p>>,
    /// The budget period of this call's deposit, while it is not made: it
    /// is booked with the first withdrawal, or when the call ends.
    deposit: Option<u64>,
    /// The call returned (its outcome is counted); dropped without it, it
    /// counts as cancelled.
    ended: bool,
    last: Option<E>,
}

impl<E> Drop for Run<'_, E> {
    #[inline]
    fn drop(&mut self) {
        self.publish_retries();
        if let (Some(period), Some(budget)) = (self.deposit.take(), &self.policy.budget) {
            budget.deposit_in(period);
        }
        if !self.ended {
            bump(&self.policy.counters.cancelled);
        }
    }
}

impl<E> Run<'_, E> {
    #[inline]
    fn publish_retries(&mut self) {
        if self.uncounted_retries > 0 {
            self.policy
                .counters
                .retries
                .fetch_add(u64::from(self.uncounted_retries), Ordering::Relaxed);
            self.uncounted_retries = 0;
        }
    }

    /// The call waited (an attempt returned `Pending`, a sleep ran): the
    /// cached reading is stale and pending counts are published.
    #[inline]
    pub(crate) fn waited(&mut self) {
        self.fresh = false;
        self.publish_retries();
    }

    /// The policy's clock, read again only after a wait.
    #[inline]
    fn now(&mut self) -> Instant {
        match self.now {
            Some(now) if self.fresh => now,
            _ => {
                let clock = &self.policy.clock;
                let now = clock.now();
                self.now = Some(now);
                self.period = None;
                self.fresh = !clock.is_manual();
                now
            }
        }
    }

    /// The budget's current slot period, reusing the reading when it may.
    #[inline]
    fn budget_period(&mut self, budget: &RetryBudget) -> u64 {
        if self.fresh
            && let Some(period) = self.period
        {
            return period;
        }
        let now = self.now();
        let policy = self.policy;
        let period = budget.period_at(tokio_reading(policy, Some(now)));
        // A budget on a manual clock reads its own: never reuse that.
        if !budget.is_manual() {
            self.period = Some(period);
        }
        period
    }
}

impl<'p, E: fmt::Debug> Run<'p, E> {
    /// A call about to start; [`start`](Self::start) starts it. Two steps so
    /// the compiler can build this constant part in place, in the retry
    /// future, instead of building it aside and copying it over.
    #[inline(always)]
    pub(crate) fn new(policy: &'p Inner) -> Self {
        Run {
            policy,
            started: None,
            deadline: None,
            now: None,
            period: None,
            fresh: false,
            attempts: 0,
            uncounted_retries: 0,
            prev_delay: NO_PREVIOUS,
            pending: None,
            deposit: None,
            ended: false,
            last: None,
        }
    }

    /// Starts the call: reads the clock if a rule needs it and notes the
    /// budget period of its deposit (made with its first retry, or when it
    /// ends: one compare-and-swap either way). The call is counted when it
    /// ends, see `RetryStats`.
    #[inline(always)]
    pub(crate) fn start(&mut self) {
        let policy = self.policy;
        if policy.max_elapsed.is_some() || policy.hook.is_some() || policy.budget.is_some() {
            let started = self.now();
            self.started = Some(started);
            self.deadline = policy.max_elapsed.and_then(|d| started.checked_add(d));
            if let Some(budget) = &policy.budget {
                self.deposit = Some(self.budget_period(budget));
            }
        }
    }

    /// The sleep before the next attempt is over: its budget token is spent.
    #[inline(always)]
    pub(crate) fn slept(&mut self) {
        if let Some(w) = self.pending.take() {
            w.commit();
        }
    }

    /// Starts the next attempt; returns what to tell the operation and the
    /// time limit to run it under.
    #[inline(always)]
    pub(crate) fn next_attempt(&mut self) -> (Attempt, Option<(Duration, Limit)>) {
        // The first attempt is counted with the call (see `Counters`).
        if self.attempts > 0 {
            self.uncounted_retries += 1;
        }
        self.attempts = self.attempts.saturating_add(1);
        let deadline = self.deadline;
        let remaining = deadline.map(|d| d.saturating_duration_since(self.now()));
        let limit = match (self.policy.attempt_timeout, remaining) {
            (None, None) => None,
            (Some(t), None) => Some((t, Limit::Attempt)),
            (None, Some(r)) => Some((r, Limit::Deadline)),
            (Some(t), Some(r)) if t < r => Some((t, Limit::Attempt)),
            (Some(_), Some(r)) => Some((r, Limit::Deadline)),
        };
        let attempt = Attempt {
            number: self.attempts,
            timeout: limit.map(|(d, _)| d),
        };
        (attempt, limit)
    }

    /// Decides what follows the attempt's result. The common paths (a
    /// success, a retry) stay small; giving up and notifying are out of line.
    #[inline(always)]
    pub(crate) fn finish<T, C>(&mut self, classifier: &C, result: AttemptResult<T, E>) -> Step<T, E>
    where
        C: Classify<T, E> + ?Sized,
    {
        let p = self.policy;
        let (outcome, result) = match result {
            AttemptResult::Done(r) => (classifier.classify(&r), Some(r)),
            AttemptResult::TimedOut(Limit::Attempt) => {
                bump(&p.counters.attempt_timeouts);
                (Outcome::Failure, None)
            }
            AttemptResult::TimedOut(Limit::Deadline) => {
                return self.give_up(GiveUp::Deadline, None);
            }
        };

        let result = match result {
            Some(r) if !outcome.is_retryable() => return self.stop(outcome, r),
            other => other,
        };

        if self.attempts > p.max_retries {
            return self.give_up(GiveUp::Exhausted, result);
        }

        let delay = match outcome.retry_after() {
            Some(asked) => nanos(asked.min(p.max_retry_after)),
            None => {
                let d = p
                    .schedule
                    .delay_nanos(self.attempts, self.prev_delay, &p.rng);
                self.prev_delay = d;
                d
            }
        };

        let started = self.started;
        let now = started.map(|_| self.now());
        if let Some((deadline, now)) = self.deadline.zip(now)
            && now
                .checked_add(Duration::from_nanos(delay))
                .is_none_or(|wake| wake >= deadline)
        {
            return self.give_up(GiveUp::Deadline, result);
        }

        if let Some(budget) = &p.budget {
            let period = self.budget_period(budget);
            let carried = if self.deposit.is_some() {
                budget.deposit_units()
            } else {
                0
            };
            match budget.withdraw_in(period, carried) {
                Ok(w) => {
                    self.deposit = None;
                    self.pending = Some(w);
                }
                Err(_) => return self.give_up(GiveUp::Budget, result),
            }
        }

        // Checked here so that a silent retry does not pay for the call.
        if p.hook.is_some() || tracing::enabled!(tracing::Level::DEBUG) {
            self.announce(outcome, Duration::from_nanos(delay), now, result.as_ref());
        }
        if let Some(Err(e)) = result {
            self.last = Some(e);
        }
        Step::Sleep(delay)
    }

    /// A result the classifier does not retry: returned as is.
    #[inline(always)]
    fn stop<T>(&mut self, outcome: Outcome, result: Result<T, E>) -> Step<T, E> {
        let counters = &self.policy.counters;
        self.ended = true;
        Step::Return(match result {
            Ok(v) if outcome.is_success() => {
                if self.attempts > 1 {
                    // The success and the retries not yet published, in one
                    // add (see `Counters::successes_after_retry`).
                    let unpublished = self.uncounted_retries as usize;
                    let slot = if unpublished < SUCCESS_RETRY_SLOTS {
                        self.uncounted_retries = 0;
                        unpublished
                    } else {
                        0
                    };
                    bump(&counters.successes_after_retry[slot]);
                } else {
                    bump(&counters.successes_first_try);
                }
                Ok(v)
            }
            Ok(v) => {
                bump(&counters.not_retryable);
                Ok(v)
            }
            Err(error) => {
                bump(&counters.not_retryable);
                Err(RetryError::NotRetryable {
                    error,
                    attempts: self.attempts,
                })
            }
        })
    }

    /// Logs the retry and calls the hook.
    #[inline(never)]
    fn announce<T>(
        &self,
        outcome: Outcome,
        delay: Duration,
        now: Option<Instant>,
        result: Option<&Result<T, E>>,
    ) {
        let error = match result {
            Some(Err(e)) => Some(e as &dyn fmt::Debug),
            _ => None,
        };
        let attempt = self.attempts;
        tracing::debug!(attempt, outcome = %outcome, delay = ?delay, error = ?error, "retrying");
        if let Some(hook) = &self.policy.hook {
            let elapsed = now
                .zip(self.started)
                .map_or(Duration::ZERO, |(now, started)| {
                    now.saturating_duration_since(started)
                });
            hook(&RetryEvent {
                attempt,
                outcome,
                delay,
                error,
                timed_out: result.is_none(),
                elapsed,
            });
        }
    }

    /// Ends the call on a retryable result: an `Ok` comes back as is (tower's
    /// behaviour), an error (or a timeout, `None`) as the matching
    /// [`RetryError`], carrying the most recent error.
    #[cold]
    #[inline(never)]
    fn give_up<T>(&mut self, why: GiveUp, result: Option<Result<T, E>>) -> Step<T, E> {
        let p = self.policy;
        let attempts = self.attempts;
        self.ended = true;
        let counter = match why {
            GiveUp::Exhausted => &p.counters.exhausted,
            GiveUp::Deadline => &p.counters.deadline_exceeded,
            GiveUp::Budget => &p.counters.budget_refusals,
        };
        bump(counter);
        tracing::debug!(attempts, reason = why.as_str(), "giving up");
        let result = match result {
            Some(Ok(v)) => return Step::Return(Ok(v)),
            Some(Err(e)) => Some(e),
            None => None,
        };
        Step::Return(Err(match (why, result) {
            (GiveUp::Exhausted, Some(last)) => RetryError::Exhausted { last, attempts },
            (GiveUp::Exhausted, None) => RetryError::AttemptTimeout {
                last: self.last.take(),
                attempts,
                timeout: p.attempt_timeout.unwrap_or_default(),
            },
            (GiveUp::Deadline, last) => RetryError::DeadlineExceeded {
                last: last.or_else(|| self.last.take()),
                attempts,
                max_elapsed: p.max_elapsed.unwrap_or_default(),
            },
            (GiveUp::Budget, last) => RetryError::BudgetExhausted {
                last: last.or_else(|| self.last.take()),
                attempts,
            },
        }))
    }
}

/// A reading of the policy's clock that a budget may reuse (budgets reuse
/// only tokio's clock readings; see `RetryBudget::deposit_at`).
#[inline]
fn tokio_reading(policy: &Inner, now: Option<Instant>) -> Option<Instant> {
    now.filter(|_| !policy.clock.is_manual())
}

/// Why a retryable result ends the call.
#[derive(Debug, Clone, Copy)]
enum GiveUp {
    Exhausted,
    Deadline,
    Budget,
}

impl GiveUp {
    fn as_str(self) -> &'static str {
        match self {
            GiveUp::Exhausted => "retries exhausted",
            GiveUp::Deadline => "maximum elapsed time",
            GiveUp::Budget => "retry budget exhausted",
        }
    }
}
