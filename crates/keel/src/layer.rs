use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::ServiceExt;
use tower_layer::Layer;
use tower_service::Service;

use crate::{Pipeline, PipelineError};

/// The whole [`Pipeline`] as a tower [`Layer`].
///
/// Each request is retried by cloning it, so requests must be `Clone`; the
/// inner service is cloned per attempt and driven to readiness inside the
/// attempt (so its own backpressure counts against the attempt timeout).
/// Errors are [`PipelineError`]s over the inner service's error.
///
/// ```
/// use std::time::Duration;
/// use keel::{Pipeline, PipelineLayer};
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let pipeline = Pipeline::builder()
///     .attempt_timeout(Duration::from_secs(1))
///     .build()
///     .unwrap();
/// let service = PipelineLayer::new(pipeline)
///     .layer(service_fn(|name: &'static str| async move {
///         Ok::<_, std::io::Error>(format!("hello, {name}"))
///     }));
/// assert_eq!(service.oneshot("keel").await.unwrap(), "hello, keel");
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PipelineLayer {
    pipeline: Arc<Pipeline>,
}

impl PipelineLayer {
    /// A layer that runs every request through `pipeline`.
    pub fn new(pipeline: Pipeline) -> Self {
        PipelineLayer {
            pipeline: Arc::new(pipeline),
        }
    }

    /// A layer over a pipeline that is also used elsewhere.
    pub fn from_shared(pipeline: Arc<Pipeline>) -> Self {
        PipelineLayer { pipeline }
    }

    /// The pipeline (its statistics, breaker and retry policy).
    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }
}

impl<S> Layer<S> for PipelineLayer {
    type Service = PipelineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PipelineService {
            inner,
            pipeline: self.pipeline.clone(),
        }
    }
}

/// The service [`PipelineLayer`] produces.
#[derive(Debug, Clone)]
pub struct PipelineService<S> {
    inner: S,
    pipeline: Arc<Pipeline>,
}

impl<S, Req> Service<Req> for PipelineService<S>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send,
    S::Error: Send,
    Req: Clone + Send + Sync + 'static,
{
    type Response = S::Response;
    type Error = PipelineError<S::Error>;
    // Boxed: the pipeline's call is an `async fn`, whose future type cannot
    // be named on stable Rust; this is the one allocation per request the
    // layer adds. keel-breaker's layer names its future; keel-retry's runs
    // the async retry loop and is boxed for the same reason.
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is awaited per attempt, inside the pipeline.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let pipeline = self.pipeline.clone();
        let inner = self.inner.clone();
        Box::pin(async move {
            pipeline
                .call(move |_attempt| inner.clone().oneshot(request.clone()))
                .await
        })
    }
}
