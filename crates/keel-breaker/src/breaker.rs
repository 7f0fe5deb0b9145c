use std::fmt;
use std::future::Future;
use std::time::Duration;

use keel_core::{Classify, Outcome, classify};
use tokio::time::Instant;

use crate::config::open_duration_for;
use crate::counters::{self, Counters};
use crate::event::{BreakerEvent, TransitionReason};
use crate::permit::{Kind, OwnedPermit, Permit, Token};
use crate::sync::{self, Arc, AtomicU32, AtomicU64, Mutex, Ordering};
use crate::window::{self, CountWindow, Counts, TimeWindow};
use crate::{BreakerConfig, BreakerError, CircuitOpen, Rejected, State, Stats, Totals, Window};

/// The state word is `epoch << 3 | state code`. Every transition bumps the
/// epoch, so a permit can tell whether the breaker moved since it was
/// issued (its result is then stale and ignored by the state machine).
const STATE_BITS: u32 = 3;

#[inline]
fn state_of(word: u64) -> State {
    State::from_code(word)
}

#[inline]
fn epoch_of(word: u64) -> u64 {
    word >> STATE_BITS
}

// The half-open word: [epoch: 32][probes in flight: 16][probe successes: 16].
// It carries the (low 32 bits of the) epoch it belongs to, so a stale probe
// permit can never release a slot of a later half-open period.
const PROBE_ONE: u64 = 1 << 16;

#[inline]
fn half_open_epoch(word: u64) -> u32 {
    (word >> 32) as u32
}

#[inline]
fn probes_in_flight(word: u64) -> u32 {
    ((word >> 16) & 0xFFFF) as u32
}

#[inline]
fn probe_successes(word: u64) -> u32 {
    (word & 0xFFFF) as u32
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

pub(crate) enum WindowImpl {
    Count(CountWindow),
    Time(TimeWindow),
}

/// The shared state of one breaker.
pub(crate) struct Inner {
    name: std::sync::Arc<str>,
    config: BreakerConfig,
    origin: Instant,
    /// Read the clock when a permit is issued (the slow-call rule times
    /// calls) and when it is recorded (slow-call rule or time window);
    /// otherwise the closed path never touches the clock.
    clock_on_acquire: bool,
    clock_on_record: bool,
    state: AtomicU64,
    open_until: AtomicU64,
    half_open: AtomicU64,
    half_open_since: AtomicU64,
    consecutive: AtomicU32,
    opens: AtomicU32,
    window: Option<WindowImpl>,
    /// Serialises transitions (rare). The call path never takes it unless
    /// the call itself causes or observes a due transition.
    transition_lock: Mutex<()>,
    transitions: [AtomicU64; 5],
    counters: Counters,
}

/// A circuit breaker.
///
/// Cheap to clone (one `Arc`): clones share one state machine, so hand a
/// clone to every task that calls the same dependency. `Send + Sync`.
///
/// * [`call`](Self::call) / [`call_classified`](Self::call_classified) wrap
///   a future;
/// * [`try_acquire`](Self::try_acquire) returns a [`Permit`] for callers that
///   classify results themselves; dropping the permit without recording
///   counts the call as neutral;
/// * [`state`](Self::state) and [`stats`](Self::stats) read the breaker
///   synchronously at any time;
/// * [`force_open`](Self::force_open), [`disable`](Self::disable) and
///   [`reset`](Self::reset) steer it by hand.
///
/// Cost while closed (the common case), with the default count window: an
/// atomic load of the state, one of the window summary, one relaxed
/// increment of a per-thread counter stripe, and no allocation, lock or
/// clock read. A failure, or a success while the window still holds
/// failures, adds one `fetch_add` and one `swap`.
#[derive(Clone)]
pub struct CircuitBreaker {
    inner: Arc<Inner>,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.inner.name)
            // The raw state: formatting must not apply transitions (and call
            // listeners) as a side effect.
            .field("state", &state_of(self.inner.state.load(Ordering::Acquire)))
            .finish_non_exhaustive()
    }
}

