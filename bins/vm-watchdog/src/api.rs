//! Cloud API access for the VM tasks: the raw calls ([`RawApi`], over HTTP
//! in [`HttpApi`]) and the guarded access ([`Api`]).
//!
//! Every call goes through a `keel::Pipeline`: two per API group (the
//! Compute API, or one proxy host), one for reads and one for starts,
//! because they retry and time out differently. Both are built over shared
//! handles: the group's circuit breaker (from one `BreakerRegistry`), one
//! per-VM rate limiter for every call, and one priority bulkhead as the API
//! worker pool, so starts and recovery polls (critical) are admitted before
//! probe-triggered reads (high) before routine reads (low). It also shares
//! one paginated `instances.list` per poll among the VMs of a folder.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use keel::breaker::{
    BreakerConfig, BreakerEvent, BreakerRegistry, Bulkhead, CircuitBreaker, State,
};
use keel::retry::{Backoff, Jitter, RetryPolicy};
use keel::{CallOptions, Pipeline, PipelineError, Priority, RateLimit, RateLimiter};
use keel_core::classify;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::proxy::ProxyClient;
use crate::vms_yaml::VmSource;
use crate::yandex::{Observation, OperationState, Page, StartAck, YandexClient};

/// The breaker group of every Compute API call.
pub const COMPUTE_GROUP: &str = "compute";

/// One attempt of each cloud call, without any policy. [`HttpApi`] talks
/// HTTP; tests script it.
pub trait RawApi: Send + Sync + 'static {
    /// Reads one VM's status.
    fn get(&self, vm: &VmSource) -> impl Future<Output = Result<Observation, ApiError>> + Send;
    /// Reads one page of a folder's instances.
    fn list(
        &self,
        folder_id: &str,
        page_token: Option<&str>,
    ) -> impl Future<Output = Result<Page, ApiError>> + Send;
    /// Asks for a VM to start.
    fn start(&self, vm: &VmSource) -> impl Future<Output = Result<StartAck, ApiError>> + Send;
    /// Reads a start operation.
    fn operation(&self, id: &str) -> impl Future<Output = Result<OperationState, ApiError>> + Send;
}

/// [`RawApi`] over HTTP: the Compute API for instances, the proxy API for
/// proxied VMs.
#[derive(Debug, Clone)]
pub struct HttpApi {
    yandex: YandexClient,
    proxy: ProxyClient,
}

impl HttpApi {
    /// Both clients.
    pub fn new(yandex: YandexClient, proxy: ProxyClient) -> Self {
        HttpApi { yandex, proxy }
    }
}

impl RawApi for HttpApi {
    async fn get(&self, vm: &VmSource) -> Result<Observation, ApiError> {
        match vm {
            VmSource::Instance { id } => self.yandex.get(id).await,
            VmSource::Proxy { url } => self.proxy.info(url).await,
        }
    }

    async fn list(&self, folder_id: &str, page_token: Option<&str>) -> Result<Page, ApiError> {
        self.yandex.list(folder_id, page_token).await
    }

    async fn start(&self, vm: &VmSource) -> Result<StartAck, ApiError> {
        match vm {
            VmSource::Instance { id } => self.yandex.start(id).await,
            VmSource::Proxy { url } => self.proxy.start(url).await,
        }
    }

    async fn operation(&self, id: &str) -> Result<OperationState, ApiError> {
        self.yandex.operation(id).await
    }
}

/// A failed guarded call, as the VM tasks see it. Cloneable, so one failed
/// folder listing answers every VM that waited for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CallError {
    /// The pipeline's verdict (`inner`, `circuit_rejected`,
    /// `deadline_exceeded`...), a bounded label.
    pub kind: &'static str,
    /// `true` when the API answered 404: the VM does not exist.
    pub not_found: bool,
    /// The error with its causes.
    pub message: String,
}

impl CallError {
    fn from_pipeline(e: &PipelineError<ApiError>) -> Self {
        let not_found = matches!(e, PipelineError::Inner(inner) if inner.is_not_found());
        let mut message = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        CallError {
            kind: e.kind(),
            not_found,
            message,
        }
    }
}

/// Called when a group's breaker opens (`true`) or closes again (`false`).
pub type BreakerHook = Arc<dyn Fn(&str, bool) + Send + Sync>;

