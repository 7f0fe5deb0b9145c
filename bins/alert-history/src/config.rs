//! Configuration: one clap struct, every field also an environment variable.

use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use keel_core::ConfigError;
use keel_telemetry::{KitArgs, Program};
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;

use crate::error::Error;

/// Default `MAX_BODY_BYTES`: 10 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 10 * 1024 * 1024;

/// alert-history: keeps every Alertmanager alert event and serves history,
/// reports, metrics and a dashboard.
#[derive(Debug, Clone, Parser)]
#[command(name = "alert-history", version, about)]
pub struct Config {
    /// Database URL: `sqlite://PATH` (created if missing) or
    /// `postgres://USER@HOST/DB`.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://alert-history.db"
    )]
    pub database_url: String,

    /// Address to serve HTTP on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen_addr: SocketAddr,

    /// Bearer token Alertmanager must send on `POST /webhook` (its
    /// `http_config.authorization.credentials`). Unset: no check.
    #[arg(long, env = "WEBHOOK_TOKEN", hide_env_values = true)]
    pub webhook_token: Option<String>,

    /// Bearer token for the admin routes (`/admin/...`). Unset: admin
    /// routes are open.
    #[arg(long, env = "API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,

    /// Bearer token for the read routes (history, alert timelines, report,
    /// dashboard and its JSON, `/metrics`, `/health/detailed`); `API_TOKEN`
    /// is accepted on them too. Unset (and `API_TOKEN_FOR_READS` off):
    /// reads are open to anyone who can reach the port.
    #[arg(long, env = "READ_TOKEN", hide_env_values = true)]
    pub read_token: Option<String>,

    /// Make `API_TOKEN` guard the read routes as well (without a separate
    /// `READ_TOKEN`).
    #[arg(long, env = "API_TOKEN_FOR_READS")]
    pub api_token_for_reads: bool,

    /// Seconds a client may take to send a request's headers before the
    /// connection is closed.
    #[arg(long, env = "HEADER_READ_TIMEOUT_SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_read_timeout_seconds: u64,

    /// Seconds a request body may go without a new chunk before the request
    /// is answered 408.
    #[arg(long, env = "BODY_READ_TIMEOUT_SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub body_read_timeout_seconds: u64,

    /// Events whose last delivery is older than this many days are deleted.
    #[arg(long, env = "RETENTION_DAYS", default_value_t = 90,
          value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub retention_days: u32,

    /// Seconds between retention purges (the first runs at start).
    #[arg(long, env = "RETENTION_INTERVAL_SECONDS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub retention_interval_seconds: u64,

    /// Largest accepted webhook body, in bytes (larger: 413).
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,

    /// Most database connections (PostgreSQL pool; SQLite read pool).
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_max_connections: u32,

    /// SQLite's durability of an acknowledged delivery. `normal` (the
    /// default): the write-ahead log is synced at checkpoints (every 250 ms
    /// under load), so a 2xx survives a crash or kill of the service, but
    /// an OS crash or power loss can lose the last commits (never corrupting
    /// the file). `full`: synced at every commit, so a 2xx also survives an
    /// OS crash or power loss, at about 0.7× the throughput. Ignored for
    /// PostgreSQL, where the server's `synchronous_commit` decides.
    #[arg(long, env = "SQLITE_SYNCHRONOUS", value_enum, default_value_t = SqliteSync::Normal)]
    pub sqlite_synchronous: SqliteSync,

    /// Enrichment mode and the LLM (part 2).
    #[command(flatten)]
    pub classify: crate::classify::ClassifyArgs,

    /// Publishing targets (part 2).
    #[command(flatten)]
    pub targets: crate::targets::TargetArgs,

    /// The outbox publisher (part 2).
    #[command(flatten)]
    pub publish: crate::publish::PublishArgs,

    /// `--check-config`, `RUST_LOG` and `LOG_FORMAT` (the kit's options).
    #[command(flatten)]
    pub kit: KitArgs,
}

/// `SQLITE_SYNCHRONOUS`: when SQLite syncs its write-ahead log to disk.
///
/// `Normal` is the default: the crashes a service meets most (a kill, an
/// OOM, a deploy, a panic) lose nothing acknowledged, and part 1's
/// throughput and latency figures hold; `Full` is for a host whose power
/// or kernel cannot be trusted, at the measured cost in
/// `docs/PERFORMANCE.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SqliteSync {
    /// At every commit: an acknowledged delivery survives power loss.
    Full,
    /// At checkpoints only: an acknowledged delivery survives a crash of
    /// the service, not of the machine.
    #[default]
    Normal,
}

/// The backend a database URL selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite:`
    Sqlite,
    /// `postgres:` / `postgresql:`
    Postgres,
}

