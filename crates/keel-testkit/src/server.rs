//! A fake HTTP server on a random loopback port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use http::{Method, Request};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_layer::Layer;

use crate::layer::{ConnectionCloser, DEFAULT_SEED};
use crate::{
    FakeControl, FaultConfig, FaultRenderer, Faults, RecordedRequest, Script, TestkitError,
    WaitTimeout,
};

/// A fake HTTP/1.1 server on `127.0.0.1:<random port>`, serving an axum
/// router wrapped by the fake layer (request recording, fault injection,
/// scripted answers). Each accepted connection is served by its own task, so
/// a [`crate::Fault::Drop`] can close exactly that socket.
///
/// Dropping the server stops it and closes every connection.
#[derive(Debug)]
pub struct FakeServer {
    addr: SocketAddr,
    control: FakeControl,
    stop: CancellationToken,
    accept: JoinHandle<()>,
}

/// Options for [`FakeServer`]: seed, initial faults, fault renderer.
#[must_use]
pub struct FakeServerBuilder {
    seed: u64,
    faults: FaultConfig,
    renderer: Option<Arc<dyn FaultRenderer>>,
}

impl FakeServerBuilder {
    /// Seeds the fault RNG (default [`DEFAULT_SEED`]).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Starts with these probabilistic faults (changeable later through
    /// [`FakeServer::faults`]).
    pub fn faults(mut self, faults: FaultConfig) -> Self {
        self.faults = faults;
        self
    }

    /// Renders injected errors and 429s in the fake's wire format.
    pub fn renderer(mut self, renderer: impl FaultRenderer) -> Self {
        self.renderer = Some(Arc::new(renderer));
        self
    }

    /// Binds a random loopback port and starts serving `router`.
    ///
    /// # Errors
    /// [`TestkitError::InvalidFault`] for a bad fault configuration,
    /// [`TestkitError::Io`] when binding fails.
    pub async fn try_start(self, router: Router) -> Result<FakeServer, TestkitError> {
        let control = FakeControl::new(self.seed);
        control.faults().set(self.faults)?;
        if let Some(renderer) = self.renderer {
            control.faults().set_shared_renderer(renderer);
        }
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(|source| TestkitError::Io {
                context: "cannot bind a loopback port for a fake server".to_owned(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| TestkitError::Io {
            context: "cannot read the fake server's address".to_owned(),
            source,
        })?;
        let stop = CancellationToken::new();
        let service = control.layer().layer(router);
        let accept = tokio::spawn(accept_loop(listener, service, stop.clone()));
        tracing::debug!(%addr, "fake server started");
        Ok(FakeServer {
            addr,
            control,
            stop,
            accept,
        })
    }

    /// As [`FakeServerBuilder::try_start`].
    ///
    /// # Panics
    /// When the server cannot start.
    pub async fn start(self, router: Router) -> FakeServer {
        match self.try_start(router).await {
            Ok(server) => server,
            Err(e) => panic!("fake server: {e}"),
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    service: crate::FakeService<Router>,
    stop: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "fake server accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let connection = stop.child_token();
        let reset = Arc::new(AtomicBool::new(false));
        let closer = ConnectionCloser {
            token: connection.clone(),
            reset: reset.clone(),
        };
        // A second descriptor of the socket, kept to set `SO_LINGER` 0 before
        // the connection is dropped, which makes the close an RST
        // ([`crate::Fault::Reset`]); hyper owns the stream itself.
        let (stream, linger) = match stream
            .into_std()
            .and_then(|s| Ok((s.try_clone()?, s)))
            .and_then(|(dup, s)| Ok((tokio::net::TcpStream::from_std(s)?, dup)))
        {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "fake server could not keep the connection's descriptor");
                continue;
            }
        };
        let per_connection = ServiceBuilder::new()
            .map_request(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(closer.clone());
                request
            })
            .service(service.clone());
        tokio::spawn(async move {
            let serve = hyper::server::conn::http1::Builder::new().serve_connection(
                TokioIo::new(stream),
                TowerToHyperService::new(per_connection),
            );
            tokio::select! {
                result = serve => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "fake server connection ended with an error");
                    }
                }
                // Dropping the connection future closes the socket unanswered.
                () = connection.cancelled() => {
                    if reset.load(Ordering::SeqCst)
                        && let Err(e) = socket2::SockRef::from(&linger).set_linger(Some(Duration::ZERO))
                    {
                        tracing::warn!(error = %e, "fake server could not set SO_LINGER 0");
                    }
                }
            }
            drop(linger);
        });
    }
}

impl FakeServer {
    /// Options: seed, initial faults, renderer.
    pub fn builder() -> FakeServerBuilder {
        FakeServerBuilder {
            seed: DEFAULT_SEED,
            faults: FaultConfig::none(),
            renderer: None,
        }
    }

    /// Starts serving `router` (use `Router::new()` for a fake that answers
    /// only scripted routes and 404 otherwise), seeded with [`DEFAULT_SEED`],
    /// no faults.
    ///
    /// # Panics
    /// When no loopback port can be bound.
    pub async fn start(router: Router) -> FakeServer {
        Self::builder().start(router).await
    }

    /// `http://127.0.0.1:<port>` (no trailing slash).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `base_url()` followed by `path` (which should start with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shared control (clone it into helpers).
    pub fn control(&self) -> &FakeControl {
        &self.control
    }

    /// The fault handle: change faults mid-test.
    pub fn faults(&self) -> &Faults {
        self.control.faults()
    }

    /// The scripted answers.
    pub fn script(&self) -> &Script {
        self.control.script()
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.control.requests()
    }

    /// The requests to exactly `method path`.
    pub fn requests_to(&self, method: Method, path: &str) -> Vec<RecordedRequest> {
        self.control.requests_to(method, path)
    }

    /// How many requests were received.
    pub fn request_count(&self) -> usize {
        self.control.request_count()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.control.clear_requests();
    }

    /// See [`FakeControl::wait_for_requests`].
    ///
    /// # Errors
    /// [`WaitTimeout`] when fewer than `n` requests arrived in time.
    pub async fn wait_for_requests(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<RecordedRequest>, WaitTimeout> {
        self.control.wait_for_requests(n, timeout).await
    }

    /// See [`FakeControl::wait_until`].
    ///
    /// # Errors
    /// [`WaitTimeout`] when the condition did not hold in time.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        done: impl FnMut(&[RecordedRequest]) -> bool,
    ) -> Result<Vec<RecordedRequest>, WaitTimeout> {
        self.control.wait_until(timeout, done).await
    }

    /// Stops accepting and closes every open connection.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.cancel();
        self.accept.abort();
    }
}
