//! Server-side checks on an order before anything is recorded or sent. Each refusal is a 422
//! with its own code.

use crate::error::ApiError;
use crate::trading::contracts::{on_step, ContractSpec};
use crate::trading::model::{OrderType, Position, Side};
use crate::trading::store::BotConfig;
use rust_decimal::Decimal;

/// A limit price may be at most this far from the mark.
pub const MAX_PRICE_DEVIATION: Decimal = Decimal::from_parts(5, 0, 0, false, 2);

#[derive(Debug, Clone)]
pub struct OrderCheck<'a> {
    pub spec: &'a ContractSpec,
    pub bot: &'a BotConfig,
    pub side: Side,
    pub order_type: OrderType,
    pub size: Decimal,
    pub price: Option<Decimal>,
    pub reduce_only: bool,
    pub mark: Decimal,
    /// The caller's own open position on this symbol, if any.
    pub position: Option<&'a Position>,
    pub available: Decimal,
}

fn refuse(code: &'static str, detail: String) -> ApiError {
    ApiError::unprocessable(code, detail)
}

pub fn check_order(c: &OrderCheck<'_>) -> Result<(), ApiError> {
    let spec = c.spec;
    if spec.symbol != c.bot.symbol {
        return Err(refuse("symbol_not_enabled", format!("the bot trades {}, not {}", c.bot.symbol, spec.symbol)));
    }
    if c.size <= Decimal::ZERO {
        return Err(refuse("invalid_size", "size must be a positive number".into()));
    }
    if c.size < spec.min_size {
        return Err(refuse("size_below_minimum", format!("the minimum size of {} is {}", spec.symbol, spec.min_size)));
    }
    if !on_step(c.size, spec.size_step) {
        return Err(refuse("invalid_size_step", format!("size must be a multiple of {}", spec.size_step)));
    }
    let reference = match (c.order_type, c.price) {
        (OrderType::Market, None) => c.mark,
        (OrderType::Market, Some(_)) => return Err(refuse("invalid_price", "a market order takes no price".into())),
        (OrderType::Limit, None) => return Err(refuse("invalid_price", "a limit order needs a price".into())),
        (OrderType::Limit, Some(p)) if p <= Decimal::ZERO => return Err(refuse("invalid_price", "price must be positive".into())),
        (OrderType::Limit, Some(p)) => {
            if !on_step(p, spec.price_tick) {
                return Err(refuse("invalid_price_tick", format!("price must be a multiple of {}", spec.price_tick)));
            }
            if ((p - c.mark).abs() / c.mark) > MAX_PRICE_DEVIATION {
                return Err(refuse("price_out_of_band", format!("price is more than 5% away from the mark price {}", c.mark)));
            }
            p
        }
    };
    let notional = c.size * reference;
    if notional < spec.min_notional {
        return Err(refuse("notional_below_minimum", format!("an order must be worth at least {} USDT", spec.min_notional)));
    }
    let current = c.position.map(|p| p.size * p.side.direction()).unwrap_or_default();
    let order_signed = match c.side {
        Side::Buy => c.size,
        Side::Sell => -c.size,
    };
    if c.reduce_only {
        let reduces = c.position.is_some_and(|p| p.side.closing_side() == c.side);
        let open = c.position.map(|p| p.size).unwrap_or_default();
        if !reduces || c.size > open {
            return Err(refuse(
                "reduce_only_exceeds_position",
                format!("a reduce-only order can close at most your open {} position ({open})", spec.symbol),
            ));
        }
        return Ok(());
    }
    if c.bot.leverage > spec.max_leverage {
        return Err(refuse("leverage_above_maximum", format!("the maximum leverage of {} is {}", spec.symbol, spec.max_leverage)));
    }
    let resulting = current + order_signed;
    if resulting.abs() * reference > c.bot.max_position_notional {
        return Err(refuse(
            "max_position_notional_exceeded",
            format!("the resulting position would exceed {} USDT", c.bot.max_position_notional),
        ));
    }
    let added = (resulting.abs() - current.abs()).max(Decimal::ZERO);
    let margin = added * reference / Decimal::from(c.bot.leverage.max(1)) + notional * spec.taker_fee_rate;
    if margin > c.available {
        return Err(refuse(
            "insufficient_margin",
            format!("this order needs {} USDT of margin, {} is available", margin.round_dp(2), c.available.round_dp(2)),
        ));
    }
    Ok(())
}

