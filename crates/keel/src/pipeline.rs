use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use keel_breaker::CircuitBreaker;
use keel_core::{Classify, Clock, Outcome, classify};
use keel_retry::{Attempt, RetryError, RetryPolicy};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::rate::{Limiter, RateLimit};
use crate::{ConfigError, PipelineError};

/// Policies composed around a call, from the outside in: overall deadline →
/// retry (with its budget) → circuit breaker → rate limiter → bulkhead →
/// per-attempt timeout → the call. See the [crate docs](crate) for why this
/// order, and [`PipelineBuilder`] for each policy.
///
/// A `Pipeline` is cheap to share: put it in an `Arc` (or clone the
/// [`PipelineLayer`](crate::PipelineLayer)) and call it from many tasks.
/// On the happy path a call costs a few atomic operations per policy and
/// allocates nothing (`docs/PERFORMANCE.md` has the figures).
pub struct Pipeline {
    deadline: Option<Duration>,
    retry: Option<RetryPolicy>,
    breaker: Option<CircuitBreaker>,
    limiter: Option<Limiter>,
    bulkhead: Option<(Semaphore, usize)>,
    attempt_timeout: Option<Duration>,
    stats: Arc<Counters>,
}

/// Builds a [`Pipeline`]; every policy is optional.
#[derive(Default)]
pub struct PipelineBuilder {
    deadline: Option<Duration>,
    retry: Option<RetryPolicy>,
    breaker: Option<CircuitBreaker>,
    rate: Option<(RateLimit, bool)>,
    bulkhead: Option<usize>,
    attempt_timeout: Option<Duration>,
    clock: Clock,
}

impl PipelineBuilder {
    /// The whole call, every attempt, wait and backoff included, ends after
    /// `deadline` with [`PipelineError::DeadlineExceeded`].
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Retries failed and overloaded attempts with `policy` (which may carry
    /// a shared retry budget). Without it, the call makes one attempt.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Counts every attempt in `breaker` and lets it reject attempts while
    /// open. Breakers are shared through clones: pass a clone of the
    /// dependency's breaker (for instance from a `BreakerRegistry`).
    pub fn breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// One rate shared by every call through this pipeline.
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate = Some((limit, false));
        self
    }

    /// One rate per key: calls made with [`Pipeline::call_keyed`] are
    /// limited per key (per VM, per tenant). Call
    /// [`Pipeline::retain_recent`] now and then when keys come and go.
    pub fn keyed_rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate = Some((limit, true));
        self
    }

    /// At most `max_concurrent` attempts in flight; more are rejected at once.
    pub fn bulkhead(mut self, max_concurrent: usize) -> Self {
        self.bulkhead = Some(max_concurrent);
        self
    }

    /// Cancels an attempt that runs longer than `timeout`; the breaker counts
    /// it as a failure and the retry policy may try again.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }

    /// The clock the rate limiter reads (tokio's by default, which follows
    /// paused time in tests).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Validates the settings.
    pub fn build(self) -> Result<Pipeline, ConfigError> {
        if self.deadline == Some(Duration::ZERO) {
            return Err(ConfigError::new("deadline", "must be above zero"));
        }
        if self.attempt_timeout == Some(Duration::ZERO) {
            return Err(ConfigError::new("attempt_timeout", "must be above zero"));
        }
        let bulkhead = match self.bulkhead {
            Some(0) => return Err(ConfigError::new("bulkhead", "must be at least 1")),
            Some(n) if n > Semaphore::MAX_PERMITS => {
                return Err(ConfigError::new("bulkhead", "is larger than tokio allows"));
            }
            Some(n) => Some((Semaphore::new(n), n)),
            None => None,
        };
        let limiter = match self.rate {
            Some((limit, false)) => Some(Limiter::direct(limit, self.clock.clone())?),
            Some((limit, true)) => Some(Limiter::keyed(limit, self.clock.clone())?),
            None => None,
        };
        Ok(Pipeline {
            deadline: self.deadline,
            retry: self.retry,
            breaker: self.breaker,
            limiter,
            bulkhead,
            attempt_timeout: self.attempt_timeout,
            stats: Arc::default(),
        })
    }
}

