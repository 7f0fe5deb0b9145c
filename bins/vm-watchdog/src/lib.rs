//! vm-watchdog: keeps Yandex Cloud VMs running and tells a Telegram topic
//! within seconds when one stops, gets stuck, or recovers.
//!
//! The program is a thin `main.rs` over this library. Its policy lives here;
//! surviving failures comes from the Keel crates:
//!
//! * [`config`]: one clap struct (every field an environment variable),
//!   validated into [`Settings`]; a bad value is a [`ConfigError`] naming
//!   the variable (exit code 64).
//! * [`vms_yaml`]: the watched `vms.yaml` (Compute instances by id, or the
//!   original bot's proxy API by URL; optional `folder_id`).
//! * [`status`] and [`schedule`]: the status table (interval, action, stuck
//!   timeout per status) and the adaptive, jittered schedule.
//! * [`yandex`], [`proxy`], [`iam`]: the API clients and IAM tokens;
//!   [`api`] runs every call through a `keel::Pipeline` (deadline → retry →
//!   the group's circuit breaker → per-VM rate limit of 10/s, burst 5 →
//!   the API pool, a priority bulkhead: starts and recovery polls first,
//!   then probe-triggered reads, then routine reads), and shares one
//!   paginated `instances.list` per poll among a folder's VMs.
//! * Retries: starts use [`start_retry`] (1, 2, 4, 8, 16 s, ±20 %), as the
//!   plan asks. Status and operation reads deliberately use a
//!   quicker policy (3 retries after 0.2, 0.4 and 0.8 s, ±20 %;
//!   [`ApiSettings::read_retry`]): a read repeats on the VM's own schedule
//!   anyway, and a 1 s first backoff would add a second to the reaction
//!   time whenever one answer is lost. Both are fields of [`ApiSettings`].
//! * [`engine`] (the coordinator) and the per-VM task: one task per VM,
//!   reconfigured without a restart; a TCP probe (keel-health) of each
//!   running VM's SSH port between API checks.
//! * Operator control: per-VM overrides in [`vms_yaml`] (`auto_start`,
//!   intervals, stuck thresholds, `topic_id`, maintenance windows); pause,
//!   resume, maintenance, mute and acknowledgement through the
//!   [`Engine`] (errors are [`ControlError`]), served by [`admin`] behind
//!   `ADMIN_TOKEN` and by the Telegram [`commands`] (`getUpdates`);
//!   [`duration`] parses `2h`-style durations.
//! * [`selfcheck`]: at start and under `--check-config --online`, Telegram
//!   and the cloud are asked whether they accept the credentials.
//! * [`alerts`] over keel-notify (priorities, dedup, debounce, Telegram);
//!   [`metrics`]; [`http`] for `/health` and `/metrics`; [`watch`] for
//!   reloading `vms.yaml`; [`app`] assembles everything.
//!
//! The status table, as the engine applies it:
//!
//! ```
//! use std::time::Duration;
//! use vm_watchdog::schedule::{Bounds, Schedule};
//! use vm_watchdog::status::{Action, VmStatus};
//! use vm_watchdog::vms_yaml;
//!
//! let file = vms_yaml::parse(
//!     "vms:\n  - name: web-1\n    instance_id: fhm123\n",
//!     std::path::Path::new("vms.yaml"),
//! )?;
//! assert_eq!(file.vms[0].ssh_port, 22);
//!
//! // STOPPED: alert and start at once, check every 5 s.
//! assert_eq!(VmStatus::Stopped.action(), Action::AlertAndStart);
//! assert_eq!(VmStatus::Stopped.table_interval(), Duration::from_secs(5));
//!
//! // A VM that keeps RUNNING is checked less and less often, up to 60 s.
//! let mut schedule = Schedule::new(Bounds::default());
//! let mut intervals = Vec::new();
//! for _ in 0..6 {
//!     schedule.observed(VmStatus::Running);
//!     intervals.push(schedule.base_interval().as_secs());
//! }
//! assert_eq!(intervals, [5, 10, 20, 40, 60, 60]);
//! # Ok::<(), vm_watchdog::VmsFileError>(())
//! ```

pub mod admin;
pub mod alerts;
pub mod api;
pub mod app;
pub mod commands;
pub mod config;
mod control;
pub mod duration;
pub mod engine;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod iam;
pub mod metrics;
pub mod proxy;
pub mod schedule;
pub mod selfcheck;
pub mod status;
mod task;
pub mod vms_yaml;
pub mod watch;
pub mod yandex;

pub use alerts::Alerts;
pub use api::{Api, ApiSettings, CallError, HttpApi, RawApi, ReadReason, api_breaker, start_retry};
pub use app::{Options, StopReport, Watchdog};
pub use config::{Config, Credentials, Settings};
pub use control::ControlError;
pub use engine::{
    ApplyReport, DEFAULT_REMINDER_AFTER, DEFAULT_UNREACHABLE_AFTER, Engine, EngineSettings, Prober,
};
pub use error::{ApiError, ConfigError, Error, TokenError, VmsFileError};
pub use metrics::Metrics;
pub use schedule::{Bounds, Schedule};
pub use status::{Action, VmStatus};
pub use task::{START_GRACE, START_OPERATION_TIMEOUT};
pub use vms_yaml::{VmSource, VmSpec, VmsFile, Window};
