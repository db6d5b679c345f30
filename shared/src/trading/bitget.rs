//! Bitget USDT-M futures, API v2. Signed requests (`ACCESS-SIGN` = Base64(HMAC-SHA256(secret,
//! timestamp + METHOD + path[?query] + body))), timeouts on every call, retries with capped
//! exponential backoff and full jitter for reads, 429 honoured, a circuit breaker per execution
//! environment, and orders never resent blind.

use crate::secrets::Secret;
use crate::trading::exchange::{Exchange, ExchangeError, OrderGuard};
use crate::trading::model::{AccountView, ExchangeKind, OrderFill, OrderIntent, OrderStatus, OrderType, Position, PositionSide, Side};
use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rust_decimal::Decimal;
use serde_json::Value;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const PRODUCT_TYPE: &str = "USDT-FUTURES";
/// Bitget's error code for a `clientOid` it has seen before.
pub const DUPLICATE_CLIENT_OID: &str = "40786";

#[derive(Clone, serde::Deserialize)]
pub struct BitgetCredentials {
    pub api_key: String,
    pub api_secret: Secret<String>,
    pub passphrase: Secret<String>,
    pub demo: bool,
}

impl BitgetCredentials {
    /// The plaintext to encrypt. Deliberately not `Serialize`: nothing else may turn it into text.
    pub fn to_plaintext(&self) -> Vec<u8> {
        serde_json::json!({
            "api_key": self.api_key,
            "api_secret": self.api_secret.expose(),
            "passphrase": self.passphrase.expose(),
            "demo": self.demo,
        })
        .to_string()
        .into_bytes()
    }
}

impl std::fmt::Debug for BitgetCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BitgetCredentials").field("api_key", &"[redacted]").field("demo", &self.demo).finish()
    }
}

pub fn sign(secret: &str, timestamp: &str, method: &str, path_and_query: &str, body: &str) -> String {
    let mut mac =
        <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(timestamp.as_bytes());
    mac.update(method.as_bytes());
    mac.update(path_and_query.as_bytes());
    mac.update(body.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Bitget's documented request limits per account and endpoint, per second.
pub fn requests_per_second(path: &str) -> usize {
    match path {
        "/api/v2/mix/position/all-position"
        | "/api/v2/mix/account/set-leverage"
        | "/api/v2/mix/account/set-margin-mode"
        | "/api/v2/mix/account/set-position-mode" => 5,
        "/api/v2/mix/market/tickers"
        | "/api/v2/mix/market/contracts"
        | "/api/v2/mix/market/symbol-price"
        | "/api/v2/mix/market/candles"
        | "/api/v2/mix/market/history-candles" => 20,
        _ => 10,
    }
}

/// Paces this environment's calls so that it never exceeds Bitget's per-account limits itself
/// (as ccxt's `enableRateLimit` does): a sliding one-second window per (account, endpoint).
#[derive(Default)]
pub struct RateGate {
    windows: Mutex<std::collections::HashMap<(String, &'static str), std::collections::VecDeque<Instant>>>,
}

impl RateGate {
    /// How long to wait before the next call of `account` to `path` (zero: go, and it is counted).
    fn reserve(&self, account: &str, path: &'static str) -> Duration {
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let window = windows.entry((account.to_owned(), path)).or_default();
        while window.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1)) {
            window.pop_front();
        }
        match window.front() {
            Some(oldest) if window.len() >= requests_per_second(path) => Duration::from_secs(1) - now.duration_since(*oldest),
            _ => {
                window.push_back(now);
                Duration::ZERO
            }
        }
    }

    pub async fn acquire(&self, account: &str, path: &'static str) {
        loop {
            let wait = self.reserve(account, path);
            if wait.is_zero() {
                return;
            }
            tokio::time::sleep(wait).await;
        }
    }
}

/// Opens after `threshold` consecutive failures and refuses calls for `cooldown`; then lets one
/// trial call through (half-open) and closes again on its success.
pub struct CircuitBreaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<(u32, Option<Instant>)>,
}

