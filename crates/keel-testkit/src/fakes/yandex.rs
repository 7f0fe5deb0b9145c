//! Fakes of the Yandex Cloud Compute API (instances and operations), the
//! IAM token exchange, the VM metadata token service, and the original
//! watchdog bot's simple proxy API, speaking their wire formats
//! (`reference/wire-formats.md`) over real loopback sockets.
//!
//! [`FakeYandex`] serves, on one server (point every base URL at
//! [`FakeYandex::base_url`]):
//!
//! * `GET /compute/v1/instances/{id}`: the instance JSON (`id`, `folderId`,
//!   `name`, `zoneId`, `status`, `networkInterfaces[].primaryV4Address
//!   {address, oneToOneNat.address}`, `resources` with 64-bit integers as
//!   strings...), or 404 `{"code": 5, "message": ...}` for an unknown id.
//! * `GET /compute/v1/instances?folderId=..&pageSize=..&pageToken=..`: the
//!   folder's instances sorted by id, paginated (`nextPageToken` while more
//!   remain; `pageSize` 1..=1000, default 50, else 400 code 3).
//! * `POST /compute/v1/instances/{id}:start`: an Operation (`done: false`);
//!   the instance then walks `STOPPED → PROVISIONING → STARTING → RUNNING`
//!   with the configured [`StepDelays`] (tokio's clock, so paused time
//!   drives it) and the operation completes with the instance as its
//!   `response` (or, when the instance is stopped or crashed meanwhile,
//!   with an error, code 10 ABORTED). Starting an instance that is not `STOPPED`, `CRASHED` or
//!   `ERROR` answers 409 `{"code": 9, "message": "... RUNNING ..."}`
//!   (FAILED_PRECONDITION).
//! * `GET /operations/{id}`: the operation, or 404.
//! * `POST /iam/v1/tokens` with `{"yandexPassportOauthToken": ...}`:
//!   `{"iamToken", "expiresAt"}` (401 for another OAuth token).
//! * `GET /computeMetadata/v1/instance/service-accounts/default/token` with
//!   `Metadata-Flavor: Google`: `{"access_token", "expires_in", "token_type"}`.
//! * With [`FakeYandexBuilder::require_iam`], compute and operation calls
//!   without `Authorization: Bearer <a token the fake issued>` get 401
//!   `{"code": 16, ...}`.
//! * Controls: [`FakeYandex::stop_vm`], [`FakeYandex::set_status`],
//!   [`FakeYandex::delete_vm`], [`FakeYandex::fail_next_start`], and the
//!   generic faults of [`FakeServer`] (errors rendered as `{"code": 14,
//!   "message"}`, 429 as code 8 with `Retry-After`).
//!
//! [`FakeProxy`] serves any number of VMs of the original bot's proxy API,
//! one per path prefix (`{base}/{name}`): `GET {base}/{name}/info` →
//! `{"status": "Running", "networkInterfaces": [...]}` and `POST
//! {base}/{name}/start` → 200 `{"status": "starting"}` or 409 `{"code": 9,
//! "message": "RUNNING", "ip": ...}` when it is already running.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! use std::time::Duration;
//! use keel_testkit::fakes::yandex::{FakeYandex, StepDelays};
//!
//! let yc = FakeYandex::builder()
//!     .steps(StepDelays::uniform(Duration::from_secs(1)))
//!     .start()
//!     .await;
//! yc.add_instance("i-1", "web-1", "b1g-folder", "RUNNING");
//! yc.stop_vm("i-1");
//! let client = reqwest::Client::new();
//! let op: serde_json::Value = client
//!     .post(format!("{}/compute/v1/instances/i-1:start", yc.base_url()))
//!     .send()
//!     .await
//!     .unwrap()
//!     .json()
//!     .await
//!     .unwrap();
//! assert_eq!(op["done"], false);
//! assert_eq!(yc.status("i-1").as_deref(), Some("PROVISIONING"));
//! tokio::time::sleep(Duration::from_secs(3)).await;
//! assert_eq!(yc.status("i-1").as_deref(), Some("RUNNING"));
//! assert_eq!(yc.start_requests("i-1"), 1);
//! # }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::{FakeServer, FaultConfig, FaultRenderer, RecordedRequest, retry_after_secs};

/// Every instance status the Compute API reports.
pub const STATUSES: [&str; 11] = [
    "STATUS_UNSPECIFIED",
    "PROVISIONING",
    "RUNNING",
    "STOPPING",
    "STOPPED",
    "STARTING",
    "RESTARTING",
    "UPDATING",
    "ERROR",
    "CRASHED",
    "DELETING",
];

