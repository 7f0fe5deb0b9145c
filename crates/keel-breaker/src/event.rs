use std::time::Duration;

use keel_core::Outcome;

use crate::{Rejected, State};

/// Why a breaker changed state.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum TransitionReason {
    /// `count` failures in a row reached the consecutive-failures threshold.
    ConsecutiveFailures {
        /// The run of failures.
        count: u32,
    },
    /// The failure rate over the window reached its threshold.
    FailureRate {
        /// The measured rate (0..=1).
        rate: f64,
        /// The calls it was measured over.
        calls: u32,
    },
    /// The slow-call rate over the window reached its threshold.
    SlowCallRate {
        /// The measured rate (0..=1).
        rate: f64,
        /// The calls it was measured over.
        calls: u32,
    },
    /// The open duration elapsed; probes may go through.
    OpenDurationElapsed,
    /// A probe failed (or was slow) in half-open.
    ProbeFailed,
    /// Enough probes succeeded in half-open.
    ProbesSucceeded {
        /// How many succeeded.
        successes: u32,
    },
    /// Half-open waited its maximum without enough probes finishing.
    HalfOpenTimeout,
    /// [`force_open`](crate::CircuitBreaker::force_open),
    /// [`disable`](crate::CircuitBreaker::disable) or
    /// [`reset`](crate::CircuitBreaker::reset).
    Manual,
}

impl TransitionReason {
    /// A short, stable label.
    pub const fn as_str(&self) -> &'static str {
        match self {
            TransitionReason::ConsecutiveFailures { .. } => "consecutive_failures",
            TransitionReason::FailureRate { .. } => "failure_rate",
            TransitionReason::SlowCallRate { .. } => "slow_call_rate",
            TransitionReason::OpenDurationElapsed => "open_duration_elapsed",
            TransitionReason::ProbeFailed => "probe_failed",
            TransitionReason::ProbesSucceeded { .. } => "probes_succeeded",
            TransitionReason::HalfOpenTimeout => "half_open_timeout",
            TransitionReason::Manual => "manual",
        }
    }
}

/// Something a breaker did, as delivered to a [`BreakerListener`].
///
/// Events borrow from the breaker, so delivering one never allocates.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum BreakerEvent<'a> {
    /// The breaker moved from one state to another.
    StateTransition {
        /// The breaker's name.
        breaker: &'a str,
        /// The state it left.
        from: State,
        /// The state it entered.
        to: State,
        /// Why.
        reason: TransitionReason,
        /// How long it stays open, when `to` is [`State::Open`].
        open_for: Option<Duration>,
    },
    /// The breaker refused a call.
    Rejected {
        /// The breaker's name.
        breaker: &'a str,
        /// The rejection returned to the caller.
        rejected: &'a Rejected,
    },
    /// A call took at least the slow-call threshold.
    SlowCall {
        /// The breaker's name.
        breaker: &'a str,
        /// How long the call took.
        duration: Duration,
        /// The configured threshold.
        threshold: Duration,
        /// How the call ended.
        outcome: Outcome,
    },
}

impl BreakerEvent<'_> {
    /// The name of the breaker the event comes from.
    pub fn breaker(&self) -> &str {
        match self {
            BreakerEvent::StateTransition { breaker, .. }
            | BreakerEvent::Rejected { breaker, .. }
            | BreakerEvent::SlowCall { breaker, .. } => breaker,
        }
    }
}

/// Receives a breaker's events, synchronously, on the thread that caused
/// them. Keep it fast (count, log, or hand off to a channel) and never call
/// back into a breaker that might block. Transitions are delivered after the
/// breaker's internal lock is released, so reading the breaker's state or
/// statistics from a listener is fine.
///
/// Closures `Fn(&BreakerEvent<'_>)` implement it.
pub trait BreakerListener: Send + Sync + 'static {
    /// Called once per event.
    fn on_event(&self, event: &BreakerEvent<'_>);
}

impl<F> BreakerListener for F
where
    F: Fn(&BreakerEvent<'_>) + Send + Sync + 'static,
{
    fn on_event(&self, event: &BreakerEvent<'_>) {
        self(event);
    }
}
