//! The VM status table: how often to check a VM in each status, what to do
//! about it, and when a transition counts as stuck.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// Stuck timeout of `STARTING`, `PROVISIONING`, `RESTARTING` and `STOPPING`.
pub const TRANSITION_STUCK_AFTER: Duration = Duration::from_secs(5 * 60);
/// Stuck timeout of `UPDATING`.
pub const UPDATE_STUCK_AFTER: Duration = Duration::from_secs(10 * 60);

/// A VM status as the Yandex Compute API names it. The proxy API's
/// spellings (`Running`, `Stopped`...) parse to the same values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VmStatus {
    /// Resources are being allocated.
    Provisioning,
    /// Up.
    Running,
    /// Being stopped (intentionally): never started by the watchdog.
    Stopping,
    /// Stopped: critical, started at once.
    Stopped,
    /// Booting.
    Starting,
    /// Rebooting.
    Restarting,
    /// Being reconfigured: never interfered with.
    Updating,
    /// Cannot operate: critical, started at once.
    Error,
    /// Crashed: critical, started at once.
    Crashed,
    /// Being deleted: logged only; the VM's task ends once it is gone.
    Deleting,
    /// `STATUS_UNSPECIFIED` or a value this program does not know.
    Unspecified,
}

/// What the watchdog does about a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Critical alert at once, start the VM, poll fast until `RUNNING`.
    AlertAndStart,
    /// Wait; warn once if the status lasts longer than the timeout.
    WatchStuck(Duration),
    /// Running: probe port 22 between API checks.
    Probe,
    /// Log only; drop the VM's task when the API says it is gone.
    LogOnly,
}

impl VmStatus {
    /// Every status, in the Compute API's order.
    pub const ALL: [VmStatus; 11] = [
        VmStatus::Provisioning,
        VmStatus::Running,
        VmStatus::Stopping,
        VmStatus::Stopped,
        VmStatus::Starting,
        VmStatus::Restarting,
        VmStatus::Updating,
        VmStatus::Error,
        VmStatus::Crashed,
        VmStatus::Deleting,
        VmStatus::Unspecified,
    ];

    /// Parses an API status, case-insensitively (`RUNNING` and `Running`).
    /// Unknown values are [`VmStatus::Unspecified`].
    pub fn parse(text: &str) -> VmStatus {
        VmStatus::ALL
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(text.trim()))
            .unwrap_or(VmStatus::Unspecified)
    }

    /// The Compute API's spelling (`RUNNING`), also a bounded metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            VmStatus::Provisioning => "PROVISIONING",
            VmStatus::Running => "RUNNING",
            VmStatus::Stopping => "STOPPING",
            VmStatus::Stopped => "STOPPED",
            VmStatus::Starting => "STARTING",
            VmStatus::Restarting => "RESTARTING",
            VmStatus::Updating => "UPDATING",
            VmStatus::Error => "ERROR",
            VmStatus::Crashed => "CRASHED",
            VmStatus::Deleting => "DELETING",
            VmStatus::Unspecified => "STATUS_UNSPECIFIED",
        }
    }

    /// The check interval of the status table, before the
    /// `MIN_CHECK_INTERVAL`/`MAX_CHECK_INTERVAL` bounds, adaptation and
    /// jitter.
    pub const fn table_interval(self) -> Duration {
        let secs = match self {
            VmStatus::Stopped | VmStatus::Crashed => 5,
            VmStatus::Error | VmStatus::Starting | VmStatus::Restarting | VmStatus::Unspecified => {
                10
            }
            VmStatus::Provisioning | VmStatus::Stopping => 15,
            VmStatus::Updating => 30,
            VmStatus::Running | VmStatus::Deleting => 60,
        };
        Duration::from_secs(secs)
    }

    /// What to do about a VM in this status.
    pub const fn action(self) -> Action {
        match self {
            VmStatus::Stopped | VmStatus::Crashed | VmStatus::Error => Action::AlertAndStart,
            VmStatus::Starting
            | VmStatus::Provisioning
            | VmStatus::Restarting
            | VmStatus::Stopping
            | VmStatus::Unspecified => Action::WatchStuck(TRANSITION_STUCK_AFTER),
            VmStatus::Updating => Action::WatchStuck(UPDATE_STUCK_AFTER),
            VmStatus::Running => Action::Probe,
            VmStatus::Deleting => Action::LogOnly,
        }
    }

    /// `STOPPED`, `CRASHED` and `ERROR`: the statuses that get a critical
    /// alert and a start.
    pub const fn is_critical(self) -> bool {
        matches!(self.action(), Action::AlertAndStart)
    }
}

impl fmt::Display for VmStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `1h 2m 3s`, `4m 5s`, `6s` (whole seconds, rounded down; `0s` below one).
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3_600, secs % 3_600 / 60, secs % 60);
    if h > 0 {
        format!("{h}h {m}m {s}s")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_matches_the_plan() {
        let expected = [
            (VmStatus::Stopped, 5),
            (VmStatus::Crashed, 5),
            (VmStatus::Error, 10),
            (VmStatus::Starting, 10),
            (VmStatus::Provisioning, 15),
            (VmStatus::Restarting, 10),
            (VmStatus::Stopping, 15),
            (VmStatus::Running, 60),
            (VmStatus::Updating, 30),
            (VmStatus::Deleting, 60),
        ];
        for (status, secs) in expected {
            assert_eq!(
                status.table_interval(),
                Duration::from_secs(secs),
                "{status}"
            );
        }
    }

    #[test]
    fn actions_follow_the_plan() {
        for s in [VmStatus::Stopped, VmStatus::Crashed, VmStatus::Error] {
            assert_eq!(s.action(), Action::AlertAndStart);
            assert!(s.is_critical());
        }
        for s in [
            VmStatus::Starting,
            VmStatus::Provisioning,
            VmStatus::Restarting,
        ] {
            assert_eq!(s.action(), Action::WatchStuck(Duration::from_secs(300)));
        }
        assert_eq!(
            VmStatus::Updating.action(),
            Action::WatchStuck(Duration::from_secs(600))
        );
        assert!(!VmStatus::Stopping.is_critical());
        assert!(!VmStatus::Updating.is_critical());
        assert_eq!(VmStatus::Running.action(), Action::Probe);
        assert_eq!(VmStatus::Deleting.action(), Action::LogOnly);
    }

    #[test]
    fn parses_both_spellings() {
        assert_eq!(VmStatus::parse("RUNNING"), VmStatus::Running);
        assert_eq!(VmStatus::parse("Running"), VmStatus::Running);
        assert_eq!(VmStatus::parse("stopped"), VmStatus::Stopped);
        assert_eq!(VmStatus::parse("STATUS_UNSPECIFIED"), VmStatus::Unspecified);
        assert_eq!(VmStatus::parse("HIBERNATING"), VmStatus::Unspecified);
        for s in VmStatus::ALL {
            assert_eq!(VmStatus::parse(s.as_str()), s);
        }
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(Duration::from_millis(900)), "0s");
        assert_eq!(human_duration(Duration::from_secs(42)), "42s");
        assert_eq!(human_duration(Duration::from_secs(125)), "2m 5s");
        assert_eq!(human_duration(Duration::from_secs(3_725)), "1h 2m 5s");
    }
}
