//! The recovery schedule as a pure function of the attempt count and the
//! clock: when the next attempt runs, when a VM stops being retried, when a
//! run of failures is forgotten. Kept apart from the VM task so every rule
//! is tested under paused tokio time.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::Timings;

/// What comes after a failure (or a failed attempt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Recover at this instant.
    RecoverAt(Instant),
    /// Out of attempts: needs intervention; a late recovery at this
    /// instant, if enabled.
    Intervention { late: Option<Instant> },
}

/// The schedule of one VM.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    pub(crate) timings: Timings,
    pub(crate) max_retries: u32,
    pub(crate) late_recovery: Option<Duration>,
}

impl Policy {
    /// The attempt count to carry into a new failure: zero when the process
    /// ran at least the stable period since it was started (kubelet's
    /// CrashLoopBackOff reset), else `attempts`.
    pub(crate) fn carried(&self, attempts: u32, started: Option<Instant>, now: Instant) -> u32 {
        match started {
            Some(s) if now.saturating_duration_since(s) >= self.timings.stable_period => 0,
            _ => attempts,
        }
    }

    /// After `attempts` attempts in this run of failures: the next attempt
    /// after its backoff, or intervention once `max_retries` are spent.
    pub(crate) fn next(&self, attempts: u32, now: Instant) -> Step {
        if attempts >= self.max_retries {
            Step::Intervention {
                late: self.late_recovery.map(|d| now + d),
            }
        } else {
            Step::RecoverAt(now + self.timings.backoff_before(attempts + 1))
        }
    }

    /// After a failed late recovery: the next one.
    pub(crate) fn after_late(&self, now: Instant) -> Step {
        Step::Intervention {
            late: self.late_recovery.map(|d| now + d),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            timings: Timings::default(),
            max_retries: 3,
            late_recovery: Some(Duration::from_secs(1800)),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_at_0_30_90_s_then_intervention_and_late_recovery_every_30_min() {
        let p = policy();
        let t0 = Instant::now();
        let mut attempts = 0;
        let mut ran = Vec::new();
        loop {
            match p.next(attempts, Instant::now()) {
                Step::RecoverAt(at) => {
                    tokio::time::sleep_until(at).await;
                    ran.push(Instant::now().duration_since(t0).as_secs());
                    attempts += 1;
                }
                Step::Intervention { late } => {
                    assert_eq!(late, Some(Instant::now() + Duration::from_secs(1800)));
                    break;
                }
            }
        }
        assert_eq!(ran, [0, 30, 90]);
        let now = Instant::now();
        assert_eq!(
            p.after_late(now),
            Step::Intervention {
                late: Some(now + Duration::from_secs(1800))
            }
        );
        let off = Policy {
            late_recovery: None,
            ..p
        };
        assert_eq!(off.next(3, now), Step::Intervention { late: None });
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_of_failures_is_forgotten_after_the_stable_period() {
        let p = policy();
        let started = Instant::now();
        tokio::time::advance(Duration::from_secs(599)).await;
        assert_eq!(p.carried(2, Some(started), Instant::now()), 2);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(p.carried(2, Some(started), Instant::now()), 0);
        assert_eq!(p.carried(2, None, Instant::now()), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_backoff_caps_at_five_minutes() {
        let p = Policy {
            max_retries: 10,
            ..policy()
        };
        let now = Instant::now();
        let waits: Vec<u64> = (0..8)
            .map(|n| match p.next(n, now) {
                Step::RecoverAt(at) => at.duration_since(now).as_secs(),
                Step::Intervention { .. } => u64::MAX,
            })
            .collect();
        assert_eq!(waits, [0, 30, 60, 120, 240, 300, 300, 300]);
        assert!(matches!(p.next(10, now), Step::Intervention { .. }));
    }
}
