//! Cloud API access for the VM tasks: the raw calls ([`RawApi`], over HTTP
//! in [`HttpApi`]) and the guarded access ([`Api`]) that runs every call
//! through, from the outside in: a deadline, retries (the `watchdog` preset
//! for starts, quick retries for reads), a `keel::Pipeline` per API (circuit
//! breaker → per-VM rate limiter, one limiter shared by reads and starts),
//! and a permit of the API worker pool per attempt. It also shares one
//! paginated `instances.list` per poll among the VMs of a folder.
//!
//! Retries sit outside the pipeline rather than in it only because reads
//! and starts retry differently yet must share one breaker and one per-VM
//! rate limit; the order is the pipeline's own.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use keel::breaker::{BreakerConfig, BreakerEvent, CircuitBreaker, State};
use keel::retry::{Backoff, Jitter, RetryError, RetryPolicy};
use keel::{Pipeline, PipelineError, RateLimit};
use keel_core::classify;
use parking_lot::Mutex;
use tokio::sync::Semaphore;
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
    fn from_retry(e: &RetryError<PipelineError<ApiError>>) -> Self {
        match e.last_error() {
            Some(last) => {
                let mut error = Self::from_pipeline(last);
                if let RetryError::Exhausted { attempts, .. } = e {
                    error.message = format!("{} (after {attempts} attempts)", error.message);
                }
                error
            }
            None => CallError {
                kind: "attempt_timeout",
                not_found: false,
                message: e.to_string(),
            },
        }
    }

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
    /// `API_WORKER_POOL_SIZE`: attempts in flight at most.
    pub workers: usize,
    /// Per-VM rate limit (10 requests/s, burst 5).
    pub rate: RateLimit,
    /// Retry policy of starts (the `watchdog` preset: 1, 2, 4, 8, 16 s
    /// ±20 %).
    pub retry: RetryPolicy,
    /// Retry policy of status and operation reads: 3 retries after 0.2,
    /// 0.4 and 0.8 s (±20 %). Reads repeat on their own schedule anyway; a
    /// quick retry keeps one lost answer from adding a second to the
    /// reaction time.
    pub read_retry: RetryPolicy,
    /// The breaker of each group (5 consecutive failures open it for 30 s).
    pub breaker: BreakerConfig,
    /// Overall deadline of one start, retries included (the `watchdog`
    /// preset sleeps 31 s ±20 % in all).
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
            retry: RetryPolicy::watchdog(),
            read_retry: RetryPolicy::builder()
                .max_retries(3)
                .backoff(Backoff::exponential(Duration::from_millis(200), 2.0))
                .max_delay(Duration::from_secs(2))
                .jitter(Jitter::Proportional(0.2))
                .build()
                .expect("valid preset"),
            breaker: BreakerConfig::consecutive(5, Duration::from_secs(30), 1)
                .no_bulkhead()
                .build()
                .expect("valid preset"),
            deadline: Duration::from_secs(120),
            read_deadline: Duration::from_secs(30),
        }
    }
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
    pool: Arc<Semaphore>,
    settings: ApiSettings,
    groups: Mutex<HashMap<String, Arc<Pipeline>>>,
    folder: tokio::sync::Mutex<Option<FolderSnapshot>>,
    metrics: Metrics,
    hook: Option<BreakerHook>,
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
        build_pipeline(
            &settings,
            CircuitBreaker::new("validate", settings.breaker.clone()),
        )?;
        Ok(Api {
            raw: Arc::new(raw),
            pool: Arc::new(Semaphore::new(settings.workers.max(1))),
            settings,
            groups: Mutex::new(HashMap::new()),
            folder: tokio::sync::Mutex::new(None),
            metrics,
            hook,
        })
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

    fn pipeline(&self, group: &str) -> Arc<Pipeline> {
        let mut groups = self.groups.lock();
        if let Some(p) = groups.get(group) {
            return p.clone();
        }
        let mut config = self.settings.breaker.to_builder();
        if let Some(hook) = &self.hook {
            let hook = hook.clone();
            config = config.listener(move |event: &BreakerEvent<'_>| {
                if let BreakerEvent::StateTransition { breaker, to, .. } = event {
                    match to {
                        State::Open => hook(breaker, true),
                        State::Closed => hook(breaker, false),
                        _ => {}
                    }
                }
            });
        }
        let breaker_config = config
            .build()
            .unwrap_or_else(|_| self.settings.breaker.clone());
        let pipeline = Arc::new(
            build_pipeline(&self.settings, CircuitBreaker::new(group, breaker_config))
                .expect("the settings were validated by Api::new"),
        );
        groups.insert(group.to_owned(), pipeline.clone());
        pipeline
    }

    /// The policies.
    pub fn settings(&self) -> &ApiSettings {
        &self.settings
    }

    /// Whether any group's breaker is open now.
    pub fn any_breaker_open(&self) -> bool {
        self.groups
            .lock()
            .values()
            .any(|p| p.breaker().is_some_and(|b| b.state() == State::Open))
    }

    /// Forgets per-VM rate-limiter state of VMs that have been idle long
    /// enough (call after VMs are removed).
    pub fn retain_recent(&self) {
        for p in self.groups.lock().values() {
            p.retain_recent();
        }
    }

    /// Runs `op` with `policy`'s retries around the group's pipeline
    /// (breaker → per-key rate limit), one worker-pool permit per attempt.
    async fn call<T, F, Fut>(
        &self,
        group: &str,
        key: &str,
        policy: &RetryPolicy,
        op: F,
    ) -> Result<T, CallError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let pipeline = self.pipeline(group);
        let pipeline = &*pipeline;
        let pool = &self.pool;
        let metrics = &self.metrics;
        let op = &op;
        policy
            .retry_classified(&classify::ByError, move |_retry| {
                pipeline.call_keyed_classified(
                    key,
                    &classify::ByError,
                    move |_attempt| async move {
                        // A permit per attempt, not per call: a VM waiting out a
                        // backoff holds no worker.
                        let _permit = pool.acquire().await.ok();
                        let result = op().await;
                        if let Err(e) = &result {
                            metrics.api_error(e.endpoint());
                            tracing::debug!(error = %e, key, "API attempt failed");
                        }
                        result
                    },
                )
            })
            .await
            .map_err(|e| CallError::from_retry(&e))
    }

    /// Reads one VM's status through the pipeline, within the read
    /// deadline.
    ///
    /// # Errors
    /// [`CallError`]; `not_found` when the API answered 404.
    pub async fn status(&self, name: &str, vm: &VmSource) -> Result<Observation, CallError> {
        let group = Self::group_of(vm);
        let raw = &*self.raw;
        let read = self.call(&group, name, &self.settings.read_retry, || raw.get(vm));
        match tokio::time::timeout(self.settings.read_deadline, read).await {
            Ok(result) => result,
            Err(_) => Err(CallError {
                kind: "deadline_exceeded",
                not_found: false,
                message: format!(
                    "status read did not finish within {:?}",
                    self.settings.read_deadline
                ),
            }),
        }
    }

    /// Starts a VM through the pipeline (the full `watchdog` retry policy).
    ///
    /// # Errors
    /// [`CallError`] after the retries.
    pub async fn start(&self, name: &str, vm: &VmSource) -> Result<StartAck, CallError> {
        let group = Self::group_of(vm);
        let raw = &*self.raw;
        let start = self.call(&group, name, &self.settings.retry, || raw.start(vm));
        match tokio::time::timeout(self.settings.deadline, start).await {
            Ok(result) => result,
            Err(_) => Err(CallError {
                kind: "deadline_exceeded",
                not_found: false,
                message: format!("start did not finish within {:?}", self.settings.deadline),
            }),
        }
    }

    /// Reads a start operation (one read, within the read deadline).
    ///
    /// # Errors
    /// [`CallError`].
    pub async fn operation(&self, name: &str, id: &str) -> Result<OperationState, CallError> {
        let raw = &*self.raw;
        let read = self.call(COMPUTE_GROUP, name, &self.settings.read_retry, || {
            raw.operation(id)
        });
        match tokio::time::timeout(self.settings.read_deadline, read).await {
            Ok(result) => result,
            Err(_) => Err(CallError {
                kind: "deadline_exceeded",
                not_found: false,
                message: "operation read timed out".into(),
            }),
        }
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
        let result = self.list_all(folder).await.map(Arc::new);
        snap.fetched = Some((started, result.clone()));
        result.map(|all| all.get(id).cloned())
    }

    async fn list_all(&self, folder: &str) -> Result<HashMap<String, Observation>, CallError> {
        let raw = &*self.raw;
        let key = format!("folder:{folder}");
        let mut all = HashMap::new();
        let mut token: Option<String> = None;
        let read = async {
            loop {
                let page = self
                    .call(COMPUTE_GROUP, &key, &self.settings.read_retry, || {
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

fn build_pipeline(
    settings: &ApiSettings,
    breaker: CircuitBreaker,
) -> Result<Pipeline, keel::ConfigError> {
    Pipeline::builder()
        .breaker(breaker)
        .keyed_rate_limit(settings.rate)
        .build()
}
