use std::fmt;

/// The state of a circuit breaker.
///
/// Read it at any time with [`CircuitBreaker::state`](crate::CircuitBreaker::state):
/// the read is synchronous and costs an atomic load (plus a clock read while
/// the breaker is open or half-open, to apply a due transition).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    /// Calls flow; outcomes are counted against the trip rules.
    Closed,
    /// Calls are rejected until the open duration has elapsed.
    Open,
    /// A bounded number of probe calls test whether the dependency recovered.
    HalfOpen,
    /// Opened by hand ([`CircuitBreaker::force_open`](crate::CircuitBreaker::force_open)):
    /// every call is rejected until [`reset`](crate::CircuitBreaker::reset).
    ForcedOpen,
    /// Switched off by hand ([`CircuitBreaker::disable`](crate::CircuitBreaker::disable)):
    /// every call is admitted (the bulkhead, if any, still applies) and
    /// nothing is counted against the trip rules.
    Disabled,
}

impl State {
    /// Every state, in a stable order (useful for one-hot gauges).
    pub const ALL: [State; 5] = [
        State::Closed,
        State::Open,
        State::HalfOpen,
        State::ForcedOpen,
        State::Disabled,
    ];

    /// A short, stable, lowercase name, usable as a bounded metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
            State::ForcedOpen => "forced_open",
            State::Disabled => "disabled",
        }
    }

    /// `true` for the states that reject calls unconditionally
    /// ([`State::Open`] and [`State::ForcedOpen`]).
    pub const fn is_open(self) -> bool {
        matches!(self, State::Open | State::ForcedOpen)
    }

    pub(crate) const fn code(self) -> u64 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
            State::ForcedOpen => 3,
            State::Disabled => 4,
        }
    }

    pub(crate) const fn from_code(code: u64) -> State {
        match code & 0b111 {
            0 => State::Closed,
            1 => State::Open,
            2 => State::HalfOpen,
            3 => State::ForcedOpen,
            _ => State::Disabled,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
