//! The crate's error enum and the small rejection structs inside it.

use std::fmt;
use std::time::Duration;

use keel_core::BoxError;

use crate::record::{TxId, TxStatus};

/// Everything a `keel-tx` operation can fail with.
///
/// Each rejection that callers are expected to handle is a small struct of
/// its own ([`ResourceBusy`], [`VersionConflict`], ...) so it can be matched
/// here or downcast from a boxed error.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum TxError {
    /// Another transaction holds the resource.
    #[error(transparent)]
    ResourceBusy(#[from] ResourceBusy),
    /// An optimistic write named a version that is no longer current.
    #[error(transparent)]
    VersionConflict(#[from] VersionConflict),
    /// The transaction was already committed or rolled back (for example by
    /// the timeout reaper).
    #[error(transparent)]
    TransactionClosed(#[from] TransactionClosed),
    /// A change named a path that does not fit the document.
    #[error(transparent)]
    InvalidChange(#[from] InvalidChange),
    /// A builder was given an invalid value.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A saga names a step that is not registered.
    #[error(transparent)]
    UnknownStep(#[from] UnknownStep),
    /// A saga definition is invalid, or does not match the journaled saga of
    /// the same id.
    #[error(transparent)]
    InvalidSaga(#[from] InvalidSaga),
    /// A saga with this id is already running in this executor.
    #[error(transparent)]
    SagaInProgress(#[from] SagaInProgress),
    /// The journal could not record or read state.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The external write of [`Transaction::commit_through`] failed; the
    /// transaction was rolled back.
    ///
    /// [`Transaction::commit_through`]: crate::Transaction::commit_through
    #[error(transparent)]
    ExternalWrite(#[from] ExternalWriteFailed),
}

/// Another transaction holds the resource (a `FailFast` begin, a `Wait`
/// begin that timed out, or a `put` during a transaction).
#[derive(Debug, Clone, thiserror::Error)]
#[error("resource {resource:?} is held by another transaction{}", waited_note(*.waited))]
pub struct ResourceBusy {
    /// The resource.
    pub resource: String,
    /// The transaction holding it, when it is held in this process.
    pub holder: Option<TxId>,
    /// How long the caller waited before giving up (zero for `FailFast`).
    pub waited: Duration,
}

fn waited_note(waited: Duration) -> String {
    if waited.is_zero() {
        String::new()
    } else {
        format!(" (waited {waited:?})")
    }
}

/// An optimistic write expected one version and found another.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("resource {resource:?} is at version {actual}, not the expected {expected}")]
pub struct VersionConflict {
    /// The resource.
    pub resource: String,
    /// The version the writer expected.
    pub expected: u64,
    /// The version found (0: the resource does not exist).
    pub actual: u64,
}

/// The transaction is no longer open.
#[derive(Debug, Clone, thiserror::Error)]
#[error("transaction {tx} is no longer open{}", status_note(.status.as_ref()))]
pub struct TransactionClosed {
    /// The transaction.
    pub tx: TxId,
    /// How it ended, when still known.
    pub status: Option<TxStatus>,
}

fn status_note(status: Option<&TxStatus>) -> String {
    match status {
        Some(TxStatus::RolledBack { cause, reason }) => {
            format!(" (rolled back, {cause}: {reason})")
        }
        Some(TxStatus::Committed { version }) => format!(" (committed as version {version})"),
        Some(TxStatus::Open) | None => String::new(),
    }
}

/// Why a change's path was refused.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathProblem {
    /// Not RFC 6901 syntax (must be empty or start with `/`; `~` only as `~0`
    /// or `~1`).
    Syntax,
    /// The parent of the target location does not exist.
    ParentMissing,
    /// The parent is a scalar, not an object or array.
    ParentNotContainer,
    /// An array step is not a decimal index (or `-` when appending).
    BadIndex,
    /// An array index past the end (appending allows exactly the length).
    IndexOutOfRange,
    /// Deleting a location that holds no value.
    NotFound,
    /// Deleting the whole document.
    RemoveRoot,
}

impl fmt::Display for PathProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathProblem::Syntax => "not a JSON Pointer",
            PathProblem::ParentMissing => "parent does not exist",
            PathProblem::ParentNotContainer => "parent is not an object or array",
            PathProblem::BadIndex => "not an array index",
            PathProblem::IndexOutOfRange => "array index out of range",
            PathProblem::NotFound => "no value to delete",
            PathProblem::RemoveRoot => "cannot delete the whole document",
        })
    }
}

/// A change named a path that does not fit the document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid change at {path:?}: {problem}")]
pub struct InvalidChange {
    /// The path as given.
    pub path: String,
    /// What is wrong with it.
    pub problem: PathProblem,
}

impl InvalidChange {
    pub(crate) fn new(path: impl Into<String>, problem: PathProblem) -> Self {
        InvalidChange {
            path: path.into(),
            problem,
        }
    }
}

pub use keel_core::ConfigError;

/// The write to the store of record in
/// [`Transaction::commit_through`](crate::Transaction::commit_through)
/// failed, so the transaction was rolled back (cause
/// [`RollbackCause::ExternalWrite`](crate::RollbackCause::ExternalWrite)) and
/// the document kept its snapshot.
///
/// The write's own error is the [`source`](std::error::Error::source) (or
/// [`into_source`](ExternalWriteFailed::into_source), to downcast it).
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
#[error("external write of resource {resource:?} failed; transaction {tx} rolled back")]
pub struct ExternalWriteFailed {
    resource: String,
    tx: TxId,
    #[source]
    source: BoxError,
}

impl ExternalWriteFailed {
    pub(crate) fn new(resource: impl Into<String>, tx: TxId, source: BoxError) -> Self {
        ExternalWriteFailed {
            resource: resource.into(),
            tx,
            source,
        }
    }

    /// The resource.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The transaction that was rolled back.
    pub fn tx(&self) -> TxId {
        self.tx
    }

    /// The write's error, for downcasting to the store's own error type.
    pub fn into_source(self) -> BoxError {
        self.source
    }
}

/// A saga names a step that is not registered with the executor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("saga step {step:?} is not registered")]
pub struct UnknownStep {
    /// The step name.
    pub step: String,
}

/// A saga definition is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid saga {saga_id:?}: {reason}")]
pub struct InvalidSaga {
    /// The saga.
    pub saga_id: String,
    /// What is wrong.
    pub reason: String,
}

/// A saga with this id is already running in this executor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("saga {saga_id:?} is already running")]
pub struct SagaInProgress {
    /// The saga.
    pub saga_id: String,
}

/// What kind of journal failure happened.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalErrorKind {
    /// Reading or writing the storage failed.
    Io,
    /// A record could not be encoded or decoded.
    Encoding,
    /// Stored data is damaged somewhere other than a torn final record.
    Corrupt,
    /// Another process holds the journal (file journal directory lock).
    Locked,
    /// An earlier write failed; the journal refuses writes until reopened,
    /// because what reached storage is only known after recovery.
    Failed,
    /// A shared backend refused a begin: another process holds the resource.
    ResourceLocked,
    /// A shared backend refused a commit or put: the document's version moved
    /// (another process wrote it).
    VersionMismatch,
    /// A shared backend refused a commit: the transaction is no longer open
    /// there (another process rolled it back during recovery).
    Fenced,
    /// The write was interrupted (runtime shutting down).
    Interrupted,
}

/// A journal failure: what kind, a message, and the underlying error.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct JournalError {
    kind: JournalErrorKind,
    message: String,
    #[source]
    source: Option<BoxError>,
}

