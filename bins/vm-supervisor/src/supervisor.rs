//! The supervisor: one task per VM that starts or adopts its process,
//! watches it (exit at once, health through keel-health), classifies a
//! failure as metald did, and recovers it with backoff, bounded
//! concurrency (a keel-breaker `Bulkhead`) and the fleet short-circuit.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use keel_breaker::Bulkhead;
use keel_core::Priority;
use keel_health::{
    CheckConfig, FailureKind, HealthChecker, HealthMetrics, HealthState, Probe, ProbeFailure,
    ProbeResult, SocketFileProbe, UnixHttpProbe, all_of,
};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::alerts::Alerts;
use crate::api;
use crate::config::{Settings, Timings};
use crate::metrics::Metrics;
use crate::policy::{Policy, Step};
use crate::process::{self, ExitStatus, Identity, Liveness, Running};
use crate::registry::{Attempt, Desired, Registry, RegistryError, VmRecord};
use crate::spec::VmSpec;
use keel_core::ConfigError;

/// Why a VM needs recovering: metald's orphan reasons, plus the reasons of
/// starts that are not orphans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The process is gone.
    ProcessDead,
    /// The recorded pid is now another process.
    ProcessMismatch,
    /// The socket file is missing or nobody answers on it.
    SocketUnreachable,
    /// The API answered badly (≥ 500), too slowly, or not HTTP.
    HealthCheckFailed,
    /// `POST /vms/{id}/recover`.
    Manual,
    /// The first start of a VM the registry had no process for.
    InitialStart,
    /// A retry long after the VM needed intervention.
    LateRecovery,
}

impl Reason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ProcessDead => "process_dead",
            Reason::ProcessMismatch => "process_mismatch",
            Reason::SocketUnreachable => "socket_unreachable",
            Reason::HealthCheckFailed => "health_check_failed",
            Reason::Manual => "manual",
            Reason::InitialStart => "initial_start",
            Reason::LateRecovery => "late_recovery",
        }
    }

    fn is_orphan(self) -> bool {
        matches!(
            self,
            Reason::ProcessDead
                | Reason::ProcessMismatch
                | Reason::SocketUnreachable
                | Reason::HealthCheckFailed
        )
    }

    /// The orphan reason of a failed health check, as metald orders its
    /// checks: socket file → process → connect → `GET /`. The process is
    /// looked up again in `/proc`, which tells a dead process from a
    /// recycled pid.
    pub fn of_failure(failure: &ProbeFailure, identity: Option<Identity>) -> Reason {
        match identity.map(|i| i.liveness()) {
            Some(Liveness::Dead) => return Reason::ProcessDead,
            Some(Liveness::Mismatch) => return Reason::ProcessMismatch,
            _ => {}
        }
        match failure.kind() {
            FailureKind::NotRunning => Reason::ProcessDead,
            FailureKind::Missing
            | FailureKind::NotSocket
            | FailureKind::Refused
            | FailureKind::Connect => Reason::SocketUnreachable,
            _ => Reason::HealthCheckFailed,
        }
    }
}

/// A VM's state as the admin API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// Being started; its API has not answered yet.
    Starting,
    /// Running and (as far as known) healthy.
    Running,
    /// Failed; a recovery is due (after its backoff, or once the fleet
    /// short-circuit lifts), or it is paused.
    Unhealthy,
    /// A recovery attempt is under way.
    Recovering,
    /// Out of attempts; late recovery or an operator will act.
    NeedsIntervention,
    /// Supervision paused by an operator.
    Paused,
    /// Stopped on purpose (an exit code in `no_restart_exit_codes`).
    Stopped,
}

/// What `GET /vms` shows of a VM.
#[derive(Debug, Clone, Serialize)]
pub struct VmView {
    /// Id.
    pub id: String,
    /// State.
    pub state: VmState,
    /// The last health verdict (true after a start until a check fails).
    pub healthy: bool,
    /// The current process.
    pub pid: Option<u32>,
    /// Seconds since the current process was started or adopted.
    pub uptime_s: Option<u64>,
    /// Restarts so far (from the registry, across supervisor restarts).
    pub restarts: u64,
    /// The last failure reason.
    pub last_reason: Option<String>,
    #[serde(skip)]
    started: Option<Instant>,
    /// In a run of failures (from a failure to the next good start or
    /// health recovery): what the fleet short-circuit counts, so a VM
    /// between two attempts does not make it flap.
    #[serde(skip)]
    failing: bool,
}

/// An admin command.
#[derive(Debug)]
enum Cmd {
    Health(HealthState, Option<ProbeFailure>, Instant),
    Recover,
    Pause,
    Resume,
    Delete(oneshot::Sender<()>),
    /// A changed spec from a reload: used from the next recovery on.
    Update(Box<VmSpec>),
}

#[derive(Debug)]
struct Handle {
    tx: mpsc::UnboundedSender<Cmd>,
    view: Arc<Mutex<VmView>>,
    socket: std::path::PathBuf,
    /// The spec the VM has, or gets at its next recovery.
    spec: VmSpec,
    /// `file` (SUPERVISOR_CONFIG) or `api`.
    source: String,
}

/// What `GET /status` shows: which subsystems act, and the configuration
/// file's state.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// An operator drained the host (`POST /drain`).
    pub drained: bool,
    /// The fleet short-circuit holds.
    pub short_circuited: bool,
    /// Automatic recovery can run now (enabled, not drained, not
    /// short-circuited).
    pub recovering: bool,
    /// Health checks are enabled (`POST /health-checks/enable|disable`).
    pub health_checks: bool,
    /// Automatic recovery is enabled (`POST /recovery/enable|disable`).
    pub recovery: bool,
    /// The last reload of `SUPERVISOR_CONFIG` was applied (true until one
    /// fails; a later good one sets it back).
    pub config_ok: bool,
    /// Why the last reload was refused.
    pub config_error: Option<String>,
    /// VMs registered.
    pub vms: usize,
    /// VM-looking processes the registry did not know at start, left
    /// alone (`UNKNOWN_PROCESSES`).
    pub unknown_processes: Vec<UnknownProcess>,
}

