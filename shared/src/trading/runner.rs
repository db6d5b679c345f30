//! The strategy runner: one scheduled run evaluates every running `ema_cross` and `grid` bot on
//! the candles closed by `now` (the schedule's time), and sends what they decide through the
//! same order use case as `POST /api/v1/order/submit` (risk rules, the kill switch, the bot's
//! state).
//!
//! It shares the guardian's sharding: bots are read from the same sparse index, in pages, one
//! shard per scheduled invocation. Candles are fetched once per (symbol, interval) per run and
//! marks once per run, so a run's calls follow the number of markets, not of bots; a bot costs a
//! read of its partition only when it has something to do.
//!
//! Every order's Idempotency-Key is the bot's run, the candle's close time (or the grid level's
//! generation) and the order's leg: a retried or doubled run computes the same keys, so it
//! replays the first run's answers and never sends twice. The strategy state is written after
//! the orders, with the bot's version: a run that dies in between is repeated from the same
//! decision, and a stop in between wins.

use crate::auth::session::Caller;
use crate::error::ApiError;
use crate::keys;
use crate::state::{Bitget, Table, Vault};
use crate::trading::candles::{self, Candle, Interval};
use crate::trading::ema_cross;
use crate::trading::grid::{self, Ended};
use crate::trading::model::{OrderStatus, PositionSide};
use crate::trading::orders::{self, Answer, NewOrder};
use crate::trading::service::{exchange_for, load_snapshot};
use crate::trading::store::{BotRecord, BotState, IndexRecord, StrategyState, UserSnapshot};
use crate::trading::strategy::{Strategy, StrategyOrder};
use futures::StreamExt;
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

/// Bots evaluated at once (each may read its partition and send orders). Paper bots cost only
/// table round trips; a live bot's calls count against its own account's Bitget limits, so
/// bots of different users never contend for one.
pub const CONCURRENCY: usize = 64;
/// Closed candles after the last one acted on that a run still acts on: a run that was missed
/// is caught up, a cross older than this is not traded late.
pub const CATCH_UP: usize = 3;
/// No bot is started, and no order submitted, this close to the Lambda deadline: longer than
/// one submit can take (waiting on a twin request alone can take 6 s).
pub const DEADLINE_MARGIN: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a grid level refused by a rule (margin, the position cap) waits before it tries
/// again, so a refusal for good does not cost the account's calls every minute.
pub const GRID_RETRY_AFTER_MS: i64 = 5 * 60_000;

#[derive(Debug, Default, Serialize)]
pub struct RunReport {
    pub bots_seen: u32,
    pub bots_evaluated: u32,
    pub orders_sent: u32,
    pub orders_refused: u32,
    pub candle_calls: u32,
    /// Bots left for the next run because this one neared its deadline (the next run catches
    /// up on up to `CATCH_UP` candles, with the same keys).
    pub bots_deferred: u32,
    pub errors: Vec<crate::guardian::SweepError>,
    pub duration_ms: u64,
}

/// The scheduled function's handler: `{"shard": n, "time": "<RFC 3339>"}` as EventBridge sends
/// it (no shard: every shard; no time: now).
pub async fn handle(
    state: &(impl Table + Vault + Bitget),
    event: lambda_runtime::LambdaEvent<serde_json::Value>,
) -> Result<serde_json::Value, lambda_runtime::Error> {
    let shards = crate::guardian::shards_of_event(&event.payload)?;
    let now_ms = match event.payload.get("time").and_then(serde_json::Value::as_str) {
        Some(t) => chrono::DateTime::parse_from_rfc3339(t).map_err(|e| format!("time is not RFC 3339: {e}"))?.timestamp_millis(),
        None => chrono::Utc::now().timestamp_millis(),
    };
    let left = std::time::Duration::from_millis(event.context.deadline.saturating_sub(chrono::Utc::now().timestamp_millis().max(0) as u64));
    // Without a deadline (a bare local invoke), a minute like the deployed function.
    let left = if left.is_zero() { std::time::Duration::from_secs(60) } else { left };
    Ok(serde_json::to_value(run_until(state, &shards, now_ms, Instant::now() + left).await)?)
}

