//! The trader's history against the local stack: the order list, fills and the PnL summary, with
//! their paging, cursors and retention.

mod common;

use common::*;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use shared::handlers::trading as t;
use shared::trading::exchange::{Exchange, OrderGuard};
use shared::trading::model::{OrderIntent, OrderType, Side};
use std::collections::HashSet;

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

async fn user_id_of(app: &TestApp, token: &str) -> String {
    let me = app.call_as(shared::handlers::auth::me, token, "GET", "/api/v1/users/me", None).await;
    me.body["id"].as_str().unwrap().to_owned()
}

fn intent(symbol: &str, side: Side, size: &str, reduce_only: bool, id: &str, reason: &str) -> OrderIntent {
    OrderIntent {
        symbol: symbol.into(),
        side,
        order_type: OrderType::Market,
        size: d(size),
        price: None,
        reduce_only,
        client_order_id: id.into(),
        leverage: 10,
        reason: Some(reason.into()),
    }
}

/// Records and fills one paper market order at `mark`, through the paper exchange's own path.
async fn paper_fill(app: &TestApp, user_id: &str, intent: &OrderIntent, mark: &str) {
    assert!(app.trading().record_pending_order(user_id, intent).await.unwrap());
    let snapshot = app.trading().snapshot(user_id).await.unwrap();
    let marks = std::collections::HashMap::from([(intent.symbol.clone(), d(mark))]);
    let exchange = shared::trading::service::paper_exchange(&app.state, user_id, marks, snapshot).await.unwrap();
    let fill = exchange.place_order(intent, OrderGuard::default()).await.unwrap();
    assert!(fill.filled_size > Decimal::ZERO || intent.reduce_only, "{fill:?}");
}

async fn orders(app: &TestApp, token: &str, query: &str) -> TestResponse {
    app.call_as(t::list_orders, token, "GET", &format!("/api/v1/orders{query}"), None).await
}

async fn fills(app: &TestApp, token: &str, query: &str) -> TestResponse {
    app.call_as(t::list_fills, token, "GET", &format!("/api/v1/fills{query}"), None).await
}

async fn pnl(app: &TestApp, token: &str, query: &str) -> TestResponse {
    app.call_as(t::pnl, token, "GET", &format!("/api/v1/pnl{query}"), None).await
}

/// Every page of a list route, `limit` at a time; `between` runs after each page.
async fn every_page<F, Fut>(app: &TestApp, token: &str, route: &str, query: &str, key: &str, mut between: F) -> Vec<Value>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0.. {
        let cursor_part = cursor.as_ref().map(|c| format!("&cursor={c}")).unwrap_or_default();
        let q = format!("?{query}{cursor_part}");
        let res = match route {
            "orders" => orders(app, token, &q).await,
            _ => fills(app, token, &q).await,
        };
        assert_eq!(res.status, 200, "page {page}: {}", res.raw);
        all.extend(res.body[key].as_array().unwrap().iter().cloned());
        between(page).await;
        match res.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        assert!(page < 1000, "paging does not end");
    }
    all
}

