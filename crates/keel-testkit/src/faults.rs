//! Fault injection: error rate, latency, 429 with `Retry-After`, connection
//! drops; seeded and changeable at runtime.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use keel_core::Rng;
use parking_lot::{Mutex, RwLock};

use crate::{RecordedRequest, TestkitError};

/// A fault a fake server injects for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this error status (rendered by the [`FaultRenderer`]).
    Error(StatusCode),
    /// Answer 429 with this retry-after (rendered by the [`FaultRenderer`];
    /// by default a `Retry-After` header in whole seconds, rounded up).
    RateLimited {
        /// The delay the client is asked to wait.
        retry_after: Duration,
    },
    /// Close the connection without answering: the client sees a transport
    /// error ("connection closed before message completed").
    Drop,
    /// Wait this long, then answer normally. Only as a one-shot fault
    /// ([`Faults::push_next`]); recorded as [`RecordedRequest::delay`].
    Delay(Duration),
}

/// The probabilistic faults of a fake server. Each request draws, in this
/// order and only for the faults that are enabled: latency, drop, rate limit,
/// error; the first fault that fires wins. All draws come from the server's
/// seeded [`Rng`], so the same seed and the same request order give the same
/// faults.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultConfig {
    error_rate: f64,
    error_status: StatusCode,
    rate_limit_rate: f64,
    retry_after: Duration,
    drop_rate: f64,
    latency: Option<(Duration, Duration)>,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            error_rate: 0.0,
            error_status: StatusCode::SERVICE_UNAVAILABLE,
            rate_limit_rate: 0.0,
            retry_after: Duration::from_secs(1),
            drop_rate: 0.0,
            latency: None,
        }
    }
}

impl FaultConfig {
    /// No faults.
    pub fn none() -> Self {
        Self::default()
    }

    /// Fail a fraction `rate` (0.0..=1.0) of requests with `status` (a 5xx,
    /// such as 500 or 503).
    pub fn with_errors(mut self, rate: f64, status: StatusCode) -> Self {
        self.error_rate = rate;
        self.error_status = status;
        self
    }

    /// Answer a fraction `rate` of requests with 429 asking to retry after
    /// `retry_after`.
    pub fn with_rate_limit(mut self, rate: f64, retry_after: Duration) -> Self {
        self.rate_limit_rate = rate;
        self.retry_after = retry_after;
        self
    }

    /// Close the connection without an answer for a fraction `rate` of
    /// requests.
    pub fn with_drops(mut self, rate: f64) -> Self {
        self.drop_rate = rate;
        self
    }

    /// Delay every request by a uniform duration in `[min, max]`.
    pub fn with_latency(mut self, min: Duration, max: Duration) -> Self {
        self.latency = Some((min, max));
        self
    }

    /// The error fraction and status.
    pub fn errors(&self) -> (f64, StatusCode) {
        (self.error_rate, self.error_status)
    }

    /// The 429 fraction and retry-after.
    pub fn rate_limit(&self) -> (f64, Duration) {
        (self.rate_limit_rate, self.retry_after)
    }

    /// The drop fraction.
    pub fn drops(&self) -> f64 {
        self.drop_rate
    }

    /// The latency range, if any.
    pub fn latency(&self) -> Option<(Duration, Duration)> {
        self.latency
    }

    /// Checks every value.
    ///
    /// # Errors
    /// [`TestkitError::InvalidFault`] naming the field: a rate outside
    /// `0.0..=1.0` (or NaN), an error status that is not a 5xx, or a latency
    /// range whose minimum exceeds its maximum.
    pub fn validate(&self) -> Result<(), TestkitError> {
        for (field, rate) in [
            ("error_rate", self.error_rate),
            ("rate_limit_rate", self.rate_limit_rate),
            ("drop_rate", self.drop_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(TestkitError::InvalidFault {
                    field,
                    reason: format!("must be within 0.0..=1.0, got {rate}"),
                });
            }
        }
        if !self.error_status.is_server_error() {
            return Err(TestkitError::InvalidFault {
                field: "error_status",
                reason: format!(
                    "must be a 5xx status, got {} (use a scripted response for others)",
                    self.error_status.as_u16()
                ),
            });
        }
        if let Some((min, max)) = self.latency
            && min > max
        {
            return Err(TestkitError::InvalidFault {
                field: "latency",
                reason: format!("minimum {min:?} exceeds maximum {max:?}"),
            });
        }
        Ok(())
    }
}

/// How a fake renders injected errors and 429s in its own wire format.
///
/// The defaults are plain text with the status, and for 429 a `Retry-After`
/// header. A Telegram fake overrides [`FaultRenderer::rate_limited`] to
/// answer `{"ok": false, "error_code": 429, "parameters": {"retry_after":
/// N}}`.
pub trait FaultRenderer: Send + Sync + 'static {
    /// The response for an injected [`Fault::Error`].
    fn error(&self, status: StatusCode, request: &RecordedRequest) -> Response {
        let _ = request;
        default_error_response(status)
    }

    /// The response for an injected [`Fault::RateLimited`].
    fn rate_limited(&self, retry_after: Duration, request: &RecordedRequest) -> Response {
        let _ = request;
        default_rate_limited_response(retry_after)
    }
}

