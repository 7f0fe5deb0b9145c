use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use keel_breaker::{Bulkhead, CircuitBreaker};
use keel_core::{Classify, Clock, Outcome, Priority, classify};
use keel_retry::{Attempt, RetryError, RetryPolicy};
use tokio::time::Instant;

use crate::rate::{RateLimit, RateLimiter};
use crate::{ConfigError, PipelineError};

/// Policies composed around a call, from the outside in: overall deadline →
/// retry (with its budget) → circuit breaker → rate limiter → bulkhead →
/// per-attempt timeout → the call. See the [crate docs](crate) for why this
/// order, and [`PipelineBuilder`] for each policy.
///
/// The breaker, rate limiter and bulkhead are shared handles: several
/// pipelines built over the same handles (reads and writes of one API with
/// different retry policies) share one breaker state, one rate and one pool
/// of slots. A call can override the pipeline's retry policy, deadline and
/// priority with [`CallOptions`].
///
/// A `Pipeline` is cheap to share: put it in an `Arc` (or clone the
/// [`PipelineLayer`](crate::PipelineLayer)) and call it from many tasks.
/// On the happy path a call costs a few atomic operations per policy and
/// allocates nothing (`docs/PERFORMANCE.md` has the figures).
pub struct Pipeline {
    deadline: Option<Duration>,
    retry: Option<RetryPolicy>,
    breaker: Option<CircuitBreaker>,
    limiter: Option<RateLimiter>,
    bulkhead: Option<Bulkhead>,
    attempt_timeout: Option<Duration>,
    priority: Priority,
    deadline_cut_is_failure: bool,
    stats: Arc<Counters>,
}

/// Builds a [`Pipeline`]; every policy is optional.
#[derive(Default)]
pub struct PipelineBuilder {
    deadline: Option<Duration>,
    retry: Option<RetryPolicy>,
    breaker: Option<CircuitBreaker>,
    limiter: Option<Limit>,
    bulkhead: Option<Bulkhead>,
    attempt_timeout: Option<Duration>,
    priority: Priority,
    deadline_cut_is_failure: bool,
    clock: Clock,
}

enum Limit {
    Own(RateLimit, bool),
    Shared(RateLimiter),
}

impl PipelineBuilder {
    /// The whole call, every attempt, wait and backoff included, ends after
    /// `deadline` with [`PipelineError::DeadlineExceeded`]. A call can set
    /// its own with [`CallOptions::deadline`].
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Retries failed and overloaded attempts with `policy` (which may carry
    /// a shared retry budget). Without it, the call makes one attempt. A
    /// call can use another policy with [`CallOptions::retry`].
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

    /// One rate for every call through this pipeline (a limiter of its own,
    /// on the builder's [`clock`](Self::clock)).
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.limiter = Some(Limit::Own(limit, false));
        self
    }

    /// One rate per key (a limiter of its own): calls made with
    /// [`CallOptions::key`] are limited per key (per VM, per tenant). Call
    /// [`Pipeline::retain_recent`] now and then when keys come and go.
    pub fn keyed_rate_limit(mut self, limit: RateLimit) -> Self {
        self.limiter = Some(Limit::Own(limit, true));
        self
    }

    /// A rate limiter shared with other pipelines or code: every pipeline
    /// built over clones of `limiter` draws from the same rate.
    pub fn rate_limiter(mut self, limiter: RateLimiter) -> Self {
        self.limiter = Some(Limit::Shared(limiter));
        self
    }

    /// At most `bulkhead`'s limit of attempts in flight, shared with every
    /// other user of the same handle. A bulkhead built with a queue makes
    /// attempts wait by priority (bounded by the deadline); one without
    /// refuses at once when full.
    pub fn bulkhead(mut self, bulkhead: Bulkhead) -> Self {
        self.bulkhead = Some(bulkhead);
        self
    }

    /// Cancels an attempt that runs longer than `timeout`; the breaker counts
    /// it as a failure and the retry policy may try again.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }

