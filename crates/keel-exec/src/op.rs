//! Item operations: what the executor runs for each item.
//!
//! [`ParallelExecutor::run`](crate::ParallelExecutor::run) takes a plain
//! closure `FnMut(I) -> impl Future<Output = Result<T, E>>`. The
//! [`ItemOp`] trait is what it is turned into, and what
//! [`ParallelExecutor::run_op`](crate::ParallelExecutor::run_op) accepts, so
//! an operation can be decorated (retry, circuit breaker) before it runs.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures::future::BoxFuture;
use keel_breaker::{CircuitBreaker, OwnedPermit, Rejected};
use keel_core::{Classify, ErrorOutcome, Outcome, classify};
use keel_retry::{RetryError, RetryPolicy};
use pin_project_lite::pin_project;

use crate::error::{ExecError, ItemTimedOut};

/// An operation the executor calls once per item.
///
/// The executor calls [`ItemOp::call`] synchronously when an item starts and
/// drives the returned future; a panic in either is caught and becomes the
/// item's [`ExecError::Panicked`].
pub trait ItemOp<I> {
    /// The value of a successful item.
    type Output;
    /// The operation's own error type.
    type Error;
    /// The future of one item.
    type Future: Future<Output = Result<Self::Output, ExecError<Self::Error>>>;

    /// Starts the operation for one item.
    fn call(&mut self, item: I) -> Self::Future;
}

/// An [`ItemOp`] made from a closure returning a future of
/// `Result<T, E>`; an `Err(e)` becomes [`ExecError::Failed`]. Built by
/// [`from_fn`].
#[derive(Debug, Clone, Copy)]
pub struct FnOp<F> {
    f: F,
}

/// Turns `f` into an [`ItemOp`]. Costs nothing: the closure's future is
/// wrapped in place.
pub const fn from_fn<F>(f: F) -> FnOp<F> {
    FnOp { f }
}

impl<I, F, Fut, T, E> ItemOp<I> for FnOp<F>
where
    F: FnMut(I) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    type Output = T;
    type Error = E;
    type Future = Lifted<Fut>;

    #[inline]
    fn call(&mut self, item: I) -> Self::Future {
        Lifted {
            fut: (self.f)(item),
        }
    }
}

pin_project! {
    /// The future of a [`FnOp`]: the closure's future with its error mapped
    /// to [`ExecError::Failed`].
    #[derive(Debug)]
    #[must_use = "futures do nothing unless polled"]
    pub struct Lifted<Fut> {
        #[pin]
        fut: Fut,
    }
}

impl<Fut, T, E> Future for Lifted<Fut>
where
    Fut: Future<Output = Result<T, E>>,
{
    type Output = Result<T, ExecError<E>>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(ready!(self.project().fut.poll(cx)).map_err(ExecError::Failed))
    }
}

/// Runs each item through a [`CircuitBreaker`]: an item the breaker rejects
/// fails at once with [`ExecError::Rejected`] without running; every other
/// item's outcome (as `C` classifies it; a panic or an attempt timeout is a
/// failure) is recorded in the breaker. Built by [`with_breaker`].
///
/// Put the time limit that should count against the dependency on the
/// adapter ([`attempt_timeout`](Self::attempt_timeout)), not only on the
/// executor: the executor's per-item timeout drops the item, and a dropped
/// call is neutral to a breaker.
///
/// Costs per item: one breaker admission (lock-free while closed), one
/// reference-count increment for the permit; no allocation.
#[derive(Debug, Clone)]
pub struct Breaking<F, C = classify::Default> {
    f: F,
    breaker: CircuitBreaker,
    classifier: C,
    timeout: Option<Duration>,
}

/// Wraps `f` so each item goes through `breaker` (outcomes classified with
/// [`classify::Default`]: `Ok` succeeds, `Err` fails).
pub fn with_breaker<F>(breaker: CircuitBreaker, f: F) -> Breaking<F> {
    Breaking {
        f,
        breaker,
        classifier: classify::Default,
        timeout: None,
    }
}

impl<F, C> Breaking<F, C> {
    /// Classifies results with `classifier` (a neutral result changes no
    /// breaker statistic).
    pub fn classify<C2>(self, classifier: C2) -> Breaking<F, C2> {
        Breaking {
            f: self.f,
            breaker: self.breaker,
            classifier,
            timeout: self.timeout,
        }
    }

