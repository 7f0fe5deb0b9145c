//! IAM tokens against the fake IAM and metadata services. The refresh
//! schedule runs on a manual clock; the HTTP calls are real.

use std::sync::Arc;
use std::time::Duration;

use keel_core::Clock;
use keel_testkit::Fault;
use keel_testkit::fakes::yandex::{DEFAULT_OAUTH_TOKEN, FakeYandex, METADATA_TOKEN};
use reqwest::StatusCode;
use vm_watchdog::iam::TokenSource;
use vm_watchdog::yandex::YandexClient;
use vm_watchdog::{Credentials, VmStatus};

#[tokio::test]
async fn oauth_tokens_are_exchanged_cached_and_refreshed_hourly() {
    let yc = FakeYandex::builder().require_iam(true).start().await;
    yc.add_instance("i-1", "a", "f", "RUNNING");
    let (clock, manual) = Clock::manual();
    let tokens = Arc::new(
        TokenSource::new(
            &Credentials::OAuth(DEFAULT_OAUTH_TOKEN.into()),
            &yc.base_url(),
            "http://127.0.0.1:9",
            reqwest::Client::new(),
        )
        .with_clock(clock),
    );
    let client = YandexClient::new(
        reqwest::Client::new(),
        &yc.base_url(),
        &yc.base_url(),
        tokens.clone(),
    );
    assert_eq!(client.get("i-1").await.unwrap().status, VmStatus::Running);
    let first = tokens.token().await.unwrap().unwrap();
    assert_eq!(yc.iam_requests(), 1, "cached between calls");

    manual.advance(Duration::from_secs(59 * 60));
    assert_eq!(tokens.token().await.unwrap().unwrap(), first);
    manual.advance(Duration::from_secs(2 * 60));
    let second = tokens.token().await.unwrap().unwrap();
    assert_ne!(second, first, "refreshed after an hour");
    assert_eq!(yc.issued_tokens(), [first.clone(), second.clone()]);

    // A failed refresh keeps the still-valid token.
    manual.advance(Duration::from_secs(61 * 60));
    yc.server()
        .faults()
        .push_next(Fault::Error(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(tokens.token().await.unwrap().unwrap(), second);
    // ...until it expires (12 h).
    manual.advance(Duration::from_secs(12 * 3_600));
    yc.server()
        .faults()
        .push_next(Fault::Error(StatusCode::SERVICE_UNAVAILABLE));
    let err = tokens.token().await.unwrap_err();
    assert!(err.message.contains("503"), "{err}");
}

#[tokio::test]
async fn a_wrong_oauth_token_is_an_error_and_the_metadata_service_works() {
    let yc = FakeYandex::start().await;
    let wrong = TokenSource::new(
        &Credentials::OAuth("y0_wrong".into()),
        &yc.base_url(),
        &yc.base_url(),
        reqwest::Client::new(),
    );
    let err = wrong.token().await.unwrap_err();
    assert!(err.message.contains("401"), "{err}");

    let metadata = TokenSource::new(
        &Credentials::Metadata,
        &yc.base_url(),
        &yc.base_url(),
        reqwest::Client::new(),
    );
    assert_eq!(
        metadata.token().await.unwrap().as_deref(),
        Some(METADATA_TOKEN)
    );
    let fixed = TokenSource::new(
        &Credentials::Static("t1.fixed".into()),
        &yc.base_url(),
        &yc.base_url(),
        reqwest::Client::new(),
    );
    assert_eq!(fixed.token().await.unwrap().as_deref(), Some("t1.fixed"));
}
