//! The Redis store (feature `redis`): [`RedisStore`] and its defaults.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};

use crate::error::{ConfigError, StoreError};
use crate::key::{Fingerprint, IdempotencyKey};
use crate::store::{
    Begin, BeginRequest, IdempotencyStore, OwnerId, Previous, Record, RecordState, Settle,
    StoreFuture, millis_ceil,
};

const BACKEND: &str = "redis";

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "keel:idempotency:";
/// How often a waiting caller looks at a pending key again by default.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(20);

// Every transition is one Lua script, so it is atomic in Redis and costs one
// round trip. An entry is two keys sharing a hash tag (same cluster slot):
// * the entry, a hash under `prefix{hex}`: s = state (p|c|f),
//   fp = fingerprint, o = owner while pending, r = stored bytes,
//   rt = retryable (1|0); its PEXPIRE is the TTL, so Redis drops expired
//   entries itself;
// * the lease, a string under `prefix{hex}:lease` holding the owner, claimed
//   with `SET ... NX PX lease`: it exists exactly while an owner's lease
//   runs, and it expires on the server's clock, never the client's.

const BEGIN: &str = r"
local cur = redis.call('HMGET', KEYS[1], 's', 'fp', 'r', 'rt')
local prev = 'vacant'
if cur[1] then
  if cur[2] ~= ARGV[1] then return {'mismatch'} end
  if cur[1] == 'c' then return {'completed', cur[3] or ''} end
  if cur[1] == 'f' then
    if cur[4] ~= '1' then return {'failed', cur[3] or ''} end
    prev = 'retry'
  else
    prev = 'takeover'
  end
end
if not redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then
  return {'inflight', redis.call('PTTL', KEYS[2])}
end
redis.call('HSET', KEYS[1], 's', 'p', 'fp', ARGV[1], 'o', ARGV[2])
redis.call('HDEL', KEYS[1], 'r', 'rt')
redis.call('PEXPIRE', KEYS[1], math.max(tonumber(ARGV[4]), tonumber(ARGV[3])))
return {'acquired', prev}
";

const RENEW: &str = r"
local cur = redis.call('HMGET', KEYS[1], 's', 'o')
if cur[1] ~= 'p' or cur[2] ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
local pttl = redis.call('PTTL', KEYS[1])
if pttl >= 0 and pttl < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
";

const FINISH: &str = r"
local cur = redis.call('HMGET', KEYS[1], 's', 'o')
if cur[1] ~= 'p' or cur[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 's', ARGV[2], 'r', ARGV[3], 'rt', ARGV[4])
redis.call('HDEL', KEYS[1], 'o')
redis.call('DEL', KEYS[2])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
";

const RELEASE: &str = r"
local cur = redis.call('HMGET', KEYS[1], 's', 'o')
if cur[1] ~= 'p' or cur[2] ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
";

const GET: &str = r"
local cur = redis.call('HMGET', KEYS[1], 's', 'fp', 'o', 'r', 'rt')
if not cur[1] then return {} end
local lease = 0
if cur[1] == 'p' then lease = math.max(0, redis.call('PTTL', KEYS[2])) end
return {cur[1], cur[2] or '', cur[3] or '', lease, cur[4] or '', cur[5] or '0', redis.call('PTTL', KEYS[1])}
";

const REMOVE: &str = r"
local n = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
return n
";

struct Scripts {
    begin: Script,
    renew: Script,
    finish: Script,
    release: Script,
    get: Script,
    remove: Script,
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            begin: Script::new(BEGIN),
            renew: Script::new(RENEW),
            finish: Script::new(FINISH),
            release: Script::new(RELEASE),
            get: Script::new(GET),
            remove: Script::new(REMOVE),
        }
    }
}

/// An [`IdempotencyStore`] in Redis, shared by every replica that uses the
/// same server and prefix.
///
/// Each transition (begin, renew, finish, release) is one Lua script, so it
/// is atomic and costs one round trip; a replay is a single `EVALSHA`.
/// Entries are hashes under `prefix{hex(key)}`; their TTL is the key's
/// `PEXPIRE`, so Redis drops expired entries itself and
/// [`purge_expired`](IdempotencyStore::purge_expired) has nothing to do
/// (returns 0; expirations are therefore not counted with this backend).
/// A lease is its own key, claimed with `SET ... NX PX` inside the begin
/// script, so it expires on the server's clock: paused tokio time in tests
/// does not move it.
///
/// Waiting callers poll the key every poll interval (default 20 ms); a
/// result is seen at most one interval late.
///
/// Cloning is cheap and clones share the connection.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: Arc<str>,
    poll_interval: Duration,
    scripts: Arc<Scripts>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("poll_interval", &self.poll_interval)
            .finish_non_exhaustive()
    }
}

/// Configures a [`RedisStore`].
#[derive(Debug)]
#[must_use]
pub struct RedisStoreBuilder {
    conn: ConnectionManager,
    prefix: String,
    poll_interval: Duration,
}

