//! keel-exec's executors and worker pool (every item of `keel_exec`,
//! re-exported), and, with the `pipeline` feature, the one adapter that runs
//! each item through a [`Pipeline`](crate::Pipeline): [`through`] and
//! [`through_with`].
//!
//! The executors own fan-out (how many items at once, per-item and overall
//! timeouts, cancellation, panic isolation, the per-item report); the
//! pipeline owns the policies around each call (deadline → retry → breaker
//! → rate limiter → bulkhead → attempt timeout), in the one order Keel
//! uses. The adapter joins them: the executor calls it once per item, and
//! it makes one pipeline call per item, which calls the operation once per
//! attempt.
//!
//! ```
//! use std::time::Duration;
//! use keel::Pipeline;
//! use keel::breaker::{BreakerConfig, CircuitBreaker};
//! use keel::exec::{ParallelExecutor, through};
//! use keel::retry::{Backoff, RetryPolicy};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ssm = Pipeline::builder()
//!     .retry(RetryPolicy::builder().max_retries(2).backoff(Backoff::constant(Duration::from_secs(1))).build()?)
//!     .breaker(CircuitBreaker::new("ssm", BreakerConfig::default()))
//!     .attempt_timeout(Duration::from_secs(30))
//!     .build()?;
//! let exec = ParallelExecutor::builder().concurrency(4).build()?;
//! let nodes = ["node-a", "node-b", "node-c"];
//! let report = exec
//!     .run(
//!         nodes,
//!         through(&ssm, |node: &str, attempt| async move {
//!             // node-b answers on the second attempt.
//!             if node == "node-b" && attempt.number == 1 {
//!                 Err("throttled")
//!             } else {
//!                 Ok(format!("{node}: active"))
//!             }
//!         }),
//!     )
//!     .await;
//! assert!(report.all_succeeded());
//! assert_eq!(ssm.stats().attempts, 4);
//! # Ok(())
//! # }
//! ```

pub use keel_exec::*;

#[cfg(feature = "pipeline")]
pub use adapter::{ItemCall, through, through_with};

#[cfg(feature = "pipeline")]
mod adapter {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;

    use keel_core::Classify;
    use keel_retry::Attempt;

    use crate::{CallOptions, Pipeline, PipelineError};

    /// The future of one item run through a [`Pipeline`]: the whole call,
    /// retries and waits included.
    pub type ItemCall<'p, T, E> =
        Pin<Box<dyn Future<Output = Result<T, PipelineError<E>>> + Send + 'p>>;

    /// Runs each item through `pipeline` with its defaults: the returned
    /// closure is the operation to give a [`ParallelExecutor`] or a
    /// [`BatchExecutor`] (for which the item is a [`Batch`]).
    ///
    /// `op(item, attempt)` is called once per attempt, with a clone of the
    /// item and the [`Attempt`] (whose `timeout` is the time the attempt has
    /// left: pass it on). An item's error is the [`PipelineError`] of its
    /// call (in the report, [`ExecError::Failed`]): a rejection by the
    /// breaker, a rate limit, a full bulkhead or a timeout inside the
    /// pipeline says which policy stopped the item.
    ///
    /// Keep the executor's per-item timeout above the pipeline's deadline (or
    /// leave it unset): an item the executor cuts is dropped, which the
    /// breaker counts as neutral, while a pipeline's attempt timeout counts
    /// as a failure.
    ///
    /// Costs per item: one boxed future and a reference-count increment,
    /// on top of the pipeline call; per attempt, one clone of the item.
    /// The futures are `Send`, so a run can be spawned.
    ///
    /// [`ParallelExecutor`]: keel_exec::ParallelExecutor
    /// [`BatchExecutor`]: keel_exec::BatchExecutor
    /// [`Batch`]: keel_exec::Batch
    /// [`ExecError::Failed`]: keel_exec::ExecError::Failed
    pub fn through<'p, I, T, E, F, Fut>(
        pipeline: &'p Pipeline,
        op: F,
    ) -> impl FnMut(I) -> ItemCall<'p, T, E> + Send + 'p
    where
        I: Clone + Send + Sync + 'p,
        F: Fn(I, Attempt) -> Fut + Send + Sync + 'p,
        Fut: Future<Output = Result<T, E>> + Send + 'p,
        T: Send + 'p,
        E: Send + 'p,
    {
        through_with(pipeline, |_: &I| CallOptions::new(), op)
    }

    /// [`through`] with per-item [`CallOptions`]: `options(&item)` says the
    /// item's priority in the bulkhead's queue, its rate-limit key, its
    /// deadline, retry policy and classifier.
    ///
    /// The options may borrow from the item (a key such as the VM's name)
    /// or from `'static` data (a classifier that is a unit struct or a
    /// `static`, a `static` retry policy).
    ///
    /// ```
    /// use keel::{CallOptions, Pipeline, Priority, RateLimit};
    /// use keel::exec::{ParallelExecutor, through_with};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // 10 calls per second per VM.
    /// let api = Pipeline::builder().keyed_rate_limit(RateLimit::per_second(10)).build()?;
    /// let vms = vec![("vm-1".to_owned(), true), ("vm-2".to_owned(), false)];
    /// let report = ParallelExecutor::builder()
    ///     .build()?
    ///     .run(
    ///         vms,
    ///         through_with(
    ///             &api,
    ///             |(vm, critical): &(String, bool)| {
    ///                 let priority = if *critical { Priority::Critical } else { Priority::Normal };
    ///                 CallOptions::new().key(vm).priority(priority)
    ///             },
    ///             |(vm, _), _attempt| async move { Ok::<_, std::io::Error>(vm) },
    ///         ),
    ///     )
    ///     .await;
    /// assert_eq!(report.successes().count(), 2);
    /// # Ok(())
    /// # }
    /// ```
    pub fn through_with<'p, I, T, E, C, O, F, Fut>(
        pipeline: &'p Pipeline,
        options: O,
        op: F,
    ) -> impl FnMut(I) -> ItemCall<'p, T, E> + Send + 'p
    where
        I: Clone + Send + Sync + 'p,
        O: for<'i> Fn(&'i I) -> CallOptions<'i, C> + Send + Sync + 'p,
        C: Classify<T, E> + Sync + ?Sized + 'static,
        F: Fn(I, Attempt) -> Fut + Send + Sync + 'p,
        Fut: Future<Output = Result<T, E>> + Send + 'p,
        T: Send + 'p,
        E: Send + 'p,
    {
        let shared = Arc::new((options, op));
        move |item: I| -> ItemCall<'p, T, E> {
            let shared = Arc::clone(&shared);
            Box::pin(async move {
                let (options, op) = &*shared;
                let call = options(&item);
                pipeline
                    .call_with(&call, |attempt| op(item.clone(), attempt))
                    .await
            })
        }
    }
}
