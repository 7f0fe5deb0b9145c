//! Prometheus metrics for breakers (feature `metrics`).
//!
//! A [`BreakerCollector`] reads each breaker's [`Stats`] when
//! Prometheus scrapes, so the call path pays nothing for metrics. Names are
//! short and unprefixed (the program adds its prefix with
//! `Registry::sub_registry_with_prefix`); every series carries a `breaker`
//! label with the breaker's name, which is chosen by the program and so
//! bounded.
//!
//! | name | type | labels |
//! |---|---|---|
//! | [`STATE`] | gauge, 1 for the current state, 0 for the others | `breaker`, `state` |
//! | [`CALLS`] | counter | `breaker`, `outcome` = `success` / `failure` / `neutral` |
//! | [`SLOW_CALLS`] | counter | `breaker` |
//! | [`REJECTIONS`] | counter | `breaker`, `reason` = `open` / `half_open` / `forced_open` |
//! | [`TRANSITIONS`] | counter | `breaker`, `to` = the state entered |
//! | [`BULKHEAD_IN_FLIGHT`] | gauge | `bulkhead` (registry bulkheads only) |
//! | [`BULKHEAD_QUEUED`] | gauge | `bulkhead` |
//! | [`BULKHEAD_LIMIT`] | gauge | `bulkhead` |
//! | [`BULKHEAD_REJECTIONS`] | counter | `bulkhead`, `reason` = `full` / `shed` |
//!
//! ```
//! use keel_breaker::{BreakerRegistry, presets};
//! use prometheus_client::{encoding::text::encode, registry::Registry};
//!
//! let breakers = BreakerRegistry::with_aws_presets();
//! let mut registry = Registry::default();
//! breakers.register_metrics(&mut registry);
//! breakers.get(presets::EC2).try_acquire().unwrap().record_success();
//!
//! let mut text = String::new();
//! encode(&mut text, &registry).unwrap();
//! assert!(text.contains(r#"breaker_calls_total{breaker="ec2",outcome="success"} 1"#));
//! assert!(text.contains(r#"breaker_state{breaker="ec2",state="closed"} 1"#));
//! ```

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::{BreakerRegistry, BulkheadStats, CircuitBreaker, State, Stats};

/// Gauge: 1 for the breaker's current state, 0 for every other state.
pub const STATE: &str = "breaker_state";
/// Counter: recorded calls by outcome.
pub const CALLS: &str = "breaker_calls";
/// Counter: calls at or over the slow-call threshold.
pub const SLOW_CALLS: &str = "breaker_slow_calls";
/// Counter: rejected calls by reason.
pub const REJECTIONS: &str = "breaker_rejections";
/// Counter: state transitions by the state entered.
pub const TRANSITIONS: &str = "breaker_transitions";
/// Gauge: calls holding a slot of a registry's bulkhead.
pub const BULKHEAD_IN_FLIGHT: &str = "bulkhead_in_flight_calls";
/// Gauge: calls waiting for a slot of a registry's bulkhead.
pub const BULKHEAD_QUEUED: &str = "bulkhead_queued_calls";
/// Gauge: the current limit of a registry's bulkhead.
pub const BULKHEAD_LIMIT: &str = "bulkhead_limit_calls";
/// Counter: calls a registry's bulkhead refused (`full`) or shed (`shed`).
pub const BULKHEAD_REJECTIONS: &str = "bulkhead_rejections";

/// Registers a collector for a fixed set of breakers.
pub fn register(registry: &mut Registry, breakers: impl IntoIterator<Item = CircuitBreaker>) {
    registry.register_collector(Box::new(BreakerCollector::new(breakers)));
}

/// A prometheus-client [`Collector`] over breakers.
#[derive(Clone)]
pub struct BreakerCollector {
    source: Source,
}

#[derive(Clone)]
enum Source {
    Fixed(Vec<CircuitBreaker>),
    Registry(BreakerRegistry),
}

impl fmt::Debug for BreakerCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self
            .breakers()
            .iter()
            .map(|b| b.name().to_owned())
            .collect();
        f.debug_struct("BreakerCollector")
            .field("breakers", &names)
            .finish()
    }
}

impl BreakerCollector {
    /// A collector over these breakers.
    pub fn new(breakers: impl IntoIterator<Item = CircuitBreaker>) -> Self {
        BreakerCollector {
            source: Source::Fixed(breakers.into_iter().collect()),
        }
    }

