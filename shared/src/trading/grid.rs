//! The grid strategy's decisions, pure: the scheduled runner and the backtest call the same
//! `plan` on what they observed, so they arm the same levels.
//!
//! One level is always left empty: at the start the one nearest the mark. Levels below it hold
//! resting buys, levels above it resting sells. A buy filling at level k (the price came down to
//! it) makes k the empty level, so the level above, empty until now, arms a sell; a sell filling
//! at k makes k empty and the level below arms a buy. Levels further from the mark than the
//! exchange's limit-price band wait until the mark comes closer.

use crate::trading::model::{OrderType, Side};
use crate::trading::strategy::{Grid, StrategyOrder};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The order resting at a level.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Armed {
    pub side: Side,
    /// The order's leg (part of its Idempotency-Key, so of its client order id).
    pub leg: String,
}

/// What the grid keeps between runs, on the bot item.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GridState {
    /// The level without an order; `None` until the first run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty: Option<u32>,
    /// Resting orders by level.
    #[serde(default)]
    pub armed: BTreeMap<u32, Armed>,
    /// Orders each level has had end (filled, gone or refused): the next one's leg differs.
    #[serde(default)]
    pub ended: BTreeMap<u32, u32>,
    /// When a level's last order was refused (unix ms): the runner lets it wait a while.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub refused_at: BTreeMap<u32, i64>,
}

/// The level prices from `lower` to `upper`, evenly spaced, each rounded down to the price tick.
pub fn level_prices(grid: &Grid, tick: Decimal) -> Vec<Decimal> {
    let spacing = (grid.upper - grid.lower) / Decimal::from(grid.levels - 1);
    (0..grid.levels)
        .map(|k| {
            let raw = if k + 1 == grid.levels { grid.upper } else { grid.lower + spacing * Decimal::from(k) };
            if tick > Decimal::ZERO {
                ((raw / tick).round_dp_with_strategy(0, RoundingStrategy::ToZero) * tick).normalize()
            } else {
                raw.normalize()
            }
        })
        .collect()
}

/// What became of an armed level's order since the last run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Filled,
    /// Canceled or refused by the exchange: not a fill; the level arms again.
    Gone,
}

/// The grid after the `ended` orders, and the orders to place at `mark` (each with its level):
/// the caller arms the ones the exchange accepts (`arm`).
pub fn plan(
    grid: &Grid,
    prices: &[Decimal],
    state: &GridState,
    mark: Decimal,
    band: Decimal,
    ended: &[(u32, Ended)],
) -> (GridState, Vec<(u32, StrategyOrder)>) {
    let mut next = state.clone();
    let nearest = || {
        let distance = |k: &u32| (prices[*k as usize] - mark).abs();
        (0..prices.len() as u32).min_by_key(distance).unwrap_or(0)
    };
    let mut empty = state.empty.unwrap_or_else(nearest);
    // Fills in the order the price met them: buys from the highest down, then sells upwards.
    let mut fills: Vec<(u32, Side)> =
        ended.iter().filter(|(_, e)| *e == Ended::Filled).filter_map(|(k, _)| state.armed.get(k).map(|a| (*k, a.side))).collect();
    fills.sort_by_key(|(k, side)| (*side == Side::Sell, if *side == Side::Buy { -i64::from(*k) } else { i64::from(*k) }));
    for (level, _) in fills {
        empty = level;
    }
    for (level, _) in ended {
        if next.armed.remove(level).is_some() {
            *next.ended.entry(*level).or_default() += 1;
        }
    }
    next.empty = Some(empty);
    let mut orders = Vec::new();
    for (k, price) in prices.iter().enumerate() {
        let k = k as u32;
        if k == empty || next.armed.contains_key(&k) || mark <= Decimal::ZERO || (*price - mark).abs() / mark > band {
            continue;
        }
        // Below the empty level a buy, above it a sell; only where it rests (a buy above the mark
        // would fill at once: the price went past the level while it waited).
        let side = match (k < empty, *price < mark, *price > mark) {
            (true, true, _) => Side::Buy,
            (false, _, true) => Side::Sell,
            _ => continue,
        };
        let leg = format!("k{k}-n{}", next.ended.get(&k).copied().unwrap_or(0));
        let reason = if side == Side::Buy { "grid_buy" } else { "grid_sell" };
        let order = StrategyOrder {
            side,
            order_type: OrderType::Limit,
            size: grid.size_per_level,
            price: Some(*price),
            reduce_only: false,
            leg,
            reason,
        };
        orders.push((k, order));
    }
    (next, orders)
}

