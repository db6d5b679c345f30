//! Submitting an order: parse → idempotency reservation → risk → record → send → settle. Each
//! step decides the next one (`Next`), so what a retry, a twin request or a resumed key does is
//! one match away, not spread over nested branches.
//!
//! The Idempotency-Key is reserved in the same transaction that records the order, with the bot
//! running and the kill switch off as conditions for a risk-increasing order. A completed key
//! replays its stored answer and sends nothing; a key whose request died with the outcome unknown
//! is resumed by looking the order up at the exchange, and sent only if it provably never was,
//! after the kill switch, the bot and the risk rules are checked again.

use crate::auth::session::Caller;
use crate::error::ApiError;
use crate::state::{Bitget, Table, Vault};
use crate::trading::bot::halted;
use crate::trading::exchange::{Exchange, KeyAnswer, OrderGuard};
use crate::trading::idempotency::{self, IdempotencyRecord};
use crate::trading::model::{client_order_id, ExchangeKind, OrderFill, OrderIntent, OrderStatus, OrderType, Side};
use crate::trading::risk::{check_order, OrderCheck};
use crate::trading::service::{exchange_at, exchange_error, load_snapshot, prefetched_marks, Prefetched};
use crate::trading::store::{BotConfig, BotRecord, BotState, ClaimOutcome, LivePosition, OrderRecord, RecordOutcome};
use rust_decimal::Decimal;
use std::time::Duration;

/// A submit request whose fields parsed; the rules are checked here.
#[derive(Debug, Clone)]
pub struct NewOrder {
    pub symbol: String,
    pub side: Side,
    pub order_type: OrderType,
    pub size: Decimal,
    pub price: Option<Decimal>,
    pub reduce_only: bool,
    pub client_order_id: Option<String>,
    /// The bot run a strategy decided this order for: refused once another run is the bot's.
    pub for_run: Option<String>,
    /// Who decided it: `manual` (the trader's own), `signal` or `strategy`.
    pub reason: &'static str,
}

/// The key's answer: what the first request answered (or will answer every replay).
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    /// JSON: the order on success, a problem document otherwise.
    pub body: String,
    /// A stored answer given again: nothing was evaluated or sent.
    pub replayed: bool,
}

/// What the flow does next.
enum Next {
    /// The key has its answer: give it again.
    Replay(IdempotencyRecord),
    /// The key is someone else's in-flight request, or a dead one: wait for it or take it over.
    Existing(IdempotencyRecord),
    /// Refused before anything was sent: the refusal becomes the key's answer.
    Refuse(ApiError, IdempotencyRecord),
    /// A dead request's order whose outcome is unknown: find it before anything is sent again.
    LookUp(OrderRecord),
    /// Recorded and allowed: send it.
    Send(OrderIntent),
    /// The exchange's answer for a recorded order: store it as the key's answer, unless it was
    /// written with the fill (`true`).
    Settle(OrderIntent, OrderFill, bool),
}

fn bot_not_running() -> ApiError {
    ApiError::conflict("bot_not_running", "start the bot before submitting orders")
}

fn order_body(intent: &OrderIntent, fill: &OrderFill) -> serde_json::Value {
    serde_json::json!({
        "order_id": fill.order_id,
        "client_order_id": intent.client_order_id,
        "symbol": intent.symbol,
        "side": intent.side,
        "type": intent.order_type,
        "size": intent.size,
        "status": fill.status,
        "filled_size": fill.filled_size,
        "avg_price": fill.avg_price,
    })
}

fn replayed(record: &IdempotencyRecord) -> Answer {
    Answer { status: record.status.unwrap_or(500), body: record.body.clone().unwrap_or_default(), replayed: true }
}

/// The answer stored for `key`, if its request completed: what a repeat gets, without a new order
/// being computed (a repeated "close" alert must not be judged on the position it closed).
pub async fn stored_answer(state: &impl Table, user_id: &str, key: &str) -> Result<Option<Answer>, ApiError> {
    let record = state.trading_store().idempotency_record(user_id, key).await?;
    Ok(record.filter(|r| r.status.is_some()).as_ref().map(replayed))
}