/// A running process that looks like a VM (its program is a configured
/// VM's `command`) but that the registry did not know at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnknownProcess {
    /// Its pid.
    pub pid: u32,
    /// Its command line.
    pub cmdline: Vec<String>,
    /// The configured VM whose whole command line it has, if any.
    pub matches_vm: Option<String>,
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReloadReport {
    /// VMs registered and started.
    pub added: Vec<String>,
    /// VMs whose spec changed (used from their next recovery).
    pub changed: Vec<String>,
    /// VMs deregistered (their process group stopped).
    pub removed: Vec<String>,
}

/// A reload refused: the old configuration stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file does not read or validate (names the field).
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// The registry failed part-way (what was applied stays applied).
    #[error("registry")]
    Registry(#[from] RegistryError),
}

/// A command refused.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// No such VM.
    #[error("no VM {0}")]
    NotFound(String),
    /// A VM with this id exists.
    #[error("VM {0} exists")]
    Exists(String),
    /// The spec is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The registry failed.
    #[error("registry")]
    Registry(#[from] RegistryError),
}

/// Why the supervisor could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The registry.
    #[error("registry")]
    Registry(#[from] RegistryError),
    /// The health checker.
    #[error("health checker")]
    Health(#[source] keel_health::HealthError),
    /// A setting the core refused (names the variable: exit 64).
    #[error("invalid setting")]
    Config(#[from] keel_core::ConfigError),
}

/// Knobs for tests and the load program.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Health checker seed (first-check jitter).
    pub seed: Option<u64>,
    /// How often an adopted process is looked up in `/proc` when the kernel
    /// gives no pidfd (default [`process::ADOPTED_POLL`]).
    pub adopted_poll: Option<Duration>,
}

#[derive(Debug, Default)]
struct ConfigState {
    error: Option<String>,
}

impl Inner {
    /// Finds the running processes that look like VMs (their program is a
    /// configured VM's `command`) but are none of the registry's live
    /// processes. With `UNKNOWN_PROCESSES=adopt`, one whose whole command
    /// line is a registered VM's, that VM having no live process, becomes
    /// that VM's process (recorded, then adopted as after a restart);
    /// every other one is reported and never signalled.
    async fn scan_unknown(&self, mut records: Vec<VmRecord>) -> Result<Vec<VmRecord>, StartError> {
        let live = |r: &VmRecord| match (r.pid, r.start_time) {
            (Some(pid), Some(start_time)) => {
                Identity { pid, start_time }.liveness() == Liveness::Alive
            }
            _ => false,
        };
        let mut known: std::collections::BTreeSet<u32> = records
            .iter()
            .filter(|r| live(r))
            .filter_map(|r| r.pid)
            .collect();
        let programs: std::collections::BTreeSet<String> = records
            .iter()
            .map(|r| r.spec.command.to_string_lossy().into_owned())
            .collect();
        let own = std::process::id();
        let mut unknown = Vec::new();
        for pid in process::pids() {
            if pid == own || known.contains(&pid) {
                continue;
            }
            let Some(cmdline) = process::cmdline(pid) else {
                continue;
            };
            if !programs.contains(&cmdline[0]) {
                continue;
            }
            let Some((state, start_time)) = process::stat(pid) else {
                continue;
            };
            if state == 'Z' || state == 'X' {
                continue;
            }
            let matching = records
                .iter()
                .position(|r| r.spec.command_line() == cmdline);
            let adopt = self.settings.unknown_processes == crate::config::UnknownProcesses::Adopt
                && matching
                    .is_some_and(|i| !live(&records[i]) && records[i].desired == Desired::Running);
            if adopt && let Some(i) = matching {
                let record = &mut records[i];
                self.registry
                    .set_process(&record.spec.id, Some((pid, start_time, &cmdline)))
                    .await?;
                record.pid = Some(pid);
                record.start_time = Some(start_time);
                record.cmdline = Some(cmdline);
                known.insert(pid);
                tracing::info!(vm_id = %record.spec.id, pid, "adopting a running process the registry did not know (UNKNOWN_PROCESSES=adopt)");
                continue;
            }
            let matches_vm = matching.map(|i| records[i].spec.id.clone());
            tracing::warn!(
                pid,
                cmdline = %cmdline.join(" "),
                matches_vm = matches_vm.as_deref().unwrap_or(""),
                "a process looks like a VM but the registry does not know it: left alone"
            );
            unknown.push(UnknownProcess {
                pid,
                cmdline,
                matches_vm,
            });
        }
        self.metrics.set_unknown_processes(unknown.len());
        *self.unknown.lock() = unknown;
        Ok(records)
    }
}

struct Inner {
    settings: Settings,
    adopted_poll: Duration,
    registry: Registry,
    checker: HealthChecker,
    metrics: Metrics,
    alerts: Alerts,
    bulkhead: Bulkhead,
    vms: Mutex<BTreeMap<String, Handle>>,
    /// Recovery suspended: by the fleet short-circuit or an operator's drain
    /// (what the VM tasks watch).
    fleet_blocked: watch::Sender<bool>,
    /// The short-circuit's own verdict (alerted on change).
    short_circuit: AtomicBool,
    /// An operator drained the host: nothing is recovered until undrained.
    drained: AtomicBool,
    /// Automatic recovery enabled (an operator's switch).
    recovery: AtomicBool,
    /// Health checks enabled (an operator's switch; the VM tasks watch it).
    health_checks: watch::Sender<bool>,
    /// One reload at a time.
    reload_lock: tokio::sync::Mutex<()>,
    /// The last reload's verdict.
    config: Mutex<ConfigState>,
    /// VM-looking processes the registry did not know at start (left
    /// alone).
    unknown: Mutex<Vec<UnknownProcess>>,
    token: CancellationToken,
    tasks: TaskTracker,
}

/// The running supervisor (cheap to clone).
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("vms", &self.inner.vms.lock().len())
            .finish()
    }
}

