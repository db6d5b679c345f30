//! The WebSocket API's routes (`$connect`, `$disconnect`, `$default`) and the notification
//! routes: Telegram linking, its webhook, and the settings.

use crate::error::ApiError;
use crate::http::{empty_response, json_response, parse_json, RequestContext};
use crate::live::store::{Connection, LiveStore};
use crate::live::telegram;
use crate::state::{Cache, Deps, Keys, Table, Telegram};
use http::StatusCode;
use lambda_http::request::RequestContext as EventContext;
use lambda_http::{Body, Request, RequestExt, Response};
use serde::Deserialize;

type HandlerResult = Result<Response<Body>, ApiError>;

fn live_store(state: &impl Table) -> LiveStore<'_> {
    LiveStore { client: state.dynamo(), table: &state.config().table_name }
}

fn connection_id(req: &Request) -> Result<String, ApiError> {
    match req.request_context_ref() {
        Some(EventContext::WebSocket(ctx)) => ctx.connection_id.clone().filter(|id| !id.is_empty() && id.len() <= 128),
        _ => None,
    }
    .ok_or_else(|| ApiError::invalid_request("not a WebSocket event"))
}

// ---------------------------------------------------------------- WebSocket

/// The caller a stored connection was made for (to check its revocation again).
fn caller_again(connection: &Connection) -> crate::auth::session::Caller {
    crate::auth::session::Caller {
        user_id: connection.user_id.clone(),
        issued_at_ms: connection.issued_at_ms,
        session_id: connection.session_id.clone(),
        sign_in: crate::auth::tokens::SignIn::Password,
        roles: crate::auth::tokens::Roles::NONE,
    }
}

/// `$connect` (`wss://…?token=<access token>`): the token is verified as on every route and its
/// session must be live; anything else refuses the upgrade with 401.
pub async fn ws_connect(state: &(impl Table + Keys), req: Request, _ctx: RequestContext) -> HandlerResult {
    let token = req.query_string_parameters_ref().and_then(|q| q.first("token").map(str::to_owned)).unwrap_or_default();
    let caller = crate::auth::session::verify_token(state, &token).await?;
    crate::auth::session::live_profile(state, &caller).await?;
    let now = chrono::Utc::now();
    let connection = Connection {
        connection_id: connection_id(&req)?,
        user_id: caller.user_id,
        session_id: caller.session_id,
        issued_at_ms: caller.issued_at_ms,
        connected_ms: now.timestamp_millis(),
        expires_at: now.timestamp() + crate::live::store::CONNECTION_LIFETIME_SECS,
    };
    let store = live_store(state);
    store.add(&connection).await?;
    // A revocation that landed while the connection was stored saw no connection to close:
    // read the profile again, and refuse if it did.
    if crate::auth::session::live_profile(state, &caller_again(&connection)).await.is_err() {
        store.remove(&connection.user_id, &connection.connection_id).await?;
        return Err(ApiError::invalid_token());
    }
    empty_response(StatusCode::OK)
}

/// `$disconnect`: the connection is forgotten (also when it was never stored, or already gone).
pub async fn ws_disconnect(state: &impl Table, req: Request, _ctx: RequestContext) -> HandlerResult {
    let id = connection_id(&req)?;
    let store = live_store(state);
    if let Some(user_id) = store.owner(&id).await? {
        store.remove(&user_id, &id).await?;
    }
    empty_response(StatusCode::OK)
}

/// `$default`: `{"action":"ping"}` is answered `{"type":"pong"}`; anything else
/// `{"type":"error","code":"unknown_action"}`.
pub async fn ws_default(_state: &impl Deps, req: Request, _ctx: RequestContext) -> HandlerResult {
    #[derive(Deserialize)]
    struct Frame {
        action: String,
    }
    let text: &[u8] = req.body().as_ref();
    let answer = match serde_json::from_slice::<Frame>(text) {
        Ok(frame) if frame.action == "ping" => serde_json::json!({"type": "pong"}),
        _ => serde_json::json!({"type": "error", "code": "unknown_action"}),
    };
    json_response(StatusCode::OK, &answer)
}

// ---------------------------------------------------------------- Telegram

/// `POST /api/v1/notifications/telegram/link`: `{"link_code","expires_at","bot_url"}`.
pub async fn telegram_link(state: &(impl Table + Cache + Keys), req: Request, _ctx: RequestContext) -> HandlerResult {
    let caller = crate::auth::session::authenticate(state, &req).await?;
    crate::auth::session::live_profile(state, &caller).await?;
    let code = telegram::issue_link_code(state.redis(), &state.config().telegram_bot_username, &caller.user_id).await?;
    crate::http::secret_json_response(StatusCode::OK, &code)
}

/// `POST /api/v1/telegram/webhook`: Telegram's updates, behind its secret-token header.
pub async fn telegram_webhook(state: &(impl Table + Cache + Telegram), req: Request, _ctx: RequestContext) -> HandlerResult {
    let given = crate::http::header_str(&req, "x-telegram-bot-api-secret-token").unwrap_or("");
    let expected = &state.telegram().webhook.get().await.map_err(|e| ApiError::internal("loading the webhook secret", e))?;
    if !crate::crypto::constant_time_eq(given.as_bytes(), expected.token.expose().as_bytes()) || expected.token.expose().is_empty() {
        return Err(ApiError::Unauthorized { code: "invalid_webhook_secret", detail: "the secret token header is wrong" });
    }
    let body: &[u8] = req.body().as_ref();
    if body.len() <= crate::http::MAX_BODY_BYTES {
        telegram::receive(state, body).await?;
    }
    // Telegram retries anything but a 2xx: an update this service does not use is still taken.
    json_response(StatusCode::OK, &serde_json::json!({}))
}

/// `GET /api/v1/notifications`: `{"telegram": {"linked", "events"}}`.
pub async fn get_notifications(state: &(impl Table + Keys), req: Request, _ctx: RequestContext) -> HandlerResult {
    let caller = crate::auth::session::authenticate(state, &req).await?;
    let store = live_store(state);
    let (profile, settings) = tokio::join!(crate::auth::session::live_profile(state, &caller), store.notifications(&caller.user_id));
    profile?;
    json_response(StatusCode::OK, &settings?.view())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsRequest {
    events: Vec<String>,
}

/// `PUT /api/v1/notifications` `{"events": [...]}`: the events Telegram is told about.
pub async fn put_notifications(state: &(impl Table + Keys), req: Request, _ctx: RequestContext) -> HandlerResult {
    let caller = crate::auth::session::authenticate(state, &req).await?;
    let body: SettingsRequest = parse_json(&req)?;
    let events = telegram::chosen_events(&body.events)?;
    crate::auth::session::live_profile(state, &caller).await?;
    json_response(StatusCode::OK, &live_store(state).set_notification_events(&caller.user_id, &events).await?.view())
}

/// `DELETE /api/v1/notifications/telegram`: unlinks the chat (204, also when none was linked).
pub async fn delete_telegram(state: &(impl Table + Keys), req: Request, _ctx: RequestContext) -> HandlerResult {
    let caller = crate::auth::session::authenticate(state, &req).await?;
    crate::auth::session::live_profile(state, &caller).await?;
    live_store(state).unlink_telegram(&caller.user_id).await?;
    empty_response(StatusCode::NO_CONTENT)
}
