//! Enrichment modes and LLM classification (issue 19).
//!
//! * The mode (`transparent`, `enriched`, `transparent_with_recommendations`)
//!   is resolved at every read in the order Redis key → memory (set by
//!   `POST /enrichment/mode`) → `ENRICHMENT_MODE` → `enriched`; with Redis a
//!   change is seen by every replica at its next read. A Redis error falls
//!   back to memory/env and is reported, never failing a webhook.
//! * A classification is one OpenAI-compatible chat-completions call (`llm`:
//!   deadline, retry honouring `Retry-After`, breaker `llm`), validated as
//!   the strict JSON `{severity, confidence, reasoning, recommendations}`;
//!   an invalid answer is a failure, counted, and nothing is stored.
//! * [`Enrichment::classify_bounded`] looks in the cache (`cache`: Redis or
//!   in-process, TTL `CLASSIFICATION_CACHE_TTL_SECONDS`), then the stored
//!   classification (`db`, younger than the TTL), then asks the LLM once per
//!   fingerprint however many callers wait (single flight). A caller waits
//!   at most its bound; the call goes on in the background and stores its
//!   answer when it comes.
//! * Without `LLM_URL` classification is off: `enriched` behaves as
//!   `transparent` ([`Enrichment::mode`]) and the endpoints say so.

mod api;
mod cache;
mod db;
mod llm;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

pub(crate) use api::classification_json;
pub use api::routes;
pub(crate) use db::{get_many as stored_many, recent_with_recommendations};

use crate::routing::{AlertView, Classification};
use crate::store::{EventRow, HistoryQuery, Store};
use cache::{Cache, MemoryCache, RedisConn};
use llm::{CallFailure, Llm};

/// The Redis key (after `REDIS_KEY_PREFIX`) holding the mode.
pub const MODE_KEY: &str = "enrichment:mode";

/// What the service does with each alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum EnrichmentMode {
    /// Store, filter, publish; no LLM.
    #[value(name = "transparent")]
    Transparent,
    /// Classify, then filter and publish.
    #[value(name = "enriched")]
    Enriched,
    /// Publish without filtering; the LLM's recommendations are attached to
    /// the stored alert and the dashboard.
    #[value(name = "transparent_with_recommendations")]
    TransparentWithRecommendations,
}

impl EnrichmentMode {
    /// The name on the wire, in Redis and in `ENRICHMENT_MODE`.
    pub fn as_str(self) -> &'static str {
        match self {
            EnrichmentMode::Transparent => "transparent",
            EnrichmentMode::Enriched => "enriched",
            EnrichmentMode::TransparentWithRecommendations => "transparent_with_recommendations",
        }
    }

    /// Parses [`EnrichmentMode::as_str`]'s names.
    pub fn parse(s: &str) -> Option<EnrichmentMode> {
        match s.trim() {
            "transparent" => Some(EnrichmentMode::Transparent),
            "enriched" => Some(EnrichmentMode::Enriched),
            "transparent_with_recommendations" => {
                Some(EnrichmentMode::TransparentWithRecommendations)
            }
            _ => None,
        }
    }
}

/// Where the mode in effect came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeSource {
    /// The Redis key (shared by every replica).
    Redis,
    /// Set by `POST /enrichment/mode` on this replica.
    Memory,
    /// `ENRICHMENT_MODE`.
    Env,
    /// Nothing set: `enriched`.
    Default,
}

impl ModeSource {
    /// `redis`, `memory`, `env` or `default`.
    pub fn as_str(self) -> &'static str {
        match self {
            ModeSource::Redis => "redis",
            ModeSource::Memory => "memory",
            ModeSource::Env => "env",
            ModeSource::Default => "default",
        }
    }
}

/// The mode as resolved now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeReading {
    /// The selected mode.
    pub mode: EnrichmentMode,
    /// Where it came from.
    pub source: ModeSource,
    /// Redis is configured but could not be read (the mode fell back).
    pub redis_error: Option<String>,
}

