//! `spawn_app` for the integration tests: every test gets its own table (created from
//! template.yaml) and its own freshly generated secrets in the moto server, and talks to the real
//! redis-server that `make test` started. Handlers are called in-process through the same
//! `serve` wrapper the Lambda binaries use.
#![allow(dead_code)]

pub mod live;
pub mod mfa;
pub mod round_trips;

use lambda_http::request::RequestContext as LambdaContext;
use lambda_http::{Body, Request, RequestExt, Response};
use shared::config::Config;
use shared::http::{serve, RequestContext};
use shared::{ApiError, AppState};
// The clients' traits, so the tests call `trading_store()`, `redis()` and the rest on the state.
#[allow(unused_imports)]
pub use shared::state::{Bitget, Cache, Deps, Keys, Mail, Table, Telegram, Vault};
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;

pub struct TestApp {
    pub state: AppState,
    pub outbox: PathBuf,
    pub sdk: shared::aws::SdkConfig,
    /// The Bitget double the app reads contract specs (and, live, trades) from, unless the test
    /// brought its own.
    pub exchange: Option<doubles::bitget::FakeBitget>,
}

pub struct TestResponse {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: serde_json::Value,
    pub raw: String,
}

impl TestResponse {
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

fn require_env(key: &str) -> String {
    std::env::var(key)
        .unwrap_or_else(|_| panic!("{key} is not set: run the tests through `make test`, which starts redis, DynamoDB Local and moto"))
}

pub fn test_config(overrides: &[(&str, String)]) -> Config {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut values: HashMap<String, String> = HashMap::from([
        ("APP_ENV".into(), "local".into()),
        ("TABLE_NAME".into(), format!("test-{id}")),
        ("REDIS_URL".into(), require_env("REDIS_URL")),
        ("JWT_SECRET_ID".into(), format!("test/{id}/jwt")),
        ("ENCRYPTION_SECRET_ID".into(), format!("test/{id}/enc")),
        ("TELEGRAM_SECRET_ID".into(), format!("test/{id}/telegram")),
        ("TELEGRAM_WEBHOOK_SECRET_ID".into(), format!("test/{id}/telegram-webhook")),
        ("OUTBOX_PATH".into(), std::env::temp_dir().join(format!("outbox-{id}.jsonl")).display().to_string()),
        ("IP_RATE_LIMIT_PER_MINUTE".into(), "1000".into()),
        ("CORS_ALLOWED_ORIGINS".into(), "https://app.example".into()),
        ("EXCHANGE_TIMEOUT_MS".into(), "800".into()),
        // Many tests share two cores with Argon2; a slow answer is not a dead server here.
        ("REDIS_TIMEOUT_MS".into(), "10000".into()),
        // The equal-time floor is checked by its own test; the others need no waiting.
        ("AUTH_ANSWER_FLOOR_MS".into(), "0".into()),
        // A fills read copies Bitget's history whole on two loaded cores; the budget cutting a
        // sync short has its own test.
        ("FILL_SYNC_BUDGET_MS".into(), "30000".into()),
    ]);
    for (k, v) in overrides {
        values.insert((*k).to_owned(), v.clone());
    }
    Config::from_lookup(|k| values.get(k).cloned()).expect("test config is valid")
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

pub async fn spawn_app_with(overrides: &[(&str, String)]) -> TestApp {
    require_env("AWS_ENDPOINT_URL");
    // DynamoDB is AWS's own engine (DynamoDB Local), never moto's re-implementation.
    require_env("AWS_ENDPOINT_URL_DYNAMODB");
    // Contract specs come from the exchange's contracts endpoint, paper trading included: every
    // app reads them from a Bitget double.
    let exchange = match overrides.iter().any(|(k, _)| *k == "BITGET_BASE_URL") {
        true => None,
        false => Some(doubles::bitget::FakeBitget::start().await),
    };
    let mut overrides = overrides.to_vec();
    if let Some(d) = &exchange {
        overrides.push(("BITGET_BASE_URL", d.url.clone()));
    }
    let config = test_config(&overrides);
    let sdk = shared::aws::sdk_config().expect("the local stack's AWS environment");
    let template = include_str!("../../../template.yaml");
    ops::devstack::create_table(&aws_sdk_dynamodb::Client::new(&sdk), &config.table_name, template).await.expect("create table");
    ops::devstack::seed_secrets(&aws_sdk_secretsmanager::Client::new(&sdk), &config).await.expect("seed secrets");
    let outbox = config.outbox_path.clone();
    let state = AppState::all(config, sdk.clone()).await.expect("state");
    TestApp { state, outbox, sdk, exchange }
}

pub fn request(method: &str, path: &str, body: Option<serde_json::Value>) -> Request {
    let mut builder = http::Request::builder().method(method).uri(format!("https://api.example.com{path}"));
    if body.is_some() {
        builder = builder.header("content-type", "application/json");
    }
    let body = body.map(|b| Body::Text(b.to_string())).unwrap_or(Body::Empty);
    builder.body(body).expect("request").with_request_context(api_context("198.51.100.1"))
}

/// A POST whose JSON body is sent exactly as written (numbers keep every digit).
pub fn request_raw(path: &str, json: &str) -> Request {
    http::Request::builder()
        .method("POST")
        .uri(format!("https://api.example.com{path}"))
        .header("content-type", "application/json")
        .body(Body::Text(json.to_owned()))
        .expect("request")
        .with_request_context(api_context("198.51.100.1"))
}

pub fn api_context(source_ip: &str) -> LambdaContext {
    let mut ctx = lambda_http::aws_lambda_events::apigw::ApiGatewayV2httpRequestContext::default();
    ctx.http.source_ip = Some(source_ip.to_owned());
    LambdaContext::ApiGatewayV2(ctx)
}

pub fn with_bearer(mut req: Request, token: &str) -> Request {
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

pub fn from_ip(req: Request, ip: &str) -> Request {
    req.with_request_context(api_context(ip))
}

impl TestApp {
    pub async fn call<'a, F, Fut>(&'a self, handler: F, req: Request) -> TestResponse
    where
        F: FnOnce(&'a AppState, Request, RequestContext) -> Fut,
        Fut: Future<Output = Result<Response<Body>, ApiError>> + 'a,
    {
        let response = serve(&self.state, req, handler).await.expect("serve never fails");
        into_test_response(response)
    }

    /// Every mail the app has sent so far, oldest first.
    pub fn outbox(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.outbox)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("outbox line is JSON"))
            .collect()
    }

    pub fn dynamo(&self) -> &aws_sdk_dynamodb::Client {
        &self.state.dynamo
    }
}

pub fn into_test_response(response: Response<Body>) -> TestResponse {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let raw = match response.body() {
        Body::Text(t) => t.clone(),
        Body::Binary(b) => String::from_utf8_lossy(b).into_owned(),
        _ => String::new(),
    };
    let body = serde_json::from_str(&raw).unwrap_or(serde_json::Value::Null);
    TestResponse { status, headers, body, raw }
}

/// A free loopback port for a server a test starts itself.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A redis-server of the test's own, to stop and restart.
pub struct OwnRedis {
    pub port: u16,
    /// The cluster bus port (redis' default, port + 10000, may be taken by another server).
    bus_port: u16,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    pub async fn start() -> Self {
        let mut redis = OwnRedis { port: free_port(), bus_port: free_port(), child: None };
        redis.restart().await;
        redis
    }
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    pub async fn restart(&mut self) {
        self.stop();
        let bin = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
        // Cluster mode, one node owning every slot, as in `make test` and on ElastiCache
        // Serverless; the node file survives a restart like the node's identity does.
        let nodes = std::env::temp_dir().join(format!("test-redis-nodes-{}.conf", self.port));
        let child = std::process::Command::new(bin)
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--save", "", "--appendonly", "no"])
            .args(["--cluster-enabled", "yes", "--cluster-port", &self.bus_port.to_string()])
            .args(["--cluster-config-file", &nodes.display().to_string()])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        for _ in 0..200 {
            if cluster_is_ok(&self.url()).await {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("redis-server on {} did not reach cluster_state:ok", self.port);
    }
}

/// Gives the node every slot (a no-op once it has them) and says whether the cluster is up.
async fn cluster_is_ok(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else { return false };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else { return false };
    let _ = redis::cmd("CLUSTER").arg("ADDSLOTSRANGE").arg(0).arg(16383).query_async::<()>(&mut conn).await;
    let info: String = redis::cmd("CLUSTER").arg("INFO").query_async(&mut conn).await.unwrap_or_default();
    info.contains("cluster_state:ok")
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(std::env::temp_dir().join(format!("test-redis-nodes-{}.conf", self.port)));
    }
}

// Every test binary compiles this module; not each of them uses both doubles.
#[allow(unused_imports)]
pub use doubles::bitget as fake_bitget;
#[allow(unused_imports)]
pub use doubles::telegram as fake_telegram;

pub const PASSWORD: &str = "correct horse battery staple";

/// A user who registered, verified and logged in: what a test needs to act as them.
pub struct SignedIn {
    pub email: String,
    pub access: String,
    pub refresh: String,
}

/// Registers, verifies and logs in a fresh user (password `PASSWORD`).
pub async fn sign_up(app: &TestApp) -> SignedIn {
    sign_up_as(app, &format!("user-{}@example.com", uuid::Uuid::new_v4().simple())).await
}

/// Registers `email` (lower case), verifies it from the mailed code and logs in.
pub async fn sign_up_as(app: &TestApp, email: &str) -> SignedIn {
    use shared::handlers::auth;
    let email = email.to_owned();
    let res = app
        .call(auth::register, request("POST", "/api/v1/auth/register", Some(serde_json::json!({"email": email, "password": PASSWORD}))))
        .await;
    assert_eq!(res.status, 202, "{}", res.raw);
    let code = app.outbox().iter().rev().find(|m| m["to"] == email.as_str() && m["code"].is_string()).expect("code mail")["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = app
        .call(auth::verify, request("POST", "/api/v1/auth/verify", Some(serde_json::json!({"email": email, "verification_code": code}))))
        .await;
    assert_eq!(res.status, 200, "{}", res.raw);
    let res =
        app.call(auth::login, request("POST", "/api/v1/auth/login", Some(serde_json::json!({"email": email, "password": PASSWORD})))).await;
    assert_eq!(res.status, 200, "{}", res.raw);
    let token = |name: &str| res.body[name].as_str().unwrap().to_owned();
    SignedIn { access: token("access_token"), refresh: token("refresh_token"), email }
}

/// Registers, verifies and logs in a fresh user; their access token.
pub async fn access_token(app: &TestApp) -> String {
    sign_up(app).await.access
}

impl TestApp {
    pub fn trading(&self) -> shared::trading::store::TradingStore<'_> {
        self.state.trading_store()
    }

    pub async fn set_mark(&self, symbol: &str, price: &str) {
        self.trading().set_mark(symbol, price.parse().unwrap()).await.unwrap();
    }

    /// Calls a protected route as the holder of `token`.
    pub async fn call_as<'a, F, Fut>(
        &'a self,
        handler: F,
        token: &str,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> TestResponse
    where
        F: FnOnce(&'a AppState, Request, RequestContext) -> Fut,
        Fut: Future<Output = Result<Response<Body>, ApiError>> + 'a,
    {
        self.call(handler, with_bearer(request(method, path, body), token)).await
    }
}

/// Makes the next `n` DynamoDB transactions of `app` come back cancelled by a
/// `TransactionConflict` (another transaction held one of the items), as DynamoDB answers under
/// contention. The cancelled request never reaches the table: it is turned into a harmless
/// `DescribeLimits` call and its answer replaced, so nothing is written.
pub fn conflict_next_transactions(app: &mut TestApp, n: usize) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    let remaining = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(n));
    let config = aws_sdk_dynamodb::config::Builder::from(&app.sdk).interceptor(Conflicts(remaining.clone())).build();
    app.state.dynamo = aws_sdk_dynamodb::Client::from_conf(config);
    remaining
}

#[derive(Debug)]
struct Conflicts(std::sync::Arc<std::sync::atomic::AtomicUsize>);

#[derive(Debug, Clone)]
struct Cancelled;
impl aws_smithy_types::config_bag::Storable for Cancelled {
    type Storer = aws_smithy_types::config_bag::StoreReplace<Self>;
}

impl aws_sdk_dynamodb::config::Intercept for Conflicts {
    fn name(&self) -> &'static str {
        "Conflicts"
    }