impl JournalError {
    /// A journal error of `kind` with `message` and no underlying error.
    pub fn new(kind: JournalErrorKind, message: impl Into<String>) -> Self {
        JournalError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// A journal error of `kind` caused by `source`.
    pub fn with_source(
        kind: JournalErrorKind,
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        JournalError {
            kind,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> JournalErrorKind {
        self.kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn display_does_not_repeat_the_source() {
        let io = std::io::Error::other("disk on fire");
        let err = JournalError::with_source(JournalErrorKind::Io, "journal append failed", io);
        assert_eq!(err.to_string(), "journal append failed");
        assert_eq!(
            err.source().map(ToString::to_string).as_deref(),
            Some("disk on fire")
        );
        let tx_err = TxError::from(err);
        assert_eq!(tx_err.to_string(), "journal append failed");
    }

    #[test]
    fn rejections_render_their_fields() {
        let busy = ResourceBusy {
            resource: "c1".into(),
            holder: None,
            waited: Duration::from_secs(2),
        };
        assert_eq!(
            busy.to_string(),
            "resource \"c1\" is held by another transaction (waited 2s)"
        );
        let conflict = VersionConflict {
            resource: "c1".into(),
            expected: 3,
            actual: 4,
        };
        assert_eq!(
            conflict.to_string(),
            "resource \"c1\" is at version 4, not the expected 3"
        );
        let tx = TxId::new();
        let external = ExternalWriteFailed::new("c1", tx, "precondition failed".into());
        assert_eq!(
            external.to_string(),
            format!("external write of resource \"c1\" failed; transaction {tx} rolled back")
        );
        assert_eq!(
            external.source().map(ToString::to_string).as_deref(),
            Some("precondition failed")
        );
        let config = ConfigError::new("transaction_timeout", "must be greater than zero");
        assert_eq!(
            config.to_string(),
            "invalid `transaction_timeout`: must be greater than zero"
        );
    }
}
