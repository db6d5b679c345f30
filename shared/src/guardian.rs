//! The guardian: one scheduled run sweeps every running bot's positions for stop-loss,
//! take-profit and trailing stops, finishes stops left half done, reconciles live accounts with
//! the exchange, and raises health alerts on state changes.
//!
//! Cost follows the number of active bots, not of users: bots and their paper positions are read
//! together from the sparse `ActiveBots` index in pages (one query per page), marks are fetched
//! once per distinct symbol per run, and an order is sent only for a triggered position.

use crate::alerts::{self, Transition};
use crate::config::MarketData;
use crate::dynamo::Item;
use crate::error::ApiError;
use crate::keys;
use crate::probes;
use crate::state::{Bitget, Cache, Mail, Table, Telegram, Vault};
use crate::trading::bot::close_triggered;
use crate::trading::contracts::MAINTENANCE_MARGIN_RATE;
use crate::trading::model::{Position, PositionSide};
use crate::trading::paper::{liquidated_at, position_view};
use crate::trading::service::{exchange_for, marks, paper_exchange};
use crate::trading::store::{BotConfig, BotRecord, BotState, IndexRecord, LivePosition, PaperPosition, RestingOrder};
use futures::StreamExt;
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Index items per page.
pub const PAGE_SIZE: i32 = 500;
/// Users checked at once: bounded so the exchange's per-account limits (place-order 10/s,
/// positions 5/s) and the table's capacity are respected.
pub const CONCURRENCY: usize = 16;
/// Stop starting new pages this long before the Lambda deadline.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClosedReport {
    pub user_id: String,
    pub symbol: String,
    pub reason: String,
    pub size: Decimal,
    pub exit_price: Option<Decimal>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SweepError {
    pub user_id: String,
    pub error: String,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct SweepReport {
    pub bots_checked: u32,
    pub positions_checked: u32,
    /// Resting paper limit orders the mark crossed, filled this run.
    pub resting_filled: u32,
    pub closed: Vec<ClosedReport>,
    pub alerts_sent: u32,
    pub errors: Vec<SweepError>,
    pub duration_ms: u64,
}

/// Backend calls by kind, for the scale benchmark and the run's log line.
#[derive(Debug, Default)]
pub struct SweepStats {
    pub index_queries: AtomicU32,
    pub partition_queries: AtomicU32,
    pub price_calls: AtomicU32,
    pub symbols_priced: AtomicU32,
    pub orders: AtomicU32,
    pub exchange_position_calls: AtomicU32,
}

impl SweepStats {
    pub fn snapshot(&self) -> serde_json::Value {
        let g = |a: &AtomicU32| a.load(Ordering::Relaxed);
        serde_json::json!({
            "index_queries": g(&self.index_queries),
            "partition_queries": g(&self.partition_queries),
            "price_calls": g(&self.price_calls),
            "symbols_priced": g(&self.symbols_priced),
            "orders": g(&self.orders),
            "exchange_position_calls": g(&self.exchange_position_calls),
        })
    }
}

/// Which exit a position has reached, if any. Percentages are of the entry price (2 = 2 %); the
/// trailing stop arms once the best mark is beyond the entry and fires on a pullback from it.
pub fn trigger(config: &BotConfig, side: PositionSide, entry: Decimal, mark: Decimal, high_water: Option<Decimal>) -> Option<&'static str> {
    if entry <= Decimal::ZERO || mark <= Decimal::ZERO {
        return None;
    }
    let hundred = Decimal::ONE_HUNDRED;
    let gain_pct = (mark - entry) / entry * hundred * side.direction();
    if -gain_pct >= config.stop_loss_pct {
        return Some("stop_loss");
    }
    if config.take_profit_pct.is_some_and(|tp| gain_pct >= tp) {
        return Some("take_profit");
    }
    if let Some(trail) = config.trailing_stop_pct {
        let best = best_mark(side, high_water.unwrap_or(entry), mark);
        let beyond_entry = (best - entry) * side.direction() > Decimal::ZERO;
        let pullback_pct = (best - mark) / best * hundred * side.direction();
        if beyond_entry && pullback_pct >= trail {
            return Some("trailing_stop");
        }
    }
    None
}

