//! The `Idempotency-Key` middleware: driven with `tower::ServiceExt::oneshot`
//! (no socket), plus one test over a real socket with reqwest.
#![cfg(feature = "axum")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, Request, Response, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use keel_idempotency::http::{Disposition, IDEMPOTENT_REPLAYED};
use keel_idempotency::{
    Begin, BeginRequest, Idempotency, IdempotencyKey, IdempotencyLayer, IdempotencyStore,
    InFlightPolicy, MemoryStore, OwnerId, Record, Settle, StoreError, StoreFuture,
};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tower::ServiceExt;

#[derive(Clone, Default)]
struct AppState {
    calls: Arc<AtomicU32>,
    started: Arc<Notify>,
    release: Arc<Notify>,
}

async fn create_order(State(s): State<AppState>, body: String) -> impl IntoResponse {
    let n = s.calls.fetch_add(1, Ordering::SeqCst) + 1;
    let echo: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    (
        StatusCode::CREATED,
        [("x-order-id", n.to_string())],
        axum::Json(json!({ "order": n, "echo": echo })),
    )
}

async fn validate(State(s): State<AppState>, body: String) -> Response<Body> {
    s.calls.fetch_add(1, Ordering::SeqCst);
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    if v["amount"].as_i64().is_some_and(|a| a < 0) {
        (StatusCode::BAD_REQUEST, "amount must be positive").into_response()
    } else {
        (StatusCode::CREATED, "ok").into_response()
    }
}

async fn flaky(State(s): State<AppState>) -> Response<Body> {
    if s.calls.fetch_add(1, Ordering::SeqCst) == 0 {
        (StatusCode::INTERNAL_SERVER_ERROR, "database down").into_response()
    } else {
        (StatusCode::CREATED, "created").into_response()
    }
}

async fn slow(State(s): State<AppState>) -> Response<Body> {
    let n = s.calls.fetch_add(1, Ordering::SeqCst) + 1;
    s.started.notify_one();
    s.release.notified().await;
    (StatusCode::CREATED, format!("slow {n}")).into_response()
}

async fn big(State(s): State<AppState>) -> Response<Body> {
    let n = s.calls.fetch_add(1, Ordering::SeqCst);
    (StatusCode::OK, format!("{n}:{}", "x".repeat(4096))).into_response()
}

async fn count(State(s): State<AppState>) -> String {
    (s.calls.fetch_add(1, Ordering::SeqCst) + 1).to_string()
}

fn app(layer: IdempotencyLayer<impl IdempotencyStore>) -> (Router, AppState) {
    let state = AppState::default();
    let router = Router::new()
        .route("/orders", post(create_order).get(count).put(count))
        .route("/validate", post(validate))
        .route("/flaky", post(flaky))
        .route("/slow", post(slow))
        .route("/big", post(big))
        .layer(layer)
        .with_state(state.clone());
    (router, state)
}

fn default_app() -> (Router, AppState) {
    app(IdempotencyLayer::builder(Idempotency::new())
        .required(true)
        .build()
        .unwrap())
}

fn request(method: Method, uri: &str, key: Option<&str>, body: Value) -> Request<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    if let Some(k) = key {
        b = b.header("idempotency-key", k);
    }
    b.body(Body::from(body.to_string())).unwrap()
}

fn post_req(uri: &str, key: Option<&str>, body: Value) -> Request<Body> {
    request(Method::POST, uri, key, body)
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, HeaderMap, Vec<u8>) {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec();
    (status, headers, body)
}

fn replayed(h: &HeaderMap) -> bool {
    h.get(&IDEMPOTENT_REPLAYED).is_some_and(|v| v == "true")
}

/// Checks an RFC 9457 problem body.
fn assert_problem(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    want: StatusCode,
    kind: &str,
) {
    assert_eq!(status, want, "{}", String::from_utf8_lossy(body));
    assert_eq!(headers["content-type"], "application/problem+json");
    let p: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(p["type"], format!("urn:keel:idempotency:{kind}"));
    assert_eq!(p["status"], want.as_u16());
    assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(p["detail"].as_str().is_some_and(|t| !t.is_empty()));
}

