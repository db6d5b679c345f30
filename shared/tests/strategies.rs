//! Built-in strategies against the local stack: the scheduled runner driven run by run over a
//! loaded candle series, the backtest over the same series, the grid's lifecycle, and the rules
//! every strategy order is held to.

mod common;

use base64::Engine;
use common::*;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use shared::handlers::trading as t;
use shared::trading::model::OrderStatus;
use shared::trading::runner;
use std::time::{Duration, Instant};

const MINUTE: i64 = 60_000;

fn user_id(access_token: &str) -> String {
    let payload = access_token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    claims["sub"].as_str().unwrap().to_owned()
}

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

/// A minute boundary 200 minutes ago: a series from there has closed, so a backtest can replay it.
fn series_start() -> i64 {
    (chrono::Utc::now().timestamp_millis() / MINUTE - 200) * MINUTE
}

/// A zig-zag of closes (up `leg` candles by `step`, then down as many), so the EMAs cross again and
/// again; each candle opens at the last close and ranges 50 either side of its close.
fn zig_zag(start_ms: i64, count: usize, leg: usize, step: i64) -> Vec<(i64, fake_bitget::Candle)> {
    let mut price = 65_000i64;
    let mut previous = price;
    (0..count)
        .map(|i| {
            price += if (i / leg).is_multiple_of(2) { step } else { -step };
            let (open, close) = (Decimal::from(previous), Decimal::from(price));
            previous = price;
            let candle = fake_bitget::Candle {
                open,
                high: open.max(close) + Decimal::from(50),
                low: open.min(close) - Decimal::from(50),
                close,
                volume: Decimal::ONE,
            };
            (start_ms + i as i64 * MINUTE, candle)
        })
        .collect()
}

/// 40 flat candles, then one that jumps 1.5 %: a cross up at the close of the 41st.
fn flat_then_a_jump(t0: i64) -> Vec<(i64, fake_bitget::Candle)> {
    let mut series = zig_zag(t0, 40, 1, 0);
    let jump = fake_bitget::Candle { open: d("65000"), high: d("66100"), low: d("64950"), close: d("66000"), volume: Decimal::ONE };
    series.push((t0 + 40 * MINUTE, jump));
    series
}

fn ema_settings() -> Value {
    json!({"kind": "ema_cross", "interval": "1m", "fast": 3, "slow": 8, "size": "0.01", "allow_short": true})
}

fn bot_settings(strategy: Value) -> Value {
    json!({"symbol": "BTCUSDT", "leverage": 10, "stop_loss_pct": "8", "max_position_notional": "20000", "strategy": strategy})
}

async fn start(app: &TestApp, token: &str, strategy: Value) -> TestResponse {
    app.call_as(t::start_bot, token, "POST", "/api/v1/bot/start", Some(bot_settings(strategy))).await
}

/// Starts the bot as if at `started_ms` (before the series), so the runs driven over the series'
/// past times may act on its candles.
async fn start_at(app: &TestApp, token: &str, strategy: Value, started_ms: i64) {
    let res = start(app, token, strategy).await;
    assert_eq!(res.status, 200, "{}", res.raw);
    let mut bot = app.trading().bot(&user_id(token)).await.unwrap().unwrap();
    bot.run.as_mut().unwrap().started_ms = started_ms;
    assert!(app.trading().put_bot(&bot, Some(bot.version)).await.unwrap());
}

async fn run_at(app: &TestApp, now_ms: i64) -> runner::RunReport {
    let all: Vec<u16> = (0..shared::keys::GUARDIAN_SHARDS).collect();
    runner::run(&app.state, &all, now_ms).await
}

async fn sweep(app: &TestApp) -> shared::guardian::SweepReport {
    shared::guardian::sweep(&app.state, Instant::now() + Duration::from_secs(60), &shared::guardian::SweepStats::default()).await
}

