//! The one bulkhead of Keel: at most N calls at once, waiters served by
//! priority, an optional queue bound that sheds the lowest priority first,
//! and an optional adaptive (AIMD) limit.
//!
//! # How it works
//!
//! Admission is a compare-and-swap on the in-flight count while nobody
//! waits, so an uncontended acquire and release cost a handful of atomic
//! operations and never lock. Once a waiter is queued, every newcomer goes
//! through the queue (a mutex over one FIFO per [`Priority`]), so a
//! critical call never waits behind a low one that arrived earlier, and a
//! releasing call hands its slot directly to the best waiter.
//!
//! The count of queued waiters is only changed under the queue's lock, and
//! both sides use sequentially consistent operations: a releaser decrements
//! the in-flight count and then reads the waiter count; a waiter increments
//! the waiter count and then reads the in-flight count. Whichever comes
//! second sees the other, so a slot freed while a waiter enqueues is never
//! lost. (tokio's `Semaphore` is FIFO with no priorities, and no Rust crate
//! offers priority-aware admission, so this is written here; failsafe-go's
//! `PriorityLimiter` is the model.)

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use keel_core::{ConfigError, ErrorOutcome, Outcome, Priority};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::aimd::{AimdConfig, AimdLimit, Sample};

/// At most N calls at once; the rest wait by [`Priority`] (when a queue is
/// configured) or are refused with [`BulkheadFull`].
///
/// A `Bulkhead` is a shared handle: clones admit against the same slots, so
/// one bulkhead can guard an API used by several pipelines (reads and
/// writes) or a registry preset (`BreakerRegistry::bulkhead("ec2")`).
///
/// ```
/// use keel_breaker::Bulkhead;
/// use keel_core::Priority;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // Two calls at once; up to 100 more wait, critical ones first.
/// let api = Bulkhead::builder("compute-api").max_concurrent(2).queue(100).build()?;
/// let a = api.acquire(Priority::Low).await?;
/// let b = api.acquire(Priority::Low).await?;
/// assert!(api.try_acquire().is_err()); // full, and `try_acquire` never waits
/// drop((a, b));
/// assert_eq!(api.in_flight(), 0);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Bulkhead {
    inner: Arc<Inner>,
}

struct Inner {
    name: Arc<str>,
    /// The current limit: fixed, or moved by the AIMD rule.
    limit: AtomicUsize,
    in_flight: AtomicUsize,
    /// Queued waiters; changed only under `queue`'s lock.
    waiting: AtomicUsize,
    queue_bound: usize,
    queue: Mutex<Queues>,
    adaptive: Option<Mutex<AimdLimit>>,
    rejected: AtomicU64,
    shed: AtomicU64,
}

#[derive(Default)]
struct Queues {
    next_id: u64,
    by_priority: [VecDeque<Waiter>; 4],
}

impl Queues {
    fn len(&self) -> usize {
        self.by_priority.iter().map(VecDeque::len).sum()
    }

    /// The best waiter: the highest priority, the oldest within it.
    fn pop_best(&mut self) -> Option<Waiter> {
        self.by_priority
            .iter_mut()
            .rev()
            .find_map(VecDeque::pop_front)
    }

    fn remove(&mut self, priority: Priority, id: u64) -> bool {
        let queue = &mut self.by_priority[priority.index()];
        match queue.iter().position(|w| w.id == id) {
            Some(at) => {
                queue.remove(at);
                true
            }
            None => false,
        }
    }
}

struct Waiter {
    id: u64,
    grant: oneshot::Sender<Grant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    Admitted,
    Shed,
}

/// Builds a [`Bulkhead`].
#[derive(Debug, Clone)]
pub struct BulkheadBuilder {
    name: Arc<str>,
    max_concurrent: usize,
    queue: usize,
    adaptive: Option<AimdConfig>,
}

impl BulkheadBuilder {
    /// At most `calls` in flight (default 10).
    pub fn max_concurrent(mut self, calls: usize) -> Self {
        self.max_concurrent = calls;
        self
    }

