//! The admin audit log: who did what to whom, with what result, and under which request id.
//! `GET /api/v1/admin/audit?limit=&cursor=` lists it newest first.

use crate::crypto::EncryptionKeys;
use crate::dynamo::{db_error, from_item, s, to_item, Item, StoreError};
use crate::error::ApiError;
use crate::keys;
use crate::trading::paging;
use serde::{Deserialize, Serialize};

/// The result of a change that is under way (or never finished: the function died).
pub const PENDING: &str = "pending";
pub const OK: &str = "ok";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditEntry {
    pub at: String,
    /// The user id of the caller.
    pub actor: String,
    pub action: String,
    /// Whom or what it acted on (a user id, `kill_switch`), when anything.
    pub target: Option<String>,
    /// `ok`, `pending`, or the error code the caller was answered.
    pub result: String,
    pub request_id: String,
    /// Unix ms of `at`: the entry's place in the log (its key, not an attribute).
    #[serde(skip)]
    pub at_ms: i64,
}

impl AuditEntry {
    pub fn now(actor: &str, action: &str, target: Option<String>, request_id: &str) -> Self {
        let at_ms = chrono::Utc::now().timestamp_millis();
        AuditEntry {
            at: paging::rfc3339(at_ms),
            actor: actor.to_owned(),
            action: action.to_owned(),
            target,
            result: PENDING.to_owned(),
            request_id: request_id.to_owned(),
            at_ms,
        }
    }
}

pub struct AuditStore<'a> {
    pub client: &'a aws_sdk_dynamodb::Client,
    pub table: &'a str,
}

impl AuditStore<'_> {
    /// Writes the entry as it stands (a retried write of the same request rewrites it).
    pub async fn record(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let item = keys::with_key(to_item(entry)?, keys::audit_entry(entry.at_ms, &entry.request_id));
        self.client.put_item().table_name(self.table).set_item(Some(item)).send().await.map_err(db_error)?;
        Ok(())
    }

    /// Sets the result of an entry written `pending`.
    pub async fn settle(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        self.client
            .update_item()
            .table_name(self.table)
            .set_key(Some(keys::audit_entry(entry.at_ms, &entry.request_id)))
            .update_expression("SET #result = :result")
            .expression_attribute_names("#result", "result")
            .expression_attribute_values(":result", s(entry.result.as_str()))
            .send()
            .await
            .map_err(db_error)?;
        Ok(())
    }

    /// Up to `limit` entries, newest first, from after `after` (a sort key); and whether more follow.
    pub async fn page(&self, limit: usize, after: Option<&str>) -> Result<(Vec<AuditEntry>, Option<String>), StoreError> {
        let start = after.map(|sk| -> Item {
            let mut key = keys::audit_entry(0, "");
            key.insert(keys::SK.to_owned(), s(sk));
            key
        });
        let (items, more) = crate::dynamo::first_items(limit, start, |start, wanted| {
            self.client
                .query()
                .table_name(self.table)
                .key_condition_expression("PK = :pk")
                .expression_attribute_values(":pk", s(keys::AUDIT_PARTITION))
                .scan_index_forward(false)
                .limit(wanted)
                .set_exclusive_start_key(start)
        })
        .await?;
        let last = items.last().and_then(|i| keys::sort_key(i)).map(str::to_owned);
        let entries = items.into_iter().map(from_item).collect::<Result<Vec<AuditEntry>, _>>()?;
        Ok((entries, last.filter(|_| more)))
    }
}

#[derive(Debug, Serialize)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    pub next_cursor: Option<String>,
}

/// One page of the log, newest first.
pub async fn list(store: &AuditStore<'_>, keys: &EncryptionKeys, query: Option<&str>) -> Result<AuditPage, ApiError> {
    let parameters = paging::query_parameters(query, &["limit", "cursor"])?;
    let limit = paging::limit(&parameters)?;
    let scope = "admin-audit";
    let after: Option<String> = parameters.get("cursor").map(|c| paging::open(keys, scope, c)).transpose()?;
    let (entries, last) = store.page(limit, after.as_deref()).await?;
    let next_cursor = last.map(|sk| paging::seal(keys, scope, &sk)).transpose()?;
    Ok(AuditPage { entries, next_cursor })
}
