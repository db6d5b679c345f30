//! Everything a function builds once per execution environment, during init.

use crate::auth::tokens::{parse_jwt_keys, JwtKeys};
use crate::config::{AppEnv, Config};
use crate::crypto::{parse_encryption_keys, EncryptionKeys};
use crate::mail::Mailer;
use crate::secrets::{parse_redis_auth, parse_telegram, parse_webhook_secret, CachedSecret, TelegramSecret, WebhookSecret};
use redis::aio::ConnectionManager;
use std::sync::Arc;

pub struct AppState {
    pub config: Arc<Config>,
    pub dynamo: aws_sdk_dynamodb::Client,
    pub secrets_manager: aws_sdk_secretsmanager::Client,
    pub redis: ConnectionManager,
    pub jwt_keys: CachedSecret<JwtKeys>,
    pub encryption_keys: CachedSecret<EncryptionKeys>,
    pub telegram: CachedSecret<TelegramSecret>,
    pub telegram_webhook: CachedSecret<WebhookSecret>,
    pub mailer: Mailer,
    /// Exchange and Telegram calls; one pool per environment.
    pub http: reqwest::Client,
    /// Bitget's client with its circuit breaker, shared by every request of this environment.
    pub bitget: Arc<crate::trading::bitget::BitgetClient>,
}

/// What a function needs ready before its first request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Redis,
    JwtKeys,
    EncryptionKeys,
    Telegram,
    TelegramWebhook,
}

impl AppState {
    pub fn new(config: Config, sdk: &aws_config::SdkConfig) -> Result<Self, lambda_http::Error> {
        // rustls has two crypto backends compiled in (the AWS SDK's and redis's); pick one.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let secrets_manager = aws_sdk_secretsmanager::Client::new(sdk);
        let production = config.app_env == AppEnv::Prod;
        let ttl = config.secrets_ttl;
        let secret = |id: &String| (secrets_manager.clone(), id.clone(), ttl, production);
        let (c, id, t, p) = secret(&config.jwt_secret_id);
        let jwt_keys = CachedSecret::new(c, id, t, p, parse_jwt_keys);
        let (c, id, t, p) = secret(&config.encryption_secret_id);
        let encryption_keys = CachedSecret::new(c, id, t, p, parse_encryption_keys);
        let (c, id, t, p) = secret(&config.telegram_secret_id);
        let telegram = CachedSecret::new(c, id, t, p, parse_telegram);
        let (c, id, t, p) = secret(&config.telegram_webhook_secret_id);
        let telegram_webhook = CachedSecret::new(c, id, t, p, parse_webhook_secret);
        let http = reqwest::Client::builder()
            .timeout(config.exchange_timeout)
            .connect_timeout(std::time::Duration::from_secs(3))
            .pool_idle_timeout(std::time::Duration::from_secs(50))
            .build()?;
        let bitget = Arc::new(crate::trading::bitget::BitgetClient::new(http.clone(), &config.bitget_base_url));
        Ok(AppState {
            bitget,
            dynamo: aws_sdk_dynamodb::Client::new(sdk),
            redis: crate::redis_conn::connection_manager(&config)?,
            mailer: Mailer::from_config(&config, sdk),
            config: Arc::new(config),
            secrets_manager,
            jwt_keys,
            encryption_keys,
            telegram,
            telegram_webhook,
            http,
        })
    }

    /// Reads the configuration, builds every client and loads what `needs` lists. A missing or
    /// malformed secret fails init loudly; Redis being down does not (health must answer 503).
    pub async fn from_env(needs: &[Need]) -> Result<Self, lambda_http::Error> {
        let mut config = Config::from_env()?;
        let sdk = crate::aws::sdk_config().await;
        if let (Some(id), true) = (config.redis_auth_secret_id.clone(), needs.contains(&Need::Redis)) {
            let client = aws_sdk_secretsmanager::Client::new(&sdk);
            let auth = CachedSecret::new(client, id, config.secrets_ttl, config.app_env == AppEnv::Prod, parse_redis_auth);
            config.redis_url = crate::secrets::Secret::new(auth.get().await?.with_credentials(config.redis_url.expose())?);
        }
        let state = AppState::new(config, &sdk)?;
        state.warm(needs).await?;
        Ok(state)
    }

    pub fn trading_store(&self) -> crate::trading::store::TradingStore<'_> {
        crate::trading::store::TradingStore {
            client: &self.dynamo,
            table: &self.config.table_name,
            history_days: self.config.history_retention_days,
        }
    }

    pub async fn warm(&self, needs: &[Need]) -> Result<(), lambda_http::Error> {
        for need in needs {
            match need {
                Need::Redis => {
                    let mut conn = self.redis.clone();
                    if let Err(e) = redis::cmd("PING").query_async::<String>(&mut conn).await {
                        tracing::warn!(error = %e, "redis not reachable at init; will retry on use");
                    }
                }
                Need::JwtKeys => drop(self.jwt_keys.get().await?),
                Need::EncryptionKeys => drop(self.encryption_keys.get().await?),
                // Alerts are best effort: a missing Telegram secret is logged, never fatal.
                Need::Telegram => {
                    if let Err(e) = self.telegram.get().await {
                        tracing::warn!(error = %e, "telegram alerts disabled until the secret is readable");
                    }
                }
                Need::TelegramWebhook => drop(self.telegram_webhook.get().await?),
            }
        }
        Ok(())
    }
}
