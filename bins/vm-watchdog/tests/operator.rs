//! Operator control under paused time: per-VM overrides from vms.yaml
//! (`auto_start: false`, maintenance windows, stuck thresholds, intervals),
//! pause/resume, maintenance, mute, acknowledgement and the flap guard's
//! early release, through the engine and through the admin API (`oneshot`,
//! no socket).

mod support;

use std::time::Duration;

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use keel_notify::Priority;
use serde_json::{Value, json};
use tower::ServiceExt;
use vm_watchdog::{ControlError, VmStatus, Window};

use support::{Harness, ScriptedApi, file, harness, instance, run_for};

const S: fn(u64) -> Duration = Duration::from_secs;
const TOKEN: &str = "0123456789abcdef-admin";

/// One running VM `web-1` (`i-1`, port on 10.0.0.1) with `spec` changes,
/// two minutes after the start.
async fn running(change: impl FnOnce(&mut vm_watchdog::VmSpec)) -> (Harness, ScriptedApi) {
    let api = ScriptedApi::default();
    api.add("i-1", VmStatus::Running, Some("10.0.0.1"));
    let h = harness(api.clone());
    let mut spec = instance("web-1", "i-1");
    change(&mut spec);
    h.engine.apply(&file(vec![spec]));
    run_for(S(120)).await;
    (h, api)
}

fn stop(h: &Harness, api: &ScriptedApi) {
    api.set_status("i-1", VmStatus::Stopped);
    h.probes.set_down("10.0.0.1", true);
}

fn starts(api: &ScriptedApi) -> usize {
    api.calls_to("start", "i-1").len()
}

#[tokio::test(start_paused = true)]
async fn an_alert_only_vm_is_alerted_and_reminded_but_never_started() {
    let (h, api) = running(|s| s.auto_start = false).await;
    stop(&h, &api);
    run_for(S(10)).await;
    let alerts = h.inbox.titled("VM web-1 is STOPPED");
    assert_eq!(alerts.len(), 1, "{:?}", h.inbox.all());
    assert_eq!(alerts[0].priority, Priority::Critical);
    run_for(S(16 * 60)).await;
    assert_eq!(starts(&api), 0);
    assert_eq!(h.inbox.titled("still STOPPED").len(), 1);
    // Acknowledged: no more reminders while it stays down.
    h.engine.ack("web-1").unwrap();
    run_for(S(31 * 60)).await;
    assert_eq!(h.inbox.titled("still STOPPED").len(), 1);
    assert_eq!(starts(&api), 0);
    // Started by hand: recovered, and the acknowledgement ends with it.
    api.set_status("i-1", VmStatus::Running);
    h.probes.set_down("10.0.0.1", false);
    run_for(S(20)).await;
    assert_eq!(h.inbox.titled("VM web-1 recovered").len(), 1);
    let view = h.engine.vm_view("web-1").unwrap();
    assert_eq!(view["acknowledged"], false);
    assert_eq!(view["down_since"], Value::Null);
    assert_eq!(
        h.engine.ack("web-1").unwrap_err(),
        ControlError::NotDown("web-1".into())
    );
}

