//! Readiness checks behind `/readyz`.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use keel_core::{BoxError, ConfigError};
use parking_lot::RwLock;
use serde::Serialize;
use tokio::time::Instant;

use crate::TelemetryError;

/// How long one check may take before it counts as failed, unless
/// [`Readiness::with_timeout`] says otherwise.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// One readiness condition of a program ("the database answers", "the config
/// was loaded").
///
/// Implement it for a type that owns what it checks, or pass a closure to
/// [`Readiness::add_fn`]. A check is called once per `/readyz` request, so it
/// should be cheap (a ping, a flag), and it is abandoned when it exceeds the
/// timeout.
pub trait ReadinessCheck: Send + Sync + 'static {
    /// `Ok(())` when ready; the error's `Display` is reported on `/readyz`.
    fn check(&self) -> BoxFuture<'_, Result<(), BoxError>>;
}

struct FnCheck<F>(F);

impl<F, Fut, E> ReadinessCheck for FnCheck<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError>,
{
    fn check(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        let fut = (self.0)();
        Box::pin(async move { fut.await.map_err(Into::into) })
    }
}

#[derive(Clone)]
struct NamedCheck {
    name: Arc<str>,
    check: Arc<dyn ReadinessCheck>,
}

/// The set of readiness checks a program registers; `/readyz` evaluates them.
///
/// Cloning shares the set, so checks can be added after the admin server has
/// started (a check registered once a connection pool exists, say). All
/// checks run concurrently on each evaluation, each bounded by the timeout.
#[derive(Clone)]
pub struct Readiness {
    checks: Arc<RwLock<Vec<NamedCheck>>>,
    timeout: Duration,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            checks: Arc::default(),
            timeout: DEFAULT_CHECK_TIMEOUT,
        }
    }
}

impl Readiness {
    /// No checks (always ready), with [`DEFAULT_CHECK_TIMEOUT`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the per-check timeout.
    ///
    /// # Errors
    /// [`TelemetryError::Config`] naming `timeout` when it is zero.
    pub fn with_timeout(mut self, timeout: Duration) -> Result<Self, TelemetryError> {
        if timeout.is_zero() {
            return Err(ConfigError::new("timeout", "must be above zero").into());
        }
        self.timeout = timeout;
        Ok(self)
    }

    /// The per-check timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Registers a check under `name` (letters, digits, `_`, `-`, `.`).
    ///
    /// # Errors
    /// [`TelemetryError::Config`] naming `name` for an empty or odd name,
    /// [`TelemetryError::DuplicateCheck`] when the name is taken.
    pub fn add(&self, name: &str, check: impl ReadinessCheck) -> Result<(), TelemetryError> {
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !valid {
            return Err(ConfigError::new(
                "name",
                format!("`{name}`: use ASCII letters, digits, `_`, `-` and `.`"),
            )
            .into());
        }
        let mut checks = self.checks.write();
        if checks.iter().any(|c| &*c.name == name) {
            return Err(TelemetryError::DuplicateCheck {
                name: name.to_owned(),
            });
        }
        checks.push(NamedCheck {
            name: name.into(),
            check: Arc::new(check),
        });
        Ok(())
    }

    /// Registers an async closure as a check.
    ///
    /// # Errors
    /// As [`Readiness::add`].
    pub fn add_fn<F, Fut, E>(&self, name: &str, check: F) -> Result<(), TelemetryError>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.add(name, FnCheck(check))
    }

    /// Removes the check called `name`; `false` when there was none.
    pub fn remove(&self, name: &str) -> bool {
        let mut checks = self.checks.write();
        let before = checks.len();
        checks.retain(|c| &*c.name != name);
        checks.len() != before
    }

    /// The registered check names, in registration order.
    pub fn names(&self) -> Vec<String> {
        self.checks
            .read()
            .iter()
            .map(|c| c.name.to_string())
            .collect()
    }

    /// Runs every check concurrently, each bounded by the timeout. A check
    /// that panics counts as failed.
    pub async fn evaluate(&self) -> ReadinessReport {
        // Clone the list so no lock is held across an await.
        let checks: Vec<NamedCheck> = self.checks.read().clone();
        let timeout = self.timeout;
        let results = futures::future::join_all(checks.into_iter().map(|named| async move {
            let started = Instant::now();
            let run = AssertUnwindSafe(named.check.check()).catch_unwind();
            let (status, error) = match tokio::time::timeout(timeout, run).await {
                Ok(Ok(Ok(()))) => (CheckStatus::Pass, None),
                Ok(Ok(Err(e))) => (CheckStatus::Fail, Some(e.to_string())),
                Ok(Err(_panic)) => (CheckStatus::Fail, Some("check panicked".to_owned())),
                Err(_elapsed) => (
                    CheckStatus::Timeout,
                    Some(format!("no answer within {} ms", timeout.as_millis())),
                ),
            };
            if status != CheckStatus::Pass {
                tracing::debug!(check = %named.name, status = ?status, error = ?error, "readiness check failed");
            }
            CheckResult {
                name: named.name.to_string(),
                status,
                error,
                duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            }
        }))
        .await;
        ReadinessReport {
            ready: results.iter().all(|r| r.status == CheckStatus::Pass),
            checks: results,
        }
    }
}

