//! Operator control of one VM's supervision: pause, maintenance, mute,
//! acknowledgement and the flap guard's early release. The admin API and
//! the Telegram commands write it through the [`Engine`](crate::Engine);
//! the VM's task reads it at every decision and reports what it holds
//! (down since, flap hold) for the listings.

use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

/// What an operator set for one VM, and what its task reports.
#[derive(Debug, Default, Clone)]
pub(crate) struct CtlState {
    /// Supervision paused: neither started nor alerted until resumed.
    pub(crate) paused: bool,
    /// Maintenance started by an operator: neither started nor alerted
    /// until then.
    pub(crate) maintenance_until: Option<Instant>,
    /// Alerts muted until then (starts go on).
    pub(crate) muted_until: Option<Instant>,
    /// The current incident was acknowledged: no reminders until the VM
    /// recovers.
    pub(crate) acked: bool,
    /// An operator asked to end the flap guard's hold now.
    pub(crate) release_flap: bool,
    /// Reported by the task: down (critical status) since.
    pub(crate) down_since: Option<Instant>,
    /// Reported by the task: the flap guard holds restarts until then.
    pub(crate) flap_hold_until: Option<Instant>,
}

impl CtlState {
    /// Forgets expired maintenance and mutes; `true` when one just ended.
    pub(crate) fn expire(&mut self, now: Instant) -> bool {
        let mut ended = false;
        if self.maintenance_until.is_some_and(|u| now >= u) {
            self.maintenance_until = None;
            ended = true;
        }
        if self.muted_until.is_some_and(|u| now >= u) {
            self.muted_until = None;
            ended = true;
        }
        ended
    }
}

/// One VM's control cell: the state and a wake-up for its task (so a
/// resume acts at once instead of at the next check).
#[derive(Debug, Default)]
pub(crate) struct VmCtl {
    pub(crate) state: Mutex<CtlState>,
    pub(crate) wake: Notify,
}

impl VmCtl {
    /// Changes the state with `f` and wakes the task.
    pub(crate) fn update<T>(&self, f: impl FnOnce(&mut CtlState) -> T) -> T {
        let out = f(&mut self.state.lock());
        self.wake.notify_one();
        out
    }
}

/// An operator request that cannot be done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// No VM of that name is configured (HTTP 404).
    #[error("no VM named `{0}` is configured")]
    UnknownVm(String),
    /// The VM is not down: nothing to acknowledge (HTTP 409).
    #[error("VM {0} is not down: nothing to acknowledge")]
    NotDown(String),
    /// A duration out of range (HTTP 422).
    #[error("{0}")]
    BadDuration(String),
}

/// Wall-clock time of `at` (a tokio instant), for the listings.
pub(crate) fn wall(at: Instant) -> chrono::DateTime<chrono::Utc> {
    let now = Instant::now();
    let wall_now = chrono::Utc::now();
    if at >= now {
        wall_now + chrono::Duration::from_std(at - now).unwrap_or_default()
    } else {
        wall_now - chrono::Duration::from_std(now - at).unwrap_or_default()
    }
}

/// `for` within 1 s..=30 days.
pub(crate) fn check_duration(d: Duration) -> Result<Duration, ControlError> {
    if d.is_zero() || d > crate::duration::MAX {
        return Err(ControlError::BadDuration(
            "the duration must be within 1 second..=30 days".into(),
        ));
    }
    Ok(d)
}
