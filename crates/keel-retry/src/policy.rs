//! The retry policy and its one retry loop.

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::Duration;

use keel_core::{Classify, Clock, Rng, classify};

use crate::attempt::{Attempt, Hook};
use crate::backoff::{Backoff, Delays, Jitter, Schedule};
use crate::budget::RetryBudget;
use crate::config::RetryPolicyBuilder;
use crate::error::RetryError;
use crate::run::{AttemptResult, Run, Step};
use crate::stats::{Counters, RetryStats};

/// A boxed, `Send` future borrowing for `'a`: the future type of the tower
/// `RetryService`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The seed of [`RetryPolicy::delays`]' preview source.
const PREVIEW_SEED: u64 = 0x6b65_656c_2d72_6574;

/// A retry policy: how many times to retry, how long to wait, when to stop,
/// what to retry, and the counters of everything it did.
///
/// Build one with [`RetryPolicy::builder`] or take a preset
/// ([`default`](RetryPolicy::default), [`aws`](RetryPolicy::aws),
/// [`critical`](RetryPolicy::critical)); run an operation through it with
/// [`retry`](RetryPolicy::retry), or
/// [`retry_classified`](RetryPolicy::retry_classified) to choose what is
/// retried. Cloning is one `Arc` increment; clones share the configuration,
/// the random source, the clock, the budget and the statistics.
///
/// # What is retried
/// The result of each attempt is classified through
/// [`keel_core::Classify`] ([`classify::Default`]: every `Err` is a
/// failure). Only [`Outcome::Failure`](keel_core::Outcome::Failure) and
/// [`Outcome::Overloaded`](keel_core::Outcome::Overloaded) are retried;
/// success and neutral results are returned at once (an `Err` as
/// [`RetryError::NotRetryable`]). An overload's `retry_after` (an HTTP
/// `Retry-After`, Telegram's `retry_after`, an open breaker's remaining
/// time) replaces the computed delay, capped by the maximum retry-after.
///
/// # When it stops
/// After `max_retries` retries; when the next sleep would end past the
/// maximum elapsed time (which counts time spent in attempts, and also
/// cancels an attempt still running when it passes); when the retry budget
/// refuses. Dropping the future stops it at once, and a budget token taken
/// for a retry that had not started yet is handed back.
///
/// # Cost
/// Per call: one relaxed atomic increment when it ends (plus one for its
/// retries, if any), one random draw per retry when jittered, no
/// allocation. The clock is read only when a rule needs it (a maximum
/// elapsed time, a budget, an `on_retry` hook), and then at the start of
/// the call and again only after the call waited: a call whose attempts
/// fail at once and retry without delay reads it once. A budget on tokio's
/// clock reuses those readings; with a budget, a call does one
/// compare-and-swap per retry (its deposit rides on the first) or one when
/// it ends. A zero delay does not touch the timer.
#[derive(Clone)]
pub struct RetryPolicy {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) max_retries: u32,
    pub(crate) schedule: Schedule,
    pub(crate) max_elapsed: Option<Duration>,
    pub(crate) attempt_timeout: Option<Duration>,
    pub(crate) max_retry_after: Duration,
    pub(crate) budget: Option<RetryBudget>,
    pub(crate) rng: Rng,
    pub(crate) clock: Clock,
    pub(crate) hook: Option<Hook>,
    pub(crate) counters: Counters,
}

impl RetryPolicy {
    pub(crate) fn from_inner(inner: Inner) -> Self {
        RetryPolicy {
            inner: Arc::new(inner),
        }
    }

    /// A builder starting from the `default` preset.
    pub fn builder() -> RetryPolicyBuilder {
        RetryPolicyBuilder::new()
    }

    /// The `aws` preset (see [`RetryPolicyBuilder::aws`]): 5 retries from
    /// 500 ms ×2, at most 64 s, full jitter.
    pub fn aws() -> Self {
        RetryPolicyBuilder::aws().build_unchecked()
    }

