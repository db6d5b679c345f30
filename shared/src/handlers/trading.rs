//! The trading routes. Each needs a valid access token and acts only on the caller's own data:
//! the user id comes from the token, never from the request.

use crate::error::ApiError;
use crate::http::{empty_response, header_str, json_response, parse_json, RequestContext};
use crate::state::AppState;
use crate::trading::bitget::BitgetCredentials;
use crate::trading::contracts::contract;
use crate::trading::exchange::{Exchange, ExchangeError, OrderGuard};
use crate::trading::idempotency::{self, IdempotencyRecord};
use crate::trading::model::{
    client_order_id, decimal_input, optional_decimal_input, CancelOutcome, ExchangeKind, OrderIntent, OrderStatus, OrderType, Position,
    Side,
};
use crate::trading::risk::{check_bot_config, check_order, OrderCheck};
use crate::trading::service::{close_position, exchange_error, exchange_for, session, ClosedPosition, Session};
use crate::trading::store::{now_rfc3339, BotConfig, BotRecord, BotState, CredentialsRecord, RecordOutcome, UserSnapshot};
use http::StatusCode;
use lambda_http::{Body, Request, Response};
use rust_decimal::Decimal;
use serde::Deserialize;
use std::time::Duration;

type HandlerResult = Result<Response<Body>, ApiError>;

fn halted() -> ApiError {
    ApiError::Unavailable {
        code: "trading_halted",
        detail: "trading is halted by the operator; stop and reduce-only orders still work".into(),
    }
}

fn bot_running_conflict() -> ApiError {
    ApiError::conflict("bot_running", "stop the bot before changing exchange credentials")
}

fn bot_is_active(snapshot: &UserSnapshot) -> bool {
    snapshot.bot.as_ref().is_some_and(|b| b.state != BotState::Stopped)
}

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

pub async fn put_credentials(state: &AppState, req: Request, _ctx: RequestContext) -> HandlerResult {
    let Session { caller, snapshot } = session(state, &req).await?;
    let body: CredentialsRequest = parse_json(&req)?;
    if body.exchange != "bitget" {
        return Err(ApiError::unprocessable("unsupported_exchange", "only \"bitget\" is supported"));
    }
    let field_ok = |v: &str| !v.trim().is_empty() && v.chars().count() <= 256 && !v.chars().any(char::is_control);
    if !field_ok(&body.api_key) || !field_ok(&body.api_secret) || !field_ok(&body.passphrase) {
        return Err(ApiError::invalid_request("api_key, api_secret and passphrase must be non-empty and at most 256 characters"));
    }
    if bot_is_active(&snapshot) {
        return Err(bot_running_conflict());
    }
    let creds = BitgetCredentials {
        api_key: body.api_key,
        api_secret: crate::secrets::Secret::new(body.api_secret),
        passphrase: crate::secrets::Secret::new(body.passphrase),
        demo: body.demo,
    };
    // One signed read proves the keys work and tells the position mode.
    let probe_symbol = snapshot.bot.as_ref().map(|b| b.config.symbol.as_str()).unwrap_or("BTCUSDT");
    let position_mode = state.bitget.position_mode(&creds, probe_symbol).await.map_err(|e| match e {
        crate::trading::exchange::ExchangeError::Unavailable(_) | crate::trading::exchange::ExchangeError::CircuitOpen => exchange_error(e),
        _ => ApiError::unprocessable("invalid_exchange_credentials", "the exchange refused these credentials"),
    })?;
    let keys = state.encryption_keys.get().await.map_err(|e| ApiError::internal("loading encryption keys", e))?;
    let record = CredentialsRecord {
        exchange: ExchangeKind::Bitget,
        demo: creds.demo,
        ciphertext: keys.encrypt(&creds.to_plaintext(), caller.user_id.as_bytes()),
        position_mode,
        updated_at: now_rfc3339(),
    };
    state.trading_store().put_credentials(&caller.user_id, &record).await?;
    empty_response(StatusCode::NO_CONTENT)
}

