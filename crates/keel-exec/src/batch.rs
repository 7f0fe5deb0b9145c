//! The batch executor: splits items into batches, runs one batch operation
//! per batch under a timeout, and maps each batch's response back to one
//! result per item.

use std::convert::Infallible;
use std::fmt;
use std::future::{Future, poll_fn};
use std::ops::{Deref, Range};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::time::Duration;

use futures::Stream;
use keel_core::{Classify, classify};
use tokio::time::Instant;

use crate::config::{BatchBuilder, Concurrency, ParallelSettings, SplitPolicy};
use crate::error::{BatchFailed, ExecError, Panicked};
use crate::observe::Observer;
use crate::parallel::ParallelExecutor;
use crate::report::{Collector, ItemReport, Report, Status};

/// One batch handed to the batch operation: a cheap, cloneable view of up to
/// `batch_size` consecutive input items. Derefs to `[I]`.
///
/// When a failed batch is split ([`SplitPolicy`]), the halves are `Batch`es
/// of the same [`number`](Self::number) covering fewer items.
pub struct Batch<I> {
    items: Arc<[I]>,
    /// The part of `items` this view covers.
    range: Range<usize>,
    /// The batch's position in the run.
    number: usize,
    /// Input index of `items[0]`.
    offset: usize,
}

impl<I> Clone for Batch<I> {
    fn clone(&self) -> Self {
        Batch {
            items: Arc::clone(&self.items),
            range: self.range.clone(),
            number: self.number,
            offset: self.offset,
        }
    }
}

impl<I: fmt::Debug> fmt::Debug for Batch<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("number", &self.number)
            .field("indices", &self.indices())
            .field("items", &self.items())
            .finish()
    }
}

impl<I> Deref for Batch<I> {
    type Target = [I];

    fn deref(&self) -> &[I] {
        &self.items[self.range.clone()]
    }
}

impl<I> Batch<I> {
    fn new(items: Vec<I>, number: usize, offset: usize) -> Self {
        let len = items.len();
        Batch {
            items: items.into(),
            range: 0..len,
            number,
            offset,
        }
    }

    /// The batch's position (0-based) in the run.
    pub fn number(&self) -> usize {
        self.number
    }

    /// The items.
    pub fn items(&self) -> &[I] {
        self
    }

    /// The input indices of the items (consecutive).
    pub fn indices(&self) -> Range<usize> {
        self.offset + self.range.start..self.offset + self.range.end
    }

    /// The items, cloned into a `Vec` (for SDKs that take owned lists).
    pub fn to_vec(&self) -> Vec<I>
    where
        I: Clone,
    {
        self.items().to_vec()
    }

    /// The two halves of a batch of at least two items.
    fn halves(&self) -> (Self, Self) {
        let mid = self.range.start + self.range.len() / 2;
        let mut left = self.clone();
        let mut right = self.clone();
        left.range.end = mid;
        right.range.start = mid;
        (left, right)
    }
}

/// Runs a batch operation over a collection in batches and reports every
/// item.
///
/// * Items are split, in input order, into batches of
///   [`batch_size`](BatchBuilder::batch_size) (default 10).
/// * Each batch is one call of the batch operation (say "start these 10
///   instances"), bounded per batch (default 5 minutes). To retry the call,
///   send it through a circuit breaker, a rate limiter or an attempt
///   timeout, wrap the operation with `keel::exec::through(&pipeline, op)`
///   (the `keel` facade): every batch call then runs through the
///   `keel::Pipeline`.
/// * The batch's response is mapped back to each item with a mapping
///   function, so an item the response reports as failed (an instance that
///   did not start) fails alone, and the others succeed.
/// * A batch that fails as a whole gives every item
///   [`ExecError::BatchFailed`] (one shared error), unless a
///   [`SplitPolicy`] splits it in halves to find the items at fault.
/// * Batches run [`concurrency`](BatchBuilder::concurrency) at a time
///   (default 1), with the parallel executor's overall timeout, shutdown
///   token and panic isolation; the [`Report`] has one result per input
///   item, in input order.
///
/// Costs per batch: one shared allocation holding the batch's items and one
/// result vector; per item, nothing but its result.
#[derive(Debug, Clone)]
pub struct BatchExecutor {
    batch_size: usize,
    settings: ParallelSettings,
    split: SplitPolicy,
}

impl Default for BatchExecutor {
    fn default() -> Self {
        Self::from_builder(BatchBuilder::default())
    }
}

impl BatchExecutor {
    /// A builder with the defaults (see [`BatchBuilder`]).
    pub fn builder() -> BatchBuilder {
        BatchBuilder::default()
    }

    pub(crate) fn from_builder(b: BatchBuilder) -> Self {
        BatchExecutor {
            batch_size: b.batch_size,
            settings: b.settings,
            split: b.split,
        }
    }

    /// Items per batch.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The time limit of one batch, if any.
    pub fn batch_timeout(&self) -> Option<Duration> {
        self.settings.item_timeout
    }

