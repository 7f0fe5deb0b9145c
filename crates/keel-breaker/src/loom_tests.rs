//! Loom models of the concurrent state machine. Run with
//! `RUSTFLAGS="--cfg loom" cargo test -p keel-breaker --release --lib loom`.

use std::time::Duration;

use keel_core::{Clock, ManualClock};
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;

use crate::sync::Arc;
use crate::{BreakerConfig, BreakerConfigBuilder, CircuitBreaker, State};

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(f);
}

fn breaker(builder: BreakerConfigBuilder) -> (CircuitBreaker, ManualClock) {
    let (clock, handle) = Clock::manual();
    let config = builder.clock(clock).build().unwrap();
    (CircuitBreaker::new("loom", config), handle)
}

fn consecutive(n: u32) -> BreakerConfigBuilder {
    BreakerConfig::builder()
        .no_failure_rate()
        .consecutive_failures(n)
        .minimum_calls(1)
        .open_duration(Duration::from_secs(1))
}

/// Opens `b` with one failure and lets the open duration pass.
fn to_half_open(b: &CircuitBreaker, clock: &ManualClock) {
    b.try_acquire().unwrap().record_failure();
    clock.advance(Duration::from_secs(1));
    assert_eq!(b.state(), State::HalfOpen);
}

#[test]
fn loom_racing_failures_open_the_breaker_exactly_once() {
    model(|| {
        let (b, _clock) = breaker(consecutive(2));
        let other = b.clone();
        let t = thread::spawn(move || {
            if let Ok(p) = other.try_acquire() {
                p.record_failure();
            }
        });
        if let Ok(p) = b.try_acquire() {
            p.record_failure();
        }
        t.join().unwrap();
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.stats().totals.transitions_to(State::Open), 1);
    });
}

#[test]
fn loom_admission_racing_a_trip_never_closes_or_double_opens() {
    model(|| {
        let (b, _clock) = breaker(consecutive(1));
        let other = b.clone();
        let t = thread::spawn(move || match other.try_acquire() {
            Ok(p) => p.record_success(),
            Err(rejected) => assert!(rejected.retry_after().is_some()),
        });
        b.try_acquire().unwrap().record_failure();
        t.join().unwrap();
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.stats().totals.transitions_to(State::Open), 1);
    });
}

#[test]
fn loom_half_open_never_exceeds_its_probe_limit() {
    model(|| {
        let (b, clock) = breaker(
            consecutive(1)
                .half_open_max_probes(1)
                .half_open_successes(5),
        );
        to_half_open(&b, &clock);
        let inside = Arc::new(AtomicUsize::new(0));
        let probe = |b: CircuitBreaker, inside: Arc<AtomicUsize>| {
            move || {
                if let Ok(p) = b.try_acquire() {
                    assert!(p.is_probe());
                    let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    assert_eq!(n, 1, "two probes in flight with a limit of one");
                    inside.fetch_sub(1, Ordering::SeqCst);
                    p.record_success();
                }
            }
        };
        let t = thread::spawn(probe(b.clone(), inside.clone()));
        probe(b.clone(), inside)();
        t.join().unwrap();
        let s = b.stats();
        assert_eq!(s.state, State::HalfOpen);
        assert_eq!(s.half_open_probes_in_flight, 0, "every slot was released");
        assert!((1..=2).contains(&s.half_open_successes));
    });
}

#[test]
fn loom_a_probe_success_racing_a_probe_failure_settles() {
    model(|| {
        let (b, clock) = breaker(
            consecutive(1)
                .half_open_max_probes(2)
                .half_open_successes(1),
        );
        to_half_open(&b, &clock);
        let good = b.try_acquire_owned().unwrap();
        let bad = b.try_acquire_owned().unwrap();
        let t = thread::spawn(move || good.record_success());
        bad.record_failure();
        t.join().unwrap();
        // Whichever landed first decided; the other was stale.
        let s = b.stats();
        assert!(
            matches!(s.state, State::Open | State::Closed),
            "{:?}",
            s.state
        );
        let t = s.totals;
        assert_eq!(
            t.transitions_to(State::Open) + t.transitions_to(State::Closed),
            2,
            "the first open plus exactly one decision"
        );
        assert!(
            b.inner().half_open_word() & 0xFFFF_0000 == 0,
            "no probe slot leaked"
        );
    });
}

#[test]
fn loom_a_dropped_probe_frees_its_slot_for_a_racing_caller() {
    model(|| {
        let (b, clock) = breaker(
            consecutive(1)
                .half_open_max_probes(1)
                .half_open_successes(1),
        );
        to_half_open(&b, &clock);
        let held = b.try_acquire_owned().unwrap();
        let t = thread::spawn(move || drop(held));
        let second = b.try_acquire();
        let admitted = second.is_ok();
        if let Ok(p) = second {
            p.record_success();
        }
        t.join().unwrap();
        if admitted {
            assert_eq!(b.state(), State::Closed);
        } else {
            assert_eq!(b.state(), State::HalfOpen);
            b.try_acquire()
                .expect("the dropped probe freed its slot")
                .record_success();
            assert_eq!(b.state(), State::Closed);
        }
    });
}

#[test]
fn loom_count_window_summary_matches_its_slots() {
    model(|| {
        let (b, _clock) = breaker(
            BreakerConfig::builder()
                .count_window(2)
                .failure_rate_threshold(1.0)
                .minimum_calls(2),
        );
        let other = b.clone();
        let t = thread::spawn(move || {
            if let Ok(p) = other.try_acquire() {
                p.record_success();
            }
            if let Ok(p) = other.try_acquire() {
                p.record_failure();
            }
        });
        if let Ok(p) = b.try_acquire() {
            p.record_failure();
        }
        b.reset();
        t.join().unwrap();
        assert!(b.inner().window_consistent());
    });
}
