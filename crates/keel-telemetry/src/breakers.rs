//! Admin routes over circuit breakers: see their state, force them.

use std::sync::Arc;

use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use keel_breaker::CircuitBreaker;
use serde_json::{Value, json};

/// Where [`breaker_routes`] finds the breakers, at each request (so breakers
/// created later, or a sink added at run time, are included).
pub type BreakerSource = Arc<dyn Fn() -> Vec<CircuitBreaker> + Send + Sync>;

/// `GET /breakers`: every breaker of `source` with its state and counts;
/// with `control`, also `POST /breakers/{name}/{action}` with `action` one
/// of `open` (force open), `disable` (let every call through) or `reset`
/// (closed, counts cleared): `200` with the breaker's new view, `404` for an
/// unknown name, `422` for an unknown action. Turn `control` on only where
/// the admin routes are protected (a bearer token, a loopback address).
///
/// ```
/// use std::sync::Arc;
/// use axum::body::Body;
/// use axum::http::{Request, StatusCode};
/// use keel_breaker::{BreakerConfig, CircuitBreaker, State};
/// use tower::ServiceExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let api = CircuitBreaker::new("compute", BreakerConfig::default());
/// let routes: axum::Router = keel_telemetry::breaker_routes(Arc::new({
///     let api = api.clone();
///     move || vec![api.clone()]
/// }), true);
/// let response = routes
///     .oneshot(Request::post("/breakers/compute/open").body(Body::empty()).unwrap())
///     .await
///     .unwrap();
/// assert_eq!(response.status(), StatusCode::OK);
/// assert_eq!(api.state(), State::ForcedOpen);
/// # }
/// ```
pub fn breaker_routes<S: Clone + Send + Sync + 'static>(
    source: BreakerSource,
    control: bool,
) -> Router<S> {
    let list = source.clone();
    let routes = Router::new().route(
        "/breakers",
        get(move || {
            let list = list.clone();
            async move { axum::Json(list().iter().map(view).collect::<Vec<_>>()) }
        }),
    );
    if !control {
        return routes;
    }
    routes.route(
        "/breakers/{name}/{action}",
        post(move |Path((name, action)): Path<(String, String)>| {
            let source = source.clone();
            async move { act(&source, &name, &action) }
        }),
    )
}

fn view(breaker: &CircuitBreaker) -> Value {
    let stats = breaker.stats();
    json!({
        "name": breaker.name(),
        "state": stats.state.as_str(),
        "consecutive_failures": stats.consecutive_failures,
        "window_calls": stats.window_calls,
        "window_failures": stats.window_failures,
        "retry_after_ms": stats.retry_after.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        "rejected": stats.totals.rejected(),
    })
}

fn act(source: &BreakerSource, name: &str, action: &str) -> Response {
    let Some(breaker) = source().into_iter().find(|b| b.name() == name) else {
        let body = json!({ "error": format!("no breaker named {name}") });
        return (StatusCode::NOT_FOUND, axum::Json(body)).into_response();
    };
    match action {
        "open" => breaker.force_open(),
        "disable" => breaker.disable(),
        "reset" => breaker.reset(),
        _ => {
            let body = json!({ "error": "action must be open, disable or reset" });
            return (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(body)).into_response();
        }
    }
    tracing::warn!(breaker = name, action, "breaker forced by an operator");
    axum::Json(view(&breaker)).into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use keel_breaker::{BreakerConfig, State};
    use tower::ServiceExt;

    use super::*;

    async fn call(app: &Router, method: &str, uri: &str) -> (StatusCode, Value) {
        let response = app
            .clone()
            .oneshot(
                Request::builder()
                    .method(method)
                    .uri(uri)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    #[tokio::test]
    async fn lists_forces_disables_and_resets() {
        let a = CircuitBreaker::new("a", BreakerConfig::default());
        let b = CircuitBreaker::new("b", BreakerConfig::default());
        let app: Router = breaker_routes(
            Arc::new({
                let (a, b) = (a.clone(), b.clone());
                move || vec![a.clone(), b.clone()]
            }),
            true,
        );
        let read_only: Router = breaker_routes(
            Arc::new({
                let a = a.clone();
                move || vec![a.clone()]
            }),
            false,
        );
        assert_eq!(
            call(&read_only, "POST", "/breakers/a/open").await.0,
            StatusCode::NOT_FOUND
        );
        let (status, list) = call(&app, "GET", "/breakers").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(list[1]["name"], "b");
        assert_eq!(list[1]["state"], "closed");

        let (status, body) = call(&app, "POST", "/breakers/a/open").await;
        assert_eq!(
            (status, body["state"].clone()),
            (StatusCode::OK, json!("forced_open"))
        );
        assert_eq!(a.state(), State::ForcedOpen);
        assert!(a.try_acquire().is_err());
        call(&app, "POST", "/breakers/a/disable").await;
        assert_eq!(a.state(), State::Disabled);
        call(&app, "POST", "/breakers/a/reset").await;
        assert_eq!(a.state(), State::Closed);

        assert_eq!(
            call(&app, "POST", "/breakers/nope/open").await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            call(&app, "POST", "/breakers/a/explode").await.0,
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(b.state(), State::Closed, "only the named breaker moved");
    }
}
