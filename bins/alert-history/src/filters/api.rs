//! The HTTP routes of filter rules and acknowledgements.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::db::{self, Put};
use super::rule::{Invalid, Rule, RuleSpec, valid_name};
use super::{Ack, Filters};
use crate::auth::READ_CHALLENGE;
use crate::http::{ApiError, AppState};
use crate::model::{Status, ZERO_TIME_MS, format_time};
use crate::routing::{AlertView, Classification, Decision, LlmSeverity};

/// Largest request body of these routes.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest `by` of an acknowledgement.
pub const MAX_ACK_BY: usize = 128;
/// Longest `reason` of an acknowledgement.
pub const MAX_ACK_REASON: usize = 1024;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/proxy/filters/rules", get(list_rules).post(put_rule))
        .route(
            "/proxy/filters/rules/{name}",
            get(get_rule).delete(delete_rule),
        )
        .route("/proxy/filters/test", post(test_rules))
        .route(
            "/alerts/{fingerprint}/ack",
            get(get_ack).post(post_ack).delete(delete_ack),
        )
}

fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if state.inner.tokens.admin_allowed(headers) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or invalid bearer token",
        ))
    }
}

/// Whether the request may read; the 401 answer when not.
fn refuse_read(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    if state.inner.tokens.read_allowed(headers) {
        return None;
    }
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "missing or invalid bearer token").into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, READ_CHALLENGE);
    Some(response)
}

fn invalid(e: Invalid) -> ApiError {
    let message = format!("{}: {}", e.field, e.reason);
    ApiError::unprocessable("body", &e.field, message)
}

/// Parses a JSON body into `T`, naming the offending field of a body of
/// the wrong shape (an unknown field is named with its parent's path).
fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {MAX_BODY_BYTES} bytes"),
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let inner = e.inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {inner}"));
        }
        let message = inner.to_string();
        let mut field = e.path().to_string();
        if field == "." {
            field.clear();
        }
        // serde_path_to_error's path already ends with an unknown field's
        // name; a missing field's is its parent's.
        if let Some(rest) = message.strip_prefix("missing field `")
            && let Some((name, _)) = rest.split_once('`')
        {
            field = if field.is_empty() {
                name.to_owned()
            } else {
                format!("{field}.{name}")
            };
        }
        let field = if field.is_empty() {
            "body".to_owned()
        } else {
            field
        };
        ApiError::unprocessable("body", &field, format!("{field}: {message}"))
    })?;
    de.end()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")))?;
    Ok(value)
}

pub(super) fn rule_body(rule: &Rule) -> Value {
    let spec = &rule.spec;
    json!({
        "name": spec.name,
        "target": spec.target,
        "action": spec.action.as_str(),
        "delay_seconds": spec.delay_seconds,
        "priority": spec.priority,
        "enabled": spec.enabled,
        "conditions": spec.conditions,
        "created_at": format_time(rule.created_at),
        "updated_at": format_time(rule.updated_at),
    })
}

fn decision_body(decision: &Decision) -> Value {
    match decision {
        Decision::Allow => json!({"decision": "allow", "rule": null, "delay_seconds": null}),
        Decision::Deny { rule } => {
            json!({"decision": "deny", "rule": rule, "delay_seconds": null})
        }
        Decision::Delay { rule, delay } => {
            json!({"decision": "delay", "rule": rule, "delay_seconds": delay.as_secs()})
        }
    }
}

fn not_found(what: String) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, what)
}

fn store_of(state: &AppState) -> crate::Store {
    state.inner.filters.store_or(&state.inner.store)
}

async fn list_rules(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(r) = refuse_read(&state, &headers) {
        return r;
    }
    store_of(&state);
    let rules = state.inner.filters.rules();
    let body: Vec<Value> = rules.rules().iter().map(|r| rule_body(r)).collect();
    axum::Json(json!({ "count": body.len(), "rules": body })).into_response()
}

async fn get_rule(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if let Some(r) = refuse_read(&state, &headers) {
        return r;
    }
    let rules = state.inner.filters.rules();
    match rules.rules().iter().find(|r| r.name() == name) {
        Some(rule) => axum::Json(rule_body(rule)).into_response(),
        None => not_found(format!("no filter rule named {name:?}")).into_response(),
    }
}

async fn put_rule(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let spec: RuleSpec = parse_body(&body)?;
    let now = Utc::now().timestamp_millis();
    // Validated before storing; the stored copy is what the answer shows.
    let spec = spec.compile(now, now).map_err(invalid)?.spec;
    let filters: &Filters = &state.inner.filters;
    let store = store_of(&state);
    let created = match db::put_rule(&store, &spec, now).await? {
        Put::Stored { created } => created,
        Put::TooMany => {
            return Err(ApiError::unprocessable(
                "body",
                "name",
                format!("at most {} filter rules can be stored", super::MAX_RULES),
            ));
        }
    };
    filters.reload_rules(&store).await?;
    tracing::info!(rule = %spec.name, action = spec.action.as_str(), target = %spec.target,
        created, "filter rule stored");
    let rules = filters.rules();
    let rule = rules.rules().iter().find(|r| r.name() == spec.name);
    let body = rule.map_or_else(|| json!({ "name": spec.name }), |r| rule_body(r));
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(body)).into_response())
}

async fn delete_rule(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    if valid_name(&name).is_err() {
        return Err(not_found(format!("no filter rule named {name:?}")));
    }
    let store = store_of(&state);
    if !db::delete_rule(&store, &name).await? {
        return Err(not_found(format!("no filter rule named {name:?}")));
    }
    state.inner.filters.reload_rules(&store).await?;
    tracing::info!(rule = %name, "filter rule deleted");
    Ok(axum::Json(json!({ "message": "filter rule deleted", "name": name })).into_response())
}

