//! AWS SDK configuration: the default credential chain and region, and `AWS_ENDPOINT_URL` honoured
//! by the SDK itself, so the same code talks to the local emulator and to AWS.

pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await
}