/// The better of two marks for a position: higher for a long, lower for a short.
pub fn best_mark(side: PositionSide, a: Decimal, b: Decimal) -> Decimal {
    match side {
        PositionSide::Long => a.max(b),
        PositionSide::Short => a.min(b),
    }
}

#[derive(Default)]
struct UserGroup {
    bot: Option<BotRecord>,
    paper: Vec<PaperPosition>,
    resting: Vec<RestingOrder>,
    live: Vec<LivePosition>,
    last_key: Option<Item>,
}

async fn load_cursor(state: &impl Table, cursor_key: &keys::Key) -> Result<Option<Item>, ApiError> {
    Ok(state.trading_store().guardian_cursor(cursor_key).await?)
}

async fn save_cursor(state: &impl Table, cursor_key: &keys::Key, cursor: Option<Item>) -> Result<(), ApiError> {
    Ok(state.trading_store().save_guardian_cursor(cursor_key, cursor).await?)
}

struct Outcome {
    positions: u32,
    /// Resting paper orders filled.
    filled: u32,
    closed: Vec<ClosedReport>,
    error: Option<String>,
    alerts: u32,
}

/// What one run learnt about its dependencies, for the health checks at its end.
#[derive(Clone, Copy)]
struct RunHealth {
    index_ok: bool,
    prices_ok: bool,
    live_seen: bool,
}

/// Which guardian shards an invocation sweeps: the scheduled invocations carry `{"shard": n}`
/// (one schedule per shard); an event without one (a bare local invoke, `make sweep`) sweeps
/// every shard in turn.
pub fn shards_of_event(payload: &serde_json::Value) -> Result<Vec<u16>, String> {
    match payload.get("shard") {
        None | Some(serde_json::Value::Null) => Ok((0..keys::GUARDIAN_SHARDS).collect()),
        Some(v) => match v.as_u64() {
            Some(n) if n < u64::from(keys::GUARDIAN_SHARDS) => Ok(vec![n as u16]),
            _ => Err(format!("shard must be an integer below {}, got {v}", keys::GUARDIAN_SHARDS)),
        },
    }
}

/// The scheduled function's handler: one run within the invocation's deadline.
pub async fn handle(
    state: &(impl Table + Cache + Vault + Mail + Bitget + Telegram),
    event: lambda_runtime::LambdaEvent<serde_json::Value>,
) -> Result<serde_json::Value, lambda_runtime::Error> {
    let shards = shards_of_event(&event.payload)?;
    let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
    let remaining = Duration::from_millis(event.context.deadline.saturating_sub(now_ms));
    // Without a deadline (a bare local invoke), allow a minute like the deployed function.
    let remaining = if remaining.is_zero() { Duration::from_secs(60) } else { remaining };
    let stats = SweepStats::default();
    let report = sweep_shards(state, &shards, Instant::now() + remaining, &stats, PAGE_SIZE).await;
    Ok(serde_json::to_value(report)?)
}

/// One run over every shard. `deadline` is when the Lambda would be killed.
pub async fn sweep(state: &(impl Table + Cache + Vault + Mail + Bitget + Telegram), deadline: Instant, stats: &SweepStats) -> SweepReport {
    let all: Vec<u16> = (0..keys::GUARDIAN_SHARDS).collect();
    sweep_shards(state, &all, deadline, stats, PAGE_SIZE).await
}

