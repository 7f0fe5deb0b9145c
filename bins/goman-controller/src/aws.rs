//! The AWS clients (aws-sdk-ec2, -ssm, -s3, -dynamodb) and the one way every
//! call is made: [`Aws::call`] runs it through the service's
//! `keel::Pipeline` (overall deadline → retry → the breaker registry's AWS
//! preset breaker → its preset bulkhead → attempt timeout), with the SDK's
//! own retries switched off so attempts do not multiply.
//!
//! Errors are classified once, here ([`AwsError`]): throttling (EC2's
//! `RequestLimitExceeded`, `ThrottlingException`, S3's `SlowDown`, ...) is
//! an overload whose retry waits the longer throttle backoff (or the
//! server's `Retry-After`), transient errors (5xx, timeouts, connection
//! failures) a failure retried with the normal backoff, anything else
//! (a 4xx: invalid parameter, not found, a failed condition) is neutral:
//! not retried and not held against the breaker.

use std::fmt;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use keel::breaker::{BreakerRegistry, presets};
use keel::retry::{Backoff, RetryPolicy};
use keel::{CallOptions, ErrorOutcome, Outcome, Pipeline};

use crate::metrics::Metrics;

/// The four services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// EC2.
    Ec2,
    /// S3.
    S3,
    /// SSM.
    Ssm,
    /// DynamoDB.
    DynamoDb,
}

impl Service {
    /// The breaker preset's name, also the metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Service::Ec2 => presets::EC2,
            Service::S3 => presets::S3,
            Service::Ssm => presets::SSM,
            Service::DynamoDb => presets::DYNAMODB,
        }
    }

    const ALL: [Service; 4] = [Service::Ec2, Service::S3, Service::Ssm, Service::DynamoDb];

    const fn index(self) -> usize {
        match self {
            Service::Ec2 => 0,
            Service::S3 => 1,
            Service::Ssm => 2,
            Service::DynamoDb => 3,
        }
    }
}

/// What an error means for retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The service asked us to slow down.
    Throttled,
    /// A 5xx, a timeout, a dropped connection: try again.
    Transient,
    /// A 4xx the service will repeat (invalid parameter, not found, a
    /// failed condition): not retried.
    Permanent,
    /// Not sent: the breaker is open, or the service's bulkhead is full.
    Rejected,
}

/// A classified AWS error.
#[derive(Debug, Clone)]
pub struct AwsError {
    /// The service.
    pub service: Service,
    /// The operation (`RunInstances`).
    pub operation: &'static str,
    /// What it means.
    pub kind: ErrorKind,
    /// The service's error code, if it answered with one.
    pub code: Option<String>,
    /// HTTP status, if there was a response.
    pub status: Option<u16>,
    /// A readable message.
    pub message: String,
    /// How long to wait before the next attempt (throttling only).
    pub retry_after: Option<Duration>,
}

impl fmt::Display for AwsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: ", self.service.as_str(), self.operation)?;
        if let Some(code) = &self.code {
            write!(f, "{code}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for AwsError {}

impl ErrorOutcome for AwsError {
    fn outcome(&self) -> Outcome {
        match self.kind {
            ErrorKind::Throttled => Outcome::Overloaded {
                retry_after: self.retry_after,
            },
            ErrorKind::Transient => Outcome::Failure,
            ErrorKind::Permanent => Outcome::Neutral,
            // Only produced outside the pipeline.
            ErrorKind::Rejected => Outcome::OVERLOADED,
        }
    }
}

impl AwsError {
    /// `true` when the service answered with `code`.
    pub fn is_code(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }

    /// A local error shaped like a service's (for answers the controller
    /// cannot use).
    pub fn invalid(
        service: Service,
        operation: &'static str,
        message: impl Into<String>,
    ) -> AwsError {
        AwsError {
            service,
            operation,
            kind: ErrorKind::Permanent,
            code: None,
            status: None,
            message: message.into(),
            retry_after: None,
        }
    }
}

/// Codes AWS services use for throttling (the SDKs' own retry classifiers
/// list the same).
const THROTTLING: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "RequestThrottled",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
];

/// Codes that mean "try again".
const TRANSIENT: &[&str] = &[
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "InternalServerError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
    "InternalServiceError",
];

/// How the throttle backoff grows: `base × 2^(attempt−1)`, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleBackoff {
    /// The first wait.
    pub base: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Default for ThrottleBackoff {
    fn default() -> Self {
        // Throttling waits start where the transient backoff (500 ms)
        // leaves off, doubling to 20 s: a throttled API needs the caller to
        // slow down, not to come back in half a second.
        ThrottleBackoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(20),
        }
    }
}

