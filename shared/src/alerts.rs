//! Health alerts to a Telegram chat (Bot API `sendMessage`), sent when a check changes state —
//! not every minute — with a recovery message after. Locally they also go to the mail outbox.

use crate::mail::Email;
use crate::state::{Cache, Mail, Telegram};
use redis::Script;
use std::sync::LazyLock;
use std::time::Duration;

/// After a recovery, a new failure of the same check within this window is not announced again.
pub const ALERT_COOLDOWN_SECS: u64 = 15 * 60;

/// KEYS[1] = the check's hash. ARGV = observed ("ok"|"fail"), now, cooldown. Answers what to send.
static TRANSITION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local notified = redis.call('HGET', KEYS[1], 'notified') or 'ok'
local last = tonumber(redis.call('HGET', KEYS[1], 'last_sent') or '0')
local now = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'observed', ARGV[1])
redis.call('EXPIRE', KEYS[1], 7 * 86400)
if ARGV[1] == 'fail' and notified == 'ok' and now - last >= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'notified', 'fail', 'last_sent', now)
  return 'alert'
end
if ARGV[1] == 'ok' and notified == 'fail' then
  redis.call('HSET', KEYS[1], 'notified', 'ok', 'last_sent', now)
  return 'recovery'
end
return 'none'
"#,
    )
});

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Alert,
    Recovery,
    None,
}

/// Records the check's state; says whether an alert or a recovery message is due. Redis down
/// means no dedup is possible: say nothing rather than page every minute.
pub async fn transition(state: &impl Cache, check: &str, ok: bool) -> Transition {
    let mut conn = state.redis().clone();
    let result: redis::RedisResult<String> = TRANSITION
        .key(format!("alert:{}:{check}", state.config().table_name))
        .arg(if ok { "ok" } else { "fail" })
        .arg(chrono::Utc::now().timestamp())
        .arg(ALERT_COOLDOWN_SECS)
        .invoke_async(&mut conn)
        .await;
    match result.as_deref() {
        Ok("alert") => Transition::Alert,
        Ok("recovery") => Transition::Recovery,
        Ok(_) => Transition::None,
        Err(e) => {
            tracing::warn!(error = %e, check, "alert dedup unavailable");
            Transition::None
        }
    }
}

/// Sends one message. Failures are logged and reported as `false`, never raised: a broken alert
/// channel must not break the sweep.
pub async fn send(state: &(impl Mail + Telegram), text: &str) -> bool {
    if state.config().is_local() {
        let mail = Email { to: "telegram".into(), subject: "guardian alert".into(), body: text.to_owned(), code: None, token: None };
        if let Err(e) = state.mailer().send(&mail).await {
            tracing::warn!(error = %e, "alert not written to the outbox");
        }
    }
    let secret = match state.telegram().bot.get().await {
        Ok(s) if !s.bot_token.expose().is_empty() && !s.chat_id.is_empty() => s,
        Ok(_) => return state.config().is_local(),
        Err(e) => {
            tracing::warn!(error = %e, "telegram secret unavailable; alert not sent");
            return false;
        }
    };
    post_message(state, &secret, &secret.chat_id, text).await
}

/// Posts `text` to `chat_id` with the bot of `secret`, honouring one 429 `retry_after` (up to
/// 5 s). Failures are logged (never the URL: it holds the bot token) and answered `false`.
pub async fn post_message(state: &impl Telegram, secret: &crate::secrets::TelegramSecret, chat_id: &str, text: &str) -> bool {
    let url = format!("{}/bot{}/sendMessage", state.config().telegram_base_url.trim_end_matches('/'), secret.bot_token.expose());
    let body = serde_json::json!({"chat_id": chat_id, "text": text, "disable_web_page_preview": true});
    for attempt in 0..2 {
        match state.telegram().http.post(&url).json(&body).timeout(Duration::from_secs(3)).send().await {
            Ok(r) if r.status().is_success() => return true,
            Ok(r) if r.status().as_u16() == 429 && attempt == 0 => {
                let answer: serde_json::Value = r.json().await.unwrap_or_default();
                let wait = answer["parameters"]["retry_after"].as_u64().unwrap_or(1).min(5);
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
            Ok(r) => {
                // The URL holds the bot token: log the status only.
                tracing::warn!(status = r.status().as_u16(), "telegram refused the alert");
                return false;
            }
            Err(e) => {
                tracing::warn!(timeout = e.is_timeout(), "telegram unreachable; alert not sent");
                return false;
            }
        }
    }
    false
}
