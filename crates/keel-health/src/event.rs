use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::time::Instant;

use crate::probe::ProbeFailure;
use crate::state::HealthState;
use crate::target::TargetId;

/// Why a target changed state.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case", tag = "kind"))]
#[non_exhaustive]
pub enum ChangeReason {
    /// The first successful check of an `Unknown` target.
    FirstSuccess,
    /// `consecutive_successes` reached the recovery threshold.
    Recovered {
        /// The run of successes that did it.
        consecutive_successes: u32,
    },
    /// `consecutive_failures` reached the failure threshold.
    Failed {
        /// The run of failures that did it.
        consecutive_failures: u32,
        /// The failure of the last check.
        failure: ProbeFailure,
    },
}

impl ChangeReason {
    /// The failure that made the target unhealthy, if that is what happened.
    pub fn failure(&self) -> Option<&ProbeFailure> {
        match self {
            ChangeReason::Failed { failure, .. } => Some(failure),
            _ => None,
        }
    }
}

impl fmt::Display for ChangeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChangeReason::FirstSuccess => f.write_str("first successful check"),
            ChangeReason::Recovered {
                consecutive_successes,
            } => write!(f, "{consecutive_successes} consecutive successful checks"),
            ChangeReason::Failed {
                consecutive_failures,
                failure,
            } => write!(
                f,
                "{consecutive_failures} consecutive failed checks, last: {failure}"
            ),
        }
    }
}

/// A target changed state. Sent on the broadcast stream
/// ([`HealthChecker::subscribe`](crate::HealthChecker::subscribe)) and to
/// registered callbacks ([`HealthChecker::on_change`](crate::HealthChecker::on_change)).
///
/// Events of one target are produced in order by that target's task. Only
/// real changes are events: `Healthy` to `Healthy` never is.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HealthEvent {
    /// The target.
    pub target: TargetId,
    /// The state before.
    pub old: HealthState,
    /// The state now.
    pub new: HealthState,
    /// Why.
    pub reason: ChangeReason,
    /// When the deciding check started (monotonic).
    pub at: Instant,
    /// When the deciding check started (wall clock, for display).
    pub at_wall: SystemTime,
    /// When the target entered `old` (monotonic): `at - old_since` is how
    /// long it was in that state.
    pub old_since: Instant,
}

#[cfg(feature = "serde")]
impl serde::Serialize for HealthEvent {
    /// `at_unix_ms` is the wall time in milliseconds since the Unix epoch;
    /// `old_state_ms` is how long the target was in `old`.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let at_ms = self
            .at_wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let mut st = s.serialize_struct("HealthEvent", 6)?;
        st.serialize_field("target", &self.target)?;
        st.serialize_field("old", &self.old)?;
        st.serialize_field("new", &self.new)?;
        st.serialize_field("reason", &self.reason)?;
        st.serialize_field("at_unix_ms", &at_ms)?;
        st.serialize_field(
            "old_state_ms",
            &(self
                .at
                .saturating_duration_since(self.old_since)
                .as_secs_f64()
                * 1_000.0),
        )?;
        st.end()
    }
}

/// Identifies a callback registered with
/// [`HealthChecker::on_change`](crate::HealthChecker::on_change), to remove it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CallbackId(pub(crate) u64);

pub(crate) type Callback = Arc<dyn Fn(&HealthEvent) + Send + Sync + 'static>;
