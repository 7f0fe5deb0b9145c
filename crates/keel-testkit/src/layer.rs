//! The tower layer that turns any axum router into a fake: it records each
//! request, injects faults, and serves scripted answers before the router.

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use keel_core::BoxError;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tower_layer::Layer;
use tower_service::Service;

use crate::faults::aborting_body;
use crate::record::Recorder;
use crate::{Fault, Faults, RecordedRequest, Script, WaitTimeout};

/// The seed a fake uses unless told otherwise: runs are repeatable by
/// default.
pub const DEFAULT_SEED: u64 = 0x6b65_656c;

/// The test's handle on a fake: its request log, faults and script. Cloning
/// shares them; [`FakeControl::layer`] wraps a router with them.
#[derive(Clone)]
pub struct FakeControl {
    inner: Arc<ControlInner>,
}

struct ControlInner {
    recorder: Recorder,
    faults: Faults,
    script: Script,
}

impl Default for FakeControl {
    fn default() -> Self {
        Self::new(DEFAULT_SEED)
    }
}

impl FakeControl {
    /// Nothing recorded, no faults, no script; faults drawn from `seed`.
    pub fn new(seed: u64) -> Self {
        FakeControl {
            inner: Arc::new(ControlInner {
                recorder: Recorder::new(),
                faults: Faults::new(seed),
                script: Script::default(),
            }),
        }
    }

    /// A layer that applies this control to an axum router
    /// (`router.layer(control.layer())`, or `control.layer().layer(router)`
    /// to see every request before routing).
    pub fn layer(&self) -> FakeLayer {
        FakeLayer {
            control: self.clone(),
        }
    }

    /// The fault handle.
    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }

    /// The scripted answers.
    pub fn script(&self) -> &Script {
        &self.inner.script
    }

    /// Every request received so far, in arrival order (faulted ones too).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.inner.recorder.snapshot()
    }

    /// The requests to exactly `method path`.
    pub fn requests_to(&self, method: Method, path: &str) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method && r.path == path)
            .collect()
    }

    /// How many requests were received.
    pub fn request_count(&self) -> usize {
        self.inner.recorder.len()
    }

    /// Forgets the recorded requests (sequence numbers keep counting).
    pub fn clear_requests(&self) {
        self.inner.recorder.clear();
    }

    /// Waits until at least `n` requests were recorded, at most `timeout`,
    /// and returns them all. Wakes on each new request; no polling delay.
    /// The bound is tokio time: under paused time it elapses as soon as the
    /// runtime is idle, so wait on real sockets with real time.
    ///
    /// # Errors
    /// [`WaitTimeout`] with the count seen when the bound runs out.
    pub async fn wait_for_requests(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<RecordedRequest>, WaitTimeout> {
        self.inner
            .recorder
            .wait_until(timeout, |requests| requests.len() >= n)
            .await
    }

    /// Waits until `done(requests)` holds, at most `timeout`.
    ///
    /// # Errors
    /// [`WaitTimeout`] when the bound runs out.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        done: impl FnMut(&[RecordedRequest]) -> bool,
    ) -> Result<Vec<RecordedRequest>, WaitTimeout> {
        self.inner.recorder.wait_until(timeout, done).await
    }
}

impl fmt::Debug for FakeControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeControl")
            .field("requests", &self.request_count())
            .field("faults", &self.inner.faults)
            .field("script", &self.inner.script)
            .finish()
    }
}

/// Placed in each request's extensions by [`crate::FakeServer`]: closes or
/// resets that request's connection without an answer.
#[derive(Clone, Debug)]
pub(crate) struct ConnectionCloser {
    pub(crate) token: CancellationToken,
    pub(crate) reset: Arc<AtomicBool>,
}

impl ConnectionCloser {
    /// Closes the connection (FIN) without an answer.
    pub(crate) fn close(&self) {
        self.token.cancel();
    }

    /// Resets the connection (RST) without an answer.
    pub(crate) fn reset(&self) {
        self.reset.store(true, Ordering::SeqCst);
        self.token.cancel();
    }
}

/// The tower [`Layer`] of a fake; see [`FakeControl::layer`].
#[derive(Clone, Debug)]
pub struct FakeLayer {
    control: FakeControl,
}

impl<S> Layer<S> for FakeLayer {
    type Service = FakeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FakeService {
            inner,
            control: self.control.clone(),
        }
    }
}

/// The service [`FakeLayer`] produces. For each request it reads the whole
/// body, decides the fault, records the request, waits the injected latency,
/// then answers with the fault, a scripted answer, or the inner service.
///
/// A [`Fault::Drop`] closes the connection when served by
/// [`crate::FakeServer`]; elsewhere (another server, `oneshot`) it answers
/// with a body that fails on first read, which makes hyper abort the
/// connection.
#[derive(Clone, Debug)]
pub struct FakeService<S> {
    inner: S,
    control: FakeControl,
}

