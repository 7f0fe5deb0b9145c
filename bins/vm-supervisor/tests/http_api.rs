//! The admin API over a real supervisor and fake VMs, through the router
//! (no socket).

mod support;

use axum::body::Body;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use support::*;
use tower::ServiceExt;
use vm_supervisor::supervisor::VmState;

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = http::Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_show_recover_pause_resume_add_delete() {
    let lab = Lab::new();
    let vms = lab.write_config(&[lab.vm_yaml("vm-1", &[], "")]);
    let run = start(settings(&lab), vms).await;
    let s = &run.supervisor;
    let app = vm_supervisor::http::routes(s.clone(), Some("t0ken".into()));
    let first = wait_healthy(s, "vm-1", None).await;

    assert_eq!(call(&app, "GET", "/vms", None, None).await.0, 401);
    assert_eq!(call(&app, "GET", "/vms", Some("wrong"), None).await.0, 401);
    let (status, list) = call(&app, "GET", "/vms", Some("t0ken"), None).await;
    assert_eq!(status, 200);
    let vm = &list[0];
    assert_eq!(vm["id"], "vm-1");
    assert_eq!(vm["state"], "running");
    assert_eq!(vm["healthy"], true);
    assert_eq!(vm["pid"], first.pid.unwrap());
    assert_eq!(vm["restarts"], 0);
    assert!(vm["uptime_s"].is_u64());
    assert!(vm.get("last_reason").is_some());

    let (status, one) = call(&app, "GET", "/vms/vm-1", Some("t0ken"), None).await;
    assert_eq!(status, 200);
    assert_eq!(one["attempts"][0]["reason"], "initial_start");
    assert_eq!(
        call(&app, "GET", "/vms/nope", Some("t0ken"), None).await.0,
        404
    );

    // Recover really acts: a new process.
    assert_eq!(
        call(&app, "POST", "/vms/vm-1/recover", Some("t0ken"), None)
            .await
            .0,
        202
    );
    let second = wait_healthy(s, "vm-1", first.pid).await;
    assert_eq!(second.last_reason.as_deref(), Some("manual"));

    // Paused: a crash is not recovered; resume recovers it.
    assert_eq!(
        call(&app, "POST", "/vms/vm-1/pause", Some("t0ken"), None)
            .await
            .0,
        202
    );
    wait_for("paused", || {
        s.get("vm-1").filter(|v| v.state == VmState::Paused)
    })
    .await;
    sigkill(second.pid.unwrap());
    wait_for("pid gone", || s.get("vm-1").filter(|v| v.pid.is_none())).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(s.get("vm-1").unwrap().state, VmState::Paused);
    assert!(lab.processes().is_empty(), "not recovered while paused");
    assert_eq!(
        call(&app, "POST", "/vms/vm-1/resume", Some("t0ken"), None)
            .await
            .0,
        202
    );
    wait_healthy(s, "vm-1", second.pid).await;

    // Add and delete.
    let spec: Value = serde_yaml::from_str(
        &lab.vm_yaml("vm-2", &[], "")
            .trim_start()
            .trim_start_matches("- ")
            .replace("\n    ", "\n"),
    )
    .unwrap();
    let (status, body) = call(&app, "POST", "/vms", Some("t0ken"), Some(spec.clone())).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        call(&app, "POST", "/vms", Some("t0ken"), Some(spec))
            .await
            .0,
        409
    );
    assert_eq!(
        call(
            &app,
            "POST",
            "/vms",
            Some("t0ken"),
            Some(json!({"id": "bad id", "command": "/x", "socket": "/tmp/s"}))
        )
        .await
        .0,
        422
    );
    let mut same_socket = json!({"id": "vm-3", "command": FAKE_VMM});
    same_socket["socket"] = json!(lab.socket("vm-1").display().to_string());
    let (status, body) = call(&app, "POST", "/vms", Some("t0ken"), Some(same_socket)).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("vm-1's socket"),
        "{body}"
    );
    let vm2 = wait_healthy(s, "vm-2", None).await;
    assert_eq!(lab.processes().len(), 2);
    assert_eq!(
        call(&app, "DELETE", "/vms/vm-2", Some("t0ken"), None)
            .await
            .0,
        200
    );
    assert!(s.get("vm-2").is_none());
    assert!(
        !lab.processes().contains(&vm2.pid.unwrap()),
        "deleted VM stopped"
    );
    assert_eq!(
        call(&app, "DELETE", "/vms/vm-2", Some("t0ken"), None)
            .await
            .0,
        404
    );
    s.shutdown(std::time::Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_host_recovers_nothing_until_undrained() {
    let lab = Lab::new();
    let vms = lab.write_config(&[lab.vm_yaml("vm-1", &[], "")]);
    let run = start(settings(&lab), vms).await;
    let s = &run.supervisor;
    let app = vm_supervisor::http::routes(s.clone(), None);
    let first = wait_healthy(s, "vm-1", None).await;

    let (status, state) = call(&app, "GET", "/drain", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(state["recovering"], true);
    let (status, state) = call(&app, "POST", "/drain", None, Some(json!({"drained": true}))).await;
    assert_eq!(status, 200);
    assert_eq!(
        (state["drained"].clone(), state["recovering"].clone()),
        (json!(true), json!(false))
    );
    assert_eq!(
        call(
            &app,
            "POST",
            "/drain",
            None,
            Some(json!({"drained": "yes"}))
        )
        .await
        .0,
        422
    );

    // A crash while drained is seen but not recovered.
    sigkill(first.pid.unwrap());
    wait_for("pid gone", || s.get("vm-1").filter(|v| v.pid.is_none())).await;
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert!(lab.processes().is_empty(), "not recovered while drained");

    // Undrained: recovered.
    let (_, state) = call(
        &app,
        "POST",
        "/drain",
        None,
        Some(json!({"drained": false})),
    )
    .await;
    assert_eq!(state["recovering"], true);
    wait_healthy(s, "vm-1", first.pid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_and_recovery_are_switched_at_run_time() {
    let lab = Lab::new();
    let vms = lab.write_config(&[lab.vm_yaml("vm-1", &[], "")]);
    let run = start(settings(&lab), vms).await;
    let s = &run.supervisor;
    let app = vm_supervisor::http::routes(s.clone(), Some("t0ken".into()));
    let first = wait_healthy(s, "vm-1", None).await;
    let t = Some("t0ken");

    assert_eq!(call(&app, "GET", "/status", None, None).await.0, 401);
    assert_eq!(
        call(&app, "POST", "/recovery/disable", None, None).await.0,
        401
    );
    let (status, mut body) = call(&app, "GET", "/status", t, None).await;
    assert_eq!(status, 200);
    // Other tests' fake VMs may show up there (this test runs beside them).
    assert!(body["unknown_processes"].is_array(), "{body}");
    body.as_object_mut().unwrap().remove("unknown_processes");
    assert_eq!(
        body,
        json!({"drained": false, "short_circuited": false, "recovering": true,
               "health_checks": true, "recovery": true, "config_ok": true,
               "config_error": null, "vms": 1})
    );

    // Health checks off: no probe runs, so a failing API goes unnoticed.
    let (status, body) = call(&app, "POST", "/health-checks/disable", t, None).await;
    assert_eq!((status, &body["health_checks"]), (200, &json!(false)));
    wait_for("probe removed", || s.health("vm-1").is_none().then_some(())).await;
    fault(&lab.socket("vm-1"), r#"{"fault":"error"}"#).await;
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let v = s.get("vm-1").unwrap();
    assert_eq!(
        (v.pid, v.state, v.healthy),
        (first.pid, VmState::Running, true)
    );
    // On again: checked anew, found failing, recovered.
    let (_, body) = call(&app, "POST", "/health-checks/enable", t, None).await;
    assert_eq!(body["health_checks"], true);
    let second = wait_healthy(s, "vm-1", first.pid).await;
    assert_eq!(second.last_reason.as_deref(), Some("health_check_failed"));

    // Recovery off: an exit is seen, not acted on; on again: recovered.
    let (_, body) = call(&app, "POST", "/recovery/disable", t, None).await;
    assert_eq!(
        (body["recovery"].clone(), body["recovering"].clone()),
        (json!(false), json!(false))
    );
    sigkill(second.pid.unwrap());
    wait_for("pid gone", || s.get("vm-1").filter(|v| v.pid.is_none())).await;
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert!(
        lab.processes().is_empty(),
        "not recovered while switched off"
    );
    assert_eq!(s.get("vm-1").unwrap().state, VmState::Unhealthy);
    let (_, body) = call(&app, "POST", "/recovery/enable", t, None).await;
    assert_eq!(body["recovering"], true);
    wait_healthy(s, "vm-1", second.pid).await;

    // POST /reload: the file's errors come back as 422.
    std::fs::write(lab.config_path(), "vms: 3\n").unwrap();
    let (status, body) = call(&app, "POST", "/reload", t, None).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("SUPERVISOR_CONFIG")
    );
    let (_, body) = call(&app, "GET", "/status", t, None).await;
    assert_eq!(body["config_ok"], false);
    s.shutdown(std::time::Duration::from_secs(5)).await;
}
