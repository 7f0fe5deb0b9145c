//! The parallel executor: runs a collection of items with a concurrency
//! limit, timeouts, cancellation and panic isolation, inside the caller's
//! task.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::{FusedStream, FuturesUnordered, Stream, StreamExt};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use keel_breaker::{AimdLimit, Sample};
use crate::config::{Concurrency, ParallelBuilder, ParallelSettings};
use crate::error::{Cancelled, DeadlineExceeded, ExecError, StopReason};
use crate::item::ItemFuture;
use crate::observe::Observer;
use crate::op::{FnOp, ItemOp, from_fn};
use crate::report::{Collector, Counts, ItemReport, Report, Status};

/// After this many items finish without the stream returning `Pending`, it
/// yields once to the scheduler so a run of instant items cannot starve the
/// other tasks of its worker thread (tokio's own budget is 128 operations).
const YIELD_EVERY: u32 = 128;

/// Runs a collection of operations concurrently and reports every item.
///
/// * **Concurrency**: at most `limit` items run at once, fixed or adaptive
///   ([`AimdConfig`](crate::AimdConfig)). Items start in input order.
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
/// run, not spawned: no task spawn, semaphore or extra allocation per item
/// beyond the item's own future. The corollary is that the items share that
/// task's thread: an item that blocks the thread (CPU-heavy work, blocking
/// I/O) stalls the others, and the operation's futures need not be `Send`
/// or `'static`. Spawn inside the operation (or use
/// `tokio::task::spawn_blocking`) for work that needs its own thread.
///
/// Cloning is cheap (the shutdown token and metrics are shared).
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
    pub fn concurrency(&self) -> Concurrency {
        self.settings.concurrency
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
    /// starts.
    ///
    /// Never panics because of an item. Must be awaited inside a tokio
    /// runtime with time enabled when a timeout is set.
    pub async fn run<It, F, Fut, T, E>(&self, items: It, op: F) -> Report<T, E>
    where
        It: IntoIterator,
        F: FnMut(It::Item) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.run_op(items, from_fn(op)).await
    }

    /// [`run`](Self::run) with an [`ItemOp`], for decorated operations
    /// (retry, circuit breaker).
    pub async fn run_op<It, Op>(&self, items: It, op: Op) -> Report<Op::Output, Op::Error>
    where
        It: IntoIterator,
        Op: ItemOp<It::Item>,
    {
        let started = Instant::now();
        let mut stream = self.stream_op(items, op);
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
    pub fn stream<It, F, Fut, T, E>(&self, items: It, op: F) -> ItemStream<It::IntoIter, FnOp<F>>
    where
        It: IntoIterator,
        F: FnMut(It::Item) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.stream_op(items, from_fn(op))
    }

    /// [`stream`](Self::stream) with an [`ItemOp`].
    pub fn stream_op<It, Op>(&self, items: It, op: Op) -> ItemStream<It::IntoIter, Op>
    where
        It: IntoIterator,
        Op: ItemOp<It::Item>,
    {
        self.stream_observed(items, op, Observer::from_settings(&self.settings))
    }

    /// The stream, reporting to `observer` (the batch executor passes a
    /// silent one and records per item itself).
    pub(crate) fn stream_observed<It, Op>(
        &self,
        items: It,
        op: Op,
        observer: Observer,
    ) -> ItemStream<It::IntoIter, Op>
    where
        It: IntoIterator,
        Op: ItemOp<It::Item>,
    {
        let s = &self.settings;
        let limiter = match s.concurrency {
            Concurrency::Fixed(n) => Limiter::Fixed(n.max(1)),
            Concurrency::Adaptive(cfg) => Limiter::Adaptive(AimdLimit::new(cfg)),
        };
        observer.limit_changed(limiter.limit());
        ItemStream {
            items: items.into_iter(),
            exhausted: false,
            next_index: 0,
            op,
            running: FuturesUnordered::new(),
            limiter,
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
            stopped_at: None,
            stop_reason: None,
            since_yield: 0,
            counts: Counts::default(),
            max_in_flight: 0,
            observer,
        }
    }
}

#[derive(Debug, Clone)]
enum Limiter {
    Fixed(usize),
    Adaptive(AimdLimit),
}

impl Limiter {
    fn limit(&self) -> usize {
        match self {
            Limiter::Fixed(n) => *n,
            Limiter::Adaptive(l) => l.limit(),
        }
    }

