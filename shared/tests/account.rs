//! The account lifecycle against real redis, DynamoDB Local and moto: password change, TOTP
//! two-factor, sessions and deletion, each through more than one cycle.

mod common;

use common::mfa::*;
use common::*;
use futures::future::join_all;
use serde_json::json;
use shared::handlers::{auth, trading};

async fn login(app: &TestApp, email: &str, password: &str) -> TestResponse {
    app.call(auth::login, request("POST", "/api/v1/auth/login", Some(json!({"email": email, "password": password})))).await
}

async fn login_with(app: &TestApp, email: &str, ip: &str, user_agent: &str) -> TestResponse {
    let mut req = from_ip(request("POST", "/api/v1/auth/login", Some(json!({"email": email, "password": PASSWORD}))), ip);
    req.headers_mut().insert("user-agent", user_agent.parse().unwrap());
    app.call(auth::login, req).await
}

async fn me(app: &TestApp, token: &str) -> TestResponse {
    app.call_as(auth::me, token, "GET", "/api/v1/users/me", None).await
}

async fn refresh(app: &TestApp, token: &str) -> TestResponse {
    app.call(auth::refresh, request("POST", "/api/v1/auth/refresh", Some(json!({"refresh_token": token})))).await
}

async fn change(app: &TestApp, token: &str, current: &str, new: &str) -> TestResponse {
    let body = json!({"current_password": current, "new_password": new});
    app.call_as(auth::change_password, token, "POST", "/api/v1/auth/password/change", Some(body)).await
}

async fn stored(
    app: &TestApp,
    key: shared::keys::Key,
) -> Option<std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>> {
    app.dynamo().get_item().table_name(&app.state.config.table_name).set_key(Some(key)).send().await.unwrap().item
}

fn user_id(access_token: &str) -> String {
    claims(access_token)["sub"].as_str().unwrap().to_owned()
}

// ---------------------------------------------------------------- password change

#[tokio::test]
async fn changing_the_password_twice_ends_every_other_session_each_time_and_keeps_the_caller_signed_in() {
    let app = spawn_app().await;
    let user = sign_up(&app).await;
    let pair = |res: &TestResponse| {
        (res.body["access_token"].as_str().unwrap().to_owned(), res.body["refresh_token"].as_str().unwrap().to_owned())
    };
    let mut live = vec![(user.access.clone(), user.refresh.clone()), pair(&login(&app, &user.email, PASSWORD).await)];
    let (mut caller, mut password) = (user.access.clone(), PASSWORD.to_owned());
    for new_password in ["a brand new passphrase one", "and a second new passphrase"] {
        let res = change(&app, &caller, &password, new_password).await;
        assert_eq!(res.status, 200, "{}", res.raw);
        let fresh = pair(&res);
        assert_eq!(me(&app, &fresh.0).await.status, 200, "the new pair works");
        for (old_access, old_refresh) in live.drain(..) {
            assert_eq!(me(&app, &old_access).await.code(), "invalid_token", "every earlier access token dies at once");
            assert_eq!(refresh(&app, &old_refresh).await.status, 401, "every earlier session is revoked");
        }
        assert_eq!(login(&app, &user.email, &password).await.code(), "invalid_credentials", "the old password is gone");
        // The next cycle: this session changes it again, and another device is signed in.
        let another = login(&app, &user.email, new_password).await;
        assert_eq!(another.status, 200, "{}", another.raw);
        live = vec![fresh.clone(), pair(&another)];
        (caller, password) = (fresh.0, new_password.to_owned());
    }
    let rotated = refresh(&app, &live[0].1).await;
    assert_eq!(rotated.status, 200, "the caller's new session refreshes: {}", rotated.raw);
}

#[tokio::test]
async fn a_wrong_current_password_is_refused_and_counts_toward_the_lockout() {
    let app = spawn_app().await;
    let user = sign_up(&app).await;
    for _ in 0..5 {
        let res = change(&app, &user.access, "not my password at all", "a brand new passphrase").await;
        assert_eq!((res.status, res.code()), (401, "invalid_credentials"), "{}", res.raw);
    }
    let res = login(&app, &user.email, PASSWORD).await;
    assert_eq!((res.status, res.code()), (429, "account_locked"), "five wrong passwords lock, wherever they were typed");
    let res = change(&app, &user.access, PASSWORD, "a brand new passphrase").await;
    assert_eq!(res.code(), "account_locked", "even the right one, while locked");
}

#[tokio::test]
async fn a_weak_new_password_is_refused_before_the_current_one_is_checked() {
    let app = spawn_app().await;
    let user = sign_up(&app).await;
    // A wrong current password with a weak new one: the policy answers, and no failure counts.
    let res = change(&app, &user.access, "not my password at all", "password").await;
    assert_eq!((res.status, res.code()), (400, "weak_password"));
    for _ in 0..4 {
        assert_eq!(change(&app, &user.access, "not my password at all", "a brand new passphrase").await.code(), "invalid_credentials");
    }
    let res = change(&app, "not-a-token", PASSWORD, "a brand new passphrase").await;
    assert_eq!((res.status, res.code()), (401, "invalid_token"));
    assert_eq!(login(&app, &user.email, PASSWORD).await.status, 200, "nothing changed");
}

// ---------------------------------------------------------------- two-factor

