//! Sagas: side effects outside the document (cloud calls) as steps with
//! compensations, journaled so a restarted process finishes what it began.

mod executor;
mod model;
mod step;

pub use executor::{ResumeMode, Saga, SagaExecutor, SagaExecutorBuilder};
pub use model::{
    SagaEvent, SagaOptions, SagaPhase, SagaReport, SagaStatus, StepProgress, StepState,
    idempotency_key,
};
pub use step::{CompensationContext, SagaRegistry, Step, StepContext};
