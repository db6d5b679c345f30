//! One order as the trader's API shows it (`GET /api/v1/orders/{order_id}`), and cancelling it
//! (`DELETE /api/v1/orders/{order_id}`).
//!
//! An order is named by the id the submit answer gave (`order_id`: the exchange's) or by its
//! `client_order_id`; it is looked up in the caller's own partition only, so someone else's order
//! is 404 exactly as a missing one. The exchange is the truth: a live order whose stored status is
//! not final is asked for again (Bitget's order detail) and the answer stored.

use crate::auth::session::Caller;
use crate::error::ApiError;
use crate::state::{Bitget, Table, Vault};
use crate::trading::exchange::Exchange;
use crate::trading::model::{CancelOutcome, OrderFill, OrderStatus, OrderType, Side};
use crate::trading::paper::ORDER_ID_PREFIX;
use crate::trading::service::{exchange_error, live_exchange, load_snapshot};
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
            reason: record.reason.clone().or_else(|| record.intent.reason.clone()).unwrap_or_else(|| "manual".to_owned()),
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

/// The caller's order named `id`: its client order id, its paper order id, or Bitget's id.
async fn find(state: &impl Table, user_id: &str, id: &str) -> Result<OrderRecord, ApiError> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(not_found());
    }
    let trading = state.trading_store();
    if let Some(record) = trading.order(user_id, id).await? {
        return Ok(record);
    }
    let client_oid = match id.strip_prefix(ORDER_ID_PREFIX) {
        Some(paper) => paper.to_owned(),
        None => trading.client_order_id_of(user_id, id).await?.ok_or_else(not_found)?,
    };
    trading.order(user_id, &client_oid).await?.ok_or_else(not_found)
}

/// Whether the order is on the paper account: its id says so, or it never reached an exchange
/// while the caller had no Bitget keys.
fn on_paper(snapshot: &UserSnapshot, record: &OrderRecord) -> bool {
    match record.fill.as_ref().map(|f| f.order_id.as_str()).filter(|id| !id.is_empty()) {
        Some(id) => id.starts_with(ORDER_ID_PREFIX),
        None => snapshot.credentials.is_none(),
    }
}

/// The caller's Bitget account, for an order that is on it.
async fn bitget_of(state: &(impl Vault + Bitget), user_id: &str, snapshot: &UserSnapshot) -> Result<Box<dyn Exchange>, ApiError> {
    let Some(credentials) = &snapshot.credentials else {
        return Err(ApiError::conflict("credentials_missing", "the order is on Bitget but no credentials are stored"));
    };
    let margin_mode = snapshot.bot.as_ref().map(|b| b.config.margin_mode).unwrap_or_default();
    Ok(Box::new(live_exchange(state, user_id, credentials, margin_mode).await?))
}

/// A live order not final in the store, as Bitget has it now (stored, unless a final status got
/// there first). An order recorded a moment ago may still be on its way: it is left to its
/// request.
async fn refreshed(
    state: &(impl Table + Vault + Bitget),
    user_id: &str,
    snapshot: &UserSnapshot,
    record: OrderRecord,
) -> Result<OrderRecord, ApiError> {
    if is_final(record.status) || on_paper(snapshot, &record) || (record.fill.is_none() && record.may_be_in_flight()) {
        return Ok(record);
    }
    let trading = state.trading_store();
    let client_oid = record.intent.client_order_id.clone();
    let exchange = bitget_of(state, user_id, snapshot).await?;
    match exchange.find_order(&record.intent.symbol, &client_oid).await.map_err(exchange_error)? {
        Some(fill) if Some(&fill) != record.fill.as_ref() => {
            trading.refresh_order(user_id, &client_oid, &fill).await?;
            // What the store holds now: the exchange's answer, or a final status that won.
            Ok(trading.order(user_id, &client_oid).await?.unwrap_or(record))
        }
        _ => Ok(record),
    }
}

pub async fn get(state: &(impl Table + Vault + Bitget), caller: &Caller, id: &str) -> Result<Order, ApiError> {
    let snapshot = load_snapshot(state, caller).await?;
    let record = find(state, &caller.user_id, id).await?;
    // Bitget away or the keys refused: the order as last stored, rather than no answer.
    let record = match refreshed(state, &caller.user_id, &snapshot, record.clone()).await {
        Ok(fresh) => fresh,
        Err(e) => {
            tracing::warn!(user_id = caller.user_id, code = e.code(), error = %e.chain(), "an order was not refreshed from the exchange");
            record
        }
    };
    Ok(Order::from(&record))
}

fn not_open(order: &Order) -> ApiError {
    let shown = serde_json::to_string(order).unwrap_or_default();
    ApiError::conflict("order_not_open", format!("the order is {}, not open: {shown}", order.status))
}

