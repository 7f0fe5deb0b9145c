//! The HTTP side: `/health` (the status JSON) and the admin API
//! ([`crate::admin`]: `/vms`, `/breakers`, operator actions), next to the `/healthz`,
//! `/readyz` and `/metrics` that keel-telemetry's admin server serves.
//!
//! The issue names the metrics without a program prefix
//! (`vm_checks_total`), so the program's registry is an unprefixed one;
//! keel-notify's metrics go into it under the `vm_watchdog_notify_`
//! sub-prefix.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;

use crate::api::RawApi;
use crate::engine::Engine;

/// The path of the status JSON.
pub const HEALTH_PATH: &str = "/health";

/// The watchdog's own admin routes: `/health` from `engine`. They are
/// served by the kit's admin server (`Kit::set_admin_routes`) once the
/// engine exists.
///
/// The admin API ([`crate::admin`]: `/vms`, `/breakers`, operator
/// actions behind `admin_token`) is merged in.
pub fn routes<R: RawApi>(engine: Arc<Engine<R>>, admin_token: Option<String>) -> Router {
    let admin = crate::admin::routes(engine.clone(), admin_token);
    Router::new()
        .route(
            HEALTH_PATH,
            get(move || {
                let engine = engine.clone();
                async move { axum::Json(engine.health()) }
            }),
        )
        .merge(admin)
}