/// `ENRICHMENT_MODE` and the LLM settings.
#[derive(Debug, Clone, clap::Args)]
pub struct ClassifyArgs {
    /// What to do with each alert: `transparent` (store, filter, publish; no
    /// LLM), `enriched` (classify, then filter and publish) or
    /// `transparent_with_recommendations` (publish without filtering, with
    /// the LLM's recommendations on the stored alert). Unset: `enriched`.
    /// `POST /enrichment/mode` overrides it (in Redis when `REDIS_URL` is
    /// set, so every replica follows).
    #[arg(long, env = "ENRICHMENT_MODE", value_enum)]
    pub enrichment_mode: Option<EnrichmentMode>,

    /// Base URL of an OpenAI-compatible API (`https://api.openai.com/v1`);
    /// requests go to `{LLM_URL}/chat/completions`. Unset: classification
    /// is off and `enriched` behaves as `transparent`.
    #[arg(long, env = "LLM_URL")]
    pub llm_url: Option<String>,

    /// Bearer token sent to the LLM API.
    #[arg(long, env = "LLM_API_KEY", hide_env_values = true)]
    pub llm_api_key: Option<String>,

    /// The model asked.
    #[arg(long, env = "LLM_MODEL", default_value = "gpt-4o-mini")]
    pub llm_model: String,

    /// Seconds one LLM request may take.
    #[arg(long, env = "LLM_TIMEOUT_SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    pub llm_timeout_seconds: u64,

    /// Retries of a failed LLM request (connection errors, 5xx, 429 after
    /// its `Retry-After`).
    #[arg(long, env = "LLM_MAX_RETRIES", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(0..=10))]
    pub llm_max_retries: u32,

    /// Seconds a classification is reused for the same fingerprint.
    #[arg(long, env = "CLASSIFICATION_CACHE_TTL_SECONDS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..=2_592_000))]
    pub classification_cache_ttl_seconds: u64,

    /// Redis (`redis://host:6379/0`) for the shared mode and the
    /// classification cache. Unset: memory (per replica).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key this service writes.
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "alert-history:")]
    pub redis_key_prefix: String,

    /// Milliseconds publishing waits for a classification before the alert
    /// goes out unclassified (the call goes on and is stored when it ends).
    #[arg(long, env = "CLASSIFY_BOUND_MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub classify_bound_ms: u64,
}

impl Default for ClassifyArgs {
    fn default() -> Self {
        ClassifyArgs {
            enrichment_mode: None,
            llm_url: None,
            llm_api_key: None,
            llm_model: "gpt-4o-mini".to_owned(),
            llm_timeout_seconds: 30,
            llm_max_retries: 2,
            classification_cache_ttl_seconds: 3600,
            redis_url: None,
            redis_key_prefix: "alert-history:".to_owned(),
            classify_bound_ms: 2000,
        }
    }
}

impl ClassifyArgs {
    /// Checks the settings without side effects.
    ///
    /// # Errors
    /// The first invalid variable.
    pub fn validate(&self) -> Result<(), keel_core::ConfigError> {
        let bad = |variable: &'static str, reason: String| {
            Err(keel_core::ConfigError::new(variable, reason))
        };
        if let Some(url) = &self.llm_url {
            match reqwest::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                Ok(u) => {
                    return bad(
                        "LLM_URL",
                        format!("must be an http(s) URL with a host, not {:?}", u.scheme()),
                    );
                }
                Err(e) => return bad("LLM_URL", format!("not a URL: {e}")),
            }
        }
        if let Some(key) = &self.llm_api_key {
            if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return bad("LLM_API_KEY", "must be non-empty without spaces".into());
            }
            if self.llm_url.is_none() {
                return bad("LLM_API_KEY", "is set but LLM_URL is not".into());
            }
        }
        if self.llm_model.trim().is_empty() {
            return bad("LLM_MODEL", "must not be empty".into());
        }
        if !(1..=600).contains(&self.llm_timeout_seconds) {
            return bad("LLM_TIMEOUT_SECONDS", "must be between 1 and 600".into());
        }
        if self.llm_max_retries > 10 {
            return bad("LLM_MAX_RETRIES", "must be between 0 and 10".into());
        }
        if !(1..=2_592_000).contains(&self.classification_cache_ttl_seconds) {
            return bad(
                "CLASSIFICATION_CACHE_TTL_SECONDS",
                "must be between 1 and 2592000 (30 days)".into(),
            );
        }
        if !(1..=600_000).contains(&self.classify_bound_ms) {
            return bad("CLASSIFY_BOUND_MS", "must be between 1 and 600000".into());
        }
        if let Some(url) = &self.redis_url
            && let Err(e) = redis::Client::open(url.as_str())
        {
            return bad("REDIS_URL", format!("not a Redis URL: {e}"));
        }
        if self
            .redis_key_prefix
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return bad("REDIS_KEY_PREFIX", "must not contain spaces".into());
        }
        Ok(())
    }
}

