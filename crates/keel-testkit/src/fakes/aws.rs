//! [`AwsFront`]: a loopback front for moto (moto's server mode) that names
//! every AWS call, runs SSM commands itself, injects each service's real
//! error, throttling and lost-response faults, and counts calls.
//!
//! moto answers EC2, S3, SSM Parameter Store, DynamoDB and the rest well
//! enough for a controller's tests, but it runs no SSM commands
//! (`SendCommand` and `GetCommandInvocation` answer, always `Success` with
//! empty output), ignores EC2 `ClientToken` idempotency, and cannot inject
//! faults. Point every AWS SDK client of a test at [`AwsFront::url`] (S3 with
//! path-style addressing) and the front:
//!
//! * **names each request** `(service, operation)`: the service from the
//!   SigV4 credential scope (`Authorization: AWS4-HMAC-SHA256
//!   Credential=AKID/20261207/us-east-1/ssm/aws4_request, ...`, or the
//!   `X-Amz-Credential` query parameter of a presigned URL); the operation
//!   from `X-Amz-Target` (JSON protocols: `AmazonSSM.SendCommand` →
//!   `SendCommand`), from the `Action` form field or query parameter (EC2
//!   and the other query protocols), or for S3 from the SDK's `x-id` query
//!   parameter, else the method, path and sub-resource (`GetObject`,
//!   `PutObject`, `CopyObject`, `DeleteObject`, `HeadObject`,
//!   `ListObjectsV2`, `ListObjects`, `ListBuckets`, `CreateBucket`,
//!   `DeleteBucket`, `HeadBucket`, `DeleteObjects`, multipart uploads,
//!   `Get/Put/Delete` + `BucketVersioning`, `BucketPolicy`,
//!   `BucketTagging`/`ObjectTagging`..., and the bare method otherwise);
//! * **runs SSM commands** ([`AwsFront::set_command_handler`]): `SendCommand`
//!   and `GetCommandInvocation` are answered here, with the fields, statuses
//!   and errors of the real API; every invocation is recorded
//!   ([`AwsFront::invocations`]);
//! * **forwards everything else to moto** unchanged (method, path, query,
//!   headers including `Authorization`, body; hop-by-hop headers and
//!   `Expect` excepted) and returns moto's answer unchanged;
//! * **injects faults** per service or per operation, seeded and changeable
//!   at runtime ([`AwsFront::set_faults`], [`AwsFront::push_next`]): the
//!   service's real 5xx, its real throttling answer, a dropped connection
//!   (the call never reached AWS), a **lost response** (the call took effect
//!   in moto, then the caller never heard: the proof that creates are
//!   idempotent), and latency;
//! * **counts calls** ([`AwsFront::calls`], [`AwsFront::calls_forwarded`]).
//!
//! The error shapes, per protocol (each from the service's documentation):
//!
//! | service | [`AwsFault::Error`] | [`AwsFault::Throttle`] |
//! |---|---|---|
//! | `ec2` (EC2 query) | 500 `<Response><Errors><Error><Code>InternalError</Code>...</Errors><RequestID>` | 503 `RequestLimitExceeded`, same XML |
//! | `s3` (REST-XML) | 500 `<Error><Code>InternalError</Code>...<RequestId>` | 503 `SlowDown` |
//! | `dynamodb` (JSON 1.0) | 500 `{"__type": "com.amazonaws.dynamodb.v20120810#InternalServerError"}` | 400 `...#ProvisionedThroughputExceededException` for item operations, `...#ThrottlingException` for table operations |
//! | `ssm` and other JSON services | 500 `{"__type": "InternalServerError"}` | 400 `ThrottlingException` |
//! | other query services (`sts`, `iam`) | 500 `<ErrorResponse><Error><Type>Receiver</Type><Code>InternalFailure</Code>` | 400 `Throttling` |
//!
//! JSON errors carry `x-amzn-ErrorType` and `x-amzn-RequestId`; S3 errors
//! `x-amz-request-id`. Sources: "Error codes for the Amazon EC2 API" and
//! "Request throttling for the Amazon EC2 API" (EC2 API Reference and
//! Developer Guide: server errors are 5xx, `InternalError` among them;
//! `RequestLimitExceeded` is the throttling code; the pages give no status
//! for it, and 503 is what EC2 answers in practice); "Amazon S3 error best
//! practices" and the S3 API Reference error-code list (`InternalError` 500,
//! `SlowDown` 503); "Error handling with DynamoDB" (DynamoDB Developer
//! Guide: `{"__type": "com.amazonaws.dynamodb.v20120810#<Name>", "message"}`,
//! throttling is 400 `ProvisionedThroughputExceededException`, or
//! `ThrottlingException` for `CreateTable`/`UpdateTable`/`DeleteTable` called
//! too fast, server errors 500 `InternalServerError`); the SSM API Reference
//! (`InternalServerError` 500 on every action, "Common Errors"
//! `ThrottlingException` 400, `InvalidCommandId` and
//! `InvocationDoesNotExist` 400 on `GetCommandInvocation`).
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use keel_testkit::Moto;
//! use keel_testkit::fakes::aws::{AwsFault, AwsFaults, AwsFront, CommandResult};
//!
//! let moto = Moto::start().await;
//! let front = AwsFront::start(moto.url(), 7).await?;
//! // Every SDK client: `.endpoint_url(front.url())`.
//! front.set_command_handler(|cmd| {
//!     if cmd.commands.iter().any(|c| c.contains("k3s")) {
//!         CommandResult::success("K3S_TOKEN=x\n").after(Duration::from_secs(2))
//!     } else {
//!         CommandResult::failed(127, "not found\n")
//!     }
//! });
//! // 10 % of all EC2 calls throttled; the next RunInstances takes effect
//! // but its answer is lost.
//! front.set_faults("ec2", None, AwsFaults::none().with_throttles(0.1))?;
//! front.push_next("ec2", Some("RunInstances"), AwsFault::LostResponse(Default::default()));
//! // ... run the controller ...
//! assert_eq!(front.calls_forwarded("ec2", Some("RunInstances")), 1);
//! assert!(front.invocations().iter().all(|i| i.commands.iter().all(|c| !c.contains("secret"))));
//! # Ok(()) }
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use keel_core::{BoxError, Rng};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::faults::aborting_body;
use crate::layer::ConnectionCloser;
use crate::{FakeServer, TestkitError};

/// The service name used when a request carries no SigV4 credential scope.
pub const UNKNOWN_SERVICE: &str = "unknown";

