//! Fault injection: error rate, latency distributions, 429 with
//! `Retry-After`, connection drops and resets, and a flap schedule (down/up
//! on a clock); seeded and changeable at runtime. Every program's end-to-end
//! tests inject faults through this one layer (docs/RELIABILITY.md).

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
    /// Reset the connection (TCP RST, `SO_LINGER` 0) without answering: the
    /// client sees "connection reset by peer". Outside [`crate::FakeServer`]
    /// it falls back to [`Fault::Drop`]'s aborted body.
    Reset,
    /// Wait this long, then answer normally. Only as a one-shot fault
    /// ([`Faults::push_next`]); recorded as [`RecordedRequest::delay`].
    Delay(Duration),
}

/// How long each request waits before it is answered (or faulted).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Latency {
    /// Uniform in `[min, max]`.
    Uniform {
        /// The shortest delay.
        min: Duration,
        /// The longest delay.
        max: Duration,
    },
    /// Exponential with this mean, capped at `max` (a queueing server).
    Exponential {
        /// The mean delay.
        mean: Duration,
        /// The cap.
        max: Duration,
    },
    /// Mostly fast, sometimes slow: a fraction `slow_rate` of requests waits
    /// uniformly in `slow`, the others in `fast` (a p99 far above the p50,
    /// as a GC pause or a cold cache gives).
    LongTail {
        /// The usual range.
        fast: (Duration, Duration),
        /// The fraction of slow requests (0.0..=1.0).
        slow_rate: f64,
        /// The slow range.
        slow: (Duration, Duration),
    },
}

impl Latency {
    fn draw(&self, rng: &Rng) -> Duration {
        match *self {
            Latency::Uniform { min, max } => rng.duration_between(min, max),
            Latency::Exponential { mean, max } => {
                // Inverse transform: -ln(1 - U) * mean, U in [0, 1).
                let u = rng.next_f64();
                let secs = -(1.0 - u).ln() * mean.as_secs_f64();
                Duration::try_from_secs_f64(secs).unwrap_or(max).min(max)
            }
            Latency::LongTail {
                fast,
                slow_rate,
                slow,
            } => {
                let (min, max) = if rng.next_f64() < slow_rate {
                    slow
                } else {
                    fast
                };
                rng.duration_between(min, max)
            }
        }
    }

    fn validate(&self) -> Result<(), TestkitError> {
        let range = |(min, max): (Duration, Duration)| {
            if min > max {
                Err(TestkitError::InvalidFault {
                    field: "latency",
                    reason: format!("minimum {min:?} exceeds maximum {max:?}"),
                })
            } else {
                Ok(())
            }
        };
        match *self {
            Latency::Uniform { min, max } => range((min, max)),
            Latency::Exponential { mean, max } => range((mean, max)),
            Latency::LongTail {
                fast,
                slow_rate,
                slow,
            } => {
                range(fast)?;
                range(slow)?;
                if (0.0..=1.0).contains(&slow_rate) {
                    Ok(())
                } else {
                    Err(TestkitError::InvalidFault {
                        field: "latency",
                        reason: format!("slow_rate must be within 0.0..=1.0, got {slow_rate}"),
                    })
                }
            }
        }
    }
}

/// A dependency that goes down and comes back on a schedule: from the
/// moment the configuration is set, every request in a `down` window gets
/// `fault`, then every request for `up` is served, and so on. Time is
/// tokio's, so a test with paused time flaps on virtual time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flap {
    /// How long each outage lasts (the schedule starts with one).
    pub down: Duration,
    /// How long the dependency answers between outages.
    pub up: Duration,
    /// What a request gets while down: [`Fault::Error`], [`Fault::Drop`],
    /// [`Fault::Reset`] or [`Fault::RateLimited`].
    pub fault: Fault,
}