    /// Each call may take at most `timeout`; past it the call is dropped,
    /// recorded as a failure in the breaker, and the item ends
    /// [`ExecError::TimedOut`].
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

impl<I, F, Fut, T, E, C> ItemOp<I> for Breaking<F, C>
where
    F: FnMut(I) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    C: Classify<T, E> + Clone,
{
    type Output = T;
    type Error = E;
    type Future = BreakingFuture<Fut, C>;

    fn call(&mut self, item: I) -> Self::Future {
        match self.breaker.try_acquire_owned() {
            Err(rejected) => BreakingFuture {
                state: BreakingState::Rejected {
                    rejected: Some(rejected),
                },
            },
            Ok(permit) => {
                // A panic in the call itself is a failure for the breaker
                // too; the executor then makes it the item's error.
                let fut = match catch_unwind(AssertUnwindSafe(|| (self.f)(item))) {
                    Ok(fut) => fut,
                    Err(payload) => {
                        permit.record(Outcome::Failure);
                        resume_unwind(payload)
                    }
                };
                let state = match self.timeout {
                    None => BreakingState::Running {
                        fut,
                        permit: Some(permit),
                        classifier: self.classifier.clone(),
                    },
                    Some(after) => BreakingState::Timed {
                        fut: tokio::time::timeout(after, fut),
                        after,
                        permit: Some(permit),
                        classifier: self.classifier.clone(),
                    },
                };
                BreakingFuture { state }
            }
        }
    }
}

pin_project! {
    /// The future of a [`Breaking`] operation.
    #[must_use = "futures do nothing unless polled"]
    pub struct BreakingFuture<Fut, C> {
        #[pin]
        state: BreakingState<Fut, C>,
    }
}

pin_project! {
    #[project = BreakingProj]
    enum BreakingState<Fut, C> {
        // The breaker refused the call.
        Rejected { rejected: Option<Rejected> },
        // The call runs under a permit.
        Running { #[pin] fut: Fut, permit: Option<OwnedPermit>, classifier: C },
        // The call runs under a permit and a time limit.
        Timed {
            #[pin] fut: tokio::time::Timeout<Fut>,
            after: Duration,
            permit: Option<OwnedPermit>,
            classifier: C,
        },
    }
}

impl<Fut, C> fmt::Debug for BreakingFuture<Fut, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            BreakingState::Rejected { .. } => "rejected",
            BreakingState::Running { .. } => "running",
            BreakingState::Timed { .. } => "running with a timeout",
        };
        f.debug_struct("BreakingFuture")
            .field("state", &state)
            .finish()
    }
}

impl<Fut, T, E, C> Future for BreakingFuture<Fut, C>
where
    Fut: Future<Output = Result<T, E>>,
    C: Classify<T, E>,
{
    type Output = Result<T, ExecError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            BreakingProj::Rejected { rejected } => Poll::Ready(Err(ExecError::Rejected(
                rejected
                    .take()
                    .expect("BreakingFuture polled after completion"),
            ))),
            BreakingProj::Running {
                fut,
                permit,
                classifier,
            } => {
                let result = ready!(poll_recording_panics(fut, cx, permit));
                if let Some(p) = permit.take() {
                    p.record(classifier.classify(&result));
                }
                Poll::Ready(result.map_err(ExecError::Failed))
            }
            BreakingProj::Timed {
                fut,
                after,
                permit,
                classifier,
            } => match ready!(poll_recording_panics(fut, cx, permit)) {
                Ok(result) => {
                    if let Some(p) = permit.take() {
                        p.record(classifier.classify(&result));
                    }
                    Poll::Ready(result.map_err(ExecError::Failed))
                }
                Err(_elapsed) => {
                    if let Some(p) = permit.take() {
                        p.record(Outcome::Failure);
                    }
                    Poll::Ready(Err(ExecError::TimedOut(ItemTimedOut { after: *after })))
                }
            },
        }
    }
}

/// Polls `fut`; if it panics, records a failure in the breaker before the
/// panic goes on to the executor's guard (which makes it the item's error).
fn poll_recording_panics<Fut: Future>(
    fut: Pin<&mut Fut>,
    cx: &mut Context<'_>,
    permit: &mut Option<OwnedPermit>,
) -> Poll<Fut::Output> {
    match catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
        Ok(poll) => poll,
        Err(payload) => {
            if let Some(p) = permit.take() {
                p.record(Outcome::Failure);
            }
            resume_unwind(payload)
        }
    }
}

