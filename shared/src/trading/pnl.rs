//! The caller's realized PnL summary (`GET /api/v1/pnl`): the sums over exactly the fills
//! `GET /api/v1/fills` lists for the same range, and a day-by-day series.
//!
//! A day's `equity` is the account's equity at the end of that day as far as fills tell it: the
//! equity now, less what every fill since then realized net of its fee. The last day of a range
//! that ends now is the account's equity (unrealized PnL included); earlier days count realized
//! PnL only, as the marks of that time are not kept.

use crate::auth::session::Caller;
use crate::error::ApiError;
use crate::state::{Bitget, Table, Vault};
use crate::trading::fills::{range_of, sync_bitget_fills};
use crate::trading::history_store::{FillRecord, TimeRange, DAY_MS};
use crate::trading::model::ExchangeKind;
use crate::trading::paging;
use crate::trading::service::{exchange_error, exchange_for, load_snapshot};
use rust_decimal::Decimal;
use serde::Serialize;

/// The longest range one summary covers (its series has one entry per day).
pub const MAX_DAYS: i64 = 366;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub realized_pnl: Decimal,
    pub fees: Decimal,
    /// Fills that realized a profit or a loss (a close at its entry price is not counted).
    pub trades: u64,
    pub wins: u64,
    pub losses: u64,
    pub series: Vec<Day>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Day {
    /// The UTC day, `YYYY-MM-DD`.
    pub date: String,
    pub realized_pnl: Decimal,
    pub fees: Decimal,
    pub equity: Decimal,
}

pub async fn summary(state: &(impl Table + Vault + Bitget), caller: &Caller, query: Option<&str>) -> Result<Summary, ApiError> {
    let parameters = paging::query_parameters(query, &["from", "to", "interval"])?;
    if parameters.get("interval").is_some_and(|i| i != "day") {
        return Err(ApiError::BadRequest { code: "invalid_interval", detail: "interval is day".into() });
    }
    let now = chrono::Utc::now().timestamp_millis();
    let mut range = range_of(&parameters, now)?;
    if !parameters.contains_key("from") {
        // The last 30 days by default, from the start of the first one.
        range.from_ms = (range.to_ms - 29 * DAY_MS).div_euclid(DAY_MS) * DAY_MS;
    }
    if range.to_ms.div_euclid(DAY_MS) - range.from_ms.div_euclid(DAY_MS) >= MAX_DAYS {
        return Err(ApiError::unprocessable("range_too_large", format!("a summary covers at most {MAX_DAYS} days")));
    }
    let user_id = caller.user_id.as_str();
    let snapshot = load_snapshot(state, caller).await?;
    sync_bitget_fills(state, user_id, &snapshot).await;
    let exchange = exchange_for(state, user_id, &snapshot, &[]).await?;
    let account = exchange.account().await.map_err(exchange_error)?;
    // The range's fills and every one after it: the equity walks back from now.
    let fills = state.trading_store().fills_in(user_id, TimeRange { from_ms: range.from_ms, to_ms: now.max(range.to_ms) }).await?;
    Ok(summarize(&fills, range, Now { ms: now, exchange: exchange.kind(), equity: account.equity, unrealized_pnl: account.unrealized_pnl }))
}

/// The account as it is now, where its equity series ends.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub ms: i64,
    pub exchange: ExchangeKind,
    pub equity: Decimal,
    pub unrealized_pnl: Decimal,
}

/// The summary of `fills` (any order) over `range`, the account being `now` after the last of
/// them. A day that ended before now counts what its account's fills had realized by its end;
/// the day of now is the account's equity, unrealized PnL included.
pub fn summarize(fills: &[FillRecord], range: TimeRange, now: Now) -> Summary {
    let in_range: Vec<&FillRecord> = fills.iter().filter(|f| (range.from_ms..=range.to_ms).contains(&f.filled_ms)).collect();
    let closing = in_range.iter().filter(|f| !f.realized_pnl.is_zero());
    // The account's own fills by time, and what each realized net of its fee, summed from the
    // newest back: the equity at a moment is now's balance less what came after it.
    let mut own: Vec<(i64, Decimal)> =
        fills.iter().filter(|f| f.exchange == now.exchange).map(|f| (f.filled_ms, f.realized_pnl - f.fee)).collect();
    own.sort_by_key(|(at, _)| *at);
    let mut after = vec![Decimal::ZERO; own.len() + 1];
    for i in (0..own.len()).rev() {
        after[i] = after[i + 1] + own[i].1;
    }
    let net_after = |end_ms: i64| after[own.partition_point(|(at, _)| *at <= end_ms)];
    let balance_now = now.equity - now.unrealized_pnl;
    let mut by_day: std::collections::BTreeMap<i64, (Decimal, Decimal)> = std::collections::BTreeMap::new();
    for f in &in_range {
        let day = by_day.entry(f.filled_ms.div_euclid(DAY_MS)).or_default();
        day.0 += f.realized_pnl;
        day.1 += f.fee;
    }
    let series = (range.from_ms.div_euclid(DAY_MS)..=range.to_ms.div_euclid(DAY_MS))
        .map(|day| {
            let end = ((day + 1) * DAY_MS - 1).min(range.to_ms);
            let (realized, fees) = by_day.get(&day).copied().unwrap_or_default();
            Day {
                date: chrono::DateTime::from_timestamp_millis(day * DAY_MS).unwrap_or_default().format("%Y-%m-%d").to_string(),
                realized_pnl: realized.normalize(),
                fees: fees.normalize(),
                equity: if end >= now.ms { now.equity } else { balance_now - net_after(end) }.normalize(),
            }
        })
        .collect();
    Summary {
        realized_pnl: in_range.iter().map(|f| f.realized_pnl).sum::<Decimal>().normalize(),
        fees: in_range.iter().map(|f| f.fee).sum::<Decimal>().normalize(),
        trades: closing.clone().count() as u64,
        wins: closing.clone().filter(|f| f.realized_pnl > Decimal::ZERO).count() as u64,
        losses: closing.filter(|f| f.realized_pnl < Decimal::ZERO).count() as u64,
        series,
    }
}
