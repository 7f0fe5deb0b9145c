//! The Telegram Bot API sink (feature `telegram`, on by default).
//!
//! [`TelegramSink`] posts `POST {base}/bot{token}/sendMessage` with a JSON
//! body (`chat_id`, optional `message_thread_id` for a forum topic,
//! `parse_mode = "HTML"`, the text), renders a message as
//!
//! ```text
//! 🔴 <b>VM stopped (×2)</b>
//! vm-7 went from RUNNING to STOPPED
//!
//! <b>vm:</b> vm-7
//! <b>zone:</b> ru-central1-a
//! ```
//!
//! with every piece of caller text escaped, keeps each post within Telegram's
//! 4,096 characters (counted as Telegram does: UTF-16 code units after
//! entity parsing) by truncating or splitting without breaking a tag or an
//! entity, and maps replies to [`SinkError`]s: 429 with `retry_after` (in
//! `parameters`, or only in the older `description` form) is an overload, 5xx
//! is retryable, 400/401/403 are permanent. It declares Telegram's limits:
//! 1 message/s per chat, 20/min per group or channel, 30/s per bot.

pub mod html;
pub(crate) mod reply;

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::digest::{self, Digest};
use crate::error::{ConfigError, SinkError};
use crate::notification::{Message, Priority};
use crate::sink::{Pacer, RateLimit, Sink};

/// Telegram's limit on one message's text, in UTF-16 code units after
/// entity parsing.
pub const TEXT_LIMIT: usize = 4_096;
/// The real Bot API.
pub const DEFAULT_BASE_URL: &str = "https://api.telegram.org";

/// A chat: a numeric id (negative for groups, supergroups and channels) or a
/// public `@username`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ChatId {
    /// A numeric id such as `-1001234567890`.
    Id(i64),
    /// A public channel or group, `@name`.
    Username(String),
}

impl ChatId {
    /// Groups, supergroups and channels (negative ids, `@usernames`) have
    /// Telegram's 20-per-minute limit on top of one per second.
    pub fn is_group(&self) -> bool {
        match self {
            ChatId::Id(id) => *id < 0,
            ChatId::Username(_) => true,
        }
    }

    fn to_json(&self) -> Value {
        match self {
            ChatId::Id(id) => json!(id),
            ChatId::Username(name) => json!(name),
        }
    }
}

impl fmt::Display for ChatId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChatId::Id(id) => write!(f, "{id}"),
            ChatId::Username(name) => f.write_str(name),
        }
    }
}

impl From<i64> for ChatId {
    fn from(id: i64) -> Self {
        ChatId::Id(id)
    }
}

impl FromStr for ChatId {
    type Err = ConfigError;

    /// `"-1001234567890"` or `"@channel"` (what a `GROUP_CHAT_ID`
    /// environment variable holds).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(id) = s.parse::<i64>() {
            return Ok(ChatId::Id(id));
        }
        match s.strip_prefix('@') {
            Some(name)
                if !name.is_empty()
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                Ok(ChatId::Username(s.to_owned()))
            }
            _ => Err(ConfigError::new(
                "chat_id",
                format!("`{s}` is neither a numeric chat id nor an @username"),
            )),
        }
    }
}

/// What to do with a message longer than [`TEXT_LIMIT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TooLong {
    /// Cut it to the limit, ending with `…` (one post). The default.
    #[default]
    Truncate,
    /// Post it in up to `max_parts` messages (cut at line breaks where
    /// possible, 1 s apart, and, under a notifier, each part taking a slot
    /// of the sink's rate limits like a message of its own); the last part
    /// is truncated when even that is not enough. A retry resumes at the
    /// first part not yet accepted.
    Split {
        /// At least 1.
        max_parts: usize,
    },
}

