//! The foundation's behaviour against the real local stack: health, the HTTP plumbing, Redis TLS.

mod common;

use common::*;
use shared::handlers::health;
use shared::http::serve;
use std::time::Duration;

#[tokio::test]
async fn health_reports_every_dependency_ok() {
    let app = spawn_app().await;
    let res = app.call(health::handle, request("GET", "/api/v1/health", None)).await;
    assert_eq!(res.status, 200, "{}", res.raw);
    assert_eq!(res.body["status"], "healthy");
    assert_eq!(res.body["environment"], "local");
    assert_eq!(res.body["checks"], serde_json::json!({"dynamodb": "ok", "redis": "ok", "secrets": "ok"}));
    assert!(res.body["version"].as_str().is_some_and(|v| !v.is_empty()));
}

#[tokio::test]
async fn health_goes_unhealthy_when_redis_stops_and_recovers_when_it_returns() {
    let mut redis = OwnRedis::start().await;
    let app = spawn_app_with(&[("REDIS_URL", redis.url())]).await;
    let call = || app.call(health::handle, request("GET", "/api/v1/health", None));
    assert_eq!(call().await.status, 200);

    redis.stop();
    let res = call().await;
    assert_eq!(res.status, 503, "{}", res.raw);
    assert_eq!(res.body["status"], "unhealthy");
    assert_eq!(res.body["checks"]["redis"], "unavailable");
    assert_eq!(res.body["checks"]["dynamodb"], "ok");

    redis.restart().await;
    // The connection manager reconnects by itself; give it a few attempts, no restart of the app.
    let mut last = 0;
    for _ in 0..30 {
        last = call().await.status;
        if last == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(last, 200, "health did not recover after redis came back");
}

#[tokio::test]
async fn every_response_carries_the_security_headers_and_a_request_id() {
    let app = spawn_app().await;
    let res = app.call(health::handle, request("GET", "/api/v1/health", None)).await;
    assert_eq!(res.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(res.header("x-frame-options"), Some("DENY"));
    assert!(res.header("strict-transport-security").is_some_and(|v| v.contains("max-age=")));
    assert_eq!(res.header("cache-control"), Some("no-store"));
    assert!(res.header("x-request-id").is_some_and(|v| !v.is_empty()));
}

#[tokio::test]
async fn cors_allows_only_configured_origins() {
    let app = spawn_app().await;
    let mut allowed = request("GET", "/api/v1/health", None);
    allowed.headers_mut().insert("origin", "https://app.example".parse().unwrap());
    let res = app.call(health::handle, allowed).await;
    assert_eq!(res.header("access-control-allow-origin"), Some("https://app.example"));

    let mut other = request("GET", "/api/v1/health", None);
    other.headers_mut().insert("origin", "https://evil.example".parse().unwrap());
    let res = app.call(health::handle, other).await;
    assert_eq!(res.header("access-control-allow-origin"), None);
}

#[tokio::test]
async fn the_sample_event_replays_through_the_handler() {
    let app = spawn_app().await;
    let req = lambda_http::request::from_str(include_str!("../../events/health.json")).expect("event parses");
    let res = app.call(health::handle, req).await;
    assert_eq!(res.status, 200, "{}", res.raw);
}

#[tokio::test]
async fn redis_over_tls_works_with_the_ca_the_test_setup_generated() {
    let url = std::env::var("TEST_REDIS_TLS_URL").expect("make test starts a TLS redis");
    let ca = std::env::var("TEST_REDIS_CA_FILE").expect("make test generates a CA");
    let config = test_config(&[("REDIS_URL", url.clone()), ("REDIS_CA_FILE", ca)]);
    let mut conn = shared::redis_conn::connection_manager(&config).unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.expect("TLS ping");
    assert_eq!(pong, "PONG");

    // Without our CA the server's certificate is not trusted: TLS is really being checked.
    let untrusted = test_config(&[("REDIS_URL", url)]);
    let mut conn = shared::redis_conn::connection_manager(&untrusted).unwrap();
    assert!(redis::cmd("PING").query_async::<String>(&mut conn).await.is_err());
}

/// The kid an access token names.
fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

#[tokio::test]
async fn after_a_key_rotation_every_function_accepts_every_token_whatever_the_age_of_its_cache() {
    // Function A signs (login); function B verifies, its key set cached before the rotation.
    let app = spawn_app().await;
    // B is built as the `me` function builds itself: the table and the verifier's keys.
    let b = shared::App::from_parts((*app.state.config).clone(), app.sdk.clone()).table().keys().ready().await.unwrap();
    let at_b = |token: String| {
        let b = &b;
        async move {
            into_test_response(
                serve(b, with_bearer(request("GET", "/api/v1/users/me", None), &token), shared::handlers::auth::me).await.unwrap(),
            )
        }
    };
    let first = access_token(&app).await;
    let old_kid = kid_of(&first);

    let client = aws_sdk_secretsmanager::Client::new(&app.sdk);
    let id = &app.state.config.jwt_secret_id;
    let new_kid = ops::devstack::rotate_jwt_keys(&client, id, 3).await.unwrap();
    app.state.jwt_keys.invalidate().await; // A's cache runs out first
                                           // Just added: A does not sign with it yet, since B and any JWKS cache may not know it.
    let during = access_token(&app).await;
    assert_eq!(kid_of(&during), old_kid);
    assert_eq!(at_b(during).await.status, 200);

    // Once the key is older than SECRETS_TTL + the JWKS max-age, A signs with it; B, its cache
    // still from before the rotation, meets an unknown kid and fetches the set once.
    let mut secret: serde_json::Value =
        serde_json::from_str(client.get_secret_value().secret_id(id).send().await.unwrap().secret_string().unwrap()).unwrap();
    let ready =
        chrono::Utc::now() - chrono::Duration::from_std(shared::auth::tokens::activation_delay(app.state.config.secrets_ttl)).unwrap();
    for key in secret["keys"].as_array_mut().unwrap() {
        if key["kid"] == new_kid.as_str() {
            key["created_at"] = serde_json::json!((ready - chrono::Duration::seconds(1)).to_rfc3339());
        }
    }
    client.put_secret_value().secret_id(id).secret_string(secret.to_string()).send().await.unwrap();
    app.state.jwt_keys.invalidate().await;
    let after = access_token(&app).await;
    assert_eq!(kid_of(&after), new_kid);
    let res = at_b(after).await;
    assert_eq!(res.status, 200, "B accepts a token of the new key: {}", res.raw);
    // Earlier tokens still verify everywhere.
    assert_eq!(at_b(first).await.status, 200);
    // A token naming a key nobody has stays refused (and B refetched at most once meanwhile).
    let forged = format!(
        "{}.x.y",
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, r#"{"alg":"EdDSA","typ":"at+jwt","kid":"nobody"}"#)
    );
    assert_eq!(at_b(forged).await.code(), "invalid_token");
}

#[tokio::test]
async fn init_secrets_fills_empty_key_lists_and_never_replaces_keys() {
    let app = spawn_app().await;
    let client = aws_sdk_secretsmanager::Client::new(&app.sdk);
    let config = &app.state.config;
    assert_eq!(ops::devstack::init_secrets(&client, config).await.unwrap(), "secrets already initialised");
    client.put_secret_value().secret_id(&config.encryption_secret_id).secret_string(r#"{"keys":[]}"#).send().await.unwrap();
    assert_eq!(ops::devstack::init_secrets(&client, config).await.unwrap(), "encryption key created");
    app.state.encryption_keys.invalidate().await;
    assert!(app.state.encryption_keys.get().await.is_ok());
}

#[tokio::test]
async fn a_missing_secret_fails_init_with_a_clear_error() {
    let config = test_config(&[("JWT_SECRET_ID", "no/such/secret".into())]);
    let sdk = shared::aws::sdk_config().expect("the local stack's AWS environment");
    let Err(err) = shared::App::from_parts(config, sdk).keys().ready().await else { panic!("init must fail") };
    assert!(err.to_string().contains("no/such/secret"), "{err}");
}

/// `ready` makes the slots' warm-up trips at once, and what fails init still does: any secret a
/// slot needs, the webhook's own secret where the function asked for it; while a missing bot
/// token (alerts wait for it) and Redis being down (health answers 503) only warn.
#[tokio::test]
async fn ready_fails_init_on_a_needed_secret_and_only_warns_for_the_bot_token_and_redis() {
    // A stack whose secrets are seeded, each case with one thing missing.
    let seeded = spawn_app().await;
    let base = (*seeded.state.config).clone();
    let app = |config: shared::config::Config| shared::App::from_parts(config, seeded.sdk.clone());
    assert!(app(base.clone()).keys().vault().ready().await.is_ok(), "the seeded secrets load");
    let no_vault = shared::config::Config { encryption_secret_id: "no/such/vault".into(), ..base.clone() };
    let Err(err) = app(no_vault).keys().vault().ready().await else { panic!("a missing vault fails init beside good keys") };
    assert!(err.to_string().contains("no/such/vault"), "{err}");

    let no_bot = shared::config::Config { telegram_secret_id: "no/such/bot".into(), ..base.clone() };
    assert!(app(no_bot).telegram().unwrap().telegram_webhook().ready().await.is_ok(), "the bot token is best effort");
    let no_webhook = shared::config::Config { telegram_webhook_secret_id: "no/such/webhook".into(), ..base.clone() };
    assert!(app(no_webhook.clone()).telegram().unwrap().ready().await.is_ok(), "only the webhook function needs its secret");
    let Err(err) = app(no_webhook).telegram().unwrap().telegram_webhook().ready().await else {
        panic!("the webhook function cannot start without its secret")
    };
    assert!(err.to_string().contains("no/such/webhook"), "{err}");

    let down = base.clone();
    let down = shared::config::Config { redis_url: shared::secrets::Secret::new("redis://127.0.0.1:1".to_owned()), ..down };
    assert!(app(down).redis().await.unwrap().keys().ready().await.is_ok(), "Redis down is not fatal at init");
}

/// What the node says about cluster mode, over a plain connection.
async fn cluster_info(url: &str, ca: Option<String>) -> String {
    let config = test_config(&[("REDIS_URL", url.to_owned())]);
    let config = shared::config::Config { redis_ca_file: ca.map(Into::into), ..config };
    let mut conn = shared::redis_conn::connection_manager(&config).unwrap();
    redis::cmd("INFO").arg("cluster").query_async(&mut conn).await.expect("INFO cluster")
}

#[tokio::test]
async fn the_local_redis_runs_in_cluster_mode_like_elasticache_serverless() {
    let plain = cluster_info(&std::env::var("REDIS_URL").unwrap(), None).await;
    assert!(plain.contains("cluster_enabled:1"), "{plain}");
    let tls = cluster_info(
        &std::env::var("TEST_REDIS_TLS_URL").expect("make test starts a TLS redis"),
        Some(std::env::var("TEST_REDIS_CA_FILE").expect("make test generates a CA")),
    )
    .await;
    assert!(tls.contains("cluster_enabled:1"), "{tls}");
}

#[tokio::test]
async fn every_auth_script_keeps_its_keys_in_one_hash_slot() {
    let config = test_config(&[]);
    let mut conn = shared::redis_conn::connection_manager(&config).unwrap();
    // Braces are legal in a local part and would otherwise pick the hash tag themselves.
    for email in ["alice@example.com", "{a}@example.com", "}{@example.com", "a{}b@example.com", "x{y}z@example.com"] {
        let keys = shared::auth::limits::EmailKeys::new(email);
        for (script, script_keys) in keys.script_keys() {
            let mut slots = std::collections::BTreeSet::new();
            for key in &script_keys {
                let slot: i64 = redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query_async(&mut conn).await.unwrap();
                slots.insert(slot);
            }
            assert_eq!(slots.len(), 1, "{script} for {email:?} spans slots {slots:?}: {script_keys:?}");
        }
    }
    // And the keys of two addresses are not forced into one slot.
    let a = shared::auth::limits::EmailKeys::new("alice@example.com").login_failures;
    let b = shared::auth::limits::EmailKeys::new("bob@example.com").login_failures;
    let slot_a: i64 = redis::cmd("CLUSTER").arg("KEYSLOT").arg(a).query_async(&mut conn).await.unwrap();
    let slot_b: i64 = redis::cmd("CLUSTER").arg("KEYSLOT").arg(b).query_async(&mut conn).await.unwrap();
    assert_ne!(slot_a, slot_b);
}

#[tokio::test]
async fn a_base64_body_that_is_not_utf8_is_answered_400_invalid_json() {
    let app = spawn_app().await;
    let req = lambda_http::request::from_str(include_str!("../../events/login.non-utf8.json")).expect("event parses");
    let res = app.call(shared::handlers::auth::login, req).await;
    assert_eq!((res.status, res.code()), (400, "invalid_json"), "{}", res.raw);
    assert_eq!(res.header("content-type"), Some("application/problem+json"));
}

/// A log sink for one test: everything the subscriber writes, kept in memory.
#[derive(Clone, Default)]
struct CapturedLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLogs {
    type Writer = CapturedLogs;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn a_5xx_is_logged_once_at_the_edge_with_its_whole_cause_chain_and_never_shown() {
    let mut redis = OwnRedis::start().await;
    let app = spawn_app_with(&[("REDIS_URL", redis.url())]).await;
    redis.stop();
    let logs = CapturedLogs::default();
    let subscriber = tracing_subscriber::fmt().with_writer(logs.clone()).with_ansi(false).with_max_level(tracing::Level::INFO).finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let body = serde_json::json!({"email": "outage@example.com", "password": "correct horse battery staple"});
    let res = app.call(shared::handlers::auth::register, request("POST", "/api/v1/auth/register", Some(body))).await;
    assert_eq!((res.status, res.code()), (503, "dependency_unavailable"), "{}", res.raw);
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "one error line for one failed request:\n{text}");
    let (_, cause) = errors[0].split_once("redis is unavailable, try again shortly: ").unwrap_or_else(|| panic!("no cause: {}", errors[0]));
    assert!(errors[0].contains("request failed") && !cause.trim().is_empty(), "{}", errors[0]);
    assert!(errors[0].contains("request_id="), "the line names the request: {}", errors[0]);
    // The client gets the code and the request id, not the cause.
    assert!(!res.raw.contains(cause.split_whitespace().next().unwrap_or("-")), "{}", res.raw);
}
