//! Candles from Bitget's public market data: the recent ones (`GET /api/v2/mix/market/candles`,
//! up to 1,000 a call) for the strategy runner, and history (`market/history-candles`, up to 200 a
//! call) for backtests. Only closed candles are ever decided on: a candle is closed once its open
//! time plus its interval has passed.

use crate::trading::bitget::BitgetClient;
use crate::trading::exchange::ExchangeError;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// The candle intervals a strategy may run on, named as Bitget names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Interval {
    #[serde(rename = "1m")]
    M1,
    #[serde(rename = "5m")]
    M5,
    #[serde(rename = "15m")]
    M15,
    #[serde(rename = "1H")]
    H1,
    #[serde(rename = "4H")]
    H4,
}

impl Interval {
    pub const ALL: [Interval; 5] = [Interval::M1, Interval::M5, Interval::M15, Interval::H1, Interval::H4];

    pub fn millis(self) -> i64 {
        60_000
            * match self {
                Interval::M1 => 1,
                Interval::M5 => 5,
                Interval::M15 => 15,
                Interval::H1 => 60,
                Interval::H4 => 240,
            }
    }

    /// Bitget's `granularity` value.
    pub fn granularity(self) -> &'static str {
        match self {
            Interval::M1 => "1m",
            Interval::M5 => "5m",
            Interval::M15 => "15m",
            Interval::H1 => "1H",
            Interval::H4 => "4H",
        }
    }

    pub fn parse(text: &str) -> Option<Interval> {
        Interval::ALL.into_iter().find(|i| i.granularity() == text)
    }

    /// The close time of the last candle closed at `now_ms` (candles are UTC-aligned).
    pub fn last_close(self, now_ms: i64) -> i64 {
        now_ms.div_euclid(self.millis()) * self.millis()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candle {
    pub open_time_ms: i64,
    pub open: Decimal,
    pub high: Decimal,
    pub low: Decimal,
    pub close: Decimal,
    pub volume: Decimal,
}

impl Candle {
    pub fn close_time_ms(&self, interval: Interval) -> i64 {
        self.open_time_ms + interval.millis()
    }
}

/// Bitget's candle rows, `[ts, open, high, low, close, baseVolume, quoteVolume]` as strings. A row
/// that does not read is an answer we do not understand: refused whole, never guessed around.
fn parse_rows(data: &serde_json::Value) -> Result<Vec<Candle>, ExchangeError> {
    let malformed = || ExchangeError::Unavailable("malformed candles from the exchange".into());
    let rows = data.as_array().ok_or_else(malformed)?;
    let mut candles = Vec::with_capacity(rows.len());
    for row in rows {
        let field = |i: usize| row.get(i).and_then(serde_json::Value::as_str);
        let d = |i: usize| field(i).and_then(|v| v.parse::<Decimal>().ok());
        let parsed =
            (|| Some(Candle { open_time_ms: field(0)?.parse().ok()?, open: d(1)?, high: d(2)?, low: d(3)?, close: d(4)?, volume: d(5)? }))(
            );
        candles.push(parsed.ok_or_else(malformed)?);
    }
    candles.sort_by_key(|c| c.open_time_ms);
    candles.dedup_by_key(|c| c.open_time_ms);
    Ok(candles)
}

/// The newest `count` (≤ 1,000) candles of `symbol` closed at `now_ms`, oldest first.
pub async fn recent_closed(
    bitget: &BitgetClient,
    symbol: &str,
    interval: Interval,
    now_ms: i64,
    count: u32,
) -> Result<Vec<Candle>, ExchangeError> {
    let last_close = interval.last_close(now_ms);
    // Up to the forming candle's open time, and one more than wanted: whether Bitget counts
    // endTime in or not, the closed ones are all there, and the forming one is dropped below.
    let query = format!(
        "symbol={symbol}&productType={}&granularity={}&endTime={last_close}&limit={}",
        crate::trading::bitget::PRODUCT_TYPE,
        interval.granularity(),
        (count + 1).clamp(1, 1000)
    );
    let data = bitget.get("/api/v2/mix/market/candles", &query, None).await?;
    Ok(parse_rows(&data)?.into_iter().filter(|c| c.close_time_ms(interval) <= now_ms).collect())
}

/// Candles per history call (Bitget's maximum).
pub const HISTORY_PAGE: i64 = 200;

/// Every closed candle of `symbol` opening in [from_ms, to_ms), oldest first, from history pages
/// walked backwards from `to_ms`.
pub async fn history(
    bitget: &BitgetClient,
    symbol: &str,
    interval: Interval,
    from_ms: i64,
    to_ms: i64,
    now_ms: i64,
) -> Result<Vec<Candle>, ExchangeError> {
    let step = interval.millis();
    let mut candles = Vec::new();
    // The newest open time wanted.
    let mut end = (to_ms.min(now_ms) - step).div_euclid(step) * step;
    while end >= from_ms {
        let start = (end - (HISTORY_PAGE - 1) * step).max(from_ms);
        let query = format!(
            "symbol={symbol}&productType={}&granularity={}&startTime={start}&endTime={end}&limit={HISTORY_PAGE}",
            crate::trading::bitget::PRODUCT_TYPE,
            interval.granularity(),
        );
        let data = bitget.get("/api/v2/mix/market/history-candles", &query, None).await?;
        candles.extend(parse_rows(&data)?.into_iter().filter(|c| c.open_time_ms >= start && c.open_time_ms <= end));
        end = start - step;
    }
    candles.sort_by_key(|c| c.open_time_ms);
    candles.dedup_by_key(|c| c.open_time_ms);
    Ok(candles.into_iter().filter(|c| c.close_time_ms(interval) <= now_ms && c.open_time_ms < to_ms).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_candle_is_closed_only_once_its_interval_has_passed() {
        let minute = 60_000;
        assert_eq!(Interval::M1.last_close(10 * minute + 59_999), 10 * minute);
        assert_eq!(Interval::M5.last_close(10 * minute), 10 * minute);
        assert_eq!(Interval::M5.last_close(14 * minute), 10 * minute);
        assert_eq!(Interval::parse("1H"), Some(Interval::H1));
        assert_eq!(Interval::parse("1h"), None, "Bitget's names, exactly");
    }

    #[test]
    fn candle_rows_read_exactly_and_a_bad_row_refuses_the_answer() {
        let rows = serde_json::json!([["120000", "2", "3", "1", "2.5", "10", "25"], ["60000", "1", "2", "0.5", "2", "1", "2"]]);
        let candles = parse_rows(&rows).unwrap();
        assert_eq!(candles[0].open_time_ms, 60_000, "oldest first");
        assert_eq!(candles[1].close.to_string(), "2.5");
        assert!(parse_rows(&serde_json::json!([["x", "1", "1", "1", "1", "1"]])).is_err());
        assert!(parse_rows(&serde_json::json!({"no": "rows"})).is_err());
    }
}
