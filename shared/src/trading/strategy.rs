//! What a bot trades on: `manual` (the trader's own orders, the default), `signal` (webhook
//! alerts, `trading/signals.rs`), or a built-in strategy run on closed candles by the scheduled
//! runner (`trading/runner.rs`) and replayed by the backtest (`trading/backtest.rs`): `ema_cross`
//! (`trading/ema_cross.rs`) and `grid` (`trading/grid.rs`).

use crate::error::ApiError;
use crate::trading::candles::Interval;
use crate::trading::contracts::{on_step, ContractSpec};
use crate::trading::model::{decimal_input, whole_number_input, OrderType, Side};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Strategy {
    #[default]
    Manual,
    Signal,
    EmaCross(EmaCross),
    Grid(Grid),
}

/// Long when the fast EMA of closes crosses above the slow one; flat (short when allowed) when it
/// crosses below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmaCross {
    pub interval: Interval,
    pub fast: u32,
    pub slow: u32,
    pub size: Decimal,
    #[serde(default)]
    pub allow_short: bool,
}

/// Resting limit buys below the mark and sells above it at `levels` evenly spaced prices from
/// `lower` to `upper`; a filled level re-arms its neighbour the other way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grid {
    pub lower: Decimal,
    pub upper: Decimal,
    pub levels: u32,
    pub size_per_level: Decimal,
}

