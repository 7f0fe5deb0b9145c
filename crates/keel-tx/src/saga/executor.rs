//! Runs sagas, journaling every step, and resumes them after a restart.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use chrono::Utc;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use keel_core::{BoxError, Outcome};
use keel_retry::RetryError;
use parking_lot::Mutex;
use serde_json::Value;

use super::model::{SagaEvent, SagaOptions, SagaPhase, SagaReport, SagaStatus, StepState};
use super::step::{CompensationContext, SagaRegistry, Step, StepContext};
use crate::error::{InvalidSaga, SagaInProgress, TxError, UnknownStep};
use crate::journal::{Durability, Journal};
use crate::metrics::Hooks;
use crate::record::Record;
use crate::state::JournalState;

/// What a restarted process does with a saga whose step was running when
/// the previous process stopped (its outcome is unknown).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ResumeMode {
    /// Run the step again with the same idempotency key and carry on
    /// forward (default): right when actions are idempotent by their key.
    #[default]
    Continue,
    /// Give up on the saga: compensate the completed steps and the uncertain
    /// one (its compensation gets no output and must find out by the
    /// idempotency key what there is to undo).
    Compensate,
}

/// A saga to run: an id, registered step names in order, an input and
/// compensation options.
#[derive(Debug, Clone)]
pub struct Saga {
    id: String,
    steps: Vec<String>,
    input: Value,
    options: SagaOptions,
}

impl Saga {
    /// A saga with id `id` (unique for good: running a finished saga's id
    /// again returns its journaled report without running anything).
    pub fn new(id: impl Into<String>) -> Self {
        Saga {
            id: id.into(),
            steps: Vec::new(),
            input: Value::Null,
            options: SagaOptions::default(),
        }
    }

    /// Appends the registered step `name`.
    pub fn step(mut self, name: impl Into<String>) -> Self {
        self.steps.push(name.into());
        self
    }

    /// The input every step sees ([`StepContext::input`]).
    pub fn input(mut self, input: Value) -> Self {
        self.input = input;
        self
    }

    /// Compensate all completed steps at once instead of in reverse order.
    pub fn parallel_compensation(mut self, parallel: bool) -> Self {
        self.options.parallel_compensation = parallel;
        self
    }

    /// Keep compensating after a compensation failed (and report it).
    pub fn continue_on_compensation_failure(mut self, keep_going: bool) -> Self {
        self.options.continue_on_compensation_failure = keep_going;
        self
    }

    /// The saga id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Builds a [`SagaExecutor`]; see [`SagaExecutor::builder`].
pub struct SagaExecutorBuilder {
    journal: Arc<dyn Journal>,
    registry: SagaRegistry,
    resume: ResumeMode,
    hooks: Hooks,
}

impl std::fmt::Debug for SagaExecutorBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaExecutorBuilder")
            .field("registry", &self.registry)
            .field("resume", &self.resume)
            .finish_non_exhaustive()
    }
}

impl SagaExecutorBuilder {
    /// What to do with a step that was running when the previous process
    /// stopped (default [`ResumeMode::Continue`]).
    pub fn resume_mode(mut self, mode: ResumeMode) -> Self {
        self.resume = mode;
        self
    }

    /// Counts saga steps and compensations in `metrics` (feature `metrics`).
    #[cfg(feature = "metrics")]
    pub fn metrics(mut self, metrics: crate::TxMetrics) -> Self {
        self.hooks = Hooks::new(metrics);
        self
    }

    /// Loads the journaled sagas. Unfinished ones wait for
    /// [`SagaExecutor::recover`] (or a `run` with the same id).
    pub async fn open(self) -> Result<SagaExecutor, TxError> {
        let mut state = self.journal.load().await?;
        // Documents and transactions are the manager's business.
        state.documents.clear();
        state.open.clear();
        state.history.clear();
        Ok(SagaExecutor {
            inner: Arc::new(Inner {
                journal: self.journal,
                registry: self.registry,
                resume: self.resume,
                hooks: self.hooks,
                state: Mutex::new(state),
                running: Mutex::new(HashSet::new()),
            }),
        })
    }
}

