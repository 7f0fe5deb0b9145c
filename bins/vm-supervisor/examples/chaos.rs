//! Load program for vm-supervisor: an in-process supervisor over real
//! `fake-vmm` processes, in one of three modes.
//!
//! * `chaos` (default: 100 VMs, 3 min): random SIGKILLs and socket
//!   removals, then checks that every VM came back healthy, that each VM
//!   has exactly one process, that no file descriptor leaked, and that the
//!   journal agrees with the supervisor (every attempt closed; restarts =
//!   successful recoveries; the registry's pid = the running one).
//! * `idle` (e.g. 1,000 VMs checked every 5 s): measures the supervisor's
//!   CPU (utime + stime from `/proc/self/stat`) and RSS (`VmRSS`) over a
//!   window after every VM has started.
//! * `slow` (e.g. 100 VMs for 10 min): healthy but slow VMs, each
//!   answering its checks after 0.5-4 s (a tenth get a new latency every
//!   second) under the default 5 s timeout and failure threshold 3: any
//!   restart is a false one and fails the run.
//!
//! ```sh
//! cargo build -p vm-supervisor --bins --examples
//! target/debug/examples/chaos --vms 100 --duration 3m
//! target/debug/examples/chaos --mode idle --vms 1000 --health-interval 5s --duration 60s
//! target/release/examples/chaos --mode slow --vms 100 --health-interval 5s --duration 10m
//! ```
//!
//! Exits 1 when a check fails. Every fake VM is killed at the end.

// A load program reports on stdout.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use clap::Parser;
use keel_core::Rng;
use keel_health::HealthMetrics;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::time::Instant;
use vm_supervisor::alerts::Alerts;
use vm_supervisor::config::{Settings, Timings};
use vm_supervisor::metrics::Metrics;
use vm_supervisor::registry::Registry;
use vm_supervisor::supervisor::{Options, Supervisor, VmState};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    Chaos,
    Idle,
    /// Healthy but slow VMs: each answers its health check after 0.5-4 s
    /// (a new latency for a tenth of them every second); no VM may be
    /// restarted.
    Slow,
}

/// vm-supervisor load program (chaos or idle CPU/RSS).
#[derive(Debug, Parser)]
struct Args {
    /// What to run.
    #[arg(long, value_enum, default_value = "chaos")]
    mode: Mode,
    /// Fake VMs.
    #[arg(long, default_value_t = 100)]
    vms: usize,
    /// Chaos length, or the idle measurement window.
    #[arg(long, default_value = "3m", value_parser = vm_supervisor::duration::parse)]
    duration: Duration,
    /// Health check interval.
    #[arg(long, default_value = "1s", value_parser = vm_supervisor::duration::parse)]
    health_interval: Duration,
    /// Health check timeout (default: the interval, at most 1 s; `--mode
    /// slow` defaults to 5 s, the supervisor's own default).
    #[arg(long, value_parser = vm_supervisor::duration::parse)]
    health_timeout: Option<Duration>,
    /// Mean time between two chaos actions (SIGKILL or socket removal).
    #[arg(long, default_value = "300ms", value_parser = vm_supervisor::duration::parse)]
    fault_every: Duration,
    /// Recoveries at once.
    #[arg(long, default_value_t = 8)]
    max_concurrent_recoveries: usize,
    /// RNG seed of the chaos.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// The fake-vmm binary (default: next to this example's directory).
    #[arg(long)]
    fake_vmm: Option<PathBuf>,
}

fn fake_vmm(args: &Args) -> anyhow::Result<PathBuf> {
    if let Some(p) = &args.fake_vmm {
        return Ok(p.clone());
    }
    // target/<profile>/examples/chaos → target/<profile>/fake-vmm
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .and_then(Path::parent)
        .context("no target directory")?
        .join("fake-vmm");
    ensure!(
        path.exists(),
        "{} missing: cargo build -p vm-supervisor --bins",
        path.display()
    );
    Ok(path)
}