/// The settings as a client sends them: decimals as strings or exact numbers (read from the
/// request's own text), whole numbers as JSON Schema sees them, nothing unknown. (The stored forms
/// above read what the table holds.)
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmaCrossInput {
    #[allow(dead_code)]
    kind: String,
    interval: Interval,
    #[serde(deserialize_with = "whole_number_input")]
    fast: u32,
    #[serde(deserialize_with = "whole_number_input")]
    slow: u32,
    #[serde(deserialize_with = "decimal_input")]
    size: Decimal,
    #[serde(default)]
    allow_short: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GridInput {
    #[allow(dead_code)]
    kind: String,
    #[serde(deserialize_with = "decimal_input")]
    lower: Decimal,
    #[serde(deserialize_with = "decimal_input")]
    upper: Decimal,
    #[serde(deserialize_with = "whole_number_input")]
    levels: u32,
    #[serde(deserialize_with = "decimal_input")]
    size_per_level: Decimal,
}

/// The slowest EMA served: its warm-up window (`ema_cross::WINDOW_FACTOR` × slow candles) fits in
/// one candles call (1,000).
pub const MAX_SLOW: u32 = 199;
/// The largest order size or level price a strategy may name: far beyond any contract's, and far
/// from where decimal arithmetic on them could overflow.
pub const MAX_AMOUNT: Decimal = Decimal::from_parts(1_000_000_000, 0, 0, false, 0);
pub const MAX_GRID_LEVELS: u32 = 100;

impl Strategy {
    /// Whether the scheduled runner trades this bot (and a triggered stop ends it).
    pub fn is_automatic(&self) -> bool {
        !matches!(self, Strategy::Manual)
    }

    pub fn normalized(self) -> Strategy {
        match self {
            Strategy::EmaCross(e) => Strategy::EmaCross(EmaCross { size: e.size.normalize(), ..e }),
            Strategy::Grid(g) => Strategy::Grid(Grid {
                lower: g.lower.normalize(),
                upper: g.upper.normalize(),
                size_per_level: g.size_per_level.normalize(),
                ..g
            }),
            other => other,
        }
    }
}

fn invalid(detail: impl Into<String>) -> ApiError {
    ApiError::unprocessable("invalid_strategy", detail)
}

const KINDS: &str = "strategy is {\"kind\": \"manual\" | \"signal\" | \"ema_cross\" | \"grid\", …settings}";

/// The `strategy` object of the bot settings, as the request's text (absent is `manual`), with
/// the settings that need no contract checked. Unknown kinds and unknown or out-of-range
/// settings answer 422 `invalid_strategy`.
pub fn parse(raw: Option<&serde_json::value::RawValue>) -> Result<Strategy, ApiError> {
    let Some(raw) = raw else { return Ok(Strategy::Manual) };
    let text = raw.get();
    let value: serde_json::Value = serde_json::from_str(text).map_err(|_| invalid(KINDS))?;
    let kind = value.get("kind").and_then(serde_json::Value::as_str).ok_or_else(|| invalid(KINDS))?;
    let fields = value.as_object().map_or(0, serde_json::Map::len);
    let strategy = match kind {
        // Neither takes settings besides its kind.
        "manual" | "signal" if fields != 1 => return Err(invalid("the manual and signal strategies take no settings besides kind")),
        "manual" => return Ok(Strategy::Manual),
        "signal" => return Ok(Strategy::Signal),
        "ema_cross" => {
            let e: EmaCrossInput = serde_json::from_str(text).map_err(|e| {
                invalid(format!("ema_cross takes interval (1m, 5m, 15m, 1H, 4H), fast and slow (whole numbers), size and allow_short: {e}"))
            })?;
            Strategy::EmaCross(EmaCross { interval: e.interval, fast: e.fast, slow: e.slow, size: e.size, allow_short: e.allow_short })
        }
        "grid" => {
            let g: GridInput = serde_json::from_str(text)
                .map_err(|e| invalid(format!("grid takes lower, upper, levels (a whole number) and size_per_level: {e}")))?;
            Strategy::Grid(Grid { lower: g.lower, upper: g.upper, levels: g.levels, size_per_level: g.size_per_level })
        }
        _ => return Err(invalid(KINDS)),
    };
    match strategy {
        Strategy::EmaCross(e) => {
            if e.fast == 0 || e.fast >= e.slow {
                return Err(invalid("fast must be at least 1 and below slow"));
            }
            if e.slow > MAX_SLOW {
                return Err(invalid(format!("slow is at most {MAX_SLOW}")));
            }
            if e.size <= Decimal::ZERO || e.size > MAX_AMOUNT {
                return Err(invalid(format!("size must be above 0 and at most {MAX_AMOUNT}")));
            }
        }
        Strategy::Grid(g) => {
            if !(2..=MAX_GRID_LEVELS).contains(&g.levels) {
                return Err(invalid(format!("levels is 2 to {MAX_GRID_LEVELS}")));
            }
            if g.lower <= Decimal::ZERO || g.lower >= g.upper || g.upper > MAX_AMOUNT {
                return Err(invalid(format!("lower must be above 0 and below upper, upper at most {MAX_AMOUNT}")));
            }
            if g.size_per_level <= Decimal::ZERO || g.size_per_level > MAX_AMOUNT {
                return Err(invalid(format!("size_per_level must be above 0 and at most {MAX_AMOUNT}")));
            }
        }
        Strategy::Manual | Strategy::Signal => {}
    }
    Ok(strategy.normalized())
}

/// The settings that depend on the contract: sizes on its size step and at least its minimum,
/// grid levels at least one price tick apart.
pub fn check_against(strategy: &Strategy, spec: &ContractSpec) -> Result<(), ApiError> {
    let size_ok = |size: Decimal| on_step(size, spec.size_step) && size >= spec.min_size;
    let step = format!("{} (the minimum {})", spec.size_step.normalize(), spec.min_size.normalize());
    match strategy {
        Strategy::EmaCross(e) if !size_ok(e.size) => Err(invalid(format!("size must be a multiple of {step}"))),
        Strategy::Grid(g) if !size_ok(g.size_per_level) => Err(invalid(format!("size_per_level must be a multiple of {step}"))),
        Strategy::Grid(g) => {
            let spacing = (g.upper - g.lower) / Decimal::from(g.levels - 1);
            if spacing < spec.price_tick || g.lower < spec.price_tick {
                return Err(invalid(format!("the levels are closer than the price tick {}", spec.price_tick.normalize())));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// An order a strategy wants, before it becomes a submit (live) or a simulated fill (backtest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrategyOrder {
    pub side: Side,
    pub order_type: OrderType,
    pub size: Decimal,
    pub price: Option<Decimal>,
    pub reduce_only: bool,
    /// Names the order within its decision (the candle or the grid generation): the last part of
    /// its Idempotency-Key, so a repeated run computes the same client order id.
    pub leg: String,
    /// Why, as the trade list shows it (`ema_cross_up`, `grid_buy`…).
    pub reason: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_json(value: serde_json::Value) -> Result<Strategy, ApiError> {
        let raw = serde_json::value::RawValue::from_string(value.to_string()).unwrap();
        super::parse(Some(&raw))
    }

    #[test]
    fn the_strategy_defaults_to_manual_and_refuses_what_it_does_not_know() {
        assert_eq!(super::parse(None).unwrap(), Strategy::Manual);
        assert_eq!(parse_json(json!({"kind": "signal"})).unwrap(), Strategy::Signal);
        for bad in [json!({"kind": "martingale"}), json!({"kind": "signal", "x": 1}), json!({}), json!("signal"), json!({"kind": "grid"})] {
            assert_eq!(parse_json(bad.clone()).unwrap_err().code(), "invalid_strategy", "{bad}");
        }
    }

    #[test]
    fn ema_cross_and_grid_settings_are_read_exactly_and_held_to_their_ranges() {
        let ema = json!({"kind": "ema_cross", "interval": "5m", "fast": 9, "slow": 21, "size": "0.010", "allow_short": true});
        let Strategy::EmaCross(e) = parse_json(ema).unwrap() else { panic!("not ema_cross") };
        assert_eq!((e.interval, e.fast, e.slow, e.size.to_string(), e.allow_short), (Interval::M5, 9, 21, "0.01".into(), true));
        let grid = json!({"kind": "grid", "lower": "60000", "upper": 70000, "levels": 10, "size_per_level": "0.001"});
        assert!(matches!(parse_json(grid).unwrap(), Strategy::Grid(Grid { levels: 10, .. })));
        let base_ema = json!({"kind": "ema_cross", "interval": "1m", "fast": 9, "slow": 21, "size": "0.01"});
        let base_grid = json!({"kind": "grid", "lower": "60000", "upper": "70000", "levels": 10, "size_per_level": "0.001"});
        let with = |base: &serde_json::Value, k: &str, v: serde_json::Value| {
            let mut b = base.clone();
            b[k] = v;
            b
        };
        for bad in [
            with(&base_ema, "fast", json!(21)),
            with(&base_ema, "fast", json!(0)),
            with(&base_ema, "slow", json!(200)),
            with(&base_ema, "size", json!("1e27")),
            with(&base_grid, "upper", json!("1e28")),
            with(&base_ema, "interval", json!("2m")),
            with(&base_ema, "size", json!("0")),
            with(&base_ema, "fast", json!(9.5)),
            with(&base_ema, "extra", json!(1)),
            with(&base_grid, "levels", json!(1)),
            with(&base_grid, "levels", json!(101)),
            with(&base_grid, "lower", json!("70000")),
            with(&base_grid, "size_per_level", json!("-1")),
        ] {
            assert_eq!(parse_json(bad.clone()).unwrap_err().code(), "invalid_strategy", "{bad}");
        }
    }
}