/// One run over `shards` at `now_ms`, with all the time it needs.
pub async fn run(state: &(impl Table + Vault + Bitget), shards: &[u16], now_ms: i64) -> RunReport {
    run_until(state, shards, now_ms, Instant::now() + std::time::Duration::from_secs(24 * 3600)).await
}

/// One run over `shards` at `now_ms` that starts no bot within `DEADLINE_MARGIN` of
/// `deadline` (when the Lambda would be killed).
pub async fn run_until(state: &(impl Table + Vault + Bitget), shards: &[u16], now_ms: i64, deadline: Instant) -> RunReport {
    let started = Instant::now();
    let mut report = RunReport::default();
    let mut bots = Vec::new();
    for &shard in shards {
        for (partition, _) in keys::guardian_partitions(shard) {
            match automatic_bots(state, &partition).await {
                Ok(found) => bots.extend(found),
                Err(e) => {
                    tracing::error!(partition, error = %e.chain(), "the active-bots index is unreadable; its bots wait for the next run");
                    report.errors.push(crate::guardian::SweepError { user_id: String::new(), error: e.code().to_owned() });
                }
            }
        }
    }
    report.bots_seen = bots.len() as u32;
    let market = Market::load(state, &bots, now_ms, &mut report).await;
    let market = &market;
    let outcomes: Vec<(String, Result<Evaluated, ApiError>)> = futures::stream::iter(bots)
        .map(|bot| async move {
            let user_id = bot.user_id.clone();
            if deadline.saturating_duration_since(Instant::now()) < DEADLINE_MARGIN {
                return (user_id, Ok(Evaluated::Deferred));
            }
            (user_id, evaluate(state, bot, market, now_ms, deadline).await)
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    for (user_id, outcome) in outcomes {
        match outcome {
            Ok(Evaluated::Idle) => {}
            Ok(Evaluated::Deferred) => report.bots_deferred += 1,
            Ok(Evaluated::Acted { sent, refused }) => {
                report.bots_evaluated += 1;
                report.orders_sent += sent;
                report.orders_refused += refused;
            }
            Err(e) => {
                tracing::error!(user_id, code = e.code(), error = %e.chain(), "a strategy bot could not be run");
                report.errors.push(crate::guardian::SweepError { user_id, error: e.code().to_owned() });
            }
        }
    }
    report.duration_ms = started.elapsed().as_millis() as u64;
    tracing::info!(
        bots_seen = report.bots_seen,
        bots_evaluated = report.bots_evaluated,
        orders_sent = report.orders_sent,
        bots_deferred = report.bots_deferred,
        errors = report.errors.len(),
        duration_ms = report.duration_ms,
        "strategy run done"
    );
    report
}

/// The running bots of one index partition that a strategy trades.
async fn automatic_bots(state: &impl Table, partition: &str) -> Result<Vec<BotRecord>, ApiError> {
    let mut bots = Vec::new();
    let mut start = None;
    loop {
        let page = state.trading_store().active_index_page(partition, start, crate::guardian::PAGE_SIZE).await?;
        for entry in page.entries {
            if let Ok(IndexRecord::Bot(bot)) = entry.record {
                if bot.state == BotState::Running && matches!(bot.config.strategy, Strategy::EmaCross(_) | Strategy::Grid(_)) {
                    bots.push(*bot);
                }
            }
        }
        match page.next_start {
            Some(next) => start = Some(next),
            None => return Ok(bots),
        }
    }
}

/// The market data of one run: closed candles per (symbol, interval), marks per symbol.
struct Market {
    candles: HashMap<(String, Interval), Vec<Candle>>,
    marks: HashMap<String, Decimal>,
    /// The kill switch as the run began: grids arm nothing while it is on (their levels wait,
    /// instead of each recording a refusal every minute).
    halted: bool,
}

impl Market {
    async fn load(state: &(impl Table + Bitget), bots: &[BotRecord], now_ms: i64, report: &mut RunReport) -> Market {
        let mut windows: BTreeMap<(String, Interval), usize> = BTreeMap::new();
        let mut grid_symbols: Vec<String> = Vec::new();
        for bot in bots {
            match &bot.config.strategy {
                Strategy::EmaCross(e) if due(bot, e.interval, now_ms) => {
                    let window = windows.entry((bot.config.symbol.clone(), e.interval)).or_default();
                    *window = (*window).max(ema_cross::window(e) + CATCH_UP);
                }
                Strategy::Grid(_) => grid_symbols.push(bot.config.symbol.clone()),
                _ => {}
            }
        }
        grid_symbols.sort();
        grid_symbols.dedup();
        let fetches = windows.into_iter().map(|((symbol, interval), count)| async move {
            let fetched = candles::recent_closed(state.bitget(), &symbol, interval, now_ms, count as u32).await;
            ((symbol, interval), fetched)
        });
        let fetched: Vec<_> = futures::stream::iter(fetches).buffer_unordered(8).collect().await;
        report.candle_calls = fetched.len() as u32;
        let mut candles = HashMap::new();
        for (market, result) in fetched {
            match result {
                Ok(series) => {
                    candles.insert(market, series);
                }
                Err(e) => {
                    tracing::error!(symbol = market.0, interval = market.1.granularity(), error = %e, "candles unavailable; those bots wait for the next run")
                }
            }
        }
        let marks = match crate::trading::service::marks(state, &grid_symbols).await {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e.chain(), "marks unavailable; the grid bots wait for the next run");
                HashMap::new()
            }
        };
        let halted = match state.trading_store().kill_switch_on().await {
            Ok(on) => on,
            Err(e) => {
                tracing::error!(error = %crate::error::ApiError::from(e).chain(), "the kill switch is unreadable; grids wait");
                true
            }
        };
        Market { candles, marks, halted }
    }
}

