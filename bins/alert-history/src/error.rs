//! The service's errors.

use thiserror::Error;

/// Everything that can go wrong in alert-history.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is invalid; its field is the environment
    /// variable to fix.
    #[error("invalid configuration")]
    Config(#[from] keel_core::ConfigError),
    /// The database could not be opened at start: `target` is the SQLite
    /// path or the PostgreSQL host, port and database of `DATABASE_URL`.
    #[error("cannot open the database {target} (DATABASE_URL): {reason}")]
    Open {
        /// The path, or `host:port/database`.
        target: String,
        /// What failed.
        reason: String,
    },
    /// A webhook body was rejected.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// A query parameter was rejected.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// The database failed.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Binding or serving HTTP failed.
    #[error("cannot serve HTTP on {addr} (LISTEN_ADDR): {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// Telemetry setup failed (or the HTTP server).
    #[error("telemetry setup failed")]
    Telemetry(#[from] keel_telemetry::TelemetryError),
}

/// A webhook body that cannot be stored.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// Not JSON (HTTP 400).
    #[error("malformed JSON: {reason}")]
    Malformed {
        /// The parser's message.
        reason: String,
    },
    /// JSON of the wrong shape (HTTP 422).
    #[error("invalid field {field}: {reason}")]
    Invalid {
        /// The path of the offending field, e.g. `alerts[0].startsAt`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A rejected query parameter (HTTP 422).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid query parameter {param}: {reason}")]
pub struct QueryError {
    /// The parameter's name.
    pub param: String,
    /// What is wrong with it.
    pub reason: String,
}

impl QueryError {
    pub(crate) fn new(param: &str, reason: impl Into<String>) -> Self {
        QueryError {
            param: param.to_owned(),
            reason: reason.into(),
        }
    }
}
