use lambda_http::{run, service_fn, Error, Request};
use shared::{handlers::admin, http::serve, App};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let app = App::from_env()?.table().keys().vault().ready().await?;
    run(service_fn(|req: Request| serve(&app, req, admin::audit))).await
}
