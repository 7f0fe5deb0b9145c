use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// A monotonic clock.
///
/// `Clock::default()` (= [`Clock::tokio`]) reads [`tokio::time::Instant::now`],
/// which follows tokio's paused time in tests (`start_paused = true`,
/// `tokio::time::advance`) and is the plain monotonic clock in production.
/// [`Clock::manual`] returns a clock driven by a [`ManualClock`] handle, for
/// synchronous state machines tested without a runtime.
///
/// Cloning is cheap (at most an `Arc` clone); reading the tokio clock costs
/// what `Instant::now()` costs.
#[derive(Clone, Default)]
pub struct Clock {
    source: Source,
}

#[derive(Clone, Default)]
enum Source {
    #[default]
    Tokio,
    Manual(Arc<ManualState>),
}

struct ManualState {
    origin: Instant,
    offset_nanos: AtomicU64,
}

impl Clock {
    /// The clock that follows tokio's time (paused or real).
    pub const fn tokio() -> Self {
        Clock {
            source: Source::Tokio,
        }
    }

    /// A clock that only moves when the returned [`ManualClock`] advances it.
    pub fn manual() -> (Self, ManualClock) {
        let state = Arc::new(ManualState {
            origin: Instant::now(),
            offset_nanos: AtomicU64::new(0),
        });
        (
            Clock {
                source: Source::Manual(state.clone()),
            },
            ManualClock { state },
        )
    }

    /// The current instant.
    #[inline]
    pub fn now(&self) -> Instant {
        match &self.source {
            Source::Tokio => Instant::now(),
            Source::Manual(state) => state.now(),
        }
    }

    /// `true` when this clock is driven by hand.
    pub fn is_manual(&self) -> bool {
        matches!(self.source, Source::Manual(_))
    }

    /// `true` when both read the same time: both tokio's, or clones of one
    /// manual clock.
    ///
    /// ```
    /// use keel_core::Clock;
    /// let (manual, _hand) = Clock::manual();
    /// assert!(Clock::tokio().same_as(&Clock::default()));
    /// assert!(manual.same_as(&manual.clone()));
    /// assert!(!manual.same_as(&Clock::tokio()));
    /// assert!(!manual.same_as(&Clock::manual().0));
    /// ```
    pub fn same_as(&self, other: &Clock) -> bool {
        match (&self.source, &other.source) {
            (Source::Tokio, Source::Tokio) => true,
            (Source::Manual(a), Source::Manual(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Source::Tokio => f.write_str("Clock::Tokio"),
            Source::Manual(state) => f
                .debug_struct("Clock::Manual")
                .field("elapsed", &state.elapsed())
                .finish(),
        }
    }
}

impl ManualState {
    fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.offset_nanos.load(Ordering::Acquire))
    }

    fn now(&self) -> Instant {
        self.origin + self.elapsed()
    }
}

/// The handle that moves a manual [`Clock`]. Cloning shares the same time.
#[derive(Clone)]
pub struct ManualClock {
    state: Arc<ManualState>,
}

impl ManualClock {
    /// Moves the clock forward by `by`. Time never goes backwards.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.state.offset_nanos.fetch_add(nanos, Ordering::AcqRel);
    }

    /// The instant the clock reads now.
    pub fn now(&self) -> Instant {
        self.state.now()
    }

    /// How far the clock has been advanced since it was created.
    pub fn elapsed(&self) -> Duration {
        self.state.elapsed()
    }

    /// A [`Clock`] that reads this handle's time.
    pub fn clock(&self) -> Clock {
        Clock {
            source: Source::Manual(self.state.clone()),
        }
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("elapsed", &self.elapsed())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let (clock, handle) = Clock::manual();
        let t0 = clock.now();
        assert_eq!(clock.now(), t0);
        handle.advance(Duration::from_millis(1500));
        assert_eq!(clock.now() - t0, Duration::from_millis(1500));
        assert_eq!(handle.clock().now(), clock.now());
        assert!(clock.is_manual());
        assert_eq!(handle.elapsed(), Duration::from_millis(1500));
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let clock = Clock::tokio();
        let t0 = clock.now();
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(clock.now() - t0, Duration::from_secs(30));
        assert!(!clock.is_manual());
    }
}