#[tokio::test]
async fn two_factor_goes_on_signs_in_with_codes_goes_off_and_on_again_with_a_new_secret() {
    let app = spawn_app().await;
    let user = sign_up(&app).await;
    let mut old_recovery: Vec<String> = Vec::new();
    for cycle in 0..2 {
        let (authenticator, recovery) = turn_on_two_factor(&app, &user.access).await;
        assert_eq!(recovery.len(), 10);
        assert_eq!(recovery.iter().collect::<std::collections::HashSet<_>>().len(), 10, "ten distinct codes");
        assert_eq!(me(&app, &user.access).await.body["mfa_enabled"], true);

        // A right password alone gets no tokens.
        let res = login(&app, &user.email, PASSWORD).await;
        assert_eq!(res.status, 200, "{}", res.raw);
        assert_eq!(res.body["mfa_required"], true);
        assert!(res.body.get("access_token").is_none() && res.body.get("refresh_token").is_none(), "{}", res.raw);
        let mfa_token = res.body["mfa_token"].as_str().unwrap().to_owned();
        let code = authenticator.next();
        let res = mfa_verify(&app, &mfa_token, &code).await;
        assert_eq!(res.status, 200, "cycle {cycle}: {}", res.raw);
        assert_eq!(claims(res.body["access_token"].as_str().unwrap())["amr"], json!(["pwd", "otp"]));
        assert_eq!(me(&app, res.body["access_token"].as_str().unwrap()).await.status, 200);
        // The session keeps its second factor through refreshes.
        let rotated = refresh(&app, res.body["refresh_token"].as_str().unwrap()).await;
        assert_eq!(claims(rotated.body["access_token"].as_str().unwrap())["amr"], json!(["pwd", "otp"]));

        // The same code again (a replay inside its window) is refused.
        let res = refused_sign_in(&app, &user.email, &code).await;
        assert_eq!((res.status, res.code()), (400, "invalid_code"), "{}", res.raw);
        // So are codes of an earlier step and the last cycle's recovery codes.
        let res = refused_sign_in(&app, &user.email, &authenticator.previous_of_previous()).await;
        assert_eq!(res.code(), "invalid_code");
        for code in old_recovery.iter().take(2) {
            assert_eq!(refused_sign_in(&app, &user.email, code).await.code(), "invalid_code", "old recovery codes died with their cycle");
        }
        // A recovery code works once, in any case.
        let res = sign_in_with_code(&app, &user.email, &recovery[0].to_uppercase()).await;
        assert_eq!(res.status, 200, "{}", res.raw);
        assert_eq!(claims(res.body["access_token"].as_str().unwrap())["amr"], json!(["pwd", "otp"]));
        assert_eq!(refused_sign_in(&app, &user.email, &recovery[0]).await.code(), "invalid_code", "spent");

        // Off: the password, and a code (here a recovery code).
        let res = disable_totp(&app, &user.access, "not my password", &recovery[1]).await;
        assert_eq!(res.code(), "invalid_credentials");
        let res = disable_totp(&app, &user.access, PASSWORD, "000000").await;
        assert_eq!((res.status, res.code()), (400, "invalid_code"));
        let res = disable_totp(&app, &user.access, PASSWORD, &recovery[1]).await;
        assert_eq!(res.status, 204, "{}", res.raw);
        let res = disable_totp(&app, &user.access, PASSWORD, &recovery[2]).await;
        assert_eq!((res.status, res.code()), (409, "mfa_not_enabled"));
        clear_lockouts(&app, &user.email).await;
        let res = login(&app, &user.email, PASSWORD).await;
        assert!(res.body["access_token"].is_string(), "off again: a password signs in: {}", res.raw);
        assert_eq!(claims(res.body["access_token"].as_str().unwrap())["amr"], json!(["pwd"]));
        assert!(stored(&app, shared::keys::totp(&user_id(&user.access))).await.is_none(), "the secret is gone");
        old_recovery = recovery;
    }
}

/// A sign-in whose second factor is refused, its lockout failures then forgotten (they are
/// counted, which other tests check; this one checks many refusals in a row).
async fn refused_sign_in(app: &TestApp, email: &str, code: &str) -> TestResponse {
    let res = sign_in_with_code(app, email, code).await;
    clear_lockouts(app, email).await;
    res
}

async fn clear_lockouts(app: &TestApp, email: &str) {
    let limits = shared::auth::limits::Limits { ip_per_minute: 1000 };
    limits.clear_lockouts(&app.state.redis, &email.to_lowercase()).await.unwrap();
}