async fn filled_orders(app: &TestApp, user: &str) -> Vec<shared::trading::store::OrderRecord> {
    let mut orders = app.trading().orders_with_status(user, OrderStatus::Filled).await.unwrap();
    // In the order they were recorded; within one decision the close comes before the open.
    orders.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(b.intent.reduce_only.cmp(&a.intent.reduce_only)));
    orders
}

#[tokio::test]
async fn an_ema_cross_bot_run_live_over_a_series_trades_as_its_backtest_does() {
    let app = spawn_app().await;
    let double = app.exchange.as_ref().unwrap();
    let token = access_token(&app).await;
    let user = user_id(&token);
    let t0 = series_start();
    let series = zig_zag(t0, 90, 12, 100);
    double.load_candles("BTCUSDT", series.clone());
    app.set_mark("BTCUSDT", "65000").await;
    start_at(&app, &token, ema_settings(), t0).await;

    // Live: each candle closes, the mark is its close, and the scheduled run comes. Every third
    // run is doubled: two invocations at once, both reading the position before either sends, so
    // only the orders' keys keep the twin from sending again (the equality with the backtest
    // below fails on any extra fill). Every fifth run is repeated after a state write was lost.
    for (i, (open_ms, candle)) in series.iter().enumerate() {
        app.set_mark("BTCUSDT", &candle.close.to_string()).await;
        let close = open_ms + MINUTE;
        let reports = if i % 3 == 0 {
            let (a, b) = tokio::join!(run_at(&app, close), run_at(&app, close + 20_000));
            vec![a, b]
        } else {
            vec![run_at(&app, close).await]
        };
        for report in reports {
            assert!(report.errors.is_empty(), "{:?}", report.errors);
        }
        if i % 5 == 0 {
            let mut bot = app.trading().bot(&user).await.unwrap().unwrap();
            bot.strategy_state = Default::default();
            assert!(app.trading().put_bot(&bot, Some(bot.version)).await.unwrap());
            assert_eq!(run_at(&app, close + 40_000).await.orders_sent, 0, "a repeated run at {i} sent again");
        }
    }
    let live = filled_orders(&app, &user).await;
    assert!(live.len() >= 4, "the zig-zag crosses several times: {} fills", live.len());

    let backtest = json!({
        "strategy": ema_settings(), "symbol": "BTCUSDT", "interval": "1m",
        "from": chrono::DateTime::from_timestamp_millis(t0).unwrap().to_rfc3339(),
        "to": chrono::DateTime::from_timestamp_millis(t0 + 90 * MINUTE).unwrap().to_rfc3339(),
        "leverage": 10, "stop_loss_pct": "8", "max_position_notional": "20000",
    });
    // The backtest replays closed candles only: it runs once the series has closed.
    let res = app.call_as(t::backtest, &token, "POST", "/api/v1/backtest", Some(backtest.clone())).await;
    assert_eq!(res.status, 200, "{}", res.raw);
    let trades = res.body["trades"].as_array().unwrap();
    let fills: Vec<(String, String, String, String, String)> = live
        .iter()
        .map(|o| {
            let f = o.fill.as_ref().unwrap();
            let side = serde_json::to_value(o.intent.side).unwrap().as_str().unwrap().to_owned();
            (
                side,
                f.filled_size.normalize().to_string(),
                f.avg_price.unwrap().normalize().to_string(),
                f.fee.normalize().to_string(),
                f.realized_pnl.normalize().to_string(),
            )
        })
        .collect();
    let replayed: Vec<(String, String, String, String, String)> = trades
        .iter()
        .map(|t| {
            let s = |k: &str| t[k].as_str().unwrap().parse::<Decimal>().unwrap().normalize().to_string();
            (t["side"].as_str().unwrap().to_owned(), s("size"), s("price"), s("fee"), s("realized_pnl"))
        })
        .collect();
    assert_eq!(replayed, fills, "the backtest makes the live bot's trades");
    let live_realized: Decimal = live.iter().map(|o| o.fill.as_ref().unwrap().realized_pnl).sum();
    assert_eq!(d(res.body["realized_pnl"].as_str().unwrap()), live_realized);
    assert_eq!(res.body["equity"].as_array().unwrap().len(), 90);
}

