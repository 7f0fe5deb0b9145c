//! Operator commands in the Telegram chat, received by `getUpdates` long
//! polling (`TELEGRAM_COMMANDS=true`):
//!
//! * `/status`: how many VMs are watched, and each one down, paused, in
//!   maintenance, muted or held by the flap guard;
//! * `/ack NAME`: no reminders about a down VM until it recovers;
//! * `/mute NAME 2h`: no alerts about it for the duration (still started);
//! * `/resume NAME`: full supervision again (ends a pause, an operator's
//!   maintenance and a mute; releases the flap guard);
//! * `/help`.
//!
//! `/cmd@BotName` forms are accepted when `BotName` is this bot (from
//! `getMe`). Commands count only from `GROUP_CHAT_ID` (and, with
//! `TELEGRAM_ADMIN_USER_IDS`, only from those users) and when at most
//! [`STALE_AFTER`] old; others are ignored and logged. Replies go through the notifier ([`Alerts::reply`]), so they
//! share the chat's rate limits with the alerts.
//!
//! The poller asks `getUpdates` with `offset` (one past the last update
//! handled, so each update is handled once and confirmed to Telegram by the
//! next call), `timeout` and `allowed_updates=["message"]`. A 429 waits its
//! `retry_after`; a 409 (another consumer of this bot's updates, or a
//! webhook) is logged at error once per episode and retried with backoff,
//! like network errors and 5xx (doubling from `backoff_min` to
//! `backoff_max`).

use std::sync::Arc;
use std::time::Duration;

use keel_notify::ChatId;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::alerts::Alerts;
use crate::api::RawApi;
use crate::engine::Engine;
use crate::selfcheck::{BotError, bot_call};

/// Commands older than this (by the message's `date`) are ignored: they
/// were sent while the watchdog was not polling.
pub const STALE_AFTER: Duration = Duration::from_secs(10 * 60);

/// How the poller reaches Telegram and whom it obeys.
#[derive(Debug, Clone)]
pub struct CommandSettings {
    /// `TELEGRAM_API_URL`.
    pub base_url: String,
    /// `BOT_TOKEN`.
    pub token: String,
    /// `GROUP_CHAT_ID`: commands from other chats are ignored.
    pub chat: ChatId,
    /// `TELEGRAM_ADMIN_USER_IDS` (empty: anyone in the chat).
    pub admin_user_ids: Vec<i64>,
    /// The bot's username (from `getMe`), for `/cmd@BotName`; `None`
    /// accepts any addressee.
    pub bot_username: Option<String>,
    /// `timeout` of each long poll (default 30 s).
    pub poll_timeout: Duration,
    /// First wait after a failure (default 1 s), doubling per failure...
    pub backoff_min: Duration,
    /// ... up to this (default 60 s).
    pub backoff_max: Duration,
}

impl CommandSettings {
    /// The defaults for `settings`.
    pub fn new(settings: &crate::Settings, bot_username: Option<String>) -> Self {
        CommandSettings {
            base_url: settings.telegram_url.clone(),
            token: settings.bot_token.clone(),
            chat: settings.chat.clone(),
            admin_user_ids: settings.admin_user_ids.clone(),
            bot_username,
            poll_timeout: Duration::from_secs(30),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }

    fn backoff(&self, failures: u32) -> Duration {
        self.backoff_min
            .saturating_mul(2_u32.saturating_pow(failures.min(16)))
            .min(self.backoff_max)
    }
}

/// A command as parsed from a message's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The command without `/` and `@BotName`, lower-cased.
    pub name: String,
    /// The words after it.
    pub args: Vec<String>,
    /// Whether it named this bot explicitly (`/status@BotName`).
    pub addressed: bool,
}

/// Parses `/cmd[@bot] args...`; `None` for text that is not a command, or
/// a command addressed to another bot.
pub fn parse(text: &str, bot_username: Option<&str>) -> Option<Command> {
    let mut words = text.split_whitespace();
    let first = words.next()?.strip_prefix('/')?;
    let (name, target) = match first.split_once('@') {
        Some((name, target)) => (name, Some(target)),
        None => (first, None),
    };
    if let (Some(target), Some(me)) = (target, bot_username)
        && !target.eq_ignore_ascii_case(me)
    {
        return None;
    }
    if name.is_empty() {
        return None;
    }
    Some(Command {
        name: name.to_ascii_lowercase(),
        args: words.map(str::to_owned).collect(),
        addressed: target.is_some(),
    })
}