/// Runs sagas: steps forward, each under its retry policy with its
/// idempotency key; on a failed step, the completed steps' compensations in
/// reverse order (or all at once); every transition journaled durably
/// before the next action, so a restarted process resumes instead of
/// forgetting.
///
/// Cloning shares the executor. Open one executor per journal: like the
/// transaction manager, it assumes no other live process runs its sagas.
/// Dropping a `run` future is like a crash: the saga stays unfinished in the
/// journal and the next `run` of its id (or [`recover`](Self::recover))
/// resumes it.
///
/// Cost: two durable journal appends per step (started, completed), three
/// per compensation with its final status; the steps themselves are usually
/// cloud calls that take far longer.
#[derive(Clone)]
pub struct SagaExecutor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SagaExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaExecutor")
            .field("resume", &self.inner.resume)
            .finish_non_exhaustive()
    }
}

struct Inner {
    journal: Arc<dyn Journal>,
    registry: SagaRegistry,
    resume: ResumeMode,
    hooks: Hooks,
    state: Mutex<JournalState>,
    running: Mutex<HashSet<String>>,
}

/// Removes a saga id from the running set when its run ends or is dropped.
struct RunningGuard {
    inner: Arc<Inner>,
    saga_id: String,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.inner.running.lock().remove(&self.saga_id);
    }
}

impl SagaExecutor {
    /// A builder over `journal` with the steps in `registry`.
    pub fn builder(journal: Arc<dyn Journal>, registry: SagaRegistry) -> SagaExecutorBuilder {
        SagaExecutorBuilder {
            journal,
            registry,
            resume: ResumeMode::default(),
            hooks: Hooks::default(),
        }
    }

    /// Runs `saga` to its end and returns its report: completed,
    /// compensated, or compensation failed (see [`SagaReport::status`]).
    /// A step failing is not an `Err`: errors are for an invalid saga, a
    /// saga already running, and journal failures.
    ///
    /// If the journal already has this saga id: a finished saga's report is
    /// returned as is; an unfinished one (left by a previous process) is
    /// resumed, provided it has the same steps.
    pub async fn run(&self, saga: Saga) -> Result<SagaReport, TxError> {
        self.validate(&saga)?;
        let _guard = self.enter(&saga.id)?;
        let existing = self.inner.state.lock().sagas.get(&saga.id).cloned();
        match existing {
            Some(report) => {
                let journaled: Vec<&str> = report.steps.iter().map(|s| s.name.as_str()).collect();
                if journaled != saga.steps.iter().map(String::as_str).collect::<Vec<_>>() {
                    return Err(InvalidSaga {
                        saga_id: saga.id,
                        reason: format!("the journal has this saga with steps {journaled:?}"),
                    }
                    .into());
                }
                if report.is_finished() {
                    return Ok(report);
                }
                tracing::info!(saga = %saga.id, "resuming a journaled saga");
            }
            None => {
                self.inner
                    .record(
                        &saga.id,
                        SagaEvent::Started {
                            steps: saga.steps.clone(),
                            input: saga.input,
                            options: saga.options,
                        },
                    )
                    .await?;
            }
        }
        self.inner.drive(&saga.id).await
    }

    /// Resumes every unfinished saga in the journal (concurrently) and
    /// returns their reports. A saga with a step that is no longer
    /// registered fails the whole call with [`TxError::UnknownStep`] before
    /// anything runs.
    pub async fn recover(&self) -> Result<Vec<SagaReport>, TxError> {
        let pending: Vec<SagaReport> = self
            .inner
            .state
            .lock()
            .sagas
            .values()
            .filter(|s| !s.is_finished())
            .cloned()
            .collect();
        for report in &pending {
            for step in &report.steps {
                if self.inner.registry.get(&step.name).is_none() {
                    return Err(UnknownStep {
                        step: step.name.clone(),
                    }
                    .into());
                }
            }
        }
        let runs = pending.into_iter().map(|report| async move {
            let _guard = self.enter(&report.saga_id)?;
            tracing::info!(saga = %report.saga_id, phase = ?report.phase, "resuming a saga after restart");
            self.inner.drive(&report.saga_id).await
        });
        futures::future::join_all(runs).await.into_iter().collect()
    }

