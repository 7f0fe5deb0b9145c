//! `goman-controller run`: watches the state store for changed objects and
//! reconciles every cluster, one pass per cluster at a time, a few at once.
//!
//! Scheduling follows client-go's workqueue: a cluster is due again after
//! its phase's requeue (goman's: 5 s Pending, 10 s Provisioning, 45 s
//! Running, 15 s Deleting, 20 s Failed), after a per-cluster exponential
//! backoff when a pass failed (5 ms doubling to 1000 s), at once when its
//! document changed in the store by someone else, and never faster than a
//! global rate (10 passes/s, bursts of 100).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use keel::{RateLimit, RateLimiter};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::model::Phase;
use crate::reconcile::{Reconciler, Requeue};

/// The daemon's settings.
#[derive(Debug, Clone)]
pub struct DaemonSettings {
    /// How often the store is listed.
    pub watch_interval: Duration,
    /// Passes at once.
    pub workers: usize,
    /// Every steady-state requeue is multiplied by this.
    pub requeue_scale: f64,
    /// The first backoff after a failed pass (5 ms).
    pub backoff_base: Duration,
    /// The longest (1000 s).
    pub backoff_max: Duration,
}

impl Default for DaemonSettings {
    fn default() -> Self {
        DaemonSettings {
            watch_interval: Duration::from_secs(5),
            workers: 4,
            requeue_scale: 1.0,
            backoff_base: Duration::from_millis(5),
            backoff_max: Duration::from_secs(1000),
        }
    }
}

/// What the daemon knows of one cluster (`GET /clusters`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClusterView {
    /// The cluster.
    pub name: String,
    /// Its phase after the last pass.
    pub phase: Option<Phase>,
    /// Failed passes in a row.
    pub failures: u32,
    /// The last error.
    pub last_error: Option<String>,
    /// Seconds until the next pass.
    pub next_pass_in_seconds: Option<f64>,
    /// A pass is running now.
    pub running: bool,
}

#[derive(Default)]
struct State {
    due: HashMap<String, Instant>,
    running: HashSet<String>,
    /// The version last seen or written, per cluster.
    seen: HashMap<String, String>,
    views: HashMap<String, ClusterView>,
    phase_since: HashMap<String, (Phase, Instant)>,
}

/// The daemon. Cheap to clone.
#[derive(Clone)]
pub struct Daemon {
    reconciler: Reconciler,
    settings: DaemonSettings,
    state: Arc<Mutex<State>>,
    wake: Arc<Notify>,
    rate: RateLimiter,
    listed: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// A daemon over `reconciler`.
    pub fn new(reconciler: Reconciler, settings: DaemonSettings) -> Daemon {
        Daemon {
            reconciler,
            settings,
            state: Arc::default(),
            wake: Arc::default(),
            rate: RateLimiter::direct(RateLimit::per_second(10).burst(100)).expect("a valid rate"),
            listed: Arc::default(),
        }
    }

