//! Property tests: for any mix of durations, failures and panics, the
//! parallel executor respects its limit, reports every item once in input
//! order, and schedules exactly like a greedy list scheduler.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use keel_exec::{ExecError, ParallelExecutor, Status};
use proptest::prelude::*;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Ok,
    Err,
    Panic,
}

fn arb_kind() -> impl Strategy<Value = Kind> {
    prop_oneof![8 => Just(Kind::Ok), 2 => Just(Kind::Err), 1 => Just(Kind::Panic)]
}

/// Makespan of starting items in order, each on the earliest free slot.
fn greedy_makespan(durations: &[u64], slots: usize) -> u64 {
    let mut free: BinaryHeap<Reverse<u64>> = (0..slots).map(|_| Reverse(0)).collect();
    let mut end = 0;
    for d in durations {
        let Reverse(start) = free.pop().expect("at least one slot");
        end = end.max(start + d);
        free.push(Reverse(start + d));
    }
    end
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn executor_matches_the_model(
        limit in 1usize..8,
        items in proptest::collection::vec((0u64..50, arb_kind()), 0..40),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let now = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let exec = ParallelExecutor::with_concurrency(limit).unwrap();
        let report = rt.block_on(exec.run(items.clone(), |(ms, kind)| {
            let now = now.clone();
            let max = max.clone();
            async move {
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                max.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                match kind {
                    Kind::Ok => Ok(ms),
                    Kind::Err => Err(ms),
                    Kind::Panic => panic!("boom"),
                }
            }
        }));
        prop_assert!(max.load(Ordering::SeqCst) <= limit);
        prop_assert_eq!(report.total(), items.len());
        let counts = report.counts();
        prop_assert_eq!(counts.succeeded + counts.failed + counts.timed_out + counts.cancelled, counts.total);
        for (i, ((ms, kind), r)) in items.iter().zip(report.items()).enumerate() {
            prop_assert_eq!(r.index, i);
            prop_assert_eq!(r.duration, Duration::from_millis(*ms));
            match (kind, &r.result) {
                (Kind::Ok, Ok(v)) => prop_assert_eq!(v, ms),
                (Kind::Err, Err(ExecError::Failed(v))) => prop_assert_eq!(v, ms),
                (Kind::Panic, Err(e)) => prop_assert!(e.is_panic()),
                (k, other) => prop_assert!(false, "item {} ({:?}) ended as {:?}", i, k, other),
            }
        }
        let ok = items.iter().filter(|(_, k)| matches!(k, Kind::Ok)).count();
        prop_assert_eq!(report.counts().get(Status::Succeeded), ok);
        let durations: Vec<u64> = items.iter().map(|(ms, _)| *ms).collect();
        prop_assert_eq!(
            report.wall_time(),
            Duration::from_millis(greedy_makespan(&durations, limit))
        );
    }
}
