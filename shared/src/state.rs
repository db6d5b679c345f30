//! What a function builds once per execution environment, during init: only the clients its
//! route uses.
//!
//! `App` has one slot per kind of client, each `()` until its builder step fills it, and a trait
//! per filled slot (`Table`, `Cache`, `Keys`, `Vault`, `Mail`, `Bitget`, `Telegram`). A route's
//! signature names the traits it touches, so a function's `main` compiles only when it built
//! them, and a client no route of the function uses is never built, so it is not linked:
//!
//! ```ignore
//! let app = App::from_env()?.table().keys().ready().await?;
//! run(service_fn(|req: Request| serve(&app, req, auth::me))).await
//! ```
//!
//! The steps only build; `ready` then makes every warm-up round trip the filled slots need (the
//! secrets' GetSecretValue calls, Redis's PING) at the same time, so init waits for the slowest
//! of them rather than their sum. A secret that cannot be loaded fails init there, loudly.

use crate::auth::tokens::{parse_jwt_keys, JwtKeys};
use crate::config::{AppEnv, Config};
use crate::crypto::{parse_encryption_keys, EncryptionKeys};
use crate::mail::Mailer;
use crate::secrets::{parse_redis_auth, parse_telegram, parse_webhook_secret, CachedSecret, TelegramSecret, WebhookSecret};
use crate::trading::bitget::BitgetClient;
use redis::aio::ConnectionManager;
use std::sync::Arc;

type InitError = lambda_http::Error;

/// The configuration and the SDK settings every function has; the clients are the slots.
pub struct App<D = (), R = (), K = (), V = (), M = (), X = (), T = ()> {
    pub config: Arc<Config>,
    sdk: crate::aws::SdkConfig,
    /// One Secrets Manager client for every secret the function loads (one connection pool).
    secrets_manager: Option<aws_sdk_secretsmanager::Client>,
    pub dynamo: D,
    pub redis: R,
    pub jwt_keys: K,
    pub encryption_keys: V,
    pub mailer: M,
    /// Bitget's client with its circuit breaker, shared by every request of this environment.
    pub bitget: X,
    pub telegram: T,
}

/// Telegram's Bot API: its HTTP pool, the bot token, and the secret its webhook calls carry.
pub struct TelegramClients {
    pub http: reqwest::Client,
    pub bot: CachedSecret<TelegramSecret>,
    pub webhook: CachedSecret<WebhookSecret>,
    /// Whether init fails without the webhook's secret (the webhook function's own).
    webhook_required: bool,
}

/// The Bitget client slot, filled.
pub type BitgetSlot = Arc<BitgetClient>;

/// Every client: what the tests, benchmarks and operator commands use.
pub type AppState = App<
    aws_sdk_dynamodb::Client,
    ConnectionManager,
    CachedSecret<JwtKeys>,
    CachedSecret<EncryptionKeys>,
    Mailer,
    Arc<BitgetClient>,
    TelegramClients,
>;

/// What every function has.
pub trait Deps: Sync {
    fn config(&self) -> &Arc<Config>;
}
/// The single table.
pub trait Table: Deps {
    fn dynamo(&self) -> &aws_sdk_dynamodb::Client;
    fn trading_store(&self) -> crate::trading::store::TradingStore<'_> {
        crate::trading::store::TradingStore {
            client: self.dynamo(),
            table: &self.config().table_name,
            history_days: self.config().history_retention_days,
        }
    }
}
/// Redis (ElastiCache): codes, limits, sessions' revocations, dedupe keys.
pub trait Cache: Deps {
    fn redis(&self) -> &ConnectionManager;
}
/// The token signing keys and the code pepper: what signs and verifies tokens.
pub trait Keys: Deps {
    fn jwt_keys(&self) -> &CachedSecret<JwtKeys>;
}
/// The keys exchange credentials and TOTP secrets are encrypted with.
pub trait Vault: Deps {
    fn encryption_keys(&self) -> &CachedSecret<EncryptionKeys>;
}
pub trait Mail: Deps {
    fn mailer(&self) -> &Mailer;
}
/// Bitget, for live trading and for contract specs and prices (paper trading too).
pub trait Bitget: Deps {
    fn bitget(&self) -> &Arc<BitgetClient>;
}
pub trait Telegram: Deps {
    fn telegram(&self) -> &TelegramClients;
}

