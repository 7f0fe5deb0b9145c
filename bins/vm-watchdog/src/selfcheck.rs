//! Self-checks: at start and under `--check-config --online`, the program
//! asks Telegram and the cloud whether they accept its credentials.
//!
//! * Telegram: `getMe` (the token; 401 `Unauthorized` names `BOT_TOKEN`),
//!   `getChat` (the chat exists for this bot; 400 `chat not found` names
//!   `GROUP_CHAT_ID`) and `getChatMember` for the bot itself (a bot that
//!   `left` or was `kicked` names `GROUP_CHAT_ID`).
//! * The cloud, when a VM is read from the Compute API: one IAM token (an
//!   OAuth token refused by IAM names `YC_OAUTH_TOKEN`) and one
//!   `instances.get` (401/403 name the credential's variable; a 404 is
//!   fine: a missing VM is alerted once running).
//!
//! A rejection is [`Failure::Rejected`] (exit 64 at start); a service that
//! cannot be reached, answers 5xx or 429 is [`Failure::Unreachable`]: at
//! start the program logs it and runs anyway (`telegram_up` stays 0 until
//! Telegram answers), under `--check-config --online` it fails naming the
//! URL variable.

use std::sync::Arc;
use std::time::Duration;

use keel_notify::ChatId;
use serde_json::{Value, json};

use crate::config::{Credentials, Settings};
use crate::error::{ApiError, ConfigError};
use crate::iam::TokenSource;
use crate::vms_yaml::{VmSource, VmsFile};
use crate::yandex::YandexClient;

/// Why a self-check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The service refused a credential or an id: the configuration is
    /// wrong (the [`ConfigError`] names the variable).
    #[error("{0}")]
    Rejected(ConfigError),
    /// The service could not be asked (network error, 5xx, 429).
    #[error("{variable}: cannot check: {message}")]
    Unreachable {
        /// The base URL variable of the service.
        variable: &'static str,
        /// What happened.
        message: String,
    },
}

impl Failure {
    /// As a configuration error naming the variable at fault.
    pub fn into_config_error(self) -> ConfigError {
        match self {
            Failure::Rejected(e) => e,
            Failure::Unreachable { variable, message } => {
                ConfigError::new(variable, format!("cannot check: {message}"))
            }
        }
    }

    /// Whether a credential or id was refused (fatal at start).
    pub fn is_rejected(&self) -> bool {
        matches!(self, Failure::Rejected(_))
    }
}

/// The bot, as `getMe` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotInfo {
    /// The bot's user id.
    pub id: i64,
    /// Its `@username` without the `@` (commands may be addressed
    /// `/status@username`).
    pub username: Option<String>,
}

/// The HTTP client the self-checks use: 10 s per request.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default()
}

/// A Bot API error: the HTTP status (`None`: no answer) and Telegram's
/// `description`.
#[derive(Debug, Clone)]
pub(crate) struct BotError {
    pub(crate) status: Option<u16>,
    pub(crate) description: String,
    pub(crate) retry_after: Option<Duration>,
}

/// `POST {base}/bot{token}/{method}` with a JSON body: the `result`, or the
/// error (the token never appears in it).
pub(crate) async fn bot_call(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    method: &str,
    body: &Value,
    timeout: Duration,
) -> Result<Value, BotError> {
    let url = format!("{}/bot{token}/{method}", base.trim_end_matches('/'));
    let response = client
        .post(url)
        .timeout(timeout)
        .json(body)
        .send()
        .await
        .map_err(|e| BotError {
            status: None,
            description: e.without_url().to_string(),
            retry_after: None,
        })?;
    let status = response.status().as_u16();
    let text = response.text().await.map_err(|e| BotError {
        status: Some(status),
        description: e.without_url().to_string(),
        retry_after: None,
    })?;
    let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if (200..300).contains(&status) && answer["ok"] == json!(true) {
        return Ok(answer["result"].clone());
    }
    let description = answer["description"]
        .as_str()
        .map_or_else(|| text.chars().take(200).collect(), str::to_owned);
    let retry_after = answer["parameters"]["retry_after"]
        .as_u64()
        .map(Duration::from_secs);
    Err(BotError {
        status: Some(status),
        description,
        retry_after,
    })
}

fn chat_json(chat: &ChatId) -> Value {
    match chat {
        ChatId::Id(id) => json!(id),
        ChatId::Username(name) => json!(name),
    }
}

fn unreachable(e: &BotError) -> Failure {
    Failure::Unreachable {
        variable: "TELEGRAM_API_URL",
        message: match e.status {
            None => format!("Telegram: {}", e.description),
            Some(s) => format!("Telegram: HTTP {s}: {}", e.description),
        },
    }
}

