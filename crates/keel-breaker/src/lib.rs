//! Circuit breakers for calls to dependencies that can fail or slow down.
//!
//! A [`CircuitBreaker`] watches the outcomes of calls to one dependency and,
//! when the dependency looks unhealthy, *opens*: calls are rejected at once
//! (with the remaining open time as a retry-after) instead of piling up on a
//! dependency that cannot answer. After the open duration it goes
//! *half-open* and lets a bounded number of probe calls through; enough
//! successes close it, one failure opens it again.
//!
//! Use one breaker per dependency (per AWS service, per upstream host) and
//! share it through clones, or let a [`BreakerRegistry`] create named
//! breakers on first use. Put it inside a retry loop, not around it, so
//! every attempt is counted (see `keel::Pipeline`).
//!
//! What it offers, and how it differs from resilience4j, failsafe-rs and
//! gobreaker:
//!
//! * **States**: closed, open, half-open, plus [`force_open`](CircuitBreaker::force_open)
//!   and [`disable`](CircuitBreaker::disable); [`state`](CircuitBreaker::state) and
//!   [`stats`](CircuitBreaker::stats) are synchronous reads, usable from a
//!   health endpoint.
//! * **Trip rules**, combinable: consecutive failures; failure rate over a
//!   count window (last N calls) or a time window (buckets over a
//!   duration); slow-call rate; all gated by a minimum number of calls.
//! * **Open duration** optionally growing on repeated opens (exponential,
//!   capped). **Half-open** admits at most N concurrent probes (failsafe-rs
//!   admits unlimited ones), closes after M probe successes, and gives up
//!   after a maximum wait so a probe that never completes cannot wedge it.
//! * **RAII permits**: a permit dropped without a result (the caller's
//!   future was cancelled) is neutral and frees its slot. Cancellation never
//!   counts as a failure.
//! * Optional **bulkhead** (maximum concurrent calls).
//! * A rejection is a small [`Rejected`] error that implements
//!   [`keel_core::ErrorOutcome`] as `Overloaded { retry_after }`, so
//!   keel-retry waits out the open time instead of hammering.
//! * **Events** to [`BreakerListener`]s and `tracing`; Prometheus metrics
//!   (feature `metrics`, read at scrape time); a tower layer (feature
//!   `tower`).
//! * The **closed path is lock-free and allocation-free**: two atomic loads
//!   and a per-thread counter increment while the dependency is healthy, no
//!   shared write, and no clock read unless a rule needs time (slow calls or
//!   a time window). See `docs/PERFORMANCE.md` for measured figures.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use keel_breaker::{BreakerConfig, BreakerError, CircuitBreaker, State};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Setting a rule replaces the default one (50 % failure rate over the
//! // last 100 calls): this breaker only counts failures in a row.
//! let config = BreakerConfig::builder()
//!     .consecutive_failures(3)
//!     .open_duration(Duration::from_secs(30))
//!     .build()?;
//! let breaker = CircuitBreaker::new("inventory", config);
//!
//! // A healthy call passes through.
//! let answer = breaker.call(async { Ok::<_, std::io::Error>(42) }).await?;
//! assert_eq!(answer, 42);
//!
//! // Three failures in a row open the circuit...
//! for _ in 0..3 {
//!     let err = breaker
//!         .call(async { Err::<u32, _>(std::io::Error::other("connection refused")) })
//!         .await;
//!     assert!(matches!(err, Err(BreakerError::Inner(_))));
//! }
//! assert_eq!(breaker.state(), State::Open);
//!
//! // ...and further calls are rejected without running, with a retry-after.
//! match breaker.call(async { Ok::<u32, std::io::Error>(1) }).await {
//!     Err(BreakerError::Rejected(rejected)) => {
//!         let wait = rejected.retry_after().expect("open breakers know their remaining time");
//!         assert!(wait <= Duration::from_secs(30));
//!         assert!(rejected.outcome().is_overloaded());
//!     }
//!     other => panic!("expected a rejection, got {other:?}"),
//! }
//!
//! // Callers that classify results themselves take a permit. In async code
//! // take the owned one: it can move into a spawned task or a 'static future.
//! breaker.reset();
//! let permit = breaker.try_acquire_owned()?;
//! tokio::spawn(async move {
//!     permit.record(keel_core::Outcome::Neutral); // a 404: says nothing about health
//! })
//! .await?;
//! assert_eq!(breaker.stats().consecutive_failures, 0);
//! # Ok(())
//! # }
//! ```
//!
//! # Testing with time
//!
//! Breakers read time through [`keel_core::Clock`]: tokio's clock by
//! default (so `#[tokio::test(start_paused = true)]` and
//! `tokio::time::advance` drive open durations and windows), or a manual
//! clock set with [`BreakerConfigBuilder::clock`] for synchronous tests.
//!
//! # Loom model
//!
//! The concurrent state machine (admission, recording, trips, half-open
//! probes, the count window) has loom model tests. Run them with:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p keel-breaker --release --lib loom
//! ```
//!
//! Normal builds do not depend on loom.

mod aimd;
mod breaker;
mod bulkhead;
mod config;
mod counters;
mod error;
mod event;
#[cfg(feature = "tower")]
pub mod layer;
#[cfg(feature = "metrics")]
pub mod metrics;
mod permit;
mod registry;
mod state;
mod stats;
mod sync;
mod window;

#[cfg(all(test, loom))]
mod loom_tests;

pub use aimd::{AimdConfig, AimdLimit, Sample};
pub use breaker::CircuitBreaker;
pub use bulkhead::{Bulkhead, BulkheadBuilder, BulkheadFull, BulkheadPermit, BulkheadStats};
pub use config::{
    BreakerConfig, BreakerConfigBuilder, MAX_COUNT_WINDOW, MAX_TIME_BUCKETS, MIN_TIME_BUCKET,
    OpenGrowth, SlowCallRule, Window,
};
pub use error::{BreakerError, CircuitOpen, ConfigError, Rejected};
pub use event::{BreakerEvent, BreakerListener, TransitionReason};
#[cfg(feature = "tower")]
pub use layer::{BreakerLayer, BreakerService};
pub use permit::{OwnedPermit, Permit};
pub use registry::{BreakerRegistry, presets};
pub use state::State;
pub use stats::{Stats, Totals};

/// The README's examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
