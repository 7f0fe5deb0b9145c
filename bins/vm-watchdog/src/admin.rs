//! The admin API, on the program's HTTP server (keel-telemetry's admin
//! router) beside `/health` and `/metrics`:
//!
//! | method and path | what |
//! |---|---|
//! | `GET /vms`, `GET /vms/{name}` | every VM's state (open, like `/health`) |
//! | `POST /vms/{name}/pause` | no starts, no alerts until resumed |
//! | `POST /vms/{name}/resume` | ends a pause, an operator's maintenance and a mute; releases the flap guard |
//! | `POST /vms/{name}/maintenance` `{"duration": "2h"}` | neither started nor alerted for the duration |
//! | `DELETE /vms/{name}/maintenance` | ends it |
//! | `POST /vms/{name}/mute` `{"duration": "2h"}` | no alerts for the duration (still started) |
//! | `DELETE /vms/{name}/mute` | ends it |
//! | `POST /vms/{name}/ack` | no reminders until it recovers (409 when it is not down) |
//! | `GET /breakers` | every circuit breaker (open) |
//! | `POST /breakers/{name}/open\|disable\|reset` | force a breaker |
//!
//! Every request other than `GET`/`HEAD` needs `Authorization: Bearer
//! $ADMIN_TOKEN` (compared in constant time): without `ADMIN_TOKEN` they
//! answer 403, with a missing or wrong token 401. Errors are JSON
//! `{"error": "..."}`: 404 for an unknown VM or breaker, 409 for an
//! acknowledgement of a VM that is not down, 422 for a bad duration, 404
//! and 405 for a path or method no endpoint has.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::api::RawApi;
use crate::control::ControlError;
use crate::engine::Engine;

/// A JSON error answer.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

fn answer(result: Result<Value, ControlError>) -> Response {
    match result {
        Ok(view) => axum::Json(view).into_response(),
        Err(e) => {
            let status = match e {
                ControlError::UnknownVm(_) => StatusCode::NOT_FOUND,
                ControlError::NotDown(_) => StatusCode::CONFLICT,
                ControlError::BadDuration(_) => StatusCode::UNPROCESSABLE_ENTITY,
            };
            error(status, e.to_string())
        }
    }
}

/// Equal without revealing where two byte strings differ (the time
/// depends on the longer length only).
fn same(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x);
    }
    diff == 0
}

async fn authorize(token: Option<Arc<str>>, request: Request, next: Next) -> Response {
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return next.run(request).await;
    }
    let Some(token) = token else {
        return error(
            StatusCode::FORBIDDEN,
            "the admin API's mutating endpoints are off: ADMIN_TOKEN is not set",
        );
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let unauthorized = |message: &str| {
        let mut response = error(StatusCode::UNAUTHORIZED, message);
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        response
    };
    match presented {
        None => unauthorized("missing `Authorization: Bearer <ADMIN_TOKEN>`"),
        Some(p) if !same(p.as_bytes(), token.as_bytes()) => {
            tracing::warn!(method = %request.method(), path = %request.uri().path(), "admin request with a wrong token");
            unauthorized("invalid bearer token")
        }
        Some(_) => next.run(request).await,
    }
}

/// The `duration` of a JSON body `{"duration": "2h"}` (or seconds).
fn duration_of(body: &Bytes) -> Result<std::time::Duration, String> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| format!("the body must be JSON like {{\"duration\": \"2h\"}}: {e}"))?;
    match &value["duration"] {
        Value::String(s) => crate::duration::parse(s),
        Value::Number(n) => match n.as_u64() {
            Some(secs) => crate::duration::parse(&secs.to_string()),
            None => Err("`duration` must be a whole number of seconds or like \"2h\"".into()),
        },
        _ => Err("missing `duration` (like \"2h\", \"30m\" or seconds)".into()),
    }
}

/// The admin API over `engine`; `token` is `ADMIN_TOKEN`.
pub fn routes<R: RawApi>(engine: Arc<Engine<R>>, token: Option<String>) -> Router {
    let token: Option<Arc<str>> = token.map(Arc::from);
    let e = engine.clone();
    let list = get(move || {
        let e = e.clone();
        async move { axum::Json(Value::from(e.vms_view())) }
    });
    let e = engine.clone();
    let one = get(move |Path(name): Path<String>| {
        let e = e.clone();
        async move {
            match e.vm_view(&name) {
                Some(view) => axum::Json(view).into_response(),
                None => answer(Err(ControlError::UnknownVm(name))),
            }
        }
    });
    macro_rules! act {
        ($method:ident) => {{
            let e = engine.clone();
            move |Path(name): Path<String>| {
                let e = e.clone();
                async move { answer(e.$method(&name)) }
            }
        }};
    }
    macro_rules! for_duration {
        ($method:ident) => {{
            let e = engine.clone();
            move |Path(name): Path<String>, body: Bytes| {
                let e = e.clone();
                async move {
                    match duration_of(&body) {
                        Ok(d) => answer(e.$method(&name, d)),
                        Err(m) => error(StatusCode::UNPROCESSABLE_ENTITY, m),
                    }
                }
            }
        }};
    }
    let breakers = {
        let engine = engine.clone();
        move || {
            let mut all = engine.api().breakers().breakers();
            all.extend(engine.alerts().notifier().breakers());
            all
        }
    };
    Router::new()
        .route("/vms", list)
        .route("/vms/{name}", one)
        .route("/vms/{name}/pause", post(act!(pause)))
        .route("/vms/{name}/resume", post(act!(resume)))
        .route(
            "/vms/{name}/maintenance",
            post(for_duration!(start_maintenance)).delete(act!(end_maintenance)),
        )
        .route(
            "/vms/{name}/mute",
            post(for_duration!(mute)).delete(act!(unmute)),
        )
        .route("/vms/{name}/ack", post(act!(ack)))
        .merge(keel_telemetry::breaker_routes(Arc::new(breakers), true))
        // JSON errors for paths and methods no route has (the kit serves
        // these routes behind its own, so this answers for the whole port).
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this endpoint",
            )
        })
        .layer(axum::middleware::from_fn(move |request, next| {
            authorize(token.clone(), request, next)
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(same(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!same(b"0123456789abcdef", b"0123456789abcdeX"));
        assert!(!same(b"0123456789abcdef", b"0123456789abcde"));
        assert!(!same(b"", b"x"));
        assert!(same(b"", b""));
    }
}
