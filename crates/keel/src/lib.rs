//! Keel: reliability for Rust services, in one dependency.
//!
//! This facade re-exports the Keel crates behind features and composes the
//! per-call policies into one [`Pipeline`] (feature `pipeline`, on by
//! default), in the one order Keel uses everywhere, from the outside in:
//!
//! 1. **overall deadline**: the whole call, every attempt and every wait
//!    included, ends by then;
//! 2. **retry** ([`retry::RetryPolicy`], spending its retry budget if it has
//!    one);
//! 3. **circuit breaker** ([`breaker::CircuitBreaker`]): every attempt is
//!    counted, and a rejection is an `Overloaded` outcome whose retry-after is
//!    the breaker's remaining open time, so the retry waits instead of
//!    hammering;
//! 4. **rate limiter** (governor, direct or keyed: e.g. 10 requests/s per VM
//!    with a burst of 5): an attempt over the rate *waits* for its slot when
//!    the deadline allows, and fails as `Overloaded` with the wait as
//!    retry-after when it does not;
//! 5. **bulkhead** ([`breaker::Bulkhead`]): at most N attempts in flight;
//!    with a queue, attempts wait by priority (critical first, FIFO within
//!    a priority, the lowest shed first when the queue is full); without
//!    one, a full bulkhead rejects at once (an overload);
//! 6. **per-attempt timeout**: a slow attempt is cancelled and counted as a
//!    failure by the breaker;
//! 7. the call itself, told in [`retry::Attempt::timeout`] how long it has
//!    (the smaller of the attempt timeout and what is left of the deadline),
//!    so it can pass the deadline on.
//!
//! The breaker, the rate limiter ([`RateLimiter`]) and the bulkhead are
//! shared handles: build one per dependency and give clones to every
//! pipeline that calls it. A call can carry its own retry policy, deadline,
//! priority, rate-limit key and classifier ([`CallOptions`]).
//!
//! An attempt cut by the overall deadline (rather than its own timeout) is
//! neutral for the breaker by default: see
//! [`PipelineBuilder::deadline_cut_is_failure`] for dependencies that hang.
//!
//! Caller cancellation (dropping the future) is neutral everywhere: the
//! breaker permit is released without a result, no retry budget is spent,
//! the bulkhead slot is freed.
//!
//! ```
//! use std::time::Duration;
//! use keel::{Pipeline, RateLimit};
//! use keel::breaker::{BreakerConfig, Bulkhead, CircuitBreaker};
//! use keel::retry::{Backoff, RetryPolicy};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pipeline = Pipeline::builder()
//!     .deadline(Duration::from_secs(10))
//!     .retry(
//!         RetryPolicy::builder()
//!             .max_retries(3)
//!             .backoff(Backoff::constant(Duration::from_millis(10)))
//!             .build()?,
//!     )
//!     .breaker(CircuitBreaker::new("inventory", BreakerConfig::default()))
//!     .rate_limit(RateLimit::per_second(100).burst(10))
//!     .bulkhead(Bulkhead::new(32))
//!     .attempt_timeout(Duration::from_secs(2))
//!     .build()?;
//!
//! // The first two attempts fail, the third succeeds.
//! let mut calls = 0;
//! let answer = pipeline
//!     .call(|attempt| {
//!         calls += 1;
//!         async move {
//!             if attempt.number < 3 { Err(std::io::Error::other("connection reset")) } else { Ok(attempt.number) }
//!         }
//!     })
//!     .await?;
//! assert_eq!(answer, 3);
//! assert_eq!(calls, 3);
//! assert_eq!(pipeline.stats().attempts, 3);
//! # Ok(())
//! # }
//! ```
//!
//! # Features
//!
//! | feature | what it adds |
//! |---|---|
//! | `pipeline` (default) | [`Pipeline`], [`RateLimit`], and the `breaker` and `retry` re-exports |
//! | `tower` | [`PipelineLayer`]: the whole pipeline as a tower `Layer` |
//! | `exec` | `keel::exec`: keel-exec's executors and worker pool, and (with `pipeline`) `keel::exec::through`, which runs each item through a `Pipeline` |
//! | `breaker`, `retry`, `health`, `idempotency`, `tx`, `notify` | `keel::breaker`, `keel::retry`, ... re-exports of each crate |
//! | `full` | all of the above |
//!
//! `keel::core` (clock, RNG, outcomes, classifiers) is always there.

pub use keel_core as core;
pub use keel_core::{BoxError, Classify, Clock, ErrorOutcome, Outcome, Priority, Rng, classify};

#[cfg(feature = "breaker")]
pub use keel_breaker as breaker;
#[cfg(feature = "health")]
pub use keel_health as health;
#[cfg(feature = "idempotency")]
pub use keel_idempotency as idempotency;
#[cfg(feature = "notify")]
pub use keel_notify as notify;
#[cfg(feature = "retry")]
pub use keel_retry as retry;
#[cfg(feature = "tx")]
pub use keel_tx as tx;

#[cfg(feature = "pipeline")]
mod error;
#[cfg(feature = "exec")]
pub mod exec;
#[cfg(feature = "tower")]
mod layer;
#[cfg(feature = "pipeline")]
mod pipeline;
#[cfg(feature = "pipeline")]
mod rate;

#[cfg(feature = "pipeline")]
pub use error::{ConfigError, PipelineError};
#[cfg(feature = "tower")]
pub use layer::{PipelineLayer, PipelineService};
#[cfg(feature = "pipeline")]
pub use pipeline::{CallOptions, Pipeline, PipelineBuilder, PipelineStats};
#[cfg(feature = "pipeline")]
pub use rate::{RateLimit, RateLimiter};

/// The README's examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
