//! AWS SDK configuration from the environment Lambda gives every function: `AWS_REGION`, the
//! execution role's credentials in `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` /
//! `AWS_SESSION_TOKEN`, and the endpoint overrides `AWS_ENDPOINT_URL` and
//! `AWS_ENDPOINT_URL_<SERVICE>` that point the same code at the local emulators.
//!
//! Built by hand rather than by `aws-config`: its default chain (profiles, SSO, STS web identity,
//! the instance metadata client) is never reached in Lambda, where the environment's credentials
//! come first, yet it would be linked into every bootstrap. The operator's `ops` command, which
//! runs on laptops, keeps the full chain.
//!
//! The SDK's HTTPS client is `sdk_http`'s: HTTP/1.1 on hyper 1 and rustls with ring, the one TLS
//! stack and crypto provider reqwest and redis use too, so a binary links one of each.

use aws_credential_types::{provider::SharedCredentialsProvider, Credentials};
use aws_types::region::Region;
use aws_types::service_config::{LoadServiceConfig, ServiceConfigKey};
pub use aws_types::SdkConfig;

#[derive(Debug, thiserror::Error)]
#[error("{0} is not set: Lambda sets it for every function, and the local stack's env file sets it for development")]
pub struct MissingEnv(&'static str);

/// The SDK configuration every client of a function is built from, read once at init.
pub fn sdk_config() -> Result<SdkConfig, MissingEnv> {
    sdk_config_from(|name| std::env::var(name).ok().filter(|value| !value.is_empty()))
}

/// The HTTPS client the SDK's clients share, trusting the system's roots.
pub fn https_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    crate::sdk_http::Http1Client::with_native_roots().shared()
}

fn sdk_config_from(env: impl Fn(&str) -> Option<String> + Clone + Send + Sync + 'static) -> Result<SdkConfig, MissingEnv> {
    let required = |name: &'static str| env(name).ok_or(MissingEnv(name));
    let region = env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")).ok_or(MissingEnv("AWS_REGION"))?;
    let credentials =
        Credentials::new(required("AWS_ACCESS_KEY_ID")?, required("AWS_SECRET_ACCESS_KEY")?, env("AWS_SESSION_TOKEN"), None, "environment");
    let mut builder = SdkConfig::builder()
        .region(Region::new(region))
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        .behavior_version(aws_smithy_runtime_api::client::behavior_version::BehaviorVersion::latest())
        .http_client(https_client())
        .service_config(EnvEndpoints(std::sync::Arc::new(env.clone())));
    builder.set_endpoint_url(env("AWS_ENDPOINT_URL"));
    Ok(builder.build())
}

/// The `AWS_ENDPOINT_URL_<SERVICE>` overrides, read the way the SDK's own environment loader
/// reads them: the service id upper-cased with spaces as underscores (`DynamoDB Streams` →
/// `AWS_ENDPOINT_URL_DYNAMODB_STREAMS`), falling back to the key itself (`AWS_ENDPOINT_URL`).
struct EnvEndpoints(std::sync::Arc<EnvLookup>);

/// Reads one environment variable (the process's, or a test's map).
type EnvLookup = dyn Fn(&str) -> Option<String> + Send + Sync;

impl LoadServiceConfig for EnvEndpoints {
    fn load_config(&self, key: ServiceConfigKey<'_>) -> Option<String> {
        let service = key.service_id().to_ascii_uppercase().replace([' ', '-'], "_");
        (self.0)(&format!("{}_{service}", key.env())).or_else(|| (self.0)(key.env()))
    }
}

impl std::fmt::Debug for EnvEndpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EnvEndpoints")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + Clone + Send + Sync + 'static {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name: &str| map.get(name).cloned()
    }

    const LAMBDA: &[(&str, &str)] =
        &[("AWS_REGION", "eu-west-1"), ("AWS_ACCESS_KEY_ID", "AKID"), ("AWS_SECRET_ACCESS_KEY", "secret"), ("AWS_SESSION_TOKEN", "token")];

    fn endpoint(sdk: &SdkConfig, service_id: &str) -> Option<String> {
        let key = ServiceConfigKey::builder().service_id(service_id).env("AWS_ENDPOINT_URL").profile("endpoint_url").build().unwrap();
        sdk.service_config().unwrap().load_config(key)
    }

    #[test]
    fn a_service_specific_endpoint_wins_over_the_general_one() {
        let mut pairs = LAMBDA.to_vec();
        pairs.extend([("AWS_ENDPOINT_URL", "http://moto:5000"), ("AWS_ENDPOINT_URL_DYNAMODB_STREAMS", "http://ddb:8000")]);
        let sdk = sdk_config_from(env(&pairs)).unwrap();
        assert_eq!(endpoint(&sdk, "DynamoDB Streams").as_deref(), Some("http://ddb:8000"));
        assert_eq!(endpoint(&sdk, "DynamoDB").as_deref(), Some("http://moto:5000"));
        assert_eq!(endpoint(&sdk, "Secrets Manager").as_deref(), Some("http://moto:5000"));
        assert_eq!(sdk.endpoint_url(), Some("http://moto:5000"));
    }

    #[tokio::test]
    async fn the_roles_credentials_and_region_reach_every_client() {
        use aws_credential_types::provider::ProvideCredentials;
        let sdk = sdk_config_from(env(LAMBDA)).unwrap();
        let dynamo = aws_sdk_dynamodb::config::Config::from(&sdk);
        assert_eq!(dynamo.region().map(|r| r.as_ref()), Some("eu-west-1"));
        let credentials = sdk.credentials_provider().unwrap().provide_credentials().await.unwrap();
        assert_eq!((credentials.access_key_id(), credentials.session_token()), ("AKID", Some("token")));
        assert_eq!(endpoint(&sdk, "DynamoDB"), None, "without an override the SDK resolves the regional endpoint");
        assert_eq!(sdk.endpoint_url(), None);
    }

    #[test]
    fn missing_credentials_fail_init_naming_the_variable() {
        let err = sdk_config_from(env(&[("AWS_REGION", "eu-west-1"), ("AWS_ACCESS_KEY_ID", "AKID")])).unwrap_err();
        assert!(err.to_string().starts_with("AWS_SECRET_ACCESS_KEY is not set"), "{err}");
        let err = sdk_config_from(env(&[])).unwrap_err();
        assert!(err.to_string().starts_with("AWS_REGION is not set"), "{err}");
    }

    #[test]
    fn the_region_falls_back_to_aws_default_region() {
        let sdk =
            sdk_config_from(env(&[("AWS_DEFAULT_REGION", "ap-northeast-2"), ("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "b")]))
                .unwrap();
        assert_eq!(sdk.region().map(|r| r.as_ref()), Some("ap-northeast-2"));
    }
}
