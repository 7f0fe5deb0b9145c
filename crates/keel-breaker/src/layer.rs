//! A tower [`Layer`] that puts a circuit breaker in front of a service
//! (feature `tower`).
//!
//! Each request takes a permit when it is *called* (not in `poll_ready`, so a
//! rejection never poisons the service); the response future records the
//! outcome through the layer's classifier, and a response future dropped
//! before completion counts as neutral. Errors are
//! [`BreakerError<S::Error>`](crate::BreakerError): `Rejected` when the
//! breaker refused, `Inner` for the service's own error.
//!
//! ```
//! use keel_breaker::{BreakerConfig, BreakerError, BreakerLayer, CircuitBreaker};
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let breaker = CircuitBreaker::new("echo", BreakerConfig::default());
//! let mut svc = ServiceBuilder::new()
//!     .layer(BreakerLayer::new(breaker.clone()))
//!     .service(service_fn(|req: u32| async move { Ok::<_, std::io::Error>(req * 2) }));
//! assert_eq!(svc.ready().await.unwrap().call(21).await.unwrap(), 42);
//!
//! breaker.force_open();
//! let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
//! assert!(matches!(err, BreakerError::Rejected(_)));
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use keel_core::{Classify, classify};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::{BreakerError, CircuitBreaker, OwnedPermit, Rejected};

/// Wraps services in a [`BreakerService`] sharing one breaker.
#[derive(Debug, Clone)]
pub struct BreakerLayer<C = classify::Default> {
    breaker: CircuitBreaker,
    classifier: C,
}

impl BreakerLayer {
    /// A layer over `breaker`; `Ok` responses are successes, errors
    /// failures.
    pub fn new(breaker: CircuitBreaker) -> Self {
        BreakerLayer {
            breaker,
            classifier: classify::Default,
        }
    }
}

impl<C> BreakerLayer<C> {
    /// Classifies results with `classifier` instead (for instance an HTTP
    /// response whose status is 503 is a failure, a 404 neutral).
    pub fn with_classifier<C2>(self, classifier: C2) -> BreakerLayer<C2> {
        BreakerLayer {
            breaker: self.breaker,
            classifier,
        }
    }

    /// The breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }
}

impl<S, C: Clone> Layer<S> for BreakerLayer<C> {
    type Service = BreakerService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        BreakerService {
            inner,
            breaker: self.breaker.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// A service guarded by a circuit breaker. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct BreakerService<S, C = classify::Default> {
    inner: S,
    breaker: CircuitBreaker,
    classifier: C,
}

impl<S> BreakerService<S> {
    /// Guards `inner` with `breaker`, with the default classifier.
    pub fn new(inner: S, breaker: CircuitBreaker) -> Self {
        BreakerService {
            inner,
            breaker,
            classifier: classify::Default,
        }
    }
}

impl<S, C> BreakerService<S, C> {
    /// The breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, C, Req> Service<Req> for BreakerService<S, C>
where
    S: Service<Req>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BreakerError<S::Error>;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(BreakerError::Inner)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let state = match self.breaker.try_acquire_owned() {
            Ok(permit) => Inner::Running {
                fut: self.inner.call(req),
                permit: Some(permit),
                classifier: self.classifier.clone(),
            },
            Err(rejected) => Inner::Rejected {
                rejected: Some(rejected),
            },
        };
        ResponseFuture { state }
    }
}

pin_project! {
    /// The response future of a [`BreakerService`]. Dropping it before it
    /// completes counts the call as neutral.
    pub struct ResponseFuture<F, C> {
        #[pin]
        state: Inner<F, C>,
    }
}

pin_project! {
    #[project = InnerProj]
    enum Inner<F, C> {
        Running {
            #[pin]
            fut: F,
            permit: Option<OwnedPermit>,
            classifier: C,
        },
        Rejected {
            rejected: Option<Rejected>,
        },
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    C: Classify<T, E>,
{
    type Output = Result<T, BreakerError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            InnerProj::Running {
                fut,
                permit,
                classifier,
            } => {
                let result = ready!(fut.poll(cx));
                if let Some(permit) = permit.take() {
                    permit.record(classifier.classify(&result));
                }
                Poll::Ready(result.map_err(BreakerError::Inner))
            }
            InnerProj::Rejected { rejected } => match rejected.take() {
                Some(rejected) => Poll::Ready(Err(BreakerError::Rejected(rejected))),
                None => panic!("ResponseFuture polled after completion"),
            },
        }
    }
}