    /// Up to `waiters` calls wait for a slot, served by priority; beyond
    /// that the lowest-priority waiter is shed. `0` (the default): a full
    /// bulkhead refuses at once.
    pub fn queue(mut self, waiters: usize) -> Self {
        self.queue = waiters;
        self
    }

    /// An adaptive limit instead of a fixed one: it moves within
    /// `[config.min(), config.max()]` by the AIMD rule as permits report how
    /// their call went ([`BulkheadPermit::record`]). Replaces
    /// [`max_concurrent`](Self::max_concurrent).
    pub fn adaptive(mut self, config: AimdConfig) -> Self {
        self.adaptive = Some(config);
        self
    }

    /// Validates the settings.
    pub fn build(self) -> Result<Bulkhead, ConfigError> {
        let (limit, adaptive) = match self.adaptive {
            Some(config) => {
                config.validate()?;
                let aimd = AimdLimit::new(config);
                (aimd.limit(), Some(Mutex::new(aimd)))
            }
            None => {
                if self.max_concurrent == 0 {
                    return Err(ConfigError::new("max_concurrent", "must be at least 1"));
                }
                (self.max_concurrent, None)
            }
        };
        Ok(Bulkhead {
            inner: Arc::new(Inner {
                name: self.name,
                limit: AtomicUsize::new(limit),
                in_flight: AtomicUsize::new(0),
                waiting: AtomicUsize::new(0),
                queue_bound: self.queue,
                queue: Mutex::new(Queues::default()),
                adaptive,
                rejected: AtomicU64::new(0),
                shed: AtomicU64::new(0),
            }),
        })
    }
}

/// A slot in a [`Bulkhead`], given back when dropped.
///
/// For an adaptive bulkhead, [`record`](Self::record) tells the limit how the
/// call went; dropping the permit without recording counts as neither a
/// drop nor a success.
#[must_use = "the slot is given back as soon as the permit is dropped"]
pub struct BulkheadPermit {
    inner: Arc<Inner>,
    /// When the slot was taken (adaptive bulkheads only: the latency sample).
    since: Option<Instant>,
    /// Whether the caller queued for the slot.
    waited: bool,
}

impl BulkheadPermit {
    /// `true` when the slot was not free at once and the caller waited in
    /// the queue for it (time passed: re-read the clock).
    pub fn waited(&self) -> bool {
        self.waited
    }

    /// Gives the slot back, telling an adaptive limit how the call went
    /// (failures and overloads are drops when the AIMD configuration says
    /// errors are; neutral outcomes teach it nothing).
    pub fn record(self, outcome: Outcome) {
        if let (Some(aimd), Some(since)) = (&self.inner.adaptive, self.since)
            && !outcome.is_neutral()
        {
            let sample = Sample {
                latency: since.elapsed(),
                in_flight: self.inner.in_flight.load(Ordering::Relaxed),
                errored: outcome.is_failure(),
            };
            let limit = lock(aimd).on_sample(sample);
            let before = self.inner.limit.swap(limit, Ordering::SeqCst);
            if limit > before {
                // Room appeared: admit waiters into it.
                self.inner.grant_waiters();
            }
        }
        // Dropping gives the slot back.
    }
}

impl Drop for BulkheadPermit {
    fn drop(&mut self) {
        self.inner.release();
    }
}

impl fmt::Debug for BulkheadPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadPermit")
            .field("bulkhead", &self.inner.name)
            .finish()
    }
}

/// The bulkhead refused a call: every slot was taken and the call could not
/// (or could no longer) wait.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bulkhead `{name}` is full ({max_concurrent} calls in flight{})", if *.shed { ", waiter shed" } else { "" })]
#[non_exhaustive]
pub struct BulkheadFull {
    /// The bulkhead's name.
    pub name: Arc<str>,
    /// The limit at the time.
    pub max_concurrent: usize,
    /// The refused call's priority.
    pub priority: Priority,
    /// `true` when the call had been waiting and was shed to make room for
    /// a higher-priority one; `false` when it was refused on arrival.
    pub shed: bool,
}

