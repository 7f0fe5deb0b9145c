//! Prometheus metrics (feature `metrics`) and the recorder every code path
//! calls (a no-op without the feature or without metrics set).
//!
//! One [`Metrics`] can be shared by any number of [`Idempotency`](crate::Idempotency)
//! instances (it is a set of `Arc`s): clone it into each builder and
//! register it once. Names are short and unprefixed; the binary adds its
//! prefix with `Registry::sub_registry_with_prefix`.
//!
//! | name | type | labels | counts |
//! |---|---|---|---|
//! | `executions` (`executions_total`) | counter | `outcome` = `success`, `failure`, `neutral`, `overloaded` | operations actually run |
//! | `replays` (`replays_total`) | counter | none | stored results returned without running |
//! | `coalesced_waits` (`coalesced_waits_total`) | counter | none | calls that waited for another owner's run |
//! | `in_flight_rejections` (`in_flight_rejections_total`) | counter | none | `RequestInFlight` errors (rejected, or waited too long) |
//! | `fingerprint_mismatches` (`fingerprint_mismatches_total`) | counter | none | `FingerprintMismatch` errors |
//! | `takeovers` (`takeovers_total`) | counter | none | pending keys taken over after their owner's lease ran out |
//! | `expirations` (`expirations_total`) | counter | none | entries dropped after their TTL (purged, or found expired) |
//! | `lost_leases` (`lost_leases_total`) | counter | none | owners that found their key taken over when renewing or finishing |

#[cfg(feature = "metrics")]
pub use enabled::*;

#[cfg(feature = "metrics")]
mod enabled {
    use keel_core::Outcome;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::registry::Registry;

    /// Counter of operations run, by `outcome`.
    pub const EXECUTIONS: &str = "executions";
    /// Counter of stored results replayed.
    pub const REPLAYS: &str = "replays";
    /// Counter of calls that waited for an in-flight run.
    pub const COALESCED_WAITS: &str = "coalesced_waits";
    /// Counter of in-flight rejections.
    pub const IN_FLIGHT_REJECTIONS: &str = "in_flight_rejections";
    /// Counter of fingerprint mismatches.
    pub const FINGERPRINT_MISMATCHES: &str = "fingerprint_mismatches";
    /// Counter of lease takeovers.
    pub const TAKEOVERS: &str = "takeovers";
    /// Counter of expired entries.
    pub const EXPIRATIONS: &str = "expirations";
    /// Counter of owners that lost their lease.
    pub const LOST_LEASES: &str = "lost_leases";

    type OutcomeLabel = [(&'static str, &'static str); 1];

    /// The idempotency counters. Cloning shares the same series.
    ///
    /// Recording costs one relaxed atomic add per event.
    #[derive(Debug, Clone)]
    pub struct Metrics {
        executions: Family<OutcomeLabel, Counter>,
        by_outcome: [Counter; 4],
        pub(crate) replays: Counter,
        pub(crate) coalesced_waits: Counter,
        pub(crate) in_flight_rejections: Counter,
        pub(crate) fingerprint_mismatches: Counter,
        pub(crate) takeovers: Counter,
        pub(crate) expirations: Counter,
        pub(crate) lost_leases: Counter,
    }

    impl Default for Metrics {
        fn default() -> Self {
            Self::new()
        }
    }

    const OUTCOMES: [&str; 4] = ["success", "failure", "neutral", "overloaded"];

    impl Metrics {
        /// Fresh, unregistered counters.
        pub fn new() -> Self {
            let executions: Family<OutcomeLabel, Counter> = Family::default();
            let by_outcome = OUTCOMES.map(|o| executions.get_or_create(&[("outcome", o)]).clone());
            Metrics {
                executions,
                by_outcome,
                replays: Counter::default(),
                coalesced_waits: Counter::default(),
                in_flight_rejections: Counter::default(),
                fingerprint_mismatches: Counter::default(),
                takeovers: Counter::default(),
                expirations: Counter::default(),
                lost_leases: Counter::default(),
            }
        }

