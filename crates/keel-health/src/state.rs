use std::fmt;

/// The health of a target as the checker judges it.
///
/// Every target starts [`Unknown`](HealthState::Unknown): nothing has been
/// checked yet, and a status endpoint should say so rather than guess. The
/// first verdict moves it:
///
/// * one success makes an `Unknown` target `Healthy` (there is nothing to
///   recover from, so the recovery threshold does not apply);
/// * `failure_threshold` consecutive failures make an `Unknown` or `Healthy`
///   target `Unhealthy`;
/// * `recovery_threshold` consecutive successes make an `Unhealthy` target
///   `Healthy` again.
///
/// A target never returns to `Unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum HealthState {
    /// Not yet judged: no success and fewer failures than the threshold.
    Unknown,
    /// Passing its checks.
    Healthy,
    /// Failed `failure_threshold` checks in a row and has not recovered.
    Unhealthy,
}

impl HealthState {
    /// A short lowercase name (`unknown`, `healthy`, `unhealthy`), usable as a
    /// metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Unknown => "unknown",
            HealthState::Healthy => "healthy",
            HealthState::Unhealthy => "unhealthy",
        }
    }
}

impl fmt::Display for HealthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The threshold state machine of one target: its state and its current run
/// of successes or failures (one of the two is always zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Streaks {
    pub(crate) state: HealthState,
    pub(crate) successes: u32,
    pub(crate) failures: u32,
}

impl Streaks {
    pub(crate) const fn new() -> Self {
        Streaks {
            state: HealthState::Unknown,
            successes: 0,
            failures: 0,
        }
    }

    /// Records one check result under the given thresholds and returns the
    /// previous state when the state changed.
    ///
    /// Thresholds are compared with `>=`, so lowering a threshold at run time
    /// takes effect at the next result even if the streak is already past it.
    pub(crate) fn record(
        &mut self,
        ok: bool,
        failure_threshold: u32,
        recovery_threshold: u32,
    ) -> Option<HealthState> {
        let old = self.state;
        if ok {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
            match self.state {
                HealthState::Unknown => self.state = HealthState::Healthy,
                HealthState::Unhealthy if self.successes >= recovery_threshold => {
                    self.state = HealthState::Healthy;
                }
                _ => {}
            }
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
            if self.state != HealthState::Unhealthy && self.failures >= failure_threshold {
                self.state = HealthState::Unhealthy;
            }
        }
        (self.state != old).then_some(old)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn starts_unknown_and_one_success_is_enough() {
        let mut s = Streaks::new();
        assert_eq!(s.state, HealthState::Unknown);
        assert_eq!(s.record(true, 3, 5), Some(HealthState::Unknown));
        assert_eq!(s.state, HealthState::Healthy);
    }

    #[test]
    fn unknown_needs_the_failure_threshold_to_become_unhealthy() {
        let mut s = Streaks::new();
        assert_eq!(s.record(false, 3, 2), None);
        assert_eq!(s.record(false, 3, 2), None);
        assert_eq!(s.state, HealthState::Unknown);
        assert_eq!(s.record(false, 3, 2), Some(HealthState::Unknown));
        assert_eq!(s.state, HealthState::Unhealthy);
    }

    #[test]
    fn a_success_breaks_a_failure_run() {
        let mut s = Streaks::new();
        s.record(true, 2, 2);
        s.record(false, 2, 2);
        s.record(true, 2, 2);
        s.record(false, 2, 2);
        assert_eq!(s.state, HealthState::Healthy);
        assert_eq!(s.record(false, 2, 2), Some(HealthState::Healthy));
        s.record(true, 2, 2);
        s.record(false, 2, 2);
        assert_eq!(s.state, HealthState::Unhealthy);
        s.record(true, 2, 2);
        assert_eq!(s.record(true, 2, 2), Some(HealthState::Unhealthy));
    }

    #[test]
    fn lowering_a_threshold_applies_at_the_next_result() {
        let mut s = Streaks::new();
        s.record(true, 10, 10);
        for _ in 0..5 {
            assert_eq!(s.record(false, 10, 10), None);
        }
        // Threshold lowered to 3 while the run is already 5 long.
        assert_eq!(s.record(false, 3, 10), Some(HealthState::Healthy));
    }

    /// The reference model: the state is decided by the tail of the history.
    fn model(history: &[bool], f: u32, r: u32) -> HealthState {
        let mut state = HealthState::Unknown;
        for (i, &ok) in history.iter().enumerate() {
            let tail = &history[..=i];
            let run = tail.iter().rev().take_while(|&&x| x == ok).count() as u32;
            state = match (state, ok) {
                (HealthState::Unknown, true) => HealthState::Healthy,
                (HealthState::Unhealthy, true) if run >= r => HealthState::Healthy,
                (HealthState::Unknown | HealthState::Healthy, false) if run >= f => {
                    HealthState::Unhealthy
                }
                (s, _) => s,
            };
        }
        state
    }

    proptest! {
        #[test]
        fn matches_the_reference_model(
            history in proptest::collection::vec(any::<bool>(), 0..200),
            f in 1u32..6,
            r in 1u32..6,
        ) {
            let mut s = Streaks::new();
            for (i, &ok) in history.iter().enumerate() {
                let before = s.state;
                let changed = s.record(ok, f, r);
                prop_assert_eq!(changed.is_some(), before != s.state);
                prop_assert_eq!(changed.unwrap_or(before), before);
                prop_assert_eq!(s.state, model(&history[..=i], f, r));
                // Exactly one streak is running.
                prop_assert!(s.successes == 0 || s.failures == 0);
                prop_assert_eq!(if ok { s.successes } else { s.failures } > 0, true);
                // Every transition is justified by the tail of the history.
                if changed.is_some() {
                    let run = history[..=i].iter().rev().take_while(|&&x| x == ok).count() as u32;
                    match s.state {
                        HealthState::Unhealthy => prop_assert!(!ok && run >= f),
                        HealthState::Healthy => prop_assert!(ok && (before == HealthState::Unknown || run >= r)),
                        HealthState::Unknown => prop_assert!(false, "never back to unknown"),
                    }
                }
            }
        }
    }
}
