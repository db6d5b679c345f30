//! The bot's lifecycle: start (configure the exchange, then `running`), status, and stop
//! (`stopping`, cancel resting orders, settle orders in flight (canceling those that turn out to
//! rest), flatten the bot's symbol, then `stopped`). The HTTP handlers and the guardian both call these; neither holds the logic.

use crate::auth::session::Caller;
use crate::error::ApiError;
use crate::state::{Bitget, Table, Vault};
use crate::trading::exchange::{Exchange, ExchangeError};
use crate::trading::model::{CancelOutcome, ExchangeKind, OrderFill, OrderStatus, Position};
use crate::trading::service::{close_position, exchange_at, exchange_error, exchange_for, ClosedPosition, Prefetched};
use crate::trading::store::{now_rfc3339, BotConfig, BotRecord, BotState, StartOutcome, TradingStore, UserSnapshot};
use serde::Serialize;

/// How long after it was recorded an order may still be sent: well past the order function's
/// Lambda timeout (10 s), after which no request can still be sending it.
pub const SEND_WINDOW_MS: i64 = 30_000;
/// Closing rounds one stop call runs before it leaves the rest to a retry or the guardian.
pub const ROUNDS_PER_CALL: usize = 4;

pub fn halted() -> ApiError {
    ApiError::Unavailable {
        code: "trading_halted",
        detail: "trading is halted by the operator; stop and reduce-only orders still work".into(),
        cause: None,
    }
}

fn concurrent_change() -> ApiError {
    ApiError::conflict("conflict", "the bot changed concurrently; try again")
}

/// A stop that could not flatten the bot's symbol; `cause`, for the log, says why.
fn close_failed(detail: impl Into<String>, cause: Option<crate::error::Cause>) -> ApiError {
    ApiError::BadGateway { code: "close_failed", detail: detail.into(), cause }
}

/// The bot as `GET /bot/status` and `POST /bot/start` show it.
#[derive(Debug, Serialize)]
pub struct BotStatus {
    pub is_running: bool,
    pub state: BotState,
    pub config: Option<BotConfig>,
    pub positions: Vec<Position>,
    pub updated_at: Option<String>,
    /// Why a stopped bot stopped by itself (a triggered stop of a strategy bot); absent when it
    /// was asked to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
}

async fn status_of(
    state: &(impl Table + Vault + Bitget),
    user_id: &str,
    snapshot: &UserSnapshot,
    bot: Option<&BotRecord>,
    marks: Prefetched,
) -> Result<BotStatus, ApiError> {
    let exchange = exchange_at(state, user_id, snapshot, &[], marks).await?;
    let positions = exchange.positions().await.map_err(exchange_error)?;
    let bot_state = bot.map(|b| b.state).unwrap_or(BotState::Stopped);
    Ok(BotStatus {
        is_running: bot_state == BotState::Running,
        state: bot_state,
        config: bot.map(|b| b.config.clone()),
        positions,
        updated_at: bot.map(|b| b.updated_at.clone()),
        stop_reason: bot.filter(|b| b.state != BotState::Running).and_then(|b| b.stop_reason.clone()),
    })
}

/// The bot's status and the account's positions, valued at `marks` (read with the snapshot).
pub async fn status(
    state: &(impl Table + Vault + Bitget),
    user_id: &str,
    snapshot: &UserSnapshot,
    marks: Prefetched,
) -> Result<BotStatus, ApiError> {
    status_of(state, user_id, snapshot, snapshot.bot.as_ref(), marks).await
}

