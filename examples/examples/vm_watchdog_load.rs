//! Load program for vm-watchdog: the watchdog's engine (the whole program:
//! notifier, guarded API, VM tasks, probes, admin server, file watcher)
//! runs in-process against the Yandex and Telegram fakes with N VMs, each
//! with a TCP listener on 127.0.0.1 standing in for its SSH port.
//!
//! Two scenarios run side by side once every VM is seen RUNNING:
//!
//! * **running → stopped**: a random running VM stops (its listener closes
//!   and the fake says STOPPED); reaction = the stop → the Telegram fake
//!   receiving a message naming it ("VM x is STOPPED", or "VM x unreachable
//!   (API unavailable, cannot confirm status)" while the API cannot
//!   confirm). The port probe notices it. The time until the fake accepts
//!   the VM's start is reported too.
//! * **fast-poll → crashed**: a VM stops, the watchdog starts it, and while
//!   it is PROVISIONING/STARTING (polled at `MIN_CHECK_INTERVAL`) it
//!   crashes; reaction = the crash → "VM x is CRASHED" received.
//!
//! It reports p50/p99/max of both, API requests per second, CPU (user +
//! system over wall time) and peak RSS (`VmHWM`, the fakes included; the
//! RSS before the watchdog started is printed too).
//!
//! ```text
//! ulimit -n 8192
//! cargo run --release -p keel-examples --example vm_watchdog_load -- --vms 1000
//! ```
//!
//! Telegram's real limits are always on, on both sides: the sink declares
//! them (1 message/s per chat, 20/min per group, 30/s per bot) and the fake
//! enforces them ([`TelegramLimits::REAL`], a 429 for any message over a
//! limit, counted and printed). Alerts that wait behind the limits go out
//! as digests (one message, one line per VM); a VM counts as alerted when a
//! message naming it arrives, alone or in a digest.
//!
//! A mass outage (100 VMs within one second) is `--stops 100 --every-ms 10
//! --crashes 0`; the degraded API `--error-rate 0.5 --latency-min-ms 100
//! --latency-max-ms 2000`.

#![allow(clippy::disallowed_types, clippy::print_stdout)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use keel_core::Rng;
use keel_testkit::FaultConfig;
use keel_testkit::fakes::telegram::{FakeTelegram, TelegramLimits};
use keel_testkit::fakes::yandex::{FakeYandex, SshPort, StepDelays};
use reqwest::StatusCode;
use tokio::sync::Mutex;
use tokio::time::Instant;
use vm_watchdog::{Config, Options, VmStatus, Watchdog, vms_yaml};

#[derive(Debug, Parser)]
struct Args {
    /// VMs to watch.
    #[arg(long, default_value_t = 1_000)]
    vms: usize,
    /// Running VMs to stop (scenario 1).
    #[arg(long, default_value_t = 100)]
    stops: usize,
    /// VMs to crash while they start (scenario 2).
    #[arg(long, default_value_t = 50)]
    crashes: usize,
    /// Pause between two stops (and between two crash scenarios), ms.
    #[arg(long, default_value_t = 700)]
    every_ms: u64,
    /// API latency range, ms.
    #[arg(long, default_value_t = 50)]
    latency_min_ms: u64,
    /// API latency range, ms.
    #[arg(long, default_value_t = 200)]
    latency_max_ms: u64,
    /// Fraction of API requests failing with 503.
    #[arg(long, default_value_t = 0.1)]
    error_rate: f64,
    /// Put every VM in one folder (`folder_id` in vms.yaml): one paginated
    /// `instances.list` per poll instead of one `get` per VM.
    #[arg(long)]
    folder: bool,
    /// Seconds to let the schedules settle after every VM is seen running.
    #[arg(long, default_value_t = 90)]
    settle_s: u64,
    /// Seed of the faults and of the choice of VMs.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

/// Frees a VM for another incident when the task watching it ends.
struct InFlight {
    set: Arc<std::sync::Mutex<HashSet<usize>>>,
    vm: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut set) = self.set.lock() {
            set.remove(&self.vm);
        }
    }
}

