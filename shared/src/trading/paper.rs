//! The paper exchange: a simulated USDT-M futures account per user in DynamoDB, one-way mode, on
//! Bitget's contract specs. Market orders (and limit orders through the mark) fill at the mark
//! with the taker fee; other limit orders rest (a `RESTING#` item) until the guardian sees the mark
//! cross their price and fills them there with the maker fee. Positions carry entry price, margin
//! and realized/unrealized PnL. Every fill is one DynamoDB transaction over the account, the
//! position and the order record, so a retried order can never fill twice.

use crate::trading::exchange::{Exchange, ExchangeError, KeyAnswer, OrderGuard};
use crate::trading::model::{AccountView, ExchangeKind, OrderFill, OrderIntent, OrderStatus, OrderType, Position, Side};
use crate::trading::paper_store::{PaperFill, PaperWrite};
use crate::trading::store::{now_rfc3339, PaperAccount, PaperPosition, RestingOrder, TradingStore, UserSnapshot};
use async_trait::async_trait;
use rust_decimal::Decimal;
use std::collections::HashMap;
use tokio::sync::Mutex;

/// Paper order ids are this and the client order id.
pub const ORDER_ID_PREFIX: &str = "paper-";

pub struct PaperExchange {
    pub client: aws_sdk_dynamodb::Client,
    /// The table, the start balance and the history's retention.
    pub config: std::sync::Arc<crate::config::Config>,
    pub user_id: String,
    pub marks: HashMap<String, Decimal>,
    pub specs: crate::trading::bitget::ContractBook,
    snapshot: Mutex<UserSnapshot>,
}

/// Which order record a fill settles: a new order (`pending`) or one that rested (`open`, whose
/// `RESTING#` item goes in the same transaction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settles {
    NewOrder,
    RestingOrder,
}

/// The account and position after a fill, and what the fill did.
#[derive(Debug, Clone)]
pub struct FillOutcome {
    pub account: PaperAccount,
    pub position: Option<PaperPosition>,
    pub fill: OrderFill,
}

fn store_err(e: impl Into<crate::dynamo::StoreError>) -> ExchangeError {
    ExchangeError::Store(e.into())
}

/// The pure accounting of one fill at `price`.
pub fn apply_fill(
    account: &PaperAccount,
    position: Option<&PaperPosition>,
    intent: &OrderIntent,
    price: Decimal,
    fee_rate: Decimal,
) -> FillOutcome {
    let opening_side = intent.side.opens();
    // A reduce-only order fills only what it reduces.
    let size = if intent.reduce_only {
        position.filter(|p| p.side != opening_side).map(|p| intent.size.min(p.size)).unwrap_or(Decimal::ZERO)
    } else {
        intent.size
    };
    let mut fee = (size * price * fee_rate).round_dp(8);
    let before = account.balance;
    let mut account = PaperAccount { balance: account.balance, realized_pnl: account.realized_pnl, version: account.version + 1 };
    let leverage = Decimal::from(intent.leverage.max(1));
    let next_version = position.map(|p| p.version + 1).unwrap_or(1);
    let mut realized = Decimal::ZERO;
    let new_position = match position {
        Some(p) if p.side == opening_side => {
            let total = p.size + size;
            Some(PaperPosition {
                size: total,
                entry_price: ((p.size * p.entry_price + size * price) / total).round_dp(8),
                margin: (p.margin + size * price / leverage).round_dp(8),
                version: next_version,
                ..p.clone()
            })
        }
        Some(p) => {
            let closed = size.min(p.size);
            realized = ((price - p.entry_price) * closed * p.side.direction()).round_dp(8);
            let remaining = p.size - closed;
            let flip = size - closed;
            if remaining > Decimal::ZERO {
                Some(PaperPosition {
                    size: remaining,
                    margin: (p.margin * remaining / p.size).round_dp(8),
                    version: next_version,
                    ..p.clone()
                })
            } else if flip > Decimal::ZERO && !intent.reduce_only {
                Some(PaperPosition {
                    symbol: intent.symbol.clone(),
                    side: opening_side,
                    size: flip,
                    entry_price: price,
                    leverage: intent.leverage,
                    margin: (flip * price / leverage).round_dp(8),
                    version: next_version,
                    high_water: None,
                    position_id: intent.client_order_id.clone(),
                })
            } else {
                None
            }
        }
        None if size.is_zero() => None,
        None => Some(PaperPosition {
            symbol: intent.symbol.clone(),
            side: opening_side,
            size,
            entry_price: price,
            leverage: intent.leverage,
            margin: (size * price / leverage).round_dp(8),
            version: next_version,
            high_water: None,
            position_id: intent.client_order_id.clone(),
        }),
    };
    // A loss beyond what the account holds is the exchange's (its insurance fund), never a
    // negative balance: the fee comes out of what there is first, then the loss, and a loss is
    // never turned into a gain.
    if before - fee + realized < Decimal::ZERO {
        fee = fee.min((before + realized.max(Decimal::ZERO)).max(Decimal::ZERO));
        if realized < Decimal::ZERO {
            realized = realized.max(-(before - fee).max(Decimal::ZERO));
        }
    }
    account.balance = before - fee + realized;
    account.realized_pnl += realized;
    FillOutcome {
        account,
        position: new_position,
        fill: OrderFill {
            order_id: format!("{ORDER_ID_PREFIX}{}", intent.client_order_id),
            status: OrderStatus::Filled,
            filled_size: size,
            avg_price: Some(price),
            fee: fee.normalize(),
            realized_pnl: realized.normalize(),
        },
    }
}