/// The counters behind `GET /classification/stats`, also served on
/// `/metrics` (each event is counted here only).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) cache_hits: Counter,
    pub(crate) cache_misses: Counter,
    pub(crate) stored_hits: Counter,
    pub(crate) llm_calls: Counter,
    pub(crate) llm_successes: Counter,
    pub(crate) llm_failures: Counter,
    pub(crate) llm_timeouts: Counter,
    pub(crate) llm_invalid: Counter,
    pub(crate) breaker_rejections: Counter,
    pub(crate) bound_exceeded: Counter,
    pub(crate) store_failures: Counter,
}

impl Counters {
    fn register(&self, registry: &mut Registry) {
        for (name, help, counter) in [
            (
                "classification_cache_hits",
                "Classifications served from the cache",
                &self.cache_hits,
            ),
            (
                "classification_cache_misses",
                "Classification cache misses",
                &self.cache_misses,
            ),
            (
                "classification_stored_hits",
                "Classifications served from the database after a cache miss",
                &self.stored_hits,
            ),
            (
                "classification_llm_calls",
                "LLM classification calls",
                &self.llm_calls,
            ),
            (
                "classification_llm_successes",
                "LLM calls that gave a valid classification",
                &self.llm_successes,
            ),
            (
                "classification_llm_failures",
                "LLM calls that gave no valid classification",
                &self.llm_failures,
            ),
            (
                "classification_llm_timeouts",
                "LLM calls cut by their timeout or deadline",
                &self.llm_timeouts,
            ),
            (
                "classification_llm_invalid_answers",
                "LLM answers that were not the strict classification JSON",
                &self.llm_invalid,
            ),
            (
                "classification_llm_breaker_rejections",
                "LLM calls refused by the open breaker",
                &self.breaker_rejections,
            ),
            (
                "classification_bound_exceeded",
                "Classifications not ready within the publishing bound",
                &self.bound_exceeded,
            ),
            (
                "classification_store_failures",
                "Classifications that could not be stored",
                &self.store_failures,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
    }
}

fn bump(c: &Counter) {
    c.inc();
}

type Flight = Shared<BoxFuture<'static, Option<Classification>>>;

struct State {
    env_mode: Option<EnrichmentMode>,
    memory_mode: Mutex<Option<EnrichmentMode>>,
    redis: Option<RedisConn>,
    llm: Option<Llm>,
    cache: Cache,
    store: Option<Store>,
    bound: Duration,
    /// The longest a whole LLM call may take (its pipeline's deadline).
    call_limit: Duration,
    ttl: Duration,
    inflight: Mutex<HashMap<String, Flight>>,
    /// Lookups started by [`Enrichment::classify_bounded`] and not ended.
    pending: AtomicUsize,
    /// Notified whenever a lookup ends ([`Enrichment::settle`]).
    idle: tokio::sync::Notify,
    counters: Counters,
}

/// One running lookup, counted in [`State::pending`] until dropped.
struct Pending(Arc<State>);

impl Pending {
    fn start(state: &Arc<State>) -> Pending {
        state.pending.fetch_add(1, Ordering::SeqCst);
        Pending(state.clone())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::SeqCst);
        self.0.idle.notify_waiters();
    }
}

/// The enrichment mode and the classifier, shared by every request.
/// Cloning is cheap.
#[derive(Clone)]
pub struct Enrichment {
    inner: Arc<State>,
}

impl std::fmt::Debug for Enrichment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrichment")
            .field("env_mode", &self.inner.env_mode)
            .field("llm", &self.inner.llm.as_ref().map(Llm::model))
            .field("cache", &self.inner.cache.backend())
            .field("redis", &self.inner.redis.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for Enrichment {
    /// Memory mode store, the default mode, no LLM, no database.
    fn default() -> Self {
        let args = ClassifyArgs::default();
        Enrichment::build(&args, None, None, None)
    }
}

impl Enrichment {
    fn build(
        args: &ClassifyArgs,
        llm: Option<Llm>,
        redis: Option<RedisConn>,
        store: Option<Store>,
    ) -> Enrichment {
        let cache = match &redis {
            Some(r) => Cache::Redis(r.clone()),
            None => Cache::Memory(MemoryCache::new(cache::MEMORY_CACHE_MAX)),
        };
        let timeout = Duration::from_secs(args.llm_timeout_seconds);
        Enrichment {
            inner: Arc::new(State {
                env_mode: args.enrichment_mode,
                memory_mode: Mutex::new(None),
                redis,
                llm,
                cache,
                store,
                bound: Duration::from_millis(args.classify_bound_ms),
                call_limit: timeout * (args.llm_max_retries + 2) + Duration::from_secs(30),
                ttl: Duration::from_secs(args.classification_cache_ttl_seconds),
                inflight: Mutex::new(HashMap::new()),
                pending: AtomicUsize::new(0),
                idle: tokio::sync::Notify::new(),
                counters: Counters::default(),
            }),
        }
    }

    /// The enrichment of the configuration: the LLM client when `LLM_URL` is
    /// set, Redis (contacted lazily: a Redis that is down does not stop the
    /// start) when `REDIS_URL` is set, classifications stored in `store`.
    ///
    /// # Errors
    /// [`crate::Error::Config`] naming the variable.
    pub async fn from_config(
        args: &ClassifyArgs,
        store: &Store,
    ) -> Result<Enrichment, crate::Error> {
        args.validate()?;
        let llm = match &args.llm_url {
            Some(url) => Some(Llm::new(
                url,
                args.llm_api_key.clone(),
                args.llm_model.clone(),
                Duration::from_secs(args.llm_timeout_seconds),
                args.llm_max_retries,
            )?),
            None => None,
        };
        let redis = match &args.redis_url {
            Some(url) => Some(RedisConn::new(url, &args.redis_key_prefix)?),
            None => None,
        };
        if llm.is_none() {
            tracing::info!(
                "LLM_URL is not set: classification is off, enriched behaves as transparent"
            );
        }
        Ok(Enrichment::build(args, llm, redis, Some(store.clone())))
    }

    /// Whether an LLM is configured.
    pub fn classification_enabled(&self) -> bool {
        self.inner.llm.is_some()
    }

    /// Resolves the selected mode: Redis key → memory → `ENRICHMENT_MODE`
    /// → `enriched`.
    pub async fn mode_reading(&self) -> ModeReading {
        let mut redis_error = None;
        if let Some(redis) = &self.inner.redis {
            match redis.get(&redis.key(MODE_KEY)).await {
                Ok(Some(value)) => match EnrichmentMode::parse(&value) {
                    Some(mode) => {
                        return ModeReading {
                            mode,
                            source: ModeSource::Redis,
                            redis_error: None,
                        };
                    }
                    None => {
                        redis_error =
                            Some(format!("the Redis key holds an unknown mode {value:?}"));
                    }
                },
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "reading the enrichment mode from Redis failed");
                    redis_error = Some(e);
                }
            }
        }
        let (mode, source) = match (*self.inner.memory_mode.lock(), self.inner.env_mode) {
            (Some(m), _) => (m, ModeSource::Memory),
            (None, Some(m)) => (m, ModeSource::Env),
            (None, None) => (EnrichmentMode::Enriched, ModeSource::Default),
        };
        ModeReading {
            mode,
            source,
            redis_error,
        }
    }

