use std::time::Duration;

use keel_core::BoxError;

/// Everything a testkit helper can report. Helpers meant to be called
/// directly from a test (`PgSchema::new`, `Prometheus::start`...) panic with
/// this error's message; the `try_` variants return it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestkitError {
    /// A fault configuration value is out of range.
    #[error("invalid fault configuration: {field} {reason}")]
    InvalidFault {
        /// The field at fault (`error_rate`, `latency`...).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A service's executable is not installed.
    #[error("{service} not found: run `{install}`{detail}")]
    ServiceNotFound {
        /// The executable looked for.
        service: &'static str,
        /// The command that installs it.
        install: &'static str,
        /// Where it was looked for.
        detail: String,
    },
    /// A service that should already be running did not answer.
    #[error("{service} is unreachable at {url}; {hint}")]
    ServiceUnreachable {
        /// The service (`PostgreSQL`, `Redis`).
        service: &'static str,
        /// The URL tried.
        url: String,
        /// How to start it or point the tests elsewhere.
        hint: String,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// A service started as a child process never became ready.
    #[error("{service} did not become ready: {reason}\n--- its output ---\n{output}")]
    ServiceStart {
        /// The service.
        service: &'static str,
        /// What happened (exited with a status, readiness timed out).
        reason: String,
        /// The tail of the process's combined output.
        output: String,
    },
    /// A file-system or process operation failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A query against a real service failed.
    #[error("{service} command failed: {context}")]
    Command {
        /// The service.
        service: &'static str,
        /// What was being done.
        context: String,
        /// The client's error.
        #[source]
        source: BoxError,
    },
}

/// [`crate::FakeControl::wait_for_requests`] and
/// [`crate::FakeControl::wait_until`] gave up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("waited {waited:?} for the fake server's requests; {seen} recorded")]
pub struct WaitTimeout {
    /// How long the helper waited.
    pub waited: Duration,
    /// How many requests had been recorded when it gave up.
    pub seen: usize,
}
