//! The live-push harness of the tests and the latency benchmark: the app, the local API Gateway
//! stand-in in front of its WebSocket handlers, and the table's stream followed into its
//! broadcast function, all in process, as `make dev` wires the binaries.

use super::fake_telegram::FakeTelegram;
use super::*;
use doubles::ws_gateway::{Invoke, WsGateway};
use futures::StreamExt;
use serde_json::{json, Value};
use shared::handlers::live as l;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

pub type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How soon a change must reach every connection (the contract).
pub const PUSH_WITHIN: Duration = Duration::from_secs(2);

pub struct Live {
    pub app: Arc<TestApp>,
    pub gateway: WsGateway,
    pub telegram: FakeTelegram,
    pub management: Arc<shared::live::broadcast::Gateway>,
    /// Every batch the stream delivered, to deliver again as a retry would.
    pub delivered: Arc<std::sync::Mutex<Vec<Value>>>,
    _follower: tokio::task::JoinHandle<()>,
}

pub fn answer(response: lambda_http::Response<lambda_http::Body>) -> Value {
    let status = response.status().as_u16();
    let body = match response.into_body() {
        lambda_http::Body::Text(t) => t,
        lambda_http::Body::Binary(b) => String::from_utf8_lossy(&b).into_owned(),
        _ => String::new(),
    };
    json!({"statusCode": status, "body": body})
}

/// The app, the gateway in front of its WebSocket functions and the stream behind its
/// broadcast function, as `make dev` wires them (here in process).
pub async fn live() -> Live {
    let telegram = FakeTelegram::start().await;
    let app = Arc::new(spawn_app_with(&[("TELEGRAM_BASE_URL", telegram.url.clone())]).await);
    app.set_mark("BTCUSDT", "65000").await;
    let handlers = app.clone();
    let invoke: Invoke = Arc::new(move |function, event| {
        let app = handlers.clone();
        Box::pin(async move {
            let req = lambda_http::request::from_str(&event.to_string()).map_err(|e| e.to_string())?;
            let state = &app.state;
            let response = match function {
                doubles::ws_gateway::CONNECT => shared::http::serve(state, req, l::ws_connect).await,
                doubles::ws_gateway::DISCONNECT => shared::http::serve(state, req, l::ws_disconnect).await,
                _ => shared::http::serve(state, req, l::ws_default).await,
            };
            response.map(answer).map_err(|e| e.to_string())
        })
    });
    let gateway = WsGateway::start(0, invoke).await.expect("gateway");
    let management = shared::live::broadcast::Gateway::new(&app.sdk, &gateway.management_url);
    let management = Arc::new(management);
    let broadcaster = app.clone();
    let delivered = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (record, pusher) = (delivered.clone(), management.clone());
    let deliver: doubles::stream_source::Deliver = Arc::new(move |event| {
        let (app, management) = (broadcaster.clone(), pusher.clone());
        record.lock().unwrap().push(event.clone());
        Box::pin(async move {
            let event: shared::live::stream::StreamEvent = serde_json::from_value(event).map_err(|e| e.to_string())?;
            shared::live::broadcast::handle(&app.state, &management, event).await.map(|_| ()).map_err(|e| e.chain())
        })
    });
    let endpoint = std::env::var("AWS_ENDPOINT_URL_DYNAMODB").expect("the stack's DynamoDB Local");
    let streams = aws_sdk_dynamodbstreams::Client::from_conf(
        aws_sdk_dynamodbstreams::config::Builder::from(&app.sdk).endpoint_url(&endpoint).build(),
    );
    let table = app.state.config.table_name.clone();
    let dynamo = app.dynamo().clone();
    let follower = tokio::spawn(async move {
        if let Err(e) = doubles::stream_source::follow(streams, endpoint, dynamo, table, deliver, None).await {
            panic!("the stream could not be followed: {e}");
        }
    });
    // The follower starts at the stream's newest record: let it take its place first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Live { app, gateway, telegram, management, delivered, _follower: follower }
}

impl Live {
    pub async fn connect(&self, token: &str) -> Socket {
        let (socket, response) =
            tokio_tungstenite::connect_async(format!("{}/?token={token}", self.gateway.url)).await.expect("the upgrade is accepted");
        assert_eq!(response.status().as_u16(), 101);
        socket
    }

    pub async fn refused(&self, token: &str) -> u16 {
        match tokio_tungstenite::connect_async(format!("{}/?token={token}", self.gateway.url)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
            Ok(_) => panic!("the upgrade was accepted"),
            Err(e) => panic!("not an HTTP refusal: {e}"),
        }
    }
}

/// The messages a socket receives until one satisfies `until` (which is returned with the time
/// it took), or `within` passes (None).
pub async fn next_matching(socket: &mut Socket, within: Duration, until: impl Fn(&Value) -> bool) -> Option<(Value, Duration)> {
    let started = Instant::now();
    loop {
        let left = within.checked_sub(started.elapsed())?;
        match tokio::time::timeout(left, socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                let message: Value = serde_json::from_str(text.as_str()).expect("every push is JSON");
                if until(&message) {
                    return Some((message, started.elapsed()));
                }
            }
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return None,
            Ok(Some(Ok(_))) => {}
            Err(_) => return None,
        }
    }
}

/// Every message a socket receives within `within`.
pub async fn all_within(socket: &mut Socket, within: Duration) -> Vec<Value> {
    let mut seen = Vec::new();
    let started = Instant::now();
    while let Some(left) = within.checked_sub(started.elapsed()) {
        match tokio::time::timeout(left, socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => seen.push(serde_json::from_str(text.as_str()).unwrap()),
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    seen
}

/// Whether the server closed the socket within `within`.
pub async fn closed_within(socket: &mut Socket, within: Duration) -> bool {
    let started = Instant::now();
    while let Some(left) = within.checked_sub(started.elapsed()) {
        match tokio::time::timeout(left, socket.next()).await {
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return true,
            Ok(Some(Ok(_))) => {}
            Err(_) => return false,
        }
    }
    false
}