#[tokio::test]
async fn completed_response_is_replayed_with_its_headers() {
    let (app, state) = default_app();
    let body = json!({"item": "book", "qty": 1});
    let (s1, h1, b1) = send(&app, post_req("/orders", Some("order-1"), body.clone())).await;
    assert_eq!(s1, StatusCode::CREATED);
    assert!(!replayed(&h1));
    let (s2, h2, b2) = send(&app, post_req("/orders", Some("\"order-1\""), body.clone())).await;
    assert_eq!(s2, StatusCode::CREATED);
    assert!(replayed(&h2), "sf-string and bare forms are the same key");
    assert_eq!(b1, b2);
    assert_eq!(h2["x-order-id"], "1");
    assert_eq!(h2["content-type"], "application/json");
    assert_eq!(h2["content-length"], b2.len().to_string());
    assert_eq!(
        state.calls.load(Ordering::SeqCst),
        1,
        "the handler ran once"
    );
    // Another key runs again.
    let (s3, h3, _) = send(&app, post_req("/orders", Some("order-2"), body)).await;
    assert_eq!((s3, replayed(&h3)), (StatusCode::CREATED, false));
    assert_eq!(state.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn same_key_different_payload_is_422() {
    let (app, state) = default_app();
    send(&app, post_req("/orders", Some("k"), json!({"qty": 1}))).await;
    let (s, h, b) = send(&app, post_req("/orders", Some("k"), json!({"qty": 2}))).await;
    assert_problem(s, &h, &b, StatusCode::UNPROCESSABLE_ENTITY, "key-reused");
    // A different path with the same key is a different request too.
    let (s, h, b) = send(&app, post_req("/validate", Some("k"), json!({"qty": 1}))).await;
    assert_problem(s, &h, &b, StatusCode::UNPROCESSABLE_ENTITY, "key-reused");
    assert_eq!(state.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn missing_or_malformed_key_is_400_when_required() {
    let (app, state) = default_app();
    let (s, h, b) = send(&app, post_req("/orders", None, json!({}))).await;
    assert_problem(s, &h, &b, StatusCode::BAD_REQUEST, "key-missing");
    let long = "k".repeat(256);
    for bad in ["\"unterminated", "\"\"", long.as_str()] {
        let (s, h, b) = send(&app, post_req("/orders", Some(bad), json!({}))).await;
        assert_problem(s, &h, &b, StatusCode::BAD_REQUEST, "key-invalid");
    }
    assert_eq!(state.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn optional_key_passes_requests_without_one() {
    let (app, state) = app(IdempotencyLayer::new(Idempotency::new()));
    for _ in 0..2 {
        let (s, h, _) = send(&app, post_req("/orders", None, json!({}))).await;
        assert_eq!((s, replayed(&h)), (StatusCode::CREATED, false));
    }
    assert_eq!(state.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn uncovered_methods_pass_through() {
    let (app, state) = default_app();
    for method in [Method::GET, Method::PUT, Method::GET] {
        let (s, h, _) = send(&app, request(method, "/orders", Some("same"), json!({}))).await;
        assert_eq!((s, replayed(&h)), (StatusCode::OK, false));
    }
    assert_eq!(state.calls.load(Ordering::SeqCst), 3);

    // Covering PUT as well.
    let (app, state) = self::app(
        IdempotencyLayer::builder(Idempotency::new())
            .methods([Method::PUT])
            .build()
            .unwrap(),
    );
    send(&app, request(Method::PUT, "/orders", Some("p"), json!({}))).await;
    let (s, h, b) = send(&app, request(Method::PUT, "/orders", Some("p"), json!({}))).await;
    assert_eq!((s, replayed(&h), b), (StatusCode::OK, true, b"1".to_vec()));
    assert_eq!(state.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn in_flight_duplicate_is_409_then_replayed() {
    let (app, state) = default_app();
    let first = tokio::spawn({
        let app = app.clone();
        async move { send(&app, post_req("/slow", Some("s"), json!({}))).await }
    });
    state.started.notified().await;
    let (s, h, b) = send(&app, post_req("/slow", Some("s"), json!({}))).await;
    assert_problem(s, &h, &b, StatusCode::CONFLICT, "request-in-flight");
    let retry_after: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    state.release.notify_one();
    let (s1, _, b1) = first.await.unwrap();
    assert_eq!((s1, b1.as_slice()), (StatusCode::CREATED, &b"slow 1"[..]));
    let (s3, h3, b3) = send(&app, post_req("/slow", Some("s"), json!({}))).await;
    assert_eq!((s3, replayed(&h3), b3), (StatusCode::CREATED, true, b1));
    assert_eq!(state.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn waiting_policy_coalesces_duplicates() {
    let (app, state) = app(IdempotencyLayer::builder(Idempotency::new())
        .in_flight(InFlightPolicy::Wait {
            timeout: Duration::from_secs(5),
        })
        .build()
        .unwrap());
    let first = tokio::spawn({
        let app = app.clone();
        async move { send(&app, post_req("/slow", Some("w"), json!({}))).await }
    });
    state.started.notified().await;
    let second = tokio::spawn({
        let app = app.clone();
        async move { send(&app, post_req("/slow", Some("w"), json!({}))).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    state.release.notify_one();
    let (s1, h1, b1) = first.await.unwrap();
    let (s2, h2, b2) = second.await.unwrap();
    assert_eq!((s1, replayed(&h1)), (StatusCode::CREATED, false));
    assert_eq!((s2, replayed(&h2)), (StatusCode::CREATED, true));
    assert_eq!(b1, b2);
    assert_eq!(state.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn client_errors_are_not_stored_so_the_client_can_fix_them() {
    let (app, state) = default_app();
    let (s, h, _) = send(
        &app,
        post_req("/validate", Some("v"), json!({"amount": -5})),
    )
    .await;
    assert_eq!((s, replayed(&h)), (StatusCode::BAD_REQUEST, false));
    // Same key, corrected payload: runs (no 422, no replay of the 400).
    let (s, h, _) = send(&app, post_req("/validate", Some("v"), json!({"amount": 5}))).await;
    assert_eq!((s, replayed(&h)), (StatusCode::CREATED, false));
    let (s, h, _) = send(&app, post_req("/validate", Some("v"), json!({"amount": 5}))).await;
    assert_eq!((s, replayed(&h)), (StatusCode::CREATED, true));
    assert_eq!(state.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn server_errors_are_stored_as_retryable() {
    let (app, state) = default_app();
    let (s, h, _) = send(&app, post_req("/flaky", Some("f"), json!({"a": 1}))).await;
    assert_eq!(
        (s, replayed(&h)),
        (StatusCode::INTERNAL_SERVER_ERROR, false)
    );
    // The key stays bound to its payload...
    let (s, h, b) = send(&app, post_req("/flaky", Some("f"), json!({"a": 2}))).await;
    assert_problem(s, &h, &b, StatusCode::UNPROCESSABLE_ENTITY, "key-reused");
    // ...and the same request runs again.
    let (s, h, _) = send(&app, post_req("/flaky", Some("f"), json!({"a": 1}))).await;
    assert_eq!((s, replayed(&h)), (StatusCode::CREATED, false));
    let (s, h, _) = send(&app, post_req("/flaky", Some("f"), json!({"a": 1}))).await;
    assert_eq!((s, replayed(&h)), (StatusCode::CREATED, true));
    assert_eq!(state.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn disposition_can_store_server_errors_like_stripe() {
    let (app, state) = app(IdempotencyLayer::builder(Idempotency::new())
        .disposition(|status| {
            if status.is_client_error() {
                Disposition::Skip
            } else {
                Disposition::Store
            }
        })
        .build()
        .unwrap());
    send(&app, post_req("/flaky", Some("f"), json!({}))).await;
    let (s, h, b) = send(&app, post_req("/flaky", Some("f"), json!({}))).await;
    assert_eq!(
        (s, replayed(&h), b),
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            true,
            b"database down".to_vec()
        )
    );
    assert_eq!(state.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn oversized_request_is_413() {
    let (app, state) = app(IdempotencyLayer::builder(Idempotency::new())
        .max_body_bytes(64)
        .build()
        .unwrap());
    let (s, h, b) = send(
        &app,
        post_req("/orders", Some("big"), json!({"pad": "x".repeat(100)})),
    )
    .await;
    assert_problem(s, &h, &b, StatusCode::PAYLOAD_TOO_LARGE, "body-too-large");
    let (s, _, _) = send(
        &app,
        post_req("/orders", Some("small"), json!({"pad": "x"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(state.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn oversized_response_passes_through_unstored() {
    let (app, state) = app(IdempotencyLayer::builder(Idempotency::new())
        .max_response_bytes(1024)
        .build()
        .unwrap());
    let (s, h, b) = send(&app, post_req("/big", Some("b"), json!({}))).await;
    assert_eq!((s, replayed(&h)), (StatusCode::OK, false));
    assert_eq!(b.len(), 2 + 4096, "the whole body arrives");
    let (_, h, b) = send(&app, post_req("/big", Some("b"), json!({}))).await;
    assert!(!replayed(&h));
    assert!(b.starts_with(b"1:"), "ran again");
    assert_eq!(state.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn field_fingerprints_ignore_other_fields() {
    let (app, state) = app(IdempotencyLayer::builder(Idempotency::new())
        .fingerprint_fields(["/amount", "/currency"])
        .build()
        .unwrap());
    let (s, _, b1) = send(
        &app,
        post_req(
            "/orders",
            Some("pay"),
            json!({"amount": 5, "currency": "EUR", "sent_at": 1}),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, h, b2) = send(
        &app,
        post_req(
            "/orders",
            Some("pay"),
            json!({"currency": "EUR", "sent_at": 2, "amount": 5}),
        ),
    )
    .await;
    assert_eq!((s, replayed(&h)), (StatusCode::CREATED, true));
    assert_eq!(b1, b2);
    let (s, h, b) = send(
        &app,
        post_req(
            "/orders",
            Some("pay"),
            json!({"amount": 6, "currency": "EUR"}),
        ),
    )
    .await;
    assert_problem(s, &h, &b, StatusCode::UNPROCESSABLE_ENTITY, "key-reused");
    assert_eq!(state.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn scopes_separate_clients_using_the_same_key() {
    let (app, state) = app(IdempotencyLayer::builder(Idempotency::new())
        .scope(|parts| {
            parts
                .headers
                .get("x-client")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .build()
        .unwrap());
    let req = |client: &str| {
        let mut r = post_req("/orders", Some("same"), json!({}));
        r.headers_mut().insert("x-client", client.parse().unwrap());
        r
    };
    let (_, h, _) = send(&app, req("alice")).await;
    assert!(!replayed(&h));
    let (_, h, _) = send(&app, req("bob")).await;
    assert!(!replayed(&h), "another client's key is another key");
    let (_, h, _) = send(&app, req("alice")).await;
    assert!(replayed(&h));
    assert_eq!(state.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn responses_expire_after_the_ttl() {
    let idem = Idempotency::builder(MemoryStore::new())
        .lease(Duration::from_secs(5))
        .build()
        .unwrap();
    let (app, state) = app(IdempotencyLayer::builder(idem)
        .ttl(Duration::from_secs(10))
        .build()
        .unwrap());
    send(&app, post_req("/orders", Some("t"), json!({}))).await;
    tokio::time::advance(Duration::from_secs(9)).await;
    let (_, h, _) = send(&app, post_req("/orders", Some("t"), json!({}))).await;
    assert!(replayed(&h));
    tokio::time::advance(Duration::from_secs(1)).await;
    let (_, h, _) = send(&app, post_req("/orders", Some("t"), json!({}))).await;
    assert!(!replayed(&h));
    assert_eq!(state.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn dropped_request_releases_its_key() {
    let idem = Idempotency::new();
    let store = idem.store().clone();
    let (app, state) = app(IdempotencyLayer::new(idem));
    let first = tokio::spawn({
        let app = app.clone();
        async move { send(&app, post_req("/slow", Some("gone"), json!({}))).await }
    });
    state.started.notified().await;
    assert_eq!(store.len(), 1);
    // The client went away: hyper drops the request's future.
    first.abort();
    let _ = first.await;
    for _ in 0..100 {
        if store.is_empty() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(store.is_empty(), "the key was released");
    state.release.notify_one();
    let second = tokio::spawn({
        let app = app.clone();
        async move { send(&app, post_req("/slow", Some("gone"), json!({}))).await }
    });
    state.started.notified().await;
    state.release.notify_one();
    let (s, h, b) = second.await.unwrap();
    assert_eq!(
        (s, replayed(&h), b),
        (StatusCode::CREATED, false, b"slow 2".to_vec())
    );
}

/// A store that is down.
struct DownStore;

fn down<T>(operation: &'static str) -> StoreFuture<'static, Result<T, StoreError>>
where
    T: Send + 'static,
{
    Box::pin(async move { Err(StoreError::new("down", operation, "connection refused")) })
}

impl IdempotencyStore for DownStore {
    fn backend(&self) -> &'static str {
        "down"
    }
    fn begin<'a>(&'a self, _: BeginRequest<'a>) -> StoreFuture<'a, Result<Begin, StoreError>> {
        down("begin")
    }
    fn renew<'a>(
        &'a self,
        _: &'a IdempotencyKey,
        _: OwnerId,
        _: Duration,
    ) -> StoreFuture<'a, Result<bool, StoreError>> {
        down("renew")
    }
    fn finish<'a>(
        &'a self,
        _: &'a IdempotencyKey,
        _: OwnerId,
        _: Settle,
        _: Duration,
    ) -> StoreFuture<'a, Result<bool, StoreError>> {
        down("finish")
    }
    fn release<'a>(
        &'a self,
        _: &'a IdempotencyKey,
        _: OwnerId,
    ) -> StoreFuture<'a, Result<bool, StoreError>> {
        down("release")
    }
    fn wait<'a>(&'a self, _: &'a IdempotencyKey, _: Duration) -> StoreFuture<'a, ()> {
        Box::pin(async {})
    }
    fn get<'a>(
        &'a self,
        _: &'a IdempotencyKey,
    ) -> StoreFuture<'a, Result<Option<Record>, StoreError>> {
        down("get")
    }
    fn remove<'a>(&'a self, _: &'a IdempotencyKey) -> StoreFuture<'a, Result<bool, StoreError>> {
        down("remove")
    }
    fn purge_expired(&self) -> StoreFuture<'_, Result<u64, StoreError>> {
        down("purge")
    }
}

#[tokio::test]
async fn unreachable_store_fails_closed_with_503() {
    let (app, state) = app(IdempotencyLayer::new(Idempotency::with_store(DownStore)));
    let (s, h, b) = send(&app, post_req("/orders", Some("x"), json!({}))).await;
    assert_problem(
        s,
        &h,
        &b,
        StatusCode::SERVICE_UNAVAILABLE,
        "store-unavailable",
    );
    assert_eq!(h["retry-after"], "1");
    assert_eq!(
        state.calls.load(Ordering::SeqCst),
        0,
        "not run without its guarantee"
    );
}

#[test]
fn invalid_configuration_names_the_field() {
    let b = || IdempotencyLayer::builder(Idempotency::new());
    assert_eq!(b().methods([]).build().unwrap_err().field(), "methods");
    assert_eq!(
        b().max_body_bytes(0).build().unwrap_err().field(),
        "max_body_bytes"
    );
    assert_eq!(
        b().max_response_bytes(0).build().unwrap_err().field(),
        "max_response_bytes"
    );
    assert_eq!(
        b().fingerprint_fields(["amount"])
            .build()
            .unwrap_err()
            .field(),
        "fingerprint_fields"
    );
    assert_eq!(b().ttl(Duration::ZERO).build().unwrap_err().field(), "ttl");
    assert_eq!(
        b().in_flight(InFlightPolicy::Wait {
            timeout: Duration::ZERO
        })
        .build()
        .unwrap_err()
        .field(),
        "in_flight"
    );
}

#[cfg(feature = "metrics")]
#[tokio::test]
async fn http_traffic_is_counted() {
    let metrics = keel_idempotency::Metrics::new();
    let idem = Idempotency::builder(MemoryStore::new())
        .metrics(metrics.clone())
        .build()
        .unwrap();
    let (app, _) = app(IdempotencyLayer::new(idem));
    send(&app, post_req("/orders", Some("m"), json!({}))).await;
    send(&app, post_req("/orders", Some("m"), json!({}))).await;
    send(&app, post_req("/orders", Some("m"), json!({"x": 1}))).await;
    send(
        &app,
        post_req("/validate", Some("n"), json!({"amount": -1})),
    )
    .await;
    assert_eq!(metrics.executions(keel_core::Outcome::Success), 1);
    assert_eq!(metrics.executions(keel_core::Outcome::Neutral), 1);
    assert_eq!(metrics.replays(), 1);
    assert_eq!(metrics.fingerprint_mismatches(), 1);
}

#[tokio::test]
async fn works_over_a_real_socket() {
    let (app, state) = default_app();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/orders");
    let post = |body: Value| {
        client
            .post(&url)
            .header("Idempotency-Key", "\"socket-1\"")
            .json(&body)
            .send()
    };
    let first = post(json!({"qty": 1})).await.unwrap();
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first_body = first.text().await.unwrap();
    let second = post(json!({"qty": 1})).await.unwrap();
    assert_eq!(second.status(), 201);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    assert_eq!(second.headers()["x-order-id"], "1");
    assert_eq!(second.text().await.unwrap(), first_body);
    let third = post(json!({"qty": 2})).await.unwrap();
    assert_eq!(third.status(), 422);
    assert_eq!(third.headers()["content-type"], "application/problem+json");
    let missing = client.post(&url).json(&json!({})).send().await.unwrap();
    assert_eq!(missing.status(), 400);
    assert_eq!(state.calls.load(Ordering::SeqCst), 1);
    server.abort();
}
