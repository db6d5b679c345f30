//! Whole lifecycles, not first runs: three open → trigger → close cycles in a row for every
//! guardian trigger (stop-loss, take-profit, trailing stop), long and short, on the paper account
//! and live on the Bitget double. Every cycle must close its own position.

mod common;

use common::fake_bitget::{FakeBitget, KEY, PASSPHRASE, SECRET};
use common::fake_telegram::FakeTelegram;
use common::*;
use serde_json::{json, Value};
use shared::guardian::{sweep, SweepReport, SweepStats};
use shared::handlers::trading as t;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Venue {
    Paper,
    Live,
}

#[derive(Clone, Copy, Debug)]
enum Trigger {
    StopLoss,
    TakeProfit,
    Trailing,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Direction {
    Long,
    Short,
}

struct Market {
    app: TestApp,
    double: Option<FakeBitget>,
    _telegram: FakeTelegram,
}

impl Market {
    async fn open(venue: Venue) -> Market {
        let telegram = FakeTelegram::start().await;
        let double = match venue {
            Venue::Live => Some(FakeBitget::start().await),
            Venue::Paper => None,
        };
        let mut overrides = vec![("TELEGRAM_BASE_URL", telegram.url.clone())];
        if let Some(d) = &double {
            overrides.push(("BITGET_BASE_URL", d.url.clone()));
        }
        let app = spawn_app_with(&overrides).await;
        let market = Market { app, double, _telegram: telegram };
        market.set_mark("65000").await;
        market
    }

    /// The mark wherever it is read: the table (the local market data) and, live, the exchange.
    async fn set_mark(&self, price: &str) {
        self.app.set_mark("BTCUSDT", price).await;
        if let Some(d) = &self.double {
            d.set_mark("BTCUSDT", price);
        }
    }

    async fn trader(&self, config: Value) -> String {
        let token = access_token(&self.app).await;
        if self.double.is_some() {
            let body = json!({"exchange": "bitget", "api_key": KEY, "api_secret": SECRET, "passphrase": PASSPHRASE});
            let res = self.app.call_as(t::put_credentials, &token, "PUT", "/api/v1/exchange/credentials", Some(body)).await;
            assert_eq!(res.status, 204, "{}", res.raw);
        }
        let res = self.app.call_as(t::start_bot, &token, "POST", "/api/v1/bot/start", Some(config)).await;
        assert_eq!(res.status, 200, "{}", res.raw);
        token
    }

    async fn open_position(&self, token: &str, direction: Direction) {
        let side = if direction == Direction::Long { "buy" } else { "sell" };
        let mut req = with_bearer(
            request("POST", "/api/v1/order/submit", Some(json!({"symbol": "BTCUSDT", "side": side, "type": "market", "size": "0.1"}))),
            token,
        );
        req.headers_mut().insert("idempotency-key", uuid::Uuid::new_v4().to_string().parse().unwrap());
        let res = self.app.call(t::submit_order, req).await;
        assert_eq!(res.status, 201, "{}", res.raw);
    }

    async fn sweep(&self) -> SweepReport {
        sweep(&self.app.state, Instant::now() + Duration::from_secs(60), &SweepStats::default()).await
    }

    async fn positions(&self, token: &str) -> Value {
        self.app.call_as(t::status, token, "GET", "/api/v1/bot/status", None).await.body["positions"].clone()
    }
}

/// Marks, relative to the 65,000 entry, that leave the position alone and then trigger it.
fn path(trigger: Trigger, direction: Direction) -> (Vec<&'static str>, &'static str) {
    match (trigger, direction) {
        // 2 % stop-loss.
        (Trigger::StopLoss, Direction::Long) => (vec!["64000"], "63600"),
        (Trigger::StopLoss, Direction::Short) => (vec!["66000"], "66400"),
        // 3 % take-profit.
        (Trigger::TakeProfit, Direction::Long) => (vec!["66000"], "67000"),
        (Trigger::TakeProfit, Direction::Short) => (vec!["64000"], "63000"),
        // 1 % trailing stop: a move in the position's favour, then a 1 % pullback from its best.
        (Trigger::Trailing, Direction::Long) => (vec!["66000", "67000"], "66300"),
        (Trigger::Trailing, Direction::Short) => (vec!["64000", "63000"], "63700"),
    }
}

fn reason(trigger: Trigger) -> &'static str {
    match trigger {
        Trigger::StopLoss => "stop_loss",
        Trigger::TakeProfit => "take_profit",
        Trigger::Trailing => "trailing_stop",
    }
}