/// The largest `pageSize` the list call accepts.
pub const MAX_PAGE_SIZE: usize = 1_000;
/// The `pageSize` when the request gives none.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// The OAuth token [`FakeYandex`] exchanges for IAM tokens unless told
/// otherwise.
pub const DEFAULT_OAUTH_TOKEN: &str = "y0_fake-oauth-token";
/// The token the fake metadata service hands out.
pub const METADATA_TOKEN: &str = "t1.fake-metadata-token";

/// How long each step of a start takes: `STOPPED → PROVISIONING` happens at
/// once when `:start` is accepted, then `provisioning` later `STARTING`,
/// then `starting` later `RUNNING` (and the operation completes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepDelays {
    /// Time spent in `PROVISIONING`.
    pub provisioning: Duration,
    /// Time spent in `STARTING`.
    pub starting: Duration,
}

impl StepDelays {
    /// Both steps take `step`.
    pub const fn uniform(step: Duration) -> Self {
        StepDelays {
            provisioning: step,
            starting: step,
        }
    }

    /// Both steps are instant: `:start` leaves the instance `RUNNING`.
    pub const fn instant() -> Self {
        Self::uniform(Duration::ZERO)
    }
}

impl Default for StepDelays {
    /// 2 s each.
    fn default() -> Self {
        Self::uniform(Duration::from_secs(2))
    }
}

/// Renders injected faults as the Compute API does: `{"code": <gRPC code>,
/// "message": ...}` (14 UNAVAILABLE for a 5xx, 8 RESOURCE_EXHAUSTED with a
/// `Retry-After` header for a 429).
#[derive(Debug, Clone, Copy, Default)]
pub struct YandexRenderer;

impl FaultRenderer for YandexRenderer {
    fn error(&self, status: StatusCode, _request: &RecordedRequest) -> Response {
        grpc_error(status, 14, "injected fault: service unavailable")
    }

    fn rate_limited(&self, retry_after: Duration, _request: &RecordedRequest) -> Response {
        let secs = retry_after_secs(retry_after);
        let mut response = grpc_error(
            StatusCode::TOO_MANY_REQUESTS,
            8,
            &format!("injected fault: quota exceeded, retry after {secs} s"),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        response
    }
}

fn grpc_error(status: StatusCode, code: u32, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "code": code, "message": message })),
    )
        .into_response()
}

fn rfc3339_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
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
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

#[derive(Debug, Clone)]
struct Instance {
    id: String,
    name: String,
    folder_id: String,
    status: String,
    internal_ip: String,
    nat_ip: Option<String>,
    created_at: String,
    /// Bumped by every external change, so a start's scheduled steps stop
    /// when someone stops, crashes or deletes the instance meanwhile.
    generation: u64,
    /// Make the next start's operation fail with this (code, message).
    fail_next_start: Option<(u32, String)>,
}

impl Instance {
    fn to_json(&self) -> Value {
        let mut primary = json!({ "address": self.internal_ip });
        if let Some(nat) = &self.nat_ip {
            primary["oneToOneNat"] = json!({ "address": nat, "ipVersion": "IPV4" });
        }
        json!({
            "id": self.id,
            "folderId": self.folder_id,
            "createdAt": self.created_at,
            "name": self.name,
            "labels": {},
            "zoneId": "ru-central1-a",
            "platformId": "standard-v3",
            "resources": { "memory": "2147483648", "cores": "2", "coreFraction": "100" },
            "status": self.status,
            "bootDisk": { "mode": "READ_WRITE", "deviceName": "boot", "autoDelete": true, "diskId": format!("disk-{}", self.id) },
            "networkInterfaces": [{
                "index": "0",
                "macAddress": "d0:0d:00:00:00:01",
                "subnetId": "subnet-fake",
                "primaryV4Address": primary,
            }],
            "fqdn": format!("{}.ru-central1.internal", self.name),
            "schedulingPolicy": { "preemptible": false },
        })
    }
}

#[derive(Debug, Clone)]
struct Operation {
    id: String,
    instance_id: String,
    created_at: String,
    modified_at: String,
    done: bool,
    error: Option<(u32, String)>,
    response: Option<Value>,
}

impl Operation {
    fn to_json(&self) -> Value {
        let mut op = json!({
            "id": self.id,
            "description": "Start instance",
            "createdAt": self.created_at,
            "createdBy": "fake-service-account",
            "modifiedAt": self.modified_at,
            "done": self.done,
            "metadata": {
                "@type": "type.googleapis.com/yandex.cloud.compute.v1.StartInstanceMetadata",
                "instanceId": self.instance_id,
            },
        });
        if let Some((code, message)) = &self.error {
            op["error"] = json!({ "code": code, "message": message, "details": [] });
        }
        if let Some(response) = &self.response {
            let mut response = response.clone();
            response["@type"] = json!("type.googleapis.com/yandex.cloud.compute.v1.Instance");
            op["response"] = response;
        }
        op
    }
}

