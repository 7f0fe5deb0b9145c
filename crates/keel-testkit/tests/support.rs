//! `init_test_tracing` and the re-exported clock.

use std::time::Duration;

use keel_testkit::{Clock, ManualClock, init_test_tracing};

#[test]
fn init_test_tracing_can_be_called_repeatedly() {
    init_test_tracing();
    init_test_tracing();
    tracing::info!(answer = 42, "test tracing installed");
    assert!(tracing::dispatcher::has_been_set());
}

#[test]
fn the_manual_clock_is_keel_cores() {
    let (clock, handle): (Clock, ManualClock) = Clock::manual();
    let start = clock.now();
    handle.advance(Duration::from_secs(5));
    assert_eq!(clock.now() - start, Duration::from_secs(5));
}
