//! The program's configuration: one clap struct, every field also an
//! environment variable, validated into typed settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use keel_notify::ChatId;
use keel_telemetry::{KitArgs, Program, check};

use crate::error::ConfigError;
use crate::schedule::Bounds;
use crate::vms_yaml::{self, VmsFile};

/// The real Compute API.
pub const DEFAULT_COMPUTE_URL: &str = "https://compute.api.cloud.yandex.net";
/// The real Operation API.
pub const DEFAULT_OPERATION_URL: &str = "https://operation.api.cloud.yandex.net";
/// The real IAM API.
pub const DEFAULT_IAM_URL: &str = "https://iam.api.cloud.yandex.net";
/// The real Telegram Bot API.
pub const DEFAULT_TELEGRAM_URL: &str = "https://api.telegram.org";
/// The VM metadata service.
pub const DEFAULT_METADATA_URL: &str = "http://169.254.169.254";

/// vm-watchdog: keeps Yandex Cloud VMs running and tells a Telegram topic
/// when one stops, gets stuck, or recovers.
///
/// Every option is also an environment variable (the name in capitals); a
/// variable set to an empty value counts as unset.
#[derive(Debug, Clone, Parser)]
#[command(name = "vm-watchdog", version, about, long_about = None)]
pub struct Config {
    /// Telegram bot token (`123456:ABC...`).
    #[arg(long, env = "BOT_TOKEN", hide_env_values = true)]
    pub bot_token: String,

    /// Telegram chat to alert: a numeric id (`-100...` for a group) or
    /// `@channel`.
    #[arg(long, env = "GROUP_CHAT_ID", allow_hyphen_values = true)]
    pub group_chat_id: String,

    /// Forum topic (`message_thread_id`) inside the group, if any.
    #[arg(long, env = "TOPIC_ID")]
    pub topic_id: Option<i64>,

    /// Fastest check interval, seconds: fast-poll mode, after failures,
    /// and the TCP probe period of running VMs.
    #[arg(long, env = "MIN_CHECK_INTERVAL", default_value_t = 5)]
    pub min_check_interval: u64,

    /// Slowest check interval, seconds (caps the status table).
    #[arg(long, env = "MAX_CHECK_INTERVAL", default_value_t = 60)]
    pub max_check_interval: u64,

    /// Concurrent cloud API calls at most.
    #[arg(long, env = "API_WORKER_POOL_SIZE", default_value_t = 10)]
    pub api_worker_pool_size: usize,

    /// Telegram sender workers.
    #[arg(long, env = "TELEGRAM_WORKERS", default_value_t = 3)]
    pub telegram_workers: usize,

    /// Path of `vms.yaml` (watched; changes apply without a restart).
    #[arg(long, env = "VMS_CONFIG", default_value = "vms.yaml")]
    pub vms_config: PathBuf,

    /// Address of the HTTP server with `/health`, `/healthz`, `/readyz`,
    /// `/metrics` and the admin API (`/vms`, `/breakers`); port 0 picks a
    /// free one (the bound address is logged).
    #[arg(long, env = "HEALTH_ADDR", default_value = "0.0.0.0:8080")]
    pub health_addr: SocketAddr,

    /// Base URL of the Compute API.
    #[arg(long, env = "YC_COMPUTE_URL", default_value = DEFAULT_COMPUTE_URL)]
    pub yc_compute_url: String,

    /// Base URL of the Operation API.
    #[arg(long, env = "YC_OPERATION_URL", default_value = DEFAULT_OPERATION_URL)]
    pub yc_operation_url: String,

    /// Base URL of the IAM API (OAuth token exchange).
    #[arg(long, env = "YC_IAM_URL", default_value = DEFAULT_IAM_URL)]
    pub yc_iam_url: String,

    /// Base URL of the Telegram Bot API.
    #[arg(long, env = "TELEGRAM_API_URL", default_value = DEFAULT_TELEGRAM_URL)]
    pub telegram_api_url: String,

    /// A fixed IAM token (it expires within 12 h: for tests and short runs).
    #[arg(long, env = "YC_IAM_TOKEN", hide_env_values = true)]
    pub yc_iam_token: Option<String>,

