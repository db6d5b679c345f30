//! The caller's fills (`GET /api/v1/fills`), newest first.
//!
//! Paper fills are written in the paper fill's own transaction, so the paper history is complete.
//! For a Bitget account the exchange is the truth: its fill history (`/api/v2/mix/order/fills`)
//! is copied into the same items before a first page is read, each trade named by Bitget's trade
//! id (so it is stored once however often it is read), with the reason of the order this service
//! recorded for it (`manual` for one placed by hand on Bitget).

use crate::auth::session::Caller;
use crate::error::ApiError;
use crate::state::AppState;
use crate::trading::bitget::{ExchangeFill, FILL_WINDOW_MS};
use crate::trading::history_store::{FillRecord, PagePosition, TimeRange, DAY_MS};
use crate::trading::model::Side;
use crate::trading::paging;
use crate::trading::service::{exchange_error, live_exchange, load_snapshot};
use crate::trading::store::UserSnapshot;
use futures::{StreamExt, TryStreamExt};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// A fill as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fill {
    pub fill_id: String,
    pub order_id: String,
    pub symbol: String,
    pub side: Side,
    pub size: Decimal,
    pub price: Decimal,
    pub fee: Decimal,
    pub realized_pnl: Decimal,
    pub reason: String,
    pub filled_at: String,
}

