//! API Gateway's WebSocket part, played locally for `make dev` and the tests: clients connect to
//! `ws://…/?token=…`; each connection's `$connect`, every frame (`$default`) and its
//! `$disconnect` become the API Gateway events the deployed functions receive, handed to an
//! invoker (the runtime emulator of `cargo lambda watch`, or the tests' in-process handlers); and
//! the Management API (`POST`/`GET`/`DELETE /@connections/{id}`) lets the functions push to a
//! connection or close it, answering 410 for one that is gone, as API Gateway does.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Runs one function with one event and gives back its answer (an API Gateway proxy response).
pub type Invoke = Arc<dyn Fn(&'static str, Value) -> BoxFuture<'static, Result<Value, String>> + Send + Sync>;

/// The functions behind the routes.
pub const CONNECT: &str = "ws-connect";
pub const DISCONNECT: &str = "ws-disconnect";
pub const DEFAULT: &str = "ws-default";

enum Outbound {
    Text(String),
    Close,
}

/// Each open connection: where its outbound frames go, and when it connected (ms).
type Connections = Arc<Mutex<HashMap<String, (mpsc::UnboundedSender<Outbound>, i64)>>>;

#[derive(Clone)]
struct Gateway {
    invoke: Invoke,
    connections: Connections,
}

pub struct WsGateway {
    /// `ws://127.0.0.1:<port>` for clients; `http://…` of the same port is the Management API.
    pub url: String,
    pub management_url: String,
    connections: Connections,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// API Gateway's connection ids are 16 base64 characters (`Lhx3tdfTIAMCJsg=`).
fn connection_id() -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE.encode(&uuid::Uuid::new_v4().as_bytes()[..11])
}

fn event(route: &str, kind: &str, id: &str, connected_at: i64, query: Option<&HashMap<String, String>>, body: Option<&str>) -> Value {
    let mut e = json!({
        "requestContext": {
            "routeKey": route,
            "eventType": kind,
            "messageDirection": "IN",
            "stage": "local",
            "connectedAt": connected_at,
            "requestTimeEpoch": now_ms(),
            "requestId": format!("{:x}", now_ms()),
            "domainName": "127.0.0.1",
            "connectionId": id,
            "apiId": "local",
            "identity": {"sourceIp": "127.0.0.1"},
        },
        "isBase64Encoded": false,
    });
    if let Some(query) = query {
        e["queryStringParameters"] = json!(query);
        e["multiValueQueryStringParameters"] = json!(query.iter().map(|(k, v)| (k.clone(), vec![v.clone()])).collect::<HashMap<_, _>>());
    }
    if let Some(body) = body {
        e["body"] = body.into();
    }
    e
}

fn status_of(answer: &Value) -> u16 {
    answer["statusCode"].as_u64().unwrap_or(502) as u16
}

async fn upgrade(State(gw): State<Gateway>, Query(query): Query<HashMap<String, String>>, ws: WebSocketUpgrade) -> Response {
    let id = connection_id();
    let connected_at = now_ms();
    let answer = (gw.invoke)(CONNECT, event("$connect", "CONNECT", &id, connected_at, Some(&query), None)).await;
    let status = answer.as_ref().map(status_of).unwrap_or(502);
    if status != 200 {
        // API Gateway refuses the upgrade with the function's status.
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
        return (code, answer.map(|a| a["body"].as_str().unwrap_or("").to_owned()).unwrap_or_default()).into_response();
    }
    let (tx, rx) = mpsc::unbounded_channel();
    gw.connections.lock().unwrap().insert(id.clone(), (tx, connected_at));
    ws.on_upgrade(move |socket| serve_connection(gw, id, connected_at, socket, rx))
}

async fn serve_connection(gw: Gateway, id: String, connected_at: i64, socket: WebSocket, mut rx: mpsc::UnboundedReceiver<Outbound>) {
    use futures::{SinkExt, StreamExt};
    let (mut sink, mut stream) = socket.split();
    loop {
        tokio::select! {
            outbound = rx.recv() => match outbound {
                Some(Outbound::Text(text)) => {
                    if sink.send(Message::Text(text.into())).await.is_err() { break; }
                }
                Some(Outbound::Close) | None => {
                    let _ = sink.send(Message::Close(None)).await;
                    break;
                }
            },
            inbound = stream.next() => match inbound {
                Some(Ok(Message::Text(text))) => {
                    let answer = (gw.invoke)(DEFAULT, event("$default", "MESSAGE", &id, connected_at, None, Some(text.as_str()))).await;
                    // The route response: the function's body goes back on the connection.
                    if let Some(body) = answer.ok().and_then(|a| a["body"].as_str().map(str::to_owned)).filter(|b| !b.is_empty()) {
                        if sink.send(Message::Text(body.into())).await.is_err() { break; }
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    gw.connections.lock().unwrap().remove(&id);
    let _ = (gw.invoke)(DISCONNECT, event("$disconnect", "DISCONNECT", &id, connected_at, None, None)).await;
}

fn gone() -> Response {
    (StatusCode::GONE, axum::Json(json!({"message": "Gone"}))).into_response()
}

async fn post_to_connection(State(gw): State<Gateway>, Path(id): Path<String>, body: axum::body::Bytes) -> Response {
    let sender = gw.connections.lock().unwrap().get(&id).map(|(tx, _)| tx.clone());
    match sender {
        Some(tx) if tx.send(Outbound::Text(String::from_utf8_lossy(&body).into_owned())).is_ok() => StatusCode::OK.into_response(),
        _ => gone(),
    }
}

async fn get_connection(State(gw): State<Gateway>, Path(id): Path<String>) -> Response {
    match gw.connections.lock().unwrap().get(&id) {
        Some((_, connected_at)) => axum::Json(json!({
            "connectedAt": chrono::DateTime::from_timestamp_millis(*connected_at).map(|t| t.to_rfc3339()),
            "identity": {"sourceIp": "127.0.0.1"},
        }))
        .into_response(),
        None => gone(),
    }
}

async fn delete_connection(State(gw): State<Gateway>, Path(id): Path<String>) -> Response {
    let sender = gw.connections.lock().unwrap().get(&id).map(|(tx, _)| tx.clone());
    match sender {
        Some(tx) => {
            let _ = tx.send(Outbound::Close);
            StatusCode::NO_CONTENT.into_response()
        }
        None => gone(),
    }
}

impl WsGateway {
    pub async fn start(port: u16, invoke: Invoke) -> std::io::Result<WsGateway> {
        let connections = Arc::new(Mutex::new(HashMap::new()));
        let gw = Gateway { invoke, connections: connections.clone() };
        let app = axum::Router::new()
            .route("/", axum::routing::get(upgrade))
            .route("/@connections/{id}", axum::routing::post(post_to_connection).get(get_connection).delete(delete_connection))
            .with_state(gw);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await.ok() });
        Ok(WsGateway { url: format!("ws://{addr}"), management_url: format!("http://{addr}"), connections })
    }

    /// How many connections are open now.
    pub fn open_connections(&self) -> usize {
        self.connections.lock().unwrap().len()
    }
}

/// The invoker of `make dev`: the runtime emulator of `cargo lambda watch` at `runtime` (what
/// `cargo lambda invoke` talks to), running the function binaries themselves.
pub fn runtime_invoker(runtime: String) -> Invoke {
    let http = reqwest::Client::new();
    Arc::new(move |function, event| {
        let (http, url) = (http.clone(), format!("{runtime}/2015-03-31/functions/{function}/invocations"));
        Box::pin(async move {
            let answer = http.post(url).json(&event).send().await.map_err(|e| e.to_string())?;
            if !answer.status().is_success() {
                return Err(format!("invocation answered {}", answer.status()));
            }
            answer.json::<Value>().await.map_err(|e| e.to_string())
        })
    })
}
