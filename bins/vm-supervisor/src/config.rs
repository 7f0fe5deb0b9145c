//! The program's configuration: one clap struct, every field also an
//! environment variable, validated into [`Settings`]. Durations accept
//! `500ms`, `5s`, `2m`, `1h`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use keel_core::ConfigError;
use keel_notify::ChatId;
use keel_telemetry::{KitArgs, Program, check};

use crate::duration;
use crate::spec::{self, SupervisorFile};

/// vm-supervisor: keeps local VM processes (Firecracker or any command with
/// an API socket) running: health checks, recovery with backoff, adoption of
/// running VMs after a restart, an admin API.
///
/// Every option is also an environment variable (the name in capitals); a
/// variable set to an empty value counts as unset.
#[derive(Debug, Clone, Parser)]
#[command(name = "vm-supervisor", version, about, long_about = None)]
pub struct Config {
    /// The VMs to supervise (YAML).
    #[arg(long, env = "SUPERVISOR_CONFIG", default_value = "vm-supervisor.yaml")]
    pub supervisor_config: PathBuf,

    /// The registry: `sqlite://path` (created when missing) or
    /// `postgres://user@host/db` (tables created at start).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://vm-supervisor.db"
    )]
    pub database_url: String,

    /// Admin API, `/healthz`, `/readyz` and `/metrics` (port 0 picks one).
    #[arg(long, env = "ADMIN_ADDR", default_value = "127.0.0.1:9090")]
    pub admin_addr: SocketAddr,

    /// Bearer token required by the `/vms` routes (unset: no token).
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Health check interval.
    #[arg(long, env = "HEALTH_INTERVAL", default_value = "30s", value_parser = duration::parse)]
    pub health_interval: Duration,

    /// Health check timeout.
    #[arg(long, env = "HEALTH_TIMEOUT", default_value = "5s", value_parser = duration::parse)]
    pub health_timeout: Duration,

    /// Failed checks in a row that make a VM unhealthy.
    #[arg(long, env = "FAILURE_THRESHOLD", default_value_t = 3)]
    pub failure_threshold: u32,

    /// Successful checks in a row that make an unhealthy VM healthy again.
    #[arg(long, env = "RECOVERY_THRESHOLD", default_value_t = 2)]
    pub recovery_threshold: u32,

    /// Recovery attempts (since the VM was last stable) before it needs
    /// intervention.
    #[arg(long, env = "MAX_RETRIES", default_value_t = 3)]
    pub max_retries: u32,

    /// Backoff before the second attempt; then × BACKOFF_FACTOR.
    #[arg(long, env = "RETRY_INTERVAL", default_value = "30s", value_parser = duration::parse)]
    pub retry_interval: Duration,

    /// Backoff growth factor (at least 1.0).
    #[arg(long, env = "BACKOFF_FACTOR", default_value_t = 2.0)]
    pub backoff_factor: f64,

    /// Backoff cap.
    #[arg(long, env = "MAX_RETRY_INTERVAL", default_value = "5m", value_parser = duration::parse)]
    pub max_retry_interval: Duration,

    /// Recoveries running at once at most.
    #[arg(long, env = "MAX_CONCURRENT_RECOVERIES", default_value_t = 4)]
    pub max_concurrent_recoveries: usize,

    /// Above this share of unhealthy VMs (percent) recovery stops and a
    /// "host problem" alert goes out; it resumes when the share falls.
    #[arg(long, env = "MAX_UNHEALTHY_PERCENT", default_value_t = 30)]
    pub max_unhealthy_percent: u32,

    /// One recovery (stop, start, API answer, start calls) at most this long.
    #[arg(long, env = "RECOVERY_TIMEOUT", default_value = "10m", value_parser = duration::parse)]
    pub recovery_timeout: Duration,

    /// A VM running this long without a failure gets its attempts back.
    #[arg(long, env = "STABLE_PERIOD", default_value = "10m", value_parser = duration::parse)]
    pub stable_period: Duration,

    /// A VM that needs intervention is tried again this often (0s: never).
    #[arg(long, env = "LATE_RECOVERY_INTERVAL", default_value = "30m", value_parser = duration::parse)]
    pub late_recovery_interval: Duration,

    /// A started process must answer `GET /` within this (start-up grace).
    #[arg(long, env = "START_TIMEOUT", default_value = "30s", value_parser = duration::parse)]
    pub start_timeout: Duration,

    /// Between SIGTERM and SIGKILL when stopping a VM's process group.
    #[arg(long, env = "STOP_GRACE", default_value = "10s", value_parser = duration::parse)]
    pub stop_grace: Duration,

    /// Attempts kept per VM in the journal (and shown by `GET /vms/{id}`).
    #[arg(long, env = "ATTEMPTS_KEPT", default_value_t = 10)]
    pub attempts_kept: u32,

    /// At start, a running process that looks like a VM (its program is a
    /// configured VM's `command`) but that the registry does not know is
    /// reported (`report`, the default: logged, `GET /status`, a metric,
    /// left alone) or, when its whole command line is a configured VM's
    /// and that VM has no live process, adopted as that VM (`adopt`).
    #[arg(long, env = "UNKNOWN_PROCESSES", value_enum, default_value_t = UnknownProcesses::Report)]
    pub unknown_processes: UnknownProcesses,

    /// Telegram bot token for alerts (with TELEGRAM_CHAT_ID).
    #[arg(long, env = "TELEGRAM_BOT_TOKEN", hide_env_values = true)]
    pub telegram_bot_token: Option<String>,

    /// Telegram chat for alerts.
    #[arg(long, env = "TELEGRAM_CHAT_ID", allow_hyphen_values = true)]
    pub telegram_chat_id: Option<String>,

    /// Telegram Bot API base URL.
    #[arg(
        long,
        env = "TELEGRAM_API_URL",
        default_value = "https://api.telegram.org"
    )]
    pub telegram_api_url: String,

    /// A generic JSON webhook for alerts.
    #[arg(long, env = "ALERT_WEBHOOK_URL")]
    pub alert_webhook_url: Option<String>,

    /// HMAC-SHA256 secret signing the webhook's bodies.
    #[arg(long, env = "ALERT_WEBHOOK_SECRET", hide_env_values = true)]
    pub alert_webhook_secret: Option<String>,

    /// `--check-config`, `RUST_LOG` and `LOG_FORMAT`.
    #[command(flatten)]
    pub kit: KitArgs,
}

