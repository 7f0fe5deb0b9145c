//! The event store: SQLite or PostgreSQL behind one API ([`Store`]).
//!
//! Where things are:
//!
//! * this module: opening the pools and running migrations
//!   ([`Store::connect`]), the write path's entry point ([`Store::ingest`]):
//!   deliveries are queued to a writer task and answered after their group
//!   commit; a failed write closes its connection (`in_transaction!`);
//!   readiness ([`Store::check_durable`]);
//! * `write`: encoding a delivery, merging a group, the multi-row
//!   statements of both databases;
//! * `sqlite_writer`: SQLite's single writer task and its WAL checkpointer;
//! * `pg_writer`: PostgreSQL's group-commit dispatcher and the start-up
//!   connection check;
//! * `durability`: whether a write made now would be durable (last write,
//!   database file identity, schema; the probe write);
//! * `query`: history, timelines, firing-now and counts, with the `WHERE`
//!   builder (`Filter`) both databases share;
//! * `cursor`: the keyset cursor of `/history`;
//! * `report`: `/report` and the dashboard chart;
//! * `retention`: deleting old events in batches.
//!
//! Every query is written once with `$N` placeholders (SQLite accepts them
//! too) and run on whichever pool is configured; the few dialect
//! differences (label filters, the raw alert's layout) are chosen where
//! they occur. Times are stored as Unix epoch milliseconds, so ordering,
//! keyset pagination and bucketing are plain integer arithmetic on both
//! databases.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::config::{Backend, SqliteSync};
use crate::error::Error;
use crate::model::NewEvent;

/// The migrations for SQLite (`migrations/sqlite`).
static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
/// The migrations for PostgreSQL (`migrations/postgres`).
static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

#[derive(Debug, Clone)]
enum Pools {
    /// One writer connection (SQLite allows one writer at a time; queueing
    /// in the pool is cheaper than `SQLITE_BUSY` retries) and a read pool.
    Sqlite {
        write: SqlitePool,
        read: SqlitePool,
        jobs: mpsc::Sender<WriteJob>,
        /// Asks the writer to finish a checkpoint ([`sqlite_checkpointer`](sqlite_writer::sqlite_checkpointer)).
        #[cfg_attr(
            not(test),
            expect(
                dead_code,
                reason = "the checkpointer has its own handle; tests use this one"
            )
        )]
        finish: Arc<Notify>,
        /// Stops the checkpointer when the store is closed.
        stop: keel_telemetry::CancellationToken,
    },
    /// The pool, and the queue of the group-commit dispatcher
    /// ([`postgres_writer`](pg_writer::postgres_writer)).
    Postgres {
        pool: PgPool,
        jobs: mpsc::Sender<WriteJob>,
    },
}

/// Runs `$body` with `$pool` bound to the pool for reads.
macro_rules! on_read {
    ($self:expr, |$pool:ident| $body:expr) => {
        match &$self.pools {
            $crate::store::Pools::Sqlite { read: $pool, .. } => $body,
            $crate::store::Pools::Postgres { pool: $pool, .. } => $body,
        }
    };
}

/// Runs `$body` with `$pool` bound to the pool for writes.
macro_rules! on_write {
    ($self:expr, |$pool:ident| $body:expr) => {
        match &$self.pools {
            $crate::store::Pools::Sqlite { write: $pool, .. } => $body,
            $crate::store::Pools::Postgres { pool: $pool, .. } => $body,
        }
    };
}

macro_rules! bind_all {
    ($query:expr, $params:expr) => {{
        let mut query = $query;
        for param in $params.iter() {
            query = match param {
                $crate::store::query::Param::I64(v) => query.bind(*v),
                $crate::store::query::Param::Text(v) => query.bind(v.as_str()),
                $crate::store::query::Param::Json(v) => query.bind(sqlx::types::Json(v)),
            };
        }
        query
    }};
}