#[tokio::test]
async fn the_runner_decides_on_closed_candles_only_and_never_on_the_forming_one() {
    let app = spawn_app().await;
    let double = app.exchange.as_ref().unwrap();
    let token = access_token(&app).await;
    let user = user_id(&token);
    let t0 = series_start();
    double.load_candles("BTCUSDT", flat_then_a_jump(t0));
    app.set_mark("BTCUSDT", "66000").await;
    start_at(&app, &token, ema_settings(), t0).await;
    // While the jump candle is forming (30 s into it), nothing is decided.
    let forming = run_at(&app, t0 + 40 * MINUTE + 30_000).await;
    assert_eq!(forming.orders_sent, 0);
    assert!(filled_orders(&app, &user).await.is_empty());
    // Once it closes, the bot buys.
    let closed = run_at(&app, t0 + 41 * MINUTE).await;
    assert_eq!(closed.orders_sent, 1, "{closed:?}");
    let fills = filled_orders(&app, &user).await;
    assert_eq!(fills.len(), 1);
    assert_eq!(fills[0].intent.size, d("0.01"));
}

#[tokio::test]
async fn a_strategy_order_under_the_kill_switch_is_refused_and_the_refusal_is_recorded() {
    let app = spawn_app().await;
    let double = app.exchange.as_ref().unwrap();
    let token = access_token(&app).await;
    let user = user_id(&token);
    let t0 = series_start();
    double.load_candles("BTCUSDT", flat_then_a_jump(t0));
    app.set_mark("BTCUSDT", "66000").await;
    start_at(&app, &token, ema_settings(), t0).await;

    app.trading().set_kill_switch(true, "test", "test").await.unwrap();
    let halted = run_at(&app, t0 + 41 * MINUTE).await;
    assert_eq!((halted.orders_sent, halted.orders_refused), (0, 1), "{halted:?}");
    let bot = app.trading().bot(&user).await.unwrap().unwrap();
    let key = runner::order_key(&bot, &(t0 + 41 * MINUTE).to_string(), "open");
    let record = app.trading().idempotency_record(&user, &key).await.unwrap().expect("the refusal is recorded");
    assert_eq!(record.status, Some(503));
    assert!(record.body.unwrap_or_default().contains("trading_halted"));

    // Lifted: the same decision is not traded late, and the next cross is.
    app.trading().set_kill_switch(false, "test", "test").await.unwrap();
    let after = run_at(&app, t0 + 41 * MINUTE + 10_000).await;
    assert_eq!(after.orders_sent, 0);
    assert!(filled_orders(&app, &user).await.is_empty(), "a halted decision never trades");
}

#[tokio::test]
async fn a_triggered_stop_stops_a_strategy_bot_with_its_reason_instead_of_re_entering() {
    let app = spawn_app().await;
    let double = app.exchange.as_ref().unwrap();
    let token = access_token(&app).await;
    let user = user_id(&token);
    let t0 = series_start();
    let series = zig_zag(t0, 90, 12, 100);
    double.load_candles("BTCUSDT", series.clone());
    start_at(&app, &token, ema_settings(), t0).await;
    let mut opened_at = None;
    for (open_ms, candle) in &series {
        app.set_mark("BTCUSDT", &candle.close.to_string()).await;
        run_at(&app, open_ms + MINUTE).await;
        if !app.trading().snapshot(&user).await.unwrap().positions.is_empty() {
            opened_at = Some(*open_ms);
            break;
        }
    }
    let opened_at = opened_at.expect("a cross opened a position");
    let position = app.trading().snapshot(&user).await.unwrap().positions[0].clone();
    // The mark moves 9 % against it: past the 8 % stop, short of the 9.6 % liquidation at 10x.
    let against = position.entry_price * if position.side == shared::trading::model::PositionSide::Long { d("0.91") } else { d("1.09") };
    app.set_mark("BTCUSDT", &against.round_dp(1).to_string()).await;
    let swept = sweep(&app).await;
    assert_eq!(swept.closed.len(), 1, "{swept:?}");
    let status = app.call_as(t::status, &token, "GET", "/api/v1/bot/status", None).await;
    assert_eq!(
        (status.body["state"].as_str(), status.body["stop_reason"].as_str()),
        (Some("stopped"), Some("stop_loss")),
        "{}",
        status.raw
    );
    // Later crosses trade nothing: the bot is stopped.
    let before = filled_orders(&app, &user).await.len();
    for (open_ms, _) in series.iter().filter(|(t, _)| *t > opened_at) {
        run_at(&app, open_ms + MINUTE).await;
    }
    assert_eq!(filled_orders(&app, &user).await.len(), before);
}