/// The renderer with the default plain-text answers.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainRenderer;

impl FaultRenderer for PlainRenderer {}

/// `status` with a short text body naming it as injected.
pub fn default_error_response(status: StatusCode) -> Response {
    (status, format!("injected fault: {status}\n")).into_response()
}

/// 429 with `Retry-After: <whole seconds, rounded up>` and a text body.
pub fn default_rate_limited_response(retry_after: Duration) -> Response {
    let secs = retry_after_secs(retry_after);
    let mut response = (
        StatusCode::TOO_MANY_REQUESTS,
        format!("injected fault: too many requests, retry after {secs} s\n"),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

/// A retry-after in whole seconds, rounded up (what `Retry-After` and
/// Telegram's `retry_after` carry).
pub fn retry_after_secs(retry_after: Duration) -> u64 {
    retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0)
}

/// What the server decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decision {
    pub(crate) delay: Duration,
    pub(crate) fault: Option<Fault>,
}

/// The runtime handle on a fake server's faults: change them mid-test, queue
/// one-shot faults, swap the renderer. Cloning shares the state.
#[derive(Clone)]
pub struct Faults {
    inner: Arc<FaultsInner>,
}

struct FaultsInner {
    config: Mutex<FaultConfig>,
    next: Mutex<VecDeque<Fault>>,
    rng: Rng,
    renderer: RwLock<Arc<dyn FaultRenderer>>,
}

impl Faults {
    /// No faults, the [`PlainRenderer`], and an RNG seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Faults {
            inner: Arc::new(FaultsInner {
                config: Mutex::new(FaultConfig::none()),
                next: Mutex::new(VecDeque::new()),
                rng: Rng::with_seed(seed),
                renderer: RwLock::new(Arc::new(PlainRenderer)),
            }),
        }
    }

    /// Replaces the probabilistic faults (takes effect for the next
    /// request).
    ///
    /// # Errors
    /// As [`FaultConfig::validate`]; the old configuration stays.
    pub fn set(&self, config: FaultConfig) -> Result<(), TestkitError> {
        config.validate()?;
        *self.inner.config.lock() = config;
        Ok(())
    }

    /// Edits the probabilistic faults in place.
    ///
    /// # Errors
    /// As [`FaultConfig::validate`]; the old configuration stays.
    pub fn update(
        &self,
        edit: impl FnOnce(FaultConfig) -> FaultConfig,
    ) -> Result<(), TestkitError> {
        let mut config = self.inner.config.lock();
        let edited = edit(config.clone());
        edited.validate()?;
        *config = edited;
        Ok(())
    }

    /// The current probabilistic faults.
    pub fn config(&self) -> FaultConfig {
        self.inner.config.lock().clone()
    }

    /// Turns every fault off, including queued one-shot faults.
    pub fn clear(&self) {
        *self.inner.config.lock() = FaultConfig::none();
        self.inner.next.lock().clear();
    }

    /// Queues a one-shot fault for the next request that has none queued
    /// before it (FIFO). One-shot faults take precedence over the
    /// probabilistic ones and draw no randomness.
    pub fn push_next(&self, fault: Fault) {
        self.inner.next.lock().push_back(fault);
    }

    /// Queues `fault` for each of the next `n` requests.
    pub fn fail_next(&self, n: usize, fault: Fault) {
        self.inner.next.lock().extend(std::iter::repeat_n(fault, n));
    }

    /// How many one-shot faults are still queued.
    pub fn queued(&self) -> usize {
        self.inner.next.lock().len()
    }

    /// Renders injected errors and 429s with `renderer` from now on.
    pub fn set_renderer(&self, renderer: impl FaultRenderer) {
        self.set_shared_renderer(Arc::new(renderer));
    }

    pub(crate) fn set_shared_renderer(&self, renderer: Arc<dyn FaultRenderer>) {
        *self.inner.renderer.write() = renderer;
    }

    pub(crate) fn renderer(&self) -> Arc<dyn FaultRenderer> {
        self.inner.renderer.read().clone()
    }

    pub(crate) fn decide(&self) -> Decision {
        if let Some(fault) = self.inner.next.lock().pop_front() {
            return match fault {
                Fault::Delay(delay) => Decision { delay, fault: None },
                fault => Decision {
                    delay: Duration::ZERO,
                    fault: Some(fault),
                },
            };
        }
        let config = self.inner.config.lock().clone();
        let rng = &self.inner.rng;
        let delay = match config.latency {
            Some((min, max)) => rng.duration_between(min, max),
            None => Duration::ZERO,
        };
        let fires = |rate: f64| rate > 0.0 && rng.next_f64() < rate;
        let fault = if fires(config.drop_rate) {
            Some(Fault::Drop)
        } else if fires(config.rate_limit_rate) {
            Some(Fault::RateLimited {
                retry_after: config.retry_after,
            })
        } else if fires(config.error_rate) {
            Some(Fault::Error(config.error_status))
        } else {
            None
        };
        Decision { delay, fault }
    }
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Faults")
            .field("config", &self.config())
            .field("queued", &self.queued())
            .finish_non_exhaustive()
    }
}

