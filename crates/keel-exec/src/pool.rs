//! A long-lived pool of workers taking prioritized jobs until shut down.
//!
//! The executors fan one operation out over a collection and return; a
//! program that keeps handing work to a bounded set of workers (the
//! watchdog's API calls, the supervisor's recoveries) needs a standing pool
//! instead: [`WorkerPool`].
//!
//! # How it works
//! `n` worker tasks share one queue: a mutex over one FIFO per
//! [`Priority`]. A worker takes the oldest job of the highest priority,
//! runs it to the end, and takes the next. A submitted job wakes one idle
//! worker. The queue is bounded: when it is full, a new job sheds the
//! newest waiting job of the lowest priority below its own, or is refused
//! when every waiting job is of its priority or higher (the rule of
//! keel-breaker's `Bulkhead`).

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use keel_core::Priority;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::{ConfigError, Panicked};
#[cfg(feature = "metrics")]
use crate::metrics::PoolMetrics;

/// The default number of workers.
pub const DEFAULT_WORKERS: usize = 4;
/// The default bound of the queue of waiting jobs.
pub const DEFAULT_QUEUE: usize = 1024;

/// A bounded set of workers taking prioritized jobs until shut down.
///
/// * **Priorities**: a waiting [`Priority::Critical`] job runs before every
///   waiting lower one, FIFO within a priority.
/// * **Bounded queue**: at most [`queue`](WorkerPoolBuilder::queue) jobs
///   wait; a full queue sheds its lowest priority first ([`JobError::Shed`])
///   or refuses the new job ([`JobRejected`]).
/// * **Panic isolation**: a panicking job fails its own handle with
///   [`JobError::Panicked`]; its worker goes on with the next job.
/// * **Bounded drain**: [`shutdown`](Self::shutdown) refuses new jobs, lets
///   the workers finish the running and waiting jobs within a time bound,
///   abandons the rest ([`JobError::Abandoned`]) and reports what happened.
///
/// Jobs are futures spawned nowhere but on the pool's own worker tasks, so
/// they must be `Send + 'static`. Costs per job: one boxed future, one
/// oneshot channel and one small shared flag; taking a job is a short lock.
///
/// ```
/// use std::time::Duration;
/// use keel_exec::{Priority, WorkerPool};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = WorkerPool::builder().workers(2).queue(100).build()?;
/// let restart = pool.submit(Priority::Critical, async { "vm-7 restarted" })?;
/// let report = pool.submit(Priority::Low, async { 42 })?;
/// assert_eq!(restart.await?, "vm-7 restarted");
/// assert_eq!(report.await?, 42);
/// let drained = pool.shutdown(Duration::from_secs(10)).await;
/// assert_eq!(drained.abandoned, 0);
/// # Ok(())
/// # }
/// ```
pub struct WorkerPool {
    shared: Arc<Shared>,
    /// The worker tasks, until shutdown takes them.
    workers: Mutex<Vec<JoinHandle<()>>>,
    size: usize,
}

/// Builds a [`WorkerPool`]. Defaults: [`DEFAULT_WORKERS`] workers, a queue
/// of [`DEFAULT_QUEUE`] jobs.
#[derive(Debug, Clone)]
#[must_use = "call `build()` to get a pool"]
pub struct WorkerPoolBuilder {
    workers: usize,
    queue: usize,
    #[cfg(feature = "metrics")]
    metrics: Option<PoolMetrics>,
}

impl Default for WorkerPoolBuilder {
    fn default() -> Self {
        WorkerPoolBuilder {
            workers: DEFAULT_WORKERS,
            queue: DEFAULT_QUEUE,
            #[cfg(feature = "metrics")]
            metrics: None,
        }
    }
}

impl WorkerPoolBuilder {
    /// At most `n` jobs run at once, one per worker (must be at least 1).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// At most `jobs` wait for a worker (must be at least 1).
    pub fn queue(mut self, jobs: usize) -> Self {
        self.queue = jobs;
        self
    }

    /// Records the pool's jobs, queue and running count in `metrics`.
    #[cfg(feature = "metrics")]
    pub fn metrics(mut self, metrics: PoolMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Validates the settings and starts the workers.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the field: `workers` or `queue` of 0.
    ///
    /// # Panics
    /// Outside a tokio runtime (the workers are tokio tasks).
    pub fn build(self) -> Result<WorkerPool, ConfigError> {
        if self.workers == 0 {
            return Err(ConfigError::new("workers", "must be at least 1"));
        }
        if self.queue == 0 {
            return Err(ConfigError::new("queue", "must be at least 1"));
        }
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            bound: self.queue,
            work: Notify::new(),
            tally: Arc::new(Tally {
                #[cfg(feature = "metrics")]
                metrics: self.metrics,
                ..Tally::default()
            }),
        });
        let workers = (0..self.workers)
            .map(|_| tokio::spawn(work(Arc::clone(&shared))))
            .collect();
        Ok(WorkerPool {
            shared,
            workers: Mutex::new(workers),
            size: self.workers,
        })
    }
}