impl From<FillRecord> for Fill {
    fn from(f: FillRecord) -> Fill {
        Fill {
            fill_id: f.fill_id,
            order_id: f.order_id,
            symbol: f.symbol,
            side: f.side,
            size: f.size.normalize(),
            price: f.price.normalize(),
            fee: f.fee.normalize(),
            realized_pnl: f.realized_pnl.normalize(),
            reason: f.reason,
            filled_at: paging::rfc3339(f.filled_ms),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct FillPage {
    pub fills: Vec<Fill>,
    pub next_cursor: Option<String>,
}

/// What a fills cursor holds: where the page ended, and the range the first page resolved (its
/// `to` defaults to that moment, which must not move under the pages after it).
#[derive(Serialize, Deserialize)]
struct FillCursor {
    at: PagePosition,
    range: TimeRange,
}

/// Fills are copied from Bitget from this long before the credentials were saved.
const FIRST_SYNC_LOOKBACK_MS: i64 = 7 * DAY_MS;
/// Bitget's fill history reaches back this far.
const BITGET_HISTORY_MS: i64 = 90 * DAY_MS;
/// A fill older than this is taken to be in Bitget's fill history: the sync mark never passes
/// it, so a fill that shows up late is still read.
const HISTORY_SETTLE_MS: i64 = 10 * 60_000;
/// Every sync reads again this much before its mark.
const SYNC_OVERLAP_MS: i64 = 60_000;
/// What one read spends syncing at most before it answers what is stored; the rest is caught up
/// from the saved mark by the next read.
const SYNC_BUDGET: std::time::Duration = std::time::Duration::from_secs(4);

/// The range `from`/`to` ask for (`to` defaulting to now), or 422 `invalid_range`.
pub fn range_of(parameters: &std::collections::HashMap<String, String>, now_ms: i64) -> Result<TimeRange, ApiError> {
    let range =
        TimeRange { from_ms: paging::time(parameters, "from")?.unwrap_or(0), to_ms: paging::time(parameters, "to")?.unwrap_or(now_ms) };
    if range.from_ms > range.to_ms {
        return Err(ApiError::unprocessable("invalid_range", "from must not be after to"));
    }
    Ok(range)
}

pub async fn list(state: &AppState, caller: &Caller, query: Option<&str>) -> Result<FillPage, ApiError> {
    let parameters = paging::query_parameters(query, &["symbol", "from", "to", "limit", "cursor"])?;
    let symbol = paging::symbol(&parameters)?;
    let limit = paging::limit(&parameters)?;
    let user_id = caller.user_id.as_str();
    let keys = state.encryption_keys.get().await.map_err(|e| ApiError::internal("loading encryption keys", e))?;
    let text = |name: &str| parameters.get(name).cloned().unwrap_or_default();
    let scope = format!("fills|{user_id}|{}|{}|{}", symbol.as_deref().unwrap_or(""), text("from"), text("to"));
    let cursor: Option<FillCursor> = parameters.get("cursor").map(|c| paging::open(&keys, &scope, c)).transpose()?;
    let range = match &cursor {
        Some(c) => c.range,
        None => range_of(&parameters, chrono::Utc::now().timestamp_millis())?,
    };
    let snapshot = load_snapshot(state, caller).await?;
    // Later pages read what the first one synced: what arrives since is newer than all of them.
    if cursor.is_none() {
        sync_bitget_fills(state, user_id, &snapshot).await;
    }
    let page = state.trading_store().fill_page(user_id, symbol.as_deref(), range, limit, cursor.as_ref().map(|c| &c.at)).await?;
    let next_cursor = page.next.map(|at| paging::seal(&keys, &scope, &FillCursor { at, range })).transpose()?;
    Ok(FillPage { fills: page.items.into_iter().map(Fill::from).collect(), next_cursor })
}

/// Copies the Bitget account's new fills into the caller's fills, when Bitget credentials are
/// stored. Best effort: with Bitget away the stored history is answered, and the next read
/// catches up from the same mark.
pub async fn sync_bitget_fills(state: &AppState, user_id: &str, snapshot: &UserSnapshot) {
    if snapshot.credentials.is_none() {
        return;
    }
    if let Err(e) = copy_bitget_fills(state, user_id, snapshot).await {
        tracing::warn!(user_id, code = e.code(), error = %e.chain(), "Bitget fills were not synced");
    }
}

async fn copy_bitget_fills(state: &AppState, user_id: &str, snapshot: &UserSnapshot) -> Result<(), ApiError> {
    let Some(credentials) = &snapshot.credentials else { return Ok(()) };
    let started = std::time::Instant::now();
    let store = state.trading_store();
    let now = chrono::Utc::now().timestamp_millis();
    let mark = store.fill_sync_mark(user_id).await?;
    let saved_ms = chrono::DateTime::parse_from_rfc3339(&credentials.updated_at).map(|t| t.timestamp_millis()).unwrap_or(now);
    let synced_to = mark.map(|m| m.synced_to_ms).unwrap_or(saved_ms - FIRST_SYNC_LOOKBACK_MS);
    let margin_mode = snapshot.bot.as_ref().map(|b| b.config.margin_mode).unwrap_or_default();
    let exchange = live_exchange(state, user_id, credentials, margin_mode).await?;
    // Oldest week first, the mark saved after each: a long first sync makes progress.
    let mut from = (synced_to - SYNC_OVERLAP_MS).max(now - BITGET_HISTORY_MS);
    while from <= now && started.elapsed() < SYNC_BUDGET {
        let to = (from + FILL_WINDOW_MS - 1).min(now);
        let window = TimeRange { from_ms: from, to_ms: to };
        let (trades, known) = tokio::join!(exchange.fills(from, to), store.fill_ids_in(user_id, window));
        let (trades, known) = (trades.map_err(exchange_error)?, known?);
        let new: Vec<ExchangeFill> = trades.into_iter().filter(|t| !known.contains(&format!("bitget-{}", t.trade_id))).collect();
        if !new.is_empty() {
            let records = fills_of_trades(state, user_id, &exchange, new, window).await?;
            futures::stream::iter(records)
                .map(|record| async move { state.trading_store().put_fill_if_new(user_id, &record).await })
                .buffer_unordered(8)
                .try_collect::<Vec<bool>>()
                .await?;
        }
        store.save_fill_sync_mark(user_id, to.min(now - HISTORY_SETTLE_MS)).await?;
        from = to + 1;
    }
    Ok(())
}

/// Bitget trades as fills, each with the reason of the order this service recorded for it
/// (`manual` for an order placed by hand on Bitget). The order is found by its Bitget id: the id
/// pointer this service wrote, else the client id Bitget's order history (or, for an order
/// older than the window, its order detail) gives it.
async fn fills_of_trades(
    state: &AppState,
    user_id: &str,
    exchange: &crate::trading::bitget::BitgetExchange,
    trades: Vec<ExchangeFill>,
    window: TimeRange,
) -> Result<Vec<FillRecord>, ApiError> {
    let store = state.trading_store();
    let mut order_ids: Vec<String> = trades.iter().map(|t| t.order_id.clone()).collect();
    order_ids.sort();
    order_ids.dedup();
    let mut client_ids = store.client_order_ids_of(user_id, &order_ids).await?;
    let unknown: Vec<&String> = order_ids.iter().filter(|id| !client_ids.contains_key(*id)).collect();
    if !unknown.is_empty() {
        // Orders are created before they fill: a week before the window as well.
        let ended = exchange.ended_order_client_ids(window.from_ms - FILL_WINDOW_MS, window.to_ms).await.map_err(exchange_error)?;
        for id in unknown {
            let client_id = match ended.get(id) {
                Some(cid) => Some(cid.clone()),
                None => {
                    let symbol = trades.iter().find(|t| &t.order_id == id).map(|t| t.symbol.as_str()).unwrap_or_default();
                    exchange.client_order_id_of(symbol, id).await.map_err(exchange_error)?
                }
            };
            if let Some(cid) = client_id {
                client_ids.insert(id.clone(), cid);
            }
        }
    }
    let mut cids: Vec<String> = client_ids.values().cloned().collect();
    cids.sort();
    cids.dedup();
    let orders = store.orders_by_id(user_id, &cids).await?;
    Ok(trades
        .into_iter()
        .map(|trade| {
            // Only an order of this service's is named by its client id.
            let order = client_ids.get(&trade.order_id).and_then(|cid| orders.get(cid));
            let reason = order.and_then(|o| o.reason.clone().or_else(|| o.intent.reason.clone())).unwrap_or_else(|| "manual".to_owned());
            FillRecord {
                fill_id: format!("bitget-{}", trade.trade_id),
                client_order_id: order.map(|o| o.intent.client_order_id.clone()),
                order_id: trade.order_id,
                symbol: trade.symbol,
                side: trade.side,
                size: trade.size.normalize(),
                price: trade.price.normalize(),
                fee: trade.fee.normalize(),
                realized_pnl: trade.realized_pnl.normalize(),
                reason,
                filled_ms: trade.filled_ms,
                exchange: crate::trading::model::ExchangeKind::Bitget,
            }
        })
        .collect())
}