impl ThrottleBackoff {
    /// The wait after `attempt` (1-based) was throttled.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.base.saturating_mul(factor).min(self.max)
    }
}

fn classify_sdk<E>(
    service: Service,
    operation: &'static str,
    err: &SdkError<E>,
    attempt: u32,
    throttle: &ThrottleBackoff,
) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let raw = err.raw_response();
    let status = raw.map(|r| r.status().as_u16());
    let header_retry_after = raw
        .and_then(|r| r.headers().get("retry-after"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let (code, message) = match err {
        SdkError::ServiceError(e) => (
            e.err().code().map(str::to_owned),
            e.err().message().unwrap_or("no message").to_owned(),
        ),
        other => (None, DisplayErrorContext(other).to_string()),
    };
    let kind = match err {
        SdkError::ConstructionFailure(_) => ErrorKind::Permanent,
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            ErrorKind::Transient
        }
        _ => match code.as_deref() {
            Some(c) if THROTTLING.contains(&c) => ErrorKind::Throttled,
            Some(c) if TRANSIENT.contains(&c) => ErrorKind::Transient,
            _ => match status {
                Some(429) => ErrorKind::Throttled,
                Some(s) if s >= 500 => ErrorKind::Transient,
                Some(_) => ErrorKind::Permanent,
                None => ErrorKind::Transient,
            },
        },
    };
    let retry_after = (kind == ErrorKind::Throttled)
        .then(|| header_retry_after.unwrap_or_else(|| throttle.delay(attempt)));
    AwsError {
        service,
        operation,
        kind,
        code,
        status,
        message,
        retry_after,
    }
}

/// Where and how to reach AWS.
#[derive(Debug, Clone)]
pub struct AwsSettings {
    /// The region of the state bucket, lock table and clusters.
    pub region: String,
    /// One endpoint for every service (moto, LocalStack), else AWS's.
    pub endpoint: Option<String>,
    /// Static credentials (tests); else the SDK's default chain.
    pub static_credentials: Option<(String, String)>,
    /// Retries of every call (goman's AWS policy: 5).
    pub retries: u32,
    /// The first transient backoff (500 ms), doubling.
    pub retry_base: Duration,
    /// The longest transient backoff (64 s).
    pub retry_max_delay: Duration,
    /// The throttle backoff.
    pub throttle: ThrottleBackoff,
    /// One attempt's limit.
    pub attempt_timeout: Duration,
    /// One call's limit, retries included.
    pub call_deadline: Duration,
}

impl AwsSettings {
    /// Defaults for `region`: the `aws` retry preset (5 retries from 500 ms
    /// doubling to 64 s), 1 s → 20 s throttle backoff, 30 s per attempt,
    /// 3 minutes per call.
    pub fn new(region: impl Into<String>) -> AwsSettings {
        AwsSettings {
            region: region.into(),
            endpoint: None,
            static_credentials: None,
            retries: 5,
            retry_base: Duration::from_millis(500),
            retry_max_delay: Duration::from_secs(64),
            throttle: ThrottleBackoff::default(),
            attempt_timeout: Duration::from_secs(30),
            call_deadline: Duration::from_secs(180),
        }
    }
}

