//! The parallel executor: runs a collection of items with a concurrency
//! limit, timeouts, cancellation and panic isolation, inside the caller's
//! task.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{FusedStream, FuturesUnordered, Stream, StreamExt};
use keel_breaker::{Bulkhead, BulkheadFull, BulkheadPermit};
use keel_core::Priority;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::config::{Concurrency, ParallelBuilder, ParallelSettings};
use crate::error::{Cancelled, DeadlineExceeded, ExecError, StopReason};
use crate::item::ItemFuture;
use crate::observe::Observer;
use crate::report::{Collector, Counts, ItemReport, Report};

/// After this many items finish without the stream returning `Pending`, it
/// yields once to the scheduler so a run of instant items cannot starve the
/// other tasks of its worker thread (tokio's own budget is 128 operations).
const YIELD_EVERY: u32 = 128;

/// Runs a collection of operations concurrently and reports every item.
///
/// * **Concurrency**: at most `limit` items run at once, fixed or adaptive
///   ([`AimdConfig`](crate::AimdConfig)), admitted through a
///   [`Bulkhead`] (the run's own, or one shared with other code:
///   [`ParallelBuilder::bulkhead`]). Items start in input order.
/// * **Timeouts**: an optional per-item timeout, and an optional overall
///   timeout for the run.
/// * **Cancellation**: cancelling the [`shutdown`](ParallelBuilder::shutdown)
///   token, or the overall timeout, stops starting items and drops the
///   running ones; dropping the `run` future or the [`ItemStream`] drops
///   every running item at once.
/// * **Panic isolation**: a panic in the operation (when called or while
///   polled) becomes that item's [`ExecError::Panicked`]; it never reaches
///   the caller or the other items.
/// * **Report**: [`run`](Self::run) returns a [`Report`] with one result per
///   input item in input order, counts by status, per-item durations and the
///   wall time; [`stream`](Self::stream) yields the same per-item reports in
///   completion order.
///
/// Items are driven by a `FuturesUnordered` inside the task that awaits the
/// run, not spawned: no task spawn or extra allocation per item beyond the
/// item's own future (a bulkhead slot is a few atomic operations). The corollary is that the items share that
/// task's thread: an item that blocks the thread (CPU-heavy work, blocking
/// I/O) stalls the others, and the operation's futures need not be `Send`
/// or `'static`. Spawn inside the operation (or use
/// `tokio::task::spawn_blocking`) for work that needs its own thread.
///
/// To run each item through retries, a circuit breaker, a rate limiter and
/// timeouts, wrap the operation with `keel::exec::through(&pipeline, op)`
/// (the `keel` facade, features `exec` and `pipeline`): the executor stays
/// in charge of fan-out, the `keel::Pipeline` of the policies around each
/// call.
///
/// Cloning is cheap (the shutdown token, a shared bulkhead and metrics are
/// shared).
#[derive(Debug, Clone, Default)]
pub struct ParallelExecutor {
    settings: ParallelSettings,
}

impl ParallelExecutor {
    /// A builder with the defaults (see [`ParallelBuilder`]).
    pub fn builder() -> ParallelBuilder {
        ParallelBuilder::default()
    }

    /// An executor with a fixed limit of `limit` items at once and no
    /// timeouts.
    ///
    /// # Errors
    /// [`ConfigError`](crate::ConfigError) on `concurrency` when `limit` is 0.
    pub fn with_concurrency(limit: usize) -> Result<Self, crate::ConfigError> {
        Self::builder().concurrency(limit).build()
    }

    pub(crate) fn from_settings(settings: ParallelSettings) -> Self {
        ParallelExecutor { settings }
    }

    /// The concurrency setting.
    pub fn concurrency(&self) -> &Concurrency {
        &self.settings.concurrency
    }

    /// The per-item timeout, if any.
    pub fn item_timeout(&self) -> Option<Duration> {
        self.settings.item_timeout
    }

    /// The overall timeout, if any.
    pub fn overall_timeout(&self) -> Option<Duration> {
        self.settings.overall_timeout
    }

