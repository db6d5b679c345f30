//! Per-user Telegram notifications: linking a chat (`POST /api/v1/notifications/telegram/link`,
//! then `/start <link_code>` to the bot, which Telegram's webhook brings back), the events a user
//! wants (`GET`/`PUT /api/v1/notifications`), unlinking, and sending from the stream.

use crate::error::ApiError;
use crate::live::stream::{notification_kind, notification_text, UserChange};
use crate::state::{Cache, Table, Telegram};
use futures::StreamExt;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

pub const EVENTS: [&str; 7] = ["fill", "stop_loss", "take_profit", "trailing_stop", "liquidation", "bot_state", "error"];
pub const LINK_CODE_TTL_SECS: u64 = 600;
/// What a batch gives Telegram after its pushes, well inside the function's 30 s.
pub const NOTIFY_BUDGET: Duration = Duration::from_secs(12);
/// How long a stream record's send is remembered: longer than the stream keeps a record (24 h).
const SENT_TTL_SECS: u64 = 26 * 3600;

/// A user's notification settings and linked chat (`NOTIFICATIONS` item of their partition).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Notifications {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telegram_chat_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linked_at: Option<String>,
    /// The events chosen; absent: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
}

impl Notifications {
    pub fn events(&self) -> Vec<String> {
        self.events.clone().unwrap_or_else(|| EVENTS.iter().map(|e| (*e).to_owned()).collect())
    }
    pub fn view(&self) -> serde_json::Value {
        serde_json::json!({"telegram": {"linked": self.telegram_chat_id.is_some(), "events": self.events()}})
    }
}

fn link_key(code: &str) -> String {
    use sha2::Digest;
    // Only a digest is a key: whoever reads Redis cannot link a chat to someone else's account.
    format!("tglink:{}", hex::encode(&sha2::Sha256::digest(code.as_bytes())[..16]))
}

#[derive(Debug, Serialize)]
pub struct LinkCode {
    pub link_code: String,
    pub expires_at: String,
    pub bot_url: String,
}

/// A single-use code, valid 10 minutes, that links the chat it is sent from to `user_id`.
pub async fn issue_link_code(redis: &ConnectionManager, bot_username: &str, user_id: &str) -> Result<LinkCode, ApiError> {
    let code = crate::crypto::random_token();
    let mut conn = redis.clone();
    redis::cmd("SET").arg(link_key(&code)).arg(user_id).arg("EX").arg(LINK_CODE_TTL_SECS).query_async::<()>(&mut conn).await?;
    let expires_at = chrono::Utc::now() + chrono::Duration::seconds(LINK_CODE_TTL_SECS as i64);
    Ok(LinkCode {
        bot_url: format!("https://t.me/{bot_username}?start={code}"),
        link_code: code,
        expires_at: expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    })
}

/// The user a live link code names, spending it (exactly one caller gets it however many race).
pub async fn spend_link_code(redis: &ConnectionManager, code: &str) -> Result<Option<String>, ApiError> {
    if !crate::crypto::is_random_token(code) {
        return Ok(None);
    }
    let mut conn = redis.clone();
    Ok(redis::cmd("GETDEL").arg(link_key(code)).query_async(&mut conn).await?)
}