/// The paper account as an exchange reports it: equity at the marks of `views`, and what is
/// available once the positions' margin and the margin resting opening orders hold (as on
/// Bitget) are set aside.
pub fn account_view(account: &PaperAccount, positions: &[PaperPosition], views: Vec<Position>, resting: &[&OrderIntent]) -> AccountView {
    let unrealized: Decimal = views.iter().map(|p| p.unrealized_pnl).sum();
    let reserved: Decimal =
        resting.iter().filter(|r| !r.reduce_only).map(|r| r.size * r.price.unwrap_or_default() / Decimal::from(r.leverage.max(1))).sum();
    let margin: Decimal = positions.iter().map(|p| p.margin).sum::<Decimal>() + reserved;
    let equity = account.balance + unrealized;
    AccountView {
        exchange: ExchangeKind::Paper,
        equity: equity.normalize(),
        available: (equity - margin).max(Decimal::ZERO).normalize(),
        unrealized_pnl: unrealized.normalize(),
        positions: views,
    }
}

/// Where an isolated position is liquidated: where its loss leaves only the maintenance margin
/// (`maintenance_rate` of its notional at entry) of the margin it was opened with, as on Bitget.
pub fn liquidation_price(p: &PaperPosition, maintenance_rate: Decimal) -> Decimal {
    if p.size.is_zero() {
        return Decimal::ZERO;
    }
    let cushion = (p.margin - maintenance_rate * p.entry_price * p.size) / p.size;
    (p.entry_price - cushion * p.side.direction()).max(Decimal::ZERO)
}

/// Whether `mark` has reached the position's liquidation price.
pub fn liquidated_at(p: &PaperPosition, maintenance_rate: Decimal, mark: Decimal) -> Option<Decimal> {
    let price = liquidation_price(p, maintenance_rate);
    let reached = match p.side {
        crate::trading::model::PositionSide::Long => mark <= price,
        crate::trading::model::PositionSide::Short => mark >= price,
    };
    reached.then_some(price)
}

pub fn position_view(p: &PaperPosition, mark: Decimal) -> Position {
    Position { instance: p.instance(), ..position_at(&p.symbol, p.side, p.size, p.entry_price, mark) }
}

/// A position valued at `mark`: unrealized PnL = (mark − entry) × size × direction, to 8 places.
pub fn position_at(symbol: &str, side: crate::trading::model::PositionSide, size: Decimal, entry: Decimal, mark: Decimal) -> Position {
    Position {
        symbol: symbol.to_owned(),
        side,
        size,
        entry_price: entry,
        mark_price: mark,
        unrealized_pnl: ((mark - entry) * size * side.direction()).round_dp(8).normalize(),
        instance: String::new(),
        available: size,
    }
}

