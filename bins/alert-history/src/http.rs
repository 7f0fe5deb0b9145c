//! The HTTP API: webhook, history, alert timelines, report, health, metrics
//! and admin routes. Build it with [`router`] and test it with
//! `tower::ServiceExt::oneshot`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use keel_telemetry::{BodyReadError, CancellationToken, CheckStatus, MetricsRegistry, Readiness};
use serde_json::{Value, json};

use crate::auth::{READ_CHALLENGE, Tokens};
use crate::config::Config;
use crate::error::{PayloadError, QueryError};
use crate::metrics::Metrics;
use crate::model::{Status, format_time, parse_time, parse_webhook};
use crate::pipeline::{Incoming, IngestError, IngestStages, RecordMetrics};
use crate::store::{Cursor, EventRow, HistoryQuery, ReportQuery, StateRow, Store};
use crate::timeline::{self, Point};
use crate::{dashboard, retention};

/// Default page size of `GET /history`.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest page size of `GET /history`.
pub const MAX_LIMIT: u32 = 1000;

/// Everything the handlers share. Cloning is cheap.
#[derive(Clone)]
pub struct AppState {
    pub(crate) inner: Arc<Inner>,
}

// Part 2's fields are read as its pieces land (issue 19).
#[allow(dead_code)]
pub(crate) struct Inner {
    pub(crate) store: Store,
    pub(crate) metrics: Metrics,
    pub(crate) registry: MetricsRegistry,
    pub(crate) readiness: Readiness,
    pub(crate) pipeline: IngestStages,
    pub(crate) tokens: Tokens,
    pub(crate) body_read_timeout: Duration,
    pub(crate) max_body_bytes: usize,
    pub(crate) retention: Duration,
    pub(crate) retention_days: u32,
    pub(crate) shutting_down: CancellationToken,
    pub(crate) started: tokio::time::Instant,
    /// Enrichment mode and classifier (part 2).
    pub(crate) enrichment: crate::classify::Enrichment,
    /// Publishing targets in effect (part 2).
    pub(crate) targets: crate::targets::Targets,
    /// Filter rules and acknowledgements (part 2).
    pub(crate) filters: crate::filters::Filters,
    /// The outbox publisher (part 2), when publishing runs.
    pub(crate) publisher: Option<crate::publish::Publisher>,
}

/// Part 2's components, shared by the routes and the publisher.
#[derive(Debug, Clone, Default)]
pub struct Parts {
    /// Enrichment mode and classifier.
    pub enrichment: crate::classify::Enrichment,
    /// Publishing targets in effect.
    pub targets: crate::targets::Targets,
    /// Filter rules and acknowledgements.
    pub filters: crate::filters::Filters,
    /// The outbox publisher, when publishing runs.
    pub publisher: Option<crate::publish::Publisher>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("backend", &self.inner.store.backend_name())
            .field("pipeline", &self.inner.pipeline)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// State over an open store, configured from `config`, with the default
    /// pipeline (metrics) and a database readiness check. `shutting_down`
    /// makes readiness answer 503 once cancelled.
    ///
    /// # Errors
    /// [`crate::Error::Telemetry`] when the metrics registry or readiness
    /// check cannot be set up.
    pub fn new(
        store: Store,
        config: &Config,
        shutting_down: CancellationToken,
    ) -> Result<AppState, crate::Error> {
        AppState::with_parts(store, config, shutting_down, Parts::default())
    }

