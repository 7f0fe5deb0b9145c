//! Child processes for real services: executable lookup, free ports, output
//! capture, bounded readiness polling, kill and cleanup on drop.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::TestkitError;

/// How much of a failed process's output an error quotes.
const OUTPUT_TAIL_BYTES: u64 = 4_096;
/// How many fresh ports to try when a start loses a port race.
const START_ATTEMPTS: usize = 3;

/// Finds an executable: first `env_override` (a full path), then each name on
/// `PATH`, then each name in `extra_dirs`.
pub(crate) fn find_executable(
    env_override: &str,
    names: &[&str],
    extra_dirs: &[PathBuf],
) -> Result<PathBuf, Vec<String>> {
    let mut looked = Vec::new();
    if let Some(path) = std::env::var_os(env_override) {
        let path = PathBuf::from(path);
        if is_executable(&path) {
            return Ok(path);
        }
        looked.push(format!("${env_override}={}", path.display()));
    }
    let path_dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for dir in path_dirs.iter().chain(extra_dirs) {
        for name in names {
            let candidate = dir.join(name);
            if is_executable(&candidate) {
                return Ok(candidate);
            }
        }
    }
    looked.push(format!("{} on PATH", names.join(", ")));
    for dir in extra_dirs {
        looked.push(dir.display().to_string());
    }
    Err(looked)
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A port that was free a moment ago on 127.0.0.1.
pub(crate) fn free_port() -> Result<u16, TestkitError> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| TestkitError::Io {
            context: "cannot find a free loopback port".to_owned(),
            source,
        })
}

/// A service process in its own process group, with a private temporary
/// directory. Dropping it kills the whole group, reaps the child and removes
/// the directory.
pub(crate) struct ServiceProcess {
    service: &'static str,
    child: Child,
    output: PathBuf,
    port: u16,
    // Declared last: removed after the process is gone.
    dir: TempDir,
}

/// What a service start needs.
pub(crate) struct Launch<'a> {
    pub(crate) service: &'static str,
    /// Builds the command for a port and the temp dir. Called once per
    /// attempt, with a fresh port and directory.
    pub(crate) command: &'a dyn Fn(u16, &Path) -> Result<Command, TestkitError>,
    /// The path polled until it answers 2xx (`/-/ready`).
    pub(crate) ready_path: &'a str,
    pub(crate) ready_timeout: Duration,
}

impl ServiceProcess {
    /// Starts the service on a free port and waits until `ready_path`
    /// answers 2xx; retries with a new port when the process exits early
    /// (another process may have taken the port).
    pub(crate) async fn start(launch: Launch<'_>) -> Result<Self, TestkitError> {
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_port()?;
            let dir = tempfile::Builder::new()
                .prefix(&format!("keel-{}-", launch.service.to_ascii_lowercase()))
                .tempdir()
                .map_err(|source| TestkitError::Io {
                    context: "cannot create a temporary directory".to_owned(),
                    source,
                })?;
            let command = (launch.command)(port, dir.path())?;
            let mut process = Self::spawn(launch.service, command, port, dir)?;
            match process
                .wait_ready(launch.ready_path, launch.ready_timeout)
                .await
            {
                Ok(()) => return Ok(process),
                Err(ReadyError::Exited(e)) => last_error = Some(e),
                Err(ReadyError::Fatal(e)) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| TestkitError::ServiceStart {
            service: launch.service,
            reason: "no start attempt was made".to_owned(),
            output: String::new(),
        }))
    }

    fn spawn(
        service: &'static str,
        mut command: Command,
        port: u16,
        dir: TempDir,
    ) -> Result<Self, TestkitError> {
        let output = dir.path().join("output.log");
        let io_error = |context: String| move |source| TestkitError::Io { context, source };
        let stdout = File::create(&output)
            .map_err(io_error(format!("cannot create {}", output.display())))?;
        let stderr = stdout
            .try_clone()
            .map_err(io_error("cannot duplicate the output file".to_owned()))?;
        let child = command
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // Its own group, so drop can kill whatever it forks too.
            .process_group(0)
            .spawn()
            .map_err(io_error(format!("cannot start {service} ({command:?})")))?;
        tracing::debug!(service, port, pid = child.id(), "service process started");
        Ok(ServiceProcess {
            service,
            child,
            output,
            port,
            dir,
        })
    }

    async fn wait_ready(&mut self, path: &str, timeout: Duration) -> Result<(), ReadyError> {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .no_proxy()
            .build()
            .map_err(|e| {
                ReadyError::Fatal(TestkitError::Command {
                    service: self.service,
                    context: "cannot build an HTTP client".to_owned(),
                    source: e.into(),
                })
            })?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(ReadyError::Exited(self.start_error(format!(
                    "the process exited with {status} before {url} answered"
                ))));
            }
            match client.get(&url).send().await {
                Ok(response) if response.status().is_success() => return Ok(()),
                Ok(response) => last = format!("{url} answered {}", response.status()),
                Err(e) => last = format!("{url}: {e}"),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ReadyError::Fatal(self.start_error(format!(
                    "not ready within {timeout:?}; last: {last}"
                ))));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn start_error(&self, reason: String) -> TestkitError {
        TestkitError::ServiceStart {
            service: self.service,
            reason,
            output: self.output_tail(),
        }
    }

    /// The last few KiB of the process's output.
    pub(crate) fn output_tail(&self) -> String {
        let read = || -> std::io::Result<String> {
            let mut file = File::open(&self.output)?;
            let len = file.metadata()?.len();
            file.seek(SeekFrom::Start(len.saturating_sub(OUTPUT_TAIL_BYTES)))?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)?;
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        };
        read().unwrap_or_else(|e| format!("(output unavailable: {e})"))
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

