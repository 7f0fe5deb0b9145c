//! The `Idempotency-Key` HTTP middleware (feature `axum`).
//!
//! [`IdempotencyLayer`] is a tower [`Layer`] for axum routers that follows
//! the IETF draft "The Idempotency-Key HTTP Header Field":
//!
//! | situation | answer |
//! |---|---|
//! | method not covered (default: only `POST` and `PATCH` are) | passed through untouched |
//! | no `Idempotency-Key` header, key required | `400` problem |
//! | no header, key optional (the default) | passed through untouched |
//! | malformed key (empty, over 255 characters, not visible ASCII) | `400` problem |
//! | request body over the buffering limit | `413` problem |
//! | same key, different payload (method, path, query and body, or chosen JSON fields) | `422` problem |
//! | same key while the first request is still running | `409` problem with `Retry-After` (or, if configured, wait and replay) |
//! | same key after the first request finished with a stored response | that response's status, headers and body, plus `Idempotent-Replayed: true` |
//! | idempotency store unreachable | `503` problem (fail closed: the request is not run without its guarantee) |
//!
//! Problems are `application/problem+json` bodies (RFC 9457) with `type`,
//! `title`, `status` and `detail`.
//!
//! # Which responses are stored
//!
//! The choice follows keel-core's classification of HTTP statuses
//! ([`status_outcome`]) and is replaceable with
//! [`IdempotencyLayerBuilder::disposition`]:
//!
//! * `1xx`–`3xx` (success) are stored and replayed for the TTL.
//! * `5xx` (failure) and `429` (overloaded) are stored as **retryable
//!   failures**: the next request with the same key and payload runs the
//!   handler again, and a different payload still gets `422`. Stripe instead
//!   replays 5xx responses; we re-run them because keel-core counts them as
//!   retryable, and a replayed 500 would turn a transient fault into a
//!   permanent one for that key.
//! * Other `4xx` (neutral: the client's own error, such as a validation
//!   failure) are **not stored**: the key is released, so the client can fix
//!   the request and send it again with the same key (as Stripe does).
//!
//! Responses whose body is larger than the response limit are passed
//! through without being stored (the key is released). Trailers are not
//! stored.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::future::BoxFuture;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode, request};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use keel_core::{BoxError, Outcome};
use serde::{Deserialize, Serialize};
use tower_layer::Layer;
use tower_service::Service;
use tracing::warn;

use crate::config::InFlightPolicy;
use crate::error::{ConfigError, IdempotencyError};
use crate::executor::{Decision, Idempotency, RawOutcome, Stored};
use crate::key::{Fingerprint, IdempotencyKey};
use crate::memory::MemoryStore;
use crate::store::{IdempotencyStore, Settle};

/// The request header carrying the key.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// The response header marking a replayed response.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// The longest key accepted, in characters.
pub const MAX_KEY_LEN: usize = 255;
/// The default request body buffering limit: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// The default limit on a response body that is stored: 1 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// The `type` URI prefix of this middleware's problem documents.
pub const PROBLEM_TYPE_PREFIX: &str = "urn:keel:idempotency:";

/// What the middleware does with a response the handler produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Store it and replay it to later requests with the same key.
    Store,
    /// Store it as a retryable failure: the next request with the same key
    /// and payload runs the handler again.
    StoreRetryable,
    /// Do not store it; release the key.
    Skip,
}

/// keel-core's reading of an HTTP status: `429` and `503` are overloads,
/// other `5xx` failures, other `4xx` neutral (the client's error), the rest
/// successes.
pub fn status_outcome(status: StatusCode) -> Outcome {
    match status.as_u16() {
        429 | 503 => Outcome::OVERLOADED,
        500..=599 => Outcome::Failure,
        400..=499 => Outcome::Neutral,
        _ => Outcome::Success,
    }
}