/// How a [`AwsFault::LostResponse`] reaches the caller once moto has
/// applied the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lost {
    /// Close the connection without an answer: the SDK sees a dispatch
    /// failure (hyper's "connection closed before message completed").
    #[default]
    Close,
    /// Answer 504 with an empty body, as a load balancer that gave up
    /// waiting would: the SDK sees a transient server error.
    GatewayTimeout,
}

/// A fault the front injects for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AwsFault {
    /// Answer with the service's own 5xx (see the module table); nothing is
    /// forwarded.
    Error,
    /// Answer with the service's own throttling error; nothing is forwarded.
    Throttle,
    /// Close the connection without forwarding: the call never reached AWS.
    Drop,
    /// Serve the call (forward it to moto, or run the SSM action), then fail
    /// the answer as [`Lost`] says: the call took effect, the caller never
    /// heard.
    LostResponse(Lost),
    /// Wait this long, then serve normally. Only as a one-shot fault
    /// ([`AwsFront::push_next`]).
    Delay(Duration),
}

/// The probabilistic faults of one service or one operation. Each call
/// draws, in this order and only for the rates above zero: latency, drop,
/// lost response, throttle, error; the first that fires wins. All draws come
/// from the front's RNG seeded at [`AwsFront::start`], so the same seed and
/// the same call order give the same faults.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct AwsFaults {
    /// Fraction (0.0..=1.0) answered with the service's 5xx.
    pub error_rate: f64,
    /// Fraction answered with the service's throttling error.
    pub throttle_rate: f64,
    /// Fraction whose connection is closed before forwarding.
    pub drop_rate: f64,
    /// Fraction served, then answered as `lost_as` says.
    pub lost_response_rate: f64,
    /// How lost responses fail (default [`Lost::Close`]).
    pub lost_as: Lost,
    /// Extra latency, uniform in `[min, max]`, before the call is served.
    pub latency: Option<(Duration, Duration)>,
}

impl AwsFaults {
    /// No faults.
    pub fn none() -> Self {
        Self::default()
    }

    /// Answer a fraction `rate` with the service's 5xx.
    #[must_use]
    pub fn with_errors(mut self, rate: f64) -> Self {
        self.error_rate = rate;
        self
    }

    /// Answer a fraction `rate` with the service's throttling error.
    #[must_use]
    pub fn with_throttles(mut self, rate: f64) -> Self {
        self.throttle_rate = rate;
        self
    }

    /// Close the connection before forwarding for a fraction `rate`.
    #[must_use]
    pub fn with_drops(mut self, rate: f64) -> Self {
        self.drop_rate = rate;
        self
    }

    /// Serve a fraction `rate`, then lose the answer as `lost_as` says.
    #[must_use]
    pub fn with_lost_responses(mut self, rate: f64, lost_as: Lost) -> Self {
        self.lost_response_rate = rate;
        self.lost_as = lost_as;
        self
    }

    /// Delay every call by a uniform duration in `[min, max]`.
    #[must_use]
    pub fn with_latency(mut self, min: Duration, max: Duration) -> Self {
        self.latency = Some((min, max));
        self
    }

    /// Checks every value.
    ///
    /// # Errors
    /// [`TestkitError::InvalidFault`] naming the field: a rate outside
    /// `0.0..=1.0` (or NaN), or a latency range whose minimum exceeds its
    /// maximum.
    pub fn validate(&self) -> Result<(), TestkitError> {
        for (field, rate) in [
            ("error_rate", self.error_rate),
            ("throttle_rate", self.throttle_rate),
            ("drop_rate", self.drop_rate),
            ("lost_response_rate", self.lost_response_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(TestkitError::InvalidFault {
                    field,
                    reason: format!("must be within 0.0..=1.0, got {rate}"),
                });
            }
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

/// The final status of an SSM command invocation, as `GetCommandInvocation`
/// reports it (`Status`; `StatusDetails` in brackets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CommandStatus {
    /// `Success` (`Success`).
    #[default]
    Success,
    /// `Failed` (`Failed`): the script exited non-zero.
    Failed,
    /// `TimedOut` (`ExecutionTimedOut`).
    TimedOut,
    /// `Cancelled` (`Cancelled`).
    Cancelled,
}

impl CommandStatus {
    /// The API's `Status` value.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandStatus::Success => "Success",
            CommandStatus::Failed => "Failed",
            CommandStatus::TimedOut => "TimedOut",
            CommandStatus::Cancelled => "Cancelled",
        }
    }

    /// The API's `StatusDetails` value for this final status.
    pub fn details(self) -> &'static str {
        match self {
            CommandStatus::TimedOut => "ExecutionTimedOut",
            other => other.as_str(),
        }
    }
}

/// One instance's copy of an SSM command, as the handler sees it and
/// [`AwsFront::invocations`] records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsmInvocation {
    /// The command's id (a UUID drawn from the front's seed).
    pub command_id: String,
    /// The instance it runs on.
    pub instance_id: String,
    /// `Parameters.commands` (the script lines; empty for documents without
    /// that parameter).
    pub commands: Vec<String>,
    /// `DocumentName` (`AWS-RunShellScript`...).
    pub document_name: String,
    /// `Comment` (empty when absent).
    pub comment: String,
}

/// What one invocation does: its final status, output and exit code, and how
/// long it takes (`Pending` for the first half of `latency`, `InProgress` for
/// the second, then the result).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommandResult {
    /// The final status.
    pub status: CommandStatus,
    /// `StandardOutputContent`.
    pub stdout: String,
    /// `StandardErrorContent`.
    pub stderr: String,
    /// `ResponseCode` once finished (-1 before).
    pub exit_code: i32,
    /// Time from `SendCommand` to the final status.
    pub latency: Duration,
}

impl CommandResult {
    /// `Success`, exit code 0, this output, no latency.
    pub fn success(stdout: impl Into<String>) -> Self {
        CommandResult {
            status: CommandStatus::Success,
            stdout: stdout.into(),
            ..Self::default()
        }
    }

    /// `Failed` with this exit code and standard error, no latency.
    pub fn failed(exit_code: i32, stderr: impl Into<String>) -> Self {
        CommandResult {
            status: CommandStatus::Failed,
            stderr: stderr.into(),
            exit_code,
            ..Self::default()
        }
    }

    /// `TimedOut` (exit code -1, as SSM reports a killed script), no latency.
    pub fn timed_out() -> Self {
        CommandResult {
            status: CommandStatus::TimedOut,
            exit_code: -1,
            ..Self::default()
        }
    }

    /// The same result, reached `latency` after `SendCommand`.
    #[must_use]
    pub fn after(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }
}

