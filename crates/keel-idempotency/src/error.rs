//! Errors: the crate's [`IdempotencyError`] enum, the rejection structs callers match
//! on, and [`ExecuteError`], which adds the operation's own error.

use std::fmt;
use std::time::Duration;

use keel_core::{BoxError, ErrorOutcome, Outcome};

use crate::key::IdempotencyKey;

/// Everything that can go wrong in this crate, apart from the operation's own
/// error (see [`ExecuteError`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdempotencyError {
    /// The key is held by a running operation and the call chose not to wait
    /// (or waited past its limit).
    #[error(transparent)]
    InFlight(#[from] RequestInFlight),
    /// The key was used before with a different request fingerprint.
    #[error(transparent)]
    FingerprintMismatch(#[from] FingerprintMismatch),
    /// The store could not be reached or answered something unexpected.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A result could not be serialized for storage, or a stored result could
    /// not be deserialized (for instance after its type changed).
    #[error("stored idempotency result could not be encoded or decoded")]
    Codec(#[source] serde_json::Error),
    /// A configuration value is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl ErrorOutcome for IdempotencyError {
    /// An in-flight rejection is an overload (try again after the holder's
    /// lease), a mismatch or a configuration problem is the caller's own
    /// (neutral), a store or codec failure counts as a failure.
    fn outcome(&self) -> Outcome {
        match self {
            IdempotencyError::InFlight(e) => e.outcome(),
            IdempotencyError::FingerprintMismatch(_) | IdempotencyError::Config(_) => {
                Outcome::Neutral
            }
            IdempotencyError::Store(_) | IdempotencyError::Codec(_) => Outcome::Failure,
        }
    }
}

/// Another call holds the key and is still running.
///
/// Returned when a call rejects instead of waiting, or when a waiting call
/// reached its wait limit. HTTP: 409 Conflict.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a request with idempotency key {key} is still in flight")]
pub struct RequestInFlight {
    /// The contended key.
    pub key: IdempotencyKey,
    /// How long the holder's lease still runs, when the store said: a retry
    /// before then will most likely be rejected again.
    pub retry_after: Option<Duration>,
    /// `true` when this call waited for the holder and gave up at its limit.
    pub waited: bool,
}

impl ErrorOutcome for RequestInFlight {
    fn outcome(&self) -> Outcome {
        Outcome::Overloaded {
            retry_after: self.retry_after,
        }
    }
}

/// The key was used before with a different request fingerprint: the client
/// reused a key for a different request. HTTP: 422 Unprocessable Content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("idempotency key {key} was already used for a different request")]
pub struct FingerprintMismatch {
    /// The reused key.
    pub key: IdempotencyKey,
}

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
#[error("idempotency store ({backend}) failed during {operation}")]
pub struct StoreError {
    /// The backend: `"memory"`, `"redis"`, `"postgres"`, or a custom name.
    pub backend: &'static str,
    /// The store operation: `"begin"`, `"finish"`, `"renew"`...
    pub operation: &'static str,
    #[source]
    source: BoxError,
}

impl StoreError {
    /// A failure of `operation` in `backend`, caused by `source`.
    pub fn new(
        backend: &'static str,
        operation: &'static str,
        source: impl Into<BoxError>,
    ) -> Self {
        StoreError {
            backend,
            operation,
            source: source.into(),
        }
    }
}

pub use keel_core::ConfigError;

/// A ready-made operation error that can be stored and replayed: its
/// message, with the messages of its sources after `": "`.
///
/// [`Idempotency`](crate::Idempotency) stores an operation's error as well
/// as its value (a non-retryable failure is replayed to later callers), so
/// the error must serialize. Most errors do not (`std::io::Error`,
/// `reqwest::Error`, a boxed error): return this instead. `?` converts
/// `std::io::Error`, [`BoxError`], `String` and `&str`;
/// [`from_error`](Self::from_error) takes any other error.
///
/// ```
/// use keel_idempotency::{Fingerprint, Idempotency, IdempotencyKey, StoredError};
///
/// async fn read_config(path: &str) -> Result<String, StoredError> {
///     Ok(std::fs::read_to_string(path)?) // io::Error -> StoredError
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let idem = Idempotency::new();
/// let key = IdempotencyKey::new("read-config", &"/no/such/file").unwrap();
/// let err = idem
///     .execute(&key, &Fingerprint::empty(), || read_config("/no/such/file"))
///     .await
///     .unwrap_err();
/// let stored = err.into_operation().unwrap();
/// assert!(stored.message().contains("No such file"), "{stored}");
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct StoredError {
    message: String,
}

impl StoredError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        StoredError {
            message: message.into(),
        }
    }

    /// `error`'s message followed by its sources' (`"a: b: c"`).
    pub fn from_error(error: &(dyn std::error::Error + 'static)) -> Self {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(e) = source {
            message.push_str(": ");
            message.push_str(&e.to_string());
            source = e.source();
        }
        StoredError { message }
    }

    /// The stored message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<std::io::Error> for StoredError {
    fn from(error: std::io::Error) -> Self {
        StoredError::from_error(&error)
    }
}