/// The default [`Disposition`]: successes stored, retryable outcomes
/// (failures, overloads) stored as retryable, neutral ones (4xx) skipped.
pub fn default_disposition(status: StatusCode) -> Disposition {
    let outcome = status_outcome(status);
    if outcome.is_retryable() {
        Disposition::StoreRetryable
    } else if outcome.is_neutral() {
        Disposition::Skip
    } else {
        Disposition::Store
    }
}

/// What the fingerprint of a request covers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FingerprintMode {
    /// Method, path with query, and the whole body.
    Body,
    /// Method, path with query, and these JSON pointers into the body (the
    /// whole body when it is not JSON).
    Fields(Arc<[String]>),
}

type ScopeFn = Arc<dyn Fn(&request::Parts) -> Option<String> + Send + Sync>;

#[derive(Clone)]
struct HttpConfig {
    required: bool,
    methods: Arc<[Method]>,
    max_body_bytes: usize,
    max_response_bytes: usize,
    fingerprint: FingerprintMode,
    scope: Option<ScopeFn>,
    in_flight: InFlightPolicy,
    ttl: Option<Duration>,
    disposition: fn(StatusCode) -> Disposition,
}

impl fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpConfig")
            .field("required", &self.required)
            .field("methods", &self.methods)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("fingerprint", &self.fingerprint)
            .field("scoped", &self.scope.is_some())
            .field("in_flight", &self.in_flight)
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// A tower [`Layer`] that makes `POST`/`PATCH` handlers idempotent under the
/// `Idempotency-Key` header; see the [module docs](self).
///
/// ```
/// use axum::{Router, routing::post};
/// use keel_idempotency::{Idempotency, IdempotencyLayer};
///
/// let layer = IdempotencyLayer::builder(Idempotency::new())
///     .required(true)
///     .build()
///     .expect("valid configuration");
/// let app: Router = Router::new()
///     .route("/payments", post(|| async { "charged" }))
///     .layer(layer);
/// ```
pub struct IdempotencyLayer<S = MemoryStore> {
    idem: Idempotency<S>,
    config: Arc<HttpConfig>,
}

impl<S: IdempotencyStore> fmt::Debug for IdempotencyLayer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("idempotency", &self.idem)
            .field("config", &self.config)
            .finish()
    }
}

impl<S> Clone for IdempotencyLayer<S> {
    fn clone(&self) -> Self {
        IdempotencyLayer {
            idem: self.idem.clone(),
            config: self.config.clone(),
        }
    }
}

impl<S: IdempotencyStore> IdempotencyLayer<S> {
    /// A layer with the default configuration: `POST` and `PATCH`, key
    /// optional, 1 MiB limits, whole-body fingerprints, in-flight duplicates
    /// rejected with `409`.
    pub fn new(idem: Idempotency<S>) -> Self {
        IdempotencyLayer {
            idem,
            config: Arc::new(HttpConfig {
                required: false,
                methods: Arc::from([Method::POST, Method::PATCH]),
                max_body_bytes: DEFAULT_MAX_BODY_BYTES,
                max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
                fingerprint: FingerprintMode::Body,
                scope: None,
                in_flight: InFlightPolicy::Reject,
                ttl: None,
                disposition: default_disposition,
            }),
        }
    }

    /// Starts configuring a layer.
    pub fn builder(idem: Idempotency<S>) -> IdempotencyLayerBuilder<S> {
        let layer = Self::new(idem);
        IdempotencyLayerBuilder {
            idem: layer.idem,
            config: (*layer.config).clone(),
        }
    }
}

/// Configures an [`IdempotencyLayer`]; [`build`](Self::build) checks every
/// value and names the offending field.
#[must_use]
pub struct IdempotencyLayerBuilder<S> {
    idem: Idempotency<S>,
    config: HttpConfig,
}

impl<S: IdempotencyStore> fmt::Debug for IdempotencyLayerBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayerBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S: IdempotencyStore> IdempotencyLayerBuilder<S> {
    /// Whether requests with a covered method must carry the header
    /// (`400` without it). Default `false`: such requests pass through.
    pub fn required(mut self, required: bool) -> Self {
        self.config.required = required;
        self
    }