#[tokio::test]
async fn setup_and_enable_refuse_what_does_not_fit_the_state() {
    let app = spawn_app().await;
    let user = sign_up(&app).await;
    let res = enable_totp(&app, &user.access, "123456").await;
    assert_eq!((res.status, res.code()), (409, "mfa_not_set_up"));
    let first = setup_totp(&app, &user.access).await;
    let second = setup_totp(&app, &user.access).await;
    assert_ne!(first.body["secret"], second.body["secret"], "each setup is a new secret");
    let res = enable_totp(&app, &user.access, &Authenticator::from_setup(&first.body).now()).await;
    assert_eq!((res.status, res.code()), (400, "invalid_code"), "a replaced setup's code does not enable");
    let res = enable_totp(&app, &user.access, "12345x").await;
    assert_eq!((res.status, res.code()), (400, "invalid_code"));
    assert_eq!(me(&app, &user.access).await.body["mfa_enabled"], false, "pending is not on");
    assert!(login(&app, &user.email, PASSWORD).await.body["access_token"].is_string(), "pending asks nothing at login");
    let res = enable_totp(&app, &user.access, &Authenticator::from_setup(&second.body).now()).await;
    assert_eq!(res.status, 200, "{}", res.raw);
    let res = setup_totp(&app, &user.access).await;
    assert_eq!((res.status, res.code()), (409, "mfa_already_enabled"));
    let res = enable_totp(&app, &user.access, &Authenticator::from_setup(&second.body).now()).await;
    assert_eq!((res.status, res.code()), (409, "mfa_already_enabled"));
    let res = app.call(auth::totp_setup, request("POST", "/api/v1/auth/mfa/totp/setup", None)).await;
    assert_eq!((res.status, res.code()), (401, "invalid_token"));
}

#[tokio::test]
async fn the_secret_is_stored_encrypted_and_the_recovery_codes_only_hashed() {
    let app = spawn_app().await;
    let user = sign_up(&app).await;
    let setup = setup_totp(&app, &user.access).await;
    let secret = setup.body["secret"].as_str().unwrap().to_owned();
    let authenticator = Authenticator::from_setup(&setup.body);
    let item = format!("{:?}", stored(&app, shared::keys::totp(&user_id(&user.access))).await.unwrap());
    assert!(!item.contains(&secret), "the pending secret is encrypted");
    let res = enable_totp(&app, &user.access, &authenticator.now()).await;
    let item = format!("{:?}", stored(&app, shared::keys::totp(&user_id(&user.access))).await.unwrap());
    assert!(!item.contains(&secret), "the active secret is encrypted");
    let raw_secret = totp_rs::Secret::Encoded(secret).to_bytes().unwrap();
    assert!(!item.contains(&hex::encode(&raw_secret)));
    for code in res.body["recovery_codes"].as_array().unwrap() {
        let code = code.as_str().unwrap();
        assert!(!item.contains(code) && !item.contains(&code.replace('-', "")), "recovery codes are hashed");
    }
}

#[tokio::test]
async fn an_mfa_token_signs_in_once_and_a_forged_or_spent_one_never() {
    let app = spawn_app().await;
    let user = sign_up(&app).await;
    let (authenticator, recovery) = turn_on_two_factor(&app, &user.access).await;
    let res = login(&app, &user.email, PASSWORD).await;
    let mfa_token = res.body["mfa_token"].as_str().unwrap().to_owned();
    // Valid for five minutes, and only a digest of it is a key.
    let mut conn = app.state.redis.clone();
    let keys: Vec<String> = redis::cmd("KEYS").arg("mfa:*").query_async(&mut conn).await.unwrap();
    assert!(keys.iter().all(|k| !k.contains(&mfa_token)));
    let ttls: Vec<i64> = join_all(keys.iter().map(|k| {
        let mut conn = conn.clone();
        async move { redis::cmd("TTL").arg(k).query_async::<i64>(&mut conn).await.unwrap() }
    }))
    .await;
    assert!(ttls.iter().all(|t| (1..=300).contains(t)), "{ttls:?}");

    assert_eq!(mfa_verify(&app, &mfa_token, &authenticator.next()).await.status, 200);
    let res = mfa_verify(&app, &mfa_token, &recovery[0]).await;
    assert_eq!((res.status, res.code()), (401, "invalid_mfa_token"), "spent");
    for forged in ["", "x", &"A".repeat(43), &"é".repeat(2000)] {
        let res = mfa_verify(&app, forged, &recovery[0]).await;
        assert_eq!((res.status, res.code()), (401, "invalid_mfa_token"), "{forged:?}: {}", res.raw);
    }
    // The recovery code was not spent by the refused attempts.
    assert_eq!(sign_in_with_code(&app, &user.email, &recovery[0]).await.status, 200);
}

#[tokio::test]
async fn wrong_second_factor_codes_count_toward_the_lockout_and_a_password_alone_gives_none_back() {
    let app = spawn_app().await;
    let user = sign_up(&app).await;
    let (authenticator, _) = turn_on_two_factor(&app, &user.access).await;
    let res = login(&app, &user.email, PASSWORD).await;
    let mfa_token = res.body["mfa_token"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        assert_eq!(mfa_verify(&app, &mfa_token, "000000").await.code(), "invalid_code");
    }
    // A right password again does not clear the failures (it is not a completed sign-in): it is
    // the pair's fifth ticket, and locks it.
    let res = login(&app, &user.email, PASSWORD).await;
    assert_eq!(res.body["mfa_required"], true, "{}", res.raw);
    let res = mfa_verify(&app, res.body["mfa_token"].as_str().unwrap(), &authenticator.next()).await;
    assert_eq!((res.status, res.code()), (429, "account_locked"), "{}", res.raw);
    let res = mfa_verify(&app, &mfa_token, &authenticator.next()).await;
    assert_eq!(res.code(), "account_locked");
    let res = login(&app, &user.email, PASSWORD).await;
    assert_eq!(res.code(), "account_locked");
}