impl Config {
    /// A configuration for `database_url` with every other field at its
    /// default (`LISTEN_ADDR` on a free loopback port): handy in tests.
    pub fn for_database(database_url: impl Into<String>) -> Self {
        Config {
            database_url: database_url.into(),
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            webhook_token: None,
            api_token: None,
            read_token: None,
            api_token_for_reads: false,
            header_read_timeout_seconds: 10,
            body_read_timeout_seconds: 30,
            retention_days: 90,
            retention_interval_seconds: 3600,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            db_max_connections: 16,
            sqlite_synchronous: SqliteSync::default(),
            classify: crate::classify::ClassifyArgs::default(),
            targets: crate::targets::TargetArgs::default(),
            publish: crate::publish::PublishArgs::default(),
            kit: KitArgs::default(),
        }
    }

    /// Checks every value; the error names the variable to fix.
    ///
    /// # Errors
    /// The [`ConfigError`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_database_url()?;
        self.classify.validate()?;
        self.targets.validate()?;
        self.publish.validate()?;
        let bad = |variable: &'static str, reason: &str| {
            Err(ConfigError::new(variable, reason.to_owned()))
        };
        if self.retention_days == 0 || self.retention_days > 36_500 {
            return bad("RETENTION_DAYS", "must be between 1 and 36500");
        }
        if self.retention_interval_seconds == 0 || self.retention_interval_seconds > 7 * 86_400 {
            return bad(
                "RETENTION_INTERVAL_SECONDS",
                "must be between 1 and 604800 (a week)",
            );
        }
        if self.max_body_bytes < 1024 || self.max_body_bytes > 1024 * 1024 * 1024 {
            return bad("MAX_BODY_BYTES", "must be between 1024 and 1073741824");
        }
        if self.db_max_connections == 0 || self.db_max_connections > 1000 {
            return bad("DB_MAX_CONNECTIONS", "must be between 1 and 1000");
        }
        for (variable, seconds) in [
            (
                "HEADER_READ_TIMEOUT_SECONDS",
                self.header_read_timeout_seconds,
            ),
            ("BODY_READ_TIMEOUT_SECONDS", self.body_read_timeout_seconds),
        ] {
            if seconds == 0 || seconds > 3600 {
                return bad(variable, "must be between 1 and 3600");
            }
        }
        if self.api_token_for_reads && self.api_token.is_none() {
            return bad("API_TOKEN_FOR_READS", "is set but API_TOKEN is not");
        }
        for (variable, token) in [
            ("WEBHOOK_TOKEN", &self.webhook_token),
            ("API_TOKEN", &self.api_token),
            ("READ_TOKEN", &self.read_token),
        ] {
            if let Some(token) = token
                && (token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()))
            {
                return bad(variable, "must be non-empty without spaces");
            }
        }
        self.kit.log.config()?;
        Ok(())
    }

    /// Which database the URL selects.
    ///
    /// # Errors
    /// [`Error::Config`] naming `DATABASE_URL` for any other scheme.
    pub fn backend(&self) -> Result<Backend, Error> {
        let url = self.database_url.as_str();
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(ConfigError::new("DATABASE_URL", "must start with sqlite:// or postgres://").into())
        }
    }

    /// Parses `DATABASE_URL` as its database's driver will (at every
    /// start).
    ///
    /// # Errors
    /// A [`ConfigError`] naming `DATABASE_URL`.
    pub fn check_database_url(&self) -> Result<(), ConfigError> {
        let bad = |reason: String| Err(ConfigError::new("DATABASE_URL", reason));
        let backend = self.backend().map_err(|_| {
            ConfigError::new("DATABASE_URL", "must start with sqlite:// or postgres://")
        })?;
        match backend {
            Backend::Postgres => match PgConnectOptions::from_str(&self.database_url) {
                Ok(_) => Ok(()),
                Err(e) => bad(format!("not a PostgreSQL URL: {e}")),
            },
            Backend::Sqlite => match SqliteConnectOptions::from_str(&self.database_url) {
                Ok(_) => Ok(()),
                Err(e) => bad(format!("not a SQLite URL: {e}")),
            },
        }
    }

    /// What `--check-config` adds to [`Config::validate`]: the SQLite
    /// database's directory exists and is writable (at a normal start a
    /// missing directory is created instead). PostgreSQL is not contacted
    /// (`--check-config` works offline); start-up errors name its host.
    ///
    /// # Errors
    /// A [`ConfigError`] naming `DATABASE_URL` and the path.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.validate()?;
        if self.backend().ok() == Some(Backend::Sqlite)
            && let Ok(options) = SqliteConnectOptions::from_str(&self.database_url)
            && options.get_filename() != Path::new(":memory:")
        {
            keel_telemetry::check::writable_path("DATABASE_URL", options.get_filename())?;
        }
        Ok(())
    }

    /// The retention period.
    pub fn retention(&self) -> Duration {
        Duration::from_secs(u64::from(self.retention_days) * 86_400)
    }

    /// How long a client may take to send a request's headers.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_seconds)
    }

    /// How long a request body may go without a new chunk.
    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_secs(self.body_read_timeout_seconds)
    }

    /// The time between retention purges.
    pub fn retention_interval(&self) -> Duration {
        Duration::from_secs(self.retention_interval_seconds)
    }
}