/// Retries each item with a [`RetryPolicy`], optionally sending every attempt
/// through a [`CircuitBreaker`] and bounding every attempt with a timeout
/// (in that order: retry → breaker → attempt timeout → call, Keel's pipeline
/// order). Built by [`with_retry`].
///
/// The item's error type becomes [`RetryError<E>`]: a failed item says how
/// many attempts it made and why the policy gave up. Two outcomes are mapped
/// to the executor's own variants instead: a call the breaker still rejected
/// on the last attempt is [`ExecError::Rejected`], and a last attempt that
/// timed out (the adapter's attempt timeout, the policy's, or its maximum
/// elapsed time) is [`ExecError::TimedOut`].
///
/// A breaker rejection is an overload with the breaker's remaining open time
/// as retry-after, so the policy waits it out instead of hammering; an
/// attempt timeout is a failure, both for the breaker and for the policy.
///
/// Costs per item: one boxed future (the retry loop), clones of the item per
/// attempt, and reference-count increments for the shared operation,
/// classifier, policy and breaker. Requires `Send` futures.
pub struct Retrying<'a, F, C = classify::Default> {
    f: Arc<F>,
    policy: RetryPolicy,
    breaker: Option<CircuitBreaker>,
    classifier: Arc<C>,
    timeout: Option<Duration>,
    _borrows: PhantomData<&'a ()>,
}

impl<F, C> fmt::Debug for Retrying<'_, F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retrying")
            .field("policy", &self.policy)
            .field("breaker", &self.breaker)
            .field("attempt_timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<F, C> Clone for Retrying<'_, F, C> {
    fn clone(&self) -> Self {
        Retrying {
            f: Arc::clone(&self.f),
            policy: self.policy.clone(),
            breaker: self.breaker.clone(),
            classifier: Arc::clone(&self.classifier),
            timeout: self.timeout,
            _borrows: PhantomData,
        }
    }
}

/// Wraps `f` so each item is retried with `policy` (results classified with
/// [`classify::Default`]: every `Err` is retried). `f` is called once per
/// attempt with a clone of the item.
pub fn with_retry<'a, F>(policy: RetryPolicy, f: F) -> Retrying<'a, F> {
    Retrying {
        f: Arc::new(f),
        policy,
        breaker: None,
        classifier: Arc::new(classify::Default),
        timeout: None,
        _borrows: PhantomData,
    }
}

impl<'a, F, C> Retrying<'a, F, C> {
    /// Sends every attempt through `breaker`.
    pub fn breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// Bounds every attempt by `timeout`, inside the breaker: a timed-out
    /// attempt is a failure for the breaker and is retried.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Classifies each attempt's result with `classifier`, for the retry
    /// policy and the breaker alike.
    pub fn classify<C2>(self, classifier: C2) -> Retrying<'a, F, C2> {
        Retrying {
            f: self.f,
            policy: self.policy,
            breaker: self.breaker,
            classifier: Arc::new(classifier),
            timeout: self.timeout,
            _borrows: PhantomData,
        }
    }
}

impl<'a, I, F, Fut, T, E, C> ItemOp<I> for Retrying<'a, F, C>
where
    I: Clone + Send + 'a,
    F: Fn(I) -> Fut + Send + Sync + 'a,
    Fut: Future<Output = Result<T, E>> + Send + 'a,
    T: Send + 'a,
    E: fmt::Debug + Send + 'a,
    C: Classify<T, E> + Send + Sync + 'a,
{
    type Output = T;
    type Error = RetryError<E>;
    type Future = BoxFuture<'a, Result<T, ExecError<RetryError<E>>>>;

    fn call(&mut self, item: I) -> Self::Future {
        let f = Arc::clone(&self.f);
        let policy = self.policy.clone();
        let guard = Guard::new(
            self.breaker.clone(),
            Arc::clone(&self.classifier),
            self.timeout,
        );
        Box::pin(async move {
            let (guard, f) = (&guard, &f);
            let judge = |r: &Result<Attempted<T>, E>| guard.outcome_of(r);
            // The item moves into the attempt closure (only `I: Send` is
            // needed); each attempt gets a clone.
            let attempt = move |_attempt| {
                let item = item.clone();
                guard.attempt(move || f(item))
            };
            let result = policy.retry_classified(&judge, attempt).await;
            finish_retry(result)
        })
    }
}

