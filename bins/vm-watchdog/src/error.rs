//! Errors: one enum for the program, small structs for each failure callers
//! match on.

use std::path::PathBuf;
use std::time::Duration;

use keel_core::{ErrorOutcome, Outcome};

/// Everything that can stop the watchdog from starting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Invalid configuration: the [`ConfigError`] names the variable
    /// (`keel_telemetry::run` finds it in the source chain: exit code 64).
    #[error("invalid configuration")]
    Config(#[from] ConfigError),
    /// The notifier could not start.
    #[error("cannot start the notifier")]
    Notify(#[source] keel_notify::NotifyError),
    /// Telemetry (admin server, metrics) could not start.
    #[error("cannot start telemetry")]
    Telemetry(#[source] keel_telemetry::TelemetryError),
    /// The file watcher or another OS resource failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The one configuration error of the workspace: `field()` is the
/// environment variable at fault.
pub use keel_core::ConfigError;

/// `vms.yaml` cannot be used: unreadable, not YAML of the expected shape
/// (with line and column), or semantically invalid (naming the entry).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct VmsFileError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong, precisely enough to fix it.
    pub reason: String,
}

/// A cloud API call failed (one attempt, or the last one after retries).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The API answered with an error status and (usually) a gRPC-style
    /// body `{"code", "message"}`.
    #[error("{endpoint}: HTTP {status}{}: {message}", code.map(|c| format!(" (code {c})")).unwrap_or_default())]
    Status {
        /// The endpoint (a bounded label: `instances.get`...).
        endpoint: &'static str,
        /// The HTTP status.
        status: u16,
        /// The gRPC code from the body, if any.
        code: Option<i64>,
        /// The message from the body (or the body itself).
        message: String,
        /// `Retry-After`, if the answer carried one.
        retry_after: Option<Duration>,
    },
    /// No answer: connection refused or reset, timeout.
    #[error("{endpoint}: request failed")]
    Transport {
        /// The endpoint.
        endpoint: &'static str,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The answer could not be understood.
    #[error("{endpoint}: unexpected answer: {message}")]
    Decode {
        /// The endpoint.
        endpoint: &'static str,
        /// What was wrong.
        message: String,
    },
    /// No IAM token could be obtained.
    #[error("no IAM token")]
    Token(#[source] TokenError),
}

impl VmsFileError {
    /// The same problem as a configuration error of `VMS_CONFIG` (exit code
    /// 64 at start and under `--check-config`).
    pub fn into_config_error(self) -> ConfigError {
        ConfigError::new("VMS_CONFIG", self.to_string())
    }
}

impl ApiError {
    /// The endpoint label of this error (`iam` for token failures).
    pub fn endpoint(&self) -> &'static str {
        match self {
            ApiError::Status { endpoint, .. }
            | ApiError::Transport { endpoint, .. }
            | ApiError::Decode { endpoint, .. } => endpoint,
            ApiError::Token(_) => "iam",
        }
    }

    /// `true` for a 404: the VM (or operation) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ApiError::Status { status: 404, .. })
    }

    /// `true` for FAILED_PRECONDITION (gRPC code 9), which `:start` and the
    /// proxy's `/start` answer when the VM is already running.
    pub fn is_failed_precondition(&self) -> bool {
        matches!(self, ApiError::Status { code: Some(9), .. })
    }
}

impl ErrorOutcome for ApiError {
    /// 5xx, 408, transport, decode and token failures are failures (retried,
    /// counted by the breaker); 429 is an overload with its retry-after; a
    /// 404 or another 4xx is neutral: final, and no sign that the API is
    /// unhealthy.
    fn outcome(&self) -> Outcome {
        match self {
            ApiError::Status {
                status: 429,
                retry_after,
                ..
            } => Outcome::Overloaded {
                retry_after: *retry_after,
            },
            ApiError::Status { status, .. } if *status >= 500 || *status == 408 => Outcome::Failure,
            ApiError::Status { .. } => Outcome::Neutral,
            ApiError::Transport { .. } | ApiError::Decode { .. } | ApiError::Token(_) => {
                Outcome::Failure
            }
        }
    }
}

/// An IAM token could not be obtained.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct TokenError {
    /// `iam` (OAuth exchange) or `metadata`.
    pub source_name: &'static str,
    /// What went wrong.
    pub message: String,
    /// The HTTP status of the answer that refused a token (`Some(401)`
    /// for a rejected OAuth token), `None` without an answer.
    pub status: Option<u16>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16, code: Option<i64>) -> ApiError {
        ApiError::Status {
            endpoint: "instances.get",
            status,
            code,
            message: "m".into(),
            retry_after: Some(Duration::from_secs(3)),
        }
    }

    #[test]
    fn outcomes_decide_retries_and_breaker_counting() {
        assert_eq!(status(503, Some(14)).outcome(), Outcome::Failure);
        assert_eq!(status(408, None).outcome(), Outcome::Failure);
        assert_eq!(
            status(429, Some(8)).outcome(),
            Outcome::Overloaded {
                retry_after: Some(Duration::from_secs(3))
            }
        );
        assert_eq!(status(404, Some(5)).outcome(), Outcome::Neutral);
        assert_eq!(status(401, Some(16)).outcome(), Outcome::Neutral);
        assert!(status(404, Some(5)).is_not_found());
        assert!(status(409, Some(9)).is_failed_precondition());
        assert_eq!(
            status(409, Some(9)).to_string(),
            "instances.get: HTTP 409 (code 9): m"
        );
    }
}