/// One run over `shards`, in pages of `page_size` index items, then the health checks.
pub async fn sweep_shards(
    state: &(impl Table + Cache + Vault + Mail + Bitget + Telegram),
    shards: &[u16],
    deadline: Instant,
    stats: &SweepStats,
    page_size: i32,
) -> SweepReport {
    let started = Instant::now();
    let mut report = SweepReport::default();
    let mut marks_cache: HashMap<String, Decimal> = HashMap::new();
    let mut health = RunHealth { index_ok: true, prices_ok: true, live_seen: false };
    for &shard in shards {
        for (partition, cursor_key) in keys::guardian_partitions(shard) {
            let scope = Scope { partition: &partition, cursor_key: &cursor_key, deadline, page_size };
            sweep_partition(state, scope, stats, &mut report, &mut marks_cache, &mut health).await;
        }
    }
    report.alerts_sent += health_checks(state, shards, &health, &report).await;
    report.duration_ms = started.elapsed().as_millis() as u64;
    tracing::info!(
        shards = ?shards,
        bots_checked = report.bots_checked,
        positions_checked = report.positions_checked,
        closed = report.closed.len(),
        errors = report.errors.len(),
        calls = %stats.snapshot(),
        "sweep done"
    );
    report
}

/// One index partition of a run: where it is, where its cursor is kept, and its limits.
struct Scope<'a> {
    partition: &'a str,
    cursor_key: &'a keys::Key,
    deadline: Instant,
    page_size: i32,
}

async fn sweep_partition(
    state: &(impl Table + Cache + Vault + Mail + Bitget + Telegram),
    scope: Scope<'_>,
    stats: &SweepStats,
    report: &mut SweepReport,
    marks_cache: &mut HashMap<String, Decimal>,
    health: &mut RunHealth,
) {
    let Scope { partition, cursor_key, deadline, page_size } = scope;
    // `resume`: every index item up to this key is done. `next_start`: where the next page starts.
    let loaded = match load_cursor(state, cursor_key).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(partition, error = %e.chain(), "the sweep cursor is unreadable");
            health.index_ok = false;
            return;
        }
    };
    let mut resume = loaded.clone();
    let mut next_start = loaded.clone();
    let mut pending: BTreeMap<String, UserGroup> = BTreeMap::new();
    let mut pages = 0u32;
    loop {
        // At least one page per shard, however late it started; then only while time is left.
        if pages > 0 && deadline.saturating_duration_since(Instant::now()) < DEADLINE_MARGIN {
            tracing::warn!(partition, "deadline near: stopping; the next run goes on from here");
            if resume != loaded {
                let _ = save_cursor(state, cursor_key, resume.clone()).await;
            }
            return;
        }
        stats.index_queries.fetch_add(1, Ordering::Relaxed);
        pages += 1;
        let page = match state.trading_store().active_index_page(partition, next_start.clone(), page_size).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(partition, error = %ApiError::from(e).chain(), "active-bots index unreadable");
                health.index_ok = false;
                return;
            }
        };
        for entry in page.entries {
            let group = pending.entry(entry.user_id).or_default();
            group.last_key = Some(entry.position);
            match entry.record {
                Ok(IndexRecord::Bot(b)) => group.bot = Some(*b),
                Ok(IndexRecord::PaperPosition(p)) => group.paper.push(p),
                Ok(IndexRecord::LivePosition(p)) => group.live.push(p),
                Ok(IndexRecord::RestingOrder(r)) => group.resting.push(r),
                Ok(IndexRecord::Other) => {}
                Err(e) => tracing::error!(error = %ApiError::from(e).chain(), "unreadable item in the active-bots index"),
            }
        }
        let more = page.next_start.clone();
        // The last user's items may continue on the next page: keep them for then.
        let carry = if more.is_some() { pending.keys().next_back().cloned().and_then(|k| pending.remove_entry(&k)) } else { None };
        let groups: Vec<(String, UserGroup)> = std::mem::take(&mut pending).into_iter().filter(|(_, g)| g.bot.is_some()).collect();
        let processed_key = groups.iter().filter_map(|(_, g)| g.last_key.clone()).next_back();

        // Marks for every paper symbol of this page not priced yet in this run: one call.
        let mut missing: Vec<String> = groups
            .iter()
            .flat_map(|(_, g)| g.paper.iter().map(|p| p.symbol.clone()).chain(g.resting.iter().map(|r| r.intent.symbol.clone())))
            .filter(|s| !marks_cache.contains_key(s))
            .collect();
        missing.sort();
        missing.dedup();
        if !missing.is_empty() {
            stats.price_calls.fetch_add(1, Ordering::Relaxed);
            stats.symbols_priced.fetch_add(missing.len() as u32, Ordering::Relaxed);
            match marks(state, &missing).await {
                Ok(found) => marks_cache.extend(found),
                Err(e) => {
                    tracing::error!(error = %e.chain(), symbols = ?missing, "marks unavailable; those positions wait for the next run");
                    health.prices_ok = false;
                }
            }
        }

        report.bots_checked += groups.len() as u32;
        health.live_seen |=
            groups.iter().any(|(_, g)| g.bot.as_ref().is_some_and(|b| b.exchange == crate::trading::model::ExchangeKind::Bitget));
        let marks_ref = &*marks_cache;
        let outcomes: Vec<(String, Outcome)> = futures::stream::iter(groups)
            .map(|(user_id, group)| async move {
                let outcome = check_user(state, &user_id, group, marks_ref, stats).await;
                (user_id, outcome)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for (user_id, outcome) in outcomes {
            report.positions_checked += outcome.positions;
            report.resting_filled += outcome.filled;
            report.closed.extend(outcome.closed);
            report.alerts_sent += outcome.alerts;
            if let Some(error) = outcome.error {
                report.errors.push(SweepError { user_id, error });
            }
        }

        if processed_key.is_some() {
            resume = processed_key.clone();
        }
        match (more, processed_key) {
            // The carried user is read again, whole, from right after the last user done.
            (Some(_), Some(done)) => next_start = Some(done),
            (Some(last), None) => {
                next_start = Some(last);
                pending.extend(carry);
            }
            (None, _) => {
                if loaded.is_some() {
                    let _ = save_cursor(state, cursor_key, None).await;
                }
                return;
            }
        }
    }
}

