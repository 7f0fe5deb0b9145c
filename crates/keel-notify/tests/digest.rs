//! Digests, the per-sink breakers and shutdown under a full rate limit,
//! deterministically under paused tokio time: ordering inside a digest,
//! splitting by size, merging by subject, the storm targets of issue 14
//! (100 critical alerts within a second; a steady 2/s for 10 minutes)
//! against a sink with Telegram's limits and size, breaker transitions per
//! sink, and what shutdown sends and spools when the rate limit is spent.

mod support;

use std::time::Duration;

use keel_notify::{
    BreakerConfig, BreakerRegistry, BreakerState as State, Notification, Notifier, NotifierBuilder,
    Priority, RateLimit,
};
use keel_retry::{Backoff, Jitter, RetryPolicy};
use support::{MemorySink, S, secs};
use tokio::time::Instant;

fn notifier() -> NotifierBuilder {
    Notifier::builder()
        .retry(
            RetryPolicy::builder()
                .max_retries(0)
                .backoff(Backoff::constant(S))
                .jitter(Jitter::None)
                .build()
                .unwrap(),
        )
        .debounce(Priority::Warning, Duration::ZERO)
        .debounce(Priority::Info, Duration::ZERO)
        .dedup_window(Duration::ZERO)
}

/// 1/s per chat and 20/min per group, 4,096 characters: Telegram's shape.
fn telegram_like(name: &str) -> MemorySink {
    MemorySink::new(name)
        .with_limits(vec![
            RateLimit::per_second("chat", 1),
            RateLimit::per_minute("chat", 20),
        ])
        .with_digests(4_096)
}

fn p(q: &[Duration], pct: f64) -> Duration {
    let mut v = q.to_vec();
    v.sort();
    let i = ((v.len() as f64 * pct).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

#[tokio::test(start_paused = true)]
async fn one_waiting_message_goes_alone_then_waiting_ones_as_one_digest_critical_first() {
    let sink = MemorySink::new("mem")
        .with_limits(vec![RateLimit::new("chat", 1, secs(10))])
        .with_digests(4_096);
    let n = notifier().sink(sink.clone()).build().unwrap();
    n.notify(Notification::critical("first", "first")).unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    n.notify(Notification::info("i1", "info one")).unwrap();
    n.notify(Notification::warning("w1", "warning one"))
        .unwrap();
    n.notify(Notification::critical("c1", "critical one"))
        .unwrap();
    n.notify(Notification::info("i2", "info two")).unwrap();
    n.notify(Notification::critical("c2", "critical two"))
        .unwrap();
    assert!(n.flush(secs(30)).await);
    let got = sink.received();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].key, "first");
    assert!(got[0].entries.is_empty(), "alone, as a plain message");
    assert_eq!(got[1].at, secs(10), "the next slot");
    let keys: Vec<&str> = got[1].entries.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["c1", "c2", "w1", "i1", "i2"]);
    assert_eq!(got[1].count, 5);
    assert!(
        got[1]
            .text
            .starts_with("5 alerts: 2 critical, 1 warning, 2 info\n[critical] critical one\n")
    );
    let stats = n.stats();
    assert_eq!((stats.sent, stats.messages, stats.digests), (6, 2, 1));
}

#[tokio::test(start_paused = true)]
async fn digests_split_by_size_without_losing_or_cutting_anything() {
    let sink = MemorySink::new("mem")
        .with_limits(vec![RateLimit::per_second("chat", 1)])
        .with_digests(300);
    let n = notifier().sink(sink.clone()).build().unwrap();
    n.notify(Notification::info("opener", "opener")).unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    for i in 0..40 {
        n.notify(Notification::critical(
            format!("vm-{i:02}"),
            format!("VM vm-{i:02} is STOPPED"),
        ))
        .unwrap();
    }
    assert!(n.flush(secs(60)).await);
    let got = sink.received();
    let digests: Vec<_> = got.iter().filter(|r| !r.entries.is_empty()).collect();
    assert!(
        digests.len() >= 3,
        "40 lines of ~30 characters need several"
    );
    for d in &digests {
        assert!(d.text.chars().count() <= 300, "{}", d.text.len());
        assert!(d.text.starts_with(&format!("{} alerts", d.entries.len())));
    }
    let keys: Vec<String> = digests
        .iter()
        .flat_map(|d| d.entries.iter().map(|(k, _)| k.clone()))
        .collect();
    let expected: Vec<String> = (0..40).map(|i| format!("vm-{i:02}")).collect();
    assert_eq!(keys, expected, "every event once, in order, none cut");
    // One message per second after the opener.
    for (i, d) in digests.iter().enumerate() {
        assert_eq!(d.at, secs(i as u64 + 1));
    }
}

