//! A unique schema per test in the real local PostgreSQL.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor};

use super::unique::unique_suffix;
use crate::TestkitError;

/// Environment variable overriding [`DEFAULT_POSTGRES_URL`].
pub const POSTGRES_URL_ENV: &str = "KEEL_TEST_POSTGRES_URL";
/// The database tests use by default (trust authentication).
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const POSTGRES_HINT: &str = "start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` (or `apt-get install -y postgresql` first), or point KEEL_TEST_POSTGRES_URL at a reachable server";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The PostgreSQL URL for tests: `$KEEL_TEST_POSTGRES_URL` or
/// [`DEFAULT_POSTGRES_URL`].
pub fn postgres_url() -> String {
    std::env::var(POSTGRES_URL_ENV)
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_POSTGRES_URL.to_owned())
}

/// A schema created for one test (`keel_test_<hex>`), with a pool and a URL
/// whose connections use it as `search_path`. Dropping it drops the schema
/// with everything in it (on a helper thread with its own runtime, so it
/// works from any runtime or none); [`PgSchema::cleanup`] does the same
/// asynchronously.
pub struct PgSchema {
    base_url: String,
    name: String,
    url: String,
    pool: PgPool,
    cleaned: bool,
}

impl PgSchema {
    /// Creates a schema in [`postgres_url`]'s database.
    ///
    /// # Panics
    /// When PostgreSQL is unreachable, with a message saying how to start it.
    pub async fn new() -> Self {
        Self::try_new().await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// As [`PgSchema::new`], returning the error.
    ///
    /// # Errors
    /// [`TestkitError::ServiceUnreachable`] naming how to start PostgreSQL,
    /// or [`TestkitError::Command`] when the schema cannot be created.
    pub async fn try_new() -> Result<Self, TestkitError> {
        Self::try_with_url(&postgres_url()).await
    }

    /// Creates a schema in the database at `base_url`.
    ///
    /// # Errors
    /// As [`PgSchema::try_new`].
    pub async fn try_with_url(base_url: &str) -> Result<Self, TestkitError> {
        let unreachable = |e: sqlx::Error| TestkitError::ServiceUnreachable {
            service: "PostgreSQL",
            url: base_url.to_owned(),
            hint: POSTGRES_HINT.to_owned(),
            source: e.into(),
        };
        let options = PgConnectOptions::from_str(base_url).map_err(unreachable)?;
        let name = format!("keel_test_{}", unique_suffix());
        let mut admin = tokio::time::timeout(CONNECT_TIMEOUT, options.connect())
            .await
            .map_err(|_| unreachable(sqlx::Error::PoolTimedOut))?
            .map_err(unreachable)?;
        admin
            .execute(format!("CREATE SCHEMA \"{name}\"").as_str())
            .await
            .map_err(|e| command_error(format!("CREATE SCHEMA {name}"), e))?;
        let _ = admin.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(5)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(options.clone().options([("search_path", name.as_str())]));
        let separator = if base_url.contains('?') { '&' } else { '?' };
        let url = format!("{base_url}{separator}options=-c%20search_path%3D{name}");
        tracing::debug!(schema = %name, "test schema created");
        Ok(PgSchema {
            base_url: base_url.to_owned(),
            name,
            url,
            pool,
            cleaned: false,
        })
    }

    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A connection URL whose sessions use the schema
    /// (`...?options=-c%20search_path%3D<schema>`), for code under test that
    /// takes a URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A pool (5 connections, lazily opened) whose sessions use the schema.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Connect options whose sessions use the schema.
    ///
    /// # Panics
    /// Never in practice: the base URL was parsed when the schema was made.
    pub fn connect_options(&self) -> PgConnectOptions {
        PgConnectOptions::from_str(&self.base_url)
            .expect("parsed before")
            .options([("search_path", self.name.as_str())])
    }

    /// Closes the pool and drops the schema now.
    ///
    /// # Errors
    /// [`TestkitError::Command`] when the drop fails.
    pub async fn cleanup(mut self) -> Result<(), TestkitError> {
        self.cleaned = true;
        self.pool.close().await;
        drop_schema(&self.base_url, &self.name).await
    }
}

async fn drop_schema(base_url: &str, name: &str) -> Result<(), TestkitError> {
    let options = PgConnectOptions::from_str(base_url)
        .map_err(|e| command_error("parse URL".to_owned(), e))?;
    let mut conn = options
        .connect()
        .await
        .map_err(|e| command_error("connect to drop the test schema".to_owned(), e))?;
    conn.execute(format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE").as_str())
        .await
        .map_err(|e| command_error(format!("DROP SCHEMA {name}"), e))?;
    let _ = conn.close().await;
    tracing::debug!(schema = %name, "test schema dropped");
    Ok(())
}

fn command_error(context: String, e: sqlx::Error) -> TestkitError {
    TestkitError::Command {
        service: "PostgreSQL",
        context,
        source: e.into(),
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        let base_url = self.base_url.clone();
        let name = self.name.clone();
        // Async work cannot run in Drop on the caller's runtime (it may be a
        // current-thread runtime blocked right here), so use a private one.
        let result = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| TestkitError::Io {
                    context: "cannot build a runtime to drop the test schema".to_owned(),
                    source,
                })?;
            runtime.block_on(drop_schema(&base_url, &name))
        })
        .join();
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(schema = %self.name, error = %e, "cannot drop test schema");
            }
            Err(_) => tracing::warn!(schema = %self.name, "test schema cleanup panicked"),
        }
    }
}

impl std::fmt::Debug for PgSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSchema")
            .field("name", &self.name)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}