async fn three_cycles(venue: Venue, trigger: Trigger, direction: Direction) {
    let market = Market::open(venue).await;
    let config = match trigger {
        Trigger::StopLoss => json!({"symbol": "BTCUSDT", "leverage": 10, "stop_loss_pct": "2", "max_position_notional": "20000"}),
        Trigger::TakeProfit => {
            json!({"symbol": "BTCUSDT", "leverage": 10, "stop_loss_pct": "2", "take_profit_pct": "3", "max_position_notional": "20000"})
        }
        Trigger::Trailing => {
            json!({"symbol": "BTCUSDT", "leverage": 10, "stop_loss_pct": "5", "trailing_stop_pct": "1", "max_position_notional": "20000"})
        }
    };
    let token = market.trader(config).await;
    let (calm, trigger_mark) = path(trigger, direction);
    for cycle in 1..=3 {
        market.set_mark("65000").await;
        market.open_position(&token, direction).await;
        for mark in &calm {
            market.set_mark(mark).await;
            let report = market.sweep().await;
            assert!(report.closed.is_empty(), "{venue:?} {trigger:?} {direction:?} cycle {cycle}: closed early at {mark}: {report:?}");
        }
        market.set_mark(trigger_mark).await;
        let report = market.sweep().await;
        let reasons: Vec<&str> = report.closed.iter().map(|c| c.reason.as_str()).collect();
        assert_eq!(reasons, vec![reason(trigger)], "{venue:?} {trigger:?} {direction:?} cycle {cycle}: {report:?}");
        assert_eq!(market.positions(&token).await, json!([]), "{venue:?} {trigger:?} {direction:?} cycle {cycle}: still open");
        if let Some(d) = &market.double {
            assert_eq!(d.position("BTCUSDT", if direction == Direction::Long { "long" } else { "short" }), rust_decimal::Decimal::ZERO);
        }
        // A later run has nothing left to close and reports no phantom close.
        let after = market.sweep().await;
        assert!(after.closed.is_empty(), "{venue:?} {trigger:?} {direction:?} cycle {cycle}: phantom close {after:?}");
    }
}

#[tokio::test]
async fn paper_stop_loss_closes_three_longs_in_a_row() {
    three_cycles(Venue::Paper, Trigger::StopLoss, Direction::Long).await;
}
#[tokio::test]
async fn paper_stop_loss_closes_three_shorts_in_a_row() {
    three_cycles(Venue::Paper, Trigger::StopLoss, Direction::Short).await;
}
#[tokio::test]
async fn paper_take_profit_closes_three_longs_in_a_row() {
    three_cycles(Venue::Paper, Trigger::TakeProfit, Direction::Long).await;
}
#[tokio::test]
async fn paper_take_profit_closes_three_shorts_in_a_row() {
    three_cycles(Venue::Paper, Trigger::TakeProfit, Direction::Short).await;
}
#[tokio::test]
async fn paper_trailing_stop_closes_three_longs_in_a_row() {
    three_cycles(Venue::Paper, Trigger::Trailing, Direction::Long).await;
}
#[tokio::test]
async fn paper_trailing_stop_closes_three_shorts_in_a_row() {
    three_cycles(Venue::Paper, Trigger::Trailing, Direction::Short).await;
}
#[tokio::test]
async fn live_stop_loss_closes_three_longs_in_a_row() {
    three_cycles(Venue::Live, Trigger::StopLoss, Direction::Long).await;
}
#[tokio::test]
async fn live_stop_loss_closes_three_shorts_in_a_row() {
    three_cycles(Venue::Live, Trigger::StopLoss, Direction::Short).await;
}
#[tokio::test]
async fn live_take_profit_closes_three_longs_in_a_row() {
    three_cycles(Venue::Live, Trigger::TakeProfit, Direction::Long).await;
}
#[tokio::test]
async fn live_take_profit_closes_three_shorts_in_a_row() {
    three_cycles(Venue::Live, Trigger::TakeProfit, Direction::Short).await;
}
#[tokio::test]
async fn live_trailing_stop_closes_three_longs_in_a_row() {
    three_cycles(Venue::Live, Trigger::Trailing, Direction::Long).await;
}
#[tokio::test]
async fn live_trailing_stop_closes_three_shorts_in_a_row() {
    three_cycles(Venue::Live, Trigger::Trailing, Direction::Short).await;
}

