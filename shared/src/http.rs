//! Request parsing and response building shared by every HTTP function: size and content-type
//! limits, strict JSON, RFC 9457 problem bodies, security headers, CORS and request ids.

use crate::error::ApiError;
use crate::state::Deps;
use futures::FutureExt;
use http::{header, HeaderValue, StatusCode};
use lambda_http::{Body, Request, RequestExt, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use tracing::Instrument;

pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// What every handler may need to know about the request besides its body.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: String,
    pub source_ip: String,
}

impl RequestContext {
    pub fn from_request(req: &Request) -> Self {
        let request_id = req.lambda_context_ref().map(|c| c.request_id.clone()).filter(|id| !id.is_empty());
        let source_ip = match req.request_context_ref() {
            Some(lambda_http::request::RequestContext::ApiGatewayV2(ctx)) => ctx.http.source_ip.clone(),
            Some(lambda_http::request::RequestContext::ApiGatewayV1(ctx)) => ctx.identity.source_ip.clone(),
            _ => None,
        };
        RequestContext {
            request_id: request_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            source_ip: source_ip.filter(|ip| !ip.is_empty()).unwrap_or_else(|| "unknown".to_owned()),
        }
    }
}

/// Parses a JSON body: at most 16 KiB, `application/json` only, unknown fields rejected by the
/// target type's `deny_unknown_fields`.
pub fn parse_json<T: DeserializeOwned>(req: &Request) -> Result<T, ApiError> {
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if mime != "application/json" && !(mime.starts_with("application/") && mime.ends_with("+json")) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let bytes: &[u8] = match req.body() {
        Body::Empty => b"",
        Body::Text(t) => t.as_bytes(),
        Body::Binary(b) => b,
        _ => b"",
    };
    if bytes.len() > MAX_BODY_BYTES {
        return Err(ApiError::PayloadTooLarge { limit: MAX_BODY_BYTES });
    }
    if bytes.is_empty() {
        return Err(ApiError::BadRequest { code: "invalid_json", detail: "the request body is empty".into() });
    }
    serde_json::from_slice(bytes).map_err(|e| {
        let detail = match e.classify() {
            serde_json::error::Category::Data => format!("invalid request body: {e}"),
            _ => "the request body is not valid JSON".to_owned(),
        };
        let code = if e.classify() == serde_json::error::Category::Data { "invalid_request" } else { "invalid_json" };
        ApiError::BadRequest { code, detail }
    })
}

pub fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Result<Response<Body>, ApiError> {
    let body = serde_json::to_string(value).map_err(|e| ApiError::internal("serializing response", e))?;
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::Text(body))
        .map_err(|e| ApiError::internal("building response", e))
}

/// A JSON answer that carries a secret (tokens, a TOTP secret, recovery codes, a signal URL):
/// no cache may keep it (`Cache-Control: no-store` is on every answer; this adds HTTP/1.0's
/// `Pragma`).
pub fn secret_json_response<T: Serialize>(status: StatusCode, value: &T) -> Result<Response<Body>, ApiError> {
    let mut response = json_response(status, value)?;
    response.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    Ok(response)
}

pub fn empty_response(status: StatusCode) -> Result<Response<Body>, ApiError> {
    Response::builder().status(status).body(Body::Empty).map_err(|e| ApiError::internal("building response", e))
}

/// The RFC 9457 members of an error; `problem_response` adds the request id.
pub fn problem_body(err: &ApiError) -> serde_json::Value {
    let status = err.status();
    let detail = match err {
        ApiError::Internal(_) => "an unexpected error occurred; quote the request id if you report it".to_owned(),
        other => other.to_string(),
    };
    serde_json::json!({
        "type": format!("urn:trading-bot:problem:{}", err.code()),
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
        "code": err.code(),
    })
}