    /// The report of saga `saga_id`, if the journal has it.
    pub fn report(&self, saga_id: &str) -> Option<SagaReport> {
        self.inner.state.lock().sagas.get(saga_id).cloned()
    }

    /// Ids of the sagas the journal has unfinished.
    pub fn unfinished(&self) -> Vec<String> {
        self.inner
            .state
            .lock()
            .sagas
            .values()
            .filter(|s| !s.is_finished())
            .map(|s| s.saga_id.clone())
            .collect()
    }

    fn validate(&self, saga: &Saga) -> Result<(), TxError> {
        if saga.id.is_empty() {
            return Err(InvalidSaga {
                saga_id: saga.id.clone(),
                reason: "the id is empty".into(),
            }
            .into());
        }
        if saga.steps.is_empty() {
            return Err(InvalidSaga {
                saga_id: saga.id.clone(),
                reason: "it has no steps".into(),
            }
            .into());
        }
        let mut seen = HashSet::new();
        for step in &saga.steps {
            if !seen.insert(step.as_str()) {
                return Err(InvalidSaga {
                    saga_id: saga.id.clone(),
                    reason: format!(
                        "step {step:?} appears twice (it would share an idempotency key)"
                    ),
                }
                .into());
            }
            if self.inner.registry.get(step).is_none() {
                return Err(UnknownStep { step: step.clone() }.into());
            }
        }
        Ok(())
    }

    fn enter(&self, saga_id: &str) -> Result<RunningGuard, TxError> {
        if !self.inner.running.lock().insert(saga_id.to_owned()) {
            return Err(SagaInProgress {
                saga_id: saga_id.to_owned(),
            }
            .into());
        }
        Ok(RunningGuard {
            inner: self.inner.clone(),
            saga_id: saga_id.to_owned(),
        })
    }
}

/// The error text of `error` followed by its sources.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

fn retry_failure(error: RetryError<BoxError>) -> (String, u32) {
    let attempts = error.attempts();
    let text = match error.last_error() {
        Some(last) => error_chain(last.as_ref()),
        None => error.to_string(),
    };
    (text, attempts)
}

impl Inner {
    async fn record(&self, saga_id: &str, event: SagaEvent) -> Result<(), TxError> {
        self.record_with(saga_id, event, Durability::Durable).await
    }

    async fn record_with(
        &self,
        saga_id: &str,
        event: SagaEvent,
        durability: Durability,
    ) -> Result<(), TxError> {
        let records = [Record::Saga {
            saga_id: saga_id.to_owned(),
            at: Utc::now(),
            event,
        }];
        self.journal.append(&records, durability).await?;
        let [record] = records;
        self.state.lock().apply(record);
        Ok(())
    }

    fn snapshot(&self, saga_id: &str) -> SagaReport {
        self.state
            .lock()
            .sagas
            .get(saga_id)
            .cloned()
            .expect("a saga being driven is in the state until it finishes")
    }

    fn step(&self, name: &str) -> Result<Arc<Step>, TxError> {
        self.registry.steps.get(name).cloned().ok_or_else(|| {
            UnknownStep {
                step: name.to_owned(),
            }
            .into()
        })
    }

