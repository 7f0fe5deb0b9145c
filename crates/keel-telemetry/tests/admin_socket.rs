//! The admin server over a real loopback socket, including graceful shutdown
//! with a request in flight.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use keel_telemetry::{AdminState, HttpServer, MetricsRegistry, Readiness, Shutdown, router};
use tokio::sync::{Notify, oneshot};

#[tokio::test]
async fn serves_admin_routes_and_finishes_in_flight_requests_on_shutdown() -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    let metrics = MetricsRegistry::new("socket_test")?;
    let readiness = Readiness::new();
    readiness.add_fn("always", || async { Ok::<_, std::io::Error>(()) })?;

    // A slow admin route whose handler tells the test it started and then
    // waits until the test releases it.
    let (started_tx, started_rx) = oneshot::channel::<()>();
    let started_tx = Arc::new(parking_lot::Mutex::new(Some(started_tx)));
    let release = Arc::new(Notify::new());
    let release_in_handler = release.clone();
    let slow = Router::new().route(
        "/slow",
        get(move || {
            let started = started_tx.lock().take();
            let release = release_in_handler.clone();
            async move {
                if let Some(tx) = started {
                    let _ = tx.send(());
                }
                release.notified().await;
                "done"
            }
        }),
    );
    let state = AdminState::builder(metrics)
        .readiness(readiness)
        .shutdown(shutdown.clone())
        .status("/status", || async { serde_json::json!({ "ok": true }) })
        .routes(slow)
        .build()?;
    let server = HttpServer::bind("127.0.0.1:0".parse()?, router(state), &shutdown).await?;
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();

    let health: serde_json::Value = client
        .get(format!("{base}/healthz"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(health, serde_json::json!({ "status": "ok" }));
    let ready = client.get(format!("{base}/readyz")).send().await?;
    assert_eq!(ready.status(), 200);
    let metrics = client.get(format!("{base}/metrics")).send().await?;
    assert_eq!(
        metrics.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(metrics.text().await?.ends_with("# EOF\n"));
    let status: serde_json::Value = client
        .get(format!("{base}/status"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(status["ok"], true);

    // Start a request, then shut down while it is in flight.
    let in_flight = tokio::spawn({
        let url = format!("{base}/slow");
        async move { reqwest::get(url).await?.text().await }
    });
    started_rx.await?;
    shutdown.trigger();
    wait_until_refused(addr).await;

    // The in-flight request still gets its answer.
    release.notify_one();
    assert_eq!(in_flight.await??, "done");
    let report = shutdown.drain(Duration::from_secs(10)).await;
    assert!(report.is_clean(), "{report:?}");
    server.wait().await?;
    Ok(())
}

#[tokio::test]
async fn binding_a_used_port_is_a_typed_error() -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    let app = router(AdminState::builder(MetricsRegistry::new("a")?).build()?);
    let first = HttpServer::bind("127.0.0.1:0".parse()?, app.clone(), &shutdown).await?;
    let err = HttpServer::bind(first.local_addr(), app, &shutdown)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, keel_telemetry::TelemetryError::Bind { addr, .. } if *addr == first.local_addr()),
        "{err}"
    );
    shutdown.trigger();
    first.wait().await?;
    Ok(())
}

/// Polls (bounded) until the server has stopped accepting connections.
async fn wait_until_refused(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the admin server still accepts connections after shutdown"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
