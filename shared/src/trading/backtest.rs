//! The backtest: historical candles replayed through the same strategy code as the scheduled
//! runner (`ema_cross::decide`, `grid::plan`), the same risk rules (`risk::check_order`) and the
//! same paper fill model (`paper::apply_fill`: market orders at the close with the taker fee,
//! resting limits at their price with the maker fee). The bot's exits are checked on each candle's
//! low and high before the strategy decides at its close; a triggered exit ends the run, as it
//! stops a live strategy bot.

use crate::error::ApiError;
use crate::guardian::{best_mark, trigger};
use crate::trading::candles::{Candle, Interval};
use crate::trading::contracts::ContractSpec;
use crate::trading::ema_cross;
use crate::trading::grid::{self, Ended, GridState};
use crate::trading::model::{client_order_id, OpenOrder, OrderIntent, PositionSide, Side};
use crate::trading::paper::{account_view, apply_fill, position_view};
use crate::trading::risk::{check_order, OrderCheck, MAX_PRICE_DEVIATION};
use crate::trading::store::{BotConfig, PaperAccount, PaperPosition};
use crate::trading::strategy::{Strategy, StrategyOrder};
use rust_decimal::Decimal;
use serde::Serialize;

/// Candles one backtest may replay.
pub const MAX_CANDLES: i64 = 10_000;

/// A backtest asked for, its fields read.
#[derive(Debug, Clone)]
pub struct Backtest {
    /// The bot settings it runs with (its strategy, its exits and its risk limits).
    pub config: BotConfig,
    pub interval: Interval,
    pub from_ms: i64,
    pub to_ms: i64,
    pub start_balance: Decimal,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trade {
    pub time: String,
    pub side: Side,
    pub size: Decimal,
    pub price: Decimal,
    pub fee: Decimal,
    pub realized_pnl: Decimal,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EquityPoint {
    pub time: String,
    pub equity: Decimal,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub trades: Vec<Trade>,
    pub realized_pnl: Decimal,
    pub fees: Decimal,
    /// The largest fall of equity from an earlier peak, as a fraction of that peak.
    pub max_drawdown: Decimal,
    /// Closing trades with a profit, as a fraction of all closing trades (0 when none closed).
    pub win_rate: Decimal,
    pub equity: Vec<EquityPoint>,
    /// Why the run ended before its last candle (a triggered exit), if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_by: Option<String>,
}

fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)).unwrap_or_default()
}

/// Refuses what cannot be replayed: a range the wrong way round or longer than `MAX_CANDLES`.
pub fn check_range(interval: Interval, from_ms: i64, to_ms: i64) -> Result<(), ApiError> {
    if from_ms >= to_ms {
        return Err(ApiError::unprocessable("invalid_range", "from must be before to"));
    }
    let step = interval.millis();
    let candles = (to_ms - from_ms + step - 1) / step;
    if candles > MAX_CANDLES {
        return Err(ApiError::unprocessable(
            "range_too_large",
            format!("the range holds {candles} {} candles; at most {MAX_CANDLES} per backtest", interval.granularity()),
        ));
    }
    Ok(())
}

/// The simulated account of a run.
struct Sim<'a> {
    config: &'a BotConfig,
    spec: &'a ContractSpec,
    account: PaperAccount,
    position: Option<PaperPosition>,
    /// Resting grid orders: (level, intent).
    resting: Vec<(u32, OrderIntent)>,
    trades: Vec<Trade>,
    serial: u64,
}

