//! The admin HTTP router: `/healthz`, `/readyz`, `/metrics` and a status
//! route.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::BoxFuture;
use serde_json::Value;

use keel_core::ConfigError;

use crate::http::health_routes;
use crate::{MetricsRegistry, OPENMETRICS_CONTENT_TYPE, Readiness, Shutdown, TelemetryError};

/// The liveness route: answers `200 {"status":"ok"}` while the process can
/// serve HTTP at all.
pub const HEALTHZ_PATH: &str = "/healthz";
/// The readiness route: `200` when every readiness check passes, `503`
/// naming the failing checks otherwise (and while shutting down).
pub const READYZ_PATH: &str = "/readyz";
/// The metrics route: OpenMetrics text.
pub const METRICS_PATH: &str = "/metrics";

type StatusFn = Arc<dyn Fn() -> BoxFuture<'static, Value> + Send + Sync>;

struct StatusRoute {
    path: String,
    render: StatusFn,
}

struct Inner {
    metrics: MetricsRegistry,
    readiness: Readiness,
    status: Option<StatusRoute>,
    shutdown: Option<Shutdown>,
}

/// Everything the admin routes read. Build it with [`AdminState::builder`]
/// and turn it into a [`Router`] with [`router`]. Cloning is cheap.
#[derive(Clone)]
pub struct AdminState {
    inner: Arc<Inner>,
    extra: Router,
}

impl AdminState {
    /// Starts a builder around the program's metrics registry.
    pub fn builder(metrics: MetricsRegistry) -> AdminBuilder {
        AdminBuilder {
            metrics,
            readiness: Readiness::new(),
            status: None,
            shutdown: None,
            extra: Router::new(),
        }
    }

    /// The metrics registry served on `/metrics`.
    pub fn metrics(&self) -> &MetricsRegistry {
        &self.inner.metrics
    }

    /// The readiness checks evaluated on `/readyz`.
    pub fn readiness(&self) -> &Readiness {
        &self.inner.readiness
    }
}

impl fmt::Debug for AdminState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminState")
            .field("metrics", &self.inner.metrics)
            .field("readiness", &self.inner.readiness)
            .field("status_path", &self.inner.status.as_ref().map(|s| &s.path))
            .field("shutdown", &self.inner.shutdown)
            .finish_non_exhaustive()
    }
}

/// Builder for [`AdminState`]; [`AdminBuilder::build`] validates it.
#[must_use]
pub struct AdminBuilder {
    metrics: MetricsRegistry,
    readiness: Readiness,
    status: Option<(String, StatusFn)>,
    shutdown: Option<Shutdown>,
    extra: Router,
}

impl AdminBuilder {
    /// The readiness checks behind `/readyz` (default: none, always ready).
    pub fn readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = readiness;
        self
    }

    /// Adds a program-defined JSON status route (`/status`, `/vms`...): each
    /// GET calls `render` and answers `200` with its value.
    pub fn status<F, Fut>(mut self, path: impl Into<String>, render: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Value> + Send + 'static,
    {
        let render: StatusFn = Arc::new(move || Box::pin(render()));
        self.status = Some((path.into(), render));
        self
    }

    /// Makes `/readyz` answer `503 shutting_down` once `shutdown` has been
    /// triggered, so load balancers stop sending work before the drain.
    pub fn shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = Some(shutdown);
        self
    }

    /// Merges extra routes (a program's admin API) into the admin router.
    /// Their paths must not repeat a built-in or the status path: axum panics
    /// on overlapping routes when [`router`] merges them.
    pub fn routes(mut self, routes: Router) -> Self {
        self.extra = self.extra.merge(routes);
        self
    }

    /// Validates and builds the state.
    ///
    /// # Errors
    /// [`TelemetryError::Config`] naming `status` when the status path does
    /// not start with `/`, contains a path parameter or wildcard, or is one
    /// of the built-in routes.
    pub fn build(self) -> Result<AdminState, TelemetryError> {
        let status = match self.status {
            Some((path, render)) => {
                validate_status_path(&path)?;
                Some(StatusRoute { path, render })
            }
            None => None,
        };
        Ok(AdminState {
            inner: Arc::new(Inner {
                metrics: self.metrics,
                readiness: self.readiness,
                status,
                shutdown: self.shutdown,
            }),
            extra: self.extra,
        })
    }
}

fn validate_status_path(path: &str) -> Result<(), TelemetryError> {
    let reason = if !path.starts_with('/') || path.len() < 2 {
        Some("must start with `/` and name a route")
    } else if path.contains(['{', '}', '*', '?', '#', ':']) || path.contains("//") {
        Some("must be a literal path without parameters, wildcards or query")
    } else if [HEALTHZ_PATH, READYZ_PATH, METRICS_PATH].contains(&path) {
        Some("collides with a built-in admin route")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ConfigError::new("status", format!("`{path}` {reason}")).into()),
        None => Ok(()),
    }
}

/// The admin router: `/healthz`, `/readyz`, `/metrics`, the status route and
/// the merged extra routes. Serve it with [`crate::HttpServer`], or test it
/// with `tower::ServiceExt::oneshot` without a socket.
///
/// # Panics
/// When an extra route overlaps a built-in one (axum's `merge` rule).
pub fn router(state: AdminState) -> Router {
    let extra = state.extra.clone();
    let health = health_routes(state.inner.readiness.clone(), state.inner.shutdown.clone());
    let mut app = Router::new().route(METRICS_PATH, get(metrics));
    if let Some(status) = &state.inner.status {
        app = app.route(&status.path, get(status_route));
    }
    app.with_state(state).merge(health).merge(extra)
}

