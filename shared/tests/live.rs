//! Live push and Telegram against DynamoDB Local, its stream, cluster-mode redis and moto: real
//! WebSocket clients on the local API Gateway stand-in (`doubles::ws_gateway`), the table's
//! stream followed as Lambda's event source mapping follows it (`doubles::stream_source`), and
//! the routes' and the broadcast function's own handlers behind them.

mod common;

use common::live::*;
use common::*;
use futures::SinkExt;
use serde_json::{json, Value};
use shared::handlers::{auth, live as l, trading as t};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

fn bot_config() -> Value {
    json!({"symbol": "BTCUSDT", "leverage": 10, "stop_loss_pct": "2", "max_position_notional": "20000"})
}

async fn start(app: &TestApp, token: &str) {
    let res = app.call_as(t::start_bot, token, "POST", "/api/v1/bot/start", Some(bot_config())).await;
    assert_eq!(res.status, 200, "{}", res.raw);
}

async fn stop(app: &TestApp, token: &str) -> TestResponse {
    app.call_as(t::stop_bot, token, "POST", "/api/v1/bot/stop", None).await
}

async fn buy(app: &TestApp, token: &str, size: &str) {
    let mut req = with_bearer(
        request("POST", "/api/v1/order/submit", Some(json!({"symbol": "BTCUSDT", "side": "buy", "type": "market", "size": size}))),
        token,
    );
    req.headers_mut().insert("idempotency-key", uuid::Uuid::new_v4().to_string().parse().unwrap());
    let res = app.call(t::submit_order, req).await;
    assert_eq!(res.status, 201, "{}", res.raw);
}

fn is_bot(state: &'static str) -> impl Fn(&Value) -> bool {
    move |m: &Value| m["type"] == "bot" && m["state"] == state
}

// ---------------------------------------------------------------- WebSocket

#[tokio::test]
async fn both_connections_of_a_user_see_each_stop_made_through_the_http_api_within_two_seconds_three_times_over() {
    let live = live().await;
    let user = sign_up(&live.app).await;
    let (mut phone, mut laptop) = (live.connect(&user.access).await, live.connect(&user.access).await);
    for cycle in 1..=3 {
        start(&live.app, &user.access).await;
        for socket in [&mut phone, &mut laptop] {
            let (message, _) =
                next_matching(socket, PUSH_WITHIN, is_bot("running")).await.unwrap_or_else(|| panic!("cycle {cycle}: no start"));
            assert_eq!((message["is_running"].clone(), message["config"]["symbol"].clone()), (json!(true), json!("BTCUSDT")));
            assert!(message["updated_at"].is_string());
        }
        let stopped = stop(&live.app, &user.access).await;
        assert_eq!(stopped.status, 200, "{}", stopped.raw);
        for socket in [&mut phone, &mut laptop] {
            let (message, took) =
                next_matching(socket, PUSH_WITHIN, is_bot("stopped")).await.unwrap_or_else(|| panic!("cycle {cycle}: no stop within 2 s"));
            assert_eq!(message["is_running"], false, "{message}");
            assert!(took < PUSH_WITHIN);
        }
    }
}