    /// [`AppState::new`] with part 2's components (built by
    /// [`crate::Service::start_with`] from the configuration).
    ///
    /// # Errors
    /// As [`AppState::new`].
    pub fn with_parts(
        store: Store,
        config: &Config,
        shutting_down: CancellationToken,
        parts: Parts,
    ) -> Result<AppState, crate::Error> {
        let metrics = Metrics::default();
        let registry = MetricsRegistry::new("alert_history")?;
        registry.register_with(|r| metrics.register(r));
        registry.register_with(|r| parts.enrichment.register_metrics(r));
        registry.register_with(|r| parts.targets.register_metrics(r));
        if let Some(publisher) = &parts.publisher {
            registry.register_with(|r| publisher.register_metrics(r));
        }
        let readiness = Readiness::new().with_timeout(Duration::from_secs(2))?;
        let ping_store = store.clone();
        readiness.add_fn("database", move || {
            let store = ping_store.clone();
            async move { store.check_durable().await }
        })?;
        Ok(AppState {
            inner: Arc::new(Inner {
                pipeline: IngestStages::new().stage(RecordMetrics(metrics.clone())),
                store,
                metrics,
                registry,
                readiness,
                tokens: Tokens::new(
                    config.webhook_token.clone(),
                    config.api_token.clone(),
                    config.read_token.clone(),
                    config.api_token_for_reads,
                ),
                body_read_timeout: config.body_read_timeout(),
                max_body_bytes: config.max_body_bytes,
                retention: config.retention(),
                retention_days: config.retention_days,
                shutting_down,
                started: tokio::time::Instant::now(),
                enrichment: parts.enrichment,
                targets: parts.targets,
                filters: parts.filters,
                publisher: parts.publisher,
            }),
        })
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }
}

/// The whole HTTP API. Reads (history, timelines, report, dashboard and
/// its JSON, `/metrics`, `/health/detailed`) go through the read-token
/// check (the `auth` module); the webhook and admin routes check their own
/// tokens; liveness and readiness are always open.
pub fn router(state: AppState) -> Router {
    let live = keel_telemetry::liveness_route;
    let ready = || {
        keel_telemetry::readiness_route(
            state.inner.readiness.clone(),
            Some(state.inner.shutting_down.clone()),
        )
    };
    let reads = Router::new()
        .route("/history", get(history))
        .route("/alerts/{fingerprint}", get(alert_timeline))
        .route("/report", get(report))
        .route("/health/detailed", get(health_detailed))
        .route(
            "/metrics",
            keel_telemetry::metrics_route(state.inner.registry.clone()),
        )
        .merge(dashboard::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), require_read));
    Router::new()
        .route("/webhook", post(webhook))
        .route("/webhook/", post(webhook))
        .route("/healthz", live())
        .route("/health/liveness", live())
        .route("/readyz", ready())
        .route("/health/readiness", ready())
        .route("/health/database", get(health_database))
        .route("/admin/retention", post(admin_retention))
        .merge(reads)
        .merge(crate::classify::routes())
        .merge(crate::targets::routes())
        .merge(crate::filters::routes())
        .merge(crate::publish::routes())
        .layer(state.inner.metrics.http().layer())
        .with_state(state)
}

/// Refuses a read without the read token (when one is configured).
async fn require_read(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if state.inner.tokens.read_allowed(request.headers()) {
        return next.run(request).await;
    }
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "missing or invalid bearer token").into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, READ_CHALLENGE);
    response
}

// ---------------------------------------------------------------- errors

/// An error answer: `{"detail": ..., "error": ...}`; 422s use FastAPI's
/// `detail: [{loc, msg, type}]` list so the predecessor's clients can read
/// them, plus `field`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    body: Value,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        let message = message.into();
        ApiError {
            status,
            body: json!({ "detail": message, "error": message }),
        }
    }

    pub(crate) fn unprocessable(location: &str, field: &str, message: String) -> Self {
        let mut loc = vec![json!(location)];
        loc.extend(field.split('.').filter(|s| !s.is_empty()).map(|s| json!(s)));
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            body: json!({
                "detail": [{ "loc": loc, "msg": message, "type": "value_error" }],
                "error": message,
                "field": field,
            }),
        }
    }

    pub(crate) fn database(error: &sqlx::Error) -> Self {
        tracing::warn!(error = %error, "database error");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "database unavailable")
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        let message = e.to_string();
        ApiError::unprocessable("query", &e.param, message)
    }
}