impl RedisStoreBuilder {
    /// The prefix of every key (default [`DEFAULT_PREFIX`]); use one per
    /// application (or per test) so entries do not collide. Must not be
    /// empty nor contain `{` or `}` (they would break the hash tag that
    /// keeps an entry and its lease in one cluster slot).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How often a waiting caller looks at a pending key again (default
    /// [`DEFAULT_POLL_INTERVAL`]). Must be positive.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Checks the configuration and builds the store.
    pub fn build(self) -> Result<RedisStore, ConfigError> {
        if self.prefix.is_empty() {
            return Err(ConfigError::new("prefix", "must not be empty"));
        }
        if self.prefix.contains(['{', '}']) {
            return Err(ConfigError::new("prefix", "must not contain '{' or '}'"));
        }
        if self.poll_interval.is_zero() {
            return Err(ConfigError::new(
                "poll_interval",
                "must be greater than zero",
            ));
        }
        Ok(RedisStore {
            conn: self.conn,
            prefix: self.prefix.into(),
            poll_interval: self.poll_interval,
            scripts: Arc::new(Scripts::new()),
        })
    }
}

impl RedisStore {
    /// Connects to `url` (`redis://host:port/db`) with a
    /// [`ConnectionManager`] (which reconnects by itself) and the default
    /// configuration.
    ///
    /// The manager's defaults retry a failed connection 6 times with
    /// exponential backoff from 100 ms, so an unreachable server is
    /// reported after a few seconds; use [`RedisStore::connect_with_config`]
    /// to choose otherwise.
    pub async fn connect(url: &str) -> Result<Self, crate::IdempotencyError> {
        Self::connect_with_config(url, ConnectionManagerConfig::new()).await
    }

    /// Like [`RedisStore::connect`], with the connection manager's retry
    /// and timeout settings.
    pub async fn connect_with_config(
        url: &str,
        config: ConnectionManagerConfig,
    ) -> Result<Self, crate::IdempotencyError> {
        let client =
            redis::Client::open(url).map_err(|e| StoreError::new(BACKEND, "connect", e))?;
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| StoreError::new(BACKEND, "connect", e))?;
        Ok(Self::builder(conn).build()?)
    }

    /// Configures a store over an existing connection manager.
    pub fn builder(conn: ConnectionManager) -> RedisStoreBuilder {
        RedisStoreBuilder {
            conn,
            prefix: DEFAULT_PREFIX.to_string(),
            poll_interval: DEFAULT_POLL_INTERVAL,
        }
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The connection, for callers that want to share it.
    pub fn connection(&self) -> &ConnectionManager {
        &self.conn
    }

    /// The Redis key of `key`'s entry: `prefix{hex}` (the braces are a
    /// cluster hash tag shared with its lease key, `prefix{hex}:lease`).
    pub fn entry_key(&self, key: &IdempotencyKey) -> String {
        let mut s = String::with_capacity(self.prefix.len() + 66);
        s.push_str(&self.prefix);
        s.push('{');
        s.push_str(&key.to_hex());
        s.push('}');
        s
    }

    /// The entry key and the lease key of `key`.
    fn redis_keys(&self, key: &IdempotencyKey) -> (String, String) {
        let entry = self.entry_key(key);
        let lease = format!("{entry}:lease");
        (entry, lease)
    }

    async fn begin_impl(&self, req: BeginRequest<'_>) -> Result<Begin, StoreError> {
        let err = |e: keel_core::BoxError| StoreError::new(BACKEND, "begin", e);
        let mut conn = self.conn.clone();
        let keys = self.redis_keys(req.key);
        let reply: Vec<Value> = self
            .scripts
            .begin
            .key(&keys.0)
            .key(&keys.1)
            .arg(req.fingerprint.to_hex())
            .arg(req.owner.to_hex())
            .arg(millis_ceil(req.lease))
            .arg(millis_ceil(req.ttl))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| err(e.into()))?;
        let tag = reply.first().and_then(text).unwrap_or_default();
        Ok(match tag.as_str() {
            "mismatch" => Begin::Mismatch,
            "completed" => Begin::Completed(bytes_at(&reply, 1)),
            "failed" => Begin::Failed(bytes_at(&reply, 1)),
            "inflight" => Begin::InFlight {
                lease_remaining: Some(Duration::from_millis(int_at(&reply, 1).max(0) as u64)),
            },
            "acquired" => Begin::Acquired {
                previous: match reply.get(1).and_then(text).as_deref() {
                    Some("takeover") => Previous::TakenOver,
                    Some("retry") => Previous::RetryableFailure,
                    _ => Previous::Vacant,
                },
            },
            other => return Err(err(format!("unexpected begin reply {other:?}").into())),
        })
    }

    async fn renew_impl(
        &self,
        key: &IdempotencyKey,
        owner: OwnerId,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let keys = self.redis_keys(key);
        let n: i64 = self
            .scripts
            .renew
            .key(&keys.0)
            .key(&keys.1)
            .arg(owner.to_hex())
            .arg(millis_ceil(lease))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| StoreError::new(BACKEND, "renew", e))?;
        Ok(n == 1)
    }

    async fn finish_impl(
        &self,
        key: &IdempotencyKey,
        owner: OwnerId,
        settle: Settle,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let (state, bytes, retryable) = match settle {
            Settle::Completed(b) => ("c", b, "0"),
            Settle::Failed { error, retryable } => ("f", error, if retryable { "1" } else { "0" }),
        };
        let mut conn = self.conn.clone();
        let keys = self.redis_keys(key);
        let n: i64 = self
            .scripts
            .finish
            .key(&keys.0)
            .key(&keys.1)
            .arg(owner.to_hex())
            .arg(state)
            .arg(bytes.as_ref())
            .arg(retryable)
            .arg(millis_ceil(ttl))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| StoreError::new(BACKEND, "finish", e))?;
        Ok(n == 1)
    }

    async fn release_impl(&self, key: &IdempotencyKey, owner: OwnerId) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let keys = self.redis_keys(key);
        let n: i64 = self
            .scripts
            .release
            .key(&keys.0)
            .key(&keys.1)
            .arg(owner.to_hex())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| StoreError::new(BACKEND, "release", e))?;
        Ok(n == 1)
    }

    async fn get_impl(&self, key: &IdempotencyKey) -> Result<Option<Record>, StoreError> {
        let err = |e: keel_core::BoxError| StoreError::new(BACKEND, "get", e);
        let mut conn = self.conn.clone();
        let keys = self.redis_keys(key);
        let reply: Vec<Value> = self
            .scripts
            .get
            .key(&keys.0)
            .key(&keys.1)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| err(e.into()))?;
        if reply.is_empty() {
            return Ok(None);
        }
        let fingerprint: Fingerprint = reply
            .get(1)
            .and_then(text)
            .unwrap_or_default()
            .parse()
            .map_err(|e: crate::InvalidDigest| err(e.into()))?;
        let state = match reply.first().and_then(text).as_deref() {
            Some("p") => RecordState::Pending {
                owner: reply
                    .get(2)
                    .and_then(text)
                    .and_then(|s| OwnerId::from_hex(&s))
                    .ok_or_else(|| err("pending entry without a valid owner".into()))?,
                lease_remaining: Duration::from_millis(int_at(&reply, 3).max(0) as u64),
            },
            Some("c") => RecordState::Completed(bytes_at(&reply, 4)),
            Some("f") => RecordState::Failed {
                error: bytes_at(&reply, 4),
                retryable: reply.get(5).and_then(text).as_deref() == Some("1"),
            },
            other => return Err(err(format!("unexpected entry state {other:?}").into())),
        };
        let pttl = int_at(&reply, 6);
        Ok(Some(Record {
            fingerprint,
            state,
            expires_in: (pttl >= 0).then(|| Duration::from_millis(pttl as u64)),
        }))
    }

    async fn remove_impl(&self, key: &IdempotencyKey) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let keys = self.redis_keys(key);
        let n: i64 = self
            .scripts
            .remove
            .key(&keys.0)
            .key(&keys.1)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| StoreError::new(BACKEND, "remove", e))?;
        Ok(n > 0)
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn bytes_at(reply: &[Value], i: usize) -> Bytes {
    match reply.get(i) {
        Some(Value::BulkString(b)) => Bytes::copy_from_slice(b),
        Some(Value::SimpleString(s)) => Bytes::copy_from_slice(s.as_bytes()),
        _ => Bytes::new(),
    }
}

