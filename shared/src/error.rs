//! One error type for every handler. `status()` and `code()` are the contract clients are written
//! against. A 5xx keeps its cause (`source()`), which `http::serve` logs once, with the whole
//! chain, at the edge; causes never reach the response body.

use http::StatusCode;

/// What went wrong underneath, kept for the log line at the edge.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A cause with what was being done when it happened.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {message}")]
pub struct Context {
    pub context: String,
    pub message: String,
}

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
    /// The route exists; the thing it names does not (or is not the caller's).
    #[error("{detail}")]
    NoSuch { code: &'static str, detail: &'static str },
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
    /// The exchange failed us; `cause` (for the log at the edge) says how.
    #[error("{detail}")]
    BadGateway {
        code: &'static str,
        detail: String,
        #[source]
        cause: Option<Cause>,
    },
    #[error("{detail}")]
    Unavailable {
        code: &'static str,
        detail: String,
        #[source]
        cause: Option<Cause>,
    },
    /// A dependency (the database, Redis) is away: worth retrying shortly.
    #[error("{what} is unavailable, try again shortly")]
    Dependency {
        what: &'static str,
        #[source]
        cause: Cause,
    },
    /// Anything we did not expect. The client sees only that something went wrong and the request
    /// id to quote; the cause goes to the log at the edge.
    #[error("internal error")]
    Internal(#[source] Option<Cause>),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::NotFound | ApiError::NoSuch { .. } => StatusCode::NOT_FOUND,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::BadGateway { .. } => StatusCode::BAD_GATEWAY,
            ApiError::Unavailable { .. } | ApiError::Dependency { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. }
            | ApiError::Unauthorized { code, .. }
            | ApiError::Forbidden { code, .. }
            | ApiError::NoSuch { code, .. }
            | ApiError::Conflict { code, .. }
            | ApiError::Unprocessable { code, .. }
            | ApiError::TooManyRequests { code, .. }
            | ApiError::BadGateway { code, .. }
            | ApiError::Unavailable { code, .. } => code,
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::NotFound => "not_found",
            ApiError::Dependency { .. } => "dependency_unavailable",
            ApiError::Internal(_) => "internal_error",
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
        ApiError::Unavailable { code: "dependency_unavailable", detail: format!("{what} is unavailable, try again shortly"), cause: None }
    }
    pub fn too_many_requests(retry_after_secs: u64) -> Self {
        ApiError::TooManyRequests { code: "too_many_requests", detail: "too many requests, slow down", retry_after_secs }
    }

    /// An unexpected cause, with context, as the opaque 500 (logged at the edge).
    pub fn internal(context: &str, cause: impl std::fmt::Display) -> Self {
        ApiError::Internal(Some(Box::new(Context { context: context.to_owned(), message: cause.to_string() })))
    }

    /// A bug with no cause to show (an invariant that did not hold).
    pub fn bug(what: &str) -> Self {
        ApiError::internal("invariant broken", what)
    }

    /// The error and every cause under it, outermost first: what the edge logs.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut next = std::error::Error::source(self);
        while let Some(cause) = next {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            next = cause.source();
        }
        text
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
            ApiError::Dependency { what: "redis", cause: Box::new(e) }
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

    #[test]
    fn a_store_outage_is_a_503_that_keeps_its_cause_for_the_log_at_the_edge() {
        let outage = crate::dynamo::StoreError::Unavailable("ProvisionedThroughputExceededException: slow down".into());
        let err = ApiError::from(outage);
        assert_eq!((err.status().as_u16(), err.code()), (503, "dependency_unavailable"));
        assert!(
            err.chain().ends_with("the database is unavailable, try again shortly: ProvisionedThroughputExceededException: slow down"),
            "{}",
            err.chain()
        );
        // The client sees none of it.
        assert!(!crate::http::problem_body(&err).to_string().contains("Provisioned"));
        let bug = ApiError::from(crate::dynamo::StoreError::Missing("the order record"));
        assert_eq!(bug.code(), "internal_error");
        assert!(bug.chain().ends_with("missing: the order record"), "{}", bug.chain());
        assert!(!crate::http::problem_body(&bug).to_string().contains("order record"));
    }
}
