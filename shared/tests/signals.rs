//! Signal webhooks against the local stack: the token's lifecycle and alerts becoming orders.

mod common;

use common::*;
use serde_json::{json, Value};
use shared::handlers::trading as t;

async fn signal_bot(app: &TestApp, token: &str) {
    let config = json!({"symbol": "BTCUSDT", "leverage": 10, "stop_loss_pct": "2", "max_position_notional": "20000", "strategy": {"kind": "signal"}});
    let res = app.call_as(t::start_bot, token, "POST", "/api/v1/bot/start", Some(config)).await;
    assert_eq!(res.status, 200, "{}", res.raw);
    assert_eq!(res.body["config"]["strategy"], json!({"kind": "signal"}));
}

async fn signal_url(app: &TestApp, token: &str) -> String {
    let res = app.call_as(t::signal_token, token, "POST", "/api/v1/bot/signal-token", None).await;
    assert_eq!(res.status, 200, "{}", res.raw);
    let url = res.body["signal_url"].as_str().unwrap().to_owned();
    assert!(url.contains("/api/v1/signals/"), "{url}");
    url.rsplit('/').next().unwrap().to_owned()
}

async fn send(app: &TestApp, signal: &str, alert: Value) -> TestResponse {
    app.call(t::receive_signal, request("POST", &format!("/api/v1/signals/{signal}"), Some(alert))).await
}

async fn paper_app() -> TestApp {
    let app = spawn_app().await;
    app.set_mark("BTCUSDT", "65000").await;
    app
}