/// The alert of `POST /proxy/filters/test`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestAlert {
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    status: Option<Status>,
}

/// The classification of `POST /proxy/filters/test`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestClassification {
    severity: LlmSeverity,
    confidence: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestRequest {
    alert: TestAlert,
    #[serde(default)]
    classification: Option<TestClassification>,
    target: String,
}

async fn test_rules(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = refuse_read(&state, &headers) {
        return r;
    }
    let request: TestRequest = match parse_body(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    if let Some(c) = &request.classification
        && !(0.0..=1.0).contains(&c.confidence)
    {
        return ApiError::unprocessable(
            "body",
            "classification.confidence",
            "classification.confidence: must be between 0 and 1".into(),
        )
        .into_response();
    }
    let labels = request.alert.labels;
    let alert = AlertView {
        event_id: 0,
        fingerprint: String::new(),
        alertname: labels.get("alertname").cloned().unwrap_or_default(),
        namespace: labels.get("namespace").cloned(),
        severity: labels.get("severity").cloned(),
        status: request.alert.status.unwrap_or(Status::Firing),
        starts_at: 0,
        ends_at: ZERO_TIME_MS,
        labels,
        annotations: serde_json::Map::new(),
        generator_url: None,
    };
    let classification = request.classification.map(|c| Classification {
        severity: c.severity,
        confidence: c.confidence,
        reasoning: String::new(),
        recommendations: Vec::new(),
        model: String::new(),
        classified_at_ms: 0,
    });
    let rules = state.inner.filters.rules();
    let (decision, _) = rules.decide(&alert, classification.as_ref(), &request.target);
    axum::Json(decision_body(&decision)).into_response()
}

// ------------------------------------------------------------ acknowledgements

/// The body of `POST /alerts/{fingerprint}/ack`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AckRequest {
    by: String,
    reason: String,
}

/// An acknowledgement's JSON; `current_starts_at`: the `startsAt` of the
/// alert's current firing state, when known (`active` says whether the
/// ack covers it).
pub(super) fn ack_body(ack: &Ack, current: Option<(&str, i64)>) -> Value {
    let mut body = json!({
        "fingerprint": ack.fingerprint,
        "by": ack.by,
        "reason": ack.reason,
        "acked_at": format_time(ack.acked_at_ms),
        "starts_at": format_time(ack.starts_at),
    });
    if let Some((status, starts_at)) = current {
        body["active"] = json!(status == "firing" && starts_at == ack.starts_at);
    }
    body
}

fn check_ack_text(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    let value = value.trim();
    let bad = |reason: String| ApiError::unprocessable("body", field, format!("{field}: {reason}"));
    if value.is_empty() {
        return Err(bad("must not be empty".into()));
    }
    if value.chars().count() > max {
        return Err(bad(format!("longer than {max} characters")));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(bad("contains control characters".into()));
    }
    Ok(value.to_owned())
}

async fn post_ack(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(fingerprint): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let request: AckRequest = parse_body(&body)?;
    let by = check_ack_text("by", &request.by, MAX_ACK_BY)?;
    let reason = check_ack_text("reason", &request.reason, MAX_ACK_REASON)?;
    let store = store_of(&state);
    let Some((status, starts_at)) = db::alert_state(&store, &fingerprint).await? else {
        return Err(not_found(format!(
            "no alert with fingerprint {fingerprint}"
        )));
    };
    if status != "firing" {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("alert {fingerprint} is resolved: there is nothing to acknowledge"),
        ));
    }
    let ack = Ack {
        fingerprint: fingerprint.clone(),
        by,
        reason,
        acked_at_ms: Utc::now().timestamp_millis(),
        starts_at,
    };
    db::put_ack(&store, &ack).await?;
    state.inner.filters.invalidate_acks(Some(&fingerprint));
    // What already waits in a target's sender for this alert goes no
    // further (recorded as filtered).
    if let Some(publisher) = &state.inner.publisher {
        publisher.acknowledged(&fingerprint, &ack.by);
    }
    tracing::info!(fingerprint = %fingerprint, by = %ack.by, "alert acknowledged");
    Ok((
        StatusCode::CREATED,
        axum::Json(ack_body(&ack, Some((&status, starts_at)))),
    )
        .into_response())
}

async fn delete_ack(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(fingerprint): Path<String>,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let store = store_of(&state);
    let deleted = db::delete_ack(&store, &fingerprint, None).await?;
    state.inner.filters.invalidate_acks(Some(&fingerprint));
    if !deleted {
        return Err(not_found(format!(
            "alert {fingerprint} is not acknowledged"
        )));
    }
    tracing::info!(fingerprint = %fingerprint, "acknowledgement removed");
    Ok(
        axum::Json(json!({ "message": "acknowledgement removed", "fingerprint": fingerprint }))
            .into_response(),
    )
}

async fn get_ack(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(fingerprint): Path<String>,
) -> Response {
    if let Some(r) = refuse_read(&state, &headers) {
        return r;
    }
    let store = store_of(&state);
    let result = async {
        let ack = db::get_ack(&store, &fingerprint).await?;
        let current = db::alert_state(&store, &fingerprint).await?;
        Ok::<_, sqlx::Error>((ack, current))
    }
    .await;
    match result {
        Err(e) => ApiError::from(e).into_response(),
        Ok((Some(ack), current)) => axum::Json(ack_body(
            &ack,
            current.as_ref().map(|(s, t)| (s.as_str(), *t)),
        ))
        .into_response(),
        Ok((None, _)) => {
            not_found(format!("alert {fingerprint} is not acknowledged")).into_response()
        }
    }
}
