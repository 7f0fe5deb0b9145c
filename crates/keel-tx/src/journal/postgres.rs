use std::sync::atomic::{AtomicU64, Ordering};

use futures::future::BoxFuture;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::types::Json;
use sqlx::{Postgres, Row as _};

use super::{Durability, Journal};
use crate::error::{ConfigError, JournalError, JournalErrorKind, TxError};
use crate::record::{Document, Record};
use crate::state::{JournalState, Retention};

/// A journal in PostgreSQL, for several replicas of a controller sharing
/// one state (active/standby: the replica that takes over opens a manager
/// over it and recovery rolls back what the previous leader left open).
///
/// Tables, created in `schema` when connecting: `log` (every record, in
/// `seq` order, as JSONB), `checkpoint` (the folded state up to a `seq`),
/// `documents` (committed document and version per resource) and `open_tx`
/// (the resource each open transaction holds).
///
/// Besides storing records, it enforces across processes what the manager
/// enforces in one, inside the same database transaction as the record:
/// a begin is refused while another process holds the resource
/// ([`JournalErrorKind::ResourceLocked`]); a commit or put is refused if
/// the stored version is not the one it builds on
/// ([`JournalErrorKind::VersionMismatch`], so a split-brain write becomes a
/// version conflict instead of a lost update); a commit is refused if its
/// transaction is no longer open there, because another process's recovery
/// rolled it back ([`JournalErrorKind::Fenced`]).
///
/// Durability: every append is one database transaction; a
/// [`Durability::Buffered`] one commits with `synchronous_commit = off`
/// (kept if this process dies, may be lost if the database server crashes).
/// The log is folded into the checkpoint every `compact_every` records this
/// process appends, under an exclusive lock on the log.
#[derive(Debug)]
pub struct PostgresJournal {
    pool: PgPool,
    schema: String,
    retention: Retention,
    compact_every: u64,
    appended: AtomicU64,
}

/// Configures a [`PostgresJournal`].
#[derive(Debug, Clone)]
pub struct PostgresJournalBuilder {
    source: Source,
    schema: String,
    retention: Retention,
    compact_every: u64,
    max_connections: u32,
}

#[derive(Debug, Clone)]
enum Source {
    Url(String),
    Pool(PgPool),
}

impl PostgresJournalBuilder {
    /// The schema the tables live in (default `keel_tx`): a lowercase SQL
    /// identifier (letters, digits, `_`; not starting with a digit).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// How much finished history checkpoints keep.
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Fold the log into the checkpoint after this many appended records
    /// (default 10 000). Must be greater than zero.
    pub fn compact_every(mut self, records: u64) -> Self {
        self.compact_every = records;
        self
    }

    /// Pool size when connecting by URL (default 8). Must be greater than zero.
    pub fn max_connections(mut self, connections: u32) -> Self {
        self.max_connections = connections;
        self
    }

    /// Connects (when built from a URL) and creates the schema and tables if
    /// they do not exist.
    pub async fn connect(self) -> Result<PostgresJournal, TxError> {
        let valid_schema = !self.schema.is_empty()
            && self.schema.len() <= 63
            && !self.schema.starts_with(|c: char| c.is_ascii_digit())
            && self
                .schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid_schema {
            return Err(ConfigError::new(
                "schema",
                format!("{:?} is not a lowercase SQL identifier", self.schema),
            )
            .into());
        }
        if self.compact_every == 0 {
            return Err(ConfigError::new("compact_every", "must be greater than zero").into());
        }
        if self.max_connections == 0 {
            return Err(ConfigError::new("max_connections", "must be greater than zero").into());
        }
        let pool = match self.source {
            Source::Pool(pool) => pool,
            Source::Url(url) => PgPoolOptions::new()
                .max_connections(self.max_connections)
                .connect(&url)
                .await
                .map_err(|e| pg_error("connect to PostgreSQL", e))?,
        };
        let journal = PostgresJournal {
            pool,
            schema: self.schema,
            retention: self.retention,
            compact_every: self.compact_every,
            appended: AtomicU64::new(0),
        };
        journal.create_tables().await?;
        Ok(journal)
    }
}

