//! The program kit: what every Keel binary starts from, so its `main.rs`
//! is a few lines and its behaviour at start and stop is the same as every
//! other's.
//!
//! Use it in programs only (a library must not install a subscriber, bind
//! ports or decide exit codes):
//!
//! * [`run`] is the whole `main`: the clap configuration (blank variables
//!   count as unset), exit 64 naming the variable on invalid configuration
//!   (from a typed [`ConfigError`] or clap's own error, never from message
//!   text), `--check-config` ([`Program::check`], helpers in [`check`]),
//!   logging from the flattened [`LogArgs`] (`RUST_LOG`, `LOG_LEVEL`, `LOG_FORMAT`), the
//!   runtime, the admin server, SIGTERM/SIGINT and the bounded drain. The
//!   exit codes are documented in one place: [`Exit`].
//! * [`HttpServer`] serves an axum router with header and body read
//!   timeouts ([`ReadTimeouts`], 10 s / 30 s) and a drain no stalled client
//!   can hold; [`HttpMetrics`] is the request-latency middleware labelled by
//!   route template; [`health_routes`] are `/healthz` and `/readyz` for a
//!   program's own port.
//! * [`LabelFamily`] bounds a metric's label sets (at most N, the rest under
//!   `other`, idle sets give their slot back) and, like [`LabelValue`],
//!   caps and escapes label values, which prometheus-client does not.
//! * [`every`] is the periodic-task loop.
//! * One metrics idiom: libraries register short names on the registry they
//!   are given (`register(&mut Registry)`); the program chooses the prefix
//!   ([`Program::metrics_prefix`], [`MetricsRegistry`]).
//!
//! A whole program (`no_run`: it serves until SIGTERM):
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use std::process::ExitCode;
//! use std::time::Duration;
//!
//! use clap::Parser;
//! use keel_telemetry::prometheus_client::metrics::counter::Counter;
//! use keel_telemetry::{ConfigError, KitArgs, Program, every};
//!
//! /// Counts to infinity, once a minute.
//! #[derive(Debug, Parser)]
//! #[command(name = "counter", version)]
//! struct Config {
//!     /// Where `/healthz`, `/readyz` and `/metrics` are served.
//!     #[arg(long, env = "ADMIN_ADDR", default_value = "127.0.0.1:9090")]
//!     admin_addr: SocketAddr,
//!     /// Seconds between two counts.
//!     #[arg(long, env = "PERIOD", default_value_t = 60)]
//!     period: u64,
//!     #[command(flatten)]
//!     kit: KitArgs,
//! }
//!
//! impl Program for Config {
//!     fn kit_args(&self) -> &KitArgs {
//!         &self.kit
//!     }
//!     fn validate(&self) -> Result<(), ConfigError> {
//!         if self.period == 0 {
//!             return Err(ConfigError::new("PERIOD", "must be at least 1"));
//!         }
//!         Ok(())
//!     }
//!     fn admin_addr(&self) -> Option<SocketAddr> {
//!         Some(self.admin_addr)
//!     }
//! }
//!
//! fn main() -> ExitCode {
//!     keel_telemetry::run(|config: Config, kit| async move {
//!         let counts = Counter::<u64>::default();
//!         // Served as `counter_counts_total`.
//!         kit.metrics().register_with(|r| r.register("counts", "Counts", counts.clone()));
//!         let period = Duration::from_secs(config.period);
//!         kit.shutdown().spawn(every(period, kit.token(), move || {
//!             counts.inc();
//!             async {}
//!         }));
//!         kit.stopping().await;
//!         Ok::<_, ConfigError>(())
//!     })
//! }
//! ```
//!
//! The admin router alone, tested without a socket:
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

mod admin;
mod breakers;
pub mod check;
mod error;
mod hangup;
mod http;
mod labels;
mod logging;
mod metrics;
mod readiness;
mod run;
mod shutdown;

pub use admin::{
    AdminBuilder, AdminState, HEALTHZ_PATH, METRICS_PATH, READYZ_PATH, metrics_route, router,
};
pub use breakers::{BreakerSource, breaker_routes};
pub use error::TelemetryError;
pub use hangup::{HangupReceiver, Hangups};
pub use http::{
    BodyReadError, CLOSE_GRACE, DEFAULT_BODY_READ_TIMEOUT, DEFAULT_HEADER_READ_TIMEOUT,
    HttpMetrics, HttpServer, Latency, LatencyFuture, LatencyLayer, REQUEST_DURATION,
    ReadTimeoutBody, ReadTimeouts, UNMATCHED_ROUTE, health_routes, liveness_route, readiness_route,
};
/// The periodic-task loop (keel-core's, re-exported for programs).
pub use keel_core::every;
pub use labels::{
    DEFAULT_IDLE_AFTER, DEFAULT_MAX_SETS, LabelFamily, LabelFamilyBuilder, LabelValue,
    MAX_LABEL_VALUE_LEN, OTHER, cap_label_value, write_escaped_label_value,
};
pub use logging::{
    DEFAULT_FILTER, LOG_FORMAT_VAR, LOG_LEVEL_VAR, LogArgs, LogConfig, LogFormat, LogLevel,
    LogTarget, RUST_LOG_VAR,
};
pub use metrics::{MetricsRegistry, OPENMETRICS_CONTENT_TYPE};
pub use readiness::{
    CheckResult, CheckStatus, DEFAULT_CHECK_TIMEOUT, Readiness, ReadinessCheck, ReadinessReport,
};
pub use run::{Exit, Kit, KitArgs, KitBuilder, Program, run};
pub use shutdown::{DEFAULT_DRAIN_TIMEOUT, DrainReport, Shutdown, ShutdownReason};

/// The one configuration error of every Keel crate; [`run`] exits 64 on it.
pub use keel_core::ConfigError;
/// The prometheus-client version this crate's registry uses, re-exported so
/// programs create metrics of the same version.
pub use prometheus_client;
/// The cancellation token type [`Shutdown::token`] returns.
pub use tokio_util::sync::CancellationToken;