/// The probabilistic faults of a fake server. Each request draws, in this
/// order and only for the faults that are enabled: latency, drop, rate limit,
/// error; the first fault that fires wins. A [`Flap`] outage comes before
/// all of them. All draws come from the server's
/// seeded [`Rng`], so the same seed and the same request order give the same
/// faults.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultConfig {
    error_rate: f64,
    error_status: StatusCode,
    rate_limit_rate: f64,
    retry_after: Duration,
    drop_rate: f64,
    reset_rate: f64,
    latency: Option<Latency>,
    flap: Option<Flap>,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            error_rate: 0.0,
            error_status: StatusCode::SERVICE_UNAVAILABLE,
            rate_limit_rate: 0.0,
            retry_after: Duration::from_secs(1),
            drop_rate: 0.0,
            reset_rate: 0.0,
            latency: None,
            flap: None,
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

    /// Reset the connection (TCP RST) without an answer for a fraction
    /// `rate` of requests.
    pub fn with_resets(mut self, rate: f64) -> Self {
        self.reset_rate = rate;
        self
    }

    /// Delay every request by a uniform duration in `[min, max]`.
    pub fn with_latency(mut self, min: Duration, max: Duration) -> Self {
        self.latency = Some(Latency::Uniform { min, max });
        self
    }

    /// Delay every request by a duration drawn from `latency`.
    pub fn with_latency_distribution(mut self, latency: Latency) -> Self {
        self.latency = Some(latency);
        self
    }

    /// Go down and up on a schedule (see [`Flap`]), starting with an outage
    /// when the configuration is set.
    pub fn with_flap(mut self, down: Duration, up: Duration, fault: Fault) -> Self {
        self.flap = Some(Flap { down, up, fault });
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

    /// The reset fraction.
    pub fn resets(&self) -> f64 {
        self.reset_rate
    }

    /// The latency distribution, if any.
    pub fn latency(&self) -> Option<Latency> {
        self.latency
    }

    /// The flap schedule, if any.
    pub fn flap(&self) -> Option<Flap> {
        self.flap
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
            ("reset_rate", self.reset_rate),
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
        if let Some(latency) = &self.latency {
            latency.validate()?;
        }
        if let Some(flap) = &self.flap {
            if flap.down.is_zero() || flap.up.is_zero() {
                return Err(TestkitError::InvalidFault {
                    field: "flap",
                    reason: format!(
                        "down and up must both be longer than zero, got {:?} and {:?}",
                        flap.down, flap.up
                    ),
                });
            }
            if let Fault::Error(status) = flap.fault
                && !status.is_server_error()
            {
                return Err(TestkitError::InvalidFault {
                    field: "flap",
                    reason: format!("an outage's error must be a 5xx, got {status}"),
                });
            }
            if matches!(flap.fault, Fault::Delay(_)) {
                return Err(TestkitError::InvalidFault {
                    field: "flap",
                    reason: "an outage is an error, a 429, a drop or a reset, not a delay".into(),
                });
            }
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
    /// When the current configuration was set: a [`Flap`] counts from here.
    since: Mutex<tokio::time::Instant>,
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
                since: Mutex::new(tokio::time::Instant::now()),
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
        *self.inner.since.lock() = tokio::time::Instant::now();
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
        if edited.flap != config.flap {
            *self.inner.since.lock() = tokio::time::Instant::now();
        }
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
        if let Some(flap) = config.flap {
            let elapsed = self.inner.since.lock().elapsed();
            let period = flap.down + flap.up;
            let into = Duration::from_nanos(
                u64::try_from(elapsed.as_nanos() % period.as_nanos()).unwrap_or(0),
            );
            if into < flap.down {
                return Decision {
                    delay: Duration::ZERO,
                    fault: Some(flap.fault),
                };
            }
        }
        let rng = &self.inner.rng;
        let delay = config
            .latency
            .map_or(Duration::ZERO, |latency| latency.draw(rng));
        let fires = |rate: f64| rate > 0.0 && rng.next_f64() < rate;
        let fault = if fires(config.drop_rate) {
            Some(Fault::Drop)
        } else if fires(config.reset_rate) {
            Some(Fault::Reset)
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

    #[tokio::test(start_paused = true)]
    async fn a_flap_is_down_then_up_on_tokio_time() {
        let faults = Faults::new(1);
        let reset = Fault::Reset;
        faults
            .set(FaultConfig::none().with_flap(
                Duration::from_secs(10),
                Duration::from_secs(20),
                reset,
            ))
            .unwrap();
        let at = |secs: u64| {
            let faults = faults.clone();
            async move {
                tokio::time::advance(Duration::from_secs(secs)).await;
                faults.decide().fault
            }
        };
        assert_eq!(faults.decide().fault, Some(reset), "down from the start");
        assert_eq!(at(9).await, Some(reset), "9 s: still down");
        assert_eq!(at(1).await, None, "10 s: up");
        assert_eq!(at(19).await, None, "29 s: up");
        assert_eq!(at(1).await, Some(reset), "30 s: down again");
        assert_eq!(at(10).await, None, "40 s: up again");
        // Setting the configuration again restarts the schedule.
        faults
            .update(|c| {
                c.with_flap(
                    Duration::from_secs(5),
                    Duration::from_secs(5),
                    Fault::Error(StatusCode::BAD_GATEWAY),
                )
            })
            .unwrap();
        assert_eq!(
            faults.decide().fault,
            Some(Fault::Error(StatusCode::BAD_GATEWAY))
        );
        for (config, field) in [
            (
                FaultConfig::none().with_flap(Duration::ZERO, Duration::from_secs(1), reset),
                "flap",
            ),
            (
                FaultConfig::none().with_flap(
                    Duration::from_secs(1),
                    Duration::from_secs(1),
                    Fault::Error(StatusCode::NOT_FOUND),
                ),
                "flap",
            ),
            (
                FaultConfig::none().with_flap(
                    Duration::from_secs(1),
                    Duration::from_secs(1),
                    Fault::Delay(Duration::from_secs(1)),
                ),
                "flap",
            ),
            (FaultConfig::none().with_resets(1.1), "reset_rate"),
        ] {
            match config.validate() {
                Err(TestkitError::InvalidFault { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn latency_distributions_have_their_shape() {
        let faults = Faults::new(9);
        let draw = |latency: Latency| {
            faults
                .set(FaultConfig::none().with_latency_distribution(latency))
                .unwrap();
            let mut d: Vec<Duration> = (0..4000).map(|_| faults.decide().delay).collect();
            d.sort();
            d
        };
        let ms = Duration::from_millis;
        let exp = draw(Latency::Exponential {
            mean: ms(20),
            max: ms(500),
        });
        let mean = exp.iter().sum::<Duration>() / 4000;
        assert!((ms(17)..=ms(23)).contains(&mean), "mean {mean:?}");
        assert!(exp[3999] <= ms(500));
        // Median of an exponential: mean * ln 2 = 13.9 ms.
        assert!(
            (ms(11)..=ms(17)).contains(&exp[2000]),
            "p50 {:?}",
            exp[2000]
        );
        let tail = draw(Latency::LongTail {
            fast: (ms(1), ms(5)),
            slow_rate: 0.02,
            slow: (ms(900), ms(1000)),
        });
        let slow = tail.iter().filter(|d| **d >= ms(900)).count();
        assert!((40..=130).contains(&slow), "{slow} slow of 4000");
        assert!(tail[2000] <= ms(5), "p50 {:?}", tail[2000]);
        assert!(tail[3990] >= ms(900), "p99.75 {:?}", tail[3990]);
        assert!(
            Latency::LongTail {
                fast: (ms(1), ms(5)),
                slow_rate: 2.0,
                slow: (ms(1), ms(2)),
            }
            .validate()
            .is_err()
        );
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