fn pg_error(what: &str, e: sqlx::Error) -> JournalError {
    JournalError::with_source(
        JournalErrorKind::Io,
        format!("PostgreSQL journal: {what}"),
        e,
    )
}

fn refuse(kind: JournalErrorKind, message: String) -> JournalError {
    JournalError::new(kind, message)
}

impl PostgresJournal {
    /// A builder that connects to `url` (`postgres://user@host:port/db`).
    pub fn builder(url: impl Into<String>) -> PostgresJournalBuilder {
        PostgresJournal::builder_source(Source::Url(url.into()))
    }

    /// A builder over an existing pool.
    pub fn with_pool(pool: PgPool) -> PostgresJournalBuilder {
        PostgresJournal::builder_source(Source::Pool(pool))
    }

    fn builder_source(source: Source) -> PostgresJournalBuilder {
        PostgresJournalBuilder {
            source,
            schema: "keel_tx".to_owned(),
            retention: Retention::default(),
            compact_every: 10_000,
            max_connections: 8,
        }
    }

    /// Connects to `url` with the default settings.
    pub async fn connect(url: impl Into<String>) -> Result<PostgresJournal, TxError> {
        PostgresJournal::builder(url).connect().await
    }

    /// The pool (shared with clones of it).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The schema the tables live in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    async fn create_tables(&self) -> Result<(), JournalError> {
        let s = &self.schema;
        let statements = [
            format!("CREATE SCHEMA IF NOT EXISTS {s}"),
            format!(
                "CREATE TABLE IF NOT EXISTS {s}.log (seq BIGSERIAL PRIMARY KEY, record JSONB NOT NULL, \
                 created_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {s}.checkpoint (id SMALLINT PRIMARY KEY CHECK (id = 1), \
                 last_seq BIGINT NOT NULL, state JSONB NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {s}.documents (resource TEXT PRIMARY KEY, version BIGINT NOT NULL, \
                 document JSONB NOT NULL, updated_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {s}.open_tx (resource TEXT PRIMARY KEY, tx TEXT NOT NULL UNIQUE, \
                 began_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            ),
        ];
        let mut tx = self.pool.begin().await.map_err(|e| pg_error("begin", e))?;
        // Replicas starting together would race on CREATE SCHEMA otherwise.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("keel_tx.create.{s}"))
            .execute(&mut *tx)
            .await
            .map_err(|e| pg_error("lock for table creation", e))?;
        for statement in statements {
            sqlx::query(&statement)
                .execute(&mut *tx)
                .await
                .map_err(|e| pg_error("create tables", e))?;
        }
        tx.commit()
            .await
            .map_err(|e| pg_error("commit table creation", e))
    }