/// Sends messages to one Telegram chat (optionally one forum topic).
///
/// Cost per message: one rendering (a few string copies of the text), one
/// JSON body, one HTTP request per part over a pooled reqwest client.
pub struct TelegramSink {
    name: String,
    client: reqwest::Client,
    base_url: String,
    url: String,
    bot_id: String,
    chat: ChatId,
    thread_id: Option<i64>,
    timeout: Duration,
    too_long: TooLong,
    icons: bool,
    silent_at_or_below: Option<Priority>,
    link_previews: bool,
    part_interval: Duration,
    rate_limits: Option<Vec<RateLimit>>,
    digests: bool,
    /// Parts already accepted per message id, for split messages that failed
    /// midway: a retry resumes after them.
    progress: Mutex<HashMap<u64, usize>>,
}

impl fmt::Debug for TelegramSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the token (it is in `url`).
        f.debug_struct("TelegramSink")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("bot_id", &self.bot_id)
            .field("chat", &self.chat)
            .field("thread_id", &self.thread_id)
            .field("too_long", &self.too_long)
            .finish_non_exhaustive()
    }
}

/// Builds a [`TelegramSink`]; start from [`TelegramSink::builder`].
#[must_use]
pub struct TelegramSinkBuilder {
    token: String,
    chat: ChatId,
    name: String,
    base_url: String,
    thread_id: Option<i64>,
    client: Option<reqwest::Client>,
    timeout: Duration,
    too_long: TooLong,
    icons: bool,
    silent_at_or_below: Option<Priority>,
    link_previews: bool,
    part_interval: Duration,
    rate_limits: Option<Vec<RateLimit>>,
    digests: bool,
}

impl fmt::Debug for TelegramSinkBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TelegramSinkBuilder")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("chat", &self.chat)
            .field("thread_id", &self.thread_id)
            .finish_non_exhaustive()
    }
}

impl TelegramSinkBuilder {
    /// The sink's name (metric label, routing key, spool record); default
    /// `"telegram"`. Give each Telegram sink of one notifier its own.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The Bot API base URL (default [`DEFAULT_BASE_URL`]); point it at a
    /// fake or a local Bot API server.
    pub fn base_url(mut self, base_url: impl Into<String>) -> Self {
        self.base_url = base_url.into();
        self
    }

    /// Posts into this forum topic (`message_thread_id`).
    pub fn thread_id(mut self, thread_id: i64) -> Self {
        self.thread_id = Some(thread_id);
        self
    }