impl Sim<'_> {
    fn intent(&mut self, order: &StrategyOrder) -> OrderIntent {
        self.serial += 1;
        OrderIntent {
            symbol: self.config.symbol.clone(),
            side: order.side,
            order_type: order.order_type,
            size: order.size,
            price: order.price,
            reduce_only: order.reduce_only,
            client_order_id: client_order_id(&["backtest", &self.serial.to_string()]),
            leverage: self.config.leverage,
            reason: None,
        }
    }

    fn fill(&mut self, intent: &OrderIntent, price: Decimal, fee_rate: Decimal, at_ms: i64, reason: &str) {
        let outcome = apply_fill(&self.account, self.position.as_ref(), intent, price, fee_rate);
        if outcome.fill.filled_size.is_zero() {
            return;
        }
        // A position carries its high-water mark across fills, as the live one does.
        let high_water = self.position.as_ref().and_then(|p| p.high_water);
        self.account = outcome.account;
        self.position = outcome.position.map(|p| PaperPosition { high_water: p.high_water.or(high_water), ..p });
        self.trades.push(Trade {
            time: time(at_ms),
            side: intent.side,
            size: outcome.fill.filled_size,
            price,
            fee: outcome.fill.fee,
            realized_pnl: outcome.fill.realized_pnl,
            reason: reason.to_owned(),
        });
    }

    /// The live risk rules for `order` at `mark`: the account, position and resting orders as
    /// the simulation holds them.
    fn allowed(&self, order: &StrategyOrder, mark: Decimal) -> bool {
        let views: Vec<_> = self.position.iter().map(|p| position_view(p, mark)).collect();
        let resting_intents: Vec<&OrderIntent> = self.resting.iter().map(|(_, i)| i).collect();
        let view = account_view(&self.account, self.position.as_slice(), views, &resting_intents);
        let resting: Vec<OpenOrder> = self
            .resting
            .iter()
            .map(|(_, i)| OpenOrder {
                order_id: String::new(),
                client_order_id: i.client_order_id.clone(),
                symbol: i.symbol.clone(),
                reduce_only: i.reduce_only,
                side: i.side,
                size: i.size,
                price: i.price,
            })
            .collect();
        check_order(&OrderCheck {
            spec: self.spec,
            bot: self.config,
            side: order.side,
            order_type: order.order_type,
            size: order.size,
            price: order.price,
            reduce_only: order.reduce_only,
            mark,
            position: view.positions.first(),
            resting: &resting,
            available: view.available,
        })
        .is_ok()
    }

    fn equity(&self, mark: Decimal) -> Decimal {
        self.account.balance + self.position.as_ref().map(|p| position_view(p, mark).unrealized_pnl).unwrap_or_default()
    }

    /// The bot's exits against the candle's range: the adverse extreme first (stop-loss,
    /// trailing stop against the best mark so far), then the favourable one (take-profit). The
    /// exit fills at its trigger price (at the open when the candle opened past it).
    fn exit(&mut self, candle: &Candle, at_ms: i64) -> Option<String> {
        let p = self.position.clone()?;
        let (adverse, favourable) = match p.side {
            PositionSide::Long => (candle.low, candle.high),
            PositionSide::Short => (candle.high, candle.low),
        };
        let hundred = Decimal::ONE_HUNDRED;
        let dir = p.side.direction();
        let hw = p.high_water.unwrap_or(p.entry_price);
        let reason = trigger(self.config, p.side, p.entry_price, adverse, Some(hw))
            .or_else(|| trigger(self.config, p.side, p.entry_price, favourable, Some(best_mark(p.side, hw, favourable))))?;
        let level = match reason {
            "stop_loss" => p.entry_price * (Decimal::ONE - dir * self.config.stop_loss_pct / hundred),
            "take_profit" => p.entry_price * (Decimal::ONE + dir * self.config.take_profit_pct.unwrap_or_default() / hundred),
            _ => hw * (Decimal::ONE - dir * self.config.trailing_stop_pct.unwrap_or_default() / hundred),
        };
        // Past the level at the open: the exit fills at the open (a gap), not at a better price.
        let gapped = (level - candle.open) * dir > Decimal::ZERO;
        let price = if gapped && reason != "take_profit" { candle.open } else { level }.round_dp(8);
        let close = OrderIntent {
            symbol: p.symbol.clone(),
            side: p.side.closing_side(),
            order_type: crate::trading::model::OrderType::Market,
            size: p.size,
            price: None,
            reduce_only: true,
            client_order_id: format!("exit-{at_ms}"),
            leverage: p.leverage,
            reason: Some(reason.to_owned()),
        };
        self.fill(&close, price, self.spec.taker_fee_rate, at_ms, reason);
        Some(reason.to_owned())
    }
}