type CommandHandler = Arc<dyn Fn(&SsmInvocation) -> CommandResult + Send + Sync>;

/// Key of a fault configuration or queue: a service, and an operation or
/// `None` for all of the service's operations.
type FaultKey = (String, Option<String>);

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    received: u64,
    forwarded: u64,
}

struct RunningCommand {
    sent: Instant,
    requested: SystemTime,
    document_name: String,
    comment: String,
    invocations: Vec<(SsmInvocation, CommandResult)>,
}

struct SsmState {
    commands: HashMap<String, RunningCommand>,
    log: Vec<SsmInvocation>,
    handler: Option<CommandHandler>,
    latency: Duration,
    invisible_for: Duration,
}

struct Inner {
    upstream: String,
    client: reqwest::Client,
    /// Fault draws only, so that ids drawn on some paths do not shift them.
    rng: Rng,
    ids: Rng,
    configs: Mutex<HashMap<FaultKey, AwsFaults>>,
    next: Mutex<HashMap<FaultKey, VecDeque<AwsFault>>>,
    counts: Mutex<HashMap<(String, String), Counts>>,
    ssm: Mutex<SsmState>,
}

/// The front's shared state (cheap to clone).
#[derive(Clone)]
struct Front {
    inner: Arc<Inner>,
}

/// A running front for moto; see the [module docs](self). Dropping it stops
/// the server.
pub struct AwsFront {
    server: FakeServer,
    front: Front,
}

impl fmt::Debug for AwsFront {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsFront")
            .field("url", &self.url())
            .field("upstream", &self.front.inner.upstream)
            .finish_non_exhaustive()
    }
}