impl From<PayloadError> for ApiError {
    fn from(e: PayloadError) -> Self {
        match &e {
            PayloadError::Malformed { .. } => ApiError::new(StatusCode::BAD_REQUEST, e.to_string()),
            PayloadError::Invalid { field, .. } => {
                ApiError::unprocessable("body", field, e.to_string())
            }
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::database(&e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .entry(header::WWW_AUTHENTICATE)
                .or_insert(HeaderValue::from_static("Bearer"));
        }
        response
    }
}

// ---------------------------------------------------------------- webhook

async fn webhook(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    match ingest(&state, &headers, body).await {
        Ok(response) => response,
        Err(e) => {
            state.inner.metrics.webhook_error();
            e.into_response()
        }
    }
}

async fn ingest(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    let (_, outcome) = receive(state, headers, body).await?;
    Ok(axum::Json(json!({
        "result": "ok",
        "saved": outcome.saved,
        "processed_alerts": outcome.processed,
    }))
    .into_response())
}

/// The identity of each event of a delivery: (fingerprint, status,
/// startsAt, endsAt).
pub(crate) type EventKey = (String, crate::model::Status, i64, i64);

/// Checks, reads, parses and stores one webhook delivery (what `/webhook`
/// and `/webhook/proxy` share); returns the identities of its events and
/// the outcome. Wakes the publisher after the commit.
pub(crate) async fn receive(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Vec<EventKey>, crate::store::IngestOutcome), ApiError> {
    let inner = &state.inner;
    if !inner.tokens.webhook_allowed(headers) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or invalid bearer token",
        ));
    }
    if let Some(encoding) = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .filter(|e| !e.is_empty() && e != "identity")
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Encoding {encoding:?} is not supported: send the JSON uncompressed"),
        ));
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {} bytes", inner.max_body_bytes),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > inner.max_body_bytes as u64) {
        return Err(too_large());
    }
    let bytes = read_body(
        body,
        inner.max_body_bytes,
        inner.body_read_timeout,
        too_large,
    )
    .await?;
    let events = parse_webhook(&bytes)?;
    let keys: Vec<EventKey> = events
        .iter()
        .map(|e| (e.fingerprint.clone(), e.status, e.starts_at, e.ends_at))
        .collect();
    let batch = Incoming {
        received: events.len(),
        events,
        received_at_ms: Utc::now().timestamp_millis(),
    };
    let outcome = inner
        .pipeline
        .run(&inner.store, batch)
        .await
        .map_err(|e| match e {
            IngestError::Database(e) => ApiError::database(&e),
            other => {
                tracing::warn!(error = %other, "delivery refused");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string())
            }
        })?;
    tracing::debug!(
        saved = outcome.saved,
        processed = outcome.processed,
        "webhook stored"
    );
    if outcome.saved > 0
        && let Some(publisher) = &inner.publisher
    {
        publisher.wake();
    }
    Ok((keys, outcome))
}

/// Reads a request body of at most `limit` bytes; a body that goes `idle`
/// without a new chunk is answered 408 (a stalled sender must not hold a
/// connection, or the shutdown drain, for long).
async fn read_body(
    body: Body,
    limit: usize,
    idle: Duration,
    too_large: impl Fn() -> ApiError,
) -> Result<bytes::Bytes, ApiError> {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    loop {
        match tokio::time::timeout(idle, stream.next()).await {
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("no request body data for {} s", idle.as_secs()),
                ));
            }
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(Err(e))) => {
                // The kit's server cuts a stalled body (or one still
                // arriving at shutdown) itself; say which.
                let kit =
                    std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |e| {
                        e.source()
                    })
                    .find_map(|e| e.downcast_ref::<BodyReadError>());
                return Err(match kit {
                    Some(BodyReadError::Timeout(after)) => ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        format!("no request body data for {} s", after.as_secs()),
                    ),
                    Some(_) => ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "shutting down: send the delivery again",
                    ),
                    None => ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("reading the request body failed: {e}"),
                    ),
                });
            }
            Ok(Some(Ok(chunk))) => {
                if buf.len() + chunk.len() > limit {
                    return Err(too_large());
                }
                buf.extend_from_slice(&chunk);
            }
        }
    }
}

// ---------------------------------------------------------------- queries

/// The query string as `(name, value)` pairs, in order.
pub(crate) fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The last value of `name`, empty values treated as absent (FastAPI's
/// clients send `alertname=` for "no filter").
pub(crate) fn last<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

fn text(pairs: &[(String, String)], name: &str) -> Option<String> {
    last(pairs, name).map(str::to_owned)
}

pub(crate) fn number<T>(
    pairs: &[(String, String)],
    name: &str,
    min: T,
    max: T,
) -> Result<Option<T>, QueryError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let Some(v) = last(pairs, name) else {
        return Ok(None);
    };
    let n: T = v
        .parse()
        .map_err(|_| QueryError::new(name, format!("not an integer: {v:?}")))?;
    if n < min || n > max {
        return Err(QueryError::new(
            name,
            format!("must be between {min} and {max}"),
        ));
    }
    Ok(Some(n))
}

