//! HTTP helpers for axum programs: the server with read timeouts and a
//! drain no client can hold, request-latency metrics by route template, and
//! the health routes.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{Method, Response};
use axum::response::IntoResponse;
use axum::routing::{MethodRouter, get};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use keel_core::{BoxError, ConfigError};
use pin_project_lite::pin_project;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;
use tower::{Layer, Service, ServiceExt};

use crate::labels::LabelFamily;
use crate::{HEALTHZ_PATH, READYZ_PATH, Readiness, Shutdown, TelemetryError};

/// How long a client may take to send a request's head, unless told
/// otherwise.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request body may go without a new chunk, unless told
/// otherwise.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The `route` label of requests that matched no route (a fixed value, so
/// scanners cannot mint series).
pub const UNMATCHED_ROUTE: &str = "unmatched";
/// After shutdown, how long a connection with no request in flight may take
/// to close on its own (flushing its last answer) before it is dropped: a
/// client stalled in the middle of its request head costs at most this.
pub const CLOSE_GRACE: Duration = Duration::from_millis(500);
/// The metric name [`HttpMetrics::register`] uses (`_seconds` is added by
/// the unit).
pub const REQUEST_DURATION: &str = "http_request_duration";

/// How long the server waits for a client, per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadTimeouts {
    header: Duration,
    body: Duration,
}

impl Default for ReadTimeouts {
    /// [`DEFAULT_HEADER_READ_TIMEOUT`] and [`DEFAULT_BODY_READ_TIMEOUT`].
    fn default() -> Self {
        ReadTimeouts {
            header: DEFAULT_HEADER_READ_TIMEOUT,
            body: DEFAULT_BODY_READ_TIMEOUT,
        }
    }
}

impl ReadTimeouts {
    /// `header`: from the first byte of a request to the end of its head
    /// (the connection is closed when it runs out; slowloris protection).
    /// `body`: the longest pause between two chunks of a request body (the
    /// handler's body read fails with [`BodyReadError::Timeout`]).
    ///
    /// # Errors
    /// A [`ConfigError`] naming `header_read_timeout` or
    /// `body_read_timeout` when zero.
    pub fn new(header: Duration, body: Duration) -> Result<Self, ConfigError> {
        if header.is_zero() {
            return Err(ConfigError::new(
                "header_read_timeout",
                "must be above zero",
            ));
        }
        if body.is_zero() {
            return Err(ConfigError::new("body_read_timeout", "must be above zero"));
        }
        Ok(ReadTimeouts { header, body })
    }

    /// The header read timeout.
    pub fn header(&self) -> Duration {
        self.header
    }

    /// The body read timeout.
    pub fn body(&self) -> Duration {
        self.body
    }
}

/// A running HTTP/1 server for an axum [`Router`] (the admin routes, or a
/// program's own API).
///
/// Compared with `axum::serve` it bounds how long a client may take
/// ([`ReadTimeouts`]) and guarantees that no client holds the drain: once
/// the [`Shutdown`] it was started with is triggered it stops accepting,
/// closes idle connections, lets in-flight requests finish, and fails the
/// body reads of requests whose body is still arriving
/// ([`BodyReadError::ShuttingDown`]), so a stalled client costs nothing at
/// shutdown. It runs as tracked work, so [`Shutdown::drain`] waits for it
/// within its bound.
#[derive(Debug)]
pub struct HttpServer {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl HttpServer {
    /// Binds `addr` (port 0 for a free one) and serves `app` with the
    /// default [`ReadTimeouts`].
    ///
    /// # Errors
    /// [`TelemetryError::Bind`] when the address cannot be bound.
    pub async fn bind(
        addr: SocketAddr,
        app: Router,
        shutdown: &Shutdown,
    ) -> Result<Self, TelemetryError> {
        Self::bind_with(addr, app, shutdown, ReadTimeouts::default()).await
    }

