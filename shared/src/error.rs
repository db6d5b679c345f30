//! One error type for every handler. `status()` and `code()` are the contract clients are written
//! against; internal causes are logged with context and never reach the response body.

use http::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{detail}")]
    BadRequest { code: &'static str, detail: String },
    #[error("request body larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    #[error("no such route")]
    NotFound,
    #[error("{detail}")]
    Unauthorized { code: &'static str, detail: &'static str },
    #[error("{detail}")]
    Forbidden { code: &'static str, detail: &'static str },
    #[error("{detail}")]
    Conflict { code: &'static str, detail: String },
    #[error("{detail}")]
    Unprocessable { code: &'static str, detail: String },
    #[error("{detail}")]
    TooManyRequests { code: &'static str, detail: &'static str, retry_after_secs: u64 },
    #[error("{detail}")]
    BadGateway { code: &'static str, detail: String },
    #[error("{detail}")]
    Unavailable { code: &'static str, detail: String },
    /// Anything we did not expect. The cause is logged where it is raised; the client sees only
    /// that something went wrong and the request id to quote.
    #[error("internal error")]
    Internal,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::BadGateway { .. } => StatusCode::BAD_GATEWAY,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. }
            | ApiError::Unauthorized { code, .. }
            | ApiError::Forbidden { code, .. }
            | ApiError::Conflict { code, .. }
            | ApiError::Unprocessable { code, .. }
            | ApiError::TooManyRequests { code, .. }
            | ApiError::BadGateway { code, .. }
            | ApiError::Unavailable { code, .. } => code,
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::NotFound => "not_found",
            ApiError::Internal => "internal_error",
        }
    }

    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::TooManyRequests { retry_after_secs, .. } => Some((*retry_after_secs).max(1)),
            _ => None,
        }
    }

    // Constructors for the errors several handlers share, so their codes stay identical.
    pub fn invalid_request(detail: impl Into<String>) -> Self {
        ApiError::BadRequest { code: "invalid_request", detail: detail.into() }
    }
    pub fn invalid_token() -> Self {
        ApiError::Unauthorized { code: "invalid_token", detail: "the access token is missing, malformed, expired or revoked" }
    }
    pub fn unprocessable(code: &'static str, detail: impl Into<String>) -> Self {
        ApiError::Unprocessable { code, detail: detail.into() }
    }
    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        ApiError::Conflict { code, detail: detail.into() }
    }
    pub fn dependency_unavailable(what: &str) -> Self {
        ApiError::Unavailable { code: "dependency_unavailable", detail: format!("{what} is unavailable, try again shortly") }
    }
    pub fn too_many_requests(retry_after_secs: u64) -> Self {
        ApiError::TooManyRequests { code: "too_many_requests", detail: "too many requests, slow down", retry_after_secs }
    }

    /// Logs an unexpected cause with context and turns it into the opaque 500.
    pub fn internal(context: &str, cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "{context}");
        ApiError::Internal
    }
}

impl From<redis::RedisError> for ApiError {
    /// Redis being away (I/O, timeouts, a cluster that is down, a server still loading) is a 503
    /// worth retrying. Anything else the server refuses (`CROSSSLOT`, `MOVED`, a script error, an
    /// unexpected reply) is a bug here, not an outage: a 500 whose cause is logged.
    fn from(e: redis::RedisError) -> Self {
        use redis::{ErrorKind, ServerErrorKind};
        // MOVED/ASK would mean the endpoint is not the routing proxy this client expects (it is
        // not cluster-aware): a retry cannot fix that, so it is a bug too.
        let unavailable = e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || matches!(
                e.kind(),
                ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                ) | ErrorKind::AuthenticationFailed
            );
        if unavailable {
            tracing::error!(error = %e, dependency = "redis", "redis unavailable");
            ApiError::dependency_unavailable("redis")
        } else {
            ApiError::internal("redis refused the command", e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ApiError;
    use redis::{ErrorKind, RedisError, ServerErrorKind};

    #[test]
    fn a_cross_slot_refusal_is_a_bug_not_an_outage() {
        let e = RedisError::from((ErrorKind::Server(ServerErrorKind::CrossSlot), "Keys in request don't hash to the same slot"));
        assert_eq!(ApiError::from(e).code(), "internal_error");
    }

    #[test]
    fn redis_being_away_is_a_retryable_503() {
        let io = RedisError::from(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"));
        assert_eq!(ApiError::from(io).code(), "dependency_unavailable");
        let down = RedisError::from((ErrorKind::Server(ServerErrorKind::ClusterDown), "The cluster is down"));
        assert_eq!(ApiError::from(down).code(), "dependency_unavailable");
        let moved = RedisError::from((ErrorKind::Server(ServerErrorKind::Moved), "MOVED 3999 127.0.0.1:6381"));
        assert_eq!(ApiError::from(moved).code(), "internal_error", "a redirect this client cannot follow is a setup bug");
    }
}