/// Unix times at or above this (in absolute value) are taken as
/// milliseconds: as seconds they would be past the year 5000, as
/// milliseconds they are after 1973.
const MILLISECONDS_FROM: f64 = 1e11;

/// Which end of a range a time parameter is: a bare date means the start
/// of that day for `since` and its end (last millisecond) for `until`, so
/// both are inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// `since`.
    Start,
    /// `until`.
    Finish,
}

/// A time: RFC 3339, a naive ISO time (taken as UTC), a date (the whole
/// day, see [`End`]), Unix seconds, or Unix milliseconds (13 digits).
pub(crate) fn time_param(
    pairs: &[(String, String)],
    name: &str,
    end: End,
) -> Result<Option<i64>, QueryError> {
    let Some(v) = last(pairs, name) else {
        return Ok(None);
    };
    if let Some(ms) = parse_time(v) {
        return Ok(Some(ms));
    }
    if let Ok(t) = chrono::NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S%.f") {
        return Ok(Some(t.and_utc().timestamp_millis()));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d") {
        let start = d
            .and_hms_opt(0, 0, 0)
            .unwrap_or_default()
            .and_utc()
            .timestamp_millis();
        return Ok(Some(match end {
            End::Start => start,
            End::Finish => start + 86_400_000 - 1,
        }));
    }
    if let Ok(n) = v.parse::<f64>()
        && n.is_finite()
        && n.abs() < 1e16
    {
        let ms = if n.abs() >= MILLISECONDS_FROM {
            n
        } else {
            n * 1000.0
        };
        return Ok(Some(ms.round() as i64));
    }
    Err(QueryError::new(
        name,
        format!("not a time (RFC 3339, a date, Unix seconds or milliseconds): {v:?}"),
    ))
}

/// Parses one `label=` value: `name=value`, the name being any UTF-8
/// text without `=` (Prometheus 3 and Alertmanager 0.28 allow UTF-8 label
/// names such as `service.name`), or `"name"=value` with the name in
/// double quotes (`\"` and `\\` escaped), which may hold `=` too.
pub(crate) fn parse_label_filter(v: &str) -> Result<(String, String), QueryError> {
    let bad = |why: &str| QueryError::new("label", format!("{why}, got {v:?}"));
    let (name, value) = if let Some(rest) = v.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = rest.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, e)) => name.push(e),
                    None => return Err(bad("unfinished escape in a quoted label name")),
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                c => name.push(c),
            }
        }
        let end = end.ok_or_else(|| bad("unterminated quoted label name"))?;
        let value = rest[end + 1..]
            .strip_prefix('=')
            .ok_or_else(|| bad("expected \"name\"=value"))?;
        (name, value.to_owned())
    } else {
        let (name, value) = v
            .split_once('=')
            .ok_or_else(|| bad("expected name=value"))?;
        (name.to_owned(), value.to_owned())
    };
    if name.is_empty() {
        return Err(bad("empty label name"));
    }
    Ok((name, value))
}

/// Parses the parameters of `GET /history`.
///
/// # Errors
/// [`QueryError`] naming the first bad parameter.
pub fn parse_history_query(raw: Option<&str>) -> Result<HistoryQuery, QueryError> {
    let pairs = query_pairs(raw);
    let status = match last(&pairs, "status") {
        None => None,
        Some(s) => Some(
            Status::parse(s)
                .ok_or_else(|| QueryError::new("status", "must be \"firing\" or \"resolved\""))?,
        ),
    };
    let mut labels = Vec::new();
    for (k, v) in &pairs {
        if k != "label" {
            continue;
        }
        labels.push(parse_label_filter(v)?);
    }
    let cursor = match last(&pairs, "cursor") {
        None => None,
        Some(c) => Some(
            Cursor::decode(c)
                .ok_or_else(|| QueryError::new("cursor", "not a cursor from a Link header"))?,
        ),
    };
    let offset = number::<u64>(&pairs, "offset", 0, i64::MAX as u64)?.unwrap_or(0);
    if cursor.is_some() && offset > 0 {
        return Err(QueryError::new(
            "offset",
            "use either cursor or offset, not both",
        ));
    }
    Ok(HistoryQuery {
        alertname: text(&pairs, "alertname"),
        status,
        fingerprint: text(&pairs, "fingerprint"),
        namespace: text(&pairs, "namespace"),
        severity: text(&pairs, "severity"),
        since: time_param(&pairs, "since", End::Start)?,
        until: time_param(&pairs, "until", End::Finish)?,
        labels,
        limit: number(&pairs, "limit", 1, MAX_LIMIT)?.unwrap_or(DEFAULT_LIMIT),
        offset,
        cursor,
    })
}

