//! Load test for `keel-health`: what do 1,000 targets checked every second
//! cost?
//!
//! A child process (this same binary with `--serve`) opens `--listeners` TCP
//! listeners on 127.0.0.1 that accept and drop every connection; keeping them
//! in another process means the CPU measured here is the checker's alone
//! (the child's CPU is reported separately). This process then checks
//! `--targets` targets spread over those listeners with `TcpProbe`, one
//! check per target per `--interval-ms`, waits `--warmup-seconds` for the
//! jittered first checks to spread out, and measures the steady state over
//! `--seconds`:
//!
//! * CPU: utime + stime of this process (from `/proc/self/stat`, 10 ms
//!   ticks) and, at nanosecond resolution, the sum of every thread's
//!   `/proc/self/task/*/schedstat` run time;
//! * checks per second and failures (from the checker's snapshot);
//! * peak RSS (`VmHWM`).
//!
//! `--probe noop` replaces the TCP probe with a closure that passes at once:
//! what the checker itself (timers, task wake-ups, bookkeeping) costs.
//!
//! Then, as a baseline in the same run, it makes the same number of raw
//! `tokio::net::TcpStream::connect` calls to the same listeners in a tight
//! loop, without the checker, and again in concurrent batches the size of
//! the checker's jitter steps (the way the checker issues them), and reports
//! the CPU cost per connect of each, so the checker's cost per check reads
//! as a ratio of the bare minimum.
//!
//! ```text
//! cargo run --release -p keel-examples --example health_load -- \
//!     --targets 1000 --listeners 100 --interval-ms 1000 --seconds 20
//! ```
#![allow(clippy::disallowed_types, clippy::print_stdout)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use keel_health::{CheckConfig, HealthChecker, HealthState, ProbeFailure, TcpProbe, probe_fn};

#[derive(Parser, Debug, Clone)]
#[command(about = "Measure the CPU cost of keel-health checking many TCP targets")]
struct Args {
    /// Number of health-checked targets.
    #[arg(long, default_value_t = 1000)]
    targets: usize,
    /// Number of TCP listeners (in a child process) the targets share.
    #[arg(long, default_value_t = 100)]
    listeners: usize,
    /// Check interval per target, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Check timeout per target, in milliseconds.
    #[arg(long, default_value_t = 500)]
    timeout_ms: u64,
    /// Length of the measured steady-state period, in seconds.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Time before measuring, so every target has had its jittered first check.
    #[arg(long, default_value_t = 3)]
    warmup_seconds: u64,
    /// Tokio runtime of the checker: `multi` (multi-threaded, default) or `current`.
    #[arg(long, default_value = "multi")]
    runtime: String,
    /// Worker threads of the multi-threaded runtime (default: one per core).
    #[arg(long)]
    worker_threads: Option<usize>,
    /// Close probe connections with a reset instead of a FIN (no TIME_WAIT).
    #[arg(long)]
    reset_on_close: bool,
    /// `tcp` (connect to the listeners) or `noop` (a closure that passes at
    /// once: the checker's own cost, without any I/O).
    #[arg(long, default_value = "tcp")]
    probe: String,
    /// Grid of the first-check jitter, in milliseconds (the checker's
    /// default is 50).
    #[arg(long, default_value_t = 50)]
    jitter_granularity_ms: u64,
    /// Internal: run as the listener child with this many listeners.
    #[arg(long, hide = true)]
    serve: Option<usize>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(listeners) = args.serve {
        return serve(listeners);
    }
    let runtime = match args.runtime.as_str() {
        "current" => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        "multi" => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = args.worker_threads {
                builder.worker_threads(n);
            }
            builder.enable_all().build()?
        }
        other => bail!("--runtime must be `multi` or `current`, not {other:?}"),
    };
    runtime.block_on(run(args))
}

/// The child: listeners that accept and drop, until stdin closes.
fn serve(listeners: usize) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut ports = Vec::with_capacity(listeners);
        for _ in 0..listeners {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            ports.push(listener.local_addr()?.port().to_string());
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    drop(stream);
                }
            });
        }
        println!("PORTS {}", ports.join(","));
        // Exit when the parent closes our stdin (or dies).
        tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        })
        .await?;
        Ok(())
    })
}

/// Process CPU time (user, system) from `/proc/<pid>/stat`, in 10 ms ticks.
fn proc_cpu_split(pid: &str) -> Result<(Duration, Duration)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &stat[stat.rfind(')').context("stat format")? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let utime: u64 = fields[11].parse()?;
    let stime: u64 = fields[12].parse()?;
    // /proc reports in USER_HZ, which is 100 on Linux.
    Ok((
        Duration::from_millis(utime * 10),
        Duration::from_millis(stime * 10),
    ))
}

