//! The order and fill history's items, owned with the rest of the trading store.
//!
//! - An order's record is found by its client order id; written with it, two pointers that never
//!   change list it newest first (`HIST#…`) and per symbol (`HISTSYM#<symbol>#…`). While it is
//!   not final it also sits in the open-orders index (GSI2), and its final transition removes it.
//! - A fill is written once, as two copies (`FILL#…`, `SYMFILL#<symbol>#…`), so a page of fills is
//!   one Query and carries everything it shows.
//! - Every item of the history carries the table's TTL attribute: `history_retention_days` after
//!   it was written.
//!
//! A page is one Query on a key made for it (and for orders one BatchGetItem of the records the
//! pointers name), never a Scan and never a filter, except the symbol filter over the caller's
//! open orders, which are few.

use crate::dynamo::{db_error, from_item, n, s, to_item, Item, StoreError};
use crate::keys;
use crate::trading::model::{ExchangeKind, OrderFill, OrderIntent, OrderStatus, Side};
use crate::trading::store::{now_rfc3339, OrderRecord, TradingStore};
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

pub const DAY_MS: i64 = 86_400_000;

/// One fill as stored: a paper fill (written in the fill's own transaction) or a trade copied
/// from Bitget's fill history (named by Bitget's trade id, so it is never stored twice).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FillRecord {
    pub fill_id: String,
    pub order_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_order_id: Option<String>,
    pub symbol: String,
    pub side: Side,
    pub size: Decimal,
    pub price: Decimal,
    /// What the fill cost (positive: paid).
    pub fee: Decimal,
    /// The profit or loss it realized, before the fee.
    pub realized_pnl: Decimal,
    pub reason: String,
    pub filled_ms: i64,
    /// The account it was made on: the equity series walks back only that account's fills.
    #[serde(default = "paper")]
    pub exchange: ExchangeKind,
}

fn paper() -> ExchangeKind {
    ExchangeKind::Paper
}

impl FillRecord {
    /// The fill of a paper order: one per order, as the paper exchange fills an order whole.
    pub fn of_paper_order(intent: &OrderIntent, fill: &OrderFill, filled_ms: i64) -> Option<FillRecord> {
        (fill.filled_size > Decimal::ZERO).then(|| FillRecord {
            fill_id: format!("{}-fill", fill.order_id),
            order_id: fill.order_id.clone(),
            client_order_id: Some(intent.client_order_id.clone()),
            symbol: intent.symbol.clone(),
            side: intent.side,
            size: fill.filled_size.normalize(),
            price: fill.avg_price.unwrap_or_default().normalize(),
            fee: fill.fee.normalize(),
            realized_pnl: fill.realized_pnl.normalize(),
            reason: intent.reason.clone().unwrap_or_else(|| "manual".to_owned()),
            filled_ms,
            exchange: ExchangeKind::Paper,
        })
    }
}

/// Where a page of history ended: the sort key of its last item (and, in the open-orders index,
/// that item's index sort key). The next page starts right after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PagePosition {
    pub sk: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_sk: Option<String>,
}

/// What `ops backfill-history` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backfill {
    /// Orders given their history.
    pub orders: u64,
    /// Paper fills written for them.
    pub fills: u64,
    /// Exchange-id pointers given a TTL.
    pub pointers: u64,
    /// Orders that changed while the run read them, left for the next run.
    pub moved: u64,
}

/// How far the copy of a user's Bitget fills got.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct FillSyncMark {
    pub synced_to_ms: i64,
    #[serde(default)]
    pub synced_at_ms: i64,
    /// The span the next step reads (shorter after a span held more fills than one read takes).
    #[serde(default)]
    pub span_ms: Option<i64>,
}

pub struct HistoryPage<T> {
    pub items: Vec<T>,
    /// None: nothing is left after this page.
    pub next: Option<PagePosition>,
}

/// A time range of history, both ends included (unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeRange {
    pub from_ms: i64,
    pub to_ms: i64,
}

impl TimeRange {
    pub const ALL: TimeRange = TimeRange { from_ms: 0, to_ms: 9_999_999_999_999 };
}

fn is_final(status: OrderStatus) -> bool {
    matches!(status, OrderStatus::Filled | OrderStatus::Canceled | OrderStatus::Rejected)
}

