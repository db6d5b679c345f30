//! How many backend round trips each hot route waits on, counted (not read off the code): every
//! AWS call at the SDK's connector and every Redis command at a proxy, calls in flight together
//! making one round trip; every call the Bitget double answers is one more. Each count is of a warm function's second request, as production serves nearly all
//! of them: secrets cached, Redis scripts loaded, contract specs read.

mod common;

use common::round_trips::{counted_app, RoundTrips};
use common::*;
use serde_json::json;
use shared::handlers::{auth, trading};

/// The round trips since the last look; each call the Bitget double answered counts as one.
fn calls(app: &TestApp, trips: &RoundTrips, bitget_before: &mut u32) -> Vec<Vec<String>> {
    let mut calls = trips.take();
    let bitget_now = app.exchange.as_ref().map_or(0, |b| b.total_calls());
    calls.extend((*bitget_before..bitget_now).map(|_| vec!["bitget".to_owned()]));
    *bitget_before = bitget_now;
    calls
}

/// Every route's calls against its bound, asserted together so a failure shows them all.
#[derive(Default)]
struct Counts {
    out_of_bounds: Vec<String>,
}

impl Counts {
    fn check(&mut self, route: &str, calls: &[Vec<String>], bound: std::ops::RangeToInclusive<usize>) {
        self.check_range(route, calls, 1..=bound.end)
    }
    fn check_range(&mut self, route: &str, calls: &[Vec<String>], bound: std::ops::RangeInclusive<usize>) {
        eprintln!("{route}: {} round trips {calls:?}", calls.len());
        if !bound.contains(&calls.len()) {
            self.out_of_bounds.push(format!("{route} made {} round trips, not {bound:?}: {calls:?}", calls.len()));
        }
    }
    fn assert_all(&self) {
        assert!(self.out_of_bounds.is_empty(), "{}", self.out_of_bounds.join("\n"));
    }
}

fn register(email: &str) -> lambda_http::Request {
    request("POST", "/api/v1/auth/register", Some(json!({"email": email, "password": PASSWORD})))
}

fn code_for(app: &TestApp, email: &str) -> String {
    let mail = app.outbox().into_iter().rev().find(|m| m["to"] == email && m["code"].is_string()).expect("a code mail");
    mail["code"].as_str().expect("code").to_owned()
}

fn verify(email: &str, code: &str) -> lambda_http::Request {
    request("POST", "/api/v1/auth/verify", Some(json!({"email": email, "verification_code": code})))
}

fn login(email: &str) -> lambda_http::Request {
    request("POST", "/api/v1/auth/login", Some(json!({"email": email, "password": PASSWORD})))
}

