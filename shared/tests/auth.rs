//! The auth contract against real redis and the moto server.

mod common;

use common::*;
use futures::future::join_all;
use serde_json::{json, Value};
use shared::handlers::auth;
use std::time::Duration;

fn unique_email() -> String {
    format!("user-{}@Example.COM", uuid::Uuid::new_v4().simple())
}

/// The canonical form of a plain ASCII address: all of it lower case.
fn normalised(email: &str) -> String {
    email.trim().to_lowercase()
}

async fn register(app: &TestApp, email: &str) -> TestResponse {
    let res = app.call(auth::register, request("POST", "/api/v1/auth/register", Some(json!({"email": email, "password": PASSWORD})))).await;
    assert!(res.status == 202 || res.status == 503, "{}", res.raw);
    res
}

fn last_code(app: &TestApp, email: &str) -> String {
    let email = normalised(email);
    app.outbox()
        .iter()
        .rev()
        .find(|m| m["to"] == email.as_str() && m["code"].is_string())
        .map(|m| m["code"].as_str().unwrap().to_owned())
        .unwrap_or_else(|| panic!("no code mail for {email}: {:?}", app.outbox()))
}

async fn verify(app: &TestApp, email: &str, code: &str) -> TestResponse {
    app.call(auth::verify, request("POST", "/api/v1/auth/verify", Some(json!({"email": email, "verification_code": code})))).await
}

async fn login(app: &TestApp, email: &str, password: &str) -> TestResponse {
    app.call(auth::login, request("POST", "/api/v1/auth/login", Some(json!({"email": email, "password": password})))).await
}

async fn refresh(app: &TestApp, token: &str) -> TestResponse {
    app.call(auth::refresh, request("POST", "/api/v1/auth/refresh", Some(json!({"refresh_token": token})))).await
}

async fn me(app: &TestApp, token: &str) -> TestResponse {
    app.call(auth::me, with_bearer(request("GET", "/api/v1/users/me", None), token)).await
}

/// Registers, verifies and logs in; the login answer.
async fn signed_in_user(app: &TestApp) -> (String, Value) {
    let email = unique_email();
    assert_eq!(register(app, &email).await.status, 202);
    assert_eq!(verify(app, &email, &last_code(app, &email)).await.status, 200);
    let res = login(app, &email, PASSWORD).await;
    assert_eq!(res.status, 200, "{}", res.raw);
    (email, res.body)
}

/// The stored login record of `email`, as DynamoDB holds it.
async fn login_record(app: &TestApp, email: &str) -> std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue> {
    let key = shared::keys::email(&normalised(email));
    app.dynamo().get_item().table_name(&app.state.config.table_name).set_key(Some(key)).send().await.unwrap().item.expect("stored")
}

/// As if the address's 60 s mail cooldown had run out (its hourly count stays).
async fn a_minute_passes(app: &TestApp, email: &str) {
    let mut conn = redis_conn(app).await;
    let keys = shared::auth::limits::EmailKeys::new(&normalised(email));
    redis::cmd("DEL").arg(&keys.cooldown).query_async::<()>(&mut conn).await.unwrap();
}

async fn redis_conn(app: &TestApp) -> redis::aio::ConnectionManager {
    app.state.redis.clone()
}

#[tokio::test]
async fn a_user_registers_verifies_logs_in_and_reads_their_profile() {
    let app = spawn_app().await;
    let email = unique_email();
    let res = register(&app, &email).await;
    assert_eq!(res.status, 202);
    assert_eq!(res.body, json!({"status": "verification_required"}));

    let code = last_code(&app, &email);
    assert_eq!(code.len(), 6);
    let res = verify(&app, &email, &code).await;
    assert_eq!((res.status, res.body.clone()), (200, json!({"status": "verified"})));

    let res = login(&app, &email, PASSWORD).await;
    assert_eq!(res.status, 200, "{}", res.raw);
    assert_eq!(res.body["token_type"], "Bearer");
    assert_eq!(res.body["expires_in"], 900);
    assert!(res.body["refresh_token"].as_str().unwrap().len() > 43);
    assert_eq!(res.header("cache-control"), Some("no-store"));

    let profile = me(&app, res.body["access_token"].as_str().unwrap()).await;
    assert_eq!(profile.status, 200, "{}", profile.raw);
    assert_eq!(profile.body["email"], normalised(&email));
    assert_eq!(profile.body["email_verified"], true);
    assert!(profile.body["id"].as_str().is_some_and(|id| !id.is_empty()));
    assert!(profile.body["created_at"].as_str().is_some());
    assert!(profile.body.as_object().unwrap().contains_key("username"));
}

#[tokio::test]
async fn malformed_requests_get_problem_json_with_a_code() {
    let app = spawn_app().await;
    let cases = [
        (json!({"email": "not-an-email", "password": PASSWORD}), 400, "invalid_email"),
        (json!({"email": unique_email(), "password": "short"}), 400, "weak_password"),
        (json!({"email": unique_email(), "password": "password1234"}), 400, "weak_password"),
        (json!({"email": unique_email(), "password": PASSWORD, "admin": true}), 400, "invalid_request"),
        (json!({"email": unique_email()}), 400, "invalid_request"),
        (json!({"email": 12, "password": PASSWORD}), 400, "invalid_request"),
    ];
    for (body, status, code) in cases {
        let res = app.call(auth::register, request("POST", "/api/v1/auth/register", Some(body.clone()))).await;
        assert_eq!((res.status, res.code()), (status, code), "{body}: {}", res.raw);
        assert_eq!(res.header("content-type"), Some("application/problem+json"));
        for member in ["type", "title", "status", "detail", "code"] {
            assert!(res.body.get(member).is_some(), "{member} missing in {}", res.raw);
        }
    }

    let mut not_json = request("POST", "/api/v1/auth/register", None);
    *not_json.body_mut() = lambda_http::Body::Text("{\"email\":".into());
    not_json.headers_mut().insert("content-type", "application/json".parse().unwrap());
    let res = app.call(auth::register, not_json).await;
    assert_eq!((res.status, res.code()), (400, "invalid_json"));

    let mut form = request("POST", "/api/v1/auth/login", None);
    *form.body_mut() = lambda_http::Body::Text("email=a".into());
    form.headers_mut().insert("content-type", "application/x-www-form-urlencoded".parse().unwrap());
    let res = app.call(auth::login, form).await;
    assert_eq!((res.status, res.code()), (415, "unsupported_media_type"));

    let huge = json!({"email": unique_email(), "password": "x".repeat(17 * 1024)});
    let res = app.call(auth::register, request("POST", "/api/v1/auth/register", Some(huge))).await;
    assert_eq!((res.status, res.code()), (413, "payload_too_large"));
}

#[tokio::test]
async fn registering_an_existing_email_answers_identically_and_notifies_the_owner() {
    let app = spawn_app().await;
    let email = unique_email();
    let first = register(&app, &email).await;
    assert_eq!(verify(&app, &email, &last_code(&app, &email)).await.status, 200);
    a_minute_passes(&app, &email).await;
    let second = register(&app, &email).await;
    assert_eq!((first.status, &first.raw), (second.status, &second.raw), "byte for byte");
    let mails: Vec<Value> = app.outbox().into_iter().filter(|m| m["to"] == normalised(&email).as_str()).collect();
    assert_eq!(mails.len(), 2);
    assert!(mails[0]["code"].is_string());
    assert!(mails[1].get("code").is_none(), "the owner gets a notice, not a code");
    // The second attempt changed nothing: the owner's password still signs in.
    assert_eq!(login(&app, &email, PASSWORD).await.status, 200);
}

#[tokio::test]
async fn one_hundred_parallel_registrations_of_one_email_create_one_account() {
    let app = spawn_app().await;
    let email = unique_email();
    let answers = join_all((0..100).map(|_| register(&app, &email))).await;
    assert!(answers.iter().all(|r| r.status == 202), "{:?}", answers.iter().map(|r| r.status).collect::<Vec<_>>());
    let codes = app.outbox().iter().filter(|m| m["to"] == normalised(&email).as_str() && m["code"].is_string()).count();
    assert_eq!(codes, 1, "exactly one account got a verification code");
    // And that code is the account's: no later registration replaced it unmailed.
    assert_eq!(verify(&app, &email, &last_code(&app, &email)).await.status, 200);
    let item = app
        .dynamo()
        .get_item()
        .table_name(&app.state.config.table_name)
        .set_key(Some(shared::keys::email(&normalised(&email))))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    let user_id = item["user_id"].as_s().unwrap();
    let profile =
        shared::auth::store::UserStore { client: app.dynamo(), table: &app.state.config.table_name }.profile(user_id).await.unwrap();
    assert!(profile.is_some());
}

#[tokio::test]
async fn codes_are_stored_hashed_with_a_fifteen_minute_ttl() {
    let app = spawn_app().await;
    let email = unique_email();
    register(&app, &email).await;
    let code = last_code(&app, &email);
    let mut conn = redis_conn(&app).await;
    let key = shared::auth::limits::EmailKeys::new(&normalised(&email)).code;
    let stored: std::collections::HashMap<String, String> = redis::cmd("HGETALL").arg(&key).query_async(&mut conn).await.unwrap();
    assert!(stored.values().all(|v| !v.contains(&code)), "the plaintext code is in redis: {stored:?}");
    assert_eq!(stored["hash"].len(), 64);
    let ttl: i64 = redis::cmd("TTL").arg(&key).query_async(&mut conn).await.unwrap();
    assert!((890..=900).contains(&ttl), "{ttl}");
}

#[tokio::test]
async fn fifty_parallel_verifications_with_the_right_code_succeed_once() {
    let app = spawn_app().await;
    let email = unique_email();
    register(&app, &email).await;
    let code = last_code(&app, &email);
    let answers = join_all((0..50).map(|_| verify(&app, &email, &code))).await;
    let ok = answers.iter().filter(|r| r.status == 200).count();
    assert_eq!(ok, 1);
    assert!(answers.iter().filter(|r| r.status != 200).all(|r| r.code() == "invalid_code"));
}

#[tokio::test]
async fn five_wrong_codes_burn_the_code_and_only_a_new_one_works() {
    let app = spawn_app().await;
    let email = unique_email();
    register(&app, &email).await;
    let code = last_code(&app, &email);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for _ in 0..5 {
        let res = verify(&app, &email, wrong).await;
        assert_eq!((res.status, res.code()), (400, "invalid_code"));
    }
    assert_eq!(verify(&app, &email, &code).await.code(), "invalid_code", "burned after five misses");

    // A minute later (the cooldown key expiring stands in for the wait) a resend brings a new code.
    let mut conn = redis_conn(&app).await;
    redis::cmd("DEL").arg(shared::auth::limits::EmailKeys::new(&normalised(&email)).cooldown).query_async::<()>(&mut conn).await.unwrap();
    let res = app.call(auth::resend, request("POST", "/api/v1/auth/resend", Some(json!({"email": email})))).await;
    assert_eq!(res.status, 202);
    let fresh = last_code(&app, &email);
    assert_eq!(verify(&app, &email, &fresh).await.status, 200);
}