async fn check_user(
    state: &(impl Table + Cache + Vault + Mail + Bitget + Telegram),
    user_id: &str,
    group: UserGroup,
    marks: &HashMap<String, Decimal>,
    stats: &SweepStats,
) -> Outcome {
    let mut outcome = Outcome { positions: 0, filled: 0, closed: Vec::new(), error: None, alerts: 0 };
    let Some(bot) = group.bot else { return outcome };
    let result = match (bot.state, bot.exchange) {
        (BotState::Stopping, _) => finish_stop(state, user_id, bot, stats, &mut outcome).await,
        (BotState::Running, crate::trading::model::ExchangeKind::Paper) => {
            match fill_resting(state, user_id, &group.resting, marks, stats, &mut outcome).await {
                Ok(()) => check_paper(state, user_id, &bot, group.paper, marks, stats, &mut outcome).await,
                Err(e) => Err(e),
            }
        }
        (BotState::Running, crate::trading::model::ExchangeKind::Bitget) => {
            check_live(state, user_id, &bot, group.live, stats, &mut outcome).await
        }
        (BotState::Stopped, _) => Ok(()),
    };
    if let Err(e) = result {
        // The guardian is its own edge: the one log line of this failure, with its causes.
        tracing::error!(user_id, code = e.code(), error = %e.chain(), "a bot could not be checked");
        outcome.error = Some(e.code().to_owned());
    }
    outcome
}

