//! Serving the admin router on a socket with graceful shutdown.

use std::net::SocketAddr;

use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::{Shutdown, TelemetryError};

/// A running admin HTTP server.
///
/// It stops accepting connections as soon as the [`Shutdown`] it was started
/// with is triggered, lets in-flight requests finish (axum's
/// `with_graceful_shutdown`), and runs as tracked work, so
/// [`Shutdown::drain`] waits for it within its bound.
#[derive(Debug)]
pub struct AdminServer {
    local_addr: SocketAddr,
    task: JoinHandle<Result<(), TelemetryError>>,
}

impl AdminServer {
    /// Binds `addr` (use port 0 for a free one) and starts serving `app`.
    ///
    /// # Errors
    /// [`TelemetryError::Bind`] when the address cannot be bound.
    pub async fn bind(
        addr: SocketAddr,
        app: Router,
        shutdown: &Shutdown,
    ) -> Result<Self, TelemetryError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| TelemetryError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| TelemetryError::Bind { addr, source })?;
        let stop = shutdown.triggered();
        let task = shutdown.spawn(async move {
            tracing::info!(addr = %local_addr, "admin server listening");
            let result = axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
                .map_err(TelemetryError::Serve);
            tracing::info!(addr = %local_addr, "admin server stopped");
            result
        });
        Ok(AdminServer { local_addr, task })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Waits for the server to stop (after shutdown is triggered and its
    /// in-flight requests are answered).
    ///
    /// # Errors
    /// [`TelemetryError::Serve`] on an I/O failure,
    /// [`TelemetryError::ServerTask`] when the task panicked.
    pub async fn wait(self) -> Result<(), TelemetryError> {
        self.task.await.map_err(TelemetryError::ServerTask)?
    }
}