#[tokio::test]
async fn resend_is_limited_to_once_a_minute_and_five_an_hour() {
    let app = spawn_app().await;
    let email = unique_email();
    register(&app, &email).await;
    let resend = || app.call(auth::resend, request("POST", "/api/v1/auth/resend", Some(json!({"email": email}))));
    let res = resend().await;
    assert_eq!((res.status, res.code()), (429, "too_many_requests"), "the registration mail started the cooldown");
    let retry: u64 = res.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));

    let mut conn = redis_conn(&app).await;
    let cooldown = shared::auth::limits::EmailKeys::new(&normalised(&email)).cooldown;
    for _ in 0..4 {
        redis::cmd("DEL").arg(&cooldown).query_async::<()>(&mut conn).await.unwrap();
        assert_eq!(resend().await.status, 202);
    }
    redis::cmd("DEL").arg(&cooldown).query_async::<()>(&mut conn).await.unwrap();
    let res = resend().await;
    assert_eq!((res.status, res.code()), (429, "too_many_requests"), "the sixth mail within the hour");
    assert!(res.header("retry-after").is_some());
}

#[tokio::test]
async fn resend_for_an_unknown_email_answers_the_same_and_sends_nothing() {
    let app = spawn_app().await;
    let email = unique_email();
    let res = app.call(auth::resend, request("POST", "/api/v1/auth/resend", Some(json!({"email": email})))).await;
    assert_eq!((res.status, res.body), (202, json!({"status": "verification_required"})));
    assert!(app.outbox().iter().all(|m| m["to"] != normalised(&email).as_str()));
}

#[tokio::test]
async fn login_before_verification_with_the_right_password_is_forbidden() {
    let app = spawn_app().await;
    let email = unique_email();
    register(&app, &email).await;
    let res = login(&app, &email, PASSWORD).await;
    assert_eq!((res.status, res.code()), (403, "email_not_verified"));
    let res = login(&app, &email, "wrong password here").await;
    assert_eq!((res.status, res.code()), (401, "invalid_credentials"));
}

#[tokio::test]
async fn unknown_email_and_wrong_password_get_the_same_answer() {
    let app = spawn_app().await;
    let (email, _) = signed_in_user(&app).await;
    let wrong = login(&app, &email, "not the password at all").await;
    let unknown = login(&app, &unique_email(), "not the password at all").await;
    assert_eq!((wrong.status, wrong.code()), (401, "invalid_credentials"));
    let strip = |mut v: Value| {
        v.as_object_mut().unwrap().remove("request_id");
        v
    };
    assert_eq!(strip(wrong.body.clone()), strip(unknown.body.clone()));
}

#[tokio::test]
async fn five_failures_lock_the_account_even_for_the_right_password() {
    let app = spawn_app().await;
    let (email, _) = signed_in_user(&app).await;
    for _ in 0..5 {
        assert_eq!(login(&app, &email, "wrong password here").await.status, 401);
    }
    let res = login(&app, &email, PASSWORD).await;
    assert_eq!((res.status, res.code()), (429, "account_locked"));
    let retry: u64 = res.header("retry-after").unwrap().parse().unwrap();
    assert!((55..=60).contains(&retry), "{retry}");
}

#[tokio::test]
async fn the_lock_doubles_with_each_further_failure_up_to_fifteen_minutes() {
    let app = spawn_app().await;
    let (email, _) = signed_in_user(&app).await;
    // The pair of this address and the tests' source address (`request`'s 198.51.100.1).
    let key = shared::auth::limits::EmailKeys::new(&normalised(&email)).pair_lockout("198.51.100.1");
    let mut conn = redis_conn(&app).await;
    for _ in 0..5 {
        login(&app, &email, "wrong password here").await;
    }
    let mut expected = 60;
    for _ in 0..6 {
        // The lock running out stands in for the wait.
        redis::cmd("HSET").arg(&key).arg("lock_until").arg(0).query_async::<()>(&mut conn).await.unwrap();
        assert_eq!(login(&app, &email, "wrong password here").await.status, 401);
        expected = (expected * 2).min(900);
        let retry: u64 = login(&app, &email, PASSWORD).await.header("retry-after").unwrap().parse().unwrap();
        assert!(retry <= expected && retry + 5 >= expected, "expected about {expected}, got {retry}");
    }
}

#[tokio::test]
async fn parallel_wrong_guesses_cannot_slip_past_the_lockout() {
    let app = spawn_app().await;
    let (email, _) = signed_in_user(&app).await;
    let answers = join_all((0..40).map(|_| login(&app, &email, "wrong password here"))).await;
    let tried = answers.iter().filter(|r| r.status == 401).count();
    let refused = answers.iter().filter(|r| r.status == 429 && r.code() == "account_locked").count();
    assert_eq!(tried, 5, "only five guesses may reach the password check");
    assert_eq!(refused, 35);
}

#[tokio::test]
async fn unknown_emails_lock_out_like_known_ones() {
    let app = spawn_app().await;
    let email = unique_email();
    for _ in 0..5 {
        assert_eq!(login(&app, &email, "wrong password here").await.status, 401);
    }
    assert_eq!(login(&app, &email, "wrong password here").await.code(), "account_locked");
}

#[tokio::test]
async fn a_success_resets_the_failure_count() {
    let app = spawn_app().await;
    let (email, _) = signed_in_user(&app).await;
    for _ in 0..4 {
        login(&app, &email, "wrong password here").await;
    }
    assert_eq!(login(&app, &email, PASSWORD).await.status, 200);
    for _ in 0..4 {
        assert_eq!(login(&app, &email, "wrong password here").await.status, 401);
    }
    assert_eq!(login(&app, &email, PASSWORD).await.status, 200);
}

#[tokio::test]
async fn the_per_address_limit_throttles_one_address_and_not_another() {
    let app = spawn_app_with(&[("IP_RATE_LIMIT_PER_MINUTE", "3".into())]).await;
    let from =
        |ip: &str| from_ip(request("POST", "/api/v1/auth/login", Some(json!({"email": unique_email(), "password": "whatever pass"}))), ip);
    // Fresh documentation addresses per run: the counters live in the shared redis for a minute.
    let suffix = || format!("{:x}", rand::random::<u16>());
    let (busy, quiet) = (format!("2001:db8::{}", suffix()), format!("2001:db8:1::{}", suffix()));
    for _ in 0..3 {
        assert_eq!(app.call(auth::login, from(&busy)).await.status, 401);
    }
    let res = app.call(auth::login, from(&busy)).await;
    assert_eq!((res.status, res.code()), (429, "too_many_requests"));
    assert!(res.header("retry-after").is_some());
    assert_eq!(app.call(auth::login, from(&quiet)).await.status, 401);
}

#[tokio::test]
async fn login_rehashes_a_password_stored_with_old_parameters() {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let app = spawn_app().await;
    let (email, _) = signed_in_user(&app).await;
    let weak = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, argon2::Params::new(4096, 1, 1, None).unwrap());
    let old = weak.hash_password(PASSWORD.as_bytes(), &SaltString::generate(&mut rand::rngs::OsRng)).unwrap().to_string();
    let store = shared::auth::store::UserStore { client: app.dynamo(), table: &app.state.config.table_name };
    let creds = store.credentials(&normalised(&email)).await.unwrap().unwrap();
    store.update_password_hash(&normalised(&email), &creds.user_id, &old).await.unwrap();
    assert_eq!(login(&app, &email, PASSWORD).await.status, 200);
    let after = store.credentials(&normalised(&email)).await.unwrap().unwrap();
    assert!(after.password_hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{}", after.password_hash);
}

#[tokio::test]
async fn refresh_rotates_the_token_and_keeps_the_user() {
    let app = spawn_app().await;
    let (_, tokens) = signed_in_user(&app).await;
    let first = tokens["refresh_token"].as_str().unwrap();
    let res = refresh(&app, first).await;
    assert_eq!(res.status, 200, "{}", res.raw);
    let second = res.body["refresh_token"].as_str().unwrap();
    assert_ne!(first, second);
    assert_eq!(me(&app, res.body["access_token"].as_str().unwrap()).await.status, 200);
    assert_eq!(refresh(&app, second).await.status, 200);
}

#[tokio::test]
async fn a_reused_token_within_the_grace_window_still_gets_a_pair_and_revokes_nothing() {
    let app = spawn_app().await;
    let (_, tokens) = signed_in_user(&app).await;
    let first = tokens["refresh_token"].as_str().unwrap();
    let a = refresh(&app, first).await;
    let b = refresh(&app, first).await;
    assert_eq!((a.status, b.status), (200, 200), "{}", b.raw);
    assert_eq!(refresh(&app, a.body["refresh_token"].as_str().unwrap()).await.status, 200);
    assert_eq!(refresh(&app, b.body["refresh_token"].as_str().unwrap()).await.status, 200);
}

#[tokio::test]
async fn parallel_refreshes_inside_the_grace_window_all_succeed() {
    let app = spawn_app().await;
    let (_, tokens) = signed_in_user(&app).await;
    let token = tokens["refresh_token"].as_str().unwrap();
    let answers = join_all((0..10).map(|_| refresh(&app, token))).await;
    assert!(answers.iter().all(|r| r.status == 200), "{:?}", answers.iter().map(|r| r.raw.clone()).collect::<Vec<_>>());
}

#[tokio::test]
async fn reuse_after_the_grace_window_revokes_the_whole_family() {
    let app = spawn_app_with(&[("REFRESH_REUSE_GRACE_SECS", "1".into())]).await;
    let (_, tokens) = signed_in_user(&app).await;
    let first = tokens["refresh_token"].as_str().unwrap().to_owned();
    let rotated = refresh(&app, &first).await;
    let second = rotated.body["refresh_token"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(1300)).await;

    let answers = join_all((0..10).map(|_| refresh(&app, &first))).await;
    assert!(
        answers.iter().all(|r| r.status == 401 && r.code() == "refresh_token_reused"),
        "{:?}",
        answers.iter().map(|r| r.raw.clone()).collect::<Vec<_>>()
    );
    let res = refresh(&app, &second).await;
    assert_eq!((res.status, res.code()), (401, "refresh_token_reused"), "the thief's fresh token dies too");
}

#[tokio::test]
async fn garbage_and_unknown_refresh_tokens_are_refused() {
    let app = spawn_app().await;
    for token in ["", "garbage", "rt1.a.b.c.d", &format!("rt1.{}.{}.1.{}", uuid::Uuid::new_v4(), uuid::Uuid::new_v4(), "A".repeat(43))] {
        let res = refresh(&app, token).await;
        assert_eq!((res.status, res.code()), (401, "invalid_refresh_token"), "{token}");
    }
}