/// The JSON of one event: the predecessor's fields, then Keel's.
pub(crate) fn event_json(row: &EventRow) -> Value {
    json!({
        "alertname": row.alertname,
        "fingerprint": row.fingerprint,
        "status": row.status,
        "labels": row.labels.0,
        "startsAt": format_time(row.starts_at),
        "endsAt": format_time(row.ends_at),
        "updatedAt": format_time(row.received_at),
        "namespace": row.namespace,
        "severity": row.severity,
        "annotations": row.annotations.0,
        "generatorURL": row.generator_url,
        "occurrences": row.occurrences,
        "lastSeen": format_time(row.last_seen),
    })
}

/// The JSON of one current-state row.
pub(crate) fn state_json(row: &StateRow) -> Value {
    json!({
        "alertname": row.alertname,
        "fingerprint": row.fingerprint,
        "status": row.status,
        "labels": row.labels.0,
        "annotations": row.annotations.0,
        "startsAt": format_time(row.starts_at),
        "endsAt": format_time(row.ends_at),
        "namespace": row.namespace,
        "severity": row.severity,
        "updatedAt": format_time(row.updated_at),
    })
}

async fn history(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = parse_history_query(raw.as_deref())?;
    let rows = state.inner.store.history(&query).await?;
    state.inner.metrics.history_query();
    let body: Vec<Value> = rows.iter().map(event_json).collect();
    let mut response = axum::Json(body).into_response();
    if rows.len() == query.limit as usize
        && let Some(last_row) = rows.last()
    {
        let cursor = Cursor {
            event_at: last_row.event_at,
            id: last_row.id,
        };
        let mut next = form_urlencoded::Serializer::new(String::new());
        for (k, v) in query_pairs(raw.as_deref()) {
            if k != "cursor" && k != "offset" {
                next.append_pair(&k, &v);
            }
        }
        next.append_pair("cursor", &cursor.encode());
        let link = format!("</history?{}>; rel=\"next\"", next.finish());
        if let Ok(value) = HeaderValue::from_str(&link) {
            response.headers_mut().insert(header::LINK, value);
        }
    }
    Ok(response)
}

async fn alert_timeline(
    State(state): State<AppState>,
    Path(fingerprint): Path<String>,
) -> Result<Response, ApiError> {
    let (events, current) = state.inner.store.alert(&fingerprint).await?;
    let raw = state.inner.store.raw_events(&fingerprint).await?;
    let Some(first) = events.first() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no events for fingerprint {fingerprint}"),
        ));
    };
    let points: Vec<Point> = events
        .iter()
        .filter_map(|e| {
            Some(Point {
                status: Status::parse(&e.status)?,
                starts_at: e.starts_at,
                ends_at: e.ends_at,
            })
        })
        .collect();
    let stats = timeline::stats(&points, Utc::now().timestamp_millis());
    let latest = events.last().unwrap_or(first);
    let ack = crate::filters::ack_json(&state, &fingerprint).await?;
    let classification = crate::classify::stored_json(state.store(), &fingerprint).await?;
    Ok(axum::Json(json!({
        "fingerprint": fingerprint,
        "ack": ack,
        "classification": classification,
        "alertname": latest.alertname,
        "namespace": latest.namespace,
        "severity": latest.severity,
        "labels": latest.labels.0,
        "status": current.as_ref().map_or(latest.status.as_str(), |c| c.status.as_str()),
        "firing_seconds": stats.firing_ms as f64 / 1000.0,
        "flaps": stats.flaps,
        "firing_periods": stats.periods,
        "first_seen": format_time(first.received_at),
        "last_seen": format_time(events.iter().map(|e| e.last_seen).max().unwrap_or(first.last_seen)),
        "events": events.iter().zip(raw.into_iter().map(Some).chain(std::iter::repeat(None))).map(|(e, raw)| {
            let mut v = event_json(e);
            v["raw"] = raw.unwrap_or(Value::Null);
            v
        }).collect::<Vec<_>>(),
    }))
    .into_response())
}

