//! Exchange credentials: checked with one signed read, stored encrypted, and changed only
//! behind a stopped bot (the condition is part of the write, not a read before it).

use crate::auth::session::Caller;
use crate::error::ApiError;
use crate::state::{Bitget, Table, Vault};
use crate::trading::bitget::BitgetCredentials;
use crate::trading::exchange::ExchangeError;
use crate::trading::model::ExchangeKind;
use crate::trading::service::{exchange_error, load_snapshot};
use crate::trading::store::{now_rfc3339, CredentialsRecord, CredentialsWrite};

fn bot_running_conflict() -> ApiError {
    ApiError::conflict("bot_running", "stop the bot before changing exchange credentials")
}

/// With two-factor on, the exchange keys change only from a session signed in with it (403
/// `mfa_required`): a stolen password, or a session from before two-factor, cannot swap them.
fn second_factor_if_on(caller: &Caller, snapshot: &crate::trading::store::UserSnapshot) -> Result<(), ApiError> {
    snapshot.profile.as_ref().map_or(Ok(()), |profile| caller.require_second_factor(profile))
}

/// Checks `creds` against Bitget (and learns the account's position mode), then stores them
/// encrypted under the next version.
pub async fn save(state: &(impl Table + Vault + Bitget), caller: &Caller, creds: BitgetCredentials) -> Result<(), ApiError> {
    let snapshot = load_snapshot(state, caller).await?;
    second_factor_if_on(caller, &snapshot)?;
    if snapshot.bot.as_ref().is_some_and(|b| b.state != crate::trading::store::BotState::Stopped) {
        return Err(bot_running_conflict());
    }
    // One signed read proves the keys work and tells the position mode.
    let probe_symbol = snapshot.bot.as_ref().map(|b| b.config.symbol.as_str()).unwrap_or("BTCUSDT");
    let position_mode = state.bitget().position_mode(&creds, probe_symbol).await.map_err(|e| match e {
        ExchangeError::Unavailable(_) | ExchangeError::CircuitOpen => exchange_error(e),
        _ => ApiError::unprocessable("invalid_exchange_credentials", "the exchange refused these credentials"),
    })?;
    let keys = state.encryption_keys().get().await.map_err(|e| ApiError::internal("loading encryption keys", e))?;
    let record = CredentialsRecord {
        exchange: ExchangeKind::Bitget,
        demo: creds.demo,
        ciphertext: keys.encrypt(&creds.to_plaintext(), caller.user_id.as_bytes()),
        position_mode,
        updated_at: now_rfc3339(),
        version: next_version(snapshot.credentials.as_ref().map(|c| c.version)),
    };
    let read = snapshot.credentials.as_ref().map(|c| c.version);
    match state.trading_store().save_credentials(&caller.user_id, &record, read).await? {
        CredentialsWrite::Written => Ok(()),
        CredentialsWrite::BotActive => Err(bot_running_conflict()),
        CredentialsWrite::Changed => Err(ApiError::conflict("conflict", "the credentials changed concurrently; try again")),
        // Deleted while the keys were being checked: nothing is stored for a deleted account.
        CredentialsWrite::AccountGone => Err(ApiError::invalid_token()),
    }
}

/// A version no earlier credentials of this user had, deleted ones included: the clock in
/// milliseconds, and past the last one read. A bot started on the old keys can then never pass
/// for one started on the new.
fn next_version(read: Option<u64>) -> u64 {
    let now = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
    now.max(read.unwrap_or(0) + 1)
}

pub async fn delete(state: &impl Table, caller: &Caller) -> Result<(), ApiError> {
    let snapshot = load_snapshot(state, caller).await?;
    second_factor_if_on(caller, &snapshot)?;
    match state.trading_store().delete_credentials(&caller.user_id).await? {
        CredentialsWrite::Written | CredentialsWrite::Changed | CredentialsWrite::AccountGone => Ok(()),
        CredentialsWrite::BotActive => Err(bot_running_conflict()),
    }
}
