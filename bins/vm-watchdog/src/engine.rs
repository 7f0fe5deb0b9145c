//! The coordinator: one task per VM, added, removed and reconfigured from
//! `vms.yaml` without a restart, and the status board behind `/health`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use keel_core::Rng;
use keel_health::{BoxProbe, Probe, TcpProbe};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::alerts::Alerts;
use crate::api::{Api, RawApi};
use crate::control::{ControlError, CtlState, VmCtl, check_duration, wall};
use crate::metrics::Metrics;
use crate::schedule::Bounds;
use crate::status::VmStatus;
use crate::task::{Exit, Reconfigure, VmTask};
use crate::vms_yaml::{VmSpec, VmsFile};

/// Makes the probe of `host:port` (a TCP connect by default).
pub type Prober = Arc<dyn Fn(&str, u16) -> BoxProbe + Send + Sync>;

/// The default prober: a TCP connect closed with a reset (no `TIME_WAIT`
/// left behind by a probe every few seconds per VM).
pub fn tcp_prober() -> Prober {
    Arc::new(|host: &str, port: u16| TcpProbe::new(host, port).reset_on_close(true).boxed())
}

/// Consecutive failed port probes, with the API unable to confirm the
/// VM's status, before it is alerted as unreachable.
pub const DEFAULT_UNREACHABLE_AFTER: u32 = 3;

/// How long a VM may stay down after its alert before a reminder.
pub const DEFAULT_REMINDER_AFTER: Duration = Duration::from_secs(15 * 60);

/// Settings of the engine.
#[derive(Clone)]
pub struct EngineSettings {
    /// `MIN_CHECK_INTERVAL` / `MAX_CHECK_INTERVAL`.
    pub bounds: Bounds,
    /// Seed of the jitter RNG (`None`: from entropy).
    pub seed: Option<u64>,
    /// How long one port probe may take.
    pub probe_timeout: Duration,
    /// Makes port probes.
    pub prober: Prober,
    /// Consecutive failed port probes after which a VM whose status the
    /// API cannot confirm is alerted as unreachable (default 3).
    pub unreachable_after: u32,
    /// A VM still down this long after its alert gets a reminder with the
    /// start attempts made (and another each period after; default 15 min).
    pub reminder_after: Duration,
    /// Flap guard: a VM restarted this many times within
    /// [`flap_window`](Self::flap_window) is no longer restarted for
    /// [`flap_cool_off`](Self::flap_cool_off) and alerted as needing
    /// intervention (default 5).
    pub flap_restarts: u32,
    /// The flap guard's window (default 30 min).
    pub flap_window: Duration,
    /// How long a flapping VM is left alone (default 1 h).
    pub flap_cool_off: Duration,
    /// `STUCK_AFTER`: STARTING, PROVISIONING, RESTARTING or STOPPING for
    /// longer is a "stuck" warning (default 5 min; a VM's `stuck_after`
    /// overrides it).
    pub stuck_after: Duration,
    /// `UPDATING_STUCK_AFTER` (default 10 min; a VM's
    /// `updating_stuck_after` overrides it).
    pub updating_stuck_after: Duration,
}

impl std::fmt::Debug for EngineSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineSettings")
            .field("bounds", &self.bounds)
            .field("seed", &self.seed)
            .field("probe_timeout", &self.probe_timeout)
            .field("unreachable_after", &self.unreachable_after)
            .finish_non_exhaustive()
    }
}

impl EngineSettings {
    /// TCP probes, a probe timeout of `min(MIN_CHECK_INTERVAL, 3 s)`, an
    /// entropy-seeded RNG.
    pub fn new(bounds: Bounds) -> Self {
        EngineSettings {
            bounds,
            seed: None,
            probe_timeout: bounds.min.min(Duration::from_secs(3)),
            prober: tcp_prober(),
            unreachable_after: DEFAULT_UNREACHABLE_AFTER,
            reminder_after: DEFAULT_REMINDER_AFTER,
            flap_restarts: 5,
            flap_window: Duration::from_secs(30 * 60),
            flap_cool_off: Duration::from_secs(60 * 60),
            stuck_after: crate::status::TRANSITION_STUCK_AFTER,
            updating_stuck_after: crate::status::UPDATE_STUCK_AFTER,
        }
    }
}

