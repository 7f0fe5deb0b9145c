//! The shared vocabulary of Keel's reliability crates.
//!
//! Every Keel crate speaks in the same three terms, defined here:
//!
//! * [`Clock`]: where "now" comes from. By default it follows tokio's clock, so
//!   `#[tokio::test(start_paused = true)]` drives every timing rule
//!   deterministically; [`ManualClock`] is a clock you advance by hand for
//!   synchronous state machines and their tests.
//! * [`Rng`]: a small, seedable, lock-free random source used for every jitter,
//!   so a test can replay the exact same delays.
//! * [`Outcome`]: what a call meant for reliability purposes: a success, a
//!   failure, a neutral result (cancelled or deliberately ignored) or an
//!   overload with an optional retry-after. [`Classify`] maps a
//!   `Result<T, E>` to an [`Outcome`]; [`classify`] has the stock classifiers.
//!
//! ```
//! use std::time::Duration;
//! use keel_core::{classify, Classify, Outcome, Rng};
//!
//! // Timeouts are failures; "not found" is the caller's business, not the
//! // dependency's health, so it is ignored (neutral).
//! #[derive(Debug)]
//! enum ApiError { Timeout, NotFound }
//! let classifier = classify::on_error(|e: &ApiError| matches!(e, ApiError::Timeout));
//! assert_eq!(classifier.classify(&Err::<(), _>(ApiError::Timeout)), Outcome::Failure);
//! assert_eq!(classifier.classify(&Err::<(), _>(ApiError::NotFound)), Outcome::Neutral);
//! assert_eq!(classifier.classify(&Ok::<_, ApiError>(())), Outcome::Success);
//!
//! // The same seed gives the same jitter, every run.
//! let a = Rng::with_seed(7).duration_between(Duration::ZERO, Duration::from_secs(1));
//! let b = Rng::with_seed(7).duration_between(Duration::ZERO, Duration::from_secs(1));
//! assert_eq!(a, b);
//! ```

mod classify_impl;
mod clock;
mod config_error;
mod every;
mod outcome;
mod priority;
mod rng;

pub use classify_impl::{Classify, ErrorOutcome, classify};
pub use clock::{Clock, ManualClock};
pub use config_error::ConfigError;
pub use every::every;
pub use outcome::Outcome;
pub use priority::{Priority, UnknownPriority};
pub use rng::Rng;
/// The cancellation token [`every`] watches (tokio-util's).
pub use tokio_util::sync::CancellationToken;

/// The boxed error type used where Keel crates erase an error's type.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The README's examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