const USAGE: &str = "Commands:\n/status — VMs down, paused, muted or in maintenance\n/ack NAME — no reminders until it recovers\n/mute NAME 2h — no alerts for a while (still started)\n/resume NAME — end pause, maintenance and mute; release the flap guard";

/// The reply to `command`, or `None` when it is not one of ours (and not
/// addressed to this bot).
pub fn execute<R: RawApi>(engine: &Engine<R>, command: &Command) -> Option<String> {
    let name = command.args.first().map(String::as_str);
    let text = match (command.name.as_str(), name) {
        ("status", _) => engine.summary(),
        ("help" | "start", _) => USAGE.to_owned(),
        ("ack" | "mute" | "resume", None) => {
            format!(
                "Usage: /{} NAME{}",
                command.name,
                if command.name == "mute" { " 2h" } else { "" }
            )
        }
        ("ack", Some(vm)) => match engine.ack(vm) {
            Ok(_) => format!("VM {vm} acknowledged: no reminders until it recovers."),
            Err(e) => format!("{e}."),
        },
        ("mute", Some(vm)) => {
            let Some(duration) = command.args.get(1) else {
                return Some("Usage: /mute NAME 2h".to_owned());
            };
            match crate::duration::parse(duration) {
                Err(e) => format!("{e}."),
                Ok(d) => match engine.mute(vm, d) {
                    Ok(view) => format!(
                        "VM {vm} muted until {}: no alerts, still started.",
                        view["muted_until"].as_str().unwrap_or("?")
                    ),
                    Err(e) => format!("{e}."),
                },
            }
        }
        ("resume", Some(vm)) => match engine.resume(vm) {
            Ok(_) => format!(
                "VM {vm}: supervision resumed (pause, maintenance and mute ended; flap guard released)."
            ),
            Err(e) => format!("{e}."),
        },
        _ if command.addressed => format!("Unknown command /{}.\n{USAGE}", command.name),
        // A command for another bot in the group.
        _ => return None,
    };
    Some(text)
}

fn chat_matches(chat: &ChatId, message_chat: &Value) -> bool {
    match chat {
        ChatId::Id(id) => message_chat["id"].as_i64() == Some(*id),
        ChatId::Username(name) => message_chat["username"]
            .as_str()
            .is_some_and(|u| u.eq_ignore_ascii_case(name.trim_start_matches('@'))),
    }
}

/// Handles one update: a command from the chat (and an allowed user) is
/// executed and answered in its topic; anything else is ignored (and
/// logged when it is a command from elsewhere).
pub fn handle<R: RawApi>(
    engine: &Engine<R>,
    alerts: &Alerts,
    settings: &CommandSettings,
    update: &Value,
) {
    let Some(message) = update.get("message") else {
        return;
    };
    let Some(text) = message["text"].as_str() else {
        return;
    };
    let Some(command) = parse(text, settings.bot_username.as_deref()) else {
        return;
    };
    let from = message["from"]["id"].as_i64();
    let chat_id = &message["chat"]["id"];
    if !chat_matches(&settings.chat, &message["chat"]) {
        warn!(chat_id = %chat_id, from = ?from, command = %command.name, "command from another chat ignored");
        engine.metrics().telegram_command("ignored");
        return;
    }
    let age = message["date"]
        .as_i64()
        .map(|date| chrono::Utc::now().timestamp().saturating_sub(date));
    if age.is_some_and(|age| age > STALE_AFTER.as_secs().cast_signed()) {
        // Telegram keeps updates for 24 h: a command sent while the
        // watchdog was down must not act hours later.
        warn!(from = ?from, command = %command.name, age_s = age, "stale command ignored");
        engine.metrics().telegram_command("ignored");
        return;
    }
    if !settings.admin_user_ids.is_empty()
        && !from.is_some_and(|id| settings.admin_user_ids.contains(&id))
    {
        warn!(from = ?from, command = %command.name, "command from a user not in TELEGRAM_ADMIN_USER_IDS ignored");
        engine.metrics().telegram_command("ignored");
        return;
    }
    let Some(reply) = execute(engine, &command) else {
        debug!(command = %command.name, "not a command of this bot");
        return;
    };
    info!(from = ?from, command = %command.name, args = ?command.args, "operator command");
    engine.metrics().telegram_command("handled");
    alerts.reply(message["message_thread_id"].as_i64(), &reply);
}

