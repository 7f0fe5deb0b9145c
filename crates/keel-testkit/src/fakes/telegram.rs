//! A fake of the Telegram Bot API's `sendMessage`, speaking the real wire
//! format over a real loopback socket.
//!
//! * `POST /bot{token}/sendMessage` with a JSON body, a form body
//!   (`application/x-www-form-urlencoded`) or query parameters, as Telegram
//!   accepts. Method names are case-insensitive; any other method is a 404.
//! * A wrong token answers 401 `{"ok":false,"error_code":401,"description":"Unauthorized"}`.
//! * Validation with Telegram's error texts: a missing `chat_id` (`Bad
//!   Request: chat_id is empty`), a chat outside [`FakeTelegram::restrict_chats`]
//!   (`Bad Request: chat not found`), an empty text (`Bad Request: message
//!   text is empty`), a text over 4,096 UTF-16 code units after entity
//!   parsing (`Bad Request: message is too long`), and with `parse_mode =
//!   HTML` malformed markup (`Bad Request: can't parse entities: ...`): an
//!   unsupported or unbalanced tag, or an `&` or `<` that is not part of a
//!   tag or entity. The fake is stricter than Telegram about a bare `&`
//!   (Telegram's documentation requires it escaped; its parser sometimes lets
//!   one through), so escaping bugs show up here first.
//! * Accepted messages are recorded ([`SentMessage`]: chat, topic, text,
//!   parse mode, receive time) and answered `{"ok":true,"result":{"message_id":N,...}}`.
//! * Telegram faults, scripted per request in order ([`FakeTelegram::inject`])
//!   or for every request until cleared ([`FakeTelegram::set_down`]): 429
//!   with `parameters.retry_after`, the older 429 with the delay only in
//!   `description`, a 5xx, or a delay before answering.
//! * Telegram's rate limits, when switched on ([`FakeTelegram::set_limits`],
//!   [`TelegramLimits::REAL`]): at most 1 message per second per chat and 20
//!   per minute per group (negative chat id or `@channel`), counted over
//!   sliding windows of the messages the fake accepted; a message over a
//!   limit is refused with Telegram's 429 and `parameters.retry_after` (the
//!   whole seconds until the window has room, at least 1) and counted
//!   ([`FakeTelegram::rate_limited`]). A small grace absorbs the jitter of
//!   requests spaced exactly by the sender.
//! * The generic faults of keel-testkit's fault layer, through
//!   [`FakeTelegram::server`]: seeded error rates, latency, connection drops
//!   ([`Fault::Drop`](crate::Fault::Drop)), one-shot faults; errors and 429s
//!   are rendered in the Bot API's JSON ([`TelegramRenderer`]). Every
//!   request, faulted or not, is recorded there too.
//!
//! * With [`FakeTelegram::set_bot_api`] on (off by default, so a fake
//!   started as before still answers 404 to every method but
//!   `sendMessage`): `getMe` (the bot: id from the token, `username`
//!   [`BOT_USERNAME`]),
//!   `getChat` and `getChatMember` (the chat must pass
//!   [`FakeTelegram::restrict_chats`], else `Bad Request: chat not found`;
//!   the bot's own membership is [`FakeTelegram::set_bot_status`]), and
//!   `deleteWebhook`.
//! * `getUpdates` long polling with Telegram's semantics: updates the test
//!   queues ([`FakeTelegram::push_message`], [`FakeTelegram::push_update`])
//!   get increasing `update_id`s; a call returns those with `update_id >=
//!   offset` (at most `limit`), and an `offset` confirms (forgets) every
//!   update below it; with none ready it waits up to `timeout` seconds
//!   (tokio's clock) for one. A second `getUpdates` while one waits ends the
//!   first with 409 `Conflict: terminated by other getUpdates request`; with
//!   a webhook set ([`FakeTelegram::set_webhook`]) every call is a 409.
//!   Each call is recorded ([`FakeTelegram::update_polls`]).
//! * Scripted faults per method ([`FakeTelegram::inject_method`]): the
//!   faults of [`FakeTelegram::inject`] and [`FakeTelegram::set_down`] apply
//!   to `sendMessage` only, so a test scripting alerts is not disturbed by a
//!   long poll running beside them.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use keel_testkit::fakes::telegram::{FakeTelegram, TelegramFault};
//!
//! let tg = FakeTelegram::start().await;
//! tg.inject(TelegramFault::TooManyRequests { retry_after: 5 });
//! let url = format!("{}/bot{}/sendMessage", tg.base_url(), tg.token());
//! # let _ = url;
//! // ... point the code under test at `tg.base_url()`, then:
//! assert!(tg.messages().is_empty());
//! # }
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::{FakeServer, FaultRenderer, RecordedRequest, retry_after_secs};

/// The token [`FakeTelegram::start`] accepts.
pub const DEFAULT_TOKEN: &str = "123456:TEST-fake-token";

/// Telegram's text limit, in UTF-16 code units after entity parsing.
pub const TEXT_LIMIT: usize = 4_096;

/// The bot's `username` as `getMe` answers it.
pub const BOT_USERNAME: &str = "fake_bot";