impl Program for Config {
    fn kit_args(&self) -> &KitArgs {
        &self.kit
    }

    fn validate(&self) -> Result<(), ConfigError> {
        Config::validate(self)
    }

    fn check(&self) -> Result<(), ConfigError> {
        Config::check(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("alert-history").chain(args.iter().copied()))
    }

    #[test]
    fn check_config_checks_the_sqlite_directory() {
        let dir = tempfile::tempdir().unwrap();
        let check = |path: &Path| {
            let mut config = parse(&[]).unwrap();
            config.database_url = format!("sqlite://{}", path.display());
            config.validate().unwrap();
            config.check()
        };
        check(&dir.path().join("a.db")).unwrap();
        // A missing directory: valid for a start (it is created), but
        // --check-config says it is missing.
        let err = check(&dir.path().join("new/a.db")).unwrap_err().to_string();
        assert!(err.contains("DATABASE_URL") && err.contains("new"), "{err}");
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let err = check(&file.join("a.db")).unwrap_err().to_string();
        assert!(
            err.contains("DATABASE_URL") && err.contains("file"),
            "{err}"
        );
    }

    #[test]
    fn ranges_are_reported_as_they_are() {
        let err = parse(&["--retention-days=-1"]).unwrap_err().to_string();
        assert!(
            err.contains("1..=36500") && !err.contains("4294967295"),
            "{err}"
        );
        let err = parse(&["--db-max-connections=0"]).unwrap_err().to_string();
        assert!(err.contains("1..=1000"), "{err}");
    }

    #[test]
    fn defaults_are_valid() {
        let config = parse(&[]).unwrap();
        config.validate().unwrap();
        assert_eq!(config.retention_days, 90);
        assert_eq!(config.retention_interval(), Duration::from_secs(3600));
        assert_eq!(config.max_body_bytes, 10 * 1024 * 1024);
        assert_eq!(config.backend().unwrap(), Backend::Sqlite);
    }

    #[test]
    fn invalid_values_name_the_variable() {
        let mut config = parse(&[]).unwrap();
        config.database_url = "mysql://x".into();
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("DATABASE_URL")
        );
        let mut config = parse(&[]).unwrap();
        config.retention_days = 0;
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("RETENTION_DAYS")
        );
        for seconds in [0, 8 * 86_400] {
            let mut config = parse(&[]).unwrap();
            config.retention_interval_seconds = seconds;
            assert!(
                config
                    .validate()
                    .unwrap_err()
                    .to_string()
                    .contains("RETENTION_INTERVAL_SECONDS")
            );
        }
        let mut config = parse(&[]).unwrap();
        config.max_body_bytes = 10;
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("MAX_BODY_BYTES")
        );
        let mut config = parse(&[]).unwrap();
        config.webhook_token = Some(String::new());
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("WEBHOOK_TOKEN")
        );
        let err = parse(&["--log-format", "xml"]).unwrap_err().to_string();
        assert!(err.contains("xml"), "{err}");
        let mut config = parse(&[]).unwrap();
        config.kit.log.log_filter = Some("not a [filter".into());
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("RUST_LOG"), "{err}");
        let mut config = parse(&[]).unwrap();
        config.api_token_for_reads = true;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("API_TOKEN_FOR_READS"), "{err}");
        config.api_token = Some("t".into());
        config.validate().unwrap();
        for seconds in [0, 3601] {
            let mut config = parse(&[]).unwrap();
            config.body_read_timeout_seconds = seconds;
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains("BODY_READ_TIMEOUT_SECONDS"), "{err}");
        }
        for url in ["postgres://u:p@[bad/x", "postgresql://[::1", "mysql://db/x"] {
            let mut config = parse(&[]).unwrap();
            config.database_url = url.into();
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains("DATABASE_URL"), "{url}: {err}");
        }
        let err = parse(&["--retention-days", "abc"]).unwrap_err().to_string();
        assert!(err.contains("RETENTION_DAYS"), "{err}");
    }
}