impl CircuitBreaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        CircuitBreaker { threshold, cooldown, state: Mutex::new((0, None)) }
    }

    pub fn allow(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match state.1 {
            Some(until) if Instant::now() < until => false,
            Some(_) => {
                // Half-open: this caller is the trial; others wait for its outcome.
                state.1 = Some(Instant::now() + self.cooldown);
                true
            }
            None => true,
        }
    }

    pub fn record(&self, success: bool) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if success {
            *state = (0, None);
        } else {
            state.0 += 1;
            if state.0 >= self.threshold {
                state.1 = Some(Instant::now() + self.cooldown);
            }
        }
    }

    pub fn is_open(&self) -> bool {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.1.is_some_and(|until| Instant::now() < until)
    }
}

#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { attempts: 3, base: Duration::from_millis(100), cap: Duration::from_secs(2) }
    }
}

impl RetryPolicy {
    /// Full jitter: uniform in [0, min(cap, base × 2^attempt)].
    pub fn backoff(&self, attempt: u32) -> Duration {
        use rand::Rng;
        let ceiling = self.base.saturating_mul(2u32.saturating_pow(attempt)).min(self.cap);
        Duration::from_millis(rand::thread_rng().gen_range(0..=ceiling.as_millis() as u64))
    }
}

/// Shared per execution environment: the HTTP pool, the base URL and the circuit breaker.
pub struct BitgetClient {
    pub http: reqwest::Client,
    pub base_url: String,
    pub breaker: Arc<CircuitBreaker>,
    pub retry: RetryPolicy,
    pub gate: Arc<RateGate>,
    /// The contract book and when it was fetched; refreshed after `CONTRACTS_TTL`.
    contract_book: tokio::sync::Mutex<Option<(Instant, ContractBook)>>,
}

/// Every USDT-M contract by symbol, shared by the requests of one execution environment.
pub type ContractBook = Arc<std::collections::HashMap<String, crate::trading::contracts::ContractSpec>>;

/// How long a fetched contract book is used before it is fetched again.
pub const CONTRACTS_TTL: Duration = Duration::from_secs(3600);

enum Attempt {
    Done(Value),
    /// Worth another try after this long (429, 5xx, timeout) — reads only.
    Retry(Option<Duration>, ExchangeError),
    Fail(ExchangeError),
}

fn map_error_code(code: &str, message: &str) -> ExchangeError {
    match code {
        "40774" => ExchangeError::PositionModeMismatch,
        "43012" | "40762" => ExchangeError::InsufficientBalance,
        "40006" | "40009" | "40011" | "40012" | "40037" | "40038" | "40014" => ExchangeError::InvalidCredentials,
        _ => ExchangeError::Rejected { code: code.to_owned(), message: message.chars().take(200).collect() },
    }
}

impl BitgetClient {
    pub fn new(http: reqwest::Client, base_url: &str) -> Self {
        BitgetClient {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            breaker: Arc::new(CircuitBreaker::new(5, Duration::from_secs(30))),
            retry: RetryPolicy::default(),
            gate: Arc::new(RateGate::default()),
            contract_book: tokio::sync::Mutex::new(None),
        }
    }

    /// The contract book: fetched on first use and again once it is an hour old. A failed
    /// refresh keeps the book it had (specs change rarely, and closes must not wait on them);
    /// with no book at all, the exchange's error.
    pub async fn contracts(&self) -> Result<ContractBook, ExchangeError> {
        let mut book = self.contract_book.lock().await;
        if let Some((fetched, specs)) = book.as_ref() {
            if fetched.elapsed() < CONTRACTS_TTL {
                return Ok(specs.clone());
            }
        }
        match self.get("/api/v2/mix/market/contracts", &format!("productType={PRODUCT_TYPE}"), None).await {
            Ok(data) => {
                let specs: ContractBook = Arc::new(crate::trading::contracts::parse_contracts(&data));
                *book = Some((Instant::now(), specs.clone()));
                Ok(specs)
            }
            Err(e) => match book.as_ref() {
                Some((_, stale)) => {
                    tracing::warn!(error = %e, "contract book not refreshed; using the last one");
                    Ok(stale.clone())
                }
                None => Err(e),
            },
        }
    }