impl ErrorOutcome for BulkheadFull {
    /// `Overloaded` without a retry-after: a slot frees as soon as any
    /// call ends, which the bulkhead cannot predict.
    fn outcome(&self) -> Outcome {
        Outcome::OVERLOADED
    }
}

/// What a [`Bulkhead`] holds and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct BulkheadStats {
    /// The current limit.
    pub limit: usize,
    /// Calls holding a slot.
    pub in_flight: usize,
    /// Calls waiting for one.
    pub queued: usize,
    /// Calls refused on arrival.
    pub rejected: u64,
    /// Waiters shed for a higher-priority call.
    pub shed: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Bulkhead {
    /// A bulkhead of `max_concurrent` slots that refuses at once when full.
    ///
    /// # Panics
    /// If `max_concurrent` is 0 (use the [builder](Self::builder) to get an
    /// error instead).
    pub fn new(max_concurrent: usize) -> Self {
        Self::builder("bulkhead")
            .max_concurrent(max_concurrent)
            .build()
            .expect("a bulkhead needs at least one slot")
    }

    /// Starts building a bulkhead named `name` (in errors and metrics).
    pub fn builder(name: impl Into<Arc<str>>) -> BulkheadBuilder {
        BulkheadBuilder {
            name: name.into(),
            max_concurrent: 10,
            queue: 0,
            adaptive: None,
        }
    }

    /// The bulkhead's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Takes a slot now, or refuses; never waits and never overtakes a
    /// queued waiter.
    pub fn try_acquire(&self) -> Result<BulkheadPermit, BulkheadFull> {
        if self.inner.try_fast() {
            Ok(self.permit(false))
        } else {
            self.inner.rejected.fetch_add(1, Ordering::Relaxed);
            Err(self.inner.full(Priority::Normal, false))
        }
    }

    /// Takes a slot, waiting in the queue at `priority` when the bulkhead
    /// is full and has a queue. Higher priorities are served first, FIFO
    /// within a priority. Fails with [`BulkheadFull`] when there is no
    /// queue, when the queue is full of waiters of this priority or higher,
    /// or when this waiter is shed for a higher-priority one.
    ///
    /// Cancel-safe: a waiter dropped before it is admitted leaves the queue
    /// at once, and one dropped just after gives its slot to the next.
    pub async fn acquire(&self, priority: Priority) -> Result<BulkheadPermit, BulkheadFull> {
        if self.inner.try_fast() {
            return Ok(self.permit(false));
        }
        // The waiting path is boxed so that callers that embed this future
        // (a pipeline's attempt) stay small on the common, free-slot path.
        Box::pin(self.acquire_slow(priority)).await
    }

    async fn acquire_slow(&self, priority: Priority) -> Result<BulkheadPermit, BulkheadFull> {
        let waiting = match self.inner.enqueue(priority) {
            Enqueued::Admitted => return Ok(self.permit(false)),
            Enqueued::Refused => {
                self.inner.rejected.fetch_add(1, Ordering::Relaxed);
                return Err(self.inner.full(priority, false));
            }
            Enqueued::Waiting(waiting) => waiting,
        };
        let mut guard = WaitGuard {
            inner: &self.inner,
            priority,
            id: waiting.0,
            grant: Some(waiting.1),
        };
        let grant = match guard.grant.as_mut() {
            Some(rx) => rx.await,
            None => unreachable!("the receiver is taken only on drop"),
        };
        // Decided: the guard has nothing left to undo.
        guard.grant = None;
        match grant {
            Ok(Grant::Admitted) => Ok(self.permit(true)),
            // The sender is only dropped after sending; treat anything else
            // as a refusal rather than a slot.
            Ok(Grant::Shed) | Err(_) => Err(self.inner.full(priority, true)),
        }
    }

    fn permit(&self, waited: bool) -> BulkheadPermit {
        BulkheadPermit {
            inner: self.inner.clone(),
            since: self.inner.adaptive.as_ref().map(|_| Instant::now()),
            waited,
        }
    }

    /// Calls holding a slot now.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Relaxed)
    }

    /// Calls waiting for a slot now.
    pub fn queued(&self) -> usize {
        self.inner.waiting.load(Ordering::Relaxed)
    }

    /// The current limit (moves for an adaptive bulkhead).
    pub fn limit(&self) -> usize {
        self.inner.limit.load(Ordering::Relaxed)
    }

    /// What the bulkhead holds and did so far.
    pub fn stats(&self) -> BulkheadStats {
        BulkheadStats {
            limit: self.limit(),
            in_flight: self.in_flight(),
            queued: self.queued(),
            rejected: self.inner.rejected.load(Ordering::Relaxed),
            shed: self.inner.shed.load(Ordering::Relaxed),
        }
    }

    /// Whether `other` is a handle to the same bulkhead.
    pub fn same_as(&self, other: &Bulkhead) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl fmt::Debug for Bulkhead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulkhead")
            .field("name", &self.inner.name)
            .field("limit", &self.limit())
            .field("in_flight", &self.in_flight())
            .field("queued", &self.queued())
            .field("queue_bound", &self.inner.queue_bound)
            .field("adaptive", &self.inner.adaptive.is_some())
            .finish()
    }
}

