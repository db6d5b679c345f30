//! The operators' API against DynamoDB Local, cluster-mode redis and moto: the role and its
//! two-factor rule, every user's bots from the guardian's index, an operator's stop, the kill
//! switch and the audit log, each through more than one cycle.

mod common;

use common::mfa::*;
use common::*;
use serde_json::{json, Value};
use shared::handlers::{admin as a, auth, trading as t};

async fn paper_app() -> TestApp {
    let app = spawn_app().await;
    app.set_mark("BTCUSDT", "65000").await;
    app.set_mark("ETHUSDT", "3200").await;
    app
}

fn users(app: &TestApp) -> shared::auth::store::UserStore<'_> {
    shared::auth::store::UserStore { client: app.dynamo(), table: &app.state.config.table_name }
}

/// What `make admin EMAIL=…` does (`ops grant-admin`): the role on both records of the account.
async fn set_roles(app: &TestApp, email: &str, roles: &[&str]) {
    let address = shared::auth::email::EmailAddress::parse(email).unwrap();
    let (form, creds) = users(app).find(&address).await.unwrap().expect("an account");
    let roles: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
    assert!(users(app).set_roles(&form, &creds.user_id, &roles).await.unwrap());
}

struct Operator {
    email: String,
    recovery_codes: Vec<String>,
    user_id: String,
    access: String,
}

/// A user granted the admin role, with two-factor on, signed in with it.
async fn operator(app: &TestApp) -> Operator {
    let user = sign_up(app).await;
    set_roles(app, &user.email, &["admin"]).await;
    let (authenticator, recovery_codes) = turn_on_two_factor(app, &user.access).await;
    let res = sign_in_with_code(app, &user.email, &authenticator.next()).await;
    assert_eq!(res.status, 200, "{}", res.raw);
    let access = res.body["access_token"].as_str().unwrap().to_owned();
    Operator { user_id: claims(&access)["sub"].as_str().unwrap().to_owned(), email: user.email, recovery_codes, access }
}

fn bot_config(symbol: &str) -> Value {
    json!({"symbol": symbol, "leverage": 10, "stop_loss_pct": "2", "max_position_notional": "20000"})
}

async fn start(app: &TestApp, token: &str, symbol: &str) {
    let res = app.call_as(t::start_bot, token, "POST", "/api/v1/bot/start", Some(bot_config(symbol))).await;
    assert_eq!(res.status, 200, "{}", res.raw);
}

async fn buy(app: &TestApp, token: &str, symbol: &str, size: &str) {
    let mut req = with_bearer(
        request("POST", "/api/v1/order/submit", Some(json!({"symbol": symbol, "side": "buy", "type": "market", "size": size}))),
        token,
    );
    req.headers_mut().insert("idempotency-key", uuid::Uuid::new_v4().to_string().parse().unwrap());
    let res = app.call(t::submit_order, req).await;
    assert_eq!(res.status, 201, "{}", res.raw);
}

async fn bots(app: &TestApp, token: &str, query: &str) -> TestResponse {
    app.call_as(a::list_bots, token, "GET", &format!("/api/v1/admin/bots{query}"), None).await
}

async fn admin_stop(app: &TestApp, token: &str, user_id: &str) -> TestResponse {
    app.call_as(a::stop_bot, token, "POST", &format!("/api/v1/admin/users/{user_id}/bot/stop"), None).await
}

async fn kill_switch(app: &TestApp, token: &str) -> TestResponse {
    app.call_as(a::get_kill_switch, token, "GET", "/api/v1/admin/kill-switch", None).await
}

async fn set_kill_switch(app: &TestApp, token: &str, body: Value) -> TestResponse {
    app.call_as(a::set_kill_switch, token, "PUT", "/api/v1/admin/kill-switch", Some(body)).await
}

async fn audit(app: &TestApp, token: &str, query: &str) -> TestResponse {
    app.call_as(a::audit, token, "GET", &format!("/api/v1/admin/audit{query}"), None).await
}

async fn refresh(app: &TestApp, token: &str) -> TestResponse {
    app.call(auth::refresh, request("POST", "/api/v1/auth/refresh", Some(json!({"refresh_token": token})))).await
}

fn user_id_of(access: &str) -> String {
    claims(access)["sub"].as_str().unwrap().to_owned()
}

// ---------------------------------------------------------------- the role