impl CircuitBreaker {
    /// A breaker named `name` (used in rejections, events, logs and metric
    /// labels) with a validated configuration.
    pub fn new(name: impl Into<String>, config: BreakerConfig) -> Self {
        let name: std::sync::Arc<str> = std::sync::Arc::from(name.into());
        let window = if config.uses_window() {
            Some(match config.window {
                Window::Count { size } => WindowImpl::Count(CountWindow::new(size)),
                Window::Time { duration, buckets } => {
                    WindowImpl::Time(TimeWindow::new(nanos(duration / buckets).max(1), buckets))
                }
            })
        } else {
            None
        };
        let clock_on_acquire = config.slow_call.is_some();
        let clock_on_record = clock_on_acquire || matches!(window, Some(WindowImpl::Time(_)));
        let origin = config.clock.now();
        CircuitBreaker {
            inner: Arc::new(Inner {
                name,
                origin,
                clock_on_acquire,
                clock_on_record,
                state: AtomicU64::new(State::Closed.code()),
                open_until: AtomicU64::new(0),
                half_open: AtomicU64::new(0),
                half_open_since: AtomicU64::new(0),
                consecutive: AtomicU32::new(0),
                opens: AtomicU32::new(0),
                window,
                transition_lock: Mutex::new(()),
                transitions: Default::default(),
                counters: Counters::default(),
                config,
            }),
        }
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &BreakerConfig {
        &self.inner.config
    }

    /// The current state. Applies a due time-based transition first (open
    /// duration elapsed, half-open maximum wait exceeded), so a health
    /// endpoint sees what the next call would see.
    pub fn state(&self) -> State {
        let word = self.inner.state.load(Ordering::Acquire);
        match state_of(word) {
            State::Open | State::HalfOpen => state_of(self.inner.poll_timers(word)),
            state => state,
        }
    }

    /// A snapshot of the breaker's statistics.
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    /// Asks for permission to make one call, with a permit that borrows the
    /// breaker: the cheapest form, for synchronous code and futures that
    /// do not outlive the breaker. In async code that spawns tasks or
    /// builds `'static` futures, use [`try_acquire_owned`](Self::try_acquire_owned).
    ///
    /// On success the [`Permit`] must be told how the call went
    /// ([`Permit::record`]); dropping it unrecorded (the caller's future was
    /// cancelled) counts as neutral and frees its probe slot.
    /// On rejection, the [`Rejected`] carries the remaining open time.
    #[inline]
    pub fn try_acquire(&self) -> Result<Permit<'_>, Rejected> {
        self.inner
            .acquire()
            .map(|token| Permit::new(&self.inner, token))
    }

    /// Asks for permission to make one call, with a permit that owns a
    /// reference to the breaker (one reference-count increment more than
    /// [`try_acquire`](Self::try_acquire)): the form to use in async code,
    /// since it can move into a spawned task or a `'static` future (tower
    /// response futures). Recording and dropping work as for [`Permit`].
    pub fn try_acquire_owned(&self) -> Result<OwnedPermit, Rejected> {
        self.inner
            .acquire()
            .map(|token| OwnedPermit::new(self.inner.clone(), token))
    }

