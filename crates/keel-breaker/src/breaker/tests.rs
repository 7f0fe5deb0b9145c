//! State-machine tests on a manual clock (synchronous, deterministic).

use std::sync::Mutex as StdMutex;
use std::time::Duration;

use keel_core::{Clock, ManualClock, Outcome};
use proptest::prelude::*;

use super::*;
use crate::{BreakerConfigBuilder, OpenGrowth};

fn manual(builder: BreakerConfigBuilder) -> (CircuitBreaker, ManualClock) {
    let (clock, handle) = Clock::manual();
    let config = builder.clock(clock).build().expect("valid config");
    (CircuitBreaker::new("dep", config), handle)
}

fn fail(b: &CircuitBreaker, n: usize) {
    for _ in 0..n {
        b.try_acquire().expect("admitted").record_failure();
    }
}

fn succeed(b: &CircuitBreaker, n: usize) {
    for _ in 0..n {
        b.try_acquire().expect("admitted").record_success();
    }
}

fn open_rejection(b: &CircuitBreaker) -> CircuitOpen {
    match b.try_acquire() {
        Err(Rejected::CircuitOpen(open)) => open,
        Ok(_) => panic!("expected a rejection, got a permit"),
    }
}

fn consecutive(n: u32) -> BreakerConfigBuilder {
    BreakerConfig::builder()
        .no_failure_rate()
        .consecutive_failures(n)
        .minimum_calls(1)
        .open_duration(Duration::from_secs(10))
        .half_open_max_probes(1)
        .half_open_successes(1)
}

#[test]
fn consecutive_failures_trip_and_a_success_resets_the_run() {
    let (b, _clock) = manual(consecutive(3));
    fail(&b, 2);
    succeed(&b, 1);
    fail(&b, 2);
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.stats().consecutive_failures, 2);
    fail(&b, 1);
    assert_eq!(b.state(), State::Open);
    let stats = b.stats();
    assert_eq!(stats.totals.failures, 5);
    assert_eq!(stats.totals.successes, 1);
    assert_eq!(stats.totals.transitions_to(State::Open), 1);
}

#[test]
fn minimum_calls_do_not_gate_the_consecutive_rule() {
    // Two in a row means two in a row: the minimum is the rate rules'.
    let (b, _clock) = manual(consecutive(2).minimum_calls(5));
    fail(&b, 1);
    assert_eq!(b.state(), State::Closed);
    fail(&b, 1);
    assert_eq!(b.state(), State::Open);
}

#[test]
fn failure_rate_over_the_count_window_trips_only_after_minimum_calls() {
    let (b, _clock) = manual(
        BreakerConfig::builder()
            .count_window(10)
            .failure_rate_threshold(0.5)
            .minimum_calls(10),
    );
    fail(&b, 9);
    assert_eq!(b.state(), State::Closed, "9 calls < minimum of 10");
    assert_eq!(b.stats().window_failures, 9);
    // The 10th call is a success, yet 9/10 >= 50 %: the rule is checked on
    // every recorded call once the minimum is reached.
    succeed(&b, 1);
    assert_eq!(b.state(), State::Open);
}

#[test]
fn old_failures_slide_out_of_the_count_window() {
    let (b, _clock) = manual(
        BreakerConfig::builder()
            .count_window(4)
            .failure_rate_threshold(0.75)
            .minimum_calls(4),
    );
    fail(&b, 2);
    succeed(&b, 6);
    let s = b.stats();
    assert_eq!((s.window_calls, s.window_failures), (4, 0));
    assert_eq!(s.failure_rate(), Some(0.0));
    fail(&b, 2);
    assert_eq!(b.state(), State::Closed, "2/4 < 75 %");
    fail(&b, 1);
    assert_eq!(b.state(), State::Open, "3/4 >= 75 %");
}

#[test]
fn neutral_outcomes_change_no_statistic_and_overloads_count_as_failures() {
    let (b, _clock) = manual(
        consecutive(2)
            .minimum_calls(2)
            .count_window(10)
            .failure_rate_threshold(1.0),
    );
    b.try_acquire().unwrap().record(Outcome::Failure);
    for _ in 0..5 {
        b.try_acquire().unwrap().record(Outcome::Neutral);
        drop(b.try_acquire().unwrap());
    }
    let s = b.stats();
    assert_eq!(s.consecutive_failures, 1, "neutral does not reset the run");
    assert_eq!((s.window_calls, s.window_failures), (1, 1));
    assert_eq!(s.totals.neutral, 10);
    b.try_acquire()
        .unwrap()
        .record(Outcome::overloaded_for(Duration::from_secs(1)));
    assert_eq!(b.state(), State::Open, "an overload is a failure");
}