/// One row of `/health`.
#[derive(Debug, Clone)]
struct Row {
    status: Option<VmStatus>,
    last_check: Option<chrono::DateTime<chrono::Utc>>,
    /// The last check got an answer: `status` is current, not only the
    /// last one known.
    confirmed: bool,
    next_check: Instant,
}

/// What every VM task last reported, for `/health`.
#[derive(Debug, Default)]
pub(crate) struct StatusBoard {
    rows: Mutex<BTreeMap<String, Row>>,
}

impl StatusBoard {
    pub(crate) fn update(&self, vm: &str, status: Option<VmStatus>, next_check: Instant) {
        let mut rows = self.rows.lock();
        match rows.get_mut(vm) {
            Some(row) => {
                row.status = status;
                row.next_check = next_check;
            }
            None => {
                rows.insert(
                    vm.to_owned(),
                    Row {
                        status,
                        last_check: None,
                        confirmed: false,
                        next_check,
                    },
                );
            }
        }
    }

    pub(crate) fn checked(&self, vm: &str) {
        if let Some(row) = self.rows.lock().get_mut(vm) {
            row.last_check = Some(chrono::Utc::now());
            row.confirmed = true;
        }
    }

    /// A check got no answer: the status shown is the last known one.
    pub(crate) fn unconfirmed(&self, vm: &str) {
        if let Some(row) = self.rows.lock().get_mut(vm) {
            row.confirmed = false;
        }
    }

    fn remove(&self, vm: &str) {
        self.rows.lock().remove(vm);
    }
}

/// What the tasks share.
pub(crate) struct Shared<R> {
    pub(crate) api: Api<R>,
    pub(crate) alerts: Alerts,
    pub(crate) metrics: Metrics,
    pub(crate) board: StatusBoard,
    pub(crate) rng: Rng,
    pub(crate) bounds: Bounds,
    pub(crate) probe_timeout: Duration,
    pub(crate) prober: Prober,
    pub(crate) unreachable_after: u32,
    pub(crate) reminder_after: Duration,
    pub(crate) flap: (u32, Duration, Duration),
    /// Global stuck thresholds: transitions, UPDATING.
    pub(crate) stuck: (Duration, Duration),
    /// Operator control per VM name.
    pub(crate) controls: Mutex<HashMap<String, Arc<VmCtl>>>,
    /// The start self-check could not reach Telegram and it has not
    /// answered since: alerts may not be deliverable.
    pub(crate) telegram_unverified: AtomicBool,
    /// Deliveries accepted when it was found unverified: one more proves
    /// Telegram reachable.
    pub(crate) sent_when_unverified: AtomicU64,
    pub(crate) config_valid: AtomicBool,
    pub(crate) delivering: AtomicBool,
    pub(crate) api_settings_deadline: Duration,
    pub(crate) live: AtomicUsize,
    tasks: Mutex<HashMap<String, Entry>>,
    retired: Mutex<Vec<JoinHandle<()>>>,
    next_id: AtomicU64,
}

struct Entry {
    id: u64,
    spec: VmSpec,
    folder: Option<String>,
    control: mpsc::Sender<Reconfigure>,
    cancel: CancellationToken,
    join: JoinHandle<()>,
}

/// What [`Engine::apply`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// VMs that got a new task.
    pub added: Vec<String>,
    /// VMs whose task was stopped.
    pub removed: Vec<String>,
    /// VMs whose task got new settings (probe target, folder) and kept its
    /// state, or was replaced because its API source changed.
    pub reconfigured: Vec<String>,
}

impl ApplyReport {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.reconfigured.is_empty()
    }
}

/// The coordinator: owns one task per configured VM.
pub struct Engine<R> {
    shared: Arc<Shared<R>>,
    cancel: CancellationToken,
    started: Instant,
}