/// Identity check against the registry's process: alive with the recorded
/// start time (through its pidfd when it has one: a `poll`, cheaper than
/// reading `/proc`). Never signals.
#[derive(Debug)]
struct IdentityProbe {
    process: Running,
    name: String,
}

impl Probe for IdentityProbe {
    async fn check(&self) -> ProbeResult {
        let identity = self.process.identity;
        match self.process.liveness() {
            Liveness::Alive => Ok(()),
            Liveness::Dead => Err(ProbeFailure::new(
                FailureKind::NotRunning,
                format!("process {} is gone", identity.pid),
            )),
            Liveness::Mismatch => Err(ProbeFailure::new(
                FailureKind::NotRunning,
                format!("pid {} is another process now", identity.pid),
            )),
        }
    }

    fn name(&self) -> &str {
        &self.name
    }
}

impl Supervisor {
    /// Opens the registry, registers `vms` (from `SUPERVISOR_CONFIG`) in it
    /// and starts one task per registered VM: a VM whose recorded process
    /// still runs (same pid, same start time) is adopted, the others are
    /// started or recovered.
    ///
    /// # Errors
    /// [`StartError`]: the registry, the health checker, the bulkhead's
    /// configuration.
    pub async fn start(
        settings: Settings,
        vms: Vec<VmSpec>,
        metrics: Metrics,
        health_metrics: HealthMetrics,
        alerts: Alerts,
        options: Options,
    ) -> Result<Supervisor, StartError> {
        let registry = Registry::open(&settings.database_url, settings.attempts_kept).await?;
        for spec in &vms {
            registry.upsert(spec, "file").await?;
        }
        let mut builder = HealthChecker::builder().metrics(health_metrics);
        if let Some(seed) = options.seed {
            builder = builder.seed(seed);
        }
        let checker = builder.build().map_err(StartError::Health)?;
        let bulkhead = Bulkhead::builder("recoveries")
            .max_concurrent(settings.max_concurrent_recoveries)
            .queue(10_000)
            .build()
            .map_err(|e| keel_core::ConfigError::new("MAX_CONCURRENT_RECOVERIES", e.to_string()))?;
        let (fleet_blocked, _) = watch::channel(false);
        let (health_checks, _) = watch::channel(true);
        let file_ids: std::collections::BTreeSet<String> =
            vms.iter().map(|v| v.id.clone()).collect();
        let inner = Arc::new(Inner {
            settings,
            adopted_poll: options.adopted_poll.unwrap_or(process::ADOPTED_POLL),
            registry,
            checker,
            metrics,
            alerts,
            bulkhead,
            vms: Mutex::new(BTreeMap::new()),
            fleet_blocked,
            short_circuit: AtomicBool::new(false),
            drained: AtomicBool::new(false),
            recovery: AtomicBool::new(true),
            health_checks,
            reload_lock: tokio::sync::Mutex::new(()),
            config: Mutex::new(ConfigState::default()),
            unknown: Mutex::new(Vec::new()),
            token: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        let weak = Arc::downgrade(&inner);
        inner.checker.on_change(move |event| {
            let Some(inner) = weak.upgrade() else { return };
            let vms = inner.vms.lock();
            if let Some(h) = vms.get(event.target.as_str()) {
                let _ = h.tx.send(Cmd::Health(
                    event.new,
                    event.reason.failure().cloned(),
                    event.at,
                ));
            }
        });
        inner.metrics.started();
        let records = inner.registry.load().await?;
        let records = inner.scan_unknown(records).await?;
        for record in records {
            spawn_vm(&inner, record);
        }
        inner.update_fleet();
        let supervisor = Supervisor { inner };
        // The file is the truth for its VMs: one that left it while the
        // supervisor was down goes now, as at a reload.
        let removed = supervisor.remove_absent(&file_ids).await;
        if !removed.is_empty() {
            tracing::info!(?removed, "vms no longer in SUPERVISOR_CONFIG deregistered");
        }
        Ok(supervisor)
    }

    /// Deregisters (stopping their process groups) the VMs from the file
    /// whose ids are not in `keep`.
    async fn remove_absent(&self, keep: &std::collections::BTreeSet<String>) -> Vec<String> {
        let gone: Vec<String> = self
            .inner
            .vms
            .lock()
            .iter()
            .filter(|(id, h)| h.source == "file" && !keep.contains(*id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            let _ = self.delete(id).await;
        }
        gone
    }

    /// Re-reads `SUPERVISOR_CONFIG` (SIGHUP, `POST /reload`): VMs new to
    /// the file are registered and started; VMs of the file that left it
    /// are deregistered and their process groups stopped (as `DELETE`);
    /// a changed VM gets its new spec at its next recovery (its process
    /// runs on). VMs added through the API are left alone. An invalid file
    /// is refused, the old configuration stays, and `GET /status` and
    /// `vm_supervisor_config_last_reload_success` say so.
    ///
    /// # Errors
    /// [`ReloadError::Invalid`] naming the file's field (nothing changed);
    /// [`ReloadError::Registry`].
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let _one = self.inner.reload_lock.lock().await;
        let result = self.apply_file().await;
        let error = result.as_ref().err().map(|e| match e {
            ReloadError::Invalid(c) => c.to_string(),
            ReloadError::Registry(r) => match std::error::Error::source(r) {
                Some(cause) => format!("{r}: {cause}"),
                None => r.to_string(),
            },
        });
        self.inner.metrics.reload(error.is_none());
        match (&result, &error) {
            (Ok(report), _) => tracing::info!(
                added = ?report.added,
                changed = ?report.changed,
                removed = ?report.removed,
                "SUPERVISOR_CONFIG reloaded"
            ),
            (Err(_), Some(e)) => {
                tracing::error!(error = %e, "SUPERVISOR_CONFIG reload refused; old configuration kept");
            }
            (Err(_), None) => {}
        }
        self.inner.config.lock().error = error;
        result
    }

    async fn apply_file(&self) -> Result<ReloadReport, ReloadError> {
        let path = &self.inner.settings.supervisor_config;
        let file = crate::config::load_file(path)?;
        {
            let vms = self.inner.vms.lock();
            for (i, spec) in file.vms.iter().enumerate() {
                let socket = spec.socket_path();
                if let Some((other, _)) = vms
                    .iter()
                    .find(|(id, h)| h.source != "file" && **id != spec.id && h.socket == socket)
                {
                    return Err(ConfigError::new(
                        "SUPERVISOR_CONFIG",
                        format!(
                            "{}: vms[{i}].socket: {} is {other}'s socket (added through the API)",
                            path.display(),
                            socket.display()
                        ),
                    )
                    .into());
                }
            }
        }
        let keep = file.vms.iter().map(|v| v.id.clone()).collect();
        let mut report = ReloadReport {
            removed: self.remove_absent(&keep).await,
            ..ReloadReport::default()
        };
        for spec in file.vms {
            let known = self.inner.vms.lock().get(&spec.id).map(|h| h.spec == spec);
            match known {
                Some(true) => {}
                Some(false) => {
                    self.inner.registry.upsert(&spec, "file").await?;
                    let mut vms = self.inner.vms.lock();
                    if let Some(h) = vms.get_mut(&spec.id) {
                        h.socket = spec.socket_path();
                        h.spec = spec.clone();
                        let _ = h.tx.send(Cmd::Update(Box::new(spec.clone())));
                    }
                    report.changed.push(spec.id);
                }
                None => {
                    self.inner.registry.upsert(&spec, "file").await?;
                    let id = spec.id.clone();
                    spawn_vm(
                        &self.inner,
                        VmRecord {
                            spec,
                            source: "file".into(),
                            pid: None,
                            start_time: None,
                            desired: Desired::Running,
                            restarts: 0,
                            last_reason: None,
                            cmdline: None,
                        },
                    );
                    report.added.push(id);
                }
            }
        }
        self.inner.update_fleet();
        Ok(report)
    }

    /// Turns health checks on or off for every VM. Off: no probe runs (a
    /// process's exit is still seen at once, and recovered if recovery is
    /// on); on again: each VM with a process is checked anew.
    pub fn set_health_checks(&self, on: bool) {
        if *self.inner.health_checks.borrow() != on {
            tracing::warn!(health_checks = on, "operator switched health checks");
            self.inner.health_checks.send_replace(on);
            self.inner
                .metrics
                .switches(on, self.inner.recovery.load(Ordering::SeqCst));
        }
    }

    /// Whether health checks are on.
    pub fn health_checks(&self) -> bool {
        *self.inner.health_checks.borrow()
    }

    /// Turns automatic recovery on or off (manual `recover` still acts).
    pub fn set_recovery(&self, on: bool) {
        if self.inner.recovery.swap(on, Ordering::SeqCst) != on {
            tracing::warn!(recovery = on, "operator switched automatic recovery");
            self.inner.metrics.switches(self.health_checks(), on);
            self.inner.update_fleet();
        }
    }

    /// Whether automatic recovery is on.
    pub fn recovery(&self) -> bool {
        self.inner.recovery.load(Ordering::SeqCst)
    }

    /// The subsystems' switches and the configuration's state.
    pub fn status(&self) -> Status {
        let drained = self.drained();
        let short_circuited = self.short_circuited();
        let recovery = self.recovery();
        let config_error = self.inner.config.lock().error.clone();
        Status {
            drained,
            short_circuited,
            recovering: recovery && !drained && !short_circuited,
            health_checks: self.health_checks(),
            recovery,
            config_ok: config_error.is_none(),
            config_error,
            vms: self.inner.vms.lock().len(),
            unknown_processes: self.inner.unknown.lock().clone(),
        }
    }

    /// Every VM's view, by id.
    pub fn list(&self) -> Vec<VmView> {
        let vms = self.inner.vms.lock();
        vms.values().map(|h| view_now(&h.view)).collect()
    }

    /// One VM's view.
    pub fn get(&self, id: &str) -> Option<VmView> {
        self.inner.vms.lock().get(id).map(|h| view_now(&h.view))
    }

    /// What the health checker knows of `id` (none while it has no
    /// process, or before its API first answered).
    pub fn health(&self, id: &str) -> Option<keel_health::TargetStatus> {
        self.inner.checker.status(id)
    }

    /// The journal of `id`, newest first.
    ///
    /// # Errors
    /// The registry's.
    pub async fn attempts(&self, id: &str) -> Result<Vec<Attempt>, RegistryError> {
        self.inner
            .registry
            .attempts(id, self.inner.settings.attempts_kept)
            .await
    }

    fn command(&self, id: &str, cmd: Cmd) -> Result<(), CommandError> {
        let vms = self.inner.vms.lock();
        let h = vms
            .get(id)
            .ok_or_else(|| CommandError::NotFound(id.to_owned()))?;
        h.tx.send(cmd)
            .map_err(|_| CommandError::NotFound(id.to_owned()))
    }

    /// Recovers `id` now (stop, start, API, start calls), whatever its
    /// state and attempt count; also resumes a paused VM.
    ///
    /// # Errors
    /// [`CommandError::NotFound`].
    pub fn recover(&self, id: &str) -> Result<(), CommandError> {
        self.command(id, Cmd::Recover)
    }

    /// Stops acting on `id`'s failures (it is still checked).
    ///
    /// # Errors
    /// [`CommandError::NotFound`].
    pub fn pause(&self, id: &str) -> Result<(), CommandError> {
        self.command(id, Cmd::Pause)
    }

    /// Acts on `id`'s failures again.
    ///
    /// # Errors
    /// [`CommandError::NotFound`].
    pub fn resume(&self, id: &str) -> Result<(), CommandError> {
        self.command(id, Cmd::Resume)
    }

    /// Registers and starts a new VM.
    ///
    /// # Errors
    /// [`CommandError::Invalid`], [`CommandError::Exists`], the registry's.
    pub async fn add(&self, spec: VmSpec) -> Result<(), CommandError> {
        spec.validate("vm")
            .map_err(|e| CommandError::Invalid(e.to_string()))?;
        {
            let vms = self.inner.vms.lock();
            if vms.contains_key(&spec.id) {
                return Err(CommandError::Exists(spec.id));
            }
            let socket = spec.socket_path();
            if let Some((other, _)) = vms.iter().find(|(_, h)| h.socket == socket) {
                return Err(CommandError::Invalid(format!(
                    "vm.socket: {} is {other}'s socket",
                    socket.display()
                )));
            }
        }
        self.inner.registry.upsert(&spec, "api").await?;
        let record = VmRecord {
            spec,
            source: "api".into(),
            pid: None,
            start_time: None,
            desired: Desired::Running,
            restarts: 0,
            last_reason: None,
            cmdline: None,
        };
        spawn_vm(&self.inner, record);
        self.inner.update_fleet();
        Ok(())
    }

    /// Stops `id`'s process group, forgets it and its journal.
    ///
    /// # Errors
    /// [`CommandError::NotFound`].
    pub async fn delete(&self, id: &str) -> Result<(), CommandError> {
        let (tx, rx) = oneshot::channel();
        self.command(id, Cmd::Delete(tx))?;
        let _ = rx.await;
        Ok(())
    }

    /// Whether recovery is suspended by the fleet short-circuit.
    pub fn short_circuited(&self) -> bool {
        self.inner.short_circuit.load(Ordering::SeqCst)
    }

    /// Drains the host for maintenance (`true`): no VM is recovered (health
    /// checks go on and are reported) until drained is set back to `false`.
    /// Recovery is suspended while either this or the fleet short-circuit
    /// holds.
    pub fn set_drained(&self, drained: bool) {
        if self.inner.drained.swap(drained, Ordering::SeqCst) != drained {
            tracing::warn!(drained, "operator changed host drain");
            self.inner.update_fleet();
        }
    }

    /// Whether an operator drained the host.
    pub fn drained(&self) -> bool {
        self.inner.drained.load(Ordering::SeqCst)
    }

    /// Stops supervising: every VM task ends, **the VMs keep running**
    /// (the registry has their pids for adoption), health checks stop.
    pub async fn shutdown(&self, budget: Duration) -> bool {
        self.inner.token.cancel();
        self.inner.tasks.close();
        let done = tokio::time::timeout(budget, self.inner.tasks.wait())
            .await
            .is_ok();
        self.inner.checker.shutdown().await;
        self.inner.registry.close().await;
        done
    }
}

fn view_now(view: &Mutex<VmView>) -> VmView {
    let mut v = view.lock().clone();
    // The start instant outlives the process (the stable-period rule reads
    // it); uptime is only shown while a process runs.
    v.uptime_s = v
        .started
        .filter(|_| v.pid.is_some())
        .map(|s| s.elapsed().as_secs());
    v
}

impl Inner {
    /// Recounts the fleet, sets the gauges and the short-circuit: recovery
    /// stops when at least 2 VMs and more than `MAX_UNHEALTHY_PERCENT` of
    /// the supervised ones (paused and stopped ones aside) are unhealthy.
    fn update_fleet(&self) {
        let (mut total, mut healthy, mut unhealthy) = (0usize, 0usize, 0usize);
        for h in self.vms.lock().values() {
            let v = h.view.lock();
            if matches!(v.state, VmState::Paused | VmState::Stopped) {
                continue;
            }
            total += 1;
            if v.failing {
                unhealthy += 1;
            } else if v.state == VmState::Running && v.healthy {
                healthy += 1;
            }
        }
        let pct = self.settings.max_unhealthy_percent as usize;
        let blocked = unhealthy >= 2 && unhealthy * 100 > pct * total;
        self.metrics.fleet(healthy, unhealthy, blocked);
        if self.short_circuit.swap(blocked, Ordering::SeqCst) != blocked {
            if blocked {
                self.alerts.host_problem(unhealthy, total);
            } else {
                self.alerts.host_ok(unhealthy, total);
            }
        }
        let suspended =
            blocked || self.drained.load(Ordering::SeqCst) || !self.recovery.load(Ordering::SeqCst);
        if *self.fleet_blocked.borrow() != suspended {
            self.fleet_blocked.send_replace(suspended);
        }
    }
}

fn spawn_vm(inner: &Arc<Inner>, record: VmRecord) {
    if inner.token.is_cancelled() {
        return;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let view = Arc::new(Mutex::new(VmView {
        id: record.spec.id.clone(),
        state: VmState::Starting,
        healthy: false,
        pid: None,
        uptime_s: None,
        restarts: record.restarts,
        last_reason: record.last_reason.clone(),
        started: None,
        failing: false,
    }));
    inner.vms.lock().insert(
        record.spec.id.clone(),
        Handle {
            tx,
            view: view.clone(),
            socket: record.spec.socket_path(),
            spec: record.spec.clone(),
            source: record.source.clone(),
        },
    );
    let task = VmTask {
        inner: inner.clone(),
        timings: inner.settings.timings.with(&record.spec.overrides),
        spec: record.spec.clone(),
        view,
        rx,
        fleet: inner.fleet_blocked.subscribe(),
        health_on: inner.health_checks.subscribe(),
        next_spec: None,
        current: None,
        desired: record.desired,
        phase: Phase::Up,
        attempts: 0,
        health_since: Instant::now(),
    };
    inner.tasks.spawn(task.run(record));
}

/// Where a VM is in its cycle.
#[derive(Debug, Clone)]
enum Phase {
    /// Running (or being watched) with nothing to do.
    Up,
    /// Needs a recovery attempt at `at` (subject to the fleet gate).
    Due {
        reason: Reason,
        exit: Option<ExitStatus>,
        at: Instant,
    },
    /// Out of attempts; a late recovery at `late` if enabled.
    Intervention { late: Option<Instant> },
    /// Stopped on purpose; waits for an operator.
    Stopped,
}

struct VmTask {
    inner: Arc<Inner>,
    timings: Timings,
    spec: VmSpec,
    view: Arc<Mutex<VmView>>,
    rx: mpsc::UnboundedReceiver<Cmd>,
    fleet: watch::Receiver<bool>,
    /// Health checks switched on (by an operator).
    health_on: watch::Receiver<bool>,
    /// A spec from a reload, for the next recovery.
    next_spec: Option<VmSpec>,
    current: Option<Running>,
    desired: Desired,
    phase: Phase,
    /// Attempts in the current run of failures (reset after a stable period
    /// or by an operator).
    attempts: u32,
    /// Health events older than this are about a previous process.
    health_since: Instant,
}

async fn exited(current: &mut Option<Running>) -> ExitStatus {
    match current {
        Some(r) => r.wait().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl VmTask {
    fn id(&self) -> &str {
        &self.spec.id
    }

    fn set_state(&self, state: VmState) {
        self.view.lock().state = state;
        self.inner.update_fleet();
    }

    /// The state that shows for the current phase and desired state.
    fn show(&self) {
        let state = match (&self.phase, self.desired) {
            (Phase::Stopped, _) => VmState::Stopped,
            (_, Desired::Stopped) => VmState::Stopped,
            (_, Desired::Paused) => VmState::Paused,
            (Phase::Up, _) => VmState::Running,
            (Phase::Due { .. }, _) => VmState::Unhealthy,
            (Phase::Intervention { .. }, _) => VmState::NeedsIntervention,
        };
        self.set_state(state);
    }

    async fn run(mut self, record: VmRecord) {
        let identity = match (record.pid, record.start_time) {
            (Some(pid), Some(start_time)) => Some(Identity { pid, start_time }),
            _ => None,
        };
        let now = Instant::now();
        if self.desired == Desired::Stopped {
            self.phase = Phase::Stopped;
        } else {
            // pid, start time and command line must all match: a process
            // that exec'd another program under the same pid is not ours.
            let liveness = |i: Identity| match i.liveness() {
                Liveness::Alive => match (&record.cmdline, process::cmdline(i.pid)) {
                    (Some(recorded), Some(now)) if *recorded != now => Liveness::Mismatch,
                    _ => Liveness::Alive,
                },
                other => other,
            };
            match identity.map(|i| (i, liveness(i))) {
                Some((identity, Liveness::Alive)) => {
                    tracing::info!(vm_id = self.id(), pid = identity.pid, "adopted running vm");
                    self.inner.metrics.adopted();
                    self.watch(process::adopt(identity, self.inner.adopted_poll));
                    self.view.lock().healthy = true;
                }
                Some((identity, Liveness::Mismatch)) => {
                    tracing::warn!(
                        vm_id = self.id(),
                        pid = identity.pid,
                        "recorded pid belongs to another process: not adopted, not signalled"
                    );
                    self.fail(
                        Reason::ProcessMismatch,
                        None,
                        "pid reused by another process",
                    );
                }
                Some((_, Liveness::Dead)) => {
                    self.fail(Reason::ProcessDead, None, "process gone while unsupervised");
                }
                None => {
                    self.phase = Phase::Due {
                        reason: Reason::InitialStart,
                        exit: None,
                        at: now,
                    };
                }
            }
        }
        self.show();
        let token = self.inner.token.clone();
        loop {
            let blocked = *self.fleet.borrow_and_update();
            let wake = match &self.phase {
                _ if self.desired != Desired::Running => None,
                Phase::Due { reason, at, .. } if !blocked || *reason == Reason::InitialStart => {
                    Some(*at)
                }
                Phase::Intervention { late } if !blocked => *late,
                _ => None,
            };
            tokio::select! {
                biased;
                () = token.cancelled() => return,
                status = exited(&mut self.current) => self.on_exit(status).await,
                cmd = self.rx.recv() => match cmd {
                    None => return,
                    Some(Cmd::Delete(reply)) => {
                        self.delete().await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(cmd) => self.on_command(cmd).await,
                },
                () = sleep_until(wake) => self.attempt(&token).await,
                _ = self.fleet.changed() => {}
                Ok(()) = self.health_on.changed() => self.switch_health(),
            }
        }
    }

    fn watch(&mut self, running: Running) {
        let identity = running.identity;
        self.current = Some(running);
        {
            let mut v = self.view.lock();
            v.pid = Some(identity.pid);
            v.started = Some(Instant::now());
        }
        self.add_health();
    }

    /// Health checks switched on or off by an operator.
    fn switch_health(&mut self) {
        if *self.health_on.borrow_and_update() {
            self.add_health();
        } else {
            let _ = self.inner.checker.remove(self.id());
        }
    }

    /// (Re)starts health checks of the current process, if any and if
    /// health checks are on.
    fn add_health(&mut self) {
        let _ = self.inner.checker.remove(self.id());
        self.health_since = Instant::now();
        let Some(process) = self.current.clone() else {
            return;
        };
        if !*self.health_on.borrow() {
            return;
        }
        let identity = process.identity;
        let socket = self.spec.socket_path();
        let probe = all_of([
            SocketFileProbe::new(&socket).boxed(),
            IdentityProbe {
                process,
                name: format!("process {}", identity.pid),
            }
            .boxed(),
            UnixHttpProbe::new(&socket).boxed(),
        ]);
        let t = &self.timings;
        let config = CheckConfig::builder()
            .interval(t.health_interval)
            .timeout(t.health_timeout)
            .failure_threshold(t.failure_threshold)
            .recovery_threshold(t.recovery_threshold)
            .jitter_first_check(false)
            .build();
        match config {
            Ok(config) => {
                if let Err(e) = self.inner.checker.add(self.id().to_owned(), probe, config) {
                    tracing::warn!(vm_id = self.id(), error = %e, "health checks not started");
                }
            }
            Err(e) => tracing::warn!(vm_id = self.id(), error = %e, "bad health timings"),
        }
    }

    /// Records a failure and schedules its recovery.
    fn policy(&self) -> Policy {
        Policy {
            timings: self.timings,
            max_retries: self.inner.settings.max_retries,
            late_recovery: self.inner.settings.late_recovery_interval,
        }
    }

    /// Applies `step`: schedules the next attempt, or enters
    /// `needs_intervention` with a critical alert.
    fn schedule(&mut self, step: Step, reason: Reason, exit: Option<ExitStatus>, error: &str) {
        self.view.lock().failing = true;
        self.phase = match step {
            Step::RecoverAt(at) => Phase::Due { reason, exit, at },
            Step::Intervention { late } => {
                if !matches!(self.phase, Phase::Intervention { .. }) {
                    self.inner
                        .alerts
                        .needs_intervention(self.id(), self.attempts, error);
                }
                Phase::Intervention { late }
            }
        };
    }

    /// Records a failure and schedules its recovery.
    fn fail(&mut self, reason: Reason, exit: Option<ExitStatus>, detail: &str) {
        let now = Instant::now();
        let started = self.view.lock().started;
        self.attempts = self.policy().carried(self.attempts, started, now);
        {
            let mut v = self.view.lock();
            v.healthy = false;
            v.failing = true;
            v.last_reason = Some(reason.as_str().to_owned());
        }
        if reason.is_orphan() {
            self.inner.metrics.orphaned(reason.as_str());
            self.inner.alerts.orphaned(self.id(), reason, detail);
        }
        let step = self.policy().next(self.attempts, now);
        self.schedule(step, reason, exit, detail);
    }

    async fn on_exit(&mut self, status: ExitStatus) {
        let pid = self.current.take().map(|r| r.identity.pid);
        let _ = self.inner.checker.remove(self.id());
        self.view.lock().pid = None;
        tracing::warn!(vm_id = self.id(), pid, %status, "vm process exited");
        if let ExitStatus::Code(code) = status
            && self.spec.no_restart_exit_codes.contains(&code)
        {
            self.desired = Desired::Stopped;
            self.phase = Phase::Stopped;
            {
                let mut v = self.view.lock();
                v.healthy = false;
                v.failing = false;
            }
            let _ = self
                .inner
                .registry
                .set_desired(self.id(), Desired::Stopped)
                .await;
            let _ = self.inner.registry.set_process(self.id(), None).await;
            self.inner.alerts.stopped(self.id(), &status.to_string());
            self.show();
            return;
        }
        if matches!(self.phase, Phase::Up) {
            self.fail(Reason::ProcessDead, Some(status), &status.to_string());
        }
        self.show();
    }

    async fn on_command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Health(state, failure, at) => {
                if at < self.health_since || self.current.is_none() {
                    return;
                }
                match state {
                    HealthState::Unhealthy => {
                        self.view.lock().healthy = false;
                        if matches!(self.phase, Phase::Up) {
                            let failure =
                                failure.unwrap_or_else(|| ProbeFailure::custom("unhealthy"));
                            let identity = self.current.as_ref().map(|r| r.identity);
                            let reason = Reason::of_failure(&failure, identity);
                            self.fail(reason, None, &failure.to_string());
                        }
                    }
                    HealthState::Healthy => {
                        self.view.lock().healthy = true;
                        // Recovered on its own (RECOVERY_THRESHOLD successes)
                        // before its recovery ran: nothing to do.
                        if let Phase::Due { reason, .. } = self.phase
                            && reason != Reason::InitialStart
                        {
                            tracing::info!(vm_id = self.id(), "vm healthy again before recovery");
                            self.phase = Phase::Up;
                            self.view.lock().failing = false;
                        }
                    }
                    HealthState::Unknown => {}
                }
                self.show();
            }
            Cmd::Recover => {
                self.attempts = 0;
                if self.desired != Desired::Running {
                    self.desired = Desired::Running;
                    let _ = self
                        .inner
                        .registry
                        .set_desired(self.id(), Desired::Running)
                        .await;
                }
                self.phase = Phase::Due {
                    reason: Reason::Manual,
                    exit: None,
                    at: Instant::now(),
                };
                let token = self.inner.token.clone();
                self.attempt(&token).await;
            }
            Cmd::Pause => {
                self.desired = Desired::Paused;
                let _ = self
                    .inner
                    .registry
                    .set_desired(self.id(), Desired::Paused)
                    .await;
                self.show();
            }
            Cmd::Resume => {
                self.desired = Desired::Running;
                let _ = self
                    .inner
                    .registry
                    .set_desired(self.id(), Desired::Running)
                    .await;
                if self.current.is_none() && matches!(self.phase, Phase::Up | Phase::Stopped) {
                    self.fail(Reason::ProcessDead, None, "no process at resume");
                }
                self.show();
            }
            Cmd::Update(spec) => {
                tracing::info!(vm_id = self.id(), "new spec: used from the next recovery");
                self.next_spec = Some(*spec);
            }
            Cmd::Delete(_) => {}
        }
    }

    async fn delete(&mut self) {
        let _ = self.inner.checker.remove(self.id());
        if let Some(mut r) = self.current.take() {
            process::stop(&mut r, self.timings.stop_grace).await;
        }
        let _ = process::remove_socket(&self.spec.socket_path());
        if let Err(e) = self.inner.registry.delete(self.id()).await {
            tracing::warn!(vm_id = self.id(), error = %e, "registry delete failed");
        }
        self.inner.vms.lock().remove(self.id());
        self.inner.update_fleet();
        tracing::info!(vm_id = self.id(), "vm deleted");
    }

    /// One recovery attempt, through the recoveries bulkhead. Its journal
    /// row is closed *before* the VM's state leaves `starting`/`recovering`:
    /// whoever sees the new state finds the attempt's outcome recorded (the
    /// reverse does not hold: a closed row can show for a moment while the
    /// state is still `recovering`).
    async fn attempt(&mut self, token: &CancellationToken) {
        let (reason, exit) = match &self.phase {
            Phase::Due { reason, exit, .. } => (*reason, *exit),
            Phase::Intervention { .. } => (Reason::LateRecovery, None),
            _ => return,
        };
        let priority = match reason {
            Reason::Manual => Priority::Critical,
            Reason::LateRecovery => Priority::Low,
            _ => Priority::Normal,
        };
        let permit = tokio::select! {
            () = token.cancelled() => return,
            p = self.inner.bulkhead.acquire(priority) => p,
        };
        let Ok(permit) = permit else {
            // Queue full: try again after the backoff.
            self.fail(reason, exit, "recovery queue full");
            return;
        };
        if reason != Reason::LateRecovery {
            self.attempts += 1;
        }
        let attempt_no = self.attempts;
        self.set_state(if reason == Reason::InitialStart {
            VmState::Starting
        } else {
            VmState::Recovering
        });
        tracing::info!(
            vm_id = self.id(),
            reason = reason.as_str(),
            attempt = attempt_no,
            "vm recovery started"
        );
        let exit_text = exit.map(|e| e.to_string());
        let journal = self
            .inner
            .registry
            .begin_attempt(self.id(), reason.as_str(), exit_text.as_deref())
            .await
            .ok();
        let started = Instant::now();
        let timeout = self.inner.settings.recovery_timeout;
        let result = tokio::select! {
            () = token.cancelled() => return,
            r = tokio::time::timeout(timeout, self.recreate()) => r,
        };
        drop(permit);
        let took = started.elapsed();
        let (outcome, error) = match result {
            Ok(Ok(())) => ("success", None),
            Ok(Err(e)) => ("failure", Some(e)),
            Err(_) => ("timeout", Some(format!("recovery took over {timeout:?}"))),
        };
        if outcome == "timeout"
            && let Some(mut r) = self.current.take()
        {
            process::stop(&mut r, self.timings.stop_grace).await;
        }
        if let Some(j) = journal {
            let _ = self
                .inner
                .registry
                .end_attempt(j, outcome, error.as_deref())
                .await;
        }
        if reason != Reason::InitialStart {
            self.inner.metrics.attempt(outcome, took);
        }
        match error {
            None => {
                if reason != Reason::InitialStart {
                    let _ = self
                        .inner
                        .registry
                        .count_restart(self.id(), reason.as_str())
                        .await;
                    {
                        let mut v = self.view.lock();
                        v.restarts += 1;
                        v.last_reason = Some(reason.as_str().to_owned());
                    }
                    self.inner.alerts.recovered(self.id(), attempt_no);
                } else {
                    // Start failures count (a bad command gets backoff and
                    // stops); recoveries count from a good start.
                    self.attempts = 0;
                }
                self.phase = Phase::Up;
                self.view.lock().failing = false;
            }
            Some(error) => {
                tracing::warn!(
                    vm_id = self.id(),
                    attempt = attempt_no,
                    error,
                    "vm recovery attempt failed"
                );
                let now = Instant::now();
                let step = if reason == Reason::LateRecovery {
                    self.policy().after_late(now)
                } else {
                    self.policy().next(self.attempts, now)
                };
                self.schedule(step, reason, exit, &error);
            }
        }
        self.show();
    }

    /// Stop leftovers, remove the socket, start, wait for the API, run the
    /// start calls, record the process.
    async fn recreate(&mut self) -> Result<(), String> {
        let _ = self.inner.checker.remove(self.id());
        if let Some(mut old) = self.current.take() {
            process::stop(&mut old, self.timings.stop_grace).await;
        }
        self.view.lock().pid = None;
        if let Some(spec) = self.next_spec.take() {
            if spec.socket_path() != self.spec.socket_path() {
                let _ = process::remove_socket(&self.spec.socket_path());
            }
            self.timings = self.inner.settings.timings.with(&spec.overrides);
            self.spec = spec;
        }
        let mut running = process::spawn(&self.spec)
            .map_err(|e| format!("start {}: {e}", self.spec.command.display()))?;
        let identity = running.identity;
        let line = self.spec.command_line();
        if let Err(e) = self
            .inner
            .registry
            .set_process(self.id(), Some((identity.pid, identity.start_time, &line)))
            .await
        {
            tracing::warn!(vm_id = self.id(), error = %e, "registry update failed");
        }
        self.view.lock().pid = Some(identity.pid);
        let socket = self.spec.socket_path();
        let ready = async {
            let deadline = Instant::now() + self.timings.start_timeout;
            let mut last = String::from("no answer yet");
            loop {
                if let Some(status) = *running.exited.borrow() {
                    return Err(format!("exited during start: {status}"));
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(format!(
                        "API did not answer within {:?}: {last}",
                        self.timings.start_timeout
                    ));
                }
                match api::request(
                    &socket,
                    "GET",
                    "/",
                    None,
                    left.min(self.timings.health_timeout),
                )
                .await
                {
                    Ok(s) if s.as_u16() < 500 => break,
                    Ok(s) => last = format!("GET / answered {s}"),
                    Err(e) => last = e,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            for call in &self.spec.start_calls {
                let left = deadline
                    .saturating_duration_since(Instant::now())
                    .max(self.timings.health_timeout);
                let status =
                    api::request(&socket, &call.method, &call.path, call.body.as_ref(), left)
                        .await?;
                if !status.is_success() {
                    return Err(format!("{} {} answered {status}", call.method, call.path));
                }
            }
            Ok(())
        };
        match ready.await {
            Ok(()) => {
                self.view.lock().healthy = true;
                self.watch(running);
                Ok(())
            }
            Err(e) => {
                process::stop(&mut running, self.timings.stop_grace).await;
                self.view.lock().pid = None;
                Err(e)
            }
        }
    }
}
