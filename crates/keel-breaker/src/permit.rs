use std::fmt;

use keel_core::{Classify, Outcome};

use crate::breaker::Inner;
use crate::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Issued while closed: the outcome feeds the trip rules.
    Closed,
    /// Issued while half-open: holds a probe slot.
    Probe,
    /// Issued while disabled: only counted.
    Passthrough,
}

/// What a permit remembers about its admission. Three words, all `u64`:
/// narrow fields here made the permit's moves hit store-forwarding stalls
/// on the hot path (a byte written, then a word read over it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Token {
    /// The state word when the permit was issued (state and epoch).
    pub(crate) word: u64,
    /// Nanoseconds since the breaker's origin, when the breaker times calls;
    /// 0 otherwise.
    pub(crate) start: u64,
    /// [`Kind`] in the low two bits, then [`DONE`].
    flags: u64,
}

const KIND_MASK: u64 = 0b11;
/// The outcome was recorded.
const DONE: u64 = 0b100;

impl Token {
    #[inline]
    pub(crate) fn new(word: u64, kind: Kind, start: u64) -> Self {
        let kind = match kind {
            Kind::Closed => 0,
            Kind::Probe => 1,
            Kind::Passthrough => 2,
        };
        Token {
            word,
            start,
            flags: kind,
        }
    }

    #[inline]
    pub(crate) fn kind(&self) -> Kind {
        match self.flags & KIND_MASK {
            0 => Kind::Closed,
            1 => Kind::Probe,
            _ => Kind::Passthrough,
        }
    }

    #[inline]
    fn done(&self) -> bool {
        self.flags & DONE != 0
    }

    #[inline]
    fn mark_done(&mut self) {
        self.flags |= DONE;
    }
}

/// Permission to make one call through a [`CircuitBreaker`](crate::CircuitBreaker),
/// borrowed from it.
///
/// Record the call's outcome with [`record`](Self::record) (or a shortcut).
/// Dropping the permit unrecorded (for instance because the caller's future
/// was cancelled) counts the call as [`Outcome::Neutral`]: it frees the
/// bulkhead or half-open probe slot and never counts as a failure.
///
/// A result recorded after the breaker changed state (opened, was reset...)
/// is stale: it is counted in [`Totals`](crate::Totals) but does not feed the
/// trip rules or the half-open probes of a later period.
#[must_use = "drop the permit only when the call was abandoned (it then counts as neutral)"]
pub struct Permit<'a> {
    inner: &'a Inner,
    token: Token,
}

impl<'a> Permit<'a> {
    #[inline]
    pub(crate) fn new(inner: &'a Inner, token: Token) -> Self {
        Permit { inner, token }
    }

    /// Records how the call went. [`Outcome::Overloaded`] counts as a
    /// failure; [`Outcome::Neutral`] changes no statistic.
    #[inline]
    pub fn record(mut self, outcome: Outcome) {
        self.token.mark_done();
        self.inner.complete(&self.token, outcome);
    }

    /// Records a success.
    #[inline]
    pub fn record_success(self) {
        self.record(Outcome::Success);
    }

    /// Records a failure.
    #[inline]
    pub fn record_failure(self) {
        self.record(Outcome::Failure);
    }

    /// Records the outcome `classifier` gives `result`.
    #[inline]
    pub fn record_result<T, E, C: Classify<T, E>>(self, classifier: &C, result: &Result<T, E>) {
        self.record(classifier.classify(result));
    }

    /// `true` when this permit is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.token.kind() == Kind::Probe
    }
}

impl Drop for Permit<'_> {
    #[inline]
    fn drop(&mut self) {
        if !self.token.done() {
            self.inner.complete(&self.token, Outcome::Neutral);
        }
    }
}

impl fmt::Debug for Permit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("kind", &self.token.kind())
            .finish_non_exhaustive()
    }
}

/// A [`Permit`] that owns a reference to its breaker, for `'static`
/// futures. Same contract: record once, or drop to count as neutral.
#[must_use = "drop the permit only when the call was abandoned (it then counts as neutral)"]
pub struct OwnedPermit {
    inner: Arc<Inner>,
    token: Token,
}

impl OwnedPermit {
    pub(crate) fn new(inner: Arc<Inner>, token: Token) -> Self {
        OwnedPermit { inner, token }
    }

    /// Records how the call went (see [`Permit::record`]).
    pub fn record(mut self, outcome: Outcome) {
        self.token.mark_done();
        self.inner.complete(&self.token, outcome);
    }

    /// Records a success.
    pub fn record_success(self) {
        self.record(Outcome::Success);
    }

    /// Records a failure.
    pub fn record_failure(self) {
        self.record(Outcome::Failure);
    }

    /// Records the outcome `classifier` gives `result`.
    pub fn record_result<T, E, C: Classify<T, E>>(self, classifier: &C, result: &Result<T, E>) {
        self.record(classifier.classify(result));
    }

    /// `true` when this permit is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.token.kind() == Kind::Probe
    }
}

impl Drop for OwnedPermit {
    fn drop(&mut self) {
        if !self.token.done() {
            self.inner.complete(&self.token, Outcome::Neutral);
        }
    }
}

impl fmt::Debug for OwnedPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedPermit")
            .field("kind", &self.token.kind())
            .finish_non_exhaustive()
    }
}