impl<R> std::fmt::Debug for Engine<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("vms", &self.shared.tasks.lock().len())
            .field("live_tasks", &self.shared.live.load(Ordering::Acquire))
            .finish_non_exhaustive()
    }
}

impl<R: RawApi> Engine<R> {
    /// An engine with no VMs yet; call [`apply`](Self::apply). Must run
    /// inside a tokio runtime when VMs are applied.
    pub fn new(api: Api<R>, alerts: Alerts, metrics: Metrics, settings: EngineSettings) -> Self {
        let rng = settings.seed.map_or_else(Rng::from_entropy, Rng::with_seed);
        Engine {
            shared: Arc::new(Shared {
                api_settings_deadline: api.settings().deadline,
                api,
                alerts,
                metrics,
                board: StatusBoard::default(),
                rng,
                bounds: settings.bounds,
                probe_timeout: settings.probe_timeout,
                prober: settings.prober,
                unreachable_after: settings.unreachable_after.max(1),
                reminder_after: settings.reminder_after.max(Duration::from_secs(60)),
                flap: (
                    settings.flap_restarts.max(1),
                    settings.flap_window,
                    settings.flap_cool_off,
                ),
                stuck: (settings.stuck_after, settings.updating_stuck_after),
                controls: Mutex::new(HashMap::new()),
                telegram_unverified: AtomicBool::new(false),
                sent_when_unverified: AtomicU64::new(0),
                config_valid: AtomicBool::new(true),
                delivering: AtomicBool::new(true),
                live: AtomicUsize::new(0),
                tasks: Mutex::new(HashMap::new()),
                retired: Mutex::new(Vec::new()),
                next_id: AtomicU64::new(1),
            }),
            cancel: CancellationToken::new(),
            started: Instant::now(),
        }
    }

