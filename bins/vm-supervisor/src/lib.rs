//! vm-supervisor: keeps local VM processes (Firecracker, or any command
//! with an API socket) running, as metald's reliability layer meant to.
//!
//! * [`config`]: one clap struct (every field an environment variable),
//!   validated into [`config::Settings`]; [`spec`]: the YAML of VMs.
//! * [`registry`]: the durable registry (SQLite or PostgreSQL through
//!   sqlx): spec, pid, the process's start time, desired state, the
//!   attempt journal.
//! * [`process`]: process groups, identity by pid *and* start time and a
//!   pidfd, stop as a group (TERM, then KILL), exit seen at once (an
//!   adopted process's through its pidfd).
//! * [`supervisor`]: one task per VM; health through keel-health (socket
//!   file → process → connect → `GET /`), metald's orphan reasons,
//!   recovery with backoff, a keel-breaker `Bulkhead` bounding concurrent
//!   recoveries, the fleet short-circuit, adoption after a restart.
//! * [`http`]: the admin API; [`metrics`]; [`alerts`] through keel-notify;
//!   [`app`] assembles it inside keel-telemetry's kit.
//!
//! ```
//! use vm_supervisor::config::Timings;
//! // Recovery backoff: none before the first attempt, then 30 s doubling,
//! // capped at 5 min.
//! let t = Timings::default();
//! let waits: Vec<u64> = (1..=6).map(|n| t.backoff_before(n).as_secs()).collect();
//! assert_eq!(waits, [0, 30, 60, 120, 240, 300]);
//! ```

pub mod alerts;
pub(crate) mod api;
pub mod app;
pub mod config;
pub mod duration;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod metrics;
pub(crate) mod policy;
pub mod process;
pub mod registry;
pub mod spec;
pub mod supervisor;