#[tokio::test]
async fn paging_250_orders_7_at_a_time_while_more_arrive_loses_and_repeats_none() {
    let app = spawn_app().await;
    let token = access_token(&app).await;
    let user_id = user_id_of(&app, &token).await;
    let symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT"];
    let mut first = Vec::new();
    for i in 0..250 {
        let id = format!("order-{i:03}");
        app.trading().record_pending_order(&user_id, &intent(symbols[i % 3], Side::Buy, "0.01", false, &id, "manual")).await.unwrap();
        first.push(id);
    }
    let arrived = std::cell::RefCell::new(Vec::new());
    let listed = every_page(&app, &token, "orders", "limit=7", "orders", |page| {
        let id = format!("late-{page:03}");
        arrived.borrow_mut().push(id.clone());
        let app = &app;
        let user_id = user_id.clone();
        async move {
            app.trading().record_pending_order(&user_id, &intent("BTCUSDT", Side::Sell, "0.01", false, &id, "manual")).await.unwrap();
        }
    })
    .await;
    let ids: Vec<&str> = listed.iter().map(|o| o["client_order_id"].as_str().unwrap()).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "an order was listed twice");
    for id in &first {
        assert!(unique.contains(id.as_str()), "{id} was lost");
    }
    // Newest first, and what arrived while paging is newer than every page after it began.
    let created: Vec<&str> = listed.iter().map(|o| o["created_at"].as_str().unwrap()).collect();
    assert!(created.windows(2).all(|w| w[0] >= w[1]), "not newest first");
    assert!(ids.iter().all(|id| id.starts_with("order-")), "an order that arrived while paging showed up in a later page");
    assert_eq!(listed.len(), 250);
    assert_eq!(orders(&app, &token, "?limit=100").await.body["orders"][0]["client_order_id"], arrived.borrow().last().unwrap().as_str());

    // One symbol's, and the open ones: a final transition takes an order off the open list.
    let btc = every_page(&app, &token, "orders", "symbol=btcusdt&limit=30", "orders", |_| async {}).await;
    assert!(btc.iter().all(|o| o["symbol"] == "BTCUSDT"));
    assert_eq!(btc.len(), 84 + arrived.borrow().len());
    let filled = shared::trading::model::OrderFill {
        order_id: "paper-order-000".into(),
        status: shared::trading::model::OrderStatus::Filled,
        filled_size: d("0.01"),
        avg_price: Some(d("65000")),
        fee: d("0.39"),
        realized_pnl: Decimal::ZERO,
    };
    for id in ["order-000", "order-001"] {
        app.trading().complete_order(&user_id, id, &filled).await.unwrap();
    }
    let open = every_page(&app, &token, "orders", "status=open&limit=9", "orders", |_| async {}).await;
    let open_ids: HashSet<&str> = open.iter().map(|o| o["client_order_id"].as_str().unwrap()).collect();
    assert_eq!(open_ids.len(), open.len(), "an open order was listed twice");
    assert_eq!(open.len(), 250 + arrived.borrow().len() - 2);
    assert!(!open_ids.contains("order-000") && !open_ids.contains("order-001"));
    let open_btc = every_page(&app, &token, "orders", "status=open&symbol=BTCUSDT&limit=5", "orders", |_| async {}).await;
    assert!(open_btc.iter().all(|o| o["symbol"] == "BTCUSDT" && o["status"] == "pending"));
    assert_eq!(open_btc.len(), 84 + arrived.borrow().len() - 1, "order-000 was BTCUSDT and is filled");
}