#[test]
fn open_rejects_with_the_remaining_time_then_goes_half_open() {
    let (b, clock) = manual(consecutive(1));
    fail(&b, 1);
    let open = open_rejection(&b);
    assert_eq!(open.state, State::Open);
    assert_eq!(open.retry_after, Some(Duration::from_secs(10)));
    assert_eq!(&*open.name, "dep");
    clock.advance(Duration::from_secs(4));
    let open = open_rejection(&b);
    assert_eq!(open.retry_after, Some(Duration::from_secs(6)));
    assert_eq!(
        Rejected::CircuitOpen(open.clone()).outcome(),
        Outcome::Overloaded {
            retry_after: Some(Duration::from_secs(6))
        }
    );
    assert_eq!(b.stats().retry_after, Some(Duration::from_secs(6)));
    clock.advance(Duration::from_secs(6));
    assert_eq!(
        b.state(),
        State::HalfOpen,
        "state() applies the due transition"
    );
    let s = b.stats();
    assert_eq!(s.totals.rejected_open, 2);
    assert_eq!(s.retry_after, None);
}

#[test]
fn half_open_admits_at_most_n_probes_and_a_dropped_probe_frees_its_slot() {
    let (b, clock) = manual(
        consecutive(1)
            .half_open_max_probes(2)
            .half_open_successes(3),
    );
    fail(&b, 1);
    clock.advance(Duration::from_secs(10));
    let p1 = b.try_acquire().expect("first probe");
    let p2 = b.try_acquire().expect("second probe");
    assert!(p1.is_probe() && p2.is_probe());
    let full = open_rejection(&b);
    assert_eq!((full.state, full.retry_after), (State::HalfOpen, None));
    assert_eq!(b.stats().half_open_probes_in_flight, 2);
    drop(p1); // cancelled: neutral, slot freed, no success counted
    let p3 = b.try_acquire().expect("slot freed by the dropped probe");
    p2.record_success();
    p3.record_success();
    let s = b.stats();
    assert_eq!(s.state, State::HalfOpen);
    assert_eq!(
        (s.half_open_probes_in_flight, s.half_open_successes),
        (0, 2)
    );
    b.try_acquire().unwrap().record_success();
    assert_eq!(b.state(), State::Closed, "three probe successes close it");
    assert_eq!(b.stats().totals.rejected_half_open, 1);
}

#[test]
fn one_failed_probe_reopens() {
    let (b, clock) = manual(
        consecutive(1)
            .half_open_max_probes(3)
            .half_open_successes(3),
    );
    fail(&b, 1);
    clock.advance(Duration::from_secs(10));
    let p1 = b.try_acquire().unwrap();
    let p2 = b.try_acquire().unwrap();
    p1.record_success();
    p2.record_failure();
    assert_eq!(b.state(), State::Open);
}

#[test]
fn open_duration_grows_on_repeated_opens_is_capped_and_resets_on_close() {
    let (b, clock) = manual(
        consecutive(1)
            .open_duration(Duration::from_secs(10))
            .open_duration_growth(2.0, Duration::from_secs(35)),
    );
    fail(&b, 1);
    let mut seen = Vec::new();
    for _ in 0..4 {
        let wait = open_rejection(&b).retry_after.unwrap();
        seen.push(wait.as_secs());
        clock.advance(wait);
        b.try_acquire().expect("probe").record_failure();
    }
    assert_eq!(seen, [10, 20, 35, 35]);
    assert_eq!(b.stats().consecutive_opens, 5);
    clock.advance(Duration::from_secs(35));
    b.try_acquire().expect("probe").record_success();
    assert_eq!(b.state(), State::Closed);
    fail(&b, 1);
    assert_eq!(
        open_rejection(&b).retry_after,
        Some(Duration::from_secs(10))
    );
}

