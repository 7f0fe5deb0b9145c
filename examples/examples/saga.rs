//! A saga of three cloud calls where the third fails: the first two are
//! compensated in reverse order, and every transition is in the journal.
//!
//! The "cloud" is in process: a few async functions over a shared map that
//! log what they do. Each step runs under its own `keel_retry` policy and
//! receives an idempotency key derived from the saga id and step name; the
//! fake cloud uses it as a client token, so a repeated call returns the
//! resource it already created instead of creating another.
//!
//! The third step (`register_dns`) fails twice with a retryable error, then
//! with a permanent one: its retry policy stops there, the saga aborts, and
//! `create_instances` then `create_vpc` are undone. The program prints the
//! cloud's call log, the saga report and the journal file (JSON lines).
//!
//! ```text
//! cargo run -p keel-examples --example saga
//! ```
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use keel_core::{BoxError, Outcome};
use keel_retry::{Backoff, Jitter, RetryPolicy};
use keel_tx::{FileJournal, Saga, SagaExecutor, SagaRegistry, Step};
use serde_json::{Value, json};
use tokio::sync::Mutex;

/// The fake cloud: resources by id, the client token each was created
/// with, and a log of every call.
#[derive(Default)]
struct Cloud {
    resources: BTreeMap<String, Value>,
    tokens: BTreeMap<String, String>,
    log: Vec<String>,
    created: u32,
    dns_calls: u32,
}

type SharedCloud = Arc<Mutex<Cloud>>;

/// What the fake cloud fails with: throttling is worth retrying, an invalid
/// request is not.
#[derive(Debug)]
enum CloudError {
    Throttled,
    Invalid(&'static str),
}

impl std::fmt::Display for CloudError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloudError::Throttled => f.write_str("throttled (HTTP 429)"),
            CloudError::Invalid(why) => write!(f, "invalid request: {why}"),
        }
    }
}

impl std::error::Error for CloudError {}

/// Creates a resource of `kind`, or returns the one created earlier with the
/// same client token.
async fn create(cloud: &SharedCloud, kind: &str, token: &str, spec: Value) -> Value {
    let mut cloud = cloud.lock().await;
    if let Some(id) = cloud.tokens.get(token).cloned() {
        cloud
            .log
            .push(format!("create {kind}: token seen, returning {id}"));
        return json!({ "id": id });
    }
    cloud.created += 1;
    let id = format!("{kind}-{}", cloud.created);
    cloud.resources.insert(id.clone(), spec);
    cloud.tokens.insert(token.to_owned(), id.clone());
    cloud.log.push(format!("create {kind} -> {id}"));
    json!({ "id": id })
}

async fn delete(cloud: &SharedCloud, id: &str) {
    let mut cloud = cloud.lock().await;
    cloud.resources.remove(id);
    cloud.log.push(format!("delete {id}"));
}