#[tokio::test]
async fn a_cursor_works_only_for_the_caller_route_and_filters_it_was_given_for() {
    let app = spawn_app().await;
    let token = access_token(&app).await;
    let other = access_token(&app).await;
    let user_id = user_id_of(&app, &token).await;
    for i in 0..5 {
        app.trading()
            .record_pending_order(&user_id, &intent("BTCUSDT", Side::Buy, "0.01", false, &format!("c-{i}"), "manual"))
            .await
            .unwrap();
    }
    let page = orders(&app, &token, "?limit=2").await;
    let cursor = page.body["next_cursor"].as_str().unwrap().to_owned();
    assert_eq!(orders(&app, &token, &format!("?limit=2&cursor={cursor}")).await.status, 200);
    let mut tampered = cursor.clone().into_bytes();
    let last = tampered.len() - 3;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for (who, query) in [
        (&token, format!("?limit=2&cursor={tampered}")),
        (&token, "?cursor=not-a-cursor".to_owned()),
        (&token, format!("?limit=2&cursor={cursor}x")),
        // Another filter, another route, another user.
        (&token, format!("?status=open&limit=2&cursor={cursor}")),
        (&token, format!("?symbol=BTCUSDT&cursor={cursor}")),
        (&other, format!("?limit=2&cursor={cursor}")),
    ] {
        let res = orders(&app, who, &query).await;
        assert_eq!((res.status, res.code()), (400, "invalid_cursor"), "{query}: {}", res.raw);
    }
    let res = fills(&app, &token, &format!("?cursor={cursor}")).await;
    assert_eq!((res.status, res.code()), (400, "invalid_cursor"), "an order cursor is no fill cursor");
    for i in 0..3 {
        paper_fill(&app, &user_id, &intent("BTCUSDT", Side::Buy, "0.01", false, &format!("f-{i}"), "manual"), "65000").await;
    }
    let page = fills(&app, &token, "?limit=2&from=2026-01-01T00:00:00Z").await;
    let fill_cursor = page.body["next_cursor"].as_str().unwrap().to_owned();
    let next = fills(&app, &token, &format!("?limit=2&from=2026-01-01T00:00:00Z&cursor={fill_cursor}")).await;
    assert_eq!((next.status, next.body["fills"].as_array().unwrap().len()), (200, 1), "{}", next.raw);
    for (who, query) in [
        (&token, format!("?limit=2&cursor={fill_cursor}")),
        (&token, format!("?limit=2&from=2026-01-01T00:00:00Z&symbol=BTCUSDT&cursor={fill_cursor}")),
        (&other, format!("?limit=2&from=2026-01-01T00:00:00Z&cursor={fill_cursor}")),
    ] {
        let res = fills(&app, who, &query).await;
        assert_eq!((res.status, res.code()), (400, "invalid_cursor"), "{query}: {}", res.raw);
    }
    let res = orders(&app, &token, &format!("?cursor={fill_cursor}")).await;
    assert_eq!((res.status, res.code()), (400, "invalid_cursor"), "a fill cursor is no order cursor");
    for (query, code) in [
        ("?limit=0", "invalid_limit"),
        ("?limit=101", "invalid_limit"),
        ("?limit=ten", "invalid_limit"),
        ("?status=closed", "invalid_status"),
        ("?symbol=BTC-USDT", "invalid_symbol"),
        ("?limt=5", "invalid_request"),
        ("?limit=5&limit=6", "invalid_request"),
    ] {
        let res = orders(&app, &token, query).await;
        assert_eq!((res.status, res.code()), (400, code), "{query}: {}", res.raw);
    }
    let res = fills(&app, &token, "?from=2026-12-02T00:00:00Z&to=2026-12-01T00:00:00Z").await;
    assert_eq!((res.status, res.code()), (422, "invalid_range"));
    let res = fills(&app, &token, "?from=yesterday").await;
    assert_eq!((res.status, res.code()), (400, "invalid_time"));
    let res = pnl(&app, &token, "?from=2024-01-01T00:00:00Z&to=2026-01-01T00:00:00Z").await;
    assert_eq!((res.status, res.code()), (422, "range_too_large"));
}

#[tokio::test]
async fn someone_elses_orders_and_fills_are_not_the_callers() {
    let app = spawn_app().await;
    app.set_mark("BTCUSDT", "65000").await;
    let owner = access_token(&app).await;
    let stranger = access_token(&app).await;
    let owner_id = user_id_of(&app, &owner).await;
    paper_fill(&app, &owner_id, &intent("BTCUSDT", Side::Buy, "0.01", false, "mine-1", "manual"), "65000").await;
    assert_eq!(orders(&app, &owner, "").await.body["orders"].as_array().unwrap().len(), 1);
    assert_eq!(fills(&app, &owner, "").await.body["fills"].as_array().unwrap().len(), 1);
    assert_eq!(orders(&app, &stranger, "").await.body, json!({"orders": [], "next_cursor": null}));
    assert_eq!(orders(&app, &stranger, "?status=open").await.body, json!({"orders": [], "next_cursor": null}));
    assert_eq!(fills(&app, &stranger, "").await.body, json!({"fills": [], "next_cursor": null}));
    for id in ["mine-1", "paper-mine-1"] {
        let res = app.call_as(t::get_order, &stranger, "GET", &format!("/api/v1/orders/{id}"), None).await;
        assert_eq!((res.status, res.code()), (404, "order_not_found"));
        let res = app.call_as(t::cancel_order, &stranger, "DELETE", &format!("/api/v1/orders/{id}"), None).await;
        assert_eq!((res.status, res.code()), (404, "order_not_found"));
    }
    let res = pnl(&app, &stranger, "").await;
    assert_eq!((res.status, res.body["realized_pnl"].as_str(), res.body["trades"].as_u64()), (200, Some("0"), Some(0)), "{}", res.raw);
}

