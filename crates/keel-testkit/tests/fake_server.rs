//! The fake server framework over real sockets, driven with reqwest: routing
//! and recording, each fault, runtime changes, seeds, scripts and waits.

use std::time::Duration;

use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{Method, StatusCode};
use keel_testkit::{
    FakeControl, FakeServer, Fault, FaultConfig, FaultRenderer, RecordedRequest, ScriptedResponse,
    WaitTimeout, retry_after_secs,
};
use serde_json::{Value, json};

fn app() -> Router {
    Router::new()
        .route("/info", get(|| async { "running" }))
        .route("/echo", post(|body: String| async move { body }))
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

#[tokio::test]
async fn serves_the_router_and_records_every_request() -> anyhow::Result<()> {
    let server = FakeServer::start(app()).await;
    assert!(server.base_url().starts_with("http://127.0.0.1:"));
    let client = client();
    assert_eq!(
        client.get(server.url("/info")).send().await?.text().await?,
        "running"
    );
    let response = client
        .post(server.url("/echo?chat=%40ops&x=1"))
        .header("x-token", "secret")
        .json(&json!({ "text": "hello" }))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        client.get(server.url("/missing")).send().await?.status(),
        StatusCode::NOT_FOUND
    );

    let requests = server.wait_for_requests(3, Duration::from_secs(5)).await?;
    assert_eq!(requests.len(), 3);
    let echo = &requests[1];
    assert_eq!(echo.method, Method::POST);
    assert_eq!(echo.path, "/echo");
    assert_eq!(echo.query.as_deref(), Some("chat=%40ops&x=1"));
    assert_eq!(echo.query_param("chat").as_deref(), Some("@ops"));
    assert_eq!(echo.header("x-token"), Some("secret"));
    assert_eq!(echo.body_json::<Value>()?, json!({ "text": "hello" }));
    assert!(echo.was_served());
    assert_eq!(server.requests_to(Method::GET, "/info").len(), 1);
    server.clear_requests();
    assert_eq!(server.request_count(), 0);
    Ok(())
}

#[tokio::test]
async fn error_rate_answers_the_configured_status_and_can_be_switched_mid_test()
-> anyhow::Result<()> {
    let server = FakeServer::builder()
        .faults(FaultConfig::none().with_errors(1.0, StatusCode::INTERNAL_SERVER_ERROR))
        .start(app())
        .await;
    let client = client();
    assert_eq!(client.get(server.url("/info")).send().await?.status(), 500);
    server
        .faults()
        .update(|c| c.with_errors(1.0, StatusCode::SERVICE_UNAVAILABLE))?;
    let response = client.get(server.url("/info")).send().await?;
    assert_eq!(response.status(), 503);
    assert!(response.text().await?.contains("injected fault"));
    server.faults().clear();
    assert_eq!(client.get(server.url("/info")).send().await?.status(), 200);
    let faults: Vec<Option<Fault>> = server.requests().iter().map(|r| r.fault).collect();
    assert_eq!(
        faults,
        [
            Some(Fault::Error(StatusCode::INTERNAL_SERVER_ERROR)),
            Some(Fault::Error(StatusCode::SERVICE_UNAVAILABLE)),
            None
        ]
    );
    Ok(())
}