/// What one guarded attempt produced. Breaker rejections and attempt
/// timeouts travel on the `Ok` side with their own outcome, so the retry
/// policy's error type stays the operation's `E`.
#[derive(Debug)]
pub(crate) enum Attempted<T> {
    Value(T, Outcome),
    Rejected(Rejected),
    TimedOut(Duration),
}

/// The breaker and attempt timeout applied to each attempt of one call, and
/// the classifier that judges attempts for both the breaker and the retry
/// policy.
pub(crate) struct Guard<C> {
    pub(crate) breaker: Option<CircuitBreaker>,
    pub(crate) classifier: Arc<C>,
    pub(crate) timeout: Option<Duration>,
    /// The outcome of the last attempt that returned `Err`: the retry policy
    /// classifies errors by reference, and a `Classify<T, E>` only accepts a
    /// whole `&Result<T, E>`, which cannot be rebuilt from an `&E`. The
    /// attempt classifies its own result (before giving the error away) and
    /// leaves the outcome here; attempts of one call run one after another,
    /// so the slot is never contended.
    last_error_outcome: Mutex<Outcome>,
}

impl<C> Guard<C> {
    pub(crate) fn new(
        breaker: Option<CircuitBreaker>,
        classifier: Arc<C>,
        timeout: Option<Duration>,
    ) -> Self {
        Guard {
            breaker,
            classifier,
            timeout,
            last_error_outcome: Mutex::new(Outcome::Failure),
        }
    }

    /// Runs one attempt: breaker admission, then (only when admitted) the
    /// call `start` makes, under the time limit; classification; breaker
    /// record.
    pub(crate) async fn attempt<S, Fut, T, E>(&self, start: S) -> Result<Attempted<T>, E>
    where
        S: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        C: Classify<T, E>,
    {
        let permit = match &self.breaker {
            None => None,
            Some(b) => match b.try_acquire() {
                Ok(p) => Some(p),
                Err(rejected) => return Ok(Attempted::Rejected(rejected)),
            },
        };
        let fut = start();
        let result = match self.timeout {
            None => fut.await,
            Some(after) => match tokio::time::timeout(after, fut).await {
                Ok(r) => r,
                Err(_elapsed) => {
                    if let Some(p) = permit {
                        p.record(Outcome::Failure);
                    }
                    return Ok(Attempted::TimedOut(after));
                }
            },
        };
        let outcome = self.classifier.classify(&result);
        if let Some(p) = permit {
            p.record(outcome);
        }
        match result {
            Ok(v) => Ok(Attempted::Value(v, outcome)),
            Err(e) => {
                *self
                    .last_error_outcome
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = outcome;
                Err(e)
            }
        }
    }

    /// The retry policy's view of an attempt.
    pub(crate) fn outcome_of<T, E>(&self, result: &Result<Attempted<T>, E>) -> Outcome {
        match result {
            Ok(Attempted::Value(_, outcome)) => *outcome,
            Ok(Attempted::Rejected(r)) => r.outcome(),
            Ok(Attempted::TimedOut(_)) => Outcome::Failure,
            Err(_) => self.last_error_outcome(),
        }
    }

    /// The outcome of the last attempt that returned `Err`.
    pub(crate) fn last_error_outcome(&self) -> Outcome {
        *self
            .last_error_outcome
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Maps the retry loop's result to the item's result.
fn finish_retry<T, E>(
    result: Result<Attempted<T>, RetryError<E>>,
) -> Result<T, ExecError<RetryError<E>>> {
    match result {
        Ok(Attempted::Value(v, _)) => Ok(v),
        Ok(Attempted::Rejected(r)) => Err(ExecError::Rejected(r)),
        Ok(Attempted::TimedOut(after)) => Err(ExecError::TimedOut(ItemTimedOut { after })),
        Err(RetryError::AttemptTimeout { timeout, .. }) => {
            Err(ExecError::TimedOut(ItemTimedOut { after: timeout }))
        }
        Err(RetryError::DeadlineExceeded {
            last: None,
            max_elapsed,
            ..
        }) => Err(ExecError::TimedOut(ItemTimedOut { after: max_elapsed })),
        Err(e) => Err(ExecError::Failed(e)),
    }
}
