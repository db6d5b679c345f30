//! Closing one position by hand (`POST /api/v1/positions/{symbol}/close`): a reduce-only market
//! order for the whole position, reason `manual_close`. Closing only ever lowers risk, so it is
//! allowed whatever the bot's state and under the kill switch. The client order id is the
//! position's instance: a repeated request finds the first close instead of sending another, and
//! a later position of the symbol (another instance) is closed by an order of its own.

use crate::auth::session::Caller;
use crate::error::ApiError;
use crate::state::{Bitget, Table, Vault};
use crate::trading::service::{exchange_error, exchange_for, load_snapshot, ClosedPosition};

fn not_found() -> ApiError {
    ApiError::NoSuch { code: "position_not_found", detail: "no position is open on this symbol" }
}

pub async fn close(state: &(impl Table + Vault + Bitget), caller: &Caller, symbol: &str) -> Result<Vec<ClosedPosition>, ApiError> {
    let symbol = symbol.trim().to_uppercase();
    if symbol.is_empty() || symbol.len() > 30 || !symbol.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(not_found());
    }
    let snapshot = load_snapshot(state, caller).await?;
    let exchange = exchange_for(state, &caller.user_id, &snapshot, std::slice::from_ref(&symbol)).await?;
    let positions: Vec<_> = exchange.positions().await.map_err(exchange_error)?.into_iter().filter(|p| p.symbol == symbol).collect();
    if positions.is_empty() {
        return Err(not_found());
    }
    // The leverage only shapes opening orders; a close carries the bot's for the record.
    let leverage = snapshot.bot.as_ref().map_or(1, |b| b.config.leverage);
    let mut closed = Vec::new();
    for position in &positions {
        let done =
            crate::trading::bot::close_triggered(state, exchange.as_ref(), &caller.user_id, leverage, position, "manual_close").await?;
        closed.extend(done);
    }
    if closed.is_empty() {
        return Err(not_found());
    }
    // The store's mirror of a live account follows, so the guardian's reconciliation flags only
    // changes made outside this service.
    if exchange.kind() != crate::trading::model::ExchangeKind::Paper {
        match exchange.positions().await {
            Ok(actual) => {
                let actual: Vec<_> = actual.into_iter().filter(|p| p.symbol == symbol).collect();
                if let Err(e) = state.trading_store().sync_live_positions(&caller.user_id, &symbol, &snapshot.live_positions, &actual).await
                {
                    tracing::warn!(error = %ApiError::from(e).chain(), "positions not mirrored after a manual close; the guardian will reconcile");
                }
            }
            Err(e) => tracing::warn!(error = %e, "positions not re-read after a manual close; the guardian will reconcile"),
        }
    }
    Ok(closed)
}
