//! AWS SDK configuration: the default credential chain and region, and `AWS_ENDPOINT_URL` honoured
//! by the SDK itself, so the same code talks to the local emulator and to AWS.
//!
//! The SDK's HTTPS client is hyper 1 on rustls with ring: the one TLS stack and crypto provider
//! reqwest and redis use too, so a binary links one of each.

pub async fn sdk_config() -> aws_config::SdkConfig {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    let https = aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::Ring)).build_https();
    aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(https).load().await
}