/// The four clients and their pipelines. Cheap to clone.
#[derive(Clone)]
pub struct Aws {
    /// EC2.
    pub ec2: aws_sdk_ec2::Client,
    /// S3 (path-style addressing when an endpoint is set).
    pub s3: aws_sdk_s3::Client,
    /// SSM.
    pub ssm: aws_sdk_ssm::Client,
    /// DynamoDB.
    pub dynamodb: aws_sdk_dynamodb::Client,
    pipelines: std::sync::Arc<[Pipeline; 4]>,
    throttle: ThrottleBackoff,
    metrics: Metrics,
    breakers: BreakerRegistry,
}

impl fmt::Debug for Aws {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Aws").finish_non_exhaustive()
    }
}

impl Aws {
    /// Builds the clients; nothing is called yet.
    ///
    /// # Errors
    /// An invalid pipeline setting (a zero deadline).
    pub async fn connect(
        settings: &AwsSettings,
        breakers: &BreakerRegistry,
        metrics: Metrics,
    ) -> Result<Aws, keel::ConfigError> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(settings.region.clone()))
            // Our pipeline retries; the SDK's retries would multiply attempts.
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_millis(3100))
                    .build(),
            );
        if let Some(endpoint) = &settings.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some((id, secret)) = &settings.static_credentials {
            loader = loader.credentials_provider(aws_sdk_ec2::config::Credentials::new(
                id, secret, None, None, "static",
            ));
        }
        let shared = loader.load().await;
        let s3_config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(settings.endpoint.is_some())
            .build();
        let mut pipelines = Vec::with_capacity(4);
        for service in Service::ALL {
            let name = service.as_str();
            let metrics_retry = metrics.clone();
            let retry = retry_builder(
                settings.retries,
                settings.retry_base,
                settings.retry_max_delay,
            )
            .on_retry(move |event| {
                let reason = if event.outcome.is_overloaded() {
                    "throttled"
                } else {
                    "transient"
                };
                metrics_retry.aws_retry(name, reason);
                tracing::info!(
                    target: "goman::retry",
                    service = name,
                    attempt = event.attempt,
                    delay_ms = event.delay.as_millis() as u64,
                    reason,
                    error = ?event.error,
                    "[RETRY] AWS call failed, retrying"
                );
            })
            .build()?;
            let mut builder = Pipeline::builder()
                .deadline(settings.call_deadline)
                .retry(retry)
                .breaker(breakers.get(name))
                .attempt_timeout(settings.attempt_timeout);
            if let Some(bulkhead) = breakers.bulkhead(name) {
                builder = builder.bulkhead(bulkhead);
            }
            pipelines.push(builder.build()?);
        }
        let pipelines: [Pipeline; 4] = pipelines.try_into().expect("four services");
        Ok(Aws {
            ec2: aws_sdk_ec2::Client::new(&shared),
            s3: aws_sdk_s3::Client::from_conf(s3_config),
            ssm: aws_sdk_ssm::Client::new(&shared),
            dynamodb: aws_sdk_dynamodb::Client::new(&shared),
            pipelines: std::sync::Arc::new(pipelines),
            throttle: settings.throttle,
            metrics,
            breakers: breakers.clone(),
        })
    }

    /// The breakers (for the admin routes).
    pub fn breakers(&self) -> &BreakerRegistry {
        &self.breakers
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Calls `op` (one SDK request per call) through `service`'s pipeline.
    /// `op` gets the attempt number (1-based).
    ///
    /// # Errors
    /// The classified error of the last attempt, or `Rejected` when the
    /// breaker or bulkhead refused.
    pub async fn call<T, E, F, Fut>(
        &self,
        service: Service,
        operation: &'static str,
        mut op: F,
    ) -> Result<T, AwsError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, SdkError<E>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let throttle = self.throttle;
        self.call_op(service, operation, |attempt| {
            // Boxed: the SDK's request futures are tens of KiB, and every
            // caller up the stack would carry them otherwise.
            let fut = Box::pin(op(attempt));
            async move {
                fut.await
                    .map_err(|e| classify_sdk(service, operation, &e, attempt, &throttle))
            }
        })
        .await
    }

    /// Classifies an SDK error of attempt `attempt` (for ops that make
    /// several requests per attempt, through [`call_op`](Self::call_op)).
    pub fn classify<E>(
        &self,
        service: Service,
        operation: &'static str,
        attempt: u32,
        err: &SdkError<E>,
    ) -> AwsError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        classify_sdk(service, operation, err, attempt, &self.throttle)
    }

    /// As [`call`](Self::call), for an attempt that is more than one SDK
    /// request (a lookup before a create) and classifies its own errors.
    ///
    /// # Errors
    /// As [`call`](Self::call).
    pub async fn call_op<T, F, Fut>(
        &self,
        service: Service,
        operation: &'static str,
        mut op: F,
    ) -> Result<T, AwsError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, AwsError>>,
    {
        let pipeline = &self.pipelines[service.index()];
        let classify = |r: &Result<T, AwsError>| match r {
            Ok(_) => Outcome::Success,
            Err(e) => e.outcome(),
        };
        let options = CallOptions::new().classify(&classify);
        let metrics = &self.metrics;
        let result = pipeline
            .call_with(&options, |attempt| {
                let fut = Box::pin(op(attempt.number));
                async move {
                    let started = Instant::now();
                    let result = fut.await;
                    let outcome = match &result {
                        Ok(_) => "ok",
                        Err(e) if e.kind == ErrorKind::Throttled => "throttled",
                        Err(_) => "error",
                    };
                    metrics.aws_call(service.as_str(), operation, outcome, started.elapsed());
                    result
                }
            })
            .await;
        result.map_err(|e| self.unwrap_pipeline_error(service, operation, e))
    }

    fn unwrap_pipeline_error(
        &self,
        service: Service,
        operation: &'static str,
        e: keel::PipelineError<AwsError>,
    ) -> AwsError {
        let (kind, message) = match e {
            keel::PipelineError::Inner(e) => return e,
            keel::PipelineError::RetryBudgetExhausted { last } => {
                match last.and_then(|l| l.into_inner()) {
                    Some(e) => return e,
                    None => (ErrorKind::Rejected, "retry budget exhausted".to_owned()),
                }
            }
            keel::PipelineError::AttemptTimeout { timeout } => (
                ErrorKind::Transient,
                format!("attempt timed out after {timeout:?}"),
            ),
            keel::PipelineError::DeadlineExceeded { deadline } => (
                ErrorKind::Transient,
                format!("call deadline of {deadline:?} passed"),
            ),
            other => (ErrorKind::Rejected, other.to_string()),
        };
        if kind == ErrorKind::Rejected {
            self.metrics
                .aws_call(service.as_str(), operation, "rejected", Duration::ZERO);
        }
        AwsError {
            service,
            operation,
            kind,
            code: None,
            status: None,
            message,
            retry_after: None,
        }
    }
}

