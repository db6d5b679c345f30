use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use shared::{trading::runner, App};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let app = App::from_env()?.table().vault().exchange()?.ready().await?;
    run(service_fn(|event: LambdaEvent<serde_json::Value>| runner::handle(&app, event))).await
}