    async fn attempt(&self, method: &str, path: &'static str, query: &str, body: &str, creds: Option<&BitgetCredentials>) -> Attempt {
        self.gate.acquire(creds.map(|c| c.api_key.as_str()).unwrap_or("public"), path).await;
        if !self.breaker.allow() {
            return Attempt::Fail(ExchangeError::CircuitOpen);
        }
        let path_and_query = if query.is_empty() { path.to_owned() } else { format!("{path}?{query}") };
        let url = format!("{}{}", self.base_url, path_and_query);
        let mut request = match method {
            "POST" => self.http.post(&url).body(body.to_owned()),
            _ => self.http.get(&url),
        }
        .header("Content-Type", "application/json")
        .header("locale", "en-US");
        if let Some(c) = creds {
            let timestamp = chrono::Utc::now().timestamp_millis().to_string();
            request = request
                .header("ACCESS-KEY", &c.api_key)
                .header("ACCESS-SIGN", sign(c.api_secret.expose(), &timestamp, method, &path_and_query, body))
                .header("ACCESS-TIMESTAMP", timestamp)
                .header("ACCESS-PASSPHRASE", c.passphrase.expose());
            if c.demo {
                request = request.header("paptrading", "1");
            }
        }
        // Only exchange-wide failures count against the breaker every user shares: a public call
        // that fails. One account's failing private calls (bad keys, its own errors, its own
        // timeouts) must never stop another account's closes.
        let exchange_wide = creds.is_none();
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                if exchange_wide {
                    self.breaker.record(false);
                }
                let what = if e.is_timeout() { "timeout" } else { "connection failed" };
                return Attempt::Retry(None, ExchangeError::Unavailable(format!("{what} calling {path}")));
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = match response.text().await {
            Ok(t) => t,
            Err(_) => {
                if exchange_wide {
                    self.breaker.record(false);
                }
                return Attempt::Retry(None, ExchangeError::Unavailable(format!("timeout reading {path}")));
            }
        };
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let code = json["code"].as_str().unwrap_or("").to_owned();
        let message = json["msg"].as_str().unwrap_or("").to_owned();
        if status.as_u16() == 429 || code == "429" {
            // Rate limited: the exchange is healthy, so the breaker does not count it.
            return Attempt::Retry(
                retry_after.or(Some(Duration::from_millis(200))),
                ExchangeError::Unavailable("rate limited (429)".into()),
            );
        }
        if status.is_server_error() {
            if exchange_wide {
                self.breaker.record(false);
            }
            return Attempt::Retry(retry_after, ExchangeError::Unavailable(format!("{status} from {path}")));
        }
        self.breaker.record(true);
        if status.as_u16() == 401 || status.as_u16() == 403 {
            return Attempt::Fail(if code.is_empty() { ExchangeError::InvalidCredentials } else { map_error_code(&code, &message) });
        }
        if code == "00000" {
            return Attempt::Done(json["data"].clone());
        }
        Attempt::Fail(map_error_code(if code.is_empty() { "unknown" } else { &code }, &message))
    }