/// Runs `$body` (an expression using the open transaction `$tx`, with `?`)
/// in a transaction on a connection of `$pool` and commits; evaluates to
/// the body's value or the first error.
///
/// After any failure (a statement, the commit) the connection is closed
/// instead of going back to the pool. A failed `COMMIT` can leave SQLite's
/// transaction open (`SQLITE_FULL`, `SQLITE_IOERR`), or SQLite can have
/// rolled it back itself so that sqlx's `ROLLBACK` fails: either way sqlx
/// then believes a transaction is still open, and every later `begin` on
/// that connection would open a savepoint inside it, whose "commit" stores
/// nothing. A fresh connection has no such state; closing one rolls back
/// whatever it had open.
macro_rules! in_transaction {
    ($pool:expr, |$tx:ident| $body:expr) => {{
        match $pool.acquire().await {
            Err(e) => Err(e),
            Ok(mut conn) => {
                let result = async {
                    let mut $tx = sqlx::Connection::begin(&mut *conn).await?;
                    let value = $body;
                    $tx.commit().await?;
                    Ok(value)
                }
                .await;
                if result.is_err()
                    && let Err(e) = conn.close().await
                {
                    tracing::debug!(error = %e, "closing a failed writer connection failed");
                }
                result
            }
        }
    }};
}

mod cursor;
mod durability;
mod outbox;
mod pg_writer;
mod query;
mod report;
mod retention;
mod sqlite_writer;
mod write;

pub use cursor::Cursor;
pub use durability::NotDurable;
pub use outbox::{Backlog, HistoryEntry, HistoryRecord, OutboxRow, Outcomes, Route as OutboxRoute};
pub use pg_writer::POSTGRES_WRITERS;
pub use query::{EventRow, HistoryQuery, StateRow};
pub use report::{Bucket, GroupCount, Report, ReportQuery};
pub use sqlite_writer::CHECKPOINT_INTERVAL;

use durability::Durability;
use write::Delivery;

/// Bytes the readiness probe commits after a write failure.
const PROBE_BYTES: usize = 64 * 1024;

/// Most deliveries the SQLite writer commits in one transaction.
pub const GROUP_COMMIT_MAX: usize = 64;

/// A delivery waiting for the SQLite writer.
#[derive(Debug)]
struct WriteJob {
    delivery: Delivery,
    reply: oneshot::Sender<Result<u64, sqlx::Error>>,
}

fn writer_gone() -> sqlx::Error {
    sqlx::Error::PoolClosed
}

/// `first` and the deliveries waiting behind it now, up to
/// [`GROUP_COMMIT_MAX`].
fn take_group(first: WriteJob, jobs: &mut mpsc::Receiver<WriteJob>) -> Vec<WriteJob> {
    let mut batch = vec![first];
    while batch.len() < GROUP_COMMIT_MAX {
        match jobs.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
    batch
}

/// Answers every delivery of a group with its own count, or the group's
/// error.
fn answer(batch: Vec<WriteJob>, result: Result<Vec<u64>, sqlx::Error>, database: &str) {
    match result {
        Ok(saved) => {
            for (job, n) in batch.into_iter().zip(saved) {
                let _ = job.reply.send(Ok(n));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, deliveries = batch.len(), database, "group commit failed");
            let message = e.to_string();
            for job in batch {
                let _ = job
                    .reply
                    .send(Err(sqlx::Error::Io(std::io::Error::other(message.clone()))));
            }
        }
    }
}

/// What one ingest did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IngestOutcome {
    /// New events stored.
    pub saved: u64,
    /// Alerts in the delivery.
    pub processed: u64,
}

/// A statement run on every new SQLite writer connection: tests set
/// `max_page_count` from it to make the "disk" full and free it again
/// without a restart.
#[derive(Debug, Clone, Default)]
struct WriterHook(Option<Arc<parking_lot::Mutex<Option<String>>>>);

impl WriterHook {
    fn pragma(&self) -> Option<String> {
        self.0.as_ref().and_then(|p| p.lock().clone())
    }
}

/// How [`Store::connect_with`] opens the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreOptions {
    /// Most connections (the PostgreSQL pool; SQLite's read pool).
    pub max_connections: u32,
    /// SQLite's `synchronous` (`SQLITE_SYNCHRONOUS`).
    pub sqlite_synchronous: SqliteSync,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_connections: 16,
            sqlite_synchronous: SqliteSync::default(),
        }
    }
}

