use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use shared::live::broadcast::{self, Gateway};
use shared::live::stream::StreamEvent;
use shared::{AppState, Need};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let state = AppState::from_env(&[Need::Redis, Need::Telegram]).await?;
    let gateway = Gateway::new(&shared::aws::sdk_config().await, &state.config.ws_management_url);
    run(service_fn(|event: LambdaEvent<StreamEvent>| broadcast::serve(&state, &gateway, event))).await
}
