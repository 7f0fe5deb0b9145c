//! The PostgreSQL store (feature `postgres`): [`PostgresStore`] and its defaults.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Executor, Row};

use crate::error::{ConfigError, StoreError};
use crate::key::{Fingerprint, IdempotencyKey};
use crate::store::{
    Begin, BeginRequest, IdempotencyStore, OwnerId, Previous, Record, RecordState, Settle,
    StoreFuture, millis_ceil,
};

const BACKEND: &str = "postgres";

/// The default schema.
pub const DEFAULT_SCHEMA: &str = "public";
/// The default table name.
pub const DEFAULT_TABLE: &str = "keel_idempotency";
/// How often a waiting caller looks at a pending key again by default.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How many expired rows one purge statement deletes at most.
pub const PURGE_BATCH: i64 = 1000;

/// How often `begin` re-reads a row that changed under it before giving up.
const BEGIN_ATTEMPTS: usize = 8;

/// The SQL of every operation, with the table name filled in once.
struct Statements {
    begin: String,
    renew: String,
    finish: String,
    release: String,
    get: String,
    remove: String,
    purge: String,
}

impl Statements {
    fn new(table: &str) -> Self {
        // `$4` is the lease and `$5` the TTL, in milliseconds; all times are
        // the server's `now()`.
        let begin = format!(
            "WITH cur AS ( \
                SELECT state, fingerprint, lease_until, result, retryable, \
                       (expires_at <= now()) AS expired \
                FROM {table} WHERE key = $1 \
            ), ins AS ( \
                INSERT INTO {table} AS t (key, fingerprint, state, owner, lease_until, result, \
                                          retryable, expires_at, created_at, updated_at) \
                SELECT $1, $2, 'pending', $3, now() + $4::bigint * interval '1 millisecond', \
                       NULL, FALSE, \
                       now() + GREATEST($5::bigint, $4::bigint) * interval '1 millisecond', \
                       now(), now() \
                WHERE NOT EXISTS ( \
                    SELECT 1 FROM cur WHERE NOT cur.expired AND ( \
                        cur.fingerprint <> $2 OR cur.state = 'completed' \
                        OR (cur.state = 'failed' AND NOT cur.retryable) \
                        OR (cur.state = 'pending' AND cur.lease_until > now()))) \
                ON CONFLICT (key) DO UPDATE SET \
                    fingerprint = EXCLUDED.fingerprint, state = 'pending', owner = EXCLUDED.owner, \
                    lease_until = EXCLUDED.lease_until, result = NULL, retryable = FALSE, \
                    expires_at = EXCLUDED.expires_at, updated_at = now() \
                WHERE t.expires_at <= now() OR (t.fingerprint = EXCLUDED.fingerprint AND ( \
                    (t.state = 'failed' AND t.retryable) \
                    OR (t.state = 'pending' AND t.lease_until <= now()))) \
                RETURNING 1 \
            ) \
            SELECT (SELECT count(*) FROM ins) AS acquired, \
                   cur.state, cur.fingerprint = $2 AS same_fp, cur.expired, cur.retryable, \
                   CASE WHEN cur.state = 'pending' THEN \
                       GREATEST(0, floor(EXTRACT(EPOCH FROM (cur.lease_until - now())) * 1000))::bigint \
                   END AS lease_ms, \
                   CASE WHEN cur.state <> 'pending' AND cur.fingerprint = $2 THEN cur.result END AS result \
            FROM (SELECT 1) AS one LEFT JOIN cur ON TRUE"
        );
        Statements {
            begin,
            renew: format!(
                "UPDATE {table} SET lease_until = now() + $3::bigint * interval '1 millisecond', \
                 expires_at = GREATEST(expires_at, now() + $3::bigint * interval '1 millisecond'), \
                 updated_at = now() \
                 WHERE key = $1 AND state = 'pending' AND owner = $2"
            ),
            finish: format!(
                "UPDATE {table} SET state = $3, result = $4, retryable = $5, owner = NULL, \
                 lease_until = NULL, expires_at = now() + $6::bigint * interval '1 millisecond', \
                 updated_at = now() \
                 WHERE key = $1 AND state = 'pending' AND owner = $2"
            ),
            release: format!(
                "DELETE FROM {table} WHERE key = $1 AND state = 'pending' AND owner = $2"
            ),
            get: format!(
                "SELECT fingerprint, state, owner, \
                 GREATEST(0, floor(EXTRACT(EPOCH FROM (lease_until - now())) * 1000))::bigint AS lease_ms, \
                 result, retryable, \
                 GREATEST(0, floor(EXTRACT(EPOCH FROM (expires_at - now())) * 1000))::bigint AS expires_ms \
                 FROM {table} WHERE key = $1 AND expires_at > now()"
            ),
            remove: format!("DELETE FROM {table} WHERE key = $1"),
            purge: format!(
                "DELETE FROM {table} WHERE key IN ( \
                 SELECT key FROM {table} WHERE expires_at <= now() \
                 LIMIT $1 FOR UPDATE SKIP LOCKED)"
            ),
        }
    }
}

