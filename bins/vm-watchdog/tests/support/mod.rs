//! Shared test support: a scripted cloud API (no sockets, so paused time
//! drives everything), an in-memory alert inbox, scripted port probes, and
//! a harness that wires them into a real engine and notifier.

#![allow(dead_code, unreachable_pub)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use keel_health::{Probe, probe_fn};
use keel_notify::{Message, Notifier, NotifierBuilder, Priority, Sink, SinkError};
use parking_lot::Mutex;
use tokio::time::Instant;
use vm_watchdog::api::BreakerHook;
use vm_watchdog::yandex::{Observation, OperationState, Page, StartAck};
use vm_watchdog::{
    Alerts, Api, ApiError, ApiSettings, Bounds, Engine, EngineSettings, Metrics, Prober, RawApi,
    VmSource, VmSpec, VmStatus, VmsFile,
};

/// One call the scripted API received.
#[derive(Debug, Clone)]
pub struct Call {
    pub at: Instant,
    pub endpoint: &'static str,
    pub key: String,
}

#[derive(Debug, Clone)]
pub struct Sim {
    pub status: VmStatus,
    pub nat_ip: Option<String>,
    generation: u64,
}

#[derive(Debug, Default)]
pub struct Script {
    pub vms: HashMap<String, Sim>,
    pub calls: Vec<Call>,
    /// Every call fails with 503.
    pub fail: bool,
    /// Extra latency per key (VM id) of `get`.
    pub delays: HashMap<String, Duration>,
    /// How long a start takes (half PROVISIONING, half STARTING).
    pub start_takes: Duration,
    /// Starts are accepted but the VM does not move.
    pub start_sticks: bool,
    /// Folder → instance ids, in listing order.
    pub folders: HashMap<String, Vec<String>>,
    pub page_size: usize,
    /// Every operation ends with this error (gRPC code, message).
    pub op_error: Option<(i64, String)>,
    /// `get` calls running now, and the most at once so far.
    pub in_flight: usize,
    pub max_in_flight: usize,
    ops: HashMap<String, String>,
    next_op: u64,
}

/// A cloud API driven by the test.
#[derive(Debug, Clone)]
pub struct ScriptedApi {
    pub inner: Arc<Mutex<Script>>,
}

impl Default for ScriptedApi {
    fn default() -> Self {
        ScriptedApi {
            inner: Arc::new(Mutex::new(Script {
                start_takes: Duration::from_secs(10),
                page_size: 1_000,
                ..Script::default()
            })),
        }
    }
}

fn key(vm: &VmSource) -> String {
    match vm {
        VmSource::Instance { id } => id.clone(),
        VmSource::Proxy { url } => url.clone(),
    }
}

fn unavailable(endpoint: &'static str) -> ApiError {
    ApiError::Status {
        endpoint,
        status: 503,
        code: Some(14),
        message: "unavailable".into(),
        retry_after: None,
    }
}

fn not_found(endpoint: &'static str) -> ApiError {
    ApiError::Status {
        endpoint,
        status: 404,
        code: Some(5),
        message: "not found".into(),
        retry_after: None,
    }
}

impl ScriptedApi {
    pub fn add(&self, id: &str, status: VmStatus, nat_ip: Option<&str>) {
        self.inner.lock().vms.insert(
            id.to_owned(),
            Sim {
                status,
                nat_ip: nat_ip.map(str::to_owned),
                generation: 0,
            },
        );
    }

    pub fn set_status(&self, id: &str, status: VmStatus) {
        if let Some(sim) = self.inner.lock().vms.get_mut(id) {
            sim.status = status;
            sim.generation += 1;
        }
    }

    pub fn remove(&self, id: &str) {
        self.inner.lock().vms.remove(id);
    }

    pub fn status(&self, id: &str) -> Option<VmStatus> {
        self.inner.lock().vms.get(id).map(|s| s.status)
    }

    pub fn set_fail(&self, fail: bool) {
        self.inner.lock().fail = fail;
    }

    pub fn calls(&self) -> Vec<Call> {
        self.inner.lock().calls.clone()
    }

    pub fn calls_to(&self, endpoint: &str, key: &str) -> Vec<Instant> {
        self.inner
            .lock()
            .calls
            .iter()
            .filter(|c| c.endpoint == endpoint && c.key == key)
            .map(|c| c.at)
            .collect()
    }

    pub fn count(&self, endpoint: &str) -> usize {
        self.inner
            .lock()
            .calls
            .iter()
            .filter(|c| c.endpoint == endpoint)
            .count()
    }

    fn record(&self, endpoint: &'static str, key: &str) -> (bool, Duration) {
        let mut s = self.inner.lock();
        s.calls.push(Call {
            at: Instant::now(),
            endpoint,
            key: key.to_owned(),
        });
        (s.fail, s.delays.get(key).copied().unwrap_or_default())
    }
}

