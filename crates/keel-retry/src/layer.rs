//! A tower middleware that retries requests through a [`RetryPolicy`].

use std::fmt;
use std::task::{Context, Poll};

use keel_core::{BoxError, Classify, classify};
use tower_layer::Layer;
use tower_service::Service;

use crate::error::RetryError;
use crate::policy::{BoxFuture, RetryPolicy};

/// A [`Layer`] that retries the requests of the service it wraps with a
/// [`RetryPolicy`], classifying each `Result<Response, Error>` with `C`
/// ([`classify::Default`] unless [`with_classifier`](Self::with_classifier)
/// says otherwise; classify an `Ok` 503 as an overload to retry it).
///
/// The request must be `Clone`: each attempt gets a clone. The layer only
/// holds configuration; the policy's statistics and budget are shared by
/// every service it builds.
///
/// Errors are [`BoxError`]s: when retries run out, or the error is not
/// retryable, the inner service's last error comes back unchanged (as with
/// tower's own retry); the policy's own refusals come back as
/// [`RetryBudgetExhausted`](crate::RetryBudgetExhausted),
/// [`RetryDeadlineExceeded`](crate::RetryDeadlineExceeded) or
/// [`AttemptTimedOut`](crate::AttemptTimedOut), which callers can
/// downcast (see [`RetryError::into_box_error`]). When retries run out on
/// an `Ok` response classified as a failure, that response is returned.
#[derive(Clone)]
pub struct RetryLayer<C = classify::Default> {
    policy: RetryPolicy,
    classifier: C,
}

impl RetryLayer {
    /// Retries every `Err` through `policy`.
    pub fn new(policy: RetryPolicy) -> Self {
        RetryLayer {
            policy,
            classifier: classify::Default,
        }
    }
}

impl<C> RetryLayer<C> {
    /// Uses `classifier` to decide what to retry.
    pub fn with_classifier<C2>(self, classifier: C2) -> RetryLayer<C2> {
        RetryLayer {
            policy: self.policy,
            classifier,
        }
    }

    /// The policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }
}

impl<C: fmt::Debug> fmt::Debug for RetryLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("policy", &self.policy)
            .field("classifier", &self.classifier)
            .finish()
    }
}

impl<S, C: Clone> Layer<S> for RetryLayer<C> {
    type Service = RetryService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryService {
            inner,
            policy: self.policy.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// The service built by [`RetryLayer`].
#[derive(Clone)]
pub struct RetryService<S, C = classify::Default> {
    inner: S,
    policy: RetryPolicy,
    classifier: C,
}

impl<S, C> RetryService<S, C> {
    /// Wraps `inner` directly, without a layer.
    pub fn new(inner: S, policy: RetryPolicy, classifier: C) -> Self {
        RetryService {
            inner,
            policy,
            classifier,
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: fmt::Debug, C: fmt::Debug> fmt::Debug for RetryService<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryService")
            .field("inner", &self.inner)
            .field("policy", &self.policy)
            .field("classifier", &self.classifier)
            .finish()
    }
}

impl<S, C, Req> Service<Req> for RetryService<S, C>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send,
    S::Error: Into<BoxError> + fmt::Debug + Send,
    Req: Clone + Send + 'static,
    C: Classify<S::Response, S::Error> + Clone + Send + Sync + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        // The service `poll_ready` readied goes to the first attempt; the
        // clone left in its place waits for its own `poll_ready`. Retries
        // each take a clone of `spare` and wait for its readiness.
        let clone = self.inner.clone();
        let mut readied = Some(std::mem::replace(&mut self.inner, clone));
        let spare = self.inner.clone();
        let policy = self.policy.clone();
        let classifier = self.classifier.clone();
        Box::pin(async move {
            policy
                .retry_classified(&classifier, move |attempt| {
                    let request = request.clone();
                    let first = readied.take();
                    let mut service = first.unwrap_or_else(|| spare.clone());
                    async move {
                        if attempt.is_retry() {
                            std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
                        }
                        service.call(request).await
                    }
                })
                .await
                .map_err(RetryError::into_box_error)
        })
    }
}