#[tokio::test(start_paused = true)]
async fn a_subject_appears_once_with_its_latest_state_and_count_at_its_first_place() {
    let sink = MemorySink::new("mem")
        .with_limits(vec![RateLimit::new("chat", 1, secs(10))])
        .with_digests(4_096);
    let n = notifier().sink(sink.clone()).build().unwrap();
    n.notify(Notification::info("opener", "opener")).unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    let down = |vm: &str| {
        Notification::critical(format!("{vm}:STOPPED"), format!("VM {vm} is STOPPED")).subject(vm)
    };
    let up = |vm: &str| {
        Notification::info(format!("{vm}:recovered"), format!("VM {vm} recovered")).subject(vm)
    };
    n.notify(down("vm-7")).unwrap();
    n.notify(down("vm-8")).unwrap();
    n.notify(up("vm-7")).unwrap();
    n.notify(Notification::warning("api:down", "API slow"))
        .unwrap();
    assert!(n.flush(secs(30)).await);
    let got = sink.received();
    assert_eq!(got.len(), 2);
    assert_eq!(
        got[1].entries,
        [
            (
                "vm-7:recovered".to_owned(),
                "VM vm-7 recovered (×2)".to_owned()
            ),
            ("vm-8:STOPPED".to_owned(), "VM vm-8 is STOPPED".to_owned()),
            ("api:down".to_owned(), "API slow".to_owned()),
        ]
    );
    assert_eq!(got[1].count, 4, "the digest says how many events it holds");
    assert_eq!(n.stats().sent, 5);
}

