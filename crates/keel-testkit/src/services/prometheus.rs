//! A real Prometheus started for a test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::process::{Launch, ServiceProcess, find_executable, run_to_completion};
use crate::TestkitError;

/// How to install Prometheus (and `promtool`) on Debian.
pub const PROMETHEUS_INSTALL: &str = "apt-get install -y --no-install-recommends prometheus";
/// Environment variable with the full path of a `prometheus` binary.
pub const PROMETHEUS_BIN_ENV: &str = "KEEL_PROMETHEUS_BIN";
/// Environment variable with the full path of a `promtool` binary.
pub const PROMTOOL_BIN_ENV: &str = "KEEL_PROMTOOL_BIN";

/// The configuration used unless [`PrometheusBuilder::config_yaml`] replaces
/// it: no scrape targets, 1 s intervals, and a 30-day out-of-order window so
/// remote-written or backfilled samples from the past are accepted.
pub const DEFAULT_PROMETHEUS_CONFIG: &str = "\
global:
  scrape_interval: 1s
  evaluation_interval: 1s
storage:
  tsdb:
    out_of_order_time_window: 30d
";

/// A Prometheus server on a free loopback port with its own temporary
/// configuration and data directory, started with
/// `--web.enable-remote-write-receiver` and `--web.enable-lifecycle`.
/// Dropping it kills the process and removes the directory.
pub struct Prometheus {
    process: ServiceProcess,
    url: String,
}

/// Options for [`Prometheus`].
#[must_use]
#[derive(Debug, Clone)]
pub struct PrometheusBuilder {
    config: String,
    openmetrics: Vec<String>,
    args: Vec<String>,
    ready_timeout: Duration,
}

impl PrometheusBuilder {
    /// Replaces [`DEFAULT_PROMETHEUS_CONFIG`].
    pub fn config_yaml(mut self, config: impl Into<String>) -> Self {
        self.config = config.into();
        self
    }

    /// Backfills samples before start: `text` is OpenMetrics exposition with
    /// timestamps in seconds, ending in `# EOF`; it is turned into TSDB blocks
    /// with `promtool tsdb create-blocks-from openmetrics`. May be called
    /// more than once.
    pub fn openmetrics(mut self, text: impl Into<String>) -> Self {
        self.openmetrics.push(text.into());
        self
    }