    /// Whether the store was listed at least once (readiness).
    pub fn has_listed(&self) -> bool {
        self.listed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What the daemon knows of every cluster.
    pub fn clusters(&self) -> Vec<ClusterView> {
        let state = self.state.lock();
        let now = Instant::now();
        let mut out: Vec<ClusterView> = state
            .views
            .values()
            .cloned()
            .map(|mut v| {
                v.running = state.running.contains(&v.name);
                v.next_pass_in_seconds = state
                    .due
                    .get(&v.name)
                    .map(|d| d.saturating_duration_since(now).as_secs_f64());
                v
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Runs until `stop` is cancelled, then waits for the passes in flight.
    pub async fn run(self, stop: CancellationToken) {
        let watcher = tokio::spawn(self.clone().watch(stop.clone()));
        let workers = Arc::new(Semaphore::new(self.settings.workers));
        let mut passes = tokio::task::JoinSet::new();
        loop {
            let now = Instant::now();
            let (ready, next) = {
                let state = self.state.lock();
                let mut ready: Vec<String> = state
                    .due
                    .iter()
                    .filter(|(name, at)| **at <= now && !state.running.contains(*name))
                    .map(|(name, _)| name.clone())
                    .collect();
                ready.sort();
                let next = state
                    .due
                    .iter()
                    .filter(|(name, _)| !state.running.contains(*name))
                    .map(|(_, at)| *at)
                    .min();
                (ready, next)
            };
            for name in ready {
                if let Err(wait) = self.rate.check(None) {
                    self.state.lock().due.insert(name, now + wait);
                    continue;
                }
                let Ok(permit) = workers.clone().try_acquire_owned() else {
                    break;
                };
                self.state.lock().running.insert(name.clone());
                let daemon = self.clone();
                passes.spawn(async move {
                    daemon.pass(&name).await;
                    drop(permit);
                });
            }
            let sleep_until = next
                .unwrap_or(now + self.settings.watch_interval)
                .max(now + Duration::from_millis(1));
            tokio::select! {
                () = tokio::time::sleep_until(sleep_until) => {}
                () = self.wake.notified() => {}
                Some(_) = passes.join_next(), if !passes.is_empty() => {}
                () = stop.cancelled() => break,
            }
        }
        watcher.abort();
        // Passes in flight finish (or the kit's drain bound ends the
        // process; their locks then expire by themselves).
        while passes.join_next().await.is_some() {}
    }

    async fn pass(&self, name: &str) {
        let outcome = self.reconciler.reconcile(name).await;
        let now = Instant::now();
        let mut state = self.state.lock();
        state.running.remove(name);
        let view = state
            .views
            .entry(name.to_owned())
            .or_insert_with(|| ClusterView {
                name: name.to_owned(),
                ..ClusterView::default()
            });
        match outcome {
            Ok(o) => {
                view.failures = 0;
                view.last_error = None;
                if o.phase.is_some() {
                    view.phase = o.phase;
                }
                if let Some(etag) = o.etag {
                    state.seen.insert(name.to_owned(), etag);
                }
                match o.requeue {
                    Requeue::After(d) => {
                        state.due.insert(
                            name.to_owned(),
                            now + d.mul_f64(self.settings.requeue_scale),
                        );
                    }
                    Requeue::Done => {
                        state.due.remove(name);
                        state.views.remove(name);
                    }
                }
                if let Some(phase) = o.phase {
                    let entry = state
                        .phase_since
                        .entry(name.to_owned())
                        .or_insert((phase, now));
                    if entry.0 != phase {
                        *entry = (phase, now);
                    }
                }
            }
            Err(e) => {
                view.failures += 1;
                view.last_error = Some(e.to_string());
                let failures = view.failures;
                let backoff = self
                    .settings
                    .backoff_base
                    .saturating_mul(1u32 << failures.saturating_sub(1).min(30))
                    .min(self.settings.backoff_max);
                state.due.insert(name.to_owned(), now + backoff);
            }
        }
        drop(state);
        self.wake.notify_one();
    }

    async fn watch(self, stop: CancellationToken) {
        let mut last_summary = Instant::now();
        loop {
            // goman's periodic `[METRICS]` line, every 5 minutes.
            if last_summary.elapsed() >= Duration::from_secs(300) {
                last_summary = Instant::now();
                let m = self.reconciler.metrics();
                let views = self.clusters();
                tracing::info!(
                    target: "goman::metrics",
                    clusters = views.len(),
                    running = views.iter().filter(|v| v.phase == Some(Phase::Running)).count(),
                    failing = views.iter().filter(|v| v.failures > 0).count(),
                    passes_ok = m.reconciles("ok"),
                    passes_error = m.reconciles("error"),
                    passes_fenced = m.reconciles("fenced"),
                    "[METRICS] reconcile summary"
                );
            }
            match self.reconciler.store().list().await {
                Ok(list) => {
                    let now = Instant::now();
                    let mut state = self.state.lock();
                    let names: HashSet<&str> = list.iter().map(|(n, _)| n.as_str()).collect();
                    state.due.retain(|n, _| names.contains(n.as_str()));
                    state.seen.retain(|n, _| names.contains(n.as_str()));
                    state.views.retain(|n, _| names.contains(n.as_str()));
                    state.phase_since.retain(|n, _| names.contains(n.as_str()));
                    for (name, etag) in &list {
                        if state.seen.get(name) != Some(etag) {
                            state.seen.insert(name.clone(), etag.clone());
                            state.due.insert(name.clone(), now);
                            state
                                .views
                                .entry(name.clone())
                                .or_insert_with(|| ClusterView {
                                    name: name.clone(),
                                    ..ClusterView::default()
                                });
                        }
                    }
                    let gauges: Vec<(String, &'static str, f64)> = state
                        .phase_since
                        .iter()
                        .map(|(n, (p, since))| {
                            (
                                n.clone(),
                                p.as_str(),
                                now.saturating_duration_since(*since).as_secs_f64(),
                            )
                        })
                        .collect();
                    drop(state);
                    self.reconciler.metrics().set_clusters(&gauges);
                    self.listed
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    self.wake.notify_one();
                }
                Err(e) => tracing::warn!(error = %e, "cannot list the state store"),
            }
            tokio::select! {
                () = tokio::time::sleep(self.settings.watch_interval) => {}
                () = stop.cancelled() => return,
            }
        }
    }
}