    /// Uses this client (shared connection pool, proxy settings). The
    /// per-request timeout still applies.
    pub fn client(mut self, client: reqwest::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// The timeout of one request (default 10 s). A timeout is retryable.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Truncate (default) or split messages over [`TEXT_LIMIT`].
    pub fn too_long(mut self, too_long: TooLong) -> Self {
        self.too_long = too_long;
        self
    }

    /// Prefix titles with a priority icon (🔴 critical, 🟡 warning, 🔵 info).
    /// On by default.
    pub fn icons(mut self, icons: bool) -> Self {
        self.icons = icons;
        self
    }

    /// Sends messages of `priority` and below without a notification sound
    /// (`disable_notification`). Off by default.
    pub fn silent_at_or_below(mut self, priority: Priority) -> Self {
        self.silent_at_or_below = Some(priority);
        self
    }

    /// Lets Telegram show link previews (off by default: alerts with links
    /// stay compact).
    pub fn link_previews(mut self, on: bool) -> Self {
        self.link_previews = on;
        self
    }

    /// The pause between the parts of a split message (default 1 s, the
    /// per-chat limit).
    pub fn part_interval(mut self, interval: Duration) -> Self {
        self.part_interval = interval;
        self
    }

    /// Replaces the declared rate limits (default: 1/s per chat, 20/min per
    /// group or channel, 30/s per bot). An empty list declares none.
    pub fn rate_limits(mut self, limits: Vec<RateLimit>) -> Self {
        self.rate_limits = Some(limits);
        self
    }

    /// Whether messages waiting behind the chat's rate limits go out as one
    /// digest (a header with the count, then one line per alert, within
    /// [`TEXT_LIMIT`]). On by default.
    pub fn digests(mut self, on: bool) -> Self {
        self.digests = on;
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    /// A [`ConfigError`] naming `token`, `base_url`, `name`, `timeout` or
    /// `too_long`.
    pub fn build(self) -> Result<TelegramSink, ConfigError> {
        let token = self.token.trim();
        if token.is_empty() || token.contains(|c: char| c.is_whitespace() || c == '/') {
            return Err(ConfigError::new(
                "token",
                "must be a bot token like `123456:ABC...` (non-empty, no spaces or slashes)",
            ));
        }
        let base = self.base_url.trim_end_matches('/');
        let parsed = reqwest::Url::parse(base)
            .map_err(|e| ConfigError::new("base_url", format!("`{base}`: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ConfigError::new("base_url", "must be an http or https URL"));
        }
        if self.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::new("timeout", "must be above zero"));
        }
        if self.too_long == (TooLong::Split { max_parts: 0 }) {
            return Err(ConfigError::new("too_long", "max_parts must be at least 1"));
        }
        let client = match self.client {
            Some(c) => c,
            None => reqwest::Client::builder()
                .build()
                .map_err(|e| ConfigError::new("client", e.to_string()))?,
        };
        let bot_id = token.split(':').next().unwrap_or(token).to_owned();
        Ok(TelegramSink {
            name: self.name,
            client,
            url: format!("{base}/bot{token}/sendMessage"),
            base_url: base.to_owned(),
            bot_id,
            chat: self.chat,
            thread_id: self.thread_id,
            timeout: self.timeout,
            too_long: self.too_long,
            icons: self.icons,
            silent_at_or_below: self.silent_at_or_below,
            link_previews: self.link_previews,
            part_interval: self.part_interval,
            rate_limits: self.rate_limits,
            digests: self.digests,
            progress: Mutex::new(HashMap::new()),
        })
    }
}

impl TelegramSink {
    /// A builder for a sink posting with bot `token` into `chat`.
    pub fn builder(token: impl Into<String>, chat: impl Into<ChatId>) -> TelegramSinkBuilder {
        TelegramSinkBuilder {
            token: token.into(),
            chat: chat.into(),
            name: "telegram".to_owned(),
            base_url: DEFAULT_BASE_URL.to_owned(),
            thread_id: None,
            client: None,
            timeout: Duration::from_secs(10),
            too_long: TooLong::default(),
            icons: true,
            silent_at_or_below: None,
            link_previews: false,
            part_interval: Duration::from_secs(1),
            rate_limits: None,
            digests: true,
        }
    }

    /// The chat this sink posts to.
    pub fn chat(&self) -> &ChatId {
        &self.chat
    }

    /// The forum topic, if any.
    pub fn thread_id(&self) -> Option<i64> {
        self.thread_id
    }

    /// The whole message as Telegram HTML, before any length handling.
    pub fn render_html(&self, message: &Message) -> String {
        let mut out = String::from(self.icon(message.priority()));
        out.push_str("<b>");
        out.push_str(&html::escape(&message.display_title()));
        out.push_str("</b>");
        if !message.body().is_empty() {
            out.push('\n');
            out.push_str(&html::escape(message.body()));
        }
        if !message.fields().is_empty() {
            out.push('\n');
            for (k, v) in message.fields() {
                out.push_str("\n<b>");
                out.push_str(&html::escape(k));
                out.push_str(":</b> ");
                out.push_str(&html::escape(v));
            }
        }
        out
    }

    fn icon(&self, priority: Priority) -> &'static str {
        if !self.icons {
            return "";
        }
        match priority {
            Priority::Critical => "🔴 ",
            Priority::Warning => "🟡 ",
            Priority::Info => "🔵 ",
        }
    }

    /// One digest line: the icon, the title (with its count) in bold, then
    /// the body and fields on the same line.
    fn digest_line(&self, message: &Message) -> String {
        let title = message.display_title();
        let line = message.to_line();
        let detail = line.strip_prefix(title.as_str()).unwrap_or("");
        format!(
            "{}<b>{}</b>{}",
            self.icon(message.priority()),
            html::escape(&title),
            html::escape(detail)
        )
    }

    fn digest_header(&self, header: &str) -> String {
        format!("📋 <b>{}</b>", html::escape(header))
    }

    /// A digest as Telegram HTML: the header (`📋 12 alerts: 3 critical, 9
    /// info`), then one line per entry.
    pub fn render_digest(&self, digest: &Digest) -> String {
        let mut out = self.digest_header(&digest.header());
        for m in digest.entries() {
            out.push('\n');
            out.push_str(&self.digest_line(m));
        }
        out
    }

    /// The texts [`send`](Sink::send) posts for `message`, in order: one
    /// within [`TEXT_LIMIT`] unless the sink splits long messages.
    pub fn render(&self, message: &Message) -> Vec<String> {
        let full = self.render_html(message);
        if html::visible_len(&full) <= TEXT_LIMIT {
            return vec![full];
        }
        match self.too_long {
            TooLong::Truncate => vec![html::truncate(&full, TEXT_LIMIT)],
            TooLong::Split { max_parts } => {
                let mut parts = html::split(&full, TEXT_LIMIT);
                if parts.len() > max_parts {
                    let rest = parts.split_off(max_parts - 1).concat();
                    parts.push(html::truncate(&rest, TEXT_LIMIT));
                }
                parts
            }
        }
    }

    fn body(&self, text: &str, priority: Priority) -> Value {
        let mut body = json!({
            "chat_id": self.chat.to_json(),
            "text": text,
            "parse_mode": "HTML",
        });
        if let Some(thread) = self.thread_id {
            body["message_thread_id"] = json!(thread);
        }
        if self.silent_at_or_below.is_some_and(|p| priority <= p) {
            body["disable_notification"] = json!(true);
        }
        if !self.link_previews {
            body["link_preview_options"] = json!({ "is_disabled": true });
        }
        body
    }

    async fn post(&self, text: &str, priority: Priority) -> Result<(), SinkError> {
        let response = self
            .client
            .post(&self.url)
            .timeout(self.timeout)
            .json(&self.body(text, priority))
            .send()
            .await
            .map_err(|e| {
                // reqwest's error may print the URL, which holds the token.
                SinkError::retryable_from("request to the Bot API failed", e.without_url())
            })?;
        let status = response.status().as_u16();
        let header_retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response.bytes().await.map_err(|e| {
            SinkError::retryable_from("reading the Bot API reply failed", e.without_url())
        })?;
        reply::classify(status, &body, header_retry_after)
    }
}

impl TelegramSink {
    async fn send_parts(&self, message: &Message, pacer: &Pacer<'_>) -> Result<(), SinkError> {
        let parts = self.render(message);
        let first = self
            .progress
            .lock()
            .get(&message.id())
            .copied()
            .unwrap_or(0);
        for (i, part) in parts.iter().enumerate().skip(first) {
            if i > first {
                tokio::time::sleep(self.part_interval).await;
                // Each part is a message to Telegram's limits.
                pacer.next_request().await;
            }
            if let Err(e) = self.post(part, message.priority()).await {
                let mut progress = self.progress.lock();
                if e.is_permanent() || i == 0 {
                    progress.remove(&message.id());
                } else {
                    progress.insert(message.id(), i);
                }
                return Err(e);
            }
        }
        if parts.len() > 1 {
            self.progress.lock().remove(&message.id());
        }
        Ok(())
    }
}

impl Sink for TelegramSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, message: &Message) -> Result<(), SinkError> {
        self.send_parts(message, &Pacer::none()).await
    }

    /// Under a notifier, every part of a split message after the first
    /// also takes a slot of the declared rate limits (1/s per chat, 20/min
    /// per group...), so a long message cannot push a chat past them.
    async fn send_paced(&self, message: &Message, pacer: &Pacer<'_>) -> Result<(), SinkError> {
        self.send_parts(message, pacer).await
    }

    fn supports_digest(&self) -> bool {
        self.digests
    }

    /// Entries fit while the header (sized for all of `entries`, an upper
    /// bound for any prefix) and their lines stay within [`TEXT_LIMIT`] as
    /// Telegram counts it.
    fn digest_fit(&self, entries: &[Message]) -> usize {
        if !self.digests {
            return 1;
        }
        let all = Digest::new(0, entries.to_vec());
        let header = html::visible_len(&self.digest_header(&all.header()));
        digest::fit_by_cost(
            TEXT_LIMIT,
            header,
            entries
                .iter()
                .map(|m| html::visible_len(&self.digest_line(m)) + 1),
        )
    }

    async fn send_digest(&self, digest: &Digest, _pacer: &Pacer<'_>) -> Result<(), SinkError> {
        let text = self.render_digest(digest);
        // `digest_fit` kept it within the limit; cut rather than be refused
        // if a caller built a larger one by hand.
        let text = if html::visible_len(&text) > TEXT_LIMIT {
            html::truncate(&text, TEXT_LIMIT)
        } else {
            text
        };
        self.post(&text, digest.priority()).await
    }

    fn rate_limits(&self) -> Vec<RateLimit> {
        if let Some(limits) = &self.rate_limits {
            return limits.clone();
        }
        let chat = format!("telegram-chat:{}", self.chat);
        let mut limits = vec![RateLimit::per_second(chat.clone(), 1)];
        if self.chat.is_group() {
            limits.push(RateLimit::per_minute(chat, 20));
        }
        limits.push(RateLimit::per_second(
            format!("telegram-bot:{}", self.bot_id),
            30,
        ));
        limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notification::Notification;

    fn sink() -> TelegramSink {
        TelegramSink::builder("123:abc", -100_i64).build().unwrap()
    }

    #[test]
    fn chat_ids() {
        assert_eq!(
            "-1001234567890".parse::<ChatId>().unwrap(),
            ChatId::Id(-1001234567890)
        );
        assert_eq!(
            "@ops_alerts".parse::<ChatId>().unwrap(),
            ChatId::Username("@ops_alerts".into())
        );
        assert_eq!("ops".parse::<ChatId>().unwrap_err().field(), "chat_id");
        assert!(ChatId::Id(-5).is_group() && !ChatId::Id(5).is_group());
    }

    #[test]
    fn builder_validates() {
        let err = |b: TelegramSinkBuilder| b.build().unwrap_err().field().to_owned();
        assert_eq!(err(TelegramSink::builder("", 1)), "token");
        assert_eq!(err(TelegramSink::builder("12 3", 1)), "token");
        assert_eq!(
            err(TelegramSink::builder("1:a", 1).base_url("ftp://x")),
            "base_url"
        );
        assert_eq!(
            err(TelegramSink::builder("1:a", 1).base_url("not a url")),
            "base_url"
        );
        assert_eq!(err(TelegramSink::builder("1:a", 1).name("")), "name");
        assert_eq!(
            err(TelegramSink::builder("1:a", 1).too_long(TooLong::Split { max_parts: 0 })),
            "too_long"
        );
        let s = TelegramSink::builder("1:secret", 1)
            .base_url("http://127.0.0.1:9/")
            .build()
            .unwrap();
        assert_eq!(s.url, "http://127.0.0.1:9/bot1:secret/sendMessage");
        assert!(
            !format!("{s:?}").contains("secret"),
            "Debug hides the token"
        );
    }

    #[test]
    fn renders_escaped_html() {
        let n = Notification::critical("k", "VM <db> & \"cache\" stopped")
            .body("status: STOPPED -> <none>")
            .field("vm", "a&b")
            .field("<zone>", "ru");
        let html = sink().render_html(&Message::new(1, n, 2));
        assert_eq!(
            html,
            "🔴 <b>VM &lt;db&gt; &amp; &quot;cache&quot; stopped (×2)</b>\n\
             status: STOPPED -&gt; &lt;none&gt;\n\n\
             <b>vm:</b> a&amp;b\n\
             <b>&lt;zone&gt;:</b> ru"
        );
    }

    #[test]
    fn long_messages_are_truncated_or_split_within_the_limit() {
        let body = "line of text 😀\n".repeat(700); // 700 * 16 units = 11,200
        let n = Notification::info("k", "big").body(body);
        let m = Message::new(1, n, 1);
        let truncated = sink().render(&m);
        assert_eq!(truncated.len(), 1);
        assert_eq!(html::visible_len(&truncated[0]), TEXT_LIMIT);
        assert!(truncated[0].ends_with('…'));

        let split = TelegramSink::builder("1:a", 1)
            .too_long(TooLong::Split { max_parts: 10 })
            .build()
            .unwrap();
        let parts = split.render(&m);
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| html::visible_len(p) <= TEXT_LIMIT));
        assert!(parts[0].starts_with("🔵 <b>big</b>"));
        assert!(parts[0].ends_with('\n'), "cut at a line break");

        let capped = TelegramSink::builder("1:a", 1)
            .too_long(TooLong::Split { max_parts: 2 })
            .build()
            .unwrap()
            .render(&m);
        assert_eq!(capped.len(), 2);
        assert!(capped[1].ends_with('…'));
        assert!(html::visible_len(&capped[1]) <= TEXT_LIMIT);
    }

    #[test]
    fn digests_fit_within_the_limit_with_a_header() {
        let s = sink();
        let m = |i: u64, p: Priority| {
            Message::new(
                i,
                Notification::new(format!("vm-{i}"), p, format!("VM vm-{i} <down>"))
                    .field("vm", format!("vm-{i}")),
                1,
            )
        };
        let d = Digest::new(1, vec![m(1, Priority::Critical), m(2, Priority::Info)]);
        assert_eq!(
            s.render_digest(&d),
            "📋 <b>2 alerts: 1 critical, 1 info</b>\n\
             🔴 <b>VM vm-1 &lt;down&gt;</b> — vm: vm-1\n\
             🔵 <b>VM vm-2 &lt;down&gt;</b> — vm: vm-2"
        );
        let many: Vec<Message> = (0..500).map(|i| m(i, Priority::Critical)).collect();
        let fit = s.digest_fit(&many);
        assert!((50..500).contains(&fit), "{fit}");
        let text = s.render_digest(&Digest::new(0, many[..fit].to_vec()));
        assert!(html::visible_len(&text) <= TEXT_LIMIT);
        let one_more = s.render_digest(&Digest::new(0, many[..=fit].to_vec()));
        assert!(
            html::visible_len(&one_more) > TEXT_LIMIT,
            "the fit is tight"
        );
        let off = TelegramSink::builder("1:a", 1)
            .digests(false)
            .build()
            .unwrap();
        assert!(!off.supports_digest());
        assert_eq!(off.digest_fit(&many), 1);
    }

    #[test]
    fn declares_telegram_limits() {
        let group = sink().rate_limits();
        assert_eq!(
            group,
            vec![
                RateLimit::per_second("telegram-chat:-100", 1),
                RateLimit::per_minute("telegram-chat:-100", 20),
                RateLimit::per_second("telegram-bot:123", 30),
            ]
        );
        let private = TelegramSink::builder("9:x", 42_i64).build().unwrap();
        assert_eq!(private.rate_limits().len(), 2, "no group limit for a user");
    }

    #[test]
    fn json_body() {
        let s = TelegramSink::builder("1:a", "@chan".parse::<ChatId>().unwrap())
            .thread_id(17)
            .silent_at_or_below(Priority::Info)
            .build()
            .unwrap();
        let b = s.body("hi", Priority::Info);
        assert_eq!(b["chat_id"], "@chan");
        assert_eq!(b["message_thread_id"], 17);
        assert_eq!(b["parse_mode"], "HTML");
        assert_eq!(b["disable_notification"], true);
        assert_eq!(b["link_preview_options"]["is_disabled"], true);
        assert!(
            s.body("hi", Priority::Warning)
                .get("disable_notification")
                .is_none()
        );
    }
}
