//! The crate's error enum and its small rejection structs.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use keel_core::BoxError;

/// Why a retried call gave up.
///
/// Every variant says how many attempts ran. The error of the last attempt
/// that returned one is kept ([`RetryError::into_inner`]), and is this
/// error's [`source`](std::error::Error::source); `Display` does not repeat
/// it.
///
/// A result that was classified as retryable but is an `Ok` (say an HTTP 503
/// response) never becomes a `RetryError`: when the policy gives up on it,
/// the `Ok` value itself is returned, as tower's retry does.
#[derive(Debug)]
#[non_exhaustive]
pub enum RetryError<E> {
    /// Every allowed retry was spent and the last attempt failed with `last`.
    Exhausted {
        /// The error of the last attempt.
        last: E,
        /// Attempts made, the first call included.
        attempts: u32,
    },
    /// The error was classified as not retryable (neutral, or a success the
    /// classifier accepts); it is returned as is, without further attempts.
    NotRetryable {
        /// The error, unchanged.
        error: E,
        /// Attempts made, the first call included.
        attempts: u32,
    },
    /// A retry was allowed by the policy but refused by the shared
    /// [`RetryBudget`](crate::RetryBudget), so no load was added.
    BudgetExhausted {
        /// The most recent error an attempt returned (`None` when every
        /// attempt timed out).
        last: Option<E>,
        /// Attempts made, the first call included.
        attempts: u32,
    },
    /// The policy's maximum elapsed time ran out: either the next sleep
    /// would have ended past it (the sleep was not started), or an attempt
    /// was still running when it passed (the attempt was cancelled).
    DeadlineExceeded {
        /// The most recent error an attempt returned, if any did.
        last: Option<E>,
        /// Attempts made, the first call included.
        attempts: u32,
        /// The configured maximum elapsed time.
        max_elapsed: Duration,
    },
    /// The last allowed attempt ran past the per-attempt timeout.
    AttemptTimeout {
        /// The most recent error an earlier attempt returned, if any did.
        last: Option<E>,
        /// Attempts made, the first call included.
        attempts: u32,
        /// The configured per-attempt timeout.
        timeout: Duration,
    },
}

impl<E> RetryError<E> {
    /// The last error an attempt returned, if any (a timed-out attempt
    /// returns none).
    pub fn into_inner(self) -> Option<E> {
        match self {
            RetryError::Exhausted { last, .. } => Some(last),
            RetryError::NotRetryable { error, .. } => Some(error),
            RetryError::BudgetExhausted { last, .. }
            | RetryError::DeadlineExceeded { last, .. }
            | RetryError::AttemptTimeout { last, .. } => last,
        }
    }

    /// A reference to the last error an attempt returned, if any.
    pub fn last_error(&self) -> Option<&E> {
        match self {
            RetryError::Exhausted { last, .. } => Some(last),
            RetryError::NotRetryable { error, .. } => Some(error),
            RetryError::BudgetExhausted { last, .. }
            | RetryError::DeadlineExceeded { last, .. }
            | RetryError::AttemptTimeout { last, .. } => last.as_ref(),
        }
    }

    /// How many attempts ran, the first call included.
    pub fn attempts(&self) -> u32 {
        match self {
            RetryError::Exhausted { attempts, .. }
            | RetryError::NotRetryable { attempts, .. }
            | RetryError::BudgetExhausted { attempts, .. }
            | RetryError::DeadlineExceeded { attempts, .. }
            | RetryError::AttemptTimeout { attempts, .. } => *attempts,
        }
    }

    /// `true` when the shared retry budget refused a retry.
    pub fn is_budget_exhausted(&self) -> bool {
        matches!(self, RetryError::BudgetExhausted { .. })
    }

    /// Maps the carried error, keeping the variant and the counts.
    pub fn map_err<F, G>(self, mut f: G) -> RetryError<F>
    where
        G: FnMut(E) -> F,
    {
        match self {
            RetryError::Exhausted { last, attempts } => RetryError::Exhausted {
                last: f(last),
                attempts,
            },
            RetryError::NotRetryable { error, attempts } => RetryError::NotRetryable {
                error: f(error),
                attempts,
            },
            RetryError::BudgetExhausted { last, attempts } => RetryError::BudgetExhausted {
                last: last.map(f),
                attempts,
            },
            RetryError::DeadlineExceeded {
                last,
                attempts,
                max_elapsed,
            } => RetryError::DeadlineExceeded {
                last: last.map(f),
                attempts,
                max_elapsed,
            },
            RetryError::AttemptTimeout {
                last,
                attempts,
                timeout,
            } => RetryError::AttemptTimeout {
                last: last.map(f),
                attempts,
                timeout,
            },
        }
    }

    /// Erases the type the way tower middleware does: the inner error as is
    /// for [`Exhausted`](RetryError::Exhausted) and
    /// [`NotRetryable`](RetryError::NotRetryable) (so a retry layer is
    /// transparent to error handling further out), and a rejection struct
    /// callers can downcast for the policy's own refusals:
    /// [`RetryBudgetExhausted`], [`RetryDeadlineExceeded`],
    /// [`AttemptTimedOut`]. The rejection's `source` is the last inner error
    /// when there is one.
    pub fn into_box_error(self) -> BoxError
    where
        E: Into<BoxError>,
    {
        match self {
            RetryError::Exhausted { last, .. } => last.into(),
            RetryError::NotRetryable { error, .. } => error.into(),
            RetryError::BudgetExhausted { last, attempts } => Box::new(RetryBudgetExhausted {
                attempts: Some(attempts),
                source: last.map(Into::into),
            }),
            RetryError::DeadlineExceeded {
                last,
                attempts,
                max_elapsed,
            } => Box::new(RetryDeadlineExceeded {
                max_elapsed,
                attempts,
                source: last.map(Into::into),
            }),
            RetryError::AttemptTimeout {
                last,
                attempts,
                timeout,
            } => Box::new(AttemptTimedOut {
                timeout,
                attempts,
                source: last.map(Into::into),
            }),
        }
    }
}