/// Policies of [`Api`].
#[derive(Clone)]
pub struct ApiSettings {
    /// `API_WORKER_POOL_SIZE`: attempts in flight at most; the others wait
    /// by priority.
    pub workers: usize,
    /// Per-VM rate limit (10 requests/s, burst 5).
    pub rate: RateLimit,
    /// Retry policy of starts ([`start_retry`]: 1, 2, 4, 8, 16 s ±20 %).
    pub retry: RetryPolicy,
    /// Retry policy of status and operation reads: 3 retries after 0.2,
    /// 0.4 and 0.8 s (±20 %); an open breaker's retry-after is cut to 1 s,
    /// so a read fails within about 3 s instead of waiting out the breaker. Reads repeat on their own schedule anyway; a
    /// quick retry keeps one lost answer from adding a second to the
    /// reaction time.
    pub read_retry: RetryPolicy,
    /// The breaker of each group ([`api_breaker`]: opens on the failure
    /// rate over the last 30 s, not on a run of failures).
    pub breaker: BreakerConfig,
    /// Overall deadline of one start, retries included (the start policy
    /// sleeps 31 s ±20 % in all).
    pub deadline: Duration,
    /// Overall deadline of one status read, retries included: a read that
    /// cannot finish by then fails, and the VM keeps its last status.
    pub read_deadline: Duration,
}

impl fmt::Debug for ApiSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiSettings")
            .field("workers", &self.workers)
            .field("rate", &self.rate)
            .field("deadline", &self.deadline)
            .field("read_deadline", &self.read_deadline)
            .finish_non_exhaustive()
    }
}

impl ApiSettings {
    /// The plan's policies with `workers` API workers.
    ///
    /// # Panics
    /// Never: the preset breaker numbers are valid.
    pub fn new(workers: usize) -> Self {
        ApiSettings {
            workers,
            rate: RateLimit::per_second(10).burst(5),
            retry: start_retry(),
            read_retry: RetryPolicy::builder()
                .max_retries(3)
                .backoff(Backoff::exponential(Duration::from_millis(200), 2.0))
                .max_delay(Duration::from_secs(2))
                .jitter(Jitter::Proportional(0.2))
                // An open breaker's remaining time is not waited out: the
                // read fails within seconds, the VM says so (unreachable,
                // status unconfirmed) and asks again on its schedule.
                .max_retry_after(Duration::from_secs(1))
                .build()
                .expect("valid preset"),
            breaker: api_breaker(),
            deadline: Duration::from_secs(120),
            read_deadline: Duration::from_secs(30),
        }
    }
}

/// The breaker of one API group: opens when at least 75 % of the attempts
/// of the last 30 s failed, once there were at least 20 of them; stays open
/// 10 s, doubling on each reopening up to 30 s (so a start waits at most
/// that long after the API is back); one half-open probe.
///
/// A rate, not a run: with half the calls failing the API still answers
/// most reads within their retries (1 − 0.5⁴ ≈ 94 %), so the breaker stays
/// closed and VMs keep being confirmed and started; a run of 5 failures
/// happens every few seconds at that rate and used to open it for 30 s at
/// a time (76 s to alert a stopped VM). A real outage fails nearly every
/// attempt and opens it within seconds.
///
/// # Panics
/// Never: the numbers are valid.
pub fn api_breaker() -> BreakerConfig {
    BreakerConfig::builder()
        .time_window(Duration::from_secs(30), 10)
        .failure_rate_threshold(0.75)
        .minimum_calls(20)
        .open_duration(Duration::from_secs(10))
        .open_duration_growth(2.0, Duration::from_secs(30))
        .build()
        .expect("valid preset")
}

/// The watchdog's retry policy of starts: 5 retries after 1, 2, 4, 8 and
/// 16 s, each ±20 % (proportional jitter); the maximum delay is 20 s so the
/// last sleep's +20 % is not clipped; retry-after capped at 1 min.
///
/// # Panics
/// Never: the numbers are valid.
pub fn start_retry() -> RetryPolicy {
    RetryPolicy::builder()
        .max_retries(5)
        .backoff(Backoff::exponential(Duration::from_secs(1), 2.0))
        .max_delay(Duration::from_secs(20))
        .jitter(Jitter::Proportional(0.2))
        .max_retry_after(Duration::from_secs(60))
        .build()
        .expect("valid preset")
}

/// Why a read is made, which sets its priority in the API pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadReason {
    /// A routine check on the VM's schedule.
    Routine,
    /// The port probe failed: confirm with the API.
    ProbeFailed,
    /// The VM is being recovered (fast polling after a start).
    Recovery,
}

impl ReadReason {
    fn priority(self) -> Priority {
        match self {
            ReadReason::Routine => Priority::Low,
            ReadReason::ProbeFailed => Priority::High,
            ReadReason::Recovery => Priority::Critical,
        }
    }
}

/// A group's two pipelines over its shared breaker.
struct Group {
    reads: Pipeline,
    starts: Pipeline,
}

/// The statuses of a folder's instances by id, or why listing failed.
type Listing = Result<Arc<HashMap<String, Observation>>, CallError>;

struct FolderSnapshot {
    folder: String,
    /// When the last listing started, and what it returned.
    fetched: Option<(Instant, Listing)>,
}

