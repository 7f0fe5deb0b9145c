//! The admin routes beside the kit's `/healthz`, `/readyz` and `/metrics`:
//! `GET /metrics.json` (goman's JSON snapshot), `GET /clusters` (what the
//! daemon knows of each cluster) and keel-telemetry's breaker routes
//! (`GET /breakers`, and with `ADMIN_BREAKER_CONTROL` the forcing routes).

use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use keel::breaker::BreakerRegistry;

use crate::daemon::Daemon;
use crate::metrics::Metrics;

/// The routes.
pub fn routes(
    daemon: Daemon,
    metrics: Metrics,
    breakers: BreakerRegistry,
    control: bool,
) -> Router {
    let snapshot = metrics.clone();
    Router::new()
        .route(
            "/metrics.json",
            get(move || async move { Json(snapshot.snapshot()) }),
        )
        .route(
            "/clusters",
            get(move || async move { Json(daemon.clusters()) }),
        )
        .merge(keel_telemetry::breaker_routes(
            Arc::new(move || breakers.breakers()),
            control,
        ))
}
