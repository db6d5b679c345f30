//! A local fake of the Telegram Bot API's `sendMessage`: records messages, can be down or answer
//! 429 with `retry_after` like the real one.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct TelegramState {
    pub messages: Vec<String>,
    /// Every message with the chat it went to.
    pub sent: Vec<(String, String)>,
    pub down: bool,
    pub rate_limit_once: bool,
}

#[derive(Clone)]
pub struct FakeTelegram {
    pub url: String,
    pub state: Arc<Mutex<TelegramState>>,
}

async fn send_message(
    State(state): State<Arc<Mutex<TelegramState>>>,
    Path(token): Path<String>,
    Json(body): Json<Value>,
) -> impl IntoResponse {
    let mut s = state.lock().unwrap();
    if !token.starts_with("bot") || body["chat_id"].as_str().unwrap_or("").is_empty() {
        return (StatusCode::BAD_REQUEST, Json(json!({"ok": false, "error_code": 400, "description": "Bad Request: chat not found"})));
    }
    if s.down {
        return (StatusCode::BAD_GATEWAY, Json(json!({"ok": false, "error_code": 502, "description": "Bad Gateway"})));
    }
    if s.rate_limit_once {
        s.rate_limit_once = false;
        return (
            StatusCode::TOO_MANY_REQUESTS,
            Json(
                json!({"ok": false, "error_code": 429, "description": "Too Many Requests: retry after 1", "parameters": {"retry_after": 1}}),
            ),
        );
    }
    s.messages.push(body["text"].as_str().unwrap_or("").to_owned());
    s.sent.push((body["chat_id"].as_str().unwrap_or("").to_owned(), body["text"].as_str().unwrap_or("").to_owned()));
    (StatusCode::OK, Json(json!({"ok": true, "result": {"message_id": s.messages.len()}})))
}

impl FakeTelegram {
    pub async fn start() -> FakeTelegram {
        let state = Arc::new(Mutex::new(TelegramState::default()));
        let app = axum::Router::new().route("/{token}/sendMessage", axum::routing::post(send_message)).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.ok() });
        FakeTelegram { url, state }
    }
    pub fn messages(&self) -> Vec<String> {
        self.state.lock().unwrap().messages.clone()
    }
    /// The messages sent to one chat, oldest first.
    pub fn messages_to(&self, chat_id: &str) -> Vec<String> {
        self.state.lock().unwrap().sent.iter().filter(|(chat, _)| chat == chat_id).map(|(_, text)| text.clone()).collect()
    }
    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }
}