    /// Runs `fut` through the breaker: `Ok` is a success, `Err` a failure.
    ///
    /// If the breaker rejects, `fut` is dropped without being polled and the
    /// result is [`BreakerError::Rejected`]. If the returned future is
    /// dropped before `fut` completes, the call counts as neutral: caller
    /// cancellation never trips a breaker.
    pub async fn call<F, T, E>(&self, fut: F) -> Result<T, BreakerError<E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        self.call_classified(classify::Default, fut).await
    }

    /// Runs `fut` through the breaker and lets `classifier` decide what its
    /// result means ([`Outcome::Neutral`] results do not change any
    /// statistic; [`Outcome::Overloaded`] counts as a failure).
    pub async fn call_classified<C, F, T, E>(
        &self,
        classifier: C,
        fut: F,
    ) -> Result<T, BreakerError<E>>
    where
        C: Classify<T, E>,
        F: Future<Output = Result<T, E>>,
    {
        let permit = self.try_acquire().map_err(BreakerError::Rejected)?;
        let result = fut.await;
        permit.record(classifier.classify(&result));
        result.map_err(BreakerError::Inner)
    }

    /// Opens the breaker until [`reset`](Self::reset) (or
    /// [`disable`](Self::disable)): every call is rejected, with no
    /// retry-after. In-flight permits become stale.
    pub fn force_open(&self) {
        self.inner.manual(State::ForcedOpen);
    }

    /// Switches the breaker off until [`reset`](Self::reset) (or
    /// [`force_open`](Self::force_open)): every call is admitted (subject to
    /// the bulkhead) and no outcome is counted against the trip rules.
    pub fn disable(&self) {
        self.inner.manual(State::Disabled);
    }

    /// Closes the breaker and clears its window, failure run and open
    /// growth (the cumulative [`Totals`] are kept). In-flight permits become
    /// stale.
    pub fn reset(&self) {
        self.inner.manual(State::Closed);
    }

    #[cfg(all(test, loom))]
    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }
}

enum Poll {
    /// Take this permit.
    Admit(Token),
    /// Reject with this.
    Reject(Rejected),
}

impl Inner {
    #[inline]
    fn now_nanos(&self) -> u64 {
        nanos(
            self.config
                .clock
                .now()
                .saturating_duration_since(self.origin),
        )
    }

    /// Issues a permit or a rejection.
    #[inline]
    pub(crate) fn acquire(&self) -> Result<Token, Rejected> {
        let word = self.state.load(Ordering::Acquire);
        if state_of(word) == State::Closed {
            let start = if self.clock_on_acquire {
                self.now_nanos()
            } else {
                0
            };
            return Ok(Token::new(word, Kind::Closed, start));
        }
        self.acquire_slow(word)
    }

    #[cold]
    fn acquire_slow(&self, mut word: u64) -> Result<Token, Rejected> {
        loop {
            let poll = match state_of(word) {
                State::Closed => self.admit(word, Kind::Closed),
                State::Disabled => self.admit(word, Kind::Passthrough),
                State::ForcedOpen => {
                    Some(Poll::Reject(self.open_rejection(State::ForcedOpen, None)))
                }
                State::Open => {
                    let now = self.now_nanos();
                    let until = self.open_until.load(Ordering::Acquire);
                    if now >= until {
                        self.transition(
                            word,
                            State::HalfOpen,
                            TransitionReason::OpenDurationElapsed,
                        );
                        None
                    } else {
                        let left = Duration::from_nanos(until - now);
                        Some(Poll::Reject(self.open_rejection(State::Open, Some(left))))
                    }
                }
                State::HalfOpen => self.admit_probe(word),
            };
            match poll {
                Some(Poll::Admit(token)) => return Ok(token),
                Some(Poll::Reject(rejected)) => {
                    self.on_rejected(&rejected);
                    return Err(rejected);
                }
                None => word = self.state.load(Ordering::Acquire),
            }
        }
    }

    fn admit(&self, word: u64, kind: Kind) -> Option<Poll> {
        let start = if self.clock_on_acquire {
            self.now_nanos()
        } else {
            0
        };
        Some(Poll::Admit(Token::new(word, kind, start)))
    }

