//! The paper account's writes: each fill, and each limit order put to rest, is one transaction
//! over the account, the position, the order record (and the `RESTING#` item), owned here with
//! the rest of the trading store. Outcomes come back named, never as positions in a list.

use crate::dynamo::{n, s, to_item, StoreError};
use crate::keys;
use crate::trading::model::{OrderFill, OrderIntent};
use crate::trading::store::{PaperAccount, PaperPosition, RestingOrder, TradingStore};
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Delete, Put, TransactWriteItem, Update};

/// One fill of a paper order: the account and position as read and as they become.
pub struct PaperFill<'a> {
    pub intent: &'a OrderIntent,
    pub account_before: &'a PaperAccount,
    pub account_after: &'a PaperAccount,
    pub position_before: Option<&'a PaperPosition>,
    pub position_after: Option<&'a PaperPosition>,
    pub fill: &'a OrderFill,
    /// A risk-increasing fill goes in only while the bot runs.
    pub require_running_bot: bool,
    /// It settles an order that rested (`open`, its `RESTING#` item deleted with it) rather than
    /// a new one (`pending`).
    pub from_resting: bool,
    /// The Idempotency-Key and the body of its answer (201), written with the fill.
    pub answer: Option<(&'a str, String)>,
}

/// What a paper write came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaperWrite {
    Written,
    /// The order was settled already (filled by an earlier try, or canceled): nothing written.
    OrderSettled,
    /// The order was put to rest already by an earlier try.
    AlreadyResting,
    BotNotRunning,
    /// Another order of the user moved the account or the position since they were read.
    AccountMoved,
    /// The key's answer could not go with it (its record gone or answered): nothing written;
    /// the write goes again without it, and the caller answers the key first-writer-wins.
    AnswerRefused,
}