/// Cancels the caller's resting order `id`: at the exchange first (live), then in the store. An
/// order that filled (or ended) before the cancel reached it answers 409 `order_not_open` with
/// the order as it ended.
pub async fn cancel(state: &(impl Table + Vault + Bitget), caller: &Caller, id: &str) -> Result<Order, ApiError> {
    let user_id = caller.user_id.as_str();
    let snapshot = load_snapshot(state, caller).await?;
    let record = refreshed(state, user_id, &snapshot, find(state, user_id, id).await?).await?;
    // Ended, or not at the exchange yet (its request settles it, and a stop cancels what rests).
    if record.status != OrderStatus::Open {
        return Err(not_open(&Order::from(&record)));
    }
    let trading = state.trading_store();
    let client_oid = record.intent.client_order_id.clone();
    if on_paper(&snapshot, &record) {
        // The simulated book is the store: no market data needed to take an order off it.
        let canceled = trading.cancel_resting_order(user_id, &client_oid).await?;
        let ended = trading.order(user_id, &client_oid).await?.ok_or_else(not_found)?;
        return if canceled { Ok(Order::from(&ended)) } else { Err(not_open(&Order::from(&ended))) };
    }
    let exchange = bitget_of(state, user_id, &snapshot).await?;
    let symbol = record.intent.symbol.clone();
    let outcome = exchange.cancel_order(&symbol, &client_oid).await.map_err(exchange_error)?;
    let looked_up = exchange.find_order(&symbol, &client_oid).await;
    let fill = match (outcome, looked_up) {
        // Canceled at Bitget: its final word when it has one, else the fill known so far, canceled
        // (a detail that lags behind still says `live`).
        (CancelOutcome::Canceled, Ok(Some(fill))) if is_final(fill.status) => fill,
        (CancelOutcome::Canceled, _) => {
            let known = record.fill.clone().unwrap_or_else(OrderFill::rejected);
            OrderFill { status: OrderStatus::Canceled, ..known }
        }
        // It had ended before the cancel reached it: as Bitget says it ended.
        (CancelOutcome::NotOpen, Ok(Some(fill))) if fill.status != OrderStatus::Pending => fill,
        (CancelOutcome::NotOpen, Ok(_)) => {
            return Err(ApiError::BadGateway {
                code: "exchange_unavailable",
                detail: "Bitget did not say what became of the order; read it again in a moment".into(),
                cause: None,
            })
        }
        (CancelOutcome::NotOpen, Err(e)) => return Err(exchange_error(e)),
    };
    trading.refresh_order(user_id, &client_oid, &fill).await?;
    let ended = trading.order(user_id, &client_oid).await?.ok_or_else(not_found)?;
    let order = Order::from(&ended);
    match (outcome, ended.status) {
        (CancelOutcome::Canceled, OrderStatus::Canceled) => Ok(order),
        _ => Err(not_open(&order)),
    }
}

#[derive(Debug, Serialize)]
pub struct OrderPage {
    pub orders: Vec<Order>,
    pub next_cursor: Option<String>,
}

/// Live orders of a page refreshed from Bitget at most: its order detail allows 10 calls a second.
const REFRESHED_PER_PAGE: usize = 10;
/// How long a page waits for those refreshes; an order not refreshed by then shows as stored.
const REFRESH_BUDGET: std::time::Duration = std::time::Duration::from_secs(3);

/// `GET /api/v1/orders`: the caller's orders, newest first, all of them or those not final
/// (`status=open`), of every symbol or of one. A live order not final is refreshed from Bitget
/// (the first ones of the page, within Bitget's rate), as when it is read alone.
pub async fn list(state: &(impl Table + Vault + Bitget), caller: &Caller, query: Option<&str>) -> Result<OrderPage, ApiError> {
    use crate::trading::history_store::PagePosition;
    use futures::StreamExt;
    let parameters = crate::trading::paging::query_parameters(query, &["status", "symbol", "limit", "cursor"])?;
    let open_only = match parameters.get("status").map(String::as_str) {
        None | Some("all") => false,
        Some("open") => true,
        Some(_) => return Err(ApiError::BadRequest { code: "invalid_status", detail: "status is open or all".into() }),
    };
    let symbol = crate::trading::paging::symbol(&parameters)?;
    let limit = crate::trading::paging::limit(&parameters)?;
    let user_id = caller.user_id.as_str();
    let keys = state.encryption_keys().get().await.map_err(|e| ApiError::internal("loading encryption keys", e))?;
    let scope = format!("orders|{user_id}|{}|{}", if open_only { "open" } else { "all" }, symbol.as_deref().unwrap_or(""));
    let after: Option<PagePosition> = parameters.get("cursor").map(|c| crate::trading::paging::open(&keys, &scope, c)).transpose()?;
    let trading = state.trading_store();
    let page = async {
        if open_only {
            trading.open_order_page(user_id, symbol.as_deref(), limit, after.as_ref()).await
        } else {
            trading.order_page(user_id, symbol.as_deref(), limit, after.as_ref()).await
        }
    };
    // The revocation check and the page in one round trip.
    let (snapshot, page) = tokio::join!(load_snapshot(state, caller), page);
    let (snapshot, page) = (snapshot?, page?);
    let stale = page.items.iter().filter(|r| !is_final(r.status) && !on_paper(&snapshot, r)).count();
    let records: Vec<OrderRecord> = if stale == 0 {
        page.items
    } else {
        let mut refreshes = 0;
        let pending: Vec<_> = page
            .items
            .into_iter()
            .map(|record| {
                let refresh = !is_final(record.status) && !on_paper(&snapshot, &record) && refreshes < REFRESHED_PER_PAGE;
                refreshes += usize::from(refresh);
                (record, refresh)
            })
            .collect();
        let deadline = tokio::time::Instant::now() + REFRESH_BUDGET;
        futures::stream::iter(pending)
            .map(|(record, refresh)| {
                let snapshot = &snapshot;
                async move {
                    if !refresh {
                        return record;
                    }
                    match tokio::time::timeout_at(deadline, refreshed(state, user_id, snapshot, record.clone())).await {
                        Ok(Ok(fresh)) => fresh,
                        _ => record,
                    }
                }
            })
            .buffered(4)
            .collect()
            .await
    };
    // An order the refresh found ended is no longer an open one.
    let records: Vec<OrderRecord> = records.into_iter().filter(|r| !open_only || !is_final(r.status)).collect();
    let next_cursor = page.next.map(|at| crate::trading::paging::seal(&keys, &scope, &at)).transpose()?;
    Ok(OrderPage { orders: records.iter().map(Order::from).collect(), next_cursor })
}
