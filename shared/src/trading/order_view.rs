//! One order as the trader's API shows it (`GET /api/v1/orders/{order_id}`), and cancelling it
//! (`DELETE /api/v1/orders/{order_id}`).
//!
//! An order is named by the id the submit answer gave (`order_id`: the exchange's) or by its
//! `client_order_id`; it is looked up in the caller's own partition only, so someone else's order
//! is 404 exactly as a missing one. The exchange is the truth: a live order whose stored status is
//! not final is asked for again (Bitget's order detail) and the answer stored.

use crate::auth::session::Caller;
use crate::error::ApiError;
use crate::state::AppState;
use crate::trading::exchange::Exchange;
use crate::trading::model::{CancelOutcome, OrderFill, OrderStatus, OrderType, Side};
use crate::trading::paper::ORDER_ID_PREFIX;
use crate::trading::service::{exchange_error, live_exchange, load_snapshot, paper_exchange};
use crate::trading::store::{OrderRecord, UserSnapshot};
use rust_decimal::Decimal;
use serde::Serialize;

/// The order as the API shows it: the submit answer's fields and its history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Order {
    pub order_id: Option<String>,
    pub client_order_id: String,
    pub symbol: String,
    pub side: Side,
    #[serde(rename = "type")]
    pub order_type: OrderType,
    pub size: Decimal,
    /// `pending`, `open`, `partially_filled`, `filled`, `canceled` or `rejected`.
    pub status: &'static str,
    pub filled_size: Decimal,
    pub avg_price: Option<Decimal>,
    /// The limit price; null for a market order.
    pub price: Option<Decimal>,
    pub reduce_only: bool,
    pub fee: Decimal,
    /// `manual` for the trader's own orders; the guardian's and the stop's closes say why.
    pub reason: String,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&OrderRecord> for Order {
    fn from(record: &OrderRecord) -> Order {
        let fill = record.fill.clone().unwrap_or_else(OrderFill::rejected);
        let filled = if record.fill.is_some() { fill.filled_size } else { Decimal::ZERO };
        let status = match record.status {
            OrderStatus::Pending => "pending",
            OrderStatus::Open if filled > Decimal::ZERO => "partially_filled",
            OrderStatus::Open => "open",
            OrderStatus::Filled => "filled",
            OrderStatus::Canceled => "canceled",
            OrderStatus::Rejected => "rejected",
        };
        Order {
            order_id: record.fill.as_ref().map(|f| f.order_id.clone()).filter(|id| !id.is_empty()),
            client_order_id: record.intent.client_order_id.clone(),
            symbol: record.intent.symbol.clone(),
            side: record.intent.side,
            order_type: record.intent.order_type,
            size: record.intent.size.normalize(),
            status,
            filled_size: filled.normalize(),
            avg_price: record.fill.as_ref().and_then(|f| f.avg_price).map(|p| p.normalize()),
            price: record.intent.price.map(|p| p.normalize()),
            reduce_only: record.intent.reduce_only,
            fee: record.fill.as_ref().map(|f| f.fee.normalize()).unwrap_or_default(),
            reason: record.reason.clone().unwrap_or_else(|| "manual".to_owned()),
            created_at: record.created_at.clone(),
            updated_at: record.updated_at.clone(),
        }
    }
}

fn not_found() -> ApiError {
    ApiError::NoSuch { code: "order_not_found", detail: "no order of yours has this id" }
}

fn is_final(status: OrderStatus) -> bool {
    matches!(status, OrderStatus::Filled | OrderStatus::Canceled | OrderStatus::Rejected)
}

/// The caller's order named `id` (its exchange id or its client order id).
async fn find(state: &AppState, user_id: &str, id: &str) -> Result<OrderRecord, ApiError> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(not_found());
    }
    let trading = state.trading_store();
    let client_oid = match id.strip_prefix(ORDER_ID_PREFIX) {
        Some(paper) => paper.to_owned(),
        None => match trading.order(user_id, id).await? {
            Some(record) => return Ok(record),
            None => trading.client_order_id_of(user_id, id).await?.ok_or_else(not_found)?,
        },
    };
    trading.order(user_id, &client_oid).await?.ok_or_else(not_found)
}

