//! The decisions of one retried call. It is synchronous: the retry loop
//! (`RetryPolicy::drive`) only runs attempts and sleeps.

use std::fmt;
use std::time::Duration;

use keel_core::{Classify, Outcome};
use tokio::time::Instant;

use crate::attempt::{Attempt, RetryEvent};
use crate::budget::Withdrawal;
use crate::error::RetryError;
use crate::policy::Inner;
use crate::stats::bump;

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

/// What the front end does next.
pub(crate) enum Step<'p, T, E> {
    Return(Result<T, RetryError<E>>),
    /// Sleep `delay`, then commit the budget withdrawal (if any) and start
    /// the next attempt. Dropping the withdrawal instead refunds it.
    Sleep(Duration, Option<Withdrawal<'p>>),
}

/// A clock read costs tens of nanoseconds (more than the rest of a retry
/// decision), so `Run` reads the policy's clock only when a rule needs it: a
/// maximum elapsed time, a budget, or a hook (which is told the elapsed
/// time). A policy with none of them never reads the clock.
pub(crate) struct Run<'p, E> {
    policy: &'p Inner,
    /// When the call started; `None` when nothing needs it.
    started: Option<Instant>,
    deadline: Option<Instant>,
    attempts: u32,
    prev_delay: Option<Duration>,
    last: Option<E>,
}

impl<'p, E: fmt::Debug> Run<'p, E> {
    /// Starts a call: counts it and deposits it into the budget.
    #[inline]
    pub(crate) fn begin(policy: &'p Inner) -> Self {
        bump(&policy.counters.calls);
        let started =
            (policy.max_elapsed.is_some() || policy.hook.is_some() || policy.budget.is_some())
                .then(|| policy.clock.now());
        if let Some(budget) = &policy.budget {
            budget.deposit_at(tokio_reading(policy, started));
        }
        Run {
            policy,
            started,
            deadline: policy
                .max_elapsed
                .zip(started)
                .and_then(|(d, s)| s.checked_add(d)),
            attempts: 0,
            prev_delay: None,
            last: None,
        }
    }

    /// Starts the next attempt; returns what to tell the operation and the
    /// time limit to run it under.
    #[inline]
    pub(crate) fn next_attempt(&mut self) -> (Attempt, Option<(Duration, Limit)>) {
        // The first attempt is counted with the call (see `Counters`).
        if self.attempts > 0 {
            bump(&self.policy.counters.retries);
        }
        self.attempts = self.attempts.saturating_add(1);
        let remaining = self
            .deadline
            .map(|d| d.saturating_duration_since(self.policy.clock.now()));
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
    #[inline]
    pub(crate) fn finish<T, C>(
        &mut self,
        classifier: &C,
        result: AttemptResult<T, E>,
    ) -> Step<'p, T, E>
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
            Some(asked) => asked.min(p.max_retry_after),
            None => {
                let d = p.schedule.delay(self.attempts, self.prev_delay, &p.rng);
                self.prev_delay = Some(d);
                d
            }
        };

        let now = self.started.map(|_| p.clock.now());
        if let Some((deadline, now)) = self.deadline.zip(now)
            && now.checked_add(delay).is_none_or(|wake| wake >= deadline)
        {
            return self.give_up(GiveUp::Deadline, result);
        }

        let withdrawal = match &p.budget {
            None => None,
            Some(budget) => match budget.withdraw_at(tokio_reading(p, now)) {
                Ok(w) => Some(w),
                Err(_) => return self.give_up(GiveUp::Budget, result),
            },
        };

        self.announce(outcome, delay, now, result.as_ref());
        if let Some(Err(e)) = result {
            self.last = Some(e);
        }
        Step::Sleep(delay, withdrawal)
    }

    /// A result the classifier does not retry: returned as is.
    #[inline]
    fn stop<T>(&mut self, outcome: Outcome, result: Result<T, E>) -> Step<'p, T, E> {
        let counters = &self.policy.counters;
        Step::Return(match result {
            Ok(v) if outcome.is_success() => {
                bump(if self.attempts > 1 {
                    &counters.successes_after_retry
                } else {
                    &counters.successes_first_try
                });
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
    fn give_up<T>(&mut self, why: GiveUp, result: Option<Result<T, E>>) -> Step<'p, T, E> {
        let p = self.policy;
        let attempts = self.attempts;
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
