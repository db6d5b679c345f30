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
use crate::trading::bitget::ExchangeFill;
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
/// A fill older than this is taken to be in Bitget's history: the sync mark moves up to here
/// even when nothing new was found, and every sync reads again a minute before its mark.
const HISTORY_SETTLE_MS: i64 = 10 * 60_000;
const SYNC_OVERLAP_MS: i64 = 60_000;

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
    let store = state.trading_store();
    let now = chrono::Utc::now().timestamp_millis();
    let saved_ms = chrono::DateTime::parse_from_rfc3339(&credentials.updated_at).map(|t| t.timestamp_millis()).unwrap_or(now);
    let mark = store.fill_sync_mark(user_id).await?.unwrap_or(saved_ms - FIRST_SYNC_LOOKBACK_MS);
    let from = (mark - SYNC_OVERLAP_MS).max(now - BITGET_HISTORY_MS);
    let margin_mode = snapshot.bot.as_ref().map(|b| b.config.margin_mode).unwrap_or_default();
    let exchange = live_exchange(state, user_id, credentials, margin_mode).await?;
    let trades = exchange.fills(from, now).await.map_err(exchange_error)?;
    let newest = trades.iter().map(|t| t.filled_ms).max().unwrap_or(mark);
    futures::stream::iter(trades)
        .map(|trade| async move {
            let record = fill_of_trade(state, user_id, trade).await?;
            state.trading_store().put_fill_if_new(user_id, &record).await.map_err(ApiError::from)
        })
        .buffer_unordered(8)
        .try_collect::<Vec<bool>>()
        .await?;
    store.save_fill_sync_mark(user_id, newest.max(now - HISTORY_SETTLE_MS)).await?;
    Ok(())
}

/// A Bitget trade as a fill, with the reason of the order it belongs to when this service
/// recorded that order.
async fn fill_of_trade(state: &AppState, user_id: &str, trade: ExchangeFill) -> Result<FillRecord, ApiError> {
    let store = state.trading_store();
    let client_order_id = store.client_order_id_of(user_id, &trade.order_id).await?;
    let order = match &client_order_id {
        Some(cid) => store.order(user_id, cid).await?,
        None => None,
    };
    let reason = order.and_then(|o| o.reason.or(o.intent.reason)).unwrap_or_else(|| "manual".to_owned());
    Ok(FillRecord {
        fill_id: format!("bitget-{}", trade.trade_id),
        order_id: trade.order_id,
        client_order_id,
        symbol: trade.symbol,
        side: trade.side,
        size: trade.size.normalize(),
        price: trade.price.normalize(),
        fee: trade.fee.normalize(),
        realized_pnl: trade.realized_pnl.normalize(),
        reason,
        filled_ms: trade.filled_ms,
    })
}