/// The exchange an order is on: paper for paper ids, the stored Bitget keys for the others.
async fn exchange_of(
    state: &AppState,
    user_id: &str,
    snapshot: &UserSnapshot,
    record: &OrderRecord,
) -> Result<Box<dyn Exchange>, ApiError> {
    let paper = record.fill.as_ref().is_some_and(|f| f.order_id.starts_with(ORDER_ID_PREFIX))
        || (snapshot.credentials.is_none() && record.fill.as_ref().is_none_or(|f| f.order_id.is_empty()));
    if paper {
        let marks = crate::trading::service::marks(state, std::slice::from_ref(&record.intent.symbol)).await?;
        return Ok(Box::new(paper_exchange(state, user_id, marks, snapshot.clone()).await?));
    }
    let Some(credentials) = &snapshot.credentials else {
        return Err(ApiError::conflict("credentials_missing", "the order is on Bitget but no credentials are stored"));
    };
    let margin_mode = snapshot.bot.as_ref().map(|b| b.config.margin_mode).unwrap_or_default();
    Ok(Box::new(live_exchange(state, user_id, credentials, margin_mode).await?))
}

/// A live order not final in the store, as the exchange has it now (stored).
async fn refreshed(state: &AppState, user_id: &str, snapshot: &UserSnapshot, record: OrderRecord) -> Result<OrderRecord, ApiError> {
    let live = record.fill.as_ref().is_some_and(|f| !f.order_id.is_empty() && !f.order_id.starts_with(ORDER_ID_PREFIX));
    if is_final(record.status) || !live || snapshot.credentials.is_none() {
        return Ok(record);
    }
    let exchange = exchange_of(state, user_id, snapshot, &record).await?;
    match exchange.find_order(&record.intent.symbol, &record.intent.client_order_id).await.map_err(exchange_error)? {
        Some(fill) if fill.status != record.status || Some(&fill) != record.fill.as_ref() => {
            state.trading_store().complete_order(user_id, &record.intent.client_order_id, &fill).await?;
            Ok(OrderRecord { status: fill.status, fill: Some(fill), updated_at: crate::trading::store::now_rfc3339(), ..record })
        }
        _ => Ok(record),
    }
}

pub async fn get(state: &AppState, caller: &Caller, id: &str) -> Result<Order, ApiError> {
    let snapshot = load_snapshot(state, caller).await?;
    let record = find(state, &caller.user_id, id).await?;
    Ok(Order::from(&refreshed(state, &caller.user_id, &snapshot, record).await?))
}

fn not_open(order: &Order) -> ApiError {
    let shown = serde_json::to_string(order).unwrap_or_default();
    ApiError::conflict("order_not_open", format!("the order is {}, not open: {shown}", order.status))
}

/// Cancels the caller's resting order `id`: at the exchange first (live), then in the store. An
/// order that filled (or ended) before the cancel reached it answers 409 `order_not_open` with
/// the order as it ended.
pub async fn cancel(state: &AppState, caller: &Caller, id: &str) -> Result<Order, ApiError> {
    let user_id = caller.user_id.as_str();
    let snapshot = load_snapshot(state, caller).await?;
    let record = refreshed(state, user_id, &snapshot, find(state, user_id, id).await?).await?;
    match record.status {
        OrderStatus::Open => {}
        // Not at the exchange yet: its request settles it (and a stop cancels what rests).
        OrderStatus::Pending => {
            return Err(ApiError::conflict("order_not_open", "the order is not at the exchange yet; read it again in a moment"))
        }
        _ => return Err(not_open(&Order::from(&record))),
    }
    let trading = state.trading_store();
    let exchange = exchange_of(state, user_id, &snapshot, &record).await?;
    let symbol = &record.intent.symbol;
    let client_oid = &record.intent.client_order_id;
    let outcome = exchange.cancel_order(symbol, client_oid).await.map_err(exchange_error)?;
    // What it ended as: the exchange's word for a live order, the paper record's for paper.
    let ended = match exchange.kind() {
        crate::trading::model::ExchangeKind::Paper => trading.order(user_id, client_oid).await?.ok_or_else(not_found)?,
        _ => {
            let fill = exchange.find_order(symbol, client_oid).await.map_err(exchange_error)?;
            let fill = fill.unwrap_or_else(|| OrderFill {
                status: OrderStatus::Canceled,
                order_id: record.fill.as_ref().map(|f| f.order_id.clone()).unwrap_or_default(),
                ..OrderFill::rejected()
            });
            trading.complete_order(user_id, client_oid, &fill).await?;
            OrderRecord { status: fill.status, fill: Some(fill), updated_at: crate::trading::store::now_rfc3339(), ..record }
        }
    };
    let order = Order::from(&ended);
    match (outcome, ended.status) {
        (CancelOutcome::Canceled, OrderStatus::Canceled) => Ok(order),
        _ => Err(not_open(&order)),
    }
}