    /// An OAuth token, exchanged for IAM tokens and refreshed hourly.
    #[arg(long, env = "YC_OAUTH_TOKEN", hide_env_values = true)]
    pub yc_oauth_token: Option<String>,

    /// The metadata service, used for IAM tokens when neither token is
    /// set (a VM with a service account).
    #[arg(long, env = "YC_METADATA_URL", default_value = DEFAULT_METADATA_URL)]
    pub yc_metadata_url: String,

    /// File that keeps alerts still queued at shutdown, resent at the next
    /// start (optional).
    #[arg(long, env = "ALERT_SPOOL")]
    pub alert_spool: Option<PathBuf>,

    /// State directory: without `ALERT_SPOOL`, the alert spool is
    /// `notify.spool` in it, so alerts the rate limits leave unsent at
    /// SIGTERM are sent at the next start. Unset, systemd's
    /// `STATE_DIRECTORY` is used; with neither, alerts left at shutdown are
    /// lost (logged at error with the count).
    #[arg(long, env = "STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// Seconds a VM may stay in STARTING, PROVISIONING, RESTARTING or
    /// STOPPING before a "stuck" warning (a VM's `stuck_after` in vms.yaml
    /// overrides it).
    #[arg(long, env = "STUCK_AFTER", default_value_t = 300)]
    pub stuck_after: u64,

    /// Seconds a VM may stay UPDATING before a "stuck" warning (a VM's
    /// `updating_stuck_after` overrides it).
    #[arg(long, env = "UPDATING_STUCK_AFTER", default_value_t = 600)]
    pub updating_stuck_after: u64,

    /// Bearer token of the admin API's mutating endpoints (pause, resume,
    /// maintenance, mute, ack, breaker forcing) at least 16 characters.
    /// Unset, those answer 403; the read-only listings stay open.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Take operator commands (`/status`, `/ack`, `/mute`, `/resume`) from
    /// the chat by `getUpdates` long polling. Off by default: only one
    /// consumer of a bot's updates may run, and a bot with a webhook cannot
    /// poll.
    #[arg(
        long,
        env = "TELEGRAM_COMMANDS",
        value_name = "TELEGRAM_COMMANDS",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub telegram_commands: bool,

    /// Comma-separated Telegram user ids allowed to send commands (default:
    /// anyone in `GROUP_CHAT_ID`).
    #[arg(long, env = "TELEGRAM_ADMIN_USER_IDS")]
    pub telegram_admin_user_ids: Option<String>,

    /// With `--check-config`: also check the credentials online (Telegram
    /// `getMe`, `getChat`, `getChatMember`; one IAM token and one Compute
    /// call). Without it, `--check-config` stays offline.
    #[arg(long, env = "CHECK_ONLINE")]
    pub online: bool,

    /// `--check-config`, `RUST_LOG` and `LOG_FORMAT`.
    #[command(flatten)]
    pub kit: KitArgs,
}

/// How the program gets IAM tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `YC_IAM_TOKEN`, used as is.
    Static(String),
    /// `YC_OAUTH_TOKEN`, exchanged at `YC_IAM_URL` and refreshed hourly.
    OAuth(String),
    /// The metadata service at `YC_METADATA_URL`.
    Metadata,
}

/// The validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Bot token.
    pub bot_token: String,
    /// Chat.
    pub chat: ChatId,
    /// Topic.
    pub topic_id: Option<i64>,
    /// Interval bounds.
    pub bounds: Bounds,
    /// API worker pool size.
    pub api_workers: usize,
    /// Telegram workers.
    pub telegram_workers: usize,
    /// `vms.yaml`.
    pub vms_config: PathBuf,
    /// Admin address.
    pub health_addr: SocketAddr,
    /// Compute base URL (no trailing slash).
    pub compute_url: String,
    /// Operation base URL.
    pub operation_url: String,
    /// IAM base URL.
    pub iam_url: String,
    /// Metadata base URL.
    pub metadata_url: String,
    /// Telegram base URL.
    pub telegram_url: String,
    /// Credentials.
    pub credentials: Credentials,
    /// Alert spool file.
    pub alert_spool: Option<PathBuf>,
    /// State directory (the default spool's home).
    pub state_dir: Option<PathBuf>,
    /// `STUCK_AFTER`.
    pub stuck_after: Duration,
    /// `UPDATING_STUCK_AFTER`.
    pub updating_stuck_after: Duration,
    /// `ADMIN_TOKEN`.
    pub admin_token: Option<String>,
    /// `TELEGRAM_COMMANDS`.
    pub telegram_commands: bool,
    /// `TELEGRAM_ADMIN_USER_IDS` (empty: anyone in the chat).
    pub admin_user_ids: Vec<i64>,
}

