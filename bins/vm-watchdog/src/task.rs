//! One VM's monitor: checks its status on the adaptive schedule, probes its
//! SSH port while it runs, and acts by the status table.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use keel_health::{BoxProbe, Probe};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::api::{RawApi, ReadReason};
use crate::control::VmCtl;
use crate::engine::Shared;
use crate::schedule::{Bounds, Schedule, jitter};
use crate::status::{Action, VmStatus};
use crate::vms_yaml::{VmSource, VmSpec};
use crate::yandex::{Observation, OperationState, StartAck};

/// How long a start without an operation to poll (the proxy API, or an
/// "already running" answer) counts as in progress before it is retried.
pub const START_GRACE: Duration = Duration::from_secs(30);

/// gRPC ABORTED: an operation cut short by a concurrent state change.
const ABORTED: i64 = 10;

/// How long a start operation may stay unfinished before the watchdog
/// stops waiting for it and starts the VM again.
pub const START_OPERATION_TIMEOUT: Duration = Duration::from_secs(120);

/// A change pushed to a running task by a configuration reload.
#[derive(Debug, Clone)]
pub(crate) struct Reconfigure {
    pub(crate) spec: VmSpec,
    pub(crate) folder: Option<String>,
}

/// Why a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Removed from the configuration, or shutdown.
    Cancelled,
    /// The VM was deleted (404 after `DELETING`).
    Gone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Scheduled,
    ProbeFailed,
    /// An operator changed the VM's supervision (resume, ack...).
    Operator,
}

/// What operator control allows now.
#[derive(Debug, Clone, Copy)]
struct Gate {
    /// Why supervision is off (`paused`, `maintenance`): neither started
    /// nor alerted.
    quiet: Option<&'static str>,
    /// No alerts (quiet, or muted).
    muted: bool,
    /// The incident was acknowledged: no reminders.
    acked: bool,
}

/// `global` with `spec`'s own interval overrides (a `max` below the
/// effective `min` is raised to it).
fn vm_bounds(global: Bounds, spec: &VmSpec) -> Bounds {
    let min = spec.min_check_interval.unwrap_or(global.min);
    let max = spec.max_check_interval.unwrap_or(global.max).max(min);
    Bounds { min, max }
}

#[derive(Debug)]
struct Incident {
    since: Instant,
    alerted: VmStatus,
    /// Start requests made during the incident.
    attempts: u32,
    /// An alert of this incident went out (not muted): its recovery is
    /// announced too.
    announced: bool,
    /// Reminders sent, and when the next one is due.
    reminders: u32,
    next_reminder: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Suspect {
    next_check: Instant,
    backoff: Duration,
}

#[derive(Debug)]
struct PendingStart {
    at: Instant,
    operation: Option<String>,
    /// A non-critical status (PROVISIONING, STARTING...) was seen since: if
    /// the VM is critical again, this start is over, whatever its
    /// operation says.
    progressed: bool,
}

pub(crate) struct VmTask<R> {
    spec: VmSpec,
    folder: Option<String>,
    shared: Arc<Shared<R>>,
    ctl: Arc<VmCtl>,
    /// The interval bounds of this VM (global, or its own from vms.yaml).
    bounds: Bounds,
    schedule: Schedule,
    status: Option<VmStatus>,
    status_since: Instant,
    nat_ip: Option<String>,
    incident: Option<Incident>,
    incidents: u64,
    /// When recent incidents began (the flap guard's window).
    recent_incidents: std::collections::VecDeque<Instant>,
    /// Flapping: not restarted until then.
    hold_starts_until: Option<Instant>,
    pending_start: Option<PendingStart>,
    stuck_alerted: bool,
    missing_alerted: bool,
    probe: Option<(String, u16, BoxProbe)>,
    /// The port is down but the API said RUNNING: further failed probes
    /// check the API at most once per this backoff (doubling from twice
    /// `MIN_CHECK_INTERVAL` up to the RUNNING interval), so a VM whose SSH
    /// is firewalled costs few calls, yet a VM that stops after its SSH
    /// died is still noticed well before its next routine check.
    probe_suspect: Option<Suspect>,
    /// Port probes failed in a row.
    probe_failures: u32,
    /// The last status check got no answer from the API.
    last_check_failed: bool,
    /// Alerted as unreachable (API unavailable) in the current episode.
    unreachable_alerted: bool,
    next_check: Instant,
    next_probe: Instant,
    gone: bool,
}

/// Decrements the live-task count however the task ends.
struct LiveGuard<R>(Arc<Shared<R>>);

impl<R> Drop for LiveGuard<R> {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<R: RawApi> VmTask<R> {
    pub(crate) fn new(
        spec: VmSpec,
        folder: Option<String>,
        shared: Arc<Shared<R>>,
        ctl: Arc<VmCtl>,
    ) -> Self {
        let now = Instant::now();
        let bounds = vm_bounds(shared.bounds, &spec);
        let schedule = Schedule::new(bounds);
        // Spread the first checks over one minimum interval so a thousand
        // VMs do not hit the API in the same instant.
        let first = shared.rng.duration_between(Duration::ZERO, bounds.min / 2);
        VmTask {
            spec,
            folder,
            shared,
            ctl,
            bounds,
            schedule,
            status: None,
            status_since: now,
            nat_ip: None,
            incident: None,
            incidents: 0,
            recent_incidents: std::collections::VecDeque::new(),
            hold_starts_until: None,
            pending_start: None,
            stuck_alerted: false,
            missing_alerted: false,
            probe: None,
            probe_suspect: None,
            probe_failures: 0,
            last_check_failed: false,
            unreachable_alerted: false,
            next_check: now + first,
            next_probe: now,
            gone: false,
        }
    }