#[tokio::test]
async fn the_role_travels_in_every_token_of_the_session_and_admin_routes_also_need_two_factor() {
    let app = paper_app().await;
    let user = sign_up(&app).await;
    assert_eq!(claims(&user.access).get("roles"), None, "nobody is an admin by default");
    assert_eq!((kill_switch(&app, &user.access).await.status, kill_switch(&app, &user.access).await.code()), (403, "forbidden"));

    set_roles(&app, &user.email, &["admin"]).await;
    // The token signed in before the grant carries no role: the grant shows from the next sign-in.
    assert_eq!(kill_switch(&app, &user.access).await.code(), "forbidden");
    let res = app.call(auth::login, request("POST", "/api/v1/auth/login", Some(json!({"email": user.email, "password": PASSWORD})))).await;
    let password_only = res.body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(claims(&password_only)["roles"], json!(["admin"]));
    let res = kill_switch(&app, &password_only).await;
    assert_eq!((res.status, res.code()), (403, "mfa_required"), "{}", res.raw);

    let (authenticator, _) = turn_on_two_factor(&app, &password_only).await;
    let res = sign_in_with_code(&app, &user.email, &authenticator.next()).await;
    let (mut access, mut refresh_token) =
        (res.body["access_token"].as_str().unwrap().to_owned(), res.body["refresh_token"].as_str().unwrap().to_owned());
    // Refreshed three times over, the session keeps its role and its second factor.
    for round in 0..3 {
        assert_eq!((claims(&access)["roles"].clone(), claims(&access)["amr"].clone()), (json!(["admin"]), json!(["pwd", "otp"])));
        let res = kill_switch(&app, &access).await;
        assert_eq!(res.status, 200, "round {round}: {}", res.raw);
        let rotated = refresh(&app, &refresh_token).await;
        assert_eq!(rotated.status, 200, "{}", rotated.raw);
        access = rotated.body["access_token"].as_str().unwrap().to_owned();
        refresh_token = rotated.body["refresh_token"].as_str().unwrap().to_owned();
    }
    // A role taken away ends admin access at once, whatever the token still says.
    set_roles(&app, &user.email, &[]).await;
    assert_eq!(claims(&access)["roles"], json!(["admin"]));
    assert_eq!((kill_switch(&app, &access).await.status, kill_switch(&app, &access).await.code()), (403, "forbidden"));
    // And given back, a global logout still ends it.
    set_roles(&app, &user.email, &["admin"]).await;
    assert_eq!(kill_switch(&app, &access).await.status, 200);
    let res = app
        .call(auth::logout, request("POST", "/api/v1/auth/logout", Some(json!({"refresh_token": refresh_token, "scope": "global"}))))
        .await;
    assert_eq!(res.status, 204, "{}", res.raw);
    assert_eq!((kill_switch(&app, &access).await.status, kill_switch(&app, &access).await.code()), (401, "invalid_token"));
}

#[tokio::test]
async fn turning_two_factor_off_ends_admin_access_for_sessions_signed_in_with_it() {
    let app = paper_app().await;
    let op = operator(&app).await;
    assert_eq!(kill_switch(&app, &op.access).await.status, 200);
    let body = json!({"password": PASSWORD, "code": op.recovery_codes[0]});
    let res = app.call_as(auth::totp_disable, &op.access, "POST", "/api/v1/auth/mfa/totp/disable", Some(body)).await;
    assert_eq!(res.status, 204, "{}", res.raw);
    assert_eq!(claims(&op.access)["amr"], json!(["pwd", "otp"]), "the token still says otp");
    let res = kill_switch(&app, &op.access).await;
    assert_eq!((res.status, res.code()), (403, "mfa_required"), "{}", res.raw);
}

#[tokio::test]
async fn a_role_written_into_a_refresh_token_by_hand_matches_no_session() {
    let app = paper_app().await;
    let user = sign_up(&app).await;
    // `rt1.<user>.<family>.<created>.<secret>` with `admin.` slipped in: its hash is no stored one.
    let mut parts: Vec<&str> = user.refresh.split('.').collect();
    parts.insert(4, "admin");
    let forged = parts.join(".");
    let res = refresh(&app, &forged).await;
    assert_eq!((res.status, res.code()), (401, "invalid_refresh_token"), "{}", res.raw);
    assert_eq!(refresh(&app, &user.refresh).await.status, 200, "the real one still works");
}

