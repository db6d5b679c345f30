//! What a bot trades on: `manual` (the trader's own orders, the default) or `signal` (webhook
//! alerts, `trading/signals.rs`).

use crate::error::ApiError;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Strategy {
    #[default]
    Manual,
    Signal,
}

fn invalid(detail: &str) -> ApiError {
    ApiError::unprocessable("invalid_strategy", detail)
}

/// The `strategy` object of the bot settings; absent is `manual`. Unknown kinds, unknown fields and
/// the kinds not served yet answer 422 `invalid_strategy`.
pub fn parse(value: Option<serde_json::Value>) -> Result<Strategy, ApiError> {
    let Some(value) = value else { return Ok(Strategy::Manual) };
    // Neither kind served has settings: anything besides `kind` is a mistake (serde's
    // `deny_unknown_fields` does not reach the unit variants of a tagged enum).
    if value.as_object().is_some_and(|o| o.len() != 1) {
        return Err(invalid("the manual and signal strategies take no settings besides kind"));
    }
    match value.get("kind").and_then(serde_json::Value::as_str) {
        Some("ema_cross" | "grid") => Err(invalid("the ema_cross and grid strategies are not available yet; use manual or signal")),
        _ => serde_json::from_value(value).map_err(|_| invalid("strategy is {\"kind\": \"manual\"} or {\"kind\": \"signal\"}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_strategy_defaults_to_manual_and_refuses_what_it_does_not_know() {
        assert_eq!(parse(None).unwrap(), Strategy::Manual);
        assert_eq!(parse(Some(json!({"kind": "signal"}))).unwrap(), Strategy::Signal);
        for bad in [json!({"kind": "martingale"}), json!({"kind": "signal", "x": 1}), json!({}), json!("signal"), json!({"kind": "grid"})] {
            assert_eq!(parse(Some(bad.clone())).unwrap_err().code(), "invalid_strategy", "{bad}");
        }
    }
}
