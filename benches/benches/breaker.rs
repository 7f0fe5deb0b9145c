//! Closed-state overhead of a protected call: keel-breaker against
//! failsafe 1.3 in the same run, single-threaded and with two threads
//! contending on one breaker.
//!
//! Run: `cargo bench -p keel-benches --bench breaker`
//! (add `-- --warm-up-time 1 --measurement-time 3` for a shorter run).
//!
//! A "call" is the breaker bookkeeping around a call that succeeds:
//! keel `try_acquire()` + `record_success()`, failsafe
//! `is_call_permitted()` + `on_success()` (or its `call`). The protected
//! work itself is empty so that only the breaker's cost is measured.
#![allow(missing_docs, clippy::disallowed_types)]

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use failsafe::{CircuitBreaker as _, backoff, failure_policy};
use keel_breaker::{BreakerConfig, CircuitBreaker};

/// The breaker configurations measured.
fn keel_default() -> CircuitBreaker {
    // Count window of 100 calls, 50 % failure rate, 10 minimum calls.
    CircuitBreaker::new("bench", BreakerConfig::default())
}

fn keel_consecutive() -> CircuitBreaker {
    CircuitBreaker::new(
        "bench",
        BreakerConfig::builder()
            .no_failure_rate()
            .consecutive_failures(5)
            .minimum_calls(5)
            .build()
            .unwrap(),
    )
}

fn keel_time_window_and_consecutive() -> CircuitBreaker {
    // The closest match to failsafe's default policy (a success rate over a
    // time window, or consecutive failures): reads the clock on every call.
    CircuitBreaker::new(
        "bench",
        BreakerConfig::builder()
            .time_window(Duration::from_secs(30), 30)
            .failure_rate_threshold(0.5)
            .consecutive_failures(5)
            .minimum_calls(5)
            .build()
            .unwrap(),
    )
}

fn keel_aws_ec2() -> CircuitBreaker {
    // Consecutive failures plus a bulkhead of 5 concurrent calls.
    CircuitBreaker::new("bench", BreakerConfig::aws_ec2())
}

#[inline]
fn keel_call(b: &CircuitBreaker) {
    let permit = b.try_acquire().expect("closed");
    black_box(&permit);
    permit.record_success();
}

type FailsafeDefault = failsafe::StateMachine<
    failure_policy::OrElse<
        failure_policy::SuccessRateOverTimeWindow<backoff::EqualJittered>,
        failure_policy::ConsecutiveFailures<backoff::EqualJittered>,
    >,
    (),
>;

fn failsafe_default() -> FailsafeDefault {
    failsafe::Config::new().build()
}

fn failsafe_consecutive()
-> failsafe::StateMachine<failure_policy::ConsecutiveFailures<backoff::Constant>, ()> {
    failsafe::Config::new()
        .failure_policy(failure_policy::consecutive_failures(
            5,
            backoff::constant(Duration::from_secs(30)),
        ))
        .build()
}

fn single_thread(c: &mut Criterion) {
    let mut group = c.benchmark_group("breaker_closed_call/1_thread");

    let b = keel_default();
    group.bench_function("keel/default_count_window", |bench| {
        bench.iter(|| keel_call(&b));
    });
    let b = keel_consecutive();
    group.bench_function("keel/consecutive", |bench| bench.iter(|| keel_call(&b)));
    let b = keel_aws_ec2();
    group.bench_function("keel/aws_ec2", |bench| {
        bench.iter(|| keel_call(&b));
    });
    let b = keel_time_window_and_consecutive();
    group.bench_function("keel/time_window_and_consecutive", |bench| {
        bench.iter(|| keel_call(&b));
    });

    let f = failsafe_default();
    group.bench_function("failsafe/default", |bench| {
        bench.iter(|| {
            if black_box(f.is_call_permitted()) {
                f.on_success();
            }
        });
    });
    group.bench_function("failsafe/default_call", |bench| {
        bench.iter(|| black_box(f.call(|| Ok::<_, ()>(()))));
    });
    let f = failsafe_consecutive();
    group.bench_function("failsafe/consecutive", |bench| {
        bench.iter(|| {
            if black_box(f.is_call_permitted()) {
                f.on_success();
            }
        });
    });
    group.finish();
}

/// Two threads each make `iters` calls on one shared breaker, started
/// together by a barrier; the sample is the slower thread's time, so the
/// reported time per iteration is the per-call cost each thread sees while
/// the other contends.
fn contended<F>(iters: u64, call: F) -> Duration
where
    F: Fn() + Send + Sync + 'static,
{
    let call = Arc::new(call);
    let barrier = Arc::new(Barrier::new(2));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let call = call.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                // Touch thread-locals before timing.
                call();
                barrier.wait();
                let start = Instant::now();
                for _ in 0..iters {
                    call();
                }
                start.elapsed()
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .max()
        .unwrap_or_default()
}

fn two_threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("breaker_closed_call/2_threads");

    let b = keel_default();
    group.bench_function("keel/default_count_window", |bench| {
        bench.iter_custom(|iters| {
            let b = b.clone();
            contended(iters, move || keel_call(&b))
        });
    });
    let b = keel_consecutive();
    group.bench_function("keel/consecutive", |bench| {
        bench.iter_custom(|iters| {
            let b = b.clone();
            contended(iters, move || keel_call(&b))
        });
    });
    let b = keel_aws_ec2();
    group.bench_function("keel/aws_ec2", |bench| {
        bench.iter_custom(|iters| {
            let b = b.clone();
            contended(iters, move || keel_call(&b))
        });
    });
    let f = failsafe_default();
    group.bench_function("failsafe/default", |bench| {
        bench.iter_custom(|iters| {
            let f = f.clone();
            contended(iters, move || {
                if black_box(f.is_call_permitted()) {
                    f.on_success();
                }
            })
        });
    });
    let f = failsafe_consecutive();
    group.bench_function("failsafe/consecutive", |bench| {
        bench.iter_custom(|iters| {
            let f = f.clone();
            contended(iters, move || {
                if black_box(f.is_call_permitted()) {
                    f.on_success();
                }
            })
        });
    });
    group.finish();
}

criterion_group!(benches, single_thread, two_threads);
criterion_main!(benches);
