//! The predecessor's endpoints: `/enrichment/mode` and `/classification/...`.
//! Reads need the read token, changes (and anything that calls the LLM)
//! the admin token.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use serde_json::{Map, Value, json};

use super::{EnrichmentMode, db, effective, latest_view};
use crate::http::{ApiError, AppState};
use crate::model::format_time;
use crate::routing::Classification;

/// Most fingerprints in one `POST /classification/bulk`.
pub(crate) const BULK_MAX: usize = 100;
/// LLM calls a bulk request runs at once.
pub(crate) const BULK_CONCURRENCY: usize = 4;

/// The routes of this part (`/enrichment/mode`, `/classification/...`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/enrichment/mode", get(get_mode).post(set_mode))
        .route("/classification/stats", get(stats))
        .route("/classification/bulk", post(bulk))
        .route("/classification/refresh/{fingerprint}", post(refresh))
        .route("/classification/{fingerprint}", get(get_one))
}

/// The JSON of one classification.
pub(crate) fn classification_json(fingerprint: &str, c: &Classification) -> Value {
    json!({
        "fingerprint": fingerprint,
        "severity": c.severity.as_str(),
        "confidence": c.confidence,
        "reasoning": c.reasoning,
        "recommendations": c.recommendations,
        "model": c.model,
        "classified_at": format_time(c.classified_at_ms),
    })
}

/// The 401 for a read without the read token, `None` when allowed.
fn read_denied(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    if state.inner.tokens.read_allowed(headers) {
        return None;
    }
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "missing or invalid bearer token").into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, crate::auth::READ_CHALLENGE);
    Some(response)
}

/// The 401 for a change without the admin token, `None` when allowed.
fn admin_denied(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    if state.inner.tokens.admin_allowed(headers) {
        return None;
    }
    Some(ApiError::new(StatusCode::UNAUTHORIZED, "missing or invalid bearer token").into_response())
}

fn off() -> Response {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "classification is off: LLM_URL is not set",
    )
    .into_response()
}

/// `GET /enrichment/mode` → `{mode, source, effective_mode, classification,
/// redis}`.
async fn get_mode(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(r) = read_denied(&state, &headers) {
        return r;
    }
    axum::Json(mode_json(&state).await).into_response()
}

async fn mode_json(state: &AppState) -> Value {
    let e = &state.inner.enrichment;
    let reading = e.mode_reading().await;
    let enabled = e.classification_enabled();
    let mut body = json!({
        "mode": reading.mode.as_str(),
        "source": reading.source.as_str(),
        "effective_mode": effective(reading.mode, enabled).as_str(),
        "classification": if enabled { "on" } else { "off: LLM_URL is not set" },
        "redis": match (&reading.redis_error, e.redis_configured()) {
            (Some(_), _) => "unavailable",
            (None, true) => "ok",
            (None, false) => "not configured",
        },
    });
    if let Some(err) = reading.redis_error {
        body["redis_error"] = json!(err);
    }
    body
}

/// `POST /enrichment/mode` `{"mode": ...}` (admin).
async fn set_mode(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = admin_denied(&state, &headers) {
        return r;
    }
    let requested = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("mode").and_then(Value::as_str).map(str::to_owned));
    let Some(mode) = requested.as_deref().and_then(EnrichmentMode::parse) else {
        return ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "body must be {\"mode\": \"transparent\" | \"enriched\" | \"transparent_with_recommendations\"}",
        )
        .into_response();
    };
    match state.inner.enrichment.set_mode(mode).await {
        Ok(written) => {
            let mut body = mode_json(&state).await;
            body["written_to"] = json!(written.as_str());
            axum::Json(body).into_response()
        }
        Err(e) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Redis is unavailable, the mode is unchanged: {e}"),
        )
        .into_response(),
    }
}

/// `GET /classification/{fingerprint}`: the stored classification, 404
/// without one.
async fn get_one(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(fingerprint): Path<String>,
) -> Response {
    if let Some(r) = read_denied(&state, &headers) {
        return r;
    }
    match db::get(state.store(), &fingerprint).await {
        Ok(Some(c)) => axum::Json(classification_json(&fingerprint, &c)).into_response(),
        Ok(None) => ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no classification for fingerprint {fingerprint}"),
        )
        .into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// `POST /classification/refresh/{fingerprint}` (admin): classifies the
/// alert's latest stored event now, bypassing the cache.
async fn refresh(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(fingerprint): Path<String>,
) -> Response {
    if let Some(r) = admin_denied(&state, &headers) {
        return r;
    }
    let e = &state.inner.enrichment;
    if !e.classification_enabled() {
        return off();
    }
    let view = match latest_view(state.store(), &fingerprint).await {
        Ok(Some(v)) => v,
        Ok(None) => {
            return ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no alert with fingerprint {fingerprint}"),
            )
            .into_response();
        }
        Err(err) => return ApiError::from(err).into_response(),
    };
    match e.refresh(&view).await {
        Some(c) => {
            let mut body = classification_json(&fingerprint, &c);
            body["refreshed"] = json!(true);
            axum::Json(body).into_response()
        }
        None => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "the LLM gave no valid classification (see GET /classification/stats)",
        )
        .into_response(),
    }
}