    async fn append_records(
        &self,
        records: &[Record],
        durability: Durability,
    ) -> Result<(), JournalError> {
        let s = &self.schema;
        let mut tx = self.pool.begin().await.map_err(|e| pg_error("begin", e))?;
        if durability == Durability::Buffered {
            sqlx::query("SET LOCAL synchronous_commit TO OFF")
                .execute(&mut *tx)
                .await
                .map_err(|e| pg_error("set synchronous_commit", e))?;
        }
        for record in records {
            // Dropping `tx` on an early return rolls everything back.
            match record {
                Record::Begin {
                    tx: id, resource, ..
                } => {
                    let inserted = sqlx::query(&format!(
                        "INSERT INTO {s}.open_tx (resource, tx) VALUES ($1, $2) ON CONFLICT (resource) DO NOTHING"
                    ))
                    .bind(resource)
                    .bind(id.to_string())
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| pg_error("record begin", e))?;
                    if inserted.rows_affected() == 0 {
                        return Err(refuse(
                            JournalErrorKind::ResourceLocked,
                            format!(
                                "resource {resource:?} has an open transaction in another process"
                            ),
                        ));
                    }
                }
                Record::Commit {
                    tx: id,
                    resource,
                    version,
                    document,
                    ..
                } => {
                    let released = sqlx::query(&format!("DELETE FROM {s}.open_tx WHERE tx = $1"))
                        .bind(id.to_string())
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| pg_error("record commit", e))?;
                    if released.rows_affected() == 0 {
                        return Err(refuse(
                            JournalErrorKind::Fenced,
                            format!("transaction {id} is no longer open in the journal"),
                        ));
                    }
                    self.write_document(&mut tx, resource, *version, document)
                        .await?;
                }
                Record::Rollback { tx: id, .. } => {
                    sqlx::query(&format!("DELETE FROM {s}.open_tx WHERE tx = $1"))
                        .bind(id.to_string())
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| pg_error("record rollback", e))?;
                }
                Record::Put {
                    resource,
                    version,
                    document,
                    ..
                } => {
                    let held =
                        sqlx::query(&format!("SELECT 1 FROM {s}.open_tx WHERE resource = $1"))
                            .bind(resource)
                            .fetch_optional(&mut *tx)
                            .await
                            .map_err(|e| pg_error("record put", e))?;
                    if held.is_some() {
                        return Err(refuse(
                            JournalErrorKind::ResourceLocked,
                            format!(
                                "resource {resource:?} has an open transaction in another process"
                            ),
                        ));
                    }
                    self.write_document(&mut tx, resource, *version, document)
                        .await?;
                }
                Record::Change { .. } | Record::Saga { .. } => {}
            }
            sqlx::query(&format!("INSERT INTO {s}.log (record) VALUES ($1)"))
                .bind(Json(record))
                .execute(&mut *tx)
                .await
                .map_err(|e| pg_error("append record", e))?;
        }
        tx.commit()
            .await
            .map_err(|e| pg_error("commit append", e))?;
        Ok(())
    }

    /// Stores `document` as `version` if the stored version is `version - 1`.
    async fn write_document(
        &self,
        tx: &mut sqlx::Transaction<'_, Postgres>,
        resource: &str,
        version: u64,
        document: &serde_json::Value,
    ) -> Result<(), JournalError> {
        let s = &self.schema;
        let version = i64::try_from(version).map_err(|e| {
            JournalError::with_source(
                JournalErrorKind::Encoding,
                "document version out of range",
                e,
            )
        })?;
        let written = sqlx::query(&format!(
            "INSERT INTO {s}.documents (resource, version, document) VALUES ($1, $2, $3) \
             ON CONFLICT (resource) DO UPDATE SET version = EXCLUDED.version, document = EXCLUDED.document, \
             updated_at = now() WHERE {s}.documents.version = EXCLUDED.version - 1"
        ))
        .bind(resource)
        .bind(version)
        .bind(Json(document))
        .execute(&mut **tx)
        .await
        .map_err(|e| pg_error("write document", e))?;
        if written.rows_affected() == 0 {
            return Err(refuse(
                JournalErrorKind::VersionMismatch,
                format!(
                    "resource {resource:?} is no longer at version {}",
                    version - 1
                ),
            ));
        }
        Ok(())
    }

    async fn read_state(
        &self,
        conn: &mut sqlx::PgConnection,
    ) -> Result<(i64, JournalState), JournalError> {
        let s = &self.schema;
        let checkpoint = sqlx::query(&format!(
            "SELECT last_seq, state FROM {s}.checkpoint WHERE id = 1"
        ))
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| pg_error("read checkpoint", e))?;
        let (mut last_seq, mut state) = match checkpoint {
            Some(row) => {
                let Json(state): Json<JournalState> = row.try_get("state").map_err(|e| {
                    JournalError::with_source(
                        JournalErrorKind::Corrupt,
                        "journal checkpoint is damaged",
                        e,
                    )
                })?;
                (row.get::<i64, _>("last_seq"), state)
            }
            None => (0, JournalState::default()),
        };
        state.set_retention(self.retention);
        let rows = sqlx::query(&format!(
            "SELECT seq, record FROM {s}.log WHERE seq > $1 ORDER BY seq"
        ))
        .bind(last_seq)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| pg_error("read log", e))?;
        for row in rows {
            let seq: i64 = row.get("seq");
            let Json(record): Json<Record> = row.try_get("record").map_err(|e| {
                JournalError::with_source(
                    JournalErrorKind::Corrupt,
                    format!("journal record {seq} is damaged"),
                    e,
                )
            })?;
            state.apply(record);
            last_seq = seq;
        }
        Ok((last_seq, state))
    }

    async fn load_state(&self) -> Result<JournalState, JournalError> {
        let mut tx = self.pool.begin().await.map_err(|e| pg_error("begin", e))?;
        // One snapshot for the checkpoint and the log after it.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(|e| pg_error("set isolation", e))?;
        let (_, state) = self.read_state(&mut tx).await?;
        tx.commit().await.map_err(|e| pg_error("end read", e))?;
        Ok(state)
    }

    async fn compact_log(&self) -> Result<(), JournalError> {
        let s = &self.schema;
        let mut tx = self.pool.begin().await.map_err(|e| pg_error("begin", e))?;
        // Waits for in-flight appends and keeps new ones out, so no record
        // with a lower seq can commit after the checkpoint is taken.
        sqlx::query(&format!("LOCK TABLE {s}.log IN EXCLUSIVE MODE"))
            .execute(&mut *tx)
            .await
            .map_err(|e| pg_error("lock log", e))?;
        let (last_seq, state) = self.read_state(&mut tx).await?;
        sqlx::query(&format!(
            "INSERT INTO {s}.checkpoint (id, last_seq, state) VALUES (1, $1, $2) \
             ON CONFLICT (id) DO UPDATE SET last_seq = EXCLUDED.last_seq, state = EXCLUDED.state, created_at = now()"
        ))
        .bind(last_seq)
        .bind(Json(&state))
        .execute(&mut *tx)
        .await
        .map_err(|e| pg_error("write checkpoint", e))?;
        sqlx::query(&format!("DELETE FROM {s}.log WHERE seq <= $1"))
            .bind(last_seq)
            .execute(&mut *tx)
            .await
            .map_err(|e| pg_error("trim log", e))?;
        tx.commit()
            .await
            .map_err(|e| pg_error("commit compaction", e))?;
        tracing::debug!(schema = %s, last_seq, "PostgreSQL journal compacted");
        Ok(())
    }
}