impl<S, B> Service<Request<B>> for FakeService<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The inner service is driven to readiness in `call` (oneshot on a
        // clone); axum routers are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        let control = self.control.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let body = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) => {
                    let e: BoxError = e.into();
                    tracing::debug!(error = %e, "fake server could not read a request body");
                    return Ok(
                        (StatusCode::BAD_REQUEST, "cannot read request body\n").into_response()
                    );
                }
            };
            let faults = control.faults();
            let decision = faults.decide();
            let recorded = RecordedRequest {
                seq: control.inner.recorder.next_seq(),
                method: parts.method.clone(),
                path: parts.uri.path().to_owned(),
                query: parts.uri.query().map(str::to_owned),
                headers: parts.headers.clone(),
                body: body.clone(),
                fault: decision.fault,
                delay: decision.delay,
            };
            control.inner.recorder.push(recorded.clone());
            tracing::trace!(
                method = %recorded.method,
                path = %recorded.path,
                fault = ?decision.fault,
                delay_ms = decision.delay.as_millis() as u64,
                "fake server request"
            );
            if !decision.delay.is_zero() {
                tokio::time::sleep(decision.delay).await;
            }
            match decision.fault {
                Some(fault @ (Fault::Drop | Fault::Reset)) => {
                    return match parts.extensions.get::<ConnectionCloser>() {
                        Some(closer) => {
                            if fault == Fault::Reset {
                                closer.reset();
                            } else {
                                closer.close();
                            }
                            // The connection task drops this future with the
                            // connection; nothing is ever written.
                            std::future::pending().await
                        }
                        None => Ok(Response::new(aborting_body())),
                    };
                }
                Some(Fault::Error(status)) => {
                    return Ok(faults.renderer().error(status, &recorded));
                }
                Some(Fault::RateLimited { retry_after }) => {
                    return Ok(faults.renderer().rate_limited(retry_after, &recorded));
                }
                Some(Fault::Delay(_)) | None => {}
            }
            if let Some(scripted) = control.script().respond(&recorded) {
                return Ok(scripted.into_response());
            }
            inner
                .oneshot(Request::from_parts(parts, Body::from(body)))
                .await
        })
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::routing::post;
    use http_body_util::BodyExt;

    use super::*;
    use crate::FaultConfig;

    fn app(control: &FakeControl) -> Router {
        Router::new()
            .route("/echo", post(|body: String| async move { body }))
            .layer(control.layer())
    }

    async fn call(app: &Router, path: &str, body: &'static str) -> Response {
        app.clone()
            .oneshot(Request::post(path).body(Body::from(body)).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn latency_is_drawn_from_the_range_and_waited_on_tokio_time() {
        let control = FakeControl::new(7);
        control
            .faults()
            .set(FaultConfig::none().with_latency(Duration::from_secs(2), Duration::from_secs(4)))
            .unwrap();
        let app = app(&control);
        let started = tokio::time::Instant::now();
        let response = call(&app, "/echo", "hi").await;
        let waited = started.elapsed();
        assert_eq!(response.status(), StatusCode::OK);
        let recorded = &control.requests()[0];
        // Tokio timers have millisecond resolution.
        assert!(waited >= recorded.delay && waited - recorded.delay <= Duration::from_millis(1));
        assert!(
            (Duration::from_secs(2)..=Duration::from_secs(4)).contains(&waited),
            "{waited:?}"
        );
        assert_eq!(recorded.fault, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_one_shot_delay_holds_the_answer_until_time_passes() {
        let control = FakeControl::default();
        control
            .faults()
            .push_next(Fault::Delay(Duration::from_secs(30)));
        let app = app(&control);
        let pending = tokio::spawn({
            let app = app.clone();
            async move { call(&app, "/echo", "late").await }
        });
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert!(!pending.is_finished());
        tokio::time::sleep(Duration::from_secs(1)).await;
        let response = pending.await.unwrap();
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            "late"
        );
    }

    #[tokio::test]
    async fn a_drop_outside_fake_server_fails_the_body() {
        let control = FakeControl::default();
        control.faults().push_next(Fault::Drop);
        let response = call(&app(&control), "/echo", "x").await;
        assert!(response.into_body().collect().await.is_err());
        assert_eq!(control.requests()[0].fault, Some(Fault::Drop));
    }

    #[tokio::test]
    async fn scripted_answers_come_before_the_router_and_faults_before_both() {
        let control = FakeControl::default();
        let app = app(&control);
        control.script().enqueue(
            Method::POST,
            "/echo",
            crate::ScriptedResponse::text(StatusCode::ACCEPTED, "scripted"),
        );
        control
            .faults()
            .push_next(Fault::Error(StatusCode::INTERNAL_SERVER_ERROR));
        assert_eq!(
            call(&app, "/echo", "a").await.status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            call(&app, "/echo", "b").await.status(),
            StatusCode::ACCEPTED
        );
        let response = call(&app, "/echo", "c").await;
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            "c"
        );
        let seqs: Vec<u64> = control.requests().iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [0, 1, 2]);
    }
}
