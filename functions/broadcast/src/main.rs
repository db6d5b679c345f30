use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use shared::live::broadcast::{self, Gateway};
use shared::live::stream::StreamEvent;
use shared::App;

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let app = App::from_env()?.table().redis().await?.exchange()?.telegram()?.ready().await?;
    let gateway = Gateway::new(app.sdk(), &app.config.ws_management_url);
    run(service_fn(|event: LambdaEvent<StreamEvent>| broadcast::serve(&app, &gateway, event))).await
}
