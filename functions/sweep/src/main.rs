use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use shared::{guardian, AppState, Need};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let state = AppState::from_env(&[Need::Redis, Need::EncryptionKeys, Need::Telegram]).await?;
    run(service_fn(|event: LambdaEvent<serde_json::Value>| guardian::handle(&state, event))).await
}