/// Starts the bot with `config` (already normalized), or answers its status when it runs with
/// exactly these settings already.
pub async fn start(state: &(impl Table + Vault + Bitget), caller: &Caller, config: BotConfig) -> Result<BotStatus, ApiError> {
    let trading = state.trading_store();
    let (snapshot, halted_now) = tokio::join!(crate::trading::service::load_snapshot(state, caller), trading.kill_switch_on());
    let (snapshot, halted_now) = (snapshot?, halted_now?);
    let specs = crate::trading::service::contract_book(state).await?;
    crate::trading::risk::check_bot_config(&config, specs.get(&config.symbol))?;
    if let Some(spec) = specs.get(&config.symbol) {
        crate::trading::strategy::check_against(&config.strategy, spec)?;
    }
    if halted_now {
        return Err(halted());
    }
    let user_id = caller.user_id.as_str();
    let already_running = snapshot.bot.as_ref().is_some_and(|b| b.state == BotState::Running && b.config == config);
    let mut position_mode = None;
    if let (Some(record), false) = (&snapshot.credentials, already_running) {
        // The account's position mode now (the user may have switched it since saving the keys),
        // then the bot's leverage and margin mode on the exchange, before it may trade.
        let mut exchange = crate::trading::service::live_exchange(state, user_id, record, config.margin_mode).await?;
        exchange.position_mode = state.bitget().position_mode(&exchange.creds, &config.symbol).await.map_err(|e| match e {
            ExchangeError::Unavailable(_) | ExchangeError::CircuitOpen | ExchangeError::InvalidCredentials => exchange_error(e),
            other => ApiError::BadGateway {
                code: "exchange_unavailable",
                detail: "the exchange's position mode could not be read".into(),
                cause: Some(Box::new(other)),
            },
        })?;
        position_mode = Some(exchange.position_mode.clone());
        // A grid nets its buys and sells in one position; in hedge mode its sells would open
        // shorts beside its longs instead of taking their profit.
        if exchange.position_mode == "hedge_mode" && matches!(config.strategy, crate::trading::strategy::Strategy::Grid(_)) {
            return Err(ApiError::unprocessable(
                "invalid_strategy",
                "the grid strategy trades in one-way position mode; switch the account to one-way",
            ));
        }
        exchange.configure_symbol(&config.symbol, config.margin_mode, config.leverage).await.map_err(|e| match e {
            ExchangeError::Unavailable(_) | ExchangeError::CircuitOpen | ExchangeError::InvalidCredentials => exchange_error(e),
            other => ApiError::unprocessable("leverage_refused", format!("the exchange refused the leverage or margin mode: {other}")),
        })?;
    }
    let exchange_kind = if snapshot.credentials.is_some() { ExchangeKind::Bitget } else { ExchangeKind::Paper };
    let mut current = snapshot.bot.clone();
    for _ in 0..3 {
        let (next, expected) = match &current {
            Some(bot) if bot.state == BotState::Running && bot.config == config => {
                return status_of(state, user_id, &snapshot, Some(bot), Prefetched::none()).await;
            }
            Some(bot) if bot.state == BotState::Running => {
                return Err(ApiError::conflict("bot_already_running", "the bot is running with other settings; stop it first"))
            }
            Some(bot) if bot.state == BotState::Stopping => {
                return Err(ApiError::conflict("bot_stopping", "the bot is still closing its positions; try again shortly"))
            }
            Some(bot) => (bot.version + 1, Some(bot.version)),
            None => (1, None),
        };
        let record = BotRecord {
            user_id: user_id.to_owned(),
            state: BotState::Running,
            config: config.clone(),
            version: next,
            exchange: exchange_kind,
            updated_at: now_rfc3339(),
            stop_id: None,
            stop_round: 0,
            credentials_version: snapshot.credentials.as_ref().map(|c| c.version),
            position_mode: position_mode.clone(),
            run: Some(crate::trading::store::BotRun { id: format!("run-v{next}"), started_ms: chrono::Utc::now().timestamp_millis() }),
            strategy_state: Default::default(),
            stop_reason: None,
        };
        match trading.start_bot(&record, expected).await? {
            StartOutcome::Started => return status_of(state, user_id, &snapshot, Some(&record), Prefetched::none()).await,
            // Someone else changed the bot meanwhile (another device): decide again on what is there now.
            StartOutcome::BotChanged => current = trading.bot(user_id).await?,
            // Credentials were saved or deleted since they were read: the exchange was chosen on
            // stale facts, and its leverage may not be set.
            StartOutcome::CredentialsChanged => {
                return Err(ApiError::conflict("credentials_changed", "the exchange credentials changed while starting; start again"))
            }
            // Deleted while starting: the caller's token died with the account.
            StartOutcome::AccountGone => return Err(ApiError::invalid_token()),
        }
    }
    Err(concurrent_change())
}

/// What a stop did: the bot as it ended, the positions it closed and the orders it canceled.
pub struct Stopped {
    pub bot: BotRecord,
    pub closed: Vec<ClosedPosition>,
    pub canceled_orders: Vec<String>,
}

/// Where the bot stands after trying to claim something of a stop.
enum Claim {
    /// Our write went in.
    Written(BotRecord),
    /// Another stop moved the bot on meanwhile; this is where it is now.
    Adopted(BotRecord),
    /// Another stop (the guardian, another device) finished it meanwhile.
    AlreadyStopped(BotRecord),
}