/// `value` as an http(s) base URL without its trailing slash.
fn url(variable: &'static str, value: &str) -> Result<String, ConfigError> {
    check::http_url(variable, value)?;
    Ok(value.trim().trim_end_matches('/').to_owned())
}

fn non_empty(
    variable: &'static str,
    value: Option<&String>,
) -> Result<Option<String>, ConfigError> {
    match value.map(|v| v.trim()) {
        None => Ok(None),
        Some("") => Err(ConfigError::new(variable, "is set but empty")),
        Some(v) => Ok(Some(v.to_owned())),
    }
}

impl Config {
    /// Validates every field into [`Settings`].
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first variable at fault.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let bot_token = self.bot_token.trim();
        // `<bot id>:<secret>`: with a token of this shape, Telegram answers
        // 401 for a wrong one (the start's self-check names BOT_TOKEN).
        let well_formed = bot_token.split_once(':').is_some_and(|(id, secret)| {
            !id.is_empty()
                && id.chars().all(|c| c.is_ascii_digit())
                && !secret.is_empty()
                && secret
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
        });
        if !well_formed {
            return Err(ConfigError::new(
                "BOT_TOKEN",
                "must be a bot token like `123456:ABC-def_ghi` (digits, a colon, then letters, digits, `-` or `_`)",
            ));
        }
        let chat: ChatId = self.group_chat_id.trim().parse().map_err(|e| {
            ConfigError::new("GROUP_CHAT_ID", format!("`{}`: {e}", self.group_chat_id))
        })?;
        if self.min_check_interval == 0 {
            return Err(ConfigError::new(
                "MIN_CHECK_INTERVAL",
                "must be at least 1 second",
            ));
        }
        if self.max_check_interval < self.min_check_interval {
            return Err(ConfigError::new(
                "MAX_CHECK_INTERVAL",
                format!(
                    "must be at least MIN_CHECK_INTERVAL ({} s), got {} s",
                    self.min_check_interval, self.max_check_interval
                ),
            ));
        }
        if self.max_check_interval > 24 * 3_600 {
            return Err(ConfigError::new(
                "MAX_CHECK_INTERVAL",
                "must be at most a day",
            ));
        }
        if self.api_worker_pool_size == 0 || self.api_worker_pool_size > 1_000 {
            return Err(ConfigError::new(
                "API_WORKER_POOL_SIZE",
                "must be within 1..=1000",
            ));
        }
        if self.telegram_workers == 0 || self.telegram_workers > 100 {
            return Err(ConfigError::new(
                "TELEGRAM_WORKERS",
                "must be within 1..=100",
            ));
        }
        if self.vms_config.as_os_str().is_empty() {
            return Err(ConfigError::new("VMS_CONFIG", "must name a file"));
        }
        let iam = non_empty("YC_IAM_TOKEN", self.yc_iam_token.as_ref())?;
        let oauth = non_empty("YC_OAUTH_TOKEN", self.yc_oauth_token.as_ref())?;
        let credentials = match (iam, oauth) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "YC_IAM_TOKEN",
                    "set either YC_IAM_TOKEN or YC_OAUTH_TOKEN, not both",
                ));
            }
            (Some(token), None) => Credentials::Static(token),
            (None, Some(token)) => Credentials::OAuth(token),
            (None, None) => Credentials::Metadata,
        };
        let stuck = |variable: &'static str, secs: u64| {
            if secs == 0 || Duration::from_secs(secs) > crate::duration::MAX {
                Err(ConfigError::new(
                    variable,
                    "must be within 1 second..=30 days",
                ))
            } else {
                Ok(Duration::from_secs(secs))
            }
        };
        let stuck_after = stuck("STUCK_AFTER", self.stuck_after)?;
        let updating_stuck_after = stuck("UPDATING_STUCK_AFTER", self.updating_stuck_after)?;
        let admin_token = match non_empty("ADMIN_TOKEN", self.admin_token.as_ref())? {
            Some(t) if t.len() < 16 || t.contains(char::is_whitespace) => {
                return Err(ConfigError::new(
                    "ADMIN_TOKEN",
                    "must be at least 16 characters without spaces (try `openssl rand -hex 32`)",
                ));
            }
            t => t,
        };
        let admin_user_ids = match self.telegram_admin_user_ids.as_deref().map(str::trim) {
            None | Some("") => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|id| {
                    id.trim().parse::<i64>().map_err(|_| {
                        ConfigError::new(
                            "TELEGRAM_ADMIN_USER_IDS",
                            format!("`{}` is not a numeric Telegram user id", id.trim()),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(Settings {
            stuck_after,
            updating_stuck_after,
            admin_token,
            telegram_commands: self.telegram_commands,
            admin_user_ids,
            bot_token: bot_token.to_owned(),
            chat,
            topic_id: self.topic_id,
            bounds: Bounds {
                min: Duration::from_secs(self.min_check_interval),
                max: Duration::from_secs(self.max_check_interval),
            },
            api_workers: self.api_worker_pool_size,
            telegram_workers: self.telegram_workers,
            vms_config: self.vms_config.clone(),
            health_addr: self.health_addr,
            compute_url: url("YC_COMPUTE_URL", &self.yc_compute_url)?,
            operation_url: url("YC_OPERATION_URL", &self.yc_operation_url)?,
            iam_url: url("YC_IAM_URL", &self.yc_iam_url)?,
            metadata_url: url("YC_METADATA_URL", &self.yc_metadata_url)?,
            telegram_url: url("TELEGRAM_API_URL", &self.telegram_api_url)?,
            credentials,
            alert_spool: self.alert_spool.clone(),
            state_dir: self.state_dir.clone(),
        })
    }
}

impl Program for Config {
    fn kit_args(&self) -> &KitArgs {
        &self.kit
    }

    fn validate(&self) -> Result<(), ConfigError> {
        Config::validate(self).map(drop)
    }

    /// `vms.yaml` readable and valid (at least one VM, no duplicate
    /// instance), the alert spool's directory (or the state directory)
    /// writable.
    ///
    /// With `--online`, also the self-checks (`crate::selfcheck`): Telegram
    /// accepts `BOT_TOKEN` and the bot is in `GROUP_CHAT_ID`; the cloud
    /// accepts the credentials. A rejection names the variable at fault;
    /// a service that cannot be reached names its URL variable.
    fn check(&self) -> Result<(), ConfigError> {
        check::readable_file("VMS_CONFIG", &self.vms_config)?;
        let text = std::fs::read_to_string(&self.vms_config)
            .map_err(|e| ConfigError::new("VMS_CONFIG", e.to_string()))?;
        let vms = vms_yaml::parse(&text, &self.vms_config).map_err(|e| e.into_config_error())?;
        if let Some(spool) = &self.alert_spool {
            check::writable_path("ALERT_SPOOL", spool)?;
        } else if let Some(dir) = &self.state_dir {
            check::writable_path("STATE_DIR", &dir.join("notify.spool"))?;
        }
        if self.online {
            let settings = Config::validate(self)?;
            // `--check-config` runs before any runtime exists.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| ConfigError::new("CHECK_ONLINE", format!("no runtime: {e}")))?;
            runtime.block_on(async {
                let client = crate::selfcheck::client();
                crate::selfcheck::telegram(&client, &settings)
                    .await
                    .map_err(crate::selfcheck::Failure::into_config_error)?;
                crate::selfcheck::cloud(&client, &settings, &vms)
                    .await
                    .map_err(crate::selfcheck::Failure::into_config_error)?;
                Ok::<(), ConfigError>(())
            })?;
            eprintln!("vm-watchdog: Telegram and the cloud accept the credentials");
        }
        Ok(())
    }

    fn admin_addr(&self) -> Option<SocketAddr> {
        Some(self.health_addr)
    }

    /// None: the issue names the metrics without a program prefix.
    fn metrics_prefix(&self) -> Option<String> {
        None
    }
}

impl Settings {
    /// Loads `vms.yaml` at start; a missing or invalid file is a
    /// configuration error of `VMS_CONFIG`.
    ///
    /// # Errors
    /// A [`ConfigError`] naming `VMS_CONFIG`.
    pub async fn load_vms(&self) -> Result<VmsFile, ConfigError> {
        vms_yaml::load(&self.vms_config)
            .await
            .map_err(|e| e.into_config_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        let mut all = vec![
            "vm-watchdog",
            "--bot-token",
            "1:x",
            "--group-chat-id",
            "-100",
        ];
        all.extend_from_slice(args);
        Config::try_parse_from(all)
    }

    #[test]
    fn defaults_follow_the_plan() {
        let settings = parse(&[]).unwrap().validate().unwrap();
        assert_eq!(settings.bounds, Bounds::default());
        assert_eq!((settings.api_workers, settings.telegram_workers), (10, 3));
        assert_eq!(settings.health_addr, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(settings.compute_url, DEFAULT_COMPUTE_URL);
        assert_eq!(settings.credentials, Credentials::Metadata);
        assert_eq!(settings.vms_config, PathBuf::from("vms.yaml"));
    }

    #[test]
    fn each_error_names_its_variable() {
        let cases: [(&[&str], &str); 8] = [
            (&["--min-check-interval", "0"], "MIN_CHECK_INTERVAL"),
            (
                &["--min-check-interval", "10", "--max-check-interval", "5"],
                "MAX_CHECK_INTERVAL",
            ),
            (&["--api-worker-pool-size", "0"], "API_WORKER_POOL_SIZE"),
            (&["--telegram-workers", "0"], "TELEGRAM_WORKERS"),
            (&["--yc-compute-url", "ftp://x"], "YC_COMPUTE_URL"),
            (&["--telegram-api-url", "not a url"], "TELEGRAM_API_URL"),
            (
                &["--yc-iam-token", "a", "--yc-oauth-token", "b"],
                "YC_IAM_TOKEN",
            ),
            (&["--yc-oauth-token", " "], "YC_OAUTH_TOKEN"),
        ];
        for (args, variable) in cases {
            let err = parse(args).unwrap().validate().unwrap_err();
            assert_eq!(err.field(), variable, "{args:?}");
            assert!(err.to_string().contains(variable), "{err}");
        }
        let err = Config::try_parse_from([
            "vm-watchdog",
            "--bot-token",
            "has space",
            "--group-chat-id",
            "-1",
        ])
        .unwrap()
        .validate()
        .unwrap_err();
        assert_eq!(err.field(), "BOT_TOKEN");
        let err = Config::try_parse_from([
            "vm-watchdog",
            "--bot-token",
            "1:x",
            "--group-chat-id",
            "group",
        ])
        .unwrap()
        .validate()
        .unwrap_err();
        assert_eq!(err.field(), "GROUP_CHAT_ID");
    }

    #[test]
    fn operator_variables_are_checked() {
        let s = parse(&[]).unwrap().validate().unwrap();
        assert_eq!(
            (s.stuck_after, s.updating_stuck_after),
            (Duration::from_secs(300), Duration::from_secs(600))
        );
        assert!(!s.telegram_commands && s.admin_token.is_none() && s.admin_user_ids.is_empty());
        let s = parse(&[
            "--stuck-after",
            "120",
            "--admin-token",
            "0123456789abcdef0123",
            "--telegram-commands",
            "true",
            "--telegram-admin-user-ids",
            "42, 43",
        ])
        .unwrap()
        .validate()
        .unwrap();
        assert_eq!(s.stuck_after, Duration::from_secs(120));
        assert_eq!(s.admin_user_ids, [42, 43]);
        assert!(s.telegram_commands);
        let cases: [(&[&str], &str); 5] = [
            (&["--stuck-after", "0"], "STUCK_AFTER"),
            (
                &["--updating-stuck-after", "99999999"],
                "UPDATING_STUCK_AFTER",
            ),
            (&["--admin-token", "short"], "ADMIN_TOKEN"),
            (&["--admin-token", " "], "ADMIN_TOKEN"),
            (
                &["--telegram-admin-user-ids", "42,bob"],
                "TELEGRAM_ADMIN_USER_IDS",
            ),
        ];
        for (args, variable) in cases {
            let err = parse(args).unwrap().validate().unwrap_err();
            assert_eq!(err.field(), variable, "{args:?}");
        }
        let err = parse(&["--telegram-commands", "yes"]).unwrap_err();
        assert!(err.to_string().contains("TELEGRAM_COMMANDS"), "{err}");
    }

    #[test]
    fn credentials_pick_one_source() {
        let s = parse(&["--yc-oauth-token", "y0_x"])
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(s.credentials, Credentials::OAuth("y0_x".into()));
        let s = parse(&["--yc-iam-token", "t1.x", "--topic-id", "7"])
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(s.credentials, Credentials::Static("t1.x".into()));
        assert_eq!(s.topic_id, Some(7));
    }

    #[test]
    fn a_value_of_the_wrong_type_is_a_parse_error_naming_the_variable() {
        let err = parse(&["--min-check-interval", "soon"]).unwrap_err();
        assert!(err.to_string().contains("MIN_CHECK_INTERVAL"), "{err}");
        let err = parse(&["--health-addr", "nowhere"]).unwrap_err();
        assert!(err.to_string().contains("HEALTH_ADDR"), "{err}");
    }

    #[test]
    fn check_config_reads_vms_yaml_and_the_spool_directory() {
        let dir = tempfile::tempdir().unwrap();
        let vms = dir.path().join("vms.yaml");
        let vms_arg = vms.to_str().unwrap();
        let missing = parse(&["--vms-config", vms_arg])
            .unwrap()
            .check()
            .unwrap_err();
        assert_eq!(missing.field(), "VMS_CONFIG");
        std::fs::write(&vms, "vms:\n  - name: a\n").unwrap();
        let invalid = parse(&["--vms-config", vms_arg])
            .unwrap()
            .check()
            .unwrap_err();
        assert_eq!(invalid.field(), "VMS_CONFIG");
        assert!(
            invalid.reason().contains("needs instance_id or proxy_url"),
            "{invalid}"
        );
        std::fs::write(&vms, "vms:\n  - name: a\n    instance_id: fhm1\n").unwrap();
        parse(&["--vms-config", vms_arg]).unwrap().check().unwrap();
        let spool = dir.path().join("no-dir").join("spool.json");
        let err = parse(&[
            "--vms-config",
            vms_arg,
            "--alert-spool",
            spool.to_str().unwrap(),
        ])
        .unwrap()
        .check()
        .unwrap_err();
        assert_eq!(err.field(), "ALERT_SPOOL");
        let err = parse(&[
            "--vms-config",
            vms_arg,
            "--state-dir",
            dir.path().join("no-dir").to_str().unwrap(),
        ])
        .unwrap()
        .check()
        .unwrap_err();
        assert_eq!(err.field(), "STATE_DIR");
        parse(&[
            "--vms-config",
            vms_arg,
            "--state-dir",
            dir.path().to_str().unwrap(),
        ])
        .unwrap()
        .check()
        .unwrap();
        std::fs::write(&vms, "vms: []\n").unwrap();
        let empty = parse(&["--vms-config", vms_arg])
            .unwrap()
            .check()
            .unwrap_err();
        assert!(empty.reason().contains("list is empty"), "{empty}");
        let config = parse(&[]).unwrap();
        assert_eq!(config.metrics_prefix(), None);
        assert_eq!(config.admin_addr(), Some("0.0.0.0:8080".parse().unwrap()));
    }
}