    /// The priority of calls that do not set one (default
    /// [`Priority::Normal`]): the bulkhead serves waiters by priority.
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// How the breaker counts an attempt cut by the **overall deadline**
    /// (not by the attempt timeout, which is always a failure).
    ///
    /// By default (`false`) it is neutral: the deadline is the caller's
    /// budget, and an attempt that started late with little time left says
    /// nothing about the dependency. But a dependency that hangs then never
    /// trips a breaker unless an attempt timeout is set; `true` counts such
    /// a cut as a failure.
    pub fn deadline_cut_is_failure(mut self, yes: bool) -> Self {
        self.deadline_cut_is_failure = yes;
        self
    }

    /// The pipeline's one clock (tokio's by default, which follows paused
    /// time in tests). The rate limiter this builder creates reads it, and
    /// [`build`](Self::build) checks that every policy given to the
    /// pipeline (breaker, retry policy, shared rate limiter)
    /// reads the same clock, so a test that drives a manual clock drives
    /// every policy of the pipeline. Deadlines and timeouts are tokio timers.
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
        let same = |what: &'static str, clock: &Clock| {
            if clock.same_as(&self.clock) {
                Ok(())
            } else {
                Err(ConfigError::new(
                    "clock",
                    format!(
                        "the {what} reads another clock than the pipeline: build it with the pipeline's clock"
                    ),
                ))
            }
        };
        if let Some(breaker) = &self.breaker {
            same("circuit breaker", breaker.config().clock())?;
        }
        if let Some(retry) = &self.retry {
            same("retry policy", retry.clock())?;
        }
        if let Some(Limit::Shared(limiter)) = &self.limiter {
            same("rate limiter", limiter.clock())?;
        }
        let limiter = match self.limiter {
            Some(Limit::Own(limit, false)) => {
                Some(RateLimiter::direct_with_clock(limit, self.clock)?)
            }
            Some(Limit::Own(limit, true)) => {
                Some(RateLimiter::keyed_with_clock(limit, self.clock)?)
            }
            Some(Limit::Shared(limiter)) => Some(limiter),
            None => None,
        };
        Ok(Pipeline {
            deadline: self.deadline,
            retry: self.retry,
            breaker: self.breaker,
            limiter,
            bulkhead: self.bulkhead,
            attempt_timeout: self.attempt_timeout,
            priority: self.priority,
            deadline_cut_is_failure: self.deadline_cut_is_failure,
            stats: Arc::default(),
        })
    }
}

/// What one call asks of a [`Pipeline`] beyond its defaults: its own retry
/// policy, deadline, priority, rate-limit key and classifier.
///
/// ```
/// use std::time::Duration;
/// use keel::{CallOptions, Pipeline};
/// use keel::core::Priority;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pipeline = Pipeline::builder().deadline(Duration::from_secs(30)).build()?;
/// let options = CallOptions::new()
///     .deadline(Duration::from_secs(2))
///     .priority(Priority::Critical)
///     .key("vm-7");
/// let left = pipeline
///     .call_with(&options, |attempt| async move { Ok::<_, std::io::Error>(attempt.timeout) })
///     .await?;
/// // The operation is told how long it has: the call's own deadline.
/// assert!(left.unwrap() <= Duration::from_secs(2));
/// # Ok(())
/// # }
/// ```
pub struct CallOptions<'a, C: ?Sized = classify::Default> {
    retry: RetryChoice<'a>,
    deadline: Option<Duration>,
    priority: Option<Priority>,
    key: Option<&'a str>,
    classifier: &'a C,
}

#[derive(Clone, Copy)]
enum RetryChoice<'a> {
    Default,
    Policy(&'a RetryPolicy),
    None,
}

impl Default for CallOptions<'_> {
    fn default() -> Self {
        CallOptions::new()
    }
}

impl CallOptions<'_> {
    /// The pipeline's defaults, results classified by
    /// [`classify::Default`] (`Err` is a failure).
    pub const fn new() -> Self {
        CallOptions {
            retry: RetryChoice::Default,
            deadline: None,
            priority: None,
            key: None,
            classifier: &classify::Default,
        }
    }
}