#[tokio::test]
async fn the_pnl_summary_adds_up_to_the_fills_over_any_range_and_ends_at_the_accounts_equity() {
    let app = spawn_app().await;
    let token = access_token(&app).await;
    let user_id = user_id_of(&app, &token).await;
    let symbols = [("BTCUSDT", 65000i64, "0.01"), ("ETHUSDT", 3200, "0.1"), ("SOLUSDT", 150, "1")];
    let mut marks = std::collections::HashMap::new();
    // 70 round trips per symbol, each an open and a close at a price that wanders: 210+ fills,
    // winners and losers, each with a fee.
    let mut n = 0;
    for round in 0..35 {
        for (symbol, base, size) in symbols {
            let step = |k: i64| Decimal::from(base) * (Decimal::ONE + Decimal::new(((round * 7 + k) % 11) - 5, 3));
            let (open, close) = (step(0), step(3));
            let side = if round % 2 == 0 { Side::Buy } else { Side::Sell };
            let closing = if side == Side::Buy { Side::Sell } else { Side::Buy };
            paper_fill(&app, &user_id, &intent(symbol, side, size, false, &format!("o-{n}"), "manual"), &open.to_string()).await;
            paper_fill(&app, &user_id, &intent(symbol, closing, size, true, &format!("c-{n}"), "manual_close"), &close.to_string()).await;
            marks.insert(symbol, close);
            n += 1;
        }
    }
    // A position still open at the end: the equity counts its unrealized PnL.
    paper_fill(&app, &user_id, &intent("BTCUSDT", Side::Buy, "0.02", false, "still-open", "manual"), "65000").await;
    app.set_mark("BTCUSDT", "65500").await;

    let all = every_page(&app, &token, "fills", "limit=100", "fills", |_| async {}).await;
    assert_eq!(all.len(), 211);
    let ids: HashSet<&str> = all.iter().map(|f| f["fill_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), all.len(), "a fill was listed twice");
    let sum = |fills: &[Value], field: &str| -> Decimal { fills.iter().map(|f| d(f[field].as_str().unwrap())).sum() };
    let summary = pnl(&app, &token, "").await;
    assert_eq!(summary.status, 200, "{}", summary.raw);
    assert_eq!(d(summary.body["realized_pnl"].as_str().unwrap()), sum(&all, "realized_pnl"));
    assert_eq!(d(summary.body["fees"].as_str().unwrap()), sum(&all, "fee"));
    assert_eq!(summary.body["trades"], 105);
    let (wins, losses) = (summary.body["wins"].as_u64().unwrap(), summary.body["losses"].as_u64().unwrap());
    assert!(wins > 0 && losses > 0 && wins + losses == 105, "{wins} wins, {losses} losses");
    let account = app.call_as(t::account, &token, "GET", "/api/v1/account", None).await;
    let series = summary.body["series"].as_array().unwrap();
    assert_eq!(series.len(), 30);
    assert_eq!(series.last().unwrap()["equity"], account.body["equity"], "{}", account.raw);
    let start = d(&app.state.config.paper_start_balance.to_string());
    let expected_balance = start + sum(&all, "realized_pnl") - sum(&all, "fee");
    assert_eq!(d(series[0]["equity"].as_str().unwrap()), start, "the day before any fill is the start balance");
    assert_eq!(d(account.body["equity"].as_str().unwrap()) - d(account.body["unrealized_pnl"].as_str().unwrap()), expected_balance);

    // A range inside the history: the fills of that range, listed by the fill route, add up too.
    let times: Vec<&str> = all.iter().map(|f| f["filled_at"].as_str().unwrap()).collect();
    let (to, from) = (times[40], times[170]);
    let query = format!("from={from}&to={to}");
    let part = every_page(&app, &token, "fills", &format!("{query}&limit=13"), "fills", |_| async {}).await;
    assert_eq!(part.len(), 131);
    let summary = pnl(&app, &token, &format!("?{query}")).await;
    assert_eq!(d(summary.body["realized_pnl"].as_str().unwrap()), sum(&part, "realized_pnl"));
    assert_eq!(d(summary.body["fees"].as_str().unwrap()), sum(&part, "fee"));
    // One symbol's fills are that symbol's only.
    let eth = every_page(&app, &token, "fills", "symbol=ETHUSDT&limit=50", "fills", |_| async {}).await;
    assert_eq!(eth.len(), 70);
    assert!(eth.iter().all(|f| f["symbol"] == "ETHUSDT"));
    let _ = marks;
}

#[tokio::test]
async fn every_paper_fill_is_in_the_history_with_its_reason_including_the_guardians_and_the_stops() {
    let app = spawn_app().await;
    app.set_mark("BTCUSDT", "65000").await;
    let token = access_token(&app).await;
    let config = json!({"symbol": "BTCUSDT", "leverage": 10, "stop_loss_pct": "2", "max_position_notional": "20000"});
    for cycle in 0..2 {
        assert_eq!(app.call_as(t::start_bot, &token, "POST", "/api/v1/bot/start", Some(config.clone())).await.status, 200);
        let order = json!({"symbol": "BTCUSDT", "side": "buy", "type": "market", "size": "0.01"});
        let mut req = with_bearer(request("POST", "/api/v1/order/submit", Some(order)), &token);
        req.headers_mut().insert("idempotency-key", uuid::Uuid::new_v4().to_string().parse().unwrap());
        assert_eq!(app.call(t::submit_order, req).await.status, 201);
        if cycle == 0 {
            // The stop loss fires at the guardian's next sweep.
            app.set_mark("BTCUSDT", "63500").await;
            shared::guardian::sweep(&app.state, std::time::Instant::now() + std::time::Duration::from_secs(60), &Default::default()).await;
            app.set_mark("BTCUSDT", "65000").await;
        }
        assert_eq!(app.call_as(t::stop_bot, &token, "POST", "/api/v1/bot/stop", None).await.status, 200);
    }
    let listed = fills(&app, &token, "").await;
    let reasons: Vec<&str> = listed.body["fills"].as_array().unwrap().iter().map(|f| f["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, ["bot_stop", "manual", "stop_loss", "manual"], "{}", listed.raw);
    let stop_loss = &listed.body["fills"][2];
    assert_eq!((stop_loss["side"].as_str(), stop_loss["price"].as_str()), (Some("sell"), Some("63500")));
    assert!(d(stop_loss["realized_pnl"].as_str().unwrap()) < Decimal::ZERO && d(stop_loss["fee"].as_str().unwrap()) > Decimal::ZERO);
    let listed_orders = orders(&app, &token, "").await;
    let order_reasons: Vec<&str> = listed_orders.body["orders"].as_array().unwrap().iter().map(|o| o["reason"].as_str().unwrap()).collect();
    assert_eq!(order_reasons, ["bot_stop", "manual", "stop_loss", "manual"]);
    assert_eq!(orders(&app, &token, "?status=open").await.body["orders"], json!([]), "every order ended");
}

#[tokio::test]
async fn order_and_fill_items_expire_after_the_configured_retention() {
    for (setting, days) in [(None, 400i64), (Some("30"), 30)] {
        let overrides: Vec<(&str, String)> = setting.map(|s| ("HISTORY_RETENTION_DAYS", s.to_owned())).into_iter().collect();
        let app = spawn_app_with(&overrides).await;
        let token = access_token(&app).await;
        let user_id = user_id_of(&app, &token).await;
        paper_fill(&app, &user_id, &intent("BTCUSDT", Side::Buy, "0.01", false, "kept", "manual"), "65000").await;
        let now = chrono::Utc::now().timestamp();
        for partition in [shared::keys::order_partition(&user_id), shared::keys::fills_partition(&user_id)] {
            let items = shared::dynamo::partition(app.dynamo(), &app.state.config.table_name, partition.clone()).await.unwrap();
            assert!(items.len() >= 2, "{partition}: {items:?}");
            for item in items {
                let end: i64 = item["expires_at"].as_n().unwrap().parse().unwrap();
                assert!((end - now - days * 86_400).abs() < 120, "{partition} {:?}: expires {end}", item["SK"]);
            }
        }
    }
}

#[tokio::test]
async fn orders_recorded_before_the_history_existed_are_backfilled_once() {
    let app = spawn_app().await;
    let token = access_token(&app).await;
    let user_id = user_id_of(&app, &token).await;
    // Two orders as the release before wrote them: the record alone, no pointers, no TTL.
    let old = |id: &str, status: &str, fill: Option<Value>| {
        let mut record = json!({
            "user_id": user_id, "intent": {"symbol": "BTCUSDT", "side": "buy", "type": "market", "size": "0.01", "price": null,
            "reduce_only": false, "client_order_id": id, "leverage": 10}, "status": status,
            "created_at": "2026-11-01T10:00:00.000Z", "updated_at": "2026-11-01T10:00:01.000Z"
        });
        if let Some(fill) = fill {
            record["fill"] = fill;
        }
        let mut item: shared::dynamo::Item = serde_dynamo::to_item(record).unwrap();
        item.extend(shared::keys::order(&user_id, id));
        item
    };
    let filled = json!({"order_id": "paper-old-filled", "status": "filled", "filled_size": "0.01", "avg_price": "60000", "fee": "0.36", "realized_pnl": "0"});
    // And a live order's exchange-id pointer without its TTL.
    let mut pointer: shared::dynamo::Item = serde_dynamo::to_item(json!({"client_order_id": "old-live"})).unwrap();
    pointer.extend(shared::keys::order_id_pointer(&user_id, "1234567890"));
    for item in [old("old-filled", "filled", Some(filled)), old("old-pending", "pending", None), pointer] {
        app.dynamo().put_item().table_name(&app.state.config.table_name).set_item(Some(item)).send().await.unwrap();
    }
    assert_eq!(orders(&app, &token, "").await.body["orders"], json!([]));
    let done = app.trading().backfill_history().await.unwrap();
    assert_eq!((done.orders, done.fills, done.pointers, done.moved), (2, 1, 1, 0));
    let pointer = shared::dynamo::get_item::<Value>(
        app.dynamo(),
        &app.state.config.table_name,
        shared::keys::order_id_pointer(&user_id, "1234567890"),
    );
    assert!(pointer.await.unwrap().unwrap()["expires_at"].is_number(), "the pointer expires too");
    let listed = orders(&app, &token, "").await;
    let ids: Vec<&str> = listed.body["orders"].as_array().unwrap().iter().map(|o| o["client_order_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2, "{}", listed.raw);
    let open = orders(&app, &token, "?status=open").await;
    assert_eq!(open.body["orders"][0]["client_order_id"], "old-pending");
    let fill = fills(&app, &token, "").await;
    assert_eq!(
        (fill.body["fills"][0]["fee"].as_str(), fill.body["fills"][0]["filled_at"].as_str()),
        (Some("0.36"), Some("2026-11-01T10:00:01.000Z"))
    );
    // Run again (an interrupted run repeated): nothing left to do.
    assert_eq!(app.trading().backfill_history().await.unwrap(), Default::default());
    assert_eq!(fills(&app, &token, "").await.body["fills"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn an_older_resting_order_that_fills_after_the_release_is_backfilled_with_its_one_fill() {
    let app = spawn_app().await;
    app.set_mark("BTCUSDT", "65000").await;
    let token = access_token(&app).await;
    let user_id = user_id_of(&app, &token).await;
    let config = json!({"symbol": "BTCUSDT", "leverage": 10, "stop_loss_pct": "5", "max_position_notional": "20000"});
    assert_eq!(app.call_as(t::start_bot, &token, "POST", "/api/v1/bot/start", Some(config)).await.status, 200);
    let order = json!({"symbol": "BTCUSDT", "side": "buy", "type": "limit", "size": "0.01", "price": "64000"});
    let mut req = with_bearer(request("POST", "/api/v1/order/submit", Some(order)), &token);
    req.headers_mut().insert("idempotency-key", uuid::Uuid::new_v4().to_string().parse().unwrap());
    let resting = app.call(t::submit_order, req).await;
    assert_eq!(resting.body["status"], "open", "{}", resting.raw);
    let cid = resting.body["client_order_id"].as_str().unwrap().to_owned();
    // Made as the release before made it: no TTL, no open index, no history pointers.
    let table = &app.state.config.table_name;
    let strip = app.dynamo().update_item().table_name(table).set_key(Some(shared::keys::order(&user_id, &cid)));
    strip.update_expression("REMOVE expires_at, GSI2PK, GSI2SK").send().await.unwrap();
    let partition = shared::keys::order(&user_id, &cid)["PK"].as_s().unwrap().clone();
    for item in shared::dynamo::partition(app.dynamo(), table, partition).await.unwrap() {
        if item["SK"].as_s().unwrap().starts_with("HIST") {
            let key = [("PK", item["PK"].clone()), ("SK", item["SK"].clone())].map(|(k, v)| (k.to_owned(), v));
            app.dynamo().delete_item().table_name(table).set_key(Some(key.into())).send().await.unwrap();
        }
    }
    // It fills after the release: its fill is written with it.
    app.set_mark("BTCUSDT", "63900").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    assert_eq!(shared::guardian::sweep(&app.state, deadline, &Default::default()).await.resting_filled, 1);
    assert_eq!(fills(&app, &token, "").await.body["fills"].as_array().unwrap().len(), 1);
    for run in 0..2 {
        let done = app.trading().backfill_history().await.unwrap();
        assert_eq!((done.orders, done.fills), if run == 0 { (1, 1) } else { (0, 0) }, "run {run}");
        let listed = fills(&app, &token, "").await;
        assert_eq!(listed.body["fills"].as_array().unwrap().len(), 1, "run {run}: the same fill, once: {}", listed.raw);
        let history = orders(&app, &token, "").await;
        assert_eq!(
            (history.body["orders"][0]["client_order_id"].as_str(), history.body["orders"][0]["status"].as_str()),
            (Some(cid.as_str()), Some("filled"))
        );
        assert_eq!(orders(&app, &token, "?status=open").await.body["orders"], json!([]), "run {run}: a filled order is not open");
    }
}

/// The key's answer goes in the paper fill's transaction only on the terms of any answer: its
/// record is there and still in progress. Refused (gone, or answered already), the order is
/// filled or put to rest all the same, alone, and says so, so the caller answers the key itself
/// (first writer wins); no bare record is ever made.
#[tokio::test]
async fn a_paper_order_whose_key_cannot_take_the_answer_is_placed_alone() {
    use shared::trading::exchange::KeyAnswer;
    let app = spawn_app().await;
    app.set_mark("BTCUSDT", "65000").await;
    let token = access_token(&app).await;
    let user_id = user_id_of(&app, &token).await;
    let trading = app.trading();
    let answer_body = |_: &OrderIntent, fill: &shared::trading::model::OrderFill| format!("{{\"order_id\":\"{}\"}}", fill.order_id);
    for (n, (record_left, order_type, price)) in
        [(false, OrderType::Market, None), (true, OrderType::Market, None), (false, OrderType::Limit, Some("60000"))]
            .into_iter()
            .enumerate()
    {
        let key = format!("key-{n}");
        let mut order = intent("BTCUSDT", Side::Buy, "0.01", false, &format!("answer-{n}"), "manual");
        order.order_type = order_type;
        order.price = price.map(d);
        assert!(trading.record_pending_order(&user_id, &order).await.unwrap());
        if record_left {
            // Answered already by someone else: the answer there stays.
            let record = shared::trading::idempotency::new_record("fp".into(), order.client_order_id.clone());
            trading.put_completed_idempotency(&user_id, &key, record, 409, "{\"first\":true}").await.unwrap();
        }
        let snapshot = trading.snapshot(&user_id).await.unwrap();
        let marks = std::collections::HashMap::from([("BTCUSDT".to_owned(), d("65000"))]);
        let exchange = shared::trading::service::paper_exchange(&app.state, &user_id, marks, snapshot).await.unwrap();
        let (fill, answered) =
            exchange.place_answering(&order, OrderGuard::default(), KeyAnswer { key: &key, body: answer_body }).await.unwrap();
        assert!(!answered, "case {n}: the key refused the answer");
        let stored = trading.order(&user_id, &order.client_order_id).await.unwrap().expect("the order");
        assert_eq!(stored.fill.as_ref().map(|f| f.status), Some(fill.status), "case {n}: placed alone");
        let record = trading.idempotency_record(&user_id, &key).await.unwrap();
        match record_left {
            false => assert!(record.is_none(), "case {n}: no bare record: {record:?}"),
            true => assert_eq!(record.and_then(|r| r.body), Some("{\"first\":true}".to_owned()), "case {n}: the first answer stays"),
        }
    }
}