async fn finish_stop(
    state: &(impl Table + Cache + Vault + Mail + Bitget + Telegram),
    user_id: &str,
    bot: BotRecord,
    stats: &SweepStats,
    outcome: &mut Outcome,
) -> Result<(), ApiError> {
    stats.partition_queries.fetch_add(1, Ordering::Relaxed);
    // Announced once when the bot gets stuck and once when it is finally stopped, not every run.
    let check = format!("stopping:{user_id}");
    match crate::trading::bot::stop(state, user_id, bot).await {
        Ok(crate::trading::bot::Stopped { closed, .. }) => {
            if alerts::transition(state, &check, true).await == Transition::Recovery
                && alerts::send(state, &format!("✅ Bot of user {user_id} is stopped: its positions are closed.")).await
            {
                outcome.alerts += 1;
            }
            stats.orders.fetch_add(closed.len() as u32, Ordering::Relaxed);
            outcome.closed.extend(closed.into_iter().map(|c| ClosedReport {
                user_id: user_id.to_owned(),
                symbol: c.symbol,
                reason: "bot_stop".into(),
                size: c.size,
                exit_price: c.exit_price,
            }));
            Ok(())
        }
        Err(e) => {
            if alerts::transition(state, &check, false).await == Transition::Alert
                && alerts::send(
                    state,
                    &format!(
                        "⚠️ Bot of user {user_id} is still stopping: closing its positions failed ({}). Retrying every minute.",
                        e.code()
                    ),
                )
                .await
            {
                outcome.alerts += 1;
            }
            Err(e)
        }
    }
}

/// Fills the paper orders resting on the simulated book whose price the mark has crossed, at
/// their own price with the maker fee. A position they open is checked from the next run on.
async fn fill_resting(
    state: &(impl Table + Bitget),
    user_id: &str,
    resting: &[RestingOrder],
    marks: &HashMap<String, Decimal>,
    stats: &SweepStats,
    outcome: &mut Outcome,
) -> Result<(), ApiError> {
    let crossed = |r: &&RestingOrder| {
        let (Some(mark), Some(price)) = (marks.get(&r.intent.symbol), r.intent.price) else { return false };
        match r.intent.side {
            crate::trading::model::Side::Buy => *mark <= price,
            crate::trading::model::Side::Sell => *mark >= price,
        }
    };
    let due: Vec<&RestingOrder> = resting.iter().filter(crossed).collect();
    if due.is_empty() {
        return Ok(());
    }
    stats.partition_queries.fetch_add(1, Ordering::Relaxed);
    let snapshot = state.trading_store().snapshot(user_id).await?;
    let exchange = paper_exchange(state, user_id, marks.clone(), snapshot).await?;
    for order in due {
        stats.orders.fetch_add(1, Ordering::Relaxed);
        match exchange.fill_resting(order).await {
            Ok(Some(_)) => outcome.filled += 1,
            Ok(None) => {}
            // The bot stopped meanwhile: its stop cancels the order.
            Err(crate::trading::exchange::ExchangeError::BotNotRunning) => {}
            Err(e) => return Err(crate::trading::service::exchange_error(e)),
        }
    }
    Ok(())
}

