//! The notifier's queue rules, deterministically under paused tokio time:
//! priority order, dedup, critical bypass, debounce, rate limits,
//! retry-after (small and huge), overflow, a sink that is down then up,
//! the spool across a restart, and shutdown.

mod support;

use std::time::Duration;

use keel_notify::{
    Admitted, BreakerConfig, Notification, Notifier, NotifierBuilder, NotifyError, Priority,
    RateLimit,
};
use keel_retry::{Backoff, Jitter, RetryPolicy};
use support::{Answer, MemorySink, S, secs};

/// Quick retries without jitter: 2 retries, 1 s apart; the sink's breaker
/// opens after one failed round, for 10 s, 20 s, 40 s, 80 s.
fn notifier() -> NotifierBuilder {
    Notifier::builder()
        .retry(
            RetryPolicy::builder()
                .max_retries(2)
                .backoff(Backoff::constant(S))
                .jitter(Jitter::None)
                .max_retry_after(secs(60))
                .build()
                .unwrap(),
        )
        .sink_breaker(
            BreakerConfig::builder()
                .no_failure_rate()
                .consecutive_failures(1)
                .minimum_calls(1)
                .open_duration(secs(10))
                .open_duration_growth(2.0, secs(80))
                .half_open_max_probes(1)
                .half_open_successes(1)
                .build()
                .unwrap(),
        )
        .workers(1)
}

fn no_debounce(b: NotifierBuilder) -> NotifierBuilder {
    b.debounce(Priority::Warning, Duration::ZERO)
        .debounce(Priority::Info, Duration::ZERO)
}

