use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::config::CheckConfig;
use crate::probe::ProbeFailure;
use crate::state::HealthState;

/// The name of a checked target (a VM id, a service name...).
///
/// Cheap to clone (one `Arc<str>`); lookups take `&str`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetId(Arc<str>);

impl TargetId {
    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for TargetId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for TargetId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for TargetId {
    fn from(s: &str) -> Self {
        TargetId(Arc::from(s))
    }
}

impl From<String> for TargetId {
    fn from(s: String) -> Self {
        TargetId(Arc::from(s))
    }
}

impl From<Arc<str>> for TargetId {
    fn from(s: Arc<str>) -> Self {
        TargetId(s)
    }
}

impl From<&TargetId> for TargetId {
    fn from(id: &TargetId) -> Self {
        id.clone()
    }
}

impl PartialEq<str> for TargetId {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for TargetId {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl fmt::Display for TargetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TargetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for TargetId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// A point-in-time view of one target, for status endpoints and tests.
///
/// Returned by [`HealthChecker::snapshot`](crate::HealthChecker::snapshot) and
/// [`HealthChecker::status`](crate::HealthChecker::status); taking it locks
/// the target for a copy, never across a check.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TargetStatus {
    /// The target's id.
    pub target: TargetId,
    /// The name of its probe (for example `tcp 10.0.0.5:22`).
    pub probe: Arc<str>,
    /// Its current state.
    pub state: HealthState,
    /// When it entered [`state`](Self::state) (monotonic).
    pub since: Instant,
    /// When it entered [`state`](Self::state) (wall clock, for display).
    pub since_wall: SystemTime,
    /// Current run of successes (zero after a failure).
    pub consecutive_successes: u32,
    /// Current run of failures (zero after a success).
    pub consecutive_failures: u32,
    /// Checks completed since the target was added.
    pub checks: u64,
    /// Failed checks since the target was added.
    pub failures: u64,
    /// When the last completed check started (monotonic); `None` before the
    /// first.
    pub last_check: Option<Instant>,
    /// When the last completed check started (wall clock).
    pub last_check_wall: Option<SystemTime>,
    /// How long the last completed check took.
    pub last_duration: Option<Duration>,
    /// The most recent failure. It is kept after the target recovers, so a
    /// status page can show what went wrong last; compare
    /// [`last_error_wall`](Self::last_error_wall) with
    /// [`last_check_wall`](Self::last_check_wall) to tell if it is current.
    pub last_error: Option<ProbeFailure>,
    /// When the check that produced [`last_error`](Self::last_error) started.
    pub last_error_wall: Option<SystemTime>,
    /// The configuration in force.
    pub config: CheckConfig,
}

#[cfg(feature = "serde")]
impl serde::Serialize for TargetStatus {
    /// Monotonic instants are left out (they mean nothing outside the
    /// process); wall times are milliseconds since the Unix epoch and
    /// durations are milliseconds.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        fn unix_ms(t: SystemTime) -> u64 {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0)
        }
        fn ms(d: Duration) -> f64 {
            d.as_secs_f64() * 1_000.0
        }
        let mut st = s.serialize_struct("TargetStatus", 13)?;
        st.serialize_field("target", &self.target)?;
        st.serialize_field("probe", &*self.probe)?;
        st.serialize_field("state", &self.state)?;
        st.serialize_field("since_unix_ms", &unix_ms(self.since_wall))?;
        st.serialize_field("consecutive_successes", &self.consecutive_successes)?;
        st.serialize_field("consecutive_failures", &self.consecutive_failures)?;
        st.serialize_field("checks", &self.checks)?;
        st.serialize_field("failures", &self.failures)?;
        st.serialize_field("last_check_unix_ms", &self.last_check_wall.map(unix_ms))?;
        st.serialize_field("last_duration_ms", &self.last_duration.map(ms))?;
        st.serialize_field("last_error", &self.last_error)?;
        st.serialize_field("last_error_unix_ms", &self.last_error_wall.map(unix_ms))?;
        st.serialize_field("interval_ms", &ms(self.config.interval()))?;
        st.end()
    }
}