#[derive(Debug)]
struct Inner {
    instances: BTreeMap<String, Instance>,
    operations: HashMap<String, Operation>,
    steps: StepDelays,
    next_op: u64,
    next_token: u64,
    oauth_token: String,
    issued: Vec<String>,
    require_iam: bool,
    token_ttl: Duration,
}

/// The fake's shared state; [`yandex_app`] serves it.
#[derive(Debug, Clone)]
pub struct YandexState {
    inner: Arc<Mutex<Inner>>,
}

impl YandexState {
    fn new(steps: StepDelays, oauth_token: String, require_iam: bool, token_ttl: Duration) -> Self {
        YandexState {
            inner: Arc::new(Mutex::new(Inner {
                instances: BTreeMap::new(),
                operations: HashMap::new(),
                steps,
                next_op: 1,
                next_token: 1,
                oauth_token,
                issued: Vec::new(),
                require_iam,
                token_ttl,
            })),
        }
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let inner = self.inner.lock();
        if !inner.require_iam {
            return true;
        }
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        token.is_some_and(|t| t == METADATA_TOKEN || inner.issued.iter().any(|i| i == t))
    }

    /// Walks a started instance through its steps unless something else
    /// changes it meanwhile (its generation moves on).
    fn schedule_start(&self, id: String, op_id: String, generation: u64) {
        let state = self.clone();
        let steps = self.inner.lock().steps;
        let step = move |from: &'static str, to: &'static str| {
            let mut inner = state.inner.lock();
            let Some(instance) = inner.instances.get_mut(&id) else {
                return false;
            };
            if instance.generation != generation || instance.status != from {
                // Someone stopped, crashed or restarted it meanwhile: the
                // operation ends with an error, as an aborted start does.
                let status = instance.status.clone();
                if let Some(op) = inner.operations.get_mut(&op_id) {
                    op.done = true;
                    op.modified_at = rfc3339_now();
                    op.error = Some((10, format!("start interrupted: instance is {status}")));
                }
                return false;
            }
            instance.status = to.to_owned();
            if to == "RUNNING" {
                let response = instance.to_json();
                if let Some(op) = inner.operations.get_mut(&op_id) {
                    op.done = true;
                    op.modified_at = rfc3339_now();
                    op.response = Some(response);
                }
            }
            true
        };
        tokio::spawn(async move {
            if !steps.provisioning.is_zero() {
                tokio::time::sleep(steps.provisioning).await;
            }
            if !step("PROVISIONING", "STARTING") {
                return;
            }
            if !steps.starting.is_zero() {
                tokio::time::sleep(steps.starting).await;
            }
            step("STARTING", "RUNNING");
        });
    }
}

/// Options for [`FakeYandex`].
#[must_use]
#[derive(Debug)]
pub struct FakeYandexBuilder {
    seed: Option<u64>,
    faults: FaultConfig,
    steps: StepDelays,
    oauth_token: String,
    require_iam: bool,
    token_ttl: Duration,
}

impl FakeYandexBuilder {
    /// Seeds the fault RNG.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Starts with these probabilistic faults.
    pub fn faults(mut self, faults: FaultConfig) -> Self {
        self.faults = faults;
        self
    }

    /// How long each step of a start takes.
    pub fn steps(mut self, steps: StepDelays) -> Self {
        self.steps = steps;
        self
    }

    /// The OAuth token the IAM exchange accepts (default
    /// [`DEFAULT_OAUTH_TOKEN`]).
    pub fn oauth_token(mut self, token: impl Into<String>) -> Self {
        self.oauth_token = token.into();
        self
    }

    /// Compute and operation calls need `Authorization: Bearer <token>`
    /// with a token the fake issued (IAM exchange or metadata service).
    pub fn require_iam(mut self, require: bool) -> Self {
        self.require_iam = require;
        self
    }

    /// The lifetime the IAM exchange reports in `expiresAt` (default 12 h).
    pub fn token_ttl(mut self, ttl: Duration) -> Self {
        self.token_ttl = ttl;
        self
    }

    /// Starts the fake on a free loopback port.
    ///
    /// # Panics
    /// When the server cannot start or the faults are invalid.
    pub async fn start(self) -> FakeYandex {
        let state = YandexState::new(
            self.steps,
            self.oauth_token,
            self.require_iam,
            self.token_ttl,
        );
        let mut builder = FakeServer::builder()
            .faults(self.faults)
            .renderer(YandexRenderer);
        if let Some(seed) = self.seed {
            builder = builder.seed(seed);
        }
        let server = builder.start(yandex_app(state.clone())).await;
        FakeYandex { server, state }
    }
}

/// A running fake of the Compute, Operation, IAM and metadata APIs.
/// Dropping it stops the server.
#[derive(Debug)]
pub struct FakeYandex {
    server: FakeServer,
    state: YandexState,
}

