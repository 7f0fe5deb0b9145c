//! The Telegram sink against the Bot API fake from keel-testkit, over a real
//! loopback socket: HTML escaping, the length limit (truncate and split),
//! both 429 forms, 401, 5xx, timeouts, and a full notifier round trip.
//!
//! These run on real time (sockets and paused time do not mix: paused time
//! auto-advances while a request is on the wire and fires its timeout).
//! Timing rules are proved in `queue.rs` under paused time; here only the
//! end-to-end test waits, for the fake's one-second retry-afters.
#![cfg(feature = "telegram")]

use std::time::Duration;

use keel_core::{ErrorOutcome, Outcome};
use keel_notify::telegram::{TEXT_LIMIT, TooLong};
use keel_notify::{
    Message, Notification, Notifier, Priority, RateLimit, Sink, SinkError, TelegramSink,
};
use keel_retry::{Backoff, Jitter, RetryPolicy};
use keel_testkit::Fault;
use keel_testkit::fakes::telegram::{FakeTelegram, TelegramFault, TelegramLimits};

const CHAT: i64 = -1_001_234_567_890;

fn sink(tg: &FakeTelegram) -> TelegramSink {
    TelegramSink::builder(tg.token(), CHAT)
        .base_url(tg.base_url())
        .thread_id(42)
        .build()
        .unwrap()
}

fn message(n: Notification) -> Message {
    Message::new(1, n, 1)
}

#[tokio::test]
async fn posts_escaped_html_into_the_topic() {
    let tg = FakeTelegram::start().await;
    let n = Notification::critical("vm-1:STOPPED", "VM <db-1> & \"cache\" stopped")
        .body("RUNNING -> STOPPED at 12:00 <UTC>")
        .field("vm", "db-1 & co")
        .field("<zone>", "ru-central1-a");
    sink(&tg).send(&Message::new(9, n, 3)).await.unwrap();
    let got = tg.messages();
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(m.chat_id, CHAT.to_string());
    assert_eq!(m.message_thread_id, Some(42));
    assert_eq!(m.parse_mode.as_deref(), Some("HTML"));
    // The fake parsed the HTML strictly: what a reader sees is the original
    // text, every special character intact.
    assert_eq!(
        m.plain_text,
        "🔴 VM <db-1> & \"cache\" stopped (×3)\n\
         RUNNING -> STOPPED at 12:00 <UTC>\n\n\
         vm: db-1 & co\n\
         <zone>: ru-central1-a"
    );
    assert!(
        m.text
            .starts_with("🔴 <b>VM &lt;db-1&gt; &amp; &quot;cache&quot; stopped (×3)</b>")
    );
    assert_eq!(m.params["link_preview_options"]["is_disabled"], true);
}

fn long_notification() -> Notification {
    // 600 lines of 17 UTF-16 units (an emoji counts 2, an entity 1):
    // 10,200 units, far over the limit.
    Notification::warning("big", "Big <report>").body("a&b <c> 😀 line ok\n".repeat(600))
}

#[tokio::test]
async fn truncates_within_the_limit_as_telegram_counts() {
    let tg = FakeTelegram::start().await;
    sink(&tg).send(&message(long_notification())).await.unwrap();
    let got = tg.messages();
    assert_eq!(
        got.len(),
        1,
        "the fake accepted it: within 4,096 after parsing"
    );
    assert_eq!(got[0].plain_text.encode_utf16().count(), TEXT_LIMIT);
    assert!(got[0].plain_text.ends_with('…'));
}

#[tokio::test]
async fn splits_into_parts_without_breaking_markup() {
    let tg = FakeTelegram::start().await;
    let split = TelegramSink::builder(tg.token(), CHAT)
        .base_url(tg.base_url())
        .too_long(TooLong::Split { max_parts: 5 })
        .part_interval(Duration::ZERO)
        .build()
        .unwrap();
    let m = message(long_notification());
    split.send(&m).await.unwrap();
    let got = tg.messages();
    assert_eq!(got.len(), 3);
    for part in &got {
        assert!(part.plain_text.encode_utf16().count() <= TEXT_LIMIT);
    }
    let joined: String = got.iter().map(|p| p.plain_text.as_str()).collect();
    assert_eq!(
        joined,
        keel_testkit::fakes::telegram::parse_html(&split.render_html(&m)).unwrap()
    );
}

