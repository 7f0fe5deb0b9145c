//! The Slack, PagerDuty, Rootly and webhook senders against their fakes from
//! keel-testkit, over real loopback sockets (real time: sockets and paused
//! time do not mix): the wire format each fake checks, 429 with
//! `Retry-After`, 5xx storms, slow answers, dropped connections and
//! permanent rejections, each mapped to the right outcome; then a notifier
//! round trip through a 5xx storm for each.
#![cfg(all(
    feature = "slack",
    feature = "pagerduty",
    feature = "rootly",
    feature = "webhook"
))]

use std::time::Duration;

use keel_core::{ErrorOutcome, Outcome};
use keel_notify::{
    Digest, Message, Notification, Notifier, Pacer, PagerDutySink, RootlySink, Sink, SinkError,
    SlackSink, WebhookSink,
};
use keel_retry::{Backoff, Jitter, RetryPolicy};
use keel_testkit::fakes::pagerduty::{FakePagerDuty, ROUTING_KEY};
use keel_testkit::fakes::rootly::{self, FakeRootly};
use keel_testkit::fakes::slack::{self, FakeSlack};
use keel_testkit::fakes::webhook::FakeWebhook;
use keel_testkit::{FakeServer, Fault};
use reqwest::{Method, StatusCode};

const SHORT: Duration = Duration::from_millis(300);

fn outcome(r: Result<(), SinkError>) -> Outcome {
    match r {
        Ok(()) => Outcome::Success,
        Err(e) => e.outcome(),
    }
}

fn critical(key: &str) -> Message {
    Message::new(
        1,
        Notification::critical(key, format!("VM {key} is STOPPED"))
            .subject(key)
            .field("vm", key),
        1,
    )
}

/// Plays the generic faults on `server` against `sink` and checks each
/// outcome: 429 with Retry-After, a 5xx, a slow answer past the sink's
/// timeout, a dropped connection.
async fn faults_map_to_outcomes<S: Sink>(sink: &S, server: &FakeServer, key: &str) {
    server.faults().push_next(Fault::RateLimited {
        retry_after: Duration::from_secs(7),
    });
    assert_eq!(
        outcome(sink.send(&critical(key)).await),
        Outcome::overloaded_for(Duration::from_secs(7)),
        "429 with Retry-After"
    );
    for status in [500, 502, 503] {
        server
            .faults()
            .push_next(Fault::Error(StatusCode::from_u16(status).unwrap()));
        assert_eq!(
            outcome(sink.send(&critical(key)).await),
            Outcome::Failure,
            "{status}"
        );
    }
    server.faults().push_next(Fault::Delay(SHORT * 4));
    assert_eq!(
        outcome(sink.send(&critical(key)).await),
        Outcome::Failure,
        "a slow answer times out, retryable"
    );
    server.faults().push_next(Fault::Drop);
    assert_eq!(
        outcome(sink.send(&critical(key)).await),
        Outcome::Failure,
        "a dropped connection is retryable"
    );
}

