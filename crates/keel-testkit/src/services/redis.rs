//! A unique key prefix per test in the real local Redis.

use std::time::Duration;

use redis::aio::MultiplexedConnection;

use super::unique::unique_suffix;
use crate::TestkitError;

/// Environment variable overriding [`DEFAULT_REDIS_URL`].
pub const REDIS_URL_ENV: &str = "KEEL_TEST_REDIS_URL";
/// The Redis tests use by default.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
const REDIS_HINT: &str = "start it with `redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\" --appendonly no` (or `apt-get install -y redis-server` first), or point KEEL_TEST_REDIS_URL at a reachable server";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const SCAN_BATCH: usize = 500;

/// The Redis URL for tests: `$KEEL_TEST_REDIS_URL` or [`DEFAULT_REDIS_URL`].
pub fn redis_url() -> String {
    std::env::var(REDIS_URL_ENV)
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_REDIS_URL.to_owned())
}

/// A key prefix reserved for one test (`keel-test:<hex>:`). Dropping it
/// deletes every key under the prefix (on a helper thread, so it works from
/// any runtime or none); [`RedisPrefix::cleanup`] does it asynchronously.
pub struct RedisPrefix {
    url: String,
    prefix: String,
    client: redis::Client,
    cleaned: bool,
}

impl RedisPrefix {
    /// Reserves a prefix on [`redis_url`]'s server, after checking it
    /// answers `PING`.
    ///
    /// # Panics
    /// When Redis is unreachable, with a message saying how to start it.
    pub async fn new() -> Self {
        Self::try_new().await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// As [`RedisPrefix::new`], returning the error.
    ///
    /// # Errors
    /// [`TestkitError::ServiceUnreachable`] naming how to start Redis.
    pub async fn try_new() -> Result<Self, TestkitError> {
        Self::try_with_url(&redis_url()).await
    }

    /// Reserves a prefix on the server at `url`.
    ///
    /// # Errors
    /// As [`RedisPrefix::try_new`].
    pub async fn try_with_url(url: &str) -> Result<Self, TestkitError> {
        let unreachable = |source: keel_core::BoxError| TestkitError::ServiceUnreachable {
            service: "Redis",
            url: url.to_owned(),
            hint: REDIS_HINT.to_owned(),
            source,
        };
        let client = redis::Client::open(url).map_err(|e| unreachable(e.into()))?;
        let ping = async {
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, ping).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(unreachable(e.into())),
            Err(_) => return Err(unreachable("no answer to PING within 5 s".into())),
        }
        Ok(RedisPrefix {
            url: url.to_owned(),
            prefix: format!("keel-test:{}:", unique_suffix()),
            client,
            cleaned: false,
        })
    }

    /// The prefix, ending in `:`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `prefix + name`.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The server URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The client.
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// A new multiplexed connection.
    ///
    /// # Errors
    /// [`TestkitError::Command`] when connecting fails.
    pub async fn connection(&self) -> Result<MultiplexedConnection, TestkitError> {
        self.client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| command_error("connect", e))
    }

    /// Every key under the prefix (found with `SCAN`), sorted.
    ///
    /// # Errors
    /// [`TestkitError::Command`] when a command fails.
    pub async fn keys(&self) -> Result<Vec<String>, TestkitError> {
        let mut conn = self.connection().await?;
        let mut cursor = 0u64;
        let mut keys = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", self.prefix))
                .arg("COUNT")
                .arg(SCAN_BATCH)
                .query_async(&mut conn)
                .await
                .map_err(|e| command_error("SCAN", e))?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// Deletes every key under the prefix now and returns how many there
    /// were.
    ///
    /// # Errors
    /// [`TestkitError::Command`] when a command fails.
    pub async fn cleanup(mut self) -> Result<usize, TestkitError> {
        self.cleaned = true;
        let keys = self.keys().await?;
        if !keys.is_empty() {
            let mut conn = self.connection().await?;
            for chunk in keys.chunks(SCAN_BATCH) {
                redis::cmd("DEL")
                    .arg(chunk)
                    .query_async::<u64>(&mut conn)
                    .await
                    .map_err(|e| command_error("DEL", e))?;
            }
        }
        Ok(keys.len())
    }
}

fn delete_prefix_blocking(client: &redis::Client, prefix: &str) -> redis::RedisResult<usize> {
    let mut conn = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
    let mut cursor = 0u64;
    let mut deleted = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(SCAN_BATCH)
            .query(&mut conn)?;
        if !batch.is_empty() {
            deleted += redis::cmd("DEL").arg(&batch).query::<usize>(&mut conn)?;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}

fn command_error(context: &str, e: redis::RedisError) -> TestkitError {
    TestkitError::Command {
        service: "Redis",
        context: context.to_owned(),
        source: e.into(),
    }
}

impl Drop for RedisPrefix {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        let client = self.client.clone();
        let prefix = self.prefix.clone();
        // The blocking client must not run on an async worker thread.
        let result = std::thread::spawn(move || delete_prefix_blocking(&client, &prefix)).join();
        match result {
            Ok(Ok(n)) => tracing::debug!(prefix = %self.prefix, deleted = n, "test keys deleted"),
            Ok(Err(e)) => {
                tracing::warn!(prefix = %self.prefix, error = %e, "cannot delete test keys");
            }
            Err(_) => tracing::warn!(prefix = %self.prefix, "test key cleanup panicked"),
        }
    }
}

impl std::fmt::Debug for RedisPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPrefix")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}