    fn modify_before_signing(
        &self,
        context: &mut aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextMut<'_>,
        _components: &aws_sdk_dynamodb::config::RuntimeComponents,
        cfg: &mut aws_sdk_dynamodb::config::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        use std::sync::atomic::Ordering;
        let request = context.request_mut();
        let transaction = request.headers().get("x-amz-target").is_some_and(|t| t.ends_with(".TransactWriteItems"));
        if transaction && self.0.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            request.headers_mut().insert("x-amz-target", "DynamoDB_20120810.DescribeLimits");
            *request.body_mut() = aws_smithy_types::body::SdkBody::from("{}");
            request.headers_mut().insert("content-length", "2");
            cfg.interceptor_state().store_put(Cancelled);
        }
        Ok(())
    }

    fn modify_before_deserialization(
        &self,
        context: &mut aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextMut<'_>,
        _components: &aws_sdk_dynamodb::config::RuntimeComponents,
        cfg: &mut aws_sdk_dynamodb::config::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        if cfg.load::<Cancelled>().is_some() {
            let body = r#"{"__type":"com.amazonaws.dynamodb.v20120810#TransactionCanceledException","Message":"Transaction cancelled, please refer cancellation reasons for specific reasons [TransactionConflict, None]","CancellationReasons":[{"Code":"TransactionConflict","Message":"Transaction is ongoing for the item"},{"Code":"None"}]}"#;
            let response = context.response_mut();
            *response.status_mut() = aws_smithy_runtime_api::http::StatusCode::try_from(400u16).expect("status");
            *response.body_mut() = aws_smithy_types::body::SdkBody::from(body);
        }
        Ok(())
    }
}