async fn check_paper(
    state: &(impl Table + Vault + Bitget),
    user_id: &str,
    bot: &BotRecord,
    positions: Vec<PaperPosition>,
    marks: &HashMap<String, Decimal>,
    stats: &SweepStats,
    outcome: &mut Outcome,
) -> Result<(), ApiError> {
    if positions.is_empty() {
        return Ok(());
    }
    let specs = crate::trading::service::contract_book(state).await?;
    for position in positions {
        let Some(mark) = marks.get(&position.symbol).copied() else {
            return Err(ApiError::Unavailable { code: "market_data_unavailable", detail: position.symbol.clone(), cause: None });
        };
        outcome.positions += 1;
        if bot.config.trailing_stop_pct.is_some() {
            state.trading_store().raise_high_water(user_id, &position, mark).await?;
        }
        // The exchange would have liquidated an isolated position the mark went past, whatever
        // the bot's exits say: that comes first, at the liquidation price.
        let maintenance = specs.get(&position.symbol).map(|s| s.maintenance_margin_rate).unwrap_or(MAINTENANCE_MARGIN_RATE);
        let (reason, fill_price) = match liquidated_at(&position, maintenance, mark) {
            Some(price) => ("liquidation", price),
            None => match trigger(&bot.config, position.side, position.entry_price, mark, position.high_water) {
                Some(reason) => (reason, mark),
                None => continue,
            },
        };
        // Only a triggered position costs a read of the account and an order.
        stats.partition_queries.fetch_add(1, Ordering::Relaxed);
        let snapshot = state.trading_store().snapshot(user_id).await?;
        let Some(current) = snapshot.positions.iter().find(|p| p.symbol == position.symbol && p.version == position.version).cloned()
        else {
            continue; // changed since the index was read; the next run judges it afresh
        };
        let mut fill_marks = marks.clone();
        fill_marks.insert(current.symbol.clone(), fill_price);
        let exchange = paper_exchange(state, user_id, fill_marks, snapshot).await?;
        let view = position_view(&current, fill_price);
        // A bot that trades by itself is stopping before its position is closed: nothing it
        // decides meanwhile can re-enter.
        let Some(bot) = stopping_first(state, user_id, bot, reason).await? else { return Ok(()) };
        let bot = &bot;
        stats.orders.fetch_add(1, Ordering::Relaxed);
        let Some(closed) = close_triggered(state, &exchange, user_id, bot.config.leverage, &view, reason).await? else { continue };
        outcome.closed.push(ClosedReport {
            user_id: user_id.to_owned(),
            symbol: view.symbol,
            reason: reason.to_owned(),
            size: closed.size,
            exit_price: closed.exit_price,
        });
        if end_strategy(state, user_id, bot, reason).await? {
            return Ok(());
        }
    }
    Ok(())
}

async fn check_live(
    state: &(impl Table + Vault + Mail + Bitget + Telegram),
    user_id: &str,
    bot: &BotRecord,
    mirrors: Vec<LivePosition>,
    stats: &SweepStats,
    outcome: &mut Outcome,
) -> Result<(), ApiError> {
    stats.partition_queries.fetch_add(1, Ordering::Relaxed);
    let snapshot = state.trading_store().snapshot(user_id).await?;
    let exchange = exchange_for(state, user_id, &snapshot, &[]).await?;
    stats.exchange_position_calls.fetch_add(1, Ordering::Relaxed);
    // The bot guards its own symbol; the user's other positions on the account are left alone.
    let actual: Vec<Position> = exchange
        .positions()
        .await
        .map_err(crate::trading::service::exchange_error)?
        .into_iter()
        .filter(|p| p.symbol == bot.config.symbol)
        .collect();
    // The exchange is the truth: correct the store, and say so.
    let differences = state.trading_store().sync_live_positions(user_id, &bot.config.symbol, &mirrors, &actual).await?;
    if !differences.is_empty()
        && alerts::send(state, &format!("🔁 Reconciled user {user_id} with Bitget: {}", differences.join("; "))).await
    {
        outcome.alerts += 1;
    }
    for position in actual {
        outcome.positions += 1;
        let mirror = mirrors.iter().find(|m| m.mirrors(&position));
        let high_water = mirror.and_then(|m| m.high_water);
        if let (Some(m), Some(_)) = (mirror, bot.config.trailing_stop_pct) {
            let best = best_mark(position.side, high_water.unwrap_or(position.entry_price), position.mark_price);
            if Some(best) != high_water {
                state.trading_store().set_live_high_water(user_id, m, best).await?;
            }
        }
        let Some(reason) = trigger(&bot.config, position.side, position.entry_price, position.mark_price, high_water) else { continue };
        let Some(bot) = stopping_first(state, user_id, bot, reason).await? else { return Ok(()) };
        let bot = &bot;
        stats.orders.fetch_add(1, Ordering::Relaxed);
        let Some(closed) = close_triggered(state, exchange.as_ref(), user_id, bot.config.leverage, &position, reason).await? else {
            continue;
        };
        outcome.closed.push(ClosedReport {
            user_id: user_id.to_owned(),
            symbol: position.symbol.clone(),
            reason: reason.to_owned(),
            size: closed.size,
            exit_price: closed.exit_price,
        });
        if end_strategy(state, user_id, bot, reason).await? {
            return Ok(());
        }
    }
    Ok(())
}