async fn statuses(seed: u64) -> Vec<u16> {
    let server = FakeServer::builder()
        .seed(seed)
        .faults(FaultConfig::none().with_errors(0.5, StatusCode::SERVICE_UNAVAILABLE))
        .start(app())
        .await;
    let client = client();
    let mut out = Vec::new();
    for _ in 0..40 {
        out.push(
            client
                .get(server.url("/info"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    out
}

#[tokio::test]
async fn the_same_seed_gives_the_same_faults_over_http() {
    let a = statuses(11).await;
    assert_eq!(a, statuses(11).await);
    assert_ne!(a, statuses(12).await);
    let failures = a.iter().filter(|s| **s == 503).count();
    assert!(
        (8..=32).contains(&failures),
        "{failures} of 40 failed at rate 0.5"
    );
}

#[tokio::test]
async fn latency_beyond_the_client_timeout_is_a_client_timeout() -> anyhow::Result<()> {
    let server = FakeServer::builder()
        .faults(FaultConfig::none().with_latency(Duration::from_secs(30), Duration::from_secs(30)))
        .start(app())
        .await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(200))
        .build()?;
    let err = client.get(server.url("/info")).send().await.unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(server.requests()[0].delay, Duration::from_secs(30));
    server.faults().clear();
    assert_eq!(client.get(server.url("/info")).send().await?.status(), 200);
    Ok(())
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() -> anyhow::Result<()> {
    let server = FakeServer::builder()
        .faults(FaultConfig::none().with_rate_limit(1.0, Duration::from_millis(2500)))
        .start(app())
        .await;
    let response = client().get(server.url("/info")).send().await?;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "3");
    Ok(())
}

/// Renders faults the way the Telegram Bot API does.
struct TelegramStyle;

impl FaultRenderer for TelegramStyle {
    fn rate_limited(&self, retry_after: Duration, _request: &RecordedRequest) -> Response {
        let secs = retry_after_secs(retry_after);
        (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(json!({
                "ok": false,
                "error_code": 429,
                "description": format!("Too Many Requests: retry after {secs}"),
                "parameters": { "retry_after": secs },
            })),
        )
            .into_response()
    }

    fn error(&self, status: StatusCode, request: &RecordedRequest) -> Response {
        (
            status,
            axum::Json(
                json!({ "ok": false, "error_code": status.as_u16(), "description": request.path }),
            ),
        )
            .into_response()
    }
}

#[tokio::test]
async fn a_renderer_speaks_the_fakes_wire_format() -> anyhow::Result<()> {
    let server = FakeServer::builder()
        .renderer(TelegramStyle)
        .start(app())
        .await;
    server.faults().push_next(Fault::RateLimited {
        retry_after: Duration::from_secs(34),
    });
    server
        .faults()
        .push_next(Fault::Error(StatusCode::BAD_GATEWAY));
    let client = client();
    let response = client.post(server.url("/echo")).body("x").send().await?;
    assert_eq!(response.status(), 429);
    let body: Value = response.json().await?;
    assert_eq!(body["parameters"]["retry_after"], 34);
    assert_eq!(body["description"], "Too Many Requests: retry after 34");
    let body: Value = client
        .post(server.url("/echo"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        body,
        json!({ "ok": false, "error_code": 502, "description": "/echo" })
    );
    Ok(())
}

#[tokio::test]
async fn a_drop_closes_the_connection_without_an_answer() -> anyhow::Result<()> {
    let server = FakeServer::start(app()).await;
    server.faults().push_next(Fault::Drop);
    let client = client();
    let err = client.get(server.url("/info")).send().await.unwrap_err();
    assert!(err.status().is_none() && !err.is_timeout(), "{err:?}");
    assert!(
        err.is_request() || err.is_connect(),
        "a transport error: {err:?}"
    );
    // The server itself keeps serving.
    assert_eq!(
        client.get(server.url("/info")).send().await?.text().await?,
        "running"
    );

    // Also on a kept-alive connection that already served a request.
    server.faults().push_next(Fault::Drop);
    assert!(client.get(server.url("/info")).send().await.is_err());
    assert_eq!(server.request_count(), 3);
    assert_eq!(server.requests()[2].fault, Some(Fault::Drop));
    Ok(())
}

/// Sends one raw HTTP/1.1 request and reads until the server closes: a FIN
/// gives `Ok` with what was read, an RST gives the read error.
async fn raw_get(server: &FakeServer, path: &str) -> std::io::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = server.base_url().trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await?;
    Ok(out)
}

#[tokio::test]
async fn a_reset_is_an_rst_and_a_drop_is_a_fin() -> anyhow::Result<()> {
    let server = FakeServer::start(app()).await;
    server.faults().push_next(Fault::Reset);
    let err = raw_get(&server, "/info").await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err:?}");
    server.faults().push_next(Fault::Drop);
    assert_eq!(
        raw_get(&server, "/info").await?,
        b"",
        "closed, nothing written"
    );
    let answered = raw_get(&server, "/info").await?;
    assert!(answered.starts_with(b"HTTP/1.1 200"), "{answered:?}");
    // Probabilistic resets, as a client library sees them.
    server.faults().set(FaultConfig::none().with_resets(1.0))?;
    let err = client().get(server.url("/info")).send().await.unwrap_err();
    assert!(err.status().is_none(), "{err:?}");
    assert_eq!(server.requests()[3].fault, Some(Fault::Reset));
    Ok(())
}

#[tokio::test]
async fn probabilistic_drops_fail_some_requests_at_transport_level() -> anyhow::Result<()> {
    let server = FakeServer::builder()
        .seed(3)
        .faults(FaultConfig::none().with_drops(0.5))
        .start(app())
        .await;
    let client = client();
    let mut transport_errors = 0;
    for _ in 0..20 {
        match client.get(server.url("/info")).send().await {
            Ok(response) => assert_eq!(response.status(), 200),
            Err(e) => {
                assert!(e.status().is_none());
                transport_errors += 1;
            }
        }
    }
    let dropped = server
        .requests()
        .iter()
        .filter(|r| r.fault == Some(Fault::Drop))
        .count();
    assert_eq!(transport_errors, dropped);
    assert!((3..=17).contains(&dropped), "{dropped}");
    Ok(())
}

#[tokio::test]
async fn one_shot_failures_then_success_is_the_retry_scenario() -> anyhow::Result<()> {
    let server = FakeServer::start(app()).await;
    server
        .faults()
        .fail_next(2, Fault::Error(StatusCode::SERVICE_UNAVAILABLE));
    let client = client();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            client
                .get(server.url("/info"))
                .send()
                .await?
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [503, 503, 200]);
    assert_eq!(server.faults().queued(), 0);
    Ok(())
}

#[tokio::test]
async fn scripts_queue_handle_and_default_per_route() -> anyhow::Result<()> {
    let server = FakeServer::start(Router::new()).await;
    let script = server.script();
    script.enqueue_all(
        Method::POST,
        "/start",
        [
            ScriptedResponse::json(
                StatusCode::CONFLICT,
                &json!({ "code": 9, "message": "RUNNING" }),
            ),
            ScriptedResponse::status(StatusCode::INTERNAL_SERVER_ERROR),
        ],
    );
    script.set_default(
        Method::POST,
        "/start",
        ScriptedResponse::text(StatusCode::OK, "started"),
    );
    script.set_handler(Method::GET, "/who", |request| {
        ScriptedResponse::text(
            StatusCode::OK,
            request.query_param("name").unwrap_or_default(),
        )
    });
    assert_eq!(script.remaining(Method::POST, "/start"), 2);

    let client = client();
    let first = client.post(server.url("/start")).send().await?;
    assert_eq!(first.status(), 409);
    assert_eq!(first.headers()["content-type"], "application/json");
    assert_eq!(first.json::<Value>().await?["message"], "RUNNING");
    assert_eq!(
        client.post(server.url("/start")).send().await?.status(),
        500
    );
    for _ in 0..2 {
        assert_eq!(
            client
                .post(server.url("/start"))
                .send()
                .await?
                .text()
                .await?,
            "started"
        );
    }
    assert_eq!(
        client
            .get(server.url("/who?name=vm-1"))
            .send()
            .await?
            .text()
            .await?,
        "vm-1"
    );
    // Another method on a scripted path falls through to the (empty) router.
    assert_eq!(client.get(server.url("/start")).send().await?.status(), 404);
    script.clear_route(Method::POST, "/start");
    assert_eq!(
        client.post(server.url("/start")).send().await?.status(),
        404
    );
    Ok(())
}

#[tokio::test]
async fn waiting_is_bounded_and_wakes_on_arrival() -> anyhow::Result<()> {
    let server = FakeServer::start(app()).await;
    let err = server
        .wait_for_requests(1, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        WaitTimeout {
            waited: Duration::from_millis(50),
            seen: 0
        }
    );
    let url = server.url("/echo");
    tokio::spawn(async move {
        for i in 0..3 {
            client()
                .post(&url)
                .body(format!("n{i}"))
                .send()
                .await
                .unwrap();
        }
    });
    let requests = server
        .wait_until(Duration::from_secs(10), |r| {
            r.iter().any(|r| r.body_text() == "n2")
        })
        .await?;
    assert_eq!(requests.len(), 3);
    Ok(())
}

#[tokio::test]
async fn the_layer_works_inside_any_axum_server() -> anyhow::Result<()> {
    let control = FakeControl::new(5);
    let router = app().layer(control.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let serve = tokio::spawn(async move { axum::serve(listener, router).await });
    control
        .faults()
        .push_next(Fault::Error(StatusCode::SERVICE_UNAVAILABLE));
    let client = client();
    assert_eq!(
        client
            .get(format!("http://{addr}/info"))
            .send()
            .await?
            .status(),
        503
    );
    assert_eq!(
        client
            .get(format!("http://{addr}/info"))
            .send()
            .await?
            .status(),
        200
    );
    // Without FakeServer's connection handle, a drop fails the response body.
    control.faults().push_next(Fault::Drop);
    let dropped = async {
        client
            .get(format!("http://{addr}/info"))
            .send()
            .await?
            .bytes()
            .await
    };
    assert!(dropped.await.is_err());
    assert_eq!(control.request_count(), 3);
    serve.abort();
    Ok(())
}

#[tokio::test]
async fn invalid_faults_are_rejected_and_stopping_closes_the_port() -> anyhow::Result<()> {
    let err = FakeServer::builder()
        .faults(FaultConfig::none().with_errors(0.1, StatusCode::BAD_REQUEST))
        .try_start(app())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("error_status"), "{err}");
    let server = FakeServer::start(app()).await;
    let addr = server.addr();
    assert!(
        server
            .faults()
            .set(FaultConfig::none().with_drops(-1.0))
            .is_err()
    );
    drop(server);
    // The accept loop is cancelled; give the runtime a moment to run it.
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "the port still accepts connections after drop");
    Ok(())
}