    /// Runs `op` once per batch (plus splits) and maps each batch's response
    /// to its items with `map`. Every `Err` of `op` is a failure
    /// ([`classify::Default`]), split on only with [`SplitPolicy::Always`].
    ///
    /// `op` receives a [`Batch`] (a cheap clone per call); `map(item,
    /// &response)` says what the response means for one item. A panic in
    /// `map` fails only that item; a panic in `op` fails its batch.
    ///
    /// `op` and `map` are `FnMut`, like the parallel executor's operation:
    /// the executor calls each of them one call at a time (calls only
    /// create the futures; the batches' futures run concurrently).
    pub async fn run<It, I, F, Fut, R, E, M, T>(&self, items: It, op: F, map: M) -> Report<T, E>
    where
        It: IntoIterator<Item = I>,
        F: FnMut(Batch<I>) -> Fut,
        Fut: Future<Output = Result<R, E>>,
        M: FnMut(&I, &R) -> Result<T, E>,
        E: fmt::Debug,
    {
        self.run_classified(items, classify::Default, op, map).await
    }

    /// [`run`](Self::run) with each batch call's result judged by
    /// `classifier` for the [`SplitPolicy`]: with
    /// [`SplitPolicy::NonRetryable`], a batch whose error the classifier
    /// does not call retryable (neutral) is split in halves.
    pub async fn run_classified<It, I, C, F, Fut, R, E, M, T>(
        &self,
        items: It,
        classifier: C,
        op: F,
        map: M,
    ) -> Report<T, E>
    where
        It: IntoIterator<Item = I>,
        C: Classify<R, E>,
        F: FnMut(Batch<I>) -> Fut,
        Fut: Future<Output = Result<R, E>>,
        M: FnMut(&I, &R) -> Result<T, E>,
        E: fmt::Debug,
    {
        let started = Instant::now();
        let batches = self.chunk(items);
        let total: usize = batches.iter().map(|b| b.len()).sum();
        let observer = Observer::from_settings(&self.settings);
        if let Concurrency::Fixed(limit) = self.settings.concurrency {
            observer.limit_changed(limit);
        }
        let in_flight = InFlight {
            observer: &observer,
            items: AtomicUsize::new(0),
        };
        let runner = Runner {
            op: Mutex::new(op),
            map: Mutex::new(map),
            classifier,
            split: self.split,
        };
        let engine = ParallelExecutor::from_settings(self.settings.clone());
        let mut stream = engine.stream_observed(
            batches.iter().cloned(),
            |batch: Batch<I>| {
                in_flight.started(batch.len());
                runner.run_batch(batch)
            },
            Observer::default(),
        );
        let mut collector = Collector::with_capacity(total);
        poll_fn(|cx| {
            loop {
                match Pin::new(&mut stream).poll_next(cx) {
                    Poll::Ready(Some(report)) => {
                        let batch = &batches[report.index];
                        if !matches!(&report.result, Err(ExecError::Cancelled(c)) if !c.started) {
                            in_flight.finished(batch.len());
                        }
                        let status = spread(batch, report, &observer, &mut collector);
                        observer.batch_finished(status);
                    }
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
            batches = batches.len(),
            total = counts.total,
            succeeded = counts.succeeded,
            failed = counts.failed,
            timed_out = counts.timed_out,
            cancelled = counts.cancelled,
            wall_time = ?wall_time,
            "batch run finished"
        );
        report
    }

    fn chunk<It, I>(&self, items: It) -> Vec<Batch<I>>
    where
        It: IntoIterator<Item = I>,
    {
        let mut items = items.into_iter();
        let mut batches = Vec::with_capacity(items.size_hint().0.div_ceil(self.batch_size));
        let mut offset = 0;
        loop {
            let chunk: Vec<I> = items.by_ref().take(self.batch_size).collect();
            if chunk.is_empty() {
                break;
            }
            let len = chunk.len();
            batches.push(Batch::new(chunk, batches.len(), offset));
            offset += len;
        }
        batches
    }

    /// The concurrency setting for batches.
    pub fn concurrency(&self) -> &Concurrency {
        &self.settings.concurrency
    }
}

/// Items of started batches whose reports have not been collected yet. If
/// the run is dropped mid-way, they leave the in-flight gauge on drop.
struct InFlight<'o> {
    observer: &'o Observer,
    items: AtomicUsize,
}

impl InFlight<'_> {
    fn started(&self, n: usize) {
        self.items.fetch_add(n, Ordering::Relaxed);
        self.observer.items_started(n);
    }

    /// Only the count: `spread` reports each item to the observer.
    fn finished(&self, n: usize) {
        self.items.fetch_sub(n, Ordering::Relaxed);
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let left = *self.items.get_mut();
        if left > 0 {
            self.observer.items_stopped(left);
        }
    }
}

/// Turns one batch's report into one report per item. Returns the batch's
/// status for metrics.
fn spread<T, E>(
    batch: &Batch<impl Sized>,
    report: ItemReport<Vec<Result<T, ExecError<E>>>, Infallible>,
    observer: &Observer,
    collector: &mut Collector<T, E>,
) -> Status {
    let first = batch.indices().start;
    let duration = report.duration;
    match report.result {
        Ok(results) => {
            debug_assert_eq!(results.len(), batch.len());
            let mut status = Status::Succeeded;
            for (k, result) in results.into_iter().enumerate() {
                let item = ItemReport::new(first + k, result, duration);
                let s = item.status();
                if s != Status::Succeeded {
                    status = Status::Failed;
                }
                observer.item_finished(s, duration, true);
                collector.push(item);
            }
            status
        }
        Err(error) => {
            let status = error.status();
            let started = !matches!(&error, ExecError::Cancelled(c) if !c.started);
            for index in batch.indices() {
                let item = ItemReport::new(index, Err(replicate(&error)), duration);
                observer.item_finished(status, duration, started);
                collector.push(item);
            }
            status
        }
    }
}

/// A batch-level error, once per item of the batch. The batch future never
/// fails with the operation's error (it settles every item itself), so only
/// the executor's own variants occur here.
fn replicate<E>(error: &ExecError<Infallible>) -> ExecError<E> {
    match error {
        ExecError::Failed(never) => match *never {},
        ExecError::BatchFailed(b) => match *b.error() {},
        ExecError::Panicked(p) => ExecError::Panicked(p.clone()),
        ExecError::Rejected(r) => ExecError::Rejected(r.clone()),
        ExecError::TimedOut(t) => ExecError::TimedOut(*t),
        ExecError::DeadlineExceeded(d) => ExecError::DeadlineExceeded(*d),
        ExecError::Cancelled(c) => ExecError::Cancelled(*c),
    }
}

/// Everything one run's batches share, borrowed by each batch's future.
/// The operation and the mapping are called under a lock held only while
/// the call lasts (creating the future, or mapping one item), so they may be
/// `FnMut` while batches run concurrently.
struct Runner<F, M, C> {
    op: Mutex<F>,
    map: Mutex<M>,
    classifier: C,
    split: SplitPolicy,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in `op` or `map` fails its batch or item; the closure itself
    // is still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<F, M, C> Runner<F, M, C> {
    /// Settles every item of `batch`. Never returns `Err`: batch-level
    /// failures become per-item errors here; only the executor's own
    /// failures (batch timeout, panic, cancellation) are left to the caller.
    async fn run_batch<I, Fut, R, E, T>(
        &self,
        batch: Batch<I>,
    ) -> Result<Vec<Result<T, ExecError<E>>>, Infallible>
    where
        C: Classify<R, E>,
        F: FnMut(Batch<I>) -> Fut,
        Fut: Future<Output = Result<R, E>>,
        M: FnMut(&I, &R) -> Result<T, E>,
        E: fmt::Debug,
    {
        let first = batch.indices().start;
        let mut results: Vec<Option<Result<T, ExecError<E>>>> =
            std::iter::repeat_with(|| None).take(batch.len()).collect();
        // Parts still to call; splitting pushes halves (right first, so the
        // left half runs first).
        let mut parts = vec![batch];
        while let Some(part) = parts.pop() {
            let base = part.indices().start - first;
            let slots = &mut results[base..base + part.len()];
            let call = {
                let mut op = lock(&self.op);
                (*op)(part.clone())
            };
            let result = call.await;
            let retryable = self.classifier.classify(&result).is_retryable();
            match result {
                Ok(response) => {
                    for (slot, item) in slots.iter_mut().zip(part.iter()) {
                        *slot = Some(self.map_item(item, &response));
                    }
                }
                Err(error) => {
                    let split = part.len() > 1
                        && match self.split {
                            SplitPolicy::Never => false,
                            SplitPolicy::NonRetryable => !retryable,
                            SplitPolicy::Always => true,
                        };
                    if split {
                        tracing::debug!(
                            batch = part.number(),
                            items = part.len(),
                            error = ?error,
                            "batch failed; splitting it to find the items at fault"
                        );
                        let (left, right) = part.halves();
                        parts.push(right);
                        parts.push(left);
                    } else if part.len() == 1 {
                        // A batch of one: the error is that item's own.
                        slots[0] = Some(Err(ExecError::Failed(error)));
                    } else {
                        tracing::debug!(
                            batch = part.number(),
                            items = part.len(),
                            error = ?error,
                            "batch failed"
                        );
                        let shared = Arc::new(error);
                        for slot in slots.iter_mut() {
                            *slot = Some(Err(ExecError::BatchFailed(BatchFailed::new(
                                part.number(),
                                part.len(),
                                Arc::clone(&shared),
                            ))));
                        }
                    }
                }
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.expect("every part of a batch settles all of its items"))
            .collect())
    }

    fn map_item<I, R, E, T>(&self, item: &I, response: &R) -> Result<T, ExecError<E>>
    where
        M: FnMut(&I, &R) -> Result<T, E>,
    {
        let mut map = lock(&self.map);
        match catch_unwind(AssertUnwindSafe(|| (*map)(item, response))) {
            Ok(result) => result.map_err(ExecError::Failed),
            Err(payload) => Err(ExecError::Panicked(Panicked::from_payload(payload))),
        }
    }
}