    /// Moves the saga forward (or backward) until it is finished.
    async fn drive(&self, saga_id: &str) -> Result<SagaReport, TxError> {
        loop {
            let report = self.snapshot(saga_id);
            match &report.phase {
                SagaPhase::Finished { .. } => return Ok(report),
                SagaPhase::Compensating { .. } => {
                    let status = self.compensate(&report).await?;
                    self.record(saga_id, SagaEvent::Finished { status }).await?;
                    let report = self.snapshot(saga_id);
                    tracing::info!(saga = %saga_id, status = ?status, compensated = ?report.compensated_steps(), "saga finished after compensation");
                    return Ok(report);
                }
                SagaPhase::Running => {
                    let next = report
                        .steps
                        .iter()
                        .position(|s| s.state != StepState::Completed);
                    let Some(index) = next else {
                        self.record(
                            saga_id,
                            SagaEvent::Finished {
                                status: SagaStatus::Completed,
                            },
                        )
                        .await?;
                        tracing::info!(saga = %saga_id, "saga completed");
                        continue;
                    };
                    let step = &report.steps[index];
                    match step.state {
                        StepState::Running if self.resume == ResumeMode::Compensate => {
                            let reason = format!(
                                "resumed after a restart while step {:?} was running; compensating",
                                step.name
                            );
                            self.record(saga_id, SagaEvent::Aborted { reason }).await?;
                        }
                        StepState::Pending | StepState::Running => {
                            self.run_step(&report, index).await?;
                        }
                        _ => {
                            // A failure recorded just before the process stopped.
                            let reason = format!("step {:?} failed", step.name);
                            self.record(saga_id, SagaEvent::Aborted { reason }).await?;
                        }
                    }
                }
            }
        }
    }

    async fn run_step(&self, report: &SagaReport, index: usize) -> Result<(), TxError> {
        let progress = &report.steps[index];
        let step = self.step(&progress.name)?;
        let saga_id = report.saga_id.as_str();
        self.record(
            saga_id,
            SagaEvent::StepStarted {
                index,
                key: progress.idempotency_key.clone(),
            },
        )
        .await?;
        let outputs: BTreeMap<String, Value> = report
            .steps
            .iter()
            .filter_map(|s| s.output.clone().map(|o| (s.name.clone(), o)))
            .collect();
        let base = StepContext {
            saga_id: saga_id.into(),
            step: progress.name.as_str().into(),
            key: progress.idempotency_key.as_str().into(),
            input: Arc::new(report.input.clone()),
            outputs: Arc::new(outputs),
            attempt: 1,
        };
        let classify = |result: &Result<Value, BoxError>| match result {
            Ok(_) => Outcome::Success,
            Err(e) => step.outcome(e),
        };
        let mut attempts = 0;
        let result = step
            .retry
            .retry_classified(&classify, |attempt| {
                attempts = attempt.number;
                let mut ctx = base.clone();
                ctx.attempt = attempt.number;
                (step.action)(ctx)
            })
            .await;
        match result {
            Ok(output) => {
                self.hooks.saga_step(true);
                tracing::debug!(saga = %saga_id, step = %progress.name, attempts, "saga step completed");
                self.record(
                    saga_id,
                    SagaEvent::StepCompleted {
                        index,
                        output,
                        attempts,
                    },
                )
                .await
            }
            Err(error) => {
                self.hooks.saga_step(false);
                let (error, attempts) = retry_failure(error);
                tracing::warn!(saga = %saga_id, step = %progress.name, attempts, error = %error, "saga step failed; compensating");
                self.record(
                    saga_id,
                    SagaEvent::StepFailed {
                        index,
                        error: error.clone(),
                        attempts,
                    },
                )
                .await?;
                let reason = format!("step {:?} failed: {error}", progress.name);
                self.record(saga_id, SagaEvent::Aborted { reason }).await
            }
        }
    }

