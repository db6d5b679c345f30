//! Secrets Manager values: fetched during init, cached in-process for warm invocations and
//! refreshed after a TTL so a rotated secret is picked up without a redeploy.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::RwLock;

/// A value that never prints. `expose()` is the one way to read it, and greps well in review.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Secret(value)
    }
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Secret<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(Secret)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret {id} could not be fetched: {cause}")]
    Fetch { id: String, cause: String },
    #[error("secret {id} is malformed: {cause}")]
    Invalid { id: String, cause: String },
}

/// How a secret's JSON text becomes a typed value; `production` asks for the stricter checks.
pub type SecretParser<T> = fn(&str, bool) -> Result<T, String>;

pub struct CachedSecret<T> {
    client: aws_sdk_secretsmanager::Client,
    id: String,
    ttl: Duration,
    production: bool,
    parse: SecretParser<T>,
    slot: RwLock<Option<(Arc<T>, Instant)>>,
    /// When `refetch_at_most_every` last fetched.
    last_forced: std::sync::Mutex<Option<Instant>>,
}

impl<T> CachedSecret<T> {
    pub fn new(client: aws_sdk_secretsmanager::Client, id: String, ttl: Duration, production: bool, parse: SecretParser<T>) -> Self {
        CachedSecret { client, id, ttl, production, parse, slot: RwLock::new(None), last_forced: std::sync::Mutex::new(None) }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The cached value while it is fresh; otherwise a new fetch. A failed refresh keeps serving
    /// the last good value (logged), so a Secrets Manager hiccup does not take the API down.
    pub async fn get(&self) -> Result<Arc<T>, SecretError> {
        if let Some((value, at)) = self.slot.read().await.as_ref() {
            if at.elapsed() < self.ttl {
                return Ok(value.clone());
            }
        }
        let mut slot = self.slot.write().await;
        if let Some((value, at)) = slot.as_ref() {
            if at.elapsed() < self.ttl {
                return Ok(value.clone());
            }
        }
        self.refill(&mut slot).await
    }

    /// A fresh fetch, for a reader that met something newer than what it holds (a key it does not
    /// know), at most once per `min_interval` however many ask (else the cached value).
    pub async fn refetch_at_most_every(&self, min_interval: Duration) -> Result<Arc<T>, SecretError> {
        let mut slot = self.slot.write().await;
        {
            let mut last = self.last_forced.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if let (Some(at), Some((value, _))) = (*last, slot.as_ref()) {
                if at.elapsed() < min_interval {
                    return Ok(value.clone());
                }
            }
            *last = Some(Instant::now());
        }
        self.refill(&mut slot).await
    }

    /// Fetches into `slot`; a failed fetch keeps serving the last good value (logged), so a
    /// Secrets Manager hiccup does not take the API down.
    async fn refill(&self, slot: &mut Option<(Arc<T>, Instant)>) -> Result<Arc<T>, SecretError> {
        match self.fetch().await {
            Ok(value) => {
                let value = Arc::new(value);
                *slot = Some((value.clone(), Instant::now()));
                Ok(value)
            }
            Err(err) => match slot.as_ref() {
                Some((stale, _)) => {
                    tracing::warn!(secret_id = %self.id, error = %err, "secret refresh failed; serving the cached value");
                    Ok(stale.clone())
                }
                None => Err(err),
            },
        }
    }

    /// Drops the cached value so the next `get` fetches.
    pub async fn invalidate(&self) {
        *self.slot.write().await = None;
    }

    async fn fetch(&self) -> Result<T, SecretError> {
        let out = self.client.get_secret_value().secret_id(&self.id).send().await.map_err(|e| SecretError::Fetch {
            id: self.id.clone(),
            cause: aws_sdk_secretsmanager::error::DisplayErrorContext(e).to_string(),
        })?;
        let text = out.secret_string().ok_or_else(|| SecretError::Invalid { id: self.id.clone(), cause: "no SecretString".into() })?;
        (self.parse)(text, self.production).map_err(|cause| SecretError::Invalid { id: self.id.clone(), cause })
    }
}

/// Telegram Bot API credentials for guardian alerts.
#[derive(serde::Deserialize)]
pub struct TelegramSecret {
    pub bot_token: Secret<String>,
    pub chat_id: String,
}

pub fn parse_telegram(text: &str, _production: bool) -> Result<TelegramSecret, String> {
    serde_json::from_str(text).map_err(|e| format!("expected {{\"bot_token\",\"chat_id\"}}: {}", e.classify_name()))
}

/// The token Telegram presents to the webhook (`setWebhook`'s `secret_token`).
#[derive(serde::Deserialize)]
pub struct WebhookSecret {
    pub token: Secret<String>,
}

pub fn parse_webhook_secret(text: &str, _production: bool) -> Result<WebhookSecret, String> {
    let secret: WebhookSecret = serde_json::from_str(text).map_err(|e| format!("expected {{\"token\"}}: {}", e.classify_name()))?;
    // Telegram takes 1 to 256 of A-Z, a-z, 0-9, _ and -.
    let token = secret.token.expose();
    if token.is_empty() || token.len() > 256 || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err("the webhook token must be 1 to 256 of A-Z, a-z, 0-9, _ and -".into());
    }
    Ok(secret)
}

/// The application's Redis (ElastiCache RBAC) user.
#[derive(serde::Deserialize)]
pub struct RedisAuth {
    pub username: String,
    pub password: Secret<String>,
}

impl RedisAuth {
    /// `rediss://host:port` with this user's credentials in it.
    pub fn with_credentials(&self, url: &str) -> Result<String, String> {
        let (scheme, rest) = url.split_once("://").ok_or("REDIS_URL has no scheme")?;
        let rest = rest.rsplit_once('@').map(|(_, host)| host).unwrap_or(rest);
        let enc = |s: &str| {
            s.bytes()
                .map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
                .collect::<String>()
        };
        Ok(format!("{scheme}://{}:{}@{rest}", enc(&self.username), enc(self.password.expose())))
    }
}

pub fn parse_redis_auth(text: &str, _production: bool) -> Result<RedisAuth, String> {
    serde_json::from_str(text).map_err(|e| format!("expected {{\"username\",\"password\"}}: {}", e.classify_name()))
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    // Never echo serde's message: it can quote the secret's own text.
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "io error",
            serde_json::error::Category::Syntax => "not JSON",
            serde_json::error::Category::Data => "wrong fields",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}

pub(crate) fn json_shape_error(e: &serde_json::Error) -> &'static str {
    e.classify_name()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_credentials_are_url_encoded_into_the_url() {
        let auth = parse_redis_auth(r#"{"username":"app","password":"p@ss/w:rd"}"#, true).unwrap();
        assert_eq!(auth.with_credentials("rediss://cache.local:6379").unwrap(), "rediss://app:p%40ss%2Fw%3Ard@cache.local:6379");
    }

    #[test]
    fn secrets_never_print_their_value() {
        let s = Secret::new("hunter2".to_owned());
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn a_malformed_telegram_secret_does_not_echo_its_text() {
        let err = parse_telegram("{\"bot_token\": 12345678}", false).err().unwrap();
        assert!(!err.contains("12345678"), "{err}");
    }
}
