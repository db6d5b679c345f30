use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use shared::{trading::runner, AppState, Need};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let state = AppState::from_env(&[Need::EncryptionKeys]).await?;
    run(service_fn(|event: LambdaEvent<serde_json::Value>| runner::handle(&state, event))).await
}
