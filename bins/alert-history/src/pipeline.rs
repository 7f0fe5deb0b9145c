//! Ingest as a list of stages around the store's commit ([`IngestStages`];
//! named apart from `keel::Pipeline`, the policy pipeline of the core).
//!
//! A delivery goes through every stage's [`Stage::before_store`] in order
//! (they may rewrite, enrich or drop events, or refuse the delivery), then
//! the store commits it in one transaction, then every stage's
//! [`Stage::after_commit`] runs (metrics today; classification and
//! publishing can be added as stages without touching the HTTP layer).

use std::sync::Arc;

use futures::future::BoxFuture;
use thiserror::Error;

use crate::metrics::Metrics;
use crate::model::NewEvent;
use crate::store::{IngestOutcome, Store};

/// One delivery on its way through the pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    /// The alerts, validated and normalised.
    pub events: Vec<NewEvent>,
    /// Alerts in the delivery as received (stages may drop some events).
    pub received: usize,
    /// When the delivery arrived, epoch ms.
    pub received_at_ms: i64,
}

/// A stage refused a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("ingest stage {stage} refused the delivery: {reason}")]
pub struct StageError {
    /// The stage's name.
    pub stage: &'static str,
    /// Why.
    pub reason: String,
}

/// Why a delivery was not stored.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum IngestError {
    /// A stage refused it.
    #[error(transparent)]
    Stage(#[from] StageError),
    /// The database failed; nothing was committed.
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

/// One step of ingest. Both hooks default to doing nothing.
pub trait Stage: Send + Sync + 'static {
    /// A short name for logs and errors.
    fn name(&self) -> &'static str;

    /// Runs before the commit; an error aborts the delivery (nothing is
    /// stored, the sender gets a 5xx and retries).
    fn before_store<'a>(
        &'a self,
        batch: &'a mut Incoming,
    ) -> BoxFuture<'a, Result<(), StageError>> {
        let _ = batch;
        Box::pin(async { Ok(()) })
    }

    /// Runs after a successful commit; it cannot fail the delivery.
    fn after_commit<'a>(
        &'a self,
        batch: &'a Incoming,
        outcome: IngestOutcome,
    ) -> BoxFuture<'a, ()> {
        let _ = (batch, outcome);
        Box::pin(async {})
    }
}

/// Counts received alerts and newly stored events.
#[derive(Debug, Clone)]
pub struct RecordMetrics(pub Metrics);

impl Stage for RecordMetrics {
    fn name(&self) -> &'static str {
        "metrics"
    }

    fn after_commit<'a>(
        &'a self,
        batch: &'a Incoming,
        outcome: IngestOutcome,
    ) -> BoxFuture<'a, ()> {
        self.0.record_events(&batch.events);
        self.0.add_db_alerts(outcome.saved as i64);
        Box::pin(async {})
    }
}

/// The ordered stages of ingest.
#[derive(Clone, Default)]
pub struct IngestStages {
    stages: Vec<Arc<dyn Stage>>,
}

impl std::fmt::Debug for IngestStages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.stages.iter().map(|s| s.name()))
            .finish()
    }
}

impl IngestStages {
    /// No stages: validate, store, answer.
    pub fn new() -> Self {
        IngestStages::default()
    }

    /// Appends a stage.
    #[must_use]
    pub fn stage(mut self, stage: impl Stage) -> Self {
        self.stages.push(Arc::new(stage));
        self
    }

    /// The stage names, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.stages.iter().map(|s| s.name()).collect()
    }

    /// Runs the stages and the commit.
    ///
    /// # Errors
    /// [`IngestError::Stage`] when a stage refuses, [`IngestError::Database`]
    /// when the commit fails.
    pub async fn run(
        &self,
        store: &Store,
        mut batch: Incoming,
    ) -> Result<IngestOutcome, IngestError> {
        for stage in &self.stages {
            stage.before_store(&mut batch).await?;
        }
        let mut outcome = store.ingest(&batch.events, batch.received_at_ms).await?;
        outcome.processed = batch.received as u64;
        for stage in &self.stages {
            stage.after_commit(&batch, outcome).await;
        }
        Ok(outcome)
    }
}