impl AwsFront {
    /// Starts a front on a free loopback port, forwarding to
    /// `upstream_moto_url` (`http://127.0.0.1:<port>`, [`crate::Moto::url`]),
    /// with fault draws and ids seeded by `seed`. No faults; commands
    /// succeed at once with empty output.
    ///
    /// # Errors
    /// [`TestkitError::Command`] when `upstream_moto_url` is not an
    /// `http(s)` URL or the HTTP client cannot be built;
    /// [`TestkitError::Io`] when no port can be bound.
    pub async fn start(upstream_moto_url: &str, seed: u64) -> Result<AwsFront, TestkitError> {
        let config_error = |context: String, source: BoxError| TestkitError::Command {
            service: "AwsFront",
            context,
            source,
        };
        let url = reqwest::Url::parse(upstream_moto_url).map_err(|e| {
            config_error(
                format!("upstream URL {upstream_moto_url:?} does not parse"),
                e.into(),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(config_error(
                format!("upstream URL {upstream_moto_url:?} is not http(s)"),
                "unsupported scheme".into(),
            ));
        }
        // No redirects, proxies or decompression: the caller sees exactly
        // what moto answered.
        // A bound, so that a hung moto fails a test with 502 instead of
        // hanging it.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| config_error("cannot build the forwarding client".to_owned(), e.into()))?;
        let front = Front::new(
            upstream_moto_url.trim_end_matches('/').to_owned(),
            client,
            seed,
        );
        let router = Router::new().fallback(handle).with_state(front.clone());
        let server = FakeServer::builder().seed(seed).try_start(router).await?;
        tracing::debug!(url = %server.base_url(), upstream = %front.inner.upstream, "aws front started");
        Ok(AwsFront { server, front })
    }

    /// `http://127.0.0.1:<port>`: the endpoint URL for every AWS client.
    pub fn url(&self) -> String {
        self.server.base_url()
    }

    /// The moto URL calls are forwarded to (no trailing slash).
    pub fn upstream(&self) -> &str {
        &self.front.inner.upstream
    }

    /// The underlying fake server: every request as received
    /// ([`FakeServer::requests`]). Its generic faults answer in plain text,
    /// not in an AWS shape; use [`AwsFront::set_faults`] instead.
    pub fn server(&self) -> &FakeServer {
        &self.server
    }

    /// Sets the probabilistic faults of `service` (`"ec2"`, `"s3"`, `"ssm"`,
    /// `"dynamodb"`...) for one operation (`Some("RunInstances")`) or for all
    /// of them (`None`). An operation's own setting replaces the service's
    /// for that operation, so `set_faults("ec2", Some("DescribeInstances"),
    /// AwsFaults::none())` exempts one operation from the service's faults.
    ///
    /// # Errors
    /// As [`AwsFaults::validate`]; the old setting stays.
    pub fn set_faults(
        &self,
        service: &str,
        op: Option<&str>,
        faults: AwsFaults,
    ) -> Result<(), TestkitError> {
        faults.validate()?;
        let key = (service.to_owned(), op.map(str::to_owned));
        self.front.inner.configs.lock().insert(key, faults);
        Ok(())
    }

    /// The faults set for exactly this key ([`AwsFaults::none`] when unset).
    pub fn faults(&self, service: &str, op: Option<&str>) -> AwsFaults {
        let key = (service.to_owned(), op.map(str::to_owned));
        self.front
            .inner
            .configs
            .lock()
            .get(&key)
            .copied()
            .unwrap_or_default()
    }

    /// Removes every probabilistic fault and every queued one-shot fault.
    pub fn clear_faults(&self) {
        self.front.inner.configs.lock().clear();
        self.front.inner.next.lock().clear();
    }

    /// Queues a one-shot fault for the next call to `service` (and `op`,
    /// when given). One-shot faults come before probabilistic ones, the
    /// operation's queue before the service's, each queue in push order.
    pub fn push_next(&self, service: &str, op: Option<&str>, fault: AwsFault) {
        let key = (service.to_owned(), op.map(str::to_owned));
        self.front
            .inner
            .next
            .lock()
            .entry(key)
            .or_default()
            .push_back(fault);
    }

    /// Runs every SSM invocation through `handler` from now on (called once
    /// per instance at `SendCommand`, in `InstanceIds` order, without any
    /// lock held).
    pub fn set_command_handler(
        &self,
        handler: impl Fn(&SsmInvocation) -> CommandResult + Send + Sync + 'static,
    ) {
        self.front.inner.ssm.lock().handler = Some(Arc::new(handler));
    }

    /// Back to the default handler: `Success`, empty output, exit code 0,
    /// after the [`AwsFront::set_command_latency`].
    pub fn clear_command_handler(&self) {
        self.front.inner.ssm.lock().handler = None;
    }

    /// The latency of the default handler (default zero).
    pub fn set_command_latency(&self, latency: Duration) {
        self.front.inner.ssm.lock().latency = latency;
    }

    /// For this long after `SendCommand`, `GetCommandInvocation` answers
    /// `InvocationDoesNotExist`, as real SSM does briefly (default zero).
    pub fn set_invocation_delay(&self, delay: Duration) {
        self.front.inner.ssm.lock().invisible_for = delay;
    }

    /// Every SSM invocation so far, in send order (commands that were
    /// accepted, even when their answer was then lost).
    pub fn invocations(&self) -> Vec<SsmInvocation> {
        self.front.inner.ssm.lock().log.clone()
    }

    /// Calls received for `service` and `op` (`None`: all its operations),
    /// faulted ones included.
    pub fn calls(&self, service: &str, op: Option<&str>) -> u64 {
        self.count(service, op, |c| c.received)
    }

    /// Calls forwarded to moto for `service` and `op` (`None`: all its
    /// operations), lost responses included. SSM `SendCommand` and
    /// `GetCommandInvocation` are served here and never forwarded.
    pub fn calls_forwarded(&self, service: &str, op: Option<&str>) -> u64 {
        self.count(service, op, |c| c.forwarded)
    }

    /// Every `(service, operation)` called so far with its received count,
    /// sorted.
    pub fn call_counts(&self) -> Vec<(String, String, u64)> {
        let mut all: Vec<_> = self
            .front
            .inner
            .counts
            .lock()
            .iter()
            .map(|((s, o), c)| (s.clone(), o.clone(), c.received))
            .collect();
        all.sort();
        all
    }

    /// Forgets every count (commands and invocations are kept).
    pub fn reset_counts(&self) {
        self.front.inner.counts.lock().clear();
    }

    fn count(&self, service: &str, op: Option<&str>, field: impl Fn(&Counts) -> u64) -> u64 {
        self.front
            .inner
            .counts
            .lock()
            .iter()
            .filter(|((s, o), _)| s == service && op.is_none_or(|op| op == o))
            .map(|(_, c)| field(c))
            .sum()
    }
}

// ---------------------------------------------------------------------------
// Request identification.

/// The wire protocol a call speaks, which decides the shape of its errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Ec2,
    S3,
    /// AWS JSON 1.0 or 1.1 (`X-Amz-Target`).
    Json,
    /// awsQuery (`Action=`, XML answers): STS, IAM...
    Query,
}

#[derive(Debug, Clone)]
struct Call {
    service: String,
    op: String,
    region: String,
    protocol: Protocol,
    json_content_type: &'static str,
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `(service, region)` from the SigV4 credential scope
/// `AKID/<date>/<region>/<service>/aws4_request`.
fn credential_scope(headers: &HeaderMap, query: Option<&str>) -> Option<(String, String)> {
    let credential = header_str(headers, header::AUTHORIZATION.as_str())
        .and_then(|auth| {
            let start = auth.find("Credential=")? + "Credential=".len();
            let rest = &auth[start..];
            Some(rest[..rest.find([',', ' ']).unwrap_or(rest.len())].to_owned())
        })
        .or_else(|| {
            form_urlencoded::parse(query?.as_bytes())
                .find(|(k, _)| k == "X-Amz-Credential")
                .map(|(_, v)| v.into_owned())
        })?;
    let mut parts = credential.split('/');
    let (_key, _date) = (parts.next()?, parts.next()?);
    let region = parts.next()?.to_owned();
    let service = parts.next()?.to_owned();
    Some((service, region))
}

fn identify(
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Call {
    let (service, region) = credential_scope(headers, query)
        .unwrap_or_else(|| (UNKNOWN_SERVICE.to_owned(), "us-east-1".to_owned()));
    let content_type = header_str(headers, header::CONTENT_TYPE.as_str()).unwrap_or("");
    let json_content_type = if content_type.starts_with("application/x-amz-json-1.0") {
        "application/x-amz-json-1.0"
    } else {
        "application/x-amz-json-1.1"
    };
    if let Some(target) = header_str(headers, "x-amz-target") {
        let op = target.rsplit('.').next().unwrap_or(target).to_owned();
        return Call {
            service,
            op,
            region,
            protocol: Protocol::Json,
            json_content_type,
        };
    }
    if service == "s3" {
        return Call {
            op: s3_operation(method, path, query, headers),
            service,
            region,
            protocol: Protocol::S3,
            json_content_type,
        };
    }
    let action = |bytes: &[u8]| {
        form_urlencoded::parse(bytes)
            .find(|(k, _)| k == "Action")
            .map(|(_, v)| v.into_owned())
    };
    let op = content_type
        .starts_with("application/x-www-form-urlencoded")
        .then(|| action(body))
        .flatten()
        .or_else(|| query.and_then(|q| action(q.as_bytes())))
        .unwrap_or_else(|| method.as_str().to_owned());
    let protocol = if service == "ec2" {
        Protocol::Ec2
    } else {
        Protocol::Query
    };
    Call {
        service,
        op,
        region,
        protocol,
        json_content_type,
    }
}

/// Sub-resources whose operations are `<Get|Put|Delete><name>`, as
/// (query key, bucket-level name, object-level name).
const S3_SUBRESOURCES: [(&str, &str, &str); 8] = [
    ("versioning", "BucketVersioning", "ObjectVersioning"),
    ("tagging", "BucketTagging", "ObjectTagging"),
    ("policy", "BucketPolicy", "ObjectPolicy"),
    ("acl", "BucketAcl", "ObjectAcl"),
    ("encryption", "BucketEncryption", "ObjectEncryption"),
    (
        "lifecycle",
        "BucketLifecycleConfiguration",
        "ObjectLifecycle",
    ),
    ("cors", "BucketCors", "ObjectCors"),
    ("location", "BucketLocation", "ObjectLocation"),
];

/// The S3 operation of a path-style request.
fn s3_operation(method: &Method, path: &str, query: Option<&str>, headers: &HeaderMap) -> String {
    let params: Vec<(String, String)> = query
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    // The Rust SDK names ambiguous operations itself.
    if let Some((_, id)) = params.iter().find(|(k, _)| k == "x-id") {
        return id.clone();
    }
    let has = |key: &str| params.iter().any(|(k, _)| k == key);
    let trimmed = path.trim_start_matches('/');
    let (bucket, key) = match trimmed.split_once('/') {
        Some((bucket, key)) if !key.is_empty() => (bucket, Some(key)),
        Some((bucket, _)) => (bucket, None),
        None => (trimmed, None),
    };
    let verb = match *method {
        Method::GET => "Get",
        Method::PUT => "Put",
        Method::DELETE => "Delete",
        _ => "",
    };
    if !verb.is_empty()
        && !bucket.is_empty()
        && let Some((_, on_bucket, on_object)) = S3_SUBRESOURCES.iter().find(|(q, ..)| has(q))
    {
        return format!(
            "{verb}{}",
            if key.is_some() { on_object } else { on_bucket }
        );
    }
    let name = match (method.clone(), bucket.is_empty(), key.is_some()) {
        (Method::GET, true, _) => "ListBuckets",
        (Method::GET, false, false) if has("list-type") => "ListObjectsV2",
        (Method::GET, false, false) if has("uploads") => "ListMultipartUploads",
        (Method::GET, false, false) if has("versions") => "ListObjectVersions",
        (Method::GET, false, false) => "ListObjects",
        (Method::PUT, false, false) => "CreateBucket",
        (Method::DELETE, false, false) => "DeleteBucket",
        (Method::HEAD, false, false) => "HeadBucket",
        (Method::POST, false, false) if has("delete") => "DeleteObjects",
        (Method::GET, false, true) if has("uploadId") => "ListParts",
        (Method::GET, false, true) => "GetObject",
        (Method::PUT, false, true) if has("uploadId") => "UploadPart",
        (Method::PUT, false, true) if headers.contains_key("x-amz-copy-source") => "CopyObject",
        (Method::PUT, false, true) => "PutObject",
        (Method::DELETE, false, true) if has("uploadId") => "AbortMultipartUpload",
        (Method::DELETE, false, true) => "DeleteObject",
        (Method::HEAD, false, true) => "HeadObject",
        (Method::POST, false, true) if has("uploads") => "CreateMultipartUpload",
        (Method::POST, false, true) if has("uploadId") => "CompleteMultipartUpload",
        _ => method.as_str(),
    };
    name.to_owned()
}

// ---------------------------------------------------------------------------
// Serving.

/// What the front decided for one call.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Decision {
    delay: Duration,
    fault: Option<AwsFault>,
}

impl Front {
    fn new(upstream: String, client: reqwest::Client, seed: u64) -> Self {
        Front {
            inner: Arc::new(Inner {
                upstream,
                client,
                rng: Rng::with_seed(seed),
                ids: Rng::with_seed(seed ^ 0x6177_735f_6964_7321),
                configs: Mutex::new(HashMap::new()),
                next: Mutex::new(HashMap::new()),
                counts: Mutex::new(HashMap::new()),
                ssm: Mutex::new(SsmState {
                    commands: HashMap::new(),
                    log: Vec::new(),
                    handler: None,
                    latency: Duration::ZERO,
                    invisible_for: Duration::ZERO,
                }),
            }),
        }
    }