    fn name(&self) -> &str {
        &self.spec.name
    }

    pub(crate) async fn run(
        mut self,
        mut control: mpsc::Receiver<Reconfigure>,
        cancel: CancellationToken,
    ) -> Exit {
        self.shared.live.fetch_add(1, Ordering::AcqRel);
        let _live = LiveGuard(self.shared.clone());
        self.publish();
        let ctl = self.ctl.clone();
        loop {
            let probing = self.status == Some(VmStatus::Running) && self.probe_target().is_some();
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Exit::Cancelled,
                update = control.recv() => match update {
                    Some(update) => self.reconfigure(update),
                    None => return Exit::Cancelled,
                },
                () = ctl.wake.notified() => {
                    tokio::select! {
                        biased;
                        () = cancel.cancelled() => return Exit::Cancelled,
                        () = self.check(Reason::Operator) => {}
                    }
                }
                () = sleep_until(self.next_check) => {
                    tokio::select! {
                        biased;
                        () = cancel.cancelled() => return Exit::Cancelled,
                        () = self.check(Reason::Scheduled) => {}
                    }
                }
                () = sleep_until(self.next_probe), if probing => {
                    tokio::select! {
                        biased;
                        () = cancel.cancelled() => return Exit::Cancelled,
                        () = self.probe_once() => {}
                    }
                }
            }
            if self.gone {
                return Exit::Gone;
            }
        }
    }

    fn reconfigure(&mut self, update: Reconfigure) {
        info!(vm = %self.name(), "configuration changed");
        if update.spec.ssh_host != self.spec.ssh_host || update.spec.ssh_port != self.spec.ssh_port
        {
            self.probe = None;
            self.probe_suspect = None;
        }
        self.spec = update.spec;
        self.folder = update.folder;
        self.bounds = vm_bounds(self.shared.bounds, &self.spec);
        self.schedule.set_bounds(self.bounds);
    }

    /// What operator control and the maintenance windows allow now; also
    /// forgets expired maintenance and mutes, and carries out an early
    /// release of the flap guard.
    fn gate(&mut self, now: Instant) -> Gate {
        let (gate, release) = {
            let mut st = self.ctl.state.lock();
            if st.expire(now) {
                info!(vm = %self.spec.name, "an operator's maintenance or mute is over");
            }
            let quiet = if st.paused {
                Some("paused")
            } else if st.maintenance_until.is_some()
                || self.spec.maintenance_at(chrono::Utc::now()).is_some()
            {
                Some("maintenance")
            } else {
                None
            };
            let gate = Gate {
                quiet,
                muted: quiet.is_some() || st.muted_until.is_some(),
                acked: st.acked,
            };
            (gate, std::mem::take(&mut st.release_flap))
        };
        if release && self.hold_starts_until.take().is_some() {
            info!(vm = %self.spec.name, "flap guard released by an operator; restarting again");
            self.recent_incidents.clear();
            self.ctl.state.lock().flap_hold_until = None;
            self.shared.alerts.flap_over(&self.spec.name, now);
        }
        gate
    }

