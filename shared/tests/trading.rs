//! The trading contract against real redis, the moto server and a fake Bitget.

mod common;

use common::fake_bitget::{FakeBitget, Fault, DEMO_KEY, KEY, PASSPHRASE, SECRET};
use common::*;
use futures::future::join_all;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use shared::handlers::trading as t;

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn dv(v: &Value) -> Decimal {
    v.as_str().unwrap_or_else(|| panic!("decimals travel as strings, got {v}")).parse().unwrap()
}

fn bot_config() -> Value {
    json!({"symbol": "BTCUSDT", "leverage": 10, "stop_loss_pct": "2", "take_profit_pct": "4", "max_position_notional": "20000"})
}

async fn paper_app() -> TestApp {
    let app = spawn_app().await;
    app.set_mark("BTCUSDT", "65000").await;
    app.set_mark("ETHUSDT", "3200").await;
    app
}

async fn start(app: &TestApp, token: &str, config: Value) -> TestResponse {
    app.call_as(t::start_bot, token, "POST", "/api/v1/bot/start", Some(config)).await
}

async fn submit(app: &TestApp, token: &str, key: &str, order: Value) -> TestResponse {
    let mut req = with_bearer(request("POST", "/api/v1/order/submit", Some(order)), token);
    req.headers_mut().insert("idempotency-key", key.parse().unwrap());
    app.call(t::submit_order, req).await
}

async fn status(app: &TestApp, token: &str) -> TestResponse {
    app.call_as(t::status, token, "GET", "/api/v1/bot/status", None).await
}

async fn stop(app: &TestApp, token: &str) -> TestResponse {
    app.call_as(t::stop_bot, token, "POST", "/api/v1/bot/stop", None).await
}

async fn account(app: &TestApp, token: &str) -> TestResponse {
    app.call_as(t::account, token, "GET", "/api/v1/account", None).await
}

fn key() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[tokio::test]
async fn a_paper_trader_starts_buys_sees_the_position_and_stops_flat() {
    let app = paper_app().await;
    let token = access_token(&app).await;
    let res = start(&app, &token, bot_config()).await;
    assert_eq!(res.status, 200, "{}", res.raw);
    assert_eq!((res.body["is_running"].clone(), res.body["state"].clone()), (json!(true), json!("running")));
    assert_eq!(res.body["config"]["stop_loss_pct"], "2");

    let res = submit(&app, &token, &key(), json!({"symbol": "BTCUSDT", "side": "buy", "type": "market", "size": "0.1"})).await;
    assert_eq!(res.status, 201, "{}", res.raw);
    assert_eq!(res.body["status"], "filled");
    assert_eq!(dv(&res.body["filled_size"]), d("0.1"));
    assert_eq!(dv(&res.body["avg_price"]), d("65000"));
    assert!(res.body["client_order_id"].as_str().is_some_and(|c| !c.is_empty()));

    app.set_mark("BTCUSDT", "66000").await;
    let acct = account(&app, &token).await;
    assert_eq!(acct.status, 200, "{}", acct.raw);
    assert_eq!(acct.body["exchange"], "paper");
    assert_eq!(dv(&acct.body["unrealized_pnl"]), d("100"));
    // 10,000 − 3.9 fee + 100 unrealized
    assert_eq!(dv(&acct.body["equity"]), d("10096.1"));
    let p = &acct.body["positions"][0];
    assert_eq!((p["symbol"].as_str(), p["side"].as_str()), (Some("BTCUSDT"), Some("long")));
    assert_eq!((dv(&p["size"]), dv(&p["entry_price"]), dv(&p["mark_price"])), (d("0.1"), d("65000"), d("66000")));

    let st = status(&app, &token).await;
    assert_eq!(st.body["positions"].as_array().unwrap().len(), 1);

    let res = stop(&app, &token).await;
    assert_eq!(res.status, 200, "{}", res.raw);
    assert_eq!((res.body["is_running"].clone(), res.body["state"].clone()), (json!(false), json!("stopped")));
    let closed = &res.body["closed_positions"][0];
    assert_eq!((closed["symbol"].as_str(), closed["side"].as_str()), (Some("BTCUSDT"), Some("long")));
    assert_eq!((dv(&closed["size"]), dv(&closed["exit_price"]), dv(&closed["realized_pnl"])), (d("0.1"), d("66000"), d("100")));

    let st = status(&app, &token).await;
    assert_eq!((st.body["state"].clone(), st.body["positions"].clone()), (json!("stopped"), json!([])));
    let again = stop(&app, &token).await;
    assert_eq!((again.status, again.body["closed_positions"].clone()), (200, json!([])));
}

#[tokio::test]
async fn start_is_idempotent_for_the_same_config_and_refuses_another() {
    let app = paper_app().await;
    let token = access_token(&app).await;
    let first = start(&app, &token, bot_config()).await;
    let second = start(&app, &token, bot_config()).await;
    assert_eq!((first.status, second.status), (200, 200));
    assert_eq!(first.body["updated_at"], second.body["updated_at"]);
    let mut other = bot_config();
    other["leverage"] = json!(20);
    let res = start(&app, &token, other).await;
    assert_eq!((res.status, res.code()), (409, "bot_already_running"));
}

#[tokio::test]
async fn bot_settings_are_validated_on_start() {
    let app = paper_app().await;
    let token = access_token(&app).await;
    for (patch, code) in [
        (json!({"symbol": "NOPEUSDT"}), "unknown_symbol"),
        (json!({"leverage": 126}), "leverage_above_maximum"),
        (json!({"stop_loss_pct": "0"}), "invalid_stop_loss"),
        (json!({"max_position_notional": "1"}), "invalid_max_position_notional"),
    ] {
        let mut config = bot_config();
        for (k, v) in patch.as_object().unwrap() {
            config[k] = v.clone();
        }
        let res = start(&app, &token, config).await;
        assert_eq!((res.status, res.code()), (422, code), "{}", res.raw);
    }
    let res = start(&app, &token, json!({"symbol": "BTCUSDT"})).await;
    assert_eq!((res.status, res.code()), (400, "invalid_request"));
}

#[tokio::test]
async fn orders_need_a_running_bot() {
    let app = paper_app().await;
    let token = access_token(&app).await;
    let res = submit(&app, &token, &key(), market_buy("0.01")).await;
    assert_eq!((res.status, res.code()), (409, "bot_not_running"));
}

#[tokio::test]
async fn every_risk_rule_refuses_with_its_own_code_and_nothing_is_sent() {
    let app = paper_app().await;
    let token = access_token(&app).await;
    let mut config = bot_config();
    config["max_position_notional"] = json!("7000");
    start(&app, &token, config).await;
    let order = |size: Value, extra: Value| {
        let mut o = json!({"symbol": "BTCUSDT", "side": "buy", "type": "market", "size": size});
        for (k, v) in extra.as_object().unwrap() {
            o[k] = v.clone();
        }
        o
    };
    let cases = [
        (order(json!("0.01"), json!({"symbol": "XRPUSDT"})), "unknown_symbol"),
        (order(json!("0.01"), json!({"symbol": "ETHUSDT"})), "symbol_not_enabled"),
        (order(json!("0"), json!({})), "invalid_size"),
        (order(json!("-1"), json!({})), "invalid_size"),
        (order(json!("lots"), json!({})), "invalid_size"),
        (order(json!("0.0001"), json!({})), "size_below_minimum"),
        (order(json!("0.0015"), json!({})), "invalid_size_step"),
        (order(json!("0.2"), json!({})), "max_position_notional_exceeded"),
        (order(json!("0.01"), json!({"type": "limit"})), "invalid_price"),
        (order(json!("0.01"), json!({"type": "limit", "price": "64000.05"})), "invalid_price_tick"),
        (order(json!("0.01"), json!({"type": "limit", "price": "68300"})), "price_out_of_band"),
        (order(json!("0.01"), json!({"side": "sell", "reduce_only": true})), "reduce_only_exceeds_position"),
    ];
    for (body, code) in cases {
        let res = submit(&app, &token, &key(), body.clone()).await;
        assert_eq!((res.status, res.code()), (422, code), "{body}: {}", res.raw);
    }
    app.set_mark("BTCUSDT", "400").await;
    let res = submit(&app, &token, &key(), order(json!("0.01"), json!({}))).await;
    assert_eq!((res.status, res.code()), (422, "notional_below_minimum"));
    app.set_mark("BTCUSDT", "65000").await;
    let acct = account(&app, &token).await;
    assert_eq!(acct.body["positions"], json!([]), "no refused order reached the exchange");
}

#[tokio::test]
async fn margin_beyond_the_balance_is_refused() {
    let app = spawn_app_with(&[("PAPER_START_BALANCE", "100".into())]).await;
    app.set_mark("BTCUSDT", "65000").await;
    let token = access_token(&app).await;
    let mut config = bot_config();
    config["leverage"] = json!(1);
    start(&app, &token, config).await;
    let res = submit(&app, &token, &key(), market_buy("0.01")).await;
    assert_eq!((res.status, res.code()), (422, "insufficient_margin"));
}

#[tokio::test]
async fn numbers_are_accepted_on_input_and_decimals_come_back_as_strings() {
    let app = paper_app().await;
    let token = access_token(&app).await;
    let res = start(&app, &token, json!({"symbol": "BTCUSDT", "leverage": 10, "stop_loss_pct": 2.5, "max_position_notional": 20000})).await;
    assert_eq!(res.status, 200, "{}", res.raw);
    assert_eq!(res.body["config"]["stop_loss_pct"], "2.5");
    let res = submit(&app, &token, &key(), json!({"symbol": "BTCUSDT", "side": "buy", "type": "market", "size": 0.003})).await;
    assert_eq!(res.status, 201, "{}", res.raw);
    assert_eq!(res.body["size"], "0.003");
}

