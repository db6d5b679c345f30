//! The trading routes. Each needs a valid access token and acts only on the caller's own data:
//! the user id comes from the token, never from the request.

use crate::error::ApiError;
use crate::http::{empty_response, header_str, json_response, parse_json, RequestContext};
use crate::state::{Bitget, Cache, Keys, Table, Vault};
use crate::trading::bitget::BitgetCredentials;
use crate::trading::bot;
use crate::trading::credentials;
use crate::trading::model::{decimal_input, optional_decimal_input, parse_decimal_raw, OrderType, Side};
use crate::trading::orders;
use crate::trading::service::{exchange_error, exchange_for, session, session_with_marks, Session};
use crate::trading::store::BotConfig;
use crate::trading::strategy::Strategy;
use http::StatusCode;
use lambda_http::{Body, Request, Response};
use rust_decimal::Decimal;
use serde::Deserialize;

type HandlerResult = Result<Response<Body>, ApiError>;

// ---------------------------------------------------------------- credentials

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsRequest {
    exchange: String,
    api_key: String,
    api_secret: String,
    passphrase: String,
    #[serde(default)]
    demo: bool,
}

pub async fn put_credentials(state: &(impl Table + Keys + Vault + Bitget), req: Request, _ctx: RequestContext) -> HandlerResult {
    let caller = crate::auth::session::authenticate(state, &req).await?;
    let body: CredentialsRequest = parse_json(&req)?;
    if body.exchange != "bitget" {
        return Err(ApiError::unprocessable("unsupported_exchange", "only \"bitget\" is supported"));
    }
    let field_ok = |v: &str| !v.trim().is_empty() && v.chars().count() <= 256 && !v.chars().any(char::is_control);
    if !field_ok(&body.api_key) || !field_ok(&body.api_secret) || !field_ok(&body.passphrase) {
        return Err(ApiError::invalid_request("api_key, api_secret and passphrase must be non-empty and at most 256 characters"));
    }
    let creds = BitgetCredentials {
        api_key: body.api_key,
        api_secret: crate::secrets::Secret::new(body.api_secret),
        passphrase: crate::secrets::Secret::new(body.passphrase),
        demo: body.demo,
    };
    credentials::save(state, &caller, creds).await?;
    empty_response(StatusCode::NO_CONTENT)
}