/// Counts one running `get` until dropped.
struct InFlight(Arc<Mutex<Script>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.lock().in_flight -= 1;
    }
}

impl ScriptedApi {
    fn enter(&self) -> InFlight {
        let mut s = self.inner.lock();
        s.in_flight += 1;
        s.max_in_flight = s.max_in_flight.max(s.in_flight);
        InFlight(self.inner.clone())
    }
}

impl RawApi for ScriptedApi {
    async fn get(&self, vm: &VmSource) -> Result<Observation, ApiError> {
        let _running = self.enter();
        let k = key(vm);
        let (fail, delay) = self.record("get", &k);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if fail {
            return Err(unavailable("instances.get"));
        }
        let s = self.inner.lock();
        match s.vms.get(&k) {
            Some(sim) => Ok(Observation {
                status: sim.status,
                nat_ip: sim.nat_ip.clone(),
            }),
            None => Err(not_found("instances.get")),
        }
    }

    async fn list(&self, folder_id: &str, page_token: Option<&str>) -> Result<Page, ApiError> {
        let (fail, _) = self.record("list", folder_id);
        if fail {
            return Err(unavailable("instances.list"));
        }
        let s = self.inner.lock();
        let ids = s.folders.get(folder_id).cloned().unwrap_or_default();
        let start: usize = page_token.and_then(|t| t.parse().ok()).unwrap_or(0);
        let mut page = Page::default();
        for id in ids.iter().skip(start).take(s.page_size) {
            if let Some(sim) = s.vms.get(id) {
                page.instances.push((
                    id.clone(),
                    Observation {
                        status: sim.status,
                        nat_ip: sim.nat_ip.clone(),
                    },
                ));
            }
        }
        if start + s.page_size < ids.len() {
            page.next_page_token = Some((start + s.page_size).to_string());
        }
        Ok(page)
    }

    async fn start(&self, vm: &VmSource) -> Result<StartAck, ApiError> {
        let k = key(vm);
        let (fail, _) = self.record("start", &k);
        if fail {
            return Err(unavailable("instances.start"));
        }
        let mut s = self.inner.lock();
        let sticks = s.start_sticks;
        let takes = s.start_takes;
        let op = format!("op-{}", s.next_op);
        s.next_op += 1;
        s.ops.insert(op.clone(), k.clone());
        let Some(sim) = s.vms.get_mut(&k) else {
            return Err(not_found("instances.start"));
        };
        if !sim.status.is_critical() {
            return Ok(StartAck::AlreadyRunning);
        }
        if sticks {
            return Ok(StartAck::Started {
                operation: Some(op),
            });
        }
        sim.status = VmStatus::Provisioning;
        sim.generation += 1;
        let generation = sim.generation;
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let step = |from: VmStatus, to: VmStatus| {
                let mut s = inner.lock();
                match s.vms.get_mut(&k) {
                    Some(sim) if sim.generation == generation && sim.status == from => {
                        sim.status = to;
                        true
                    }
                    _ => false,
                }
            };
            tokio::time::sleep(takes / 2).await;
            if step(VmStatus::Provisioning, VmStatus::Starting) {
                tokio::time::sleep(takes / 2).await;
                step(VmStatus::Starting, VmStatus::Running);
            }
        });
        Ok(StartAck::Started {
            operation: Some(op),
        })
    }

    async fn operation(&self, id: &str) -> Result<OperationState, ApiError> {
        let (fail, _) = self.record("operation", id);
        if fail {
            return Err(unavailable("operations.get"));
        }
        let s = self.inner.lock();
        if let Some((code, message)) = &s.op_error {
            return Ok(OperationState {
                done: true,
                error: Some(format!("code {code}: {message}")),
                error_code: Some(*code),
            });
        }
        let done = s
            .ops
            .get(id)
            .and_then(|vm| s.vms.get(vm))
            .is_some_and(|sim| sim.status == VmStatus::Running);
        Ok(OperationState {
            done,
            error: None,
            error_code: None,
        })
    }
}

/// One alert the inbox accepted.
#[derive(Debug, Clone)]
pub struct Got {
    pub key: String,
    pub priority: Priority,
    pub title: String,
    pub at: Instant,
}

/// An in-memory sink without rate limits.
#[derive(Debug, Clone, Default)]
pub struct Inbox {
    pub got: Arc<Mutex<Vec<Got>>>,
}

impl Sink for Inbox {
    fn name(&self) -> &str {
        "inbox"
    }

    async fn send(&self, message: &Message) -> Result<(), SinkError> {
        self.got.lock().push(Got {
            key: message.key().to_owned(),
            priority: message.priority(),
            title: message.display_title(),
            at: Instant::now(),
        });
        Ok(())
    }
}

