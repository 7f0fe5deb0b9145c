//! The dashboard: one HTML page with its script and stylesheet embedded in
//! the binary (no CDN; it works in closed networks), and the JSON behind it.

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::Utc;
use serde_json::{Value, json};

use crate::http::{ApiError, AppState, event_json, number, query_pairs, report_json, state_json};
use crate::model::format_time;
use crate::store::{HistoryQuery, ReportQuery};

const HTML: &str = include_str!("../assets/dashboard.html");
const SCRIPT: &str = include_str!("../assets/dashboard.js");
const STYLE: &str = include_str!("../assets/dashboard.css");

/// Most alerts in the overview's firing-now list.
pub const FIRING_LIST_LIMIT: u32 = 500;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/dashboard", get(page))
        .route("/dashboard/", get(page))
        .route("/dashboard/app.js", get(script))
        .route("/dashboard/app.css", get(style))
        .route("/api/dashboard/overview", get(overview))
        .route("/api/dashboard/charts", get(charts))
        .route("/api/dashboard/alerts/recent", get(recent))
        .route("/api/dashboard/recommendations", get(recommendations))
}

/// Adds each alert's stored classification (`classification`: severity,
/// confidence, reasoning, recommendations, or `null`) to `rows`, JSON
/// objects with a `fingerprint`.
async fn with_classifications(state: &AppState, rows: &mut [Value]) -> Result<(), ApiError> {
    let mut fingerprints: Vec<String> = rows
        .iter()
        .filter_map(|r| r["fingerprint"].as_str().map(str::to_owned))
        .collect();
    fingerprints.sort();
    fingerprints.dedup();
    let mut found = std::collections::HashMap::new();
    for chunk in fingerprints.chunks(200) {
        found.extend(crate::classify::stored_many(state.store(), chunk).await?);
    }
    for row in rows {
        let c = row["fingerprint"].as_str().and_then(|f| {
            found
                .get(f)
                .map(|c| crate::classify::classification_json(f, c))
        });
        row["classification"] = c.unwrap_or(Value::Null);
    }
    Ok(())
}

/// Adds each firing alert's acknowledgement (`ack`: by, reason, when,
/// whether it covers the current episode, or `null`) to `rows`. One lookup
/// per row: the firing list is bounded (`FIRING_LIST_LIMIT`).
async fn with_acks(state: &AppState, rows: &mut [Value]) -> Result<(), ApiError> {
    for row in rows {
        let Some(fingerprint) = row["fingerprint"].as_str().map(str::to_owned) else {
            continue;
        };
        row["ack"] = crate::filters::ack_json(state, &fingerprint)
            .await
            .map_err(|e| ApiError::database(&e))?;
    }
    Ok(())
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        HTML,
    )
        .into_response()
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
        .into_response()
}

async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

/// `GET /api/dashboard/overview?hours=24`: the report over the last
/// `hours` (1..=8760) plus every alert firing now.
async fn overview(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(raw.as_deref());
    let hours: i64 = number(&pairs, "hours", 1, 8760)?.unwrap_or(24);
    let now = Utc::now().timestamp_millis();
    let since = now - hours * 3_600_000;
    let store = state.store();
    let report = store
        .report(&ReportQuery {
            since: Some(since),
            ..ReportQuery::default()
        })
        .await?;
    let firing = store.firing_now(FIRING_LIST_LIMIT).await?;
    let mut body = report_json(&report);
    body["window_hours"] = json!(hours);
    body["since"] = json!(format_time(since));
    body["generated_at"] = json!(format_time(now));
    let mut firing: Vec<Value> = firing.iter().map(state_json).collect();
    with_classifications(&state, &mut firing).await?;
    with_acks(&state, &mut firing).await?;
    body["firing"] = Value::Array(firing);
    Ok(axum::Json(body).into_response())
}

/// `GET /api/dashboard/charts?hours=24&buckets=48`: events per bucket.
async fn charts(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(raw.as_deref());
    let hours: i64 = number(&pairs, "hours", 1, 8760)?.unwrap_or(24);
    let buckets: i64 = number(&pairs, "buckets", 1, 500)?.unwrap_or(48);
    let now = Utc::now().timestamp_millis();
    let span = hours * 3_600_000;
    let bucket_ms = (span + buckets - 1) / buckets;
    let since = now - bucket_ms * buckets;
    let rows = state.store().chart(since, now, bucket_ms).await?;
    let body = json!({
        "since": format_time(since),
        "until": format_time(now),
        "bucket_seconds": bucket_ms as f64 / 1000.0,
        "buckets": rows.iter().take(buckets as usize).map(|b| json!({
            "start": format_time(b.start), "firing": b.firing, "resolved": b.resolved,
        })).collect::<Vec<_>>(),
    });
    Ok(axum::Json(body).into_response())
}

/// `GET /api/dashboard/alerts/recent?limit=20`: the newest events.
async fn recent(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(raw.as_deref());
    let limit: u32 = number(&pairs, "limit", 1, 200)?.unwrap_or(20);
    let rows = state
        .store()
        .history(&HistoryQuery {
            limit,
            ..HistoryQuery::default()
        })
        .await?;
    let mut rows: Vec<Value> = rows.iter().map(event_json).collect();
    with_classifications(&state, &mut rows).await?;
    Ok(axum::Json(rows).into_response())
}

/// `GET /api/dashboard/recommendations?limit=20`: the newest
/// classifications that carry recommendations, each with its alert's
/// current name, namespace and status.
async fn recommendations(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(raw.as_deref());
    let limit: u32 = number(&pairs, "limit", 1, 200)?.unwrap_or(20);
    let rows = crate::classify::recent_with_recommendations(state.store(), limit).await?;
    let items: Vec<Value> = rows
        .iter()
        .map(|r| {
            let mut item = crate::classify::classification_json(&r.fingerprint, &r.classification);
            let (name, namespace, status) = match &r.alert {
                Some((n, ns, st)) => (json!(n), json!(ns), json!(st)),
                None => (Value::Null, Value::Null, Value::Null),
            };
            item["alertname"] = name;
            item["namespace"] = namespace;
            item["status"] = status;
            item
        })
        .collect();
    let mode = state.inner.enrichment.mode_reading().await;
    Ok(axum::Json(json!({
        "mode": mode.mode.as_str(),
        "count": items.len(),
        "recommendations": items,
    }))
    .into_response())
}