    fn decide(&self, service: &str, op: &str) -> Decision {
        let op_key = (service.to_owned(), Some(op.to_owned()));
        let service_key = (service.to_owned(), None);
        {
            let mut next = self.inner.next.lock();
            let queued = [&op_key, &service_key]
                .into_iter()
                .find_map(|key| next.get_mut(key).and_then(VecDeque::pop_front));
            next.retain(|_, queue| !queue.is_empty());
            match queued {
                Some(AwsFault::Delay(delay)) => return Decision { delay, fault: None },
                Some(fault) => {
                    return Decision {
                        delay: Duration::ZERO,
                        fault: Some(fault),
                    };
                }
                None => {}
            }
        }
        let config = {
            let configs = self.inner.configs.lock();
            configs
                .get(&op_key)
                .or_else(|| configs.get(&service_key))
                .copied()
        };
        let Some(config) = config else {
            return Decision {
                delay: Duration::ZERO,
                fault: None,
            };
        };
        let rng = &self.inner.rng;
        let delay = config
            .latency
            .map_or(Duration::ZERO, |(min, max)| rng.duration_between(min, max));
        let fires = |rate: f64| rate > 0.0 && rng.next_f64() < rate;
        let fault = if fires(config.drop_rate) {
            Some(AwsFault::Drop)
        } else if fires(config.lost_response_rate) {
            Some(AwsFault::LostResponse(config.lost_as))
        } else if fires(config.throttle_rate) {
            Some(AwsFault::Throttle)
        } else if fires(config.error_rate) {
            Some(AwsFault::Error)
        } else {
            None
        };
        Decision { delay, fault }
    }

    fn bump(&self, call: &Call, forwarded: bool) {
        let mut counts = self.inner.counts.lock();
        let entry = counts
            .entry((call.service.clone(), call.op.clone()))
            .or_default();
        if forwarded {
            entry.forwarded += 1;
        } else {
            entry.received += 1;
        }
    }

    /// A UUID (version 4 layout) from the id RNG.
    fn uuid(&self) -> String {
        let (a, b) = (self.inner.ids.next_u64(), self.inner.ids.next_u64());
        let a = (a & !0xf000) | 0x4000;
        let b = (b & !(0xc << 60)) | (0x8 << 60);
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xffff,
            b >> 48,
            b & 0xffff_ffff_ffff
        )
    }
}

async fn handle(State(front): State<Front>, request: Request<Body>) -> Response {
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            tracing::debug!(error = %e, "aws front could not read a request body");
            return (StatusCode::BAD_REQUEST, "cannot read request body\n").into_response();
        }
    };
    let call = identify(
        &parts.method,
        parts.uri.path(),
        parts.uri.query(),
        &parts.headers,
        &body,
    );
    front.bump(&call, false);
    let decision = front.decide(&call.service, &call.op);
    tracing::debug!(
        service = %call.service,
        op = %call.op,
        fault = ?decision.fault,
        delay_ms = decision.delay.as_millis() as u64,
        "aws front call"
    );
    if !decision.delay.is_zero() {
        tokio::time::sleep(decision.delay).await;
    }
    let closer = parts.extensions.get::<ConnectionCloser>().cloned();
    let lost = match decision.fault {
        Some(AwsFault::Drop) => return close(closer).await,
        Some(AwsFault::Error) => return front.error_response(&call, &parts.method),
        Some(AwsFault::Throttle) => return front.throttle_response(&call, &parts.method),
        Some(AwsFault::LostResponse(lost)) => Some(lost),
        Some(AwsFault::Delay(_)) | None => None,
    };
    let response = if call.service == "ssm" && call.op == "SendCommand" {
        front.send_command(&call, &body)
    } else if call.service == "ssm" && call.op == "GetCommandInvocation" {
        front.get_command_invocation(&call, &body)
    } else {
        front.bump(&call, true);
        front.forward(parts, body).await
    };
    match lost {
        None => response,
        Some(Lost::Close) => close(closer).await,
        Some(Lost::GatewayTimeout) => StatusCode::GATEWAY_TIMEOUT.into_response(),
    }
}

