//! The policy builder and the presets.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use keel_core::{Clock, Rng};

use crate::attempt::{Hook, RetryEvent};
use crate::backoff::{Backoff, Jitter, Schedule};
use crate::budget::RetryBudget;
use crate::error::ConfigError;
use crate::policy::{Inner, RetryPolicy};
use crate::stats::Counters;

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);

/// Builds a [`RetryPolicy`]; [`build`](Self::build) validates every field.
///
/// [`RetryPolicy::builder`] (= [`RetryPolicyBuilder::new`]) starts from the
/// `default` preset; [`RetryPolicyBuilder::aws`] and
/// [`critical`](Self::critical) start from the other presets, so a preset
/// can be adjusted:
///
/// ```
/// use std::time::Duration;
/// use keel_retry::{RetryPolicyBuilder, Jitter};
///
/// let policy = RetryPolicyBuilder::aws()
///     .max_retries(3)
///     .attempt_timeout(Duration::from_secs(10))
///     .build()
///     .unwrap();
/// assert_eq!(policy.max_retries(), 3);
/// assert_eq!(policy.jitter(), Jitter::Full);
///
/// let err = RetryPolicyBuilder::new().jitter(Jitter::Proportional(2.0)).build().unwrap_err();
/// assert_eq!(err.field(), "jitter");
/// ```
#[derive(Clone)]
#[must_use]
pub struct RetryPolicyBuilder {
    max_retries: u32,
    backoff: Backoff,
    max_delay: Duration,
    jitter: Jitter,
    max_elapsed: Option<Duration>,
    attempt_timeout: Option<Duration>,
    max_retry_after: Duration,
    budget: Option<RetryBudget>,
    rng: Option<Rng>,
    clock: Clock,
    hook: Option<Hook>,
}

impl RetryPolicyBuilder {
    /// The `default` preset: 3 retries, exponential from 1 s ×2, at most
    /// 30 s, [`Jitter::default()`] (equal jitter: each sleep is between half
    /// and all of the backoff, spread out but never an almost-immediate
    /// retry, which with only three retries would waste one), retry-after
    /// capped at 1 min, no elapsed limit, no attempt timeout, no budget,
    /// tokio's clock.
    pub fn new() -> Self {
        RetryPolicyBuilder {
            max_retries: 3,
            backoff: Backoff::exponential(SECOND, 2.0),
            max_delay: SECOND * 30,
            jitter: Jitter::default(),
            max_elapsed: None,
            attempt_timeout: None,
            max_retry_after: MINUTE,
            budget: None,
            rng: None,
            clock: Clock::tokio(),
            hook: None,
        }
    }

    /// The `aws` preset, after the AWS SDKs and the AWS architecture blog:
    /// 5 retries, exponential from 500 ms ×2, at most 64 s, **full** jitter
    /// (the least total work for many clients contending for one API),
    /// retry-after capped at 1 min.
    pub fn aws() -> Self {
        RetryPolicyBuilder {
            max_retries: 5,
            backoff: Backoff::exponential(Duration::from_millis(500), 2.0),
            max_delay: SECOND * 64,
            jitter: Jitter::Full,
            ..Self::new()
        }
    }

    /// The `critical` preset, for operations that must eventually succeed:
    /// 7 retries, exponential from 2 s ×2, at most 2 min, equal jitter, at
    /// most 20 min in all (attempts included), retry-after capped at 2 min.
    pub fn critical() -> Self {
        RetryPolicyBuilder {
            max_retries: 7,
            backoff: Backoff::exponential(SECOND * 2, 2.0),
            max_delay: MINUTE * 2,
            jitter: Jitter::Equal,
            max_elapsed: Some(MINUTE * 20),
            max_retry_after: MINUTE * 2,
            ..Self::new()
        }
    }

