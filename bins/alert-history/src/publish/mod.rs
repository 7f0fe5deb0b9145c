//! The outbox and its publisher (issue 19). Skeleton: filled in by the
//! publishing work.

use axum::Router;

use crate::http::AppState;

/// Publisher settings.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PublishArgs {}

impl PublishArgs {
    /// Checks the settings without side effects.
    ///
    /// # Errors
    /// The first invalid variable.
    pub fn validate(&self) -> Result<(), keel_core::ConfigError> {
        Ok(())
    }
}

/// The routes of this part (`/publishing/stats`, `/webhook/proxy`).
pub fn routes() -> Router<AppState> {
    Router::new()
}