/// Replays `candles` (closed, oldest first) for `config`'s strategy from `start_balance`.
pub fn simulate(config: &BotConfig, spec: &ContractSpec, candles: &[Candle], interval: Interval, start_balance: Decimal) -> Report {
    let mut sim = Sim {
        config,
        spec,
        account: PaperAccount { balance: start_balance, realized_pnl: Decimal::ZERO, version: 0 },
        position: None,
        resting: Vec::new(),
        trades: Vec::new(),
        serial: 0,
    };
    let closes: Vec<Decimal> = candles.iter().map(|c| c.close).collect();
    let grid_prices = match &config.strategy {
        Strategy::Grid(g) => grid::level_prices(g, spec.price_tick),
        _ => Vec::new(),
    };
    let mut grid_state = GridState::default();
    let mut equity = Vec::with_capacity(candles.len());
    let mut stopped_by = None;
    for (i, candle) in candles.iter().enumerate() {
        let at = candle.close_time_ms(interval);
        if stopped_by.is_none() {
            // Resting grid orders the candle's range reached fill at their price, buys from the
            // highest down, then sells upwards.
            let mut ended = Vec::new();
            let mut reached: Vec<(u32, OrderIntent)> = Vec::new();
            sim.resting.retain(|(level, intent)| {
                let price = intent.price.unwrap_or_default();
                let hit = match intent.side {
                    Side::Buy => candle.low <= price,
                    Side::Sell => candle.high >= price,
                };
                if hit {
                    reached.push((*level, intent.clone()));
                }
                !hit
            });
            reached
                .sort_by_key(|(level, i)| (i.side == Side::Sell, if i.side == Side::Buy { -i64::from(*level) } else { i64::from(*level) }));
            for (level, intent) in reached {
                let price = intent.price.unwrap_or_default();
                let reason = if intent.side == Side::Buy { "grid_buy" } else { "grid_sell" };
                sim.fill(&intent, price, spec.maker_fee_rate, at, reason);
                ended.push((level, Ended::Filled));
            }
            if let Some(reason) = sim.exit(candle, at) {
                sim.resting.clear();
                stopped_by = Some(reason);
            } else {
                if let Some(p) = sim.position.as_mut() {
                    let favourable = if p.side == PositionSide::Long { candle.high } else { candle.low };
                    p.high_water = Some(best_mark(p.side, p.high_water.unwrap_or(p.entry_price), favourable));
                }
                decide(&mut sim, &closes[..=i], candle.close, at, &grid_prices, &mut grid_state, &ended);
            }
        }
        equity.push(EquityPoint { time: time(at), equity: sim.equity(candle.close).round_dp(8).normalize() });
    }
    report(sim.trades, equity, stopped_by)
}

/// The strategy's decision at a candle's close, as the runner makes it live.
fn decide(
    sim: &mut Sim<'_>,
    closes: &[Decimal],
    mark: Decimal,
    at: i64,
    prices: &[Decimal],
    grid_state: &mut GridState,
    ended: &[(u32, Ended)],
) {
    match sim.config.strategy {
        Strategy::EmaCross(settings) => {
            let Some(target) = ema_cross::decide(&settings, closes) else { return };
            let held = sim.position.as_ref().map(|p| (p.side, p.size));
            for order in ema_cross::orders_toward(&settings, target, held) {
                if sim.allowed(&order, mark) {
                    let intent = sim.intent(&order);
                    sim.fill(&intent, mark, sim.spec.taker_fee_rate, at, order.reason);
                }
            }
        }
        Strategy::Grid(settings) => {
            let (mut next, wanted) = grid::plan(&settings, prices, grid_state, mark, MAX_PRICE_DEVIATION, ended);
            for (level, order) in wanted {
                if sim.allowed(&order, mark) {
                    let intent = sim.intent(&order);
                    sim.resting.push((level, intent));
                    grid::arm(&mut next, level, &order);
                }
            }
            *grid_state = next;
        }
        Strategy::Manual | Strategy::Signal => {}
    }
}

