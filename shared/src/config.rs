//! Typed configuration read from the environment once, at init, with clear errors.

use rust_decimal::Decimal;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppEnv {
    Local,
    Dev,
    Prod,
}

impl AppEnv {
    pub fn as_str(self) -> &'static str {
        match self {
            AppEnv::Local => "local",
            AppEnv::Dev => "dev",
            AppEnv::Prod => "prod",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarketData {
    /// Marks are read from the table (`make price`), for machines without internet.
    Store,
    /// Marks come from Bitget's public ticker endpoint.
    Bitget,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub app_env: AppEnv,
    pub version: &'static str,
    pub table_name: String,
    /// Holds the ElastiCache password once init merged it in: never printed.
    pub redis_url: crate::secrets::Secret<String>,
    /// PEM file of the CA that signed the Redis server's certificate, when it is not a public one.
    pub redis_ca_file: Option<PathBuf>,
    /// Secret with `{"username","password"}` of the ElastiCache user, merged into the URL at init.
    pub redis_auth_secret_id: Option<String>,
    /// Connect and response timeout of every Redis call: fail fast with a 503, never hang.
    pub redis_timeout: Duration,
    pub jwt_secret_id: String,
    pub encryption_secret_id: String,
    pub telegram_secret_id: String,
    /// `{"token"}`: what Telegram sends in `X-Telegram-Bot-Api-Secret-Token` to the webhook.
    pub telegram_webhook_secret_id: String,
    /// The bot users link their chat to (`https://t.me/<name>?start=<code>`).
    pub telegram_bot_username: String,
    /// API Gateway's Management API of the WebSocket stage (locally, `make dev`'s gateway).
    pub ws_management_url: String,
    pub secrets_ttl: Duration,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    pub access_token_ttl: Duration,
    /// A refresh token presented again within this window still gets a pair and revokes nothing.
    pub refresh_reuse_grace: Duration,
    /// The least time register, resend and forgot take to answer, whatever the address: the
    /// paths (account or not, mail sent or not) then cannot be told apart by their timing.
    pub auth_answer_floor: Duration,
    /// Per source address and auth route, per minute.
    pub ip_rate_limit_per_minute: u32,
    pub cors_allowed_origins: Vec<String>,
    pub outbox_path: PathBuf,
    pub mail_from: String,
    pub paper_start_balance: Decimal,
    pub market_data: MarketData,
    pub bitget_base_url: String,
    pub telegram_base_url: String,
    pub exchange_timeout: Duration,
    /// How long order and fill history is kept (its items' TTL), in days from when they were
    /// written.
    pub history_retention_days: u32,
    /// What a fills read spends copying Bitget's fill history at most before it answers; the
    /// rest is caught up by the next read.
    pub fill_sync_budget: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|key| std::env::var(key).ok().filter(|v| !v.trim().is_empty()))
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let app_env = match get("APP_ENV").as_deref().unwrap_or("local") {
            "local" => AppEnv::Local,
            "dev" => AppEnv::Dev,
            "prod" => AppEnv::Prod,
            other => return Err(ConfigError(format!("APP_ENV must be local, dev or prod, not {other:?}"))),
        };
        let required = |key: &str| get(key).ok_or_else(|| ConfigError(format!("{key} is required")));
        let or = |key: &str, default: &str| get(key).unwrap_or_else(|| default.to_owned());
        fn parsed<T: FromStr>(key: &str, raw: String) -> Result<T, ConfigError> {
            raw.parse().map_err(|_| ConfigError(format!("{key} has an invalid value {raw:?}")))
        }
        let secs = |key: &str, default: u64| -> Result<Duration, ConfigError> {
            Ok(Duration::from_secs(parsed(key, or(key, &default.to_string()))?))
        };

        let local = app_env == AppEnv::Local;
        let config = Config {
            app_env,
            version: env!("CARGO_PKG_VERSION"),
            table_name: if local { or("TABLE_NAME", "trading-bot-local") } else { required("TABLE_NAME")? },
            redis_url: crate::secrets::Secret::new(if local { or("REDIS_URL", "redis://127.0.0.1:6379") } else { required("REDIS_URL")? }),
            redis_ca_file: get("REDIS_CA_FILE").map(PathBuf::from),
            redis_auth_secret_id: get("REDIS_AUTH_SECRET_ID"),
            redis_timeout: Duration::from_millis(parsed("REDIS_TIMEOUT_MS", or("REDIS_TIMEOUT_MS", "1500"))?),
            jwt_secret_id: or("JWT_SECRET_ID", "trading-bot/local/jwt-keys"),
            encryption_secret_id: or("ENCRYPTION_SECRET_ID", "trading-bot/local/encryption-key"),
            telegram_secret_id: or("TELEGRAM_SECRET_ID", "trading-bot/local/telegram"),
            telegram_webhook_secret_id: or("TELEGRAM_WEBHOOK_SECRET_ID", "trading-bot/local/telegram-webhook"),
            telegram_bot_username: or("TELEGRAM_BOT_USERNAME", "trading_bot_local_bot"),
            ws_management_url: or("WS_MANAGEMENT_URL", "http://127.0.0.1:9001"),
            secrets_ttl: secs("SECRETS_TTL_SECS", 300)?,
            jwt_issuer: or("JWT_ISSUER", "https://trading-bot.local"),
            jwt_audience: or("JWT_AUDIENCE", "trading-bot-api"),
            access_token_ttl: secs("ACCESS_TOKEN_TTL_SECS", 900)?,
            refresh_reuse_grace: secs("REFRESH_REUSE_GRACE_SECS", 10)?,
            auth_answer_floor: Duration::from_millis(parsed("AUTH_ANSWER_FLOOR_MS", or("AUTH_ANSWER_FLOOR_MS", "500"))?),
            ip_rate_limit_per_minute: parsed("IP_RATE_LIMIT_PER_MINUTE", or("IP_RATE_LIMIT_PER_MINUTE", "30"))?,
            cors_allowed_origins: or("CORS_ALLOWED_ORIGINS", if local { "http://localhost:3000" } else { "" })
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            outbox_path: PathBuf::from(or("OUTBOX_PATH", ".local/outbox.jsonl")),
            mail_from: or("MAIL_FROM", "no-reply@trading-bot.local"),
            paper_start_balance: parsed("PAPER_START_BALANCE", or("PAPER_START_BALANCE", "10000"))?,
            market_data: match or("MARKET_DATA", if local { "store" } else { "bitget" }).as_str() {
                "store" => MarketData::Store,
                "bitget" => MarketData::Bitget,
                other => return Err(ConfigError(format!("MARKET_DATA must be store or bitget, not {other:?}"))),
            },
            bitget_base_url: or("BITGET_BASE_URL", "https://api.bitget.com"),
            telegram_base_url: or("TELEGRAM_BASE_URL", "https://api.telegram.org"),
            exchange_timeout: Duration::from_millis(parsed("EXCHANGE_TIMEOUT_MS", or("EXCHANGE_TIMEOUT_MS", "5000"))?),
            history_retention_days: parsed("HISTORY_RETENTION_DAYS", or("HISTORY_RETENTION_DAYS", "400"))?,
            fill_sync_budget: Duration::from_millis(parsed("FILL_SYNC_BUDGET_MS", or("FILL_SYNC_BUDGET_MS", "4000"))?),
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.access_token_ttl < Duration::from_secs(60) || self.access_token_ttl > Duration::from_secs(3600) {
            return Err(ConfigError("ACCESS_TOKEN_TTL_SECS must be between 60 and 3600".into()));
        }
        if self.refresh_reuse_grace > Duration::from_secs(10) {
            return Err(ConfigError("REFRESH_REUSE_GRACE_SECS must be at most 10".into()));
        }
        if self.auth_answer_floor > Duration::from_secs(5) {
            return Err(ConfigError("AUTH_ANSWER_FLOOR_MS must be at most 5000".into()));
        }
        if self.ip_rate_limit_per_minute == 0 {
            return Err(ConfigError("IP_RATE_LIMIT_PER_MINUTE must be positive".into()));
        }
        if !(1..=3650).contains(&self.history_retention_days) {
            return Err(ConfigError("HISTORY_RETENTION_DAYS must be between 1 and 3650".into()));
        }
        // With its 2 s grace it fits the functions' 10 s timeout; locally tests may wait longer.
        let most = if self.app_env == AppEnv::Local { 60_000 } else { 7_000 };
        if self.fill_sync_budget.is_zero() || self.fill_sync_budget > Duration::from_millis(most) {
            return Err(ConfigError(format!("FILL_SYNC_BUDGET_MS must be between 1 and {most}")));
        }
        if self.paper_start_balance <= Decimal::ZERO {
            return Err(ConfigError("PAPER_START_BALANCE must be positive".into()));
        }
        if self.app_env == AppEnv::Prod {
            if !self.redis_url.expose().starts_with("rediss://") {
                return Err(ConfigError("production requires TLS to Redis (a rediss:// REDIS_URL)".into()));
            }
            if self.cors_allowed_origins.is_empty() || self.cors_allowed_origins.iter().any(|o| o == "*") {
                return Err(ConfigError("production requires explicit CORS_ALLOWED_ORIGINS, never *".into()));
            }
            if self.ip_rate_limit_per_minute > 120 {
                return Err(ConfigError("IP_RATE_LIMIT_PER_MINUTE above 120 is not a production-safe limit".into()));
            }
        }
        Ok(())
    }

    pub fn is_local(&self) -> bool {
        self.app_env == AppEnv::Local
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config_from(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn local_mode_starts_with_defaults() {
        let config = config_from(&[]).unwrap();
        assert_eq!(config.app_env, AppEnv::Local);
        assert_eq!(config.access_token_ttl, Duration::from_secs(900));
        assert_eq!(config.market_data, MarketData::Store);
    }

    #[test]
    fn production_refuses_plain_redis_and_wildcard_cors() {
        let base = [("APP_ENV", "prod"), ("TABLE_NAME", "t"), ("CORS_ALLOWED_ORIGINS", "https://app.example")];
        let err = config_from(&[base[0], base[1], base[2], ("REDIS_URL", "redis://cache:6379")]).unwrap_err();
        assert!(err.0.contains("rediss://"), "{err}");
        let err = config_from(&[base[0], base[1], ("CORS_ALLOWED_ORIGINS", "*"), ("REDIS_URL", "rediss://cache:6379")]).unwrap_err();
        assert!(err.0.contains("CORS"), "{err}");
        assert!(config_from(&[base[0], base[1], base[2], ("REDIS_URL", "rediss://cache:6379")]).is_ok());
    }

    #[test]
    fn production_requires_a_table_name() {
        let err = config_from(&[("APP_ENV", "prod"), ("REDIS_URL", "rediss://c:6379")]).unwrap_err();
        assert!(err.0.contains("TABLE_NAME"), "{err}");
    }

    #[test]
    fn unknown_environment_is_refused() {
        assert!(config_from(&[("APP_ENV", "staging")]).is_err());
    }
}