/// Polls `getUpdates` until `cancel`, handling each update once.
pub async fn run<R: RawApi>(
    engine: Arc<Engine<R>>,
    settings: CommandSettings,
    client: reqwest::Client,
    cancel: CancellationToken,
) {
    let mut offset: i64 = 0;
    let mut failures: u32 = 0;
    let mut conflict = false;
    info!("taking operator commands from the chat (getUpdates)");
    loop {
        let mut body = json!({
            "timeout": settings.poll_timeout.as_secs(),
            "allowed_updates": ["message"],
        });
        if offset > 0 {
            body["offset"] = json!(offset);
        }
        let call = bot_call(
            &client,
            &settings.base_url,
            &settings.token,
            "getUpdates",
            &body,
            settings.poll_timeout + Duration::from_secs(10),
        );
        let result = tokio::select! {
            () = cancel.cancelled() => return,
            r = call => r,
        };
        let wait = match result {
            Ok(Value::Array(updates)) => {
                failures = 0;
                if std::mem::take(&mut conflict) {
                    info!("getUpdates works again; taking commands");
                }
                engine.set_telegram_verified(true);
                for update in &updates {
                    let Some(id) = update["update_id"].as_i64() else {
                        continue;
                    };
                    if id < offset {
                        // Already handled (Telegram resent it).
                        continue;
                    }
                    offset = id + 1;
                    handle(&engine, engine.alerts(), &settings, update);
                }
                continue;
            }
            Ok(other) => {
                warn!(answer = %other, "getUpdates: unexpected result");
                settings.backoff(failures)
            }
            Err(e) => wait_after(&settings, &e, failures, &mut conflict),
        };
        failures = failures.saturating_add(1);
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

fn wait_after(
    settings: &CommandSettings,
    e: &BotError,
    failures: u32,
    conflict: &mut bool,
) -> Duration {
    match e.status {
        Some(429) => {
            let wait = e.retry_after.unwrap_or_else(|| settings.backoff(failures));
            warn!(
                retry_after_s = wait.as_secs(),
                "getUpdates: rate limited by Telegram"
            );
            wait
        }
        Some(409) => {
            if !std::mem::replace(conflict, true) {
                error!(
                    description = %e.description,
                    "getUpdates conflict: another process polls this bot's updates, or a webhook is set; commands are not received until it stops (or deleteWebhook)"
                );
            }
            settings.backoff(failures)
        }
        Some(401 | 404) => {
            error!(description = %e.description, "getUpdates: Telegram rejects BOT_TOKEN");
            settings.backoff_max
        }
        status => {
            warn!(?status, error = %e.description, "getUpdates failed; retrying");
            settings.backoff(failures)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands_and_their_addressee() {
        let c = parse("/ack web-1", Some("wd_bot")).unwrap();
        assert_eq!(
            (c.name.as_str(), c.args.as_slice(), c.addressed),
            ("ack", &["web-1".to_owned()][..], false)
        );
        let c = parse("/Mute@WD_bot web-1 2h", Some("wd_bot")).unwrap();
        assert_eq!(c.name, "mute");
        assert_eq!(c.args, ["web-1", "2h"]);
        assert!(c.addressed);
        assert_eq!(parse("/status@other_bot", Some("wd_bot")), None);
        assert!(parse("/status@anyone", None).is_some());
        assert_eq!(parse("hello /status", None), None);
        assert_eq!(parse("/", None), None);
    }

    #[test]
    fn backoff_doubles_to_its_cap() {
        let mut s = CommandSettings {
            base_url: String::new(),
            token: String::new(),
            chat: ChatId::Id(-1),
            admin_user_ids: Vec::new(),
            bot_username: None,
            poll_timeout: Duration::from_secs(30),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        };
        let waits: Vec<u64> = (0..8).map(|n| s.backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        s.backoff_max = Duration::from_secs(5);
        assert_eq!(s.backoff(40), Duration::from_secs(5));
        let e = BotError {
            status: Some(429),
            description: "Too Many Requests: retry after 7".into(),
            retry_after: Some(Duration::from_secs(7)),
        };
        let mut conflict = false;
        assert_eq!(wait_after(&s, &e, 0, &mut conflict), Duration::from_secs(7));
        let e = BotError {
            status: Some(409),
            description: "Conflict".into(),
            retry_after: None,
        };
        assert_eq!(wait_after(&s, &e, 1, &mut conflict), Duration::from_secs(2));
        assert!(conflict);
    }
}