#[tokio::test]
async fn a_completed_second_factor_clears_the_failures_before_it() {
    let app = spawn_app().await;
    let user = sign_up(&app).await;
    let (authenticator, recovery) = turn_on_two_factor(&app, &user.access).await;
    let codes = [authenticator.next(), recovery[1].clone(), recovery[2].clone()];
    for (round, code) in codes.iter().enumerate() {
        let res = login(&app, &user.email, PASSWORD).await;
        let mfa_token = res.body["mfa_token"].as_str().unwrap().to_owned();
        for _ in 0..2 {
            assert_eq!(mfa_verify(&app, &mfa_token, "000000").await.code(), "invalid_code");
        }
        let res = mfa_verify(&app, &mfa_token, code).await;
        assert_eq!(res.status, 200, "round {round}: three failures then a success never lock: {}", res.raw);
    }
}

#[tokio::test]
async fn parallel_verifications_of_one_sign_in_with_one_code_succeed_once() {
    let app = spawn_app().await;
    let user = sign_up(&app).await;
    let (authenticator, _) = turn_on_two_factor(&app, &user.access).await;
    let res = login(&app, &user.email, PASSWORD).await;
    let mfa_token = res.body["mfa_token"].as_str().unwrap().to_owned();
    let code = authenticator.next();
    let answers = join_all((0..4).map(|_| mfa_verify(&app, &mfa_token, &code))).await;
    let ok = answers.iter().filter(|r| r.status == 200).count();
    assert_eq!(ok, 1, "{:?}", answers.iter().map(|r| r.raw.clone()).collect::<Vec<_>>());
    assert!(answers.iter().all(|r| r.status == 200 || r.code() == "invalid_code" || r.code() == "invalid_mfa_token"));
}

#[tokio::test]
async fn with_two_factor_on_the_exchange_keys_change_only_from_a_session_signed_in_with_it() {
    let app = spawn_app().await;
    let user = sign_up(&app).await;
    let keys = json!({"exchange": "bitget", "api_key": "k", "api_secret": "s", "passphrase": "p"});
    let put = |token: String| {
        let keys = keys.clone();
        let app = &app;
        async move { app.call_as(trading::put_credentials, &token, "PUT", "/api/v1/exchange/credentials", Some(keys)).await }
    };
    let delete = |token: String| {
        let app = &app;
        async move { app.call_as(trading::delete_credentials, &token, "DELETE", "/api/v1/exchange/credentials", None).await }
    };
    assert_eq!(delete(user.access.clone()).await.status, 204, "two-factor off: a password session may");
    let (authenticator, _) = turn_on_two_factor(&app, &user.access).await;
    for res in [put(user.access.clone()).await, delete(user.access.clone()).await] {
        assert_eq!((res.status, res.code()), (403, "mfa_required"), "a session from before two-factor: {}", res.raw);
    }
    let res = sign_in_with_code(&app, &user.email, &authenticator.next()).await;
    let (access, refresh_token) = (res.body["access_token"].as_str().unwrap().to_owned(), res.body["refresh_token"].as_str().unwrap());
    assert_eq!(delete(access.clone()).await.status, 204);
    let res = put(access).await;
    assert_ne!(res.code(), "mfa_required", "past the second-factor check (the exchange then judges the keys): {}", res.raw);
    let rotated = refresh(&app, refresh_token).await;
    assert_eq!(delete(rotated.body["access_token"].as_str().unwrap().to_owned()).await.status, 204, "refreshed, still two-factor");
}

// ---------------------------------------------------------------- sessions

async fn sessions(app: &TestApp, token: &str) -> TestResponse {
    app.call_as(auth::list_sessions, token, "GET", "/api/v1/auth/sessions", None).await
}

async fn end_session(app: &TestApp, token: &str, id: &str) -> TestResponse {
    app.call_as(auth::end_session, token, "DELETE", &format!("/api/v1/auth/sessions/{id}"), None).await
}

#[tokio::test]
async fn sessions_list_each_live_sign_in_and_ending_one_kills_its_tokens_at_once() {
    let app = spawn_app().await;
    let user = sign_up(&app).await;
    let phone = login_with(&app, &user.email, "203.0.113.7", "Phone/1.0").await;
    let laptop = login_with(&app, &user.email, "198.51.100.20", "Laptop/2.0").await;
    let (phone_access, laptop_access) = (phone.body["access_token"].as_str().unwrap(), laptop.body["access_token"].as_str().unwrap());
    let res = sessions(&app, phone_access).await;
    assert_eq!(res.status, 200, "{}", res.raw);
    let list = res.body["sessions"].as_array().unwrap().clone();
    assert_eq!(list.len(), 3, "sign-up's login, the phone and the laptop: {}", res.raw);
    let entry = |sid: &str| list.iter().find(|s| s["session_id"] == sid).unwrap_or_else(|| panic!("{sid} listed")).clone();
    let phone_sid = claims(phone_access)["sid"].as_str().unwrap().to_owned();
    let laptop_sid = claims(laptop_access)["sid"].as_str().unwrap().to_owned();
    let phone_entry = entry(&phone_sid);
    assert_eq!(
        (phone_entry["user_agent"].clone(), phone_entry["ip"].clone(), phone_entry["current"].clone()),
        (json!("Phone/1.0"), json!("203.0.113.7"), json!(true))
    );
    assert_eq!(entry(&laptop_sid)["current"], false);
    for field in ["created_at", "last_used_at"] {
        assert!(chrono::DateTime::parse_from_rfc3339(phone_entry[field].as_str().unwrap()).is_ok(), "{field}");
    }

    for _ in 0..2 {
        // Ending it twice: the second is the same 204.
        assert_eq!(end_session(&app, phone_access, &laptop_sid).await.status, 204);
    }
    assert_eq!(me(&app, laptop_access).await.code(), "invalid_token", "its access token dies at once");
    assert_eq!(refresh(&app, laptop.body["refresh_token"].as_str().unwrap()).await.status, 401);
    let after = sessions(&app, phone_access).await;
    let ids: Vec<&str> = after.body["sessions"].as_array().unwrap().iter().map(|s| s["session_id"].as_str().unwrap()).collect();
    assert!(!ids.contains(&laptop_sid.as_str()) && ids.contains(&phone_sid.as_str()), "{ids:?}");
    assert_eq!(me(&app, phone_access).await.status, 200, "the other sessions live on");

    // Ending your own session is a logout of this device.
    assert_eq!(end_session(&app, phone_access, &phone_sid).await.status, 204);
    assert_eq!(me(&app, phone_access).await.code(), "invalid_token");
    assert_eq!(me(&app, &user.access).await.status, 200);
}