pub async fn delete_credentials(state: &(impl Table + Keys), req: Request, _ctx: RequestContext) -> HandlerResult {
    let caller = crate::auth::session::authenticate(state, &req).await?;
    credentials::delete(state, &caller).await?;
    empty_response(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- account

pub async fn account(state: &(impl Table + Keys + Vault + Bitget), req: Request, _ctx: RequestContext) -> HandlerResult {
    let Session { caller, snapshot } = session(state, &req).await?;
    let exchange = exchange_for(state, &caller.user_id, &snapshot, &[]).await?;
    let view = exchange.account().await.map_err(exchange_error)?;
    json_response(StatusCode::OK, &view)
}

// ---------------------------------------------------------------- bot

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartRequest {
    symbol: String,
    #[serde(deserialize_with = "crate::trading::model::whole_number_input")]
    leverage: u32,
    #[serde(deserialize_with = "decimal_input")]
    stop_loss_pct: Decimal,
    #[serde(default, deserialize_with = "optional_decimal_input")]
    take_profit_pct: Option<Decimal>,
    #[serde(default, deserialize_with = "optional_decimal_input")]
    trailing_stop_pct: Option<Decimal>,
    #[serde(deserialize_with = "decimal_input")]
    max_position_notional: Decimal,
    #[serde(default)]
    margin_mode: crate::trading::model::MarginMode,
    /// Parsed after the body, so an unknown kind is the contract's 422 `invalid_strategy`.
    #[serde(default)]
    strategy: Option<Box<serde_json::value::RawValue>>,
}

pub async fn start_bot(state: &(impl Table + Keys + Vault + Bitget), req: Request, _ctx: RequestContext) -> HandlerResult {
    let caller = crate::auth::session::authenticate(state, &req).await?;
    let body: StartRequest = parse_json(&req)?;
    let config = BotConfig {
        symbol: body.symbol.trim().to_uppercase(),
        leverage: body.leverage,
        stop_loss_pct: body.stop_loss_pct.normalize(),
        take_profit_pct: body.take_profit_pct.map(|d| d.normalize()),
        trailing_stop_pct: body.trailing_stop_pct.map(|d| d.normalize()),
        max_position_notional: body.max_position_notional.normalize(),
        margin_mode: body.margin_mode,
        strategy: crate::trading::strategy::parse(body.strategy.as_deref())?,
    };
    json_response(StatusCode::OK, &bot::start(state, &caller, config).await?)
}

pub async fn status(state: &(impl Table + Keys + Vault + Bitget), req: Request, _ctx: RequestContext) -> HandlerResult {
    let (Session { caller, snapshot }, marks) = session_with_marks(state, &req).await?;
    json_response(StatusCode::OK, &bot::status(state, &caller.user_id, &snapshot, marks).await?)
}

pub async fn stop_bot(state: &(impl Table + Keys + Vault + Bitget), req: Request, _ctx: RequestContext) -> HandlerResult {
    let Session { caller, snapshot } = session(state, &req).await?;
    json_response(StatusCode::OK, &bot::stop_answer(state, &caller.user_id, snapshot.bot, None).await?)
}

// ---------------------------------------------------------------- orders

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitRequest {
    symbol: String,
    side: Side,
    #[serde(rename = "type")]
    order_type: OrderType,
    /// Kept as the literal JSON text and parsed after the body, exactly (never through a float):
    /// a JSON number a decimal cannot hold exactly is a 400 `invalid_request`, a string that is
    /// not a decimal a 422 `invalid_size` like any other bad size.
    size: Box<serde_json::value::RawValue>,
    #[serde(default)]
    price: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    reduce_only: bool,
    client_order_id: Option<String>,
}

/// A decimal from its literal JSON text. A number that no decimal holds exactly (too many digits,
/// out of range) is refused as a malformed request, never rounded; anything else that is not a
/// decimal gets the field's own refusal.
fn exact_decimal(text: &str, not_a_decimal: impl FnOnce() -> ApiError) -> Result<Decimal, ApiError> {
    parse_decimal_raw(text).ok_or_else(|| match text.trim_start().starts_with('"') {
        false if text.trim_start().starts_with(|c: char| c == '-' || c.is_ascii_digit()) => {
            ApiError::invalid_request("a number in the body has more digits or a larger exponent than a decimal holds exactly")
        }
        _ => not_a_decimal(),
    })
}

pub async fn submit_order(state: &(impl Table + Keys + Vault + Bitget), req: Request, _ctx: RequestContext) -> HandlerResult {
    let caller = crate::auth::session::authenticate(state, &req).await?;
    let key = header_str(&req, "idempotency-key")
        .ok_or_else(|| ApiError::BadRequest { code: "idempotency_key_required", detail: "send an Idempotency-Key header".into() })?
        .to_owned();
    if !crate::trading::idempotency::valid_key(&key) {
        return Err(ApiError::BadRequest {
            code: "invalid_idempotency_key",
            detail: "Idempotency-Key is 1–64 letters, digits or -_.:".into(),
        });
    }
    let raw: SubmitRequest = parse_json(&req)?;
    let size = exact_decimal(raw.size.get(), || ApiError::unprocessable("invalid_size", "size must be a positive decimal number"))?;
    let price = match raw.price.as_deref().map(serde_json::value::RawValue::get) {
        None | Some("null") => None,
        Some(text) => Some(exact_decimal(text, || ApiError::unprocessable("invalid_price", "price must be a decimal number"))?),
    };
    let order = orders::NewOrder {
        symbol: raw.symbol,
        side: raw.side,
        order_type: raw.order_type,
        size,
        price,
        reduce_only: raw.reduce_only,
        client_order_id: raw.client_order_id,
        for_run: None,
        reason: "manual",
    };
    let answer = Box::pin(orders::submit(state, &caller, &key, order)).await?;
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = if status.is_success() { "application/json" } else { "application/problem+json" };
    let mut response = Response::builder().status(status).header(http::header::CONTENT_TYPE, content_type);
    if answer.replayed {
        response = response.header("idempotent-replayed", "true");
    }
    response.body(Body::Text(answer.body)).map_err(|e| ApiError::internal("building the order response", e))
}

// ---------------------------------------------------------------- signals

/// `POST /api/v1/bot/signal-token`: a new signal URL for the caller; the old one is refused at once.
pub async fn signal_token(state: &(impl Table + Keys), req: Request, _ctx: RequestContext) -> HandlerResult {
    let caller = crate::auth::session::authenticate(state, &req).await?;
    let token = crate::trading::signals::rotate_token(state, &caller).await?;
    let host = header_str(&req, "host").unwrap_or("localhost");
    let scheme = if state.config().is_local() { "http" } else { "https" };
    let url = format!("{scheme}://{host}/api/v1/signals/{}", token.expose());
    crate::http::secret_json_response(StatusCode::OK, &serde_json::json!({ "signal_url": url }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignalRequest {
    id: String,
    action: crate::trading::signals::Action,
    #[serde(default)]
    size: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    order_type: Option<OrderType>,
    #[serde(default)]
    price: Option<Box<serde_json::value::RawValue>>,
}

fn optional_exact(raw: Option<&serde_json::value::RawValue>, refusal: fn() -> ApiError) -> Result<Option<Decimal>, ApiError> {
    match raw.map(serde_json::value::RawValue::get) {
        None | Some("null") => Ok(None),
        Some(text) => exact_decimal(text, refusal).map(Some),
    }
}

/// `POST /api/v1/signals/{token}`: an alert for the token's owner's bot, with no access token (the
/// token in the URL is the credential). `202 {"order_id","status"}`.
pub async fn receive_signal(state: &(impl Table + Cache + Vault + Bitget), req: Request, _ctx: RequestContext) -> HandlerResult {
    let token = crate::http::path_parameter(&req, "token").unwrap_or_default();
    let raw: SignalRequest = parse_json(&req)?;
    let alert = crate::trading::signals::Alert {
        id: raw.id,
        action: raw.action,
        size: optional_exact(raw.size.as_deref(), || ApiError::unprocessable("invalid_size", "size must be a positive decimal number"))?,
        order_type: raw.order_type.unwrap_or(OrderType::Market),
        price: optional_exact(raw.price.as_deref(), || ApiError::unprocessable("invalid_price", "price must be a decimal number"))?,
    };
    let answer = crate::trading::signals::receive(state, &token, alert).await?;
    if !(200..300).contains(&answer.status) {
        let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "application/problem+json")
            .body(Body::Text(answer.body))
            .map_err(|e| ApiError::internal("building the signal response", e));
    }
    let order: serde_json::Value =
        serde_json::from_str(&answer.body).map_err(|e| ApiError::internal("reading a stored order answer", e))?;
    json_response(StatusCode::ACCEPTED, &serde_json::json!({"order_id": order["order_id"], "status": order["status"]}))
}

// ---------------------------------------------------------------- backtest

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BacktestRequest {
    strategy: Box<serde_json::value::RawValue>,
    symbol: String,
    interval: String,
    from: String,
    to: String,
    #[serde(default, deserialize_with = "optional_decimal_input")]
    start_balance: Option<Decimal>,
    /// The bot settings the run is held to, as for `POST /api/v1/bot/start`.
    #[serde(default, deserialize_with = "crate::trading::model::optional_whole_number_input")]
    leverage: Option<u32>,
    #[serde(default, deserialize_with = "optional_decimal_input")]
    stop_loss_pct: Option<Decimal>,
    #[serde(default, deserialize_with = "optional_decimal_input")]
    take_profit_pct: Option<Decimal>,
    #[serde(default, deserialize_with = "optional_decimal_input")]
    trailing_stop_pct: Option<Decimal>,
    #[serde(default, deserialize_with = "optional_decimal_input")]
    max_position_notional: Option<Decimal>,
}

/// `POST /api/v1/backtest`: the strategy replayed over history. `200` with its trades, PnL,
/// fees, drawdown, win rate and equity curve.
pub async fn backtest(state: &(impl Table + Keys + Bitget), req: Request, _ctx: RequestContext) -> HandlerResult {
    let session = session(state, &req).await?;
    let body: BacktestRequest = parse_json(&req)?;
    let strategy = crate::trading::strategy::parse(Some(&body.strategy))?;
    let interval = crate::trading::candles::Interval::parse(&body.interval)
        .ok_or_else(|| ApiError::unprocessable("invalid_interval", "interval is one of 1m, 5m, 15m, 1H, 4H"))?;
    match strategy {
        Strategy::EmaCross(e) if e.interval != interval => {
            return Err(ApiError::unprocessable("invalid_strategy", "the ema_cross interval must be the backtest's interval"))
        }
        Strategy::EmaCross(_) | Strategy::Grid(_) => {}
        Strategy::Manual | Strategy::Signal => {
            return Err(ApiError::unprocessable("invalid_strategy", "a backtest replays the ema_cross or grid strategy"))
        }
    }
    let instant = |field: &str, text: &str| {
        chrono::DateTime::parse_from_rfc3339(text)
            .map(|t| t.timestamp_millis())
            .map_err(|_| ApiError::unprocessable("invalid_range", format!("{field} is an RFC 3339 time, e.g. 2026-11-01T00:00:00Z")))
    };
    let (from_ms, to_ms) = (instant("from", &body.from)?, instant("to", &body.to)?);
    let start_balance = body.start_balance.unwrap_or(state.config().paper_start_balance);
    if start_balance <= Decimal::ZERO || start_balance > crate::trading::strategy::MAX_AMOUNT {
        return Err(ApiError::unprocessable("invalid_start_balance", "start_balance must be above 0 and at most 1000000000"));
    }
    // Held to the contract's maximum with the other bot rules; bounded here before any arithmetic.
    let leverage = body.leverage.unwrap_or(BACKTEST_LEVERAGE).min(1000);
    let config = BotConfig {
        symbol: body.symbol.trim().to_uppercase(),
        leverage,
        stop_loss_pct: body.stop_loss_pct.unwrap_or(BACKTEST_STOP_LOSS_PCT).normalize(),
        take_profit_pct: body.take_profit_pct.map(|d| d.normalize()),
        trailing_stop_pct: body.trailing_stop_pct.map(|d| d.normalize()),
        max_position_notional: body.max_position_notional.unwrap_or(start_balance * Decimal::from(leverage)).normalize(),
        margin_mode: Default::default(),
        strategy,
    };
    let backtest = crate::trading::backtest::Backtest { config, interval, from_ms, to_ms, start_balance };
    // The caller's account must still exist (a deleted one's token is refused); nothing of it is read.
    drop(session);
    json_response(StatusCode::OK, &crate::trading::backtest::run(state, &backtest).await?)
}

/// A backtest's leverage and stop-loss when the request names none.
pub const BACKTEST_LEVERAGE: u32 = 5;
pub const BACKTEST_STOP_LOSS_PCT: Decimal = Decimal::from_parts(10, 0, 0, false, 0);

// ---------------------------------------------------------------- markets

/// `GET /api/v1/markets`: every contract the bot can trade, public and cacheable.
pub async fn markets(state: &impl Bitget, _req: Request, _ctx: RequestContext) -> HandlerResult {
    let book = crate::trading::service::contract_book(state).await?;
    let mut response = json_response(StatusCode::OK, &serde_json::json!({"markets": crate::trading::markets::list(&book)}))?;
    let cache = format!("public, max-age={}", crate::trading::markets::MAX_AGE_SECS);
    response.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_str(&cache).map_err(|e| ApiError::internal("markets cache header", e))?,
    );
    // Shared caches keep the answer per Origin: the CORS headers differ by it.
    response.headers_mut().insert(http::header::VARY, http::HeaderValue::from_static("Origin"));
    Ok(response)
}

// ---------------------------------------------------------------- positions

/// `POST /api/v1/positions/{symbol}/close`: the caller's position on the symbol closed by a
/// reduce-only market order. `200 {"closed_positions": [...]}`.
pub async fn close_position(state: &(impl Table + Keys + Vault + Bitget), req: Request, _ctx: RequestContext) -> HandlerResult {
    let caller = crate::auth::session::authenticate(state, &req).await?;
    let symbol = crate::http::inner_path_parameter(&req, "symbol", "positions");
    let closed = crate::trading::positions::close(state, &caller, &symbol).await?;
    json_response(StatusCode::OK, &serde_json::json!({"closed_positions": closed}))
}

// ---------------------------------------------------------------- one order

fn order_id_parameter(req: &Request) -> String {
    crate::http::path_parameter(req, "order_id").unwrap_or_default()
}

/// `GET /api/v1/orders/{order_id}`: one of the caller's orders (by its `order_id` or its
/// `client_order_id`), refreshed from Bitget while it is not final.
pub async fn get_order(state: &(impl Table + Keys + Vault + Bitget), req: Request, _ctx: RequestContext) -> HandlerResult {
    let caller = crate::auth::session::authenticate(state, &req).await?;
    json_response(StatusCode::OK, &crate::trading::order_view::get(state, &caller, &order_id_parameter(&req)).await?)
}

/// `DELETE /api/v1/orders/{order_id}`: cancels one of the caller's resting orders.
pub async fn cancel_order(state: &(impl Table + Keys + Vault + Bitget), req: Request, _ctx: RequestContext) -> HandlerResult {
    let caller = crate::auth::session::authenticate(state, &req).await?;
    json_response(StatusCode::OK, &crate::trading::order_view::cancel(state, &caller, &order_id_parameter(&req)).await?)
}

// ---------------------------------------------------------------- history

/// `GET /api/v1/orders?status=open|all&symbol=&limit=&cursor=`: the caller's orders, newest first.
pub async fn list_orders(state: &(impl Table + Keys + Vault + Bitget), req: Request, _ctx: RequestContext) -> HandlerResult {
    let caller = crate::auth::session::authenticate(state, &req).await?;
    json_response(StatusCode::OK, &crate::trading::order_view::list(state, &caller, req.uri().query()).await?)
}

/// `GET /api/v1/fills?symbol=&from=&to=&limit=&cursor=`: the caller's fills, newest first.
pub async fn list_fills(state: &(impl Table + Keys + Vault + Bitget), req: Request, _ctx: RequestContext) -> HandlerResult {
    let caller = crate::auth::session::authenticate(state, &req).await?;
    json_response(StatusCode::OK, &crate::trading::fills::list(state, &caller, req.uri().query()).await?)
}

/// `GET /api/v1/pnl?from=&to=&interval=day`: realized PnL, fees and a daily equity series.
pub async fn pnl(state: &(impl Table + Keys + Vault + Bitget), req: Request, _ctx: RequestContext) -> HandlerResult {
    let caller = crate::auth::session::authenticate(state, &req).await?;
    json_response(StatusCode::OK, &crate::trading::pnl::summary(state, &caller, req.uri().query()).await?)
}