#[tokio::test]
async fn a_guardian_stop_loss_reaches_every_connection_with_its_reason_and_no_other_user_hears_of_it() {
    let live = live().await;
    let user = sign_up(&live.app).await;
    let other = sign_up(&live.app).await;
    let (mut first, mut second) = (live.connect(&user.access).await, live.connect(&user.access).await);
    let mut stranger = live.connect(&other.access).await;
    start(&live.app, &user.access).await;
    buy(&live.app, &user.access, "0.1").await;
    for socket in [&mut first, &mut second] {
        let (opened, _) = next_matching(socket, PUSH_WITHIN, |m| m["type"] == "position").await.expect("the position opened");
        assert_eq!(
            (opened["side"].clone(), opened["size"].clone(), opened["entry_price"].clone()),
            (json!("long"), json!("0.1"), json!("65000"))
        );
    }
    // 3 % down: past the 2 % stop.
    live.app.set_mark("BTCUSDT", "63050").await;
    let report = shared::guardian::sweep(&live.app.state, Instant::now() + Duration::from_secs(60), &Default::default()).await;
    assert_eq!(report.closed.len(), 1, "{report:?}");
    for socket in [&mut first, &mut second] {
        let (closed, _) = next_matching(socket, PUSH_WITHIN, |m| m["type"] == "position" && m["size"] == "0")
            .await
            .expect("the close reaches the connection within 2 s");
        assert_eq!(closed["reason"], "stop_loss", "{closed}");
        assert_eq!(closed["symbol"], "BTCUSDT");
        assert!(closed["mark_price"].is_string() && closed["unrealized_pnl"].is_string(), "{closed}");
    }
    let order = next_matching(&mut first, PUSH_WITHIN, |m| m["type"] == "order" && m["reason"] == "stop_loss").await;
    // Pushed before the position's close in stream order, or after: either way it was pushed.
    let order = match order {
        Some((o, _)) => o,
        None => panic!("the closing order's fill was not pushed"),
    };
    assert_eq!((order["status"].clone(), order["side"].clone()), (json!("filled"), json!("sell")));
    assert_eq!(order["order_type"], "market", "the order's own type, beside the message's: {order}");
    assert!(all_within(&mut stranger, Duration::from_millis(500)).await.is_empty(), "another user hears nothing");
}

#[tokio::test]
async fn a_missing_bad_expired_or_logged_out_token_is_refused_with_401() {
    let live = live().await;
    assert_eq!(live.refused("").await, 401);
    assert_eq!(live.refused("not-a-jwt").await, 401);
    let user = sign_up(&live.app).await;
    let mut tampered = user.access.clone();
    tampered.pop();
    assert_eq!(live.refused(&tampered).await, 401);
    let res = live
        .app
        .call(auth::logout, request("POST", "/api/v1/auth/logout", Some(json!({"refresh_token": user.refresh, "scope": "global"}))))
        .await;
    assert_eq!(res.status, 204);
    assert_eq!(live.refused(&user.access).await, 401, "a token of a logged-out user");
    assert_eq!(live.gateway.open_connections(), 0);
}

#[tokio::test]
async fn a_global_logout_closes_every_connection_of_the_user_and_only_theirs() {
    let live = live().await;
    let user = sign_up(&live.app).await;
    let other = sign_up(&live.app).await;
    let (mut phone, mut laptop) = (live.connect(&user.access).await, live.connect(&user.access).await);
    let mut stranger = live.connect(&other.access).await;
    let res = live
        .app
        .call(auth::logout, request("POST", "/api/v1/auth/logout", Some(json!({"refresh_token": user.refresh, "scope": "global"}))))
        .await;
    assert_eq!(res.status, 204, "{}", res.raw);
    assert!(closed_within(&mut phone, PUSH_WITHIN).await, "the phone's connection is closed");
    assert!(closed_within(&mut laptop, PUSH_WITHIN).await, "the laptop's connection is closed");
    assert!(!closed_within(&mut stranger, Duration::from_millis(500)).await, "another user's stays open");
    // Its `$disconnect` forgot both.
    let deadline = Instant::now() + PUSH_WITHIN;
    while live.gateway.open_connections() != 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(live.gateway.open_connections(), 1);
}

#[tokio::test]
async fn ending_one_session_closes_its_connections_and_leaves_the_others_sessions_open() {
    let live = live().await;
    let user = sign_up(&live.app).await;
    let res =
        live.app.call(auth::login, request("POST", "/api/v1/auth/login", Some(json!({"email": user.email, "password": PASSWORD})))).await;
    let second_access = res.body["access_token"].as_str().unwrap().to_owned();
    let (mut first, mut second) = (live.connect(&user.access).await, live.connect(&second_access).await);
    let sessions = live.app.call_as(auth::list_sessions, &user.access, "GET", "/api/v1/auth/sessions", None).await;
    let other = sessions.body["sessions"].as_array().unwrap().iter().find(|s| s["current"] == false).expect("the second session").clone();
    let id = other["session_id"].as_str().unwrap();
    let res = live.app.call_as(auth::end_session, &user.access, "DELETE", &format!("/api/v1/auth/sessions/{id}"), None).await;
    assert_eq!(res.status, 204, "{}", res.raw);
    assert!(closed_within(&mut second, PUSH_WITHIN).await, "the ended session's connection is closed");
    assert!(!closed_within(&mut first, Duration::from_millis(500)).await, "the caller's own stays open");
}

