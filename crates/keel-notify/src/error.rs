//! Errors: [`NotifyError`] for the notifier, [`SinkError`] for one send, and
//! the small structs inside them.

use std::time::Duration;

use keel_core::{BoxError, ErrorOutcome, Outcome};

/// Everything the notifier itself can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The notifier is shutting down (or shut down) and takes no more
    /// notifications.
    #[error(transparent)]
    Closed(#[from] QueueClosed),
    /// The notification names a sink the notifier does not have.
    #[error(transparent)]
    UnknownSink(#[from] UnknownSink),
    /// Reading or writing the spool file failed.
    #[error("spool file {path}")]
    Spool {
        /// The spool file.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The notifier was built outside a tokio runtime.
    #[error("the notifier must be built inside a tokio runtime")]
    NoRuntime,
}

pub use keel_core::ConfigError;

/// The notifier no longer takes notifications: `shutdown` was called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("notifier is shut down")]
pub struct QueueClosed;

/// A notification was addressed to a sink the notifier does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no sink named `{name}`")]
pub struct UnknownSink {
    /// The name that matched no sink.
    pub name: String,
}

/// Why one send to a sink failed, in the three kinds the queue treats
/// differently (see [`ErrorOutcome`]):
///
/// * [`SinkError::Retryable`] ([`Outcome::Failure`]): a transport error, a
///   timeout, a 5xx. Retried with backoff; while it lasts the sink is paused
///   and its messages stay queued.
/// * [`SinkError::Overloaded`] ([`Outcome::Overloaded`]): the sink asked us to
///   slow down (HTTP 429, Telegram's `retry_after`). Retried after the delay
///   it asked for; a delay above the notifier's cap requeues the message
///   instead of holding a worker.
/// * [`SinkError::Permanent`] ([`Outcome::Neutral`]): the sink rejected this
///   message for good (400, 401, 403: bad request, bad token, bot removed).
///   Logged and counted as dropped, never retried.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// A failure worth retrying.
    #[error("sink unavailable: {message}")]
    Retryable {
        /// What happened, for the log.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// The sink is overloaded; `retry_after` is the delay it asked for.
    #[error("sink overloaded{}", match .retry_after { Some(d) => format!(" (retry after {d:?})"), None => String::new() })]
    Overloaded {
        /// The delay the sink asked for, if it said.
        retry_after: Option<Duration>,
    },
    /// A rejection that retrying cannot fix.
    #[error("sink rejected the message{}: {message}", match .status { Some(s) => format!(" ({s})"), None => String::new() })]
    Permanent {
        /// The status or error code the sink answered, when it has one.
        status: Option<u16>,
        /// What the sink said.
        message: String,
    },
}

impl SinkError {
    /// A retryable failure with a message.
    pub fn retryable(message: impl Into<String>) -> Self {
        SinkError::Retryable {
            message: message.into(),
            source: None,
        }
    }

    /// A retryable failure caused by `source`.
    pub fn retryable_from(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        SinkError::Retryable {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// An overload, with the delay the sink asked for.
    pub fn overloaded(retry_after: Option<Duration>) -> Self {
        SinkError::Overloaded { retry_after }
    }

    /// A permanent rejection.
    pub fn permanent(status: Option<u16>, message: impl Into<String>) -> Self {
        SinkError::Permanent {
            status,
            message: message.into(),
        }
    }

    /// `true` for [`SinkError::Permanent`].
    pub fn is_permanent(&self) -> bool {
        matches!(self, SinkError::Permanent { .. })
    }

    /// The retry-after of an overload.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SinkError::Overloaded { retry_after } => *retry_after,
            _ => None,
        }
    }

    /// A short, stable name of the kind, usable as a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkError::Retryable { .. } => "retryable",
            SinkError::Overloaded { .. } => "overloaded",
            SinkError::Permanent { .. } => "permanent",
        }
    }
}

impl ErrorOutcome for SinkError {
    fn outcome(&self) -> Outcome {
        match self {
            SinkError::Retryable { .. } => Outcome::Failure,
            SinkError::Overloaded { retry_after } => Outcome::Overloaded {
                retry_after: *retry_after,
            },
            SinkError::Permanent { .. } => Outcome::Neutral,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn outcomes_and_display() {
        let e = SinkError::retryable_from("connect", std::io::Error::other("refused"));
        assert_eq!(e.outcome(), Outcome::Failure);
        assert_eq!(e.to_string(), "sink unavailable: connect");
        assert!(e.source().is_some(), "the cause is a source, not repeated");
        let o = SinkError::overloaded(Some(Duration::from_secs(5)));
        assert_eq!(o.outcome(), Outcome::overloaded_for(Duration::from_secs(5)));
        assert_eq!(o.to_string(), "sink overloaded (retry after 5s)");
        assert_eq!(SinkError::overloaded(None).to_string(), "sink overloaded");
        let p = SinkError::permanent(Some(400), "Bad Request: chat not found");
        assert_eq!(p.outcome(), Outcome::Neutral);
        assert!(p.is_permanent() && !p.outcome().is_retryable());
        assert_eq!(
            p.to_string(),
            "sink rejected the message (400): Bad Request: chat not found"
        );
        let c = NotifyError::from(ConfigError::new("workers", "must be at least 1"));
        assert_eq!(c.to_string(), "invalid `workers`: must be at least 1");
    }
}
