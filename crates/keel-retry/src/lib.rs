//! Retries for Keel: backoff with jitter that respects its maximum, stop
//! rules that count the time spent inside the operation, Retry-After, retry
//! budgets shared across policies, presets and statistics.
//!
//! Use it around any call to something that fails transiently: an HTTP API,
//! a database, a cloud SDK. A [`RetryPolicy`] decides *whether* to retry
//! through [`keel_core::Classify`] (only failures and overloads are
//! retried; an overload's retry-after replaces the computed delay), *when*
//! through a [`Backoff`] schedule, a [`Jitter`] and a maximum delay, and
//! *when to stop* through a number of retries, a maximum elapsed time, a
//! per-attempt timeout and an optional [`RetryBudget`] that refuses retries
//! once they would exceed a share of recent traffic.
//!
//! ```
//! use std::time::Duration;
//! use keel_retry::{Backoff, Jitter, RetryError, RetryPolicy};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let policy = RetryPolicy::builder()
//!     .max_retries(4)
//!     .backoff(Backoff::exponential(Duration::from_millis(10), 2.0))
//!     .max_delay(Duration::from_millis(50))
//!     .jitter(Jitter::Full)
//!     .max_elapsed(Duration::from_secs(5))
//!     .build()
//!     .expect("valid policy");
//!
//! // The operation sees its attempt number (1 for the first call).
//! let answer = policy
//!     .retry(|attempt| async move {
//!         if attempt.number < 3 { Err("connection reset") } else { Ok(42) }
//!     })
//!     .await;
//! assert_eq!(answer.unwrap(), 42);
//!
//! // Giving up keeps the last error and the number of attempts.
//! let failed: Result<(), _> = policy.retry(|_| async { Err("down") }).await;
//! match failed {
//!     Err(RetryError::Exhausted { last, attempts }) => {
//!         assert_eq!((last, attempts), ("down", 5));
//!     }
//!     other => panic!("unexpected {other:?}"),
//! }
//!
//! let stats = policy.stats();
//! assert_eq!((stats.calls, stats.successes_after_retry, stats.exhausted), (2, 1, 1));
//! # }
//! ```
//!
//! # One loop, two doors
//! * [`RetryPolicy::retry`]: retries every `Err`; the operation is an
//!   `FnMut(Attempt) -> Future`.
//! * [`RetryPolicy::retry_classified`]: the same loop with a
//!   [`keel_core::Classify`] deciding what is retried (and honouring an
//!   overload's retry-after).
//! * `RetryLayer` (feature `tower`): a tower middleware for `Clone`
//!   requests, over the same loop.
//! * `RetryMetrics` (feature `metrics`): the [`RetryStats`] of named policies
//!   as prometheus-client metrics.
//!
//! # Time
//! A policy reads the [`keel_core::Clock`] it is given
//! ([`RetryPolicyBuilder::clock`]; tokio's by default, which follows paused
//! time in `#[tokio::test(start_paused = true)]`), and a [`RetryBudget`]
//! takes one too ([`RetryBudget::with_clock`]): hand both the clock the rest
//! of the program (a `keel::Pipeline`, a breaker) uses.
//!
//! # Presets
//! | preset | retries | delays | cap | jitter | other |
//! |---|---|---|---|---|---|
//! | [`default`](RetryPolicy::default) | 3 | 1 s ×2 | 30 s | equal ([`Jitter::default`]) | |
//! | [`aws`](RetryPolicy::aws) | 5 | 500 ms ×2 | 64 s | full | |
//! | [`critical`](RetryPolicy::critical) | 7 | 2 s ×2 | 2 min | equal | 20 min in all |
//!
//! A program's own policy (the watchdog's 1, 2, 4, 8, 16 s ±20 %) is a
//! builder chain in that program, not a preset here.

mod attempt;
mod backoff;
mod budget;
mod config;
mod error;
#[cfg(feature = "tower")]
mod layer;
#[cfg(feature = "metrics")]
pub mod metrics;
mod policy;
mod run;
mod stats;

pub use attempt::{Attempt, RetryEvent};
pub use backoff::{Backoff, Delays, Jitter};
pub use budget::RetryBudget;
pub use config::RetryPolicyBuilder;
pub use error::{
    AttemptTimedOut, ConfigError, RetryBudgetExhausted, RetryDeadlineExceeded, RetryError,
};
#[cfg(feature = "tower")]
pub use layer::{RetryLayer, RetryService};
#[cfg(feature = "metrics")]
pub use metrics::RetryMetrics;
pub use policy::{BoxFuture, RetryPolicy};
pub use stats::RetryStats;

/// The README's examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