#[tokio::test]
async fn a_refresh_marks_the_session_used_and_reuse_or_a_global_logout_take_it_off_the_list() {
    let app = spawn_app().await;
    let user = sign_up(&app).await;
    let before = sessions(&app, &user.access).await.body["sessions"][0].clone();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let rotated = refresh(&app, &user.refresh).await;
    let access = rotated.body["access_token"].as_str().unwrap().to_owned();
    let after = sessions(&app, &access).await.body["sessions"][0].clone();
    assert_eq!(after["session_id"], before["session_id"], "a refresh is the same session");
    assert!(after["last_used_at"].as_str() > before["last_used_at"].as_str(), "{before} → {after}");
    assert_eq!(after["current"], true);

    // A second device; reuse of its spent token (past the grace window) revokes it.
    let other = login(&app, &user.email, PASSWORD).await;
    let other_refresh = other.body["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(refresh(&app, &other_refresh).await.status, 200);
    // Make the spend look older than the grace window.
    let token = shared::auth::store::RefreshToken::parse(&other_refresh).unwrap();
    app.dynamo()
        .update_item()
        .table_name(&app.state.config.table_name)
        .set_key(Some(shared::keys::refresh_token(&token.hash())))
        .update_expression("SET used_at_ms = :old")
        .expression_attribute_values(":old", aws_sdk_dynamodb::types::AttributeValue::N("1".into()))
        .send()
        .await
        .unwrap();
    assert_eq!(refresh(&app, &other_refresh).await.code(), "refresh_token_reused");
    let list = sessions(&app, &access).await.body["sessions"].as_array().unwrap().clone();
    assert_eq!(list.len(), 1, "the reused session is gone: {list:?}");

    // A global logout ends them all; a new sign-in is the only one listed.
    let res = app
        .call(
            auth::logout,
            request("POST", "/api/v1/auth/logout", Some(json!({"refresh_token": rotated.body["refresh_token"], "scope": "global"}))),
        )
        .await;
    assert_eq!(res.status, 204, "{}", res.raw);
    let fresh = login(&app, &user.email, PASSWORD).await;
    let list = sessions(&app, fresh.body["access_token"].as_str().unwrap()).await.body["sessions"].as_array().unwrap().clone();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["current"], true);
}

#[tokio::test]
async fn nobody_ends_a_session_that_is_not_theirs() {
    let app = spawn_app().await;
    let (alice, mallory) = (sign_up(&app).await, sign_up(&app).await);
    let alice_sid = claims(&alice.access)["sid"].as_str().unwrap().to_owned();
    for id in [alice_sid.as_str(), &uuid::Uuid::new_v4().to_string(), "not-a-uuid", &"x".repeat(2048)] {
        let res = end_session(&app, &mallory.access, id).await;
        assert_eq!((res.status, res.code()), (404, "session_not_found"), "{id:.40}: {}", res.raw);
    }
    assert_eq!(me(&app, &alice.access).await.status, 200);
    assert_eq!(refresh(&app, &alice.refresh).await.status, 200);
    assert_eq!(sessions(&app, &mallory.access).await.body["sessions"].as_array().unwrap().len(), 1, "only their own");
}

// ---------------------------------------------------------------- deletion

async fn delete_me(app: &TestApp, token: &str, password: &str) -> TestResponse {
    app.call_as(auth::delete_me, token, "DELETE", "/api/v1/users/me", Some(json!({"password": password}))).await
}

