//! The guardian against real redis, the moto server, a fake Bitget and a fake Telegram.

mod common;

use common::fake_bitget::{FakeBitget, Fault, KEY, PASSPHRASE, SECRET};
use common::fake_telegram::FakeTelegram;
use common::*;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use shared::guardian::{sweep, sweep_shards, SweepReport, SweepStats};
use shared::handlers::trading as t;
use std::time::{Duration, Instant};

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

async fn guardian_app(extra: &[(&str, String)]) -> (TestApp, FakeTelegram) {
    let telegram = FakeTelegram::start().await;
    let mut overrides = vec![("TELEGRAM_BASE_URL", telegram.url.clone())];
    overrides.extend(extra.iter().cloned());
    let app = spawn_app_with(&overrides).await;
    app.set_mark("BTCUSDT", "65000").await;
    app.set_mark("ETHUSDT", "3200").await;
    (app, telegram)
}

async fn run(app: &TestApp) -> SweepReport {
    sweep(&app.state, Instant::now() + Duration::from_secs(60), &SweepStats::default()).await
}

/// A user with a running paper bot holding a 0.1 BTC long opened at 65,000.
async fn trader_with_long(app: &TestApp, config: Value) -> String {
    let token = access_token(app).await;
    let res = app.call_as(t::start_bot, &token, "POST", "/api/v1/bot/start", Some(config)).await;
    assert_eq!(res.status, 200, "{}", res.raw);
    let mut req = with_bearer(
        request("POST", "/api/v1/order/submit", Some(json!({"symbol": "BTCUSDT", "side": "buy", "type": "market", "size": "0.1"}))),
        &token,
    );
    req.headers_mut().insert("idempotency-key", uuid::Uuid::new_v4().to_string().parse().unwrap());
    assert_eq!(app.call(t::submit_order, req).await.status, 201);
    token
}

