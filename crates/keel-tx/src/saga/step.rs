//! Saga steps: an action, an optional compensation, a retry policy; and the
//! registry a restarted process re-binds them from by name.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use keel_core::{BoxError, Outcome};
use keel_retry::RetryPolicy;
use serde::Serialize;
use serde_json::Value;

type ActionFn =
    Arc<dyn Fn(StepContext) -> BoxFuture<'static, Result<Value, BoxError>> + Send + Sync>;
type CompensationFn =
    Arc<dyn Fn(CompensationContext) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;
type ClassifyFn = Arc<dyn Fn(&BoxError) -> Outcome + Send + Sync>;

/// What a step's action is told.
#[derive(Debug, Clone)]
pub struct StepContext {
    pub(crate) saga_id: Arc<str>,
    pub(crate) step: Arc<str>,
    pub(crate) key: Arc<str>,
    pub(crate) input: Arc<Value>,
    pub(crate) outputs: Arc<BTreeMap<String, Value>>,
    pub(crate) attempt: u32,
}

impl StepContext {
    /// The saga's id.
    pub fn saga_id(&self) -> &str {
        &self.saga_id
    }

    /// This step's name.
    pub fn step(&self) -> &str {
        &self.step
    }

    /// This step's idempotency key (the same in every attempt and after a
    /// restart; see [`idempotency_key`](crate::idempotency_key)): pass it to
    /// the cloud call so that a repeated call does not act twice.
    pub fn idempotency_key(&self) -> &str {
        &self.key
    }

    /// The saga's input.
    pub fn input(&self) -> &Value {
        &self.input
    }

    /// What an earlier step of this saga returned.
    pub fn output_of(&self, step: &str) -> Option<&Value> {
        self.outputs.get(step)
    }

    /// The attempt number (1 for the first call).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

/// What a step's compensation is told.
#[derive(Debug, Clone)]
pub struct CompensationContext {
    pub(crate) saga_id: Arc<str>,
    pub(crate) step: Arc<str>,
    pub(crate) key: Arc<str>,
    pub(crate) input: Arc<Value>,
    pub(crate) output: Arc<Option<Value>>,
    pub(crate) attempt: u32,
}

impl CompensationContext {
    /// The saga's id.
    pub fn saga_id(&self) -> &str {
        &self.saga_id
    }

    /// The step being compensated.
    pub fn step(&self) -> &str {
        &self.step
    }

    /// The step's idempotency key (the one its action was given).
    pub fn idempotency_key(&self) -> &str {
        &self.key
    }

    /// The saga's input.
    pub fn input(&self) -> &Value {
        &self.input
    }

    /// What the step's action returned; `None` when its outcome is unknown
    /// (the process stopped while it ran and the saga was resumed in
    /// [`ResumeMode::Compensate`](crate::ResumeMode::Compensate)), in which
    /// case the compensation must find out what there is to undo, typically
    /// by the idempotency key.
    pub fn output(&self) -> Option<&Value> {
        (*self.output).as_ref()
    }

    /// The attempt number (1 for the first call).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

/// One saga step: a named action with an optional compensation, each run
/// under a [`keel_retry::RetryPolicy`].
///
/// The name is what the journal stores: register the same names after a
/// restart so the executor can re-bind actions to journaled sagas.
#[derive(Clone)]
pub struct Step {
    pub(crate) name: String,
    pub(crate) action: ActionFn,
    pub(crate) compensation: Option<CompensationFn>,
    pub(crate) retry: RetryPolicy,
    pub(crate) compensation_retry: Option<RetryPolicy>,
    pub(crate) classify: Option<ClassifyFn>,
}

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Step")
            .field("name", &self.name)
            .field("compensable", &self.compensation.is_some())
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl Step {
    /// A step named `name` whose action is `action`.
    ///
    /// The action returns anything serializable: it is journaled and handed
    /// to the compensation (and to later steps through
    /// [`StepContext::output_of`]). It runs under
    /// [`RetryPolicy::default`] unless [`Step::retry`] says otherwise.
    pub fn new<F, Fut, T, E>(name: impl Into<String>, action: F) -> Self
    where
        F: Fn(StepContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        T: Serialize,
        E: Into<BoxError>,
    {
        let action: ActionFn = Arc::new(move |ctx| {
            action(ctx)
                .map(|result| match result {
                    Ok(value) => serde_json::to_value(value).map_err(BoxError::from),
                    Err(e) => Err(e.into()),
                })
                .boxed()
        });
        Step {
            name: name.into(),
            action,
            compensation: None,
            retry: RetryPolicy::default(),
            compensation_retry: None,
            classify: None,
        }
    }

    /// The compensation that undoes the action. A step without one counts
    /// as compensated without a call (for read-only steps).
    pub fn compensate<F, Fut, E>(mut self, compensation: F) -> Self
    where
        F: Fn(CompensationContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.compensation = Some(Arc::new(move |ctx| {
            compensation(ctx).map(|r| r.map_err(Into::into)).boxed()
        }));
        self
    }

    /// The retry policy of the action, and of the compensation unless
    /// [`Step::compensation_retry`] sets another.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The retry policy of the compensation.
    pub fn compensation_retry(mut self, policy: RetryPolicy) -> Self {
        self.compensation_retry = Some(policy);
        self
    }

    /// Decides which errors are retried: [`Outcome::Failure`] or
    /// [`Outcome::Overloaded`] retries (honouring a retry-after), anything
    /// else fails the step at once. By default every error is retried.
    pub fn classify(
        mut self,
        classify: impl Fn(&BoxError) -> Outcome + Send + Sync + 'static,
    ) -> Self {
        self.classify = Some(Arc::new(classify));
        self
    }

    /// The step's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn outcome(&self, error: &BoxError) -> Outcome {
        self.classify
            .as_ref()
            .map_or(Outcome::Failure, |c| c(error))
    }

    pub(crate) fn compensation_policy(&self) -> &RetryPolicy {
        self.compensation_retry.as_ref().unwrap_or(&self.retry)
    }
}

/// Steps by name: what a [`SagaExecutor`](crate::SagaExecutor) can run.
#[derive(Debug, Clone, Default)]
pub struct SagaRegistry {
    pub(crate) steps: HashMap<String, Arc<Step>>,
}

impl SagaRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        SagaRegistry::default()
    }

    /// Adds `step` (replacing a step registered earlier under the same name).
    pub fn register(mut self, step: Step) -> Self {
        self.steps.insert(step.name.clone(), Arc::new(step));
        self
    }

    /// The step named `name`.
    pub fn get(&self, name: &str) -> Option<&Step> {
        self.steps.get(name).map(AsRef::as_ref)
    }

    /// Registered step names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.steps.keys().map(String::as_str)
    }
}