/// `submit` for an order decided by a signal or a strategy, which is of its moment: refused
/// under the kill switch, it stays refused (the refusal is recorded as the key's answer), so a
/// repeat after the halt lifts never trades on a stale decision.
pub async fn submit_of_its_moment(
    state: &(impl Table + Vault + Bitget),
    caller: &Caller,
    key: &str,
    order: NewOrder,
) -> Result<Answer, ApiError> {
    // On the heap: the submit state machine is large, and the signal and strategy paths nest it
    // deep in their own futures (an unoptimised build overflowed a 2 MiB test thread's stack).
    let result = Box::pin(submit(state, caller, key, order)).await;
    if let Err(refusal) = &result {
        if refusal.code() == "trading_halted" {
            let record = idempotency::new_record("refused under the kill switch".into(), String::new());
            let body = crate::http::problem_body(refusal).to_string();
            state.trading_store().put_completed_idempotency(&caller.user_id, key, record, refusal.status().as_u16(), &body).await?;
        }
    }
    result
}

/// Checks, records and sends `order` under the caller's Idempotency-Key `key` (already valid).
pub async fn submit(state: &(impl Table + Vault + Bitget), caller: &Caller, key: &str, order: NewOrder) -> Result<Answer, ApiError> {
    let user_id = caller.user_id.as_str();
    if let Some(id) = &order.client_order_id {
        if id.is_empty() || id.len() > 40 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(ApiError::invalid_request("client_order_id is 1–40 letters, digits, '-' or '_'"));
        }
    }
    let symbol = order.symbol.trim().to_uppercase();
    let canonical = serde_json::json!({
        "symbol": symbol, "side": order.side, "type": order.order_type, "size": order.size.normalize(),
        "price": order.price.map(|p| p.normalize()), "reduce_only": order.reduce_only, "client_order_id": order.client_order_id,
    });
    let fingerprint = idempotency::fingerprint(&canonical);
    let trading = state.trading_store();
    // One round trip for all four reads; the marks are there before the flow knows whether it
    // trades on paper (which values its account at them) or live (which checks risk at the mark).
    let (snapshot, existing, halted_now, marks) = tokio::join!(
        load_snapshot(state, caller),
        trading.idempotency_record(user_id, key),
        trading.kill_switch_on(),
        prefetched_marks(state)
    );
    let snapshot = snapshot?;
    let intent_id = order.client_order_id.clone().unwrap_or_else(|| client_order_id(&[user_id, "order", key]));
    let record = idempotency::new_record(fingerprint.clone(), intent_id.clone());

    let bot = snapshot.bot.clone();
    let other_run = order.for_run.as_ref().is_some_and(|run| bot.as_ref().and_then(|b| b.run.as_ref()).is_none_or(|r| &r.id != run));
    let bot_state = if other_run { BotState::Stopped } else { bot.as_ref().map(|b| b.state).unwrap_or(BotState::Stopped) };
    let intent = bot.as_ref().map(|b| OrderIntent {
        symbol: symbol.clone(),
        side: order.side,
        order_type: order.order_type,
        size: order.size.normalize(),
        price: order.price.map(|p| p.normalize()),
        reduce_only: order.reduce_only,
        client_order_id: intent_id.clone(),
        leverage: b.config.leverage,
        reason: Some(order.reason.to_owned()),
    });
    // Built on first use: a replay never needs it.
    let exchange_cell = tokio::sync::OnceCell::new();
    let exchange =
        || exchange_cell.get_or_try_init(|| exchange_at(state, user_id, &snapshot, std::slice::from_ref(&symbol), marks.clone()));
    let mut next = match (existing?, intent) {
        (Some(stored), _) => Next::Existing(stored),
        // Not stored as the key's answer: a halt is lifted, and the same request may then go.
        _ if halted_now? && !order.reduce_only => return Err(halted()),
        (None, Some(intent)) if bot_state == BotState::Running || (order.reduce_only && bot_state == BotState::Stopping) => {
            let bot = bot.as_ref().ok_or_else(missing_record)?;
            match check_risk(state, exchange().await?.as_ref(), &bot.config, &intent, &marks).await? {
                Err(refusal) => Next::Refuse(refusal, record.clone()),
                // Recorded before it is sent: the key, the order and (for risk-increasing
                // orders) a running bot and no halt, atomically.
                Ok(()) => match trading.record_order(user_id, key, &record, &intent, bot).await? {
                    RecordOutcome::Recorded => Next::Send(intent),
                    RecordOutcome::KeyTaken => Next::Existing(trading.idempotency_record(user_id, key).await?.ok_or_else(missing_record)?),
                    RecordOutcome::OrderIdTaken => {
                        return Err(ApiError::conflict("duplicate_client_order_id", "an order with this client_order_id exists already"))
                    }
                    RecordOutcome::BotNotRunning => Next::Refuse(bot_not_running(), record.clone()),
                    RecordOutcome::TradingHalted => return Err(halted()),
                },
            }
        }
        (None, _) => Next::Refuse(bot_not_running(), record.clone()),
    };
    loop {
        next = match next {
            Next::Replay(stored) => return Ok(replayed(&stored)),
            Next::Existing(stored) => {
                if stored.fingerprint != fingerprint {
                    return Err(ApiError::unprocessable(
                        "idempotency_key_reused",
                        "this Idempotency-Key was used with a different request",
                    ));
                }
                match wait_for_twin(state, user_id, key, stored).await? {
                    Twin::Answered(done) => Next::Replay(done),
                    Twin::StillRunning => return Err(in_progress()),
                    Twin::Died(dead) => Next::LookUp(trading.order(user_id, &dead.client_order_id).await?.ok_or_else(missing_record)?),
                }
            }
            Next::Refuse(refusal, record) => {
                // A refusal is the key's answer too: replays get it again, not a fresh evaluation.
                let body = crate::http::problem_body(&refusal).to_string();
                trading.put_completed_idempotency(user_id, key, record, refusal.status().as_u16(), &body).await?;
                return Err(refusal);
            }
            Next::LookUp(order) => match order.fill.clone().filter(|f| f.status != OrderStatus::Pending) {
                // Settled as never placed (a stop got to it first): not sent, and not an order.
                Some(fill) if fill.never_placed() => {
                    let refusal = never_sent();
                    let body = crate::http::problem_body(&refusal).to_string();
                    trading.complete_idempotency(user_id, key, refusal.status().as_u16(), &body).await?;
                    return Err(refusal);
                }
                Some(fill) => Next::Settle(order.intent, fill, false),
                // Taken to be sent a moment ago (by the first request or another retry): its
                // outcome is not known yet, and only that request may settle it.
                None if order.may_be_in_flight() => return Err(in_progress()),
                None => {
                    let exchange = exchange().await?;
                    match exchange.find_order(&order.intent.symbol, &order.intent.client_order_id).await.map_err(exchange_error)? {
                        Some(fill) => {
                            trading.complete_order(user_id, &order.intent.client_order_id, &fill).await?;
                            Next::Settle(order.intent, fill, false)
                        }
                        // Provably never placed: sending it now is a new decision, held to today's rules.
                        None => match may_still_send(state, user_id, exchange.as_ref(), &order, snapshot.bot.as_ref()).await? {
                            Ok(()) => Next::Send(order.intent),
                            // Not the key's answer: a halt is lifted, and the same request may then go.
                            Err(refusal) if refusal.code() == "trading_halted" => return Err(refusal),
                            Err(refusal) => {
                                // Settled as never sent (by us, or by a stop that got there
                                // first), unless another request took it to send meanwhile.
                                let never_placed = |o: &OrderRecord| o.fill.as_ref().is_some_and(OrderFill::never_placed);
                                let settled_unsent = trading.reject_unsent_order(user_id, &order).await?
                                    || trading.order(user_id, &order.intent.client_order_id).await?.is_some_and(|o| never_placed(&o));
                                if !settled_unsent {
                                    return Err(in_progress());
                                }
                                let body = crate::http::problem_body(&refusal).to_string();
                                trading.complete_idempotency(user_id, key, refusal.status().as_u16(), &body).await?;
                                return Err(refusal);
                            }
                        },
                    }
                }
            },
            Next::Send(intent) => send(state, exchange().await?.as_ref(), user_id, key, intent, &snapshot.live_positions).await?,
            Next::Settle(intent, fill, answered) => {
                let body = order_body(&intent, &fill).to_string();
                if !answered {
                    trading.complete_idempotency(user_id, key, 201, &body).await?;
                }
                return Ok(Answer { status: 201, body, replayed: false });
            }
        }
    }
}

