use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use keel_core::{ErrorOutcome, Outcome};

use crate::State;

/// The call was rejected because the circuit is open, forced open, or
/// half-open with every probe slot taken.
///
/// `retry_after` is the remaining open time while the breaker is
/// [`State::Open`]: [`keel-retry`](https://docs.rs/keel-retry) reads it
/// through [`ErrorOutcome`] and waits that long instead of hammering. It is
/// `None` when the breaker cannot say (forced open, or half-open with its
/// probes in flight).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CircuitOpen {
    /// The breaker's name.
    pub name: Arc<str>,
    /// The state that rejected the call: [`State::Open`],
    /// [`State::ForcedOpen`] or [`State::HalfOpen`].
    pub state: State,
    /// How long until the breaker lets a probe through, when known.
    pub retry_after: Option<Duration>,
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.state, self.retry_after) {
            (State::HalfOpen, _) => write!(
                f,
                "circuit breaker `{}` is half-open and all probe slots are taken",
                self.name
            ),
            (state, Some(after)) => write!(
                f,
                "circuit breaker `{}` is {state} (retry after {after:?})",
                self.name
            ),
            (state, None) => write!(f, "circuit breaker `{}` is {state}", self.name),
        }
    }
}

impl std::error::Error for CircuitOpen {}

impl ErrorOutcome for CircuitOpen {
    /// `Overloaded` with the remaining open time as the retry-after.
    fn outcome(&self) -> Outcome {
        Outcome::Overloaded {
            retry_after: self.retry_after,
        }
    }
}

/// Why a breaker refused a call. Small (two words and a duration), cheap to
/// build (one reference-count increment for the name) and never allocates.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejected {
    /// The circuit is open, forced open, or half-open and full.
    #[error(transparent)]
    CircuitOpen(CircuitOpen),
}

impl Rejected {
    /// The name of the breaker that rejected the call.
    pub fn name(&self) -> &str {
        match self {
            Rejected::CircuitOpen(e) => &e.name,
        }
    }

    /// The retry-after hint: the remaining open time while open.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Rejected::CircuitOpen(e) => e.retry_after,
        }
    }

    /// A short, stable label for metrics and logs: `open`, `forced_open`,
    /// or `half_open` (probe slots full).
    pub fn reason(&self) -> &'static str {
        match self {
            Rejected::CircuitOpen(e) => e.state.as_str(),
        }
    }
}

impl Rejected {
    /// `Overloaded`, with the remaining open time as retry-after while the
    /// breaker is open (no trait import needed).
    pub fn outcome(&self) -> Outcome {
        match self {
            Rejected::CircuitOpen(e) => e.outcome(),
        }
    }
}

impl ErrorOutcome for Rejected {
    fn outcome(&self) -> Outcome {
        Rejected::outcome(self)
    }
}

impl From<CircuitOpen> for Rejected {
    fn from(e: CircuitOpen) -> Self {
        Rejected::CircuitOpen(e)
    }
}

/// The error of a call made through a breaker: either the breaker refused
/// it, or the call ran and returned its own error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BreakerError<E> {
    /// The breaker refused the call; the wrapped future was never polled.
    #[error(transparent)]
    Rejected(Rejected),
    /// The call ran and failed with its own error.
    #[error(transparent)]
    Inner(E),
}

impl<E> BreakerError<E> {
    /// The rejection, if the breaker refused the call.
    pub fn rejected(&self) -> Option<&Rejected> {
        match self {
            BreakerError::Rejected(r) => Some(r),
            BreakerError::Inner(_) => None,
        }
    }

    /// `true` when the breaker refused the call.
    pub fn is_rejected(&self) -> bool {
        matches!(self, BreakerError::Rejected(_))
    }

    /// The call's own error, if it ran.
    pub fn into_inner(self) -> Option<E> {
        match self {
            BreakerError::Inner(e) => Some(e),
            BreakerError::Rejected(_) => None,
        }
    }

    /// Maps the call's own error, keeping rejections as they are.
    pub fn map_inner<F, E2>(self, f: F) -> BreakerError<E2>
    where
        F: FnOnce(E) -> E2,
    {
        match self {
            BreakerError::Inner(e) => BreakerError::Inner(f(e)),
            BreakerError::Rejected(r) => BreakerError::Rejected(r),
        }
    }
}

impl<E> From<Rejected> for BreakerError<E> {
    fn from(r: Rejected) -> Self {
        BreakerError::Rejected(r)
    }
}

impl<E> BreakerError<E> {
    /// The outcome of the call, for every error type: a rejection is
    /// `Overloaded` (with the remaining open time as retry-after), and the
    /// call's own error is a `Failure`, as the default classification
    /// counted it. When your error carries its own outcome (a 404 that is
    /// neutral), classify it with [`into_inner`](Self::into_inner) instead.
    ///
    /// ```
    /// use keel_breaker::{BreakerConfig, BreakerError, CircuitBreaker};
    /// use keel_core::Outcome;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let breaker = CircuitBreaker::new("api", BreakerConfig::builder().consecutive_failures(1).build().unwrap());
    /// let failed = breaker.call(async { Err::<(), _>(std::io::Error::other("reset")) }).await.unwrap_err();
    /// assert_eq!(failed.outcome(), Outcome::Failure);
    /// let refused = breaker.call(async { Ok::<_, std::io::Error>(()) }).await.unwrap_err();
    /// assert!(refused.outcome().is_overloaded());
    /// # }
    /// ```
    pub fn outcome(&self) -> Outcome {
        match self {
            BreakerError::Rejected(r) => r.outcome(),
            BreakerError::Inner(_) => Outcome::Failure,
        }
    }
}

impl<E> ErrorOutcome for BreakerError<E> {
    /// Same as [`BreakerError::outcome`].
    fn outcome(&self) -> Outcome {
        BreakerError::outcome(self)
    }
}

pub use keel_core::ConfigError;