    /// The stuck threshold of `status` for this VM.
    fn stuck_limit(&self, status: VmStatus) -> Duration {
        if status == VmStatus::Updating {
            self.spec
                .updating_stuck_after
                .unwrap_or(self.shared.stuck.1)
        } else {
            self.spec.stuck_after.unwrap_or(self.shared.stuck.0)
        }
    }

    fn publish(&self) {
        self.shared
            .board
            .update(self.name(), self.status, self.next_check);
    }

    async fn check(&mut self, reason: Reason) {
        let started = Instant::now();
        let shared = self.shared.clone();
        let name = self.spec.name.clone();
        // Recovery polls before probe-triggered reads before routine ones.
        let read_reason = if self.schedule.is_fast() {
            ReadReason::Recovery
        } else if reason == Reason::ProbeFailed {
            ReadReason::ProbeFailed
        } else {
            ReadReason::Routine
        };
        let result = match (&self.folder, &self.spec.source) {
            (Some(folder), VmSource::Instance { id }) => {
                // A routine check takes a listing up to half a minimum
                // interval old; a failed probe, or a VM being recovered
                // (fast-poll mode), needs one that started after now.
                let fresh_since = if reason == Reason::Scheduled && !self.schedule.is_fast() {
                    started.checked_sub(self.bounds.min / 2).unwrap_or(started)
                } else {
                    started
                };
                match shared
                    .api
                    .folder_status(folder, id, fresh_since, read_reason)
                    .await
                {
                    Ok(Some(obs)) => Ok(obs),
                    // Not in the folder: ask for it directly.
                    Ok(None) => {
                        shared
                            .api
                            .status(&name, &self.spec.source, read_reason)
                            .await
                    }
                    Err(e) => Err(e),
                }
            }
            _ => {
                shared
                    .api
                    .status(&name, &self.spec.source, read_reason)
                    .await
            }
        };
        let took = started.elapsed();
        match result {
            Ok(obs) => {
                self.last_check_failed = false;
                shared.metrics.check(&name, Some(obs.status), took);
                shared.board.checked(&name);
                self.observe(obs).await;
            }
            Err(e) if e.not_found => {
                self.last_check_failed = false;
                shared.metrics.check(&name, None, took);
                shared.board.checked(&name);
                self.on_missing();
            }
            Err(e) => {
                self.last_check_failed = true;
                shared.board.unconfirmed(&name);
                shared.metrics.check(&name, None, took);
                self.schedule.failed();
                warn!(
                    vm = %name,
                    error = %e,
                    kind = e.kind,
                    failures = self.schedule.failures(),
                    last_status = ?self.status,
                    "status check failed; keeping the last known status"
                );
            }
        }
        self.next_check = Instant::now() + self.schedule.next_interval(&shared.rng);
        self.publish();
    }

    fn on_missing(&mut self) {
        if self.status == Some(VmStatus::Deleting) {
            info!(vm = %self.name(), "VM deleted; no longer monitored");
            self.gone = true;
            return;
        }
        self.schedule.observed(VmStatus::Unspecified);
        let gate = self.gate(Instant::now());
        if !self.missing_alerted && !gate.muted {
            warn!(vm = %self.name(), "the API does not know this VM (404)");
            self.shared.alerts.missing(self.name());
            self.missing_alerted = true;
        }
    }