impl Inbox {
    pub fn all(&self) -> Vec<Got> {
        self.got.lock().clone()
    }

    pub fn with_priority(&self, priority: Priority) -> Vec<Got> {
        self.all()
            .into_iter()
            .filter(|g| g.priority == priority)
            .collect()
    }

    pub fn titled(&self, needle: &str) -> Vec<Got> {
        self.all()
            .into_iter()
            .filter(|g| g.title.contains(needle))
            .collect()
    }
}

/// Port probes: a host answers unless marked down.
#[derive(Debug, Clone, Default)]
pub struct Probes {
    pub down: Arc<Mutex<HashSet<String>>>,
    pub count: Arc<Mutex<usize>>,
}

impl Probes {
    pub fn prober(&self) -> Prober {
        let down = self.down.clone();
        let count = self.count.clone();
        Arc::new(move |host: &str, _port: u16| {
            let host = host.to_owned();
            let down = down.clone();
            let count = count.clone();
            probe_fn(move || {
                let up = !down.lock().contains(&host);
                *count.lock() += 1;
                async move {
                    if up {
                        Ok(())
                    } else {
                        Err("connection refused")
                    }
                }
            })
            .boxed()
        })
    }

    pub fn set_down(&self, host: &str, down: bool) {
        if down {
            self.down.lock().insert(host.to_owned());
        } else {
            self.down.lock().remove(host);
        }
    }
}

/// A real engine and notifier over the scripted API, inbox and probes.
pub struct Harness {
    pub engine: Arc<Engine<ScriptedApi>>,
    pub api: ScriptedApi,
    pub inbox: Inbox,
    pub probes: Probes,
    pub notifier: Notifier,
    pub metrics: Metrics,
}

pub fn instance(name: &str, id: &str) -> VmSpec {
    VmSpec::new(name, VmSource::Instance { id: id.to_owned() })
}

pub fn file(vms: Vec<VmSpec>) -> VmsFile {
    VmsFile {
        folder_id: None,
        vms,
    }
}

pub fn harness_with(api: ScriptedApi, settings: ApiSettings) -> Harness {
    harness_custom(api, settings, |b| b)
}

/// A harness whose notifier is adjusted by `notifier`.
pub fn harness_custom(
    api: ScriptedApi,
    settings: ApiSettings,
    notifier: impl FnOnce(NotifierBuilder) -> NotifierBuilder,
) -> Harness {
    let metrics = Metrics::new();
    let inbox = Inbox::default();
    let builder = Alerts::configure(Notifier::builder(), metrics.clone()).sink(inbox.clone());
    let notifier = notifier(builder).build().unwrap();
    let alerts = Alerts::new(notifier.clone());
    let hook_alerts = alerts.clone();
    let hook: BreakerHook = Arc::new(move |group: &str, open: bool| {
        if open {
            hook_alerts.api_down(group);
        } else {
            hook_alerts.api_up(group);
        }
    });
    let api_guard = Api::new(api.clone(), settings, metrics.clone(), Some(hook)).unwrap();
    let probes = Probes::default();
    let engine = Engine::new(
        api_guard,
        alerts,
        metrics.clone(),
        EngineSettings {
            bounds: Bounds::default(),
            seed: Some(7),
            probe_timeout: Duration::from_secs(1),
            prober: probes.prober(),
            unreachable_after: vm_watchdog::DEFAULT_UNREACHABLE_AFTER,
            reminder_after: vm_watchdog::DEFAULT_REMINDER_AFTER,
            flap_restarts: 5,
            flap_window: Duration::from_secs(30 * 60),
            flap_cool_off: Duration::from_secs(60 * 60),
            stuck_after: vm_watchdog::status::TRANSITION_STUCK_AFTER,
            updating_stuck_after: vm_watchdog::status::UPDATE_STUCK_AFTER,
        },
    );
    Harness {
        engine: Arc::new(engine),
        api,
        inbox,
        probes,
        notifier,
        metrics,
    }
}

pub fn harness(api: ScriptedApi) -> Harness {
    harness_with(api, ApiSettings::new(10))
}

/// Sleeps in paused time, in small steps so every task gets to run.
pub async fn run_for(d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        let step = Duration::from_millis(100).min(end - Instant::now());
        tokio::time::sleep(step).await;
    }
}

/// The gaps between consecutive instants.
pub fn gaps(at: &[Instant]) -> Vec<Duration> {
    at.windows(2).map(|w| w[1] - w[0]).collect()
}

/// Polls `check` every 50 ms until it returns `Some`, at most `timeout`
/// (real time: for tests over sockets and processes).
pub async fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