#[tokio::test]
async fn an_account_is_deleted_only_with_its_bot_stopped_and_its_address_registers_again_twice() {
    let app = spawn_app().await;
    app.set_mark("BTCUSDT", "65000").await;
    let mut user = sign_up(&app).await;
    let mut deleted_ids = Vec::new();
    for cycle in 0..2 {
        let uid = user_id(&user.access);
        assert!(!deleted_ids.contains(&uid), "a new account each time");
        let config = json!({"symbol": "BTCUSDT", "leverage": 10, "stop_loss_pct": "2", "max_position_notional": "20000"});
        let res = app.call_as(trading::start_bot, &user.access, "POST", "/api/v1/bot/start", Some(config)).await;
        assert_eq!(res.status, 200, "cycle {cycle}: {}", res.raw);
        let order = json!({"symbol": "BTCUSDT", "side": "buy", "type": "market", "size": "0.01"});
        let mut order = with_bearer(request("POST", "/api/v1/order/submit", Some(order)), &user.access);
        order.headers_mut().insert("idempotency-key", uuid::Uuid::new_v4().to_string().parse().unwrap());
        assert_eq!(app.call(trading::submit_order, order).await.status, 201);

        let res = delete_me(&app, &user.access, PASSWORD).await;
        assert_eq!((res.status, res.code()), (409, "bot_running"), "cycle {cycle}: {}", res.raw);
        assert_eq!(me(&app, &user.access).await.status, 200, "nothing was deleted");
        assert_eq!(app.call_as(trading::stop_bot, &user.access, "POST", "/api/v1/bot/stop", None).await.status, 200);
        let res = delete_me(&app, &user.access, "not my password").await;
        assert_eq!((res.status, res.code()), (401, "invalid_credentials"));
        let res = delete_me(&app, &user.access, PASSWORD).await;
        assert_eq!(res.status, 204, "{}", res.raw);

        assert_eq!(me(&app, &user.access).await.code(), "invalid_token", "every access token dies");
        assert_eq!(refresh(&app, &user.refresh).await.status, 401, "every session dies");
        assert_eq!(login(&app, &user.email, PASSWORD).await.code(), "invalid_credentials", "no account signs in");
        assert_eq!(delete_me(&app, &user.access, PASSWORD).await.code(), "invalid_token", "a retry finds nothing");
        let table = &app.state.config.table_name;
        for partition in [shared::keys::user_partition(&uid), shared::keys::sessions_partition(&uid)] {
            let left = shared::dynamo::partition(app.dynamo(), table, partition.clone()).await.unwrap();
            assert!(left.is_empty(), "{partition}: {left:?}");
        }
        let orders = shared::dynamo::partition(app.dynamo(), table, shared::keys::order_partition(&uid)).await.unwrap();
        assert!(!orders.is_empty(), "the order history stays");
        let now = chrono::Utc::now().timestamp();
        for order in &orders {
            let end: i64 = order["expires_at"].as_n().unwrap().parse().unwrap();
            assert!(end > now && end <= now + 91 * 24 * 3600, "only as long as its TTL");
        }
        deleted_ids.push(uid);
        // The address is free: a new account, nothing of the old one.
        user = sign_up_as(&app, &user.email).await;
        let account = app.call_as(trading::account, &user.access, "GET", "/api/v1/account", None).await;
        assert!(account.body["positions"].as_array().is_some_and(|p| p.is_empty()), "no position of the old account: {}", account.raw);
    }
}

#[tokio::test]
async fn with_two_factor_on_deleting_the_account_needs_a_session_signed_in_with_it() {
    let app = spawn_app().await;
    let user = sign_up(&app).await;
    let (authenticator, _) = turn_on_two_factor(&app, &user.access).await;
    let res = delete_me(&app, &user.access, PASSWORD).await;
    assert_eq!((res.status, res.code()), (403, "mfa_required"));
    let res = sign_in_with_code(&app, &user.email, &authenticator.next()).await;
    let access = res.body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(delete_me(&app, &access, PASSWORD).await.status, 204);
    assert!(stored(&app, shared::keys::totp(&user_id(&access))).await.is_none(), "the second factor went with it");
    let res =
        app.call(auth::register, request("POST", "/api/v1/auth/register", Some(json!({"email": user.email, "password": PASSWORD})))).await;
    assert_eq!(res.status, 202);
}

#[tokio::test]
async fn wrong_passwords_at_deletion_count_toward_the_lockout() {
    let app = spawn_app().await;
    let user = sign_up(&app).await;
    for _ in 0..5 {
        assert_eq!(delete_me(&app, &user.access, "not my password").await.code(), "invalid_credentials");
    }
    assert_eq!(delete_me(&app, &user.access, PASSWORD).await.code(), "account_locked");
    assert_eq!(me(&app, &user.access).await.status, 200);
}

#[tokio::test]
async fn the_code_that_turned_two_factor_on_cannot_sign_in() {
    let app = spawn_app().await;
    let user = sign_up(&app).await;
    let setup = setup_totp(&app, &user.access).await;
    let code = Authenticator::from_setup(&setup.body).now();
    assert_eq!(enable_totp(&app, &user.access, &code).await.status, 200);
    let res = sign_in_with_code(&app, &user.email, &code).await;
    assert_eq!((res.status, res.code()), (400, "invalid_code"), "its step was used by the enable: {}", res.raw);
}

#[tokio::test]
async fn one_recovery_code_used_by_parallel_sign_ins_signs_in_once() {
    let app = spawn_app().await;
    let user = sign_up(&app).await;
    let (_, recovery) = turn_on_two_factor(&app, &user.access).await;
    // From four addresses, so no lockout stands between them and the code check.
    let mut tokens = Vec::new();
    for i in 0..4 {
        let res = app
            .call(
                auth::login,
                from_ip(
                    request("POST", "/api/v1/auth/login", Some(json!({"email": user.email, "password": PASSWORD}))),
                    &format!("192.0.2.{i}"),
                ),
            )
            .await;
        tokens.push(res.body["mfa_token"].as_str().unwrap().to_owned());
    }
    let answers = join_all(tokens.iter().enumerate().map(|(i, token)| {
        let req = request("POST", "/api/v1/auth/mfa/verify", Some(json!({"mfa_token": token, "code": recovery[0]})));
        app.call(auth::mfa_verify, from_ip(req, &format!("192.0.2.{i}")))
    }))
    .await;
    assert_eq!(answers.iter().filter(|r| r.status == 200).count(), 1, "{:?}", answers.iter().map(|r| r.raw.clone()).collect::<Vec<_>>());
    assert!(answers.iter().all(|r| r.status == 200 || r.code() == "invalid_code"));
}

