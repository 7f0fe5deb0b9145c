//! moto's server mode (fake AWS APIs) started for a test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::process::{Launch, ServiceProcess, find_executable};
use crate::TestkitError;

/// How to install moto's server mode in the venv the helper looks in.
pub const MOTO_INSTALL: &str =
    "python3 -m venv /opt/keel-venv && /opt/keel-venv/bin/pip install 'moto[server]'";
/// Environment variable naming a virtual environment whose `bin/` holds
/// `moto_server`.
pub const MOTO_VENV_ENV: &str = "KEEL_MOTO_VENV";
/// Environment variable with the full path of a `moto_server` executable
/// (checked after [`MOTO_VENV_ENV`]).
pub const MOTO_BIN_ENV: &str = "KEEL_MOTO_BIN";
/// The virtual environment looked in last.
pub const DEFAULT_MOTO_VENV: &str = "/opt/keel-venv";

/// A moto server (one endpoint for every AWS service) on a free loopback
/// port. Any credentials are accepted; state persists until
/// [`Moto::reset`]. Dropping it kills the process.
pub struct Moto {
    process: ServiceProcess,
    url: String,
}

impl Moto {
    /// Starts moto, waiting up to 30 s for `/moto-api/`.
    ///
    /// # Panics
    /// With the error's message (naming the install command) when moto
    /// cannot start.
    pub async fn start() -> Self {
        Self::try_start().await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts moto. `moto_server` is looked for in `$KEEL_MOTO_VENV/bin`,
    /// then at `$KEEL_MOTO_BIN`, then on `PATH`, then in `/opt/keel-venv/bin`.
    ///
    /// # Errors
    /// [`TestkitError::ServiceNotFound`] naming the install command;
    /// [`TestkitError::ServiceStart`] with its output when it does not
    /// become ready.
    pub async fn try_start() -> Result<Self, TestkitError> {
        Self::try_start_with_timeout(Duration::from_secs(30)).await
    }

    /// As [`Moto::try_start`], with a readiness bound.
    ///
    /// # Errors
    /// As [`Moto::try_start`].
    pub async fn try_start_with_timeout(ready_timeout: Duration) -> Result<Self, TestkitError> {
        let binary = locate()?;
        let command = |port: u16, _dir: &Path| -> Result<Command, TestkitError> {
            let mut command = Command::new(&binary);
            command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
            Ok(command)
        };
        let process = ServiceProcess::start(Launch {
            service: "moto",
            command: &command,
            ready_path: "/moto-api/",
            ready_timeout,
        })
        .await?;
        let url = format!("http://127.0.0.1:{}", process.port());
        Ok(Moto { process, url })
    }

    /// `http://127.0.0.1:<port>`: the endpoint URL for every AWS client.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Forgets every resource (`POST /moto-api/reset`).
    ///
    /// # Errors
    /// [`TestkitError::Command`] when moto refuses.
    pub async fn reset(&self) -> Result<(), TestkitError> {
        reqwest::Client::new()
            .post(format!("{}/moto-api/reset", self.url))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| TestkitError::Command {
                service: "moto",
                context: "reset".to_owned(),
                source: e.into(),
            })?;
        Ok(())
    }
}

impl std::fmt::Debug for Moto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Moto").field("url", &self.url).finish()
    }
}

fn locate() -> Result<PathBuf, TestkitError> {
    let mut dirs = Vec::new();
    if let Some(venv) = std::env::var_os(MOTO_VENV_ENV) {
        let bin = PathBuf::from(venv).join("bin").join("moto_server");
        if bin.is_file() {
            return Ok(bin);
        }
        dirs.push(bin.display().to_string());
    }
    find_executable(
        MOTO_BIN_ENV,
        &["moto_server"],
        &[PathBuf::from(DEFAULT_MOTO_VENV).join("bin")],
    )
    .map_err(|looked| {
        dirs.extend(looked);
        TestkitError::ServiceNotFound {
            service: "moto_server",
            install: MOTO_INSTALL,
            detail: format!(" (looked at {})", dirs.join(", ")),
        }
    })
}
