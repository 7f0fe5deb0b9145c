//! The figures of goman-controller, each against a baseline measured in the
//! same run, all against a real moto behind keel-testkit's `AwsFront` (which
//! runs SSM commands, counts every AWS call by service and operation):
//!
//! * **a. SSM fan-out wall time**, parallel (`ssm_concurrency` 5) against
//!   sequential (1), for one command on 3 instances that takes
//!   `--command-latency` (2 s by default: the ratio is the figure, not the
//!   seconds; a real K3s install takes minutes).
//! * **b. EC2 calls per batch operation**: `StopInstances` calls counted at
//!   the front for N = 1, 10, 11, 25, 100 instances, against ceil(N/10).
//! * **c. Reconcile pass latency for an unchanged Running cluster** (lock,
//!   read, EC2 check, unlock: `--passes` of them), p50/p99/mean and the AWS
//!   calls per pass, against the same number of bare `DescribeInstances`
//!   calls through `Cloud::find_tagged` (one EC2 read through the same
//!   pipeline).
//! * **d. Peak RSS of the daemon** (`VmHWM`, `VmRSS` from `/proc`) with
//!   `--clusters` developer clusters reconciled to Running and kept 30 s,
//!   against the same binary with no cluster for 10 s; the daemon must exit
//!   0 on SIGTERM.
//!
//! Needs `moto_server` (`pip install 'moto[server]'`, see
//! `keel_testkit::Moto`) and the release binary beside this example:
//!
//! ```text
//! cargo build --release -p goman-controller
//! cargo run --release -p keel-examples --example goman_figures
//! ```
//!
//! It prints a markdown table at the end. moto answers in about a
//! millisecond, so (c) measures the controller's own overhead more than
//! AWS's latency, which is why it is given as a ratio to one EC2 call.

#![allow(clippy::disallowed_types, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use goman_controller::app;
use goman_controller::aws::{Aws, AwsSettings};
use goman_controller::cli;
use goman_controller::cloud::{BatchOp, Cloud, CloudSettings, Launch, tags};
use goman_controller::config::Config;
use goman_controller::metrics::Metrics;
use goman_controller::model::Phase;
use goman_controller::reconcile::Reconciler;
use goman_controller::store::StateStore;
use keel_testkit::Moto;
use keel_testkit::fakes::aws::{AwsFront, CommandResult};
use tokio::time::Instant;

const BUCKET: &str = "goman-figures";
const TABLE: &str = "goman-resource-locks";
const AMI: &str = "ami-03cf127a";

#[derive(Debug, Parser)]
struct Args {
    /// How long one SSM command takes in (a).
    #[arg(long, default_value = "2s", value_parser = goman_controller::config::parse_duration)]
    command_latency: Duration,
    /// Reconcile passes timed in (c).
    #[arg(long, default_value_t = 200)]
    passes: usize,
    /// Clusters the daemon reconciles in (d).
    #[arg(long, default_value_t = 100)]
    clusters: usize,
    /// How long the daemon keeps running after every cluster is Running.
    #[arg(long, default_value = "30s", value_parser = goman_controller::config::parse_duration)]
    settle: Duration,
    /// Where `goman-controller` is (default: beside this example's
    /// directory, `target/release`).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Skip (d) (no release binary needed).
    #[arg(long)]
    skip_daemon: bool,
    /// Run only these figures (`--only d`, `--only a,b`).
    #[arg(long, value_delimiter = ',')]
    only: Vec<char>,
    /// The daemon's `--requeue-scale` in (d).
    #[arg(long, default_value_t = 0.05)]
    requeue_scale: f64,
    /// How long (d) waits for every cluster to be Running.
    #[arg(long, default_value = "5m", value_parser = goman_controller::config::parse_duration)]
    ready_timeout: Duration,
    /// `RUST_LOG` of the daemon in (d); its log is shown if (d) fails.
    #[arg(long, default_value = "warn")]
    daemon_log: String,
}

impl Args {
    fn runs(&self, figure: char) -> bool {
        (self.only.is_empty() || self.only.contains(&figure))
            && !(figure == 'd' && self.skip_daemon)
    }
}

