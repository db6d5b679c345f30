//! The operator's kill switch (`GET`/`PUT /api/v1/admin/kill-switch`): the same switch as `make
//! kill-switch`. On, it halts bot starts and every risk-increasing order; stops, closes and
//! cancels go on.

use crate::error::ApiError;
use crate::trading::store::{KillSwitch, TradingStore};

pub const MAX_REASON_CHARS: usize = 500;

pub async fn get(trading: &TradingStore<'_>) -> Result<KillSwitch, ApiError> {
    Ok(trading.kill_switch().await?)
}

/// Sets the switch, saying who and why: a reason is 1 to 500 characters, no control characters.
pub async fn set(trading: &TradingStore<'_>, enabled: bool, reason: &str, changed_by: &str) -> Result<KillSwitch, ApiError> {
    let reason = reason.trim();
    if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS || reason.chars().any(char::is_control) {
        return Err(ApiError::unprocessable("invalid_reason", "reason says why, in 1 to 500 characters without control characters"));
    }
    Ok(trading.set_kill_switch(enabled, reason, changed_by).await?)
}
