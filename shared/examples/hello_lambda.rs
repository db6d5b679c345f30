//! The baseline of the init-time benchmark: a hello-world `lambda_http` function built with the
//! same profile as the real ones (`bench/init_time.sh`).

use lambda_http::{run, service_fn, Body, Error, Request, Response};

#[tokio::main]
async fn main() -> Result<(), Error> {
    run(service_fn(|_req: Request| async { Ok::<_, Error>(Response::new(Body::Text("hello".into()))) })).await
}