/// Parses the parameters of `GET /report`.
///
/// # Errors
/// [`QueryError`] naming the first bad parameter.
pub fn parse_report_query(raw: Option<&str>) -> Result<ReportQuery, QueryError> {
    let pairs = query_pairs(raw);
    let defaults = ReportQuery::default();
    Ok(ReportQuery {
        alertname: text(&pairs, "alertname"),
        namespace: text(&pairs, "namespace"),
        since: time_param(&pairs, "since", End::Start)?,
        until: time_param(&pairs, "until", End::Finish)?,
        min_flap: number(&pairs, "min_flap", 1, 1_000_000)?.unwrap_or(defaults.min_flap),
        top: number(&pairs, "top", 1, 1000)?.unwrap_or(defaults.top),
    })
}

async fn report(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = parse_report_query(raw.as_deref())?;
    let report = state.inner.store.report(&query).await?;
    state.inner.metrics.report_query();
    Ok(axum::Json(report_json(&report)).into_response())
}

pub(crate) fn report_json(report: &crate::store::Report) -> Value {
    json!({
        "total_events": report.total_events,
        "unique_alerts": report.unique_alerts,
        "top_alerts": report.top_alerts.iter().map(|g| json!({
            "alertname": g.alertname, "namespace": g.namespace, "events": g.n,
        })).collect::<Vec<_>>(),
        "flapping_alerts": report.flapping_alerts.iter().map(|g| json!({
            "alertname": g.alertname, "namespace": g.namespace, "flaps": g.n,
        })).collect::<Vec<_>>(),
        "summary": {
            "firing_now": report.firing_now,
            "resolved_now": report.resolved_now,
            "firing_by_severity": report.firing_by_severity,
            "by_severity": report.events_by_severity,
            "by_namespace": report.events_by_namespace,
        },
    })
}

// ---------------------------------------------------------------- health

async fn database_check(state: &AppState) -> (bool, Value) {
    let report = state.inner.readiness.evaluate().await;
    let mut deps = serde_json::Map::new();
    for check in &report.checks {
        let mut v = json!({
            "status": if check.status == CheckStatus::Pass { "ok" } else { "error" },
            "latency_ms": check.duration_ms,
        });
        if check.name == "database" {
            v["backend"] = json!(state.inner.store.backend_name());
        }
        if let Some(e) = &check.error {
            v["error"] = json!(e);
        }
        deps.insert(check.name.clone(), v);
    }
    (report.ready, Value::Object(deps))
}

async fn health_database(State(state): State<AppState>) -> Response {
    let (ready, deps) = database_check(&state).await;
    let mut body = deps.get("database").cloned().unwrap_or_else(|| json!({}));
    if ready {
        if let Ok(n) = state.inner.store.count_events().await {
            body["events"] = json!(n);
        }
        axum::Json(body).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
    }
}

async fn health_detailed(State(state): State<AppState>) -> Response {
    let (ready, deps) = database_check(&state).await;
    let shutting_down = state.inner.shutting_down.is_cancelled();
    let status = if shutting_down {
        "shutting_down"
    } else if ready {
        "healthy"
    } else {
        "unhealthy"
    };
    let body = json!({
        "status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.inner.started.elapsed().as_secs(),
        "backend": state.inner.store.backend_name(),
        "retention_days": state.inner.retention_days,
        "stored_events": state.inner.metrics.db_alerts(),
        "pipeline": state.inner.pipeline.names(),
        "dependencies": deps,
    });
    let code = if ready && !shutting_down {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

// ---------------------------------------------------------------- admin

async fn admin_retention(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !state.inner.tokens.admin_allowed(&headers) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or invalid bearer token",
        ));
    }
    let cutoff = retention::cutoff_ms(Utc::now().timestamp_millis(), state.inner.retention);
    let deleted = retention::purge(&state.inner.store, &state.inner.metrics, cutoff).await?;
    Ok(axum::Json(json!({ "deleted": deleted, "cutoff": format_time(cutoff) })).into_response())
}
