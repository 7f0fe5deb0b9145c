//! Scripted responses: per route, a queue of answers, a handler closure and a
//! default, consulted before the fake's own router.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use parking_lot::Mutex;
use serde::Serialize;

use crate::RecordedRequest;

/// A canned HTTP answer. Cheap to clone (the body is shared).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptedResponse {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl ScriptedResponse {
    /// `status` with an empty body.
    pub fn status(status: StatusCode) -> Self {
        ScriptedResponse {
            status,
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }

    /// `status` with `value` as a JSON body (`Content-Type:
    /// application/json`).
    ///
    /// # Panics
    /// When `value` cannot be serialized (a map with non-string keys).
    pub fn json(status: StatusCode, value: &impl Serialize) -> Self {
        let body = serde_json::to_vec(value).expect("scripted JSON body must serialize");
        Self::status(status)
            .with_header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )
            .with_body(body)
    }

    /// `status` with a plain-text body.
    pub fn text(status: StatusCode, text: impl Into<String>) -> Self {
        Self::status(status)
            .with_header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            )
            .with_body(text.into())
    }

    /// Adds (appends) a header.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Replaces the body.
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// The status.
    pub fn status_code(&self) -> StatusCode {
        self.status
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }
}

impl IntoResponse for ScriptedResponse {
    fn into_response(self) -> Response {
        let mut response = Response::new(Body::from(self.body));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers;
        response
    }
}

type Handler = Arc<dyn Fn(&RecordedRequest) -> ScriptedResponse + Send + Sync>;

#[derive(Default)]
struct RouteScript {
    queue: VecDeque<ScriptedResponse>,
    handler: Option<Handler>,
    default: Option<ScriptedResponse>,
}

/// Scripted answers by exact method and path (the query is ignored).
///
/// For a request, the fake answers with, in order: the next queued response
/// of its route, else the route's handler, else the route's default, else
/// the fake's own router (404 for a bare [`crate::FakeServer`]). Injected
/// faults come before all of these. Cloning shares the script.
#[derive(Clone, Default)]
pub struct Script {
    routes: Arc<Mutex<HashMap<(Method, String), RouteScript>>>,
}

impl Script {
    fn with_route<R>(
        &self,
        method: Method,
        path: &str,
        f: impl FnOnce(&mut RouteScript) -> R,
    ) -> R {
        let mut routes = self.routes.lock();
        f(routes.entry((method, path.to_owned())).or_default())
    }

    /// Queues `response` as the next answer for `method path` (FIFO; each is
    /// used once).
    pub fn enqueue(&self, method: Method, path: &str, response: ScriptedResponse) {
        self.with_route(method, path, |r| r.queue.push_back(response));
    }

    /// Queues several answers in order.
    pub fn enqueue_all(
        &self,
        method: Method,
        path: &str,
        responses: impl IntoIterator<Item = ScriptedResponse>,
    ) {
        self.with_route(method, path, |r| r.queue.extend(responses));
    }

    /// Answers `method path` with `response` whenever its queue is empty and
    /// it has no handler.
    pub fn set_default(&self, method: Method, path: &str, response: ScriptedResponse) {
        self.with_route(method, path, |r| r.default = Some(response));
    }

    /// Answers `method path` with `handler(request)` whenever its queue is
    /// empty.
    pub fn set_handler<F>(&self, method: Method, path: &str, handler: F)
    where
        F: Fn(&RecordedRequest) -> ScriptedResponse + Send + Sync + 'static,
    {
        self.with_route(method, path, |r| r.handler = Some(Arc::new(handler)));
    }

    /// How many queued answers `method path` has left.
    pub fn remaining(&self, method: Method, path: &str) -> usize {
        self.routes
            .lock()
            .get(&(method, path.to_owned()))
            .map_or(0, |r| r.queue.len())
    }

    /// Forgets the queue, handler and default of `method path`.
    pub fn clear_route(&self, method: Method, path: &str) {
        self.routes.lock().remove(&(method, path.to_owned()));
    }

    /// Forgets every scripted answer.
    pub fn clear(&self) {
        self.routes.lock().clear();
    }

    pub(crate) fn respond(&self, request: &RecordedRequest) -> Option<ScriptedResponse> {
        let handler = {
            let mut routes = self.routes.lock();
            let route = routes.get_mut(&(request.method.clone(), request.path.clone()))?;
            if let Some(next) = route.queue.pop_front() {
                return Some(next);
            }
            match &route.handler {
                Some(handler) => handler.clone(),
                None => return route.default.clone(),
            }
        };
        // Call the handler without holding the lock, so it may use the script.
        Some(handler(request))
    }
}

impl fmt::Debug for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let routes = self.routes.lock();
        let mut list = f.debug_list();
        for ((method, path), route) in routes.iter() {
            list.entry(&format_args!(
                "{method} {path}: {} queued, handler: {}, default: {}",
                route.queue.len(),
                route.handler.is_some(),
                route.default.is_some()
            ));
        }
        list.finish()
    }
}
