//! One item in flight: the operation's future, its optional timeout, the
//! panic guard and the bulkhead slot it holds, in one allocation-free
//! wrapper.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use keel_breaker::BulkheadPermit;
use keel_core::Outcome;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::error::{ExecError, ItemTimedOut, Panicked};
use crate::report::{ItemReport, Status};

pin_project! {
    /// The future the executor drives for one item. It never panics and
    /// resolves to the item's report; the bulkhead slot is given back when
    /// it resolves (telling an adaptive limit how the item went) or when it
    /// is dropped (neutral).
    pub(crate) struct ItemFuture<Fut> {
        index: usize,
        start: Instant,
        permit: Option<BulkheadPermit>,
        #[pin]
        state: State<Fut>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<Fut> {
        Plain { #[pin] fut: Fut },
        Timed { #[pin] fut: Fut, #[pin] sleep: Sleep, after: Duration },
        // The operation panicked when called, before it returned a future.
        Panicked { panic: Option<Panicked> },
    }
}

impl<Fut> ItemFuture<Fut> {
    /// Calls `op` for `item` (catching a panic in the call itself) and wraps
    /// the future it returns; `permit` is the item's bulkhead slot.
    pub(crate) fn start<I, F>(
        index: usize,
        op: &mut F,
        item: I,
        timeout: Option<Duration>,
        permit: BulkheadPermit,
    ) -> Self
    where
        F: FnMut(I) -> Fut,
    {
        let start = Instant::now();
        let state = match catch_unwind(AssertUnwindSafe(|| op(item))) {
            Ok(fut) => match timeout.and_then(|after| Some((start.checked_add(after)?, after))) {
                Some((deadline, after)) => State::Timed {
                    fut,
                    sleep: tokio::time::sleep_until(deadline),
                    after,
                },
                // No timeout, or one so large it cannot be represented.
                None => State::Plain { fut },
            },
            Err(payload) => State::Panicked {
                panic: Some(Panicked::from_payload(payload)),
            },
        };
        ItemFuture {
            index,
            start,
            permit: Some(permit),
            state,
        }
    }

    pub(crate) fn index(&self) -> usize {
        self.index
    }

    pub(crate) fn started_at(&self) -> Instant {
        self.start
    }
}

impl<Fut, T, E> Future for ItemFuture<Fut>
where
    Fut: Future<Output = Result<T, E>>,
{
    type Output = ItemReport<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = match this.state.project() {
            StateProj::Plain { fut } => ready!(poll_guarded(fut, cx)),
            StateProj::Timed { fut, sleep, after } => match poll_guarded(fut, cx) {
                Poll::Ready(result) => result,
                Poll::Pending => {
                    ready!(sleep.poll(cx));
                    Err(ExecError::TimedOut(ItemTimedOut { after: *after }))
                }
            },
            StateProj::Panicked { panic } => Err(ExecError::Panicked(
                panic.take().expect("ItemFuture polled after completion"),
            )),
        };
        let duration = Instant::now().saturating_duration_since(*this.start);
        let report = ItemReport::new(*this.index, result, duration);
        if let Some(permit) = this.permit.take() {
            // Errors, timeouts and panics are drops for an adaptive limit.
            permit.record(match report.status() {
                Status::Succeeded => Outcome::Success,
                Status::Failed | Status::TimedOut => Outcome::Failure,
                Status::Cancelled => Outcome::Neutral,
            });
        }
        Poll::Ready(report)
    }
}

/// Polls `fut`, turning its error into [`ExecError::Failed`] and a panic
/// into the item's failure. The future is never polled again after a panic:
/// the caller completes the item.
fn poll_guarded<Fut, T, E>(
    fut: Pin<&mut Fut>,
    cx: &mut Context<'_>,
) -> Poll<Result<T, ExecError<E>>>
where
    Fut: Future<Output = Result<T, E>>,
{
    match catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
        Ok(Poll::Ready(result)) => Poll::Ready(result.map_err(ExecError::Failed)),
        Ok(Poll::Pending) => Poll::Pending,
        Err(payload) => Poll::Ready(Err(ExecError::Panicked(Panicked::from_payload(payload)))),
    }
}