/// Records that the order planned for `level` was refused at `at_ms`: its next one gets another
/// leg.
pub fn refused(state: &mut GridState, level: u32, at_ms: i64) {
    *state.ended.entry(level).or_default() += 1;
    state.refused_at.insert(level, at_ms);
}

/// Records that the order planned for `level` rests on the exchange.
pub fn arm(state: &mut GridState, level: u32, order: &StrategyOrder) {
    state.refused_at.remove(&level);
    state.armed.insert(level, Armed { side: order.side, leg: order.leg.clone() });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }
    fn grid() -> Grid {
        Grid { lower: d("60000"), upper: d("70000"), levels: 11, size_per_level: d("0.001") }
    }
    fn armed_all(state: &mut GridState, orders: &[(u32, StrategyOrder)]) {
        for (k, o) in orders {
            arm(state, *k, o);
        }
    }

    #[test]
    fn the_levels_are_evenly_spaced_on_the_price_tick() {
        let prices = level_prices(&Grid { levels: 3, upper: d("70000.15"), ..grid() }, d("0.1"));
        assert_eq!(prices, vec![d("60000"), d("65000"), d("70000.1")]);
    }

    #[test]
    fn buys_rest_below_the_mark_and_sells_above_with_the_nearest_level_empty() {
        let prices = level_prices(&grid(), d("0.1"));
        let (state, orders) = plan(&grid(), &prices, &GridState::default(), d("65100"), d("1"), &[]);
        assert_eq!(state.empty, Some(5));
        let sides: Vec<(u32, Side)> = orders.iter().map(|(k, o)| (*k, o.side)).collect();
        assert_eq!(sides.iter().filter(|(_, s)| *s == Side::Buy).map(|(k, _)| *k).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
        assert_eq!(sides.iter().filter(|(_, s)| *s == Side::Sell).map(|(k, _)| *k).collect::<Vec<_>>(), vec![6, 7, 8, 9, 10]);
        // The band keeps far levels waiting.
        let (_, near) = plan(&grid(), &prices, &GridState::default(), d("65100"), d("0.05"), &[]);
        assert!(near.iter().all(|(_, o)| (o.price.unwrap() - d("65100")).abs() / d("65100") <= d("0.05")));
        assert_eq!(near.len(), 6);
    }

    #[test]
    fn a_filled_buy_arms_a_sell_one_level_up_and_a_filled_sell_a_buy_one_level_down() {
        let prices = level_prices(&grid(), d("0.1"));
        let (mut state, orders) = plan(&grid(), &prices, &GridState::default(), d("65100"), d("1"), &[]);
        armed_all(&mut state, &orders);
        // The price comes down through 64000 (level 4): its buy fills.
        let (mut state, orders) = plan(&grid(), &prices, &state, d("63900"), d("1"), &[(4, Ended::Filled)]);
        assert_eq!(state.empty, Some(4));
        assert_eq!(orders.len(), 1);
        assert_eq!((orders[0].0, orders[0].1.side, orders[0].1.price), (5, Side::Sell, Some(d("65000"))));
        armed_all(&mut state, &orders);
        // Back up through 65000: the sell at level 5 fills, level 4 arms a buy again, with a new leg.
        let (state, orders) = plan(&grid(), &prices, &state, d("65100"), d("1"), &[(5, Ended::Filled)]);
        assert_eq!(state.empty, Some(5));
        assert_eq!((orders[0].0, orders[0].1.side), (4, Side::Buy));
        assert_eq!(orders[0].1.leg, "k4-n1", "the level's second order");
        // Repeating a run that saw nothing new plans nothing.
        let mut again = state.clone();
        armed_all(&mut again, &orders);
        assert!(plan(&grid(), &prices, &again, d("65100"), d("1"), &[]).1.is_empty());
    }
}