/// Process CPU time (user + system), in 10 ms ticks.
fn proc_cpu(pid: &str) -> Result<Duration> {
    let (user, system) = proc_cpu_split(pid)?;
    Ok(user + system)
}

/// Sum of every live thread's run time, in nanoseconds.
fn threads_cpu() -> Result<Duration> {
    let mut total = 0u64;
    for entry in std::fs::read_dir("/proc/self/task")? {
        let path = entry?.path().join("schedstat");
        if let Ok(text) = std::fs::read_to_string(path) {
            total += text
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(Duration::from_nanos(total))
}

fn status_kib(field: &str) -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{field} in /proc/self/status"))
}

fn open_files_limit() -> Result<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("Max open files in /proc/self/limits")?;
    let soft = line["Max open files".len()..]
        .split_whitespace()
        .next()
        .context("soft limit")?;
    Ok(if soft == "unlimited" {
        u64::MAX
    } else {
        soft.parse()?
    })
}

#[derive(Clone, Copy)]
struct Sample {
    wall: Instant,
    cpu: Duration,
    user: Duration,
    threads: Duration,
}

fn sample() -> Result<Sample> {
    let (user, system) = proc_cpu_split("self")?;
    Ok(Sample {
        wall: Instant::now(),
        cpu: user + system,
        user,
        threads: threads_cpu()?,
    })
}

fn totals(checker: &HealthChecker) -> (u64, u64) {
    checker
        .snapshot()
        .iter()
        .fold((0, 0), |(c, f), s| (c + s.checks, f + s.failures))
}

