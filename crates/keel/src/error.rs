use std::fmt;
use std::time::Duration;

use keel_breaker::{BulkheadFull, Rejected};
use keel_core::{ErrorOutcome, Outcome};

/// Why a call through a [`Pipeline`](crate::Pipeline) failed.
///
/// `Inner` is the operation's own error (from the last attempt); the other
/// variants say which policy stopped the call.
#[derive(Debug)]
#[non_exhaustive]
pub enum PipelineError<E> {
    /// The operation failed; this is its error from the last attempt.
    Inner(E),
    /// The circuit breaker rejected the last attempt (open, or half-open
    /// with every probe slot taken, or its own bulkhead full).
    Rejected(Rejected),
    /// The rate limiter had no slot before the deadline.
    RateLimited {
        /// How long until the limiter would have admitted the attempt.
        retry_after: Duration,
    },
    /// The pipeline's bulkhead was full (and had no queue, or its queue
    /// was full, or this attempt was shed for a higher-priority one).
    BulkheadFull(BulkheadFull),
    /// The last attempt ran past the per-attempt timeout.
    AttemptTimeout {
        /// The configured per-attempt timeout.
        timeout: Duration,
    },
    /// The overall deadline passed before the call finished.
    DeadlineExceeded {
        /// The configured overall deadline.
        deadline: Duration,
    },
    /// A retry was due, but the shared retry budget refused it.
    RetryBudgetExhausted {
        /// What the last attempt ended with, if it returned an error.
        last: Option<Box<PipelineError<E>>>,
    },
}

impl<E> PipelineError<E> {
    /// The operation's own error, if that is what this is.
    pub fn into_inner(self) -> Option<E> {
        match self {
            PipelineError::Inner(e) => Some(e),
            PipelineError::RetryBudgetExhausted { last: Some(last) } => last.into_inner(),
            _ => None,
        }
    }

    /// A short, stable name of the variant, usable as a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            PipelineError::Inner(_) => "inner",
            PipelineError::Rejected(_) => "circuit_rejected",
            PipelineError::RateLimited { .. } => "rate_limited",
            PipelineError::BulkheadFull(_) => "bulkhead_full",
            PipelineError::AttemptTimeout { .. } => "attempt_timeout",
            PipelineError::DeadlineExceeded { .. } => "deadline_exceeded",
            PipelineError::RetryBudgetExhausted { .. } => "retry_budget_exhausted",
        }
    }
}

impl<E: fmt::Display> fmt::Display for PipelineError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PipelineError::Inner(e) => e.fmt(f),
            PipelineError::Rejected(r) => r.fmt(f),
            PipelineError::RateLimited { retry_after } => {
                write!(f, "rate limited (next slot in {retry_after:?})")
            }
            PipelineError::BulkheadFull(full) => full.fmt(f),
            PipelineError::AttemptTimeout { timeout } => {
                write!(f, "attempt timed out after {timeout:?}")
            }
            PipelineError::DeadlineExceeded { deadline } => {
                write!(f, "deadline of {deadline:?} exceeded")
            }
            PipelineError::RetryBudgetExhausted { .. } => f.write_str("retry budget exhausted"),
        }
    }
}

impl<E> std::error::Error for PipelineError<E>
where
    E: std::error::Error + 'static,
{
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PipelineError::Inner(e) => e.source(),
            PipelineError::Rejected(r) => Some(r),
            PipelineError::BulkheadFull(full) => Some(full),
            PipelineError::RetryBudgetExhausted { last: Some(last) } => Some(last.as_ref()),
            _ => None,
        }
    }
}

impl<E: ErrorOutcome> ErrorOutcome for PipelineError<E> {
    fn outcome(&self) -> Outcome {
        match self {
            PipelineError::Inner(e) => e.outcome(),
            PipelineError::Rejected(r) => r.outcome(),
            PipelineError::RateLimited { retry_after } => Outcome::overloaded_for(*retry_after),
            PipelineError::BulkheadFull(_) | PipelineError::RetryBudgetExhausted { .. } => {
                Outcome::OVERLOADED
            }
            PipelineError::AttemptTimeout { .. } | PipelineError::DeadlineExceeded { .. } => {
                Outcome::Failure
            }
        }
    }
}

pub use keel_core::ConfigError;