/// The parts of a Telegram update the webhook reads; everything else is ignored.
#[derive(Debug, Deserialize)]
pub struct Update {
    #[serde(default)]
    pub message: Option<Message>,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub chat: Chat,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Chat {
    pub id: i64,
}

/// What the webhook did with an update.
#[derive(Debug, PartialEq, Eq)]
pub enum WebhookOutcome {
    Linked { user_id: String },
    BadCode,
    Ignored,
}

/// `/start <link_code>` links the chat it came from; anything else is ignored. The chat is told.
pub async fn receive(state: &(impl Table + Cache + Telegram), body: &[u8]) -> Result<WebhookOutcome, ApiError> {
    let Ok(update) = serde_json::from_slice::<Update>(body) else { return Ok(WebhookOutcome::Ignored) };
    let Some(message) = update.message else { return Ok(WebhookOutcome::Ignored) };
    let text = message.text.unwrap_or_default();
    let mut words = text.split_whitespace();
    let (Some(command), code) = (words.next(), words.next()) else { return Ok(WebhookOutcome::Ignored) };
    // `/start@bot_name` is how a group addresses one bot among several.
    if command != "/start" && !command.starts_with("/start@") {
        return Ok(WebhookOutcome::Ignored);
    }
    let chat_id = message.chat.id;
    let Some(user_id) = (match code {
        Some(code) => spend_link_code(state.redis(), code).await?,
        None => None,
    }) else {
        send(state, chat_id, "This link code is not valid or has expired. Ask the app for a new one.").await;
        return Ok(WebhookOutcome::BadCode);
    };
    let store = crate::live::store::LiveStore { client: state.dynamo(), table: &state.config().table_name };
    if !store.link_telegram(&user_id, chat_id).await? {
        // The account was deleted in the 10 minutes the code lived.
        send(state, chat_id, "This account no longer exists.").await;
        return Ok(WebhookOutcome::BadCode);
    }
    send(state, chat_id, "Linked. You will be told here about your bot's fills, stops and state changes.").await;
    Ok(WebhookOutcome::Linked { user_id })
}

/// Validates the events of `PUT /api/v1/notifications`: each one known, each once.
pub fn chosen_events(events: &[String]) -> Result<Vec<String>, ApiError> {
    if events.len() > 32 {
        return Err(ApiError::unprocessable("invalid_event", "at most 32 events are given"));
    }
    let mut chosen = Vec::new();
    for event in events {
        if !EVENTS.contains(&event.as_str()) {
            return Err(ApiError::unprocessable("invalid_event", format!("events are among {}", EVENTS.join(", "))));
        }
        if !chosen.contains(event) {
            chosen.push(event.clone());
        }
    }
    Ok(chosen)
}

/// Sends one message to a chat, honouring one 429 `retry_after` (up to 5 s). Failures are logged
/// and answered `false`, never raised.
pub async fn send(state: &impl Telegram, chat_id: i64, text: &str) -> bool {
    let secret = match state.telegram().bot.get().await {
        Ok(s) if !s.bot_token.expose().is_empty() => s,
        Ok(_) => return false,
        Err(e) => {
            tracing::warn!(error = %e, "telegram secret unavailable; message not sent");
            return false;
        }
    };
    crate::alerts::post_message(state, &secret, &chat_id.to_string(), text).await
}

/// Tells each user's linked chat about the changes they chose, once per stream record (its
/// sequence number is remembered for a day). Never fails: a user's Telegram is theirs to lose.
pub async fn notify(state: &(impl Table + Cache + Telegram), changes: &[UserChange]) -> usize {
    let mut by_user: BTreeMap<String, Vec<(&'static str, UserChange)>> = BTreeMap::new();
    for change in changes {
        if let Some(kind) = notification_kind(&change.change) {
            by_user.entry(change.user_id.clone()).or_default().push((kind, change.clone()));
        }
    }
    // Users at once (each user's messages in order), so one slow chat does not hold the others.
    let mut tell = Vec::new();
    for (user_id, wanted) in by_user {
        tell.push(tell_user(state, user_id, wanted));
    }
    futures::stream::iter(tell).buffer_unordered(8).collect::<Vec<usize>>().await.into_iter().sum()
}

async fn tell_user(state: &(impl Table + Cache + Telegram), user_id: String, wanted: Vec<(&'static str, UserChange)>) -> usize {
    let store = crate::live::store::LiveStore { client: state.dynamo(), table: &state.config().table_name };
    let settings = match store.notifications(&user_id).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(user_id, error = %e, "notification settings unreadable; not told");
            return 0;
        }
    };
    let Some(chat_id) = settings.telegram_chat_id else { return 0 };
    let events = settings.events();
    let mut sent = 0;
    for (kind, change) in wanted {
        if !events.iter().any(|e| e == kind) {
            continue;
        }
        // At most once: the record is claimed before the message goes.
        let claim = format!("tgsent:{}:{kind}", change.sequence_number);
        let mut conn = state.redis().clone();
        let first: Result<Option<String>, _> =
            redis::cmd("SET").arg(&claim).arg(1).arg("NX").arg("EX").arg(SENT_TTL_SECS).query_async(&mut conn).await;
        match first {
            Ok(Some(_)) => {}
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "telegram dedup unavailable; not told (never twice)");
                continue;
            }
        }
        if tokio::time::timeout(Duration::from_secs(6), send(state, chat_id, &notification_text(&change.change))).await == Ok(true) {
            sent += 1;
        }
    }
    sent
}
