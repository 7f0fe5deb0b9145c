//! The HTTP side: `/health` (the status JSON), `/healthz`, `/readyz` and
//! `/metrics`, all served by keel-telemetry's admin router.
//!
//! The issue names the metrics without a program prefix
//! (`vm_checks_total`), so the program's registry is a
//! [`MetricsRegistry::unprefixed`] one; keel-notify's metrics go into it
//! under the `vm_watchdog_notify_` sub-prefix.

use std::sync::Arc;

use axum::Router;
use keel_telemetry::{AdminState, MetricsRegistry, Shutdown, TelemetryError};

use crate::api::RawApi;
use crate::engine::Engine;

/// The path of the status JSON.
pub const HEALTH_PATH: &str = "/health";

/// The admin router: `/health` from `engine`, `/metrics` from `metrics`,
/// `/healthz` and `/readyz` (503 once `shutdown` is triggered), all from
/// keel-telemetry.
///
/// # Errors
/// [`TelemetryError`] when the admin state cannot be built.
pub fn router<R: RawApi>(
    engine: Arc<Engine<R>>,
    metrics: MetricsRegistry,
    shutdown: &Shutdown,
) -> Result<Router, TelemetryError> {
    let state = AdminState::builder(metrics)
        .shutdown(shutdown.clone())
        .status(HEALTH_PATH, move || {
            let engine = engine.clone();
            async move { engine.health() }
        })
        .build()?;
    Ok(keel_telemetry::router(state))
}
