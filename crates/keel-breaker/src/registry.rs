use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use crate::event::BreakerListener;
use crate::{BreakerConfig, Bulkhead, CircuitBreaker, Stats};

/// Preset names used by [`BreakerRegistry::with_aws_presets`].
pub mod presets {
    /// Amazon EC2: 3 consecutive failures, 30 s open, 5 concurrent calls.
    pub const EC2: &str = "ec2";
    /// Amazon S3: 5 consecutive failures, 10 s open, 10 concurrent calls.
    pub const S3: &str = "s3";
    /// AWS SSM: 3 consecutive failures, 45 s open, 3 concurrent calls.
    pub const SSM: &str = "ssm";
    /// Amazon DynamoDB: 5 consecutive failures, 20 s open, 8 concurrent calls.
    pub const DYNAMODB: &str = "dynamodb";
}

/// Named circuit breakers and bulkheads, one per dependency, created on
/// first use.
///
/// Each name gets the configuration set for it with
/// [`configure`](Self::configure) (or a preset), else the registry's
/// default. Cloning is cheap and clones share the breakers. Looking up an
/// existing breaker takes a read lock and clones an `Arc`, so resolve the
/// breaker once per component rather than once per call on a hot path.
///
/// ```
/// use keel_breaker::{BreakerRegistry, State, presets};
///
/// let breakers = BreakerRegistry::with_aws_presets();
/// let ec2 = breakers.get(presets::EC2); // 3 failures in a row, 30 s open
/// for _ in 0..3 {
///     ec2.try_acquire().unwrap().record_failure();
/// }
/// // Every handle to "ec2" shares the state; a health endpoint reads them all.
/// assert_eq!(breakers.get("ec2").state(), State::Open);
/// assert_eq!(breakers.snapshot()["ec2"].state, State::Open);
/// // ...and the preset's bulkhead: 5 EC2 calls at once.
/// assert_eq!(breakers.bulkhead(presets::EC2).unwrap().limit(), 5);
/// assert!(breakers.bulkhead(presets::EC2).unwrap().same_as(&breakers.bulkhead("ec2").unwrap()));
/// ```
#[derive(Clone)]
pub struct BreakerRegistry {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    default: BreakerConfig,
    configs: RwLock<HashMap<String, BreakerConfig>>,
    pub(crate) breakers: RwLock<BTreeMap<String, CircuitBreaker>>,
    bulkheads: RwLock<HashMap<String, Bulkhead>>,
    listeners: RwLock<Vec<Arc<dyn BreakerListener>>>,
}

impl fmt::Debug for BreakerRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerRegistry")
            .field("breakers", &self.names())
            .finish_non_exhaustive()
    }
}

impl Default for BreakerRegistry {
    fn default() -> Self {
        Self::new(BreakerConfig::default())
    }
}

impl BreakerRegistry {
    /// A registry whose unnamed-in-advance breakers use `default_config`.
    pub fn new(default_config: BreakerConfig) -> Self {
        BreakerRegistry {
            shared: Arc::new(Shared {
                default: default_config,
                configs: RwLock::new(HashMap::new()),
                breakers: RwLock::new(BTreeMap::new()),
                bulkheads: RwLock::new(HashMap::new()),
                listeners: RwLock::new(Vec::new()),
            }),
        }
    }

    /// A registry with [`BreakerConfig::default`] and the AWS presets
    /// under [`presets::EC2`], [`presets::S3`], [`presets::SSM`] and
    /// [`presets::DYNAMODB`]: a consecutive-failures breaker and a bulkhead
    /// each (EC2 3 failures/30 s/5 calls, S3 5/10 s/10, SSM 3/45 s/3,
    /// DynamoDB 5/20 s/8).
    pub fn with_aws_presets() -> Self {
        let registry = Self::default();
        for (name, config, calls) in [
            (presets::EC2, BreakerConfig::aws_ec2(), 5),
            (presets::S3, BreakerConfig::aws_s3(), 10),
            (presets::SSM, BreakerConfig::aws_ssm(), 3),
            (presets::DYNAMODB, BreakerConfig::aws_dynamodb(), 8),
        ] {
            registry
                .shared
                .configs
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(name.to_owned(), config);
            let bulkhead = Bulkhead::builder(name)
                .max_concurrent(calls)
                .build()
                .expect("preset limits are above zero");
            registry.set_bulkhead(name, bulkhead);
        }
        registry
    }