async fn run(args: Args) -> Result<()> {
    let limit = open_files_limit()?;
    // Worst case every target has a socket open at once, plus the runtime's own.
    let needed = (args.targets + args.listeners + 64) as u64;
    if needed > limit {
        bail!(
            "ulimit -n is {limit}, but {} targets over {} listeners may need {needed} descriptors",
            args.targets,
            args.listeners
        );
    }

    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(["--serve", &args.listeners.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("start the listener child")?;
    let child_pid = child.id().to_string();
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("child stdout")?).read_line(&mut line)?;
    let addrs: Vec<SocketAddr> = line
        .trim()
        .strip_prefix("PORTS ")
        .context("child did not report its ports")?
        .split(',')
        .map(|p| Ok(SocketAddr::from(([127, 0, 0, 1], p.parse::<u16>()?))))
        .collect::<Result<_>>()?;

    println!(
        "health_load: {} {} targets over {} listeners, interval {} ms, timeout {} ms, jitter grid {} ms, runtime {}{}, ulimit -n {limit}",
        args.targets,
        args.probe,
        addrs.len(),
        args.interval_ms,
        args.timeout_ms,
        args.jitter_granularity_ms,
        args.runtime,
        if args.reset_on_close {
            ", reset on close"
        } else {
            ""
        },
    );

    let checker = HealthChecker::builder()
        .seed(2024)
        .jitter_granularity(Duration::from_millis(args.jitter_granularity_ms))
        .build()?;
    let config = CheckConfig::builder()
        .interval(Duration::from_millis(args.interval_ms))
        .timeout(Duration::from_millis(args.timeout_ms))
        .failure_threshold(3)
        .recovery_threshold(2)
        .build()?;
    for i in 0..args.targets {
        let id = format!("target-{i:04}");
        match args.probe.as_str() {
            "tcp" => {
                let probe =
                    TcpProbe::from_addr(addrs[i % addrs.len()]).reset_on_close(args.reset_on_close);
                checker.add(id, probe, config)?;
            }
            "noop" => {
                let probe = probe_fn(|| async { Ok::<_, ProbeFailure>(()) });
                checker.add(id, probe, config)?;
            }
            other => bail!("--probe must be `tcp` or `noop`, not {other:?}"),
        }
    }

    tokio::time::sleep(Duration::from_secs(args.warmup_seconds)).await;
    let (checks0, failures0) = totals(&checker);
    let child0 = proc_cpu(&child_pid)?;
    let s0 = sample()?;
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let s1 = sample()?;
    let child1 = proc_cpu(&child_pid)?;
    let (checks1, failures1) = totals(&checker);

    let wall = s1.wall - s0.wall;
    let checks = checks1 - checks0;
    let failures = failures1 - failures0;
    let cpu = s1.cpu - s0.cpu;
    let threads = s1.threads.saturating_sub(s0.threads);
    let pct = |d: Duration| 100.0 * d.as_secs_f64() / wall.as_secs_f64();
    let per_check = |d: Duration| d.as_secs_f64() * 1e6 / checks.max(1) as f64;
    let healthy = checker
        .snapshot()
        .iter()
        .filter(|s| s.state == HealthState::Healthy)
        .count();
    println!(
        "checker:  {:.1} s measured, {checks} checks ({:.0}/s), {failures} failures, {healthy}/{} healthy",
        wall.as_secs_f64(),
        checks as f64 / wall.as_secs_f64(),
        args.targets,
    );
    println!(
        "checker:  CPU {:.2} % of one core by thread schedstat ({:.1} us/check); proc stat (10 ms ticks): {:.2} % = {:.2} % user + {:.2} % system",
        pct(threads),
        per_check(threads),
        pct(cpu),
        pct(s1.user - s0.user),
        pct(cpu - (s1.user - s0.user)),
    );
    println!(
        "listeners (child process): CPU {:.2} % of one core",
        pct(child1 - child0)
    );
    checker.shutdown().await;
    let rss_checker = status_kib("VmHWM:")?;

    // Baseline: the same number of raw connects, back to back, no checker.
    let n = checks.max(1);
    let b0 = sample()?;
    let mut raw_failures = 0u64;
    for i in 0..n {
        match tokio::net::TcpStream::connect(addrs[i as usize % addrs.len()]).await {
            Ok(stream) => {
                if args.reset_on_close {
                    let _ = stream.set_zero_linger();
                }
                drop(stream);
            }
            Err(_) => raw_failures += 1,
        }
    }
    let b1 = sample()?;
    let raw_threads = b1.threads.saturating_sub(b0.threads);
    let raw_per_connect = raw_threads.as_secs_f64() * 1e6 / n as f64;
    let checker_per_check = per_check(threads);
    println!(
        "baseline: {n} raw TcpStream::connect one at a time in {:.2} s, {raw_failures} failures, {raw_per_connect:.1} us CPU/connect (proc stat {:?})",
        (b1.wall - b0.wall).as_secs_f64(),
        b1.cpu - b0.cpu,
    );

    // Baseline 2: the same connects in concurrent batches the size of the
    // checker's jitter steps, the way the checker issues them.
    let batch = ((args.targets as u64 * args.jitter_granularity_ms) / args.interval_ms).max(1);
    let c0 = sample()?;
    let mut batch_failures = 0u64;
    let mut i = 0u64;
    while i < n {
        let size = batch.min(n - i);
        let connects = (i..i + size).map(|k| {
            let addr = addrs[k as usize % addrs.len()];
            async move { tokio::net::TcpStream::connect(addr).await }
        });
        for result in futures::future::join_all(connects).await {
            match result {
                Ok(stream) => {
                    if args.reset_on_close {
                        let _ = stream.set_zero_linger();
                    }
                }
                Err(_) => batch_failures += 1,
            }
        }
        i += size;
    }
    let c1 = sample()?;
    let batched_per_connect = c1.threads.saturating_sub(c0.threads).as_secs_f64() * 1e6 / n as f64;
    println!(
        "baseline: {n} raw TcpStream::connect in batches of {batch} in {:.2} s, {batch_failures} failures, {batched_per_connect:.1} us CPU/connect",
        (c1.wall - c0.wall).as_secs_f64(),
    );
    println!(
        "ratio:    checker CPU per check / raw connect CPU = {:.2}x (one at a time), {:.2}x (batched); raw connects alone at {:.0}/s would cost {:.2} % of one core",
        checker_per_check / raw_per_connect,
        checker_per_check / batched_per_connect,
        checks as f64 / wall.as_secs_f64(),
        raw_per_connect * checks as f64 / wall.as_secs_f64() / 1e4,
    );
    println!("memory:   peak RSS {rss_checker} KiB (VmHWM)");
    println!(
        "RESULT probe={} grid_ms={} targets={} cpu_pct={:.2} cpu_pct_ticks={:.2} user_pct={:.2} checks_per_s={:.0} failures={failures} us_per_check={checker_per_check:.1} raw_us_per_connect={raw_per_connect:.1} ratio={:.2} batched_us_per_connect={batched_per_connect:.1} ratio_batched={:.2} peak_rss_kib={rss_checker}",
        args.probe,
        args.jitter_granularity_ms,
        args.targets,
        pct(threads),
        pct(cpu),
        pct(s1.user - s0.user),
        checks as f64 / wall.as_secs_f64(),
        checker_per_check / raw_per_connect,
        checker_per_check / batched_per_connect,
    );

    drop(child.stdin.take());
    let _ = child.wait();
    Ok(())
}
