//! What the table's stream says changed, as the events users see: a bot's state, an order's
//! status, a position opened, changed or closed. Pure: records in, events out, so the broadcast
//! function, its tests and its benchmark map records the same way.

use crate::auth::store::Profile;
use crate::dynamo::Item;
use crate::keys::{self, ChangedItem};
use crate::trading::model::{OrderStatus, PositionSide, Side};
use crate::trading::order_view::Order;
use crate::trading::store::{BotConfig, BotRecord, BotState, LivePosition, OrderRecord, PaperPosition};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A batch of DynamoDB stream records as Lambda's event source mapping delivers it.
#[derive(Debug, Deserialize, Serialize)]
pub struct StreamEvent {
    #[serde(rename = "Records", default)]
    pub records: Vec<StreamRecord>,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct StreamRecord {
    #[serde(rename = "eventName", default)]
    pub event_name: String,
    /// The stream: sequence numbers are unique only within one.
    #[serde(rename = "eventSourceARN", default)]
    pub event_source_arn: String,
    pub dynamodb: StreamChange,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct StreamChange {
    #[serde(default)]
    pub keys: HashMap<String, serde_dynamo::AttributeValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_image: Option<HashMap<String, serde_dynamo::AttributeValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_image: Option<HashMap<String, serde_dynamo::AttributeValue>>,
    #[serde(default)]
    pub sequence_number: String,
}

fn sdk_item(image: &Option<HashMap<String, serde_dynamo::AttributeValue>>) -> Option<Item> {
    image.as_ref().map(|i| serde_dynamo::Item::from(i.clone()).into())
}

fn decode<T: serde::de::DeserializeOwned>(item: Option<Item>) -> Option<T> {
    item.and_then(|i| crate::dynamo::from_item(i).ok())
}

/// A position as the stream shows it: what it is after the change (size 0 once closed).
#[derive(Debug, Clone, PartialEq)]
pub struct PositionChange {
    pub symbol: String,
    pub side: PositionSide,
    pub size: Decimal,
    pub entry_price: Decimal,
}

/// One change a user sees, with the stream record it came from.
#[derive(Debug, Clone)]
pub enum Change {
    Bot {
        state: BotState,
        config: BotConfig,
        updated_at: String,
        stop_reason: Option<String>,
        was: Option<BotState>,
    },
    Order {
        record: Box<OrderRecord>,
        was: Option<OrderStatus>,
    },
    Position(PositionChange),
    /// Sessions ended (a global logout, a revoked session, the account deleted): their
    /// connections are closed.
    Revoked {
        before_ms: Option<i64>,
        sessions: Vec<String>,
        account_gone: bool,
    },
}

#[derive(Debug, Clone)]
pub struct UserChange {
    pub user_id: String,
    /// The stream record's place, unique across streams: `<stream ARN digest>:<sequence number>`.
    pub sequence_number: String,
    pub change: Change,
}

fn record_id(record: &StreamRecord) -> String {
    use sha2::Digest;
    let stream = hex::encode(&sha2::Sha256::digest(record.event_source_arn.as_bytes())[..8]);
    format!("{stream}:{}", record.dynamodb.sequence_number)
}

fn paper_position(p: PaperPosition) -> PositionChange {
    PositionChange { symbol: p.symbol, side: p.side, size: p.size, entry_price: p.entry_price }
}

fn live_position(p: LivePosition) -> PositionChange {
    PositionChange { symbol: p.symbol, side: p.side, size: p.size, entry_price: p.entry_price }
}

/// The changes of one record users see: a bot whose state moved (a strategy's bookkeeping or a
/// stop's round counter is not a change of state), an order whose status moved, a position whose
/// size or entry moved. Anything else is nothing.
pub fn changes_of(record: &StreamRecord) -> Vec<UserChange> {
    let key: Item = serde_dynamo::Item::from(record.dynamodb.keys.clone()).into();
    let Some((user_id, kind)) = keys::changed_item(&key) else { return Vec::new() };
    let (old, new) = (sdk_item(&record.dynamodb.old_image), sdk_item(&record.dynamodb.new_image));
    let change = match kind {
        ChangedItem::Profile => {
            let (was, now): (Option<Profile>, Option<Profile>) = (decode(old), decode(new));
            match (was, now) {
                (Some(_), None) => Some(Change::Revoked { before_ms: None, sessions: Vec::new(), account_gone: true }),
                (was, Some(now)) => {
                    let before = was.as_ref().and_then(|w| w.revoked_before_ms);
                    let before_ms = now.revoked_before_ms.filter(|cutoff| before != Some(*cutoff));
                    let sessions: Vec<String> = now
                        .revoked_sessions
                        .keys()
                        .filter(|sid| !was.as_ref().is_some_and(|w| w.revoked_sessions.contains_key(*sid)))
                        .cloned()
                        .collect();
                    (before_ms.is_some() || !sessions.is_empty()).then_some(Change::Revoked { before_ms, sessions, account_gone: false })
                }
                (None, None) => None,
            }
        }
        ChangedItem::Bot => {
            let (was, now): (Option<BotRecord>, Option<BotRecord>) = (decode(old), decode(new));
            match now {
                Some(bot) if was.as_ref().map(|b| b.state) != Some(bot.state) => Some(Change::Bot {
                    state: bot.state,
                    config: bot.config,
                    updated_at: bot.updated_at,
                    stop_reason: bot.stop_reason,
                    was: was.map(|b| b.state),
                }),
                _ => None,
            }
        }
        ChangedItem::Order => {
            let (was, now): (Option<OrderRecord>, Option<OrderRecord>) = (decode(old), decode(new));
            let filled = |r: &OrderRecord| r.fill.as_ref().map(|f| f.filled_size);
            match now {
                Some(record) if was.as_ref().map(|w| (w.status, filled(w))) != Some((record.status, filled(&record))) => {
                    Some(Change::Order { was: was.map(|w| w.status), record: Box::new(record) })
                }
                _ => None,
            }
        }
        ChangedItem::PaperPosition | ChangedItem::LivePosition => {
            let read = |item: Option<Item>| match kind {
                ChangedItem::PaperPosition => decode::<PaperPosition>(item).map(paper_position),
                _ => decode::<LivePosition>(item).map(live_position),
            };
            let (was, now) = (read(old), read(new));
            match (was, now) {
                (Some(w), None) => Some(Change::Position(PositionChange { size: Decimal::ZERO, ..w })),
                (w, Some(n)) if w.as_ref().map(|w| (w.size, w.entry_price, w.side)) != Some((n.size, n.entry_price, n.side)) => {
                    Some(Change::Position(n))
                }
                _ => None,
            }
        }
    };
    change.map(|change| vec![UserChange { user_id: user_id.to_owned(), sequence_number: record_id(record), change }]).unwrap_or_default()
}

/// Why a position closed or shrank, from the batch's orders of that user and symbol that filled
/// reduce-only (a stop's close, a guardian exit, the trader's close).
pub fn close_reasons(changes: &[UserChange]) -> HashMap<(String, String), String> {
    changes
        .iter()
        .filter_map(|c| match &c.change {
            Change::Order { record, .. } if record.intent.reduce_only && record.status == OrderStatus::Filled => {
                let order = Order::from(record.as_ref());
                Some(((c.user_id.clone(), order.symbol), order.reason))
            }
            _ => None,
        })
        .collect()
}

/// The message a user's connections receive for a change (the README's WebSocket section).
pub fn push_message(change: &Change, marks: &HashMap<String, Decimal>, reason: Option<&str>) -> serde_json::Value {
    match change {
        Change::Revoked { .. } => serde_json::json!({"type": "signed_out"}),
        Change::Bot { state, config, updated_at, stop_reason, .. } => {
            let mut message = serde_json::json!({
                "type": "bot",
                "state": state,
                "is_running": *state == BotState::Running,
                "config": config,
                "updated_at": updated_at,
            });
            if let Some(reason) = stop_reason.as_ref().filter(|_| *state != BotState::Running) {
                message["stop_reason"] = reason.as_str().into();
            }
            message
        }
        Change::Order { record, .. } => {
            let mut message = serde_json::to_value(Order::from(record.as_ref())).unwrap_or_default();
            // The order's own `type` (market, limit) moves to `order_type`: `type` names the message.
            message["order_type"] = message["type"].clone();
            message["type"] = "order".into();
            message
        }
        Change::Position(p) => {
            let mark = marks.get(&p.symbol).copied().unwrap_or(p.entry_price);
            let view = crate::trading::paper::position_at(&p.symbol, p.side, p.size, p.entry_price, mark);
            let mut message = serde_json::json!({
                "type": "position",
                "symbol": view.symbol,
                "side": view.side,
                "size": view.size.normalize().to_string(),
                "entry_price": view.entry_price.normalize().to_string(),
                "mark_price": view.mark_price.normalize().to_string(),
                "unrealized_pnl": view.unrealized_pnl.to_string(),
            });
            if let Some(reason) = reason {
                message["reason"] = reason.into();
            }
            message
        }
    }
}

/// What a Telegram message is about, as `PUT /api/v1/notifications` names the events.
pub fn notification_kind(change: &Change) -> Option<&'static str> {
    match change {
        Change::Bot { .. } => Some("bot_state"),
        Change::Order { record, was } => match record.status {
            OrderStatus::Filled if *was != Some(OrderStatus::Filled) => {
                match record.reason.as_deref().or(record.intent.reason.as_deref()).unwrap_or("manual") {
                    "stop_loss" => Some("stop_loss"),
                    "take_profit" => Some("take_profit"),
                    "trailing_stop" => Some("trailing_stop"),
                    "liquidation" => Some("liquidation"),
                    _ => Some("fill"),
                }
            }
            // An order that reached the exchange and was refused there (or never got there).
            OrderStatus::Rejected if *was != Some(OrderStatus::Rejected) => Some("error"),
            _ => None,
        },
        Change::Position(_) | Change::Revoked { .. } => None,
    }
}

/// The text of a Telegram message: symbol, side, size, price, realized PnL and reason.
pub fn notification_text(change: &Change) -> String {
    match change {
        Change::Bot { state, config, stop_reason, was, .. } => {
            let was = was.map(|w| format!("{w:?} → ").to_lowercase()).unwrap_or_default();
            let why = stop_reason.as_ref().filter(|_| *state != BotState::Running).map(|r| format!(" ({r})")).unwrap_or_default();
            format!("Bot {}: {was}{}{why}", config.symbol, format!("{state:?}").to_lowercase())
        }
        Change::Order { record, .. } => {
            let order = Order::from(record.as_ref());
            let side = match order.side {
                Side::Buy => "buy",
                Side::Sell => "sell",
            };
            let price = order.avg_price.or(order.price).map(|p| p.to_string()).unwrap_or_else(|| "market".into());
            let pnl = record.fill.as_ref().map(|f| f.realized_pnl.normalize()).unwrap_or_default();
            match order.status {
                "rejected" => format!("Order refused: {} {side} {} @ {price} ({})", order.symbol, order.size, order.reason),
                _ => format!(
                    "{} {side} {} @ {price} · realized PnL {pnl} USDT · {}",
                    order.symbol,
                    order.filled_size,
                    order.reason.replace('_', " ")
                ),
            }
        }
        Change::Position(p) => format!("{} {:?} {}", p.symbol, p.side, p.size),
        Change::Revoked { .. } => "signed out".to_owned(),
    }
}