#[tokio::test]
async fn under_a_notifier_each_part_of_a_split_message_takes_a_rate_limit_slot() {
    let tg = FakeTelegram::start().await;
    let window = Duration::from_millis(800);
    let split = TelegramSink::builder(tg.token(), CHAT)
        .base_url(tg.base_url())
        .too_long(TooLong::Split { max_parts: 5 })
        .part_interval(Duration::ZERO)
        .rate_limits(vec![RateLimit::new("chat", 2, window)])
        .build()
        .unwrap();
    let notifier = Notifier::builder()
        .sink(split)
        .debounce(Priority::Warning, Duration::ZERO)
        .build()
        .unwrap();
    notifier.notify(long_notification()).unwrap(); // three parts
    notifier
        .notify(Notification::critical("short", "short"))
        .unwrap();
    let report = notifier.shutdown(Duration::from_secs(20)).await;
    assert_eq!((report.sent, report.dropped), (2, 0));
    let got = tg.messages();
    assert_eq!(got.len(), 4);
    // At most two requests in any 800 ms: the parts count like messages
    // (a little slack for the time each request spends on the wire).
    for w in got.windows(3) {
        let spread = w[2].received_at - w[0].received_at;
        assert!(spread >= window - Duration::from_millis(150), "{spread:?}");
    }
}

#[tokio::test]
async fn a_split_message_resumes_after_the_parts_already_sent() {
    let tg = FakeTelegram::start().await;
    let split = TelegramSink::builder(tg.token(), CHAT)
        .base_url(tg.base_url())
        .too_long(TooLong::Split { max_parts: 5 })
        .part_interval(Duration::ZERO)
        .build()
        .unwrap();
    // First part accepted, second refused with a 502.
    tg.inject(TelegramFault::Delay(Duration::ZERO));
    tg.inject_status(502);
    let m = message(long_notification());
    let err = split.send(&m).await.unwrap_err();
    assert_eq!(err.outcome(), Outcome::Failure);
    assert_eq!(tg.messages().len(), 1);
    split.send(&m).await.unwrap();
    let got = tg.messages();
    assert_eq!(got.len(), 3, "part 1 was not sent twice");
    assert_eq!(tg.requests(), 4);
}

#[tokio::test]
async fn too_many_requests_in_both_forms_is_an_overload_with_its_delay() {
    let tg = FakeTelegram::start().await;
    let s = sink(&tg);
    tg.inject_429(5);
    let e = s
        .send(&message(Notification::info("k", "t")))
        .await
        .unwrap_err();
    assert_eq!(e.outcome(), Outcome::overloaded_for(Duration::from_secs(5)));
    tg.inject_429_legacy(34);
    let e = s
        .send(&message(Notification::info("k", "t")))
        .await
        .unwrap_err();
    assert_eq!(e.retry_after(), Some(Duration::from_secs(34)));
    assert!(tg.messages().is_empty());
    s.send(&message(Notification::info("k", "t")))
        .await
        .unwrap();
    assert_eq!(tg.messages().len(), 1);
}

