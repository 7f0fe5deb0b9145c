//! prometheus-client metrics for retry policies.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::policy::RetryPolicy;
use crate::stats::RetryStats;

/// Calls that ended: returned, or dropped before they could (counter;
/// `_total` is added by the encoder).
pub const CALLS: &str = "retry_calls";
/// Attempts started, first attempts included (counter).
pub const ATTEMPTS: &str = "retry_attempts";
/// Calls dropped (cancelled) before they ended (counter).
pub const CANCELLED: &str = "retry_cancelled";
/// Retries started (counter).
pub const RETRIES: &str = "retry_retries";
/// Calls that ended in success (counter).
pub const SUCCESSES: &str = "retry_successes";
/// Successful calls that needed at least one retry (counter).
pub const SUCCESSES_AFTER_RETRY: &str = "retry_successes_after_retry";
/// Calls that ended with a result not to be retried (counter).
pub const NOT_RETRYABLE: &str = "retry_not_retryable";
/// Calls that used every retry and still failed (counter).
pub const EXHAUSTED: &str = "retry_exhausted";
/// Calls whose retry the retry budget refused (counter).
pub const BUDGET_REFUSALS: &str = "retry_budget_refusals";
/// Calls stopped by the maximum elapsed time (counter).
pub const DEADLINE_EXCEEDED: &str = "retry_deadline_exceeded";
/// Attempts cut off by the per-attempt timeout (counter).
pub const ATTEMPT_TIMEOUTS: &str = "retry_attempt_timeouts";
/// Retries the policy's budget allows now (gauge; only policies with a budget).
pub const BUDGET_AVAILABLE: &str = "retry_budget_available_retries";

/// Label naming the policy.
const POLICY: &str = "policy";

type Counter = (&'static str, &'static str, fn(&RetryStats) -> u64);

const COUNTERS: [Counter; 11] = [
    (
        CALLS,
        "Retried calls that ended (returned or were dropped)",
        |s| s.calls,
    ),
    (CANCELLED, "Calls dropped before they ended", |s| {
        s.cancelled
    }),
    (ATTEMPTS, "Attempts started, first attempts included", |s| {
        s.attempts
    }),
    (RETRIES, "Retries started", |s| s.retries),
    (SUCCESSES, "Calls that ended in success", |s| s.successes),
    (
        SUCCESSES_AFTER_RETRY,
        "Successful calls that needed at least one retry",
        |s| s.successes_after_retry,
    ),
    (
        NOT_RETRYABLE,
        "Calls that ended with a result not to be retried",
        |s| s.not_retryable,
    ),
    (
        EXHAUSTED,
        "Calls that used every retry and still failed",
        |s| s.exhausted,
    ),
    (
        BUDGET_REFUSALS,
        "Calls whose retry the retry budget refused",
        |s| s.budget_refusals,
    ),
    (
        DEADLINE_EXCEEDED,
        "Calls stopped by the maximum elapsed time",
        |s| s.deadline_exceeded,
    ),
    (
        ATTEMPT_TIMEOUTS,
        "Attempts cut off by the per-attempt timeout",
        |s| s.attempt_timeouts,
    ),
];

/// Exposes the [`RetryStats`] of named policies as prometheus-client
/// metrics, labelled `policy="<name>"`. It is a collector: the counters are
/// read from the policies at scrape time, so recording costs nothing more
/// than the policy's own atomic increments.
///
/// Names are short and unprefixed (`retry_calls_total`, `retry_exhausted_total`,
/// ...; see the constants in this module's docs); a binary adds its prefix with
/// `Registry::sub_registry_with_prefix`. Policy names become label values: give
/// a fixed, small set (one per dependency), never a per-request value.
///
/// ```
/// use prometheus_client::registry::Registry;
/// use keel_retry::{RetryMetrics, RetryPolicy};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let ec2 = RetryPolicy::aws();
/// let metrics = RetryMetrics::new();
/// metrics.add("ec2", &ec2);
/// let mut registry = Registry::default();
/// metrics.register(registry.sub_registry_with_prefix("goman"));
///
/// ec2.retry(|_| async { Ok::<_, ()>(()) }).await.unwrap();
/// let mut text = String::new();
/// prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
/// assert!(text.contains(r#"goman_retry_calls_total{policy="ec2"} 1"#));
/// # }
/// ```
#[derive(Clone, Default)]
pub struct RetryMetrics {
    policies: Arc<Mutex<Vec<(String, RetryPolicy)>>>,
}

impl RetryMetrics {
    /// An empty set of policies.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `policy` under `name` (its clones share the counters, so adding
    /// one clone covers them all). Can be called after [`register`](Self::register).
    pub fn add(&self, name: impl Into<String>, policy: &RetryPolicy) {
        self.policies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((name.into(), policy.clone()));
    }

    /// Registers the collector; later [`add`](Self::add)s show up too.
    pub fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(self.clone()));
    }
}

impl fmt::Debug for RetryMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let policies = self.policies.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_list()
            .entries(policies.iter().map(|(name, _)| name))
            .finish()
    }
}

impl Collector for RetryMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        // Snapshot under the lock, encode outside it.
        let snapshot: Vec<(String, RetryStats, Option<u64>)> = self
            .policies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(name, p)| {
                (
                    name.clone(),
                    p.stats(),
                    p.budget().map(crate::RetryBudget::available),
                )
            })
            .collect();
        if snapshot.is_empty() {
            return Ok(());
        }
        for (name, help, read) in COUNTERS {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (policy, stats, _) in &snapshot {
                metric
                    .encode_family(&[(POLICY, policy.as_str())])?
                    .encode_counter::<NoLabelSet, _, u64>(&read(stats), None)?;
            }
        }
        if snapshot.iter().any(|(_, _, b)| b.is_some()) {
            let mut metric = encoder.encode_descriptor(
                BUDGET_AVAILABLE,
                "Retries the policy's retry budget allows now",
                None,
                MetricType::Gauge,
            )?;
            for (policy, _, available) in &snapshot {
                if let Some(available) = available {
                    metric
                        .encode_family(&[(POLICY, policy.as_str())])?
                        .encode_gauge(available)?;
                }
            }
        }
        Ok(())
    }
}