    async fn observe(&mut self, obs: Observation) {
        let now = Instant::now();
        let previous = self.status;
        let status = obs.status;
        self.schedule.observed(status);
        if std::mem::take(&mut self.missing_alerted) {
            self.shared.alerts.found(self.name());
        }
        if std::mem::take(&mut self.unreachable_alerted) {
            info!(vm = %self.name(), %status, "the API answers again");
            self.shared.alerts.confirmed(self.name(), status, now);
        }
        if obs.nat_ip.is_some() && obs.nat_ip != self.nat_ip {
            self.nat_ip = obs.nat_ip;
            if self.spec.ssh_host.is_none() {
                self.probe = None;
            }
        }
        if previous != Some(status) {
            self.status = Some(status);
            self.status_since = now;
            if std::mem::take(&mut self.stuck_alerted) {
                self.shared.alerts.unstuck(self.name(), status, now);
            }
            info!(
                vm = %self.name(),
                from = previous.map_or("UNKNOWN", VmStatus::as_str),
                to = %status,
                "status changed"
            );
        }
        if !status.is_critical()
            && let Some(pending) = &mut self.pending_start
        {
            pending.progressed = true;
        }
        let gate = self.gate(now);
        match status.action() {
            Action::AlertAndStart => {
                if let Some(why) = gate.quiet {
                    if previous != Some(status) {
                        info!(vm = %self.name(), %status, why, "down, but supervision is off: neither alerting nor starting");
                    }
                    self.schedule.set_fast(false);
                    return;
                }
                let auto_start = self.spec.auto_start;
                match &mut self.incident {
                    None => {
                        self.incidents += 1;
                        self.incident = Some(Incident {
                            since: now,
                            alerted: status,
                            attempts: 0,
                            announced: !gate.muted,
                            reminders: 0,
                            next_reminder: now + self.shared.reminder_after,
                        });
                        self.ctl.state.lock().down_since = Some(now);
                        if gate.muted {
                            warn!(vm = %self.name(), %status, auto_start, "critical status (alerts muted)");
                        } else {
                            warn!(vm = %self.name(), %status, auto_start, "critical status");
                            self.shared
                                .alerts
                                .down(self.name(), status, now, auto_start);
                        }
                        if auto_start {
                            self.flap_guard(now, gate.muted);
                        }
                    }
                    Some(incident) if incident.alerted != status => {
                        incident.alerted = status;
                        if !gate.muted {
                            incident.announced = true;
                            self.shared
                                .alerts
                                .down(&self.spec.name, status, now, auto_start);
                        }
                    }
                    Some(incident) if now >= incident.next_reminder => {
                        incident.reminders += 1;
                        incident.next_reminder = now + self.shared.reminder_after;
                        let down_for = now.saturating_duration_since(incident.since);
                        if gate.muted || gate.acked {
                            debug!(vm = %self.spec.name, acked = gate.acked, "reminder skipped (muted or acknowledged)");
                        } else {
                            incident.announced = true;
                            warn!(vm = %self.spec.name, %status, down_s = down_for.as_secs(), attempts = incident.attempts, "VM still down");
                            self.shared.alerts.still_down(
                                &self.spec.name,
                                status,
                                down_for,
                                incident.attempts,
                                (self.incidents, incident.reminders),
                                now,
                            );
                        }
                    }
                    Some(_) => {}
                }
                if auto_start {
                    self.schedule.set_fast(true);
                    self.ensure_started().await;
                } else {
                    self.schedule.set_fast(false);
                }
            }
            Action::Probe => {
                self.schedule.set_fast(false);
                self.pending_start = None;
                if let Some(incident) = self.incident.take() {
                    let downtime = now.saturating_duration_since(incident.since);
                    info!(vm = %self.name(), downtime_s = downtime.as_secs(), "VM recovered");
                    {
                        let mut st = self.ctl.state.lock();
                        st.down_since = None;
                        st.acked = false;
                    }
                    if incident.announced && !gate.muted {
                        self.shared
                            .alerts
                            .recovered(self.name(), downtime, self.incidents, now);
                    }
                }
                if previous != Some(VmStatus::Running) {
                    self.probe_suspect = None;
                    self.next_probe = now + jitter(self.bounds.min, &self.shared.rng);
                }
            }
            Action::WatchStuck(_) => {
                let limit = self.stuck_limit(status);
                // Poll fast through the start's transitions until RUNNING.
                self.schedule
                    .set_fast(self.incident.is_some() && gate.quiet.is_none());
                let stuck_for = now.saturating_duration_since(self.status_since);
                if stuck_for >= limit && !self.stuck_alerted && !gate.muted {
                    warn!(vm = %self.name(), %status, stuck_s = stuck_for.as_secs(), "VM stuck");
                    self.shared
                        .alerts
                        .stuck(self.name(), status, stuck_for, now);
                    self.stuck_alerted = true;
                }
            }
            Action::LogOnly => {
                self.schedule.set_fast(false);
                if previous != Some(status) {
                    info!(vm = %self.name(), %status, "VM is being deleted; watching until it is gone");
                }
            }
        }
    }