/// `POST /classification/bulk` `{"fingerprints": [...]}` (admin, at most
/// [`BULK_MAX`]): each alert's classification (cache, stored, or the LLM,
/// [`BULK_CONCURRENCY`] at a time).
async fn bulk(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = admin_denied(&state, &headers) {
        return r;
    }
    let fingerprints: Option<Vec<String>> = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| serde_json::from_value(v.get("fingerprints")?.clone()).ok());
    let Some(mut fingerprints) = fingerprints else {
        return ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "body must be {\"fingerprints\": [strings]}",
        )
        .into_response();
    };
    if fingerprints.is_empty() || fingerprints.len() > BULK_MAX {
        return ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("fingerprints must hold 1 to {BULK_MAX} entries"),
        )
        .into_response();
    }
    fingerprints.sort();
    fingerprints.dedup();
    let e = state.inner.enrichment.clone();
    if !e.classification_enabled() {
        return off();
    }
    let store = state.store().clone();
    let answers: Vec<(String, Result<Classification, String>)> =
        futures::stream::iter(fingerprints)
            .map(|fingerprint| {
                let (e, store) = (e.clone(), store.clone());
                async move {
                    let result = match latest_view(&store, &fingerprint).await {
                        Ok(Some(view)) => e
                            .classify_unbounded(&view)
                            .await
                            .ok_or_else(|| "classification failed".to_owned()),
                        Ok(None) => Err("no alert with this fingerprint".to_owned()),
                        Err(err) => {
                            tracing::warn!(error = %err, "bulk classification read failed");
                            Err("database unavailable".to_owned())
                        }
                    };
                    (fingerprint, result)
                }
            })
            .buffer_unordered(super::api::BULK_CONCURRENCY)
            .collect()
            .await;
    let mut results = Map::new();
    let mut errors = Map::new();
    for (fingerprint, result) in answers {
        match result {
            Ok(c) => {
                results.insert(fingerprint.clone(), classification_json(&fingerprint, &c));
            }
            Err(why) => {
                errors.insert(fingerprint, json!(why));
            }
        }
    }
    axum::Json(json!({
        "classified": results.len(),
        "failed": errors.len(),
        "results": results,
        "errors": errors,
    }))
    .into_response()
}

/// `GET /classification/stats`: stored counts by severity, cache and LLM
/// counters, the breaker's state and the mode.
async fn stats(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(r) = read_denied(&state, &headers) {
        return r;
    }
    let e = &state.inner.enrichment;
    let counts = match db::counts(state.store()).await {
        Ok(c) => c,
        Err(err) => return ApiError::from(err).into_response(),
    };
    let c = e.counters();
    let n = |a: &prometheus_client::metrics::counter::Counter| a.get();
    let mut by_severity = Map::new();
    for s in ["critical", "warning", "info", "noise"] {
        by_severity.insert(s.to_owned(), json!(counts.get(s).copied().unwrap_or(0)));
    }
    let total: i64 = counts.values().sum();
    let (model, breaker) = match e.llm_info() {
        Some((m, b)) => (json!(m), json!(b)),
        None => (Value::Null, Value::Null),
    };
    let mode = mode_json(&state).await;
    axum::Json(json!({
        "enabled": e.classification_enabled(),
        "mode": mode["mode"],
        "effective_mode": mode["effective_mode"],
        "mode_source": mode["source"],
        "total_classified": total,
        "by_severity": by_severity,
        "cache": {
            "backend": e.cache_backend(),
            "ttl_seconds": e.ttl().as_secs(),
            "hits": n(&c.cache_hits),
            "misses": n(&c.cache_misses),
            "stored_hits": n(&c.stored_hits),
        },
        "llm": {
            "model": model,
            "breaker": breaker,
            "calls": n(&c.llm_calls),
            "successes": n(&c.llm_successes),
            "failures": n(&c.llm_failures),
            "invalid_answers": n(&c.llm_invalid),
            "timeouts": n(&c.llm_timeouts),
            "breaker_rejections": n(&c.breaker_rejections),
        },
        "bound_ms": e.bound().as_millis() as u64,
        "bound_exceeded": n(&c.bound_exceeded),
        "store_failures": n(&c.store_failures),
    }))
    .into_response()
}
