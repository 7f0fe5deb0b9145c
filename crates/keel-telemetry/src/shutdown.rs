//! SIGTERM/SIGINT handling with a bounded drain of in-flight work.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;

use crate::TelemetryError;

/// How long [`Shutdown::drain`] is usually given: the Keel convention is
/// "finish or hand back what is in flight within 10 s, then exit 0".
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A program's shutdown coordinator: one cancellation token that says "stop
/// taking work" and one task tracker that knows what is still in flight.
///
/// Typical use: spawn long-lived work with [`Shutdown::spawn`] (or wrap
/// request futures with [`Shutdown::track`]), have it stop taking new work
/// when [`Shutdown::token`] is cancelled, wait for [`Shutdown::signal`], then
/// call [`Shutdown::drain`] with a bound. Cloning is cheap and shares the
/// state.
#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
    finished: Arc<AtomicU64>,
}

/// Why shutdown started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownReason {
    /// `SIGTERM` arrived (Kubernetes, systemd, `kill`).
    Terminate,
    /// `SIGINT` arrived (Ctrl-C).
    Interrupt,
    /// [`Shutdown::trigger`] was called.
    Triggered,
}

impl fmt::Display for ShutdownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ShutdownReason::Terminate => "SIGTERM",
            ShutdownReason::Interrupt => "SIGINT",
            ShutdownReason::Triggered => "triggered",
        })
    }
}

/// What [`Shutdown::drain`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Tracked tasks that finished (or were dropped) while draining.
    pub completed: u64,
    /// Tracked tasks still running when the bound ran out. They keep running
    /// until the runtime shuts down; the program decides whether that is an
    /// error.
    pub abandoned: u64,
    /// How long the drain took.
    pub elapsed: Duration,
}

impl DrainReport {
    /// `true` when nothing was abandoned.
    pub fn is_clean(&self) -> bool {
        self.abandoned == 0
    }
}

struct FinishGuard(Arc<AtomicU64>);

impl Drop for FinishGuard {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

impl Shutdown {
    /// A coordinator that has not been triggered and tracks nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// The token cancelled when shutdown starts. Give a clone (or a
    /// [`CancellationToken::child_token`]) to every loop that takes work.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// `true` once shutdown has started.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Starts shutdown: cancels the token. Idempotent.
    pub fn trigger(&self) {
        if !self.token.is_cancelled() {
            tracing::info!("shutdown triggered");
        }
        self.token.cancel();
    }

    /// A future that completes when shutdown starts (by signal or
    /// [`Shutdown::trigger`]); pass it to axum's `with_graceful_shutdown`.
    pub fn triggered(&self) -> WaitForCancellationFutureOwned {
        self.token.clone().cancelled_owned()
    }

    /// Installs SIGTERM and SIGINT handlers now and returns a future that
    /// completes with the reason once either signal arrives or
    /// [`Shutdown::trigger`] is called; a signal triggers shutdown.
    ///
    /// Once installed, the handlers replace the default "terminate the
    /// process" action for the rest of the process's life, so the program
    /// must exit on its own after draining. Must be called inside a tokio
    /// runtime. On non-Unix platforms only Ctrl-C is watched.
    ///
    /// # Errors
    /// The future yields [`TelemetryError::Signal`] when a handler cannot be
    /// installed.
    pub fn signal(
        &self,
    ) -> impl Future<Output = Result<ShutdownReason, TelemetryError>> + Send + 'static {
        let token = self.token.clone();
        let listeners = signals::install();
        async move {
            let mut listeners = listeners?;
            let reason = tokio::select! {
                reason = listeners.recv() => reason,
                () = token.cancelled() => ShutdownReason::Triggered,
            };
            if reason != ShutdownReason::Triggered {
                tracing::info!(signal = %reason, "shutdown signal received");
            }
            token.cancel();
            Ok(reason)
        }
    }

    /// Spawns `task` on the current runtime as tracked in-flight work.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        tokio::spawn(self.track(task))
    }

    /// Wraps `future` so that it counts as in flight until it completes or
    /// is dropped (for work that is not a spawned task, such as a request
    /// handler's body).
    pub fn track<F: Future>(&self, future: F) -> impl Future<Output = F::Output> + use<F> {
        let guard = FinishGuard(self.finished.clone());
        self.tracker.track_future(async move {
            let output = future.await;
            drop(guard);
            output
        })
    }

    /// How many tracked tasks are in flight.
    pub fn in_flight(&self) -> usize {
        self.tracker.len()
    }

    /// Triggers shutdown (if not already) and waits up to `timeout` for every
    /// tracked task to finish. Tasks tracked while draining are waited for
    /// too. Logs the outcome (warn when something was abandoned).
    pub async fn drain(&self, timeout: Duration) -> DrainReport {
        self.trigger();
        self.tracker.close();
        let started = Instant::now();
        let finished_before = self.finished.load(Ordering::Acquire);
        let in_flight = self.tracker.len();
        tracing::info!(
            in_flight,
            timeout_ms = timeout.as_millis() as u64,
            "draining"
        );
        let clean = tokio::time::timeout(timeout, self.tracker.wait())
            .await
            .is_ok();
        let report = DrainReport {
            completed: self.finished.load(Ordering::Acquire) - finished_before,
            abandoned: if clean { 0 } else { self.tracker.len() as u64 },
            elapsed: started.elapsed(),
        };
        if report.is_clean() {
            tracing::info!(
                completed = report.completed,
                elapsed_ms = report.elapsed.as_millis() as u64,
                "drain finished"
            );
        } else {
            tracing::warn!(
                completed = report.completed,
                abandoned = report.abandoned,
                "drain timed out with work still in flight"
            );
        }
        report
    }
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("triggered", &self.is_triggered())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