/// A notifier with quick retries around `sink`, for the storm round trips.
fn notifier<S: Sink>(sink: S) -> Notifier {
    Notifier::builder()
        .sink(sink)
        .retry(
            RetryPolicy::builder()
                .max_retries(10)
                .backoff(Backoff::constant(Duration::from_millis(20)))
                .jitter(Jitter::None)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

#[tokio::test]
async fn slack_webhook_and_web_api() {
    let fake = FakeSlack::start().await;
    fake.set_limits(None);
    let hook = SlackSink::webhook(fake.webhook_url("alerts"))
        .timeout(SHORT)
        .build()
        .unwrap();
    hook.send(&critical("vm-1")).await.unwrap();
    let got = fake.messages();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].text.as_deref(),
        Some("VM vm-1 is STOPPED\n\nvm: vm-1")
    );
    assert_eq!(
        got[0].blocks[0]["text"]["text"],
        ":red_circle: *VM vm-1 is STOPPED*"
    );

    // A digest: a header block and the lines.
    let d = Digest::new(
        1,
        vec![
            critical("vm-2"),
            Message::new(2, Notification::info("vm-3", "VM vm-3 recovered"), 3),
        ],
    );
    hook.send_digest(&d, &Pacer::none()).await.unwrap();
    let got = fake.messages();
    assert_eq!(
        got[1].blocks[0]["text"]["text"],
        "*4 alerts: 1 critical, 3 info*"
    );
    assert!(got[1].text.as_deref().unwrap().starts_with("4 alerts"));

    // Unknown hook: permanent.
    let gone = SlackSink::webhook(format!("{}/services/T/B/none", fake.base_url()))
        .build()
        .unwrap();
    assert_eq!(outcome(gone.send(&critical("x")).await), Outcome::Neutral);

    let bot = SlackSink::bot(slack::DEFAULT_TOKEN, "C0123")
        .base_url(fake.base_url())
        .timeout(SHORT)
        .build()
        .unwrap();
    bot.send(&critical("vm-4")).await.unwrap();
    assert_eq!(fake.messages()[2].channel, "C0123");
    let bad_token = SlackSink::bot("xoxb-wrong", "C0123")
        .base_url(fake.base_url())
        .build()
        .unwrap();
    assert_eq!(
        outcome(bad_token.send(&critical("x")).await),
        Outcome::Neutral
    );
    let bad_channel = SlackSink::bot(slack::DEFAULT_TOKEN, "nowhere")
        .base_url(fake.base_url())
        .build()
        .unwrap();
    assert_eq!(
        outcome(bad_channel.send(&critical("x")).await),
        Outcome::Neutral
    );

    // Slack's own 429: 1 message per second per channel.
    fake.set_limits(Some((1, Duration::from_secs(1))));
    bot.send(&critical("vm-5")).await.unwrap();
    assert_eq!(
        outcome(bot.send(&critical("vm-6")).await),
        Outcome::overloaded_for(Duration::from_secs(1))
    );
    assert_eq!(fake.rate_limited(), 1);
    fake.set_limits(None);

    faults_map_to_outcomes(&hook, fake.server(), "vm-7").await;
    faults_map_to_outcomes(&bot, fake.server(), "vm-8").await;
}

#[tokio::test]
async fn pagerduty_trigger_then_resolve_closes_the_incident() {
    let fake = FakePagerDuty::start().await;
    let sink = PagerDutySink::builder(ROUTING_KEY)
        .base_url(fake.base_url())
        .timeout(SHORT)
        .build()
        .unwrap();
    sink.send(&critical("vm-1")).await.unwrap();
    assert_eq!(fake.open_incidents().len(), 1);
    let resolve = Message::new(
        2,
        Notification::info("vm-1:recovered", "VM vm-1 recovered")
            .subject("vm-1")
            .resolves(),
        1,
    );
    sink.send(&resolve).await.unwrap();
    assert!(
        fake.open_incidents().is_empty(),
        "resolve closed what trigger opened"
    );
    let events = fake.events();
    assert_eq!(
        events.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["trigger", "resolve"]
    );
    assert_eq!(events[0].json["payload"]["severity"], "critical");

    // PagerDuty's throttle: 429.
    fake.set_limit(1, Duration::from_secs(60));
    sink.send(&critical("vm-2")).await.unwrap();
    let throttled = outcome(sink.send(&critical("vm-3")).await);
    assert!(throttled.is_overloaded(), "{throttled:?}");
    fake.set_limit(1_000, Duration::from_secs(60));

    faults_map_to_outcomes(&sink, fake.server(), "vm-4").await;
}

