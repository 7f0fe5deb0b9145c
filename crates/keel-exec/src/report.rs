//! What a run reports: per-item results in input order, counts by status and
//! the wall time.

use std::fmt;
use std::time::Duration;

use crate::error::{ExecError, StopReason};

/// How one item ended. Every item of a run ends in exactly one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// The operation returned `Ok`.
    Succeeded,
    /// The operation returned `Err` (through a `keel::Pipeline`: a
    /// `PipelineError`, whichever policy stopped it), panicked, its batch
    /// failed, or a shared bulkhead refused it.
    Failed,
    /// The per-item timeout, batch timeout or overall timeout elapsed while
    /// it ran.
    TimedOut,
    /// Cancelled while running (shutdown), or never started because the run
    /// stopped first.
    Cancelled,
}

impl Status {
    /// Every status, in a stable order.
    pub const ALL: [Status; 4] = [
        Status::Succeeded,
        Status::Failed,
        Status::TimedOut,
        Status::Cancelled,
    ];

    /// A short, stable, lowercase name, usable as a bounded metric label.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::TimedOut => "timed_out",
            Status::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of one item.
#[derive(Debug)]
#[non_exhaustive]
pub struct ItemReport<T, E> {
    /// The item's position (0-based) in the input.
    pub index: usize,
    /// The operation's value, or why there is none.
    pub result: Result<T, ExecError<E>>,
    /// From the start of the item's operation to its end (including retries).
    /// Zero for items that never started.
    pub duration: Duration,
}

impl<T, E> ItemReport<T, E> {
    pub(crate) const fn new(
        index: usize,
        result: Result<T, ExecError<E>>,
        duration: Duration,
    ) -> Self {
        ItemReport {
            index,
            result,
            duration,
        }
    }

    /// How the item ended.
    pub const fn status(&self) -> Status {
        match &self.result {
            Ok(_) => Status::Succeeded,
            Err(e) => e.status(),
        }
    }

    /// `true` when the operation returned `Ok`.
    pub const fn is_success(&self) -> bool {
        self.result.is_ok()
    }
}

/// Item counts by [`Status`]. `total` is always the sum of the four others.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Counts {
    /// Items seen (started or not).
    pub total: usize,
    /// Items whose operation returned `Ok`.
    pub succeeded: usize,
    /// Items that failed (error, panic, batch failure, breaker rejection).
    pub failed: usize,
    /// Items that timed out (per-item, batch or overall timeout).
    pub timed_out: usize,
    /// Items cancelled while running or never started.
    pub cancelled: usize,
}

impl Counts {
    /// Adds one item with `status`.
    pub fn record(&mut self, status: Status) {
        self.total += 1;
        match status {
            Status::Succeeded => self.succeeded += 1,
            Status::Failed => self.failed += 1,
            Status::TimedOut => self.timed_out += 1,
            Status::Cancelled => self.cancelled += 1,
        }
    }

    /// The count for one status.
    pub const fn get(&self, status: Status) -> usize {
        match status {
            Status::Succeeded => self.succeeded,
            Status::Failed => self.failed,
            Status::TimedOut => self.timed_out,
            Status::Cancelled => self.cancelled,
        }
    }

    /// `true` when every item succeeded (vacuously true for no items).
    pub const fn all_succeeded(&self) -> bool {
        self.succeeded == self.total
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} succeeded, {} failed, {} timed out, {} cancelled",
            self.succeeded, self.total, self.failed, self.timed_out, self.cancelled
        )
    }
}

/// The report of a whole run: one [`ItemReport`] per input item, in input
/// order, the counts, the wall time and why the run stopped early (if it did).
#[derive(Debug)]
pub struct Report<T, E> {
    items: Vec<ItemReport<T, E>>,
    counts: Counts,
    wall_time: Duration,
    stopped: Option<StopReason>,
}

impl<T, E> Report<T, E> {
    pub(crate) fn new(
        items: Vec<ItemReport<T, E>>,
        counts: Counts,
        wall_time: Duration,
        stopped: Option<StopReason>,
    ) -> Self {
        debug_assert_eq!(items.len(), counts.total);
        debug_assert!(items.iter().enumerate().all(|(i, r)| r.index == i));
        Report {
            items,
            counts,
            wall_time,
            stopped,
        }
    }

    /// Counts by status.
    pub const fn counts(&self) -> Counts {
        self.counts
    }

    /// Number of items in the run.
    pub const fn total(&self) -> usize {
        self.counts.total
    }

