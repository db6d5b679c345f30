//! The caller's fills (`GET /api/v1/fills`), newest first.
//!
//! Paper fills are written in the paper fill's own transaction, so the paper history is complete.
//! For a Bitget account the exchange is the truth: its fill history (`/api/v2/mix/order/fills`)
//! is copied into the same items before a first page is read, each trade named by Bitget's trade
//! id (so it is stored once however often it is read), with the reason of the order this service
//! recorded for it (`manual` for one placed by hand on Bitget).

use crate::auth::session::Caller;
use crate::error::ApiError;
use crate::state::{Bitget, Table, Vault};
use crate::trading::bitget::{ExchangeFill, FillSpan, FILL_WINDOW_MS, MAX_FILL_PAGES};
use crate::trading::history_store::{FillRecord, PagePosition, TimeRange, DAY_MS};
use crate::trading::model::Side;
use crate::trading::paging;
use crate::trading::service::{exchange_error, live_exchange, load_snapshot};
use crate::trading::store::UserSnapshot;
use futures::{StreamExt, TryStreamExt};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

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
/// A sync is cut off this long after its budget (`FILL_SYNC_BUDGET_MS`, checked between spans),
/// whatever it is doing (the functions' timeout is 10 s).
const SYNC_GRACE: std::time::Duration = std::time::Duration::from_secs(2);
/// How far ahead of this clock Bitget's may stamp a trade.
const CLOCK_SKEW_MS: i64 = 5_000;
/// The span of fills one step of a sync reads, at most and at least.
const SYNC_SPAN_MS: i64 = FILL_WINDOW_MS;
const MIN_SYNC_SPAN_MS: i64 = 100;
/// Orders whose client id one step looks up one at a time (`order/detail`) at most; the trades
/// of the others are taken as made by hand.
const MAX_DETAIL_LOOKUPS: usize = 20;

/// The range `from`/`to` ask for (`to` defaulting to now), or 422 `invalid_range`.
pub fn range_of(parameters: &HashMap<String, String>, now_ms: i64) -> Result<TimeRange, ApiError> {
    let range =
        TimeRange { from_ms: paging::time(parameters, "from")?.unwrap_or(0), to_ms: paging::time(parameters, "to")?.unwrap_or(now_ms) };
    if range.from_ms > range.to_ms {
        return Err(ApiError::unprocessable("invalid_range", "from must not be after to"));
    }
    Ok(range)
}

