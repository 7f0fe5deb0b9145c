//! Program plumbing shared by every Keel binary: logging, metrics, the admin
//! HTTP server and graceful shutdown.
//!
//! Use it in `main.rs` (never in a library, which must not install a
//! subscriber or bind ports):
//!
//! * [`init_from_env`] installs a `tracing` subscriber from `RUST_LOG` and
//!   `LOG_FORMAT=json|text`; a bad value is a typed error naming the
//!   variable, and a second call returns an error instead of panicking.
//! * [`MetricsRegistry`] is a prometheus-client registry with the program's
//!   prefix (`alert_history_...`), or without one
//!   ([`MetricsRegistry::unprefixed`], for programs whose metric names are
//!   fixed by an existing dashboard); libraries keep their `register(&mut
//!   Registry)` API with short names.
//! * [`router`] builds the admin routes: `/healthz` (alive), `/readyz` (the
//!   program's [`Readiness`] checks, with a timeout; 503 naming the failing
//!   ones), `/metrics` (OpenMetrics text) and a program-defined JSON status
//!   route, plus any extra routes. [`HttpServer`] serves it.
//! * [`Shutdown`] turns SIGTERM/SIGINT into a cancellation token, tracks
//!   in-flight work and drains it within a bound ([`DEFAULT_DRAIN_TIMEOUT`]).
//!
//! The admin router, tested without a socket:
//!
//! ```
//! use axum::body::Body;
//! use axum::http::{Request, StatusCode};
//! use http_body_util::BodyExt;
//! use keel_telemetry::prometheus_client::metrics::counter::Counter;
//! use keel_telemetry::{AdminState, MetricsRegistry, Readiness, router};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let metrics = MetricsRegistry::new("vm_watchdog")?;
//! let checks = Counter::<u64>::default();
//! metrics.register_with(|r| r.register("status_checks", "VM status checks", checks.clone()));
//!
//! let readiness = Readiness::new();
//! readiness.add_fn("config", || async { Ok::<_, std::io::Error>(()) })?;
//!
//! let state = AdminState::builder(metrics)
//!     .readiness(readiness)
//!     .status("/status", || async { serde_json::json!({ "vms": 3 }) })
//!     .build()?;
//! let app = router(state);
//!
//! checks.inc();
//! let response = app.clone().oneshot(Request::get("/metrics").body(Body::empty())?).await?;
//! let text = response.into_body().collect().await?.to_bytes();
//! assert!(std::str::from_utf8(&text)?.contains("vm_watchdog_status_checks_total 1"));
//!
//! let response = app.oneshot(Request::get("/readyz").body(Body::empty())?).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//! # Ok(())
//! # }
//! ```
//!
//! A whole `main`: bind the admin port, run work until SIGTERM, drain for at
//! most 10 s, exit 0 (`no_run` because it waits for a signal):
//!
//! ```no_run
//! use std::time::Duration;
//! use keel_telemetry::{
//!     HttpServer, AdminState, DEFAULT_DRAIN_TIMEOUT, MetricsRegistry, Shutdown, init_from_env,
//!     router,
//! };
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     init_from_env()?;
//!     let shutdown = Shutdown::new();
//!     let metrics = MetricsRegistry::new("vm_watchdog")?;
//!     let state = AdminState::builder(metrics).shutdown(shutdown.clone()).build()?;
//!     let server = HttpServer::bind("127.0.0.1:9090".parse()?, router(state), &shutdown).await?;
//!     tracing::info!(addr = %server.local_addr(), "started");
//!
//!     let token = shutdown.token();
//!     shutdown.spawn(async move {
//!         // The program's work loop: stop taking work when the token fires.
//!         while !token.is_cancelled() {
//!             tokio::select! {
//!                 () = token.cancelled() => break,
//!                 () = tokio::time::sleep(Duration::from_secs(5)) => { /* one round */ }
//!             }
//!         }
//!     });
//!
//!     let reason = shutdown.signal().await?;
//!     let report = shutdown.drain(DEFAULT_DRAIN_TIMEOUT).await;
//!     tracing::info!(%reason, completed = report.completed, abandoned = report.abandoned, "bye");
//!     Ok(())
//! }
//! ```

mod admin;
mod error;
mod every;
mod http;
mod labels;
mod logging;
mod metrics;
mod readiness;
mod shutdown;

pub use admin::{AdminBuilder, AdminState, HEALTHZ_PATH, METRICS_PATH, READYZ_PATH, router};
pub use error::TelemetryError;
pub use every::every;
pub use http::{
    BodyReadError, CLOSE_GRACE, DEFAULT_BODY_READ_TIMEOUT, DEFAULT_HEADER_READ_TIMEOUT,
    HttpMetrics, HttpServer, Latency, LatencyFuture, LatencyLayer, REQUEST_DURATION,
    ReadTimeoutBody, ReadTimeouts, UNMATCHED_ROUTE, health_routes,
};
pub use labels::{
    DEFAULT_IDLE_AFTER, DEFAULT_MAX_SETS, LabelFamily, LabelFamilyBuilder, LabelValue,
    MAX_LABEL_VALUE_LEN, OTHER, cap_label_value, write_escaped_label_value,
};
pub use logging::{
    DEFAULT_FILTER, LOG_FORMAT_VAR, LogConfig, LogFormat, LogTarget, RUST_LOG_VAR, init_from_env,
    init_tracing,
};
pub use metrics::{MetricsRegistry, OPENMETRICS_CONTENT_TYPE};
pub use readiness::{
    CheckResult, CheckStatus, DEFAULT_CHECK_TIMEOUT, Readiness, ReadinessCheck, ReadinessReport,
};
pub use shutdown::{DEFAULT_DRAIN_TIMEOUT, DrainReport, Shutdown, ShutdownReason};

/// The prometheus-client version this crate's registry uses, re-exported so
/// programs create metrics of the same version.
pub use prometheus_client;
/// The cancellation token type [`Shutdown::token`] returns.
pub use tokio_util::sync::CancellationToken;
