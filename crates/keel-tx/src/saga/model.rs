//! Saga progress as journaled: events, per-step state and the report they
//! fold into.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The idempotency key of `step` in saga `saga_id`: the lowercase hex
/// SHA-256 of the saga id, a NUL byte and the step name (the separator keeps
/// `("ab", "c")` and `("a", "bc")` apart).
///
/// The same saga step always gets the same key, in every attempt and after
/// a restart, so a cloud call that accepts a client token (EC2
/// `ClientToken`, an `Idempotency-Key` header) runs at most once.
pub fn idempotency_key(saga_id: &str, step: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(saga_id.as_bytes());
    hasher.update([0u8]);
    hasher.update(step.as_bytes());
    hex::encode(hasher.finalize())
}

/// How a saga compensates; journaled with the saga so a restarted process
/// compensates the same way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaOptions {
    /// Run the compensations of all completed steps at once instead of one
    /// by one in reverse order (default `false`).
    pub parallel_compensation: bool,
    /// Keep compensating the remaining steps after a compensation failed
    /// (default `false`: stop at the first failure and leave the rest for an
    /// operator, who sees them in the report).
    pub continue_on_compensation_failure: bool,
}

/// One journaled step of a saga's progress.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SagaEvent {
    /// The saga started with these steps, input and options.
    Started {
        /// Registered step names, in order.
        steps: Vec<String>,
        /// The saga's input, handed to every step.
        input: Value,
        /// How it compensates.
        options: SagaOptions,
    },
    /// A step's action is about to run (its outcome is unknown until a
    /// completed or failed event follows).
    StepStarted {
        /// The step's position.
        index: usize,
        /// Its idempotency key.
        key: String,
    },
    /// A step's action succeeded.
    StepCompleted {
        /// The step's position.
        index: usize,
        /// What the action returned (handed to its compensation).
        output: Value,
        /// Attempts it took.
        attempts: u32,
    },
    /// A step's action failed after its retries.
    StepFailed {
        /// The step's position.
        index: usize,
        /// The error, with its sources.
        error: String,
        /// Attempts it took.
        attempts: u32,
    },
    /// The saga stopped going forward and compensates from now on.
    Aborted {
        /// Why.
        reason: String,
    },
    /// A step's compensation is about to run.
    CompensationStarted {
        /// The step's position.
        index: usize,
    },
    /// A step's compensation succeeded (`attempts` 0: the step has none).
    Compensated {
        /// The step's position.
        index: usize,
        /// Attempts it took.
        attempts: u32,
    },
    /// A step's compensation failed after its retries.
    CompensationFailed {
        /// The step's position.
        index: usize,
        /// The error, with its sources.
        error: String,
        /// Attempts it took.
        attempts: u32,
    },
    /// The saga ended.
    Finished {
        /// How.
        status: SagaStatus,
    },
}

/// Where one step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Not started.
    Pending,
    /// The action started; its outcome is not recorded (it is running, or
    /// the process stopped while it ran).
    Running,
    /// The action succeeded.
    Completed,
    /// The action failed (a failed step is not compensated: it reported
    /// that it did nothing).
    Failed,
    /// The compensation started; its outcome is not recorded.
    Compensating,
    /// The compensation succeeded.
    Compensated,
    /// The compensation failed after its retries.
    CompensationFailed,
}

/// How a saga ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaStatus {
    /// Every step completed.
    Completed,
    /// A step failed (or the saga was abandoned) and every completed step was
    /// compensated.
    Compensated,
    /// A step failed and at least one compensation failed or was not run:
    /// an operator must look at the steps still `Completed` or
    /// `CompensationFailed`.
    CompensationFailed,
}

/// Whether a saga is going forward, compensating or done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum SagaPhase {
    /// Running steps forward.
    Running,
    /// Compensating completed steps.
    Compensating {
        /// Why the saga aborted.
        reason: String,
    },
    /// Done.
    Finished {
        /// How it ended.
        status: SagaStatus,
    },
}

/// One step's progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepProgress {
    /// The registered step name.
    pub name: String,
    /// Its idempotency key ([`idempotency_key`]).
    pub idempotency_key: String,
    /// Where it stands.
    pub state: StepState,
    /// What its action returned.
    pub output: Option<Value>,
    /// Why its action failed.
    pub error: Option<String>,
    /// Attempts its action took.
    pub attempts: u32,
    /// Why its compensation failed.
    pub compensation_error: Option<String>,
    /// Attempts its compensation took.
    pub compensation_attempts: u32,
}

