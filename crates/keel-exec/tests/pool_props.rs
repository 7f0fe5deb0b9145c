//! Property test: for any mix of priorities submitted while the pool's one
//! worker is busy, and any queue bound, the pool runs exactly what a model
//! priority queue (highest first, FIFO within, shed the newest of the
//! lowest priority below the newcomer's, else refuse) says, in its order.

use std::sync::{Arc, Mutex};

use keel_exec::{JobError, Priority, WorkerPool};
use proptest::prelude::*;
use tokio::sync::Notify;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Ran,
    Shed,
    Refused,
}

/// The model: returns each job's fate and the order the accepted ones run.
fn model(priorities: &[Priority], bound: usize) -> (Vec<Fate>, Vec<usize>) {
    let mut fates = vec![Fate::Ran; priorities.len()];
    let mut queues: [Vec<usize>; 4] = Default::default();
    for (job, p) in priorities.iter().enumerate() {
        let waiting: usize = queues.iter().map(Vec::len).sum();
        if waiting >= bound {
            match queues[..p.index()].iter_mut().find(|q| !q.is_empty()) {
                Some(lowest) => {
                    let victim = lowest.pop().expect("not empty");
                    fates[victim] = Fate::Shed;
                }
                None => {
                    fates[job] = Fate::Refused;
                    continue;
                }
            }
        }
        queues[p.index()].push(job);
    }
    let order = queues.iter().rev().flatten().copied().collect();
    (fates, order)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn pool_matches_the_model(
        bound in 1usize..12,
        priorities in proptest::collection::vec(
            prop::sample::select(Priority::ALL.to_vec()),
            0..30,
        ),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let (fates, order) = rt.block_on(async {
            let pool = WorkerPool::builder().workers(1).queue(bound).build().unwrap();
            // Keep the one worker busy until every job is submitted.
            let gate = Arc::new(Notify::new());
            let wait = gate.clone();
            let blocker = pool
                .submit(Priority::Critical, async move { wait.notified().await })
                .unwrap();
            while pool.stats().running == 0 {
                tokio::task::yield_now().await;
            }
            let ran = Arc::new(Mutex::new(Vec::new()));
            let handles: Vec<_> = priorities
                .iter()
                .enumerate()
                .map(|(job, p)| {
                    let ran = ran.clone();
                    pool.submit(*p, async move { ran.lock().unwrap().push(job) })
                })
                .collect();
            gate.notify_one();
            blocker.await.unwrap();
            let mut fates = Vec::new();
            for h in handles {
                fates.push(match h {
                    Err(_) => Fate::Refused,
                    Ok(h) => match h.await {
                        Ok(()) => Fate::Ran,
                        Err(JobError::Shed) => Fate::Shed,
                        Err(other) => panic!("{other:?}"),
                    },
                });
            }
            let order = ran.lock().unwrap().clone();
            (fates, order)
        });
        let (want_fates, want_order) = model(&priorities, bound);
        prop_assert_eq!(fates, want_fates);
        prop_assert_eq!(order, want_order);
    }
}
