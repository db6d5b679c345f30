use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use shared::{guardian, App};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let app = App::from_env()?.table().redis().await?.vault().mail().exchange()?.telegram()?.ready().await?;
    run(service_fn(|event: LambdaEvent<serde_json::Value>| guardian::handle(&app, event))).await
}
