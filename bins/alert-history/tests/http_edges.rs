//! Who may read, how tokens are presented, and requests that stall or
//! arrive in a form the service cannot read.

mod support;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use futures::StreamExt;
use support::{TestApp, firing, payload};

const READS: [&str; 9] = [
    "/history",
    "/alerts/abc",
    "/report",
    "/dashboard",
    "/api/dashboard/overview",
    "/api/dashboard/charts",
    "/api/dashboard/alerts/recent",
    "/metrics",
    "/health/detailed",
];

async fn get_with(t: &TestApp, path: &str, auth: Option<&str>) -> (StatusCode, Option<String>) {
    let mut request = Request::get(path);
    if let Some(auth) = auth {
        request = request.header(header::AUTHORIZATION, auth);
    }
    let (status, headers, _) = t.request(request.body(Body::empty()).unwrap()).await;
    let challenge = headers
        .get(header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned());
    (status, challenge)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_open_by_default_even_with_an_api_token() {
    let t = TestApp::with_config(support::sqlite().await, |c| {
        c.api_token = Some("admin".into());
    })
    .await;
    for path in READS {
        let (status, _) = get_with(&t, path, None).await;
        assert_ne!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_token_guards_every_read_but_not_the_probes() {
    let t = TestApp::with_config(support::sqlite().await, |c| {
        c.read_token = Some("viewer".into());
        c.api_token = Some("admin".into());
        c.webhook_token = Some("hook".into());
    })
    .await;
    for path in READS {
        let (status, challenge) = get_with(&t, path, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(challenge.unwrap().contains("Basic"), "{path}");
        assert_eq!(
            get_with(&t, path, Some("Bearer wrong")).await.0,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
        for auth in [
            "Bearer viewer",
            "BEARER viewer",
            "bearer admin",
            "Basic dTp2aWV3ZXI=",
        ] {
            let (status, _) = get_with(&t, path, Some(auth)).await;
            assert_ne!(status, StatusCode::UNAUTHORIZED, "{path} {auth}");
        }
    }
    for path in [
        "/healthz",
        "/readyz",
        "/health/liveness",
        "/health/readiness",
        "/health/database",
    ] {
        assert_eq!(get_with(&t, path, None).await.0, StatusCode::OK, "{path}");
    }
    // An unknown path is still 404, not 401.
    assert_eq!(get_with(&t, "/nope", None).await.0, StatusCode::NOT_FOUND);
    // The read token is not a webhook or admin token.
    let body = payload(vec![firing("A", "f1", 0, &[])]).to_string();
    for (path, token, expected) in [
        ("/webhook", "Bearer viewer", StatusCode::UNAUTHORIZED),
        ("/webhook", "BEARER hook", StatusCode::OK),
        (
            "/admin/retention",
            "Bearer viewer",
            StatusCode::UNAUTHORIZED,
        ),
        ("/admin/retention", "bearer admin", StatusCode::OK),
    ] {
        let (status, _, body) = t
            .request(
                Request::post(path)
                    .header(header::AUTHORIZATION, token)
                    .body(Body::from(body.clone()))
                    .unwrap(),
            )
            .await;
        assert_eq!(status, expected, "{path} {token}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_token_for_reads_guards_reads_with_the_api_token() {
    let t = TestApp::with_config(support::sqlite().await, |c| {
        c.api_token = Some("admin".into());
        c.api_token_for_reads = true;
    })
    .await;
    assert_eq!(
        get_with(&t, "/history", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get_with(&t, "/history", Some("Bearer admin")).await.0,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_body_is_415_not_malformed_json() {
    let t = TestApp::new(support::sqlite().await).await;
    let (status, _, body) = t
        .request(
            Request::post("/webhook")
                .header(header::CONTENT_ENCODING, "gzip")
                .body(Body::from(vec![0x1f, 0x8b, 8, 0]))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("gzip"), "{body}");
}

/// A body that sends one chunk and then nothing is answered 408 after
/// `BODY_READ_TIMEOUT_SECONDS` (paused time: no real wait).
#[tokio::test]
async fn a_stalled_body_is_408_after_the_body_timeout() {
    let t = TestApp::with_config(support::sqlite().await, |c| {
        c.body_read_timeout_seconds = 5;
    })
    .await;
    tokio::time::pause();
    let first: Result<bytes::Bytes, std::io::Error> =
        Ok(bytes::Bytes::from_static(b"{\"alerts\":["));
    let stalled = futures::stream::iter([first]).chain(futures::stream::pending());
    let started = tokio::time::Instant::now();
    let (status, _, body) = t
        .request(
            Request::post("/webhook")
                .body(Body::from_stream(stalled))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{body}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
        "{waited:?}"
    );
}

/// A client that stops in the middle of its request head is disconnected
/// after `HEADER_READ_TIMEOUT_SECONDS`, and does not hold the shutdown
/// drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_head_is_cut_off_and_does_not_hold_the_drain() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = support::sqlite().await;
    let mut config = alert_history::Config::for_database(&db.url);
    config.header_read_timeout_seconds = 1;
    config.body_read_timeout_seconds = 1;
    let service = alert_history::Service::start(&config).await.unwrap();
    let addr = service.local_addr();

    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"POST /webhook HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "still connected after 10 s");

    // A body that stops arriving: 408 after BODY_READ_TIMEOUT_SECONDS.
    let mut body = tokio::net::TcpStream::connect(addr).await.unwrap();
    body.write_all(
        b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"alerts\":[",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), body.read_to_end(&mut answer))
        .await
        .expect("answered within 10 s")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // Another stalled client, then shutdown: the drain ends at once.
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let report = service.stop(Duration::from_secs(10)).await;
    assert!(started.elapsed() < Duration::from_secs(5), "{report:?}");
    assert_eq!(report.abandoned, 0, "{report:?}");
    drop(stalled);
}

/// Alert names with quotes, backslashes, newlines and 1 MB of text leave
/// `/metrics` parseable (`promtool check metrics`), bounded and without
/// injected samples.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_survive_hostile_alert_names() {
    let t = TestApp::new(support::sqlite().await).await;
    let huge = "y".repeat(1 << 20);
    let names = [
        "Disk \"root\" full",
        "back\\slash\\",
        "new\nline_injected 1\n# EOF",
        huge.as_str(),
    ];
    let alerts = names
        .iter()
        .enumerate()
        .map(|(i, name)| firing(name, &format!("h{i}"), 0, &[("namespace", name)]))
        .collect();
    assert_eq!(t.deliver(&payload(alerts)).await, 4);
    let (status, text) = t.get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let text = text.as_str().unwrap().to_owned();
    assert!(text.len() < 20_000, "{} bytes", text.len());
    assert!(
        !text.lines().any(|l| l.starts_with("line_injected")),
        "{text}"
    );
    assert_eq!(text.lines().filter(|l| *l == "# EOF").count(), 1, "{text}");
    let Ok(mut promtool) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        eprintln!("skipped the promtool check: promtool is not installed");
        return;
    };
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // promtool reads the Prometheus 0.0.4 text format: exit 1 is a parse
    // error (what an unescaped quote or newline causes); exit 3 is lint
    // findings, of which only "no help text" on counters is expected
    // (OpenMetrics puts HELP on the family name, the sample is `_total`).
    assert!(
        !report.contains("error while linting"),
        "promtool could not parse /metrics: {report}\n{text}"
    );
    match out.status.code() {
        Some(0) => {}
        Some(3) => {
            for finding in report.lines().filter(|l| !l.trim().is_empty()) {
                assert!(
                    finding.ends_with("_total no help text"),
                    "unexpected promtool finding {finding:?}"
                );
            }
        }
        other => panic!("promtool exited with {other:?}: {report}"),
    }
}

/// A row stored before ingest checked what is storable (here a number
/// outside f64 and JSON nested 200 deep) still reads back: its `raw` comes
/// back as text instead of the timeline failing with 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_stored_before_the_storable_check_still_read_back() {
    let t = TestApp::new(support::sqlite().await).await;
    t.deliver(&payload(vec![firing("Old", "old-1", 0, &[])]))
        .await;
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let raw = format!(r#"{{"status":"firing","n":1e400,"deep":{deep}}}"#);
    let pool = sqlx::SqlitePool::connect(&t.db.url).await.unwrap();
    sqlx::query("UPDATE alert_events SET raw = $1 WHERE fingerprint = 'old-1'")
        .bind(&raw)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let (status, body) = t.get("/alerts/old-1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["events"][0]["raw"], serde_json::json!(raw));
}
