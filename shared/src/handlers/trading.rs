//! The trading routes. Each needs a valid access token and acts only on the caller's own data:
//! the user id comes from the token, never from the request.

use crate::error::ApiError;
use crate::http::{empty_response, header_str, json_response, parse_json, RequestContext};
use crate::state::AppState;
use crate::trading::bitget::BitgetCredentials;
use crate::trading::bot::{self, halted};
use crate::trading::contracts::contract;
use crate::trading::exchange::{Exchange, OrderGuard};
use crate::trading::idempotency::{self, IdempotencyRecord};
use crate::trading::model::{
    client_order_id, decimal_input, optional_decimal_input, ExchangeKind, OrderIntent, OrderStatus, OrderType, Side,
};
use crate::trading::risk::{check_order, OrderCheck};
use crate::trading::service::{exchange_error, exchange_for, session, Session};
use crate::trading::store::{now_rfc3339, BotConfig, BotState, CredentialsRecord, RecordOutcome, UserSnapshot};
use http::StatusCode;
use lambda_http::{Body, Request, Response};
use rust_decimal::Decimal;
use serde::Deserialize;
use std::time::Duration;

type HandlerResult = Result<Response<Body>, ApiError>;

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

pub async fn start_bot(state: &AppState, req: Request, _ctx: RequestContext) -> HandlerResult {
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
    };
    json_response(StatusCode::OK, &bot::start(state, &caller, config).await?)
}

pub async fn status(state: &AppState, req: Request, _ctx: RequestContext) -> HandlerResult {
    let Session { caller, snapshot } = session(state, &req).await?;
    json_response(StatusCode::OK, &bot::status(state, &caller.user_id, &snapshot).await?)
}

pub async fn stop_bot(state: &AppState, req: Request, _ctx: RequestContext) -> HandlerResult {
    let Session { caller, snapshot } = session(state, &req).await?;
    let (closed, canceled) = match snapshot.bot.clone() {
        Some(bot) if bot.state != BotState::Stopped => {
            let stopped = bot::stop(state, &caller.user_id, bot).await?;
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