impl FakeYandex {
    /// Default options: no faults, 2 s steps, IAM not required.
    pub fn builder() -> FakeYandexBuilder {
        FakeYandexBuilder {
            seed: None,
            faults: FaultConfig::none(),
            steps: StepDelays::default(),
            oauth_token: DEFAULT_OAUTH_TOKEN.to_owned(),
            require_iam: false,
            token_ttl: Duration::from_secs(12 * 3_600),
        }
    }

    /// Starts a fake with the default options.
    pub async fn start() -> Self {
        Self::builder().start().await
    }

    /// `http://127.0.0.1:{port}`: the base of every API this fake serves.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// The underlying server: faults, recorded requests.
    pub fn server(&self) -> &FakeServer {
        &self.server
    }

    /// The shared state, for [`yandex_app`] in `oneshot` tests.
    pub fn state(&self) -> &YandexState {
        &self.state
    }

    /// Adds (or replaces) an instance with a generated internal address and
    /// no NAT address.
    ///
    /// # Panics
    /// When `status` is not one of [`STATUSES`].
    pub fn add_instance(&self, id: &str, name: &str, folder_id: &str, status: &str) {
        assert!(STATUSES.contains(&status), "unknown status {status}");
        let mut inner = self.state.inner.lock();
        let n = inner.instances.len() + 2;
        inner.instances.insert(
            id.to_owned(),
            Instance {
                id: id.to_owned(),
                name: name.to_owned(),
                folder_id: folder_id.to_owned(),
                status: status.to_owned(),
                internal_ip: format!("10.{}.{}.{}", n >> 16 & 0xff, n >> 8 & 0xff, n & 0xff),
                nat_ip: None,
                created_at: rfc3339_now(),
                generation: 0,
                fail_next_start: None,
            },
        );
    }

    /// Sets the instance's public (one-to-one NAT) address.
    pub fn set_nat_ip(&self, id: &str, ip: Option<&str>) {
        if let Some(i) = self.state.inner.lock().instances.get_mut(id) {
            i.nat_ip = ip.map(str::to_owned);
        }
    }

    /// The instance's status, `None` when it does not exist.
    pub fn status(&self, id: &str) -> Option<String> {
        self.state
            .inner
            .lock()
            .instances
            .get(id)
            .map(|i| i.status.clone())
    }

    /// Sets the status at once (cancelling a start in progress).
    ///
    /// # Panics
    /// When `status` is not one of [`STATUSES`].
    pub fn set_status(&self, id: &str, status: &str) {
        assert!(STATUSES.contains(&status), "unknown status {status}");
        if let Some(i) = self.state.inner.lock().instances.get_mut(id) {
            i.status = status.to_owned();
            i.generation += 1;
        }
    }

    /// The instance stops (as a preemptible VM does): `STOPPED` at once.
    pub fn stop_vm(&self, id: &str) {
        self.set_status(id, "STOPPED");
    }

    /// Removes the instance: every call about it answers 404 from now on.
    pub fn delete_vm(&self, id: &str) {
        self.state.inner.lock().instances.remove(id);
    }

    /// The next start of `id` is accepted, but its operation ends with this
    /// error and the instance goes back to `STOPPED`.
    pub fn fail_next_start(&self, id: &str, code: u32, message: &str) {
        if let Some(i) = self.state.inner.lock().instances.get_mut(id) {
            i.fail_next_start = Some((code, message.to_owned()));
        }
    }

    /// Changes the step delays of later starts.
    pub fn set_steps(&self, steps: StepDelays) {
        self.state.inner.lock().steps = steps;
    }

    /// How many `:start` requests for `id` arrived (faulted ones included).
    pub fn start_requests(&self, id: &str) -> usize {
        self.server
            .requests_to(Method::POST, &format!("/compute/v1/instances/{id}:start"))
            .len()
    }

    /// How many IAM token exchanges arrived.
    pub fn iam_requests(&self) -> usize {
        self.server
            .requests_to(Method::POST, "/iam/v1/tokens")
            .len()
    }

    /// The IAM tokens issued so far, oldest first.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.state.inner.lock().issued.clone()
    }

    /// Every operation as JSON, in no particular order.
    pub fn operations(&self) -> Vec<Value> {
        self.state
            .inner
            .lock()
            .operations
            .values()
            .map(Operation::to_json)
            .collect()
    }
}

/// The router of [`FakeYandex`].
pub fn yandex_app(state: YandexState) -> Router {
    Router::new()
        .route("/compute/v1/instances", get(list_instances))
        .route("/compute/v1/instances/{id}", any(instance))
        .route("/operations/{id}", get(get_operation))
        .route("/iam/v1/tokens", post(exchange_token))
        .route(
            "/computeMetadata/v1/instance/service-accounts/default/token",
            get(metadata_token),
        )
        .with_state(state)
}

fn unauthenticated() -> Response {
    grpc_error(
        StatusCode::UNAUTHORIZED,
        16,
        "The token is invalid or expired",
    )
}