/// Closes the request's connection without an answer ([`crate::FakeServer`]
/// drops the connection future); elsewhere answers with a body that fails.
async fn close(closer: Option<ConnectionCloser>) -> Response {
    match closer {
        Some(closer) => {
            closer.close();
            std::future::pending().await
        }
        None => Response::new(aborting_body()),
    }
}

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1), plus
/// `Expect`, which the front has already answered.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "expect"
    )
}

impl Front {
    async fn forward(&self, parts: http::request::Parts, body: Bytes) -> Response {
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let url = format!("{}{path}", self.inner.upstream);
        let mut headers = HeaderMap::with_capacity(parts.headers.len());
        for (name, value) in &parts.headers {
            if !hop_by_hop(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        let mut request = self
            .inner
            .client
            .request(parts.method.clone(), &url)
            .headers(headers);
        if !body.is_empty() {
            request = request.body(body);
        }
        let upstream = match request.send().await {
            Ok(response) => response,
            Err(e) => return bad_gateway(&url, &e),
        };
        let status = upstream.status();
        let mut headers = HeaderMap::with_capacity(upstream.headers().len());
        for (name, value) in upstream.headers() {
            if !hop_by_hop(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        let bytes = match upstream.bytes().await {
            Ok(bytes) => bytes,
            Err(e) => return bad_gateway(&url, &e),
        };
        let mut response = Response::new(Body::from(bytes));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        response
    }
}

fn bad_gateway(url: &str, error: &reqwest::Error) -> Response {
    tracing::warn!(%url, error = %error, "aws front could not reach moto");
    (
        StatusCode::BAD_GATEWAY,
        format!("aws front: cannot reach moto at {url}: {error}\n"),
    )
        .into_response()
}

// ---------------------------------------------------------------------------
// Error shapes.

const INJECTED: &str = " (injected by AwsFront)";

impl Front {
    fn error_response(&self, call: &Call, method: &Method) -> Response {
        let request_id = self.uuid();
        match call.protocol {
            Protocol::Ec2 => ec2_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "An internal error has occurred.",
                &request_id,
            ),
            Protocol::S3 => s3_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "We encountered an internal error. Please try again.",
                &request_id,
                method,
            ),
            Protocol::Json => json_error(
                call,
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServerError",
                "Internal server error",
                &request_id,
            ),
            Protocol::Query => query_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Receiver",
                "InternalFailure",
                "The request processing has failed because of an unknown error, exception or failure.",
                &request_id,
            ),
        }
    }

    fn throttle_response(&self, call: &Call, method: &Method) -> Response {
        let request_id = self.uuid();
        match call.protocol {
            Protocol::Ec2 => ec2_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "RequestLimitExceeded",
                "Request limit exceeded.",
                &request_id,
            ),
            Protocol::S3 => s3_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "SlowDown",
                "Please reduce your request rate.",
                &request_id,
                method,
            ),
            Protocol::Json if call.service == "dynamodb" => {
                let table_op = matches!(
                    call.op.as_str(),
                    "CreateTable" | "UpdateTable" | "DeleteTable"
                );
                let (code, message) = if table_op {
                    (
                        "ThrottlingException",
                        "Rate of requests exceeds the allowed throughput.",
                    )
                } else {
                    (
                        "ProvisionedThroughputExceededException",
                        "The level of configured provisioned throughput for the table was exceeded. Consider increasing your provisioning level with the UpdateTable API.",
                    )
                };
                json_error(call, StatusCode::BAD_REQUEST, code, message, &request_id)
            }
            Protocol::Json => json_error(
                call,
                StatusCode::BAD_REQUEST,
                "ThrottlingException",
                "Rate exceeded",
                &request_id,
            ),
            Protocol::Query => query_error(
                StatusCode::BAD_REQUEST,
                "Sender",
                "Throttling",
                "Rate exceeded",
                &request_id,
            ),
        }
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn with_headers(
    status: StatusCode,
    content_type: &'static str,
    body: String,
    extra: &[(&'static str, &str)],
) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    for (name, value) in extra {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(*name, value);
        }
    }
    response
}

/// EC2's query-protocol error (EC2 API Reference, "Error codes for the
/// Amazon EC2 API", example error response).
fn ec2_error(status: StatusCode, code: &str, message: &str, request_id: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{}</Message></Error></Errors><RequestID>{request_id}</RequestID></Response>",
        xml_escape(&format!("{message}{INJECTED}"))
    );
    with_headers(status, "text/xml;charset=UTF-8", body, &[])
}

/// S3's REST error (S3 API Reference, "Error responses"). HEAD answers carry
/// no body, as S3's do.
fn s3_error(
    status: StatusCode,
    code: &str,
    message: &str,
    request_id: &str,
    method: &Method,
) -> Response {
    let body = if *method == Method::HEAD {
        String::new()
    } else {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{}</Message><RequestId>{request_id}</RequestId><HostId>aws-front</HostId></Error>",
            xml_escape(&format!("{message}{INJECTED}"))
        )
    };
    with_headers(
        status,
        "application/xml",
        body,
        &[
            ("x-amz-request-id", request_id),
            ("x-amz-id-2", "aws-front"),
        ],
    )
}

/// A JSON-protocol error: `{"__type", "message"}` with `x-amzn-ErrorType`
/// (DynamoDB qualifies the type with its namespace).
fn json_error(
    call: &Call,
    status: StatusCode,
    code: &str,
    message: &str,
    request_id: &str,
) -> Response {
    let error_type = if call.service == "dynamodb" {
        format!("com.amazonaws.dynamodb.v20120810#{code}")
    } else {
        code.to_owned()
    };
    let body = json!({ "__type": error_type, "message": format!("{message}{INJECTED}") });
    with_headers(
        status,
        call.json_content_type,
        body.to_string(),
        &[("x-amzn-ErrorType", code), ("x-amzn-RequestId", request_id)],
    )
}

/// The awsQuery error (STS, IAM...).
fn query_error(
    status: StatusCode,
    kind: &str,
    code: &str,
    message: &str,
    request_id: &str,
) -> Response {
    let body = format!(
        "<ErrorResponse><Error><Type>{kind}</Type><Code>{code}</Code><Message>{}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>",
        xml_escape(&format!("{message}{INJECTED}"))
    );
    with_headers(
        status,
        "text/xml",
        body,
        &[("x-amzn-RequestId", request_id)],
    )
}

// ---------------------------------------------------------------------------
// SSM commands.