/// Bot settings a start request must satisfy.
pub fn check_bot_config(config: &BotConfig, spec: Option<&ContractSpec>) -> Result<(), ApiError> {
    let spec = spec.ok_or_else(|| refuse("unknown_symbol", format!("{} is not a supported contract", config.symbol)))?;
    if config.leverage == 0 {
        return Err(refuse("invalid_leverage", "leverage must be at least 1".into()));
    }
    if config.leverage > spec.max_leverage {
        return Err(refuse("leverage_above_maximum", format!("the maximum leverage of {} is {}", spec.symbol, spec.max_leverage)));
    }
    let pct_ok = |p: Decimal| p > Decimal::ZERO && p < Decimal::ONE_HUNDRED;
    if !pct_ok(config.stop_loss_pct) {
        return Err(refuse("invalid_stop_loss", "stop_loss_pct must be between 0 and 100 (percent from entry)".into()));
    }
    if config.take_profit_pct.is_some_and(|p| p <= Decimal::ZERO || p > Decimal::from(1000)) {
        return Err(refuse("invalid_take_profit", "take_profit_pct must be above 0 and at most 1000 (percent from entry)".into()));
    }
    if config.trailing_stop_pct.is_some_and(|p| !pct_ok(p)) {
        return Err(refuse("invalid_trailing_stop", "trailing_stop_pct must be between 0 and 100".into()));
    }
    if config.max_position_notional < spec.min_notional {
        return Err(refuse("invalid_max_position_notional", format!("max_position_notional must be at least {} USDT", spec.min_notional)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trading::contracts::contract;
    use crate::trading::model::PositionSide;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }
    fn bot() -> BotConfig {
        BotConfig {
            symbol: "BTCUSDT".into(),
            leverage: 10,
            stop_loss_pct: d("2"),
            take_profit_pct: None,
            trailing_stop_pct: None,
            max_position_notional: d("10000"),
        }
    }
    fn check(side: Side, size: &str, price: Option<&str>, reduce_only: bool, position: Option<&Position>) -> Result<(), ApiError> {
        let bot = bot();
        check_order(&OrderCheck {
            spec: contract("BTCUSDT").unwrap(),
            bot: &bot,
            side,
            order_type: if price.is_some() { OrderType::Limit } else { OrderType::Market },
            size: d(size),
            price: price.map(d),
            reduce_only,
            mark: d("65000"),
            position,
            available: d("1000"),
        })
    }
    fn code(r: Result<(), ApiError>) -> &'static str {
        r.err().map(|e| e.code()).unwrap_or("ok")
    }

    #[test]
    fn each_rule_has_its_own_code() {
        assert_eq!(code(check(Side::Buy, "0.01", None, false, None)), "ok");
        assert_eq!(code(check(Side::Buy, "0", None, false, None)), "invalid_size");
        assert_eq!(code(check(Side::Buy, "0.0005", None, false, None)), "size_below_minimum");
        assert_eq!(code(check(Side::Buy, "0.0015", None, false, None)), "invalid_size_step");
        assert_eq!(code(check(Side::Buy, "0.2", None, false, None)), "max_position_notional_exceeded");
        assert_eq!(code(check(Side::Buy, "0.01", Some("65000.05"), false, None)), "invalid_price_tick");
        assert_eq!(code(check(Side::Buy, "0.01", Some("70000"), false, None)), "price_out_of_band");
        assert_eq!(code(check(Side::Buy, "0.01", Some("64000"), false, None)), "ok");
        assert_eq!(code(check(Side::Sell, "0.01", None, true, None)), "reduce_only_exceeds_position");
        let long = Position {
            symbol: "BTCUSDT".into(),
            side: PositionSide::Long,
            size: d("0.01"),
            entry_price: d("60000"),
            mark_price: d("65000"),
            unrealized_pnl: d("50"),
            instance: "c1".into(),
        };
        assert_eq!(code(check(Side::Sell, "0.01", None, true, Some(&long))), "ok");
        assert_eq!(code(check(Side::Sell, "0.02", None, true, Some(&long))), "reduce_only_exceeds_position");
        assert_eq!(code(check(Side::Buy, "0.01", None, true, Some(&long))), "reduce_only_exceeds_position");
    }

    #[test]
    fn margin_above_the_available_balance_is_refused() {
        let mut bot = bot();
        bot.leverage = 1;
        let r = check_order(&OrderCheck {
            spec: contract("BTCUSDT").unwrap(),
            bot: &bot,
            side: Side::Buy,
            order_type: OrderType::Market,
            size: d("0.1"),
            price: None,
            reduce_only: false,
            mark: d("65000"),
            position: None,
            available: d("1000"),
        });
        assert_eq!(code(r), "insufficient_margin");
    }

    #[test]
    fn tiny_orders_are_refused_for_their_notional() {
        let r = check_order(&OrderCheck {
            spec: contract("ETHUSDT").unwrap(),
            bot: &BotConfig { symbol: "ETHUSDT".into(), ..bot() },
            side: Side::Buy,
            order_type: OrderType::Market,
            size: d("0.01"),
            price: None,
            reduce_only: false,
            mark: d("300"),
            position: None,
            available: d("1000"),
        });
        assert_eq!(code(r), "notional_below_minimum");
    }

    #[test]
    fn bot_settings_are_validated() {
        let spec = contract("BTCUSDT");
        assert!(check_bot_config(&bot(), spec).is_ok());
        assert_eq!(check_bot_config(&BotConfig { leverage: 126, ..bot() }, spec).unwrap_err().code(), "leverage_above_maximum");
        assert_eq!(check_bot_config(&BotConfig { stop_loss_pct: d("0"), ..bot() }, spec).unwrap_err().code(), "invalid_stop_loss");
        assert_eq!(check_bot_config(&bot(), None).unwrap_err().code(), "unknown_symbol");
    }
}
