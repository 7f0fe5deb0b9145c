//! The HTTP clients and the guarded API against the fakes (real sockets,
//! real time; no timing is asserted).

use std::time::Duration;

use keel_testkit::fakes::yandex::{FakeProxy, FakeYandex, StepDelays};
use keel_testkit::{Fault, FaultConfig};
use reqwest::StatusCode;
use std::sync::Arc;
use tokio::time::Instant;
use vm_watchdog::iam::TokenSource;
use vm_watchdog::proxy::ProxyClient;
use vm_watchdog::yandex::{StartAck, YandexClient};
use vm_watchdog::{Api, ApiSettings, HttpApi, Metrics, VmSource, VmStatus};

fn api(yc: &FakeYandex, metrics: &Metrics) -> Api<HttpApi> {
    let client = reqwest::Client::new();
    let raw = HttpApi::new(
        YandexClient::new(
            client.clone(),
            &yc.base_url(),
            &yc.base_url(),
            Arc::new(TokenSource::anonymous()),
        ),
        ProxyClient::new(client),
    );
    let quick = keel::retry::RetryPolicy::builder()
        .max_retries(3)
        .backoff(keel::retry::Backoff::constant(Duration::from_millis(10)))
        .build()
        .unwrap();
    let settings = ApiSettings {
        retry: quick.clone(),
        read_retry: quick,
        ..ApiSettings::new(4)
    };
    Api::new(raw, settings, metrics.clone(), None).unwrap()
}

#[tokio::test]
async fn compute_calls_retry_and_already_running_counts_as_success() {
    let yc = FakeYandex::builder()
        .steps(StepDelays::uniform(Duration::from_millis(50)))
        .start()
        .await;
    yc.add_instance("i-1", "a", "f", "STOPPED");
    yc.set_nat_ip("i-1", Some("51.250.0.1"));
    let metrics = Metrics::new();
    let api = api(&yc, &metrics);
    let vm = VmSource::Instance { id: "i-1".into() };

    yc.server()
        .faults()
        .fail_next(2, Fault::Error(StatusCode::SERVICE_UNAVAILABLE));
    let obs = api
        .status("a", &vm, vm_watchdog::ReadReason::Routine)
        .await
        .unwrap();
    assert_eq!(obs.status, VmStatus::Stopped);
    assert_eq!(obs.nat_ip.as_deref(), Some("51.250.0.1"));
    assert_eq!(metrics.api_errors("instances.get"), 2);

    let ack = api.start("a", &vm).await.unwrap();
    let StartAck::Started {
        operation: Some(op),
    } = ack
    else {
        panic!("{ack:?}");
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let state = api.operation("a", &op).await.unwrap();
    assert!(state.done && state.error.is_none(), "{state:?}");
    // Running now: the 409 / code 9 answer is a success.
    assert_eq!(api.start("a", &vm).await.unwrap(), StartAck::AlreadyRunning);

    // A failed start operation reports its error.
    yc.stop_vm("i-1");
    yc.fail_next_start("i-1", 8, "quota exceeded");
    let StartAck::Started {
        operation: Some(op),
    } = api.start("a", &vm).await.unwrap()
    else {
        panic!("no operation");
    };
    let state = api.operation("a", &op).await.unwrap();
    assert_eq!(state.error.as_deref(), Some("code 8: quota exceeded"));
    assert_eq!(state.error_code, Some(8));

    // Unknown VMs are 404: not retried, not counted as API failures.
    let err = api
        .status(
            "x",
            &VmSource::Instance { id: "nope".into() },
            vm_watchdog::ReadReason::Routine,
        )
        .await
        .unwrap_err();
    assert!(err.not_found, "{err:?}");
    assert_eq!(
        yc.server()
            .requests_to(http::Method::GET, "/compute/v1/instances/nope")
            .len(),
        1
    );
}

#[tokio::test]
async fn folder_listings_paginate_and_are_shared() {
    let yc = FakeYandex::start().await;
    for i in 0..2_500 {
        yc.add_instance(&format!("i-{i:04}"), &format!("vm-{i}"), "b1g", "RUNNING");
    }
    yc.stop_vm("i-1234");
    let metrics = Metrics::new();
    let api = Arc::new(api(&yc, &metrics));
    let since = Instant::now();
    let mut handles = Vec::new();
    for id in ["i-0001", "i-1234", "i-2499", "i-9999"] {
        let api = api.clone();
        handles.push(tokio::spawn(async move {
            api.folder_status("b1g", id, since, vm_watchdog::ReadReason::Routine)
                .await
                .unwrap()
        }));
    }
    let mut results = Vec::new();
    for h in handles {
        results.push(h.await.unwrap().map(|o| o.status));
    }
    assert_eq!(
        results,
        [
            Some(VmStatus::Running),
            Some(VmStatus::Stopped),
            Some(VmStatus::Running),
            None
        ]
    );
    // Four VMs, one listing of three pages of 1,000.
    let lists = yc
        .server()
        .requests_to(http::Method::GET, "/compute/v1/instances");
    assert_eq!(lists.len(), 3);
    assert_eq!(lists[0].query_param("pageSize").as_deref(), Some("1000"));
    assert_eq!(
        lists[1].query_param("pageToken").as_deref(),
        Some("page-1000")
    );
}

#[tokio::test]
async fn the_proxy_api_reads_and_starts() {
    let proxy = FakeProxy::start_with(StepDelays::instant(), FaultConfig::none()).await;
    proxy.add_vm("legacy", "Stopped", "51.250.10.174");
    let yc = FakeYandex::start().await;
    let metrics = Metrics::new();
    let api = api(&yc, &metrics);
    let vm = VmSource::Proxy {
        url: proxy.url_for("legacy"),
    };
    let obs = api
        .status("legacy", &vm, vm_watchdog::ReadReason::Routine)
        .await
        .unwrap();
    assert_eq!(obs.status, VmStatus::Stopped);
    assert_eq!(obs.nat_ip.as_deref(), Some("51.250.10.174"));
    assert_eq!(
        api.start("legacy", &vm).await.unwrap(),
        StartAck::Started { operation: None }
    );
    assert_eq!(
        api.start("legacy", &vm).await.unwrap(),
        StartAck::AlreadyRunning
    );
    assert_eq!(proxy.start_requests("legacy"), 2);
    assert_eq!(
        Api::<HttpApi>::group_of(&vm),
        format!("proxy:127.0.0.1:{}", proxy.server().addr().port())
    );
}
