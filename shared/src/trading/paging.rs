//! What the trader's list routes share: their query parameters, `limit` (1 to 100, default 50),
//! and the opaque `cursor`.
//!
//! A cursor is where the last page ended, sealed with AES-256-GCM under the service's encryption
//! key. Its associated data names the route, the caller and the filters, so a cursor altered,
//! forged, or carried to another user or other filters answers 400 `invalid_cursor`.

use crate::crypto::EncryptionKeys;
use crate::error::ApiError;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;

pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 100;
/// Longer than any cursor this service writes.
const MAX_CURSOR_LEN: usize = 1024;

/// The query parameters of a request, each named at most once and only among `allowed`.
pub fn query_parameters(query: Option<&str>, allowed: &[&str]) -> Result<HashMap<String, String>, ApiError> {
    let mut parameters = HashMap::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (name, value) = (decode(name)?, decode(value)?);
        if !allowed.contains(&name.as_str()) {
            return Err(ApiError::invalid_request(format!("unknown query parameter {name:?}; this route takes {}", allowed.join(", "))));
        }
        if parameters.insert(name.clone(), value).is_some() {
            return Err(ApiError::invalid_request(format!("the query parameter {name} is given twice")));
        }
    }
    Ok(parameters)
}

/// A query component as a form encodes it (`%XX`, `+` for a space).
fn decode(text: &str) -> Result<String, ApiError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok());
                out.push(byte.ok_or_else(|| ApiError::invalid_request("a malformed percent-escape in the query"))?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| ApiError::invalid_request("the query is not UTF-8"))
}

/// `limit`: 1 to 100, 50 when absent.
pub fn limit(parameters: &HashMap<String, String>) -> Result<usize, ApiError> {
    match parameters.get("limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(raw) => raw.parse::<usize>().ok().filter(|n| (1..=MAX_LIMIT).contains(n)).ok_or_else(|| ApiError::BadRequest {
            code: "invalid_limit",
            detail: format!("limit must be a whole number from 1 to {MAX_LIMIT}"),
        }),
    }
}

/// A symbol as contracts name them (`BTCUSDT`); anything else can name no market.
pub fn symbol(parameters: &HashMap<String, String>) -> Result<Option<String>, ApiError> {
    match parameters.get("symbol").map(|s| s.trim().to_ascii_uppercase()) {
        None => Ok(None),
        Some(s) if !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_alphanumeric()) => Ok(Some(s)),
        Some(_) => Err(ApiError::BadRequest { code: "invalid_symbol", detail: "symbol names a contract, e.g. BTCUSDT".into() }),
    }
}

pub fn invalid_cursor() -> ApiError {
    ApiError::BadRequest { code: "invalid_cursor", detail: "the cursor is not one this route gave for these filters".into() }
}

/// Seals where a page ended, for the route, caller and filters of `scope`.
pub fn seal<T: Serialize>(keys: &EncryptionKeys, scope: &str, position: &T) -> Result<String, ApiError> {
    let plain = serde_json::to_vec(position).map_err(|e| ApiError::internal("encoding a cursor", e))?;
    Ok(URL_SAFE_NO_PAD.encode(keys.encrypt(&plain, scope.as_bytes())))
}

/// Opens a cursor sealed for `scope`; 400 `invalid_cursor` for anything else.
pub fn open<T: DeserializeOwned>(keys: &EncryptionKeys, scope: &str, cursor: &str) -> Result<T, ApiError> {
    if cursor.is_empty() || cursor.len() > MAX_CURSOR_LEN {
        return Err(invalid_cursor());
    }
    let envelope = URL_SAFE_NO_PAD.decode(cursor).ok().and_then(|b| String::from_utf8(b).ok()).ok_or_else(invalid_cursor)?;
    let plain = keys.decrypt(&envelope, scope.as_bytes()).map_err(|_| invalid_cursor())?;
    serde_json::from_slice(&plain).map_err(|_| invalid_cursor())
}

/// A time bound of a query (`from`, `to`): RFC 3339, as unix ms. A `+` of the offset that was
/// sent unescaped arrives as a space, and is read as the `+` it was.
pub fn time(parameters: &HashMap<String, String>, name: &str) -> Result<Option<i64>, ApiError> {
    let Some(raw) = parameters.get(name) else { return Ok(None) };
    let parsed = chrono::DateTime::parse_from_rfc3339(raw).or_else(|_| chrono::DateTime::parse_from_rfc3339(&raw.replace(' ', "+")));
    match parsed {
        // Before 1970 nothing happened here: such a bound is the start of time.
        Ok(t) => Ok(Some(t.timestamp_millis().clamp(0, 9_999_999_999_999))),
        Err(_) => Err(ApiError::BadRequest {
            code: "invalid_time",
            detail: format!("{name} must be an RFC 3339 time, e.g. 2026-12-01T00:00:00Z"),
        }),
    }
}

/// Unix ms as RFC 3339 UTC with milliseconds, as every time of the API reads.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_components_are_decoded_as_a_form_encodes_them() {
        let p = query_parameters(Some("symbol=btc%55SDT&from=2026-12-01T00:00:00+01:00"), &["symbol", "from"]).unwrap();
        assert_eq!(p["symbol"], "btcUSDT");
        assert_eq!(time(&p, "from").unwrap(), Some(1_796_079_600_000));
        assert_eq!(query_parameters(Some("limit=1&limit=2"), &["limit"]).unwrap_err().code(), "invalid_request");
        assert_eq!(query_parameters(Some("limt=1"), &["limit"]).unwrap_err().code(), "invalid_request");
        assert_eq!(query_parameters(Some("limit=%zz"), &["limit"]).unwrap_err().code(), "invalid_request");
    }

    #[test]
    fn a_limit_runs_from_one_to_a_hundred_and_defaults_to_fifty() {
        let with = |v: &str| limit(&HashMap::from([("limit".to_owned(), v.to_owned())]));
        assert_eq!(limit(&HashMap::new()).unwrap(), 50);
        assert_eq!(with("1").unwrap(), 1);
        assert_eq!(with("100").unwrap(), 100);
        for bad in ["0", "101", "-1", "1.5", "", "ten"] {
            assert_eq!(with(bad).unwrap_err().code(), "invalid_limit", "{bad}");
        }
    }
}