    /// The guarded API.
    pub fn api(&self) -> &Api<R> {
        &self.shared.api
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The alerts.
    pub fn alerts(&self) -> &Alerts {
        &self.shared.alerts
    }

    /// Records whether `vms.yaml` on disk is valid (`/health` is degraded
    /// while it is not) and, when a valid one was applied, when (Unix
    /// seconds).
    pub fn set_config_valid(&self, valid: bool, applied_at: Option<i64>) {
        self.shared.config_valid.store(valid, Ordering::Release);
        self.shared.metrics.config(valid, applied_at);
    }

    /// Whether alerts can reach Telegram now: every sink's circuit breaker
    /// is closed (a sink whose sends fail, or whose token or chat is
    /// rejected, opens it). Also sets the `telegram_up` gauge.
    pub fn alerts_deliverable(&self) -> bool {
        if self.shared.telegram_unverified.load(Ordering::Acquire)
            && self.shared.alerts.notifier().stats().sent
                > self.shared.sent_when_unverified.load(Ordering::Acquire)
        {
            tracing::info!("Telegram accepted a message: it is reachable");
            self.shared
                .telegram_unverified
                .store(false, Ordering::Release);
        }
        let up = self
            .shared
            .alerts
            .notifier()
            .breakers()
            .iter()
            .all(|b| b.state() == keel_breaker::State::Closed)
            && !self.shared.telegram_unverified.load(Ordering::Acquire);
        self.shared.metrics.telegram(up);
        up
    }

    /// Records whether Telegram could be reached by the self-check: while
    /// it could not (and has not answered since), alerts count as
    /// undeliverable (`telegram_up` 0, `/health` degraded).
    /// Until then (or until a message is accepted) no "Telegram failing"
    /// episode is raised for it: the program has not delivered yet.
    pub fn set_telegram_verified(&self, verified: bool) {
        if !verified {
            let sent = self.shared.alerts.notifier().stats().sent;
            self.shared
                .sent_when_unverified
                .store(sent, Ordering::Release);
            self.shared.delivering.store(false, Ordering::Release);
        }
        self.shared
            .telegram_unverified
            .store(!verified, Ordering::Release);
        self.alerts_deliverable();
    }

    /// Called periodically: follows Telegram's breaker, opening a
    /// "Telegram failing" episode when it stops delivering and ending it
    /// when it delivers again. Returns whether it delivers.
    pub fn watch_delivery(&self) -> bool {
        let up = self.alerts_deliverable();
        let was_up = self.shared.delivering.swap(up, Ordering::AcqRel);
        if was_up && !up {
            tracing::error!("alerts cannot be delivered to Telegram");
            self.shared.alerts.telegram_failing();
        } else if !was_up && up {
            tracing::info!("Telegram delivers again");
            self.shared.alerts.telegram_ok();
        }
        up
    }

    /// Makes the running tasks match `file`: new VMs get a task, VMs no
    /// longer listed lose theirs, changed VMs are reconfigured in place (or
    /// replaced when their API source changed). Unchanged VMs are not
    /// touched.
    pub fn apply(&self, file: &VmsFile) -> ApplyReport {
        let mut report = ApplyReport::default();
        if self.cancel.is_cancelled() {
            return report;
        }
        let shared = &self.shared;
        let mut tasks = shared.tasks.lock();
        let wanted: HashMap<&str, &VmSpec> =
            file.vms.iter().map(|v| (v.name.as_str(), v)).collect();
        let mut retired = Vec::new();
        let gone: Vec<String> = tasks
            .keys()
            .filter(|name| !wanted.contains_key(name.as_str()))
            .cloned()
            .collect();
        for name in gone {
            if let Some(entry) = tasks.remove(&name) {
                entry.cancel.cancel();
                retired.push(entry.join);
                report.removed.push(name);
            }
        }
        for name in &report.removed {
            shared.board.remove(name);
            shared.metrics.remove_vm(name);
            shared.controls.lock().remove(name);
        }
        for spec in &file.vms {
            shared.alerts.route(&spec.name, spec.topic_id);
        }
        for spec in &file.vms {
            let folder = match spec.source {
                crate::vms_yaml::VmSource::Instance { .. } => file.folder_id.clone(),
                crate::vms_yaml::VmSource::Proxy { .. } => None,
            };
            match tasks.get(&spec.name) {
                None => {
                    let entry = self.spawn(spec.clone(), folder);
                    tasks.insert(spec.name.clone(), entry);
                    report.added.push(spec.name.clone());
                }
                Some(entry) if entry.spec == *spec && entry.folder == folder => {}
                Some(entry) if entry.spec.source == spec.source => {
                    let update = Reconfigure {
                        spec: spec.clone(),
                        folder: folder.clone(),
                    };
                    if entry.control.try_send(update).is_ok() {
                        let entry = tasks.get_mut(&spec.name).expect("present");
                        entry.spec = spec.clone();
                        entry.folder = folder;
                    } else {
                        // The task is not keeping up with reloads: replace it.
                        let old = tasks.remove(&spec.name).expect("present");
                        old.cancel.cancel();
                        retired.push(old.join);
                        let entry = self.spawn(spec.clone(), folder);
                        tasks.insert(spec.name.clone(), entry);
                    }
                    report.reconfigured.push(spec.name.clone());
                }
                Some(_) => {
                    let old = tasks.remove(&spec.name).expect("present");
                    old.cancel.cancel();
                    retired.push(old.join);
                    let entry = self.spawn(spec.clone(), folder);
                    tasks.insert(spec.name.clone(), entry);
                    report.reconfigured.push(spec.name.clone());
                }
            }
        }
        drop(tasks);
        let mut all_retired = shared.retired.lock();
        all_retired.retain(|j| !j.is_finished());
        all_retired.extend(retired);
        if !report.removed.is_empty() {
            shared.api.retain_recent();
        }
        report
    }

    fn spawn(&self, spec: VmSpec, folder: Option<String>) -> Entry {
        let shared = self.shared.clone();
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let cancel = self.cancel.child_token();
        let (control, rx) = mpsc::channel(4);
        let ctl = shared
            .controls
            .lock()
            .entry(spec.name.clone())
            .or_default()
            .clone();
        let task = VmTask::new(spec.clone(), folder.clone(), shared.clone(), ctl);
        let name = spec.name.clone();
        let token = cancel.clone();
        let join = tokio::spawn(async move {
            let exit = task.run(rx, token).await;
            if exit == Exit::Gone {
                let mut tasks = shared.tasks.lock();
                if tasks.get(&name).is_some_and(|e| e.id == id) {
                    tasks.remove(&name);
                }
                drop(tasks);
                shared.board.remove(&name);
                shared.metrics.remove_vm(&name);
                shared.controls.lock().remove(&name);
            }
        });
        Entry {
            id,
            spec,
            folder,
            control,
            cancel,
            join,
        }
    }

    /// VMs configured and monitored now.
    pub fn vms_monitored(&self) -> usize {
        self.shared.tasks.lock().len()
    }

    /// Tasks alive now (equals [`vms_monitored`](Self::vms_monitored) once
    /// removed tasks have ended: a leak shows as a difference).
    pub fn live_tasks(&self) -> usize {
        self.shared.live.load(Ordering::Acquire)
    }

    /// The names of the monitored VMs, sorted.
    pub fn vm_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.shared.tasks.lock().keys().cloned().collect();
        names.sort();
        names
    }