    /// The methods the middleware covers (default `POST`, `PATCH`). Must
    /// not be empty.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.config.methods = methods.into_iter().collect();
        self
    }

    /// The largest request body buffered for fingerprinting (default
    /// [`DEFAULT_MAX_BODY_BYTES`]); larger ones get `413`. Must be positive.
    pub fn max_body_bytes(mut self, limit: usize) -> Self {
        self.config.max_body_bytes = limit;
        self
    }

    /// The largest response body stored for replay (default
    /// [`DEFAULT_MAX_RESPONSE_BYTES`]); larger responses pass through
    /// unstored. Must be positive.
    pub fn max_response_bytes(mut self, limit: usize) -> Self {
        self.config.max_response_bytes = limit;
        self
    }

    /// Fingerprints only these JSON pointers of the body (with method, path
    /// and query) instead of the whole body, so fields that may change
    /// between retries do not count. Every pointer must be empty or start
    /// with `/`.
    pub fn fingerprint_fields<P: Into<String>>(
        mut self,
        pointers: impl IntoIterator<Item = P>,
    ) -> Self {
        self.config.fingerprint =
            FingerprintMode::Fields(pointers.into_iter().map(Into::into).collect());
        self
    }

    /// Scopes keys, for instance per authenticated client, so that two
    /// clients choosing the same key do not collide. The function sees the
    /// request head; `None` means the global scope.
    pub fn scope(
        mut self,
        scope: impl Fn(&request::Parts) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.config.scope = Some(Arc::new(scope));
        self
    }

    /// What a request does while the first one with its key runs (default
    /// [`InFlightPolicy::Reject`]: `409`, as the draft says). With
    /// [`InFlightPolicy::Wait`] it waits and replays the first response.
    pub fn in_flight(mut self, policy: InFlightPolicy) -> Self {
        self.config.in_flight = policy;
        self
    }

    /// How long responses are kept (default: the [`Idempotency`]'s TTL).
    /// Must be positive.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.config.ttl = Some(ttl);
        self
    }

    /// Which responses are stored (default [`default_disposition`]).
    pub fn disposition(mut self, disposition: fn(StatusCode) -> Disposition) -> Self {
        self.config.disposition = disposition;
        self
    }

    /// Checks the configuration and builds the layer.
    pub fn build(self) -> Result<IdempotencyLayer<S>, ConfigError> {
        let c = &self.config;
        if c.methods.is_empty() {
            return Err(ConfigError::new("methods", "must name at least one method"));
        }
        if c.max_body_bytes == 0 {
            return Err(ConfigError::new(
                "max_body_bytes",
                "must be greater than zero",
            ));
        }
        if c.max_response_bytes == 0 {
            return Err(ConfigError::new(
                "max_response_bytes",
                "must be greater than zero",
            ));
        }
        if let FingerprintMode::Fields(pointers) = &c.fingerprint
            && let Some(bad) = pointers
                .iter()
                .find(|p| !p.is_empty() && !p.starts_with('/'))
        {
            return Err(ConfigError::new(
                "fingerprint_fields",
                format!("{bad:?} is not a JSON pointer (must be empty or start with '/')"),
            ));
        }
        if c.ttl.is_some_and(|t| t.is_zero()) {
            return Err(ConfigError::new("ttl", "must be greater than zero"));
        }
        c.in_flight.validate("in_flight")?;
        Ok(IdempotencyLayer {
            idem: self.idem,
            config: Arc::new(self.config),
        })
    }
}

impl<S, Inner> Layer<Inner> for IdempotencyLayer<S> {
    type Service = IdempotencyService<S, Inner>;

    fn layer(&self, inner: Inner) -> Self::Service {
        IdempotencyService {
            inner,
            idem: self.idem.clone(),
            config: self.config.clone(),
        }
    }
}