    /// Items that succeeded.
    pub const fn succeeded(&self) -> usize {
        self.counts.succeeded
    }

    /// Items that failed.
    pub const fn failed(&self) -> usize {
        self.counts.failed
    }

    /// Items that timed out.
    pub const fn timed_out(&self) -> usize {
        self.counts.timed_out
    }

    /// Items cancelled or never started.
    pub const fn cancelled(&self) -> usize {
        self.counts.cancelled
    }

    /// `true` when every item succeeded.
    pub const fn all_succeeded(&self) -> bool {
        self.counts.all_succeeded()
    }

    /// From the start of the run to the end of its last item.
    pub const fn wall_time(&self) -> Duration {
        self.wall_time
    }

    /// Why the run stopped before every item could run, if it did.
    pub const fn stop_reason(&self) -> Option<StopReason> {
        self.stopped
    }

    /// The per-item reports, in input order (`items()[i].index == i`).
    pub fn items(&self) -> &[ItemReport<T, E>] {
        &self.items
    }

    /// The report of the item at input position `index`.
    pub fn get(&self, index: usize) -> Option<&ItemReport<T, E>> {
        self.items.get(index)
    }

    /// `(index, value)` of every item that succeeded, in input order.
    pub fn successes(&self) -> impl Iterator<Item = (usize, &T)> {
        self.items
            .iter()
            .filter_map(|r| r.result.as_ref().ok().map(|v| (r.index, v)))
    }

    /// `(index, error)` of every item that did not succeed, in input order.
    pub fn errors(&self) -> impl Iterator<Item = (usize, &ExecError<E>)> {
        self.items
            .iter()
            .filter_map(|r| r.result.as_ref().err().map(|e| (r.index, e)))
    }

    /// The per-item reports, in input order.
    pub fn into_items(self) -> Vec<ItemReport<T, E>> {
        self.items
    }

    /// Just the results, in input order.
    pub fn into_results(self) -> Vec<Result<T, ExecError<E>>> {
        self.items.into_iter().map(|r| r.result).collect()
    }
}

/// Collects item reports that arrive in any order into input order.
pub(crate) struct Collector<T, E> {
    slots: Vec<Option<ItemReport<T, E>>>,
    counts: Counts,
}

impl<T, E> Collector<T, E> {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Collector {
            slots: Vec::with_capacity(capacity),
            counts: Counts::default(),
        }
    }

    pub(crate) fn push(&mut self, report: ItemReport<T, E>) {
        self.counts.record(report.status());
        let index = report.index;
        if index >= self.slots.len() {
            self.slots.resize_with(index + 1, || None);
        }
        debug_assert!(self.slots[index].is_none(), "item {index} reported twice");
        self.slots[index] = Some(report);
    }

    pub(crate) fn finish(self, wall_time: Duration, stopped: Option<StopReason>) -> Report<T, E> {
        let items: Vec<ItemReport<T, E>> = self
            .slots
            .into_iter()
            .map(|slot| slot.expect("every item index is reported exactly once"))
            .collect();
        Report::new(items, self.counts, wall_time, stopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ItemTimedOut;

    #[test]
    fn collector_restores_input_order_and_counts() {
        let mut c: Collector<u32, ()> = Collector::with_capacity(0);
        c.push(ItemReport::new(2, Ok(20), Duration::from_millis(2)));
        c.push(ItemReport::new(
            0,
            Err(ExecError::Failed(())),
            Duration::ZERO,
        ));
        c.push(ItemReport::new(
            1,
            Err(ExecError::TimedOut(ItemTimedOut {
                after: Duration::from_secs(1),
            })),
            Duration::from_secs(1),
        ));
        let report = c.finish(Duration::from_secs(1), None);
        let indexes: Vec<usize> = report.items().iter().map(|r| r.index).collect();
        assert_eq!(indexes, vec![0, 1, 2]);
        assert_eq!(report.total(), 3);
        assert_eq!(report.succeeded(), 1);
        assert_eq!(report.failed(), 1);
        assert_eq!(report.timed_out(), 1);
        assert_eq!(report.cancelled(), 0);
        assert_eq!(report.successes().collect::<Vec<_>>(), vec![(2, &20)]);
        assert_eq!(report.errors().count(), 2);
        assert!(!report.all_succeeded());
        assert_eq!(
            report.counts().to_string(),
            "1/3 succeeded, 1 failed, 1 timed out, 0 cancelled"
        );
    }
}