    /// Counts an incident; too many within the window hold the VM's
    /// starts for the cool-off and alert that it needs intervention.
    fn flap_guard(&mut self, now: Instant, muted: bool) {
        let (restarts, window, cool_off) = self.shared.flap;
        self.recent_incidents.push_back(now);
        while let Some(&first) = self.recent_incidents.front() {
            if now.saturating_duration_since(first) < window {
                break;
            }
            self.recent_incidents.pop_front();
        }
        if self.hold_starts_until.is_none() && self.recent_incidents.len() > restarts as usize {
            let count = self.recent_incidents.len();
            warn!(vm = %self.name(), incidents = count, "VM flapping; holding restarts for the cool-off");
            self.hold_starts_until = Some(now + cool_off);
            self.ctl.state.lock().flap_hold_until = Some(now + cool_off);
            if !muted {
                self.shared
                    .alerts
                    .needs_intervention(self.name(), count, window, cool_off, now);
            }
        }
    }

    /// Issues a start unless one is in progress; follows the operation of
    /// the previous one.
    async fn ensure_started(&mut self) {
        if let Some(until) = self.hold_starts_until {
            let now = Instant::now();
            if now < until {
                debug!(vm = %self.spec.name, "flapping: restart held");
                return;
            }
            info!(vm = %self.spec.name, "cool-off over; restarting again");
            self.hold_starts_until = None;
            self.ctl.state.lock().flap_hold_until = None;
            self.recent_incidents.clear();
            self.shared.alerts.flap_over(&self.spec.name, now);
        }
        let shared = self.shared.clone();
        let name = self.spec.name.clone();
        if let Some(pending) = &self.pending_start {
            if pending.progressed {
                info!(vm = %name, "the VM fell back to a critical status during its start; starting it again");
                self.pending_start = None;
            } else if pending.at.elapsed() >= START_OPERATION_TIMEOUT {
                warn!(vm = %name, "the start has not finished in time; starting the VM again");
                self.pending_start = None;
            }
        }
        if let Some(pending) = &self.pending_start {
            match &pending.operation {
                Some(op) => match shared.api.operation(&name, op).await {
                    Ok(OperationState {
                        done: true,
                        error: Some(error),
                        error_code,
                    }) => {
                        if error_code == Some(ABORTED) {
                            // The VM changed state during the start (it
                            // crashed or was stopped): already alerted as
                            // such, and started again right below.
                            info!(vm = %name, operation = %op, %error, "start aborted by a state change");
                        } else {
                            warn!(vm = %name, operation = %op, %error, "start operation failed");
                            shared.alerts.start_failed(&name, self.incidents, &error);
                        }
                        self.pending_start = None;
                    }
                    Ok(OperationState { done: true, .. }) => {
                        // Finished, yet the VM was seen stopped: start again
                        // at the next check if it still is.
                        self.pending_start = None;
                        return;
                    }
                    Ok(_) => return,
                    Err(e) => {
                        debug!(vm = %name, error = %e, "cannot read the start operation");
                        if pending.at.elapsed() < shared.api_settings_deadline {
                            return;
                        }
                        self.pending_start = None;
                    }
                },
                None if pending.at.elapsed() < START_GRACE => return,
                None => self.pending_start = None,
            }
        }
        info!(vm = %name, "starting VM");
        if let Some(incident) = &mut self.incident {
            incident.attempts += 1;
        }
        match shared.api.start(&name, &self.spec.source).await {
            Ok(StartAck::Started { operation }) => {
                info!(vm = %name, operation = ?operation, "start accepted");
                self.pending_start = Some(PendingStart {
                    at: Instant::now(),
                    operation,
                    progressed: false,
                });
            }
            Ok(StartAck::AlreadyRunning) => {
                info!(vm = %name, "start answered: already running");
                self.pending_start = Some(PendingStart {
                    at: Instant::now(),
                    operation: None,
                    progressed: false,
                });
            }
            Err(e) => {
                warn!(vm = %name, error = %e, kind = e.kind, "start failed; retrying at the next check");
                if e.kind != "circuit_rejected" {
                    shared
                        .alerts
                        .start_failed(&name, self.incidents, &e.message);
                }
            }
        }
    }