#[tokio::test]
async fn wrong_codes_at_two_factor_off_count_toward_the_lockout() {
    let app = spawn_app().await;
    let user = sign_up(&app).await;
    turn_on_two_factor(&app, &user.access).await;
    for _ in 0..5 {
        assert_eq!(disable_totp(&app, &user.access, PASSWORD, "000000").await.code(), "invalid_code");
    }
    assert_eq!(login(&app, &user.email, PASSWORD).await.code(), "account_locked", "a right password with a wrong code is a failure");
    assert_eq!(me(&app, &user.access).await.body["mfa_enabled"], true);
}

#[tokio::test]
async fn a_password_change_keeps_the_sessions_second_factor_and_clears_no_failures() {
    let app = spawn_app().await;
    let user = sign_up(&app).await;
    let (authenticator, _) = turn_on_two_factor(&app, &user.access).await;
    let res = sign_in_with_code(&app, &user.email, &authenticator.next()).await;
    let otp_access = res.body["access_token"].as_str().unwrap().to_owned();
    // Three wrong codes on a fresh sign-in: its password ticket and three failures stand.
    let pending = login(&app, &user.email, PASSWORD).await;
    for _ in 0..3 {
        assert_eq!(mfa_verify(&app, pending.body["mfa_token"].as_str().unwrap(), "000000").await.code(), "invalid_code");
    }
    let res = change(&app, &otp_access, PASSWORD, "a brand new passphrase").await;
    assert_eq!(res.status, 200, "{}", res.raw);
    assert_eq!(claims(res.body["access_token"].as_str().unwrap())["amr"], json!(["pwd", "otp"]), "signed in as the session was");
    // The right password at the change gave back only its own ticket: the fifth failure locks.
    let res = mfa_verify(&app, pending.body["mfa_token"].as_str().unwrap(), "000000").await;
    assert_eq!(res.code(), "invalid_code");
    assert_eq!(login(&app, &user.email, "a brand new passphrase").await.code(), "account_locked");
}

#[tokio::test]
async fn a_sign_in_waiting_for_its_second_factor_ends_with_two_factor_off_or_a_global_logout() {
    let app = spawn_app().await;
    let user = sign_up(&app).await;
    let (authenticator, recovery) = turn_on_two_factor(&app, &user.access).await;
    // Two-factor turned off while a sign-in waits: its code is no second factor any more.
    let waiting = login(&app, &user.email, PASSWORD).await;
    assert_eq!(disable_totp(&app, &user.access, PASSWORD, &recovery[0]).await.status, 204);
    let res = mfa_verify(&app, waiting.body["mfa_token"].as_str().unwrap(), &authenticator.next()).await;
    assert_eq!(res.code(), "invalid_code");
    // On again; a global logout while a sign-in waits ends that sign-in too.
    let (authenticator, _) = turn_on_two_factor(&app, &user.access).await;
    let waiting = login(&app, &user.email, PASSWORD).await;
    let res = app
        .call(auth::logout, request("POST", "/api/v1/auth/logout", Some(json!({"refresh_token": user.refresh, "scope": "global"}))))
        .await;
    assert_eq!(res.status, 204, "{}", res.raw);
    let res = mfa_verify(&app, waiting.body["mfa_token"].as_str().unwrap(), &authenticator.next()).await;
    assert_eq!((res.status, res.code()), (401, "invalid_mfa_token"), "{}", res.raw);
    let res = sign_in_with_code(&app, &user.email, &authenticator.next()).await;
    assert_eq!(res.code(), "invalid_code", "that code was spent by the refused sign-in");
}

#[tokio::test]
async fn turning_two_factor_on_and_off_mails_the_owner() {
    let app = spawn_app().await;
    let user = sign_up(&app).await;
    let mail = |subject: &str| app.outbox().iter().filter(|m| m["to"] == user.email.as_str() && m["subject"] == subject).count();
    // Inside the cooldown of the sign-up mail: a notice is sent all the same (nobody can keep it
    // back by spending the limits first), and counted.
    let (_, recovery) = turn_on_two_factor(&app, &user.access).await;
    assert_eq!(mail("Two-factor authentication turned on"), 1);
    assert_eq!(disable_totp(&app, &user.access, PASSWORD, &recovery[0]).await.status, 204);
    assert_eq!(mail("Two-factor authentication turned off"), 1);
    let res = app.call(auth::forgot_password, request("POST", "/api/v1/auth/password/forgot", Some(json!({"email": user.email})))).await;
    assert_eq!(res.status, 202);
    assert_eq!(mail("Reset your password"), 0, "the notices count: the cooldown holds the next mail back");
}

