//! The run's memory, kept as one annotation on the Deployment: what the
//! last acting run did (pods, time, spread before), whether the next run
//! found the spread improved, how often each strategy did not help, and
//! whether a run is acting right now (the lock).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The annotation's key.
pub const RECORD_ANNOTATION: &str = "pod-rebalancer.keel.dev/last-run";

/// A lock older than this is stale (its run died): a new run may take it.
pub const LOCK_TTL: Duration = Duration::from_secs(15 * 60);

/// The most the cooldown is doubled for a strategy that did not help.
pub const MAX_BACKOFF_DOUBLINGS: u32 = 3;

/// `acting` while a run holds the lock, `done` after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// A run is evicting pods.
    Acting,
    /// The last run finished.
    Done,
}

/// The annotation's JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Acting or done.
    pub state: State,
    /// The run that wrote it.
    pub holder: String,
    /// When (lock taken, or last action).
    pub at: DateTime<Utc>,
    /// The strategy that acted.
    pub strategy: String,
    /// Pods rotated.
    #[serde(default)]
    pub pods: Vec<String>,
    /// CV of CPU before acting.
    #[serde(default)]
    pub spread_before: Option<f64>,
    /// Whether a later run has compared the spread.
    #[serde(default)]
    pub verified: bool,
    /// Per strategy: consecutive actions that did not reduce the spread.
    #[serde(default)]
    pub failures: BTreeMap<String, u32>,
}

/// What the outcome verification found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verification {
    /// The pods the last action rotated.
    pub pods: Vec<String>,
    /// When.
    pub at: DateTime<Utc>,
    /// CV of CPU then.
    pub spread_before: f64,
    /// CV of CPU now.
    pub spread_after: f64,
    /// Whether it went down.
    pub improved: bool,
}

impl Record {
    /// Parses the annotation of a Deployment object, if present and valid.
    pub fn from_deployment(deployment: &k8s_openapi::api::apps::v1::Deployment) -> Option<Record> {
        let text = deployment
            .metadata
            .annotations
            .as_ref()?
            .get(RECORD_ANNOTATION)?;
        match serde_json::from_str(text) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "ignoring an unreadable {RECORD_ANNOTATION} annotation");
                None
            }
        }
    }

    /// The JSON text.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Whether another run holds the lock now.
    pub fn locked_by_other(&self, me: &str, now: DateTime<Utc>) -> bool {
        self.state == State::Acting && self.holder != me && !elapsed(self.at, now, LOCK_TTL)
    }

    /// The cooldown for `strategy`: doubled for each action of it that did
    /// not help, at most [`MAX_BACKOFF_DOUBLINGS`] times.
    pub fn cooldown(&self, strategy: &str, base: Duration) -> Duration {
        let failures = self.failures.get(strategy).copied().unwrap_or(0);
        base * 2u32.pow(failures.min(MAX_BACKOFF_DOUBLINGS))
    }

    /// Whether the cooldown after the last action still runs.
    pub fn cooling_down(&self, strategy: &str, base: Duration, now: DateTime<Utc>) -> bool {
        !self.pods.is_empty() && !elapsed(self.at, now, self.cooldown(strategy, base))
    }

    /// Compares the spread now with the one recorded, once: marks the
    /// record verified and counts a failure (or clears them) for its
    /// strategy. `None` when there is nothing to verify.
    pub fn verify(&mut self, spread_now: Option<f64>) -> Option<Verification> {
        if self.verified || self.pods.is_empty() || self.state != State::Done {
            return None;
        }
        let (before, after) = (self.spread_before?, spread_now?);
        let improved = after < before;
        self.verified = true;
        let failures = self.failures.entry(self.strategy.clone()).or_insert(0);
        // Saturating: the count comes from an annotation anyone with edit
        // rights on the Deployment can write (u32::MAX overflowed).
        *failures = if improved {
            0
        } else {
            failures.saturating_add(1)
        };
        Some(Verification {
            pods: self.pods.clone(),
            at: self.at,
            spread_before: before,
            spread_after: after,
            improved,
        })
    }
}

fn elapsed(since: DateTime<Utc>, now: DateTime<Utc>, d: Duration) -> bool {
    let d = chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    now.signed_duration_since(since) >= d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(state: State, at: DateTime<Utc>) -> Record {
        Record {
            state,
            holder: "a".into(),
            at,
            strategy: "composite".into(),
            pods: vec!["p".into()],
            spread_before: Some(0.6),
            verified: false,
            failures: BTreeMap::new(),
        }
    }

    #[test]
    fn lock_expires() {
        let t = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let r = record(State::Acting, t);
        assert!(r.locked_by_other("b", t + chrono::Duration::minutes(5)));
        assert!(!r.locked_by_other("a", t));
        assert!(!r.locked_by_other("b", t + chrono::Duration::minutes(15)));
        assert!(!record(State::Done, t).locked_by_other("b", t));
    }

    #[test]
    fn verification_backs_off_a_strategy_that_did_not_help() {
        let t = Utc::now();
        let base = Duration::from_secs(600);
        let mut r = record(State::Done, t);
        let v = r.verify(Some(0.7)).expect("verifies");
        assert!(!v.improved);
        assert_eq!(r.cooldown("composite", base), base * 2);
        assert!(r.verify(Some(0.1)).is_none(), "verified once only");
        r.verified = false;
        r.failures.insert("composite".into(), 9);
        assert_eq!(r.cooldown("composite", base), base * 8);
        assert!(r.verify(Some(0.1)).expect("verifies").improved);
        assert_eq!(r.cooldown("composite", base), base);
        assert!(r.cooling_down("composite", base, t + chrono::Duration::minutes(9)));
        assert!(!r.cooling_down("composite", base, t + chrono::Duration::minutes(10)));
        let json = r.to_text();
        assert_eq!(
            serde_json::from_str::<Record>(&json).expect("round trip"),
            r
        );
    }

    #[test]
    fn a_failure_count_at_its_maximum_stays_there() {
        // A count of u32::MAX in the annotation overflowed (a panic in
        // debug builds); the `k8s_objects` fuzz target's reproducer is
        // fuzz/regressions/k8s_objects/record-failures-overflow.json.
        let mut r = record(State::Done, Utc::now());
        r.failures.insert("composite".into(), u32::MAX);
        assert!(!r.verify(Some(0.7)).expect("verifies").improved);
        assert_eq!(r.failures["composite"], u32::MAX);
        let base = Duration::from_secs(600);
        assert_eq!(r.cooldown("composite", base), base * 8);
    }
}
