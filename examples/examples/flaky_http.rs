//! Protects calls to a flaky HTTP server with Keel's pipeline and prints what
//! each policy did.
//!
//! The server runs in-process on 127.0.0.1 (keel-testkit's fake server with
//! fault injection): 30 % of requests fail with 503, 10 % answer 429 with a
//! `Retry-After`, and every answer takes 5–40 ms. Then it goes down
//! completely for a while, so the circuit breaker opens, and comes back.
//!
//! ```text
//! cargo run -p keel-examples --example flaky_http
//! ```
#![allow(clippy::print_stdout, clippy::disallowed_types)]

use std::time::{Duration, Instant};

use axum::{Router, routing::get};
use keel::breaker::{BreakerConfig, Bulkhead, CircuitBreaker, State};
use keel::retry::{Backoff, Jitter, RetryPolicy};
use keel::{CallOptions, Outcome, Pipeline, PipelineError, RateLimit, classify};
use keel_testkit::{FakeServer, FaultConfig};
use reqwest::StatusCode;

/// What one HTTP answer means for reliability: 5xx is a failure, 429 an
/// overload carrying its `Retry-After`, anything else the caller's business.
fn classify_response(result: &Result<(StatusCode, Option<Duration>), reqwest::Error>) -> Outcome {
    match result {
        Ok((status, retry_after)) if *status == StatusCode::TOO_MANY_REQUESTS => {
            Outcome::Overloaded {
                retry_after: *retry_after,
            }
        }
        Ok((status, _)) if status.is_server_error() => Outcome::Failure,
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::Failure,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let app = Router::new().route("/inventory", get(|| async { "42 widgets" }));
    let server = FakeServer::builder()
        .seed(7)
        .faults(
            FaultConfig::none()
                .with_errors(0.3, StatusCode::SERVICE_UNAVAILABLE)
                .with_rate_limit(0.1, Duration::from_secs(1))
                .with_latency(Duration::from_millis(5), Duration::from_millis(40)),
        )
        .start(app)
        .await;
    let url = server.url("/inventory");
    println!("flaky server at {url}: 30 % 503, 10 % 429 (Retry-After: 1), 5-40 ms latency\n");

    let breaker = CircuitBreaker::new(
        "inventory",
        BreakerConfig::builder()
            .count_window(20)
            .failure_rate_threshold(0.5)
            .minimum_calls(10)
            .open_duration(Duration::from_secs(2))
            .half_open_max_probes(1)
            .half_open_successes(2)
            .build()?,
    );
    let pipeline = Pipeline::builder()
        .deadline(Duration::from_secs(4))
        .retry(
            RetryPolicy::builder()
                .max_retries(4)
                .backoff(Backoff::exponential(Duration::from_millis(50), 2.0))
                .max_delay(Duration::from_secs(1))
                .jitter(Jitter::Full)
                .max_retry_after(Duration::from_secs(3))
                .build()?,
        )
        .breaker(breaker.clone())
        .rate_limit(RateLimit::per_second(50).burst(10))
        .bulkhead(Bulkhead::new(8))
        .attempt_timeout(Duration::from_millis(500))
        .build()?;
    let client = reqwest::Client::new();
    let classifier = classify::from_fn(classify_response);

    let call = |label: String| {
        let (pipeline, client, url, classifier) = (&pipeline, &client, &url, &classifier);
        async move {
            let started = Instant::now();
            let result = pipeline
                .call_with(&CallOptions::new().classify(classifier), |attempt| {
                    // The attempt is told how long it has left: the HTTP
                    // client stops waiting when the pipeline would.
                    let mut request = client.get(url.as_str());
                    if let Some(left) = attempt.timeout {
                        request = request.timeout(left);
                    }
                    async move {
                        let response = request.send().await?;
                        let retry_after = response
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse().ok())
                            .map(Duration::from_secs);
                        Ok((response.status(), retry_after))
                    }
                })
                .await;
            let took = started.elapsed();
            match result {
                Ok((status, _)) => println!("{label}: HTTP {status} after {took:?}"),
                Err(PipelineError::Rejected(rejected)) => {
                    println!("{label}: rejected by the breaker ({rejected}) after {took:?}");
                }
                Err(other) => println!("{label}: failed: {other} after {took:?}"),
            }
        }
    };

    println!("-- phase 1: the server is flaky");
    for i in 1..=12 {
        call(format!("call {i:>2}")).await;
    }

    println!("\n-- phase 2: the server is down (every request 503)");
    server
        .faults()
        .set(FaultConfig::none().with_errors(1.0, StatusCode::SERVICE_UNAVAILABLE))?;
    for i in 13..=20 {
        call(format!("call {i:>2}")).await;
        if breaker.state() == State::Open {
            println!("   breaker is open: {:?}", breaker.stats().retry_after);
        }
    }

    println!("\n-- phase 3: the server recovers");
    server.faults().clear();
    for i in 21..=26 {
        call(format!("call {i:>2}")).await;
    }

    let stats = pipeline.stats();
    let retry = pipeline.retry_policy().map(RetryPolicy::stats);
    let breaker_stats = breaker.stats();
    println!("\n== what each policy did");
    println!(
        "calls: {} ({} ok, {} failed), attempts that reached the server: {}",
        stats.calls, stats.succeeded, stats.failed, stats.attempts
    );
    if let Some(retry) = retry {
        println!(
            "retry: {} retries, {} calls succeeded only after retrying, {} gave up",
            retry.retries, retry.successes_after_retry, retry.exhausted
        );
    }
    println!(
        "breaker: state {:?}, {} successes, {} failures, {} rejected attempts, transitions {:?}",
        breaker_stats.state,
        breaker_stats.totals.successes,
        breaker_stats.totals.failures,
        breaker_stats.totals.rejected(),
        breaker_stats.totals.transitions
    );
    println!(
        "rate limiter: {} waits ({:?} in all), {} refused; bulkhead: {} rejected; attempt timeouts: {}; deadlines exceeded: {}",
        stats.rate_limit_waits,
        stats.rate_limit_wait_time,
        stats.rate_limit_rejections,
        stats.bulkhead_rejections,
        stats.attempt_timeouts,
        stats.deadline_exceeded
    );
    println!("server saw {} requests", server.request_count());
    Ok(())
}