    /// Retries after the first attempt (0 disables retrying; the first call
    /// still runs). A call makes at most `max_retries + 1` attempts.
    pub fn max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = max_retries;
        self
    }

    /// How delays grow: [`Backoff::constant`], [`Backoff::linear`] or
    /// [`Backoff::exponential`].
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The largest delay backoff and jitter may produce; jitter never goes
    /// past it. Retry-after hints have their own cap,
    /// [`max_retry_after`](Self::max_retry_after).
    pub fn max_delay(mut self, max_delay: Duration) -> Self {
        self.max_delay = max_delay;
        self
    }

    /// How delays are randomised; see [`Jitter`].
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The longest a call may take, counted from its start, attempts
    /// included (not only sleeps): a sleep that would end past it is not
    /// started, and an attempt still running when it passes is cancelled
    /// ([`RetryError::DeadlineExceeded`](crate::RetryError::DeadlineExceeded)).
    /// Must be above zero.
    pub fn max_elapsed(mut self, max_elapsed: Duration) -> Self {
        self.max_elapsed = Some(max_elapsed);
        self
    }

    /// Removes the elapsed-time limit.
    pub fn no_max_elapsed(mut self) -> Self {
        self.max_elapsed = None;
        self
    }

    /// Cancels an attempt that runs longer than `timeout` and counts it as a
    /// failure (retried like any other). Must be above zero.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }

    /// Removes the per-attempt timeout.
    pub fn no_attempt_timeout(mut self) -> Self {
        self.attempt_timeout = None;
        self
    }

    /// The longest sleep an overload's retry-after may impose (an HTTP
    /// `Retry-After`, Telegram's `retry_after`, an open breaker's remaining
    /// time): a longer hint is cut to this. Zero retries overloads at once.
    pub fn max_retry_after(mut self, max_retry_after: Duration) -> Self {
        self.max_retry_after = max_retry_after;
        self
    }

    /// Draws every retry from `budget` (and deposits every call into it);
    /// clones of one budget can be given to several policies.
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The random source for jitter; seed it for reproducible delays.
    /// Defaults to [`Rng::from_entropy`].
    pub fn rng(mut self, rng: Rng) -> Self {
        self.rng = Some(rng);
        self
    }

    /// Where the policy reads the time: the start of a call, the maximum
    /// elapsed time and the `elapsed` its hook is told. Defaults to
    /// [`Clock::tokio`], which follows paused time in tests; hand it the
    /// clock the rest of the program uses (a `keel::Pipeline`'s, a
    /// [`keel_core::ManualClock`]'s in tests). Sleeping between attempts
    /// and cutting off a slow attempt use tokio's timer whatever the clock:
    /// with a manual clock, time spent inside attempts counts only as far
    /// as the test advances the clock. A [`RetryBudget`] keeps its own
    /// clock ([`RetryBudget::with_clock`]).
    ///
    /// ```
    /// use std::time::Duration;
    /// use keel_core::Clock;
    /// use keel_retry::{Backoff, RetryError, RetryPolicy};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let (clock, hand) = Clock::manual();
    /// let policy = RetryPolicy::builder()
    ///     .backoff(Backoff::constant(Duration::ZERO))
    ///     .max_retries(10)
    ///     .max_elapsed(Duration::from_secs(5))
    ///     .clock(clock)
    ///     .build()
    ///     .unwrap();
    /// // Each attempt "takes" two seconds of the manual clock's time.
    /// let result: Result<(), _> = policy
    ///     .retry(|_| {
    ///         hand.advance(Duration::from_secs(2));
    ///         async { Err("slow and failing") }
    ///     })
    ///     .await;
    /// assert!(matches!(result, Err(RetryError::DeadlineExceeded { attempts: 3, .. })));
    /// # }
    /// ```
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Calls `hook` before each retry's sleep with the attempt, its outcome,
    /// the delay and a reference to the error. It runs inline on the
    /// retrying task: keep it short (log, count).
    pub fn on_retry<F>(mut self, hook: F) -> Self
    where
        F: Fn(&RetryEvent<'_>) + Send + Sync + 'static,
    {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// Validates and builds. The error names the first invalid field.
    pub fn build(self) -> Result<RetryPolicy, ConfigError> {
        self.backoff.validate()?;
        self.jitter.validate()?;
        if self.max_elapsed == Some(Duration::ZERO) {
            return Err(ConfigError::new("max_elapsed", "must be above zero"));
        }
        if self.attempt_timeout == Some(Duration::ZERO) {
            return Err(ConfigError::new("attempt_timeout", "must be above zero"));
        }
        Ok(self.build_unchecked())
    }

    /// Builds a configuration known to be valid (the presets).
    pub(crate) fn build_unchecked(self) -> RetryPolicy {
        RetryPolicy::from_inner(Inner {
            max_retries: self.max_retries,
            schedule: Schedule::new(self.backoff, self.jitter, self.max_delay),
            max_elapsed: self.max_elapsed,
            attempt_timeout: self.attempt_timeout,
            max_retry_after: self.max_retry_after,
            budget: self.budget,
            rng: self.rng.unwrap_or_default(),
            clock: self.clock,
            hook: self.hook,
            counters: Counters::default(),
        })
    }
}

impl Default for RetryPolicyBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for RetryPolicyBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicyBuilder")
            .field("max_retries", &self.max_retries)
            .field("backoff", &self.backoff)
            .field("max_delay", &self.max_delay)
            .field("jitter", &self.jitter)
            .field("max_elapsed", &self.max_elapsed)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("max_retry_after", &self.max_retry_after)
            .field("budget", &self.budget)
            .field("clock", &self.clock)
            .field("on_retry", &self.hook.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_fields_are_named() {
        let field = |b: RetryPolicyBuilder| b.build().unwrap_err().field().to_owned();
        assert_eq!(
            field(RetryPolicyBuilder::new().backoff(Backoff::exponential(SECOND, 0.0))),
            "backoff.factor"
        );
        assert_eq!(
            field(RetryPolicyBuilder::new().jitter(Jitter::Proportional(f64::INFINITY))),
            "jitter"
        );
        assert_eq!(
            field(RetryPolicyBuilder::new().max_elapsed(Duration::ZERO)),
            "max_elapsed"
        );
        assert_eq!(
            field(RetryPolicyBuilder::new().attempt_timeout(Duration::ZERO)),
            "attempt_timeout"
        );
        assert!(
            RetryPolicyBuilder::new()
                .max_delay(Duration::ZERO)
                .backoff(Backoff::constant(Duration::ZERO))
                .build()
                .is_ok(),
            "zero delays are valid (tight loops in tests and benches)"
        );
    }

    #[test]
    fn presets_are_valid_and_as_documented() {
        for b in [
            RetryPolicyBuilder::new(),
            RetryPolicyBuilder::aws(),
            RetryPolicyBuilder::critical(),
        ] {
            assert!(b.build().is_ok());
        }
        let d = RetryPolicy::default();
        assert_eq!(d.max_retries(), 3);
        assert_eq!(d.backoff(), Backoff::exponential(SECOND, 2.0));
        assert_eq!(d.max_delay(), SECOND * 30);
        assert_eq!(d.jitter(), Jitter::Equal);
        assert_eq!(d.jitter(), Jitter::default(), "one default jitter");

        let a = RetryPolicy::aws();
        assert_eq!(a.max_retries(), 5);
        assert_eq!(
            a.backoff(),
            Backoff::exponential(Duration::from_millis(500), 2.0)
        );
        assert_eq!(a.max_delay(), SECOND * 64);

        let c = RetryPolicy::critical();
        assert_eq!(c.max_retries(), 7);
        assert_eq!(c.backoff(), Backoff::exponential(SECOND * 2, 2.0));
        assert_eq!(c.max_delay(), MINUTE * 2);
        assert_eq!(c.max_elapsed(), Some(MINUTE * 20));
    }
}
