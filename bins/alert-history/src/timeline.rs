//! One alert's timeline: time spent firing and flap count, from its events.

use std::collections::BTreeMap;

use crate::model::Status;

/// The part of an event the timeline math needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    /// Firing or resolved.
    pub status: Status,
    /// `startsAt`, epoch ms.
    pub starts_at: i64,
    /// `endsAt`, epoch ms (meaningful for resolved events).
    pub ends_at: i64,
}

/// Time spent firing and status changes of one alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Total milliseconds spent firing.
    pub firing_ms: i64,
    /// Status changes between consecutive events in time order.
    pub flaps: u64,
    /// Firing periods (distinct `startsAt`).
    pub periods: u64,
}

/// Computes [`Stats`] from an alert's events in time order (event time,
/// then id), at `now_ms`.
///
/// A firing period is identified by its `startsAt`. It ends at the
/// `endsAt` of its resolved event; a period never resolved (Alertmanager
/// lost it, or it is still firing) ends where the next period starts, or
/// at `now_ms` for the last one. Periods are clamped so they never overlap
/// and never count negative time.
pub fn stats(points: &[Point], now_ms: i64) -> Stats {
    let flaps = points
        .windows(2)
        .filter(|pair| pair[0].status != pair[1].status)
        .count() as u64;
    // startsAt -> resolved endsAt (if any).
    let mut periods: BTreeMap<i64, Option<i64>> = BTreeMap::new();
    for p in points {
        let entry = periods.entry(p.starts_at).or_insert(None);
        if p.status == Status::Resolved {
            *entry = Some(entry.map_or(p.ends_at, |e: i64| e.max(p.ends_at)));
        }
    }
    let starts: Vec<i64> = periods.keys().copied().collect();
    let mut firing_ms = 0i64;
    for (i, (start, end)) in periods.iter().enumerate() {
        let limit = starts.get(i + 1).copied().unwrap_or(i64::MAX);
        let end = end.unwrap_or(if i + 1 < starts.len() { limit } else { now_ms });
        let end = end.min(limit);
        firing_ms = firing_ms.saturating_add((end - start).max(0));
    }
    Stats {
        firing_ms,
        flaps,
        periods: periods.len() as u64,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn firing(start: i64) -> Point {
        Point {
            status: Status::Firing,
            starts_at: start,
            ends_at: 0,
        }
    }
    fn resolved(start: i64, end: i64) -> Point {
        Point {
            status: Status::Resolved,
            starts_at: start,
            ends_at: end,
        }
    }

    #[test]
    fn resolved_periods_add_up() {
        let s = stats(
            &[firing(0), resolved(0, 10), firing(20), resolved(20, 25)],
            100,
        );
        assert_eq!(
            s,
            Stats {
                firing_ms: 15,
                flaps: 3,
                periods: 2
            }
        );
    }

    #[test]
    fn still_firing_counts_until_now() {
        let s = stats(&[firing(0), resolved(0, 10), firing(50)], 80);
        assert_eq!(s.firing_ms, 10 + 30);
        assert_eq!(s.flaps, 2);
    }

    #[test]
    fn lost_resolution_ends_at_next_start() {
        let s = stats(&[firing(0), firing(40), resolved(40, 45)], 1000);
        assert_eq!(s.firing_ms, 40 + 5);
        assert_eq!(s.flaps, 1);
    }

    #[test]
    fn resolution_without_firing_still_counts() {
        assert_eq!(stats(&[resolved(5, 9)], 100).firing_ms, 4);
        assert_eq!(stats(&[], 100), Stats::default());
    }

    proptest! {
        #[test]
        fn firing_time_is_bounded(
            mut starts in proptest::collection::vec(0i64..10_000, 0..20),
            lens in proptest::collection::vec(proptest::option::of(0i64..5_000), 20),
            now in 10_000i64..20_000,
        ) {
            starts.sort_unstable();
            starts.dedup();
            let mut points = Vec::new();
            for (s, len) in starts.iter().zip(&lens) {
                points.push(firing(*s));
                if let Some(len) = len {
                    points.push(resolved(*s, s + len));
                }
            }
            let st = stats(&points, now);
            let first = starts.first().copied().unwrap_or(now);
            // Never more than the span from the first start to the latest
            // known instant, never negative.
            let latest = points.iter().map(|p| p.ends_at.max(p.starts_at)).max().unwrap_or(now).max(now);
            prop_assert!(st.firing_ms >= 0);
            prop_assert!(st.firing_ms <= latest - first);
            prop_assert_eq!(st.periods as usize, starts.len());
            // Flaps: F R F R ... each resolution is a change, and so is each
            // firing that follows a resolution.
            let resolved: Vec<bool> = lens.iter().take(starts.len()).map(Option::is_some).collect();
            let count = resolved.iter().filter(|r| **r).count() as u64;
            let last = u64::from(resolved.last().copied().unwrap_or(false));
            prop_assert_eq!(st.flaps, (2 * count).saturating_sub(last));
        }
    }
}