/// The paper orders resting for `user`, as (side, price), sorted.
async fn resting(app: &TestApp, user: &str) -> Vec<(String, String)> {
    let snapshot = app.trading().snapshot(user).await.unwrap();
    let mut r: Vec<(String, String)> = snapshot
        .resting
        .iter()
        .map(|o| {
            (serde_json::to_value(o.intent.side).unwrap().as_str().unwrap().to_owned(), o.intent.price.unwrap().normalize().to_string())
        })
        .collect();
    r.sort();
    r
}

#[tokio::test]
async fn the_grid_keeps_its_levels_through_fills_and_a_stop_and_cancels_every_resting_order_on_stop() {
    let app = spawn_app().await;
    let token = access_token(&app).await;
    let user = user_id(&token);
    app.set_mark("BTCUSDT", "65100").await;
    let grid = json!({"kind": "grid", "lower": "63000", "upper": "67000", "levels": 5, "size_per_level": "0.001"});
    assert_eq!(start(&app, &token, grid.clone()).await.status, 200);
    let now = chrono::Utc::now().timestamp_millis();
    let first = run_at(&app, now).await;
    assert_eq!(first.orders_sent, 4, "{first:?}");
    let armed = vec![
        ("buy".into(), "63000".into()),
        ("buy".into(), "64000".into()),
        ("sell".into(), "66000".into()),
        ("sell".into(), "67000".into()),
    ];
    assert_eq!(resting(&app, &user).await, armed, "buys below, sells above, the level at the mark empty");
    assert_eq!(run_at(&app, now + MINUTE).await.orders_sent, 0, "a repeated run arms nothing new");

    // Down through 64000: the guardian fills the buy, the next run arms a sell one level up.
    app.set_mark("BTCUSDT", "63900").await;
    assert_eq!(sweep(&app).await.resting_filled, 1);
    let rearm = run_at(&app, now + 2 * MINUTE).await;
    assert_eq!(rearm.orders_sent, 1, "{rearm:?}");
    let after_fill = vec![
        ("buy".into(), "63000".into()),
        ("sell".into(), "65000".into()),
        ("sell".into(), "66000".into()),
        ("sell".into(), "67000".into()),
    ];
    assert_eq!(resting(&app, &user).await, after_fill);
    // Back up through 65000: that sell fills, and the buy at 64000 is armed again.
    app.set_mark("BTCUSDT", "65100").await;
    assert_eq!(sweep(&app).await.resting_filled, 1);
    assert_eq!(run_at(&app, now + 3 * MINUTE).await.orders_sent, 1);
    assert_eq!(resting(&app, &user).await, armed, "the same levels, re-armed");

    let stop = app.call_as(t::stop_bot, &token, "POST", "/api/v1/bot/stop", None).await;
    assert_eq!(stop.status, 200, "{}", stop.raw);
    assert_eq!(stop.body["canceled_orders"].as_array().unwrap().len(), 4);
    assert!(resting(&app, &user).await.is_empty(), "every resting order canceled on stop");
    assert_eq!(run_at(&app, now + 4 * MINUTE).await.orders_sent, 0, "a stopped grid places nothing");

    // Started again: a new run of the bot arms the same level prices afresh.
    assert_eq!(start(&app, &token, grid).await.status, 200);
    assert_eq!(run_at(&app, now + 5 * MINUTE).await.orders_sent, 4);
    assert_eq!(resting(&app, &user).await, armed);
}