/// The pool refused a job: its queue was full of jobs of the same priority
/// or higher, or the pool is shutting down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", if *.closed { "worker pool is shutting down" } else { "worker pool queue is full" })]
#[non_exhaustive]
pub struct JobRejected {
    /// The refused job's priority.
    pub priority: Priority,
    /// `true` when the pool was shutting down; `false` when its queue was
    /// full.
    pub closed: bool,
}

/// Why a submitted job produced no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// The job panicked; its worker went on with the next job.
    #[error(transparent)]
    Panicked(Panicked),
    /// The job waited in a full queue and was dropped, without running, to
    /// make room for a higher-priority one.
    #[error("job shed for a higher-priority one")]
    Shed,
    /// The pool shut down (or was dropped) before the job finished: it
    /// never started, or it was cut at the end of the drain.
    #[error("job abandoned at shutdown")]
    Abandoned,
}

/// The result of a submitted job, as a future. Dropping the handle does not
/// cancel the job.
#[must_use = "the handle is the only way to learn the job's result"]
pub struct JobHandle<T> {
    result: oneshot::Receiver<Result<T, Panicked>>,
    fate: Arc<AtomicBool>,
    priority: Priority,
}

impl<T> JobHandle<T> {
    /// The priority the job was submitted with.
    pub fn priority(&self) -> Priority {
        self.priority
    }
}

impl<T> fmt::Debug for JobHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobHandle")
            .field("priority", &self.priority)
            .finish_non_exhaustive()
    }
}

impl<T> Future for JobHandle<T> {
    type Output = Result<T, JobError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(match std::task::ready!(self.result.poll_unpin(cx)) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(panic)) => Err(JobError::Panicked(panic)),
            // The job was dropped before it finished.
            Err(_) if self.fate.load(Ordering::Acquire) => Err(JobError::Shed),
            Err(_) => Err(JobError::Abandoned),
        })
    }
}

/// What [`WorkerPool::shutdown`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Jobs that finished (returned or panicked) during the drain: running
    /// or waiting when shutdown began.
    pub completed: u64,
    /// Jobs dropped when the drain bound passed: still waiting, or cut
    /// while running.
    pub abandoned: u64,
    /// How long the drain took (at most the bound, plus the time to cut the
    /// workers).
    pub elapsed: Duration,
}

/// What a [`WorkerPool`] holds and did since it was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct PoolStats {
    /// Jobs waiting for a worker now.
    pub queued: usize,
    /// Jobs running now.
    pub running: usize,
    /// Jobs accepted.
    pub submitted: u64,
    /// Jobs that returned a value.
    pub completed: u64,
    /// Jobs that panicked.
    pub panicked: u64,
    /// Waiting jobs shed for higher-priority ones.
    pub shed: u64,
    /// Jobs refused at submission.
    pub rejected: u64,
    /// Jobs abandoned at shutdown.
    pub abandoned: u64,
}

impl WorkerPool {
    /// A builder with the defaults (see [`WorkerPoolBuilder`]).
    pub fn builder() -> WorkerPoolBuilder {
        WorkerPoolBuilder::default()
    }