/// What a [`Pipeline`] did, counted since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PipelineStats {
    /// Calls started.
    pub calls: u64,
    /// Attempts that reached the operation.
    pub attempts: u64,
    /// Calls that returned `Ok`.
    pub succeeded: u64,
    /// Calls that returned an error.
    pub failed: u64,
    /// Attempts the circuit breaker rejected.
    pub breaker_rejections: u64,
    /// Attempts that waited for a rate-limiter slot.
    pub rate_limit_waits: u64,
    /// Total time spent waiting for rate-limiter slots.
    pub rate_limit_wait_time: Duration,
    /// Attempts refused by the rate limiter because the deadline was nearer
    /// than the next slot.
    pub rate_limit_rejections: u64,
    /// Attempts the bulkhead rejected.
    pub bulkhead_rejections: u64,
    /// Attempts cancelled by the per-attempt timeout.
    pub attempt_timeouts: u64,
    /// Calls cut by the overall deadline.
    pub deadline_exceeded: u64,
}

#[derive(Default)]
struct Counters {
    calls: AtomicU64,
    attempts: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    breaker_rejections: AtomicU64,
    rate_limit_waits: AtomicU64,
    rate_limit_wait_nanos: AtomicU64,
    rate_limit_rejections: AtomicU64,
    bulkhead_rejections: AtomicU64,
    attempt_timeouts: AtomicU64,
    deadline_exceeded: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// One attempt's error on its way through the retry policy, carrying the
/// outcome the classifier (or the rejecting policy) gave it.
struct AttemptError<E> {
    error: PipelineError<E>,
    outcome: Outcome,
}

impl<E> fmt::Debug for AttemptError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttemptError")
            .field("kind", &self.error.kind())
            .field("outcome", &self.outcome)
            .finish()
    }
}

impl<E> AttemptError<E> {
    fn rejected_by(error: PipelineError<E>, outcome: Outcome) -> Self {
        AttemptError { error, outcome }
    }
}

/// The retry policy's view of an attempt: the outcome computed inside it.
fn attempt_outcome<T, E>(result: &Result<(T, Outcome), AttemptError<E>>) -> Outcome {
    match result {
        Ok((_, outcome)) => *outcome,
        Err(e) => e.outcome,
    }
}

impl Pipeline {
    /// Starts building a pipeline.
    pub fn builder() -> PipelineBuilder {
        PipelineBuilder::default()
    }