/// The service made by [`IdempotencyLayer`].
pub struct IdempotencyService<S, Inner> {
    inner: Inner,
    idem: Idempotency<S>,
    config: Arc<HttpConfig>,
}

impl<S, Inner: Clone> Clone for IdempotencyService<S, Inner> {
    fn clone(&self) -> Self {
        IdempotencyService {
            inner: self.inner.clone(),
            idem: self.idem.clone(),
            config: self.config.clone(),
        }
    }
}

impl<S: IdempotencyStore, Inner> fmt::Debug for IdempotencyService<S, Inner> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyService")
            .field("idempotency", &self.idem)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S, Inner, ResBody> Service<Request<Body>> for IdempotencyService<S, Inner>
where
    S: IdempotencyStore,
    Inner: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + 'static,
    Inner::Future: Send + 'static,
    Inner::Error: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Inner::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, Inner::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // The clone is not ready: call the one that was polled ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if !self.config.methods.contains(req.method()) {
            return Box::pin(async move { Ok(inner.call(req).await?.map(Body::new)) });
        }
        let client_key = match req.headers().get(&IDEMPOTENCY_KEY) {
            None if self.config.required => {
                return ready(problem(
                    StatusCode::BAD_REQUEST,
                    "key-missing",
                    "Idempotency-Key header missing",
                    "This endpoint requires an Idempotency-Key header.",
                ));
            }
            None => {
                return Box::pin(async move { Ok(inner.call(req).await?.map(Body::new)) });
            }
            Some(value) => match parse_key(value) {
                Ok(key) => key,
                Err(reason) => {
                    return ready(problem(
                        StatusCode::BAD_REQUEST,
                        "key-invalid",
                        "Invalid Idempotency-Key header",
                        reason,
                    ));
                }
            },
        };
        let idem = self.idem.clone();
        let config = self.config.clone();
        Box::pin(async move { handle(idem, config, inner, req, client_key).await })
    }
}

fn ready<E: Send + 'static>(res: Response<Body>) -> BoxFuture<'static, Result<Response<Body>, E>> {
    Box::pin(std::future::ready(Ok(res)))
}

/// The result of running the handler, before it is stored.
enum HandlerResponse {
    /// Fully buffered: storable.
    Buffered(http::response::Parts, Bytes),
    /// Too large to store: streamed through.
    Streamed(Response<Body>),
    /// The handler's body failed while being buffered.
    BodyFailed(BoxError),
}

