//! The durable registry (SQLite through sqlx, migrations in
//! `migrations/`): each VM's spec, its process (pid and start time from
//! `/proc/<pid>/stat`), socket, desired state and restart count, and the
//! attempt journal. What adoption after a restart reads.

use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use crate::spec::VmSpec;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

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

/// The registry handle (cheap to clone).
#[derive(Debug, Clone)]
pub struct Registry {
    pool: SqlitePool,
    keep: u32,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Registry {
    /// Opens (creating the file when missing) and migrates `url`; keeps the
    /// last `keep` attempts per VM.
    ///
    /// # Errors
    /// [`RegistryError`] when the database cannot be opened or migrated.
    pub async fn open(url: &str, keep: u32) -> Result<Registry, RegistryError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Registry { pool, keep })
    }

    /// Every VM, by id.
    ///
    /// # Errors
    /// [`RegistryError`].
    pub async fn load(&self) -> Result<Vec<VmRecord>, RegistryError> {
        let rows = sqlx::query(
            "SELECT id, config, source, pid, start_time, desired_state, restarts, last_reason \
             FROM vms ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                let id: String = r.get("id");
                let config: String = r.get("config");
                let spec = serde_json::from_str(&config).map_err(|e| RegistryError::Spec(id, e))?;
                Ok(VmRecord {
                    spec,
                    source: r.get("source"),
                    pid: r.get::<Option<i64>, _>("pid").map(|p| p as u32),
                    start_time: r.get::<Option<i64>, _>("start_time").map(|t| t as u64),
                    desired: Desired::parse(r.get::<String, _>("desired_state").as_str()),
                    restarts: r.get::<i64, _>("restarts") as u64,
                    last_reason: r.get("last_reason"),
                })
            })
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
        sqlx::query(
            "INSERT INTO vms (id, config, source, socket, desired_state, updated_at) \
             VALUES (?1, ?2, ?3, ?4, 'running', ?5) \
             ON CONFLICT(id) DO UPDATE SET config = ?2, socket = ?4, updated_at = ?5",
        )
        .bind(&spec.id)
        .bind(config)
        .bind(source)
        .bind(spec.socket_path().to_string_lossy().into_owned())
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records the VM's process (or none).
    ///
    /// # Errors
    /// [`RegistryError`].
    pub async fn set_process(
        &self,
        id: &str,
        process: Option<(u32, u64)>,
    ) -> Result<(), RegistryError> {
        sqlx::query("UPDATE vms SET pid = ?2, start_time = ?3, updated_at = ?4 WHERE id = ?1")
            .bind(id)
            .bind(process.map(|p| i64::from(p.0)))
            .bind(process.map(|p| p.1 as i64))
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records the desired state.
    ///
    /// # Errors
    /// [`RegistryError`].
    pub async fn set_desired(&self, id: &str, desired: Desired) -> Result<(), RegistryError> {
        sqlx::query("UPDATE vms SET desired_state = ?2, updated_at = ?3 WHERE id = ?1")
            .bind(id)
            .bind(desired.as_str())
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Counts a restart for `reason`.
    ///
    /// # Errors
    /// [`RegistryError`].
    pub async fn count_restart(&self, id: &str, reason: &str) -> Result<(), RegistryError> {
        sqlx::query(
            "UPDATE vms SET restarts = restarts + 1, last_reason = ?2, updated_at = ?3 WHERE id = ?1",
        )
        .bind(id)
        .bind(reason)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes a VM and its journal.
    ///
    /// # Errors
    /// [`RegistryError`].
    pub async fn delete(&self, id: &str) -> Result<(), RegistryError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM attempts WHERE vm_id = ?1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM vms WHERE id = ?1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
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
        let row = sqlx::query(
            "INSERT INTO attempts (vm_id, reason, started_at, exit_status) VALUES (?1, ?2, ?3, ?4) \
             RETURNING id",
        )
        .bind(id)
        .bind(reason)
        .bind(now_ms())
        .bind(exit_status)
        .fetch_one(&self.pool)
        .await?;
        let attempt: i64 = row.get(0);
        sqlx::query(
            "DELETE FROM attempts WHERE vm_id = ?1 AND id NOT IN \
             (SELECT id FROM attempts WHERE vm_id = ?1 ORDER BY id DESC LIMIT ?2)",
        )
        .bind(id)
        .bind(i64::from(self.keep))
        .execute(&self.pool)
        .await?;
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
        sqlx::query("UPDATE attempts SET ended_at = ?2, outcome = ?3, error = ?4 WHERE id = ?1")
            .bind(attempt)
            .bind(now_ms())
            .bind(outcome)
            .bind(error)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The last `limit` attempts of `id`, newest first.
    ///
    /// # Errors
    /// [`RegistryError`].
    pub async fn attempts(&self, id: &str, limit: u32) -> Result<Vec<Attempt>, RegistryError> {
        let rows = sqlx::query(
            "SELECT id, reason, started_at, ended_at, outcome, exit_status, error FROM attempts \
             WHERE vm_id = ?1 ORDER BY id DESC LIMIT ?2",
        )
        .bind(id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
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
            .collect())
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
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
    async fn rows_and_journal_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("r.db").display());
        let r = Registry::open(&url, 3).await.unwrap();
        r.upsert(&spec("a"), "file").await.unwrap();
        r.set_process("a", Some((42, 1234))).await.unwrap();
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

        let r = Registry::open(&url, 3).await.unwrap();
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
    }
}