fn fresh_email() -> String {
    format!("trips-{}@example.com", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn register_verify_login_and_refresh_make_two_two_three_and_two_round_trips() {
    let (app, trips) = counted_app().await;
    let mut counts = Counts::default();
    let mut bitget = 0;
    // The first user warms the function as its first requests would.
    sign_up(&app).await;
    calls(&app, &trips, &mut bitget);

    let email = fresh_email();
    assert_eq!(app.call(auth::register, register(&email)).await.status, 202);
    let register_calls = calls(&app, &trips, &mut bitget);
    // The source's rate limit goes with the address's slot, its code and its mail count; then
    // the account with the slot given back.
    counts.check_range("register", &register_calls, 2..=2);

    let code = code_for(&app, &email);
    assert_eq!(app.call(auth::verify, verify(&email, &code)).await.status, 200);
    let verify_calls = calls(&app, &trips, &mut bitget);
    counts.check_range("verify", &verify_calls, 2..=2);

    let res = app.call(auth::login, login(&email)).await;
    assert_eq!(res.status, 200, "{}", res.raw);
    let login_calls = calls(&app, &trips, &mut bitget);
    counts.check_range("login", &login_calls, 3..=3);

    let refresh_token = res.body["refresh_token"].as_str().expect("refresh token");
    let res = app.call(auth::refresh, request("POST", "/api/v1/auth/refresh", Some(json!({"refresh_token": refresh_token})))).await;
    assert_eq!(res.status, 200, "{}", res.raw);
    let refresh_calls = calls(&app, &trips, &mut bitget);
    counts.check("refresh", &refresh_calls, ..=2);
    counts.assert_all();
}

#[tokio::test]
async fn a_registration_past_the_addresss_mail_limits_still_makes_two_round_trips() {
    let (app, trips) = counted_app().await;
    let mut bitget = 0;
    sign_up(&app).await;
    let email = fresh_email();
    // The address's hour of mails spent (forgot requests, say): its first code goes out anyway.
    let keys = shared::auth::limits::EmailKeys::new(&email);
    let mut conn = app.state.redis.clone();
    redis::cmd("SET").arg(&keys.hourly).arg(5).arg("EX").arg(3600).query_async::<()>(&mut conn).await.expect("spend the hour");
    calls(&app, &trips, &mut bitget);
    assert_eq!(app.call(auth::register, register(&email)).await.status, 202);
    let register_calls = calls(&app, &trips, &mut bitget);
    assert_eq!(register_calls.len(), 2, "{register_calls:?}");
    assert_eq!(code_for(&app, &email).len(), 6, "the code was mailed");
}

#[tokio::test]
async fn bot_status_makes_one_round_trip_and_a_paper_order_three() {
    let (app, trips) = counted_app().await;
    let mut counts = Counts::default();
    app.set_mark("BTCUSDT", "65000").await;
    let mut bitget = 0;
    let token = access_token(&app).await;
    let config =
        json!({"symbol": "BTCUSDT", "leverage": 10, "stop_loss_pct": "2", "take_profit_pct": "4", "max_position_notional": "20000"});
    assert_eq!(app.call_as(trading::start_bot, &token, "POST", "/api/v1/bot/start", Some(config)).await.status, 200);
    // A first order and status read warm the function (contract specs, key material).
    let order = |key: &str, size: &str| {
        let mut req = with_bearer(
            request("POST", "/api/v1/order/submit", Some(json!({"symbol": "BTCUSDT", "side": "buy", "type": "market", "size": size}))),
            &token,
        );
        req.headers_mut().insert("idempotency-key", key.parse().expect("header"));
        req
    };
    let res = app.call(trading::submit_order, order("warm-up", "0.01")).await;
    assert!(res.status == 200 || res.status == 201, "{}", res.raw);
    assert_eq!(app.call_as(trading::status, &token, "GET", "/api/v1/bot/status", None).await.status, 200);
    calls(&app, &trips, &mut bitget);

    let res = app.call_as(trading::status, &token, "GET", "/api/v1/bot/status", None).await;
    assert_eq!(res.status, 200, "{}", res.raw);
    let status_calls = calls(&app, &trips, &mut bitget);
    // The snapshot and every mark together: the paper positions are valued without a read of
    // their own.
    counts.check_range("status", &status_calls, 1..=1);

    let res = app.call(trading::submit_order, order("second", "0.02")).await;
    assert!(res.status == 200 || res.status == 201, "{}", res.raw);
    let submit_calls = calls(&app, &trips, &mut bitget);
    // The reads and the marks together, the order recorded before it is sent, then the paper
    // fill with the key's answer in its transaction.
    counts.check_range("submit", &submit_calls, 3..=3);
    counts.assert_all();
}

/// The count is the longest chain of calls each waiting on the one before: a call made after one
/// answer is one round trip deeper even while that answer's sibling is still out, and calls sent
/// together stay one round trip.
#[test]
fn a_call_waiting_on_an_answer_is_one_round_trip_deeper_though_a_sibling_is_still_out() {
    let trips = RoundTrips::default();
    let (a, b) = (trips.started("a".into()), trips.started("b".into()));
    trips.answered(a);
    let c = trips.started("c".into());
    trips.answered(b);
    trips.answered(c);
    let d = trips.started("d".into());
    trips.answered(d);
    assert_eq!(trips.take(), vec![vec!["a", "b"], vec!["c"], vec!["d"]]);
    assert_eq!(trips.take(), Vec::<Vec<String>>::new(), "taken: the next request starts at depth 1");
    trips.started("e".into());
    assert_eq!(trips.take(), vec![vec!["e"]]);
}
