//! The admin API on the kit's admin server: `/vms` (list, add), `/vms/{id}`
//! (show with its attempts, delete), `/vms/{id}/recover|pause|resume`,
//! `/drain` (`GET` the host's recovery state, `POST {"drained": bool}` to
//! stop or restart recovering every VM for host maintenance), `GET /status`
//! (the subsystems' switches and the configuration's state),
//! `POST /health-checks/enable|disable`, `POST /recovery/enable|disable`
//! and `POST /reload` (re-read `SUPERVISOR_CONFIG`, as SIGHUP does).
//! With `ADMIN_TOKEN` set, every route here needs `Authorization: Bearer
//! <token>`; `/healthz`, `/readyz` and `/metrics` are the kit's.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::spec::VmSpec;
use crate::supervisor::{CommandError, ReloadError, Supervisor};

#[derive(Clone)]
struct AppState {
    supervisor: Supervisor,
    token: Option<Arc<str>>,
}

/// The admin routes over `supervisor`.
pub fn routes(supervisor: Supervisor, token: Option<String>) -> Router {
    let state = AppState {
        supervisor,
        token: token.map(Arc::from),
    };
    Router::new()
        .route("/vms", get(list).post(add))
        .route("/vms/{id}", get(show).delete(delete))
        .route("/vms/{id}/recover", post(recover))
        .route("/vms/{id}/pause", post(pause))
        .route("/vms/{id}/resume", post(resume))
        .route("/drain", get(drain_state).post(set_drain))
        .route("/status", get(drain_state))
        .route("/health-checks/enable", post(health_on))
        .route("/health-checks/disable", post(health_off))
        .route("/recovery/enable", post(recovery_on))
        .route("/recovery/disable", post(recovery_off))
        .route("/reload", post(reload))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state)
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({"error": message.to_string()}))).into_response()
}

async fn auth(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let given = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        if given != Some(&**token) {
            return error(StatusCode::UNAUTHORIZED, "bearer token required");
        }
    }
    next.run(request).await
}

fn command_error(e: CommandError) -> Response {
    match e {
        CommandError::NotFound(_) => error(StatusCode::NOT_FOUND, e),
        CommandError::Exists(_) => error(StatusCode::CONFLICT, e),
        CommandError::Invalid(_) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
        CommandError::Registry(_) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn list(State(s): State<AppState>) -> Response {
    Json(s.supervisor.list()).into_response()
}

async fn show(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    let Some(view) = s.supervisor.get(&id) else {
        return error(StatusCode::NOT_FOUND, format!("no VM {id}"));
    };
    let attempts = match s.supervisor.attempts(&id).await {
        Ok(a) => a,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let mut body = serde_json::to_value(view).unwrap_or_default();
    body["attempts"] = serde_json::to_value(attempts).unwrap_or_default();
    Json(body).into_response()
}

async fn add(
    State(s): State<AppState>,
    body: Result<Json<VmSpec>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(spec) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, e.body_text()),
    };
    let id = spec.id.clone();
    match s.supervisor.add(spec).await {
        Ok(()) => (StatusCode::CREATED, Json(json!({"id": id}))).into_response(),
        Err(e) => command_error(e),
    }
}

async fn delete(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    match s.supervisor.delete(&id).await {
        Ok(()) => Json(json!({"deleted": id})).into_response(),
        Err(e) => command_error(e),
    }
}

fn accepted(result: Result<(), CommandError>, id: &str, what: &str) -> Response {
    match result {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(json!({"id": id, "accepted": what})),
        )
            .into_response(),
        Err(e) => command_error(e),
    }
}

fn drain_body(s: &Supervisor) -> Json<crate::supervisor::Status> {
    Json(s.status())
}

async fn health_on(State(s): State<AppState>) -> Response {
    s.supervisor.set_health_checks(true);
    drain_body(&s.supervisor).into_response()
}

async fn health_off(State(s): State<AppState>) -> Response {
    s.supervisor.set_health_checks(false);
    drain_body(&s.supervisor).into_response()
}

async fn recovery_on(State(s): State<AppState>) -> Response {
    s.supervisor.set_recovery(true);
    drain_body(&s.supervisor).into_response()
}

async fn recovery_off(State(s): State<AppState>) -> Response {
    s.supervisor.set_recovery(false);
    drain_body(&s.supervisor).into_response()
}

async fn reload(State(s): State<AppState>) -> Response {
    match s.supervisor.reload().await {
        Ok(report) => Json(report).into_response(),
        Err(e @ ReloadError::Invalid(_)) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
        Err(e @ ReloadError::Registry(_)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn drain_state(State(s): State<AppState>) -> Response {
    drain_body(&s.supervisor).into_response()
}

#[derive(serde::Deserialize)]
struct DrainRequest {
    drained: bool,
}

async fn set_drain(
    State(s): State<AppState>,
    body: Result<Json<DrainRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    match body {
        Ok(Json(request)) => {
            s.supervisor.set_drained(request.drained);
            drain_body(&s.supervisor).into_response()
        }
        Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, e.body_text()),
    }
}

async fn recover(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    accepted(s.supervisor.recover(&id), &id, "recover")
}

async fn pause(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    accepted(s.supervisor.pause(&id), &id, "pause")
}

async fn resume(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    accepted(s.supervisor.resume(&id), &id, "resume")
}