enum Twin {
    Answered(IdempotencyRecord),
    StillRunning,
    /// Older than any live request: it died with the outcome unknown.
    Died(IdempotencyRecord),
}

fn in_progress() -> ApiError {
    ApiError::conflict("request_in_progress", "a request with this Idempotency-Key is still being processed")
}

/// A record this flow just read or wrote is not there: a bug, never the client's doing.
fn missing_record() -> ApiError {
    ApiError::bug("a record the flow just read or wrote is missing")
}

/// A twin request is probably finishing right now: wait a little for its answer.
async fn wait_for_twin(state: &impl Table, user_id: &str, key: &str, mut record: IdempotencyRecord) -> Result<Twin, ApiError> {
    let trading = state.trading_store();
    let stale = |r: &IdempotencyRecord| chrono::Utc::now().timestamp_millis() - r.created_ms > idempotency::STALE_AFTER_MS;
    for _ in 0..60 {
        if record.completed {
            return Ok(Twin::Answered(record));
        }
        if stale(&record) {
            return Ok(Twin::Died(record));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        record = trading.idempotency_record(user_id, key).await?.ok_or_else(missing_record)?;
    }
    Ok(if record.completed {
        Twin::Answered(record)
    } else if stale(&record) {
        Twin::Died(record)
    } else {
        Twin::StillRunning
    })
}

/// Sends a recorded order. The exchange's answer settles it; a refusal becomes the key's answer;
/// an unknown outcome (502) leaves the key in progress, so a retry after a short while resumes it
/// by looking the order up.
async fn send(
    state: &impl Table,
    exchange: &dyn Exchange,
    user_id: &str,
    key: &str,
    intent: OrderIntent,
    known_live: &[LivePosition],
) -> Result<Next, ApiError> {
    let trading = state.trading_store();
    let guard = OrderGuard { require_running_bot: !intent.reduce_only };
    let answer = KeyAnswer { key, body: |intent, fill| order_body(intent, fill).to_string() };
    match exchange.place_answering(&intent, guard, answer).await {
        Ok((fill, answered)) => {
            if exchange.kind() != ExchangeKind::Paper {
                trading.complete_order(user_id, &intent.client_order_id, &fill).await?;
                // Keep the store's mirror of the live account current, so the guardian's
                // reconciliation only ever flags changes made outside this service.
                match exchange.positions().await {
                    Ok(actual) => {
                        if let Err(e) = trading.sync_live_positions(user_id, &intent.symbol, known_live, &actual).await {
                            tracing::warn!(error = %ApiError::from(e).chain(), "positions not mirrored after a live fill; the guardian will reconcile");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "positions not re-read after a live fill; the guardian will reconcile"),
                }
            }
            Ok(Next::Settle(intent, fill, answered))
        }
        Err(e) => {
            let err = exchange_error(e);
            if err.status().is_client_error() {
                trading.complete_order(user_id, &intent.client_order_id, &OrderFill::rejected()).await?;
                let body = crate::http::problem_body(&err).to_string();
                trading.complete_idempotency(user_id, key, err.status().as_u16(), &body).await?;
            }
            Err(err)
        }
    }
}

/// The risk rules for `intent` against the account as the exchange reports it now, its resting
/// orders on the symbol included. The outer error is a failure to judge (exchange or market data
/// away); the inner one the rule's refusal.
pub async fn check_risk(
    state: &(impl Table + Bitget),
    exchange: &dyn Exchange,
    bot: &BotConfig,
    intent: &OrderIntent,
    prefetched: &Prefetched,
) -> Result<Result<(), ApiError>, ApiError> {
    let symbol = &intent.symbol;
    let specs = crate::trading::service::contract_book(state).await?;
    let Some(spec) = specs.get(symbol) else {
        return Ok(Err(ApiError::unprocessable("unknown_symbol", format!("{symbol} is not a supported contract"))));
    };
    let (view, resting) = tokio::join!(exchange.account(), exchange.open_orders(symbol));
    let (view, resting) = (view.map_err(exchange_error)?, resting.map_err(exchange_error)?);
    // In hedge mode a symbol has a long and a short: an opening order is judged against the side
    // it adds to, a reduce-only order against the side it closes (one-way: the one position).
    let opens = intent.side.opens();
    let judged_side = |p: &&crate::trading::model::Position| if intent.reduce_only { p.side != opens } else { p.side == opens };
    let on_symbol = || view.positions.iter().filter(|p| &p.symbol == symbol);
    let position = on_symbol().find(judged_side).or_else(|| on_symbol().next());
    let mark = match exchange.known_mark(symbol).or_else(|| prefetched.mark(symbol)) {
        Some(m) => Some(m),
        None => crate::trading::service::marks(state, std::slice::from_ref(symbol)).await?.get(symbol).copied(),
    };
    let Some(mark) = mark else {
        return Err(ApiError::Unavailable {
            code: "market_data_unavailable",
            detail: format!("no mark price for {symbol} right now"),
            cause: None,
        });
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
        resting: &resting,
        available: view.available,
    }))
}

