//! The pacing bound under paused tokio time: a replacement that never
//! becomes Ready stops the run after exactly `PACING` (10 minutes here, no
//! wall-clock wait), following the pods with a watch, not polling. Prometheus is
//! a scripted fake here (an in-process server, so paused time only jumps
//! when every task waits on a timer).

mod support;

use std::time::Duration;

use keel_testkit::fakes::kube::Replacement;
use keel_testkit::{FakeServer, Router, ScriptedResponse};
use pod_rebalancer::{exit, run_once};
use serde_json::json;
use support::*;

/// Every query answers the same vector: the hot and the idle pod stand out.
async fn fake_prometheus() -> FakeServer {
    let server = FakeServer::start(Router::new()).await;
    let result: Vec<_> = (0..PODS)
        .map(|i| {
            let v = match pod_name(i).as_str() {
                HOT => 2.0,
                IDLE => 0.05,
                _ => 0.5,
            };
            json!({"metric": {"pod": pod_name(i)}, "value": [1.0, v.to_string()]})
        })
        .collect();
    server.script().set_default(
        http::Method::POST,
        "/api/v1/query",
        ScriptedResponse::json(
            http::StatusCode::OK,
            &json!({"status": "success", "data": {"resultType": "vector", "result": result}}),
        ),
    );
    server
}

#[tokio::test(start_paused = true)]
async fn pacing_gives_up_after_exactly_pacing() {
    let prometheus = fake_prometheus().await;
    let kube = kube().await;
    kube.set_replacement(Replacement::NeverReady);
    let env = env(&kube, &prometheus.base_url(), &["--pacing", "10m"], "a").await;
    let started = tokio::time::Instant::now();
    let report = run_once(&env.settings, &env.clients).await;
    let waited = started.elapsed();
    assert_eq!(report.exit_code, exit::PACING, "{}", report.explanation);
    assert_eq!(kube.evictions(), [HOT]);
    assert!(
        waited >= Duration::from_secs(600) && waited < Duration::from_secs(601),
        "{waited:?}"
    );
    // No polling: one list to score; for pacing, a list and a watch from
    // its resourceVersion, again each time the watch's 290 s timeout ends
    // it (three watches in 600 s).
    assert_eq!(kube.pod_lists(), 1 + 3);
    assert_eq!(kube.pod_watches(), 3);
}
