//! Load program for alert-history: spawns the release binary, posts
//! Alertmanager-shaped webhooks (10 alerts each; a mix of new, redelivered
//! and resolved alerts over realistic label sets) at a chosen concurrency or
//! rate, and reports alerts/s, p50/p99 latency, time to ready on an existing
//! database, and the service's idle and peak RSS (`/proc/<pid>/status`).
//!
//! ```text
//! cargo build --release -p alert-history
//! cargo run --release -p keel-examples --example alert_history_load -- \
//!     --database sqlite --concurrency 32 --seconds 20
//! cargo run --release -p keel-examples --example alert_history_load -- \
//!     --database postgres --concurrency 32 --seconds 20 --rate 6000
//! ```
#![allow(clippy::disallowed_types, clippy::print_stdout)]

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// Load generator for alert-history.
#[derive(Debug, Parser)]
struct Args {
    /// The alert-history binary (default: the one beside this example's
    /// profile directory, e.g. `target/release/alert-history`).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// `sqlite` (temporary file on disk), `postgres` (a fresh schema in
    /// --postgres-url), or a full database URL.
    #[arg(long, default_value = "sqlite")]
    database: String,
    /// PostgreSQL server for `--database postgres`.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    postgres_url: String,
    /// Concurrent senders.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Target alerts/s over all senders (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Alerts per webhook.
    #[arg(long, default_value_t = 10)]
    alerts_per_webhook: usize,
    /// The service's `RUST_LOG`.
    #[arg(long, default_value = "warn")]
    service_log: String,
    /// Append the service's log to this file (default: discarded).
    #[arg(long)]
    service_log_file: Option<PathBuf>,
    /// Write one line per answered webhook to this file: when it was due
    /// (ms since the load began) and its latency (ms), in due order, to
    /// see when the slow ones happened.
    #[arg(long)]
    latency_log: Option<PathBuf>,
    /// Publishing on (part 2): two targets (a PagerDuty fake for critical
    /// alerts, with PagerDuty's 120 events/min, and a webhook fake for
    /// every alert) and `enriched` mode with an LLM fake answering after
    /// `--llm-latency-ms`, all in this process.
    #[arg(long)]
    publish: bool,
    /// The LLM fake's latency with `--publish`.
    #[arg(long, default_value_t = 500)]
    llm_latency_ms: u64,
}

/// The fakes a `--publish` run talks to, and the service's environment
/// for them.
struct Publishing {
    pd: keel_testkit::fakes::pagerduty::FakePagerDuty,
    hook: keel_testkit::fakes::webhook::FakeWebhook,
    llm: keel_testkit::fakes::llm::FakeLlm,
    env: Vec<(String, String)>,
}

async fn publishing(dir: &std::path::Path, llm_latency: Duration) -> anyhow::Result<Publishing> {
    use keel_testkit::fakes::{llm, pagerduty, webhook};
    let pd = pagerduty::FakePagerDuty::start().await;
    let hook = webhook::FakeWebhook::start().await;
    let llm = llm::FakeLlm::start().await;
    llm.set_latency(llm_latency);
    let targets = dir.join("targets.yaml");
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
    let env = vec![
        ("TARGETS_FILE".to_owned(), targets.display().to_string()),
        ("ENRICHMENT_MODE".to_owned(), "enriched".to_owned()),
        ("LLM_URL".to_owned(), llm.base_url()),
        ("LLM_API_KEY".to_owned(), llm::API_KEY.to_owned()),
    ];
    Ok(Publishing { pd, hook, llm, env })
}