impl Journal for PostgresJournal {
    fn append<'a>(
        &'a self,
        records: &'a [Record],
        durability: Durability,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        Box::pin(async move {
            self.append_records(records, durability).await?;
            let before = self
                .appended
                .fetch_add(records.len() as u64, Ordering::Relaxed);
            let after = before + records.len() as u64;
            // The append itself succeeded; a failed compaction is retried at
            // the next threshold.
            if before / self.compact_every != after / self.compact_every
                && let Err(e) = self.compact_log().await
            {
                tracing::warn!(schema = %self.schema, error = %e, "PostgreSQL journal compaction failed");
            }
            Ok(())
        })
    }

    fn load(&self) -> BoxFuture<'_, Result<JournalState, JournalError>> {
        Box::pin(self.load_state())
    }

    fn load_document<'a>(
        &'a self,
        resource: &'a str,
    ) -> BoxFuture<'a, Result<Option<Document>, JournalError>> {
        Box::pin(async move {
            let row = sqlx::query(&format!(
                "SELECT version, document FROM {}.documents WHERE resource = $1",
                self.schema
            ))
            .bind(resource)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| pg_error("read document", e))?;
            row.map(|row| {
                let version: i64 = row.get("version");
                let Json(value): Json<serde_json::Value> =
                    row.try_get("document").map_err(|e| {
                        JournalError::with_source(
                            JournalErrorKind::Corrupt,
                            "stored document is damaged",
                            e,
                        )
                    })?;
                Ok(Document {
                    version: u64::try_from(version).unwrap_or(0),
                    value,
                })
            })
            .transpose()
        })
    }

    fn compact(&self) -> BoxFuture<'_, Result<(), JournalError>> {
        Box::pin(self.compact_log())
    }
}