fn registry(cloud: &SharedCloud) -> SagaRegistry {
    let quick = RetryPolicy::builder()
        .max_retries(3)
        .backoff(Backoff::exponential(Duration::from_millis(20), 2.0))
        .jitter(Jitter::Full)
        .build()
        .expect("valid retry policy");
    let permanent_errors_stop = |e: &BoxError| match e.downcast_ref::<CloudError>() {
        Some(CloudError::Invalid(_)) => Outcome::Neutral,
        _ => Outcome::Failure,
    };

    let (c1, c2, c3, c4, c5) = (
        cloud.clone(),
        cloud.clone(),
        cloud.clone(),
        cloud.clone(),
        cloud.clone(),
    );
    SagaRegistry::new()
        .register(
            Step::new("create_vpc", move |ctx| {
                let cloud = c1.clone();
                async move {
                    let cidr = ctx.input()["cidr"].clone();
                    Ok::<_, CloudError>(
                        create(
                            &cloud,
                            "vpc",
                            ctx.idempotency_key(),
                            json!({ "cidr": cidr }),
                        )
                        .await,
                    )
                }
            })
            .compensate(move |ctx| {
                let cloud = c2.clone();
                async move {
                    let id = ctx
                        .output()
                        .and_then(|o| o["id"].as_str())
                        .unwrap_or_default();
                    delete(&cloud, id).await;
                    Ok::<_, CloudError>(())
                }
            })
            .retry(RetryPolicy::aws()),
        )
        .register(
            Step::new("create_instances", move |ctx| {
                let cloud = c3.clone();
                async move {
                    let vpc = ctx.output_of("create_vpc").cloned().unwrap_or_default();
                    let count = ctx.input()["instances"].clone();
                    Ok::<_, CloudError>(
                        create(
                            &cloud,
                            "instances",
                            ctx.idempotency_key(),
                            json!({ "vpc": vpc, "count": count }),
                        )
                        .await,
                    )
                }
            })
            .compensate(move |ctx| {
                let cloud = c4.clone();
                async move {
                    let id = ctx
                        .output()
                        .and_then(|o| o["id"].as_str())
                        .unwrap_or_default();
                    delete(&cloud, id).await;
                    Ok::<_, CloudError>(())
                }
            })
            .retry(quick.clone()),
        )
        .register(
            Step::new("register_dns", move |ctx| {
                let cloud = c5.clone();
                async move {
                    let mut cloud = cloud.lock().await;
                    cloud.dns_calls += 1;
                    let attempt = ctx.attempt();
                    if cloud.dns_calls <= 2 {
                        cloud
                            .log
                            .push(format!("register_dns attempt {attempt}: throttled"));
                        return Err(CloudError::Throttled);
                    }
                    cloud.log.push(format!(
                        "register_dns attempt {attempt}: zone does not exist"
                    ));
                    Err::<Value, _>(CloudError::Invalid(
                        "hosted zone example.internal does not exist",
                    ))
                }
            })
            .retry(quick)
            .classify(permanent_errors_stop),
        )
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let journal = Arc::new(FileJournal::open(dir.path()).context("open the journal")?);
    let cloud: SharedCloud = Arc::default();
    let executor = SagaExecutor::builder(journal.clone(), registry(&cloud))
        .open()
        .await?;

    let saga = Saga::new("cluster-demo/create")
        .input(json!({ "cidr": "10.20.0.0/16", "instances": 3 }))
        .step("create_vpc")
        .step("create_instances")
        .step("register_dns");
    let report = executor.run(saga).await?;

    println!("== cloud calls, in order");
    for line in &cloud.lock().await.log {
        println!("  {line}");
    }
    println!(
        "  resources left: {:?}",
        cloud.lock().await.resources.keys().collect::<Vec<_>>()
    );

    println!(
        "\n== saga report: {:?}",
        report.status().context("the saga finished")?
    );
    for step in &report.steps {
        println!(
            "  {:<17} {:<12} attempts={} key={}… error={}",
            step.name,
            format!("{:?}", step.state),
            step.attempts,
            &step.idempotency_key[..12],
            step.error.as_deref().unwrap_or("-"),
        );
    }
    println!("  compensated, in order: {:?}", report.compensated_steps());

    println!("\n== journal {}", journal.log_path().display());
    let text = std::fs::read_to_string(journal.log_path())?;
    for line in text.lines() {
        let record: Value = serde_json::from_str(line)?;
        let event = &record["event"];
        let detail = match event["kind"].as_str() {
            Some("started") => format!("steps={}", event["steps"]),
            Some("step_started") | Some("compensation_started") => {
                format!("index={}", event["index"])
            }
            Some("step_completed") => {
                format!("index={} output={}", event["index"], event["output"])
            }
            Some("step_failed") => format!(
                "index={} attempts={} error={}",
                event["index"], event["attempts"], event["error"]
            ),
            Some("compensated") => format!("index={}", event["index"]),
            Some("aborted") => format!("reason={}", event["reason"]),
            Some("finished") => format!("status={}", event["status"]),
            _ => String::new(),
        };
        println!("  {:<22} {detail}", event["kind"].as_str().unwrap_or("?"));
    }

    anyhow::ensure!(
        report.compensated_steps() == ["create_instances", "create_vpc"],
        "compensations must run in reverse order"
    );
    anyhow::ensure!(
        cloud.lock().await.resources.is_empty(),
        "everything created was deleted"
    );
    Ok(())
}