    /// As [`HttpServer::bind`], with `timeouts`.
    ///
    /// # Errors
    /// [`TelemetryError::Bind`] when the address cannot be bound.
    pub async fn bind_with(
        addr: SocketAddr,
        app: Router,
        shutdown: &Shutdown,
        timeouts: ReadTimeouts,
    ) -> Result<Self, TelemetryError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| TelemetryError::Bind { addr, source })?;
        Self::from_listener(listener, app, shutdown, timeouts)
    }

    /// Serves `app` on an already bound `listener`.
    ///
    /// # Errors
    /// [`TelemetryError::Bind`] when the listener has no local address.
    pub fn from_listener(
        listener: TcpListener,
        app: Router,
        shutdown: &Shutdown,
        timeouts: ReadTimeouts,
    ) -> Result<Self, TelemetryError> {
        let local_addr = listener
            .local_addr()
            .map_err(|source| TelemetryError::Bind {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                source,
            })?;
        let stop = shutdown.token();
        let task = shutdown.spawn(async move {
            tracing::info!(addr = %local_addr, "http server listening");
            serve(listener, app, stop, timeouts).await;
            tracing::info!(addr = %local_addr, "http server stopped");
        });
        Ok(HttpServer { local_addr, task })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Waits for the server to stop (after shutdown is triggered and its
    /// connections are done).
    ///
    /// # Errors
    /// [`TelemetryError::ServerTask`] when the task panicked.
    pub async fn wait(self) -> Result<(), TelemetryError> {
        self.task.await.map_err(TelemetryError::ServerTask)
    }
}

async fn serve(
    listener: TcpListener,
    app: Router,
    stop: CancellationToken,
    timeouts: ReadTimeouts,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header);
    let connections = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Answers are small: never hold one back for Nagle.
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                    }
                    stream
                }
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
        };
        let in_flight = Arc::new(InFlight::default());
        let service = request_service(app.clone(), timeouts.body, stop.clone(), in_flight.clone());
        let connection = builder
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
            .with_upgrades();
        let stop = stop.clone();
        connections.spawn(async move {
            let mut connection = pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = stop.cancelled() => {
                    // Idle connections close now; one with a request in
                    // flight closes after answering it. One stalled in a
                    // request head is not idle to hyper: it is dropped once
                    // nothing is in flight and the grace has passed.
                    connection.as_mut().graceful_shutdown();
                    let quiet = async {
                        in_flight.wait_idle().await;
                        tokio::time::sleep(CLOSE_GRACE).await;
                    };
                    tokio::select! {
                        result = connection.as_mut() => result,
                        () = quiet => {
                            tracing::debug!("dropping a connection still open after shutdown");
                            Ok(())
                        }
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Requests of one connection whose answer is not fully written yet.
#[derive(Default)]
struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

impl InFlight {
    fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self.clone())
    }

    async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            let mut notified = pin!(notified);
            notified.as_mut().enable();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

pin_project! {
    /// A response body that counts its request as in flight until it is
    /// written (dropped).
    struct GuardedBody {
        #[pin]
        body: axum::body::Body,
        _guard: InFlightGuard,
    }
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The per-connection service: request bodies get read timeouts, and each
/// request counts as in flight until its answer is written.
fn request_service(
    app: Router,
    body_timeout: Duration,
    stop: CancellationToken,
    in_flight: Arc<InFlight>,
) -> impl Service<
    Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |request: Request<hyper::body::Incoming>| {
        let guard = in_flight.enter();
        let request = request.map(|body| {
            axum::body::Body::new(ReadTimeoutBody::new(body, body_timeout, stop.clone()))
        });
        let answer = app.clone().oneshot(request);
        async move {
            let response = answer.await?;
            Ok(response.map(|body| {
                axum::body::Body::new(GuardedBody {
                    body,
                    _guard: guard,
                })
            }))
        }
    })
}

/// Connection-level errors (the peer gave up) are nothing to wait for;
/// others (out of file descriptors) pause accepting for a second so the
/// loop does not spin.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::warn!(error = %e, "accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Why a request body could not be read to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BodyReadError {
    /// No chunk arrived within the body read timeout.
    #[error("request body read timed out after {0:?} without data")]
    Timeout(Duration),
    /// Shutdown started while the body was still arriving.
    #[error("request body abandoned: the server is shutting down")]
    ShuttingDown,
}

pin_project! {
    /// A request body that fails with [`BodyReadError`] when the client
    /// pauses longer than the timeout, or when shutdown starts while the
    /// body is still arriving. [`HttpServer`] wraps every request body in
    /// one.
    pub struct ReadTimeoutBody<B> {
        #[pin]
        body: B,
        timeout: Duration,
        #[pin]
        sleep: Option<Sleep>,
        #[pin]
        stop: WaitForCancellationFutureOwned,
    }
}

impl<B> ReadTimeoutBody<B> {
    /// Wraps `body`: `timeout` between chunks, failed once `stop` is
    /// cancelled while waiting for one.
    pub fn new(body: B, timeout: Duration, stop: CancellationToken) -> Self {
        ReadTimeoutBody {
            body,
            timeout,
            sleep: None,
            stop: stop.cancelled_owned(),
        }
    }
}

impl<B> fmt::Debug for ReadTimeoutBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadTimeoutBody")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<B> Body for ReadTimeoutBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if let Poll::Ready(frame) = this.body.poll_frame(cx) {
            this.sleep.set(None);
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.stop.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(BodyReadError::ShuttingDown.into())));
        }
        if this.sleep.is_none() {
            this.sleep.set(Some(tokio::time::sleep(*this.timeout)));
        }
        if let Some(sleep) = this.sleep.as_mut().as_pin_mut()
            && sleep.poll(cx).is_ready()
        {
            return Poll::Ready(Some(Err(BodyReadError::Timeout(*this.timeout).into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Request-latency metrics for an axum router: one histogram,
/// `http_request_duration_seconds{route, method, status}`.
///
/// * `route` is the matched route template (`/alerts/{fingerprint}`, never
///   the fingerprint), or [`UNMATCHED_ROUTE`] for requests no route matched.
/// * `method` is the standard method's name, or `other`.
/// * `status` is the class: `2xx`, `4xx`, `5xx`...
///
/// The label sets live in a [`LabelFamily`] (at most 1,000), so even a
/// router with a wildcard route cannot grow the page without bound. The
/// time is measured to the response head (a streamed body is not waited
/// for). Buckets: 1 ms to 16 s, doubling.
///
/// ```
/// use axum::Router;
/// use axum::routing::{MethodRouter, get};
/// use keel_telemetry::{HttpMetrics, MetricsRegistry};
///
/// let metrics = MetricsRegistry::new("alert_history")?;
/// let http = HttpMetrics::new();
/// metrics.register_with(|r| http.register(r));
/// let app: Router = Router::new()
///     .route("/alerts/{fingerprint}", get(|| async { "ok" }))
///     .layer(http.layer());
/// # Ok::<(), keel_telemetry::TelemetryError>(())
/// ```
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    duration: LabelFamily<Histogram, 3>,
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpMetrics {
    /// Fresh metrics, not registered anywhere yet.
    pub fn new() -> Self {
        let duration = LabelFamily::builder_with_constructor(
            ["route", "method", "status"],
            duration_histogram as fn() -> Histogram,
        )
        .keep(["method", "status"])
        .build()
        // Fixed, valid arguments.
        .unwrap_or_else(|e| unreachable!("{e}"));
        HttpMetrics { duration }
    }

    /// Registers the histogram as [`REQUEST_DURATION`] (`_seconds`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            REQUEST_DURATION,
            "HTTP request latency to the response head, by route template",
            Unit::Seconds,
            self.duration.clone(),
        );
    }

    /// The middleware that records into these metrics. Add it with
    /// `Router::layer` (not `route_layer`, so unmatched requests count).
    pub fn layer(&self) -> LatencyLayer {
        LatencyLayer {
            metrics: self.clone(),
        }
    }

    fn observe(&self, route: &str, method: &'static str, status: &'static str, seconds: f64) {
        self.duration
            .get_or_create([route, method, status])
            .observe(seconds);
    }
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// The layer of [`HttpMetrics::layer`].
#[derive(Debug, Clone)]
pub struct LatencyLayer {
    metrics: HttpMetrics,
}

impl<S> Layer<S> for LatencyLayer {
    type Service = Latency<S>;

    fn layer(&self, inner: S) -> Latency<S> {
        Latency {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service of [`LatencyLayer`].
#[derive(Debug, Clone)]
pub struct Latency<S> {
    inner: S,
    metrics: HttpMetrics,
}

impl<S, ReqBody, ResBody> Service<axum::http::Request<ReqBody>> for Latency<S>
where
    S: Service<axum::http::Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = LatencyFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::http::Request<ReqBody>) -> Self::Future {
        let route = request.extensions().get::<MatchedPath>().cloned();
        let method = method_label(request.method());
        LatencyFuture {
            inner: self.inner.call(request),
            record: Some(Record {
                metrics: self.metrics.clone(),
                route,
                method,
                started: Instant::now(),
            }),
        }
    }
}

struct Record {
    metrics: HttpMetrics,
    route: Option<MatchedPath>,
    method: &'static str,
    started: Instant,
}

pin_project! {
    /// The response future of [`Latency`].
    pub struct LatencyFuture<F> {
        #[pin]
        inner: F,
        record: Option<Record>,
    }
}

impl<F> fmt::Debug for LatencyFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LatencyFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for LatencyFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let output = std::task::ready!(this.inner.poll(cx));
        if let Some(record) = this.record.take() {
            let status = match &output {
                Ok(response) => status_class(response.status().as_u16()),
                Err(_) => "5xx",
            };
            record.metrics.observe(
                record
                    .route
                    .as_ref()
                    .map_or(UNMATCHED_ROUTE, MatchedPath::as_str),
                record.method,
                status,
                record.started.elapsed().as_secs_f64(),
            );
        }
        Poll::Ready(output)
    }
}

/// `/healthz` (alive: `200 {"status":"ok"}`) and `/readyz` (`200` when
/// every check of `readiness` passes, `503` naming the failing ones, and
/// `503 shutting_down` once `shutdown` has been triggered), to merge into
/// a program's own router when it serves them on its main port. Mount
/// [`liveness_route`] and [`readiness_route`] under more paths when a
/// program must also answer at older ones.
pub fn health_routes(readiness: Readiness, shutdown: Option<Shutdown>) -> Router {
    Router::new().route(HEALTHZ_PATH, liveness_route()).route(
        READYZ_PATH,
        readiness_route(readiness, shutdown.map(|s| s.token())),
    )
}

/// The liveness handler: `200 {"status":"ok"}` while the process serves.
pub fn liveness_route<S: Clone + Send + Sync + 'static>() -> MethodRouter<S> {
    get(healthz)
}

/// The readiness handler: `200 {"status":"ready", ...}` when every check of
/// `readiness` passes, `503 {"status":"not_ready", ...}` naming the failing
/// ones, and `503 {"status":"shutting_down"}` once `stopping` is cancelled.
///
/// The body lists the checks twice, for two kinds of reader:
/// `"checks"` (an array of `{name, status, duration_ms, error?}`) and
/// `"dependencies"` (an object by check name of
/// `{status: "ok"|"error", latency_ms, error?}`); `"failing"` names the
/// failing checks.
pub fn readiness_route<S: Clone + Send + Sync + 'static>(
    readiness: Readiness,
    stopping: Option<CancellationToken>,
) -> MethodRouter<S> {
    get(move || {
        let readiness = readiness.clone();
        let stopping = stopping.clone();
        async move { readyz(&readiness, stopping.as_ref()).await }
    })
}