    /// A read: retried on 429, 5xx and timeouts with capped, fully jittered backoff.
    pub async fn get(&self, path: &'static str, query: &str, creds: Option<&BitgetCredentials>) -> Result<Value, ExchangeError> {
        let mut last = ExchangeError::Unavailable("no attempt".into());
        for attempt in 0..self.retry.attempts {
            match self.attempt("GET", path, query, "", creds).await {
                Attempt::Done(v) => return Ok(v),
                Attempt::Fail(e) => return Err(e),
                Attempt::Retry(after, e) => {
                    last = e;
                    if attempt + 1 < self.retry.attempts {
                        let wait = self.retry.backoff(attempt).max(after.unwrap_or_default()).min(Duration::from_secs(5));
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        Err(last)
    }

    /// A write: one attempt. The caller decides what an unknown outcome means.
    pub async fn post(&self, path: &'static str, body: &Value, creds: &BitgetCredentials) -> Result<Value, ExchangeError> {
        let body = body.to_string();
        match self.attempt("POST", path, "", &body, Some(creds)).await {
            Attempt::Done(v) => Ok(v),
            Attempt::Fail(e) | Attempt::Retry(_, e) => Err(e),
        }
    }

    /// Mark prices of every USDT-M contract in one public call.
    pub async fn mark_prices(&self) -> Result<std::collections::HashMap<String, Decimal>, ExchangeError> {
        let data = self.get("/api/v2/mix/market/tickers", &format!("productType={PRODUCT_TYPE}"), None).await?;
        Ok(data.as_array().into_iter().flatten().filter_map(|t| Some((t["symbol"].as_str()?.to_owned(), dec(&t["markPrice"])?))).collect())
    }

    /// One signed read, used to check credentials: the account's position mode. Only the
    /// single-account endpoint carries `posMode` (the account list does not); the mode is the
    /// same for every symbol of the product type, so `symbol` is any contract.
    pub async fn position_mode(&self, creds: &BitgetCredentials, symbol: &str) -> Result<String, ExchangeError> {
        let query = format!("symbol={symbol}&productType={PRODUCT_TYPE}&marginCoin=USDT");
        let data = self.get("/api/v2/mix/account/account", &query, Some(creds)).await?;
        match data["posMode"].as_str() {
            Some(mode @ ("one_way_mode" | "hedge_mode")) => Ok(mode.to_owned()),
            other => Err(ExchangeError::Rejected { code: "posMode".into(), message: format!("unexpected position mode {other:?}") }),
        }
    }
}

fn dec(v: &Value) -> Option<Decimal> {
    match v {
        Value::String(s) if !s.is_empty() => Decimal::from_str(s).ok(),
        Value::Number(n) => Decimal::from_str(&n.to_string()).ok(),
        _ => None,
    }
}

pub struct BitgetExchange {
    pub client: Arc<BitgetClient>,
    pub creds: BitgetCredentials,
    /// `one_way_mode` or `hedge_mode`, recorded when the credentials were saved.
    pub position_mode: String,
    /// The bot's margin mode: what orders carry and which amount is available to open.
    pub margin_mode: crate::trading::model::MarginMode,
}

fn order_state(state: &str) -> OrderStatus {
    match state {
        "filled" => OrderStatus::Filled,
        "canceled" | "cancelled" => OrderStatus::Canceled,
        "live" | "new" | "partially_filled" | "init" => OrderStatus::Open,
        _ => OrderStatus::Pending,
    }
}

impl BitgetExchange {
    fn order_body(&self, intent: &OrderIntent) -> Value {
        let mut body = serde_json::json!({
            "symbol": intent.symbol,
            "productType": PRODUCT_TYPE,
            "marginMode": self.margin_mode.as_str(),
            "marginCoin": "USDT",
            "size": intent.size.normalize().to_string(),
            "orderType": match intent.order_type { OrderType::Market => "market", OrderType::Limit => "limit" },
            "clientOid": intent.client_order_id,
        });
        if self.position_mode == "hedge_mode" {
            // Hedge mode names the position: closing a long is side=buy with tradeSide=close.
            let (side, trade_side) = if intent.reduce_only {
                (
                    match intent.side {
                        Side::Sell => "buy",
                        Side::Buy => "sell",
                    },
                    "close",
                )
            } else {
                (
                    match intent.side {
                        Side::Buy => "buy",
                        Side::Sell => "sell",
                    },
                    "open",
                )
            };
            body["side"] = side.into();
            body["tradeSide"] = trade_side.into();
        } else {
            body["side"] = match intent.side {
                Side::Buy => "buy",
                Side::Sell => "sell",
            }
            .into();
            body["reduceOnly"] = if intent.reduce_only { "YES" } else { "NO" }.into();
        }
        if let (OrderType::Limit, Some(price)) = (intent.order_type, intent.price) {
            body["price"] = price.normalize().to_string().into();
            body["force"] = "gtc".into();
        }
        body
    }
}

/// One trade of the account, as Bitget's fill history reports it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ExchangeFill {
    pub trade_id: String,
    pub order_id: String,
    pub symbol: String,
    /// What the trade did (a hedge-mode close of a long sells).
    pub side: Side,
    pub size: Decimal,
    pub price: Decimal,
    /// What it cost (positive: paid); Bitget reports fees paid as negative amounts.
    pub fee: Decimal,
    pub realized_pnl: Decimal,
    pub filled_ms: i64,
}

/// Bitget answers fills for at most this span per call.
pub const FILL_WINDOW_MS: i64 = 7 * 86_400_000;

/// What one read of a span of the account's fills found.
#[derive(Debug, Clone, PartialEq)]
pub enum FillSpan {
    /// Every fill of the span, newest first.
    Complete(Vec<ExchangeFill>),
    /// More fills than one read takes ([`MAX_FILL_PAGES`] pages): read a shorter span. The
    /// span's newest fills, as far back as they were read, reach back to `oldest_ms`.
    TooMany { oldest_ms: i64 },
}

impl BitgetExchange {
    /// The account's fills between two times at most a week apart (unix ms, both included),
    /// every page (100 a page, `idLessThan` the last page's `endId`), up to [`MAX_FILL_PAGES`].
    pub async fn fills(&self, from_ms: i64, to_ms: i64) -> Result<FillSpan, ExchangeError> {
        if to_ms < from_ms || to_ms - from_ms > FILL_WINDOW_MS {
            return Err(ExchangeError::Rejected { code: "fill_window".into(), message: "fills are read a week at a time".into() });
        }
        let mut fills = Vec::new();
        let mut before: Option<String> = None;
        for _ in 0..MAX_FILL_PAGES {
            let mut query = format!("productType={PRODUCT_TYPE}&startTime={from_ms}&endTime={to_ms}&limit=100");
            if let Some(id) = &before {
                query.push_str(&format!("&idLessThan={id}"));
            }
            let data = self.client.get("/api/v2/mix/order/fills", &query, Some(&self.creds)).await?;
            let rows = data["fillList"].as_array().map(Vec::as_slice).unwrap_or_default();
            for row in rows {
                // A row this client cannot read is an error, never a fill skipped for good.
                fills.push(exchange_fill(row).ok_or_else(|| ExchangeError::Unavailable(format!("an unreadable fill: {row}")))?);
            }
            before = data["endId"].as_str().filter(|id| !id.is_empty()).map(str::to_owned);
            if rows.len() < 100 || before.is_none() {
                return Ok(FillSpan::Complete(fills));
            }
        }
        Ok(FillSpan::TooMany { oldest_ms: fills.iter().map(|f| f.filled_ms).min().unwrap_or(from_ms) })
    }

    /// The client order id of the account's order `order_id` on `symbol` (None: Bitget does not
    /// know the order, or it has none).
    pub async fn client_order_id_of(&self, symbol: &str, order_id: &str) -> Result<Option<String>, ExchangeError> {
        let query = format!("symbol={symbol}&productType={PRODUCT_TYPE}&orderId={order_id}");
        match self.client.get("/api/v2/mix/order/detail", &query, Some(&self.creds)).await {
            Ok(data) => Ok(data["clientOid"].as_str().filter(|c| !c.is_empty()).map(str::to_owned)),
            // Bitget does not know the order (40109) or will never read the question (40017,
            // parameter verification): the order is taken as one made by hand, so a lookup that
            // can never succeed does not hold the sync up. Anything else is asked again later.
            Err(ExchangeError::Rejected { code, .. }) if code == "40109" || code == "40017" => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl BitgetExchange {
    /// The client order ids of the account's ended orders created between two times (unix ms),
    /// by Bitget order id: the order history's pages (100 a page, newest first), until every
    /// `wanted` order is named or [`MAX_FILL_PAGES`] pages are read.
    pub async fn ended_order_client_ids(
        &self,
        from_ms: i64,
        to_ms: i64,
        wanted: &std::collections::HashSet<&str>,
    ) -> Result<std::collections::HashMap<String, String>, ExchangeError> {
        let mut ids = std::collections::HashMap::new();
        let mut before: Option<String> = None;
        for _ in 0..MAX_FILL_PAGES {
            let mut query = format!("productType={PRODUCT_TYPE}&startTime={from_ms}&endTime={to_ms}&limit=100");
            if let Some(id) = &before {
                query.push_str(&format!("&idLessThan={id}"));
            }
            let data = self.client.get("/api/v2/mix/order/orders-history", &query, Some(&self.creds)).await?;
            let rows = data["entrustedList"].as_array().map(Vec::as_slice).unwrap_or_default();
            for row in rows {
                if let (Some(order_id), Some(client_oid)) = (row["orderId"].as_str(), row["clientOid"].as_str()) {
                    ids.insert(order_id.to_owned(), client_oid.to_owned());
                }
            }
            before = data["endId"].as_str().filter(|id| !id.is_empty()).map(str::to_owned);
            if rows.len() < 100 || before.is_none() || wanted.iter().all(|id| ids.contains_key(*id)) {
                return Ok(ids);
            }
        }
        // A lookup, not a history: what is not here is asked for one order at a time.
        Ok(ids)
    }
}

/// Pages of fills (or of ended orders) one read takes at most: 1,000 rows, a few seconds.
pub const MAX_FILL_PAGES: usize = 10;

fn exchange_fill(f: &Value) -> Option<ExchangeFill> {
    let fee: Decimal = f["feeDetail"].as_array().into_iter().flatten().filter_map(|d| dec(&d["totalFee"])).sum();
    let side = match (f["side"].as_str(), f["posMode"].as_str(), f["tradeSide"].as_str()) {
        (Some("buy"), Some("hedge_mode"), Some("close")) => Side::Sell,
        (Some("sell"), Some("hedge_mode"), Some("close")) => Side::Buy,
        (Some("buy"), _, _) => Side::Buy,
        _ => Side::Sell,
    };
    Some(ExchangeFill {
        trade_id: f["tradeId"].as_str()?.to_owned(),
        order_id: f["orderId"].as_str().unwrap_or_default().to_owned(),
        symbol: f["symbol"].as_str()?.to_owned(),
        side,
        size: dec(&f["baseVolume"])?,
        price: dec(&f["price"])?,
        fee: -fee,
        realized_pnl: dec(&f["profit"]).unwrap_or_default(),
        filled_ms: f["cTime"].as_str()?.parse().ok()?,
    })
}

#[async_trait]
impl Exchange for BitgetExchange {
    fn kind(&self) -> ExchangeKind {
        ExchangeKind::Bitget
    }

    async fn configure_symbol(&self, symbol: &str, mode: crate::trading::model::MarginMode, leverage: u32) -> Result<(), ExchangeError> {
        let base = serde_json::json!({"symbol": symbol, "productType": PRODUCT_TYPE, "marginCoin": "USDT"});
        let mut margin = base.clone();
        margin["marginMode"] = mode.as_str().into();
        self.client.post("/api/v2/mix/account/set-margin-mode", &margin, &self.creds).await?;
        let mut lever = base;
        lever["leverage"] = leverage.to_string().into();
        self.client.post("/api/v2/mix/account/set-leverage", &lever, &self.creds).await?;
        Ok(())
    }

    async fn account(&self) -> Result<AccountView, ExchangeError> {
        let data = self.client.get("/api/v2/mix/account/accounts", &format!("productType={PRODUCT_TYPE}"), Some(&self.creds)).await?;
        let usdt = data.as_array().into_iter().flatten().find(|a| a["marginCoin"].as_str() == Some("USDT")).cloned().unwrap_or(Value::Null);
        let positions = self.positions().await?;
        // What Bitget lets this account open with, in the bot's margin mode (`available` is the
        // wallet's free balance, which ignores unrealised profit and what the mode may use).
        let open_with = match self.margin_mode {
            crate::trading::model::MarginMode::Isolated => "isolatedMaxAvailable",
            crate::trading::model::MarginMode::Crossed => "crossedMaxAvailable",
        };
        Ok(AccountView {
            exchange: ExchangeKind::Bitget,
            equity: dec(&usdt["accountEquity"]).or_else(|| dec(&usdt["usdtEquity"])).unwrap_or_default(),
            available: dec(&usdt[open_with]).or_else(|| dec(&usdt["available"])).unwrap_or_default(),
            unrealized_pnl: dec(&usdt["unrealizedPL"]).unwrap_or_else(|| positions.iter().map(|p| p.unrealized_pnl).sum()),
            positions,
        })
    }

    async fn positions(&self) -> Result<Vec<Position>, ExchangeError> {
        let data = self
            .client
            .get("/api/v2/mix/position/all-position", &format!("productType={PRODUCT_TYPE}&marginCoin=USDT"), Some(&self.creds))
            .await?;
        Ok(data
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let size = dec(&p["total"])?;
                if size.is_zero() {
                    return None;
                }
                Some(Position {
                    symbol: p["symbol"].as_str()?.to_owned(),
                    side: if p["holdSide"].as_str()? == "short" { PositionSide::Short } else { PositionSide::Long },
                    size,
                    entry_price: dec(&p["openPriceAvg"]).unwrap_or_default(),
                    mark_price: dec(&p["markPrice"]).unwrap_or_default(),
                    unrealized_pnl: dec(&p["unrealizedPL"]).unwrap_or_default(),
                    // Bitget's creation time of the position: a new one after it went flat.
                    instance: format!("c{}", p["cTime"].as_str().unwrap_or_default()),
                    available: dec(&p["available"]).unwrap_or(size).min(size),
                })
            })
            .collect())
    }

    async fn place_order(&self, intent: &OrderIntent, _guard: OrderGuard) -> Result<OrderFill, ExchangeError> {
        let body = self.order_body(intent);
        for attempt in 0..2 {
            match self.client.post("/api/v2/mix/order/place-order", &body, &self.creds).await {
                Ok(_) => break,
                // The outcome is unknown (timeout, 5xx, 429): look the order up before anything else.
                Err(ExchangeError::Unavailable(why)) => {
                    tracing::warn!(client_oid = %intent.client_order_id, reason = %why, "order outcome unknown; looking it up");
                    match self.find_order(&intent.symbol, &intent.client_order_id).await? {
                        Some(fill) => return Ok(fill),
                        None if attempt == 0 => continue, // provably not placed: one resend, same clientOid
                        None => return Err(ExchangeError::Unavailable(why)),
                    }
                }
                // Bitget's "duplicate clientOid": an earlier attempt was placed; read it back.
                Err(ExchangeError::Rejected { code, .. }) if code == DUPLICATE_CLIENT_OID => break,
                Err(e) => return Err(e),
            }
        }
        // Placed: read back its fill (a market order fills at once; a limit order may rest).
        Ok(self.find_order(&intent.symbol, &intent.client_order_id).await?.unwrap_or(OrderFill {
            order_id: String::new(),
            status: OrderStatus::Pending,
            filled_size: Decimal::ZERO,
            avg_price: None,
            fee: Decimal::ZERO,
            realized_pnl: Decimal::ZERO,
        }))
    }

    async fn open_orders(&self, symbol: &str) -> Result<Vec<crate::trading::model::OpenOrder>, ExchangeError> {
        let mut orders = Vec::new();
        let mut before: Option<String> = None;
        // Pages of up to 100, newest first, until a page comes back short.
        for _ in 0..50 {
            let mut query = format!("productType={PRODUCT_TYPE}&symbol={symbol}&limit=100");
            if let Some(id) = &before {
                query.push_str(&format!("&idLessThan={id}"));
            }
            let data = self.client.get("/api/v2/mix/order/orders-pending", &query, Some(&self.creds)).await?;
            let page: Vec<crate::trading::model::OpenOrder> = data["entrustedList"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|o| {
                    Some(crate::trading::model::OpenOrder {
                        order_id: o["orderId"].as_str()?.to_owned(),
                        client_order_id: o["clientOid"].as_str().unwrap_or_default().to_owned(),
                        symbol: o["symbol"].as_str().unwrap_or(symbol).to_owned(),
                        reduce_only: o["reduceOnly"].as_str() == Some("YES") || o["tradeSide"].as_str() == Some("close"),
                        side: match (o["side"].as_str(), o["posMode"].as_str(), o["tradeSide"].as_str()) {
                            // A hedge-mode close trades against the side it names.
                            (Some("buy"), Some("hedge_mode"), Some("close")) => crate::trading::model::Side::Sell,
                            (Some("sell"), Some("hedge_mode"), Some("close")) => crate::trading::model::Side::Buy,
                            (Some("buy"), _, _) => crate::trading::model::Side::Buy,
                            _ => crate::trading::model::Side::Sell,
                        },
                        size: dec(&o["size"])?,
                        price: dec(&o["price"]),
                    })
                })
                .collect();
            let full = page.len() == 100;
            before = data["endId"].as_str().map(str::to_owned);
            orders.extend(page);
            if !full || before.is_none() {
                break;
            }
        }
        Ok(orders)
    }

    async fn cancel_order(&self, symbol: &str, client_order_id: &str) -> Result<crate::trading::model::CancelOutcome, ExchangeError> {
        let body = serde_json::json!({"symbol": symbol, "productType": PRODUCT_TYPE, "marginCoin": "USDT", "clientOid": client_order_id});
        match self.client.post("/api/v2/mix/order/cancel-order", &body, &self.creds).await {
            Ok(_) => Ok(crate::trading::model::CancelOutcome::Canceled),
            // 22001: no order to cancel (filled or canceled); 40768: no such order.
            Err(ExchangeError::Rejected { code, .. }) if code == "22001" || code == "40768" => {
                Ok(crate::trading::model::CancelOutcome::NotOpen)
            }
            Err(e) => Err(e),
        }
    }

    async fn find_order(&self, symbol: &str, client_order_id: &str) -> Result<Option<OrderFill>, ExchangeError> {
        let query = format!("symbol={symbol}&productType={PRODUCT_TYPE}&clientOid={client_order_id}");
        match self.client.get("/api/v2/mix/order/detail", &query, Some(&self.creds)).await {
            Ok(d) if d.is_null() => Ok(None),
            Ok(d) => Ok(Some(OrderFill {
                order_id: d["orderId"].as_str().unwrap_or_default().to_owned(),
                status: order_state(d["state"].as_str().unwrap_or("")),
                filled_size: dec(&d["baseVolume"]).unwrap_or_default(),
                avg_price: dec(&d["priceAvg"]),
                fee: dec(&d["fee"]).map(|f| f.abs()).unwrap_or_default(),
                realized_pnl: dec(&d["totalProfits"]).unwrap_or_default(),
            })),
            // 40109: "the order does not exist"
            Err(ExchangeError::Rejected { code, .. }) if code == "40109" => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_bitgets_recipe() {
        // HMAC-SHA256("secret", "1700000000000GET/api/v2/mix/account/accounts?productType=USDT-FUTURES"), base64
        let sig = sign("secret", "1700000000000", "GET", "/api/v2/mix/account/accounts?productType=USDT-FUTURES", "");
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(b"secret").unwrap();
        mac.update(b"1700000000000GET/api/v2/mix/account/accounts?productType=USDT-FUTURES");
        assert_eq!(sig, STANDARD.encode(mac.finalize().into_bytes()));
        assert_ne!(sig, sign("secret", "1700000000001", "GET", "/api/v2/mix/account/accounts?productType=USDT-FUTURES", ""));
    }

    #[test]
    fn the_breaker_opens_after_repeated_failures_and_half_opens_after_the_cooldown() {
        let breaker = CircuitBreaker::new(3, Duration::from_millis(50));
        for _ in 0..3 {
            assert!(breaker.allow());
            breaker.record(false);
        }
        assert!(!breaker.allow());
        std::thread::sleep(Duration::from_millis(60));
        assert!(breaker.allow(), "one trial after the cooldown");
        assert!(!breaker.allow(), "only one");
        breaker.record(true);
        assert!(breaker.allow());
    }

    #[test]
    fn calls_are_paced_to_bitgets_limit_per_account_and_endpoint() {
        let gate = RateGate::default();
        let path = "/api/v2/mix/position/all-position";
        for _ in 0..5 {
            assert_eq!(gate.reserve("key-a", path), Duration::ZERO);
        }
        assert!(gate.reserve("key-a", path) > Duration::ZERO, "a sixth call within the second waits");
        assert_eq!(gate.reserve("key-b", path), Duration::ZERO, "another account is not slowed");
        assert_eq!(gate.reserve("key-a", "/api/v2/mix/order/detail"), Duration::ZERO, "another endpoint is not slowed");
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let policy = RetryPolicy { attempts: 5, base: Duration::from_millis(100), cap: Duration::from_millis(300) };
        for attempt in 0..10 {
            assert!(policy.backoff(attempt) <= Duration::from_millis(300));
        }
    }
}