    /// Half-open: take a probe slot, or time out back to open.
    fn admit_probe(&self, word: u64) -> Option<Poll> {
        let now = self.now_nanos();
        let since = self.half_open_since.load(Ordering::Acquire);
        if now.saturating_sub(since) >= nanos(self.config.half_open_max_wait) {
            self.transition(word, State::Open, TransitionReason::HalfOpenTimeout);
            return None;
        }
        let epoch = epoch_of(word) as u32;
        let mut current = self.half_open.load(Ordering::Acquire);
        loop {
            if half_open_epoch(current) != epoch {
                // The breaker moved on since `word` was read.
                return None;
            }
            if probes_in_flight(current) >= self.config.half_open_max_probes {
                return Some(Poll::Reject(self.open_rejection(State::HalfOpen, None)));
            }
            match self.half_open.compare_exchange_weak(
                current,
                current + PROBE_ONE,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        Some(Poll::Admit(Token::new(word, Kind::Probe, now)))
    }

    /// Frees a probe slot of half-open period `epoch`, counting a success
    /// when `succeeded`. Returns the successes so far, or `None` when that
    /// period is over (the permit is stale).
    fn release_probe(&self, epoch: u32, succeeded: bool) -> Option<u32> {
        let mut current = self.half_open.load(Ordering::Acquire);
        loop {
            if half_open_epoch(current) != epoch || probes_in_flight(current) == 0 {
                return None;
            }
            let mut next = current - PROBE_ONE;
            if succeeded && probe_successes(current) < 0xFFFF {
                next += 1;
            }
            match self.half_open.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(probe_successes(next)),
                Err(actual) => current = actual,
            }
        }
    }

    fn open_rejection(&self, state: State, retry_after: Option<Duration>) -> Rejected {
        Rejected::CircuitOpen(CircuitOpen {
            name: self.name.clone(),
            state,
            retry_after,
        })
    }

    #[cold]
    fn on_rejected(&self, rejected: &Rejected) {
        let kind = match rejected {
            Rejected::CircuitOpen(open) => match open.state {
                State::HalfOpen => counters::REJECTED_HALF_OPEN,
                State::ForcedOpen => counters::REJECTED_FORCED_OPEN,
                _ => counters::REJECTED_OPEN,
            },
        };
        self.counters.add(kind);
        tracing::debug!(
            breaker = %self.name,
            reason = rejected.reason(),
            retry_after = ?rejected.retry_after(),
            "call rejected"
        );
        self.emit(&BreakerEvent::Rejected {
            breaker: &self.name,
            rejected,
        });
    }

    /// Records how a permitted call went. Called exactly once per permit.
    #[inline]
    pub(crate) fn complete(&self, token: &Token, outcome: Outcome) {
        if outcome.is_neutral() {
            self.counters.add(counters::NEUTRAL);
            if token.kind() == Kind::Probe {
                self.release_probe(epoch_of(token.word) as u32, false);
            }
            return;
        }
        let failed = outcome.is_failure();
        self.counters.add(if failed {
            counters::FAILURE
        } else {
            counters::SUCCESS
        });
        let mut end = 0;
        let mut slow = false;
        if let Some(rule) = self.config.slow_call {
            end = self.now_nanos();
            let took = Duration::from_nanos(end.saturating_sub(token.start));
            if took >= rule.threshold {
                slow = true;
                self.on_slow(took, rule.threshold, outcome);
            }
        } else if self.clock_on_record && token.kind() == Kind::Closed {
            end = self.now_nanos();
        }
        match token.kind() {
            Kind::Closed => self.complete_closed(token.word, failed, slow, end),
            Kind::Probe => self.complete_probe(token.word, failed || slow),
            Kind::Passthrough => {}
        }
    }

    #[inline]
    fn complete_closed(&self, word: u64, failed: bool, slow: bool, end: u64) {
        if self.state.load(Ordering::Acquire) != word {
            // The breaker moved since the permit was issued: this result
            // belongs to a period that is over.
            return;
        }
        let mut trip = None;
        if let Some(threshold) = self.config.consecutive_failures {
            // N in a row means N in a row: the minimum-calls gate is the
            // rate rules' (a run of N is already N calls).
            if failed {
                let run = self.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
                if run >= threshold {
                    trip = Some(TransitionReason::ConsecutiveFailures { count: run });
                }
            } else if self.consecutive.load(Ordering::Relaxed) != 0 {
                self.consecutive.store(0, Ordering::Relaxed);
            }
        }
        if let Some(window) = &self.window {
            let code = window::RECORDED
                | if failed { window::FAILED } else { 0 }
                | if slow { window::SLOW } else { 0 };
            let counts = match window {
                WindowImpl::Count(w) => w.record(code),
                WindowImpl::Time(w) => w.record(end, code),
            };
            if trip.is_none() {
                trip = counts.and_then(|c| self.evaluate(c));
            }
        }
        if let Some(reason) = trip {
            self.transition(word, State::Open, reason);
        }
    }

    fn evaluate(&self, counts: Counts) -> Option<TransitionReason> {
        if counts.calls < self.config.minimum_calls {
            return None;
        }
        if let Some(threshold) = self.config.failure_rate {
            let rate = counts.failure_rate();
            if rate >= threshold {
                return Some(TransitionReason::FailureRate {
                    rate,
                    calls: counts.calls,
                });
            }
        }
        if let Some(rule) = self.config.slow_call {
            let rate = counts.slow_rate();
            if rate >= rule.rate {
                return Some(TransitionReason::SlowCallRate {
                    rate,
                    calls: counts.calls,
                });
            }
        }
        None
    }

    fn complete_probe(&self, word: u64, failed: bool) {
        let Some(successes) = self.release_probe(epoch_of(word) as u32, !failed) else {
            return;
        };
        if failed {
            self.transition(word, State::Open, TransitionReason::ProbeFailed);
        } else if successes >= self.config.half_open_successes {
            self.transition(
                word,
                State::Closed,
                TransitionReason::ProbesSucceeded { successes },
            );
        }
    }

    #[cold]
    fn on_slow(&self, took: Duration, threshold: Duration, outcome: Outcome) {
        self.counters.add(counters::SLOW);
        tracing::debug!(
            breaker = %self.name,
            duration = ?took,
            threshold = ?threshold,
            outcome = outcome.as_str(),
            "slow call"
        );
        self.emit(&BreakerEvent::SlowCall {
            breaker: &self.name,
            duration: took,
            threshold,
            outcome,
        });
    }

    /// Applies due time-based transitions; returns the resulting word.
    fn poll_timers(&self, mut word: u64) -> u64 {
        loop {
            match state_of(word) {
                State::Open => {
                    if self.now_nanos() < self.open_until.load(Ordering::Acquire) {
                        return word;
                    }
                    self.transition(word, State::HalfOpen, TransitionReason::OpenDurationElapsed);
                }
                State::HalfOpen => {
                    let since = self.half_open_since.load(Ordering::Acquire);
                    if self.now_nanos().saturating_sub(since)
                        < nanos(self.config.half_open_max_wait)
                    {
                        return word;
                    }
                    self.transition(word, State::Open, TransitionReason::HalfOpenTimeout);
                }
                _ => return word,
            }
            word = self.state.load(Ordering::Acquire);
        }
    }

    /// Moves from the exact state word `from` to `to`. Returns `false` (and
    /// does nothing) when another thread moved the breaker first.
    pub(crate) fn transition(&self, from: u64, to: State, reason: TransitionReason) -> bool {
        let guard = sync::lock(&self.transition_lock);
        if self.state.load(Ordering::Acquire) != from {
            return false;
        }
        let open_for = self.enter(from, to);
        drop(guard);
        self.on_transition(state_of(from), to, reason, open_for);
        true
    }

    fn manual(&self, to: State) {
        let guard = sync::lock(&self.transition_lock);
        let from = self.state.load(Ordering::Acquire);
        let open_for = self.enter(from, to);
        drop(guard);
        if state_of(from) != to {
            self.on_transition(state_of(from), to, TransitionReason::Manual, open_for);
        }
    }

    /// Enters `to`. Must hold the transition lock. Everything a reader of
    /// the new state needs is written before the state word is published
    /// with `Release`.
    fn enter(&self, from: u64, to: State) -> Option<Duration> {
        let epoch = epoch_of(from).wrapping_add(1) & (u64::MAX >> STATE_BITS);
        let mut open_for = None;
        match to {
            State::Open => {
                let opens = self.opens.load(Ordering::Relaxed).saturating_add(1);
                self.opens.store(opens, Ordering::Relaxed);
                let duration =
                    open_duration_for(self.config.open_duration, self.config.open_growth, opens);
                self.open_until.store(
                    self.now_nanos().saturating_add(nanos(duration)),
                    Ordering::Release,
                );
                open_for = Some(duration);
            }
            State::HalfOpen => {
                self.half_open
                    .store(u64::from(epoch as u32) << 32, Ordering::Release);
                self.half_open_since
                    .store(self.now_nanos(), Ordering::Release);
            }
            State::Closed => {
                match &self.window {
                    Some(WindowImpl::Count(w)) => w.reset(),
                    Some(WindowImpl::Time(w)) => w.reset(),
                    None => {}
                }
                self.consecutive.store(0, Ordering::Relaxed);
                self.opens.store(0, Ordering::Relaxed);
            }
            State::ForcedOpen | State::Disabled => {}
        }
        self.state
            .store((epoch << STATE_BITS) | to.code(), Ordering::Release);
        self.transitions[to.code() as usize].fetch_add(1, Ordering::Relaxed);
        open_for
    }

    fn on_transition(
        &self,
        from: State,
        to: State,
        reason: TransitionReason,
        open_for: Option<Duration>,
    ) {
        match to {
            State::Open | State::ForcedOpen => tracing::warn!(
                breaker = %self.name,
                %from,
                %to,
                reason = reason.as_str(),
                open_for = ?open_for,
                "circuit breaker opened"
            ),
            _ => tracing::info!(
                breaker = %self.name,
                %from,
                %to,
                reason = reason.as_str(),
                "circuit breaker state changed"
            ),
        }
        self.emit(&BreakerEvent::StateTransition {
            breaker: &self.name,
            from,
            to,
            reason,
            open_for,
        });
    }

    fn emit(&self, event: &BreakerEvent<'_>) {
        for listener in &self.config.listeners {
            listener.on_event(event);
        }
    }

    fn stats(&self) -> Stats {
        let word = self.poll_timers(self.state.load(Ordering::Acquire));
        let state = state_of(word);
        let counts = match &self.window {
            Some(WindowImpl::Count(w)) => w.counts(),
            Some(WindowImpl::Time(w)) => w.counts(self.now_nanos()),
            None => Counts::default(),
        };
        let retry_after = (state == State::Open).then(|| {
            let until = self.open_until.load(Ordering::Acquire);
            Duration::from_nanos(until.saturating_sub(self.now_nanos()))
        });
        let half_open = self.half_open.load(Ordering::Acquire);
        let (probes, successes) =
            if state == State::HalfOpen && half_open_epoch(half_open) == epoch_of(word) as u32 {
                (probes_in_flight(half_open), probe_successes(half_open))
            } else {
                (0, 0)
            };
        let c = &self.counters;
        Stats {
            state,
            window_calls: counts.calls,
            window_failures: counts.failures,
            window_slow_calls: counts.slow,
            consecutive_failures: self.consecutive.load(Ordering::Relaxed),
            consecutive_opens: self.opens.load(Ordering::Relaxed),
            retry_after,
            half_open_probes_in_flight: probes,
            half_open_successes: successes,
            totals: Totals {
                successes: c.get(counters::SUCCESS),
                failures: c.get(counters::FAILURE),
                neutral: c.get(counters::NEUTRAL),
                slow: c.get(counters::SLOW),
                rejected_open: c.get(counters::REJECTED_OPEN),
                rejected_half_open: c.get(counters::REJECTED_HALF_OPEN),
                rejected_forced_open: c.get(counters::REJECTED_FORCED_OPEN),
                transitions: std::array::from_fn(|i| self.transitions[i].load(Ordering::Relaxed)),
            },
        }
    }

    #[cfg(all(test, loom))]
    pub(crate) fn window_consistent(&self) -> bool {
        match &self.window {
            Some(WindowImpl::Count(w)) => w.counts() == w.recount(),
            _ => true,
        }
    }

    #[cfg(all(test, loom))]
    pub(crate) fn half_open_word(&self) -> u64 {
        self.half_open.load(Ordering::Acquire)
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