async fn metrics(State(state): State<AdminState>) -> Response {
    encode_metrics(&state.inner.metrics)
}

/// The `/metrics` handler for a program's own router: `metrics` in the
/// OpenMetrics text format (the admin router serves the same).
pub fn metrics_route<S: Clone + Send + Sync + 'static>(
    metrics: MetricsRegistry,
) -> axum::routing::MethodRouter<S> {
    axum::routing::get(move || {
        let metrics = metrics.clone();
        async move { encode_metrics(&metrics) }
    })
}

fn encode_metrics(metrics: &MetricsRegistry) -> Response {
    match metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], text).into_response(),
        Err(_) => {
            tracing::warn!("metrics encoding failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "metrics encoding failed\n",
            )
                .into_response()
        }
    }
}

async fn status_route(State(state): State<AdminState>) -> Response {
    match &state.inner.status {
        Some(status) => axum::Json((status.render)().await).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use prometheus_client::metrics::counter::Counter;
    use serde_json::json;
    use tower::ServiceExt;

    use super::*;

    async fn get_json(app: &Router, path: &str) -> (StatusCode, Value) {
        let response = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    fn state() -> AdminBuilder {
        AdminState::builder(MetricsRegistry::new("prog").unwrap())
    }

    #[tokio::test]
    async fn healthz_answers_ok() {
        let app = router(state().build().unwrap());
        assert_eq!(
            get_json(&app, "/healthz").await,
            (StatusCode::OK, json!({ "status": "ok" }))
        );
    }

    #[tokio::test]
    async fn readyz_reports_each_check_and_names_the_failing_ones() {
        let readiness = Readiness::new();
        readiness
            .add_fn("config", || async { Ok::<_, keel_core::BoxError>(()) })
            .unwrap();
        let app = router(state().readiness(readiness.clone()).build().unwrap());
        let (status, body) = get_json(&app, "/readyz").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "ready");
        assert_eq!(body["checks"][0]["name"], "config");
        assert_eq!(body["checks"][0]["status"], "pass");

        // Registered after the router was built: shared state.
        readiness
            .add_fn("db", || async { Err::<(), _>("connection refused") })
            .unwrap();
        let (status, body) = get_json(&app, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["status"], "not_ready");
        assert_eq!(body["failing"], json!(["db"]));
        assert_eq!(body["checks"][1]["error"], "connection refused");
    }

    #[tokio::test(start_paused = true)]
    async fn readyz_times_out_a_hanging_check() {
        let readiness = Readiness::new()
            .with_timeout(Duration::from_millis(250))
            .unwrap();
        readiness
            .add_fn("hang", || {
                std::future::pending::<Result<(), &'static str>>()
            })
            .unwrap();
        let app = router(state().readiness(readiness).build().unwrap());
        let (status, body) = get_json(&app, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["failing"], json!(["hang"]));
        assert_eq!(body["checks"][0]["status"], "timeout");
        assert_eq!(body["checks"][0]["duration_ms"], 250);
    }

    #[tokio::test]
    async fn readyz_is_unavailable_once_shutdown_started() {
        let shutdown = Shutdown::new();
        let app = router(state().shutdown(shutdown.clone()).build().unwrap());
        assert_eq!(get_json(&app, "/readyz").await.0, StatusCode::OK);
        shutdown.trigger();
        let (status, body) = get_json(&app, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["status"], "shutting_down");
    }

    #[tokio::test]
    async fn metrics_are_openmetrics_text() {
        let metrics = MetricsRegistry::new("vm_watchdog").unwrap();
        let starts: Counter = Counter::default();
        metrics.register_with(|r| r.register("vm_starts", "VM start requests", starts.clone()));
        starts.inc();
        let app = router(AdminState::builder(metrics).build().unwrap());
        let response = app
            .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        let text = String::from_utf8(
            response
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap();
        assert!(text.contains("vm_watchdog_vm_starts_total 1"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[tokio::test]
    async fn status_route_and_extra_routes_are_served() {
        let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = counter.clone();
        let extra = Router::new().route("/vms/force", axum::routing::post(|| async { "forced" }));
        let app = router(
            state()
                .status("/status", move || {
                    let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    async move { json!({ "vms": 3, "calls": n }) }
                })
                .routes(extra)
                .build()
                .unwrap(),
        );
        assert_eq!(
            get_json(&app, "/status").await,
            (StatusCode::OK, json!({ "vms": 3, "calls": 0 }))
        );
        assert_eq!(get_json(&app, "/status").await.1["calls"], 1);
        let response = app
            .clone()
            .oneshot(Request::post("/vms/force").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let response = app
            .oneshot(Request::get("/nope").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn status_paths_are_validated() {
        for (bad, why) in [
            ("status", "must start"),
            ("/", "must start"),
            ("/metrics", "collides"),
            ("/vms/{id}", "literal"),
            ("/a?b", "literal"),
        ] {
            let err = state()
                .status(bad, || async { json!({}) })
                .build()
                .unwrap_err();
            match err {
                TelemetryError::Config(e) => {
                    assert_eq!(e.field(), "status");
                    assert!(e.reason().starts_with(&format!("`{bad}`")), "{e}");
                    assert!(e.reason().contains(why), "{bad}: {e}");
                }
                other => panic!("{bad}: unexpected {other}"),
            }
        }
        assert!(
            state()
                .status("/v1/status", || async { json!({}) })
                .build()
                .is_ok()
        );
    }
}