async fn handle<S, Inner, ResBody>(
    idem: Idempotency<S>,
    config: Arc<HttpConfig>,
    mut inner: Inner,
    req: Request<Body>,
    client_key: String,
) -> Result<Response<Body>, Inner::Error>
where
    S: IdempotencyStore,
    Inner: Service<Request<Body>, Response = Response<ResBody>>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, config.max_body_bytes).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Ok(problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "Request body too large",
                &format!(
                    "Requests with an Idempotency-Key may carry at most {} bytes.",
                    config.max_body_bytes
                ),
            ));
        }
        Err(e) => {
            return Ok(problem(
                StatusCode::BAD_REQUEST,
                "body-unreadable",
                "Request body could not be read",
                &e.to_string(),
            ));
        }
    };
    let fingerprint = fingerprint(&parts, &body, &config.fingerprint);
    let scope = config.scope.as_ref().and_then(|f| f(&parts));
    let key = IdempotencyKey::from_value("http", &serde_json::json!([scope, client_key]));
    let req = Request::from_parts(parts, Body::from(body));
    let max_response = config.max_response_bytes;
    let disposition = config.disposition;

    let outcome = idem
        .run_raw(
            &key,
            &fingerprint,
            config.ttl,
            Some(config.in_flight),
            move || async move {
                let response = inner.call(req).await?;
                Ok(buffer_response(response, max_response).await)
            },
            move |result: &Result<HandlerResponse, Inner::Error>| {
                let (settle, outcome) = match result {
                    Ok(HandlerResponse::Buffered(parts, body)) => {
                        let outcome = status_outcome(parts.status);
                        let settle = match disposition(parts.status) {
                            Disposition::Skip => None,
                            d => {
                                let stored = serde_json::to_vec(&StoredResponse::new(parts, body))?;
                                Some(if d == Disposition::Store {
                                    Settle::Completed(stored.into())
                                } else {
                                    Settle::Failed {
                                        error: stored.into(),
                                        retryable: true,
                                    }
                                })
                            }
                        };
                        (settle, outcome)
                    }
                    Ok(HandlerResponse::Streamed(res)) => (None, status_outcome(res.status())),
                    Ok(HandlerResponse::BodyFailed(_)) | Err(_) => (None, Outcome::Failure),
                };
                Ok(Decision { settle, outcome })
            },
        )
        .await;

    match outcome {
        Ok(RawOutcome::Ran { value, .. }) => Ok(match value? {
            HandlerResponse::Buffered(parts, body) => Response::from_parts(parts, Body::from(body)),
            HandlerResponse::Streamed(res) => res,
            HandlerResponse::BodyFailed(e) => {
                warn!(key = %key, error = %e, "handler response body failed");
                problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "response-failed",
                    "Response body failed",
                    "The handler's response body failed while it was being read.",
                )
            }
        }),
        Ok(RawOutcome::Stored { stored, .. }) => {
            let bytes = match stored {
                Stored::Completed(b) | Stored::Failed(b) => b,
            };
            Ok(match serde_json::from_slice::<StoredResponse>(&bytes) {
                Ok(stored) => stored.into_response(),
                Err(e) => {
                    warn!(key = %key, error = %e, "stored response could not be decoded");
                    problem(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "stored-response-invalid",
                        "Stored response unreadable",
                        "The response stored for this Idempotency-Key could not be decoded.",
                    )
                }
            })
        }
        Err(IdempotencyError::InFlight(e)) => {
            let mut res = problem(
                StatusCode::CONFLICT,
                "request-in-flight",
                "Request in flight",
                "A request with this Idempotency-Key is still being processed; retry later.",
            );
            let secs = e
                .retry_after
                .map_or(1, |d| d.as_secs_f64().ceil().max(1.0) as u64);
            res.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
            Ok(res)
        }
        Err(IdempotencyError::FingerprintMismatch(_)) => Ok(problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "key-reused",
            "Idempotency-Key reused",
            "This Idempotency-Key was already used with a different request payload.",
        )),
        Err(IdempotencyError::Store(e)) => {
            warn!(key = %key, error = %e, "idempotency store unavailable; refusing the request");
            let mut res = problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "store-unavailable",
                "Idempotency store unavailable",
                "The request was not processed because its Idempotency-Key could not be checked.",
            );
            res.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(1u64));
            Ok(res)
        }
        Err(e) => {
            warn!(key = %key, error = %e, "idempotency failure");
            Ok(problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Idempotency failure",
                "The request could not be processed idempotently.",
            ))
        }
    }
}

async fn buffer_response<B>(response: Response<B>, limit: usize) -> HandlerResponse
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (parts, body) = response.into_parts();
    let mut body = Body::new(body);
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => return HandlerResponse::BodyFailed(e.into()),
        };
        // Trailers are dropped: they are not stored.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if buf.len() + data.len() > limit {
            let head = futures::stream::iter([Ok::<_, axum::Error>(buf.freeze()), Ok(data)]);
            let body = Body::from_stream(head.chain(body.into_data_stream()));
            return HandlerResponse::Streamed(Response::from_parts(parts, body));
        }
        buf.extend_from_slice(&data);
    }
    HandlerResponse::Buffered(parts, buf.freeze())
}

