//! keel-core on its own, through its public API only: classify results
//! into outcomes, replay jitter from a seed, order work by priority, name a
//! bad setting, and run a periodic task until shutdown.
//!
//! `cargo run -p keel-examples --example core_basics`
#![allow(clippy::print_stdout)]

use std::time::Duration;

use keel_core::{
    CancellationToken, Classify, ConfigError, Outcome, Priority, Rng, classify, every,
};

#[derive(Debug)]
enum ApiError {
    Timeout,
    NotFound,
    Throttled(Duration),
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // A timeout is the dependency's fault, a 404 is the caller's, a 429
    // asks us to wait.
    let by_error = classify::from_fn(|r: &Result<(), ApiError>| match r {
        Ok(()) => Outcome::Success,
        Err(ApiError::Timeout) => Outcome::Failure,
        Err(ApiError::NotFound) => Outcome::Neutral,
        Err(ApiError::Throttled(wait)) => Outcome::overloaded_for(*wait),
    });
    for result in [
        Ok(()),
        Err(ApiError::Timeout),
        Err(ApiError::NotFound),
        Err(ApiError::Throttled(Duration::from_secs(2))),
    ] {
        println!("{result:?} -> {:?}", by_error.classify(&result));
    }

    // The same seed, the same jitter.
    let a = Rng::with_seed(42).duration_between(Duration::ZERO, Duration::from_secs(1));
    let b = Rng::with_seed(42).duration_between(Duration::ZERO, Duration::from_secs(1));
    assert_eq!(a, b);
    println!("jitter from seed 42: {a:?}");

    let mut work = [
        Priority::Low,
        Priority::Critical,
        Priority::Normal,
        Priority::High,
    ];
    work.sort_by(|a, b| b.cmp(a));
    println!("served in this order: {work:?}");

    let error = ConfigError::new("RETRY_FACTOR", "must be at least 1");
    println!("{error}");

    // A task every 10 ms until shutdown.
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let mut runs = 0;
    every(Duration::from_millis(10), shutdown, || {
        runs += 1;
        if runs == 3 {
            stop.cancel();
        }
        async {}
    })
    .await;
    println!("the periodic task ran {runs} times");
}