fn config(extra: Value) -> Value {
    let mut c = json!({"symbol": "BTCUSDT", "leverage": 10, "stop_loss_pct": "2", "max_position_notional": "20000"});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

/// A user with live Bitget keys (on the fake) and a running bot.
async fn live_trader(app: &TestApp) -> String {
    let token = access_token(app).await;
    let body = json!({"exchange": "bitget", "api_key": KEY, "api_secret": SECRET, "passphrase": PASSPHRASE});
    assert_eq!(app.call_as(t::put_credentials, &token, "PUT", "/api/v1/exchange/credentials", Some(body)).await.status, 204);
    assert_eq!(app.call_as(t::start_bot, &token, "POST", "/api/v1/bot/start", Some(config(json!({})))).await.status, 200);
    token
}

/// A market buy of BTCUSDT under `key`; the answer's status.
async fn market_buy(app: &TestApp, token: &str, size: &str, key: &str) -> u16 {
    let body = json!({"symbol": "BTCUSDT", "side": "buy", "type": "market", "size": size});
    let mut req = with_bearer(request("POST", "/api/v1/order/submit", Some(body)), token);
    req.headers_mut().insert("idempotency-key", key.parse().unwrap());
    app.call(t::submit_order, req).await.status
}

async fn status(app: &TestApp, token: &str) -> Value {
    app.call_as(t::status, token, "GET", "/api/v1/bot/status", None).await.body
}

#[tokio::test]
async fn a_price_below_the_stop_closes_the_position_and_the_bot_keeps_running() {
    let (app, _tg) = guardian_app(&[]).await;
    let token = trader_with_long(&app, config(json!({}))).await;
    let quiet = run(&app).await;
    assert!(quiet.closed.is_empty());
    assert!(quiet.bots_checked >= 1 && quiet.positions_checked >= 1);

    app.set_mark("BTCUSDT", "63700").await; // −2 %
    let report = run(&app).await;
    assert_eq!(report.closed.len(), 1, "{report:?}");
    let closed = &report.closed[0];
    assert_eq!(
        (closed.reason.as_str(), closed.symbol.as_str(), closed.size, closed.exit_price),
        ("stop_loss", "BTCUSDT", d("0.1"), Some(d("63700")))
    );
    let st = status(&app, &token).await;
    assert_eq!((st["state"].clone(), st["positions"].clone()), (json!("running"), json!([])));
    // The order records its reason and realized PnL.
    let user = closed.user_id.clone();
    let orders = app
        .dynamo()
        .query()
        .table_name(&app.state.config.table_name)
        .key_condition_expression("PK = :pk")
        .expression_attribute_values(":pk", aws_sdk_dynamodb::types::AttributeValue::S(format!("ORDERS#{user}")))
        .send()
        .await
        .unwrap();
    let is_close = |i: &&std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>| {
        i.get("intent").and_then(|v| v.as_m().ok()).is_some_and(|intent| intent["reduce_only"].as_bool() == Ok(&true))
    };
    let close = orders.items().iter().find(is_close).expect("the close order");
    assert_eq!(close["intent"].as_m().unwrap()["reason"].as_s().unwrap(), "stop_loss");
    assert_eq!(d(close["fill"].as_m().unwrap()["realized_pnl"].as_s().unwrap()), d("-130"));
}

#[tokio::test]
async fn a_price_above_the_take_profit_closes_the_position() {
    let (app, _tg) = guardian_app(&[]).await;
    trader_with_long(&app, config(json!({"take_profit_pct": "3"}))).await;
    app.set_mark("BTCUSDT", "66950").await; // +3 %
    let report = run(&app).await;
    assert_eq!(report.closed.iter().map(|c| c.reason.as_str()).collect::<Vec<_>>(), vec!["take_profit"]);
}

#[tokio::test]
async fn a_trailing_stop_follows_a_rise_and_closes_on_the_pullback() {
    let (app, _tg) = guardian_app(&[]).await;
    trader_with_long(&app, config(json!({"trailing_stop_pct": "1"}))).await;
    for mark in ["66000", "68000", "67500"] {
        app.set_mark("BTCUSDT", mark).await;
        assert!(run(&app).await.closed.is_empty(), "no close at {mark}");
    }
    app.set_mark("BTCUSDT", "67300").await; // 1.03 % below the 68,000 high
    let report = run(&app).await;
    assert_eq!(report.closed.len(), 1, "{report:?}");
    assert_eq!(report.closed[0].reason, "trailing_stop");
}

#[tokio::test]
async fn two_runs_started_at_the_same_moment_close_once() {
    let (app, _tg) = guardian_app(&[]).await;
    let token = trader_with_long(&app, config(json!({}))).await;
    app.set_mark("BTCUSDT", "60000").await;
    let (a, b) = tokio::join!(run(&app), run(&app));
    let closes: Vec<_> = a.closed.iter().chain(b.closed.iter()).collect();
    assert!(!closes.is_empty());
    let acct = app.call_as(t::account, &token, "GET", "/api/v1/account", None).await.body;
    assert_eq!(acct["positions"], json!([]));
    // Closed once: one loss of 0.1 × 5,000 and two fees, not two losses.
    let equity: Decimal = acct["equity"].as_str().unwrap().parse().unwrap();
    assert_eq!(equity, d("10000") - d("3.9") - d("500") - d("3.6"));
}

#[tokio::test]
async fn bots_left_stopping_are_finished() {
    let fake = FakeBitget::start().await;
    let (app, _tg) = guardian_app(&[("BITGET_BASE_URL", fake.url.clone())]).await;
    let token = live_trader(&app).await;
    assert_eq!(market_buy(&app, &token, "0.01", "k1").await, 201);
    fake.fault("/api/v2/mix/order/place-order", Fault::Code("45110"));
    assert_eq!(app.call_as(t::stop_bot, &token, "POST", "/api/v1/bot/stop", None).await.code(), "close_failed");

    let report = run(&app).await;
    assert_eq!(report.closed.iter().map(|c| c.reason.as_str()).collect::<Vec<_>>(), vec!["bot_stop"], "{report:?}");
    assert_eq!(status(&app, &token).await["state"], "stopped");
    assert_eq!(fake.position("BTCUSDT", "long"), Decimal::ZERO);
}

#[tokio::test]
async fn an_exchange_timeout_after_accept_does_not_close_twice() {
    let fake = FakeBitget::start().await;
    let (app, _tg) = guardian_app(&[("BITGET_BASE_URL", fake.url.clone())]).await;
    let token = live_trader(&app).await;
    let mut req = with_bearer(
        request("POST", "/api/v1/order/submit", Some(json!({"symbol": "BTCUSDT", "side": "buy", "type": "market", "size": "0.02"}))),
        &token,
    );
    req.headers_mut().insert("idempotency-key", "k1".parse().unwrap());
    assert_eq!(app.call(t::submit_order, req).await.status, 201);

    fake.set_mark("BTCUSDT", "63000");
    fake.fault("/api/v2/mix/order/place-order", Fault::AcceptThenTimeout);
    let first = run(&app).await;
    assert_eq!(first.closed.len(), 1, "{first:?}");
    let second = run(&app).await;
    assert!(second.closed.is_empty(), "{second:?}");
    assert_eq!(fake.order_count(), 2, "one open, one close");
    assert_eq!(fake.position("BTCUSDT", "long"), Decimal::ZERO);
    assert_eq!(status(&app, &token).await["state"], "running");
}

#[tokio::test]
async fn positions_opened_outside_the_service_are_reconciled_and_alerted() {
    let fake = FakeBitget::start().await;
    let (app, tg) = guardian_app(&[("BITGET_BASE_URL", fake.url.clone())]).await;
    live_trader(&app).await;
    // Opened by hand on the bot's symbol (other symbols are the user's own business).
    fake.set_position("BTCUSDT", "short", "0.5", "65000");
    let report = run(&app).await;
    assert!(report.errors.is_empty(), "{report:?}");
    assert!(tg.messages().iter().any(|m| m.contains("Reconciled") && m.contains("BTCUSDT")), "{:?}", tg.messages());
    let before = tg.messages().len();
    run(&app).await;
    assert!(!tg.messages()[before..].iter().any(|m| m.contains("Reconciled")), "reconciled once, not every minute");
}

#[tokio::test]
async fn a_flapping_dependency_gives_one_alert_and_one_recovery() {
    let (app, tg) = guardian_app(&[]).await;
    trader_with_long(&app, config(json!({}))).await;
    let mark_key = shared::keys::mark_price("BTCUSDT");
    for _ in 0..3 {
        app.dynamo().delete_item().table_name(&app.state.config.table_name).set_key(Some(mark_key.clone())).send().await.unwrap();
        run(&app).await;
        app.set_mark("BTCUSDT", "65000").await;
        run(&app).await;
    }
    let about_positions: Vec<String> =
        tg.messages().into_iter().filter(|m| m.contains("could not be checked") || m.contains("positions recovered")).collect();
    assert_eq!(about_positions.len(), 2, "{:?}", tg.messages());
    assert!(about_positions[0].contains("could not be checked"));
    assert!(about_positions[1].contains("recovered"));
}

#[tokio::test]
async fn telegram_down_does_not_break_the_sweep() {
    let (app, tg) = guardian_app(&[]).await;
    tg.set_down(true);
    trader_with_long(&app, config(json!({}))).await;
    app.dynamo()
        .delete_item()
        .table_name(&app.state.config.table_name)
        .set_key(Some(shared::keys::mark_price("BTCUSDT")))
        .send()
        .await
        .unwrap();
    let report = run(&app).await;
    assert_eq!(report.alerts_sent, 0);
    assert_eq!(report.errors.len(), 1, "the bot that could not be checked is reported");
    app.set_mark("BTCUSDT", "60000").await;
    let report = run(&app).await;
    assert_eq!(report.closed.len(), 1, "closing goes on without alerts: {report:?}");
}

/// `count` running paper bots whose users fall into guardian shard `shard`, written straight into
/// the table as the bot-start and order paths write them.
async fn bots_in_shard(app: &TestApp, shard: u16, count: usize) -> Vec<String> {
    let mut users = Vec::new();
    let mut items = Vec::new();
    while users.len() < count {
        let user = uuid::Uuid::new_v4().to_string();
        if shared::keys::guardian_shard(&user) != shard {
            continue;
        }
        items.extend(ops::devstack::running_paper_bot(&user, "BTCUSDT", d("0.1"), d("65000"), d("2")).unwrap());
        users.push(user);
    }
    ops::devstack::put_items(app.dynamo(), &app.state.config.table_name, items).await.unwrap();
    users
}

#[tokio::test]
async fn a_run_near_its_deadline_stops_and_the_next_goes_on_where_it_stopped() {
    let (app, _tg) = guardian_app(&[]).await;
    let shard = 5;
    bots_in_shard(&app, shard, 3).await;
    let stats = SweepStats::default();
    let run_shard = |deadline| sweep_shards(&app.state, std::slice::from_ref(&shard), deadline, &stats, 3);
    // A deadline a hair past the margin: one page (three index items: a bot, its position and
    // the next bot), then a clean stop with the cursor after the first user.
    let first = run_shard(Instant::now() + shared::guardian::DEADLINE_MARGIN + Duration::from_millis(2)).await;
    assert_eq!(first.bots_checked, 1, "{first:?}");
    let second = run_shard(Instant::now() + Duration::from_secs(60)).await;
    assert_eq!(first.bots_checked + second.bots_checked, 3, "every bot once: {first:?} {second:?}");
    let third = run_shard(Instant::now() + Duration::from_secs(60)).await;
    assert_eq!(third.bots_checked, 3, "a full pass after the wrap-around");
}

#[tokio::test]
async fn each_shard_run_checks_only_its_own_bots_and_together_they_check_every_bot_once() {
    let (app, _tg) = guardian_app(&[]).await;
    let shards: Vec<u16> = (0..shared::keys::GUARDIAN_SHARDS).collect();
    for &shard in &shards {
        bots_in_shard(&app, shard, usize::from(shard % 3) + 1).await;
    }
    let mut total = 0;
    for &shard in &shards {
        let report = sweep_shards(&app.state, &[shard], Instant::now() + Duration::from_secs(60), &SweepStats::default(), 500).await;
        assert_eq!(report.bots_checked, u32::from(shard % 3) + 1, "shard {shard}: {report:?}");
        total += report.bots_checked;
    }
    assert_eq!(total, shards.iter().map(|s| u32::from(s % 3) + 1).sum::<u32>());
    // A second round of the fan-out checks the same bots again: no shard's cursor was left behind.
    let again = sweep(&app.state, Instant::now() + Duration::from_secs(60), &SweepStats::default()).await;
    assert_eq!(again.bots_checked, total);
}

#[tokio::test]
async fn backend_calls_follow_pages_symbols_and_triggers() {
    let (app, _tg) = guardian_app(&[]).await;
    for _ in 0..4 {
        trader_with_long(&app, config(json!({}))).await;
    }
    let stats = SweepStats::default();
    let report = sweep(&app.state, Instant::now() + Duration::from_secs(60), &stats).await;
    assert_eq!(report.bots_checked, 4);
    let calls = stats.snapshot();
    // One page per shard, and one for the partition of items indexed before sharding.
    assert_eq!(calls["index_queries"], u64::from(shared::keys::GUARDIAN_SHARDS) + 1, "{calls}");
    assert_eq!(calls["partition_queries"], 0, "no query per bot: {calls}");
    assert_eq!(calls["price_calls"], 1, "{calls}");
    assert_eq!(calls["orders"], 0);
}

#[tokio::test]
async fn a_telegram_429_is_waited_out_and_the_alert_still_arrives() {
    let (app, tg) = guardian_app(&[]).await;
    tg.state.lock().unwrap().rate_limit_once = true;
    assert!(shared::alerts::send(&app.state, "hello from the guardian").await);
    assert_eq!(tg.messages(), vec!["hello from the guardian".to_owned()]);
}

#[tokio::test]
async fn bots_indexed_before_sharding_are_still_guarded_by_shard_zero() {
    let (app, _tg) = guardian_app(&[]).await;
    let user = uuid::Uuid::new_v4().to_string();
    // As written before the index had shards: one partition, `ACTIVE_BOTS`, 5 % under water.
    let mut items = ops::devstack::running_paper_bot(&user, "BTCUSDT", d("0.1"), d("68500"), d("2")).unwrap();
    for item in &mut items {
        item.insert(shared::keys::GSI1_PK.into(), aws_sdk_dynamodb::types::AttributeValue::S(shared::keys::ACTIVE_BOTS.into()));
    }
    ops::devstack::put_items(app.dynamo(), &app.state.config.table_name, items).await.unwrap();
    let other = sweep_shards(&app.state, &[1], Instant::now() + Duration::from_secs(60), &SweepStats::default(), 500).await;
    assert_eq!(other.bots_checked, 0);
    let zero = sweep_shards(&app.state, &[0], Instant::now() + Duration::from_secs(60), &SweepStats::default(), 500).await;
    assert_eq!(zero.bots_checked, 1, "{zero:?}");
    assert_eq!(zero.closed.len(), 1, "the legacy bot's stop-loss still fires: {zero:?}");
}

#[tokio::test]
async fn the_live_guardian_guards_the_bots_symbol_and_not_the_users_other_positions() {
    let fake = FakeBitget::start().await;
    fake.set_position("ETHUSDT", "long", "1", "3200"); // the user's own, opened by hand
    let (app, _tg) = guardian_app(&[("BITGET_BASE_URL", fake.url.clone())]).await;
    live_trader(&app).await;
    fake.set_mark("ETHUSDT", "2000"); // −37 %: far past the bot's 2 % stop, but not the bot's symbol
    let report = run(&app).await;
    assert!(report.closed.is_empty(), "{report:?}");
    assert_eq!(fake.position("ETHUSDT", "long"), d("1"));
}

#[tokio::test]
async fn a_bot_stuck_stopping_is_announced_once_and_its_stop_once() {
    let fake = FakeBitget::start().await;
    let (app, tg) = guardian_app(&[("BITGET_BASE_URL", fake.url.clone())]).await;
    let token = live_trader(&app).await;
    assert_eq!(market_buy(&app, &token, "0.01", "stuck-1").await, 201);
    fake.fault("/api/v2/mix/order/place-order", Fault::Code("45110"));
    assert_eq!(app.call_as(t::stop_bot, &token, "POST", "/api/v1/bot/stop", None).await.code(), "close_failed");
    for _ in 0..3 {
        fake.fault("/api/v2/mix/order/place-order", Fault::Code("45110"));
        assert!(run(&app).await.closed.is_empty());
    }
    let stuck = tg.messages().iter().filter(|m| m.contains("still stopping")).count();
    assert_eq!(stuck, 1, "one alert for three failing runs: {:?}", tg.messages());
    assert_eq!(run(&app).await.closed.len(), 1);
    run(&app).await;
    let stopped = tg.messages().iter().filter(|m| m.contains("is stopped")).count();
    assert_eq!(stopped, 1, "{:?}", tg.messages());
}

#[tokio::test]
async fn the_users_own_positions_on_other_symbols_never_raise_reconciliation_alerts() {
    let fake = FakeBitget::start().await;
    fake.set_position("ETHUSDT", "long", "1", "3200"); // the user's own, opened by hand
    let (app, tg) = guardian_app(&[("BITGET_BASE_URL", fake.url.clone())]).await;
    let token = live_trader(&app).await;
    for cycle in 1..=3 {
        assert_eq!(market_buy(&app, &token, "0.01", &format!("mine-{cycle}")).await, 201);
        run(&app).await;
        let reconciled: Vec<String> = tg.messages().into_iter().filter(|m| m.contains("Reconciled")).collect();
        assert!(reconciled.is_empty(), "cycle {cycle}: the bot's own orders and the user's ETHUSDT are no news: {reconciled:?}");
    }
}

#[tokio::test]
async fn in_hedge_mode_the_guardian_closes_a_short_past_its_stop_and_leaves_the_long() {
    let fake = FakeBitget::start().await;
    fake.set_pos_mode("hedge_mode");
    let (app, _tg) = guardian_app(&[("BITGET_BASE_URL", fake.url.clone())]).await;
    let token = live_trader(&app).await;
    assert_eq!(market_buy(&app, &token, "0.01", "hedge-long").await, 201);
    let mut req = with_bearer(
        request("POST", "/api/v1/order/submit", Some(json!({"symbol": "BTCUSDT", "side": "sell", "type": "market", "size": "0.02"}))),
        &token,
    );
    req.headers_mut().insert("idempotency-key", "hedge-short".parse().unwrap());
    assert_eq!(app.call(t::submit_order, req).await.status, 201);
    // +3 %: past the short's 2 % stop; the long is in profit.
    fake.set_mark("BTCUSDT", "66950");
    app.set_mark("BTCUSDT", "66950").await;
    let report = run(&app).await;
    assert_eq!(report.closed.iter().map(|c| (c.reason.as_str(), c.size)).collect::<Vec<_>>(), vec![("stop_loss", d("0.02"))], "{report:?}");
    assert!(fake.position("BTCUSDT", "short").is_zero());
    assert_eq!(fake.position("BTCUSDT", "long"), d("0.01"));
}