fn int_at(reply: &[Value], i: usize) -> i64 {
    match reply.get(i) {
        Some(Value::Int(n)) => *n,
        Some(v) => text(v).and_then(|s| s.parse().ok()).unwrap_or(0),
        None => 0,
    }
}

impl IdempotencyStore for RedisStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn begin<'a>(&'a self, req: BeginRequest<'a>) -> StoreFuture<'a, Result<Begin, StoreError>> {
        Box::pin(self.begin_impl(req))
    }

    fn renew<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        owner: OwnerId,
        lease: Duration,
    ) -> StoreFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.renew_impl(key, owner, lease))
    }

    fn finish<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        owner: OwnerId,
        settle: Settle,
        ttl: Duration,
    ) -> StoreFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.finish_impl(key, owner, settle, ttl))
    }

    fn release<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        owner: OwnerId,
    ) -> StoreFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.release_impl(key, owner))
    }

    fn wait<'a>(&'a self, _key: &'a IdempotencyKey, max: Duration) -> StoreFuture<'a, ()> {
        Box::pin(tokio::time::sleep(max.min(self.poll_interval)))
    }

    fn get<'a>(
        &'a self,
        key: &'a IdempotencyKey,
    ) -> StoreFuture<'a, Result<Option<Record>, StoreError>> {
        Box::pin(self.get_impl(key))
    }

    fn remove<'a>(&'a self, key: &'a IdempotencyKey) -> StoreFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.remove_impl(key))
    }

    fn purge_expired(&self) -> StoreFuture<'_, Result<u64, StoreError>> {
        // Redis expires keys itself (PEXPIRE).
        Box::pin(std::future::ready(Ok(0)))
    }
}
