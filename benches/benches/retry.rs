//! keel-retry against backon 1.6 and backoff 0.4, in one criterion run.
//!
//! * `retry/fail_twice_then_succeed/*`: one call whose operation fails twice
//!   and then succeeds, with zero delays, on a tokio current-thread runtime.
//!   keel-retry does not touch the timer for a zero delay; backon and
//!   backoff always create a `tokio::time::Sleep`, even of zero, and tokio
//!   rounds its deadline up to the next millisecond tick, so they are also
//!   measured with a no-op sleeper (`*_no_sleep`) to compare the retry
//!   machinery alone. `hand_loop` is the hand-written minimum.
//! * `retry/next_delay/*`: the delays of a five-retry schedule (1 s ×2,
//!   capped at 30 s), with and without jitter (keel's `delays_with` preview
//!   from a seeded source).
//!
//! Run: `cargo bench -p keel-benches --bench retry`.
#![allow(missing_docs)]

use std::future::{Ready, ready};
use std::hint::black_box;
use std::time::Duration;

use backoff::backoff::Backoff as _;
use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use criterion::{Criterion, criterion_group, criterion_main};
use keel_core::Rng;
use keel_retry::{Backoff, Jitter, RetryBudget, RetryPolicy};

const SECOND: Duration = Duration::from_secs(1);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime")
}

/// Fails on the first two calls of each run, succeeds on the third.
async fn flaky(call: u32) -> Result<u32, &'static str> {
    if call < 3 { Err("transient") } else { Ok(call) }
}

fn zero_delay_keel() -> keel_retry::RetryPolicyBuilder {
    RetryPolicy::builder()
        .max_retries(3)
        .backoff(Backoff::constant(Duration::ZERO))
        .max_delay(Duration::ZERO)
        .jitter(Jitter::None)
}

fn zero_delay_backon() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::ZERO)
        .with_max_delay(Duration::ZERO)
        .with_max_times(3)
}

/// A backoff 0.4 sleeper that does not sleep.
struct NoSleep;

impl backoff::future::Sleeper for NoSleep {
    type Sleep = Ready<()>;
    fn sleep(&self, _: Duration) -> Ready<()> {
        ready(())
    }
}

fn fail_twice_then_succeed(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("retry/fail_twice_then_succeed");

    group.bench_function("hand_loop", |b| {
        b.to_async(&rt).iter(|| async {
            let mut call = 0;
            loop {
                call += 1;
                match flaky(call).await {
                    Ok(v) => break black_box(v),
                    Err(_) if call <= 3 => continue,
                    Err(_) => unreachable!(),
                }
            }
        });
    });

    let keel = zero_delay_keel().build().unwrap();
    group.bench_function("keel", |b| {
        b.to_async(&rt).iter(|| async {
            let v = keel.retry(|a| flaky(a.number)).await.unwrap();
            black_box(v)
        });
    });

    // A budget that never runs out during the bench (a reserve of 2^32 − 1
    // retries), so the cost measured is the deposit and the withdrawals.
    let keel_budget = zero_delay_keel()
        .budget(RetryBudget::new(0.2, u32::MAX, Duration::from_secs(10)).unwrap())
        .build()
        .unwrap();
    group.bench_function("keel_with_budget", |b| {
        b.to_async(&rt).iter(|| async {
            let v = keel_budget.retry(|a| flaky(a.number)).await.unwrap();
            black_box(v)
        });
    });

    group.bench_function("backon", |b| {
        b.to_async(&rt).iter(|| async {
            let mut call = 0;
            let v = (|| {
                call += 1;
                flaky(call)
            })
            .retry(zero_delay_backon())
            .await
            .unwrap();
            black_box(v)
        });
    });

    group.bench_function("backon_no_sleep", |b| {
        b.to_async(&rt).iter(|| async {
            let mut call = 0;
            let v = (|| {
                call += 1;
                flaky(call)
            })
            .retry(zero_delay_backon())
            .sleep(|_| ready(()))
            .await
            .unwrap();
            black_box(v)
        });
    });

    group.bench_function("backoff", |b| {
        b.to_async(&rt).iter(|| async {
            let mut call = 0;
            let v = backoff::future::retry(backoff::backoff::Zero {}, || {
                call += 1;
                let n = call;
                async move { flaky(n).await.map_err(backoff::Error::transient) }
            })
            .await
            .unwrap();
            black_box(v)
        });
    });

    group.bench_function("backoff_no_sleep", |b| {
        b.to_async(&rt).iter(|| async {
            let mut call = 0;
            let v = backoff::future::Retry::new(
                NoSleep,
                backoff::backoff::Zero {},
                |_: &str, _: Duration| {},
                || {
                    call += 1;
                    let n = call;
                    async move { flaky(n).await.map_err(backoff::Error::transient) }
                },
            )
            .await
            .unwrap();
            black_box(v)
        });
    });

    group.finish();
}

fn next_delay(c: &mut Criterion) {
    let mut group = c.benchmark_group("retry/next_delay");
    const RETRIES: u32 = 5;

    for (name, jitter) in [("no_jitter", Jitter::None), ("full_jitter", Jitter::Full)] {
        let policy = RetryPolicy::builder()
            .max_retries(RETRIES)
            .backoff(Backoff::exponential(SECOND, 2.0))
            .max_delay(SECOND * 30)
            .jitter(jitter)
            .rng(Rng::with_seed(1))
            .build()
            .unwrap();
        let rng = Rng::with_seed(1);
        group.bench_function(format!("keel_delays_iter/{name}"), |b| {
            b.iter(|| black_box(policy.delays_with(&rng).sum::<Duration>()));
        });
    }

    for (name, jitter) in [("no_jitter", false), ("full_jitter", true)] {
        let mut builder = ExponentialBuilder::default()
            .with_min_delay(SECOND)
            .with_factor(2.0)
            .with_max_delay(SECOND * 30)
            .with_max_times(RETRIES as usize);
        if jitter {
            builder = builder.with_jitter();
        }
        group.bench_function(format!("backon/{name}"), |b| {
            b.iter(|| black_box(black_box(builder).build().sum::<Duration>()));
        });
    }

    for (name, randomization) in [("no_jitter", 0.0), ("jitter_0.5", 0.5)] {
        let mut exp = backoff::ExponentialBackoffBuilder::new()
            .with_initial_interval(SECOND)
            .with_multiplier(2.0)
            .with_max_interval(SECOND * 30)
            .with_randomization_factor(randomization)
            .with_max_elapsed_time(None)
            .build();
        group.bench_function(format!("backoff/{name}"), |b| {
            b.iter(|| {
                exp.reset();
                let mut total = Duration::ZERO;
                for _ in 0..RETRIES {
                    total += exp.next_backoff().unwrap_or_default();
                }
                black_box(total)
            });
        });
    }

    group.finish();
}

criterion_group!(benches, fail_twice_then_succeed, next_delay);
criterion_main!(benches);
