//! What the trading routes and the guardian share: loading a caller's state, choosing their
//! exchange, reading marks, and closing positions with deterministic client order ids.

use crate::auth::session::{authenticate, Caller};
use crate::config::MarketData;
use crate::error::ApiError;
use crate::state::{Bitget, Keys, Table, Vault};
use crate::trading::bitget::{BitgetCredentials, BitgetExchange};
use crate::trading::exchange::{Exchange, ExchangeError, OrderGuard};
use crate::trading::model::{client_order_id, OrderFill, OrderIntent, OrderStatus, OrderType, Position};
use crate::trading::paper::PaperExchange;
use crate::trading::store::UserSnapshot;
use lambda_http::Request;
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::HashMap;

/// A verified caller and everything stored about them, in one round trip after the token check.
pub struct Session {
    pub caller: Caller,
    pub snapshot: UserSnapshot,
}

pub async fn session(state: &(impl Table + Keys), req: &Request) -> Result<Session, ApiError> {
    let caller = authenticate(state, req).await?;
    let snapshot = load_snapshot(state, &caller).await?;
    Ok(Session { caller, snapshot })
}

/// `session` with every mark read alongside the caller's partition (once the token is checked,
/// so a bad token costs no read): what a route showing paper positions needs, in one round trip.
pub async fn session_with_marks(state: &(impl Table + Keys + Bitget), req: &Request) -> Result<(Session, Prefetched), ApiError> {
    let caller = authenticate(state, req).await?;
    let (snapshot, marks) = tokio::join!(load_snapshot(state, &caller), prefetched_marks(state));
    Ok((Session { caller, snapshot: snapshot? }, marks))
}

/// The caller's partition, refused if a global logout came after their token was issued: the
/// "valid after" time arrives with the user's data, no extra round trip.
pub async fn load_snapshot(state: &impl Table, caller: &Caller) -> Result<UserSnapshot, ApiError> {
    let snapshot = state.trading_store().snapshot(&caller.user_id).await?;
    let profile = snapshot.profile.as_ref().ok_or_else(ApiError::invalid_token)?;
    if caller.revoked_by(profile) {
        return Err(ApiError::invalid_token());
    }
    Ok(snapshot)
}

pub fn exchange_error(err: ExchangeError) -> ApiError {
    match err {
        ExchangeError::InvalidCredentials => {
            ApiError::unprocessable("invalid_exchange_credentials", "the exchange refused the stored credentials")
        }
        ExchangeError::InsufficientBalance => {
            ApiError::unprocessable("insufficient_margin", "the exchange reports insufficient balance for this order")
        }
        ExchangeError::PositionModeMismatch => ApiError::unprocessable(
            "position_mode_mismatch",
            "the exchange account's position mode does not match; save the credentials again",
        ),
        ExchangeError::Rejected { code, message } => {
            ApiError::unprocessable("exchange_rejected", format!("the exchange rejected the order ({code}): {message}"))
        }
        ExchangeError::BotNotRunning => ApiError::conflict("bot_not_running", "start the bot before submitting orders"),
        ExchangeError::NoMarkPrice(symbol) => {
            ApiError::Unavailable { code: "market_data_unavailable", detail: format!("no mark price for {symbol} right now"), cause: None }
        }
        ExchangeError::CircuitOpen => ApiError::BadGateway {
            code: "exchange_unavailable",
            detail: "the exchange is failing; calls are paused for a short while".into(),
            cause: None,
        },
        ExchangeError::Unavailable(why) => ApiError::BadGateway {
            code: "exchange_unavailable",
            detail: "the exchange did not answer in time; the order's outcome is being checked".into(),
            cause: Some(why.into()),
        },
        ExchangeError::Store(e) => e.into(),
    }
}

/// Mark prices for `symbols`: from the table locally, from Bitget's public tickers in AWS
/// (one call for every symbol).
pub async fn marks(state: &(impl Table + Bitget), symbols: &[String]) -> Result<HashMap<String, Decimal>, ApiError> {
    if symbols.is_empty() {
        return Ok(HashMap::new());
    }
    let all = all_marks(state).await?;
    Ok(all.into_iter().filter(|(s, _)| symbols.contains(s)).collect())
}

/// Every mark price, in one read (the stored marks' partition locally, Bitget's tickers in AWS).
pub async fn all_marks(state: &(impl Table + Bitget)) -> Result<HashMap<String, Decimal>, ApiError> {
    match state.config().market_data {
        MarketData::Store => Ok(state.trading_store().stored_marks().await?),
        MarketData::Bitget => state.bitget().mark_prices().await.map_err(exchange_error),
    }
}

/// Every stored mark, read alongside a request's first reads, before it knows whether it trades
/// on paper or which symbols it holds: a paper account then needs no read of its own. Only where
/// the marks are a table read (one more Query in the same round trip, nothing to wait for):
/// Bitget's tickers are an HTTP call that live accounts and replays never need, so in AWS a
/// paper account reads them once it knows it is one. Best effort: on failure the account reads
/// the marks it needs itself, and answers for that read.
pub async fn prefetched_marks(state: &(impl Table + Bitget)) -> Prefetched {
    match state.config().market_data {
        MarketData::Store => Prefetched(state.trading_store().stored_marks().await.ok()),
        MarketData::Bitget => Prefetched(None),
    }
}