pub async fn delete_credentials(state: &AppState, req: Request, _ctx: RequestContext) -> HandlerResult {
    let Session { caller, snapshot } = session(state, &req).await?;
    if bot_is_active(&snapshot) {
        return Err(bot_running_conflict());
    }
    state.trading_store().delete_credentials(&caller.user_id).await?;
    empty_response(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- account

pub async fn account(state: &AppState, req: Request, _ctx: RequestContext) -> HandlerResult {
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
}

fn status_body(bot: Option<&BotRecord>, positions: &[Position]) -> serde_json::Value {
    let state = bot.map(|b| b.state).unwrap_or(BotState::Stopped);
    serde_json::json!({
        "is_running": state == BotState::Running,
        "state": state,
        "config": bot.map(|b| &b.config),
        "positions": positions,
        "updated_at": bot.map(|b| b.updated_at.clone()),
    })
}

async fn positions_of(state: &AppState, user_id: &str, snapshot: &UserSnapshot) -> Result<Vec<Position>, ApiError> {
    let exchange = exchange_for(state, user_id, snapshot, &[]).await?;
    exchange.positions().await.map_err(exchange_error)
}

pub async fn start_bot(state: &AppState, req: Request, _ctx: RequestContext) -> HandlerResult {
    let caller = crate::auth::session::authenticate(state, &req).await?;
    let body: StartRequest = parse_json(&req)?;
    let trading = state.trading_store();
    let (snapshot, halted_now) = tokio::join!(crate::trading::service::load_snapshot(state, &caller), trading.kill_switch_on());
    let (snapshot, halted_now) = (snapshot?, halted_now?);
    let symbol = body.symbol.trim().to_uppercase();
    let config = BotConfig {
        symbol: symbol.clone(),
        leverage: body.leverage,
        stop_loss_pct: body.stop_loss_pct.normalize(),
        take_profit_pct: body.take_profit_pct.map(|d| d.normalize()),
        trailing_stop_pct: body.trailing_stop_pct.map(|d| d.normalize()),
        max_position_notional: body.max_position_notional.normalize(),
        margin_mode: body.margin_mode,
    };
    check_bot_config(&config, contract(&symbol))?;
    if halted_now {
        return Err(halted());
    }
    let already_running = snapshot.bot.as_ref().is_some_and(|b| b.state == BotState::Running && b.config == config);
    if let (Some(record), false) = (&snapshot.credentials, already_running) {
        // The bot's leverage and margin mode on the exchange, before it may trade.
        let exchange = crate::trading::service::live_exchange(state, &caller.user_id, record, config.margin_mode).await?;
        exchange.configure_symbol(&symbol, config.margin_mode, config.leverage).await.map_err(|e| match e {
            ExchangeError::Unavailable(_) | ExchangeError::CircuitOpen | ExchangeError::InvalidCredentials => exchange_error(e),
            other => ApiError::unprocessable("leverage_refused", format!("the exchange refused the leverage or margin mode: {other}")),
        })?;
    }
    let exchange_kind = if snapshot.credentials.is_some() { ExchangeKind::Bitget } else { ExchangeKind::Paper };
    let mut current = snapshot.bot.clone();
    for _ in 0..3 {
        let (next, expected) = match &current {
            Some(bot) if bot.state == BotState::Running && bot.config == config => {
                let positions = positions_of(state, &caller.user_id, &snapshot).await?;
                return json_response(StatusCode::OK, &status_body(Some(bot), &positions));
            }
            Some(bot) if bot.state == BotState::Running => {
                return Err(ApiError::conflict("bot_already_running", "the bot is running with other settings; stop it first"))
            }
            Some(bot) if bot.state == BotState::Stopping => {
                return Err(ApiError::conflict("bot_stopping", "the bot is still closing its positions; try again shortly"))
            }
            Some(bot) => (bot.version + 1, Some(bot.version)),
            None => (1, None),
        };
        let record = BotRecord {
            user_id: caller.user_id.clone(),
            state: BotState::Running,
            config: config.clone(),
            version: next,
            exchange: exchange_kind,
            updated_at: now_rfc3339(),
            stop_id: None,
        };
        if state.trading_store().put_bot(&record, expected).await? {
            let positions = positions_of(state, &caller.user_id, &snapshot).await?;
            return json_response(StatusCode::OK, &status_body(Some(&record), &positions));
        }
        // Someone else changed the bot meanwhile (another device): decide again on what is there now.
        current = state.trading_store().bot(&caller.user_id).await?;
    }
    Err(ApiError::conflict("conflict", "the bot changed concurrently; try again"))
}

pub async fn status(state: &AppState, req: Request, _ctx: RequestContext) -> HandlerResult {
    let Session { caller, snapshot } = session(state, &req).await?;
    let positions = positions_of(state, &caller.user_id, &snapshot).await?;
    json_response(StatusCode::OK, &status_body(snapshot.bot.as_ref(), &positions))
}

/// What a stop did: the bot as it ended, the positions it closed and the orders it canceled.
pub struct Stopped {
    pub bot: BotRecord,
    pub closed: Vec<ClosedPosition>,
    pub canceled_orders: Vec<String>,
}

/// Moves the bot to `stopping`, settles orders in flight, cancels every order resting on the
/// bot's symbol, closes its positions with reduce-only orders, re-reads until flat, then
/// `stopped`. Never reports stopped while a position is open or an order of its own may still
/// fill; a failure leaves the bot `stopping` for the guardian to finish.
pub async fn stop_bot_for(state: &AppState, user_id: &str, mut bot: BotRecord) -> Result<Stopped, ApiError> {
    if bot.state == BotState::Running {
        let mut stopping = BotRecord {
            state: BotState::Stopping,
            version: bot.version + 1,
            stop_id: Some(format!("stop-v{}", bot.version + 1)),
            updated_at: now_rfc3339(),
            ..bot.clone()
        };
        if !state.trading_store().put_bot(&stopping, Some(bot.version)).await? {
            match state.trading_store().bot(user_id).await? {
                Some(latest) if latest.state == BotState::Stopping => stopping = latest,
                Some(latest) if latest.state == BotState::Stopped => {
                    return Ok(Stopped { bot: latest, closed: Vec::new(), canceled_orders: Vec::new() })
                }
                _ => return Err(ApiError::conflict("conflict", "the bot changed concurrently; try again")),
            }
        }
        bot = stopping;
    }
    let stop_id = bot.stop_id.clone().unwrap_or_else(|| format!("stop-v{}", bot.version));
    let trading = state.trading_store();
    let mut closed = Vec::new();
    let mut canceled_orders = Vec::new();
    for attempt in 0..4 {
        let snapshot = trading.snapshot(user_id).await?;
        let exchange = exchange_for(state, user_id, &snapshot, &[]).await?;
        settle_pending_orders(state, exchange.as_ref(), user_id).await?;
        // Resting orders first: one that filled later would open a position behind a stopped bot,
        // and resting closes lock size the closing orders need.
        canceled_orders.extend(cancel_open_orders(state, exchange.as_ref(), user_id, &bot.config.symbol).await?);
        // The bot's symbol only: the user's other positions on the account are theirs to manage.
        let positions: Vec<Position> =
            exchange.positions().await.map_err(exchange_error)?.into_iter().filter(|p| p.symbol == bot.config.symbol).collect();
        if positions.is_empty() {
            if exchange.kind() != ExchangeKind::Paper {
                trading.sync_live_positions(user_id, &snapshot.live_positions, &[]).await?;
            }
            let stopped = BotRecord { state: BotState::Stopped, version: bot.version + 1, updated_at: now_rfc3339(), ..bot.clone() };
            if trading.put_bot(&stopped, Some(bot.version)).await? {
                return Ok(Stopped { bot: stopped, closed, canceled_orders });
            }
            return Err(ApiError::conflict("conflict", "the bot changed concurrently; try again"));
        }
        for position in &positions {
            // A position that survived one closing round gets a fresh client id for the next, and
            // a position that reappeared is another instance with ids of its own.
            let key = format!("{stop_id}-{}-r{attempt}", position.instance);
            match close_position(state, exchange.as_ref(), user_id, position, bot.config.leverage, &key, "bot_stop").await {
                Ok(c) => closed.push(c),
                Err(e) => {
                    tracing::error!(code = e.code(), symbol = %position.symbol, "closing a position during stop failed");
                    return Err(ApiError::BadGateway {
                        code: "close_failed",
                        detail: format!("closing the {} position failed; the bot stays stopping and the guardian retries", position.symbol),
                    });
                }
            }
        }
    }
    Err(ApiError::BadGateway {
        code: "close_failed",
        detail: "positions are still open after closing; the bot stays stopping and the guardian retries".into(),
    })
}

/// Cancels every order resting on `symbol`; the exchange's ids of those it canceled. An order
/// that filled meanwhile is no longer resting: its position is closed with the others.
async fn cancel_open_orders(state: &AppState, exchange: &dyn Exchange, user_id: &str, symbol: &str) -> Result<Vec<String>, ApiError> {
    let unavailable = |e: ExchangeError| {
        tracing::error!(error = %e, symbol, "canceling resting orders during stop failed");
        ApiError::BadGateway {
            code: "close_failed",
            detail: format!("canceling the resting {symbol} orders failed; the bot stays stopping and the guardian retries"),
        }
    };
    let mut canceled = Vec::new();
    for order in exchange.open_orders(symbol).await.map_err(unavailable)? {
        if exchange.cancel_order(symbol, &order.client_order_id).await.map_err(unavailable)? == CancelOutcome::Canceled {
            if exchange.kind() != ExchangeKind::Paper {
                let mut fill = crate::trading::model::OrderFill::rejected();
                fill.status = OrderStatus::Canceled;
                fill.order_id = order.order_id.clone();
                // Ours or not (placed by hand on the bot's symbol), it is canceled now.
                drop(state.trading_store().complete_order(user_id, &order.client_order_id, &fill).await);
            }
            canceled.push(order.order_id);
        }
    }
    Ok(canceled)
}

/// Orders recorded but not confirmed (a submit racing this stop, a lost answer): ask the
/// exchange what became of them before judging the positions.
async fn settle_pending_orders(state: &AppState, exchange: &dyn Exchange, user_id: &str) -> Result<(), ApiError> {
    if exchange.kind() == ExchangeKind::Paper {
        return Ok(());
    }
    for order in state.trading_store().pending_orders(user_id).await? {
        match exchange.find_order(&order.intent.symbol, &order.intent.client_order_id).await.map_err(exchange_error)? {
            Some(fill) => state.trading_store().complete_order(user_id, &order.intent.client_order_id, &fill).await?,
            // Recorded, not at the exchange, and its request may still be sending it: the bot
            // cannot be called stopped yet (the guardian finishes the stop once it is settled).
            None if still_in_flight(&order) => return Err(ApiError::BadGateway {
                code: "close_failed",
                detail:
                    "an order of the bot may still be on its way to the exchange; the bot stays stopping and the guardian finishes the stop"
                        .into(),
            }),
            // Older than any request that could still send it: it was never placed.
            None => {
                state
                    .trading_store()
                    .complete_order(user_id, &order.intent.client_order_id, &crate::trading::model::OrderFill::rejected())
                    .await?
            }
        }
    }
    Ok(())
}

/// How long after it was recorded an order may still be sent: well past the order function's
/// Lambda timeout (10 s), after which no request can still be sending it.
pub const SEND_WINDOW_MS: i64 = 30_000;

fn still_in_flight(order: &crate::trading::store::OrderRecord) -> bool {
    let recorded_ms = chrono::DateTime::parse_from_rfc3339(&order.created_at).map(|t| t.timestamp_millis()).unwrap_or(0);
    chrono::Utc::now().timestamp_millis() - recorded_ms < SEND_WINDOW_MS
}

pub async fn stop_bot(state: &AppState, req: Request, _ctx: RequestContext) -> HandlerResult {
    let Session { caller, snapshot } = session(state, &req).await?;
    let (closed, canceled) = match snapshot.bot.clone() {
        Some(bot) if bot.state != BotState::Stopped => {
            let stopped = stop_bot_for(state, &caller.user_id, bot).await?;
            (stopped.closed, stopped.canceled_orders)
        }
        _ => (Vec::new(), Vec::new()),
    };
    json_response(
        StatusCode::OK,
        &serde_json::json!({"is_running": false, "state": BotState::Stopped, "closed_positions": closed, "canceled_orders": canceled}),
    )
}

// ---------------------------------------------------------------- orders

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitRequest {
    symbol: String,
    side: Side,
    #[serde(rename = "type")]
    order_type: OrderType,
    /// Kept as the literal JSON text and parsed after the body, exactly (never through a float),
    /// so "not a number" is a 422 `invalid_size` like any other bad size.
    size: Box<serde_json::value::RawValue>,
    #[serde(default)]
    price: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    reduce_only: bool,
    client_order_id: Option<String>,
}

struct ValidSubmit {
    symbol: String,
    side: Side,
    order_type: OrderType,
    size: Decimal,
    price: Option<Decimal>,
    reduce_only: bool,
    client_order_id: Option<String>,
}

fn order_body(intent: &OrderIntent, order_id: &str, status: OrderStatus, filled: Decimal, avg_price: Option<Decimal>) -> serde_json::Value {
    serde_json::json!({
        "order_id": order_id,
        "client_order_id": intent.client_order_id,
        "symbol": intent.symbol,
        "side": intent.side,
        "type": intent.order_type,
        "size": intent.size,
        "status": status,
        "filled_size": filled,
        "avg_price": avg_price,
    })
}

fn replay(record: &IdempotencyRecord) -> HandlerResult {
    let status = StatusCode::from_u16(record.status.unwrap_or(500)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = if status.is_success() { "application/json" } else { "application/problem+json" };
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header("idempotent-replayed", "true")
        .body(Body::Text(record.body.clone().unwrap_or_default()))
        .map_err(|e| ApiError::internal("building replay", e))
}

pub async fn submit_order(state: &AppState, req: Request, _ctx: RequestContext) -> HandlerResult {
    let caller = crate::auth::session::authenticate(state, &req).await?;
    let user_id = caller.user_id.as_str();
    let key = header_str(&req, "idempotency-key")
        .ok_or_else(|| ApiError::BadRequest { code: "idempotency_key_required", detail: "send an Idempotency-Key header".into() })?
        .to_owned();
    if !idempotency::valid_key(&key) {
        return Err(ApiError::BadRequest {
            code: "invalid_idempotency_key",
            detail: "Idempotency-Key is 1–64 letters, digits or -_.:".into(),
        });
    }
    let raw: SubmitRequest = parse_json(&req)?;
    let size = crate::trading::model::parse_decimal_raw(raw.size.get())
        .ok_or_else(|| ApiError::unprocessable("invalid_size", "size must be a positive decimal number"))?;
    let price = match raw.price.as_deref().map(serde_json::value::RawValue::get) {
        None | Some("null") => None,
        Some(text) => Some(
            crate::trading::model::parse_decimal_raw(text)
                .ok_or_else(|| ApiError::unprocessable("invalid_price", "price must be a decimal number"))?,
        ),
    };
    let body = ValidSubmit {
        symbol: raw.symbol,
        side: raw.side,
        order_type: raw.order_type,
        size,
        price,
        reduce_only: raw.reduce_only,
        client_order_id: raw.client_order_id,
    };
    if let Some(id) = &body.client_order_id {
        if id.is_empty() || id.len() > 40 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(ApiError::invalid_request("client_order_id is 1–40 letters, digits, '-' or '_'"));
        }
    }
    let symbol = body.symbol.trim().to_uppercase();
    let canonical = serde_json::json!({
        "symbol": symbol, "side": body.side, "type": body.order_type, "size": body.size.normalize(),
        "price": body.price.map(|p| p.normalize()), "reduce_only": body.reduce_only, "client_order_id": body.client_order_id,
    });
    let fingerprint = idempotency::fingerprint(&canonical);
    let table = state.config.table_name.as_str();
    let trading = state.trading_store();
    // One round trip for all three reads.
    let (snapshot, existing, halted_now) = tokio::join!(
        crate::trading::service::load_snapshot(state, &caller),
        idempotency::get(&state.dynamo, table, user_id, &key),
        trading.kill_switch_on()
    );
    let snapshot = snapshot?;
    if let Some(record) = existing? {
        return replay_or_resume(state, user_id, &key, record, &fingerprint, &snapshot).await;
    }

    let bot = snapshot.bot.clone();
    let bot_state = bot.as_ref().map(|b| b.state).unwrap_or(BotState::Stopped);
    let allowed = bot_state == BotState::Running || (body.reduce_only && bot_state == BotState::Stopping);
    if halted_now? && !body.reduce_only {
        return Err(halted());
    }
    let intent_id = body.client_order_id.clone().unwrap_or_else(|| client_order_id(&[user_id, "order", &key]));
    let record = idempotency::new_record(fingerprint, intent_id.clone());
    let key_ref = key.as_str();
    let refuse = |err: ApiError, record: IdempotencyRecord| async move {
        // A refusal is the key's answer too: replays get it again, not a fresh evaluation.
        idempotency::put_completed(
            &state.dynamo,
            table,
            user_id,
            key_ref,
            record,
            err.status().as_u16(),
            &crate::http::problem_body(&err).to_string(),
        )
        .await?;
        Err::<Response<Body>, ApiError>(err)
    };
    let (Some(bot), true) = (bot, allowed) else {
        return refuse(ApiError::conflict("bot_not_running", "start the bot before submitting orders"), record).await;
    };
    let intent = OrderIntent {
        symbol: symbol.clone(),
        side: body.side,
        order_type: body.order_type,
        size: body.size.normalize(),
        price: body.price.map(|p| p.normalize()),
        reduce_only: body.reduce_only,
        client_order_id: intent_id.clone(),
        leverage: bot.config.leverage,
    };
    let exchange = exchange_for(state, user_id, &snapshot, std::slice::from_ref(&symbol)).await?;
    if let Err(refusal) = check_risk(state, exchange.as_ref(), &bot.config, &intent).await? {
        return refuse(refusal, record).await;
    }

    // Recorded before it is sent: the key, the order and (for risk-increasing orders) a running
    // bot and no halt, atomically.
    match trading.record_order(user_id, &key, &record, &intent).await? {
        RecordOutcome::Recorded => {}
        RecordOutcome::KeyTaken => {
            let stored = idempotency::get(&state.dynamo, table, user_id, &key).await?.ok_or(ApiError::Internal)?;
            return replay_or_resume(state, user_id, &key, stored, &record.fingerprint, &snapshot).await;
        }
        RecordOutcome::OrderIdTaken => {
            return Err(ApiError::conflict("duplicate_client_order_id", "an order with this client_order_id exists already"))
        }
        RecordOutcome::BotNotRunning => {
            return refuse(ApiError::conflict("bot_not_running", "start the bot before submitting orders"), record).await
        }
        RecordOutcome::TradingHalted => return refuse(halted(), record).await,
    }
    send_recorded(state, exchange.as_ref(), user_id, &key, &intent, &snapshot.live_positions).await
}

/// The risk rules for `intent` against the account as the exchange reports it now. The outer
/// error is a failure to judge (exchange or market data away); the inner one the rule's refusal.
async fn check_risk(
    state: &AppState,
    exchange: &dyn Exchange,
    bot: &BotConfig,
    intent: &OrderIntent,
) -> Result<Result<(), ApiError>, ApiError> {
    let symbol = &intent.symbol;
    let Some(spec) = contract(symbol) else {
        return Ok(Err(ApiError::unprocessable("unknown_symbol", format!("{symbol} is not a supported contract"))));
    };
    let view = exchange.account().await.map_err(exchange_error)?;
    let position = view.positions.iter().find(|p| &p.symbol == symbol);
    let mark = match exchange.known_mark(symbol) {
        Some(m) => Some(m),
        None => crate::trading::service::marks(state, std::slice::from_ref(symbol)).await?.get(symbol).copied(),
    };
    let Some(mark) = mark else {
        return Err(ApiError::Unavailable { code: "market_data_unavailable", detail: format!("no mark price for {symbol} right now") });
    };
    Ok(check_order(&OrderCheck {
        spec,
        bot,
        side: intent.side,
        order_type: intent.order_type,
        size: intent.size,
        price: intent.price,
        reduce_only: intent.reduce_only,
        mark,
        position,
        available: view.available,
    }))
}

/// Right before a resumed order is sent: the kill switch, the bot's state and the risk rules
/// again, as for a new order. `Ok(Err(refusal))`: it must not be sent.
async fn may_still_send(
    state: &AppState,
    user_id: &str,
    exchange: &dyn Exchange,
    intent: &OrderIntent,
) -> Result<Result<(), ApiError>, ApiError> {
    let trading = state.trading_store();
    let (bot, halted_now) = tokio::join!(trading.bot(user_id), trading.kill_switch_on());
    let bot = bot?;
    let state_now = bot.as_ref().map(|b| b.state).unwrap_or(BotState::Stopped);
    if !intent.reduce_only && halted_now? {
        return Ok(Err(halted()));
    }
    let allowed = state_now == BotState::Running || (intent.reduce_only && state_now == BotState::Stopping);
    let Some(bot) = bot.filter(|_| allowed) else {
        return Ok(Err(ApiError::conflict("bot_not_running", "start the bot before submitting orders")));
    };
    check_risk(state, exchange, &bot.config, intent).await
}

/// Sends a recorded order and stores the answer under its key. An unknown outcome (502) leaves
/// the key in progress: a retry after a short while resumes it by looking the order up.
async fn send_recorded(
    state: &AppState,
    exchange: &dyn Exchange,
    user_id: &str,
    key: &str,
    intent: &OrderIntent,
    known_live: &[crate::trading::store::LivePosition],
) -> HandlerResult {
    let table = state.config.table_name.as_str();
    let guard = OrderGuard { require_running_bot: !intent.reduce_only };
    match exchange.place_order(intent, guard).await {
        Ok(fill) => {
            if exchange.kind() != ExchangeKind::Paper {
                state.trading_store().complete_order(user_id, &intent.client_order_id, &fill).await?;
                // Keep the store's mirror of the live account current, so the guardian's
                // reconciliation only ever flags changes made outside this service.
                match exchange.positions().await {
                    Ok(actual) => drop(state.trading_store().sync_live_positions(user_id, known_live, &actual).await),
                    Err(e) => tracing::warn!(error = %e, "positions not re-read after a live fill; the guardian will reconcile"),
                }
            }
            let body = order_body(intent, &fill.order_id, fill.status, fill.filled_size, fill.avg_price);
            idempotency::complete(&state.dynamo, table, user_id, key, 201, &body.to_string()).await?;
            json_response(StatusCode::CREATED, &body)
        }
        Err(e) => {
            let err = exchange_error(e);
            if err.status().is_client_error() {
                state
                    .trading_store()
                    .complete_order(user_id, &intent.client_order_id, &crate::trading::model::OrderFill::rejected())
                    .await?;
                idempotency::complete(
                    &state.dynamo,
                    table,
                    user_id,
                    key,
                    err.status().as_u16(),
                    &crate::http::problem_body(&err).to_string(),
                )
                .await?;
            }
            Err(err)
        }
    }
}

async fn replay_or_resume(
    state: &AppState,
    user_id: &str,
    key: &str,
    record: IdempotencyRecord,
    fingerprint: &str,
    snapshot: &UserSnapshot,
) -> HandlerResult {
    if record.fingerprint != fingerprint {
        return Err(ApiError::unprocessable("idempotency_key_reused", "this Idempotency-Key was used with a different request"));
    }
    let table = state.config.table_name.as_str();
    let mut record = record;
    // A twin request is probably finishing right now: wait a little for its answer.
    for _ in 0..60 {
        if record.completed {
            return replay(&record);
        }
        if chrono::Utc::now().timestamp_millis() - record.created_ms > idempotency::STALE_AFTER_MS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        record = idempotency::get(&state.dynamo, table, user_id, key).await?.ok_or(ApiError::Internal)?;
    }
    if record.completed {
        return replay(&record);
    }
    if chrono::Utc::now().timestamp_millis() - record.created_ms <= idempotency::STALE_AFTER_MS {
        return Err(ApiError::conflict("request_in_progress", "a request with this Idempotency-Key is still being processed"));
    }
    // The first request died with the outcome unknown: find the order before anything is sent again.
    let order = state.trading_store().order(user_id, &record.client_order_id).await?.ok_or(ApiError::Internal)?;
    let exchange = exchange_for(state, user_id, snapshot, std::slice::from_ref(&order.intent.symbol)).await?;
    if let Some(fill) = order.fill.clone().filter(|f| f.status != OrderStatus::Pending) {
        let body = order_body(&order.intent, &fill.order_id, fill.status, fill.filled_size, fill.avg_price);
        idempotency::complete(&state.dynamo, table, user_id, key, 201, &body.to_string()).await?;
        return json_response(StatusCode::CREATED, &body);
    }
    match exchange.find_order(&order.intent.symbol, &order.intent.client_order_id).await.map_err(exchange_error)? {
        Some(fill) => {
            state.trading_store().complete_order(user_id, &order.intent.client_order_id, &fill).await?;
            let body = order_body(&order.intent, &fill.order_id, fill.status, fill.filled_size, fill.avg_price);
            idempotency::complete(&state.dynamo, table, user_id, key, 201, &body.to_string()).await?;
            json_response(StatusCode::CREATED, &body)
        }
        None => {
            // Provably never placed: sending it now is a new decision, held to today's rules.
            if let Err(refusal) = may_still_send(state, user_id, exchange.as_ref(), &order.intent).await? {
                state
                    .trading_store()
                    .complete_order(user_id, &order.intent.client_order_id, &crate::trading::model::OrderFill::rejected())
                    .await?;
                let body = crate::http::problem_body(&refusal).to_string();
                idempotency::complete(&state.dynamo, table, user_id, key, refusal.status().as_u16(), &body).await?;
                return Err(refusal);
            }
            send_recorded(state, exchange.as_ref(), user_id, key, &order.intent, &snapshot.live_positions).await
        }
    }
}
