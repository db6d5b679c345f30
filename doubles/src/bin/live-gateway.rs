//! `make dev`'s stand-in for API Gateway's WebSocket API and for the stream's event source
//! mapping: WebSocket clients on `--port` (and the Management API on the same port), the table's
//! stream followed on DynamoDB Local, every event handed to the function binaries through the
//! runtime emulator of `cargo lambda watch` (`--runtime`).
//!
//! `live-gateway --port 9001 --runtime http://127.0.0.1:9000 --table trading-bot-local [--dead-letters FILE]`

use doubles::stream_source;
use doubles::ws_gateway::{runtime_invoker, WsGateway};
use std::sync::Arc;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_max_level(tracing::Level::INFO).init();
    let args: Vec<String> = std::env::args().collect();
    let port: u16 = arg(&args, "--port").unwrap_or_else(|| "9001".into()).parse()?;
    let runtime = arg(&args, "--runtime").unwrap_or_else(|| "http://127.0.0.1:9000".into());
    let table = arg(&args, "--table").ok_or("--table is required")?;
    let invoke = runtime_invoker(runtime);
    let gateway = WsGateway::start(port, invoke.clone()).await?;
    println!("websocket {}  management {}", gateway.url, gateway.management_url);
    // The workspace links one TLS stack (rustls with ring), so the SDK's client is named here.
    let https = {
        use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
        aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::Ring)).build_https()
    };
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(https).load().await;
    // DynamoDB Local serves its streams on its own endpoint.
    let endpoint = std::env::var("AWS_ENDPOINT_URL_DYNAMODB").map_err(|_| "AWS_ENDPOINT_URL_DYNAMODB names DynamoDB Local")?;
    let streams =
        aws_sdk_dynamodbstreams::Client::from_conf(aws_sdk_dynamodbstreams::config::Builder::from(&sdk).endpoint_url(&endpoint).build());
    let deliver: stream_source::Deliver = Arc::new(move |event| {
        let invoke = invoke.clone();
        Box::pin(async move { invoke(stream_source::BROADCAST, event).await.map(|_| ()) })
    });
    stream_source::follow(
        streams,
        endpoint,
        aws_sdk_dynamodb::Client::new(&sdk),
        table,
        deliver,
        arg(&args, "--dead-letters").map(Into::into),
    )
    .await?;
    Ok(())
}