/// Writes `next` over `bot` if nobody changed it since; otherwise adopts a stop in progress.
async fn claim(trading: &TradingStore<'_>, bot: &BotRecord, next: BotRecord) -> Result<Claim, ApiError> {
    if trading.put_bot(&next, Some(bot.version)).await? {
        return Ok(Claim::Written(next));
    }
    match trading.bot(&bot.user_id).await? {
        Some(latest) if latest.state == BotState::Stopped => Ok(Claim::AlreadyStopped(latest)),
        Some(latest) if latest.state == BotState::Stopping && next.state == BotState::Stopping => Ok(Claim::Adopted(latest)),
        _ => Err(concurrent_change()),
    }
}

/// The next closing round of this stop, counted in the bot record: a retried or resumed stop
/// continues the numbering, so its closing orders never share a client id with an earlier round
/// (whose stored fill would otherwise be replayed instead of a new order being sent).
async fn claim_round(trading: &TradingStore<'_>, bot: &mut BotRecord) -> Result<Option<u32>, ApiError> {
    for _ in 0..5 {
        let next = BotRecord { stop_round: bot.stop_round + 1, version: bot.version + 1, updated_at: now_rfc3339(), ..bot.clone() };
        match claim(trading, bot, next).await? {
            Claim::Written(claimed) => {
                let round = bot.stop_round;
                *bot = claimed;
                return Ok(Some(round));
            }
            // A concurrent stop took a round meanwhile: try for the one after it.
            Claim::Adopted(latest) => *bot = latest,
            Claim::AlreadyStopped(latest) => {
                *bot = latest;
                return Ok(None);
            }
        }
    }
    Err(concurrent_change())
}

/// Moves the bot to `stopping`, settles orders in flight, cancels every order resting on the
/// bot's symbol, closes its positions with reduce-only orders, re-reads until flat, then
/// `stopped`. Never reports stopped while a position is open or an order of its own may still
/// fill; a failure leaves the bot `stopping` for the guardian to finish.
pub async fn stop(state: &(impl Table + Vault + Bitget), user_id: &str, bot: BotRecord) -> Result<Stopped, ApiError> {
    stop_because(state, user_id, bot, None).await
}

/// Why an operator stopped a bot (`POST /api/v1/admin/users/{user_id}/bot/stop`): the bot's
/// `stop_reason`, and the reason of every position its stop closes.
pub const ADMIN_STOP: &str = "admin_stop";

/// What a stop answers: `POST /api/v1/bot/stop`, and an operator's stop of a user's bot.
#[derive(Debug, Serialize)]
pub struct StopAnswer {
    pub is_running: bool,
    pub state: BotState,
    pub closed_positions: Vec<ClosedPosition>,
    pub canceled_orders: Vec<String>,
}

/// Stops `bot` unless it is stopped (or there is none): either way it answers stopped.
pub async fn stop_answer(
    state: &(impl Table + Vault + Bitget),
    user_id: &str,
    bot: Option<BotRecord>,
    reason: Option<&str>,
) -> Result<StopAnswer, ApiError> {
    let (closed_positions, canceled_orders) = match bot {
        Some(bot) if bot.state != BotState::Stopped => {
            let stopped = stop_because(state, user_id, bot, reason).await?;
            (stopped.closed, stopped.canceled_orders)
        }
        _ => (Vec::new(), Vec::new()),
    };
    Ok(StopAnswer { is_running: false, state: BotState::Stopped, closed_positions, canceled_orders })
}

/// Where a stop stands once it has claimed the bot.
pub enum Begun {
    /// The bot is `stopping` (by this stop or one already under way).
    Stopping(BotRecord),
    /// Another stop finished it meanwhile.
    AlreadyStopped(BotRecord),
    /// A stop the guardian began for a triggered exit found another run of the bot (the user
    /// stopped and started it meanwhile): that run is not this exit's to stop.
    Superseded(BotRecord),
}

/// Moves a running bot to `stopping` (with `reason` when it was not asked to stop), so nothing
/// risk-increasing can be recorded for it any more. A strategy run may write the running bot's
/// state meanwhile: the stop goes on from the bot as it is then (a stop is never refused for a
/// strategy's bookkeeping).
pub async fn begin_stop(trading: &TradingStore<'_>, user_id: &str, bot: BotRecord, reason: Option<&str>) -> Result<Begun, ApiError> {
    let mut bot = bot;
    for _ in 0..5 {
        match bot.state {
            BotState::Stopping => return Ok(Begun::Stopping(bot)),
            BotState::Stopped => return Ok(Begun::AlreadyStopped(bot)),
            BotState::Running => {}
        }
        let stopping = BotRecord {
            state: BotState::Stopping,
            version: bot.version + 1,
            stop_id: Some(format!("stop-v{}", bot.version + 1)),
            stop_round: 0,
            updated_at: now_rfc3339(),
            stop_reason: reason.map(str::to_owned),
            ..bot.clone()
        };
        if trading.put_bot(&stopping, Some(bot.version)).await? {
            return Ok(Begun::Stopping(stopping));
        }
        match trading.bot(user_id).await? {
            // A triggered exit belongs to the run it triggered in; an operator's stop, to the bot.
            Some(latest) if reason.is_some_and(|r| r != ADMIN_STOP) && latest.run != bot.run => return Ok(Begun::Superseded(latest)),
            Some(latest) => bot = latest,
            None => return Err(concurrent_change()),
        }
    }
    Err(concurrent_change())
}