#[tokio::test]
async fn a_session_begun_before_sessions_were_listed_is_listed_from_its_next_refresh() {
    let app = spawn_app().await;
    let user = sign_up(&app).await;
    let sid = claims(&user.access)["sid"].as_str().unwrap().to_owned();
    let key = shared::keys::session(&user_id(&user.access), &sid);
    app.dynamo().delete_item().table_name(&app.state.config.table_name).set_key(Some(key)).send().await.unwrap();
    assert_eq!(sessions(&app, &user.access).await.body["sessions"], json!([]), "no record yet");
    let rotated = refresh(&app, &user.refresh).await;
    let list = sessions(&app, rotated.body["access_token"].as_str().unwrap()).await.body["sessions"].clone();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["session_id"], sid.as_str());
    assert!(list[0]["created_at"].as_str() <= list[0]["last_used_at"].as_str(), "begun when its family began: {list}");
}

#[tokio::test]
async fn an_account_with_a_position_left_open_behind_a_stopped_bot_is_not_deleted() {
    let app = spawn_app().await;
    let user = sign_up(&app).await;
    let uid = user_id(&user.access);
    let position = shared::trading::store::PaperPosition {
        symbol: "BTCUSDT".into(),
        side: shared::trading::model::PositionSide::Long,
        size: "0.01".parse().unwrap(),
        entry_price: "65000".parse().unwrap(),
        leverage: 10,
        margin: "65".parse().unwrap(),
        version: 1,
        high_water: None,
        position_id: "p1".into(),
    };
    let item = shared::keys::with_key(serde_dynamo::to_item(&position).unwrap(), shared::keys::paper_position(&uid, "BTCUSDT"));
    app.dynamo().put_item().table_name(&app.state.config.table_name).set_item(Some(item)).send().await.unwrap();
    let res = delete_me(&app, &user.access, PASSWORD).await;
    assert_eq!((res.status, res.code()), (409, "bot_running"), "{}", res.raw);
    assert_eq!(me(&app, &user.access).await.status, 200);
}

#[tokio::test]
async fn exchange_keys_being_checked_while_the_account_is_deleted_are_never_stored() {
    let app = spawn_app_with(&[("EXCHANGE_TIMEOUT_MS", "5000".into())]).await;
    let user = sign_up(&app).await;
    let uid = user_id(&user.access);
    let fake = app.exchange.as_ref().unwrap();
    let held = std::sync::Arc::new(tokio::sync::Notify::new());
    let account = "/api/v2/mix/account/account";
    fake.fault(account, fake_bitget::Fault::Hold(held.clone()));
    let before = fake.calls(account);
    let keys = json!({"exchange": "bitget", "api_key": fake_bitget::KEY, "api_secret": fake_bitget::SECRET, "passphrase": fake_bitget::PASSPHRASE});
    let save = app.call_as(trading::put_credentials, &user.access, "PUT", "/api/v1/exchange/credentials", Some(keys));
    let delete_meanwhile = async {
        while fake.calls(account) == before {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let deleted = delete_me(&app, &user.access, PASSWORD).await;
        held.notify_one();
        deleted
    };
    let (saved, deleted) = tokio::join!(save, delete_meanwhile);
    assert_eq!(deleted.status, 204, "{}", deleted.raw);
    assert_eq!((saved.status, saved.code()), (401, "invalid_token"), "{}", saved.raw);
    assert!(stored(&app, shared::keys::credentials(&uid)).await.is_none(), "nothing stored for a deleted account");
}

#[tokio::test]
async fn no_session_is_begun_for_an_account_deleted_meanwhile() {
    let app = spawn_app().await;
    let user = sign_up(&app).await;
    let uid = user_id(&user.access);
    assert_eq!(delete_me(&app, &user.access, PASSWORD).await.status, 204);
    let store = shared::auth::store::RefreshStore { client: app.dynamo(), table: &app.state.config.table_name };
    let token = shared::auth::store::RefreshToken::issue(
        &uid,
        &uuid::Uuid::new_v4().to_string(),
        chrono::Utc::now().timestamp_millis(),
        shared::auth::tokens::SignIn::Password,
        shared::auth::tokens::Roles::NONE,
    );
    let device = shared::auth::store::Device { user_agent: None, ip: "192.0.2.1".into() };
    assert!(!store.start_family(&token, &device, token.family_created_ms).await.unwrap());
    let left = shared::dynamo::partition(app.dynamo(), &app.state.config.table_name, shared::keys::sessions_partition(&uid)).await.unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn a_global_logout_from_a_clock_behind_never_moves_the_cutoff_back() {
    let app = spawn_app().await;
    let user = sign_up(&app).await;
    let uid = user_id(&user.access);
    let users = shared::auth::store::UserStore { client: app.dynamo(), table: &app.state.config.table_name };
    let now = chrono::Utc::now().timestamp_millis();
    users.revoke_all_sessions(&uid, now).await.unwrap();
    // Another function whose clock runs a minute behind logs out everywhere too.
    users.revoke_all_sessions(&uid, now - 60_000).await.unwrap();
    let profile = users.profile(&uid).await.unwrap().unwrap();
    assert_eq!(profile.revoked_before_ms, Some(now), "the later cutoff stands");
    assert_eq!(me(&app, &user.access).await.code(), "invalid_token");
    let res = users.revoke_all_sessions(&uuid::Uuid::new_v4().to_string(), now).await;
    assert_eq!(res.unwrap_err().code(), "invalid_token", "no such account");
}
