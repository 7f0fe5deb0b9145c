//! The durable registry, SQLite or PostgreSQL through sqlx (`DATABASE_URL`
//! picks; the same tables and semantics, migrations in
//! `migrations/sqlite` and `migrations/postgres`): each VM's spec, its
//! process (pid and start time from `/proc/<pid>/stat`), socket, desired
//! state and restart count, and the attempt journal. What adoption after a
//! restart reads.
//!
//! The SQL is written once with `$n` placeholders, which both drivers bind
//! by number; [`on_pool!`] runs it on whichever pool is open (the two
//! pools are different types, so each arm is compiled for its driver).

use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use crate::spec::VmSpec;

static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// What the operator wants of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Desired {
    /// Keep it running.
    Running,
    /// Watch it, do not recover it.
    Paused,
    /// It stopped on purpose (an exit code in `no_restart_exit_codes`).
    Stopped,
}

impl Desired {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Desired::Running => "running",
            Desired::Paused => "paused",
            Desired::Stopped => "stopped",
        }
    }

    fn parse(s: &str) -> Desired {
        match s {
            "paused" => Desired::Paused,
            "stopped" => Desired::Stopped,
            _ => Desired::Running,
        }
    }
}

/// One registry row.
#[derive(Debug, Clone)]
pub struct VmRecord {
    /// The spec.
    pub spec: VmSpec,
    /// `file` or `api`.
    pub source: String,
    /// The last process started or adopted.
    pub pid: Option<u32>,
    /// Its start time (field 22 of `/proc/<pid>/stat`).
    pub start_time: Option<u64>,
    /// Desired state.
    pub desired: Desired,
    /// Restarts so far.
    pub restarts: u64,
    /// The last orphan reason.
    pub last_reason: Option<String>,
    /// The command line the process was started or adopted with (`None`
    /// for rows written before it was recorded).
    pub cmdline: Option<Vec<String>>,
}

/// One journal row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attempt {
    /// Row id.
    pub id: i64,
    /// Why (an orphan reason, `manual`, `initial_start`, `late_recovery`).
    pub reason: String,
    /// Unix milliseconds.
    pub started_at: i64,
    /// Unix milliseconds, once ended.
    pub ended_at: Option<i64>,
    /// `success`, `failure` or `timeout`, once ended.
    pub outcome: Option<String>,
    /// How the previous process ended, when known.
    pub exit_status: Option<String>,
    /// What went wrong.
    pub error: Option<String>,
}