fn manifest(name: &str) -> String {
    format!(
        "apiVersion: goman.io/v1\nkind: Cluster\nmetadata:\n  name: {name}\nspec:\n  region: us-east-1\n  instanceType: t3.small\n  masterCount: 1\n  mode: developer\n  k3sVersion: v1.31.4+k3s1\n"
    )
}

/// Installs succeed, every node reports Ready.
fn healthy_nodes(front: &AwsFront) {
    front.set_command_handler(|inv| {
        if inv.commands.iter().any(|c| c.contains("get node")) {
            CommandResult::success("True")
        } else {
            CommandResult::success("")
        }
    });
}

/// The arguments the in-process reconciler and the daemon share (the test
/// suite's timings, slower polls).
fn shared_args(front: &AwsFront, dir: &Path, profile: &str) -> Vec<String> {
    [
        "--profile",
        profile,
        "--state-bucket",
        BUCKET,
        "--lock-table",
        TABLE,
        "--endpoint",
        &front.url(),
        "--region",
        "us-east-1",
        "--state-dir",
        dir.to_str().expect("UTF-8 temporary directory"),
        "--ami",
        AMI,
        "--poll-interval",
        "100ms",
        "--retry-base-delay",
        "10ms",
        "--throttle-base-delay",
        "20ms",
        "--lock-ttl",
        "10s",
        "--node-startup-timeout",
        "5m",
        "--reconcile-timeout",
        "60s",
        "--aws-attempt-timeout",
        "10s",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

fn config(args: &[String]) -> anyhow::Result<Config> {
    let mut all = vec!["goman-controller".to_owned()];
    all.extend_from_slice(args);
    all.push("run".to_owned());
    Ok(Config::try_parse_from(all)?)
}

fn aws_settings(config: &Config) -> AwsSettings {
    let mut s = app::aws_settings(config);
    s.static_credentials = Some(("test".into(), "test".into()));
    s
}

fn launch(label: &str) -> Launch {
    Launch {
        image_id: AMI.to_owned(),
        instance_type: "t3.small".to_owned(),
        instance_profile: None,
        subnet_id: None,
        tags: BTreeMap::from([
            ("goman:figures".to_owned(), label.to_owned()),
            (tags::PROFILE.to_owned(), "figures".to_owned()),
        ]),
        user_data: "#!/bin/sh\ntrue\n".to_owned(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Stats {
    p50: Duration,
    p99: Duration,
    mean: Duration,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    Stats {
        p50: percentile(&samples, 0.5),
        p99: percentile(&samples, 0.99),
        mean,
    }
}

/// (a): one "install" on 3 instances, `concurrency` at once.
async fn fan_out(aws: &Aws, ids: &[String], concurrency: usize) -> anyhow::Result<Duration> {
    let cloud = Cloud::new(
        aws.clone(),
        CloudSettings {
            ssm_concurrency: concurrency,
            poll_interval: Duration::from_millis(100),
            ..CloudSettings::default()
        },
    );
    let scripts = ids
        .iter()
        .map(|id| (id.clone(), vec!["echo install".to_owned()]))
        .collect();
    let t = Instant::now();
    let results = cloud.fan_out("install", scripts).await;
    let wall = t.elapsed();
    for (id, r) in &results {
        match r {
            Ok(out) if out.status == "Success" => {}
            other => bail!("{id}: {other:?}"),
        }
    }
    Ok(wall)
}

/// (b): a fresh set of `n` instances (one RunInstances), then one batch
/// stop; the StopInstances calls the front received.
async fn batch_calls(front: &AwsFront, cloud: &Cloud, n: usize) -> anyhow::Result<(u64, usize)> {
    let out = cloud
        .aws()
        .ec2
        .run_instances()
        .image_id(AMI)
        .instance_type("t3.small".into())
        .min_count(n as i32)
        .max_count(n as i32)
        .send()
        .await?;
    let ids: Vec<String> = out
        .instances()
        .iter()
        .filter_map(|i| i.instance_id().map(str::to_owned))
        .collect();
    if ids.len() != n {
        bail!("moto created {} instances, not {n}", ids.len());
    }
    let before = front.calls("ec2", Some("StopInstances"));
    let results = cloud.batch(BatchOp::Stop, &ids).await;
    let calls = front.calls("ec2", Some("StopInstances")) - before;
    let failed = results.iter().filter(|r| r.is_err()).count();
    Ok((calls, failed))
}

async fn reconcile_until(r: &Reconciler, name: &str, phase: Phase) -> anyhow::Result<()> {
    let mut last = String::new();
    for _ in 0..200 {
        match r.reconcile(name).await {
            Ok(o) if o.phase == Some(phase) => return Ok(()),
            Ok(o) => last = format!("{o:?}"),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("{name} did not reach {phase}; last: {last}")
}

fn counts(front: &AwsFront) -> BTreeMap<String, u64> {
    front
        .call_counts()
        .into_iter()
        .map(|(s, o, n)| (format!("{s}:{o}"), n))
        .collect()
}

fn diff(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0);
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

fn status_kb(pid: u32, field: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{field} in /proc/{pid}/status"))
}

struct Daemon {
    child: tokio::process::Child,
    pid: u32,
    log: PathBuf,
    admin: String,
}

impl Daemon {
    fn start(
        bin: &Path,
        args: &[String],
        log: PathBuf,
        rust_log: &str,
        requeue_scale: f64,
    ) -> anyhow::Result<Daemon> {
        let file = std::fs::File::create(&log)?;
        // A free port, so `/clusters` can be read if the run fails.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let admin = format!("127.0.0.1:{port}");
        let child = tokio::process::Command::new(bin)
            .args(args)
            .args([
                "--requeue-scale",
                &requeue_scale.to_string(),
                "--watch-interval",
                "1s",
                "--admin-addr",
                &admin,
                "run",
            ])
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().context("daemon pid")?;
        Ok(Daemon {
            child,
            pid,
            log,
            admin,
        })
    }

    /// `why`, the daemon's `/clusters` and the tail of its log.
    async fn fail(&self, why: String) -> anyhow::Error {
        let clusters = match reqwest::get(format!("http://{}/clusters", self.admin)).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => e.to_string(),
        };
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        anyhow::anyhow!(
            "{why}\n/clusters: {}\ndaemon log tail:\n{}",
            clusters.chars().take(4000).collect::<String>(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }

    /// SIGTERM, then the exit code (bounded by the 30 s drain).
    async fn stop(mut self) -> anyhow::Result<i32> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Err(self
                .fail(format!("the daemon had exited already: {status}"))
                .await);
        }
        tokio::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await?;
        let status = tokio::time::timeout(Duration::from_secs(40), self.child.wait())
            .await
            .context("no exit 40 s after SIGTERM")??;
        Ok(status.code().unwrap_or(-1))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = match &args.bin_dir {
        Some(d) => d.join("goman-controller"),
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .context("no target directory")?
            .join("goman-controller"),
    };
    if args.runs('d') && !bin.exists() {
        bail!(
            "{} missing: cargo build --release -p goman-controller (or --skip-daemon)",
            bin.display()
        );
    }
    let moto = Moto::start().await;
    let front = AwsFront::start(moto.url(), 7).await?;
    healthy_nodes(&front);
    let dir = tempfile::tempdir()?;
    let base = shared_args(&front, dir.path(), "default");
    let cfg = config(&base)?;
    let (aws, _) = app::connect_with(&aws_settings(&cfg), Metrics::unregistered()).await?;
    app::init(&aws, BUCKET, TABLE).await?;
    let mut table = Vec::<[String; 4]>::new();

    let cloud = Cloud::new(aws.clone(), CloudSettings::default());

    // (a) SSM fan-out, parallel against sequential.
    if args.runs('a') {
        let mut ids = Vec::new();
        for i in 0..3 {
            let created = cloud
                .create_instance(&format!("figures-fanout-{i}"), &launch("fanout"))
                .await?;
            ids.push(created.id);
        }
        front.set_command_latency(args.command_latency);
        front.clear_command_handler();
        let parallel = fan_out(&aws, &ids, 5).await?;
        let sequential = fan_out(&aws, &ids, 1).await?;
        healthy_nodes(&front);
        front.set_command_latency(Duration::ZERO);
        println!(
            "(a) SSM fan-out, 3 nodes, {:?} per command, polled every 100 ms: parallel (5) {:.2} s, sequential (1) {:.2} s, {:.2}x",
            args.command_latency,
            parallel.as_secs_f64(),
            sequential.as_secs_f64(),
            sequential.as_secs_f64() / parallel.as_secs_f64()
        );
        table.push([
            "SSM fan-out wall, 3 nodes".into(),
            format!("{:.2} s (concurrency 5)", parallel.as_secs_f64()),
            format!("{:.2} s (concurrency 1)", sequential.as_secs_f64()),
            format!(
                "{:.2}x faster; command latency {:?} (seed: 15-20 min → 8-10 min)",
                sequential.as_secs_f64() / parallel.as_secs_f64(),
                args.command_latency
            ),
        ]);
    }

    // (b) StopInstances calls per batch.
    for n in [1usize, 10, 11, 25, 100]
        .into_iter()
        .filter(|_| args.runs('b'))
    {
        let (calls, failed) = batch_calls(&front, &cloud, n).await?;
        let expected = n.div_ceil(10);
        println!(
            "(b) stop {n:>3} instances: {calls} StopInstances call(s), ceil(N/10) = {expected}, {failed} failed"
        );
        table.push([
            format!("StopInstances calls, N = {n}"),
            calls.to_string(),
            format!("{expected} (ceil(N/10))"),
            if failed == 0 && calls == expected as u64 {
                "as designed".into()
            } else {
                format!("{failed} instance(s) failed")
            },
        ]);
    }

    // (c) Reconcile pass latency, unchanged Running cluster.
    if args.runs('c') {
        let mut c_args = base.clone();
        c_args.extend([
            "--journal".to_owned(),
            dir.path().join("journal-c").display().to_string(),
        ]);
        let c_cfg = config(&c_args)?;
        let parts = app::build_with(&c_cfg, &aws_settings(&c_cfg), Metrics::unregistered()).await?;
        let r = &parts.reconciler;
        let doc = cli::apply(r.store(), "default", &manifest("bench")).await?;
        reconcile_until(r, "bench", Phase::Running).await?;
        let mut passes = Vec::with_capacity(args.passes);
        let before = counts(&front);
        for _ in 0..args.passes {
            let t = Instant::now();
            let o = r.reconcile("bench").await?;
            passes.push(t.elapsed());
            if o.phase != Some(Phase::Running) || o.result != "ok" {
                bail!("pass left the cluster {o:?}");
            }
        }
        let per_pass = diff(&before, &counts(&front));
        let mut bare = Vec::with_capacity(args.passes);
        for _ in 0..args.passes {
            let t = Instant::now();
            let found = r
                .cloud()
                .find_tagged(tags::CLUSTER_UID, &doc.metadata.uid)
                .await?;
            bare.push(t.elapsed());
            if found.len() != 1 {
                bail!("find_tagged found {found:?}");
            }
        }
        let pass = stats(passes);
        let ec2 = stats(bare);
        let calls: Vec<String> = per_pass
            .iter()
            .map(|(k, v)| format!("{k} {}", *v as f64 / args.passes as f64))
            .collect();
        let total: u64 = per_pass.values().sum();
        println!(
            "(c) {} passes over an unchanged Running cluster: p50 {:.2} ms, p99 {:.2} ms, mean {:.2} ms; AWS calls per pass {:.1}: {}",
            args.passes,
            ms(pass.p50),
            ms(pass.p99),
            ms(pass.mean),
            total as f64 / args.passes as f64,
            calls.join(", ")
        );
        println!(
            "    {} bare DescribeInstances (find_tagged): p50 {:.2} ms, p99 {:.2} ms, mean {:.2} ms; pass/call p50 {:.1}x",
            args.passes,
            ms(ec2.p50),
            ms(ec2.p99),
            ms(ec2.mean),
            ms(pass.p50) / ms(ec2.p50)
        );
        table.push([
            format!(
                "Reconcile pass, unchanged Running cluster ({} passes)",
                args.passes
            ),
            format!(
                "p50 {:.2} ms, p99 {:.2} ms, mean {:.2} ms",
                ms(pass.p50),
                ms(pass.p99),
                ms(pass.mean)
            ),
            format!(
                "p50 {:.2} ms, p99 {:.2} ms, mean {:.2} ms (one DescribeInstances)",
                ms(ec2.p50),
                ms(ec2.p99),
                ms(ec2.mean)
            ),
            format!(
                "{:.1}x one EC2 call (p50); {:.1} AWS calls per pass: {}",
                ms(pass.p50) / ms(ec2.p50),
                total as f64 / args.passes as f64,
                calls.join(", ")
            ),
        ]);
        drop(parts);
    }

    // (d) Daemon peak RSS: no cluster, then `--clusters`.
    if args.runs('d') {
        let empty_args = shared_args(&front, &dir.path().join("d0"), "rss-empty");
        std::fs::create_dir_all(dir.path().join("d0"))?;
        let idle = Daemon::start(
            &bin,
            &empty_args,
            dir.path().join("d0.log"),
            &args.daemon_log,
            args.requeue_scale,
        )?;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let idle_hwm = status_kb(idle.pid, "VmHWM:")?;
        let idle_rss = status_kb(idle.pid, "VmRSS:")?;
        let idle_exit = idle.stop().await?;
        println!(
            "(d) daemon with 0 clusters for 10 s: VmHWM {idle_hwm} KiB, VmRSS {idle_rss} KiB, exit {idle_exit} on SIGTERM"
        );

        std::fs::create_dir_all(dir.path().join("d1"))?;
        let d_args = shared_args(&front, &dir.path().join("d1"), "rss");
        let d_cfg = config(&d_args)?;
        let store: StateStore = app::store(&d_cfg, &aws).await?;
        let names: Vec<String> = (0..args.clusters).map(|i| format!("c{i:03}")).collect();
        for name in &names {
            cli::apply(&store, "rss", &manifest(name)).await?;
        }
        let t = Instant::now();
        let daemon = Daemon::start(
            &bin,
            &d_args,
            dir.path().join("d1.log"),
            &args.daemon_log,
            args.requeue_scale,
        )?;
        let mut waiting: Vec<String> = names.clone();
        while !waiting.is_empty() {
            if t.elapsed() > args.ready_timeout {
                return Err(daemon
                    .fail(format!(
                        "{} clusters not Running after {:?}: {:?}",
                        waiting.len(),
                        args.ready_timeout,
                        &waiting[..waiting.len().min(5)]
                    ))
                    .await);
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            let mut still = Vec::new();
            for name in waiting {
                let phase = store.get(&name).await?.map(|s| s.doc.status.phase);
                if phase == Some(Phase::Failed) {
                    return Err(daemon.fail(format!("{name} Failed")).await);
                }
                if phase != Some(Phase::Running) {
                    still.push(name);
                }
            }
            waiting = still;
        }
        let to_running = t.elapsed();
        println!(
            "    {} clusters Running {:.1} s after the daemon started; running {:?} more",
            args.clusters,
            to_running.as_secs_f64(),
            args.settle
        );
        tokio::time::sleep(args.settle).await;
        let hwm = status_kb(daemon.pid, "VmHWM:")?;
        let rss = status_kb(daemon.pid, "VmRSS:")?;
        let exit = daemon.stop().await?;
        println!(
            "(d) daemon with {} clusters: VmHWM {hwm} KiB, VmRSS {rss} KiB, exit {exit} on SIGTERM",
            args.clusters
        );
        if exit != 0 || idle_exit != 0 {
            bail!("the daemon exited {idle_exit} / {exit} on SIGTERM, not 0");
        }
        table.push([
            format!("Daemon peak RSS, {} clusters Running", args.clusters),
            format!(
                "VmHWM {:.1} MiB (VmRSS {:.1} MiB after {:?} more)",
                hwm as f64 / 1024.0,
                rss as f64 / 1024.0,
                args.settle
            ),
            format!(
                "VmHWM {:.1} MiB (0 clusters, 10 s)",
                idle_hwm as f64 / 1024.0
            ),
            format!(
                "+{:.1} MiB; all Running in {:.0} s (4 workers, --requeue-scale {}); exit 0 on SIGTERM",
                (hwm as f64 - idle_hwm as f64) / 1024.0,
                to_running.as_secs_f64(),
                args.requeue_scale
            ),
        ]);
    }

    println!();
    println!("| Figure | goman-controller | Baseline (same run) | Note |");
    println!("|---|---|---|---|");
    for [a, b, c, d] in &table {
        println!("| {a} | {b} | {c} | {d} |");
    }
    drop(moto);
    Ok(())
}