    /// Runs `op` for every item and waits for all of them (or for the run to
    /// stop). `op` is called once per item, in input order, when the item
    /// starts; an `Err` it returns becomes the item's
    /// [`ExecError::Failed`].
    ///
    /// Never panics because of an item. Must be awaited inside a tokio
    /// runtime with time enabled when a timeout is set.
    pub async fn run<It, F, Fut, T, E>(&self, items: It, op: F) -> Report<T, E>
    where
        It: IntoIterator,
        F: FnMut(It::Item) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let started = Instant::now();
        let mut stream = self.stream(items, op);
        let mut collector = Collector::with_capacity(stream.size_hint().0);
        poll_fn(|cx| {
            loop {
                match Pin::new(&mut stream).poll_next(cx) {
                    Poll::Ready(Some(report)) => collector.push(report),
                    Poll::Ready(None) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await;
        let wall_time = started.elapsed();
        let report = collector.finish(wall_time, stream.stop_reason());
        let counts = report.counts();
        tracing::debug!(
            total = counts.total,
            succeeded = counts.succeeded,
            failed = counts.failed,
            timed_out = counts.timed_out,
            cancelled = counts.cancelled,
            wall_time = ?wall_time,
            "parallel run finished"
        );
        report
    }

    /// Like [`run`](Self::run), but yields each item's report as soon as it
    /// finishes (completion order). Items that were running or not yet
    /// started when the run stopped are yielded last, as cancelled or
    /// deadline-exceeded. The run's overall timeout counts from this call.
    ///
    /// Dropping the stream drops every running item. When the run stops
    /// early, the items not yet started are still taken from the input (and
    /// dropped without calling the operation) so each gets its report: the
    /// input must be finite.
    pub fn stream<It, F, Fut, T, E>(&self, items: It, op: F) -> ItemStream<It::IntoIter, F, Fut>
    where
        It: IntoIterator,
        F: FnMut(It::Item) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.stream_observed(items, op, Observer::from_settings(&self.settings))
    }

    /// The stream, reporting to `observer` (the batch executor passes a
    /// silent one and records per item itself).
    pub(crate) fn stream_observed<It, F, Fut, T, E>(
        &self,
        items: It,
        op: F,
        observer: Observer,
    ) -> ItemStream<It::IntoIter, F, Fut>
    where
        It: IntoIterator,
        F: FnMut(It::Item) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let s = &self.settings;
        let bulkhead = s.concurrency.bulkhead();
        let limit = bulkhead.limit();
        observer.limit_changed(limit);
        ItemStream {
            items: items.into_iter(),
            exhausted: false,
            next_index: 0,
            op,
            running: FuturesUnordered::new(),
            bulkhead,
            shared: matches!(s.concurrency, Concurrency::Shared(_)),
            priority: s.priority,
            waiting: None,
            limit,
            item_timeout: s.item_timeout,
            overall_timeout: s.overall_timeout,
            deadline_at: s
                .overall_timeout
                .and_then(|t| Instant::now().checked_add(t)),
            deadline: None,
            shutdown: s.shutdown.clone(),
            shutdown_wait: None,
            phase: Phase::Running,
            interrupted: Vec::new(),
            refused: None,
            stopped_at: None,
            stop_reason: None,
            since_yield: 0,
            counts: Counts::default(),
            max_in_flight: 0,
            observer,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Draining(StopReason),
    Done,
}

/// The items of a run, yielded in completion order. Built by
/// [`ParallelExecutor::stream`].
///
/// Every input item is yielded exactly once (`total` reports in all), and
/// the stream ends after the last one. Items run only while the stream is
/// polled. Dropping it drops (cancels) every running item and gives their
/// bulkhead slots back.
#[must_use = "streams do nothing unless polled"]
pub struct ItemStream<It, F, Fut> {
    items: It,
    exhausted: bool,
    next_index: usize,
    op: F,
    running: FuturesUnordered<ItemFuture<Fut>>,
    bulkhead: Bulkhead,
    /// Whether the bulkhead is shared with other code (else only the run's
    /// own items hold its slots).
    shared: bool,
    /// The run waits in a shared bulkhead's queue at this priority.
    priority: Priority,
    /// The run's one wait for a slot of a shared bulkhead.
    waiting: Option<BoxFuture<'static, Result<BulkheadPermit, BulkheadFull>>>,
    /// The bulkhead's limit last reported to the observer.
    limit: usize,
    item_timeout: Option<Duration>,
    overall_timeout: Option<Duration>,
    deadline_at: Option<Instant>,
    deadline: Option<Pin<Box<Sleep>>>,
    shutdown: Option<CancellationToken>,
    shutdown_wait: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    phase: Phase,
    interrupted: Vec<(usize, Instant)>,
    /// A shared bulkhead refused the run while none of its items ran.
    refused: Option<BulkheadFull>,
    stopped_at: Option<Instant>,
    stop_reason: Option<StopReason>,
    since_yield: u32,
    counts: Counts,
    max_in_flight: usize,
    observer: Observer,
}

// Nothing in the stream is structurally pinned: items' futures live in
// `FuturesUnordered`'s own allocations and the timers are boxed.
impl<It, F, Fut> Unpin for ItemStream<It, F, Fut> {}

impl<It, F, Fut> Drop for ItemStream<It, F, Fut> {
    fn drop(&mut self) {
        // Items still running are dropped with the stream: they leave the
        // in-flight gauge here, as they would have when finishing.
        if !self.running.is_empty() {
            self.observer.items_stopped(self.running.len());
        }
    }
}

impl<It, F, Fut> std::fmt::Debug for ItemStream<It, F, Fut> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ItemStream")
            .field("started", &self.next_index)
            .field("in_flight", &self.running.len())
            .field("bulkhead", &self.bulkhead)
            .field("phase", &self.phase)
            .field("counts", &self.counts)
            .finish_non_exhaustive()
    }
}

impl<It, F, Fut> ItemStream<It, F, Fut> {
    /// Counts of the items yielded so far.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Items running now.
    pub fn in_flight(&self) -> usize {
        self.running.len()
    }