    /// A collector over every breaker of `registry`, including those created
    /// after it was registered.
    pub fn for_registry(registry: BreakerRegistry) -> Self {
        BreakerCollector {
            source: Source::Registry(registry),
        }
    }

    fn breakers(&self) -> Vec<CircuitBreaker> {
        match &self.source {
            Source::Fixed(breakers) => breakers.clone(),
            Source::Registry(registry) => registry.breakers(),
        }
    }
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &[(&str, &str, &str, u64)],
) -> Result<(), fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for &(breaker, key, value, count) in series {
        if key.is_empty() {
            metric
                .encode_family(&[("breaker", breaker)])?
                .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
        } else {
            metric
                .encode_family(&[("breaker", breaker), (key, value)])?
                .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
        }
    }
    Ok(())
}

impl Collector for BreakerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let breakers = self.breakers();
        let stats: Vec<(String, Stats)> = breakers
            .iter()
            .map(|b| (b.name().to_owned(), b.stats()))
            .collect();

        let mut metric = encoder.encode_descriptor(
            STATE,
            "Circuit breaker state: 1 for the current state, 0 otherwise.",
            None,
            MetricType::Gauge,
        )?;
        for (name, s) in &stats {
            for state in State::ALL {
                metric
                    .encode_family(&[("breaker", name.as_str()), ("state", state.as_str())])?
                    .encode_gauge(&i64::from(s.state == state))?;
            }
        }

        let mut calls = Vec::new();
        let mut slow = Vec::new();
        let mut rejections = Vec::new();
        let mut transitions = Vec::new();
        for (name, s) in &stats {
            let t = &s.totals;
            calls.push((name.as_str(), "outcome", "success", t.successes));
            calls.push((name.as_str(), "outcome", "failure", t.failures));
            calls.push((name.as_str(), "outcome", "neutral", t.neutral));
            slow.push((name.as_str(), "", "", t.slow));
            rejections.push((name.as_str(), "reason", "open", t.rejected_open));
            rejections.push((name.as_str(), "reason", "half_open", t.rejected_half_open));
            rejections.push((
                name.as_str(),
                "reason",
                "forced_open",
                t.rejected_forced_open,
            ));
            for state in State::ALL {
                transitions.push((name.as_str(), "to", state.as_str(), t.transitions_to(state)));
            }
        }
        counter(
            &mut encoder,
            CALLS,
            "Calls recorded through the circuit breaker, by outcome.",
            &calls,
        )?;
        counter(
            &mut encoder,
            SLOW_CALLS,
            "Calls at or over the slow-call threshold.",
            &slow,
        )?;
        counter(
            &mut encoder,
            REJECTIONS,
            "Calls the circuit breaker rejected, by reason.",
            &rejections,
        )?;
        counter(
            &mut encoder,
            TRANSITIONS,
            "Circuit breaker state transitions, by the state entered.",
            &transitions,
        )?;

        let Source::Registry(registry) = &self.source else {
            return Ok(());
        };
        let bulkheads = registry.bulkheads();
        for (metric, help, read) in [
            (
                BULKHEAD_IN_FLIGHT,
                "Calls holding a bulkhead slot.",
                (|s: &BulkheadStats| s.in_flight) as fn(&BulkheadStats) -> usize,
            ),
            (BULKHEAD_QUEUED, "Calls waiting for a bulkhead slot.", |s| {
                s.queued
            }),
            (BULKHEAD_LIMIT, "The bulkhead's current limit.", |s| s.limit),
        ] {
            let mut family = encoder.encode_descriptor(metric, help, None, MetricType::Gauge)?;
            for (name, b) in &bulkheads {
                let value = i64::try_from(read(&b.stats())).unwrap_or(i64::MAX);
                family
                    .encode_family(&[("bulkhead", name.as_str())])?
                    .encode_gauge(&value)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            BULKHEAD_REJECTIONS,
            "Calls a bulkhead refused (full) or shed for a higher priority (shed).",
            None,
            MetricType::Counter,
        )?;
        for (name, b) in &bulkheads {
            let s = b.stats();
            for (reason, count) in [("full", s.rejected), ("shed", s.shed)] {
                family
                    .encode_family(&[("bulkhead", name.as_str()), ("reason", reason)])?
                    .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
            }
        }
        Ok(())
    }
}