impl fmt::Debug for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Readiness")
            .field("checks", &self.names())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The result of one evaluation of every readiness check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadinessReport {
    /// `true` when every check passed (and when there are none).
    pub ready: bool,
    /// One entry per check, in registration order.
    pub checks: Vec<CheckResult>,
}

impl ReadinessReport {
    /// The names of the checks that did not pass.
    pub fn failing(&self) -> Vec<&str> {
        self.checks
            .iter()
            .filter(|c| c.status != CheckStatus::Pass)
            .map(|c| c.name.as_str())
            .collect()
    }
}

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    /// The check's name.
    pub name: String,
    /// Whether it passed.
    pub status: CheckStatus,
    /// Why it did not pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
}

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    /// The check returned `Ok(())` in time.
    Pass,
    /// The check returned an error or panicked.
    Fail,
    /// The check did not answer within the timeout.
    Timeout,
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[tokio::test]
    async fn no_checks_means_ready() {
        let report = Readiness::new().evaluate().await;
        assert!(report.ready);
        assert!(report.checks.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn failing_and_slow_checks_are_reported_by_name() {
        let readiness = Readiness::new()
            .with_timeout(Duration::from_millis(500))
            .unwrap();
        readiness
            .add_fn("config", || async { Ok::<_, BoxError>(()) })
            .unwrap();
        readiness
            .add_fn("db", || async {
                Err::<(), _>(std::io::Error::other("connection refused"))
            })
            .unwrap();
        readiness
            .add_fn("slow", || async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok::<_, BoxError>(())
            })
            .unwrap();
        let started = Instant::now();
        let report = readiness.evaluate().await;
        // Checks run concurrently: one timeout, not a sum.
        assert_eq!(started.elapsed(), Duration::from_millis(500));
        assert!(!report.ready);
        assert_eq!(report.failing(), vec!["db", "slow"]);
        assert_eq!(report.checks[0].status, CheckStatus::Pass);
        assert_eq!(report.checks[1].status, CheckStatus::Fail);
        assert_eq!(
            report.checks[1].error.as_deref(),
            Some("connection refused")
        );
        assert_eq!(report.checks[2].status, CheckStatus::Timeout);
        assert_eq!(report.checks[2].duration_ms, 500);
    }

    #[tokio::test]
    async fn a_panicking_check_fails_instead_of_crashing() {
        let readiness = Readiness::new();
        readiness
            .add_fn("boom", || async {
                if true {
                    panic!("bug in check");
                }
                Ok::<_, BoxError>(())
            })
            .unwrap();
        let report = readiness.evaluate().await;
        assert_eq!(report.checks[0].status, CheckStatus::Fail);
        assert_eq!(report.checks[0].error.as_deref(), Some("check panicked"));
    }

    #[tokio::test]
    async fn checks_follow_runtime_state_and_can_be_removed() {
        let flag = Arc::new(AtomicBool::new(false));
        let readiness = Readiness::new();
        let seen = flag.clone();
        readiness
            .add_fn("warm", move || {
                let ok = seen.load(Ordering::SeqCst);
                async move { if ok { Ok(()) } else { Err("warming up") } }
            })
            .unwrap();
        assert!(!readiness.evaluate().await.ready);
        flag.store(true, Ordering::SeqCst);
        assert!(readiness.evaluate().await.ready);
        assert!(readiness.remove("warm"));
        assert!(!readiness.remove("warm"));
        assert!(readiness.names().is_empty());
    }

    #[test]
    fn names_are_validated_and_unique() {
        let readiness = Readiness::new();
        readiness
            .add_fn("db.primary-1", || async { Ok::<_, BoxError>(()) })
            .unwrap();
        assert!(matches!(
            readiness.add_fn("db.primary-1", || async { Ok::<_, BoxError>(()) }),
            Err(TelemetryError::DuplicateCheck { name }) if name == "db.primary-1"
        ));
        assert!(matches!(
            readiness.add_fn("has space", || async { Ok::<_, BoxError>(()) }),
            Err(TelemetryError::Config(e)) if e.field() == "name"
        ));
        assert!(matches!(
            Readiness::new().with_timeout(Duration::ZERO),
            Err(TelemetryError::Config(e)) if e.field() == "timeout"
        ));
    }
}