    /// The mode in effect for the next alert: the selected mode, except
    /// that `enriched` without an LLM behaves as `transparent`.
    pub async fn mode(&self) -> EnrichmentMode {
        effective(
            self.mode_reading().await.mode,
            self.classification_enabled(),
        )
    }

    /// Selects `mode`: in Redis when configured (every replica follows at
    /// once) and in this replica's memory. Returns where it was written.
    ///
    /// # Errors
    /// Redis is configured and the write failed (nothing changed: a change
    /// only this replica saw would split the fleet).
    pub async fn set_mode(&self, mode: EnrichmentMode) -> Result<ModeSource, String> {
        let source = match &self.inner.redis {
            Some(redis) => {
                redis.set(&redis.key(MODE_KEY), mode.as_str(), None).await?;
                ModeSource::Redis
            }
            None => ModeSource::Memory,
        };
        *self.inner.memory_mode.lock() = Some(mode);
        tracing::info!(
            mode = mode.as_str(),
            source = source.as_str(),
            "enrichment mode set"
        );
        Ok(source)
    }

    /// How long publishing waits for a classification (`CLASSIFY_BOUND_MS`).
    pub fn bound(&self) -> Duration {
        self.inner.bound
    }

    /// The stored classification of `fingerprint` (`None` without one, or
    /// when the database cannot be read).
    pub async fn stored(&self, fingerprint: &str) -> Option<Classification> {
        let store = self.inner.store.as_ref()?;
        match db::get(store, fingerprint).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "reading a classification failed");
                None
            }
        }
    }

    /// The classification of `alert`, waiting at most `bound`: from the
    /// cache, else the stored one (younger than the TTL), else the LLM (one
    /// call per fingerprint however many callers wait). `None` when the LLM
    /// is off, fails, or takes longer than `bound`. The lookup runs in its
    /// own task: past the bound (even a zero bound, which only starts it)
    /// it goes on, asks the LLM if needed, and stores the answer when it
    /// arrives.
    pub async fn classify_bounded(
        &self,
        alert: &AlertView,
        bound: Duration,
    ) -> Option<Classification> {
        self.inner.llm.as_ref()?;
        let this = self.clone();
        let view = alert.clone();
        let pending = Pending::start(&self.inner);
        let lookup = tokio::spawn(async move {
            let _pending = pending;
            match this.reuse(&view.fingerprint).await {
                Some(c) => Some(c),
                None => this.flight(&view).await,
            }
        });
        match tokio::time::timeout(bound, lookup).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "classification task failed");
                None
            }
            Err(_) => {
                bump(&self.inner.counters.bound_exceeded);
                tracing::debug!(fingerprint = %alert.fingerprint, bound_ms = bound.as_millis() as u64, "classification not ready within the bound");
                None
            }
        }
    }

    /// The cached classification, else the stored one younger than the
    /// TTL (then cached).
    async fn reuse(&self, fingerprint: &str) -> Option<Classification> {
        let s = &self.inner;
        if let Some(c) = s.cache.get(fingerprint).await {
            bump(&s.counters.cache_hits);
            return Some(c);
        }
        bump(&s.counters.cache_misses);
        let c = self.stored(fingerprint).await?;
        let age = chrono::Utc::now().timestamp_millis() - c.classified_at_ms;
        if age < 0 || age as u128 >= s.ttl.as_millis() {
            return None;
        }
        bump(&s.counters.stored_hits);
        let left = s.ttl - Duration::from_millis(age as u64);
        s.cache.put(fingerprint, &c, left).await;
        Some(c)
    }

    /// The LLM call for `alert`'s fingerprint: joins the one in flight or
    /// starts one, driven by its own task so that it finishes (and stores
    /// its answer) even when every caller stopped waiting.
    fn flight(&self, alert: &AlertView) -> Flight {
        let mut inflight = self.inner.inflight.lock();
        if let Some(f) = inflight.get(&alert.fingerprint) {
            return f.clone();
        }
        let this = self.clone();
        let view = alert.clone();
        let future = async move {
            let result = this.call_llm(&view).await;
            this.inner.inflight.lock().remove(&view.fingerprint);
            result
        }
        .boxed()
        .shared();
        inflight.insert(alert.fingerprint.clone(), future.clone());
        tokio::spawn(future.clone());
        future
    }

    /// One LLM call; a valid answer is stored and cached.
    async fn call_llm(&self, alert: &AlertView) -> Option<Classification> {
        let s = &self.inner;
        let llm = s.llm.as_ref()?;
        bump(&s.counters.llm_calls);
        match llm
            .classify(alert, chrono::Utc::now().timestamp_millis())
            .await
        {
            Ok(c) => {
                bump(&s.counters.llm_successes);
                if let Some(store) = &s.store
                    && let Err(e) = db::upsert(store, &alert.fingerprint, &c).await
                {
                    bump(&s.counters.store_failures);
                    tracing::warn!(error = %e, fingerprint = %alert.fingerprint, "storing a classification failed");
                }
                s.cache.put(&alert.fingerprint, &c, s.ttl).await;
                tracing::debug!(fingerprint = %alert.fingerprint, severity = c.severity.as_str(), "alert classified");
                Some(c)
            }
            Err(failure) => {
                bump(&s.counters.llm_failures);
                match &failure {
                    CallFailure::Invalid(_) => bump(&s.counters.llm_invalid),
                    CallFailure::Timeout => bump(&s.counters.llm_timeouts),
                    CallFailure::BreakerOpen => bump(&s.counters.breaker_rejections),
                    CallFailure::Failed(_) => {}
                }
                tracing::warn!(fingerprint = %alert.fingerprint, error = %failure, "classification failed");
                None
            }
        }
    }

    /// Classifies `alert` now, bypassing the cache and the stored answer
    /// (`POST /classification/refresh`): `None` when off or failed.
    pub(crate) async fn refresh(&self, alert: &AlertView) -> Option<Classification> {
        self.inner.llm.as_ref()?;
        self.inner.cache.remove(&alert.fingerprint).await;
        let limit = self.inner.call_limit;
        tokio::time::timeout(limit, self.flight(alert))
            .await
            .ok()
            .flatten()
    }

    /// [`Enrichment::classify_bounded`] bounded by the whole LLM call's
    /// deadline (bulk classification).
    pub(crate) async fn classify_unbounded(&self, alert: &AlertView) -> Option<Classification> {
        self.classify_bounded(alert, self.inner.call_limit).await
    }

    /// Waits for every LLM call in flight to end (tests, shutdown).
    pub async fn settle(&self) {
        loop {
            let idle = self.inner.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            let flights: Vec<Flight> = self.inner.inflight.lock().values().cloned().collect();
            if !flights.is_empty() {
                futures::future::join_all(flights).await;
            } else if self.inner.pending.load(Ordering::SeqCst) > 0 {
                idle.await;
            } else {
                return;
            }
        }
    }

    /// Registers the classification counters (`classification_*`).
    pub fn register_metrics(&self, registry: &mut Registry) {
        self.inner.counters.register(registry);
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    pub(crate) fn cache_backend(&self) -> &'static str {
        self.inner.cache.backend()
    }

    pub(crate) fn llm_info(&self) -> Option<(&str, &'static str)> {
        self.inner
            .llm
            .as_ref()
            .map(|l| (l.model(), l.breaker_state()))
    }

    pub(crate) fn redis_configured(&self) -> bool {
        self.inner.redis.is_some()
    }

    pub(crate) fn ttl(&self) -> Duration {
        self.inner.ttl
    }
}