    /// Compensates what needs it and returns the final status.
    async fn compensate(&self, report: &SagaReport) -> Result<SagaStatus, TxError> {
        let saga_id = report.saga_id.as_str();
        // Reverse order of the steps: the last completed is undone first.
        let todo: Vec<usize> = (0..report.steps.len())
            .rev()
            .filter(|&i| {
                matches!(
                    report.steps[i].state,
                    StepState::Completed | StepState::Running | StepState::Compensating
                )
            })
            .collect();
        let mut failed = report
            .steps
            .iter()
            .any(|s| s.state == StepState::CompensationFailed);
        if report.options.parallel_compensation {
            for &index in &todo {
                self.record_with(
                    saga_id,
                    SagaEvent::CompensationStarted { index },
                    Durability::Buffered,
                )
                .await?;
            }
            let mut running: FuturesUnordered<_> = todo
                .iter()
                .map(|&index| async move { (index, self.compensate_step(report, index).await) })
                .collect();
            while let Some((index, result)) = running.next().await {
                failed |= !self
                    .record_compensation(saga_id, &report.steps[index].name, index, result?)
                    .await?;
            }
        } else {
            for &index in &todo {
                if failed && !report.options.continue_on_compensation_failure {
                    tracing::warn!(saga = %saga_id, step = %report.steps[index].name, "not compensating after an earlier compensation failed");
                    continue;
                }
                self.record_with(
                    saga_id,
                    SagaEvent::CompensationStarted { index },
                    Durability::Buffered,
                )
                .await?;
                let result = self.compensate_step(report, index).await?;
                failed |= !self
                    .record_compensation(saga_id, &report.steps[index].name, index, result)
                    .await?;
            }
        }
        let pending = self.snapshot(saga_id).steps.iter().any(|s| {
            matches!(
                s.state,
                StepState::Completed | StepState::Running | StepState::Compensating
            )
        });
        Ok(if failed || pending {
            SagaStatus::CompensationFailed
        } else {
            SagaStatus::Compensated
        })
    }

    /// Runs one compensation under its retry policy: `Ok(attempts)` or
    /// `Err((error, attempts))`.
    async fn compensate_step(
        &self,
        report: &SagaReport,
        index: usize,
    ) -> Result<Result<u32, (String, u32)>, TxError> {
        let progress = &report.steps[index];
        let step = self.step(&progress.name)?;
        let Some(compensation) = step.compensation.clone() else {
            return Ok(Ok(0));
        };
        let base = CompensationContext {
            saga_id: report.saga_id.as_str().into(),
            step: progress.name.as_str().into(),
            key: progress.idempotency_key.as_str().into(),
            input: Arc::new(report.input.clone()),
            output: Arc::new(progress.output.clone()),
            attempt: 1,
        };
        let classify = |result: &Result<(), BoxError>| match result {
            Ok(()) => Outcome::Success,
            Err(e) => step.outcome(e),
        };
        let mut attempts = 0;
        let result = step
            .compensation_policy()
            .retry_classified(&classify, |attempt| {
                attempts = attempt.number;
                let mut ctx = base.clone();
                ctx.attempt = attempt.number;
                compensation(ctx)
            })
            .await;
        Ok(match result {
            Ok(()) => Ok(attempts),
            Err(error) => Err(retry_failure(error)),
        })
    }

    /// Journals a compensation's result; returns whether it succeeded.
    async fn record_compensation(
        &self,
        saga_id: &str,
        name: &str,
        index: usize,
        result: Result<u32, (String, u32)>,
    ) -> Result<bool, TxError> {
        match result {
            Ok(attempts) => {
                self.hooks.compensation(true);
                tracing::debug!(saga = %saga_id, step = %name, attempts, "step compensated");
                self.record(saga_id, SagaEvent::Compensated { index, attempts })
                    .await?;
                Ok(true)
            }
            Err((error, attempts)) => {
                self.hooks.compensation(false);
                tracing::error!(saga = %saga_id, step = %name, attempts, error = %error, "compensation failed");
                self.record(
                    saga_id,
                    SagaEvent::CompensationFailed {
                        index,
                        error,
                        attempts,
                    },
                )
                .await?;
                Ok(false)
            }
        }
    }
}
