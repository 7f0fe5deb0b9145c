//! Parallel and batch executors for fan-out work that must survive partial
//! failure, and a standing pool of workers for prioritized jobs.
//!
//! Use [`ParallelExecutor`] when one operation must run for many items at
//! once (an SSM command on every node, a health probe per VM, a Prometheus
//! query per pod) and you need to know, per item, what happened: it bounds
//! concurrency with a [`Bulkhead`] (fixed, adaptive with [`AimdConfig`], or
//! one shared with other code such as a breaker registry's preset), gives
//! each item a timeout and the whole run a deadline, stops on a shutdown
//! token, keeps a panicking item from taking anything else down, and
//! returns a [`Report`] with one result per input item (in input order),
//! counts by [`Status`], per-item durations and the wall time.
//! [`ParallelExecutor::stream`] yields the same per-item reports in
//! completion order instead.
//!
//! Use [`BatchExecutor`] when the remote API takes many items per call (EC2
//! starts, stops or terminates up to N instances at once): it splits the
//! items into batches (10 by default), makes one call per batch under a
//! timeout (5 minutes by default), and maps each batch's response back to
//! one result per item, so one bad item is reported as such and does not
//! hide the others. A failed batch can be split in halves to find the items
//! at fault ([`SplitPolicy`]).
//!
//! Use [`WorkerPool`] when a program hands work to a bounded set of workers
//! for as long as it runs (API calls, recoveries) rather than fanning one
//! operation out and returning: jobs wait in a bounded queue by
//! [`Priority`] (critical first, FIFO within a priority, the lowest shed
//! when full), a panicking job fails only its own handle, and
//! [`WorkerPool::shutdown`] drains within a bound and reports what it
//! finished and abandoned.
//!
//! # Retries, breakers, rate limits: one pipeline per item
//! The executors take a plain closure and know nothing of retry policies or
//! circuit breakers. To run each item (or each batch call) through them,
//! wrap the closure with `keel::exec::through(&pipeline, op)` from the
//! `keel` facade (features `exec` and `pipeline`): every item then goes
//! through one `keel::Pipeline` (deadline → retry → breaker → rate limiter
//! → bulkhead → attempt timeout → call), the one place that knows the
//! order, and per-item call options (priority, rate-limit key) come from
//! `keel::exec::through_with`.
//!
//! ```
//! use std::time::Duration;
//! use keel_exec::{Batch, BatchExecutor, ExecError, ParallelExecutor, Status};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), keel_exec::ConfigError> {
//! // Run a command on every node, four at a time, 30 s each, 2 min in all.
//! let exec = ParallelExecutor::builder()
//!     .concurrency(4)
//!     .item_timeout(Duration::from_secs(30))
//!     .overall_timeout(Duration::from_secs(120))
//!     .build()?;
//! let nodes = ["node-a", "node-b", "node-c", "node-d", "node-e"];
//! let report = exec
//!     .run(nodes, |node| async move {
//!         match node {
//!             "node-c" => Err(format!("{node}: k3s is not running")),
//!             "node-d" => {
//!                 // Hangs: cut off by the per-item timeout.
//!                 tokio::time::sleep(Duration::from_secs(3600)).await;
//!                 Ok("unreachable")
//!             }
//!             _ => Ok("active"),
//!         }
//!     })
//!     .await;
//! assert_eq!(report.total(), 5);
//! assert_eq!((report.succeeded(), report.failed(), report.timed_out()), (3, 1, 1));
//! assert_eq!(report.get(3).unwrap().status(), Status::TimedOut);
//! assert_eq!(report.wall_time(), Duration::from_secs(30));
//! let problems: Vec<String> = report
//!     .errors()
//!     .map(|(i, error)| format!("{}: {error}", nodes[i]))
//!     .collect();
//! assert_eq!(problems, ["node-c: operation failed", "node-d: timed out after 30s"]);
//!
//! // Start 25 instances in batches of 10; the API reports i-7 as not started.
//! let batches = BatchExecutor::builder().batch_size(10).build()?;
//! let ids: Vec<String> = (0..25).map(|i| format!("i-{i}")).collect();
//! let report = batches
//!     .run(
//!         ids,
//!         |batch: Batch<String>| async move {
//!             // One StartInstances call per batch; the answer lists the
//!             // instances that are starting.
//!             let starting: Vec<String> =
//!                 batch.iter().filter(|id| *id != "i-7").cloned().collect();
//!             Ok::<_, String>(starting)
//!         },
//!         |id, starting| {
//!             if starting.contains(id) { Ok("pending") } else { Err(format!("{id} did not start")) }
//!         },
//!     )
//!     .await;
//! assert_eq!((report.succeeded(), report.failed()), (24, 1));
//! assert!(matches!(&report.get(7).unwrap().result, Err(ExecError::Failed(e)) if e == "i-7 did not start"));
//! # Ok(())
//! # }
//! ```
//!
//! # How items run
//! Both executors drive items inside the task that awaits them (a
//! `FuturesUnordered`), without spawning: the per-item cost is one
//! allocation for the item's future, two clock reads and a bulkhead slot (a
//! few atomic operations), and the operation may borrow local state. Items therefore share that task's thread; spawn
//! inside the operation for CPU-heavy work. See `docs/PERFORMANCE.md` for
//! measured overhead against a `JoinSet` + `Semaphore` baseline.
//!
//! # Features
//! * `metrics`: `ExecMetrics`, Prometheus series for items by outcome,
//!   item durations, items in flight and the current concurrency limit;
//!   `PoolMetrics` for a worker pool's jobs, queue and running count.

mod batch;
mod config;
mod error;
mod item;
#[cfg(feature = "metrics")]
pub mod metrics;
mod observe;
mod parallel;
mod pool;
mod report;

pub use batch::{Batch, BatchExecutor};
pub use config::{
    BatchBuilder, Concurrency, DEFAULT_BATCH_CONCURRENCY, DEFAULT_BATCH_SIZE,
    DEFAULT_BATCH_TIMEOUT, DEFAULT_CONCURRENCY, ParallelBuilder, SplitPolicy,
};
pub use error::{
    BatchFailed, Cancelled, ConfigError, DeadlineExceeded, ExecError, ItemTimedOut, Panicked,
    StopReason,
};
pub use keel_breaker::{AimdConfig, Bulkhead, BulkheadFull};
pub use keel_core::Priority;
#[cfg(feature = "metrics")]
pub use metrics::{ExecMetrics, PoolMetrics};
pub use parallel::{ItemStream, ParallelExecutor};
pub use pool::{
    DEFAULT_QUEUE, DEFAULT_WORKERS, JobError, JobHandle, JobRejected, PoolStats, ShutdownReport,
    WorkerPool, WorkerPoolBuilder,
};
pub use report::{Counts, ItemReport, Report, Status};

/// The README's examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
