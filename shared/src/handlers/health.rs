//! `GET /api/v1/health`: each dependency probed in parallel with a short timeout.

use crate::error::ApiError;
use crate::http::{json_response, RequestContext};
use crate::state::AppState;
use http::StatusCode;
use lambda_http::{Body, Request, Response};
use std::future::Future;
use std::time::Duration;

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

async fn probe<F, E>(name: &str, call: F) -> bool
where
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    match tokio::time::timeout(PROBE_TIMEOUT, call).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(dependency = name, error = %e, "health probe failed");
            false
        }
        Err(_) => {
            tracing::warn!(dependency = name, "health probe timed out");
            false
        }
    }
}

pub async fn probe_dynamodb(state: &AppState) -> bool {
    probe("dynamodb", async {
        state
            .dynamo
            .get_item()
            .table_name(&state.config.table_name)
            .set_key(Some(crate::keys::health_probe()))
            .send()
            .await
            .map(|_| ())
            .map_err(aws_sdk_dynamodb::error::DisplayErrorContext)
    })
    .await
}

pub async fn probe_redis(state: &AppState) -> bool {
    let mut conn = state.redis.clone();
    probe("redis", async move { redis::cmd("PING").query_async::<String>(&mut conn).await.map(|_| ()) }).await
}

pub async fn probe_secrets(state: &AppState) -> bool {
    probe("secrets", async { state.jwt_keys.get().await.map(|_| ()) }).await
}

pub async fn handle(state: &AppState, _req: Request, _ctx: RequestContext) -> Result<Response<Body>, ApiError> {
    let (dynamodb, redis, secrets) = tokio::join!(probe_dynamodb(state), probe_redis(state), probe_secrets(state));
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    let healthy = dynamodb && redis && secrets;
    let body = serde_json::json!({
        "status": if healthy { "healthy" } else { "unhealthy" },
        "version": state.config.version,
        "environment": state.config.app_env.as_str(),
        "checks": { "dynamodb": word(dynamodb), "redis": word(redis), "secrets": word(secrets) },
    });
    json_response(if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, &body)
}
