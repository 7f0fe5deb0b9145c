//! Load program for `keel-notify` in an alert storm: does a notifier stay
//! fast when the chat is the bottleneck?
//!
//! It starts keel-testkit's Telegram fake on a loopback port with
//! Telegram's real limits switched on (1 message/s per chat, 20/min per
//! group; a message over them is refused with 429 and `retry_after`), points
//! a real `TelegramSink` (default rate limits, digests on) at it, and raises
//! critical VM alerts the way vm-watchdog does (one per incident, subject =
//! the VM, `observed_at` = when it was raised), over `--vms` VMs:
//!
//! * `--scenario burst`: `--events` alerts spread evenly over `--burst-ms`
//!   (a zone failure: 100 VMs stop within one second);
//! * `--scenario steady`: `--rate` alerts per second for `--seconds`.
//!
//! Then it shuts the notifier down (10 s budget) and reads what the fake
//! received: every alert line carries `event: N`, so each event's
//! observed → accepted time is the fake's receive time minus the raise
//! time. It prints p50, p99 and max of that, the messages the chat got
//! (single and digest), the events they carried, the fake's 429s, and
//! what shutdown spooled or dropped.
//!
//! ```text
//! cargo run --release -p keel-examples --example notify_load -- --scenario burst --events 100
//! cargo run --release -p keel-examples --example notify_load -- --scenario steady --rate 2 --seconds 600
//! ```
#![allow(clippy::disallowed_types, clippy::print_stdout)]

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Parser, ValueEnum};
use keel_notify::{Notification, Notifier, TelegramSink};
use keel_testkit::fakes::telegram::{FakeTelegram, TelegramLimits};
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// `--events` alerts within `--burst-ms`.
    Burst,
    /// `--rate` alerts per second for `--seconds`.
    Steady,
}

#[derive(Parser, Debug)]
#[command(about = "Drive keel-notify against the Telegram fake with Telegram's limits on")]
struct Args {
    /// Which storm to raise.
    #[arg(long, value_enum, default_value_t = Scenario::Burst)]
    scenario: Scenario,
    /// Burst: how many alerts.
    #[arg(long, default_value_t = 100)]
    events: u64,
    /// Burst: over how many milliseconds.
    #[arg(long, default_value_t = 1_000)]
    burst_ms: u64,
    /// Steady: alerts per second.
    #[arg(long, default_value_t = 2.0)]
    rate: f64,
    /// Steady: for how long.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// How many distinct VMs the alerts are about.
    #[arg(long, default_value_t = 1_000)]
    vms: u64,
    /// Switch the fake's Telegram limits off (to see the notifier alone).
    #[arg(long)]
    no_limits: bool,
    /// Send one message per alert (digests off), as before issue 14.
    #[arg(long)]
    no_digests: bool,
}

const CHAT: i64 = -1_001_234_567_890;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Every `event: N` in a message's text.
fn events_in(text: &str) -> Vec<u64> {
    text.match_indices("event: ")
        .filter_map(|(at, m)| {
            let digits: String = text[at + m.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
        .collect()
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let tg = FakeTelegram::start().await;
    if !args.no_limits {
        tg.set_limits(Some(TelegramLimits::REAL));
    }
    let sink = TelegramSink::builder(tg.token(), CHAT)
        .base_url(tg.base_url())
        .digests(!args.no_digests)
        .build()?;
    let state = tempfile::tempdir()?;
    let notifier = Notifier::builder()
        .sink(sink)
        .state_dir(state.path())
        .build()?;

    let (count, spacing) = match args.scenario {
        Scenario::Burst => (
            args.events,
            Duration::from_millis(args.burst_ms) / u32::try_from(args.events.max(1))?,
        ),
        Scenario::Steady => {
            if args.rate <= 0.0 {
                bail!("--rate must be above zero");
            }
            (
                (args.rate * args.seconds as f64).round() as u64,
                Duration::from_secs_f64(1.0 / args.rate),
            )
        }
    };
    println!(
        "scenario {:?}: {count} critical alerts, one every {spacing:?}, over {} VMs; Telegram limits {}; digests {}",
        args.scenario,
        args.vms,
        if args.no_limits {
            "off"
        } else {
            "on (1/s per chat, 20/min per group)"
        },
        if args.no_digests { "off" } else { "on" },
    );
    let origin = Instant::now();
    let mut raised: HashMap<u64, Instant> = HashMap::with_capacity(count as usize);
    for i in 0..count {
        tokio::time::sleep_until(origin + spacing * u32::try_from(i)?).await;
        let vm = format!("vm-{:04}", i % args.vms.max(1));
        let now = Instant::now();
        raised.insert(i, now);
        notifier.notify(
            Notification::critical(format!("{vm}:STOPPED:{i}"), format!("VM {vm} is STOPPED"))
                .subject(format!("{vm}:{i}"))
                .body("Starting it now.")
                .field("vm", vm)
                .field("event", i.to_string())
                .observed_at(now),
        )?;
    }
    let raised_for = origin.elapsed();
    let report = notifier.shutdown(Duration::from_secs(10)).await;
    let stats = notifier.stats();

    let messages = tg.messages();
    let mut latencies = Vec::new();
    let mut carried = 0usize;
    let mut digests = 0usize;
    for m in &messages {
        let events = events_in(&m.plain_text);
        if events.len() > 1 {
            digests += 1;
        }
        carried += events.len();
        for e in events {
            if let Some(at) = raised.get(&e) {
                latencies.push(m.received_at.saturating_duration_since(*at));
            }
        }
    }
    latencies.sort();
    println!(
        "raised in {:.1} s; shutdown: sent {} during it, spooled {}, dropped {}, timed out {}",
        raised_for.as_secs_f64(),
        report.sent,
        report.spooled,
        report.dropped,
        report.timed_out
    );
    println!(
        "chat received {} messages ({} digests, {} single) carrying {carried} of {count} events; fake answered 429 {} times; notifier retried {}",
        messages.len(),
        digests,
        messages.len() - digests,
        tg.rate_limited(),
        stats.retried,
    );
    println!(
        "observed → accepted: p50 {:.2} s, p99 {:.2} s, max {:.2} s",
        percentile(&latencies, 0.50).as_secs_f64(),
        percentile(&latencies, 0.99).as_secs_f64(),
        latencies.last().copied().unwrap_or_default().as_secs_f64(),
    );
    Ok(())
}
