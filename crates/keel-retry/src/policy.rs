//! The retry policy and its async and blocking front ends.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use keel_core::{Classify, Rng, classify};

use crate::attempt::{Attempt, Hook};
use crate::backoff::{Backoff, Delays, Jitter, Schedule};
use crate::budget::RetryBudget;
use crate::config::RetryPolicyBuilder;
use crate::error::RetryError;
use crate::run::{AttemptResult, Run, Step};
use crate::stats::{Counters, RetryStats};

/// A boxed, `Send` future borrowing for `'a`: what the context-passing
/// operations of [`RetryPolicy::retry_with`] return (`Box::pin(async move { .. })`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A retry policy: how many times to retry, how long to wait, when to stop,
/// what to retry, and the counters of everything it did.
///
/// Build one with [`RetryPolicy::builder`] or take a preset
/// ([`default`](RetryPolicy::default), [`aws`](RetryPolicy::aws),
/// [`critical`](RetryPolicy::critical), [`watchdog`](RetryPolicy::watchdog)).
/// Cloning is one `Arc` increment; clones share the configuration, the
/// random source, the budget and the statistics.
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
/// Per call: a few relaxed atomic increments and one random draw per retry
/// when jittered; no allocation (the context-passing variant boxes each
/// attempt's future). The clock is read only when a rule needs it: at the
/// start of the call and at each attempt and retry decision with a maximum
/// elapsed time, at the start and at each retry with a budget or an
/// `on_retry` hook; never otherwise. A zero delay does not touch the timer.
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

    /// The `watchdog` preset (see [`RetryPolicyBuilder::watchdog`]): 5
    /// retries at 1, 2, 4, 8, 16 s, ±20 %.
    pub fn watchdog() -> Self {
        RetryPolicyBuilder::watchdog().build_unchecked()
    }

    /// Retries `op` while its result is a failure or an overload
    /// ([`classify::Default`]: every `Err` is retried). `op` is called with
    /// the [`Attempt`] it makes and returns a fresh future each time.
    ///
    /// The returned future is `Send` when `op`, its futures, `T` and `E` are.
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
    /// `Retry-After`, treat a 404 as final...).
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
        let mut run = Run::begin(&self.inner);
        loop {
            let (attempt, limit) = run.next_attempt();
            let fut = op(attempt);
            let result = match limit {
                None => AttemptResult::Done(fut.await),
                Some((within, which)) => match tokio::time::timeout(within, fut).await {
                    Ok(r) => AttemptResult::Done(r),
                    Err(_) => AttemptResult::TimedOut(which),
                },
            };
            match run.finish(classifier, result) {
                Step::Return(r) => return r,
                Step::Sleep(delay, withdrawal) => {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    if let Some(w) = withdrawal {
                        w.commit();
                    }
                }
            }
        }
    }

    /// Retries an operation that borrows a context mutably: `op` gets
    /// `&mut Ctx` and the [`Attempt`] and returns a boxed future that may
    /// hold the borrow (`|ctx, attempt| Box::pin(async move { .. })`). Use it
    /// when attempts need a connection, a buffer or a counter that outlives
    /// them; [`retry`](Self::retry) cannot lend one across attempts.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use keel_retry::{Backoff, RetryPolicy};
    /// use std::time::Duration;
    ///
    /// struct Conn { calls: u32 }
    /// impl Conn {
    ///     async fn get(&mut self) -> Result<u32, &'static str> {
    ///         self.calls += 1;
    ///         if self.calls < 3 { Err("reset") } else { Ok(self.calls) }
    ///     }
    /// }
    ///
    /// let policy = RetryPolicy::builder()
    ///     .backoff(Backoff::constant(Duration::from_millis(1)))
    ///     .build()
    ///     .unwrap();
    /// let mut conn = Conn { calls: 0 };
    /// let got = policy
    ///     .retry_with(&mut conn, |conn, _attempt| Box::pin(async move { conn.get().await }))
    ///     .await;
    /// assert_eq!(got.unwrap(), 3);
    /// assert_eq!(conn.calls, 3);
    /// # }
    /// ```
    pub async fn retry_with<Ctx, T, E, F>(&self, ctx: &mut Ctx, op: F) -> Result<T, RetryError<E>>
    where
        Ctx: ?Sized,
        F: for<'c> FnMut(&'c mut Ctx, Attempt) -> BoxFuture<'c, Result<T, E>>,
        E: fmt::Debug,
    {
        self.retry_with_classified(&classify::Default, ctx, op)
            .await
    }

    /// [`retry_with`](Self::retry_with) with a classifier.
    pub async fn retry_with_classified<Ctx, T, E, C, F>(
        &self,
        classifier: &C,
        ctx: &mut Ctx,
        mut op: F,
    ) -> Result<T, RetryError<E>>
    where
        Ctx: ?Sized,
        C: Classify<T, E> + ?Sized,
        F: for<'c> FnMut(&'c mut Ctx, Attempt) -> BoxFuture<'c, Result<T, E>>,
        E: fmt::Debug,
    {
        let mut run = Run::begin(&self.inner);
        loop {
            let (attempt, limit) = run.next_attempt();
            let fut = op(&mut *ctx, attempt);
            let result = match limit {
                None => AttemptResult::Done(fut.await),
                Some((within, which)) => match tokio::time::timeout(within, fut).await {
                    Ok(r) => AttemptResult::Done(r),
                    Err(_) => AttemptResult::TimedOut(which),
                },
            };
            match run.finish(classifier, result) {
                Step::Return(r) => return r,
                Step::Sleep(delay, withdrawal) => {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    if let Some(w) = withdrawal {
                        w.commit();
                    }
                }
            }
        }
    }

    /// Retries a synchronous operation, sleeping with
    /// `std::thread::sleep` (so never call it on an async runtime's
    /// thread). The per-attempt timeout is not enforced (a synchronous call
    /// cannot be cancelled); the maximum elapsed time still stops sleeps
    /// that would end past it.
    pub fn retry_blocking<T, E, F>(&self, op: F) -> Result<T, RetryError<E>>
    where
        F: FnMut(Attempt) -> Result<T, E>,
        E: fmt::Debug,
    {
        self.retry_blocking_classified(&classify::Default, op)
    }

    /// [`retry_blocking`](Self::retry_blocking) with a classifier.
    pub fn retry_blocking_classified<T, E, C, F>(
        &self,
        classifier: &C,
        mut op: F,
    ) -> Result<T, RetryError<E>>
    where
        C: Classify<T, E> + ?Sized,
        F: FnMut(Attempt) -> Result<T, E>,
        E: fmt::Debug,
    {
        let mut run = Run::begin(&self.inner);
        loop {
            let (mut attempt, _) = run.next_attempt();
            attempt.timeout = None;
            let result = AttemptResult::Done(op(attempt));
            match run.finish(classifier, result) {
                Step::Return(r) => return r,
                Step::Sleep(delay, withdrawal) => {
                    if !delay.is_zero() {
                        std::thread::sleep(delay);
                    }
                    if let Some(w) = withdrawal {
                        w.commit();
                    }
                }
            }
        }
    }

    /// The delay before retry `retry` (1-based: the sleep after attempt
    /// `retry` failed), with the cap and a fresh jitter draw, as a retry
    /// would compute it when no retry-after hint is given. For decorrelated
    /// jitter, which depends on the previous sleep, the previous sleep is
    /// taken to be the un-jittered delay of `retry - 1`; [`delays`](Self::delays)
    /// carries the real previous value. Costs a few arithmetic operations
    /// and at most one random draw.
    pub fn delay_for(&self, retry: u32) -> Duration {
        let s = &self.inner.schedule;
        let prev = (retry > 1 && s.jitter == Jitter::Decorrelated)
            .then(|| s.backoff.delay(retry - 1).min(s.max_delay));
        s.delay(retry, prev, &self.inner.rng)
    }

    /// The delays this policy would sleep before each of its retries, drawn
    /// from its random source.
    pub fn delays(&self) -> Delays {
        Delays::new(
            self.inner.schedule.clone(),
            self.inner.rng.clone(),
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
            .field("on_retry", &i.hook.is_some())
            .field("stats", &i.counters.snapshot())
            .finish()
    }
}