enum ReadyError {
    /// The process died (maybe a port race): worth another attempt.
    Exited(TestkitError),
    /// Timed out or cannot check: give up.
    Fatal(TestkitError),
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // The group id is the child's pid (process_group(0)).
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        tracing::debug!(
            service = self.service,
            port = self.port,
            "service process stopped"
        );
    }
}

/// Runs a short command to completion, turning a failure into a
/// [`TestkitError::Command`] that quotes its output.
pub(crate) fn run_to_completion(
    service: &'static str,
    mut command: Command,
) -> Result<(), TestkitError> {
    let output = command.output().map_err(|source| TestkitError::Io {
        context: format!("cannot run {command:?}"),
        source,
    })?;
    if output.status.success() {
        return Ok(());
    }
    Err(TestkitError::Command {
        service,
        context: format!("{command:?} exited with {}", output.status),
        source: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
        .into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executables_are_found_on_path_or_in_extra_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("keel-fake-tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        // Not executable yet: not found.
        let looked = find_executable(
            "KEEL_TEST_UNSET_VARIABLE",
            &["keel-fake-tool"],
            &[dir.path().to_owned()],
        )
        .unwrap_err();
        assert!(
            looked
                .iter()
                .any(|l| l.contains(&dir.path().display().to_string())),
            "{looked:?}"
        );
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            find_executable(
                "KEEL_TEST_UNSET_VARIABLE",
                &["keel-fake-tool"],
                &[dir.path().to_owned()]
            )
            .unwrap(),
            tool
        );
        assert!(find_executable("KEEL_TEST_UNSET_VARIABLE", &["sh"], &[]).is_ok());
    }

    #[tokio::test]
    async fn a_process_that_exits_early_is_reported_with_its_output() {
        let command = |_port: u16, _dir: &Path| -> Result<Command, TestkitError> {
            let mut c = Command::new("sh");
            c.args(["-c", "echo listen failed: address already in use; exit 3"]);
            Ok(c)
        };
        let err = ServiceProcess::start(Launch {
            service: "fake-service",
            command: &command,
            ready_path: "/-/ready",
            ready_timeout: Duration::from_secs(10),
        })
        .await
        .err()
        .unwrap();
        let message = err.to_string();
        assert!(
            message.starts_with(
                "fake-service did not become ready: the process exited with exit status: 3"
            ),
            "{message}"
        );
        assert!(message.contains("address already in use"), "{message}");
    }

    #[tokio::test]
    async fn a_process_that_never_answers_times_out_and_is_killed() {
        let outside = tempfile::tempdir().unwrap();
        let pid_file = outside.path().join("pid");
        let command = |_port: u16, _dir: &Path| -> Result<Command, TestkitError> {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!("echo $$ > {}; exec sleep 600", pid_file.display()));
            Ok(c)
        };
        let err = ServiceProcess::start(Launch {
            service: "silent",
            command: &command,
            ready_path: "/",
            ready_timeout: Duration::from_millis(300),
        })
        .await
        .err()
        .unwrap();
        assert!(err.to_string().contains("not ready within 300ms"), "{err}");
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        assert!(
            !Path::new(&format!("/proc/{}", pid.trim())).exists(),
            "the process was killed and reaped"
        );
    }
}
