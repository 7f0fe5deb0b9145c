//! Shared helpers: fake VMs (the `fake-vmm` binary), an in-process
//! supervisor with short timings, bounded waits for real events, and a
//! guard that kills every VM a test started (the supervisor leaves them
//! running on purpose).

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_health::HealthMetrics;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use vm_supervisor::alerts::Alerts;
use vm_supervisor::config::{Settings, Timings};
use vm_supervisor::metrics::Metrics;
use vm_supervisor::spec::{self, VmSpec};
use vm_supervisor::supervisor::{Options, Supervisor, VmView};

pub const FAKE_VMM: &str = env!("CARGO_BIN_EXE_fake-vmm");
pub const SUPERVISOR: &str = env!("CARGO_BIN_EXE_vm-supervisor");

/// Upper bound of every wait for a real event.
pub const WAIT: Duration = Duration::from_secs(15);

/// A temp dir with `vm-supervisor.yaml` and the registry; kills every
/// process whose command line mentions the dir when dropped.
pub struct Lab {
    pub dir: tempfile::TempDir,
}

impl Lab {
    pub fn new() -> Lab {
        Lab {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn db_url(&self) -> String {
        format!("sqlite://{}", self.path().join("registry.db").display())
    }

    pub fn config_path(&self) -> PathBuf {
        self.path().join("vm-supervisor.yaml")
    }

    /// A fake VM `id` with short timings and `extra` YAML keys/args.
    pub fn vm_yaml(&self, id: &str, extra_args: &[&str], extra: &str) -> String {
        let mut args = vec![
            "--api-sock".to_owned(),
            "{socket}".into(),
            "--id".into(),
            "{id}".into(),
        ];
        args.extend(extra_args.iter().map(|s| (*s).to_owned()));
        format!(
            "  - id: {id}\n    command: {FAKE_VMM}\n    args: {args:?}\n    socket: '{}/{{id}}.sock'\n    start_calls:\n      - {{method: PUT, path: /actions, body: {{action_type: InstanceStart}}}}\n{extra}",
            self.path().display()
        )
    }

    pub fn write_config(&self, vms: &[String]) -> Vec<VmSpec> {
        let text = format!("vms:\n{}", vms.concat());
        std::fs::write(self.config_path(), &text).expect("write config");
        spec::parse(&text, &self.config_path())
            .expect("valid config")
            .vms
    }

    pub fn socket(&self, id: &str) -> PathBuf {
        self.path().join(format!("{id}.sock"))
    }

    /// Pids of live processes whose command line mentions this lab.
    pub fn processes(&self) -> Vec<u32> {
        let needle = self.path().to_string_lossy().into_owned();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let zombie = vm_supervisor::process::stat(pid).is_some_and(|(s, _)| s == 'Z');
            if cmdline.contains(&needle) && cmdline.contains("fake-vmm") && !zombie {
                pids.push(pid);
            }
        }
        pids.sort_unstable();
        pids
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for pid in self.processes() {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

/// Short timings: checks every 150 ms (150 ms timeout), 3 failures, 2
/// successes.
pub fn fast_timings() -> Timings {
    Timings {
        health_interval: Duration::from_millis(150),
        health_timeout: Duration::from_millis(150),
        failure_threshold: 3,
        recovery_threshold: 2,
        retry_interval: Duration::from_millis(200),
        backoff_factor: 2.0,
        max_retry_interval: Duration::from_secs(1),
        start_timeout: Duration::from_secs(5),
        stop_grace: Duration::from_millis(500),
        stable_period: Duration::from_secs(600),
    }
}

pub fn settings(lab: &Lab) -> Settings {
    let mut s = Settings::for_tests(lab.config_path(), lab.db_url());
    s.timings = fast_timings();
    s
}

pub struct Running {
    pub supervisor: Supervisor,
    pub metrics: Metrics,
}

pub async fn start(settings: Settings, vms: Vec<VmSpec>) -> Running {
    let metrics = Metrics::default();
    let supervisor = Supervisor::start(
        settings,
        vms,
        metrics.clone(),
        HealthMetrics::new(),
        Alerts::new(None),
        Options {
            seed: Some(7),
            ..Options::default()
        },
    )
    .await
    .expect("supervisor starts");
    Running {
        supervisor,
        metrics,
    }
}

/// Polls `f` every 20 ms until it is `Some`, at most [`WAIT`].
pub async fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn healthy_view(s: &Supervisor, id: &str) -> Option<VmView> {
    s.get(id).filter(|v| {
        v.state == vm_supervisor::supervisor::VmState::Running && v.healthy && v.pid.is_some()
    })
}

/// Waits until `id` runs healthy with a pid other than `not`.
pub async fn wait_healthy(s: &Supervisor, id: &str, not: Option<u32>) -> VmView {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = healthy_view(s, id).filter(|v| v.pid != not) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {id} healthy with a pid other than {not:?}; now {:?}",
            s.get(id)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One HTTP request to a fake VM's socket; `(status, body)`.
pub async fn vm_call(socket: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(socket)
        .await
        .expect("connect");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut out)).await;
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

/// Tells a fake VM to misbehave (`{"fault": ...}`); does not wait for an
/// answer (a crash or hang gives none).
pub async fn fault(socket: &Path, json: &str) {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::UnixStream::connect(socket)
        .await
        .expect("connect");
    let req = format!(
        "PUT /fault HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
        json.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    // Give the request time to be read before the connection drops.
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(
        Duration::from_millis(300),
        tokio::io::AsyncReadExt::read(&mut s, &mut buf),
    )
    .await;
}

pub fn sigkill(pid: u32) {
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill -9");
}
