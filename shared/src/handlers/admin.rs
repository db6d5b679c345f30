//! The operators' routes: each is parse → `admin::act` (checks and audit) → respond.

use crate::admin::audit::AuditStore;
use crate::admin::{self, Effect};
use crate::error::ApiError;
use crate::http::{json_response, parse_json, RequestContext};
use crate::state::{Bitget, Keys, Table, Vault};
use http::StatusCode;
use lambda_http::{Body, Request, Response};
use serde::Deserialize;

type HandlerResult = Result<Response<Body>, ApiError>;

/// `GET /api/v1/admin/bots?state=running|stopping&limit=&cursor=`.
pub async fn list_bots(state: &(impl Table + Keys + Vault + Bitget), req: Request, ctx: RequestContext) -> HandlerResult {
    let page = admin::act(state, &req, &ctx, "bots.list", None, Effect::Look, |_| admin::bots::list(state, req.uri().query())).await?;
    json_response(StatusCode::OK, &page)
}

/// `POST /api/v1/admin/users/{user_id}/bot/stop`: the stop route's answer for that user.
pub async fn stop_bot(state: &(impl Table + Keys + Vault + Bitget), req: Request, ctx: RequestContext) -> HandlerResult {
    let user_id = crate::http::inner_path_parameter(&req, "user_id", "users");
    // Only an id of the shape this service makes is written into the log as given.
    let target = if uuid::Uuid::try_parse(&user_id).is_ok() && user_id.len() == 36 { user_id.clone() } else { "invalid".to_owned() };
    let stopped = admin::act(state, &req, &ctx, "bot.stop", Some(target), Effect::Change, |_| admin::bots::stop(state, &user_id)).await?;
    json_response(StatusCode::OK, &stopped)
}

pub async fn get_kill_switch(state: &(impl Table + Keys), req: Request, ctx: RequestContext) -> HandlerResult {
    let trading = state.trading_store();
    let switch =
        admin::act(state, &req, &ctx, "kill_switch.get", Some("kill_switch".into()), Effect::Look, |_| admin::kill_switch::get(&trading))
            .await?;
    json_response(StatusCode::OK, &switch)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KillSwitchRequest {
    enabled: bool,
    reason: String,
}

/// `PUT /api/v1/admin/kill-switch` `{"enabled", "reason"}`. A body that does not parse is
/// answered after the admin checks, and recorded like any other refusal.
pub async fn set_kill_switch(state: &(impl Table + Keys), req: Request, ctx: RequestContext) -> HandlerResult {
    let body: Result<KillSwitchRequest, ApiError> = parse_json(&req);
    let action = match &body {
        Ok(KillSwitchRequest { enabled: true, .. }) => "kill_switch.enable",
        Ok(KillSwitchRequest { enabled: false, .. }) => "kill_switch.disable",
        Err(_) => "kill_switch.set",
    };
    let trading = state.trading_store();
    let switch = admin::act(state, &req, &ctx, action, Some("kill_switch".into()), Effect::Change, |admin| async move {
        let body = body?;
        admin::kill_switch::set(&trading, body.enabled, &body.reason, &admin.email).await
    })
    .await?;
    json_response(StatusCode::OK, &switch)
}

/// `GET /api/v1/admin/audit?limit=&cursor=`: the audit log, newest first.
pub async fn audit(state: &(impl Table + Keys + Vault), req: Request, ctx: RequestContext) -> HandlerResult {
    let store = AuditStore { client: state.dynamo(), table: &state.config().table_name };
    let page = admin::act(state, &req, &ctx, "audit.list", None, Effect::Look, |_| async {
        let keys = state.encryption_keys().get().await.map_err(|e| ApiError::internal("loading encryption keys", e))?;
        admin::audit::list(&store, &keys, req.uri().query()).await
    })
    .await?;
    json_response(StatusCode::OK, &page)
}