/// One `getUpdates` call the fake received.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdatesPoll {
    /// `offset` (0 when absent).
    pub offset: i64,
    /// `timeout`, seconds (0 when absent: a short poll).
    pub timeout: u64,
    /// `allowed_updates`, if sent.
    pub allowed_updates: Option<Value>,
    /// When the fake received it (tokio's clock).
    pub received_at: Instant,
    /// A scripted fault ([`FakeTelegram::inject_method`]) answered it.
    pub faulted: bool,
}

fn poll_of(params: &Map<String, Value>, faulted: bool) -> UpdatesPoll {
    let number = |name: &str| {
        params
            .get(name)
            .and_then(as_text)
            .and_then(|v| v.trim().parse::<i64>().ok())
    };
    UpdatesPoll {
        offset: number("offset").unwrap_or(0),
        timeout: number("timeout").unwrap_or(0).max(0).unsigned_abs(),
        allowed_updates: params.get("allowed_updates").map(|v| match v {
            // A form or query parameter carries the JSON array as text.
            Value::String(s) => serde_json::from_str(s).unwrap_or_else(|_| v.clone()),
            other => other.clone(),
        }),
        received_at: Instant::now(),
        faulted,
    }
}

/// One message the fake accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct SentMessage {
    /// The `message_id` the fake answered (1, 2, 3... per fake).
    pub message_id: i64,
    /// `chat_id` as sent: a number's decimal form or an `@username`.
    pub chat_id: String,
    /// The forum topic (`message_thread_id`), if any.
    pub message_thread_id: Option<i64>,
    /// The text as sent (with markup).
    pub text: String,
    /// The text as a reader sees it: tags removed and entities decoded when
    /// `parse_mode` is `HTML`.
    pub plain_text: String,
    /// `parse_mode`, if any.
    pub parse_mode: Option<String>,
    /// `disable_notification`.
    pub disable_notification: bool,
    /// Every parameter received.
    pub params: Map<String, Value>,
    /// When the fake received it (tokio's clock: paused time applies).
    pub received_at: Instant,
}

/// A fault the fake plays instead of (or before) a normal answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TelegramFault {
    /// 429 `{"ok":false,"error_code":429,"description":"Too Many Requests:
    /// retry after N","parameters":{"retry_after":N}}`.
    TooManyRequests {
        /// Seconds.
        retry_after: u64,
    },
    /// The older 429 with the delay only in `description`.
    TooManyRequestsLegacy {
        /// Seconds.
        retry_after: u64,
    },
    /// This status (a 5xx) with a Bot API error body.
    Status(u16),
    /// Answer normally, after this delay.
    Delay(Duration),
}

/// Telegram's per-chat rate limits, as the fake enforces them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelegramLimits {
    /// Messages per second in one chat (any chat).
    pub per_chat_per_second: u32,
    /// Messages per minute in one group or channel.
    pub per_group_per_minute: u32,
    /// A message arriving this much early is still admitted (network
    /// jitter between a sender's exactly spaced requests).
    pub grace: Duration,
}

impl TelegramLimits {
    /// Telegram's documented limits: 1 message/s per chat, 20/min per
    /// group, with a 50 ms grace.
    pub const REAL: TelegramLimits = TelegramLimits {
        per_chat_per_second: 1,
        per_group_per_minute: 20,
        grace: Duration::from_millis(50),
    };
}

/// When one more message fits `max` per `per` given the accepted times
/// `sent` (oldest first), or `None` if it fits now.
fn window_wait(
    sent: &VecDeque<Instant>,
    max: u32,
    per: Duration,
    grace: Duration,
    now: Instant,
) -> Option<Duration> {
    let max = max as usize;
    if max == 0 {
        return Some(per);
    }
    let in_window: Vec<&Instant> = sent
        .iter()
        .filter(|t| now.saturating_duration_since(**t) + grace < per)
        .collect();
    if in_window.len() < max {
        return None;
    }
    let oldest = in_window[in_window.len() - max];
    Some((*oldest + per).saturating_duration_since(now + grace))
}

#[derive(Debug)]
struct Inner {
    token: String,
    messages: Vec<SentMessage>,
    limits: Option<TelegramLimits>,
    /// Accepted messages' times per chat (last minute).
    sent_per_chat: HashMap<String, VecDeque<Instant>>,
    rate_limited: usize,
    script: VecDeque<TelegramFault>,
    down: Option<TelegramFault>,
    chats: Option<Vec<String>>,
    next_id: i64,
    /// Faults scripted per method (lower-case name).
    method_script: HashMap<String, VecDeque<TelegramFault>>,
    /// Queued updates not yet confirmed by an `offset`.
    updates: VecDeque<(i64, Value)>,
    next_update_id: i64,
    polls: Vec<UpdatesPoll>,
    /// Bumped by every `getUpdates`: a waiting call that sees it change was
    /// terminated by a newer one.
    poll_generation: u64,
    webhook: Option<String>,
    bot_status: String,
    /// Serve the methods beyond `sendMessage`.
    bot_api: bool,
}

/// The fake's shared state; [`app`] serves it.
#[derive(Debug, Clone)]
pub struct FakeTelegramState {
    inner: Arc<Mutex<Inner>>,
    /// Wakes waiting `getUpdates` calls (a new update, a newer call).
    wake: Arc<tokio::sync::Notify>,
}

