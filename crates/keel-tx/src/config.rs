//! Configuration of the transaction manager.

use std::sync::Arc;
use std::time::Duration;

use keel_core::Clock;

use crate::error::{ConfigError, TxError};
use crate::journal::Journal;
use crate::manager::TxManager;
use crate::metrics::Hooks;

/// How `begin` behaves when another transaction holds the resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeginMode {
    /// Wait up to this long for the holder to finish, then fail with
    /// [`ResourceBusy`](crate::ResourceBusy). Waiters are served in order.
    /// (Only holders in this process are waited for: with a shared journal,
    /// a resource held by another process fails at once.)
    Wait(Duration),
    /// Fail at once with [`ResourceBusy`](crate::ResourceBusy).
    FailFast,
}

/// Validated manager settings.
#[derive(Debug, Clone)]
pub(crate) struct TxConfig {
    pub(crate) transaction_timeout: Duration,
    pub(crate) reap_interval: Duration,
    pub(crate) audit_retention: usize,
    pub(crate) clock: Clock,
}

/// Builds a [`TxManager`]; see [`TxManager::builder`].
pub struct TxManagerBuilder {
    pub(crate) journal: Arc<dyn Journal>,
    transaction_timeout: Duration,
    reap_interval: Duration,
    audit_retention: usize,
    clock: Clock,
    pub(crate) hooks: Hooks,
}

impl std::fmt::Debug for TxManagerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxManagerBuilder")
            .field("transaction_timeout", &self.transaction_timeout)
            .field("reap_interval", &self.reap_interval)
            .field("audit_retention", &self.audit_retention)
            .finish_non_exhaustive()
    }
}

impl TxManagerBuilder {
    pub(crate) fn new(journal: Arc<dyn Journal>) -> Self {
        TxManagerBuilder {
            journal,
            transaction_timeout: Duration::from_secs(30 * 60),
            reap_interval: Duration::from_secs(5),
            audit_retention: 1000,
            clock: Clock::default(),
            hooks: Hooks::default(),
        }
    }

    /// How long a transaction may stay open before the reaper rolls it back
    /// (default 30 minutes). Must be greater than zero.
    pub fn transaction_timeout(mut self, timeout: Duration) -> Self {
        self.transaction_timeout = timeout;
        self
    }

    /// How often the reaper looks for expired transactions (default 5 s):
    /// a transaction is rolled back at most this long after its timeout.
    /// Must be greater than zero.
    pub fn reap_interval(mut self, interval: Duration) -> Self {
        self.reap_interval = interval;
        self
    }

    /// Finished audit records kept in memory per resource (default 1000).
    /// Must be greater than zero.
    pub fn audit_retention(mut self, records: usize) -> Self {
        self.audit_retention = records;
        self
    }

    /// The clock deadlines are measured with (default: tokio's, so paused
    /// time drives the reaper in tests).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Counts transactions in `metrics` (feature `metrics`).
    #[cfg(feature = "metrics")]
    pub fn metrics(mut self, metrics: crate::TxMetrics) -> Self {
        self.hooks = Hooks::new(metrics);
        self
    }

    pub(crate) fn validate(&self) -> Result<TxConfig, ConfigError> {
        if self.transaction_timeout.is_zero() {
            return Err(ConfigError::new(
                "transaction_timeout",
                "must be greater than zero",
            ));
        }
        if self.reap_interval.is_zero() {
            return Err(ConfigError::new(
                "reap_interval",
                "must be greater than zero",
            ));
        }
        if self.audit_retention == 0 {
            return Err(ConfigError::new(
                "audit_retention",
                "must be greater than zero",
            ));
        }
        Ok(TxConfig {
            transaction_timeout: self.transaction_timeout,
            reap_interval: self.reap_interval,
            audit_retention: self.audit_retention,
            clock: self.clock.clone(),
        })
    }

    /// Validates the settings, loads the journal, rolls back every
    /// transaction the journal holds open (the previous process stopped
    /// before committing them; see [`TxManager::recovered`]) and starts the
    /// timeout reaper.
    ///
    /// Open one manager per journal: recovery assumes that no other live
    /// process has transactions open in it.
    pub async fn open(self) -> Result<TxManager, TxError> {
        TxManager::open(self).await
    }
}
