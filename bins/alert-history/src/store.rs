//! The event store: SQLite or PostgreSQL behind one API.
//!
//! Every query is written once with `$N` placeholders (SQLite accepts them
//! too) and run on whichever pool is configured; the few dialect differences
//! (label filters) are chosen in [`Store::history`]. Times are stored as
//! Unix epoch milliseconds, so ordering, keyset pagination and bucketing are
//! plain integer arithmetic on both databases.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::types::Json;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::config::Backend;
use crate::error::Error;
use crate::model::{NewEvent, Status};

mod durability;
mod write;
use durability::Durability;
pub use durability::NotDurable;
use write::Delivery;

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
        /// Asks the writer to finish a checkpoint ([`sqlite_checkpointer`]).
        #[cfg_attr(
            not(test),
            expect(
                dead_code,
                reason = "the checkpointer has its own handle; tests use this one"
            )
        )]
        finish: Arc<Notify>,
    },
    /// The pool, and the queue of the group-commit dispatcher
    /// ([`postgres_writer`]).
    Postgres {
        pool: PgPool,
        jobs: mpsc::Sender<WriteJob>,
    },
}

/// Runs `$body` with `$pool` bound to the pool for reads.
macro_rules! on_read {
    ($self:expr, |$pool:ident| $body:expr) => {
        match &$self.pools {
            Pools::Sqlite { read: $pool, .. } => $body,
            Pools::Postgres { pool: $pool, .. } => $body,
        }
    };
}

/// Runs `$body` with `$pool` bound to the pool for writes.
macro_rules! on_write {
    ($self:expr, |$pool:ident| $body:expr) => {
        match &$self.pools {
            Pools::Sqlite { write: $pool, .. } => $body,
            Pools::Postgres { pool: $pool, .. } => $body,
        }
    };
}

/// A bind parameter of a dynamically built query.
#[derive(Debug, Clone)]
enum Param {
    I64(i64),
    Text(String),
    Json(Value),
}

