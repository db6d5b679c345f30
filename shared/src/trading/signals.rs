//! Trading on webhook alerts (TradingView-style). Each user has one signal token (256 random
//! bits in a URL; only its SHA-256 is stored), rotated by asking for a new one. An alert becomes an
//! order through the same use case as `POST /api/v1/order/submit` (risk rules, the kill switch,
//! the bot's state), keyed by the alert's id, so an alert fired twice sends one order.

use crate::auth::session::Caller;
use crate::error::ApiError;
use crate::secrets::Secret;
use crate::state::{Bitget, Cache, Table, Vault};
use crate::trading::model::{OrderType, PositionSide, Side};
use crate::trading::orders::{self, Answer, NewOrder};
use crate::trading::service::load_snapshot;
use crate::trading::store::{BotState, SignalRotation};
use crate::trading::strategy::Strategy;
use rust_decimal::Decimal;
use sha2::Digest;

/// Alerts one token may send a minute.
pub const SIGNALS_PER_MINUTE: u32 = 30;

fn token_hash(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// A new signal token for the caller; the one before it is refused from now on.
pub async fn rotate_token(state: &impl Table, caller: &Caller) -> Result<Secret<String>, ApiError> {
    load_snapshot(state, caller).await?;
    for _ in 0..3 {
        let token = crate::crypto::random_token();
        match state.trading_store().rotate_signal_token(&caller.user_id, &token_hash(&token)).await? {
            SignalRotation::Rotated => return Ok(Secret::new(token)),
            // Two rotations raced: the other one's token stands unless this one tries again.
            SignalRotation::Changed => continue,
            SignalRotation::AccountGone => return Err(ApiError::invalid_token()),
        }
    }
    Err(ApiError::conflict("conflict", "the signal token changed concurrently; try again"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Buy,
    Sell,
    Close,
}

/// An alert whose fields parsed.
#[derive(Debug, Clone)]
pub struct Alert {
    pub id: String,
    pub action: Action,
    pub size: Option<Decimal>,
    pub order_type: OrderType,
    pub price: Option<Decimal>,
}

fn not_found() -> ApiError {
    ApiError::NoSuch { code: "signal_not_found", detail: "no signal URL has this token" }
}

/// Turns `alert`, sent to the URL of `token`, into an order of its owner's bot.
pub async fn receive(state: &(impl Table + Cache + Vault + Bitget), token: &str, alert: Alert) -> Result<Answer, ApiError> {
    if !crate::crypto::is_random_token(token) {
        return Err(not_found());
    }
    if alert.id.is_empty() || alert.id.chars().count() > 128 {
        return Err(ApiError::invalid_request("id is the alert's id, 1–128 characters"));
    }
    let hash = token_hash(token);
    // Per token, before anything is read: a leaked URL cannot flood the bot or the table.
    let limits = crate::auth::limits::Limits { ip_per_minute: SIGNALS_PER_MINUTE };
    limits.check_ip(state.redis(), "signal", &hash[..32]).await?;
    let user_id = state.trading_store().signal_owner(&hash).await?.ok_or_else(not_found)?;
    // The token is the credential: its owner acts now.
    let caller = Caller::acting_now(user_id);
    let key = format!("signal:{}", &hex::encode(sha2::Sha256::digest(alert.id.as_bytes()))[..40]);
    if let Some(answer) = orders::stored_answer(state, &caller.user_id, &key).await? {
        return Ok(answer);
    }
    let snapshot = load_snapshot(state, &caller).await?;
    let bot = snapshot.bot.as_ref().filter(|b| b.state == BotState::Running);
    let Some(bot) = bot else {
        return Err(ApiError::conflict("bot_not_running", "start the bot before sending it signals"));
    };
    if bot.config.strategy != Strategy::Signal {
        return Err(ApiError::conflict("strategy_mismatch", "the bot was started with another strategy than signal"));
    }
    let symbol = bot.config.symbol.clone();
    let order = match alert.action {
        Action::Buy | Action::Sell => NewOrder {
            symbol,
            side: if alert.action == Action::Buy { Side::Buy } else { Side::Sell },
            order_type: alert.order_type,
            size: alert.size.ok_or_else(|| ApiError::unprocessable("invalid_size", "buy and sell signals need a size"))?,
            price: alert.price,
            reduce_only: false,
            client_order_id: None,
            for_run: None,
            reason: "signal",
        },
        Action::Close => {
            let paper = snapshot.positions.iter().filter(|p| p.symbol == symbol).map(|p| (p.side, p.size));
            let live = snapshot.live_positions.iter().filter(|p| p.symbol == symbol).map(|p| (p.side, p.size));
            let Some((side, size)) = paper.chain(live).find(|(_, size)| !size.is_zero()) else {
                return Err(ApiError::conflict("no_position", "the bot holds no position to close"));
            };
            NewOrder {
                symbol,
                side: if side == PositionSide::Long { Side::Sell } else { Side::Buy },
                order_type: OrderType::Market,
                size,
                price: None,
                reduce_only: true,
                client_order_id: None,
                for_run: None,
                reason: "signal",
            }
        }
    };
    // An alert is of its moment: refused under the kill switch, it stays refused.
    orders::submit_of_its_moment(state, &caller, &key, order).await
}