fn report(trades: Vec<Trade>, equity: Vec<EquityPoint>, stopped_by: Option<String>) -> Report {
    let realized_pnl: Decimal = trades.iter().map(|t| t.realized_pnl).sum();
    let fees: Decimal = trades.iter().map(|t| t.fee).sum();
    let mut peak = Decimal::ZERO;
    let mut max_drawdown = Decimal::ZERO;
    for point in &equity {
        peak = peak.max(point.equity);
        if peak > Decimal::ZERO {
            max_drawdown = max_drawdown.max((peak - point.equity) / peak);
        }
    }
    // A closing trade realizes something (an opening one realizes exactly zero).
    let closing: Vec<&Trade> = trades.iter().filter(|t| !t.realized_pnl.is_zero()).collect();
    let wins = closing.iter().filter(|t| t.realized_pnl > Decimal::ZERO).count();
    let win_rate = if closing.is_empty() { Decimal::ZERO } else { Decimal::from(wins) / Decimal::from(closing.len()) };
    Report {
        trades,
        realized_pnl: realized_pnl.normalize(),
        fees: fees.normalize(),
        max_drawdown: max_drawdown.round_dp(6).normalize(),
        win_rate: win_rate.round_dp(6).normalize(),
        equity,
        stopped_by,
    }
}

