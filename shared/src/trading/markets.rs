//! The markets the bot can trade: Bitget's USDT-M contracts as the contract book holds them
//! (fetched once per execution environment, refreshed hourly), the same specs every order is
//! checked against.

use crate::trading::contracts::ContractSpec;
use rust_decimal::Decimal;
use serde::Serialize;

/// How long a client may cache the list (`Cache-Control: public, max-age`).
pub const MAX_AGE_SECS: u32 = 60;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Market {
    pub symbol: String,
    pub base: String,
    pub quote: String,
    pub min_size: Decimal,
    pub size_step: Decimal,
    pub price_tick: Decimal,
    pub min_notional: Decimal,
    pub max_leverage: u32,
    pub maker_fee: Decimal,
    pub taker_fee: Decimal,
    /// `normal` when it may be traded; otherwise Bitget's status (`maintain`, `limit_open`, …).
    pub status: String,
}

impl From<&ContractSpec> for Market {
    fn from(spec: &ContractSpec) -> Market {
        Market {
            symbol: spec.symbol.clone(),
            base: spec.base.clone(),
            quote: spec.quote.clone(),
            min_size: spec.min_size.normalize(),
            size_step: spec.size_step.normalize(),
            price_tick: spec.price_tick.normalize(),
            min_notional: spec.min_notional.normalize(),
            max_leverage: spec.max_leverage,
            maker_fee: spec.maker_fee_rate.normalize(),
            taker_fee: spec.taker_fee_rate.normalize(),
            status: spec.status.clone(),
        }
    }
}

/// Every market of the book, by symbol.
pub fn list(book: &std::collections::HashMap<String, ContractSpec>) -> Vec<Market> {
    let mut markets: Vec<Market> = book.values().map(Market::from).collect();
    markets.sort_by(|a, b| a.symbol.cmp(&b.symbol));
    markets
}

#[cfg(test)]
mod tests {
    #[test]
    fn markets_come_from_the_contract_specs_sorted_by_symbol() {
        let markets = super::list(&crate::trading::contracts::fixture());
        assert!(markets.windows(2).all(|w| w[0].symbol < w[1].symbol));
        let btc = markets.iter().find(|m| m.symbol == "BTCUSDT").unwrap();
        assert_eq!((btc.base.as_str(), btc.quote.as_str(), btc.price_tick.to_string()), ("BTC", "USDT", "0.1".to_owned()));
        assert_eq!((btc.maker_fee.to_string(), btc.taker_fee.to_string()), ("0.0002".to_owned(), "0.0006".to_owned()));
    }
}
