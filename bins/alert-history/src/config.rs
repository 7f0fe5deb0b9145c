//! Configuration: one clap struct, every field also an environment variable.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

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

    /// Events whose last delivery is older than this many days are deleted.
    #[arg(long, env = "RETENTION_DAYS", default_value_t = 90)]
    pub retention_days: u32,

    /// Seconds between retention purges (the first runs at start).
    #[arg(long, env = "RETENTION_INTERVAL_SECONDS", default_value_t = 3600)]
    pub retention_interval_seconds: u64,

    /// Largest accepted webhook body, in bytes (larger: 413).
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,

    /// Most database connections (PostgreSQL pool; SQLite read pool).
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 16)]
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
        self.backend()?;
        let bad = |variable, reason: &str| {
            Err(Error::Config {
                variable,
                reason: reason.to_owned(),
            })
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
        for (variable, token) in [
            ("WEBHOOK_TOKEN", &self.webhook_token),
            ("API_TOKEN", &self.api_token),
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
            Err(Error::Config {
                variable: "DATABASE_URL",
                reason: "must start with sqlite:// or postgres://".to_owned(),
            })
        }
    }

    /// The retention period.
    pub fn retention(&self) -> Duration {
        Duration::from_secs(u64::from(self.retention_days) * 86_400)
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
            .map_err(|e| Error::Config {
                variable: if e.to_string().contains("LOG_FORMAT") {
                    "LOG_FORMAT"
                } else {
                    "RUST_LOG"
                },
                reason: e.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("alert-history").chain(args.iter().copied()))
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
        let err = parse(&["--retention-days", "abc"]).unwrap_err().to_string();
        assert!(err.contains("RETENTION_DAYS"), "{err}");
    }
}