impl<'a, C: ?Sized> CallOptions<'a, C> {
    /// Retry this call with `policy` instead of the pipeline's.
    pub fn retry(mut self, policy: &'a RetryPolicy) -> Self {
        self.retry = RetryChoice::Policy(policy);
        self
    }

    /// Make one attempt only, whatever the pipeline's retry policy.
    pub fn no_retry(mut self) -> Self {
        self.retry = RetryChoice::None;
        self
    }

    /// This call's overall deadline instead of the pipeline's.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// This call's priority in the bulkhead's queue.
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = Some(priority);
        self
    }

    /// The key a keyed rate limiter limits this call under (a direct limiter
    /// ignores it).
    pub fn key(mut self, key: &'a str) -> Self {
        self.key = Some(key);
        self
    }

    /// Classify results with `classifier` (a 404 is neutral, a 503 answer is
    /// an overload...).
    pub fn classify<C2: ?Sized>(self, classifier: &'a C2) -> CallOptions<'a, C2> {
        CallOptions {
            retry: self.retry,
            deadline: self.deadline,
            priority: self.priority,
            key: self.key,
            classifier,
        }
    }
}

impl<C: ?Sized> fmt::Debug for CallOptions<'_, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallOptions")
            .field(
                "retry",
                &match self.retry {
                    RetryChoice::Default => "pipeline's",
                    RetryChoice::Policy(_) => "own",
                    RetryChoice::None => "none",
                },
            )
            .field("deadline", &self.deadline)
            .field("priority", &self.priority)
            .field("key", &self.key)
            .finish_non_exhaustive()
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
    /// Attempts the bulkhead refused or shed.
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

/// What every attempt of one call shares.
struct Call<'a, C: ?Sized> {
    classifier: &'a C,
    key: Option<&'a str>,
    priority: Priority,
    /// The overall deadline: its length and when it ends.
    deadline: Option<(Duration, Instant)>,
    /// When the call started, if the deadline made us read the clock: the
    /// first attempt reuses it when nothing made it wait (a clock read is a
    /// tenth of the pipeline's cost).
    started: Option<Instant>,
}

impl Pipeline {
    /// Starts building a pipeline.
    pub fn builder() -> PipelineBuilder {
        PipelineBuilder::default()
    }