#[tokio::test]
async fn a_ping_is_answered_pong_and_anything_else_unknown_action() {
    let live = live().await;
    let user = sign_up(&live.app).await;
    let mut socket = live.connect(&user.access).await;
    for _ in 0..2 {
        socket.send(Message::Text(r#"{"action":"ping"}"#.into())).await.unwrap();
        let (pong, _) = next_matching(&mut socket, PUSH_WITHIN, |_| true).await.expect("an answer");
        assert_eq!(pong, json!({"type": "pong"}));
    }
    for frame in [r#"{"action":"subscribe"}"#, "not json", r#"{"nothing":1}"#] {
        socket.send(Message::Text(frame.into())).await.unwrap();
        let (answer, _) = next_matching(&mut socket, PUSH_WITHIN, |_| true).await.expect("an answer");
        assert_eq!(answer, json!({"type": "error", "code": "unknown_action"}), "{frame}");
    }
}

// ---------------------------------------------------------------- Telegram

async fn webhook(app: &TestApp, secret: Option<&str>, update: Value) -> TestResponse {
    let mut req = request("POST", "/api/v1/telegram/webhook", Some(update));
    if let Some(secret) = secret {
        req.headers_mut().insert("x-telegram-bot-api-secret-token", secret.parse().unwrap());
    }
    app.call(l::telegram_webhook, req).await
}

async fn webhook_secret(app: &TestApp) -> String {
    app.state.telegram.webhook.get().await.unwrap().token.expose().to_owned()
}

fn start_update(chat_id: i64, text: &str) -> Value {
    json!({"update_id": 1, "message": {"message_id": 7, "chat": {"id": chat_id, "type": "private"}, "text": text}})
}

/// Links a Telegram chat to the holder of `token`.
async fn link(app: &TestApp, token: &str, chat_id: i64) {
    let res = app.call_as(l::telegram_link, token, "POST", "/api/v1/notifications/telegram/link", None).await;
    assert_eq!(res.status, 200, "{}", res.raw);
    let code = res.body["link_code"].as_str().unwrap().to_owned();
    assert!(res.body["bot_url"].as_str().unwrap().ends_with(&format!("?start={code}")), "{}", res.raw);
    let res = webhook(app, Some(&webhook_secret(app).await), start_update(chat_id, &format!("/start {code}"))).await;
    assert_eq!(res.status, 200, "{}", res.raw);
}

#[tokio::test]
async fn a_chat_links_once_per_code_the_webhook_needs_its_secret_and_ignores_what_it_does_not_understand() {
    let live = live().await;
    let app = &live.app;
    let user = sign_up(app).await;
    let res = app.call_as(l::get_notifications, &user.access, "GET", "/api/v1/notifications", None).await;
    assert_eq!(res.body["telegram"]["linked"], false, "{}", res.raw);
    assert_eq!(res.body["telegram"]["events"].as_array().unwrap().len(), 7, "all on by default: {}", res.raw);

    let res = app.call_as(l::telegram_link, &user.access, "POST", "/api/v1/notifications/telegram/link", None).await;
    let code = res.body["link_code"].as_str().unwrap().to_owned();
    assert!(res.body["expires_at"].is_string());
    let secret = webhook_secret(app).await;
    for wrong in [None, Some("wrong"), Some(&secret[..secret.len() - 1])] {
        let res = webhook(app, wrong, start_update(42, &format!("/start {code}"))).await;
        assert_eq!((res.status, res.code()), (401, "invalid_webhook_secret"), "{wrong:?}");
    }
    let res = webhook(app, Some(&secret), start_update(42, &format!("/start {code}"))).await;
    assert_eq!(res.status, 200, "{}", res.raw);
    assert_eq!(live.telegram.messages_to("42").len(), 1, "the chat is told it is linked");
    let res = app.call_as(l::get_notifications, &user.access, "GET", "/api/v1/notifications", None).await;
    assert_eq!(res.body["telegram"]["linked"], true);
    // The code is spent: another chat sending it links nothing.
    let res = webhook(app, Some(&secret), start_update(99, &format!("/start {code}"))).await;
    assert_eq!(res.status, 200);
    assert!(live.telegram.messages_to("99")[0].contains("not valid"), "{:?}", live.telegram.messages_to("99"));
    for update in [
        json!({"update_id": 2, "edited_message": {}}),
        json!({"update_id": 3, "message": {"chat": {"id": 5}, "text": "hello"}}),
        json!([1, 2]),
    ] {
        assert_eq!(webhook(app, Some(&secret), update.clone()).await.status, 200, "{update}");
    }
    // Unlinked, then linked again from another chat.
    let res = app.call_as(l::delete_telegram, &user.access, "DELETE", "/api/v1/notifications/telegram", None).await;
    assert_eq!(res.status, 204);
    let res = app.call_as(l::get_notifications, &user.access, "GET", "/api/v1/notifications", None).await;
    assert_eq!(res.body["telegram"]["linked"], false);
    link(app, &user.access, 43).await;
    let res = app.call_as(l::get_notifications, &user.access, "GET", "/api/v1/notifications", None).await;
    assert_eq!(res.body["telegram"]["linked"], true);
}

#[tokio::test]
async fn settings_keep_the_chosen_events_and_refuse_unknown_ones() {
    let live = live().await;
    let app = &live.app;
    let user = sign_up(app).await;
    let put = |events: Value| {
        let token = user.access.clone();
        async move { app.call_as(l::put_notifications, &token, "PUT", "/api/v1/notifications", Some(json!({"events": events}))).await }
    };
    let res = put(json!(["stop_loss", "fill", "stop_loss"])).await;
    assert_eq!(res.status, 200, "{}", res.raw);
    assert_eq!(res.body["telegram"]["events"], json!(["stop_loss", "fill"]));
    let res = put(json!([])).await;
    assert_eq!(res.body["telegram"]["events"], json!([]), "none at all is a choice");
    let res = put(json!(["margin_call"])).await;
    assert_eq!((res.status, res.code()), (422, "invalid_event"));
    let res = app.call_as(l::put_notifications, &user.access, "PUT", "/api/v1/notifications", Some(json!({"events": "fill"}))).await;
    assert_eq!((res.status, res.code()), (400, "invalid_request"));
    let res = app.call_as(l::get_notifications, &user.access, "GET", "/api/v1/notifications", None).await;
    assert_eq!(res.body["telegram"]["events"], json!([]), "the refusals changed nothing");
}

#[tokio::test]
async fn a_stop_loss_is_told_once_on_telegram_with_its_figures_and_an_event_switched_off_is_not() {
    let live = live().await;
    let app = &live.app;
    let user = sign_up(app).await;
    link(app, &user.access, 4242).await;
    let res = app
        .call_as(l::put_notifications, &user.access, "PUT", "/api/v1/notifications", Some(json!({"events": ["stop_loss", "take_profit"]})))
        .await;
    assert_eq!(res.status, 200);
    // Telegram answers the first send 429 with retry_after: it is honoured, and the message goes.
    live.telegram.state.lock().unwrap().rate_limit_once = true;
    start(app, &user.access).await;
    buy(app, &user.access, "0.1").await;
    app.set_mark("BTCUSDT", "63050").await;
    let report = shared::guardian::sweep(&app.state, Instant::now() + Duration::from_secs(60), &Default::default()).await;
    assert_eq!(report.closed.len(), 1, "{report:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let told = loop {
        let told: Vec<String> = live.telegram.messages_to("4242").into_iter().skip(1).collect();
        if !told.is_empty() || Instant::now() > deadline {
            break told;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(told.len(), 1, "the stop loss, once (no fill, no bot state): {told:?}");
    for part in ["BTCUSDT", "sell", "0.1", "63050", "-195", "stop loss"] {
        assert!(told[0].contains(part), "{part} in {:?}", told[0]);
    }
    // The stream delivering the same records again (a retried batch) tells nobody twice.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let batches: Vec<Value> = live.delivered.lock().unwrap().clone();
    assert!(!batches.is_empty());
    for batch in batches {
        let event: shared::live::stream::StreamEvent = serde_json::from_value(batch).unwrap();
        let report = shared::live::broadcast::handle(&app.state, &live.management, event).await.unwrap();
        assert_eq!(report.notified, 0, "{report:?}");
    }
    assert_eq!(live.telegram.messages_to("4242").len(), 2, "the link confirmation and the stop loss");
}
