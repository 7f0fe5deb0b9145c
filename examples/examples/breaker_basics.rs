//! keel-breaker on its own, through its public API only: a circuit breaker
//! with one explicit rule, a priority bulkhead shared by two kinds of work,
//! and the AWS presets of a registry.
//!
//! `cargo run -p keel-examples --example breaker_basics`
#![allow(clippy::print_stdout)]

use std::time::Duration;

use keel_breaker::{
    BreakerConfig, BreakerError, BreakerRegistry, Bulkhead, CircuitBreaker, State, presets,
};
use keel_core::{Outcome, Priority};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // One rule, and only that rule: three failures in a row open it for 5 s.
    let breaker = CircuitBreaker::new(
        "inventory",
        BreakerConfig::builder()
            .consecutive_failures(3)
            .open_duration(Duration::from_secs(5))
            .build()?,
    );
    for attempt in 1..=4 {
        let result = breaker
            .call(async { Err::<(), _>(std::io::Error::other("connection refused")) })
            .await;
        match result {
            Err(BreakerError::Inner(e)) => println!("attempt {attempt}: the call failed: {e}"),
            Err(BreakerError::Rejected(r)) => println!(
                "attempt {attempt}: rejected without calling ({}), retry after {:?}",
                r.reason(),
                r.retry_after()
            ),
            Err(other) => println!("attempt {attempt}: {other}"),
            Ok(()) => unreachable!("the call always fails"),
        }
    }
    assert_eq!(breaker.state(), State::Open);

    // A bulkhead of 1 slot with a queue: a critical job queued after a low
    // one is served first.
    let pool = Bulkhead::builder("api")
        .max_concurrent(1)
        .queue(10)
        .build()?;
    let held = pool.acquire(Priority::Normal).await?;
    let low = tokio::spawn({
        let pool = pool.clone();
        async move {
            let _slot = pool.acquire(Priority::Low).await?;
            println!("low-priority work runs second");
            Ok::<_, keel_breaker::BulkheadFull>(())
        }
    });
    let critical = tokio::spawn({
        let pool = pool.clone();
        async move {
            let slot = pool.acquire(Priority::Critical).await?;
            println!("critical work runs first");
            slot.record(Outcome::Success);
            Ok::<_, keel_breaker::BulkheadFull>(())
        }
    });
    while pool.queued() < 2 {
        tokio::task::yield_now().await;
    }
    drop(held);
    critical.await??;
    low.await??;

    // The AWS presets: a consecutive-failures breaker and a bulkhead each.
    let aws = BreakerRegistry::with_aws_presets();
    let ec2 = aws.get(presets::EC2);
    let ec2_pool = aws
        .bulkhead(presets::EC2)
        .expect("presets share a bulkhead");
    println!(
        "ec2: trips after {:?} failures in a row, open {:?}, {} calls at once",
        ec2.config().consecutive_failures(),
        ec2.config().open_duration(),
        ec2_pool.limit()
    );
    Ok(())
}