fn ssm_json(status: StatusCode, body: &Value, request_id: &str) -> Response {
    with_headers(
        status,
        "application/x-amz-json-1.1",
        body.to_string(),
        &[("x-amzn-RequestId", request_id)],
    )
}

/// A modeled SSM error (400, bare `__type`).
fn ssm_error(code: &str, message: &str, request_id: &str) -> Response {
    with_headers(
        StatusCode::BAD_REQUEST,
        "application/x-amz-json-1.1",
        json!({ "__type": code, "message": message }).to_string(),
        &[("x-amzn-ErrorType", code), ("x-amzn-RequestId", request_id)],
    )
}

fn epoch_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, the form `GetCommandInvocation` uses for its
/// execution times.
fn iso8601_millis(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

fn plugin_name(document: &str) -> &'static str {
    match document {
        "AWS-RunShellScript" => "aws:runShellScript",
        "AWS-RunPowerShellScript" => "aws:runPowerShellScript",
        _ => "",
    }
}

impl Front {
    fn send_command(&self, call: &Call, body: &[u8]) -> Response {
        let request_id = self.uuid();
        let Ok(input) = serde_json::from_slice::<Value>(body) else {
            return ssm_error(
                "SerializationException",
                "request body is not JSON",
                &request_id,
            );
        };
        let Some(document_name) = input["DocumentName"].as_str().map(str::to_owned) else {
            return ssm_error(
                "ValidationException",
                "1 validation error detected: Value null at 'documentName' failed to satisfy constraint: Member must not be null",
                &request_id,
            );
        };
        let instance_ids: Vec<String> = input["InstanceIds"]
            .as_array()
            .map(|ids| {
                ids.iter()
                    .filter_map(|i| i.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if instance_ids.is_empty() {
            return ssm_error(
                "InvalidParameters",
                "AwsFront runs commands by InstanceIds only; Targets are not resolved",
                &request_id,
            );
        }
        let commands: Vec<String> = input["Parameters"]["commands"]
            .as_array()
            .map(|c| {
                c.iter()
                    .filter_map(|l| l.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let comment = input["Comment"].as_str().unwrap_or("").to_owned();
        let timeout = input["TimeoutSeconds"].as_u64().unwrap_or(3_600);
        let command_id = self.uuid();
        let (handler, default_latency) = {
            let ssm = self.inner.ssm.lock();
            (ssm.handler.clone(), ssm.latency)
        };
        let invocations: Vec<(SsmInvocation, CommandResult)> = instance_ids
            .iter()
            .map(|instance_id| {
                let invocation = SsmInvocation {
                    command_id: command_id.clone(),
                    instance_id: instance_id.clone(),
                    commands: commands.clone(),
                    document_name: document_name.clone(),
                    comment: comment.clone(),
                };
                let result = match &handler {
                    Some(handler) => handler(&invocation),
                    None => CommandResult::success("").after(default_latency),
                };
                (invocation, result)
            })
            .collect();
        let requested = SystemTime::now();
        {
            let mut ssm = self.inner.ssm.lock();
            ssm.log.extend(invocations.iter().map(|(i, _)| i.clone()));
            ssm.commands.insert(
                command_id.clone(),
                RunningCommand {
                    sent: Instant::now(),
                    requested,
                    document_name: document_name.clone(),
                    comment: comment.clone(),
                    invocations,
                },
            );
        }
        let requested_secs = epoch_secs(requested);
        let parameters = if input["Parameters"].is_object() {
            input["Parameters"].clone()
        } else {
            json!({})
        };
        let command = json!({
            "CommandId": command_id,
            "DocumentName": document_name,
            "DocumentVersion": input["DocumentVersion"].as_str().unwrap_or("$DEFAULT"),
            "Comment": comment,
            "ExpiresAfter": requested_secs + timeout as f64,
            "Parameters": parameters,
            "InstanceIds": instance_ids,
            "Targets": [],
            "RequestedDateTime": requested_secs,
            "Status": "Pending",
            "StatusDetails": "Pending",
            "OutputS3Region": call.region,
            "OutputS3BucketName": "",
            "OutputS3KeyPrefix": "",
            "MaxConcurrency": "50",
            "MaxErrors": "0",
            "TargetCount": instance_ids.len(),
            "CompletedCount": 0,
            "ErrorCount": 0,
            "DeliveryTimedOutCount": 0,
            "ServiceRole": "",
            "NotificationConfig": { "NotificationArn": "", "NotificationEvents": [], "NotificationType": "" },
            "CloudWatchOutputConfig": { "CloudWatchLogGroupName": "", "CloudWatchOutputEnabled": false },
            "TimeoutSeconds": timeout,
        });
        ssm_json(StatusCode::OK, &json!({ "Command": command }), &request_id)
    }

    fn get_command_invocation(&self, _call: &Call, body: &[u8]) -> Response {
        let request_id = self.uuid();
        let Ok(input) = serde_json::from_slice::<Value>(body) else {
            return ssm_error(
                "SerializationException",
                "request body is not JSON",
                &request_id,
            );
        };
        let command_id = input["CommandId"].as_str().unwrap_or("");
        let instance_id = input["InstanceId"].as_str().unwrap_or("");
        let ssm = self.inner.ssm.lock();
        let Some(command) = ssm.commands.get(command_id) else {
            return ssm_error(
                "InvalidCommandId",
                &format!("Command ID {command_id} is not valid"),
                &request_id,
            );
        };
        let elapsed = command.sent.elapsed();
        let found = command
            .invocations
            .iter()
            .find(|(i, _)| i.instance_id == instance_id);
        let Some((_, result)) = found.filter(|_| elapsed >= ssm.invisible_for) else {
            return ssm_error(
                "InvocationDoesNotExist",
                &format!(
                    "An invocation of command {command_id} on instance {instance_id} does not exist"
                ),
                &request_id,
            );
        };
        let start_after = result.latency / 2;
        let at = |offset: Duration| iso8601_millis(command.requested + offset);
        let (status, details, code, start, end, elapsed_time, stdout, stderr) =
            if elapsed >= result.latency {
                (
                    result.status.as_str(),
                    result.status.details(),
                    result.exit_code,
                    at(start_after),
                    at(result.latency),
                    format!("PT{:.3}S", (result.latency - start_after).as_secs_f64()),
                    result.stdout.as_str(),
                    result.stderr.as_str(),
                )
            } else if elapsed >= start_after {
                let running = elapsed - start_after;
                (
                    "InProgress",
                    "InProgress",
                    -1,
                    at(start_after),
                    String::new(),
                    format!("PT{:.3}S", running.as_secs_f64()),
                    "",
                    "",
                )
            } else {
                (
                    "Pending",
                    "Pending",
                    -1,
                    String::new(),
                    String::new(),
                    String::new(),
                    "",
                    "",
                )
            };
        let answer = json!({
            "CommandId": command_id,
            "InstanceId": instance_id,
            "Comment": command.comment,
            "DocumentName": command.document_name,
            "DocumentVersion": "$DEFAULT",
            "PluginName": plugin_name(&command.document_name),
            "ResponseCode": code,
            "ExecutionStartDateTime": start,
            "ExecutionElapsedTime": elapsed_time,
            "ExecutionEndDateTime": end,
            "Status": status,
            "StatusDetails": details,
            "StandardOutputContent": stdout,
            "StandardOutputUrl": "",
            "StandardErrorContent": stderr,
            "StandardErrorUrl": "",
            "CloudWatchOutputConfig": { "CloudWatchLogGroupName": "", "CloudWatchOutputEnabled": false },
        });
        drop(ssm);
        ssm_json(StatusCode::OK, &answer, &request_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn auth(service: &str) -> String {
        format!(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261207/eu-west-1/{service}/aws4_request, SignedHeaders=host;x-amz-date, Signature=00"
        )
    }

    #[test]
    fn services_and_operations_are_named() {
        let ssm = identify(
            &Method::POST,
            "/",
            None,
            &headers(&[
                ("authorization", &auth("ssm")),
                ("x-amz-target", "AmazonSSM.SendCommand"),
            ]),
            b"{}",
        );
        assert_eq!(
            (ssm.service.as_str(), ssm.op.as_str()),
            ("ssm", "SendCommand")
        );
        assert_eq!(ssm.region, "eu-west-1");
        assert_eq!(ssm.protocol, Protocol::Json);

        let ec2 = identify(
            &Method::POST,
            "/",
            None,
            &headers(&[
                ("authorization", &auth("ec2")),
                (
                    "content-type",
                    "application/x-www-form-urlencoded; charset=utf-8",
                ),
            ]),
            b"Action=RunInstances&Version=2016-11-15&ClientToken=abc",
        );
        assert_eq!(
            (ec2.service.as_str(), ec2.op.as_str()),
            ("ec2", "RunInstances")
        );
        assert_eq!(ec2.protocol, Protocol::Ec2);

        let sts = identify(
            &Method::GET,
            "/",
            Some("Action=GetCallerIdentity&Version=2011-06-15"),
            &headers(&[("authorization", &auth("sts"))]),
            b"",
        );
        assert_eq!(
            (sts.service.as_str(), sts.op.as_str()),
            ("sts", "GetCallerIdentity")
        );
        assert_eq!(sts.protocol, Protocol::Query);

        let presigned = identify(
            &Method::GET,
            "/bucket/key",
            Some(
                "X-Amz-Credential=AKID%2F20261207%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Signature=0",
            ),
            &HeaderMap::new(),
            b"",
        );
        assert_eq!(
            (presigned.service.as_str(), presigned.op.as_str()),
            ("s3", "GetObject")
        );

        let anonymous = identify(&Method::GET, "/", None, &HeaderMap::new(), b"");
        assert_eq!(anonymous.service, UNKNOWN_SERVICE);
    }

    #[test]
    fn s3_operations_follow_method_path_and_subresource() {
        let none = HeaderMap::new();
        let copy = headers(&[("x-amz-copy-source", "/b/src")]);
        let cases: [(Method, &str, Option<&str>, &HeaderMap, &str); 16] = [
            (Method::GET, "/", None, &none, "ListBuckets"),
            (Method::PUT, "/b", None, &none, "CreateBucket"),
            (Method::HEAD, "/b", None, &none, "HeadBucket"),
            (Method::DELETE, "/b/", None, &none, "DeleteBucket"),
            (
                Method::GET,
                "/b",
                Some("list-type=2&prefix=x"),
                &none,
                "ListObjectsV2",
            ),
            (Method::GET, "/b", None, &none, "ListObjects"),
            (Method::PUT, "/b/k/with/slashes", None, &none, "PutObject"),
            (Method::PUT, "/b/k", None, &copy, "CopyObject"),
            (Method::GET, "/b/k", None, &none, "GetObject"),
            (Method::HEAD, "/b/k", None, &none, "HeadObject"),
            (Method::DELETE, "/b/k", None, &none, "DeleteObject"),
            (Method::POST, "/b", Some("delete"), &none, "DeleteObjects"),
            (
                Method::PUT,
                "/b",
                Some("versioning"),
                &none,
                "PutBucketVersioning",
            ),
            (
                Method::GET,
                "/b/k",
                Some("tagging"),
                &none,
                "GetObjectTagging",
            ),
            (
                Method::GET,
                "/b/k",
                Some("x-id=GetObject&partNumber=1"),
                &none,
                "GetObject",
            ),
            (Method::OPTIONS, "/b/k", None, &none, "OPTIONS"),
        ];
        for (method, path, query, headers, expected) in cases {
            assert_eq!(
                s3_operation(&method, path, query, headers),
                expected,
                "{method} {path} {query:?}"
            );
        }
    }

    #[test]
    fn faults_are_validated() {
        assert!(AwsFaults::none().with_errors(1.5).validate().is_err());
        assert!(
            AwsFaults::none()
                .with_throttles(f64::NAN)
                .validate()
                .is_err()
        );
        let backwards =
            AwsFaults::none().with_latency(Duration::from_secs(2), Duration::from_secs(1));
        match backwards.validate() {
            Err(TestkitError::InvalidFault { field, .. }) => assert_eq!(field, "latency"),
            other => panic!("{other:?}"),
        }
        assert!(
            AwsFaults::none()
                .with_lost_responses(1.0, Lost::GatewayTimeout)
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn uuids_have_the_version_4_layout() {
        let front = Front::new(String::new(), reqwest::Client::new(), 1);
        for _ in 0..50 {
            let id = front.uuid();
            let groups: Vec<&str> = id.split('-').collect();
            assert_eq!(
                groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12],
                "{id}"
            );
            assert!(groups[2].starts_with('4'), "{id}");
            assert!(matches!(&groups[3][..1], "8" | "9" | "a" | "b"), "{id}");
        }
    }

    #[test]
    fn execution_times_are_iso8601_with_millis() {
        let t = UNIX_EPOCH + Duration::from_millis(1_796_601_600_123);
        assert_eq!(iso8601_millis(t), "2026-12-07T00:00:00.123Z");
        assert_eq!(iso8601_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