/// Runs `backtest` on Bitget's history candles (locally the double's series).
pub async fn run(state: &impl crate::state::Bitget, backtest: &Backtest) -> Result<Report, ApiError> {
    check_range(backtest.interval, backtest.from_ms, backtest.to_ms)?;
    let specs = crate::trading::service::contract_book(state).await?;
    let spec = specs
        .get(&backtest.config.symbol)
        .ok_or_else(|| ApiError::unprocessable("unknown_symbol", format!("{} is not a supported contract", backtest.config.symbol)))?;
    crate::trading::risk::check_bot_config(&backtest.config, Some(spec))?;
    crate::trading::strategy::check_against(&backtest.config.strategy, spec)?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let candles =
        crate::trading::candles::history(state.bitget(), &spec.symbol, backtest.interval, backtest.from_ms, backtest.to_ms, now_ms)
            .await
            .map_err(|e| ApiError::Unavailable {
            code: "market_data_unavailable",
            detail: "the exchange's candle history cannot be read right now".into(),
            cause: Some(Box::new(e)),
        })?;
    Ok(simulate(&backtest.config, spec, &candles, backtest.interval, backtest.start_balance))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trading::strategy::EmaCross;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }
    fn spec() -> ContractSpec {
        ContractSpec {
            symbol: "BTCUSDT".into(),
            base: "BTC".into(),
            quote: "USDT".into(),
            min_size: d("0.001"),
            size_step: d("0.001"),
            price_tick: d("0.1"),
            max_leverage: 125,
            min_notional: d("5"),
            taker_fee_rate: d("0.0006"),
            maker_fee_rate: d("0.0002"),
            maintenance_margin_rate: d("0.004"),
            status: "normal".into(),
        }
    }
    fn config(strategy: Strategy, stop_loss: &str, take_profit: Option<&str>) -> BotConfig {
        BotConfig {
            symbol: "BTCUSDT".into(),
            leverage: 5,
            stop_loss_pct: d(stop_loss),
            take_profit_pct: take_profit.map(d),
            trailing_stop_pct: None,
            max_position_notional: d("100000"),
            margin_mode: Default::default(),
            strategy,
        }
    }
    fn candle(i: i64, open: &str, high: &str, low: &str, close: &str) -> Candle {
        Candle { open_time_ms: i * 60_000, open: d(open), high: d(high), low: d(low), close: d(close), volume: d("1") }
    }
    fn flat(i: i64, price: &str) -> Candle {
        candle(i, price, price, price, price)
    }
    fn ema() -> Strategy {
        Strategy::EmaCross(EmaCross { interval: Interval::M1, fast: 2, slow: 4, size: d("0.01"), allow_short: false })
    }

    #[test]
    fn a_range_beyond_ten_thousand_candles_is_refused() {
        assert!(check_range(Interval::M1, 0, 10_000 * 60_000).is_ok());
        assert_eq!(check_range(Interval::M1, 0, 10_000 * 60_000 + 1).unwrap_err().code(), "range_too_large");
        assert_eq!(check_range(Interval::M1, 5, 5).unwrap_err().code(), "invalid_range");
    }

    #[test]
    fn a_cross_up_buys_at_the_close_and_a_cross_down_sells_with_taker_fees() {
        let mut candles: Vec<Candle> = (0..19).map(|i| flat(i, "60000")).collect();
        candles.push(flat(19, "59000"));
        candles.push(flat(20, "62000"));
        candles.extend((21..25).map(|i| flat(i, "62000")));
        candles.push(flat(25, "61000"));
        let report = simulate(&config(ema(), "5", None), &spec(), &candles, Interval::M1, d("10000"));
        let sides: Vec<(Side, Decimal, &str)> = report.trades.iter().map(|t| (t.side, t.price, t.reason.as_str())).collect();
        assert_eq!(sides, vec![(Side::Buy, d("62000"), "ema_cross_up"), (Side::Sell, d("61000"), "ema_cross_down")]);
        assert_eq!(report.trades[0].fee, d("0.372"));
        assert_eq!(report.realized_pnl, d("-10"));
        assert_eq!(report.fees, d("0.738"));
        assert_eq!(report.win_rate, Decimal::ZERO);
        assert_eq!(report.equity.len(), candles.len());
        assert_eq!(report.equity.last().unwrap().equity, d("10000") - d("10") - d("0.738"));
        assert!(report.max_drawdown > Decimal::ZERO);
    }

    #[test]
    fn the_stop_is_checked_on_the_candle_low_and_ends_the_run() {
        let mut candles: Vec<Candle> = (0..19).map(|i| flat(i, "60000")).collect();
        candles.push(flat(19, "59000"));
        candles.push(flat(20, "62000"));
        // The low reaches 2 % under the entry while the close stays above it.
        candles.push(candle(21, "62000", "62100", "60700", "61900"));
        candles.extend((22..30).map(|i| flat(i, if i % 2 == 0 { "70000" } else { "50000" })));
        let report = simulate(&config(ema(), "2", None), &spec(), &candles, Interval::M1, d("10000"));
        assert_eq!(report.trades.len(), 2, "{:?}", report.trades);
        assert_eq!((report.trades[1].reason.as_str(), report.trades[1].price), ("stop_loss", d("60760")));
        assert_eq!(report.stopped_by.as_deref(), Some("stop_loss"));
        // A take-profit on the high, with the stop far away.
        let mut rising: Vec<Candle> = (0..19).map(|i| flat(i, "60000")).collect();
        rising.push(flat(19, "59000"));
        rising.push(flat(20, "62000"));
        rising.push(candle(21, "62000", "65200", "61900", "64000"));
        let report = simulate(&config(ema(), "10", Some("5")), &spec(), &rising, Interval::M1, d("10000"));
        assert_eq!((report.trades[1].reason.as_str(), report.trades[1].price), ("take_profit", d("65100")));
        assert_eq!(report.win_rate, Decimal::ONE);
    }

    #[test]
    fn the_grid_fills_its_levels_on_the_candle_range_and_re_arms_them() {
        let g = crate::trading::strategy::Grid { lower: d("60000"), upper: d("64000"), levels: 5, size_per_level: d("0.001") };
        let mut candles = vec![flat(0, "62100")];
        // Down through 61000 (a buy fills), then back up through 62000 (the re-armed sell fills).
        candles.push(candle(1, "62100", "62100", "60900", "61100"));
        candles.push(candle(2, "61100", "62200", "61100", "62100"));
        let report = simulate(&config(Strategy::Grid(g), "10", None), &spec(), &candles, Interval::M1, d("10000"));
        let trades: Vec<(Side, Decimal, &str)> = report.trades.iter().map(|t| (t.side, t.price, t.reason.as_str())).collect();
        assert_eq!(trades, vec![(Side::Buy, d("61000"), "grid_buy"), (Side::Sell, d("62000"), "grid_sell")]);
        assert_eq!(report.trades[0].fee, d("0.0122"), "the maker fee");
        assert_eq!(report.realized_pnl, d("1"));
    }
}