impl PaperExchange {
    pub fn new(
        client: aws_sdk_dynamodb::Client,
        config: std::sync::Arc<crate::config::Config>,
        user_id: String,
        marks: HashMap<String, Decimal>,
        specs: crate::trading::bitget::ContractBook,
        snapshot: UserSnapshot,
    ) -> Self {
        PaperExchange { client, config, user_id, marks, specs, snapshot: Mutex::new(snapshot) }
    }

    fn store(&self) -> TradingStore<'_> {
        TradingStore { client: &self.client, table: &self.config.table_name, history_days: self.config.history_retention_days }
    }

    fn account_or_new(&self, snapshot: &UserSnapshot) -> PaperAccount {
        snapshot.paper.clone().unwrap_or(PaperAccount { balance: self.config.paper_start_balance, realized_pnl: Decimal::ZERO, version: 0 })
    }

    fn mark(&self, symbol: &str) -> Result<Decimal, ExchangeError> {
        self.marks.get(symbol).copied().ok_or_else(|| ExchangeError::NoMarkPrice(symbol.to_owned()))
    }

    /// Fills or rests `intent` at the mark; with `answer`, the key's answer goes in the same
    /// transaction (`true`), unless an earlier try settled the order or the key refused it
    /// (`false`: the caller answers the key itself).
    async fn place(
        &self,
        intent: &OrderIntent,
        guard: OrderGuard,
        answer: Option<KeyAnswer<'_>>,
    ) -> Result<(OrderFill, bool), ExchangeError> {
        let spec = self.spec(&intent.symbol)?;
        let mark = self.mark(&intent.symbol)?;
        match (intent.order_type, intent.price) {
            (OrderType::Limit, Some(limit))
                if (intent.side == Side::Buy && limit < mark) || (intent.side == Side::Sell && limit > mark) =>
            {
                self.rest(intent, guard, answer).await
            }
            // Market, or a limit through the mark: takes liquidity at the mark now.
            _ => self.fill_at(intent, mark, spec.taker_fee_rate, guard, Settles::NewOrder, answer).await,
        }
    }

    /// Fills `intent` at `price` with `fee_rate`, retrying when another order of the user moved
    /// the account meanwhile. An order already settled by an earlier try reports that fill.
    async fn fill_at(
        &self,
        intent: &OrderIntent,
        price: Decimal,
        fee_rate: Decimal,
        guard: OrderGuard,
        settles: Settles,
        mut answer: Option<KeyAnswer<'_>>,
    ) -> Result<(OrderFill, bool), ExchangeError> {
        let mut snapshot = self.snapshot.lock().await;
        for attempt in 0..12u64 {
            if attempt > 0 {
                *snapshot = self.store().snapshot(&self.user_id).await?;
            }
            let before = self.account_or_new(&snapshot);
            let position_before = snapshot.positions.iter().find(|p| p.symbol == intent.symbol).cloned();
            let outcome = apply_fill(&before, position_before.as_ref(), intent, price, fee_rate);
            let write = PaperFill {
                intent,
                account_before: &before,
                account_after: &outcome.account,
                position_before: position_before.as_ref(),
                position_after: outcome.position.as_ref(),
                fill: &outcome.fill,
                require_running_bot: guard.require_running_bot,
                from_resting: settles == Settles::RestingOrder,
                answer: answer.map(|a| (a.key, (a.body)(intent, &outcome.fill))),
            };
            match self.store().write_paper_fill(&self.user_id, write).await? {
                PaperWrite::Written => {
                    snapshot.paper = Some(outcome.account.clone());
                    snapshot.positions.retain(|p| p.symbol != intent.symbol);
                    snapshot.positions.extend(outcome.position.clone());
                    snapshot.resting.retain(|r| r.intent.client_order_id != intent.client_order_id);
                    return Ok((outcome.fill, answer.is_some()));
                }
                // Settled already (filled by an earlier try, or canceled): report that.
                PaperWrite::OrderSettled | PaperWrite::AlreadyResting => return self.settled(intent).await.map(|fill| (fill, false)),
                PaperWrite::BotNotRunning => return Err(ExchangeError::BotNotRunning),
                // The fill goes alone; the caller answers the key.
                PaperWrite::AnswerRefused => answer = None,
                // Another order of this user moved the account: read again and retry.
                PaperWrite::AccountMoved => {
                    tokio::time::sleep(std::time::Duration::from_millis(rand::random::<u64>() % (10 + 20 * attempt.min(5)))).await
                }
            }
        }
        Err(ExchangeError::Unavailable("paper account too contended".into()))
    }

    fn spec(&self, symbol: &str) -> Result<&crate::trading::contracts::ContractSpec, ExchangeError> {
        self.specs.get(symbol).ok_or_else(|| ExchangeError::Rejected { code: "unknown_symbol".into(), message: symbol.to_owned() })
    }

    /// Fills a resting order whose price the mark has crossed, at its own price and with the
    /// maker fee (it provided the liquidity). `None`: the mark has not crossed it.
    pub async fn fill_resting(&self, resting: &RestingOrder) -> Result<Option<OrderFill>, ExchangeError> {
        let intent = &resting.intent;
        let (Some(price), mark) = (intent.price, self.mark(&intent.symbol)?) else { return Ok(None) };
        let crossed = match intent.side {
            Side::Buy => mark <= price,
            Side::Sell => mark >= price,
        };
        if !crossed {
            return Ok(None);
        }
        let fee_rate = self.spec(&intent.symbol)?.maker_fee_rate;
        let guard = OrderGuard { require_running_bot: !intent.reduce_only };
        self.fill_at(intent, price, fee_rate, guard, Settles::RestingOrder, None).await.map(|(fill, _)| Some(fill))
    }

    /// Records a limit order that is not marketable as resting: its order record `open` and its
    /// `RESTING#` item, in one transaction (a risk-increasing one only while the bot runs).
    async fn rest(
        &self,
        intent: &OrderIntent,
        guard: OrderGuard,
        answer: Option<KeyAnswer<'_>>,
    ) -> Result<(OrderFill, bool), ExchangeError> {
        let fill = OrderFill {
            order_id: format!("{ORDER_ID_PREFIX}{}", intent.client_order_id),
            status: OrderStatus::Open,
            filled_size: Decimal::ZERO,
            avg_price: None,
            fee: Decimal::ZERO,
            realized_pnl: Decimal::ZERO,
        };
        let resting = RestingOrder { intent: intent.clone(), order_id: fill.order_id.clone(), created_at: now_rfc3339() };
        let mut answer = answer;
        loop {
            let answer_body = answer.map(|a| (a.key, (a.body)(intent, &fill)));
            return match self.store().rest_paper_order(&self.user_id, &resting, &fill, guard.require_running_bot, answer_body).await? {
                PaperWrite::Written => {
                    self.snapshot.lock().await.resting.push(resting);
                    Ok((fill, answer.is_some()))
                }
                // An earlier try put it to rest.
                PaperWrite::AlreadyResting => Ok((fill, false)),
                PaperWrite::OrderSettled | PaperWrite::AccountMoved => self.settled(intent).await.map(|fill| (fill, false)),
                PaperWrite::BotNotRunning => Err(ExchangeError::BotNotRunning),
                // It rests alone; the caller answers the key.
                PaperWrite::AnswerRefused => {
                    answer = None;
                    continue;
                }
            };
        }
    }

    /// What became of an order that was settled before this try could write it.
    async fn settled(&self, intent: &OrderIntent) -> Result<OrderFill, ExchangeError> {
        self.find_order(&intent.symbol, &intent.client_order_id)
            .await?
            .ok_or_else(|| store_err(crate::dynamo::StoreError::Missing("the order record of a settled paper order")))
    }
}