/// A body that fails on first read: the fallback for [`Fault::Drop`] when the
/// fake layer runs outside [`crate::FakeServer`] (which closes the socket
/// instead). hyper aborts the connection when a response body fails.
pub(crate) fn aborting_body() -> Body {
    Body::new(AbortBody)
}

struct AbortBody;

impl http_body::Body for AbortBody {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::task::Poll::Ready(Some(Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "injected connection drop",
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_statuses_and_latency_are_validated() {
        let cases = [
            (
                FaultConfig::none().with_errors(1.5, StatusCode::INTERNAL_SERVER_ERROR),
                "error_rate",
            ),
            (
                FaultConfig::none().with_errors(f64::NAN, StatusCode::INTERNAL_SERVER_ERROR),
                "error_rate",
            ),
            (
                FaultConfig::none().with_errors(0.5, StatusCode::NOT_FOUND),
                "error_status",
            ),
            (
                FaultConfig::none().with_rate_limit(-0.1, Duration::ZERO),
                "rate_limit_rate",
            ),
            (FaultConfig::none().with_drops(2.0), "drop_rate"),
            (
                FaultConfig::none().with_latency(Duration::from_secs(2), Duration::from_secs(1)),
                "latency",
            ),
        ];
        for (config, expected) in cases {
            match config.validate() {
                Err(TestkitError::InvalidFault { field, .. }) => assert_eq!(field, expected),
                other => panic!("{expected}: {other:?}"),
            }
        }
        let faults = Faults::new(1);
        let good = FaultConfig::none().with_errors(0.2, StatusCode::INTERNAL_SERVER_ERROR);
        faults.set(good.clone()).unwrap();
        assert!(faults.update(|c| c.with_drops(3.0)).is_err());
        assert_eq!(
            faults.config(),
            good,
            "a rejected update keeps the old config"
        );
    }

    #[test]
    fn one_shot_faults_come_first_in_order() {
        let faults = Faults::new(1);
        faults
            .set(FaultConfig::none().with_errors(1.0, StatusCode::BAD_GATEWAY))
            .unwrap();
        faults.push_next(Fault::Drop);
        faults.push_next(Fault::Delay(Duration::from_millis(5)));
        assert_eq!(faults.queued(), 2);
        assert_eq!(faults.decide().fault, Some(Fault::Drop));
        assert_eq!(
            faults.decide(),
            Decision {
                delay: Duration::from_millis(5),
                fault: None
            }
        );
        assert_eq!(
            faults.decide().fault,
            Some(Fault::Error(StatusCode::BAD_GATEWAY))
        );
        faults.clear();
        assert_eq!(faults.decide().fault, None);
    }

    #[test]
    fn the_same_seed_replays_the_same_faults() {
        let config = FaultConfig::none()
            .with_errors(0.3, StatusCode::SERVICE_UNAVAILABLE)
            .with_rate_limit(0.2, Duration::from_secs(3))
            .with_drops(0.1)
            .with_latency(Duration::from_millis(10), Duration::from_millis(50));
        let run = |seed| {
            let faults = Faults::new(seed);
            faults.set(config.clone()).unwrap();
            (0..200).map(|_| faults.decide()).collect::<Vec<_>>()
        };
        let a = run(42);
        assert_eq!(a, run(42));
        assert_ne!(a, run(43));
        let count = |f: fn(&Option<Fault>) -> bool| a.iter().filter(|d| f(&d.fault)).count();
        // Drop 10 %, then 429 on 20 % of the rest, then errors on 30 % of the rest.
        let drops = count(|f| matches!(f, Some(Fault::Drop)));
        let limited = count(|f| matches!(f, Some(Fault::RateLimited { .. })));
        let errors = count(|f| matches!(f, Some(Fault::Error(_))));
        assert!((8..=35).contains(&drops), "drops {drops}");
        assert!((20..=60).contains(&limited), "429s {limited}");
        assert!((25..=70).contains(&errors), "errors {errors}");
        assert!(a.iter().all(|d| (Duration::from_millis(10)..=Duration::from_millis(50)).contains(&d.delay)));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 0);
        assert_eq!(retry_after_secs(Duration::from_secs(34)), 34);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        let response = default_rate_limited_response(Duration::from_millis(2500));
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
    }
}
