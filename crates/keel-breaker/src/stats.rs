use std::time::Duration;

use crate::State;

/// A snapshot of one breaker, read synchronously with
/// [`CircuitBreaker::stats`](crate::CircuitBreaker::stats).
///
/// The fields are read one by one without stopping concurrent calls, so a
/// snapshot taken under load is consistent per field, not across fields.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    /// The state (after applying any transition that was due).
    pub state: State,
    /// Calls currently in the sliding window (0 when no rate rule is on).
    pub window_calls: u32,
    /// Failed calls in the window.
    pub window_failures: u32,
    /// Slow calls in the window.
    pub window_slow_calls: u32,
    /// The current run of failures (the consecutive-failures rule; 0 when
    /// that rule is off).
    pub consecutive_failures: u32,
    /// How many times the breaker opened since it last closed (drives the
    /// open-duration growth).
    pub consecutive_opens: u32,
    /// While open: the time left before probes may go through.
    pub retry_after: Option<Duration>,
    /// While half-open: probes in flight.
    pub half_open_probes_in_flight: u32,
    /// While half-open: probes that succeeded so far.
    pub half_open_successes: u32,
    /// Counters since the breaker was created.
    pub totals: Totals,
}

impl Stats {
    /// The failure rate in the window, or `None` when it holds no call.
    pub fn failure_rate(&self) -> Option<f64> {
        (self.window_calls > 0)
            .then(|| f64::from(self.window_failures) / f64::from(self.window_calls))
    }

    /// The slow-call rate in the window, or `None` when it holds no call.
    pub fn slow_call_rate(&self) -> Option<f64> {
        (self.window_calls > 0)
            .then(|| f64::from(self.window_slow_calls) / f64::from(self.window_calls))
    }
}

/// Monotonic counters since a breaker was created (never reset, so they can
/// be exported as Prometheus counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Totals {
    /// Calls recorded as successes.
    pub successes: u64,
    /// Calls recorded as failures (including overloads).
    pub failures: u64,
    /// Calls recorded as neutral, or whose permit was dropped unrecorded.
    pub neutral: u64,
    /// Successful or failed calls that took at least the slow-call
    /// threshold (only counted when the slow-call rule is on).
    pub slow: u64,
    /// Calls rejected because the breaker was open.
    pub rejected_open: u64,
    /// Calls rejected because half-open had every probe slot taken.
    pub rejected_half_open: u64,
    /// Calls rejected because the breaker was forced open.
    pub rejected_forced_open: u64,
    /// Transitions into each state, indexed like [`State::ALL`].
    pub transitions: [u64; 5],
}

impl Totals {
    /// Every rejection, whatever the reason.
    pub fn rejected(&self) -> u64 {
        self.rejected_open + self.rejected_half_open + self.rejected_forced_open
    }

    /// Transitions into `state`.
    pub fn transitions_to(&self, state: State) -> u64 {
        self.transitions[state.code() as usize]
    }
}