    /// The last status seen of `vm`.
    pub fn status_of(&self, vm: &str) -> Option<VmStatus> {
        self.shared.board.rows.lock().get(vm).and_then(|r| r.status)
    }

    /// The `/health` document: `status` (`healthy`; `degraded` while an API
    /// breaker is open, alerts cannot reach Telegram or `vms.yaml` on disk
    /// is invalid, each named in `degraded_reasons`; `shutting_down`), `vms_monitored`, `tasks`,
    /// `uptime_seconds`, and per VM `name`, `status`, `status_confirmed`
    /// (`false` while the last check got no answer: `status` is then only
    /// the last one known, never presented as current), `last_check` (the
    /// last answered one, RFC 3339) and `next_check_in_s`.
    pub fn health(&self) -> Value {
        let now = Instant::now();
        let mut reasons = Vec::new();
        if self.shared.api.any_breaker_open() {
            reasons.push("cloud_api_unavailable");
        }
        if !self.alerts_deliverable() {
            reasons.push("alerts_undeliverable");
        }
        if !self.shared.config_valid.load(Ordering::Acquire) {
            reasons.push("config_invalid");
        }
        let status = if self.cancel.is_cancelled() {
            "shutting_down"
        } else if !reasons.is_empty() {
            "degraded"
        } else {
            "healthy"
        };
        let vms: Vec<Value> = self
            .shared
            .board
            .rows
            .lock()
            .iter()
            .map(|(name, row)| {
                json!({
                    "name": name,
                    "status": row.status.map(VmStatus::as_str),
                    "status_confirmed": row.confirmed,
                    "last_check": row.last_check.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                    "next_check_in_s": row.next_check.saturating_duration_since(now).as_secs_f64(),
                })
            })
            .collect();
        json!({
            "status": status,
            "degraded_reasons": reasons,
            "vms_monitored": self.vms_monitored(),
            "tasks": self.live_tasks(),
            "uptime_seconds": now.saturating_duration_since(self.started).as_secs(),
            "vms": vms,
        })
    }

    fn ctl(&self, vm: &str) -> Result<Arc<VmCtl>, ControlError> {
        if !self.shared.tasks.lock().contains_key(vm) {
            return Err(ControlError::UnknownVm(vm.to_owned()));
        }
        self.shared
            .controls
            .lock()
            .get(vm)
            .cloned()
            .ok_or_else(|| ControlError::UnknownVm(vm.to_owned()))
    }