macro_rules! bind_all {
    ($query:expr, $params:expr) => {{
        let mut query = $query;
        for param in $params.iter() {
            query = match param {
                Param::I64(v) => query.bind(*v),
                Param::Text(v) => query.bind(v.as_str()),
                Param::Json(v) => query.bind(Json(v)),
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

/// Group commits in flight at once on PostgreSQL.
pub const POSTGRES_WRITERS: usize = 8;

/// The PostgreSQL group-commit dispatcher: takes the deliveries waiting now
/// (up to [`GROUP_COMMIT_MAX`]) and commits them in one transaction on its
/// own task, up to [`POSTGRES_WRITERS`] transactions at a time; deliveries
/// that arrive meanwhile form the next group. Fewer, larger transactions
/// cost the server far less than one per delivery (one WAL flush, one
/// statement per table and chunk). Rows are locked in key order, so
/// concurrent groups, and other instances, cannot deadlock. Ends when every
/// sender is gone.
async fn postgres_writer(
    pool: PgPool,
    mut jobs: mpsc::Receiver<WriteJob>,
    durability: Arc<Durability>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(POSTGRES_WRITERS));
    while let Some(first) = jobs.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let batch = take_group(first, &mut jobs);
        let pool = pool.clone();
        let durability = durability.clone();
        tokio::spawn(async move {
            let deliveries: Vec<&Delivery> = batch.iter().map(|job| &job.delivery).collect();
            let result = in_transaction!(pool, |tx| write::write_postgres(&mut tx, &deliveries)
                .await?);
            durability.record(&result);
            answer(batch, result, "PostgreSQL");
            drop(slot);
        });
    }
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

/// The SQLite writer: takes the deliveries waiting now, commits them in one
/// transaction, answers each. When the checkpointer asks (`finish`), it
/// then completes the checkpoint itself (see [`sqlite_checkpointer`]).
/// Ends when every sender is gone.
///
/// A group is answered `Ok` only when its commit succeeded and the path
/// still names the database file that was opened (a write to a deleted
/// file "succeeds" and is lost at restart).
async fn sqlite_writer(
    pool: SqlitePool,
    mut jobs: mpsc::Receiver<WriteJob>,
    finish: Arc<Notify>,
    durability: Arc<Durability>,
) {
    loop {
        // The checkpoint first: under sustained load a delivery is always
        // waiting.
        let first = tokio::select! {
            biased;
            () = finish.notified() => {
                finish_checkpoint(&pool).await;
                continue;
            }
            job = jobs.recv() => match job {
                Some(job) => job,
                None => return,
            },
        };
        let batch = take_group(first, &mut jobs);
        let deliveries: Vec<&Delivery> = batch.iter().map(|job| &job.delivery).collect();
        let result = in_transaction!(pool, |tx| write::write_sqlite(&mut tx, &deliveries).await?)
            .and_then(|saved| {
                durability
                    .check_file()
                    .map(|()| saved)
                    .map_err(|e| sqlx::Error::Io(std::io::Error::other(e.to_string())))
            });
        durability.record(&result);
        answer(batch, result, "SQLite");
    }
}

/// The writer's part of a checkpoint: between two transactions, copies the
/// frames committed since the checkpointer's pass (few: that pass copied
/// the rest), so the whole log is in the database file and the next
/// transaction starts the log over from its beginning.
async fn finish_checkpoint(pool: &SqlitePool) {
    if let Err(e) = passive_checkpoint(pool, "finished by the writer").await
        && !pool.is_closed()
    {
        tracing::warn!(error = %e, "SQLite checkpoint failed");
    }
}

/// One `PASSIVE` checkpoint on `pool`, logged at debug level with its
/// duration; returns (frames in the log, frames copied so far).
async fn passive_checkpoint(pool: &SqlitePool, what: &str) -> Result<(i64, i64), sqlx::Error> {
    let started = tokio::time::Instant::now();
    let (busy, log, copied) =
        sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(pool)
            .await?;
    tracing::debug!(
        busy,
        log,
        copied,
        elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
        "SQLite checkpoint {what}"
    );
    Ok((log, copied))
}

/// How often the SQLite checkpointer copies the write-ahead log back into
/// the database file.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);

/// The checkpointer repeats its pass until one copies at most this many
/// new frames (or [`CHECKPOINT_PASSES`] were made) before it hands the rest
/// to the writer. The writer's share is a stall for every delivery, and
/// its cost is mostly the `fsync` of what it copies: over 60 s at 6,000
/// alerts/s, stopping at 256 frames left the writer 24 ms a round on
/// average (p99 of the webhook 52-69 ms), at 8 frames 10 ms (p99 44 ms).
const FINISH_FRAMES: i64 = 8;

/// Most checkpointer passes per round.
const CHECKPOINT_PASSES: usize = 12;

/// Checkpoints the SQLite write-ahead log every [`CHECKPOINT_INTERVAL`]
/// until the pool closes, in two steps:
///
/// 1. `PASSIVE` checkpoints from a reader connection copy the frames
///    committed so far into the database file (and `fsync` both) while the
///    writer goes on committing. A pass copies what was committed before it
///    started, so passes repeat until one has little left to copy (at most
///    [`FINISH_FRAMES`]); each is shorter than the last, since it only
///    copies what was committed during the one before;
/// 2. the writer, between two transactions, runs one more `PASSIVE`
///    checkpoint, which copies only what was committed during the last
///    pass: about 10 ms on average under sustained load, most of it
///    `fsync`, where copying the whole quarter second would stall every
///    delivery for tens of milliseconds.
///
/// Step 2 is what lets the log start over: SQLite rewinds the log only
/// when every frame in it has been copied, which a checkpoint beside a busy
/// writer never achieves (more frames have been committed by the time it
/// ends); without it the log grows without bound under sustained load
/// (1.5 GB in 15 s at 6,000 alerts/s), and every new frame lands on a
/// fresh, zero-filled page of the file. The writer has automatic
/// checkpoints turned off.
async fn sqlite_checkpointer(read: SqlitePool, finish: Arc<Notify>) {
    let mut tick = tokio::time::interval(CHECKPOINT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if read.is_closed() {
            return;
        }
        match checkpoint_passes(&read).await {
            Ok(true) => finish.notify_one(),
            Ok(false) => {}
            Err(e) => {
                if read.is_closed() {
                    return;
                }
                tracing::warn!(error = %e, "SQLite checkpoint failed");
            }
        }
    }
}

/// Step 1 of [`sqlite_checkpointer`]: `PASSIVE` checkpoints from `read`
/// until one copies at most [`FINISH_FRAMES`] new frames, at most
/// [`CHECKPOINT_PASSES`]. Returns whether the log holds frames (so the
/// writer has a checkpoint to finish).
async fn checkpoint_passes(read: &SqlitePool) -> Result<bool, sqlx::Error> {
    let mut copied_before = None;
    for _ in 0..CHECKPOINT_PASSES {
        let (log, copied) = passive_checkpoint(read, "pass").await?;
        if log <= 0 {
            return Ok(false);
        }
        // A log that started over since the last pass counts from zero.
        let new = copied - copied_before.filter(|&c| c <= copied).unwrap_or(0);
        copied_before = Some(copied);
        if new <= FINISH_FRAMES {
            break;
        }
    }
    Ok(true)
}

/// Collects `WHERE` conditions and their parameters, numbering `$N`.
#[derive(Debug, Default)]
struct Filter {
    conditions: Vec<String>,
    params: Vec<Param>,
}

impl Filter {
    fn param(&mut self, p: Param) -> String {
        self.params.push(p);
        format!("${}", self.params.len())
    }

    fn eq(&mut self, column: &str, value: &Option<String>) {
        if let Some(v) = value {
            let p = self.param(Param::Text(v.clone()));
            self.conditions.push(format!("{column} = {p}"));
        }
    }

    fn cmp(&mut self, column: &str, op: &str, value: Option<i64>) {
        if let Some(v) = value {
            let p = self.param(Param::I64(v));
            self.conditions.push(format!("{column} {op} {p}"));
        }
    }

    fn sql(&self) -> String {
        if self.conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.conditions.join(" AND "))
        }
    }
}

/// A position in the history, newest first: the last row of a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The row's `event_at`.
    pub event_at: i64,
    /// The row's id.
    pub id: i64,
}

impl Cursor {
    /// The opaque text form used in `cursor=` and the `Link` header.
    pub fn encode(&self) -> String {
        format!("{:x}-{:x}", self.event_at as u64, self.id as u64)
    }

    /// Parses [`Cursor::encode`]'s output.
    pub fn decode(text: &str) -> Option<Cursor> {
        let (a, b) = text.split_once('-')?;
        Some(Cursor {
            event_at: u64::from_str_radix(a, 16).ok()? as i64,
            id: u64::from_str_radix(b, 16).ok()? as i64,
        })
    }
}

/// Filters of `GET /history`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistoryQuery {
    /// `alertname` equals.
    pub alertname: Option<String>,
    /// Firing or resolved events only.
    pub status: Option<Status>,
    /// `fingerprint` equals.
    pub fingerprint: Option<String>,
    /// `namespace` label equals.
    pub namespace: Option<String>,
    /// `severity` label equals.
    pub severity: Option<String>,
    /// Events at or after (epoch ms).
    pub since: Option<i64>,
    /// Events at or before (epoch ms).
    pub until: Option<i64>,
    /// Every `(name, value)` label must match.
    pub labels: Vec<(String, String)>,
    /// Page size, 1..=1000.
    pub limit: u32,
    /// Rows to skip (the predecessor's pagination; slow on deep pages).
    pub offset: u64,
    /// Keyset position: rows strictly older than it.
    pub cursor: Option<Cursor>,
}