pub async fn list(state: &(impl Table + Vault + Bitget), caller: &Caller, query: Option<&str>) -> Result<FillPage, ApiError> {
    let parameters = paging::query_parameters(query, &["symbol", "from", "to", "limit", "cursor"])?;
    let symbol = paging::symbol(&parameters)?;
    let limit = paging::limit(&parameters)?;
    let user_id = caller.user_id.as_str();
    let keys = state.encryption_keys().get().await.map_err(|e| ApiError::internal("loading encryption keys", e))?;
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
pub async fn sync_bitget_fills(state: &(impl Table + Vault + Bitget), user_id: &str, snapshot: &UserSnapshot) {
    if snapshot.credentials.is_none() {
        return;
    }
    // The budget is checked between spans; the timeout bounds a span that runs long. What it
    // cuts off is written again by the next read: every write is conditional or idempotent.
    match tokio::time::timeout(state.config().fill_sync_budget + SYNC_GRACE, copy_bitget_fills(state, user_id, snapshot)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(user_id, code = e.code(), error = %e.chain(), "Bitget fills were not synced"),
        Err(_) => tracing::warn!(user_id, "Bitget fills were synced in part: the time for it ran out"),
    }
}

async fn copy_bitget_fills(state: &(impl Table + Vault + Bitget), user_id: &str, snapshot: &UserSnapshot) -> Result<(), ApiError> {
    let Some(credentials) = &snapshot.credentials else { return Ok(()) };
    let started = std::time::Instant::now();
    let store = state.trading_store();
    let now = chrono::Utc::now().timestamp_millis();
    let mark = store.fill_sync_mark(user_id).await?;
    let saved_ms = chrono::DateTime::parse_from_rfc3339(&credentials.updated_at).map(|t| t.timestamp_millis()).unwrap_or(now);
    let synced_to = mark.map(|m| m.synced_to_ms).unwrap_or(saved_ms - FIRST_SYNC_LOOKBACK_MS);
    let margin_mode = snapshot.bot.as_ref().map(|b| b.config.margin_mode).unwrap_or_default();
    let exchange = live_exchange(state, user_id, credentials, margin_mode).await?;
    // Oldest span first, the mark saved after each, so a long first sync makes progress. A span
    // with more fills than one read takes is shortened to what lies before the fills it read,
    // and the span is kept with the mark, so the next read goes on from there.
    let mut from = (synced_to - SYNC_OVERLAP_MS).max(now - BITGET_HISTORY_MS);
    let mut span = mark.and_then(|m| m.span_ms).unwrap_or(SYNC_SPAN_MS).clamp(MIN_SYNC_SPAN_MS, SYNC_SPAN_MS);
    // Bitget's clock may be ahead of this one: a trade it stamps a moment "later" is read now.
    let end = now + CLOCK_SKEW_MS;
    let mut mark_to = synced_to;
    // One span at least, however little budget is left: every read makes progress.
    while from <= end {
        let to = (from + span - 1).min(end);
        let window = TimeRange { from_ms: from, to_ms: to };
        // A step the time-out cuts off leaves the next read a shorter span, until one fits.
        if span > MIN_SYNC_SPAN_MS {
            store.save_fill_sync_mark(user_id, mark_to, (span / 2).max(MIN_SYNC_SPAN_MS)).await?;
        }
        let (trades, known) = tokio::join!(exchange.fills(from, to), store.fill_ids_in(user_id, window));
        let trades = match trades.map_err(exchange_error)? {
            FillSpan::Complete(trades) => trades,
            FillSpan::TooMany { oldest_ms } if span > MIN_SYNC_SPAN_MS => {
                span = (span / 2).min(oldest_ms - from).max(MIN_SYNC_SPAN_MS);
                store.save_fill_sync_mark(user_id, mark_to, span).await?;
                if started.elapsed() >= state.config().fill_sync_budget {
                    break;
                }
                continue;
            }
            FillSpan::TooMany { .. } => {
                return Err(ApiError::internal(
                    "copying Bitget fills",
                    std::io::Error::other(format!("more than {} fills in {span} ms from {from}", MAX_FILL_PAGES * 100)),
                ))
            }
        };
        let known = known?;
        let new: Vec<ExchangeFill> = trades.into_iter().filter(|t| !known.contains(&format!("bitget-{}", t.trade_id))).collect();
        if !new.is_empty() {
            let records = fills_of_trades(state, user_id, &exchange, new, window).await?;
            // One small transaction a fill, several at once (DynamoDB Local takes over a second
            // for a transaction of 24 items, production tens of ms; this is fast on both).
            futures::stream::iter(records)
                .map(|record| async move { state.trading_store().put_fill_if_new(user_id, &record).await })
                .buffer_unordered(8)
                .try_collect::<Vec<bool>>()
                .await?;
        }
        from = to + 1;
        span = (span * 2).min(SYNC_SPAN_MS);
        mark_to = mark_to.max(to.min(now - HISTORY_SETTLE_MS));
        store.save_fill_sync_mark(user_id, mark_to, span).await?;
        if started.elapsed() >= state.config().fill_sync_budget {
            break;
        }
    }
    Ok(())
}

/// Bitget trades as fills, each with the reason of the order this service recorded for it
/// (`manual` for an order placed by hand on Bitget). The order is found by its Bitget id: the id
/// pointer this service wrote, else the client id Bitget's order history gives it, else (for an
/// order the history did not name) its order detail.
async fn fills_of_trades(
    state: &impl Table,
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
    let unknown: Vec<&String> = order_ids.iter().filter(|id| !id.is_empty() && !client_ids.contains_key(*id)).collect();
    if !unknown.is_empty() {
        // Orders are created before they fill: the history from the newest trade back, up to
        // a week and within Bitget's, until each is named. Bitget refusing it leaves the
        // lookups one at a time.
        let newest = trades.iter().map(|t| t.filled_ms).max().unwrap_or(window.to_ms);
        let since = (newest - FILL_WINDOW_MS + 1).max(chrono::Utc::now().timestamp_millis() - BITGET_HISTORY_MS);
        let wanted = unknown.iter().map(|id| id.as_str()).collect();
        let ended = match exchange.ended_order_client_ids(since, newest, &wanted).await {
            Ok(ended) => ended,
            Err(crate::trading::exchange::ExchangeError::Rejected { .. }) => HashMap::new(),
            Err(e) => return Err(exchange_error(e)),
        };
        let mut lookups = 0;
        for id in unknown {
            let client_id = match ended.get(id) {
                Some(cid) => Some(cid.clone()),
                None if lookups < MAX_DETAIL_LOOKUPS => {
                    lookups += 1;
                    let symbol = trades.iter().find(|t| &t.order_id == id).map(|t| t.symbol.as_str()).unwrap_or_default();
                    exchange.client_order_id_of(symbol, id).await.map_err(exchange_error)?
                }
                None => None,
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