enum Enqueued {
    Admitted,
    Refused,
    Waiting((u64, oneshot::Receiver<Grant>)),
}

impl Inner {
    /// The lock-free path: a slot while nobody waits.
    #[inline]
    fn try_fast(&self) -> bool {
        if self.waiting.load(Ordering::SeqCst) != 0 {
            return false;
        }
        let limit = self.limit.load(Ordering::Relaxed);
        let mut current = self.in_flight.load(Ordering::Relaxed);
        loop {
            if current >= limit {
                return false;
            }
            match self.in_flight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// Takes a slot if one is free, whoever waits (called under the lock).
    fn take_slot(&self) -> bool {
        let limit = self.limit.load(Ordering::SeqCst);
        let mut current = self.in_flight.load(Ordering::SeqCst);
        loop {
            if current >= limit {
                return false;
            }
            match self.in_flight.compare_exchange(
                current,
                current + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    fn enqueue(&self, priority: Priority) -> Enqueued {
        if self.queue_bound == 0 {
            return Enqueued::Refused;
        }
        let mut queues = lock(&self.queue);
        // Announce before looking at the slots (see the module docs).
        self.waiting.fetch_add(1, Ordering::SeqCst);
        if queues.len() == 0 && self.take_slot() {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Enqueued::Admitted;
        }
        if queues.len() >= self.queue_bound {
            // Shed the newest waiter of the lowest priority below ours.
            let lowest = queues.by_priority[..priority.index()]
                .iter_mut()
                .find(|q| !q.is_empty());
            match lowest.and_then(VecDeque::pop_back) {
                Some(victim) => {
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    self.shed.fetch_add(1, Ordering::Relaxed);
                    // The victim may have been cancelled meanwhile; then
                    // there is nobody to tell.
                    let _ = victim.grant.send(Grant::Shed);
                }
                None => {
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    return Enqueued::Refused;
                }
            }
        }
        let (tx, rx) = oneshot::channel();
        let id = queues.next_id;
        queues.next_id += 1;
        queues.by_priority[priority.index()].push_back(Waiter { id, grant: tx });
        Enqueued::Waiting((id, rx))
    }

    #[inline]
    fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) != 0 {
            self.grant_waiters();
        }
    }

    /// Hands free slots to the best waiters.
    #[cold]
    fn grant_waiters(&self) {
        let mut queues = lock(&self.queue);
        while queues.len() > 0 && self.take_slot() {
            let Some(waiter) = queues.pop_best() else {
                break;
            };
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            if waiter.grant.send(Grant::Admitted).is_err() {
                // The waiter's future was dropped without its guard running
                // (it cannot be: the guard removes it under this lock), but
                // never leak the slot.
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    fn full(&self, priority: Priority, shed: bool) -> BulkheadFull {
        BulkheadFull {
            name: self.name.clone(),
            max_concurrent: self.limit.load(Ordering::Relaxed),
            priority,
            shed,
        }
    }
}

/// Undoes a wait that was cancelled: leaves the queue, or passes on a slot
/// granted just before the cancellation.
struct WaitGuard<'a> {
    inner: &'a Arc<Inner>,
    priority: Priority,
    id: u64,
    grant: Option<oneshot::Receiver<Grant>>,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        let Some(mut grant) = self.grant.take() else {
            return;
        };
        let removed = {
            let mut queues = lock(&self.inner.queue);
            let removed = queues.remove(self.priority, self.id);
            if removed {
                self.inner.waiting.fetch_sub(1, Ordering::SeqCst);
            }
            removed
        };
        // Not in the queue: a grant (or shed) was sent under the lock.
        if !removed && grant.try_recv() == Ok(Grant::Admitted) {
            self.inner.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(max: usize, queue: usize) -> Bulkhead {
        Bulkhead::builder("test")
            .max_concurrent(max)
            .queue(queue)
            .build()
            .unwrap()
    }

    #[test]
    fn refuses_at_once_without_a_queue() {
        let b = Bulkhead::new(2);
        let p1 = b.try_acquire().unwrap();
        let _p2 = b.try_acquire().unwrap();
        let full = b.try_acquire().unwrap_err();
        assert_eq!(full.max_concurrent, 2);
        assert!(!full.shed);
        drop(p1);
        assert!(b.try_acquire().is_ok());
        assert_eq!(b.stats().rejected, 1);
    }

    #[test]
    fn zero_slots_is_a_config_error() {
        let e = Bulkhead::builder("x")
            .max_concurrent(0)
            .build()
            .unwrap_err();
        assert_eq!(e.field(), "max_concurrent");
    }

    #[tokio::test]
    async fn no_queue_means_acquire_refuses_too() {
        let b = Bulkhead::new(1);
        let _p = b.acquire(Priority::Critical).await.unwrap();
        assert!(b.acquire(Priority::Critical).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_critical_waiter_behind_a_thousand_low_ones_gets_the_next_slot() {
        let b = queued(1, 2_000);
        let held = b.acquire(Priority::Low).await.unwrap();
        let mut low = Vec::new();
        for _ in 0..1_000 {
            let b = b.clone();
            low.push(tokio::spawn(async move {
                let p = b.acquire(Priority::Low).await.unwrap();
                tokio::task::yield_now().await;
                drop(p);
                Priority::Low
            }));
        }
        // Let every low waiter queue up.
        while b.queued() < 1_000 {
            tokio::task::yield_now().await;
        }
        let order = Arc::new(Mutex::new(Vec::new()));
        let critical = {
            let (b, order) = (b.clone(), order.clone());
            tokio::spawn(async move {
                let p = b.acquire(Priority::Critical).await.unwrap();
                lock(&order).push(b.in_flight());
                drop(p);
            })
        };
        while b.queued() < 1_001 {
            tokio::task::yield_now().await;
        }
        drop(held);
        critical.await.unwrap();
        // The critical waiter ran while no low waiter had been admitted.
        assert_eq!(*lock(&order), vec![1]);
        assert!(
            b.queued() >= 999,
            "low waiters still queued: {}",
            b.queued()
        );
        for t in low {
            t.await.unwrap();
        }
        assert_eq!((b.in_flight(), b.queued()), (0, 0));
    }

    #[tokio::test]
    async fn fifo_within_a_priority_and_higher_first() {
        let b = queued(1, 10);
        let held = b.acquire(Priority::Normal).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (i, p) in [
            (0, Priority::Low),
            (1, Priority::Normal),
            (2, Priority::Low),
            (3, Priority::High),
            (4, Priority::Normal),
        ] {
            let (b2, order) = (b.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let permit = b2.acquire(p).await.unwrap();
                lock(&order).push(i);
                tokio::task::yield_now().await;
                drop(permit);
            }));
            while b.queued() < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*lock(&order), vec![3, 1, 4, 0, 2]);
    }

    #[tokio::test]
    async fn a_full_queue_sheds_the_lowest_priority_waiter() {
        let b = queued(1, 2);
        let held = b.acquire(Priority::Normal).await.unwrap();
        let low = {
            let b = b.clone();
            tokio::spawn(async move { b.acquire(Priority::Low).await.map(drop) })
        };
        let normal = {
            let b = b.clone();
            tokio::spawn(async move { b.acquire(Priority::Normal).await.map(drop) })
        };
        while b.queued() < 2 {
            tokio::task::yield_now().await;
        }
        // Another normal one cannot shed a normal waiter, but sheds the low.
        let critical = {
            let b = b.clone();
            tokio::spawn(async move { b.acquire(Priority::Critical).await.map(drop) })
        };
        let shed = low.await.unwrap().unwrap_err();
        assert!(shed.shed);
        assert_eq!(shed.priority, Priority::Low);
        // Queue full of equal-or-higher waiters: a low newcomer is refused.
        let refused = b.acquire(Priority::Low).await.unwrap_err();
        assert!(!refused.shed);
        drop(held);
        critical.await.unwrap().unwrap();
        normal.await.unwrap().unwrap();
        assert_eq!(b.stats().shed, 1);
        assert_eq!((b.in_flight(), b.queued()), (0, 0));
    }

    #[tokio::test]
    async fn a_cancelled_waiter_leaves_no_trace() {
        let b = queued(1, 10);
        let held = b.acquire(Priority::Normal).await.unwrap();
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.acquire(Priority::High).await.map(drop) })
        };
        while b.queued() < 1 {
            tokio::task::yield_now().await;
        }
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(b.queued(), 0);
        drop(held);
        assert_eq!(b.in_flight(), 0);
        // The slot is free for the next caller.
        let _p = b.try_acquire().unwrap();
    }

    #[tokio::test]
    async fn a_waiter_cancelled_after_its_grant_passes_the_slot_on() {
        let b = queued(1, 10);
        let held = b.acquire(Priority::Normal).await.unwrap();
        let mut first = Box::pin(b.acquire(Priority::Normal));
        // Poll once so it queues.
        assert!(futures_poll_once(&mut first).await.is_none());
        let second = {
            let b = b.clone();
            tokio::spawn(async move { b.acquire(Priority::Normal).await.map(drop) })
        };
        while b.queued() < 2 {
            tokio::task::yield_now().await;
        }
        drop(held); // grants `first`, which never looks
        drop(first); // ...and passes the slot to `second`
        second.await.unwrap().unwrap();
        assert_eq!((b.in_flight(), b.queued()), (0, 0));
    }

    async fn futures_poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut *f).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }

    #[tokio::test(start_paused = true)]
    async fn adaptive_limits_shrink_on_failures_and_grow_on_fast_successes() {
        let b = Bulkhead::builder("aimd")
            .adaptive(AimdConfig::new(1, 8).initial(4))
            .queue(10)
            .build()
            .unwrap();
        assert_eq!(b.limit(), 4);
        b.acquire(Priority::Normal)
            .await
            .unwrap()
            .record(Outcome::Failure);
        assert_eq!(b.limit(), 3);
        // Successes grow the limit only while at least half of it is used.
        let permits: Vec<_> = (0..3).map(|_| b.try_acquire().unwrap()).collect();
        for p in permits {
            p.record(Outcome::Success);
        }
        assert!(b.limit() > 3, "limit {}", b.limit());
        assert_eq!(b.in_flight(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn many_tasks_never_exceed_the_limit() {
        let b = queued(3, 1_000);
        let peak = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..200 {
            let (b, peak) = (b.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                let p = b.acquire(Priority::ALL[i % 4]).await.unwrap();
                peak.fetch_max(b.in_flight(), Ordering::SeqCst);
                tokio::task::yield_now().await;
                drop(p);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert!(peak.load(Ordering::SeqCst) <= 3);
        assert_eq!((b.in_flight(), b.queued()), (0, 0));
    }
}