/// A registry failure.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The database.
    #[error("registry database")]
    Db(#[from] sqlx::Error),
    /// The migrations.
    #[error("registry migrations")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored spec that no longer parses.
    #[error("stored spec of {0} does not parse")]
    Spec(String, #[source] serde_json::Error),
}

/// The open database.
#[derive(Debug, Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the open pool, whichever driver.
macro_rules! on_pool {
    ($self:expr, |$pool:ident| $body:expr) => {
        match &$self.pool {
            Pool::Sqlite($pool) => $body,
            Pool::Postgres($pool) => $body,
        }
    };
}

/// Whether `url` names a database the registry can open.
pub fn supported(url: &str) -> bool {
    ["sqlite:", "postgres://", "postgresql://"]
        .iter()
        .any(|p| url.starts_with(p))
}

/// The registry handle (cheap to clone).
#[derive(Debug, Clone)]
pub struct Registry {
    pool: Pool,
    keep: u32,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One `vms` row as read, before its spec is parsed.
type RawRecord = (
    String,
    String,
    String,
    Option<i64>,
    Option<i64>,
    String,
    i64,
    Option<String>,
    Option<String>,
);

const LOAD: &str = "SELECT id, config, source, pid, start_time, desired_state, restarts, last_reason, cmdline \
     FROM vms ORDER BY id";
const UPSERT: &str = "INSERT INTO vms (id, config, source, socket, desired_state, updated_at) \
     VALUES ($1, $2, $3, $4, 'running', $5) \
     ON CONFLICT (id) DO UPDATE SET config = $2, socket = $4, updated_at = $5";
const SET_PROCESS: &str =
    "UPDATE vms SET pid = $2, start_time = $3, cmdline = $5, updated_at = $4 WHERE id = $1";
const SET_DESIRED: &str = "UPDATE vms SET desired_state = $2, updated_at = $3 WHERE id = $1";
const COUNT_RESTART: &str =
    "UPDATE vms SET restarts = restarts + 1, last_reason = $2, updated_at = $3 WHERE id = $1";
const DELETE_ATTEMPTS: &str = "DELETE FROM attempts WHERE vm_id = $1";
const DELETE_VM: &str = "DELETE FROM vms WHERE id = $1";
const BEGIN_ATTEMPT: &str = "INSERT INTO attempts (vm_id, reason, started_at, exit_status) \
     VALUES ($1, $2, $3, $4) RETURNING id";
const TRIM_ATTEMPTS: &str = "DELETE FROM attempts WHERE vm_id = $1 AND id NOT IN \
     (SELECT id FROM attempts WHERE vm_id = $1 ORDER BY id DESC LIMIT $2)";
const END_ATTEMPT: &str =
    "UPDATE attempts SET ended_at = $2, outcome = $3, error = $4 WHERE id = $1";
const ATTEMPTS: &str = "SELECT id, reason, started_at, ended_at, outcome, exit_status, error FROM attempts \
     WHERE vm_id = $1 ORDER BY id DESC LIMIT $2";

impl Registry {
    /// Opens and migrates `url`: `sqlite://path` (the file is created when
    /// missing) or `postgres://…` (the database must exist; the tables go
    /// in the connection's `search_path`, so `?options[search_path]=host_a`
    /// gives each supervisor its own schema in a shared database). Keeps
    /// the last `keep` attempts per VM.
    ///
    /// # Errors
    /// [`RegistryError`] when the database cannot be opened or migrated.
    pub async fn open(url: &str, keep: u32) -> Result<Registry, RegistryError> {
        let pool = if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(std::time::Duration::from_secs(5));
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await?;
            SQLITE.run(&pool).await?;
            Pool::Sqlite(pool)
        } else {
            let options = PgConnectOptions::from_str(url)?;
            let pool = PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(std::time::Duration::from_secs(10))
                .connect_with(options)
                .await?;
            POSTGRES.run(&pool).await?;
            Pool::Postgres(pool)
        };
        Ok(Registry { pool, keep })
    }

    /// Every VM, by id.
    ///
    /// # Errors
    /// [`RegistryError`].
    pub async fn load(&self) -> Result<Vec<VmRecord>, RegistryError> {
        let rows: Vec<RawRecord> = on_pool!(self, |pool| {
            sqlx::query(LOAD)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|r| {
                    (
                        r.get("id"),
                        r.get("config"),
                        r.get("source"),
                        r.get("pid"),
                        r.get("start_time"),
                        r.get("desired_state"),
                        r.get("restarts"),
                        r.get("last_reason"),
                        r.get("cmdline"),
                    )
                })
                .collect()
        });
        rows.into_iter()
            .map(
                |(id, config, source, pid, start_time, desired, restarts, last_reason, cmdline)| {
                    let spec =
                        serde_json::from_str(&config).map_err(|e| RegistryError::Spec(id, e))?;
                    Ok(VmRecord {
                        spec,
                        source,
                        pid: pid.map(|p| p as u32),
                        start_time: start_time.map(|t| t as u64),
                        desired: Desired::parse(&desired),
                        restarts: restarts as u64,
                        last_reason,
                        // Unreadable JSON counts as not recorded.
                        cmdline: cmdline.and_then(|c| serde_json::from_str(&c).ok()),
                    })
                },
            )
            .collect()
    }

    /// Adds a VM or replaces its spec (its process, desired state and
    /// counters stay).
    ///
    /// # Errors
    /// [`RegistryError`].
    pub async fn upsert(&self, spec: &VmSpec, source: &str) -> Result<(), RegistryError> {
        let config =
            serde_json::to_string(spec).map_err(|e| RegistryError::Spec(spec.id.clone(), e))?;
        let socket = spec.socket_path().to_string_lossy().into_owned();
        on_pool!(self, |pool| {
            sqlx::query(UPSERT)
                .bind(&spec.id)
                .bind(&config)
                .bind(source)
                .bind(&socket)
                .bind(now_ms())
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Records the VM's process (or none): pid, start time and the
    /// command line it runs.
    ///
    /// # Errors
    /// [`RegistryError`].
    pub async fn set_process(
        &self,
        id: &str,
        process: Option<(u32, u64, &[String])>,
    ) -> Result<(), RegistryError> {
        let cmdline = process
            .map(|p| serde_json::to_string(p.2))
            .transpose()
            .map_err(|e| RegistryError::Spec(id.to_owned(), e))?;
        on_pool!(self, |pool| {
            sqlx::query(SET_PROCESS)
                .bind(id)
                .bind(process.map(|p| i64::from(p.0)))
                .bind(process.map(|p| p.1 as i64))
                .bind(now_ms())
                .bind(cmdline.as_deref())
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Records the desired state.
    ///
    /// # Errors
    /// [`RegistryError`].
    pub async fn set_desired(&self, id: &str, desired: Desired) -> Result<(), RegistryError> {
        on_pool!(self, |pool| {
            sqlx::query(SET_DESIRED)
                .bind(id)
                .bind(desired.as_str())
                .bind(now_ms())
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Counts a restart for `reason`.
    ///
    /// # Errors
    /// [`RegistryError`].
    pub async fn count_restart(&self, id: &str, reason: &str) -> Result<(), RegistryError> {
        on_pool!(self, |pool| {
            sqlx::query(COUNT_RESTART)
                .bind(id)
                .bind(reason)
                .bind(now_ms())
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Removes a VM and its journal.
    ///
    /// # Errors
    /// [`RegistryError`].
    pub async fn delete(&self, id: &str) -> Result<(), RegistryError> {
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            sqlx::query(DELETE_ATTEMPTS)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(DELETE_VM).bind(id).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Opens an attempt; returns its id.
    ///
    /// # Errors
    /// [`RegistryError`].
    pub async fn begin_attempt(
        &self,
        id: &str,
        reason: &str,
        exit_status: Option<&str>,
    ) -> Result<i64, RegistryError> {
        let keep = i64::from(self.keep);
        let attempt: i64 = on_pool!(self, |pool| {
            let row = sqlx::query(BEGIN_ATTEMPT)
                .bind(id)
                .bind(reason)
                .bind(now_ms())
                .bind(exit_status)
                .fetch_one(pool)
                .await?;
            sqlx::query(TRIM_ATTEMPTS)
                .bind(id)
                .bind(keep)
                .execute(pool)
                .await?;
            row.get(0)
        });
        Ok(attempt)
    }

    /// Closes an attempt.
    ///
    /// # Errors
    /// [`RegistryError`].
    pub async fn end_attempt(
        &self,
        attempt: i64,
        outcome: &str,
        error: Option<&str>,
    ) -> Result<(), RegistryError> {
        on_pool!(self, |pool| {
            sqlx::query(END_ATTEMPT)
                .bind(attempt)
                .bind(now_ms())
                .bind(outcome)
                .bind(error)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// The last `limit` attempts of `id`, newest first.
    ///
    /// # Errors
    /// [`RegistryError`].
    pub async fn attempts(&self, id: &str, limit: u32) -> Result<Vec<Attempt>, RegistryError> {
        Ok(on_pool!(self, |pool| {
            sqlx::query(ATTEMPTS)
                .bind(id)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|r| Attempt {
                    id: r.get("id"),
                    reason: r.get("reason"),
                    started_at: r.get("started_at"),
                    ended_at: r.get("ended_at"),
                    outcome: r.get("outcome"),
                    exit_status: r.get("exit_status"),
                    error: r.get("error"),
                })
                .collect()
        }))
    }

    /// Closes the pool.
    pub async fn close(&self) {
        on_pool!(self, |pool| pool.close().await);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str) -> VmSpec {
        serde_yaml::from_str(&format!(
            "{{id: {id}, command: /bin/true, socket: '/tmp/{{id}}.sock'}}"
        ))
        .unwrap()
    }

    #[tokio::test]
    async fn sqlite_rows_and_journal_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("r.db").display());
        rows_and_journal_survive_a_reopen(&url).await;
    }

    #[tokio::test]
    async fn postgres_rows_and_journal_survive_a_reopen() {
        let schema = keel_testkit::services::PgSchema::new().await;
        rows_and_journal_survive_a_reopen(schema.url()).await;
        // Migrations run once: a third open finds them applied.
        Registry::open(schema.url(), 3).await.unwrap().close().await;
        schema.cleanup().await.unwrap();
    }

    async fn rows_and_journal_survive_a_reopen(url: &str) {
        let r = Registry::open(url, 3).await.unwrap();
        r.upsert(&spec("a"), "file").await.unwrap();
        let line = ["/usr/bin/vmm".to_owned(), "--id".to_owned(), "a".to_owned()];
        r.set_process("a", Some((42, 1234, &line))).await.unwrap();
        r.set_desired("a", Desired::Paused).await.unwrap();
        r.count_restart("a", "process_dead").await.unwrap();
        for n in 0..5 {
            let at = r
                .begin_attempt("a", "process_dead", Some("signal 9"))
                .await
                .unwrap();
            r.end_attempt(at, if n == 4 { "success" } else { "failure" }, None)
                .await
                .unwrap();
        }
        // A new spec keeps the process and counters.
        let mut changed = spec("a");
        changed.args = vec!["x".into()];
        r.upsert(&changed, "file").await.unwrap();
        r.close().await;

        let r = Registry::open(url, 3).await.unwrap();
        let rows = r.load().await.unwrap();
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!((row.pid, row.start_time), (Some(42), Some(1234)));
        assert_eq!(row.desired, Desired::Paused);
        assert_eq!(row.restarts, 1);
        assert_eq!(row.last_reason.as_deref(), Some("process_dead"));
        assert_eq!(row.spec.args, ["x"]);
        let attempts = r.attempts("a", 10).await.unwrap();
        assert_eq!(attempts.len(), 3, "only the last 3 are kept");
        assert_eq!(attempts[0].outcome.as_deref(), Some("success"));
        assert_eq!(attempts[0].exit_status.as_deref(), Some("signal 9"));
        assert!(attempts[0].ended_at.is_some());
        r.delete("a").await.unwrap();
        assert!(r.load().await.unwrap().is_empty());
        assert!(r.attempts("a", 10).await.unwrap().is_empty());
        r.close().await;
    }
}
