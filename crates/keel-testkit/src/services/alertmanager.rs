//! A real Alertmanager started for a test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::process::{Launch, ServiceProcess, find_executable};
use crate::TestkitError;

/// How to install Alertmanager on Debian.
pub const ALERTMANAGER_INSTALL: &str =
    "apt-get install -y --no-install-recommends prometheus-alertmanager";
/// Environment variable with the full path of an Alertmanager binary.
pub const ALERTMANAGER_BIN_ENV: &str = "KEEL_ALERTMANAGER_BIN";

/// The configuration used unless replaced: every alert goes to a receiver
/// with no integrations; grouping waits 1 s (not the 30 s default).
pub const DEFAULT_ALERTMANAGER_CONFIG: &str = "\
route:
  receiver: 'null'
  group_by: ['alertname']
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: 'null'
";

/// An Alertmanager on a free loopback port with its own temporary
/// configuration and storage, clustering disabled (no gossip port).
/// Dropping it kills the process and removes the directory.
pub struct Alertmanager {
    process: ServiceProcess,
    url: String,
}

/// Options for [`Alertmanager`].
#[must_use]
#[derive(Debug, Clone)]
pub struct AlertmanagerBuilder {
    config: String,
    ready_timeout: Duration,
}

impl AlertmanagerBuilder {
    /// Replaces [`DEFAULT_ALERTMANAGER_CONFIG`].
    pub fn config_yaml(mut self, config: impl Into<String>) -> Self {
        self.config = config.into();
        self
    }

    /// Routes every alert to one webhook receiver at `url` (with
    /// `send_resolved: true`), grouping by `alertname` with 1 s waits.
    pub fn webhook(self, url: &str) -> Self {
        self.config_yaml(format!(
            "\
route:
  receiver: 'webhook'
  group_by: ['alertname']
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: 'webhook'
    webhook_configs:
      - url: '{url}'
        send_resolved: true
"
        ))
    }

    /// How long to wait for `/-/ready` (default 20 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Starts Alertmanager.
    ///
    /// # Errors
    /// [`TestkitError::ServiceNotFound`] naming the install command when the
    /// binary is missing; [`TestkitError::ServiceStart`] with its output
    /// when it does not become ready.
    pub async fn try_start(self) -> Result<Alertmanager, TestkitError> {
        let binary = find_executable(
            ALERTMANAGER_BIN_ENV,
            &["prometheus-alertmanager", "alertmanager"],
            &[],
        )
        .map_err(|looked| TestkitError::ServiceNotFound {
            service: "alertmanager",
            install: ALERTMANAGER_INSTALL,
            detail: format!(" (looked at {})", looked.join(", ")),
        })?;
        let command = |port: u16, dir: &Path| -> Result<Command, TestkitError> {
            let config = dir.join("alertmanager.yml");
            std::fs::write(&config, &self.config).map_err(|source| TestkitError::Io {
                context: format!("cannot write {}", config.display()),
                source,
            })?;
            let mut command = Command::new(&binary);
            command
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.path={}", dir.join("data").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                // Empty: no gossip listener on 0.0.0.0:9094.
                .arg("--cluster.listen-address=")
                .arg(format!("--web.external-url=http://127.0.0.1:{port}"));
            Ok(command)
        };
        let process = ServiceProcess::start(Launch {
            service: "alertmanager",
            command: &command,
            ready_path: "/-/ready",
            ready_timeout: self.ready_timeout,
        })
        .await?;
        let url = format!("http://127.0.0.1:{}", process.port());
        Ok(Alertmanager { process, url })
    }

    /// As [`AlertmanagerBuilder::try_start`].
    ///
    /// # Panics
    /// With the error's message when Alertmanager cannot start.
    pub async fn start(self) -> Alertmanager {
        self.try_start().await.unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Alertmanager {
    /// Options: configuration, webhook receiver.
    pub fn builder() -> AlertmanagerBuilder {
        AlertmanagerBuilder {
            config: DEFAULT_ALERTMANAGER_CONFIG.to_owned(),
            ready_timeout: Duration::from_secs(20),
        }
    }

    /// Starts with the default configuration.
    ///
    /// # Panics
    /// As [`AlertmanagerBuilder::start`].
    pub async fn start() -> Self {
        Self::builder().start().await
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.process.dir().join("alertmanager.yml")
    }

    /// Posts alerts (`POST /api/v2/alerts`, a JSON array of
    /// `{labels, annotations, startsAt, endsAt}`). Resolve an alert by
    /// posting the same labels with `endsAt` in the past.
    ///
    /// # Errors
    /// [`TestkitError::Command`] on a transport error or a non-success
    /// answer.
    pub async fn post_alerts(&self, alerts: &Value) -> Result<(), TestkitError> {
        reqwest::Client::new()
            .post(format!("{}/api/v2/alerts", self.url))
            .json(alerts)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| command_error("post alerts", e))?;
        Ok(())
    }

    /// The current alerts (`GET /api/v2/alerts`).
    ///
    /// # Errors
    /// [`TestkitError::Command`] on a transport error or a non-success
    /// answer.
    pub async fn alerts(&self) -> Result<Value, TestkitError> {
        reqwest::Client::new()
            .get(format!("{}/api/v2/alerts", self.url))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| command_error("list alerts", e))?
            .json()
            .await
            .map_err(|e| command_error("list alerts", e))
    }
}

impl std::fmt::Debug for Alertmanager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alertmanager")
            .field("url", &self.url)
            .finish()
    }
}

fn command_error(context: &str, e: reqwest::Error) -> TestkitError {
    TestkitError::Command {
        service: "alertmanager",
        context: context.to_owned(),
        source: e.into(),
    }
}