    /// Adds a command-line flag.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// How long to wait for `/-/ready` (default 20 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Starts Prometheus.
    ///
    /// # Errors
    /// [`TestkitError::ServiceNotFound`] naming the install command when
    /// `prometheus` (or, with backfill, `promtool`) is missing;
    /// [`TestkitError::ServiceStart`] with its output when it does not
    /// become ready.
    pub async fn try_start(self) -> Result<Prometheus, TestkitError> {
        let binary = locate("prometheus", PROMETHEUS_BIN_ENV)?;
        let promtool = if self.openmetrics.is_empty() {
            None
        } else {
            Some(locate("promtool", PROMTOOL_BIN_ENV)?)
        };
        let command = |port: u16, dir: &Path| -> Result<Command, TestkitError> {
            let config = dir.join("prometheus.yml");
            let data = dir.join("data");
            write(&config, &self.config)?;
            std::fs::create_dir_all(&data).map_err(|source| TestkitError::Io {
                context: format!("cannot create {}", data.display()),
                source,
            })?;
            if let Some(promtool) = &promtool {
                for (i, text) in self.openmetrics.iter().enumerate() {
                    let input = dir.join(format!("backfill-{i}.om"));
                    write(&input, text)?;
                    let mut backfill = Command::new(promtool);
                    backfill
                        .args(["tsdb", "create-blocks-from", "openmetrics"])
                        .arg(&input)
                        .arg(&data);
                    run_to_completion("promtool", backfill)?;
                }
            }
            let mut command = Command::new(&binary);
            command
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", data.display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--web.enable-remote-write-receiver")
                .arg("--web.enable-lifecycle")
                .args(&self.args);
            Ok(command)
        };
        let process = ServiceProcess::start(Launch {
            service: "prometheus",
            command: &command,
            ready_path: "/-/ready",
            ready_timeout: self.ready_timeout,
        })
        .await?;
        let url = format!("http://127.0.0.1:{}", process.port());
        Ok(Prometheus { process, url })
    }

    /// As [`PrometheusBuilder::try_start`].
    ///
    /// # Panics
    /// With the error's message (which names the install command) when
    /// Prometheus cannot start.
    pub async fn start(self) -> Prometheus {
        self.try_start().await.unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Prometheus {
    /// Options: configuration, backfill, flags.
    pub fn builder() -> PrometheusBuilder {
        PrometheusBuilder {
            config: DEFAULT_PROMETHEUS_CONFIG.to_owned(),
            openmetrics: Vec::new(),
            args: Vec::new(),
            ready_timeout: Duration::from_secs(20),
        }
    }

    /// Starts with the default configuration.
    ///
    /// # Panics
    /// As [`PrometheusBuilder::start`].
    pub async fn start() -> Self {
        Self::builder().start().await
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The TSDB directory.
    pub fn data_dir(&self) -> PathBuf {
        self.process.dir().join("data")
    }

    /// The configuration file (edit it, then [`Prometheus::reload`]).
    pub fn config_path(&self) -> PathBuf {
        self.process.dir().join("prometheus.yml")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Re-reads the configuration file (`POST /-/reload`).
    ///
    /// # Errors
    /// [`TestkitError::Command`] when Prometheus refuses.
    pub async fn reload(&self) -> Result<(), TestkitError> {
        let response = reqwest::Client::new()
            .post(format!("{}/-/reload", self.url))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| command_error("reload", e))?;
        drop(response);
        Ok(())
    }

    /// Runs an instant query (`GET /api/v1/query`), at `time` (Unix seconds)
    /// or now, and returns the `data` object (`resultType`, `result`).
    ///
    /// # Errors
    /// [`TestkitError::Command`] on a transport error or a non-success
    /// answer.
    pub async fn query(&self, promql: &str, time: Option<f64>) -> Result<Value, TestkitError> {
        let mut params = vec![("query", promql.to_owned())];
        if let Some(t) = time {
            params.push(("time", t.to_string()));
        }
        let body: Value = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url))
            .query(&params)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| command_error(promql, e))?
            .json()
            .await
            .map_err(|e| command_error(promql, e))?;
        match body.get("status").and_then(Value::as_str) {
            Some("success") => Ok(body["data"].clone()),
            _ => Err(TestkitError::Command {
                service: "prometheus",
                context: format!("query {promql}"),
                source: body.to_string().into(),
            }),
        }
    }
}

impl std::fmt::Debug for Prometheus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prometheus")
            .field("url", &self.url)
            .finish()
    }
}

fn locate(name: &'static str, env: &str) -> Result<PathBuf, TestkitError> {
    find_executable(env, &[name], &[]).map_err(|looked| TestkitError::ServiceNotFound {
        service: name,
        install: PROMETHEUS_INSTALL,
        detail: format!(" (looked at {})", looked.join(", ")),
    })
}

fn write(path: &Path, text: &str) -> Result<(), TestkitError> {
    std::fs::write(path, text).map_err(|source| TestkitError::Io {
        context: format!("cannot write {}", path.display()),
        source,
    })
}

fn command_error(context: &str, e: reqwest::Error) -> TestkitError {
    TestkitError::Command {
        service: "prometheus",
        context: context.to_owned(),
        source: e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_names_the_install_command() {
        let err = locate("keel-no-such-prometheus", "KEEL_TEST_UNSET_VARIABLE").unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with(
                "keel-no-such-prometheus not found: run `apt-get install -y --no-install-recommends prometheus`"
            ),
            "{message}"
        );
        assert!(message.contains("on PATH"), "{message}");
    }
}