#[tokio::test]
async fn local_logout_revokes_the_family_only() {
    let app = spawn_app().await;
    let (email, first_login) = signed_in_user(&app).await;
    let other_login = login(&app, &email, PASSWORD).await.body;
    let token = first_login["refresh_token"].as_str().unwrap();
    let res = app.call(auth::logout, request("POST", "/api/v1/auth/logout", Some(json!({"refresh_token": token})))).await;
    assert_eq!(res.status, 204, "{}", res.raw);
    assert_eq!(refresh(&app, token).await.code(), "invalid_refresh_token");
    assert_eq!(refresh(&app, other_login["refresh_token"].as_str().unwrap()).await.status, 200, "another device stays signed in");
}

#[tokio::test]
async fn global_logout_revokes_every_family_and_every_earlier_access_token() {
    let app = spawn_app().await;
    let (email, first_login) = signed_in_user(&app).await;
    let other_login = login(&app, &email, PASSWORD).await.body;
    let body = json!({"refresh_token": first_login["refresh_token"], "scope": "global"});
    assert_eq!(app.call(auth::logout, request("POST", "/api/v1/auth/logout", Some(body))).await.status, 204);

    assert_eq!(refresh(&app, other_login["refresh_token"].as_str().unwrap()).await.status, 401);
    let res = me(&app, other_login["access_token"].as_str().unwrap()).await;
    assert_eq!((res.status, res.code()), (401, "invalid_token"));
    let fresh = login(&app, &email, PASSWORD).await;
    assert_eq!(fresh.status, 200);
    assert_eq!(me(&app, fresh.body["access_token"].as_str().unwrap()).await.status, 200, "a new login works at once");
}

#[tokio::test]
async fn bad_access_tokens_are_refused_with_www_authenticate() {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
    let app = spawn_app().await;
    let (_, tokens) = signed_in_user(&app).await;
    let good = tokens["access_token"].as_str().unwrap().to_owned();
    let parts: Vec<&str> = good.split('.').collect();
    let b64 = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let payload: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let kid = serde_json::from_slice::<Value>(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap()["kid"].clone();

    let mut expired_claims = payload.clone();
    expired_claims["exp"] = json!(chrono::Utc::now().timestamp() - 3600);
    let mut tampered = payload.clone();
    tampered["sub"] = json!("someone-else");
    let alg_none = format!("{}.{}.", b64(json!({"alg": "none", "typ": "at+jwt", "kid": kid})), parts[1]);
    let jwks = app.call(auth::jwks, request("GET", "/.well-known/jwks.json", None)).await.body;
    let public = URL_SAFE_NO_PAD.decode(jwks["keys"][0]["x"].as_str().unwrap()).unwrap();
    let mut hs_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs_header.kid = kid.as_str().map(str::to_owned);
    hs_header.typ = Some("at+jwt".into());
    let hs256 = jsonwebtoken::encode(&hs_header, &payload, &jsonwebtoken::EncodingKey::from_secret(&public)).unwrap();
    let unknown_kid = format!("{}.{}.{}", b64(json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "nope"})), parts[1], parts[2]);

    let cases = [
        ("malformed", "not.a.jwt".to_owned()),
        ("expired signature reused", format!("{}.{}.{}", parts[0], b64(expired_claims), parts[2])),
        ("tampered", format!("{}.{}.{}", parts[0], b64(tampered), parts[2])),
        ("alg none", alg_none),
        ("hs256 with public key", hs256),
        ("unknown kid", unknown_kid),
    ];
    for (name, token) in cases {
        let res = me(&app, &token).await;
        assert_eq!((res.status, res.code()), (401, "invalid_token"), "{name}");
        assert!(res.header("www-authenticate").is_some_and(|v| v.starts_with("Bearer")), "{name}");
    }
    let res = app.call(auth::me, request("GET", "/api/v1/users/me", None)).await;
    assert_eq!((res.status, res.code()), (401, "invalid_token"), "missing");
    assert!(res.header("www-authenticate").is_some());
}

