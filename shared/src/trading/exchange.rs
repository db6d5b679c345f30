//! One trait for every exchange the bot can trade on: the simulated paper account and Bitget.

use crate::trading::model::{AccountView, OrderFill, OrderIntent, Position};
use async_trait::async_trait;

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The exchange refused the order for a reason the caller can act on.
    #[error("exchange rejected the request ({code}): {message}")]
    Rejected { code: String, message: String },
    #[error("the exchange refused the credentials")]
    InvalidCredentials,
    #[error("insufficient balance on the exchange")]
    InsufficientBalance,
    #[error("the exchange account's position mode does not match the order")]
    PositionModeMismatch,
    /// Timeouts, 5xx, 429 after every retry: the outcome is unknown or the exchange is down.
    #[error("exchange unavailable: {0}")]
    Unavailable(String),
    #[error("circuit open: the exchange failed repeatedly, not calling it for a while")]
    CircuitOpen,
    #[error("no mark price for {0}")]
    NoMarkPrice(String),
    /// A paper fill's guard failed: the bot is no longer running.
    #[error("the bot is not running")]
    BotNotRunning,
    /// The paper account's table failed.
    #[error("paper account store")]
    Store(#[from] crate::dynamo::StoreError),
}

/// Conditions an exchange must hold atomically with a fill where it can (the paper exchange
/// checks them inside its DynamoDB transaction; a real exchange cannot, and the caller checks
/// them before sending).
#[derive(Debug, Clone, Copy, Default)]
pub struct OrderGuard {
    pub require_running_bot: bool,
}

/// The Idempotency-Key an order is sent under, and how its answer's body (status 201) is made
/// from the fill: an exchange that writes its orders in the table writes the answer with them.
#[derive(Clone, Copy)]
pub struct KeyAnswer<'a> {
    pub key: &'a str,
    pub body: fn(&OrderIntent, &crate::trading::model::OrderFill) -> String,
}

#[async_trait]
pub trait Exchange: Send + Sync {
    fn kind(&self) -> crate::trading::model::ExchangeKind;
    /// The mark this exchange already holds for `symbol`, if any (saves a market-data call).
    fn known_mark(&self, _symbol: &str) -> Option<rust_decimal::Decimal> {
        None
    }
    /// Applies the bot's margin mode and leverage to `symbol` (a no-op where the exchange keeps
    /// no such setting, as the paper account).
    async fn configure_symbol(&self, _symbol: &str, _mode: crate::trading::model::MarginMode, _leverage: u32) -> Result<(), ExchangeError> {
        Ok(())
    }
    async fn account(&self) -> Result<AccountView, ExchangeError>;
    async fn positions(&self) -> Result<Vec<Position>, ExchangeError>;
    /// Sends an order that was recorded first. Never resends blind: an unknown outcome is looked
    /// up by client order id before any retry.
    async fn place_order(&self, intent: &OrderIntent, guard: OrderGuard) -> Result<OrderFill, ExchangeError>;
    /// `place_order`, writing `answer` as the key's answer in the same write as the fill where
    /// the exchange can (the paper account's transaction); `true` when it did, so the caller's
    /// own write of the answer is not needed. A real exchange cannot: `false`.
    async fn place_answering(
        &self,
        intent: &OrderIntent,
        guard: OrderGuard,
        _answer: KeyAnswer<'_>,
    ) -> Result<(OrderFill, bool), ExchangeError> {
        self.place_order(intent, guard).await.map(|fill| (fill, false))
    }
    async fn find_order(&self, symbol: &str, client_order_id: &str) -> Result<Option<OrderFill>, ExchangeError>;
    /// Every order of `symbol` still resting on the exchange, all pages.
    async fn open_orders(&self, symbol: &str) -> Result<Vec<crate::trading::model::OpenOrder>, ExchangeError>;
    async fn cancel_order(&self, symbol: &str, client_order_id: &str) -> Result<crate::trading::model::CancelOutcome, ExchangeError>;
}