    /// Calls `op` through every configured policy with the pipeline's
    /// defaults; `Err` is a failure. Same as
    /// [`call_with`](Self::call_with)`(&CallOptions::new(), op)`.
    pub async fn call<T, E, F, Fut>(&self, op: F) -> Result<T, PipelineError<E>>
    where
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_with(&CallOptions::new(), op).await
    }

    /// Calls `op` through every configured policy, with `options`
    /// overriding the pipeline's retry policy, deadline and priority, and
    /// choosing the rate-limit key and the classifier.
    ///
    /// `op` is called once per attempt, after the breaker, rate limiter and
    /// bulkhead admitted it. Its [`Attempt`] says the attempt number and,
    /// in `timeout`, how long this attempt has before it is cut: the
    /// smaller of the attempt timeout and what is left of the deadline.
    /// Send it on (a `grpc-timeout` header, an SQL statement timeout, an
    /// HTTP client timeout) so the dependency stops working when the caller
    /// has stopped waiting. `op` should return a lazy future (an `async`
    /// block), as futures are.
    pub async fn call_with<T, E, C, F, Fut>(
        &self,
        options: &CallOptions<'_, C>,
        op: F,
    ) -> Result<T, PipelineError<E>>
    where
        C: Classify<T, E> + ?Sized,
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        bump(&self.stats.calls);
        let retry = match options.retry {
            RetryChoice::Default => self.retry.as_ref(),
            RetryChoice::Policy(policy) => Some(policy),
            RetryChoice::None => None,
        };
        let started = options
            .deadline
            .or(self.deadline)
            .map(|d| (d, Instant::now()));
        let call = Call {
            classifier: options.classifier,
            key: options.key,
            priority: options.priority.unwrap_or(self.priority),
            deadline: started.map(|(d, now)| (d, now + d)),
            started: started.map(|(_, now)| now),
        };
        let result = match call.deadline {
            None => self.retried(&call, retry, op).await,
            Some((deadline, ends)) => {
                // Pinned where it is built (see `cut_at`).
                let retried = std::pin::pin!(self.retried(&call, retry, op));
                match cut_at(|| ends, retried).await {
                    Ok(result) => result,
                    Err(_) => Err(PipelineError::DeadlineExceeded { deadline }),
                }
            }
        };
        if matches!(result, Err(PipelineError::DeadlineExceeded { .. })) {
            bump(&self.stats.deadline_exceeded);
        }
        bump(if result.is_ok() {
            &self.stats.succeeded
        } else {
            &self.stats.failed
        });
        result
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

    /// The default retry policy, if any (its own statistics say how many
    /// retries).
    pub fn retry_policy(&self) -> Option<&RetryPolicy> {
        self.retry.as_ref()
    }

    /// The circuit breaker, if any (its state and statistics are readable
    /// synchronously).
    pub fn breaker(&self) -> Option<&CircuitBreaker> {
        self.breaker.as_ref()
    }

    /// The bulkhead, if any.
    pub fn bulkhead(&self) -> Option<&Bulkhead> {
        self.bulkhead.as_ref()
    }

    /// The rate limiter, if any.
    pub fn rate_limiter(&self) -> Option<&RateLimiter> {
        self.limiter.as_ref()
    }

    /// Forgets rate state of keys that have fully recovered (keyed rate
    /// limits only). Call it periodically when keys are short-lived, or the
    /// limiter keeps one small entry per key ever seen.
    pub fn retain_recent(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
        }
    }

    async fn retried<T, E, C, F, Fut>(
        &self,
        call: &Call<'_, C>,
        retry: Option<&RetryPolicy>,
        op: F,
    ) -> Result<T, PipelineError<E>>
    where
        C: Classify<T, E> + ?Sized,
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let op = Mutex::new(op);
        let Some(policy) = retry else {
            return match self.attempt(call, &op, Attempt::new(1)).await {
                Ok((value, _)) => Ok(value),
                Err(e) => Err(e.error),
            };
        };
        let result = policy
            .retry_classified(&attempt_outcome::<T, E>, |attempt| {
                self.attempt(call, &op, attempt)
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
        call: &Call<'_, C>,
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
        // One clock reading serves the whole attempt until something makes
        // it wait: the call's start for its first attempt, else one read
        // here for the rate limiter, reused for the attempt's time limit.
        let mut reading = if attempt.number == 1 {
            call.started
        } else {
            None
        };
        if let Some(limiter) = &self.limiter {
            let now = *reading.get_or_insert_with(Instant::now);
            // The check is synchronous; only an attempt that must wait builds
            // (and boxes) the waiting future, so the common path stays small.
            if let Err(wait) = limiter.check_at(call.key, now) {
                Box::pin(self.wait_for_slot(limiter, call, wait)).await?;
                reading = None;
            }
        }
        let slot = match &self.bulkhead {
            Some(bulkhead) => match bulkhead.acquire(call.priority).await {
                Ok(slot) => {
                    if slot.waited() {
                        reading = None;
                    }
                    Some(slot)
                }
                Err(full) => {
                    bump(&self.stats.bulkhead_rejections);
                    return Err(AttemptError::rejected_by(
                        PipelineError::BulkheadFull(full),
                        Outcome::OVERLOADED,
                    ));
                }
            },
            None => None,
        };
        bump(&self.stats.attempts);
        // The time this attempt has: the attempt timeout (the pipeline's,
        // or the retry policy's own), cut short by the deadline.
        let own = match (self.attempt_timeout, attempt.timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // Without a deadline the limit is known without the time; the clock
        // is read (if no reading is at hand) only when the operation does
        // not finish at once, see `cut_at`.
        let cut = match (own, call.deadline) {
            (None, None) => None,
            (Some(timeout), None) => Some((reading, timeout, Cut::Attempt(timeout))),
            (own, Some((deadline, ends))) => {
                let now = reading.unwrap_or_else(Instant::now);
                let left = ends.saturating_duration_since(now);
                Some(match own {
                    Some(timeout) if timeout < left => (Some(now), timeout, Cut::Attempt(timeout)),
                    _ => (Some(now), left, Cut::Deadline(deadline)),
                })
            }
        };
        let start = |left: Option<Duration>| {
            let mut op = op.lock().unwrap_or_else(PoisonError::into_inner);
            (*op)(attempt.with_timeout(left))
        };
        let result = match cut {
            None => start(None).await,
            Some((now, left, why)) => {
                // Pinned where it is built (see `cut_at`).
                let fut = std::pin::pin!(start(Some(left)));
                match cut_at(|| now.unwrap_or_else(Instant::now) + left, fut).await {
                    Ok(result) => result,
                    Err(_) => {
                        let (error, outcome) = match why {
                            Cut::Attempt(timeout) => {
                                bump(&self.stats.attempt_timeouts);
                                (PipelineError::AttemptTimeout { timeout }, Outcome::Failure)
                            }
                            Cut::Deadline(deadline) => (
                                PipelineError::DeadlineExceeded { deadline },
                                if self.deadline_cut_is_failure {
                                    Outcome::Failure
                                } else {
                                    Outcome::Neutral
                                },
                            ),
                        };
                        if let Some(permit) = permit {
                            permit.record(outcome);
                        }
                        if let Some(slot) = slot {
                            slot.record(outcome);
                        }
                        return Err(AttemptError::rejected_by(error, outcome));
                    }
                }
            }
        };
        let outcome = call.classifier.classify(&result);
        if let Some(permit) = permit {
            permit.record(outcome);
        }
        if let Some(slot) = slot {
            slot.record(outcome);
        }
        match result {
            Ok(value) => Ok((value, outcome)),
            Err(error) => Err(AttemptError {
                error: PipelineError::Inner(error),
                outcome,
            }),
        }
    }

    /// Waits for a rate-limiter slot (the first check asked to wait `wait`)
    /// when the deadline leaves time for it; otherwise refuses the attempt
    /// as an overload.
    async fn wait_for_slot<E, C: ?Sized>(
        &self,
        limiter: &RateLimiter,
        call: &Call<'_, C>,
        mut wait: Duration,
    ) -> Result<(), AttemptError<E>> {
        let mut waited = false;
        loop {
            let now = Instant::now();
            if call.deadline.is_some_and(|(_, ends)| now + wait > ends) {
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
            wait = match limiter.check(call.key) {
                Ok(()) => return Ok(()),
                Err(wait) => wait,
            };
        }
    }
}

/// Runs `fut` until the instant `at` gives, like `tokio::time::timeout_at`,
/// but polls `fut` once before it asks for the instant or touches the
/// timer: a call that is ready at once (a cache hit, an error returned
/// before any I/O) neither reads the clock nor builds a tokio `Sleep`
/// (which clones the runtime handle). Those two were about a third of a
/// five-policy pipeline call that did not wait. A future still pending
/// after its first poll gets tokio's timeout, measured from then: the
/// first poll only starts the operation, so the limit moves by that poll's
/// CPU time at most.
///
/// It takes the future pinned where its caller built it: a pipeline's
/// futures are large (the retried attempts of one call are over a
/// kilobyte), and taking them by value would copy them.
async fn cut_at<F: Future>(
    at: impl FnOnce() -> Instant,
    mut fut: std::pin::Pin<&mut F>,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx))).await;
    match first {
        std::task::Poll::Ready(output) => Ok(output),
        std::task::Poll::Pending => tokio::time::timeout_at(at(), fut).await,
    }
}

/// What cuts an attempt short.
#[derive(Clone, Copy)]
enum Cut {
    Attempt(Duration),
    Deadline(Duration),
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
            .field("rate_limiter", &self.limiter)
            .field("bulkhead", &self.bulkhead)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("priority", &self.priority)
            .finish()
    }
}

impl fmt::Debug for PipelineBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipelineBuilder").finish_non_exhaustive()
    }
}