    /// Shares `bulkhead` under `name`, so every component calling that
    /// dependency is bounded by the same slots (replacing one set before).
    pub fn set_bulkhead(&self, name: impl Into<String>, bulkhead: Bulkhead) {
        self.shared
            .bulkheads
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.into(), bulkhead);
    }

    /// Every shared bulkhead, sorted by name.
    pub fn bulkheads(&self) -> Vec<(String, Bulkhead)> {
        let mut all: Vec<(String, Bulkhead)> = self
            .shared
            .bulkheads
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(name, b)| (name.clone(), b.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The bulkhead shared under `name`, if one was set (the AWS presets
    /// set one per service).
    pub fn bulkhead(&self, name: &str) -> Option<Bulkhead> {
        self.shared
            .bulkheads
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// Adds a listener to every breaker this registry creates from now on
    /// (in addition to the listeners in each breaker's configuration).
    pub fn add_listener(&self, listener: impl BreakerListener) {
        self.shared
            .listeners
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::new(listener));
    }

    /// Sets the configuration for `name` and returns a fresh breaker built
    /// from it. If a breaker of that name existed, it is replaced: handles
    /// obtained earlier keep working but no longer share state with the
    /// registry's, so configure names before handing breakers out.
    pub fn configure(&self, name: impl Into<String>, config: BreakerConfig) -> CircuitBreaker {
        let name = name.into();
        self.shared
            .configs
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.clone(), config.clone());
        let breaker = self.build(&name, config);
        self.shared
            .breakers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name, breaker.clone());
        breaker
    }

    /// The breaker named `name`, created on first use from its
    /// configuration (or the default).
    pub fn get(&self, name: &str) -> CircuitBreaker {
        if let Some(breaker) = self
            .shared
            .breakers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
        {
            return breaker.clone();
        }
        let config = self.config_for(name);
        let mut breakers = self
            .shared
            .breakers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        breakers
            .entry(name.to_owned())
            .or_insert_with(|| self.build(name, config))
            .clone()
    }

    /// The breaker named `name` if it was already created.
    pub fn existing(&self, name: &str) -> Option<CircuitBreaker> {
        self.shared
            .breakers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// The configuration `get(name)` would use for a new breaker.
    pub fn config_for(&self, name: &str) -> BreakerConfig {
        self.shared
            .configs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
            .unwrap_or_else(|| self.shared.default.clone())
    }

    /// The names of the breakers created so far, sorted.
    pub fn names(&self) -> Vec<String> {
        self.shared
            .breakers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// The statistics (state included) of every breaker created so far,
    /// by name.
    pub fn snapshot(&self) -> BTreeMap<String, Stats> {
        self.breakers()
            .into_iter()
            .map(|b| (b.name().to_owned(), b.stats()))
            .collect()
    }

    /// Every breaker created so far, sorted by name.
    pub fn breakers(&self) -> Vec<CircuitBreaker> {
        self.shared
            .breakers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    fn build(&self, name: &str, mut config: BreakerConfig) -> CircuitBreaker {
        config.listeners.extend(
            self.shared
                .listeners
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .cloned(),
        );
        CircuitBreaker::new(name, config)
    }

    /// Registers this registry's metrics (see [`crate::metrics`]). The
    /// collector reads the breakers at scrape time, so breakers created
    /// later are included and calls pay nothing for it.
    #[cfg(feature = "metrics")]
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register_collector(Box::new(crate::metrics::BreakerCollector::for_registry(
            self.clone(),
        )));
    }
}
