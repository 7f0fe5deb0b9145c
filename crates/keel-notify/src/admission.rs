//! The dedup window and the debounce: what happens to a notification before
//! it reaches the queue.
//!
//! * Dedup: once a non-critical notification with key `k` has been released
//!   to the queue, further notifications with key `k` are suppressed for the
//!   dedup window (counted, not queued). Critical notifications are never
//!   suppressed.
//! * Debounce: the first notification with key `k` of a priority that has a
//!   debounce is held for that priority's debounce time; repeats arriving
//!   while it is held replace its content (the latest state wins) and bump
//!   its count; when the time is up it is released once, carrying the count.
//!   The window is fixed from the first arrival, so a flapping alert still
//!   goes out within one debounce time.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::notification::{Notification, Priority};

/// What [`Admission::admit`] decided.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Suppressed by the dedup window.
    Deduplicated,
    /// Merged into a held notification, which now carries `count`.
    Merged { count: u32 },
    /// Held for the debounce, until `until`.
    Held { until: Instant },
    /// Goes to the queue now.
    Release(Notification),
}

#[derive(Debug)]
struct Pending {
    notification: Notification,
    count: u32,
}

/// A notification (with its collapse count) leaving the debounce.
pub(crate) type Released = (Notification, u32);

#[derive(Debug)]
pub(crate) struct Admission {
    dedup_window: Duration,
    debounce: [Duration; 3],
    max_pending: usize,
    /// Key → when its dedup window ends.
    recent: HashMap<String, Instant>,
    /// The same entries in expiry order, for pruning (stale entries are
    /// skipped: a key may be re-recorded with a later expiry).
    recent_order: VecDeque<(Instant, String)>,
    pending: HashMap<String, Pending>,
    deadlines: BTreeMap<(Instant, u64), String>,
    next_seq: u64,
}

impl Admission {
    pub(crate) fn new(dedup_window: Duration, debounce: [Duration; 3], max_pending: usize) -> Self {
        Admission {
            dedup_window,
            debounce,
            max_pending,
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
            pending: HashMap::new(),
            deadlines: BTreeMap::new(),
            next_seq: 0,
        }
    }

    fn prune(&mut self, now: Instant) {
        while let Some((expires, _)) = self.recent_order.front() {
            if *expires > now {
                break;
            }
            let (expires, key) = self.recent_order.pop_front().expect("front exists");
            if self.recent.get(&key) == Some(&expires) {
                self.recent.remove(&key);
            }
        }
    }

    pub(crate) fn admit(&mut self, notification: Notification, now: Instant) -> Decision {
        self.prune(now);
        let priority = notification.priority();
        if priority != Priority::Critical && self.recent.contains_key(notification.key()) {
            return Decision::Deduplicated;
        }
        let debounce = self.debounce[priority.lane()];
        if debounce.is_zero() {
            // No debounce for this priority (critical, by default): it goes
            // now, even when a lower-priority one with its key is held.
            return Decision::Release(notification);
        }
        if let Some(p) = self.pending.get_mut(notification.key()) {
            p.notification = notification;
            p.count = p.count.saturating_add(1);
            return Decision::Merged { count: p.count };
        }
        if self.pending.len() >= self.max_pending {
            // Too many distinct keys held: send now rather than grow without
            // bound.
            return Decision::Release(notification);
        }
        let deadline = now + debounce;
        let seq = self.next_seq;
        self.next_seq += 1;
        let key = notification.key().to_owned();
        self.deadlines.insert((deadline, seq), key.clone());
        self.pending.insert(
            key,
            Pending {
                notification,
                count: 1,
            },
        );
        Decision::Held { until: deadline }
    }

    /// Records that `notification` went to the queue at `now`: its key's
    /// dedup window starts (critical notifications open none).
    pub(crate) fn released(&mut self, notification: &Notification, now: Instant) {
        if notification.priority() == Priority::Critical || self.dedup_window.is_zero() {
            return;
        }
        let expires = now + self.dedup_window;
        self.recent.insert(notification.key().to_owned(), expires);
        self.recent_order
            .push_back((expires, notification.key().to_owned()));
    }

