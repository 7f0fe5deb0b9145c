//! keel-exec in one sitting, public API only:
//!
//! 1. a parallel fan-out (an SSM command on every node) admitted through the
//!    SSM preset's shared bulkhead, each item run through a `keel::Pipeline`
//!    (retry → breaker → attempt timeout) with `keel::exec::through`;
//! 2. a batch executor (EC2 starts, ten ids per call) whose calls go through
//!    the same kind of pipeline;
//! 3. a standing worker pool taking prioritized jobs, shut down with a
//!    bounded drain.
//!
//! Run: `cargo run -p keel-examples --example exec_basics`
#![allow(clippy::print_stdout)]

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Result;
use keel::Pipeline;
use keel::breaker::{BreakerRegistry, presets};
use keel::exec::{
    Batch, BatchExecutor, ExecError, ParallelExecutor, Priority, WorkerPool, through,
};
use keel::retry::{Backoff, RetryPolicy};

#[tokio::main]
async fn main() -> Result<()> {
    let registry = BreakerRegistry::with_aws_presets();
    let retry = RetryPolicy::builder()
        .max_retries(2)
        .backoff(Backoff::constant(Duration::from_millis(20)))
        .build()?;

    // 1. Fan-out: at most the SSM preset's three calls at once, shared with
    //    every other SSM caller of the program.
    let ssm = Pipeline::builder()
        .retry(retry.clone())
        .breaker(registry.get(presets::SSM))
        .attempt_timeout(Duration::from_millis(200))
        .build()?;
    let fan_out = ParallelExecutor::builder()
        .bulkhead(registry.bulkhead(presets::SSM).expect("preset bulkhead"))
        .overall_timeout(Duration::from_secs(5))
        .build()?;
    let nodes: Vec<String> = (1..=6).map(|i| format!("node-{i}")).collect();
    let report = fan_out
        .run(
            nodes.iter().map(String::as_str),
            through(&ssm, |node: &str, attempt| async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                match node {
                    // Throttled once, then fine: the pipeline retries it.
                    "node-2" if attempt.number == 1 => Err("ThrottlingException"),
                    "node-5" => Err("InvalidInstanceId"),
                    _ => Ok(format!("{node}: k3s active")),
                }
            }),
        )
        .await;
    println!(
        "fan-out: {} ok, {} failed in {:?} ({} attempts)",
        report.succeeded(),
        report.failed(),
        report.wall_time(),
        ssm.stats().attempts
    );
    for (i, error) in report.errors() {
        if let ExecError::Failed(e) = error {
            println!("  {}: {e}", nodes[i]);
        }
    }

    // 2. Batches of ten; one StartInstances call per batch, retried.
    let ec2 = Pipeline::builder()
        .retry(retry)
        .breaker(registry.get(presets::EC2))
        .build()?;
    let batches = BatchExecutor::builder().batch_size(10).build()?;
    let ids: Vec<String> = (0..25).map(|i| format!("i-{i:02}")).collect();
    let report = batches
        .run(
            ids,
            through(&ec2, |batch: Batch<String>, _attempt| async move {
                // The API reports i-07 as not started.
                let started: HashSet<String> =
                    batch.iter().filter(|id| *id != "i-07").cloned().collect();
                Ok::<_, String>(started)
            }),
            |id, started| {
                if started.contains(id) {
                    Ok("pending")
                } else {
                    Err(keel::PipelineError::Inner(format!("{id} did not start")))
                }
            },
        )
        .await;
    println!(
        "batches: {} of {} instances starting",
        report.succeeded(),
        report.total()
    );

    // 3. A standing pool: critical work first, bounded drain at the end.
    let pool = WorkerPool::builder().workers(2).queue(100).build()?;
    let mut reports = Vec::new();
    for vm in 0..6 {
        reports.push(pool.submit(Priority::Low, async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            format!("report for vm-{vm}")
        })?);
    }
    let restart = pool.submit(Priority::Critical, async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        "vm-3 restarted"
    })?;
    let stuck = pool.submit(Priority::Low, std::future::pending::<()>())?;
    println!("pool: {}", restart.await?);
    for r in reports {
        r.await?;
    }
    let drained = pool.shutdown(Duration::from_millis(100)).await;
    println!(
        "pool shut down: {} completed during the drain, {} abandoned ({:?})",
        drained.completed,
        drained.abandoned,
        stuck.await.unwrap_err()
    );
    Ok(())
}