#[test]
fn half_open_max_wait_reopens_when_a_probe_hangs_and_its_late_result_is_stale() {
    let (b, clock) = manual(
        consecutive(1)
            .half_open_max_wait(Duration::from_secs(5))
            .open_duration_growth(2.0, Duration::from_secs(60)),
    );
    fail(&b, 1);
    clock.advance(Duration::from_secs(10));
    let hung = b.try_acquire().expect("probe");
    assert!(b.try_acquire().is_err(), "the only slot is taken");
    clock.advance(Duration::from_secs(5));
    assert_eq!(b.state(), State::Open, "gave up on the hung probe");
    assert_eq!(
        b.stats().retry_after,
        Some(Duration::from_secs(20)),
        "counts as a repeated open"
    );
    clock.advance(Duration::from_secs(20));
    let fresh = b
        .try_acquire()
        .expect("a new half-open period has a free slot");
    // The hung probe finally fails: it belongs to the previous period.
    hung.record_failure();
    assert_eq!(b.state(), State::HalfOpen);
    fresh.record_success();
    assert_eq!(b.state(), State::Closed);
}

#[test]
fn slow_calls_trip_the_slow_call_rule_and_are_reported() {
    let events = Arc::new(StdMutex::new(Vec::new()));
    let sink = events.clone();
    let (b, clock) = manual(
        BreakerConfig::builder()
            .no_failure_rate()
            .count_window(4)
            .minimum_calls(4)
            .slow_call(Duration::from_millis(500), 0.5)
            .listener(move |e: &BreakerEvent<'_>| {
                if let BreakerEvent::SlowCall { duration, .. } = e {
                    sink.lock().unwrap().push(*duration);
                }
            }),
    );
    for took in [100, 499, 500] {
        let p = b.try_acquire().unwrap();
        clock.advance(Duration::from_millis(took));
        p.record_success();
    }
    assert_eq!(b.state(), State::Closed, "3 calls < minimum");
    let p = b.try_acquire().unwrap();
    clock.advance(Duration::from_secs(2));
    p.record_success();
    assert_eq!(b.state(), State::Open, "2 of 4 calls slow");
    assert_eq!(
        *events.lock().unwrap(),
        [Duration::from_millis(500), Duration::from_secs(2)]
    );
    assert_eq!(b.stats().totals.slow, 2);
}

#[test]
fn a_slow_probe_counts_as_a_failed_probe() {
    let (b, clock) = manual(consecutive(1).slow_call(Duration::from_secs(1), 1.0));
    fail(&b, 1);
    clock.advance(Duration::from_secs(10));
    let p = b.try_acquire().unwrap();
    clock.advance(Duration::from_secs(3));
    p.record_success();
    assert_eq!(b.state(), State::Open);
}

#[test]
fn the_time_window_forgets_calls_older_than_its_duration() {
    let (b, clock) = manual(
        BreakerConfig::builder()
            .time_window(Duration::from_secs(10), 10)
            .failure_rate_threshold(0.5)
            .minimum_calls(4),
    );
    fail(&b, 3);
    clock.advance(Duration::from_secs(10));
    assert_eq!(b.stats().window_calls, 0, "the failures expired");
    fail(&b, 1);
    succeed(&b, 2);
    assert_eq!(b.state(), State::Closed);
    clock.advance(Duration::from_secs(5));
    fail(&b, 1);
    assert_eq!(
        b.state(),
        State::Open,
        "2 of 4 calls in the last 10 s failed"
    );
}

#[test]
fn force_open_disable_and_reset() {
    let (b, _clock) = manual(consecutive(1));
    let stale = b.try_acquire().unwrap();
    b.force_open();
    assert_eq!(b.state(), State::ForcedOpen);
    let open = open_rejection(&b);
    assert_eq!((open.state, open.retry_after), (State::ForcedOpen, None));
    stale.record_failure();
    b.disable();
    assert_eq!(b.state(), State::Disabled);
    fail(&b, 5);
    assert_eq!(b.state(), State::Disabled, "disabled never trips");
    b.reset();
    assert_eq!(b.state(), State::Closed);
    let s = b.stats();
    assert_eq!(s.consecutive_failures, 0);
    assert_eq!(s.totals.failures, 6, "totals survive a reset");
    assert_eq!(s.totals.rejected_forced_open, 1);
    // A permit from before a reset is stale.
    let stale = b.try_acquire().unwrap();
    b.reset();
    stale.record_failure();
    assert_eq!(b.state(), State::Closed);
}

