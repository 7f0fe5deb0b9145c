//! Where classifications are cached per fingerprint, with a TTL: Redis
//! (shared by every replica) when `REDIS_URL` is set, a bounded in-process
//! map otherwise. A Redis error is a miss, never a failed request.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::Instant;

use crate::routing::Classification;

/// Most entries of the in-process cache.
pub(crate) const MEMORY_CACHE_MAX: usize = 10_000;

/// Longest wait for one Redis command: a Redis that does not answer must
/// not hold a webhook or a publish.
const REDIS_COMMAND_TIMEOUT: Duration = Duration::from_millis(500);

/// After a failed command, Redis is left alone this long (commands fail at
/// once): a Redis that hangs must not cost every webhook and every
/// classification its command timeout.
const REDIS_PAUSE_AFTER_ERROR: Duration = Duration::from_secs(5);

/// A Redis connection that reconnects by itself, each command bounded.
#[derive(Clone)]
pub(crate) struct RedisConn {
    conn: ConnectionManager,
    prefix: String,
    /// Until when commands fail at once, after an error.
    paused_until: std::sync::Arc<Mutex<Option<Instant>>>,
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConn")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisConn {
    /// A lazy connection to `url` (nothing is contacted until the first
    /// command, so a Redis that is down does not stop the start).
    pub(crate) fn new(url: &str, prefix: &str) -> Result<RedisConn, keel_core::ConfigError> {
        let client = redis::Client::open(url)
            .map_err(|e| keel_core::ConfigError::new("REDIS_URL", e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_COMMAND_TIMEOUT))
            .set_response_timeout(Some(REDIS_COMMAND_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| keel_core::ConfigError::new("REDIS_URL", e.to_string()))?;
        Ok(RedisConn {
            conn,
            prefix: prefix.to_owned(),
            paused_until: std::sync::Arc::default(),
        })
    }

    /// `prefix + name`.
    pub(crate) fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, String> {
        if let Some(until) = *self.paused_until.lock()
            && Instant::now() < until
        {
            return Err("Redis failed recently; retrying in a few seconds".to_owned());
        }
        let mut conn = self.conn.clone();
        let result =
            match tokio::time::timeout(REDIS_COMMAND_TIMEOUT * 2, cmd.query_async::<T>(&mut conn))
                .await
            {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("Redis did not answer in time".to_owned()),
            };
        *self.paused_until.lock() = result
            .is_err()
            .then(|| Instant::now() + REDIS_PAUSE_AFTER_ERROR);
        result
    }

    /// `GET key`.
    pub(crate) async fn get(&self, key: &str) -> Result<Option<String>, String> {
        self.run(redis::cmd("GET").arg(key)).await
    }

    /// `SET key value` (with `EX ttl` when given).
    pub(crate) async fn set(
        &self,
        key: &str,
        value: &str,
        ttl: Option<Duration>,
    ) -> Result<(), String> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value);
        if let Some(ttl) = ttl {
            cmd.arg("EX").arg(ttl.as_secs().max(1));
        }
        self.run::<()>(&cmd).await
    }

    /// `DEL key`.
    pub(crate) async fn del(&self, key: &str) -> Result<(), String> {
        self.run::<i64>(redis::cmd("DEL").arg(key))
            .await
            .map(|_| ())
    }
}

/// The classification cache.
#[derive(Debug)]
pub(crate) enum Cache {
    /// In-process, bounded, expiring by `tokio::time`.
    Memory(MemoryCache),
    /// Redis: `SET {prefix}classification:{fingerprint} <json> EX ttl`.
    Redis(RedisConn),
}