/// Supervisor-wide timings; a VM's [`spec::Overrides`] replace some.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timings {
    /// Health check interval.
    pub health_interval: Duration,
    /// Health check timeout.
    pub health_timeout: Duration,
    /// Failure threshold.
    pub failure_threshold: u32,
    /// Recovery threshold.
    pub recovery_threshold: u32,
    /// First backoff.
    pub retry_interval: Duration,
    /// Backoff factor.
    pub backoff_factor: f64,
    /// Backoff cap.
    pub max_retry_interval: Duration,
    /// Start-up grace.
    pub start_timeout: Duration,
    /// TERM → KILL.
    pub stop_grace: Duration,
    /// Attempts reset after this long without a failure.
    pub stable_period: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            health_interval: Duration::from_secs(30),
            health_timeout: Duration::from_secs(5),
            failure_threshold: 3,
            recovery_threshold: 2,
            retry_interval: Duration::from_secs(30),
            backoff_factor: 2.0,
            max_retry_interval: Duration::from_secs(300),
            start_timeout: Duration::from_secs(30),
            stop_grace: Duration::from_secs(10),
            stable_period: Duration::from_secs(600),
        }
    }
}

impl Timings {
    /// These timings with a VM's overrides applied.
    pub fn with(&self, o: &spec::Overrides) -> Timings {
        Timings {
            health_interval: o.health_interval.unwrap_or(self.health_interval),
            // keel-health never overlaps two checks of a target: a check
            // may not outlast the interval, so a shorter interval override
            // shortens the inherited timeout too.
            health_timeout: o
                .health_timeout
                .unwrap_or(self.health_timeout)
                .min(o.health_interval.unwrap_or(self.health_interval)),
            failure_threshold: o.failure_threshold.unwrap_or(self.failure_threshold),
            recovery_threshold: o.recovery_threshold.unwrap_or(self.recovery_threshold),
            retry_interval: o.retry_interval.unwrap_or(self.retry_interval),
            backoff_factor: self.backoff_factor,
            max_retry_interval: o.max_retry_interval.unwrap_or(self.max_retry_interval),
            start_timeout: o.start_timeout.unwrap_or(self.start_timeout),
            stop_grace: o.stop_grace.unwrap_or(self.stop_grace),
            stable_period: o.stable_period.unwrap_or(self.stable_period),
        }
    }