/// A bot that trades by itself (a strategy, signals) is stopped by a triggered exit, with the
/// exit as its reason, instead of re-entering on its next decision: it is moved to `stopping`
/// before the position is closed (no risk-increasing order can be recorded from then on). The
/// bot to close with, or `None` when another stop or another run got there first. A manual bot
/// keeps running.
async fn stopping_first(state: &impl Table, user_id: &str, bot: &BotRecord, reason: &str) -> Result<Option<BotRecord>, ApiError> {
    if !bot.config.strategy.is_automatic() {
        return Ok(Some(bot.clone()));
    }
    Ok(match crate::trading::bot::begin_stop(&state.trading_store(), user_id, bot.clone(), Some(reason)).await {
        Ok(crate::trading::bot::Begun::Stopping(stopping)) => Some(stopping),
        Ok(crate::trading::bot::Begun::AlreadyStopped(_) | crate::trading::bot::Begun::Superseded(_)) => None,
        // The exit is what matters: the position is closed even when the bot could not be
        // marked stopping; the stop is tried again once it is closed.
        Err(e) => {
            tracing::error!(user_id, error = %e.chain(), "a triggered strategy bot could not be marked stopping; closing its position first");
            Some(bot.clone())
        }
    })
}

/// Finishes the stop `stopping_first` began once the triggered position is closed: its resting
/// orders (a grid's) are canceled and the bot ends `stopped`. True when it was stopped.
async fn end_strategy(state: &(impl Table + Vault + Bitget), user_id: &str, bot: &BotRecord, reason: &str) -> Result<bool, ApiError> {
    if !bot.config.strategy.is_automatic() {
        return Ok(false);
    }
    crate::trading::bot::stop_because(state, user_id, bot.clone(), Some(reason)).await?;
    Ok(true)
}

