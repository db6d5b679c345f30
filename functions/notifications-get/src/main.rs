use lambda_http::{run, service_fn, Error, Request};
use shared::{handlers::live, http::serve, AppState, Need};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let state = AppState::from_env(&[Need::JwtKeys]).await?;
    run(service_fn(|req: Request| serve(&state, req, live::get_notifications))).await
}