async fn list_instances(
    State(state): State<YandexState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if !state.authorized(&headers) {
        return unauthenticated();
    }
    let Some(folder) = query.get("folderId").filter(|f| !f.is_empty()) else {
        return grpc_error(StatusCode::BAD_REQUEST, 3, "folder_id: Field required");
    };
    let page_size = match query.get("pageSize").map(|p| p.parse::<usize>()) {
        None => DEFAULT_PAGE_SIZE,
        Some(Ok(n)) if (1..=MAX_PAGE_SIZE).contains(&n) => n,
        Some(_) => {
            return grpc_error(
                StatusCode::BAD_REQUEST,
                3,
                "page_size: Value must be in range 1..1000",
            );
        }
    };
    let start = match query.get("pageToken").filter(|t| !t.is_empty()) {
        None => 0,
        Some(t) => match t
            .strip_prefix("page-")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) => n,
            None => return grpc_error(StatusCode::BAD_REQUEST, 3, "page_token: invalid"),
        },
    };
    let inner = state.inner.lock();
    let folder_instances: Vec<&Instance> = inner
        .instances
        .values()
        .filter(|i| &i.folder_id == folder)
        .collect();
    let page: Vec<Value> = folder_instances
        .iter()
        .skip(start)
        .take(page_size)
        .map(|i| i.to_json())
        .collect();
    let mut body = json!({ "instances": page });
    if start + page_size < folder_instances.len() {
        body["nextPageToken"] = json!(format!("page-{}", start + page_size));
    }
    axum::Json(body).into_response()
}

async fn instance(
    State(state): State<YandexState>,
    Path(id): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    if !state.authorized(&headers) {
        return unauthenticated();
    }
    let (id, action) = match id.split_once(':') {
        Some((id, action)) => (id.to_owned(), Some(action.to_owned())),
        None => (id, None),
    };
    match (method, action.as_deref()) {
        (Method::GET, None) => {
            let inner = state.inner.lock();
            match inner.instances.get(&id) {
                Some(i) => axum::Json(i.to_json()).into_response(),
                None => not_found(&id),
            }
        }
        (Method::POST, Some("start")) => start_instance(&state, &id),
        _ => grpc_error(StatusCode::NOT_IMPLEMENTED, 12, "Method not implemented"),
    }
}

fn not_found(id: &str) -> Response {
    grpc_error(
        StatusCode::NOT_FOUND,
        5,
        &format!("Instance {id} not found"),
    )
}

fn start_instance(state: &YandexState, id: &str) -> Response {
    let mut inner = state.inner.lock();
    let op_id = format!("fhm-op-{:06}", inner.next_op);
    let Some(instance) = inner.instances.get_mut(id) else {
        return not_found(id);
    };
    if !matches!(instance.status.as_str(), "STOPPED" | "CRASHED" | "ERROR") {
        return grpc_error(
            StatusCode::CONFLICT,
            9,
            &format!(
                "Instance is in wrong state: {}; expected STOPPED",
                instance.status
            ),
        );
    }
    let now = rfc3339_now();
    let failure = instance.fail_next_start.take();
    instance.generation += 1;
    let generation = instance.generation;
    let mut op = Operation {
        id: op_id.clone(),
        instance_id: id.to_owned(),
        created_at: now.clone(),
        modified_at: now,
        done: false,
        error: None,
        response: None,
    };
    let schedule = if let Some(error) = failure {
        instance.status = "STOPPED".to_owned();
        op.done = true;
        op.error = Some(error);
        false
    } else if inner.steps == StepDelays::instant() {
        let instance = inner.instances.get_mut(id).expect("present above");
        instance.status = "RUNNING".to_owned();
        op.done = true;
        op.response = Some(instance.to_json());
        false
    } else {
        inner.instances.get_mut(id).expect("present above").status = "PROVISIONING".to_owned();
        true
    };
    let body = op.to_json();
    inner.next_op += 1;
    inner.operations.insert(op_id.clone(), op);
    drop(inner);
    if schedule {
        state.schedule_start(id.to_owned(), op_id, generation);
    }
    axum::Json(body).into_response()
}

async fn get_operation(
    State(state): State<YandexState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !state.authorized(&headers) {
        return unauthenticated();
    }
    match state.inner.lock().operations.get(&id) {
        Some(op) => axum::Json(op.to_json()).into_response(),
        None => grpc_error(
            StatusCode::NOT_FOUND,
            5,
            &format!("Operation {id} not found"),
        ),
    }
}