/// An [`IdempotencyStore`] in a PostgreSQL table, shared by every replica
/// that uses the same database, schema and table.
///
/// * The table (and its schema) is created at connect with `CREATE ... IF
///   NOT EXISTS` under an advisory lock, so replicas starting together do
///   not race; schema and table names are configurable.
/// * `begin` is one statement: it reads the row and, when the key is free,
///   expired, retryably failed or its lease ran out, claims it with `INSERT
///   ... ON CONFLICT DO UPDATE ... WHERE` (a row lease: `owner`,
///   `lease_until`). A replay is therefore one round trip that writes
///   nothing.
/// * `renew`, `finish` and `release` are single `UPDATE`/`DELETE`
///   statements fenced by the owner.
/// * Times are the server's `now()`: paused tokio time in tests does not
///   move them. [`purge_expired`](IdempotencyStore::purge_expired) deletes
///   expired rows in batches of [`PURGE_BATCH`].
///
/// Waiting callers poll the row every poll interval (default 20 ms).
///
/// Cloning is cheap and clones share the pool.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    table: Arc<str>,
    poll_interval: Duration,
    sql: Arc<Statements>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("table", &self.table)
            .field("poll_interval", &self.poll_interval)
            .finish_non_exhaustive()
    }
}

/// Configures a [`PostgresStore`].
#[derive(Debug)]
#[must_use]
pub struct PostgresStoreBuilder {
    pool: PgPool,
    schema: String,
    table: String,
    poll_interval: Duration,
    create: bool,
}

fn check_identifier(field: &'static str, name: &str) -> Result<(), ConfigError> {
    let mut chars = name.chars();
    let valid_start = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !valid_start || name.len() > 63 || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(ConfigError::new(
            field,
            format!(
                "{name:?} is not a plain SQL identifier (a letter or `_`, then letters, digits or `_`, at most 63 bytes)"
            ),
        ));
    }
    Ok(())
}

impl PostgresStoreBuilder {
    /// The schema of the table (default [`DEFAULT_SCHEMA`]); created if
    /// missing. A plain identifier.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The table name (default [`DEFAULT_TABLE`]). A plain identifier.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// How often a waiting caller looks at a pending key again (default
    /// [`DEFAULT_POLL_INTERVAL`]). Must be positive.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Whether [`build`](Self::build) creates the schema and table if they
    /// are missing (default `true`). Turn it off when migrations are run by
    /// other means; [`PostgresStore::create_table_sql`] gives the DDL.
    pub fn create_table(mut self, create: bool) -> Self {
        self.create = create;
        self
    }

    /// Checks the configuration, creates the table if asked, and builds the
    /// store.
    pub async fn build(self) -> Result<PostgresStore, crate::IdempotencyError> {
        check_identifier("schema", &self.schema)?;
        check_identifier("table", &self.table)?;
        if self.poll_interval.is_zero() {
            return Err(ConfigError::new("poll_interval", "must be greater than zero").into());
        }
        let qualified = format!("\"{}\".\"{}\"", self.schema, self.table);
        if self.create {
            create_table(&self.pool, &self.schema, &self.table)
                .await
                .map_err(|e| StoreError::new(BACKEND, "create table", e))?;
        }
        Ok(PostgresStore {
            pool: self.pool,
            sql: Arc::new(Statements::new(&qualified)),
            table: qualified.into(),
            poll_interval: self.poll_interval,
        })
    }
}