/// `(utime + stime)` of this process in seconds (USER_HZ is 100 on Linux).
fn cpu_seconds() -> f64 {
    let text = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: field 3 is f[0]; utime (14) is f[11], stime (15) f[12].
    let ticks: u64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    ticks as f64 / 100.0
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

/// Live (not zombie) fake-vmm processes of this run, by the `--id` in
/// their command line.
fn processes(dir: &Path) -> BTreeMap<u32, String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let zombie = vm_supervisor::process::stat(pid).is_none_or(|(s, _)| s == 'Z');
        if zombie || !args.iter().any(|a| a.contains(&needle)) {
            continue;
        }
        if let Some(i) = args.iter().position(|a| a == "--id") {
            found.insert(pid, args.get(i + 1).cloned().unwrap_or_default());
        }
    }
    found
}

fn kill_all(dir: &Path) {
    for pid in processes(dir).keys() {
        let pid = Pid::from_raw(*pid as i32);
        let _ = killpg(pid, Signal::SIGKILL);
        let _ = kill(pid, Signal::SIGKILL);
    }
}

async fn all_healthy(s: &Supervisor, n: usize, within: Duration) -> anyhow::Result<Duration> {
    let began = Instant::now();
    loop {
        let healthy = s
            .list()
            .iter()
            .filter(|v| v.state == VmState::Running && v.healthy && v.pid.is_some())
            .count();
        if healthy == n {
            return Ok(began.elapsed());
        }
        if began.elapsed() > within {
            let stuck: Vec<_> = s
                .list()
                .into_iter()
                .filter(|v| !(v.state == VmState::Running && v.healthy))
                .map(|v| format!("{}={:?}", v.id, v.state))
                .take(10)
                .collect();
            bail!("{healthy}/{n} healthy after {within:?}; e.g. {stuck:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let fake = fake_vmm(&args)?;
    let dir = tempfile::tempdir()?;
    let result = run(&args, &fake, dir.path()).await;
    kill_all(dir.path());
    match &result {
        Ok(()) => println!("PASS"),
        Err(e) => println!("FAIL: {e:#}"),
    }
    result
}

async fn run(args: &Args, fake: &Path, dir: &Path) -> anyhow::Result<()> {
    let mut yaml = String::from("vms:\n");
    for i in 0..args.vms {
        yaml.push_str(&format!(
            "  - id: vm-{i:04}\n    command: {}\n    args: ['--api-sock', '{{socket}}', '--id', '{{id}}']\n    socket: '{}/{{id}}.sock'\n    start_calls:\n      - {{method: PUT, path: /actions, body: {{action_type: InstanceStart}}}}\n",
            fake.display(),
            dir.display()
        ));
    }
    let config = dir.join("vm-supervisor.yaml");
    std::fs::write(&config, &yaml)?;
    let vms = vm_supervisor::spec::parse(&yaml, &config)?.vms;
    let db = format!("sqlite://{}", dir.join("registry.db").display());
    let mut settings = Settings::for_tests(config, db.clone());
    settings.timings = Timings {
        health_interval: args.health_interval,
        health_timeout: args.health_timeout.unwrap_or(if args.mode == Mode::Slow {
            Duration::from_secs(5)
        } else {
            args.health_interval.min(Duration::from_secs(1))
        }),
        // The supervisor's default (3) where false restarts are the point.
        failure_threshold: if args.mode == Mode::Slow { 3 } else { 2 },
        recovery_threshold: 2,
        retry_interval: Duration::from_millis(500),
        backoff_factor: 2.0,
        max_retry_interval: Duration::from_secs(5),
        start_timeout: Duration::from_secs(20),
        stop_grace: Duration::from_secs(2),
        // A VM hit twice in a while gets its attempts back soon.
        stable_period: Duration::from_secs(5),
    };
    settings.max_retries = 10;
    settings.max_concurrent_recoveries = args.max_concurrent_recoveries;
    // The chaos is not a host problem: the fleet short-circuit (which would
    // rightly stop recovering a fleet this battered) stays out of it.
    settings.max_unhealthy_percent = 100;
    settings.attempts_kept = 10_000;
    let metrics = Metrics::default();
    let cpu0 = cpu_seconds();
    let s = Supervisor::start(
        settings,
        vms,
        metrics.clone(),
        HealthMetrics::new(),
        Alerts::new(None),
        Options {
            seed: Some(args.seed),
            ..Options::default()
        },
    )
    .await?;
    let started = all_healthy(&s, args.vms, Duration::from_secs(300)).await?;
    println!(
        "{} VMs healthy in {:.1} s (start-up CPU {:.1} s)",
        args.vms,
        started.as_secs_f64(),
        cpu_seconds() - cpu0
    );
    let fds_before = open_fds();
    let outcome = match args.mode {
        Mode::Idle => idle(args, &s).await,
        Mode::Slow => slow(args, &s, dir).await,
        Mode::Chaos => chaos(args, &s, dir, &metrics, fds_before, &db).await,
    };
    s.shutdown(Duration::from_secs(10)).await;
    outcome
}

async fn idle(args: &Args, s: &Supervisor) -> anyhow::Result<()> {
    // Let the first checks (all at once after the starts) spread out.
    tokio::time::sleep(args.health_interval * 2).await;
    let checks = || -> u64 {
        s.list()
            .iter()
            .filter_map(|v| s.health(&v.id))
            .map(|h| h.checks)
            .sum()
    };
    let checks0 = checks();
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let mut peak_rss = rss_mib();
    while t0.elapsed() < args.duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        peak_rss = peak_rss.max(rss_mib());
    }
    let cpu = cpu_seconds() - cpu0;
    let wall = t0.elapsed().as_secs_f64();
    let checks = checks() - checks0;
    println!(
        "idle: {} VMs every {:?}: supervisor CPU {:.2} s over {:.1} s = {:.2} % of one core; RSS now {:.1} MiB, peak {:.1} MiB; {} checks in the window ({:.0}/s)",
        args.vms,
        args.health_interval,
        cpu,
        wall,
        100.0 * cpu / wall,
        rss_mib(),
        peak_rss,
        checks,
        checks as f64 / wall
    );
    let unhealthy = s.list().iter().filter(|v| !v.healthy).count();
    ensure!(unhealthy == 0, "{unhealthy} VMs unhealthy while idle");
    Ok(())
}

/// Tells the fake VM `id` to answer `GET /` after `ms` milliseconds.
async fn set_latency(dir: &Path, id: &str, ms: u64) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = format!(r#"{{"fault": "slow", "ms": {ms}}}"#);
    let mut stream = tokio::net::UnixStream::connect(dir.join(format!("{id}.sock"))).await?;
    stream
        .write_all(
            format!(
                "PUT /fault HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut answer)).await??;
    ensure!(
        answer.starts_with(b"HTTP/1.1 2"),
        "{id}: {}",
        String::from_utf8_lossy(&answer)
    );
    Ok(())
}

/// Healthy but slow: every VM answers its checks after 0.5-4 s, a tenth
/// of them get a new latency every second, for `duration`. A restart is a
/// false one.
async fn slow(args: &Args, s: &Supervisor, dir: &Path) -> anyhow::Result<()> {
    let rng = Rng::with_seed(args.seed);
    let ids: Vec<String> = s.list().into_iter().map(|v| v.id).collect();
    let restarts = || -> u64 { s.list().iter().map(|v| v.restarts).sum() };
    for id in &ids {
        set_latency(dir, id, rng.u64_between(500, 4_000)).await?;
    }
    let restarts0 = restarts();
    let (t0, mut changes) = (Instant::now(), 0u64);
    while t0.elapsed() < args.duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for _ in 0..(ids.len() / 10).max(1) {
            let id = &ids[rng.u64_between(0, ids.len() as u64 - 1) as usize];
            set_latency(dir, id, rng.u64_between(500, 4_000)).await?;
            changes += 1;
        }
    }
    let false_restarts = restarts() - restarts0;
    let unhealthy = s.list().iter().filter(|v| !v.healthy).count();
    println!(
        "slow: {} VMs answering in 0.5-4 s (health timeout {:?}, every {:?}) for {:.0} s: {changes} latency changes, {false_restarts} restarts, {unhealthy} unhealthy at the end",
        ids.len(),
        args.health_timeout.unwrap_or(Duration::from_secs(5)),
        args.health_interval,
        t0.elapsed().as_secs_f64()
    );
    ensure!(false_restarts == 0, "{false_restarts} false restarts");
    ensure!(unhealthy == 0, "{unhealthy} VMs unhealthy at the end");
    Ok(())
}

async fn chaos(
    args: &Args,
    s: &Supervisor,
    dir: &Path,
    metrics: &Metrics,
    fds_before: usize,
    db: &str,
) -> anyhow::Result<()> {
    let rng = Rng::with_seed(args.seed);
    let ids: Vec<String> = s.list().into_iter().map(|v| v.id).collect();
    let (mut kills, mut removals) = (0u64, 0u64);
    let t0 = Instant::now();
    while t0.elapsed() < args.duration {
        let wait = rng.duration_between(args.fault_every / 2, args.fault_every * 3 / 2);
        tokio::time::sleep(wait).await;
        let id = &ids[rng.u64_between(0, ids.len() as u64 - 1) as usize];
        let Some(pid) = s.get(id).and_then(|v| v.pid) else {
            continue;
        };
        if rng.next_f64() < 0.5 {
            if kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok() {
                kills += 1;
            }
        } else if std::fs::remove_file(dir.join(format!("{id}.sock"))).is_ok() {
            removals += 1;
        }
    }
    println!(
        "chaos: {kills} SIGKILLs and {removals} socket removals in {:.0} s",
        t0.elapsed().as_secs_f64()
    );
    // A socket removed in the last seconds is noticed only after
    // FAILURE_THRESHOLD checks: let those run before judging.
    tokio::time::sleep(args.health_interval * 3).await;
    let settled = all_healthy(s, args.vms, Duration::from_secs(120)).await?;
    println!(
        "every VM healthy {:.1} s after the chaos (+ {:?} for late detections)",
        settled.as_secs_f64(),
        args.health_interval * 3
    );

    // One process per VM, and it is the one the supervisor shows.
    let procs = processes(dir);
    let views: BTreeMap<String, Option<u32>> =
        s.list().into_iter().map(|v| (v.id, v.pid)).collect();
    let mut per_vm: BTreeMap<&str, usize> = BTreeMap::new();
    for id in procs.values() {
        *per_vm.entry(id).or_default() += 1;
    }
    let dupes: Vec<_> = per_vm.iter().filter(|(_, n)| **n > 1).collect();
    ensure!(dupes.is_empty(), "duplicate VM processes: {dupes:?}");
    ensure!(
        procs.len() == args.vms,
        "{} VM processes for {} VMs",
        procs.len(),
        args.vms
    );
    for (pid, id) in &procs {
        ensure!(
            views.get(id) == Some(&Some(*pid)),
            "{id}: process {pid} is not the supervisor's {:?}",
            views.get(id)
        );
    }

    // No fd leaked: what is open now is what was open before the chaos
    // (a few may come and go: a check's socket in flight).
    let fds_after = open_fds();
    println!("open fds: {fds_before} before the chaos, {fds_after} after");
    ensure!(
        fds_after <= fds_before + 8,
        "fds grew from {fds_before} to {fds_after}"
    );

    // The journal: every attempt closed; restarts = successful recoveries.
    let mut total_restarts = 0;
    let mut recovered = 0;
    for id in &ids {
        let view = s.get(id).context("vm gone")?;
        let attempts = s.attempts(id).await?;
        let open: Vec<_> = attempts.iter().filter(|a| a.ended_at.is_none()).collect();
        ensure!(open.is_empty(), "{id}: attempts left open: {open:?}");
        let ok = attempts
            .iter()
            .filter(|a| a.reason != "initial_start" && a.outcome.as_deref() == Some("success"))
            .count() as u64;
        ensure!(
            ok == view.restarts,
            "{id}: {ok} successful recoveries in the journal, restarts = {}",
            view.restarts
        );
        total_restarts += view.restarts;
        recovered += u64::from(view.restarts > 0);
    }
    let orphaned: u64 = ["process_dead", "socket_unreachable", "health_check_failed"]
        .iter()
        .map(|r| metrics.orphaned_count(r))
        .sum();
    println!(
        "journal: {total_restarts} restarts over {recovered} VMs, {orphaned} orphans detected, {} successful recoveries counted",
        metrics.success_count()
    );
    ensure!(
        total_restarts == metrics.success_count(),
        "metric disagrees"
    );

    // The registry's pids are the running processes.
    let registry = Registry::open(db, 10).await?;
    let records = registry.load().await?;
    registry.close().await;
    let differ: Vec<String> = records
        .iter()
        .filter(|r| views.get(&r.spec.id) != Some(&r.pid))
        .map(|r| {
            format!(
                "{}: registry {:?}, running {:?}",
                r.spec.id,
                r.pid,
                views.get(&r.spec.id)
            )
        })
        .collect();
    ensure!(
        differ.is_empty() && records.len() == args.vms,
        "registry and processes differ: {differ:?}"
    );
    Ok(())
}
