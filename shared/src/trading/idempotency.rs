//! Idempotency records: `IDEMPOTENCY#<user>` / `<key>`, holding the request's fingerprint and,
//! once known, the answer to replay. Kept 24 hours. Read and written through the trading store.

use crate::dynamo::{db_error, n, s, to_item, StoreError};
use crate::keys;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};
use serde::{Deserialize, Serialize};

pub const RETENTION_SECS: i64 = 24 * 3600;
/// An in-progress record older than this belongs to a request that died; a retry may resume it.
pub const STALE_AFTER_MS: i64 = 15_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    pub fingerprint: String,
    pub client_order_id: String,
    pub completed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    pub created_ms: i64,
    pub expires_at: i64,
}

pub fn valid_key(key: &str) -> bool {
    (1..=64).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

pub fn fingerprint(canonical: &serde_json::Value) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(canonical.to_string().as_bytes()))
}

pub fn new_record(fingerprint: String, client_order_id: String) -> IdempotencyRecord {
    let now = chrono::Utc::now();
    IdempotencyRecord {
        fingerprint,
        client_order_id,
        completed: false,
        status: None,
        body: None,
        created_ms: now.timestamp_millis(),
        expires_at: now.timestamp() + RETENTION_SECS,
    }
}

impl crate::trading::store::TradingStore<'_> {
    /// The transaction item that reserves `key` for `record` (the key must be new).
    pub fn idempotency_put(&self, user_id: &str, key: &str, record: &IdempotencyRecord) -> Result<TransactWriteItem, StoreError> {
        let item = keys::with_key(to_item(record)?, keys::idempotency(user_id, key));
        let put = Put::builder().table_name(self.table).set_item(Some(item)).condition_expression("attribute_not_exists(PK)").build()?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    pub async fn idempotency_record(&self, user_id: &str, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        crate::dynamo::get_item(self.client, self.table, keys::idempotency(user_id, key)).await
    }

    /// The key's answer as part of the transaction that settles its order, on the same terms as
    /// `complete_idempotency`: the record is there and still in progress (never a bare record
    /// made by the update, without its fingerprint or expiry).
    pub(crate) fn answer_update(&self, user_id: &str, key: &str, status: u16, body: &str) -> Result<Update, StoreError> {
        Ok(Update::builder()
            .table_name(self.table)
            .set_key(Some(keys::idempotency(user_id, key)))
            .update_expression("SET completed = :t, #status = :status, body = :body")
            .condition_expression("attribute_exists(PK) AND completed = :f")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":t", AttributeValue::Bool(true))
            .expression_attribute_values(":f", AttributeValue::Bool(false))
            .expression_attribute_values(":status", n(status))
            .expression_attribute_values(":body", s(body))
            .build()?)
    }

    /// Stores the final answer (first writer wins): `answer_update`, on its own.
    pub async fn complete_idempotency(&self, user_id: &str, key: &str, status: u16, body: &str) -> Result<(), StoreError> {
        let answer = self.answer_update(user_id, key, status, body)?;
        let result = self
            .client
            .update_item()
            .table_name(answer.table_name)
            .set_key(Some(answer.key))
            .update_expression(answer.update_expression)
            .set_condition_expression(answer.condition_expression)
            .set_expression_attribute_names(answer.expression_attribute_names)
            .set_expression_attribute_values(answer.expression_attribute_values)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if crate::dynamo::is_condition_failure(&e) => Ok(()),
            Err(e) => Err(db_error(e)),
        }
    }

    /// Records a refusal as the key's final answer in one write (no order was recorded).
    pub async fn put_completed_idempotency(
        &self,
        user_id: &str,
        key: &str,
        mut record: IdempotencyRecord,
        status: u16,
        body: &str,
    ) -> Result<bool, StoreError> {
        record.completed = true;
        record.status = Some(status);
        record.body = Some(body.to_owned());
        let item = keys::with_key(to_item(&record)?, keys::idempotency(user_id, key));
        crate::dynamo::put_new(self.client, self.table, item).await
    }
}