async fn position_size(app: &TestApp, token: &str) -> Option<String> {
    let account = app.call_as(t::account, token, "GET", "/api/v1/account", None).await;
    account.body["positions"].as_array().and_then(|p| p.first()).map(|p| p["size"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn an_alert_fired_twice_places_one_order_and_a_close_closes_the_position() {
    let app = paper_app().await;
    let token = access_token(&app).await;
    signal_bot(&app, &token).await;
    let signal = signal_url(&app, &token).await;
    let buy = json!({"id": "tv-alert-1", "action": "buy", "size": "0.01"});
    let first = send(&app, &signal, buy.clone()).await;
    assert_eq!(first.status, 202, "{}", first.raw);
    assert_eq!(first.body["status"], "filled");
    let again = send(&app, &signal, buy).await;
    assert_eq!(again.status, 202, "{}", again.raw);
    assert_eq!(again.body["order_id"], first.body["order_id"], "the same alert is the same order");
    assert_eq!(position_size(&app, &token).await.as_deref(), Some("0.01"), "one order filled, not two");

    for _ in 0..2 {
        let close = send(&app, &signal, json!({"id": "tv-alert-2", "action": "close"})).await;
        assert_eq!(close.status, 202, "a repeated close replays its answer: {}", close.raw);
    }
    assert_eq!(position_size(&app, &token).await, None, "flat");
    let res = send(&app, &signal, json!({"id": "tv-alert-3", "action": "close"})).await;
    assert_eq!((res.status, res.code()), (409, "no_position"));
}

#[tokio::test]
async fn a_rotated_token_is_refused_at_once_and_the_new_one_works() {
    let app = paper_app().await;
    let token = access_token(&app).await;
    signal_bot(&app, &token).await;
    let mut old = signal_url(&app, &token).await;
    for round in 0..2 {
        let new = signal_url(&app, &token).await;
        assert_ne!(new, old);
        let res = send(&app, &old, json!({"id": format!("old-{round}"), "action": "buy", "size": "0.001"})).await;
        assert_eq!((res.status, res.code()), (404, "signal_not_found"), "{}", res.raw);
        let res = send(&app, &new, json!({"id": format!("new-{round}"), "action": "buy", "size": "0.001"})).await;
        assert_eq!(res.status, 202, "{}", res.raw);
        old = new;
    }
    for forged in ["x", &"A".repeat(43), &"é".repeat(500)] {
        let res = send(&app, forged, json!({"id": "a", "action": "buy", "size": "0.001"})).await;
        assert_eq!((res.status, res.code()), (404, "signal_not_found"), "{}", res.raw);
    }
}

#[tokio::test]
async fn signals_go_only_to_a_running_signal_bot_through_the_order_rules() {
    let app = paper_app().await;
    let token = access_token(&app).await;
    let signal = signal_url(&app, &token).await;
    let buy = |id: &str| json!({"id": id, "action": "buy", "size": "0.001"});
    assert_eq!(send(&app, &signal, buy("a")).await.code(), "bot_not_running");
    let manual = json!({"symbol": "BTCUSDT", "leverage": 10, "stop_loss_pct": "2", "max_position_notional": "20000"});
    assert_eq!(app.call_as(t::start_bot, &token, "POST", "/api/v1/bot/start", Some(manual)).await.status, 200);
    assert_eq!(send(&app, &signal, buy("b")).await.code(), "strategy_mismatch", "a manual bot takes no signals");
    assert_eq!(app.call_as(t::stop_bot, &token, "POST", "/api/v1/bot/stop", None).await.status, 200);
    signal_bot(&app, &token).await;
    let res = send(&app, &signal, json!({"id": "c", "action": "buy", "size": "5"})).await;
    assert_eq!(res.code(), "max_position_notional_exceeded", "the bot's risk rules hold: {}", res.raw);
    assert_eq!(send(&app, &signal, json!({"id": "d", "action": "buy"})).await.code(), "invalid_size");
    app.trading().set_kill_switch(true, "test", "test").await.unwrap();
    assert_eq!(send(&app, &signal, buy("e")).await.code(), "trading_halted");
    app.trading().set_kill_switch(false, "test", "test").await.unwrap();
    let repeat = send(&app, &signal, buy("e")).await;
    assert_eq!((repeat.status, repeat.code()), (503, "trading_halted"), "the refusal was recorded as the alert's answer: {}", repeat.raw);
    assert_eq!(send(&app, &signal, buy("e2")).await.status, 202, "a new alert trades once the halt is lifted");
    assert_eq!(app.call_as(t::stop_bot, &token, "POST", "/api/v1/bot/stop", None).await.status, 200);
    assert_eq!(send(&app, &signal, buy("f")).await.code(), "bot_not_running");
}

#[tokio::test]
async fn one_token_is_limited_to_thirty_alerts_a_minute() {
    let app = paper_app().await;
    let token = access_token(&app).await;
    signal_bot(&app, &token).await;
    let signal = signal_url(&app, &token).await;
    let mut limited = 0;
    for i in 0..32 {
        // A malformed size is refused after the limit is taken: nothing trades.
        let res = send(&app, &signal, json!({"id": format!("flood-{i}"), "action": "buy"})).await;
        if res.status == 429 {
            limited += 1;
        }
    }
    assert_eq!(limited, 2, "the 31st and 32nd");
}

#[tokio::test]
async fn unknown_or_out_of_range_strategies_are_refused_with_invalid_strategy() {
    let app = paper_app().await;
    let token = access_token(&app).await;
    for strategy in [
        json!({"kind": "martingale"}),
        json!({"kind": "signal", "size": "1"}),
        json!({"kind": "ema_cross", "interval": "1m", "fast": 21, "slow": 21, "size": "0.01"}),
        json!({"kind": "ema_cross", "interval": "1m", "fast": 9, "slow": 21, "size": "0.0105"}),
        json!({"kind": "ema_cross", "interval": "1m", "fast": 9, "slow": 21, "size": "1e20"}),
        json!({"kind": "grid", "lower": "60000", "upper": "60000.05", "levels": 3, "size_per_level": "0.001"}),
    ] {
        let config =
            json!({"symbol": "BTCUSDT", "leverage": 10, "stop_loss_pct": "2", "max_position_notional": "20000", "strategy": strategy});
        let res = app.call_as(t::start_bot, &token, "POST", "/api/v1/bot/start", Some(config)).await;
        assert_eq!((res.status, res.code()), (422, "invalid_strategy"), "{}", res.raw);
    }
}

#[tokio::test]
async fn a_deleted_accounts_signal_url_is_gone_with_it() {
    let app = paper_app().await;
    let user = sign_up(&app).await;
    let signal = signal_url(&app, &user.access).await;
    let res = app
        .call_as(shared::handlers::auth::delete_me, &user.access, "DELETE", "/api/v1/users/me", Some(json!({"password": PASSWORD})))
        .await;
    assert_eq!(res.status, 204, "{}", res.raw);
    let res = send(&app, &signal, json!({"id": "a", "action": "buy", "size": "0.001"})).await;
    assert_eq!((res.status, res.code()), (404, "signal_not_found"));
}