    /// One VM as the admin API and `/status` show it: its `/health` row
    /// plus `down_since`, `auto_start`, `topic_id`, `paused`,
    /// `maintenance` (`{"until", "source": "operator" | "window"}` or
    /// null), `muted_until`, `acknowledged`, `flap_hold_until` and
    /// `supervised` (neither paused nor in maintenance). `None` for a VM
    /// not configured.
    pub fn vm_view(&self, vm: &str) -> Option<Value> {
        let spec = self.shared.tasks.lock().get(vm)?.spec.clone();
        let ctl = self.shared.controls.lock().get(vm).cloned()?;
        let now = Instant::now();
        let st: CtlState = {
            let mut st = ctl.state.lock();
            st.expire(now);
            st.clone()
        };
        let row = self.shared.board.rows.lock().get(vm).cloned();
        let rfc =
            |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let maintenance = match (
            st.maintenance_until,
            spec.maintenance_at(chrono::Utc::now()),
        ) {
            (Some(until), _) => json!({ "until": rfc(wall(until)), "source": "operator" }),
            (None, Some(window)) => json!({
                "until": rfc(window.end_after(chrono::Utc::now())),
                "source": "window",
            }),
            (None, None) => Value::Null,
        };
        let supervised = !st.paused && maintenance.is_null();
        Some(json!({
            "name": vm,
            "status": row.as_ref().and_then(|r| r.status).map(VmStatus::as_str),
            "status_confirmed": row.as_ref().is_some_and(|r| r.confirmed),
            "last_check": row.as_ref().and_then(|r| r.last_check).map(rfc),
            "down_since": st.down_since.map(|t| rfc(wall(t))),
            "auto_start": spec.auto_start,
            "topic_id": spec.topic_id,
            "supervised": supervised,
            "paused": st.paused,
            "maintenance": maintenance,
            "muted_until": st.muted_until.map(|t| rfc(wall(t))),
            "acknowledged": st.acked,
            "flap_hold_until": st.flap_hold_until.map(|t| rfc(wall(t))),
        }))
    }

    /// Every VM's [`vm_view`](Self::vm_view), by name.
    pub fn vms_view(&self) -> Vec<Value> {
        self.vm_names()
            .iter()
            .filter_map(|name| self.vm_view(name))
            .collect()
    }

    fn done(&self, vm: &str, action: &'static str) -> Result<Value, ControlError> {
        self.shared.metrics.operator_action(action);
        self.vm_view(vm)
            .ok_or_else(|| ControlError::UnknownVm(vm.to_owned()))
    }

    /// Pauses `vm`'s supervision: its status is still read, but it is
    /// neither started nor alerted about until [`resume`](Self::resume).
    ///
    /// # Errors
    /// [`ControlError::UnknownVm`].
    pub fn pause(&self, vm: &str) -> Result<Value, ControlError> {
        self.ctl(vm)?.update(|st| st.paused = true);
        tracing::warn!(vm, "supervision paused by an operator");
        self.done(vm, "pause")
    }

    /// Resumes full supervision of `vm`: ends a pause, an operator's
    /// maintenance and a mute, and releases the flap guard's hold (restarts
    /// resume at once). Maintenance windows of `vms.yaml` still apply.
    ///
    /// # Errors
    /// [`ControlError::UnknownVm`].
    pub fn resume(&self, vm: &str) -> Result<Value, ControlError> {
        self.ctl(vm)?.update(|st| {
            st.paused = false;
            st.maintenance_until = None;
            st.muted_until = None;
            if st.flap_hold_until.is_some() {
                st.release_flap = true;
            }
        });
        tracing::info!(vm, "supervision resumed by an operator");
        self.done(vm, "resume")
    }

    /// Puts `vm` in maintenance for `duration`: neither started nor alerted
    /// until it ends (or [`end_maintenance`](Self::end_maintenance)).
    ///
    /// # Errors
    /// [`ControlError::UnknownVm`], [`ControlError::BadDuration`].
    pub fn start_maintenance(&self, vm: &str, duration: Duration) -> Result<Value, ControlError> {
        let duration = check_duration(duration)?;
        let ctl = self.ctl(vm)?;
        ctl.update(|st| st.maintenance_until = Some(Instant::now() + duration));
        tracing::warn!(
            vm,
            minutes = duration.as_secs() / 60,
            "maintenance started by an operator"
        );
        self.done(vm, "maintenance")
    }