#[tokio::test(start_paused = true)]
async fn serves_critical_then_warning_then_info_in_arrival_order() {
    let sink = MemorySink::new("mem");
    let n = no_debounce(notifier()).sink(sink.clone()).build().unwrap();
    for (key, p) in [
        ("i1", Priority::Info),
        ("w1", Priority::Warning),
        ("c1", Priority::Critical),
        ("i2", Priority::Info),
        ("c2", Priority::Critical),
        ("w2", Priority::Warning),
    ] {
        assert_eq!(
            n.notify(Notification::new(key, p, key)).unwrap(),
            Admitted::Queued
        );
    }
    assert!(n.flush(secs(10)).await);
    assert_eq!(sink.keys(), ["c1", "c2", "w1", "w2", "i1", "i2"]);
    let stats = n.stats();
    assert_eq!(
        (stats.queued, stats.sent, stats.dropped, stats.depth),
        (6, 6, 0, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn dedup_window_suppresses_repeats_for_five_minutes() {
    let sink = MemorySink::new("mem");
    let n = no_debounce(notifier()).sink(sink.clone()).build().unwrap();
    let stuck = || Notification::warning("vm-1:STARTING", "stuck");
    assert_eq!(n.notify(stuck()).unwrap(), Admitted::Queued);
    tokio::time::sleep(secs(60)).await;
    assert_eq!(n.notify(stuck()).unwrap(), Admitted::Deduplicated);
    tokio::time::sleep(secs(239)).await;
    assert_eq!(
        n.notify(stuck()).unwrap(),
        Admitted::Deduplicated,
        "at 4:59"
    );
    // Another key is not affected.
    assert_eq!(
        n.notify(Notification::warning("vm-2:STARTING", "stuck"))
            .unwrap(),
        Admitted::Queued
    );
    tokio::time::sleep(S).await;
    assert_eq!(n.notify(stuck()).unwrap(), Admitted::Queued, "at 5:00");
    assert!(n.flush(secs(1)).await);
    assert_eq!(
        sink.keys(),
        ["vm-1:STARTING", "vm-2:STARTING", "vm-1:STARTING"]
    );
    assert_eq!(sink.times(), [secs(0), secs(299), secs(300)]);
    assert_eq!(n.stats().deduplicated, 2);
}

#[tokio::test(start_paused = true)]
async fn critical_always_goes_out() {
    let sink = MemorySink::new("mem");
    // Default dedup (5 min) and debounce settings.
    let n = notifier().sink(sink.clone()).build().unwrap();
    for i in 0..3 {
        let admitted = n
            .notify(Notification::critical("vm-1:STOPPED", "stopped").body(format!("#{i}")))
            .unwrap();
        assert_eq!(admitted, Admitted::Queued);
        tokio::time::sleep(S).await;
    }
    assert!(n.flush(secs(10)).await);
    let got = sink.received();
    assert_eq!(got.len(), 3);
    assert!(
        got.iter()
            .all(|r| r.count == 1 && r.priority == Priority::Critical)
    );
    assert_eq!(n.stats().deduplicated, 0);
}

#[tokio::test(start_paused = true)]
async fn critical_is_not_held_behind_a_debounced_warning_of_its_key() {
    let sink = MemorySink::new("mem");
    let n = notifier().sink(sink.clone()).build().unwrap();
    assert!(matches!(
        n.notify(Notification::warning("vm-1", "slow")).unwrap(),
        Admitted::Held { .. }
    ));
    assert_eq!(
        n.notify(Notification::critical("vm-1", "stopped")).unwrap(),
        Admitted::Queued
    );
    tokio::time::sleep(S).await;
    assert_eq!(sink.received().len(), 1);
    assert_eq!(sink.received()[0].title, "stopped");
    assert_eq!(sink.times(), [secs(0)]);
}

#[tokio::test(start_paused = true)]
async fn debounce_collapses_repeats_into_one_message_with_the_count() {
    let sink = MemorySink::new("mem");
    let n = notifier().sink(sink.clone()).build().unwrap();
    let start = tokio::time::Instant::now();
    let stuck = |body: &str| Notification::warning("vm-1:STARTING", "VM stuck").body(body);
    assert_eq!(
        n.notify(stuck("STARTING for 5m")).unwrap(),
        Admitted::Held {
            until: start + secs(30)
        }
    );
    tokio::time::sleep(secs(10)).await;
    assert_eq!(
        n.notify(stuck("STARTING for 5m10s")).unwrap(),
        Admitted::Debounced { count: 2 }
    );
    tokio::time::sleep(secs(10)).await;
    assert_eq!(
        n.notify(stuck("STARTING for 5m20s")).unwrap(),
        Admitted::Debounced { count: 3 }
    );
    tokio::time::sleep(secs(9)).await;
    assert_eq!(
        n.notify(stuck("STARTING for 5m29s")).unwrap(),
        Admitted::Debounced { count: 4 }
    );
    assert!(sink.received().is_empty(), "held until the window closes");
    assert_eq!(n.stats().held, 1);
    tokio::time::sleep(secs(2)).await;
    let got = sink.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].at, secs(30), "released when the window closes");
    assert_eq!(got[0].count, 4);
    assert_eq!(got[0].display_title, "VM stuck (×4)");
    assert_eq!(got[0].body, "STARTING for 5m29s", "latest state wins");
    // The dedup window starts at the release.
    assert_eq!(n.notify(stuck("again")).unwrap(), Admitted::Deduplicated);
    // Info debounces for 10 s.
    let info_at = tokio::time::Instant::now();
    assert_eq!(
        n.notify(Notification::info("vm-2:RUNNING", "recovered"))
            .unwrap(),
        Admitted::Held {
            until: info_at + secs(10)
        }
    );
    let stats = n.stats();
    assert_eq!((stats.debounced, stats.deduplicated), (3, 1));
}

#[tokio::test(start_paused = true)]
async fn rate_limits_space_sends_exactly_and_do_not_hold_other_sinks() {
    let limited = MemorySink::new("chat").with_limits(vec![
        RateLimit::per_second("chat", 1),
        RateLimit::per_minute("chat", 3),
    ]);
    let free = MemorySink::new("free");
    let n = notifier()
        .sink(limited.clone())
        .sink(free.clone())
        .build()
        .unwrap();
    for i in 0..5 {
        n.notify(Notification::critical(format!("c{i}"), "x"))
            .unwrap();
    }
    assert!(n.flush(secs(120)).await);
    assert_eq!(
        limited.times(),
        [secs(0), secs(1), secs(2), secs(60), secs(61)],
        "1/s, and at most 3 in any 60 s"
    );
    assert_eq!(limited.keys(), ["c0", "c1", "c2", "c3", "c4"]);
    assert_eq!(
        free.times(),
        [secs(0); 5],
        "the other sink is not held back"
    );
}

#[tokio::test(start_paused = true)]
async fn two_sinks_sharing_a_limit_share_its_window() {
    // Two topics of one group: the group's limit is shared.
    let topic_a = MemorySink::new("a").with_limits(vec![RateLimit::per_second("group", 1)]);
    let topic_b = MemorySink::new("b").with_limits(vec![RateLimit::per_second("group", 1)]);
    let n = notifier()
        .workers(3)
        .sink(topic_a.clone())
        .sink(topic_b.clone())
        .build()
        .unwrap();
    n.notify(Notification::critical("c0", "x")).unwrap();
    n.notify(Notification::critical("c1", "x")).unwrap();
    assert!(n.flush(secs(10)).await);
    let mut all: Vec<Duration> = topic_a.times();
    all.extend(topic_b.times());
    all.sort();
    assert_eq!(all, [secs(0), secs(1), secs(2), secs(3)]);
}

#[tokio::test(start_paused = true)]
async fn small_retry_after_is_waited_out_by_every_worker() {
    let sink = MemorySink::new("mem");
    sink.script([Answer::Overloaded(Some(secs(5)))]);
    let n = notifier().workers(3).sink(sink.clone()).build().unwrap();
    n.notify(Notification::critical("a", "a")).unwrap();
    n.notify(Notification::critical("b", "b")).unwrap();
    assert!(n.flush(secs(30)).await);
    assert_eq!(sink.times(), [secs(5), secs(5)]);
    let attempts = sink.attempts();
    assert_eq!(attempts.len(), 3, "a twice, b once: b waited for the pause");
    assert_eq!(attempts[0].0, secs(0));
    assert!(attempts[1..].iter().all(|(at, _)| *at == secs(5)));
    let stats = n.stats();
    assert_eq!(
        (stats.retried, stats.requeued, stats.escalations),
        (1, 0, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn huge_retry_after_requeues_instead_of_blocking_the_worker() {
    let telegram = MemorySink::new("telegram");
    telegram.script([Answer::Overloaded(Some(secs(3600)))]);
    let other = MemorySink::new("other");
    // One worker: if it slept out the hour, `other` would wait an hour too.
    let n = notifier()
        .sink(telegram.clone())
        .sink(other.clone())
        .build()
        .unwrap();
    n.notify(Notification::critical("vm-1:STOPPED", "stopped"))
        .unwrap();
    tokio::time::sleep(S).await;
    assert_eq!(other.times(), [secs(0)], "the queue kept moving");
    assert!(telegram.received().is_empty());
    let stats = n.stats();
    assert_eq!((stats.escalations, stats.requeued, stats.depth), (1, 1, 1));
    // The message is still queued, and goes out once the hour is over.
    n.notify(Notification::critical("vm-2:STOPPED", "stopped"))
        .unwrap();
    assert!(n.flush(secs(4000)).await);
    assert_eq!(telegram.times(), [secs(3600), secs(3600)]);
    assert_eq!(telegram.keys(), ["vm-1:STOPPED", "vm-2:STOPPED"]);
    assert_eq!(telegram.attempts().len(), 3);
    assert_eq!(n.stats().dropped, 0);
}

#[tokio::test(start_paused = true)]
async fn overflow_drops_the_oldest_lowest_priority_and_counts_it() {
    let sink = MemorySink::new("mem");
    let n = no_debounce(notifier())
        .capacity(3)
        .sink(sink.clone())
        .build()
        .unwrap();
    // Synchronous calls: the worker has not run yet, so the queue fills.
    for key in ["i1", "i2"] {
        n.notify(Notification::info(key, key)).unwrap();
    }
    n.notify(Notification::warning("w1", "w1")).unwrap();
    assert_eq!(
        n.notify(Notification::critical("c1", "c1")).unwrap(),
        Admitted::Queued,
        "evicts i1"
    );
    assert_eq!(
        n.notify(Notification::info("i3", "i3")).unwrap(),
        Admitted::Queued,
        "evicts i2, the oldest info"
    );
    let stats = n.stats();
    assert_eq!((stats.depth, stats.dropped), (3, 2));
    assert!(n.flush(secs(5)).await);
    assert_eq!(sink.keys(), ["c1", "w1", "i3"]);

    // Full of messages that outrank it: the newcomer itself is dropped.
    let n = no_debounce(notifier())
        .capacity(2)
        .sink(MemorySink::new("mem"))
        .build()
        .unwrap();
    n.notify(Notification::critical("c1", "c1")).unwrap();
    n.notify(Notification::warning("w1", "w1")).unwrap();
    assert_eq!(
        n.notify(Notification::info("i1", "i1")).unwrap(),
        Admitted::Dropped
    );
    assert_eq!(n.stats().dropped, 1);
}

#[tokio::test(start_paused = true)]
async fn sink_down_then_up_loses_nothing() {
    let sink = MemorySink::new("mem");
    sink.set_down(true);
    let n = notifier().workers(3).sink(sink.clone()).build().unwrap();
    for i in 0..5 {
        n.notify(Notification::critical(format!("c{i}"), "x"))
            .unwrap();
    }
    tokio::time::sleep(secs(300)).await;
    let stats = n.stats();
    assert_eq!(stats.dropped, 0, "a down sink drops nothing");
    assert_eq!(stats.depth, 5, "everything waits in the queue");
    assert!(stats.requeued >= 3);
    let attempts_while_down = sink.attempts().len();
    // First round: three workers, three attempts each. Then one probe at a
    // time, three attempts per round, rounds 10 s, 20 s, 40 s, 80 s, 80 s
    // apart at most (the pause grows with each failed round).
    assert!(
        (9..=9 + 3 * 6).contains(&attempts_while_down),
        "{attempts_while_down} attempts in 300 s"
    );
    assert!(
        !sink
            .attempts()
            .windows(2)
            .any(|w| w[0].0 > secs(3) && w[1].0 == w[0].0),
        "after the first round, one probe at a time"
    );
    sink.set_down(false);
    assert!(n.flush(secs(200)).await);
    let mut keys = sink.keys();
    assert_eq!(keys.len(), 5);
    keys.sort();
    assert_eq!(keys, ["c0", "c1", "c2", "c3", "c4"]);
    let stats = n.stats();
    assert_eq!((stats.sent, stats.dropped, stats.depth), (5, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn permanent_rejection_is_dropped_counted_and_not_retried() {
    let sink = MemorySink::new("mem");
    sink.script([Answer::Reject]);
    let n = notifier().sink(sink.clone()).build().unwrap();
    n.notify(Notification::critical("bad", "bad")).unwrap();
    n.notify(Notification::critical("good", "good")).unwrap();
    assert!(n.flush(secs(5)).await);
    assert_eq!(sink.attempts().len(), 2);
    assert_eq!(sink.keys(), ["good"]);
    let stats = n.stats();
    assert_eq!((stats.rejected, stats.dropped, stats.sent), (1, 1, 1));
}

#[tokio::test(start_paused = true)]
async fn on_dropped_tells_every_drop_and_no_spool_keeps_nothing() {
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let sink = MemorySink::new("mem");
    sink.script([Answer::Reject]);
    let dropped = Arc::new(Mutex::new(Vec::new()));
    let seen = dropped.clone();
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let ok = accepted.clone();
    let n = notifier()
        .sink(sink.clone())
        .state_dir(dir.path())
        .no_spool()
        .on_dropped(move |d| {
            seen.lock()
                .unwrap()
                .push((d.key.to_owned(), d.reason.as_str()));
        })
        .on_accepted(move |a| ok.lock().unwrap().push(a.key.to_owned()))
        .build()
        .unwrap();
    n.notify(Notification::critical("bad", "bad")).unwrap();
    n.notify(Notification::critical("good", "good")).unwrap();
    assert!(n.flush(secs(5)).await);
    sink.set_down(true);
    n.notify(Notification::critical("late", "late")).unwrap();
    let report = n.shutdown(Duration::ZERO).await;
    assert_eq!(report.spooled, 0, "no spool even with a state directory");
    assert!(!dir.path().join("notify.spool").exists());
    assert_eq!(*accepted.lock().unwrap(), ["good"]);
    assert_eq!(
        *dropped.lock().unwrap(),
        [
            ("bad".to_owned(), "permanent"),
            ("late".to_owned(), "shutdown")
        ],
        "each delivery ends in exactly one of the two calls"
    );
}

#[tokio::test(start_paused = true)]
async fn cancel_removes_what_waits_and_tells_it() {
    use std::sync::{Arc, Mutex};
    let sink = MemorySink::new("mem");
    sink.set_down(true);
    let dropped = Arc::new(Mutex::new(Vec::new()));
    let seen = dropped.clone();
    let n = notifier()
        .sink(sink.clone())
        .on_dropped(move |d| {
            seen.lock()
                .unwrap()
                .push((d.key.to_owned(), d.reason.as_str()));
        })
        .build()
        .unwrap();
    for key in ["a", "b", "c"] {
        n.notify(Notification::critical(key, key)).unwrap();
    }
    // A warning held in its debounce is cancelled too.
    n.notify(Notification::warning("w", "w")).unwrap();
    tokio::time::sleep(secs(1)).await;
    assert_eq!(n.cancel("b"), 1);
    assert_eq!(n.cancel("w"), 1);
    assert_eq!(n.cancel("nothing"), 0);
    sink.set_down(false);
    assert!(n.flush(secs(120)).await);
    let keys = sink.keys();
    assert!(
        !keys.contains(&"b".to_owned()) && !keys.contains(&"w".to_owned()),
        "{keys:?}"
    );
    assert!(keys.contains(&"c".to_owned()), "{keys:?}");
    assert_eq!(
        *dropped.lock().unwrap(),
        [("b".to_owned(), "cancelled")],
        "a queued delivery is told; a held one never reached the queue"
    );
}

#[tokio::test(start_paused = true)]
async fn retryable_failures_are_retried_quickly_before_requeueing() {
    let sink = MemorySink::new("mem");
    sink.script([Answer::Fail, Answer::Fail]);
    let n = notifier().sink(sink.clone()).build().unwrap();
    n.notify(Notification::critical("x", "x")).unwrap();
    assert!(n.flush(secs(5)).await);
    assert_eq!(sink.times(), [secs(2)], "attempts at 0, 1 and 2 s");
    let stats = n.stats();
    assert_eq!((stats.retried, stats.requeued), (2, 0));
}

#[tokio::test(start_paused = true)]
async fn workers_send_concurrently() {
    let sink = MemorySink::new("mem");
    sink.set_delay(S);
    let n = notifier().workers(3).sink(sink.clone()).build().unwrap();
    for i in 0..6 {
        n.notify(Notification::critical(format!("c{i}"), "x"))
            .unwrap();
    }
    assert!(n.flush(secs(10)).await);
    assert_eq!(sink.max_concurrent(), 3);
    assert_eq!(
        sink.times(),
        [secs(1), secs(1), secs(1), secs(2), secs(2), secs(2)]
    );
}

#[tokio::test(start_paused = true)]
async fn routing_to_named_sinks() {
    let a = MemorySink::new("a");
    let b = MemorySink::new("b");
    let n = notifier().sink(a.clone()).sink(b.clone()).build().unwrap();
    assert_eq!(n.sink_names(), ["a", "b"]);
    n.notify(Notification::critical("only-b", "x").to("b"))
        .unwrap();
    n.notify(Notification::critical("both", "x")).unwrap();
    let err = n
        .notify(Notification::critical("k", "x").to("nope"))
        .unwrap_err();
    assert!(matches!(err, NotifyError::UnknownSink(ref u) if u.name == "nope"));
    assert!(n.flush(secs(5)).await);
    assert_eq!(a.keys(), ["both"]);
    assert_eq!(b.keys(), ["only-b", "both"]);
}

#[tokio::test(start_paused = true)]
async fn shutdown_flushes_within_the_timeout() {
    let sink = MemorySink::new("mem").with_limits(vec![RateLimit::per_second("mem", 1)]);
    let n = notifier().workers(3).sink(sink.clone()).build().unwrap();
    for i in 0..5 {
        n.notify(Notification::critical(format!("c{i}"), "x"))
            .unwrap();
    }
    // A held warning is released by the shutdown, not lost.
    n.notify(Notification::warning("w", "w")).unwrap();
    let report = n.shutdown(secs(10)).await;
    assert_eq!((report.sent, report.spooled, report.dropped), (6, 0, 0));
    assert!(!report.timed_out);
    assert_eq!(
        sink.times(),
        [secs(0), secs(1), secs(2), secs(3), secs(4), secs(5)]
    );
    assert!(matches!(
        n.notify(Notification::critical("late", "x")),
        Err(NotifyError::Closed(_))
    ));
    assert_eq!(n.shutdown(secs(1)).await, Default::default(), "idempotent");
}

#[tokio::test(start_paused = true)]
async fn shutdown_timeout_without_spool_drops_and_counts_the_rest() {
    let sink = MemorySink::new("mem").with_limits(vec![RateLimit::per_second("mem", 1)]);
    let n = notifier().sink(sink.clone()).build().unwrap();
    for i in 0..5 {
        n.notify(Notification::critical(format!("c{i}"), "x"))
            .unwrap();
    }
    let report = n.shutdown(Duration::from_millis(2_500)).await;
    assert!(report.timed_out);
    assert_eq!((report.sent, report.spooled, report.dropped), (3, 0, 2));
    assert_eq!(n.stats().dropped, 2);
    assert_eq!(sink.keys(), ["c0", "c1", "c2"]);
}

#[tokio::test(start_paused = true)]
async fn spool_keeps_messages_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.spool");

    // First life: the sink is down; shut down with messages queued.
    let down = MemorySink::new("mem");
    down.set_down(true);
    let first = notifier().sink(down.clone()).spool(&path).build().unwrap();
    first.notify(Notification::critical("c1", "first")).unwrap();
    first
        .notify(Notification::warning("w1", "stuck").body("old"))
        .unwrap();
    first
        .notify(Notification::warning("w1", "stuck").body("new"))
        .unwrap();
    first
        .notify(Notification::critical("c2", "second"))
        .unwrap();
    let report = first.shutdown(secs(5)).await;
    assert!(report.timed_out);
    assert_eq!((report.sent, report.spooled, report.dropped), (0, 3, 0));
    let text = std::fs::read_to_string(&path).unwrap();
    // Record lines (the spool also has a header and an end marker).
    let records: Vec<&str> = text.lines().filter(|l| l.contains('{')).collect();
    assert_eq!(records.len(), 3, "{text}");
    assert!(records.iter().all(|l| l.contains(r#""sink":"mem""#)));

    // Second life: the sink works; everything goes out, critical first, the
    // debounced warning with its count.
    let up = MemorySink::new("mem");
    let second = notifier().sink(up.clone()).spool(&path).build().unwrap();
    assert!(!path.exists(), "the spool is consumed at start");
    assert_eq!(second.stats().restored, 3);
    assert!(second.flush(secs(5)).await);
    let got = up.received();
    assert_eq!(
        got.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
        ["c1", "c2", "w1"]
    );
    assert_eq!((got[2].count, got[2].body.as_str()), (2, "new"));
    let report = second.shutdown(secs(1)).await;
    assert_eq!(report.spooled, 0);
    assert!(!path.exists(), "an empty queue leaves no spool");
}

#[tokio::test(start_paused = true)]
async fn save_spool_snapshots_held_and_queued_and_restores_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.spool");
    let down = MemorySink::new("mem");
    down.set_down(true);
    let n = notifier()
        .sink(down)
        .spool(&path)
        .spool_interval(secs(60))
        .build()
        .unwrap();
    n.notify(Notification::critical("c", "c")).unwrap();
    n.notify(Notification::info("i", "i")).unwrap(); // held 10 s
    assert_eq!(n.save_spool().await.unwrap(), 2);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.lines().any(|l| l.contains(r#""sink":null"#)), "{text}");
    // The periodic write keeps it current: after 61 s the info was released
    // and both wait for the sink.
    tokio::time::sleep(secs(61)).await;
    let text = std::fs::read_to_string(&path).unwrap();
    let records: Vec<&str> = text.lines().filter(|l| l.contains('{')).collect();
    assert_eq!(records.len(), 2, "{text}");
    assert!(
        records.iter().all(|l| l.contains(r#""sink":"mem""#)),
        "{text}"
    );
    // A crash (no shutdown) followed by a restart restores them.
    drop(n);
    let up = MemorySink::new("mem");
    let n = notifier().sink(up.clone()).spool(&path).build().unwrap();
    assert!(n.flush(secs(5)).await);
    assert_eq!(up.keys(), ["c", "i"]);
}

#[tokio::test(start_paused = true)]
async fn spooled_messages_for_a_removed_sink_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.spool");
    let down = MemorySink::new("old");
    down.set_down(true);
    let n = notifier().sink(down).spool(&path).build().unwrap();
    n.notify(Notification::critical("c", "c")).unwrap();
    assert_eq!(n.shutdown(Duration::ZERO).await.spooled, 1);
    let n = notifier()
        .sink(MemorySink::new("new"))
        .spool(&path)
        .build()
        .unwrap();
    let stats = n.stats();
    assert_eq!((stats.restored, stats.dropped), (0, 1));
}

#[tokio::test]
async fn builder_rejects_bad_settings_naming_the_field() {
    let field = |r: Result<Notifier, NotifyError>| match r {
        Err(NotifyError::Config(e)) => e.field().to_owned(),
        other => panic!("{other:?}"),
    };
    assert_eq!(field(Notifier::builder().build()), "sinks");
    assert_eq!(
        field(
            Notifier::builder()
                .sink(MemorySink::new("a"))
                .workers(0)
                .build()
        ),
        "workers"
    );
    assert_eq!(
        field(
            Notifier::builder()
                .sink(MemorySink::new("a"))
                .capacity(0)
                .build()
        ),
        "capacity"
    );
    assert_eq!(
        field(
            Notifier::builder()
                .sink(MemorySink::new("a"))
                .sink(MemorySink::new("a"))
                .build()
        ),
        "sinks"
    );
    assert_eq!(
        field(
            Notifier::builder()
                .sink(MemorySink::new("a").with_limits(vec![RateLimit::per_second("k", 0)]))
                .build()
        ),
        "sinks"
    );
    assert_eq!(
        field(
            Notifier::builder()
                .sink(MemorySink::new("a"))
                .spool_interval(S)
                .build()
        ),
        "spool_interval"
    );
}

#[test]
fn building_outside_a_runtime_is_an_error() {
    let r = Notifier::builder().sink(MemorySink::new("a")).build();
    assert!(matches!(r, Err(NotifyError::NoRuntime)));
}

#[cfg(feature = "metrics")]
#[tokio::test(start_paused = true)]
async fn metrics_count_by_sink_and_priority() {
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    let sink = MemorySink::new("mem");
    sink.script([Answer::Fail, Answer::Reject]);
    let n = no_debounce(notifier())
        .capacity(2)
        .sink(sink)
        .build()
        .unwrap();
    let mut registry = Registry::default();
    n.register_metrics(registry.sub_registry_with_prefix("watchdog_notify"));
    n.notify(Notification::critical("c", "c")).unwrap();
    n.notify(Notification::warning("w", "w")).unwrap();
    n.notify(Notification::warning("w", "w")).unwrap(); // deduplicated
    n.notify(Notification::info("i", "i")).unwrap(); // dropped: full
    assert!(n.flush(secs(10)).await);
    let mut text = String::new();
    encode(&mut text, &registry).unwrap();
    for line in [
        r#"watchdog_notify_queued_total{sink="mem",priority="critical"} 1"#,
        r#"watchdog_notify_sent_total{sink="mem",priority="warning"} 1"#,
        r#"watchdog_notify_retried_total{sink="mem",priority="critical"} 1"#,
        r#"watchdog_notify_dropped_total{sink="mem",priority="critical",reason="permanent"} 1"#,
        r#"watchdog_notify_dropped_total{sink="mem",priority="info",reason="overflow"} 1"#,
        r#"watchdog_notify_deduplicated_total{sink="mem",priority="warning"} 1"#,
        r#"watchdog_notify_queue_depth{priority="critical"} 0"#,
        r#"watchdog_notify_send_duration_seconds_count{sink="mem"} 3"#,
        r#"watchdog_notify_delivery_latency_seconds_count{sink="mem",priority="warning"} 1"#,
        r#"watchdog_notify_observed_to_accepted_seconds_count{sink="mem",priority="warning"} 1"#,
        r#"watchdog_notify_messages_total{sink="mem",kind="single"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    // Dedup and debounce count once per sink the notification was for.
    let n = notifier()
        .sink(MemorySink::new("a"))
        .sink(MemorySink::new("b"))
        .build()
        .unwrap();
    let mut registry = Registry::default();
    n.register_metrics(&mut registry);
    for _ in 0..2 {
        n.notify(Notification::warning("w", "w")).unwrap();
        n.notify(Notification::info("i", "i").to("b")).unwrap();
    }
    assert!(n.flush(secs(60)).await);
    n.notify(Notification::info("i", "i").to("b")).unwrap(); // deduplicated
    let mut text = String::new();
    encode(&mut text, &registry).unwrap();
    for line in [
        r#"debounced_total{sink="a",priority="warning"} 1"#,
        r#"debounced_total{sink="b",priority="warning"} 1"#,
        r#"debounced_total{sink="b",priority="info"} 1"#,
        r#"deduplicated_total{sink="b",priority="info"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    assert!(
        !text.contains(r#"sink="a",priority="info""#),
        "nothing for a sink the notification was not for:\n{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn sinks_are_added_and_removed_while_running() {
    let a = MemorySink::new("a");
    let n = no_debounce(notifier()).sink(a.clone()).build().unwrap();
    let b = MemorySink::new("b").with_limits(vec![RateLimit::per_minute("b", 1)]);
    n.add_sink(b.clone()).unwrap();
    assert_eq!(n.sink_names(), ["a", "b"]);
    assert!(matches!(
        n.add_sink(MemorySink::new("b")),
        Err(NotifyError::Config(_))
    ));
    n.notify(Notification::critical("x", "x")).unwrap();
    n.notify(Notification::critical("y", "y").to("b")).unwrap();
    n.notify(Notification::critical("z", "z").to("b")).unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(a.keys(), ["x"]);
    assert_eq!(b.keys(), ["x"], "b's limit holds y and z");
    assert_eq!(n.breakers().len(), 2);
    assert_eq!(n.remove_sink("b").unwrap(), 2);
    let stats = n.stats();
    assert_eq!((stats.dropped, stats.depth), (2, 0));
    assert!(matches!(
        n.notify(Notification::critical("w", "w").to("b")),
        Err(NotifyError::UnknownSink(_))
    ));
    n.notify(Notification::critical("v", "v")).unwrap();
    assert!(n.flush(secs(5)).await);
    assert_eq!(a.keys(), ["x", "v"]);
    assert_eq!(b.keys(), ["x"]);
    assert!(n.remove_sink("b").is_err());
    // A name may come back after its removal.
    let b2 = MemorySink::new("b");
    n.add_sink(b2.clone()).unwrap();
    n.notify(Notification::critical("u", "u").to("b")).unwrap();
    assert!(n.flush(secs(5)).await);
    assert_eq!(b2.keys(), ["u"]);
}
