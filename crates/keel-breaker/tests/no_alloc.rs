//! The closed-state call path performs no heap allocation.
//!
//! A counting global allocator wraps the system allocator. The workspace
//! forbids `unsafe_code` (and `forbid` cannot be relaxed for one file),
//! while implementing `GlobalAlloc` requires `unsafe impl`; so the counting
//! allocator comes from the small `stats_alloc` crate, a dev-dependency.
//! Its counters are process-wide: this file holds a single test so no other
//! test thread allocates while it measures.

use std::alloc::System;
use std::time::Duration;

use keel_breaker::{BreakerConfig, CircuitBreaker};
use keel_core::{Clock, Outcome};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const CALLS: usize = 10_000;

/// Runs `f` (CALLS calls) under a fresh region up to five times and
/// passes as soon as one run allocated nothing. The counters are
/// process-wide and the test harness's main thread occasionally allocates
/// while a region is open; a path that allocated per call (or even once per
/// `CALLS` calls) would show on every run, so one clean run proves the path
/// allocation-free.
fn assert_no_allocation(what: &str, f: impl Fn()) {
    let mut runs = Vec::new();
    for _ in 0..5 {
        let region = Region::new(GLOBAL);
        f();
        let change = region.change();
        if change.allocations == 0 && change.reallocations == 0 {
            return;
        }
        runs.push(change);
    }
    panic!("{what}: allocated in every run: {runs:?}");
}

#[test]
fn closed_state_calls_do_not_allocate() {
    let (clock, handle) = Clock::manual();
    let default = CircuitBreaker::new(
        "default",
        BreakerConfig::builder()
            .clock(clock.clone())
            .build()
            .unwrap(),
    );
    let everything = CircuitBreaker::new(
        "everything",
        BreakerConfig::builder()
            .clock(clock.clone())
            .time_window(Duration::from_secs(10), 10)
            .failure_rate_threshold(0.9)
            .slow_call(Duration::from_millis(100), 0.9)
            .consecutive_failures(1_000)
            .minimum_calls(100)
            .build()
            .unwrap(),
    );
    // The counter works: one boxed value is one allocation.
    let region = Region::new(GLOBAL);
    std::hint::black_box(Box::new(7u64));
    assert_eq!(
        region.change().allocations,
        1,
        "the counting allocator is installed"
    );

    let allocating = std::panic::catch_unwind(|| {
        assert_no_allocation("boxing", || {
            std::hint::black_box(Box::new(1u8));
        });
    });
    assert!(
        allocating.is_err(),
        "the check fails for code that allocates"
    );

    // Warm up thread-locals (the counter stripe) before measuring.
    default.try_acquire().unwrap().record_success();
    everything.try_acquire().unwrap().record_success();

    assert_no_allocation("default config, successes", || {
        for _ in 0..CALLS {
            default.try_acquire().unwrap().record_success();
        }
    });
    assert_no_allocation("default config, mixed outcomes", || {
        for i in 0..CALLS {
            let permit = default.try_acquire().unwrap();
            match i % 10 {
                0 => permit.record_failure(),
                1 => drop(permit),
                2 => permit.record(Outcome::Neutral),
                _ => permit.record_success(),
            }
        }
    });
    assert_no_allocation("every rule", || {
        for i in 0..CALLS {
            let permit = everything.try_acquire().unwrap();
            if i % 100 == 0 {
                handle.advance(Duration::from_millis(150));
            }
            if i % 20 == 0 {
                permit.record_failure();
            } else {
                permit.record_success();
            }
        }
    });
    assert_no_allocation("async call()", || {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        for _ in 0..CALLS {
            let fut = std::pin::pin!(default.call(async { Ok::<u32, ()>(7) }));
            assert!(fut.poll(&mut cx).is_ready());
        }
    });
    assert_eq!(default.state(), keel_breaker::State::Closed);
    assert_eq!(everything.state(), keel_breaker::State::Closed);
}
