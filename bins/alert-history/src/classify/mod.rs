//! Enrichment modes and LLM classification (issue 19). Skeleton: filled in
//! by the classification work.

use axum::Router;

use crate::http::AppState;

/// `ENRICHMENT_MODE` and the LLM settings.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClassifyArgs {}

impl ClassifyArgs {
    /// Checks the settings without side effects.
    ///
    /// # Errors
    /// The first invalid variable.
    pub fn validate(&self) -> Result<(), keel_core::ConfigError> {
        Ok(())
    }
}

/// The enrichment mode and the classifier, shared by every request.
#[derive(Debug, Clone, Default)]
pub struct Enrichment {}

/// The routes of this part (`/enrichment/...`, `/classification/...`).
pub fn routes() -> Router<AppState> {
    Router::new()
}