fn fingerprint(parts: &request::Parts, body: &[u8], mode: &FingerprintMode) -> Fingerprint {
    let target = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path(), |pq| pq.as_str());
    let method = parts.method.as_str().as_bytes();
    match mode {
        FingerprintMode::Body => Fingerprint::of_parts([method, target.as_bytes(), body]),
        FingerprintMode::Fields(pointers) => {
            match serde_json::from_slice::<serde_json::Value>(body) {
                Ok(json) => {
                    let fields = Fingerprint::of_fields(&json, pointers);
                    Fingerprint::of_parts([
                        method,
                        target.as_bytes(),
                        &b"fields"[..],
                        fields.digest(),
                    ])
                }
                // Not JSON: the whole body counts.
                Err(_) => Fingerprint::of_parts([method, target.as_bytes(), body]),
            }
        }
    }
}

/// Parses the header: an RFC 8941 sf-string (`"..."`), or, as many clients
/// send it, the bare key.
fn parse_key(value: &HeaderValue) -> Result<String, &'static str> {
    let raw = value
        .to_str()
        .map_err(|_| "The Idempotency-Key must be visible ASCII.")?
        .trim();
    let key = if let Some(quoted) = raw.strip_prefix('"') {
        let inner = quoted
            .strip_suffix('"')
            .ok_or("The Idempotency-Key string is not terminated.")?;
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(e @ ('"' | '\\')) => out.push(e),
                    _ => return Err("The Idempotency-Key string has an invalid escape."),
                },
                '"' => return Err("The Idempotency-Key string has an unescaped quote."),
                c => out.push(c),
            }
        }
        out
    } else {
        raw.to_string()
    };
    if key.is_empty() {
        return Err("The Idempotency-Key must not be empty.");
    }
    if key.len() > MAX_KEY_LEN {
        return Err("The Idempotency-Key must be at most 255 characters.");
    }
    if !key.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err("The Idempotency-Key must be visible ASCII.");
    }
    Ok(key)
}

/// An RFC 9457 problem response.
fn problem(status: StatusCode, kind: &str, title: &str, detail: &str) -> Response<Body> {
    let body = serde_json::json!({
        "type": format!("{PROBLEM_TYPE_PREFIX}{kind}"),
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut res = Response::new(Body::from(body.to_string()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    res
}

/// Bytes kept as text when they are UTF-8, hex otherwise.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Blob {
    Text(String),
    Hex(String),
}

impl Blob {
    fn new(bytes: &[u8]) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(s) => Blob::Text(s.to_string()),
            Err(_) => Blob::Hex(hex::encode(bytes)),
        }
    }

    fn into_bytes(self) -> Option<Vec<u8>> {
        match self {
            Blob::Text(s) => Some(s.into_bytes()),
            Blob::Hex(h) => hex::decode(h).ok(),
        }
    }
}

/// A response as stored for replay.
#[derive(Debug, Serialize, Deserialize)]
struct StoredResponse {
    status: u16,
    headers: Vec<(String, Blob)>,
    body: Blob,
}

/// Headers that describe one connection or one transfer, not the response.
fn is_hop_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
    )
}

impl StoredResponse {
    fn new(parts: &http::response::Parts, body: &Bytes) -> Self {
        StoredResponse {
            status: parts.status.as_u16(),
            headers: parts
                .headers
                .iter()
                .filter(|(name, _)| !is_hop_header(name))
                .map(|(name, value)| (name.as_str().to_string(), Blob::new(value.as_bytes())))
                .collect(),
            body: Blob::new(body),
        }
    }