async fn healthz() -> axum::response::Response {
    axum::Json(serde_json::json!({ "status": "ok" })).into_response()
}

async fn readyz(
    readiness: &Readiness,
    stopping: Option<&CancellationToken>,
) -> axum::response::Response {
    use axum::http::StatusCode;
    use serde_json::json;
    if stopping.is_some_and(CancellationToken::is_cancelled) {
        let body = json!({
            "status": "shutting_down",
            "failing": [],
            "checks": [],
            "dependencies": {},
        });
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    }
    let report = readiness.evaluate().await;
    let dependencies: serde_json::Map<String, serde_json::Value> = report
        .checks
        .iter()
        .map(|check| {
            let mut v = json!({
                "status": if check.status == crate::CheckStatus::Pass { "ok" } else { "error" },
                "latency_ms": check.duration_ms,
            });
            if let Some(error) = &check.error {
                v["error"] = json!(error);
            }
            (check.name.clone(), v)
        })
        .collect();
    let (code, status) = if report.ready {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
    };
    let body = json!({
        "status": status,
        "failing": report.failing(),
        "checks": report.checks,
        "dependencies": dependencies,
    });
    (code, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::routing::post;
    use tower::ServiceExt;

    use super::*;

    impl HttpMetrics {
        /// Requests seen for `route`, `method` and status class, read from
        /// the exposition (prometheus-client has no getter).
        fn count(&self, route: &str, method: &str, status: &str) -> u64 {
            let mut registry = Registry::default();
            self.register(&mut registry);
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
            let prefix = format!(
                "http_request_duration_seconds_count{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} "
            );
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .map_or(0, |n| n.parse().unwrap())
        }
    }

    async fn call(app: &Router, method: Method, path: &str) -> StatusCode {
        app.clone()
            .oneshot(
                axum::http::Request::builder()
                    .method(method)
                    .uri(path)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap()
            .status()
    }

    #[tokio::test]
    async fn latency_is_labelled_by_route_template_method_and_status_class() {
        let http = HttpMetrics::new();
        let app = Router::new()
            .route("/alerts/{fingerprint}", get(|| async { "ok" }))
            .route(
                "/webhook",
                post(|| async { (StatusCode::BAD_REQUEST, "bad") }),
            )
            .layer(http.layer());
        for fp in ["a1", "b2", "c3"] {
            assert_eq!(
                call(&app, Method::GET, &format!("/alerts/{fp}")).await,
                StatusCode::OK
            );
        }
        call(&app, Method::POST, "/webhook").await;
        call(&app, Method::GET, "/scanner/probe/1").await;
        call(&app, Method::GET, "/scanner/probe/2").await;
        let custom = Method::from_bytes(b"BREW").unwrap();
        call(&app, custom, "/webhook").await;

        assert_eq!(http.count("/alerts/{fingerprint}", "GET", "2xx"), 3);
        assert_eq!(http.count("/webhook", "POST", "4xx"), 1);
        // Not-found requests share one fixed route label.
        assert_eq!(http.count(UNMATCHED_ROUTE, "GET", "4xx"), 2);
        // Unknown methods share `other` (405 from the matched route).
        assert_eq!(http.count("/webhook", "other", "4xx"), 1);
        assert_eq!(http.duration.len(), 4);

        let mut registry = Registry::with_prefix("alert_history");
        http.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                r#"alert_history_http_request_duration_seconds_count{route="/alerts/{fingerprint}",method="GET",status="2xx"} 3"#
            ),
            "{text}"
        );
    }

    #[test]
    fn status_classes_and_methods_are_bounded() {
        assert_eq!(status_class(101), "1xx");
        assert_eq!(status_class(204), "2xx");
        assert_eq!(status_class(304), "3xx");
        assert_eq!(status_class(429), "4xx");
        assert_eq!(status_class(503), "5xx");
        assert_eq!(status_class(999), "5xx");
        assert_eq!(method_label(&Method::DELETE), "DELETE");
        assert_eq!(method_label(&Method::CONNECT), "other");
    }

    #[test]
    fn read_timeouts_reject_zero() {
        assert_eq!(
            ReadTimeouts::new(Duration::ZERO, Duration::from_secs(1))
                .unwrap_err()
                .field(),
            "header_read_timeout"
        );
        assert_eq!(
            ReadTimeouts::new(Duration::from_secs(1), Duration::ZERO)
                .unwrap_err()
                .field(),
            "body_read_timeout"
        );
        let t = ReadTimeouts::default();
        assert_eq!(
            (t.header(), t.body()),
            (DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_BODY_READ_TIMEOUT)
        );
    }
}