impl<D: Sync, R: Sync, K: Sync, V: Sync, M: Sync, X: Sync, T: Sync> Deps for App<D, R, K, V, M, X, T> {
    fn config(&self) -> &Arc<Config> {
        &self.config
    }
}
impl<R: Sync, K: Sync, V: Sync, M: Sync, X: Sync, T: Sync> Table for App<aws_sdk_dynamodb::Client, R, K, V, M, X, T> {
    fn dynamo(&self) -> &aws_sdk_dynamodb::Client {
        &self.dynamo
    }
}
impl<D: Sync, K: Sync, V: Sync, M: Sync, X: Sync, T: Sync> Cache for App<D, ConnectionManager, K, V, M, X, T> {
    fn redis(&self) -> &ConnectionManager {
        &self.redis
    }
}
impl<D: Sync, R: Sync, V: Sync, M: Sync, X: Sync, T: Sync> Keys for App<D, R, CachedSecret<JwtKeys>, V, M, X, T> {
    fn jwt_keys(&self) -> &CachedSecret<JwtKeys> {
        &self.jwt_keys
    }
}
impl<D: Sync, R: Sync, K: Sync, M: Sync, X: Sync, T: Sync> Vault for App<D, R, K, CachedSecret<EncryptionKeys>, M, X, T> {
    fn encryption_keys(&self) -> &CachedSecret<EncryptionKeys> {
        &self.encryption_keys
    }
}
impl<D: Sync, R: Sync, K: Sync, V: Sync, X: Sync, T: Sync> Mail for App<D, R, K, V, Mailer, X, T> {
    fn mailer(&self) -> &Mailer {
        &self.mailer
    }
}
impl<D: Sync, R: Sync, K: Sync, V: Sync, M: Sync, T: Sync> Bitget for App<D, R, K, V, M, Arc<BitgetClient>, T> {
    fn bitget(&self) -> &Arc<BitgetClient> {
        &self.bitget
    }
}
impl<D: Sync, R: Sync, K: Sync, V: Sync, M: Sync, X: Sync> Telegram for App<D, R, K, V, M, X, TelegramClients> {
    fn telegram(&self) -> &TelegramClients {
        &self.telegram
    }
}

impl App {
    /// The configuration from the environment and the SDK settings; no client yet.
    pub fn from_env() -> Result<App, InitError> {
        let config = Config::from_env()?;
        Ok(App::from_parts(config, crate::aws::sdk_config()?))
    }

    pub fn from_parts(config: Config, sdk: crate::aws::SdkConfig) -> App {
        // rustls is built with ring alone; naming it keeps redis and reqwest on the same provider
        // even if a dependency ever compiles a second one in.
        let _ = rustls::crypto::ring::default_provider().install_default();
        App {
            config: Arc::new(config),
            sdk,
            secrets_manager: None,
            dynamo: (),
            redis: (),
            jwt_keys: (),
            encryption_keys: (),
            mailer: (),
            bitget: (),
            telegram: (),
        }
    }
}

impl AppState {
    /// Every client, each warmed as its function would warm it.
    pub async fn all(config: Config, sdk: crate::aws::SdkConfig) -> Result<AppState, InitError> {
        App::from_parts(config, sdk).table().redis().await?.keys().vault().mail().exchange()?.telegram()?.ready().await
    }
}

// Each builder step's type is the app with one more slot filled: seven parameters by design.
#[allow(clippy::type_complexity)]
impl<D, R, K, V, M, X, T> App<D, R, K, V, M, X, T> {
    pub fn sdk(&self) -> &crate::aws::SdkConfig {
        &self.sdk
    }

    fn cached_secret<S>(&mut self, id: &str, parse: crate::secrets::SecretParser<S>) -> CachedSecret<S> {
        let client = self.secrets_manager.get_or_insert_with(|| aws_sdk_secretsmanager::Client::new(&self.sdk)).clone();
        CachedSecret::new(client, id.to_owned(), self.config.secrets_ttl, self.config.app_env == AppEnv::Prod, parse)
    }

    pub fn table(self) -> App<aws_sdk_dynamodb::Client, R, K, V, M, X, T> {
        let dynamo = aws_sdk_dynamodb::Client::new(&self.sdk);
        let App { config, sdk, secrets_manager, redis, jwt_keys, encryption_keys, mailer, bitget, telegram, .. } = self;
        App { config, sdk, secrets_manager, dynamo, redis, jwt_keys, encryption_keys, mailer, bitget, telegram }
    }

    /// The connection manager, with the AUTH token from its secret when one is configured (that
    /// secret is read here: the URL needs it). Redis being down fails nothing: `ready` pings it,
    /// and the manager connects on first use (health answers 503).
    pub async fn redis(mut self) -> Result<App<D, ConnectionManager, K, V, M, X, T>, InitError> {
        if let Some(id) = self.config.redis_auth_secret_id.clone() {
            let auth = self.cached_secret(&id, parse_redis_auth).get().await?;
            let url = crate::secrets::Secret::new(auth.with_credentials(self.config.redis_url.expose())?);
            Arc::make_mut(&mut self.config).redis_url = url;
        }
        let redis = crate::redis_conn::connection_manager(&self.config)?;
        let App { config, sdk, secrets_manager, dynamo, jwt_keys, encryption_keys, mailer, bitget, telegram, .. } = self;
        Ok(App { config, sdk, secrets_manager, dynamo, redis, jwt_keys, encryption_keys, mailer, bitget, telegram })
    }

    /// The signing keys, loaded by `ready`: a missing or malformed secret fails init loudly.
    pub fn keys(mut self) -> App<D, R, CachedSecret<JwtKeys>, V, M, X, T> {
        let id = self.config.jwt_secret_id.clone();
        let jwt_keys = self.cached_secret(&id, parse_jwt_keys);
        let App { config, sdk, secrets_manager, dynamo, redis, encryption_keys, mailer, bitget, telegram, .. } = self;
        App { config, sdk, secrets_manager, dynamo, redis, jwt_keys, encryption_keys, mailer, bitget, telegram }
    }

