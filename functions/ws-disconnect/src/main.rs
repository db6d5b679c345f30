use lambda_http::{run, service_fn, Error, Request};
use shared::{handlers::live, http::serve, App};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let app = App::from_env()?.table().ready().await?;
    run(service_fn(|req: Request| serve(&app, req, live::ws_disconnect))).await
}