/// Whether a candle of `interval` has closed since the bot last acted (and since it started).
fn due(bot: &BotRecord, interval: Interval, now_ms: i64) -> bool {
    let last_close = interval.last_close(now_ms);
    let started = bot.run.as_ref().map_or(i64::MIN, |r| r.started_ms);
    last_close >= started && bot.strategy_state.last_candle_ms.is_none_or(|acted| last_close > acted)
}

enum Evaluated {
    /// Nothing to decide or nothing decided.
    Idle,
    /// Not evaluated: the run neared its deadline.
    Deferred,
    Acted {
        sent: u32,
        refused: u32,
    },
}

async fn evaluate(
    state: &(impl Table + Vault + Bitget),
    bot: BotRecord,
    market: &Market,
    now_ms: i64,
    deadline: Instant,
) -> Result<Evaluated, ApiError> {
    match bot.config.strategy {
        Strategy::EmaCross(settings) => {
            if !due(&bot, settings.interval, now_ms) {
                return Ok(Evaluated::Idle);
            }
            let Some(series) = market.candles.get(&(bot.config.symbol.clone(), settings.interval)) else {
                return Err(ApiError::Unavailable { code: "market_data_unavailable", detail: "no candles this run".into(), cause: None });
            };
            // Only a bot with a cross to act on costs a read of its partition.
            if latest_cross(&bot, &settings, series).is_none() {
                return Ok(Evaluated::Idle);
            }
            let caller = Caller::acting_now(bot.user_id.clone());
            let snapshot = load_snapshot(state, &caller).await?;
            let Some(current) = still_running(&snapshot, &bot) else { return Ok(Evaluated::Idle) };
            // Decided again on the bot as its partition has it (the index's copy may lag).
            let Some((close_ms, target)) = latest_cross(&current, &settings, series) else { return Ok(Evaluated::Idle) };
            let wanted = ema_cross::orders_toward(&settings, target, held(&snapshot, &bot.config.symbol));
            let decision = format!("{close_ms}");
            let (sent, refused, settled) = submit_all(state, &caller, &current, &decision, wanted.iter(), deadline).await?;
            if settled {
                let next = StrategyState { last_candle_ms: Some(close_ms), ..current.strategy_state.clone() };
                save_state(state, &current, next).await?;
            }
            Ok(Evaluated::Acted { sent, refused })
        }
        Strategy::Grid(_) if market.halted => Ok(Evaluated::Idle),
        Strategy::Grid(settings) => {
            let Some(mark) = market.marks.get(&bot.config.symbol).copied() else {
                return Err(ApiError::Unavailable { code: "market_data_unavailable", detail: "no mark this run".into(), cause: None });
            };
            let caller = Caller::acting_now(bot.user_id.clone());
            let snapshot = load_snapshot(state, &caller).await?;
            let Some(current) = still_running(&snapshot, &bot) else { return Ok(Evaluated::Idle) };
            let specs = crate::trading::service::contract_book(state).await?;
            let tick = specs.get(&current.config.symbol).map(|s| s.price_tick).unwrap_or_default();
            let prices = grid::level_prices(&settings, tick);
            let before = current.strategy_state.grid.clone().unwrap_or_default();
            let ended = ended_levels(state, &bot.user_id, &snapshot, &current, &before).await?;
            let (mut after, wanted) = grid::plan(&settings, &prices, &before, mark, crate::trading::risk::MAX_PRICE_DEVIATION, &ended);
            // A level a rule refused lately waits (the backtest, with no account calls to spare,
            // tries on the next candle).
            let cooling = |level: &u32| after.refused_at.get(level).is_some_and(|at| now_ms - at < GRID_RETRY_AFTER_MS);
            let wanted: Vec<_> = wanted.into_iter().filter(|(level, _)| !cooling(level)).collect();
            let mut sent = 0;
            let mut refused = 0;
            for (level, order) in &wanted {
                let (s, r, settled) = submit_all(state, &caller, &current, "grid", std::iter::once(order), deadline).await?;
                sent += s;
                refused += r;
                match (settled, r) {
                    (true, 0) => grid::arm(&mut after, *level, order),
                    // Refused by a rule: the level tries again under a new key once it has waited.
                    (true, _) => grid::refused(&mut after, *level, now_ms),
                    (false, _) => {}
                }
            }
            if after == before && wanted.is_empty() {
                return Ok(Evaluated::Idle);
            }
            let next = StrategyState { grid: Some(after), ..current.strategy_state.clone() };
            if next != current.strategy_state {
                save_state(state, &current, next).await?;
            }
            Ok(Evaluated::Acted { sent, refused })
        }
        Strategy::Manual | Strategy::Signal => Ok(Evaluated::Idle),
    }
}

