//! The HTTP side: `/health` (the status JSON) and `/breakers` (every
//! breaker's state, read-only), next to the `/healthz`,
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
pub fn routes<R: RawApi>(engine: Arc<Engine<R>>) -> Router {
    // The API groups' breakers and the notifier's (one per sink), read-only:
    // forcing them needs an authenticated admin API, which this program
    // does not have yet.
    let breakers = {
        let engine = engine.clone();
        move || {
            let mut all = engine.api().breakers().breakers();
            all.extend(engine.alerts().notifier().breakers());
            all
        }
    };
    Router::new()
        .route(
            HEALTH_PATH,
            get(move || {
                let engine = engine.clone();
                async move { axum::Json(engine.health()) }
            }),
        )
        .merge(keel_telemetry::breaker_routes(Arc::new(breakers), false))
}