#[tokio::test(start_paused = true)]
async fn down_is_never_overtaken_by_its_recovered() {
    // The "down" is in flight (slow sink) when its "recovered" arrives: a
    // digesting sink has one send in flight, so "recovered" waits.
    let sink = MemorySink::new("mem").with_digests(4_096);
    sink.set_delay(secs(3));
    let n = notifier().workers(3).sink(sink.clone()).build().unwrap();
    n.notify(Notification::critical("vm-7:STOPPED", "down").subject("vm-7"))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    n.notify(Notification::info("vm-7:recovered", "up").subject("vm-7"))
        .unwrap();
    assert!(n.flush(secs(30)).await);
    assert_eq!(sink.keys(), ["vm-7:STOPPED", "vm-7:recovered"]);
    assert_eq!(sink.max_concurrent(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_hundred_critical_alerts_within_a_second_all_arrive_within_five_seconds() {
    let sink = telegram_like("telegram");
    let n = notifier().sink(sink.clone()).build().unwrap();
    let origin = Instant::now();
    for i in 0..100u64 {
        // Spread over one second, as a zone failure is noticed.
        tokio::time::sleep_until(origin + Duration::from_millis(i * 10)).await;
        n.notify(
            Notification::critical(
                format!("vm-{i:03}:STOPPED"),
                format!("VM vm-{i:03} is STOPPED"),
            )
            .subject(format!("vm-{i:03}"))
            .field("vm", format!("vm-{i:03}"))
            .field("status", "STOPPED")
            .observed_at(Instant::now()),
        )
        .unwrap();
    }
    assert!(n.flush(secs(60)).await);
    let got = sink.received();
    let events: usize = got.iter().map(|r| r.count as usize).sum();
    assert_eq!(events, 100);
    let mut latencies = Vec::new();
    for r in &got {
        for o in &r.observed {
            latencies.push(r.at - *o);
        }
    }
    assert_eq!(latencies.len(), 100);
    let worst = latencies.iter().max().copied().unwrap();
    assert!(worst <= secs(5), "worst observed→accepted {worst:?}");
    assert!(got.len() <= 5, "{} messages", got.len());
    assert!(got.iter().all(|r| r.text.chars().count() <= 4_096));
}

#[tokio::test(start_paused = true)]
async fn a_steady_two_per_second_for_ten_minutes_keeps_p99_under_five_seconds() {
    let sink = telegram_like("telegram");
    let n = notifier().sink(sink.clone()).build().unwrap();
    let origin = Instant::now();
    for i in 0..1_200u64 {
        tokio::time::sleep_until(origin + Duration::from_millis(i * 500)).await;
        let vm = format!("vm-{:03}", i % 1_000);
        n.notify(
            Notification::critical(format!("{vm}:STOPPED:{i}"), format!("VM {vm} is STOPPED"))
                .subject(format!("{vm}:{i}"))
                .field("vm", vm),
        )
        .unwrap();
    }
    let report = n.shutdown(secs(10)).await;
    assert_eq!((report.dropped, report.spooled), (0, 0));
    let got = sink.received();
    let mut latencies = Vec::new();
    for r in &got {
        for o in &r.observed {
            latencies.push(r.at - *o);
        }
    }
    assert_eq!(latencies.len(), 1_200, "nothing dropped");
    let p99 = p(&latencies, 0.99);
    assert!(p99 <= secs(5), "p99 {p99:?}");
    // 20 per minute at most: 10 minutes take about 200 messages.
    assert!(got.len() <= 215, "{} messages", got.len());
}

#[tokio::test(start_paused = true)]
async fn each_sink_has_its_own_breaker_in_the_registry() {
    let registry = BreakerRegistry::default();
    let bad = MemorySink::new("bad");
    let good = MemorySink::new("good");
    bad.set_down(true);
    let n = notifier()
        .sink(bad.clone())
        .sink(good.clone())
        .sink_breaker(
            BreakerConfig::builder()
                .no_failure_rate()
                .consecutive_failures(2)
                .minimum_calls(2)
                .open_duration(secs(10))
                .half_open_max_probes(1)
                .half_open_successes(1)
                .build()
                .unwrap(),
        )
        .breakers(registry.clone())
        .build()
        .unwrap();
    assert_eq!(registry.names(), ["notify:bad", "notify:good"]);
    let breaker = n.breaker("bad").unwrap();
    n.notify(Notification::critical("a", "a")).unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(good.keys(), ["a"], "the good sink is not held back");
    // The first failed round pauses nothing (one failure of two): the
    // requeued message is tried again at once, and that second failed
    // round opens the breaker.
    assert_eq!(breaker.state(), State::Open);
    let attempts = bad.attempts().len();
    assert_eq!(attempts, 2);
    tokio::time::sleep(secs(9)).await;
    assert_eq!(bad.attempts().len(), attempts, "open: no call");
    // Half-open after 10 s: one probe, which fails and reopens it.
    tokio::time::sleep(secs(2)).await;
    assert_eq!(bad.attempts().len(), attempts + 1);
    assert_eq!(breaker.state(), State::Open);
    // Forced open by an admin: nothing goes even when the sink is back.
    bad.set_down(false);
    breaker.force_open();
    tokio::time::sleep(secs(60)).await;
    assert_eq!(bad.keys(), Vec::<String>::new());
    assert_eq!(registry.snapshot()["notify:bad"].state, State::ForcedOpen);
    // Reset: the waiting message goes within the poll interval.
    breaker.reset();
    assert!(n.flush(secs(5)).await);
    assert_eq!(bad.keys(), ["a"]);
    assert_eq!(n.breaker("good").unwrap().state(), State::Closed);
    assert_eq!(n.stats().dropped, 0);
}

#[tokio::test(start_paused = true)]
async fn shutdown_under_a_spent_rate_limit_sends_what_fits_and_spools_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let sink = MemorySink::new("mem")
        .with_limits(vec![RateLimit::per_minute("chat", 2)])
        .with_digests(120);
    let n = notifier()
        .sink(sink.clone())
        .state_dir(dir.path())
        .build()
        .unwrap();
    n.notify(Notification::critical("first", "first")).unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    for i in 0..30 {
        n.notify(Notification::critical(
            format!("k{i:02}"),
            format!("VM {i:02} down"),
        ))
        .unwrap();
    }
    let report = n.shutdown(secs(10)).await;
    // One slot was left: one digest of what fits in 120 characters went
    // out; the rest is in the default spool under the state directory.
    let got = sink.received();
    assert_eq!(got.len(), 2);
    let sent_in_digest = got[1].entries.len();
    assert!(sent_in_digest >= 3);
    assert_eq!(
        report.sent as usize, sent_in_digest,
        "sent during the shutdown"
    );
    assert_eq!(report.dropped, 0);
    assert_eq!(report.spooled, 30 - sent_in_digest);
    let spool = dir.path().join("notify.spool");
    assert!(spool.exists());

    // After the restart the spooled messages go out, as digests.
    let sink2 = MemorySink::new("mem").with_digests(4_096);
    let n2 = notifier()
        .sink(sink2.clone())
        .state_dir(dir.path())
        .build()
        .unwrap();
    assert!(n2.flush(secs(5)).await);
    let keys: Vec<String> = sink2
        .received()
        .iter()
        .flat_map(|r| {
            if r.entries.is_empty() {
                vec![r.key.clone()]
            } else {
                r.entries.iter().map(|(k, _)| k.clone()).collect()
            }
        })
        .collect();
    let expected: Vec<String> = (sent_in_digest..30).map(|i| format!("k{i:02}")).collect();
    assert_eq!(keys, expected);
    assert!(!spool.exists(), "loaded and removed");
}

#[tokio::test(start_paused = true)]
async fn on_accepted_reports_each_event_with_its_observed_to_accepted_time() {
    let seen = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let log = seen.clone();
    let sink = MemorySink::new("mem")
        .with_limits(vec![RateLimit::new("chat", 1, secs(4))])
        .with_digests(4_096);
    let n = notifier()
        .sink(sink.clone())
        .on_accepted(move |a| {
            log.lock()
                .push((a.key.to_owned(), a.observed_to_accepted, a.in_digest));
        })
        .build()
        .unwrap();
    let origin = Instant::now();
    n.notify(Notification::critical("a", "a")).unwrap();
    tokio::time::sleep(S).await;
    // Observed two seconds before it was raised.
    n.notify(Notification::critical("b", "b").observed_at(origin - secs(1)))
        .unwrap();
    n.notify(Notification::critical("c", "c")).unwrap();
    assert!(n.flush(secs(10)).await);
    assert_eq!(
        *seen.lock(),
        [
            ("a".to_owned(), Duration::ZERO, false),
            ("b".to_owned(), secs(5), true),
            ("c".to_owned(), secs(3), true),
        ]
    );
}
