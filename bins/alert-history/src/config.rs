//! Configuration: one clap struct, every field also an environment variable.

use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use keel_core::ConfigError;
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

    /// Log format: `text` or `json`.
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: String,

    /// Log filter directives (tracing-subscriber `EnvFilter` syntax).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub rust_log: String,

    /// Validate the configuration and exit (0 when valid, 64 otherwise).
    #[arg(long)]
    pub check_config: bool,
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
            log_format: "text".to_owned(),
            rust_log: "info".to_owned(),
            check_config: false,
        }
    }

    /// Checks every value; the error names the variable to fix.
    ///
    /// # Errors
    /// [`Error::Config`].
    pub fn validate(&self) -> Result<(), Error> {
        self.check_database_url()?;
        let bad = |variable: &'static str, reason: &str| {
            Err(Error::Config(ConfigError::new(variable, reason.to_owned())))
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
        self.log_config()?;
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

    /// Parses `DATABASE_URL` as its database's driver will, and for SQLite
    /// checks the file's directory: it must be a writable directory, or not
    /// exist yet under a writable one (it is created at start), and an
    /// existing database file must be writable. PostgreSQL is not contacted
    /// (`--check-config` works offline); its host is named in start-up
    /// errors instead.
    ///
    /// # Errors
    /// [`Error::Config`] naming `DATABASE_URL`, the path and what is wrong.
    pub fn check_database_url(&self) -> Result<(), Error> {
        let bad = |reason: String| Err(ConfigError::new("DATABASE_URL", reason).into());
        match self.backend()? {
            Backend::Postgres => match PgConnectOptions::from_str(&self.database_url) {
                Ok(_) => Ok(()),
                Err(e) => bad(format!("not a PostgreSQL URL: {e}")),
            },
            Backend::Sqlite => {
                let options = match SqliteConnectOptions::from_str(&self.database_url) {
                    Ok(options) => options,
                    Err(e) => return bad(format!("not a SQLite URL: {e}")),
                };
                let path = options.get_filename();
                if path == Path::new(":memory:") {
                    return Ok(());
                }
                match sqlite_path_problem(path) {
                    None => Ok(()),
                    Some(problem) => bad(format!("{}: {problem}", path.display())),
                }
            }
        }
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

    /// The logging configuration from `LOG_FORMAT` and `RUST_LOG`.
    ///
    /// # Errors
    /// [`Error::Config`] naming `LOG_FORMAT` or `RUST_LOG`.
    pub fn log_config(&self) -> Result<keel_telemetry::LogConfig, Error> {
        keel_telemetry::LogConfig::from_env_values(Some(&self.log_format), Some(&self.rust_log))
            .map_err(|e| {
                let variable = if e.to_string().contains("LOG_FORMAT") {
                    "LOG_FORMAT"
                } else {
                    "RUST_LOG"
                };
                ConfigError::new(variable, e.to_string()).into()
            })
    }
}

/// Why a SQLite database cannot be created or written at `path`, if it
/// cannot.
fn sqlite_path_problem(path: &Path) -> Option<String> {
    if path.is_dir() {
        return Some("is a directory, not a database file".to_owned());
    }
    if path.exists() {
        return std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .err()
            .map(|e| format!("the database file is not writable ({e})"));
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // The nearest directory that exists: the rest is created at start.
    let existing = dir.ancestors().find(|d| d.exists())?;
    if !existing.is_dir() {
        return Some(format!("{} is not a directory", existing.display()));
    }
    let probe = existing.join(format!(".alert-history-check-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            None
        }
        Err(e) => Some(format!(
            "directory {} is not writable ({e})",
            existing.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("alert-history").chain(args.iter().copied()))
    }

    #[test]
    fn sqlite_paths_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let ok = |path: &Path| {
            let mut config = parse(&[]).unwrap();
            config.database_url = format!("sqlite://{}", path.display());
            config.validate()
        };
        ok(&dir.path().join("a.db")).unwrap();
        // A missing directory under a writable one is created at start.
        ok(&dir.path().join("new/sub/a.db")).unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let err = ok(&file.join("a.db")).unwrap_err().to_string();
        assert!(
            err.contains("DATABASE_URL") && err.contains("is not a directory"),
            "{err}"
        );
        let err = ok(dir.path()).unwrap_err().to_string();
        assert!(err.contains("is a directory"), "{err}");
        // As root every directory is writable; elsewhere a read-only one is refused.
        let ro = dir.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        let mut perms = std::fs::metadata(&ro).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o555);
        std::fs::set_permissions(&ro, perms).unwrap();
        if std::fs::write(ro.join("x"), b"").is_err() {
            let err = ok(&ro.join("a.db")).unwrap_err().to_string();
            assert!(err.contains("not writable") && err.contains("ro"), "{err}");
        }
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
        let mut config = parse(&[]).unwrap();
        config.log_format = "xml".into();
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("LOG_FORMAT")
        );
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
        for url in ["postgres://u:p@[bad/x", "sqlite:///dev/null/x.db"] {
            let mut config = parse(&[]).unwrap();
            config.database_url = url.into();
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains("DATABASE_URL"), "{url}: {err}");
        }
        let err = parse(&["--retention-days", "abc"]).unwrap_err().to_string();
        assert!(err.contains("RETENTION_DAYS"), "{err}");
    }
}