#[tokio::test]
async fn wrong_token_and_unknown_chat_are_permanent() {
    let tg = FakeTelegram::start().await;
    let wrong = TelegramSink::builder("999:wrong", CHAT)
        .base_url(tg.base_url())
        .build()
        .unwrap();
    match wrong.send(&message(Notification::info("k", "t"))).await {
        Err(SinkError::Permanent { status, message }) => {
            assert_eq!((status, message.as_str()), (Some(401), "Unauthorized"));
        }
        other => panic!("{other:?}"),
    }
    tg.restrict_chats(["-1"]);
    match sink(&tg).send(&message(Notification::info("k", "t"))).await {
        Err(SinkError::Permanent { status, message }) => {
            assert_eq!(
                (status, message.as_str()),
                (Some(400), "Bad Request: chat not found")
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn server_errors_timeouts_and_refused_connections_are_retryable() {
    let tg = FakeTelegram::start().await;
    tg.inject_status(502);
    let e = sink(&tg)
        .send(&message(Notification::info("k", "t")))
        .await
        .unwrap_err();
    assert_eq!(e.outcome(), Outcome::Failure);

    tg.inject_delay(Duration::from_secs(5));
    let impatient = TelegramSink::builder(tg.token(), CHAT)
        .base_url(tg.base_url())
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let e = impatient
        .send(&message(Notification::info("k", "t")))
        .await
        .unwrap_err();
    assert_eq!(e.outcome(), Outcome::Failure, "{e}");

    // The fault layer's generic faults speak Telegram too.
    tg.server()
        .faults()
        .push_next(Fault::Error(reqwest::StatusCode::SERVICE_UNAVAILABLE));
    let e = sink(&tg)
        .send(&message(Notification::info("k", "t")))
        .await
        .unwrap_err();
    assert_eq!(e.outcome(), Outcome::Failure);
    tg.server().faults().push_next(Fault::RateLimited {
        retry_after: Duration::from_secs(3),
    });
    let e = sink(&tg)
        .send(&message(Notification::info("k", "t")))
        .await
        .unwrap_err();
    assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
    tg.server().faults().push_next(Fault::Drop);
    let e = sink(&tg)
        .send(&message(Notification::info("k", "t")))
        .await
        .unwrap_err();
    assert_eq!(e.outcome(), Outcome::Failure, "a dropped connection: {e}");
    assert!(tg.messages().is_empty());

    let base = tg.base_url();
    drop(tg);
    let gone = TelegramSink::builder("1:a", CHAT)
        .base_url(base)
        .build()
        .unwrap();
    let e = gone
        .send(&message(Notification::info("k", "t")))
        .await
        .unwrap_err();
    assert_eq!(e.outcome(), Outcome::Failure);
    assert!(
        !format!("{e:?}").contains("1:a"),
        "errors never show the token"
    );
}

#[tokio::test]
async fn the_fake_speaks_the_wire_format() {
    let tg = FakeTelegram::start().await;
    let client = reqwest::Client::new();
    let url = format!("{}/bot{}/sendMessage", tg.base_url(), tg.token());
    // A form body, as many clients send it.
    let r = client
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("chat_id=%40ops&text=hello+%3Cworld%3E&disable_notification=true")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["ok"], true);
    assert_eq!(body["result"]["message_id"], 1);
    let m = &tg.messages()[0];
    assert_eq!(
        (m.chat_id.as_str(), m.text.as_str()),
        ("@ops", "hello <world>")
    );
    assert!(m.disable_notification);

    let post = |body: serde_json::Value| client.post(&url).json(&body).send();
    let error = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["ok"], false);
        assert_eq!(body["error_code"], status);
        (status, body["description"].as_str().unwrap().to_owned())
    };
    let r = post(serde_json::json!({ "text": "x" })).await.unwrap();
    assert_eq!(
        error(r).await,
        (400, "Bad Request: chat_id is empty".into())
    );
    let r = post(serde_json::json!({ "chat_id": 5, "text": "x".repeat(4097) }))
        .await
        .unwrap();
    assert_eq!(
        error(r).await,
        (400, "Bad Request: message is too long".into())
    );
    let r = post(serde_json::json!({ "chat_id": 5, "text": "a < b", "parse_mode": "HTML" }))
        .await
        .unwrap();
    let (status, description) = error(r).await;
    assert_eq!(status, 400);
    assert!(description.starts_with("Bad Request: can't parse entities"));
    let r = post(serde_json::json!({ "chat_id": 5, "text": "" }))
        .await
        .unwrap();
    assert_eq!(
        error(r).await,
        (400, "Bad Request: message text is empty".into())
    );
    let r = client
        .post(format!("{}/bot{}/getMe", tg.base_url(), tg.token()))
        .send()
        .await
        .unwrap();
    assert_eq!(error(r).await, (404, "Not Found".into()));
    let r = client
        .post(format!("{}/botnope/sendMessage", tg.base_url()))
        .json(&serde_json::json!({ "chat_id": 5, "text": "x" }))
        .send()
        .await
        .unwrap();
    assert_eq!(error(r).await, (401, "Unauthorized".into()));
    tg.set_down(Some(TelegramFault::Status(503)));
    let r = post(serde_json::json!({ "chat_id": 5, "text": "x" }))
        .await
        .unwrap();
    assert_eq!(error(r).await, (503, "Service Unavailable".into()));
    tg.set_down(None);
    assert_eq!(tg.messages().len(), 1);
}

#[tokio::test]
async fn notifier_delivers_through_429s_of_both_forms() {
    let tg = FakeTelegram::start().await;
    let telegram = TelegramSink::builder(tg.token(), CHAT)
        .base_url(tg.base_url())
        .thread_id(7)
        .rate_limits(Vec::new())
        .build()
        .unwrap();
    let notifier = Notifier::builder()
        .sink(telegram)
        .retry(
            RetryPolicy::builder()
                .max_retries(3)
                .backoff(Backoff::constant(Duration::from_millis(10)))
                .jitter(Jitter::None)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    tg.inject_429(1);
    tg.inject_429_legacy(1);
    notifier
        .notify(Notification::critical("vm-1:STOPPED", "VM vm-1 stopped").field("zone", "a"))
        .unwrap();
    let report = notifier.shutdown(Duration::from_secs(20)).await;
    assert_eq!((report.sent, report.dropped), (1, 0));
    assert_eq!(tg.requests(), 3, "two 429s, then accepted");
    let got = tg.messages();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message_thread_id, Some(7));
    assert_eq!(got[0].plain_text, "🔴 VM vm-1 stopped\n\nzone: a");
    let stats = notifier.stats();
    assert_eq!((stats.sent, stats.retried, stats.requeued), (1, 2, 0));
}

#[tokio::test]
async fn a_burst_goes_out_as_digests_within_telegrams_real_limits() {
    let tg = FakeTelegram::start().await;
    tg.set_limits(Some(TelegramLimits::REAL));
    let notifier = Notifier::builder()
        .sink(
            TelegramSink::builder(tg.token(), CHAT)
                .base_url(tg.base_url())
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    notifier
        .notify(Notification::critical(
            "vm-000:STOPPED",
            "VM vm-000 is STOPPED",
        ))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 1..100 {
        notifier
            .notify(
                Notification::critical(
                    format!("vm-{i:03}:STOPPED"),
                    format!("VM vm-{i:03} is STOPPED"),
                )
                .subject(format!("vm-{i:03}"))
                .field("vm", format!("vm-{i:03}")),
            )
            .unwrap();
    }
    let report = notifier.shutdown(Duration::from_secs(10)).await;
    assert_eq!((report.dropped, report.spooled), (0, 0));
    let got = tg.messages();
    assert_eq!(tg.rate_limited(), 0, "never over Telegram's limits");
    assert!(got.len() <= 3, "{} messages", got.len());
    assert_eq!(
        got[0].plain_text, "🔴 VM vm-000 is STOPPED",
        "the first goes alone"
    );
    assert!(
        got[1].plain_text.starts_with("📋 "),
        "{}",
        got[1].plain_text
    );
    let lines: usize = got[1..]
        .iter()
        .map(|m| m.plain_text.lines().filter(|l| l.starts_with("🔴")).count())
        .sum();
    assert_eq!(lines, 99, "every event on its own line");
    let stats = notifier.stats();
    assert_eq!((stats.sent, stats.messages), (100, got.len() as u64));
    let last = got.last().unwrap().received_at - got[0].received_at;
    assert!(last < Duration::from_secs(3), "{last:?}");
}