/// The stored classification of `fingerprint` as JSON (`null` without
/// one): the alert timeline's `classification`.
///
/// # Errors
/// The database error.
pub(crate) async fn stored_json(
    store: &Store,
    fingerprint: &str,
) -> Result<serde_json::Value, sqlx::Error> {
    Ok(db::get(store, fingerprint)
        .await?
        .map_or(serde_json::Value::Null, |c| {
            classification_json(fingerprint, &c)
        }))
}

/// `mode`, except that `enriched` without an LLM behaves as `transparent`.
pub(crate) fn effective(mode: EnrichmentMode, llm: bool) -> EnrichmentMode {
    match mode {
        EnrichmentMode::Enriched if !llm => EnrichmentMode::Transparent,
        m => m,
    }
}

/// The latest stored event of `fingerprint` as an [`AlertView`].
pub(crate) async fn latest_view(
    store: &Store,
    fingerprint: &str,
) -> Result<Option<AlertView>, sqlx::Error> {
    let rows = store
        .history(&HistoryQuery {
            fingerprint: Some(fingerprint.to_owned()),
            limit: 1,
            ..HistoryQuery::default()
        })
        .await?;
    Ok(rows.into_iter().next().map(|r| view_of(&r)))
}

fn view_of(r: &EventRow) -> AlertView {
    AlertView {
        event_id: r.id,
        fingerprint: r.fingerprint.clone(),
        alertname: r.alertname.clone(),
        namespace: r.namespace.clone(),
        severity: r.severity.clone(),
        status: crate::model::Status::parse(&r.status).unwrap_or(crate::model::Status::Firing),
        starts_at: r.starts_at,
        ends_at: r.ends_at,
        labels: r.labels.0.clone(),
        annotations: r.annotations.0.clone(),
        generator_url: r.generator_url.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_args_equal_clap_defaults_and_are_valid() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: ClassifyArgs,
        }
        let parsed = Cli::try_parse_from(["x"]).unwrap().args;
        let default = ClassifyArgs::default();
        assert_eq!(format!("{parsed:?}"), format!("{default:?}"));
        default.validate().unwrap();
        let parsed =
            Cli::try_parse_from(["x", "--enrichment-mode", "transparent_with_recommendations"])
                .unwrap()
                .args;
        assert_eq!(
            parsed.enrichment_mode,
            Some(EnrichmentMode::TransparentWithRecommendations)
        );
    }

    #[test]
    fn invalid_settings_name_their_variable() {
        type Change = Box<dyn Fn(&mut ClassifyArgs)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "LLM_URL",
                Box::new(|a| a.llm_url = Some("not a url".into())),
            ),
            (
                "LLM_URL",
                Box::new(|a| a.llm_url = Some("ftp://x/v1".into())),
            ),
            (
                "LLM_API_KEY",
                Box::new(|a| a.llm_api_key = Some("k".into())),
            ),
            ("LLM_MODEL", Box::new(|a| a.llm_model = " ".into())),
            (
                "LLM_TIMEOUT_SECONDS",
                Box::new(|a| a.llm_timeout_seconds = 0),
            ),
            ("LLM_MAX_RETRIES", Box::new(|a| a.llm_max_retries = 11)),
            (
                "CLASSIFICATION_CACHE_TTL_SECONDS",
                Box::new(|a| a.classification_cache_ttl_seconds = 0),
            ),
            ("CLASSIFY_BOUND_MS", Box::new(|a| a.classify_bound_ms = 0)),
            (
                "REDIS_URL",
                Box::new(|a| a.redis_url = Some("http://x".into())),
            ),
        ];
        for (variable, change) in cases {
            let mut args = ClassifyArgs::default();
            change(&mut args);
            let err = args.validate().unwrap_err().to_string();
            assert!(err.contains(variable), "{variable}: {err}");
        }
    }

    #[tokio::test]
    async fn the_default_is_enriched_behaving_as_transparent_without_an_llm() {
        let e = Enrichment::default();
        let r = e.mode_reading().await;
        assert_eq!(
            (r.mode, r.source),
            (EnrichmentMode::Enriched, ModeSource::Default)
        );
        assert_eq!(e.mode().await, EnrichmentMode::Transparent);
        e.set_mode(EnrichmentMode::TransparentWithRecommendations)
            .await
            .unwrap();
        let r = e.mode_reading().await;
        assert_eq!(
            (r.mode, r.source),
            (
                EnrichmentMode::TransparentWithRecommendations,
                ModeSource::Memory
            )
        );
    }
}