    /// Queues `job` at `priority`; a worker runs it when every waiting job
    /// of a higher priority, and every earlier one of the same priority,
    /// has been taken.
    ///
    /// # Errors
    /// [`JobRejected`] when the pool is shutting down, or when the queue is
    /// full and holds no job of a lower priority to shed.
    pub fn submit<F, T>(&self, priority: Priority, job: F) -> Result<JobHandle<T>, JobRejected>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let fate = Arc::new(AtomicBool::new(false));
        let tally = Arc::clone(&self.shared.tally);
        let run = async move {
            let result = AssertUnwindSafe(job).catch_unwind().await;
            tally.finished(result.is_err());
            // The caller may have dropped the handle: nobody to tell.
            let _ = tx.send(result.map_err(Panicked::from_payload));
        };
        let queued = Job {
            run: Box::pin(run),
            shed: Arc::clone(&fate),
        };
        let shared = &*self.shared;
        let victim = {
            let mut queue = shared.lock();
            if queue.closed {
                drop(queue);
                return Err(shared.reject(priority, true));
            }
            let victim = if queue.len() >= shared.bound {
                // Shed the newest waiting job of the lowest priority below
                // this one's.
                let lowest = queue.by_priority[..priority.index()]
                    .iter_mut()
                    .find(|q| !q.is_empty());
                match lowest.and_then(VecDeque::pop_back) {
                    Some(victim) => Some(victim),
                    None => {
                        drop(queue);
                        return Err(shared.reject(priority, false));
                    }
                }
            } else {
                None
            };
            queue.by_priority[priority.index()].push_back(queued);
            victim
        };
        shared
            .tally
            .counts
            .submitted
            .fetch_add(1, Ordering::Relaxed);
        if let Some(victim) = victim {
            victim.shed.store(true, Ordering::Release);
            shared.tally.counts.shed.fetch_add(1, Ordering::Relaxed);
            shared.tally.on_shed();
            tracing::debug!(priority = %priority, "worker pool queue full: shed a lower-priority job");
            // Dropped outside the lock: the job's captures run their drops.
            drop(victim);
        } else {
            shared.tally.on_queued();
        }
        shared.work.notify_one();
        Ok(JobHandle {
            result: rx,
            fate,
            priority,
        })
    }

    /// Jobs waiting, running, and counted so far.
    pub fn stats(&self) -> PoolStats {
        let c = &self.shared.tally.counts;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PoolStats {
            queued: self.shared.lock().len(),
            running: self.shared.tally.running.load(Ordering::Relaxed),
            submitted: load(&c.submitted),
            completed: load(&c.completed),
            panicked: load(&c.panicked),
            shed: load(&c.shed),
            rejected: load(&c.rejected),
            abandoned: load(&c.abandoned),
        }
    }

    /// The number of workers the pool was built with.
    pub fn workers(&self) -> usize {
        self.size
    }

    /// Stops taking jobs and drains: the workers finish the running jobs
    /// and take the waiting ones, by priority, until none is left or
    /// `drain` has passed. Then every job still running is cut (dropped)
    /// and every job still waiting is dropped; their handles resolve to
    /// [`JobError::Abandoned`]. Submissions from the moment this is called
    /// are refused (`JobRejected { closed: true, .. }`), so the pool can be
    /// shared (`Arc<WorkerPool>`) with the tasks that submit, and shut down
    /// by whoever handles the signal. A second call has nothing to drain.
    pub async fn shutdown(&self, drain: Duration) -> ShutdownReport {
        let started = Instant::now();
        let shared = Arc::clone(&self.shared);
        let finished =
            |c: &Counters| c.completed.load(Ordering::Relaxed) + c.panicked.load(Ordering::Relaxed);
        let before = {
            let mut queue = shared.lock();
            queue.closed = true;
            finished(&shared.tally.counts)
        };
        // Idle workers wake, find the queue closed and empty, and exit.
        shared.work.notify_waiters();
        let mut workers =
            std::mem::take(&mut *self.workers.lock().unwrap_or_else(PoisonError::into_inner));
        if workers.is_empty() {
            return ShutdownReport::default();
        }
        let joined = tokio::time::timeout(drain, async {
            // A joined worker leaves the list, so the ones left after the
            // bound are exactly those still running (a handle must not be
            // awaited again once it has completed).
            while let Some(worker) = workers.last_mut() {
                // A worker never panics (jobs are caught); a cancelled one
                // has nothing to report.
                let _ = worker.await;
                workers.pop();
            }
        })
        .await
        .is_ok();
        if !joined {
            for worker in &workers {
                worker.abort();
            }
            for worker in workers {
                let _ = worker.await;
            }
        }
        // Cut while running: the aborted workers never got to count them.
        let cut = shared.tally.running.swap(0, Ordering::Relaxed);
        let waiting: Vec<Job> = {
            let mut queue = shared.lock();
            queue
                .by_priority
                .iter_mut()
                .flat_map(|q| q.drain(..))
                .collect()
        };
        let waiting_count = waiting.len();
        let abandoned = (cut + waiting_count) as u64;
        drop(waiting);
        shared
            .tally
            .counts
            .abandoned
            .fetch_add(abandoned, Ordering::Relaxed);
        shared.tally.on_abandoned(cut, waiting_count);
        let report = ShutdownReport {
            completed: finished(&shared.tally.counts) - before,
            abandoned,
            elapsed: started.elapsed(),
        };
        tracing::info!(
            completed = report.completed,
            abandoned = report.abandoned,
            elapsed = ?report.elapsed,
            "worker pool shut down"
        );
        report
    }
}