#[tokio::test]
async fn a_third_party_library_verifies_our_tokens_from_the_jwks_alone() {
    let app = spawn_app().await;
    let (_, tokens) = signed_in_user(&app).await;
    let jwks = app.call(auth::jwks, request("GET", "/.well-known/jwks.json", None)).await;
    assert_eq!(jwks.status, 200);
    assert!(jwks.header("cache-control").is_some_and(|v| v.contains("max-age")));
    let script = r#"
import json, sys, jwt
jwks, token, iss, aud = sys.argv[1:5]
header = jwt.get_unverified_header(token)
key = next(k for k in json.loads(jwks)["keys"] if k["kid"] == header["kid"])
claims = jwt.decode(token, jwt.PyJWK(key).key, algorithms=["EdDSA"], audience=aud, issuer=iss)
assert header["typ"] == "at+jwt", header
print(claims["sub"])
"#;
    let python = std::env::var("VENV_PYTHON").expect("make test exports VENV_PYTHON");
    let out = std::process::Command::new(python)
        .args([
            "-c",
            script,
            &jwks.raw,
            tokens["access_token"].as_str().unwrap(),
            &app.state.config.jwt_issuer,
            &app.state.config.jwt_audience,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "PyJWT refused our token: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stdout).trim().is_empty());
}

#[tokio::test]
async fn with_redis_down_auth_routes_answer_503_not_500() {
    let mut redis = OwnRedis::start().await;
    let app = spawn_app_with(&[("REDIS_URL", redis.url())]).await;
    redis.stop();
    let res = login(&app, &unique_email(), PASSWORD).await;
    assert_eq!((res.status, res.code()), (503, "dependency_unavailable"), "{}", res.raw);
    let res = register(&app, &unique_email()).await;
    assert_eq!(res.status, 503);
}

#[tokio::test]
async fn a_registration_whose_transaction_conflicts_is_retried_and_creates_the_account() {
    let mut app = spawn_app().await;
    let left = conflict_next_transactions(&mut app, 2);
    let email = unique_email();
    assert_eq!(register(&app, &email).await.status, 202);
    assert_eq!(left.load(std::sync::atomic::Ordering::SeqCst), 0, "both conflicts were met");
    // A conflict is not "the address is taken": the code went out, not the owner's notice.
    let mails: Vec<Value> = app.outbox().into_iter().filter(|m| m["to"] == normalised(&email).as_str()).collect();
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert!(mails[0]["code"].is_string(), "{mails:?}");
    assert_eq!(verify(&app, &email, &last_code(&app, &email)).await.status, 200);
}

#[tokio::test]
async fn a_registration_that_keeps_conflicting_answers_503_and_sends_nothing_then_works() {
    let mut app = spawn_app().await;
    let left = conflict_next_transactions(&mut app, 1000);
    let email = unique_email();
    let res = app.call(auth::register, request("POST", "/api/v1/auth/register", Some(json!({"email": email, "password": PASSWORD})))).await;
    assert_eq!((res.status, res.code()), (503, "dependency_unavailable"), "{}", res.raw);
    assert!(app.outbox().iter().all(|m| m["to"] != normalised(&email).as_str()), "no notice and no code: {:?}", app.outbox());
    left.store(0, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(register(&app, &email).await.status, 202);
    assert!(app.outbox().iter().any(|m| m["to"] == normalised(&email).as_str() && m["code"].is_string()), "nothing was created before");
}

/// The address's mail counters: (sends this hour, whether the 60 s cooldown runs).
async fn mail_counters(app: &TestApp, email: &str) -> (u32, bool) {
    let mut conn = redis_conn(app).await;
    let keys = shared::auth::limits::EmailKeys::new(&normalised(email));
    let hourly: Option<u32> = redis::cmd("GET").arg(&keys.hourly).query_async(&mut conn).await.unwrap();
    let cooling: bool = redis::cmd("EXISTS").arg(&keys.cooldown).query_async(&mut conn).await.unwrap();
    (hourly.unwrap_or(0), cooling)
}

#[tokio::test]
async fn a_registration_that_fails_midway_leaves_the_pending_code_and_the_mail_budget_as_they_were() {
    let mut app = spawn_app().await;
    let email = unique_email();
    assert_eq!(register(&app, &email).await.status, 202);
    let owners_code = last_code(&app, &email);
    a_minute_passes(&app, &email).await;
    let counters = mail_counters(&app, &email).await;
    let mails = app.outbox().len();
    // Someone registers the address again while the database keeps conflicting: 503, twice.
    let left = conflict_next_transactions(&mut app, 1000);
    let other = json!({"email": email, "password": "someone else's passphrase"});
    for _ in 0..2 {
        let res = app.call(auth::register, request("POST", "/api/v1/auth/register", Some(other.clone()))).await;
        assert_eq!((res.status, res.code()), (503, "dependency_unavailable"), "{}", res.raw);
    }
    left.store(0, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(app.outbox().len(), mails, "nothing was mailed");
    assert_eq!(mail_counters(&app, &email).await, counters, "no send was counted");
    // The owner's code still verifies, and their own password signs in.
    assert_eq!(verify(&app, &email, &owners_code).await.status, 200);
    assert_eq!(login(&app, &email, PASSWORD).await.status, 200);
}

#[tokio::test]
async fn a_rate_limited_registration_changes_nothing_and_leaves_the_address_free() {
    let app = spawn_app_with(&[("IP_RATE_LIMIT_PER_MINUTE", "2".into())]).await;
    // Fresh documentation addresses per run: the counters live in the shared redis for a minute.
    let source = || format!("2001:db8:2::{:x}", rand::random::<u16>());
    let (busy, elsewhere) = (source(), source());
    let from =
        |email: &str, ip: &str| from_ip(request("POST", "/api/v1/auth/register", Some(json!({"email": email, "password": PASSWORD}))), ip);
    let email = unique_email();
    assert_eq!(app.call(auth::register, from(&email, &busy)).await.status, 202);
    let owners_code = last_code(&app, &email);
    a_minute_passes(&app, &email).await;
    let counters = mail_counters(&app, &email).await;
    assert_eq!(app.call(auth::register, from(&unique_email(), &busy)).await.status, 202);
    let res = app.call(auth::register, from(&email, &busy)).await;
    assert_eq!((res.status, res.code()), (429, "too_many_requests"), "{}", res.raw);
    assert_eq!(mail_counters(&app, &email).await, counters, "no send was counted");
    let verify =
        from_ip(request("POST", "/api/v1/auth/verify", Some(json!({"email": email, "verification_code": owners_code}))), &elsewhere);
    assert_eq!(app.call(auth::verify, verify).await.status, 200, "the owner's code is as it was");
    // The slot was given back: a registration from elsewhere at once is the address's, and its
    // owner is told.
    let mails = app.outbox().len();
    assert_eq!(app.call(auth::register, from(&email, &elsewhere)).await.status, 202);
    assert_eq!(app.outbox().len(), mails + 1, "the owner's notice");
}

#[tokio::test]
async fn registrations_count_only_the_mails_that_fit_the_limits() {
    let app = spawn_app().await;
    let email = unique_email();
    assert_eq!(register(&app, &email).await.status, 202);
    assert_eq!(mail_counters(&app, &email).await, (1, true), "the code");
    assert_eq!(verify(&app, &email, &last_code(&app, &email)).await.status, 200);
    for round in 1..=2u32 {
        // A minute later the address is registered again: the owner's notice, counted.
        a_minute_passes(&app, &email).await;
        let mails = app.outbox().len();
        assert_eq!(register(&app, &email).await.status, 202);
        assert_eq!(app.outbox().len(), mails + 1, "round {round}: the notice");
        assert_eq!(mail_counters(&app, &email).await, (1 + round, true), "round {round}");
        // Again and again inside the cooldown: nothing is sent and nothing counted, as a new
        // account's code past the limits is sent uncounted (the counters tell nothing of the
        // address), so a burst of registrations cannot spend the owner's hour of mails.
        for again in 1..=5 {
            assert_eq!(register(&app, &email).await.status, 202);
            assert_eq!(app.outbox().len(), mails + 1, "round {round}.{again}: no mail in the cooldown");
            assert_eq!(mail_counters(&app, &email).await, (1 + round, true), "round {round}.{again}");
        }
    }
    // The owner's hour is not spent: a reset mail goes out once the cooldown is over.
    a_minute_passes(&app, &email).await;
    assert_eq!(forgot(&app, &email).await.status, 202);
    assert!(last_reset_mail(&app, &email)["code"].is_string());
    assert_eq!(login(&app, &email, PASSWORD).await.status, 200);
}

#[tokio::test]
async fn registrations_past_the_mail_limits_leave_the_same_counters_whether_the_address_was_free_or_taken() {
    let app = spawn_app().await;
    let mut conn = redis_conn(&app).await;
    // One mail sent a moment ago (its cooldown runs), then the hour's five spent (none runs):
    // forgot requests, say.
    for (sent_this_hour, cooling) in [(1u32, true), (5, false)] {
        let (taken, free) = (signed_in_user(&app).await.0, unique_email());
        for email in [&taken, &free] {
            let keys = shared::auth::limits::EmailKeys::new(&normalised(email));
            redis::cmd("SET").arg(&keys.hourly).arg(sent_this_hour).arg("EX").arg(3600).query_async::<()>(&mut conn).await.unwrap();
            a_minute_passes(&app, email).await;
            if cooling {
                redis::cmd("SET").arg(&keys.cooldown).arg("1").arg("EX").arg(60).query_async::<()>(&mut conn).await.unwrap();
            }
        }
        let mails = app.outbox().len();
        for round in 1..=2 {
            assert_eq!(register(&app, &taken).await.status, 202);
            assert_eq!(register(&app, &free).await.status, 202);
            for email in [&taken, &free] {
                assert_eq!(mail_counters(&app, email).await, (sent_this_hour, cooling), "round {round}: nothing counted");
            }
        }
        // The new account's code went out once, uncounted; the owner of the taken one heard nothing.
        let sent: Vec<Value> = app.outbox()[mails..].to_vec();
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0]["to"], normalised(&free).as_str());
    }
}

#[tokio::test]
async fn forgot_counts_a_mail_for_every_address_so_the_next_resend_answers_alike_whatever_the_address() {
    let app = spawn_app().await;
    for round in 1..=2 {
        let (unknown, pending, verified) = (unique_email(), unique_email(), signed_in_user(&app).await.0);
        register(&app, &pending).await;
        let mut answers = Vec::new();
        for email in [&unknown, &pending, &verified] {
            a_minute_passes(&app, email).await;
            assert_eq!(forgot(&app, email).await.status, 202, "round {round}");
            assert!(mail_counters(&app, email).await.1, "round {round}: the cooldown runs for {email}");
            let res = resend(&app, email).await;
            answers.push((res.status, res.code().to_owned()));
        }
        assert!(answers.iter().all(|a| *a == answers[0]), "round {round}: {answers:?}");
        assert_eq!(answers[0].0, 429, "round {round}: forgot's mail started the cooldown");
    }
}

#[tokio::test]
async fn a_doubled_registration_past_the_limits_leaves_the_first_ones_mailed_code_working() {
    let app = spawn_app().await;
    let mut conn = redis_conn(&app).await;
    // Inside the cooldown of the first one's code, then with the address's hour spent (the first
    // code sent uncounted, no cooldown running).
    for (round, hour_spent) in [(1, false), (2, true), (3, false), (4, true)] {
        let email = unique_email();
        if hour_spent {
            let keys = shared::auth::limits::EmailKeys::new(&normalised(&email));
            redis::cmd("SET").arg(&keys.hourly).arg(5).arg("EX").arg(3600).query_async::<()>(&mut conn).await.unwrap();
        }
        assert_eq!(register(&app, &email).await.status, 202);
        let mailed = last_code(&app, &email);
        let mails = app.outbox().len();
        // The same submit again (a double click, a retry after a timeout): nothing is mailed,
        // so nothing that was mailed may stop working.
        for _ in 0..2 {
            assert_eq!(register(&app, &email).await.status, 202);
        }
        assert_eq!(app.outbox().len(), mails, "round {round}: nothing more mailed");
        assert_eq!(verify(&app, &email, &mailed).await.status, 200, "round {round}: the mailed code works");
        assert_eq!(login(&app, &email, PASSWORD).await.status, 200, "round {round}");
    }
}

#[tokio::test]
async fn another_password_registered_inside_the_cooldown_replaces_the_unverified_account_and_mails_nothing() {
    let app = spawn_app().await;
    let email = unique_email();
    assert_eq!(register(&app, &email).await.status, 202);
    let mailed = last_code(&app, &email);
    let mails = app.outbox().len();
    let other = json!({"email": email, "password": "someone else's passphrase"});
    let res = app.call(auth::register, request("POST", "/api/v1/auth/register", Some(other.clone()))).await;
    assert_eq!(res.status, 202, "{}", res.raw);
    assert_eq!(app.outbox().len(), mails, "nothing mailed inside the cooldown");
    // The earlier code was for the replaced account: it is dead, and a doubled squatter's
    // registration cannot keep a password in place either (the last password registered holds).
    assert_eq!(verify(&app, &email, &mailed).await.code(), "invalid_code");
    a_minute_passes(&app, &email).await;
    assert_eq!(resend(&app, &email).await.status, 202);
    assert_eq!(verify(&app, &email, &last_code(&app, &email)).await.status, 200);
    assert_eq!(login(&app, &email, "someone else's passphrase").await.status, 200);
    assert_eq!(login(&app, &email, PASSWORD).await.code(), "invalid_credentials");
}

#[tokio::test]
async fn a_registration_of_a_verified_address_leaves_no_code_behind_and_its_reset_code_working() {
    let app = spawn_app().await;
    let (email, _) = signed_in_user(&app).await;
    a_minute_passes(&app, &email).await;
    assert_eq!(forgot(&app, &email).await.status, 202);
    let reset_code = last_reset_mail(&app, &email)["code"].as_str().unwrap().to_owned();
    let code_key = shared::auth::limits::EmailKeys::new(&normalised(&email)).code;
    let mut conn = redis_conn(&app).await;
    for _ in 0..2 {
        a_minute_passes(&app, &email).await;
        assert_eq!(register(&app, &email).await.status, 202);
        // The code its first step stored for an account that was never written is gone.
        let pending: bool = redis::cmd("EXISTS").arg(&code_key).query_async(&mut conn).await.unwrap();
        assert!(!pending, "a verification code is pending for a verified address");
    }
    let res = reset(&app, json!({"email": email, "code": reset_code, "new_password": NEW_PASSWORD})).await;
    assert_eq!(res.status, 200, "{}", res.raw);
    assert_eq!(login(&app, &email, NEW_PASSWORD).await.status, 200);
}

#[tokio::test]
async fn a_verification_whose_write_fails_keeps_the_code_for_the_retry() {
    let mut app = spawn_app().await;
    let email = unique_email();
    assert_eq!(register(&app, &email).await.status, 202);
    let code = last_code(&app, &email);
    let left = conflict_next_transactions(&mut app, 1000);
    let res = verify(&app, &email, &code).await;
    assert_eq!((res.status, res.code()), (503, "dependency_unavailable"), "{}", res.raw);
    left.store(0, std::sync::atomic::Ordering::SeqCst);
    let res = verify(&app, &email, &code).await;
    assert_eq!(res.status, 200, "the same code verifies once the database answers: {}", res.raw);
    assert_eq!(verify(&app, &email, &code).await.code(), "invalid_code", "and only once");
}

#[test]
fn no_type_holding_a_secret_prints_it_in_debug() {
    let refresh = shared::auth::store::RefreshToken::issue(
        &uuid::Uuid::new_v4().to_string(),
        &uuid::Uuid::new_v4().to_string(),
        1,
        shared::auth::tokens::SignIn::Password,
        shared::auth::tokens::Roles::NONE,
    );
    let secret_part = refresh.expose().rsplit('.').next().unwrap().to_owned();
    let hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";
    let creds = shared::auth::store::Credentials {
        user_id: "u".into(),
        password_hash: hash.into(),
        email_verified: true,
        expires_at: None,
        mfa_enabled: false,
        roles: Vec::new(),
    };
    let mail = shared::mail::Email {
        to: "owner@example.com".into(),
        subject: "Your verification code".into(),
        body: "Your verification code is 493027.".into(),
        code: Some("493027".into()),
        token: Some("f4k3-l1nk-t0k3n-0000000000000000000000000000".into()),
    };
    let values = std::collections::HashMap::from([
        ("APP_ENV".to_owned(), "local".to_owned()),
        ("REDIS_URL".to_owned(), "rediss://app-user:hunter2-redis-pass@cache.example:6379".to_owned()),
    ]);
    let config = shared::config::Config::from_lookup(|k| values.get(k).cloned()).unwrap();
    let second_factor = shared::auth::store::TotpRecord {
        pending_secret: Some("enc1.cGVuZGluZy1zZWNyZXQ".into()),
        secret: Some("enc1.YWN0aXZlLXNlY3JldA".into()),
        enabled: true,
        last_step: 1,
        recovery_codes: std::collections::HashMap::from([("9f86d081884c7d65".to_owned(), true)]),
    };
    for (printed, secret) in [
        (format!("{second_factor:?}"), "cGVuZGluZy1zZWNyZXQ"),
        (format!("{second_factor:?}"), "YWN0aXZlLXNlY3JldA"),
        (format!("{second_factor:?}"), "9f86d081884c7d65"),
        (format!("{refresh:?}"), secret_part.as_str()),
        (format!("{creds:?}"), "c2FsdHNhbHQ"),
        (format!("{mail:?}"), "493027"),
        (format!("{mail:?}"), "owner@"),
        (format!("{mail:?}"), "f4k3-l1nk"),
        (format!("{config:?}"), "hunter2-redis-pass"),
        (format!("{config:#?}"), "hunter2-redis-pass"),
    ] {
        assert!(!printed.contains(secret), "{secret:?} printed: {printed}");
    }
}

#[tokio::test]
async fn refresh_tokens_with_malformed_fields_are_refused_with_401_never_a_5xx() {
    let mut app = spawn_app().await;
    let (_, login) = signed_in_user(&app).await;
    let real = login["refresh_token"].as_str().unwrap();
    let parts: Vec<&str> = real.split('.').collect();
    let long = "a".repeat(2048);
    let very_long = "b".repeat(10_000);
    for forged in [
        format!("rt1.{long}.{}.{}.{}", parts[2], parts[3], parts[4]),
        format!("rt1.{}.{long}.{}.{}", parts[1], parts[3], parts[4]),
        format!("rt1.not-a-uuid.{}.{}.{}", parts[2], parts[3], parts[4]),
        format!("rt1.{}.{very_long}.{}.{}", parts[1], parts[3], parts[4]),
        format!("rt1.{}.{}.-5.{}", parts[1], parts[2], parts[4]),
        format!("rt1.{}.{}.{}.{}", parts[1], parts[2], parts[3], "é".repeat(43)),
    ] {
        let res = refresh(&app, &forged).await;
        assert_eq!((res.status, res.code()), (401, "invalid_refresh_token"), "{}", res.raw);
        let res = app.call(auth::logout, request("POST", "/api/v1/auth/logout", Some(json!({"refresh_token": forged.clone()})))).await;
        assert_eq!((res.status, res.code()), (401, "invalid_refresh_token"), "{}", res.raw);
    }
    assert_eq!(refresh(&app, real).await.status, 200, "the real one still works");
    // Refused on their shape alone, before any key is built: even with the table unreachable
    // (where AWS would refuse an oversized key) the answer is the 401.
    let unreachable = aws_sdk_dynamodb::config::Builder::from(&app.sdk).endpoint_url(format!("http://127.0.0.1:{}", free_port())).build();
    app.state.dynamo = aws_sdk_dynamodb::Client::from_conf(unreachable);
    for forged in
        [format!("rt1.{long}.{}.{}.{}", parts[2], parts[3], parts[4]), format!("rt1.not-a-uuid.{}.{}.{}", parts[2], parts[3], parts[4])]
    {
        let res = refresh(&app, &forged).await;
        assert_eq!((res.status, res.code()), (401, "invalid_refresh_token"), "{}", res.raw);
    }
}

#[tokio::test]
async fn a_spent_or_revoked_refresh_token_cannot_log_anyone_out() {
    let app = spawn_app_with(&[("REFRESH_REUSE_GRACE_SECS", "1".into())]).await;
    let (email, tokens) = signed_in_user(&app).await;
    let stolen = tokens["refresh_token"].as_str().unwrap().to_owned();
    // The owner refreshes; the thief keeps the old token, past its grace window.
    let owner = refresh(&app, &stolen).await.body["refresh_token"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let logout = |token: &str, scope: &str| {
        app.call(auth::logout, request("POST", "/api/v1/auth/logout", Some(json!({"refresh_token": token, "scope": scope}))))
    };
    for scope in ["global", "local", "global"] {
        let res = logout(&stolen, scope).await;
        assert_eq!((res.status, res.code()), (401, "invalid_refresh_token"), "{scope}: {}", res.raw);
    }
    let owner = refresh(&app, &owner).await;
    assert_eq!(owner.status, 200, "nothing was revoked: {}", owner.raw);
    // A token of a family already logged out cannot log out the user's other sessions.
    let other = login(&app, &email, PASSWORD).await.body["refresh_token"].as_str().unwrap().to_owned();
    let current = owner.body["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(logout(&current, "local").await.status, 204);
    assert_eq!(logout(&current, "global").await.code(), "invalid_refresh_token");
    assert_eq!(refresh(&app, &other).await.status, 200, "the other session lives");
}

#[tokio::test]
async fn one_address_in_any_case_or_width_is_one_account() {
    let app = spawn_app().await;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let first = format!("Alice.{id}@Example.com");
    assert_eq!(register(&app, &first).await.status, 202);
    let code = last_code(&app, &first);
    assert_eq!(verify(&app, &format!("ALICE.{id}@EXAMPLE.COM"), &code).await.status, 200);
    // The same address in other cases, and in full-width letters: taken, the owner is told.
    for twin in [format!("alice.{id}@example.COM"), format!("ＡＬＩＣＥ.{id}@example.com")] {
        a_minute_passes(&app, &first).await;
        let res = register(&app, &twin).await;
        assert_eq!(res.status, 202);
    }
    let canonical = format!("alice.{id}@example.com");
    let mails: Vec<Value> = app.outbox().into_iter().filter(|m| m["to"] == canonical.as_str()).collect();
    assert_eq!(mails.len(), 3, "{mails:?}");
    assert_eq!(mails.iter().filter(|m| m["code"].is_string()).count(), 1, "one account, one code: {mails:?}");
    for spelling in [first.clone(), canonical.clone(), format!("ａlice.{id}@example.com")] {
        let res = login(&app, &spelling, PASSWORD).await;
        assert_eq!(res.status, 200, "{spelling}: {}", res.raw);
    }
}

#[tokio::test]
async fn invisible_characters_in_an_address_are_refused_with_400() {
    let app = spawn_app().await;
    for hidden in ["ali\u{200B}ce@example.com", "alice\u{202E}@example.com", "al\u{00AD}ice@example.com"] {
        let res =
            app.call(auth::register, request("POST", "/api/v1/auth/register", Some(json!({"email": hidden, "password": PASSWORD})))).await;
        assert_eq!((res.status, res.code()), (400, "invalid_email"), "{hidden:?}: {}", res.raw);
    }
}

#[tokio::test]
async fn an_account_made_before_addresses_were_canonical_still_signs_in_as_it_was_made() {
    let app = spawn_app().await;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let typed = format!("Bob.{id}@example.com");
    // As an earlier release stored it: under the local part as typed.
    let user_id = uuid::Uuid::new_v4().to_string();
    let hash = shared::auth::password::hash(PASSWORD.to_owned()).await.unwrap();
    let creds = shared::auth::store::Credentials {
        user_id: user_id.clone(),
        password_hash: hash,
        email_verified: true,
        expires_at: None,
        mfa_enabled: false,
        roles: Vec::new(),
    };
    let profile = shared::auth::store::Profile {
        id: user_id.clone(),
        email: typed.clone(),
        username: None,
        email_verified: true,
        created_at: "2026-01-01T00:00:00Z".into(),
        revoked_before_ms: None,
        expires_at: None,
        revoked_sessions: Default::default(),
        mfa_enabled: false,
        roles: Vec::new(),
    };
    let items = vec![
        shared::keys::with_key(serde_dynamo::to_item(&creds).unwrap(), shared::keys::email(&typed)),
        shared::keys::with_key(serde_dynamo::to_item(&profile).unwrap(), shared::keys::profile(&user_id)),
    ];
    ops::devstack::put_items(app.dynamo(), &app.state.config.table_name, items).await.unwrap();
    let res = login(&app, &typed, PASSWORD).await;
    assert_eq!(res.status, 200, "{}", res.raw);
    assert_eq!(me(&app, res.body["access_token"].as_str().unwrap()).await.body["id"], user_id.as_str());
    // Registering it again as typed finds the older account: no twin.
    assert_eq!(register(&app, &typed).await.status, 202);
    assert!(app.outbox().iter().all(|m| !m["code"].is_string() || m["to"] != normalised(&typed).as_str()), "no new account's code");
}

#[tokio::test]
async fn an_access_token_from_a_refresh_racing_a_global_logout_dies_with_the_logout() {
    let mut app = spawn_app().await;
    let (email, tokens) = signed_in_user(&app).await;
    let other = login(&app, &email, PASSWORD).await.body["refresh_token"].as_str().unwrap().to_owned();
    let refresh_token = tokens["refresh_token"].as_str().unwrap().to_owned();
    // The refresh's rotation commits; before it answers, the user logs out everywhere.
    let gate = hold_next_transaction_answer(&mut app);
    let app = std::sync::Arc::new(app);
    let refreshing = {
        let app = app.clone();
        tokio::spawn(async move { refresh(&app, &refresh_token).await })
    };
    while !gate.held.load(std::sync::atomic::Ordering::SeqCst) {
        assert!(!refreshing.is_finished(), "the refresh answered without writing");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(5)).await; // a later millisecond than the rotation
    let body = json!({"refresh_token": other, "scope": "global"});
    assert_eq!(app.call(auth::logout, request("POST", "/api/v1/auth/logout", Some(body))).await.status, 204);
    gate.open();
    let refreshed = refreshing.await.unwrap();
    assert_eq!(refreshed.status, 200, "{}", refreshed.raw);
    let res = me(&app, refreshed.body["access_token"].as_str().unwrap()).await;
    assert_eq!((res.status, res.code()), (401, "invalid_token"), "the token outlived the logout: {}", res.raw);
}

#[tokio::test]
async fn the_owners_notice_counts_against_the_addresss_mail_limits() {
    let app = spawn_app().await;
    let email = unique_email();
    assert_eq!(register(&app, &email).await.status, 202);
    // Someone registers the address over and over, a minute apart and all at once.
    for _ in 0..10 {
        a_minute_passes(&app, &email).await;
        for res in join_all((0..3).map(|_| register(&app, &email))).await {
            assert_eq!(res.status, 202, "the same answer whatever the limits say: {}", res.raw);
        }
    }
    let mails = app.outbox().into_iter().filter(|m| m["to"] == normalised(&email).as_str()).count();
    assert_eq!(mails, shared::auth::limits::RESEND_MAX_PER_HOUR as usize, "the code plus four notices in the hour, not 31 mails");
}

#[tokio::test]
async fn a_replay_inside_the_grace_window_gets_the_same_successor_so_the_family_never_branches() {
    let app = spawn_app_with(&[("REFRESH_REUSE_GRACE_SECS", "4".into())]).await;
    let (_, tokens) = signed_in_user(&app).await;
    let first = tokens["refresh_token"].as_str().unwrap().to_owned();
    let answers = join_all((0..5).map(|_| refresh(&app, &first))).await;
    let successors: std::collections::BTreeSet<&str> = answers.iter().map(|r| r.body["refresh_token"].as_str().unwrap_or("-")).collect();
    assert_eq!(successors.len(), 1, "one successor for one token: {successors:?}");
    let successor = successors.into_iter().next().unwrap().to_owned();
    // A thief's replay inside the window gets that same token, not a line of its own...
    let stolen = refresh(&app, &first).await;
    assert_eq!(stolen.body["refresh_token"].as_str(), Some(successor.as_str()), "{}", stolen.raw);
    // ...so once the owner moves on, the thief's use is a reuse everyone sees.
    let owner = refresh(&app, &successor).await;
    assert_eq!(owner.status, 200);
    tokio::time::sleep(Duration::from_millis(4300)).await;
    assert_eq!(refresh(&app, &successor).await.code(), "refresh_token_reused");
    assert_eq!(refresh(&app, owner.body["refresh_token"].as_str().unwrap()).await.code(), "refresh_token_reused", "the family is revoked");
}

async fn login_from(app: &TestApp, email: &str, password: &str, ip: &str) -> TestResponse {
    let req = from_ip(request("POST", "/api/v1/auth/login", Some(json!({"email": email, "password": password}))), ip);
    app.call(auth::login, req).await
}

#[tokio::test]
async fn one_sources_failures_never_lock_the_owner_out_from_another() {
    let app = spawn_app().await;
    let (email, _) = signed_in_user(&app).await;
    for attacker in ["203.0.113.1", "203.0.113.2", "203.0.113.3"] {
        for _ in 0..shared::auth::limits::LOCKOUT_THRESHOLD {
            assert_eq!(login_from(&app, &email, "wrong password guess", attacker).await.status, 401);
        }
        // That source is locked, even with the right password...
        let res = login_from(&app, &email, PASSWORD, attacker).await;
        assert_eq!((res.status, res.code()), (429, "account_locked"), "{}", res.raw);
        // ...and the owner, elsewhere, is not.
        let res = login_from(&app, &email, PASSWORD, "198.51.100.77").await;
        assert_eq!(res.status, 200, "{}", res.raw);
    }
}

#[tokio::test]
async fn fifty_failures_an_hour_lock_the_address_for_every_source_known_or_not() {
    let app = spawn_app().await;
    let (email, _) = signed_in_user(&app).await;
    let unknown = unique_email();
    for target in [email.as_str(), unknown.as_str()] {
        for i in 0..shared::auth::limits::EMAIL_FAILURES_PER_HOUR {
            let res = login_from(&app, target, "wrong password guess", &format!("192.0.2.{i}")).await;
            assert_eq!(res.status, 401, "{target} failure {i}: {}", res.raw);
        }
        let res = login_from(&app, target, PASSWORD, "198.51.100.200").await;
        assert_eq!((res.status, res.code()), (429, "account_locked"), "{target}: {}", res.raw);
    }
}

fn last_token(app: &TestApp, email: &str) -> String {
    let email = normalised(email);
    app.outbox()
        .iter()
        .rev()
        .find(|m| m["to"] == email.as_str() && m["token"].is_string())
        .map(|m| m["token"].as_str().unwrap().to_owned())
        .unwrap_or_else(|| panic!("no token mail for {email}"))
}

async fn verify_with_token(app: &TestApp, email: &str, token: &str) -> TestResponse {
    app.call(auth::verify, request("POST", "/api/v1/auth/verify", Some(json!({"email": email, "token": token})))).await
}

async fn resend(app: &TestApp, email: &str) -> TestResponse {
    app.call(auth::resend, request("POST", "/api/v1/auth/resend", Some(json!({"email": email})))).await
}

#[tokio::test]
async fn ten_wrong_codes_a_day_refuse_every_code_of_the_address_whatever_the_resends() {
    let app = spawn_app().await;
    let email = unique_email();
    assert_eq!(register(&app, &email).await.status, 202);
    for round in 0..2 {
        for _ in 0..5 {
            assert_eq!(verify(&app, &email, "000000").await.code(), "invalid_code");
        }
        a_minute_passes(&app, &email).await;
        assert_eq!(resend(&app, &email).await.status, 202, "round {round}");
    }
    // Ten wrong in the window: even the right, fresh code is refused...
    let res = verify(&app, &email, &last_code(&app, &email)).await;
    assert_eq!((res.status, res.code()), (400, "invalid_code"), "{}", res.raw);
    // ...and the owner, who has the mail, finishes with its link token.
    assert_eq!(verify_with_token(&app, &email, &last_token(&app, &email)).await.status, 200);
}

#[tokio::test]
async fn wrong_guesses_by_others_never_stop_the_owner_finishing_with_the_mailed_token() {
    let app = spawn_app().await;
    let email = unique_email();
    assert_eq!(register(&app, &email).await.status, 202);
    let token = last_token(&app, &email);
    for i in 0..30 {
        let req = from_ip(
            request("POST", "/api/v1/auth/verify", Some(json!({"email": email, "verification_code": format!("{i:06}")}))),
            &format!("203.0.113.{i}"),
        );
        assert_eq!(app.call(auth::verify, req).await.status, 400);
    }
    let res = verify_with_token(&app, &email, &token).await;
    assert_eq!(res.status, 200, "{}", res.raw);
    assert_eq!(verify_with_token(&app, &email, &token).await.code(), "invalid_code", "single use");
    assert_eq!(login(&app, &email, PASSWORD).await.status, 200);
    // A wrong token, or both fields, or neither: refused.
    let fresh = unique_email();
    assert_eq!(register(&app, &fresh).await.status, 202);
    assert_eq!(verify_with_token(&app, &fresh, &"A".repeat(43)).await.code(), "invalid_code");
    let both = json!({"email": fresh, "token": last_token(&app, &fresh), "verification_code": last_code(&app, &fresh)});
    assert_eq!(app.call(auth::verify, request("POST", "/api/v1/auth/verify", Some(both))).await.code(), "invalid_request");
    let neither = json!({"email": fresh});
    assert_eq!(app.call(auth::verify, request("POST", "/api/v1/auth/verify", Some(neither))).await.code(), "invalid_request");
}

#[tokio::test]
async fn registering_an_unverified_address_again_replaces_it_so_a_squatter_gets_nothing() {
    let app = spawn_app().await;
    let email = unique_email();
    // Someone registers the owner's address with their own password; it is never verified.
    let squatter = json!({"email": email, "password": "a squatter's own passphrase"});
    assert_eq!(app.call(auth::register, request("POST", "/api/v1/auth/register", Some(squatter))).await.status, 202);
    let squatters_code = last_code(&app, &email);
    // It expires by itself within a day (the table's TTL)...
    let ttl: i64 = login_record(&app, &email).await["expires_at"].as_n().unwrap().parse().unwrap();
    let day = chrono::Utc::now().timestamp() + 24 * 3600;
    assert!((day - 60..=day).contains(&ttl), "expires within a day: {ttl}");
    // ...and the owner can register it at once: same answer, their password, a fresh code.
    a_minute_passes(&app, &email).await;
    assert_eq!(register(&app, &email).await.status, 202);
    let owners_code = last_code(&app, &email);
    assert_ne!(owners_code, squatters_code);
    assert_eq!(verify(&app, &email, &squatters_code).await.code(), "invalid_code", "the squatter's code is dead");
    assert_eq!(verify(&app, &email, &owners_code).await.status, 200);
    assert_eq!(login(&app, &email, PASSWORD).await.status, 200);
    assert_eq!(login(&app, &email, "a squatter's own passphrase").await.code(), "invalid_credentials");
    // Verified: nothing expires any more.
    assert!(!login_record(&app, &email).await.contains_key("expires_at"));
}

#[tokio::test]
async fn revoking_a_session_kills_its_access_tokens_at_once_and_no_other_sessions() {
    let app = spawn_app_with(&[("REFRESH_REUSE_GRACE_SECS", "1".into())]).await;
    let (email, a) = signed_in_user(&app).await;
    let b = login(&app, &email, PASSWORD).await.body;
    let bot_status = |token: String| {
        let app = &app;
        async move { app.call(shared::handlers::trading::status, with_bearer(request("GET", "/api/v1/bot/status", None), &token)).await }
    };
    let (a_access, b_access) = (a["access_token"].as_str().unwrap().to_owned(), b["access_token"].as_str().unwrap().to_owned());
    // A's refresh token is stolen and replayed after the owner used it: reuse detected.
    let stolen = a["refresh_token"].as_str().unwrap().to_owned();
    let rotated = refresh(&app, &stolen).await;
    let a_fresh_access = rotated.body["access_token"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(refresh(&app, &stolen).await.code(), "refresh_token_reused");
    for token in [a_access, a_fresh_access] {
        let res = me(&app, &token).await;
        assert_eq!((res.status, res.code()), (401, "invalid_token"), "a token of the revoked session: {}", res.raw);
        assert_eq!(bot_status(token).await.code(), "invalid_token");
    }
    assert_eq!(me(&app, &b_access).await.status, 200, "the other session lives");
    assert_eq!(bot_status(b_access.clone()).await.status, 200);
    // A local logout kills its own session's access token at once too.
    let body = json!({"refresh_token": b["refresh_token"]});
    assert_eq!(app.call(auth::logout, request("POST", "/api/v1/auth/logout", Some(body))).await.status, 204);
    assert_eq!(me(&app, &b_access).await.code(), "invalid_token");
    // A new login is a new session and works.
    let c = login(&app, &email, PASSWORD).await;
    assert_eq!(me(&app, c.body["access_token"].as_str().unwrap()).await.status, 200);
}

#[tokio::test]
async fn revoking_a_session_of_a_profile_older_than_the_map_works_and_old_entries_are_dropped() {
    let app = spawn_app().await;
    let (email, first) = signed_in_user(&app).await;
    let user = me(&app, first["access_token"].as_str().unwrap()).await.body["id"].as_str().unwrap().to_owned();
    let table = &app.state.config.table_name;
    // As a profile made before sessions were revoked one by one: no map at all.
    app.dynamo()
        .update_item()
        .table_name(table)
        .set_key(Some(shared::keys::profile(&user)))
        .update_expression("REMOVE revoked_sessions")
        .send()
        .await
        .unwrap();
    let logout = |token: &Value| {
        let body = json!({"refresh_token": token["refresh_token"]});
        app.call(auth::logout, request("POST", "/api/v1/auth/logout", Some(body)))
    };
    let res = logout(&first).await;
    assert_eq!(res.status, 204, "{}", res.raw);
    assert_eq!(me(&app, first["access_token"].as_str().unwrap()).await.code(), "invalid_token");
    // An entry older than any access token can live is dropped by the next revocation.
    let hours_ago = (chrono::Utc::now() - chrono::Duration::hours(2)).timestamp_millis();
    app.dynamo()
        .update_item()
        .table_name(table)
        .set_key(Some(shared::keys::profile(&user)))
        .update_expression("SET revoked_sessions.#old = :t")
        .expression_attribute_names("#old", "long-gone-session")
        .expression_attribute_values(":t", aws_sdk_dynamodb::types::AttributeValue::N(hours_ago.to_string()))
        .send()
        .await
        .unwrap();
    let second = login(&app, &email, PASSWORD).await.body;
    assert_eq!(logout(&second).await.status, 204);
    let item = app.dynamo().get_item().table_name(table).set_key(Some(shared::keys::profile(&user))).send().await.unwrap().item.unwrap();
    let sessions = item["revoked_sessions"].as_m().unwrap();
    assert!(!sessions.contains_key("long-gone-session"), "{sessions:?}");
    assert_eq!(sessions.len(), 2, "the two sessions revoked within the hour: {sessions:?}");
}

#[tokio::test]
async fn an_unverified_account_past_its_day_is_gone_even_before_the_ttl_sweep() {
    let app = spawn_app().await;
    let email = unique_email();
    assert_eq!(register(&app, &email).await.status, 202);
    let code = last_code(&app, &email);
    let yesterday = (chrono::Utc::now().timestamp() - 60).to_string();
    app.dynamo()
        .update_item()
        .table_name(&app.state.config.table_name)
        .set_key(Some(shared::keys::email(&normalised(&email))))
        .update_expression("SET expires_at = :t")
        .expression_attribute_values(":t", aws_sdk_dynamodb::types::AttributeValue::N(yesterday))
        .send()
        .await
        .unwrap();
    let mails = app.outbox().len();
    a_minute_passes(&app, &email).await;
    assert_eq!(resend(&app, &email).await.status, 202);
    assert_eq!(app.outbox().len(), mails, "no code for an account that is gone");
    assert_eq!(verify(&app, &email, &code).await.code(), "invalid_code");
    assert_eq!(login(&app, &email, PASSWORD).await.code(), "invalid_credentials");
    // And the address can be registered again at once.
    a_minute_passes(&app, &email).await;
    assert_eq!(register(&app, &email).await.status, 202);
    assert_eq!(verify(&app, &email, &last_code(&app, &email)).await.status, 200);
}

#[tokio::test]
async fn a_squatter_spending_the_mail_budget_cannot_keep_their_password_in_place() {
    let app = spawn_app().await;
    let email = unique_email();
    let squatter = json!({"email": email, "password": "a squatter's own passphrase"});
    assert_eq!(app.call(auth::register, request("POST", "/api/v1/auth/register", Some(squatter))).await.status, 202);
    for _ in 1..shared::auth::limits::RESEND_MAX_PER_HOUR {
        a_minute_passes(&app, &email).await;
        assert_eq!(resend(&app, &email).await.status, 202);
    }
    // The hour's mails are spent; the owner registers: nothing can be mailed, but the squatter's
    // registration is replaced.
    a_minute_passes(&app, &email).await;
    assert_eq!(register(&app, &email).await.status, 202);
    // An hour later the owner asks again and verifies.
    let mut conn = redis_conn(&app).await;
    let keys = shared::auth::limits::EmailKeys::new(&normalised(&email));
    redis::cmd("DEL").arg(&keys.hourly).arg(&keys.cooldown).query_async::<()>(&mut conn).await.unwrap();
    assert_eq!(resend(&app, &email).await.status, 202);
    assert_eq!(verify(&app, &email, &last_code(&app, &email)).await.status, 200);
    assert_eq!(login(&app, &email, PASSWORD).await.status, 200);
    assert_eq!(login(&app, &email, "a squatter's own passphrase").await.code(), "invalid_credentials");
}

#[tokio::test]
async fn anothers_resend_never_kills_the_token_in_the_owners_mail_but_a_replaced_accounts_token_is_dead() {
    let app = spawn_app().await;
    let email = unique_email();
    assert_eq!(register(&app, &email).await.status, 202);
    let owners = last_token(&app, &email);
    for _ in 0..3 {
        a_minute_passes(&app, &email).await;
        assert_eq!(resend(&app, &email).await.status, 202); // someone else, every minute
    }
    assert_eq!(verify_with_token(&app, &email, &owners).await.status, 200, "the first mail's token still works");

    // A squatter's token dies with the registration the owner's replaced.
    let taken = unique_email();
    let squatter = json!({"email": taken, "password": "a squatter's own passphrase"});
    assert_eq!(app.call(auth::register, request("POST", "/api/v1/auth/register", Some(squatter))).await.status, 202);
    let squatters = last_token(&app, &taken);
    a_minute_passes(&app, &taken).await;
    assert_eq!(register(&app, &taken).await.status, 202);
    assert_eq!(verify_with_token(&app, &taken, &squatters).await.code(), "invalid_code");
    assert_eq!(verify_with_token(&app, &taken, &last_token(&app, &taken)).await.status, 200);
    assert_eq!(login(&app, &taken, PASSWORD).await.status, 200);
}

async fn forgot(app: &TestApp, email: &str) -> TestResponse {
    app.call(auth::forgot_password, request("POST", "/api/v1/auth/password/forgot", Some(json!({"email": email})))).await
}

async fn reset(app: &TestApp, body: Value) -> TestResponse {
    app.call(auth::reset_password, request("POST", "/api/v1/auth/password/reset", Some(body))).await
}

fn last_reset_mail(app: &TestApp, email: &str) -> Value {
    let email = normalised(email);
    app.outbox()
        .into_iter()
        .rev()
        .find(|m| m["to"] == email.as_str() && m["subject"].as_str().is_some_and(|s| s.to_lowercase().contains("reset")))
        .unwrap_or_else(|| panic!("no reset mail for {email}"))
}

const NEW_PASSWORD: &str = "a brand new long passphrase";

#[tokio::test]
async fn forgot_answers_the_same_bytes_for_unknown_pending_and_verified_addresses() {
    let app = spawn_app().await;
    let (verified, _) = signed_in_user(&app).await;
    let pending = unique_email();
    assert_eq!(register(&app, &pending).await.status, 202);
    let unknown = unique_email();
    for email in [&verified, &pending, &unknown] {
        a_minute_passes(&app, email).await;
    }
    let answers: Vec<TestResponse> = vec![forgot(&app, &unknown).await, forgot(&app, &pending).await, forgot(&app, &verified).await];
    for res in &answers {
        assert_eq!((res.status, res.raw.as_str()), (202, r#"{"status":"reset_requested"}"#));
    }
    // Only the verified account is mailed.
    let resets: Vec<Value> = app.outbox().into_iter().filter(|m| m["subject"] == "Reset your password").collect();
    assert_eq!(resets.len(), 1, "{resets:?}");
    assert_eq!(resets[0]["to"], normalised(&verified).as_str());
    assert!(resets[0]["code"].is_string() && resets[0]["token"].is_string());
}

#[tokio::test]
async fn a_reset_sets_the_new_password_revokes_every_session_and_clears_the_lockout() {
    let app = spawn_app().await;
    let (email, tokens) = signed_in_user(&app).await;
    // Someone locked the owner out from the owner's own address.
    for _ in 0..shared::auth::limits::LOCKOUT_THRESHOLD {
        login(&app, &email, "wrong password guess").await;
    }
    assert_eq!(login(&app, &email, PASSWORD).await.code(), "account_locked");
    a_minute_passes(&app, &email).await;
    assert_eq!(forgot(&app, &email).await.status, 202);
    let mail = last_reset_mail(&app, &email);
    let code = mail["code"].as_str().unwrap();
    // The policy applies, and a wrong code is refused without spending the right one.
    let weak = reset(&app, json!({"email": email, "code": code, "new_password": "short"})).await;
    assert_eq!((weak.status, weak.code()), (400, "weak_password"));
    let wrong = if code == "000000" { "111111" } else { "000000" };
    assert_eq!(reset(&app, json!({"email": email, "code": wrong, "new_password": NEW_PASSWORD})).await.code(), "invalid_code");
    let res = reset(&app, json!({"email": email, "code": code, "new_password": NEW_PASSWORD})).await;
    assert_eq!((res.status, res.raw.as_str()), (200, r#"{"status":"password_reset"}"#), "{}", res.raw);
    // Every session and access token of before is dead.
    assert_eq!(refresh(&app, tokens["refresh_token"].as_str().unwrap()).await.status, 401);
    assert_eq!(me(&app, tokens["access_token"].as_str().unwrap()).await.code(), "invalid_token");
    // The lock is gone, the old password is, and the new one works, from the same source.
    assert_eq!(login(&app, &email, PASSWORD).await.code(), "invalid_credentials");
    let res = login(&app, &email, NEW_PASSWORD).await;
    assert_eq!(res.status, 200, "{}", res.raw);
    // The code worked once.
    assert_eq!(
        reset(&app, json!({"email": email, "code": code, "new_password": "yet another long passphrase"})).await.code(),
        "invalid_code"
    );
}

#[tokio::test]
async fn a_reset_by_link_token_works_once_and_a_verification_code_cannot_reset() {
    let app = spawn_app().await;
    let (email, _) = signed_in_user(&app).await;
    a_minute_passes(&app, &email).await;
    assert_eq!(forgot(&app, &email).await.status, 202);
    let token = last_reset_mail(&app, &email)["token"].as_str().unwrap().to_owned();
    assert_eq!(reset(&app, json!({"email": email, "token": token, "new_password": NEW_PASSWORD})).await.status, 200);
    assert_eq!(reset(&app, json!({"email": email, "token": token, "new_password": NEW_PASSWORD})).await.code(), "invalid_code");
    assert_eq!(login(&app, &email, NEW_PASSWORD).await.status, 200);
    // A pending account's verification code is not a reset code.
    let pending = unique_email();
    assert_eq!(register(&app, &pending).await.status, 202);
    let res = reset(&app, json!({"email": pending, "code": last_code(&app, &pending), "new_password": NEW_PASSWORD})).await;
    assert_eq!(res.code(), "invalid_code");
}

/// The median of `samples`, in milliseconds.
fn median_ms(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1000.0
}

/// Runs `call` 30 times for each kind of address, the three kinds side by side each time (so
/// load falls on all alike), and checks the answers agree and the median times lie within 10 %.
async fn answers_alike<F, Fut>(route: &str, call: F)
where
    F: Fn(usize, usize) -> Fut,
    Fut: std::future::Future<Output = TestResponse>,
{
    let mut times: [Vec<Duration>; 3] = Default::default();
    for i in 0..30 {
        let timed = |kind: usize| {
            let answer = call(kind, i);
            async move {
                let started = std::time::Instant::now();
                let res = answer.await;
                (res, started.elapsed())
            }
        };
        let (unknown, pending, verified) = tokio::join!(timed(0), timed(1), timed(2));
        // Every field but the request's own id.
        let answer = |res: &TestResponse| {
            let mut body = res.body.clone();
            body.as_object_mut().map(|b| b.remove("request_id"));
            (res.status, body)
        };
        for (kind, (res, _)) in [&unknown, &pending, &verified].iter().enumerate() {
            assert_eq!(answer(res), answer(&unknown.0), "{route} call {i}: kind {kind} answered otherwise");
        }
        for (kind, (_, took)) in [unknown, pending, verified].into_iter().enumerate() {
            times[kind].push(took);
        }
    }
    let medians: Vec<f64> = times.into_iter().map(median_ms).collect();
    let (low, high) = medians.iter().fold((f64::MAX, 0f64), |(lo, hi), m| (lo.min(*m), hi.max(*m)));
    eprintln!("{route}: median ms unknown {:.1}, pending {:.1}, verified {:.1}", medians[0], medians[1], medians[2]);
    assert!(high <= low * 1.10, "{route}: medians {medians:?} differ by more than 10 %");
}

#[tokio::test]
async fn register_resend_and_forgot_answer_alike_and_in_equal_time_for_unknown_pending_and_verified_addresses() {
    let app = spawn_app_with(&[("AUTH_ANSWER_FLOOR_MS", "400".into())]).await;
    let (pending, verified) = (unique_email(), signed_in_user(&app).await.0);
    register(&app, &pending).await;
    let unknown = unique_email();
    let address = |kind: usize| [&unknown, &pending, &verified][kind].clone();

    answers_alike("register", |kind, _| {
        // A new address each time is unknown each time.
        let email = if kind == 0 { unique_email() } else { address(kind) };
        let app = &app;
        async move {
            app.call(auth::register, request("POST", "/api/v1/auth/register", Some(json!({"email": email, "password": PASSWORD})))).await
        }
    })
    .await;
    // Resend and forgot, each on addresses with the same recent history: made over a minute ago
    // (their registration mail out of the cooldown), nothing else sent since.
    let (unknown, pending, verified) = (unique_email(), unique_email(), signed_in_user(&app).await.0);
    register(&app, &pending).await;
    for email in [&pending, &verified] {
        a_minute_passes(&app, email).await;
    }
    let address = |kind: usize| [&unknown, &pending, &verified][kind].clone();
    answers_alike("resend", |kind, _| {
        let email = address(kind);
        let app = &app;
        async move { app.call(auth::resend, request("POST", "/api/v1/auth/resend", Some(json!({"email": email})))).await }
    })
    .await;
    answers_alike("forgot", |kind, _| {
        let email = address(kind);
        let app = &app;
        async move { forgot(app, &email).await }
    })
    .await;
}

/// A registration's first-step code for `user_id`, with `hash` as both its code's and its link
/// token's hash.
fn first_step_code<'a>(user_id: &'a str, hash: &'a str) -> shared::auth::limits::NewCode<'a> {
    shared::auth::limits::NewCode { purpose: shared::auth::limits::Purpose::Verify, code_hash: hash, token_hash: hash, user_id }
}

#[tokio::test]
async fn a_registration_that_outlived_its_slot_cannot_give_back_the_one_that_took_it_since() {
    use shared::auth::limits::{Abandon, EmailKeys, Limits, RegistrationStart};
    let app = spawn_app().await;
    let redis = &app.state.redis;
    let limits = &Limits { ip_per_minute: 1000 };
    let email = &normalised(&unique_email());
    let mut conn = redis_conn(&app).await;
    let (first, second, third) = (first_step_code("first", "aa"), first_step_code("second", "bb"), first_step_code("third", "cc"));
    let begin = |code| async move { limits.begin_registration(redis, email, &code).await.unwrap() };
    assert!(matches!(begin(first).await, RegistrationStart::Started { .. }));
    // The first one's slot runs out while it waits on the database, and a second takes it.
    redis::cmd("DEL").arg(EmailKeys::new(email).registering).query_async::<()>(&mut conn).await.unwrap();
    assert!(matches!(begin(second).await, RegistrationStart::Started { .. }));
    // The first, done at last, gives back what it holds, every way it can: nothing.
    limits.release_registration_slot(redis, email, "first").await;
    limits.store_code(redis, email, &first, true).await.unwrap();
    limits.abandon_registration(redis, email, &first, Abandon::KeepCount).await;
    assert_eq!(begin(third).await, RegistrationStart::Busy, "the second still holds the slot");
    limits.release_registration_slot(redis, email, "second").await;
    assert!(matches!(begin(third).await, RegistrationStart::Started { .. }), "given back by its holder");
}

#[tokio::test]
async fn undoing_a_first_step_that_may_not_have_run_leaves_another_registrations_code_count_and_slot() {
    use shared::auth::limits::{Abandon, EmailKeys, Limits, MailFit, RegistrationStart};
    let app = spawn_app().await;
    let (redis, limits) = (&app.state.redis, Limits { ip_per_minute: 1000 });
    let email = normalised(&unique_email());
    let keys = EmailKeys::new(&email);
    let mut conn = redis_conn(&app).await;
    assert_eq!(
        limits.begin_registration(redis, &email, &first_step_code("other", "bb")).await.unwrap(),
        RegistrationStart::Started { mail: MailFit::Within }
    );
    let counters = mail_counters(&app, &email).await;
    // This one's first step never reached redis (its answer was lost before it was sent).
    limits.abandon_registration(redis, &email, &first_step_code("lost", "aa"), Abandon::Uncount).await;
    let code: Option<String> = redis::cmd("HGET").arg(&keys.code).arg("hash").query_async(&mut conn).await.unwrap();
    assert_eq!(code.as_deref(), Some("bb"), "the other registration's code");
    assert_eq!(mail_counters(&app, &email).await, counters);
    let holder: Option<String> = redis::cmd("GET").arg(&keys.registering).query_async(&mut conn).await.unwrap();
    assert_eq!(holder.as_deref(), Some("other"));
}

#[tokio::test]
async fn undoing_a_first_step_whose_answer_was_lost_after_it_ran_undoes_all_of_it() {
    use shared::auth::limits::{Abandon, EmailKeys, Limits, MailFit, RegistrationStart};
    let app = spawn_app().await;
    let (redis, limits) = (&app.state.redis, Limits { ip_per_minute: 1000 });
    let email = normalised(&unique_email());
    let keys = EmailKeys::new(&email);
    let mut conn = redis_conn(&app).await;
    for round in 1..=3 {
        let before = mail_counters(&app, &email).await;
        let lost = first_step_code("lost", "aa");
        // It ran (its answer is what was lost): the caller cannot tell what it counted.
        assert_eq!(limits.begin_registration(redis, &email, &lost).await.unwrap(), RegistrationStart::Started { mail: MailFit::Within });
        limits.abandon_registration(redis, &email, &lost, Abandon::Uncount).await;
        assert_eq!(mail_counters(&app, &email).await, before, "round {round}: un-counted");
        let code: bool = redis::cmd("EXISTS").arg(&keys.code).query_async(&mut conn).await.unwrap();
        assert!(!code, "round {round}: its code is gone");
        let holder: Option<String> = redis::cmd("GET").arg(&keys.registering).query_async(&mut conn).await.unwrap();
        assert_eq!(holder, None, "round {round}: its slot is free");
    }
}

#[tokio::test]
async fn a_refused_registration_never_extends_revives_or_ends_a_cooldown_it_did_not_start() {
    use shared::auth::limits::{Abandon, EmailKeys, Limits, MailFit, RegistrationStart};
    let app = spawn_app().await;
    let (redis, limits) = (&app.state.redis, Limits { ip_per_minute: 1000 });
    let email = normalised(&unique_email());
    let keys = EmailKeys::new(&email);
    let mut conn = redis_conn(&app).await;
    let probe = redis_conn(&app).await;
    let pttl = || {
        let (key, mut conn) = (keys.cooldown.clone(), probe.clone());
        async move { redis::cmd("PTTL").arg(key).query_async::<i64>(&mut conn).await.unwrap() }
    };
    let refused = first_step_code("refused", "aa");
    let begin = || limits.begin_registration(redis, &email, &refused);
    let abandon = || limits.abandon_registration(redis, &email, &refused, Abandon::Uncount);
    redis::cmd("SET").arg(&keys.hourly).arg(2).arg("EX").arg(3600).query_async::<()>(&mut conn).await.unwrap();

    // A cooldown running from a mail that went out: left as it is, and nothing is counted.
    for round in 1..=3 {
        redis::cmd("SET").arg(&keys.cooldown).arg("1").arg("PX").arg(30_000).query_async::<()>(&mut conn).await.unwrap();
        let before = pttl().await;
        assert_eq!(begin().await.unwrap(), RegistrationStart::Started { mail: MailFit::CoolingDown }, "round {round}");
        abandon().await;
        let after = pttl().await;
        assert!(after > 0 && after <= before, "round {round}: {before} ms before, {after} ms after");
        assert_eq!(mail_counters(&app, &email).await, (2, true), "round {round}");
    }
    // Under half a second left (which TTL reads as none) is still a cooldown, and when it runs
    // out before the registration gives up, un-counting does not bring it back.
    redis::cmd("SET").arg(&keys.cooldown).arg("1").arg("PX").arg(400).query_async::<()>(&mut conn).await.unwrap();
    assert_eq!(begin().await.unwrap(), RegistrationStart::Started { mail: MailFit::CoolingDown });
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    abandon().await;
    assert_eq!(pttl().await, -2, "a cooldown that ran out stays out");
    assert_eq!(mail_counters(&app, &email).await, (2, false));
    // No cooldown: this one's is counted and un-counted; a cooldown another mail started after
    // its own ran out is that mail's, and stays.
    assert_eq!(begin().await.unwrap(), RegistrationStart::Started { mail: MailFit::Within });
    assert_eq!(mail_counters(&app, &email).await, (3, true), "counted");
    redis::cmd("SET").arg(&keys.cooldown).arg("1").arg("EX").arg(60).query_async::<()>(&mut conn).await.unwrap();
    abandon().await;
    assert!(pttl().await > 55_000, "another mail's cooldown");
    assert_eq!(mail_counters(&app, &email).await, (3, true), "its count stays: one too many, never one too few");
    redis::cmd("DEL").arg(&keys.cooldown).query_async::<()>(&mut conn).await.unwrap();
    assert_eq!(begin().await.unwrap(), RegistrationStart::Started { mail: MailFit::Within });
    assert_eq!(mail_counters(&app, &email).await, (4, true), "counted");
    abandon().await;
    assert_eq!(pttl().await, -2, "its own cooldown goes with its count");
    assert_eq!(mail_counters(&app, &email).await, (3, false), "un-counted");
}