    /// The most items that ran at once so far.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// The bulkhead's limit now (changes in adaptive mode, or when a shared
    /// bulkhead's owner changes it).
    pub fn concurrency_limit(&self) -> usize {
        self.bulkhead.limit()
    }

    /// The bulkhead the run admits its items through.
    pub fn bulkhead(&self) -> &Bulkhead {
        &self.bulkhead
    }

    /// Why the run stopped early, once it has.
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.stop_reason
    }
}

impl<It, F, Fut, T, E> ItemStream<It, F, Fut>
where
    It: Iterator,
    F: FnMut(It::Item) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    /// Takes a bulkhead slot for the next item: at once, or (for a shared
    /// bulkhead) by waiting in its queue. `None` when no slot is free yet;
    /// a finishing item of the run or the bulkhead's grant wakes the task.
    fn slot(&mut self, cx: &mut Context<'_>) -> Option<BulkheadPermit> {
        if self.waiting.is_none() {
            match self.bulkhead.try_acquire() {
                Ok(permit) => return Some(permit),
                // The run's own bulkhead is full of the run's own items:
                // one of them finishing makes room.
                Err(_) if !self.shared => return None,
                Err(_) => {
                    let (bulkhead, priority) = (self.bulkhead.clone(), self.priority);
                    self.waiting = Some(Box::pin(async move { bulkhead.acquire(priority).await }));
                }
            }
        }
        let wait = self.waiting.as_mut()?;
        let result = match wait.as_mut().poll(cx) {
            Poll::Pending => return None,
            Poll::Ready(result) => result,
        };
        self.waiting = None;
        match result {
            Ok(permit) => Some(permit),
            Err(full) => {
                // Refused or shed. While items of the run hold slots, the
                // next one to finish makes room; otherwise nothing will, and
                // the next item fails as the bulkhead said.
                if self.running.is_empty() {
                    self.refused = Some(full);
                }
                None
            }
        }
    }

    /// Starts items while the bulkhead admits them and the input lasts.
    /// Returns the report of an item the bulkhead refused.
    fn fill(&mut self, cx: &mut Context<'_>) -> Option<ItemReport<T, E>> {
        while !self.exhausted {
            let Some(permit) = self.slot(cx) else {
                let full = self.refused.take()?;
                return self.refuse_next(full);
            };
            let Some(item) = self.items.next() else {
                self.exhausted = true;
                break;
            };
            let index = self.next_index;
            self.next_index += 1;
            self.running.push(ItemFuture::start(
                index,
                &mut self.op,
                item,
                self.item_timeout,
                permit,
            ));
            self.observer.item_started();
        }
        self.max_in_flight = self.max_in_flight.max(self.running.len());
        None
    }

    /// The next item fails without running: the shared bulkhead refused it.
    fn refuse_next(&mut self, full: BulkheadFull) -> Option<ItemReport<T, E>> {
        let Some(_item) = self.items.next() else {
            self.exhausted = true;
            return None;
        };
        let index = self.next_index;
        self.next_index += 1;
        tracing::debug!(index, bulkhead = %full.name, "bulkhead refused the item");
        let report = ItemReport::new(index, Err(ExecError::Rejected(full)), Duration::ZERO);
        let status = report.status();
        self.counts.record(status);
        self.observer.item_finished(status, report.duration, false);
        Some(report)
    }

    fn on_finished(&mut self, report: &ItemReport<T, E>) {
        let status = report.status();
        self.counts.record(status);
        self.observer.item_finished(status, report.duration, true);
        if let Err(ExecError::Panicked(p)) = &report.result {
            tracing::warn!(index = report.index, panic = %p.message, "item panicked");
        }
        let limit = self.bulkhead.limit();
        if limit != self.limit {
            self.limit = limit;
            self.observer.limit_changed(limit);
        }
    }

    /// Polls the stop conditions, registering their wakers.
    fn poll_stop(&mut self, cx: &mut Context<'_>) -> Option<StopReason> {
        if let Some(at) = self.deadline_at {
            let sleep = self
                .deadline
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            if sleep.as_mut().poll(cx).is_ready() {
                return Some(StopReason::Deadline);
            }
        }
        if let Some(token) = &self.shutdown {
            let wait = self
                .shutdown_wait
                .get_or_insert_with(|| Box::pin(token.clone().cancelled_owned()));
            if wait.as_mut().poll(cx).is_ready() {
                return Some(StopReason::Shutdown);
            }
        }
        None
    }

    /// Stops the run: running items are dropped (cancelled) and remembered
    /// for their reports; no new item starts.
    fn stop(&mut self, reason: StopReason) {
        let now = Instant::now();
        self.interrupted.reserve(self.running.len());
        for item in Pin::new(&self.running).iter_pin_ref() {
            self.interrupted.push((item.index(), item.started_at()));
        }
        self.observer.items_stopped(self.running.len());
        self.running.clear();
        self.waiting = None;
        self.stopped_at = Some(now);
        self.stop_reason = Some(reason);
        self.phase = Phase::Draining(reason);
        tracing::info!(
            reason = %reason,
            interrupted = self.interrupted.len(),
            finished = self.counts.total,
            "parallel run stopped"
        );
    }

    fn drained_report(&mut self, reason: StopReason) -> Option<ItemReport<T, E>> {
        let report = if let Some((index, start)) = self.interrupted.pop() {
            let stopped_at = self.stopped_at.unwrap_or(start);
            let error = match reason {
                StopReason::Deadline => ExecError::DeadlineExceeded(DeadlineExceeded {
                    after: self.overall_timeout.unwrap_or_default(),
                }),
                StopReason::Shutdown => ExecError::Cancelled(Cancelled {
                    started: true,
                    reason,
                }),
            };
            ItemReport::new(
                index,
                Err(error),
                stopped_at.saturating_duration_since(start),
            )
        } else {
            if self.exhausted {
                return None;
            }
            // Never started: the item is dropped without calling the
            // operation.
            let Some(_item) = self.items.next() else {
                self.exhausted = true;
                return None;
            };
            let index = self.next_index;
            self.next_index += 1;
            ItemReport::new(
                index,
                Err(ExecError::Cancelled(Cancelled {
                    started: false,
                    reason,
                })),
                Duration::ZERO,
            )
        };
        let status = report.status();
        self.counts.record(status);
        self.observer.item_finished(status, report.duration, false);
        Some(report)
    }
}

