//! pod-rebalancer: scores the pods of one Deployment from Prometheus
//! metrics and evicts the most and the least busy ones, so the scheduler
//! and the Kafka consumer group spread the load again.
//!
//! One run: pods from the API server → CPU, lag, memory and consumption
//! rate per pod from Prometheus, queried in parallel (keel-exec, each
//! query through a `keel::Pipeline`) → [`decide`] (pure) → safety limits → evict (or
//! explain, in a dry run) with pacing → the record on the Deployment
//! (memory, cooldown, outcome verification, lock) → the JSON report and
//! the exit code ([`rebalance::exit`]).
//!
//! ```
//! use pod_rebalancer::config::{DecisionSettings, Strategy};
//! use pod_rebalancer::decide::{PodInput, decide};
//!
//! let pod = |name: &str, cpu: f64| PodInput {
//!     name: name.into(),
//!     ready: true,
//!     cpu: Some(cpu),
//!     lag: Some(cpu * 100.0),
//!     memory: Some(1e9),
//!     ..PodInput::default()
//! };
//! let pods = [pod("a", 0.5), pod("b", 1.0), pod("c", 3.0)];
//! let d = decide(Strategy::Composite, &DecisionSettings::default(), &pods, None);
//! assert_eq!(d.chosen[0].name, "c");
//! assert_eq!(d.chosen[1].name, "a");
//! ```

pub mod config;
pub mod decide;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod kube;
pub mod prom;
pub mod push;
pub mod rebalance;
pub mod record;
pub mod stats;

pub use config::{Config, Settings};
pub use rebalance::{Clients, Report, exit, run_once};