fn status_field(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn fd_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// User + system CPU seconds of this process.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces) start at ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of /proc/pid/stat: 12 and 13 here.
    (ticks(11) + ticks(12)) / 100.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn summary(name: &str, mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    let (p50, p99) = (percentile(&v, 0.5), percentile(&v, 0.99));
    println!(
        "{name}: n={} p50={:.2}s p99={:.2}s max={:.2}s",
        v.len(),
        p50.as_secs_f64(),
        p99.as_secs_f64(),
        v.last().copied().unwrap_or_default().as_secs_f64()
    );
    (p50, p99)
}

struct Vm {
    id: String,
    /// The SSH stand-in: closed while the VM is down, without ever
    /// releasing its port (another socket could take a freed one).
    ssh: SshPort,
}

/// Waits until the Telegram fake has a message containing `needle`
/// received after `since`; returns its receive time.
async fn telegram_message(
    tg: &FakeTelegram,
    needle: &str,
    since: Instant,
    timeout: Duration,
) -> Option<Instant> {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if let Some(m) = tg
            .messages()
            .into_iter()
            .find(|m| m.received_at >= since && m.plain_text.contains(needle))
        {
            return Some(m.received_at);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let needed = args.vms as u64 * 2 + 512;
    if let Some(limit) = fd_limit()
        && limit < needed
    {
        bail!(
            "open-file limit {limit} is below the {needed} this run needs: run `ulimit -n {}` first",
            needed.max(8192)
        );
    }
    if args.vms == 0 {
        bail!("--vms must be at least 1");
    }

    let yc = FakeYandex::builder()
        .seed(args.seed)
        .steps(StepDelays::uniform(Duration::from_secs(3)))
        .faults(
            FaultConfig::none()
                .with_errors(args.error_rate, StatusCode::SERVICE_UNAVAILABLE)
                .with_latency(
                    Duration::from_millis(args.latency_min_ms),
                    Duration::from_millis(args.latency_max_ms),
                ),
        )
        .start()
        .await;
    let tg = FakeTelegram::start().await;
    tg.set_limits(Some(TelegramLimits::REAL));

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("vms.yaml");
    let mut yaml = if args.folder {
        String::from("folder_id: b1g-load\nvms:\n")
    } else {
        String::from("vms:\n")
    };
    let mut vms = Vec::with_capacity(args.vms);
    for i in 0..args.vms {
        let id = format!("fhm-load-{i:05}");
        let name = format!("vm-{i:05}");
        let ssh = SshPort::open_new().context("binding a VM port")?;
        let port = ssh.port();
        yc.add_instance(&id, &name, "b1g-load", "RUNNING");
        yc.set_nat_ip(&id, Some("127.0.0.1"));
        yaml.push_str(&format!(
            "  - name: {name}\n    instance_id: {id}\n    ssh_port: {port}\n"
        ));
        vms.push(Vm { id, ssh });
    }
    std::fs::write(&path, yaml)?;

    let token = tg.token();
    let base = yc.base_url();
    let tg_base = tg.base_url();
    let config = Config::try_parse_from([
        "vm-watchdog",
        "--bot-token",
        token.as_str(),
        "--group-chat-id=-1001234567890",
        "--vms-config",
        path.to_str().context("temp path")?,
        "--health-addr",
        "127.0.0.1:0",
        "--yc-compute-url",
        base.as_str(),
        "--yc-operation-url",
        base.as_str(),
        "--yc-iam-token",
        "t1.load",
        "--telegram-api-url",
        tg_base.as_str(),
    ])?;
    let settings = config.validate()?;
    // The sink keeps Telegram's own rate limits (the default).
    let options = Options::default();
    if args.folder {
        // Baseline: what the fake alone costs to render the folder listing
        // the watchdog will ask for (peak RSS is monotonic, so this comes
        // first).
        let client = reqwest::Client::new();
        for _ in 0..10 {
            let body = client
                .get(format!(
                    "{}/compute/v1/instances?folderId=b1g-load&pageSize=1000",
                    yc.base_url()
                ))
                .send()
                .await?
                .bytes()
                .await?;
            std::hint::black_box(body);
        }
        yc.server().clear_requests();
        println!(
            "baseline: 10 listings of {} instances served by the fake alone: peak RSS {} kB",
            args.vms,
            status_field("VmHWM:").unwrap_or(0)
        );
    }
    let rss_before = status_field("VmRSS:").unwrap_or(0);
    let file = vms_yaml::load(&path).await?;
    let watchdog = Watchdog::start(&settings, file, options).await?;
    let engine = watchdog.engine().clone();
    let yc = Arc::new(yc);
    // The fakes record every request; count and forget them so the
    // recorder's memory does not show up as the watchdog's.
    let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = {
        let yc = yc.clone();
        let requests = requests.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let n = yc.server().request_count();
                yc.server().clear_requests();
                requests.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };

    println!(
        "watching {} VMs{} (MIN_CHECK_INTERVAL {:?}, API latency {}-{} ms, {:.0} % errors); RSS before start {} kB",
        args.vms,
        if args.folder { " in one folder" } else { "" },
        settings.bounds.min,
        args.latency_min_ms,
        args.latency_max_ms,
        args.error_rate * 100.0,
        rss_before
    );

    let warm = Instant::now();
    loop {
        let running = (0..args.vms)
            .filter(|i| engine.status_of(&format!("vm-{i:05}")) == Some(VmStatus::Running))
            .count();
        if running == args.vms {
            break;
        }
        if warm.elapsed() > Duration::from_secs(120) {
            bail!(
                "only {running} of {} VMs seen RUNNING after 2 min",
                args.vms
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "all VMs seen RUNNING after {:.1}s (RSS {} kB); letting schedules settle for {} s",
        warm.elapsed().as_secs_f64(),
        status_field("VmRSS:").unwrap_or(0),
        args.settle_s
    );
    tokio::time::sleep(Duration::from_secs(args.settle_s)).await;
    println!("settled (RSS {} kB)", status_field("VmRSS:").unwrap_or(0));

    let vms = Arc::new(Mutex::new(vms));
    let tg = Arc::new(tg);
    let rng = Rng::with_seed(args.seed);

    // Re-open a VM's port once the fake says it runs again.
    let reopen = {
        let vms = vms.clone();
        let yc = yc.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let mut vms = vms.lock().await;
                for vm in vms.iter_mut() {
                    if !vm.ssh.is_open() && yc.status(&vm.id).as_deref() == Some("RUNNING") {
                        // A failure leaves it closed: tried again next round.
                        let _ = vm.ssh.open();
                    }
                }
            }
        })
    };

    let started = Instant::now();
    let cpu_start = cpu_seconds();
    let requests_start =
        requests.load(std::sync::atomic::Ordering::Relaxed) + yc.server().request_count();
    let stop_results: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let start_results: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let crash_results: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let missed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    // Stops and crashes interleaved in a seeded random order.
    let mut kinds: Vec<bool> = std::iter::repeat_n(false, args.stops)
        .chain(std::iter::repeat_n(true, args.crashes))
        .collect();
    for k in (1..kinds.len()).rev() {
        kinds.swap(k, rng.u64_between(0, k as u64) as usize);
    }
    // A VM is picked at most once while its incident is being watched, and
    // only while it runs: a long run (more incidents than VMs, e.g. 2/s for
    // 10 minutes) stops VMs again once the watchdog has brought them back.
    let in_flight: Arc<std::sync::Mutex<HashSet<usize>>> = Arc::default();
    for crash in kinds {
        let i = loop {
            let i = rng.u64_between(0, args.vms as u64 - 1) as usize;
            if in_flight.lock().expect("in-flight set").contains(&i) {
                continue;
            }
            let up = {
                let all = vms.lock().await;
                all[i].ssh.is_open() && yc.status(&all[i].id).as_deref() == Some("RUNNING")
            };
            if up && in_flight.lock().expect("in-flight set").insert(i) {
                break i;
            }
        };
        let done = InFlight {
            set: in_flight.clone(),
            vm: i,
        };
        // The VM stops: its port closes and the API says STOPPED at the
        // same moment (`at` is taken before either).
        let at = Instant::now();
        let (id, name) = {
            let mut all = vms.lock().await;
            all[i].ssh.close().context("closing a VM port")?;
            yc.stop_vm(&all[i].id);
            (all[i].id.clone(), format!("vm-{i:05}"))
        };
        let yc = yc.clone();
        let tg = tg.clone();
        let stop_results = stop_results.clone();
        let start_results = start_results.clone();
        let crash_results = crash_results.clone();
        let missed = missed.clone();
        let delay = rng.duration_between(Duration::ZERO, Duration::from_millis(2_000));
        tasks.push(tokio::spawn(async move {
            let _done = done;
            if !crash {
                // Started: the fake accepted a `:start` (STOPPED →
                // PROVISIONING at once), watched alongside the alert.
                let started = async {
                    let end = Instant::now() + Duration::from_secs(60);
                    while yc.status(&id).as_deref() == Some("STOPPED") {
                        if Instant::now() > end {
                            return None;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Some(at.elapsed())
                };
                // The first message naming the VM: `is STOPPED`, or, while the
                // API cannot confirm, `unreachable (API unavailable, ...)`.
                let needle = format!("VM {name} ");
                let alerted = telegram_message(&tg, &needle, at, Duration::from_secs(60));
                let (alerted, started) = tokio::join!(alerted, started);
                match alerted {
                    Some(got) => stop_results.lock().await.push(got - at),
                    None => {
                        missed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                if let Some(took) = started {
                    start_results.lock().await.push(took);
                }
                return;
            }
            // Wait for the watchdog to start it, then crash it mid-start.
            let end = Instant::now() + Duration::from_secs(60);
            while !matches!(yc.status(&id).as_deref(), Some("PROVISIONING" | "STARTING")) {
                if Instant::now() > end {
                    missed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(delay).await;
            let at = Instant::now();
            yc.set_status(&id, "CRASHED");
            match telegram_message(
                &tg,
                &format!("VM {name} is CRASHED"),
                at,
                Duration::from_secs(60),
            )
            .await
            {
                Some(got) => crash_results.lock().await.push(got - at),
                None => {
                    missed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
        tokio::time::sleep(Duration::from_millis(args.every_ms)).await;
    }
    for t in tasks {
        t.await?;
    }
    // Every stopped VM must be running again.
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let down = vms.lock().await.iter().filter(|v| !v.ssh.is_open()).count();
        if down == 0 {
            break;
        }
        if Instant::now() > end {
            println!("WARNING: {down} VMs not running again after 2 min");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_start;
    counter.abort();
    let requests = requests.load(std::sync::atomic::Ordering::Relaxed)
        + yc.server().request_count()
        - requests_start;
    reopen.abort();

    println!("--- results ({wall:.0} s measured) ---");
    let (_, p99_stop) = summary(
        "running VM stops -> critical alert received",
        stop_results.lock().await.clone(),
    );
    summary(
        "running VM stops -> start accepted by the API",
        start_results.lock().await.clone(),
    );
    let (_, p99_crash) = summary(
        "fast-poll VM crashes -> critical alert received",
        crash_results.lock().await.clone(),
    );
    println!(
        "missed alerts: {}",
        missed.load(std::sync::atomic::Ordering::Relaxed)
    );
    println!("API requests: {requests} ({:.1}/s)", requests as f64 / wall);
    let messages = tg.messages();
    // Lines, not messages: a digest names many VMs, one line each.
    let count = |needle: &str| {
        messages
            .iter()
            .flat_map(|m| m.plain_text.lines())
            .filter(|l| l.contains(needle))
            .count()
    };
    println!(
        "Telegram messages: {} (STOPPED {}, unreachable {}, CRASHED {}, recovered {}, could not start {}, stuck {}, API unavailable {})",
        messages.len(),
        count("is STOPPED"),
        count("unreachable (API unavailable"),
        count("is CRASHED"),
        count("recovered after"),
        count("Could not start"),
        count("stuck in"),
        count("Cloud API unavailable"),
    );
    println!(
        "Telegram 429s (limits exceeded): {}; digests: {}",
        tg.rate_limited(),
        messages
            .iter()
            .filter(|m| m.plain_text.lines().count() > 2)
            .count()
    );
    println!(
        "CPU: {cpu:.1} s over {wall:.0} s = {:.1} % of one core (fakes included)",
        100.0 * cpu / wall
    );
    println!(
        "RSS: peak {} kB (VmHWM, fakes and {} listeners included), before the watchdog started {} kB",
        status_field("VmHWM:").unwrap_or(0),
        args.vms,
        rss_before
    );
    println!(
        "live tasks {} for {} VMs",
        engine.live_tasks(),
        engine.vms_monitored()
    );
    let report = watchdog.stop(Duration::from_secs(10)).await;
    println!(
        "stopped in {:.2} s (tasks stopped: {}; alerts at stop: sent {}, spooled {}, dropped {})",
        report.elapsed.as_secs_f64(),
        report.tasks_stopped,
        report.alerts_sent,
        report.alerts_spooled,
        report.alerts_dropped
    );
    println!(
        "targets: p99 stop {} (<= 10 s), p99 fast-poll {} (<= 6 s)",
        if p99_stop <= Duration::from_secs(10) {
            "met"
        } else {
            "MISSED"
        },
        if p99_crash <= Duration::from_secs(6) {
            "met"
        } else {
            "MISSED"
        },
    );
    Ok(())
}