    /// Removes and returns the held notifications whose debounce is over,
    /// earliest first.
    pub(crate) fn due(&mut self, now: Instant) -> Vec<Released> {
        let mut out = Vec::new();
        while let Some(entry) = self.deadlines.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            let p = self
                .pending
                .remove(&key)
                .expect("deadline has a pending entry");
            out.push((p.notification, p.count));
        }
        out
    }

    /// Drops the notification held under `key`, if any (its cause ended
    /// before its debounce did). Returns whether one was held.
    pub(crate) fn withdraw(&mut self, key: &str) -> bool {
        if self.pending.remove(key).is_none() {
            return false;
        }
        self.deadlines.retain(|_, k| k != key);
        true
    }

    /// Removes and returns every held notification, earliest first.
    pub(crate) fn release_all(&mut self) -> Vec<Released> {
        let keys: Vec<String> = std::mem::take(&mut self.deadlines).into_values().collect();
        keys.into_iter()
            .map(|k| {
                let p = self
                    .pending
                    .remove(&k)
                    .expect("deadline has a pending entry");
                (p.notification, p.count)
            })
            .collect()
    }

    /// Copies of every held notification, earliest first (for a spool
    /// snapshot).
    pub(crate) fn held(&self) -> Vec<Released> {
        self.deadlines
            .values()
            .map(|k| {
                let p = &self.pending[k];
                (p.notification.clone(), p.count)
            })
            .collect()
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.keys().next().map(|(d, _)| *d)
    }

    pub(crate) fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: Duration = Duration::from_secs(1);

    fn admission() -> Admission {
        Admission::new(300 * S, [Duration::ZERO, 30 * S, 10 * S], 100)
    }

    #[tokio::test(start_paused = true)]
    async fn critical_always_released_and_never_dedups() {
        let mut a = admission();
        let now = Instant::now();
        for _ in 0..3 {
            let n = Notification::critical("vm:STOPPED", "stopped");
            assert_eq!(a.admit(n.clone(), now), Decision::Release(n.clone()));
            a.released(&n, now);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn debounce_collapses_then_dedup_suppresses() {
        let mut a = admission();
        let t0 = Instant::now();
        let w = |body: &str| Notification::warning("vm:stuck", "stuck").body(body);
        assert_eq!(a.admit(w("1"), t0), Decision::Held { until: t0 + 30 * S });
        assert_eq!(a.admit(w("2"), t0 + 10 * S), Decision::Merged { count: 2 });
        assert_eq!(a.admit(w("3"), t0 + 29 * S), Decision::Merged { count: 3 });
        assert!(a.due(t0 + 29 * S).is_empty());
        assert_eq!(a.next_deadline(), Some(t0 + 30 * S));
        let out = a.due(t0 + 30 * S);
        assert_eq!(out, vec![(w("3"), 3)], "latest state, with the count");
        a.released(&out[0].0, t0 + 30 * S);
        assert_eq!(a.admit(w("4"), t0 + 31 * S), Decision::Deduplicated);
        assert_eq!(
            a.admit(w("5"), t0 + 329 * S),
            Decision::Deduplicated,
            "window runs from the release"
        );
        assert_eq!(
            a.admit(w("6"), t0 + 330 * S),
            Decision::Held {
                until: t0 + 360 * S
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_withdrawn_notification_is_never_released() {
        let mut a = admission();
        let t0 = Instant::now();
        let w = Notification::warning("api:down", "down");
        assert!(matches!(a.admit(w.clone(), t0), Decision::Held { .. }));
        assert!(a.withdraw("api:down"));
        assert!(!a.withdraw("api:down"), "nothing held any more");
        assert_eq!(a.next_deadline(), None);
        assert!(a.due(t0 + 60 * S).is_empty());
        // Not released, so no dedup window: the next one is held again.
        assert!(matches!(a.admit(w, t0 + S), Decision::Held { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn pending_is_bounded() {
        let mut a = Admission::new(Duration::ZERO, [Duration::ZERO, S, S], 1);
        let now = Instant::now();
        assert!(matches!(
            a.admit(Notification::info("a", "a"), now),
            Decision::Held { .. }
        ));
        let b = Notification::info("b", "b");
        assert_eq!(a.admit(b.clone(), now), Decision::Release(b));
        assert_eq!(a.pending_len(), 1);
        assert_eq!(a.next_deadline(), Some(now + S));
        assert_eq!(a.release_all().len(), 1);
        assert_eq!(a.pending_len(), 0);
    }

    proptest! {
        /// Over any stream of notifications: every notification is accounted
        /// for exactly once (released, merged into a release, still held, or
        /// deduplicated); no non-critical key is released twice within the
        /// dedup window; a held notification is released no later than its
        /// debounce after its first arrival.
        #[test]
        fn accounting_and_windows(
            events in proptest::collection::vec((0u8..3, 0u8..3, 0u64..20_000), 1..120),
        ) {
            let dedup = Duration::from_secs(60);
            let debounce = [Duration::ZERO, Duration::from_secs(30), Duration::from_secs(10)];
            let mut a = Admission::new(dedup, debounce, 1_000);
            let origin = Instant::now();
            let mut now = origin;
            let mut released_count = 0u64;
            let mut deduplicated = 0u64;
            let mut last_release: HashMap<String, Instant> = HashMap::new();
            let mut first_held: HashMap<String, Instant> = HashMap::new();
            let mut release = |a: &mut Admission, n: Notification, count: u32, at: Instant,
                               released_count: &mut u64, first_held: &mut HashMap<String, Instant>|
             -> Result<(), TestCaseError> {
                if n.priority() != Priority::Critical {
                    if let Some(prev) = last_release.get(n.key()) {
                        prop_assert!(at >= *prev + dedup, "released twice within the window");
                    }
                    last_release.insert(n.key().to_owned(), at);
                }
                if let Some(first) = first_held.remove(n.key()) {
                    prop_assert!(at <= first + debounce[n.priority().lane()].max(debounce[1]));
                }
                *released_count += u64::from(count);
                a.released(&n, at);
                Ok(())
            };
            for (key, prio, gap_ms) in &events {
                let next = now + Duration::from_millis(*gap_ms);
                // Release what fell due in between, at its deadline.
                while let Some(d) = a.next_deadline() {
                    if d > next { break; }
                    for (n, c) in a.due(d) {
                        release(&mut a, n, c, d, &mut released_count, &mut first_held)?;
                    }
                }
                now = next;
                let p = [Priority::Critical, Priority::Warning, Priority::Info][*prio as usize];
                let n = Notification::new(format!("k{key}"), p, "t");
                match a.admit(n, now) {
                    Decision::Deduplicated => deduplicated += 1,
                    Decision::Merged { .. } => {}
                    Decision::Held { until } => {
                        prop_assert!(until > now);
                        first_held.insert(format!("k{key}"), now);
                    }
                    Decision::Release(n) => {
                        release(&mut a, n, 1, now, &mut released_count, &mut first_held)?;
                    }
                }
            }
            let still_held: u64 = a.held().iter().map(|(_, c)| u64::from(*c)).sum();
            prop_assert_eq!(released_count + deduplicated + still_held, events.len() as u64);
        }
    }
}
