//! Deleting an account: refused while its bot may trade or holds a position; then its personal
//! data goes, its sign-in and every token of it die at once, and its address may register again.
//! The order history stays, tied to nobody (a random id with no profile), until its TTL.

use crate::auth::store::{AccountRemoval, UserStore};
use crate::error::ApiError;
use crate::trading::store::{BotState, UserSnapshot};

/// How long a deleted account's order history is kept (tax and dispute questions), unless it
/// had an earlier end.
pub const ORDER_HISTORY_KEPT_SECS: i64 = 90 * 24 * 3600;

fn bot_running() -> ApiError {
    ApiError::conflict("bot_running", "stop the bot and close its positions before deleting the account")
}

/// A stopped bot (or none) and nothing open: no position, no resting order.
fn ensure_stopped_and_flat(snapshot: &UserSnapshot) -> Result<(), ApiError> {
    let bot_active = snapshot.bot.as_ref().is_some_and(|b| b.state != BotState::Stopped);
    let open = snapshot.positions.iter().any(|p| !p.size.is_zero())
        || snapshot.live_positions.iter().any(|p| !p.size.is_zero())
        || !snapshot.resting.is_empty();
    if bot_active || open {
        return Err(bot_running());
    }
    Ok(())
}

/// Deletes the account of `user_id` (its login record stored under `email_form`), read as
/// `snapshot`. The caller has checked the password (and the second factor, when on).
pub async fn delete_account(users: &UserStore<'_>, snapshot: &UserSnapshot, email_form: &str, user_id: &str) -> Result<(), ApiError> {
    ensure_stopped_and_flat(snapshot)?;
    // The account goes first, in one conditional transaction: from then on nothing can be
    // written for it (a sign-in, a refresh, a bot start and saved credentials each check in their
    // own transaction that the profile exists), so what is erased next stays erased.
    match users.remove_account(email_form, user_id).await? {
        AccountRemoval::Removed => {}
        AccountRemoval::BotActive => return Err(bot_running()),
        AccountRemoval::Changed => return Err(ApiError::invalid_token()),
    }
    // The request cannot be retried once the profile is gone (its token is dead): try harder.
    let mut attempt = 0;
    while let Err(e) = users.erase_personal_data(user_id).await {
        attempt += 1;
        if attempt == 3 {
            tracing::error!(error = %e, user_id, "a deleted account's personal data was left behind");
            break;
        }
        tokio::time::sleep(crate::dynamo::backoff(attempt)).await;
    }
    let end = chrono::Utc::now().timestamp() + ORDER_HISTORY_KEPT_SECS;
    if let Err(e) = users.expire_order_history(user_id, end).await {
        // The account is gone and nothing links the orders to anyone; they only lack an end.
        tracing::error!(error = %e, user_id, "a deleted account's order history got no end");
    }
    Ok(())
}
