//! The background task that purges expired entries.

use std::sync::Arc;
use std::time::Duration;

use keel_core::{CancellationToken, every};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::executor::Inner;
use crate::store::IdempotencyStore;

/// The handle of a cleanup task started by
/// [`Idempotency::spawn_cleanup`](crate::Idempotency::spawn_cleanup).
///
/// The task calls [`IdempotencyStore::purge_expired`] every interval (first
/// one interval after it starts) and counts what it removed as expirations.
/// A store error is logged and retried at the next tick. Dropping the handle
/// aborts the task; [`CleanupTask::stop`] ends it after the purge in
/// progress, if any.
#[derive(Debug)]
pub struct CleanupTask {
    stop: CancellationToken,
    handle: Option<JoinHandle<()>>,
}

impl CleanupTask {
    pub(crate) fn spawn<S: IdempotencyStore>(inner: Arc<Inner<S>>, interval: Duration) -> Self {
        let stop = CancellationToken::new();
        let handle = tokio::spawn(every(interval, stop.clone(), move || {
            let inner = inner.clone();
            async move {
                match inner.store.purge_expired().await {
                    Ok(0) => {}
                    Ok(n) => {
                        inner.recorder.expirations(n);
                        debug!(
                            purged = n,
                            backend = inner.store.backend(),
                            "purged expired idempotency entries"
                        );
                    }
                    Err(e) => warn!(error = %e, "could not purge expired idempotency entries"),
                }
            }
        }));
        CleanupTask {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops the task and waits for it to end.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(handle) = self.handle.take() {
            let _ = handle.await;
        }
    }

    /// `true` once the task has ended.
    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(|h| h.is_finished())
    }
}

impl Drop for CleanupTask {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }
}
