//! The EMA cross strategy's decisions, pure: the scheduled runner and the backtest call the same
//! functions on the same candles, so they decide the same.
//!
//! The decision at a closed candle depends only on the `WINDOW_FACTOR × slow` closes ending at it:
//! both EMAs are seeded with the simple average of the window's first closes and run over the
//! rest, so a decision never depends on when a bot was started or a backtest began.

use crate::trading::model::{OrderType, PositionSide, Side};
use crate::trading::strategy::{EmaCross, StrategyOrder};
use rust_decimal::Decimal;

/// Closes in a decision's window, per period of the slow EMA.
pub const WINDOW_FACTOR: u32 = 5;
/// Digits kept at each EMA step: exact and reproducible, without 28-digit growth.
const EMA_DP: u32 = 12;

/// What a cross asks the bot to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Long,
    Flat,
    Short,
}

pub fn window(settings: &EmaCross) -> usize {
    (WINDOW_FACTOR * settings.slow) as usize
}

/// The EMA of `closes` with `period`, at the last two closes (before, now): seeded with the
/// average of the first `period` closes.
fn ema_last_two(closes: &[Decimal], period: u32) -> Option<(Decimal, Decimal)> {
    let period_usize = period as usize;
    if closes.len() < period_usize + 1 {
        return None;
    }
    let alpha = Decimal::TWO / Decimal::from(period + 1);
    let seed: Decimal = closes[..period_usize].iter().sum::<Decimal>() / Decimal::from(period);
    let mut previous = seed.round_dp(EMA_DP);
    let mut current = previous;
    for close in &closes[period_usize..] {
        previous = current;
        current = (alpha * close + (Decimal::ONE - alpha) * current).round_dp(EMA_DP);
    }
    Some((previous, current))
}

/// The cross at the last close of `closes` (the window ending at the candle decided on), if any.
/// Fewer closes than the window: no decision yet.
pub fn decide(settings: &EmaCross, closes: &[Decimal]) -> Option<Target> {
    let window = window(settings);
    if closes.len() < window {
        return None;
    }
    let closes = &closes[closes.len() - window..];
    let (fast_before, fast_now) = ema_last_two(closes, settings.fast)?;
    let (slow_before, slow_now) = ema_last_two(closes, settings.slow)?;
    if fast_before <= slow_before && fast_now > slow_now {
        Some(Target::Long)
    } else if fast_before >= slow_before && fast_now < slow_now {
        Some(if settings.allow_short { Target::Short } else { Target::Flat })
    } else {
        None
    }
}

/// The orders that take the bot's position (`side`, `size`; `None` when flat) to `target`: a
/// reduce-only close of the opposite side first, then the opening order.
pub fn orders_toward(settings: &EmaCross, target: Target, position: Option<(PositionSide, Decimal)>) -> Vec<StrategyOrder> {
    let market = |side: Side, size: Decimal, reduce_only: bool, leg: &str, reason: &'static str| StrategyOrder {
        side,
        order_type: OrderType::Market,
        size,
        price: None,
        reduce_only,
        leg: leg.to_owned(),
        reason,
    };
    let (reason, wanted) = match target {
        Target::Long => ("ema_cross_up", Some(PositionSide::Long)),
        Target::Short => ("ema_cross_down", Some(PositionSide::Short)),
        Target::Flat => ("ema_cross_down", None),
    };
    let mut orders = Vec::new();
    match position {
        Some((side, _)) if Some(side) == wanted => return orders,
        Some((side, size)) => orders.push(market(side.closing_side(), size, true, "close", reason)),
        None => {}
    }
    if let Some(side) = wanted {
        let open = if side == PositionSide::Long { Side::Buy } else { Side::Sell };
        orders.push(market(open, settings.size, false, "open", reason));
    }
    orders
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trading::candles::Interval;

    fn settings(allow_short: bool) -> EmaCross {
        EmaCross { interval: Interval::M1, fast: 2, slow: 4, size: Decimal::new(1, 2), allow_short }
    }
    fn closes(values: &[i64]) -> Vec<Decimal> {
        values.iter().map(|v| Decimal::from(*v)).collect()
    }

    #[test]
    fn a_rise_through_the_slow_average_is_a_cross_up_and_a_fall_a_cross_down() {
        let s = settings(false);
        let mut series = closes(&[100; 19]);
        series.push(Decimal::from(90));
        assert_eq!(decide(&s, &series), Some(Target::Flat), "falling from flat: fast below slow");
        let mut up = closes(&[100; 18]);
        up.extend(closes(&[90, 120]));
        assert_eq!(decide(&s, &up), Some(Target::Long));
        assert_eq!(decide(&settings(true), &series), Some(Target::Short));
        assert_eq!(decide(&s, &closes(&[100; 20])), None, "no cross on a flat line");
        assert_eq!(decide(&s, &closes(&[100; 19])), None, "fewer closes than the window");
    }

    #[test]
    fn the_decision_depends_only_on_the_window_ending_at_the_candle() {
        let s = settings(false);
        let mut tail = closes(&[100; 18]);
        tail.extend(closes(&[90, 120]));
        let mut longer = closes(&[5, 500, 7, 300]);
        longer.extend(tail.iter().copied());
        assert_eq!(decide(&s, &longer), decide(&s, &tail));
    }

    #[test]
    fn a_cross_closes_the_opposite_side_before_opening() {
        let s = settings(true);
        let d = |v: &str| v.parse::<Decimal>().unwrap();
        let from_short = orders_toward(&s, Target::Long, Some((PositionSide::Short, d("0.03"))));
        assert_eq!(from_short.len(), 2);
        assert_eq!((from_short[0].side, from_short[0].size, from_short[0].reduce_only), (Side::Buy, d("0.03"), true));
        assert_eq!((from_short[1].side, from_short[1].size, from_short[1].reduce_only), (Side::Buy, d("0.01"), false));
        assert!(orders_toward(&s, Target::Long, Some((PositionSide::Long, d("0.01")))).is_empty(), "already long");
        let flat = orders_toward(&s, Target::Flat, Some((PositionSide::Long, d("0.01"))));
        assert_eq!((flat.len(), flat[0].side, flat[0].reduce_only), (1, Side::Sell, true));
        assert!(orders_toward(&s, Target::Flat, None).is_empty());
    }
}
