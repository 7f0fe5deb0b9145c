//! The properties the fuzz target `idempotency_headers` checks (`fuzz/`,
//! docs/RELIABILITY.md); not a stable API.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};

use axum::body::Body;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use tower_layer::Layer as _;
use tower_service::Service;

use crate::http::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED, MAX_KEY_LEN, PROBLEM_TYPE_PREFIX};
use crate::{Idempotency, IdempotencyLayer};

/// The `Idempotency-Key` header through the real middleware (an in-memory
/// store, a handler that counts its calls). The first byte holds flags
/// (bit 0: the header is required; bit 1: the value is repeated past 8 KiB,
/// an oversized header); the rest is the header's value, any bytes a
/// `HeaderValue` can hold (not CR, LF or NUL), UTF-8 or not.
///
/// Properties, against RFC 8941's sf-string (or the bare key many clients
/// send), visible ASCII, 1 to 255 characters:
/// * an invalid key is refused with 400 and an RFC 9457 problem
///   (`urn:keel:idempotency:key-invalid`) naming the fault, and the handler
///   never runs;
/// * a valid key runs the handler once; the same header again is a replay
///   (`Idempotent-Replayed: true`, the same status and body), and so is the
///   key written in the other form (quoted or bare): the key, not its
///   spelling, identifies the request;
/// * never a panic.
pub fn idempotency_headers(data: &[u8]) {
    let [flags, value @ ..] = data else {
        return;
    };
    let value: Vec<u8> = if flags & 2 == 0 {
        value.to_vec()
    } else {
        value.repeat(8 * 1024 / value.len().max(1) + 1)
    };
    let Ok(header) = HeaderValue::from_bytes(&value) else {
        // CR, LF or NUL: no HTTP/1 or HTTP/2 peer can deliver it.
        return;
    };
    let expected = expected_key(&value);
    RUNTIME.with(|rt| rt.block_on(check(flags & 1 == 1, header, expected)));
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
}

async fn check(required: bool, header: HeaderValue, expected: Option<String>) {
    let layer = IdempotencyLayer::builder(Idempotency::new())
        .required(required)
        .build()
        .expect("the default layer builds");
    let calls = Arc::new(AtomicU32::new(0));
    let mut service = layer.layer(Handler {
        calls: calls.clone(),
    });
    let first = send(&mut service, header.clone()).await;
    match &expected {
        None => {
            assert_eq!(first.0, StatusCode::BAD_REQUEST, "{header:?} accepted");
            assert_eq!(
                first.1.get(CONTENT_TYPE).map(HeaderValue::as_bytes),
                Some(&b"application/problem+json"[..])
            );
            let problem: serde_json::Value =
                serde_json::from_slice(&first.2).expect("a JSON problem");
            assert_eq!(
                problem["type"],
                format!("{PROBLEM_TYPE_PREFIX}key-invalid"),
                "{problem}"
            );
            assert_eq!(problem["status"], 400);
            assert!(
                problem["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("Idempotency-Key")),
                "the detail names the header: {problem}"
            );
            assert_eq!(calls.load(Ordering::SeqCst), 0, "the handler ran");
        }
        Some(key) => {
            assert_eq!(
                first.0,
                StatusCode::CREATED,
                "{header:?} (key {key:?}) refused: {}",
                String::from_utf8_lossy(&first.2)
            );
            assert!(!replayed(&first.1));
            assert_eq!(calls.load(Ordering::SeqCst), 1);
            let again = send(&mut service, header.clone()).await;
            assert!(
                replayed(&again.1),
                "{header:?}: the same key again is a replay"
            );
            assert_eq!((again.0, &again.2), (first.0, &first.2));
            for spelling in spellings(key) {
                let other = HeaderValue::from_str(&spelling).expect("visible ASCII");
                let next = send(&mut service, other.clone()).await;
                assert!(
                    replayed(&next.1),
                    "{header:?} and {other:?} are the same key {key:?}"
                );
            }
            assert_eq!(calls.load(Ordering::SeqCst), 1, "the handler ran twice");
        }
    }
}

type Answer = (StatusCode, http::HeaderMap, Vec<u8>);

async fn send<S>(service: &mut S, key: HeaderValue) -> Answer
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    let request = Request::builder()
        .method(Method::POST)
        .uri("/orders")
        .header(IDEMPOTENCY_KEY, key)
        .header(CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"amount":100}"#))
        .expect("a request");
    std::future::poll_fn(|cx| service.poll_ready(cx))
        .await
        .expect("infallible");
    let response = service.call(request).await.expect("infallible");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("a buffered body").to_bytes();
    (parts.status, parts.headers, body.to_vec())
}

fn replayed(headers: &http::HeaderMap) -> bool {
    headers
        .get(&IDEMPOTENT_REPLAYED)
        .is_some_and(|v| v.as_bytes() == b"true")
}

/// The key a header value carries, per the documented grammar; `None`
/// when it must be refused. Written apart from the middleware's parser.
fn expected_key(value: &[u8]) -> Option<String> {
    // A header value as text: visible ASCII, space and tab.
    if !value
        .iter()
        .all(|&b| (0x20..0x7f).contains(&b) || b == b'\t')
    {
        return None;
    }
    let text = std::str::from_utf8(value).ok()?;
    let text = text.trim_matches([' ', '\t']);
    let key = if text.starts_with('"') {
        if text.len() < 2 || !text.ends_with('"') {
            return None;
        }
        let mut key = String::new();
        let mut escaped = false;
        for c in text[1..text.len() - 1].chars() {
            match (escaped, c) {
                (true, '"' | '\\') => {
                    key.push(c);
                    escaped = false;
                }
                (true, _) | (false, '"') => return None,
                (false, '\\') => escaped = true,
                (false, c) => key.push(c),
            }
        }
        if escaped {
            return None;
        }
        key
    } else {
        text.to_owned()
    };
    let ok = !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key.bytes().all(|b| (0x20..0x7f).contains(&b));
    ok.then_some(key)
}

/// The ways of writing `key`: as an sf-string, and bare when the bare
/// spelling cannot be misread (no leading quote, no outer spaces).
fn spellings(key: &str) -> Vec<String> {
    let quoted = format!("\"{}\"", key.replace('\\', "\\\\").replace('"', "\\\""));
    let mut forms = vec![quoted];
    if !key.starts_with('"') && key.trim() == key {
        forms.push(key.to_owned());
    }
    forms
}

/// The protected handler: counts its calls, answers 201 with the count.
#[derive(Clone)]
struct Handler {
    calls: Arc<AtomicU32>,
}

impl Service<Request<Body>> for Handler {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        Box::pin(async move {
            let _ = request.into_body().collect().await;
            let mut response = Response::new(Body::from(format!("{{\"order\":{n}}}")));
            *response.status_mut() = StatusCode::CREATED;
            Ok(response)
        })
    }
}
