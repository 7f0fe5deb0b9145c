//! Health checking for many targets with failure and recovery thresholds.
//!
//! `keel-health` watches targets (VMs, services, local processes) and tells
//! you when one becomes unhealthy or recovers. Use it when a program must
//! react to a dependency's health (restart a VM, alert, stop routing) rather
//! than merely report it: each target gets its own task, interval and
//! timeout; a target only changes state after `failure_threshold`
//! consecutive failures or `recovery_threshold` consecutive successes, so a
//! single lost packet does not trigger a restart.
//!
//! * [`HealthChecker`] runs the checks; targets are added, removed and
//!   reconfigured at run time. First checks are jittered with a seedable
//!   [`keel_core::Rng`] so a thousand targets do not fire in lock-step.
//! * [`Probe`] is the check itself. Stock probes: [`TcpProbe`] (connect),
//!   [`HttpProbe`] (`GET`, healthy below a status), [`UnixHttpProbe`]
//!   (HTTP over a Unix socket, like Firecracker's API socket),
//!   [`ProcessProbe`] (a pid is alive, read from `/proc` without signalling
//!   it), [`SocketFileProbe`] (a path is a socket), [`probe_fn`] (any async
//!   closure), composed in order with [`all_of`].
//! * Every target starts [`HealthState::Unknown`]; state changes go out as
//!   [`HealthEvent`]s on a broadcast stream ([`HealthChecker::subscribe`])
//!   and to callbacks ([`HealthChecker::on_change`]);
//!   [`HealthChecker::snapshot`] is a synchronous view for status
//!   endpoints.
//! * Feature `metrics`: [`HealthMetrics`] (prometheus-client) counts checks,
//!   failures by bounded reason, check durations and targets per state.
//!   Feature `serde`: `Serialize` for snapshots and events.
//!
//! ```
//! use std::time::Duration;
//! use keel_health::{CheckConfig, HealthChecker, HealthState, TcpProbe};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Something to check: a local TCP listener.
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let port = listener.local_addr()?.port();
//!
//! let checker = HealthChecker::builder().seed(7).build()?;
//! let mut events = checker.subscribe();
//! let config = CheckConfig::builder()
//!     .interval(Duration::from_millis(200))
//!     .timeout(Duration::from_millis(200))
//!     .failure_threshold(2)
//!     .recovery_threshold(2)
//!     .build()?;
//! checker.add("api", TcpProbe::new("127.0.0.1", port), config)?;
//! assert_eq!(checker.status("api").unwrap().state, HealthState::Unknown);
//!
//! // The first successful connect makes it healthy...
//! let event = events.recv().await?;
//! assert_eq!((event.old, event.new), (HealthState::Unknown, HealthState::Healthy));
//!
//! // ...and two refused connects in a row make it unhealthy.
//! drop(listener);
//! let event = events.recv().await?;
//! assert_eq!(event.new, HealthState::Unhealthy);
//! assert_eq!(event.reason.failure().unwrap().kind(), keel_health::FailureKind::Refused);
//! assert_eq!(checker.status("api").unwrap().consecutive_failures, 2);
//!
//! checker.shutdown().await;
//! assert_eq!(checker.live_tasks(), 0);
//! # Ok(())
//! # }
//! ```

mod checker;
mod config;
mod error;
mod event;
#[cfg(feature = "metrics")]
pub mod metrics;
mod probe;
mod probes;
mod state;
mod target;

pub use checker::{HealthChecker, HealthCheckerBuilder};
pub use config::{CheckConfig, CheckConfigBuilder};
pub use error::{CheckerShutDown, ConfigError, HealthError, TargetExists, UnknownTarget};
pub use event::{CallbackId, ChangeReason, HealthEvent};
pub use http::StatusCode;
#[cfg(feature = "metrics")]
pub use metrics::HealthMetrics;
pub use probe::{
    AllOf, BoxProbe, FailureKind, FnProbe, Probe, ProbeFailure, ProbeResult, all_of, probe_fn,
};
pub use probes::{HttpProbe, ProcessProbe, TcpProbe};
#[cfg(unix)]
pub use probes::{SocketFileProbe, UnixHttpProbe};
pub use state::HealthState;
pub use target::{TargetId, TargetStatus};