async fn create_table(pool: &PgPool, schema: &str, table: &str) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Serialize concurrent creators: `CREATE ... IF NOT EXISTS` alone can
    // still fail with a unique violation when two sessions race.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(format!("keel-idempotency:{schema}.{table}"))
        .execute(&mut *tx)
        .await?;
    (&mut *tx)
        .execute(PostgresStore::create_table_sql(schema, table).as_str())
        .await?;
    tx.commit().await
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user@host:port/db`) with a pool of
    /// 10 connections (waiting at most 10 s for one) and builds a store with
    /// the default schema and table, creating them if missing.
    pub async fn connect(url: &str) -> Result<Self, crate::IdempotencyError> {
        let options = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(10));
        Self::connect_with(url, options).await
    }

    /// Like [`PostgresStore::connect`], with your pool options.
    pub async fn connect_with(
        url: &str,
        options: PgPoolOptions,
    ) -> Result<Self, crate::IdempotencyError> {
        let pool = options
            .connect(url)
            .await
            .map_err(|e| StoreError::new(BACKEND, "connect", e))?;
        Self::builder(pool).build().await
    }

    /// Configures a store over an existing pool.
    pub fn builder(pool: PgPool) -> PostgresStoreBuilder {
        PostgresStoreBuilder {
            pool,
            schema: DEFAULT_SCHEMA.to_string(),
            table: DEFAULT_TABLE.to_string(),
            poll_interval: DEFAULT_POLL_INTERVAL,
            create: true,
        }
    }

    /// The DDL that creates the schema, the table and its expiry index (all
    /// `IF NOT EXISTS`), for running by a migration tool. `schema` and
    /// `table` must be plain identifiers.
    pub fn create_table_sql(schema: &str, table: &str) -> String {
        format!(
            "CREATE SCHEMA IF NOT EXISTS \"{schema}\"; \
             CREATE TABLE IF NOT EXISTS \"{schema}\".\"{table}\" ( \
                 key TEXT PRIMARY KEY, \
                 fingerprint TEXT NOT NULL, \
                 state TEXT NOT NULL CHECK (state IN ('pending', 'completed', 'failed')), \
                 owner TEXT, \
                 lease_until TIMESTAMPTZ, \
                 result BYTEA, \
                 retryable BOOLEAN NOT NULL DEFAULT FALSE, \
                 expires_at TIMESTAMPTZ NOT NULL, \
                 created_at TIMESTAMPTZ NOT NULL DEFAULT now(), \
                 updated_at TIMESTAMPTZ NOT NULL DEFAULT now() \
             ); \
             CREATE INDEX IF NOT EXISTS \"{table}_expires_at\" ON \"{schema}\".\"{table}\" (expires_at);"
        )
    }

    /// The quoted, schema-qualified table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The pool, for callers that want to share it.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn begin_impl(&self, req: BeginRequest<'_>) -> Result<Begin, StoreError> {
        let err = |e: sqlx::Error| StoreError::new(BACKEND, "begin", e);
        let key = req.key.to_hex();
        let fp = req.fingerprint.to_hex();
        let owner = req.owner.to_hex();
        for _ in 0..BEGIN_ATTEMPTS {
            let row = sqlx::query(&self.sql.begin)
                .bind(&key)
                .bind(&fp)
                .bind(&owner)
                .bind(millis_ceil(req.lease))
                .bind(millis_ceil(req.ttl))
                .fetch_one(&self.pool)
                .await
                .map_err(err)?;
            let acquired: i64 = row.try_get("acquired").map_err(err)?;
            let state: Option<String> = row.try_get("state").map_err(err)?;
            let expired: Option<bool> = row.try_get("expired").map_err(err)?;
            if acquired > 0 {
                let previous = match (state.as_deref(), expired) {
                    (None, _) => Previous::Vacant,
                    (Some(_), Some(true)) => Previous::Expired,
                    (Some("failed"), _) => Previous::RetryableFailure,
                    (Some(_), _) => Previous::TakenOver,
                };
                return Ok(Begin::Acquired { previous });
            }
            // Not acquired: the snapshot explains why, unless another session
            // changed the row after this statement's snapshot was taken (then
            // the snapshot looks claimable): read again.
            let Some(state) = state else { continue };
            if expired == Some(true) {
                continue;
            }
            let same_fp: bool = row.try_get("same_fp").map_err(err)?;
            if !same_fp {
                return Ok(Begin::Mismatch);
            }
            let retryable: bool = row.try_get("retryable").map_err(err)?;
            let result = || -> Result<Bytes, StoreError> {
                let bytes: Option<Vec<u8>> = row.try_get("result").map_err(err)?;
                Ok(bytes.map(Bytes::from).unwrap_or_default())
            };
            match state.as_str() {
                "completed" => return Ok(Begin::Completed(result()?)),
                "failed" if !retryable => return Ok(Begin::Failed(result()?)),
                "pending" => {
                    let lease_ms: i64 = row.try_get("lease_ms").map_err(err)?;
                    if lease_ms > 0 {
                        return Ok(Begin::InFlight {
                            lease_remaining: Some(Duration::from_millis(lease_ms as u64)),
                        });
                    }
                }
                _ => {}
            }
        }
        Err(StoreError::new(
            BACKEND,
            "begin",
            format!("row kept changing during {BEGIN_ATTEMPTS} attempts"),
        ))
    }

    async fn execute(
        &self,
        operation: &'static str,
        query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<u64, StoreError> {
        query
            .execute(&self.pool)
            .await
            .map(|r| r.rows_affected())
            .map_err(|e| StoreError::new(BACKEND, operation, e))
    }

    async fn get_impl(&self, key: &IdempotencyKey) -> Result<Option<Record>, StoreError> {
        let err = |e: sqlx::Error| StoreError::new(BACKEND, "get", e);
        let Some(row) = sqlx::query(&self.sql.get)
            .bind(key.to_hex())
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?
        else {
            return Ok(None);
        };
        let fp: String = row.try_get("fingerprint").map_err(err)?;
        let fingerprint: Fingerprint = fp
            .parse()
            .map_err(|e: crate::InvalidDigest| StoreError::new(BACKEND, "get", e))?;
        let state: String = row.try_get("state").map_err(err)?;
        let result: Option<Vec<u8>> = row.try_get("result").map_err(err)?;
        let result = result.map(Bytes::from).unwrap_or_default();
        let state = match state.as_str() {
            "pending" => {
                let owner: Option<String> = row.try_get("owner").map_err(err)?;
                let lease_ms: Option<i64> = row.try_get("lease_ms").map_err(err)?;
                RecordState::Pending {
                    owner: owner
                        .as_deref()
                        .and_then(OwnerId::from_hex)
                        .ok_or_else(|| {
                            StoreError::new(BACKEND, "get", "pending row without a valid owner")
                        })?,
                    lease_remaining: Duration::from_millis(lease_ms.unwrap_or(0).max(0) as u64),
                }
            }
            "completed" => RecordState::Completed(result),
            "failed" => RecordState::Failed {
                error: result,
                retryable: row.try_get("retryable").map_err(err)?,
            },
            other => {
                return Err(StoreError::new(
                    BACKEND,
                    "get",
                    format!("unexpected state {other:?}"),
                ));
            }
        };
        let expires_ms: i64 = row.try_get("expires_ms").map_err(err)?;
        Ok(Some(Record {
            fingerprint,
            state,
            expires_in: Some(Duration::from_millis(expires_ms.max(0) as u64)),
        }))
    }

    async fn purge_impl(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let n = self
                .execute("purge", sqlx::query(&self.sql.purge).bind(PURGE_BATCH))
                .await?;
            total += n;
            if n < PURGE_BATCH as u64 {
                return Ok(total);
            }
        }
    }
}

impl IdempotencyStore for PostgresStore {
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
        Box::pin(async move {
            let q = sqlx::query(&self.sql.renew)
                .bind(key.to_hex())
                .bind(owner.to_hex())
                .bind(millis_ceil(lease));
            Ok(self.execute("renew", q).await? == 1)
        })
    }

    fn finish<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        owner: OwnerId,
        settle: Settle,
        ttl: Duration,
    ) -> StoreFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let (state, bytes, retryable) = match settle {
                Settle::Completed(b) => ("completed", b, false),
                Settle::Failed { error, retryable } => ("failed", error, retryable),
            };
            let q = sqlx::query(&self.sql.finish)
                .bind(key.to_hex())
                .bind(owner.to_hex())
                .bind(state)
                .bind(bytes.to_vec())
                .bind(retryable)
                .bind(millis_ceil(ttl));
            Ok(self.execute("finish", q).await? == 1)
        })
    }

    fn release<'a>(
        &'a self,
        key: &'a IdempotencyKey,
        owner: OwnerId,
    ) -> StoreFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let q = sqlx::query(&self.sql.release)
                .bind(key.to_hex())
                .bind(owner.to_hex());
            Ok(self.execute("release", q).await? == 1)
        })
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
        Box::pin(async move {
            let q = sqlx::query(&self.sql.remove).bind(key.to_hex());
            Ok(self.execute("remove", q).await? > 0)
        })
    }

    fn purge_expired(&self) -> StoreFuture<'_, Result<u64, StoreError>> {
        Box::pin(self.purge_impl())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_checked() {
        assert!(check_identifier("schema", "keel_test_1").is_ok());
        assert!(check_identifier("schema", "_x").is_ok());
        for bad in ["", "1abc", "a-b", "a\"b", "a b", &"x".repeat(64)] {
            assert_eq!(check_identifier("table", bad).unwrap_err().field(), "table");
        }
    }
}