    /// The wait before recovery attempt `attempt` (1-based) of a run of
    /// failures: none before the first, then `retry_interval ×
    /// factor^(attempt − 2)`, capped at `max_retry_interval`. keel-retry's
    /// exponential schedule does the arithmetic (saturating).
    pub fn backoff_before(&self, attempt: u32) -> Duration {
        if attempt <= 1 {
            return Duration::ZERO;
        }
        keel_retry::Backoff::exponential(self.retry_interval, self.backoff_factor)
            .delay(attempt - 1)
            .min(self.max_retry_interval)
    }
}

/// Where alerts go.
#[derive(Debug, Clone, Default)]
pub struct AlertSinks {
    /// Telegram (token, chat, base URL).
    pub telegram: Option<(String, ChatId, String)>,
    /// Webhook (URL, secret).
    pub webhook: Option<(String, Option<String>)>,
}

/// `UNKNOWN_PROCESSES`: what start-up does with a VM-looking process the
/// registry does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum UnknownProcesses {
    /// Log it, list it in `GET /status`, count it; never signal it.
    #[default]
    Report,
    /// Adopt it when its command line is exactly a configured VM's (that
    /// VM having no live process); report the others.
    Adopt,
}

/// The validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `SUPERVISOR_CONFIG`.
    pub supervisor_config: PathBuf,
    /// `DATABASE_URL`.
    pub database_url: String,
    /// `ADMIN_ADDR`.
    pub admin_addr: SocketAddr,
    /// `ADMIN_TOKEN`.
    pub admin_token: Option<String>,
    /// Default timings.
    pub timings: Timings,
    /// `MAX_RETRIES`.
    pub max_retries: u32,
    /// `MAX_CONCURRENT_RECOVERIES`.
    pub max_concurrent_recoveries: usize,
    /// `MAX_UNHEALTHY_PERCENT`.
    pub max_unhealthy_percent: u32,
    /// `RECOVERY_TIMEOUT`.
    pub recovery_timeout: Duration,
    /// `LATE_RECOVERY_INTERVAL` (`None`: disabled).
    pub late_recovery_interval: Option<Duration>,
    /// `ATTEMPTS_KEPT`.
    pub attempts_kept: u32,
    /// `UNKNOWN_PROCESSES`.
    pub unknown_processes: UnknownProcesses,
    /// Alert destinations.
    pub sinks: AlertSinks,
}

impl Settings {
    /// Settings for tests: every default, the given file and database.
    pub fn for_tests(supervisor_config: PathBuf, database_url: String) -> Settings {
        Settings {
            supervisor_config,
            database_url,
            admin_addr: "127.0.0.1:0".parse().expect("a valid address"),
            admin_token: None,
            timings: Timings::default(),
            max_retries: 3,
            max_concurrent_recoveries: 4,
            max_unhealthy_percent: 30,
            recovery_timeout: Duration::from_secs(600),
            late_recovery_interval: Some(Duration::from_secs(1800)),
            attempts_kept: 10,
            unknown_processes: UnknownProcesses::Report,
            sinks: AlertSinks::default(),
        }
    }

    /// Reads and validates `SUPERVISOR_CONFIG`.
    ///
    /// # Errors
    /// A [`ConfigError`] naming `SUPERVISOR_CONFIG`, with the file and field.
    pub fn load_file(&self) -> Result<SupervisorFile, ConfigError> {
        load_file(&self.supervisor_config)
    }
}

/// Reads and validates the VM file at `path` (at start and at reloads).
///
/// # Errors
/// A [`ConfigError`] naming `SUPERVISOR_CONFIG`, with the file and field.
pub(crate) fn load_file(path: &std::path::Path) -> Result<SupervisorFile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            "SUPERVISOR_CONFIG",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    spec::parse(&text, path)
        .map_err(|e| ConfigError::new("SUPERVISOR_CONFIG", format!("{}: {e}", path.display())))
}

fn non_zero(variable: &'static str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        return Err(ConfigError::new(variable, "must be above zero"));
    }
    Ok(())
}