/// Checks that Telegram accepts `BOT_TOKEN` and that the bot is in
/// `GROUP_CHAT_ID`. Returns the bot.
///
/// # Errors
/// [`Failure::Rejected`] naming `BOT_TOKEN` or `GROUP_CHAT_ID`, or
/// [`Failure::Unreachable`].
pub async fn telegram(client: &reqwest::Client, settings: &Settings) -> Result<BotInfo, Failure> {
    let call = |method: &'static str, body: Value| async move {
        bot_call(
            client,
            &settings.telegram_url,
            &settings.bot_token,
            method,
            &body,
            Duration::from_secs(10),
        )
        .await
    };
    let me = match call("getMe", json!({})).await {
        Ok(me) => me,
        Err(e) if e.status == Some(401) => {
            return Err(Failure::Rejected(ConfigError::new(
                "BOT_TOKEN",
                format!(
                    "Telegram rejects the bot token (getMe: HTTP {}: {})",
                    e.status.unwrap_or_default(),
                    e.description
                ),
            )));
        }
        // BOT_TOKEN is well formed (checked at start): a 404 means the
        // URL is not the Bot API.
        Err(e) if e.status == Some(404) => {
            return Err(Failure::Unreachable {
                variable: "TELEGRAM_API_URL",
                message: format!(
                    "getMe: HTTP 404: {}: this does not look like the Bot API",
                    e.description
                ),
            });
        }
        Err(e) => return Err(unreachable(&e)),
    };
    let bot = BotInfo {
        id: me["id"].as_i64().unwrap_or_default(),
        username: me["username"].as_str().map(str::to_owned),
    };
    let chat = chat_json(&settings.chat);
    let rejected_chat = |what: &str, e: &BotError| {
        Failure::Rejected(ConfigError::new(
            "GROUP_CHAT_ID",
            format!(
                "Telegram: {what}: HTTP {}: {} (is the bot a member of chat {}?)",
                e.status.unwrap_or_default(),
                e.description,
                settings.chat
            ),
        ))
    };
    match call("getChat", json!({ "chat_id": chat })).await {
        Ok(_) => {}
        Err(e) if matches!(e.status, Some(400 | 403)) => return Err(rejected_chat("getChat", &e)),
        Err(e) => return Err(unreachable(&e)),
    }
    match call(
        "getChatMember",
        json!({ "chat_id": chat, "user_id": bot.id }),
    )
    .await
    {
        Ok(member) => {
            let status = member["status"].as_str().unwrap_or("unknown");
            if matches!(status, "left" | "kicked") {
                return Err(Failure::Rejected(ConfigError::new(
                    "GROUP_CHAT_ID",
                    format!(
                        "the bot is not a member of chat {} (status `{status}`): add it to the group",
                        settings.chat
                    ),
                )));
            }
        }
        Err(e) if matches!(e.status, Some(400 | 403)) => {
            return Err(rejected_chat("getChatMember", &e));
        }
        Err(e) => return Err(unreachable(&e)),
    }
    Ok(bot)
}

/// The variable holding the cloud credential in use.
fn credential_variable(credentials: &Credentials) -> &'static str {
    match credentials {
        Credentials::Static(_) => "YC_IAM_TOKEN",
        Credentials::OAuth(_) => "YC_OAUTH_TOKEN",
        Credentials::Metadata => "YC_METADATA_URL",
    }
}

/// Checks that the cloud accepts the credentials: one IAM token and one
/// `instances.get` of the first Compute VM of `vms` (nothing when every VM
/// is behind the proxy API).
///
/// # Errors
/// [`Failure::Rejected`] naming the credential's variable, or
/// [`Failure::Unreachable`].
pub async fn cloud(
    client: &reqwest::Client,
    settings: &Settings,
    vms: &VmsFile,
) -> Result<(), Failure> {
    let Some(id) = vms.vms.iter().find_map(|vm| match &vm.source {
        VmSource::Instance { id } => Some(id.clone()),
        VmSource::Proxy { .. } => None,
    }) else {
        return Ok(());
    };
    let variable = credential_variable(&settings.credentials);
    let tokens = Arc::new(TokenSource::new(
        &settings.credentials,
        &settings.iam_url,
        &settings.metadata_url,
        client.clone(),
    ));
    let token_failure = |e: crate::error::TokenError| match e.status {
        Some(status) if (400..500).contains(&status) => Failure::Rejected(ConfigError::new(
            variable,
            format!(
                "{} rejects the credential: {}",
                if e.source_name == "iam" {
                    "IAM"
                } else {
                    "the metadata service"
                },
                e.message
            ),
        )),
        _ => Failure::Unreachable {
            variable: if e.source_name == "iam" {
                "YC_IAM_URL"
            } else {
                "YC_METADATA_URL"
            },
            message: e.message,
        },
    };
    tokens.token().await.map_err(token_failure)?;
    let compute = YandexClient::new(
        client.clone(),
        &settings.compute_url,
        &settings.operation_url,
        tokens,
    );
    match compute.get(&id).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(ApiError::Status {
            status: status @ (401 | 403),
            message,
            ..
        }) => Err(Failure::Rejected(ConfigError::new(
            variable,
            format!(
                "the Compute API rejects the credential (instances.get: HTTP {status}: {message})"
            ),
        ))),
        Err(ApiError::Token(e)) => Err(token_failure(e)),
        Err(e) => Err(Failure::Unreachable {
            variable: "YC_COMPUTE_URL",
            message: e.to_string(),
        }),
    }
}
