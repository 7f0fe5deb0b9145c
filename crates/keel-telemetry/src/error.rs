use std::io;
use std::net::SocketAddr;

/// Everything that can go wrong while setting up or running a program's
/// telemetry.
///
/// Configuration errors name the environment variable or field at fault, so
/// a binary can print the error and exit with code 64 without adding context.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// A configuration value is invalid (a log filter, a metric prefix, a
    /// readiness check name or timeout, a status route); the
    /// [`ConfigError`] names it.
    ///
    /// [`ConfigError`]: keel_core::ConfigError
    #[error("invalid configuration")]
    Config(#[from] keel_core::ConfigError),
    /// A global tracing subscriber is already installed in this process.
    #[error("a global tracing subscriber is already installed")]
    TracingAlreadyInitialized,
    /// A readiness check with this name is already registered.
    #[error("readiness check {name:?} is already registered")]
    DuplicateCheck {
        /// The duplicated name.
        name: String,
    },
    /// An HTTP server could not bind its listening socket.
    #[error("cannot bind the http server to {addr}")]
    Bind {
        /// The requested address.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The HTTP server task panicked or was cancelled.
    #[error("the http server task did not finish cleanly")]
    ServerTask(#[source] tokio::task::JoinError),
    /// Installing a SIGTERM or SIGINT handler failed.
    #[error("cannot install the {signal} handler")]
    Signal {
        /// `SIGTERM` or `SIGINT`.
        signal: &'static str,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
}