impl From<BoxError> for StoredError {
    fn from(error: BoxError) -> Self {
        StoredError::from_error(&*error)
    }
}

impl From<String> for StoredError {
    fn from(message: String) -> Self {
        StoredError::new(message)
    }
}

impl From<&str> for StoredError {
    fn from(message: &str) -> Self {
        StoredError::new(message)
    }
}

/// A string that is not the 64-character hex form of a SHA-256 digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected 64 hex characters for a SHA-256 digest, got {len} characters")]
pub struct InvalidDigest {
    /// The length of the rejected string.
    pub len: usize,
}

/// The error of [`Call::run`](crate::Call::run) and
/// [`Idempotency::execute`](crate::Idempotency::execute): either the
/// operation's own error (run now, or replayed from the store), or an
/// idempotency [`IdempotencyError`].
#[non_exhaustive]
pub enum ExecuteError<E> {
    /// The operation failed with `E`: in this call, or in an earlier call
    /// whose non-retryable failure was stored and is replayed now.
    Operation(E),
    /// The idempotency machinery refused or failed.
    Idempotency(IdempotencyError),
}

impl<E> ExecuteError<E> {
    /// The operation's error, if that is what this is.
    pub fn into_operation(self) -> Option<E> {
        match self {
            ExecuteError::Operation(e) => Some(e),
            ExecuteError::Idempotency(_) => None,
        }
    }

    /// The idempotency error, if that is what this is.
    pub fn as_idempotency(&self) -> Option<&IdempotencyError> {
        match self {
            ExecuteError::Idempotency(e) => Some(e),
            ExecuteError::Operation(_) => None,
        }
    }

    /// The in-flight rejection, if that is what this is.
    pub fn as_in_flight(&self) -> Option<&RequestInFlight> {
        match self {
            ExecuteError::Idempotency(IdempotencyError::InFlight(e)) => Some(e),
            _ => None,
        }
    }

    /// The fingerprint mismatch, if that is what this is.
    pub fn as_fingerprint_mismatch(&self) -> Option<&FingerprintMismatch> {
        match self {
            ExecuteError::Idempotency(IdempotencyError::FingerprintMismatch(e)) => Some(e),
            _ => None,
        }
    }
}

impl<E> From<IdempotencyError> for ExecuteError<E> {
    fn from(e: IdempotencyError) -> Self {
        ExecuteError::Idempotency(e)
    }
}

impl<E: fmt::Debug> fmt::Debug for ExecuteError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecuteError::Operation(e) => f.debug_tuple("Operation").field(e).finish(),
            ExecuteError::Idempotency(e) => f.debug_tuple("Idempotency").field(e).finish(),
        }
    }
}

impl<E> fmt::Display for ExecuteError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The operation's error is the source; do not repeat it.
            ExecuteError::Operation(_) => f.write_str("idempotent operation failed"),
            ExecuteError::Idempotency(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for ExecuteError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ExecuteError::Operation(e) => Some(e),
            // Transparent: same source as the inner error.
            ExecuteError::Idempotency(e) => e.source(),
        }
    }
}

impl<E: ErrorOutcome> ErrorOutcome for ExecuteError<E> {
    fn outcome(&self) -> Outcome {
        match self {
            ExecuteError::Operation(e) => e.outcome(),
            ExecuteError::Idempotency(e) => e.outcome(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn display_does_not_repeat_source() {
        let e = StoreError::new("redis", "begin", "connection refused");
        assert_eq!(
            e.to_string(),
            "idempotency store (redis) failed during begin"
        );
        assert_eq!(e.source().unwrap().to_string(), "connection refused");
        let wrapped = IdempotencyError::from(e);
        assert!(!wrapped.to_string().contains("refused"));

        #[derive(Debug, thiserror::Error)]
        #[error("boom")]
        struct Boom;
        let op: ExecuteError<Boom> = ExecuteError::Operation(Boom);
        assert_eq!(op.to_string(), "idempotent operation failed");
        assert_eq!(op.source().unwrap().to_string(), "boom");
    }

    #[test]
    fn outcomes() {
        let key = IdempotencyKey::from_digest([0; 32]);
        let busy = IdempotencyError::from(RequestInFlight {
            key,
            retry_after: Some(Duration::from_secs(2)),
            waited: false,
        });
        assert_eq!(
            busy.outcome(),
            Outcome::overloaded_for(Duration::from_secs(2))
        );
        assert_eq!(
            IdempotencyError::from(FingerprintMismatch { key }).outcome(),
            Outcome::Neutral
        );
        assert!(
            IdempotencyError::from(StoreError::new("memory", "begin", "x"))
                .outcome()
                .is_retryable()
        );
    }
}
