//! Requests recorded by a fake server.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::{Fault, WaitTimeout};

/// One request as the fake server received it, with the fault it chose for
/// it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// Arrival order, from 0.
    pub seq: u64,
    /// The HTTP method.
    pub method: Method,
    /// The path, without the query.
    pub path: String,
    /// The raw query string, if any.
    pub query: Option<String>,
    /// The request headers.
    pub headers: HeaderMap,
    /// The whole request body.
    pub body: Bytes,
    /// The fault injected instead of (or, for latency, before) a normal
    /// answer; `None` when the request was served normally.
    pub fault: Option<Fault>,
    /// The latency injected before answering (zero when none).
    pub delay: Duration,
}

impl RecordedRequest {
    /// The first value of header `name` as text, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The decoded query pairs, in order.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        self.query
            .as_deref()
            .map(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The first decoded value of query parameter `name`.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_pairs()
            .into_iter()
            .find_map(|(k, v)| (k == name).then_some(v))
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    ///
    /// # Errors
    /// When the body is not valid JSON for `T`.
    pub fn body_json<T: DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_slice(&self.body)
    }

    /// `true` when the server answered normally (no error, 429 or drop).
    pub fn was_served(&self) -> bool {
        self.fault.is_none()
    }
}

/// The shared request log.
pub(crate) struct Recorder {
    requests: Mutex<Vec<RecordedRequest>>,
    next_seq: Mutex<u64>,
    changed: watch::Sender<u64>,
}

impl Recorder {
    pub(crate) fn new() -> Self {
        Recorder {
            requests: Mutex::new(Vec::new()),
            next_seq: Mutex::new(0),
            changed: watch::Sender::new(0),
        }
    }

    pub(crate) fn next_seq(&self) -> u64 {
        let mut next = self.next_seq.lock();
        let seq = *next;
        *next += 1;
        seq
    }

    pub(crate) fn push(&self, request: RecordedRequest) {
        self.requests.lock().push(request);
        self.changed.send_modify(|n| *n += 1);
    }

    pub(crate) fn snapshot(&self) -> Vec<RecordedRequest> {
        self.requests.lock().clone()
    }

    pub(crate) fn len(&self) -> usize {
        self.requests.lock().len()
    }

    pub(crate) fn clear(&self) {
        self.requests.lock().clear();
        self.changed.send_modify(|n| *n += 1);
    }

    pub(crate) async fn wait_until(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&[RecordedRequest]) -> bool,
    ) -> Result<Vec<RecordedRequest>, WaitTimeout> {
        // Subscribe before the first look so no push can slip in between.
        let mut rx = self.changed.subscribe();
        let wait = async {
            loop {
                {
                    let requests = self.requests.lock();
                    if done(&requests) {
                        return requests.clone();
                    }
                }
                if rx.changed().await.is_err() {
                    // The sender lives as long as `self`; unreachable in
                    // practice, but never spin.
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| WaitTimeout {
                waited: timeout,
                seen: self.len(),
            })
    }
}