/// `stop`, saying why when the bot was not asked to (`reason` shows in its status).
pub async fn stop_because(
    state: &(impl Table + Vault + Bitget),
    user_id: &str,
    bot: BotRecord,
    reason: Option<&str>,
) -> Result<Stopped, ApiError> {
    let trading = state.trading_store();
    let mut closed = Vec::new();
    let mut canceled_orders = Vec::new();
    // A stop asked again while one is under way (the user's retry, the guardian finishing it).
    let repeat = bot.state == BotState::Stopping;
    let mut bot = match begin_stop(&trading, user_id, bot, reason).await? {
        Begun::Stopping(b) => b,
        Begun::AlreadyStopped(b) | Begun::Superseded(b) => return Ok(Stopped { bot: b, closed, canceled_orders }),
    };
    let stop_id = bot.stop_id.clone().unwrap_or_else(|| format!("stop-v{}", bot.version));
    // An operator's stop closes everything as theirs; a triggered exit's stop (the guardian's)
    // closes what is left of the bot as a bot stop, like the user's own.
    let close_reason = if reason == Some(ADMIN_STOP) { ADMIN_STOP } else { "bot_stop" };
    for _ in 0..ROUNDS_PER_CALL {
        let snapshot = trading.snapshot(user_id).await?;
        let exchange = exchange_for(state, user_id, &snapshot, &[]).await?;
        // Resting orders first: one that filled later would open a position behind a stopped bot,
        // and resting closes lock size the closing orders need.
        canceled_orders.extend(cancel_open_orders(&trading, exchange.as_ref(), user_id, &bot.config.symbol, |_| true).await?);
        match settle_pending_orders(&trading, exchange.as_ref(), user_id).await? {
            Pending::Settled => {}
            // One reached the book after the cancel above: cancel it too before going on.
            Pending::SomeRest => {
                canceled_orders.extend(cancel_open_orders(&trading, exchange.as_ref(), user_id, &bot.config.symbol, |_| true).await?)
            }
            Pending::MayStillBeSent => {
                let why = "an order of the bot may still be on its way to the exchange; the bot stays stopping and the guardian finishes the stop";
                return Err(match repeat {
                    true => ApiError::conflict("bot_stopping", why),
                    false => close_failed(why, None),
                });
            }
        }
        // The bot's symbol only: the user's other positions on the account are theirs to manage.
        let positions: Vec<Position> =
            exchange.positions().await.map_err(exchange_error)?.into_iter().filter(|p| p.symbol == bot.config.symbol).collect();
        if positions.is_empty() {
            if exchange.kind() != ExchangeKind::Paper {
                trading.sync_live_positions(user_id, &bot.config.symbol, &snapshot.live_positions, &[]).await?;
            }
            let stopped = BotRecord { state: BotState::Stopped, version: bot.version + 1, updated_at: now_rfc3339(), ..bot.clone() };
            return match claim(&trading, &bot, stopped).await? {
                Claim::Written(b) | Claim::Adopted(b) | Claim::AlreadyStopped(b) => Ok(Stopped { bot: b, closed, canceled_orders }),
            };
        }
        let Some(round) = claim_round(&trading, &mut bot).await? else {
            return Ok(Stopped { bot, closed, canceled_orders });
        };
        for position in &positions {
            // Each round's closing orders are new ones; a position that reappeared is another
            // instance with ids of its own.
            let key = format!("{stop_id}-{}-r{round}", position.instance);
            match close_position(state, exchange.as_ref(), user_id, position, bot.config.leverage, &key, close_reason).await {
                Ok(c) => closed.extend(c),
                Err(e) => {
                    return Err(close_failed(
                        format!("closing the {} position failed; the bot stays stopping and the guardian retries", position.symbol),
                        Some(Box::new(e)),
                    ));
                }
            }
        }
    }
    Err(close_failed("positions are still open after closing; the bot stays stopping and the guardian retries", None))
}