impl<E> fmt::Display for RetryError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryError::Exhausted { attempts, .. } => {
                write!(f, "retries exhausted after {attempts} attempts")
            }
            RetryError::NotRetryable { attempts, .. } => {
                write!(f, "not retryable (after {attempts} attempts)")
            }
            RetryError::BudgetExhausted { attempts, .. } => write!(
                f,
                "retry refused after {attempts} attempts: retry budget exhausted"
            ),
            RetryError::DeadlineExceeded {
                attempts,
                max_elapsed,
                ..
            } => write!(
                f,
                "maximum elapsed time {max_elapsed:?} reached after {attempts} attempts"
            ),
            RetryError::AttemptTimeout {
                attempts, timeout, ..
            } => write!(
                f,
                "attempt {attempts} timed out after {timeout:?} with no retries left"
            ),
        }
    }
}

impl<E> StdError for RetryError<E>
where
    E: StdError + 'static,
{
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.last_error().map(|e| e as &(dyn StdError + 'static))
    }
}

/// A retry refused because the shared [`RetryBudget`](crate::RetryBudget)
/// is spent. Returned by [`RetryBudget::try_withdraw`](crate::RetryBudget::try_withdraw)
/// and, boxed, by the tower layer (downcast it to answer 503, for instance).
#[derive(Debug, thiserror::Error)]
#[error("retry budget exhausted")]
pub struct RetryBudgetExhausted {
    attempts: Option<u32>,
    #[source]
    source: Option<BoxError>,
}

impl RetryBudgetExhausted {
    pub(crate) fn new() -> Self {
        RetryBudgetExhausted {
            attempts: None,
            source: None,
        }
    }

    /// Attempts made by the call whose retry was refused (`None` when this
    /// came straight from [`RetryBudget::try_withdraw`](crate::RetryBudget::try_withdraw)).
    pub fn attempts(&self) -> Option<u32> {
        self.attempts
    }
}

/// A retried call ran out of its maximum elapsed time (boxed form of
/// [`RetryError::DeadlineExceeded`], from the tower layer).
#[derive(Debug, thiserror::Error)]
#[error("maximum elapsed time {max_elapsed:?} reached after {attempts} attempts")]
pub struct RetryDeadlineExceeded {
    max_elapsed: Duration,
    attempts: u32,
    #[source]
    source: Option<BoxError>,
}

impl RetryDeadlineExceeded {
    /// The configured maximum elapsed time.
    pub fn max_elapsed(&self) -> Duration {
        self.max_elapsed
    }

    /// Attempts made.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

/// The last allowed attempt ran past the per-attempt timeout (boxed form of
/// [`RetryError::AttemptTimeout`], from the tower layer).
#[derive(Debug, thiserror::Error)]
#[error("attempt {attempts} timed out after {timeout:?} with no retries left")]
pub struct AttemptTimedOut {
    timeout: Duration,
    attempts: u32,
    #[source]
    source: Option<BoxError>,
}

impl AttemptTimedOut {
    /// The configured per-attempt timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Attempts made.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

pub use keel_core::ConfigError;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("boom")]
    struct Boom;

    #[test]
    fn display_does_not_repeat_the_source_and_source_is_the_last_error() {
        let e = RetryError::Exhausted {
            last: Boom,
            attempts: 4,
        };
        assert_eq!(e.to_string(), "retries exhausted after 4 attempts");
        assert_eq!(e.source().map(ToString::to_string).as_deref(), Some("boom"));
        assert_eq!(e.attempts(), 4);
        assert!(e.into_inner().is_some());

        let t: RetryError<Boom> = RetryError::AttemptTimeout {
            last: None,
            attempts: 2,
            timeout: Duration::from_secs(1),
        };
        assert!(t.source().is_none());
        assert!(t.into_inner().is_none());
    }

    #[test]
    fn boxing_keeps_inner_errors_and_types_refusals() {
        let inner = RetryError::Exhausted {
            last: Boom,
            attempts: 2,
        }
        .into_box_error();
        assert!(inner.is::<Boom>());

        let refused = RetryError::BudgetExhausted {
            last: Some(Boom),
            attempts: 1,
        }
        .into_box_error();
        let r = refused.downcast_ref::<RetryBudgetExhausted>().unwrap();
        assert_eq!(r.attempts(), Some(1));
        assert_eq!(r.source().map(ToString::to_string).as_deref(), Some("boom"));

        let late = RetryError::<Boom>::DeadlineExceeded {
            last: None,
            attempts: 3,
            max_elapsed: Duration::from_secs(5),
        }
        .into_box_error();
        assert_eq!(
            late.downcast_ref::<RetryDeadlineExceeded>()
                .unwrap()
                .max_elapsed(),
            Duration::from_secs(5)
        );

        let slow = RetryError::<Boom>::AttemptTimeout {
            last: None,
            attempts: 3,
            timeout: Duration::from_secs(2),
        }
        .into_box_error();
        assert_eq!(
            slow.downcast_ref::<AttemptTimedOut>().unwrap().attempts(),
            3
        );
    }

    #[test]
    fn map_err_keeps_variant_and_counts() {
        let e = RetryError::DeadlineExceeded {
            last: Some(1u8),
            attempts: 2,
            max_elapsed: Duration::from_secs(1),
        }
        .map_err(|n| n.to_string());
        assert!(matches!(
            e,
            RetryError::DeadlineExceeded { ref last, attempts: 2, .. } if last.as_deref() == Some("1")
        ));
    }
}