fn trailing_config() -> Value {
    json!({"symbol": "BTCUSDT", "leverage": 10, "stop_loss_pct": "5", "trailing_stop_pct": "1", "max_position_notional": "20000"})
}

#[tokio::test]
async fn a_live_order_on_an_open_position_keeps_its_trailing_high() {
    let market = Market::open(Venue::Live).await;
    let token = market.trader(trailing_config()).await;
    market.open_position(&token, Direction::Long).await;
    market.set_mark("67000").await;
    assert!(market.sweep().await.closed.is_empty());
    // Adding to the position must not forget the 67,000 high the guardian recorded.
    market.open_position(&token, Direction::Long).await;
    market.set_mark("66300").await; // 1.04 % below the high, still 2 % above entry
    let report = market.sweep().await;
    assert_eq!(report.closed.iter().map(|c| c.reason.as_str()).collect::<Vec<_>>(), vec!["trailing_stop"], "{report:?}");
}

#[tokio::test]
async fn a_live_position_opened_again_before_the_next_run_does_not_inherit_the_trailing_high() {
    let market = Market::open(Venue::Live).await;
    let token = market.trader(trailing_config()).await;
    market.open_position(&token, Direction::Long).await;
    market.set_mark("67000").await;
    assert!(market.sweep().await.closed.is_empty());
    market.set_mark("66300").await;
    assert_eq!(market.sweep().await.closed.len(), 1, "the first position closes on its pullback");
    // Opened again at 66,300 before any other run: a new position whose best mark is its entry.
    market.open_position(&token, Direction::Long).await;
    let report = market.sweep().await;
    assert!(report.closed.is_empty(), "the new position inherited the old one's 67,000 high: {report:?}");
    assert_eq!(market.positions(&token).await.as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn a_live_stop_loss_close_that_fills_partly_is_finished_by_the_next_run() {
    let market = Market::open(Venue::Live).await;
    let double = market.double.as_ref().unwrap();
    let token = market.trader(json!({"symbol": "BTCUSDT", "leverage": 10, "stop_loss_pct": "2", "max_position_notional": "20000"})).await;
    market.open_position(&token, Direction::Long).await;
    market.set_mark("63600").await;
    // A thin book: the close fills 0.04 of 0.1 and Bitget cancels the rest.
    double.fault("/api/v2/mix/order/place-order", common::fake_bitget::Fault::FillPart("0.04"));
    let first = market.sweep().await;
    assert_eq!(first.closed.iter().map(|c| c.size.to_string()).collect::<Vec<_>>(), vec!["0.04"], "{first:?}");
    assert_eq!(double.position("BTCUSDT", "long").to_string(), "0.06");
    // The next run closes what is left with a new order, instead of replaying the first one.
    let second = market.sweep().await;
    assert_eq!(second.closed.iter().map(|c| c.size.to_string()).collect::<Vec<_>>(), vec!["0.06"], "{second:?}");
    assert!(double.position("BTCUSDT", "long").is_zero(), "flat after the second run");
    let third = market.sweep().await;
    assert!(third.closed.is_empty(), "nothing left to close, nothing reported: {third:?}");
}