/// Holds the answer of the next DynamoDB transaction of `app` (after DynamoDB committed it) until
/// the returned gate is opened: a request that has just made its write and not yet answered.
/// `held` turns true while it waits. The hold is in the HTTP connector, so nothing blocks.
pub fn hold_next_transaction_answer(app: &mut TestApp) -> std::sync::Arc<Gate> {
    use aws_smithy_runtime_api::client::http::{http_client_fn, HttpClient, SharedHttpConnector};
    // The production client: the local endpoints are plain HTTP, which it speaks too.
    let inner = shared::aws::https_client();
    let gate = std::sync::Arc::new(Gate::default());
    let for_client = gate.clone();
    let client = http_client_fn(move |settings, components| {
        SharedHttpConnector::new(Holding { inner: inner.http_connector(settings, components), gate: for_client.clone() })
    });
    let config = aws_sdk_dynamodb::config::Builder::from(&app.sdk).http_client(client).build();
    app.state.dynamo = aws_sdk_dynamodb::Client::from_conf(config);
    gate
}

#[derive(Debug, Default)]
pub struct Gate {
    pub held: std::sync::atomic::AtomicBool,
    used: std::sync::atomic::AtomicBool,
    opened: tokio::sync::Notify,
}

impl Gate {
    pub fn open(&self) {
        self.opened.notify_one();
    }
}

#[derive(Debug)]
struct Holding {
    inner: aws_smithy_runtime_api::client::http::SharedHttpConnector,
    gate: std::sync::Arc<Gate>,
}

impl aws_smithy_runtime_api::client::http::HttpConnector for Holding {
    fn call(
        &self,
        request: aws_smithy_runtime_api::client::orchestrator::HttpRequest,
    ) -> aws_smithy_runtime_api::client::http::HttpConnectorFuture {
        use std::sync::atomic::Ordering;
        let transaction = request.headers().get("x-amz-target").is_some_and(|t| t.ends_with(".TransactWriteItems"));
        let answer = self.inner.call(request);
        let gate = self.gate.clone();
        aws_smithy_runtime_api::client::http::HttpConnectorFuture::new(async move {
            let response = answer.await?;
            if transaction && !gate.used.swap(true, Ordering::SeqCst) {
                gate.held.store(true, Ordering::SeqCst);
                gate.opened.notified().await;
            }
            Ok(response)
        })
    }
}
