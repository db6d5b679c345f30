//! Contract specifications from Bitget's `GET /api/v2/mix/market/contracts?productType=USDT-FUTURES`,
//! fetched once per execution environment and refreshed hourly (`BitgetClient::contracts`). The
//! paper account trades on the same specs.

use rust_decimal::Decimal;
use serde::Deserialize;
use std::collections::HashMap;
use std::str::FromStr;

/// Every order must be worth at least this much (Bitget's `minTradeUSDT`).
pub const MIN_NOTIONAL_USDT: Decimal = Decimal::from_parts(5, 0, 0, false, 0);
/// The maintenance margin rate of the first risk tier (Bitget reports it per position as
/// `keepMarginRate`; the contracts endpoint does not carry it): 0.4 %.
pub const MAINTENANCE_MARGIN_RATE: Decimal = Decimal::from_parts(4, 0, 0, false, 3);

#[derive(Debug, Clone, PartialEq)]
pub struct ContractSpec {
    pub symbol: String,
    /// The coin traded (`BTC`) and the one it is quoted and margined in (`USDT`).
    pub base: String,
    pub quote: String,
    pub min_size: Decimal,
    pub size_step: Decimal,
    pub price_tick: Decimal,
    pub max_leverage: u32,
    pub min_notional: Decimal,
    pub taker_fee_rate: Decimal,
    pub maker_fee_rate: Decimal,
    /// The first risk tier's maintenance margin rate (`MAINTENANCE_MARGIN_RATE`: the contracts
    /// endpoint does not carry it).
    pub maintenance_margin_rate: Decimal,
    /// `normal` when it may be traded; `maintain`, `limit_open`, `restrictedAPI`, `off`… refuse
    /// opening orders (closing stays possible).
    pub status: String,
}

impl ContractSpec {
    pub fn tradable(&self) -> bool {
        self.status == "normal"
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawContract {
    symbol: String,
    #[serde(default)]
    base_coin: String,
    #[serde(default)]
    quote_coin: String,
    min_trade_num: String,
    size_multiplier: String,
    price_place: String,
    price_end_step: String,
    max_lever: String,
    #[serde(rename = "minTradeUSDT")]
    min_trade_usdt: String,
    taker_fee_rate: String,
    maker_fee_rate: String,
    symbol_status: String,
}

fn dec(s: &str) -> Result<Decimal, String> {
    Decimal::from_str(s).map_err(|e| format!("{s:?}: {e}"))
}

/// Parses the `data` of Bitget's contracts endpoint. A contract that cannot be read is left out
/// (and named in the log) rather than failing the whole book.
pub fn parse_contracts(data: &serde_json::Value) -> HashMap<String, ContractSpec> {
    let raw: Vec<serde_json::Value> = data.as_array().cloned().unwrap_or_default();
    raw.into_iter()
        .filter_map(|c| match parse_contract(c.clone()) {
            Ok(spec) => Some((spec.symbol.clone(), spec)),
            Err(e) => {
                tracing::warn!(symbol = %c["symbol"], error = %e, "unreadable contract skipped");
                None
            }
        })
        .collect()
}

fn parse_contract(raw: serde_json::Value) -> Result<ContractSpec, String> {
    let c: RawContract = serde_json::from_value(raw).map_err(|e| e.to_string())?;
    let places: u32 = c.price_place.parse().map_err(|_| "pricePlace")?;
    Ok(ContractSpec {
        min_size: dec(&c.min_trade_num)?,
        size_step: dec(&c.size_multiplier)?,
        price_tick: dec(&c.price_end_step)? * Decimal::new(1, places),
        max_leverage: c.max_lever.parse().map_err(|_| "maxLever")?,
        min_notional: dec(&c.min_trade_usdt)?.max(MIN_NOTIONAL_USDT),
        taker_fee_rate: dec(&c.taker_fee_rate)?,
        maker_fee_rate: dec(&c.maker_fee_rate)?,
        maintenance_margin_rate: MAINTENANCE_MARGIN_RATE,
        status: c.symbol_status,
        symbol: c.symbol,
        base: c.base_coin,
        quote: c.quote_coin,
    })
}

/// The book as the local Bitget double serves it (`doubles/data/contracts.json`), for unit tests.
#[cfg(test)]
pub fn fixture() -> HashMap<String, ContractSpec> {
    let body: serde_json::Value = serde_json::from_str(include_str!("../../../doubles/data/contracts.json")).unwrap_or_default();
    parse_contracts(&body["data"])
}

/// Is `value` a whole multiple of `step`?
pub fn on_step(value: Decimal, step: Decimal) -> bool {
    step > Decimal::ZERO && (value % step).is_zero()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros_free::d;

    mod rust_decimal_macros_free {
        pub fn d(s: &str) -> rust_decimal::Decimal {
            s.parse().unwrap()
        }
    }

    #[test]
    fn the_fixture_has_btc_and_eth_with_bitget_specs() {
        let book = fixture();
        let contract = |s: &str| book.get(s).cloned();
        let btc = contract("BTCUSDT").unwrap();
        assert_eq!((btc.min_size, btc.size_step, btc.price_tick, btc.max_leverage), (d("0.001"), d("0.001"), d("0.1"), 125));
        let eth = contract("ETHUSDT").unwrap();
        assert_eq!((eth.min_size, eth.size_step, eth.price_tick, eth.max_leverage), (d("0.01"), d("0.01"), d("0.01"), 100));
        assert_eq!(btc.min_notional, d("5"));
        assert_eq!((btc.taker_fee_rate, btc.maker_fee_rate), (d("0.0006"), d("0.0002")));
        assert!(btc.tradable());
        assert!(contract("SOLUSDT").is_some());
    }

    #[test]
    fn steps_are_checked_exactly() {
        assert!(on_step(d("0.003"), d("0.001")));
        assert!(!on_step(d("0.0015"), d("0.001")));
        assert!(on_step(d("65000.1"), d("0.1")));
        assert!(!on_step(d("65000.15"), d("0.1")));
    }
}