impl TradingStore<'_> {
    /// Writes one paper fill, conditioned on the account and position being as read.
    pub async fn write_paper_fill(&self, user_id: &str, f: PaperFill<'_>) -> Result<PaperWrite, StoreError> {
        let mut items = Vec::new();
        let account_item = keys::with_key(to_item(f.account_after)?, keys::paper_account(user_id));
        let mut put = Put::builder().table_name(self.table).set_item(Some(account_item));
        put = match f.account_before.version {
            0 => put.condition_expression("attribute_not_exists(PK)"),
            v => put.condition_expression("version = :v").expression_attribute_values(":v", n(v)),
        };
        items.push(TransactWriteItem::builder().put(put.build()?).build());

        let position_key = keys::paper_position(user_id, &f.intent.symbol);
        match (f.position_after, f.position_before) {
            (Some(p), before) => {
                let mut item = keys::with_key(to_item(p)?, position_key);
                item.extend(keys::active_position_index(user_id, &p.symbol));
                let put = Put::builder().table_name(self.table).set_item(Some(item));
                let put = match before {
                    None => put.condition_expression("attribute_not_exists(PK)"),
                    Some(b) => put.condition_expression("version = :v").expression_attribute_values(":v", n(b.version)),
                };
                items.push(TransactWriteItem::builder().put(put.build()?).build());
            }
            (None, Some(b)) => {
                let delete = Delete::builder()
                    .table_name(self.table)
                    .set_key(Some(position_key))
                    .condition_expression("version = :v")
                    .expression_attribute_values(":v", n(b.version));
                items.push(TransactWriteItem::builder().delete(delete.build()?).build());
            }
            (None, None) => {}
        }

        // The order's `updated_at` is its fill's time to the millisecond: what `ops
        // backfill-history` reads an older order's fill time from, so it names the same item.
        let filled_ms = chrono::Utc::now().timestamp_millis();
        let order_index = items.len();
        let settled_from = if f.from_resting { "open" } else { "pending" };
        items.push(TransactWriteItem::builder().update(self.settle_order(user_id, f.intent, f.fill, settled_from, filled_ms)?).build());
        if f.from_resting {
            let delete = Delete::builder().table_name(self.table).set_key(Some(keys::resting_order(user_id, &f.intent.client_order_id)));
            items.push(TransactWriteItem::builder().delete(delete.build()?).build());
        }
        let bot_index = items.len();
        if f.require_running_bot {
            items.push(TransactWriteItem::builder().condition_check(self.bot_running(user_id)?).build());
        }
        // The fill itself, in the same transaction: paper history is complete by construction.
        if let Some(record) = crate::trading::history_store::FillRecord::of_paper_order(f.intent, f.fill, filled_ms) {
            items.extend(self.fill_puts(user_id, &record, false)?);
        }
        let answer_index = items.len();
        if let Some((key, body)) = &f.answer {
            items.push(TransactWriteItem::builder().update(self.answer_update(user_id, key, 201, body)?).build());
        }
        let outcome = crate::dynamo::transact(self.client.transact_write_items().set_transact_items(Some(items))).await?;
        Ok(if outcome.written() {
            PaperWrite::Written
        } else if outcome.failed(order_index) {
            PaperWrite::OrderSettled
        } else if f.require_running_bot && outcome.failed(bot_index) {
            PaperWrite::BotNotRunning
        } else if f.answer.is_some() && outcome.failed(answer_index) {
            PaperWrite::AnswerRefused
        } else {
            PaperWrite::AccountMoved
        })
    }

    /// Puts a paper limit order that is not marketable to rest: its record `open` and its
    /// `RESTING#` item, in one transaction (a risk-increasing one only while the bot runs).
    pub async fn rest_paper_order(
        &self,
        user_id: &str,
        resting: &RestingOrder,
        fill: &OrderFill,
        require_running_bot: bool,
        answer: Option<(&str, String)>,
    ) -> Result<PaperWrite, StoreError> {
        let intent = &resting.intent;
        let mut item = keys::with_key(to_item(resting)?, keys::resting_order(user_id, &intent.client_order_id));
        item.extend(keys::active_resting_index(user_id, &intent.client_order_id));
        let put = Put::builder().table_name(self.table).set_item(Some(item)).condition_expression("attribute_not_exists(PK)").build()?;
        let mut items = vec![
            TransactWriteItem::builder()
                .update(self.settle_order(user_id, intent, fill, "pending", chrono::Utc::now().timestamp_millis())?)
                .build(),
            TransactWriteItem::builder().put(put).build(),
        ];
        if require_running_bot {
            items.push(TransactWriteItem::builder().condition_check(self.bot_running(user_id)?).build());
        }
        let answer_index = items.len();
        if let Some((key, body)) = &answer {
            items.push(TransactWriteItem::builder().update(self.answer_update(user_id, key, 201, body)?).build());
        }
        let outcome = crate::dynamo::transact(self.client.transact_write_items().set_transact_items(Some(items))).await?;
        Ok(if outcome.written() {
            PaperWrite::Written
        } else if outcome.failed(0) {
            PaperWrite::OrderSettled
        } else if outcome.failed(1) {
            PaperWrite::AlreadyResting
        } else if answer.is_some() && outcome.failed(answer_index) {
            PaperWrite::AnswerRefused
        } else {
            PaperWrite::BotNotRunning
        })
    }

    /// The order record's update to `fill` at `at_ms`, only from the status `from`.
    fn settle_order(&self, user_id: &str, intent: &OrderIntent, fill: &OrderFill, from: &str, at_ms: i64) -> Result<Update, StoreError> {
        Ok(Update::builder()
            .table_name(self.table)
            .set_key(Some(keys::order(user_id, &intent.client_order_id)))
            .update_expression(format!(
                "SET #status = :status, fill = :fill, updated_at = :now{}",
                crate::trading::history_store::leaves_open_index(fill.status)
            ))
            .condition_expression("#status = :before")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":status", serde_dynamo::to_attribute_value(fill.status)?)
            .expression_attribute_values(":fill", serde_dynamo::to_attribute_value(fill)?)
            .expression_attribute_values(":now", s(crate::trading::paging::rfc3339(at_ms)))
            .expression_attribute_values(":before", s(from))
            .build()?)
    }

    fn bot_running(&self, user_id: &str) -> Result<ConditionCheck, StoreError> {
        Ok(ConditionCheck::builder()
            .table_name(self.table)
            .set_key(Some(keys::bot(user_id)))
            .condition_expression("#state = :running")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":running", AttributeValue::S("running".into()))
            .build()?)
    }
}