/// The event store. Cloning is cheap (pools are shared).
#[derive(Debug, Clone)]
pub struct Store {
    pools: Pools,
    durability: Arc<Durability>,
    /// Which targets a new event's outbox rows name (part 2).
    outbox: Arc<outbox::OutboxRouting>,
}

impl Store {
    /// Connects to `url` (creating a SQLite file if missing), applies the
    /// migrations for that database and returns the store.
    ///
    /// SQLite runs in WAL mode with `synchronous=NORMAL` (a commit survives
    /// a process crash; an OS crash may lose the last commits, never corrupt
    /// the file; [`Store::connect_with`] offers `FULL`), one writer
    /// connection (with a 32 MiB page cache) and
    /// `max_connections` readers. A background task checkpoints every
    /// [`CHECKPOINT_INTERVAL`]: a reader connection copies the log back into
    /// the database file while the writer goes on, then the writer copies
    /// the few frames committed meanwhile, so the log starts over and stays
    /// small under sustained load (see `sqlite_writer::sqlite_checkpointer`).
    ///
    /// # Errors
    /// [`Error::Config`] for an unknown scheme, [`Error::Database`] when the
    /// database cannot be reached, [`Error::Migrate`] when a migration fails.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, Error> {
        Store::connect_with(
            url,
            StoreOptions {
                max_connections,
                ..StoreOptions::default()
            },
        )
        .await
    }

    /// [`Store::connect`] with every option: `sqlite_synchronous` chooses
    /// SQLite's `synchronous` (`FULL` syncs the log at every commit, so an
    /// acknowledged delivery survives power loss; `NORMAL` syncs at
    /// checkpoints only: it survives a crash of the service, not of the
    /// machine, and costs less, see `docs/PERFORMANCE.md`).
    ///
    /// # Errors
    /// As [`Store::connect`].
    pub async fn connect_with(url: &str, options: StoreOptions) -> Result<Store, Error> {
        Store::open_with(url, options, true, WriterHook::default()).await
    }

    /// [`Store::connect`]; `checkpoints: false` leaves out SQLite's
    /// background checkpointer (tests drive it by hand).
    #[cfg(test)]
    async fn open(url: &str, max_connections: u32, checkpoints: bool) -> Result<Store, Error> {
        let options = StoreOptions {
            max_connections,
            ..StoreOptions::default()
        };
        Store::open_with(url, options, checkpoints, WriterHook::default()).await
    }

    /// [`Store::open`] with `hook` run on every new SQLite writer
    /// connection (tests shrink `max_page_count` to fill the "disk").
    async fn open_with(
        url: &str,
        store_options: StoreOptions,
        checkpoints: bool,
        hook: WriterHook,
    ) -> Result<Store, Error> {
        let max_connections = store_options.max_connections;
        let backend = crate::Config::for_database(url).backend()?;
        let mut durability = Durability::new();
        let outbox = Arc::new(outbox::OutboxRouting::default());
        let pools = match backend {
            Backend::Sqlite => {
                let options = SqliteConnectOptions::from_str(url)?;
                let target = options.get_filename().display().to_string();
                let path = options.get_filename().to_owned();
                // SQLite says "unable to open database file" (code 14) for
                // every cause: name the cause when the path shows it.
                let open_error = |e: &dyn std::fmt::Display| Error::Open {
                    target: target.clone(),
                    reason: match keel_telemetry::check::writable_path("DATABASE_URL", &path) {
                        Err(cause) => cause.reason().to_owned(),
                        Ok(()) => e.to_string(),
                    },
                };
                if let Some(dir) = options.get_filename().parent()
                    && !dir.as_os_str().is_empty()
                    && !dir.exists()
                {
                    std::fs::create_dir_all(dir).map_err(|e| Error::Open {
                        target: target.clone(),
                        reason: format!("cannot create directory {}: {e}", dir.display()),
                    })?;
                }
                let options = options
                    .statement_cache_capacity(write::STATEMENT_CACHE)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(match store_options.sqlite_synchronous {
                        SqliteSync::Full => SqliteSynchronous::Full,
                        SqliteSync::Normal => SqliteSynchronous::Normal,
                    })
                    .busy_timeout(Duration::from_secs(10))
                    .pragma("temp_store", "memory");
                let write = SqlitePoolOptions::new()
                    .max_connections(1)
                    .min_connections(1)
                    .acquire_timeout(Duration::from_secs(30))
                    .after_connect(move |conn, _| {
                        let pragma = hook.pragma();
                        Box::pin(async move {
                            if let Some(pragma) = pragma {
                                sqlx::query(&pragma).execute(conn).await?;
                            }
                            Ok(())
                        })
                    })
                    .connect_with(
                        options
                            .clone()
                            .pragma("cache_size", "-32768")
                            .pragma("wal_autocheckpoint", "0")
                            .pragma("journal_size_limit", "67108864"),
                    )
                    .await
                    .map_err(|e| open_error(&e))?;
                SQLITE_MIGRATOR.run(&write).await?;
                let path = options.get_filename();
                if path != std::path::Path::new(":memory:") {
                    durability = Durability::for_file(path).map_err(|e| open_error(&e))?;
                }
                let read = SqlitePoolOptions::new()
                    .max_connections(max_connections.clamp(1, 8))
                    .min_connections(0)
                    .connect_with(options)
                    .await
                    .map_err(|e| open_error(&e))?;
                let (jobs, queue) = mpsc::channel(1024);
                let finish = Arc::new(Notify::new());
                let stop = keel_telemetry::CancellationToken::new();
                let durability = Arc::new(durability);
                tokio::spawn(sqlite_writer::sqlite_writer(
                    write.clone(),
                    queue,
                    finish.clone(),
                    durability.clone(),
                    outbox.clone(),
                ));
                if checkpoints {
                    tokio::spawn(sqlite_writer::sqlite_checkpointer(
                        read.clone(),
                        finish.clone(),
                        stop.clone(),
                    ));
                }
                (
                    Pools::Sqlite {
                        write,
                        read,
                        jobs,
                        finish,
                        stop,
                    },
                    durability,
                )
            }
            Backend::Postgres => {
                let options = PgConnectOptions::from_str(url)?
                    .statement_cache_capacity(write::STATEMENT_CACHE);
                pg_writer::check_postgres(&options).await?;
                let pool = PgPoolOptions::new()
                    .max_connections(max_connections)
                    .min_connections(0)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(options)
                    .await?;
                POSTGRES_MIGRATOR.run(&pool).await?;
                let (jobs, queue) = mpsc::channel(1024);
                let durability = Arc::new(durability);
                tokio::spawn(pg_writer::postgres_writer(
                    pool.clone(),
                    queue,
                    durability.clone(),
                    outbox.clone(),
                ));
                (Pools::Postgres { pool, jobs }, durability)
            }
        };
        let (pools, durability) = pools;
        Ok(Store {
            pools,
            durability,
            outbox,
        })
    }

    /// Which database this store uses.
    pub fn backend(&self) -> Backend {
        match self.pools {
            Pools::Sqlite { .. } => Backend::Sqlite,
            Pools::Postgres { .. } => Backend::Postgres,
        }
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend() {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    /// Closes every connection.
    pub async fn close(&self) {
        match &self.pools {
            Pools::Sqlite {
                write, read, stop, ..
            } => {
                stop.cancel();
                read.close().await;
                write.close().await;
            }
            Pools::Postgres { pool, .. } => pool.close().await,
        }
    }

    /// One round trip to the database.
    ///
    /// # Errors
    /// The database error.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        on_read!(self, |pool| sqlx::query("SELECT 1")
            .execute(pool)
            .await
            .map(|_| ()))
    }

    /// Whether a write made now would be durable (the readiness check; see
    /// [`NotDurable`]): the SQLite file is still the one opened, the schema
    /// is there, and the last write succeeded, or, after a failed one, a
    /// probe write succeeds now (which also turns the state back to
    /// healthy).
    ///
    /// # Errors
    /// [`NotDurable`] saying which of them fails.
    pub async fn check_durable(&self) -> Result<(), NotDurable> {
        self.durability.check_file()?;
        let schema: Result<Option<i64>, sqlx::Error> = on_read!(self, |pool| {
            sqlx::query_scalar("SELECT id FROM alert_events LIMIT 1")
                .fetch_optional(pool)
                .await
        });
        if let Err(e) = schema {
            return Err(match e {
                sqlx::Error::Database(db) => NotDurable::SchemaMissing {
                    reason: db.message().to_owned(),
                },
                other => NotDurable::WritesFailing {
                    reason: other.to_string(),
                },
            });
        }
        match self.durability.last_failure() {
            None => return Ok(()),
            Some((reason, age)) if age < durability::PROBE_AFTER => {
                return Err(NotDurable::WritesFailing { reason });
            }
            Some(_) => {}
        }
        let now = chrono::Utc::now().timestamp_millis();
        let padding = vec![0u8; PROBE_BYTES];
        let result: Result<(), sqlx::Error> = on_write!(self, |pool| in_transaction!(pool, |tx| {
            sqlx::query(
                "INSERT INTO alert_history_write_probe (id, written_at, padding) \
                     VALUES (1, $1, $2) ON CONFLICT (id) DO UPDATE \
                     SET written_at = excluded.written_at, padding = excluded.padding",
            )
            .bind(now)
            .bind(&padding)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE alert_history_write_probe SET padding = NULL WHERE id = 1")
                .execute(&mut *tx)
                .await?;
        }));
        let result = result.map_err(|e| NotDurable::WritesFailing {
            reason: e.to_string(),
        });
        let result = result.and_then(|()| self.durability.check_file());
        self.durability.record(&result);
        result
    }

    /// Stores a delivery in one transaction: each event is inserted, or, if
    /// the same (fingerprint, status, startsAt, endsAt) is already stored,
    /// its `last_seen` and `occurrences` move on (on PostgreSQL counted in
    /// `alert_event_redeliveries`, read through the `alert_events_seen`
    /// view) and its annotations, generatorURL and raw JSON become the
    /// delivered ones (on PostgreSQL the row is rewritten only if they
    /// changed);
    /// the current-state row of each fingerprint moves forward (never back to
    /// an older state). Nothing is visible before the commit, and a failure
    /// rolls everything back.
    ///
    /// Rows are written in key order, so concurrent deliveries on PostgreSQL
    /// take row locks in the same order and cannot deadlock each other; the
    /// unique index makes concurrent inserts of one event race-safe.
    ///
    /// The delivery is encoded on the caller's task (JSON columns serialized
    /// once, repeats within it folded); rows are then written with one
    /// multi-row upsert per table and chunk (one chunk of up to 32 rows,
    /// more only for larger groups; at most 35 sizes, so every statement
    /// stays prepared), and one commit.
    ///
    /// On SQLite (one writer at a time) deliveries are handed to a single
    /// writer task that commits the deliveries waiting at that moment (up to
    /// [`GROUP_COMMIT_MAX`]) in one transaction. Their rows are merged first,
    /// exactly as if written one after the other (an event carried by two
    /// deliveries gains two occurrences and counts as saved for the first;
    /// state rows still only move forward), so a group costs the statements
    /// of one large delivery. Every caller is answered only after that
    /// commit, with its own `saved` count, and if the commit fails every
    /// delivery in it gets the error.
    ///
    /// # Errors
    /// The database error (the transaction is rolled back).
    pub async fn ingest(
        &self,
        events: &[NewEvent],
        now_ms: i64,
    ) -> Result<IngestOutcome, sqlx::Error> {
        let processed = events.len() as u64;
        if events.is_empty() {
            return Ok(IngestOutcome {
                saved: 0,
                processed,
            });
        }
        let saved = match &self.pools {
            Pools::Sqlite { jobs, .. } | Pools::Postgres { jobs, .. } => {
                let (reply, answer) = oneshot::channel();
                let job = WriteJob {
                    delivery: Delivery::encode(events, now_ms),
                    reply,
                };
                jobs.send(job).await.map_err(|_| writer_gone())?;
                answer.await.map_err(|_| writer_gone())??
            }
        };
        Ok(IngestOutcome { saved, processed })
    }
}