async fn exchange_token(State(state): State<YandexState>, body: Bytes) -> Response {
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return grpc_error(StatusCode::BAD_REQUEST, 3, "invalid JSON body");
    };
    let Some(oauth) = request
        .get("yandexPassportOauthToken")
        .and_then(Value::as_str)
    else {
        return grpc_error(
            StatusCode::BAD_REQUEST,
            3,
            "yandex_passport_oauth_token: Field required",
        );
    };
    let mut inner = state.inner.lock();
    if oauth != inner.oauth_token {
        return grpc_error(
            StatusCode::UNAUTHORIZED,
            16,
            "OAuth token is invalid or expired",
        );
    }
    let token = format!("t1.fake-iam-{:04}", inner.next_token);
    inner.next_token += 1;
    inner.issued.push(token.clone());
    let expires = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + inner.token_ttl.as_secs();
    axum::Json(json!({ "iamToken": token, "expiresAt": rfc3339(expires) })).into_response()
}

async fn metadata_token(headers: HeaderMap) -> Response {
    if headers.get("metadata-flavor").and_then(|v| v.to_str().ok()) != Some("Google") {
        return (
            StatusCode::FORBIDDEN,
            "Missing required header: Metadata-Flavor: Google",
        )
            .into_response();
    }
    axum::Json(json!({
        "access_token": METADATA_TOKEN,
        "expires_in": 43_199,
        "token_type": "Bearer",
    }))
    .into_response()
}

// ---------------------------------------------------------------------------
// The proxy API of the original bot.

#[derive(Debug, Clone)]
struct ProxyVm {
    status: String,
    ip: String,
    generation: u64,
}

#[derive(Debug)]
struct ProxyInner {
    vms: BTreeMap<String, ProxyVm>,
    steps: StepDelays,
}

/// The state of [`FakeProxy`]; [`proxy_app`] serves it.
#[derive(Debug, Clone)]
pub struct ProxyState {
    inner: Arc<Mutex<ProxyInner>>,
}

/// A running fake of the original bot's proxy API, one VM per path prefix.
/// Statuses are spelled as that API spells them (`Running`, `Stopped`...).
#[derive(Debug)]
pub struct FakeProxy {
    server: FakeServer,
    state: ProxyState,
}

impl FakeProxy {
    /// Starts a fake with 2 s steps and no faults.
    pub async fn start() -> Self {
        Self::start_with(StepDelays::default(), FaultConfig::none()).await
    }

    /// Starts a fake with these step delays and faults.
    ///
    /// # Panics
    /// When the server cannot start or the faults are invalid.
    pub async fn start_with(steps: StepDelays, faults: FaultConfig) -> Self {
        let state = ProxyState {
            inner: Arc::new(Mutex::new(ProxyInner {
                vms: BTreeMap::new(),
                steps,
            })),
        };
        let server = FakeServer::builder()
            .faults(faults)
            .renderer(YandexRenderer)
            .start(proxy_app(state.clone()))
            .await;
        FakeProxy { server, state }
    }

    /// The base URL of VM `name`: `http://127.0.0.1:{port}/{name}`.
    pub fn url_for(&self, name: &str) -> String {
        self.server.url(&format!("/{name}"))
    }

    /// The underlying server: faults, recorded requests.
    pub fn server(&self) -> &FakeServer {
        &self.server
    }

    /// Adds (or replaces) VM `name` with this status (`Running`...) and
    /// address.
    pub fn add_vm(&self, name: &str, status: &str, ip: &str) {
        self.state.inner.lock().vms.insert(
            name.to_owned(),
            ProxyVm {
                status: status.to_owned(),
                ip: ip.to_owned(),
                generation: 0,
            },
        );
    }

    /// Sets the status at once (cancelling a start in progress).
    pub fn set_status(&self, name: &str, status: &str) {
        if let Some(vm) = self.state.inner.lock().vms.get_mut(name) {
            vm.status = status.to_owned();
            vm.generation += 1;
        }
    }

    /// The VM's status, `None` when unknown.
    pub fn status(&self, name: &str) -> Option<String> {
        self.state
            .inner
            .lock()
            .vms
            .get(name)
            .map(|v| v.status.clone())
    }

    /// How many `POST /{name}/start` requests arrived.
    pub fn start_requests(&self, name: &str) -> usize {
        self.server
            .requests_to(Method::POST, &format!("/{name}/start"))
            .len()
    }
}

/// The router of [`FakeProxy`].
pub fn proxy_app(state: ProxyState) -> Router {
    Router::new()
        .route("/{name}/info", get(proxy_info))
        .route("/{name}/start", post(proxy_start))
        .with_state(state)
}

async fn proxy_info(State(state): State<ProxyState>, Path(name): Path<String>) -> Response {
    let inner = state.inner.lock();
    match inner.vms.get(&name) {
        Some(vm) => axum::Json(json!({
            "status": vm.status,
            "networkInterfaces": [{
                "primaryV4Address": {
                    "address": "10.0.0.1",
                    "oneToOneNat": { "address": vm.ip },
                },
            }],
        }))
        .into_response(),
        None => grpc_error(StatusCode::NOT_FOUND, 5, "VM not found"),
    }
}

