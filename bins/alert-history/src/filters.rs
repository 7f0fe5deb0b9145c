//! Filter rules and acknowledgements (issue 19). Skeleton: filled in by the
//! filters work.

use axum::Router;

use crate::http::AppState;

/// The filter rules in effect (loaded from the database).
#[derive(Debug, Clone, Default)]
pub struct Filters {}

/// The routes of this part (`/proxy/filters/rules...`, `/alerts/{fp}/ack`).
pub fn routes() -> Router<AppState> {
    Router::new()
}