fn non_empty(variable: &'static str, v: Option<&String>) -> Result<Option<String>, ConfigError> {
    match v.map(|s| s.trim()) {
        None => Ok(None),
        Some("") => Err(ConfigError::new(variable, "is set but empty")),
        Some(s) => Ok(Some(s.to_owned())),
    }
}

impl Config {
    /// Validates every field into [`Settings`].
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first variable at fault.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let url = self.database_url.trim();
        if !crate::registry::supported(url) {
            return Err(ConfigError::new(
                "DATABASE_URL",
                format!("`{url}`: sqlite://path or postgres://… expected"),
            ));
        }
        non_zero("HEALTH_INTERVAL", self.health_interval)?;
        non_zero("HEALTH_TIMEOUT", self.health_timeout)?;
        non_zero("RETRY_INTERVAL", self.retry_interval)?;
        non_zero("RECOVERY_TIMEOUT", self.recovery_timeout)?;
        non_zero("START_TIMEOUT", self.start_timeout)?;
        if self.health_timeout > self.health_interval {
            return Err(ConfigError::new(
                "HEALTH_TIMEOUT",
                "must not exceed HEALTH_INTERVAL (checks of one VM never overlap)",
            ));
        }
        if self.failure_threshold == 0 {
            return Err(ConfigError::new("FAILURE_THRESHOLD", "must be at least 1"));
        }
        if self.recovery_threshold == 0 {
            return Err(ConfigError::new("RECOVERY_THRESHOLD", "must be at least 1"));
        }
        if !(self.backoff_factor.is_finite() && self.backoff_factor >= 1.0) {
            return Err(ConfigError::new("BACKOFF_FACTOR", "must be a number ≥ 1.0"));
        }
        if self.max_retry_interval < self.retry_interval {
            return Err(ConfigError::new(
                "MAX_RETRY_INTERVAL",
                "must be at least RETRY_INTERVAL",
            ));
        }
        if self.max_concurrent_recoveries == 0 {
            return Err(ConfigError::new(
                "MAX_CONCURRENT_RECOVERIES",
                "must be at least 1",
            ));
        }
        if self.max_unhealthy_percent == 0 || self.max_unhealthy_percent > 100 {
            return Err(ConfigError::new(
                "MAX_UNHEALTHY_PERCENT",
                "must be between 1 and 100",
            ));
        }
        let admin_token = non_empty("ADMIN_TOKEN", self.admin_token.as_ref())?;
        let mut sinks = AlertSinks::default();
        match (
            non_empty("TELEGRAM_BOT_TOKEN", self.telegram_bot_token.as_ref())?,
            non_empty("TELEGRAM_CHAT_ID", self.telegram_chat_id.as_ref())?,
        ) {
            (Some(token), Some(chat)) => {
                let chat: ChatId = chat
                    .parse()
                    .map_err(|e| ConfigError::new("TELEGRAM_CHAT_ID", format!("`{chat}`: {e}")))?;
                check::http_url("TELEGRAM_API_URL", &self.telegram_api_url)?;
                let base = self
                    .telegram_api_url
                    .trim()
                    .trim_end_matches('/')
                    .to_owned();
                sinks.telegram = Some((token, chat, base));
            }
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "TELEGRAM_CHAT_ID",
                    "is required with TELEGRAM_BOT_TOKEN",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "TELEGRAM_BOT_TOKEN",
                    "is required with TELEGRAM_CHAT_ID",
                ));
            }
            (None, None) => {}
        }
        if let Some(url) = non_empty("ALERT_WEBHOOK_URL", self.alert_webhook_url.as_ref())? {
            check::http_url("ALERT_WEBHOOK_URL", &url)?;
            let secret = non_empty("ALERT_WEBHOOK_SECRET", self.alert_webhook_secret.as_ref())?;
            sinks.webhook = Some((url, secret));
        }
        Ok(Settings {
            supervisor_config: self.supervisor_config.clone(),
            database_url: url.to_owned(),
            admin_addr: self.admin_addr,
            admin_token,
            timings: Timings {
                health_interval: self.health_interval,
                health_timeout: self.health_timeout,
                failure_threshold: self.failure_threshold,
                recovery_threshold: self.recovery_threshold,
                retry_interval: self.retry_interval,
                backoff_factor: self.backoff_factor,
                max_retry_interval: self.max_retry_interval,
                start_timeout: self.start_timeout,
                stop_grace: self.stop_grace,
                stable_period: self.stable_period,
            },
            max_retries: self.max_retries,
            max_concurrent_recoveries: self.max_concurrent_recoveries,
            max_unhealthy_percent: self.max_unhealthy_percent,
            recovery_timeout: self.recovery_timeout,
            late_recovery_interval: Some(self.late_recovery_interval).filter(|d| !d.is_zero()),
            attempts_kept: self.attempts_kept.max(1),
            unknown_processes: self.unknown_processes,
            sinks,
        })
    }
}

