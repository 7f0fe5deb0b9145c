//! Publishing targets from a file and from Kubernetes Secrets (issue 19).
//! Skeleton: filled in by the targets work.

use axum::Router;

use crate::http::AppState;

/// `TARGETS_FILE`, `TARGETS_FROM_KUBERNETES`, `TARGETS_NAMESPACE`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TargetArgs {}

impl TargetArgs {
    /// Checks the settings without side effects.
    ///
    /// # Errors
    /// The first invalid variable.
    pub fn validate(&self) -> Result<(), keel_core::ConfigError> {
        Ok(())
    }
}

/// The targets in effect, shared by every request and the publisher.
#[derive(Debug, Clone, Default)]
pub struct Targets {}

/// The routes of this part (`/publishing/targets...`, `/publishing/test/...`).
pub fn routes() -> Router<AppState> {
    Router::new()
}