/// goman's AWS retry policy with `max_retries`, `base` and `max`: the
/// transient backoff doubles from `base` to `max` (full jitter); an
/// overload's retry-after (the throttle backoff) is honoured up to 60 s.
pub fn retry_builder(
    max_retries: u32,
    base: Duration,
    max: Duration,
) -> keel::retry::RetryPolicyBuilder {
    RetryPolicy::builder()
        .max_retries(max_retries)
        .backoff(Backoff::exponential(base, 2.0))
        .max_delay(max)
        .max_retry_after(Duration::from_secs(60))
        // The call's deadline bounds the whole call instead.
        .no_max_elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_backoff_doubles_to_its_cap() {
        let t = ThrottleBackoff::default();
        let waits: Vec<u64> = (1..=7).map(|a| t.delay(a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 20, 20]);
        assert_eq!(t.delay(200), Duration::from_secs(20));
    }

    #[test]
    fn outcomes_follow_the_kind() {
        let mut e = AwsError::invalid(Service::Ec2, "RunInstances", "bad");
        assert_eq!(e.outcome(), Outcome::Neutral);
        e.kind = ErrorKind::Transient;
        assert_eq!(e.outcome(), Outcome::Failure);
        e.kind = ErrorKind::Throttled;
        e.retry_after = Some(Duration::from_secs(4));
        assert_eq!(e.outcome().retry_after(), Some(Duration::from_secs(4)));
    }
}