struct Service {
    child: Child,
    pid: u32,
    base: String,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn start(
    bin: &PathBuf,
    url: &str,
    args: &Args,
    env: &[(String, String)],
) -> anyhow::Result<(Service, Duration)> {
    let port = free_port()?;
    let log = match &args.service_log_file {
        Some(path) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?,
        ),
        None => Stdio::null(),
    };
    let started = Instant::now();
    let child = Command::new(bin)
        .env("DATABASE_URL", url)
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", &args.service_log)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawning {}", bin.display()))?;
    let pid = child.id().context("no pid")?;
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    loop {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("alert-history not ready after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok((Service { child, pid, base }, started.elapsed()))
}

async fn stop(mut service: Service) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(service.pid.to_string())
        .status()
        .await?;
    if !status.success() {
        bail!("kill failed");
    }
    let code = tokio::time::timeout(Duration::from_secs(15), service.child.wait()).await??;
    if !code.success() {
        bail!("alert-history exited with {code}");
    }
    Ok(())
}

fn proc_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The service's own `/webhook` latency histogram (answered deliveries): (upper bound in
/// seconds, cumulative count) per bucket, from its `/metrics`.
async fn webhook_buckets(client: &reqwest::Client, base: &str) -> Vec<(f64, f64)> {
    let text = match client.get(format!("{base}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    text.lines()
        .filter(|l| {
            // Older builds: their own histogram; since /metrics moved to
            // keel-telemetry's route: the kit's, per route and status class
            // (the answered deliveries: 2xx).
            (l.starts_with("alert_history_request_latency_seconds_bucket{")
                && l.contains("endpoint=\"/webhook\""))
                || (l.starts_with("alert_history_http_request_duration_seconds_bucket{")
                    && l.contains("route=\"/webhook\"")
                    && l.contains("status=\"2xx\""))
        })
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, count))
        })
        .collect()
}

/// The `p` quantile of the observations between two scrapes of a
/// cumulative histogram, interpolated linearly inside its bucket (as
/// Prometheus' `histogram_quantile` does).
fn histogram_quantile(before: &[(f64, f64)], after: &[(f64, f64)], p: f64) -> Option<f64> {
    let counts: Vec<(f64, f64)> = after
        .iter()
        .map(|&(le, n)| {
            let old = before.iter().find(|b| b.0 == le).map_or(0.0, |b| b.1);
            (le, n - old)
        })
        .collect();
    let total = counts.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = p * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(le, cumulative) in &counts {
        if cumulative >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let inside = cumulative - below;
            return Some(lower + (le - lower) * (rank - below) / inside.max(1.0));
        }
        lower = le;
        below = cumulative;
    }
    None
}

/// CPU seconds (user + system) a process has used so far, from
/// `/proc/<pid>/stat` (fields 14 and 15, in clock ticks of 1/100 s).
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may contain spaces: count from the `)`.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After `)`: field 3 is index 0, so utime (14) is 11 and stime (15) is 12.
    (ticks(11) + ticks(12)) / 100.0
}

/// xorshift64*: deterministic per sender, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const ALERTS: [(&str, &str); 8] = [
    ("KubePodCrashLooping", "warning"),
    ("KubePodNotReady", "warning"),
    ("NodeFilesystemSpaceFillingUp", "critical"),
    ("HighRequestLatency", "warning"),
    ("TargetDown", "critical"),
    ("KubeJobFailed", "warning"),
    ("CPUThrottlingHigh", "info"),
    ("PostgresReplicationLag", "critical"),
];
const NAMESPACES: [&str; 6] = [
    "payments",
    "checkout",
    "search",
    "monitoring",
    "kube-system",
    "batch",
];

/// One sender's view of alerts: currently firing ones it may redeliver or
/// resolve.
struct Workload {
    rng: Rng,
    sender: u64,
    seq: u64,
    /// Firing alerts: the object (to resolve it) and its JSON text (to
    /// redeliver it without serializing it again).
    firing: Vec<(Value, String)>,
}

