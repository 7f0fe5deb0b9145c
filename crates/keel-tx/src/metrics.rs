//! Counters for transactions and sagas (feature `metrics`).
//!
//! Without the feature the hooks compile to nothing.

use crate::record::RollbackCause;

/// Where the manager and saga executor report events; a no-op unless the
/// `metrics` feature is on and metrics were configured.
#[derive(Clone, Default)]
pub(crate) struct Hooks {
    #[cfg(feature = "metrics")]
    metrics: Option<TxMetrics>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hooks")
    }
}

#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
impl Hooks {
    #[cfg(feature = "metrics")]
    pub(crate) fn new(metrics: TxMetrics) -> Self {
        Hooks {
            metrics: Some(metrics),
        }
    }

    pub(crate) fn tx_begun(&self) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.begun.inc();
        }
    }

    pub(crate) fn tx_committed(&self) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.committed.inc();
        }
    }

    pub(crate) fn tx_rolled_back(&self, cause: RollbackCause) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.rolled_back
                .get_or_create(&CauseLabel {
                    cause: cause.as_str(),
                })
                .inc();
            if cause == RollbackCause::TimedOut {
                m.timed_out.inc();
            }
        }
    }

    pub(crate) fn saga_step(&self, completed: bool) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            let outcome = if completed { "completed" } else { "failed" };
            m.saga_steps.get_or_create(&OutcomeLabel { outcome }).inc();
        }
    }

    pub(crate) fn compensation(&self, succeeded: bool) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.compensations.inc();
            if !succeeded {
                m.compensation_failures.inc();
            }
        }
    }
}

#[cfg(feature = "metrics")]
pub use enabled::*;

#[cfg(feature = "metrics")]
mod enabled {
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::registry::Registry;

    /// Metric name: transactions begun.
    pub const TRANSACTIONS_BEGUN: &str = "transactions_begun";
    /// Metric name: transactions committed.
    pub const TRANSACTIONS_COMMITTED: &str = "transactions_committed";
    /// Metric name: transactions rolled back, by `cause` (`requested`,
    /// `timed_out`, `dropped`, `recovery`, `journal_failure`,
    /// `external_write`).
    pub const TRANSACTIONS_ROLLED_BACK: &str = "transactions_rolled_back";
    /// Metric name: transactions rolled back by the timeout reaper.
    pub const TRANSACTIONS_TIMED_OUT: &str = "transactions_timed_out";
    /// Metric name: saga steps run, by `outcome` (`completed`, `failed`).
    pub const SAGA_STEPS: &str = "saga_steps";
    /// Metric name: saga compensations run.
    pub const SAGA_COMPENSATIONS: &str = "saga_compensations";
    /// Metric name: saga compensations that failed after their retries.
    pub const SAGA_COMPENSATION_FAILURES: &str = "saga_compensation_failures";

    #[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
    pub(crate) struct CauseLabel {
        pub(crate) cause: &'static str,
    }

    #[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
    pub(crate) struct OutcomeLabel {
        pub(crate) outcome: &'static str,
    }

    /// Counters for transactions and sagas, shared by clones.
    ///
    /// Pass a clone to [`TxManagerBuilder::metrics`](crate::TxManagerBuilder::metrics)
    /// and [`SagaExecutorBuilder::metrics`](crate::SagaExecutorBuilder::metrics),
    /// and register it once with [`TxMetrics::register`]. Names are short and
    /// unprefixed (the binary adds its prefix with a sub-registry); counters
    /// get `_total` from the encoder. Label values are fixed sets.
    #[derive(Debug, Clone, Default)]
    pub struct TxMetrics {
        pub(crate) begun: Counter,
        pub(crate) committed: Counter,
        pub(crate) rolled_back: Family<CauseLabel, Counter>,
        pub(crate) timed_out: Counter,
        pub(crate) saga_steps: Family<OutcomeLabel, Counter>,
        pub(crate) compensations: Counter,
        pub(crate) compensation_failures: Counter,
    }

    impl TxMetrics {
        /// Fresh counters at zero.
        pub fn new() -> Self {
            TxMetrics::default()
        }

        /// Registers every counter in `registry`.
        pub fn register(&self, registry: &mut Registry) {
            registry.register(TRANSACTIONS_BEGUN, "Transactions begun", self.begun.clone());
            registry.register(
                TRANSACTIONS_COMMITTED,
                "Transactions committed",
                self.committed.clone(),
            );
            registry.register(
                TRANSACTIONS_ROLLED_BACK,
                "Transactions rolled back, by cause",
                self.rolled_back.clone(),
            );
            registry.register(
                TRANSACTIONS_TIMED_OUT,
                "Transactions rolled back by the timeout reaper",
                self.timed_out.clone(),
            );
            registry.register(
                SAGA_STEPS,
                "Saga steps run, by outcome",
                self.saga_steps.clone(),
            );
            registry.register(
                SAGA_COMPENSATIONS,
                "Saga compensations run",
                self.compensations.clone(),
            );
            registry.register(
                SAGA_COMPENSATION_FAILURES,
                "Saga compensations that failed after retries",
                self.compensation_failures.clone(),
            );
        }

        /// Transactions begun so far.
        pub fn begun(&self) -> u64 {
            self.begun.get()
        }

        /// Transactions committed so far.
        pub fn committed(&self) -> u64 {
            self.committed.get()
        }

        /// Transactions rolled back so far for `cause`.
        pub fn rolled_back(&self, cause: crate::RollbackCause) -> u64 {
            self.rolled_back
                .get_or_create(&CauseLabel {
                    cause: cause.as_str(),
                })
                .get()
        }

        /// Transactions the reaper rolled back so far.
        pub fn timed_out(&self) -> u64 {
            self.timed_out.get()
        }

        /// Saga steps run so far that completed (`true`) or failed (`false`).
        pub fn saga_steps(&self, completed: bool) -> u64 {
            let outcome = if completed { "completed" } else { "failed" };
            self.saga_steps
                .get_or_create(&OutcomeLabel { outcome })
                .get()
        }

        /// Compensations run so far.
        pub fn compensations(&self) -> u64 {
            self.compensations.get()
        }

        /// Compensations that failed so far.
        pub fn compensation_failures(&self) -> u64 {
            self.compensation_failures.get()
        }
    }
}