/// A pool of the configured database, for the modules that keep tables of
/// their own (filter rules, acknowledgements: [`crate::filters`]).
#[derive(Debug, Clone, Copy)]
pub(crate) enum PoolRef<'a> {
    /// SQLite.
    Sqlite(&'a SqlitePool),
    /// PostgreSQL.
    Postgres(&'a PgPool),
}

impl Store {
    /// The pool for reads.
    pub(crate) fn read_pool(&self) -> PoolRef<'_> {
        on_read!(self, |pool| PoolRef::from(pool))
    }

    /// The pool for writes (on SQLite the writer's one connection, shared
    /// with ingest, so writes never meet `SQLITE_BUSY`).
    pub(crate) fn write_pool(&self) -> PoolRef<'_> {
        on_write!(self, |pool| PoolRef::from(pool))
    }
}

impl<'a> From<&'a SqlitePool> for PoolRef<'a> {
    fn from(pool: &'a SqlitePool) -> Self {
        PoolRef::Sqlite(pool)
    }
}

impl<'a> From<&'a PgPool> for PoolRef<'a> {
    fn from(pool: &'a PgPool) -> Self {
        PoolRef::Postgres(pool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_webhook;

    /// One delivery of `n` new firing alerts named `{tag}-{i}`.
    fn delivery(tag: &str, n: usize) -> Vec<NewEvent> {
        let alerts: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    r#"{{"status":"firing","labels":{{"alertname":"A","instance":"{tag}-{i}"}},"annotations":{{"summary":"{}"}},"startsAt":"2026-01-01T00:00:00Z","fingerprint":"{tag}-{i:08}"}}"#,
                    "x".repeat(200)
                )
            })
            .collect();
        parse_webhook(format!(r#"{{"alerts":[{}]}}"#, alerts.join(",")).as_bytes()).unwrap()
    }

    /// Frames in the write-ahead log now: `mxFrame` of the wal-index
    /// header, a native-endian u32 at byte 16 of the `-shm` file (SQLite's
    /// file format, section 4.5). Read from the file, not by a checkpoint,
    /// which would itself copy the frames.
    fn log_frames(db: &std::path::Path) -> u32 {
        let shm = std::fs::read(db.with_extension("db-shm")).unwrap();
        u32::from_ne_bytes(shm[16..20].try_into().unwrap())
    }

    /// The state a checkpoint beside a busy writer leaves: frames committed
    /// while it ran are not copied. A reader's open snapshot plays the part
    /// of "while it ran": the pass cannot copy past it.
    async fn commits_during_a_pass(store: &Store, read: &SqlitePool, db: &std::path::Path) -> u32 {
        store.ingest(&delivery("a", 200), 1).await.unwrap();
        let mut snapshot = read.begin().await.unwrap();
        let _: (i64,) = sqlx::query_as("SELECT count(*) FROM alert_events")
            .fetch_one(&mut *snapshot)
            .await
            .unwrap();
        store.ingest(&delivery("b", 200), 2).await.unwrap();
        assert!(sqlite_writer::checkpoint_passes(read).await.unwrap());
        snapshot.rollback().await.unwrap();
        log_frames(db)
    }

    /// Events stored with fingerprints `{tag}-*`.
    async fn stored(read: &SqlitePool, tag: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM alert_events WHERE fingerprint LIKE $1")
            .bind(format!("{tag}-%"))
            .fetch_one(read)
            .await
            .unwrap()
    }

    /// `PRAGMA max_page_count` plays a full disk: every delivery answered
    /// `Ok` is stored, none answered `Err` is, readiness fails while the
    /// "disk" is full, and with space back the same store (no restart)
    /// takes deliveries and is ready again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_disk_fails_writes_until_space_is_back() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let limit = Arc::new(parking_lot::Mutex::new(None));
        let options = StoreOptions {
            max_connections: 2,
            ..StoreOptions::default()
        };
        let store = Store::open_with(&url, options, false, WriterHook(Some(limit.clone())))
            .await
            .unwrap();
        let Pools::Sqlite { write, read, .. } = &store.pools else {
            unreachable!()
        };
        store.ingest(&delivery("warm", 5), 1).await.unwrap();
        store.check_durable().await.unwrap();

        let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
            .fetch_one(read)
            .await
            .unwrap();
        let full = format!("PRAGMA max_page_count = {}", pages + 12);
        *limit.lock() = Some(full.clone());
        sqlx::query(&full).execute(write).await.unwrap();
        let (mut acked, mut refused) = (Vec::new(), Vec::new());
        for i in 0..40 {
            let tag = format!("d{i:02}");
            match store.ingest(&delivery(&tag, 20), i).await {
                Ok(outcome) => {
                    assert_eq!(outcome.saved, 20);
                    acked.push(tag);
                }
                Err(_) => refused.push(tag),
            }
        }
        assert!(!acked.is_empty() && !refused.is_empty(), "{acked:?}");
        assert!(matches!(
            store.check_durable().await,
            Err(NotDurable::WritesFailing { .. })
        ));

        // Even once the failure is old enough to probe, the probe fails.
        store.durability.age_failure(durability::PROBE_AFTER);
        assert!(matches!(
            store.check_durable().await,
            Err(NotDurable::WritesFailing { .. })
        ));

        // Space is back, for the writer's connection and any new one: the
        // probe turns readiness green without a delivery.
        let roomy = "PRAGMA max_page_count = 1073741823".to_owned();
        *limit.lock() = Some(roomy.clone());
        sqlx::query(&roomy).execute(write).await.unwrap();
        store.check_durable().await.unwrap_err();
        store.durability.age_failure(durability::PROBE_AFTER);
        store.check_durable().await.unwrap();
        store.check_durable().await.unwrap();
        assert_eq!(
            store
                .ingest(&delivery("after", 20), 99)
                .await
                .unwrap()
                .saved,
            20
        );
        acked.push("after".to_owned());

        for tag in &acked {
            assert_eq!(stored(read, tag).await, 20, "{tag} was answered Ok");
        }
        for tag in &refused {
            assert_eq!(stored(read, tag).await, 0, "{tag} was answered Err");
        }
        store.close().await;
        let again = Store::open(&url, 2, false).await.unwrap();
        let Pools::Sqlite { read, .. } = &again.pools else {
            unreachable!()
        };
        for tag in &acked {
            assert_eq!(stored(read, tag).await, 20, "{tag} lost at restart");
        }
        again.close().await;
    }

    /// The checkpointer (on the kit's `every`) ends when the store is
    /// closed, so no task outlives the store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_checkpointer_ends_with_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let store = Store::open(&format!("sqlite://{}", db.display()), 2, true)
            .await
            .unwrap();
        store.ingest(&delivery("a", 5), 1).await.unwrap();
        let Pools::Sqlite { read, stop, .. } = &store.pools else {
            unreachable!()
        };
        let task = tokio::spawn(sqlite_writer::sqlite_checkpointer(
            read.clone(),
            Arc::new(Notify::new()),
            stop.clone(),
        ));
        let stop = stop.clone();
        store.close().await;
        assert!(stop.is_cancelled());
        tokio::time::timeout(std::time::Duration::from_secs(5), task)
            .await
            .expect("the checkpointer ends when the store closes")
            .unwrap();
    }

    #[tokio::test]
    async fn the_log_starts_over_once_the_writer_finishes_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let url = format!("sqlite://{}", db.display());
        let store = Store::open(&url, 2, false).await.unwrap();
        let Pools::Sqlite { read, finish, .. } = &store.pools else {
            unreachable!()
        };
        let read = read.clone();

        // Without the writer's step the log only grows.
        let before = commits_during_a_pass(&store, &read, &db).await;
        store.ingest(&delivery("c", 1), 3).await.unwrap();
        let grown = log_frames(&db);
        assert!(grown > before, "{grown} <= {before}");

        // With it, the next commit starts the log over: only its own
        // frames are in it.
        let before = commits_during_a_pass(&store, &read, &db).await;
        finish.notify_one();
        store.ingest(&delivery("d", 1), 4).await.unwrap();
        let after = log_frames(&db);
        assert!(
            after < 20,
            "{after} frames after a finished checkpoint ({before} before)"
        );
        assert_eq!(store.count_events().await.unwrap(), 402);
        store.close().await;
    }
}
