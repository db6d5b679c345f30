//! `GET /api/v1/health`: each dependency probed in parallel with a short timeout.

use crate::error::ApiError;
use crate::http::{json_response, RequestContext};
use crate::probes::{probe_dynamodb, probe_redis, probe_secrets};
use crate::state::{Cache, Keys, Table};
use http::StatusCode;
use lambda_http::{Body, Request, Response};

pub async fn handle(state: &(impl Table + Cache + Keys), _req: Request, _ctx: RequestContext) -> Result<Response<Body>, ApiError> {
    let (dynamodb, redis, secrets) = tokio::join!(probe_dynamodb(state), probe_redis(state), probe_secrets(state));
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    let healthy = dynamodb && redis && secrets;
    let body = serde_json::json!({
        "status": if healthy { "healthy" } else { "unhealthy" },
        "version": state.config().version,
        "environment": state.config().app_env.as_str(),
        "checks": { "dynamodb": word(dynamodb), "redis": word(redis), "secrets": word(secrets) },
    });
    json_response(if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, &body)
}
