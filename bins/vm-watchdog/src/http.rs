//! The HTTP side: `/health` (the status JSON), `/healthz`, `/readyz` and
//! `/metrics`, on keel-telemetry's admin router.
//!
//! `/metrics` is served here rather than by the admin router because the
//! issue names the metrics without a program prefix (`vm_checks_total`),
//! and keel-telemetry's `MetricsRegistry` always adds one. Every other
//! route is the admin router's.

use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use keel_telemetry::{
    AdminState, MetricsRegistry, OPENMETRICS_CONTENT_TYPE, Shutdown, TelemetryError,
};
use parking_lot::RwLock;
use prometheus_client::registry::Registry;

use crate::api::RawApi;
use crate::engine::Engine;

/// The path of the status JSON.
pub const HEALTH_PATH: &str = "/health";

/// The admin router: `/health` from `engine`, `/metrics` from `registry`,
/// `/healthz` and `/readyz` (503 once `shutdown` is triggered) from
/// keel-telemetry.
///
/// # Errors
/// [`TelemetryError`] when the admin state cannot be built.
pub fn router<R: RawApi>(
    engine: Arc<Engine<R>>,
    registry: Arc<RwLock<Registry>>,
    shutdown: &Shutdown,
) -> Result<Router, TelemetryError> {
    // The admin router needs a registry; ours is served by the route below.
    let unused = MetricsRegistry::new("vm_watchdog")?;
    let state = AdminState::builder(unused)
        .shutdown(shutdown.clone())
        .status(HEALTH_PATH, move || {
            let engine = engine.clone();
            async move { engine.health() }
        })
        .build()?;
    let admin = keel_telemetry::router(state);
    Ok(Router::new()
        .route(
            keel_telemetry::METRICS_PATH,
            get(move || {
                let registry = registry.clone();
                async move { metrics(&registry) }
            }),
        )
        .fallback_service(admin))
}

fn metrics(registry: &RwLock<Registry>) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &registry.read()) {
        Ok(()) => ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], text).into_response(),
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