/// The run's health checks, announced once per transition. A run over one shard (the deployed
/// fan-out) owns one check of its own, `positions@03`: could it read its index and prices and
/// check every bot. The checks of shared dependencies (DynamoDB, Redis, secrets, market data, the
/// exchange) belong to the run that includes shard 0, so one outage does not page eight times.
/// Returns the number of messages sent.
async fn health_checks(
    state: &(impl Table + Cache + Mail + Bitget + Telegram),
    shards: &[u16],
    health: &RunHealth,
    report: &SweepReport,
) -> u32 {
    let RunHealth { index_ok, prices_ok, live_seen } = *health;
    let scope = match shards {
        [one] => format!("@{one:02}"),
        _ => String::new(),
    };
    let owns_shared = shards.contains(&0);
    // The run that owns the shared checks reports an unreadable index or prices under them.
    let positions_ok = report.errors.is_empty() && (owns_shared || (index_ok && prices_ok));
    let mut checks = vec![(format!("positions{scope}"), positions_ok)];
    if owns_shared {
        let exchange_needed = live_seen || state.config().market_data == MarketData::Bitget;
        let (dynamodb, redis, secrets, exchange) = tokio::join!(
            async { index_ok && probes::probe_dynamodb(state).await },
            probes::probe_redis(state),
            async { state.telegram().bot.get().await.is_ok() },
            async {
                if !exchange_needed {
                    return None;
                }
                Some(state.bitget().mark_prices().await.is_ok())
            },
        );
        checks.extend([
            ("dynamodb".to_owned(), dynamodb),
            ("redis".to_owned(), redis),
            ("secrets".to_owned(), secrets),
            ("market_data".to_owned(), prices_ok),
        ]);
        if let Some(ok) = exchange {
            checks.push(("exchange".to_owned(), ok));
        }
    }
    let mut sent = 0;
    for (check, ok) in checks {
        let message = match alerts::transition(state, &check, ok).await {
            Transition::Alert if check.starts_with("positions") && report.errors.is_empty() => {
                format!("🚨 guardian: the bots of {check} could not be read (index or prices)")
            }
            Transition::Alert if check.starts_with("positions") => {
                format!("🚨 guardian: {} bot(s) could not be checked this run", report.errors.len())
            }
            Transition::Alert => format!("🚨 guardian: {check} is failing"),
            Transition::Recovery => format!("✅ guardian: {check} recovered"),
            Transition::None => continue,
        };
        if alerts::send(state, &message).await {
            sent += 1;
        }
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }
    fn config(tp: Option<&str>, trail: Option<&str>) -> BotConfig {
        BotConfig {
            symbol: "BTCUSDT".into(),
            leverage: 10,
            stop_loss_pct: d("2"),
            take_profit_pct: tp.map(d),
            trailing_stop_pct: trail.map(d),
            max_position_notional: d("10000"),
            margin_mode: Default::default(),
            strategy: Default::default(),
        }
    }

    #[test]
    fn a_scheduled_event_names_its_shard_and_a_bare_one_sweeps_them_all() {
        use serde_json::json;
        assert_eq!(super::shards_of_event(&json!({"shard": 3})), Ok(vec![3]));
        assert_eq!(super::shards_of_event(&json!({"detail": {}})).map(|s| s.len()), Ok(usize::from(crate::keys::GUARDIAN_SHARDS)));
        assert!(super::shards_of_event(&json!({"shard": crate::keys::GUARDIAN_SHARDS})).is_err());
        assert!(super::shards_of_event(&json!({"shard": "2"})).is_err());
        assert!(super::shards_of_event(&json!({"shard": -1})).is_err());
    }

    #[test]
    fn a_loss_reaching_the_stop_triggers_a_stop_loss_for_longs_and_shorts() {
        let c = config(None, None);
        assert_eq!(trigger(&c, PositionSide::Long, d("100"), d("98"), None), Some("stop_loss"));
        assert_eq!(trigger(&c, PositionSide::Long, d("100"), d("98.01"), None), None);
        assert_eq!(trigger(&c, PositionSide::Short, d("100"), d("102"), None), Some("stop_loss"));
        assert_eq!(trigger(&c, PositionSide::Short, d("100"), d("98"), None), None);
    }

    #[test]
    fn a_gain_reaching_the_target_takes_profit() {
        let c = config(Some("4"), None);
        assert_eq!(trigger(&c, PositionSide::Long, d("100"), d("104"), None), Some("take_profit"));
        assert_eq!(trigger(&c, PositionSide::Short, d("100"), d("96"), None), Some("take_profit"));
        assert_eq!(trigger(&c, PositionSide::Long, d("100"), d("103.9"), None), None);
    }

    #[test]
    fn the_trailing_stop_arms_beyond_entry_and_fires_on_the_pullback() {
        let c = config(None, Some("1"));
        assert_eq!(trigger(&c, PositionSide::Long, d("100"), d("99.5"), None), None, "not armed below entry");
        assert_eq!(trigger(&c, PositionSide::Long, d("100"), d("110"), Some(d("110"))), None);
        assert_eq!(trigger(&c, PositionSide::Long, d("100"), d("108.9"), Some(d("110"))), Some("trailing_stop"));
        assert_eq!(trigger(&c, PositionSide::Short, d("100"), d("91"), Some(d("90"))), Some("trailing_stop"));
        assert_eq!(best_mark(PositionSide::Long, d("110"), d("105")), d("110"));
        assert_eq!(best_mark(PositionSide::Short, d("90"), d("95")), d("90"));
    }
}