/// Marks read ahead of need (`None`: the read failed, and is made again where needed).
#[derive(Debug, Clone)]
pub struct Prefetched(Option<HashMap<String, Decimal>>);

impl Prefetched {
    pub fn none() -> Self {
        Prefetched(None)
    }
    pub fn mark(&self, symbol: &str) -> Option<Decimal> {
        self.0.as_ref()?.get(symbol).copied()
    }
}

pub fn decrypt_credentials(
    state_keys: &crate::crypto::EncryptionKeys,
    user_id: &str,
    ciphertext: &str,
) -> Result<BitgetCredentials, ApiError> {
    let plain = state_keys.decrypt(ciphertext, user_id.as_bytes()).map_err(|e| ApiError::internal("decrypting exchange credentials", e))?;
    serde_json::from_slice(&plain).map_err(|_| ApiError::internal("decoding exchange credentials", "malformed plaintext"))
}

/// The caller's Bitget account with their stored credentials, trading in `margin_mode`.
pub async fn live_exchange(
    state: &(impl Vault + Bitget),
    user_id: &str,
    record: &crate::trading::store::CredentialsRecord,
    margin_mode: crate::trading::model::MarginMode,
) -> Result<BitgetExchange, ApiError> {
    let keys = state.encryption_keys().get().await.map_err(|e| ApiError::internal("loading encryption keys", e))?;
    let creds = decrypt_credentials(&keys, user_id, &record.ciphertext)?;
    Ok(BitgetExchange { client: state.bitget().clone(), creds, position_mode: record.position_mode.clone(), margin_mode })
}

/// The caller's exchange. A running or stopping bot trades, and is stopped, on the exchange it
/// was started with, whatever the stored credentials say now; otherwise Bitget when credentials
/// are saved, the paper account when not.
pub async fn exchange_for(
    state: &(impl Table + Vault + Bitget),
    user_id: &str,
    snapshot: &UserSnapshot,
    extra_symbols: &[String],
) -> Result<Box<dyn Exchange>, ApiError> {
    exchange_at(state, user_id, snapshot, extra_symbols, Prefetched::none()).await
}

/// `exchange_for`, a paper account taking its marks from `prefetched` (reading only the ones it
/// lacks).
pub async fn exchange_at(
    state: &(impl Table + Vault + Bitget),
    user_id: &str,
    snapshot: &UserSnapshot,
    extra_symbols: &[String],
    prefetched: Prefetched,
) -> Result<Box<dyn Exchange>, ApiError> {
    let active_bot = snapshot.bot.as_ref().filter(|b| b.state != crate::trading::store::BotState::Stopped);
    let kind = match (active_bot, &snapshot.credentials) {
        (Some(bot), _) => bot.exchange,
        (None, Some(_)) => crate::trading::model::ExchangeKind::Bitget,
        (None, None) => crate::trading::model::ExchangeKind::Paper,
    };
    if kind == crate::trading::model::ExchangeKind::Bitget {
        let Some(record) = &snapshot.credentials else {
            return Err(ApiError::conflict("credentials_missing", "the bot trades on Bitget but no credentials are stored"));
        };
        let margin_mode = snapshot.bot.as_ref().map(|b| b.config.margin_mode).unwrap_or_default();
        let mut exchange = live_exchange(state, user_id, record, margin_mode).await?;
        // A bot trades in the position mode it found at start.
        if let Some(mode) = active_bot.and_then(|b| b.position_mode.clone()) {
            exchange.position_mode = mode;
        }
        return Ok(Box::new(exchange));
    }
    let mut symbols: Vec<String> = snapshot.positions.iter().map(|p| p.symbol.clone()).collect();
    symbols.extend(extra_symbols.iter().cloned());
    symbols.sort();
    symbols.dedup();
    let mut known: HashMap<String, Decimal> = symbols.iter().filter_map(|s| Some((s.clone(), prefetched.mark(s)?))).collect();
    let missing: Vec<String> = symbols.into_iter().filter(|s| !known.contains_key(s)).collect();
    // A symbol without a mark in the prefetch is read again: it may have been set since.
    known.extend(marks(state, &missing).await?);
    Ok(Box::new(paper_exchange(state, user_id, known, snapshot.clone()).await?))
}

/// The caller's paper account at `marks`, on Bitget's contract specs.
pub async fn paper_exchange(
    state: &(impl Table + Bitget),
    user_id: &str,
    marks: HashMap<String, Decimal>,
    snapshot: UserSnapshot,
) -> Result<PaperExchange, ApiError> {
    let specs = contract_book(state).await?;
    Ok(PaperExchange::new(state.dynamo().clone(), state.config().clone(), user_id.to_owned(), marks, specs, snapshot))
}