impl Program for Config {
    fn kit_args(&self) -> &KitArgs {
        &self.kit
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.settings().map(|_| ())
    }

    fn check(&self) -> Result<(), ConfigError> {
        load_file(&self.supervisor_config).map(|_| ())
    }

    fn admin_addr(&self) -> Option<SocketAddr> {
        Some(self.admin_addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, ConfigError> {
        let mut all = vec!["vm-supervisor"];
        all.extend_from_slice(args);
        Config::try_parse_from(all)
            .expect("clap accepts")
            .settings()
    }

    #[test]
    fn defaults_are_the_issues() {
        let s = parse(&[]).unwrap();
        let t = s.timings;
        assert_eq!(t.health_interval, Duration::from_secs(30));
        assert_eq!(t.health_timeout, Duration::from_secs(5));
        assert_eq!((t.failure_threshold, t.recovery_threshold), (3, 2));
        assert_eq!(s.max_retries, 3);
        assert_eq!(s.max_unhealthy_percent, 30);
        assert_eq!(s.database_url, "sqlite://vm-supervisor.db");
        assert_eq!(s.admin_addr.to_string(), "127.0.0.1:9090");
        assert_eq!(s.late_recovery_interval, Some(Duration::from_secs(1800)));
    }

    #[test]
    fn backoff_is_30s_doubling_capped_at_5m() {
        let t = Timings::default();
        let waits: Vec<u64> = (1..=7).map(|n| t.backoff_before(n).as_secs()).collect();
        assert_eq!(waits, [0, 30, 60, 120, 240, 300, 300]);
    }

    #[test]
    fn errors_name_the_variable() {
        for (args, variable) in [
            (&["--failure-threshold", "0"][..], "FAILURE_THRESHOLD"),
            (&["--recovery-threshold", "0"][..], "RECOVERY_THRESHOLD"),
            (&["--backoff-factor", "0.5"][..], "BACKOFF_FACTOR"),
            (&["--max-retry-interval", "1s"][..], "MAX_RETRY_INTERVAL"),
            (
                &["--max-unhealthy-percent", "0"][..],
                "MAX_UNHEALTHY_PERCENT",
            ),
            (
                &["--max-concurrent-recoveries", "0"][..],
                "MAX_CONCURRENT_RECOVERIES",
            ),
            (&["--health-interval", "0s"][..], "HEALTH_INTERVAL"),
            (&["--health-interval", "1s"][..], "HEALTH_TIMEOUT"),
            (&["--database-url", "mysql://x"][..], "DATABASE_URL"),
            (&["--telegram-bot-token", "1:a"][..], "TELEGRAM_CHAT_ID"),
            (&["--alert-webhook-url", "ftp://x"][..], "ALERT_WEBHOOK_URL"),
        ] {
            assert_eq!(parse(args).unwrap_err().field(), variable, "{args:?}");
        }
        assert!(Config::try_parse_from(["vm-supervisor", "--health-interval", "soon"]).is_err());
    }

    #[test]
    fn durations_in_every_unit() {
        let s = parse(&[
            "--health-interval",
            "500ms",
            "--health-timeout",
            "500ms",
            "--retry-interval",
            "2m",
            "--max-retry-interval",
            "1h",
        ])
        .unwrap();
        assert_eq!(s.timings.health_interval, Duration::from_millis(500));
        assert_eq!(s.timings.retry_interval, Duration::from_secs(120));
        assert_eq!(s.timings.max_retry_interval, Duration::from_secs(3600));
        let pg = parse(&["--database-url", "postgresql://u@db/vms"]).unwrap();
        assert_eq!(pg.database_url, "postgresql://u@db/vms");
        let off = parse(&["--late-recovery-interval", "0s"]).unwrap();
        assert_eq!(off.late_recovery_interval, None);
    }
}