/// One stored event.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct EventRow {
    /// Row id (insertion order).
    pub id: i64,
    /// Alertmanager fingerprint.
    pub fingerprint: String,
    /// `alertname` label.
    pub alertname: String,
    /// `namespace` label.
    pub namespace: Option<String>,
    /// `severity` label.
    pub severity: Option<String>,
    /// `firing` or `resolved`.
    pub status: String,
    /// `startsAt`, epoch ms.
    pub starts_at: i64,
    /// `endsAt`, epoch ms.
    pub ends_at: i64,
    /// When the state change happened, epoch ms.
    pub event_at: i64,
    /// Labels.
    pub labels: Json<BTreeMap<String, String>>,
    /// Annotations.
    pub annotations: Json<Map<String, Value>>,
    /// `generatorURL`.
    pub generator_url: Option<String>,
    /// First delivery, epoch ms.
    pub received_at: i64,
    /// Latest delivery, epoch ms.
    pub last_seen: i64,
    /// Deliveries that carried this event.
    pub occurrences: i64,
}

const EVENT_COLUMNS: &str = "id, fingerprint, alertname, namespace, severity, status, starts_at, \
    ends_at, event_at, labels, annotations, generator_url, received_at, last_seen, occurrences";

/// The current state of one alert.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct StateRow {
    /// Alertmanager fingerprint.
    pub fingerprint: String,
    /// `alertname` label.
    pub alertname: String,
    /// `namespace` label.
    pub namespace: Option<String>,
    /// `severity` label.
    pub severity: Option<String>,
    /// `firing` or `resolved`.
    pub status: String,
    /// `startsAt`, epoch ms.
    pub starts_at: i64,
    /// `endsAt`, epoch ms.
    pub ends_at: i64,
    /// Labels.
    pub labels: Json<BTreeMap<String, String>>,
    /// Annotations.
    pub annotations: Json<Map<String, Value>>,
    /// Latest delivery that changed or confirmed it, epoch ms.
    pub updated_at: i64,
}

