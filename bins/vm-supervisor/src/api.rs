//! One HTTP/1 request over a VM's API socket (the start calls, and waiting
//! for the API to answer after a start).

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// Sends `method path` with an optional JSON body; returns the status once
/// the whole answer has arrived.
///
/// # Errors
/// A message: connect, protocol, or the timeout.
pub(crate) async fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<StatusCode, String> {
    let call = async {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| format!("connect {}: {e}", socket.display()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let conn = tokio::spawn(conn);
        let method: Method = method.parse().map_err(|_| format!("bad method {method}"))?;
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "localhost")
            .header(http::header::ACCEPT, "application/json");
        let payload = match body {
            Some(b) => {
                builder = builder.header(http::header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(b).map_err(|e| e.to_string())?)
            }
            None => Bytes::new(),
        };
        let request = builder
            .body(Full::new(payload))
            .map_err(|e| format!("request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("{path}: {e}"))?;
        let status = response.status();
        let _ = response.into_body().collect().await;
        conn.abort();
        Ok(status)
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| format!("{path}: no answer within {timeout:?}"))?
}
