//! The alerts, through keel-notify (dedup, debounce, digests, a breaker per
//! sink). Without a sink configured they are only logged.

use keel_notify::{Notification, Notifier};

use crate::supervisor::Reason;

/// Alert helper; `None` notifier: log only.
#[derive(Debug, Clone)]
pub struct Alerts {
    notifier: Option<Notifier>,
}

impl Alerts {
    /// Alerts through `notifier`.
    pub fn new(notifier: Option<Notifier>) -> Self {
        Alerts { notifier }
    }

    /// The notifier, if any.
    pub fn notifier(&self) -> Option<&Notifier> {
        self.notifier.as_ref()
    }

    fn send(&self, n: Notification) {
        if let Some(notifier) = &self.notifier
            && let Err(e) = notifier.notify(n)
        {
            tracing::warn!(error = %e, "alert not queued");
        }
    }

    /// Warning: `vm` is orphaned for `reason`; recovering.
    pub fn orphaned(&self, vm: &str, reason: Reason, detail: &str) {
        tracing::warn!(
            vm_id = vm,
            reason = reason.as_str(),
            detail,
            "orphaned vm detected"
        );
        self.send(
            Notification::warning(
                format!("{vm}:orphaned:{}", reason.as_str()),
                format!("VM {vm} orphaned: {}", reason.as_str()),
            )
            .body(detail.to_owned())
            .field("vm", vm)
            .subject(vm),
        );
    }

    /// Info: `vm` was recovered.
    pub fn recovered(&self, vm: &str, attempt: u32) {
        tracing::info!(vm_id = vm, attempt, "vm recovery successful");
        self.send(
            Notification::info(format!("{vm}:recovered"), format!("VM {vm} recovered"))
                .field("vm", vm)
                .field("attempt", attempt.to_string())
                .subject(vm),
        );
    }

    /// Critical: `vm` exhausted its attempts.
    pub fn needs_intervention(&self, vm: &str, attempts: u32, error: &str) {
        tracing::error!(
            vm_id = vm,
            attempts,
            error,
            "vm recovery failed: needs intervention"
        );
        self.send(
            Notification::critical(
                format!("{vm}:needs_intervention"),
                format!("VM {vm} needs intervention after {attempts} recovery attempts"),
            )
            .body(error.to_owned())
            .field("vm", vm)
            .subject(vm),
        );
    }

    /// Info: `vm` exited with a code that means "stopped on purpose".
    pub fn stopped(&self, vm: &str, status: &str) {
        tracing::info!(vm_id = vm, status, "vm stopped on purpose: not restarted");
        self.send(
            Notification::info(
                format!("{vm}:stopped"),
                format!("VM {vm} stopped ({status})"),
            )
            .field("vm", vm)
            .subject(vm),
        );
    }

    /// Critical: too many VMs unhealthy, recovery suspended.
    pub fn host_problem(&self, unhealthy: usize, total: usize) {
        tracing::error!(unhealthy, total, "host problem: recovery suspended");
        self.send(
            Notification::critical(
                "host:problem",
                format!("Host problem: {unhealthy} of {total} VMs unhealthy; recovery suspended"),
            )
            .subject("host"),
        );
    }

    /// Info: recovery resumed.
    pub fn host_ok(&self, unhealthy: usize, total: usize) {
        tracing::info!(unhealthy, total, "recovery resumed");
        self.send(
            Notification::info(
                "host:ok",
                format!("Recovery resumed: {unhealthy} of {total} VMs unhealthy"),
            )
            .subject("host"),
        );
    }
}