    /// Ends an operator's maintenance of `vm`.
    ///
    /// # Errors
    /// [`ControlError::UnknownVm`].
    pub fn end_maintenance(&self, vm: &str) -> Result<Value, ControlError> {
        self.ctl(vm)?.update(|st| st.maintenance_until = None);
        tracing::info!(vm, "maintenance ended by an operator");
        self.done(vm, "maintenance_end")
    }

    /// Mutes `vm`'s alerts for `duration` (it is still started).
    ///
    /// # Errors
    /// [`ControlError::UnknownVm`], [`ControlError::BadDuration`].
    pub fn mute(&self, vm: &str, duration: Duration) -> Result<Value, ControlError> {
        let duration = check_duration(duration)?;
        self.ctl(vm)?
            .update(|st| st.muted_until = Some(Instant::now() + duration));
        tracing::info!(
            vm,
            minutes = duration.as_secs() / 60,
            "alerts muted by an operator"
        );
        self.done(vm, "mute")
    }

    /// Ends a mute of `vm`.
    ///
    /// # Errors
    /// [`ControlError::UnknownVm`].
    pub fn unmute(&self, vm: &str) -> Result<Value, ControlError> {
        self.ctl(vm)?.update(|st| st.muted_until = None);
        self.done(vm, "unmute")
    }

    /// Acknowledges that `vm` is down: no reminders until it recovers.
    ///
    /// # Errors
    /// [`ControlError::UnknownVm`], [`ControlError::NotDown`] when it is
    /// not down.
    pub fn ack(&self, vm: &str) -> Result<Value, ControlError> {
        let ctl = self.ctl(vm)?;
        let acked = {
            let mut st = ctl.state.lock();
            if st.down_since.is_some() {
                st.acked = true;
            }
            st.acked
        };
        if !acked {
            return Err(ControlError::NotDown(vm.to_owned()));
        }
        tracing::info!(vm, "down VM acknowledged by an operator");
        self.done(vm, "ack")
    }

    /// The `/status` text: how many VMs, then the ones down, paused, in
    /// maintenance, muted or held by the flap guard (one line each).
    pub fn summary(&self) -> String {
        let views = self.vms_view();
        let mut lines = Vec::new();
        let mut down = 0;
        for v in &views {
            let name = v["name"].as_str().unwrap_or("?");
            let mut marks = Vec::new();
            if let Some(since) = v["down_since"].as_str() {
                down += 1;
                marks.push(format!(
                    "down ({}) since {since}{}",
                    v["status"].as_str().unwrap_or("?"),
                    if v["acknowledged"] == json!(true) {
                        ", acknowledged"
                    } else {
                        ""
                    }
                ));
            }
            if v["paused"] == json!(true) {
                marks.push("paused".to_owned());
            }
            if let Some(until) = v["maintenance"]["until"].as_str() {
                marks.push(format!("maintenance until {until}"));
            }
            if let Some(until) = v["muted_until"].as_str() {
                marks.push(format!("muted until {until}"));
            }
            if let Some(until) = v["flap_hold_until"].as_str() {
                marks.push(format!("flapping: restarts held until {until}"));
            }
            if v["auto_start"] == json!(false) && !marks.is_empty() {
                marks.push("alert only".to_owned());
            }
            if !marks.is_empty() {
                lines.push(format!("{name}: {}", marks.join("; ")));
            }
        }
        let mut text = format!("{} VMs watched, {down} down.", views.len());
        if lines.is_empty() {
            text.push_str(" Nothing down, paused, muted or in maintenance.");
        } else {
            for line in lines {
                text.push('\n');
                text.push_str(&line);
            }
        }
        text
    }

    /// Stops every task and waits for them, at most `timeout`. Returns
    /// whether they all ended.
    pub async fn shutdown(&self, timeout: Duration) -> bool {
        self.cancel.cancel();
        let mut joins: Vec<JoinHandle<()>> = {
            let mut tasks = self.shared.tasks.lock();
            tasks.drain().map(|(_, e)| e.join).collect()
        };
        joins.extend(self.shared.retired.lock().drain(..));
        let all = futures::future::join_all(joins);
        tokio::time::timeout(timeout, all).await.is_ok()
    }
}