/// A saga's progress: what is journaled, and what `run` and `recover`
/// return.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaReport {
    /// The saga id.
    pub saga_id: String,
    /// Its input.
    pub input: Value,
    /// Its compensation options.
    pub options: SagaOptions,
    /// Its steps, in order.
    pub steps: Vec<StepProgress>,
    /// Where it stands.
    pub phase: SagaPhase,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it last progressed.
    pub updated_at: DateTime<Utc>,
    /// Step positions in the order their compensations finished.
    pub compensation_order: Vec<usize>,
}

impl SagaReport {
    pub(crate) fn started(
        saga_id: String,
        steps: Vec<String>,
        input: Value,
        options: SagaOptions,
        at: DateTime<Utc>,
    ) -> Self {
        let steps = steps
            .into_iter()
            .map(|name| StepProgress {
                idempotency_key: idempotency_key(&saga_id, &name),
                name,
                state: StepState::Pending,
                output: None,
                error: None,
                attempts: 0,
                compensation_error: None,
                compensation_attempts: 0,
            })
            .collect();
        SagaReport {
            saga_id,
            input,
            options,
            steps,
            phase: SagaPhase::Running,
            started_at: at,
            updated_at: at,
            compensation_order: Vec::new(),
        }
    }

    /// `true` once the saga ended.
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, SagaPhase::Finished { .. })
    }

    /// How it ended, once it did.
    pub fn status(&self) -> Option<SagaStatus> {
        match self.phase {
            SagaPhase::Finished { status } => Some(status),
            _ => None,
        }
    }

    /// `true` if every step completed.
    pub fn is_completed(&self) -> bool {
        self.status() == Some(SagaStatus::Completed)
    }

    /// The output of the step named `step`, if it completed.
    pub fn output(&self, step: &str) -> Option<&Value> {
        self.steps
            .iter()
            .find(|s| s.name == step)
            .and_then(|s| s.output.as_ref())
    }

    /// Names of the steps in the order their compensations finished.
    pub fn compensated_steps(&self) -> Vec<&str> {
        self.compensation_order
            .iter()
            .filter_map(|&i| self.steps.get(i).map(|s| s.name.as_str()))
            .collect()
    }

    pub(crate) fn apply(&mut self, event: SagaEvent, at: DateTime<Utc>) {
        self.updated_at = at;
        match event {
            SagaEvent::Started { .. } => {}
            SagaEvent::StepStarted { index, .. } => {
                if let Some(step) = self.steps.get_mut(index) {
                    step.state = StepState::Running;
                }
            }
            SagaEvent::StepCompleted {
                index,
                output,
                attempts,
            } => {
                if let Some(step) = self.steps.get_mut(index) {
                    step.state = StepState::Completed;
                    step.output = Some(output);
                    step.error = None;
                    step.attempts = attempts;
                }
            }
            SagaEvent::StepFailed {
                index,
                error,
                attempts,
            } => {
                if let Some(step) = self.steps.get_mut(index) {
                    step.state = StepState::Failed;
                    step.error = Some(error);
                    step.attempts = attempts;
                }
            }
            SagaEvent::Aborted { reason } => {
                if !self.is_finished() {
                    self.phase = SagaPhase::Compensating { reason };
                }
            }
            SagaEvent::CompensationStarted { index } => {
                if let Some(step) = self.steps.get_mut(index) {
                    step.state = StepState::Compensating;
                }
            }
            SagaEvent::Compensated { index, attempts } => {
                if let Some(step) = self.steps.get_mut(index) {
                    step.state = StepState::Compensated;
                    step.compensation_error = None;
                    step.compensation_attempts = attempts;
                    self.compensation_order.push(index);
                }
            }
            SagaEvent::CompensationFailed {
                index,
                error,
                attempts,
            } => {
                if let Some(step) = self.steps.get_mut(index) {
                    step.state = StepState::CompensationFailed;
                    step.compensation_error = Some(error);
                    step.compensation_attempts = attempts;
                }
            }
            SagaEvent::Finished { status } => self.phase = SagaPhase::Finished { status },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_key_is_sha256_of_id_nul_step() {
        // printf 'saga-1\0create_vpc' | sha256sum
        assert_eq!(
            idempotency_key("saga-1", "create_vpc"),
            "36366e692accbe51c5b86007a1aa95a4f34a560fda61c73f94b649518a521f9e"
        );
        let key = idempotency_key("saga-1", "create_vpc");
        assert_eq!(key.len(), 64);
        assert!(
            key.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(key, idempotency_key("saga-1", "create_vpc"), "stable");
        assert_ne!(idempotency_key("ab", "c"), idempotency_key("a", "bc"));
        assert_ne!(key, idempotency_key("saga-2", "create_vpc"));
    }
}
