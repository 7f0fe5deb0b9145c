use bytes::Bytes;
use futures::FutureExt;
use http::header::{CONNECTION, HOST, USER_AGENT};
use http::{Request, StatusCode, Uri};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::tcp::TcpTarget;
use crate::error::ConfigError;
use crate::probe::{FailureKind, Probe, ProbeFailure, ProbeResult};

const AGENT: &str = concat!("keel-health/", env!("CARGO_PKG_VERSION"));

/// Healthy when `GET <url>` answers with a status below a limit (by default
/// below 500, so a 404 from a live server still counts as alive).
///
/// Each check opens one HTTP/1.1 connection, sends `GET` with
/// `Connection: close`, reads the status line and headers, and closes
/// without reading the body. Only `http://` URLs are supported: the client
/// is hyper's minimal connection API with no TLS, which keeps the probe
/// light (use a [`probe_fn`](crate::probe_fn) around a full HTTP client for
/// HTTPS). Failures are the TCP probe's (`refused`, `connect`, `resolve`),
/// `http_status` or `protocol`.
///
/// ```
/// use keel_health::{HttpProbe, Probe};
/// use http::StatusCode;
///
/// let probe = HttpProbe::new("http://10.0.0.5:8080/healthz")?
///     .healthy_below(StatusCode::BAD_REQUEST);
/// assert_eq!(probe.name(), "http http://10.0.0.5:8080/healthz");
/// assert_eq!(HttpProbe::new("https://example.com").unwrap_err().field(), "url");
/// # Ok::<(), keel_health::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct HttpProbe {
    target: TcpTarget,
    host_header: String,
    path: String,
    healthy_below: StatusCode,
    name: String,
}

impl HttpProbe {
    /// Probes `url` (`http://host[:port]/path?query`).
    ///
    /// # Errors
    /// A [`ConfigError`] naming `url` when it does not parse, is not
    /// `http://`, or has no host.
    pub fn new(url: &str) -> Result<Self, ConfigError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| ConfigError::new("url", format!("{url:?}: {e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(ConfigError::new(
                    "url",
                    format!("scheme {other:?} is not supported; only http://"),
                ));
            }
            None => return Err(ConfigError::new("url", "needs the http:// scheme")),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| ConfigError::new("url", "needs a host"))?;
        let host = authority.host();
        if host.is_empty() {
            return Err(ConfigError::new("url", "needs a host"));
        }
        let port = authority.port_u16().unwrap_or(80);
        let path = uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        let path = if path.is_empty() {
            "/".to_owned()
        } else {
            path
        };
        Ok(HttpProbe {
            target: TcpTarget::new(host, port),
            host_header: authority.as_str().to_owned(),
            path,
            healthy_below: StatusCode::INTERNAL_SERVER_ERROR,
            name: format!("http {url}"),
        })
    }

    /// Statuses from `limit` up are failures (default 500).
    pub fn healthy_below(mut self, limit: StatusCode) -> Self {
        self.healthy_below = limit;
        self
    }
}