#[async_trait]
impl Exchange for PaperExchange {
    fn kind(&self) -> ExchangeKind {
        ExchangeKind::Paper
    }

    fn known_mark(&self, symbol: &str) -> Option<Decimal> {
        self.marks.get(symbol).copied()
    }

    async fn account(&self) -> Result<AccountView, ExchangeError> {
        let snapshot = self.snapshot.lock().await;
        let account = self.account_or_new(&snapshot);
        let positions = self.positions_of(&snapshot)?;
        let resting: Vec<&OrderIntent> = snapshot.resting.iter().map(|r| &r.intent).collect();
        Ok(account_view(&account, &snapshot.positions, positions, &resting))
    }

    async fn positions(&self) -> Result<Vec<Position>, ExchangeError> {
        let snapshot = self.snapshot.lock().await;
        self.positions_of(&snapshot)
    }

    async fn place_order(&self, intent: &OrderIntent, guard: OrderGuard) -> Result<OrderFill, ExchangeError> {
        self.place(intent, guard, None).await.map(|(fill, _)| fill)
    }

    async fn place_answering(
        &self,
        intent: &OrderIntent,
        guard: OrderGuard,
        answer: KeyAnswer<'_>,
    ) -> Result<(OrderFill, bool), ExchangeError> {
        self.place(intent, guard, Some(answer)).await
    }

