//! `GET /publishing/targets` (read token), `POST
//! /publishing/targets/refresh` and `POST /publishing/test/{target}` (admin
//! token).

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use keel_notify::{Message, Notification, Sink, SinkError};
use serde_json::{Value, json};

use crate::http::{ApiError, AppState};

/// The routes of this part.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/publishing/targets", get(list))
        .route("/publishing/targets/refresh", post(refresh))
        .route("/publishing/test/{target}", post(test))
}

fn unauthorized() -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "missing or invalid bearer token")
}

async fn list(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !state.inner.tokens.read_allowed(&headers) {
        let mut response = unauthorized().into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, crate::auth::READ_CHALLENGE);
        return response;
    }
    let targets = &state.inner.targets;
    let current = targets.current();
    axum::Json(json!({
        "count": current.len(),
        "targets": current.iter().map(|t| t.to_json()).collect::<Vec<Value>>(),
        "invalid": targets.invalid(),
        "discovery": targets.discovery(),
    }))
    .into_response()
}

async fn refresh(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !state.inner.tokens.admin_allowed(&headers) {
        return unauthorized().into_response();
    }
    match state.inner.targets.refresh().await {
        Err(crate::Error::Config(e)) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{}: {}", e.field(), e.reason()),
        )
        .into_response(),
        Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        Ok(report) => match &report.kubernetes_error {
            Some(error) => {
                let message = format!("re-listing the target Secrets failed: {error}");
                (
                    StatusCode::BAD_GATEWAY,
                    axum::Json(json!({"detail": message, "error": message, "report": report})),
                )
                    .into_response()
            }
            None => axum::Json(json!(report)).into_response(),
        },
    }
}

/// Sends one info notification through the target's sink, directly (no
/// queue, no retry, no rate limit): the destination's answer is the
/// result.
async fn test(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if !state.inner.tokens.admin_allowed(&headers) {
        return unauthorized().into_response();
    }
    let Some(target) = state.inner.targets.get(&name) else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no publishing target named `{name}`"),
        )
        .into_response();
    };
    let sink = match target.sink() {
        Ok(s) => s,
        Err(e) => {
            return ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.reason().to_owned())
                .into_response();
        }
    };
    let notification = Notification::info(
        format!("alert-history:test:{name}"),
        format!("alert-history test notification for target {name}"),
    )
    .subject(format!("alert-history:test:{name}"))
    .body("Sent by POST /publishing/test: this target is reachable and accepts alerts.")
    .field("target", name.clone())
    .field("format", target.format.as_str());
    let message = Message::new(0, notification, 1);
    let started = tokio::time::Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(30), sink.send(&message)).await;
    let latency_ms = started.elapsed().as_millis() as u64;
    let base = |result: &str| {
        json!({
            "target": name,
            "format": target.format.as_str(),
            "result": result,
            "latency_ms": latency_ms,
        })
    };
    match outcome {
        Ok(Ok(())) => {
            tracing::info!(target_name = %name, latency_ms, "test notification accepted");
            axum::Json(base("success")).into_response()
        }
        Err(_) => {
            let message = "the destination did not answer within 30 s".to_owned();
            let mut body = base("failure");
            body["detail"] = json!(message);
            body["error"] = json!(message);
            body["kind"] = json!("timeout");
            (StatusCode::GATEWAY_TIMEOUT, axum::Json(body)).into_response()
        }
        Ok(Err(e)) => {
            tracing::warn!(target_name = %name, error = %e, "test notification refused");
            let message = e.to_string();
            let mut body = base("failure");
            body["detail"] = json!(message);
            body["error"] = json!(message);
            body["kind"] = json!(e.kind());
            if let SinkError::Permanent {
                status: Some(code), ..
            } = &e
            {
                body["status"] = json!(code);
            }
            if let Some(after) = e.retry_after() {
                body["retry_after_seconds"] = json!(after.as_secs());
            }
            (StatusCode::BAD_GATEWAY, axum::Json(body)).into_response()
        }
    }
}