#[cfg(unix)]
mod signals {
    use tokio::signal::unix::{Signal, SignalKind, signal};

    use super::ShutdownReason;
    use crate::TelemetryError;

    pub(super) struct Listeners {
        term: Signal,
        int: Signal,
    }

    pub(super) fn install() -> Result<Listeners, TelemetryError> {
        let term = signal(SignalKind::terminate()).map_err(|source| TelemetryError::Signal {
            signal: "SIGTERM",
            source,
        })?;
        let int = signal(SignalKind::interrupt()).map_err(|source| TelemetryError::Signal {
            signal: "SIGINT",
            source,
        })?;
        Ok(Listeners { term, int })
    }

    impl Listeners {
        pub(super) async fn recv(&mut self) -> ShutdownReason {
            tokio::select! {
                Some(()) = self.term.recv() => ShutdownReason::Terminate,
                Some(()) = self.int.recv() => ShutdownReason::Interrupt,
                else => std::future::pending().await,
            }
        }
    }
}

#[cfg(not(unix))]
mod signals {
    use super::ShutdownReason;
    use crate::TelemetryError;

    pub(super) struct Listeners;

    pub(super) fn install() -> Result<Listeners, TelemetryError> {
        Ok(Listeners)
    }

    impl Listeners {
        pub(super) async fn recv(&mut self) -> ShutdownReason {
            match tokio::signal::ctrl_c().await {
                Ok(()) => ShutdownReason::Interrupt,
                Err(_) => std::future::pending().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_work_that_finishes_in_time() {
        let shutdown = Shutdown::new();
        let token = shutdown.token();
        // A worker that stops taking work on cancellation and needs 3 s to
        // hand back what it holds.
        shutdown.spawn(async move {
            token.cancelled().await;
            tokio::time::sleep(Duration::from_secs(3)).await;
        });
        assert_eq!(shutdown.in_flight(), 1);
        let report = shutdown.drain(DEFAULT_DRAIN_TIMEOUT).await;
        assert_eq!(
            report,
            DrainReport {
                completed: 1,
                abandoned: 0,
                elapsed: Duration::from_secs(3)
            }
        );
        assert!(report.is_clean());
        assert!(shutdown.is_triggered());
    }

    #[tokio::test(start_paused = true)]
    async fn drain_gives_up_after_the_bound() {
        let shutdown = Shutdown::new();
        shutdown.spawn(tokio::time::sleep(Duration::from_secs(1)));
        shutdown.spawn(tokio::time::sleep(Duration::from_secs(30)));
        shutdown.spawn(std::future::pending::<()>());
        let started = Instant::now();
        let report = shutdown.drain(DEFAULT_DRAIN_TIMEOUT).await;
        assert_eq!(started.elapsed(), DEFAULT_DRAIN_TIMEOUT);
        assert_eq!(report.completed, 1);
        assert_eq!(report.abandoned, 2);
        assert_eq!(report.elapsed, DEFAULT_DRAIN_TIMEOUT);
        assert!(!report.is_clean());
    }

    #[tokio::test(start_paused = true)]
    async fn tracked_futures_count_and_drain_with_nothing_is_immediate() {
        let shutdown = Shutdown::new();
        let tracked = shutdown.track(async { 7 });
        assert_eq!(shutdown.in_flight(), 1);
        assert_eq!(tracked.await, 7);
        assert_eq!(shutdown.in_flight(), 0);
        // A dropped tracked future is no longer in flight either.
        drop(shutdown.track(std::future::pending::<()>()));
        assert_eq!(shutdown.in_flight(), 0);
        let report = shutdown.drain(Duration::from_secs(1)).await;
        assert_eq!(report.elapsed, Duration::ZERO);
        assert_eq!(report.abandoned, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn work_spawned_while_draining_is_waited_for() {
        let shutdown = Shutdown::new();
        let inner = shutdown.clone();
        shutdown.spawn(async move {
            inner.token().cancelled().await;
            // Hand-off work started after shutdown began.
            inner.spawn(tokio::time::sleep(Duration::from_secs(2)));
        });
        let report = shutdown.drain(Duration::from_secs(5)).await;
        assert_eq!(report.completed, 2);
        assert_eq!(report.elapsed, Duration::from_secs(2));
    }

    #[tokio::test]
    async fn trigger_resolves_signal_and_triggered() {
        let shutdown = Shutdown::new();
        let signal = shutdown.signal();
        let triggered = shutdown.triggered();
        assert!(!shutdown.is_triggered());
        shutdown.trigger();
        assert_eq!(signal.await.unwrap(), ShutdownReason::Triggered);
        triggered.await;
        assert_eq!(ShutdownReason::Terminate.to_string(), "SIGTERM");
    }
}
