//! Errors: the per-item [`ExecError`], its small leaf structs, and the
//! builders' [`ConfigError`].

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use keel_breaker::BulkheadFull;
use keel_core::{ErrorOutcome, Outcome};

use crate::report::Status;

/// Why one item did not produce a value.
///
/// Every item of a run ends in exactly one [`Status`]; [`ExecError::status`]
/// says which one an error counts as. The leaf structs ([`ItemTimedOut`],
/// [`DeadlineExceeded`], [`Cancelled`], [`Panicked`], [`BatchFailed`], and
/// keel-breaker's [`BulkheadFull`]) can be matched directly or, once the
/// error is boxed, downcast.
///
/// An operation run through a `keel::Pipeline` (`keel::exec::through`) has
/// `keel::PipelineError<E>` as its error: a breaker rejection, a rate
/// limit or an attempt timeout inside the pipeline is then a
/// [`Failed`](ExecError::Failed) item whose error says which policy
/// stopped it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecError<E> {
    /// The operation returned this error. Counts as [`Status::Failed`].
    #[error("operation failed")]
    Failed(#[source] E),
    /// The whole batch this item belonged to failed; every item of the batch
    /// shares the error. Counts as [`Status::Failed`].
    #[error(transparent)]
    BatchFailed(BatchFailed<E>),
    /// The operation panicked; the panic was caught and stayed with this
    /// item. Counts as [`Status::Failed`].
    #[error(transparent)]
    Panicked(Panicked),
    /// A bulkhead shared with other code refused the item (full without a
    /// queue, or the item's wait was shed for a higher priority) while none
    /// of the run's items were running; the operation did not run. Counts
    /// as [`Status::Failed`].
    #[error(transparent)]
    Rejected(BulkheadFull),
    /// The per-item (or per-batch) timeout elapsed. Counts as
    /// [`Status::TimedOut`].
    #[error(transparent)]
    TimedOut(ItemTimedOut),
    /// The run's overall timeout elapsed while this item was running; it was
    /// cancelled. Counts as [`Status::TimedOut`].
    #[error(transparent)]
    DeadlineExceeded(DeadlineExceeded),
    /// The item was cancelled (shutdown), or never started because the run
    /// stopped first. Counts as [`Status::Cancelled`].
    #[error(transparent)]
    Cancelled(Cancelled),
}

impl<E> ExecError<E> {
    /// The status this error counts as in a report.
    pub const fn status(&self) -> Status {
        match self {
            ExecError::Failed(_)
            | ExecError::BatchFailed(_)
            | ExecError::Panicked(_)
            | ExecError::Rejected(_) => Status::Failed,
            ExecError::TimedOut(_) | ExecError::DeadlineExceeded(_) => Status::TimedOut,
            ExecError::Cancelled(_) => Status::Cancelled,
        }
    }

    /// The operation's own error, for [`ExecError::Failed`] and
    /// [`ExecError::BatchFailed`].
    pub fn inner(&self) -> Option<&E> {
        match self {
            ExecError::Failed(e) => Some(e),
            ExecError::BatchFailed(b) => Some(b.error()),
            _ => None,
        }
    }

    /// The operation's own error by value, for [`ExecError::Failed`].
    pub fn into_inner(self) -> Option<E> {
        match self {
            ExecError::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// `true` when the operation panicked.
    pub const fn is_panic(&self) -> bool {
        matches!(self, ExecError::Panicked(_))
    }

    /// `true` for a per-item timeout or the overall deadline.
    pub const fn is_timeout(&self) -> bool {
        matches!(
            self,
            ExecError::TimedOut(_) | ExecError::DeadlineExceeded(_)
        )
    }

    /// `true` when the item was cancelled or never started.
    pub const fn is_cancelled(&self) -> bool {
        matches!(self, ExecError::Cancelled(_))
    }
}

/// What an item's error means for reliability: timeouts and panics are
/// failures, cancellation is neutral, a bulkhead refusal is an overload, and
/// the operation's own error says its own outcome.
impl<E: ErrorOutcome> ErrorOutcome for ExecError<E> {
    fn outcome(&self) -> Outcome {
        match self {
            ExecError::Failed(e) => e.outcome(),
            ExecError::BatchFailed(b) => b.error().outcome(),
            ExecError::Rejected(r) => r.outcome(),
            ExecError::Panicked(_) | ExecError::TimedOut(_) | ExecError::DeadlineExceeded(_) => {
                Outcome::Failure
            }
            ExecError::Cancelled(_) => Outcome::Neutral,
        }
    }
}

/// The per-item (or per-batch) timeout elapsed before the operation finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("timed out after {after:?}")]
#[non_exhaustive]
pub struct ItemTimedOut {
    /// The timeout that elapsed.
    pub after: Duration,
}

/// The run's overall timeout elapsed while the item was still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("overall timeout of {after:?} elapsed while the item was running")]
#[non_exhaustive]
pub struct DeadlineExceeded {
    /// The overall timeout of the run.
    pub after: Duration,
}

/// Why a run stopped before every item finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StopReason {
    /// The shutdown token was cancelled.
    Shutdown,
    /// The overall timeout elapsed.
    Deadline,
}

impl StopReason {
    /// A short, stable, lowercase name (a bounded metric label).
    pub const fn as_str(&self) -> &'static str {
        match self {
            StopReason::Shutdown => "shutdown",
            StopReason::Deadline => "deadline",
        }
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The item was cancelled while running, or never started because the run
/// stopped first. Items that never started were never passed to the
/// operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", match (.started, .reason) {
    (true, StopReason::Shutdown) => "cancelled by shutdown while running",
    (false, StopReason::Shutdown) => "not started: cancelled by shutdown",
    (_, StopReason::Deadline) => "not started: overall timeout elapsed",
})]
#[non_exhaustive]
pub struct Cancelled {
    /// Whether the operation had been started for this item.
    pub started: bool,
    /// What stopped the run.
    pub reason: StopReason,
}