#[tokio::test]
async fn a_backtest_beyond_ten_thousand_candles_or_of_a_manual_bot_is_refused() {
    let app = spawn_app().await;
    let token = access_token(&app).await;
    let ask = |strategy: Value, interval: &str, hours: i64| {
        json!({"strategy": strategy, "symbol": "BTCUSDT", "interval": interval, "from": "2026-10-01T00:00:00Z",
               "to": chrono::DateTime::parse_from_rfc3339("2026-10-01T00:00:00Z").unwrap().checked_add_signed(chrono::Duration::hours(hours)).unwrap().to_rfc3339()})
    };
    let grid = json!({"kind": "grid", "lower": "60000", "upper": "70000", "levels": 10, "size_per_level": "0.001"});
    let cases = [
        (ask(grid.clone(), "1m", 167), 422, "range_too_large"),
        (ask(grid.clone(), "2m", 1), 422, "invalid_interval"),
        (ask(json!({"kind": "manual"}), "1m", 1), 422, "invalid_strategy"),
        (ask(ema_settings(), "5m", 1), 422, "invalid_strategy"),
        (ask(grid.clone(), "1m", 0), 422, "invalid_range"),
    ];
    for (body, status, code) in cases {
        let res = app.call_as(t::backtest, &token, "POST", "/api/v1/backtest", Some(body.clone())).await;
        assert_eq!((res.status, res.code()), (status, code), "{body}: {}", res.raw);
    }
    // A range within the limit is served (no series loaded there: no trades).
    let res = app.call_as(t::backtest, &token, "POST", "/api/v1/backtest", Some(ask(grid, "1H", 24))).await;
    assert_eq!(res.status, 200, "{}", res.raw);
    let unauthenticated = app.call(t::backtest, request("POST", "/api/v1/backtest", Some(json!({})))).await;
    assert_eq!(unauthenticated.status, 401);
}

#[tokio::test]
async fn a_triggered_stop_of_a_grid_stops_it_and_cancels_its_resting_orders() {
    let app = spawn_app().await;
    let token = access_token(&app).await;
    let user = user_id(&token);
    app.set_mark("BTCUSDT", "65100").await;
    let grid = json!({"kind": "grid", "lower": "63000", "upper": "67000", "levels": 5, "size_per_level": "0.001"});
    assert_eq!(start(&app, &token, grid).await.status, 200);
    assert_eq!(run_at(&app, chrono::Utc::now().timestamp_millis()).await.orders_sent, 4);
    // A crash through both buys: they fill, and the position they open is past its 8 % stop
    // (short of the liquidation at 10x), which the next sweep sees.
    app.set_mark("BTCUSDT", "58240").await;
    let swept = sweep(&app).await;
    assert_eq!(swept.resting_filled, 2, "{swept:?}");
    let swept = sweep(&app).await;
    assert_eq!(swept.closed.iter().map(|c| c.reason.as_str()).collect::<Vec<_>>(), vec!["stop_loss"], "{swept:?}");
    let status = app.call_as(t::status, &token, "GET", "/api/v1/bot/status", None).await;
    assert_eq!(
        (status.body["state"].as_str(), status.body["stop_reason"].as_str()),
        (Some("stopped"), Some("stop_loss")),
        "{}",
        status.raw
    );
    assert!(resting(&app, &user).await.is_empty(), "the grid's sells are canceled with it");
    assert!(app.trading().snapshot(&user).await.unwrap().positions.is_empty());
}