/// Guarded access to the cloud APIs, shared by every VM task.
pub struct Api<R> {
    raw: Arc<R>,
    settings: ApiSettings,
    breakers: BreakerRegistry,
    per_vm: RateLimiter,
    pool: Bulkhead,
    groups: Mutex<HashMap<String, Arc<Group>>>,
    folder: tokio::sync::Mutex<Option<FolderSnapshot>>,
    metrics: Metrics,
}

impl<R> fmt::Debug for Api<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Api")
            .field("settings", &self.settings)
            .field("groups", &self.groups.lock().keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl<R: RawApi> Api<R> {
    /// Guards `raw` with `settings`; API errors are counted in `metrics`;
    /// `hook` hears breakers open and close.
    ///
    /// # Errors
    /// [`keel::ConfigError`] when the settings make an invalid pipeline (a
    /// zero deadline or rate).
    pub fn new(
        raw: R,
        settings: ApiSettings,
        metrics: Metrics,
        hook: Option<BreakerHook>,
    ) -> Result<Self, keel::ConfigError> {
        let per_vm = RateLimiter::keyed(settings.rate)?;
        // Every VM task may wait for a slot at once; the queue only bounds
        // memory if the fleet is larger than any sane configuration.
        let pool = Bulkhead::builder("cloud-api")
            .max_concurrent(settings.workers.max(1))
            .queue(100_000)
            .build()?;
        let breakers = BreakerRegistry::new(settings.breaker.clone());
        if let Some(hook) = &hook {
            let hook = hook.clone();
            breakers.add_listener(move |event: &BreakerEvent<'_>| {
                if let BreakerEvent::StateTransition { breaker, to, .. } = event {
                    match to {
                        State::Open => hook(breaker, true),
                        State::Closed => hook(breaker, false),
                        _ => {}
                    }
                }
            });
        }
        let api = Api {
            raw: Arc::new(raw),
            settings,
            breakers,
            per_vm,
            pool,
            groups: Mutex::new(HashMap::new()),
            folder: tokio::sync::Mutex::new(None),
            metrics,
        };
        // Validate the deadlines now rather than at the first call.
        api.build_group(&CircuitBreaker::new(
            "validate",
            api.settings.breaker.clone(),
        ))?;
        Ok(api)
    }

    /// The breaker group of a VM: the Compute API, or its proxy's host.
    pub fn group_of(vm: &VmSource) -> String {
        match vm {
            VmSource::Instance { .. } => COMPUTE_GROUP.to_owned(),
            VmSource::Proxy { url } => {
                let host = reqwest::Url::parse(url)
                    .ok()
                    .and_then(|u| {
                        u.host_str()
                            .map(|h| format!("{h}:{}", u.port_or_known_default().unwrap_or(0)))
                    })
                    .unwrap_or_else(|| url.clone());
                format!("proxy:{host}")
            }
        }
    }

    fn build_group(&self, breaker: &CircuitBreaker) -> Result<Group, keel::ConfigError> {
        let base = || {
            Pipeline::builder()
                .breaker(breaker.clone())
                .rate_limiter(self.per_vm.clone())
                .bulkhead(self.pool.clone())
        };
        Ok(Group {
            reads: base()
                .retry(self.settings.read_retry.clone())
                .deadline(self.settings.read_deadline)
                .build()?,
            starts: base()
                .retry(self.settings.retry.clone())
                .deadline(self.settings.deadline)
                .priority(Priority::Critical)
                .build()?,
        })
    }

    fn group(&self, group: &str) -> Arc<Group> {
        let mut groups = self.groups.lock();
        if let Some(g) = groups.get(group) {
            return g.clone();
        }
        let built = Arc::new(
            self.build_group(&self.breakers.get(group))
                .expect("the settings were validated by Api::new"),
        );
        groups.insert(group.to_owned(), built.clone());
        built
    }

    /// The policies.
    pub fn settings(&self) -> &ApiSettings {
        &self.settings
    }

    /// Whether any group's breaker is open now.
    pub fn any_breaker_open(&self) -> bool {
        self.breakers
            .breakers()
            .iter()
            .any(|b| b.state() == State::Open)
    }

    /// Whether the breaker of `vm`'s group is open now (the API cannot
    /// confirm its status).
    pub fn group_open(&self, vm: &VmSource) -> bool {
        let group = Self::group_of(vm);
        self.breakers
            .breakers()
            .iter()
            .any(|b| b.name() == group && b.state() == State::Open)
    }

    /// The API groups' breakers (for the admin routes and metrics).
    pub fn breakers(&self) -> &BreakerRegistry {
        &self.breakers
    }

    /// The API worker pool.
    pub fn pool(&self) -> &Bulkhead {
        &self.pool
    }

    /// Forgets per-VM rate-limiter state of VMs that have been idle long
    /// enough (call after VMs are removed).
    pub fn retain_recent(&self) {
        self.per_vm.retain_recent();
    }

    /// Runs `op` through `pipeline`, rate limited under `key`, admitted to
    /// the API pool at `priority`.
    async fn call<T, F, Fut>(
        &self,
        pipeline: &Pipeline,
        key: &str,
        priority: Priority,
        op: F,
    ) -> Result<T, CallError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let metrics = &self.metrics;
        let options = CallOptions::new()
            .key(key)
            .priority(priority)
            .classify(&classify::ByError);
        pipeline
            .call_with(&options, |_attempt| async {
                let result = op().await;
                if let Err(e) = &result {
                    metrics.api_error(e.endpoint());
                    tracing::debug!(error = %e, key, "API attempt failed");
                }
                result
            })
            .await
            .map_err(|e: PipelineError<ApiError>| CallError::from_pipeline(&e))
    }

    /// Reads one VM's status through the group's read pipeline (retries
    /// within the read deadline), at the priority `reason` gives it.
    ///
    /// # Errors
    /// [`CallError`]; `not_found` when the API answered 404.
    pub async fn status(
        &self,
        name: &str,
        vm: &VmSource,
        reason: ReadReason,
    ) -> Result<Observation, CallError> {
        let group = self.group(&Self::group_of(vm));
        let raw = &*self.raw;
        self.call(&group.reads, name, reason.priority(), || raw.get(vm))
            .await
    }

    /// Starts a VM through the group's start pipeline ([`start_retry`]
    /// within the start deadline), ahead of every read.
    ///
    /// # Errors
    /// [`CallError`] after the retries.
    pub async fn start(&self, name: &str, vm: &VmSource) -> Result<StartAck, CallError> {
        let group = self.group(&Self::group_of(vm));
        let raw = &*self.raw;
        self.call(&group.starts, name, Priority::Critical, || raw.start(vm))
            .await
    }

    /// Reads a start operation (a recovery poll: critical, read retries).
    ///
    /// # Errors
    /// [`CallError`].
    pub async fn operation(&self, name: &str, id: &str) -> Result<OperationState, CallError> {
        let group = self.group(COMPUTE_GROUP);
        let raw = &*self.raw;
        self.call(&group.reads, name, Priority::Critical, || raw.operation(id))
            .await
    }

    /// The status of instance `id` from a listing of `folder` that started
    /// no earlier than `fresh_since`: a cached listing when one is fresh
    /// enough, else a new one (one caller lists, the others wait for it).
    /// `Ok(None)` when the folder does not contain the instance.
    ///
    /// # Errors
    /// [`CallError`] of the listing (shared by everyone who waited for it).
    pub async fn folder_status(
        &self,
        folder: &str,
        id: &str,
        fresh_since: Instant,
        reason: ReadReason,
    ) -> Result<Option<Observation>, CallError> {
        let mut snapshot = self.folder.lock().await;
        if snapshot.as_ref().is_none_or(|s| s.folder != folder) {
            *snapshot = Some(FolderSnapshot {
                folder: folder.to_owned(),
                fetched: None,
            });
        }
        let snap = snapshot.as_mut().expect("set above");
        if let Some((started, result)) = &snap.fetched
            && *started >= fresh_since
        {
            return result.clone().map(|all| all.get(id).cloned());
        }
        let started = Instant::now();
        let result = self.list_all(folder, reason.priority()).await.map(Arc::new);
        snap.fetched = Some((started, result.clone()));
        result.map(|all| all.get(id).cloned())
    }

    async fn list_all(
        &self,
        folder: &str,
        priority: Priority,
    ) -> Result<HashMap<String, Observation>, CallError> {
        let raw = &*self.raw;
        let group = self.group(COMPUTE_GROUP);
        let key = format!("folder:{folder}");
        let mut all = HashMap::new();
        let mut token: Option<String> = None;
        let read = async {
            loop {
                let page = self
                    .call(&group.reads, &key, priority, || {
                        raw.list(folder, token.as_deref())
                    })
                    .await?;
                all.extend(page.instances);
                match page.next_page_token {
                    Some(next) if Some(&next) != token.as_ref() => token = Some(next),
                    _ => return Ok::<_, CallError>(()),
                }
            }
        };
        // Each page has the read deadline; the whole listing too.
        let outcome = tokio::time::timeout(self.settings.read_deadline, read).await;
        match outcome {
            Ok(Ok(())) => Ok(all),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(CallError {
                kind: "deadline_exceeded",
                not_found: false,
                message: "instances.list did not finish in time".into(),
            }),
        }
    }
}
