//! The daemon: in-process (work queue, requeues, deletion) and as the
//! binary (admin routes, SIGTERM).

use std::time::Duration;

use crate::support::{DEV, Env};
use goman_controller::cli;
use goman_controller::daemon::{Daemon, DaemonSettings};
use goman_controller::model::Phase;
use tokio_util::sync::CancellationToken;

/// Waits up to two minutes: moto's server closes every connection, and
/// under load a new connection to it now and then stalls for seconds (the
/// pipeline's attempt timeout cuts it and retries).
async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..2400 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_daemon_reconciles_every_cluster_and_forgets_deleted_ones() {
    let env = Env::start().await;
    let parts = env.parts("journal", &[]).await;
    let r = parts.reconciler.clone();
    let daemon = Daemon::new(
        r.clone(),
        DaemonSettings {
            watch_interval: Duration::from_millis(500),
            workers: 2,
            requeue_scale: 0.05,
            ..DaemonSettings::default()
        },
    );
    let stop = CancellationToken::new();
    let running = tokio::spawn(daemon.clone().run(stop.clone()));
    for name in ["alpha", "beta", "gamma"] {
        cli::apply(
            r.store(),
            "default",
            &DEV.replace("name: prod", &format!("name: {name}")),
        )
        .await
        .unwrap();
    }
    wait_for("three clusters Running", async || {
        let mut all = true;
        for name in ["alpha", "beta", "gamma"] {
            let doc = r.store().get(name).await.unwrap().unwrap().doc;
            all &= doc.status.phase == Phase::Running;
        }
        all
    })
    .await;
    assert!(daemon.has_listed());
    cli::delete(r.store(), "beta").await.unwrap();
    wait_for("beta deleted", async || {
        r.store().get("beta").await.unwrap().is_none()
    })
    .await;
    wait_for("the daemon forgets beta", async || {
        daemon.clusters().iter().all(|c| c.name != "beta")
    })
    .await;
    let views = daemon.clusters();
    assert_eq!(
        views.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["alpha", "gamma"]
    );
    assert!(
        views
            .iter()
            .all(|c| c.phase == Some(Phase::Running) && c.failures == 0),
        "{views:?}"
    );
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .unwrap()
        .unwrap();
    assert!(r.metrics().reconciles("ok") >= 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_binary_serves_its_admin_routes_and_stops_on_sigterm() {
    let env = Env::start().await;
    let parts = env.parts("journal", &[]).await;
    cli::apply(parts.reconciler.store(), "default", DEV)
        .await
        .unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let journal = env.dir.path().join("journal-bin");
    let addr = format!("127.0.0.1:{port}");
    let mut args = env.args_with(&[
        "--journal",
        journal.to_str().unwrap(),
        "--watch-interval",
        "200ms",
        "--admin-addr",
        &addr,
    ]);
    args.push("run".into());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_goman-controller"))
        .args(&args)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();
    let store = parts.reconciler.store().clone();
    wait_for("prod Running", async || {
        store.get("prod").await.unwrap().unwrap().doc.status.phase == Phase::Running
    })
    .await;
    wait_for("ready", async || {
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    // The pass that wrote Running counts itself only after it returns: poll
    // until its outcome (a labelled family, absent until first counted) is
    // on the page.
    let names = [
        "goman_reconcile_total",
        "goman_aws_calls_total",
        "goman_instances_created_total",
        "goman_breaker_state",
    ];
    wait_for("every metric on /metrics", async || {
        let Ok(response) = http.get(format!("{base}/metrics")).send().await else {
            return false;
        };
        let metrics = response.text().await.unwrap_or_default();
        names.iter().all(|name| metrics.contains(name))
    })
    .await;
    let json: serde_json::Value = http
        .get(format!("{base}/metrics.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        json["reconciliation"]["prod"]["passes"].as_u64().unwrap() >= 1,
        "{json}"
    );
    let clusters: serde_json::Value = http
        .get(format!("{base}/clusters"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(clusters[0]["name"], "prod");
    let breakers: serde_json::Value = http
        .get(format!("{base}/breakers"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(breakers.as_array().unwrap().len(), 4, "{breakers}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(40), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