/// The newest cross among the candles closed since the bot last acted and since it started
/// (at most `CATCH_UP` of them), as (the candle's close time, the target).
fn latest_cross(bot: &BotRecord, settings: &crate::trading::strategy::EmaCross, series: &[Candle]) -> Option<(i64, ema_cross::Target)> {
    let interval = settings.interval;
    let started = bot.run.as_ref().map_or(i64::MIN, |r| r.started_ms);
    let acted = bot.strategy_state.last_candle_ms.unwrap_or(i64::MIN);
    let closes: Vec<Decimal> = series.iter().map(|c| c.close).collect();
    (0..series.len())
        .rev()
        .take(CATCH_UP)
        .filter(|&i| {
            let close = series[i].close_time_ms(interval);
            close >= started && close > acted
        })
        .find_map(|i| ema_cross::decide(settings, &closes[..=i]).map(|t| (series[i].close_time_ms(interval), t)))
}

/// The bot as its partition has it now, if it still runs the same run.
fn still_running(snapshot: &UserSnapshot, seen: &BotRecord) -> Option<BotRecord> {
    snapshot.bot.clone().filter(|b| b.state == BotState::Running && b.run == seen.run && b.config == seen.config)
}

/// The bot's position on its symbol (paper or the live mirror), if any.
fn held(snapshot: &UserSnapshot, symbol: &str) -> Option<(PositionSide, Decimal)> {
    let paper = snapshot.positions.iter().filter(|p| p.symbol == symbol).map(|p| (p.side, p.size));
    let live = snapshot.live_positions.iter().filter(|p| p.symbol == symbol).map(|p| (p.side, p.size));
    paper.chain(live).find(|(_, size)| !size.is_zero())
}

/// The Idempotency-Key of one strategy order: the bot's run, the decision and the order's leg.
pub fn order_key(bot: &BotRecord, decision: &str, leg: &str) -> String {
    let run = bot.run.as_ref().map_or("legacy", |r| r.id.as_str());
    format!("strategy:{run}:{decision}:{leg}")
}

