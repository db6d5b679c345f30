//! Each handler's own time per request, in-process, against the local stack (cluster-mode redis,
//! DynamoDB Local, moto for secrets)
//! (run through `make bench`, which starts them).

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;
use shared::handlers::{auth, health, trading};

fn handlers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (app, token, email) = rt.block_on(async {
        let app = spawn_app().await;
        app.set_mark("BTCUSDT", "65000").await;
        let token = access_token(&app).await;
        let email = app.outbox().last().unwrap()["to"].as_str().unwrap().to_owned();
        let start = json!({"symbol": "BTCUSDT", "leverage": 10, "stop_loss_pct": "5", "max_position_notional": "1000000"});
        assert_eq!(app.call_as(trading::start_bot, &token, "POST", "/api/v1/bot/start", Some(start)).await.status, 200);
        (app, token, email)
    });
    let password = "correct horse battery staple";
    let mut group = c.benchmark_group("handler");
    group.sample_size(30);

    group.bench_function("GET /api/v1/health", |b| {
        b.to_async(&rt).iter(|| app.call(health::handle, request("GET", "/api/v1/health", None)))
    });
    group.bench_function("GET /.well-known/jwks.json", |b| {
        b.to_async(&rt).iter(|| app.call(auth::jwks, request("GET", "/.well-known/jwks.json", None)))
    });
    group.bench_function("GET /api/v1/users/me", |b| {
        b.to_async(&rt).iter(|| app.call_as(auth::me, &token, "GET", "/api/v1/users/me", None))
    });
    group.bench_function("POST /api/v1/auth/register", |b| {
        b.to_async(&rt).iter(|| {
            let body = json!({"email": format!("bench-{}@example.com", uuid::Uuid::new_v4().simple()), "password": password});
            app.call(auth::register, request("POST", "/api/v1/auth/register", Some(body)))
        })
    });
    group.bench_function("POST /api/v1/auth/login", |b| {
        b.to_async(&rt).iter(|| async {
            let res =
                app.call(auth::login, request("POST", "/api/v1/auth/login", Some(json!({"email": email, "password": password})))).await;
            assert_eq!(res.status, 200);
        })
    });
    let refresh_token = std::sync::Mutex::new(rt.block_on(async {
        let res = app.call(auth::login, request("POST", "/api/v1/auth/login", Some(json!({"email": email, "password": password})))).await;
        res.body["refresh_token"].as_str().unwrap().to_owned()
    }));
    group.bench_function("POST /api/v1/auth/refresh", |b| {
        b.to_async(&rt).iter(|| async {
            let current = refresh_token.lock().unwrap().clone();
            let res = app.call(auth::refresh, request("POST", "/api/v1/auth/refresh", Some(json!({"refresh_token": current})))).await;
            assert_eq!(res.status, 200, "{}", res.raw);
            *refresh_token.lock().unwrap() = res.body["refresh_token"].as_str().unwrap().to_owned();
        })
    });
    group.bench_function("GET /api/v1/bot/status", |b| {
        b.to_async(&rt).iter(|| app.call_as(trading::status, &token, "GET", "/api/v1/bot/status", None))
    });
    group.bench_function("GET /api/v1/account", |b| {
        b.to_async(&rt).iter(|| app.call_as(trading::account, &token, "GET", "/api/v1/account", None))
    });
    let flip = std::sync::atomic::AtomicBool::new(false);
    group.bench_function("POST /api/v1/order/submit (paper market order)", |b| {
        b.to_async(&rt).iter(|| async {
            // Alternate buy and sell so the position stays small.
            let side = if flip.fetch_xor(true, std::sync::atomic::Ordering::Relaxed) { "sell" } else { "buy" };
            let mut req = with_bearer(
                request(
                    "POST",
                    "/api/v1/order/submit",
                    Some(json!({"symbol": "BTCUSDT", "side": side, "type": "market", "size": "0.001"})),
                ),
                &token,
            );
            req.headers_mut().insert("idempotency-key", uuid::Uuid::new_v4().to_string().parse().unwrap());
            let res = app.call(trading::submit_order, req).await;
            assert_eq!(res.status, 201, "{}", res.raw);
        })
    });
    group.finish();
}