#[test]
fn a_consecutive_rule_alone_trips_on_exactly_that_many_failures() {
    // Issue 22: `consecutive_failures(3)` on a fresh builder used to keep
    // the default 50 % rate rule and its 10-call minimum, which also gated
    // the consecutive rule. Setting one rule now means only that rule.
    let config = BreakerConfig::builder()
        .consecutive_failures(3)
        .clock(Clock::manual().0)
        .build()
        .unwrap();
    assert_eq!(config.failure_rate_threshold(), None);
    let b = CircuitBreaker::new("api", config);
    for _ in 0..2 {
        b.try_acquire().unwrap().record_failure();
    }
    assert_eq!(b.state(), State::Closed);
    b.try_acquire().unwrap().record_failure();
    assert_eq!(b.state(), State::Open);
    // Both rules when both are asked for.
    let both = BreakerConfig::builder()
        .consecutive_failures(3)
        .failure_rate_threshold(0.5)
        .build()
        .unwrap();
    assert_eq!(both.consecutive_failures(), Some(3));
    assert_eq!(both.failure_rate_threshold(), Some(0.5));
    // Adjusting a preset keeps its rules.
    let adjusted = BreakerConfig::default()
        .to_builder()
        .consecutive_failures(5)
        .build()
        .unwrap();
    assert_eq!(adjusted.failure_rate_threshold(), Some(0.5));
}

#[test]
fn listeners_see_transitions_and_rejections_in_order() {
    let log = Arc::new(StdMutex::new(Vec::<String>::new()));
    let sink = log.clone();
    let (b, clock) = manual(consecutive(2).listener(move |e: &BreakerEvent<'_>| {
        let line = match e {
            BreakerEvent::StateTransition {
                breaker,
                from,
                to,
                reason,
                open_for,
            } => format!(
                "{breaker}: {from} -> {to} ({}, {open_for:?})",
                reason.as_str()
            ),
            BreakerEvent::Rejected { breaker, rejected } => {
                format!("{breaker}: rejected {}", rejected.reason())
            }
            other => format!("{other:?}"),
        };
        sink.lock().unwrap().push(line);
    }));
    fail(&b, 2);
    let _ = b.try_acquire();
    clock.advance(Duration::from_secs(10));
    b.try_acquire().unwrap().record_success();
    b.force_open();
    assert_eq!(
        *log.lock().unwrap(),
        [
            "dep: closed -> open (consecutive_failures, Some(10s))",
            "dep: rejected open",
            "dep: open -> half_open (open_duration_elapsed, None)",
            "dep: half_open -> closed (probes_succeeded, None)",
            "dep: closed -> forced_open (manual, None)",
        ]
    );
}

#[test]
fn a_listener_may_read_the_breaker() {
    let (clock, _handle) = Clock::manual();
    let seen = Arc::new(StdMutex::new(None));
    let sink = seen.clone();
    let cell: Arc<StdMutex<Option<CircuitBreaker>>> = Arc::new(StdMutex::new(None));
    let reader = cell.clone();
    let config = consecutive(1)
        .clock(clock)
        .listener(move |e: &BreakerEvent<'_>| {
            if let (BreakerEvent::StateTransition { .. }, Some(b)) =
                (e, reader.lock().unwrap().as_ref())
            {
                *sink.lock().unwrap() = Some(b.stats().state);
            }
        })
        .build()
        .unwrap();
    let b = CircuitBreaker::new("reentrant", config);
    *cell.lock().unwrap() = Some(b.clone());
    fail(&b, 1);
    assert_eq!(*seen.lock().unwrap(), Some(State::Open));
}

#[test]
fn config_errors_name_the_field() {
    let cases: Vec<(BreakerConfigBuilder, &str)> = vec![
        (BreakerConfig::builder().count_window(0), "count_window"),
        (
            BreakerConfig::builder().count_window(5).minimum_calls(6),
            "minimum_calls",
        ),
        (
            BreakerConfig::builder().failure_rate_threshold(1.5),
            "failure_rate_threshold",
        ),
        (
            BreakerConfig::builder().failure_rate_threshold(f64::NAN),
            "failure_rate_threshold",
        ),
        (
            BreakerConfig::builder().slow_call(Duration::ZERO, 0.5),
            "slow_call",
        ),
        (
            BreakerConfig::builder().slow_call(Duration::from_secs(1), 0.0),
            "slow_call",
        ),
        (
            BreakerConfig::builder().consecutive_failures(0),
            "consecutive_failures",
        ),
        (BreakerConfig::builder().minimum_calls(0), "minimum_calls"),
        (
            BreakerConfig::builder().open_duration(Duration::ZERO),
            "open_duration",
        ),
        (
            BreakerConfig::builder().open_duration_growth(0.5, Duration::from_secs(60)),
            "open_duration_growth",
        ),
        (
            BreakerConfig::builder().open_duration_growth(2.0, Duration::from_secs(1)),
            "open_duration_growth",
        ),
        (
            BreakerConfig::builder().half_open_max_probes(0),
            "half_open_max_probes",
        ),
        (
            BreakerConfig::builder().half_open_successes(70_000),
            "half_open_successes",
        ),
        (
            BreakerConfig::builder().half_open_max_wait(Duration::ZERO),
            "half_open_max_wait",
        ),
        (
            BreakerConfig::builder().time_window(Duration::from_secs(1), 0),
            "time_window",
        ),
        (
            BreakerConfig::builder().time_window(Duration::from_millis(5), 10),
            "time_window",
        ),
        (
            BreakerConfig::builder()
                .time_window(Duration::from_secs(1), 1)
                .minimum_calls(5_000),
            "minimum_calls",
        ),
    ];
    for (builder, field) in cases {
        let err = builder.build().expect_err(field);
        assert_eq!(err.field(), field, "{err}");
        assert!(err.to_string().contains(field));
    }
    let defaults = BreakerConfig::default();
    assert_eq!(defaults.window(), Window::Count { size: 100 });
    assert_eq!(defaults.failure_rate_threshold(), Some(0.5));
    assert_eq!(defaults.minimum_calls(), 10);
    BreakerConfig::builder()
        .build()
        .expect("the defaults are valid");
}