pub fn problem_response(err: &ApiError, request_id: &str) -> Response<Body> {
    let status = err.status();
    let mut body = problem_body(err);
    body["request_id"] = request_id.into();
    let mut response = Response::new(Body::Text(body.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    if let Some(secs) = err.retry_after() {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if status == StatusCode::UNAUTHORIZED && err.code() == "invalid_token" {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer error=\"invalid_token\""));
    }
    response
}

fn apply_common_headers(response: &mut Response<Body>, request_id: &str, origin: Option<&str>, state: &impl Deps) {
    let headers = response.headers_mut();
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=63072000; includeSubDomains"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // API answers carry tokens, balances and positions: none of it belongs in a shared cache.
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert("x-request-id", v);
    }
    if let Some(origin) = origin {
        if state.config().cors_allowed_origins.iter().any(|o| o == origin) {
            if let Ok(v) = HeaderValue::from_str(origin) {
                headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
                headers.insert(header::VARY, HeaderValue::from_static("Origin"));
            }
        }
    }
}

/// Runs one handler: a span with the request id around it, errors turned into problem+json, and
/// the common headers on every answer. Always `Ok`, so the Lambda runtime never sees an expected
/// failure as an invocation error. A panic (a bug) is answered 500 where panics unwind (tests,
/// `cargo lambda watch`); the deployed binaries abort instead, logging it in this request's span
/// (`telemetry::init`'s hook), and API Gateway answers 502.
pub async fn serve<'a, S, F, Fut>(state: &'a S, req: Request, handler: F) -> Result<Response<Body>, lambda_http::Error>
where
    S: Deps,
    F: FnOnce(&'a S, Request, RequestContext) -> Fut,
    Fut: Future<Output = Result<Response<Body>, ApiError>> + 'a,
{
    let ctx = RequestContext::from_request(&req);
    let origin = req.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let span = tracing::info_span!("request", request_id = %ctx.request_id, method = %req.method(), path = %req.uri().path());
    let request_id = ctx.request_id.clone();
    let outcome = AssertUnwindSafe(handler(state, req, ctx)).catch_unwind().instrument(span.clone()).await;
    let mut response = match outcome {
        Ok(Ok(response)) => response,
        Ok(Err(err)) => {
            // The one place an error is logged: a 5xx with its whole cause chain.
            span.in_scope(|| match err.status().is_server_error() {
                true => tracing::error!(status = err.status().as_u16(), code = err.code(), error = %err.chain(), "request failed"),
                false => tracing::info!(status = err.status().as_u16(), code = err.code(), "request refused"),
            });
            problem_response(&err, &request_id)
        }
        Err(_) => {
            span.in_scope(|| tracing::error!("handler panicked"));
            problem_response(&ApiError::Internal(None), &request_id)
        }
    };
    apply_common_headers(&mut response, &request_id, origin.as_deref(), state);
    Ok(response)
}

/// The bearer token of the `Authorization` header, if it has the right shape.
pub fn bearer_token(req: &Request) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

pub fn header_str<'r>(req: &'r Request, name: &str) -> Option<&'r str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// A path parameter of the route (`{name}` in the template), as API Gateway passes it; `cargo
/// lambda watch` and tests without it get the last segment of the path.
pub fn path_parameter(req: &Request, name: &str) -> Option<String> {
    if let Some(value) = req.path_parameters_ref().and_then(|p| p.first(name)) {
        return Some(value.to_owned());
    }
    req.uri().path().rsplit('/').next().filter(|s| !s.is_empty()).map(str::to_owned)
}

/// A path parameter in the middle of the route (`/positions/{symbol}/close`): as API Gateway
/// passes it, else the segment after `preceding` (`cargo lambda watch`, tests).
pub fn inner_path_parameter(req: &Request, name: &str, preceding: &str) -> String {
    if let Some(value) = req.path_parameters_ref().and_then(|p| p.first(name)) {
        return value.to_owned();
    }
    req.uri().path().split('/').skip_while(|s| *s != preceding).nth(1).unwrap_or_default().to_owned()
}