/// The update-expression clause that takes an order out of the open-orders index, when the
/// status it moves to is final.
pub(crate) fn leaves_open_index(status: OrderStatus) -> &'static str {
    if is_final(status) {
        " REMOVE GSI2PK, GSI2SK"
    } else {
        ""
    }
}

fn created_ms(record: &OrderRecord) -> i64 {
    chrono::DateTime::parse_from_rfc3339(&record.created_at).map(|t| t.timestamp_millis()).unwrap_or(0)
}

impl TradingStore<'_> {
    /// The TTL attribute of a history item written at `written_ms`.
    pub(crate) fn history_ttl(&self, written_ms: i64) -> (String, AttributeValue) {
        let end = written_ms / 1000 + i64::from(self.history_days) * 86_400;
        (keys::TTL_ATTRIBUTE.to_owned(), n(end))
    }

    /// A new order's record, as it is first written: pending, with its TTL, in the open index.
    pub(crate) fn new_order_item(&self, user_id: &str, intent: &OrderIntent) -> Result<(OrderRecord, Item), StoreError> {
        let now = now_rfc3339();
        let record = OrderRecord {
            user_id: user_id.to_owned(),
            intent: intent.clone(),
            status: OrderStatus::Pending,
            fill: None,
            reason: None,
            created_at: now.clone(),
            updated_at: now,
            sent_at_ms: None,
        };
        let created = created_ms(&record);
        let mut item = keys::with_key(to_item(&record)?, keys::order(user_id, &intent.client_order_id));
        item.extend(keys::open_order_index(user_id, created, &intent.client_order_id));
        item.extend([self.history_ttl(created)]);
        Ok((record, item))
    }

    /// The two history pointers of a new order, for the transaction that records it.
    pub(crate) fn order_pointer_puts(&self, user_id: &str, record: &OrderRecord) -> Result<[TransactWriteItem; 2], StoreError> {
        let created = created_ms(record);
        let cid = &record.intent.client_order_id;
        let put = |key: keys::Key| -> Result<TransactWriteItem, StoreError> {
            let item = keys::with_key(Item::from([("client_order_id".to_owned(), s(cid)), self.history_ttl(created)]), key);
            Ok(TransactWriteItem::builder().put(Put::builder().table_name(self.table).set_item(Some(item)).build()?).build())
        };
        Ok([
            put(keys::order_history(user_id, None, created, cid))?,
            put(keys::order_history(user_id, Some(&record.intent.symbol), created, cid))?,
        ])
    }

    /// The two copies of a fill, for the transaction that makes it (or copies it from Bitget).
    pub(crate) fn fill_puts(&self, user_id: &str, fill: &FillRecord, only_new: bool) -> Result<[TransactWriteItem; 2], StoreError> {
        let put = |key: keys::Key| -> Result<TransactWriteItem, StoreError> {
            let mut item = keys::with_key(to_item(fill)?, key);
            item.extend([self.history_ttl(fill.filled_ms)]);
            let mut put = Put::builder().table_name(self.table).set_item(Some(item));
            if only_new {
                put = put.condition_expression("attribute_not_exists(PK)");
            }
            Ok(TransactWriteItem::builder().put(put.build()?).build())
        };
        Ok([
            put(keys::fill(user_id, None, fill.filled_ms, &fill.fill_id))?,
            put(keys::fill(user_id, Some(&fill.symbol), fill.filled_ms, &fill.fill_id))?,
        ])
    }

    /// Stores a fill copied from the exchange unless it is stored already: false then.
    pub async fn put_fill_if_new(&self, user_id: &str, fill: &FillRecord) -> Result<bool, StoreError> {
        let [all, by_symbol] = self.fill_puts(user_id, fill, true)?;
        let request = self.client.transact_write_items().transact_items(all).transact_items(by_symbol);
        Ok(crate::dynamo::transact(request).await?.written())
    }

    /// One page of the user's orders, newest first: of every symbol or of one.
    pub async fn order_page(
        &self,
        user_id: &str,
        symbol: Option<&str>,
        limit: usize,
        after: Option<&PagePosition>,
    ) -> Result<HistoryPage<OrderRecord>, StoreError> {
        let (low, high) = keys::history_range(&keys::order_history_prefix(symbol), TimeRange::ALL.from_ms, TimeRange::ALL.to_ms);
        let page = self.history_query(keys::order_partition(user_id), (low, high), limit, after).await?;
        let ids: Vec<String> = page.items.iter().filter_map(|i| i.get("client_order_id").and_then(|v| v.as_s().ok()).cloned()).collect();
        let records = self.orders_by_id(user_id, &ids).await?;
        // In the pointers' order; a record gone before its pointer (both expire) is left out.
        let items = ids.iter().filter_map(|id| records.get(id).cloned()).collect();
        Ok(HistoryPage { items, next: page.next })
    }

    /// One page of the user's orders that are not final (pending, open, partly filled), newest
    /// first, from the open-orders index.
    pub async fn open_order_page(
        &self,
        user_id: &str,
        symbol: Option<&str>,
        limit: usize,
        after: Option<&PagePosition>,
    ) -> Result<HistoryPage<OrderRecord>, StoreError> {
        let partition = keys::open_orders_partition(user_id);
        let start = after.map(|p| {
            Item::from([
                (keys::PK.to_owned(), s(keys::order_partition(user_id))),
                (keys::SK.to_owned(), s(&p.sk)),
                (keys::GSI2_PK.to_owned(), s(&partition)),
                (keys::GSI2_SK.to_owned(), s(p.index_sk.clone().unwrap_or_default())),
            ])
        });
        let (items, more) = crate::dynamo::first_items(limit, start, |start, wanted| {
            let query = self
                .client
                .query()
                .table_name(self.table)
                .index_name(keys::OPEN_ORDERS_INDEX)
                .key_condition_expression("GSI2PK = :open")
                .expression_attribute_values(":open", s(&partition))
                .scan_index_forward(false)
                .set_exclusive_start_key(start);
            match symbol {
                Some(symbol) => query
                    .filter_expression("#intent.#symbol = :symbol")
                    .expression_attribute_names("#intent", "intent")
                    .expression_attribute_names("#symbol", "symbol")
                    .expression_attribute_values(":symbol", s(symbol)),
                None => query.limit(wanted),
            }
        })
        .await?;
        let next = more
            .then(|| items.last())
            .flatten()
            .map(|last| PagePosition { sk: attribute(last, keys::SK), index_sk: Some(attribute(last, keys::GSI2_SK)) });
        let records = items.into_iter().map(from_item).collect::<Result<_, _>>()?;
        Ok(HistoryPage { items: records, next })
    }

    /// One page of the user's fills in `range`, newest first: of every symbol or of one.
    pub async fn fill_page(
        &self,
        user_id: &str,
        symbol: Option<&str>,
        range: TimeRange,
        limit: usize,
        after: Option<&PagePosition>,
    ) -> Result<HistoryPage<FillRecord>, StoreError> {
        let bounds = keys::history_range(&keys::fill_prefix(symbol), range.from_ms, range.to_ms);
        let page = self.history_query(keys::fills_partition(user_id), bounds, limit, after).await?;
        let items = page.items.into_iter().map(from_item).collect::<Result<_, _>>()?;
        Ok(HistoryPage { items, next: page.next })
    }

    /// Every fill of the user in `range`, oldest first (the PnL summary's input).
    pub async fn fills_in(&self, user_id: &str, range: TimeRange) -> Result<Vec<FillRecord>, StoreError> {
        self.fill_items_in(user_id, range, None).await?.into_iter().map(from_item).collect()
    }

    /// The items of the user's fills in `range`, all pages, with only `projection` when given.
    async fn fill_items_in(&self, user_id: &str, range: TimeRange, projection: Option<&str>) -> Result<Vec<Item>, StoreError> {
        let (low, high) = keys::history_range(&keys::fill_prefix(None), range.from_ms, range.to_ms);
        crate::dynamo::query_all(|start| {
            self.client
                .query()
                .table_name(self.table)
                .key_condition_expression("PK = :pk AND SK BETWEEN :low AND :high")
                .expression_attribute_values(":pk", s(keys::fills_partition(user_id)))
                .expression_attribute_values(":low", s(&low))
                .expression_attribute_values(":high", s(&high))
                .set_projection_expression(projection.map(str::to_owned))
                .consistent_read(true)
                .set_exclusive_start_key(start)
        })
        .await
    }

    /// Up to when the user's Bitget fills were copied, and when that was, if they ever were.
    pub async fn fill_sync_mark(&self, user_id: &str) -> Result<Option<FillSyncMark>, StoreError> {
        crate::dynamo::get_item(self.client, self.table, keys::fill_sync(user_id)).await
    }

    /// Moves the sync mark to `to_ms`, never back (two syncs may race), with the span the next
    /// step reads, and notes when.
    pub async fn save_fill_sync_mark(&self, user_id: &str, to_ms: i64, span_ms: i64) -> Result<(), StoreError> {
        let now = chrono::Utc::now().timestamp_millis();
        let result = self
            .client
            .update_item()
            .table_name(self.table)
            .set_key(Some(keys::fill_sync(user_id)))
            .update_expression("SET synced_to_ms = :to, synced_at_ms = :now, span_ms = :span")
            .condition_expression("attribute_not_exists(synced_to_ms) OR synced_to_ms <= :to")
            .expression_attribute_values(":to", n(to_ms))
            .expression_attribute_values(":span", n(span_ms))
            .expression_attribute_values(":now", n(now))
            .send()
            .await;
        crate::dynamo::written(result).map(|_| ())
    }

    /// The ids of the user's fills in `range` (what a sync need not copy again).
    pub async fn fill_ids_in(&self, user_id: &str, range: TimeRange) -> Result<std::collections::HashSet<String>, StoreError> {
        Ok(self.fill_items_in(user_id, range, Some("fill_id")).await?.iter().map(|i| attribute(i, "fill_id")).collect())
    }

    /// Gives the orders written before the history existed what new ones are written with: their
    /// two history pointers, a TTL, a place in the open-orders index while not final, and for a
    /// filled paper order its fill; and their exchange-id pointers a TTL. An operator's one-off
    /// (`ops backfill-history`), so a Scan of what has no TTL yet. Each order is one transaction,
    /// conditioned on the status it was read with, so a run cut off or racing a fill is run again.
    pub async fn backfill_history(&self) -> Result<Backfill, StoreError> {
        let mut done = Backfill::default();
        let mut start = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(self.table)
                .filter_expression("(begins_with(SK, :order) OR begins_with(SK, :pointer)) AND attribute_not_exists(expires_at)")
                .expression_attribute_values(":order", s("ORDER#"))
                .expression_attribute_values(":pointer", s("ORDERID#"))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(db_error)?;
            for item in out.items.unwrap_or_default() {
                if keys::sort_key(&item).is_some_and(|sk| sk.starts_with("ORDERID#")) {
                    done.pointers += u64::from(self.backfill_pointer(item).await?);
                    continue;
                }
                let record: OrderRecord = from_item(item)?;
                match self.backfill_order(&record).await? {
                    Some(filled) => {
                        done.orders += 1;
                        done.fills += u64::from(filled);
                    }
                    None => done.moved += 1,
                }
            }
            match out.last_evaluated_key {
                Some(key) => start = Some(key),
                None => return Ok(done),
            }
        }
    }

    /// One older order's history, in one transaction: Some(whether it wrote a fill), or None when
    /// the order moved since it was read (the next run sees it as it is then).
    async fn backfill_order(&self, record: &OrderRecord) -> Result<Option<bool>, StoreError> {
        let user_id = &record.user_id;
        let created = created_ms(record);
        let cid = &record.intent.client_order_id;
        let mut update = aws_sdk_dynamodb::types::Update::builder()
            .table_name(self.table)
            .set_key(Some(keys::order(user_id, cid)))
            .condition_expression("#status = :read AND attribute_not_exists(expires_at)")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":read", serde_dynamo::to_attribute_value(record.status)?)
            .expression_attribute_values(":end", self.history_ttl(created).1);
        update = if is_final(record.status) {
            update.update_expression("SET expires_at = :end")
        } else {
            let [(_, open), (_, at)] = keys::open_order_index(user_id, created, cid);
            update
                .update_expression("SET expires_at = :end, GSI2PK = :open, GSI2SK = :at")
                .expression_attribute_values(":open", open)
                .expression_attribute_values(":at", at)
        };
        let mut items = vec![TransactWriteItem::builder().update(update.build()?).build()];
        items.extend(self.order_pointer_puts(user_id, record)?);
        // A paper fill's time is its order's `updated_at` (the fill's own transaction writes
        // both alike), so a fill already written is the same item, written again unchanged.
        let paper = record.fill.as_ref().filter(|f| f.order_id.starts_with(crate::trading::paper::ORDER_ID_PREFIX));
        let filled_ms = chrono::DateTime::parse_from_rfc3339(&record.updated_at).map(|t| t.timestamp_millis()).unwrap_or(created);
        let mut intent = record.intent.clone();
        intent.reason = record.reason.clone().or(intent.reason);
        let fill = paper.and_then(|f| FillRecord::of_paper_order(&intent, f, filled_ms));
        if let Some(fill) = &fill {
            items.extend(self.fill_puts(user_id, fill, false)?);
        }
        let outcome = crate::dynamo::transact(self.client.transact_write_items().set_transact_items(Some(items))).await?;
        Ok(outcome.written().then_some(fill.is_some()))
    }

    /// An older exchange-id pointer's TTL, counted from now (it does not say when it was made).
    async fn backfill_pointer(&self, item: Item) -> Result<bool, StoreError> {
        let key = Item::from_iter([keys::PK, keys::SK].map(|k| (k.to_owned(), item.get(k).cloned().unwrap_or(s("")))));
        let result = self
            .client
            .update_item()
            .table_name(self.table)
            .set_key(Some(key))
            .update_expression("SET expires_at = :end")
            .condition_expression("attribute_exists(PK) AND attribute_not_exists(expires_at)")
            .expression_attribute_values(":end", self.history_ttl(chrono::Utc::now().timestamp_millis()).1)
            .send()
            .await;
        crate::dynamo::written(result)
    }

    /// A page of the base table's items between `bounds` under `partition`, newest first.
    async fn history_query(
        &self,
        partition: String,
        (low, high): (String, String),
        limit: usize,
        after: Option<&PagePosition>,
    ) -> Result<HistoryPage<Item>, StoreError> {
        let start = after.map(|p| Item::from([(keys::PK.to_owned(), s(&partition)), (keys::SK.to_owned(), s(&p.sk))]));
        let (items, more) = crate::dynamo::first_items(limit, start, |start, wanted| {
            self.client
                .query()
                .table_name(self.table)
                .key_condition_expression("PK = :pk AND SK BETWEEN :low AND :high")
                .expression_attribute_values(":pk", s(&partition))
                .expression_attribute_values(":low", s(&low))
                .expression_attribute_values(":high", s(&high))
                .scan_index_forward(false)
                .limit(wanted)
                .consistent_read(true)
                .set_exclusive_start_key(start)
        })
        .await?;
        let next = more.then(|| items.last()).flatten().map(|last| PagePosition { sk: attribute(last, keys::SK), index_sk: None });
        Ok(HistoryPage { items, next })
    }

    /// The user's order records with these client order ids, by id.
    pub async fn orders_by_id(&self, user_id: &str, ids: &[String]) -> Result<HashMap<String, OrderRecord>, StoreError> {
        let items = crate::dynamo::batch_get(self.client, self.table, ids.iter().map(|id| keys::order(user_id, id)).collect()).await?;
        items.into_iter().map(|item| from_item::<OrderRecord>(item).map(|r| (r.intent.client_order_id.clone(), r))).collect()
    }

    /// The client order ids of the user's live orders with these Bitget ids, where known.
    pub async fn client_order_ids_of(&self, user_id: &str, order_ids: &[String]) -> Result<HashMap<String, String>, StoreError> {
        let wanted = order_ids.iter().map(|id| keys::order_id_pointer(user_id, id)).collect();
        let items = crate::dynamo::batch_get(self.client, self.table, wanted).await?;
        Ok(items
            .iter()
            .filter_map(|item| {
                let order_id = keys::sort_key(item)?.strip_prefix("ORDERID#")?.to_owned();
                Some((order_id, attribute(item, "client_order_id")))
            })
            .collect())
    }
}

fn attribute(item: &Item, name: &str) -> String {
    item.get(name).and_then(|v| v.as_s().ok()).cloned().unwrap_or_default()
}