impl Drop for WorkerPool {
    /// A pool dropped without [`shutdown`](Self::shutdown) cuts its workers
    /// at once; every unfinished job is abandoned.
    fn drop(&mut self) {
        let workers = self
            .workers
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if workers.is_empty() {
            return;
        }
        self.shared.lock().closed = true;
        for worker in workers.iter() {
            worker.abort();
        }
    }
}

impl fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerPool")
            .field("workers", &self.size)
            .field("queue_bound", &self.shared.bound)
            .field("stats", &self.stats())
            .finish()
    }
}

/// A queued job: the job wrapped so it reports its result to its handle.
struct Job {
    run: BoxFuture<'static, ()>,
    /// Set when the job is shed, so its handle can say so.
    shed: Arc<AtomicBool>,
}

#[derive(Default)]
struct Queue {
    by_priority: [VecDeque<Job>; 4],
    closed: bool,
}

impl Queue {
    fn len(&self) -> usize {
        self.by_priority.iter().map(VecDeque::len).sum()
    }

    /// The best job: the highest priority, the oldest within it.
    fn pop_best(&mut self) -> Option<Job> {
        self.by_priority
            .iter_mut()
            .rev()
            .find_map(VecDeque::pop_front)
    }
}

#[derive(Default)]
struct Counters {
    submitted: AtomicU64,
    completed: AtomicU64,
    panicked: AtomicU64,
    shed: AtomicU64,
    rejected: AtomicU64,
    abandoned: AtomicU64,
}

struct Shared {
    queue: Mutex<Queue>,
    bound: usize,
    /// Wakes idle workers: one per submitted job, all at shutdown.
    work: Notify,
    /// Shared with every job's wrapper, which counts its own end before it
    /// tells its handle (so a caller that saw the result sees the count).
    tally: Arc<Tally>,
}

/// What the pool counts, and the one place it reports to metrics.
#[derive(Default)]
struct Tally {
    /// Jobs running now; raised under the queue's lock when a job is taken,
    /// so shutdown sees every job as waiting or running.
    running: AtomicUsize,
    counts: Counters,
    #[cfg(feature = "metrics")]
    metrics: Option<PoolMetrics>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reject(&self, priority: Priority, closed: bool) -> JobRejected {
        self.tally.counts.rejected.fetch_add(1, Ordering::Relaxed);
        self.tally.on_rejected();
        JobRejected { priority, closed }
    }

    /// Takes the best waiting job, or says the worker should exit (`Err`)
    /// or wait (`Ok(None)`).
    fn take(&self) -> Result<Option<Job>, ()> {
        let mut queue = self.lock();
        match queue.pop_best() {
            Some(job) => {
                self.tally.running.fetch_add(1, Ordering::Relaxed);
                Ok(Some(job))
            }
            None if queue.closed => Err(()),
            None => Ok(None),
        }
    }
}

impl Tally {
    /// A job returned (or panicked): counted before its handle is told.
    fn finished(&self, panicked: bool) {
        self.running.fetch_sub(1, Ordering::Relaxed);
        if panicked {
            self.counts.panicked.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("worker pool job panicked");
        } else {
            self.counts.completed.fetch_add(1, Ordering::Relaxed);
        }
        self.on_finished(panicked);
    }

    // Metrics (no-ops without them).

    fn on_rejected(&self) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.job_rejected();
        }
    }

    fn on_queued(&self) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.job_queued();
        }
    }

    fn on_shed(&self) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.job_shed();
        }
    }

    fn on_started(&self) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.job_started();
        }
    }

    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    fn on_finished(&self, panicked: bool) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.job_finished(panicked);
        }
    }

    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    fn on_abandoned(&self, running: usize, waiting: usize) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.jobs_abandoned(running, waiting);
        }
    }
}

/// One worker: takes jobs until the pool closes and its queue is empty.
async fn work(shared: Arc<Shared>) {
    loop {
        // Register for a wake-up before looking at the queue, so a job
        // submitted (or a shutdown begun) in between is not missed.
        let mut notified = pin!(shared.work.notified());
        notified.as_mut().enable();
        let job = match shared.take() {
            Err(()) => return,
            Ok(None) => {
                notified.await;
                continue;
            }
            Ok(Some(job)) => job,
        };
        shared.tally.on_started();
        job.run.await;
    }
}