    /// The `critical` preset (see [`RetryPolicyBuilder::critical`]): 7
    /// retries from 2 s ×2, at most 2 min, 20 min in all.
    pub fn critical() -> Self {
        RetryPolicyBuilder::critical().build_unchecked()
    }

    /// Retries `op` while its result is a failure or an overload
    /// ([`classify::Default`]: every `Err` is retried). `op` is called with
    /// the [`Attempt`] it makes and returns a fresh future each time.
    ///
    /// The returned future is `Send` when `op`, its futures, `T` and `E` are.
    /// This is [`retry_classified`](Self::retry_classified) with the default
    /// classifier: both run the same loop.
    pub async fn retry<T, E, F, Fut>(&self, op: F) -> Result<T, RetryError<E>>
    where
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: fmt::Debug,
    {
        self.retry_classified(&classify::Default, op).await
    }

    /// [`retry`](Self::retry) with the outcome of each attempt decided by
    /// `classifier` (retry only 5xx and timeouts, honour a 429's
    /// `Retry-After`, treat a 404 as final...). This is the one retry loop:
    /// [`retry`](Self::retry) and the tower layer run through it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use keel_core::{classify, Outcome};
    /// use keel_retry::{Backoff, RetryError, RetryPolicy};
    ///
    /// #[derive(Debug, PartialEq)]
    /// enum ApiError { Unavailable, NotFound }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let policy = RetryPolicy::builder()
    ///     .backoff(Backoff::constant(Duration::from_millis(1)))
    ///     .build()
    ///     .unwrap();
    /// // A 404 will not get better by asking again.
    /// let by_error = classify::on_error(|e: &ApiError| *e == ApiError::Unavailable);
    /// let result: Result<(), _> = policy
    ///     .retry_classified(&by_error, |_| async { Err(ApiError::NotFound) })
    ///     .await;
    /// assert!(matches!(
    ///     result,
    ///     Err(RetryError::NotRetryable { error: ApiError::NotFound, attempts: 1 })
    /// ));
    /// # }
    /// ```
    pub async fn retry_classified<T, E, C, F, Fut>(
        &self,
        classifier: &C,
        mut op: F,
    ) -> Result<T, RetryError<E>>
    where
        C: Classify<T, E> + ?Sized,
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: fmt::Debug,
    {
        let mut run = Run::new(&self.inner);
        run.start();
        loop {
            let (attempt, limit) = run.next_attempt();
            // Pinned where it is built and only borrowed below: an
            // attempt's future can be large (a whole pipeline attempt is
            // over a kilobyte), and moving it into a timeout would copy it
            // on every attempt.
            let mut fut = pin!(op(attempt));
            let result = match limit {
                None => {
                    // Tells `run` whether the attempt waited (see `Run`).
                    let run = &mut run;
                    AttemptResult::Done(
                        poll_fn(|cx| {
                            let poll = fut.as_mut().poll(cx);
                            if poll.is_pending() {
                                run.waited();
                            }
                            poll
                        })
                        .await,
                    )
                }
                Some((within, which)) => {
                    // A timed attempt starts a timer: count it as waiting.
                    run.waited();
                    match tokio::time::timeout(within, fut.as_mut()).await {
                        Ok(r) => AttemptResult::Done(r),
                        Err(_) => AttemptResult::TimedOut(which),
                    }
                }
            };
            match run.finish(classifier, result) {
                Step::Return(r) => return r,
                Step::Sleep(nanos) => {
                    if nanos > 0 {
                        tokio::time::sleep(Duration::from_nanos(nanos)).await;
                        run.waited();
                    }
                    run.slept();
                }
            }
        }
    }

