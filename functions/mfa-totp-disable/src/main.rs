use lambda_http::{run, service_fn, Error, Request};
use shared::{handlers::auth, http::serve, App};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let app = App::from_env()?.table().redis().await?.keys().vault().mail().ready().await?;
    run(service_fn(|req: Request| serve(&app, req, auth::totp_disable))).await
}