impl Cache {
    /// `"memory"` or `"redis"`.
    pub(crate) fn backend(&self) -> &'static str {
        match self {
            Cache::Memory(_) => "memory",
            Cache::Redis(_) => "redis",
        }
    }

    /// The entry, if cached and not expired.
    pub(crate) async fn get(&self, fingerprint: &str) -> Option<Classification> {
        match self {
            Cache::Memory(m) => m.get(fingerprint),
            Cache::Redis(r) => match r.get(&cache_key(r, fingerprint)).await {
                Ok(Some(json)) => serde_json::from_str(&json).ok(),
                Ok(None) => None,
                Err(e) => {
                    tracing::debug!(error = %e, "classification cache read failed (a miss)");
                    None
                }
            },
        }
    }

    /// Caches `c` for `ttl`.
    pub(crate) async fn put(&self, fingerprint: &str, c: &Classification, ttl: Duration) {
        match self {
            Cache::Memory(m) => m.put(fingerprint, c.clone(), ttl),
            Cache::Redis(r) => {
                let json = serde_json::to_string(c).unwrap_or_default();
                if let Err(e) = r.set(&cache_key(r, fingerprint), &json, Some(ttl)).await {
                    tracing::debug!(error = %e, "classification cache write failed");
                }
            }
        }
    }

    /// Forgets `fingerprint`.
    pub(crate) async fn remove(&self, fingerprint: &str) {
        match self {
            Cache::Memory(m) => m.remove(fingerprint),
            Cache::Redis(r) => {
                if let Err(e) = r.del(&cache_key(r, fingerprint)).await {
                    tracing::debug!(error = %e, "classification cache delete failed");
                }
            }
        }
    }
}

fn cache_key(r: &RedisConn, fingerprint: &str) -> String {
    r.key(&format!("classification:{fingerprint}"))
}

/// The in-process cache: at most `max` entries; when full, expired entries
/// go first, then the oldest.
#[derive(Debug)]
pub(crate) struct MemoryCache {
    max: usize,
    entries: Mutex<HashMap<String, (Instant, Classification)>>,
}

impl MemoryCache {
    /// An empty cache of at most `max` entries.
    pub(crate) fn new(max: usize) -> MemoryCache {
        MemoryCache {
            max: max.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, fingerprint: &str) -> Option<Classification> {
        let mut entries = self.entries.lock();
        match entries.get(fingerprint) {
            Some((expires, c)) if *expires > Instant::now() => Some(c.clone()),
            Some(_) => {
                entries.remove(fingerprint);
                None
            }
            None => None,
        }
    }

    fn put(&self, fingerprint: &str, c: Classification, ttl: Duration) {
        let now = Instant::now();
        let mut entries = self.entries.lock();
        if entries.len() >= self.max && !entries.contains_key(fingerprint) {
            entries.retain(|_, (expires, _)| *expires > now);
            if entries.len() >= self.max
                && let Some(oldest) = entries
                    .iter()
                    .min_by_key(|(_, (expires, _))| *expires)
                    .map(|(k, _)| k.clone())
            {
                entries.remove(&oldest);
            }
        }
        entries.insert(fingerprint.to_owned(), (now + ttl, c));
    }

    fn remove(&self, fingerprint: &str) {
        self.entries.lock().remove(fingerprint);
    }

    /// Entries held (expired ones included until touched).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::LlmSeverity;

    fn c(reason: &str) -> Classification {
        Classification {
            severity: LlmSeverity::Info,
            confidence: 0.5,
            reasoning: reason.into(),
            recommendations: vec![],
            model: "m".into(),
            classified_at_ms: 0,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_their_ttl() {
        let cache = Cache::Memory(MemoryCache::new(10));
        cache.put("a", &c("x"), Duration::from_secs(60)).await;
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(cache.get("a").await.is_some());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(cache.get("a").await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_cache_drops_expired_then_the_oldest() {
        let cache = MemoryCache::new(2);
        cache.put("a", c("a"), Duration::from_secs(10));
        cache.put("b", c("b"), Duration::from_secs(20));
        cache.put("c", c("c"), Duration::from_secs(30));
        assert_eq!(cache.len(), 2);
        assert!(cache.get("a").is_none());
        tokio::time::advance(Duration::from_secs(25)).await;
        cache.put("d", c("d"), Duration::from_secs(30));
        assert_eq!(cache.len(), 2);
        assert!(cache.get("c").is_some() && cache.get("d").is_some());
    }
}