    /// A preview of the delays this policy sleeps before each of its
    /// retries (one per allowed retry, with the cap and jitter, as a call
    /// that gets no retry-after hints would compute them).
    ///
    /// It is pure: the jitter draws from a fresh source with a fixed seed,
    /// never from the policy's own, so calling it twice gives the same
    /// delays and previewing never changes the sleeps of a seeded policy.
    /// The real sleeps draw from the policy's source and differ from the
    /// preview unless there is no jitter. Draw the preview from a source of
    /// your own with [`delays_with`](Self::delays_with).
    ///
    /// ```
    /// use std::time::Duration;
    /// use keel_core::Rng;
    /// use keel_retry::{Backoff, Jitter, RetryPolicy};
    ///
    /// let s = Duration::from_secs(1);
    /// let policy = RetryPolicy::builder()
    ///     .max_retries(4)
    ///     .backoff(Backoff::exponential(s, 2.0))
    ///     .max_delay(s * 5)
    ///     .jitter(Jitter::None)
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(policy.delays().collect::<Vec<_>>(), [s, s * 2, s * 4, s * 5]);
    ///
    /// let seeded = RetryPolicy::builder().rng(Rng::with_seed(7)).build().unwrap();
    /// let preview: Vec<_> = seeded.delays().collect();
    /// assert_eq!(seeded.delays().collect::<Vec<_>>(), preview, "pure");
    /// ```
    pub fn delays(&self) -> Delays {
        self.delays_with(&Rng::with_seed(PREVIEW_SEED))
    }

    /// [`delays`](Self::delays) drawing the jitter from `rng` (seeded for a
    /// replayable sample, [`Rng::from_entropy`] for a fresh one each time).
    pub fn delays_with(&self, rng: &Rng) -> Delays {
        Delays::new(
            self.inner.schedule.clone(),
            rng.clone(),
            self.inner.max_retries,
        )
    }

    /// A snapshot of the counters shared by this policy and its clones.
    pub fn stats(&self) -> RetryStats {
        self.inner.counters.snapshot()
    }

    /// Retries allowed after the first attempt.
    pub fn max_retries(&self) -> u32 {
        self.inner.max_retries
    }

    /// The backoff schedule.
    pub fn backoff(&self) -> Backoff {
        self.inner.schedule.backoff
    }

    /// The cap on backoff delays, jitter included.
    pub fn max_delay(&self) -> Duration {
        self.inner.schedule.max_delay
    }

    /// The jitter.
    pub fn jitter(&self) -> Jitter {
        self.inner.schedule.jitter
    }

    /// The maximum elapsed time of a call, if any.
    pub fn max_elapsed(&self) -> Option<Duration> {
        self.inner.max_elapsed
    }

    /// The per-attempt timeout, if any.
    pub fn attempt_timeout(&self) -> Option<Duration> {
        self.inner.attempt_timeout
    }

    /// The cap on retry-after hints.
    pub fn max_retry_after(&self) -> Duration {
        self.inner.max_retry_after
    }

    /// The retry budget, if any.
    pub fn budget(&self) -> Option<&RetryBudget> {
        self.inner.budget.as_ref()
    }

    /// The clock the policy reads (see [`RetryPolicyBuilder::clock`]).
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }
}

impl Default for RetryPolicy {
    /// The `default` preset: 3 retries from 1 s ×2, at most 30 s, equal
    /// jitter (see [`RetryPolicyBuilder::new`]).
    fn default() -> Self {
        RetryPolicyBuilder::new().build_unchecked()
    }
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("RetryPolicy")
            .field("max_retries", &i.max_retries)
            .field("backoff", &i.schedule.backoff)
            .field("max_delay", &i.schedule.max_delay)
            .field("jitter", &i.schedule.jitter)
            .field("max_elapsed", &i.max_elapsed)
            .field("attempt_timeout", &i.attempt_timeout)
            .field("max_retry_after", &i.max_retry_after)
            .field("budget", &i.budget)
            .field("clock", &i.clock)
            .field("on_retry", &i.hook.is_some())
            .field("stats", &i.counters.snapshot())
            .finish()
    }
}
