//! Configuration: defaults, the builder and its validation.

use std::time::Duration;

use crate::error::ConfigError;
use crate::executor::Idempotency;
use crate::store::IdempotencyStore;

/// How long entries live by default: 24 hours, as Stripe keeps keys.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// How long an owner's claim holds without a heartbeat: 30 seconds.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// How often a running owner renews its lease: every 10 seconds (a third of
/// the default lease, so two heartbeats may be lost before a takeover).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);
/// How long a caller waits for an in-flight run by default: 60 seconds.
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(60);

/// What a call does when another owner is running the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InFlightPolicy {
    /// Wait for the running owner's result and return it (coalescing), for
    /// at most `timeout`; then fail with
    /// [`RequestInFlight`](crate::RequestInFlight) (`waited: true`). If the
    /// owner's lease runs out meanwhile, the waiter takes over.
    Wait {
        /// The longest this call waits.
        timeout: Duration,
    },
    /// Fail at once with [`RequestInFlight`](crate::RequestInFlight).
    Reject,
}

impl Default for InFlightPolicy {
    fn default() -> Self {
        InFlightPolicy::Wait {
            timeout: DEFAULT_WAIT_TIMEOUT,
        }
    }
}

impl InFlightPolicy {
    pub(crate) fn validate(&self, field: &'static str) -> Result<(), ConfigError> {
        match self {
            InFlightPolicy::Wait { timeout } if timeout.is_zero() => Err(ConfigError::new(
                field,
                "the wait timeout must be greater than zero (use InFlightPolicy::Reject not to wait)",
            )),
            _ => Ok(()),
        }
    }
}

/// Builds an [`Idempotency`]; every setter's value is checked by
/// [`Builder::build`], which names the offending field.
#[derive(Debug)]
#[must_use]
pub struct Builder<S> {
    pub(crate) store: S,
    pub(crate) ttl: Duration,
    pub(crate) lease: Duration,
    pub(crate) heartbeat: Option<Duration>,
    pub(crate) in_flight: InFlightPolicy,
    pub(crate) seed: Option<u64>,
    #[cfg(feature = "metrics")]
    pub(crate) metrics: Option<crate::metrics::Metrics>,
}

impl<S: IdempotencyStore> Builder<S> {
    pub(crate) fn new(store: S) -> Self {
        Builder {
            store,
            ttl: DEFAULT_TTL,
            lease: DEFAULT_LEASE,
            heartbeat: None,
            in_flight: InFlightPolicy::default(),
            seed: None,
            #[cfg(feature = "metrics")]
            metrics: None,
        }
    }

    /// How long finished entries are kept (default [`DEFAULT_TTL`]); calls
    /// may override it. Must be positive and at least the lease.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long an owner's claim holds without a heartbeat before another
    /// caller may take the key over (default [`DEFAULT_LEASE`]). Shorter
    /// leases recover faster from a crashed owner but need more frequent
    /// heartbeats. Must be positive.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How often a running owner renews its lease (default: a third of the
    /// lease). Must be positive and shorter than the lease.
    pub fn heartbeat(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = Some(heartbeat);
        self
    }

    /// What calls do when the key is in flight elsewhere, unless they say
    /// otherwise (default: wait up to [`DEFAULT_WAIT_TIMEOUT`]).
    pub fn in_flight(mut self, policy: InFlightPolicy) -> Self {
        self.in_flight = policy;
        self
    }

    /// Seeds the random part of owner ids (for reproducible tests).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Counts executions, replays, waits, rejections, mismatches, takeovers
    /// and expirations in `metrics`.
    #[cfg(feature = "metrics")]
    pub fn metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Checks the configuration and builds.
    pub fn build(self) -> Result<Idempotency<S>, ConfigError> {
        if self.ttl.is_zero() {
            return Err(ConfigError::new("ttl", "must be greater than zero"));
        }
        if self.lease.is_zero() {
            return Err(ConfigError::new("lease", "must be greater than zero"));
        }
        if self.ttl < self.lease {
            return Err(ConfigError::new(
                "ttl",
                format!("must be at least the lease ({:?})", self.lease),
            ));
        }
        let heartbeat = self.heartbeat.unwrap_or(self.lease / 3);
        if heartbeat.is_zero() || heartbeat >= self.lease {
            return Err(ConfigError::new(
                "heartbeat",
                format!(
                    "must be greater than zero and shorter than the lease ({:?})",
                    self.lease
                ),
            ));
        }
        self.in_flight.validate("in_flight")?;
        Ok(Idempotency::from_builder(self, heartbeat))
    }
}

impl Builder<crate::MemoryStore> {
    /// Reads leases and TTLs from `clock` instead of tokio's (see
    /// [`MemoryStore::with_clock`](crate::MemoryStore::with_clock)): hand it
    /// the clock the rest of the program uses. Redis and PostgreSQL keep
    /// time on their servers, so their builders have no clock.
    pub fn clock(mut self, clock: keel_core::Clock) -> Self {
        self.store = self.store.with_clock(clock);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    fn field(b: Builder<MemoryStore>) -> String {
        b.build().unwrap_err().field().to_owned()
    }

    #[test]
    fn invalid_values_name_their_field() {
        let b = || Idempotency::builder(MemoryStore::new());
        assert_eq!(field(b().ttl(Duration::ZERO)), "ttl");
        assert_eq!(field(b().lease(Duration::ZERO)), "lease");
        assert_eq!(
            field(
                b().ttl(Duration::from_secs(1))
                    .lease(Duration::from_secs(2))
            ),
            "ttl"
        );
        assert_eq!(field(b().heartbeat(DEFAULT_LEASE)), "heartbeat");
        assert_eq!(field(b().heartbeat(Duration::ZERO)), "heartbeat");
        assert_eq!(
            field(b().in_flight(InFlightPolicy::Wait {
                timeout: Duration::ZERO
            })),
            "in_flight"
        );
        let err = b().ttl(Duration::ZERO).build().unwrap_err();
        assert_eq!(err.to_string(), "invalid `ttl`: must be greater than zero");
    }

    #[test]
    fn defaults_are_valid() {
        let idem = Idempotency::builder(MemoryStore::new()).build().unwrap();
        assert_eq!(idem.ttl(), DEFAULT_TTL);
        assert_eq!(idem.lease(), DEFAULT_LEASE);
        assert_eq!(idem.heartbeat(), DEFAULT_HEARTBEAT);
    }
}