#[tokio::test]
async fn replaying_an_idempotency_key_returns_the_first_answer_and_sends_nothing() {
    let app = paper_app().await;
    let token = access_token(&app).await;
    start(&app, &token, bot_config()).await;
    let k = key();
    let order = market_buy("0.01");
    let first = submit(&app, &token, &k, order.clone()).await;
    let again = submit(&app, &token, &k, order).await;
    assert_eq!((first.status, again.status), (201, 201));
    assert_eq!(first.body, again.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let acct = account(&app, &token).await;
    assert_eq!(dv(&acct.body["positions"][0]["size"]), d("0.01"), "one order, not two");

    let res = submit(&app, &token, &k, market_buy("0.02")).await;
    assert_eq!((res.status, res.code()), (422, "idempotency_key_reused"));
    let res = app.call_as(t::submit_order, &token, "POST", "/api/v1/order/submit", Some(market_buy("0.01"))).await;
    assert_eq!((res.status, res.code()), (400, "idempotency_key_required"));
}

/// Each order's answer is written in its paper fill's own transaction (a market order) or with
/// the order put to rest (a limit one): the key is complete the moment the order is, over three
/// cycles of order, replay and the fill of what rested.
#[tokio::test]
async fn each_keys_answer_is_written_with_its_paper_order_cycle_after_cycle() {
    let app = paper_app().await;
    let token = access_token(&app).await;
    let user_id = common::mfa::claims(&token)["sub"].as_str().unwrap().to_owned();
    start(&app, &token, bot_config()).await;
    let store = app.state.trading_store();
    for cycle in 1..=3 {
        let (market_key, limit_key) = (key(), key());
        let market = submit(&app, &token, &market_key, market_buy("0.01")).await;
        assert_eq!((market.status, market.body["status"].as_str()), (201, Some("filled")), "cycle {cycle}: {}", market.raw);
        let resting = submit(&app, &token, &limit_key, limit_buy("0.01", "64500")).await;
        assert_eq!((resting.status, resting.body["status"].as_str()), (201, Some("open")), "cycle {cycle}: {}", resting.raw);
        for (k, first) in [(&market_key, &market), (&limit_key, &resting)] {
            let record = store.idempotency_record(&user_id, k).await.unwrap().expect("the key's record");
            assert!(record.completed, "cycle {cycle}: the answer went in with the order");
            let stored: Value = serde_json::from_str(record.body.as_deref().expect("a body")).unwrap();
            assert_eq!((record.status, &stored), (Some(201), &first.body), "cycle {cycle}");
        }
        // The resting order fills when the mark crosses it (within the stop); its key still
        // answers what it said.
        app.set_mark("BTCUSDT", "64400").await;
        sweep_now(&app).await;
        let again = submit(&app, &token, &limit_key, limit_buy("0.01", "64500")).await;
        assert_eq!((again.status, again.header("idempotent-replayed")), (201, Some("true")), "cycle {cycle}");
        assert_eq!(again.body, resting.body, "cycle {cycle}");
        let again = submit(&app, &token, &market_key, market_buy("0.01")).await;
        assert_eq!((again.status, &again.body), (201, &market.body), "cycle {cycle}");
        app.set_mark("BTCUSDT", "65000").await;
    }
    let acct = account(&app, &token).await;
    assert_eq!(dv(&acct.body["positions"][0]["size"]), d("0.06"), "three market and three limit orders, each once");
}

#[tokio::test]
async fn twenty_concurrent_submits_with_one_key_make_one_order() {
    let app = paper_app().await;
    let token = access_token(&app).await;
    start(&app, &token, bot_config()).await;
    let k = key();
    let order = market_buy("0.01");
    let answers = join_all((0..20).map(|_| submit(&app, &token, &k, order.clone()))).await;
    assert!(answers.iter().all(|r| r.status == 201), "{:?}", answers.iter().map(|r| r.raw.clone()).collect::<Vec<_>>());
    assert!(answers.iter().all(|r| r.body == answers[0].body));
    let acct = account(&app, &token).await;
    assert_eq!(dv(&acct.body["positions"][0]["size"]), d("0.01"));
}

#[tokio::test]
async fn two_users_never_see_or_touch_each_others_bot_positions_or_orders() {
    let app = paper_app().await;
    let alice = access_token(&app).await;
    let bob = access_token(&app).await;
    start(&app, &alice, bot_config()).await;
    let k = key();
    let order = market_buy("0.01");
    assert_eq!(submit(&app, &alice, &k, order.clone()).await.status, 201);

    let st = status(&app, &bob).await;
    assert_eq!((st.body["state"].clone(), st.body["positions"].clone()), (json!("stopped"), json!([])));
    assert_eq!(account(&app, &bob).await.body["positions"], json!([]));
    // Bob's stop closes nothing of Alice's; the same idempotency key is Bob's own.
    assert_eq!(stop(&app, &bob).await.body["closed_positions"], json!([]));
    assert_eq!(submit(&app, &bob, &k, order).await.code(), "bot_not_running");
    assert_eq!(status(&app, &alice).await.body["state"], "running");
    assert_eq!(account(&app, &alice).await.body["positions"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn the_kill_switch_halts_starts_and_new_risk_but_not_closing() {
    let app = paper_app().await;
    let token = access_token(&app).await;
    start(&app, &token, bot_config()).await;
    assert_eq!(submit(&app, &token, &key(), market_buy("0.02")).await.status, 201);
    app.trading().set_kill_switch(true, "test", "test").await.unwrap();

    let res = submit(&app, &token, &key(), market_buy("0.01")).await;
    assert_eq!((res.status, res.code()), (503, "trading_halted"));
    let res =
        submit(&app, &token, &key(), json!({"symbol": "BTCUSDT", "side": "sell", "type": "market", "size": "0.01", "reduce_only": true}))
            .await;
    assert_eq!(res.status, 201, "reduce-only still closes: {}", res.raw);
    assert_eq!(stop(&app, &token).await.status, 200);
    let res = start(&app, &token, bot_config()).await;
    assert_eq!((res.status, res.code()), (503, "trading_halted"));
    app.trading().set_kill_switch(false, "test", "test").await.unwrap();
    assert_eq!(start(&app, &token, bot_config()).await.status, 200);
}

#[tokio::test]
async fn a_stop_racing_submits_never_leaves_a_position_behind_a_stopped_bot() {
    let app = paper_app().await;
    for _ in 0..3 {
        let token = access_token(&app).await;
        start(&app, &token, bot_config()).await;
        assert_eq!(submit(&app, &token, &key(), market_buy("0.01")).await.status, 201);
        let keys: Vec<String> = (0..6).map(|_| key()).collect();
        let submits = join_all(keys.iter().map(|k| submit(&app, &token, k, market_buy("0.01"))));
        let (answers, stopped) = tokio::join!(submits, stop(&app, &token));
        assert_eq!(stopped.status, 200, "{}", stopped.raw);
        assert!(
            answers.iter().all(|r| r.status == 201 || r.code() == "bot_not_running"),
            "{:?}",
            answers.iter().map(|r| r.raw.clone()).collect::<Vec<_>>()
        );
        let st = status(&app, &token).await;
        assert_eq!(st.body["state"], "stopped");
        assert_eq!(st.body["positions"], json!([]), "a stopped bot with an open position");
    }
}

#[tokio::test]
async fn trading_routes_refuse_missing_and_globally_revoked_tokens() {
    let app = paper_app().await;
    let res = app.call(t::status, request("GET", "/api/v1/bot/status", None)).await;
    assert_eq!((res.status, res.code()), (401, "invalid_token"));
    let token = access_token(&app).await;
    let claims: Value = {
        use base64::Engine;
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap()
    };
    let store = shared::auth::store::UserStore { client: app.dynamo(), table: &app.state.config.table_name };
    store.revoke_all_sessions(claims["sub"].as_str().unwrap(), chrono::Utc::now().timestamp_millis() + 1).await.unwrap();
    let res = status(&app, &token).await;
    assert_eq!((res.status, res.code()), (401, "invalid_token"));
}

// ---------------------------------------------------------------- Bitget (live) against the fake

async fn live_app(fake: &FakeBitget) -> TestApp {
    let app = spawn_app_with(&[("BITGET_BASE_URL", fake.url.clone())]).await;
    app.set_mark("BTCUSDT", "65000").await;
    app
}

async fn save_keys(app: &TestApp, token: &str, key: &str, secret: &str, demo: bool) -> TestResponse {
    let body = json!({"exchange": "bitget", "api_key": key, "api_secret": secret, "passphrase": PASSPHRASE, "demo": demo});
    app.call_as(t::put_credentials, token, "PUT", "/api/v1/exchange/credentials", Some(body)).await
}

/// A user of a fresh app whose live Bitget keys (on `fake`) are saved; their bot started when asked.
async fn live_trader(fake: &FakeBitget, start_bot: bool) -> (TestApp, String) {
    let app = live_app(fake).await;
    let token = access_token(&app).await;
    let saved = save_keys(&app, &token, KEY, SECRET, false).await;
    assert_eq!(saved.status, 204, "{}", saved.raw);
    if start_bot {
        let started = start(&app, &token, bot_config()).await;
        assert_eq!(started.status, 200, "{}", started.raw);
    }
    (app, token)
}

fn market_buy(size: &str) -> Value {
    json!({"symbol": "BTCUSDT", "side": "buy", "type": "market", "size": size})
}

#[tokio::test]
async fn credentials_are_checked_then_stored_encrypted_and_never_returned() {
    let fake = FakeBitget::start().await;
    let app = live_app(&fake).await;
    let token = access_token(&app).await;
    let res = save_keys(&app, &token, KEY, "wrong-secret", false).await;
    assert_eq!((res.status, res.code()), (422, "invalid_exchange_credentials"));
    let res = save_keys(&app, &token, KEY, SECRET, false).await;
    assert_eq!(res.status, 204, "{}", res.raw);
    assert!(res.raw.is_empty());

    let scan = app.dynamo().scan().table_name(&app.state.config.table_name).send().await.unwrap();
    let dump = format!("{:?}", scan.items());
    assert!(!dump.contains(SECRET) && !dump.contains(PASSPHRASE) && !dump.contains(KEY), "a credential is stored in the clear");

    let acct = account(&app, &token).await;
    assert_eq!((acct.status, acct.body["exchange"].as_str()), (200, Some("bitget")), "{}", acct.raw);
    assert!(!acct.raw.contains(SECRET));
    assert_eq!(app.call_as(t::delete_credentials, &token, "DELETE", "/api/v1/exchange/credentials", None).await.status, 204);
    assert_eq!(account(&app, &token).await.body["exchange"], "paper");
}

#[tokio::test]
async fn a_live_order_is_signed_placed_once_and_reported() {
    let fake = FakeBitget::start().await;
    let (app, token) = live_trader(&fake, true).await;
    let res = submit(&app, &token, &key(), market_buy("0.01")).await;
    assert_eq!(res.status, 201, "{}", res.raw);
    assert_eq!(res.body["status"], "filled");
    assert_eq!(fake.order_count(), 1);
    assert_eq!(fake.position("BTCUSDT", "long"), d("0.01"));
    assert_eq!(fake.rejected_signatures(), 0, "every call's signature checked out");
}

#[tokio::test]
async fn demo_keys_are_sent_with_the_paptrading_header() {
    let fake = FakeBitget::start().await;
    let app = live_app(&fake).await;
    let token = access_token(&app).await;
    assert_eq!(save_keys(&app, &token, DEMO_KEY, SECRET, true).await.status, 204);
    assert_eq!(start(&app, &token, bot_config()).await.status, 200);
    let res = submit(&app, &token, &key(), market_buy("0.01")).await;
    assert_eq!(res.status, 201, "{}", res.raw);
    assert_eq!(fake.rejected_signatures(), 0);
    assert_eq!(save_keys(&app, &token, DEMO_KEY, SECRET, false).await.code(), "bot_running", "keys stay while the bot runs");
    assert_eq!(stop(&app, &token).await.status, 200);
    // Without the demo flag the demo key is refused, as Bitget refuses it.
    assert_eq!(save_keys(&app, &token, DEMO_KEY, SECRET, false).await.code(), "invalid_exchange_credentials");
}

#[tokio::test]
async fn accept_then_timeout_makes_exactly_one_order() {
    let fake = FakeBitget::start().await;
    let (app, token) = live_trader(&fake, true).await;
    fake.fault("/api/v2/mix/order/place-order", Fault::AcceptThenTimeout);
    let res = submit(&app, &token, &key(), market_buy("0.01")).await;
    assert_eq!(res.status, 201, "the lookup by clientOid found the order: {}", res.raw);
    assert_eq!(fake.order_count(), 1);
    assert_eq!(fake.calls("/api/v2/mix/order/place-order"), 1, "never resent blind");
}

#[tokio::test]
async fn an_accepted_order_whose_lookup_bitget_refuses_is_never_sent_again() {
    let fake = FakeBitget::start().await;
    let (app, token) = live_trader(&fake, true).await;
    fake.fault("/api/v2/mix/order/place-order", Fault::AcceptThenTimeout);
    // Only "the order does not exist" (40109) proves it was never placed; a refusal proves nothing.
    fake.fault("/api/v2/mix/order/detail", Fault::Code("45001"));
    let res = submit(&app, &token, &key(), market_buy("0.01")).await;
    assert_ne!(res.status, 201, "{}", res.raw);
    assert_eq!((fake.order_count(), fake.calls("/api/v2/mix/order/place-order")), (1, 1), "never resent blind");
}

#[tokio::test]
async fn a_timeout_before_accepting_is_looked_up_then_sent_once_more() {
    let fake = FakeBitget::start().await;
    let (app, token) = live_trader(&fake, true).await;
    fake.fault("/api/v2/mix/order/place-order", Fault::Timeout);
    let res = submit(&app, &token, &key(), market_buy("0.01")).await;
    assert_eq!(res.status, 201, "{}", res.raw);
    assert_eq!(fake.order_count(), 1);
    assert!(fake.calls("/api/v2/mix/order/detail") >= 1, "looked up before resending");
}

#[tokio::test]
async fn exchange_errors_map_to_clear_answers() {
    let fake = FakeBitget::start().await;
    let (app, token) = live_trader(&fake, true).await;
    for (code, expected) in [("40774", "position_mode_mismatch"), ("43012", "insufficient_margin")] {
        fake.fault("/api/v2/mix/order/place-order", Fault::Code(code));
        let res = submit(&app, &token, &key(), market_buy("0.01")).await;
        assert_eq!((res.status, res.code()), (422, expected), "{}", res.raw);
    }
    assert_eq!(fake.order_count(), 0);
}

#[tokio::test]
async fn reads_retry_through_429_and_server_errors() {
    let fake = FakeBitget::start().await;
    let (app, token) = live_trader(&fake, false).await;
    fake.fault("/api/v2/mix/position/all-position", Fault::TooManyRequests);
    fake.fault("/api/v2/mix/position/all-position", Fault::ServerError);
    let res = account(&app, &token).await;
    assert_eq!(res.status, 200, "{}", res.raw);
    assert_eq!(fake.calls("/api/v2/mix/position/all-position"), 3);
}

#[tokio::test]
async fn exchange_wide_failures_open_the_breaker_and_nobody_hammers_the_exchange() {
    let fake = FakeBitget::start().await;
    let (app, token) = live_trader(&fake, false).await;
    for _ in 0..12 {
        fake.fault("/api/v2/mix/market/tickers", Fault::ServerError);
    }
    // Public market data failing: the exchange itself is in trouble.
    assert!(app.state.bitget.mark_prices().await.is_err());
    assert!(app.state.bitget.mark_prices().await.is_err());
    let calls = fake.calls("/api/v2/mix/market/tickers");
    assert!(calls <= 6, "{calls}");
    assert!(app.state.bitget.mark_prices().await.is_err());
    assert_eq!(fake.calls("/api/v2/mix/market/tickers"), calls, "an open breaker does not call the exchange");
    let private_calls = fake.calls("/api/v2/mix/account/accounts");
    let res = account(&app, &token).await;
    assert_eq!((res.status, res.code()), (502, "exchange_unavailable"));
    assert_eq!(fake.calls("/api/v2/mix/account/accounts"), private_calls);
}

#[tokio::test]
async fn one_users_failing_calls_never_block_another_users_close() {
    let fake = FakeBitget::start().await;
    let app = live_app(&fake).await;
    let (failing, closing) = (access_token(&app).await, access_token(&app).await);
    for token in [&failing, &closing] {
        assert_eq!(save_keys(&app, token, KEY, SECRET, false).await.status, 204);
    }
    assert_eq!(start(&app, &closing, bot_config()).await.status, 200);
    assert_eq!(submit(&app, &closing, &key(), market_buy("0.01")).await.status, 201);
    // The first user's account answers 5xx to everything it asks, many times over.
    for _ in 0..12 {
        fake.fault("/api/v2/mix/account/accounts", Fault::ServerError);
    }
    for _ in 0..4 {
        assert_eq!(account(&app, &failing).await.status, 502);
    }
    let res = stop(&app, &closing).await;
    assert_eq!(res.status, 200, "the other user's stop still closes: {}", res.raw);
    assert_eq!(fake.position("BTCUSDT", "long"), Decimal::ZERO);
}

#[tokio::test]
async fn stop_flattens_a_live_hedge_mode_account_with_close_orders() {
    let fake = FakeBitget::start().await;
    fake.set_pos_mode("hedge_mode");
    let (app, token) = live_trader(&fake, true).await;
    let res = submit(&app, &token, &key(), market_buy("0.02")).await;
    assert_eq!(res.status, 201, "{}", res.raw);
    fake.set_mark("BTCUSDT", "66000");
    let res = stop(&app, &token).await;
    assert_eq!(res.status, 200, "{}", res.raw);
    assert_eq!(dv(&res.body["closed_positions"][0]["size"]), d("0.02"));
    assert_eq!(fake.position("BTCUSDT", "long"), Decimal::ZERO);
    let st = status(&app, &token).await;
    assert_eq!(st.body["state"], "stopped", "{}", st.raw);
}

#[tokio::test]
async fn a_failed_close_answers_502_and_leaves_the_bot_stopping() {
    let fake = FakeBitget::start().await;
    let (app, token) = live_trader(&fake, true).await;
    submit(&app, &token, &key(), market_buy("0.01")).await;
    fake.fault("/api/v2/mix/order/place-order", Fault::Code("45110"));
    let res = stop(&app, &token).await;
    assert_eq!((res.status, res.code()), (502, "close_failed"), "{}", res.raw);
    let st = status(&app, &token).await;
    assert_eq!((st.body["state"].clone(), st.body["is_running"].clone()), (json!("stopping"), json!(false)));
    // A second stop finishes the job.
    let res = stop(&app, &token).await;
    assert_eq!(res.status, 200, "{}", res.raw);
    assert_eq!(fake.position("BTCUSDT", "long"), Decimal::ZERO);
}

#[tokio::test]
async fn a_refusal_that_mentions_client_oid_is_a_refusal_not_a_placed_order() {
    let fake = FakeBitget::start().await;
    let (app, token) = live_trader(&fake, true).await;
    // Any code other than Bitget's duplicate-clientOid code is a refusal, whatever its text says.
    fake.fault("/api/v2/mix/order/place-order", Fault::Refuse("40017", "Parameter clientOid format error"));
    let res = submit(&app, &token, &key(), market_buy("0.01")).await;
    assert_eq!((res.status, res.code()), (422, "exchange_rejected"), "{}", res.raw);
    assert_eq!(fake.order_count(), 0);
}

#[tokio::test]
async fn bitgets_duplicate_client_oid_code_reads_back_the_order_already_placed() {
    let fake = FakeBitget::start().await;
    let (app, token) = live_trader(&fake, true).await;
    // The first attempt was placed, but its answer was lost and the outcome looked unknown: the
    // resend meets 40786, and the order that exists is read back instead of reported missing.
    fake.fault("/api/v2/mix/order/place-order", Fault::AcceptThenTimeout);
    fake.fault("/api/v2/mix/order/detail", Fault::Code("40109"));
    let res = submit(&app, &token, &key(), market_buy("0.01")).await;
    assert_eq!(res.status, 201, "{}", res.raw);
    assert_eq!(res.body["status"], "filled", "{}", res.raw);
    assert_eq!(fake.order_count(), 1, "one order, never two");
    assert_eq!(fake.calls("/api/v2/mix/order/place-order"), 2, "the resend met the duplicate code");
}

#[tokio::test]
async fn starting_a_live_bot_sets_its_leverage_and_margin_mode_on_the_exchange() {
    let fake = FakeBitget::start().await;
    let (app, token) = live_trader(&fake, false).await;
    let mut config = bot_config();
    config["leverage"] = json!(3);
    let res = start(&app, &token, config.clone()).await;
    assert_eq!(res.status, 200, "{}", res.raw);
    assert_eq!((fake.leverage("BTCUSDT"), fake.margin_mode("BTCUSDT").as_str()), (3, "isolated"), "isolated by default");
    assert_eq!(res.body["config"]["margin_mode"], "isolated");
    // Orders then carry the bot's margin mode.
    let order = submit(&app, &token, &key(), market_buy("0.01")).await;
    assert_eq!(order.status, 201, "{}", order.raw);
    assert_eq!(fake.order(order.body["client_order_id"].as_str().unwrap()).unwrap().margin_mode, "isolated");
}

#[tokio::test]
async fn the_exchange_refusing_the_leverage_or_not_answering_keeps_the_bot_stopped() {
    let fake = FakeBitget::start().await;
    let (app, token) = live_trader(&fake, false).await;
    fake.fault("/api/v2/mix/account/set-leverage", Fault::Code("40797"));
    let res = start(&app, &token, bot_config()).await;
    assert_eq!((res.status, res.code()), (422, "leverage_refused"), "{}", res.raw);
    fake.fault("/api/v2/mix/account/set-margin-mode", Fault::ServerError);
    let res = start(&app, &token, bot_config()).await;
    assert_eq!((res.status, res.code()), (502, "exchange_unavailable"), "{}", res.raw);
    assert_eq!(status(&app, &token).await.body["state"], "stopped");
    let res = start(&app, &token, bot_config()).await;
    assert_eq!(res.status, 200, "once the exchange takes the settings, the bot starts: {}", res.raw);
}

#[tokio::test]
async fn margin_is_judged_on_what_bitget_lets_the_account_open_with() {
    let fake = FakeBitget::start().await;
    // 1 BTC long from 50,000 marked at 65,000: 15,000 unrealised profit. At 10x the wallet's free
    // balance is 5,000 (10,000 − 5,000 margin), but Bitget lets the account open with 20,000.
    fake.set_position("BTCUSDT", "long", "1", "50000");
    let (app, token) = live_trader(&fake, false).await;
    let mut config = bot_config();
    config["max_position_notional"] = json!("200000");
    config["margin_mode"] = json!("crossed");
    assert_eq!(start(&app, &token, config).await.status, 200);
    // 1.5 BTC at 10x needs 9,750 of margin: more than the free balance, less than Bitget allows.
    let res = submit(&app, &token, &key(), market_buy("1.5")).await;
    assert_eq!(res.status, 201, "{}", res.raw);
}

#[tokio::test]
async fn a_live_stop_flattens_the_bots_symbol_and_leaves_the_users_other_positions_alone() {
    let fake = FakeBitget::start().await;
    fake.set_position("ETHUSDT", "long", "1", "3200"); // the user's own, opened by hand
    let (app, token) = live_trader(&fake, true).await;
    assert_eq!(submit(&app, &token, &key(), market_buy("0.01")).await.status, 201);
    let res = stop(&app, &token).await;
    assert_eq!(res.status, 200, "{}", res.raw);
    assert_eq!(res.body["closed_positions"].as_array().map(Vec::len), Some(1), "{}", res.raw);
    assert_eq!(fake.position("BTCUSDT", "long"), Decimal::ZERO);
    assert_eq!(fake.position("ETHUSDT", "long"), d("1"), "the manual ETH position is not the bot's");
    assert_eq!(status(&app, &token).await.body["state"], "stopped");
    let acct = account(&app, &token).await;
    assert!(acct.body["positions"].as_array().unwrap().iter().any(|p| p["symbol"] == "ETHUSDT"), "{}", acct.raw);
}

#[tokio::test]
async fn the_kill_switch_is_a_condition_of_the_transaction_that_records_an_order() {
    let fake = FakeBitget::start().await;
    let (app, token) = live_trader(&fake, true).await;
    let me = app.call_as(shared::handlers::auth::me, &token, "GET", "/api/v1/users/me", None).await;
    let user = me.body["id"].as_str().unwrap().to_owned();
    // The switch flips after a submit read it as off: the recording transaction still sees it.
    app.trading().set_kill_switch(true, "test", "test").await.unwrap();
    let intent = |id: &str, reduce_only: bool| shared::trading::model::OrderIntent {
        symbol: "BTCUSDT".into(),
        side: shared::trading::model::Side::Buy,
        order_type: shared::trading::model::OrderType::Market,
        size: d("0.01"),
        price: None,
        reduce_only,
        client_order_id: id.into(),
        leverage: 10,
        reason: None,
    };
    let record = |id: &str| shared::trading::idempotency::new_record("fp".into(), id.into());
    let bot = app.trading().bot(&user).await.unwrap().unwrap();
    let opening = app.trading().record_order(&user, "k-open", &record("c-open"), &intent("c-open", false), &bot).await.unwrap();
    assert_eq!(opening, shared::trading::store::RecordOutcome::TradingHalted);
    // Closing exposure stays possible while trading is halted.
    let closing = app.trading().record_order(&user, "k-close", &record("c-close"), &intent("c-close", true), &bot).await.unwrap();
    assert_eq!(closing, shared::trading::store::RecordOutcome::Recorded);
}

/// Submits `order` under `key`; Bitget never answers, so the order is recorded, not placed, and
/// the key stays in progress; then the request is made as old as a dead one. The caller's id.
async fn order_left_in_flight(app: &TestApp, fake: &FakeBitget, token: &str, key: &str, order: Value) -> String {
    let placed_before = fake.order_count();
    fake.fault("/api/v2/mix/order/place-order", Fault::Timeout);
    fake.fault("/api/v2/mix/order/place-order", Fault::Timeout);
    let first = submit(app, token, key, order).await;
    assert_eq!(first.status, 502, "{}", first.raw);
    assert_eq!(fake.order_count(), placed_before, "nothing was placed");
    let user = user_id_of(app, token).await;
    let stale = chrono::Utc::now().timestamp_millis() - shared::trading::idempotency::STALE_AFTER_MS - 1_000;
    app.dynamo()
        .update_item()
        .table_name(&app.state.config.table_name)
        .set_key(Some(shared::keys::idempotency(&user, key)))
        .update_expression("SET created_ms = :t")
        .expression_attribute_values(":t", aws_sdk_dynamodb::types::AttributeValue::N(stale.to_string()))
        .send()
        .await
        .unwrap();
    // And its order older than any request that could still be sending it.
    let pending = app.trading().pending_orders(&user).await.unwrap();
    let minute_ago = (chrono::Utc::now() - chrono::Duration::seconds(60)).to_rfc3339();
    for order in pending {
        app.dynamo()
            .update_item()
            .table_name(&app.state.config.table_name)
            .set_key(Some(shared::keys::order(&user, &order.intent.client_order_id)))
            .update_expression("SET created_at = :old")
            .expression_attribute_values(":old", aws_sdk_dynamodb::types::AttributeValue::S(minute_ago.clone()))
            .send()
            .await
            .unwrap();
    }
    user
}

#[tokio::test]
async fn a_resumed_idempotency_key_is_held_to_the_kill_switch_before_anything_is_sent() {
    let fake = FakeBitget::start().await;
    let (app, token) = live_trader(&fake, true).await;
    let key = key();
    order_left_in_flight(&app, &fake, &token, &key, market_buy("0.01")).await;
    // Later: the operator has halted trading.
    app.trading().set_kill_switch(true, "test", "test").await.unwrap();
    let retry = submit(&app, &token, &key, market_buy("0.01")).await;
    assert_eq!((retry.status, retry.code()), (503, "trading_halted"), "{}", retry.raw);
    assert_eq!(fake.order_count(), 0, "a halted retry sends nothing");
    // A halt is lifted: it is not the key's answer, and once lifted the same retry goes.
    let again = submit(&app, &token, &key, market_buy("0.01")).await;
    assert_eq!((again.status, again.code(), again.header("idempotent-replayed")), (503, "trading_halted", None));
    app.trading().set_kill_switch(false, "test", "test").await.unwrap();
    let lifted = submit(&app, &token, &key, market_buy("0.01")).await;
    assert_eq!((lifted.status, lifted.body["status"].as_str()), (201, Some("filled")), "{}", lifted.raw);
    assert_eq!(fake.order_count(), 1);
}

#[tokio::test]
async fn decimals_sent_as_json_numbers_are_read_exactly_from_their_text() {
    let app = paper_app().await;
    let token = access_token(&app).await;
    // Raw JSON: the number's text is what counts, not the nearest binary float.
    let started = app
        .call(
            t::start_bot,
            with_bearer(
                request_raw(
                    "/api/v1/bot/start",
                    r#"{"symbol": "BTCUSDT", "leverage": 10, "stop_loss_pct": 2.00000000000000000001, "max_position_notional": 20000}"#,
                ),
                &token,
            ),
        )
        .await;
    assert_eq!(started.status, 200, "{}", started.raw);
    assert_eq!(started.body["config"]["stop_loss_pct"], "2.00000000000000000001");
    // 0.00100000000000000001 is not on BTCUSDT's 0.001 step; as a float it would be 0.001.
    let mut req = with_bearer(
        request_raw("/api/v1/order/submit", r#"{"symbol": "BTCUSDT", "side": "buy", "type": "market", "size": 0.00100000000000000001}"#),
        &token,
    );
    req.headers_mut().insert("idempotency-key", key().parse().unwrap());
    let res = app.call(t::submit_order, req).await;
    assert_eq!((res.status, res.code()), (422, "invalid_size_step"), "{}", res.raw);
    // More digits than a decimal holds are refused, never rounded.
    let res = app
        .call(
            t::start_bot,
            with_bearer(
                request_raw(
                    "/api/v1/bot/start",
                    r#"{"symbol": "BTCUSDT", "leverage": 10, "stop_loss_pct": 1.000000000000000000000000000001, "max_position_notional": 20000}"#,
                ),
                &token,
            ),
        )
        .await;
    assert_eq!((res.status, res.code()), (400, "invalid_request"), "{}", res.raw);
}

fn limit_buy(size: &str, price: &str) -> Value {
    json!({"symbol": "BTCUSDT", "side": "buy", "type": "limit", "size": size, "price": price})
}

#[tokio::test]
async fn a_live_stop_cancels_the_resting_orders_before_it_reports_stopped() {
    let fake = FakeBitget::start().await;
    let (app, token) = live_trader(&fake, true).await;
    let resting = submit(&app, &token, &key(), limit_buy("0.01", "62000")).await;
    assert_eq!((resting.status, resting.body["status"].as_str()), (201, Some("open")), "{}", resting.raw);
    let res = stop(&app, &token).await;
    assert_eq!(res.status, 200, "{}", res.raw);
    assert_eq!(res.body["canceled_orders"], json!([resting.body["order_id"]]), "{}", res.raw);
    assert_eq!(fake.order(resting.body["client_order_id"].as_str().unwrap()).unwrap().state, "canceled");
    // An hour later the price comes down through it: nothing fills behind the stopped bot.
    fake.set_mark("BTCUSDT", "61000");
    assert_eq!(fake.position("BTCUSDT", "long"), Decimal::ZERO);
    assert_eq!(status(&app, &token).await.body["state"], "stopped");
}

#[tokio::test]
async fn a_paper_stop_cancels_the_resting_orders() {
    let app = paper_app().await;
    let token = access_token(&app).await;
    assert_eq!(start(&app, &token, bot_config()).await.status, 200);
    let resting = submit(&app, &token, &key(), limit_buy("0.01", "62000")).await;
    assert_eq!((resting.status, resting.body["status"].as_str()), (201, Some("open")), "{}", resting.raw);
    let res = stop(&app, &token).await;
    assert_eq!(res.status, 200, "{}", res.raw);
    assert_eq!(res.body["canceled_orders"], json!([resting.body["order_id"]]), "{}", res.raw);
    // A second stop finds nothing left to cancel.
    assert_eq!(stop(&app, &token).await.body["canceled_orders"], json!([]));
}

#[tokio::test]
async fn a_pending_order_behind_a_long_order_history_is_still_found() {
    let app = paper_app().await;
    let user = uuid::Uuid::new_v4().to_string();
    let order = |id: &str, status: shared::trading::model::OrderStatus| shared::trading::store::OrderRecord {
        user_id: user.clone(),
        intent: shared::trading::model::OrderIntent {
            symbol: "BTCUSDT".into(),
            side: shared::trading::model::Side::Buy,
            order_type: shared::trading::model::OrderType::Market,
            size: d("0.01"),
            price: None,
            reduce_only: false,
            client_order_id: id.into(),
            leverage: 10,
            reason: None,
        },
        status,
        fill: None,
        // Over 1 KB an order: the history is larger than one DynamoDB page (1 MB) can hold.
        reason: Some("x".repeat(1200)),
        created_at: "2026-11-25T00:00:00.000Z".into(),
        updated_at: "2026-11-25T00:00:00.000Z".into(),
        sent_at_ms: None,
    };
    let item = |record: &shared::trading::store::OrderRecord| {
        shared::keys::with_key(serde_dynamo::to_item(record).unwrap(), shared::keys::order(&user, &record.intent.client_order_id))
    };
    // Four pages of filled orders, then one still pending, last in key order.
    let mut items: Vec<_> = (0..4 * shared::trading::store::ORDER_HISTORY_PAGE)
        .map(|i| item(&order(&format!("a{i:05}"), shared::trading::model::OrderStatus::Filled)))
        .collect();
    items.push(item(&order("zz-pending", shared::trading::model::OrderStatus::Pending)));
    ops::devstack::put_items(app.dynamo(), &app.state.config.table_name, items).await.unwrap();
    let pending = app.trading().pending_orders(&user).await.unwrap();
    assert_eq!(pending.iter().map(|o| o.intent.client_order_id.as_str()).collect::<Vec<_>>(), vec!["zz-pending"]);
}

#[tokio::test]
async fn a_stop_never_reports_stopped_while_a_recorded_order_may_still_be_sent() {
    let fake = FakeBitget::start().await;
    let (app, token) = live_trader(&fake, true).await;
    // Recorded, then no answer from Bitget: from the stop's side it is not at the exchange (yet).
    fake.fault("/api/v2/mix/order/place-order", Fault::Timeout);
    fake.fault("/api/v2/mix/order/place-order", Fault::Timeout);
    assert_eq!(submit(&app, &token, &key(), market_buy("0.01")).await.status, 502);
    let res = stop(&app, &token).await;
    assert_eq!((res.status, res.code()), (502, "close_failed"), "{}", res.raw);
    assert_eq!(status(&app, &token).await.body["state"], "stopping");
    let res = stop(&app, &token).await;
    assert_eq!((res.status, res.code()), (409, "bot_stopping"), "a repeat while the outcome is unknown: {}", res.raw);
    // Past the window in which any request could still send it, it was never placed.
    let me = app.call_as(shared::handlers::auth::me, &token, "GET", "/api/v1/users/me", None).await;
    let user = me.body["id"].as_str().unwrap().to_owned();
    let pending = app.trading().pending_orders(&user).await.unwrap();
    assert_eq!(pending.len(), 1);
    let old = (chrono::Utc::now() - chrono::Duration::seconds(60)).to_rfc3339();
    app.dynamo()
        .update_item()
        .table_name(&app.state.config.table_name)
        .set_key(Some(shared::keys::order(&user, &pending[0].intent.client_order_id)))
        .update_expression("SET created_at = :old")
        .expression_attribute_values(":old", aws_sdk_dynamodb::types::AttributeValue::S(old))
        .send()
        .await
        .unwrap();
    let res = stop(&app, &token).await;
    assert_eq!(res.status, 200, "{}", res.raw);
    assert!(app.trading().pending_orders(&user).await.unwrap().is_empty());
}

fn closed_sizes(res: &TestResponse) -> Vec<Decimal> {
    res.body["closed_positions"]
        .as_array()
        .unwrap_or_else(|| panic!("no closed_positions: {}", res.raw))
        .iter()
        .map(|c| dv(&c["size"]))
        .collect()
}

#[tokio::test]
async fn a_retried_stop_reports_only_what_it_closed_itself() {
    let fake = FakeBitget::start().await;
    let (app, token) = live_trader(&fake, true).await;
    assert_eq!(submit(&app, &token, &key(), market_buy("0.02")).await.status, 201);
    // The first round fills half (a thin book); the second is refused: the stop fails midway.
    fake.fault("/api/v2/mix/order/place-order", Fault::FillPart("0.01"));
    fake.fault("/api/v2/mix/order/place-order", Fault::Code("45110"));
    let first = stop(&app, &token).await;
    assert_eq!((first.status, first.code()), (502, "close_failed"), "{}", first.raw);
    assert_eq!(fake.position("BTCUSDT", "long"), d("0.01"));
    let second = stop(&app, &token).await;
    assert_eq!(second.status, 200, "{}", second.raw);
    assert_eq!(closed_sizes(&second), vec![d("0.01")], "the first stop's fill is not reported again: {}", second.raw);
    assert_eq!(fake.position("BTCUSDT", "long"), Decimal::ZERO);
}

#[tokio::test]
async fn a_position_that_survives_every_round_of_a_stop_is_closed_by_the_next_stop() {
    let fake = FakeBitget::start().await;
    let (app, token) = live_trader(&fake, true).await;
    assert_eq!(submit(&app, &token, &key(), market_buy("0.05")).await.status, 201);
    for _ in 0..4 {
        fake.fault("/api/v2/mix/order/place-order", Fault::FillPart("0.01"));
    }
    let first = stop(&app, &token).await;
    assert_eq!((first.status, first.code()), (502, "close_failed"), "{}", first.raw);
    assert_eq!(fake.position("BTCUSDT", "long"), d("0.01"));
    // The same position instance is still open: the next stop's rounds are new ones, and close it.
    let second = stop(&app, &token).await;
    assert_eq!(second.status, 200, "{}", second.raw);
    assert_eq!(closed_sizes(&second), vec![d("0.01")], "{}", second.raw);
    assert_eq!(fake.position("BTCUSDT", "long"), Decimal::ZERO);
    assert_eq!(status(&app, &token).await.body["state"], "stopped");
}

#[tokio::test]
async fn a_resting_reduce_only_close_never_blocks_the_guardians_stop_loss() {
    let fake = FakeBitget::start().await;
    let (app, token) = live_trader(&fake, true).await;
    assert_eq!(submit(&app, &token, &key(), market_buy("0.02")).await.status, 201);
    // The trader's own take-profit for half the position rests on the book and locks that half.
    let take_profit = json!({"symbol": "BTCUSDT", "side": "sell", "type": "limit", "size": "0.01", "price": "67000", "reduce_only": true});
    let resting = submit(&app, &token, &key(), take_profit).await;
    assert_eq!((resting.status, resting.body["status"].as_str()), (201, Some("open")), "{}", resting.raw);
    // The price falls through the 2 % stop instead.
    fake.set_mark("BTCUSDT", "63000");
    app.set_mark("BTCUSDT", "63000").await;
    let report =
        shared::guardian::sweep(&app.state, std::time::Instant::now() + std::time::Duration::from_secs(60), &Default::default()).await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.closed.iter().map(|c| (c.reason.as_str(), c.size)).collect::<Vec<_>>(), vec![("stop_loss", d("0.02"))]);
    assert_eq!(fake.position("BTCUSDT", "long"), Decimal::ZERO, "the whole position is closed");
    assert_eq!(fake.order(resting.body["client_order_id"].as_str().unwrap()).unwrap().state, "canceled");
}

#[tokio::test]
async fn contract_specs_come_from_the_exchange_and_a_contract_in_maintenance_cannot_be_started() {
    let app = paper_app().await;
    let exchange = app.exchange.as_ref().expect("the app's Bitget double");
    exchange.set_symbol_status("ETHUSDT", "maintain");
    let token = access_token(&app).await;
    // SOLUSDT is no fixture of ours: the exchange's contract list makes it tradable.
    app.set_mark("SOLUSDT", "150").await;
    let sol = json!({"symbol": "SOLUSDT", "leverage": 5, "stop_loss_pct": "2", "max_position_notional": "1000"});
    let res = start(&app, &token, sol).await;
    assert_eq!(res.status, 200, "{}", res.raw);
    let buy = json!({"symbol": "SOLUSDT", "side": "buy", "type": "market", "size": "0.1"});
    assert_eq!(submit(&app, &token, &key(), buy).await.status, 201);
    assert_eq!(stop(&app, &token).await.status, 200);
    let eth = json!({"symbol": "ETHUSDT", "leverage": 5, "stop_loss_pct": "2", "max_position_notional": "1000"});
    let res = start(&app, &token, eth).await;
    assert_eq!((res.status, res.code()), (422, "symbol_not_tradable"), "{}", res.raw);
    assert_eq!(exchange.calls("/api/v2/mix/market/contracts"), 1, "one fetch serves the execution environment");
}

async fn sweep_now(app: &TestApp) -> shared::guardian::SweepReport {
    shared::guardian::sweep(&app.state, std::time::Instant::now() + std::time::Duration::from_secs(60), &Default::default()).await
}

#[tokio::test]
async fn resting_buys_count_toward_the_position_cap_on_paper_and_live() {
    let fake = FakeBitget::start().await;
    let paper = paper_app().await;
    let paper_token = access_token(&paper).await;
    assert_eq!(start(&paper, &paper_token, bot_config()).await.status, 200);
    let (live, live_token) = live_trader(&fake, true).await;
    for (app, token) in [(&paper, &paper_token), (&live, &live_token)] {
        // Each 0.05 BTC at 64,000 is 3,200 USDT, well under the 20,000 cap on its own.
        for n in 0..6 {
            let res = submit(app, token, &key(), limit_buy("0.05", "64000")).await;
            assert_eq!((res.status, res.body["status"].as_str()), (201, Some("open")), "order {n}: {}", res.raw);
        }
        let seventh = submit(app, token, &key(), limit_buy("0.05", "64000")).await;
        assert_eq!((seventh.status, seventh.code()), (422, "max_position_notional_exceeded"), "{}", seventh.raw);
    }
}

#[tokio::test]
async fn a_paper_limit_order_rests_until_the_mark_crosses_it_then_fills_at_its_price_as_a_maker() {
    let app = paper_app().await;
    let token = access_token(&app).await;
    assert_eq!(start(&app, &token, bot_config()).await.status, 200);
    for cycle in 0..3 {
        app.set_mark("BTCUSDT", "65000").await;
        let resting = submit(&app, &token, &key(), limit_buy("0.01", "64000")).await;
        assert_eq!((resting.status, resting.body["status"].as_str()), (201, Some("open")), "{}", resting.raw);
        app.set_mark("BTCUSDT", "64500").await;
        assert_eq!(sweep_now(&app).await.resting_filled, 0, "cycle {cycle}: not crossed yet");
        assert_eq!(status(&app, &token).await.body["positions"], json!([]));
        app.set_mark("BTCUSDT", "63900").await;
        let report = sweep_now(&app).await;
        assert_eq!(report.resting_filled, 1, "cycle {cycle}: {report:?}");
        let before = account(&app, &token).await;
        let positions = status(&app, &token).await.body["positions"].clone();
        assert_eq!((dv(&positions[0]["entry_price"]), dv(&positions[0]["size"])), (d("64000"), d("0.01")), "cycle {cycle}");
        // Filled once: the next run finds nothing resting.
        assert_eq!(sweep_now(&app).await.resting_filled, 0);
        let close = json!({"symbol": "BTCUSDT", "side": "sell", "type": "market", "size": "0.01", "reduce_only": true});
        assert_eq!(submit(&app, &token, &key(), close).await.status, 201);
        assert!(dv(&account(&app, &token).await.body["equity"]) < dv(&before.body["equity"]) + d("1"));
    }
    // The maker fee: 0.01 × 64,000 × 0.02 % = 0.128 per fill.
    let me = app.call_as(shared::handlers::auth::me, &token, "GET", "/api/v1/users/me", None).await;
    let user = me.body["id"].as_str().unwrap().to_owned();
    let filled = app.trading().orders_with_status(&user, shared::trading::model::OrderStatus::Filled).await.unwrap();
    let maker_fills: Vec<_> = filled.iter().filter(|o| o.intent.order_type == shared::trading::model::OrderType::Limit).collect();
    assert_eq!(maker_fills.len(), 3);
    for order in maker_fills {
        let fill = order.fill.as_ref().unwrap();
        assert_eq!((fill.avg_price, fill.fee), (Some(d("64000")), d("0.128")));
    }
}

#[tokio::test]
async fn a_paper_order_canceled_by_a_stop_never_fills() {
    let app = paper_app().await;
    let token = access_token(&app).await;
    assert_eq!(start(&app, &token, bot_config()).await.status, 200);
    assert_eq!(submit(&app, &token, &key(), limit_buy("0.01", "64000")).await.status, 201);
    assert_eq!(stop(&app, &token).await.body["canceled_orders"].as_array().map(Vec::len), Some(1));
    // Started again, the mark crosses the old price: nothing of the canceled order fills.
    assert_eq!(start(&app, &token, bot_config()).await.status, 200);
    app.set_mark("BTCUSDT", "63000").await;
    assert_eq!(sweep_now(&app).await.resting_filled, 0);
    assert_eq!(status(&app, &token).await.body["positions"], json!([]));
}

#[tokio::test]
async fn a_paper_position_past_its_liquidation_price_is_liquidated_there_and_the_balance_stays_positive() {
    let app = spawn_app_with(&[("PAPER_START_BALANCE", "200".to_owned())]).await;
    app.set_mark("BTCUSDT", "65000").await;
    let token = access_token(&app).await;
    // 50×: isolated liquidation 2 % − 0.4 % maintenance = 1.6 % below entry, at 63,960.
    let config = json!({"symbol": "BTCUSDT", "leverage": 50, "stop_loss_pct": "1", "max_position_notional": "5000"});
    assert_eq!(start(&app, &token, config).await.status, 200);
    let mut balance = d("200");
    for cycle in 0..2 {
        app.set_mark("BTCUSDT", "65000").await;
        let res = submit(&app, &token, &key(), market_buy("0.07")).await;
        assert_eq!(res.status, 201, "cycle {cycle}: {}", res.raw);
        // The market gaps through the stop and the liquidation price between two runs.
        app.set_mark("BTCUSDT", "60000").await;
        let report = sweep_now(&app).await;
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(
            report.closed.iter().map(|c| (c.reason.as_str(), c.size, c.exit_price)).collect::<Vec<_>>(),
            vec![("liquidation", d("0.07"), Some(d("63960")))],
            "cycle {cycle}"
        );
        assert_eq!(status(&app, &token).await.body["positions"], json!([]));
        // Open fee 2.73, loss 1,040 × 0.07 = 72.8, close fee 0.07 × 63,960 × 0.06 % = 2.68632.
        let expected = (balance - d("2.73") - d("72.8") - d("2.68632")).max(Decimal::ZERO);
        let equity = dv(&account(&app, &token).await.body["equity"]);
        assert_eq!(equity, expected, "cycle {cycle}");
        assert!(equity >= Decimal::ZERO);
        balance = equity;
    }
}

async fn user_id_of(app: &TestApp, token: &str) -> String {
    let me = app.call_as(shared::handlers::auth::me, token, "GET", "/api/v1/users/me", None).await;
    me.body["id"].as_str().unwrap().to_owned()
}

fn some_credentials(version: u64) -> shared::trading::store::CredentialsRecord {
    shared::trading::store::CredentialsRecord {
        exchange: shared::trading::model::ExchangeKind::Bitget,
        demo: false,
        ciphertext: "not-decrypted-here".into(),
        position_mode: "one_way_mode".into(),
        updated_at: shared::trading::store::now_rfc3339(),
        version,
    }
}

#[tokio::test]
async fn saving_or_deleting_credentials_is_one_write_conditioned_on_the_bot_being_stopped() {
    use shared::trading::store::CredentialsWrite;
    let app = paper_app().await;
    let token = access_token(&app).await;
    let user = user_id_of(&app, &token).await;
    // A save that passed its own "bot stopped?" read a moment before the bot started.
    assert_eq!(start(&app, &token, bot_config()).await.status, 200);
    assert_eq!(app.trading().save_credentials(&user, &some_credentials(1), None).await.unwrap(), CredentialsWrite::BotActive);
    assert_eq!(app.trading().delete_credentials(&user).await.unwrap(), CredentialsWrite::BotActive);
    assert!(app.trading().snapshot(&user).await.unwrap().credentials.is_none());
    assert_eq!(stop(&app, &token).await.status, 200);
    assert_eq!(app.trading().save_credentials(&user, &some_credentials(1), None).await.unwrap(), CredentialsWrite::Written);
    assert_eq!(app.trading().delete_credentials(&user).await.unwrap(), CredentialsWrite::Written);
}

#[tokio::test]
async fn a_start_that_read_no_credentials_does_not_start_a_paper_bot_once_they_exist() {
    use shared::trading::store::{BotRecord, BotState, StartOutcome};
    let app = paper_app().await;
    let token = access_token(&app).await;
    let user = user_id_of(&app, &token).await;
    // Saved between the start's read and its write.
    assert_eq!(
        app.trading().save_credentials(&user, &some_credentials(1), None).await.unwrap(),
        shared::trading::store::CredentialsWrite::Written
    );
    let paper_bot = BotRecord {
        user_id: user.clone(),
        state: BotState::Running,
        config: serde_json::from_value(bot_config()).unwrap(),
        version: 1,
        exchange: shared::trading::model::ExchangeKind::Paper,
        updated_at: shared::trading::store::now_rfc3339(),
        stop_id: None,
        stop_round: 0,
        credentials_version: None,
        position_mode: None,
        run: None,
        strategy_state: Default::default(),
        stop_reason: None,
    };
    assert_eq!(app.trading().start_bot(&paper_bot, None).await.unwrap(), StartOutcome::CredentialsChanged);
    assert!(app.trading().bot(&user).await.unwrap().is_none());
    let live_bot = BotRecord { exchange: shared::trading::model::ExchangeKind::Bitget, credentials_version: Some(1), ..paper_bot };
    assert_eq!(app.trading().start_bot(&live_bot, None).await.unwrap(), StartOutcome::Started);
}

#[tokio::test]
async fn a_bot_trades_on_the_exchange_kind_it_was_started_with() {
    let fake = FakeBitget::start().await;
    let app = live_app(&fake).await;
    let token = access_token(&app).await;
    let user = user_id_of(&app, &token).await;
    assert_eq!(start(&app, &token, bot_config()).await.status, 200);
    // Credentials appear behind the running paper bot (written before saves were conditioned).
    let item = shared::keys::with_key(serde_dynamo::to_item(some_credentials(1)).unwrap(), shared::keys::credentials(&user));
    ops::devstack::put_items(app.dynamo(), &app.state.config.table_name, vec![item]).await.unwrap();
    let res = submit(&app, &token, &key(), market_buy("0.01")).await;
    assert_eq!(res.status, 201, "{}", res.raw);
    assert_eq!(fake.order_count(), 0, "the paper bot's order never reaches the exchange");
    assert_eq!(status(&app, &token).await.body["positions"][0]["size"], "0.01");
    assert_eq!(stop(&app, &token).await.status, 200);
}

#[tokio::test]
async fn a_conflicting_transaction_is_retried_and_never_read_as_a_failed_condition() {
    let mut app = paper_app().await;
    let token = access_token(&app).await;
    assert_eq!(start(&app, &token, bot_config()).await.status, 200);
    let resting = submit(&app, &token, &key(), limit_buy("0.01", "62000")).await;
    assert_eq!((resting.status, resting.body["status"].as_str()), (201, Some("open")), "{}", resting.raw);
    // The stop's cancel meets a conflict: it is retried, not taken for "no longer open".
    let left = conflict_next_transactions(&mut app, 1);
    let res = stop(&app, &token).await;
    assert_eq!(left.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!((res.status, &res.body["canceled_orders"]), (200, &json!([resting.body["order_id"]])), "{}", res.raw);
    app.set_mark("BTCUSDT", "61000").await;
    sweep_now(&app).await;
    assert_eq!(account(&app, &token).await.body["positions"], json!([]), "a canceled order never fills");

    // Saving credentials behind a stopped bot through a conflict: written, not a false 409.
    let fake = FakeBitget::start().await;
    let mut app = live_app(&fake).await;
    let token = access_token(&app).await;
    conflict_next_transactions(&mut app, 1);
    let saved = save_keys(&app, &token, KEY, SECRET, false).await;
    assert_eq!(saved.status, 204, "{}", saved.raw);
}

#[tokio::test]
async fn a_resumed_key_racing_a_stop_never_sends_behind_the_stopped_bot() {
    let fake = FakeBitget::start().await;
    let (app, token) = live_trader(&fake, true).await;
    // Recorded, never placed (Bitget never answered), and its request long dead.
    let order_key = key();
    order_left_in_flight(&app, &fake, &token, &order_key, market_buy("0.01")).await;

    // The retry resumes the key; while its risk check waits on Bitget, the user stops the bot.
    let slow = std::sync::Arc::new(tokio::sync::Notify::new());
    let accounts = "/api/v2/mix/account/accounts";
    fake.fault(accounts, Fault::Hold(slow.clone()));
    let before = fake.calls(accounts);
    let retry = submit(&app, &token, &order_key, market_buy("0.01"));
    let stop_meanwhile = async {
        while fake.calls(accounts) == before {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let stopped = stop(&app, &token).await;
        slow.notify_one();
        stopped
    };
    let (retried, stopped) = tokio::join!(retry, stop_meanwhile);
    assert_eq!((stopped.status, stopped.body["state"].as_str()), (200, Some("stopped")), "{}", stopped.raw);
    assert_eq!((retried.status, retried.code()), (409, "order_not_sent"), "{}", retried.raw);
    assert_eq!(fake.order_count(), 0, "nothing was sent behind the stopped bot");
    assert_eq!(fake.position("BTCUSDT", "long"), Decimal::ZERO);
    // And the key keeps that answer.
    assert_eq!(submit(&app, &token, &order_key, market_buy("0.01")).await.code(), "order_not_sent");
}

#[tokio::test]
async fn credentials_versions_never_repeat_and_a_concurrent_save_is_refused() {
    use shared::trading::store::CredentialsWrite;
    let fake = FakeBitget::start().await;
    let (app, token) = live_trader(&fake, false).await;
    let user = user_id_of(&app, &token).await;
    async fn version(app: &TestApp, user: &str) -> Option<u64> {
        app.trading().snapshot(user).await.unwrap().credentials.map(|c| c.version)
    }
    let first = version(&app, &user).await.expect("saved");
    for cycle in 1..=3 {
        assert_eq!(app.call_as(t::delete_credentials, &token, "DELETE", "/api/v1/exchange/credentials", None).await.status, 204);
        assert_eq!(save_keys(&app, &token, KEY, SECRET, false).await.status, 204);
        let again = version(&app, &user).await.expect("saved again");
        // A bot started on the deleted keys recorded `first`: the new keys must never match it.
        assert!(again > first, "cycle {cycle}: version {again} after delete and save, was {first}");
    }
    // A save that read a version another save has replaced since is refused, not a blind overwrite.
    let read = version(&app, &user).await;
    assert_eq!(app.trading().save_credentials(&user, &some_credentials(read.unwrap() + 1), read).await.unwrap(), CredentialsWrite::Written);
    assert_eq!(app.trading().save_credentials(&user, &some_credentials(read.unwrap() + 2), read).await.unwrap(), CredentialsWrite::Changed);
}

#[tokio::test]
async fn a_live_submit_racing_a_stop_between_recording_and_sending_never_escapes_the_stop() {
    let fake = FakeBitget::start().await;
    let (app, token) = live_trader(&fake, true).await;
    // The order is recorded; Bitget holds its placement while the user stops the bot.
    let slow = std::sync::Arc::new(tokio::sync::Notify::new());
    let place = "/api/v2/mix/order/place-order";
    fake.fault(place, Fault::Hold(slow.clone()));
    let before = fake.calls(place);
    let order_key = key();
    let submitted = submit(&app, &token, &order_key, market_buy("0.01"));
    let stop_meanwhile = async {
        while fake.calls(place) == before {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let first = stop(&app, &token).await;
        slow.notify_one();
        first
    };
    let (submitted, first) = tokio::join!(submitted, stop_meanwhile);
    // The stop could not see the order at Bitget yet, and did not call the bot stopped.
    assert_eq!((first.status, first.code()), (502, "close_failed"), "{}", first.raw);
    assert_eq!(submitted.status, 201, "{}", submitted.raw);
    assert_eq!(status(&app, &token).await.body["state"], "stopping");
    // The next stop finds the filled order and closes what it opened.
    let second = stop(&app, &token).await;
    assert_eq!((second.status, second.body["state"].as_str()), (200, Some("stopped")), "{}", second.raw);
    assert_eq!(closed_sizes(&second), vec![d("0.01")]);
    assert!(fake.position("BTCUSDT", "long").is_zero());
}

#[tokio::test]
async fn the_position_mode_is_read_again_at_every_start_so_a_switch_after_saving_the_keys_trades_right() {
    let fake = FakeBitget::start().await;
    let (app, token) = live_trader(&fake, false).await; // saved in one-way mode
    for (cycle, mode) in [(1, "hedge_mode"), (2, "one_way_mode"), (3, "hedge_mode")] {
        // Switched in Bitget's own app while flat, after the keys were saved.
        fake.set_pos_mode(mode);
        assert_eq!(start(&app, &token, bot_config()).await.status, 200);
        let opened = submit(&app, &token, &key(), market_buy("0.01")).await;
        assert_eq!(opened.status, 201, "cycle {cycle} in {mode}: {}", opened.raw);
        let short = submit(&app, &token, &key(), json!({"symbol": "BTCUSDT", "side": "sell", "type": "market", "size": "0.01"})).await;
        assert_eq!(short.status, 201, "cycle {cycle} in {mode}: {}", short.raw);
        let stopped = stop(&app, &token).await;
        assert_eq!((stopped.status, stopped.body["state"].as_str()), (200, Some("stopped")), "cycle {cycle}: {}", stopped.raw);
        assert!(fake.position("BTCUSDT", "long").is_zero() && fake.position("BTCUSDT", "short").is_zero(), "cycle {cycle}: flat");
    }
}

#[tokio::test]
async fn a_stop_cancels_an_order_placed_by_hand_on_the_bots_symbol_without_inventing_a_record_for_it() {
    use shared::trading::exchange::{Exchange, OrderGuard};
    let fake = FakeBitget::start().await;
    let (app, token) = live_trader(&fake, true).await;
    let user = user_id_of(&app, &token).await;
    // Placed in Bitget's own app, not through this service.
    let by_hand = shared::trading::bitget::BitgetExchange {
        client: app.state.bitget.clone(),
        creds: shared::trading::bitget::BitgetCredentials {
            api_key: KEY.into(),
            api_secret: shared::secrets::Secret::new(SECRET.into()),
            passphrase: shared::secrets::Secret::new(PASSPHRASE.into()),
            demo: false,
        },
        position_mode: "one_way_mode".into(),
        margin_mode: Default::default(),
    };
    let intent = shared::trading::model::OrderIntent {
        symbol: "BTCUSDT".into(),
        side: shared::trading::model::Side::Buy,
        order_type: shared::trading::model::OrderType::Limit,
        size: d("0.01"),
        price: Some(d("60000")),
        reduce_only: false,
        client_order_id: "placed-by-hand-1".into(),
        leverage: 10,
        reason: None,
    };
    by_hand.place_order(&intent, OrderGuard::default()).await.expect("placed by hand");
    let res = stop(&app, &token).await;
    assert_eq!((res.status, res.body["canceled_orders"].as_array().map(Vec::len)), (200, Some(1)), "{}", res.raw);
    assert_eq!(fake.order("placed-by-hand-1").unwrap().state, "canceled");
    assert!(app.trading().order(&user, "placed-by-hand-1").await.unwrap().is_none(), "no half-made record");
    // The order history still reads whole, start after start.
    for _ in 0..2 {
        assert_eq!(start(&app, &token, bot_config()).await.status, 200);
        assert_eq!(stop(&app, &token).await.status, 200);
    }
}

#[tokio::test]
async fn in_hedge_mode_each_side_is_judged_on_its_own_position() {
    let fake = FakeBitget::start().await;
    fake.set_pos_mode("hedge_mode");
    let (app, token) = live_trader(&fake, true).await;
    let sell = |size: &str, reduce_only: bool| json!({"symbol": "BTCUSDT", "side": "sell", "type": "market", "size": size, "reduce_only": reduce_only});
    let buy = |size: &str, reduce_only: bool| json!({"symbol": "BTCUSDT", "side": "buy", "type": "market", "size": size, "reduce_only": reduce_only});
    // A long of 16,250 USDT and a short of 13,000 against a 20,000 cap.
    assert_eq!(submit(&app, &token, &key(), buy("0.25", false)).await.status, 201);
    assert_eq!(submit(&app, &token, &key(), sell("0.2", false)).await.status, 201);
    // More long would take the long past the cap: the short beside it does not net it down.
    let res = submit(&app, &token, &key(), buy("0.1", false)).await;
    assert_eq!((res.status, res.code()), (422, "max_position_notional_exceeded"), "{}", res.raw);
    // A reduce-only buy closes the short, judged against the short.
    let res = submit(&app, &token, &key(), buy("0.2", true)).await;
    assert_eq!(res.status, 201, "{}", res.raw);
    assert!(fake.position("BTCUSDT", "short").is_zero());
    assert_eq!(fake.position("BTCUSDT", "long"), d("0.25"));
    // And a reduce-only sell closes the long.
    let res = submit(&app, &token, &key(), sell("0.25", true)).await;
    assert_eq!(res.status, 201, "{}", res.raw);
    assert!(fake.position("BTCUSDT", "long").is_zero());
}

#[tokio::test]
async fn a_resumed_key_is_held_to_the_risk_rules_and_the_bots_state_of_now() {
    // Risk: while the key waited, another order took the position to the cap.
    let fake = FakeBitget::start().await;
    let (app, token) = live_trader(&fake, true).await;
    let waiting = key();
    order_left_in_flight(&app, &fake, &token, &waiting, market_buy("0.01")).await;
    assert_eq!(submit(&app, &token, &key(), market_buy("0.3")).await.status, 201); // 19,500 of 20,000
    let retry = submit(&app, &token, &waiting, market_buy("0.01")).await;
    assert_eq!((retry.status, retry.code()), (422, "max_position_notional_exceeded"), "{}", retry.raw);
    assert_eq!(fake.position("BTCUSDT", "long"), d("0.3"), "the resumed order was not sent");

    // The bot's state: a stop began while the key waited (it has marked the bot stopping and
    // not reached the orders yet).
    let fake = FakeBitget::start().await;
    let (app, token) = live_trader(&fake, true).await;
    let waiting = key();
    let user = order_left_in_flight(&app, &fake, &token, &waiting, market_buy("0.01")).await;
    let running = app.trading().bot(&user).await.unwrap().unwrap();
    let stopping = shared::trading::store::BotRecord {
        state: shared::trading::store::BotState::Stopping,
        version: running.version + 1,
        stop_id: Some("stop-test".into()),
        ..running.clone()
    };
    assert!(app.trading().put_bot(&stopping, Some(running.version)).await.unwrap());
    let retry = submit(&app, &token, &waiting, market_buy("0.01")).await;
    assert_eq!((retry.status, retry.code()), (409, "bot_not_running"), "{}", retry.raw);
    assert_eq!(fake.order_count(), 0, "nothing was sent behind the stopping bot");
    // The stop finishes: the order was never placed, and the key keeps its answer.
    let res = stop(&app, &token).await;
    assert_eq!((res.status, res.body["state"].as_str()), (200, Some("stopped")), "{}", res.raw);
    assert_eq!(submit(&app, &token, &waiting, market_buy("0.01")).await.code(), "bot_not_running");
}

#[tokio::test]
async fn a_stop_behind_a_resting_reduce_only_close_cancels_it_and_flattens_the_whole_position() {
    let fake = FakeBitget::start().await;
    let (app, token) = live_trader(&fake, true).await;
    assert_eq!(submit(&app, &token, &key(), market_buy("0.02")).await.status, 201);
    // The trader's own take-profit rests for the whole position, locking it.
    let take_profit = json!({"symbol": "BTCUSDT", "side": "sell", "type": "limit", "size": "0.02", "price": "66000", "reduce_only": true});
    let resting = submit(&app, &token, &key(), take_profit).await;
    assert_eq!((resting.status, resting.body["status"].as_str()), (201, Some("open")), "{}", resting.raw);
    let res = stop(&app, &token).await;
    assert_eq!((res.status, res.body["state"].as_str()), (200, Some("stopped")), "{}", res.raw);
    assert_eq!(res.body["canceled_orders"], json!([resting.body["order_id"]]), "{}", res.raw);
    assert_eq!(closed_sizes(&res), vec![d("0.02")]);
    assert!(fake.position("BTCUSDT", "long").is_zero());
}

#[tokio::test]
async fn decimals_on_an_order_are_read_exactly_or_refused_with_400() {
    let app = paper_app().await;
    let token = access_token(&app).await;
    assert_eq!(start(&app, &token, bot_config()).await.status, 200);
    for body in [
        // More digits than a decimal holds: refused, never rounded to 0.001.
        r#"{"symbol": "BTCUSDT", "side": "buy", "type": "market", "size": 0.00100000000000000000000000000001}"#,
        r#"{"symbol": "BTCUSDT", "side": "buy", "type": "limit", "size": "0.001", "price": 6.5e40}"#,
    ] {
        let mut req = with_bearer(request_raw("/api/v1/order/submit", body), &token);
        req.headers_mut().insert("idempotency-key", key().parse().unwrap());
        let res = app.call(t::submit_order, req).await;
        assert_eq!((res.status, res.code()), (400, "invalid_request"), "{body}: {}", res.raw);
    }
    assert_eq!(account(&app, &token).await.body["positions"], json!([]));
}

#[tokio::test]
async fn start_open_stop_three_times_over_closes_every_position_paper_and_live() {
    let fake = FakeBitget::start().await;
    let paper = paper_app().await;
    let paper_token = access_token(&paper).await;
    let (live, live_token) = live_trader(&fake, false).await;
    for (app, token) in [(&paper, &paper_token), (&live, &live_token)] {
        for cycle in 1..=3 {
            assert_eq!(start(app, token, bot_config()).await.status, 200, "cycle {cycle}");
            let opened = submit(app, token, &key(), market_buy("0.01")).await;
            assert_eq!(opened.status, 201, "cycle {cycle}: {}", opened.raw);
            let res = stop(app, token).await;
            assert_eq!((res.status, res.body["state"].as_str()), (200, Some("stopped")), "cycle {cycle}: {}", res.raw);
            assert_eq!(closed_sizes(&res), vec![d("0.01")], "cycle {cycle} closes its own position");
            assert_eq!(account(app, token).await.body["positions"], json!([]), "cycle {cycle}");
        }
    }
}

/// A live trader on `fake` whose exchange calls may take up to 5 s (for holding one in a test).
async fn patient_live_trader(fake: &FakeBitget) -> (TestApp, String) {
    let app = spawn_app_with(&[("BITGET_BASE_URL", fake.url.clone()), ("EXCHANGE_TIMEOUT_MS", "5000".into())]).await;
    app.set_mark("BTCUSDT", "65000").await;
    let token = access_token(&app).await;
    assert_eq!(save_keys(&app, &token, KEY, SECRET, false).await.status, 204);
    assert_eq!(start(&app, &token, bot_config()).await.status, 200);
    (app, token)
}

/// Waits until the double has seen one more call of `path` than `before`.
async fn until_called(fake: &FakeBitget, path: &str, before: u32) {
    while fake.calls(path) == before {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn two_retries_of_one_key_send_once_and_the_loser_never_settles_the_winners_order() {
    let fake = FakeBitget::start().await;
    let (app, token) = patient_live_trader(&fake).await;
    let waiting = key();
    order_left_in_flight(&app, &fake, &token, &waiting, market_buy("0.01")).await;
    // Retry A takes the order and is sending it (Bitget slow); retry B comes meanwhile.
    let slow = std::sync::Arc::new(tokio::sync::Notify::new());
    let place = "/api/v2/mix/order/place-order";
    fake.fault(place, Fault::Hold(slow.clone()));
    let before = fake.calls(place);
    let a = submit(&app, &token, &waiting, market_buy("0.01"));
    let b_meanwhile = async {
        until_called(&fake, place, before).await;
        let b = submit(&app, &token, &waiting, market_buy("0.01")).await;
        // While A's order is on its way, a stop cannot call the bot stopped either.
        let stopped = stop(&app, &token).await;
        slow.notify_one();
        (b, stopped)
    };
    let (a, (b, stopped)) = tokio::join!(a, b_meanwhile);
    assert_eq!((b.status, b.code()), (409, "request_in_progress"), "{}", b.raw);
    assert_eq!((stopped.status, stopped.code()), (502, "close_failed"), "{}", stopped.raw);
    assert_eq!(a.status, 201, "{}", a.raw);
    assert_eq!(fake.order_count(), 1, "one order for the key");
    // The next stop closes what A opened.
    let res = stop(&app, &token).await;
    assert_eq!((res.status, res.body["state"].as_str()), (200, Some("stopped")), "{}", res.raw);
    assert_eq!(closed_sizes(&res), vec![d("0.01")]);
}

#[tokio::test]
async fn an_order_that_reaches_the_book_after_the_stops_cancel_is_canceled_too() {
    let fake = FakeBitget::start().await;
    let (app, token) = patient_live_trader(&fake).await;
    let place = "/api/v2/mix/order/place-order";
    let detail = "/api/v2/mix/order/detail";
    let placing = std::sync::Arc::new(tokio::sync::Notify::new());
    let looking = std::sync::Arc::new(tokio::sync::Notify::new());
    fake.fault(place, Fault::Hold(placing.clone()));
    let (placed_before, detail_before) = (fake.calls(place), fake.calls(detail));
    let order_key = key();
    // A resting limit buy is recorded and on its way; the stop cancels (nothing rests yet), then
    // looks the order up: by then it rests on the book.
    let submitted = submit(&app, &token, &order_key, limit_buy("0.01", "62000"));
    let stop_meanwhile = async {
        until_called(&fake, place, placed_before).await;
        fake.fault(detail, Fault::Hold(looking.clone()));
        let stopping = stop(&app, &token);
        let land_then_answer = async {
            until_called(&fake, detail, detail_before).await;
            placing.notify_one();
            while fake.order_count() == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            looking.notify_one();
        };
        tokio::join!(stopping, land_then_answer).0
    };
    let (submitted, stopped) = tokio::join!(submitted, stop_meanwhile);
    assert_eq!((submitted.status, submitted.body["status"].as_str()), (201, Some("open")), "{}", submitted.raw);
    assert_eq!((stopped.status, stopped.body["state"].as_str()), (200, Some("stopped")), "{}", stopped.raw);
    assert_eq!(stopped.body["canceled_orders"], json!([submitted.body["order_id"]]), "{}", stopped.raw);
    assert_eq!(fake.order(submitted.body["client_order_id"].as_str().unwrap()).unwrap().state, "canceled");
}

#[tokio::test]
async fn a_stale_guardian_run_never_closes_the_position_opened_after_the_one_it_saw() {
    let fake = FakeBitget::start().await;
    let (app, token) = live_trader(&fake, true).await;
    let user = user_id_of(&app, &token).await;
    assert_eq!(submit(&app, &token, &key(), market_buy("0.01")).await.status, 201);
    let snapshot = app.trading().snapshot(&user).await.unwrap();
    let exchange = shared::trading::service::exchange_for(&app.state, &user, &snapshot, &[]).await.unwrap();
    let seen = exchange.positions().await.unwrap().remove(0);
    let bot = snapshot.bot.clone().unwrap();
    // Run A closes it; the user opens a new long; run B still holds A's view of the old one.
    let a =
        shared::trading::bot::close_triggered(&app.state, exchange.as_ref(), &user, bot.config.leverage, &seen, "stop_loss").await.unwrap();
    assert_eq!(a.map(|c| c.size), Some(d("0.01")));
    tokio::time::sleep(std::time::Duration::from_millis(5)).await; // a new cTime
    assert_eq!(submit(&app, &token, &key(), market_buy("0.02")).await.status, 201);
    let b =
        shared::trading::bot::close_triggered(&app.state, exchange.as_ref(), &user, bot.config.leverage, &seen, "stop_loss").await.unwrap();
    assert!(b.is_none(), "nothing left of the position B saw: {b:?}");
    assert_eq!(fake.position("BTCUSDT", "long"), d("0.02"), "the new position is untouched");
}

#[tokio::test]
async fn credentials_saved_before_versions_existed_still_start_a_bot_and_can_be_replaced() {
    let fake = FakeBitget::start().await;
    let (app, token) = live_trader(&fake, false).await;
    let user = user_id_of(&app, &token).await;
    // As an earlier release stored them: no version attribute.
    app.dynamo()
        .update_item()
        .table_name(&app.state.config.table_name)
        .set_key(Some(shared::keys::credentials(&user)))
        .update_expression("REMOVE version")
        .send()
        .await
        .unwrap();
    for cycle in 1..=2 {
        let started = start(&app, &token, bot_config()).await;
        assert_eq!(started.status, 200, "cycle {cycle}: {}", started.raw);
        assert_eq!(stop(&app, &token).await.status, 200);
    }
    assert_eq!(save_keys(&app, &token, KEY, SECRET, false).await.status, 204, "replaced, not a false conflict");
    assert_eq!(start(&app, &token, bot_config()).await.status, 200);
}

// ---------------------------------------------------------------- one order: read and cancel

async fn get_order(app: &TestApp, token: &str, id: &str) -> TestResponse {
    app.call_as(t::get_order, token, "GET", &format!("/api/v1/orders/{id}"), None).await
}

async fn cancel_order(app: &TestApp, token: &str, id: &str) -> TestResponse {
    app.call_as(t::cancel_order, token, "DELETE", &format!("/api/v1/orders/{id}"), None).await
}

#[tokio::test]
async fn an_order_is_read_by_either_id_cancelled_once_and_someone_elses_is_not_found() {
    let app = paper_app().await;
    let token = access_token(&app).await;
    assert_eq!(start(&app, &token, bot_config()).await.status, 200);
    let resting = submit(&app, &token, &key(), limit_buy("0.01", "62000")).await;
    assert_eq!(resting.status, 201, "{}", resting.raw);
    let (order_id, client_oid) = (resting.body["order_id"].as_str().unwrap(), resting.body["client_order_id"].as_str().unwrap());
    for id in [order_id, client_oid] {
        let res = get_order(&app, &token, id).await;
        assert_eq!(res.status, 200, "{}", res.raw);
        assert_eq!(
            (res.body["status"].as_str(), res.body["price"].as_str(), res.body["reason"].as_str()),
            (Some("open"), Some("62000"), Some("manual"))
        );
        assert_eq!((res.body["order_id"].as_str(), res.body["client_order_id"].as_str()), (Some(order_id), Some(client_oid)));
        assert_eq!((res.body["reduce_only"].as_bool(), res.body["fee"].as_str()), (Some(false), Some("0")));
    }
    let other = access_token(&app).await;
    for res in [get_order(&app, &other, order_id).await, cancel_order(&app, &other, order_id).await] {
        assert_eq!((res.status, res.code()), (404, "order_not_found"), "someone else's order is not found: {}", res.raw);
    }
    for id in ["nope", "paper-nope", "a%2Fb", &"x".repeat(80)] {
        assert_eq!(get_order(&app, &token, id).await.code(), "order_not_found", "{id}");
    }

    let canceled = cancel_order(&app, &token, order_id).await;
    assert_eq!((canceled.status, canceled.body["status"].as_str()), (200, Some("canceled")), "{}", canceled.raw);
    let again = cancel_order(&app, &token, order_id).await;
    assert_eq!((again.status, again.code()), (409, "order_not_open"), "{}", again.raw);
    assert_eq!(get_order(&app, &token, order_id).await.body["status"], "canceled");
    // A filled order cannot be cancelled; its answer shows how it ended.
    let filled = submit(&app, &token, &key(), market_buy("0.01")).await;
    let res = cancel_order(&app, &token, filled.body["order_id"].as_str().unwrap()).await;
    assert_eq!((res.status, res.code()), (409, "order_not_open"), "{}", res.raw);
    assert!(res.body["detail"].as_str().unwrap().contains("\"status\":\"filled\""), "{}", res.raw);
    let read = get_order(&app, &token, filled.body["order_id"].as_str().unwrap()).await;
    assert_eq!(
        (read.body["status"].as_str(), read.body["avg_price"].as_str(), read.body["price"].is_null()),
        (Some("filled"), Some("65000"), true)
    );
    assert_eq!(read.body["fee"], "0.39");

    // A client order id of the caller's own that looks like a paper id is still that order.
    let mut own = limit_buy("0.01", "62000");
    own["client_order_id"] = json!("paper-mine");
    let mine = submit(&app, &token, &key(), own).await;
    assert_eq!(mine.status, 201, "{}", mine.raw);
    assert_eq!(get_order(&app, &token, "paper-mine").await.body["client_order_id"], "paper-mine");
    // The guardian fills it between the trader's read and their cancel: the cancel says so.
    app.set_mark("BTCUSDT", "61900").await;
    let swept =
        shared::guardian::sweep(&app.state, std::time::Instant::now() + std::time::Duration::from_secs(60), &Default::default()).await;
    assert_eq!(swept.resting_filled, 1, "{swept:?}");
    let late = cancel_order(&app, &token, "paper-mine").await;
    assert_eq!((late.status, late.code()), (409, "order_not_open"), "{}", late.raw);
    assert!(late.body["detail"].as_str().unwrap().contains("\"status\":\"filled\""), "{}", late.raw);
}

#[tokio::test]
async fn a_live_order_is_refreshed_from_bitget_cancelled_there_first_and_a_fill_that_wins_answers_not_open() {
    let fake = FakeBitget::start().await;
    let (app, token) = live_trader(&fake, true).await;
    let first = submit(&app, &token, &key(), limit_buy("0.01", "62000")).await;
    assert_eq!((first.status, first.body["status"].as_str()), (201, Some("open")), "{}", first.raw);
    let bitget_id = first.body["order_id"].as_str().unwrap().to_owned();
    assert!(!bitget_id.starts_with("paper-"));
    assert_eq!(get_order(&app, &token, &bitget_id).await.body["status"], "open", "found by Bitget's id");
    // It fills at Bitget behind the service's back: reading it asks Bitget and stores the answer.
    fake.set_mark("BTCUSDT", "61900");
    let read = get_order(&app, &token, &bitget_id).await;
    assert_eq!(
        (read.status, read.body["status"].as_str(), read.body["filled_size"].as_str()),
        (200, Some("filled"), Some("0.01")),
        "{}",
        read.raw
    );
    let stored =
        app.trading().order(&user_id_of(&app, &token).await, first.body["client_order_id"].as_str().unwrap()).await.unwrap().unwrap();
    assert_eq!(stored.status, shared::trading::model::OrderStatus::Filled);
    assert_eq!(cancel_order(&app, &token, &bitget_id).await.code(), "order_not_open");

    fake.set_mark("BTCUSDT", "65000");
    let second = submit(&app, &token, &key(), limit_buy("0.01", "62000")).await;
    let res = cancel_order(&app, &token, second.body["order_id"].as_str().unwrap()).await;
    assert_eq!((res.status, res.body["status"].as_str()), (200, Some("canceled")), "{}", res.raw);
    assert_eq!(fake.order(second.body["client_order_id"].as_str().unwrap()).unwrap().state, "canceled", "cancelled at Bitget");

    // The race: the order fills while the cancel is on its way to Bitget.
    let third = submit(&app, &token, &key(), limit_buy("0.01", "62000")).await;
    let cancel_path = "/api/v2/mix/order/cancel-order";
    let slow = std::sync::Arc::new(tokio::sync::Notify::new());
    fake.fault(cancel_path, Fault::Hold(slow.clone()));
    let before = fake.calls(cancel_path);
    let canceling = cancel_order(&app, &token, third.body["order_id"].as_str().unwrap());
    let fill_meanwhile = async {
        while fake.calls(cancel_path) == before {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        fake.set_mark("BTCUSDT", "61900");
        slow.notify_one();
    };
    let (res, ()) = tokio::join!(canceling, fill_meanwhile);
    assert_eq!((res.status, res.code()), (409, "order_not_open"), "{}", res.raw);
    assert!(res.body["detail"].as_str().unwrap().contains("\"status\":\"filled\""), "the filled order in detail: {}", res.raw);
    assert_eq!(get_order(&app, &token, third.body["client_order_id"].as_str().unwrap()).await.body["status"], "filled");
}

async fn list_fills(app: &TestApp, token: &str) -> TestResponse {
    app.call_as(t::list_fills, token, "GET", "/api/v1/fills", None).await
}

#[tokio::test]
async fn live_fills_are_bitgets_fill_history_each_trade_once_with_the_reason_of_its_order() {
    let fake = FakeBitget::start().await;
    let (app, token) = live_trader(&fake, true).await;
    assert_eq!(submit(&app, &token, &key(), market_buy("0.01")).await.status, 201);
    // An order placed by hand on Bitget's site: the account's fill all the same.
    fake.place_by_hand("BTCUSDT", "buy", "0.02");
    let first = list_fills(&app, &token).await;
    assert_eq!(first.status, 200, "{}", first.raw);
    let reasons = |res: &TestResponse| -> Vec<String> {
        res.body["fills"].as_array().unwrap().iter().map(|f| f["reason"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(reasons(&first), ["manual", "manual"]);
    fake.set_mark("BTCUSDT", "65500");
    assert_eq!(stop(&app, &token).await.status, 200);
    for round in 0..3 {
        let listed = list_fills(&app, &token).await;
        assert_eq!(reasons(&listed), ["bot_stop", "manual", "manual"], "round {round}: {}", listed.raw);
        let trades = fake.trades();
        let ids: Vec<String> = listed.body["fills"].as_array().unwrap().iter().map(|f| f["fill_id"].as_str().unwrap().to_owned()).collect();
        let expected: Vec<String> = trades.iter().rev().map(|t| format!("bitget-{}", t.trade_id)).collect();
        assert_eq!(ids, expected, "round {round}: each trade once");
        let close = &listed.body["fills"][0];
        let trade = trades.last().unwrap();
        assert_eq!(
            (close["side"].as_str(), close["size"].as_str(), close["fee"].as_str(), close["order_id"].as_str()),
            (Some("sell"), Some("0.03"), Some(trade.fee.normalize().to_string().as_str()), Some(trade.order_id.as_str()))
        );
    }
    // Bitget away: the history as stored.
    for _ in 0..6 {
        fake.fault("/api/v2/mix/order/fills", Fault::ServerError);
    }
    let stored = list_fills(&app, &token).await;
    assert_eq!((stored.status, reasons(&stored).len()), (200, 3), "{}", stored.raw);
    let summary = app.call_as(t::pnl, &token, "GET", "/api/v1/pnl", None).await;
    assert_eq!(summary.status, 200, "{}", summary.raw);
    let sum: rust_decimal::Decimal = stored.body["fills"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["realized_pnl"].as_str().unwrap().parse::<rust_decimal::Decimal>().unwrap())
        .sum();
    assert_eq!(summary.body["realized_pnl"].as_str().unwrap().parse::<rust_decimal::Decimal>().unwrap(), sum);
    assert_eq!(summary.body["trades"], 1);
}

#[tokio::test]
async fn bitget_fills_page_past_a_hundred_and_find_their_orders_without_the_id_pointer() {
    let fake = FakeBitget::start().await;
    let (app, token) = live_trader(&fake, true).await;
    let user_id = user_id_of(&app, &token).await;
    assert_eq!(submit(&app, &token, &key(), market_buy("0.01")).await.status, 201);
    for i in 0..130 {
        fake.place_by_hand("BTCUSDT", if i % 2 == 0 { "buy" } else { "sell" }, "0.01");
    }
    assert_eq!(stop(&app, &token).await.status, 200);
    // The stop's close lost its id pointer (it is best effort): Bitget's order history names it.
    let close = fake.trades().last().unwrap().order_id.clone();
    app.dynamo()
        .delete_item()
        .table_name(&app.state.config.table_name)
        .set_key(Some(shared::keys::order_id_pointer(&user_id, &close)))
        .send()
        .await
        .unwrap();
    let details_before = fake.calls("/api/v2/mix/order/detail");
    let mut listed = Vec::new();
    let mut cursor = String::new();
    loop {
        let res = app.call_as(t::list_fills, &token, "GET", &format!("/api/v1/fills?limit=50{cursor}"), None).await;
        assert_eq!(res.status, 200, "{}", res.raw);
        listed.extend(res.body["fills"].as_array().unwrap().iter().cloned());
        match res.body["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    let trades = fake.trades();
    assert_eq!(listed.len(), trades.len());
    assert_eq!(listed.len(), 132);
    let ids: Vec<String> = listed.iter().map(|f| f["fill_id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, trades.iter().rev().map(|t| format!("bitget-{}", t.trade_id)).collect::<Vec<_>>());
    assert_eq!(listed[0]["reason"], "bot_stop", "found through the order history");
    assert!(listed[1..].iter().all(|f| f["reason"] == "manual"));
    // The week before the credentials were saved (empty), then the week since in two pages.
    assert_eq!(fake.calls("/api/v2/mix/order/fills"), 3);
    // The 131 unknown orders (the close and those made by hand) named by two pages of order
    // history, none asked for one at a time.
    let details = fake.calls("/api/v2/mix/order/detail") - details_before;
    assert_eq!((fake.calls("/api/v2/mix/order/orders-history"), details), (2, 0));
}

#[tokio::test]
async fn a_span_with_more_fills_than_one_read_takes_is_read_in_shorter_spans_each_trade_once() {
    let fake = FakeBitget::start().await;
    let (app, token) = live_trader(&fake, false).await;
    let user_id = user_id_of(&app, &token).await;
    for i in 0..1005 {
        fake.place_by_hand("BTCUSDT", if i % 2 == 0 { "buy" } else { "sell" }, "0.01");
    }
    // A read syncs within its budget; what it leaves, the next read takes from its mark.
    let mut stored = Vec::new();
    for _ in 0..20 {
        assert_eq!(list_fills(&app, &token).await.status, 200);
        stored = app.trading().fills_in(&user_id, shared::trading::history_store::TimeRange::ALL).await.unwrap();
        if stored.len() >= 1005 {
            break;
        }
    }
    let ids: std::collections::HashSet<String> = stored.iter().map(|f| f.fill_id.clone()).collect();
    let trades: std::collections::HashSet<String> = fake.trades().iter().map(|t| format!("bitget-{}", t.trade_id)).collect();
    assert_eq!((stored.len(), ids.len()), (1005, 1005), "each trade once");
    assert_eq!(ids, trades);
    // The full week gave up after ten pages; shorter spans read it whole.
    assert!(fake.calls("/api/v2/mix/order/fills") > 11 + 10, "{}", fake.calls("/api/v2/mix/order/fills"));
}

#[tokio::test]
async fn a_sync_its_budget_cuts_short_goes_on_from_its_mark_at_the_next_read() {
    let fake = FakeBitget::start().await;
    // A budget spent by the first span: each read copies one span.
    let app = spawn_app_with(&[("BITGET_BASE_URL", fake.url.clone()), ("FILL_SYNC_BUDGET_MS", "1".into())]).await;
    let token = access_token(&app).await;
    assert_eq!(save_keys(&app, &token, KEY, SECRET, false).await.status, 204);
    for _ in 0..3 {
        fake.place_by_hand("BTCUSDT", "buy", "0.01");
    }
    let count = |res: TestResponse| res.body["fills"].as_array().map(Vec::len);
    // The week before the credentials were saved, then the week since.
    assert_eq!(count(list_fills(&app, &token).await), Some(0));
    assert_eq!(fake.calls("/api/v2/mix/order/fills"), 1);
    assert_eq!(count(list_fills(&app, &token).await), Some(3));
    // From the mark on (ten minutes back), nothing is copied twice.
    assert_eq!(count(list_fills(&app, &token).await), Some(3));
}

#[tokio::test]
async fn a_trade_whose_order_bitget_will_not_name_reads_as_made_by_hand_and_holds_no_sync_up() {
    let fake = FakeBitget::start().await;
    let (app, token) = live_trader(&fake, true).await;
    let user_id = user_id_of(&app, &token).await;
    assert_eq!(submit(&app, &token, &key(), market_buy("0.01")).await.status, 201);
    assert_eq!(stop(&app, &token).await.status, 200);
    let close = fake.trades().last().unwrap().order_id.clone();
    let pointer = shared::keys::order_id_pointer(&user_id, &close);
    app.dynamo().delete_item().table_name(&app.state.config.table_name).set_key(Some(pointer)).send().await.unwrap();
    // Bitget refuses both ways of naming the close's order.
    fake.fault("/api/v2/mix/order/orders-history", Fault::Code("40017"));
    fake.fault("/api/v2/mix/order/detail", Fault::Code("40017"));
    let details_before = fake.calls("/api/v2/mix/order/detail");
    for round in 0..2 {
        let listed = list_fills(&app, &token).await;
        let reasons: Vec<&str> = listed.body["fills"].as_array().unwrap().iter().map(|f| f["reason"].as_str().unwrap()).collect();
        assert_eq!(reasons, ["manual", "manual"], "round {round}: {}", listed.raw);
    }
    assert_eq!(fake.calls("/api/v2/mix/order/detail") - details_before, 1, "asked once: the trade is stored");
}

#[tokio::test]
async fn a_live_open_order_the_refresh_finds_filled_leaves_the_open_list() {
    let fake = FakeBitget::start().await;
    let (app, token) = live_trader(&fake, true).await;
    let placed = submit(&app, &token, &key(), limit_buy("0.01", "64000")).await;
    assert_eq!(placed.status, 201, "{}", placed.raw);
    let open = app.call_as(t::list_orders, &token, "GET", "/api/v1/orders?status=open", None).await;
    assert_eq!(open.body["orders"].as_array().unwrap().len(), 1, "{}", open.raw);
    assert_eq!(open.body["orders"][0]["status"], "open");
    // Bitget fills it; nothing here has been told.
    fake.set_mark("BTCUSDT", "63900");
    for round in 0..2 {
        let open = app.call_as(t::list_orders, &token, "GET", "/api/v1/orders?status=open", None).await;
        assert_eq!(open.body["orders"], json!([]), "round {round}: {}", open.raw);
        let all = app.call_as(t::list_orders, &token, "GET", "/api/v1/orders", None).await;
        assert_eq!(all.body["orders"][0]["status"], "filled", "round {round}: {}", all.raw);
        assert_eq!(all.body["orders"][0]["avg_price"], "64000");
    }
}