#[test]
fn the_consecutive_builder_validates_its_numbers() {
    let err = BreakerConfig::consecutive(0, Duration::from_secs(1))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "consecutive_failures");
    let err = BreakerConfig::consecutive(3, Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "open_duration");
    let config = BreakerConfig::consecutive(3, Duration::from_secs(30))
        .build()
        .unwrap();
    assert_eq!(config.half_open_max_probes(), 1);
}

#[test]
fn errors_display_without_repeating_and_classify_as_overloaded() {
    let open = CircuitOpen {
        name: "s3".into(),
        state: State::Open,
        retry_after: Some(Duration::from_secs(3)),
    };
    assert_eq!(
        open.to_string(),
        "circuit breaker `s3` is open (retry after 3s)"
    );
    let err: BreakerError<std::io::Error> = BreakerError::Rejected(open.into());
    assert_eq!(
        err.to_string(),
        "circuit breaker `s3` is open (retry after 3s)"
    );
    assert!(err.is_rejected());
    assert_eq!(
        err.rejected().unwrap().retry_after(),
        Some(Duration::from_secs(3))
    );
    let inner: BreakerError<std::io::Error> = BreakerError::Inner(std::io::Error::other("boom"));
    assert_eq!(inner.to_string(), "boom");
    assert_eq!(
        inner.map_inner(|e| e.kind()).into_inner(),
        Some(std::io::ErrorKind::Other)
    );
}

proptest! {
    /// The open duration starts at the base, never shrinks as opens repeat,
    /// and never exceeds the cap.
    #[test]
    fn open_duration_growth_is_monotone_and_capped(
        base_ms in 1u64..100_000,
        multiplier in 1.0f64..10.0,
        cap_factor in 1u64..1_000,
    ) {
        let base = Duration::from_millis(base_ms);
        let max = base * cap_factor as u32;
        let growth = Some(OpenGrowth { multiplier, max });
        prop_assert_eq!(open_duration_for(base, growth, 1), base);
        prop_assert_eq!(open_duration_for(base, None, 7), base);
        let mut previous = base;
        for opens in 1..200 {
            let d = open_duration_for(base, growth, opens);
            prop_assert!(d >= previous, "open {} shrank: {:?} < {:?}", opens, d, previous);
            prop_assert!(d <= max);
            previous = d;
        }
        if multiplier >= 1.01 {
            prop_assert_eq!(open_duration_for(base, growth, 10_000), max);
        }
    }
}

#[test]
fn handles_and_futures_are_send_and_sync() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    fn _listener_is_object_safe(_: Box<dyn crate::BreakerListener>) {}
    let (b, _clock) = manual(consecutive(1));
    send_sync(&b);
    let permit = b.try_acquire().unwrap();
    send_sync(&permit);
    drop(permit);
    let owned = b.try_acquire_owned().unwrap();
    send_sync(&owned);
    drop(owned);
    let fut = b.call(async { Ok::<_, std::io::Error>(()) });
    send(&fut);
    let rejected = Rejected::from(open_rejection_of_forced(&b));
    send_sync(&rejected);
    let _: &dyn std::error::Error = &rejected;
}

fn open_rejection_of_forced(b: &CircuitBreaker) -> CircuitOpen {
    b.force_open();
    open_rejection(b)
}