#[tokio::test]
async fn pagerduty_rejects_an_invalid_event_for_good() {
    let fake = FakePagerDuty::start().await;
    let sink = PagerDutySink::builder(ROUTING_KEY)
        .base_url(fake.base_url())
        .build()
        .unwrap();
    // An empty summary is invalid: 400, not retried.
    let empty = Message::new(1, Notification::critical("k", ""), 1);
    match sink.send(&empty).await {
        Err(e @ SinkError::Permanent { .. }) => assert!(e.to_string().contains("400")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn rootly_creates_alerts_with_json_api() {
    let fake = FakeRootly::start().await;
    let sink = RootlySink::builder(rootly::DEFAULT_TOKEN)
        .base_url(fake.base_url())
        .timeout(SHORT)
        .build()
        .unwrap();
    sink.send(&critical("vm-1")).await.unwrap();
    let alerts = fake.alerts();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].attributes["summary"], "VM vm-1 is STOPPED");
    assert_eq!(alerts[0].attributes["source"], "api");
    let request = &fake.server().requests()[0];
    assert_eq!(
        request.header("content-type"),
        Some("application/vnd.api+json")
    );

    let bad = RootlySink::builder("wrong")
        .base_url(fake.base_url())
        .build()
        .unwrap();
    match bad.send(&critical("x")).await {
        Err(SinkError::Permanent { status, .. }) => assert_eq!(status, Some(401)),
        other => panic!("{other:?}"),
    }
    let empty = Message::new(1, Notification::critical("k", ""), 1);
    match sink.send(&empty).await {
        Err(SinkError::Permanent { status, .. }) => assert_eq!(status, Some(422)),
        other => panic!("{other:?}"),
    }
    fake.set_limit(1, Duration::from_secs(60));
    sink.send(&critical("vm-2")).await.unwrap();
    assert!(outcome(sink.send(&critical("vm-2b")).await).is_overloaded());
    fake.set_limit(1_000, Duration::from_secs(60));

    faults_map_to_outcomes(&sink, fake.server(), "vm-3").await;
}

#[tokio::test]
async fn webhook_signs_and_sends_digests_as_arrays() {
    let fake = FakeWebhook::start().await;
    fake.require_signature("s3cret");
    let sink = WebhookSink::builder(fake.url())
        .secret("s3cret")
        .header("x-tenant", "ops")
        .timeout(SHORT)
        .build()
        .unwrap();
    sink.send(&critical("vm-1")).await.unwrap();
    let d = Digest::new(2, vec![critical("vm-2"), critical("vm-3")]);
    sink.send_digest(&d, &Pacer::none()).await.unwrap();
    let deliveries = fake.deliveries();
    assert_eq!(deliveries.len(), 2);
    assert!(deliveries[0].json.is_object());
    assert_eq!(deliveries[1].json.as_array().map(Vec::len), Some(2));
    assert_eq!(
        deliveries[0].headers.get("x-tenant").unwrap(),
        "ops",
        "extra headers go along"
    );
    let keys: Vec<_> = fake
        .messages()
        .iter()
        .map(|m| m["key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys, ["vm-1", "vm-2", "vm-3"]);

    // A wrong secret: 401, permanent.
    let forged = WebhookSink::builder(fake.url())
        .secret("guess")
        .build()
        .unwrap();
    assert_eq!(outcome(forged.send(&critical("x")).await), Outcome::Neutral);
    assert_eq!(fake.refused(), 1);

    // PUT works too.
    let put = WebhookSink::builder(fake.url())
        .secret("s3cret")
        .method(Method::PUT)
        .build()
        .unwrap();
    put.send(&critical("vm-4")).await.unwrap();
    assert_eq!(fake.deliveries()[2].method, Method::PUT);

    faults_map_to_outcomes(&sink, fake.server(), "vm-5").await;
}

#[tokio::test]
async fn every_sender_delivers_through_a_5xx_storm_under_a_notifier() {
    let slack_fake = FakeSlack::start().await;
    slack_fake.set_limits(None);
    let pd = FakePagerDuty::start().await;
    let ro = FakeRootly::start().await;
    let hook = FakeWebhook::start().await;
    let servers = [slack_fake.server(), pd.server(), ro.server(), hook.server()];
    for s in servers {
        s.faults()
            .fail_next(4, Fault::Error(StatusCode::SERVICE_UNAVAILABLE));
    }
    let notifiers = [
        notifier(
            SlackSink::webhook(slack_fake.webhook_url("a"))
                .build()
                .unwrap(),
        ),
        notifier(
            PagerDutySink::builder(ROUTING_KEY)
                .base_url(pd.base_url())
                .build()
                .unwrap(),
        ),
        notifier(
            RootlySink::builder(rootly::DEFAULT_TOKEN)
                .base_url(ro.base_url())
                .build()
                .unwrap(),
        ),
        notifier(WebhookSink::builder(hook.url()).build().unwrap()),
    ];
    for n in &notifiers {
        n.notify(Notification::critical("vm-9:STOPPED", "VM vm-9 is STOPPED").subject("vm-9"))
            .unwrap();
    }
    for n in &notifiers {
        let report = n.shutdown(Duration::from_secs(10)).await;
        assert_eq!((report.dropped, report.spooled), (0, 0));
        let stats = n.stats();
        assert_eq!(
            (stats.sent, stats.retried),
            (1, 4),
            "four 503s, then accepted"
        );
    }
    assert_eq!(slack_fake.messages().len(), 1);
    assert_eq!(pd.events().len(), 1);
    assert_eq!(ro.alerts().len(), 1);
    assert_eq!(hook.messages().len(), 1);
}

#[tokio::test]
async fn a_slack_burst_goes_out_as_digests_within_one_per_second() {
    let fake = FakeSlack::start().await; // 1/s per channel enforced
    let n = Notifier::builder()
        .sink(
            SlackSink::bot(slack::DEFAULT_TOKEN, "C0123")
                .base_url(fake.base_url())
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    n.notify(Notification::critical("vm-0", "VM vm-0 is STOPPED"))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 1..60 {
        n.notify(Notification::critical(
            format!("vm-{i}"),
            format!("VM vm-{i} is STOPPED"),
        ))
        .unwrap();
    }
    let report = n.shutdown(Duration::from_secs(10)).await;
    assert_eq!((report.dropped, report.spooled), (0, 0));
    let got = fake.messages();
    assert_eq!(fake.rate_limited(), 0, "never over Slack's 1/s");
    assert_eq!(got.len(), 2, "one alone, then one digest");
    assert_eq!(got[1].blocks[0]["text"]["text"], "*59 alerts: 59 critical*");
    assert_eq!(n.stats().sent, 60);
}

#[tokio::test]
async fn a_pagerduty_resolve_never_overtakes_its_trigger() {
    let fake = FakePagerDuty::start().await;
    let n = Notifier::builder()
        .sink(
            PagerDutySink::builder(ROUTING_KEY)
                .base_url(fake.base_url())
                .build()
                .unwrap(),
        )
        .workers(3)
        .debounce(keel_notify::Priority::Info, Duration::ZERO)
        .build()
        .unwrap();
    // The trigger is slow to be answered; the resolve, raised meanwhile,
    // must wait for it although two workers are free.
    fake.server()
        .faults()
        .push_next(Fault::Delay(Duration::from_millis(500)));
    n.notify(Notification::critical("vm-1:STOPPED", "VM vm-1 is STOPPED").subject("vm-1"))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    n.notify(
        Notification::info("vm-1:recovered", "VM vm-1 recovered")
            .subject("vm-1")
            .resolves(),
    )
    .unwrap();
    let report = n.shutdown(Duration::from_secs(10)).await;
    assert_eq!(report.dropped, 0);
    let actions: Vec<String> = fake.events().into_iter().map(|e| e.action).collect();
    assert_eq!(actions, ["trigger", "resolve"]);
    assert!(fake.open_incidents().is_empty());
}