async fn proxy_start(State(state): State<ProxyState>, Path(name): Path<String>) -> Response {
    let mut inner = state.inner.lock();
    let steps = inner.steps;
    let Some(vm) = inner.vms.get_mut(&name) else {
        return grpc_error(StatusCode::NOT_FOUND, 5, "VM not found");
    };
    if !matches!(vm.status.as_str(), "Stopped" | "Crashed" | "Error") {
        let body = json!({ "code": 9, "message": vm.status.to_uppercase(), "ip": vm.ip });
        return (StatusCode::CONFLICT, axum::Json(body)).into_response();
    }
    vm.generation += 1;
    let generation = vm.generation;
    if steps == StepDelays::instant() {
        vm.status = "Running".to_owned();
    } else {
        vm.status = "Provisioning".to_owned();
        let state = state.clone();
        let step = move |from: &str, to: &str| {
            let mut inner = state.inner.lock();
            match inner.vms.get_mut(&name) {
                Some(vm) if vm.generation == generation && vm.status == from => {
                    vm.status = to.to_owned();
                    true
                }
                _ => false,
            }
        };
        tokio::spawn(async move {
            tokio::time::sleep(steps.provisioning).await;
            if step("Provisioning", "Starting") {
                tokio::time::sleep(steps.starting).await;
                step("Starting", "Running");
            }
        });
    }
    axum::Json(json!({ "status": "starting" })).into_response()
}

/// A TCP port on 127.0.0.1 standing in for a VM's SSH port: connects succeed
/// while it is [open](Self::open) and are refused while it is
/// [closed](Self::close), and the port number stays this port's throughout.
///
/// Closing a plain listener and binding its port again later races with
/// every other socket on the machine (anything may take the freed number in
/// between). Here the port is never released: before the listener is
/// dropped, a second socket bound to the same address with `SO_REUSEPORT`
/// (but not listening, so connects to it are refused) keeps it reserved, and
/// opening again turns that socket into the listener. Connections are never
/// accepted: the kernel completes handshakes into the backlog (1,024 per
/// opening), which is all a TCP probe needs for a test's lifetime.
#[derive(Debug)]
pub struct SshPort {
    addr: std::net::SocketAddr,
    listener: Option<tokio::net::TcpListener>,
    reserved: Option<tokio::net::TcpSocket>,
}

impl SshPort {
    /// Binds a fresh port on 127.0.0.1 and listens on it.
    ///
    /// # Errors
    /// When no socket can be bound.
    pub fn open_new() -> std::io::Result<Self> {
        let socket = Self::socket(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = socket.local_addr()?;
        Ok(SshPort {
            addr,
            listener: Some(socket.listen(1_024)?),
            reserved: None,
        })
    }

    fn socket(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseport(true)?;
        socket.bind(addr)?;
        Ok(socket)
    }

    /// The port number.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Whether connects succeed now.
    pub fn is_open(&self) -> bool {
        self.listener.is_some()
    }

    /// Refuses connects from now on, keeping the port. Closing a closed
    /// port does nothing.
    ///
    /// # Errors
    /// When the reserving socket cannot be bound.
    pub fn close(&mut self) -> std::io::Result<()> {
        if self.listener.is_some() {
            self.reserved = Some(Self::socket(self.addr)?);
            self.listener = None;
        }
        Ok(())
    }

    /// Accepts connects again, on the same port. Opening an open port does
    /// nothing.
    ///
    /// # Errors
    /// When the reserved socket cannot listen.
    pub fn open(&mut self) -> std::io::Result<()> {
        if let Some(socket) = self.reserved.take() {
            self.listener = Some(socket.listen(1_024)?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_ssh_port_closes_and_reopens_without_releasing_its_number() {
        let mut ssh = SshPort::open_new().unwrap();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], ssh.port()));
        assert!(tokio::net::TcpStream::connect(addr).await.is_ok());
        ssh.close().unwrap();
        assert!(!ssh.is_open());
        let refused = tokio::net::TcpStream::connect(addr).await.unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
        // The number is still taken: a plain bind fails.
        assert!(std::net::TcpListener::bind(addr).is_err());
        ssh.open().unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_ok());
        ssh.open().unwrap();
        assert!(ssh.is_open());
    }

