//! What the operation and the notify hook see.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use keel_core::Outcome;

/// What the retried operation is told about the attempt it is making.
///
/// `number` starts at **1** for the first call; the first retry is attempt
/// 2. Use it to log, to vary a request (a fresh nonce per attempt), or to
/// propagate the remaining time with `timeout` (say as a `grpc-timeout`
/// header). It carries no elapsed time: reading the clock for every attempt
/// would cost more than the rest of the retry machinery; capture an instant
/// before the call if you need one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Attempt {
    /// 1 for the first call, 2 for the first retry, and so on.
    pub number: u32,
    /// The time this attempt may take before it is cancelled: the smaller of
    /// the per-attempt timeout and what is left of the maximum elapsed time;
    /// `None` when neither is configured.
    pub timeout: Option<Duration>,
}

impl Attempt {
    /// Attempt `number` (1-based) with no timeout: for calling an operation
    /// by hand, in tests for instance.
    pub const fn new(number: u32) -> Self {
        Attempt {
            number,
            timeout: None,
        }
    }

    /// The same attempt, told that it has `timeout` before it is cut (what a
    /// pipeline computes from its attempt timeout and overall deadline).
    #[must_use]
    pub const fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// `true` for every attempt after the first.
    pub const fn is_retry(&self) -> bool {
        self.number > 1
    }
}

/// What a policy's [`on_retry`](crate::RetryPolicyBuilder::on_retry) hook
/// sees, once per retry, just before the sleep that precedes it.
#[derive(Clone, Copy)]
#[non_exhaustive]
pub struct RetryEvent<'a> {
    /// The attempt that just failed (1-based); the retry will be attempt
    /// `attempt + 1`.
    pub attempt: u32,
    /// How the attempt was classified (`Failure` for a timed-out attempt).
    pub outcome: Outcome,
    /// The sleep before the retry: the backoff delay, or the retry-after the
    /// dependency asked for (capped by the maximum retry-after).
    pub delay: Duration,
    /// The error the attempt returned; `None` when the attempt timed out or
    /// returned an `Ok` the classifier wants retried.
    pub error: Option<&'a dyn fmt::Debug>,
    /// `true` when the attempt was cut off by the per-attempt timeout.
    pub timed_out: bool,
    /// Time since the call started, attempts and sleeps included.
    pub elapsed: Duration,
}

impl fmt::Debug for RetryEvent<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryEvent")
            .field("attempt", &self.attempt)
            .field("outcome", &self.outcome)
            .field("delay", &self.delay)
            .field("error", &self.error)
            .field("timed_out", &self.timed_out)
            .field("elapsed", &self.elapsed)
            .finish()
    }
}

pub(crate) type Hook = Arc<dyn Fn(&RetryEvent<'_>) + Send + Sync>;