    /// Calls `op` through every configured policy, classifying results with
    /// [`classify::Default`] (`Err` is a failure).
    ///
    /// `op` is called once per attempt, after the breaker, rate limiter and
    /// bulkhead admitted it, and gets the attempt number. It should return a
    /// lazy future (an `async` block), as futures are: the policies that
    /// wrap the attempt run when the returned future is first polled.
    pub async fn call<T, E, F, Fut>(&self, op: F) -> Result<T, PipelineError<E>>
    where
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.run(&classify::Default, None, op).await
    }

    /// [`call`](Self::call) with results classified by `classifier` (a 404
    /// is neutral, a 503 answer is an overload...).
    pub async fn call_classified<T, E, C, F, Fut>(
        &self,
        classifier: &C,
        op: F,
    ) -> Result<T, PipelineError<E>>
    where
        C: Classify<T, E> + ?Sized,
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.run(classifier, None, op).await
    }

    /// [`call`](Self::call) rate-limited under `key` when the pipeline has a
    /// keyed rate limit (a direct limit ignores the key).
    pub async fn call_keyed<T, E, F, Fut>(&self, key: &str, op: F) -> Result<T, PipelineError<E>>
    where
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.run(&classify::Default, Some(key), op).await
    }

    /// [`call_keyed`](Self::call_keyed) with a classifier.
    pub async fn call_keyed_classified<T, E, C, F, Fut>(
        &self,
        key: &str,
        classifier: &C,
        op: F,
    ) -> Result<T, PipelineError<E>>
    where
        C: Classify<T, E> + ?Sized,
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.run(classifier, Some(key), op).await
    }

    /// What the pipeline did so far.
    pub fn stats(&self) -> PipelineStats {
        let c = &*self.stats;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PipelineStats {
            calls: load(&c.calls),
            attempts: load(&c.attempts),
            succeeded: load(&c.succeeded),
            failed: load(&c.failed),
            breaker_rejections: load(&c.breaker_rejections),
            rate_limit_waits: load(&c.rate_limit_waits),
            rate_limit_wait_time: Duration::from_nanos(load(&c.rate_limit_wait_nanos)),
            rate_limit_rejections: load(&c.rate_limit_rejections),
            bulkhead_rejections: load(&c.bulkhead_rejections),
            attempt_timeouts: load(&c.attempt_timeouts),
            deadline_exceeded: load(&c.deadline_exceeded),
        }
    }

    /// The retry policy, if any (its own statistics say how many retries).
    pub fn retry_policy(&self) -> Option<&RetryPolicy> {
        self.retry.as_ref()
    }

    /// The circuit breaker, if any (its state and statistics are readable
    /// synchronously).
    pub fn breaker(&self) -> Option<&CircuitBreaker> {
        self.breaker.as_ref()
    }

    /// Forgets rate state of keys that have fully recovered (keyed rate
    /// limits only). Call it periodically when keys are short-lived, or the
    /// limiter keeps one small entry per key ever seen.
    pub fn retain_recent(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
        }
    }

    /// Keys the rate limiter tracks (1 for a direct limit, 0 without one).
    pub fn rate_limited_keys(&self) -> usize {
        self.limiter.as_ref().map_or(0, Limiter::len)
    }

    async fn run<T, E, C, F, Fut>(
        &self,
        classifier: &C,
        key: Option<&str>,
        op: F,
    ) -> Result<T, PipelineError<E>>
    where
        C: Classify<T, E> + ?Sized,
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        bump(&self.stats.calls);
        let result = match self.deadline {
            None => self.retried(classifier, key, None, op).await,
            Some(deadline) => {
                let ends = Instant::now() + deadline;
                match tokio::time::timeout_at(ends, self.retried(classifier, key, Some(ends), op))
                    .await
                {
                    Ok(result) => result,
                    Err(_) => {
                        bump(&self.stats.deadline_exceeded);
                        Err(PipelineError::DeadlineExceeded { deadline })
                    }
                }
            }
        };
        bump(if result.is_ok() {
            &self.stats.succeeded
        } else {
            &self.stats.failed
        });
        result
    }

    async fn retried<T, E, C, F, Fut>(
        &self,
        classifier: &C,
        key: Option<&str>,
        ends: Option<Instant>,
        op: F,
    ) -> Result<T, PipelineError<E>>
    where
        C: Classify<T, E> + ?Sized,
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let op = Mutex::new(op);
        let Some(policy) = &self.retry else {
            return match self
                .attempt(classifier, key, ends, &op, Attempt::new(1))
                .await
            {
                Ok((value, _)) => Ok(value),
                Err(e) => Err(e.error),
            };
        };
        let result = policy
            .retry_classified(&attempt_outcome::<T, E>, |attempt| {
                self.attempt(classifier, key, ends, &op, attempt)
            })
            .await;
        match result {
            Ok((value, _)) => Ok(value),
            Err(e) => Err(from_retry_error(e)),
        }
    }

    /// One attempt through breaker → rate limiter → bulkhead → timeout.
    /// `op` is only called once the attempt is admitted; the lock is held
    /// just long enough to create the operation's future (attempts of one
    /// call never overlap, so it is never contended).
    async fn attempt<T, E, C, F, Fut>(
        &self,
        classifier: &C,
        key: Option<&str>,
        ends: Option<Instant>,
        op: &Mutex<F>,
        attempt: Attempt,
    ) -> Result<(T, Outcome), AttemptError<E>>
    where
        C: Classify<T, E> + ?Sized,
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let permit = match &self.breaker {
            Some(breaker) => match breaker.try_acquire() {
                Ok(permit) => Some(permit),
                Err(rejected) => {
                    bump(&self.stats.breaker_rejections);
                    let outcome = keel_core::ErrorOutcome::outcome(&rejected);
                    return Err(AttemptError::rejected_by(
                        PipelineError::Rejected(rejected),
                        outcome,
                    ));
                }
            },
            None => None,
        };
        if let Some(limiter) = &self.limiter {
            self.wait_for_slot(limiter, key, ends).await?;
        }
        let _slot = match &self.bulkhead {
            Some((semaphore, max)) => match semaphore.try_acquire() {
                Ok(slot) => Some(slot),
                Err(_) => {
                    bump(&self.stats.bulkhead_rejections);
                    return Err(AttemptError::rejected_by(
                        PipelineError::BulkheadFull {
                            max_concurrent: *max,
                        },
                        Outcome::OVERLOADED,
                    ));
                }
            },
            None => None,
        };
        bump(&self.stats.attempts);
        let fut = {
            let mut op = op.lock().unwrap_or_else(PoisonError::into_inner);
            (*op)(attempt)
        };
        let result = match self.attempt_timeout {
            None => fut.await,
            Some(timeout) => match tokio::time::timeout(timeout, fut).await {
                Ok(result) => result,
                Err(_) => {
                    bump(&self.stats.attempt_timeouts);
                    if let Some(permit) = permit {
                        permit.record(Outcome::Failure);
                    }
                    return Err(AttemptError::rejected_by(
                        PipelineError::AttemptTimeout { timeout },
                        Outcome::Failure,
                    ));
                }
            },
        };
        let outcome = classifier.classify(&result);
        if let Some(permit) = permit {
            permit.record(outcome);
        }
        match result {
            Ok(value) => Ok((value, outcome)),
            Err(error) => Err(AttemptError {
                error: PipelineError::Inner(error),
                outcome,
            }),
        }
    }

    /// Waits for a rate-limiter slot when the deadline leaves time for it;
    /// otherwise refuses the attempt as an overload.
    async fn wait_for_slot<E>(
        &self,
        limiter: &Limiter,
        key: Option<&str>,
        ends: Option<Instant>,
    ) -> Result<(), AttemptError<E>> {
        let mut waited = false;
        loop {
            let wait = match limiter.check(key) {
                Ok(()) => return Ok(()),
                Err(wait) => wait,
            };
            let now = Instant::now();
            if ends.is_some_and(|ends| now + wait > ends) {
                bump(&self.stats.rate_limit_rejections);
                return Err(AttemptError::rejected_by(
                    PipelineError::RateLimited { retry_after: wait },
                    Outcome::overloaded_for(wait),
                ));
            }
            if !waited {
                bump(&self.stats.rate_limit_waits);
                waited = true;
            }
            self.stats.rate_limit_wait_nanos.fetch_add(
                u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            tokio::time::sleep(wait).await;
        }
    }
}