/// Closes a position the guardian found past one of the bot's exits (`reason`: `stop_loss`,
/// `take_profit`, `trailing_stop`), or the trader closes (`manual_close`). Resting closes that lock part of it (a take-profit limit of
/// the trader's) are canceled first, so the whole position is closed. The client order id is the
/// position's instance and the trigger: overlapping runs and retries compute the same one, so the
/// close happens once, and the next position (another instance) gets its own. `None`: the
/// position was gone by the time its locks were released.
pub async fn close_triggered(
    state: &impl Table,
    exchange: &dyn Exchange,
    user_id: &str,
    leverage: u32,
    position: &Position,
    reason: &str,
) -> Result<Option<ClosedPosition>, ApiError> {
    let mut position = position.clone();
    if position.available < position.size {
        cancel_open_orders(&state.trading_store(), exchange, user_id, &position.symbol, |o| o.reduce_only).await?;
        let same = |p: &Position| p.symbol == position.symbol && p.side == position.side && p.instance == position.instance;
        match exchange.positions().await.map_err(exchange_error)?.into_iter().find(same) {
            Some(now) => position = now,
            None => return Ok(None),
        }
    }
    let key = format!("{reason}-{}", position.instance);
    close_position(state, exchange, user_id, &position, leverage, &key, reason).await
}

/// Cancels the orders resting on `symbol` that `which` selects; the exchange's ids of those it
/// canceled. An order that filled meanwhile is no longer resting: its position is closed with the
/// others.
pub async fn cancel_open_orders(
    trading: &TradingStore<'_>,
    exchange: &dyn Exchange,
    user_id: &str,
    symbol: &str,
    which: impl Fn(&crate::trading::model::OpenOrder) -> bool,
) -> Result<Vec<String>, ApiError> {
    let unavailable = |e: ExchangeError| {
        close_failed(
            format!("canceling the resting {symbol} orders failed; the bot stays stopping and the guardian retries"),
            Some(Box::new(e)),
        )
    };
    let mut canceled = Vec::new();
    for order in exchange.open_orders(symbol).await.map_err(unavailable)?.into_iter().filter(|o| which(o)) {
        if exchange.cancel_order(symbol, &order.client_order_id).await.map_err(unavailable)? == CancelOutcome::Canceled {
            if exchange.kind() != ExchangeKind::Paper {
                let fill = OrderFill { status: OrderStatus::Canceled, order_id: order.order_id.clone(), ..OrderFill::rejected() };
                // Canceled at the exchange whatever the store says; a record that could not be
                // updated is corrected by the next read of the order.
                if let Err(e) = trading.complete_order(user_id, &order.client_order_id, &fill).await {
                    tracing::warn!(error = %ApiError::from(e).chain(), "a canceled order's record was not updated");
                }
            }
            canceled.push(order.order_id);
        }
    }
    Ok(canceled)
}

/// Orders recorded but not confirmed (a submit racing this stop, a lost answer): ask the
/// exchange what became of them before judging the positions.
async fn settle_pending_orders(trading: &TradingStore<'_>, exchange: &dyn Exchange, user_id: &str) -> Result<Pending, ApiError> {
    if exchange.kind() == ExchangeKind::Paper {
        return Ok(Pending::Settled);
    }
    let mut outcome = Pending::Settled;
    for order in trading.pending_orders(user_id).await? {
        match exchange.find_order(&order.intent.symbol, &order.intent.client_order_id).await.map_err(exchange_error)? {
            // At the exchange in a state we cannot read: not settled.
            Some(fill) if fill.status == OrderStatus::Pending => return Ok(Pending::MayStillBeSent),
            Some(fill) => {
                trading.complete_order(user_id, &order.intent.client_order_id, &fill).await?;
                if fill.status == OrderStatus::Open {
                    outcome = Pending::SomeRest;
                }
            }
            // Recorded, not at the exchange, and its request may still be sending it: the bot
            // cannot be called stopped yet (the guardian finishes the stop once it is settled).
            None if order.may_be_in_flight() => return Ok(Pending::MayStillBeSent),
            // Older than any request that could still send it: it was never placed, unless a
            // resumed request took it since it was read (then it may be on its way).
            None => {
                if !trading.reject_unsent_order(user_id, &order).await? {
                    return Ok(Pending::MayStillBeSent);
                }
            }
        }
    }
    Ok(outcome)
}

/// What became of the orders recorded but not confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Settled,
    /// All settled, and some of them rest on the book (they reached it after the cancel).
    SomeRest,
    /// One is not at the exchange yet and a request may still be sending it.
    MayStillBeSent,
}
