//! Publishing figures for alert-history (issue 19): spawns the release
//! binary with two targets served by keel-testkit fakes in this process (a
//! PagerDuty fake with PagerDuty's own 120 events/min per routing key, for
//! critical alerts; a webhook receiver for every alert) and an LLM fake
//! (`enriched` mode, `--llm-latency-ms`), then:
//!
//! * `--scenario lag`: posts one new alert per webhook at `--rate` for
//!   `--seconds` (every `--critical-every`-th one critical) and reports the
//!   publish lag per target: from the webhook's 2xx (the commit) to the
//!   fake receiving it, p50/p90/p99/max.
//! * `--scenario outage`: PagerDuty answers 503 for `--outage-seconds`
//!   while critical alerts arrive at `--rate`; then it is back, and the
//!   program reports how long the backlog took to drain, the drain rate,
//!   and whether every alert arrived exactly once and in order.
//!
//! ```text
//! cargo build --release -p alert-history -p keel-examples --example alert_history_publish
//! target/release/examples/alert_history_publish --scenario lag --rate 20 --seconds 60
//! target/release/examples/alert_history_publish --scenario outage --rate 1 --outage-seconds 600
//! ```
#![allow(clippy::disallowed_types, clippy::print_stdout)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use keel_testkit::FaultConfig;
use keel_testkit::fakes::{llm, pagerduty, webhook};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// Publishing figures for alert-history.
#[derive(Debug, Parser)]
struct Args {
    /// `lag` or `outage`.
    #[arg(long, default_value = "lag")]
    scenario: String,
    /// The alert-history binary (default: beside this example).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// `sqlite` (a temporary file) or a database URL.
    #[arg(long, default_value = "sqlite")]
    database: String,
    /// New alerts per second.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Seconds of load (`lag`).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Every n-th alert is critical (`lag`; PagerDuty gets those).
    #[arg(long, default_value_t = 20)]
    critical_every: u64,
    /// Seconds PagerDuty is down (`outage`).
    #[arg(long, default_value_t = 600)]
    outage_seconds: u64,
    /// The LLM fake's latency (`enriched` mode); 0 for `transparent` mode.
    #[arg(long, default_value_t = 500)]
    llm_latency_ms: u64,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn alert(i: u64, critical: bool) -> Value {
    let severity = if critical { "critical" } else { "warning" };
    json!({
        "status": "firing",
        "labels": {"alertname": format!("Lag{i}"), "severity": severity, "namespace": "payments",
                   "pod": format!("payments-{i:05}")},
        "annotations": {"summary": format!("publish-lag probe {i}")},
        "startsAt": rfc3339(chrono::Utc::now().timestamp_millis()),
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": format!("{:016x}", 0xfeed_0000_0000_u64 + i),
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(name: &str, mut lags: Vec<Duration>) {
    lags.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{name:<9} {:>6} published  p50 {:>7.1} ms  p90 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms",
        lags.len(),
        ms(percentile(&lags, 0.5)),
        ms(percentile(&lags, 0.9)),
        ms(percentile(&lags, 0.99)),
        ms(lags.last().copied().unwrap_or_default()),
    );
}

/// The alert number a fake received, from the text the sender put in it.
fn probe_of(text: &str) -> Option<u64> {
    let at = text.find("Lag")? + 3;
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = match args.bin.clone() {
        Some(bin) => bin,
        None => std::env::current_exe()?
            .parent()
            .and_then(|examples| examples.parent())
            .context("cannot locate the target directory")?
            .join("alert-history"),
    };
    let dir = tempfile::tempdir()?;
    let url = match args.database.as_str() {
        "sqlite" => format!("sqlite://{}", dir.path().join("publish.db").display()),
        other => other.to_owned(),
    };
    let pd = pagerduty::FakePagerDuty::start().await;
    let hook = webhook::FakeWebhook::start().await;
    let llm = llm::FakeLlm::start().await;
    llm.set_latency(Duration::from_millis(args.llm_latency_ms));
    let targets = dir.path().join("targets.yaml");
    std::fs::write(
        &targets,
        format!(
            "- {{name: oncall, format: pagerduty, url: '{}', api-key: {}, filter-severity: critical}}\n\
             - {{name: archive, format: webhook, url: '{}'}}\n",
            pd.base_url(),
            pagerduty::ROUTING_KEY,
            hook.url()
        ),
    )?;
    let port = free_port()?;
    let mut command = Command::new(&bin);
    command
        .env("DATABASE_URL", &url)
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("TARGETS_FILE", &targets)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true);
    if args.llm_latency_ms > 0 {
        command
            .env("ENRICHMENT_MODE", "enriched")
            .env("LLM_URL", llm.base_url())
            .env("LLM_API_KEY", llm::API_KEY);
    } else {
        command.env("ENRICHMENT_MODE", "transparent");
    }
    let mut child: Child = command
        .spawn()
        .with_context(|| format!("spawning {}", bin.display()))?;
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("alert-history not ready after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    // When each alert's webhook was answered (the commit).
    let mut committed: HashMap<u64, Instant> = HashMap::new();
    let post = async |i: u64, critical: bool| -> anyhow::Result<Instant> {
        let body = json!({"version": "4", "status": "firing", "receiver": "alert-history",
                          "alerts": [alert(i, critical)]});
        let r = client
            .post(format!("{base}/webhook"))
            .json(&body)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("webhook answered {}", r.status());
        }
        Ok(Instant::now())
    };
    match args.scenario.as_str() {
        "lag" => {
            let n = (args.rate * args.seconds as f64) as u64;
            let mut tick = tokio::time::interval(interval);
            for i in 0..n {
                tick.tick().await;
                let critical = i % args.critical_every == 0;
                committed.insert(i, post(i, critical).await?);
            }
            // Let the tail settle (bounded).
            let expected_pd = n.div_ceil(args.critical_every) as usize;
            let deadline = Instant::now() + Duration::from_secs(120);
            while (hook.messages().len() < n as usize || pd.events().len() < expected_pd)
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let lag_of = |i: Option<u64>, at: Instant| {
                i.and_then(|i| committed.get(&i))
                    .map(|&c| at.saturating_duration_since(c))
            };
            // A delivery may be a digest: a JSON array of messages.
            let hook_lags: Vec<Duration> = hook
                .deliveries()
                .iter()
                .flat_map(|d| {
                    let messages = match &d.json {
                        Value::Array(items) => items.clone(),
                        other => vec![other.clone()],
                    };
                    messages.into_iter().map(move |m| (m, d.received_at))
                })
                .filter_map(|(m, at)| lag_of(probe_of(&m.to_string()), at))
                .collect();
            let pd_lags: Vec<Duration> = pd
                .events()
                .iter()
                .filter_map(|e| lag_of(probe_of(&e.json.to_string()), e.received_at))
                .collect();
            println!(
                "scenario lag: {n} alerts at {}/s, LLM {} ms, database {}",
                args.rate, args.llm_latency_ms, args.database
            );
            report("webhook", hook_lags);
            report("pagerduty", pd_lags);
        }
        "outage" => {
            pd.server()
                .faults()
                .set(FaultConfig::none().with_errors(1.0, http::StatusCode::SERVICE_UNAVAILABLE))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let n = (args.rate * args.outage_seconds as f64) as u64;
            let mut tick = tokio::time::interval(interval);
            for i in 0..n {
                tick.tick().await;
                post(i, true).await?;
            }
            let back = Instant::now();
            pd.server().faults().clear();
            let deadline = back + Duration::from_secs(3600);
            let mut first = None;
            while pd.events().len() < n as usize && Instant::now() < deadline {
                if first.is_none() && !pd.events().is_empty() {
                    first = Some(back.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let drained = back.elapsed();
            let events = pd.events();
            let order: Vec<u64> = events
                .iter()
                .filter_map(|e| probe_of(&e.json.to_string()))
                .collect();
            let mut keys: HashMap<&str, usize> = HashMap::new();
            for e in &events {
                *keys.entry(e.dedup_key.as_str()).or_default() += 1;
            }
            println!(
                "scenario outage: PagerDuty down {} s while {n} critical alerts arrived at {}/s",
                args.outage_seconds, args.rate
            );
            println!(
                "first delivery after recovery {:.1} s; drained {} events in {:.1} s ({:.2}/s; PagerDuty's limit is 2/s)",
                first.unwrap_or_default().as_secs_f64(),
                events.len(),
                drained.as_secs_f64(),
                events.len() as f64 / drained.as_secs_f64()
            );
            println!(
                "exactly once: {} (distinct {} of {}), in order: {}",
                keys.values().all(|&c| c == 1) && keys.len() == n as usize,
                keys.len(),
                n,
                order.windows(2).all(|w| w[0] < w[1])
            );
        }
        other => bail!("unknown scenario {other}"),
    }
    let stats: Value = client
        .get(format!("{base}/publishing/stats"))
        .send()
        .await?
        .json()
        .await?;
    println!("publishing stats {stats}");
    println!("LLM requests {}", llm.request_count());
    child.kill().await?;
    Ok(())
}