/// A sign-in with two-factor on, both requests (login answering `mfa_required`, then mfa/verify
/// with the authenticator's code): what a user waits for. Replay protection accepts one code per
/// 30-second step, so before each timed sign-in (untimed) the stored last step is set back.
fn two_factor_sign_in(c: &mut Criterion) {
    use shared::auth::totp;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (app, user, secret) = rt.block_on(async {
        let app = spawn_app().await;
        let user = sign_up(&app).await;
        let setup = app.call_as(auth::totp_setup, &user.access, "POST", "/api/v1/auth/mfa/totp/setup", None).await;
        let secret = totp_rs::Secret::Encoded(setup.body["secret"].as_str().unwrap().to_owned()).to_bytes().unwrap();
        let code = format!("{:06}", totp::hotp(&secret, totp::step_at(chrono::Utc::now().timestamp()) as u64));
        let res = app.call_as(auth::totp_enable, &user.access, "POST", "/api/v1/auth/mfa/totp/enable", Some(json!({"code": code}))).await;
        assert_eq!(res.status, 200, "{}", res.raw);
        (app, user, secret)
    });
    let user_id = {
        use base64::Engine;
        let payload = user.access.split('.').nth(1).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        claims["sub"].as_str().unwrap().to_owned()
    };
    let mut group = c.benchmark_group("handler");
    group.sample_size(20);
    group.bench_function("POST /api/v1/auth/login + POST /api/v1/auth/mfa/verify (two-factor sign-in)", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (app, user, secret, user_id) = (&app, &user, &secret, &user_id);
            async move {
                let mut total = std::time::Duration::ZERO;
                for _ in 0..iters {
                    app.dynamo()
                        .update_item()
                        .table_name(&app.state.config.table_name)
                        .set_key(Some(shared::keys::totp(user_id)))
                        .update_expression("SET last_step = :zero")
                        .expression_attribute_values(":zero", aws_sdk_dynamodb::types::AttributeValue::N("0".into()))
                        .send()
                        .await
                        .unwrap();
                    let code = format!("{:06}", totp::hotp(secret, totp::step_at(chrono::Utc::now().timestamp()) as u64));
                    let started = std::time::Instant::now();
                    let body = json!({"email": user.email, "password": "correct horse battery staple"});
                    let res = app.call(auth::login, request("POST", "/api/v1/auth/login", Some(body))).await;
                    let body = json!({"mfa_token": res.body["mfa_token"], "code": code});
                    let res = app.call(auth::mfa_verify, request("POST", "/api/v1/auth/mfa/verify", Some(body))).await;
                    total += started.elapsed();
                    assert_eq!(res.status, 200, "{}", res.raw);
                }
                total
            }
        })
    });
    group.finish();
}

/// The trader's history routes over a paper account with 200 orders and fills and 5 resting
/// orders: a page of 50 of each list, and the PnL summary over all of it.
fn history(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (app, token) = rt.block_on(async {
        let app = spawn_app().await;
        app.set_mark("BTCUSDT", "65000").await;
        let token = access_token(&app).await;
        let start = json!({"symbol": "BTCUSDT", "leverage": 10, "stop_loss_pct": "5", "max_position_notional": "1000000"});
        assert_eq!(app.call_as(trading::start_bot, &token, "POST", "/api/v1/bot/start", Some(start)).await.status, 200);
        let orders = (0..200)
            .map(|i| json!({"symbol": "BTCUSDT", "side": if i % 2 == 0 { "buy" } else { "sell" }, "type": "market", "size": "0.001"}))
            .chain((0..5).map(|_| json!({"symbol": "BTCUSDT", "side": "buy", "type": "limit", "size": "0.001", "price": "60000"})));
        for order in orders {
            let mut req = with_bearer(request("POST", "/api/v1/order/submit", Some(order)), &token);
            req.headers_mut().insert("idempotency-key", uuid::Uuid::new_v4().to_string().parse().unwrap());
            assert_eq!(app.call(trading::submit_order, req).await.status, 201);
        }
        (app, token)
    });
    let mut group = c.benchmark_group("handler");
    group.sample_size(30);
    for (name, path) in [
        ("GET /api/v1/orders (a page of 50)", "/api/v1/orders?limit=50"),
        ("GET /api/v1/orders?status=open (5 resting)", "/api/v1/orders?status=open"),
        ("GET /api/v1/fills (a page of 50)", "/api/v1/fills?limit=50"),
        ("GET /api/v1/pnl (200 fills)", "/api/v1/pnl"),
    ] {
        let handler = |path: &'static str| {
            let (app, token) = (&app, &token);
            async move {
                let res = match path {
                    p if p.starts_with("/api/v1/orders") => app.call_as(trading::list_orders, token, "GET", p, None).await,
                    p if p.starts_with("/api/v1/fills") => app.call_as(trading::list_fills, token, "GET", p, None).await,
                    p => app.call_as(trading::pnl, token, "GET", p, None).await,
                };
                assert_eq!(res.status, 200, "{}", res.raw);
            }
        };
        group.bench_function(name, |b| b.to_async(&rt).iter(|| handler(path)));
    }
    group.finish();
}

criterion_group!(benches, handlers, two_factor_sign_in, history);
criterion_main!(benches);