impl Probe for HttpProbe {
    async fn check(&self) -> ProbeResult {
        let stream = self.target.connect().await?;
        get(stream, &self.host_header, &self.path, self.healthy_below).await
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// Healthy when `GET <path>` over a Unix socket answers with a status below
/// a limit (default 500): the shape of Firecracker's API socket, where
/// `GET /` returns the instance information.
///
/// Each check connects to the socket, sends one HTTP/1.1 request with
/// `Host: localhost` and `Connection: close`, reads the status and closes.
/// Failures: `missing` (no socket file), `refused` (a stale socket file
/// nobody listens on), `connect`, `http_status`, `protocol`.
#[cfg(unix)]
#[derive(Debug, Clone)]
pub struct UnixHttpProbe {
    socket: std::path::PathBuf,
    path: String,
    healthy_below: StatusCode,
    name: String,
}

#[cfg(unix)]
impl UnixHttpProbe {
    /// Probes `GET /` on the socket at `socket`.
    pub fn new(socket: impl Into<std::path::PathBuf>) -> Self {
        let socket = socket.into();
        let name = format!("unix_http {}", socket.display());
        UnixHttpProbe {
            socket,
            path: "/".to_owned(),
            healthy_below: StatusCode::INTERNAL_SERVER_ERROR,
            name,
        }
    }

    /// Requests `path` (with an optional query) instead of `/`.
    ///
    /// # Errors
    /// A [`ConfigError`] naming `path` unless it starts with `/` and is a
    /// valid request target.
    pub fn request_path(mut self, path: &str) -> Result<Self, ConfigError> {
        if !path.starts_with('/') {
            return Err(ConfigError::new(
                "path",
                format!("{path:?} must start with /"),
            ));
        }
        path.parse::<http::uri::PathAndQuery>()
            .map_err(|e| ConfigError::new("path", format!("{path:?}: {e}")))?;
        self.path = path.to_owned();
        Ok(self)
    }

    /// Statuses from `limit` up are failures (default 500).
    pub fn healthy_below(mut self, limit: StatusCode) -> Self {
        self.healthy_below = limit;
        self
    }
}

#[cfg(unix)]
impl Probe for UnixHttpProbe {
    async fn check(&self) -> ProbeResult {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| {
                let kind = match FailureKind::of_io(&e) {
                    FailureKind::Io => FailureKind::Connect,
                    other => other,
                };
                ProbeFailure::new(kind, format!("connect {}: {e}", self.socket.display()))
            })?;
        get(stream, "localhost", &self.path, self.healthy_below).await
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// One `GET` on a fresh connection, driven inline (no spawned task): the
/// connection future and the response future are polled together until the
/// response head arrives, then both are dropped, closing the connection.
async fn get<IO>(io: IO, host: &str, path: &str, healthy_below: StatusCode) -> ProbeResult
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| hyper_failure(&e))?;
    let request = Request::get(path)
        .header(HOST, host)
        .header(CONNECTION, "close")
        .header(USER_AGENT, AGENT)
        .body(Empty::<Bytes>::new())
        .map_err(|e| ProbeFailure::new(FailureKind::Protocol, format!("request: {e}")))?;
    let mut conn = std::pin::pin!(conn);
    let mut response = std::pin::pin!(sender.send_request(request));
    let response = tokio::select! {
        biased;
        response = &mut response => response,
        closed = &mut conn => match closed {
            // With `Connection: close` the connection may finish in the same
            // poll that delivered the response head: take it if it is there.
            Ok(()) => response.now_or_never().ok_or_else(|| {
                ProbeFailure::new(FailureKind::Protocol, "connection closed before a response")
            })?,
            Err(e) => return Err(hyper_failure(&e)),
        },
    }
    .map_err(|e| hyper_failure(&e))?;
    let status = response.status();
    if status < healthy_below {
        Ok(())
    } else {
        Err(ProbeFailure::new(
            FailureKind::HttpStatus,
            format!(
                "GET {path}: status {status} (healthy below {})",
                healthy_below.as_u16()
            ),
        ))
    }
}

fn hyper_failure(error: &hyper::Error) -> ProbeFailure {
    // An I/O error underneath (reset, broken pipe) is an I/O failure, not a
    // protocol one.
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            return ProbeFailure::new(FailureKind::of_io(io), format!("http: {io}"));
        }
        source = inner.source();
    }
    ProbeFailure::new(FailureKind::Protocol, format!("http: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_validated_and_split() {
        let p = HttpProbe::new("http://127.0.0.1:8080/health?full=1").unwrap();
        assert_eq!(p.host_header, "127.0.0.1:8080");
        assert_eq!(p.path, "/health?full=1");
        assert!(matches!(p.target, TcpTarget::Addr(a) if a.port() == 8080));
        let p = HttpProbe::new("http://example.internal").unwrap();
        assert_eq!(p.path, "/");
        assert!(matches!(p.target, TcpTarget::Host { port: 80, .. }));
        for bad in [
            "https://x",
            "ftp://x",
            "/just/a/path",
            "http://",
            "not a url",
        ] {
            assert_eq!(HttpProbe::new(bad).unwrap_err().field(), "url", "{bad}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn unix_request_paths_are_validated() {
        let p = UnixHttpProbe::new("/tmp/fc.sock")
            .request_path("/machine-config")
            .unwrap();
        assert_eq!(p.path, "/machine-config");
        assert_eq!(p.name(), "unix_http /tmp/fc.sock");
        let err = UnixHttpProbe::new("/tmp/fc.sock")
            .request_path("relative")
            .unwrap_err();
        assert_eq!(err.field(), "path");
    }
}
