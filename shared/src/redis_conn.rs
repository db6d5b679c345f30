//! One Redis connection manager per execution environment. It connects lazily and reconnects by
//! itself, so a Redis restart heals without a cold start. `rediss://` uses rustls; a private CA
//! (ElastiCache's is public, a test's is not) comes from `REDIS_CA_FILE`.

use crate::config::Config;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;

pub fn connection_manager(config: &Config) -> redis::RedisResult<ConnectionManager> {
    let client = match &config.redis_ca_file {
        Some(path) => {
            let root_cert = std::fs::read(path)
                .map_err(|e| redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "REDIS_CA_FILE unreadable", e.to_string())))?;
            redis::Client::build_with_tls(
                config.redis_url.expose().as_str(),
                redis::TlsCertificates { client_tls: None, root_cert: Some(root_cert) },
            )?
        }
        None => redis::Client::open(config.redis_url.expose().as_str())?,
    };
    // Short timeouts: a request should fail fast with 503 rather than hang to the Lambda timeout.
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.redis_timeout))
        .set_response_timeout(Some(config.redis_timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(200));
    ConnectionManager::new_lazy_with_config(client, manager_config)
}