/// The operation panicked. The panic was caught and became this item's
/// failure; the other items and the caller were unaffected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("operation panicked: {message}")]
#[non_exhaustive]
pub struct Panicked {
    /// The panic message, when the payload was a string.
    pub message: String,
}

impl Panicked {
    pub(crate) fn from_payload(payload: Box<dyn Any + Send>) -> Self {
        let message = match payload.downcast::<String>() {
            Ok(s) => *s,
            Err(payload) => match payload.downcast::<&'static str>() {
                Ok(s) => (*s).to_owned(),
                Err(_) => "<non-string panic payload>".to_owned(),
            },
        };
        Panicked { message }
    }
}

/// The batch operation for this item's batch failed as a whole; every item of
/// that batch carries the same shared error.
#[derive(Debug, thiserror::Error)]
#[error("batch {batch} ({size} items) failed")]
#[non_exhaustive]
pub struct BatchFailed<E> {
    /// The batch's position (0-based) in the run.
    pub batch: usize,
    /// How many items the batch held.
    pub size: usize,
    #[source]
    error: Arc<E>,
}

impl<E> BatchFailed<E> {
    pub(crate) fn new(batch: usize, size: usize, error: Arc<E>) -> Self {
        BatchFailed { batch, size, error }
    }

    /// The batch operation's error.
    pub fn error(&self) -> &E {
        &self.error
    }

    /// The shared batch error (cheap to clone).
    pub fn shared_error(&self) -> Arc<E> {
        Arc::clone(&self.error)
    }
}

impl<E> Clone for BatchFailed<E> {
    fn clone(&self) -> Self {
        BatchFailed {
            batch: self.batch,
            size: self.size,
            error: Arc::clone(&self.error),
        }
    }
}

pub use keel_core::ConfigError;

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[derive(Debug, thiserror::Error)]
    #[error("boom")]
    struct Boom;

    #[test]
    fn display_does_not_repeat_the_source() {
        let e: ExecError<Boom> = ExecError::Failed(Boom);
        assert_eq!(e.to_string(), "operation failed");
        assert_eq!(e.source().map(|s| s.to_string()), Some("boom".into()));
        let b: ExecError<Boom> = ExecError::BatchFailed(BatchFailed::new(2, 10, Arc::new(Boom)));
        assert_eq!(b.to_string(), "batch 2 (10 items) failed");
        assert_eq!(b.source().map(|s| s.to_string()), Some("boom".into()));
        assert_eq!(b.status(), Status::Failed);
        assert!(b.inner().is_some());
    }

    #[test]
    fn statuses_and_outcomes() {
        struct Flaky;
        impl ErrorOutcome for Flaky {
            fn outcome(&self) -> Outcome {
                Outcome::Neutral
            }
        }
        let t: ExecError<Flaky> = ExecError::TimedOut(ItemTimedOut {
            after: Duration::from_secs(1),
        });
        assert_eq!(t.status(), Status::TimedOut);
        assert_eq!(t.outcome(), Outcome::Failure);
        let c: ExecError<Flaky> = ExecError::Cancelled(Cancelled {
            started: true,
            reason: StopReason::Shutdown,
        });
        assert_eq!(c.status(), Status::Cancelled);
        assert_eq!(c.outcome(), Outcome::Neutral);
        assert_eq!(c.to_string(), "cancelled by shutdown while running");
        assert_eq!(ExecError::Failed(Flaky).outcome(), Outcome::Neutral);
    }

    #[test]
    fn panic_payloads() {
        assert_eq!(Panicked::from_payload(Box::new("static")).message, "static");
        assert_eq!(
            Panicked::from_payload(Box::new(String::from("owned"))).message,
            "owned"
        );
        assert_eq!(
            Panicked::from_payload(Box::new(42_u8)).message,
            "<non-string panic payload>"
        );
    }
}