    #[test]
    fn rfc3339_matches_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[tokio::test(start_paused = true)]
    async fn start_walks_the_state_machine_and_completes_the_operation() {
        let yc = FakeYandex::builder()
            .steps(StepDelays::uniform(Duration::from_secs(5)))
            .start()
            .await;
        yc.add_instance("i-1", "a", "f", "STOPPED");
        let client = reqwest::Client::new();
        let op: Value = client
            .post(format!("{}/compute/v1/instances/i-1:start", yc.base_url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let op_id = op["id"].as_str().unwrap().to_owned();
        assert_eq!(op["metadata"]["instanceId"], "i-1");
        assert_eq!(yc.status("i-1").as_deref(), Some("PROVISIONING"));
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(yc.status("i-1").as_deref(), Some("STARTING"));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(yc.status("i-1").as_deref(), Some("RUNNING"));
        let op: Value = client
            .get(format!("{}/operations/{op_id}", yc.base_url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(op["done"], true);
        assert_eq!(op["response"]["status"], "RUNNING");

        // Already running: 409 with gRPC code 9.
        let response = client
            .post(format!("{}/compute/v1/instances/i-1:start", yc.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CONFLICT);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], 9);

        // A stop during a start cancels the remaining steps.
        yc.stop_vm("i-1");
        let op: Value = client
            .post(format!("{}/compute/v1/instances/i-1:start", yc.base_url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        yc.set_status("i-1", "CRASHED");
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(yc.status("i-1").as_deref(), Some("CRASHED"));
        let op: Value = client
            .get(format!(
                "{}/operations/{}",
                yc.base_url(),
                op["id"].as_str().unwrap()
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            (op["done"].as_bool(), op["error"]["code"].as_u64()),
            (Some(true), Some(10))
        );
    }

    #[tokio::test]
    async fn list_paginates_and_unknown_ids_are_404() {
        let yc = FakeYandex::start().await;
        for i in 0..5 {
            yc.add_instance(&format!("i-{i}"), &format!("vm-{i}"), "f1", "RUNNING");
        }
        yc.add_instance("other", "other", "f2", "RUNNING");
        let client = reqwest::Client::new();
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let page: Value = client
                .get(format!(
                    "{}/compute/v1/instances?folderId=f1&pageSize=2&pageToken={token}",
                    yc.base_url()
                ))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            for i in page["instances"].as_array().unwrap() {
                seen.push(i["id"].as_str().unwrap().to_owned());
            }
            match page["nextPageToken"].as_str() {
                Some(t) => token = t.to_owned(),
                None => break,
            }
        }
        assert_eq!(seen, ["i-0", "i-1", "i-2", "i-3", "i-4"]);
        let response = client
            .get(format!("{}/compute/v1/instances/nope", yc.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], 5);
        let response = client
            .get(format!(
                "{}/compute/v1/instances?folderId=f1&pageSize=1001",
                yc.base_url()
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn iam_exchange_issues_tokens_the_api_then_requires() {
        let yc = FakeYandex::builder().require_iam(true).start().await;
        yc.add_instance("i-1", "a", "f", "RUNNING");
        let client = reqwest::Client::new();
        let url = format!("{}/compute/v1/instances/i-1", yc.base_url());
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let bad = client
            .post(format!("{}/iam/v1/tokens", yc.base_url()))
            .json(&json!({ "yandexPassportOauthToken": "wrong" }))
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
        let token: Value = client
            .post(format!("{}/iam/v1/tokens", yc.base_url()))
            .json(&json!({ "yandexPassportOauthToken": DEFAULT_OAUTH_TOKEN }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let iam = token["iamToken"].as_str().unwrap();
        assert!(token["expiresAt"].as_str().unwrap().ends_with('Z'));
        let response = client.get(&url).bearer_auth(iam).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(yc.iam_requests(), 2);
        let metadata = client
            .get(format!(
                "{}/computeMetadata/v1/instance/service-accounts/default/token",
                yc.base_url()
            ))
            .header("Metadata-Flavor", "Google")
            .send()
            .await
            .unwrap();
        let metadata: Value = metadata.json().await.unwrap();
        assert_eq!(metadata["access_token"], METADATA_TOKEN);
    }

    #[tokio::test(start_paused = true)]
    async fn proxy_api_starts_and_refuses_running_vms() {
        let proxy = FakeProxy::start_with(
            StepDelays::uniform(Duration::from_secs(1)),
            FaultConfig::none(),
        )
        .await;
        proxy.add_vm("vm-a", "Stopped", "51.250.10.174");
        let client = reqwest::Client::new();
        let info: Value = client
            .get(format!("{}/info", proxy.url_for("vm-a")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(info["status"], "Stopped");
        assert_eq!(
            info["networkInterfaces"][0]["primaryV4Address"]["oneToOneNat"]["address"],
            "51.250.10.174"
        );
        let ok = client
            .post(format!("{}/start", proxy.url_for("vm-a")))
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(proxy.status("vm-a").as_deref(), Some("Running"));
        let conflict = client
            .post(format!("{}/start", proxy.url_for("vm-a")))
            .send()
            .await
            .unwrap();
        assert_eq!(conflict.status(), StatusCode::CONFLICT);
        let body: Value = conflict.json().await.unwrap();
        assert_eq!(
            (body["code"].as_u64(), body["message"].as_str()),
            (Some(9), Some("RUNNING"))
        );
        assert_eq!(proxy.start_requests("vm-a"), 2);
    }
}