impl FakeTelegramState {
    /// State accepting `token`.
    pub fn new(token: impl Into<String>) -> Self {
        FakeTelegramState {
            inner: Arc::new(Mutex::new(Inner {
                token: token.into(),
                messages: Vec::new(),
                limits: None,
                sent_per_chat: HashMap::new(),
                rate_limited: 0,
                script: VecDeque::new(),
                down: None,
                chats: None,
                next_id: 1,
                method_script: HashMap::new(),
                updates: VecDeque::new(),
                next_update_id: 1,
                polls: Vec::new(),
                poll_generation: 0,
                webhook: None,
                bot_status: "administrator".to_owned(),
                bot_api: false,
            })),
            wake: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Queues `update` (its `update_id` is set by the fake) and wakes a
    /// waiting `getUpdates`. Returns the `update_id`.
    pub fn push_update(&self, mut update: Value) -> i64 {
        let id = {
            let mut inner = self.lock();
            let id = inner.next_update_id;
            inner.next_update_id += 1;
            if let Value::Object(map) = &mut update {
                map.insert("update_id".into(), json!(id));
            }
            inner.updates.push_back((id, update));
            id
        };
        self.wake.notify_waiters();
        id
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking test thread must not hide the state from the others.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Renders the fault layer's injected errors and 429s as the Bot API does:
/// `{"ok":false,"error_code":N,"description":...}`, with
/// `parameters.retry_after` for a 429.
#[derive(Debug, Clone, Copy, Default)]
pub struct TelegramRenderer;

impl FaultRenderer for TelegramRenderer {
    fn error(&self, status: StatusCode, _request: &RecordedRequest) -> Response {
        error(
            status.as_u16(),
            status.canonical_reason().unwrap_or("Server Error"),
        )
    }

    fn rate_limited(&self, retry_after: Duration, _request: &RecordedRequest) -> Response {
        too_many_requests(retry_after_secs(retry_after))
    }
}

/// A running fake: a loopback HTTP server (keel-testkit's [`FakeServer`])
/// and a handle to script it and read what it received. Dropping it stops
/// the server.
#[derive(Debug)]
pub struct FakeTelegram {
    server: FakeServer,
    state: FakeTelegramState,
}

impl FakeTelegram {
    /// Starts a fake accepting [`DEFAULT_TOKEN`] on `127.0.0.1` (a free
    /// port).
    pub async fn start() -> Self {
        Self::start_with_token(DEFAULT_TOKEN).await
    }

    /// Starts a fake accepting `token`.
    ///
    /// # Panics
    /// When no loopback port can be bound.
    pub async fn start_with_token(token: impl Into<String>) -> Self {
        let state = FakeTelegramState::new(token);
        let server = FakeServer::builder()
            .renderer(TelegramRenderer)
            .start(app(state.clone()))
            .await;
        FakeTelegram { server, state }
    }

    /// `http://127.0.0.1:{port}`: the Bot API base URL to configure.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// The underlying fake server: generic faults (error rates, latency,
    /// drops), every recorded request, waiting for requests.
    pub fn server(&self) -> &FakeServer {
        &self.server
    }

    /// The token the fake accepts.
    pub fn token(&self) -> String {
        self.state.lock().token.clone()
    }

    /// The state, for [`app`] in `oneshot` tests.
    pub fn state(&self) -> &FakeTelegramState {
        &self.state
    }

    /// Every accepted message, in arrival order.
    pub fn messages(&self) -> Vec<SentMessage> {
        self.state.lock().messages.clone()
    }

    /// Requests received, accepted, refused or faulted.
    pub fn requests(&self) -> usize {
        self.server.request_count()
    }

    /// Plays `fault` on the next request (after earlier scripted faults).
    pub fn inject(&self, fault: TelegramFault) {
        self.inject_times(fault, 1);
    }

    /// Plays `fault` on the next `times` requests.
    pub fn inject_times(&self, fault: TelegramFault, times: usize) {
        self.state
            .lock()
            .script
            .extend(std::iter::repeat_n(fault, times));
    }

    /// The next request gets a 429 with `parameters.retry_after`.
    pub fn inject_429(&self, retry_after: u64) {
        self.inject(TelegramFault::TooManyRequests { retry_after });
    }

    /// The next request gets the older 429, delay only in `description`.
    pub fn inject_429_legacy(&self, retry_after: u64) {
        self.inject(TelegramFault::TooManyRequestsLegacy { retry_after });
    }

    /// The next request gets `status` (a 5xx).
    pub fn inject_status(&self, status: u16) {
        self.inject(TelegramFault::Status(status));
    }

    /// The next request is answered after `delay`.
    pub fn inject_delay(&self, delay: Duration) {
        self.inject(TelegramFault::Delay(delay));
    }

    /// Plays `fault` on every request (after the scripted ones) until
    /// `set_down(None)`.
    pub fn set_down(&self, fault: Option<TelegramFault>) {
        self.state.lock().down = fault;
    }

    /// Enforces Telegram's rate limits (`Some(TelegramLimits::REAL)`) or
    /// none (`None`, the default).
    pub fn set_limits(&self, limits: Option<TelegramLimits>) {
        self.state.lock().limits = limits;
    }

    /// Messages refused with 429 because they exceeded the rate limits.
    pub fn rate_limited(&self) -> usize {
        self.state.lock().rate_limited
    }

    /// Serves `getMe`, `getChat`, `getChatMember`, `getUpdates` and
    /// `deleteWebhook` (`true`), or, as by default, answers 404 `Not Found`
    /// to every method but `sendMessage` (`false`).
    pub fn set_bot_api(&self, on: bool) {
        self.state.lock().bot_api = on;
    }

    /// Plays `fault` on the next request of `method` (`getUpdates`,
    /// `getMe`, `getChat`...; case-insensitive), after earlier ones scripted
    /// for it. For `sendMessage`, use [`inject`](Self::inject).
    pub fn inject_method(&self, method: &str, fault: TelegramFault) {
        self.state
            .lock()
            .method_script
            .entry(method.to_ascii_lowercase())
            .or_default()
            .push_back(fault);
    }

    /// Queues an update (its `update_id` is set here) for `getUpdates`.
    /// Returns the `update_id`.
    pub fn push_update(&self, update: Value) -> i64 {
        self.state.push_update(update)
    }

    /// Queues a text message as Telegram delivers it: `{"update_id",
    /// "message": {"message_id", "from": {"id", ...}, "chat": {"id",
    /// "type"}, "date", "text", "message_thread_id"?}}`. Returns the
    /// `update_id`.
    pub fn push_message(&self, chat_id: i64, from_id: i64, thread: Option<i64>, text: &str) -> i64 {
        let message_id = {
            let mut inner = self.state.lock();
            let id = inner.next_id;
            inner.next_id += 1;
            id
        };
        let chat_type = if chat_id < 0 { "supergroup" } else { "private" };
        let mut message = json!({
            "message_id": message_id,
            "from": { "id": from_id, "is_bot": false, "first_name": "Operator" },
            "chat": { "id": chat_id, "type": chat_type },
            "date": unix_now(),
            "text": text,
        });
        if let Some(t) = thread {
            message["message_thread_id"] = json!(t);
            message["is_topic_message"] = json!(true);
        }
        self.push_update(json!({ "message": message }))
    }

    /// Every `getUpdates` call received, in order.
    pub fn update_polls(&self) -> Vec<UpdatesPoll> {
        self.state.lock().polls.clone()
    }

    /// Updates queued and not yet confirmed by an `offset`.
    pub fn pending_updates(&self) -> usize {
        self.state.lock().updates.len()
    }

    /// Sets (`Some(url)`) or removes the webhook: while one is set,
    /// `getUpdates` answers 409 as Telegram does. `deleteWebhook` removes it.
    pub fn set_webhook(&self, url: Option<String>) {
        self.state.lock().webhook = url;
    }

    /// The bot's `status` in every chat, as `getChatMember` answers for the
    /// bot's own id: `administrator` (the default), `member`, `left`,
    /// `kicked`...
    pub fn set_bot_status(&self, status: &str) {
        self.state.lock().bot_status = status.to_owned();
    }

    /// Accepts only these chats (as sent: `"-100123"`, `"@name"`); others get
    /// `Bad Request: chat not found`.
    pub fn restrict_chats<I, S>(&self, chats: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.state.lock().chats = Some(chats.into_iter().map(Into::into).collect());
    }
}

/// The fake's router: serve it with `axum::serve`, or call it with
/// `tower::ServiceExt::oneshot` in tests that need no socket.
pub fn app(state: FakeTelegramState) -> Router {
    Router::new()
        .route("/{bot}/{method}", any(handle))
        .with_state(state)
}

fn reply(status: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(body)).into_response()
}

fn error(status: u16, description: &str) -> Response {
    reply(
        status,
        json!({ "ok": false, "error_code": status, "description": description }),
    )
}

fn too_many_requests(retry_after: u64) -> Response {
    reply(
        429,
        json!({
            "ok": false,
            "error_code": 429,
            "description": format!("Too Many Requests: retry after {retry_after}"),
            "parameters": { "retry_after": retry_after },
        }),
    )
}

fn fault_response(fault: TelegramFault) -> Option<Response> {
    match fault {
        TelegramFault::TooManyRequests { retry_after } => Some(too_many_requests(retry_after)),
        TelegramFault::TooManyRequestsLegacy { retry_after } => Some(error(
            429,
            &format!("Too Many Requests: retry after {retry_after}"),
        )),
        TelegramFault::Status(status) => {
            let text = StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Server Error");
            Some(error(status, text))
        }
        TelegramFault::Delay(_) => None,
    }
}

async fn handle(
    State(state): State<FakeTelegramState>,
    Path((bot, method)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let fault = {
        let mut inner = state.lock();
        let Some(token) = bot.strip_prefix("bot") else {
            return error(404, "Not Found");
        };
        if token != inner.token {
            return error(401, "Unauthorized");
        }
        let method = method.to_ascii_lowercase();
        if method == "sendmessage" {
            inner.script.pop_front().or(inner.down)
        } else {
            inner
                .method_script
                .get_mut(&method)
                .and_then(VecDeque::pop_front)
        }
    };
    let params = params(query.as_deref(), &headers, &body);
    if let Some(fault) = fault {
        if let TelegramFault::Delay(d) = fault {
            tokio::time::sleep(d).await;
        } else if let Some(response) = fault_response(fault) {
            if method.eq_ignore_ascii_case("getUpdates") {
                let poll = poll_of(params.as_ref().unwrap_or(&Map::new()), true);
                state.lock().polls.push(poll);
            }
            return response;
        }
    }
    let params = match params {
        Ok(p) => p,
        Err(description) => return error(400, &description),
    };
    let method = method.to_ascii_lowercase();
    if method != "sendmessage" && !state.lock().bot_api {
        return error(404, "Not Found");
    }
    match method.as_str() {
        "sendmessage" => send_message(&state, params),
        "getme" => get_me(&state),
        "getchat" => match chat_of(&state, &params) {
            Ok(chat) => reply(200, json!({ "ok": true, "result": chat })),
            Err(description) => error(400, description),
        },
        "getchatmember" => get_chat_member(&state, &params),
        "getupdates" => get_updates(&state, &params).await,
        "deletewebhook" => {
            state.lock().webhook = None;
            reply(
                200,
                json!({ "ok": true, "result": true, "description": "Webhook was deleted" }),
            )
        }
        _ => error(404, "Not Found"),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The bot's id: the token's digits before `:`.
fn bot_id(token: &str) -> i64 {
    token
        .split(':')
        .next()
        .and_then(|id| id.parse().ok())
        .unwrap_or(123_456)
}

fn bot_user(token: &str) -> Value {
    json!({
        "id": bot_id(token),
        "is_bot": true,
        "first_name": "Fake bot",
        "username": BOT_USERNAME,
    })
}

fn get_me(state: &FakeTelegramState) -> Response {
    let token = state.lock().token.clone();
    let mut user = bot_user(&token);
    user["can_join_groups"] = json!(true);
    user["can_read_all_group_messages"] = json!(false);
    user["supports_inline_queries"] = json!(false);
    reply(200, json!({ "ok": true, "result": user }))
}

/// The chat named by `chat_id`, as `getChat` answers it, or Telegram's
/// error.
fn chat_of(state: &FakeTelegramState, params: &Map<String, Value>) -> Result<Value, &'static str> {
    let chat_id = params
        .get("chat_id")
        .and_then(as_text)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    if chat_id.is_empty() {
        return Err("Bad Request: chat_id is empty");
    }
    let numeric = chat_id.parse::<i64>().ok();
    if numeric.is_none() && !chat_id.starts_with('@') {
        return Err("Bad Request: chat not found");
    }
    if let Some(chats) = &state.lock().chats
        && !chats.contains(&chat_id)
    {
        return Err("Bad Request: chat not found");
    }
    Ok(match numeric {
        Some(id) if id < 0 => {
            json!({ "id": id, "type": "supergroup", "title": "Fake group", "is_forum": true })
        }
        Some(id) => json!({ "id": id, "type": "private", "first_name": "Fake" }),
        None => json!({
            "id": -1_000_000_000_001_i64,
            "type": "channel",
            "title": "Fake channel",
            "username": chat_id.trim_start_matches('@'),
        }),
    })
}

fn get_chat_member(state: &FakeTelegramState, params: &Map<String, Value>) -> Response {
    if let Err(description) = chat_of(state, params) {
        return error(400, description);
    }
    let Some(user_id) = params
        .get("user_id")
        .and_then(as_text)
        .and_then(|u| u.trim().parse::<i64>().ok())
    else {
        return error(400, "Bad Request: invalid user_id specified");
    };
    let inner = state.lock();
    let result = if user_id == bot_id(&inner.token) {
        json!({ "user": bot_user(&inner.token), "status": inner.bot_status })
    } else {
        json!({
            "user": { "id": user_id, "is_bot": false, "first_name": "Member" },
            "status": "member",
        })
    };
    reply(200, json!({ "ok": true, "result": result }))
}

fn conflict(description: &str) -> Response {
    error(409, &format!("Conflict: {description}"))
}

async fn get_updates(state: &FakeTelegramState, params: &Map<String, Value>) -> Response {
    let limit = params
        .get("limit")
        .and_then(as_text)
        .and_then(|v| v.trim().parse::<i64>().ok())
        .unwrap_or(100)
        .clamp(1, 100);
    let limit = usize::try_from(limit).unwrap_or(100);
    let poll = poll_of(params, false);
    let (offset, timeout, now) = (poll.offset, poll.timeout, poll.received_at);
    let generation = {
        let mut inner = state.lock();
        if inner.webhook.is_some() {
            return conflict(
                "can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first",
            );
        }
        inner.polls.push(poll);
        if offset > 0 {
            inner.updates.retain(|(id, _)| *id >= offset);
        }
        inner.poll_generation += 1;
        inner.poll_generation
    };
    // An earlier call still waiting ends with 409.
    state.wake.notify_waiters();
    let deadline = now + Duration::from_secs(timeout);
    loop {
        let notified = state.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let inner = state.lock();
            if inner.poll_generation != generation {
                return conflict(
                    "terminated by other getUpdates request; make sure that only one bot instance is running",
                );
            }
            let ready: Vec<Value> = inner
                .updates
                .iter()
                .filter(|(id, _)| *id >= offset)
                .take(limit)
                .map(|(_, u)| u.clone())
                .collect();
            if !ready.is_empty() || Instant::now() >= deadline {
                return reply(200, json!({ "ok": true, "result": ready }));
            }
        }
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// Query parameters, then the body's (JSON object or form), later ones
/// winning.
fn params(
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Map<String, Value>, String> {
    let mut params = Map::new();
    if let Some(q) = query {
        for (k, v) in form_decode(q) {
            params.insert(k, Value::String(v));
        }
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(params);
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with("application/x-www-form-urlencoded") {
        let text = std::str::from_utf8(body).map_err(|_| "Bad Request: invalid form body")?;
        for (k, v) in form_decode(text) {
            params.insert(k, Value::String(v));
        }
    } else if content_type.is_empty() || content_type.contains("json") {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => params.extend(map),
            Ok(_) => return Err("Bad Request: parameters must be a JSON object".into()),
            Err(_) => return Err("Bad Request: can't parse JSON object".into()),
        }
    } else {
        return Err(format!(
            "Bad Request: unsupported content type {content_type}"
        ));
    }
    Ok(params)
}

fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn send_message(state: &FakeTelegramState, params: Map<String, Value>) -> Response {
    let chat_id = params
        .get("chat_id")
        .and_then(as_text)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    if chat_id.is_empty() {
        return error(400, "Bad Request: chat_id is empty");
    }
    let numeric_chat = chat_id.parse::<i64>().ok();
    if numeric_chat.is_none() && !chat_id.starts_with('@') {
        return error(400, "Bad Request: chat not found");
    }
    let thread = match params.get("message_thread_id").and_then(as_text) {
        None => None,
        Some(t) => match t.parse::<i64>() {
            Ok(t) => Some(t),
            Err(_) => return error(400, "Bad Request: message thread not found"),
        },
    };
    let text = params.get("text").and_then(as_text).unwrap_or_default();
    let parse_mode = params
        .get("parse_mode")
        .and_then(as_text)
        .filter(|p| !p.is_empty());
    let plain = match parse_mode.as_deref() {
        None | Some("Markdown" | "MarkdownV2") => text.clone(),
        Some(mode) if mode.eq_ignore_ascii_case("html") => match parse_html(&text) {
            Ok(plain) => plain,
            Err(e) => return error(400, &format!("Bad Request: can't parse entities: {e}")),
        },
        Some(_) => return error(400, "Bad Request: unsupported parse_mode"),
    };
    if plain.trim().is_empty() {
        return error(400, "Bad Request: message text is empty");
    }
    if plain.encode_utf16().count() > TEXT_LIMIT {
        return error(400, "Bad Request: message is too long");
    }
    let disable_notification = params
        .get("disable_notification")
        .and_then(as_text)
        .is_some_and(|v| v == "true" || v == "1");
    let mut inner = state.lock();
    if let Some(chats) = &inner.chats
        && !chats.contains(&chat_id)
    {
        return error(400, "Bad Request: chat not found");
    }
    let now = Instant::now();
    if let Some(limits) = inner.limits {
        let group = numeric_chat.is_none_or(|id| id < 0);
        let sent = inner.sent_per_chat.entry(chat_id.clone()).or_default();
        while sent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= Duration::from_secs(60))
        {
            sent.pop_front();
        }
        let per_chat = window_wait(
            sent,
            limits.per_chat_per_second,
            Duration::from_secs(1),
            limits.grace,
            now,
        );
        let per_group = if group {
            window_wait(
                sent,
                limits.per_group_per_minute,
                Duration::from_secs(60),
                limits.grace,
                now,
            )
        } else {
            None
        };
        if let Some(wait) = per_chat.into_iter().chain(per_group).max() {
            inner.rate_limited += 1;
            return too_many_requests(retry_after_secs(wait).max(1));
        }
        sent.push_back(now);
    }
    let message_id = inner.next_id;
    inner.next_id += 1;
    inner.messages.push(SentMessage {
        message_id,
        chat_id: chat_id.clone(),
        message_thread_id: thread,
        text,
        plain_text: plain.clone(),
        parse_mode,
        disable_notification,
        params,
        received_at: now,
    });
    drop(inner);
    let chat = match numeric_chat {
        Some(id) if id < 0 => json!({ "id": id, "type": "supergroup", "title": "Fake group" }),
        Some(id) => json!({ "id": id, "type": "private", "first_name": "Fake" }),
        None => {
            json!({ "id": -1_000_000_000_001_i64, "type": "channel", "username": chat_id.trim_start_matches('@') })
        }
    };
    let date = unix_now();
    let mut result = json!({
        "message_id": message_id,
        "from": { "id": 123_456, "is_bot": true, "first_name": "Fake bot", "username": "fake_bot" },
        "chat": chat,
        "date": date,
        "text": plain,
    });
    if let Some(t) = thread {
        result["message_thread_id"] = json!(t);
        result["is_topic_message"] = json!(true);
    }
    reply(200, json!({ "ok": true, "result": result }))
}

/// Decodes `a=1&b=x+y%21` (form and query encoding).
fn form_decode(s: &str) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok());
                    match hex {
                        Some(b) => {
                            out.push(b);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Tags Telegram's HTML parse mode supports.
const TAGS: &[&str] = &[
    "b",
    "strong",
    "i",
    "em",
    "u",
    "ins",
    "s",
    "strike",
    "del",
    "span",
    "tg-spoiler",
    "a",
    "code",
    "pre",
    "blockquote",
    "tg-emoji",
];

/// Parses Telegram HTML into the text a reader sees, or says what is wrong
/// (with Telegram's wording where known).
pub fn parse_html(html: &str) -> Result<String, String> {
    let mut out = String::with_capacity(html.len());
    let mut open: Vec<String> = Vec::new();
    let mut rest = html;
    let offset = |rest: &str| html.len() - rest.len();
    while let Some(c) = rest.chars().next() {
        match c {
            '<' => {
                let Some(end) = rest.find('>') else {
                    return Err(format!(
                        "Unclosed start tag at byte offset {}",
                        offset(rest)
                    ));
                };
                let inner = &rest[1..end];
                if let Some(name) = inner.strip_prefix('/') {
                    let name = name.trim().to_ascii_lowercase();
                    match open.pop() {
                        Some(top) if top == name => {}
                        Some(top) => {
                            return Err(format!(
                                "Unmatched end tag at byte offset {}, expected \"</{top}>\", found \"</{name}>\"",
                                offset(rest)
                            ));
                        }
                        None => {
                            return Err(format!(
                                "Unexpected end tag at byte offset {}",
                                offset(rest)
                            ));
                        }
                    }
                } else {
                    let name_end = inner
                        .find(|c: char| c.is_whitespace() || c == '/')
                        .unwrap_or(inner.len());
                    let name = inner[..name_end].to_ascii_lowercase();
                    if !TAGS.contains(&name.as_str()) {
                        return Err(format!(
                            "Unsupported start tag \"{name}\" at byte offset {}",
                            offset(rest)
                        ));
                    }
                    open.push(name);
                }
                rest = &rest[end + 1..];
            }
            '&' => {
                let end = rest.find(';').filter(|&e| e > 1 && e <= 10);
                let decoded = end.and_then(|e| decode_entity(&rest[1..e]));
                let (Some(end), Some(ch)) = (end, decoded) else {
                    return Err(format!(
                        "Can't find end of the entity starting at byte offset {}",
                        offset(rest)
                    ));
                };
                out.push(ch);
                rest = &rest[end + 1..];
            }
            c => {
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    if let Some(top) = open.pop() {
        return Err(format!(
            "Can't find end tag corresponding to start tag \"{top}\""
        ));
    }
    Ok(out)
}

fn decode_entity(body: &str) -> Option<char> {
    match body {
        "lt" => Some('<'),
        "gt" => Some('>'),
        "amp" => Some('&'),
        "quot" => Some('"'),
        _ => {
            let code =
                if let Some(hex) = body.strip_prefix("#x").or_else(|| body.strip_prefix("#X")) {
                    u32::from_str_radix(hex, 16).ok()?
                } else {
                    body.strip_prefix('#')?.parse().ok()?
                };
            char::from_u32(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn post(state: &FakeTelegramState, chat: &str) -> (u16, Value) {
        use tower::ServiceExt as _;
        let body = json!({ "chat_id": chat, "text": "hi" }).to_string();
        let request = http::Request::post(format!("/bot{DEFAULT_TOKEN}/sendMessage"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from(body))
            .unwrap();
        let response = app(state.clone()).oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn enforces_telegram_rate_limits_per_chat_and_group() {
        let state = FakeTelegramState::new(DEFAULT_TOKEN);
        state.lock().limits = Some(TelegramLimits::REAL);
        assert_eq!(post(&state, "-100").await.0, 200);
        let (status, body) = post(&state, "-100").await;
        assert_eq!(status, 429, "1 per second per chat");
        assert_eq!(body["parameters"]["retry_after"], 1);
        assert_eq!(post(&state, "42").await.0, 200, "another chat has its own");
        for _ in 0..19 {
            tokio::time::advance(Duration::from_secs(1)).await;
            assert_eq!(post(&state, "-100").await.0, 200);
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        let (status, body) = post(&state, "-100").await;
        assert_eq!(status, 429, "20 per minute per group");
        assert_eq!(body["parameters"]["retry_after"], 40);
        // A private chat has no per-minute limit.
        for _ in 0..25 {
            tokio::time::advance(Duration::from_secs(1)).await;
            assert_eq!(post(&state, "42").await.0, 200);
        }
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(
            post(&state, "-100").await.0,
            200,
            "the window has room again"
        );
        assert_eq!(state.lock().rate_limited, 2);
    }

    async fn call(state: &FakeTelegramState, method: &str, body: Value) -> (u16, Value) {
        use tower::ServiceExt as _;
        let request = http::Request::post(format!("/bot{DEFAULT_TOKEN}/{method}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from(body.to_string()))
            .unwrap();
        let response = app(state.clone()).oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn get_updates_long_polls_and_confirms_by_offset() {
        let state = FakeTelegramState::new(DEFAULT_TOKEN);
        state.lock().bot_api = true;
        // Nothing queued: waits the whole timeout, then an empty result.
        let started = Instant::now();
        let (status, body) = call(&state, "getUpdates", json!({ "timeout": 30 })).await;
        assert_eq!((status, body["result"].clone()), (200, json!([])));
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        // An update pushed during the wait ends it at once.
        let waiting = tokio::spawn({
            let state = state.clone();
            async move { call(&state, "getUpdates", json!({ "timeout": 30 })).await }
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        let id = state.push_update(json!({ "message": { "text": "/status" } }));
        let (_, body) = waiting.await.unwrap();
        assert_eq!(body["result"][0]["update_id"], id);
        // Not confirmed: returned again; confirmed by offset: gone.
        let (_, body) = call(&state, "getUpdates", json!({ "offset": id })).await;
        assert_eq!(body["result"].as_array().unwrap().len(), 1);
        let (_, body) = call(&state, "getUpdates", json!({ "offset": id + 1 })).await;
        assert_eq!(body["result"], json!([]));
        assert_eq!(state.lock().updates.len(), 0);
        assert_eq!(state.lock().polls.len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_consumer_or_a_webhook_is_a_conflict() {
        let state = FakeTelegramState::new(DEFAULT_TOKEN);
        state.lock().bot_api = true;
        let first = tokio::spawn({
            let state = state.clone();
            async move { call(&state, "getUpdates", json!({ "timeout": 30 })).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        let second = tokio::spawn({
            let state = state.clone();
            async move { call(&state, "getUpdates", json!({ "timeout": 1 })).await }
        });
        let (status, body) = first.await.unwrap();
        assert_eq!(status, 409);
        assert!(
            body["description"]
                .as_str()
                .unwrap()
                .starts_with("Conflict: terminated by other getUpdates request"),
            "{body}"
        );
        assert_eq!(second.await.unwrap().0, 200);
        state.lock().webhook = Some("https://example.com/hook".into());
        assert_eq!(call(&state, "getUpdates", json!({})).await.0, 409);
        assert_eq!(call(&state, "deleteWebhook", json!({})).await.0, 200);
        assert_eq!(call(&state, "getUpdates", json!({})).await.0, 200);
    }

    #[tokio::test]
    async fn get_me_get_chat_and_membership() {
        let state = FakeTelegramState::new(DEFAULT_TOKEN);
        assert_eq!(
            call(&state, "getMe", json!({})).await.0,
            404,
            "off by default"
        );
        state.lock().bot_api = true;
        let (status, body) = call(&state, "getMe", json!({})).await;
        assert_eq!(status, 200);
        assert_eq!(body["result"]["id"], 123_456);
        assert_eq!(body["result"]["username"], BOT_USERNAME);
        state.lock().chats = Some(vec!["-100".into()]);
        assert_eq!(
            call(&state, "getChat", json!({ "chat_id": -100 })).await.0,
            200
        );
        let (status, body) = call(&state, "getChat", json!({ "chat_id": -5 })).await;
        assert_eq!(status, 400);
        assert_eq!(body["description"], "Bad Request: chat not found");
        let member = json!({ "chat_id": -100, "user_id": 123_456 });
        let (_, body) = call(&state, "getChatMember", member.clone()).await;
        assert_eq!(body["result"]["status"], "administrator");
        state.lock().bot_status = "kicked".into();
        let (_, body) = call(&state, "getChatMember", member).await;
        assert_eq!(body["result"]["status"], "kicked");
        // Faults scripted for a method leave sendMessage alone.
        state
            .lock()
            .method_script
            .entry("getme".into())
            .or_default()
            .push_back(TelegramFault::TooManyRequests { retry_after: 3 });
        assert_eq!(post(&state, "-100").await.0, 200);
        let (status, body) = call(&state, "getMe", json!({})).await;
        assert_eq!(status, 429);
        assert_eq!(body["parameters"]["retry_after"], 3);
    }

    #[test]
    fn html_parsing() {
        assert_eq!(
            parse_html("<b>a &amp; b</b> &lt;c&gt;").unwrap(),
            "a & b <c>"
        );
        assert_eq!(parse_html("<a href=\"https://x\">x</a>").unwrap(), "x");
        assert_eq!(parse_html("&#128512;").unwrap(), "😀");
        assert!(
            parse_html("<b>open")
                .unwrap_err()
                .contains("start tag \"b\"")
        );
        assert!(
            parse_html("a < b")
                .unwrap_err()
                .contains("Unclosed start tag")
        );
        assert!(
            parse_html("1 < 2 > 0")
                .unwrap_err()
                .contains("Unsupported start tag")
        );
        assert!(
            parse_html("<b><i>x</b></i>")
                .unwrap_err()
                .contains("Unmatched end tag")
        );
        assert!(parse_html("a & b").unwrap_err().contains("entity"));
        assert!(parse_html("<foo>x</foo>").is_err());
    }

    #[test]
    fn form_decoding() {
        assert_eq!(
            form_decode("chat_id=-100&text=a+b%21%3C&x"),
            vec![
                ("chat_id".into(), "-100".into()),
                ("text".into(), "a b!<".into()),
                ("x".into(), String::new())
            ]
        );
        assert_eq!(form_decode("t=100%"), vec![("t".into(), "100%".into())]);
    }
}
