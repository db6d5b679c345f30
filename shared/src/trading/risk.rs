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
    /// The caller's orders resting on this symbol: they may all fill, so they count as exposure.
    pub resting: &'a [crate::trading::model::OpenOrder],
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
    if !c.reduce_only && !spec.tradable() {
        return Err(refuse(
            "symbol_not_tradable",
            format!("{} is not open for trading on the exchange ({}); only closing orders are accepted", spec.symbol, spec.status),
        ));
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
            // One-sided, as on Bitget: a buy may not pay more than mark × 1.05, a sell may not
            // ask less than mark × 0.95; a resting buy below or sell above the mark is fine.
            let beyond = match c.side {
                Side::Buy => p > c.mark * (Decimal::ONE + MAX_PRICE_DEVIATION),
                Side::Sell => p < c.mark * (Decimal::ONE - MAX_PRICE_DEVIATION),
            };
            if beyond {
                return Err(refuse("price_out_of_band", format!("price is more than 5% through the mark price {}", c.mark)));
            }
            p
        }
    };
    // A size no market could hold is refused before any arithmetic on it can overflow.
    let too_large = || refuse("invalid_size", "size is beyond what any contract can trade".into());
    let notional = c.size.checked_mul(reference).ok_or_else(too_large)?;
    let current = c.position.map(|p| p.size * p.side.direction()).unwrap_or_default();
    let order_signed = match c.side {
        Side::Buy => c.size,
        Side::Sell => -c.size,
    };
    if c.reduce_only {
        let reduces = c.position.is_some_and(|p| p.side.closing_side() == c.side);
        // What resting closes do not lock already, as Bitget counts it.
        let open = c.position.map(|p| p.available).unwrap_or_default();
        if !reduces || c.size > open {
            return Err(refuse(
                "reduce_only_exceeds_position",
                format!("a reduce-only order can close at most your open {} position ({open})", spec.symbol),
            ));
        }
        // Exempt from the minimum notional, as on Bitget: a small leftover can always be closed.
        return Ok(());
    }
    if notional < spec.min_notional {
        return Err(refuse("notional_below_minimum", format!("an order must be worth at least {} USDT", spec.min_notional)));
    }
    if c.bot.leverage > spec.max_leverage {
        return Err(refuse("leverage_above_maximum", format!("the maximum leverage of {} is {}", spec.symbol, spec.max_leverage)));
    }
    // Every resting order on the same side may fill before this one: the worst case counts them.
    let resting_same_side: Decimal = c.resting.iter().filter(|o| !o.reduce_only && o.side == c.side).map(|o| o.size).sum();
    let resting_signed = if c.side == Side::Buy { resting_same_side } else { -resting_same_side };
    let resulting = current + resting_signed + order_signed;
    if resulting.abs().checked_mul(reference).ok_or_else(too_large)? > c.bot.max_position_notional {
        return Err(refuse(
            "max_position_notional_exceeded",
            format!("the resulting position would exceed {} USDT", c.bot.max_position_notional),
        ));
    }
    let added = (resulting.abs() - (current + resting_signed).abs()).max(Decimal::ZERO);
    let margin =
        added.checked_mul(reference).ok_or_else(too_large)? / Decimal::from(c.bot.leverage.max(1)) + notional * spec.taker_fee_rate;
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
    if !spec.tradable() {
        return Err(refuse("symbol_not_tradable", format!("{} is not open for trading on the exchange ({})", spec.symbol, spec.status)));
    }
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
    // An isolated position is liquidated when its loss eats its margin down to the maintenance
    // margin: at 1/leverage − maintenance rate from entry. A stop at or past that never fires.
    let liquidation_pct =
        (Decimal::ONE / Decimal::from(config.leverage) - crate::trading::contracts::MAINTENANCE_MARGIN_RATE) * Decimal::ONE_HUNDRED;
    if config.stop_loss_pct >= liquidation_pct {
        return Err(refuse(
            "stop_loss_beyond_liquidation",
            format!(
                "at {}x a position is liquidated {}% from entry; stop_loss_pct must be below that",
                config.leverage,
                liquidation_pct.round_dp(2).normalize()
            ),
        ));
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
    use crate::trading::contracts::ContractSpec;
    use crate::trading::model::{OpenOrder, PositionSide};

    fn contract(symbol: &str) -> Option<&'static ContractSpec> {
        static BOOK: std::sync::OnceLock<std::collections::HashMap<String, ContractSpec>> = std::sync::OnceLock::new();
        BOOK.get_or_init(crate::trading::contracts::fixture).get(symbol)
    }

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
            margin_mode: Default::default(),
            strategy: Default::default(),
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
            resting: &[],
            available: d("1000"),
        })
    }
    fn code(r: Result<(), ApiError>) -> &'static str {
        r.err().map(|e| e.code()).unwrap_or("ok")
    }

    #[test]
    fn a_stop_loss_at_or_past_the_liquidation_distance_is_refused() {
        let at = |leverage: u32, stop: &str| {
            code(check_bot_config(&BotConfig { leverage, stop_loss_pct: d(stop), ..bot() }, contract("BTCUSDT")))
        };
        // 50x: liquidated 2 % − 0.4 % = 1.6 % from entry.
        assert_eq!(at(50, "2"), "stop_loss_beyond_liquidation");
        assert_eq!(at(50, "1.6"), "stop_loss_beyond_liquidation");
        assert_eq!(at(50, "1.5"), "ok");
        assert_eq!(at(10, "9"), "ok");
        assert_eq!(at(10, "9.6"), "stop_loss_beyond_liquidation");
    }

    #[test]
    fn a_reduce_only_close_below_the_minimum_notional_is_allowed() {
        let dust = Position {
            symbol: "BTCUSDT".into(),
            side: PositionSide::Long,
            size: d("0.001"),
            entry_price: d("65000"),
            mark_price: d("4000"),
            unrealized_pnl: d("0"),
            instance: "c1".into(),
            available: d("0.001"),
        };
        let bot = bot();
        let close = OrderCheck {
            spec: contract("BTCUSDT").unwrap(),
            bot: &bot,
            side: Side::Sell,
            order_type: OrderType::Market,
            size: d("0.001"),
            price: None,
            reduce_only: true,
            mark: d("4000"), // 0.001 × 4,000 = 4 USDT, under the 5 USDT minimum
            position: Some(&dust),
            resting: &[],
            available: d("1000"),
        };
        assert_eq!(code(check_order(&close)), "ok");
        assert_eq!(code(check_order(&OrderCheck { reduce_only: false, side: Side::Buy, ..close })), "notional_below_minimum");
    }

    #[test]
    fn the_price_band_limits_only_buys_above_and_sells_below_the_mark() {
        // Mark 65,000: a buy may rest far below it, a sell far above it.
        assert_eq!(code(check(Side::Buy, "0.01", Some("60000"), false, None)), "ok");
        assert_eq!(code(check(Side::Buy, "0.01", Some("68300"), false, None)), "price_out_of_band");
        assert_eq!(code(check(Side::Sell, "0.01", Some("70000"), false, None)), "ok");
        assert_eq!(code(check(Side::Sell, "0.01", Some("61700"), false, None)), "price_out_of_band");
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
            available: d("0.01"),
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
            resting: &[],
            available: d("1000"),
        });
        assert_eq!(code(r), "insufficient_margin");
    }

    #[test]
    fn a_size_beyond_any_market_is_refused_not_overflowed() {
        assert_eq!(code(check(Side::Buy, "10000000000000000000000000", None, false, None)), "invalid_size");
        assert_eq!(code(check(Side::Buy, "10000000000000000000000000", Some("65000"), false, None)), "invalid_size");
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
            resting: &[],
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

    #[test]
    fn resting_orders_count_toward_the_position_cap() {
        let bot = bot(); // cap 10,000 USDT
        let buy = |size: &str| OpenOrder {
            order_id: "1".into(),
            client_order_id: "c".into(),
            symbol: "BTCUSDT".into(),
            reduce_only: false,
            side: Side::Buy,
            size: d(size),
            price: Some(d("64000")),
        };
        let resting = [buy("0.05"), buy("0.05")]; // 6,500 USDT at the mark already waiting
        let order = |resting: &[OpenOrder]| {
            code(check_order(&OrderCheck {
                spec: contract("BTCUSDT").unwrap(),
                bot: &bot,
                side: Side::Buy,
                order_type: OrderType::Market,
                size: d("0.06"),
                price: None,
                reduce_only: false,
                mark: d("65000"),
                position: None,
                resting,
                available: d("100000"),
            }))
        };
        assert_eq!(order(&[]), "ok");
        assert_eq!(order(&resting), "max_position_notional_exceeded");
        // Resting sells (or closes) do not add to a long.
        let sells = [OpenOrder { side: Side::Sell, ..buy("0.05") }, OpenOrder { reduce_only: true, ..buy("0.05") }];
        assert_eq!(order(&sells), "ok");
    }

    #[test]
    fn a_contract_not_open_for_trading_refuses_opening_but_not_closing() {
        let mut spec = contract("BTCUSDT").unwrap().clone();
        spec.status = "maintain".into();
        assert_eq!(check_bot_config(&bot(), Some(&spec)).unwrap_err().code(), "symbol_not_tradable");
        let long = Position {
            symbol: "BTCUSDT".into(),
            side: PositionSide::Long,
            size: d("0.01"),
            entry_price: d("65000"),
            mark_price: d("65000"),
            unrealized_pnl: d("0"),
            instance: "c1".into(),
            available: d("0.01"),
        };
        let bot = bot();
        let close = OrderCheck {
            spec: &spec,
            bot: &bot,
            side: Side::Sell,
            order_type: OrderType::Market,
            size: d("0.01"),
            price: None,
            reduce_only: true,
            mark: d("65000"),
            position: Some(&long),
            resting: &[],
            available: d("1000"),
        };
        assert_eq!(code(check_order(&close)), "ok");
        assert_eq!(code(check_order(&OrderCheck { reduce_only: false, side: Side::Buy, ..close })), "symbol_not_tradable");
    }
}