/// What one ingest did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IngestOutcome {
    /// New events stored.
    pub saved: u64,
    /// Alerts in the delivery.
    pub processed: u64,
}

/// Filters of `GET /report`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportQuery {
    /// `alertname` equals.
    pub alertname: Option<String>,
    /// `namespace` equals.
    pub namespace: Option<String>,
    /// Events at or after (epoch ms).
    pub since: Option<i64>,
    /// Events at or before (epoch ms).
    pub until: Option<i64>,
    /// Smallest flap count listed.
    pub min_flap: u32,
    /// Rows in each top list.
    pub top: u32,
}

impl Default for ReportQuery {
    fn default() -> Self {
        ReportQuery {
            alertname: None,
            namespace: None,
            since: None,
            until: None,
            min_flap: 2,
            top: 10,
        }
    }
}

/// One `(alertname, namespace)` group and a count.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct GroupCount {
    /// `alertname`.
    pub alertname: String,
    /// `namespace` (none: `null`).
    pub namespace: Option<String>,
    /// Events, or status changes for the flapping list.
    pub n: i64,
}

/// The numbers behind `GET /report`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Report {
    /// Events matching the filters.
    pub total_events: i64,
    /// Distinct fingerprints among them.
    pub unique_alerts: i64,
    /// Groups with the most events.
    pub top_alerts: Vec<GroupCount>,
    /// Groups whose status changed at least `min_flap` times, in time order.
    pub flapping_alerts: Vec<GroupCount>,
    /// Alerts firing now (current state, same `alertname`/`namespace` filter).
    pub firing_now: i64,
    /// Alerts resolved now.
    pub resolved_now: i64,
    /// Firing-now alerts by severity (`none` when unlabelled).
    pub firing_by_severity: BTreeMap<String, i64>,
    /// Matching events by severity.
    pub events_by_severity: BTreeMap<String, i64>,
    /// Matching events by namespace (`none` when unlabelled).
    pub events_by_namespace: BTreeMap<String, i64>,
}

/// One bucket of the events-over-time chart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Bucket {
    /// Bucket start, epoch ms.
    pub start: i64,
    /// Firing events in it.
    pub firing: i64,
    /// Resolved events in it.
    pub resolved: i64,
}

/// How long start-up waits for PostgreSQL to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection to PostgreSQL before the pool is built: its error names
/// the cause (connection refused, unknown host, authentication, missing
/// database) where the pool would only report a timeout.
async fn check_postgres(options: &PgConnectOptions) -> Result<(), Error> {
    use sqlx::Connection;
    let target = format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("")
    );
    let reason = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        sqlx::postgres::PgConnection::connect_with(options),
    )
    .await
    {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            return Ok(());
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
    };
    Err(Error::Open { target, reason })
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

/// The event store. Cloning is cheap (pools are shared).
#[derive(Debug, Clone)]
pub struct Store {
    pools: Pools,
    durability: Arc<Durability>,
}