/// Bitget's contract specs (cached per environment, refreshed hourly); 503 while they cannot be
/// read at all.
pub async fn contract_book(state: &impl Bitget) -> Result<crate::trading::bitget::ContractBook, ApiError> {
    state.bitget().contracts().await.map_err(|e| ApiError::Unavailable {
        code: "market_data_unavailable",
        detail: "the exchange's contract specifications cannot be read right now".into(),
        cause: Some(Box::new(e)),
    })
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClosedPosition {
    pub symbol: String,
    pub side: crate::trading::model::PositionSide,
    pub size: Decimal,
    pub exit_price: Option<Decimal>,
    pub realized_pnl: Decimal,
}

/// Closes `position` with a reduce-only market order whose client id derives from `reason_key`,
/// recorded before it is sent: running this twice (a retried stop, two overlapping sweeps)
/// finds the first order instead of placing a second.
pub async fn close_position(
    state: &impl Table,
    exchange: &dyn Exchange,
    user_id: &str,
    position: &Position,
    leverage: u32,
    reason_key: &str,
    reason: &str,
) -> Result<Option<ClosedPosition>, ApiError> {
    let mut position = position.clone();
    let side_name = match position.side {
        crate::trading::model::PositionSide::Long => "long",
        crate::trading::model::PositionSide::Short => "short",
    };
    if position.available.is_zero() {
        return Err(locked(&position.symbol));
    }
    let store = state.trading_store();
    // The closes of this action on this position, one after another: a close that ended (filled
    // whole, or partly with the rest canceled) while the position is still open leaves the next
    // one to a new order, never a replay of the last one's fill.
    for slot in 0..CLOSES_PER_ACTION {
        let key = match slot {
            0 => reason_key.to_owned(),
            n => format!("{reason_key}-{n}"),
        };
        let intent = OrderIntent {
            symbol: position.symbol.clone(),
            side: position.side.closing_side(),
            order_type: OrderType::Market,
            // What resting closes do not lock: Bitget refuses a reduce-only order for more.
            size: position.available,
            price: None,
            reduce_only: true,
            client_order_id: client_order_id(&[user_id, &key, &position.symbol, side_name]),
            leverage,
            reason: Some(reason.to_owned()),
        };
        // A refusal settles the order as rejected (it was never placed, and a later round may
        // try again); an unknown outcome leaves it pending for a lookup.
        let place = || async {
            match exchange.place_order(&intent, OrderGuard::default()).await {
                Ok(fill) => Ok(fill),
                Err(e @ (ExchangeError::Unavailable(_) | ExchangeError::CircuitOpen)) => Err(exchange_error(e)),
                Err(e) => {
                    if exchange.kind() != crate::trading::model::ExchangeKind::Paper {
                        store.complete_order(user_id, &intent.client_order_id, &OrderFill::rejected()).await?;
                    }
                    Err(exchange_error(e))
                }
            }
        };
        let fill = if store.record_pending_order(user_id, &intent).await? {
            place().await?
        } else {
            match store.order(user_id, &intent.client_order_id).await?.and_then(|o| o.fill) {
                // Ended before. If this very position is still open (the close filled partly, or
                // more was added), the next close is a new order sized on what is open now;
                // if it is gone (closed by that order, or replaced by a new one), nothing is left
                // for this action to do.
                Some(fill) if matches!(fill.status, OrderStatus::Filled | OrderStatus::Canceled) => {
                    let same = |p: &Position| p.symbol == position.symbol && p.side == position.side && p.instance == position.instance;
                    match exchange.positions().await.map_err(exchange_error)?.into_iter().find(same) {
                        Some(now) if !now.available.is_zero() => {
                            position = now;
                            continue;
                        }
                        Some(_) => return Err(locked(&position.symbol)),
                        None => return Ok(None),
                    }
                }
                Some(fill) if fill.status == OrderStatus::Open => fill,
                // Recorded by an earlier run that died before the exchange answered, or refused
                // then: ask the exchange before sending it (again).
                _ => match exchange.find_order(&intent.symbol, &intent.client_order_id).await.map_err(exchange_error)? {
                    Some(fill) => fill,
                    None => place().await?,
                },
            }
        };
        // The paper exchange writes the order record inside its fill transaction.
        if exchange.kind() != crate::trading::model::ExchangeKind::Paper && fill.status != OrderStatus::Pending {
            store.complete_order(user_id, &intent.client_order_id, &fill).await?;
        }
        return Ok(Some(closed_from(&position, &fill)));
    }
    Err(ApiError::BadGateway {
        code: "close_failed",
        detail: format!("the {} position is still open after {CLOSES_PER_ACTION} closing orders", position.symbol),
        cause: None,
    })
}

fn locked(symbol: &str) -> ApiError {
    ApiError::BadGateway { code: "close_failed", detail: format!("the {symbol} position is locked by resting close orders"), cause: None }
}

/// Closing orders one action (a trigger on a position instance, a stop round) may send before
/// it gives up and reports the position as failing to close.
pub const CLOSES_PER_ACTION: u32 = 20;

fn closed_from(position: &Position, fill: &OrderFill) -> ClosedPosition {
    ClosedPosition {
        symbol: position.symbol.clone(),
        side: position.side,
        size: fill.filled_size,
        exit_price: fill.avg_price,
        realized_pnl: fill.realized_pnl,
    }
}