    /// The encryption keys, loaded by `ready`: a missing or malformed secret fails init loudly.
    pub fn vault(mut self) -> App<D, R, K, CachedSecret<EncryptionKeys>, M, X, T> {
        let id = self.config.encryption_secret_id.clone();
        let encryption_keys = self.cached_secret(&id, parse_encryption_keys);
        let App { config, sdk, secrets_manager, dynamo, redis, jwt_keys, mailer, bitget, telegram, .. } = self;
        App { config, sdk, secrets_manager, dynamo, redis, jwt_keys, encryption_keys, mailer, bitget, telegram }
    }

    pub fn mail(self) -> App<D, R, K, V, Mailer, X, T> {
        let mailer = Mailer::from_config(&self.config, &self.sdk);
        let App { config, sdk, secrets_manager, dynamo, redis, jwt_keys, encryption_keys, bitget, telegram, .. } = self;
        App { config, sdk, secrets_manager, dynamo, redis, jwt_keys, encryption_keys, mailer, bitget, telegram }
    }

    pub fn exchange(self) -> Result<App<D, R, K, V, M, BitgetSlot, T>, InitError> {
        let http = http_client(self.config.exchange_timeout)?;
        let bitget = Arc::new(BitgetClient::new(http, &self.config.bitget_base_url));
        let App { config, sdk, secrets_manager, dynamo, redis, jwt_keys, encryption_keys, mailer, telegram, .. } = self;
        Ok(App { config, sdk, secrets_manager, dynamo, redis, jwt_keys, encryption_keys, mailer, bitget, telegram })
    }

    /// The Bot API's pool and secrets. `ready` loads the bot token best effort: a missing one is
    /// logged, never fatal (alerts and notifications wait for it).
    pub fn telegram(mut self) -> Result<App<D, R, K, V, M, X, TelegramClients>, InitError> {
        let (bot_id, webhook_id) = (self.config.telegram_secret_id.clone(), self.config.telegram_webhook_secret_id.clone());
        let telegram = TelegramClients {
            http: http_client(self.config.exchange_timeout)?,
            bot: self.cached_secret(&bot_id, parse_telegram),
            webhook: self.cached_secret(&webhook_id, parse_webhook_secret),
            webhook_required: false,
        };
        let App { config, sdk, secrets_manager, dynamo, redis, jwt_keys, encryption_keys, mailer, bitget, .. } = self;
        Ok(App { config, sdk, secrets_manager, dynamo, redis, jwt_keys, encryption_keys, mailer, bitget, telegram })
    }
}

impl<D, R, K, V, M, X> App<D, R, K, V, M, X, TelegramClients> {
    /// The webhook's secret is loaded by `ready` too, and fatally: the webhook cannot tell
    /// Telegram's calls without it.
    pub fn telegram_webhook(mut self) -> Self {
        self.telegram.webhook_required = true;
        self
    }
}

impl<D, R: WarmUp, K: WarmUp, V: WarmUp, M, X, T: WarmUp> App<D, R, K, V, M, X, T> {
    /// Every warm-up round trip of the filled slots, at once; the first fatal failure fails init.
    pub async fn ready(self) -> Result<Self, InitError> {
        futures::try_join!(self.redis.warm_up(), self.jwt_keys.warm_up(), self.encryption_keys.warm_up(), self.telegram.warm_up())?;
        Ok(self)
    }
}

/// What a slot does during init so the first request finds it warm.
pub trait WarmUp {
    fn warm_up(&self) -> impl std::future::Future<Output = Result<(), InitError>> + Send;
}

impl WarmUp for () {
    async fn warm_up(&self) -> Result<(), InitError> {
        Ok(())
    }
}

impl<S: Send + Sync> WarmUp for CachedSecret<S> {
    async fn warm_up(&self) -> Result<(), InitError> {
        drop(self.get().await?);
        Ok(())
    }
}

impl WarmUp for ConnectionManager {
    /// A connection now; Redis down is not fatal (health answers 503, the manager reconnects).
    async fn warm_up(&self) -> Result<(), InitError> {
        let mut conn = self.clone();
        if let Err(e) = redis::cmd("PING").query_async::<String>(&mut conn).await {
            tracing::warn!(error = %e, "redis not reachable at init; will retry on use");
        }
        Ok(())
    }
}

impl WarmUp for TelegramClients {
    async fn warm_up(&self) -> Result<(), InitError> {
        let bot = async {
            if let Err(e) = self.bot.get().await {
                tracing::warn!(error = %e, "telegram disabled until the secret is readable");
            }
            Ok::<(), InitError>(())
        };
        let webhook = async {
            match self.webhook_required {
                true => self.webhook.get().await.map(drop).map_err(InitError::from),
                false => Ok(()),
            }
        };
        futures::try_join!(bot, webhook).map(drop)
    }
}

fn http_client(timeout: std::time::Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(std::time::Duration::from_secs(3))
        .pool_idle_timeout(std::time::Duration::from_secs(50))
        .build()
}