    /// Alerts "unreachable (API unavailable, cannot confirm status)" once
    /// per episode when the probe has failed often enough; the start follows
    /// as soon as the API answers (fast polling until then).
    fn maybe_unreachable(&mut self, observed_at: Instant) {
        if self.unreachable_alerted || self.probe_failures < self.shared.unreachable_after {
            return;
        }
        if self.gate(observed_at).muted {
            debug!(vm = %self.name(), "port unreachable; supervision off or muted: not alerting");
            return;
        }
        warn!(
            vm = %self.name(),
            probe_failures = self.probe_failures,
            last_status = ?self.status,
            "port unreachable and the API cannot confirm the status"
        );
        self.unreachable_alerted = true;
        self.shared
            .alerts
            .unreachable(self.name(), self.probe_failures, self.status, observed_at);
        self.schedule.set_fast(true);
        self.next_check = self.next_check.min(Instant::now() + self.bounds.min);
    }

    /// The next probe within half a minimum interval of `probed_at`.
    fn probe_faster(&mut self, probed_at: Instant) {
        let sooner = probed_at + jitter(self.bounds.min / 2, &self.shared.rng);
        self.next_probe = self.next_probe.min(sooner);
    }

    fn probe_target(&self) -> Option<(&str, u16)> {
        let host = self.spec.ssh_host.as_deref().or(self.nat_ip.as_deref())?;
        Some((host, self.spec.ssh_port))
    }

    async fn probe_once(&mut self) {
        let shared = self.shared.clone();
        self.next_probe = Instant::now() + jitter(self.bounds.min, &shared.rng);
        let Some((host, port)) = self.probe_target() else {
            return;
        };
        let probe = match &self.probe {
            Some((h, p, probe)) if h == host && *p == port => probe.clone(),
            _ => {
                let probe = (shared.prober)(host, port);
                self.probe = Some((host.to_owned(), port, probe.clone()));
                probe
            }
        };
        let ok = matches!(
            tokio::time::timeout(shared.probe_timeout, probe.check()).await,
            Ok(Ok(()))
        );
        if ok {
            self.probe_failures = 0;
            if self.probe_suspect.take().is_some() {
                info!(vm = %self.name(), "SSH port reachable again");
            }
            return;
        }
        self.probe_failures = self.probe_failures.saturating_add(1);
        let now = Instant::now();
        // The API could not confirm the last time, or cannot now (its
        // breaker is open): the probe is the only witness, so it is asked
        // twice as often, and the VM is alerted as unreachable as soon as
        // it has failed often enough.
        if self.last_check_failed || shared.api.group_open(&self.spec.source) {
            self.probe_faster(now);
            self.maybe_unreachable(now);
        }
        if let Some(suspect) = self.probe_suspect
            && now < suspect.next_check
        {
            return;
        }
        debug!(vm = %self.name(), "SSH probe failed; checking the API now");
        self.check(Reason::ProbeFailed).await;
        if self.last_check_failed {
            self.probe_faster(now);
            self.maybe_unreachable(now);
        }
        if self.status == Some(VmStatus::Running) {
            let backoff = match self.probe_suspect {
                None => {
                    warn!(vm = %self.name(), "SSH port unreachable but the API says RUNNING");
                    self.bounds.min * 2
                }
                Some(s) => (s.backoff * 2).min(self.bounds.target(VmStatus::Running)),
            };
            self.probe_suspect = Some(Suspect {
                next_check: Instant::now() + backoff,
                backoff,
            });
        }
    }
}