fn from_retry_error<E>(error: RetryError<AttemptError<E>>) -> PipelineError<E> {
    match error {
        RetryError::BudgetExhausted { last, .. } => PipelineError::RetryBudgetExhausted {
            last: last.map(|e| Box::new(e.error)),
        },
        RetryError::AttemptTimeout { timeout, .. } => PipelineError::AttemptTimeout { timeout },
        RetryError::DeadlineExceeded {
            last: None,
            max_elapsed,
            ..
        } => PipelineError::DeadlineExceeded {
            deadline: max_elapsed,
        },
        other => match other.into_inner() {
            Some(last) => last.error,
            // `into_inner` is `None` only for the variants handled above.
            None => PipelineError::DeadlineExceeded {
                deadline: Duration::ZERO,
            },
        },
    }
}

impl fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("deadline", &self.deadline)
            .field("retry", &self.retry)
            .field("breaker", &self.breaker.as_ref().map(CircuitBreaker::name))
            .field("rate_limited", &self.limiter.is_some())
            .field("bulkhead", &self.bulkhead.as_ref().map(|(_, n)| *n))
            .field("attempt_timeout", &self.attempt_timeout)
            .finish()
    }
}

impl fmt::Debug for PipelineBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipelineBuilder").finish_non_exhaustive()
    }
}