impl Workload {
    fn new_alert(&mut self) -> Value {
        let (name, severity) = ALERTS[self.rng.below(ALERTS.len() as u64) as usize];
        let ns = NAMESPACES[self.rng.below(NAMESPACES.len() as u64) as usize];
        self.seq += 1;
        let pod = format!(
            "{ns}-{}-{:05x}",
            name.to_lowercase().chars().take(6).collect::<String>(),
            self.rng.below(1 << 20)
        );
        let start_ms = now_ms() - self.rng.below(3_600_000) as i64;
        json!({
            "status": "firing",
            "labels": {
                "alertname": name, "severity": severity, "namespace": ns, "pod": pod,
                "container": "app", "job": "kube-state-metrics", "cluster": "prod-eu-1",
                "instance": format!("10.{}.{}.{}:8080", self.sender % 250, self.seq % 250, self.rng.below(250)),
                "prometheus": "monitoring/k8s", "team": ns,
            },
            "annotations": {
                "summary": format!("{name} in {ns}"),
                "description": format!("Pod {ns}/{pod} has been in a bad state for more than 5 minutes."),
                "runbook_url": format!("https://runbooks.example/{name}"),
            },
            "startsAt": rfc3339(start_ms),
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus-k8s.monitoring:9090/graph?g0.expr=up+%3D%3D+0&g0.tab=1",
            "fingerprint": format!("{:016x}", (self.sender << 40) ^ self.seq.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        })
    }

    /// A webhook body of `n` alerts: ~50 % new, ~30 % redelivered, ~20 %
    /// resolved. Built as text from each alert's JSON, serialized once, so
    /// the generator spends as little of the shared CPU as it can.
    fn webhook(&mut self, n: usize) -> Vec<u8> {
        let mut body = String::with_capacity(n * 1024 + 320);
        body.push_str(r#"{"receiver":"alert-history","status":"firing","alerts":["#);
        for k in 0..n {
            if k > 0 {
                body.push(',');
            }
            let roll = self.rng.below(10);
            if roll < 5 || self.firing.is_empty() {
                let alert = self.new_alert();
                let text = alert.to_string();
                body.push_str(&text);
                self.firing.push((alert, text));
            } else if roll < 8 {
                let i = self.rng.below(self.firing.len() as u64) as usize;
                body.push_str(&self.firing[i].1);
            } else {
                let i = self.rng.below(self.firing.len() as u64) as usize;
                let (mut alert, _) = self.firing.swap_remove(i);
                alert["status"] = json!("resolved");
                alert["endsAt"] = json!(rfc3339(now_ms()));
                body.push_str(&alert.to_string());
            }
        }
        if self.firing.len() > 2000 {
            self.firing.drain(..1000);
        }
        body.push_str(
            r#"],"groupLabels":{"alertname":"mixed"},"commonLabels":{},"commonAnnotations":{},"externalURL":"http://alertmanager:9093","version":"4","groupKey":"{}:{alertname=\"mixed\"}","truncatedAlerts":0}"#,
        );
        body.into_bytes()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Epoch milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ` (civil-from-days).
fn rfc3339(ms: i64) -> String {
    let (secs, millis) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn psql(url: &str, sql: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("psql")
        .arg(url)
        .arg("-qc")
        .arg(sql)
        .status()?;
    if !status.success() {
        bail!("psql failed: {sql}");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Default: the alert-history binary of the same profile, beside this
    // example (`<target>/release/examples/..`).
    let bin = match args.bin.clone() {
        Some(bin) => bin,
        None => std::env::current_exe()?
            .parent()
            .and_then(|examples| examples.parent())
            .context("cannot locate the target directory")?
            .join("alert-history"),
    };
    let dir = tempfile::tempdir()?;
    let mut schema = None;
    let url = match args.database.as_str() {
        "sqlite" => format!("sqlite://{}", dir.path().join("load.db").display()),
        "postgres" => {
            let name = format!("alert_history_load_{}", std::process::id());
            psql(&args.postgres_url, &format!("CREATE SCHEMA {name}"))?;
            schema = Some(name.clone());
            format!("{}?options=-c%20search_path%3D{name}", args.postgres_url)
        }
        other => other.to_owned(),
    };

    // First start creates the database; the second measures time to ready on
    // an existing one.
    let publishing = if args.publish {
        Some(publishing(dir.path(), Duration::from_millis(args.llm_latency_ms)).await?)
    } else {
        None
    };
    let env = publishing.as_ref().map_or(&[][..], |p| &p.env[..]);
    let (first, fresh_ready) = start(&bin, &url, &args, env).await?;
    stop(first).await?;
    let (service, ready) = start(&bin, &url, &args, env).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = proc_kib(service.pid, "VmRSS:");

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let stop_flag = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let per_sender_interval = (args.rate > 0).then(|| {
        Duration::from_secs_f64(
            args.concurrency as f64 * args.alerts_per_webhook as f64 / args.rate as f64,
        )
    });
    let buckets0 = webhook_buckets(&client, &service.base).await;
    let service_cpu0 = cpu_seconds(&service.pid.to_string());
    let own_cpu0 = cpu_seconds("self");
    let began = Instant::now();
    let mut senders = Vec::new();
    let concurrency = args.concurrency;
    for s in 0..concurrency {
        let client = client.clone();
        let url = format!("{}/webhook", service.base);
        let stop_flag = stop_flag.clone();
        let errors = errors.clone();
        let n = args.alerts_per_webhook;
        senders.push(tokio::spawn(async move {
            let mut work = Workload {
                rng: Rng(0x1234_5678 ^ ((s as u64 + 1) * 0x9E37)),
                sender: s as u64,
                seq: 0,
                firing: Vec::new(),
            };
            // (due since the load began, latency) per answered webhook.
            let mut answered = Vec::new();
            let mut sent = 0u64;
            // Open loop at a fixed rate: senders are spread evenly over
            // one interval (no synchronized bursts), and latency counts from
            // the moment a webhook was due, so a sender held up by a slow
            // answer does not hide the delay (no coordinated omission).
            let mut ticker = per_sender_interval.map(|d| {
                let phase = d.mul_f64(s as f64 / concurrency as f64);
                let mut t = tokio::time::interval_at(tokio::time::Instant::now() + phase, d);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                t
            });
            while !stop_flag.load(Ordering::Relaxed) {
                let due = match ticker.as_mut() {
                    Some(t) => Some(t.tick().await.into_std()),
                    None => None,
                };
                let body = work.webhook(n);
                let t0 = due.unwrap_or_else(Instant::now);
                match client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        answered.push((t0.saturating_duration_since(began), t0.elapsed()));
                        sent += n as u64;
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            (answered, sent)
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop_flag.store(true, Ordering::Relaxed);
    let mut alerts = 0;
    let mut timeline = Vec::new();
    for s in senders {
        let (l, n) = s.await?;
        timeline.extend(l);
        alerts += n;
    }
    let elapsed = began.elapsed();
    let service_cpu = cpu_seconds(&service.pid.to_string()) - service_cpu0;
    let own_cpu = cpu_seconds("self") - own_cpu0;
    // After the readings above, so writing it counts in neither.
    if let Some(path) = &args.latency_log {
        use std::fmt::Write as _;
        timeline.sort_unstable();
        let mut text = String::with_capacity(timeline.len() * 16);
        for (due, latency) in &timeline {
            let _ = writeln!(
                text,
                "{:.1} {:.2}",
                due.as_secs_f64() * 1e3,
                latency.as_secs_f64() * 1e3
            );
        }
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let mut latencies: Vec<Duration> = timeline.into_iter().map(|(_, l)| l).collect();
    latencies.sort_unstable();
    let peak_rss = proc_kib(service.pid, "VmHWM:");
    // The log file only grows (SQLite reuses it from its start once a
    // checkpoint has copied all of it), so its size is its high-water mark.
    let wal_bytes = (args.database == "sqlite")
        .then(|| std::fs::metadata(dir.path().join("load.db-wal")).ok())
        .flatten()
        .map(|m| m.len());
    let buckets1 = webhook_buckets(&client, &service.base).await;
    let server_p50 = histogram_quantile(&buckets0, &buckets1, 0.50);
    let server_p99 = histogram_quantile(&buckets0, &buckets1, 0.99);
    let stored: Value = client
        .get(format!("{}/health/database", service.base))
        .send()
        .await?
        .json()
        .await?;
    let publishing_stats: Option<Value> = if publishing.is_some() {
        Some(
            client
                .get(format!("{}/publishing/stats", service.base))
                .send()
                .await?
                .json()
                .await?,
        )
    } else {
        None
    };
    stop(service).await?;
    if let Some(name) = schema {
        psql(&args.postgres_url, &format!("DROP SCHEMA {name} CASCADE"))?;
    }

    let rate = alerts as f64 / elapsed.as_secs_f64();
    println!("database            {}", args.database);
    println!("concurrency         {}", args.concurrency);
    println!(
        "target rate         {}",
        if args.rate == 0 {
            "unlimited".to_owned()
        } else {
            format!("{} alerts/s", args.rate)
        }
    );
    println!("duration            {:.1} s", elapsed.as_secs_f64());
    println!(
        "webhooks            {} ({} alerts each), errors {}",
        latencies.len(),
        args.alerts_per_webhook,
        errors.load(Ordering::Relaxed)
    );
    println!(
        "throughput          {rate:.0} alerts/s ({:.1}x the predecessor's 755 alerts/s)",
        rate / 755.0
    );
    println!(
        "latency p50         {:.2} ms",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3
    );
    println!(
        "latency p90         {:.2} ms",
        percentile(&latencies, 0.90).as_secs_f64() * 1e3
    );
    println!(
        "latency p99         {:.2} ms",
        percentile(&latencies, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "latency p99.9 / max {:.2} / {:.2} ms",
        percentile(&latencies, 0.999).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    match (server_p50, server_p99) {
        (Some(p50), Some(p99)) => println!(
            "service-side        p50 {:.2} ms, p99 {:.2} ms (its own /webhook histogram, interpolated)",
            p50 * 1e3,
            p99 * 1e3
        ),
        _ => println!("service-side        no /webhook histogram"),
    }
    println!("stored events       {}", stored["events"]);
    if let Some(bytes) = wal_bytes {
        println!(
            "SQLite log (WAL)    {:.1} MiB at most",
            bytes as f64 / (1024.0 * 1024.0)
        );
    }
    println!(
        "service CPU         {:.2} cores ({:.1} µs per alert)",
        service_cpu / elapsed.as_secs_f64(),
        service_cpu * 1e6 / alerts.max(1) as f64
    );
    println!(
        "generator CPU       {:.2} cores",
        own_cpu / elapsed.as_secs_f64()
    );
    println!("ready (fresh db)    {} ms", fresh_ready.as_millis());
    println!("ready (existing db) {} ms", ready.as_millis());
    println!("idle RSS            {:.1} MiB", idle_rss as f64 / 1024.0);
    println!("peak RSS (VmHWM)    {:.1} MiB", peak_rss as f64 / 1024.0);
    if let (Some(p), Some(stats)) = (&publishing, &publishing_stats) {
        println!(
            "publishing          enriched mode, LLM fake at {} ms: {} LLM requests, \
             PagerDuty {} events, webhook {} messages by the end of the run",
            args.llm_latency_ms,
            p.llm.request_count(),
            p.pd.events().len(),
            p.hook.messages().len()
        );
        for (name, t) in stats["targets"].as_object().into_iter().flatten() {
            println!(
                "  target {name:<9} backlog {} (oldest {} s), last 24 h {}",
                t["backlog"], t["oldest_age_seconds"], t["last_24h"]
            );
        }
    }
    Ok(())
}