#[tokio::test(start_paused = true)]
async fn a_paused_vm_is_neither_started_nor_alerted_until_resumed() {
    let (h, api) = running(|_| {}).await;
    h.engine.pause("web-1").unwrap();
    stop(&h, &api);
    run_for(S(120)).await;
    assert_eq!(starts(&api), 0);
    assert!(h.inbox.all().is_empty(), "{:?}", h.inbox.all());
    assert_eq!(h.engine.status_of("web-1"), Some(VmStatus::Stopped));
    assert_eq!(h.engine.vm_view("web-1").unwrap()["supervised"], false);
    // Resume acts at once, not at the next routine check.
    h.engine.resume("web-1").unwrap();
    run_for(S(1)).await;
    assert_eq!(starts(&api), 1);
    assert_eq!(h.inbox.titled("VM web-1 is STOPPED").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_operators_maintenance_ends_by_itself() {
    let (h, api) = running(|_| {}).await;
    h.engine.start_maintenance("web-1", S(3_600)).unwrap();
    let view = h.engine.vm_view("web-1").unwrap();
    assert_eq!(view["maintenance"]["source"], "operator");
    stop(&h, &api);
    run_for(S(59 * 60)).await;
    assert_eq!(starts(&api), 0);
    assert!(h.inbox.all().is_empty(), "{:?}", h.inbox.all());
    run_for(S(2 * 60)).await;
    assert_eq!(starts(&api), 1, "started once the hour is over");
    assert_eq!(h.inbox.titled("VM web-1 is STOPPED").len(), 1);
    assert_eq!(
        h.engine.vm_view("web-1").unwrap()["maintenance"],
        Value::Null
    );
}

#[tokio::test(start_paused = true)]
async fn a_maintenance_window_of_vms_yaml_holds_starts_and_alerts() {
    let now = chrono::Utc::now();
    let (h, api) = running(|s| {
        s.maintenance = vec![Window::Once {
            start: now - chrono::Duration::hours(1),
            end: now + chrono::Duration::hours(1),
        }];
    })
    .await;
    stop(&h, &api);
    run_for(S(60)).await;
    assert_eq!(starts(&api), 0);
    assert!(h.inbox.all().is_empty(), "{:?}", h.inbox.all());
    let view = h.engine.vm_view("web-1").unwrap();
    assert_eq!(view["maintenance"]["source"], "window");
    // A reload without the window: supervised again at the next check.
    h.engine.apply(&file(vec![instance("web-1", "i-1")]));
    run_for(S(10)).await;
    assert_eq!(starts(&api), 1);
    assert_eq!(h.inbox.titled("VM web-1 is STOPPED").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_muted_vm_is_still_started_but_not_alerted() {
    let (h, api) = running(|_| {}).await;
    h.engine.mute("web-1", S(2 * 3_600)).unwrap();
    stop(&h, &api);
    run_for(S(60)).await;
    assert!(starts(&api) >= 1);
    assert_eq!(api.status("i-1"), Some(VmStatus::Running));
    h.probes.set_down("10.0.0.1", false);
    run_for(S(60)).await;
    assert!(h.inbox.all().is_empty(), "{:?}", h.inbox.all());
    // Unmuted: the next stop is alerted.
    h.engine.unmute("web-1").unwrap();
    stop(&h, &api);
    run_for(S(20)).await;
    assert_eq!(h.inbox.titled("VM web-1 is STOPPED").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn per_vm_stuck_threshold_and_interval() {
    let (h, api) = running(|s| {
        s.stuck_after = Some(S(60));
        s.min_check_interval = Some(S(20));
    })
    .await;
    api.set_status("i-1", VmStatus::Starting);
    h.probes.set_down("10.0.0.1", true);
    run_for(S(5 * 60)).await;
    let stuck = h.inbox.titled("VM web-1 stuck in STARTING");
    assert_eq!(stuck.len(), 1, "{:?}", h.inbox.all());
    // Its own minimum: no two status reads closer than 20 s (±10 %).
    let reads = api.calls_to("get", "i-1");
    let gaps = support::gaps(&reads);
    assert!(gaps.iter().all(|g| *g >= S(17)), "{gaps:?}");
}

#[tokio::test(start_paused = true)]
async fn resume_releases_the_flap_guard_at_once() {
    let (h, api) = running(|_| {}).await;
    for _ in 0..6 {
        api.set_status("i-1", VmStatus::Crashed);
        h.probes.set_down("10.0.0.1", true);
        run_for(S(10)).await;
        h.probes.set_down("10.0.0.1", false);
        run_for(S(110)).await;
    }
    assert_eq!(starts(&api), 5);
    assert!(h.engine.vm_view("web-1").unwrap()["flap_hold_until"].is_string());
    h.engine.resume("web-1").unwrap();
    run_for(S(2)).await;
    assert_eq!(starts(&api), 6);
    // The resolved notice is an info: out after its 10 s debounce.
    run_for(S(15)).await;
    assert_eq!(
        h.inbox
            .titled("VM web-1: cool-off over, restarting it again")
            .len(),
        1
    );
    assert_eq!(
        h.engine.vm_view("web-1").unwrap()["flap_hold_until"],
        Value::Null
    );
}

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        request = request.header("authorization", format!("Bearer {t}"));
    }
    let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
    let response = app
        .clone()
        .oneshot(request.body(body).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test(start_paused = true)]
async fn the_admin_api_needs_the_token_to_act_and_answers_json_errors() {
    let (h, api) = running(|s| s.topic_id = Some(7)).await;
    // Without ADMIN_TOKEN: listings open, actions 403.
    let open = vm_watchdog::admin::routes(h.engine.clone(), None);
    let (status, body) = call(&open, "GET", "/vms", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body[0]["name"], "web-1");
    assert_eq!(body[0]["status"], "RUNNING");
    assert_eq!(body[0]["topic_id"], 7);
    let (status, body) = call(&open, "POST", "/vms/web-1/pause", Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        body["error"].as_str().unwrap().contains("ADMIN_TOKEN"),
        "{body}"
    );

    let app = vm_watchdog::admin::routes(h.engine.clone(), Some(TOKEN.into()));
    let (status, body) = call(&app, "POST", "/vms/web-1/pause", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["error"].is_string());
    let (status, _) = call(
        &app,
        "POST",
        "/vms/web-1/pause",
        Some("wrong-token-000000"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = call(&app, "POST", "/vms/web-1/pause", Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["paused"], true);
    let (status, body) = call(&app, "GET", "/vms/nope", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "no VM named `nope` is configured");
    let (status, _) = call(&app, "POST", "/vms/nope/resume", Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = call(&app, "POST", "/vms/web-1/ack", Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        body["error"].as_str().unwrap().contains("not down"),
        "{body}"
    );
    let (status, body) = call(
        &app,
        "POST",
        "/vms/web-1/maintenance",
        Some(TOKEN),
        Some(json!({ "duration": "forever" })),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["error"].as_str().unwrap().contains("forever"),
        "{body}"
    );
    let (status, body) = call(
        &app,
        "POST",
        "/vms/web-1/maintenance",
        Some(TOKEN),
        Some(json!({ "duration": "2h" })),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["maintenance"]["source"], "operator");
    let (status, body) = call(&app, "DELETE", "/vms/web-1/maintenance", Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["maintenance"], Value::Null);
    let (status, body) = call(
        &app,
        "POST",
        "/vms/web-1/mute",
        Some(TOKEN),
        Some(json!({ "duration": 600 })),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["muted_until"].is_string());
    let (status, body) = call(&app, "POST", "/vms/web-1/resume", Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (body["paused"].clone(), body["muted_until"].clone()),
        (json!(false), Value::Null)
    );

    // Down, then acknowledged through the API.
    stop(&h, &api);
    api.inner.lock().start_sticks = true;
    run_for(S(10)).await;
    let (status, body) = call(&app, "POST", "/vms/web-1/ack", Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["acknowledged"], true);
    assert!(body["down_since"].is_string());

    // Breakers: listed openly, forced only with the token.
    let (status, body) = call(&app, "GET", "/breakers", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let name = body[0]["name"].as_str().unwrap().to_owned();
    let path = format!("/breakers/{name}/open");
    assert_eq!(
        call(&app, "POST", &path, None, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&open, "POST", &path, Some(TOKEN), None).await.0,
        StatusCode::FORBIDDEN
    );
    let (status, body) = call(&app, "POST", &path, Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["state"], "forced_open");
    let (status, body) = call(&app, "GET", "/vms/web-1/nothing", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "no such endpoint");
    let (status, body) = call(&app, "GET", "/vms/web-1/pause", None, None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(body["error"].is_string());
    let (status, body) = call(&app, "POST", "/breakers/nope/open", Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].is_string());
}

#[tokio::test(start_paused = true)]
async fn status_summarises_what_needs_attention() {
    let (h, api) = running(|_| {}).await;
    assert_eq!(
        h.engine.summary(),
        "1 VMs watched, 0 down. Nothing down, paused, muted or in maintenance."
    );
    api.inner.lock().start_sticks = true;
    stop(&h, &api);
    run_for(S(10)).await;
    h.engine.ack("web-1").unwrap();
    h.engine.mute("web-1", S(3_600)).unwrap();
    let text = h.engine.summary();
    assert!(text.starts_with("1 VMs watched, 1 down."), "{text}");
    assert!(text.contains("web-1: down (STOPPED) since"), "{text}");
    assert!(text.contains("acknowledged; muted until"), "{text}");
}