#[tokio::test]
async fn a_grid_waits_under_the_kill_switch_and_arms_its_levels_once_it_is_lifted() {
    let app = spawn_app().await;
    let token = access_token(&app).await;
    let user = user_id(&token);
    app.set_mark("BTCUSDT", "65100").await;
    let grid = json!({"kind": "grid", "lower": "63000", "upper": "67000", "levels": 5, "size_per_level": "0.001"});
    assert_eq!(start(&app, &token, grid).await.status, 200);
    let now = chrono::Utc::now().timestamp_millis();
    app.trading().set_kill_switch(true, "test", "test").await.unwrap();
    // Halted, a grid's levels wait: nothing is sent, and no refusal is spent on them each minute.
    let halted = run_at(&app, now).await;
    assert_eq!((halted.orders_sent, halted.orders_refused), (0, 0), "{halted:?}");
    assert!(resting(&app, &user).await.is_empty());
    app.trading().set_kill_switch(false, "test", "test").await.unwrap();
    let lifted = run_at(&app, now + MINUTE).await;
    assert_eq!(lifted.orders_sent, 4, "{lifted:?}");
    assert_eq!(resting(&app, &user).await.len(), 4);
}

#[tokio::test]
async fn an_order_decided_for_a_run_that_ended_is_refused_even_when_the_bot_runs_again() {
    use shared::trading::model::{OrderIntent, OrderType, Side};
    use shared::trading::store::RecordOutcome;
    let app = spawn_app().await;
    let token = access_token(&app).await;
    let user = user_id(&token);
    app.set_mark("BTCUSDT", "65000").await;
    assert_eq!(start(&app, &token, ema_settings()).await.status, 200);
    let first_run = app.trading().bot(&user).await.unwrap().unwrap();
    assert_eq!(app.call_as(t::stop_bot, &token, "POST", "/api/v1/bot/stop", None).await.status, 200);
    assert_eq!(start(&app, &token, ema_settings()).await.status, 200);
    let second_run = app.trading().bot(&user).await.unwrap().unwrap();
    assert_ne!(first_run.run, second_run.run);

    // A runner pass that read the first run is still going: its order is refused in the
    // recording transaction, though the bot is running on the same exchange and keys.
    let intent = |id: &str| OrderIntent {
        symbol: "BTCUSDT".into(),
        side: Side::Buy,
        order_type: OrderType::Market,
        size: d("0.01"),
        price: None,
        reduce_only: false,
        client_order_id: id.into(),
        leverage: 10,
        reason: None,
    };
    let record = shared::trading::idempotency::new_record("f".into(), "stale".into());
    let stale = app.trading().record_order(&user, "strategy:stale", &record, &intent("stale"), &first_run).await.unwrap();
    assert_eq!(stale, RecordOutcome::BotNotRunning);
    let record = shared::trading::idempotency::new_record("f".into(), "current".into());
    let current = app.trading().record_order(&user, "strategy:current", &record, &intent("current"), &second_run).await.unwrap();
    assert_eq!(current, RecordOutcome::Recorded);
}

#[tokio::test]
async fn a_grid_level_the_position_cap_refuses_waits_before_it_tries_again() {
    let app = spawn_app().await;
    let token = access_token(&app).await;
    app.set_mark("BTCUSDT", "65100").await;
    // 0.2 BTC a level, about 13,000 USDT: resting orders on a side count toward the 20,000 cap,
    // so on each side the second level is refused.
    let grid = json!({"kind": "grid", "lower": "63000", "upper": "67000", "levels": 5, "size_per_level": "0.2"});
    assert_eq!(start(&app, &token, grid).await.status, 200);
    let now = chrono::Utc::now().timestamp_millis();
    let first = run_at(&app, now).await;
    assert_eq!((first.orders_sent, first.orders_refused), (2, 2), "{first:?}");
    let soon = run_at(&app, now + MINUTE).await;
    assert_eq!((soon.orders_sent, soon.orders_refused), (0, 0), "a refused level waits: {soon:?}");
    let later = run_at(&app, now + runner::GRID_RETRY_AFTER_MS + MINUTE).await;
    assert_eq!((later.orders_sent, later.orders_refused), (0, first.orders_refused), "then tries again: {later:?}");
}