    fn into_response(self) -> Response<Body> {
        let body = self.body.into_bytes().unwrap_or_default();
        let mut res = Response::new(Body::from(body));
        *res.status_mut() = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        let headers = res.headers_mut();
        for (name, value) in self.headers {
            let (Ok(name), Some(value)) = (HeaderName::try_from(name), value.into_bytes()) else {
                continue;
            };
            if let Ok(value) = HeaderValue::from_bytes(&value) {
                headers.append(name, value);
            }
        }
        headers.remove(CONTENT_LENGTH);
        headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_as_sf_string_or_bare() {
        let p = |s: &'static str| parse_key(&HeaderValue::from_static(s));
        assert_eq!(p("\"abc-123\"").unwrap(), "abc-123");
        assert_eq!(p("abc-123").unwrap(), "abc-123");
        assert_eq!(p("\"a\\\"b\\\\c\"").unwrap(), "a\"b\\c");
        assert!(p("\"unterminated").is_err());
        assert!(p("\"\"").is_err());
        assert!(p("\"bad\\escape\"").is_err());
        assert!(parse_key(&HeaderValue::from_str(&"k".repeat(256)).unwrap()).is_err());
        assert!(parse_key(&HeaderValue::from_str(&"k".repeat(255)).unwrap()).is_ok());
        assert!(parse_key(&HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap()).is_err());
    }

    #[test]
    fn statuses_follow_keel_core_classification() {
        assert_eq!(default_disposition(StatusCode::CREATED), Disposition::Store);
        assert_eq!(
            default_disposition(StatusCode::SEE_OTHER),
            Disposition::Store
        );
        assert_eq!(
            default_disposition(StatusCode::BAD_REQUEST),
            Disposition::Skip
        );
        assert_eq!(
            default_disposition(StatusCode::NOT_FOUND),
            Disposition::Skip
        );
        assert_eq!(
            default_disposition(StatusCode::INTERNAL_SERVER_ERROR),
            Disposition::StoreRetryable
        );
        assert_eq!(
            default_disposition(StatusCode::TOO_MANY_REQUESTS),
            Disposition::StoreRetryable
        );
        assert!(status_outcome(StatusCode::SERVICE_UNAVAILABLE).is_overloaded());
    }

    #[test]
    fn stored_responses_round_trip_binary_and_text() {
        let mut res = Response::new(());
        *res.status_mut() = StatusCode::CREATED;
        res.headers_mut()
            .insert("x-bin", HeaderValue::from_bytes(b"\xff\x80").unwrap());
        res.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from_static("3"));
        res.headers_mut()
            .append("set-cookie", HeaderValue::from_static("a=1"));
        res.headers_mut()
            .append("set-cookie", HeaderValue::from_static("b=2"));
        let (parts, ()) = res.into_parts();
        let stored = StoredResponse::new(&parts, &Bytes::from_static(b"\x00\xfe\x10"));
        let json = serde_json::to_vec(&stored).unwrap();
        let back: StoredResponse = serde_json::from_slice(&json).unwrap();
        let res = back.into_response();
        assert_eq!(res.status(), StatusCode::CREATED);
        assert_eq!(res.headers()["x-bin"].as_bytes(), b"\xff\x80");
        assert_eq!(res.headers().get_all("set-cookie").iter().count(), 2);
        assert_eq!(res.headers()[&IDEMPOTENT_REPLAYED], "true");
        assert!(res.headers().get(CONTENT_LENGTH).is_none());
    }

    #[test]
    fn fingerprint_covers_method_target_and_body() {
        let parts = |m: Method, uri: &str| {
            Request::builder()
                .method(m)
                .uri(uri)
                .body(())
                .unwrap()
                .into_parts()
                .0
        };
        let post = parts(Method::POST, "/a?x=1");
        let body = FingerprintMode::Body;
        let base = fingerprint(&post, b"{}", &body);
        assert_ne!(
            base,
            fingerprint(&parts(Method::PATCH, "/a?x=1"), b"{}", &body)
        );
        assert_ne!(
            base,
            fingerprint(&parts(Method::POST, "/a?x=2"), b"{}", &body)
        );
        assert_ne!(base, fingerprint(&post, b"{ }", &body));
        let fields = FingerprintMode::Fields(Arc::from(["/amount".to_string()]));
        assert_eq!(
            fingerprint(&post, br#"{"amount": 1, "at": 1}"#, &fields),
            fingerprint(&post, br#"{"at": 2, "amount": 1}"#, &fields)
        );
        assert_ne!(
            fingerprint(&post, br#"{"amount": 1}"#, &fields),
            fingerprint(&post, br#"{"amount": 2}"#, &fields)
        );
    }
}
