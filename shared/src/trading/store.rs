//! The trading items of the single table. Everything about one user sits in the `USER#<id>`
//! partition and is read by one strongly consistent Query; state changes are conditional writes
//! on a version.

use crate::auth::store::Profile;
use crate::dynamo::{db_error, from_item, n, query_all, s, to_item, Item, StoreError};
use crate::keys::{self, UserItem};
use crate::trading::history_store::leaves_open_index;
use crate::trading::model::{ExchangeKind, OrderFill, OrderIntent, OrderStatus, PositionSide};
use aws_sdk_dynamodb::types::AttributeValue;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BotState {
    Running,
    Stopping,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BotConfig {
    pub symbol: String,
    pub leverage: u32,
    pub stop_loss_pct: Decimal,
    pub take_profit_pct: Option<Decimal>,
    pub trailing_stop_pct: Option<Decimal>,
    pub max_position_notional: Decimal,
    /// Applied to the symbol on the exchange when the bot starts (Bitget's set-margin-mode).
    #[serde(default)]
    pub margin_mode: crate::trading::model::MarginMode,
    /// What the bot trades on; bots started before strategies existed are manual.
    #[serde(default)]
    pub strategy: crate::trading::strategy::Strategy,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BotRecord {
    pub user_id: String,
    pub state: BotState,
    pub config: BotConfig,
    pub version: u64,
    pub exchange: ExchangeKind,
    pub updated_at: String,
    /// Names the current stop request; the closing orders' client ids derive from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_id: Option<String>,
    /// Closing rounds this stop has claimed so far: the next round's number. Kept here so a
    /// retried stop continues the count instead of reusing an earlier round's client ids.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stop_round: u32,
    /// The credentials a live bot was started with: orders are recorded only while they are the
    /// stored ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_version: Option<u64>,
    /// The account's position mode (`one_way_mode` / `hedge_mode`) as Bitget reported it when
    /// the bot started: what its orders are shaped for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position_mode: Option<String>,
    /// This run of the bot (from its start to its stop): a strategy's client order ids derive
    /// from it, so a later run never replays an earlier one's orders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<BotRun>,
    /// What a strategy keeps between its runs (the last candle acted on, the grid's levels);
    /// written with the bot's version, like every change of the bot.
    #[serde(default, skip_serializing_if = "StrategyState::is_empty")]
    pub strategy_state: StrategyState,
    /// Why the bot stopped when it was not asked to (`stop_loss`, `take_profit`,
    /// `trailing_stop`, `liquidation`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BotRun {
    pub id: String,
    /// When it started (unix ms): a strategy decides only on candles that closed since.
    pub started_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StrategyState {
    /// The close time (unix ms) of the last candle the strategy acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_candle_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grid: Option<crate::trading::grid::GridState>,
}

impl StrategyState {
    pub fn is_empty(&self) -> bool {
        *self == StrategyState::default()
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PaperAccount {
    pub balance: Decimal,
    pub realized_pnl: Decimal,
    pub version: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PaperPosition {
    pub symbol: String,
    pub side: PositionSide,
    pub size: Decimal,
    pub entry_price: Decimal,
    pub leverage: u32,
    pub margin: Decimal,
    pub version: u64,
    /// The best mark seen since opening (highest for a long, lowest for a short): the trailing
    /// stop's reference. It only ever moves in the position's favour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_water: Option<Decimal>,
    /// The client id of the order that opened it from flat: the position's instance.
    #[serde(default)]
    pub position_id: String,
}

impl PaperPosition {
    /// The instance name of this position; positions stored before instances existed get one
    /// derived from what they were opened with, the same for every reader.
    pub fn instance(&self) -> String {
        if self.position_id.is_empty() {
            format!("legacy-{}-{}", self.entry_price.normalize(), self.size.normalize())
        } else {
            self.position_id.clone()
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CredentialsRecord {
    pub exchange: ExchangeKind,
    pub demo: bool,
    /// AES-256-GCM envelope of the key, secret and passphrase; the user id is the associated data.
    pub ciphertext: String,
    pub position_mode: String,
    pub updated_at: String,
    /// Never the same twice for a user (see `credentials::next_version`): a bot records the
    /// version it started with.
    #[serde(default)]
    pub version: u64,
}

/// What became of a credentials save or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialsWrite {
    Written,
    /// Saved or deleted by another request since they were read.
    Changed,
    /// The bot is running or stopping: credentials change only behind a stopped bot.
    BotActive,
    /// The account was deleted meanwhile: nothing may be stored for it.
    AccountGone,
}

/// What became of rotating a signal token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalRotation {
    Rotated,
    /// Another rotation won meanwhile.
    Changed,
    AccountGone,
}

/// What became of writing a started bot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOutcome {
    Started,
    /// The bot record changed since it was read (another device).
    BotChanged,
    /// Credentials were saved or deleted since they were read: the exchange kind was decided on
    /// stale facts.
    CredentialsChanged,
    /// The account was deleted meanwhile: no bot may run for it.
    AccountGone,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderRecord {
    pub user_id: String,
    pub intent: OrderIntent,
    pub status: OrderStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fill: Option<OrderFill>,
    /// Why the guardian closed it, for orders recorded before the reason travelled with the
    /// intent (`intent.reason` now says it for every order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// When a resumed request last took this order to send it (unix ms); a stop waits for any
    /// request that may still be sending it, counted from here or from `created_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at_ms: Option<i64>,
}

impl OrderRecord {
    /// The last moment a request took this order to send it.
    pub fn last_send_ms(&self) -> i64 {
        let recorded = chrono::DateTime::parse_from_rfc3339(&self.created_at).map(|t| t.timestamp_millis()).unwrap_or(0);
        self.sent_at_ms.map_or(recorded, |s| s.max(recorded))
    }

    /// Whether a request may still be sending it (it took it less than `SEND_WINDOW_MS` ago).
    pub fn may_be_in_flight(&self) -> bool {
        chrono::Utc::now().timestamp_millis() - self.last_send_ms() < crate::trading::bot::SEND_WINDOW_MS
    }
}

/// What the store last saw of a live position on the exchange: reconciliation compares it with
/// the exchange (which is the truth), and the trailing stop keeps its high-water mark here.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LivePosition {
    pub symbol: String,
    pub side: PositionSide,
    pub size: Decimal,
    pub entry_price: Decimal,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_water: Option<Decimal>,
    /// The exchange position this mirrors (its instance): a position that went flat and opened
    /// again is another one, and inherits nothing (no trailing high) from this mirror.
    #[serde(default)]
    pub instance: String,
}

impl LivePosition {
    /// Whether this mirror describes `position` (the same instance, or a mirror stored before
    /// instances were recorded).
    pub fn mirrors(&self, position: &crate::trading::model::Position) -> bool {
        self.symbol == position.symbol && self.side == position.side && (self.instance.is_empty() || self.instance == position.instance)
    }
}

/// A paper limit order resting on the simulated book (`RESTING#` item): the guardian fills it
/// once the mark crosses its price, a stop or a cancel removes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RestingOrder {
    pub intent: OrderIntent,
    pub order_id: String,
    pub created_at: String,
}

impl RestingOrder {
    pub fn open_order(&self) -> crate::trading::model::OpenOrder {
        crate::trading::model::OpenOrder {
            order_id: self.order_id.clone(),
            client_order_id: self.intent.client_order_id.clone(),
            symbol: self.intent.symbol.clone(),
            reduce_only: self.intent.reduce_only,
            side: self.intent.side,
            size: self.intent.size,
            price: self.intent.price,
        }
    }
}

/// The operator's kill switch and its last change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KillSwitch {
    pub enabled: bool,
    pub reason: Option<String>,
    pub changed_by: Option<String>,
    pub changed_at: Option<String>,
}

/// What a trading request knows about its caller after one Query.
#[derive(Debug, Default, Clone)]
pub struct UserSnapshot {
    pub profile: Option<Profile>,
    pub bot: Option<BotRecord>,
    pub paper: Option<PaperAccount>,
    pub positions: Vec<PaperPosition>,
    pub live_positions: Vec<LivePosition>,
    pub resting: Vec<RestingOrder>,
    pub credentials: Option<CredentialsRecord>,
}

fn side_name(side: PositionSide) -> &'static str {
    match side {
        PositionSide::Long => "long",
        PositionSide::Short => "short",
    }
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Order-history items read per page when looking for orders in one status.
pub const ORDER_HISTORY_PAGE: i32 = 250;

/// What a resumed request's claim on a recorded order came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// Taken: send it now.
    Claimed,
    /// No longer pending, or another request took it since it was read.
    Settled,
    BotNotRunning,
    TradingHalted,
}

/// What became of an attempt to record an order before sending it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordOutcome {
    /// The key, the order and the conditions held: it may be sent.
    Recorded,
    /// The Idempotency-Key has a record already (a twin request, or a retry).
    KeyTaken,
    /// An order with this client order id exists already.
    OrderIdTaken,
    /// A risk-increasing order, and the bot is not running.
    BotNotRunning,
    /// A risk-increasing order, and the operator's kill switch is on.
    TradingHalted,
}

pub struct TradingStore<'a> {
    pub client: &'a aws_sdk_dynamodb::Client,
    pub table: &'a str,
    /// How long order and fill history is kept (days): its items' TTL.
    pub history_days: u32,
}

impl TradingStore<'_> {
    pub async fn snapshot(&self, user_id: &str) -> Result<UserSnapshot, StoreError> {
        let mut snapshot = UserSnapshot::default();
        let items = query_all(|start| {
            self.client
                .query()
                .table_name(self.table)
                .key_condition_expression("PK = :pk")
                .expression_attribute_values(":pk", s(keys::user_partition(user_id)))
                .consistent_read(true)
                .set_exclusive_start_key(start)
        })
        .await?;
        for item in items {
            match keys::user_item(&item) {
                UserItem::Profile => snapshot.profile = Some(from_item(item)?),
                UserItem::Bot => snapshot.bot = Some(from_item(item)?),
                UserItem::Paper => snapshot.paper = Some(from_item(item)?),
                UserItem::Credentials => snapshot.credentials = Some(from_item(item)?),
                UserItem::PaperPosition => snapshot.positions.push(from_item(item)?),
                UserItem::LivePosition => snapshot.live_positions.push(from_item(item)?),
                UserItem::RestingOrder => snapshot.resting.push(from_item(item)?),
                UserItem::Other => {}
            }
        }
        Ok(snapshot)
    }

    pub async fn bot(&self, user_id: &str) -> Result<Option<BotRecord>, StoreError> {
        crate::dynamo::get_item(self.client, self.table, keys::bot(user_id)).await
    }

    pub async fn kill_switch_on(&self) -> Result<bool, StoreError> {
        Ok(self.kill_switch().await?.enabled)
    }

    /// The operator's kill switch as it was last set (off when it never was).
    pub async fn kill_switch(&self) -> Result<KillSwitch, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(self.table)
            .set_key(Some(keys::kill_switch()))
            .consistent_read(true)
            .send()
            .await
            .map_err(db_error)?;
        let Some(item) = out.item else {
            return Ok(KillSwitch::default());
        };
        let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
        Ok(KillSwitch {
            enabled: item.get("enabled").and_then(|v| v.as_bool().ok().copied()).unwrap_or(false),
            reason: text("reason"),
            changed_by: text("changed_by"),
            // Set before `changed_at` was kept, it carried only `updated_at`.
            changed_at: text("changed_at").or_else(|| text("updated_at")),
        })
    }

    /// Every mark in the table (`make price`: the local stack's market data), in one Query of
    /// their partition.
    pub async fn stored_marks(&self) -> Result<HashMap<String, Decimal>, StoreError> {
        let items = crate::dynamo::partition(self.client, self.table, keys::MARKS_PARTITION.to_owned()).await?;
        Ok(items
            .iter()
            .filter_map(|item| {
                let symbol = item.get("symbol").and_then(|v| v.as_s().ok()).cloned()?;
                let price = item.get("price").and_then(|v| v.as_s().ok()).and_then(|p| p.parse::<Decimal>().ok())?;
                Some((symbol, price))
            })
            .collect())
    }

    /// Makes the stored mirror of a live account's `symbol` (the bot's: the user's other
    /// positions are theirs, never mirrored) equal to what the exchange reports; the differences
    /// found (empty when the store was right).
    pub async fn sync_live_positions(
        &self,
        user_id: &str,
        symbol: &str,
        known: &[LivePosition],
        actual: &[crate::trading::model::Position],
    ) -> Result<Vec<String>, StoreError> {
        let known: Vec<&LivePosition> = known.iter().filter(|k| k.symbol == symbol).collect();
        let actual: Vec<&crate::trading::model::Position> = actual.iter().filter(|p| p.symbol == symbol).collect();
        let mut differences = Vec::new();
        for p in actual.iter().copied() {
            let slot = known.iter().find(|k| k.symbol == p.symbol && k.side == p.side);
            let mirror = slot.filter(|m| m.mirrors(p));
            if mirror.is_some_and(|m| m.size == p.size && m.entry_price == p.entry_price && m.instance == p.instance) {
                continue;
            }
            differences.push(match (slot, mirror) {
                (_, Some(m)) => format!("{} {} size {} → {}", p.symbol, side_name(p.side), m.size, p.size),
                (Some(_), None) => format!("{} {} {} opened again", p.symbol, side_name(p.side), p.size),
                (None, None) => format!("{} {} {} unknown to the store", p.symbol, side_name(p.side), p.size),
            });
            let record = LivePosition {
                symbol: p.symbol.clone(),
                side: p.side,
                size: p.size,
                entry_price: p.entry_price,
                // The trailing high belongs to the instance it was seen on.
                high_water: mirror.and_then(|m| m.high_water),
                instance: p.instance.clone(),
            };
            let mut item = keys::with_key(to_item(&record)?, keys::live_position(user_id, &p.symbol, side_name(p.side)));
            item.extend(keys::active_live_position_index(user_id, &p.symbol, side_name(p.side)));
            self.client.put_item().table_name(self.table).set_item(Some(item)).send().await.map_err(db_error)?;
        }
        for k in known {
            if !actual.iter().any(|p| p.side == k.side) {
                differences.push(format!("{} {} {} gone at the exchange", k.symbol, side_name(k.side), k.size));
                self.client
                    .delete_item()
                    .table_name(self.table)
                    .set_key(Some(keys::live_position(user_id, &k.symbol, side_name(k.side))))
                    .send()
                    .await
                    .map_err(db_error)?;
            }
        }
        Ok(differences)
    }

    pub async fn set_live_high_water(&self, user_id: &str, position: &LivePosition, mark: Decimal) -> Result<(), StoreError> {
        let key = keys::live_position(user_id, &position.symbol, side_name(position.side));
        let mut update = self
            .client
            .update_item()
            .table_name(self.table)
            .set_key(Some(key))
            .update_expression("SET high_water = :mark")
            .expression_attribute_values(":mark", s(mark.to_string()));
        update = match position.high_water {
            None => update.condition_expression("attribute_exists(PK) AND attribute_not_exists(high_water)"),
            Some(old) => update.condition_expression("high_water = :old").expression_attribute_values(":old", s(old.to_string())),
        };
        match update.send().await {
            Ok(_) => Ok(()),
            Err(e) if crate::dynamo::is_condition_failure(&e) => Ok(()),
            Err(e) => Err(db_error(e)),
        }
    }

    /// Sets a stored mark price (`make price`; the paper exchange's market data locally).
    pub async fn set_mark(&self, symbol: &str, price: Decimal) -> Result<(), StoreError> {
        let item = keys::with_key(
            HashMap::from([
                ("symbol".to_owned(), s(symbol)),
                ("price".to_owned(), s(price.to_string())),
                ("updated_at".to_owned(), s(now_rfc3339())),
            ]),
            keys::mark_price(symbol),
        );
        self.client.put_item().table_name(self.table).set_item(Some(item)).send().await.map(|_| ()).map_err(db_error)
    }

    /// The operator's kill switch: on, it halts starts and risk-increasing orders. Who set it
    /// and why are kept with it (`GET /api/v1/admin/kill-switch` shows them).
    pub async fn set_kill_switch(&self, enabled: bool, reason: &str, changed_by: &str) -> Result<KillSwitch, StoreError> {
        let changed_at = now_rfc3339();
        let item = keys::with_key(
            HashMap::from([
                ("enabled".to_owned(), AttributeValue::Bool(enabled)),
                ("reason".to_owned(), s(reason)),
                ("changed_by".to_owned(), s(changed_by)),
                ("changed_at".to_owned(), s(changed_at.clone())),
                ("updated_at".to_owned(), s(changed_at.clone())),
            ]),
            keys::kill_switch(),
        );
        self.client.put_item().table_name(self.table).set_item(Some(item)).send().await.map_err(db_error)?;
        Ok(KillSwitch { enabled, reason: Some(reason.to_owned()), changed_by: Some(changed_by.to_owned()), changed_at: Some(changed_at) })
    }

    pub async fn order(&self, user_id: &str, client_oid: &str) -> Result<Option<OrderRecord>, StoreError> {
        crate::dynamo::get_item(self.client, self.table, keys::order(user_id, client_oid)).await
    }

    /// Records an order and its Idempotency-Key before the order is sent, in one transaction.
    /// A risk-increasing order is also conditioned on the bot running and the kill switch being
    /// off, so nothing recorded after a stop or a halt began can be sent.
    pub async fn record_order(
        &self,
        user_id: &str,
        key: &str,
        record: &crate::trading::idempotency::IdempotencyRecord,
        intent: &OrderIntent,
        bot: &BotRecord,
    ) -> Result<RecordOutcome, StoreError> {
        use aws_sdk_dynamodb::types::{Put, TransactWriteItem};
        let (order, item) = self.new_order_item(user_id, intent)?;
        let put_order =
            Put::builder().table_name(self.table).set_item(Some(item)).condition_expression("attribute_not_exists(PK)").build()?;
        let [history, symbol_history] = self.order_pointer_puts(user_id, &order)?;
        let mut request = self
            .client
            .transact_write_items()
            .transact_items(self.idempotency_put(user_id, key, record)?)
            .transact_items(TransactWriteItem::builder().put(put_order).build());
        if !intent.reduce_only {
            let [running, not_halted] = self.may_trade_checks(user_id, bot)?;
            request = request.transact_items(running).transact_items(not_halted);
        }
        // The pointers go last: they have no condition, and the reasons are read by position.
        request = request.transact_items(history).transact_items(symbol_history);
        // The cancellation reasons come in the order the items were given.
        let outcome = crate::dynamo::transact(request).await?;
        Ok(if outcome.written() {
            RecordOutcome::Recorded
        } else if outcome.failed(0) {
            RecordOutcome::KeyTaken
        } else if outcome.failed(1) {
            RecordOutcome::OrderIdTaken
        } else if outcome.failed(2) {
            RecordOutcome::BotNotRunning
        } else {
            RecordOutcome::TradingHalted
        })
    }

    /// The conditions under which a risk-increasing order may go out: the bot running, on the
    /// exchange kind and with the credentials the order was judged for, and no halt.
    fn may_trade_checks(&self, user_id: &str, bot: &BotRecord) -> Result<[aws_sdk_dynamodb::types::TransactWriteItem; 2], StoreError> {
        use aws_sdk_dynamodb::types::{ConditionCheck, TransactWriteItem};
        {
            let mut running = ConditionCheck::builder()
                .table_name(self.table)
                .set_key(Some(keys::bot(user_id)))
                .expression_attribute_names("#state", "state")
                .expression_attribute_values(":running", s("running"))
                .expression_attribute_values(":kind", serde_dynamo::to_attribute_value(bot.exchange).map_err(StoreError::from)?);
            let credentials = match bot.credentials_version {
                Some(v) => {
                    running = running.expression_attribute_values(":cv", n(v));
                    "credentials_version = :cv"
                }
                None => "attribute_not_exists(credentials_version)",
            };
            // The run the order was judged for: a stop and a restart in between end it.
            let run = match &bot.run {
                Some(r) => {
                    running = running.expression_attribute_names("#run", "run").expression_attribute_values(":run", s(&r.id));
                    "#run.id = :run"
                }
                None => "attribute_not_exists(#run)",
            };
            if bot.run.is_none() {
                running = running.expression_attribute_names("#run", "run");
            }
            running = running.condition_expression(format!("#state = :running AND exchange = :kind AND {credentials} AND {run}"));
            let running = running.build().map_err(StoreError::from)?;
            let not_halted = ConditionCheck::builder()
                .table_name(self.table)
                .set_key(Some(keys::kill_switch()))
                .condition_expression("attribute_not_exists(PK) OR enabled = :off")
                .expression_attribute_values(":off", AttributeValue::Bool(false))
                .build()
                .map_err(StoreError::from)?;
            Ok([
                TransactWriteItem::builder().condition_check(running).build(),
                TransactWriteItem::builder().condition_check(not_halted).build(),
            ])
        }
    }

    /// The condition "still pending, and nobody took it to send since `order` was read", with the
    /// `:read` value it needs (besides `#status` and `:pending`).
    fn unsent_since_read(order: &OrderRecord) -> (&'static str, Option<AttributeValue>) {
        match order.sent_at_ms {
            None => ("#status = :pending AND attribute_not_exists(sent_at_ms)", None),
            Some(at) => ("#status = :pending AND sent_at_ms = :read", Some(n(at))),
        }
    }

    /// Takes a recorded, never-placed order to send it again (a resumed Idempotency-Key), in one
    /// transaction with the conditions of a new order: so a stop that began meanwhile (or a halt)
    /// stops it, and the stop sees that a request is sending it now.
    pub async fn claim_unsent_order(&self, user_id: &str, order: &OrderRecord, bot: &BotRecord) -> Result<ClaimOutcome, StoreError> {
        use aws_sdk_dynamodb::types::{TransactWriteItem, Update};
        let update = Update::builder()
            .table_name(self.table)
            .set_key(Some(keys::order(user_id, &order.intent.client_order_id)))
            .update_expression("SET sent_at_ms = :now, updated_at = :at")
            .expression_attribute_values(":now", n(chrono::Utc::now().timestamp_millis()))
            .expression_attribute_values(":at", s(now_rfc3339()))
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":pending", s("pending"));
        let (condition, read) = Self::unsent_since_read(order);
        let update = match read {
            Some(v) => update.expression_attribute_values(":read", v),
            None => update,
        };
        let update = update.condition_expression(condition).build()?;
        let mut request = self.client.transact_write_items().transact_items(TransactWriteItem::builder().update(update).build());
        if !order.intent.reduce_only {
            let [running, not_halted] = self.may_trade_checks(user_id, bot)?;
            request = request.transact_items(running).transact_items(not_halted);
        }
        let outcome = crate::dynamo::transact(request).await?;
        Ok(if outcome.written() {
            ClaimOutcome::Claimed
        } else if outcome.failed(0) {
            ClaimOutcome::Settled
        } else if outcome.failed(1) {
            ClaimOutcome::BotNotRunning
        } else {
            ClaimOutcome::TradingHalted
        })
    }

    /// Settles a recorded order that was never placed as rejected, unless a request took it to
    /// send since it was read (`false` then: it may be on its way).
    pub async fn reject_unsent_order(&self, user_id: &str, order: &OrderRecord) -> Result<bool, StoreError> {
        let update = self
            .client
            .update_item()
            .table_name(self.table)
            .set_key(Some(keys::order(user_id, &order.intent.client_order_id)))
            .update_expression("SET #status = :rejected, fill = :fill, updated_at = :at REMOVE GSI2PK, GSI2SK")
            .expression_attribute_values(":rejected", serde_dynamo::to_attribute_value(OrderStatus::Rejected)?)
            .expression_attribute_values(":fill", serde_dynamo::to_attribute_value(OrderFill::rejected())?)
            .expression_attribute_values(":at", s(now_rfc3339()))
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":pending", s("pending"));
        let (condition, read) = Self::unsent_since_read(order);
        let update = match read {
            Some(v) => update.expression_attribute_values(":read", v),
            None => update,
        };
        crate::dynamo::written(update.condition_expression(condition).send().await)
    }

    /// Records an order before it is sent, with its history pointers. `Ok(false)`: a record with
    /// this client id exists.
    pub async fn record_pending_order(&self, user_id: &str, intent: &OrderIntent) -> Result<bool, StoreError> {
        use aws_sdk_dynamodb::types::{Put, TransactWriteItem};
        let (record, item) = self.new_order_item(user_id, intent)?;
        let put = Put::builder().table_name(self.table).set_item(Some(item)).condition_expression("attribute_not_exists(PK)").build()?;
        let [history, symbol_history] = self.order_pointer_puts(user_id, &record)?;
        let request = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(put).build())
            .transact_items(history)
            .transact_items(symbol_history);
        Ok(crate::dynamo::transact(request).await?.written())
    }

    /// Stores what the exchange answered for a recorded order.
    /// An order this service never recorded (one placed by hand on the exchange) is left alone:
    /// no half-made record is created for it.
    pub async fn complete_order(&self, user_id: &str, client_oid: &str, fill: &OrderFill) -> Result<(), StoreError> {
        let update = self
            .client
            .update_item()
            .table_name(self.table)
            .set_key(Some(keys::order(user_id, client_oid)))
            .update_expression(format!("SET #status = :status, fill = :fill, updated_at = :now{}", leaves_open_index(fill.status)))
            // A final answer settles the order whatever it was; an answer that is not final
            // never reopens one that ended meanwhile.
            .condition_expression(if leaves_open_index(fill.status).is_empty() {
                "attribute_exists(PK) AND #status IN (:pending, :open)"
            } else {
                "attribute_exists(PK)"
            })
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":status", serde_dynamo::to_attribute_value(fill.status).map_err(StoreError::from)?)
            .expression_attribute_values(":fill", serde_dynamo::to_attribute_value(fill).map_err(StoreError::from)?)
            .expression_attribute_values(":now", s(now_rfc3339()));
        let update = if leaves_open_index(fill.status).is_empty() {
            update.expression_attribute_values(":pending", s("pending")).expression_attribute_values(":open", s("open"))
        } else {
            update
        };
        if crate::dynamo::written(update.send().await)? {
            self.point_to_order(user_id, client_oid, fill).await;
        }
        Ok(())
    }

    /// Stores what the exchange says of a live order that is not final in the store: never over
    /// a final status (a cancel or a stop may have settled it meanwhile), never as `pending`
    /// (what the exchange could not say yet). False when the record was final already.
    pub async fn refresh_order(&self, user_id: &str, client_oid: &str, fill: &OrderFill) -> Result<bool, StoreError> {
        if fill.status == OrderStatus::Pending {
            return Ok(false);
        }
        let update = self
            .client
            .update_item()
            .table_name(self.table)
            .set_key(Some(keys::order(user_id, client_oid)))
            .update_expression(format!("SET #status = :status, fill = :fill, updated_at = :now{}", leaves_open_index(fill.status)))
            .condition_expression("#status IN (:pending, :open)")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":status", serde_dynamo::to_attribute_value(fill.status).map_err(StoreError::from)?)
            .expression_attribute_values(":fill", serde_dynamo::to_attribute_value(fill).map_err(StoreError::from)?)
            .expression_attribute_values(":pending", s("pending"))
            .expression_attribute_values(":open", s("open"))
            .expression_attribute_values(":now", s(now_rfc3339()));
        let written = crate::dynamo::written(update.send().await)?;
        if written {
            self.point_to_order(user_id, client_oid, fill).await;
        }
        Ok(written)
    }

    /// A live order is found again by the id the exchange gave it (paper ids carry the client
    /// id). Best effort: without it the order is still found by its client order id.
    async fn point_to_order(&self, user_id: &str, client_oid: &str, fill: &OrderFill) {
        if fill.order_id.is_empty() || fill.order_id.starts_with(crate::trading::paper::ORDER_ID_PREFIX) {
            return;
        }
        let now = chrono::Utc::now().timestamp_millis();
        let pointer = HashMap::from([("client_order_id".to_owned(), s(client_oid)), self.history_ttl(now)]);
        let put = self
            .client
            .put_item()
            .table_name(self.table)
            .set_item(Some(keys::with_key(pointer, keys::order_id_pointer(user_id, &fill.order_id))))
            .send()
            .await;
        if let Err(e) = put {
            tracing::warn!(error = %crate::error::ApiError::from(db_error(e)).chain(), "a live order's id pointer was not written");
        }
    }

    /// The client order id of the user's live order with this exchange id, if it is known.
    pub async fn client_order_id_of(&self, user_id: &str, exchange_order_id: &str) -> Result<Option<String>, StoreError> {
        #[derive(Deserialize)]
        struct Pointer {
            client_order_id: String,
        }
        let pointer: Option<Pointer> =
            crate::dynamo::get_item(self.client, self.table, keys::order_id_pointer(user_id, exchange_order_id)).await?;
        Ok(pointer.map(|p| p.client_order_id))
    }

    /// Orders still `pending` (sent or about to be, outcome unknown), for a stop to settle.
    pub async fn pending_orders(&self, user_id: &str) -> Result<Vec<OrderRecord>, StoreError> {
        self.orders_with_status(user_id, OrderStatus::Pending).await
    }

    /// Every order of the user in `status`, through every page of their order history (pages of
    /// `ORDER_HISTORY_PAGE` items read, whatever DynamoDB's 1 MB page limit would allow).
    pub async fn orders_with_status(&self, user_id: &str, status: OrderStatus) -> Result<Vec<OrderRecord>, StoreError> {
        let status: AttributeValue = serde_dynamo::to_attribute_value(status).map_err(StoreError::from)?;
        let items = query_all(|start| {
            self.client
                .query()
                .table_name(self.table)
                .key_condition_expression("PK = :pk AND begins_with(SK, :records)")
                .filter_expression("#status = :status")
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":pk", s(keys::order_partition(user_id)))
                .expression_attribute_values(":records", s("ORDER#"))
                .expression_attribute_values(":status", status.clone())
                .limit(ORDER_HISTORY_PAGE)
                .consistent_read(true)
                .set_exclusive_start_key(start)
        })
        .await?;
        items.into_iter().map(from_item).collect()
    }

    /// Cancels a resting paper order: its record `canceled` and its `RESTING#` item gone, in one
    /// transaction. `false` when it was no longer open (filled or canceled meanwhile).
    pub async fn cancel_resting_order(&self, user_id: &str, client_oid: &str) -> Result<bool, StoreError> {
        use aws_sdk_dynamodb::types::{Delete, TransactWriteItem, Update};
        let order = Update::builder()
            .table_name(self.table)
            .set_key(Some(keys::order(user_id, client_oid)))
            .update_expression("SET #status = :canceled, fill.#status = :canceled, updated_at = :now REMOVE GSI2PK, GSI2SK")
            .condition_expression("#status = :open")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":canceled", s("canceled"))
            .expression_attribute_values(":open", s("open"))
            .expression_attribute_values(":now", s(now_rfc3339()))
            .build()
            .map_err(StoreError::from)?;
        let resting = Delete::builder()
            .table_name(self.table)
            .set_key(Some(keys::resting_order(user_id, client_oid)))
            .build()
            .map_err(StoreError::from)?;
        let request = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().update(order).build())
            .transact_items(TransactWriteItem::builder().delete(resting).build());
        Ok(crate::dynamo::transact(request).await?.written())
    }

    /// The user a signal token (by hash) belongs to.
    pub async fn signal_owner(&self, token_hash: &str) -> Result<Option<String>, StoreError> {
        #[derive(Deserialize)]
        struct Owner {
            user_id: String,
        }
        let owner: Option<Owner> = crate::dynamo::get_item(self.client, self.table, keys::signal_token(token_hash)).await?;
        Ok(owner.map(|o| o.user_id))
    }

    /// Makes `new_hash` the user's signal token and deletes the one before it, in one transaction
    /// (the old token answers 404 from the moment the new one exists).
    pub async fn rotate_signal_token(&self, user_id: &str, new_hash: &str) -> Result<SignalRotation, StoreError> {
        use aws_sdk_dynamodb::types::{Delete, Put, TransactWriteItem};
        #[derive(Deserialize)]
        struct Pointer {
            hash: String,
        }
        let old: Option<Pointer> = crate::dynamo::get_item(self.client, self.table, keys::signal_pointer(user_id)).await?;
        let lookup = keys::with_key(HashMap::from([("user_id".to_owned(), s(user_id))]), keys::signal_token(new_hash));
        let pointer = keys::with_key(HashMap::from([("hash".to_owned(), s(new_hash))]), keys::signal_pointer(user_id));
        let pointer = Put::builder().table_name(self.table).set_item(Some(pointer));
        let pointer = match &old {
            None => pointer.condition_expression("attribute_not_exists(PK)"),
            Some(old) => pointer
                .condition_expression("#h = :old")
                .expression_attribute_names("#h", "hash")
                .expression_attribute_values(":old", s(&old.hash)),
        };
        let mut request = self
            .client
            .transact_write_items()
            .transact_items(
                TransactWriteItem::builder()
                    .put(
                        Put::builder()
                            .table_name(self.table)
                            .set_item(Some(lookup))
                            .condition_expression("attribute_not_exists(PK)")
                            .build()?,
                    )
                    .build(),
            )
            .transact_items(TransactWriteItem::builder().put(pointer.build()?).build())
            .transact_items(self.account_exists_check(user_id)?);
        if let Some(old) = &old {
            let delete = Delete::builder().table_name(self.table).set_key(Some(keys::signal_token(&old.hash))).build()?;
            request = request.transact_items(TransactWriteItem::builder().delete(delete).build());
        }
        let outcome = crate::dynamo::transact(request).await?;
        Ok(if outcome.written() {
            SignalRotation::Rotated
        } else if outcome.failed(2) {
            SignalRotation::AccountGone
        } else {
            SignalRotation::Changed
        })
    }

    /// The account still exists: a write decided before a deletion committed must not outlive it.
    fn account_exists_check(&self, user_id: &str) -> Result<aws_sdk_dynamodb::types::TransactWriteItem, StoreError> {
        let check = aws_sdk_dynamodb::types::ConditionCheck::builder()
            .table_name(self.table)
            .set_key(Some(keys::profile(user_id)))
            .condition_expression("attribute_exists(PK)")
            .build()
            .map_err(StoreError::from)?;
        Ok(aws_sdk_dynamodb::types::TransactWriteItem::builder().condition_check(check).build())
    }

    /// The condition "the bot is stopped (or was never started)", on the bot item.
    fn bot_stopped_check(&self, user_id: &str) -> Result<aws_sdk_dynamodb::types::TransactWriteItem, StoreError> {
        let check = aws_sdk_dynamodb::types::ConditionCheck::builder()
            .table_name(self.table)
            .set_key(Some(keys::bot(user_id)))
            .condition_expression("attribute_not_exists(PK) OR #state = :stopped")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":stopped", s("stopped"))
            .build()
            .map_err(StoreError::from)?;
        Ok(aws_sdk_dynamodb::types::TransactWriteItem::builder().condition_check(check).build())
    }

    /// Saves credentials over the version `read` (None: there were none), in one transaction
    /// with the condition that the bot is stopped.
    pub async fn save_credentials(
        &self,
        user_id: &str,
        record: &CredentialsRecord,
        read: Option<u64>,
    ) -> Result<CredentialsWrite, StoreError> {
        let item = keys::with_key(to_item(record)?, keys::credentials(user_id));
        let put = aws_sdk_dynamodb::types::Put::builder().table_name(self.table).set_item(Some(item));
        let put = match read {
            None => put.condition_expression("attribute_not_exists(PK)"),
            // Saved before versions existed: the item has none (it reads as 0).
            Some(0) => put.condition_expression("attribute_exists(PK) AND attribute_not_exists(version)"),
            Some(v) => put.condition_expression("version = :read").expression_attribute_values(":read", n(v)),
        };
        let put = put.build()?;
        let request = self
            .client
            .transact_write_items()
            .transact_items(aws_sdk_dynamodb::types::TransactWriteItem::builder().put(put).build())
            .transact_items(self.bot_stopped_check(user_id)?)
            .transact_items(self.account_exists_check(user_id)?);
        let outcome = crate::dynamo::transact(request).await?;
        Ok(if outcome.written() {
            CredentialsWrite::Written
        } else if outcome.failed(2) {
            CredentialsWrite::AccountGone
        } else if outcome.failed(1) {
            CredentialsWrite::BotActive
        } else {
            CredentialsWrite::Changed
        })
    }

    /// Deletes credentials, in one transaction with the condition that the bot is stopped.
    pub async fn delete_credentials(&self, user_id: &str) -> Result<CredentialsWrite, StoreError> {
        let delete = aws_sdk_dynamodb::types::Delete::builder()
            .table_name(self.table)
            .set_key(Some(keys::credentials(user_id)))
            .build()
            .map_err(StoreError::from)?;
        let request = self
            .client
            .transact_write_items()
            .transact_items(aws_sdk_dynamodb::types::TransactWriteItem::builder().delete(delete).build())
            .transact_items(self.bot_stopped_check(user_id)?);
        Ok(if crate::dynamo::transact(request).await?.written() { CredentialsWrite::Written } else { CredentialsWrite::BotActive })
    }

    /// Writes a started bot if the stored one still has `expected_version` (None: must not
    /// exist), and the credentials are still those it was decided on: none for a paper bot, the
    /// version it records for a live one.
    pub async fn start_bot(&self, bot: &BotRecord, expected_version: Option<u64>) -> Result<StartOutcome, StoreError> {
        use aws_sdk_dynamodb::types::{ConditionCheck, Put, TransactWriteItem};
        let mut item: Item = keys::with_key(to_item(bot)?, keys::bot(&bot.user_id));
        item.extend(keys::active_bot_index(&bot.user_id));
        let mut put = Put::builder().table_name(self.table).set_item(Some(item));
        put = match expected_version {
            None => put.condition_expression("attribute_not_exists(PK)"),
            Some(v) => put.condition_expression("version = :v").expression_attribute_values(":v", n(v)),
        };
        let mut check = ConditionCheck::builder().table_name(self.table).set_key(Some(keys::credentials(&bot.user_id)));
        check = match (bot.exchange, bot.credentials_version) {
            (ExchangeKind::Bitget, Some(0)) => check.condition_expression("attribute_exists(PK) AND attribute_not_exists(version)"),
            (ExchangeKind::Bitget, Some(v)) => check.condition_expression("version = :cv").expression_attribute_values(":cv", n(v)),
            // A live bot without a credentials version was decided on nothing: never written.
            (ExchangeKind::Bitget, None) => check.condition_expression("attribute_exists(PK) AND attribute_not_exists(PK)"),
            (ExchangeKind::Paper, _) => check.condition_expression("attribute_not_exists(PK)"),
        };
        let request = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(put.build().map_err(StoreError::from)?).build())
            .transact_items(TransactWriteItem::builder().condition_check(check.build().map_err(StoreError::from)?).build())
            .transact_items(self.account_exists_check(&bot.user_id)?);
        let outcome = crate::dynamo::transact(request).await?;
        Ok(if outcome.written() {
            StartOutcome::Started
        } else if outcome.failed(2) {
            StartOutcome::AccountGone
        } else if outcome.failed(0) {
            StartOutcome::BotChanged
        } else {
            StartOutcome::CredentialsChanged
        })
    }

    /// Writes a bot record if the stored one still has `expected_version` (None: must not exist).
    /// Running and stopping bots carry the active-bots index attributes; stopped ones do not.
    pub async fn put_bot(&self, bot: &BotRecord, expected_version: Option<u64>) -> Result<bool, StoreError> {
        let mut item: Item = keys::with_key(to_item(bot)?, keys::bot(&bot.user_id));
        if bot.state != BotState::Stopped {
            item.extend(keys::active_bot_index(&bot.user_id));
        }
        let mut put = self.client.put_item().table_name(self.table).set_item(Some(item));
        put = match expected_version {
            None => put.condition_expression("attribute_not_exists(PK)"),
            Some(v) => put.condition_expression("version = :v").expression_attribute_values(":v", n(v)),
        };
        crate::dynamo::written(put.send().await)
    }

    /// Moves a position's high-water mark to `mark`, only in the position's favour, and only if
    /// nobody moved it since we read it (a compare-and-set on the old value and the version).
    pub async fn raise_high_water(&self, user_id: &str, position: &PaperPosition, mark: Decimal) -> Result<(), StoreError> {
        let favourable = match (position.side, position.high_water) {
            (_, None) => true,
            (PositionSide::Long, Some(old)) => mark > old,
            (PositionSide::Short, Some(old)) => mark < old,
        };
        if !favourable {
            return Ok(());
        }
        let mut update = self
            .client
            .update_item()
            .table_name(self.table)
            .set_key(Some(keys::paper_position(user_id, &position.symbol)))
            .update_expression("SET high_water = :mark")
            .expression_attribute_values(":mark", s(mark.to_string()))
            .expression_attribute_values(":v", n(position.version));
        update = match position.high_water {
            None => update.condition_expression("version = :v AND attribute_not_exists(high_water)"),
            Some(old) => {
                update.condition_expression("version = :v AND high_water = :old").expression_attribute_values(":old", s(old.to_string()))
            }
        };
        match update.send().await {
            Ok(_) => Ok(()),
            Err(e) if crate::dynamo::is_condition_failure(&e) => Ok(()),
            Err(e) => Err(db_error(e)),
        }
    }

    /// Where a guardian shard's sweep stopped last (None: at the start).
    pub async fn guardian_cursor(&self, cursor_key: &keys::Key) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(self.table)
            .set_key(Some(cursor_key.clone()))
            .consistent_read(true)
            .send()
            .await
            .map_err(db_error)?;
        Ok(out.item.and_then(|i| i.get("cursor").and_then(|c| c.as_m().ok()).cloned()))
    }

    /// Saves where a guardian shard's sweep goes on next run (None: from the start).
    pub async fn save_guardian_cursor(&self, cursor_key: &keys::Key, cursor: Option<Item>) -> Result<(), StoreError> {
        match cursor {
            Some(c) => {
                let item = keys::with_key(Item::from([("cursor".to_owned(), AttributeValue::M(c))]), cursor_key.clone());
                self.client.put_item().table_name(self.table).set_item(Some(item)).send().await.map_err(db_error)?;
            }
            None => {
                self.client.delete_item().table_name(self.table).set_key(Some(cursor_key.clone())).send().await.map_err(db_error)?;
            }
        }
        Ok(())
    }

    /// One page of a guardian shard's slice of the active-bots index: bots, their paper positions,
    /// resting orders and live mirrors, in user order.
    pub async fn active_index_page(&self, partition: &str, start: Option<Item>, limit: i32) -> Result<IndexPage, StoreError> {
        let out = self
            .client
            .query()
            .table_name(self.table)
            .index_name(keys::GSI1_NAME)
            .key_condition_expression("GSI1PK = :active")
            .expression_attribute_values(":active", s(partition))
            .limit(limit)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(db_error)?;
        let entries = out
            .items
            .unwrap_or_default()
            .into_iter()
            .map(|item| {
                let user_id = keys::index_owner(&item).unwrap_or_default().to_owned();
                let position = keys::index_position(&item);
                let record = match keys::user_item(&item) {
                    UserItem::Bot => from_item(item).map(|b| IndexRecord::Bot(Box::new(b))),
                    UserItem::PaperPosition => from_item(item).map(IndexRecord::PaperPosition),
                    UserItem::LivePosition => from_item(item).map(IndexRecord::LivePosition),
                    UserItem::RestingOrder => from_item(item).map(IndexRecord::RestingOrder),
                    _ => Ok(IndexRecord::Other),
                };
                IndexEntry { user_id, position, record }
            })
            .collect();
        Ok(IndexPage { entries, next_start: out.last_evaluated_key })
    }
}

/// A page of the active-bots index and where the next one starts (None: it was the last).
pub struct IndexPage {
    pub entries: Vec<IndexEntry>,
    pub next_start: Option<Item>,
}

/// One item of the active-bots index, decoded.
pub struct IndexEntry {
    pub user_id: String,
    /// Its key attributes: a cursor that stops here goes on after it.
    pub position: Item,
    /// The record, or why it did not decode.
    pub record: Result<IndexRecord, StoreError>,
}

pub enum IndexRecord {
    Bot(Box<BotRecord>),
    PaperPosition(PaperPosition),
    LivePosition(LivePosition),
    RestingOrder(RestingOrder),
    Other,
}
