//! The trader's API against the local stack: markets (and, as they land, orders, cancel, fills,
//! PnL and closing one position).

mod common;

use common::*;
use shared::handlers::trading as t;

#[tokio::test]
async fn markets_are_public_cacheable_and_carry_each_contracts_specs_as_strings() {
    let app = spawn_app().await;
    let res = app.call(t::markets, request("GET", "/api/v1/markets", None)).await;
    assert_eq!(res.status, 200, "{}", res.raw);
    assert_eq!(res.header("cache-control"), Some("public, max-age=60"));
    let markets = res.body["markets"].as_array().unwrap();
    let symbols: Vec<&str> = markets.iter().map(|m| m["symbol"].as_str().unwrap()).collect();
    let mut sorted = symbols.clone();
    sorted.sort();
    assert_eq!(symbols, sorted, "by symbol");
    let btc = markets.iter().find(|m| m["symbol"] == "BTCUSDT").unwrap();
    assert_eq!(btc["base"], "BTC");
    assert_eq!(btc["quote"], "USDT");
    for field in ["min_size", "size_step", "price_tick", "min_notional", "maker_fee", "taker_fee"] {
        assert!(btc[field].as_str().is_some_and(|v| v.parse::<rust_decimal::Decimal>().is_ok()), "{field}: {}", btc[field]);
    }
    assert_eq!(btc["status"], "normal");
    assert!(btc["max_leverage"].as_u64().is_some_and(|l| l >= 1));

    // A symbol Bitget takes off shelf shows its status.
    app.exchange.as_ref().unwrap().set_symbol_status("ETHUSDT", "maintain");
    let fresh = spawn_app_with(&[("BITGET_BASE_URL", app.exchange.as_ref().unwrap().url.clone())]).await;
    let res = fresh.call(t::markets, request("GET", "/api/v1/markets", None)).await;
    let eth = res.body["markets"].as_array().unwrap().iter().find(|m| m["symbol"] == "ETHUSDT").cloned().unwrap();
    assert_eq!(eth["status"], "maintain");
}

async fn open_long(app: &TestApp, token: &str) {
    let config = serde_json::json!({"symbol": "BTCUSDT", "leverage": 10, "stop_loss_pct": "2", "max_position_notional": "20000"});
    assert_eq!(app.call_as(t::start_bot, token, "POST", "/api/v1/bot/start", Some(config)).await.status, 200);
    let order = serde_json::json!({"symbol": "BTCUSDT", "side": "buy", "type": "market", "size": "0.01"});
    let req = with_bearer(request("POST", "/api/v1/order/submit", Some(order)), token);
    let mut req = req;
    req.headers_mut().insert("idempotency-key", uuid::Uuid::new_v4().to_string().parse().unwrap());
    let res = app.call(t::submit_order, req).await;
    assert_eq!(res.status, 201, "{}", res.raw);
}

async fn close(app: &TestApp, token: &str, symbol: &str) -> TestResponse {
    app.call_as(t::close_position, token, "POST", &format!("/api/v1/positions/{symbol}/close"), None).await
}

#[tokio::test]
async fn closing_a_position_closes_it_once_whatever_the_bot_and_the_kill_switch_say() {
    let app = spawn_app().await;
    app.set_mark("BTCUSDT", "65000").await;
    let token = access_token(&app).await;
    assert_eq!(
        (close(&app, &token, "BTCUSDT").await.status, close(&app, &token, "BTCUSDT").await.code().to_owned()),
        (404, "position_not_found".to_owned())
    );
    for cycle in 0..2 {
        open_long(&app, &token).await;
        // Under the kill switch, closing still works (it only lowers risk).
        app.trading().set_kill_switch(true, "test", "test").await.unwrap();
        app.set_mark("BTCUSDT", "66000").await;
        let res = close(&app, &token, "btcusdt").await;
        assert_eq!(res.status, 200, "cycle {cycle}: {}", res.raw);
        let closed = &res.body["closed_positions"][0];
        assert_eq!(
            (closed["side"].as_str(), closed["size"].as_str(), closed["realized_pnl"].as_str()),
            (Some("long"), Some("0.01"), Some("10"))
        );
        let again = close(&app, &token, "BTCUSDT").await;
        assert_eq!((again.status, again.code()), (404, "position_not_found"), "cycle {cycle}: flat now");
        app.trading().set_kill_switch(false, "test", "test").await.unwrap();
        app.set_mark("BTCUSDT", "65000").await;
        // The next cycle's position is another instance, closed by an order of its own.
        assert_eq!(app.call_as(t::stop_bot, &token, "POST", "/api/v1/bot/stop", None).await.status, 200);
    }
    // Someone else's position is not the caller's to close.
    let owner = access_token(&app).await;
    open_long(&app, &owner).await;
    let other = access_token(&app).await;
    assert_eq!(close(&app, &other, "BTCUSDT").await.code(), "position_not_found");
    assert_eq!(close(&app, &owner, "BTC/USDT").await.code(), "position_not_found");
}