/// Submits `wanted` in order; (sent now, refused, settled): settled when each order has its
/// answer (sent, or refused for good), so the decision is done. An order whose outcome is unknown stops
/// the rest: the next run repeats the decision with the same keys.
async fn submit_all<'a>(
    state: &(impl Table + Vault + Bitget),
    caller: &Caller,
    bot: &BotRecord,
    decision: &str,
    wanted: impl Iterator<Item = &'a StrategyOrder>,
    deadline: Instant,
) -> Result<(u32, u32, bool), ApiError> {
    let (mut sent, mut refused) = (0, 0);
    for order in wanted {
        // Too close to the deadline for one more submit (it may wait on a twin for seconds): the
        // decision stays unsettled and the next run repeats it with the same keys.
        if deadline.saturating_duration_since(Instant::now()) < DEADLINE_MARGIN {
            return Ok((sent, refused, false));
        }
        let key = order_key(bot, decision, &order.leg);
        let new = NewOrder {
            symbol: bot.config.symbol.clone(),
            side: order.side,
            order_type: order.order_type,
            size: order.size,
            price: order.price,
            reduce_only: order.reduce_only,
            client_order_id: None,
            for_run: bot.run.as_ref().map(|r| r.id.clone()),
            reason: "strategy",
        };
        match orders::submit_of_its_moment(state, caller, &key, new).await {
            // Sent now, or by an earlier run of this decision (its answer replayed).
            Ok(Answer { status: 201, replayed, .. }) => sent += u32::from(!replayed),
            Ok(_) => refused += 1,
            // A twin run is still sending it: its outcome is not known here.
            Err(e) if e.code() == "request_in_progress" => return Ok((sent, refused, false)),
            Err(e) if e.status().is_client_error() || e.code() == "trading_halted" => {
                tracing::info!(user_id = caller.user_id, key, code = e.code(), "a strategy order was refused");
                refused += 1;
            }
            Err(e) => {
                tracing::warn!(user_id = caller.user_id, key, error = %e.chain(), "a strategy order's outcome is unknown; the next run repeats it");
                return Ok((sent, refused, false));
            }
        }
    }
    Ok((sent, refused, true))
}

/// What became of each armed level's order: resting ones are left alone; the others are asked
/// for by client order id.
async fn ended_levels(
    state: &(impl Table + Vault + Bitget),
    user_id: &str,
    snapshot: &UserSnapshot,
    bot: &BotRecord,
    grid_state: &grid::GridState,
) -> Result<Vec<(u32, Ended)>, ApiError> {
    if grid_state.armed.is_empty() {
        return Ok(Vec::new());
    }
    let exchange = exchange_for(state, user_id, snapshot, std::slice::from_ref(&bot.config.symbol)).await?;
    let resting = exchange.open_orders(&bot.config.symbol).await.map_err(crate::trading::service::exchange_error)?;
    let mut ended = Vec::new();
    for (level, armed) in &grid_state.armed {
        let client_oid = crate::trading::model::client_order_id(&[user_id, "order", &order_key(bot, "grid", &armed.leg)]);
        if resting.iter().any(|o| o.client_order_id == client_oid) {
            continue;
        }
        let fill = exchange.find_order(&bot.config.symbol, &client_oid).await.map_err(crate::trading::service::exchange_error)?;
        match fill.map(|f| f.status) {
            Some(OrderStatus::Filled) => ended.push((*level, Ended::Filled)),
            Some(OrderStatus::Canceled | OrderStatus::Rejected) | None => ended.push((*level, Ended::Gone)),
            Some(OrderStatus::Open | OrderStatus::Pending) => {}
        }
    }
    Ok(ended)
}

async fn save_state(state: &impl Table, bot: &BotRecord, next: StrategyState) -> Result<(), ApiError> {
    let record =
        BotRecord { strategy_state: next, version: bot.version + 1, updated_at: crate::trading::store::now_rfc3339(), ..bot.clone() };
    // Lost to a stop or another run meanwhile: the next run decides on the bot as it is then
    // (the orders' keys make a repeat harmless).
    if !state.trading_store().put_bot(&record, Some(bot.version)).await? {
        tracing::info!(user_id = bot.user_id, "the bot changed while its strategy ran; its state waits for the next run");
    }
    Ok(())
}