    async fn find_order(&self, _symbol: &str, client_order_id: &str) -> Result<Option<OrderFill>, ExchangeError> {
        let record = self.store().order(&self.user_id, client_order_id).await?;
        Ok(record.and_then(|r| r.fill))
    }

    async fn open_orders(&self, symbol: &str) -> Result<Vec<crate::trading::model::OpenOrder>, ExchangeError> {
        let snapshot = self.snapshot.lock().await;
        Ok(snapshot.resting.iter().filter(|r| r.intent.symbol == symbol).map(RestingOrder::open_order).collect())
    }

    async fn cancel_order(&self, _symbol: &str, client_order_id: &str) -> Result<crate::trading::model::CancelOutcome, ExchangeError> {
        let canceled = self.store().cancel_resting_order(&self.user_id, client_order_id).await?;
        self.snapshot.lock().await.resting.retain(|r| r.intent.client_order_id != client_order_id);
        Ok(if canceled { crate::trading::model::CancelOutcome::Canceled } else { crate::trading::model::CancelOutcome::NotOpen })
    }
}

impl PaperExchange {
    fn positions_of(&self, snapshot: &UserSnapshot) -> Result<Vec<Position>, ExchangeError> {
        snapshot.positions.iter().map(|p| Ok(position_view(p, self.mark(&p.symbol)?))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trading::model::PositionSide;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }
    fn intent(side: Side, size: &str, reduce_only: bool) -> OrderIntent {
        OrderIntent {
            symbol: "BTCUSDT".into(),
            side,
            order_type: OrderType::Market,
            size: d(size),
            price: None,
            reduce_only,
            client_order_id: "c".into(),
            leverage: 10,
            reason: None,
        }
    }
    fn fresh() -> PaperAccount {
        PaperAccount { balance: d("10000"), realized_pnl: Decimal::ZERO, version: 0 }
    }

    #[test]
    fn opening_charges_the_taker_fee_and_locks_margin() {
        let out = apply_fill(&fresh(), None, &intent(Side::Buy, "0.1", false), d("65000"), d("0.0006"));
        assert_eq!(out.fill.fee, d("3.9"));
        assert_eq!(out.account.balance, d("9996.1"));
        let p = out.position.unwrap();
        assert_eq!((p.side, p.size, p.entry_price, p.margin), (PositionSide::Long, d("0.1"), d("65000"), d("650")));
    }

    #[test]
    fn adding_averages_the_entry_and_closing_realizes_pnl() {
        let a = apply_fill(&fresh(), None, &intent(Side::Buy, "0.1", false), d("60000"), d("0.0006"));
        let b = apply_fill(&a.account, a.position.as_ref(), &intent(Side::Buy, "0.1", false), d("62000"), d("0.0006"));
        assert_eq!(b.position.as_ref().unwrap().entry_price, d("61000"));
        let c = apply_fill(&b.account, b.position.as_ref(), &intent(Side::Sell, "0.2", true), d("63000"), d("0.0006"));
        assert_eq!(c.fill.realized_pnl, d("400"));
        assert!(c.position.is_none());
        // 10000 - 3.6 - 3.72 - 7.56 + 400
        assert_eq!(c.account.balance, d("10385.12"));
        assert_eq!(c.account.realized_pnl, d("400"));
    }

    #[test]
    fn a_short_profits_when_the_price_falls() {
        let a = apply_fill(&fresh(), None, &intent(Side::Sell, "1", false), d("3000"), Decimal::ZERO);
        let b = apply_fill(&a.account, a.position.as_ref(), &intent(Side::Buy, "1", true), d("2900"), Decimal::ZERO);
        assert_eq!(b.fill.realized_pnl, d("100"));
    }

    #[test]
    fn an_opposite_order_larger_than_the_position_flips_it_unless_reduce_only() {
        let a = apply_fill(&fresh(), None, &intent(Side::Buy, "0.1", false), d("60000"), Decimal::ZERO);
        let flip = apply_fill(&a.account, a.position.as_ref(), &intent(Side::Sell, "0.3", false), d("60000"), Decimal::ZERO);
        let p = flip.position.unwrap();
        assert_eq!((p.side, p.size), (PositionSide::Short, d("0.2")));
        let reduce = apply_fill(&a.account, a.position.as_ref(), &intent(Side::Sell, "0.3", true), d("60000"), Decimal::ZERO);
        assert!(reduce.position.is_none());
        assert_eq!(reduce.fill.filled_size, d("0.1"));
    }

    #[test]
    fn isolated_liquidation_leaves_the_maintenance_margin_long_and_short() {
        let long = apply_fill(&fresh(), None, &intent(Side::Buy, "0.1", false), d("65000"), Decimal::ZERO).position.unwrap();
        // 10×: 10 % − 0.4 % from entry.
        assert_eq!(liquidation_price(&long, d("0.004")), d("58760"));
        assert_eq!(liquidated_at(&long, d("0.004"), d("58761")), None);
        assert_eq!(liquidated_at(&long, d("0.004"), d("58000")), Some(d("58760")));
        let short = apply_fill(&fresh(), None, &intent(Side::Sell, "0.1", false), d("65000"), Decimal::ZERO).position.unwrap();
        assert_eq!(liquidation_price(&short, d("0.004")), d("71240"));
        assert_eq!(liquidated_at(&short, d("0.004"), d("72000")), Some(d("71240")));
    }

    #[test]
    fn a_loss_beyond_the_balance_leaves_it_at_zero() {
        let poor = PaperAccount { balance: d("50"), realized_pnl: Decimal::ZERO, version: 3 };
        let long = apply_fill(&fresh(), None, &intent(Side::Buy, "0.1", false), d("65000"), Decimal::ZERO).position.unwrap();
        let out = apply_fill(&poor, Some(&long), &intent(Side::Sell, "0.1", true), d("60000"), Decimal::ZERO);
        assert_eq!(out.account.balance, Decimal::ZERO);
        assert_eq!(out.fill.realized_pnl, d("-50"));
    }

    #[test]
    fn a_fee_larger_than_the_balance_never_turns_the_loss_into_a_gain() {
        let poor = PaperAccount { balance: d("1"), realized_pnl: Decimal::ZERO, version: 3 };
        let long = apply_fill(&fresh(), None, &intent(Side::Buy, "0.1", false), d("65000"), Decimal::ZERO).position.unwrap();
        // Closing 6,000 USDT of notional at 0.06 % costs 3.6 USDT of fee, more than the 1 left.
        let out = apply_fill(&poor, Some(&long), &intent(Side::Sell, "0.1", true), d("60000"), d("0.0006"));
        assert_eq!(out.account.balance, Decimal::ZERO);
        assert!(out.fill.realized_pnl <= Decimal::ZERO, "a losing close realized {}", out.fill.realized_pnl);
        assert!(out.fill.fee <= d("1"), "the fee is what the account held: {}", out.fill.fee);
        assert_eq!(out.account.realized_pnl, out.fill.realized_pnl);
        // With room to pay: the whole fee and the whole loss.
        let rich = PaperAccount { balance: d("1000"), realized_pnl: Decimal::ZERO, version: 3 };
        let out = apply_fill(&rich, Some(&long), &intent(Side::Sell, "0.1", true), d("60000"), d("0.0006"));
        assert_eq!((out.fill.fee, out.fill.realized_pnl, out.account.balance), (d("3.6"), d("-500"), d("496.4")));
    }
}