/// Right before a resumed order is sent: the kill switch, the bot's state and the risk rules
/// again, as for a new order, then the order claimed in a transaction held to the same
/// conditions as a new order's recording (so a stop or a halt that began meanwhile wins, and a
/// stop sees it is being sent). `Ok(Err(refusal))`: it must not be sent.
async fn may_still_send(
    state: &(impl Table + Bitget),
    user_id: &str,
    exchange: &dyn Exchange,
    order: &OrderRecord,
    decided_on: Option<&BotRecord>,
) -> Result<Result<(), ApiError>, ApiError> {
    let intent = &order.intent;
    let trading = state.trading_store();
    let (bot, halted_now) = tokio::join!(trading.bot(user_id), trading.kill_switch_on());
    let bot = bot?;
    let state_now = bot.as_ref().map(|b| b.state).unwrap_or(BotState::Stopped);
    if !intent.reduce_only && halted_now? {
        return Ok(Err(halted()));
    }
    let allowed = state_now == BotState::Running || (intent.reduce_only && state_now == BotState::Stopping);
    let Some(bot) = bot.filter(|_| allowed) else {
        return Ok(Err(bot_not_running()));
    };
    if let Err(refusal) = check_risk(state, exchange, &bot.config, intent, &Prefetched::none()).await? {
        return Ok(Err(refusal));
    }
    // The claim holds the bot to what `exchange` was built from: the same exchange kind and
    // credentials, so a stop, a key change and a restart in between cannot redirect the order.
    let Some(decided_on) = decided_on else {
        return Ok(Err(bot_not_running()));
    };
    Ok(match trading.claim_unsent_order(user_id, order, decided_on).await? {
        ClaimOutcome::Claimed => Ok(()),
        ClaimOutcome::Settled => Err(never_sent()),
        ClaimOutcome::BotNotRunning => Err(bot_not_running()),
        ClaimOutcome::TradingHalted => Err(halted()),
    })
}

/// A recorded order that a stop settled (or another request took) before this one could send it.
fn never_sent() -> ApiError {
    ApiError::conflict("order_not_sent", "this order was never sent: the bot was stopped first; submit it again with a new Idempotency-Key")
}
