//! Dependency probes, each with a short timeout: the health route answers with them and the
//! guardian alerts on them.

use crate::state::{Cache, Keys, Table};
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

pub async fn probe_dynamodb(state: &impl Table) -> bool {
    probe("dynamodb", async {
        state
            .dynamo()
            .get_item()
            .table_name(&state.config().table_name)
            .set_key(Some(crate::keys::health_probe()))
            .send()
            .await
            .map(|_| ())
            .map_err(aws_sdk_dynamodb::error::DisplayErrorContext)
    })
    .await
}

pub async fn probe_redis(state: &impl Cache) -> bool {
    let mut conn = state.redis().clone();
    probe("redis", async move { redis::cmd("PING").query_async::<String>(&mut conn).await.map(|_| ()) }).await
}

pub async fn probe_secrets(state: &impl Keys) -> bool {
    probe("secrets", async { state.jwt_keys().get().await.map(|_| ()) }).await
}