        /// Registers every counter in `registry` under its short name.
        pub fn register(&self, registry: &mut Registry) {
            registry.register(
                EXECUTIONS,
                "Operations run under an idempotency key, by outcome",
                self.executions.clone(),
            );
            registry.register(
                REPLAYS,
                "Stored results returned without running the operation",
                self.replays.clone(),
            );
            registry.register(
                COALESCED_WAITS,
                "Calls that waited for another owner's run of the same key",
                self.coalesced_waits.clone(),
            );
            registry.register(
                IN_FLIGHT_REJECTIONS,
                "Calls rejected because the key was in flight",
                self.in_flight_rejections.clone(),
            );
            registry.register(
                FINGERPRINT_MISMATCHES,
                "Keys reused with a different request fingerprint",
                self.fingerprint_mismatches.clone(),
            );
            registry.register(
                TAKEOVERS,
                "Pending keys taken over after their owner's lease ran out",
                self.takeovers.clone(),
            );
            registry.register(
                EXPIRATIONS,
                "Entries dropped after their TTL ran out",
                self.expirations.clone(),
            );
            registry.register(
                LOST_LEASES,
                "Owners that found their key taken over",
                self.lost_leases.clone(),
            );
        }

        /// The number of operations run with `outcome` so far.
        pub fn executions(&self, outcome: Outcome) -> u64 {
            self.by_outcome[index(outcome)].get()
        }

        /// Replays so far.
        pub fn replays(&self) -> u64 {
            self.replays.get()
        }

        /// Coalesced waits so far.
        pub fn coalesced_waits(&self) -> u64 {
            self.coalesced_waits.get()
        }

        /// In-flight rejections so far.
        pub fn in_flight_rejections(&self) -> u64 {
            self.in_flight_rejections.get()
        }

        /// Fingerprint mismatches so far.
        pub fn fingerprint_mismatches(&self) -> u64 {
            self.fingerprint_mismatches.get()
        }

        /// Takeovers so far.
        pub fn takeovers(&self) -> u64 {
            self.takeovers.get()
        }

        /// Expirations so far.
        pub fn expirations(&self) -> u64 {
            self.expirations.get()
        }

        /// Lost leases so far.
        pub fn lost_leases(&self) -> u64 {
            self.lost_leases.get()
        }

        pub(crate) fn executed(&self, outcome: Outcome) {
            self.by_outcome[index(outcome)].inc();
        }
    }

    fn index(outcome: Outcome) -> usize {
        match outcome {
            Outcome::Success => 0,
            Outcome::Failure => 1,
            Outcome::Neutral => 2,
            Outcome::Overloaded { .. } => 3,
        }
    }
}

/// What the executor records; compiled to nothing without the feature.
#[derive(Debug, Clone, Default)]
pub(crate) struct Recorder {
    #[cfg(feature = "metrics")]
    pub(crate) metrics: Option<Metrics>,
}

macro_rules! count {
    ($name:ident) => {
        #[inline]
        pub(crate) fn $name(&self) {
            #[cfg(feature = "metrics")]
            if let Some(m) = &self.metrics {
                m.$name.inc();
            }
        }
    };
}

impl Recorder {
    count!(replays);
    count!(coalesced_waits);
    count!(in_flight_rejections);
    count!(fingerprint_mismatches);
    count!(takeovers);
    count!(lost_leases);

    #[inline]
    pub(crate) fn executed(&self, outcome: keel_core::Outcome) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.executed(outcome);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = outcome;
    }

    #[inline]
    pub(crate) fn expirations(&self, n: u64) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.expirations.inc_by(n);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = n;
    }
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    #[test]
    fn registers_short_names_with_total_suffix() {
        let metrics = Metrics::new();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let recorder = Recorder {
            metrics: Some(metrics.clone()),
        };
        recorder.executed(keel_core::Outcome::Success);
        recorder.replays();
        recorder.expirations(3);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("executions_total{outcome=\"success\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("executions_total{outcome=\"failure\"} 0"),
            "{text}"
        );
        assert!(text.contains("replays_total 1"), "{text}");
        assert!(text.contains("expirations_total 3"), "{text}");
        assert!(text.contains("takeovers_total 0"), "{text}");
        assert_eq!(metrics.replays(), 1);
    }
}