impl<It, F, Fut, T, E> Stream for ItemStream<It, F, Fut>
where
    It: Iterator,
    F: FnMut(It::Item) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    type Item = ItemReport<T, E>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.phase == Phase::Running {
            if this
                .shutdown
                .as_ref()
                .is_some_and(CancellationToken::is_cancelled)
            {
                this.stop(StopReason::Shutdown);
            } else {
                if let Some(report) = this.fill(cx) {
                    return Poll::Ready(Some(report));
                }
                if this.since_yield >= YIELD_EVERY {
                    this.since_yield = 0;
                    if let Some(reason) = this.poll_stop(cx) {
                        this.stop(reason);
                    } else {
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                } else {
                    match this.running.poll_next_unpin(cx) {
                        Poll::Ready(Some(report)) => {
                            this.since_yield += 1;
                            this.on_finished(&report);
                            return Poll::Ready(Some(report));
                        }
                        Poll::Ready(None) if this.exhausted => {
                            // Nothing running after `fill` and no input
                            // left: every item has been yielded.
                            this.phase = Phase::Done;
                            return Poll::Ready(None);
                        }
                        // Nothing running, and the next item waits for a
                        // slot of a shared bulkhead (its grant wakes us).
                        Poll::Ready(None) | Poll::Pending => {
                            this.since_yield = 0;
                            match this.poll_stop(cx) {
                                Some(reason) => this.stop(reason),
                                None => return Poll::Pending,
                            }
                        }
                    }
                }
            }
        }
        if let Phase::Draining(reason) = this.phase {
            if let Some(report) = this.drained_report(reason) {
                return Poll::Ready(Some(report));
            }
            this.phase = Phase::Done;
        }
        Poll::Ready(None)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.phase == Phase::Done {
            return (0, Some(0));
        }
        let pending = self.running.len() + self.interrupted.len();
        let (lo, hi) = if self.exhausted {
            (0, Some(0))
        } else {
            self.items.size_hint()
        };
        (
            lo.saturating_add(pending),
            hi.and_then(|h| h.checked_add(pending)),
        )
    }
}

impl<It, F, Fut, T, E> FusedStream for ItemStream<It, F, Fut>
where
    It: Iterator,
    F: FnMut(It::Item) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    fn is_terminated(&self) -> bool {
        self.phase == Phase::Done
    }
}
