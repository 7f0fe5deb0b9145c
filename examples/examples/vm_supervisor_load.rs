//! Load program for vm-supervisor: the real binary supervises N fake VMs
//! (`fake-vmm`, real processes on Unix sockets) checked every second, and
//! the harness measures MTTR, from `SIGKILL` of a VM's process to the
//! supervisor's `/vms` showing it running and healthy with a new pid:
//!
//! * **one at a time**: every VM is killed once, one after another;
//! * **burst**: `--burst` VMs killed at once (below the fleet
//!   short-circuit), recovered through the `MAX_CONCURRENT_RECOVERIES`
//!   bulkhead.
//!
//! The burst runs after the first scenario, on VMs it already killed once:
//! with the default `--stable-period 5s` their attempt count has been reset
//! by then (with the production 10 min, a second death that soon waits
//! `RETRY_INTERVAL`, 30 s: crash-loop backoff, by design).
//!
//! It also reports the supervisor's CPU (user + system over wall time) while
//! idle (only health checks) and during the kills, and its peak RSS
//! (`VmHWM`). The harness polls `/vms` every 5 ms (the MTTR resolution) and
//! takes t0 before it runs `kill -9`, so MTTR is over- rather than
//! under-estimated.
//!
//! ```text
//! cargo build --release -p vm-supervisor
//! cargo run --release -p keel-examples --example vm_supervisor_load -- --vms 100
//! ```

#![allow(clippy::disallowed_types, clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::Value;
use tokio::time::Instant;

#[derive(Debug, Parser)]
struct Args {
    /// VMs to supervise.
    #[arg(long, default_value_t = 100)]
    vms: usize,
    /// VMs killed at once in the burst scenario.
    #[arg(long, default_value_t = 20)]
    burst: usize,
    /// Pause between two kills of the one-at-a-time scenario, ms.
    #[arg(long, default_value_t = 100)]
    every_ms: u64,
    /// Idle window for the CPU figure, seconds.
    #[arg(long, default_value_t = 10)]
    idle_s: u64,
    /// Where `vm-supervisor` and `fake-vmm` are (default: the directory
    /// above this example's, i.e. target/release).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Health check interval.
    #[arg(long, default_value = "1s")]
    health_interval: String,
    /// The supervisor's STABLE_PERIOD. The burst kills VMs that the first
    /// scenario already killed; within the stable period their attempt
    /// count still holds that recovery, so they would wait RETRY_INTERVAL
    /// (30 s) by design. 5 s is shorter than the first scenario takes.
    #[arg(long, default_value = "5s")]
    stable_period: String,
}

/// utime + stime of `pid`, seconds (USER_HZ is 100 on Linux).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: field 3 is f[0]; utime is field 14, stime 15.
    let ticks: u64 = f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
    ticks as f64 / 100.0
}

fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn list(client: &reqwest::Client, base: &str) -> anyhow::Result<Vec<Value>> {
    Ok(client
        .get(format!("{base}/vms"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

fn healthy_pid(v: &Value) -> Option<u64> {
    (v["state"] == "running" && v["healthy"] == true)
        .then(|| v["pid"].as_u64())
        .flatten()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn report(name: &str, mut d: Vec<Duration>) {
    d.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name}: n={} p50={:.1} ms p99={:.1} ms max={:.1} ms",
        d.len(),
        ms(percentile(&d, 0.5)),
        ms(percentile(&d, 0.99)),
        ms(*d.last().unwrap_or(&Duration::ZERO)),
    );
}

async fn kill9(pid: u64) -> anyhow::Result<()> {
    let status = tokio::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .await?;
    if !status.success() {
        bail!("kill -9 {pid} failed");
    }
    Ok(())
}

/// Polls `/vms` until every id in `waiting` is healthy with a pid other
/// than the one killed; returns each one's time from `t0`.
async fn wait_recovered(
    client: &reqwest::Client,
    base: &str,
    mut waiting: Vec<(String, u64)>,
    t0: Instant,
) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::new();
    let deadline = t0 + Duration::from_secs(60);
    while !waiting.is_empty() {
        let vms = list(client, base).await?;
        let now = t0.elapsed();
        waiting.retain(|(id, old)| {
            let done = vms
                .iter()
                .find(|v| v["id"] == id.as_str())
                .and_then(healthy_pid)
                .is_some_and(|pid| pid != *old);
            if done {
                out.push(now);
            }
            !done
        });
        if Instant::now() > deadline {
            bail!("not recovered within 60 s: {waiting:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .context("no target dir")?
            .to_path_buf(),
    };
    let supervisor_bin = bin_dir.join("vm-supervisor");
    let fake = bin_dir.join("fake-vmm");
    for b in [&supervisor_bin, &fake] {
        if !b.exists() {
            bail!(
                "{} missing: cargo build --release -p vm-supervisor",
                b.display()
            );
        }
    }
    let dir = tempfile::tempdir()?;
    let mut yaml = String::from("vms:\n");
    for i in 0..args.vms {
        yaml.push_str(&format!(
            "  - id: vm-{i}\n    command: {}\n    args: [\"--api-sock\", \"{{socket}}\", \"--id\", \"{{id}}\"]\n    socket: '{}/{{id}}.sock'\n    start_calls:\n      - {{method: PUT, path: /actions, body: {{action_type: InstanceStart}}}}\n",
            fake.display(),
            dir.path().display()
        ));
    }
    let config = dir.path().join("vm-supervisor.yaml");
    std::fs::write(&config, yaml)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let mut child = tokio::process::Command::new(&supervisor_bin)
        .env("SUPERVISOR_CONFIG", &config)
        .env(
            "DATABASE_URL",
            format!("sqlite://{}/registry.db", dir.path().display()),
        )
        .env("ADMIN_ADDR", format!("127.0.0.1:{port}"))
        .env("HEALTH_INTERVAL", &args.health_interval)
        .env("HEALTH_TIMEOUT", &args.health_interval)
        .env("MAX_CONCURRENT_RECOVERIES", "4")
        .env("STABLE_PERIOD", &args.stable_period)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().context("supervisor pid")?;
    let client = reqwest::Client::new();
    // All healthy.
    let vms = loop {
        if let Ok(vms) = list(&client, &base).await
            && vms.len() == args.vms
            && vms.iter().all(|v| healthy_pid(v).is_some())
        {
            break vms;
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("VMs not all healthy within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!(
        "{} VMs started and healthy in {:.2} s (health interval {})",
        args.vms,
        started.elapsed().as_secs_f64(),
        args.health_interval
    );

    let cpu0 = cpu_seconds(pid);
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.idle_s)).await;
    let idle_cpu = (cpu_seconds(pid) - cpu0) / t.elapsed().as_secs_f64() * 100.0;
    println!(
        "idle ({} s, only health checks): supervisor CPU {:.1} % of one core, RSS {} KiB",
        args.idle_s,
        idle_cpu,
        status_kb(pid, "VmRSS:")
    );

    let cpu0 = cpu_seconds(pid);
    let t = Instant::now();
    let mut one = Vec::new();
    for v in &vms {
        let id = v["id"].as_str().unwrap_or_default().to_owned();
        let old = healthy_pid(v).unwrap_or_default();
        let t0 = Instant::now();
        kill9(old).await?;
        one.extend(wait_recovered(&client, &base, vec![(id, old)], t0).await?);
        tokio::time::sleep(Duration::from_millis(args.every_ms)).await;
    }
    let kill_cpu = (cpu_seconds(pid) - cpu0) / t.elapsed().as_secs_f64() * 100.0;
    report("MTTR one at a time (SIGKILL → healthy)", one);

    let now = list(&client, &base).await?;
    let victims: Vec<(String, u64)> = now
        .iter()
        .take(args.burst)
        .filter_map(|v| Some((v["id"].as_str()?.to_owned(), healthy_pid(v)?)))
        .collect();
    let t0 = Instant::now();
    for (_, pid) in &victims {
        kill9(*pid).await?;
    }
    let burst = wait_recovered(&client, &base, victims, t0).await?;
    report(
        &format!("MTTR burst of {} (4 recoveries at once)", args.burst),
        burst,
    );
    println!(
        "supervisor CPU during the one-at-a-time kills: {:.1} % of one core; peak RSS (VmHWM) {} KiB",
        kill_cpu,
        status_kb(pid, "VmHWM:")
    );

    // SIGTERM leaves the VMs running: stop them here.
    let last = list(&client, &base).await?;
    tokio::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await?;
    let code = tokio::time::timeout(Duration::from_secs(15), child.wait()).await??;
    println!("supervisor exited after SIGTERM: {code}");
    for v in &last {
        if let Some(p) = v["pid"].as_u64() {
            let _ = kill9(p).await;
        }
    }
    Ok(())
}