impl Store {
    /// Connects to `url` (creating a SQLite file if missing), applies the
    /// migrations for that database and returns the store.
    ///
    /// SQLite runs in WAL mode with `synchronous=NORMAL` (a commit survives
    /// a process crash; an OS crash may lose the last commits, never corrupt
    /// the file), one writer connection (with a 32 MiB page cache) and
    /// `max_connections` readers. A background task checkpoints every
    /// [`CHECKPOINT_INTERVAL`]: a reader connection copies the log back into
    /// the database file while the writer goes on, then the writer copies
    /// the few frames committed meanwhile, so the log starts over and stays
    /// small under sustained load (see [`sqlite_checkpointer`]).
    ///
    /// # Errors
    /// [`Error::Config`] for an unknown scheme, [`Error::Database`] when the
    /// database cannot be reached, [`Error::Migrate`] when a migration fails.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, Error> {
        Store::open(url, max_connections, true).await
    }

    /// [`Store::connect`]; `checkpoints: false` leaves out SQLite's
    /// background checkpointer (tests drive it by hand).
    async fn open(url: &str, max_connections: u32, checkpoints: bool) -> Result<Store, Error> {
        Store::open_with(url, max_connections, checkpoints, WriterHook::default()).await
    }

    /// [`Store::open`] with `hook` run on every new SQLite writer
    /// connection (tests shrink `max_page_count` to fill the "disk").
    async fn open_with(
        url: &str,
        max_connections: u32,
        checkpoints: bool,
        hook: WriterHook,
    ) -> Result<Store, Error> {
        let backend = crate::Config::for_database(url).backend()?;
        let mut durability = Durability::new();
        let pools = match backend {
            Backend::Sqlite => {
                let options = SqliteConnectOptions::from_str(url)?;
                let target = options.get_filename().display().to_string();
                let open_error = |e: &dyn std::fmt::Display| Error::Open {
                    target: target.clone(),
                    reason: e.to_string(),
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
                    .synchronous(SqliteSynchronous::Normal)
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
                let durability = Arc::new(durability);
                tokio::spawn(sqlite_writer(
                    write.clone(),
                    queue,
                    finish.clone(),
                    durability.clone(),
                ));
                if checkpoints {
                    tokio::spawn(sqlite_checkpointer(read.clone(), finish.clone()));
                }
                (
                    Pools::Sqlite {
                        write,
                        read,
                        jobs,
                        finish,
                    },
                    durability,
                )
            }
            Backend::Postgres => {
                let options = PgConnectOptions::from_str(url)?
                    .statement_cache_capacity(write::STATEMENT_CACHE);
                check_postgres(&options).await?;
                let pool = PgPoolOptions::new()
                    .max_connections(max_connections)
                    .min_connections(0)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(options)
                    .await?;
                POSTGRES_MIGRATOR.run(&pool).await?;
                let (jobs, queue) = mpsc::channel(1024);
                let durability = Arc::new(durability);
                tokio::spawn(postgres_writer(pool.clone(), queue, durability.clone()));
                (Pools::Postgres { pool, jobs }, durability)
            }
        };
        let (pools, durability) = pools;
        Ok(Store { pools, durability })
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
            Pools::Sqlite { write, read, .. } => {
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

    /// A page of history, newest first (by event time, then id).
    ///
    /// # Errors
    /// The database error.
    pub async fn history(&self, q: &HistoryQuery) -> Result<Vec<EventRow>, sqlx::Error> {
        let mut f = Filter::default();
        f.eq("alertname", &q.alertname);
        f.eq("status", &q.status.map(|s| s.as_str().to_owned()));
        f.eq("fingerprint", &q.fingerprint);
        f.eq("namespace", &q.namespace);
        f.eq("severity", &q.severity);
        f.cmp("event_at", ">=", q.since);
        f.cmp("event_at", "<=", q.until);
        for (name, value) in &q.labels {
            match self.backend() {
                Backend::Postgres => {
                    let mut object = Map::new();
                    object.insert(name.clone(), Value::String(value.clone()));
                    let p = f.param(Param::Json(Value::Object(object)));
                    f.conditions.push(format!("labels @> {p}"));
                }
                Backend::Sqlite if !name.contains(['"', '\\']) => {
                    // Any UTF-8 name (`service.name`) is one key in a
                    // quoted JSON path.
                    let path = f.param(Param::Text(format!("$.\"{name}\"")));
                    let v = f.param(Param::Text(value.clone()));
                    f.conditions
                        .push(format!("json_extract(labels, {path}) = {v}"));
                }
                Backend::Sqlite => {
                    // A quote or backslash cannot be written in a JSON
                    // path: compare the keys themselves.
                    let k = f.param(Param::Text(name.clone()));
                    let v = f.param(Param::Text(value.clone()));
                    f.conditions.push(format!(
                        "EXISTS (SELECT 1 FROM json_each(labels) WHERE key = {k} AND value = {v})"
                    ));
                }
            }
        }
        if let Some(c) = q.cursor {
            let a = f.param(Param::I64(c.event_at));
            let b = f.param(Param::I64(c.id));
            f.conditions.push(format!("(event_at, id) < ({a}, {b})"));
        }
        let limit = f.param(Param::I64(i64::from(q.limit)));
        let offset = f.param(Param::I64(q.offset.min(i64::MAX as u64) as i64));
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM alert_events_seen{} ORDER BY event_at DESC, id DESC LIMIT {limit} OFFSET {offset}",
            f.sql()
        );
        on_read!(self, |pool| bind_all!(
            sqlx::query_as::<_, EventRow>(&sql),
            f.params
        )
        .fetch_all(pool)
        .await)
    }

    /// The raw alert JSON of every event of one alert, oldest first, exactly
    /// as delivered (unknown fields included).
    ///
    /// # Errors
    /// The database error.
    pub async fn raw_events(&self, fingerprint: &str) -> Result<Vec<Value>, sqlx::Error> {
        let raw = match self.backend() {
            Backend::Sqlite => "raw",
            Backend::Postgres => write::RAW_POSTGRES,
        };
        let sql =
            format!("SELECT {raw} FROM alert_events WHERE fingerprint = $1 ORDER BY event_at, id");
        let rows: Vec<(Json<Value>,)> = on_read!(self, |pool| sqlx::query_as(&sql)
            .bind(fingerprint)
            .fetch_all(pool)
            .await)?;
        Ok(rows.into_iter().map(|(raw,)| raw.0).collect())
    }

    /// Every event of one alert, oldest first, and its current state.
    ///
    /// # Errors
    /// The database error.
    pub async fn alert(
        &self,
        fingerprint: &str,
    ) -> Result<(Vec<EventRow>, Option<StateRow>), sqlx::Error> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM alert_events_seen WHERE fingerprint = $1 ORDER BY event_at, id"
        );
        let state_sql =
            format!("SELECT {STATE_COLUMNS} FROM {STATE_FROM} WHERE s.fingerprint = $1");
        on_read!(self, |pool| {
            let events = sqlx::query_as::<_, EventRow>(&sql)
                .bind(fingerprint)
                .fetch_all(pool)
                .await?;
            let state = sqlx::query_as::<_, StateRow>(&state_sql)
                .bind(fingerprint)
                .fetch_optional(pool)
                .await?;
            Ok((events, state))
        })
    }

    /// The report: totals, top and flapping `(alertname, namespace)` groups
    /// and a summary of current state.
    ///
    /// Flaps of a group = status changes between consecutive events of that
    /// group in time order (the predecessor's definition), computed in SQL
    /// with a window function.
    ///
    /// # Errors
    /// The database error.
    pub async fn report(&self, q: &ReportQuery) -> Result<Report, sqlx::Error> {
        let mut f = Filter::default();
        f.eq("alertname", &q.alertname);
        f.eq("namespace", &q.namespace);
        f.cmp("event_at", ">=", q.since);
        f.cmp("event_at", "<=", q.until);
        let filter = f.sql();
        let mut top_params = f.params.clone();
        top_params.push(Param::I64(i64::from(q.top)));
        let top_sql = format!(
            "SELECT alertname, namespace, COUNT(*) AS n FROM alert_events{filter} \
             GROUP BY alertname, namespace ORDER BY n DESC, alertname, namespace LIMIT ${}",
            top_params.len()
        );
        let mut flap_params = f.params.clone();
        flap_params.push(Param::I64(i64::from(q.min_flap)));
        flap_params.push(Param::I64(i64::from(q.top)));
        let flap_sql = format!(
            "SELECT alertname, namespace, SUM(changed) AS n FROM (\
                SELECT alertname, namespace, CASE WHEN LAG(status) OVER w IS NOT NULL \
                    AND LAG(status) OVER w <> status THEN 1 ELSE 0 END AS changed \
                FROM alert_events{filter} \
                WINDOW w AS (PARTITION BY alertname, namespace ORDER BY event_at, id)\
             ) AS t GROUP BY alertname, namespace HAVING SUM(changed) >= ${} \
             ORDER BY n DESC, alertname, namespace LIMIT ${}",
            flap_params.len() - 1,
            flap_params.len()
        );
        let totals_sql =
            format!("SELECT COUNT(*), COUNT(DISTINCT fingerprint) FROM alert_events{filter}");
        let severity_sql = format!(
            "SELECT COALESCE(severity, 'none') AS k, COUNT(*) FROM alert_events{filter} GROUP BY COALESCE(severity, 'none')"
        );
        let namespace_sql = format!(
            "SELECT COALESCE(namespace, 'none') AS k, COUNT(*) FROM alert_events{filter} GROUP BY COALESCE(namespace, 'none')"
        );
        // The current states whose event (the start of a firing alert, the
        // end of a resolved one) is in the window, like the events above.
        let mut sf = Filter::default();
        sf.eq("alertname", &q.alertname);
        sf.eq("namespace", &q.namespace);
        const STATE_AT: &str = "CASE WHEN status = 'firing' THEN starts_at ELSE ends_at END";
        sf.cmp(STATE_AT, ">=", q.since);
        sf.cmp(STATE_AT, "<=", q.until);
        let state_filter = sf.sql();
        let status_sql =
            format!("SELECT status, COUNT(*) FROM alert_state{state_filter} GROUP BY status");
        let firing_sev_sql = format!(
            "SELECT COALESCE(severity, 'none') AS k, COUNT(*) FROM alert_state{} GROUP BY COALESCE(severity, 'none')",
            if state_filter.is_empty() {
                " WHERE status = 'firing'".to_owned()
            } else {
                format!("{state_filter} AND status = 'firing'")
            }
        );
        on_read!(self, |pool| {
            let (total_events, unique_alerts): (i64, i64) =
                bind_all!(sqlx::query_as(&totals_sql), f.params)
                    .fetch_one(pool)
                    .await?;
            let top_alerts = bind_all!(sqlx::query_as::<_, GroupCount>(&top_sql), top_params)
                .fetch_all(pool)
                .await?;
            let flapping_alerts =
                bind_all!(sqlx::query_as::<_, GroupCount>(&flap_sql), flap_params)
                    .fetch_all(pool)
                    .await?;
            let by_sev: Vec<(String, i64)> = bind_all!(sqlx::query_as(&severity_sql), f.params)
                .fetch_all(pool)
                .await?;
            let by_ns: Vec<(String, i64)> = bind_all!(sqlx::query_as(&namespace_sql), f.params)
                .fetch_all(pool)
                .await?;
            let statuses: Vec<(String, i64)> = bind_all!(sqlx::query_as(&status_sql), sf.params)
                .fetch_all(pool)
                .await?;
            let firing_sev: Vec<(String, i64)> =
                bind_all!(sqlx::query_as(&firing_sev_sql), sf.params)
                    .fetch_all(pool)
                    .await?;
            let count = |s: &str| statuses.iter().find(|(k, _)| k == s).map_or(0, |(_, n)| *n);
            Ok(Report {
                total_events,
                unique_alerts,
                top_alerts,
                flapping_alerts,
                firing_now: count("firing"),
                resolved_now: count("resolved"),
                firing_by_severity: firing_sev.into_iter().collect(),
                events_by_severity: by_sev.into_iter().collect(),
                events_by_namespace: by_ns.into_iter().collect(),
            })
        })
    }

    /// Alerts whose current state is firing, most recently started first.
    ///
    /// # Errors
    /// The database error.
    pub async fn firing_now(&self, limit: u32) -> Result<Vec<StateRow>, sqlx::Error> {
        let sql = format!(
            "SELECT {STATE_COLUMNS} FROM {STATE_FROM} WHERE s.status = 'firing' \
             ORDER BY s.starts_at DESC, s.fingerprint LIMIT $1"
        );
        on_read!(self, |pool| sqlx::query_as::<_, StateRow>(&sql)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await)
    }

    /// Events per bucket of `bucket_ms` in `[since, until)`, every bucket
    /// present (zeros included).
    ///
    /// # Errors
    /// The database error.
    pub async fn chart(
        &self,
        since: i64,
        until: i64,
        bucket_ms: i64,
    ) -> Result<Vec<Bucket>, sqlx::Error> {
        let bucket_ms = bucket_ms.max(1);
        let sql = "SELECT (event_at - $1) / $3 AS b, status, COUNT(*) FROM alert_events \
                   WHERE event_at >= $1 AND event_at < $2 GROUP BY (event_at - $1) / $3, status";
        let rows: Vec<(i64, String, i64)> = on_read!(self, |pool| sqlx::query_as(sql)
            .bind(since)
            .bind(until)
            .bind(bucket_ms)
            .fetch_all(pool)
            .await)?;
        let count = ((until - since).max(0) + bucket_ms - 1) / bucket_ms;
        let mut buckets: Vec<Bucket> = (0..count)
            .map(|i| Bucket {
                start: since + i * bucket_ms,
                ..Bucket::default()
            })
            .collect();
        for (b, status, n) in rows {
            if let Some(bucket) = usize::try_from(b).ok().and_then(|b| buckets.get_mut(b)) {
                match Status::parse(&status) {
                    Some(Status::Firing) => bucket.firing += n,
                    Some(Status::Resolved) => bucket.resolved += n,
                    None => {}
                }
            }
        }
        Ok(buckets)
    }

    /// How many events are stored.
    ///
    /// # Errors
    /// The database error.
    pub async fn count_events(&self) -> Result<i64, sqlx::Error> {
        on_read!(self, |pool| sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM alert_events"
        )
        .fetch_one(pool)
        .await)
    }

    /// Deletes at most `batch` events whose last delivery is before
    /// `cutoff_ms` (oldest event times first), in its own short transaction, and
    /// returns how many went. Call it repeatedly until it returns less than
    /// `batch`, so a large purge never holds the write lock for long.
    /// Resolved current-state rows older than the cutoff go too.
    ///
    /// # Errors
    /// The database error.
    pub async fn delete_batch(&self, cutoff_ms: i64, batch: u32) -> Result<u64, sqlx::Error> {
        // Walks the (event_at, id) index: an event last delivered before
        // the cutoff happened before it too (event time <= delivery time), so
        // no separate index on last_seen is kept up to date on every
        // redelivery. An event still redelivered stays, however old.
        //
        // On PostgreSQL the redeliveries counted beside an event
        // (`alert_event_redeliveries`) go with it. (A redelivery committed
        // while its event is being deleted can leave a counter row behind;
        // nothing reads one without its event.)
        let deleted = match &self.pools {
            Pools::Sqlite { write, .. } => sqlx::query(
                "DELETE FROM alert_events WHERE id IN \
                 (SELECT id FROM alert_events WHERE event_at < $1 AND last_seen < $1 \
                  ORDER BY event_at, id LIMIT $2)",
            )
            .bind(cutoff_ms)
            .bind(i64::from(batch))
            .execute(write)
            .await?
            .rows_affected(),
            Pools::Postgres { pool, .. } => {
                let (n,): (i64,) = sqlx::query_as(
                    "WITH gone AS (DELETE FROM alert_events WHERE id IN \
                         (SELECT id FROM alert_events_seen WHERE event_at < $1 AND last_seen < $1 \
                          ORDER BY event_at, id LIMIT $2) RETURNING id), \
                     counted AS (DELETE FROM alert_event_redeliveries r USING gone \
                         WHERE r.id = gone.id) \
                     SELECT count(*) FROM gone",
                )
                .bind(cutoff_ms)
                .bind(i64::from(batch))
                .fetch_one(pool)
                .await?;
                n as u64
            }
        };
        let state_sql = "DELETE FROM alert_state WHERE fingerprint IN \
                   (SELECT fingerprint FROM alert_state WHERE status = 'resolved' AND updated_at < $1 \
                    ORDER BY fingerprint LIMIT $2)";
        on_write!(self, |pool| {
            sqlx::query(state_sql)
                .bind(cutoff_ms)
                .bind(i64::from(batch))
                .execute(pool)
                .await?;
            Ok(deleted)
        })
    }
}

/// A state row's columns; its labels and annotations are those of the
/// event it is (the state stores only that event's identity: each write of
/// a state writes its event in the same transaction), and its `updated_at`
/// that event's latest delivery (the row itself is written only when the
/// state changes). `{}` and the time of the change if retention has
/// deleted that event (a state still firing, not delivered for
/// `RETENTION_DAYS`).
const STATE_COLUMNS: &str = "s.fingerprint, s.alertname, s.namespace, s.severity, s.status, \
    s.starts_at, s.ends_at, COALESCE(e.labels, '{}') AS labels, \
    COALESCE(e.annotations, '{}') AS annotations, \
    COALESCE(e.last_seen, s.updated_at) AS updated_at";

/// The state table and, by its identity, its event ([`STATE_COLUMNS`]).
const STATE_FROM: &str = "alert_state s LEFT JOIN alert_events_seen e \
    ON e.fingerprint = s.fingerprint AND e.status = s.status \
    AND e.starts_at = s.starts_at AND e.ends_at = s.ends_at";

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
        assert!(checkpoint_passes(read).await.unwrap());
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
        let store = Store::open_with(&url, 2, false, WriterHook(Some(limit.clone())))
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