    /// Feeds a finished item; returns the new limit when it changed.
    fn on_finished(
        &mut self,
        status: Status,
        latency: Duration,
        in_flight: usize,
    ) -> Option<usize> {
        match self {
            Limiter::Fixed(_) => None,
            Limiter::Adaptive(l) => {
                let before = l.limit();
                let after = l.on_sample(Sample {
                    latency,
                    in_flight,
                    errored: matches!(status, Status::Failed | Status::TimedOut),
                });
                (after != before).then_some(after)
            }
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
/// polled. Dropping it drops (cancels) every running item.
#[must_use = "streams do nothing unless polled"]
pub struct ItemStream<It, Op>
where
    It: Iterator,
    Op: ItemOp<It::Item>,
{
    items: It,
    exhausted: bool,
    next_index: usize,
    op: Op,
    running: FuturesUnordered<ItemFuture<Op::Future>>,
    limiter: Limiter,
    item_timeout: Option<Duration>,
    overall_timeout: Option<Duration>,
    deadline_at: Option<Instant>,
    deadline: Option<Pin<Box<Sleep>>>,
    shutdown: Option<CancellationToken>,
    shutdown_wait: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    phase: Phase,
    interrupted: Vec<(usize, Instant)>,
    stopped_at: Option<Instant>,
    stop_reason: Option<StopReason>,
    since_yield: u32,
    counts: Counts,
    max_in_flight: usize,
    observer: Observer,
}

// Nothing in the stream is structurally pinned: items' futures live in
// `FuturesUnordered`'s own allocations and the timers are boxed.
impl<It, Op> Unpin for ItemStream<It, Op>
where
    It: Iterator,
    Op: ItemOp<It::Item>,
{
}

impl<It, Op> Drop for ItemStream<It, Op>
where
    It: Iterator,
    Op: ItemOp<It::Item>,
{
    fn drop(&mut self) {
        // Items still running are dropped with the stream: they leave the
        // in-flight gauge here, as they would have when finishing.
        if !self.running.is_empty() {
            self.observer.items_stopped(self.running.len());
        }
    }
}

impl<It, Op> std::fmt::Debug for ItemStream<It, Op>
where
    It: Iterator,
    Op: ItemOp<It::Item>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ItemStream")
            .field("started", &self.next_index)
            .field("in_flight", &self.running.len())
            .field("limit", &self.limiter.limit())
            .field("phase", &self.phase)
            .field("counts", &self.counts)
            .finish_non_exhaustive()
    }
}

impl<It, Op> ItemStream<It, Op>
where
    It: Iterator,
    Op: ItemOp<It::Item>,
{
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

    /// The concurrency limit now (changes only in adaptive mode).
    pub fn concurrency_limit(&self) -> usize {
        self.limiter.limit()
    }

    /// Why the run stopped early, once it has.
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.stop_reason
    }

    /// Starts items until the limit is reached or the input is exhausted.
    fn fill(&mut self) {
        let limit = self.limiter.limit();
        while !self.exhausted && self.running.len() < limit {
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
            ));
            self.observer.item_started();
        }
        self.max_in_flight = self.max_in_flight.max(self.running.len());
    }

    fn on_finished(&mut self, report: &ItemReport<Op::Output, Op::Error>) {
        let status = report.status();
        self.counts.record(status);
        self.observer.item_finished(status, report.duration, true);
        if let Err(ExecError::Panicked(p)) = &report.result {
            tracing::warn!(index = report.index, panic = %p.message, "item panicked");
        }
        let in_flight = self.running.len() + 1;
        if let Some(limit) = self.limiter.on_finished(status, report.duration, in_flight) {
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

    fn drained_report(&mut self, reason: StopReason) -> Option<ItemReport<Op::Output, Op::Error>> {
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

impl<It, Op> Stream for ItemStream<It, Op>
where
    It: Iterator,
    Op: ItemOp<It::Item>,
{
    type Item = ItemReport<Op::Output, Op::Error>;

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
                this.fill();
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
                        Poll::Ready(None) => {
                            // Nothing running after `fill`: the input is
                            // exhausted and every item has been yielded.
                            debug_assert!(this.exhausted);
                            this.phase = Phase::Done;
                            return Poll::Ready(None);
                        }
                        Poll::Pending => {
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

impl<It, Op> FusedStream for ItemStream<It, Op>
where
    It: Iterator,
    Op: ItemOp<It::Item>,
{
    fn is_terminated(&self) -> bool {
        self.phase == Phase::Done
    }
}