#[tokio::test]
async fn no_admin_route_answers_a_missing_or_bad_token_and_none_of_them_writes_the_audit_log() {
    let app = paper_app().await;
    for token in ["", "not-a-jwt"] {
        assert_eq!(bots(&app, token, "").await.status, 401);
        assert_eq!(admin_stop(&app, token, &uuid::Uuid::new_v4().to_string()).await.status, 401);
        assert_eq!(set_kill_switch(&app, token, json!({"enabled": true, "reason": "x"})).await.status, 401);
        assert_eq!(audit(&app, token, "").await.status, 401);
    }
    let op = operator(&app).await;
    let log = audit(&app, &op.access, "").await;
    assert_eq!(log.body["entries"].as_array().unwrap().len(), 0, "only this read, written after it answers: {}", log.raw);
    assert!(!app.trading().kill_switch_on().await.unwrap());
}

// ---------------------------------------------------------------- bots

#[tokio::test]
async fn the_bot_list_pages_through_every_running_and_stopping_bot_with_owner_positions_and_pnl() {
    let app = paper_app().await;
    let op = operator(&app).await;
    let mut traders = Vec::new();
    for i in 0..5 {
        let trader = sign_up(&app).await;
        start(&app, &trader.access, if i % 2 == 0 { "BTCUSDT" } else { "ETHUSDT" }).await;
        traders.push(trader);
    }
    buy(&app, &traders[0].access, "BTCUSDT", "0.1").await;
    app.set_mark("BTCUSDT", "66000").await;
    // A stopped bot is not listed.
    let stopped = app.call_as(t::stop_bot, &traders[4].access, "POST", "/api/v1/bot/stop", None).await;
    assert_eq!(stopped.status, 200, "{}", stopped.raw);

    let mut seen: Vec<Value> = Vec::new();
    let mut query = "?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let res = bots(&app, &op.access, &query).await;
        assert_eq!(res.status, 200, "{}", res.raw);
        let page = res.body["bots"].as_array().unwrap();
        assert!(page.len() <= 2, "{}", res.raw);
        seen.extend(page.iter().cloned());
        pages += 1;
        match res.body["next_cursor"].as_str() {
            Some(cursor) => query = format!("?limit=2&cursor={cursor}"),
            None => break,
        }
        assert!(pages < 10, "the pages end");
    }
    let mut ids: Vec<String> = seen.iter().map(|b| b["user_id"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    let mut running: Vec<String> = traders[..4].iter().map(|t| user_id_of(&t.access)).collect();
    running.sort();
    assert_eq!(ids, running, "each running bot once, over {pages} pages");
    let holder = seen.iter().find(|b| b["user_id"] == user_id_of(&traders[0].access).as_str()).unwrap();
    assert_eq!(holder["email"], traders[0].email.as_str());
    assert_eq!(
        (holder["symbol"].clone(), holder["state"].clone(), holder["exchange"].clone()),
        (json!("BTCUSDT"), json!("running"), json!("paper"))
    );
    assert_eq!(holder["positions"].as_array().unwrap().len(), 1, "{holder}");
    assert_eq!(holder["positions"][0]["mark_price"], "66000");
    assert_eq!(holder["unrealized_pnl"], "100", "(66000 - 65000) x 0.1: {holder}");
    assert!(holder["updated_at"].is_string());
    let flat = seen.iter().find(|b| b["user_id"] == user_id_of(&traders[1].access).as_str()).unwrap();
    assert_eq!((flat["positions"].clone(), flat["unrealized_pnl"].clone()), (json!([]), json!("0")));

    let res = bots(&app, &op.access, "?state=running").await;
    assert_eq!(res.body["bots"].as_array().unwrap().len(), 4, "{}", res.raw);
    let res = bots(&app, &op.access, "?state=stopping").await;
    assert_eq!(res.body["bots"], json!([]), "{}", res.raw);
    let res = bots(&app, &op.access, "?state=stopped").await;
    assert_eq!((res.status, res.code()), (400, "invalid_state"));
    let first = bots(&app, &op.access, "?limit=1").await;
    let cursor = first.body["next_cursor"].as_str().unwrap();
    let res = bots(&app, &op.access, &format!("?limit=1&state=running&cursor={cursor}")).await;
    assert_eq!((res.status, res.code()), (400, "invalid_cursor"), "a cursor serves the filter it was given for");
    let res = bots(&app, &op.access, "?limit=0").await;
    assert_eq!((res.status, res.code()), (400, "invalid_limit"));
}

// ---------------------------------------------------------------- stop

#[tokio::test]
async fn an_operator_stops_a_users_bot_twice_over_closing_with_admin_stop_and_the_user_starts_again_between() {
    let app = paper_app().await;
    let op = operator(&app).await;
    let trader = sign_up(&app).await;
    let trader_id = user_id_of(&trader.access);
    for cycle in 1..=2 {
        start(&app, &trader.access, "BTCUSDT").await;
        buy(&app, &trader.access, "BTCUSDT", "0.01").await;
        let res = admin_stop(&app, &op.access, &trader_id).await;
        assert_eq!(res.status, 200, "cycle {cycle}: {}", res.raw);
        assert_eq!((res.body["is_running"].clone(), res.body["state"].clone()), (json!(false), json!("stopped")));
        let closed = res.body["closed_positions"].as_array().unwrap();
        assert_eq!((closed.len(), closed[0]["size"].clone()), (1, json!("0.01")), "cycle {cycle}: {}", res.raw);
        let status = app.call_as(t::status, &trader.access, "GET", "/api/v1/bot/status", None).await;
        assert_eq!((status.body["state"].clone(), status.body["stop_reason"].clone()), (json!("stopped"), json!("admin_stop")));
        assert_eq!(status.body["positions"], json!([]), "flat: {}", status.raw);
        // Asked again, the stop finds nothing left to do.
        let again = admin_stop(&app, &op.access, &trader_id).await;
        assert_eq!((again.status, again.body["closed_positions"].clone()), (200, json!([])), "{}", again.raw);
    }
    let orders = app.call_as(t::list_orders, &trader.access, "GET", "/api/v1/orders", None).await;
    let reasons: Vec<&str> = orders.body["orders"].as_array().unwrap().iter().map(|o| o["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, ["admin_stop", "manual", "admin_stop", "manual"], "{}", orders.raw);
    // A user with no bot at all answers as stopped; nobody answers 404.
    let idle = sign_up(&app).await;
    let res = admin_stop(&app, &op.access, &user_id_of(&idle.access)).await;
    assert_eq!((res.status, res.body["state"].clone()), (200, json!("stopped")), "{}", res.raw);
    for nobody in [uuid::Uuid::new_v4().to_string(), "not-an-id".to_owned(), "x".repeat(2000)] {
        let res = admin_stop(&app, &op.access, &nobody).await;
        assert_eq!((res.status, res.code()), (404, "user_not_found"), "{}", res.raw);
    }
}

#[tokio::test]
async fn nobody_but_an_operator_with_two_factor_stops_another_users_bot() {
    let app = paper_app().await;
    let trader = sign_up(&app).await;
    start(&app, &trader.access, "BTCUSDT").await;
    let other = sign_up(&app).await;
    let res = admin_stop(&app, &other.access, &user_id_of(&trader.access)).await;
    assert_eq!((res.status, res.code()), (403, "forbidden"));
    let status = app.call_as(t::status, &trader.access, "GET", "/api/v1/bot/status", None).await;
    assert_eq!(status.body["state"], "running", "untouched");
}

// ---------------------------------------------------------------- kill switch

#[tokio::test]
async fn the_kill_switch_an_operator_sets_is_the_one_make_kill_switch_sets_on_and_off_twice() {
    let app = paper_app().await;
    let op = operator(&app).await;
    let trader = sign_up(&app).await;
    let res = kill_switch(&app, &op.access).await;
    assert_eq!(res.body, json!({"enabled": false, "reason": null, "changed_by": null, "changed_at": null}), "never set: off");
    for cycle in 1..=2 {
        let res = set_kill_switch(&app, &op.access, json!({"enabled": true, "reason": format!("exchange incident {cycle}")})).await;
        assert_eq!(res.status, 200, "{}", res.raw);
        assert_eq!((res.body["enabled"].clone(), res.body["reason"].clone()), (json!(true), json!(format!("exchange incident {cycle}"))));
        assert_eq!(res.body["changed_by"], op.email.as_str());
        assert!(res.body["changed_at"].is_string());
        assert_eq!(kill_switch(&app, &op.access).await.body, res.body, "GET shows what PUT set");
        // The same switch every trading path reads.
        let started = app.call_as(t::start_bot, &trader.access, "POST", "/api/v1/bot/start", Some(bot_config("BTCUSDT"))).await;
        assert_eq!((started.status, started.code()), (503, "trading_halted"), "{}", started.raw);
        // `make kill-switch STATE=off` turns it off; the API sees it.
        app.trading().set_kill_switch(false, "make kill-switch STATE=off", "ops:tester").await.unwrap();
        let res = kill_switch(&app, &op.access).await;
        assert_eq!((res.body["enabled"].clone(), res.body["changed_by"].clone()), (json!(false), json!("ops:tester")));
        start(&app, &trader.access, "BTCUSDT").await;
        let stopped = app.call_as(t::stop_bot, &trader.access, "POST", "/api/v1/bot/stop", None).await;
        assert_eq!(stopped.status, 200);
    }
    for (body, expected) in [
        (json!({"enabled": true, "reason": "  "}), (422, "invalid_reason")),
        (json!({"enabled": true, "reason": "x".repeat(501)}), (422, "invalid_reason")),
        (json!({"enabled": true, "reason": "line\nbreak"}), (422, "invalid_reason")),
        (json!({"enabled": true}), (400, "invalid_request")),
        (json!({"enabled": "yes", "reason": "x"}), (400, "invalid_request")),
        (json!({"enabled": true, "reason": "x", "extra": 1}), (400, "invalid_request")),
    ] {
        let res = set_kill_switch(&app, &op.access, body.clone()).await;
        assert_eq!((res.status, res.code()), expected, "{body}: {}", res.raw);
    }
    assert!(!app.trading().kill_switch_on().await.unwrap(), "no refused change moved it");
}

// ---------------------------------------------------------------- audit

#[tokio::test]
async fn every_admin_call_verified_or_refused_is_in_the_audit_log_newest_first_and_pages() {
    let app = paper_app().await;
    let op = operator(&app).await;
    let stranger = sign_up(&app).await;
    let trader = sign_up(&app).await;
    start(&app, &trader.access, "BTCUSDT").await;

    assert_eq!(set_kill_switch(&app, &stranger.access, json!({"enabled": true, "reason": "mine"})).await.code(), "forbidden");
    assert_eq!(set_kill_switch(&app, &op.access, json!({"enabled": true, "reason": "drill"})).await.status, 200);
    assert_eq!(set_kill_switch(&app, &op.access, json!({"enabled": false, "reason": ""})).await.code(), "invalid_reason");
    assert_eq!(admin_stop(&app, &op.access, &user_id_of(&trader.access)).await.status, 200);
    assert_eq!(admin_stop(&app, &op.access, &uuid::Uuid::new_v4().to_string()).await.code(), "user_not_found");
    assert_eq!(bots(&app, &op.access, "").await.status, 200);

    let res = audit(&app, &op.access, "").await;
    assert_eq!(res.status, 200, "{}", res.raw);
    let entries = res.body["entries"].as_array().unwrap();
    let summary: Vec<(String, String, String)> = entries
        .iter()
        .map(|e| {
            (e["actor"].as_str().unwrap().to_owned(), e["action"].as_str().unwrap().to_owned(), e["result"].as_str().unwrap().to_owned())
        })
        .collect();
    let (me, them) = (op.user_id.clone(), user_id_of(&stranger.access));
    let expected: Vec<(String, String, String)> = [
        (&me, "bots.list", "ok"),
        (&me, "bot.stop", "user_not_found"),
        (&me, "bot.stop", "ok"),
        (&me, "kill_switch.disable", "invalid_reason"),
        (&me, "kill_switch.enable", "ok"),
        (&them, "kill_switch.enable", "forbidden"),
    ]
    .iter()
    .map(|(a, b, c)| ((*a).clone(), (*b).to_owned(), (*c).to_owned()))
    .collect();
    assert_eq!(summary, expected, "{}", res.raw);
    assert_eq!(entries[2]["target"], user_id_of(&trader.access).as_str());
    assert_eq!(entries[4]["target"], "kill_switch");
    assert!(entries.iter().all(|e| e["at"].is_string() && e["request_id"].as_str().is_some_and(|id| !id.is_empty())), "{}", res.raw);
    let mut ids: Vec<&str> = entries.iter().map(|e| e["request_id"].as_str().unwrap()).collect();
    ids.dedup();
    assert_eq!(ids.len(), entries.len(), "one entry per request");

    // Paged one at a time, the log reads the same (with this listing's own entry first).
    let mut paged = Vec::new();
    let mut query = "?limit=1".to_owned();
    loop {
        let res = audit(&app, &op.access, &query).await;
        assert_eq!(res.status, 200, "{}", res.raw);
        paged.extend(res.body["entries"].as_array().unwrap().iter().map(|e| e["request_id"].as_str().unwrap().to_owned()));
        match res.body["next_cursor"].as_str() {
            Some(cursor) => query = format!("?limit=1&cursor={cursor}"),
            None => break,
        }
        assert!(paged.len() < 20);
    }
    assert_eq!(paged.len(), entries.len() + 1, "the first listing's own entry is read too");
    assert_eq!(paged[1..], ids.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()[..]);
    let res = audit(&app, &op.access, "?cursor=forged").await;
    assert_eq!((res.status, res.code()), (400, "invalid_cursor"));
}
